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
from sympy import Expr, Rational as SymRational
from sympy.polys.domains import QQ
from sympy.polys.domains.domain import Domain

__all__ = ["exact_rational", "to_domain", "round_rational"]


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
            raise ValueError(f"cannot convert non-finite number {as_float!r} to a rational")
        numerator, denominator = as_float.as_integer_ratio()
        return SymRational(numerator, denominator)
    if isinstance(value, Expr) and value.is_Rational:
        return value
    raise TypeError(f"cannot convert {type(value).__name__} {value!r} exactly to a rational")


def to_domain(value: Any, domain: Domain) -> Any:
    """Convert ``value`` into an element of ``domain``, exactly whenever the domain is exact.

    Floats go through :func:`exact_rational` first, so ``to_domain(0.1, QQ)`` is the exact
    binary value of 0.1, never the decimal 1/10.  Symbolic expressions (sympy ``Expr``
    holding symbols) are handed to ``domain.from_sympy``.
    """
    if isinstance(value, (float, np.floating)) and not getattr(domain, "is_RR", False) \
            and not getattr(domain, "is_CC", False):
        value = exact_rational(value)
    elif isinstance(value, (np.integer, np.bool_)):
        value = int(value)
    if isinstance(value, (int, SymRational)) or isinstance(value, Expr):
        from sympy import sympify
        return domain.from_sympy(sympify(value))
    if isinstance(value, Rational):
        return domain.convert_from(QQ(int(value.numerator), int(value.denominator)), QQ)
    return domain.convert(value)


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
        raise ValueError(f"cannot round {value} into the non-float dtype {dtype}")
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
        raise ValueError(f"{float(value):.6g} overflows {dtype}")
    return result
