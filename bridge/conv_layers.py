"""The convolution layers of any model the bridge can trace, and their cost.

:func:`find_conv_layers` traces the model (:func:`~laurentnet.bridge.trace.trace_model`:
``torch.export``, or ``torch.fx`` then ``torch.export``) and lists every ATen convolution
(``conv{1,2,3}d``, ``convolution``) with its weight's name in the model
(``"stages.0.0.conv1.weight"``), shapes, hyper-parameters and output size.  A layer is
*decomposable* into basis convolutions when its weight is a tensor of the model used by
that convolution only (not computed in ``forward``, not shared with another op), it is not
transposed and has ``groups = 1``; otherwise :attr:`ConvLayer.reason` says why not.
The layer's name is its weight's name without ``.weight`` (the module path of an
``nn.Conv2d``).

Multiply-adds per sample: ``P · C_out · (C_in / g) · Π k`` for a convolution with ``P``
output positions (per call), ``P · out · in`` for a linear layer; with rank ``r`` in the
basis form ``P · (r · C_in · Π k + C_out · r)``.

:func:`substituted_weights` temporarily replaces weights of a model in place (restored bit
for bit afterwards): how a layer decomposed at a rank is scored without building a model.
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import torch
from torch import fx, nn

from ..algebra.errors import InvalidInputError
from .trace import TracedModel, trace_model

__all__ = ["ConvLayer", "ConvLayers", "find_conv_layers", "substituted_weights", "tensor_at",
           "CONV_OPS"]

_aten = torch.ops.aten
#: ATen convolution overloads the decomposition understands
CONV_OPS = (_aten.conv1d.default, _aten.conv2d.default, _aten.conv3d.default,
            _aten.conv1d.padding, _aten.conv2d.padding, _aten.conv3d.padding,
            _aten.convolution.default)
_LINEAR_OPS = (_aten.linear.default,)


def tensor_at(model: nn.Module, name: str) -> torch.Tensor:
    """The parameter or buffer ``name`` (``"layer1.0.conv1.weight"``) of ``model``."""
    try:
        value = functools.reduce(getattr, name.split("."), model)
    except AttributeError:
        raise InvalidInputError(f"the model has no tensor named {name!r}") from None
    if not isinstance(value, torch.Tensor):
        raise InvalidInputError(f"{name!r} is not a tensor of the model")
    return value


def conv_arguments(node: fx.Node) -> dict[str, Any]:
    """The arguments of an ATen convolution node by name, defaults filled in."""
    values = {}
    for i, argument in enumerate(node.target._schema.arguments):
        if i < len(node.args):
            values[argument.name] = node.args[i]
        elif argument.name in node.kwargs:
            values[argument.name] = node.kwargs[argument.name]
        else:
            values[argument.name] = argument.default_value
    return values


@dataclass
class ConvLayer:
    """One convolution of a traced model (module docstring).  ``padding`` is a tuple of
    ints or ``"same"``/``"valid"``; ``output_shape`` is per sample ``(C_out, *n)``;
    ``calls`` is how many convolution nodes use the weight (all with the same
    hyper-parameters); ``padding_mode`` is ``"zeros"`` (another mode is a separate pad op in
    the traced graph); ``reason`` is None when the layer is decomposable."""
    name: str
    weight_name: str
    bias_name: str | None
    ndim: int
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: Any
    dilation: tuple[int, ...]
    groups: int
    output_shape: tuple[int, ...]
    calls: int = 1
    reason: str | None = None

    @property
    def decomposable(self) -> bool:
        return self.reason is None

    @property
    def taps(self) -> int:
        """``(C_in / g) · Π k``: the length of one filter."""
        return self.in_channels // self.groups * math.prod(self.kernel_size)

    @property
    def max_rank(self) -> int:
        """``min(C_out, C_in·Π k)``: the rank of a full-rank decomposition."""
        return min(self.out_channels, self.taps)

    @property
    def break_even_rank(self) -> int:
        """The largest ``r`` whose basis form needs fewer multiply-adds than the layer,
        ``r < C_out C_in Π k / (C_in Π k + C_out)`` (0 if there is none)."""
        dense = self.out_channels * self.taps
        return max(0, -(-dense // (self.taps + self.out_channels)) - 1)

    @property
    def positions(self) -> int:
        """Output positions per sample, over all calls."""
        return math.prod(self.output_shape[1:]) * self.calls

    def multiply_adds(self, rank: int | None = None) -> int:
        """Per sample: dense (``rank=None``) or in the basis form of rank ``rank``."""
        if rank is None:
            return self.positions * self.out_channels * self.taps
        return self.positions * (rank * self.taps + self.out_channels * rank)

    def parameters(self, rank: int | None = None, bias: bool = True) -> int:
        """Weights (and biases): ``C_out C_in Π k`` dense, ``r C_in Π k + C_out r`` with
        rank ``r`` (``C_out`` more for the bias)."""
        extra = self.out_channels if bias and self.bias_name else 0
        if rank is None:
            return self.out_channels * self.taps + extra
        return rank * self.taps + self.out_channels * rank + extra

    def describe(self) -> str:
        k = "x".join(map(str, self.kernel_size))
        return f"{self.name}: {self.in_channels}->{self.out_channels} {k}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight_name, "in_channels": self.in_channels,
                "out_channels": self.out_channels, "kernel_size": list(self.kernel_size),
                "stride": list(self.stride), "groups": self.groups,
                "output_shape": list(self.output_shape), "max_rank": self.max_rank,
                "break_even_rank": self.break_even_rank, "multiply_adds": self.multiply_adds(),
                "parameters": self.parameters(), "decomposable": self.decomposable,
                "reason": self.reason}


@dataclass
class ConvLayers:
    """What :func:`find_conv_layers` found: every convolution (``layers``, decomposable or
    not), the multiply-adds of the other linear layers (``other_multiply_adds``) and the
    trace."""
    layers: list[ConvLayer]
    other_multiply_adds: int
    traced: TracedModel = field(repr=False)

    @property
    def decomposable(self) -> list[ConvLayer]:
        return [layer for layer in self.layers if layer.decomposable]

    def multiply_adds(self, ranks: Mapping[str, int] | None = None) -> int:
        """Per sample, of the convolutions and linear layers, with the layers named in
        ``ranks`` in the basis form of that rank."""
        ranks = ranks or {}
        return self.other_multiply_adds + sum(layer.multiply_adds(ranks.get(layer.name))
                                              for layer in self.layers)

    def __getitem__(self, name: str) -> ConvLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        names = ", ".join(layer.name for layer in self.decomposable) or "(none)"
        raise InvalidInputError(f"the model has no convolution layer named {name!r}; its "
                                f"decomposable layers are: {names}")


def _ints(value: Any, ndim: int) -> tuple[int, ...]:
    if isinstance(value, str):
        return value  # type: ignore[return-value]
    values = tuple(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return values * ndim if len(values) == 1 else values


def _node_layer(traced: TracedModel, node: fx.Node) -> ConvLayer | str:
    """The layer of one conv node, or the reason it has none (its weight is not a tensor of
    the model)."""
    args = conv_arguments(node)
    weight, bias = args["weight"], args["bias"]
    if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
        return "its weight is computed in forward(), not a tensor of the model"
    w = traced.attribute(weight.target)
    ndim = w.ndim - 2
    transposed = bool(args.get("transposed", False))
    groups = int(args["groups"])
    bias_name = bias.target if isinstance(bias, fx.Node) and bias.op == "get_attr" else None
    reason = None
    if transposed:
        reason = "a transposed convolution"
    elif groups != 1:
        reason = f"a grouped convolution (groups={groups}): basis filters would mix the groups"
    elif bias is not None and bias_name is None:
        reason = "its bias is computed in forward(), not a tensor of the model"
    out = traced.shape(node)
    name = weight.target[:-len(".weight")] if weight.target.endswith(".weight") else weight.target
    c_in = w.shape[1] * groups
    return ConvLayer(name, weight.target, bias_name, ndim, int(c_in), int(w.shape[0]),
                     tuple(int(k) for k in w.shape[2:]), _ints(args["stride"], ndim),
                     _ints(args["padding"], ndim), _ints(args["dilation"], ndim), groups,
                     tuple(out) if out else (int(w.shape[0]),), 1, reason)


def _same_call(a: ConvLayer, b: ConvLayer) -> bool:
    return (a.stride, a.padding, a.dilation, a.groups, a.bias_name) == \
        (b.stride, b.padding, b.dilation, b.groups, b.bias_name)


def _linear_macs(traced: TracedModel, node: fx.Node) -> int:
    weight = node.args[1]
    if not isinstance(weight, fx.Node):
        return 0
    val = weight.meta.get("val")
    out = traced.shape(node)
    if val is None or out is None:
        return 0
    return int(val.numel()) * math.prod(out[:-1])


def _exclusive_uses(traced: TracedModel, layers: dict[str, ConvLayer]) -> None:
    """A weight (or bias) that any other op reads is not decomposable."""
    for node in traced.nodes:
        if node.op != "get_attr":
            continue
        for layer in layers.values():
            if node.target in (layer.weight_name, layer.bias_name) and layer.reason is None:
                others = [u for u in node.users if u.target not in CONV_OPS]
                if others:
                    layer.reason = (f"its {'weight' if node.target == layer.weight_name else 'bias'}"
                                    f" is also read by {others[0].name}")


def find_conv_layers(model: nn.Module | torch.export.ExportedProgram,
                     example_input: torch.Tensor) -> ConvLayers:
    """Every convolution of ``model`` traced on ``example_input`` (module docstring)."""
    traced = trace_model(model, example_input)
    layers: dict[str, ConvLayer] = {}
    other = 0
    for node in traced.nodes:
        if node.op != "call_function":
            continue
        if node.target in _LINEAR_OPS:
            other += _linear_macs(traced, node)
            continue
        if node.target not in CONV_OPS:
            continue
        found = _node_layer(traced, node)
        if isinstance(found, str):
            other += _node_macs(traced, node)
            continue
        if found.name in layers:
            first = layers[found.name]
            first.calls += 1
            if not _same_call(first, found) and first.reason is None:
                first.reason = "its weight is used by convolutions with different settings"
            continue
        layers[found.name] = found
    _exclusive_uses(traced, layers)
    return ConvLayers(list(layers.values()), other, traced)


def _node_macs(traced: TracedModel, node: fx.Node) -> int:
    """Multiply-adds of a convolution whose weight is computed (for the totals)."""
    weight = conv_arguments(node)["weight"]
    val = weight.meta.get("val") if isinstance(weight, fx.Node) else None
    out = traced.shape(node)
    if val is None or out is None:
        return 0
    return int(val.numel()) * math.prod(out[1:])


@contextlib.contextmanager
def substituted_weights(model: nn.Module, weights: Mapping[str, torch.Tensor]
                        ) -> Iterator[nn.Module]:
    """Within the block, the tensors ``weights`` (name -> value) replace the model's own
    (in place, under ``no_grad``); afterwards the originals are back bit for bit."""
    saved = {}
    try:
        with torch.no_grad():
            for name, value in weights.items():
                target = tensor_at(model, name)
                if tuple(value.shape) != tuple(target.shape):
                    raise InvalidInputError(f"{name}: a {tuple(value.shape)} tensor cannot "
                                            f"replace the {tuple(target.shape)} one")
                saved[name] = target.detach().clone()
                target.copy_(value)
        yield model
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                tensor_at(model, name).copy_(value)
