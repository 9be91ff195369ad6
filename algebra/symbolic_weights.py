"""Convolutions whose weights are symbols: the objects collapse identities are proved on.

Every weight ``w[o, c, a...]`` becomes the sympy symbol ``{name}_{o}{c}{a...}`` (indices
joined by underscores when any exceeds 9) and every bias entry ``b_{name}_{o}``; the
coefficient domain is the polynomial ring ``base[symbols]``, so products of operators stay
on sympy's sparse polynomial arithmetic.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import sympy
from sympy.polys.domains import QQ
from sympy.polys.domains.domain import Domain

from .errors import InvalidInputError, InvalidTypeError
from .laurent import LaurentRing, per_axis
from .layout import default_ring, operator_from_weight
from .operator import ConvOperator
from .validate import bool_arg, describe, int_arg

__all__ = ["symbolic_operator", "weight_symbols"]


def weight_symbols(name: str, shape: Sequence[int]) -> np.ndarray:
    """An object array of distinct symbols ``name_{index}`` with the given shape."""
    shape = tuple(int(s) for s in shape)
    join = "_" if max(shape, default=0) > 10 else ""
    array = np.empty(shape, dtype=object)
    for index in np.ndindex(*shape):
        array[index] = sympy.Symbol(f"{name}_{join.join(map(str, index))}" if index else name)
    return array


def symbolic_operator(name: str, out_channels: int, in_channels: int,
                      kernel_size: int | Sequence[int], *, ring: LaurentRing | None = None,
                      ndim: int | None = None, stride: int | Sequence[int] = 1,
                      padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1,
                      groups: int = 1, bias: bool = False, base: Domain = QQ) -> ConvOperator:
    """A symbolic convolution ``conv{n}d`` with weight shape ``(C_out, C_in/g, *k)``."""
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise InvalidTypeError(f"name must be a string like 'a' or 'w1' (it names the weight "
                               f"symbols), got {describe(name)}")
    out_channels = int_arg(out_channels, "out_channels", minimum=1)
    in_channels = int_arg(in_channels, "in_channels", minimum=1)
    groups = int_arg(groups, "groups", minimum=1)
    bias = bool_arg(bias, "bias")
    if ring is not None and not isinstance(ring, LaurentRing):
        raise InvalidTypeError(f"ring must be a LaurentRing or None, got {describe(ring)}")
    if ndim is not None:
        ndim = int_arg(ndim, "ndim", minimum=1, maximum=3)
    elif ring is not None:
        ndim = ring.ngens
    elif isinstance(kernel_size, (str, bytes)) or not hasattr(kernel_size, "__len__"):
        ndim = 1
    else:
        ndim = len(kernel_size)
    kernel = per_axis(kernel_size, ndim, "kernel_size")
    if any(k < 1 for k in kernel):
        raise InvalidInputError(f"kernel_size must be positive, got {kernel}")
    if in_channels % groups or out_channels % groups:
        raise InvalidInputError(f"groups={groups} must divide both channel counts")
    weights = weight_symbols(name, (out_channels, in_channels // groups, *kernel))
    symbols = list(weights.flat)
    bias_symbols = None
    if bias:
        bias_symbols = [sympy.Symbol(f"b_{name}_{o}") for o in range(out_channels)]
        symbols += bias_symbols
    domain = base[symbols]
    ring = default_ring(ndim, domain) if ring is None else ring.with_domain(ring.domain.unify(domain))
    return operator_from_weight(weights, bias_symbols, stride=stride, padding=padding,
                                dilation=dilation, groups=groups, ring=ring, domain=ring.domain)
