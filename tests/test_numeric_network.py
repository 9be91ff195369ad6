"""numeric.collapse_numeric against algebra.collapse (small) and torch (64 channels)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings, strategies as st

from algebra import Network, collapse
from numeric.kernels import KernelOperator
from numeric.network_collapse import collapse_numeric
from numeric.network_torch import network_forward


def apply_zero_extended(op: KernelOperator, x: torch.Tensor, out_size: tuple[int, ...]) -> torch.Tensor:
    """``y[i] = b + sum_e K[e] x[s i - e]`` with x zero outside its window, written with
    one padded F.conv: left pad = highest exponent, right pad as far as the taps reach."""
    weight = op.coeffs.flip(list(range(2, op.coeffs.ndim)))  # descending exponents = torch order
    high = [l + k - 1 for l, k in zip(op.low, op.coeffs.shape[2:])]
    pads: list[int] = []
    crop = []
    for axis in reversed(range(op.ndim)):
        n, s, L = x.shape[2 + axis], op.stride[axis], out_size[axis]
        left = max(high[axis], 0)
        start = left - high[axis]  # taps begin at s*i - high; shift when high < 0
        right = max(0, s * (L - 1) - op.low[axis] - (n - 1))
        pads += [left, right]
        crop.append((start, L))
    padded = F.pad(x, pads)
    for axis, (start, _) in zip(reversed(range(op.ndim)), crop):
        padded = padded.narrow(2 + axis, start, padded.shape[2 + axis] - start)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[op.ndim]
    y = conv(padded, weight, op.bias, stride=op.stride)
    window = tuple(slice(0, L) for L in out_size)
    return y[(slice(None), slice(None), *window)]


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
    if result.periodic:
        op, size = result.operator, shape[1:]
        folded = torch.zeros((*op.shape, *size), dtype=op.coeffs.dtype)  # exponents 0..n-1
        for index in np.ndindex(*op.coeffs.shape[2:]):
            target = tuple((l + t) % n for l, t, n in zip(op.low, index, size))
            folded[(slice(None), slice(None), *target)] += op.coeffs[(slice(None), slice(None), *index)]
        pads = []
        for n in reversed(size):
            pads += [n - 1, 0]  # y[i] = sum_t folded[t] x[(s i - t) mod n]
        conv = {1: F.conv1d, 2: F.conv2d}[len(size)]
        weight = folded.flip(list(range(2, folded.ndim)))
        y = conv(F.pad(x, pads, mode="circular"), weight, op.bias, stride=op.stride)
        window = tuple(slice(0, n // s) for n, s in zip(size, op.stride))
        y = y[(slice(None), slice(None), *window)]
        assert torch.allclose(y, reference, rtol=1e-9, atol=1e-9)
        return
    y = apply_zero_extended(result.operator, x, reference.shape[2:])
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
    y = apply_zero_extended(result.operator, x.to(dtype), reference.shape[2:]).double()
    error = (y - reference).abs().max().item() / reference.abs().max().item()
    assert error < tol


def test_numeric_collapse_refuses_transposed_convolution():
    net = Network(1, 1)
    net.upsample(net.input, 2)
    with pytest.raises(ValueError, match="transposed"):
        collapse_numeric(net, (1, 5))


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_64_channel_classifier_affine_map_against_torch_and_exact(mode):
    """A 64-channel classifier (stem, strided conv, residual block, BN, global pooling,
    linear): the VJP affine map equals torch layer by layer on random inputs, and on a small
    variant the exact affine map (index sums over QQ) to float64 round-off."""
    from algebra import collapse_affine
    from numeric.network_collapse import affine_numeric

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
