"""Channel selections (``op[rows]``, ``op.columns(cols)``), validated once for both twins.

A selection is an int, a slice or a sequence of ints (negative ones count from the end,
as in Python and PyTorch); it must keep at least one channel.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InvalidInputError, InvalidTypeError, LaurentnetError

__all__ = ["ChannelIndexError", "channel_index"]


class ChannelIndexError(LaurentnetError, ValueError, IndexError):
    """A channel index out of range (a ValueError and an IndexError, like numpy's)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _integer_dtype(dtype: Any) -> bool:
    """An integer (not boolean) numpy or torch dtype, told apart by name (no torch import)."""
    name = str(dtype).removeprefix("torch.")
    return "int" in name and "bool" not in name


def channel_index(rows: Any, count: int, what: str) -> list[int]:
    """The selected channels of ``range(count)`` as non-negative ints, in order.

    ``rows`` is an int, a slice, or a sequence of ints (a 0-/1-D integer tensor or array
    too).  Out-of-range ints raise :class:`ChannelIndexError`; anything else that is not an
    int raises TypeError; an empty selection raises ValueError.  ``what`` names the axis
    ("output channel", "input channel") in the messages."""
    if isinstance(rows, slice):
        index = list(range(count))[rows]
    elif _is_int(rows):
        index = [rows]
    elif hasattr(rows, "tolist") and hasattr(rows, "dtype"):  # a numpy array or a tensor
        if getattr(rows, "ndim", 1) > 1 or not _integer_dtype(rows.dtype):
            raise InvalidTypeError(f"{what} index must be an int, a slice or a sequence of ints, "
                                   f"got {rows!r}")
        flat = rows.tolist()
        index = flat if isinstance(flat, list) else [flat]
    elif isinstance(rows, (str, bytes)) or not hasattr(rows, "__iter__"):
        raise InvalidTypeError(f"{what} index must be an int, a slice or a sequence of ints, "
                               f"got {rows!r}")
    else:
        index = list(rows)
    for i in index:
        if not _is_int(i):
            raise InvalidTypeError(f"{what} index must be an int, a slice or a sequence of ints, "
                                   f"got {rows!r}")
        if not -count <= i < count:
            raise ChannelIndexError(f"{what} {int(i)} out of range: the operator has {count}")
    if not index:
        raise InvalidInputError(f"a channel selection must keep at least one {what}")
    return [int(i) % count for i in index]
