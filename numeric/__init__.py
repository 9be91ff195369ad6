"""laurentnet.numeric — the convolution algebra in floating point, at real sizes."""
from .memory import MemoryBudgetError, check_budget, estimate_bytes, memory_budget

