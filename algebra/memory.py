"""Memory guard: estimate an allocation before making it, refuse it when over budget.

Used by both sides (exact collapses and affine maps in :mod:`algebra`, float kernels and
extractions in :mod:`numeric`).  The budget in force is, first found:

1. the innermost ``with memory_limit(size):`` block (per thread and per asyncio task: a
   :mod:`contextvars` variable), which is how a public function's ``budget=`` argument
   reaches every allocation it makes;
2. ``$LAURENTNET_MEMORY_BUDGET`` (bytes, or with a suffix K/M/G/T, e.g. ``200M``);
3. half of the machine's physical memory.

``check_budget`` raises :class:`MemoryBudgetError` with the estimate and the budget
*before* anything is allocated.  A budget is a whole number of bytes ``>= 1``: ``0``,
negatives, ``True``, ``0.1`` (less than a byte), NaN and infinities are refused.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
import os
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import LaurentnetError

__all__ = ["EXACT_TERM_BYTES", "MemoryBudgetError", "memory_budget", "memory_limit", "resolve_budget",
           "estimate_bytes", "check_budget", "format_bytes"]

#: bytes per term of a sparse exact polynomial (a dict slot, the exponent tuple and a
#: rational; measured 160-210 bytes with tracemalloc on 3x3 collapses, rounded up)
EXACT_TERM_BYTES = 256

_SUFFIXES = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SCOPED: contextvars.ContextVar[int | None] = contextvars.ContextVar("laurentnet_budget",
                                                                     default=None)


class MemoryBudgetError(LaurentnetError, MemoryError):
    """Raised when an estimated allocation exceeds the memory budget."""

    def __init__(self, what: str, estimate: int, budget: int):
        self.what, self.estimate, self.budget = what, int(estimate), int(budget)
        super().__init__(f"{what} would need about {format_bytes(estimate)}, over the memory "
                         f"budget of {format_bytes(budget)} (raise it with budget=, the CLI's "
                         "--memory-budget or $LAURENTNET_MEMORY_BUDGET)")


class InvalidBudgetError(LaurentnetError, ValueError):
    """A memory budget that is not a whole number of bytes >= 1."""


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _parse_bytes(text: str, what: str) -> float:
    """``"8G"``, ``"512MiB"``, ``"1e9"`` -> a number of bytes (checked by the caller)."""
    body = text.strip().upper().removesuffix("B").removesuffix("I")
    factor = 1
    if body and body[-1] in _SUFFIXES:
        body, factor = body[:-1], _SUFFIXES[body[-1]]
    try:
        return float(body) * factor
    except ValueError:
        raise InvalidBudgetError(f"{what}: {text!r} is not a size like 200M, 8G or 1e9 "
                                 "(bytes)") from None


def resolve_budget(budget: Any, what: str = "budget") -> int:
    """A budget argument as bytes: ``None`` -> the budget in force (:func:`memory_budget`);
    an int, a float that is at least 1 byte, or a string like ``"200M"`` -> that many bytes
    (floats rounded down).  Anything else raises :class:`InvalidBudgetError` naming it."""
    if budget is None:
        return memory_budget()
    if isinstance(budget, (bool, np.bool_)):
        raise InvalidBudgetError(f"{what} must be a number of bytes, got the bool {budget!r}")
    if isinstance(budget, str):
        value: float = _parse_bytes(budget, what)
    elif isinstance(budget, numbers.Real):
        value = float(budget)
    else:
        raise InvalidBudgetError(f"{what} must be a number of bytes or a size like '200M', "
                                 f"got {type(budget).__name__}")
    if not math.isfinite(value) or value < 1:
        raise InvalidBudgetError(f"{what} must be at least 1 byte and finite, got {budget!r}")
    return int(value)


def memory_budget() -> int:
    """The budget in force, in bytes: the innermost :func:`memory_limit`, else
    ``$LAURENTNET_MEMORY_BUDGET``, else half the physical memory."""
    scoped = _SCOPED.get()
    if scoped is not None:
        return scoped
    env = os.environ.get("LAURENTNET_MEMORY_BUDGET")
    if env:
        return resolve_budget(env, "LAURENTNET_MEMORY_BUDGET")
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


@contextlib.contextmanager
def memory_limit(budget: Any, what: str = "budget") -> Iterator[int]:
    """``with memory_limit("200M"):`` — every estimate inside is checked against this
    budget (``None`` keeps the one in force).  Yields the budget in bytes; ``what`` names
    the argument in the error for a bad budget."""
    limit = resolve_budget(budget, what)
    token = _SCOPED.set(limit)
    try:
        yield limit
    finally:
        _SCOPED.reset(token)


def estimate_bytes(shape: Sequence[int], dtype: Any = np.float64) -> int:
    """Bytes of a dense array of ``shape`` and ``dtype`` (numpy or torch dtype)."""
    itemsize = getattr(dtype, "itemsize", None)  # torch.dtype has .itemsize
    if not isinstance(itemsize, int):
        itemsize = np.dtype(dtype).itemsize
    n = 1
    for s in shape:
        n *= int(s)
    return n * int(itemsize)


def check_budget(estimate: int, what: str, budget: Any = None) -> None:
    """Raise :class:`MemoryBudgetError` if ``estimate`` bytes exceed the budget
    (``budget`` if given, else the one in force)."""
    limit = resolve_budget(budget)
    if estimate > limit:
        raise MemoryBudgetError(what, estimate, limit)
