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

from ..algebra.footprint import OperatorShape, node_shape
from ..algebra.network import (AdaptiveAvgPool, Add, AvgPool, ChannelAffine, Concat, Conv,
                               ConvTranspose, GlobalAvgPool, Input, Network, Split)

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


def _product_flops(c_out: int, c_mid: int, c_in: int, size: Sequence[int]
                   ) -> tuple[float, float]:
    """``(fft, matmul)`` flops of one polymatmul on the grid ``size``."""
    grid = math.prod(size)
    freq = grid / 2 + 1
    transforms = 2.5 * (c_out * c_mid + c_mid * c_in + c_out * c_in) * grid * math.log2(grid + 1)
    return transforms, 8.0 * c_out * c_mid * c_in * freq


def estimate_collapse(network: Network, input_shape: Sequence[int]) -> CollapseEstimate:
    """The estimate for the network's output (module docstring), on the same shape-only
    walk as the memory guard (:class:`algebra.footprint.OperatorShape`).  A transposed
    convolution (up-sampling ``u``) stretches the inner box by ``u`` (``K(z) X(z^u)``), and
    the merged form reads ``1/prod(U)`` of its box per output (the taps of one output
    phase: the same for the polyphase export of a multirate segment)."""
    shapes = network.shapes(input_shape)
    ndim = network.ndim
    c0 = shapes["input"][0]
    box: dict[str, OperatorShape] = {}
    fft = matmul = 0.0
    for name in network.order():
        node = network.nodes[name]
        if isinstance(node, Input):
            box[name] = OperatorShape(np.eye(c0, dtype=bool), (0,) * ndim, (0,) * ndim,
                                      (1,) * ndim, (1,) * ndim)
            continue
        if isinstance(node, (Add, Concat)):
            box[name] = OperatorShape.union([box[p] for p in node.inputs],
                                            stack=isinstance(node, Concat))
            continue
        if not isinstance(node, (Conv, ConvTranspose, AvgPool, AdaptiveAvgPool, GlobalAvgPool,
                                 Split, ChannelAffine)):
            return CollapseEstimate(math.inf, math.inf, (), (), 1, 0)
        parent = box[node.inputs[0]]
        local = node_shape(node, shapes[node.inputs[0]])
        outer = tuple((k - 1) * s + 1 for k, s in zip(local.box, parent.stride))
        size = tuple(a + (b - 1) * u for a, b, u in zip(outer, parent.box, local.upsample))
        step_fft, step_matmul = _product_flops(local.rows, local.cols, c0, size)
        fft, matmul = fft + step_fft, matmul + step_matmul
        box[name] = local.compose(parent)
    result = box[network.output_name]
    kernel = tuple(max(h, 0) - l + 1 for l, h in zip(result.low, result.high))
    groups = _groups(result.coupled)
    out = shapes[network.output_name]
    macs = out[0] * (c0 // groups) * math.prod(kernel) * math.prod(out[1:]) \
        // math.prod(result.upsample)
    return CollapseEstimate(fft, matmul, kernel, result.stride, groups, int(macs))
