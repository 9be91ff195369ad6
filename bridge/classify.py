"""Which node of a traced graph is which layer: the classification pass.

:func:`classify` maps every node of a :class:`~bridge.trace.TracedModel` that depends on the
input to its :class:`~bridge.linear_ops.LinearOp` (the ATen op's layer, by the
translators of :mod:`bridge.linear_ops` and :mod:`bridge.channel_ops`) or to a
:class:`~bridge.linear_ops.Boundary` kept as it is.  Multi-output ops (``split``, ``chunk``,
batch norm's ``(out, mean, invstd)``) are a ``tuple`` node whose ``getitem`` users are the
layers.  A node whose analysis fails for any reason is a boundary: keeping an op is
always exact.
"""
from __future__ import annotations

import math

import torch
from torch import fx

from .channel_ops import (AFFINE_OPS, IDENTITY_OPS, RESHAPE_OPS, adaptive_avg_pool_layer,
                          avg_pool_layer, cat_layer, identity_layer, reshape_layer, slice_layer,
                          spatial_reduction_layer)
from .linear_ops import (PAD_MODES, Boundary, Classified, LinearOp, NotLinear, Operands,
                         arith_layer, batch_norm_layer, conv_layer, matrix_layer, pad_layer,
                         schema_arguments, upsample_nearest_layer)
from .trace import GETITEM, TracedModel

__all__ = ["classify"]


def _classify_call(node: fx.Node, traced: TracedModel) -> Classified:
    target = node.target
    if not isinstance(target, torch._ops.OpOverload) or target.namespace != "aten":
        raise NotLinear(f"{getattr(target, '__name__', target)} is not an ATen op the converter "
                      "knows to be linear")
    name = target.overloadpacket.__name__
    r = Operands(node, traced)
    a = schema_arguments(node, traced)
    if name in ("conv1d", "conv2d", "conv3d"):
        return conv_layer(r, a, transposed=False)
    if name in ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
        return conv_layer(r, a, transposed=True)
    if name in ("convolution", "_convolution"):
        return conv_layer(r, a, transposed=None)
    if name == "pad":
        mode = a.get("mode", "constant")
        if mode not in PAD_MODES:
            raise NotLinear(f"padding mode {mode!r}")
        return pad_layer(r, a, PAD_MODES[mode])
    if name == "constant_pad_nd":
        return pad_layer(r, a, "zeros")
    for prefix, mode in (("reflection_pad", "reflect"), ("replication_pad", "replicate"),
                         ("_pad_circular", "circular")):
        if name.startswith(prefix):
            return pad_layer(r, a, mode)
    if name == "batch_norm":
        return batch_norm_layer(r, a, bool(a.get("training")))
    if name in ("upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d"):
        return upsample_nearest_layer(r, a, int(name[-2]))
    if name in ("add", "sub", "rsub", "mul", "div", "neg"):
        return arith_layer(r, name, a)
    if name in ("avg_pool1d", "avg_pool2d", "avg_pool3d"):
        return avg_pool_layer(r, a, int(name[-2]))
    for nd in (1, 2, 3):
        if name in (f"adaptive_avg_pool{nd}d", f"adaptive_avg_pool_layer{nd}d"):
            return adaptive_avg_pool_layer(r, a, nd)
    if name in ("mean", "sum"):
        return spatial_reduction_layer(r, a, name)
    if name in ("linear", "addmm", "mm", "matmul"):
        return matrix_layer(r, name, a)
    if name == "slice":
        return slice_layer(r, a)
    if name == "narrow":
        return slice_layer(r, dict(input=a["input"], dim=a["dim"], start=a["start"],
                              end=a["start"] + a["length"], step=1))
    if name == "cat":
        return cat_layer(r, a)
    if name in IDENTITY_OPS or name in RESHAPE_OPS:
        if name in RESHAPE_OPS and name not in ("view_as", "reshape_as"):
            return reshape_layer(r, a.get("input", a.get("self")))
        return identity_layer(r, name, a)
    raise NotLinear(f"{name} is not linear" if name not in AFFINE_OPS else
                  f"{name}: affine, but not a convolution", affine=name in AFFINE_OPS)


TUPLE_OPS = {"split", "split_with_sizes", "chunk", "tensor_split",
                 "_native_batch_norm_legit_no_training", "native_batch_norm",
                 "_native_batch_norm_legit"}


def _classify_tuple(node: fx.Node, traced: TracedModel, out: dict[fx.Node, Classified]) -> None:
    """A multi-output op whose items are linear: the node itself is ``tuple`` and each
    ``getitem`` user is the layer (a channel slice, or the batch norm)."""
    name = node.target.overloadpacket.__name__
    r = Operands(node, traced)
    a = schema_arguments(node, traced)
    items = [u for u in node.users if u.op == "call_function" and u.target is GETITEM]
    if len(items) != len(node.users):
        raise NotLinear(f"{name} result used other than by indexing")
    x = r.linear(a["input"])
    if "batch_norm" in name:
        training = bool(a.get("training", False)) if name != \
            "_native_batch_norm_legit_no_training" else False
        bn = batch_norm_layer(r, a, training)
        for item in items:
            if item.args[1] != 0:
                raise NotLinear(f"{name}: the batch statistics (item {item.args[1]}) are used")
            out[item] = LinearOp("batch_norm", (node,), bn.params)
        out[node] = LinearOp("tuple", (x,))
        return
    dim = int(a.get("dim", 0)) % (len(traced.shape(x)) + 1)
    if dim != 1:
        raise NotLinear(f"{name} along axis {dim}: affine, but not a convolution", affine=dim != 0)
    parts = traced.value(node)
    starts = [0]
    for part in parts:
        starts.append(starts[-1] + int(part.shape[1]))
    for item in items:
        i = int(item.args[1])
        if starts[i + 1] <= starts[i]:
            raise NotLinear(f"{name} item {i} is empty")
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


def _keep(node: fx.Node, out: dict[fx.Node, Classified], boundary: Boundary) -> None:
    """``node`` is kept, and so are the items of its result if it has several."""
    out[node] = boundary
    for user in node.users:
        if user.target is GETITEM:
            out[user] = Boundary("an item of a kept multi-output op", boundary.affine)


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
                raise NotLinear("an item of a kept multi-output op")
            packet = getattr(node.target, "overloadpacket", None)
            if packet is not None and packet.__name__ in TUPLE_OPS:
                _classify_tuple(node, traced, out)
            else:
                out[node] = _classify_call(node, traced)
        except NotLinear as refusal:
            _keep(node, out, Boundary(refusal.reason, refusal.affine))
        except Exception as exc:  # noqa: BLE001 - an op we cannot analyse is kept as it is
            first = str(exc).splitlines()[0][:120] if str(exc) else ""
            _keep(node, out, Boundary(f"not analysed ({type(exc).__name__}: {first}): kept"))
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
