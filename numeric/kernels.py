"""Convolution operators as dense coefficient arrays: the algebra at 64–512 channels.

A :class:`KernelOperator` is ``down_s ∘ K(z) ∘ up_u + b`` (``docs/conventions.md``) with the
Laurent matrix ``K`` stored densely:

    coeffs[o, c, j1, ..., jd] = coefficient of z^(low + j) in K_{o,c}(z)

i.e. **ascending exponent order** along every spatial axis, starting at the exponent
``low``.  A PyTorch ``conv{n}d`` weight is the same array reversed: ``w[a]`` is the
coefficient of ``z^(p - d*a)``, so ``coeffs = flip(w)`` and ``low = p - d*(k - 1)``
(zeros inserted for dilation ``d``).  The arithmetic (each one a tested identity):

* composition ``A2 @ A1`` (A1 first) by the noble identities: ``K = K2(z^{s1}) K1(z^{u2})``,
  ``s = s1 s2``, ``u = u1 u2``, ``b = K2(1) b1 + b2`` (valid when ``gcd(u2, s1) = 1`` per
  axis and no bias precedes an up-sampling) — a product of polynomial matrices, computed
  as one batched matrix product per frequency of a real FFT (or one ``conv{n}d`` call);
* ``A1 + A2`` (same stride and up-sampling): supports aligned, kernels and biases added;
  ``c * A`` scales both;
* dilation ``K(z^d)``; adjoint ``K(1/z)^T`` with stride and up-sampling swapped;
  ``block_diag`` (groups), :func:`vstack` (channel concatenation), ``op[rows]`` (channel
  split).

A transposed convolution ``conv_transpose{n}d(x, w, stride=u, padding=p, dilation=d)`` is
``K ∘ up_u`` with ``K_{o,c}(z) = sum_a w[c, o, a] z^(d*a - p)``: ``coeffs = w`` (channels
swapped, not reversed), ``low = -p`` (:meth:`KernelOperator.from_weight` with
``transposed=True``).

Coefficients are ``torch.float64`` unless ``dtype=torch.float32`` is asked for.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..algebra.errors import InvalidInputError, InvalidTypeError
from ..algebra.validate import int_arg
from ..algebra import ConvOperator, TorchLayout, exact_rational
from ..algebra.channels import channel_index
from ..algebra.layout import default_ring, same_padding
from ..algebra.laurent import per_axis
from ..algebra.memory import EXACT_TERM_BYTES, check_budget, estimate_bytes
from ..algebra.operator import MultirateError, check_composable
from .inputs import (FLOAT_DTYPES, as_float_tensor, check_finite_tensor, check_float_dtype,
                     int_tuple, positive_ints, rounded_tensor)
from .polymatmul import inflate, polymatmul, spatial_axes

__all__ = ["KernelOperator", "block_diag", "vstack"]

#: rough bytes per exact coefficient (a sympy Rational in a polynomial's dict), for the
#: memory guard of :meth:`KernelOperator.to_algebra`


class KernelOperator:
    """``down_s ∘ K(z) ∘ up_u + b`` with ``K`` dense: ``coeffs[o, c, j]`` is the coefficient
    of ``z^(low + j)`` (ascending exponents per axis), ``stride`` ``s`` and ``upsample``
    ``u`` per axis (zero insertion: ``Y(z) = down_s(K(z) X(z^u)) + b``), ``bias`` of length
    ``C_out``.  Immutable: operations return new operators (the tensors are owned; do not
    modify them in place)."""

    __slots__ = ("coeffs", "low", "stride", "bias", "upsample")

    def __init__(self, coeffs: Any, low: int | Sequence[int] = 0,
                 stride: int | Sequence[int] = 1, bias: Any = None,
                 upsample: int | Sequence[int] = 1, *, dtype: torch.dtype | None = None):
        if dtype is not None:
            check_float_dtype(dtype)
        if not isinstance(coeffs, torch.Tensor):
            coeffs = as_float_tensor(coeffs, dtype or torch.float64)
        elif coeffs.is_complex():
            raise InvalidTypeError(f"complex weights not supported (got a {coeffs.dtype} coefficient "
                                   "tensor); KernelOperator holds real kernels")
        elif dtype is not None and coeffs.dtype != dtype:
            coeffs = coeffs.to(dtype)
        elif coeffs.dtype not in FLOAT_DTYPES:
            # exact widening: integers/booleans to float64, float16/bfloat16 to float32
            coeffs = coeffs.to(torch.float32 if coeffs.is_floating_point() else torch.float64)
        if coeffs.ndim not in (3, 4, 5):
            raise InvalidInputError(f"coefficients must have shape (C_out, C_in, *kernel) with 1-3 "
                                    f"spatial axes, got {tuple(coeffs.shape)}")
        if min(coeffs.shape) == 0:
            raise InvalidInputError(f"empty coefficient tensor of shape {tuple(coeffs.shape)}")
        ndim = coeffs.ndim - 2
        stride = positive_ints(stride, ndim, "stride")
        upsample = positive_ints(upsample, ndim, "upsample")
        check_finite_tensor(coeffs, "coeffs")
        if bias is None:
            bias = coeffs.new_zeros(coeffs.shape[0])
        else:
            bias = as_float_tensor(bias, coeffs.dtype, "bias") if not isinstance(bias, torch.Tensor) \
                or bias.is_complex() else bias.detach().to(coeffs)
            if bias.shape != (coeffs.shape[0],):
                raise InvalidInputError(f"bias must have shape ({coeffs.shape[0]},), got {tuple(bias.shape)}")
            check_finite_tensor(bias, "bias")
        for name, value in (("coeffs", coeffs.detach()), ("low", int_tuple(low, ndim, "low")),
                            ("stride", stride), ("bias", bias.detach()), ("upsample", upsample)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("KernelOperator is immutable")

    @classmethod
    def _trusted(cls, coeffs: torch.Tensor, low: tuple[int, ...], stride: tuple[int, ...],
                 bias: torch.Tensor, upsample: tuple[int, ...]) -> "KernelOperator":
        """An operator the package itself computed (e.g. a product of validated operators):
        shapes, dtypes and the per-axis tuples are right by construction, so only
        finiteness is checked, and cheaply — ``sum(coeffs)`` is finite when every
        coefficient is (a product can overflow); only a non-finite sum pays the full scan
        (which then names the entry, or passes when the sum itself overflowed)."""
        if not bool(torch.isfinite(coeffs.sum())):
            check_finite_tensor(coeffs, "coeffs")
        if not bool(torch.isfinite(bias.sum())):
            check_finite_tensor(bias, "bias")
        op = cls.__new__(cls)
        for name, value in (("coeffs", coeffs), ("low", low), ("stride", stride),
                            ("bias", bias), ("upsample", upsample)):
            object.__setattr__(op, name, value)
        return op

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def from_weight(cls, weight: Any, bias: Any = None, *, stride: int | Sequence[int] = 1,
                    padding: int | Sequence[int] | str = 0, dilation: int | Sequence[int] = 1,
                    groups: int = 1, transposed: bool = False,
                    dtype: torch.dtype = torch.float64) -> "KernelOperator":
        """The operator of ``F.conv{n}d(x, weight, bias, stride, padding, dilation, groups)``:
        ``down_s ∘ K`` with ``K_{o,c}(z) = sum_a w[o, c - g(o), a] z^(p - d*a)``, block
        diagonal over groups; with ``transposed=True`` the operator of
        ``F.conv_transpose{n}d(x, weight, bias, stride, padding, output_padding, groups,
        dilation)`` (weight ``(C_in, C_out/groups, *k)``): ``K ∘ up_s`` with
        ``K_{o,c}(z) = sum_a w[c, o - g(c), a] z^(d*a - p)``.  ``output_padding`` only
        lengthens torch's output window, it is not part of the operator.  The twin of
        :meth:`algebra.ConvOperator.from_weight`."""
        from ..algebra.validate import bool_arg
        transposed = bool_arg(transposed, "transposed")
        w = as_float_tensor(weight, check_float_dtype(dtype), "weight")
        if w.ndim not in (3, 4, 5):
            axes = "(C_in, C_out/groups, *kernel)" if transposed else "(C_out, C_in/groups, *kernel)"
            raise InvalidInputError(f"weight must have shape {axes}, got {tuple(w.shape)}")
        check_finite_tensor(w, "weight")
        ndim = w.ndim - 2
        stride = per_axis(stride, ndim, "stride")
        dilation = per_axis(dilation, ndim, "dilation")
        k = tuple(w.shape[2:])
        if isinstance(padding, str):
            if padding == "valid":
                padding = 0
            elif padding == "same" and all(s == 1 for s in stride):
                padding = same_padding(k, dilation)
            else:
                raise InvalidInputError(f"padding must be an int, a tuple, 'valid' or (stride 1) "
                                        f"'same', got {padding!r}")
        padding = per_axis(padding, ndim, "padding")
        if any(p < 0 for p in padding) or any(d <= 0 for d in dilation):
            raise InvalidInputError(f"need padding >= 0 and dilation >= 1, got {padding}, {dilation}")
        groups = int_arg(groups, "groups", minimum=1)
        if w.shape[0] % groups:
            raise InvalidInputError(f"groups={groups} must divide the weight's first axis ({w.shape[0]})")
        if transposed:  # w[c, o_local, a]: block g maps inputs g*ipg.. to outputs g*opg..
            ipg, opg = w.shape[0] // groups, w.shape[1]
            blocks = w.view(groups, ipg, opg, *k).transpose(1, 2)
        else:
            opg, ipg = w.shape[0] // groups, w.shape[1]
            blocks = w.view(groups, opg, ipg, *k)
        dense = w.new_zeros((opg * groups, ipg * groups, *k))
        diagonal = torch.arange(groups)  # block (g, g) of the (groups x groups) block matrix
        dense.view(groups, opg, groups, ipg, *k)[diagonal, :, diagonal] = blocks
        b = None
        if bias is not None:
            b = as_float_tensor(bias, dtype, "bias")
            check_finite_tensor(b, "bias")
        if transposed:  # exponents d*a - p ascend with a: no reversal
            return cls(inflate(dense, dilation), tuple(-p for p in padding), 1, b, stride)
        coeffs = inflate(dense.flip(spatial_axes(dense)), dilation)
        low = tuple(p - d * (n - 1) for p, d, n in zip(padding, dilation, k))
        return cls(coeffs, low, stride, b)

    @classmethod
    def identity(cls, channels: int, ndim: int = 2, *,
                 dtype: torch.dtype = torch.float64) -> "KernelOperator":
        """``K = I`` (a skip connection)."""
        if isinstance(channels, (bool, np.bool_)) or not isinstance(channels, (int, np.integer)):
            raise InvalidTypeError(f"channels must be an int, got {channels!r}")
        if channels < 1:
            raise InvalidInputError(f"channels must be >= 1, got {channels}")
        if isinstance(ndim, (bool, np.bool_)) or not isinstance(ndim, (int, np.integer)) \
                or ndim not in (1, 2, 3):
            raise InvalidInputError(f"ndim must be 1, 2 or 3 (spatial axes), got {ndim!r}")
        channels, ndim = int(channels), int(ndim)
        eye = torch.eye(channels, dtype=check_float_dtype(dtype)).reshape(channels, channels, *(1,) * ndim)
        return cls(eye, 0)

    @classmethod
    def from_algebra(cls, op: ConvOperator, *,
                     dtype: torch.dtype = torch.float64) -> "KernelOperator":
        """The exact operator's coefficients, each rounded once (correctly) to ``dtype``."""
        if not isinstance(op, ConvOperator):
            raise InvalidTypeError(f"expected an algebra ConvOperator, got {type(op).__name__}")
        check_float_dtype(dtype)
        if op.free_symbols:
            raise InvalidInputError(f"the operator has symbolic weights {sorted(map(str, op.free_symbols))}; "
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
        return cls(rounded_tensor(array, dtype, "coefficient"), low, op.stride,
                   rounded_tensor(bias, dtype, "bias"), op.upsample)

    def to_algebra(self) -> ConvOperator:
        """The exact operator over ``QQ``: every float becomes its exact rational value."""
        nonzeros = int(torch.count_nonzero(self.coeffs)) + self.out_channels
        check_budget(nonzeros * EXACT_TERM_BYTES,
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
        return ConvOperator(ring, matrix, stride=self.stride, bias=bias, upsample=self.upsample)

    def to_weight(self) -> TorchLayout:
        """The PyTorch layout of this operator (the twin of
        :meth:`algebra.ConvOperator.to_weight`): ``weight = flip(coeffs)`` with left padding
        ``p = high`` (zeros added so that the taps reach exponent 0 when the kernel only
        looks ahead, as torch needs ``p >= 0``), dilation 1, one group; ``bias`` is None when
        the operator has none.  ``F.conv{n}d(x, **layout.kwargs())`` with that weight is
        ``y[i] = b + sum_a w[a] x[s i + a - p]``.  An up-sampling operator ``K ∘ up_u``
        (stride 1) gives the transposed layout (``transposed=True``, ``stride = u``):
        ``weight[c, o] = coeffs[o, c]`` with ``p = max(-low, 0)``, so that
        ``F.conv_transpose{n}d(x, **layout.kwargs())`` is ``y[j] = b + sum_{u i + a - p = j}
        w[c, o, a] x[i]``; both a stride and an up-sampling are not one torch layer."""
        if self.upsampled:
            return self._transposed_weight()
        coeffs = self.coeffs
        if any(h < 0 for h in self.high):
            pad = [x for h in reversed(self.high) for x in (0, max(-h, 0))]
            coeffs = F.pad(coeffs, pad)
        padding = tuple(max(h, 0) for h in self.high)
        return TorchLayout(coeffs.flip(spatial_axes(coeffs)).contiguous(),
                           self.bias.clone() if self.has_bias else None, self.stride, padding,
                           (1,) * self.ndim, 1, False)

    def _transposed_weight(self) -> TorchLayout:
        """The ``conv_transpose`` layout of ``K ∘ up_u`` (see :meth:`to_weight`)."""
        if any(s != 1 for s in self.stride):
            raise InvalidInputError(f"stride {self.stride} with up-sampling {self.upsample} is not "
                                    "one PyTorch layer")
        coeffs = self.coeffs
        if any(l > 0 for l in self.low):  # taps start after exponent 0: zeros in front
            coeffs = F.pad(coeffs, [x for l in reversed(self.low) for x in (max(l, 0), 0)])
        padding = tuple(max(-l, 0) for l in self.low)
        return TorchLayout(coeffs.transpose(0, 1).contiguous(),
                           self.bias.clone() if self.has_bias else None, self.upsample, padding,
                           (1,) * self.ndim, 1, True)

    def _like(self, coeffs: torch.Tensor, low: Sequence[int] | None = None,
              bias: Any = None) -> "KernelOperator":
        """A new operator with this one's stride and up-sampling."""
        return KernelOperator(coeffs, self.low if low is None else low, self.stride, bias,
                              self.upsample)

    def with_bias(self, bias: Any) -> "KernelOperator":
        return self._like(self.coeffs, bias=bias)

    def linear_part(self) -> "KernelOperator":
        """The same operator without bias."""
        return self._like(self.coeffs)

    def to(self, dtype: torch.dtype) -> "KernelOperator":
        """The same operator with coefficients of another floating dtype."""
        check_float_dtype(dtype)
        return self._like(self.coeffs.to(dtype), bias=self.bias.to(dtype))

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
    def upsampled(self) -> bool:
        """Whether some axis up-samples (``u > 1``: a transposed convolution is in it)."""
        return any(u != 1 for u in self.upsample)

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

    def output_shape(self, sizes: Sequence[int], padding: str = "zeros") -> tuple[int, ...]:
        """Output window for an input of spatial size ``n``.  ``'circular'``: ``n / s`` (each
        stride must divide its size).  ``'zeros'``: torch's window for :meth:`to_weight`,
        ``i = 0 .. floor((n - 1 + p + low) / s)`` with ``p = max(high, 0)`` (for a chain of
        'valid' layers this is the chain's own output).  With up-sampling ``u`` the input
        is first zero-inserted to size ``(n - 1) u + 1`` (for a transposed convolution with
        ``0 <= p <= d(k - 1)`` this is torch's window with ``output_padding=0``); circular
        padding of an up-sampling operator is refused, as on the exact side."""
        n = per_axis(sizes, self.ndim, "sizes")
        if self.upsampled:
            if padding == "circular":
                raise InvalidInputError("periodic application of an up-sampling operator is not "
                                        "supported")
            n = tuple((m - 1) * u + 1 for m, u in zip(n, self.upsample))
        if padding == "circular":
            if any(m % s for m, s in zip(n, self.stride)):
                raise InvalidInputError(f"circular padding needs each stride {self.stride} to divide "
                                        f"the size {n}")
            return tuple(m // s for m, s in zip(n, self.stride))
        if padding != "zeros":
            raise InvalidInputError(f"padding must be 'zeros' or 'circular', got {padding!r}")
        out = tuple((m - 1 + max(h, 0) + l) // s + 1
                    for m, h, l, s in zip(n, self.high, self.low, self.stride))
        if any(o <= 0 for o in out):
            raise InvalidInputError(f"input size {n} is smaller than the kernel's reach "
                                    f"{self.kernel_size}: no output position")
        return out

    # -- algebra --------------------------------------------------------------------------
    def compose(self, inner: "KernelOperator", *, method: str = "auto",
                budget: int | None = None) -> "KernelOperator":
        """``self ∘ inner`` (``inner`` first), by the noble identities
        ``K(z) down_s = down_s K(z^s)`` and ``up_u K(z) = K(z^u) up_u``:
        ``K = K_self(z^{s_inner}) K_inner(z^{u_self})``, ``s = s_inner s_self``,
        ``u = u_inner u_self``, ``b = K_self(1) b_inner + b_self``.  Refused (as by
        :func:`algebra.operator.check_composable`) when an up-sampling follows a stride with
        ``gcd(u, s) != 1`` or a bias precedes an up-sampling; refuses before allocating when
        the composed kernel exceeds the memory budget."""
        if not isinstance(inner, KernelOperator):
            raise InvalidTypeError(f"expected a KernelOperator, got {type(inner).__name__}")
        if self.ndim != inner.ndim:
            raise InvalidInputError(f"cannot compose a {self.ndim}-D operator with a {inner.ndim}-D one")
        check_composable(self, inner)
        coeffs = _noble_product(self.coeffs, inner.coeffs, inner.stride, self.upsample,
                                method, budget)
        low = tuple(lo * s + li * u for lo, s, li, u in
                    zip(self.low, inner.stride, inner.low, self.upsample))
        stride = tuple(a * b for a, b in zip(self.stride, inner.stride))
        upsample = tuple(a * b for a, b in zip(self.upsample, inner.upsample))
        dtype = coeffs.dtype
        bias = self.at_one().to(dtype) @ inner.bias.to(dtype) + self.bias.to(dtype)
        return KernelOperator._trusted(coeffs, low, stride, bias, upsample)

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
            raise InvalidInputError(f"cannot add a {self.ndim}-D {self.shape[0]}x{self.shape[1]} operator "
                                    f"and a {other.ndim}-D {other.shape[0]}x{other.shape[1]} one")
        if self.stride != other.stride or self.upsample != other.upsample:
            raise MultirateError(f"cannot add operators with strides {self.stride} and "
                                    f"{other.stride} (up-sampling {self.upsample}, "
                                    f"{other.upsample}): the sum is not one strided convolution")
        low = tuple(map(min, self.low, other.low))
        size = tuple(max(a, b) - l + 1 for a, b, l in zip(self.high, other.high, low))
        dtype = torch.promote_types(self.dtype, other.dtype)
        check_budget(3 * estimate_bytes((*self.shape, *size), dtype),
                     f"adding two {self.out_channels}x{self.in_channels} kernels on the common "
                     f"support {'x'.join(map(str, size))}")
        coeffs = self._embedded(low, size).to(dtype) + other._embedded(low, size).to(dtype)
        return self._like(coeffs, low, self.bias.to(dtype) + other.bias.to(dtype))

    def __neg__(self) -> "KernelOperator":
        return self._like(-self.coeffs, bias=-self.bias)

    def __sub__(self, other: Any) -> "KernelOperator":
        if not isinstance(other, KernelOperator):
            return NotImplemented
        return self + (-other)

    def __mul__(self, scalar: Any) -> "KernelOperator":
        """``c·A``: kernel and bias scaled by the real number ``c``."""
        if isinstance(scalar, torch.Tensor) and scalar.numel() == 1:
            scalar = scalar.item()
        if isinstance(scalar, (complex, np.complexfloating)):
            raise InvalidTypeError(f"cannot scale by the complex number {scalar}: complex weights "
                                   "not supported")
        if not isinstance(scalar, (numbers.Real, np.integer, np.floating)):
            return NotImplemented
        c = float(scalar)
        if not math.isfinite(c):
            raise InvalidInputError(f"cannot scale an operator by the non-finite number {c}")
        return self._like(self.coeffs * c, bias=self.bias * c)

    __rmul__ = __mul__

    def dilate(self, factors: int | Sequence[int]) -> "KernelOperator":
        """``K(z^d)`` with the same stride and up-sampling (an à-trous convolution)."""
        d = positive_ints(factors, self.ndim, "dilation")
        size = tuple((k - 1) * x + 1 for k, x in zip(self.kernel_size, d))
        check_budget(estimate_bytes((*self.shape, *size), self.dtype),
                     f"a {self.out_channels}x{self.in_channels} kernel dilated to {size}")
        return self._like(inflate(self.coeffs, d), tuple(l * x for l, x in zip(self.low, d)),
                          self.bias)

    def adjoint(self) -> "KernelOperator":
        """``K(1/z)^T`` with stride and up-sampling swapped (the adjoint of
        ``down_s K up_u`` is ``down_u K(1/z)^T up_s``): channels transposed, every axis
        reversed, ``low -> -high``.  The adjoint of the linear part (a bias has none)."""
        coeffs = self.coeffs.transpose(0, 1).flip(spatial_axes(self.coeffs)).contiguous()
        return KernelOperator(coeffs, tuple(-h for h in self.high), self.upsample, None,
                              self.stride)

    def __getitem__(self, rows: int | slice | Sequence[int]) -> "KernelOperator":
        """A channel split: the operator onto the selected output channels."""
        idx = _channel_index(rows, self.out_channels, "output channel")
        return self._like(self.coeffs[idx], bias=self.bias[idx])

    def columns(self, cols: slice | Sequence[int]) -> "KernelOperator":
        """The operator restricted to the selected input channels (bias kept)."""
        idx = _channel_index(cols, self.in_channels, "input channel")
        return self._like(self.coeffs[:, idx], bias=self.bias)

    # -- evaluation and comparison --------------------------------------------------------
    def at_one(self) -> torch.Tensor:
        """``K(1)`` (``C_out x C_in``): the sum of the taps, what a constant image is
        multiplied by."""
        return self.coeffs.sum(dim=spatial_axes(self.coeffs))

    def trimmed(self) -> "KernelOperator":
        """The same operator with all-zero border slices removed (the exact support box)."""
        nz = self.coeffs != 0
        if not bool(nz.any()):
            return self._like(self.coeffs.new_zeros((*self.shape, *(1,) * self.ndim)),
                              (0,) * self.ndim, self.bias)
        slices, low = [slice(None), slice(None)], []
        for axis in range(self.ndim):
            others = tuple(a for a in range(nz.ndim) if a != axis + 2)
            hit = torch.nonzero(nz.any(dim=others)).flatten()
            first, last = int(hit[0]), int(hit[-1])
            slices.append(slice(first, last + 1))
            low.append(self.low[axis] + first)
        return self._like(self.coeffs[tuple(slices)].contiguous(), low, self.bias)

    def mod_circular(self, sizes: int | Sequence[int]) -> "KernelOperator":
        """``K mod (z^n - 1)`` on every axis whose kernel is longer than ``n`` (taps folded
        onto exponents ``0 .. n-1``): the same operator on ``n``-periodic signals."""
        n = positive_ints(sizes, self.ndim, "sizes")
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
        return self._like(coeffs, low, self.bias)

    def allclose(self, other: "KernelOperator", rtol: float = 1e-5, atol: float = 1e-8) -> bool:
        """Equal strides and up-sampling and, on the union of the supports, close kernels
        and biases."""
        if not isinstance(other, KernelOperator):
            raise InvalidTypeError(f"expected a KernelOperator, got {type(other).__name__}")
        if self.shape != other.shape or self.stride != other.stride or self.ndim != other.ndim \
                or self.upsample != other.upsample:
            return False
        low = tuple(map(min, self.low, other.low))
        size = tuple(max(a, b) - l + 1 for a, b, l in zip(self.high, other.high, low))
        dtype = torch.promote_types(self.dtype, other.dtype)
        return bool(torch.allclose(self._embedded(low, size).to(dtype),
                                   other._embedded(low, size).to(dtype), rtol, atol)
                    and torch.allclose(self.bias.to(dtype), other.bias.to(dtype), rtol, atol))

    def __repr__(self) -> str:
        extra = f", stride={self.stride}" if any(s != 1 for s in self.stride) else ""
        extra += f", upsample={self.upsample}" if self.upsampled else ""
        extra += ", bias" if self.has_bias else ""
        return (f"KernelOperator({self.out_channels}x{self.in_channels}, exponents "
                f"{self.low}..{self.high}{extra}, {str(self.dtype).removeprefix('torch.')})")


def _noble_product(outer: torch.Tensor, inner: torch.Tensor, stride: Sequence[int],
                   upsample: Sequence[int], method: str, budget: int | None) -> torch.Tensor:
    """``outer(z^s) inner(z^u)`` (``s`` the inner stride, ``u`` the outer up-sampling).
    :func:`polymatmul` dilates its first factor, so with ``s = 1`` the product is taken
    transposed, ``(inner(z^u)^T outer(z)^T)^T``, and only with both ``s`` and ``u`` above
    1 is ``inner(z^u)`` inflated (after a memory check)."""
    if all(u == 1 for u in upsample):
        return polymatmul(outer, inner, stride, method, budget)
    if all(s == 1 for s in stride):
        return polymatmul(inner.transpose(0, 1), outer.transpose(0, 1), upsample, method,
                          budget).transpose(0, 1).contiguous()
    size = tuple((k - 1) * u + 1 for k, u in zip(inner.shape[2:], upsample))
    check_budget(estimate_bytes((*inner.shape[:2], *size), inner.dtype),
                 f"a {inner.shape[0]}x{inner.shape[1]} kernel up-sampled to {size}", budget)
    return polymatmul(outer, inflate(inner, upsample), stride, method, budget)


def _channel_index(rows: Any, count: int, what: str) -> torch.Tensor:
    """:func:`algebra.channels.channel_index` as a long tensor (for tensor indexing)."""
    return torch.tensor(channel_index(rows, count, what), dtype=torch.long)


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
        raise InvalidInputError(f"{name} needs at least one operator")
    for op in ops:
        if not isinstance(op, KernelOperator):
            raise InvalidTypeError(f"{name} takes KernelOperators, got {type(op).__name__}")
    return ops


def block_diag(operators: Sequence[KernelOperator]) -> KernelOperator:
    """``diag(A_1, ..., A_g)`` — a grouped convolution (equal strides and up-sampling)."""
    ops = _operator_list(operators, "block_diag")
    if len({(op.stride, op.upsample, op.ndim) for op in ops}) != 1:
        raise InvalidInputError("block_diag needs operators with equal strides, up-sampling and "
                                "dimensions")
    low, size, dtype = _frame(ops)
    c_out, c_in = sum(op.out_channels for op in ops), sum(op.in_channels for op in ops)
    check_budget(estimate_bytes((c_out, c_in, *size), dtype),
                 f"a block-diagonal {c_out}x{c_in} kernel of size {'x'.join(map(str, size))}")
    coeffs = torch.zeros((c_out, c_in, *size), dtype=dtype)
    o = c = 0
    for op in ops:
        coeffs[o:o + op.out_channels, c:c + op.in_channels] = op._embedded(low, size)
        o, c = o + op.out_channels, c + op.in_channels
    return ops[0]._like(coeffs, low, torch.cat([op.bias.to(dtype) for op in ops]))


def vstack(operators: Sequence[KernelOperator]) -> KernelOperator:
    """Channel concatenation ``[A_1; ...; A_k]`` of operators on the same input."""
    ops = _operator_list(operators, "vstack")
    if len({(op.ndim, op.in_channels) for op in ops}) != 1:
        raise InvalidInputError("vstack needs operators with equal dimensions and inputs")
    if len({(op.stride, op.upsample) for op in ops}) != 1:
        raise MultirateError("vstack needs operators with equal strides and up-sampling")
    low, size, dtype = _frame(ops)
    c_out = sum(op.out_channels for op in ops)
    check_budget(2 * estimate_bytes((c_out, ops[0].in_channels, *size), dtype),
                 f"a stacked {c_out}x{ops[0].in_channels} kernel of size {'x'.join(map(str, size))}")
    coeffs = torch.cat([op._embedded(low, size).to(dtype) for op in ops])
    return ops[0]._like(coeffs, low, torch.cat([op.bias.to(dtype) for op in ops]))
