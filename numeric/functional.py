"""The one table from the number of spatial axes to ``torch.nn.functional``'s layers."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..algebra.errors import InvalidInputError

__all__ = ["conv_nd", "conv_transpose_nd", "avg_pool_nd", "adaptive_avg_pool_nd", "avg_pool"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_ADAPTIVE_AVG_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d,
                      3: F.adaptive_avg_pool3d}


def _lookup(table: dict[int, Callable], ndim: int, what: str) -> Callable:
    try:
        return table[ndim]
    except KeyError:
        raise InvalidInputError(f"{what} exists for 1, 2 or 3 spatial axes, not {ndim}") from None


def conv_nd(ndim: int) -> Callable:
    """``F.conv1d``, ``F.conv2d`` or ``F.conv3d``."""
    return _lookup(_CONV, ndim, "a convolution")


def conv_transpose_nd(ndim: int) -> Callable:
    """``F.conv_transpose1d``, ``2d`` or ``3d``."""
    return _lookup(_CONV_TRANSPOSE, ndim, "a transposed convolution")


def avg_pool_nd(ndim: int) -> Callable:
    """``F.avg_pool1d``, ``2d`` or ``3d``."""
    return _lookup(_AVG_POOL, ndim, "average pooling")


def adaptive_avg_pool_nd(ndim: int) -> Callable:
    """``F.adaptive_avg_pool1d``, ``2d`` or ``3d``."""
    return _lookup(_ADAPTIVE_AVG_POOL, ndim, "adaptive average pooling")


def avg_pool(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int],
             padding: Sequence[int], ceil_mode: bool = False, count_include_pad: bool = True,
             divisor_override: int | None = None) -> torch.Tensor:
    """``F.avg_pool{n}d`` on ``(B, C, *n)`` with every option; ``F.avg_pool1d`` has no
    ``divisor_override``, so a 1-D pool with one runs as ``F.avg_pool2d`` on a height-1
    image (the same windows)."""
    ndim = x.ndim - 2
    if divisor_override is None:
        return avg_pool_nd(ndim)(x, tuple(kernel), tuple(stride), tuple(padding),
                                 ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    if ndim == 1:
        return F.avg_pool2d(x.unsqueeze(2), (1, *kernel), (1, *stride), (0, *padding),
                            ceil_mode, count_include_pad, divisor_override).squeeze(2)
    return avg_pool_nd(ndim)(x, tuple(kernel), tuple(stride), tuple(padding), ceil_mode,
                             count_include_pad, divisor_override)
