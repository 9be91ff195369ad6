"""The collapse theorem: a linear network is one operator ``down_S ∘ K(z) ∘ up_U + b``,
exact on a region that this module computes.

Two semantics:

* **periodic** — every layer is size-keeping on an ``n``-periodic grid (circular convs with
  ``left + right = d(k-1)``, 1x1 convs, non-overlapping pools, strides dividing sizes) and
  at least one conv is circular: the network is ``y = down_S((K X) mod (z^n - 1)) + b``,
  exact at every output position.
* **zero-extended** — otherwise the input is the finite signal ``X(z)`` (zero outside the
  window) and ``c = A X + b`` is the collapsed value on all of ``Z^n``.  A layer reads its
  input on taps ``j = (s i - e) / u``; the layer-by-layer value equals ``c`` at ``i`` when
  every tap ``j`` either lies inside the input window where the input was already exact, or
  lies outside it where the layer's padding supplies 0 *and* ``c`` is identically 0 there
  (outside the support of ``A X`` and no bias).  Circular/reflect/replicate padding inside a
  zero-extended network supplies values ``c`` does not have, so such taps are inexact; an
  average pool that excludes padding divides by a different count at the border.

The region is computed per node and per channel (:mod:`algebra.regions`) for generic
weights with the given zero pattern, so it is tight: outside it the two sides differ for
generic weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .memory import check_budget, estimate_bytes
from .network import (Add, AvgPool, ChannelAffine, Concat, Conv, ConvTranspose, Flatten,
                      Input, Linear, Network, Shape, Split)
from .operator import ConvOperator, vstack
from .protocols import CollapseBackend
from .regions import Extent, TapPattern, merge_add, merge_concat, propagate
from .signal import apply_operator

__all__ = ["CollapseResult", "collapse", "collapse_walk", "AlgebraBackend", "WalkResult",
           "is_periodic_network"]


def _tap_pattern(op: ConvOperator) -> TapPattern:
    """``{e: mask}`` with ``mask[o, c]`` set when ``K_{o,c}`` has a nonzero ``z^e`` term."""
    pattern: TapPattern = {}
    shape = op.shape
    for o, row in enumerate(op.matrix):
        for c, entry in enumerate(row):
            for e, _ in entry.iterterms():
                pattern.setdefault(e, np.zeros(shape, bool))[o, c] = True
    return pattern


def is_periodic_network(network: Network, shapes: dict[str, Shape]) -> bool:
    """True when every spatial layer is size-keeping on a periodic grid and some conv is
    circular (see the module docstring)."""
    circular = False
    for name in network.order():
        node = network.nodes[name]
        if isinstance(node, Conv):
            size = shapes[node.input][1:]
            if any(n % s for n, s in zip(size, node.stride)):
                return False
            extent = [d * (k - 1) for k, d in zip(node.kernel_size, node.dilation)]
            pads = [l + r for l, r in node.padding]
            if node.mode == "circular" and pads == extent:
                circular = True
            elif not (all(x == 0 for x in extent) and all(p == 0 for p in pads)):
                return False
        elif isinstance(node, AvgPool):
            size = shapes[node.input][1:]
            if any(node.padding) or node.kernel_size != node.stride or \
                    any(n % s for n, s in zip(size, node.stride)):
                return False
        elif isinstance(node, (ConvTranspose, Flatten, Linear)):
            return False
    return circular


@dataclass
class CollapseResult:
    """A collapsed network: ``operator`` equals the network at the output positions where
    ``region`` is True (for an input of shape ``input_shape``)."""
    operator: ConvOperator
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    region: np.ndarray
    periodic: bool

    @property
    def exact_everywhere(self) -> bool:
        return bool(self.region.all())

    def region_box(self) -> tuple[tuple[int, int], ...] | None:
        """Per axis ``(first, last)`` exact output position; ``None`` if none is exact."""
        if not self.region.any():
            return None
        coords = np.argwhere(self.region)
        return tuple((int(lo), int(hi)) for lo, hi in zip(coords.min(0), coords.max(0)))

    def apply(self, x: Any) -> np.ndarray:
        """The collapsed operator applied exactly to ``x`` (shape ``input_shape``): equal to
        the network on ``region`` (periodic semantics when ``periodic``)."""
        if tuple(np.shape(x)) != tuple(self.input_shape):
            raise ValueError(f"expected an input of shape {self.input_shape}, got {tuple(np.shape(x))}")
        return apply_operator(self.operator, x, self.output_shape[1:], periodic=self.periodic)

    def where(self) -> str:
        """Where the collapse is exact, in words."""
        if self.periodic:
            return (f"exact at every position on {self.input_shape[1:]}-periodic inputs "
                    "(circular padding)")
        if self.exact_everywhere:
            return "exact at every output position"
        box = self.region_box()
        return (f"exact on {int(self.region.sum())} of {self.region.size} output positions"
                + (f", bounding box {box}" if box else ": nowhere"))

    def describe(self) -> str:
        op = self.operator
        kernel = "x".join(map(str, op.kernel_size))
        upsample = op.upsample
        head = (f"{op.out_channels}x{op.in_channels} operator, kernel {kernel}, stride "
                f"{op.stride}" + (f", up-sampling {upsample}" if any(u > 1 for u in upsample) else ""))
        return f"{head}; {self.where()}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


class AlgebraBackend:
    """The exact :class:`~laurentnet.algebra.protocols.CollapseBackend`: makes and combines
    :class:`ConvOperator` layers for :func:`collapse_walk` (:mod:`laurentnet.numeric` has
    the float twin)."""

    def __init__(self, network: Network):
        self.ring = network.ring()

    def identity(self, channels: int) -> ConvOperator:
        return ConvOperator.identity(self.ring, channels)

    def node_operator(self, node: Any, in_shape: Shape) -> ConvOperator:
        return node.operator(self.ring, in_shape)

    def combine(self, ops: Sequence[ConvOperator], coefficients: Sequence[Any]) -> ConvOperator:
        total = None
        for op, c in zip(ops, coefficients):
            part = op if c == 1 else op * c
            total = part if total is None else total + part
        return total

    def vstack(self, ops: Sequence[ConvOperator]) -> ConvOperator:
        return vstack(ops)

    def tap_pattern(self, op: ConvOperator) -> TapPattern:
        return _tap_pattern(op)

    def bias_mask(self, op: ConvOperator) -> np.ndarray:
        zero = op.ring.domain.zero
        return np.array([b != zero for b in op.bias], dtype=bool)


def _padding_rule(node: Any) -> str:
    """What a layer reads outside its input window (see :func:`algebra.regions.propagate`)."""
    if isinstance(node, Conv) and any(pair != (0, 0) for pair in node.padding):
        return node.mode
    if isinstance(node, AvgPool) and not node.count_include_pad and any(node.padding):
        return "exclude_pad"
    return "zeros"


@dataclass
class WalkResult:
    """What :func:`collapse_walk` found: the collapsed operator (of the backend's twin), the
    shape of every node, the exact region over the output positions, and the semantics."""
    operator: Any
    shapes: dict[str, Shape]
    region: np.ndarray
    periodic: bool


def collapse_walk(network: Network, input_shape: Sequence[int], backend: CollapseBackend,
                  periodic: bool | None = None) -> WalkResult:
    """Compose every node's operator along the DAG (``backend`` makes them) and propagate
    the exact region (see the module docstring)."""
    if not isinstance(network, Network):
        raise TypeError(f"expected an algebra.Network, got {type(network).__name__}")
    if periodic not in (None, True, False):
        raise TypeError(f"periodic must be None, True or False, got {periodic!r}")
    shapes = network.shapes(input_shape)
    check_budget(sum(estimate_bytes(shape, np.bool_) * 3 for shape in shapes.values()),
                 "the exact-region masks of this network")
    detected = is_periodic_network(network, shapes)
    if periodic is True and not detected:
        raise ValueError("the network is not periodic: every conv must be circular and "
                         "size-keeping (or 1x1), pools non-overlapping, strides dividing sizes")
    use_periodic = detected if periodic is None else periodic
    ops: dict[str, Any] = {}
    extents: dict[str, Extent] = {}
    for name in network.order():
        node = network.nodes[name]
        shape = shapes[name]
        window = shape[1:]
        if isinstance(node, Input):
            ops[name] = backend.identity(shape[0])
            extents[name] = Extent.of_input(shape[0], window)
            continue
        if isinstance(node, (Flatten, Linear)):
            raise ValueError(f"node {name!r} ({node.describe()}) is not a convolution; "
                             "collapse the network to an affine map (collapse_affine) instead")
        local = None
        try:
            if isinstance(node, Add):
                ops[name] = backend.combine([ops[t] for t in node.terms],
                                            node.coefficients or (1,) * len(node.terms))
            elif isinstance(node, Concat):
                ops[name] = backend.vstack([ops[p] for p in node.parts])
            else:
                (parent,) = node.inputs
                local = backend.node_operator(node, shapes[parent])
                ops[name] = local @ ops[parent]
        except ValueError as exc:
            raise ValueError(f"node {name!r} ({node.describe()}): {exc}") from None
        if use_periodic:
            continue
        biased = backend.bias_mask(ops[name])
        parents = [extents[p] for p in node.inputs]
        if isinstance(node, Add):
            extents[name] = merge_add(parents, biased)
        elif isinstance(node, Concat):
            extents[name] = merge_concat(parents, biased)
        elif isinstance(node, (ChannelAffine, Split)):
            src = parents[0]
            rows = slice(node.start, node.stop) if isinstance(node, Split) else slice(None)
            extents[name] = Extent(window, src.exact[rows].copy(), src.support_offset,
                                   src.support[rows], biased)
        else:
            extents[name] = propagate(parents[0], backend.tap_pattern(local), tuple(local.stride),
                                      tuple(local.upsample),
                                      window, _padding_rule(node), biased, shape[0])
    out = network.output_name
    if len(shapes[out]) != network.ndim + 1:
        raise ValueError("the network output is not an image; use collapse_affine")
    region = np.ones(shapes[out][1:], bool) if use_periodic else extents[out].region()
    return WalkResult(ops[out], shapes, region, use_periodic)


def collapse(network: Network, input_shape: Sequence[int], *, periodic: bool | None = None
             ) -> CollapseResult:
    """Collapse a linear network (no flatten/linear) for inputs of ``input_shape`` into one
    exact operator and its exact region.  ``periodic=None`` detects the periodic case;
    ``True`` requires it; ``False`` uses zero-extended semantics."""
    walk = collapse_walk(network, input_shape, AlgebraBackend(network), periodic)
    return CollapseResult(walk.operator, tuple(walk.shapes["input"]),
                          walk.shapes[network.output_name], walk.region, walk.periodic)
