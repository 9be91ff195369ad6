"""The python-flint collapse backend against the sympy one.

The two backends share the walk (``collapse_walk``) but not the arithmetic: the sympy path
multiplies ``LaurentPoly`` matrices on sympy's sparse rings, the FLINT path converts every
layer to ``fmpq_mpoly`` entries or dense integer tensors (FLINT integer matrix products) and
converts the result back.  On random networks (``tests/network_strategies.py``: strides,
dilations, groups, transposed convs, up-sampling, pools, batch norm, residual adds with
coefficients, concat/split, all padding modes) both must return the *same* ``ConvOperator``
(entry for entry, bias included) and the same region, and refuse the same inputs with the
same messages.  Each kernel of the FLINT backend is tested on its own by forcing it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import sympy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from laurentnet.algebra import (ConvOperator, InvalidInputError, InvalidTypeError, Network,
                                collapse, sympy_ground_types)
from laurentnet.algebra import flint_operator
from laurentnet.algebra.collapse import select_backend
from laurentnet.algebra.flint_backend import FlintBackend, from_conv_operator
from laurentnet.algebra.flint_operator import flint_vstack
from laurentnet.algebra.layout import default_ring
from laurentnet.algebra.operator import vstack
from network_strategies import build_network, linear_networks, periodic_networks

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")

# the ``kernel`` fixture only patches a module attribute, the same for every example
_FIXTURE_OK = [HealthCheck.function_scoped_fixture]
PROPERTY = settings(deadline=None, max_examples=25, suppress_health_check=_FIXTURE_OK)


@pytest.fixture(params=["auto", "sparse", "dense"])
def kernel(request, monkeypatch):
    """Which FLINT product kernel runs: the size-based choice, or one of them forced."""
    if request.param != "auto":
        monkeypatch.setattr(flint_operator, "product_kernel",
                            lambda outer, inner, k=request.param: k)
    return request.param


def _same(net: Network, shape, periodic=None) -> None:
    try:
        expected = collapse(net, shape, periodic=periodic, backend="sympy")
    except InvalidInputError as exc:
        with pytest.raises(InvalidInputError) as info:
            collapse(net, shape, periodic=periodic, backend="flint")
        assert str(info.value) == str(exc)
        return
    got = collapse(net, shape, periodic=periodic, backend="flint")
    assert got.operator == expected.operator, (got.operator, expected.operator)
    # equal entry by entry in the same normal form, not only as values
    for row_a, row_b in zip(got.operator.matrix, expected.operator.matrix):
        for a, b in zip(row_a, row_b):
            assert a.offset == b.offset and dict(a.poly) == dict(b.poly)
    assert got.operator.bias == expected.operator.bias
    if expected.polyphase:  # a multirate network: the same periods (test_multirate.py)
        assert got.polyphase and got.operator.in_period == expected.operator.in_period
        assert got.operator.out_period == expected.operator.out_period
    else:
        assert got.operator.stride == expected.operator.stride
        assert got.operator.upsample == expected.operator.upsample
    assert got.periodic == expected.periodic
    assert got.output_shape == expected.output_shape
    np.testing.assert_array_equal(got.region, expected.region)


# -- random networks ------------------------------------------------------------------------
@PROPERTY
@given(spec=st.sampled_from([1, 2]).flatmap(lambda d: linear_networks(d, loose=True)),
       periodic=st.sampled_from([None, False]))
def test_random_networks_collapse_identically(spec, periodic, kernel):
    _same(build_network(spec, Network), spec.input_shape, periodic)


@settings(deadline=None, max_examples=10, suppress_health_check=_FIXTURE_OK)
@given(spec=st.sampled_from([1, 2]).flatmap(lambda d: periodic_networks(d)))
def test_random_periodic_networks_collapse_identically(spec, kernel):
    _same(build_network(spec, Network), spec.input_shape)


@settings(deadline=None, max_examples=10, suppress_health_check=_FIXTURE_OK)
@given(spec=st.sampled_from([1, 2]).flatmap(
    lambda d: linear_networks(d, collapsible=False, max_depth=3)))
def test_networks_outside_one_operator_are_refused_identically(spec, kernel):
    """Without the collapsible restriction some networks up-sample after a stride or put a
    bias before an up-sampling: both backends collapse them to the same polyphase operator
    (or refuse them with the same message)."""
    _same(build_network(spec, Network), spec.input_shape)


def test_rational_weights_with_every_node_kind(kernel):
    g = np.random.default_rng(3)
    rational = np.vectorize(lambda v: sympy.Rational(int(v), 7), otypes=[object])
    net = Network(2, 3)
    x = net.input
    a = net.conv(x, rational(g.integers(-9, 10, (4, 3, 3, 3))), g.integers(-3, 4, 4),
                 padding=1, stride=2)
    b = net.conv(x, g.standard_normal((4, 3, 1, 1)).astype(np.float32), stride=2)
    h = net.add(a, b, coefficients=(Fraction(2, 3), 0.25))
    h = net.batch_norm(h, g.random(4), g.random(4) + 1, g.random(4), g.random(4))
    h = net.concat(h, net.avg_pool(net.conv(h, g.integers(-2, 3, (2, 4, 3, 3)), padding=1), 1))
    h = net.conv(h, g.integers(-2, 3, (6, 3, 3, 3)), groups=2, padding=(1, 2), dilation=2)
    h = net.split(h, (2, 4))[1]
    net.set_output(h)
    _same(net, (3, 12, 11))


# -- the operators themselves -----------------------------------------------------------------
def _random_operator(g, c_out, c_in, *, ndim=2, stride=1, upsample=1, bias=True, sparse=0.0):
    ring = default_ring(ndim)
    w = g.integers(-5, 6, (c_out, c_in) + (3,) * ndim).astype(object)
    w = w * np.vectorize(lambda v: Fraction(1, int(v)), otypes=[object])(
        g.integers(1, 6, w.shape))
    if sparse:
        w[g.random((c_out, c_in)) < sparse] = 0
    b = [Fraction(int(v), 3) for v in g.integers(-4, 5, c_out)] if bias else None
    if upsample != 1:
        op = ConvOperator.from_weight(w.transpose(1, 0, *range(2, 2 + ndim)).copy(), None,
                                      stride=upsample, transposed=True, ring=ring)
    else:
        op = ConvOperator.from_weight(w, b, stride=stride, padding=1, ring=ring)
    return op


@pytest.mark.parametrize("seed", range(6))
def test_operator_algebra_matches_conv_operator(seed, kernel):
    g = np.random.default_rng(seed)
    ring = default_ring(2)
    backend = FlintBackend(Network(2, 1))
    ctx = backend.ctx
    c = int(g.integers(1, 5))
    a = _random_operator(g, 3, c, stride=(1, 2), sparse=0.3)
    b = _random_operator(g, 2, 3, stride=2, sparse=0.3)
    u = _random_operator(g, c, c, upsample=3, bias=False)
    fa, fb, fu = (from_conv_operator(op, ctx) for op in (a, b, u))
    assert backend.to_conv_operator(fa) == a
    assert backend.to_conv_operator(fb @ fa) == b @ a
    assert backend.to_conv_operator(fb @ fa @ fu) == (b @ a) @ u   # up 3 after stride 2
    assert backend.to_conv_operator(fa + fa * Fraction(-5, 2)) == a + a * sympy.Rational(-5, 2)
    assert backend.to_conv_operator(flint_vstack([fa, fa * 3])) == vstack([a, a * 3])
    assert backend.to_conv_operator((fb @ fa) * 0) == (b @ a) * 0
    assert ring == backend.ring


def test_refusals_match_conv_operator():
    g = np.random.default_rng(0)
    backend = FlintBackend(Network(2, 1))
    strided = _random_operator(g, 2, 2, stride=2)
    up = _random_operator(g, 2, 2, upsample=2, bias=False)
    biased = _random_operator(g, 2, 2, bias=True)
    wide = _random_operator(g, 3, 2)
    pairs = [(up, strided), (up, biased), (wide, wide), (strided, wide)]
    for outer, inner in pairs:
        flint_pair = [from_conv_operator(op, backend.ctx) for op in (outer, inner)]
        try:
            outer @ inner
        except InvalidInputError as exc:
            with pytest.raises(InvalidInputError, match=_escape(str(exc))):
                flint_pair[0] @ flint_pair[1]
        else:
            backend.to_conv_operator(flint_pair[0] @ flint_pair[1])
        try:
            outer + inner
        except InvalidInputError as exc:
            with pytest.raises(InvalidInputError, match=_escape(str(exc))):
                flint_pair[0] + flint_pair[1]
        try:
            vstack([outer, inner])
        except InvalidInputError as exc:
            with pytest.raises(InvalidInputError, match=_escape(str(exc))):
                flint_vstack(flint_pair)


def _escape(text: str) -> str:
    import re
    return re.escape(text)


# -- choosing the backend ---------------------------------------------------------------------
def _numeric_net() -> Network:
    net = Network(1, 1)
    net.set_output(net.conv(net.input, np.array([[[1.0, -0.5, 2.0]]]), padding=1))
    return net


def test_auto_uses_flint_for_numbers_and_sympy_for_symbols():
    assert select_backend(_numeric_net()) == "flint"
    a = sympy.Symbol("a")
    net = Network(1, 1)
    net.set_output(net.conv(net.input, np.array([[[a, 1, 2]]], dtype=object), padding=1))
    assert select_backend(net) == "sympy"
    result = collapse(net, (1, 5))                       # auto: sympy rings, symbolic result
    assert result.operator.free_symbols == {a}
    with pytest.raises(InvalidInputError, match="backend='flint'.*symbolic"):
        collapse(net, (1, 5), backend="flint")


@pytest.mark.parametrize("bad", ["fast", "FLINT", ""])
def test_unknown_backends_are_refused(bad):
    with pytest.raises(InvalidInputError, match="^backend must be one of"):
        collapse(_numeric_net(), (1, 5), backend=bad)
    with pytest.raises(InvalidTypeError, match="^backend"):
        collapse(_numeric_net(), (1, 5), backend=3)


# -- sympy's ground types -------------------------------------------------------------------------
_REPORT = ("import json, {first}laurentnet.{sub}; from laurentnet.algebra import "
           "sympy_ground_types as g; from sympy.external.gmpy import GROUND_TYPES as t; "
           "r = g(); print(json.dumps([r.in_use, r.requested, r.source, t]))")


def _ground_types(sub: str = "algebra", first: str = "", env: str | None = None) -> list:
    environ = dict(os.environ)
    environ.pop("SYMPY_GROUND_TYPES", None)
    if env is not None:
        environ["SYMPY_GROUND_TYPES"] = env
    done = subprocess.run([sys.executable, "-c", _REPORT.format(first=first, sub=sub)],
                          capture_output=True, text=True, env=environ, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_ground_types_default_to_gmpy_whichever_subpackage_comes_first():
    for sub in ("algebra", "numeric"):   # numeric/ imports sympy before algebra/ runs
        assert _ground_types(sub) == ["gmpy", "gmpy", "laurentnet default", "gmpy"]


def test_ground_types_from_the_environment_are_kept():
    assert _ground_types(env="python") == ["python", "python", "environment", "python"]


def test_ground_types_chosen_before_laurentnet_are_reported():
    in_use, requested, source, actual = _ground_types(first="sympy, ")
    assert (requested, source) == (None, "sympy imported before laurentnet")
    assert in_use == actual


def test_ground_types_report_in_this_process():
    from sympy.external.gmpy import GROUND_TYPES
    report = sympy_ground_types()
    assert report.in_use == GROUND_TYPES
    assert GROUND_TYPES in str(report)
