"""A polyphase operator as a torch module: pixel-unshuffle, one stride-1 conv, pixel-shuffle.

A :class:`~laurentnet.algebra.PolyphaseOperator` with input period ``P``, output period
``Q`` and block ``H`` (``(C_out M) x (C_in N)``, ``M = prod Q``, ``N = prod P``) computes,
for an input of spatial size ``n`` and an output window of size ``out``,

1. ``x`` zero-padded on the right to ``m_in P`` (``m_in = ceil(n / P)``) and unshuffled:
   channel ``c N + r`` of the result is ``x_c[k P + r]``;
2. the stride-1 convolution of ``H`` (:meth:`PolyphaseOperator.to_weights`; its PyTorch
   left padding ``p``, and on the right whatever gives ``m_out = ceil(out / Q)`` outputs:
   ``m_out - m_in - p + k - 1``, cropping when negative) — ``M`` convolutions, one per
   output phase;
3. pixel-shuffle: output ``y_o[m Q + t]`` is channel ``o M + t``, cropped to ``out``.

The module needs no laurentnet to run (plain reshapes, ``F.pad`` and ``nn.Conv{n}d``).
"""
from __future__ import annotations

from math import prod
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch import fx

from ..algebra.errors import InvalidInputError, InvalidTypeError
from .traced import assert_sample_shape, traced_module
from ..algebra.polyphase import PolyphaseLayout, PolyphaseOperator

__all__ = ["PolyphaseConv", "polyphase_module", "traced_polyphase"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class PolyphaseConv(nn.Module):
    """Pixel-unshuffle by ``in_factors``, ``conv`` (stride 1, no padding of its own), pixel
    shuffle by ``out_factors``, for inputs of spatial size ``input_size`` and the output
    window ``output_size`` (module docstring)."""

    def __init__(self, layout: PolyphaseLayout, input_size: Sequence[int],
                 output_size: Sequence[int], dtype: torch.dtype = torch.float32):
        super().__init__()
        ndim = len(layout.in_factors)
        if ndim not in _CONV:
            raise InvalidInputError(f"polyphase modules exist in 1-3 dimensions, got {ndim}")
        self.in_factors, self.out_factors = tuple(layout.in_factors), tuple(layout.out_factors)
        self.input_size, self.output_size = tuple(input_size), tuple(output_size)
        if len(self.input_size) != ndim or len(self.output_size) != ndim:
            raise InvalidInputError(f"input_size and output_size need {ndim} entries")
        self.in_channels, self.out_channels = layout.in_channels, layout.out_channels
        weight = torch.as_tensor(layout.conv.weight, dtype=dtype)
        kernel = tuple(weight.shape[2:])
        self.m_in = tuple(_ceil_div(n, p) for n, p in zip(self.input_size, self.in_factors))
        self.m_out = tuple(_ceil_div(o, q) for o, q in zip(self.output_size, self.out_factors))
        self.pads = tuple((p, mo - mi - p + k - 1) for p, mo, mi, k in
                          zip(layout.conv.padding, self.m_out, self.m_in, kernel))
        self.conv = _CONV[ndim](weight.shape[1], weight.shape[0], kernel,
                                bias=layout.conv.bias is not None, dtype=dtype)
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            if layout.conv.bias is not None:
                self.conv.bias.copy_(torch.as_tensor(layout.conv.bias, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert_sample_shape(x, (self.in_channels, *self.input_size), "this PolyphaseConv")
        ndim = len(self.in_factors)
        batch = x.shape[0]
        grow = [v for n, m, p in zip(self.input_size, self.m_in, self.in_factors)
                for v in (0, m * p - n)]
        x = F.pad(x, _torch_order(grow))
        split = [v for m, p in zip(self.m_in, self.in_factors) for v in (m, p)]
        x = x.reshape(batch, self.in_channels, *split)
        order = (0, 1, *(3 + 2 * a for a in range(ndim)), *(2 + 2 * a for a in range(ndim)))
        x = x.permute(order).reshape(batch, self.in_channels * prod(self.in_factors), *self.m_in)
        x = F.pad(x, _torch_order([v for pair in self.pads for v in pair]))
        y = self.conv(x)
        y = y.reshape(batch, self.out_channels, *self.out_factors, *self.m_out)
        order = (0, 1, *(v for a in range(ndim) for v in (2 + ndim + a, 2 + a)))
        y = y.permute(order).reshape(batch, self.out_channels,
                                     *(m * q for m, q in zip(self.m_out, self.out_factors)))
        return y[(slice(None), slice(None), *(slice(0, o) for o in self.output_size))]

    def extra_repr(self) -> str:
        return (f"unshuffle={self.in_factors}, shuffle={self.out_factors}, "
                f"input_size={self.input_size}, output_size={self.output_size}")


def _torch_order(pairs: list[int]) -> list[int]:
    """Per-axis ``(left, right)`` pairs (first axis first) in ``F.pad``'s order (last axis
    first)."""
    out: list[int] = []
    for a in range(len(pairs) // 2 - 1, -1, -1):
        out += pairs[2 * a:2 * a + 2]
    return out


def polyphase_module(operator: Any, input_size: Sequence[int] | None = None,
                     output_size: Sequence[int] | None = None,
                     dtype: torch.dtype = torch.float32) -> PolyphaseConv:
    """The :class:`PolyphaseConv` of a :class:`~laurentnet.algebra.PolyphaseOperator` (or
    of a :class:`~laurentnet.algebra.CollapseResult` holding one, whose input and output
    sizes are then the defaults).  It equals the operator on the whole output window; a
    collapse result equals the network on its ``region``."""
    if hasattr(operator, "operator") and hasattr(operator, "output_shape"):
        input_size = operator.input_shape[1:] if input_size is None else input_size
        output_size = operator.output_shape[1:] if output_size is None else output_size
        operator = operator.operator
    if not isinstance(operator, PolyphaseOperator):
        raise InvalidTypeError(f"operator must be a PolyphaseOperator (or a CollapseResult "
                               f"holding one), got {type(operator).__name__}")
    if input_size is None or output_size is None:
        raise InvalidInputError("input_size and output_size are needed for a bare operator")
    np_dtype = {torch.float64: "float64", torch.float32: "float32"}.get(dtype, "float64")
    return PolyphaseConv(operator.to_weights(dtype=np_dtype), input_size, output_size, dtype)


def traced_polyphase(layout: PolyphaseLayout, input_size: Sequence[int],
                     output_size: Sequence[int], dtype: torch.dtype) -> fx.GraphModule:
    """The :class:`PolyphaseConv` of ``layout`` traced by ``torch.fx`` into a plain-torch
    ``GraphModule`` (``class_name="PolyphaseConv"``: ``F.pad``, reshapes, permutes and one
    ``nn.Conv{n}d``), so a converted model holding it pickles and exports without
    laurentnet's classes."""
    return traced_module(PolyphaseConv(layout, input_size, output_size, dtype), "PolyphaseConv")
