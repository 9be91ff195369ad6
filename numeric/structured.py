"""Structured channel couplings in floating point: the twins of :mod:`algebra.structured`.

The same six structures under the same names — :class:`Dense`, :class:`Depthwise`,
:class:`Pointwise`, :class:`Grouped`, :class:`Lean`, :class:`BlockCirculant` — with the
same ``params`` / ``macs_per_position`` / ``box`` / ``dense()`` / ``adjoint()`` / ``@`` /
``+`` (see the exact side for the formulas and the closure rules), on float32/float64
tensors in the :class:`~numeric.kernels.KernelOperator` convention (coefficients in
ascending exponent order from ``low``).  In addition:

* ``apply(x, padding_mode)`` runs the structure on a batch ``(N, C_in, *n)`` with its own
  cheap method (:mod:`numeric.coupling_ops`): a grouped convolution for depthwise and
  grouped couplings, a 1x1 convolution, depthwise + 1x1 for lean, and for
  :class:`BlockCirculant` an FFT over channels (``method="fft"``, the default) or the
  dense convolution (``method="direct"``); output ``y = K X`` on the input's window;
* ``to_algebra()`` / :func:`from_algebra` convert to and from the exact twin (every float
  taken as its exact rational; exact values rounded once);
* :func:`channel_dft` — the spectrum ``Λ_j = Σ_k ζ^{jk} A_k`` of a block-circulant coupling
  (``torch.fft``), the twin of :func:`algebra.channel_dft.channel_dft`.

``BlockCirculant.fft_macs_per_position`` is ``4 J b_out b_in |box|`` (``J = ⌊m/2⌋ + 1``):
the real multiply-adds of the per-frequency products; the FFTs over channels are not
multiply-adds of a convolution and are not included (they cost ``O(m log m)`` per pixel).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..algebra import structured as exact
from ..algebra.errors import InvalidInputError, InvalidTypeError
from ..algebra.memory import check_budget, estimate_bytes
from ..algebra.validate import describe, int_arg
from .coupling_ops import block_circulant_conv, conv_same
from .functional import conv_nd
from .kernels import KernelOperator, block_diag

__all__ = ["Coupling", "Dense", "Depthwise", "Pointwise", "Grouped", "Lean", "BlockCirculant",
           "STRUCTURES", "from_algebra", "ChannelDFT", "channel_dft"]

Box = tuple[tuple[int, ...], tuple[int, ...]]


def _box(op: KernelOperator) -> Box:
    return op.low, op.high


def _volume(box: Box) -> int:
    return math.prod(h - l + 1 for l, h in zip(*box))


def _plain(op: Any, what: str) -> KernelOperator:
    if not isinstance(op, KernelOperator):
        raise InvalidTypeError(f"{what} must be a KernelOperator, got {describe(op)}")
    if any(s != 1 for s in op.stride) or op.has_bias:
        raise InvalidInputError(f"{what} must be a stride-1 operator without bias (a channel "
                                f"coupling), got stride {op.stride}, bias {op.has_bias}")
    return op


def _embedded(op: KernelOperator, box: Box) -> torch.Tensor:
    """``op``'s coefficients on the larger ``box`` (zeros added)."""
    size = tuple(h - l + 1 for l, h in zip(*box))
    return op._embedded(box[0], size)


def _hull(boxes: Sequence[Box]) -> Box:
    return (tuple(min(c) for c in zip(*(b[0] for b in boxes))),
            tuple(max(c) for c in zip(*(b[1] for b in boxes))))


def _with_zero(box: Box) -> Box:
    """The box extended to contain the exponent 0 (the "same" convolution needs it)."""
    return tuple(min(l, 0) for l in box[0]), tuple(max(h, 0) for h in box[1])


def _layout(coeffs: torch.Tensor, box: Box) -> tuple[torch.Tensor, tuple[int, ...]]:
    """PyTorch weight ``flip(coeffs)`` and left padding ``high`` of coefficients on ``box``
    (which contains 0)."""
    spatial = tuple(range(2, coeffs.ndim))
    return coeffs.flip(spatial), tuple(box[1])


class Coupling:
    """A structured stride-1 channel coupling on float tensors (module docstring)."""

    box: Box

    @property
    def shape(self) -> tuple[int, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def out_channels(self) -> int:
        return self.shape[0]

    @property
    def in_channels(self) -> int:
        return self.shape[1]

    @property
    def ndim(self) -> int:
        return len(self.box[0])

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return tuple(h - l + 1 for l, h in zip(*self.box))

    @property
    def dtype(self) -> torch.dtype:
        return self.dense().dtype

    def macs(self, sizes: int | Sequence[int] | None = None) -> int:
        """Multiply-adds per output position, or ``* prod(sizes)`` for a signal."""
        if sizes is None:
            return self.macs_per_position
        n = (sizes,) * self.ndim if isinstance(sizes, int) else tuple(sizes)
        if len(n) != self.ndim or any(int(v) < 1 for v in n):
            raise InvalidInputError(f"sizes must be {self.ndim} positive ints, got {sizes!r}")
        return self.macs_per_position * math.prod(int(v) for v in n)

    def to_weight(self):
        """The PyTorch layout of the dense operator."""
        return self.dense().to_weight()

    def _check(self, other: Any, op: str) -> "Coupling":
        if not isinstance(other, Coupling):
            raise InvalidTypeError(f"{op} combines two couplings (laurentnet.numeric.structured), "
                                   f"got {describe(other)}; use .dense() for a KernelOperator")
        return other

    def __matmul__(self, other: "Coupling") -> "Coupling":
        """``self ∘ other``, in the structure when closed, else :class:`Dense`."""
        other = self._check(other, "@")
        if self.in_channels != other.out_channels:
            raise InvalidInputError(f"cannot compose: the outer coupling takes {self.in_channels} "
                                    f"channels, the inner one gives {other.out_channels}")
        box = (tuple(a + b for a, b in zip(self.box[0], other.box[0])),
               tuple(a + b for a, b in zip(self.box[1], other.box[1])))
        result = self._compose(other) if type(self) is type(other) else None
        return result if result is not None else Dense(self.dense() @ other.dense(), box)

    def __add__(self, other: "Coupling") -> "Coupling":
        other = self._check(other, "+")
        if self.shape != other.shape:
            raise InvalidInputError(f"cannot add couplings of shapes {self.shape} and {other.shape}")
        result = self._add(other) if type(self) is type(other) else None
        return result if result is not None else \
            Dense(self.dense() + other.dense(), _hull([self.box, other.box]))

    def __neg__(self) -> "Coupling":
        return self * -1.0

    def __sub__(self, other: "Coupling") -> "Coupling":
        return self + (-other)

    def __mul__(self, scalar: Any) -> "Coupling":
        if isinstance(scalar, (Coupling, KernelOperator)):
            return NotImplemented
        return self._scale(float(scalar))

    __rmul__ = __mul__

    def _compose(self, other: Any) -> "Coupling | None":
        return None

    def _add(self, other: Any) -> "Coupling | None":
        return None

    def apply(self, x: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
        """``K X`` on a batch ``(N, C_in, *n)`` (the dense convolution here; subclasses use
        their cheap method)."""
        box = _with_zero(self.box)
        weight, padding = _layout(_embedded(self.dense(), box), box)
        return conv_same(x, weight.to(x.dtype), padding, 1, padding_mode)

    def allclose(self, other: "Coupling", rtol: float = 1e-5, atol: float = 1e-8) -> bool:
        """Same structure, same box, close dense kernels."""
        return (type(other) is type(self) and other.box == self.box
                and self.dense().allclose(other.dense(), rtol, atol))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.out_channels}x{self.in_channels}, box "
                f"{self.box[0]}..{self.box[1]}, {self.params} params)")


class Dense(Coupling):
    """A fully coupled stencil (a stride-1 :class:`KernelOperator` without bias)."""

    def __init__(self, operator: KernelOperator, box: Box | None = None):
        self.operator = _plain(operator, "operator")
        self.box = _box(operator) if box is None else _hull([_box(operator), box])

    @classmethod
    def from_weight(cls, weight: Any, *, padding: int | Sequence[int] = 0,
                    dtype: torch.dtype = torch.float64) -> "Dense":
        return cls(KernelOperator.from_weight(weight, padding=padding, dtype=dtype))

    @classmethod
    def from_dense(cls, op: KernelOperator, box: Box | None = None) -> "Dense":
        return cls(op, box)

    shape = property(lambda self: self.operator.shape)
    params = property(lambda self: self.out_channels * self.in_channels * _volume(self.box))
    macs_per_position = property(lambda self: self.params)

    def dense(self) -> KernelOperator:
        return self.operator

    def to_algebra(self) -> exact.Dense:
        return exact.Dense(self.operator.to_algebra(), self.box)

    def _compose(self, other: "Dense") -> "Dense":
        return Dense(self.operator @ other.operator)

    def _add(self, other: "Dense") -> "Dense":
        return Dense(self.operator + other.operator, _hull([self.box, other.box]))

    def _scale(self, c: float) -> "Dense":
        return Dense(self.operator * c, self.box)

    def adjoint(self) -> "Dense":
        return Dense(self.operator.adjoint(), (tuple(-h for h in self.box[1]),
                                               tuple(-l for l in self.box[0])))


class Pointwise(Coupling):
    """A 1x1 coupling: the constant matrix ``M`` (``C_out x C_in``)."""

    def __init__(self, matrix: Any, ndim: int = 2, *, dtype: torch.dtype | None = None):
        m = torch.as_tensor(matrix, dtype=dtype) if not isinstance(matrix, torch.Tensor) else matrix
        if m.ndim != 2:
            raise InvalidInputError(f"matrix must be C_out x C_in, got shape {tuple(m.shape)}")
        ndim = int_arg(ndim, "ndim", minimum=1, maximum=3)
        self.matrix = m.detach().to(dtype or (m.dtype if m.is_floating_point() else torch.float64))
        self.box = ((0,) * ndim, (0,) * ndim)

    @classmethod
    def from_weight(cls, weight: Any, *, dtype: torch.dtype = torch.float64) -> "Pointwise":
        w = torch.as_tensor(weight, dtype=dtype)
        if w.ndim < 3 or any(k != 1 for k in w.shape[2:]):
            raise InvalidInputError(f"a 1x1 weight has shape (C_out, C_in, 1, ...), got {tuple(w.shape)}")
        return cls(w.reshape(w.shape[:2]), w.ndim - 2)

    @classmethod
    def from_dense(cls, op: KernelOperator, atol: float = 0.0) -> "Pointwise":
        _plain(op, "op")
        zero = (0,) * op.ndim
        box = _hull([_box(op), (zero, zero)])
        coeffs = _embedded(op, box)
        centre = coeffs[(slice(None), slice(None), *(-l for l in box[0]))]
        rest = coeffs.clone()
        rest[(slice(None), slice(None), *(-l for l in box[0]))] = 0
        if float(rest.abs().max()) > atol:
            raise InvalidInputError(f"not 1x1: taps off z^0 up to {float(rest.abs().max()):.3g} > atol")
        return cls(centre, op.ndim)

    shape = property(lambda self: tuple(self.matrix.shape))
    params = property(lambda self: self.out_channels * self.in_channels)
    macs_per_position = property(lambda self: self.params)

    def dense(self) -> KernelOperator:
        return KernelOperator(self.matrix.reshape(*self.shape, *(1,) * self.ndim), 0)

    def to_algebra(self) -> exact.Pointwise:
        return exact.Pointwise(self.dense().to_algebra())

    def apply(self, x: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
        w = self.matrix.to(x.dtype).reshape(*self.shape, *(1,) * self.ndim)
        return conv_same(x, w, (0,) * self.ndim, 1, padding_mode)

    def _compose(self, other: "Pointwise") -> "Pointwise":
        return Pointwise(self.matrix @ other.matrix.to(self.matrix.dtype), self.ndim)

    def _add(self, other: "Pointwise") -> "Pointwise":
        return Pointwise(self.matrix + other.matrix.to(self.matrix.dtype), self.ndim)

    def _scale(self, c: float) -> "Pointwise":
        return Pointwise(self.matrix * c, self.ndim)

    def adjoint(self) -> "Pointwise":
        return Pointwise(self.matrix.T.contiguous(), self.ndim)


class Depthwise(Coupling):
    """``diag(d_1, ..., d_C)``: ``taps[c]`` holds ``d_c``'s coefficients from ``low``."""

    def __init__(self, taps: torch.Tensor, low: int | Sequence[int] = 0):
        if not isinstance(taps, torch.Tensor) or taps.ndim not in (2, 3, 4):
            raise InvalidInputError(f"taps must be a (C, *k) tensor with 1-3 spatial axes, got "
                                    f"{describe(taps)}")
        self.taps = taps.detach() if taps.is_floating_point() else taps.detach().double()
        ndim = taps.ndim - 1
        low = (int(low),) * ndim if isinstance(low, int) else tuple(int(v) for v in low)
        self.box = low, tuple(l + k - 1 for l, k in zip(low, taps.shape[1:]))

    @classmethod
    def from_weight(cls, weight: Any, *, padding: int | Sequence[int] = 0,
                    dtype: torch.dtype = torch.float64) -> "Depthwise":
        """``conv(x, weight, padding, groups=C)``, weight ``(C, 1, *k)``."""
        w = torch.as_tensor(weight, dtype=dtype)
        if w.ndim < 3 or w.shape[1] != 1:
            raise InvalidInputError(f"a depthwise weight has shape (C, 1, *k), got {tuple(w.shape)}")
        op = KernelOperator.from_weight(w, padding=padding, groups=w.shape[0], dtype=dtype)
        return cls.from_dense(op)

    @classmethod
    def from_dense(cls, op: KernelOperator, atol: float = 0.0) -> "Depthwise":
        _plain(op, "op")
        if op.out_channels != op.in_channels:
            raise InvalidInputError(f"a depthwise coupling is square, got {op.shape}")
        index = torch.arange(op.out_channels)
        off = op.coeffs.clone()
        off[index, index] = 0
        if float(off.abs().max()) > atol:
            raise InvalidInputError(f"not depthwise: off-diagonal taps up to {float(off.abs().max()):.3g}")
        return cls(op.coeffs[index, index].clone(), op.low)

    shape = property(lambda self: (self.taps.shape[0], self.taps.shape[0]))
    params = property(lambda self: self.taps.shape[0] * _volume(self.box))
    macs_per_position = property(lambda self: self.params)

    def dense(self) -> KernelOperator:
        c = self.taps.shape[0]
        check_budget(estimate_bytes((c, c, *self.kernel_size), self.taps.dtype),
                     f"the dense {c}x{c} form of a depthwise coupling")
        coeffs = self.taps.new_zeros((c, c, *self.taps.shape[1:]))
        index = torch.arange(c)
        coeffs[index, index] = self.taps
        return KernelOperator(coeffs, self.box[0])

    def to_algebra(self) -> exact.Depthwise:
        return exact.Depthwise.from_dense(self.dense().to_algebra(), self.box)

    def _column(self, box: Box) -> torch.Tensor:
        """The taps on ``box`` as a grouped-conv weight ``(C, 1, *k)``."""
        op = KernelOperator(self.taps.unsqueeze(1), self.box[0])
        return _embedded(op, box)

    def apply(self, x: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
        box = _with_zero(self.box)
        weight, padding = _layout(self._column(box), box)
        return conv_same(x, weight.to(x.dtype), padding, self.taps.shape[0], padding_mode)

    def _compose(self, other: "Depthwise") -> "Depthwise":
        """Per channel the polynomial product ``d_c e_c``."""
        product = _full_products(self.taps, other.taps.to(self.taps.dtype))
        return Depthwise(product, tuple(x + y for x, y in zip(self.box[0], other.box[0])))

    def _add(self, other: "Depthwise") -> "Depthwise":
        box = _hull([self.box, other.box])
        s = self._column(box) + other._column(box).to(self.taps.dtype)
        return Depthwise(s[:, 0], box[0])

    def _scale(self, c: float) -> "Depthwise":
        return Depthwise(self.taps * c, self.box[0])

    def adjoint(self) -> "Depthwise":
        spatial = tuple(range(1, self.taps.ndim))
        return Depthwise(self.taps.flip(spatial), tuple(-h for h in self.box[1]))


def _full_products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row ``c`` the full (polynomial) product of ``a[c]`` and ``b[c]``, ``(C, *(ka +
    kb - 1))``, by one grouped convolution: ``(a * b)[t] = Σ_s a[s] b[t - s]``."""
    c, kb = a.shape[0], b.shape[1:]
    pad = [v for k in reversed(kb) for v in (k - 1, k - 1)]
    padded = torch.nn.functional.pad(a.unsqueeze(0), pad)
    weight = b.flip(tuple(range(1, b.ndim))).unsqueeze(1)
    return conv_nd(b.ndim - 1)(padded, weight, groups=c)[0]


class Grouped(Coupling):
    """``diag(B_1, ..., B_g)``: a grouped convolution (blocks of any sizes)."""

    def __init__(self, blocks: Sequence[KernelOperator], box: Box | None = None):
        ops = [_plain(b, f"blocks[{i}]") for i, b in enumerate(blocks)]
        if not ops:
            raise InvalidInputError("a grouped coupling needs at least one block")
        self.blocks = tuple(ops)
        self.box = _hull([_box(b) for b in ops] + ([box] if box is not None else []))

    @classmethod
    def from_weight(cls, weight: Any, *, groups: int, padding: int | Sequence[int] = 0,
                    dtype: torch.dtype = torch.float64) -> "Grouped":
        op = KernelOperator.from_weight(weight, padding=padding, groups=groups, dtype=dtype)
        return cls.from_dense(op, groups)

    @classmethod
    def from_dense(cls, op: KernelOperator, groups: int, atol: float = 0.0) -> "Grouped":
        _plain(op, "op")
        groups = int_arg(groups, "groups", minimum=1)
        if op.out_channels % groups or op.in_channels % groups:
            raise InvalidInputError(f"groups={groups} must divide both channel counts {op.shape}")
        bo, bi = op.out_channels // groups, op.in_channels // groups
        mask = torch.ones(op.shape, dtype=torch.bool)
        for g in range(groups):
            mask[g * bo:(g + 1) * bo, g * bi:(g + 1) * bi] = False
        outside = op.coeffs[mask]
        if outside.numel() and float(outside.abs().max()) > atol:
            raise InvalidInputError(f"not block diagonal with {groups} groups: taps outside the "
                                    f"blocks up to {float(outside.abs().max()):.3g}")
        blocks = [op[g * bo:(g + 1) * bo].columns(list(range(g * bi, (g + 1) * bi)))
                  for g in range(groups)]
        return cls(blocks, _box(op))

    shape = property(lambda self: (sum(b.out_channels for b in self.blocks),
                                   sum(b.in_channels for b in self.blocks)))
    groups = property(lambda self: len(self.blocks))
    params = property(lambda self: sum(b.out_channels * b.in_channels for b in self.blocks)
                      * _volume(self.box))
    macs_per_position = property(lambda self: self.params)

    def dense(self) -> KernelOperator:
        return block_diag([KernelOperator(_embedded(b, self.box), self.box[0]) for b in self.blocks])

    def to_algebra(self) -> exact.Grouped:
        return exact.Grouped([b.to_algebra() for b in self.blocks], self.box)

    def apply(self, x: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
        """One grouped convolution when the blocks have one shape, else one per block."""
        box = _with_zero(self.box)
        weights = [_layout(_embedded(b, box), box)[0].to(x.dtype) for b in self.blocks]
        padding = tuple(box[1])
        if len({b.shape for b in self.blocks}) == 1:
            return conv_same(x, torch.cat(weights), padding, self.groups, padding_mode)
        parts, start = [], 0
        for b, w in zip(self.blocks, weights):
            parts.append(conv_same(x[:, start:start + b.in_channels], w, padding, 1, padding_mode))
            start += b.in_channels
        return torch.cat(parts, dim=1)

    def _compose(self, other: "Grouped") -> "Grouped | None":
        if [b.in_channels for b in self.blocks] != [b.out_channels for b in other.blocks]:
            return None
        return Grouped([a @ b for a, b in zip(self.blocks, other.blocks)])

    def _add(self, other: "Grouped") -> "Grouped | None":
        if [b.shape for b in self.blocks] != [b.shape for b in other.blocks]:
            return None
        return Grouped([a + b for a, b in zip(self.blocks, other.blocks)],
                       _hull([self.box, other.box]))

    def _scale(self, c: float) -> "Grouped":
        return Grouped([b * c for b in self.blocks], self.box)

    def adjoint(self) -> "Grouped":
        return Grouped([b.adjoint() for b in self.blocks],
                       (tuple(-h for h in self.box[1]), tuple(-l for l in self.box[0])))


class Lean(Coupling):
    """``K = D + M``: depthwise plus 1x1 (applied as the two convolutions, summed)."""

    def __init__(self, depthwise: Depthwise, pointwise: Pointwise):
        if not isinstance(depthwise, Depthwise) or not isinstance(pointwise, Pointwise):
            raise InvalidTypeError(f"Lean(depthwise, pointwise) takes a Depthwise and a Pointwise, "
                                   f"got {describe(depthwise)} and {describe(pointwise)}")
        if depthwise.shape != pointwise.shape:
            raise InvalidInputError(f"the depthwise part is {depthwise.shape}, the 1x1 part "
                                    f"{pointwise.shape}: a lean coupling is square")
        self.depthwise, self.pointwise = depthwise, pointwise

    @classmethod
    def from_weight(cls, depthwise_weight: Any, pointwise_weight: Any, *,
                    padding: int | Sequence[int] = 0, dtype: torch.dtype = torch.float64) -> "Lean":
        return cls(Depthwise.from_weight(depthwise_weight, padding=padding, dtype=dtype),
                   Pointwise.from_weight(pointwise_weight, dtype=dtype))

    @classmethod
    def from_dense(cls, op: KernelOperator, atol: float = 0.0) -> "Lean":
        """Every ``z^0`` tap to ``M``, the rest must be diagonal (as on the exact side)."""
        _plain(op, "op")
        zero = (0,) * op.ndim
        box = _hull([_box(op), (zero, zero)])
        coeffs = _embedded(op, box).clone()
        centre = (slice(None), slice(None), *(-l for l in box[0]))
        matrix = coeffs[centre].clone()
        coeffs[centre] = 0
        try:
            depthwise = Depthwise.from_dense(KernelOperator(coeffs, box[0]), atol)
        except InvalidInputError as exc:
            raise InvalidInputError(f"not lean (depthwise + 1x1): {exc}") from None
        return cls(depthwise, Pointwise(matrix, op.ndim))

    box = property(lambda self: _hull([self.depthwise.box, self.pointwise.box]))
    shape = property(lambda self: self.depthwise.shape)
    params = property(lambda self: self.depthwise.params + self.pointwise.params)
    macs_per_position = property(lambda self: self.depthwise.macs_per_position
                                 + self.pointwise.macs_per_position)

    def dense(self) -> KernelOperator:
        return self.depthwise.dense() + self.pointwise.dense().to(self.depthwise.taps.dtype)

    def to_algebra(self) -> exact.Lean:
        return exact.Lean(self.depthwise.to_algebra(), self.pointwise.to_algebra())

    def apply(self, x: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
        return self.depthwise.apply(x, padding_mode) + self.pointwise.apply(x, padding_mode)

    def _add(self, other: "Lean") -> "Lean":
        return Lean(self.depthwise + other.depthwise, self.pointwise + other.pointwise)

    def _scale(self, c: float) -> "Lean":
        return Lean(self.depthwise * c, self.pointwise * c)

    def adjoint(self) -> "Lean":
        return Lean(self.depthwise.adjoint(), self.pointwise.adjoint())


class BlockCirculant(Coupling):
    """Block ``(r, c)`` is ``A_{(c - r) mod m}``; ``blocks`` is the first block row
    ``A_0, ..., A_{m-1}`` as ``b_out x b_in`` KernelOperators (channels block-major)."""

    def __init__(self, blocks: Sequence[KernelOperator], box: Box | None = None):
        ops = [_plain(b, f"blocks[{i}]") for i, b in enumerate(blocks)]
        if not ops or len({b.shape for b in ops}) != 1:
            raise InvalidInputError("a block-circulant coupling needs blocks of one shape")
        self.blocks = tuple(ops)
        self.box = _hull([_box(b) for b in ops] + ([box] if box is not None else []))

    @classmethod
    def from_weight(cls, weight: Any, *, padding: int | Sequence[int] = 0,
                    dtype: torch.dtype = torch.float64) -> "BlockCirculant":
        """First block row as conv weights ``(m, b_out, b_in, *k)``."""
        w = torch.as_tensor(weight, dtype=dtype)
        if w.ndim < 4:
            raise InvalidInputError(f"weight must have shape (m, b_out, b_in, *kernel), got {tuple(w.shape)}")
        return cls([KernelOperator.from_weight(w[k], padding=padding, dtype=dtype)
                    for k in range(w.shape[0])])

    @classmethod
    def from_dense(cls, op: KernelOperator, m: int, atol: float = 0.0) -> "BlockCirculant":
        _plain(op, "op")
        m = int_arg(m, "m", minimum=1)
        if op.out_channels % m or op.in_channels % m:
            raise InvalidInputError(f"m={m} blocks must divide both channel counts {op.shape}")
        bo, bi = op.out_channels // m, op.in_channels // m
        c = op.coeffs.reshape(m, bo, m, bi, *op.kernel_size).transpose(1, 2)  # (r, c, bo, bi, *k)
        r = torch.arange(m)
        first = c[0][(r[None, :] - r[:, None]) % m]                        # block (0, (c-r) mod m)
        gap = float((c - first).abs().max())
        if gap > atol:
            raise InvalidInputError(f"not block-circulant with m={m}: blocks differ from the "
                                    f"shifted first row by up to {gap:.3g}")
        return cls([KernelOperator(c[0, k].contiguous(), op.low) for k in range(m)])

    m = property(lambda self: len(self.blocks))
    block_shape = property(lambda self: self.blocks[0].shape)
    shape = property(lambda self: (self.m * self.block_shape[0], self.m * self.block_shape[1]))
    params = property(lambda self: self.m * self.block_shape[0] * self.block_shape[1]
                      * _volume(self.box))
    macs_per_position = property(lambda self: self.m * self.params)

    @property
    def fft_macs_per_position(self) -> int:
        """``4 J b_out b_in |box|`` with ``J = ⌊m/2⌋ + 1`` (module docstring)."""
        bo, bi = self.block_shape
        return 4 * (self.m // 2 + 1) * bo * bi * _volume(self.box)

    def stacked(self, box: Box | None = None) -> torch.Tensor:
        """The first block row as one ``(m, b_out, b_in, *k)`` coefficient tensor on ``box``."""
        return torch.stack([_embedded(b, box or self.box) for b in self.blocks])

    def dense(self) -> KernelOperator:
        bo, bi = self.block_shape
        check_budget(estimate_bytes((*self.shape, *self.kernel_size), self.blocks[0].dtype),
                     f"the dense {self.shape[0]}x{self.shape[1]} form of a block-circulant coupling")
        a = self.stacked()
        r = torch.arange(self.m)
        coeffs = a[(r[None, :] - r[:, None]) % self.m].transpose(1, 2)
        return KernelOperator(coeffs.reshape(*self.shape, *self.kernel_size), self.box[0])

    def to_algebra(self) -> exact.BlockCirculant:
        return exact.BlockCirculant([b.to_algebra() for b in self.blocks], self.box)

    def apply(self, x: torch.Tensor, padding_mode: str = "zeros", method: str = "fft") -> torch.Tensor:
        """``method="fft"``: through the FFT over channels; ``"direct"``: the dense conv."""
        if method == "direct":
            return super().apply(x, padding_mode)
        if method != "fft":
            raise InvalidInputError(f"method must be 'fft' or 'direct', got {method!r}")
        box = _with_zero(self.box)
        spatial = tuple(range(3, 3 + self.ndim))
        weight = self.stacked(box).flip(spatial)
        return block_circulant_conv(x, weight.to(x.dtype), tuple(box[1]), padding_mode)

    def _compose(self, other: "BlockCirculant") -> "BlockCirculant | None":
        """``(A B)_k = Σ_i A_i B_{(k - i) mod m}``."""
        if other.m != self.m:
            return None
        m = self.m
        blocks = []
        for k in range(m):
            total = self.blocks[0] @ other.blocks[k % m]
            for i in range(1, m):
                total = total + self.blocks[i] @ other.blocks[(k - i) % m]
            blocks.append(total)
        return BlockCirculant(blocks)

    def _add(self, other: "BlockCirculant") -> "BlockCirculant | None":
        if other.m != self.m:
            return None
        return BlockCirculant([a + b for a, b in zip(self.blocks, other.blocks)],
                              _hull([self.box, other.box]))

    def _scale(self, c: float) -> "BlockCirculant":
        return BlockCirculant([b * c for b in self.blocks], self.box)

    def adjoint(self) -> "BlockCirculant":
        m = self.m
        return BlockCirculant([self.blocks[(-k) % m].adjoint() for k in range(m)],
                              (tuple(-h for h in self.box[1]), tuple(-l for l in self.box[0])))


#: the structures by name (the same names as :data:`algebra.structured.STRUCTURES`)
STRUCTURES: dict[str, type[Coupling]] = {
    "dense": Dense, "depthwise": Depthwise, "pointwise": Pointwise, "grouped": Grouped,
    "lean": Lean, "block_circulant": BlockCirculant}


def from_algebra(coupling: exact.Coupling, dtype: torch.dtype = torch.float64) -> Coupling:
    """The float twin of an exact coupling (every coefficient rounded once to ``dtype``)."""
    def op(c: Any) -> KernelOperator:
        return KernelOperator.from_algebra(c, dtype=dtype)
    if isinstance(coupling, exact.Dense):
        return Dense(op(coupling.operator), coupling.box)
    if isinstance(coupling, exact.Pointwise):
        return Pointwise.from_dense(op(coupling.operator))
    if isinstance(coupling, exact.Depthwise):
        d = KernelOperator(_embedded(op(coupling.dense()), coupling.box), coupling.box[0])
        return Depthwise.from_dense(d)
    if isinstance(coupling, exact.Grouped):
        return Grouped([op(b) for b in coupling.blocks], coupling.box)
    if isinstance(coupling, exact.Lean):
        return Lean(from_algebra(coupling.depthwise, dtype), from_algebra(coupling.pointwise, dtype))
    if isinstance(coupling, exact.BlockCirculant):
        return BlockCirculant([op(b) for b in coupling.blocks], coupling.box)
    raise InvalidTypeError(f"coupling must be a laurentnet.algebra structured coupling, got "
                           f"{describe(coupling)}")


@dataclass(frozen=True)
class ChannelDFT:
    """``forward`` = ``F`` (``F_{jr} = ζ^{-jr}``, ``m x m`` complex), ``spectrum[j]`` =
    ``Λ_j = Σ_k ζ^{jk} A_k`` (complex ``(m, b_out, b_in, *k)`` on ``circulant.box``)."""
    circulant: BlockCirculant
    forward: torch.Tensor
    spectrum: torch.Tensor

    def check(self) -> float:
        """``max |(F ⊗ I) C (F^{-1} ⊗ I) − diag(Λ_j)|`` over all taps (round-off size)."""
        m = self.circulant.m
        bo, bi = self.circulant.block_shape
        dense = self.circulant.dense().coeffs.to(self.forward.dtype)
        c = dense.reshape(m, bo, m, bi, *dense.shape[2:])
        inverse = torch.linalg.inv(self.forward)
        lhs = torch.einsum("jr,rasb...,sk->jakb...", self.forward, c, inverse)
        diag = torch.zeros_like(lhs)
        j = torch.arange(m)
        diag[j, :, j] = self.spectrum
        return float((lhs - diag).abs().max())


def channel_dft(circulant: BlockCirculant) -> ChannelDFT:
    """``Λ = m · ifft(A)`` over the block index (``torch.fft.ifft(..., norm="forward")``)."""
    if not isinstance(circulant, BlockCirculant):
        raise InvalidTypeError(f"circulant must be a BlockCirculant, got {describe(circulant)}")
    a = circulant.stacked().to(torch.float64)
    m = circulant.m
    r = torch.arange(m, dtype=torch.float64)
    forward = torch.exp(-2j * math.pi * torch.outer(r, r) / m)
    return ChannelDFT(circulant, forward, torch.fft.ifft(a, dim=0, norm="forward").resolve_conj())
