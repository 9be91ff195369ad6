"""The fast paths of the numeric collapse (issue 14, "numeric collapse at width").

Every product method of :func:`numeric.polymatmul` (the matrix DFT, ``torch.fft``, the
per-tap products, ``conv``) against the definition as an explicit index sum; the matrix
DFT against ``torch.fft``; the structural zeros kept exactly; the collapsed chain against
the weights composed with ``F.conv2d`` in float64 (itself checked against applying the
layers one after the other); the float32 mode's error bound; the cheap finiteness check of
composed operators.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from laurentnet.algebra import InvalidInputError, Network
from laurentnet.numeric import KernelOperator, collapse_numeric, polymatmul
from laurentnet.numeric.dft_gemm import irdft, rdft, spectral_matmul
from laurentnet.numeric.polymatmul import METHODS, auto_method

PRODUCT_METHODS = [m for m in METHODS if m != "auto"]


def index_sum(outer: np.ndarray, inner: np.ndarray, d: tuple[int, ...]) -> np.ndarray:
    """``C[o, c, t] = sum_m sum_{d a + b = t} outer[o, m, a] inner[m, c, b]``, term by term."""
    k_outer = [(k - 1) * x + 1 for k, x in zip(outer.shape[2:], d)]
    size = [p + q - 1 for p, q in zip(k_outer, inner.shape[2:])]
    out = np.zeros((outer.shape[0], inner.shape[1], *size))
    for a in itertools.product(*(range(k) for k in outer.shape[2:])):
        for b in itertools.product(*(range(k) for k in inner.shape[2:])):
            t = tuple(x * p + q for x, p, q in zip(d, a, b))
            out[(slice(None), slice(None), *t)] += outer[(slice(None), slice(None), *a)] @ \
                inner[(slice(None), slice(None), *b)]
    return out


@st.composite
def factor_pairs(draw, integer: bool = False):
    """Two kernel matrices ``(C_out, C_mid, *k1)``, ``(C_mid, C_in, *k2)`` and a dilation,
    1-3 spatial axes, some entries zeroed (channel pairs and whole taps)."""
    nd = draw(st.integers(1, 3))
    c_out, c_mid, c_in = (draw(st.integers(1, 4)) for _ in range(3))
    k1 = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    k2 = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    d = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    g = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pick = (lambda shape: g.integers(-3, 4, shape).astype(np.float64)) if integer else \
        (lambda shape: g.standard_normal(shape))
    a, b = pick((c_out, c_mid, *k1)), pick((c_mid, c_in, *k2))
    if draw(st.booleans()):  # a structurally zero channel pair and tap
        a[g.integers(c_out), g.integers(c_mid)] = 0
        b[(slice(None), slice(None), *(g.integers(k) for k in k2))] = 0
    return a, b, d


@settings(max_examples=25, deadline=None)
@given(factor_pairs())
def test_every_method_is_the_index_sum(case):
    a, b, d = case
    expected = index_sum(a, b, d)
    scale = max(1.0, float(np.abs(expected).max()))
    for method in PRODUCT_METHODS + ["auto"]:
        got = polymatmul(torch.from_numpy(a), torch.from_numpy(b), d, method=method)
        assert got.shape == expected.shape, method
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-13 * scale,
                                   err_msg=method)


@settings(max_examples=20, deadline=None)
@given(factor_pairs(integer=True))
def test_structural_zeros_stay_exactly_zero(case):
    """With integer weights the index sum is exact.  The promised structural zeros: channel
    pairs ``(o, c)`` with no path ``o - m - c`` of nonzero entries, and positions outside
    ``{d a + b}`` for the taps ``a``, ``b`` used by any entry — every method gives exactly
    0 there."""
    a, b, d = case
    expected = index_sum(a, b, d)
    nd = a.ndim - 2
    spatial_axes = tuple(range(2, a.ndim))
    path = (np.abs(a).sum(spatial_axes) > 0).astype(float) @ \
        (np.abs(b).sum(spatial_axes) > 0).astype(float) > 0
    taps_a = (np.abs(a).sum((0, 1)) > 0).astype(float)[None, None]
    taps_b = (np.abs(b).sum((0, 1)) > 0).astype(float)[None, None]
    reach = index_sum(taps_a, taps_b, d)[0, 0] > 0
    structural = ~(path.reshape(*path.shape, *(1,) * nd) & reach[None, None])
    for method in PRODUCT_METHODS:
        got = polymatmul(torch.from_numpy(a), torch.from_numpy(b), d, method=method).numpy()
        assert np.all(got[structural] == 0), method
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-11, err_msg=method)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_matrix_dft_is_torch_rfftn(nd, seed):
    g = torch.Generator().manual_seed(seed)
    k = tuple(int(x) for x in torch.randint(1, 5, (nd,), generator=g))
    step = tuple(int(x) for x in torch.randint(1, 3, (nd,), generator=g))
    grid = tuple((a - 1) * s + 1 + int(e) for a, s, e in
                 zip(k, step, torch.randint(0, 4, (nd,), generator=g)))
    x = torch.randn(*k, 3, generator=g, dtype=torch.float64)
    placed = torch.zeros(*grid, 3, dtype=torch.float64)
    placed[tuple(slice(0, (a - 1) * s + 1, s) for a, s in zip(k, step))] = x
    spectrum = torch.fft.rfftn(placed, dim=tuple(range(nd))).reshape(-1, 3)
    got = rdft(x, grid, step, with_sum=True)
    torch.testing.assert_close(got[0], spectrum.real, rtol=0, atol=1e-13)
    torch.testing.assert_close(got[1], spectrum.imag, rtol=0, atol=1e-13)
    torch.testing.assert_close(got[2], spectrum.real + spectrum.imag, rtol=0, atol=1e-13)
    torch.testing.assert_close(irdft(got[:2], grid, grid), placed, rtol=0, atol=1e-13)


def test_three_product_complex_matmul():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 3, 5, dtype=torch.complex128, generator=g)
    b = torch.randn(4, 5, 2, dtype=torch.complex128, generator=g)

    def planar(z):
        return torch.stack([z.real, z.imag, z.real + z.imag])
    got = spectral_matmul(planar(a), planar(b))
    torch.testing.assert_close(torch.complex(got[0], got[1]), a @ b)


# -- the chain: collapse_numeric against the weights composed by F.conv2d ---------------------
def compose_conv2d(weights: list[torch.Tensor]) -> torch.Tensor:
    """The weight of ``conv(w_L) ∘ ... ∘ conv(w_1)`` by ``F.conv2d`` (the benchmark's
    baseline, ``benchmarks/peers_numeric.py``)."""
    acc = weights[0]
    for w in weights[1:]:
        acc = F.conv2d(acc.transpose(0, 1), w.flip((2, 3)),
                       padding=tuple(k - 1 for k in w.shape[2:])).transpose(0, 1)
    return acc


def _chain(channels: int, layers: int, seed: int = 0) -> tuple[Network, list[torch.Tensor]]:
    g = np.random.default_rng(seed)
    bound = 1 / math.sqrt(9 * channels)
    ws = [g.uniform(-bound, bound, (channels, channels, 3, 3)) for _ in range(layers)]
    net = Network(2, channels)
    x = net.input
    for w in ws:
        x = net.conv(x, w, padding=1)
    net.set_output(x)
    return net, [torch.from_numpy(w) for w in ws]


def test_conv2d_composition_is_the_layers_in_sequence():
    """The baseline itself: the composed weight applied once ('valid') is the layers applied
    one after the other ('valid'), in float64."""
    _, ws = _chain(5, 4, seed=1)
    x = torch.randn(2, 5, 13, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = x
    for w in ws:
        y = F.conv2d(y, w)
    torch.testing.assert_close(F.conv2d(x, compose_conv2d(ws)), y, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("channels,layers", [(6, 5), (24, 4)])
def test_collapse_is_the_conv2d_composition_to_round_off(channels, layers):
    net, ws = _chain(channels, layers)
    op = collapse_numeric(net, (channels, 16, 16)).operator
    assert op.low == (-layers,) * 2
    reference = compose_conv2d(ws)
    got = op.coeffs.flip((2, 3))  # ascending exponents are the reversed torch weight
    err = float((got - reference).abs().max() / reference.abs().max())
    assert err < 1e-13, err
    torch.testing.assert_close(op.to_weight().weight, reference, rtol=0,
                               atol=1e-13 * float(reference.abs().max()))


def test_float32_mode_error_is_bounded():
    """float32 is a mode with a stated error: relative to the float64 composition, within
    ``n_products * sqrt(terms) * eps32`` (here about 2e-5; measured ~2e-7)."""
    channels, layers = 16, 5
    net, ws = _chain(channels, layers)
    op32 = collapse_numeric(net, (channels, 16, 16), dtype=torch.float32).operator
    assert op32.dtype == torch.float32
    reference = compose_conv2d(ws)
    err = float((op32.coeffs.flip((2, 3)).double() - reference).abs().max() / reference.abs().max())
    bound = (layers - 1) * math.sqrt(9 * channels * 9) * torch.finfo(torch.float32).eps
    assert err < bound, (err, bound)


def test_composed_operators_are_views_that_behave_like_tensors():
    """The product is returned spatial-major, viewed as (C_out, C_in, *k): every operation
    on the operator sees the same coefficients as a contiguous copy."""
    g = torch.Generator().manual_seed(2)
    a = KernelOperator(torch.randn(3, 4, 3, 3, generator=g, dtype=torch.float64), -1)
    b = KernelOperator(torch.randn(4, 2, 5, 5, generator=g, dtype=torch.float64), -2,
                       bias=torch.randn(4, generator=g, dtype=torch.float64))
    c = a @ b
    copy = KernelOperator(c.coeffs.contiguous(), c.low, c.stride, c.bias)
    assert c.allclose(copy, rtol=0, atol=0)
    torch.testing.assert_close(c.to_weight().weight, copy.to_weight().weight, rtol=0, atol=0)
    torch.testing.assert_close(c.adjoint().coeffs, copy.adjoint().coeffs, rtol=0, atol=0)
    torch.testing.assert_close((c + c).coeffs, 2 * copy.coeffs, rtol=0, atol=0)
    # the bias by the definition: K_a(1) b_b
    torch.testing.assert_close(c.bias, a.coeffs.sum((2, 3)) @ b.bias)


def test_a_product_that_overflows_is_refused():
    """Composed operators skip re-validation but not the finiteness check: an overflow to
    inf is an error, not a silent operator."""
    big = KernelOperator(torch.full((2, 2, 1), 1e200, dtype=torch.float64))
    with pytest.raises(InvalidInputError, match="finite|NaN|Inf|inf"):
        big @ big


def test_auto_method_picks_an_existing_method():
    for k_outer, k_inner in (((3, 3), (1, 1)), ((3, 3), (15, 15)), ((3,), (60,))):
        for dtype in (torch.float32, torch.float64):
            assert auto_method(k_outer, k_inner, dtype) in PRODUCT_METHODS
    assert auto_method((3,), (60,), torch.float64) == "fft"  # past DFT_MAX_SIZE


def test_auto_products_stay_differentiable():
    """Under autograd ``'auto'`` avoids the DFT path (it writes into preallocated outputs):
    gradients by finite differences."""
    g = torch.Generator().manual_seed(5)
    a = torch.randn(3, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 2, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    assert auto_method((3, 3), (6, 6), torch.float64) == "dft"
    assert torch.autograd.gradcheck(lambda x, y: polymatmul(x, y), (a, b))


@settings(max_examples=10, deadline=None)
@given(factor_pairs())
def test_every_method_in_float32_is_the_index_sum_to_float32_round_off(case):
    a, b, d = case
    expected = index_sum(a, b, d)
    terms = math.prod(a.shape[1:]) * math.prod(b.shape[2:])
    scale = float(np.abs(a).max() * np.abs(b).max()) * terms
    for method in PRODUCT_METHODS:
        got = polymatmul(torch.from_numpy(a).float(), torch.from_numpy(b).float(), d,
                         method=method)
        assert got.dtype == torch.float32
        np.testing.assert_allclose(got.double().numpy(), expected, rtol=0,
                                   atol=8 * torch.finfo(torch.float32).eps * scale + 1e-30,
                                   err_msg=method)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_support_of_a_product_is_the_minkowski_sum_of_the_tap_sets(data):
    """The structural-support mask, both ways (tap pairs and FFT counts), against the
    explicit set ``{d a + b}``."""
    import importlib
    pm = importlib.import_module("laurentnet.numeric.polymatmul")
    nd = data.draw(st.integers(1, 3))
    ko, ki = (tuple(data.draw(st.integers(1, 5)) for _ in range(nd)) for _ in range(2))
    step = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    seed = data.draw(st.integers(0, 2**16))
    g = np.random.default_rng(seed)
    a, b = torch.from_numpy(g.random(ko) < 0.4), torch.from_numpy(g.random(ki) < 0.4)
    want = np.zeros(tuple((x - 1) * d + y for x, y, d in zip(ko, ki, step)), bool)
    for ia in zip(*np.nonzero(a.numpy())):
        for ib in zip(*np.nonzero(b.numpy())):
            want[tuple(d * x + y for x, y, d in zip(ia, ib, step))] = True
    np.testing.assert_array_equal(pm._minkowski_sum(a, b, step).numpy(), want)
    saved = pm.MINKOWSKI_PAIRS
    try:
        pm.MINKOWSKI_PAIRS = -1  # force the FFT path
        np.testing.assert_array_equal(pm._minkowski_sum(a, b, step).numpy(), want)
    finally:
        pm.MINKOWSKI_PAIRS = saved
