"""The collapse theorem on random linear networks, against PyTorch layer by layer.

For every generated network (see ``tests/network_strategies.py``) the same program is
built with :class:`algebra.Network` and evaluated with ``torch.nn.functional`` in float64.
``collapse(net, shape)`` must

* equal the layer-by-layer network on ``region`` (exact arithmetic, compared after one
  rounding to float64), and
* be *tight*: for the generic (random float) weights used here, the collapsed value
  differs from the network at every output position outside ``region`` (round-off is
  ~1e-14, a real difference ~1e-2, so a 1e-9 threshold separates them cleanly).

Periodic (all-circular, size-keeping) networks must be detected and exact everywhere.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from laurentnet.algebra import Network, collapse, collapse_affine
from network_strategies import (build_network, linear_networks, periodic_networks,
                                random_inputs, torch_forward)

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")

TOL = 1e-9


def _examples(n: int) -> int:
    """``n`` examples, or more under a thorough hypothesis profile."""
    return max(n, settings.default.max_examples if settings.default.max_examples > 100 else n)


PROPERTY = settings(deadline=None, max_examples=_examples(40))


def _floats(y) -> np.ndarray:
    return np.asarray(y, dtype=object).astype(float)


def _position_errors(got: np.ndarray, expected: np.ndarray) -> tuple[np.ndarray, float]:
    """Max abs error over channels at each output position, and the tolerance scale."""
    assert got.shape == expected.shape, (got.shape, expected.shape)
    err = np.abs(got - expected).reshape(got.shape[0], -1).max(axis=0).reshape(got.shape[1:])
    return err, TOL * (1.0 + float(np.abs(expected).max(initial=0.0)))


def check_region(spec, result, x: np.ndarray, tight: bool = True) -> None:
    """Exact on the region, different everywhere outside it (tight)."""
    expected = torch_forward(spec, x[None])[0]
    assert result.output_shape == expected.shape
    assert result.region.shape == expected.shape[1:]
    assert result.region.dtype == bool
    got = _floats(result.apply(x))
    err, tol = _position_errors(got, expected)
    wrong = np.argwhere(result.region & (err > tol))
    assert wrong.size == 0, (
        f"collapsed value differs from the network inside the claimed region at positions "
        f"{wrong.tolist()} (errors {err[result.region & (err > tol)]})\n{result}\n{spec}")
    loose = np.argwhere(~result.region & (err <= tol))
    assert loose.size == 0 or not tight, (
        f"region is not tight: outside it the collapsed value still equals the network at "
        f"positions {loose.tolist()}\nregion=\n{result.region.astype(int)}\n{result}\n{spec}")


# -- random networks: exact on the region, tight outside it ----------------------------------
@PROPERTY
@given(spec=linear_networks(1), periodic=st.sampled_from([None, False]),
       seed=st.integers(0, 2**16))
def test_collapse_1d_exact_on_region_and_tight(spec, periodic, seed):
    result = collapse(build_network(spec, Network), spec.input_shape, periodic=periodic)
    check_region(spec, result, random_inputs(spec, 1, seed)[0])


@PROPERTY
@given(spec=linear_networks(2), periodic=st.sampled_from([None, False]),
       seed=st.integers(0, 2**16))
def test_collapse_2d_exact_on_region_and_tight(spec, periodic, seed):
    result = collapse(build_network(spec, Network), spec.input_shape, periodic=periodic)
    check_region(spec, result, random_inputs(spec, 1, seed)[0])


@settings(deadline=None, max_examples=_examples(20))
@given(spec=st.sampled_from([1, 2]).flatmap(
    lambda d: linear_networks(d, loose=True)), periodic=st.sampled_from([None, False]),
       seed=st.integers(0, 2**16))
def test_collapse_exact_on_region_with_splits_and_copied_constants(spec, periodic, seed):
    """Networks that also keep single parts of a split and pad values holding constants
    (see the dedicated tightness tests below): the region is correct and tight (per-channel
    extents; copied or averaged constants recognised)."""
    result = collapse(build_network(spec, Network), spec.input_shape, periodic=periodic)
    if result.periodic:
        return
    check_region(spec, result, random_inputs(spec, 1, seed)[0])


@settings(deadline=None, max_examples=_examples(20))
@given(spec=st.sampled_from([1, 2]).flatmap(
    lambda d: linear_networks(d, modes=("zeros",), transpose=True)),
    seed=st.integers(0, 2**16))
def test_collapse_zero_padding_only(spec, seed):
    """Zero padding (and valid): the region is where biases and the kernel's reach past
    the borders have not been cut off; biases near zero-padded borders make it smaller."""
    result = collapse(build_network(spec, Network), spec.input_shape)
    assert not result.periodic
    check_region(spec, result, random_inputs(spec, 1, seed)[0])


# -- periodic networks ------------------------------------------------------------------------
@settings(deadline=None, max_examples=_examples(20))
@given(spec=st.sampled_from([1, 2]).flatmap(lambda d: periodic_networks(d)),
       seed=st.integers(0, 2**16))
def test_circular_size_keeping_networks_are_periodic_and_exact_everywhere(spec, seed):
    net = build_network(spec, Network)
    x = random_inputs(spec, 1, seed)[0]
    expected = torch_forward(spec, x[None])[0]
    for periodic in (None, True):
        result = collapse(net, spec.input_shape, periodic=periodic)
        assert result.periodic, f"not detected as periodic:\n{spec}"
        assert result.exact_everywhere and result.region.all()
        assert result.output_shape == expected.shape
        err, tol = _position_errors(_floats(result.apply(x)), expected)
        assert err.max() <= tol, f"max error {err.max():.3e}\n{spec}"
    # the same network read with zero-extended semantics: correct on its region, and tight
    check_region(spec, collapse(net, spec.input_shape, periodic=False), x)


def _circ(net, x, c_in, c_out, k, rng, **kw):
    w = rng.uniform(0.3, 1.0, size=(c_out, c_in, k)) * rng.choice([-1, 1], (c_out, c_in, k))
    return net.conv(x, w, rng.normal(size=c_out), padding_mode="circular", **kw)


def test_circular_with_stride_not_dividing_the_size_is_not_periodic():
    rng = np.random.default_rng(0)
    net = Network(1, 1)
    h = _circ(net, net.input, 1, 2, 3, rng, padding=1, stride=2)
    net.set_output(_circ(net, h, 2, 1, 3, rng, padding=1))
    for n in (7, 9):  # stride 2 does not divide 7 or 9
        result = collapse(net, (1, n))
        assert not result.periodic
        with pytest.raises(ValueError):
            collapse(net, (1, n), periodic=True)
    result = collapse(net, (1, 8))
    assert result.periodic and result.exact_everywhere


def test_circular_next_to_zero_padding_is_not_periodic_and_region_is_honest():
    rng = np.random.default_rng(1)
    net = Network(1, 1)
    h = _circ(net, net.input, 1, 2, 3, rng, padding=1)
    w = rng.uniform(0.3, 1.0, size=(1, 2, 3))
    net.set_output(net.conv(h, w, padding=1))  # zeros
    result = collapse(net, (1, 8))
    assert not result.periodic
    # the circular first layer wraps around at its ends (0 and 7); the zero-padded second
    # layer reads those and, the first layer being biased, its own padding
    np.testing.assert_array_equal(result.region, [0, 0, 1, 1, 1, 1, 0, 0])


# -- small deterministic cases with a known region -----------------------------------------
def test_two_zero_padded_3x3_convs_lose_a_one_pixel_border():
    """docs/conventions.md: two 3x3 zero-padded convs differ from their 5x5 product on a 1-pixel
    border."""
    rng = np.random.default_rng(2)
    net = Network(2, 1)
    h = net.conv(net.input, rng.uniform(0.3, 1, (2, 1, 3, 3)), padding=1)
    net.set_output(net.conv(h, rng.uniform(0.3, 1, (1, 2, 3, 3)), padding=1))
    result = collapse(net, (1, 7, 6))
    expected = np.zeros((7, 6), bool)
    expected[1:-1, 1:-1] = True
    np.testing.assert_array_equal(result.region, expected)
    assert result.operator.kernel_size == (5, 5)


def test_bias_near_zero_padded_border_shrinks_the_region():
    """A first layer without padding is exact everywhere; its bias makes the zero padding
    of the second layer disagree with the collapsed (bias everywhere) signal."""
    net = Network(1, 1)
    h = net.conv(net.input, np.array([[[0.75]]]), np.array([0.5]))
    net.set_output(net.conv(h, np.array([[[0.25, -0.5, 1.0]]]), padding=1))
    result = collapse(net, (1, 6))
    np.testing.assert_array_equal(result.region, [False, True, True, True, True, False])
    # same network without the bias: exact everywhere
    net2 = Network(1, 1)
    h2 = net2.conv(net2.input, np.array([[[0.75]]]))
    net2.set_output(net2.conv(h2, np.array([[[0.25, -0.5, 1.0]]]), padding=1))
    assert collapse(net2, (1, 6)).exact_everywhere


def test_valid_padding_networks_are_exact_everywhere():
    rng = np.random.default_rng(3)
    net = Network(2, 2)
    h = net.conv(net.input, rng.normal(size=(3, 2, 3, 2)), rng.normal(size=3), stride=(2, 1))
    h = net.batch_norm(h, rng.normal(size=3), rng.uniform(0.5, 2, 3), rng.normal(size=3),
                       rng.normal(size=3))
    h = net.avg_pool(h, 2, stride=1)
    net.set_output(net.conv(h, rng.normal(size=(2, 3, 2, 2)), padding="valid", dilation=(1, 2)))
    result = collapse(net, (2, 11, 10))
    assert result.exact_everywhere


def test_split_of_an_exact_channel_is_exact():
    """The region is claimed tight; channels split off from a concatenation carry only
    their own exactness.  Here the split-off part *is the input*, exact everywhere, while
    the other concatenated part (two zero-padded convs) is inexact on the border."""
    w = np.array([[[0.5, -0.7, 0.9]]])
    net = Network(1, 1)
    h = net.conv(net.conv(net.input, w, padding=1), w, padding=1)
    _, part = net.split(net.concat(h, net.input), [1, 1])
    net.set_output(part)
    result = collapse(net, (1, 8))
    x = np.random.default_rng(4).normal(size=(1, 8))
    np.testing.assert_allclose(_floats(result.apply(x)), x, atol=1e-12)  # it is x itself
    assert result.exact_everywhere, (
        f"region {result.region.astype(int)} is not tight: the output is the input itself")


def _torch1d(x, *layers):
    """Apply 1-D layers given as callables on a (1, C, n) float64 tensor."""
    t = torch.from_numpy(np.asarray(x, dtype=np.float64))[None]
    for layer in layers:
        t = layer(t)
    return t[0].numpy()


def _T(a):
    return torch.tensor(a, dtype=torch.float64)


def test_replicate_padding_of_a_zero_border_is_exact():
    """A zero-padded 1x1 conv with padding 1 has output ends that read no input (they hold
    0); replicate padding then copies that 0, which is also the collapsed value outside
    the window.  The network equals the collapsed operator everywhere, for every weight,
    so a tight region is everything."""
    w1, w2 = np.array([[[0.7]]]), np.array([[[0.5, -0.9]]])
    net = Network(1, 1)
    h = net.conv(net.input, w1, padding=1)
    net.set_output(net.conv(h, w2, padding=((0, 1),), padding_mode="replicate"))
    result = collapse(net, (1, 6))
    x = np.random.default_rng(6).normal(size=(1, 6))
    expected = _torch1d(x, lambda t: F.conv1d(t, _T(w1), padding=1),
                        lambda t: F.conv1d(F.pad(t, (0, 1), mode="replicate"), _T(w2)))
    np.testing.assert_allclose(_floats(result.apply(x)), expected, atol=1e-12)
    assert result.exact_everywhere, f"region {result.region.astype(int)} is not tight"


def test_reflect_padding_of_inserted_zeros_is_exact():
    """After zero-insertion up-sampling, reflect padding reads an inserted zero, and the
    collapsed value outside the window is 0 as well: exact everywhere."""
    w = np.array([[[0.5, -0.9, 0.3]]])
    net = Network(1, 1)
    net.set_output(net.conv(net.upsample(net.input, 2), w, padding=1, padding_mode="reflect"))
    result = collapse(net, (1, 6))
    x = np.random.default_rng(7).normal(size=(1, 6))

    def up(t):
        out = torch.zeros(1, 1, 11, dtype=torch.float64)
        out[..., ::2] = t
        return out
    expected = _torch1d(x, up, lambda t: F.conv1d(F.pad(t, (1, 1), mode="reflect"), _T(w)))
    np.testing.assert_allclose(_floats(result.apply(x)), expected, atol=1e-12)
    assert result.exact_everywhere, f"region {result.region.astype(int)} is not tight"


def test_exclude_pad_average_of_a_constant_border_is_exact():
    """The ends of a zero-padded biased 1x1 conv hold its bias only; an average pool that
    excludes padding averages that constant, as the collapsed include-pad average does."""
    w, b = np.array([[[0.7]]]), np.array([0.4])
    net = Network(1, 1)
    h = net.conv(net.input, w, b, padding=1)
    net.set_output(net.avg_pool(h, 2, stride=2, padding=1, count_include_pad=False))
    result = collapse(net, (1, 6))
    x = np.random.default_rng(8).normal(size=(1, 6))
    expected = _torch1d(x, lambda t: F.conv1d(t, _T(w), _T(b), padding=1),
                        lambda t: F.avg_pool1d(t, 2, 2, 1, count_include_pad=False))
    np.testing.assert_allclose(_floats(result.apply(x)), expected, atol=1e-12)
    assert result.exact_everywhere, f"region {result.region.astype(int)} is not tight"


# -- what collapse refuses ------------------------------------------------------------------
def test_flatten_or_linear_points_to_collapse_affine():
    net = Network(1, 1)
    flat = net.flatten(net.conv(net.input, np.ones((2, 1, 3))), name="flat")
    with pytest.raises(ValueError, match="collapse_affine"):
        collapse(net, (1, 6))
    net.set_output(net.linear(flat, np.ones((3, 8)), name="fc"))
    with pytest.raises(ValueError, match="collapse_affine"):
        collapse(net, (1, 6))
    assert collapse_affine(net, (1, 6)).output_shape == (3,)


def test_shape_mismatches_name_the_node():
    net = Network(2, 2)
    a = net.conv(net.input, np.ones((3, 2, 1, 1)), name="three")
    b = net.conv(net.input, np.ones((2, 2, 1, 1)), name="two")
    net.set_output(net.add(a, b, name="bad_add"))
    for fn in (collapse, collapse_affine):
        with pytest.raises(ValueError, match="bad_add"):
            fn(net, (2, 5, 5))

    net = Network(1, 1)
    h = net.conv(net.input, np.ones((2, 1, 3)))
    net.set_output(net.conv(h, np.ones((1, 3, 1)), name="wants_three"))
    for fn in (collapse, collapse_affine):
        with pytest.raises(ValueError, match="wants_three"):
            fn(net, (1, 6))

    net = Network(1, 1)
    a = net.conv(net.input, np.ones((1, 1, 3)))           # 6 -> 4
    net.set_output(net.concat(a, net.input, name="cat"))  # 4 vs 6
    for fn in (collapse, collapse_affine):
        with pytest.raises(ValueError, match="cat"):
            fn(net, (1, 6))

    net = Network(1, 1)
    net.set_output(net.conv(net.input, np.ones((1, 1, 5)), name="too_big"))
    with pytest.raises(ValueError, match="too_big"):
        collapse(net, (1, 3))

    net = Network(1, 1)
    net.set_output(net.linear(net.flatten(net.input), np.ones((2, 5)), name="fc"))
    with pytest.raises(ValueError, match="fc"):
        collapse_affine(net, (1, 6))

    net = Network(1, 2)
    net.set_output(net.conv(net.input, np.ones((1, 2, 1))))
    with pytest.raises(ValueError):
        collapse(net, (3, 6))   # wrong input channels
    with pytest.raises(ValueError):
        collapse(net, (2, 6, 6))  # wrong number of axes


def _nan_networks():
    nan = np.nan
    w = np.ones((1, 1, 3))

    def conv_weight(net):
        return net.conv(net.input, np.array([[[1.0, nan, 2.0]]]))

    def conv_bias(net):
        return net.conv(net.input, w, np.array([nan]))

    def conv_inf(net):
        return net.conv(net.input, np.array([[[1.0, np.inf, 2.0]]]))

    def transpose_weight(net):
        return net.conv_transpose(net.input, np.array([[[nan, 1.0]]]))

    def bn_mean(net):
        return net.batch_norm(net.input, [nan], [1.0])

    def bn_gamma(net):
        return net.batch_norm(net.input, [0.0], [1.0], [nan], [0.0])

    def affine_shift(net):
        return net.channel_affine(net.input, [1.0], [np.inf])

    def add_coefficient(net):
        return net.add(net.input, net.conv(net.input, np.ones((1, 1, 1))),
                       coefficients=[1.0, nan])

    return [conv_weight, conv_bias, conv_inf, transpose_weight, bn_mean, bn_gamma,
            affine_shift, add_coefficient]


@pytest.mark.parametrize("make", _nan_networks(), ids=lambda f: f.__name__)
def test_non_finite_weights_are_refused(make):
    """Refused when the layer is added, or else by both collapses."""
    net = Network(1, 1)
    try:
        net.set_output(make(net))
    except ValueError:
        return
    with pytest.raises(ValueError):
        collapse(net, (1, 6))
    with pytest.raises(ValueError):
        collapse_affine(net, (1, 6))


def test_non_finite_linear_weights_are_refused():
    with pytest.raises(ValueError):
        net = Network(1, 1)
        net.set_output(net.linear(net.flatten(net.input), np.full((2, 6), np.nan)))
        collapse_affine(net, (1, 6))


def test_multirate_limits_collapse_to_a_polyphase_operator():
    """Up-sampling by 2 after a stride 2 is not one multi-rate convolution; a bias before
    zero insertion is not shift-invariant.  The single-operator algebra refuses both,
    pointing to the affine map; the collapse falls back to the polyphase form (2 phases,
    tested against PyTorch in test_multirate.py)."""
    rng = np.random.default_rng(5)
    net = Network(1, 1)
    h = net.conv(net.input, rng.normal(size=(1, 1, 3)), stride=2)
    net.set_output(net.upsample(h, 2))
    ring = net.ring()
    with pytest.raises(ValueError, match="affine"):
        net.nodes[net.output_name].operator(ring, (1, 4)) @ net.nodes[h.name].operator(ring, (1, 9))
    result = collapse(net, (1, 9))
    assert result.polyphase and "2 phases" in result.describe()
    net2 = Network(1, 1)
    h = net2.conv(net2.input, rng.normal(size=(1, 1, 3)), rng.normal(size=1))
    net2.set_output(net2.upsample(h, 2))
    result = collapse(net2, (1, 9))
    assert result.polyphase and "2 phases" in result.describe()
