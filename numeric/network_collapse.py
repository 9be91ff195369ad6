"""Collapse an :class:`algebra.Network` in floating point, at real widths.

The same DAG walk and exact-region propagation as :func:`algebra.collapse` (it is the same
code: :func:`algebra.collapse.collapse_walk`), with :class:`~numeric.kernels.KernelOperator`
in place of the exact operator: every layer's kernel is a dense float64 (or float32)
coefficient tensor and compositions are FFT/conv products.  The region depends only on the
layers' tap patterns and on which collapsed values carry a bias, so it is exact here too.

Where no single ``down_s K up_u + b`` exists (an up-sampling after a stride with
``gcd(u, s) != 1``, a bias before an up-sampling, branches of different rates) the walk
falls back, as the exact one does, to the float
:class:`~numeric.polyphase.PolyphaseOperator` (``NumericBackend.to_polyphase``); the result
is brought to its least periods and back to one strided kernel when it has one.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import sympy
import torch

from ..algebra.errors import InvalidInputError, InvalidTypeError
from ..algebra.collapse import CollapseResult, collapse_walk
from ..algebra.polyphase import is_polyphase
from ..algebra.footprint import OperatorShape
from ..algebra.memory import check_budget, estimate_bytes, memory_limit
from ..algebra.network import (AdaptiveAvgPool, AvgPool, ChannelAffine, Conv, ConvTranspose,
                             GlobalAvgPool,
                             Network, Shape, Split)

from .inputs import as_real_tensor, check_float_dtype, rounded_tensor
from .kernels import KernelOperator, vstack
from .polymatmul import auto_method, product_workspace_bytes

__all__ = ["NumericCollapse", "collapse_numeric", "affine_numeric"]


class NumericBackend:
    """The float :class:`~laurentnet.algebra.protocols.CollapseBackend`: makes and combines
    :class:`KernelOperator` layers for :func:`collapse_walk`."""

    def __init__(self, network: Network, dtype: torch.dtype):
        self.ndim, self.dtype = network.ndim, check_float_dtype(dtype)

    def identity(self, channels: int) -> KernelOperator:
        return KernelOperator.identity(channels, self.ndim, dtype=self.dtype)

    def _diagonal(self, per_channel: torch.Tensor, kernel: Sequence[int], low: Sequence[int],
                  stride: Sequence[int], bias: torch.Tensor | None = None) -> KernelOperator:
        """``diag(v_c · box)``: a depthwise operator with the same taps on every channel."""
        c = per_channel.shape[0]
        coeffs = torch.zeros((c, c, *kernel), dtype=self.dtype)
        index = torch.arange(c)
        coeffs[index, index] = per_channel.view(c, *(1,) * self.ndim).expand(c, *kernel)
        return KernelOperator(coeffs, low, stride, bias)

    def node_operator(self, node: Any, in_shape: Shape) -> KernelOperator:
        d = self.dtype
        if isinstance(node, Conv):
            return KernelOperator.from_weight(
                rounded_tensor(node.weight, d, "weight"),
                None if node.bias is None else rounded_tensor(node.bias, d, "bias"),
                stride=node.stride, padding=tuple(l for l, _ in node.padding),
                dilation=node.dilation, groups=node.groups, dtype=d)
        if isinstance(node, ChannelAffine):
            shift = None if node.shift is None else rounded_tensor(list(node.shift), d, "shift")
            return self._diagonal(rounded_tensor(list(node.scale), d, "scale"), (1,) * self.ndim,
                                  (0,) * self.ndim, (1,) * self.ndim, shift)
        if isinstance(node, Split):
            return self.identity(in_shape[0])[node.start:node.stop]
        if isinstance(node, (AvgPool, AdaptiveAvgPool)):  # the form of algebra.pooling
            form = node.strided_form(in_shape[1:])
            low = tuple(p - (k - 1) for p, k in zip(form.padding, form.kernel))
            return self._diagonal(torch.full((in_shape[0],), 1.0 / form.divisor, dtype=d),
                                  form.kernel, low, form.stride)
        if isinstance(node, GlobalAvgPool):
            size = tuple(in_shape[1:])
            weight = 1.0 / float(np.prod(size))
            low = tuple(1 - n for n in size)
            return self._diagonal(torch.full((in_shape[0],), weight, dtype=d), size, low, size)
        if isinstance(node, ConvTranspose):  # output_padding only sizes the window
            return KernelOperator.from_weight(
                rounded_tensor(node.weight, d, "weight"),
                None if node.bias is None else rounded_tensor(node.bias, d, "bias"),
                stride=node.stride, padding=node.padding, dilation=node.dilation,
                groups=node.groups, transposed=True, dtype=d)
        raise TypeError(f"no numeric operator for {type(node).__name__}")

    def combine(self, ops: Sequence[KernelOperator], coefficients: Sequence[Any]) -> KernelOperator:
        total = None
        for op, c in zip(ops, coefficients):
            if isinstance(c, sympy.Basic) and c.free_symbols:
                raise InvalidInputError(f"add coefficient {c} is symbolic: numeric collapse needs "
                                        "numbers (substitute values, or use algebra.collapse)")
            try:
                value = float(c)
            except (TypeError, ValueError):
                raise InvalidInputError(f"add coefficient {c!r} is not a number: numeric collapse "
                                        "needs real numbers") from None
            if not math.isfinite(value):
                raise InvalidInputError(f"add coefficient {c!r} is not finite; NaN/Inf are refused")
            part = op if c == 1 else op * value
            total = part if total is None else total + part
        return total

    def vstack(self, ops: Sequence[KernelOperator]) -> KernelOperator:
        return vstack(ops)

    def to_polyphase(self, op: Any) -> Any:
        """``op`` as a float :class:`~numeric.polyphase.PolyphaseOperator` (the multirate
        fallback of :func:`algebra.collapse.collapse_walk`)."""
        from .polyphase import as_polyphase
        return as_polyphase(op)

    def tap_pattern(self, op: KernelOperator) -> dict[tuple[int, ...], np.ndarray]:
        """``{e: mask}``: ``mask[o, c]`` where ``K_{o,c}`` has a nonzero ``z^e`` coefficient."""
        nonzero = (op.coeffs != 0)
        used = nonzero.flatten(0, 1).any(dim=0)
        return {tuple(int(j) + l for j, l in zip(index, op.low)):
                nonzero[(slice(None), slice(None), *index)].numpy()
                for index in torch.nonzero(used).tolist()}

    def bias_mask(self, op: KernelOperator) -> np.ndarray:
        return (op.bias != 0).numpy()

    # -- the memory guard's model (algebra.footprint.FootprintModel) ----------------------
    def operator_bytes(self, shape: OperatorShape) -> int:
        """A dense ``rows x cols x box`` coefficient tensor and a bias."""
        return estimate_bytes((shape.rows, shape.cols, *shape.box), self.dtype) + \
            estimate_bytes((shape.rows,), self.dtype)

    def layer_bytes(self, shape: OperatorShape) -> int:
        """The layer's kernel, its float64 staging copy and the rounded copy, plus the tap
        pattern (one bool per coefficient)."""
        dense = estimate_bytes((shape.rows, shape.cols, *shape.box), torch.float64)
        return self.operator_bytes(shape) + 2 * dense + dense // 8

    def product_bytes(self, outer: OperatorShape, inner: OperatorShape,
                      result: OperatorShape) -> int:
        """:func:`numeric.polymatmul.polymatmul`'s workspace beyond the result, for the
        product ``outer(z^s) inner(z^u)`` as :meth:`KernelOperator.compose` forms it (taken
        transposed when only the up-sampling ``u`` is above 1; the up-sampled copy of
        ``inner`` when both are)."""
        s, u = inner.stride, outer.upsample
        k_outer = tuple((k - 1) * x + 1 for k, x in zip(outer.box, s))
        k_inner = tuple((k - 1) * x + 1 for k, x in zip(inner.box, u))
        rows, mid, cols = outer.rows, outer.cols, inner.cols
        copy = 0
        if any(x > 1 for x in u) and all(x == 1 for x in s):
            rows, cols, k_outer, k_inner = cols, rows, k_inner, outer.box
        elif any(x > 1 for x in u):
            copy = estimate_bytes((mid, cols, *k_inner), self.dtype)
        method = auto_method(k_outer, k_inner, self.dtype)
        return copy + product_workspace_bytes(rows, mid, cols, k_outer, k_inner, self.dtype,
                                              method) - self.operator_bytes(result)


class NumericCollapse(CollapseResult):
    """A :class:`~algebra.collapse.CollapseResult` whose operator is a float
    :class:`KernelOperator` (or, when no single strided kernel exists, a float
    :class:`~numeric.polyphase.PolyphaseOperator`): it equals the network where ``region``
    is True."""
    operator: Any

    def apply(self, x: Any) -> torch.Tensor:
        """The collapsed operator on a batch ``(B, *input_shape)`` (or one input), on the
        network's output window: equal to the network where ``region`` is True."""
        from .evaluator import conv_direct, conv_window
        x = as_real_tensor(x, "the input")
        single = x.ndim == len(self.input_shape)
        if tuple(x.shape[int(not single):]) != tuple(self.input_shape):
            raise InvalidInputError(f"expected inputs of shape {self.input_shape}, got {tuple(x.shape)}")
        batch = (x[None] if single else x)
        op, shape = self.operator, tuple(batch.shape)
        if self.polyphase:  # the block runs on the polyphase components
            op = op.block
            shape = (shape[0], op.in_channels,
                     *(-(-n // p) for n, p in zip(shape[2:], self.operator.in_period)))
        check_budget(_apply_bytes(op, shape, self.output_shape),
                     f"applying the collapsed operator to a batch of shape {tuple(batch.shape)}")
        if self.polyphase:
            y = self.operator.apply(batch, self.output_shape[1:])
            return y[0] if single else y
        batch = batch.to(self.operator.dtype)
        y = conv_direct(self.operator, batch, "circular") if self.periodic else \
            conv_window(self.operator, batch, self.output_shape[1:])
        return y[0] if single else y


def _apply_bytes(op: KernelOperator, batch_shape: Sequence[int], out_shape: Sequence[int]) -> int:
    """The batch in the operator's dtype, zero-inserted by the up-sampling and padded by the
    kernel's reach, the kernel copy and the output."""
    n = batch_shape[0]
    padded = math.prod((m - 1) * u + 1 + 2 * k
                       for m, u, k in zip(batch_shape[2:], op.upsample, op.kernel_size))
    inputs = n * op.in_channels * (math.prod(batch_shape[2:]) + padded)
    return estimate_bytes((inputs + op.coeffs.numel() + n * math.prod(out_shape),), op.dtype)


def collapse_numeric(network: Network, input_shape: Sequence[int], *,
                     dtype: torch.dtype = torch.float64, periodic: bool | None = None,
                     budget: Any = None, tight: bool | str = "auto") -> NumericCollapse:
    """Collapse a linear network to one :class:`KernelOperator` and its exact region.
    ``budget`` (bytes or a size like ``"200M"``; default the budget in force) bounds the
    walk's estimated peak memory, checked from the shapes before anything is built.

    ``tight`` as in :func:`algebra.collapse`: the propagated region is tight for generic
    weights; ``True`` also decides every outside position for *these* weights (the
    network's exact values) by the exact collapse and :mod:`algebra.tight_region`
    (error probability at most ``2^-64`` per added position), ``"auto"`` when that check
    costs at most :data:`~algebra.tight_region.TIGHT_AUTO_LIMIT` exact multiply-adds,
    ``False`` never.  On the region the float operator equals the network to round-off."""
    if tight not in (True, False, "auto"):
        raise InvalidInputError(f"tight must be True, False or 'auto', got {tight!r}")
    if not isinstance(network, Network):
        raise InvalidTypeError(f"collapse_numeric needs an algebra Network, got {type(network).__name__}")
    check_float_dtype(dtype)
    walk = collapse_walk(network, input_shape, NumericBackend(network, dtype), periodic, budget)
    region, tight_for = _tight_region(network, walk, tight, budget)
    operator = walk.operator
    if is_polyphase(operator):  # one strided kernel whenever one exists (to round-off)
        with memory_limit(budget):
            operator = operator.minimal()
            operator = operator.to_conv() or operator
    return NumericCollapse(operator, tuple(walk.shapes["input"]),
                           tuple(walk.shapes[network.output_name]), region, walk.periodic,
                           tight_for)


def _tight_region(network: Network, walk: Any, tight: bool | str, budget: Any
                  ) -> tuple[np.ndarray, str]:
    """The walk's region, tightened for the network's own weights when ``tight`` asks
    (the exact twin's rule; the check's cost is estimated with the float operator's
    coefficient count as the exact operator's term count, an upper bound)."""
    region = walk.region
    if walk.periodic or region.all() or tight is False:
        return region, "generic weights"
    from ..algebra.collapse import collapse
    from ..algebra.tight_region import TIGHT_AUTO_LIMIT, evaluation_cost
    dense = walk.operator.block if is_polyphase(walk.operator) else walk.operator
    terms = dense.coeffs.numel()  # an upper bound on the exact operator's terms
    if tight == "auto" and evaluation_cost(network, walk.shapes, terms) > TIGHT_AUTO_LIMIT:
        return region, "generic weights"
    exact = collapse(network, tuple(walk.shapes["input"]), periodic=False, budget=budget,
                     tight=True)
    return region | exact.region, exact.tight_for


def affine_numeric(network: Network, input_shape: Sequence[int], *, method: str = "auto",
                   dtype: torch.dtype = torch.float64, budget: Any = None):
    """The single-layer model of a :class:`Network` in floating point: ``f(X) = W X + B``
    extracted from the layer-by-layer torch evaluation by VJPs or JVPs
    (:func:`numeric.affine.extract_affine`).  Every padding mode, flatten and linear.

    The memory guard runs first, from the shapes: ``W`` (``n_out x n_in``), the network's
    weights in ``dtype`` (twice: the module and the extraction's copy) and one activation
    of every node; over ``budget`` it raises ``MemoryBudgetError`` before building
    anything."""
    from .affine import extract_affine
    from .network_torch import NetworkModule
    if not isinstance(network, Network):
        raise InvalidTypeError(f"affine_numeric needs an algebra Network, got {type(network).__name__}")
    check_float_dtype(dtype)
    shapes = network.shapes(input_shape)  # clear errors for a wrong input shape before any work
    with memory_limit(budget):
        check_budget(_affine_numeric_bytes(network, shapes, dtype),
                     f"the {math.prod(shapes[network.output_name])} x "
                     f"{math.prod(shapes['input'])} affine map W with the network's weights")
        return extract_affine(NetworkModule(network, dtype).eval(), input_shape, method=method,
                              dtype=dtype)


def _affine_numeric_bytes(network: Network, shapes: dict[str, Shape], dtype: torch.dtype) -> int:
    """``W``, two copies of every weight and one activation per node, in ``dtype``."""
    n_in, n_out = math.prod(shapes["input"]), math.prod(shapes[network.output_name])
    weights = sum(getattr(node, "weight", np.empty(0)).size for node in network.nodes.values())
    activations = sum(math.prod(shape) for shape in shapes.values())
    return estimate_bytes((n_out * n_in + 2 * weights + activations,), dtype)
