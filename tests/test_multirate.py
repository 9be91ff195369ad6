"""Multirate networks (issue 13.2): polyphase operators and the collapse's fallback to them.

References, all independent of the polyphase arithmetic:

* torch's own layers in float64 (``F.conv*d`` after ``F.pad``, ``F.conv_transpose*d``,
  explicit zero insertion, ``F.avg_pool*d``), on random float weights;
* the network's exact layer-by-layer index sums (:func:`algebra.exact_forward.forward_exact`)
  over ``QQ`` on small integer weights;
* the definition ``y[i] = sum_j k[s i - u j] x[j] + b`` (``apply_operator``) for the
  conversions between a strided operator and its polyphase form.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import gcd
from typing import Any

import numpy as np
import pytest
import sympy
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from laurentnet.algebra import (ConvOperator, InvalidInputError, MultirateError, Network,
                                PolyphaseOperator, collapse)
from laurentnet.algebra.exact_forward import forward_exact
from laurentnet.algebra.signal import apply_operator

CONV = {1: F.conv1d, 2: F.conv2d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d}
AVG = {1: F.avg_pool1d, 2: F.avg_pool2d}
MODES = ("zeros", "circular", "reflect", "replicate")


def _examples(n: int) -> int:
    """``n`` examples, or more under a thorough hypothesis profile (``max_examples > 100``)."""
    return max(n, settings.default.max_examples if settings.default.max_examples > 100 else n)


SLOW = [HealthCheck.too_slow, HealthCheck.filter_too_much]
SETTINGS = settings(max_examples=_examples(12), deadline=None, suppress_health_check=SLOW)


# -- a tiny program of layers, built twice: as a Network and as torch calls -----------------
@dataclass
class Program:
    ndim: int
    shape: tuple[int, ...]                 # (C, *n) of the input
    integer: bool                          # integer weights (exact tests) or floats
    rng: np.random.Generator
    steps: list[tuple[str, tuple[int, ...], dict[str, Any]]] = field(default_factory=list)
    shapes: list[tuple[int, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.shapes.append(self.shape)

    def weights(self, *shape: int) -> np.ndarray:
        if self.integer:
            return self.rng.integers(-3, 4, shape).astype(np.float64)
        return self.rng.standard_normal(shape)

    def _push(self, kind: str, inputs: tuple[int, ...], shape: tuple[int, ...], **p: Any) -> int:
        self.steps.append((kind, inputs, p))
        self.shapes.append(shape)
        return len(self.shapes) - 1

    def conv(self, v: int, cout: int, k: int, stride: int = 1, pad: int = 0,
             mode: str = "zeros", bias: bool = True) -> int:
        c, *n = self.shapes[v]
        w = self.weights(cout, c, *([k] * self.ndim))
        b = self.weights(cout) if bias else None
        out = tuple((m + 2 * pad - k) // stride + 1 for m in n)
        assert min(out) >= 1
        return self._push("conv", (v,), (cout, *out), w=w, b=b, stride=stride, pad=pad, mode=mode)

    def conv_t(self, v: int, cout: int, k: int, stride: int, pad: int, out_pad: int,
               bias: bool = True) -> int:
        c, *n = self.shapes[v]
        w = self.weights(c, cout, *([k] * self.ndim))
        b = self.weights(cout) if bias else None
        out = tuple((m - 1) * stride - 2 * pad + k - 1 + out_pad + 1 for m in n)
        assert min(out) >= 1
        return self._push("conv_t", (v,), (cout, *out), w=w, b=b, stride=stride, pad=pad,
                          out_pad=out_pad)

    def upsample(self, v: int, factor: int) -> int:
        c, *n = self.shapes[v]
        return self._push("up", (v,), (c, *((m - 1) * factor + 1 for m in n)), factor=factor)

    def add(self, a: int, b: int, coefficient: float = 1.0) -> int:
        assert self.shapes[a] == self.shapes[b]
        return self._push("add", (a, b), self.shapes[a], c=coefficient)

    def concat(self, a: int, b: int) -> int:
        c = self.shapes[a][0] + self.shapes[b][0]
        return self._push("cat", (a, b), (c, *self.shapes[a][1:]))

    def avg_pool(self, v: int, k: int, stride: int, pad: int, include: bool) -> int:
        c, *n = self.shapes[v]
        out = tuple((m + 2 * pad - k) // stride + 1 for m in n)
        return self._push("avg", (v,), (c, *out), k=k, stride=stride, pad=pad, include=include)

    # -- the two builds -------------------------------------------------------------------
    def network(self) -> Network:
        net = Network(ndim=self.ndim, in_channels=self.shape[0])
        values = [net.input]
        for kind, inputs, p in self.steps:
            x = [values[i] for i in inputs]
            if kind == "conv":
                values.append(net.conv(x[0], p["w"], p["b"], stride=p["stride"], padding=p["pad"],
                                       padding_mode=p["mode"]))
            elif kind == "conv_t":
                values.append(net.conv_transpose(x[0], p["w"], p["b"], stride=p["stride"],
                                                 padding=p["pad"], output_padding=p["out_pad"]))
            elif kind == "up":
                values.append(net.upsample(x[0], p["factor"]))
            elif kind == "add":
                values.append(net.add(x[0], x[1], coefficients=(1, p["c"])))
            elif kind == "cat":
                values.append(net.concat(x[0], x[1]))
            else:
                values.append(net.avg_pool(x[0], p["k"], p["stride"], p["pad"],
                                           count_include_pad=p["include"]))
        net.set_output(values[-1])
        return net

    def torch_forward(self, x: np.ndarray) -> np.ndarray:
        """The layers in torch float64 (batch of one)."""
        t = lambda a: None if a is None else torch.as_tensor(a, dtype=torch.float64)
        values = [t(x)[None]]
        for kind, inputs, p in self.steps:
            v = [values[i] for i in inputs]
            if kind == "conv":
                h = v[0]
                if p["pad"]:
                    h = F.pad(h, [p["pad"]] * (2 * self.ndim),
                              mode="constant" if p["mode"] == "zeros" else p["mode"])
                values.append(CONV[self.ndim](h, t(p["w"]), t(p["b"]), stride=p["stride"]))
            elif kind == "conv_t":
                values.append(CONV_T[self.ndim](v[0], t(p["w"]), t(p["b"]), stride=p["stride"],
                                                padding=p["pad"], output_padding=p["out_pad"]))
            elif kind == "up":
                u = p["factor"]
                n = v[0].shape[2:]
                out = torch.zeros(*v[0].shape[:2], *((m - 1) * u + 1 for m in n),
                                  dtype=torch.float64)
                out[(slice(None), slice(None), *([slice(None, None, u)] * self.ndim))] = v[0]
                values.append(out)
            elif kind == "add":
                values.append(v[0] + p["c"] * v[1])
            elif kind == "cat":
                values.append(torch.cat(v, dim=1))
            else:
                values.append(AVG[self.ndim](v[0], p["k"], p["stride"], p["pad"],
                                             count_include_pad=p["include"]))
        return values[-1][0].numpy()


def _matching_transpose(m: int, n: int, stride: int) -> list[tuple[int, int, int]]:
    """``(k, padding, output_padding)`` with ``conv_transpose`` taking size ``m`` to ``n``."""
    return [(k, p, op) for k in range(1, 5) for p in range(0, k) for op in range(stride)
            if (m - 1) * stride - 2 * p + k + op == n]


@st.composite
def multirate_programs(draw: Any, integer: bool = False) -> Program:
    """Networks on the new paths: ``up_u`` after ``down_s`` with ``gcd(u, s) != 1``, sums
    and stacks of branches of different rates, a bias before up-sampling; each may be
    followed by a stride-1 conv with any padding mode, or an average pool."""
    ndim = draw(st.sampled_from([1, 1, 2]))
    n = draw(st.integers(5, 9) if ndim == 1 else st.integers(4, 6))
    c = draw(st.integers(1, 2))
    prog = Program(ndim, (c, *([n] * ndim)), integer,
                   np.random.default_rng(draw(st.integers(0, 2**31))))
    kind = draw(st.sampled_from(["chain", "sum", "lti_sum", "bias_up", "concat"]))
    x = 0
    if kind == "chain":                       # up_u K2 down_s K1, gcd(u, s) != 1
        s = draw(st.sampled_from([2, 2, 3]))
        u = draw(st.sampled_from([2, 4] if s == 2 else [3]))
        k = draw(st.integers(1, 3))
        h = prog.conv(x, draw(st.integers(1, 2)), k, stride=s, pad=draw(st.integers(0, k - 1)),
                      bias=draw(st.booleans()))
        y = prog.conv_t(h, draw(st.integers(1, 2)), draw(st.integers(1, 3)), u, 0, 0,
                        bias=draw(st.booleans()))
    elif kind in ("sum", "concat"):           # x + up2 K2 down2 K1 x (a U-Net skip)
        h = prog.conv(x, draw(st.integers(1, 2)), 3, stride=2, pad=1, bias=draw(st.booleans()))
        options = _matching_transpose(prog.shapes[h][1], n, 2)
        k, p, op = draw(st.sampled_from(options))
        g = prog.conv_t(h, c, k, 2, p, op, bias=draw(st.booleans()))
        y = prog.add(x, g, draw(st.sampled_from([1.0, -0.5]))) if kind == "sum" else \
            prog.concat(x, g)
    elif kind == "lti_sum":                   # x + down2 K up2 x: one stride-1 operator
        h = prog.conv_t(x, draw(st.integers(1, 2)), draw(st.integers(1, 3)), 2, 0, 0,
                        bias=draw(st.booleans()))
        m = prog.shapes[h][1]
        k = draw(st.integers(1, 3))
        pads = [p for p in range(k) if (m + 2 * p - k) // 2 + 1 == n]
        if not pads:
            h = prog.upsample(x, 2)
            pads = [p for p in range(k) if (prog.shapes[h][1] + 2 * p - k) // 2 + 1 == n]
        if not pads:
            k = 1
            pads = [0]
        g = prog.conv(h, c, k, stride=2, pad=draw(st.sampled_from(pads)))
        y = prog.add(x, g)
    else:                                     # conv + b, then zero insertion
        h = prog.conv(x, draw(st.integers(1, 2)), draw(st.integers(1, 3)), pad=1, bias=True)
        u = draw(st.sampled_from([2, 3]))
        y = prog.upsample(h, u) if draw(st.booleans()) else \
            prog.conv_t(h, draw(st.integers(1, 2)), draw(st.integers(1, 3)), u, 0, 0,
                        bias=draw(st.booleans()))
    tail = draw(st.sampled_from(["none", "conv", "conv", "pool"]))
    size = min(prog.shapes[y][1:])
    if tail == "conv" and size >= 3:
        mode = draw(st.sampled_from(MODES))
        prog.conv(y, draw(st.integers(1, 2)), 3, pad=1, mode=mode, bias=draw(st.booleans()))
    elif tail == "pool" and size >= 2:
        prog.avg_pool(y, 2, draw(st.sampled_from([1, 2])), draw(st.integers(0, 1)),
                      draw(st.booleans()))
    return prog


def _floats(y: np.ndarray) -> np.ndarray:
    return np.vectorize(float, otypes=[np.float64])(y)


# -- the collapse against torch in float64 --------------------------------------------------
@SETTINGS
@given(multirate_programs(), st.integers(0, 2**31))
def test_multirate_collapse_equals_torch_on_its_region(prog: Program, seed: int) -> None:
    net = prog.network()
    result = collapse(net, prog.shape, tight=False)
    tight = collapse(net, prog.shape, tight=True)
    # the propagated region is tight for generic (random float) weights
    assert (result.region == tight.region).all(), (result.describe(), prog.steps)
    rng = np.random.default_rng(seed)
    for _ in range(2):
        x = rng.standard_normal(prog.shape)
        expected = prog.torch_forward(x)
        got = _floats(result.apply(x))
        assert got.shape == expected.shape
        scale = 1 + np.abs(expected).max()
        diff = np.abs(got - expected).max(axis=0)
        assert (diff[tight.region] <= 1e-9 * scale).all(), (result.describe(), prog.steps)
    # outside the region decided for these weights the network and the operator differ
    outside = ~tight.region
    if outside.any():
        worst = np.zeros(outside.shape)
        for _ in range(2):
            x = rng.standard_normal(prog.shape)
            diff = np.abs(_floats(result.apply(x)) - prog.torch_forward(x)).max(axis=0)
            worst = np.maximum(worst, diff)
        assert (worst[outside] > 1e-9).all()
    assert ("polyphase" in result.describe()) == result.polyphase
    if result.polyphase:
        assert f"{result.operator.phases} phases" in result.describe()


# -- exact over QQ on small networks ---------------------------------------------------------
@settings(max_examples=_examples(8), deadline=None, suppress_health_check=SLOW)
@given(multirate_programs(integer=True), st.integers(0, 2**31))
def test_multirate_collapse_exact_over_qq(prog: Program, seed: int) -> None:
    net = prog.network()
    sym = collapse(net, prog.shape, backend="sympy", tight=True)
    fl = collapse(net, prog.shape, backend="flint", tight=True)
    assert sym.operator == fl.operator and (sym.region == fl.region).all()
    rng = np.random.default_rng(seed)
    x = rng.integers(-9, 10, prog.shape).astype(object)
    out = sym.output_shape
    expected = np.array([sympy.Rational(v) for v in forward_exact(net, x, prog.shape,
                                                                   sympy.QQ)],
                        dtype=object).reshape(out)
    got = sym.apply(x)
    for index in zip(*np.nonzero(sym.region)):
        column = (slice(None), *index)
        assert all(a == b for a, b in zip(got[column], expected[column]))


# -- the conversions, against the definition y[i] = sum_j k[s i - u j] x[j] + b --------------
def _operator(rng: np.random.Generator, ndim: int, stride: tuple[int, ...],
              upsample: tuple[int, ...], bias: bool = True) -> ConvOperator:
    w = rng.integers(-3, 4, (2, 2, *([3] * ndim)))
    b = rng.integers(-3, 4, 2) if bias else None
    base = ConvOperator.from_weight(w, b, padding=1)
    return ConvOperator(base.ring, base.matrix, stride, base.bias, upsample)


@settings(max_examples=_examples(15), deadline=None)
@given(st.integers(1, 2), st.data())
def test_polyphase_form_of_a_strided_operator(ndim: int, data: Any) -> None:
    s = tuple(data.draw(st.integers(1, 4)) for _ in range(ndim))
    u = tuple(data.draw(st.integers(1, 4)) for _ in range(ndim))
    m = tuple(data.draw(st.integers(1, 3)) for _ in range(ndim))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    op = _operator(rng, ndim, s, u)
    pp = PolyphaseOperator.from_conv(op)
    assert pp.in_period == tuple(a // gcd(a, b) for a, b in zip(s, u))
    x = rng.integers(-5, 6, (2, *([5] * ndim)))
    out = tuple([7] * ndim)
    expected = apply_operator(op, x, out)
    for form in (pp, pp.reblock(m)):
        assert (form.apply(x, out) == expected).all()
        back = form.to_conv()
        assert back is not None and (apply_operator(back, x, out) == expected).all()
        assert all(gcd(a, b) == 1 for a, b in zip(back.stride, back.upsample))
        assert form.minimal()._same_blocks(pp)


def test_up_after_down_is_polyphase_with_two_phases() -> None:
    """``up2 down2`` keeps the even samples: shift-varying, no single kernel."""
    ring = ConvOperator.identity(Network(1, 1).ring(), 1).ring
    down = ConvOperator(ring, [[ring.one]], stride=2)
    up = ConvOperator(ring, [[ring.one]], upsample=2)
    with pytest.raises(MultirateError):
        up @ down
    pp = PolyphaseOperator.from_conv(up) @ PolyphaseOperator.from_conv(down)
    assert pp.to_conv() is None and pp.phases == 2
    x = np.arange(1, 8).reshape(1, 7)
    assert list(pp.apply(x, 7)[0]) == [1, 0, 3, 0, 5, 0, 7]
    assert "2 phases" in pp.describe()
    # down2 up2 is the identity, and converts back
    ident = PolyphaseOperator.from_conv(down) @ PolyphaseOperator.from_conv(up)
    assert ident.to_conv() == ConvOperator.identity(ring, 1)


def test_issue_example_x_plus_down2_k_up2_x_is_one_stride_1_operator() -> None:
    rng = np.random.default_rng(3)
    net = Network(ndim=1, in_channels=1)
    up = net.conv_transpose(net.input, rng.integers(-3, 4, (1, 1, 3)), stride=2)
    down = net.conv(up, rng.integers(-3, 4, (1, 1, 3)), stride=2)
    net.set_output(net.add(net.input, down))
    with pytest.raises(MultirateError, match="strides"):
        ConvOperator.identity(net.ring(), 1) + (net.nodes[down.name].operator(net.ring(), (1, 9))
                                                @ net.nodes[up.name].operator(net.ring(), (1, 4)))
    result = collapse(net, (1, 4))
    assert not result.polyphase and result.operator.stride == (1,)
    x = rng.integers(-5, 6, (1, 4)).astype(object)
    expected = forward_exact(net, x)
    got = result.apply(x)[0]
    assert [got[i] for i in range(4) if result.region[i]] == \
        [expected[i] for i in range(4) if result.region[i]]


def test_sum_of_different_rates_is_refused_clearly() -> None:
    ring = Network(1, 1).ring()
    a = PolyphaseOperator.from_conv(ConvOperator(ring, [[ring.one]], stride=2))
    b = PolyphaseOperator.identity(ring, 1)
    with pytest.raises(InvalidInputError, match="different rates"):
        a + b


def test_bias_before_upsampling_is_periodic() -> None:
    ring = Network(1, 1).ring()
    up = PolyphaseOperator.from_conv(ConvOperator(ring, [[ring.one]], upsample=3))
    biased = PolyphaseOperator.from_conv(ConvOperator(ring, [[ring.one]], bias=[5]))
    pp = up @ biased
    assert pp.to_conv() is None and pp.bias_classes().tolist() == [[1, 0, 0]]
    assert list(pp.apply(np.zeros((1, 3), dtype=int), 7)[0]) == [5, 0, 0, 5, 0, 0, 5]


# -- the torch module: pixel-unshuffle, conv, pixel-shuffle ----------------------------------
@settings(max_examples=_examples(8), deadline=None, suppress_health_check=SLOW)
@given(multirate_programs(), st.integers(0, 2**31))
def test_polyphase_module_equals_the_layers(prog: Program, seed: int) -> None:
    from laurentnet.bridge.polyphase_module import polyphase_module
    result = collapse(prog.network(), prog.shape)
    if not result.polyphase:
        return
    module = polyphase_module(result, dtype=torch.float64)
    x = np.random.default_rng(seed).standard_normal((3, *prog.shape))
    with torch.no_grad():
        y = module(torch.as_tensor(x)).numpy()
    for b in range(3):
        exact = _floats(result.apply(x[b]))
        assert np.allclose(y[b], exact, atol=1e-9, rtol=1e-9)      # the whole window
        reference = prog.torch_forward(x[b])
        assert np.allclose(y[b][:, result.region], reference[:, result.region],
                           atol=1e-9, rtol=1e-9)
    assert f"{result.operator.phases} phases" in result.operator.to_weights().describe()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ndim", [1, 2])
def test_periodic_bias_read_through_each_padding_mode(mode: str, ndim: int) -> None:
    """conv + b, zero insertion, then a padded conv: the copied border reads a bias phase
    that differs from the collapsed one; the region must say so, and stay tight."""
    for seed in range(3):
        prog = Program(ndim, (1, *([5] * ndim)), False, np.random.default_rng(seed))
        h = prog.conv(0, 1, 1, pad=1, bias=True)  # a bias-only border, outside the support
        y = prog.upsample(h, 2)
        prog.conv(y, 1, 3, pad=1, mode=mode, bias=False)
        net = prog.network()
        result = collapse(net, prog.shape, tight=False)
        assert result.polyphase
        tight = collapse(net, prog.shape, tight=True)
        assert (result.region == tight.region).all()
        x = np.random.default_rng(seed + 10).standard_normal(prog.shape)
        diff = np.abs(_floats(result.apply(x)) - prog.torch_forward(x)).max(axis=0)
        assert (diff[result.region] <= 1e-9).all() and (diff[~result.region] > 1e-9).all()


def _causal(rng: np.random.Generator, ring: Any, stride: int, upsample: int, bias: bool
            ) -> ConvOperator:
    """A 2x2 operator with exponents in [0, 2]: on a signal supported on ``i >= 0`` its
    output is supported on ``i >= 0`` too, so windowed evaluation loses nothing."""
    matrix = [[ring.from_dict({(e,): int(rng.integers(-3, 4)) for e in range(3)})
               for _ in range(2)] for _ in range(2)]
    b = [int(v) for v in rng.integers(-3, 4, 2)] if bias else None
    return ConvOperator(ring, matrix, stride, b, upsample)


@settings(max_examples=_examples(20), deadline=None)
@given(st.lists(st.integers(1, 4), min_size=4, max_size=4), st.booleans(),
       st.integers(0, 2**31))
def test_composition_sum_and_stack_against_sequential_evaluation(rates: list[int], bias: bool,
                                                                 seed: int) -> None:
    """``(A2 @ A1) x = A2 (A1 x)`` for every pair of rates (``gcd(u2, s1) != 1`` included),
    sums and stacks of different periods, each side by the definition (apply_operator)."""
    rng = np.random.default_rng(seed)
    ring = Network(1, 1).ring()
    s1, u1, s2, u2 = rates
    a1 = _causal(rng, ring, s1, u1, False)
    a2 = _causal(rng, ring, s2, u2, bias)
    x = rng.integers(-5, 6, (2, 5))
    m1 = (u1 * 4 + 2) // s1 + 1
    m2 = (u2 * (m1 - 1) + 2) // s2 + 1
    expected = apply_operator(a2, apply_operator(a1, x, m1), m2)
    pp = PolyphaseOperator.from_conv(a2) @ PolyphaseOperator.from_conv(a1)
    assert (pp.apply(x, m2) == expected).all()
    single = pp.minimal().to_conv()
    if gcd(u2, s1) == 1:
        assert single is not None and (apply_operator(single, x, m2) == expected).all()
    # a sum of the same operator at two periods, a stack, a channel split, a restriction
    twice = pp + pp.reblock(2)
    assert (twice.apply(x, m2) == 2 * expected).all()
    stacked = PolyphaseOperator.vstack([pp, 3 * pp.reblock(3)])
    assert (stacked.apply(x, m2) == np.concatenate([expected, 3 * expected])).all()
    assert (stacked[2:].apply(x, m2) == 3 * expected).all()
    assert (pp - pp).apply(x, m2).tolist() == (0 * expected).tolist()
    assert pp == pp.reblock(2) and pp.reblock(2).minimal()._same_blocks(pp.minimal())
    half = pp.columns([0])
    x0 = x.copy()
    x0[1] = 0
    assert (half.apply(x[:1], m2) == pp.apply(x0, m2)).all()


def test_symbolic_weights_collapse_to_polyphase_exactly() -> None:
    """Symbolic weights (sympy rings): up2 after down2, against the layer-by-layer sums."""
    a = ConvOperator.symbolic("a", 1, 1, 3, ndim=1, stride=2, bias=True)
    net = Network(1, 1)
    h = net.conv_operator(net.input, a, padding=0)
    net.set_output(net.conv_transpose(h, np.array([[[1, 2]]]), stride=2))
    result = collapse(net, (1, 7))
    assert result.polyphase and result.operator.ring.domain != sympy.QQ
    x = np.arange(1, 8).reshape(1, 7)
    got = result.apply(x)
    expected = forward_exact(net, x)
    to_sympy = net.domain.to_sympy
    for i in range(result.output_shape[1]):
        if result.region[i]:
            assert sympy.expand(got[0, i] - to_sympy(expected[i])) == 0


def test_polyphase_bad_input() -> None:
    ring = Network(1, 1).ring()
    strided = ConvOperator(ring, [[ring.one]], stride=2)
    with pytest.raises(InvalidInputError, match="stride-1"):
        PolyphaseOperator(strided, 1, 1)
    with pytest.raises(TypeError, match="ConvOperator"):
        PolyphaseOperator("block", 1, 1)
    with pytest.raises(InvalidInputError, match="phases"):
        PolyphaseOperator(ConvOperator.identity(ring, 3), 2, 1)
    pp = PolyphaseOperator.from_conv(strided)
    with pytest.raises(InvalidInputError, match="shape"):
        pp.apply(np.zeros((2, 4)), 2)
    with pytest.raises(InvalidInputError, match="compose"):
        PolyphaseOperator.identity(ring, 2) @ pp
