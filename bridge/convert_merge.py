"""Collapsing a linear segment: one convolution (or ``nn.Linear``) per exit, with its exact
region and its cost.

For each exit the segment's Network is collapsed (:func:`numeric.collapse_numeric`, float64)
to ``y = down_s K(z) X + b`` with the region where that equals the layers:

* **periodic** (every conv circular and size-keeping): exact everywhere; emitted as the
  kernel folded modulo ``n`` after a circular ``F.pad`` (``nn.ConvNd(padding_mode=
  'circular')`` when the padding is symmetric);
* **exact everywhere** (valid convolutions, or zero padding whose border the algebra proves
  harmless): emitted as one zero-padded convolution on the output window
  (:func:`numeric.evaluator.conv_window` semantics: left padding ``p = high``, right
  padding what the window needs, a crop when torch computes more);
* **exact up to the bias**: the segment is affine, ``N(x) = L(x) + N(0)``, and ``L`` (the
  segment with every bias and shift set to 0) collapses exactly even where ``N`` does not
  — a bias pushed through a later layer's zero padding is ``K(1) b`` inside but only part
  of it at the border (DBB's ``1x1 -> BN -> kxk`` branch).  Then ``N = conv(K) + N(0)`` with
  ``N(0)`` computed by running the segment's layers on a zero input (float64): one
  convolution without bias plus a per-position bias map (a constant image), exact at
  every position for the traced input size;
* otherwise **inexact**: exact only on ``region`` (reported; merged only with
  ``allow_inexact``).

A **multirate** exit (a stride then an up-sampling — ``ConvTranspose``, nearest
up-sampling — with ``gcd(u, s) != 1``, a bias before zero insertion, branches of different
rates) collapses to a polyphase operator, or to a kernel with an up-sampling: no single
``nn.ConvNd`` computes it.  At its least periods ``P``, ``Q`` it is emitted as a
``PolyphaseConv`` (:mod:`bridge.polyphase_module`: pixel-unshuffle by ``P``, one stride-1
conv holding the ``M = prod Q`` phase convolutions, pixel-shuffle by ``Q``), with the same
three exactness cases (everywhere, up to a bias map, inexact); when the rates cancel
(``down_s K up_s``, shift-invariant) it is one ordinary convolution.  Periodic multirate
exits are refused.

The emitted kernel keeps the structure torch can exploit: a block-diagonal kernel becomes a
grouped convolution (depthwise when every channel is its own group), taps on a lattice a
dilated one; an exit with a single output position (flat features, a classifier head)
becomes ``nn.Linear`` on the flattened input when that needs fewer multiply-adds.  Costs are multiply-adds per sample: the original layers' (convolutions,
linear layers, one per element for norms, scales, sums and pools) against the emitted form.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx

from ..algebra.network import Conv
from ..algebra.pooling import adaptive_axis
from ..numeric import NetworkModule, collapse_numeric
from ..numeric.kernels import KernelOperator
from ..numeric.polyphase import PolyphaseOperator, as_polyphase, is_polyphase
from .convert_estimate import estimate_collapse
from .linear_ops import LinearOp
from .segments import NotMergeable, Segment, SegmentNetwork, build_network
from .trace import TracedModel

__all__ = ["MergedExit", "merge_exits", "original_macs", "node_macs"]


@dataclass
class MergedExit:
    """How to compute one exit of a segment from the segment's input.

    ``kind`` ``"conv"``: ``source -> reshape(input_shape) -> F.pad(pre_pad, pad_mode) ->
    ConvNd(weight, bias, stride, conv_padding, conv_padding_mode, dilation, groups) ->
    crop(crop) -> + bias_map -> reshape(exit_shape)``; ``kind`` ``"linear"``:
    ``source -> flatten -> Linear(weight, bias) -> reshape(exit_shape)``.  Weights are float64;
    the emitter casts them to the model's dtype.  With ``border_plan`` (a border-corrected
    kernel, :func:`bridge.border_module.border_corrected_exit`) the conv runs on the
    interior only and ``border_network``'s layers on the border strips.  ``kind``
    ``"polyphase"`` (a multirate segment: no single strided kernel, or an up-sampling):
    ``source -> reshape(input_shape) -> PolyphaseConv(layout, window) -> + bias_map ->
    reshape(exit_shape)`` (:mod:`bridge.polyphase_module`: pixel-unshuffle, ``weight`` as
    one stride-1 conv — ``M`` convolutions, one per output phase — pixel-shuffle)."""
    exit: fx.Node
    kind: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    exit_shape: tuple[int, ...]
    input_shape: tuple[int, ...]
    stride: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    conv_padding: tuple[int, ...] = ()
    conv_padding_mode: str = "zeros"
    pre_pad: tuple[int, ...] | None = None
    pad_mode: str = "constant"
    crop: tuple[int, ...] | None = None
    bias_map: torch.Tensor | None = None
    macs: int = 0
    exact: bool = True
    where: str = ""
    region: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    border_plan: Any = None       # numeric.BorderPlan: exact border by the original layers
    border_network: Any = None    # the segment's Network those layers come from
    layout: Any = None            # kind "polyphase": the algebra.PolyphaseLayout (float64)
    window: tuple[int, ...] = ()  # kind "polyphase": the output window it computes

    def describe(self) -> str:
        """``"Conv2d 64->64 3x3, stride 2, groups 64"`` / ``"Linear 512->10"``."""
        if self.kind == "linear":
            return f"Linear {self.weight.shape[1]}->{self.weight.shape[0]}"
        if self.kind == "polyphase":
            return _describe_polyphase(self)
        ndim = self.weight.ndim - 2
        c_out, c_in = self.weight.shape[0], self.weight.shape[1] * self.groups
        parts = [f"Conv{ndim}d {c_in}->{c_out} {'x'.join(map(str, self.weight.shape[2:]))}"]
        if any(s != 1 for s in self.stride):
            parts.append(f"stride {self.stride if len(set(self.stride)) > 1 else self.stride[0]}")
        if any(d != 1 for d in self.dilation):
            parts.append(f"dilation {self.dilation}")
        if self.groups > 1:
            parts.append("depthwise" if self.groups == c_in == c_out else f"groups {self.groups}")
        if self.conv_padding_mode == "circular" or self.pad_mode == "circular":
            parts.append("circular")
        if self.bias_map is not None:
            parts.append("+ per-position bias map")
        if self.border_plan is not None and self.border_plan.interior_positions:
            parts.append(f"on the interior + the original layers on "
                         f"{len(self.border_plan.pieces)} border strips")
        elif self.border_plan is not None:
            return "the original layers on the whole input (cheaper than kernel + strips)"
        return ", ".join(parts)


def _describe_polyphase(merged: MergedExit) -> str:
    """``"polyphase, 4 phases: pixel-unshuffle (2, 2), Conv2d 12->12 2x2, pixel-shuffle
    (2, 2)"``."""
    layout, w = merged.layout, merged.weight
    kernel = "x".join(map(str, w.shape[2:]))
    text = (f"polyphase, {math.prod(layout.out_factors)} phases: pixel-unshuffle "
            f"{tuple(layout.in_factors)}, Conv{w.ndim - 2}d {w.shape[1]}->{w.shape[0]} "
            f"{kernel}, pixel-shuffle {tuple(layout.out_factors)}")
    return text + (", + per-position bias map" if merged.bias_map is not None else "")


# ------------------------------------------------------------------------------ costs


def node_macs(node: fx.Node, op: LinearOp, traced: TracedModel) -> int:
    """Multiply-adds per sample of one original layer: convolutions and linear layers by
    their taps, norms/scales/sums one per output element, pools one per tap, the rest
    (padding, slices, views) none."""
    out = traced.shape(node)
    numel = math.prod(out) if out is not None else 0
    p = op.params
    if op.kind == "conv":
        w = p["weight"]
        return int(numel * w.shape[1] * math.prod(w.shape[2:]))
    if op.kind == "conv_transpose":
        w = p["weight"]
        return int(math.prod(traced.shape(op.operands[0])) * w.shape[1] * math.prod(w.shape[2:]))
    if op.kind == "linear":
        return int(p["weight"].numel())
    if op.kind in ("batch_norm", "scale_shift"):
        return int(numel)
    if op.kind == "add":
        return int(numel * (len(op.operands) - 1 + (0 if all(c == 1 for c in p["coefficients"])
                                                     else 1)))
    if op.kind == "avg_pool":
        return int(numel * math.prod(p["kernel"]))
    if op.kind == "global_avg_pool":
        return int(math.prod(traced.shape(op.operands[0])))
    if op.kind == "adaptive_avg_pool":   # every window's reads: separable, so a product
        shape = traced.shape(op.operands[0])
        axes = [adaptive_axis(n, o) for n, o in zip(shape[1:], p["output_size"])]
        return int(shape[0] * math.prod(sum(ax.count) for ax in axes))
    return 0


def original_macs(segment: Segment, traced: TracedModel, ops: dict[fx.Node, Any]) -> int:
    return sum(node_macs(n, ops[n], traced) for n in segment.nodes)


# ---------------------------------------------------------------------- the structure


def _groups(weight: torch.Tensor) -> int:
    """The largest ``g`` for which the ``(C_out, C_in)`` kernel is block diagonal."""
    c_out, c_in = weight.shape[:2]
    nonzero = (weight != 0).flatten(2).any(dim=2)
    for g in sorted((d for d in range(2, math.gcd(c_out, c_in) + 1)
                     if c_out % d == 0 and c_in % d == 0), reverse=True):
        blocks = nonzero.view(g, c_out // g, g, c_in // g)
        off = blocks.clone()
        off[torch.arange(g), :, torch.arange(g)] = False
        if not bool(off.any()):
            return g
    return 1


def _grouped(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """``(C_out, C_in, *k)`` block diagonal -> torch's ``(C_out, C_in/g, *k)``."""
    if groups == 1:
        return weight
    c_out, c_in = weight.shape[:2]
    k = weight.shape[2:]
    blocks = weight.view(groups, c_out // groups, groups, c_in // groups, *k)
    return blocks[torch.arange(groups), :, torch.arange(groups)].reshape(c_out, c_in // groups, *k)


def _dilation(weight: torch.Tensor, padding: tuple[int, ...]) -> tuple[tuple[int, ...], torch.Tensor]:
    """Per axis the largest ``d`` with every nonzero tap (and the last one) on the lattice
    ``d·a`` and ``padding`` unchanged: ``y[i] = Σ w[d a'] x[s i + d a' - p]``."""
    dilation, slices = [], [slice(None), slice(None)]
    for axis in range(weight.ndim - 2):
        size = weight.shape[axis + 2]
        others = tuple(a for a in range(weight.ndim) if a != axis + 2)
        taps = torch.nonzero((weight != 0).any(dim=others)).flatten().tolist()
        d = 0
        for t in taps + [size - 1]:
            d = math.gcd(d, t)
        d = max(d, 1)
        dilation.append(d)
        slices.append(slice(None, None, d))
    return tuple(dilation), weight[tuple(slices)].contiguous()


def _conv_geometry(op: KernelOperator, sizes: tuple[int, ...], out: tuple[int, ...],
                   periodic: bool) -> dict[str, Any]:
    """Weight, padding and crop that compute ``op`` on the output window ``out``."""
    if periodic:
        layout = op.mod_circular(sizes).to_weight()
        k = layout.weight.shape[2:]
        before, after = layout.padding, tuple(kk - 1 - p for kk, p in zip(k, layout.padding))
        geometry: dict[str, Any] = dict(weight=layout.weight, stride=layout.stride)
        if before == after:
            geometry.update(conv_padding=before, conv_padding_mode="circular")
        else:
            geometry.update(conv_padding=(0,) * len(k), pad_mode="circular",
                            pre_pad=tuple(v for b, a in zip(reversed(before), reversed(after))
                                          for v in (b, a)))
        return geometry
    layout = op.to_weight()
    k, p, s = layout.weight.shape[2:], layout.padding, layout.stride
    right = tuple(max(0, si * (L - 1) - pi + ki - n)
                  for si, L, pi, ki, n in zip(s, out, p, k, sizes))
    geometry = dict(weight=layout.weight, stride=s)
    if all(r <= pi for r, pi in zip(right, p)):
        geometry.update(conv_padding=p)
        computed = tuple((n + 2 * pi - ki) // si + 1 for n, pi, ki, si in zip(sizes, p, k, s))
    else:
        geometry.update(conv_padding=(0,) * len(k),
                        pre_pad=tuple(v for pi, r in zip(reversed(p), reversed(right))
                                      for v in (pi, r)))
        computed = tuple((n + pi + r - ki) // si + 1
                         for n, pi, r, ki, si in zip(sizes, p, right, k, s))
    if computed != tuple(out):
        geometry["crop"] = tuple(out)
    return geometry


# -------------------------------------------------------------------------- collapse


def _zero_response(sn: SegmentNetwork) -> torch.Tensor:
    """``N(0)``: the segment's layers run on a zero input in float64, ``(C, *out)``."""
    zero = torch.zeros(1, *sn.input_shape, dtype=torch.float64)
    with torch.no_grad():
        return NetworkModule(sn.network, torch.float64)(zero)[0]


#: collapses estimated to take longer than this (seconds of float64 FFT products) are not
#: attempted: the segment stays as it is
COLLAPSE_SECONDS_LIMIT = 5.0
#: a merge predicted (before collapsing) to need this many times the layers' multiply-adds
#: is not attempted unless asked for (the prediction ignores dilation, so it is an upper
#: bound; the decision on the actual cost is the caller's)
PREDICTED_SLOWER_FACTOR = 4.0


def _check_estimates(sn: SegmentNetwork, exits: list[fx.Node], macs_before: int | None) -> None:
    """Refuse (NotMergeable) before any product when the collapse would take too long, or
    when the merged form is predicted to cost far more than the layers."""
    total_seconds, total_macs, kernels = 0.0, 0, []
    for node in exits:
        sn.network.set_output(sn.exit_value(node))
        estimate = estimate_collapse(sn.network, sn.input_shape)
        total_seconds += estimate.seconds
        total_macs += estimate.macs
        kernels.append("x".join(map(str, estimate.kernel)))
    if total_seconds > COLLAPSE_SECONDS_LIMIT:
        raise NotMergeable(f"collapsing would take about {total_seconds:.3g} s of polynomial "
                           f"products (kernel {', '.join(kernels)}): kept as it is")
    if macs_before is not None and total_macs >= PREDICTED_SLOWER_FACTOR * max(macs_before, 1):
        raise NotMergeable(f"the merged kernel ({', '.join(kernels)}) is predicted to need "
                           f"~{total_macs:,} multiply-adds per sample, the layers "
                           f"{macs_before:,}; merge_slower=True merges it anyway")


def _single_conv(sn: SegmentNetwork) -> KernelOperator | None:
    """The operator of a network that is ONE zero-padded convolution of its input (after
    batch norms were folded into it): that convolution is its own collapse, exact at every
    output position (its taps outside the window read the zero padding of the input
    itself), so no polynomial product is needed."""
    net = sn.network
    order = [n for n in net.order() if n != "input"]
    if len(order) != 1:
        return None
    conv = net.nodes[order[0]]
    if not isinstance(conv, Conv) or conv.mode != "zeros" or conv.inputs != ("input",):
        return None
    return KernelOperator.from_weight(
        torch.from_numpy(np.array(conv.weight, dtype=np.float64)),   # a writable copy
        None if conv.bias is None else torch.from_numpy(np.array(conv.bias, dtype=np.float64)),
        stride=conv.stride, padding=tuple(l for l, _ in conv.padding), dilation=conv.dilation,
        groups=conv.groups)


def merge_exits(segment: Segment, traced: TracedModel, ops: dict[fx.Node, Any], *,
                need_exact: bool = False, macs_before: int | None = None) -> list[MergedExit]:
    """One :class:`MergedExit` per exit of ``segment`` (module docstring).  ``need_exact``
    stops at the first inexact exit (NotMergeable naming the region); given
    ``macs_before`` (the layers' cost), a merge predicted to be much slower is refused
    before collapsing.  A collapse estimated to take too long is always refused."""
    sn = build_network(segment, traced, ops)
    _check_estimates(sn, segment.exits, macs_before)
    linear_part: SegmentNetwork | None = None
    merged = []
    for node in segment.exits:
        sn.network.set_output(sn.exit_value(node))
        single = _single_conv(sn)
        if single is not None:   # one zero-padded conv (after folding) reads the input
            merged.append(_emission(node, single, sn, tuple(
                sn.network.shapes(sn.input_shape)[sn.network.output_name][1:]), False, None,
                True, "exact at every output position (one convolution)", None, traced))
            continue
        try:
            result = collapse_numeric(sn.network, sn.input_shape)
        except (ValueError, TypeError) as exc:
            raise NotMergeable(f"no single convolution: {exc}") from None
        op: KernelOperator | PolyphaseOperator = result.operator
        out = tuple(result.output_shape[1:])
        if result.periodic and _multirate(op):
            raise NotMergeable(f"exit {node.name}: a multirate operator ({_rate_text(op)}) on "
                               "periodic inputs has no circular export")
        exact, where, bias_map = True, result.where(), None
        if not result.periodic and not result.exact_everywhere:
            if linear_part is None:
                linear_part = build_network(segment, traced, ops, biases=False)
            linear_part.network.set_output(linear_part.exit_value(node))
            bias_free = collapse_numeric(linear_part.network, linear_part.input_shape)
            if bias_free.exact_everywhere:
                response = _zero_response(sn)
                flat = response.reshape(response.shape[0], -1)
                if bool((flat == flat[:, :1]).all()):
                    op = _with_bias(op, flat[:, 0].clone())
                    where = "exact at every output position (a uniform bias)"
                else:
                    bias_map = response
                    op = op.linear_part()
                    where = ("exact at every output position: the bias reaches the border "
                             "only in part, so it is a per-position bias map N(0)")
            else:
                exact = False
                if need_exact:
                    raise NotMergeable(f"not exact: {where}")
        merged.append(_emission(node, op, sn, out, result.periodic, bias_map, exact, where,
                                None if exact else result.region, traced))
    return merged


def _multirate(op: Any) -> bool:
    """True for a polyphase operator or one with an up-sampling (zero insertion): no
    single ``nn.ConvNd`` computes it, the polyphase export does."""
    return is_polyphase(op) or any(u > 1 for u in op.upsample)


def _rate_text(op: Any) -> str:
    if is_polyphase(op):
        return f"polyphase, {op.phases} phases"
    return f"stride {op.stride}, up-sampling {op.upsample}"


def _with_bias(op: Any, bias: torch.Tensor) -> Any:
    """``op`` with the per-channel bias ``bias`` (for a polyphase operator: the same bias
    in every output phase, block rows ``o M + t``)."""
    if not is_polyphase(op):
        return op.with_bias(bias)
    block = op.block.with_bias(bias.repeat_interleave(op.phases))
    return PolyphaseOperator(block, op.in_period, op.out_period)


def _polyphase_emission(op: PolyphaseOperator, out: tuple[int, ...],
                        bias_map: torch.Tensor | None, common: dict[str, Any]) -> MergedExit:
    """A multirate exit as one :class:`~bridge.polyphase_module.PolyphaseConv`: the operator
    (at its least periods ``P``, ``Q``), its block as one stride-1 conv on the
    ``ceil(out / Q)`` grid (``C_out M x C_in N x k`` multiply-adds per block position)."""
    layout = op.to_weights()
    weight = layout.conv.weight
    grid = math.prod(-(-o // q) for o, q in zip(out, op.out_period))
    macs = int(weight.numel() * grid) + (0 if bias_map is None else int(bias_map.numel()))
    bias = layout.conv.bias.clone() if layout.conv.bias is not None else None
    return MergedExit(kind="polyphase", weight=weight, bias=bias, layout=layout, window=out,
                      bias_map=bias_map, macs=macs, **common)


def _emission(node: fx.Node, op: Any, sn: SegmentNetwork, out: tuple[int, ...],
              periodic: bool, bias_map: torch.Tensor | None, exact: bool, where: str,
              region: np.ndarray | None, traced: TracedModel) -> MergedExit:
    sizes = tuple(sn.input_shape[1:])
    exit_shape = traced.shape(node)
    common = dict(exit=node, exit_shape=exit_shape, input_shape=sn.input_shape, exact=exact,
                  where=where, region=region)
    if _multirate(op):   # one stride-1 kernel when the rates cancel (down_s K up_s), else phases
        poly = as_polyphase(op).minimal()
        single = poly.to_conv()
        if single is None or any(u > 1 for u in single.upsample):
            return _polyphase_emission(poly, out, bias_map, common)
        op = single
    bias = op.bias.clone() if op.has_bias else None
    geometry = _conv_geometry(op, sizes, out, periodic)
    weight = geometry.pop("weight")
    groups = _groups(weight)
    grouped = _grouped(weight, groups)
    dilation, grouped = _dilation(grouped, tuple(geometry.get("conv_padding", ())))
    macs = int(grouped.shape[0] * grouped.shape[1] * math.prod(grouped.shape[2:]) * math.prod(out))
    if all(o == 1 for o in out) and bias_map is None:
        matrix = _window_matrix(op, sizes, periodic)
        if matrix.numel() <= macs:
            return MergedExit(kind="linear", weight=matrix, bias=bias, macs=int(matrix.numel()),
                              **common)
    if bias_map is not None:
        macs += int(bias_map.numel())
    return MergedExit(kind="conv", weight=grouped, bias=bias, groups=groups, dilation=dilation,
                      bias_map=bias_map, macs=macs, **geometry, **common)


def _window_matrix(op: KernelOperator, sizes: tuple[int, ...], periodic: bool) -> torch.Tensor:
    """The single output position as a matrix on the flattened input window:
    ``y[o] = b + Σ_{c,j} w[o, c, p + j] x[c, j]`` (``w``, ``p`` of :meth:`to_weight`: the
    coefficient of ``z^(-j)``; for periodic inputs of the kernel folded modulo ``n``),
    taps beyond the window are zero-padding taps and drop out."""
    layout = (op.mod_circular(sizes) if periodic else op).to_weight()
    w, p = layout.weight, layout.padding
    slices, pads = [slice(None), slice(None)], []
    for axis, (pi, n) in enumerate(zip(p, sizes)):
        k = w.shape[2 + axis]
        slices.append(slice(min(pi, k), min(pi + n, k)))
        pads.append(n - (min(pi + n, k) - min(pi, k)))
    window = w[tuple(slices)]
    if any(pads):
        window = torch.nn.functional.pad(window, [v for pad in reversed(pads) for v in (0, pad)])
    return window.reshape(w.shape[0], -1)
