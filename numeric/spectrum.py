"""The symbol of a convolution on the unit torus, and what it tells about the operator.

On an ``n``-periodic grid (circular padding) ``z^n = 1``, so ``K`` acts through its values
at the roots of unity.  With ``P = K mod (z^n - 1)`` stored as an array ``P[m]``
(``m = e mod n``):

* the symbol ``K(e^{2πi j/n}) = sum_m P[m] e^{+2πi jm/n}`` is an inverse FFT without the
  ``1/n`` (``ifftn(P, norm='forward')``) — :func:`symbol`;
* the circular convolution ``v[m] = sum_e c_e x[m - e]`` becomes, under the forward DFT
  ``x̂[k] = sum_m x[m] e^{-2πi km/n}``, ``v̂[k] = K(e^{-2πi k/n}) x̂[k]``: the multiplier
  at FFT index ``k`` is the symbol at ``-k`` (``fftn(P)``) — :func:`fft_multiplier`;
* the adjoint ``K(1/z)^T`` has multiplier ``M[k]^H``;
* a stride ``s | n`` aliases: output frequency ``j`` collects the ``s`` input frequencies
  ``j + r n/s``, so with unitary DFTs ``down_s K`` is block diagonal with blocks
  ``s^{-1/2} [M(j), M(j + n/s), ..., M(j + (s-1) n/s)]`` (per axis; ``s = prod s_i`` in
  d dimensions).  The operator's singular values are those of the blocks — exactly,
  for circular padding.

For zero padding on an unbounded grid the norm is ``sup_θ ||K(e^{iθ})||`` (stride 1); the
grid maximum is a lower bound that converges as the grid is refined.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..algebra.errors import InvalidInputError, InvalidTypeError
from ..algebra.validate import sequence_arg
from .inputs import as_real_tensor
from .kernels import KernelOperator
from .memory import check_budget

__all__ = ["fold_periodic", "symbol", "fft_multiplier", "singular_values", "operator_norm",
           "LipschitzBound", "lipschitz_bound", "implicit_solve"]


def _check_op(op: object, what: str = "op") -> KernelOperator:
    if not isinstance(op, KernelOperator):
        raise InvalidTypeError(f"{what} must be a KernelOperator, got {type(op).__name__}")
    if op.upsampled:  # the symbol and singular values here are those of down_s K
        raise InvalidInputError(f"{what}: the spectrum of an up-sampling operator (upsample "
                                f"{op.upsample}, a transposed convolution) is not supported; "
                                "use its adjoint, a strided operator")
    return op


def _sizes(op: KernelOperator, sizes: int | Sequence[int]) -> tuple[int, ...]:
    _check_op(op)
    bad = InvalidTypeError(f"grid sizes must be an int or {op.ndim} ints, got {sizes!r}")
    if isinstance(sizes, (bool, np.bool_, str, bytes)):
        raise bad
    if isinstance(sizes, (int, np.integer)):
        n = (int(sizes),) * op.ndim
    else:
        try:
            items = tuple(sizes)
        except TypeError:
            raise bad from None
        if any(isinstance(m, (bool, np.bool_)) or not isinstance(m, (int, np.integer)) for m in items):
            raise bad
        n = tuple(int(m) for m in items)
    if len(n) != op.ndim or any(m <= 0 for m in n):
        raise InvalidInputError(f"need {op.ndim} positive grid sizes, got {sizes}")
    return n


def _complex_bytes(op: KernelOperator, count: int) -> int:
    return count * 2 * op.coeffs.element_size()


def fold_periodic(op: KernelOperator, sizes: int | Sequence[int]) -> torch.Tensor:
    """``P[o, c, m] = sum_{e ≡ m (mod n)} c_e``: the kernel reduced modulo ``z^n - 1`` on
    the full grid ``0 <= m < n`` (shape ``(C_out, C_in, *n)``)."""
    n = _sizes(op, sizes)
    folded = op.coeffs
    for axis, (m, low, k) in enumerate(zip(n, op.low, op.kernel_size)):
        shape = list(folded.shape)
        shape[axis + 2] = m
        target = (torch.arange(k) + low) % m
        folded = folded.new_zeros(shape).index_add_(axis + 2, target, folded)
    return folded


def symbol(op: KernelOperator, sizes: int | Sequence[int]) -> torch.Tensor:
    """``K(e^{2πi j/n})`` for every ``j`` on the grid, shape ``(*n, C_out, C_in)``
    (complex)."""
    n = _sizes(op, sizes)
    check_budget(_complex_bytes(op, int(np.prod(n)) * op.out_channels * op.in_channels),
                 f"the symbol of a {op.out_channels}x{op.in_channels} operator on a {n} grid")
    dims = tuple(range(2, 2 + op.ndim))
    values = torch.fft.ifftn(fold_periodic(op, n), dim=dims, norm="forward")
    return values.permute(*dims, 0, 1)


def fft_multiplier(op: KernelOperator, sizes: int | Sequence[int],
                   onesided: bool = False) -> torch.Tensor:
    """``M[k] = K(e^{-2πi k/n})``: ``fftn(K X) = M fftn(X)`` per frequency for circular
    convolution; shape ``(*n, C_out, C_in)``, or the ``rfftn`` half grid when
    ``onesided``."""
    n = _sizes(op, sizes)
    count = int(np.prod(n[:-1])) * (n[-1] // 2 + 1 if onesided else n[-1])
    check_budget(_complex_bytes(op, count * op.out_channels * op.in_channels),
                 f"the frequency response of a {op.out_channels}x{op.in_channels} operator "
                 f"on a {n} grid")
    dims = tuple(range(2, 2 + op.ndim))
    fft = torch.fft.rfftn if onesided else torch.fft.fftn
    return fft(fold_periodic(op, n), dim=dims).permute(*dims, 0, 1)


def _blocks(op: KernelOperator, n: tuple[int, ...]) -> torch.Tensor:
    """Per output frequency the aliasing block ``s^{-1/2} [M(j + r n/s)]_r`` of
    ``down_s K``, shape ``(F, C_out, S*C_in)`` (stride 1: the one-sided multiplier)."""
    s = op.stride
    if all(v == 1 for v in s):
        return fft_multiplier(op, n, onesided=True).reshape(-1, *op.shape)
    if any(m % v for m, v in zip(n, s)):
        raise InvalidInputError(f"stride {s} must divide the grid size {n} (circular padding)")
    M = fft_multiplier(op, n)  # (*n, C_out, C_in), k = r * (n/s) + j on every axis
    d = op.ndim
    M = M.reshape(*[x for m, v in zip(n, s) for x in (v, m // v)], *op.shape)
    r_axes, j_axes = tuple(range(0, 2 * d, 2)), tuple(range(1, 2 * d, 2))
    M = M.permute(*j_axes, 2 * d, *r_axes, 2 * d + 1)  # (*j, C_out, *r, C_in)
    S = int(np.prod(s))
    return M.reshape(-1, op.out_channels, S * op.in_channels) / S ** 0.5


def singular_values(op: KernelOperator, sizes: int | Sequence[int]) -> torch.Tensor:
    """The singular values of the linear part of ``op`` as a map on ``n``-periodic signals
    (circular padding), per frequency: shape ``(F, min(C_out, S C_in))``.  Stride 1 uses
    the one-sided grid (real kernels: ``M[-k] = conj M[k]``, the same singular values)."""
    return torch.linalg.svdvals(_blocks(op, _sizes(op, sizes)))


def operator_norm(op: KernelOperator, sizes: int | Sequence[int]) -> float:
    """``max_j ||block_j||_2``: the operator norm on ``n``-periodic signals (exact for
    circular padding; for zero padding a lower bound converging to ``sup ||K(e^{iθ})||``
    as ``n`` grows).  Computed from the eigenvalues of the smaller Gram matrix."""
    B = _blocks(op, _sizes(op, sizes))
    gram = B @ B.mH if B.shape[1] <= B.shape[2] else B.mH @ B
    return float(torch.linalg.eigvalsh(gram).max().clamp_min(0).sqrt())


@dataclass(frozen=True)
class LipschitzBound:
    """Norms of a chain of linear layers on periodic signals: ``product`` (of the layer
    norms, the usual layer-wise bound) and ``collapsed`` (the exact norm of the composed
    operator, the chain's true Lipschitz constant); ``collapsed <= product``."""
    layer_norms: tuple[float, ...]
    product: float
    collapsed: float

    @property
    def ratio(self) -> float:
        """How much the layer-wise bound overestimates: ``product / collapsed``."""
        return self.product / self.collapsed if self.collapsed > 0 else float("inf")


def lipschitz_bound(layers: Sequence[KernelOperator], sizes: int | Sequence[int]
                    ) -> LipschitzBound:
    """Layer norms (each on the grid it sees: ``n / (s_1 ... s_{l-1})``) and the exact norm
    of the collapsed chain ``A_L ∘ ... ∘ A_1`` (``layers[0]`` is applied first)."""
    layers = sequence_arg(layers, "layers", expected="a sequence of KernelOperators",
                          nonempty=False)
    if not layers:
        raise InvalidInputError("lipschitz_bound needs at least one layer")
    for i, op in enumerate(layers):
        _check_op(op, f"layers[{i}]")
    n = _sizes(layers[0], sizes)
    norms, chain = [], None
    for op in layers:
        if any(m % s for m, s in zip(n, op.stride)):
            raise InvalidInputError(f"stride {op.stride} must divide the grid size {n}")
        norms.append(operator_norm(op, n))
        chain = op.linear_part() if chain is None else op.linear_part() @ chain
        n = tuple(m // s for m, s in zip(n, op.stride))
    return LipschitzBound(tuple(norms), float(np.prod(norms)),
                          operator_norm(chain, _sizes(layers[0], sizes)))


def _hermitian_solve(A: torch.Tensor, B: torch.Tensor, positive: bool) -> torch.Tensor:
    """``A^{-1} B`` for a batch of Hermitian ``A``: Cholesky when ``A`` is positive definite
    (``I + h K^T K`` with ``h >= 0``; also avoids a multithreaded batched complex LU failure
    seen in torch 2.13 + MKL), else LU."""
    if positive:
        L, info = torch.linalg.cholesky_ex(A)
        if not bool(info.any()):
            return torch.cholesky_solve(B, L)
    return torch.linalg.solve(A, B)


def implicit_solve(op: KernelOperator, y: torch.Tensor, h: float) -> torch.Tensor:
    """Solve ``(I + h K^T K) Z = Y`` for ``n``-periodic ``Y`` of shape ``(C_in, *n)`` or
    ``(B, C_in, *n)``, ``K^T = K(1/z)^T`` the adjoint: per frequency
    ``(I + h M^H M) Ẑ = Ŷ`` (an implicit diffusion step; stride 1, bias ignored)."""
    _check_op(op)
    if any(s != 1 for s in op.stride):
        raise InvalidInputError("implicit_solve needs a stride-1 operator (K^T K is then a convolution)")
    if isinstance(h, (bool, np.bool_)) or not isinstance(h, (numbers.Real, np.integer, np.floating)):
        raise InvalidTypeError(f"h must be a real number, got {h!r}")
    h = float(h)
    if not math.isfinite(h):
        raise InvalidInputError(f"h must be finite, got {h}")
    y = as_real_tensor(y, "Y")
    if not y.is_floating_point():
        y = y.to(op.dtype)
    if not bool(torch.isfinite(y).all()):
        raise InvalidInputError("Y has non-finite entries (NaN/Inf)")
    batched = y.ndim == op.ndim + 2
    if not batched and y.ndim != op.ndim + 1:
        raise InvalidInputError(f"Y must have shape (C, *n) or (B, C, *n) with {op.ndim} spatial axes")
    Y = y if batched else y.unsqueeze(0)
    if Y.shape[1] != op.in_channels:
        raise InvalidInputError(f"Y has {Y.shape[1]} channels, K takes {op.in_channels}")
    n = tuple(Y.shape[2:])
    dims = tuple(range(2, 2 + op.ndim))
    dtype = torch.promote_types(op.dtype, Y.dtype)
    M = fft_multiplier(op.to(dtype), n, onesided=True).reshape(-1, *op.shape)
    check_budget(_complex_bytes(op, M.shape[0] * op.in_channels ** 2),
                 f"{M.shape[0]} implicit-step systems of size {op.in_channels}")
    A = torch.eye(op.in_channels, dtype=M.dtype) + h * (M.mH @ M)
    if h < 0:  # I + h M^H M can be singular (or nearly): refuse rather than return garbage
        ev = torch.linalg.eigvalsh(A)  # (F, C_in), real, ascending
        smallest = ev.abs().min(dim=1).values
        tol = op.in_channels * torch.finfo(ev.dtype).eps * ev.abs().amax(dim=1).clamp_min(1)
        bad = torch.nonzero(smallest <= tol).flatten()
        if bad.numel():
            spec_shape = (*n[:-1], n[-1] // 2 + 1)
            index = tuple(int(i) for i in np.unravel_index(int(bad[0]), spec_shape))
            raise InvalidInputError(f"I + h K^T K is singular at frequency {index} (FFT index on the "
                                    f"{n} grid; smallest |eigenvalue| {float(smallest[bad[0]]):.3g}) for "
                                    f"h = {h}: no unique solution; choose h > -1/||K||^2")
    Yh = torch.fft.rfftn(Y.to(dtype), dim=dims)
    rhs = Yh.flatten(2).permute(2, 1, 0).contiguous()  # (F, C_in, B)
    Z = _hermitian_solve(A, rhs, positive=h >= 0).permute(2, 1, 0).reshape(Yh.shape)
    out = torch.fft.irfftn(Z, s=n, dim=dims)
    return out if batched else out.squeeze(0)
