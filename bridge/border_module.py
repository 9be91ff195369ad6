"""The border-corrected convolution: a collapsed kernel that is exact at every position.

:class:`BorderCorrectedConv` computes a linear network ``N`` on one input size as

    y[interior] = conv_valid(x[interior's input slice], K) + b      (one F.conv{n}d)
    y[piece]    = crop(N_layers(x[strip]))                          (per border piece)

assembled with ``torch.cat`` (per axis: the low slab, the inner part, the high slab), so
every output position is computed once — by the collapsed kernel on the interior box of
the exact region, by the ORIGINAL layers on the border strips
(:mod:`numeric.border`: the interior/border split, the strip widths and the proof that the
strips give the network's own values).  Its multiply-adds per sample are the kernel's on
the interior plus the layers' on the strips: area x kernel + perimeter x depth.

The module is plain torch: :func:`border_module` returns it traced by ``torch.fx`` into a
``GraphModule`` of ``F.pad``/``F.conv{n}d``/``torch.narrow``/``torch.cat`` calls and weight
buffers, which pickles, runs and exports (``torch.export``, ``.pt2``) without laurentnet;
:func:`border_corrected_exit` turns an inexact merged kernel into this exact form.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..algebra.network import Add, AvgPool, ChannelAffine, Concat, Conv, Input, Network, Split
from ..numeric.border import BorderPiece, BorderPlan, border_plan
from .traced import assert_sample_shape, traced_module

__all__ = ["StripLayers", "BorderCorrectedConv", "border_module", "border_corrected_exit"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _tensor(values: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.array(values, dtype=np.float64)).to(dtype)   # a copy


def _pad_list(pairs: Sequence[tuple[int, int]]) -> list[int]:
    """``F.pad`` order: the last axis first, ``(left, right)`` each."""
    return [v for left, right in reversed(pairs) for v in (left, right)]


class StripLayers(nn.Module):
    """The layers of a local :class:`algebra.Network` (convolutions with their padding
    mode, channel scales, sums, concatenations, channel slices, average pools) in plain
    torch, on any input size the layers accept: ``F.pad`` + ``F.conv{n}d`` per
    convolution, exactly as the network defines them."""

    def __init__(self, network: Network, dtype: torch.dtype):
        super().__init__()
        self.ndim, self.output = network.ndim, network.output_name
        self.steps: list[tuple[str, str, tuple[str, ...], dict[str, Any]]] = []
        for index, name in enumerate(network.order()):
            node = network.nodes[name]
            if isinstance(node, Input):
                continue
            self.steps.append((name, type(node).__name__, tuple(node.inputs),
                               self._register(f"p{index}", node, dtype)))

    def _register(self, stem: str, node: Any, dtype: torch.dtype) -> dict[str, Any]:
        """The node's parameters as buffers (names in the returned spec)."""
        spec: dict[str, Any] = {}
        tensors: dict[str, Any] = {}
        if isinstance(node, Conv):
            tensors = {"weight": node.weight, "bias": node.bias}
            spec.update(stride=node.stride, dilation=node.dilation, groups=node.groups,
                        pad=_pad_list(node.padding), mode="constant" if node.mode == "zeros"
                        else node.mode)
        elif isinstance(node, ChannelAffine):
            tensors = {"scale": list(node.scale), "shift": None if node.shift is None
                       else list(node.shift)}
        elif isinstance(node, Add):
            tensors = {"coefficients": None if node.coefficients is None
                       else [float(c) for c in node.coefficients]}
        elif isinstance(node, Split):
            spec.update(start=node.start, length=node.stop - node.start)
        elif isinstance(node, AvgPool):
            spec.update(kernel=node.kernel_size, stride=node.stride, padding=node.padding,
                        include=node.count_include_pad)
        elif not isinstance(node, Concat):
            raise TypeError(f"no strip evaluation for {type(node).__name__}")
        for key, value in tensors.items():
            if value is not None:
                self.register_buffer(f"{stem}_{key}", _tensor(value, dtype))
                spec[key] = f"{stem}_{key}"
        return spec

    def _conv(self, h: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
        if any(spec["pad"]):
            h = F.pad(h, spec["pad"], mode=spec["mode"])
        bias = getattr(self, spec["bias"]) if "bias" in spec else None
        return _CONV[self.ndim](h, getattr(self, spec["weight"]), bias, stride=spec["stride"],
                                dilation=spec["dilation"], groups=spec["groups"])

    def _step(self, kind: str, inputs: list[torch.Tensor], spec: dict[str, Any]) -> torch.Tensor:
        view = (1, -1) + (1,) * self.ndim
        if kind == "Conv":
            return self._conv(inputs[0], spec)
        if kind == "ChannelAffine":
            out = inputs[0] * getattr(self, spec["scale"]).view(view)
            return out + getattr(self, spec["shift"]).view(view) if "shift" in spec else out
        if kind == "Add":
            if "coefficients" not in spec:
                out = inputs[0]
                for term in inputs[1:]:
                    out = out + term
                return out
            c = getattr(self, spec["coefficients"])
            out = inputs[0] * c[0]
            for i, term in enumerate(inputs[1:], 1):
                out = out + term * c[i]
            return out
        if kind == "Concat":
            return torch.cat(inputs, 1)
        if kind == "Split":
            return torch.narrow(inputs[0], 1, spec["start"], spec["length"])
        return _POOL[self.ndim](inputs[0], spec["kernel"], spec["stride"], spec["padding"],
                                count_include_pad=spec["include"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {"input": x}
        for name, kind, inputs, spec in self.steps:
            values[name] = self._step(kind, [values[i] for i in inputs], spec)
        return values[self.output]


def _piece_axis(piece: BorderPiece, interior: tuple[tuple[int, int], ...]) -> int:
    """The axis whose slab ``piece`` is: the first axis where it leaves the interior."""
    return next(a for a, (box, inner) in enumerate(zip(piece.out_box, interior)) if box != inner)


class BorderCorrectedConv(nn.Module):
    """``y = N(x)`` at every output position: the collapsed kernel (``weight``, ``bias``,
    ``stride``, ``dilation``, ``groups`` and left padding ``padding`` per axis, i.e.
    ``y[i] = b + Σ_a w[a] x[s i + d a - p]``) on ``plan.interior``, the original ``layers``
    (:class:`StripLayers`) on ``plan.pieces`` (module docstring)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride: Sequence[int],
                 dilation: Sequence[int], groups: int, padding: Sequence[int],
                 input_shape: Sequence[int], plan: BorderPlan, layers: nn.Module):
        super().__init__()
        self.register_buffer("weight", weight)
        if bias is not None:
            self.register_buffer("bias", bias)
        self.has_bias = bias is not None
        self.stride, self.dilation, self.groups = tuple(stride), tuple(dilation), int(groups)
        self.padding, self.sizes = tuple(padding), tuple(input_shape[1:])
        self.in_channels = int(input_shape[0])
        self.plan, self.layers = plan, layers
        self.ndim = len(self.sizes)
        self.slabs: dict[int, list[BorderPiece]] = {a: [] for a in range(self.ndim)}
        if plan.interior_positions:
            for piece in plan.pieces:
                self.slabs[_piece_axis(piece, plan.interior)].append(piece)

    def _interior(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel on the interior box: the input slice it reads (zero padded where it
        leaves the window), then a convolution without padding."""
        pads: list[tuple[int, int]] = []
        for axis, (lo, hi) in enumerate(self.plan.interior):
            k = self.weight.shape[2 + axis]
            s, d, p, n = self.stride[axis], self.dilation[axis], self.padding[axis], self.sizes[axis]
            a, b = s * lo - p, s * (hi - 1) - p + d * (k - 1) + 1
            x = torch.narrow(x, 2 + axis, max(a, 0), min(b, n) - max(a, 0))
            pads.append((max(0, -a), max(0, b - n)))
        if any(v for pair in pads for v in pair):
            x = F.pad(x, _pad_list(pads))
        return _CONV[self.ndim](x, self.weight, self.bias if self.has_bias else None,
                                stride=self.stride, dilation=self.dilation, groups=self.groups)

    def _strip(self, x: torch.Tensor, piece: BorderPiece) -> torch.Tensor:
        """The original layers on the strip ``piece.in_box``, cropped to ``piece.out_box``."""
        for axis, (a, b) in enumerate(piece.in_box):
            if (a, b) != (0, self.sizes[axis]):
                x = torch.narrow(x, 2 + axis, a, b - a)
        y = self.layers(x)
        for axis, ((lo, hi), off) in enumerate(zip(piece.out_box, piece.offset)):
            y = torch.narrow(y, 2 + axis, off, hi - lo)
        return y

    def _assemble(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        inner = self._assemble(x, axis + 1) if axis + 1 < self.ndim else self._interior(x)
        low = [self._strip(x, p) for p in self.slabs[axis] if p.out_box[axis][0] == 0]
        high = [self._strip(x, p) for p in self.slabs[axis] if p.out_box[axis][0] != 0]
        parts = low + [inner] + high
        return torch.cat(parts, 2 + axis) if len(parts) > 1 else inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert_sample_shape(x, (self.in_channels, *self.sizes), "this BorderCorrectedConv")
        if not self.plan.interior_positions:
            return self._strip(x, self.plan.pieces[0])
        return self._assemble(x, 0)


def border_module(merged: Any, dtype: torch.dtype) -> fx.GraphModule:
    """The :class:`BorderCorrectedConv` of a border-corrected merged exit
    (:func:`border_corrected_exit`), in ``dtype``, traced by ``torch.fx`` into a plain-torch
    ``GraphModule`` (``class_name="BorderCorrectedConv"``)."""
    weight, ndim = merged.weight, merged.weight.ndim - 2
    if merged.pre_pad is not None:
        padding = tuple(merged.pre_pad[2 * (ndim - 1 - a)] for a in range(ndim))
    else:
        padding = tuple(merged.conv_padding)
    module = BorderCorrectedConv(
        weight.to(dtype), None if merged.bias is None else merged.bias.to(dtype),
        merged.stride, merged.dilation, merged.groups, padding, merged.input_shape,
        merged.border_plan, StripLayers(merged.border_network, dtype))
    return traced_module(module, "BorderCorrectedConv")


def border_corrected_exit(merged: Any, network: Network) -> Any:
    """The inexact merged kernel ``merged`` (a ``convert_merge.MergedExit`` of kind
    ``"conv"`` with its ``region``) made exact at every output position: the same kernel
    on the interior box of the region, ``network`` (the segment's layers, output set to
    the exit) on the border strips.  ``macs`` becomes the kernel's on the interior plus the
    layers' on the strips; ``where`` gives the split.  Raises InvalidInputError when the
    network has no strips (non-local layers, circular padding) — the caller keeps its
    refusal then."""
    w = merged.weight
    taps = int(w.shape[0] * w.shape[1] * math.prod(w.shape[2:]))
    plan = border_plan(network, merged.input_shape, merged.region, taps)
    where = (f"exact at every output position (border-corrected): {plan.describe()}")
    return dataclasses.replace(merged, exact=True, region=None, where=where, border_plan=plan,
                               border_network=network,
                               macs=plan.interior_macs + plan.border_macs)
