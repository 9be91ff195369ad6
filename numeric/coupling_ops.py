"""Applying channel couplings to signals: differentiable functions on PyTorch-layout weights.

Shared by the float twins (:mod:`numeric.structured`) and the torch layers
(:mod:`bridge.lowcost_layers`), so both run the same code.  Every function maps an input
``x`` of shape ``(N, C_in, *n)`` to a same-size output ``(N, C_out, *n)``

    y[o, i] = Σ_c Σ_a w[o, c, a] · x[c, i + a − p]        (the "same" convolution)

with ``x`` zero-extended (``padding_mode="zeros"``) or ``n``-periodic (``"circular"``); in
the package's terms ``y = K X`` with ``K(z) = Σ_a w[a] z^{p − a}`` (``docs/conventions.md``)
cropped to the input window.  Nothing here detaches: gradients flow to ``x`` and ``w``.

* :func:`conv_same` — one (grouped) convolution with left padding ``p`` and right padding
  ``k − 1 − p``;
* :func:`adjoint_weight` — ``K^*(z) = K(1/z)^T``: the same-size convolution with the
  kernel flipped and transposed (per group) and left padding ``k − 1 − p``; for stride 1
  this is the exact adjoint of :func:`conv_same` under both padding modes;
* :func:`block_circulant_conv` — a block-circulant coupling (first block row
  ``w[k] = A_k``, shape ``(m, b_out, b_in, *k)``, block ``(r, c)`` = ``A_{(c − r) mod m}``)
  through an FFT over the block index: with ``X̂_j = Σ_r ζ^{−jr} x_r`` (``ζ = e^{2πi/m}``,
  ``torch.fft.rfft``) the output is ``Ŷ_j = Λ_j ⋆ X̂_j``, ``Λ_j = Σ_k ζ^{jk} A_k =
  conj(rfft(A))_j`` (real ``A``), for the ``J = ⌊m/2⌋ + 1`` frequencies of the half
  spectrum; the complex products run as ONE real grouped convolution (``J`` groups,
  ``[[Re Λ, −Im Λ], [Im Λ, Re Λ]]`` on ``[Re X̂; Im X̂]``), then ``irfft``.  Its
  multiply-adds per position are ``4 J b_out b_in |k|`` against ``m² b_out b_in |k|``
  applied directly; the two FFTs (``O(m log m)`` per pixel and block entry) are extra;
* :func:`block_circulant_dense_weight` — the equivalent ``(m b_out, m b_in, *k)`` weight.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..algebra.errors import InvalidInputError
from .functional import conv_nd

__all__ = ["PADDING_MODES", "conv_same", "adjoint_weight", "block_circulant_conv",
           "block_circulant_dense_weight", "block_circulant_adjoint_weight"]

PADDING_MODES = ("zeros", "circular")


def _pads(weight: torch.Tensor, padding: Sequence[int]) -> list[int]:
    """``F.pad`` widths (last axis first): ``p`` on the left, ``k − 1 − p`` on the right."""
    ks = weight.shape[2:]
    if len(padding) != len(ks) or any(not 0 <= p <= k - 1 for p, k in zip(padding, ks)):
        raise InvalidInputError(f"padding {tuple(padding)} must have one entry per axis with "
                                f"0 <= p <= k - 1 for the kernel {tuple(ks)}")
    return [v for p, k in zip(reversed(padding), reversed(ks)) for v in (p, k - 1 - p)]


def conv_same(x: torch.Tensor, weight: torch.Tensor, padding: Sequence[int], groups: int = 1,
              padding_mode: str = "zeros") -> torch.Tensor:
    """``y[o, i] = Σ_{c, a} w[o, c, a] x[c, i + a − p]`` on a same-size window (module
    docstring); ``groups`` as in ``F.conv{n}d``."""
    if padding_mode not in PADDING_MODES:
        raise InvalidInputError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    pads = _pads(weight, padding)
    mode = "constant" if padding_mode == "zeros" else "circular"
    if any(pads):
        x = F.pad(x, pads, mode=mode)
    return conv_nd(weight.ndim - 2)(x, weight, groups=groups)


def adjoint_weight(weight: torch.Tensor, padding: Sequence[int], groups: int = 1
                   ) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The weight and left padding of ``K(1/z)^T``: per group ``w^*[c, o, a] =
    w[o, c, k − 1 − a]``, padding ``k − 1 − p``."""
    c_out, ipg, *k = weight.shape
    opg = c_out // groups
    w = weight.reshape(groups, opg, ipg, *k).transpose(1, 2).reshape(groups * ipg, opg, *k)
    spatial = tuple(range(2, weight.ndim))
    return w.flip(spatial), tuple(kk - 1 - p for kk, p in zip(k, padding))


def block_circulant_dense_weight(weight: torch.Tensor) -> torch.Tensor:
    """``(m b_out, m b_in, *k)``: block ``(r, c)`` is ``weight[(c − r) mod m]``."""
    m, bo, bi, *k = weight.shape
    r = torch.arange(m)
    index = (r[None, :] - r[:, None]) % m                  # index[r, c] = (c - r) mod m
    blocks = weight[index]                                 # (m, m, bo, bi, *k)
    return blocks.transpose(1, 2).reshape(m * bo, m * bi, *k)


def block_circulant_adjoint_weight(weight: torch.Tensor, padding: Sequence[int]
                                   ) -> tuple[torch.Tensor, tuple[int, ...]]:
    """First block row of the adjoint, ``(A^*)_k = A_{(−k) mod m}(1/z)^T``, and its padding."""
    m, bo, bi, *k = weight.shape
    index = (-torch.arange(m)) % m
    spatial = tuple(range(3, weight.ndim))
    return (weight[index].transpose(1, 2).flip(spatial),
            tuple(kk - 1 - p for kk, p in zip(k, padding)))


def block_circulant_conv(x: torch.Tensor, weight: torch.Tensor, padding: Sequence[int],
                         padding_mode: str = "zeros") -> torch.Tensor:
    """The block-circulant coupling with first block row ``weight`` (``(m, b_out, b_in,
    *k)``) applied through an FFT over channels (module docstring)."""
    m, bo, bi, *k = weight.shape
    n = x.shape[2:]
    if x.ndim != weight.ndim - 1:
        raise InvalidInputError(f"the input must be (N, C, *n) with {weight.ndim - 3} spatial axes, "
                                f"got shape {tuple(x.shape)}")
    if x.shape[1] != m * bi:
        raise InvalidInputError(f"the input has {x.shape[1]} channels, the coupling takes "
                                f"m b_in = {m * bi}")
    X = torch.fft.rfft(x.reshape(x.shape[0], m, bi, *n), dim=1)          # (N, J, bi, *n)
    J = X.shape[1]
    L = torch.fft.rfft(weight, dim=0).conj()                            # (J, bo, bi, *k)
    top = torch.cat([L.real, -L.imag], dim=2)
    bottom = torch.cat([L.imag, L.real], dim=2)
    grouped = torch.cat([top, bottom], dim=1).reshape(J * 2 * bo, 2 * bi, *k)
    inp = torch.cat([X.real, X.imag], dim=2).reshape(x.shape[0], J * 2 * bi, *n)
    out = conv_same(inp, grouped.to(inp.dtype), padding, groups=J, padding_mode=padding_mode)
    out = out.reshape(x.shape[0], J, 2, bo, *n)
    Y = torch.complex(out[:, :, 0], out[:, :, 1])
    return torch.fft.irfft(Y, n=m, dim=1).reshape(x.shape[0], m * bo, *n)
