"""PDE residual blocks (bridge/pde_blocks.py): stability of the explicit step, the implicit
solve, the step-size rules, training with the package's trainer.

References are independent of the code under test: the operator norm as the matrix norm of
the layer applied to unit impulses, the residual of ``(I + h KᵀK) Z = Y`` by the layer's
convolutions, ``torch.autograd.gradcheck`` for the gradients.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from laurentnet.algebra import InvalidInputError
from laurentnet.bridge.lowcost_layers import LAYERS, make_coupling
from laurentnet.bridge.pde_blocks import (DiffusionReaction, ExplicitPDEBlock, ImplicitDiffusion,
                                          ImplicitPDEBlock, diagonal_implicit_solve,
                                          enforce_stability_, implicit_diffusion, stable_step)
from laurentnet.numeric import KernelOperator, implicit_solve

GRID = (6, 8)


def _coupling(kind: str, seed: int = 0, channels: int = 4):
    torch.manual_seed(seed)
    return make_coupling(kind, channels, 3, padding_mode="circular", blocks=2, groups=2).double()


def _matrix_norm(layer, grid) -> float:
    """The largest singular value of the layer's matrix on the grid, the matrix built
    column by column from unit impulses through the layer itself."""
    n = layer.in_channels * grid[0] * grid[1]
    with torch.no_grad():
        basis = torch.eye(n, dtype=torch.float64).reshape(n, layer.in_channels, *grid)
        matrix = layer(basis).reshape(n, -1).T
    return float(torch.linalg.matrix_norm(matrix, ord=2))


def _linear_block(kind: str, h: float, seed: int = 0) -> ExplicitPDEBlock:
    return ExplicitPDEBlock(_coupling(kind, seed), h, activation=nn.Identity(), norm=None,
                            bias=False).double().eval()


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_stable_step_norm_equals_the_matrix_norm(kind):
    layer = _coupling(kind)
    step = stable_step(layer, GRID, 0.1)
    assert step.exact and step.grid == GRID
    assert step.norm == pytest.approx(_matrix_norm(layer, GRID), rel=1e-10)
    assert step.h_max == pytest.approx(2 / step.norm ** 2, rel=1e-12)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_linear_explicit_step_is_stable_at_h_max_and_unstable_above(kind):
    h_max = stable_step(_coupling(kind), GRID).h_max
    y0 = torch.randn(3, 4, *GRID, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        stable, y = _linear_block(kind, h_max), y0
        energies = [float((y0 ** 2).sum())]
        for _ in range(30):
            y = stable(y)
            energies.append(float((y ** 2).sum()))
        assert all(b <= a * (1 + 1e-12) for a, b in zip(energies, energies[1:])), kind
        unstable, y = _linear_block(kind, 1.5 * h_max), y0
        for _ in range(30):
            y = unstable(y)
        # the top singular mode grows by |1 - 1.5 * 2| = 2 per step
        assert float((y ** 2).sum()) > 1e6 * energies[0], kind


@settings(max_examples=10)
@given(seed=st.integers(0, 2**16), fraction=st.floats(0.05, 1.0))
def test_relu_step_is_non_expansive_up_to_h_max(seed, fraction):
    """``Y − h Kᵀ relu(K Y + b)``: ``‖G(Y1) − G(Y2)‖ ≤ ‖Y1 − Y2‖`` for ``h ≤ h_max``."""
    coupling = _coupling("lean", seed)
    block = ExplicitPDEBlock(coupling, 1.0, norm=None).double().eval()
    with torch.no_grad():
        block.step.bias.normal_()
        block.step.h_effective.fill_(fraction * block.stable_step(GRID).h_max)
        g = torch.Generator().manual_seed(seed)
        y1, y2 = (torch.randn(2, 4, *GRID, dtype=torch.float64, generator=g) for _ in range(2))
        assert float((block(y1) - block(y2)).norm()) <= float((y1 - y2).norm()) * (1 + 1e-12)


def test_batch_norm_scale_enters_the_bound():
    coupling = _coupling("dense")
    block = ExplicitPDEBlock(coupling, 0.1).double().eval()
    norm = block.step.norm
    with torch.no_grad():
        norm.running_var.copy_(torch.tensor([0.25, 1.0, 4.0, 0.5], dtype=torch.float64))
        norm.weight.copy_(torch.tensor([1.0, -3.0, 1.0, 1.0], dtype=torch.float64))
    scale = max(1 / math.sqrt(0.25 + norm.eps), 3 / math.sqrt(1 + norm.eps))
    step = block.stable_step(GRID)
    assert step.scale == pytest.approx(scale)
    assert step.h_max == pytest.approx(2 / (scale * stable_step(coupling, GRID).norm ** 2))


@pytest.mark.parametrize("rule", ["clamp_h", "rescale_k"])
def test_training_forward_enforces_the_step(rule):
    block = ExplicitPDEBlock(_coupling("lean"), 10.0, norm=None, stability=rule,
                             margin=0.8).double().train()
    before = stable_step(block.step.coupling, GRID).norm
    assert not stable_step(block.step.coupling, GRID, 10.0).stable
    block(torch.randn(2, 4, *GRID, dtype=torch.float64))
    after = block.stable_step(GRID)
    assert after.stable and after.h == pytest.approx(0.8 * after.h_max, rel=1e-9)
    if rule == "clamp_h":
        assert float(block.step.h_effective) < 10.0 and after.norm == pytest.approx(before)
    else:
        assert float(block.step.h_effective) == 10.0 and after.norm < before


def test_refusals():
    with pytest.raises(InvalidInputError, match="circular"):
        ImplicitDiffusion(make_coupling("lean", 4, padding_mode="zeros"), 0.1)
    with pytest.raises(InvalidInputError, match="margin"):
        DiffusionReaction(_coupling("lean"), 0.1, margin=1.5)
    with pytest.raises(InvalidInputError, match="stability"):
        DiffusionReaction(_coupling("lean"), 0.1, stability="clip")
    with pytest.raises(InvalidInputError, match="h must be >= 0"):
        ImplicitDiffusion(_coupling("lean"), -1.0)


# -- the implicit step ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_implicit_step_solves_the_system_to_round_off(kind):
    diffusion = ImplicitDiffusion(_coupling(kind), 0.7)
    y = torch.randn(2, 4, *GRID, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        z = diffusion(y)
    assert diffusion.residual_norm(y, z) < 1e-12 * float(y.abs().max())
    assert float(z.norm()) <= float(y.norm())                 # ‖(I + h KᵀK)^-1‖ <= 1


def test_depthwise_fast_path_equals_implicit_solve_and_stays_stable_for_any_h():
    layer = _coupling("depthwise")
    y = torch.randn(2, 4, *GRID, dtype=torch.float64)
    op = KernelOperator.from_weight(layer.weight.detach(), padding=layer.padding, groups=4)
    for h in (0.01, 1.0, 1e4):
        fast = diagonal_implicit_solve(y, layer.weight.detach(), layer.padding, h)
        torch.testing.assert_close(fast, implicit_solve(op, y, h), rtol=1e-12, atol=1e-12)
        assert float(fast.norm()) <= float(y.norm())


@pytest.mark.parametrize("kind", ["lean", "depthwise"])
def test_implicit_gradients_are_exact(kind):
    layer = _coupling(kind, channels=3)
    y = torch.randn(1, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    if kind == "depthwise":
        w = layer.weight.detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda y, w: diagonal_implicit_solve(y, w, (1, 1), 0.4), (y, w),
                                        fast_mode=True)
    else:
        w = layer.dense_weight().detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda y, w: implicit_diffusion(y, w, [1, 1], 0.4), (y, w),
                                        fast_mode=True)


def test_imex_block_is_the_composition():
    block = ImplicitPDEBlock(_coupling("depthwise", 1), _coupling("lean", 2), 0.3, norm=None).double().eval()
    y = torch.randn(2, 4, *GRID, dtype=torch.float64)
    with torch.no_grad():
        explicit = y + block.reaction(y)
        torch.testing.assert_close(block(y), block.diffusion(explicit))
        pure = ImplicitPDEBlock(_coupling("depthwise", 1), None, 0.3).double()
        torch.testing.assert_close(pure(y), block.diffusion(y))


# -- training with the package's trainer --------------------------------------------------------

@pytest.mark.slow
def test_trainer_trains_pde_networks_with_the_step_enforced():
    from laurentnet.bridge.data import digits
    from laurentnet.bridge.lowcost_resnet import LowCostResNet
    from laurentnet.bridge.schedules import FixedSchedule
    from laurentnet.bridge.trainer import TrainConfig, train

    torch.manual_seed(0)
    model = LowCostResNet("pde_explicit", "lean", widths=(4, 8), blocks_per_stage=1, h=50.0,
                          pde_options={"stability": "clamp_h", "margin": 0.9})
    result = train(model, digits(8), FixedSchedule("constant"),
                   TrainConfig(epochs=1, batch_size=128, optimizer="adamw"), progress=False)
    assert math.isfinite(result.test_loss)
    blocks = [m for m in model.modules() if isinstance(m, DiffusionReaction)]
    assert all(float(b.h_effective) < 50.0 for b in blocks)   # clamped during training
    assert [b.last_grid for b in blocks] == [(8, 8), (4, 4)]
    steps = enforce_stability_(model)               # after the last optimizer step
    assert len(steps) == 2 and all(s.stable for s in steps)
