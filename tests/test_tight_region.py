"""Tight regions for the actual weights (issue: positions outside the generic region that
agree exactly, e.g. reflect/replicate/circular padding copying zeros an earlier zero
padding created, zero scales, cancelling branches).

Reference: the network in float64 torch layer by layer (``network_forward``, independent
of the collapse) and the collapsed operator applied exactly.  Inside the region they must
agree at every input; outside it they must differ at some input (tightness).
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from laurentnet.algebra import Network, collapse
from laurentnet.algebra.exact_forward import forward_exact
from laurentnet.numeric import network_forward

MODES = ("zeros", "reflect", "replicate", "circular")


def _inputs(shape, seed=0, count=4):
    rng = np.random.default_rng(seed)
    return [np.zeros(shape, np.int64)] + [rng.integers(-9, 10, shape) for _ in range(count)]


def _check_region_is_correct_and_tight(net: Network, shape):
    result = collapse(net, shape, periodic=False, tight=True)
    differs = np.zeros(result.region.shape, bool)
    for x in _inputs(shape):
        want = network_forward(net, torch.tensor(x[None], dtype=torch.float64))[0].numpy()
        got = np.array(result.apply(x), dtype=np.float64)
        close = np.isclose(got, want, rtol=1e-12, atol=1e-9).all(axis=0)
        assert close[result.region].all(), "wrong value inside the region"
        differs |= ~close
    assert (differs | result.region).all(), (
        f"not tight: outside the region and equal at every input: "
        f"{np.argwhere(~differs & ~result.region).tolist()}")
    return result


def _chain(layers, channels=1):
    net = Network(1, channels)
    x = net.input
    for weight, pad, mode in layers:
        x = net.conv(x, np.array(weight, dtype=np.int64).reshape(channels, channels, -1),
                     padding=pad, padding_mode=mode)
    net.set_output(x)
    return net


def test_reflect_after_zero_padding_copies_zeros():
    """A 1x1 zero-padded conv makes zero borders; reflect padding then copies them."""
    net = _chain([([2], 2, "zeros"), ([1, -1, 3], 1, "reflect"), ([1, 2], 1, "replicate")])
    generic = collapse(net, (1, 5), periodic=False, tight=False)
    tight = _check_region_is_correct_and_tight(net, (1, 5))
    assert tight.region.sum() >= generic.region.sum()
    assert "these weights" in tight.where() or tight.exact_everywhere


def test_zero_scale_and_cancelling_branches():
    net = Network(1, 1)
    a = net.conv(net.input, np.array([[[1, 2, 3]]]), padding=1, padding_mode="reflect")
    b = net.conv(net.input, np.array([[[1, 1, 1]]]), padding=1)
    s = net.add(a, b, coefficients=[0, 1])  # the reflect branch does not count
    net.set_output(s)
    generic = collapse(net, (1, 6), tight=False)
    tight = _check_region_is_correct_and_tight(net, (1, 6))
    assert tight.region.sum() > generic.region.sum()


def test_generic_region_is_kept_when_not_asked():
    net = Network(1, 1)
    a = net.conv(net.input, np.array([[[1, 2, 3]]]), padding=1, padding_mode="reflect")
    net.set_output(net.add(a, a, coefficients=[1, -1]))
    assert not collapse(net, (1, 6), tight=False).region.all()
    assert collapse(net, (1, 6), tight=True).region.all()  # identically 0 = the collapse
    assert "tight for generic weights" in collapse(net, (1, 6), tight=False).where()


def test_tight_argument_is_checked():
    with pytest.raises(ValueError, match="tight"):
        collapse(_chain([([1], 0, "zeros")]), (1, 3), tight="yes")


def test_exact_forward_matches_torch():
    net = _chain([([1, -2, 3], 2, "reflect"), ([2, 1], 1, "circular"), ([1], 1, "zeros")])
    x = np.array([[3, -1, 4, 1, -5, 9]])
    got = np.array(forward_exact(net, x), dtype=np.float64)
    want = network_forward(net, torch.tensor(x[None], dtype=torch.float64))[0].numpy().ravel()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


_layer = st.tuples(
    st.integers(1, 3).flatmap(lambda k: st.lists(st.integers(-2, 2), min_size=k, max_size=k)),
    st.integers(0, 2), st.sampled_from(MODES))


@settings(max_examples=40)
@given(layers=st.lists(_layer, min_size=1, max_size=3), size=st.integers(4, 7))
def test_chains_with_mixed_padding_get_tight_regions(layers, size):
    net = Network(1, 1)
    x = net.input
    n = size
    for weight, pad, mode in layers:
        k = len(weight)
        if mode in ("reflect", "circular") and pad >= n or n + 2 * pad - k + 1 < 1:
            pad, mode = 0, "zeros"
        if n - k + 1 + 2 * pad < 1:
            return
        x = net.conv(x, np.array(weight).reshape(1, 1, k), padding=pad, padding_mode=mode)
        n = n + 2 * pad - k + 1
    net.set_output(x)
    _check_region_is_correct_and_tight(net, (1, size))


def test_the_random_inputs_are_fresh_and_wide():
    from laurentnet.algebra.tight_region import RANDOM_BITS, _random_input
    a = _random_input((1, 50), random.Random(1))
    b = _random_input((1, 50), random.Random(2))
    assert (a != b).any() and max(abs(int(v)) for v in a.ravel()) > 2 ** (RANDOM_BITS - 8)


def _check_numeric_twin(net: Network, shape):
    """The float twin: the same tight region as the exact collapse, and on it the float
    operator equals the network (torch float64) to round-off."""
    from laurentnet.numeric import collapse_numeric
    exact = collapse(net, shape, periodic=False, tight=True)
    numeric = collapse_numeric(net, shape, periodic=False, tight=True)
    np.testing.assert_array_equal(numeric.region, exact.region)
    assert numeric.tight_for == exact.tight_for
    for x in _inputs(shape, seed=3):
        xt = torch.tensor(x[None], dtype=torch.float64)
        want = network_forward(net, xt)[0].numpy()
        got = numeric.apply(xt)[0].numpy()
        assert np.isclose(got, want, rtol=1e-12, atol=1e-9).all(axis=0)[numeric.region].all()
    generic = collapse_numeric(net, shape, periodic=False, tight=False)
    assert generic.tight_for == "generic weights" and (generic.region <= numeric.region).all()


def test_numeric_collapse_tightens_like_the_exact_one():
    _check_numeric_twin(_chain([([2], 2, "zeros"), ([1, -1, 3], 1, "reflect"),
                                ([1, 2], 1, "replicate")]), (1, 5))
    net = Network(1, 1)
    a = net.conv(net.input, np.array([[[1, 2, 3]]]), padding=1, padding_mode="reflect")
    b = net.conv(net.input, np.array([[[1, 1, 1]]]), padding=1)
    net.set_output(net.add(a, b, coefficients=[0, 1]))
    _check_numeric_twin(net, (1, 6))


def test_numeric_tight_argument_is_checked():
    from laurentnet.numeric import collapse_numeric
    with pytest.raises(ValueError, match="tight"):
        collapse_numeric(_chain([([1], 0, "zeros")]), (1, 3), tight="yes")
