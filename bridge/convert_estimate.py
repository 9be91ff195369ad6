"""What collapsing a segment will cost and give, from its layer shapes alone.

Before any polynomial product is computed, walk the segment's Network the way
:func:`algebra.collapse.collapse_walk` does, but with boxes instead of kernels: per node the
exponent box ``[low, high]`` of its operator relative to the segment input, the total
stride ``S`` and the channel connectivity (which output channel depends on which input
channel).  A layer with local taps ``[l, h]`` and stride ``s`` composed after a value with
``([low, high], S)`` gives ``[l S + low, h S + high]`` and stride ``S s`` (the noble
identity ``K(z^S)``).  From that:

* ``fft_flops``, ``matmul_flops`` — the work of the products that
  :func:`numeric.polymatmul.polymatmul` will do: one real FFT of both factors and of the product on the product's grid, plus one complex
  ``C_out x C_mid x C_in`` matrix product per frequency, for every layer;
* ``macs`` — the multiply-adds per sample of the merged convolution (the box as kernel,
  grouped as the channel connectivity allows; dilation is not predicted, so this is an
  upper bound).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..algebra.network import (Add, AvgPool, ChannelAffine, Concat, Conv, ConvTranspose,
                               GlobalAvgPool, Input, Network, Split)

__all__ = ["CollapseEstimate", "estimate_collapse"]

#: float64 rates on one small CPU core (measured on collapses of ResNets): the FFTs of the
#: factors, memory bound on large grids, and the per-frequency channel matrix products
FFT_FLOPS_PER_SECOND = 2e8
MATMUL_FLOPS_PER_SECOND = 8e9


@dataclass(frozen=True)
class CollapseEstimate:
    """``fft_flops``/``matmul_flops`` of the collapse, ``kernel`` extent per axis and
    ``stride`` of the merged operator, ``groups`` its channel structure allows, ``macs``
    per sample of the merged convolution on the output window."""
    fft_flops: float
    matmul_flops: float
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    groups: int
    macs: int

    @property
    def seconds(self) -> float:
        return self.fft_flops / FFT_FLOPS_PER_SECOND + self.matmul_flops / MATMUL_FLOPS_PER_SECOND


def _groups(mask: np.ndarray) -> int:
    """Largest ``g`` for which the channel connectivity is block diagonal."""
    c_out, c_in = mask.shape
    for g in sorted((d for d in range(2, math.gcd(c_out, c_in) + 1)
                     if c_out % d == 0 and c_in % d == 0), reverse=True):
        blocks = mask.reshape(g, c_out // g, g, c_in // g)
        off = blocks.copy()
        off[np.arange(g), :, np.arange(g)] = False
        if not off.any():
            return g
    return 1


def _conv_mask(node: Conv) -> np.ndarray:
    w = np.asarray(node.weight != 0).reshape(node.weight.shape[0], node.weight.shape[1], -1)
    per_group = w.any(axis=2)
    c_out, ipg = per_group.shape
    opg = c_out // node.groups
    mask = np.zeros((c_out, ipg * node.groups), bool)
    for o in range(c_out):
        g = o // opg
        mask[o, g * ipg:(g + 1) * ipg] = per_group[o]
    return mask


def _product_flops(c_out: int, c_mid: int, c_in: int, size: Sequence[int]
                   ) -> tuple[float, float]:
    """``(fft, matmul)`` flops of one polymatmul on the grid ``size``."""
    grid = math.prod(size)
    freq = grid / 2 + 1
    transforms = 2.5 * (c_out * c_mid + c_mid * c_in + c_out * c_in) * grid * math.log2(grid + 1)
    return transforms, 8.0 * c_out * c_mid * c_in * freq


def estimate_collapse(network: Network, input_shape: Sequence[int]) -> CollapseEstimate:
    """The estimate for the network's output (module docstring).  Transposed convolutions
    have no estimate (numeric collapse does not take them): the flops are infinite."""
    shapes = network.shapes(input_shape)
    ndim = network.ndim
    c0 = shapes["input"][0]
    box: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], np.ndarray]] = {}
    fft = matmul = 0.0
    for name in network.order():
        node = network.nodes[name]
        if isinstance(node, Input):
            box[name] = ((0,) * ndim, (0,) * ndim, (1,) * ndim, np.eye(c0, dtype=bool))
            continue
        if isinstance(node, ConvTranspose):
            return CollapseEstimate(math.inf, math.inf, (), (), 1, 0)
        if isinstance(node, (Add, Concat)):
            parts = [box[p] for p in node.inputs]
            low = tuple(min(col) for col in zip(*(p[0] for p in parts)))
            high = tuple(max(col) for col in zip(*(p[1] for p in parts)))
            masks = [p[3] for p in parts]
            mask = np.vstack(masks) if isinstance(node, Concat) else np.logical_or.reduce(masks)
            box[name] = (low, high, parts[0][2], mask)
            continue
        parent = node.inputs[0]
        low_in, high_in, stride_in, mask_in = box[parent]
        c_parent = shapes[parent][0]
        if isinstance(node, Conv):
            left = tuple(l for l, _ in node.padding)
            local_low = tuple(p - d * (k - 1) for p, d, k in zip(left, node.dilation,
                                                                 node.kernel_size))
            local_high, local_stride, local_mask = left, node.stride, _conv_mask(node)
        elif isinstance(node, AvgPool):
            local_low = tuple(p - (k - 1) for p, k in zip(node.padding, node.kernel_size))
            local_high, local_stride = node.padding, node.stride
            local_mask = np.eye(c_parent, dtype=bool)
        elif isinstance(node, GlobalAvgPool):
            n = shapes[parent][1:]
            local_low, local_high, local_stride = tuple(1 - v for v in n), (0,) * ndim, tuple(n)
            local_mask = np.eye(c_parent, dtype=bool)
        elif isinstance(node, Split):
            local_low = local_high = (0,) * ndim
            local_stride = (1,) * ndim
            local_mask = np.eye(c_parent, dtype=bool)[node.start:node.stop]
        elif isinstance(node, ChannelAffine):
            local_low = local_high = (0,) * ndim
            local_stride = (1,) * ndim
            local_mask = np.eye(c_parent, dtype=bool)
        else:
            return CollapseEstimate(math.inf, math.inf, (), (), 1, 0)
        outer = tuple((h - l) * s + 1 for l, h, s in zip(local_low, local_high, stride_in))
        inner = tuple(h - l + 1 for l, h in zip(low_in, high_in))
        size = tuple(a + b - 1 for a, b in zip(outer, inner))
        step_fft, step_matmul = _product_flops(local_mask.shape[0], c_parent, c0, size)
        fft, matmul = fft + step_fft, matmul + step_matmul
        low = tuple(l * s + li for l, s, li in zip(local_low, stride_in, low_in))
        high = tuple(h * s + hi for h, s, hi in zip(local_high, stride_in, high_in))
        mask = (local_mask.astype(np.float32) @ mask_in.astype(np.float32)) > 0
        box[name] = (low, high, tuple(a * b for a, b in zip(stride_in, local_stride)), mask)
    low, high, stride, mask = box[network.output_name]
    kernel = tuple(max(h, 0) - l + 1 for l, h in zip(low, high))
    groups = _groups(mask)
    out = shapes[network.output_name]
    macs = out[0] * (c0 // groups) * math.prod(kernel) * math.prod(out[1:])
    return CollapseEstimate(fft, matmul, kernel, stride, groups, int(macs))
