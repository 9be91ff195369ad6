"""Checks of the arguments of public functions, in one place (no torch, no sympy).

Each helper takes the value and the argument's name and returns the value in canonical form,
or refuses with :class:`~laurentnet.algebra.errors.InvalidTypeError` /
:class:`~laurentnet.algebra.errors.InvalidInputError` whose message starts with that name::

    input_shape = shape_arg(input_shape, "input_shape")   # (1, 28, 28), not 28 or "1,28,28"
    groups = int_arg(groups, "groups", minimum=1)           # not True, not 1.5, not None

so a wrong argument is reported at the entry point that received it, never as
``'float' object is not iterable`` from deep inside.  Integers are Python or numpy integers,
or floats that are exactly integers (``2.0``); bools are never integers.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any, Iterable

import numpy as np

from .errors import InvalidInputError, InvalidTypeError

__all__ = ["describe", "is_int", "int_arg", "optional_int_arg", "bool_arg", "optional_bool_arg",
           "real_arg", "shape_arg", "sequence_arg", "choice_arg", "str_arg", "optional_str_arg",
           "instance_arg"]


def describe(value: Any, limit: int = 60) -> str:
    """``value`` for an error message: its repr when short, with its type."""
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not hide the real message
        text = ""
    kind = type(value).__name__
    if not text or len(text) > limit:
        return f"a {kind}"
    return text if isinstance(value, (str, bool, type(None))) else f"{text} ({kind})"


def is_int(value: Any) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(value, (Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def _as_int(value: Any, what: str, expected: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise InvalidTypeError(f"{what} must be {expected}, got the bool {value!r}")
    if is_int(value):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if math.isfinite(float(value)) and float(value).is_integer():
            return int(value)
        raise InvalidInputError(f"{what} must be {expected}, got {value!r} (not an integer)")
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item") and \
            not isinstance(value, (str, bytes)):
        return _as_int(value.item(), what, expected)  # a 0-d numpy array or tensor
    raise InvalidTypeError(f"{what} must be {expected}, got {describe(value)}")


def int_arg(value: Any, what: str, *, minimum: int | None = None,
            maximum: int | None = None) -> int:
    """One integer in ``[minimum, maximum]``."""
    expected = "an integer" if minimum is None else \
        ("a positive integer" if minimum == 1 else f"an integer >= {minimum}")
    n = _as_int(value, what, expected)
    if minimum is not None and n < minimum:
        raise InvalidInputError(f"{what} must be {expected}, got {n}")
    if maximum is not None and n > maximum:
        raise InvalidInputError(f"{what} must be at most {maximum}, got {n}")
    return n


def optional_int_arg(value: Any, what: str, *, minimum: int | None = None) -> int | None:
    return None if value is None else int_arg(value, what, minimum=minimum)


def bool_arg(value: Any, what: str) -> bool:
    """``True`` or ``False`` (numpy bools too); not ``1``, ``"yes"`` or a tensor."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise InvalidTypeError(f"{what} must be True or False, got {describe(value)}")


def optional_bool_arg(value: Any, what: str) -> bool | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise InvalidTypeError(f"{what} must be None, True or False, got {describe(value)}")


def real_arg(value: Any, what: str, *, minimum: float | None = None, positive: bool = False,
             finite: bool = True) -> float:
    """One real number (not a bool, not a string), finite unless ``finite=False``."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item") and \
            not isinstance(value, (str, bytes, bool, np.bool_)):
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (Real, np.floating, np.integer)):
        raise InvalidTypeError(f"{what} must be a real number, got {describe(value)}")
    x = float(value)
    if math.isnan(x) or (finite and math.isinf(x)):
        raise InvalidInputError(f"{what} must be a finite number, got {x}")
    if positive and not x > 0:
        raise InvalidInputError(f"{what} must be positive, got {x}")
    if minimum is not None and x < minimum:
        raise InvalidInputError(f"{what} must be >= {minimum}, got {x}")
    return x


def sequence_arg(value: Any, what: str, *, expected: str = "a sequence",
                 nonempty: bool = True) -> tuple[Any, ...]:
    """A list, tuple, array or other iterable (not a string, a mapping or a scalar), as a
    tuple."""
    if isinstance(value, (str, bytes, Mapping)) or value is None or \
            getattr(value, "ndim", 1) == 0 or not isinstance(value, Iterable):
        raise InvalidTypeError(f"{what} must be {expected}, got {describe(value)}")
    items = tuple(value)
    if nonempty and not items:
        raise InvalidInputError(f"{what} must not be empty")
    return items


def shape_arg(value: Any, what: str, *, length: int | None = None,
              example: str = "(1, 28, 28)") -> tuple[int, ...]:
    """A shape: a non-empty sequence of positive integers (a tuple, list, ``torch.Size`` or
    1-D integer array), of ``length`` entries when given."""
    expected = f"a sequence of positive integers like {example}"
    items = sequence_arg(value, what, expected=expected)
    sizes = []
    for v in items:
        if isinstance(v, (str, bytes)) or (not is_int(v) and hasattr(v, "__len__")):
            raise InvalidTypeError(f"{what} must be {expected}, got {describe(value)}")
        sizes.append(_as_int(v, what, expected))
    if any(n < 1 for n in sizes):
        raise InvalidInputError(f"{what} must be {expected} (every size >= 1), got {tuple(sizes)}")
    if length is not None and len(sizes) != length:
        raise InvalidInputError(f"{what} must have {length} entries, got {len(sizes)}: "
                                f"{tuple(sizes)}")
    return tuple(sizes)


def choice_arg(value: Any, what: str, choices: Iterable[Any]) -> Any:
    """One of ``choices`` (compared by equality, strings only among strings)."""
    options = tuple(choices)
    if isinstance(value, str) and value in options:
        return value
    if not isinstance(value, str) and not any(isinstance(c, str) for c in options):
        try:
            if value in options:
                return value
        except Exception:
            pass
    raise (InvalidInputError if isinstance(value, str) else InvalidTypeError)(
        f"{what} must be one of {', '.join(map(repr, options))}, got {describe(value)}")


def str_arg(value: Any, what: str, *, nonempty: bool = True) -> str:
    if not isinstance(value, str):
        raise InvalidTypeError(f"{what} must be a string, got {describe(value)}")
    if nonempty and not value:
        raise InvalidInputError(f"{what} must not be empty")
    return value


def optional_str_arg(value: Any, what: str) -> str | None:
    return None if value is None else str_arg(value, what, nonempty=False)


def instance_arg(value: Any, types: type | tuple[type, ...], what: str, expected: str,
                 hint: str = "") -> Any:
    """``value`` if it is an instance of ``types``; else a message naming ``what``,
    ``expected`` (e.g. "a laurentnet.algebra.Network") and a hint (how to get one)."""
    if isinstance(value, types):
        return value
    raise InvalidTypeError(f"{what} must be {expected}, got {describe(value)}"
                           + (f"; {hint}" if hint else ""))
