"""Polyphase operators: every linear multirate network, exactly.

A linear operator ``A`` on signals over ``Z^n`` (plus a bias) is *periodically
shift-varying* with input period ``P`` and output period ``Q`` (per axis) when

    A ∘ shift_P = shift_Q ∘ A          (shift_P x [i] = x[i - P]).

Split the input into its ``N = prod P`` polyphase components and the output into its
``M = prod Q`` ones,

    x_r[k] = x[k P + r]   (0 <= r < P),        y_t[m] = y[m Q + t]   (0 <= t < Q),

(products and sums per axis).  Then ``A`` is an ordinary stride-1 operator between the
components: a ``(C_out M) x (C_in N)`` Laurent matrix ``H`` and a bias per output channel
and phase,

    Y_{o,t}(z) = sum_{c,r} H_{(o,t),(c,r)}(z) X_{c,r}(z) + b_{o,t},

rows ordered ``o M + t`` and columns ``c N + r`` (phases flattened in C order: exactly the
channel order of ``pixel_unshuffle`` / ``pixel_shuffle``).  :class:`PolyphaseOperator`
stores ``H`` and ``b`` as one stride-1 :class:`~algebra.operator.ConvOperator` (``block``),
so its arithmetic is :class:`ConvOperator` arithmetic on either coefficient domain.

**A strided convolution** ``down_s K(z) up_u + b`` (``y[i] = sum_j k[s i - u j] x[j] + b``)
satisfies the relation for ``u P = s Q``; the least periods are ``P = s/g``, ``Q = u/g``
with ``g = gcd(s, u)``, and any multiple ``m`` works (``P = m s/g``, ``Q = m u/g``).  With
``L = s Q = u P``,

    H_{(o,t),(c,r)}(z) = sum_n k_{o,c}[L n + s t - u r] z^n
                       = downsample(K_{o,c}, L, phase s t - u r),      b_{o,t} = b_o.

(:meth:`PolyphaseOperator.from_conv`).  So ``down_s K up_u`` with ``g > 1`` equals the
coprime ``down_{s/g} K_0 up_{u/g}``, ``K_0 = downsample(K, g)``.

**Re-blocking** by ``m`` (periods ``mP``, ``mQ``; :meth:`PolyphaseOperator.reblock`):
with ``t' = b Q + t`` and ``r' = a P + r`` (``0 <= a, b < m``)

    H'_{(o,t'),(c,r')} = downsample(H_{(o,t),(c,r)}, m, phase b - a),   b'_{o,t'} = b_{o,t}.

**Composition** ``A2 ∘ A1`` re-blocks both to the common middle period
``lcm(Q1, P2)`` and multiplies the blocks; **sums and stacks** re-block to the common
period (the rates ``P/Q`` must agree) and add / stack.  Biases ride along as in
:class:`ConvOperator` (``b = H2(1) b1 + b2``), so a bias before zero-insertion up-sampling
becomes a bias that is periodic over the output phases.

**Back to one convolution** (:meth:`PolyphaseOperator.to_conv`): ``A`` is one
``down_s K up_u + b`` iff it is the polyphase form of its coprime candidate
``s = P/d``, ``u = Q/d`` (``d = gcd(P, Q)``; a nonzero ``A`` fixes the rate ``s/u = P/Q``),
whose taps are read off the blocks, ``k[L n + s t - u r] = h_{(t),(r)}[n]``, and whose
bias must be constant over the phases.  The candidate is converted back and compared with
``A`` exactly; ``None`` when they differ (no single strided kernel exists).

**Export** (:meth:`PolyphaseOperator.to_weights`): ``A`` is pixel-unshuffle by ``P``, one
stride-1 convolution with ``C_out M`` outputs (``M`` convolutions, one per output phase)
and pixel-shuffle by ``Q`` (:class:`PolyphaseLayout`; the torch module is
:func:`laurentnet.bridge.polyphase_module.polyphase_module`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from math import gcd, lcm, prod
from typing import Any, Sequence

import numpy as np

from .channels import channel_index
from .errors import InvalidInputError, InvalidTypeError
from .laurent import LaurentPoly, LaurentRing, per_axis
from .layout import TorchLayout
from .operator import ConvOperator, vstack
from .signal import apply_operator

__all__ = ["PolyphaseOperator", "PolyphaseAlgebra", "PolyphaseLayout", "polyphase_vstack", "is_polyphase",
           "as_polyphase"]

Period = tuple[int, ...]


def is_polyphase(op: Any) -> bool:
    """Whether ``op`` is a polyphase operator (of either twin: ``op.is_polyphase``)."""
    return bool(getattr(op, "is_polyphase", False))


def _phases(period: Period) -> list[tuple[int, ...]]:
    """The phases ``0 <= t < period`` in C order (the flat index is the list index)."""
    return list(np.ndindex(*period))


def _flat(phase: Sequence[int], period: Period) -> int:
    return int(np.ravel_multi_index(tuple(phase), period)) if period else 0


def _period(value: Any, ndim: int, name: str) -> Period:
    period = per_axis(value, ndim, name)
    if any(p < 1 for p in period):
        raise InvalidInputError(f"{name} must be positive on every axis, got {period}")
    return period


def _bias_labels(values: Sequence[Any], zero: Any) -> list[int]:
    """Equal values get equal labels, zero gets label 0."""
    labels: dict[Any, int] = {}
    out = []
    for v in values:
        if v == zero:
            out.append(0)
            continue
        for known, label in labels.items():
            if known == v:
                out.append(label)
                break
        else:
            labels[v] = len(labels) + 1
            out.append(labels[v])
    return out


@dataclass(frozen=True)
class PolyphaseLayout:
    """A polyphase operator in PyTorch terms: ``pixel_unshuffle`` by ``in_factors`` (the
    input period ``P``), the stride-1 convolution ``conv`` (``C_out M`` outputs from
    ``C_in N`` inputs, ``M = prod out_factors``, ``N = prod in_factors``) and
    ``pixel_shuffle`` by ``out_factors`` (the output period ``Q``).  The unshuffled channel
    ``c N + r`` holds ``x_c[k P + r]``; the conv output channel ``o M + t`` is
    ``y_o[m Q + t]``."""
    in_factors: Period
    out_factors: Period
    in_channels: int
    out_channels: int
    conv: TorchLayout

    @property
    def phases(self) -> int:
        """``M``: the number of output phases (convolutions)."""
        return prod(self.out_factors)

    def describe(self) -> str:
        """The three steps in words (no torch needed)."""
        kernel = "x".join(str(k) for k in self.conv.weight.shape[2:])
        return (f"pixel-unshuffle by {self.in_factors} ({self.in_channels} -> "
                f"{self.in_channels * prod(self.in_factors)} channels), a stride-1 conv "
                f"{self.conv.weight.shape[1]}->{self.conv.weight.shape[0]} kernel {kernel} "
                f"padding {self.conv.padding} ({self.phases} phases of {self.out_channels} "
                f"channels), pixel-shuffle by {self.out_factors}")


class PolyphaseAlgebra:
    """What both twins' polyphase operators share: everything that follows from the periods
    and from the block's own arithmetic (:class:`ConvOperator` here,
    :class:`~laurentnet.numeric.KernelOperator` on the float side, ``_single``).  A subclass
    holds ``block``, ``in_period``, ``out_period`` and implements ``from_conv`` and
    ``reblock``; the block rows are ``o M + t``, the columns ``c N + r``."""

    __slots__ = ()
    is_polyphase = True
    _single: type = ConvOperator

    # -- shape ----------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return self.block.ndim

    @property
    def phases(self) -> int:
        """``M = prod Q``: output phases (the convolutions of the export)."""
        return prod(self.out_period)

    @property
    def in_phases(self) -> int:
        """``N = prod P``: input phases."""
        return prod(self.in_period)

    @property
    def out_channels(self) -> int:
        return self.block.out_channels // self.phases

    @property
    def in_channels(self) -> int:
        return self.block.in_channels // self.in_phases

    @property
    def shape(self) -> tuple[int, int]:
        """``(C_out, C_in)`` of the operator (not of the block)."""
        return self.out_channels, self.in_channels

    @property
    def bias(self) -> Any:
        """``b_{o,t}`` in the block's row order ``o M + t``."""
        return self.block.bias

    @property
    def has_bias(self) -> bool:
        return self.block.has_bias

    @property
    def kernel_size(self) -> tuple[int, ...]:
        """The block's kernel extent (the stride-1 conv of the export)."""
        return self.block.kernel_size

    def _new(self, block: Any, in_period: Period | None = None,
             out_period: Period | None = None) -> Any:
        """An operator of this twin on ``block`` (default: this one's periods)."""
        return type(self)(block, self.in_period if in_period is None else in_period,
                          self.out_period if out_period is None else out_period)

    # -- periods --------------------------------------------------------------------------
    def reblock_to(self, in_period: int | Sequence[int]) -> Any:
        """Re-blocked to the input period ``in_period`` (a multiple of ``P``)."""
        target = _period(in_period, self.ndim, "in_period")
        if any(t % p for t, p in zip(target, self.in_period)):
            raise InvalidInputError(f"in_period {target} is not a multiple of {self.in_period}")
        return self.reblock(tuple(t // p for t, p in zip(target, self.in_period)))

    # -- algebra --------------------------------------------------------------------------
    def _operand(self, other: Any) -> Any:
        """``other`` as this twin's polyphase operator, or None if it is neither that nor
        this twin's single-rate operator."""
        if isinstance(other, self._single):
            return type(self).from_conv(other)
        return other if isinstance(other, type(self)) else None

    def __matmul__(self, other: Any) -> Any:
        """``self ∘ other`` (``other`` first): both re-blocked to the middle period
        ``lcm(Q_other, P_self)``, then the blocks multiply (``b = H2(1) b1 + b2``)."""
        other = self._operand(other)
        if other is None:
            return NotImplemented
        if self.in_channels != other.out_channels:
            raise InvalidInputError(f"cannot compose: the outer operator takes {self.in_channels} "
                                    f"channels, the inner one gives {other.out_channels}")
        mid = tuple(lcm(a, b) for a, b in zip(other.out_period, self.in_period))
        inner = other.reblock(tuple(m // q for m, q in zip(mid, other.out_period)))
        outer = self.reblock(tuple(m // p for m, p in zip(mid, self.in_period)))
        return self._new(outer.block @ inner.block, inner.in_period, outer.out_period)

    def __rmatmul__(self, other: Any) -> Any:
        if isinstance(other, self._single):
            return type(self).from_conv(other) @ self
        return NotImplemented

    def _common(self, other: Any, what: str) -> tuple[Any, Any]:
        """Both re-blocked to one pair of periods (the rates ``P/Q`` must agree)."""
        lifted = self._operand(other)
        if lifted is None:
            raise InvalidTypeError(f"expected a PolyphaseOperator or {self._single.__name__}, "
                                   f"got {type(other).__name__}")
        for axis, (p1, q1, p2, q2) in enumerate(zip(self.in_period, self.out_period,
                                                    lifted.in_period, lifted.out_period)):
            if p1 * q2 != p2 * q1:
                raise InvalidInputError(
                    f"cannot {what} operators of different rates on axis {axis} (input/output "
                    f"periods {p1}/{q1} and {p2}/{q2}): the result is not periodically "
                    "shift-varying; use the affine map for a fixed input size")
        P = tuple(lcm(a, b) for a, b in zip(self.in_period, lifted.in_period))
        return self.reblock_to(P), lifted.reblock_to(P)

    def __add__(self, other: Any) -> Any:
        """Parallel branches: re-blocked to the common period, blocks and biases add."""
        if self._operand(other) is None:
            return NotImplemented
        if self.shape != tuple(other.shape):
            raise InvalidInputError(f"cannot add operators of shapes {self.shape} and {other.shape}")
        a, b = self._common(other, "add")
        return a._new(a.block + b.block)

    __radd__ = __add__

    def __neg__(self) -> Any:
        return self._new(-self.block)

    def __sub__(self, other: Any) -> Any:
        if self._operand(other) is None:
            return NotImplemented
        return self + (-other)

    def __getitem__(self, rows: int | slice | Sequence[int]) -> Any:
        """A channel split: the selected output channels (all their phases)."""
        index = channel_index(rows, self.out_channels, "output channel")
        M = self.phases
        return self._new(self.block[[o * M + t for o in index for t in range(M)]])

    def columns(self, cols: int | slice | Sequence[int]) -> Any:
        """The operator restricted to the selected input channels (bias kept)."""
        index = channel_index(cols, self.in_channels, "input channel")
        N = self.in_phases
        return self._new(self.block.columns([c * N + r for c in index for r in range(N)]))

    def linear_part(self) -> Any:
        return self._new(self.block.linear_part())

    # -- export ---------------------------------------------------------------------------
    def describe(self) -> str:
        """``"polyphase, M phases ..."``: what the operator is and how it exports."""
        kernel = "x".join(map(str, self.kernel_size))
        return (f"{self.out_channels}x{self.in_channels} polyphase operator, {self.phases} "
                f"phases (input period {self.in_period}, output period {self.out_period}; "
                f"no single strided kernel): pixel-unshuffle, a stride-1 conv "
                f"{self.block.in_channels}->{self.block.out_channels} kernel {kernel}, "
                f"pixel-shuffle")


class PolyphaseOperator(PolyphaseAlgebra):
    """A linear periodically shift-varying operator with a bias, exactly: input period
    ``in_period`` (``P``), output period ``out_period`` (``Q``) and the stride-1 block
    operator ``block`` between the polyphase components (module docstring).  Immutable.

    Build one with :meth:`from_conv`, :meth:`identity` or from a block; combine with
    ``@ + - *``, :func:`polyphase_vstack`, ``[rows]``, :meth:`columns`."""

    __slots__ = ("block", "in_period", "out_period")

    def __init__(self, block: ConvOperator, in_period: int | Sequence[int],
                 out_period: int | Sequence[int]):
        if not isinstance(block, ConvOperator):
            raise InvalidTypeError(f"block must be a ConvOperator, got {type(block).__name__}")
        if any(s != 1 for s in block.stride) or any(u != 1 for u in block.upsample):
            raise InvalidInputError(f"the block of a polyphase operator is stride-1, got stride "
                                    f"{block.stride}, up-sampling {block.upsample}")
        self.block = block
        self.in_period = _period(in_period, block.ndim, "in_period")
        self.out_period = _period(out_period, block.ndim, "out_period")
        rows, cols = block.shape
        if rows % self.phases or cols % self.in_phases:
            raise InvalidInputError(f"a {rows}x{cols} block does not have {self.phases} output "
                                    f"and {self.in_phases} input phases per channel")

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def from_conv(cls, op: ConvOperator, multiple: int | Sequence[int] = 1
                  ) -> "PolyphaseOperator":
        """``down_s K up_u + b`` at periods ``P = m s/g``, ``Q = m u/g`` (``g = gcd(s, u)``,
        ``m = multiple``): ``H_{(o,t),(c,r)} = downsample(K_{o,c}, L, s t - u r)`` with
        ``L = s Q``, ``b_{o,t} = b_o``."""
        if is_polyphase(op):
            return op
        if not isinstance(op, ConvOperator):
            raise InvalidTypeError(f"op must be a ConvOperator, got {type(op).__name__}")
        m = _period(multiple, op.ndim, "multiple")
        s, u = op.stride, op.upsample
        g = tuple(gcd(a, b) for a, b in zip(s, u))
        P = tuple(k * a // d for k, a, d in zip(m, s, g))
        Q = tuple(k * b // d for k, b, d in zip(m, u, g))
        L = tuple(a * q for a, q in zip(s, Q))
        out_ph, in_ph = _phases(Q), _phases(P)
        matrix = []
        for o in range(op.out_channels):
            for t in out_ph:
                matrix.append([op.matrix[o][c].downsample(
                    L, tuple(a * ti - b * ri for a, ti, b, ri in zip(s, t, u, r)))
                    for c in range(op.in_channels) for r in in_ph])
        bias = [op.bias[o] for o in range(op.out_channels) for _ in out_ph]
        return cls(ConvOperator(op.ring, matrix, bias=bias), P, Q)

    @classmethod
    def identity(cls, ring: LaurentRing, channels: int) -> "PolyphaseOperator":
        """The identity at periods 1 (one phase)."""
        return cls(ConvOperator.identity(ring, channels), 1, 1)

    # -- shape ----------------------------------------------------------------------------
    @property
    def ring(self) -> LaurentRing:
        return self.block.ring

    @property
    def matrix(self):
        """The block's Laurent matrix ``H`` (``(C_out M) x (C_in N)``)."""
        return self.block.matrix

    def bias_mask(self) -> np.ndarray:
        """``(C_out,)``: channels with a nonzero bias in some phase."""
        zero = self.ring.domain.zero
        b = np.array([v != zero for v in self.bias], bool)
        return b.reshape(self.out_channels, self.phases).any(axis=1)

    def bias_classes(self) -> np.ndarray:
        """``(C_out, *Q)`` integer labels of the bias per output channel and phase: ``0``
        for no bias, equal labels for equal values within a channel.  The collapsed value
        at output position ``i`` carries the bias of phase ``i mod Q``."""
        zero = self.ring.domain.zero
        M = self.phases
        out = [_bias_labels(self.bias[o * M:(o + 1) * M], zero) for o in range(self.out_channels)]
        return np.array(out, dtype=np.int64).reshape(self.out_channels, *self.out_period)

    # -- periods --------------------------------------------------------------------------
    def reblock(self, factors: int | Sequence[int]) -> "PolyphaseOperator":
        """The same operator at periods ``m P``, ``m Q`` (``m = factors``):
        ``H'_{(o, bQ+t), (c, aP+r)} = downsample(H_{(o,t),(c,r)}, m, b - a)``."""
        m = _period(factors, self.ndim, "factors")
        if all(v == 1 for v in m):
            return self
        P, Q = self.in_period, self.out_period
        P2, Q2 = tuple(a * b for a, b in zip(P, m)), tuple(a * b for a, b in zip(Q, m))
        M, N = self.phases, self.in_phases
        H = self.block.matrix
        matrix, bias = [], []
        cols = [(c, r2) for c in range(self.in_channels) for r2 in _phases(P2)]
        for o in range(self.out_channels):
            for t2 in _phases(Q2):
                t = _flat(tuple(v % q for v, q in zip(t2, Q)), Q)
                b = tuple(v // q for v, q in zip(t2, Q))
                row = o * M + t
                out_row = []
                for c, r2 in cols:
                    r = _flat(tuple(v % p for v, p in zip(r2, P)), P)
                    a = tuple(v // p for v, p in zip(r2, P))
                    out_row.append(H[row][c * N + r].downsample(
                        m, tuple(x - y for x, y in zip(b, a))))
                matrix.append(out_row)
                bias.append(self.bias[row])
        return PolyphaseOperator(ConvOperator(self.ring, matrix, bias=bias), P2, Q2)

    def _reduced(self, axis: int, p: int) -> "PolyphaseOperator | None":
        """The operator at periods divided by ``p`` on ``axis``, if it has them.

        On that axis write the phases as ``b Q' + t`` (output) and ``a P' + r`` (input),
        ``0 <= a, b < p``.  The operator is the re-blocking by ``p`` of one at periods
        ``(P', Q')`` iff every block depends on ``b - a = p q + rho`` only (``0 <= rho < p``),
        ``H_{(b,t),(a,r)} = z_axis^{-q} H_{(rho,t),(0,r)}``, and the bias on ``t`` only;
        then ``H'_{t,r}(z) = sum_b z_axis^b H_{(b,t),(0,r)}(z_axis^p)``."""
        P2 = tuple(v // p if a == axis else v for a, v in enumerate(self.in_period))
        Q2 = tuple(v // p if a == axis else v for a, v in enumerate(self.out_period))
        M, N = self.phases, self.in_phases
        unit = tuple(1 if a == axis else 0 for a in range(self.ndim))
        H, ring = self.block.matrix, self.ring

        def row_of(o: int, b: int, t: tuple[int, ...]) -> int:
            return o * M + _flat(tuple(v + b * Q2[a] * unit[a] for a, v in enumerate(t)),
                                 self.out_period)

        def col_of(c: int, a_: int, r: tuple[int, ...]) -> int:
            return c * N + _flat(tuple(v + a_ * P2[a] * unit[a] for a, v in enumerate(r)),
                                 self.in_period)

        out_ph, in_ph = _phases(Q2), _phases(P2)
        for o in range(self.out_channels):
            for t in out_ph:
                if any(self.bias[row_of(o, b, t)] != self.bias[row_of(o, 0, t)]
                       for b in range(1, p)):
                    return None
                for c in range(self.in_channels):
                    for r in in_ph:
                        for b in range(p):
                            for a_ in range(p):
                                q, rho = divmod(b - a_, p)
                                entry = H[row_of(o, b, t)][col_of(c, a_, r)]
                                base = H[row_of(o, rho, t)][col_of(c, 0, r)]
                                if entry != base.shift(tuple(-q * v for v in unit)):
                                    return None
        powers = tuple(p if v else 1 for v in unit)
        matrix, bias = [], []
        for o in range(self.out_channels):
            for t in out_ph:
                out_row = []
                for c in range(self.in_channels):
                    for r in in_ph:
                        acc = ring.zero
                        for b in range(p):
                            entry = H[row_of(o, b, t)][col_of(c, 0, r)]
                            if entry:
                                acc = acc + entry.subs_power(powers).shift(
                                    tuple(b * v for v in unit))
                        out_row.append(acc)
                matrix.append(out_row)
                bias.append(self.bias[row_of(o, 0, t)])
        return PolyphaseOperator(ConvOperator(ring, matrix, bias=bias), P2, Q2)

    def minimal(self) -> "PolyphaseOperator":
        """The same operator at its least periods (dividing both periods by common prime
        factors while the re-blocked result is exactly this operator)."""
        op = self
        changed = True
        while changed:
            changed = False
            for axis in range(op.ndim):
                g = gcd(op.in_period[axis], op.out_period[axis])
                for p in _primes(g):
                    smaller = op._reduced(axis, p)
                    if smaller is not None:
                        op, changed = smaller, True
                        break
        return op

    def _same_blocks(self, other: "PolyphaseOperator") -> bool:
        return (self.in_period == other.in_period and self.out_period == other.out_period
                and self.block == other.block)

    # -- back to one convolution ----------------------------------------------------------
    def to_conv(self) -> ConvOperator | None:
        """The single ``down_s K up_u + b`` equal to this operator (``gcd(s, u) = 1``), or
        ``None`` when there is none (module docstring)."""
        P, Q = self.in_period, self.out_period
        d = tuple(gcd(a, b) for a, b in zip(P, Q))
        s = tuple(a // g for a, g in zip(P, d))
        u = tuple(b // g for b, g in zip(Q, d))
        L = tuple(a * q for a, q in zip(s, Q))
        M, N = self.phases, self.in_phases
        ring = self.ring
        bias = []
        for o in range(self.out_channels):
            values = self.bias[o * M:(o + 1) * M]
            if any(v != values[0] for v in values):
                return None
            bias.append(values[0])
        taps: list[list[dict[tuple[int, ...], Any]]] = [
            [{} for _ in range(self.in_channels)] for _ in range(self.out_channels)]
        out_ph, in_ph = _phases(Q), _phases(P)
        for o in range(self.out_channels):
            for ti, t in enumerate(out_ph):
                for c in range(self.in_channels):
                    for ri, r in enumerate(in_ph):
                        entry = self.block.matrix[o * M + ti][c * N + ri]
                        known = taps[o][c]
                        for n, coeff in entry.iterterms():
                            e = tuple(l * ni + a * ta - b * ra for l, ni, a, ta, b, ra in
                                      zip(L, n, s, t, u, r))
                            if known.setdefault(e, coeff) != coeff:
                                return None
        matrix = [[ring.from_dict(terms) if terms else ring.zero for terms in row]
                  for row in taps]
        candidate = ConvOperator(ring, matrix, s, bias, u)
        back = PolyphaseOperator.from_conv(candidate, d)
        return candidate if back._same_blocks(self) else None

    # -- algebra --------------------------------------------------------------------------
    def __mul__(self, scalar: Any) -> "PolyphaseOperator":
        """``c·A`` (block and bias)."""
        if isinstance(scalar, (ConvOperator, LaurentPoly)) or is_polyphase(scalar):
            return NotImplemented
        return PolyphaseOperator(self.block * scalar, self.in_period, self.out_period)

    __rmul__ = __mul__

    def __eq__(self, other: object) -> bool:
        """Equal as operators (compared at a common period)."""
        if not (is_polyphase(other) or isinstance(other, ConvOperator)):
            return NotImplemented
        try:
            a, b = self._common(other, "compare")
        except (InvalidInputError, InvalidTypeError):
            return False
        return a.shape == b.shape and a.block == b.block

    def __hash__(self) -> int:
        least = self.minimal()
        return hash((least.block, least.in_period))

    def set_ring(self, ring: LaurentRing) -> "PolyphaseOperator":
        return PolyphaseOperator(self.block.set_ring(ring), self.in_period, self.out_period)

    @staticmethod
    def vstack(ops: Sequence["PolyphaseOperator"]) -> "PolyphaseOperator":
        """See :func:`polyphase_vstack`."""
        return polyphase_vstack(ops)

    # -- evaluation -----------------------------------------------------------------------
    def apply(self, x: Any, out_shape: int | Sequence[int]) -> np.ndarray:
        """Exact ``y`` on the output window ``[0, out_shape)`` for the finite signal ``x``
        (shape ``(C_in, *n)``, zero outside): split ``x`` into its components (zero-padded
        to a multiple of ``P``), apply the block on ``[0, ceil(out/Q))`` by
        :func:`algebra.signal.apply_operator`, interleave the phases.  An object array of
        sympy numbers, ``(C_out, *out_shape)``."""
        out = per_axis(out_shape, self.ndim, "out_shape")
        if any(v < 1 for v in out):
            raise InvalidInputError(f"out_shape must be positive sizes, got {out}")
        try:
            array = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
        except ValueError as exc:  # a ragged nested list
            raise InvalidInputError(f"x must be a rectangular array (C, *n): {exc}") from None
        if array.ndim != self.ndim + 1 or array.shape[0] != self.in_channels:
            raise InvalidInputError(f"x must have shape ({self.in_channels}, *n) with {self.ndim} "
                                    f"spatial axes, got {array.shape}")
        P, Q, nd = self.in_period, self.out_period, self.ndim
        n = array.shape[1:]
        m_in = tuple(-(-a // p) for a, p in zip(n, P))
        padded = np.zeros((self.in_channels, *(m * p for m, p in zip(m_in, P))), dtype=object)
        padded[(slice(None), *(slice(0, a) for a in n))] = array
        split = padded.reshape(self.in_channels, *(v for mp in zip(m_in, P) for v in mp))
        order = (0, *(2 + 2 * a for a in range(nd)), *(1 + 2 * a for a in range(nd)))
        comps = split.transpose(order).reshape(self.in_channels * self.in_phases, *m_in)
        m_out = tuple(-(-a // q) for a, q in zip(out, Q))
        y = apply_operator(self.block, comps, m_out)
        y = y.reshape(self.out_channels, *Q, *m_out)
        order = (0, *(v for a in range(nd) for v in (1 + nd + a, 1 + a)))
        y = y.transpose(order).reshape(self.out_channels, *(m * q for m, q in zip(m_out, Q)))
        return y[(slice(None), *(slice(0, a) for a in out))]

    # -- export ---------------------------------------------------------------------------
    def to_weights(self, dtype: Any = np.float64) -> PolyphaseLayout:
        """Pixel-unshuffle by ``P``, the block as one stride-1 PyTorch conv
        (:meth:`ConvOperator.to_weight`), pixel-shuffle by ``Q``."""
        return PolyphaseLayout(self.in_period, self.out_period, self.in_channels,
                               self.out_channels, self.block.to_weight(dtype=dtype))

    def __repr__(self) -> str:
        return f"PolyphaseOperator({self.describe()})"


def _primes(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        if n % p == 0:
            out.append(p)
            while n % p == 0:
                n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


def as_polyphase(op: Any) -> PolyphaseOperator:
    """``op`` as a :class:`PolyphaseOperator` (a :class:`ConvOperator` at its least
    periods; a polyphase operator unchanged)."""
    return op if is_polyphase(op) else PolyphaseOperator.from_conv(op)


def polyphase_vstack(ops: Sequence[Any]) -> PolyphaseOperator:
    """``[A_1; ...; A_k]`` (output channels stacked, same input): re-blocked to the common
    input period (the rates must agree), blocks stacked."""
    ops = [as_polyphase(op) for op in ops]
    if not ops:
        raise InvalidInputError("vstack needs at least one operator")
    if len({op.in_channels for op in ops}) != 1:
        raise InvalidInputError("vstack needs operators with the same number of input channels")
    first = ops[0]
    P = reduce(lambda a, b: tuple(lcm(x, y) for x, y in zip(a, b)), (op.in_period for op in ops))
    aligned = [first._common(op, "stack")[1].reblock_to(P) for op in ops]
    return PolyphaseOperator(vstack([op.block for op in aligned]), P, aligned[0].out_period)
