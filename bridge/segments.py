"""Maximal linear segments of a traced graph, each as an :class:`algebra.Network`.

A **segment** is a connected set of linear layers (:mod:`bridge.linear_ops`) that reads ONE
value — the model input or the output of a kept op — and whose results (its *exits*) are
read by kept ops or are model outputs.  :func:`partition` finds them:

1. every linear node gets its *sources*: the non-linear values it depends on through
   linear layers only;
2. a node with two or more sources (an ``add``/``cat`` of values coming from different
   boundaries, e.g. a ReLU ResNet's ``F(x) + x``) is **kept** as it is — a two-input op is
   no convolution of one input — and its output becomes a source itself;
3. an exit that linear layers of its own segment also read (a block output that an SE
   gate's ``mean`` reads, and that the gate's ``mul`` reads too) starts a new segment:
   the value is needed anyway, so the layers after it are merged from it rather than
   recomputed from the segment's input;
4. segments are the connected components of what remains (edges between linear nodes
   that are not cut by step 3), so two branches that only share their input — a ResNet's
   ``conv1`` and its downsampling shortcut — are two segments.

:func:`build_network` writes a segment as an :class:`algebra.Network` (weights as float64
arrays) on the per-sample input shape: flat values ``(N,)`` are the images
``(N, 1, ..., 1)``, ``linear`` is a ``1x1`` convolution, and ``linear ∘ flatten`` of a
``(C, *n)`` map is a convolution whose kernel is the whole ``n`` window (valid padding), so
a classifier head stays inside the convolution algebra.  A padding op in front of
convolutions is folded into their ``(left, right)`` padding and mode (zero padding adds up;
another mode is folded only into a conv without padding of its own); elsewhere it is a
``1x1`` identity convolution with that padding.  A batch norm or channel scale right after a
convolution or linear layer is folded into it first (:func:`fold_channel_affines`): the same
operator, and the collapse then has one product less to compute.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx

from ..algebra import Network
from ..algebra.network import Value
from .linear_ops import Boundary, Classified, LinearOp
from .trace import TracedModel

__all__ = ["Segment", "Partition", "partition", "SegmentNetwork", "build_network",
           "fold_channel_affines", "NotMergeable"]


class NotMergeable(Exception):
    """A segment that cannot be written as one Network (the reason in words)."""


@dataclass
class Segment:
    """Linear nodes (graph order) reading ``source``; ``exits`` are the nodes whose values
    are read outside the segment (or are model outputs)."""
    name: str
    source: fx.Node
    nodes: list[fx.Node]
    exits: list[fx.Node]


@dataclass
class Partition:
    """The graph split into segments and kept nodes.

    ``ops``: the classification of every input-dependent node; ``kept``: nodes that stay
    as they are with the reason (boundaries, multi-source adds/cats); ``segments``: the
    linear segments."""
    ops: dict[fx.Node, Classified]
    kept: dict[fx.Node, str]
    segments: list[Segment]
    multi_source: list[fx.Node] = field(default_factory=list)

    def segment_of(self, node: fx.Node) -> Segment | None:
        for segment in self.segments:
            if node in segment.nodes:
                return segment
        return None


def _linear_operands(node: fx.Node, ops: dict[fx.Node, Classified]) -> tuple[fx.Node, ...]:
    op = ops.get(node)
    return op.operands if isinstance(op, LinearOp) else ()


def partition(traced: TracedModel, ops: dict[fx.Node, Classified]) -> Partition:
    """Split the graph into single-source linear segments (module docstring)."""
    linear = [n for n in traced.nodes if isinstance(ops.get(n), LinearOp)]
    kept: dict[fx.Node, str] = {n: op.reason for n, op in ops.items() if isinstance(op, Boundary)}
    multi: list[fx.Node] = []
    cuts: set[fx.Node] = set()
    outputs = set(traced.output_node.all_input_nodes)
    while True:
        in_segment = [n for n in linear if n not in multi]
        sources: dict[fx.Node, frozenset[fx.Node]] = {}
        for node in in_segment:
            found: set[fx.Node] = set()
            for operand in _linear_operands(node, ops):
                if operand in sources and operand not in cuts:
                    found |= sources[operand]
                else:
                    found.add(operand)
            if len(found) > 1:
                break
            sources[node] = frozenset(found)
        else:
            node = None
        if node is not None:     # a node reading two sources: keep it and start over
            multi.append(node)
            kept[node] = ("reads values from different sources "
                          f"({', '.join(sorted(o.name for o in _source_names(node, sources, cuts, ops)))}): "
                          "kept, its inputs and output are segment boundaries")
            continue
        segments = _components(in_segment, sources, cuts, ops)
        new_cuts = set()
        for members in segments:
            member_set = set(members)
            for node in members:
                users = set(node.users)
                outside = any(u not in member_set for u in users) or node in outputs
                inside = any(u in member_set and node in _linear_operands(u, ops) for u in users)
                if outside and inside and node not in cuts:
                    new_cuts.add(node)
        if not new_cuts:
            break
        cuts |= new_cuts
    result = []
    for members in segments:
        member_set = set(members)
        exits = [n for n in members if n in outputs or any(u not in member_set for u in n.users)]
        source = next(iter(sources[members[0]]))
        result.append(Segment(f"segment{len(result) + 1}", source, members, exits))
    return Partition(ops, kept, result, multi)


def _source_names(node: fx.Node, sources: dict, cuts: set, ops: dict) -> set[fx.Node]:
    found: set[fx.Node] = set()
    for operand in _linear_operands(node, ops):
        found |= set(sources[operand]) if operand in sources and operand not in cuts else {operand}
    return found


def _components(nodes: list[fx.Node], sources: dict, cuts: set, ops: dict
                ) -> list[list[fx.Node]]:
    """Connected components (in graph order) of the linear nodes, joined by operand edges
    that do not cross a cut."""
    parent = {n: n for n in nodes}

    def root(n: fx.Node) -> fx.Node:
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n
    for node in nodes:
        for operand in _linear_operands(node, ops):
            if operand in parent and operand not in cuts:
                parent[root(node)] = root(operand)
    groups: dict[fx.Node, list[fx.Node]] = {}
    for node in nodes:
        groups.setdefault(root(node), []).append(node)
    return list(groups.values())


# ------------------------------------------------------------------------ the Network


@dataclass(frozen=True)
class _Padded:
    """A padding op folded into the convolutions that read it."""
    value: Value
    pairs: tuple[tuple[int, int], ...]
    mode: str


@dataclass(frozen=True)
class _Flattened:
    """``flatten`` of a ``(C, *n)`` value, waiting for the linear layer it feeds."""
    value: Value
    shape: tuple[int, ...]


@dataclass
class SegmentNetwork:
    """A segment as a Network: ``values[node]`` is the Network value of each linear node;
    ``input_shape`` the per-sample input ``(C, *n)`` (flat inputs as ``(N, 1, ..., 1)``)."""
    network: Network
    values: dict[fx.Node, Any]
    input_shape: tuple[int, ...]
    ndim: int

    def exit_value(self, node: fx.Node) -> Value:
        value = self.values[node]
        if isinstance(value, _Flattened):
            return value.value           # the merged conv gives (C, *n); emitted + flatten
        if not isinstance(value, Value):
            raise NotMergeable(f"{node.name} is not a value of the segment")
        return value


def _segment_ndim(segment: Segment, traced: TracedModel) -> int:
    """The spatial dimension of the segment's images (flat-only segments: 1)."""
    dims = {len(traced.shape(n)) - 1 for n in [segment.source, *segment.nodes]
            if traced.shape(n) is not None and len(traced.shape(n)) > 1}
    if len(dims) > 1:
        raise NotMergeable(f"the segment mixes {sorted(dims)}-D images")
    ndim = dims.pop() if dims else 1
    if ndim not in (1, 2, 3):
        raise NotMergeable(f"{ndim}-D images: only 1-D, 2-D and 3-D convolutions exist")
    return ndim


def _as_image(shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    return shape if len(shape) == ndim + 1 else (shape[0], *(1,) * ndim)


def _array(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().to(torch.float64).cpu().numpy()


def _foldable(pad: fx.Node, segment: Segment, ops: dict[fx.Node, Classified]) -> bool:
    """A padding op is folded when it is not an exit and only convolutions read it (a
    non-zero mode only into convolutions without padding of their own)."""
    if pad in segment.exits:
        return False
    mode = ops[pad].params["mode"]
    for user in pad.users:
        op = ops.get(user)
        if not (isinstance(op, LinearOp) and op.kind == "conv"):
            return False
        if mode != "zeros" and (op.params["mode"] != "zeros"
                                or any(p != (0, 0) for p in op.params["padding"])):
            return False
    return True


def _channel_affine(op: LinearOp) -> tuple[torch.Tensor | float, torch.Tensor | None]:
    """``(s, t)`` of ``y_c = s_c x_c + t_c`` for a batch norm or a scale/shift layer (float64:
    ``s = γ / sqrt(σ² + ε)``, ``t = β - μ s``)."""
    p = op.params
    if op.kind == "batch_norm":
        gamma = torch.ones_like(p["var"]) if p["weight"] is None else p["weight"]
        scale = gamma / torch.sqrt(p["var"] + p["eps"])
        beta = torch.zeros_like(p["mean"]) if p["bias"] is None else p["bias"]
        return scale, beta - p["mean"] * scale
    return p["scale"], p["shift"]


def fold_channel_affines(segment: Segment, ops: dict[fx.Node, Classified]
                         ) -> dict[fx.Node, Classified]:
    """``ops`` with every batch norm / channel scale that directly follows a convolution or
    linear layer (its only reader, through a batch norm's tuple node) folded into it:
    ``W'_o = s_o W_o``, ``b'_o = s_o b_o + t_o`` (float64), the affine layer becoming an
    identity.  The same operator, but the collapse no longer multiplies by a diagonal."""
    folded = dict(ops)
    members = set(segment.nodes)
    for node in segment.nodes:
        op = folded[node]
        if not (isinstance(op, LinearOp) and op.kind in ("batch_norm", "scale_shift")):
            continue
        producer, via = op.operands[0], None
        if isinstance(folded.get(producer), LinearOp) and folded[producer].kind == "tuple":
            via, producer = producer, folded[producer].operands[0]
        layer = folded.get(producer)
        chain = [u for u in producer.users]
        if producer not in members or producer in segment.exits or \
                (via is not None and (via in segment.exits or len(via.users) != 1)) or \
                chain != [via or node] or not isinstance(layer, LinearOp) or \
                layer.kind not in ("conv", "linear"):
            continue
        scale, shift = _channel_affine(op)
        weight, bias = layer.params["weight"], layer.params["bias"]
        scale_t = torch.as_tensor(scale, dtype=torch.float64).reshape(-1)
        scale_t = scale_t.expand(weight.shape[0]) if scale_t.numel() == 1 else scale_t
        new_weight = weight * scale_t.reshape(-1, *(1,) * (weight.ndim - 1))
        new_bias = None if bias is None else bias * scale_t
        if shift is not None:
            new_bias = shift.clone() if new_bias is None else new_bias + shift
        folded[producer] = LinearOp(layer.kind, layer.operands,
                                    {**layer.params, "weight": new_weight, "bias": new_bias})
        folded[node] = LinearOp("identity", op.operands)
    return folded


def build_network(segment: Segment, traced: TracedModel, ops: dict[fx.Node, Classified], *,
                  biases: bool = True) -> SegmentNetwork:
    """The segment as a Network (module docstring; channel affines after a convolution
    folded into it, :func:`fold_channel_affines`); ``biases=False`` drops every bias and
    shift (the linear part of the affine segment)."""
    ndim = _segment_ndim(segment, traced)
    input_shape = _as_image(traced.shape(segment.source), ndim)
    net = Network(ndim, input_shape[0])
    values: dict[fx.Node, Any] = {segment.source: net.input}
    ops = fold_channel_affines(segment, ops)
    try:
        for node in segment.nodes:
            values[node] = _add_layer(net, node, ops[node], values, segment, traced, ops,
                                      ndim, biases)
        net.shapes(input_shape)          # validates every layer for this input size
    except ValueError as exc:
        raise NotMergeable(f"not one network: {exc}") from None
    return SegmentNetwork(net, values, input_shape, ndim)


def _add_layer(net: Network, node: fx.Node, op: LinearOp, values: dict[fx.Node, Any],
               segment: Segment, traced: TracedModel, ops: dict[fx.Node, Classified],
               ndim: int, biases: bool) -> Any:
    """One linear node as Network layers; returns its value (or a fold marker)."""
    p = op.params
    inputs = [values[o] for o in op.operands]
    x = inputs[0] if inputs else None
    name = node.name
    bias = (lambda t: _array(t) if biases else None)
    if op.kind in ("identity", "tuple"):
        return x
    if isinstance(x, _Flattened) and op.kind != "linear":
        raise NotMergeable(f"{name}: a flattened map feeds {op.kind}")
    if isinstance(x, _Padded) and op.kind != "conv":
        raise NotMergeable(f"{name}: a folded padding feeds {op.kind}")
    if op.kind == "conv":
        pairs, mode = p["padding"], p["mode"]
        if isinstance(x, _Padded):
            pairs = tuple((a + c, b + d) for (a, b), (c, d) in zip(x.pairs, pairs))
            mode = x.mode
            x = x.value
        return net.conv(x, _array(p["weight"]), bias(p["bias"]), stride=p["stride"],
                        padding=pairs, dilation=p["dilation"], groups=p["groups"],
                        padding_mode=mode, name=name)
    if op.kind == "conv_transpose":
        return net.conv_transpose(x, _array(p["weight"]), bias(p["bias"]), stride=p["stride"],
                                  padding=p["padding"], output_padding=p["output_padding"],
                                  dilation=p["dilation"], groups=p["groups"], name=name)
    if op.kind == "pad":
        if _foldable(node, segment, ops):
            return _Padded(x, p["pairs"], p["mode"])
        channels = net.channels(x)
        identity = np.ones((channels, 1, *(1,) * ndim))
        return net.conv(x, identity, None, padding=p["pairs"], groups=channels,
                        padding_mode=p["mode"], name=name)
    if op.kind == "batch_norm":
        mean, var = _array(p["mean"]), _array(p["var"])
        weight = None if p["weight"] is None else _array(p["weight"])
        shift = None if p["bias"] is None else _array(p["bias"])
        if biases:
            return net.batch_norm(x, mean, var, weight, shift, p["eps"], name=name)
        scale = (np.ones_like(var) if weight is None else weight) / np.sqrt(var + p["eps"])
        return net.channel_affine(x, [float(v) for v in scale], None, label="batch_norm",
                                  name=name)
    if op.kind == "scale_shift":
        channels = net.channels(x)
        scale = p["scale"]
        scale = [float(scale)] * channels if not isinstance(scale, torch.Tensor) else \
            [float(v) for v in scale]
        shift = None if p["shift"] is None or not biases else [float(v) for v in p["shift"]]
        return net.channel_affine(x, scale, shift, label="scale/shift", name=name)
    if op.kind == "add":
        coefficients = p["coefficients"]
        return net.add(*inputs, coefficients=None if all(c == 1 for c in coefficients)
                       else list(coefficients), name=name)
    if op.kind == "concat":
        return net.concat(*inputs, name=name)
    if op.kind == "slice":
        return net.channels_slice(x, p["start"], p["stop"], name=name)
    if op.kind == "avg_pool":
        return net.avg_pool(x, p["kernel"], p["stride"], p["padding"], p["count_include_pad"],
                            name=name, ceil_mode=p.get("ceil_mode", False),
                            divisor_override=p.get("divisor_override"))
    if op.kind == "adaptive_avg_pool":
        return net.adaptive_avg_pool(x, p["output_size"], name=name)
    if op.kind == "global_avg_pool":
        pooled = net.global_avg_pool(x, name=name if p["factor"] == 1 else None)
        if p["factor"] == 1:
            return pooled
        return net.add(pooled, coefficients=[p["factor"]], name=name)
    if op.kind == "flatten":
        return _Flattened(x, traced.shape(op.operands[0]))
    if op.kind == "linear":
        weight = p["weight"]
        if isinstance(x, _Flattened):
            kernel = weight.reshape(weight.shape[0], *x.shape)   # (N, C, *n), valid
            return net.conv(x.value, _array(kernel), bias(p["bias"]), name=name)
        kernel = weight.reshape(*weight.shape, *(1,) * ndim)
        return net.conv(x, _array(kernel), bias(p["bias"]), name=name)
    raise NotMergeable(f"{name}: no Network layer for {op.kind}")
