"""The memory guard's pre-flight for a collapse: the walk's peak memory from shapes alone.

:func:`~laurentnet.algebra.collapse.collapse_walk` composes one operator per node and keeps
it while a later node still reads it.  Before anything is built, :func:`walk_footprint`
replays the walk on :class:`OperatorShape` s — the channel coupling pattern and the
exponent box of each operator — and asks the backend what one operator, one layer and one
product of that shape cost (:class:`FootprintModel`).  The peak is the largest, over the
steps, of the operators alive plus the layer being built plus the product being formed.

The box follows the noble identities the operators use: composing ``outer`` (stride
``s_o``, up-sampling ``u_o``) after ``inner`` (``S_i``, ``U_i``) substitutes
``z -> z^{S_i}`` in ``outer`` and ``z -> z^{u_o}`` in ``inner``, so the exponent box is

    low = low_o S_i + low_i u_o,    high = high_o S_i + high_i u_o,

strides and up-samplings multiply, and channel ``o`` reaches input channel ``c`` when some
middle channel ``m`` links both (the Boolean product of the coupling patterns).  Sums and
stacks take the union of the boxes.  For dense kernels these sizes are exact; a backend
that stores only nonzero terms (the exact side) gets an upper bound.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from .network import (AdaptiveAvgPool, Add, AvgPool, ChannelAffine, Concat, Conv, ConvTranspose,
                      Flatten, GlobalAvgPool, Input, Linear, Network, Shape, Split)

__all__ = ["OperatorShape", "FootprintModel", "node_shape", "walk_footprint", "consumers"]


@dataclass(frozen=True)
class OperatorShape:
    """The memory-relevant shape of ``down_S K(z) up_U``: ``coupled[o, c]`` when
    ``K_{o,c}`` may be nonzero, and the exponent box ``low..high`` per axis."""
    coupled: np.ndarray
    low: tuple[int, ...]
    high: tuple[int, ...]
    stride: tuple[int, ...]
    upsample: tuple[int, ...]

    @property
    def rows(self) -> int:
        return int(self.coupled.shape[0])

    @property
    def cols(self) -> int:
        return int(self.coupled.shape[1])

    @property
    def box(self) -> tuple[int, ...]:
        """Taps per axis of the dense box."""
        return tuple(h - l + 1 for l, h in zip(self.low, self.high))

    @property
    def taps(self) -> int:
        return int(np.prod(self.box, dtype=object))

    @property
    def pairs(self) -> int:
        """Channel pairs ``(o, c)`` whose entry may be nonzero."""
        return int(np.count_nonzero(self.coupled))

    def compose(self, inner: "OperatorShape") -> "OperatorShape":
        """The shape of ``self ∘ inner`` (see the module docstring)."""
        if self.coupled.all():  # dense outer: every row reaches every used inner column
            coupled = np.repeat(inner.coupled.any(axis=0)[None], self.rows, axis=0)
        else:
            coupled = (self.coupled.astype(np.float32) @ inner.coupled.astype(np.float32)) > 0
        return OperatorShape(
            coupled,
            tuple(lo * s + li * u for lo, s, li, u in
                  zip(self.low, inner.stride, inner.low, self.upsample)),
            tuple(ho * s + hi * u for ho, s, hi, u in
                  zip(self.high, inner.stride, inner.high, self.upsample)),
            tuple(a * b for a, b in zip(self.stride, inner.stride)),
            tuple(a * b for a, b in zip(self.upsample, inner.upsample)))

    @staticmethod
    def union(parts: Sequence["OperatorShape"], stack: bool) -> "OperatorShape":
        """The shape of a sum (``stack=False``) or channel stack of ``parts``."""
        coupled = np.concatenate([p.coupled for p in parts]) if stack else \
            np.logical_or.reduce([p.coupled for p in parts])
        first = parts[0]
        return OperatorShape(coupled, tuple(min(v) for v in zip(*(p.low for p in parts))),
                             tuple(max(v) for v in zip(*(p.high for p in parts))),
                             first.stride, first.upsample)


class FootprintModel(Protocol):
    """What one twin's operators cost in bytes (the backends implement it)."""

    def operator_bytes(self, shape: OperatorShape) -> int:
        """An operator of this shape, held."""
    def layer_bytes(self, shape: OperatorShape) -> int:
        """Building one layer's operator of this shape (the operator plus its temporaries)."""
    def product_bytes(self, outer: OperatorShape, inner: OperatorShape,
                      result: OperatorShape) -> int:
        """Composing ``outer ∘ inner`` into ``result``, beyond holding the three."""
    # optional: ``result_bytes(shape)``, converting the walk's result (held) into the type
    # the caller gets, when that differs from the backend's own operators


def _eye(channels: int) -> np.ndarray:
    return np.eye(channels, dtype=bool)


def _conv_coupling(node: Conv) -> np.ndarray:
    """``coupled[o, c]``: the weight has a nonzero tap from input channel ``c`` to output
    ``o`` (grouped convolutions are block diagonal; zero filters couple nothing)."""
    c_out, per_group = node.weight.shape[:2]
    taps = np.zeros((c_out, per_group), bool)
    for start in range(0, c_out, 64):  # in blocks: a few MB of temporaries at any width
        block = node.weight[start:start + 64]
        taps[start:start + 64] = np.asarray(block != 0).reshape(len(block), per_group, -1).any(2)
    coupled = np.zeros((c_out, per_group * node.groups), bool)
    out_per_group = c_out // node.groups
    for g in range(node.groups):
        rows = slice(g * out_per_group, (g + 1) * out_per_group)
        coupled[rows, g * per_group:(g + 1) * per_group] = taps[rows]
    return coupled


def _transpose_coupling(c_in: int, c_out: int, groups: int) -> np.ndarray:
    """Block-diagonal coupling of a grouped transposed convolution."""
    out_index = np.arange(c_out) // (c_out // groups)
    in_index = np.arange(c_in) // (c_in // groups)
    return out_index[:, None] == in_index[None, :]


def node_shape(node: Any, in_shape: Shape) -> OperatorShape:
    """The :class:`OperatorShape` of one single-input layer, from its parameters alone."""
    c, *n = in_shape
    ndim = len(n)
    ones = (1,) * ndim
    if isinstance(node, Conv):
        k = node.kernel_size
        left = tuple(l for l, _ in node.padding)
        low = tuple(p - d * (kk - 1) for p, d, kk in zip(left, node.dilation, k))
        return OperatorShape(_conv_coupling(node), low, left, tuple(node.stride), ones)
    if isinstance(node, ConvTranspose):
        k = node.weight.shape[2:]
        c_out = node.weight.shape[1] * node.groups
        low = tuple(-p for p in node.padding)
        high = tuple(d * (kk - 1) - p for kk, d, p in zip(k, node.dilation, node.padding))
        return OperatorShape(_transpose_coupling(c, c_out, node.groups), low, high, ones,
                             tuple(node.stride))
    if isinstance(node, ChannelAffine):
        return OperatorShape(_eye(c), (0,) * ndim, (0,) * ndim, ones, ones)
    if isinstance(node, Split):
        return OperatorShape(_eye(c)[node.start:node.stop], (0,) * ndim, (0,) * ndim, ones, ones)
    if isinstance(node, (AvgPool, AdaptiveAvgPool)):
        form = node.strided_form(n)
        low = tuple(p - (kk - 1) for p, kk in zip(form.padding, form.kernel))
        return OperatorShape(_eye(c), low, tuple(form.padding), tuple(form.stride), ones)
    if isinstance(node, GlobalAvgPool):
        return OperatorShape(_eye(c), tuple(1 - m for m in n), (0,) * ndim, tuple(n), ones)
    raise TypeError(f"no operator shape for {type(node).__name__}")


def consumers(network: Network) -> dict[str, int]:
    """How many later nodes read each node (the output counts as one more reader)."""
    count = {name: 0 for name in network.nodes}
    for name in network.order():
        for parent in network.nodes[name].inputs:
            count[parent] += 1
    count[network.output_name] += 1
    return count


def walk_footprint(network: Network, shapes: dict[str, Shape], model: FootprintModel
                   ) -> tuple[int, str]:
    """The peak bytes of collapsing ``network`` (``shapes`` from ``network.shapes``) and the
    node at which it is reached; operators are freed after their last reader, as the walk
    does."""
    left = consumers(network)
    live: dict[str, OperatorShape] = {}
    held = 0
    peak, where = 0, "input"
    for name in network.order():
        node = network.nodes[name]
        shape = shapes[name]
        if isinstance(node, Input):
            op = OperatorShape(_eye(shape[0]), (0,) * network.ndim, (0,) * network.ndim,
                               (1,) * network.ndim, (1,) * network.ndim)
            step = model.layer_bytes(op)
        elif isinstance(node, (Flatten, Linear)):
            break  # the walk refuses these; the affine map is estimated on its own
        elif isinstance(node, (Add, Concat)):
            parts = [live[p] for p in node.inputs]
            op = OperatorShape.union(parts, stack=isinstance(node, Concat))
            step = model.operator_bytes(op)
        else:
            (parent,) = node.inputs
            local = node_shape(node, shapes[parent])
            op = local.compose(live[parent])
            step = model.layer_bytes(local) + model.operator_bytes(op) + \
                model.product_bytes(local, live[parent], op)
        if held + step > peak:
            peak, where = held + step, name
        live[name] = op
        held += model.operator_bytes(op)
        for parent in node.inputs:
            left[parent] -= 1
            if left[parent] == 0:
                held -= model.operator_bytes(live.pop(parent))
    # a backend whose result is converted into another twin at the end (the FLINT one)
    result_bytes = getattr(model, "result_bytes", None)
    out = network.output_name
    if result_bytes is not None and out in live and held + result_bytes(live[out]) > peak:
        peak, where = held + result_bytes(live[out]), out
    return peak, where
