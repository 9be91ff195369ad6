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

import math
import numbers
from fractions import Fraction
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..algebra import ConvOperator, exact_rational
from ..algebra.layout import default_ring
from ..algebra.laurent import _as_axis_tuple as _per_axis

from .memory import check_budget, estimate_bytes

__all__ = ["KernelOperator", "TorchConv", "block_diag", "vstack", "polymatmul"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

#: rough bytes per exact coefficient (a sympy Rational in a polynomial's dict), for the
#: memory guard of :meth:`KernelOperator.to_algebra`
_EXACT_ENTRY_BYTES = 256


#: the coefficient dtypes a KernelOperator holds (FFT products and float64 convolutions
#: need one of these; float16/bfloat16 have no CPU FFT in torch)
FLOAT_DTYPES = (torch.float32, torch.float64)


def check_float_dtype(dtype: Any, what: str = "dtype") -> torch.dtype:
    """``dtype`` if it is ``torch.float32`` or ``torch.float64``, else a clear TypeError."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{what} must be a torch dtype (torch.float32 or torch.float64), "
                        f"got {dtype!r}")
    if dtype.is_complex:
        raise TypeError(f"{what} {dtype}: complex weights not supported (the operators are "
                        "real); pass torch.float32 or torch.float64")
    if not dtype.is_floating_point:
        raise TypeError(f"{what} must be floating point (torch.float32 or torch.float64), "
                        f"got {dtype}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{what} {dtype} is not supported (no CPU FFT/float kernels for it); "
                        "use torch.float32 or torch.float64")
    return dtype


def _as_tensor(value: Any, dtype: torch.dtype | None, what: str = "coefficients") -> torch.Tensor:
    """A fresh (copied, detached) real tensor from a tensor or array.  ``dtype`` None keeps a
    float32/float64 tensor's dtype (float16/bfloat16 widen exactly to float32, integers and
    booleans become float64).  Complex and non-numeric input is refused (TypeError)."""
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise TypeError(f"{what}: complex weights not supported (got a {value.dtype} "
                            "tensor); pass the real part explicitly if that is what you mean")
        if dtype is None:
            dtype = value.dtype if value.dtype in FLOAT_DTYPES else \
                torch.float32 if value.is_floating_point() else torch.float64
        return value.detach().to(dtype=dtype, copy=True)
    array = np.asarray(value)
    if array.dtype.kind == "c":
        raise TypeError(f"{what}: complex weights not supported (got a {array.dtype} array)")
    if array.dtype.kind not in "biuf":
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{what} must be real numbers, got an array of {array.dtype} "
                            f"({exc})") from None
    if dtype is None:
        dtype = torch.float32 if array.dtype in (np.float32, np.float16) else torch.float64
    return torch.from_numpy(np.array(array, dtype=np.float64)).to(dtype)


def _check_finite(t: torch.Tensor, what: str) -> None:
    if t.numel() and not bool(torch.isfinite(t).all()):
        bad = tuple(int(i) for i in torch.nonzero(~torch.isfinite(t))[0])
        raise ValueError(f"{what} has a non-finite value {t[bad].item()} at index {bad}; "
                         "NaN/Inf weights are refused")


def _int_tuple(value: Any, ndim: int, name: str) -> tuple[int, ...]:
    """One integer per axis (an int broadcasts), else a clear ValueError/TypeError."""
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be an int or {ndim} ints, got {value!r}")
    if not isinstance(value, (int, np.integer)):
        try:
            items = list(value)
        except TypeError:
            raise TypeError(f"{name} must be an int or {ndim} ints, got {value!r}") from None
        if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))
               for v in items):
            raise TypeError(f"{name} must be an int or {ndim} ints, got {value!r}")
    return _per_axis(value, ndim, name)


def _positive_ints(value: Any, ndim: int, name: str) -> tuple[int, ...]:
    """One positive integer per axis (an int broadcasts), else a clear ValueError/TypeError."""
    out = _int_tuple(value, ndim, name)
    if any(v <= 0 for v in out):
        raise ValueError(f"{name} must be positive, got {out}")
    return out


def _torch_to_numpy_dtype(dtype: torch.dtype) -> Any:
    return {torch.float32: np.float32, torch.float64: np.float64}[dtype]


def _rounded(values: Any, dtype: torch.dtype, what: str) -> torch.Tensor:
    """Exact numbers (ints, Fractions, sympy Rationals, floats) each rounded ONCE, correctly,
    to ``dtype`` (:func:`algebra.exact.round_rational`); symbolic entries are refused."""
    import sympy
    from ..algebra.exact import round_rational
    np_dtype = _torch_to_numpy_dtype(check_float_dtype(dtype))
    array = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    if array.dtype != object:
        if array.dtype.kind == "c":
            raise TypeError(f"{what}: complex weights not supported")
        t = torch.from_numpy(np.array(array, dtype=np.float64))
        _check_finite(t, what)
        return t.to(dtype)  # float64 (or narrower) values: one rounding
    out = np.empty(array.shape, dtype=np_dtype)
    flat = out.reshape(-1)
    for i, v in enumerate(array.flat):
        if isinstance(v, sympy.Basic):
            if v.free_symbols:
                raise ValueError(f"{what} is symbolic ({v}); substitute numbers first")
            if not v.is_Rational:
                v = float(v)  # an irrational constant: one rounding to float64
        if isinstance(v, (float, np.floating)):
            if not np.isfinite(v):
                raise ValueError(f"{what} has a non-finite value {v}; NaN/Inf weights are refused")
            flat[i] = np_dtype(v)
            continue
        if isinstance(v, (complex, np.complexfloating)):
            raise TypeError(f"{what}: complex weights not supported")
        if isinstance(v, (int, np.integer)):
            v = Fraction(int(v))
        elif isinstance(v, sympy.Rational):
            v = Fraction(int(v.p), int(v.q))
        elif not isinstance(v, Fraction):
            try:
                v = Fraction(v)
            except (TypeError, ValueError):
                raise TypeError(f"{what} has a non-numeric entry {v!r}") from None
        try:
            flat[i] = round_rational(v, np_dtype)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
    return torch.from_numpy(out)


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
    for name, t in (("outer", outer), ("inner", inner)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"polymatmul: {name} must be a torch tensor, got {type(t).__name__}")
        if t.ndim not in (3, 4, 5):
            raise ValueError(f"polymatmul: {name} must have shape (C_out, C_in, *kernel) with "
                             f"1-3 spatial axes, got {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            check_float_dtype(t.dtype, f"polymatmul: {name}'s dtype")
    if outer.ndim != inner.ndim or outer.shape[1] != inner.shape[0]:
        raise ValueError(f"cannot multiply kernel matrices of shapes {tuple(outer.shape)} "
                         f"and {tuple(inner.shape)}")
    ndim = outer.ndim - 2
    d = _positive_ints(dilation, ndim, "dilation")
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
    product = torch.fft.irfftn(prod, s=size, dim=dims)
    return product * _structural_support(outer, inner, size, dims)


def _structural_support(outer: torch.Tensor, inner: torch.Tensor, size: tuple[int, ...],
                        dims: tuple[int, ...]) -> torch.Tensor:
    """Where a product of these kernels can be nonzero: channel pairs ``(o, c)`` with some
    ``m`` where both ``outer[o, m]`` and ``inner[m, c]`` are nonzero, times positions in the
    sum of the two spatial supports.  Elsewhere the exact product is 0, and the FFT's
    round-off (~1e-17) must not turn those taps into nonzero coefficients."""
    channels = (outer.flatten(2) != 0).any(-1).to(outer.dtype) @ \
        (inner.flatten(2) != 0).any(-1).to(outer.dtype)
    so = (outer != 0).flatten(0, 1).any(0).to(outer.dtype)
    si = (inner != 0).flatten(0, 1).any(0).to(outer.dtype)
    counts = torch.fft.irfftn(torch.fft.rfftn(so, s=size, dim=dims) *
                              torch.fft.rfftn(si, s=size, dim=dims), s=size, dim=dims)
    spatial = counts > 0.5  # integer counts of overlapping taps
    mask = (channels > 0.5).reshape(*channels.shape, *(1,) * len(size)) & spatial
    return mask.to(outer.dtype)


class KernelOperator:
    """``down_s ∘ K(z) + b`` with ``K`` dense: ``coeffs[o, c, j]`` is the coefficient of
    ``z^(low + j)`` (ascending exponents per axis), ``stride`` per axis, ``bias`` of
    length ``C_out``.  Immutable: operations return new operators (the tensors are owned;
    do not modify them in place)."""

    __slots__ = ("coeffs", "low", "stride", "bias")

    def __init__(self, coeffs: Any, low: int | Sequence[int] = 0,
                 stride: int | Sequence[int] = 1, bias: Any = None, *,
                 dtype: torch.dtype | None = None):
        if dtype is not None:
            check_float_dtype(dtype)
        if not isinstance(coeffs, torch.Tensor):
            coeffs = _as_tensor(coeffs, dtype or torch.float64)
        elif coeffs.is_complex():
            raise TypeError(f"complex weights not supported (got a {coeffs.dtype} coefficient "
                            "tensor); KernelOperator holds real kernels")
        elif dtype is not None and coeffs.dtype != dtype:
            coeffs = coeffs.to(dtype)
        elif coeffs.dtype not in FLOAT_DTYPES:
            # exact widening: integers/booleans to float64, float16/bfloat16 to float32
            coeffs = coeffs.to(torch.float32 if coeffs.is_floating_point() else torch.float64)
        if coeffs.ndim not in (3, 4, 5):
            raise ValueError(f"coefficients must have shape (C_out, C_in, *kernel) with 1-3 "
                             f"spatial axes, got {tuple(coeffs.shape)}")
        if min(coeffs.shape) == 0:
            raise ValueError(f"empty coefficient tensor of shape {tuple(coeffs.shape)}")
        ndim = coeffs.ndim - 2
        stride = _positive_ints(stride, ndim, "stride")
        _check_finite(coeffs, "coeffs")
        if bias is None:
            bias = coeffs.new_zeros(coeffs.shape[0])
        else:
            bias = _as_tensor(bias, coeffs.dtype, "bias") if not isinstance(bias, torch.Tensor) \
                or bias.is_complex() else bias.detach().to(coeffs)
            if bias.shape != (coeffs.shape[0],):
                raise ValueError(f"bias must have shape ({coeffs.shape[0]},), got {tuple(bias.shape)}")
            _check_finite(bias, "bias")
        for name, value in (("coeffs", coeffs.detach()), ("low", _int_tuple(low, ndim, "low")),
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
        w = _as_tensor(weight, check_float_dtype(dtype), "weight")
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
            b = _as_tensor(bias, dtype, "bias")
            _check_finite(b, "bias")
        return cls(coeffs, low, stride, b)

    @classmethod
    def identity(cls, channels: int, ndim: int = 2, *,
                 dtype: torch.dtype = torch.float64) -> "KernelOperator":
        """``K = I`` (a skip connection)."""
        if isinstance(channels, (bool, np.bool_)) or not isinstance(channels, (int, np.integer)):
            raise TypeError(f"channels must be an int, got {channels!r}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if isinstance(ndim, (bool, np.bool_)) or not isinstance(ndim, (int, np.integer)) \
                or ndim not in (1, 2, 3):
            raise ValueError(f"ndim must be 1, 2 or 3 (spatial axes), got {ndim!r}")
        channels, ndim = int(channels), int(ndim)
        eye = torch.eye(channels, dtype=check_float_dtype(dtype)).reshape(channels, channels, *(1,) * ndim)
        return cls(eye, 0)

    @classmethod
    def from_algebra(cls, op: ConvOperator, *,
                     dtype: torch.dtype = torch.float64) -> "KernelOperator":
        """The exact operator's coefficients, each rounded once (correctly) to ``dtype``."""
        if not isinstance(op, ConvOperator):
            raise TypeError(f"expected an algebra ConvOperator, got {type(op).__name__}")
        check_float_dtype(dtype)
        if any(u != 1 for u in op.upsample):
            raise ValueError(f"up-sampling {op.upsample} (a transposed convolution) has no "
                             "KernelOperator form; compose it into a strided operator first")
        if op.free_symbols:
            raise ValueError(f"the operator has symbolic weights {sorted(map(str, op.free_symbols))}; "
                             "substitute numbers with ConvOperator.subs first")
        box = op.support() or ((0,) * op.ndim, (0,) * op.ndim)
        low, high = box
        shape = (*op.shape, *(h - l + 1 for l, h in zip(low, high)))
        check_budget(estimate_bytes(shape, dtype),
                     f"the dense {'x'.join(map(str, shape))} kernel of the operator")
        array = np.zeros(shape, dtype=object)
        to_sympy = op.ring.domain.to_sympy
        for o, row in enumerate(op.matrix):
            for c, entry in enumerate(row):
                for exps, coeff in entry.iterterms():
                    array[(o, c, *(e - l for e, l in zip(exps, low)))] = to_sympy(coeff)
        bias = np.empty(len(op.bias), dtype=object)
        bias[:] = [to_sympy(b) for b in op.bias]
        return cls(_rounded(array, dtype, "coefficient"), low, op.stride,
                   _rounded(bias, dtype, "bias"))

    def to_algebra(self) -> ConvOperator:
        """The exact operator over ``QQ``: every float becomes its exact rational value."""
        nonzeros = int(torch.count_nonzero(self.coeffs)) + self.out_channels
        check_budget(nonzeros * _EXACT_ENTRY_BYTES,
                     f"the exact form of a {self.out_channels}x{self.in_channels} operator with "
                     f"{nonzeros} nonzero coefficients")
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
        coeffs = self.coeffs
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
        check_float_dtype(dtype)
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
            raise ValueError(f"cannot add a {self.ndim}-D {self.shape[0]}x{self.shape[1]} operator "
                             f"and a {other.ndim}-D {other.shape[0]}x{other.shape[1]} one")
        if self.stride != other.stride:
            raise ValueError(f"cannot add operators with strides {self.stride} and "
                             f"{other.stride}: the sum is not one strided convolution")
        low = tuple(map(min, self.low, other.low))
        size = tuple(max(a, b) - l + 1 for a, b, l in zip(self.high, other.high, low))
        dtype = torch.promote_types(self.dtype, other.dtype)
        check_budget(3 * estimate_bytes((*self.shape, *size), dtype),
                     f"adding two {self.out_channels}x{self.in_channels} kernels on the common "
                     f"support {'x'.join(map(str, size))}")
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
        if isinstance(scalar, (complex, np.complexfloating)):
            raise TypeError(f"cannot scale by the complex number {scalar}: complex weights "
                            "not supported")
        if not isinstance(scalar, (numbers.Real, np.integer, np.floating)):
            return NotImplemented
        c = float(scalar)
        if not math.isfinite(c):
            raise ValueError(f"cannot scale an operator by the non-finite number {c}")
        return KernelOperator(self.coeffs * c, self.low, self.stride, self.bias * c)

    __rmul__ = __mul__

    def dilate(self, factors: int | Sequence[int]) -> "KernelOperator":
        """``K(z^d)`` with the same stride (an à-trous convolution)."""
        d = _positive_ints(factors, self.ndim, "dilation")
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
        idx = _channel_index(rows, self.out_channels, "output channel")
        return KernelOperator(self.coeffs[idx], self.low, self.stride, self.bias[idx])

    def columns(self, cols: slice | Sequence[int]) -> "KernelOperator":
        """The operator restricted to the selected input channels (bias kept)."""
        idx = _channel_index(cols, self.in_channels, "input channel")
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
        n = _positive_ints(sizes, self.ndim, "sizes")
        folded = tuple(min(m, k) for m, k in zip(n, self.kernel_size))
        check_budget(estimate_bytes((*self.shape, *folded), self.dtype),
                     f"a {self.out_channels}x{self.in_channels} kernel folded modulo {n}")
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
        if not isinstance(other, KernelOperator):
            raise TypeError(f"expected a KernelOperator, got {type(other).__name__}")
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


class ChannelIndexError(ValueError, IndexError):
    """A channel index out of range (both a ValueError and an IndexError)."""


def _channel_index(rows: Any, count: int, what: str) -> torch.Tensor:
    """Validated channel indices (an int, a slice or a sequence of ints; negative ones count
    from the end) as a long tensor."""
    if isinstance(rows, slice):
        index = list(range(count))[rows]
    elif isinstance(rows, (int, np.integer)) and not isinstance(rows, (bool, np.bool_)):
        index = [rows]
    elif isinstance(rows, torch.Tensor) and not rows.is_floating_point() and not rows.is_complex() \
            and rows.dtype != torch.bool and rows.ndim <= 1:
        index = rows.reshape(-1).tolist()
    elif isinstance(rows, (str, bytes)) or not hasattr(rows, "__iter__"):
        raise TypeError(f"{what} index must be an int, a slice or a sequence of ints, "
                        f"got {rows!r}")
    else:
        index = list(rows)
    for i in index:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"{what} index must be an int, a slice or a sequence of ints, "
                            f"got {rows!r}")
        if not -count <= i < count:
            raise ChannelIndexError(f"{what} {int(i)} out of range: the operator has {count}")
    if not index:
        raise ValueError(f"a channel selection must keep at least one {what}")
    return torch.tensor([int(i) % count for i in index], dtype=torch.long)


def _frame(ops: Sequence[KernelOperator]) -> tuple[tuple[int, ...], tuple[int, ...], torch.dtype]:
    """The common exponent box ``(low, size)`` and promoted dtype of several operators."""
    low = tuple(min(col) for col in zip(*(op.low for op in ops)))
    high = tuple(max(col) for col in zip(*(op.high for op in ops)))
    dtype = ops[0].dtype
    for op in ops[1:]:
        dtype = torch.promote_types(dtype, op.dtype)
    return low, tuple(h - l + 1 for l, h in zip(low, high)), dtype


def _operator_list(operators: Sequence[KernelOperator], name: str) -> list[KernelOperator]:
    """A non-empty list of KernelOperators, or a clear error naming ``name``."""
    ops = list(operators)
    if not ops:
        raise ValueError(f"{name} needs at least one operator")
    for op in ops:
        if not isinstance(op, KernelOperator):
            raise TypeError(f"{name} takes KernelOperators, got {type(op).__name__}")
    return ops


def block_diag(operators: Sequence[KernelOperator]) -> KernelOperator:
    """``diag(A_1, ..., A_g)`` — a grouped convolution (equal strides)."""
    ops = _operator_list(operators, "block_diag")
    if len({(op.stride, op.ndim) for op in ops}) != 1:
        raise ValueError("block_diag needs operators with equal strides and dimensions")
    low, size, dtype = _frame(ops)
    c_out, c_in = sum(op.out_channels for op in ops), sum(op.in_channels for op in ops)
    check_budget(estimate_bytes((c_out, c_in, *size), dtype),
                 f"a block-diagonal {c_out}x{c_in} kernel of size {'x'.join(map(str, size))}")
    coeffs = torch.zeros((c_out, c_in, *size), dtype=dtype)
    o = c = 0
    for op in ops:
        coeffs[o:o + op.out_channels, c:c + op.in_channels] = op._embedded(low, size)
        o, c = o + op.out_channels, c + op.in_channels
    return KernelOperator(coeffs, low, ops[0].stride, torch.cat([op.bias.to(dtype) for op in ops]))


def vstack(operators: Sequence[KernelOperator]) -> KernelOperator:
    """Channel concatenation ``[A_1; ...; A_k]`` of operators on the same input."""
    ops = _operator_list(operators, "vstack")
    if len({(op.stride, op.ndim, op.in_channels) for op in ops}) != 1:
        raise ValueError("vstack needs operators with equal strides, dimensions and inputs")
    low, size, dtype = _frame(ops)
    c_out = sum(op.out_channels for op in ops)
    check_budget(2 * estimate_bytes((c_out, ops[0].in_channels, *size), dtype),
                 f"a stacked {c_out}x{ops[0].in_channels} kernel of size {'x'.join(map(str, size))}")
    coeffs = torch.cat([op._embedded(low, size).to(dtype) for op in ops])
    return KernelOperator(coeffs, low, ops[0].stride, torch.cat([op.bias.to(dtype) for op in ops]))
