"""Convolution operators as dense coefficient arrays: the algebra at 64–512 channels.

A :class:`KernelOperator` is ``down_s ∘ K(z) + b`` (DESIGN.md) with the Laurent matrix
``K`` stored densely:

    coeffs[o, c, j1, ..., jd] = coefficient of z^(low + j) in K_{o,c}(z)

i.e. **ascending exponent order** along every spatial axis, starting at the exponent
``low``.  A PyTorch ``conv{n}d`` weight is the same array reversed: ``w[a]`` is the
coefficient of ``z^(p - d*a)``, so ``coeffs = flip(w)`` and ``low = p - d*(k - 1)``
(zeros inserted for dilation ``d``).  The arithmetic (each one a tested identity):

* composition ``A2 @ A1`` (A1 first): ``K = K2(z^{s1}) K1(z)``, ``s = s1 s2``,
  ``b = K2(1) b1 + b2`` — a product of polynomial matrices, computed as one batched
  matrix product per frequency of a real FFT (or one ``conv{n}d`` call);
* ``A1 + A2``: supports aligned, kernels and biases added; ``c * A`` scales both;
* dilation ``K(z^d)``; adjoint ``K(1/z)^T`` (stride 1); ``block_diag`` (groups),
  :func:`vstack` (channel concatenation), ``op[rows]`` (channel split).

Coefficients are ``torch.float64`` unless ``dtype=torch.float32`` is asked for.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from algebra import ConvOperator, exact_rational
from algebra.layout import default_ring
from algebra.laurent import _as_axis_tuple as _per_axis

from .memory import check_budget, estimate_bytes

__all__ = ["KernelOperator", "TorchConv", "block_diag", "vstack", "polymatmul"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _as_tensor(value: Any, dtype: torch.dtype) -> torch.Tensor:
    """A fresh (copied, detached) tensor of ``dtype`` from a tensor or array."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(dtype=dtype, copy=True)
    return torch.tensor(np.asarray(value, dtype=np.float64), dtype=dtype)


def _check_finite(t: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        bad = tuple(int(i) for i in torch.nonzero(~torch.isfinite(t))[0])
        raise ValueError(f"{what} has a non-finite value {t[bad].item()} at index {bad}")


def _spatial(t: torch.Tensor) -> tuple[int, ...]:
    """The spatial axes (all but the two channel axes) of a coefficient tensor."""
    return tuple(range(2, t.ndim))


def _inflate(coeffs: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """Coefficients of ``K(z^d)``: ``d - 1`` zeros between neighbouring taps per axis."""
    if all(d == 1 for d in factors):
        return coeffs
    size = tuple((k - 1) * d + 1 for k, d in zip(coeffs.shape[2:], factors))
    out = coeffs.new_zeros((*coeffs.shape[:2], *size))
    out[(slice(None), slice(None), *(slice(None, None, d) for d in factors))] = coeffs
    return out


class TorchConv(NamedTuple):
    """Arguments of ``F.conv{n}d(x, weight, bias, stride=stride, padding=padding)``."""
    weight: torch.Tensor
    bias: torch.Tensor
    stride: tuple[int, ...]
    padding: tuple[int, ...]


def polymatmul(outer: torch.Tensor, inner: torch.Tensor, dilation: int | Sequence[int] = 1,
               method: str = "auto", budget: int | None = None) -> torch.Tensor:
    """Product ``outer(z^d) inner(z)`` of polynomial matrices in ascending coefficient order:
    ``C[o, c, t] = sum_m sum_{d a + b = t} outer[o, m, a] inner[m, c, b]``, spatial size
    ``d (k_outer - 1) + k_inner``.  ``method='fft'``: one batched complex matrix product per
    frequency of a real FFT of that size; ``'conv'``: one ``conv{n}d`` (a full correlation
    with the reversed outer kernel); ``'auto'``: conv for small float32 kernels (oneDNN),
    FFT otherwise (torch's float64 convolution has no fast path).  The memory guard runs
    before anything is allocated."""
    if outer.ndim != inner.ndim or outer.shape[1] != inner.shape[0]:
        raise ValueError(f"cannot multiply kernel matrices of shapes {tuple(outer.shape)} "
                         f"and {tuple(inner.shape)}")
    ndim = outer.ndim - 2
    d = _per_axis(dilation, ndim, "dilation")
    c_out, c_mid, c_in = outer.shape[0], outer.shape[1], inner.shape[1]
    k_outer = tuple((k - 1) * x + 1 for k, x in zip(outer.shape[2:], d))
    size = tuple(a + b - 1 for a, b in zip(k_outer, inner.shape[2:]))
    dtype = torch.promote_types(outer.dtype, inner.dtype)
    if method == "auto":
        small = int(np.prod(k_outer)) * int(np.prod(inner.shape[2:])) <= 100
        method = "conv" if dtype == torch.float32 and small else "fft"
    n_freq = int(np.prod(size[:-1])) * (size[-1] // 2 + 1)
    need = estimate_bytes((c_out, c_in, *size), dtype) + estimate_bytes((c_out, c_mid, *k_outer), dtype)
    if method == "fft":
        need += n_freq * 2 * estimate_bytes((c_out * c_mid + c_mid * c_in + c_out * c_in,), dtype)
    elif method == "conv":
        need += estimate_bytes((c_in, c_mid, *size), dtype)  # the padded input
    else:
        raise ValueError(f"method must be 'auto', 'fft' or 'conv', got {method!r}")
    check_budget(need, f"composing a {c_out}x{c_mid} kernel with a {c_mid}x{c_in} kernel into "
                 f"{c_out}x{c_in}x{'x'.join(map(str, size))}", budget)
    outer, inner = _inflate(outer.to(dtype), d), inner.to(dtype)
    if method == "conv":
        flipped = outer.flip(_spatial(outer))
        pad = tuple(k - 1 for k in outer.shape[2:])
        return _CONV[ndim](inner.transpose(0, 1), flipped, padding=pad).transpose(0, 1).contiguous()
    dims = tuple(range(-ndim, 0))
    fo = torch.fft.rfftn(outer, s=size, dim=dims).flatten(2).permute(2, 0, 1).contiguous()
    fi = torch.fft.rfftn(inner, s=size, dim=dims).flatten(2).permute(2, 0, 1).contiguous()
    prod = torch.bmm(fo, fi)  # (freq, C_out, C_in)
    del fo, fi
    spec_shape = (*size[:-1], size[-1] // 2 + 1)
    prod = prod.permute(1, 2, 0).reshape(c_out, c_in, *spec_shape)
    return torch.fft.irfftn(prod, s=size, dim=dims)


class KernelOperator:
    """``down_s ∘ K(z) + b`` with ``K`` dense: ``coeffs[o, c, j]`` is the coefficient of
    ``z^(low + j)`` (ascending exponents per axis), ``stride`` per axis, ``bias`` of
    length ``C_out``.  Immutable: operations return new operators (the tensors are owned;
    do not modify them in place)."""

    __slots__ = ("coeffs", "low", "stride", "bias")

    def __init__(self, coeffs: Any, low: int | Sequence[int] = 0,
                 stride: int | Sequence[int] = 1, bias: Any = None, *,
                 dtype: torch.dtype | None = None):
        if not isinstance(coeffs, torch.Tensor):
            coeffs = _as_tensor(coeffs, dtype or torch.float64)
        elif dtype is not None or not coeffs.is_floating_point():
            coeffs = coeffs.to(dtype or torch.float64)
        if coeffs.ndim not in (3, 4, 5):
            raise ValueError(f"coefficients must have shape (C_out, C_in, *kernel) with 1-3 "
                             f"spatial axes, got {tuple(coeffs.shape)}")
        if min(coeffs.shape) == 0:
            raise ValueError(f"empty coefficient tensor of shape {tuple(coeffs.shape)}")
        ndim = coeffs.ndim - 2
        stride = _per_axis(stride, ndim, "stride")
        if any(s <= 0 for s in stride):
            raise ValueError(f"stride must be positive, got {stride}")
        if bias is None:
            bias = coeffs.new_zeros(coeffs.shape[0])
        else:
            bias = bias.to(coeffs) if isinstance(bias, torch.Tensor) else _as_tensor(bias, coeffs.dtype)
            if bias.shape != (coeffs.shape[0],):
                raise ValueError(f"bias must have shape ({coeffs.shape[0]},), got {tuple(bias.shape)}")
        for name, value in (("coeffs", coeffs.detach()), ("low", _per_axis(low, ndim, "low")),
                            ("stride", stride), ("bias", bias.detach())):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("KernelOperator is immutable")

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def from_torch_weight(cls, weight: Any, bias: Any = None, stride: int | Sequence[int] = 1,
                          padding: int | Sequence[int] | str = 0,
                          dilation: int | Sequence[int] = 1, groups: int = 1, *,
                          dtype: torch.dtype = torch.float64) -> "KernelOperator":
        """The operator of ``F.conv{n}d(x, weight, bias, stride, padding, dilation, groups)``:
        ``K_{o,c}(z) = sum_a w[o, c - g(o), a] z^(p - d*a)``, block diagonal over groups."""
        w = _as_tensor(weight, dtype)
        if w.ndim not in (3, 4, 5):
            raise ValueError(f"weight must have shape (C_out, C_in/groups, *kernel), got {tuple(w.shape)}")
        _check_finite(w, "weight")
        ndim = w.ndim - 2
        stride = _per_axis(stride, ndim, "stride")
        dilation = _per_axis(dilation, ndim, "dilation")
        k = tuple(w.shape[2:])
        if isinstance(padding, str):
            if padding == "valid":
                padding = 0
            elif padding == "same" and all(s == 1 for s in stride):
                padding = tuple(d * (n - 1) // 2 for n, d in zip(k, dilation))
            else:
                raise ValueError(f"padding must be an int, a tuple, 'valid' or (stride 1) "
                                 f"'same', got {padding!r}")
        padding = _per_axis(padding, ndim, "padding")
        if any(p < 0 for p in padding) or any(d <= 0 for d in dilation):
            raise ValueError(f"need padding >= 0 and dilation >= 1, got {padding}, {dilation}")
        if groups < 1 or w.shape[0] % groups:
            raise ValueError(f"groups={groups} must divide the weight's first axis ({w.shape[0]})")
        c_out, ipg = w.shape[0], w.shape[1]
        opg = c_out // groups
        dense = w.new_zeros((c_out, ipg * groups, *k))
        diagonal = torch.arange(groups)  # block (g, g) of the (groups x groups) block matrix
        dense.view(groups, opg, groups, ipg, *k)[diagonal, :, diagonal] = w.view(groups, opg, ipg, *k)
        coeffs = _inflate(dense.flip(_spatial(dense)), dilation)
        low = tuple(p - d * (n - 1) for p, d, n in zip(padding, dilation, k))
        b = None
        if bias is not None:
            b = _as_tensor(bias, dtype)
            _check_finite(b, "bias")
        return cls(coeffs, low, stride, b)

    @classmethod
    def identity(cls, channels: int, ndim: int = 2, *,
                 dtype: torch.dtype = torch.float64) -> "KernelOperator":
        """``K = I`` (a skip connection)."""
        eye = torch.eye(channels, dtype=dtype).reshape(channels, channels, *(1,) * ndim)
        return cls(eye, 0)

    @classmethod
    def from_algebra(cls, op: ConvOperator, *,
                     dtype: torch.dtype = torch.float64) -> "KernelOperator":
        """The exact operator's coefficients, each rounded once (correctly) to ``dtype``."""
        if any(u != 1 for u in op.upsample):
            raise ValueError(f"up-sampling {op.upsample} (a transposed convolution) has no "
                             "KernelOperator form; compose it into a strided operator first")
        if op.free_symbols:
            raise ValueError(f"the operator has symbolic weights {sorted(map(str, op.free_symbols))}; "
                             "substitute numbers with ConvOperator.subs first")
        box = op.support() or ((0,) * op.ndim, (0,) * op.ndim)
        low, high = box
        shape = (*op.shape, *(h - l + 1 for l, h in zip(low, high)))
        array = np.zeros(shape, dtype=np.float64)
        to_sympy = op.ring.domain.to_sympy
        for o, row in enumerate(op.matrix):
            for c, entry in enumerate(row):
                for exps, coeff in entry.iterterms():
                    array[(o, c, *(e - l for e, l in zip(exps, low)))] = _to_float(to_sympy(coeff))
        bias = np.array([_to_float(to_sympy(b)) for b in op.bias], dtype=np.float64)
        return cls(torch.from_numpy(array).to(dtype), low, op.stride,
                   torch.from_numpy(bias).to(dtype))

    def to_algebra(self) -> ConvOperator:
        """The exact operator over ``QQ``: every float becomes its exact rational value."""
        ring = default_ring(self.ndim)
        values = self.coeffs.detach().cpu().to(torch.float64)
        entries: dict[tuple[int, int], dict[tuple[int, ...], Any]] = {}
        nonzero = torch.nonzero(values).tolist()
        flat = values[tuple(torch.tensor(nonzero, dtype=torch.long).T)].tolist() if nonzero else []
        for index, value in zip(nonzero, flat):
            exps = tuple(j + l for j, l in zip(index[2:], self.low))
            entries.setdefault((index[0], index[1]), {})[exps] = exact_rational(value)
        matrix = [[ring.from_dict(entries[(o, c)]) if (o, c) in entries else ring.zero
                   for c in range(self.in_channels)] for o in range(self.out_channels)]
        bias = [exact_rational(v) for v in self.bias.detach().cpu().to(torch.float64).tolist()]
        return ConvOperator(ring, matrix, stride=self.stride, bias=bias)

    def to_torch_weight(self) -> TorchConv:
        """``(weight, bias, stride, padding)`` for ``F.conv{n}d``: ``weight = flip(coeffs)``
        with padding ``p = high`` (zeros added so that the taps reach exponent 0 when the
        kernel only looks ahead, as torch needs ``p >= 0``)."""
        coeffs, low = self.coeffs, self.low
        if any(h < 0 for h in self.high):
            pad = [x for h in reversed(self.high) for x in (0, max(-h, 0))]
            coeffs = F.pad(coeffs, pad)
        padding = tuple(max(h, 0) for h in self.high)
        return TorchConv(coeffs.flip(_spatial(coeffs)).contiguous(), self.bias.clone(),
                         self.stride, padding)

    def with_bias(self, bias: Any) -> "KernelOperator":
        return KernelOperator(self.coeffs, self.low, self.stride, bias)

    def linear_part(self) -> "KernelOperator":
        """The same operator without bias."""
        return KernelOperator(self.coeffs, self.low, self.stride)

    def to(self, dtype: torch.dtype) -> "KernelOperator":
        """The same operator with coefficients of another floating dtype."""
        return KernelOperator(self.coeffs.to(dtype), self.low, self.stride, self.bias.to(dtype))

    # -- shape ----------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return self.coeffs.ndim - 2

    @property
    def shape(self) -> tuple[int, int]:
        """``(C_out, C_in)``."""
        return self.coeffs.shape[0], self.coeffs.shape[1]

    @property
    def out_channels(self) -> int:
        return self.coeffs.shape[0]

    @property
    def in_channels(self) -> int:
        return self.coeffs.shape[1]

    @property
    def kernel_size(self) -> tuple[int, ...]:
        """Stored extent per axis (``high - low + 1``)."""
        return tuple(self.coeffs.shape[2:])

    @property
    def high(self) -> tuple[int, ...]:
        """Exponent of the last stored entry per axis."""
        return tuple(l + k - 1 for l, k in zip(self.low, self.kernel_size))

    @property
    def dtype(self) -> torch.dtype:
        return self.coeffs.dtype

    @property
    def has_bias(self) -> bool:
        return bool(self.bias.any())

    def output_shape(self, sizes: Sequence[int], padding: str = "zero") -> tuple[int, ...]:
        """Output window for an input of spatial size ``n``.  ``'circular'``: ``n / s`` (each
        stride must divide its size).  ``'zero'``: torch's window for :meth:`to_torch_weight`,
        ``i = 0 .. floor((n - 1 + p + low) / s)`` with ``p = max(high, 0)`` (for a chain of
        'valid' layers this is the chain's own output)."""
        n = _per_axis(sizes, self.ndim, "sizes")
        if padding == "circular":
            if any(m % s for m, s in zip(n, self.stride)):
                raise ValueError(f"circular padding needs each stride {self.stride} to divide "
                                 f"the size {n}")
            return tuple(m // s for m, s in zip(n, self.stride))
        if padding != "zero":
            raise ValueError(f"padding must be 'zero' or 'circular', got {padding!r}")
        out = tuple((m - 1 + max(h, 0) + l) // s + 1
                    for m, h, l, s in zip(n, self.high, self.low, self.stride))
        if any(o <= 0 for o in out):
            raise ValueError(f"input size {n} is smaller than the kernel's reach "
                             f"{self.kernel_size}: no output position")
        return out

    # -- algebra --------------------------------------------------------------------------
    def compose(self, inner: "KernelOperator", *, method: str = "auto",
                budget: int | None = None) -> "KernelOperator":
        """``self ∘ inner`` (``inner`` first), by the noble identity:
        ``K = K_self(z^{s_inner}) K_inner(z)``, ``s = s_inner s_self``,
        ``b = K_self(1) b_inner + b_self``.  Refuses before allocating when the composed
        kernel exceeds the memory budget."""
        if not isinstance(inner, KernelOperator):
            raise TypeError(f"expected a KernelOperator, got {type(inner).__name__}")
        if self.ndim != inner.ndim:
            raise ValueError(f"cannot compose a {self.ndim}-D operator with a {inner.ndim}-D one")
        if self.in_channels != inner.out_channels:
            raise ValueError(f"cannot compose: the outer operator takes {self.in_channels} "
                             f"channels, the inner one gives {inner.out_channels}")
        coeffs = polymatmul(self.coeffs, inner.coeffs, inner.stride, method, budget)
        low = tuple(lo * s + li for lo, s, li in zip(self.low, inner.stride, inner.low))
        stride = tuple(a * b for a, b in zip(self.stride, inner.stride))
        dtype = coeffs.dtype
        bias = self.at_one().to(dtype) @ inner.bias.to(dtype) + self.bias.to(dtype)
        return KernelOperator(coeffs, low, stride, bias)

    def __matmul__(self, other: "KernelOperator") -> "KernelOperator":
        if not isinstance(other, KernelOperator):
            return NotImplemented
        return self.compose(other)

    def _embedded(self, low: Sequence[int], size: Sequence[int]) -> torch.Tensor:
        """Coefficients placed in the larger box starting at exponent ``low``."""
        pad = []
        for l_new, n_new, l, k in reversed(list(zip(low, size, self.low, self.kernel_size))):
            pad += [l - l_new, (l_new + n_new) - (l + k)]
        return F.pad(self.coeffs, pad) if any(pad) else self.coeffs

    def __add__(self, other: Any) -> "KernelOperator":
        """Parallel branches: kernels (on the union of the supports) and biases add."""
        if not isinstance(other, KernelOperator):
            return NotImplemented
        if self.shape != other.shape or self.ndim != other.ndim:
            raise ValueError(f"cannot add operators of shapes {self.shape} and {other.shape}")
        if self.stride != other.stride:
            raise ValueError(f"cannot add operators with strides {self.stride} and "
                             f"{other.stride}: the sum is not one strided convolution")
        low = tuple(map(min, self.low, other.low))
        size = tuple(max(a, b) - l + 1 for a, b, l in zip(self.high, other.high, low))
        dtype = torch.promote_types(self.dtype, other.dtype)
        coeffs = self._embedded(low, size).to(dtype) + other._embedded(low, size).to(dtype)
        return KernelOperator(coeffs, low, self.stride, self.bias.to(dtype) + other.bias.to(dtype))

    def __neg__(self) -> "KernelOperator":
        return KernelOperator(-self.coeffs, self.low, self.stride, -self.bias)

    def __sub__(self, other: Any) -> "KernelOperator":
        if not isinstance(other, KernelOperator):
            return NotImplemented
        return self + (-other)

    def __mul__(self, scalar: Any) -> "KernelOperator":
        """``c·A``: kernel and bias scaled by the real number ``c``."""
        if isinstance(scalar, torch.Tensor) and scalar.numel() == 1:
            scalar = scalar.item()
        if not isinstance(scalar, (int, float, np.integer, np.floating)):
            return NotImplemented
        c = float(scalar)
        return KernelOperator(self.coeffs * c, self.low, self.stride, self.bias * c)

    __rmul__ = __mul__

    def dilate(self, factors: int | Sequence[int]) -> "KernelOperator":
        """``K(z^d)`` with the same stride (an à-trous convolution)."""
        d = _per_axis(factors, self.ndim, "dilation")
        if any(x <= 0 for x in d):
            raise ValueError(f"dilation must be positive, got {d}")
        size = tuple((k - 1) * x + 1 for k, x in zip(self.kernel_size, d))
        check_budget(estimate_bytes((*self.shape, *size), self.dtype),
                     f"a {self.out_channels}x{self.in_channels} kernel dilated to {size}")
        return KernelOperator(_inflate(self.coeffs, d), tuple(l * x for l, x in zip(self.low, d)),
                              self.stride, self.bias)

    def adjoint(self) -> "KernelOperator":
        """``K(1/z)^T``: channels transposed, every axis reversed, ``low -> -high``.  The
        adjoint of the linear part (a bias has none); stride 1 only."""
        if any(s != 1 for s in self.stride):
            raise ValueError(f"the adjoint of a stride-{self.stride} operator is an up-sampling "
                             "(transposed) convolution, which KernelOperator does not represent; "
                             "use algebra's ConvOperator.adjoint or F.conv_transpose with "
                             "to_torch_weight()")
        coeffs = self.coeffs.transpose(0, 1).flip(_spatial(self.coeffs)).contiguous()
        return KernelOperator(coeffs, tuple(-h for h in self.high), 1)

    def __getitem__(self, rows: int | slice | Sequence[int]) -> "KernelOperator":
        """A channel split: the operator onto the selected output channels."""
        index = [rows] if isinstance(rows, int) else \
            list(range(self.out_channels))[rows] if isinstance(rows, slice) else list(rows)
        if not index:
            raise ValueError("a channel split must keep at least one channel")
        idx = torch.tensor(index, dtype=torch.long)
        return KernelOperator(self.coeffs[idx], self.low, self.stride, self.bias[idx])

    def columns(self, cols: slice | Sequence[int]) -> "KernelOperator":
        """The operator restricted to the selected input channels (bias kept)."""
        index = list(range(self.in_channels))[cols] if isinstance(cols, slice) else list(cols)
        if not index:
            raise ValueError("a column selection must keep at least one channel")
        idx = torch.tensor(index, dtype=torch.long)
        return KernelOperator(self.coeffs[:, idx], self.low, self.stride, self.bias)

    # -- evaluation and comparison --------------------------------------------------------
    def at_one(self) -> torch.Tensor:
        """``K(1)`` (``C_out x C_in``): the sum of the taps, what a constant image is
        multiplied by."""
        return self.coeffs.sum(dim=_spatial(self.coeffs))

    def trimmed(self) -> "KernelOperator":
        """The same operator with all-zero border slices removed (the exact support box)."""
        nz = self.coeffs != 0
        if not bool(nz.any()):
            return KernelOperator(self.coeffs.new_zeros((*self.shape, *(1,) * self.ndim)), 0,
                                  self.stride, self.bias)
        slices, low = [slice(None), slice(None)], []
        for axis in range(self.ndim):
            others = tuple(a for a in range(nz.ndim) if a != axis + 2)
            hit = torch.nonzero(nz.any(dim=others)).flatten()
            first, last = int(hit[0]), int(hit[-1])
            slices.append(slice(first, last + 1))
            low.append(self.low[axis] + first)
        return KernelOperator(self.coeffs[tuple(slices)].contiguous(), low, self.stride, self.bias)

    def mod_circular(self, sizes: int | Sequence[int]) -> "KernelOperator":
        """``K mod (z^n - 1)`` on every axis whose kernel is longer than ``n`` (taps folded
        onto exponents ``0 .. n-1``): the same operator on ``n``-periodic signals."""
        n = _per_axis(sizes, self.ndim, "sizes")
        coeffs, low = self.coeffs, list(self.low)
        for axis, (m, k) in enumerate(zip(n, self.kernel_size)):
            if k <= m:
                continue
            target = (torch.arange(k) + low[axis]) % m
            shape = list(coeffs.shape)
            shape[axis + 2] = m
            coeffs = coeffs.new_zeros(shape).index_add_(axis + 2, target, coeffs)
            low[axis] = 0
        return KernelOperator(coeffs, low, self.stride, self.bias)

    def allclose(self, other: "KernelOperator", rtol: float = 1e-5, atol: float = 1e-8) -> bool:
        """Equal strides and, on the union of the supports, close kernels and biases."""
        if self.shape != other.shape or self.stride != other.stride or self.ndim != other.ndim:
            return False
        low = tuple(map(min, self.low, other.low))
        size = tuple(max(a, b) - l + 1 for a, b, l in zip(self.high, other.high, low))
        dtype = torch.promote_types(self.dtype, other.dtype)
        return bool(torch.allclose(self._embedded(low, size).to(dtype),
                                   other._embedded(low, size).to(dtype), rtol, atol)
                    and torch.allclose(self.bias.to(dtype), other.bias.to(dtype), rtol, atol))

    def __repr__(self) -> str:
        extra = f", stride={self.stride}" if any(s != 1 for s in self.stride) else ""
        extra += ", bias" if self.has_bias else ""
        return (f"KernelOperator({self.out_channels}x{self.in_channels}, exponents "
                f"{self.low}..{self.high}{extra}, {str(self.dtype).removeprefix('torch.')})")


def _to_float(value: Any) -> float:
    """A sympy number rounded once, correctly, to float64."""
    if value.is_Rational:
        return float(Fraction(int(value.p), int(value.q)))
    if value.free_symbols:
        raise ValueError(f"coefficient {value} is symbolic")
    return float(value)


def _frame(ops: Sequence[KernelOperator]) -> tuple[tuple[int, ...], tuple[int, ...], torch.dtype]:
    """The common exponent box ``(low, size)`` and promoted dtype of several operators."""
    low = tuple(min(col) for col in zip(*(op.low for op in ops)))
    high = tuple(max(col) for col in zip(*(op.high for op in ops)))
    dtype = ops[0].dtype
    for op in ops[1:]:
        dtype = torch.promote_types(dtype, op.dtype)
    return low, tuple(h - l + 1 for l, h in zip(low, high)), dtype


def block_diag(operators: Sequence[KernelOperator]) -> KernelOperator:
    """``diag(A_1, ..., A_g)`` — a grouped convolution (equal strides)."""
    ops = list(operators)
    if not ops:
        raise ValueError("block_diag needs at least one operator")
    if len({(op.stride, op.ndim) for op in ops}) != 1:
        raise ValueError("block_diag needs operators with equal strides and dimensions")
    low, size, dtype = _frame(ops)
    c_out, c_in = sum(op.out_channels for op in ops), sum(op.in_channels for op in ops)
    coeffs = torch.zeros((c_out, c_in, *size), dtype=dtype)
    o = c = 0
    for op in ops:
        coeffs[o:o + op.out_channels, c:c + op.in_channels] = op._embedded(low, size)
        o, c = o + op.out_channels, c + op.in_channels
    return KernelOperator(coeffs, low, ops[0].stride, torch.cat([op.bias.to(dtype) for op in ops]))


def vstack(operators: Sequence[KernelOperator]) -> KernelOperator:
    """Channel concatenation ``[A_1; ...; A_k]`` of operators on the same input."""
    ops = list(operators)
    if not ops:
        raise ValueError("vstack needs at least one operator")
    if len({(op.stride, op.ndim, op.in_channels) for op in ops}) != 1:
        raise ValueError("vstack needs operators with equal strides, dimensions and inputs")
    low, size, dtype = _frame(ops)
    coeffs = torch.cat([op._embedded(low, size).to(dtype) for op in ops])
    return KernelOperator(coeffs, low, ops[0].stride, torch.cat([op.bias.to(dtype) for op in ops]))
