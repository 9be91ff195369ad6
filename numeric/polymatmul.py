"""The product of polynomial matrices in ascending coefficient order, at real widths.

``polymatmul(outer, inner, d)`` is ``C(z) = outer(z^d) inner(z)``: per output tap
``C[o, c, t] = sum_m sum_{d a + b = t} outer[o, m, a] inner[m, c, b]``, computed as one
batched matrix product per frequency of a real FFT (or one ``conv{n}d``), with the
structural zeros of the product kept exactly zero.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..algebra.errors import InvalidInputError, InvalidTypeError
from ..algebra.memory import check_budget, estimate_bytes
from .functional import conv_nd
from .inputs import FLOAT_DTYPES, check_float_dtype, positive_ints

__all__ = ["polymatmul", "inflate", "spatial_axes"]


def spatial_axes(t: torch.Tensor) -> tuple[int, ...]:
    """The spatial axes (all but the two channel axes) of a coefficient tensor."""
    return tuple(range(2, t.ndim))


def inflate(coeffs: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """Coefficients of ``K(z^d)``: ``d - 1`` zeros between neighbouring taps per axis."""
    if all(d == 1 for d in factors):
        return coeffs
    size = tuple((k - 1) * d + 1 for k, d in zip(coeffs.shape[2:], factors))
    out = coeffs.new_zeros((*coeffs.shape[:2], *size))
    out[(slice(None), slice(None), *(slice(None, None, d) for d in factors))] = coeffs
    return out


def product_workspace_bytes(c_out: int, c_mid: int, c_in: int, k_outer: Sequence[int],
                            k_inner: Sequence[int], dtype: torch.dtype, method: str) -> int:
    """Peak bytes :func:`polymatmul` allocates for a ``c_out x c_mid`` kernel of (dilated)
    size ``k_outer`` times a ``c_mid x c_in`` kernel of size ``k_inner``, result included:
    the result, its support mask and masked copy, the inflated outer kernel, and for
    ``'fft'`` the factors zero-padded to the grid, their spectra and the contiguous copies
    the batched product reads, and the product's spectrum (``'conv'``: the padded input)."""
    size = tuple(a + b - 1 for a, b in zip(k_outer, k_inner))
    out = estimate_bytes((c_out, c_in, *size), dtype)
    need = 3 * out + estimate_bytes((c_out, c_mid, *k_outer), dtype)
    if method == "fft":
        n_freq = int(np.prod(size[:-1])) * (size[-1] // 2 + 1)
        factors = c_out * c_mid + c_mid * c_in
        need += n_freq * 2 * estimate_bytes((2 * factors + c_out * c_in,), dtype)
        need += estimate_bytes((factors, *size), dtype)
    else:
        need += estimate_bytes((c_in, c_mid, *size), dtype)  # the padded input
    return need


def auto_method(k_outer: Sequence[int], k_inner: Sequence[int], dtype: torch.dtype) -> str:
    """``'conv'`` for small float32 kernels (oneDNN), ``'fft'`` otherwise."""
    small = int(np.prod(k_outer)) * int(np.prod(k_inner)) <= 100
    return "conv" if dtype == torch.float32 and small else "fft"


def polymatmul(outer: torch.Tensor, inner: torch.Tensor, dilation: int | Sequence[int] = 1,
               method: str = "auto", budget: int | None = None) -> torch.Tensor:
    """Product ``outer(z^d) inner(z)`` of polynomial matrices in ascending coefficient order:
    ``C[o, c, t] = sum_m sum_{d a + b = t} outer[o, m, a] inner[m, c, b]``, spatial size
    ``d (k_outer - 1) + k_inner``.  ``method='fft'``: one batched complex matrix product per
    frequency of a real FFT of that size; ``'conv'``: one ``conv{n}d`` (a full correlation
    with the reversed outer kernel); ``'auto'``: conv for small float32 kernels (oneDNN),
    FFT otherwise (torch's float64 convolution has no fast path).  The memory guard runs
    before anything is allocated."""
    for name, t in (("outer", outer), ("inner", inner)):
        if not isinstance(t, torch.Tensor):
            raise InvalidTypeError(f"polymatmul: {name} must be a torch tensor, got {type(t).__name__}")
        if t.ndim not in (3, 4, 5):
            raise InvalidInputError(f"polymatmul: {name} must have shape (C_out, C_in, *kernel) with "
                                    f"1-3 spatial axes, got {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            check_float_dtype(t.dtype, f"polymatmul: {name}'s dtype")
    if outer.ndim != inner.ndim or outer.shape[1] != inner.shape[0]:
        raise InvalidInputError(f"cannot multiply kernel matrices of shapes {tuple(outer.shape)} "
                                f"and {tuple(inner.shape)}")
    ndim = outer.ndim - 2
    d = positive_ints(dilation, ndim, "dilation")
    c_out, c_mid, c_in = outer.shape[0], outer.shape[1], inner.shape[1]
    k_outer = tuple((k - 1) * x + 1 for k, x in zip(outer.shape[2:], d))
    size = tuple(a + b - 1 for a, b in zip(k_outer, inner.shape[2:]))
    dtype = torch.promote_types(outer.dtype, inner.dtype)
    if method == "auto":
        method = auto_method(k_outer, inner.shape[2:], dtype)
    if method not in ("fft", "conv"):
        raise InvalidInputError(f"method must be 'auto', 'fft' or 'conv', got {method!r}")
    need = product_workspace_bytes(c_out, c_mid, c_in, k_outer, tuple(inner.shape[2:]), dtype,
                                   method)
    check_budget(need, f"composing a {c_out}x{c_mid} kernel with a {c_mid}x{c_in} kernel into "
                 f"{c_out}x{c_in}x{'x'.join(map(str, size))}", budget)
    outer, inner = inflate(outer.to(dtype), d), inner.to(dtype)
    if method == "conv":
        flipped = outer.flip(spatial_axes(outer))
        pad = tuple(k - 1 for k in outer.shape[2:])
        return conv_nd(ndim)(inner.transpose(0, 1), flipped, padding=pad).transpose(0, 1).contiguous()
    dims = tuple(range(-ndim, 0))
    fo = torch.fft.rfftn(outer, s=size, dim=dims).flatten(2).permute(2, 0, 1).contiguous()
    fi = torch.fft.rfftn(inner, s=size, dim=dims).flatten(2).permute(2, 0, 1).contiguous()
    prod = torch.bmm(fo, fi)  # (freq, C_out, C_in)
    del fo, fi
    spec_shape = (*size[:-1], size[-1] // 2 + 1)
    prod = prod.permute(1, 2, 0).reshape(c_out, c_in, *spec_shape)
    product = torch.fft.irfftn(prod, s=size, dim=dims)
    return product * _structural_support(outer, inner, size, dims)


def _structural_support(outer: torch.Tensor, inner: torch.Tensor, size: tuple[int, ...],
                        dims: tuple[int, ...]) -> torch.Tensor:
    """Where a product of these kernels can be nonzero: channel pairs ``(o, c)`` with some
    ``m`` where both ``outer[o, m]`` and ``inner[m, c]`` are nonzero, times positions in the
    sum of the two spatial supports.  Elsewhere the exact product is 0, and the FFT's
    round-off (~1e-17) must not turn those taps into nonzero coefficients."""
    channels = (outer.flatten(2) != 0).any(-1).to(outer.dtype) @ \
        (inner.flatten(2) != 0).any(-1).to(outer.dtype)
    so = (outer != 0).flatten(0, 1).any(0).to(outer.dtype)
    si = (inner != 0).flatten(0, 1).any(0).to(outer.dtype)
    counts = torch.fft.irfftn(torch.fft.rfftn(so, s=size, dim=dims) *
                              torch.fft.rfftn(si, s=size, dim=dims), s=size, dim=dims)
    spatial = counts > 0.5  # integer counts of overlapping taps
    mask = (channels > 0.5).reshape(*channels.shape, *(1,) * len(size)) & spatial
    return mask.to(outer.dtype)
