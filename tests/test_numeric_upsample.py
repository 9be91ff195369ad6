"""Up-sampling on the numeric side: ``KernelOperator = down_s ∘ K(z) ∘ up_u + b``.

The references are independent of the code under test: PyTorch's own layers in float64
(``F.conv_transpose{1,2}d``, ``F.conv{1,2}d``, autograd for adjoints, the layer-by-layer
network of ``tests/network_strategies.py``), explicit index sums in numpy, and the exact
twin (``laurentnet.algebra``: ``ConvOperator``, ``collapse``) on small cases.
"""
from __future__ import annotations

import json
import subprocess
import sys
from math import gcd
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from laurentnet.algebra import ConvOperator, MemoryBudgetError, Network, collapse
from laurentnet.algebra.signal import apply_operator
from laurentnet.numeric import KernelOperator, OperatorEvaluator, collapse_numeric, vstack
from laurentnet.numeric.evaluator import conv_direct, conv_fft, conv_window, dense_matrix
from network_strategies import (NetSpec, Op, build_network, conv_out, linear_networks,
                                random_inputs, torch_forward)

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")

HERE = Path(__file__).resolve().parent
CONV = {1: F.conv1d, 2: F.conv2d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d}
PROPERTY = settings(deadline=None, max_examples=25)


def _dyadic(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Weights that are multiples of 1/8 in [-1, 1], nonzero: exact rationals stay small."""
    values = rng.integers(1, 9, size=shape) / 8.0
    return np.where(rng.random(shape) < 0.5, -values, values)


def _t(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def _close(got: torch.Tensor, expected: torch.Tensor, tol: float = 1e-11) -> None:
    assert tuple(got.shape) == tuple(expected.shape), (tuple(got.shape), tuple(expected.shape))
    scale = 1.0 + float(expected.abs().max()) if expected.numel() else 1.0
    err = float((got - expected).abs().max()) if got.numel() else 0.0
    assert err <= tol * scale, f"max error {err:.3e} (scale {scale:.3e})"


# -- one transposed convolution -------------------------------------------------------------
@st.composite
def transposed_layers(draw, ndim: int):
    """A ``conv_transpose{ndim}d`` layer: weight ``(C_in, C_out/g, *k)``, stride ``u``,
    padding ``0 <= p <= d(k-1) + 1``, ``output_padding < max(u, d)``, optional bias, and a
    batch of inputs."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    groups = draw(st.sampled_from([1, 1, 2]))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    k = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    u = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    d = tuple(draw(st.sampled_from([1, 1, 2])) for _ in range(ndim))
    p = tuple(draw(st.integers(0, di * (ki - 1) + 1)) for ki, di in zip(k, d))
    n = tuple(draw(st.integers(1, 6 if ndim == 1 else 4)) for _ in range(ndim))
    out_pad = tuple(draw(st.integers(0, max(ui, di) - 1)) for ui, di in zip(u, d))
    # PyTorch refuses an empty output ((n-1)u - 2p + d(k-1) + op + 1 >= 1): cap p
    p = tuple(min(pi, ((m - 1) * ui + di * (ki - 1) + oi) // 2)
              for pi, m, ui, di, ki, oi in zip(p, n, u, d, k, out_pad))
    w = _dyadic(rng, cin, cout // groups, *k)
    b = _dyadic(rng, cout) if draw(st.booleans()) else None
    x = rng.standard_normal((2, cin, *n))
    return dict(w=w, b=b, stride=u, padding=p, dilation=d, groups=groups,
                output_padding=out_pad, x=x)


def _index_sum_transposed(x, w, b, stride, padding, dilation, groups, out):
    """``y[o, j] = b_o + sum_{c in group(o)} sum_{u i + d a - p = j} w[c, o', a] x[c, i]``
    for ``0 <= j < out``, by explicit loops over input positions and taps."""
    batch, cin, *n = x.shape
    ipg, opg = cin // groups, w.shape[1]
    y = np.zeros((batch, opg * groups, *out))
    for i in np.ndindex(*n):
        for a in np.ndindex(*w.shape[2:]):
            j = tuple(u * ii + d * aa - p for u, ii, d, aa, p in zip(stride, i, dilation, a, padding))
            if not all(0 <= jj < m for jj, m in zip(j, out)):
                continue
            for g in range(groups):
                xs = x[(slice(None), slice(g * ipg, (g + 1) * ipg), *i)]
                y[(slice(None), slice(g * opg, (g + 1) * opg), *j)] += xs @ w[(slice(g * ipg, (g + 1) * ipg), slice(None), *a)]
    if b is not None:
        y += b.reshape(1, -1, *(1,) * len(n))
    return y


def _check_transposed_layer(ndim: int, case: dict) -> None:
    kw = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
              groups=case["groups"])
    op = KernelOperator.from_weight(case["w"], case["b"], transposed=True, **kw)
    assert op.upsample == case["stride"] and op.stride == (1,) * ndim
    assert op.shape == (case["w"].shape[1] * case["groups"], case["w"].shape[0])
    x = torch.from_numpy(case["x"])
    expected = CONV_T[ndim](x, _t(case["w"]), _t(case["b"]), output_padding=case["output_padding"], **kw)
    out = tuple(expected.shape[2:])
    _close(conv_window(op, x, out), expected)
    # any window, even past torch's: explicit index sums
    wide = tuple(m + 3 for m in out)
    reference = _index_sum_transposed(case["x"], case["w"], case["b"], case["stride"],
                                      case["padding"], case["dilation"], case["groups"], wide)
    _close(conv_window(op, x, wide), torch.from_numpy(reference))
    # the window every method computes; for 0 <= p <= d(k-1) it is torch's (output_padding 0)
    try:
        window = op.output_shape(case["x"].shape[2:])
    except ValueError as error:  # large padding on a short input: an empty window
        assert "no output position" in str(error)
        return
    if all(p <= d * (k - 1) for p, d, k in zip(case["padding"], case["dilation"], case["w"].shape[2:])):
        no_pad = CONV_T[ndim](x, _t(case["w"]), _t(case["b"]), **kw)
        assert window == tuple(no_pad.shape[2:])
    inside = torch.from_numpy(_index_sum_transposed(case["x"], case["w"], case["b"], case["stride"],
                                                    case["padding"], case["dilation"],
                                                    case["groups"], window))
    _close(conv_direct(op, x), inside)
    _close(conv_fft(op, x), inside)
    for method in ("direct", "fft", "gemm"):
        _close(OperatorEvaluator(op, tuple(x.shape), method=method)(x), inside)
    linear = torch.from_numpy(_index_sum_transposed(case["x"], case["w"], None, case["stride"],
                                                    case["padding"], case["dilation"],
                                                    case["groups"], window))
    W = dense_matrix(op, case["x"].shape[2:])
    _close((W @ x.flatten(1).T).T.reshape(linear.shape), linear)
    # the torch layout of the operator is a conv_transpose giving the same values
    layout = op.to_weight()  # stride 1 everywhere: an ordinary convolution
    assert layout.transposed == op.upsampled == any(u > 1 for u in case["stride"])
    if layout.transposed:  # the layout has dilation 1: output_padding < stride
        extra = tuple(min(e, u - 1) for e, u in zip(case["output_padding"], layout.stride))
        again = CONV_T[ndim](x, layout.weight, layout.bias, output_padding=extra,
                             **layout.kwargs())
    else:
        again = CONV[ndim](x, layout.weight, layout.bias, **layout.kwargs())
    common = tuple(slice(0, min(a, b)) for a, b in zip(again.shape[2:], expected.shape[2:]))
    _close(again[(..., *common)], expected[(..., *common)])
    # the exact twin: the same operator, bit for bit, both ways
    exact = ConvOperator.from_weight(case["w"], case["b"], transposed=True, **kw)
    assert KernelOperator.from_algebra(exact).allclose(op, rtol=0, atol=0)
    assert op.to_algebra() == exact
    # and the exact operator applied on the same window
    exact_y = apply_operator(exact, case["x"][0], wide).astype(float)
    _close(torch.from_numpy(exact_y), torch.from_numpy(reference[0]))


@settings(deadline=None, max_examples=15)
@given(case=transposed_layers(1))
def test_transposed_conv1d_against_torch_index_sums_and_exact(case):
    _check_transposed_layer(1, case)


@settings(deadline=None, max_examples=12)
@given(case=transposed_layers(2))
def test_transposed_conv2d_against_torch_index_sums_and_exact(case):
    _check_transposed_layer(2, case)


# -- adjoints ----------------------------------------------------------------------------------
@settings(deadline=None, max_examples=20)
@given(ndim=st.sampled_from([1, 2]), seed=st.integers(0, 2**32 - 1),
       s=st.integers(1, 3), k=st.integers(1, 3), p=st.integers(0, 2), d=st.integers(1, 2))
def test_adjoints_are_the_vector_jacobian_products(ndim, seed, s, k, p, d):
    """``A.adjoint()`` applied on the input window is torch's VJP of the layer, for a
    strided conv (its adjoint up-samples) and for a transposed conv (its adjoint strides);
    the exact twin's adjoints are the same operators."""
    rng = np.random.default_rng(seed)
    p = min(p, d * (k - 1))  # torch's transposed window stays non-empty
    n = tuple(int(v) for v in rng.integers(d * (k - 1) + 1, d * (k - 1) + 6, ndim))
    w = _dyadic(rng, 3, 2, *(k,) * ndim)
    x = torch.from_numpy(rng.standard_normal((1, 2, *n))).requires_grad_()
    kw = dict(stride=s, padding=p, dilation=d)
    for transposed in (False, True):
        fn = CONV_T[ndim] if transposed else CONV[ndim]
        if transposed:
            x = torch.from_numpy(rng.standard_normal((1, 3, *n))).requires_grad_()
        y = fn(x, _t(w), **kw)
        v = torch.from_numpy(rng.standard_normal(tuple(y.shape)))
        (vjp,) = torch.autograd.grad(y, x, v)
        op = KernelOperator.from_weight(w, transposed=transposed, **kw)
        adjoint = op.adjoint()
        assert adjoint.stride == op.upsample and adjoint.upsample == op.stride
        _close(conv_window(adjoint, v, n), vjp)
        exact = ConvOperator.from_weight(w, transposed=transposed, **kw).adjoint()
        assert KernelOperator.from_algebra(exact).allclose(adjoint, rtol=0, atol=0)


# -- chains: strided convs, transposed convs, branch sums and skips ----------------------------
@st.composite
def multirate_chains(draw, ndim: int):
    """A chain of 2-4 steps on a zero-extended input, each a *full* layer (a conv with
    padding ``d(k-1)``, a transposed conv with padding 0) so that torch's windows hold the
    whole signal: a conv (stride 1-3), a transposed conv (stride 1-3, coprime to the
    stride so far), a sum of two parallel layers with the same rates, or a skip
    ``x + conv(x)``.  Biases only on the last step (a bias inside would be cut at a window
    border).  Returns torch steps, float and exact operators and an input batch."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    c = draw(st.integers(1, 2))
    n = tuple(draw(st.integers(2, 5 if ndim == 1 else 3)) for _ in range(ndim))
    total_stride = (1,) * ndim
    steps = []
    count = draw(st.integers(2, 4 if ndim == 1 else 3))
    for index in range(count):
        last = index == count - 1

        def layer(kind, c_in, c_out, rate):
            k = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
            d = tuple(draw(st.sampled_from([1, 1, 2])) for _ in range(ndim))
            groups = draw(st.sampled_from([g for g in (1, 2) if c_in % g == 0 and c_out % g == 0]))
            bias = _dyadic(rng, c_out) if last and draw(st.booleans()) else None
            if kind == "conv":
                w = _dyadic(rng, c_out, c_in // groups, *k)
                kw = dict(stride=rate, padding=tuple(di * (ki - 1) for di, ki in zip(d, k)),
                          dilation=d, groups=groups)
                fn = lambda h: CONV[ndim](h, _t(w), _t(bias), **kw)  # noqa: E731
            else:
                w = _dyadic(rng, c_in, c_out // groups, *k)
                kw = dict(stride=rate, padding=0, dilation=d, groups=groups)
                extra = tuple(draw(st.integers(0, max(r, di) - 1)) for r, di in zip(rate, d))
                fn = lambda h: CONV_T[ndim](h, _t(w), _t(bias), output_padding=extra, **kw)  # noqa: E731
            transposed = kind != "conv"
            return (fn, KernelOperator.from_weight(w, bias, transposed=transposed, **kw),
                    ConvOperator.from_weight(w, bias, transposed=transposed, **kw), bias)

        kind = draw(st.sampled_from(["conv", "transpose", "sum", "skip"]))
        c_out = draw(st.integers(1, 2))
        if kind == "skip":
            steps.append(("sum", [(lambda h: h, KernelOperator.identity(c, ndim),
                                   ConvOperator.from_weight(np.eye(c).reshape(c, c, *(1,) * ndim)),
                                   None), layer("conv", c, c, (1,) * ndim)]))
            continue
        sub = draw(st.sampled_from(["conv", "transpose"])) if kind == "sum" else kind
        if sub == "conv":
            rate = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
            total_stride = tuple(a * b for a, b in zip(total_stride, rate))
        else:  # up-sampling after a stride: only when coprime (one multi-rate convolution)
            rate = tuple(draw(st.sampled_from([u for u in (1, 2, 3) if gcd(u, s) == 1]))
                         for s in total_stride)
        parts = [layer(sub, c, c_out, rate) for _ in range(2 if kind == "sum" else 1)]
        steps.append(("sum" if kind == "sum" else "one", parts))
        c = c_out
    x = rng.standard_normal((2, steps[0][1][0][1].in_channels, *n))
    return steps, x


def _torch_chain(steps, x: torch.Tensor) -> torch.Tensor:
    """The chain in torch: a sum extends its terms to the longest window by what the
    zero-extended signal is there, the term's bias (0 without one)."""
    h = x
    for how, parts in steps:
        outs = [fn(h) for fn, _, _, _ in parts]
        size = [max(o.shape[2 + a] for o in outs) for a in range(h.ndim - 2)]
        padded = []
        for o, (_, _, _, bias) in zip(outs, parts):
            b = 0 if bias is None else _t(bias).reshape(1, -1, *(1,) * (h.ndim - 2))
            pad = [v for a in reversed(range(len(size))) for v in (0, size[a] - o.shape[2 + a])]
            padded.append(F.pad(o - b, pad) + b)
        h = sum(padded[1:], padded[0])
    return h


def _operator_chain(steps, which: int):
    total = None
    for _, parts in steps:
        step = parts[0][which]
        for part in parts[1:]:
            step = step + part[which]
        total = step if total is None else step @ total
    return total


def _check_chain(ndim, case):
    steps, x = case
    x = torch.from_numpy(x)
    expected = _torch_chain(steps, x)
    op = _operator_chain(steps, 1)
    _close(conv_window(op, x, tuple(expected.shape[2:])), expected, 1e-10)
    exact = _operator_chain(steps, 2)
    assert (exact.stride, exact.upsample) == (op.stride, op.upsample)
    assert KernelOperator.from_algebra(exact).allclose(op, rtol=1e-12, atol=1e-12)


@PROPERTY
@given(case=multirate_chains(1))
def test_chain_1d_of_strided_and_transposed_convs_equals_torch_and_exact(case):
    _check_chain(1, case)


@PROPERTY
@given(case=multirate_chains(2))
def test_chain_2d_of_strided_and_transposed_convs_equals_torch_and_exact(case):
    _check_chain(2, case)


def test_stride_then_coprime_up_sampling_mixes_both_rates():
    """stride 2, then up-sampling 3, then stride 3: ``down_6 K up_3`` (no torch layer holds
    both rates; zero insertion then a strided conv applies it); biases compose as
    ``K2(1) b1 + b2`` after the up-sampling."""
    rng = np.random.default_rng(5)
    w1, w2, w3 = _dyadic(rng, 2, 1, 3), _dyadic(rng, 2, 3, 2), _dyadic(rng, 1, 3, 3)
    b3 = _dyadic(rng, 1)
    a = KernelOperator.from_weight(w1, stride=2, padding=2)
    t = KernelOperator.from_weight(w2, stride=3, transposed=True)
    c = KernelOperator.from_weight(w3, b3, stride=3, padding=2)
    total = c @ t @ a
    assert (total.stride, total.upsample) == ((6,), (3,))
    x = torch.from_numpy(rng.standard_normal((1, 1, 11)))
    h = F.conv_transpose1d(F.conv1d(x, _t(w1), stride=2, padding=2), _t(w2), stride=3, output_padding=2)
    expected = F.conv1d(h, _t(w3), _t(b3), stride=3, padding=2)
    _close(conv_window(total, x, tuple(expected.shape[2:])), expected)
    exact = (ConvOperator.from_weight(w3, b3, stride=3, padding=2)
             @ ConvOperator.from_weight(w2, stride=3, transposed=True)
             @ ConvOperator.from_weight(w1, stride=2, padding=2))
    assert KernelOperator.from_algebra(exact).allclose(total, rtol=0, atol=1e-14)
    assert exact.upsample == (3,) and exact.stride == (6,)


def test_biases_through_up_sampling_match_the_exact_side():
    """``b = K2(1) b1 + b2`` when the outer layer does not up-sample; a bias before an
    up-sampling is refused with the exact side's words."""
    rng = np.random.default_rng(7)
    w1, b1, w2, b2 = _dyadic(rng, 3, 3, 3, 3), _dyadic(rng, 3), _dyadic(rng, 3, 3, 2, 2), _dyadic(rng, 3)
    up = KernelOperator.from_weight(w1, b1, stride=2, transposed=True)
    conv = KernelOperator.from_weight(w2, b2, padding=1)
    exact = ConvOperator.from_weight(w2, b2, padding=1) @ ConvOperator.from_weight(
        w1, b1, stride=2, transposed=True)
    assert KernelOperator.from_algebra(exact).allclose(conv @ up, rtol=0, atol=1e-14)
    with pytest.raises(ValueError) as float_error:
        up @ conv
    with pytest.raises(ValueError) as exact_error:
        ConvOperator.from_weight(w1, b1, stride=2, transposed=True) @ \
            ConvOperator.from_weight(w2, b2, padding=1)
    assert str(float_error.value) == str(exact_error.value)
    assert "bias before zero-insertion up-sampling" in str(float_error.value)


def test_non_coprime_up_sampling_after_a_stride_is_refused_like_the_exact_side():
    w = np.ones((1, 1, 2))
    strided = (KernelOperator.from_weight(w, stride=2), ConvOperator.from_weight(w, stride=2))
    up = (KernelOperator.from_weight(w, stride=4, transposed=True),
          ConvOperator.from_weight(w, stride=4, transposed=True))
    messages = []
    for which in (0, 1):
        with pytest.raises(ValueError, match="gcd") as error:
            up[which] @ strided[which]
        messages.append(str(error.value))
    assert messages[0] == messages[1]
    # the other order is a single operator down_2 K up_4
    assert (strided[0] @ up[0]).upsample == (4,) and (strided[0] @ up[0]).stride == (2,)


# -- the rest of the algebra keeps the up-sampling ----------------------------------------
def test_structure_keeps_the_up_sampling_and_matches_the_exact_side():
    rng = np.random.default_rng(3)
    w, b = _dyadic(rng, 2, 2, 3, 2), _dyadic(rng, 2)
    op = KernelOperator.from_weight(w, b, stride=(2, 3), padding=(1, 0), transposed=True)
    ex = ConvOperator.from_weight(w, b, stride=(2, 3), padding=(1, 0), transposed=True)
    pairs = [(op + op * 2, ex + ex * 2), (-op, -ex), (op - op.linear_part(), ex - ex.linear_part()),
             (op[1:], ex[1:]), (op.columns([0]), ex.columns([0])), (op.dilate(2), ex.dilate(2)),
             (op.with_bias([1.0, -2.0]), ex.with_bias([1, -2])),
             (vstack([op, op[0]]), _exact_vstack([ex, ex[0]]))]
    for mine, theirs in pairs:
        assert mine.upsample == (2, 3)
        assert KernelOperator.from_algebra(theirs).allclose(mine, rtol=0, atol=0)
    assert op.trimmed().allclose(op, rtol=0, atol=0) and op.trimmed().upsample == (2, 3)
    assert op.to(torch.float32).upsample == (2, 3)
    assert "upsample=(2, 3)" in repr(op)
    with pytest.raises(AttributeError, match="immutable"):
        op.upsample = (1, 1)
    with pytest.raises(ValueError, match="up-sampling"):
        op + KernelOperator.from_weight(w, b, stride=2, padding=(1, 0), transposed=True)
    with pytest.raises(ValueError, match="up-sampling"):
        vstack([op, KernelOperator.from_weight(w, b, stride=2, transposed=True)])
    assert not op.allclose(KernelOperator(op.coeffs, op.low, 1, op.bias))


def _exact_vstack(ops):
    from laurentnet.algebra.operator import vstack as exact_vstack
    return exact_vstack(ops)


def test_bad_up_sampling_input_is_refused_clearly():
    w = np.ones((1, 1, 2))
    for bad in (0, -1, (2, 2)):
        with pytest.raises(ValueError, match="upsample"):
            KernelOperator(torch.ones(1, 1, 2), 0, 1, None, bad)
    with pytest.raises(TypeError, match="upsample"):
        KernelOperator(torch.ones(1, 1, 2), 0, 1, None, 1.5)
    with pytest.raises(TypeError, match="transposed"):
        KernelOperator.from_weight(w, transposed="yes")
    with pytest.raises(ValueError, match="groups"):
        KernelOperator.from_weight(np.ones((3, 1, 2)), groups=2, transposed=True)
    mixed = KernelOperator.from_weight(w, stride=2) @ KernelOperator.from_weight(
        w, stride=3, transposed=True)
    with pytest.raises(ValueError, match="not one PyTorch layer"):
        mixed.to_weight()
    with pytest.raises(ValueError, match="not one PyTorch layer"):
        (ConvOperator.from_weight(w, stride=2) @ ConvOperator.from_weight(
            w, stride=3, transposed=True)).to_weight()
    up = KernelOperator.from_weight(w, stride=2, transposed=True)
    with pytest.raises(ValueError, match="up-sampling operator is not supported"):
        up.output_shape((4,), "circular")
    with pytest.raises(ValueError, match="up-sampling operator is not supported"):
        conv_direct(up, torch.ones(1, 1, 4), "circular")
    with pytest.raises(ValueError, match="layers"):
        OperatorEvaluator(up, (1, 1, 4), layers=[up])
    from laurentnet.numeric import singular_values
    with pytest.raises(ValueError, match="spectrum of an up-sampling operator"):
        singular_values(up, 4)


def test_exact_twin_round_trip_of_a_multirate_operator():
    rng = np.random.default_rng(11)
    total = ConvOperator.from_weight(_dyadic(rng, 2, 2, 3, 3), stride=(3, 1), padding=1) @ \
        ConvOperator.from_weight(_dyadic(rng, 1, 2, 2, 2), stride=(2, 2), transposed=True)
    op = KernelOperator.from_algebra(total)
    assert (op.stride, op.upsample) == (total.stride, total.upsample) == (((3, 1)), (2, 2))
    assert op.to_algebra() == total


# -- networks ----------------------------------------------------------------------------------
@st.composite
def multirate_networks(draw, ndim: int, multirate: bool = False):
    """Random networks (a :class:`NetSpec`, evaluated by torch layer by layer) that mix
    strided convs (stride 1-3, any padding mode), transposed convs and zero-insertion
    up-sampling (factor 1-3, coprime to the stride so far, no bias before them), residual
    skips ``x + conv(x)`` and a two-branch up-sampling block ``convT(x) + conv(up(x))``.
    ``multirate=True`` drops the two restrictions (any factor after any stride, biases
    before up-sampling) and adds ``x + convT_s(conv_s(x))``, a skip around a down- and
    up-sampling pair (branches of different rates): networks with no single strided
    kernel, which collapse to polyphase operators."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    cin = draw(st.integers(1, 2))
    n = tuple(draw(st.integers(4, 8 if ndim == 1 else 6)) for _ in range(ndim))
    spec = NetSpec(ndim, (cin, *n), [], [(cin, *n)], 0)
    rates, biased = [(1,) * ndim], [False]

    def emit(op, shape, rate, bias):
        spec.ops.append(op)
        spec.shapes.append(shape)
        rates.append(rate)
        biased.append(bias)
        return len(spec.shapes) - 1

    def conv(v, cout, stride, mode="zeros", same=False):
        c, *m = spec.shapes[v]
        k = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
        if same:
            k = tuple(2 * (ki // 2) + 1 for ki in k)  # odd: 'same' padding is symmetric
        pad = tuple((ki - 1) // 2 if same else draw(st.integers(0, ki - 1)) for ki in k)
        if mode != "zeros" and any(p >= size for p, size in zip(pad, m)):
            mode = "zeros"
        out = tuple(conv_out(size, ki, s, 1, p, p) for size, ki, s, p in zip(m, k, stride, pad))
        if min(out) < 1:
            return v
        bias = _dyadic(rng, cout) if draw(st.booleans()) else None
        op = Op("conv", (v,), dict(weight=_dyadic(rng, cout, c, *k), bias=bias, stride=stride,
                                   padding=pad, dilation=(1,) * ndim, groups=1, mode=mode,
                                   pairs=tuple((p, p) for p in pad)))
        return emit(op, (cout, *out), tuple(a * b for a, b in zip(rates[v], stride)),
                    biased[v] or bias is not None)

    def up_factor(v):
        return tuple(draw(st.sampled_from([u for u in (1, 2, 3) if gcd(u, s) == 1 or multirate]))
                     for s in rates[v])

    def down_up(v):
        """``v + convT_s(conv_s(v))`` (1x1 conv, stride s; the transposed kernel
        ``n - (m - 1) s`` long gives back the size n)."""
        c, *m = spec.shapes[v]
        s = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
        h = conv_strided_1x1(v, s)
        k = tuple(size - (mm - 1) * si for size, mm, si in zip(m, spec.shapes[h][1:], s))
        h = transposed(h, c, s, k=k, pad=(0,) * ndim, extra=(0,) * ndim)
        if spec.shapes[h] != spec.shapes[v]:
            return v
        return emit(Op("add", (v, h), {}), spec.shapes[v], rates[v], biased[v] or biased[h])

    def conv_strided_1x1(v, s):
        c, *m = spec.shapes[v]
        out = tuple((size - 1) // si + 1 for size, si in zip(m, s))
        bias = _dyadic(rng, c) if draw(st.booleans()) else None
        op = Op("conv", (v,), dict(weight=_dyadic(rng, c, c, *(1,) * ndim), bias=bias, stride=s,
                                   padding=(0,) * ndim, dilation=(1,) * ndim, groups=1,
                                   mode="zeros", pairs=((0, 0),) * ndim))
        return emit(op, (c, *out), tuple(a * b for a, b in zip(rates[v], s)),
                    biased[v] or bias is not None)

    def transposed(v, cout, u, k=None, pad=None, extra=None):
        c, *m = spec.shapes[v]
        k = k or tuple(draw(st.integers(1, 3)) for _ in range(ndim))
        pad = pad or tuple(draw(st.integers(0, ki - 1)) for ki in k)
        extra = extra or tuple(draw(st.integers(0, ui - 1)) for ui in u)
        out = tuple((size - 1) * ui - 2 * p + ki + e for size, ui, p, ki, e in zip(m, u, pad, k, extra))
        if max(out) > 14 or min(out) < 1:
            return v
        bias = _dyadic(rng, cout) if draw(st.booleans()) else None
        op = Op("conv_transpose", (v,), dict(weight=_dyadic(rng, c, cout, *k), bias=bias, stride=u,
                                             padding=pad, output_padding=extra,
                                             dilation=(1,) * ndim, groups=1))
        return emit(op, (cout, *out), rates[v], bias is not None)

    v = 0
    for _ in range(draw(st.integers(1, 4))):
        c = spec.shapes[v][0]
        kind = draw(st.sampled_from(["conv", "transposed", "upsample", "skip", "up_block"]
                                    + ["down_up"] * (2 * multirate)))
        if kind == "conv":
            stride = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
            v = conv(v, draw(st.integers(1, 2)), stride, draw(st.sampled_from(
                ["zeros", "zeros", "reflect", "replicate", "circular"])))
        elif kind == "skip":
            h = conv(v, c, (1,) * ndim, same=True)
            if h != v:
                v = emit(Op("add", (v, h), {}), spec.shapes[v], rates[v], biased[h])
        elif kind == "down_up":
            v = down_up(v)
        elif biased[v] and not multirate:  # no bias before an up-sampling (not shift-invariant)
            continue
        elif kind == "transposed":
            v = transposed(v, draw(st.integers(1, 2)), up_factor(v))
        elif kind == "upsample":
            u = up_factor(v)
            out = tuple((size - 1) * ui + 1 for size, ui in zip(spec.shapes[v][1:], u))
            if max(out) <= 14:
                v = emit(Op("upsample", (v,), dict(factor=u)), (c, *out), rates[v], False)
        else:  # convT(v) + conv(up(v)): the same rates and the same window (n - 1) u + 1
            u = up_factor(v)
            out = tuple((size - 1) * ui + 1 for size, ui in zip(spec.shapes[v][1:], u))
            if max(out) > 14:
                continue
            a = transposed(v, c, u, k=(3,) * ndim, pad=(1,) * ndim, extra=(0,) * ndim)
            up = emit(Op("upsample", (v,), dict(factor=u)), (c, *out), rates[v], False)
            b = conv(up, c, (1,) * ndim, same=True)
            if a != v and b != up:
                v = emit(Op("add", (a, b), dict(coefficients=(0.5, -1.25))), spec.shapes[a],
                         rates[a], biased[a] or biased[b])
    spec.output = v
    return spec


def _check_network(spec, seed, *, exact: bool = True):
    net = build_network(spec, Network)
    result = collapse_numeric(net, spec.input_shape, tight=False)
    x = random_inputs(spec, 2, seed)
    expected = torch_forward(spec, x)
    got = result.apply(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape
    err = np.abs(got - expected).max(axis=(0, 1))
    tol = 1e-10 * (1.0 + np.abs(expected).max(initial=0.0))
    assert (err[result.region] <= tol).all(), (err, result.region, spec)
    if exact:
        reference = collapse(net, spec.input_shape, tight=False)
        assert np.array_equal(result.region, reference.region)
        assert result.periodic == reference.periodic
        assert KernelOperator.from_algebra(reference.operator).allclose(
            result.operator, rtol=1e-11, atol=1e-12)
    return result


@PROPERTY
@given(spec=st.sampled_from([1, 2]).flatmap(lambda d: multirate_networks(d)),
       seed=st.integers(0, 2**16))
def test_multirate_networks_equal_torch_on_the_region_and_the_exact_collapse(spec, seed):
    _check_network(spec, seed)


@settings(deadline=None, max_examples=30)
@given(spec=st.sampled_from([1, 2]).flatmap(lambda d: linear_networks(d, loose=True)),
       seed=st.integers(0, 2**16))
def test_every_network_the_exact_collapse_takes_collapses_in_floats(spec, seed):
    """The package's own family of collapsible networks (transposed convs, up-sampling,
    pools, concat/split, every padding mode): collapse_numeric takes all of them."""
    _check_network(spec, seed)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 3e-4)])
def test_64_channel_encoder_decoder_against_torch(dtype, tol):
    """Real width: a stride-2 conv, a residual block, a stride-3 transposed conv (coprime
    to 2) and a 3x3 conv, 64 channels: the collapsed ``down_2 K up_3`` equals the network
    on its region."""
    rng = np.random.default_rng(0)
    C = 64
    net = Network(2, 3)
    h = net.conv(net.input, rng.normal(0, 0.3, (C, 3, 3, 3)), stride=2)
    r = net.conv(h, rng.normal(0, 0.05, (C, C, 3, 3)), padding=1)
    h = h + r
    h = net.conv_transpose(h, rng.normal(0, 0.05, (C, C, 3, 3)), stride=3)
    h = net.conv(h, rng.normal(0, 0.05, (8, C, 3, 3)), rng.normal(size=8))
    net.set_output(h)
    shape = (3, 15, 15)
    result = collapse_numeric(net, shape, dtype=dtype, tight=False)
    assert (result.operator.stride, result.operator.upsample) == ((2, 2), (3, 3))
    assert result.region.mean() > 0.4
    x = torch.from_numpy(rng.normal(size=(2, *shape)))
    from laurentnet.numeric.network_torch import network_forward
    reference = network_forward(net, x)
    y = result.apply(x).double()
    region = torch.from_numpy(result.region)
    error = (y - reference).abs().amax(dim=(0, 1))[region].max().item()
    assert error / reference.abs().max().item() < tol


def test_walk_budget_refuses_an_up_sampling_network_before_building():
    rng = np.random.default_rng(1)
    net = Network(2, 64)
    h = net.conv_transpose(net.input, rng.normal(size=(64, 64, 3, 3)), stride=3)
    net.set_output(net.conv(h, rng.normal(size=(64, 64, 3, 3)), padding=1))
    with pytest.raises(MemoryBudgetError):
        collapse_numeric(net, (64, 8, 8), budget="1M")


_PEAK = r"""
import json, sys, numpy as np, torch
sys.path.insert(0, sys.argv.pop(1))
from memory_probe import peak_growth, start_peak
from laurentnet.algebra import Network
from laurentnet.algebra.collapse import check_walk_budget
from laurentnet.numeric import collapse_numeric
from laurentnet.numeric.network_collapse import NumericBackend
c, n, up = map(int, sys.argv[1:])
g = np.random.default_rng(0)
net = Network(2, c)
x = net.conv(net.input, g.standard_normal((c, c, 3, 3)), padding=1, stride=1 if up == 1 else 2)
x = net.conv_transpose(x, g.standard_normal((c, c, 3, 3)), stride=up)
x = net.conv(x, g.standard_normal((c, c, 3, 3)), padding=1)
net.set_output(net.conv_transpose(x, g.standard_normal((c, c, 3, 3)), stride=up))
estimate = check_walk_budget(net, net.shapes((c, n, n)), NumericBackend(net, torch.float64))
before = start_peak()
collapse_numeric(net, (c, n, n), tight=False)
print(json.dumps({"estimate": estimate, "grown": peak_growth(before)}))
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="peak memory from /proc (Linux)")
@pytest.mark.parametrize("up", [3])
def test_float_walk_estimate_covers_the_measured_peak_with_up_sampling(up):
    """The memory guard's model of the transposed products (taken transposed, or with the
    up-sampled copy of the inner kernel) against the process's measured peak."""
    done = subprocess.run([sys.executable, "-c", _PEAK, str(HERE), "32", "10", str(up)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["grown"] > 20 * 2**20  # the case is big enough to measure
    assert got["grown"] <= 1.25 * got["estimate"] + 32 * 2**20, got
    assert got["estimate"] <= 8 * got["grown"], got  # and not wildly pessimistic
