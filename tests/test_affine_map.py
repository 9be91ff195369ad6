"""The single-layer model: every linear network on a fixed input size is ``W x + B``.

``collapse_affine`` is checked against PyTorch evaluating the same random network layer
by layer in float64 (every padding mode, strides, dilation, groups, transposed convs,
up-sampling, pooling both ways, batch norm, skips, concat/split, flatten + linear), and
its exact entries against hand-built Toeplitz matrices in Python ``Fraction`` arithmetic.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from laurentnet.algebra import Network, collapse, collapse_affine
from network_strategies import build_network, linear_networks, random_inputs, torch_forward

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")

TOL = 1e-9
BATCH = 3


def _examples(n: int) -> int:
    """``n`` examples, or more under a thorough hypothesis profile."""
    return max(n, settings.default.max_examples if settings.default.max_examples > 100 else n)


def _check_affine(spec, seed: int, exact_apply: bool = True) -> None:
    amap = collapse_affine(build_network(spec, Network), spec.input_shape)
    x = random_inputs(spec, BATCH, seed)
    expected = torch_forward(spec, x)
    n_in, n_out = int(np.prod(spec.input_shape)), int(np.prod(expected.shape[1:]))
    assert amap.input_shape == tuple(spec.input_shape)
    assert amap.output_shape == tuple(expected.shape[1:])
    assert amap.W.shape == (n_out, n_in) and len(amap.B) == n_out
    W, B = amap.to_numpy()
    got = x.reshape(BATCH, -1) @ W.T + B
    scale = 1.0 + float(np.abs(expected).max())
    err = float(np.abs(got - expected.reshape(BATCH, -1)).max())
    assert err <= TOL * scale, f"W x + B differs from PyTorch by {err:.3e}\n{spec}"
    if exact_apply:
        exact = np.asarray(amap.apply(x[0]), dtype=object).astype(float)
        assert exact.shape == expected.shape[1:]
        err = float(np.abs(exact - expected[0]).max())
        assert err <= TOL * scale, f"exact apply differs from PyTorch by {err:.3e}\n{spec}"


# -- random networks ------------------------------------------------------------------------
@settings(deadline=None, max_examples=_examples(30))
@given(spec=st.booleans().flatmap(
    lambda c: linear_networks(1, classifier=c, collapsible=False, loose=True)),
    seed=st.integers(0, 2**16))
def test_affine_map_1d_matches_torch(spec, seed):
    _check_affine(spec, seed)


@settings(deadline=None, max_examples=_examples(30))
@given(spec=st.booleans().flatmap(
    lambda c: linear_networks(2, classifier=c, collapsible=False, loose=True)),
    seed=st.integers(0, 2**16))
def test_affine_map_2d_matches_torch(spec, seed):
    _check_affine(spec, seed)


@pytest.mark.parametrize("mode", ["zeros", "circular", "reflect", "replicate"])
@settings(deadline=None, max_examples=_examples(8))
@given(data=st.data())
def test_affine_map_every_padding_mode(mode, data):
    """Networks whose every padded conv uses one padding mode, ending in a classifier."""
    ndim = data.draw(st.sampled_from([1, 2]))
    spec = data.draw(linear_networks(ndim, modes=(mode,), classifier=True,
                                     collapsible=False, transpose=False), label="spec")
    _check_affine(spec, data.draw(st.integers(0, 2**16)), exact_apply=False)


# -- a small linear ResNet classifier built from torch.nn modules ------------------------------
class _LinearResNet(nn.Module):
    def __init__(self, mode: str, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1, padding_mode=mode, dtype=torch.float64)
        self.bn = nn.BatchNorm2d(3, dtype=torch.float64)
        self.c1 = nn.Conv2d(3, 3, 3, padding=1, padding_mode=mode, dtype=torch.float64)
        self.c2 = nn.Conv2d(3, 3, 3, padding=1, bias=False, padding_mode=mode,
                            dtype=torch.float64)
        self.down = nn.Conv2d(3, 2, 2, stride=2, dtype=torch.float64)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.fc = nn.Linear(2 * 4 * 4, classes, dtype=torch.float64)

    def forward(self, x):
        h = self.bn(self.stem(x))
        h = h + 0.5 * self.c2(self.c1(h))
        return self.fc(self.pool(self.down(h)).flatten(1))


@pytest.mark.parametrize("mode", ["zeros", "circular", "reflect", "replicate"])
def test_linear_resnet_classifier_is_one_affine_map(mode):
    torch.manual_seed(0)
    model = _LinearResNet(mode).eval()
    with torch.no_grad():
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.normal_()
        model.bn.bias.normal_()
    p = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    net = Network(2, 1)
    h = net.conv(net.input, p["stem.weight"], p["stem.bias"], padding=1, padding_mode=mode)
    h = net.batch_norm(h, p["bn.running_mean"], p["bn.running_var"], p["bn.weight"],
                       p["bn.bias"], eps=model.bn.eps)
    r = net.conv(h, p["c1.weight"], p["c1.bias"], padding=1, padding_mode=mode)
    r = net.conv(r, p["c2.weight"], padding=1, padding_mode=mode)
    h = net.add(h, r, coefficients=[1, 0.5])
    h = net.conv(h, p["down.weight"], p["down.bias"], stride=2)
    h = net.avg_pool(h, 3, stride=1, padding=1, count_include_pad=False)
    net.set_output(net.linear(net.flatten(h), p["fc.weight"], p["fc.bias"]))
    amap = collapse_affine(net, (1, 8, 8))
    assert amap.W.shape == (10, 64) and amap.output_shape == (10,)
    W, B = amap.to_numpy()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(x.reshape(5, -1).numpy() @ W.T + B, expected,
                               rtol=1e-10, atol=1e-10)


# -- multirate: the operator collapse is polyphase, the affine map is exact everywhere -------
def test_upsampling_after_a_stride_and_bias_before_upsampling():
    rng = np.random.default_rng(1)
    w1, b1, w2 = rng.normal(size=(2, 1, 3)), rng.normal(size=2), rng.normal(size=(1, 2, 2))
    net = Network(1, 1)
    h = net.conv(net.input, w1, b1, stride=2)         # 9 -> 4, biased
    h = net.upsample(h, 2)                            # 4 -> 7 (zeros inserted)
    net.set_output(net.conv(h, w2, padding=1, padding_mode="reflect"))
    collapsed = collapse(net, (1, 9))   # gcd(2, 2) != 1 and a bias before zero insertion
    amap = collapse_affine(net, (1, 9))
    x = rng.normal(size=(4, 1, 9))
    t = F.conv1d(torch.from_numpy(x), torch.from_numpy(w1), torch.from_numpy(b1), stride=2)
    up = torch.zeros(4, 2, 7, dtype=torch.float64)
    up[..., ::2] = t
    expected = F.conv1d(F.pad(up, (1, 1), mode="reflect"), torch.from_numpy(w2)).numpy()
    W, B = amap.to_numpy()
    np.testing.assert_allclose((x.reshape(4, -1) @ W.T + B).reshape(expected.shape), expected,
                               rtol=1e-10, atol=1e-10)
    assert collapsed.polyphase is not None and "phases" in collapsed.describe()
    got = np.stack([np.array(collapsed.apply(xi), dtype=np.float64) for xi in x])
    region = collapsed.region
    np.testing.assert_allclose(got[..., region], expected[..., region], rtol=1e-10, atol=1e-10)


def test_branches_with_different_strides_then_scale_and_upsample():
    """An add of a stride-2 branch and a stride-1 branch whose sizes agree only for this
    input size (6 -> 3 both), followed by a scalar multiple and an up-sampling.  This is a
    valid network for inputs of size 6; building it must not depend on other sizes."""
    w1, w2 = np.array([[[0.5]]]), np.array([[[0.5, 0.25, 1.0, -1.0]]])
    net = Network(1, 1)
    a = net.conv(net.input, w1, stride=2)   # 6 -> 3
    b = net.conv(net.input, w2)             # 6 -> 3
    h = net.add(a, b)
    h = 0.75 * h                            # Value * scalar asks for the channel count
    net.set_output(net.upsample(h, 2))      # so does upsample
    amap = collapse_affine(net, (1, 6))
    x = np.random.default_rng(2).normal(size=(2, 1, 6))
    t = torch.from_numpy(x)
    s = 0.75 * (F.conv1d(t, torch.from_numpy(w1), stride=2) + F.conv1d(t, torch.from_numpy(w2)))
    expected = torch.zeros(2, 1, 5, dtype=torch.float64)
    expected[..., ::2] = s
    W, B = amap.to_numpy()
    np.testing.assert_allclose(x.reshape(2, -1) @ W.T + B, expected.reshape(2, -1).numpy(),
                               atol=1e-12)


def test_scaling_a_linear_output():
    """``0.5 * logits`` after flatten + linear (a flat value has channels too)."""
    w = np.arange(12.0).reshape(2, 6) / 7
    net = Network(1, 1)
    y = net.linear(net.flatten(net.input), w, np.array([1.0, -1.0]))
    net.set_output(0.5 * y)
    amap = collapse_affine(net, (1, 6))
    x = np.random.default_rng(3).normal(size=6)
    W, B = amap.to_numpy()
    np.testing.assert_allclose(W @ x + B, 0.5 * (w @ x + np.array([1.0, -1.0])), atol=1e-12)


# -- exactness: entries are exact rationals, not floats --------------------------------------
def _frac(v) -> Fraction:
    return Fraction(int(v.p), int(v.q)) if hasattr(v, "p") else Fraction(v)


def _toeplitz_valid(w: list[Fraction], n: int) -> list[list[Fraction]]:
    k = len(w)
    return [[w[j - i] if 0 <= j - i < k else Fraction(0) for j in range(n)]
            for i in range(n - k + 1)]


def _matmul(a, b):
    return [[sum((a[i][k] * b[k][j] for k in range(len(b))), Fraction(0))
             for j in range(len(b[0]))] for i in range(len(a))]


def test_affine_entries_are_exact_products_of_the_float_weights():
    """Two valid 1-D convs with float weights (0.1 is not 1/10): W is the exact product of
    the two Toeplitz matrices of the binary float values, B the exact propagated bias."""
    w1, w2 = [0.1, -0.3, 0.7], [1 / 3, 0.2]
    b1, b2 = 0.1, -1 / 7
    net = Network(1, 1)
    h = net.conv(net.input, np.array([[w1]]), np.array([b1]))
    net.set_output(net.conv(h, np.array([[w2]]), np.array([b2])))
    amap = collapse_affine(net, (1, 8))
    T1 = _toeplitz_valid([Fraction(v) for v in w1], 8)   # 6 x 8
    T2 = _toeplitz_valid([Fraction(v) for v in w2], 6)   # 5 x 6
    expected_W = _matmul(T2, T1)
    expected_B = Fraction(b1) * sum(Fraction(v) for v in w2) + Fraction(b2)
    got = amap.W.to_Matrix()
    assert got.shape == (5, 8)
    for i in range(5):
        for j in range(8):
            assert _frac(got[i, j]) == expected_W[i][j], (i, j)
    assert all(_frac(amap.domain.to_sympy(b)) == expected_B for b in amap.B)
    # W is sparse: a 5 x 8 band of width 4
    assert amap.nnz() == 5 * 4


def test_zero_padding_border_bias_is_exact():
    """A zero-padded second layer drops the first layer's bias on its border taps:
    ``B`` must differ at the ends (exactly ``b1 * (sum w2 - dropped taps) + b2``)."""
    w2 = [0.25, -0.5, 1.0]
    b1, b2 = 0.5, 0.125
    net = Network(1, 1)
    h = net.conv(net.input, np.array([[[0.75]]]), np.array([b1]))
    net.set_output(net.conv(h, np.array([[w2]]), np.array([b2]), padding=1))
    amap = collapse_affine(net, (1, 5))
    B = [_frac(amap.domain.to_sympy(b)) for b in amap.B]
    full = Fraction(b1) * sum(map(Fraction, w2)) + Fraction(b2)
    assert B[1:4] == [full] * 3
    assert B[0] == full - Fraction(b1) * Fraction(w2[0])
    assert B[4] == full - Fraction(b1) * Fraction(w2[2])
