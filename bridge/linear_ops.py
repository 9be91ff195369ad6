"""ATen ops as layers of a linear network: the types, and the layers that carry weights.

A :class:`LinearOp` is one node of the traced graph written as a layer of
:class:`algebra.Network` (``kind`` and its parameters as float64 tensors), acting on
per-sample values ``(C, *n)`` or ``(N,)``; a :class:`Boundary` is a node the converter keeps
as it is, with the reason (``affine=True`` when the op is still affine: a permute, a
``matmul`` on the last axis of an image, a constant that varies over positions, ... — a
model of linear layers and such ops has an affine map, ``mode="affine"``, but no
convolution).  :func:`bridge.classify.classify` decides for every node.

This module translates the layers with weights (shape and channel ops are in
:mod:`bridge.channel_ops`):

* convolutions ``conv{1,2,3}d`` (int or ``'same'``/``'valid'`` padding), ``convolution``,
  ``conv_transpose{1,2,3}d``, with a constant weight and bias: :func:`conv_layer`;
* nearest up-sampling by integer factors as a depthwise transposed convolution:
  :func:`upsample_nearest_layer`;
* padding ``pad`` / ``constant_pad_nd`` (value 0) / ``reflection_pad`` / ``replication_pad`` /
  ``_pad_circular`` of the spatial axes as ``(left, right)`` per axis and a mode (the
  converter folds it into the next conv when it can): :func:`pad_layer`;
* eval-mode batch norm (``batch_norm`` with ``training=False``,
  ``_native_batch_norm_legit_no_training``), ``y_c = γ_c (x_c - μ_c) / sqrt(σ²_c + ε) + β_c``:
  :func:`batch_norm_layer`;
* ``add``/``sub``/``rsub``/``mul``/``div``/``neg`` with a constant that is one number per
  channel (or a scalar): ``y_c = a_c x_c + t_c``; ``add``/``sub`` of two input-dependent
  values: ``y = c_1 x_1 + c_2 x_2``: :func:`arith_layer`;
* ``linear``/``addmm``/``mm``/``matmul`` of a flat value with a constant matrix,
  ``y = x W^T + b``: :func:`matrix_layer`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import fx

from .trace import TracedModel

__all__ = ["LinearOp", "Boundary", "Classified", "NotLinear", "Operands", "LINEAR_KINDS",
           "schema_arguments", "per_axis_ints", "channel_vector", "finite_number",
           "conv_layer", "pad_layer", "batch_norm_layer", "arith_layer", "linear_layer",
           "matrix_layer", "SLICE_TO_END", "PAD_MODES"]

LINEAR_KINDS = ("conv", "conv_transpose", "pad", "batch_norm", "scale_shift", "add", "concat",
                "slice", "avg_pool", "adaptive_avg_pool", "global_avg_pool", "flatten", "linear",
                "identity", "tuple")

SLICE_TO_END = 2 ** 62  # slice ends at or above this mean "to the end"


@dataclass
class LinearOp:
    """One node as a layer of a linear network.

    ``kind`` (one of :data:`LINEAR_KINDS`), ``operands`` (the input-dependent tensors it
    reads, in order), ``params`` (numbers and float64 tensors; see :func:`classify`)."""
    kind: str
    operands: tuple[fx.Node, ...]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Boundary:
    """A node kept as it is: ``reason`` in words; ``affine`` when the op is affine in its
    input (so it does not stop ``mode="affine"``)."""
    reason: str
    affine: bool = False


Classified = LinearOp | Boundary


class NotLinear(Exception):
    """Internal: this node is a boundary (``reason``, ``affine``)."""

    def __init__(self, reason: str, affine: bool = False):
        super().__init__(reason)
        self.reason, self.affine = reason, affine


def schema_arguments(node: fx.Node, traced: TracedModel) -> dict[str, Any]:
    """The node's arguments by schema name, defaults filled in."""
    pair = node.normalized_arguments(traced.graph_module, normalize_to_only_use_kwargs=True)
    if pair is None:
        raise NotLinear("arguments could not be matched to the op's schema")
    return dict(pair.kwargs)


def per_axis_ints(value: Any, count: int, what: str) -> tuple[int, ...]:
    items = [value] if isinstance(value, int) else list(value)
    if len(items) == 1:
        items = items * count
    if len(items) != count or not all(isinstance(v, int) for v in items):
        raise NotLinear(f"{what} {value!r} is not one int per spatial axis")
    return tuple(int(v) for v in items)


class Operands:
    """Argument helpers for one node: linear operands vs constants."""

    def __init__(self, node: fx.Node, traced: TracedModel):
        self.node, self.traced = node, traced

    def linear(self, arg: Any, ndims: Sequence[int] | None = None) -> fx.Node:
        """An input-dependent, batch-first tensor of static per-sample shape (with one of
        ``ndims`` per-sample axes if given)."""
        if not self.traced.depends_on_input(arg):
            raise NotLinear("no input-dependent operand where the layer expects one")
        shape = self.traced.shape(arg)
        if shape is None:
            raise NotLinear(f"operand {arg.name!r} is not a batch-first tensor of static size",
                          affine=False)
        if ndims is not None and len(shape) not in ndims:
            raise NotLinear(f"operand {arg.name!r} has per-sample shape {shape}, expected "
                          f"{' or '.join(str(n) for n in ndims)} axes", affine=True)
        return arg

    def constant(self, arg: Any, what: str) -> Any:
        if self.traced.depends_on_input(arg):
            raise NotLinear(f"{what} depends on the input (a product of two input-dependent "
                          "values is not linear)")
        return self.traced.constant(arg)

    def tensor(self, arg: Any, what: str) -> torch.Tensor | None:
        value = self.constant(arg, what)
        if value is None:
            return None
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        if value.is_complex():
            raise NotLinear(f"{what} is complex")
        value = value.to(torch.float64)
        if not bool(torch.isfinite(value).all()):
            raise NotLinear(f"{what} has NaN/Inf entries")
        return value


def channel_vector(value: Any, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """``value`` broadcast against a batch of ``(C, *n)`` values, as one number per channel:
    a scalar or a tensor whose only non-singleton axis is the channel axis."""
    t = value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    t = t.to(torch.float64)
    full = len(shape) + 1
    if t.ndim > full:
        raise NotLinear(f"{what} of shape {tuple(t.shape)} broadcasts beyond the value", affine=False)
    dims = (1,) * (full - t.ndim) + tuple(t.shape)
    channels = shape[0]
    if dims[0] != 1 or any(d != 1 for d in dims[2:]) or dims[1] not in (1, channels):
        raise NotLinear(f"{what} of shape {tuple(t.shape)} varies over positions, not only over "
                      "channels: affine, but not a convolution", affine=True)
    return t.reshape(-1).expand(channels).clone() if t.numel() in (1, channels) else t


def finite_number(value: Any, what: str) -> float:
    number = float(value.item() if isinstance(value, torch.Tensor) else value)
    if not math.isfinite(number):
        raise NotLinear(f"{what} {number} is not finite")
    return number


# ------------------------------------------------------------------------------ layers


def conv_layer(r: Operands, a: dict[str, Any], transposed: bool | None) -> LinearOp:
    weight = r.tensor(a["weight"], "the convolution weight")
    ndim = weight.ndim - 2
    x = r.linear(a["input"], (ndim + 1,))
    bias = r.tensor(a.get("bias"), "the convolution bias")
    if transposed is None:
        transposed = bool(a["transposed"])
    stride = per_axis_ints(a.get("stride", 1), ndim, "stride")
    dilation = per_axis_ints(a.get("dilation", 1), ndim, "dilation")
    groups = int(a.get("groups", 1))
    if transposed:
        padding = per_axis_ints(a.get("padding", 0), ndim, "padding")
        output_padding = per_axis_ints(a.get("output_padding", 0), ndim, "output_padding")
        return LinearOp("conv_transpose", (x,), dict(
            weight=weight, bias=bias, stride=stride, padding=padding,
            output_padding=output_padding, dilation=dilation, groups=groups))
    padding = a.get("padding", 0)
    if isinstance(padding, str):
        if padding == "valid":
            pairs = ((0, 0),) * ndim
        elif padding == "same":
            totals = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
            pairs = tuple((t // 2, t - t // 2) for t in totals)
        else:
            raise NotLinear(f"padding {padding!r} is not 'same' or 'valid'")
    else:
        pairs = tuple((p, p) for p in per_axis_ints(padding, ndim, "padding"))
    if any(o != 0 for o in per_axis_ints(a.get("output_padding", 0), ndim, "output_padding")):
        raise NotLinear("output_padding on a non-transposed convolution")
    return LinearOp("conv", (x,), dict(weight=weight, bias=bias, stride=stride, padding=pairs,
                                       dilation=dilation, groups=groups, mode="zeros"))


def upsample_nearest_layer(r: Operands, a: dict[str, Any], ndim: int) -> LinearOp:
    """``upsample_nearest{1,2,3}d`` by integer factors ``f`` (output ``f n``):
    ``y[i] = x[floor(i / f)]``, the depthwise transposed convolution with stride ``f`` and
    an all-ones ``f``-tap kernel (zero insertion, then each value repeated ``f`` times)."""
    x = r.linear(a.get("input", a.get("self")), (ndim + 1,))
    before, after = r.traced.shape(x), r.traced.shape(r.node)
    if any(o % n for n, o in zip(before[1:], after[1:])):
        raise NotLinear(f"upsample_nearest{ndim}d to a size that is not a multiple of the input "
                        f"({before} -> {after}): affine, but not a convolution", affine=True)
    factors = tuple(o // n for n, o in zip(before[1:], after[1:]))
    scales = a.get("scale_factors")
    if scales is None:
        scales = [a.get(k) for k in ("scales", "scales_d", "scales_h", "scales_w") if k in a]
    if any(v is not None and float(v) != f for v, f in zip(scales or (), factors)):
        raise NotLinear(f"upsample_nearest{ndim}d by the non-integer scales {list(scales)}: "
                        "affine, but not a convolution", affine=True)
    channels = before[0]
    weight = torch.ones(channels, 1, *factors, dtype=torch.float64)
    return LinearOp("conv_transpose", (x,), dict(
        weight=weight, bias=None, stride=factors, padding=(0,) * ndim,
        output_padding=(0,) * ndim, dilation=(1,) * ndim, groups=channels))


PAD_MODES = {"constant": "zeros", "reflect": "reflect", "replicate": "replicate",
              "circular": "circular"}


def pad_layer(r: Operands, a: dict[str, Any], mode: str) -> LinearOp:
    """F.pad order (last axis first, ``(left, right)``) -> per-spatial-axis pairs."""
    x = r.linear(a["input"])
    shape = r.traced.shape(x)
    spatial = len(shape) - 1
    pad = list(a.get("pad", a.get("padding")))
    if mode == "zeros":
        value = a.get("value")
        if value is not None and finite_number(r.constant(value, "pad value"), "pad value") != 0:
            raise NotLinear(f"constant padding with the value {value}: affine, but not a "
                          "convolution", affine=True)
    if len(pad) % 2 or not all(isinstance(p, int) for p in pad):
        raise NotLinear(f"padding {pad} is not (left, right) int pairs")
    pairs = [(pad[2 * i], pad[2 * i + 1]) for i in range(len(pad) // 2)][::-1]  # first axis first
    if len(pairs) > spatial:
        extra, pairs = pairs[:len(pairs) - spatial], pairs[len(pairs) - spatial:]
        if any(p != (0, 0) for p in extra):
            raise NotLinear(f"padding {pad} pads the channel or batch axis", affine=True)
    pairs = [(0, 0)] * (spatial - len(pairs)) + pairs
    if any(v < 0 for pair in pairs for v in pair):
        raise NotLinear(f"negative padding {pad} crops the input: affine, but not a "
                      "convolution", affine=True)
    if spatial == 0:
        raise NotLinear("padding a flat value", affine=True)
    return LinearOp("pad", (x,), dict(pairs=tuple(pairs), mode=mode))


def batch_norm_layer(r: Operands, a: dict[str, Any], training: bool) -> LinearOp:
    if training:
        raise NotLinear("batch norm with batch statistics (training=True, e.g. "
                      "track_running_stats=False): not linear")
    x = r.linear(a["input"])
    mean = r.tensor(a.get("running_mean"), "running_mean")
    var = r.tensor(a.get("running_var"), "running_var")
    if mean is None or var is None:
        raise NotLinear("batch norm without running statistics")
    return LinearOp("batch_norm", (x,), dict(
        mean=mean, var=var, weight=r.tensor(a.get("weight"), "batch norm weight"),
        bias=r.tensor(a.get("bias"), "batch norm bias"), eps=float(a["eps"])))


def arith_layer(r: Operands, name: str, a: dict[str, Any]) -> LinearOp:
    """add/sub/rsub/mul/div/neg with at most one input-dependent operand per product."""
    first, second = a.get("input", a.get("self")), a.get("other")
    alpha = finite_number(r.constant(a.get("alpha", 1), "alpha"), "alpha")
    dep1, dep2 = r.traced.depends_on_input(first), r.traced.depends_on_input(second)
    if name == "neg":
        x = r.linear(first)
        return LinearOp("scale_shift", (x,), dict(scale=-1.0, shift=None))
    if name in ("add", "sub", "rsub"):
        # add: a + alpha b; sub: a - alpha b; rsub: b - alpha a
        c_first, c_second = {"add": (1.0, alpha), "sub": (1.0, -alpha),
                             "rsub": (-alpha, 1.0)}[name]
        if dep1 and dep2:
            x, y = r.linear(first), r.linear(second)
            if r.traced.shape(x) != r.traced.shape(y):
                raise NotLinear(f"{name} of values of shapes {r.traced.shape(x)} and "
                              f"{r.traced.shape(y)} broadcasts", affine=False)
            return LinearOp("add", (x, y), dict(coefficients=(c_first, c_second)))
        if dep1:
            x, scale, const, c_const = r.linear(first), c_first, second, c_second
        else:
            x, scale, const, c_const = r.linear(second), c_second, first, c_first
        shift = channel_vector(r.constant(const, "the constant"), r.traced.shape(x),
                                "the constant") * c_const
        return LinearOp("scale_shift", (x,), dict(scale=scale, shift=shift))
    if dep1 and dep2:
        raise NotLinear(f"{name} of two input-dependent values (e.g. a gate): not linear")
    if name == "mul":
        x, const = (r.linear(first), second) if dep1 else (r.linear(second), first)
        scale = channel_vector(r.constant(const, "the factor"), r.traced.shape(x), "the factor")
        return LinearOp("scale_shift", (x,), dict(scale=scale, shift=None))
    if name == "div":
        if not dep1:
            raise NotLinear("division by an input-dependent value: not linear")
        if a.get("rounding_mode") is not None:
            raise NotLinear(f"division with rounding_mode={a['rounding_mode']!r}: not linear")
        x = r.linear(first)
        divisor = channel_vector(r.constant(second, "the divisor"), r.traced.shape(x),
                                  "the divisor")
        if bool((divisor == 0).any()):
            raise NotLinear("division by zero")
        return LinearOp("scale_shift", (x,), dict(scale=1.0 / divisor, shift=None))
    raise NotLinear(f"no linear form for {name}")


def linear_layer(r: Operands, x: Any, weight: torch.Tensor, bias: torch.Tensor | None) -> LinearOp:
    """``y = x W^T + b`` on flat values; ``weight`` is ``(N_out, N_in)``."""
    x = r.linear(x)
    shape = r.traced.shape(x)
    if len(shape) != 1:
        raise NotLinear(f"a matrix product on the last axis of a {shape} value: affine, but not "
                      "a convolution", affine=True)
    if weight.ndim != 2 or weight.shape[1] != shape[0]:
        raise NotLinear(f"weight of shape {tuple(weight.shape)} does not act on {shape[0]} "
                      "features", affine=True)
    if bias is not None:
        bias = bias.reshape(-1)
        if bias.numel() == 1:
            bias = bias.expand(weight.shape[0]).clone()
        if bias.shape != (weight.shape[0],):
            raise NotLinear(f"bias of shape {tuple(bias.shape)} does not broadcast per feature",
                          affine=True)
    return LinearOp("linear", (x,), dict(weight=weight, bias=bias))


def matrix_layer(r: Operands, name: str, a: dict[str, Any]) -> LinearOp:
    if name == "linear":
        return linear_layer(r, a["input"], r.tensor(a["weight"], "the linear weight"),
                       r.tensor(a.get("bias"), "the linear bias"))
    if name == "addmm":
        beta = finite_number(r.constant(a.get("beta", 1), "beta"), "beta")
        alpha = finite_number(r.constant(a.get("alpha", 1), "alpha"), "alpha")
        weight = r.tensor(a["mat2"], "the matrix (mat2)")
        bias = r.tensor(a["input"], "the bias (addmm input)")
        return linear_layer(r, a["mat1"], alpha * weight.T, beta * bias)
    other = a.get("mat2", a.get("other"))
    weight = r.tensor(other, "the matrix")
    if weight.ndim != 2:
        raise NotLinear(f"a product with a {weight.ndim}-D constant changes the shape", affine=True)
    return linear_layer(r, a.get("input", a.get("self")), weight.T, None)
