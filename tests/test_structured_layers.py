"""The torch coupling layers (bridge/lowcost_layers.py) against torch's own layers.

Each layer equals ``nn.Conv2d`` with its dense weight (built here from the layer's native
parameters, independently of the layer's ``dense_weight``), its adjoint satisfies
``<K x, y> = <x, Kᵀ y>``, its exact twin is the same operator, and its parameter and
multiply-add counts equal ``numel`` and torch's FLOP counter.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from laurentnet.algebra import ConvOperator, InvalidInputError
from laurentnet.bridge.lowcost_layers import (LAYERS, BlockCirculantConv2d, DenseConv2d,
                                              DepthwiseConv2d, GroupedConv2d, LeanConv2d,
                                              PointwiseConv2d, make_coupling)


def _native_dense(layer) -> torch.Tensor:
    """The dense weight from the layer's own parameters, by explicit loops."""
    c_out, c_in, k = layer.out_channels, layer.in_channels, layer.kernel_size
    dense = torch.zeros(c_out, c_in, k, k, dtype=torch.float64)
    if isinstance(layer, LeanConv2d):
        return _native_dense(layer.depthwise) + nn.functional.pad(
            layer.pointwise.weight.detach().double(), [k // 2] * 4)
    w = layer.weight.detach().double()
    if isinstance(layer, BlockCirculantConv2d):
        m = layer.blocks
        bo, bi = c_out // m, c_in // m
        for r in range(m):
            for c in range(m):
                dense[r * bo:(r + 1) * bo, c * bi:(c + 1) * bi] = w[(c - r) % m]
        return dense
    g = getattr(layer, "groups", 1)
    opg, ipg = c_out // g, c_in // g
    for o in range(c_out):
        group = o // opg
        dense[o, group * ipg:(group + 1) * ipg] = w[o]
    return dense


def _layers(mode: str, c: int = 4, k: int = 3):
    return [DenseConv2d(c, c, k, mode), DepthwiseConv2d(c, k, mode), PointwiseConv2d(c, c, mode),
            GroupedConv2d(c, c, k, 2, mode), LeanConv2d(c, k, mode),
            BlockCirculantConv2d(c, c, k, 2, mode), BlockCirculantConv2d(c, c, k, 4, mode, "dense"),
            BlockCirculantConv2d(c, 2 * c, k, 4, mode)]


def _torch_conv(layer, x, mode):
    k = layer.kernel_size
    conv = nn.Conv2d(layer.in_channels, layer.out_channels, k, padding=k // 2, bias=False,
                     padding_mode=mode, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(_native_dense(layer))
        return conv(x)


@settings(max_examples=4)
@given(seed=st.integers(0, 2**16), mode=st.sampled_from(["zeros", "circular"]),
       k=st.sampled_from([1, 3, 5]))
@torch.no_grad()
def test_layers_equal_torch_conv_and_their_adjoints(seed, mode, k):
    torch.manual_seed(seed)
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64)
    for layer in _layers(mode, 4, k):
        layer = layer.double()
        y = torch.randn(2, layer.out_channels, 6, 7, dtype=torch.float64)
        name = repr(layer)
        torch.testing.assert_close(layer(x), _torch_conv(layer, x, mode), msg=name)
        torch.testing.assert_close(layer.dense_weight(), _native_dense(layer), msg=name)
        inner = (layer(x) * y).sum() - (x * layer.adjoint(y)).sum()
        assert abs(float(inner)) < 1e-10, name


def test_exact_twin_is_the_same_operator():
    torch.manual_seed(0)
    for layer in _layers("zeros"):
        with torch.no_grad():
            for p in layer.parameters():
                p.copy_(torch.randint(-3, 4, p.shape))
        exact = layer.exact_structure()
        expected = ConvOperator.from_weight(_native_dense(layer).numpy(), padding=layer.padding)
        assert exact.dense() == expected, repr(layer)
        assert exact.params == layer.num_parameters == sum(p.numel() for p in layer.parameters())


@pytest.mark.parametrize("layer,params", [
    (DenseConv2d(8, 8), 8 * 8 * 9), (DepthwiseConv2d(8), 8 * 9), (PointwiseConv2d(8, 8), 64),
    (GroupedConv2d(8, 8, 3, 4), 8 * 2 * 9), (LeanConv2d(8), 8 * 9 + 64),
    (BlockCirculantConv2d(8, 8, 3, 4), 4 * 2 * 2 * 9),
    (BlockCirculantConv2d(8, 8, 3, 4, method="dense"), 4 * 2 * 2 * 9)])
def test_parameter_and_multiply_add_counts_equal_torch_counts(layer, params):
    assert layer.num_parameters == params == sum(p.numel() for p in layer.parameters())
    x = torch.randn(1, 8, 7, 6)
    with FlopCounterMode(display=False) as counter:
        layer(x)
    assert counter.get_total_flops() == 2 * layer.macs((7, 6))


def test_dense_costs_m_squared_and_fft_less():
    fft, dense = BlockCirculantConv2d(32, 32, 3, 8), BlockCirculantConv2d(32, 32, 3, 8, method="dense")
    assert dense.macs(10) == 32 * 32 * 9 * 100 and fft.macs(10) == 4 * 5 * 4 * 4 * 9 * 100
    assert fft.num_parameters == 32 * 32 * 9 // 8


def test_refusals():
    with pytest.raises(InvalidInputError, match="odd"):
        DenseConv2d(2, 2, 2)
    with pytest.raises(InvalidInputError, match="blocks=3 must divide"):
        BlockCirculantConv2d(4, 4, 3, 3)
    with pytest.raises(InvalidInputError, match="padding_mode"):
        make_coupling("lean", 4, padding_mode="reflect")
    with pytest.raises(InvalidInputError, match="kind"):
        make_coupling("circulant", 4)
    assert set(LAYERS) == {"dense", "depthwise", "pointwise", "grouped", "lean", "block_circulant"}
