"""User inputs to the numeric side, coerced once: a real tensor (or per-axis ints, or a
float dtype) or a clear error.

* :func:`as_real_tensor` — user data (tensor, array, nested list) as a real tensor;
* :func:`as_float_tensor`, :func:`rounded_tensor` — weights as float32/float64 tensors
  (exact numbers rounded once, correctly);
* :func:`check_float_dtype`, :func:`check_finite_tensor` — the dtype and NaN/Inf guards;
* :func:`int_tuple`, :func:`positive_ints` — one integer per spatial axis.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import sympy
import torch

from ..algebra.errors import InvalidInputError, InvalidTypeError
from ..algebra.exact import round_rational
from ..algebra.laurent import per_axis

__all__ = ["as_real_tensor", "FLOAT_DTYPES", "check_float_dtype", "as_float_tensor",
           "check_finite_tensor", "int_tuple", "positive_ints", "numpy_dtype", "rounded_tensor"]


def as_real_tensor(value: Any, what: str = "the input") -> torch.Tensor:
    """``value`` (a tensor, numpy array or nested list) as a real torch tensor.  Complex or
    non-numeric data raise ``TypeError`` naming ``what``; dtypes are left to the caller."""
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InvalidTypeError(f"{what} must be a tensor or a numeric array, got "
                                   f"{type(value).__name__} ({exc})") from None
    if value.is_complex():
        raise InvalidTypeError(f"{what} is complex ({value.dtype}); only real data are supported")
    return value


#: the coefficient dtypes a KernelOperator holds (FFT products and float64 convolutions
#: need one of these; float16/bfloat16 have no CPU FFT in torch)
FLOAT_DTYPES = (torch.float32, torch.float64)


def check_float_dtype(dtype: Any, what: str = "dtype") -> torch.dtype:
    """``dtype`` if it is ``torch.float32`` or ``torch.float64``, else a clear TypeError."""
    if not isinstance(dtype, torch.dtype):
        raise InvalidTypeError(f"{what} must be a torch dtype (torch.float32 or torch.float64), "
                               f"got {dtype!r}")
    if dtype.is_complex:
        raise InvalidTypeError(f"{what} {dtype}: complex weights not supported (the operators are "
                               "real); pass torch.float32 or torch.float64")
    if not dtype.is_floating_point:
        raise InvalidTypeError(f"{what} must be floating point (torch.float32 or torch.float64), "
                               f"got {dtype}")
    if dtype not in FLOAT_DTYPES:
        raise InvalidTypeError(f"{what} {dtype} is not supported (no CPU FFT/float kernels for it); "
                               "use torch.float32 or torch.float64")
    return dtype


def as_float_tensor(value: Any, dtype: torch.dtype | None, what: str = "coefficients") -> torch.Tensor:
    """A fresh (copied, detached) real tensor from a tensor or array.  ``dtype`` None keeps a
    float32/float64 tensor's dtype (float16/bfloat16 widen exactly to float32, integers and
    booleans become float64).  Complex and non-numeric input is refused (TypeError)."""
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise InvalidTypeError(f"{what}: complex weights not supported (got a {value.dtype} "
                                   "tensor); pass the real part explicitly if that is what you mean")
        if dtype is None:
            dtype = value.dtype if value.dtype in FLOAT_DTYPES else \
                torch.float32 if value.is_floating_point() else torch.float64
        return value.detach().to(dtype=dtype, copy=True)
    try:
        array = np.asarray(value)
    except ValueError as exc:  # a ragged nested list
        raise InvalidInputError(f"{what} must be a rectangular array (tensor, numpy array or "
                                f"nested lists of equal lengths): {exc}") from None
    if array.dtype.kind == "c":
        raise InvalidTypeError(f"{what}: complex weights not supported (got a {array.dtype} array)")
    if array.dtype.kind not in "biuf":
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidTypeError(f"{what} must be real numbers, got an array of {array.dtype} "
                                   f"({exc})") from None
    if dtype is None:
        dtype = torch.float32 if array.dtype in (np.float32, np.float16) else torch.float64
    return torch.from_numpy(np.array(array, dtype=np.float64)).to(dtype)


def check_finite_tensor(t: torch.Tensor, what: str) -> None:
    if t.numel() and not bool(torch.isfinite(t).all()):
        bad = tuple(int(i) for i in torch.nonzero(~torch.isfinite(t))[0])
        raise InvalidInputError(f"{what} has a non-finite value {t[bad].item()} at index {bad}; "
                                "NaN/Inf weights are refused")


def int_tuple(value: Any, ndim: int, name: str) -> tuple[int, ...]:
    """One integer per axis (an int broadcasts), else a clear ValueError/TypeError."""
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes)):
        raise InvalidTypeError(f"{name} must be an int or {ndim} ints, got {value!r}")
    if not isinstance(value, (int, np.integer)):
        try:
            items = list(value)
        except TypeError:
            raise InvalidTypeError(f"{name} must be an int or {ndim} ints, got {value!r}") from None
        if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))
               for v in items):
            raise InvalidTypeError(f"{name} must be an int or {ndim} ints, got {value!r}")
    return per_axis(value, ndim, name)


def positive_ints(value: Any, ndim: int, name: str) -> tuple[int, ...]:
    """One positive integer per axis (an int broadcasts), else a clear ValueError/TypeError."""
    out = int_tuple(value, ndim, name)
    if any(v <= 0 for v in out):
        raise InvalidInputError(f"{name} must be positive, got {out}")
    return out


def numpy_dtype(dtype: torch.dtype) -> Any:
    return {torch.float32: np.float32, torch.float64: np.float64}[dtype]


def rounded_tensor(values: Any, dtype: torch.dtype, what: str) -> torch.Tensor:
    """Exact numbers (ints, Fractions, sympy Rationals, floats) each rounded ONCE, correctly,
    to ``dtype`` (:func:`algebra.exact.round_rational`); symbolic entries are refused."""
    np_dtype = numpy_dtype(check_float_dtype(dtype))
    array = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    if array.dtype != object:
        if array.dtype.kind == "c":
            raise InvalidTypeError(f"{what}: complex weights not supported")
        t = torch.from_numpy(np.array(array, dtype=np.float64))
        check_finite_tensor(t, what)
        return t.to(dtype)  # float64 (or narrower) values: one rounding
    out = np.empty(array.shape, dtype=np_dtype)
    flat = out.reshape(-1)
    for i, v in enumerate(array.flat):
        if isinstance(v, sympy.Basic):
            if v.free_symbols:
                raise InvalidInputError(f"{what} is symbolic ({v}); substitute numbers first")
            if not v.is_Rational:
                v = float(v)  # an irrational constant: one rounding to float64
        if isinstance(v, (float, np.floating)):
            if not np.isfinite(v):
                raise InvalidInputError(f"{what} has a non-finite value {v}; NaN/Inf weights are refused")
            flat[i] = np_dtype(v)
            continue
        if isinstance(v, (complex, np.complexfloating)):
            raise InvalidTypeError(f"{what}: complex weights not supported")
        if isinstance(v, (int, np.integer)):
            v = Fraction(int(v))
        elif isinstance(v, sympy.Rational):
            v = Fraction(int(v.p), int(v.q))
        elif not isinstance(v, Fraction):
            try:
                v = Fraction(v)
            except (TypeError, ValueError):
                raise InvalidTypeError(f"{what} has a non-numeric entry {v!r}") from None
        try:
            flat[i] = round_rational(v, np_dtype)
        except ValueError as exc:
            raise InvalidInputError(f"{what}: {exc}") from None
    return torch.from_numpy(out)
