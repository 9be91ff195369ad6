"""Convolutions as single GEMMs, for the adjoint passes of affine-map extraction.

ATen's float64 CPU convolution loops over the batch with one skinny GEMM per image, which
is slow exactly where :func:`numeric.affine.extract_affine` spends its time (deep stages
at 4x4 or 7x7 resolution, where ``vmap`` folds the cotangents into the batch).
:func:`gemm_conv2d` computes ``y = W · im2row(x)`` as one matrix product with batch and
positions in the rows, with a hand-written adjoint; :func:`eval_batch_norm` is eval-mode
batch norm as one multiply-add; :class:`GemmConvMode` routes small float64 convolutions
and batch norms through them.  All are plain torch ops, so autograd and ``torch.func``
see through them.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["gemm_conv2d", "eval_batch_norm", "GemmConvMode"]


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _conv_geometry(size: int, k: int, s: int, p: int, d: int) -> int:
    """Output length of a convolution: ``floor((size + 2p - d(k-1) - 1) / s) + 1``."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _im2row(x: torch.Tensor, kh: int, kw: int, stride: tuple[int, int],
            padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    """Rows ``(n, i, j)`` × columns ``(c, a, b)`` holding ``x_pad[n, c, s·i + d·a, s·j + d·b]``."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    n, c, hp, wp = x.shape
    ho, wo = _conv_geometry(hp, kh, sh, 0, dh), _conv_geometry(wp, kw, sw, 0, dw)
    xl = x.permute(0, 2, 3, 1)
    parts = [xl[:, dh * a: dh * a + sh * (ho - 1) + 1: sh, dw * b: dw * b + sw * (wo - 1) + 1: sw, :]
             for a in range(kh) for b in range(kw)]
    return torch.stack(parts, dim=4).reshape(n * ho * wo, c * kh * kw)


def _tap(a: int, k_step: int, pad: int, s: int, n_out: int, size: int) -> tuple[int, int, int, int]:
    """For kernel tap ``a``: the outputs ``i ∈ [i0, i1)`` whose input ``x = s·i + k_step·a - pad``
    lies in ``[0, size)`` (``i0 = ceil(-off/s)``, ``i1 = floor((size-1-off)/s) + 1``), and
    the inputs ``[x0, x1)`` (step ``s``) they read."""
    off = k_step * a - pad
    i0 = max(0, -(off // s))
    i1 = max(i0, min(n_out, (size - 1 - off) // s + 1))
    return i0, i1, s * i0 + off, s * (i1 - 1) + off + 1


class _GemmConv(torch.autograd.Function):
    """``conv2d`` as ``rows(x) @ w2^T`` with a hand-written input adjoint:

        x̄ = col2im(ȳ_rows @ w2)

    where the cotangent is first made row-major (so that under ``vmap`` the vmapped
    dimension folds into the rows of ONE GEMM) and ``col2im`` adds the ``kh·kw`` column
    blocks back in place, cropping the zero padding on the way.  Weights get no gradient
    (extraction detaches them); :func:`gemm_conv2d` falls back to plain autograd otherwise.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, w: torch.Tensor, stride: tuple[int, int],  # type: ignore[override]
                padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
        n, h, wd = x.shape[0], x.shape[2], x.shape[3]
        o, c, kh, kw = w.shape
        ho = _conv_geometry(h, kh, stride[0], padding[0], dilation[0])
        wo = _conv_geometry(wd, kw, stride[1], padding[1], dilation[1])
        y = _im2row(x, kh, kw, stride, padding, dilation) @ w.reshape(o, c * kh * kw).t()
        return y.reshape(n, ho, wo, o).permute(0, 3, 1, 2)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        x, w, ctx.stride, ctx.padding, ctx.dilation = inputs
        ctx.in_hw = (x.shape[2], x.shape[3])
        ctx.save_for_backward(w)
        ctx.save_for_forward(w)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple:  # type: ignore[override]
        (w,) = ctx.saved_tensors
        o, c, kh, kw = w.shape
        n, ho, wo = g.shape[0], g.shape[2], g.shape[3]
        (h, wd), (sh, sw), (ph, pw), (dh, dw) = ctx.in_hw, ctx.stride, ctx.padding, ctx.dilation
        g_rows = g.permute(0, 2, 3, 1).contiguous().reshape(n * ho * wo, o)
        cols = (g_rows @ w.reshape(o, c * kh * kw)).reshape(n, ho, wo, c, kh, kw)
        gx = cols.new_zeros(n, h, wd, c)
        for a in range(kh):
            i0, i1, x0, x1 = _tap(a, dh, ph, sh, ho, h)
            for b in range(kw):
                j0, j1, y0, y1 = _tap(b, dw, pw, sw, wo, wd)
                if i1 > i0 and j1 > j0:
                    gx[:, x0:x1:sh, y0:y1:sw, :] += cols[:, i0:i1, j0:j1, :, a, b]
        return gx.permute(0, 3, 1, 2), None, None, None, None

    @staticmethod
    def jvp(ctx: Any, x_t: torch.Tensor, *rest: Any) -> torch.Tensor:
        (w,) = ctx.saved_tensors
        return _GemmConv.forward(x_t, w, ctx.stride, ctx.padding, ctx.dilation)


def gemm_conv2d(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
                stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                dilation: int | Sequence[int] = 1) -> torch.Tensor:
    """``conv2d`` (groups = 1) as ONE matrix product with the batch in the rows.

    With ``x`` zero-padded and channels last, the ``kh·kw`` shifted, strided views
    ``x[n, s·i + d·a, s·j + d·b, c]`` are stacked into rows ``(n, i, j)`` × columns
    ``(c, a, b)``, and ``y = rows @ w.reshape(O, C·kh·kw)^T + bias``.  Under
    ``torch.func.vmap`` the vmapped dimension folds into the rows too, so the adjoint of
    ten cotangents is one large GEMM instead of ten skinny ones (ATen's float64 CPU
    convolution loops over the batch, which starves the GEMM when ``Ho·Wo`` is small).
    """
    st, pad, dil = _pair(stride), _pair(padding), _pair(dilation)
    if w.requires_grad:  # plain autograd (weight gradients); not the extraction path
        o, c, kh, kw = w.shape
        n = x.shape[0]
        ho = _conv_geometry(x.shape[2], kh, st[0], pad[0], dil[0])
        wo = _conv_geometry(x.shape[3], kw, st[1], pad[1], dil[1])
        y = (_im2row(x, kh, kw, st, pad, dil) @ w.reshape(o, -1).t()).reshape(n, ho, wo, o)
        y = y.permute(0, 3, 1, 2)
    else:
        y = _GemmConv.apply(x, w, st, pad, dil)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def eval_batch_norm(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                    weight: torch.Tensor | None, bias: torch.Tensor | None,
                    eps: float) -> torch.Tensor:
    """Eval-mode batch norm as the per-channel affine map it is:
    ``y = x·s + (β - μ·s)`` with ``s = γ / sqrt(σ² + ε)`` (its adjoint is one multiply)."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    view = (1, -1) + (1,) * (x.dim() - 2)
    return torch.addcmul(shift.view(view), x, scale.view(view))


class GemmConvMode(TorchFunctionMode):
    """Inside this mode, float64 ``conv2d`` calls with a small output grid (``Ho·Wo <=
    max_positions``, groups 1, numeric padding) run through :func:`gemm_conv2d`, and
    float64 eval-mode ``batch_norm`` through :func:`eval_batch_norm`; all other calls are
    untouched.  Used while extracting affine maps (the adjoint passes of deep stages at
    4×4 or 7×7 resolution are where ATen's float64 convolution is slowest).
    """

    def __init__(self, max_positions: int = 64):
        super().__init__()
        self.max_positions = max_positions

    def _use_gemm(self, x: Any, w: Any, stride: Any, padding: Any, dilation: Any, groups: int) -> bool:
        if not (isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor)) or groups != 1:
            return False
        if x.dtype != torch.float64 or w.dtype != x.dtype or x.dim() != 4 or w.dim() != 4 \
                or isinstance(padding, str):
            return False
        (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
        ho = (x.shape[2] + 2 * ph - dh * (w.shape[2] - 1) - 1) // sh + 1
        wo = (x.shape[3] + 2 * pw - dw * (w.shape[3] - 1) - 1) // sw + 1
        return ho * wo <= self.max_positions

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func is torch.conv2d:
            names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
            defaults = (None, None, None, 1, 0, 1, 1)
            a = dict(zip(names, defaults))
            a.update(zip(names, args))
            a.update(kwargs)
            if self._use_gemm(a["input"], a["weight"], a["stride"], a["padding"], a["dilation"],
                              a["groups"]):
                return gemm_conv2d(a["input"], a["weight"], a["bias"], a["stride"], a["padding"],
                                   a["dilation"])
        elif func is F.batch_norm:
            names = ("input", "running_mean", "running_var", "weight", "bias", "training",
                     "momentum", "eps")
            a = dict(zip(names, (None, None, None, None, None, False, 0.1, 1e-5)))
            a.update(zip(names, args))
            a.update(kwargs)
            x, mean, var = a["input"], a["running_mean"], a["running_var"]
            if (not a["training"] and isinstance(x, torch.Tensor) and x.dim() >= 2
                    and x.dtype == torch.float64 and isinstance(mean, torch.Tensor)
                    and isinstance(var, torch.Tensor)):
                return eval_batch_norm(x, mean, var, a["weight"], a["bias"], float(a["eps"]))
        return func(*args, **kwargs)
