"""Linear PDE networks collapse like any other network; the bridge traces the torch layers.

* A chain of linear explicit blocks ``Y − h KᵀK Y`` (identity activation, no norm) is an
  exact ``algebra.Network`` (:func:`linear_pde_network`); ``algebra.collapse`` and
  ``numeric.collapse_numeric`` give one circular convolution, proved equal to the product
  of the structures' own exact algebra ``Π (I − h K^* K)`` and equal to the torch blocks.
* ``bridge.convert`` traces every layer: the convolution-based couplings (dense,
  depthwise, 1x1, grouped, lean, block-circulant with ``method="dense"``) are ordinary
  convolutions to it; the FFT-based ones are boundaries — the block-circulant FFT path
  (``fft_rfft``/``real``/``imag``/``complex``/``fft_irfft``), the depthwise implicit solve
  (``fft_rfft2``/``div``/``fft_irfft2``) and the general implicit solve (the custom op
  ``laurentnet.implicit_diffusion``) — and the converted model predicts the same.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from laurentnet.algebra import Certificate, ConvOperator, apply_operator, collapse, prove
from laurentnet.bridge import convert, verify
from laurentnet.bridge.lowcost_layers import make_coupling
from laurentnet.bridge.lowcost_resnet import LowCostResNet
from laurentnet.bridge.pde_blocks import ExplicitPDEBlock, ImplicitPDEBlock, linear_pde_network
from laurentnet.numeric import KernelOperator, collapse_numeric

SIZE = (5, 6)


def _integer_block(kind: str, h: float, seed: int) -> ExplicitPDEBlock:
    torch.manual_seed(seed)
    coupling = make_coupling(kind, 4, 3, padding_mode="circular", blocks=2, groups=2).double()
    with torch.no_grad():
        for p in coupling.parameters():
            p.copy_(torch.randint(-2, 3, p.shape))
    return ExplicitPDEBlock(coupling, h, activation=nn.Identity(), norm=None, bias=False).double().eval()


@pytest.mark.parametrize("kinds", [("lean", "block_circulant"), ("depthwise", "dense"),
                                   ("pointwise", "grouped")])
def test_linear_pde_chain_collapses_to_the_structure_product(kinds):
    blocks = [_integer_block(k, 0.125, i) for i, k in enumerate(kinds)]
    net = linear_pde_network(blocks, 4)
    result = collapse(net, (4, *SIZE))
    assert result.periodic and result.exact_everywhere
    # the same operator from the structures' own exact algebra: Π (I − h K^* K)
    ring = result.operator.ring
    chain = ConvOperator.identity(ring, 4)
    for block in blocks:
        K = block.step.coupling.exact_structure()
        KtK = (K.adjoint() @ K).dense().set_ring(ring)
        chain = (ConvOperator.identity(ring, 4) + KtK * Fraction(-1, 8)) @ chain
    certificate = prove(result.operator, chain, input_shape=(4, *SIZE), periodic=True)
    assert isinstance(certificate, Certificate), certificate
    # float collapse agrees, and both equal the torch blocks applied one after the other
    numeric = collapse_numeric(net, (4, *SIZE))
    assert numeric.operator.allclose(KernelOperator.from_algebra(result.operator), 0, 1e-9)
    x = np.random.default_rng(0).integers(-3, 4, (4, *SIZE)).astype(np.float64)
    with torch.no_grad():
        y = torch.from_numpy(x)[None]
        for block in blocks:
            y = block(y)
    exact = apply_operator(result.operator, x, periodic=True).astype(np.float64)
    np.testing.assert_allclose(y[0].numpy(), exact, rtol=0, atol=1e-9)


def test_nonlinear_blocks_are_refused_by_the_linear_network():
    block = ExplicitPDEBlock(make_coupling("lean", 4, padding_mode="circular"), 0.1)
    with pytest.raises(ValueError, match="not linear"):
        linear_pde_network([block], 4)


def _boundary_ops(model: nn.Module, x: torch.Tensor) -> set[str]:
    conversion = convert(model.eval(), x, mode="partial")
    assert verify(model, conversion.module, x).ok
    return {b.op for b in conversion.report.boundaries}


FFT = {"aten.fft_rfft.default", "aten.fft_irfft.default"}


@pytest.mark.slow
def test_bridge_traces_the_networks_and_keeps_the_fft_layers():
    x = torch.randn(2, 1, 8, 8)
    small = dict(widths=(4, 8), blocks_per_stage=1)
    torch.manual_seed(0)
    conv_only = _boundary_ops(LowCostResNet("pde_explicit", "lean", **small), x)
    assert conv_only == {"aten.add.Tensor", "aten.relu.default"}
    dense_path = _boundary_ops(LowCostResNet("residual", "block_circulant", **small,
                                             coupling_options={"method": "dense"}), x)
    assert not any("fft" in op for op in dense_path)
    fft_path = _boundary_ops(LowCostResNet("residual", "block_circulant", **small), x)
    assert FFT <= fft_path and "aten.complex.default" in fft_path
    implicit = _boundary_ops(LowCostResNet("pde_implicit", "lean", **small), x)
    assert {"aten.fft_rfft2.default", "aten.fft_irfft2.default"} <= implicit


def test_general_implicit_solve_is_one_kept_custom_op():
    torch.manual_seed(1)
    block = ImplicitPDEBlock(make_coupling("lean", 4, padding_mode="circular"),
                             make_coupling("lean", 4, padding_mode="circular"), 0.3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), block)
    ops = _boundary_ops(model, torch.randn(2, 1, 6, 6))
    assert "laurentnet.implicit_diffusion.default" in ops


def test_linear_pde_network_converts_to_one_map_and_one_circular_conv():
    """Collapsed to one affine map or one circular 6x6 convolution, exactly; the collapsed
    convolution costs more multiply-adds than the structured layers it replaces (so
    ``partial`` mode keeps them)."""
    torch.manual_seed(2)
    blocks = nn.Sequential(*[ExplicitPDEBlock(make_coupling(k, 4, padding_mode="circular"), 0.05,
                                              activation=nn.Identity(), norm=None)
                             for k in ("lean", "depthwise")]).eval()
    x = torch.randn(2, 4, 6, 6)
    affine = convert(blocks, x, mode="affine")
    assert verify(blocks, affine.module, x).ok and not affine.report.boundaries
    kernel = convert(blocks, x, mode="kernel")
    assert verify(blocks, kernel.module, x).ok and kernel.exact
    assert kernel.report.macs_after > kernel.report.macs_before
    assert not any(s.merged for s in convert(blocks, x, mode="partial").report.segments)
