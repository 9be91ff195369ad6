"""ATen shape and channel ops as layers of a linear network.

* ``avg_pool{1,2,3}d`` with every option (``ceil_mode``, ``count_include_pad``,
  ``divisor_override``): :func:`avg_pool_layer`; ``adaptive_avg_pool{1,2,3}d``: a fixed
  pooling when the bins are equal for the traced size, the global mean for a 1x1 output,
  otherwise an adaptive pool (:func:`adaptive_avg_pool_layer`; the windows are
  :mod:`algebra.pooling`'s);
  ``mean``/``sum`` over every spatial axis: :func:`spatial_reduction_layer`;
* ``view``/``reshape``/``flatten``/``(un)squeeze`` that flatten ``(C, *n) -> (C·prod n)`` or
  only add/remove singleton axes around ``(N,)`` (judged by the traced shapes before and
  after, so every spelling of the same reshape is the same layer): :func:`reshape_layer`;
* channel ``cat`` (:func:`cat_layer`), ``slice``/``narrow`` of channels
  (:func:`slice_layer`; ``split``/``chunk`` in :mod:`bridge.classify`);
* identities: ``clone``, ``contiguous``, ``alias``, ``detach``, eval-mode ``dropout``, a
  ``slice`` of the whole batch, a cast to the same dtype: :func:`identity_layer`.
"""
from __future__ import annotations

import math
from typing import Any

from .linear_ops import SLICE_TO_END, LinearOp, NotLinear, Operands, per_axis_ints

__all__ = ["avg_pool_layer", "adaptive_avg_pool_layer", "spatial_reduction_layer",
           "reshape_layer", "slice_layer", "cat_layer", "identity_layer", "IDENTITY_OPS",
           "RESHAPE_OPS", "AFFINE_OPS"]


def avg_pool_layer(r: Operands, a: dict[str, Any], ndim: int) -> LinearOp:
    x = r.linear(a["input"], (ndim + 1,))
    kernel = per_axis_ints(a["kernel_size"], ndim, "kernel_size")
    stride = per_axis_ints(a.get("stride") or kernel, ndim, "stride")
    padding = per_axis_ints(a.get("padding", 0), ndim, "padding")
    divisor = a.get("divisor_override")
    return LinearOp("avg_pool", (x,), dict(
        kernel=kernel, stride=stride, padding=padding,
        count_include_pad=bool(a.get("count_include_pad", True)),
        ceil_mode=bool(a.get("ceil_mode", False)),
        divisor_override=None if divisor is None else int(divisor)))


def adaptive_avg_pool_layer(r: Operands, a: dict[str, Any], ndim: int) -> LinearOp:
    x = r.linear(a["input"], (ndim + 1,))
    sizes = r.traced.shape(x)[1:]
    out = r.traced.shape(r.node)[1:]
    if any(n % o for n, o in zip(sizes, out)):   # unequal bins for the traced size
        return LinearOp("adaptive_avg_pool", (x,), dict(output_size=tuple(out)))
    if all(o == 1 for o in out):
        return LinearOp("global_avg_pool", (x,), dict(factor=1.0))
    kernel = tuple(n // o for n, o in zip(sizes, out))
    return LinearOp("avg_pool", (x,), dict(kernel=kernel, stride=kernel, padding=(0,) * ndim,
                                           count_include_pad=True, ceil_mode=False,
                                           divisor_override=None))


def spatial_reduction_layer(r: Operands, a: dict[str, Any], name: str) -> LinearOp:
    x = r.linear(a["input"])
    shape = r.traced.shape(x)
    full = len(shape) + 1
    dims = a.get("dim")
    if dims is None or dims == []:
        raise NotLinear(f"{name} over every axis mixes the batch")
    dims = {d % full for d in ([dims] if isinstance(dims, int) else dims)}
    if a.get("dtype") is not None:
        raise NotLinear(f"{name} with a dtype cast")
    if 0 in dims:
        raise NotLinear(f"{name} over the batch axis")
    if dims != set(range(2, full)) or full < 3:
        raise NotLinear(f"{name} over axes {sorted(dims)}: affine, but not a pooling of "
                      "every spatial axis", affine=True)
    factor = 1.0 if name == "mean" else float(math.prod(shape[1:]))
    return LinearOp("global_avg_pool", (x,), dict(factor=factor))


def reshape_layer(r: Operands, x: Any) -> LinearOp:
    """view/reshape/flatten/(un)squeeze, by the per-sample shapes before and after."""
    x = r.linear(x)
    before, after = r.traced.shape(x), r.traced.shape(r.node)
    if after is None:
        raise NotLinear("the result is not batch-first", affine=False)
    if before == after:
        return LinearOp("identity", (x,))
    if math.prod(before) != math.prod(after):
        raise NotLinear(f"reshape {before} -> {after} changes the batch", affine=False)
    if all(v == 1 for v in before[1:]) and all(v == 1 for v in after[1:]) \
            and before[0] == after[0]:
        return LinearOp("identity", (x,))   # (N,) <-> (N, 1, ..., 1)
    if len(after) == 1 and len(before) >= 2:
        return LinearOp("flatten", (x,))
    raise NotLinear(f"reshape {before} -> {after} is not a flatten", affine=True)


def slice_layer(r: Operands, a: dict[str, Any]) -> LinearOp:
    x = r.linear(a["input"])
    shape = r.traced.shape(x)
    full = len(shape) + 1
    dim = int(a.get("dim", 0)) % full
    step = int(a.get("step", 1))
    start = a.get("start")
    end = a.get("end")
    if dim == 0:
        if (start in (None, 0)) and (end is None or (isinstance(end, int) and end >= SLICE_TO_END)) \
                and step == 1:
            return LinearOp("identity", (x,))
        raise NotLinear("a slice of the batch")
    if not all(isinstance(v, int) or v is None for v in (start, end)):
        raise NotLinear("a slice with input-dependent bounds")
    if dim != 1:
        raise NotLinear(f"a slice of spatial axis {dim}: affine, but not a convolution",
                      affine=True)
    if step != 1:
        raise NotLinear(f"a channel slice with step {step}", affine=True)
    lo, hi, _ = slice(start, end).indices(shape[0])
    if hi <= lo:
        raise NotLinear("an empty channel slice")
    if (lo, hi) == (0, shape[0]):
        return LinearOp("identity", (x,))
    return LinearOp("slice", (x,), dict(start=lo, stop=hi))


def cat_layer(r: Operands, a: dict[str, Any]) -> LinearOp:
    parts = list(a["tensors"])
    shapes = [r.traced.shape(p) for p in parts]
    if any(not r.traced.depends_on_input(p) for p in parts):
        raise NotLinear("cat with a constant part: affine, but not a convolution", affine=True)
    if any(s is None for s in shapes):
        raise NotLinear("cat of values that are not batch-first tensors of static size")
    full = len(shapes[0]) + 1
    dim = int(a.get("dim", 0)) % full
    if dim == 0:
        raise NotLinear("cat along the batch")
    if dim != 1:
        raise NotLinear(f"cat along spatial axis {dim}: affine, but not a convolution", affine=True)
    if len(parts) == 1:
        return LinearOp("identity", (r.linear(parts[0]),))
    return LinearOp("concat", tuple(r.linear(p) for p in parts))


IDENTITY_OPS = {"clone", "contiguous", "alias", "detach", "lift_fresh_copy", "positive",
             "dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout",
             "_to_copy", "to", "type_as", "expand_as", "expand", "view_as", "reshape_as"}
RESHAPE_OPS = {"view", "reshape", "_unsafe_view", "flatten", "unflatten", "unsqueeze", "squeeze",
            "view_as", "reshape_as"}
AFFINE_OPS = {"permute", "transpose", "t", "flip", "roll", "select", "index_select",
                 "repeat", "diagonal", "tile", "movedim", "unbind", "pixel_shuffle",
                 "pixel_unshuffle", "upsample_nearest2d", "upsample_bilinear2d", "sum", "mean"}


def identity_layer(r: Operands, name: str, a: dict[str, Any]) -> LinearOp:
    x = r.linear(a.get("input", a.get("self")))
    if name.endswith("dropout") and a.get("train"):
        raise NotLinear(f"{name} in training mode is random")
    before, after = r.traced.shape(x), r.traced.shape(r.node)
    if before != after or r.traced.dtype(x) != r.traced.dtype(r.node):
        if name in RESHAPE_OPS:
            return reshape_layer(r, x)
        raise NotLinear(f"{name} changes the shape or dtype ({before}, {r.traced.dtype(x)} -> "
                      f"{after}, {r.traced.dtype(r.node)})",
                      affine=r.traced.dtype(x) == r.traced.dtype(r.node))
    return LinearOp("identity", (x,))
