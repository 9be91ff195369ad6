"""Exact borders at kernel cost: the collapsed kernel on the interior, the original layers
on thin border strips.

For zero, reflect and replicate padding a collapsed kernel ``y = down_S K(z) X + b``
equals the layer-by-layer network ``N`` only on an interior region (:mod:`algebra.regions`).
A :class:`BorderPlan` makes the result exact at EVERY output position while its cost grows
like the image (area x kernel) plus the perimeter (band x depth), not like a dense affine
map (the image squared):

* the **interior** is a box ``I = Π_a [lo_a, hi_a)`` of output positions inside the exact
  region; there ``y = K X + b`` (one convolution on the input slice that ``I`` reads);
* the **border band** (the output window minus ``I``) is cut into ``2 * ndim`` slabs,
  nested so that every position is in exactly one piece (in 2-D: top and bottom rows over
  the full width, then left and right columns over the interior rows — corners once);
  each piece is computed by running the ORIGINAL layers on an input **strip** — the input
  box that the piece needs — and cropping the strip's output to the piece.

**Why a strip gives the exact values** (:func:`strip_box`).  Per axis, write node ``v``'s
positions in full-image coordinates and let ``S_v`` be its cumulative stride.  A layer
``u -> v`` (convolution with left padding ``p_l``, kernel ``k``, dilation ``d``, stride
``s``; an average pool; the identity for scales, splits, sums and concatenations) computes
position ``i`` of ``v`` from positions ``j = s i + t`` of ``u`` with
``t ∈ [t_min, t_max] = [-p_l, d (k - 1) - p_l]``.  Going backwards from the piece's output
box, each node gets the hull ``need[v] = [lo, hi)`` of the positions some needed output
reads: ``need[u] ⊇ [s lo + t_min, s (hi - 1) + t_max + 1)`` clipped to ``[0, n_u)``, plus,
for reflect/replicate padding, the in-window positions ``m(j)`` that padding copies
(:func:`algebra.regions.mode_index`); a hull reaching an edge of ``v``'s window
(``lo = 0`` or ``hi = n_v``) is extended to the same edge of ``u``'s.  The strip is the input box ``[A, B) = need[input]``
with ``A`` rounded down to a multiple of ``L = lcm_v S_v`` (so every node of the strip sits
on the same grid as the full image: strip position ``i'`` of ``v`` is full position
``i' + A / S_v``).  By induction over the nodes in graph order, the strip's value of ``v``
equals the full network's at every position of ``need[v]``: the input agrees on ``[A, B)``;
a needed position reads only (a) positions of ``need[u]`` (equal by induction) or (b)
positions outside ``[0, n_u)`` — padding of the real image edge.  In case (b) the clip
made ``need[u]`` reach that edge, so by the edge rule the hulls of all its ancestors reach
the same edge, hence ``A = 0`` (left) or ``B = n`` (right), and the strip's node ``u`` ends
exactly where the image's does (the strip ``[A, n)`` with ``A`` a multiple of ``s S_{u'}``
gives every layer ``floor((n_{u'} - A/S_{u'} + p_l + p_r - d(k-1) - 1)/s) + 1 = n_u - A/S_u``
outputs); so the padding reads the same zeros, or copies the same (needed, hence equal)
positions, and the needed position exists in the strip (its window fits there as it
fits in the image).  Positions outside the hulls —
near the strip's cut edges — may differ; they are cropped away.  Layers that are not local
(global pooling, flatten, linear, transposed convolutions) and circular padding (it reads
the opposite edge) have no strips: :func:`border_plan` refuses them.

The cost (:attr:`BorderPlan.interior_macs`, :attr:`BorderPlan.border_macs`) is counted in
multiply-adds per sample: the kernel's taps times the interior positions, and the layers'
multiply-adds on each strip (:func:`layer_macs`).  When the strips together cost as much
as the layers on the whole input (a small image: the strips overlap), the plan is the
layers once on the whole input instead (no interior).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..algebra.errors import InvalidInputError, InvalidTypeError
from ..algebra.network import (Add, AvgPool, ChannelAffine, Concat, Conv, Input, Network,
                               Split)
from ..algebra.regions import mode_index

__all__ = ["BorderPiece", "BorderPlan", "border_plan", "interior_box", "strip_box",
           "layer_macs"]

Box = tuple[tuple[int, int], ...]   # [lo, hi) per spatial axis


@dataclass(frozen=True)
class BorderPiece:
    """One border piece: output positions ``out_box`` (full-image coordinates of the
    network's output), computed by the original layers on the input slice ``in_box``;
    ``offset`` is where ``out_box`` starts in the strip's output (``lo - A / S``) and
    ``macs`` the layers' multiply-adds per sample on the strip."""
    out_box: Box
    in_box: Box
    offset: tuple[int, ...]
    macs: int

    @property
    def positions(self) -> int:
        return math.prod(hi - lo for lo, hi in self.out_box)


@dataclass(frozen=True)
class BorderPlan:
    """The interior/border split of an output window (module docstring).

    ``window``: the output's spatial size; ``interior``: the kernel's box (empty when the
    exact region holds no box, then one piece is the whole output); ``pieces``: the
    border pieces in assembly order (per axis: the low slab, the inner part, the high
    slab); ``kernel_taps``: multiply-adds per interior output position
    (``C_out * C_in / groups * prod(k)``)."""
    window: tuple[int, ...]
    interior: Box
    pieces: tuple[BorderPiece, ...]
    kernel_taps: int

    @property
    def interior_positions(self) -> int:
        return math.prod(max(hi - lo, 0) for lo, hi in self.interior)

    @property
    def border_positions(self) -> int:
        return math.prod(self.window) - self.interior_positions

    @property
    def interior_macs(self) -> int:
        return self.kernel_taps * self.interior_positions

    @property
    def border_macs(self) -> int:
        return sum(p.macs for p in self.pieces)

    def describe(self) -> str:
        """``"interior 28x28 (784 positions, 1.2M MACs) by the kernel; border 240
        positions in 4 strips (3.4M MACs) by the original layers"``."""
        inner = "x".join(str(max(hi - lo, 0)) for lo, hi in self.interior)
        if not self.interior_positions:
            return (f"the original layers on the whole input ({self.border_macs:,} MACs): "
                    "the exact region holds no box, or strips would cost more")
        return (f"interior {inner} ({self.interior_positions:,} positions, "
                f"{self.interior_macs:,} MACs) by the kernel; border {self.border_positions:,} "
                f"positions in {len(self.pieces)} strip{'s' if len(self.pieces) != 1 else ''} "
                f"({self.border_macs:,} MACs) by the original layers")


# ------------------------------------------------------------------------ the interior


def interior_box(region: np.ndarray) -> Box:
    """A box of True positions of ``region`` (a bool mask of the output window; a leading
    channel axis is reduced with ``all``): the bounding box of the True positions, shrunk
    greedily — always on the side whose edge slice holds the most False — until it holds
    only True.  An empty box (some ``lo == hi``) when ``region`` has no True position.
    For the regions of convolution chains (a centred box) this is the whole region."""
    mask = np.asarray(region, dtype=bool)
    box = [[0, n] for n in mask.shape]
    if not mask.any():
        return tuple((0, 0) for _ in mask.shape)
    for axis in range(mask.ndim):
        used = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))[0]
        box[axis] = [int(used[0]), int(used[-1]) + 1]
    while True:
        view = mask[tuple(slice(lo, hi) for lo, hi in box)]
        if view.size == 0 or view.all():
            return tuple((lo, hi) if view.size else (lo, lo) for lo, hi in box)
        worst, side, count = 0, 0, -1
        for axis in range(mask.ndim):
            for s, index in ((0, 0), (1, -1)):
                edge = np.take(view, index, axis=axis)
                bad = int((~edge).sum())
                if bad > count:
                    worst, side, count = axis, s, bad
        box[worst][side] += 1 if side == 0 else -1


# ----------------------------------------------------------------------- the strips


def _taps(node: object, axis: int) -> tuple[int, int, int]:
    """``(s, t_min, t_max)`` of a local node on ``axis`` (module docstring)."""
    if isinstance(node, Conv):
        left = node.padding[axis][0]
        return node.stride[axis], -left, node.dilation[axis] * (node.kernel_size[axis] - 1) - left
    if isinstance(node, AvgPool):
        p = node.padding[axis]
        return node.stride[axis], -p, node.kernel_size[axis] - 1 - p
    return 1, 0, 0


def _check_local(network: Network) -> None:
    for name in network.order():
        node = network.nodes[name]
        if not isinstance(node, (Input, Conv, AvgPool, ChannelAffine, Add, Concat, Split)):
            raise InvalidInputError(
                f"border strips need local layers: node {name!r} ({node.describe()}) reads "
                "the whole image; use the dense affine map instead")
        if isinstance(node, Conv) and node.mode == "circular":
            raise InvalidInputError(
                f"border strips cannot run node {name!r} ({node.describe()}): circular "
                "padding reads the opposite edge of the image")
        if isinstance(node, AvgPool) and (node.ceil_mode or node.divisor_override is not None):
            raise InvalidInputError(  # the strips run F.avg_pool without these options
                f"border strips cannot run node {name!r} ({node.describe()}): ceil_mode and "
                "divisor_override are not supported on strips")


def _strides(network: Network) -> dict[str, tuple[int, ...]]:
    """Cumulative stride ``S_v`` of every node (per axis)."""
    out: dict[str, tuple[int, ...]] = {}
    for name in network.order():
        node = network.nodes[name]
        if isinstance(node, Input):
            out[name] = (1,) * network.ndim
            continue
        first = out[node.inputs[0]]
        out[name] = tuple(f * _taps(node, a)[0] for a, f in enumerate(first))
    return out


def _reads(node: object, axis: int, lo: int, hi: int, n_out: int, n_in: int) -> tuple[int, int]:
    """The hull of input positions that outputs ``[lo, hi)`` of ``node`` read on ``axis``,
    clipped to ``[0, n_in)``, with the positions reflect/replicate padding copies; a hull
    that reaches an edge of the node's own window (``lo = 0``, ``hi = n_out``) reaches the
    same edge of the input's window."""
    s, t_min, t_max = _taps(node, axis)
    a, b = s * lo + t_min, s * (hi - 1) + t_max + 1
    mode = getattr(node, "mode", "zeros")
    if mode in ("reflect", "replicate"):
        outside = np.concatenate([np.arange(a, 0), np.arange(n_in, b)])
        if outside.size:
            copied = mode_index(mode, outside, n_in)
            a, b = min(a, int(copied.min())), max(b, int(copied.max()) + 1)
    a, b = max(a, 0), min(b, n_in)
    return (0 if lo <= 0 else a), (n_in if hi >= n_out else b)


def strip_box(network: Network, input_shape: Sequence[int], out_box: Box) -> Box:
    """The input box whose strip computes the network's outputs ``out_box`` exactly
    (module docstring: backward hulls, ``A`` rounded down to a multiple of
    ``lcm_v S_v``)."""
    _check_local(network)
    shapes = network.shapes(tuple(input_shape))
    strides = _strides(network)
    order = network.order()
    box = []
    for axis, (lo, hi) in enumerate(out_box):
        need: dict[str, tuple[int, int]] = {network.output_name: (lo, hi)}
        for name in reversed(order):
            node = network.nodes[name]
            if name not in need or isinstance(node, Input):
                continue
            lo_v, hi_v = need[name]
            for source in node.inputs:
                a, b = _reads(node, axis, lo_v, hi_v, shapes[name][1 + axis],
                              shapes[source][1 + axis])
                if source in need:
                    a, b = min(a, need[source][0]), max(b, need[source][1])
                need[source] = (a, b)
        a, b = need["input"]
        step = math.lcm(*(s[axis] for s in strides.values()))
        box.append(((a // step) * step, b))
    return tuple(box)


def layer_macs(network: Network, input_shape: Sequence[int]) -> int:
    """Multiply-adds per sample of the layers on ``input_shape``: convolutions by their
    taps (``prod(out) C_out C_in/g prod(k)``), average pools by their window, scales and
    sums one per output element."""
    shapes = network.shapes(tuple(input_shape))
    total = 0
    for name in network.order():
        node, numel = network.nodes[name], math.prod(shapes[name])
        if isinstance(node, Conv):
            total += numel * node.weight.shape[1] * math.prod(node.kernel_size)
        elif isinstance(node, AvgPool):
            total += numel * math.prod(node.kernel_size)
        elif isinstance(node, ChannelAffine):
            total += numel
        elif isinstance(node, Add):
            total += numel * (len(node.terms) - 1 + (node.coefficients is not None))
    return int(total)


def _piece(network: Network, input_shape: Sequence[int], out_box: Box,
           stride: tuple[int, ...]) -> BorderPiece:
    in_box = strip_box(network, input_shape, out_box)
    shape = (input_shape[0], *(b - a for a, b in in_box))
    try:
        macs = layer_macs(network, shape)
    except InvalidInputError:   # a strip too thin for a layer (reflect padding >= size)
        in_box = tuple((0, n) for n in input_shape[1:])
        macs = layer_macs(network, input_shape)
    offset = tuple(lo - a // s for (lo, _), (a, _), s in zip(out_box, in_box, stride))
    return BorderPiece(out_box, in_box, offset, macs)


def _slab_boxes(window: Sequence[int], interior: Box) -> list[Box]:
    """The border pieces' output boxes in assembly order: per axis ``a`` the slabs
    ``[0, lo_a)`` and ``[hi_a, n_a)``, full on the axes after ``a`` and the interior's range
    on the axes before it."""
    boxes: list[Box] = []
    for axis, (lo, hi) in enumerate(interior):
        before = tuple(interior[:axis])
        after = tuple((0, n) for n in window[axis + 1:])
        if lo > 0:
            boxes.append(before + ((0, lo),) + after)
        if hi < window[axis]:
            boxes.append(before + ((hi, window[axis]),) + after)
    return boxes


def border_plan(network: Network, input_shape: Sequence[int], region: np.ndarray,
                kernel_taps: int, *, whole_if_cheaper: bool = True) -> BorderPlan:
    """The interior box of ``region`` (bool over the output window, or ``(C, *window)``)
    and the strips that make the border exact (module docstring).  ``kernel_taps``: the
    collapsed kernel's multiply-adds per output position; ``whole_if_cheaper``: run the
    layers once on the whole input when the strips would cost as much.  Raises
    InvalidInputError for networks without strips (non-local layers, circular padding)."""
    if not isinstance(network, Network):
        raise InvalidTypeError(f"border_plan needs an algebra Network, got {type(network).__name__}")
    _check_local(network)
    shapes = network.shapes(tuple(input_shape))
    window = tuple(shapes[network.output_name][1:])
    mask = np.asarray(region, dtype=bool)
    if mask.ndim == len(window) + 1:
        mask = mask.all(axis=0)
    mask = np.broadcast_to(mask, window)
    interior = interior_box(mask)
    stride = _strides(network)[network.output_name]
    if any(hi <= lo for lo, hi in interior):
        interior = tuple((0, 0) for _ in window)
        whole = _piece(network, input_shape, tuple((0, n) for n in window), stride)
        return BorderPlan(window, interior, (whole,), int(kernel_taps))
    pieces = tuple(_piece(network, input_shape, box, stride)
                   for box in _slab_boxes(window, interior))
    if whole_if_cheaper and sum(p.macs for p in pieces) >= layer_macs(network, input_shape):
        # the strips overlap so much that running the layers once on the whole input is
        # cheaper: that gives every position exactly, the kernel is not needed
        whole = _piece(network, input_shape, tuple((0, n) for n in window), stride)
        return BorderPlan(window, tuple((0, 0) for _ in window), (whole,), int(kernel_taps))
    return BorderPlan(window, interior, pieces, int(kernel_taps))
