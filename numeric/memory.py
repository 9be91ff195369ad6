"""The memory guard, shared with the exact side: see :mod:`algebra.memory`."""
from ..algebra.memory import (InvalidBudgetError, MemoryBudgetError, check_budget,
                              estimate_bytes, format_bytes, memory_budget, memory_limit,
                              resolve_budget)

__all__ = ["MemoryBudgetError", "InvalidBudgetError", "memory_budget", "memory_limit",
           "resolve_budget", "estimate_bytes", "check_budget", "format_bytes"]
