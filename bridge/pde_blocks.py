"""PDE residual blocks (seed 002): a forward-Euler diffusion–reaction step and an implicit one.

**Explicit** (:class:`ExplicitPDEBlock`): one forward-Euler step of ``∂_t Y = F(Y)``,

    Y_{k+1} = Y_k + h F(Y_k),       F(Y) = −Kᵀ σ(N(K Y + b)),

with ``K`` any coupling layer of :mod:`bridge.lowcost_layers` (fully coupled, depthwise,
1x1, lean, block-circulant, grouped), ``Kᵀ`` its adjoint (``K(1/z)ᵀ``, the same weights),
``σ`` an activation with slopes in ``[0, L]`` (ReLU: ``L = 1``) and ``N`` a batch norm or
nothing.  The Jacobian is ``I − h Kᵀ D K`` with ``D`` diagonal, ``0 ≤ D ≤ L s`` (``s`` the
largest scale ``|γ|/sqrt(var + ε)`` of an eval-mode batch norm, 1 without one), so its
eigenvalues lie in ``[1 − h L s ‖K‖², 1]``: the step is non-expansive — for the linear
part ``Y − h KᵀK Y`` the energy ``‖Y‖²`` never grows — exactly when

    h ≤ h_max = 2 / (L s ‖K‖²),

and above it the top singular mode of ``K`` is amplified by ``|1 − h L s ‖K‖²| > 1`` per
step.  ``‖K‖`` is :func:`laurentnet.numeric.operator_norm` on the input's grid: exact for
circular padding (the symbol's largest singular value over the grid's frequencies), for
zero padding the circular norm on the same grid — close to, but not a proven bound of, the
zero-padded operator's norm (use circular padding when the bound must hold).
:meth:`DiffusionReaction.stable_step` computes and reports it; ``stability="clamp_h"``
uses ``h_eff = min(h, margin · h_max)`` and ``"rescale_k"`` rescales ``K``'s weights by
``sqrt(margin · h_max / h)`` when ``h > margin · h_max`` (``K`` is linear in its weights),
both at every training forward (with the batch norm's running variance; the norm is not
differentiated).

**Implicit** (:class:`ImplicitDiffusion`, :class:`ImplicitPDEBlock`): the diffusion step
``Z = (I + h LᵀL)^{-1} Y`` solved exactly through the symbol on the periodic grid
(circular padding only) by :func:`laurentnet.numeric.implicit_solve` (per frequency the
Hermitian system ``(I + h M^H M) Ẑ = Ŷ``, Cholesky), with exact gradients
(:func:`implicit_diffusion`, a torch custom op: ``∂/∂Y = A^{-1}``, ``∂/∂w = −h (∇_w⟨K_w W, K Z⟩ + ∇_w⟨K_w Z, K W⟩)``,
``W = A^{-1} G``).  ``‖(I + hLᵀL)^{-1}‖ ≤ 1`` for every ``h ≥ 0``: unconditionally stable.
:class:`ImplicitPDEBlock` is the IMEX step ``Y_{k+1} = (I + h LᵀL)^{-1}(Y_k + h F_K(Y_k))``.

Both blocks are :class:`~laurentnet.bridge.models.resnet.ResidualBlock` s (``λ · Y +
residual(Y)`` then the output map; λ = ``skip_weight`` = 1 is the Euler step), so the
package's trainer trains networks of them.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..algebra import Network
from ..algebra.errors import InvalidInputError, InvalidTypeError
from ..algebra.validate import choice_arg, describe, real_arg
from ..numeric import implicit_solve, operator_norm
from ..numeric.coupling_ops import adjoint_weight, conv_same
from ..numeric.kernels import KernelOperator
from .lowcost_layers import CouplingConv2d, DepthwiseConv2d
from .models.resnet import ResidualBlock

__all__ = ["StableStep", "stable_step", "DiffusionReaction", "ExplicitPDEBlock", "implicit_diffusion",
           "ImplicitDiffusion", "ImplicitPDEBlock", "diagonal_implicit_solve", "STABILITY", "enforce_stability_", "linear_pde_network"]

STABILITY = (None, "clamp_h", "rescale_k")


@dataclass(frozen=True)
class StableStep:
    """``h_max = 2 / (slope · scale · norm²)`` for an explicit step of size ``h`` on a
    ``grid`` (``exact``: circular padding, the norm is the operator's)."""
    norm: float
    slope: float
    scale: float
    h_max: float
    h: float
    grid: tuple[int, ...]
    exact: bool

    @property
    def stable(self) -> bool:
        """``h ≤ h_max`` (up to one part in 10⁹ for round-off)."""
        return self.h <= self.h_max * (1 + 1e-9)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "stable": self.stable}


def _check_coupling(coupling: Any, what: str = "coupling") -> CouplingConv2d:
    if not isinstance(coupling, CouplingConv2d):
        raise InvalidTypeError(f"{what} must be a laurentnet.bridge coupling layer (DenseConv2d, "
                               f"LeanConv2d, ...), got {describe(coupling)}")
    return coupling


def stable_step(coupling: CouplingConv2d, grid: int | Sequence[int], h: float = 0.0, *,
                slope: float = 1.0, scale: float = 1.0) -> StableStep:
    """The largest stable explicit step ``2 / (slope · scale · ‖K‖²)`` for ``coupling`` on
    a ``grid`` (module docstring)."""
    _check_coupling(coupling)
    n = (int(grid),) * 2 if isinstance(grid, int) else tuple(int(v) for v in grid)
    norm = operator_norm(coupling.kernel_operator(), n)
    slope = real_arg(slope, "slope", positive=True)
    scale = real_arg(scale, "scale", positive=True)
    h_max = 2.0 / (slope * scale * norm ** 2) if norm > 0 else math.inf
    return StableStep(norm, slope, scale, h_max, float(h), n,
                      coupling.padding_mode == "circular")


def _optional_choice(value: Any, what: str, choices: tuple[str | None, ...]) -> str | None:
    """``value`` if it is None or one of the string ``choices``."""
    return None if value is None else choice_arg(value, what, [c for c in choices if c])


def _norm_layer(norm: str | None, channels: int) -> nn.Module | None:
    norm = _optional_choice(norm, "norm", (None, "batch"))
    return nn.BatchNorm2d(channels) if norm == "batch" else None


def _norm_scale(norm: nn.Module | None) -> float:
    """``max |γ| / sqrt(running_var + ε)`` of an eval-mode batch norm (1 without one)."""
    if norm is None:
        return 1.0
    with torch.no_grad():
        gamma = norm.weight.abs() if norm.affine else torch.ones_like(norm.running_var)
        return float((gamma / torch.sqrt(norm.running_var + norm.eps)).max())


class DiffusionReaction(nn.Module):
    """``h F(Y)`` with ``F(Y) = −Kᵀ σ(N(K Y + b))`` (module docstring).

    ``coupling``: the layer ``K`` (``C -> C'``); ``h``: the step; ``activation``: ``σ``
    (default ReLU) with largest slope ``slope``; ``norm``: ``"batch"`` or None (with a batch
    norm the bias ``b`` is its shift: a bias before it would cancel); ``bias``: learn ``b``
    (without a norm); ``stability``: None, ``"clamp_h"`` or ``"rescale_k"`` with ``margin``
    (``h ≤ margin · h_max`` is enforced at every training forward; ``0 < margin ≤ 1``)."""

    def __init__(self, coupling: CouplingConv2d, h: float = 0.1, *,
                 activation: nn.Module | None = None, slope: float = 1.0,
                 norm: str | None = "batch", bias: bool = True, stability: str | None = None,
                 margin: float = 0.9):
        super().__init__()
        self.coupling = _check_coupling(coupling)
        h = real_arg(h, "h", minimum=0)
        self.register_buffer("h", torch.tensor(h, dtype=torch.float64))
        self.register_buffer("h_effective", torch.tensor(h, dtype=torch.float64))
        self.activation = nn.ReLU() if activation is None else activation
        self.slope = real_arg(slope, "slope", positive=True)
        self.norm = _norm_layer(norm, coupling.out_channels)
        self.bias = nn.Parameter(torch.zeros(coupling.out_channels)) \
            if bias and self.norm is None else None
        self.stability = _optional_choice(stability, "stability", STABILITY)
        self.margin = real_arg(margin, "margin", positive=True)
        if self.margin > 1:
            raise InvalidInputError(f"margin must be in (0, 1], got {margin}")
        self.last_grid: tuple[int, ...] | None = None

    def reaction(self, y: torch.Tensor) -> torch.Tensor:
        """``F(Y) = −Kᵀ σ(N(K Y + b))``."""
        t = self.coupling(y)
        if self.bias is not None:
            t = t + self.bias.view(1, -1, 1, 1)
        if self.norm is not None:
            t = self.norm(t)
        return -self.coupling.adjoint(self.activation(t))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """``h_eff F(Y)`` (after enforcing the step rule when training)."""
        if self.training:
            self.last_grid = tuple(int(v) for v in y.shape[-2:])
            if self.stability is not None:
                self.enforce_stability_(self.last_grid)
        return self.h_effective * self.reaction(y)

    @property
    def linear(self) -> bool:
        """Identity activation, no norm, no (or a zero) bias: ``F(Y) = −KᵀK Y``."""
        return isinstance(self.activation, nn.Identity) and self.norm is None and \
            (self.bias is None or not bool(self.bias.detach().any()))

    def stable_step(self, grid: int | Sequence[int]) -> StableStep:
        """``h_max`` for the current ``K`` and batch-norm scale on ``grid``."""
        return stable_step(self.coupling, grid, float(self.h_effective), slope=self.slope,
                           scale=_norm_scale(self.norm))

    @torch.no_grad()
    def enforce_stability_(self, grid: int | Sequence[int]) -> StableStep:
        """Make the step satisfy ``h ≤ margin · h_max`` by the ``stability`` rule
        (``"clamp_h"`` when None); returns the step after the change."""
        step = stable_step(self.coupling, grid, float(self.h), slope=self.slope,
                           scale=_norm_scale(self.norm))
        target = self.margin * step.h_max
        if self.stability == "rescale_k":
            self.h_effective.fill_(float(self.h))
            if float(self.h) > target:
                factor = math.sqrt(target / float(self.h))
                for p in self.coupling.parameters():
                    p.mul_(factor)
        else:
            self.h_effective.fill_(min(float(self.h), target))
        return self.stable_step(grid)


class ExplicitPDEBlock(ResidualBlock):
    """``Y + h F(Y)``: a :class:`ResidualBlock` whose residual is :class:`DiffusionReaction`
    (``self.step``; the keyword arguments are its own) and whose output map is the
    identity."""

    def __init__(self, coupling: CouplingConv2d, h: float = 0.1, *, skip_weight: float = 1.0,
                 **options: Any):
        super().__init__()
        self.step = DiffusionReaction(coupling, h, **options)
        c = coupling.in_channels
        self._init_shortcut(c, c, 1, skip_weight)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.step(x)

    def output_activation(self) -> nn.Module:
        return nn.Identity()

    def stable_step(self, grid: int | Sequence[int]) -> StableStep:
        return self.step.stable_step(grid)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run the batched complex Cholesky solves on one thread: on this project's 2-core
    machine ``torch.cholesky_solve`` on 420 complex 16x16 systems with 64 right-hand sides
    took 1.6-6.7 s with 2 threads and 26 ms with 1 (torch 2.13, CPU)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@torch.library.custom_op("laurentnet::implicit_diffusion", mutates_args=())
def implicit_diffusion(y: torch.Tensor, weight: torch.Tensor, padding: list[int],
                       h: float) -> torch.Tensor:
    """``Z = (I + h K_wᵀ K_w)^{-1} Y`` on the periodic grid, ``K_w`` the circular "same"
    convolution with ``weight`` (``(C_out, C_in, k, k)``) and left ``padding``, by
    :func:`laurentnet.numeric.implicit_solve`; exact gradients (module docstring).  A torch
    custom op: traced as one node (``laurentnet.implicit_diffusion``), which the bridge's
    converter keeps as a boundary."""
    op = KernelOperator.from_weight(weight, padding=tuple(padding), dtype=weight.dtype)
    with _one_thread():
        return implicit_solve(op, y, h).to(y.dtype).contiguous()


@implicit_diffusion.register_fake
def _implicit_diffusion_shape(y: torch.Tensor, weight: torch.Tensor, padding: list[int],
                              h: float) -> torch.Tensor:
    return torch.empty_like(y)


def _implicit_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    _, weight, padding, h = inputs
    ctx.save_for_backward(output, weight)
    ctx.padding, ctx.h = tuple(padding), h


def _implicit_backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
    """``∂L/∂Y = W = A^{-1} G`` (``A`` symmetric) and ``∂L/∂w = −h ∇_w(⟨K_w W, K Z⟩ +
    ⟨K_w Z, K W⟩)`` with the second factors held fixed."""
    z, weight = ctx.saved_tensors
    w = implicit_diffusion(grad.contiguous(), weight.detach(), list(ctx.padding), ctx.h)
    with torch.enable_grad():
        wt = weight.detach().requires_grad_(True)
        kz = conv_same(z.detach(), wt, ctx.padding, 1, "circular")
        kw = conv_same(w, wt, ctx.padding, 1, "circular")
        s = (kz * kw.detach()).sum() + (kw * kz.detach()).sum()
        grad_weight = -ctx.h * torch.autograd.grad(s, wt)[0]
    return w, grad_weight, None, None


implicit_diffusion.register_autograd(_implicit_backward, setup_context=_implicit_setup)


def _periodic_taps(weight: torch.Tensor, padding: Sequence[int], n: Sequence[int]) -> torch.Tensor:
    """``P[c, m] = Σ_{p − a ≡ m (mod n)} w[c, 0, a]``: a depthwise kernel folded onto the
    ``n``-periodic grid (differentiable)."""
    c, _, k1, k2 = weight.shape
    rows = (padding[0] - torch.arange(k1)) % n[0]
    cols = (padding[1] - torch.arange(k2)) % n[1]
    out = weight.new_zeros(c, n[0], n[1])
    index = (slice(None), rows[:, None].expand(k1, k2), cols[None, :].expand(k1, k2))
    return out.index_put((torch.arange(c)[:, None, None].expand(c, k1, k2), *index[1:]),
                         weight[:, 0], accumulate=True)


def diagonal_implicit_solve(y: torch.Tensor, weight: torch.Tensor, padding: Sequence[int],
                            h: float) -> torch.Tensor:
    """``(I + h DᵀD)^{-1} Y`` for a *depthwise* ``D`` (weight ``(C, 1, k, k)``): its symbol
    is diagonal, so per channel and frequency ``Ẑ = Ŷ / (1 + h |m_c|²)`` with ``m_c`` the
    FFT of the folded kernel — the same solve as :func:`laurentnet.numeric.implicit_solve`
    (tested to round-off), elementwise, differentiated by autograd."""
    n = tuple(y.shape[-2:])
    m = torch.fft.rfft2(_periodic_taps(weight, padding, n))
    return torch.fft.irfft2(torch.fft.rfft2(y) / (1 + h * (m.real ** 2 + m.imag ** 2)), s=n)


class ImplicitDiffusion(nn.Module):
    """``Z = (I + h LᵀL)^{-1} Y`` exactly through the symbol (circular padding only):
    :func:`implicit_diffusion` (:func:`laurentnet.numeric.implicit_solve`, one Hermitian system
    per frequency) in general, :func:`diagonal_implicit_solve` for a depthwise ``L``."""

    def __init__(self, coupling: CouplingConv2d, h: float = 0.1):
        super().__init__()
        self.coupling = _check_coupling(coupling)
        if coupling.padding_mode != "circular":
            raise InvalidInputError("the implicit step is solved through the symbol on the periodic "
                                    "grid: the coupling needs padding_mode='circular', got "
                                    f"{coupling.padding_mode!r}")
        self.h = real_arg(h, "h", minimum=0)  # a constant of the layer (not trained)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        c = self.coupling
        if isinstance(c, DepthwiseConv2d):
            return diagonal_implicit_solve(y, c.weight, c.padding, self.h)
        return implicit_diffusion(y, c.dense_weight(), list(c.padding), self.h)

    def residual_norm(self, y: torch.Tensor, z: torch.Tensor) -> float:
        """``max |(I + h LᵀL) Z − Y|`` by the layer's own convolutions (a check)."""
        with torch.no_grad():
            lhs = z + self.h * self.coupling.adjoint(self.coupling(z))
            return float((lhs - y).abs().max())


class ImplicitPDEBlock(ResidualBlock):
    """The IMEX step ``Y_{k+1} = (I + h LᵀL)^{-1} (Y_k + h F_K(Y_k))``: a
    :class:`DiffusionReaction` ``h F_K`` explicit (``reaction=None``: pure diffusion) and
    the diffusion ``L`` implicit.  The implicit part is stable for every ``h ≥ 0``; the
    explicit reaction keeps its own bound (``self.reaction.stable_step``)."""

    def __init__(self, diffusion: CouplingConv2d, reaction: CouplingConv2d | None = None,
                 h: float = 0.1, *, skip_weight: float = 1.0, **options: Any):
        super().__init__()
        self.diffusion = ImplicitDiffusion(diffusion, h)
        self.reaction = None if reaction is None else DiffusionReaction(reaction, h, **options)
        c = diffusion.in_channels
        self._init_shortcut(c, c, 1, skip_weight)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x) if self.reaction is None else self.reaction(x)

    def output_activation(self) -> nn.Module:
        return self.diffusion


@torch.no_grad()
def enforce_stability_(model: nn.Module, grid: int | Sequence[int] | None = None) -> list[StableStep]:
    """Apply every :class:`DiffusionReaction`'s rule (``clamp_h`` when it has none) on
    ``grid``, or on the grid of its last training input (after training: the final
    optimizer step changed ``K`` after the last enforcement)."""
    steps = []
    for m in model.modules():
        if isinstance(m, DiffusionReaction):
            n = grid if grid is not None else getattr(m, "last_grid", None)
            if n is None:
                raise InvalidInputError("a block has not seen a training input yet: give grid=")
            steps.append(m.enforce_stability_(n))
    return steps


def linear_pde_network(blocks: Sequence[ExplicitPDEBlock], channels: int) -> Network:
    """An exact :class:`laurentnet.algebra.Network` of a chain of *linear* explicit blocks
    (identity activation, no norm, no bias): each ``Y − h Kᵀ K Y`` as a conv with ``K``'s
    dense weight, a conv with its adjoint weight (padding ``k − 1 − p``) and an add with
    coefficients ``(1, −h)``, in the blocks' padding mode; weights taken exactly."""
    net = Network(ndim=2, in_channels=int(channels))
    x = net.input
    for i, block in enumerate(blocks):
        if not isinstance(block, ExplicitPDEBlock):
            raise InvalidTypeError(f"blocks[{i}] must be an ExplicitPDEBlock, got {describe(block)}")
        if not block.step.linear:
            raise InvalidInputError(f"blocks[{i}] is not linear (it needs activation=nn.Identity(), "
                                    "norm=None and a zero or no bias)")
        k = block.step.coupling
        w = k.dense_weight().detach().double()
        wa, pa = adjoint_weight(w, k.padding)
        t = net.conv(x, w.numpy(), padding=k.padding, padding_mode=k.padding_mode)
        t = net.conv(t, wa.numpy(), padding=pa, padding_mode=k.padding_mode)
        x = net.add(x, t, coefficients=[float(block.skip_weight), -float(block.step.h_effective)])
    net.set_output(x)
    return net
