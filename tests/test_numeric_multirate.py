"""The float polyphase operator (``numeric/polyphase.py``) against its exact twin
(``algebra/polyphase.py``), PyTorch layer by layer, and explicit polyphase index sums; and
``collapse_numeric``'s multirate fallback against ``algebra.collapse``.

Every check compares with an independent computation: the exact twin's operators over
``QQ`` (weights are small dyadic rationals, so the float side's only error is FFT
round-off), ``torch.nn.functional`` layers in float64, or the definition
``y[m Q + t] = sum x[k P + r] ...`` evaluated by loops.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from laurentnet.algebra import ConvOperator, Network, collapse
from laurentnet.algebra.polyphase import PolyphaseOperator as ExactPolyphase
from laurentnet.algebra.polyphase import is_polyphase
from laurentnet.algebra.polyphase import polyphase_vstack as exact_vstack
from laurentnet.numeric import KernelOperator, PolyphaseOperator, collapse_numeric, polyphase_vstack
from network_strategies import build_network, random_inputs, torch_forward
from test_numeric_upsample import _dyadic, multirate_networks

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")

PROPERTY = settings(deadline=None, max_examples=20)


@st.composite
def strided_pairs(draw):
    """A strided conv and a transposed conv (exact and float twins, dyadic weights), 1-D
    or 2-D, whose composition in either order has ``gcd(u, s)`` of any value."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ndim = draw(st.sampled_from([1, 2]))
    c = draw(st.integers(1, 2))
    s = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    u = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    k1 = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    k2 = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    w1, w2 = _dyadic(rng, c, c, *k1), _dyadic(rng, c, c, *k2)
    b1 = _dyadic(rng, c) if draw(st.booleans()) else None
    b2 = _dyadic(rng, c) if draw(st.booleans()) else None
    p1 = tuple(draw(st.integers(0, k - 1)) for k in k1)
    conv = (ConvOperator.from_weight(w1, b1, stride=s, padding=p1),
            KernelOperator.from_weight(w1, b1, stride=s, padding=p1))
    up = (ConvOperator.from_weight(w2, b2, stride=u, transposed=True),
          KernelOperator.from_weight(w2, b2, stride=u, transposed=True))
    multiple = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    return conv, up, multiple, rng


def _twin(exact: ExactPolyphase, approx: PolyphaseOperator, tol: float = 1e-12) -> None:
    assert approx.in_period == exact.in_period and approx.out_period == exact.out_period
    assert approx.shape == exact.shape
    assert PolyphaseOperator.from_algebra(exact).block.allclose(approx.block, rtol=0, atol=tol)


@PROPERTY
@given(case=strided_pairs())
def test_polyphase_arithmetic_is_the_exact_twins(case):
    """from_conv, reblock, composition at the middle period (any gcd, biases before
    up-sampling), sums and stacks at a common period, minimal and to_conv: the float
    results are the exact ones rounded (to FFT round-off)."""
    (conv_e, conv_f), (up_e, up_f), m, _ = case
    for e, f in ((conv_e, conv_f), (up_e, up_f)):
        _twin(ExactPolyphase.from_conv(e, m), PolyphaseOperator.from_conv(f, m), 0)
        _twin(ExactPolyphase.from_conv(e).reblock(m), PolyphaseOperator.from_conv(f).reblock(m), 0)
    for outer, inner in (((up_e, up_f), (conv_e, conv_f)), ((conv_e, conv_f), (up_e, up_f))):
        exact = ExactPolyphase.from_conv(outer[0]) @ ExactPolyphase.from_conv(inner[0])
        approx = PolyphaseOperator.from_conv(outer[1]) @ inner[1]   # a KernelOperator operand too
        _twin(exact, approx)
        np.testing.assert_array_equal(exact.bias_classes(), approx.bias_classes())
        np.testing.assert_array_equal(exact.bias_mask(), approx.bias_mask())
        small_e, small_f = exact.minimal(), approx.minimal()
        _twin(small_e, small_f)
        single_e, single_f = small_e.to_conv(), small_f.to_conv()
        assert (single_e is None) == (single_f is None)
        if single_e is not None:
            assert KernelOperator.from_algebra(single_e).allclose(single_f, rtol=0, atol=1e-12)
            assert (single_f.stride, single_f.upsample) == (single_e.stride, single_e.upsample)
        # sums of branches of equal rate P/Q, stacks, scaling, channel selection
        doubled_e, doubled_f = exact.reblock(2), approx.reblock(2)
        _twin(exact + doubled_e * 3, approx + doubled_f * 3)
        _twin(-exact - doubled_e, -approx - doubled_f)
        _twin(exact_vstack([exact, doubled_e]), polyphase_vstack([approx, doubled_f]))
        _twin(exact[0], approx[0])
        _twin(exact.columns([0]), approx.columns([0]))
        assert approx.to_algebra().reblock(1) == PolyphaseOperator.from_algebra(exact).to_algebra()


def _phase_sum(x: np.ndarray, H: np.ndarray, low, b: np.ndarray, P, Q, out) -> np.ndarray:
    """The definition, by loops: ``y_o[m Q + t] = b_{o,t} + sum_{c, r, k, n}
    H[(o,t),(c,r), n] x_c[k P + r]`` over ``m = k + low + n`` (1-D)."""
    c_in, size = x.shape
    c_out = H.shape[0] // Q
    y = np.zeros((c_out, out))
    for o in range(c_out):
        for i in range(out):
            m, t = divmod(i, Q)
            acc = b[o * Q + t]
            for c in range(c_in):
                for r in range(P):
                    for j in range(H.shape[2]):
                        k = m - low - j
                        if 0 <= k * P + r < size and k >= 0:
                            acc += H[o * Q + t, c * P + r, j] * x[c, k * P + r]
            y[o, i] = acc
    return y


@settings(deadline=None, max_examples=15)
@given(seed=st.integers(0, 2**32 - 1), s=st.integers(1, 3), u=st.integers(2, 3),
       n=st.integers(3, 9))
def test_apply_is_the_polyphase_definition_and_torch(seed, s, u, n):
    """``conv_transpose(conv(x, stride s), stride u)`` in torch (no single kernel when
    ``gcd(s, u) > 1``, a bias before the up-sampling): the polyphase operator's ``apply``
    equals torch on the whole window and the polyphase sum by loops."""
    rng = np.random.default_rng(seed)
    w1, b1, w2 = _dyadic(rng, 2, 1, 3), _dyadic(rng, 2), _dyadic(rng, 2, 1, 2)
    x = rng.standard_normal((1, 1, n))
    h = F.conv1d(torch.from_numpy(x), torch.from_numpy(w1), torch.from_numpy(b1), stride=s, padding=2)
    expected = F.conv_transpose1d(h, torch.from_numpy(w2), stride=u)
    op = (PolyphaseOperator.from_conv(KernelOperator.from_weight(w2, stride=u, transposed=True))
          @ KernelOperator.from_weight(w1, b1, stride=s, padding=2)).minimal()
    # the zero-extended signal holds b1 outside conv's window: compare where torch's
    # intermediate window covers every tap, and the loops everywhere
    out = expected.shape[-1]
    got = op.apply(torch.from_numpy(x), (out,))
    H, b = op.block.coeffs.numpy(), op.bias.numpy()
    loops = _phase_sum(x[0], H, op.block.low[0], b, op.in_period[0], op.out_period[0], out)
    np.testing.assert_allclose(got[0].numpy(), loops, rtol=0, atol=1e-12)
    inside = [j for j in range(out) if all(0 <= (j - a) // u < h.shape[-1]
                                           for a in range(2) if (j - a) % u == 0)]
    np.testing.assert_allclose(got[0, :, inside].numpy(), expected[0, :, inside].numpy(),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(op.apply(torch.from_numpy(x[0]), (out,)), got[0])  # one input


def test_export_is_pixel_unshuffle_conv_pixel_shuffle():
    """``to_weights``: torch's ``pixel_unshuffle``, the block's stride-1 conv and
    ``pixel_shuffle`` give ``apply`` (2-D, equal factors as torch needs)."""
    rng = np.random.default_rng(2)
    down = KernelOperator.from_weight(_dyadic(rng, 2, 2, 3, 3), _dyadic(rng, 2), stride=2, padding=1)
    up = KernelOperator.from_weight(_dyadic(rng, 2, 3, 2, 2), stride=2, transposed=True)
    op = (PolyphaseOperator.from_conv(up) @ down).minimal()
    assert op.to_conv() is None and op.in_period == op.out_period == (2, 2)
    layout = op.to_weights()
    x = torch.from_numpy(rng.standard_normal((2, 2, 8, 8)))
    z = F.conv2d(F.pixel_unshuffle(x, 2), layout.conv.weight, layout.conv.bias,
                 padding=layout.conv.padding)
    y = F.pixel_shuffle(z, 2)
    window = y.shape[2:]
    torch.testing.assert_close(op.apply(x, window)[..., :window[0], :window[1]], y)
    assert "polyphase" in op.describe() and "4 phases" in op.describe()


def test_nearest_up_sampling_after_a_bias_is_one_kernel_again():
    """A bias before ``up_2`` followed by the box ``1 + z`` is constant over the phases:
    both twins find the single operator ``(1 + z) up_2`` with that bias."""
    bias_conv = KernelOperator.from_weight(np.ones((1, 1, 1)), [0.75])
    box = KernelOperator.from_weight(np.ones((1, 1, 2)), stride=2, transposed=True)
    op = (PolyphaseOperator.from_conv(box) @ bias_conv).minimal()
    single = op.to_conv()
    exact = (ExactPolyphase.from_conv(ConvOperator.from_weight(np.ones((1, 1, 2)), stride=2,
                                                               transposed=True))
             @ ConvOperator.from_weight(np.ones((1, 1, 1)), [0.75])).minimal().to_conv()
    assert single is not None and exact is not None
    assert KernelOperator.from_algebra(exact).allclose(single, rtol=0, atol=0)
    assert single.upsample == (2,) and float(single.bias[0]) == 0.75


@pytest.mark.parametrize("scale", [1e-12, 1.0, 1e12])
def test_equality_decisions_are_relative_to_the_operator(scale):
    """``minimal``/``to_conv`` decide to round-off *relative* to the largest coefficient:
    the same operators scaled by 1e-12 or 1e12 get the same answers as the exact side."""
    box = KernelOperator.from_weight(np.ones((1, 1, 2)), stride=2, transposed=True) * scale
    bias_conv = KernelOperator.from_weight(np.ones((1, 1, 1)), [0.75 * scale])
    assert (PolyphaseOperator.from_conv(box) @ bias_conv).minimal().to_conv() is not None
    down = KernelOperator.from_weight(np.array([[[1.0, 2.0]]]) * scale, stride=2)
    up = KernelOperator.from_weight(np.array([[[1.0, -1.0]]]), stride=2, transposed=True)
    op = (PolyphaseOperator.from_conv(up) @ down).minimal()
    exact = (ExactPolyphase.from_conv(up.to_algebra()) @ ExactPolyphase.from_conv(
        down.to_algebra())).minimal()
    assert op.in_period == exact.in_period and (op.to_conv() is None) == (exact.to_conv() is None)


def test_bad_input_is_refused_clearly():
    op = PolyphaseOperator.from_conv(KernelOperator.from_weight(np.ones((1, 1, 2)), stride=2))
    with pytest.raises(TypeError, match="KernelOperator"):
        PolyphaseOperator(ConvOperator.from_weight(np.ones((1, 1, 2))), 1, 1)
    with pytest.raises(ValueError, match="stride-1"):
        PolyphaseOperator(KernelOperator.from_weight(np.ones((1, 1, 2)), stride=2), 1, 1)
    with pytest.raises(ValueError, match="phases"):
        PolyphaseOperator(KernelOperator.from_weight(np.ones((3, 1, 2))), 1, 2)
    with pytest.raises(ValueError, match="different rates"):
        op + PolyphaseOperator.from_conv(KernelOperator.from_weight(np.ones((1, 1, 2))))
    with pytest.raises(ValueError, match="cannot compose"):
        op @ PolyphaseOperator.identity(2, 1)
    with pytest.raises(ValueError, match="out_shape"):
        op.apply(torch.ones(1, 1, 4), 0)
    with pytest.raises(ValueError, match="shape"):
        op.apply(torch.ones(1, 2, 4), 3)
    with pytest.raises(AttributeError, match="immutable"):
        op.block = None


# -- collapse_numeric's fallback -----------------------------------------------------------
def _check(spec, seed):
    net = build_network(spec, Network)
    exact = collapse(net, spec.input_shape, tight=False)
    result = collapse_numeric(net, spec.input_shape, tight=False)
    assert result.polyphase == exact.polyphase
    assert np.array_equal(result.region, exact.region)
    if exact.polyphase:
        _twin(exact.operator, result.operator, 1e-11)
    else:
        assert KernelOperator.from_algebra(exact.operator).allclose(result.operator, rtol=1e-11,
                                                                    atol=1e-12)
    x = random_inputs(spec, 2, seed)
    expected = torch_forward(spec, x)
    got = result.apply(torch.from_numpy(x)).numpy()
    err = np.abs(got - expected).max(axis=(0, 1))
    assert (err[result.region] <= 1e-10 * (1 + np.abs(expected).max())).all(), (err, spec)
    return result


@settings(deadline=None, max_examples=30)
@given(spec=st.sampled_from([1, 2]).flatmap(lambda d: multirate_networks(d, multirate=True)),
       seed=st.integers(0, 2**16))
def test_multirate_networks_collapse_like_the_exact_side(spec, seed):
    """Networks with up-sampling after any stride, biases before up-sampling and skips
    around down/up pairs: the float collapse is polyphase exactly when the exact one is,
    the same operator to round-off, the same region, and equal to torch on it."""
    _check(spec, seed)


def test_down_then_up_by_the_same_factor_is_polyphase_at_real_width():
    """64 channels: stride-2 conv, a stride-2 transposed conv (gcd 2), a skip around both:
    no single kernel; the 4-phase operator equals torch on its region."""
    rng = np.random.default_rng(0)
    C = 64
    net = Network(2, C)
    h = net.conv(net.input, rng.normal(0, 0.05, (C, C, 3, 3)), rng.normal(size=C), stride=2, padding=1)
    h = net.conv_transpose(h, rng.normal(0, 0.05, (C, C, 2, 2)), stride=2)
    net.set_output(net.input + h)
    result = collapse_numeric(net, (C, 12, 12), tight=False)
    assert result.polyphase and result.operator.in_period == (2, 2)
    assert result.region.mean() > 0.5
    from laurentnet.numeric.network_torch import network_forward
    x = torch.from_numpy(rng.normal(size=(2, C, 12, 12)))
    reference = network_forward(net, x)
    y = result.apply(x)
    region = torch.from_numpy(result.region)
    error = (y - reference).abs().amax(dim=(0, 1))[region].max().item()
    assert error / reference.abs().max().item() < 1e-10
    assert is_polyphase(result.operator)
