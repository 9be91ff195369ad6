"""numeric.collapse_numeric against algebra.collapse (small) and torch (64 channels)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from laurentnet.algebra import Network, collapse
from laurentnet.numeric.kernels import KernelOperator
from laurentnet.numeric.network_collapse import collapse_numeric
from laurentnet.numeric.network_torch import network_forward


@st.composite
def small_networks(draw):
    """Chains of 1-3 convs (random modes, strides, dilation) with optional BN, residual
    skip, channel-affine and average pooling, 1-D or 2-D, 1-3 channels."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    ndim = draw(st.sampled_from([1, 2]))
    channels = draw(st.integers(1, 3))
    size = draw(st.integers(6, 10))
    net = Network(ndim, channels)
    h = net.input
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.sampled_from([1, 2, 3]))
        mode = draw(st.sampled_from(["zeros", "zeros", "valid", "circular", "reflect"]))
        pad = 0 if mode == "valid" else (k - 1) // 2
        stride = draw(st.sampled_from([1, 1, 2]))
        weight = rng.normal(size=(channels, channels, *(k,) * ndim))
        bias = rng.normal(size=channels) if draw(st.booleans()) else None
        out = net.conv(h, weight, bias, stride=stride, padding=pad,
                       padding_mode="zeros" if mode == "valid" else mode)
        try:
            shapes = net.shapes((channels, *(size,) * ndim))
        except ValueError:
            assume(False)  # the input became too small for this layer
        if stride == 1 and draw(st.booleans()) and shapes[out.name] == shapes[h.name]:
            out = h + out
        if draw(st.booleans()):
            out = net.batch_norm(out, rng.normal(size=channels), rng.uniform(0.5, 2, channels),
                                 rng.normal(size=channels), rng.normal(size=channels))
        h = out
    if draw(st.booleans()) and min(net.shapes((channels, *(size,) * ndim))[h.name][1:]) >= 2:
        h = net.avg_pool(h, 2, 1, count_include_pad=True)
    net.set_output(h)
    return net, (channels, *(size,) * ndim), rng


@settings(max_examples=25)
@given(small_networks())
def test_numeric_collapse_equals_exact_collapse(case):
    net, shape, _ = case
    exact = collapse(net, shape)
    approx = collapse_numeric(net, shape)
    assert approx.periodic == exact.periodic
    assert np.array_equal(approx.region, exact.region)
    reference = KernelOperator.from_algebra(exact.operator)
    assert reference.allclose(approx.operator, rtol=1e-11, atol=1e-12)


@settings(max_examples=15)
@given(small_networks())
def test_numeric_collapse_equals_torch_on_region(case):
    net, shape, rng = case
    result = collapse_numeric(net, shape)
    x = torch.from_numpy(rng.normal(size=(2, *shape)))
    reference = network_forward(net, x)
    y = result.apply(x)
    if result.periodic:
        assert torch.allclose(y, reference, rtol=1e-9, atol=1e-9)
        return
    region = torch.from_numpy(result.region)
    diff = (y - reference).abs().amax(dim=(0, 1))
    scale = reference.abs().max().item() + 1.0
    assert bool((diff[region] <= 1e-9 * scale).all())
    assert bool((diff[~region] > 1e-9 * scale).all()), "region is not tight"


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_64_channel_residual_network_against_torch(dtype, tol):
    """Real width: stem, a strided conv, a residual block with BN, valid padding: the
    collapsed kernel (64x3) applied once equals the network everywhere."""
    rng = np.random.default_rng(0)
    C = 64
    net = Network(2, 3)
    h = net.conv(net.input, rng.normal(0, 0.3, (C, 3, 3, 3)), rng.normal(size=C))
    h = net.conv(h, rng.normal(0, 0.05, (C, C, 3, 3)), stride=2)
    r = net.conv(h, rng.normal(0, 0.05, (C, C, 1, 1)), rng.normal(size=C))
    r = net.batch_norm(r, rng.normal(size=C), rng.uniform(0.5, 2, C), rng.normal(size=C),
                       rng.normal(size=C))
    net.set_output(h + r)
    shape = (3, 21, 21)
    result = collapse_numeric(net, shape, dtype=dtype)
    assert result.exact_everywhere and not result.periodic
    x = torch.from_numpy(rng.normal(size=(4, *shape)))
    reference = network_forward(net, x)
    y = result.apply(x).double()
    error = (y - reference).abs().max().item() / reference.abs().max().item()
    assert error < tol


def test_numeric_collapse_falls_back_to_polyphase_like_the_exact_side():
    """Transposed convolutions collapse (tests/test_numeric_upsample.py); an up-sampling by
    2 after a stride 2 is not one multi-rate convolution: both twins give the polyphase
    operator (tests/test_numeric_multirate.py)."""
    from laurentnet.numeric import PolyphaseOperator
    net = Network(1, 1)
    net.set_output(net.upsample(net.conv(net.input, np.full((1, 1, 2), 0.5), stride=2), 2))
    approx, exact = collapse_numeric(net, (1, 5)), collapse(net, (1, 5))
    assert approx.polyphase and exact.polyphase
    assert PolyphaseOperator.from_algebra(exact.operator).allclose(approx.operator, 0, 1e-15)


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_64_channel_classifier_affine_map_against_torch_and_exact(mode):
    """A 64-channel classifier (stem, strided conv, residual block, BN, global pooling,
    linear): the VJP affine map equals torch layer by layer on random inputs, and on a small
    variant the exact affine map (index sums over QQ) to float64 round-off."""
    from laurentnet.algebra import collapse_affine
    from laurentnet.numeric.network_collapse import affine_numeric

    def classifier(channels: int, rng: np.random.Generator) -> Network:
        net = Network(2, 1)
        h = net.conv(net.input, rng.normal(0, 0.3, (channels, 1, 3, 3)), rng.normal(size=channels),
                     padding=1, padding_mode=mode)
        h = net.conv(h, rng.normal(0, 0.05, (channels, channels, 3, 3)), stride=2, padding=1,
                     padding_mode=mode)
        r = net.conv(h, rng.normal(0, 0.05, (channels, channels, 3, 3)), padding=1,
                     padding_mode=mode)
        r = net.batch_norm(r, rng.normal(size=channels), rng.uniform(0.5, 2, channels),
                           rng.normal(size=channels), rng.normal(size=channels))
        h = net.flatten(net.global_avg_pool(h + r))
        net.linear(h, rng.normal(size=(10, channels)), rng.normal(size=10))
        return net

    rng = np.random.default_rng(1)
    net = classifier(64, rng)
    affine = affine_numeric(net, (1, 12, 12))
    assert affine.W.shape == (10, 144) and affine.method == "vjp"
    assert affine.input_shape == (1, 12, 12) and affine.output_shape == (10,)
    x = torch.from_numpy(rng.normal(size=(5, 1, 12, 12)))
    reference = network_forward(net, x)
    assert torch.allclose(affine(x), reference, rtol=1e-10, atol=1e-10)

    small = classifier(2, rng)
    exact = collapse_affine(small, (1, 6, 6))
    W, B = exact.to_numpy()
    numeric = affine_numeric(small, (1, 6, 6), method="jvp")
    assert np.allclose(numeric.W.numpy(), W, rtol=1e-12, atol=1e-13)
    assert np.allclose(numeric.B.numpy(), B, rtol=1e-12, atol=1e-13)


def test_numeric_collapse_apply_checks_shapes_and_accepts_one_input():
    net = Network(1, 2)
    net.conv(net.input, np.ones((3, 2, 3)), padding=1)
    result = collapse_numeric(net, (2, 7))
    x = torch.randn(2, 7, dtype=torch.float64)
    assert torch.allclose(result.apply(x), network_forward(net, x[None])[0])
    with pytest.raises(ValueError, match="shape"):
        result.apply(torch.randn(2, 8, dtype=torch.float64))
