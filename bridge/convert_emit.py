"""Writing the converted model as a plain ``torch.fx.GraphModule``.

The new graph is the traced ATen graph with every merged segment replaced: kept ops
(boundaries, multi-source adds, unmerged segments, shape computations) are copied node by
node with their constants (cloned, as parameters and buffers of the new module), and each
merged exit becomes ordinary torch — ``torch.reshape``/``torch.flatten``, ``F.pad``, an
``nn.Conv{n}d`` or ``nn.Linear`` submodule (``call_module``), ``torch.narrow`` crops and a
bias-map buffer added with ``torch.add``, for a border-corrected kernel a traced
``BorderCorrectedConv`` submodule (:mod:`bridge.border_module`), for a multirate exit a
traced ``PolyphaseConv`` (:mod:`bridge.polyphase_module`) — in the model's dtype.
The module holds no laurentnet object: it runs, pickles and exports with torch alone.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import fx, nn

from .border_module import border_module
from .polyphase_module import traced_polyphase
from .convert_merge import MergedExit
from .segments import Partition, Segment
from .trace import TracedModel

__all__ = ["GraphWriter", "converted_module", "segment_modules", "merged_module"]

_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _set_attribute(root: nn.Module, target: str, value: Any) -> None:
    """``root.<target> = value`` creating intermediate modules; tensors become buffers,
    parameters stay parameters (frozen copies), modules submodules."""
    *path, leaf = target.split(".")
    module = root
    for part in path:
        if not hasattr(module, part):
            module.add_module(part, nn.Module())
        module = getattr(module, part)
    if isinstance(value, nn.Parameter):
        module.register_parameter(leaf, nn.Parameter(value.detach().clone(),
                                                     requires_grad=value.requires_grad))
    elif isinstance(value, torch.Tensor):
        module.register_buffer(leaf, value.detach().clone())
    elif isinstance(value, nn.Module):
        module.add_module(leaf, value)
    else:
        setattr(module, leaf, value)


class GraphWriter:
    """A new graph filled from the traced one: ``get(node)`` returns the new node for an
    original one, copying constants, parameters and shape computations on first use."""

    def __init__(self, traced: TracedModel, dtype: torch.dtype):
        self.traced, self.dtype = traced, dtype
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.env: dict[fx.Node, fx.Node] = {}
        self._names: set[str] = set()
        self.graph_inputs: list[fx.Node] = []

    def placeholder(self, original: fx.Node, name: str | None = None) -> fx.Node:
        node = self.graph.placeholder(name or original.name)
        self.env[original] = node
        self.graph_inputs.append(node)
        return node

    def get(self, original: fx.Node) -> fx.Node:
        if original in self.env:
            return self.env[original]
        if original.op == "get_attr":
            _set_attribute(self.root, original.target, self.traced.attribute(original.target))
            self.env[original] = self.graph.get_attr(original.target)
            return self.env[original]
        if original.op == "call_function" and original.target is torch.ops.aten.sym_size.int \
                and original.args[1] == 0 and self.graph_inputs:
            # the batch size: the same for every batch-first value, read it from our input
            new = self.call(torch.ops.aten.sym_size.int, self.graph_inputs[0], 0)
            self.env[original] = new
            return new
        if original.op == "call_function" and (not self.traced.depends_on_input(original)
                                               or not isinstance(self.traced.value(original),
                                                                 torch.Tensor)):
            return self.copy(original)   # a constant or a shape computation
        raise KeyError(f"{original.name} is not available in the new graph")

    def copy(self, original: fx.Node) -> fx.Node:
        """The node as it is, reading the new nodes of its arguments."""
        new = self.graph.node_copy(original, self.get)
        self.env[original] = new
        return new

    def _unique(self, stem: str) -> str:
        name, k = stem, 1
        while name in self._names or hasattr(self.root, name):
            k += 1
            name = f"{stem}_{k}"
        self._names.add(name)
        return name

    def module(self, stem: str, module: nn.Module) -> str:
        name = self._unique(stem)
        self.root.add_module(name, module)
        return name

    def buffer(self, stem: str, value: torch.Tensor) -> fx.Node:
        name = self._unique(stem)
        self.root.register_buffer(name, value)
        return self.graph.get_attr(name)

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> fx.Node:
        return self.graph.call_function(fn, args, kwargs)

    def emit_merged(self, merged: MergedExit, source: fx.Node, source_shape: Sequence[int],
                    stem: str) -> fx.Node:
        """The merged exit computed from the new node ``source`` whose per-sample shape is
        ``source_shape`` (MergedExit's recipe)."""
        x = source
        if merged.kind == "linear":
            if len(source_shape) != 1:
                x = self.call(torch.flatten, x, 1)
            linear = nn.Linear(merged.weight.shape[1], merged.weight.shape[0],
                               bias=merged.bias is not None)
            _load(linear, merged.weight, merged.bias, self.dtype)
            y = self.graph.call_module(self.module(stem, linear), (x,))
            produced: tuple[int, ...] = (merged.weight.shape[0],)
        elif merged.kind == "polyphase":   # multirate: unshuffle, one conv, shuffle
            if tuple(source_shape) != tuple(merged.input_shape):
                x = self.call(torch.reshape, x, (-1, *merged.input_shape))
            module = traced_polyphase(merged.layout, merged.input_shape[1:], merged.window,
                                      self.dtype)
            y = self.graph.call_module(self.module(stem, module), (x,))
            if merged.bias_map is not None:
                y = self.call(torch.add, y, self.buffer(f"{stem}_bias_map",
                                                        merged.bias_map.to(self.dtype)))
            produced = (merged.layout.out_channels, *merged.window)
        elif merged.border_plan is not None:   # exact border: kernel inside, layers on strips
            if tuple(source_shape) != tuple(merged.input_shape):
                x = self.call(torch.reshape, x, (-1, *merged.input_shape))
            y = self.graph.call_module(self.module(stem, border_module(merged, self.dtype)), (x,))
            produced = (merged.weight.shape[0], *merged.border_plan.window)
        else:
            if tuple(source_shape) != tuple(merged.input_shape):
                x = self.call(torch.reshape, x, (-1, *merged.input_shape))
            if merged.pre_pad is not None and any(merged.pre_pad):
                x = self.call(F.pad, x, list(merged.pre_pad), mode=merged.pad_mode)
            conv = _conv_module(merged)
            _load(conv, merged.weight, merged.bias, self.dtype)
            y = self.graph.call_module(self.module(stem, conv), (x,))
            if merged.crop is not None:
                for axis, size in enumerate(merged.crop):
                    y = self.call(torch.narrow, y, 2 + axis, 0, size)
            if merged.bias_map is not None:
                y = self.call(torch.add, y, self.buffer(f"{stem}_bias_map",
                                                        merged.bias_map.to(self.dtype)))
            produced = (merged.weight.shape[0], *_conv_out(merged))
        if tuple(produced) != tuple(merged.exit_shape):
            y = self.call(torch.reshape, y, (-1, *merged.exit_shape))
        return y

    def output(self, structure: Any) -> None:
        self.graph.output(structure)

    def finish(self) -> fx.GraphModule:
        self.graph.lint()
        module = fx.GraphModule(self.root, self.graph, class_name="ConvertedModule")
        return module.eval()


def _conv_out(merged: MergedExit) -> tuple[int, ...]:
    """Spatial output size of the emitted conv (after crop)."""
    if merged.crop is not None:
        return tuple(merged.crop)
    sizes = list(merged.input_shape[1:])
    if merged.pre_pad is not None:
        pads = list(merged.pre_pad)
        for axis in range(len(sizes)):
            left, right = pads[2 * (len(sizes) - 1 - axis)], pads[2 * (len(sizes) - 1 - axis) + 1]
            sizes[axis] += left + right
    k = merged.weight.shape[2:]
    return tuple((n + 2 * p - d * (kk - 1) - 1) // s + 1 for n, p, d, kk, s in
                 zip(sizes, merged.conv_padding, merged.dilation, k, merged.stride))


def _conv_module(merged: MergedExit) -> nn.Module:
    ndim = merged.weight.ndim - 2
    c_out, c_in = merged.weight.shape[0], merged.weight.shape[1] * merged.groups
    return _CONVS[ndim](c_in, c_out, tuple(merged.weight.shape[2:]), stride=merged.stride,
                        padding=merged.conv_padding, dilation=merged.dilation,
                        groups=merged.groups, bias=merged.bias is not None,
                        padding_mode=merged.conv_padding_mode)


@torch.no_grad()
def _load(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None,
          dtype: torch.dtype) -> None:
    """The float64 weights, rounded once to ``dtype``."""
    module.to(dtype)
    module.weight.copy_(weight.to(dtype))
    if bias is not None:
        module.bias.copy_(bias.to(dtype))
    module.eval()


def _needed(traced: TracedModel, merged: dict[fx.Node, tuple[Segment, MergedExit]],
            merged_members: set[fx.Node]) -> set[fx.Node]:
    """Original nodes the new graph needs: from the outputs backwards, a merged exit
    needing only its segment's source."""
    needed: set[fx.Node] = set()
    stack = list(traced.output_node.all_input_nodes)
    while stack:
        node = stack.pop()
        if node in needed:
            continue
        needed.add(node)
        if node in merged:
            stack.append(merged[node][0].source)
        elif node in merged_members:
            raise AssertionError(f"{node.name} is inside a merged segment but read outside it")
        else:
            stack.extend(node.all_input_nodes)
    return needed


def converted_module(traced: TracedModel, part: Partition,
                     plans: dict[str, list[MergedExit]], dtype: torch.dtype) -> fx.GraphModule:
    """The traced graph with the segments named in ``plans`` replaced by their merged
    exits (module docstring)."""
    merged: dict[fx.Node, tuple[Segment, MergedExit]] = {}
    members: set[fx.Node] = set()
    for segment in part.segments:
        if segment.name in plans:
            members.update(segment.nodes)
            for m in plans[segment.name]:
                merged[m.exit] = (segment, m)
    needed = _needed(traced, merged, members)
    writer = GraphWriter(traced, dtype)
    for node in traced.nodes:
        if node.op == "placeholder":
            writer.placeholder(node)
        elif node.op == "output":
            flat = [writer.get(a) if isinstance(a, fx.Node) else a
                    for a in pytree.tree_leaves(node.args[0])]
            spec = traced.program.call_spec.out_spec
            writer.output(pytree.tree_unflatten(flat, spec) if spec is not None else flat[0])
        elif node not in needed:
            continue
        elif node in merged:
            segment, m = merged[node]
            writer.env[node] = writer.emit_merged(m, writer.get(segment.source),
                                                  traced.shape(segment.source),
                                                  f"{segment.name}_{node.name}")
        else:
            writer.get(node) if node.op == "get_attr" else writer.copy(node)
    return writer.finish()


def segment_modules(traced: TracedModel, segment: Segment, merged: Sequence[MergedExit] | None,
                    dtype: torch.dtype) -> tuple[fx.GraphModule | None, fx.GraphModule | None]:
    """Two small modules mapping the segment's input to its exits: the original layers,
    and (given) the merged form; None when the segment reads other inputs (a shape
    computed from the model input), so it cannot be run alone."""
    try:
        original = GraphWriter(traced, dtype)
        original.placeholder(segment.source, "x")
        for node in segment.nodes:
            original.copy(node)
        original.output(tuple(original.get(e) for e in segment.exits))
        first = original.finish()
    except KeyError:
        return None, None
    if merged is None:
        return first, None
    return first, merged_module(traced, segment, merged, dtype)


def merged_module(traced: TracedModel, segment: Segment, merged: Iterable[MergedExit],
                  dtype: torch.dtype) -> fx.GraphModule:
    writer = GraphWriter(traced, dtype)
    x = writer.placeholder(segment.source, "x")
    shape = traced.shape(segment.source)
    outs = tuple(writer.emit_merged(m, x, shape, f"{segment.name}_{m.exit.name}")
                 for m in merged)
    writer.output(outs)
    return writer.finish()
