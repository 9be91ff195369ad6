"""Memory guard: estimate an allocation before making it, refuse it when over budget.

Used by both sides (exact collapses and affine maps in :mod:`algebra`, float kernels and
extractions in :mod:`numeric`).  The budget is ``LAURENTNET_MEMORY_BUDGET`` (bytes, or with
a suffix K/M/G) if set, else
half of the machine's physical memory.  ``check_budget`` raises :class:`MemoryBudgetError`
with the estimate and the budget *before* anything is allocated.
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from .errors import LaurentnetError

__all__ = ["MemoryBudgetError", "memory_budget", "estimate_bytes", "check_budget", "format_bytes"]

_SUFFIXES = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class MemoryBudgetError(LaurentnetError, MemoryError):
    """Raised when an estimated allocation exceeds the memory budget."""

    def __init__(self, what: str, estimate: int, budget: int):
        self.what, self.estimate, self.budget = what, int(estimate), int(budget)
        super().__init__(f"{what} would need about {format_bytes(estimate)}, over the memory "
                         f"budget of {format_bytes(budget)} (set LAURENTNET_MEMORY_BUDGET or "
                         "pass budget= to raise it)")


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _parse_bytes(text: str) -> int:
    """``"8G"``, ``"512MiB"``, ``"1e9"`` -> bytes; a positive finite size or ValueError."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    factor = 1
    if text and text[-1] in _SUFFIXES:
        text, factor = text[:-1], _SUFFIXES[text[-1]]
    value = float(text) * factor
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{text!r} is not a positive finite size")
    return int(value)


def memory_budget() -> int:
    """The budget in bytes: ``$LAURENTNET_MEMORY_BUDGET`` or half the physical memory."""
    env = os.environ.get("LAURENTNET_MEMORY_BUDGET")
    if env:
        try:
            return _parse_bytes(env)
        except ValueError as exc:
            raise ValueError(f"LAURENTNET_MEMORY_BUDGET={env!r} is not a size like 8G") from exc
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def estimate_bytes(shape: Sequence[int], dtype: Any = np.float64) -> int:
    """Bytes of a dense array of ``shape`` and ``dtype`` (numpy or torch dtype)."""
    itemsize = getattr(dtype, "itemsize", None)  # torch.dtype has .itemsize
    if not isinstance(itemsize, int):
        itemsize = np.dtype(dtype).itemsize
    n = 1
    for s in shape:
        n *= int(s)
    return n * int(itemsize)


def check_budget(estimate: int, what: str, budget: int | None = None) -> None:
    """Raise :class:`MemoryBudgetError` if ``estimate`` bytes exceed the budget."""
    limit = memory_budget() if budget is None else int(budget)
    if estimate > limit:
        raise MemoryBudgetError(what, estimate, limit)
