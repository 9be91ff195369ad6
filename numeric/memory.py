"""The memory guard, shared with the exact side: see :mod:`algebra.memory`."""
from ..algebra.memory import (MemoryBudgetError, check_budget, estimate_bytes, format_bytes,
                            memory_budget)

__all__ = ["MemoryBudgetError", "memory_budget", "estimate_bytes", "check_budget", "format_bytes"]
