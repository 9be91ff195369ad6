"""Exact conversion of binary floating-point numbers to rationals.

Every IEEE-754 float ``x`` is exactly ``m / 2**e`` for integers ``m, e``; a float32 is a
float64 with fewer mantissa bits, so widening never rounds.  ``exact_rational`` returns
that rational, so weights read from a checkpoint enter exact arithmetic unchanged and
convert back to the same float bit for bit.
"""
from __future__ import annotations

import math
from fractions import Fraction
from numbers import Integral, Rational
from typing import Any

import numpy as np
import sympy
from sympy import Expr, Rational as SymRational
from sympy.polys.domains.domain import Domain
from sympy.polys.polyerrors import CoercionFailed, GeneratorsError, PolynomialError

from .errors import InvalidInputError, InvalidTypeError

__all__ = ["exact_rational", "exact_sympy", "to_domain", "round_rational", "as_array",
           "check_finite"]


def exact_rational(value: Any) -> SymRational:
    """Return the sympy ``Rational`` equal to ``value`` (a float, integer, or rational).

    Floats (Python, numpy float16/32/64) are converted exactly, ``0.1 -> 3602879701896397/2**55``.
    NaN and infinities have no rational value and raise ``ValueError``.
    """
    if isinstance(value, (bool, np.bool_)):
        return SymRational(int(value))
    if isinstance(value, (Integral, np.integer)):
        return SymRational(int(value))
    if isinstance(value, SymRational):
        return value
    if isinstance(value, Rational):
        return SymRational(int(value.numerator), int(value.denominator))
    if isinstance(value, (float, np.floating)):
        as_float = float(value)  # float16/32 -> float64 is exact
        if not math.isfinite(as_float):
            raise InvalidInputError(f"cannot convert non-finite number {as_float!r} to a rational")
        numerator, denominator = as_float.as_integer_ratio()
        return SymRational(numerator, denominator)
    if isinstance(value, Expr) and value.is_Rational:
        return value
    raise InvalidTypeError(f"cannot convert {type(value).__name__} {value!r} exactly to a rational")


def exact_sympy(value: Any) -> Any:
    """``value`` as a sympy object without rounding: floats (Python, numpy, sympy ``Float``,
    0-d tensors) become their exact binary rationals; NaN, infinities, complex numbers and
    strings are refused."""
    if hasattr(value, "item") and not isinstance(value, Expr) and getattr(value, "ndim", 0) == 0:
        value = value.item()  # numpy / torch scalars
    if isinstance(value, str):
        raise InvalidTypeError(f"expected a number or a sympy expression, got the string {value!r}")
    if isinstance(value, (complex, np.complexfloating)):
        raise InvalidTypeError(f"complex value {value!r}: only real weights are supported")
    if isinstance(value, (bool, np.bool_, Integral, np.integer, float, np.floating, Rational)):
        return exact_rational(value)
    if isinstance(value, sympy.Float):
        if not value.is_finite:
            raise InvalidInputError(f"cannot use the non-finite number {value}")
        return SymRational(value)  # a binary float: its exact value
    if isinstance(value, sympy.Basic):
        if value.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo):
            raise InvalidInputError(f"cannot use the non-finite value {value}")
        if value.is_number and value.is_real is False:
            raise InvalidTypeError(f"complex value {value}: only real weights are supported")
        floats = value.atoms(sympy.Float)
        return value.xreplace({f: SymRational(f) for f in floats}) if floats else value
    raise InvalidTypeError(f"cannot use {type(value).__name__} {value!r} as an exact number")


def to_domain(value: Any, domain: Domain) -> Any:
    """Convert ``value`` into an element of ``domain``, exactly whenever the domain is exact.

    Floats go through :func:`exact_sympy` first, so ``to_domain(0.1, QQ)`` is the exact
    binary value of 0.1, never the decimal 1/10.  A value the domain cannot hold (a
    symbol not among the domain's, a fraction in ``ZZ``) raises ``ValueError`` naming both."""
    if _is_element(value, domain):
        return value
    if getattr(domain, "is_RR", False) or getattr(domain, "is_CC", False):
        if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
            raise InvalidInputError(f"cannot use the non-finite number {value!r}")
        return domain.convert(value)
    exact = exact_sympy(value)
    try:
        return domain.from_sympy(exact)
    except (CoercionFailed, GeneratorsError, PolynomialError) as exc:
        raise InvalidInputError(f"cannot represent {exact} in the domain {domain}"
                                + (" (its symbols are not weight symbols of this ring)"
                            if getattr(exact, "free_symbols", None) else "")) from exc


def _is_element(value: Any, domain: Domain) -> bool:
    """Already an element of ``domain`` (not a Python int, which every domain converts)."""
    if isinstance(value, (int, float, Expr)):
        return False
    try:
        return bool(domain.of_type(value))
    except Exception:
        return False


def round_rational(value: Fraction | SymRational, dtype: Any) -> Any:
    """``value`` correctly rounded (to nearest, ties to even) into the float ``dtype``.

    ``int / int`` (``float(Fraction)``) is correctly rounded to float64, so dyadic rationals
    from floats come back exactly.  Narrower floats (float32, float16) must not be reached
    by rounding to nearest twice (a value just above a float32 midpoint can land exactly on
    it in float64 and then tie to even the wrong way): round to float64 *to odd* first
    (53 >= 24 + 2 bits, so the second rounding is then correct).  Non-float dtypes and
    values that overflow the dtype raise ``ValueError``."""
    if isinstance(value, SymRational):
        value = Fraction(int(value.p), int(value.q))
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise InvalidInputError(f"cannot round {value} into the non-float dtype {dtype}")
    if dtype.itemsize >= 8:
        result = dtype.type(value)
    else:
        nearest = float(value)
        if Fraction(nearest) != value:
            toward = math.inf if value > Fraction(nearest) else -math.inf
            if not int(np.float64(nearest).view(np.int64)) & 1:
                nearest = math.nextafter(nearest, toward)  # the odd neighbour
        with np.errstate(over="ignore"):
            result = dtype.type(nearest)
    if not np.isfinite(result):
        raise InvalidInputError(f"{float(value):.6g} overflows {dtype}")
    return result


def as_array(value: Any) -> np.ndarray:
    """A numpy view of a numpy array, nested list, or CPU tensor (without importing torch:
    anything with ``.detach()`` is read through ``.numpy()``; bfloat16 widens exactly)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if getattr(value, "dtype", None) is not None and "bfloat16" in str(value.dtype):
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def check_finite(array: np.ndarray, what: str) -> None:
    """Refuse NaN/Inf entries of a float or complex array, naming ``what`` and the index."""
    if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(array))[0]
        raise InvalidInputError(f"{what} has a non-finite value {array[tuple(bad)]} at index {tuple(bad)}")
