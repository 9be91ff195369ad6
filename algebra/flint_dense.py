"""Dense exact kernels: a matrix of Laurent polynomials as one integer tensor over one
common denominator, multiplied by FLINT's integer matrix products.

A :class:`DenseKernel` holds

    K_{o,c}(z) = z^low · (1/den) · sum_j num[o, c, j] z^j          (j ranges over the box)

with ``num`` a numpy object array of integers (Python ``int`` or ``flint.fmpz``) and ``den``
a positive integer.  The product of :func:`dense_product` is the composition's matrix
``K_o(z^S) K_i(z^U)`` (``S`` the inner stride, ``U`` the outer up-sampling, see
:mod:`algebra.operator`): with ``K_o = z^{l_o} sum_t W_t z^t / d_o`` (``W_t`` the
``C_out x C_mid`` integer matrix of tap ``t``) and ``K_i(z^U) = z^{l_i U} sum_e I_e z^e / d_i``,

    K_o(z^S) K_i(z^U) = z^{l_o S + l_i U} / (d_o d_i) · sum_t z^{t S} sum_e (W_t I_e) z^e,

so each tap is one integer matrix product ``W_t · [I_e]_e`` of a ``C_out x C_mid`` by a
``C_mid x (C_in · box)`` matrix, shifted by ``t S`` and summed.  :func:`dense_product` does
the first axis' shifts inside one FLINT product (shifted copies of the inner numerators along
the contraction) and stacks the other axes' taps into the rows (a few at a time, to bound
the memory); their shifted sums are numpy object additions.  Moving integers between FLINT
and Python costs more than FLINT's multiplication here, and this split moves each about
``k`` times for a ``k x k`` kernel.
This beats the entry-by-entry sparse product (``fmpz_mpoly``) when the operators are wide
and dense (``benchmarks/peers.py``); :mod:`algebra.flint_operator` chooses between them.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import lcm
from typing import Any, Sequence

import numpy as np

__all__ = ["DenseKernel", "dense_product", "dense_from_entries", "dense_to_entries",
           "dense_align", "CHUNK_ENTRIES"]

#: at most this many integers of the stacked product are materialised at once
CHUNK_ENTRIES = 1 << 22


def _flint() -> Any:
    import flint
    return flint


@dataclass(frozen=True, eq=False)
class DenseKernel:
    """``z^low · num / den`` (see the module docstring); ``num`` has shape
    ``(C_out, C_in, *box)``.  Immutable by convention: never written after construction."""
    num: np.ndarray
    den: int
    low: tuple[int, ...]

    @property
    def box(self) -> tuple[int, ...]:
        return tuple(self.num.shape[2:])

    @property
    def ndim(self) -> int:
        return self.num.ndim - 2


def _zeros(shape: Sequence[int]) -> np.ndarray:
    """An object array of Python ``0``."""
    return np.zeros(tuple(shape), dtype=object)


def _inflate(num: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """``K(z^f)``: coefficient ``j`` moves to ``f j`` (zeros in between)."""
    if all(f == 1 for f in factors):
        return num
    box = num.shape[2:]
    out = _zeros((*num.shape[:2], *((b - 1) * f + 1 for b, f in zip(box, factors))))
    out[(slice(None), slice(None), *(slice(None, None, f) for f in factors))] = num
    return out


def dense_product(outer: DenseKernel, inner: DenseKernel, stride: Sequence[int],
                  upsample: Sequence[int]) -> DenseKernel:
    """``K_o(z^stride) K_i(z^upsample)`` exactly (``stride``: the inner operator's,
    ``upsample``: the outer one's).

    The taps of the first axis go into the contraction (``B`` holds the inner numerators
    shifted by ``a S_0`` for each first-axis tap ``a``), the taps of the other axes into
    stacked rows of ``L`` (``L[(r, o), (a, m)] = W[o, m, a, r]``), so ``L B`` needs the shifted
    sums only along the other axes: each integer passes between FLINT and Python about
    ``k`` times (a ``k x k`` kernel) instead of ``k^2`` times."""
    flint = _flint()
    stride, upsample = tuple(stride), tuple(upsample)
    w = outer.num
    right = _inflate(inner.num, upsample)
    c_out, c_mid = w.shape[:2]
    c_in, box_i = right.shape[1], right.shape[2:]
    box_out = tuple((bo - 1) * s + bi for bo, s, bi in zip(outer.box, stride, box_i))
    low = tuple(lo * s + li * u for lo, s, li, u in zip(outer.low, stride, inner.low, upsample))
    den = outer.den * inner.den
    used = (w != 0).any(axis=(0, 1))
    first = [a for a in range(outer.box[0]) if used[a].any()]
    rest = [r for r in np.ndindex(*outer.box[1:]) if used[(slice(None), *r)].any()]
    if not first:
        return DenseKernel(_zeros((c_out, c_in, *box_out)), den, low)
    # B: (a, m) x (c, e_0 out, e_rest in)
    shifted = _zeros((len(first), c_mid, c_in, box_out[0], *box_i[1:]))
    for k, a in enumerate(first):
        shifted[k, :, :, a * stride[0]:a * stride[0] + box_i[0]] = right
    columns = c_in * box_out[0] * int(np.prod(box_i[1:], dtype=np.int64))
    right_mat = flint.fmpz_mat(len(first) * c_mid, columns, shifted.reshape(-1).tolist())
    del shifted
    if not rest[0]:  # one spatial axis: L B is the result
        left = np.ascontiguousarray(w[:, :, first].transpose(0, 2, 1))
        left_mat = flint.fmpz_mat(c_out, len(first) * c_mid, left.reshape(-1).tolist())
        product = np.array((left_mat * right_mat).entries(), dtype=object)
        return DenseKernel(product.reshape(c_out, c_in, *box_out), den, low)
    result = _zeros((c_out, c_in, *box_out))
    per_chunk = max(1, CHUNK_ENTRIES // max(1, c_out * columns))
    for start in range(0, len(rest), per_chunk):
        chunk = rest[start:start + per_chunk]
        # L: (r, o) x (a, m)
        left = np.stack([w[(slice(None), slice(None), first, *r)].transpose(0, 2, 1)
                         for r in chunk])
        left_mat = flint.fmpz_mat(len(chunk) * c_out, len(first) * c_mid,
                                  np.ascontiguousarray(left).reshape(-1).tolist())
        product = np.array((left_mat * right_mat).entries(), dtype=object)
        product = product.reshape(len(chunk), c_out, c_in, box_out[0], *box_i[1:])
        for k, r in enumerate(chunk):
            window = (slice(None), slice(None), slice(None),
                      *(slice(t * s, t * s + b) for t, s, b in zip(r, stride[1:], box_i[1:])))
            if start == 0 and k == 0:
                result[window] = product[k]  # still all zero there: a copy, not a sum
            else:
                result[window] += product[k]
        del product
    return DenseKernel(result, den, low)


def dense_align(kernels: Sequence[DenseKernel]) -> tuple[list[np.ndarray], int,
                                                          tuple[int, ...]]:
    """The numerators of ``kernels`` over one denominator (their lcm) and one box (the union
    of theirs): ``(nums, den, low)`` with every ``nums[k]`` of the same spatial shape."""
    ndim = kernels[0].ndim
    low = tuple(min(k.low[a] for k in kernels) for a in range(ndim))
    high = tuple(max(k.low[a] + k.box[a] for k in kernels) for a in range(ndim))
    den = lcm(*(k.den for k in kernels))
    nums = []
    for k in kernels:
        num = k.num if k.den == den else k.num * (den // k.den)
        if k.low != low or tuple(k.box) != tuple(h - l for h, l in zip(high, low)):
            placed = _zeros((*num.shape[:2], *(h - l for h, l in zip(high, low))))
            placed[(slice(None), slice(None), *(slice(a - l, a - l + b) for a, l, b in
                                                 zip(k.low, low, k.box)))] = num
            num = placed
        nums.append(num)
    return nums, den, low


def dense_from_entries(entries: Sequence[Sequence[Any]], den: int, low: tuple[int, ...],
                       ndim: int) -> DenseKernel:
    """A matrix of ``fmpz_mpoly`` numerators (nonnegative exponents, relative to ``low``)
    over the denominator ``den`` as a :class:`DenseKernel`."""
    terms = [[(p.monoms(), p.coeffs()) for p in row] for row in entries]
    high = [1] * ndim
    for row in terms:
        for monoms, _ in row:
            for m in monoms:
                for a in range(ndim):
                    if m[a] >= high[a]:
                        high[a] = int(m[a]) + 1
    num = _zeros((len(terms), len(terms[0]), *high))
    for o, row in enumerate(terms):
        for c, (monoms, coeffs) in enumerate(row):
            cell = num[o, c]
            for m, coeff in zip(monoms, coeffs):
                cell[tuple(map(int, m))] = coeff
    return DenseKernel(num, den, low)


def dense_to_entries(kernel: DenseKernel, ctx: Any) -> list[list[Any]]:
    """The ``fmpz_mpoly`` numerators (exponents relative to ``kernel.low``)."""
    out = []
    for row in kernel.num:
        out_row = []
        for cell in row:
            index = np.nonzero(cell != 0)
            terms = {tuple(int(i) for i in m): cell[m] for m in zip(*index)}
            out_row.append(ctx.from_dict(terms))
        out.append(out_row)
    return out
