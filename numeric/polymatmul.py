"""The product of polynomial matrices in ascending coefficient order, at real widths.

``polymatmul(outer, inner, d)`` is ``C(z) = outer(z^d) inner(z)``: per output tap
``C[o, c, t] = sum_m sum_{d a + b = t} outer[o, m, a] inner[m, c, b]``, computed by one of

* ``'dft'`` — evaluation at the ``N``-th roots of unity, ``N`` the product's size per axis
  (so no wrap-around): the real DFT of both factors as small matrix products on the
  spatial-major layout (:mod:`numeric.dft_gemm`), one batched real matrix product per
  frequency for the spectra (Gauss's three-product complex multiplication), and the
  inverse DFT the same way;
* ``'fft'`` — the same evaluation with ``torch.fft`` and a complex batched product
  (``O(log N)`` per point instead of the DFT's ``O(k)``: for large kernels);
* ``'taps'`` — for every outer tap ``a``, ``outer[:, :, a] @ inner[:, :, b]`` for all inner
  taps ``b`` at once, added at ``d a + b``: no transform at all (small kernels);
* ``'conv'`` — one ``conv{n}d`` (a full correlation with the reversed outer kernel;
  oneDNN's float32 kernels);

and the structural zeros of the product kept exactly zero.  ``'dft'``, ``'fft'`` and
``'taps'`` compute on the spatial-major layout ``(*kernel, C_out, C_in)`` and return it
viewed as ``(C_out, C_in, *kernel)`` (a permuted, non-contiguous tensor), so that the next
product reads it back without a copy.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np
import torch

from ..algebra.errors import InvalidInputError, InvalidTypeError
from ..algebra.memory import check_budget, estimate_bytes
from .dft_gemm import frequency_count, irdft, rdft, spectral_matmul
from .functional import conv_nd
from .inputs import FLOAT_DTYPES, check_float_dtype, positive_ints

__all__ = ["polymatmul", "inflate", "spatial_axes", "auto_method", "product_workspace_bytes",
           "METHODS", "DFT_MAX_SIZE"]

#: the product methods :func:`polymatmul` takes
METHODS = ("auto", "dft", "fft", "taps", "conv")

#: ``'auto'`` uses the matrix DFT up to this product size per axis, ``torch.fft`` above
#: (the DFT's ``O(k)`` work per point overtakes the FFT's ``O(log N)`` there)
DFT_MAX_SIZE = 48


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


def _spatial_major(t: torch.Tensor) -> torch.Tensor:
    """``(C0, C1, *k)`` as ``(*k, C0 * C1)`` (free when ``t`` is a view of that layout)."""
    return t.permute(*spatial_axes(t), 0, 1).contiguous().reshape(*t.shape[2:], -1)


def _channels_first(t: torch.Tensor, c0: int, c1: int) -> torch.Tensor:
    """The spatial-major ``(*k, C0 * C1)`` viewed as ``(C0, C1, *k)`` (no copy)."""
    nd = t.ndim - 1
    return t.reshape(*t.shape[:nd], c0, c1).permute(nd, nd + 1, *range(nd))


def auto_method(k_outer: Sequence[int], k_inner: Sequence[int], dtype: torch.dtype,
                outer_taps: int | None = None) -> str:
    """The fastest method by a count of real multiply-adds per ``C_out C_mid C_in``
    (measured in ``benchmarks/peers_numeric.py``): ``'taps'`` costs ``T_outer K_inner``
    (``T`` the outer tap count, default its box), ``'dft'`` ``3 F`` (``F`` frequencies,
    three real products each) plus its transforms, so ``'taps'`` when ``T K <= 3 F``
    (a 3x3 outer factor times a 1x1 inner one, not times a 3x3), ``'dft'`` otherwise up
    to :data:`DFT_MAX_SIZE`, ``'fft'`` above; float32 products up to size 12 take
    oneDNN's ``'conv'`` (as fast as the float32 DFT there, measured)."""
    size = tuple(a + b - 1 for a, b in zip(k_outer, k_inner))
    taps = (math.prod(k_outer) if outer_taps is None else outer_taps) * math.prod(k_inner)
    if dtype == torch.float32 and (taps <= 100 or max(size) <= 12):
        return "conv"
    if taps <= 3 * frequency_count(size):
        return "taps"
    return "dft" if max(size) <= DFT_MAX_SIZE else "fft"


def product_workspace_bytes(c_out: int, c_mid: int, c_in: int, k_outer: Sequence[int],
                            k_inner: Sequence[int], dtype: torch.dtype, method: str) -> int:
    """Peak bytes :func:`polymatmul` allocates for a ``c_out x c_mid`` kernel of (dilated)
    size ``k_outer`` times a ``c_mid x c_in`` kernel of size ``k_inner``, result included:
    the result and its support masks; ``'dft'``/``'taps'``/``'fft'``: the factors'
    spatial-major copies and zero patterns, ``'dft'`` the planar spectra of both factors,
    their sums and the product's three real partial products, ``'taps'`` one tap's
    partial product, ``'fft'`` the padded factors, their spectra and the product's;
    ``'conv'``: the inflated outer kernel and the padded input."""
    size = tuple(a + b - 1 for a, b in zip(k_outer, k_inner))
    n_o, n_i, n_r = c_out * c_mid, c_mid * c_in, c_out * c_in
    count = {"o": n_o * math.prod(k_outer), "i": n_i * math.prod(k_inner),
             "r": n_r * math.prod(size)}
    item = estimate_bytes((1,), dtype)
    if method == "conv":
        need = 3 * count["r"] + count["o"] + c_in * c_mid * math.prod(size)
        return need * item
    need = count["r"] + count["o"] + count["i"]  # result and spatial-major copies
    if method == "dft":
        f = frequency_count(size)
        need += 3 * f * (n_o + n_i) + 4 * f * n_r
    elif method == "taps":
        need += n_r * math.prod(k_inner)
    else:
        f = frequency_count(size)
        need += 4 * f * (n_o + n_i) + 4 * f * n_r + (n_o + n_i) * math.prod(size)
    return need * item + count["o"] + count["i"]  # and one bool per factor coefficient


def polymatmul(outer: torch.Tensor, inner: torch.Tensor, dilation: int | Sequence[int] = 1,
               method: str = "auto", budget: int | None = None) -> torch.Tensor:
    """Product ``outer(z^d) inner(z)`` of polynomial matrices in ascending coefficient order:
    ``C[o, c, t] = sum_m sum_{d a + b = t} outer[o, m, a] inner[m, c, b]``, spatial size
    ``d (k_outer - 1) + k_inner``, by ``method`` (module docstring: ``'dft'``, ``'fft'``,
    ``'taps'``, ``'conv'``, or ``'auto'``: :func:`auto_method`).  The memory guard runs
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
    k_inner = tuple(inner.shape[2:])
    size = tuple(a + b - 1 for a, b in zip(k_outer, k_inner))
    dtype = torch.promote_types(outer.dtype, inner.dtype)
    if method == "auto":
        method = auto_method(k_outer, k_inner, dtype, math.prod(outer.shape[2:]))
        if method == "dft" and torch.is_grad_enabled() and (outer.requires_grad or
                                                            inner.requires_grad):
            method = "fft"  # the DFT path writes into preallocated outputs (no autograd)
    if method not in METHODS:
        raise InvalidInputError(f"method must be one of {', '.join(map(repr, METHODS))}, "
                                f"got {method!r}")
    need = product_workspace_bytes(c_out, c_mid, c_in, k_outer, k_inner, dtype, method)
    check_budget(need, f"composing a {c_out}x{c_mid} kernel with a {c_mid}x{c_in} kernel into "
                 f"{c_out}x{c_in}x{'x'.join(map(str, size))}", budget)
    outer, inner = outer.to(dtype), inner.to(dtype)
    if method == "conv":
        return _conv_product(inflate(outer, d), inner, size)
    outer_sm, inner_sm = _spatial_major(outer), _spatial_major(inner)
    channels, spatial = _support_masks(outer_sm, inner_sm, (c_out, c_mid, c_in), d)
    if method == "dft":
        product = _dft_product(outer_sm, inner_sm, (c_out, c_mid, c_in), d, size)
    elif method == "taps":
        product = _taps_product(outer_sm, inner_sm, (c_out, c_mid, c_in), d, size)
    else:
        product = _fft_product(outer_sm, inner_sm, (c_out, c_mid, c_in), d, size)
    del outer_sm, inner_sm
    if spatial is not None:
        product.mul_(spatial.reshape(*size, 1).to(dtype))
    if channels is not None:
        product.mul_(channels.reshape(1, -1).to(dtype))
    return _channels_first(product, c_out, c_in)


def _dft_product(outer: torch.Tensor, inner: torch.Tensor, channels: tuple[int, int, int],
                 step: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """``'dft'`` on spatial-major factors: ``irdft(rdft(outer) · rdft(inner))`` on the grid
    ``size`` (the outer taps at ``d a``), spatial-major ``(*size, C_out C_in)``."""
    c_out, c_mid, c_in = channels
    spec_o = rdft(outer, size, step, with_sum=True).reshape(3, -1, c_out, c_mid)
    spec_i = rdft(inner, size, (1,) * len(size), with_sum=True).reshape(3, -1, c_mid, c_in)
    spec = spectral_matmul(spec_o, spec_i)
    del spec_o, spec_i
    return irdft(spec.reshape(2, -1, c_out * c_in), size, size)


def _fft_product(outer: torch.Tensor, inner: torch.Tensor, channels: tuple[int, int, int],
                 step: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """``'fft'``: ``torch.fft`` over the leading (spatial) axes of the spatial-major factors,
    so the spectra are frequency-major and the complex batched product reads them as
    they are."""
    c_out, c_mid, c_in = channels
    nd = len(size)
    dims = tuple(range(nd))
    if any(s != 1 for s in step):
        grid = outer.new_zeros((*(((k - 1) * s + 1) for k, s in zip(outer.shape[:nd], step)),
                                outer.shape[-1]))
        grid[tuple(slice(None, None, s) for s in step)] = outer
        outer = grid
    spec_o = torch.fft.rfftn(outer, s=size, dim=dims).reshape(-1, c_out, c_mid)
    spec_i = torch.fft.rfftn(inner, s=size, dim=dims).reshape(-1, c_mid, c_in)
    spec = torch.bmm(spec_o, spec_i)
    del spec_o, spec_i
    spec_shape = (*size[:-1], size[-1] // 2 + 1)
    return torch.fft.irfftn(spec.reshape(*spec_shape, c_out * c_in), s=size, dim=dims)


def _taps_product(outer: torch.Tensor, inner: torch.Tensor, channels: tuple[int, int, int],
                  step: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """``'taps'``: ``C[d a + b] += outer[a] @ inner[b]`` for every outer tap ``a`` (all
    inner taps ``b`` in one batched product), spatial-major."""
    c_out, c_mid, c_in = channels
    nd = len(size)
    k_inner = tuple(inner.shape[:nd])
    product = inner.new_zeros((*size, c_out * c_in))
    batch = inner.reshape(-1, c_mid, c_in)
    for tap in itertools.product(*(range(k) for k in outer.shape[:nd])):
        weight = outer[tap].reshape(c_out, c_mid)
        if not bool(weight.any()):
            continue
        window = tuple(slice(s * a, s * a + k) for s, a, k in zip(step, tap, k_inner))
        product[window] += torch.matmul(weight, batch).reshape(*k_inner, c_out * c_in)
    return product


def _conv_product(outer: torch.Tensor, inner: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``'conv'``: the full correlation of the inner kernels (as a batch of ``C_in`` images
    of ``C_mid`` channels) with the reversed outer kernels, zeros kept."""
    ndim = outer.ndim - 2
    flipped = outer.flip(spatial_axes(outer))
    pad = tuple(k - 1 for k in outer.shape[2:])
    product = conv_nd(ndim)(inner.transpose(0, 1), flipped, padding=pad).transpose(0, 1)
    channels, spatial = _support_masks(_spatial_major(outer), _spatial_major(inner),
                                       (outer.shape[0], outer.shape[1], inner.shape[1]),
                                       (1,) * ndim)
    product = product.contiguous()
    if spatial is not None:
        product.mul_(spatial.to(product.dtype))
    if channels is not None:
        product.mul_(channels.reshape(*channels.shape, *(1,) * ndim).to(product.dtype))
    return product


#: :func:`_minkowski_sum` adds tap pairs directly up to this many, else it convolves
MINKOWSKI_PAIRS = 1 << 20


def _support_masks(outer: torch.Tensor, inner: torch.Tensor, channels: tuple[int, int, int],
                   step: Sequence[int]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Where a product of these spatial-major kernels can be nonzero: channel pairs
    ``(o, c)`` with some ``m`` where both ``outer[o, m]`` and ``inner[m, c]`` are nonzero
    (``(C_out, C_in)``), and positions in the sum of the two spatial supports (``size``).
    Elsewhere the exact product is 0, and the transforms' round-off (~1e-17) must not turn
    those taps into nonzero coefficients.  ``None`` for a mask that is all True (the
    dense case: nothing to clear)."""
    c_out, c_mid, c_in = channels
    nz_o, nz_i = outer != 0, inner != 0
    used_o = nz_o.reshape(-1, c_out, c_mid).any(0)
    used_i = nz_i.reshape(-1, c_mid, c_in).any(0)
    channel_mask = None
    if not (bool(used_o.all()) and bool(used_i.all())):
        counts = used_o.to(torch.float32) @ used_i.to(torch.float32)  # exact below 2^24
        channel_mask = counts > 0.5
        if bool(channel_mask.all()):
            channel_mask = None
    taps_o, taps_i = nz_o.any(-1), nz_i.any(-1)
    spatial_mask = None
    # full boxes sum to the full box, unless the outer's dilation leaves holes wider
    # than the inner box fills
    covered = all(k >= x for k, x in zip(taps_i.shape, step))
    if not (bool(taps_o.all()) and bool(taps_i.all()) and covered):
        spatial_mask = _minkowski_sum(taps_o, taps_i, step)
        if bool(spatial_mask.all()):
            spatial_mask = None
    return channel_mask, spatial_mask


def _minkowski_sum(taps_o: torch.Tensor, taps_i: torch.Tensor, step: Sequence[int]) -> torch.Tensor:
    """``{d a + b}`` over the outer taps ``a`` and inner taps ``b`` (boolean, on the
    product's box ``(k_o - 1) d + k_i``): by the pairs of taps when there are at most
    :data:`MINKOWSKI_PAIRS` of them, else by an FFT convolution of the two 0/1 patterns
    (integer counts, whose round-off stays far below the threshold 1/2)."""
    box = tuple((ko - 1) * d + ki for ko, ki, d in zip(taps_o.shape, taps_i.shape, step))
    where_o, where_i = np.argwhere(taps_o.numpy()), np.argwhere(taps_i.numpy())
    if len(where_o) * len(where_i) <= MINKOWSKI_PAIRS:
        sums = (where_o * np.asarray(step))[:, None, :] + where_i[None, :, :]
        mask = np.zeros(box, dtype=bool)
        mask[tuple(sums.reshape(-1, taps_o.ndim).T)] = True
        return torch.from_numpy(mask)
    from scipy.signal import fftconvolve
    dilated = np.zeros(tuple((k - 1) * d + 1 for k, d in zip(taps_o.shape, step)))
    dilated[tuple(slice(None, None, d) for d in step)] = taps_o.numpy()
    return torch.from_numpy(fftconvolve(dilated, taps_i.numpy().astype(np.float64)) > 0.5)
