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

**Multirate networks.**  Where the single-operator arithmetic refuses
(:class:`~algebra.operator.MultirateError`: an up-sampling after a stride with
``gcd(u, s) != 1``, a bias before zero-insertion up-sampling, branches of different rates),
the walk continues on :class:`~algebra.polyphase.PolyphaseOperator` (``M`` phases of a
stride-1 operator); the result is one :class:`ConvOperator` whenever one exists, else the
polyphase operator (``CollapseResult.polyphase``).  The region rules are the same, with a
bias that may vary over the output phases.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from sympy.polys.domains import QQ

from .errors import InvalidInputError, InvalidTypeError
from .footprint import OperatorShape, consumers, walk_footprint
from .memory import EXACT_TERM_BYTES, check_budget, estimate_bytes, format_bytes, memory_limit
from .network import (AdaptiveAvgPool, Add, AvgPool, ChannelAffine, Concat, Conv, ConvTranspose,
                      Flatten, Input, Linear, Network, Shape, Split)
from .operator import ConvOperator, MultirateError, vstack
from .polyphase import PolyphaseOperator, is_polyphase
from .pooling import pool_extent
from .protocols import CollapseBackend
from .regions import (Extent, TapPattern, merge_add, merge_concat, periodic_bias_pool,
                      propagate)
from .signal import apply_operator
from .validate import choice_arg, instance_arg, optional_bool_arg

__all__ = ["CollapseResult", "collapse", "collapse_walk", "AlgebraBackend", "WalkResult",
           "is_periodic_network", "select_backend", "BACKENDS"]


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
        elif isinstance(node, AdaptiveAvgPool):
            if not node.uniform(shapes[node.input][1:]):
                return False
        elif isinstance(node, (ConvTranspose, Flatten, Linear)):
            return False
    return circular


@dataclass
class CollapseResult:
    """A collapsed network: ``operator`` equals the network at the output positions where
    ``region`` is True (for an input of shape ``input_shape``).  ``operator`` is one
    :class:`ConvOperator` whenever one exists, else a
    :class:`~algebra.polyphase.PolyphaseOperator` (``polyphase`` is True)."""
    operator: ConvOperator | PolyphaseOperator
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    region: np.ndarray
    periodic: bool
    #: what the region is tight for: ``"generic weights"`` (propagated) or ``"these
    #: weights"`` (every outside position decided, :mod:`algebra.tight_region`)
    tight_for: str = "generic weights"

    @property
    def polyphase(self) -> bool:
        """True when no single strided kernel exists and ``operator`` is the polyphase
        matrix (``M`` phases of an ordinary operator)."""
        return is_polyphase(self.operator)

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
        try:
            shape = tuple(np.shape(x))
        except ValueError:  # a ragged nested list
            shape = "a ragged nested list"
        if shape != tuple(self.input_shape):
            raise InvalidInputError(f"x: expected an input of shape {self.input_shape}, got {shape}")
        if self.polyphase:
            return self.operator.apply(x, self.output_shape[1:])
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
                + (f", bounding box {box}" if box else ": nowhere")
                + f" (tight for {self.tight_for})")

    def describe(self) -> str:
        op = self.operator
        if self.polyphase:
            return f"{op.describe()}; {self.where()}"
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

    def to_polyphase(self, op: Any) -> PolyphaseOperator:
        """``op`` as a :class:`PolyphaseOperator` (the multirate fallback of
        :func:`collapse_walk`); a subclass's own operator type goes through its
        ``to_conv_operator`` first (the flint backend continues on sympy's rings)."""
        if is_polyphase(op):
            return op
        if not isinstance(op, ConvOperator):
            op = self.to_conv_operator(op)
        return PolyphaseOperator.from_conv(op)

    def tap_pattern(self, op: ConvOperator) -> TapPattern:
        return _tap_pattern(op)

    def bias_mask(self, op: ConvOperator) -> np.ndarray:
        zero = op.ring.domain.zero
        return np.array([b != zero for b in op.bias], dtype=bool)

    # -- the memory guard's model (algebra.footprint.FootprintModel) ----------------------
    def operator_bytes(self, shape: OperatorShape) -> int:
        """Sparse polynomials: ``EXACT_TERM_BYTES`` per possibly nonzero term, plus one
        reference per matrix entry."""
        return shape.pairs * shape.taps * EXACT_TERM_BYTES + 8 * shape.rows * shape.cols

    def layer_bytes(self, shape: OperatorShape) -> int:
        """The layer's operator and its tap pattern (one bool per entry and tap)."""
        return self.operator_bytes(shape) + shape.rows * shape.cols * shape.taps

    def product_bytes(self, outer: OperatorShape, inner: OperatorShape,
                      result: OperatorShape) -> int:
        """The substituted copies of both factors and the partial sums."""
        return self.operator_bytes(outer) + self.operator_bytes(inner) + \
            self.operator_bytes(result) // 2


def _padding_rule(node: Any) -> str:
    """What a layer reads outside its input window (see :func:`algebra.regions.propagate`)."""
    if isinstance(node, Conv) and any(pair != (0, 0) for pair in node.padding):
        return node.mode
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
                  periodic: bool | None = None, budget: Any = None) -> WalkResult:
    """Compose every node's operator along the DAG (``backend`` makes them) and propagate
    the exact region (see the module docstring).  Before building anything, the walk's
    peak memory is estimated from the shapes (:func:`algebra.footprint.walk_footprint`)
    and refused over ``budget`` (default: the budget in force, :mod:`algebra.memory`)."""
    if not isinstance(network, Network):
        raise InvalidTypeError(f"network must be an algebra.Network, got {type(network).__name__}")
    periodic = optional_bool_arg(periodic, "periodic")
    with memory_limit(budget):
        return _walk(network, input_shape, backend, periodic)


def check_walk_budget(network: Network, shapes: dict[str, Shape], backend: Any) -> int:
    """Refuse (:class:`MemoryBudgetError`) a walk whose estimated peak is over the budget
    in force; return the estimate in bytes."""
    masks = sum(estimate_bytes(shape, np.bool_) * 3 for shape in shapes.values())
    peak, where = walk_footprint(network, shapes, backend)
    check_budget(peak + masks, f"collapsing this network (peak at node {where!r}: "
                 f"{format_bytes(peak)} of operators, {format_bytes(masks)} of region masks)")
    return peak + masks


def _walk(network: Network, input_shape: Sequence[int], backend: CollapseBackend,
          periodic: bool | None) -> WalkResult:
    shapes = network.shapes(input_shape)
    prepare = getattr(backend, "prepare", None)  # a backend that sizes itself on the shapes
    if prepare is not None:
        prepare(shapes)
    check_walk_budget(network, shapes, backend)
    detected = is_periodic_network(network, shapes)
    if periodic is True and not detected:
        raise InvalidInputError("the network is not periodic: every conv must be circular and "
                                "size-keeping (or 1x1), pools non-overlapping, strides dividing sizes")
    use_periodic = detected if periodic is None else periodic
    ops: dict[str, Any] = {}
    extents: dict[str, Extent] = {}
    readers = consumers(network)
    for name in network.order():
        node = network.nodes[name]
        shape = shapes[name]
        window = shape[1:]
        if isinstance(node, Input):
            ops[name] = backend.identity(shape[0])
            extents[name] = Extent.of_input(shape[0], window)
            continue
        if isinstance(node, (Flatten, Linear)):
            raise InvalidInputError(f"node {name!r} ({node.describe()}) is not a convolution; "
                                    "collapse the network to an affine map (collapse_affine) instead")
        local = None
        try:
            if not isinstance(node, (Add, Concat)):
                (parent,) = node.inputs
                local = backend.node_operator(node, shapes[parent])
            ops[name] = _node_value(node, [ops[p] for p in node.inputs], local, backend)
        except InvalidInputError as exc:
            raise InvalidInputError(f"node {name!r} ({node.describe()}): {exc}") from None
        if use_periodic and is_polyphase(ops[name]):
            raise InvalidInputError(f"node {name!r} ({node.describe()}): a multirate operator "
                                    "in a periodic network is not supported")
        if not use_periodic:
            extents[name] = _node_extent(node, local, ops[name], [extents[p] for p in node.inputs],
                                         shape, backend)
        for parent in node.inputs:  # free what no later node reads
            readers[parent] -= 1
            if readers[parent] == 0:
                ops.pop(parent, None)
                extents.pop(parent, None)
    out = network.output_name
    if len(shapes[out]) != network.ndim + 1:
        raise InvalidInputError("the network output is not an image; use collapse_affine")
    region = np.ones(shapes[out][1:], bool) if use_periodic else extents[out].region()
    return WalkResult(ops[out], shapes, region, use_periodic)


def _single_rate(node: Any, operands: list[Any], local: Any, backend: CollapseBackend) -> Any:
    """The node's collapsed operator in the backend's own arithmetic."""
    if isinstance(node, Add):
        return backend.combine(operands, node.coefficients or (1,) * len(operands))
    if isinstance(node, Concat):
        return backend.vstack(operands)
    return local @ operands[0]


def _multirate(node: Any, operands: list[Any], local: Any, backend: Any) -> Any:
    """The node's collapsed operator as a polyphase operator (``backend.to_polyphase``)."""
    parts = [backend.to_polyphase(op) for op in operands]
    if isinstance(node, Add):
        total = None
        for part, c in zip(parts, node.coefficients or (1,) * len(parts)):
            part = part if c == 1 else part * c
            total = part if total is None else total + part
        return total
    if isinstance(node, Concat):
        return type(parts[0]).vstack(parts)
    return backend.to_polyphase(local) @ parts[0]


def _node_value(node: Any, operands: list[Any], local: Any, backend: CollapseBackend) -> Any:
    """One operator ``down_s K up_u + b`` when the node's result is one (the backend's
    arithmetic, unchanged); the polyphase form exactly when that arithmetic refuses
    (:class:`~algebra.operator.MultirateError`: ``gcd(u, s) != 1``, a bias before
    up-sampling, branches of different rates) or an operand is already polyphase.  A
    backend without ``to_polyphase`` keeps the refusal."""
    fallback = getattr(backend, "to_polyphase", None)
    if fallback is not None and any(is_polyphase(op) for op in operands):
        return _multirate(node, operands, local, backend)
    try:
        return _single_rate(node, operands, local, backend)
    except MultirateError:
        if fallback is None:
            raise
        return _multirate(node, operands, local, backend)


def _bias_info(backend: CollapseBackend, op: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Which channels carry a bias, and (for a polyphase operator whose bias varies over
    the output phases) the per-phase bias labels of :class:`algebra.regions.Extent`."""
    if not is_polyphase(op):
        return backend.bias_mask(op), None
    classes = op.bias_classes()
    flat = classes.reshape(classes.shape[0], -1)
    constant = bool((flat == flat[:, :1]).all())
    return op.bias_mask(), None if constant else classes


def _node_extent(node: Any, local: Any, op: Any, parents: list[Extent], shape: Shape,
                 backend: CollapseBackend) -> Extent:
    """The node's :class:`Extent` from its parents' (see :mod:`algebra.regions`)."""
    window = shape[1:]
    biased, classes = _bias_info(backend, op)
    if isinstance(node, Add):
        return merge_add(parents, biased, classes)
    if isinstance(node, Concat):
        return merge_concat(parents, biased, classes)
    if isinstance(node, (ChannelAffine, Split)):
        src = parents[0]
        rows = slice(node.start, node.stop) if isinstance(node, Split) else slice(None)
        return Extent(window, src.exact[rows].copy(), src.support_offset, src.support[rows],
                      biased, classes)
    if isinstance(node, (AvgPool, AdaptiveAvgPool)):  # divisor and window rules: algebra.pooling
        spatial = parents[0].window
        form = node.strided_form(spatial)
        out = pool_extent(parents[0], node.windows(spatial), form,
                          backend.tap_pattern(local), window, biased)
        return periodic_bias_pool(out, parents[0], form.regular(node.windows(spatial)), classes)
    return propagate(parents[0], backend.tap_pattern(local), tuple(local.stride),
                     tuple(local.upsample), window, _padding_rule(node), biased, shape[0],
                     classes)


#: the exact collapse backends :func:`collapse` accepts
BACKENDS = ("auto", "sympy", "flint")


def select_backend(network: Network, backend: str = "auto") -> str:
    """``"flint"`` or ``"sympy"``: the backend :func:`collapse` uses for ``network``.
    ``"auto"`` is python-flint when every weight is a number (the network's domain is
    ``QQ``) and python-flint is importable, sympy's rings otherwise (symbolic weights)."""
    backend = choice_arg(backend, "backend", BACKENDS)
    if backend != "auto":
        return backend
    from .flint_backend import flint_available
    return "flint" if network.domain == QQ and flint_available() else "sympy"


def collapse(network: Network, input_shape: Sequence[int], *, periodic: bool | None = None,
             budget: Any = None, backend: str = "auto", tight: bool | str = "auto"
             ) -> CollapseResult:
    """Collapse a linear network (no flatten/linear) for inputs of ``input_shape`` into one
    exact operator and its exact region.  ``periodic=None`` detects the periodic case;
    ``True`` requires it; ``False`` uses zero-extended semantics.  ``budget`` (bytes, or a
    size like ``"200M"``; default the budget in force) bounds the estimated peak memory:
    over it, :class:`~laurentnet.algebra.memory.MemoryBudgetError` before any work.

    ``backend`` chooses the exact arithmetic (:func:`select_backend`): ``"sympy"`` (sparse
    polynomial rings, any domain), ``"flint"`` (python-flint, weights in ``QQ``:
    :mod:`algebra.flint_backend`) or ``"auto"``; the result is the same ``ConvOperator``.

    ``tight``: the propagated region is tight for generic weights; ``True`` also decides
    every position outside it for *these* weights by exact evaluation at ``x = 0`` and two
    random integer inputs (:mod:`algebra.tight_region`; a position is wrongly added with
    probability at most ``2^-64``), ``False`` never, ``"auto"`` when that costs at most
    :data:`~algebra.tight_region.TIGHT_AUTO_LIMIT` exact multiply-adds.  ``where()`` says
    which the region is."""
    if tight not in (True, False, "auto"):
        raise InvalidInputError(f"tight must be True, False or 'auto', got {tight!r}")
    instance_arg(network, Network, "network", "a laurentnet.algebra.Network",
                 "build one with Network(ndim, in_channels) and its layer methods")
    if select_backend(network, backend) == "flint":
        from .flint_backend import FlintBackend
        flint_backend = FlintBackend(network)
        walk = collapse_walk(network, input_shape, flint_backend, periodic, budget)
        with memory_limit(budget):
            operator = walk.operator if is_polyphase(walk.operator) else \
                flint_backend.to_conv_operator(walk.operator)
    else:
        walk = collapse_walk(network, input_shape, AlgebraBackend(network), periodic, budget)
        operator = walk.operator
    if is_polyphase(operator):  # one strided kernel whenever one exists
        with memory_limit(budget):
            operator = operator.minimal()
            operator = operator.to_conv() or operator
    region, tight_for = walk.region, "generic weights"
    if not walk.periodic and not region.all() and tight is not False:
        from .tight_region import TIGHT_AUTO_LIMIT, check_cost, tighten_region
        if tight is True or check_cost(network, walk.shapes, operator) <= TIGHT_AUTO_LIMIT:
            region = tighten_region(network, operator, tuple(walk.shapes["input"]),
                                    walk.shapes[network.output_name], region)
            tight_for = "these weights"
    return CollapseResult(operator, tuple(walk.shapes["input"]),
                          walk.shapes[network.output_name], region, walk.periodic, tight_for)
