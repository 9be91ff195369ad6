"""Which ATen nodes are layers of a linear network, and which layer each one is.

:func:`classify` maps every node of a :class:`~bridge.trace.TracedModel` that depends on the
input to either a :class:`LinearOp` — a layer of :class:`algebra.Network` with its
parameters (float64 tensors), acting on per-sample values ``(C, *n)`` or ``(N,)`` — or a
:class:`Boundary` that the converter keeps exactly as it is (with the reason).

Linear layers (module, functional and method forms all arrive as these ATen ops):

* convolutions ``conv{1,2,3}d`` (int or ``'same'``/``'valid'`` padding), ``convolution``,
  ``conv_transpose{1,2,3}d``, with a constant weight and bias;
* padding ``pad`` / ``constant_pad_nd`` (value 0) / ``reflection_pad`` / ``replication_pad`` /
  ``_pad_circular`` on the spatial axes (the converter folds it into the next conv's
  ``(left, right)`` padding and mode when it can);
* eval-mode batch norm (``batch_norm`` with ``training=False``,
  ``_native_batch_norm_legit_no_training``): ``y_c = s_c x_c + t_c``;
* ``add``/``sub``/``rsub``/``mul``/``div``/``neg`` with a constant that is one number per
  channel (or a scalar): a channel scale and shift; ``add``/``sub`` of two input-dependent
  values: a weighted sum;
* ``avg_pool{1,2,3}d`` (floor mode, no divisor override), ``adaptive_avg_pool`` whose bins
  are equal for the traced size, ``mean``/``sum`` over all spatial axes;
* ``flatten``/``view``/``reshape`` that flatten ``(C, *n) -> (C·prod n)`` or only add/remove
  singleton axes around ``(N,)``; ``linear``/``addmm``/``mm``/``matmul`` of a flat value
  with a constant matrix;
* channel ``cat``, ``split``/``chunk``/``narrow``/``slice`` of channels;
* identities: ``clone``, ``contiguous``, ``alias``, ``detach``, eval-mode ``dropout``, a
  ``slice`` of the whole batch, a cast to the same dtype.

Everything else is a boundary.  Boundaries that are still *affine* (a permute, a
``matmul`` on the last axis of an image, a constant that varies over positions, ...) are
marked ``affine=True``: a whole model made of linear layers and such ops still has an
affine map (``mode="affine"``), but not a convolution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import fx

from .trace import GETITEM, TracedModel

__all__ = ["LinearOp", "Boundary", "classify", "LINEAR_KINDS"]

LINEAR_KINDS = ("conv", "conv_transpose", "pad", "batch_norm", "scale_shift", "add", "concat",
                "slice", "avg_pool", "global_avg_pool", "flatten", "linear", "identity",
                "tuple")

_HUGE = 2 ** 62  # slice ends at or above this mean "to the end"


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


class _Refuse(Exception):
    """Internal: this node is a boundary (``reason``, ``affine``)."""

    def __init__(self, reason: str, affine: bool = False):
        super().__init__(reason)
        self.reason, self.affine = reason, affine


def _arguments(node: fx.Node, traced: TracedModel) -> dict[str, Any]:
    """The node's arguments by schema name, defaults filled in."""
    pair = node.normalized_arguments(traced.graph_module, normalize_to_only_use_kwargs=True)
    if pair is None:
        raise _Refuse("arguments could not be matched to the op's schema")
    return dict(pair.kwargs)


def _ints(value: Any, count: int, what: str) -> tuple[int, ...]:
    items = [value] if isinstance(value, int) else list(value)
    if len(items) == 1:
        items = items * count
    if len(items) != count or not all(isinstance(v, int) for v in items):
        raise _Refuse(f"{what} {value!r} is not one int per spatial axis")
    return tuple(int(v) for v in items)


class _Reader:
    """Argument helpers for one node: linear operands vs constants."""

    def __init__(self, node: fx.Node, traced: TracedModel):
        self.node, self.traced = node, traced

    def linear(self, arg: Any, ndims: Sequence[int] | None = None) -> fx.Node:
        """An input-dependent, batch-first tensor of static per-sample shape (with one of
        ``ndims`` per-sample axes if given)."""
        if not self.traced.depends_on_input(arg):
            raise _Refuse("no input-dependent operand where the layer expects one")
        shape = self.traced.shape(arg)
        if shape is None:
            raise _Refuse(f"operand {arg.name!r} is not a batch-first tensor of static size",
                          affine=False)
        if ndims is not None and len(shape) not in ndims:
            raise _Refuse(f"operand {arg.name!r} has per-sample shape {shape}, expected "
                          f"{' or '.join(str(n) for n in ndims)} axes", affine=True)
        return arg

    def constant(self, arg: Any, what: str) -> Any:
        if self.traced.depends_on_input(arg):
            raise _Refuse(f"{what} depends on the input (a product of two input-dependent "
                          "values is not linear)")
        return self.traced.constant(arg)

    def tensor(self, arg: Any, what: str) -> torch.Tensor | None:
        value = self.constant(arg, what)
        if value is None:
            return None
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        if value.is_complex():
            raise _Refuse(f"{what} is complex")
        value = value.to(torch.float64)
        if not bool(torch.isfinite(value).all()):
            raise _Refuse(f"{what} has NaN/Inf entries")
        return value


def _channel_vector(value: Any, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """``value`` broadcast against a batch of ``(C, *n)`` values, as one number per channel:
    a scalar or a tensor whose only non-singleton axis is the channel axis."""
    t = value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    t = t.to(torch.float64)
    full = len(shape) + 1
    if t.ndim > full:
        raise _Refuse(f"{what} of shape {tuple(t.shape)} broadcasts beyond the value", affine=False)
    dims = (1,) * (full - t.ndim) + tuple(t.shape)
    channels = shape[0]
    if dims[0] != 1 or any(d != 1 for d in dims[2:]) or dims[1] not in (1, channels):
        raise _Refuse(f"{what} of shape {tuple(t.shape)} varies over positions, not only over "
                      "channels: affine, but not a convolution", affine=True)
    return t.reshape(-1).expand(channels).clone() if t.numel() in (1, channels) else t


def _finite_number(value: Any, what: str) -> float:
    number = float(value.item() if isinstance(value, torch.Tensor) else value)
    if not math.isfinite(number):
        raise _Refuse(f"{what} {number} is not finite")
    return number


# ------------------------------------------------------------------------------ layers


def _conv(r: _Reader, a: dict[str, Any], transposed: bool | None) -> LinearOp:
    weight = r.tensor(a["weight"], "the convolution weight")
    ndim = weight.ndim - 2
    x = r.linear(a["input"], (ndim + 1,))
    bias = r.tensor(a.get("bias"), "the convolution bias")
    if transposed is None:
        transposed = bool(a["transposed"])
    stride = _ints(a.get("stride", 1), ndim, "stride")
    dilation = _ints(a.get("dilation", 1), ndim, "dilation")
    groups = int(a.get("groups", 1))
    if transposed:
        padding = _ints(a.get("padding", 0), ndim, "padding")
        output_padding = _ints(a.get("output_padding", 0), ndim, "output_padding")
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
            raise _Refuse(f"padding {padding!r} is not 'same' or 'valid'")
    else:
        pairs = tuple((p, p) for p in _ints(padding, ndim, "padding"))
    if any(o != 0 for o in _ints(a.get("output_padding", 0), ndim, "output_padding")):
        raise _Refuse("output_padding on a non-transposed convolution")
    return LinearOp("conv", (x,), dict(weight=weight, bias=bias, stride=stride, padding=pairs,
                                       dilation=dilation, groups=groups, mode="zeros"))


_PAD_MODES = {"constant": "zeros", "reflect": "reflect", "replicate": "replicate",
              "circular": "circular"}


def _pad(r: _Reader, a: dict[str, Any], mode: str) -> LinearOp:
    """F.pad order (last axis first, ``(left, right)``) -> per-spatial-axis pairs."""
    x = r.linear(a["input"])
    shape = r.traced.shape(x)
    spatial = len(shape) - 1
    pad = list(a.get("pad", a.get("padding")))
    if mode == "zeros":
        value = a.get("value")
        if value is not None and _finite_number(r.constant(value, "pad value"), "pad value") != 0:
            raise _Refuse(f"constant padding with the value {value}: affine, but not a "
                          "convolution", affine=True)
    if len(pad) % 2 or not all(isinstance(p, int) for p in pad):
        raise _Refuse(f"padding {pad} is not (left, right) int pairs")
    pairs = [(pad[2 * i], pad[2 * i + 1]) for i in range(len(pad) // 2)][::-1]  # first axis first
    if len(pairs) > spatial:
        extra, pairs = pairs[:len(pairs) - spatial], pairs[len(pairs) - spatial:]
        if any(p != (0, 0) for p in extra):
            raise _Refuse(f"padding {pad} pads the channel or batch axis", affine=True)
    pairs = [(0, 0)] * (spatial - len(pairs)) + pairs
    if any(v < 0 for pair in pairs for v in pair):
        raise _Refuse(f"negative padding {pad} crops the input: affine, but not a "
                      "convolution", affine=True)
    if spatial == 0:
        raise _Refuse("padding a flat value", affine=True)
    return LinearOp("pad", (x,), dict(pairs=tuple(pairs), mode=mode))


def _batch_norm(r: _Reader, a: dict[str, Any], training: bool) -> LinearOp:
    if training:
        raise _Refuse("batch norm with batch statistics (training=True, e.g. "
                      "track_running_stats=False): not linear")
    x = r.linear(a["input"])
    mean = r.tensor(a.get("running_mean"), "running_mean")
    var = r.tensor(a.get("running_var"), "running_var")
    if mean is None or var is None:
        raise _Refuse("batch norm without running statistics")
    return LinearOp("batch_norm", (x,), dict(
        mean=mean, var=var, weight=r.tensor(a.get("weight"), "batch norm weight"),
        bias=r.tensor(a.get("bias"), "batch norm bias"), eps=float(a["eps"])))


def _arith(r: _Reader, name: str, a: dict[str, Any]) -> LinearOp:
    """add/sub/rsub/mul/div/neg with at most one input-dependent operand per product."""
    first, second = a.get("input", a.get("self")), a.get("other")
    alpha = _finite_number(r.constant(a.get("alpha", 1), "alpha"), "alpha")
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
                raise _Refuse(f"{name} of values of shapes {r.traced.shape(x)} and "
                              f"{r.traced.shape(y)} broadcasts", affine=False)
            return LinearOp("add", (x, y), dict(coefficients=(c_first, c_second)))
        if dep1:
            x, scale, const, c_const = r.linear(first), c_first, second, c_second
        else:
            x, scale, const, c_const = r.linear(second), c_second, first, c_first
        shift = _channel_vector(r.constant(const, "the constant"), r.traced.shape(x),
                                "the constant") * c_const
        return LinearOp("scale_shift", (x,), dict(scale=scale, shift=shift))
    if dep1 and dep2:
        raise _Refuse(f"{name} of two input-dependent values (e.g. a gate): not linear")
    if name == "mul":
        x, const = (r.linear(first), second) if dep1 else (r.linear(second), first)
        scale = _channel_vector(r.constant(const, "the factor"), r.traced.shape(x), "the factor")
        return LinearOp("scale_shift", (x,), dict(scale=scale, shift=None))
    if name == "div":
        if not dep1:
            raise _Refuse("division by an input-dependent value: not linear")
        if a.get("rounding_mode") is not None:
            raise _Refuse(f"division with rounding_mode={a['rounding_mode']!r}: not linear")
        x = r.linear(first)
        divisor = _channel_vector(r.constant(second, "the divisor"), r.traced.shape(x),
                                  "the divisor")
        if bool((divisor == 0).any()):
            raise _Refuse("division by zero")
        return LinearOp("scale_shift", (x,), dict(scale=1.0 / divisor, shift=None))
    raise _Refuse(f"no linear form for {name}")


def _avg_pool(r: _Reader, a: dict[str, Any], ndim: int) -> LinearOp:
    x = r.linear(a["input"], (ndim + 1,))
    kernel = _ints(a["kernel_size"], ndim, "kernel_size")
    stride = _ints(a.get("stride") or kernel, ndim, "stride")
    padding = _ints(a.get("padding", 0), ndim, "padding")
    if a.get("divisor_override") is not None:
        raise _Refuse("average pooling with divisor_override", affine=True)
    if a.get("ceil_mode"):
        sizes = r.traced.shape(x)[1:]
        floor = [(n + 2 * p - k) // s + 1 for n, p, k, s in zip(sizes, padding, kernel, stride)]
        if list(r.traced.shape(r.node)[1:]) != floor:
            raise _Refuse("average pooling in ceil mode with a partial last window", affine=True)
    return LinearOp("avg_pool", (x,), dict(kernel=kernel, stride=stride, padding=padding,
                                           count_include_pad=bool(a.get("count_include_pad", True))))


def _adaptive_avg_pool(r: _Reader, a: dict[str, Any], ndim: int) -> LinearOp:
    x = r.linear(a["input"], (ndim + 1,))
    sizes = r.traced.shape(x)[1:]
    out = r.traced.shape(r.node)[1:]
    if any(n % o for n, o in zip(sizes, out)):
        raise _Refuse(f"adaptive average pooling {tuple(sizes)} -> {tuple(out)} has unequal "
                      "bins for the traced size", affine=True)
    if all(o == 1 for o in out):
        return LinearOp("global_avg_pool", (x,), dict(factor=1.0))
    kernel = tuple(n // o for n, o in zip(sizes, out))
    return LinearOp("avg_pool", (x,), dict(kernel=kernel, stride=kernel,
                                           padding=(0,) * ndim, count_include_pad=True))


def _reduce_spatial(r: _Reader, a: dict[str, Any], name: str) -> LinearOp:
    x = r.linear(a["input"])
    shape = r.traced.shape(x)
    full = len(shape) + 1
    dims = a.get("dim")
    if dims is None or dims == []:
        raise _Refuse(f"{name} over every axis mixes the batch")
    dims = {d % full for d in ([dims] if isinstance(dims, int) else dims)}
    if a.get("dtype") is not None:
        raise _Refuse(f"{name} with a dtype cast")
    if 0 in dims:
        raise _Refuse(f"{name} over the batch axis")
    if dims != set(range(2, full)) or full < 3:
        raise _Refuse(f"{name} over axes {sorted(dims)}: affine, but not a pooling of "
                      "every spatial axis", affine=True)
    factor = 1.0 if name == "mean" else float(math.prod(shape[1:]))
    return LinearOp("global_avg_pool", (x,), dict(factor=factor))


def _reshape(r: _Reader, x: Any) -> LinearOp:
    """view/reshape/flatten/(un)squeeze, by the per-sample shapes before and after."""
    x = r.linear(x)
    before, after = r.traced.shape(x), r.traced.shape(r.node)
    if after is None:
        raise _Refuse("the result is not batch-first", affine=False)
    if before == after:
        return LinearOp("identity", (x,))
    if math.prod(before) != math.prod(after):
        raise _Refuse(f"reshape {before} -> {after} changes the batch", affine=False)
    if all(v == 1 for v in before[1:]) and all(v == 1 for v in after[1:]) \
            and before[0] == after[0]:
        return LinearOp("identity", (x,))   # (N,) <-> (N, 1, ..., 1)
    if len(after) == 1 and len(before) >= 2:
        return LinearOp("flatten", (x,))
    raise _Refuse(f"reshape {before} -> {after} is not a flatten", affine=True)


def _linear(r: _Reader, x: Any, weight: torch.Tensor, bias: torch.Tensor | None) -> LinearOp:
    """``y = x W^T + b`` on flat values; ``weight`` is ``(N_out, N_in)``."""
    x = r.linear(x)
    shape = r.traced.shape(x)
    if len(shape) != 1:
        raise _Refuse(f"a matrix product on the last axis of a {shape} value: affine, but not "
                      "a convolution", affine=True)
    if weight.ndim != 2 or weight.shape[1] != shape[0]:
        raise _Refuse(f"weight of shape {tuple(weight.shape)} does not act on {shape[0]} "
                      "features", affine=True)
    if bias is not None:
        bias = bias.reshape(-1)
        if bias.numel() == 1:
            bias = bias.expand(weight.shape[0]).clone()
        if bias.shape != (weight.shape[0],):
            raise _Refuse(f"bias of shape {tuple(bias.shape)} does not broadcast per feature",
                          affine=True)
    return LinearOp("linear", (x,), dict(weight=weight, bias=bias))


def _matrix(r: _Reader, name: str, a: dict[str, Any]) -> LinearOp:
    if name == "linear":
        return _linear(r, a["input"], r.tensor(a["weight"], "the linear weight"),
                       r.tensor(a.get("bias"), "the linear bias"))
    if name == "addmm":
        beta = _finite_number(r.constant(a.get("beta", 1), "beta"), "beta")
        alpha = _finite_number(r.constant(a.get("alpha", 1), "alpha"), "alpha")
        weight = r.tensor(a["mat2"], "the matrix (mat2)")
        bias = r.tensor(a["input"], "the bias (addmm input)")
        return _linear(r, a["mat1"], alpha * weight.T, beta * bias)
    other = a.get("mat2", a.get("other"))
    weight = r.tensor(other, "the matrix")
    if weight.ndim != 2:
        raise _Refuse(f"a product with a {weight.ndim}-D constant changes the shape", affine=True)
    return _linear(r, a.get("input", a.get("self")), weight.T, None)


def _slice(r: _Reader, a: dict[str, Any]) -> LinearOp:
    x = r.linear(a["input"])
    shape = r.traced.shape(x)
    full = len(shape) + 1
    dim = int(a.get("dim", 0)) % full
    step = int(a.get("step", 1))
    start = a.get("start")
    end = a.get("end")
    if dim == 0:
        if (start in (None, 0)) and (end is None or (isinstance(end, int) and end >= _HUGE)) \
                and step == 1:
            return LinearOp("identity", (x,))
        raise _Refuse("a slice of the batch")
    if not all(isinstance(v, int) or v is None for v in (start, end)):
        raise _Refuse("a slice with input-dependent bounds")
    if dim != 1:
        raise _Refuse(f"a slice of spatial axis {dim}: affine, but not a convolution",
                      affine=True)
    if step != 1:
        raise _Refuse(f"a channel slice with step {step}", affine=True)
    lo, hi, _ = slice(start, end).indices(shape[0])
    if hi <= lo:
        raise _Refuse("an empty channel slice")
    if (lo, hi) == (0, shape[0]):
        return LinearOp("identity", (x,))
    return LinearOp("slice", (x,), dict(start=lo, stop=hi))


def _cat(r: _Reader, a: dict[str, Any]) -> LinearOp:
    parts = list(a["tensors"])
    shapes = [r.traced.shape(p) for p in parts]
    if any(not r.traced.depends_on_input(p) for p in parts):
        raise _Refuse("cat with a constant part: affine, but not a convolution", affine=True)
    if any(s is None for s in shapes):
        raise _Refuse("cat of values that are not batch-first tensors of static size")
    full = len(shapes[0]) + 1
    dim = int(a.get("dim", 0)) % full
    if dim == 0:
        raise _Refuse("cat along the batch")
    if dim != 1:
        raise _Refuse(f"cat along spatial axis {dim}: affine, but not a convolution", affine=True)
    if len(parts) == 1:
        return LinearOp("identity", (r.linear(parts[0]),))
    return LinearOp("concat", tuple(r.linear(p) for p in parts))


_IDENTITY = {"clone", "contiguous", "alias", "detach", "lift_fresh_copy", "positive",
             "dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout",
             "_to_copy", "to", "type_as", "expand_as", "expand", "view_as", "reshape_as"}
_RESHAPE = {"view", "reshape", "_unsafe_view", "flatten", "unflatten", "unsqueeze", "squeeze",
            "view_as", "reshape_as"}
_AFFINE_NAMES = {"permute", "transpose", "t", "flip", "roll", "select", "index_select",
                 "repeat", "diagonal", "tile", "movedim", "unbind", "pixel_shuffle",
                 "pixel_unshuffle", "upsample_nearest2d", "upsample_bilinear2d", "sum", "mean"}


def _identity(r: _Reader, name: str, a: dict[str, Any]) -> LinearOp:
    x = r.linear(a.get("input", a.get("self")))
    if name.endswith("dropout") and a.get("train"):
        raise _Refuse(f"{name} in training mode is random")
    before, after = r.traced.shape(x), r.traced.shape(r.node)
    if before != after or r.traced.dtype(x) != r.traced.dtype(r.node):
        if name in _RESHAPE:
            return _reshape(r, x)
        raise _Refuse(f"{name} changes the shape or dtype ({before}, {r.traced.dtype(x)} -> "
                      f"{after}, {r.traced.dtype(r.node)})",
                      affine=r.traced.dtype(x) == r.traced.dtype(r.node))
    return LinearOp("identity", (x,))


def _classify_call(node: fx.Node, traced: TracedModel) -> Classified:
    target = node.target
    if not isinstance(target, torch._ops.OpOverload) or target.namespace != "aten":
        raise _Refuse(f"{getattr(target, '__name__', target)} is not an ATen op the converter "
                      "knows to be linear")
    name = target.overloadpacket.__name__
    r = _Reader(node, traced)
    a = _arguments(node, traced)
    if name in ("conv1d", "conv2d", "conv3d"):
        return _conv(r, a, transposed=False)
    if name in ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
        return _conv(r, a, transposed=True)
    if name in ("convolution", "_convolution"):
        return _conv(r, a, transposed=None)
    if name == "pad":
        mode = a.get("mode", "constant")
        if mode not in _PAD_MODES:
            raise _Refuse(f"padding mode {mode!r}")
        return _pad(r, a, _PAD_MODES[mode])
    if name == "constant_pad_nd":
        return _pad(r, a, "zeros")
    for prefix, mode in (("reflection_pad", "reflect"), ("replication_pad", "replicate"),
                         ("_pad_circular", "circular")):
        if name.startswith(prefix):
            return _pad(r, a, mode)
    if name == "batch_norm":
        return _batch_norm(r, a, bool(a.get("training")))
    if name in ("add", "sub", "rsub", "mul", "div", "neg"):
        return _arith(r, name, a)
    if name in ("avg_pool1d", "avg_pool2d", "avg_pool3d"):
        return _avg_pool(r, a, int(name[-2]))
    for nd in (1, 2, 3):
        if name in (f"adaptive_avg_pool{nd}d", f"_adaptive_avg_pool{nd}d"):
            return _adaptive_avg_pool(r, a, nd)
    if name in ("mean", "sum"):
        return _reduce_spatial(r, a, name)
    if name in ("linear", "addmm", "mm", "matmul"):
        return _matrix(r, name, a)
    if name == "slice":
        return _slice(r, a)
    if name == "narrow":
        return _slice(r, dict(input=a["input"], dim=a["dim"], start=a["start"],
                              end=a["start"] + a["length"], step=1))
    if name == "cat":
        return _cat(r, a)
    if name in _IDENTITY or name in _RESHAPE:
        if name in _RESHAPE and name not in ("view_as", "reshape_as"):
            return _reshape(r, a.get("input", a.get("self")))
        return _identity(r, name, a)
    raise _Refuse(f"{name} is not linear" if name not in _AFFINE_NAMES else
                  f"{name}: affine, but not a convolution", affine=name in _AFFINE_NAMES)


_TUPLE_LINEAR = {"split", "split_with_sizes", "chunk", "tensor_split",
                 "_native_batch_norm_legit_no_training", "native_batch_norm",
                 "_native_batch_norm_legit"}


def _classify_tuple(node: fx.Node, traced: TracedModel, out: dict[fx.Node, Classified]) -> None:
    """A multi-output op whose items are linear: the node itself is ``tuple`` and each
    ``getitem`` user is the layer (a channel slice, or the batch norm)."""
    name = node.target.overloadpacket.__name__
    r = _Reader(node, traced)
    a = _arguments(node, traced)
    items = [u for u in node.users if u.op == "call_function" and u.target is GETITEM]
    if len(items) != len(node.users):
        raise _Refuse(f"{name} result used other than by indexing")
    x = r.linear(a["input"])
    if "batch_norm" in name:
        training = bool(a.get("training", False)) if name != \
            "_native_batch_norm_legit_no_training" else False
        bn = _batch_norm(r, a, training)
        for item in items:
            if item.args[1] != 0:
                raise _Refuse(f"{name}: the batch statistics (item {item.args[1]}) are used")
            out[item] = LinearOp("batch_norm", (node,), bn.params)
        out[node] = LinearOp("tuple", (x,))
        return
    dim = int(a.get("dim", 0)) % (len(traced.shape(x)) + 1)
    if dim != 1:
        raise _Refuse(f"{name} along axis {dim}: affine, but not a convolution", affine=dim != 0)
    parts = traced.value(node)
    starts = [0]
    for part in parts:
        starts.append(starts[-1] + int(part.shape[1]))
    for item in items:
        i = int(item.args[1])
        if starts[i + 1] <= starts[i]:
            raise _Refuse(f"{name} item {i} is empty")
        out[item] = LinearOp("slice", (node,), dict(start=starts[i], stop=starts[i + 1]))
    out[node] = LinearOp("tuple", (x,))


def _feeds_only_linear(node: fx.Node, out: dict[fx.Node, Classified]) -> bool:
    """True when every use of a flattened value is a linear layer (through identities) or
    the model output: then ``linear ∘ flatten`` is one convolution with the whole window
    as kernel."""
    for user in node.users:
        op = out.get(user)
        if user.op == "output":
            continue
        if not isinstance(op, LinearOp):
            return False
        if op.kind == "identity" and _feeds_only_linear(user, out):
            continue
        if op.kind != "linear":
            return False
    return True


def classify(traced: TracedModel) -> dict[fx.Node, Classified]:
    """Every input-dependent ``call_function`` node: its :class:`LinearOp` or
    :class:`Boundary`.  Placeholders, constants (no input dependence), shape computations
    (``sym_size``) and unused nodes are not in the result."""
    out: dict[fx.Node, Classified] = {}
    for node in traced.nodes:
        if node in out or node.op != "call_function" or not traced.depends_on_input(node):
            continue
        if not node.users:
            continue  # dead code, guards and asserts: not needed by the converted graph
        if not isinstance(traced.value(node), (torch.Tensor, tuple, list)):
            continue  # a shape computation (sym_size, ...): kept where a kept node needs it
        try:
            if node.target is GETITEM:
                raise _Refuse("an item of a kept multi-output op")
            packet = getattr(node.target, "overloadpacket", None)
            if packet is not None and packet.__name__ in _TUPLE_LINEAR:
                _classify_tuple(node, traced, out)
            else:
                out[node] = _classify_call(node, traced)
        except _Refuse as refusal:
            out[node] = Boundary(refusal.reason, refusal.affine)
            for user in node.users:
                if user.target is GETITEM:
                    out[user] = Boundary("an item of a kept multi-output op", refusal.affine)
    # a flatten of (C, *n) with n != 1 is a layer only in front of linear layers
    for node, op in list(out.items()):
        if isinstance(op, LinearOp) and op.kind == "flatten":
            before = traced.shape(op.operands[0])
            if all(v == 1 for v in before[1:]):
                out[node] = LinearOp("identity", op.operands)
            elif not _feeds_only_linear(node, out):
                out[node] = Boundary(f"flatten {before} -> ({math.prod(before)},) not followed "
                                     "only by linear layers: kept as a reshape", affine=True)
    return out
