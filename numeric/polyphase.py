"""Polyphase operators in floating point: the twin of :mod:`laurentnet.algebra.polyphase`.

A linear periodically shift-varying operator ``A`` (``A ∘ shift_P = shift_Q ∘ A``, input
period ``P``, output period ``Q`` per axis) is a stride-1 operator between polyphase
components ``x_r[k] = x[k P + r]`` and ``y_t[m] = y[m Q + t]``:

    Y_{o,t}(z) = sum_{c,r} H_{(o,t),(c,r)}(z) X_{c,r}(z) + b_{o,t},

rows ``o M + t``, columns ``c N + r`` (``M = prod Q``, ``N = prod P``, phases flattened in
C order — the channel order of ``pixel_unshuffle``/``pixel_shuffle``).  Here ``H`` and ``b``
are one stride-1 :class:`~numeric.kernels.KernelOperator` (``block``) with dense
coefficients, and every formula is the exact twin's, on dense tensors:

* :meth:`PolyphaseOperator.from_conv` — ``down_s K up_u + b`` at ``P = m s/g``,
  ``Q = m u/g`` (``g = gcd(s, u)``): ``H_{(o,t),(c,r)} = downsample(K_{o,c}, L, s t - u r)``
  with ``L = s Q``, ``b_{o,t} = b_o``;
* :meth:`~PolyphaseOperator.reblock` by ``m`` — ``H'_{(o, bQ+t),(c, aP+r)} =
  downsample(H_{(o,t),(c,r)}, m, b - a)``;
* composition at the middle period ``lcm(Q1, P2)``, sums and stacks at a common period
  (equal rates ``P/Q``), biases ``b = H2(1) b1 + b2``;
* :meth:`~PolyphaseOperator.minimal` and :meth:`~PolyphaseOperator.to_conv` — the least
  periods and the single strided kernel, when they exist.

``downsample(h, L, phi)`` is ``sum_n h[L n + phi] z^n``; all of them are gathers along
one axis at a time (the phases of different axes are independent).  Deciding that two
float operators are *equal* (in :meth:`minimal`, :meth:`to_conv`, :meth:`bias_classes`)
is a judgement to round-off: entries within ``rtol`` of the operator's largest
coefficient (default ``1e-9`` in float64, ``1e-4`` in float32) count as equal.  The exact
twin decides these exactly; for generic weights the two agree.
"""
from __future__ import annotations

from functools import reduce
from math import gcd, lcm, prod
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..algebra.errors import InvalidInputError, InvalidTypeError
from ..algebra.laurent import per_axis
from ..algebra.polyphase import PolyphaseAlgebra, PolyphaseLayout, _period, _primes, is_polyphase
from ..algebra.polyphase import PolyphaseOperator as ExactPolyphase
from .inputs import as_real_tensor, check_float_dtype
from .kernels import KernelOperator, vstack

__all__ = ["PolyphaseOperator", "polyphase_vstack", "as_polyphase", "is_polyphase"]

Period = tuple[int, ...]

#: relative tolerance of the equality decisions, per dtype (see the module docstring)
RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}



def _select(h: torch.Tensor, dim: int, low: int, ratio: int, phases: torch.Tensor
            ) -> tuple[torch.Tensor, int]:
    """``downsample(h, ratio, phi)`` along ``dim`` (exponents ``low, low + 1, ...``) for every
    phase ``phi`` in ``phases`` (shape ``(R, C)``): ``g[..., i, j, n] = h[ratio (n0 + n) +
    phi_ij]`` (zero where that exponent is not stored); returns ``g`` with ``dim`` replaced
    by the three axes ``(R, C, n)`` and the first exponent ``n0``."""
    k = h.shape[dim]
    high = low + k - 1
    flat = phases.flatten()
    first = int((-((flat - low) // ratio)).min())  # ceil((low - phi) / ratio)
    last = int(((high - flat) // ratio).max())
    if last < first:
        first = last = 0
    n = torch.arange(first, last + 1)
    index = ratio * n[None, :] + flat[:, None] - low
    index = torch.where((index >= 0) & (index < k), index, torch.full_like(index, k))
    zero = h.new_zeros((*h.shape[:dim], 1, *h.shape[dim + 1:]))
    g = torch.cat([h, zero], dim).index_select(dim, index.flatten())
    return g.unflatten(dim, (*phases.shape, len(n))), first


def _split_axis(h: torch.Tensor, axis: int, ndim: int, low: int, ratio: int,
                phases: torch.Tensor) -> tuple[torch.Tensor, int]:
    """On the view ``(C_out, *Q, C_in, *P, *k)``: replace axis ``axis``'s periods ``Q_a``,
    ``P_a`` by ``(R Q_a)``, ``(C P_a)`` (new phase index major) and its exponents by the
    down-sampled ones, ``phases[i, j]`` the phase of new row phase ``i``, column phase ``j``."""
    e = 2 * ndim + 2 + axis
    g, first = _select(h, e, low, ratio, phases)
    g = g.movedim(e, 1 + axis).flatten(1 + axis, 2 + axis)            # (i, t)
    g = g.movedim(e, ndim + 2 + axis).flatten(ndim + 2 + axis, ndim + 3 + axis)  # (j, r)
    return g, first


class PolyphaseOperator(PolyphaseAlgebra):
    """A linear periodically shift-varying operator with a bias in floating point: input
    period ``in_period`` (``P``), output period ``out_period`` (``Q``) and the stride-1
    block ``block`` (a :class:`KernelOperator`, ``(C_out M) x (C_in N)``) between the
    polyphase components (module docstring).  Immutable; the twin of
    :class:`laurentnet.algebra.PolyphaseOperator`."""

    __slots__ = ("block", "in_period", "out_period")
    _single = KernelOperator

    def __init__(self, block: KernelOperator, in_period: int | Sequence[int],
                 out_period: int | Sequence[int]):
        if not isinstance(block, KernelOperator):
            raise InvalidTypeError(f"block must be a KernelOperator, got {type(block).__name__}")
        if any(s != 1 for s in block.stride) or block.upsampled:
            raise InvalidInputError(f"the block of a polyphase operator is stride-1, got stride "
                                    f"{block.stride}, up-sampling {block.upsample}")
        object.__setattr__(self, "block", block)
        object.__setattr__(self, "in_period", _period(in_period, block.ndim, "in_period"))
        object.__setattr__(self, "out_period", _period(out_period, block.ndim, "out_period"))
        rows, cols = block.shape
        if rows % self.phases or cols % self.in_phases:
            raise InvalidInputError(f"a {rows}x{cols} block does not have {self.phases} output "
                                    f"and {self.in_phases} input phases per channel")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("PolyphaseOperator is immutable")

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def from_conv(cls, op: KernelOperator, multiple: int | Sequence[int] = 1
                  ) -> "PolyphaseOperator":
        """``down_s K up_u + b`` at periods ``P = m s/g``, ``Q = m u/g`` (``g = gcd(s, u)``,
        ``m = multiple``): ``H_{(o,t),(c,r)} = downsample(K_{o,c}, L, s t - u r)``,
        ``L = s Q``, ``b_{o,t} = b_o``."""
        if is_polyphase(op):
            return op
        if not isinstance(op, KernelOperator):
            raise InvalidTypeError(f"op must be a KernelOperator, got {type(op).__name__}")
        d = op.ndim
        m = _period(multiple, d, "multiple")
        s, u = op.stride, op.upsample
        g = tuple(gcd(a, b) for a, b in zip(s, u))
        P = tuple(k * a // x for k, a, x in zip(m, s, g))
        Q = tuple(k * b // x for k, b, x in zip(m, u, g))
        h = op.coeffs.reshape(op.out_channels, *(1,) * d, op.in_channels, *(1,) * d,
                              *op.kernel_size)
        low = list(op.low)
        for a in range(d):
            t, r = torch.arange(Q[a])[:, None], torch.arange(P[a])[None, :]
            h, low[a] = _split_axis(h, a, d, low[a], s[a] * Q[a], s[a] * t - u[a] * r)
        M, N = prod(Q), prod(P)
        block = h.reshape(op.out_channels * M, op.in_channels * N, *h.shape[2 * d + 2:])
        bias = op.bias.repeat_interleave(M)
        return cls(KernelOperator(block.contiguous(), low, 1, bias), P, Q)

    @classmethod
    def identity(cls, channels: int, ndim: int = 2, *,
                 dtype: torch.dtype = torch.float64) -> "PolyphaseOperator":
        """The identity at periods 1 (one phase)."""
        return cls(KernelOperator.identity(channels, ndim, dtype=dtype), 1, 1)

    @classmethod
    def from_algebra(cls, op: ExactPolyphase, *,
                     dtype: torch.dtype = torch.float64) -> "PolyphaseOperator":
        """The exact polyphase operator's block rounded once to ``dtype``."""
        if not isinstance(op, ExactPolyphase):
            raise InvalidTypeError(f"expected an algebra PolyphaseOperator, got {type(op).__name__}")
        return cls(KernelOperator.from_algebra(op.block, dtype=dtype), op.in_period, op.out_period)

    def to_algebra(self) -> ExactPolyphase:
        """The exact twin: every float becomes its exact rational value."""
        return ExactPolyphase(self.block.to_algebra(), self.in_period, self.out_period)

    # -- shape ----------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.block.dtype

    def _view(self) -> torch.Tensor:
        """The block as ``(C_out, *Q, C_in, *P, *k)``."""
        return self.block.coeffs.reshape(self.out_channels, *self.out_period, self.in_channels,
                                         *self.in_period, *self.kernel_size)

    def _from_view(self, h: torch.Tensor, low: Sequence[int], bias: torch.Tensor,
                   P: Period, Q: Period) -> "PolyphaseOperator":
        d = self.ndim
        c_out, c_in = h.shape[0], h.shape[d + 1]
        block = h.reshape(c_out * prod(Q), c_in * prod(P), *h.shape[2 * d + 2:]).contiguous()
        return PolyphaseOperator(KernelOperator(block, low, 1, bias.reshape(-1)), P, Q)

    def _tolerance(self, rtol: float | None) -> float:
        """Absolute tolerance of the equality decisions: ``rtol`` times the largest entry."""
        rtol = RTOL[self.dtype] if rtol is None else float(rtol)
        scale = max(float(self.block.coeffs.abs().max()), float(self.bias.abs().max()))
        return rtol * scale

    def bias_mask(self) -> np.ndarray:
        """``(C_out,)``: channels with a nonzero bias in some phase."""
        return (self.bias != 0).reshape(self.out_channels, self.phases).any(dim=1).numpy()

    def bias_classes(self, rtol: float | None = None) -> np.ndarray:
        """``(C_out, *Q)`` integer labels of the bias per output channel and phase: ``0``
        for no bias, equal labels for values equal to round-off within a channel (the
        collapsed value at output position ``i`` carries the bias of phase ``i mod Q``)."""
        tol = self._tolerance(rtol)
        values = self.bias.reshape(self.out_channels, self.phases).tolist()
        out = []
        for row in values:
            known: list[float] = []
            labels = []
            for v in row:
                if v == 0:
                    labels.append(0)
                    continue
                hit = next((i for i, w in enumerate(known) if abs(v - w) <= tol), None)
                if hit is None:
                    known.append(v)
                    hit = len(known) - 1
                labels.append(hit + 1)
            out.append(labels)
        return np.array(out, dtype=np.int64).reshape(self.out_channels, *self.out_period)

    # -- periods --------------------------------------------------------------------------
    def reblock(self, factors: int | Sequence[int]) -> "PolyphaseOperator":
        """The same operator at periods ``m P``, ``m Q`` (``m = factors``):
        ``H'_{(o, bQ+t), (c, aP+r)} = downsample(H_{(o,t),(c,r)}, m, b - a)``."""
        d = self.ndim
        m = _period(factors, d, "factors")
        if all(v == 1 for v in m):
            return self
        h, low = self._view(), list(self.block.low)
        bias = self.bias.reshape(self.out_channels, *self.out_period)
        for a in range(d):
            if m[a] == 1:
                continue
            b, c = torch.arange(m[a])[:, None], torch.arange(m[a])[None, :]
            h, low[a] = _split_axis(h, a, d, low[a], m[a], b - c)
            bias = bias.repeat(*(m[a] if x == 1 + a else 1 for x in range(d + 1)))
        P = tuple(p * k for p, k in zip(self.in_period, m))
        Q = tuple(q * k for q, k in zip(self.out_period, m))
        return self._from_view(h, low, bias, P, Q)

    def _reduced(self, axis: int, p: int, tol: float) -> "PolyphaseOperator | None":
        """The operator at periods divided by ``p`` on ``axis``, if it has them:
        ``H'_{t,r}(z) = sum_b z_a^b H_{(b Q' + t), r}(z_a^p)`` (``r`` the first ``P'``
        input phases), checked by re-blocking."""
        d = self.ndim
        P2 = tuple(v // p if a == axis else v for a, v in enumerate(self.in_period))
        Q2 = tuple(v // p if a == axis else v for a, v in enumerate(self.out_period))
        h = self._view()
        h = h.unflatten(1 + axis, (p, Q2[axis]))                       # (b, t)
        h = h.unflatten(d + 3 + axis, (p, P2[axis])).select(d + 3 + axis, 0)  # r < P'
        h = h.movedim(1 + axis, -1)                                     # b last
        e = 2 * d + 2 + axis                                            # this axis' exponents
        h = h.movedim(e, -2).flatten(-2, -1).movedim(-1, e)             # exponent p j + b
        low = [l * p if a == axis else l for a, l in enumerate(self.block.low)]
        bias = self.bias.reshape(self.out_channels, *self.out_period)
        bias = bias.unflatten(1 + axis, (p, Q2[axis])).select(1 + axis, 0)
        candidate = self._from_view(h, low, bias, P2, Q2)
        factors = tuple(p if a == axis else 1 for a in range(d))
        return candidate if candidate.reblock(factors)._same(self, tol) else None

    def minimal(self, rtol: float | None = None) -> "PolyphaseOperator":
        """The same operator at its least periods (dividing both periods by common prime
        factors while the re-blocked result equals this operator to round-off)."""
        tol = self._tolerance(rtol)
        op, changed = self, True
        while changed:
            changed = False
            for axis in range(op.ndim):
                for p in _primes(gcd(op.in_period[axis], op.out_period[axis])):
                    smaller = op._reduced(axis, p, tol)
                    if smaller is not None:
                        op, changed = smaller, True
                        break
        return op

    def _same(self, other: "PolyphaseOperator", tol: float) -> bool:
        return (self.in_period == other.in_period and self.out_period == other.out_period
                and self.block.allclose(other.block, rtol=0, atol=tol))

    # -- back to one convolution ----------------------------------------------------------
    def to_conv(self, rtol: float | None = None) -> KernelOperator | None:
        """The single ``down_s K up_u + b`` equal to this operator to round-off
        (``s = P/d``, ``u = Q/d``, ``d = gcd(P, Q)``; taps ``k[L n + s t - u r] =
        h_{(t),(r)}[n]``, averaged over the ``d`` phase pairs that hold each one), or
        ``None`` when there is none (the bias varies over the phases, or the candidate's
        polyphase form differs)."""
        tol = self._tolerance(rtol)
        P, Q = self.in_period, self.out_period
        d = tuple(gcd(a, b) for a, b in zip(P, Q))
        s = tuple(a // g for a, g in zip(P, d))
        u = tuple(b // g for b, g in zip(Q, d))
        L = tuple(a * q for a, q in zip(s, Q))
        bias = self.bias.reshape(self.out_channels, self.phases)
        if bool(((bias - bias[:, :1]).abs() > tol).any()):
            return None
        h, k, low = self._view(), self.kernel_size, self.block.low
        shifts = [[si * t - ui * r for t in range(q) for r in range(p)]
                  for si, ui, q, p in zip(s, u, Q, P)]
        e_low = tuple(l_ * li + min(sh) for l_, li, sh in zip(L, low, shifts))
        size = tuple(l_ * (ki - 1) + max(sh) - min(sh) + 1 for l_, ki, sh in zip(L, k, shifts))
        total = h.new_zeros((self.out_channels, self.in_channels, *size))
        count = h.new_zeros(size)
        for t in np.ndindex(*Q):
            for r in np.ndindex(*P):
                start = [l_ * li + si * ti - ui * ri - el for l_, li, si, ti, ui, ri, el in
                         zip(L, low, s, t, u, r, e_low)]
                where = tuple(slice(a, a + l_ * (ki - 1) + 1, l_) for a, l_, ki in zip(start, L, k))
                total[(slice(None), slice(None), *where)] += h[(slice(None), *t, slice(None), *r)]
                count[where] += 1
        candidate = KernelOperator(total / count.clamp(min=1), e_low, s, bias[:, 0].contiguous(), u)
        back = PolyphaseOperator.from_conv(candidate, d)
        return candidate if back._same(self, tol) else None

    # -- algebra --------------------------------------------------------------------------
    def __mul__(self, scalar: Any) -> "PolyphaseOperator":
        """``c·A`` (block and bias) for a real number ``c`` (sympy numbers included)."""
        if isinstance(scalar, (PolyphaseOperator, KernelOperator)):
            return NotImplemented
        if getattr(scalar, "free_symbols", None):
            raise InvalidInputError(f"cannot scale by the symbolic {scalar}: numbers only")
        try:
            value = float(scalar)
        except (TypeError, ValueError):
            return NotImplemented
        return PolyphaseOperator(self.block * value, self.in_period, self.out_period)

    __rmul__ = __mul__

    def allclose(self, other: Any, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
        """Close as operators (compared at a common period; rates must agree)."""
        try:
            a, b = self._common(other, "compare")
        except InvalidInputError:
            return False
        return a.shape == b.shape and a.block.allclose(b.block, rtol, atol)

    def to(self, dtype: torch.dtype) -> "PolyphaseOperator":
        return PolyphaseOperator(self.block.to(check_float_dtype(dtype)), self.in_period,
                                 self.out_period)

    @staticmethod
    def vstack(ops: Sequence[Any]) -> "PolyphaseOperator":
        """See :func:`polyphase_vstack`."""
        return polyphase_vstack(ops)

    # -- evaluation -----------------------------------------------------------------------
    def apply(self, x: Any, out_shape: int | Sequence[int]) -> torch.Tensor:
        """``y`` on the output window ``[0, out_shape)`` for the finite signal ``x`` (a batch
        ``(B, C_in, *n)`` or one input ``(C_in, *n)``, zero outside): ``x`` zero-padded to a
        multiple of ``P`` and split into its components (a pixel-unshuffle), the block
        applied on ``[0, ceil(out/Q))`` (:func:`numeric.evaluator.conv_window`), the phases
        interleaved (a pixel-shuffle)."""
        from .evaluator import conv_window
        out = per_axis(out_shape, self.ndim, "out_shape")
        if any(v < 1 for v in out):
            raise InvalidInputError(f"out_shape must be positive sizes, got {out}")
        x = as_real_tensor(x, "the input")
        single = x.ndim == self.ndim + 1
        batch = x[None] if single else x
        if batch.ndim != self.ndim + 2 or batch.shape[1] != self.in_channels:
            raise InvalidInputError(f"x must have shape (batch, {self.in_channels}, *n) with "
                                    f"{self.ndim} spatial axes, got {tuple(x.shape)}")
        batch = batch.to(self.dtype)
        P, Q, nd = self.in_period, self.out_period, self.ndim
        B, n = batch.shape[0], batch.shape[2:]
        m_in = tuple(-(-a // p) for a, p in zip(n, P))
        pad = [v for a in reversed(range(nd)) for v in (0, m_in[a] * P[a] - n[a])]
        split = F.pad(batch, pad).reshape(B, self.in_channels, *(v for mp in zip(m_in, P) for v in mp))
        order = (0, 1, *(3 + 2 * a for a in range(nd)), *(2 + 2 * a for a in range(nd)))
        comps = split.permute(order).reshape(B, self.in_channels * self.in_phases, *m_in)
        m_out = tuple(-(-a // q) for a, q in zip(out, Q))
        y = conv_window(self.block, comps, m_out).reshape(B, self.out_channels, *Q, *m_out)
        order = (0, 1, *(v for a in range(nd) for v in (2 + nd + a, 2 + a)))
        y = y.permute(order).reshape(B, self.out_channels, *(m * q for m, q in zip(m_out, Q)))
        y = y[(slice(None), slice(None), *(slice(0, a) for a in out))]
        return y[0] if single else y

    # -- export ---------------------------------------------------------------------------
    def to_weights(self) -> PolyphaseLayout:
        """Pixel-unshuffle by ``P``, the block as one stride-1 PyTorch conv
        (:meth:`KernelOperator.to_weight`), pixel-shuffle by ``Q``."""
        return PolyphaseLayout(self.in_period, self.out_period, self.in_channels,
                               self.out_channels, self.block.to_weight())

    def __repr__(self) -> str:
        return f"PolyphaseOperator({self.describe()}, {str(self.dtype).removeprefix('torch.')})"



def as_polyphase(op: Any) -> PolyphaseOperator:
    """``op`` as a :class:`PolyphaseOperator` (a :class:`KernelOperator` at its least
    periods; a polyphase operator unchanged)."""
    return op if isinstance(op, PolyphaseOperator) else PolyphaseOperator.from_conv(op)


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
