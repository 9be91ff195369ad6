"""The real DFT of many small kernels as matrix products, on the spatial-major layout.

A batch of ``B`` real kernels stored spatial-major, ``x[t_1, ..., t_d, b]`` (taps first,
the batch — a channel pair — last), is transformed one axis at a time by a small dense
matrix, so every step is one (batched) GEMM over the whole batch and no step transposes:

* the last axis, real to complex: ``X[u] = sum_t x[t] w^(-u s t)``, ``w = exp(2 pi i / N)``,
  ``u = 0 .. N // 2`` (the other half is the conjugate), taps at ``s t`` (a dilation);
* every other axis, complex to complex, the same sum over ``u = 0 .. N - 1``.

Complex values are *planar*: a leading axis ``p`` holds the real (0) and imaginary (1)
parts, so the spectrum of the batch is ``(2, F, B)`` with ``F = N_1 ... N_{d-1} (N_d//2+1)``
frequencies — exactly what a real batched matrix product per frequency reads.  The inverse
(:func:`irdft`) undoes the axes in the other order; on the last one the half spectrum is
weighted ``c_u = 1`` (``u = 0``, and ``u = N/2`` for even ``N``) or ``2`` (the conjugate
pair) and the real part kept:  ``x[t] = (1 / prod N) sum_u c_u Re(Y[u] w^(u t))``.

A length-``k`` transform costs ``O(k)`` per output point (an FFT ``O(log N)``), which for
the kernels of a CNN (``k`` up to a few dozen) is cheaper than ``torch.fft``'s batched
small transforms, and needs no transpose to and from the frequency-major layout of the
product.  Round-off: each output is a sum of ``k`` products, ``|error| <= k eps sum |x|``.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import torch

__all__ = ["rdft", "irdft", "spectral_matmul", "half_size", "frequency_count"]


def half_size(n: int) -> int:
    """Number of stored frequencies of a real length-``n`` transform: ``n // 2 + 1``."""
    return n // 2 + 1


def frequency_count(grid: Sequence[int]) -> int:
    """``F = N_1 ... N_{d-1} (N_d // 2 + 1)``: the stored frequencies of a real DFT."""
    return math.prod(grid[:-1]) * half_size(grid[-1])


def _angles(rows: int, cols: int, n: int, step: int = 1) -> torch.Tensor:
    """``2 pi ((r * c * step) mod n) / n`` for ``r < rows``, ``c < cols`` (reduced exactly
    in integers, so the angle is accurate for every product)."""
    r = torch.arange(rows, dtype=torch.int64)[:, None]
    c = torch.arange(cols, dtype=torch.int64)[None, :]
    return (2 * math.pi / n) * ((r * c * step) % n).to(torch.float64)


@lru_cache(maxsize=256)
def _real_forward(k: int, n: int, step: int, dtype: torch.dtype) -> torch.Tensor:
    """``(2M, k)``, rows ``(p, u)``: ``R[0, u, t] = cos(theta)``, ``R[1, u, t] = -sin(theta)``,
    ``theta = 2 pi u s t / n`` — the last axis, real to planar complex."""
    theta = _angles(half_size(n), k, n, step)
    return torch.cat([torch.cos(theta), -torch.sin(theta)]).to(dtype)


@lru_cache(maxsize=256)
def _complex_forward(k: int, n: int, step: int, dtype: torch.dtype) -> torch.Tensor:
    """``(2n, 2k)``, rows ``(p', u)``, columns ``(t, p)``: ``X[u] = sum_t w^(-u s t) x[t]``,
    i.e. ``X_re = sum cos x_re + sin x_im``, ``X_im = sum cos x_im - sin x_re``."""
    theta = _angles(n, k, n, step)
    cos, sin = torch.cos(theta), torch.sin(theta)
    w = torch.empty(2, n, k, 2, dtype=torch.float64)
    w[0, :, :, 0], w[0, :, :, 1], w[1, :, :, 0], w[1, :, :, 1] = cos, sin, -sin, cos
    return w.reshape(2 * n, 2 * k).to(dtype)


@lru_cache(maxsize=256)
def _complex_inverse(n: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    """``(2 size, 2n)``, rows ``(t, p')``, columns ``(p, u)``: ``y[t] = sum_u w^(u t) X[u]``
    for ``t < size``, i.e. ``y_re = sum cos X_re - sin X_im``, ``y_im = sum sin X_re + cos X_im``."""
    theta = _angles(size, n, n)
    cos, sin = torch.cos(theta), torch.sin(theta)
    w = torch.empty(size, 2, 2, n, dtype=torch.float64)
    w[:, 0, 0], w[:, 0, 1], w[:, 1, 0], w[:, 1, 1] = cos, -sin, sin, cos
    return w.reshape(2 * size, 2 * n).to(dtype)


@lru_cache(maxsize=256)
def _real_inverse(n: int, size: int, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """``(size, 2M)``, columns ``(p, u)``: ``x[t] = scale sum_u c_u Re(Y[u] w^(u t))``, i.e.
    ``G[t, (0, u)] = scale c_u cos``, ``G[t, (1, u)] = -scale c_u sin`` (``c_u`` in the
    module docstring)."""
    m = half_size(n)
    weight = torch.full((m,), 2.0, dtype=torch.float64)
    weight[0] = 1.0
    if n % 2 == 0:
        weight[-1] = 1.0
    theta = _angles(size, m, n)
    return (scale * torch.cat([weight * torch.cos(theta), -weight * torch.sin(theta)], 1)).to(dtype)


def rdft(x: torch.Tensor, grid: Sequence[int], step: Sequence[int],
         with_sum: bool = False) -> torch.Tensor:
    """The real DFT on ``grid`` of spatial-major kernels ``x`` (``(*k, B)``, tap ``t`` at
    position ``s t``): planar ``(2, F, B)``, frequencies in row-major ``(u_1, ..., u_d)``.
    ``with_sum``: a third plane ``re + im`` (``(3, F, B)``, for :func:`spectral_matmul`),
    made by the last matrix product rather than by another pass over the spectrum."""
    nd = len(grid)
    k, batch = tuple(x.shape[:nd]), x.shape[-1]
    first = _real_forward(k[-1], grid[-1], step[-1], x.dtype)
    if nd == 1 and with_sum:
        first = _with_sum(first)
    y = torch.matmul(first, x.reshape(-1, k[-1], batch))  # (t_1..t_{d-1}, p, u_d, b)
    for axis in range(nd - 2, -1, -1):  # contract (t_axis, p) -> (p, u_axis)
        w = _complex_forward(k[axis], grid[axis], step[axis], x.dtype)
        if axis == 0 and with_sum:
            w = _with_sum(w)
        y = torch.matmul(w, y.reshape(math.prod(k[:axis]), 2 * k[axis], -1))
    return y.reshape(3 if with_sum else 2, -1, batch)


def _with_sum(w: torch.Tensor) -> torch.Tensor:
    """A planar transform ``[re; im]`` extended by the rows ``re + im``."""
    re, im = w.chunk(2)
    return torch.cat([re, im, re + im])


def irdft(spectrum: torch.Tensor, grid: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """The inverse of :func:`rdft`: the first ``size`` taps per axis of the real signal on
    ``grid`` whose planar half spectrum is ``spectrum`` (``(2, F, B)``), spatial-major
    ``(*size, B)``."""
    nd = len(grid)
    batch, dtype = spectrum.shape[-1], spectrum.dtype
    y = spectrum
    for axis in range(nd - 1):  # contract (p, u_axis) -> (t_axis, p)
        w = _complex_inverse(grid[axis], size[axis], dtype)
        y = torch.matmul(w, y.reshape(math.prod(size[:axis]), 2 * grid[axis], -1))
    g = _real_inverse(grid[-1], size[-1], 1.0 / math.prod(grid), dtype)
    y = torch.matmul(g, y.reshape(-1, 2 * half_size(grid[-1]), batch))
    return y.reshape(*size, batch)


def spectral_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per frequency, the complex matrix product of planar spectra ``a`` (``(3, F, n, m)``:
    real part, imaginary part and their sum, :func:`rdft` with ``with_sum``) and ``b``
    (``(3, F, m, q)``) by Gauss's three real products, planar ``(2, F, n, q)``:
    ``re = a_re b_re - a_im b_im``, ``im = (a_re + a_im)(b_re + b_im) - a_re b_re - a_im b_im``."""
    out = torch.empty((2, a.shape[1], a.shape[2], b.shape[3]), dtype=a.dtype)
    t1 = torch.bmm(a[0], b[0])
    t2 = torch.bmm(a[1], b[1])
    torch.sub(t1, t2, out=out[0])
    t1.add_(t2)
    del t2
    torch.baddbmm(t1, a[2], b[2], beta=-1, out=out[1])
    return out
