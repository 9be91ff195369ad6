"""The one table from the number of spatial axes to ``torch.nn.functional``'s layers."""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F

from ..algebra.errors import InvalidInputError

__all__ = ["conv_nd", "conv_transpose_nd", "avg_pool_nd"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


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
