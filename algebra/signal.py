"""Applying an operator to a finite signal, exactly.

A signal ``x`` of shape ``(C, n1, ..., nk)`` is the channel vector of generating
functions ``X_c(z) = sum_i x[c, i] z^i`` (zero outside the array: zero padding).  Then

    y[o, i] = b_o + [z^(s*i)] sum_c K_{o,c}(z) X_c(z^u)          (non-periodic)
    y[o, i] = b_o + [z^(s*i)] (sum_c K_{o,c}(z) X_c(z)) mod (z^n - 1)   (periodic)

For one layer, the first formula is PyTorch's zero-padded convolution on the output window
``0 <= i < out_shape`` and the second its circular padding (when ``2p = d(k-1)`` and ``s | n``).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import sympy
from sympy.polys.domains import QQ

from .errors import InvalidInputError, InvalidTypeError
from .laurent import LaurentPoly, per_axis
from .memory import EXACT_TERM_BYTES, check_budget
from .operator import ConvOperator
from .validate import bool_arg

__all__ = ["signal_to_polys", "apply_operator"]


def _with_input_symbols(op: ConvOperator, array: np.ndarray) -> ConvOperator:
    """``op`` over a domain that also holds the symbols of a symbolic input signal."""
    if array.dtype != object:
        return op
    symbols: set[sympy.Symbol] = set()
    for v in array.flat:
        if isinstance(v, sympy.Basic):
            symbols |= v.free_symbols
    if not symbols:
        return op
    domain = op.ring.domain.unify(QQ[sorted(symbols, key=str)])
    return op.set_ring(op.ring.with_domain(domain))


def signal_to_polys(op: ConvOperator, x: Any) -> list[LaurentPoly]:
    """``[X_c(z)]`` for an array ``x`` of shape ``(C, *n)`` (floats converted exactly;
    symbolic entries need ``op`` over a domain holding their symbols)."""
    array = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
    if array.ndim != op.ndim + 1:
        raise InvalidInputError(f"expected a signal of shape (C, {'n, ' * op.ndim}...) with "
                                f"{op.ndim + 1} axes, got shape {array.shape}")
    if array.shape[0] != op.in_channels:
        raise InvalidInputError(f"signal has {array.shape[0]} channels, the operator takes {op.in_channels}")
    return [op.ring.from_array(channel) for channel in array]


def _apply_bytes(op: ConvOperator, n: Sequence[int]) -> int:
    """Terms of the input polynomials and of the products ``K_o X`` (a dense box each)."""
    box = op.support() or ((0,) * op.ndim, (0,) * op.ndim)
    product = np.prod([m * u + h - l + 1 for m, u, l, h in zip(n, op.upsample, *box)],
                      dtype=object)
    return EXACT_TERM_BYTES * (op.in_channels * int(np.prod(n, dtype=object)) +
                               op.out_channels * int(product))


def apply_operator(op: ConvOperator, x: Any, out_shape: int | Sequence[int] | None = None, *,
                   periodic: bool = False) -> np.ndarray:
    """Exact ``y = down_s(K X(z^u)) + b`` on the window ``[0, out_shape)``: an object array
    of sympy numbers (or expressions for symbolic weights/inputs), shape ``(C_out, *out)``.

    ``periodic=True`` reduces modulo ``z^n - 1`` (circular padding); the output shape is then
    ``n / s`` and each stride must divide its size.  Non-periodic without ``out_shape``: every
    ``i >= 0`` up to the last nonzero coefficient.  The input may hold sympy symbols."""
    if not isinstance(op, ConvOperator):
        raise InvalidTypeError(f"op must be a ConvOperator, got {type(op).__name__}")
    periodic = bool_arg(periodic, "periodic")
    if out_shape is not None:
        out_shape = per_axis(out_shape, op.ndim, "out_shape")
        if any(v < 1 for v in out_shape):
            raise InvalidInputError(f"out_shape must be positive sizes, got {out_shape}")
    try:
        array = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
    except ValueError as exc:  # a ragged nested list
        raise InvalidInputError(f"x must be a rectangular array (C, *n): {exc}") from None
    if array.dtype.kind in "USV":
        raise InvalidTypeError(f"x must hold numbers, got dtype {array.dtype}")
    if array.size == 0:
        raise InvalidInputError(f"the signal is empty (shape {array.shape})")
    n = tuple(int(v) for v in array.shape[1:])
    check_budget(_apply_bytes(op, n), f"applying a {op.out_channels}x{op.in_channels} exact "
                 f"operator to a signal of shape {array.shape}")
    op = _with_input_symbols(op, array)
    X = signal_to_polys(op, array)
    rows = []
    for o in range(op.out_channels):
        acc = op.ring.zero
        for c in range(op.in_channels):
            if op.matrix[o][c] and X[c]:
                acc = acc + op.matrix[o][c] * X[c].subs_power(op.upsample)
        rows.append(acc)
    if periodic:
        if any(u != 1 for u in op.upsample):
            raise InvalidInputError("periodic application of an up-sampling operator is not supported")
        if any(size % s for size, s in zip(n, op.stride)):
            raise InvalidInputError(f"circular padding with stride {op.stride} needs each stride to "
                                    f"divide the size {n}")
        rows = [r.mod_circular(n) for r in rows]
        out = tuple(size // s for size, s in zip(n, op.stride))
        if out_shape is not None and per_axis(out_shape, op.ndim, "out_shape") != out:
            raise InvalidInputError(f"a periodic output has the shape n / stride = {out}, "
                                    f"not {out_shape}")
    elif out_shape is None:
        highs = [r.support()[1] for r in rows if r]
        high = tuple(max(col) for col in zip(*highs)) if highs else (0,) * op.ndim
        out = tuple(max(h, 0) // s + 1 for h, s in zip(high, op.stride))
    else:
        out = per_axis(out_shape, op.ndim, "out_shape")
    to_sympy = op.ring.domain.to_sympy
    y = np.empty((op.out_channels, *out), dtype=object)
    for o, r in enumerate(rows):
        terms = r.to_dict()
        b = to_sympy(op.bias[o])
        zero = op.ring.domain.zero
        for i in np.ndindex(*out):
            key = tuple(a * s for a, s in zip(i, op.stride))
            y[(o, *i)] = to_sympy(terms.get(key, zero)) + b
    return y
