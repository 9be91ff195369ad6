"""The exact operator ``down_S z^low P(z) up_U + b`` on python-flint, for rational weights.

:class:`FlintOperator` is the FLINT twin of :class:`~laurentnet.algebra.ConvOperator` over
``QQ``, used inside a collapse (:class:`~laurentnet.algebra.flint_backend.FlintBackend`) and
converted back at the end, so callers only ever see ``ConvOperator``.  One offset ``low``
and one denominator ``den`` per operator: entry ``(o, c)`` is ``z^low N_{o,c}(z) / den`` with
``N_{o,c}`` an integer polynomial with nonnegative exponents, held in one of two forms —

* **sparse**: a matrix of ``flint.fmpz_mpoly`` (one FLINT polynomial per entry);
* **dense**: one integer tensor (:class:`~laurentnet.algebra.flint_dense.DenseKernel`).

Integer numerators keep FLINT away from rational normalisation: ``fmpq_mpoly`` reads its
coefficients back through a gcd with the polynomial's content, which costs more than the
products once the coefficients have hundreds of bits.

The algebra is that of :mod:`algebra.operator` (``docs/conventions.md``): the composition
``outer ∘ inner`` is ``K = K_o(z^{S_i}) K_i(z^{U_o})`` with offset ``low_o S_i + low_i U_o``,
stride ``S_o S_i``, up-sampling ``U_o U_i`` and bias ``K_o(1) b_i + b_o``; sums add kernels
and biases; the refusals are the shared ones of :mod:`algebra.operator`.  A product runs on
the dense form (FLINT integer matrix products, one per tap) when the operators are wide and
densely coupled, entry by entry on ``fmpz_mpoly`` otherwise (:func:`product_kernel`).

The denominator of a product is ``D_o D_i``, of a sum ``lcm(D_a, D_b)`` (not reduced: the
conversion back to ``QQ`` normalises each coefficient).  A size bound rides along for the
memory guard: ``mag`` with ``|coefficient| <= 2^mag``, so every numerator has at most
``bits = mag + bits(D) + 1`` bits.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .errors import InvalidTypeError
from .flint_dense import (CHUNK_ENTRIES, DenseKernel, dense_align, dense_from_entries,
                          dense_product, dense_to_entries)
from .memory import check_budget
from .operator import check_addable, check_composable, check_stackable

__all__ = ["FlintOperator", "flint_vstack", "product_kernel", "to_fmpq", "fmpz_bytes",
           "python_int_bytes", "DENSE_MIN_TRIPLES", "DENSE_MIN_FILL"]

#: the dense kernel is used when a product couples at least this many (o, m, c) channel
#: triples ...
DENSE_MIN_TRIPLES = 512
#: ... and at least this fraction of all ``C_out C_mid C_in`` triples
DENSE_MIN_FILL = 0.25


def _flint() -> Any:
    import flint
    return flint


def to_fmpq(value: Any) -> Any:
    """An exact rational (int, Fraction, sympy/gmpy/flint rational, float) as ``fmpq``."""
    flint = _flint()
    if isinstance(value, flint.fmpq):
        return value
    if isinstance(value, (int, flint.fmpz)) and not isinstance(value, bool):
        return flint.fmpq(value)
    num = getattr(value, "numerator", None)
    den = getattr(value, "denominator", None)
    if num is not None and den is not None and not isinstance(value, float):
        num = num() if callable(num) else num
        den = den() if callable(den) else den
        return flint.fmpq(int(num), int(den))
    if isinstance(value, float) and math.isfinite(value):
        return flint.fmpq(*value.as_integer_ratio())
    raise InvalidTypeError(f"expected an exact rational number, got {value!r}")


# -- sizes (the memory guard) -------------------------------------------------------------
def fmpz_bytes(bits: int) -> int:
    """An ``fmpz`` slot of a FLINT array holding an integer of ``bits`` bits (small values
    live in the slot; larger ones in a GMP integer with its allocation overhead)."""
    return 8 if bits <= 62 else 8 + 48 + 8 * -(-bits // 64)


def python_int_bytes(bits: int) -> int:
    """A Python ``int`` or ``flint.fmpz`` object of ``bits`` bits, with its array slot."""
    return 8 + 48 + fmpz_bytes(bits) + 4 * -(-bits // 30)


def _bit_length(value: Any) -> int:
    return int(abs(int(value))).bit_length()


# -- the operator ---------------------------------------------------------------------------
class FlintOperator:
    """``down_stride z^low P(z) up_upsample + bias`` (see the module docstring).  Immutable:
    the second form of the kernel is computed once, on demand, and cached."""

    __slots__ = ("ctx", "shape", "low", "stride", "upsample", "bias", "mag", "den", "_entries",
                 "_dense", "is_identity")

    def __init__(self, ctx: Any, shape: tuple[int, int], low: Sequence[int],
                 stride: Sequence[int], upsample: Sequence[int], bias: Sequence[Any],
                 mag: int, den: int, entries: Sequence[Sequence[Any]] | None = None,
                 dense: DenseKernel | None = None):
        if (entries is None) == (dense is None):
            raise ValueError("give exactly one of entries and dense")
        self.ctx = ctx
        self.shape = (int(shape[0]), int(shape[1]))
        self.low = tuple(int(v) for v in low)
        self.stride = tuple(int(v) for v in stride)
        self.upsample = tuple(int(v) for v in upsample)
        self.bias = tuple(bias)
        self.mag, self.den = int(mag), int(den)
        if dense is not None and dense.den != self.den:
            raise ValueError("the dense kernel's denominator must be the operator's")
        self._entries = None if entries is None else tuple(tuple(row) for row in entries)
        self._dense = dense
        #: set by :meth:`identity`: ``K = I``, rates 1, no bias (composing with it is free)
        self.is_identity = False

    @classmethod
    def identity(cls, ctx: Any, channels: int) -> "FlintOperator":
        """``K = I`` on ``channels`` channels (a skip connection, the network input)."""
        flint = _flint()
        one, zero = ctx.from_dict({(0,) * ctx.nvars(): 1}), ctx.from_dict({})
        op = cls(ctx, (channels, channels), (0,) * ctx.nvars(), (1,) * ctx.nvars(),
                 (1,) * ctx.nvars(), (flint.fmpq(0),) * channels, 1, 1,
                 entries=[[one if i == j else zero for j in range(channels)]
                          for i in range(channels)])
        op.is_identity = True
        return op

    # -- forms ------------------------------------------------------------------------------
    @property
    def is_dense(self) -> bool:
        """Whether the dense form is the one the operator was made in."""
        return self._entries is None

    @property
    def entries(self) -> tuple[tuple[Any, ...], ...]:
        """The sparse form: ``fmpz_mpoly`` numerators, exponents relative to ``low``."""
        if self._entries is None:
            self._entries = tuple(tuple(row) for row in dense_to_entries(self._dense, self.ctx))
        return self._entries

    @property
    def dense(self) -> DenseKernel:
        """The dense form (numerators over one denominator, offset ``low``)."""
        if self._dense is None:
            self._dense = dense_from_entries(self._entries, self.den, self.low, self.ndim)
        return self._dense

    @property
    def bits(self) -> int:
        """An upper bound of the bits of every numerator over the denominator ``den``."""
        return max(self.mag, 0) + self.den.bit_length() + 1

    # -- shape ------------------------------------------------------------------------------
    @property
    def out_channels(self) -> int:
        return self.shape[0]

    @property
    def in_channels(self) -> int:
        return self.shape[1]

    @property
    def ndim(self) -> int:
        return len(self.low)

    @property
    def has_bias(self) -> bool:
        return any(self.bias)

    def nonzero(self) -> np.ndarray:
        """``mask[o, c]``: entry ``(o, c)`` is not the zero polynomial."""
        if self._entries is not None:
            return np.array([[bool(p) for p in row] for row in self._entries], bool).reshape(
                self.shape)
        num = self._dense.num
        return (num != 0).reshape(*self.shape, -1).any(axis=2)

    def term_count(self) -> int:
        if self._entries is not None:
            return sum(len(p) for row in self._entries for p in row)
        return int(np.count_nonzero(self._dense.num != 0))

    def tap_pattern(self) -> dict[tuple[int, ...], np.ndarray]:
        """``{e: mask}``, ``mask[o, c]`` where ``K_{o,c}`` has a nonzero ``z^e`` term."""
        pattern: dict[tuple[int, ...], np.ndarray] = {}
        if self._entries is not None:
            for o, row in enumerate(self._entries):
                for c, p in enumerate(row):
                    for m in p.monoms():
                        e = tuple(int(a) + b for a, b in zip(m, self.low))
                        pattern.setdefault(e, np.zeros(self.shape, bool))[o, c] = True
            return pattern
        nonzero = self._dense.num != 0
        for index in zip(*np.nonzero(nonzero.reshape(*self.shape, -1).any(axis=(0, 1)))):
            m = np.unravel_index(index[0], self._dense.box)
            e = tuple(int(a) + b for a, b in zip(m, self.low))
            pattern[e] = nonzero[(slice(None), slice(None), *m)].copy()
        return pattern

    def at_one(self) -> list[list[Any]]:
        """``K(1)`` as ``fmpq`` (what a constant image is multiplied by)."""
        flint = _flint()
        if self._entries is not None:
            ones = (1,) * self.ndim
            return [[flint.fmpq(p(*ones), self.den) if p else flint.fmpq(0) for p in row]
                    for row in self._entries]
        sums = self._dense.num.reshape(*self.shape, -1).sum(axis=2)
        return [[flint.fmpq(v, self.den) for v in row] for row in sums]

    # -- algebra ----------------------------------------------------------------------------
    def __matmul__(self, other: "FlintOperator") -> "FlintOperator":
        """``self ∘ other`` (``other`` first), by the noble identities."""
        if not isinstance(other, FlintOperator):
            return NotImplemented
        outer, inner = self, other
        check_composable(outer, inner)
        if inner.is_identity:
            return outer
        if outer.is_identity:
            return inner
        kernel = product_kernel(outer, inner)
        check_budget(product_bytes(outer, inner, kernel),
                     f"composing a {outer.out_channels}x{outer.in_channels} exact operator "
                     f"with a {inner.out_channels}x{inner.in_channels} one")
        s_i, u_o = inner.stride, outer.upsample
        low = tuple(lo * s + li * u for lo, s, li, u in zip(outer.low, s_i, inner.low, u_o))
        taps = math.prod(outer.kernel_box())
        mag = outer.mag + inner.mag + (outer.in_channels * taps).bit_length()
        den = outer.den * inner.den
        stride = tuple(a * b for a, b in zip(outer.stride, s_i))
        upsample = tuple(a * b for a, b in zip(u_o, inner.upsample))
        if inner.has_bias:
            at_one = outer.at_one()
            bias = tuple(sum((at_one[o][m] * inner.bias[m] for m in range(outer.in_channels)),
                             outer.bias[o]) for o in range(outer.out_channels))
        else:
            bias = outer.bias
        shape = (outer.out_channels, inner.in_channels)
        if kernel == "dense":
            return FlintOperator(self.ctx, shape, low, stride, upsample, bias, mag, den,
                                 dense=dense_product(outer.dense, inner.dense, s_i, u_o))
        entries = _sparse_product(outer.entries, inner.entries, s_i, u_o, self.ctx,
                                  inner.in_channels)
        return FlintOperator(self.ctx, shape, low, stride, upsample, bias, mag, den,
                             entries=entries)

    def kernel_box(self) -> tuple[int, ...]:
        """Per axis, ``1 +`` the largest exponent of ``P`` (the box from ``low``)."""
        if self._dense is not None:
            return self._dense.box
        high = [0] * self.ndim
        for row in self._entries:
            for p in row:
                if p:
                    for a, d in enumerate(p.degrees()):
                        high[a] = max(high[a], int(d))
        return tuple(h + 1 for h in high)

    def __add__(self, other: "FlintOperator") -> "FlintOperator":
        """Parallel branches: kernels and biases add (same shape, strides, up-sampling)."""
        if not isinstance(other, FlintOperator):
            return NotImplemented
        check_addable(self, other)
        bias = tuple(x + y for x, y in zip(self.bias, other.bias))
        mag = max(self.mag, other.mag) + 1
        if self.is_dense or other.is_dense:
            (a, b), den, low = dense_align([self.dense, other.dense])
            return FlintOperator(self.ctx, self.shape, low, self.stride, self.upsample, bias,
                                 mag, den, dense=DenseKernel(a + b, den, low))
        low = tuple(min(x, y) for x, y in zip(self.low, other.low))
        den = math.lcm(self.den, other.den)
        left, right = (_shifted(op.entries, op.low, low, den // op.den, self.ctx)
                       for op in (self, other))
        entries = [[x + y for x, y in zip(ra, rb)] for ra, rb in zip(left, right)]
        return FlintOperator(self.ctx, self.shape, low, self.stride, self.upsample, bias, mag,
                             den, entries=entries)

    def __mul__(self, scalar: Any) -> "FlintOperator":
        """``c·A`` for an exact rational ``c`` (kernel and bias)."""
        if isinstance(scalar, FlintOperator):
            return NotImplemented
        c = to_fmpq(scalar)
        p, q = int(c.p), int(c.q)
        mag = self.mag + _bit_length(p) - q.bit_length() + 1
        bias = tuple(c * b for b in self.bias)
        if self.is_dense:
            d = self._dense
            return FlintOperator(self.ctx, self.shape, self.low, self.stride, self.upsample,
                                 bias, mag, self.den * q,
                                 dense=DenseKernel(d.num * p, d.den * q, d.low))
        entries = [[e * p for e in row] for row in self._entries]
        return FlintOperator(self.ctx, self.shape, self.low, self.stride, self.upsample, bias,
                             mag, self.den * q, entries=entries)

    __rmul__ = __mul__

    def __repr__(self) -> str:
        form = "dense" if self.is_dense else "sparse"
        return (f"FlintOperator({self.out_channels}x{self.in_channels}, {form}, low={self.low}, "
                f"stride={self.stride}, upsample={self.upsample})")


def _shifted(entries: Sequence[Sequence[Any]], low: tuple[int, ...], new_low: tuple[int, ...],
             factor: int, ctx: Any) -> Sequence[Sequence[Any]]:
    """``factor`` times the same polynomials, written relative to ``new_low <= low``
    (numerators moved to a denominator ``factor`` times larger)."""
    shift = tuple(a - b for a, b in zip(low, new_low))
    if not any(shift) and factor == 1:
        return entries
    monomial = ctx.term(exp_vec=shift, coeff=factor)
    return [[p * monomial if p else p for p in row] for row in entries]


def flint_vstack(ops: Sequence[FlintOperator]) -> FlintOperator:
    """``[A_1; ...; A_k]``: output channels stacked (same input, strides, up-sampling)."""
    ops = list(ops)
    check_stackable(ops)
    first = ops[0]
    rows = sum(op.out_channels for op in ops)
    bias = tuple(b for op in ops for b in op.bias)
    mag = max(op.mag for op in ops)
    if any(op.is_dense for op in ops):
        nums, den, low = dense_align([op.dense for op in ops])
        return FlintOperator(first.ctx, (rows, first.in_channels), low, first.stride,
                             first.upsample, bias, mag, den,
                             dense=DenseKernel(np.concatenate(nums), den, low))
    low = tuple(min(v) for v in zip(*(op.low for op in ops)))
    den = math.lcm(*(op.den for op in ops))
    entries = [row for op in ops for row in _shifted(op.entries, op.low, low, den // op.den,
                                                      first.ctx)]
    return FlintOperator(first.ctx, (rows, first.in_channels), low, first.stride,
                         first.upsample, bias, mag, den, entries=entries)


# -- products ---------------------------------------------------------------------------------
def _coupled_triples(outer: FlintOperator, inner: FlintOperator) -> int:
    """How many ``(o, m, c)`` have both ``K_o[o, m]`` and ``K_i[m, c]`` nonzero."""
    a = outer.nonzero().astype(np.float64)
    b = inner.nonzero().astype(np.float64).sum(axis=1)
    return int(round(float((a @ b).sum())))


def product_kernel(outer: FlintOperator, inner: FlintOperator) -> str:
    """``"dense"`` (FLINT integer matrix products, :mod:`algebra.flint_dense`) when the
    product couples many channel triples densely, else ``"sparse"`` (``fmpz_mpoly`` entry by
    entry).  The thresholds :data:`DENSE_MIN_TRIPLES`, :data:`DENSE_MIN_FILL` come from
    ``benchmarks/peers.py --kernels``."""
    triples = _coupled_triples(outer, inner)
    full = outer.out_channels * outer.in_channels * inner.in_channels
    if triples >= DENSE_MIN_TRIPLES and triples >= DENSE_MIN_FILL * full:
        return "dense"
    return "sparse"


def _sparse_product(left: Sequence[Sequence[Any]], right: Sequence[Sequence[Any]],
                    stride: tuple[int, ...], upsample: tuple[int, ...], ctx: Any,
                    n_cols: int) -> list[list[Any]]:
    """``L(z^stride) R(z^upsample)`` entry by entry (``fmpz_mpoly``)."""
    if any(s != 1 for s in stride):
        factors = list(stride)
        left = [[p.inflate(factors) if p else p for p in row] for row in left]
    if any(u != 1 for u in upsample):
        factors = list(upsample)
        right = [[p.inflate(factors) if p else p for p in row] for row in right]
    columns = [[(k, row[j]) for k, row in enumerate(right) if row[j]] for j in range(n_cols)]
    zero = ctx.from_dict({})
    out = []
    for row in left:
        out_row = []
        for column in columns:
            acc = None
            for k, b in column:
                a = row[k]
                if a:
                    if acc is None:
                        acc = a * b
                    else:
                        acc.iadd(a * b)
            out_row.append(zero if acc is None else acc)
        out.append(out_row)
    return out


def product_bytes(outer: FlintOperator, inner: FlintOperator, kernel: str) -> int:
    """An upper bound of what composing ``outer ∘ inner`` allocates (result included)."""
    box_o, box_i = outer.kernel_box(), inner.kernel_box()
    box = tuple((bo - 1) * s + (bi - 1) * u + 1 for bo, s, bi, u in
                zip(box_o, inner.stride, box_i, outer.upsample))
    bits = outer.bits + inner.bits + (outer.in_channels * math.prod(box_o)).bit_length()
    rows, mid, cols = outer.out_channels, outer.in_channels, inner.in_channels
    return product_workspace_bytes(rows, mid, cols, math.prod(box_o), math.prod(box_i),
                                   math.prod(box), outer.bits, inner.bits, bits,
                                   kernel, _coupled_triples(outer, inner))


def product_workspace_bytes(rows: int, mid: int, cols: int, taps_o: int, taps_i: int,
                            taps: int, bits_o: int, bits_i: int, bits: int, kernel: str,
                            triples: int) -> int:
    """Bytes of one product (result and temporaries) for the given sizes and coefficient
    bits: the dense kernel's FLINT matrices, their residues modulo its primes and the
    Python integers read back (a chunk of :data:`CHUNK_ENTRIES` at a time); the sparse
    kernel's inflated copies and partial products."""
    if kernel == "dense":
        columns = cols * taps_i
        chunk = min(taps_o * rows * columns, max(CHUNK_ENTRIES, rows * columns))
        primes = 2 + bits // 50
        flint_mats = (mid * columns) * fmpz_bytes(bits_i) + taps_o * rows * mid * \
            fmpz_bytes(bits_o) + chunk * fmpz_bytes(bits)
        residues = 8 * primes * (mid * columns + taps_o * rows * mid + chunk)
        listed = 8 * mid * columns + chunk * (python_int_bytes(bits) + 8)
        result = rows * cols * taps * python_int_bytes(bits)
        return flint_mats + residues + listed + result
    term = 2 * (fmpz_bytes(bits) + 16)
    result = rows * cols * (taps * term + 128)
    partial = triples * taps * term // max(1, cols) + (rows + mid) * (mid + cols) * 128
    copies = (rows * mid * taps_o * 2 * (fmpz_bytes(bits_o) + 16) +
              mid * cols * taps_i * 2 * (fmpz_bytes(bits_i) + 16))
    return result + partial + copies
