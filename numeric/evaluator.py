"""Running a collapsed convolution by the cheapest method: direct, FFT, one GEMM, or the
original layers.

All methods compute the same window (:meth:`KernelOperator.output_shape`):

* ``padding='zeros'``:   ``y[i] = b + sum_e c_e x[s i - e]`` with ``x = 0`` outside the
  input, ``0 <= i < out`` — exactly ``F.conv{n}d`` with :meth:`KernelOperator.to_weight`;
* ``padding='circular'``: ``y[i] = b + sum_e c_e x[(s i - e) mod n]``, ``out = n / s``.

An up-sampling operator ``down_s K up_u`` is the stride-only operator ``down_s K`` on the
zero-inserted input ``up_u x`` (:func:`zero_insert`, size ``(n - 1) u + 1``); with stride 1,
:func:`conv_window` runs it as one ``F.conv_transpose{n}d`` instead (the same sum, without
multiplying the inserted zeros).  Circular padding of an up-sampling operator is refused.

``OperatorEvaluator`` picks the method from :func:`numeric.cost.estimate_costs` unless told.
The original layers agree with the collapsed operator for circular padding (strides dividing
the sizes) and for chains of 'valid' layers; with zero 'same' padding the layers crop at
every step and agree only on the interior (``docs/conventions.md``, "regions").
"""
from __future__ import annotations

from math import prod
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..algebra.errors import InvalidInputError, InvalidTypeError
from ..algebra.validate import instance_arg, shape_arg
from .affine import affine_product, extract_affine
from .cost import METHODS, CostReport, Machine, estimate_costs, fft_grid
from .inputs import as_real_tensor
from .functional import conv_nd, conv_transpose_nd
from .kernels import KernelOperator
from .spectrum import fold_periodic

__all__ = ["conv_window", "OperatorEvaluator", "DirectConv", "conv_direct", "conv_fft", "dense_matrix",
           "zero_insert"]


def zero_insert(x: torch.Tensor, upsample: Sequence[int]) -> torch.Tensor:
    """``up_u x``: ``y[u i] = x[i]`` and zeros between, size ``(n - 1) u + 1`` per spatial
    axis (the last ``len(upsample)`` axes of ``x``)."""
    if all(u == 1 for u in upsample):
        return x
    lead = x.ndim - len(upsample)
    sizes = tuple((n - 1) * u + 1 for n, u in zip(x.shape[lead:], upsample))
    y = x.new_zeros((*x.shape[:lead], *sizes))
    y[(*(slice(None),) * lead, *(slice(None, None, u) for u in upsample))] = x
    return y


def _strided(op: KernelOperator) -> KernelOperator:
    """``down_s K + b`` without the up-sampling (it acts on the zero-inserted input)."""
    return KernelOperator(op.coeffs, op.low, op.stride, op.bias) if op.upsampled else op


def _upsampled_sizes(op: KernelOperator, sizes: Sequence[int]) -> tuple[int, ...]:
    return tuple((n - 1) * u + 1 for n, u in zip(sizes, op.upsample))



def _as_input(op: KernelOperator, x: object, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """``x`` as a real floating tensor of shape ``(batch, C_in, *n)`` (numpy accepted;
    integers become the operator's dtype), else a ValueError naming the expected shape."""
    if not isinstance(op, KernelOperator):
        raise InvalidTypeError(f"expected a KernelOperator, got {type(op).__name__}")
    x = as_real_tensor(x, "the input")
    if not x.is_floating_point() or x.dtype not in (torch.float32, torch.float64):
        x = x.to(op.dtype)
    if x.ndim != op.ndim + 2 or x.shape[1] != op.in_channels \
            or (sizes is not None and tuple(x.shape[2:]) != tuple(sizes)):
        spatial = ", ".join(map(str, sizes)) if sizes is not None else ", ".join(["n"] * op.ndim)
        expected = f"(batch, {op.in_channels}, {spatial})"  # built only on the error path
        raise InvalidInputError(f"input of shape {tuple(x.shape)}: this {op.ndim}-D operator takes "
                                f"{op.in_channels} channels, expected {expected}"
                                + (" (add the batch axis with x.unsqueeze(0))"
                            if x.ndim == op.ndim + 1 else ""))
    if any(m == 0 for m in x.shape[2:]):
        raise InvalidInputError(f"input of shape {tuple(x.shape)} has an empty spatial axis")
    return x


def _circular_pad(x: torch.Tensor, before: Sequence[int], after: Sequence[int]) -> torch.Tensor:
    """``xpad[m] = x[(m - before) mod n]`` for ``m < n + before + after`` on every spatial
    axis (any widths, even wider than ``n``; ``F.pad(mode='circular')`` when it applies)."""
    sizes = x.shape[x.ndim - len(before):]
    if all(0 <= b <= n and 0 <= a <= n for b, a, n in zip(before, after, sizes)):
        return F.pad(x, [v for b, a in zip(reversed(before), reversed(after)) for v in (b, a)],
                     mode="circular")
    for axis, (b, a) in enumerate(zip(before, after)):
        dim = x.ndim - len(before) + axis
        n = x.shape[dim]
        index = torch.arange(-b, n + a, device=x.device) % n
        x = x.index_select(dim, index)
    return x


class DirectConv(nn.Module):
    """``op`` as one ``conv{n}d`` with its torch weight kept as buffers.  Circular padding:
    the kernel folded modulo ``n`` and the input wrapped by ``p = high`` before and
    ``k - 1 - p`` after, so ``out = n / s``.  An up-sampling operator zero-inserts the
    input first (:func:`zero_insert`)."""

    def __init__(self, op: KernelOperator, sizes: Sequence[int], padding: str = "zeros"):
        super().__init__()
        if not isinstance(op, KernelOperator):
            raise InvalidTypeError(f"expected a KernelOperator, got {type(op).__name__}")
        if not isinstance(padding, str) or padding not in ("zeros", "circular"):
            raise InvalidInputError(f"padding must be 'zeros' or 'circular', got {padding!r}")
        sizes = shape_arg(sizes, "sizes", length=op.ndim, example="(28, 28)")
        op.output_shape(sizes, padding)  # checks the window (and circular divisibility)
        w = (op.mod_circular(sizes) if padding == "circular" else _strided(op)).to_weight()
        self.register_buffer("weight", w.weight)
        self.register_buffer("bias", w.bias)
        self.stride, self.padding, self.circular = w.stride, w.padding, padding == "circular"
        self.after = tuple(k - 1 - p for k, p in zip(w.weight.shape[2:], w.padding))
        self._conv = conv_nd(op.ndim)
        self.op, self.sizes = op, sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # circular: the folded kernel is only right for the size it was built for
        x = _as_input(self.op, x, self.sizes if self.circular else None)
        x = zero_insert(x, self.op.upsample)
        weight = self.weight.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.circular:
            return self._conv(_circular_pad(x, self.padding, self.after), weight, bias,
                              stride=self.stride)
        return self._conv(x, weight, bias, stride=self.stride, padding=self.padding)


def conv_direct(op: KernelOperator, x: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """``op`` applied to ``x`` by one ``conv{n}d`` (see :class:`DirectConv`)."""
    x = _as_input(op, x)
    return DirectConv(op, tuple(x.shape[2:]), padding)(x)


def conv_window(op: KernelOperator, x: torch.Tensor, out_size: Sequence[int]) -> torch.Tensor:
    """``y[i] = b + sum_e K[e] x[s i - e]`` for ``0 <= i < out_size`` with ``x`` zero outside
    its window: the zero-extended semantics of :func:`algebra.collapse`, on any output window
    (one padded ``conv{n}d``; ``to_weight`` gives ``y[i] = sum_a w[a] x[s i + a - p]``).
    With up-sampling ``u``, ``x`` is replaced by ``up_u x`` (:func:`zero_insert`); with
    stride 1 that is one ``conv_transpose{n}d`` (:func:`_transposed_window`)."""
    x = _as_input(op, x)
    out_size = shape_arg(out_size, "out_size", example="(28, 28)")
    if len(out_size) != op.ndim or min(out_size) < 1:
        raise InvalidInputError(f"out_size must be {op.ndim} positive sizes, got {out_size}")
    if op.upsampled:
        if all(s == 1 for s in op.stride):
            return _transposed_window(op, x, out_size)
        op, x = _strided(op), zero_insert(x, op.upsample)
    w = op.to_weight()
    pads: list[int] = []
    for n, s, L, p, k in reversed(list(zip(x.shape[2:], w.stride, out_size, w.padding,
                                           w.weight.shape[2:]))):
        pads += [p, max(0, s * (L - 1) - p + k - n)]
    bias = None if w.bias is None else w.bias.to(x.dtype)
    y = conv_nd(op.ndim)(F.pad(x, pads), w.weight.to(x.dtype), bias, stride=w.stride)
    return y[(slice(None), slice(None), *(slice(0, L) for L in out_size))]


def _transposed_window(op: KernelOperator, x: torch.Tensor, out_size: Sequence[int]
                       ) -> torch.Tensor:
    """``K ∘ up_u + b`` on ``0 <= j < out_size`` by ``F.conv_transpose{n}d`` with
    :meth:`KernelOperator.to_weight`: ``y[j] = b + sum_{u i + a - p = j} w[c, o, a] x[i]``
    on torch's window of ``M = (n - 1) u - 2p + k`` positions, lengthened (zeros appended
    to ``x``, ``ceil((L - M) / u)`` of them) when ``out_size`` asks for more, then cut."""
    w = op.to_weight()
    pads: list[int] = []
    for n, u, p, k, L in reversed(list(zip(x.shape[2:], w.stride, w.padding, w.weight.shape[2:],
                                           out_size))):
        m = (n - 1) * u - 2 * p + k
        pads += [0, max(0, -(-(L - m) // u))]
    bias = None if w.bias is None else w.bias.to(x.dtype)
    y = conv_transpose_nd(op.ndim)(F.pad(x, pads) if any(pads) else x, w.weight.to(x.dtype), bias,
                                   stride=w.stride, padding=w.padding)
    return y[(slice(None), slice(None), *(slice(0, L) for L in out_size))]


def _kernel_spectrum(op: KernelOperator, sizes: Sequence[int], padding: str) -> torch.Tensor:
    """One-sided spectrum ``(F, C_out, C_in)`` on :func:`numeric.cost.fft_grid`: of the kernel
    folded modulo ``n`` (circular) or of the ascending coefficient array (zero padding)."""
    grid = fft_grid(op, sizes, padding)
    dims = tuple(range(2, 2 + op.ndim))
    base = fold_periodic(op, sizes) if padding == "circular" else op.coeffs
    return torch.fft.rfftn(base, s=grid, dim=dims).flatten(2).permute(2, 0, 1).contiguous()


def _fft_apply(op: KernelOperator, spectrum: torch.Tensor, x: torch.Tensor,
               padding: str) -> torch.Tensor:
    """``y`` from the precomputed spectrum.  Zero padding: ``f = u * x`` (linear, ``u`` the
    ascending coefficients), ``y[i] = f[s i - low]`` (zero outside ``f``)."""
    sizes = tuple(x.shape[2:])
    grid = fft_grid(op, sizes, padding)
    dims = tuple(range(2, x.ndim))
    xh = torch.fft.rfftn(x, s=grid, dim=dims)
    spec_shape = xh.shape[2:]
    spectrum = spectrum.to(xh.dtype)
    rhs = xh.flatten(2).permute(2, 1, 0).contiguous()  # (F, C_in, B): bmm needs contiguous
    yh = torch.bmm(spectrum, rhs).permute(2, 1, 0).reshape(x.shape[0], -1, *spec_shape)
    f = torch.fft.irfftn(yh, s=grid, dim=dims)
    out = op.output_shape(sizes, padding)
    if padding == "circular":
        y = f[(..., *(slice(None, None, s) for s in op.stride))]
    else:
        left = [max(0, l) for l in op.low]
        right = [max(0, s * (o - 1) - l - (g - 1)) for s, o, l, g in zip(op.stride, out, op.low, grid)]
        if any(left) or any(right):
            f = F.pad(f, [v for pair in zip(reversed(left), reversed(right)) for v in pair])
        y = f[(..., *(slice(lf - l, lf - l + s * (o - 1) + 1, s)
                      for lf, l, s, o in zip(left, op.low, op.stride, out)))]
    return y + op.bias.to(y.dtype).reshape(-1, *(1,) * op.ndim)


def conv_fft(op: KernelOperator, x: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """``op`` applied through real FFTs (one-off; :class:`OperatorEvaluator` keeps the kernel
    spectrum)."""
    if padding not in ("zeros", "circular"):
        raise InvalidInputError(f"padding must be 'zeros' or 'circular', got {padding!r}")
    x = _as_input(op, x)
    if op.upsampled:
        op.output_shape(tuple(x.shape[2:]), padding)  # refuses circular up-sampling
        op, x = _strided(op), zero_insert(x, op.upsample)
    return _fft_apply(op, _kernel_spectrum(op.to(x.dtype), tuple(x.shape[2:]), padding), x, padding)


def dense_matrix(op: KernelOperator, sizes: Sequence[int], padding: str = "zeros", *,
                 budget: int | None = None) -> torch.Tensor:
    """The matrix ``W`` of the linear part on inputs of spatial size ``n``:
    ``y.flatten() = W x.flatten() + b``, shape ``(C_out prod(out), C_in prod(n))``, found by
    :func:`numeric.affine.extract_affine` on :class:`DirectConv` (in the operator's dtype;
    the memory guard refuses before ``W`` is allocated)."""
    instance_arg(op, KernelOperator, "op", "a KernelOperator")
    sizes = shape_arg(sizes, "sizes", length=op.ndim, example="(28, 28)")
    module = DirectConv(op.linear_part(), sizes, padding).eval()
    return extract_affine(module, (op.in_channels, *sizes), dtype=op.dtype, budget=budget).W


def _check_layers(op: KernelOperator, layers: Sequence[KernelOperator], sizes: Sequence[int],
                  padding: str) -> None:
    """The layers must map the operator's input to its output: channels, total stride and
    output window."""
    n = tuple(sizes)
    for layer in layers:
        n = layer.output_shape(n, padding)
    stride = tuple(prod(col) for col in zip(*(layer.stride for layer in layers)))
    if (layers[0].in_channels, layers[-1].out_channels) != (op.in_channels, op.out_channels) \
            or stride != op.stride or n != op.output_shape(sizes, padding):
        raise InvalidInputError(f"the layers map {layers[0].in_channels} channels to "
                                f"{layers[-1].out_channels} with stride {stride} and output {n}; the "
                                f"operator maps {op.in_channels} to {op.out_channels} with stride "
                                f"{op.stride} and output {op.output_shape(sizes, padding)}")


class OperatorEvaluator(nn.Module):
    """Evaluates ``op`` on inputs of one size ``(batch, C_in, *n)`` by ``method`` —
    ``'direct'``, ``'fft'``, ``'gemm'`` or ``'layers'`` (needs ``layers``) — or, by default,
    the cheapest by the cost model (:attr:`report`).  Built in the operator's dtype; the batch
    may vary, the spatial size may not.  An up-sampling operator is evaluated (and costed) as
    its stride-only operator on the zero-inserted input (:func:`zero_insert`); ``layers``
    are then refused."""

    def __init__(self, op: KernelOperator, input_size: Sequence[int], *, padding: str = "zeros",
                 method: str | None = None, layers: Sequence[KernelOperator] | None = None,
                 budget: int | None = None, machine: Machine | None = None):
        super().__init__()
        if not isinstance(op, KernelOperator):
            raise InvalidTypeError(f"expected a KernelOperator, got {type(op).__name__}")
        self.source, self.upsample = op, op.upsample
        if op.upsampled:
            if layers:
                raise InvalidInputError("layers are not supported for an up-sampling operator")
            input_size = shape_arg(input_size, "input_size", length=op.ndim + 2,
                                   example="(1, 3, 28, 28)")
            op.output_shape(input_size[2:], padding)  # refuses circular up-sampling
            input_size = (*input_size[:2], *_upsampled_sizes(op, input_size[2:]))
            op = _strided(op)
        self.op = op
        self.padding = padding
        self.report: CostReport = estimate_costs(op, input_size, padding=padding, layers=layers,
                                                  budget=budget, machine=machine)
        self.sizes = tuple(int(v) for v in input_size)[2:]
        if method is not None and method not in METHODS:
            raise InvalidInputError(f"method must be one of {METHODS}, got {method!r}")
        if method == "layers" and not layers:
            raise InvalidInputError("method='layers' needs the original layers (layers=[...])")
        self.method = method or self.report.chosen
        self.layers = tuple(layers or ())
        self.output_shape = op.output_shape(self.sizes, padding)
        if self.layers:
            _check_layers(op, self.layers, self.sizes, padding)
        if self.method == "direct":
            self.convs = nn.Sequential(DirectConv(op, self.sizes, padding))
        elif self.method == "layers":
            self.convs, n = nn.Sequential(), self.sizes
            for layer in self.layers:
                self.convs.append(DirectConv(layer, n, padding))
                n = layer.output_shape(n, padding)
        elif self.method == "fft":
            self.register_buffer("spectrum", _kernel_spectrum(op, self.sizes, padding))
        elif self.method == "gemm":
            self.register_buffer("matrix", dense_matrix(op, self.sizes, padding, budget=budget))
            self.register_buffer("bias", op.bias.repeat_interleave(prod(self.output_shape)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.source.upsampled:
            sizes = tuple((n - 1) // u + 1 for n, u in zip(self.sizes, self.upsample))
            try:
                x = zero_insert(_as_input(self.source, x, sizes), self.upsample)
            except InvalidInputError:
                raise InvalidInputError(f"this evaluator was built for inputs (batch, "
                                        f"{self.op.in_channels}, {', '.join(map(str, sizes))}), "
                                        f"got {tuple(getattr(x, 'shape', ()))}") from None
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != (self.op.in_channels, *self.sizes):
            try:
                x = _as_input(self.op, x, self.sizes)
            except InvalidInputError:
                raise InvalidInputError(f"this evaluator was built for inputs (batch, "
                                        f"{self.op.in_channels}, {', '.join(map(str, self.sizes))}), "
                                        f"got {tuple(x.shape)}") from None
        elif x.is_complex() or not x.is_floating_point():
            x = _as_input(self.op, x, self.sizes)
        if self.method == "fft":
            return _fft_apply(self.op, self.spectrum, x, self.padding)
        if self.method == "gemm":
            y = affine_product(x.flatten(1), self.matrix.to(x.dtype), self.bias.to(x.dtype))
            return y.reshape(x.shape[0], self.op.out_channels, *self.output_shape)
        return self.convs(x)

    def extra_repr(self) -> str:
        sizes = tuple((n - 1) // u + 1 for n, u in zip(self.sizes, self.upsample))
        return (f"{self.source!r}, input (*, {self.op.in_channels}, {sizes}), "
                f"padding={self.padding!r}, method={self.method!r}")
