"""Running exact operators with PyTorch.

:class:`PeriodicConv` evaluates ``y = down_s((K(z) X(z)) mod (z^n - 1)) + b`` on a batch of
``n``-periodic signals with one ``F.conv*d``: the kernel is first reduced modulo
``z^n - 1`` (exponents into ``[0, n)``, so it fits in one period), then the input is padded
circularly by the largest exponent ``p`` on the left, and the output cropped to ``n / s``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..algebra import ConvOperator

__all__ = ["conv_nd", "reduce_periodic", "PeriodicConv"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def conv_nd(ndim: int):
    """``F.conv1d``, ``F.conv2d`` or ``F.conv3d``."""
    return _CONV[ndim]


def reduce_periodic(op: ConvOperator, size: Sequence[int]) -> ConvOperator:
    """``K(z) mod (z^n - 1)``: the same operator on ``n``-periodic signals, kernel exponents
    in ``[0, n)``."""
    matrix = [[e.mod_circular(size) for e in row] for row in op.matrix]
    return ConvOperator(op.ring, matrix, op.stride, op.bias, op.upsample)


class PeriodicConv(torch.nn.Module):
    """An exact operator on ``size``-periodic inputs as one circular convolution."""

    def __init__(self, op: ConvOperator, size: Sequence[int], dtype: torch.dtype = torch.float64):
        super().__init__()
        size = tuple(int(n) for n in size)
        if any(n % s for n, s in zip(size, op.stride)) or any(u != 1 for u in op.upsample):
            raise ValueError(f"a periodic convolution needs strides {op.stride} dividing the "
                             f"size {size} and no up-sampling")
        layout = reduce_periodic(op, size).to_weight()
        self.size, self.stride, self.ndim = size, layout.stride, op.ndim
        self.register_buffer("weight", torch.as_tensor(layout.weight, dtype=dtype))
        self.register_buffer("bias", None if layout.bias is None
                             else torch.as_tensor(layout.bias, dtype=dtype))
        pads: list[int] = []
        for p, k in reversed(list(zip(layout.padding, layout.weight.shape[2:]))):
            pads += [p, max(0, k - 1 - p)]  # exponents are >= 0: nothing right of x is read
        self.pads = pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.size:
            raise ValueError(f"expected inputs of size {self.size}, got {tuple(x.shape[2:])}")
        y = conv_nd(self.ndim)(F.pad(x.to(self.weight.dtype), self.pads, mode="circular"),
                               self.weight, self.bias, stride=self.stride)
        window = tuple(slice(0, n // s) for n, s in zip(self.size, self.stride))
        return y[(slice(None), slice(None), *window)]
