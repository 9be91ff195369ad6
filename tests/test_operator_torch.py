"""ConvOperator semantics against PyTorch (and autograd, and explicit index sums).

Every test builds operators with ``ConvOperator.from_weight`` and applies them exactly with
``algebra.apply_operator``; the expected values come from ``torch.nn.functional`` run in
float64 on the same weights and inputs.  With small integer-valued floats both sides are
exact, so they must agree bit for bit; with normal floats to ~1e-10.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from laurentnet.algebra import ConvOperator, apply_operator, block_diag, hstack, vstack
from strategies import (ConvSpec, as_float, assert_close, assert_exact, budget,
                        circular_chains, circular_specs, conv_specs, int_arrays, normal_arrays,
                        torch_conv, torch_conv_circular, torch_conv_transpose, valid_chains,
                        weights)

NDIMS = [1, 2, 3]


def _examples(ndim: int, base: int = 30) -> int:
    return {1: base, 2: max(10, base * 2 // 3), 3: max(6, base // 3)}[ndim]


# -- 1. one operator ------------------------------------------------------------------------
@pytest.mark.parametrize("ndim", NDIMS)
@pytest.mark.parametrize("kind", ["int", "normal"])
def test_single_conv_zero_padding_matches_torch(ndim, kind):
    @settings(max_examples=budget(_examples(ndim, 25)))
    @given(data=st.data(), spec=conv_specs(ndim), with_bias=st.booleans())
    def check(data, spec, with_bias):
        w = data.draw(weights(spec.weight_shape, kind), label="w")
        b = data.draw(weights((spec.cout,), kind), label="b") if with_bias else None
        x = data.draw(weights((spec.cin, *spec.n), kind), label="x")
        op = ConvOperator.from_weight(w, b, **spec.kwargs())
        assert op.shape == (spec.cout, spec.cin)
        expected = torch_conv(x, w, b, spec)
        got = apply_operator(op, x, spec.out_shape)
        if kind == "int":
            assert_exact(got, expected)
        else:
            assert_close(as_float(got), expected)
    check()


@pytest.mark.parametrize("ndim", [1, 2])
def test_from_torch_tensors_matches_numpy(ndim):
    """Weights given as torch tensors (float32 and float64) give the same operator, and it
    still matches torch's own float64 convolution on those (widened) weights."""
    @settings(max_examples=budget(10))
    @given(data=st.data(), spec=conv_specs(ndim))
    def check(data, spec):
        w = data.draw(normal_arrays(spec.weight_shape, np.float32), label="w")
        x = data.draw(normal_arrays((spec.cin, *spec.n)), label="x")
        op = ConvOperator.from_weight(torch.from_numpy(w), **spec.kwargs())
        assert op == ConvOperator.from_weight(w, **spec.kwargs())
        assert op == ConvOperator.from_weight(torch.from_numpy(w.astype(np.float64)),
                                              **spec.kwargs())
        assert_close(as_float(apply_operator(op, torch.from_numpy(x), spec.out_shape)),
                     torch_conv(x, w.astype(np.float64), None, spec))
    check()


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("ndim", [1, 2])
def test_padding_strings_match_torch(ndim):
    """``'valid'`` and ``'same'`` (also even kernels, where torch pads asymmetrically)."""
    @settings(max_examples=budget(15))
    @given(data=st.data(), spec=conv_specs(ndim, max_stride=1),
           mode=st.sampled_from(["valid", "same"]))
    def check(data, spec, mode):
        w = data.draw(int_arrays(spec.weight_shape), label="w")
        if mode == "valid":
            spec2 = ConvSpec(ndim, spec.cin, spec.cout, spec.groups, spec.kernel, spec.stride,
                             spec.dilation, (0,) * ndim,
                             tuple(max(n, d * (k - 1) + 1) for n, d, k in
                                   zip(spec.n, spec.dilation, spec.kernel)))
            out = spec2.out_shape
        else:
            spec2, out = spec, spec.n
        x = data.draw(int_arrays((spec.cin, *spec2.n)), label="x")
        op = ConvOperator.from_weight(w, stride=1, padding=mode, dilation=spec.dilation,
                                      groups=spec.groups)
        expected = torch_conv(x, w, None, spec2, padding=mode)
        assert expected.shape[1:] == tuple(out)
        assert_exact(apply_operator(op, x, out), expected)
    check()


@pytest.mark.parametrize("ndim", NDIMS)
def test_single_conv_circular_matches_torch(ndim):
    @settings(max_examples=budget(_examples(ndim, 25)))
    @given(data=st.data(), spec=circular_specs(ndim), with_bias=st.booleans())
    def check(data, spec, with_bias):
        w = data.draw(int_arrays(spec.weight_shape), label="w")
        b = data.draw(int_arrays((spec.cout,)), label="b") if with_bias else None
        x = data.draw(int_arrays((spec.cin, *spec.n)), label="x")
        op = ConvOperator.from_weight(w, b, **spec.kwargs())
        expected = torch_conv_circular(x, w, b, spec)
        assert expected.shape[1:] == tuple(n // s for n, s in zip(spec.n, spec.stride))
        assert_exact(apply_operator(op, x, periodic=True), expected)
    check()


def test_circular_requires_stride_to_divide_size():
    op = ConvOperator.from_weight(np.ones((1, 1, 3)), stride=2, padding=1)
    with pytest.raises(ValueError, match="divide"):
        apply_operator(op, np.ones((1, 5)), periodic=True)


# -- 2. composition -------------------------------------------------------------------------
def _random_layers(data, specs, kind="int", bias=True):
    ws, bs = [], []
    for i, spec in enumerate(specs):
        ws.append(data.draw(weights(spec.weight_shape, kind), label=f"w{i}"))
        bs.append(data.draw(weights((spec.cout,), kind), label=f"b{i}") if bias else None)
    return ws, bs


def _compose(specs, ws, bs):
    ops = [ConvOperator.from_weight(w, b, **spec.kwargs()) for spec, w, b in zip(specs, ws, bs)]
    total = ops[0]
    for op in ops[1:]:
        total = op @ total
    return total


@pytest.mark.parametrize("ndim", NDIMS)
@pytest.mark.parametrize("kind", ["int", "normal"])
def test_composition_valid_matches_sequential_torch(ndim, kind):
    """``A3 @ A2 @ A1`` (strides, dilations, groups, biases; padding in the first layer
    only) equals running the torch convs one after the other, on torch's whole window."""
    @settings(max_examples=budget(_examples(ndim, 25)))
    @given(data=st.data(), specs=valid_chains(ndim))
    def check(data, specs):
        ws, bs = _random_layers(data, specs, kind)
        x = data.draw(weights((specs[0].cin, *specs[0].n), kind), label="x")
        y = x
        for spec, w, b in zip(specs, ws, bs):
            y = torch_conv(y, w, b, spec)
        total = _compose(specs, ws, bs)
        expected_stride = tuple(int(np.prod([s.stride[a] for s in specs])) for a in range(ndim))
        assert total.stride == expected_stride  # noble identity: strides move to the end
        got = apply_operator(total, x, y.shape[1:])
        if kind == "int":
            assert_exact(got, y)
        else:
            assert_close(as_float(got), y)
    check()


@pytest.mark.parametrize("ndim", NDIMS)
def test_composition_circular_matches_sequential_torch(ndim):
    @settings(max_examples=budget(_examples(ndim, 20)))
    @given(data=st.data(), specs=circular_chains(ndim, max_layers=3 if ndim < 3 else 2))
    def check(data, specs):
        ws, bs = _random_layers(data, specs)
        x = data.draw(int_arrays((specs[0].cin, *specs[0].n)), label="x")
        y = x
        for spec, w, b in zip(specs, ws, bs):
            y = torch_conv_circular(y, w, b, spec)
        assert_exact(apply_operator(_compose(specs, ws, bs), x, periodic=True), y)
    check()


@pytest.mark.parametrize("ndim", [1, 2])
def test_multirate_composition_matches_torch(ndim):
    """Up-sampling layers in a chain: ``conv_transpose`` (any padding, output_padding) then
    an unpadded strided conv, and ``conv_transpose`` (padding 0) then ``conv_transpose``;
    both compose to one ``down_s K up_u`` that equals torch on torch's whole window."""
    @settings(max_examples=budget(20 if ndim == 1 else 12))
    @given(data=st.data(), first=conv_specs(ndim), second=conv_specs(ndim),
           then_transposed=st.booleans())
    def check(data, first, second, then_transposed):
        u1 = first.stride
        w1 = data.draw(int_arrays(first.transposed_weight_shape), label="w1")
        b1 = data.draw(int_arrays((first.cout,)), label="b1")
        x = data.draw(int_arrays((first.cin, *first.n)), label="x")
        if then_transposed:
            first = ConvSpec(ndim, first.cin, first.cout, first.groups, first.kernel, u1,
                             first.dilation, (0,) * ndim, first.n)
            out_pad1 = (0,) * ndim
        else:
            out_pad1 = tuple(data.draw(st.integers(0, max(s, d) - 1))
                             for s, d in zip(u1, first.dilation))
        size1 = [(n - 1) * s - 2 * p + d * (k - 1) + q + 1 for n, s, p, d, k, q in
                 zip(first.n, u1, first.padding, first.dilation, first.kernel, out_pad1)]
        assume(all(m >= 1 for m in size1))
        y1 = torch_conv_transpose(x, w1, b1, stride=u1, padding=first.padding,
                                  dilation=first.dilation, groups=first.groups,
                                  output_padding=out_pad1)
        A1 = ConvOperator.from_weight(w1, b1, transposed=True, **first.kwargs())
        g2 = data.draw(st.sampled_from([g for g in range(1, first.cout + 1)
                                        if first.cout % g == 0]), label="g2")
        c2 = g2 * data.draw(st.integers(1, 2), label="c2")
        if then_transposed:
            # the up-sampling of layer 2 acts on a bias-free signal (else not shift-invariant)
            b1 = np.zeros_like(b1)
            A1 = ConvOperator.from_weight(w1, transposed=True, **first.kwargs())
            y1 = torch_conv_transpose(x, w1, None, stride=u1, padding=first.padding,
                                      dilation=first.dilation, groups=first.groups)
            w2 = data.draw(int_arrays((first.cout, c2 // g2, *second.kernel)), label="w2")
            b2 = data.draw(int_arrays((c2,)), label="b2")
            out_pad2 = tuple(data.draw(st.integers(0, max(s, d) - 1))
                             for s, d in zip(second.stride, second.dilation))
            size2 = [(n - 1) * s - 2 * p + d * (k - 1) + q + 1 for n, s, p, d, k, q in
                     zip(y1.shape[1:], second.stride, second.padding, second.dilation,
                         second.kernel, out_pad2)]
            assume(all(m >= 1 for m in size2))
            y2 = torch_conv_transpose(y1, w2, b2, stride=second.stride, padding=second.padding,
                                      dilation=second.dilation, groups=g2,
                                      output_padding=out_pad2)
            A2 = ConvOperator.from_weight(w2, b2, transposed=True, stride=second.stride,
                                          padding=second.padding, dilation=second.dilation,
                                          groups=g2)
        else:
            w2 = data.draw(int_arrays((c2, first.cout // g2, *second.kernel)), label="w2")
            b2 = data.draw(int_arrays((c2,)), label="b2")
            spec2 = ConvSpec(ndim, first.cout, c2, g2, second.kernel, second.stride,
                             second.dilation, (0,) * ndim, y1.shape[1:])
            assume(all(o >= 1 for o in spec2.out_shape))
            y2 = torch_conv(y1, w2, b2, spec2)
            A2 = ConvOperator.from_weight(w2, b2, **spec2.kwargs())
        total = A2 @ A1
        assert_exact(apply_operator(total, x, y2.shape[1:]), y2)
    check()


def test_composition_is_associative_on_signals():
    """(A3 A2) A1 and A3 (A2 A1) act identically (and equal torch), strides included."""
    rng = np.random.default_rng(0)
    specs = [ConvSpec(1, 2, 3, 1, (3,), (2,), (1,), (1,), (17,)),
             ConvSpec(1, 3, 3, 3, (2,), (1,), (2,), (0,), (9,)),
             ConvSpec(1, 3, 1, 1, (2,), (2,), (1,), (0,), (7,))]
    ws = [rng.integers(-3, 4, s.weight_shape).astype(float) for s in specs]
    bs = [rng.integers(-3, 4, (s.cout,)).astype(float) for s in specs]
    A = [ConvOperator.from_weight(w, b, **s.kwargs()) for s, w, b in zip(specs, ws, bs)]
    left, right = (A[2] @ A[1]) @ A[0], A[2] @ (A[1] @ A[0])
    assert left == right
    x = rng.integers(-3, 4, (2, 17)).astype(float)
    y = x
    for s, w, b in zip(specs, ws, bs):
        y = torch_conv(y, w, b, s)
    assert_exact(apply_operator(left, x, y.shape[1:]), y)


# -- 3. sums, identity, adjoint, dilation -------------------------------------------------
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_sum_equals_parallel_branches(ndim):
    @settings(max_examples=budget(_examples(ndim, 20)))
    @given(data=st.data(), a=conv_specs(ndim, groups=False), b_groups=st.booleans())
    def check(data, a, b_groups):
        kmax = {1: 4, 2: 3, 3: 2}[ndim]
        g = a.cin if (b_groups and a.cin == a.cout) else 1  # depthwise second branch
        b = ConvSpec(ndim, a.cin, a.cout, g,
                     tuple(data.draw(st.integers(1, kmax)) for _ in range(ndim)), a.stride,
                     tuple(data.draw(st.integers(1, 2)) for _ in range(ndim)),
                     tuple(data.draw(st.integers(0, 2)) for _ in range(ndim)), a.n)
        if any(o < 1 for o in b.out_shape):
            return
        wa, wb = (data.draw(int_arrays(s.weight_shape)) for s in (a, b))
        ba, bb = (data.draw(int_arrays((a.cout,))) for _ in range(2))
        x = data.draw(int_arrays((a.cin, *a.n)))
        A = ConvOperator.from_weight(wa, ba, **a.kwargs())
        B = ConvOperator.from_weight(wb, bb, **b.kwargs())
        out = tuple(min(p, q) for p, q in zip(a.out_shape, b.out_shape))
        window = (slice(None), *(slice(0, m) for m in out))
        ya, yb = torch_conv(x, wa, ba, a)[window], torch_conv(x, wb, bb, b)[window]
        assert_exact(apply_operator(A + B, x, out), ya + yb)
        assert_exact(apply_operator(A - B, x, out), ya - yb)
        assert_exact(apply_operator(3 * A, x, out), 3 * ya)
        assert_exact(apply_operator(A * -0.5, x, out), -0.5 * ya)
    check()


@pytest.mark.parametrize("ndim", [1, 2])
def test_identity_is_a_skip_connection(ndim):
    """``I + A2 A1`` (stride 1, 'same' padding) equals ``x + conv2(conv1(x))`` away from
    the border, and ``I @ A == A @ I == A`` on signals."""
    @settings(max_examples=budget(15))
    @given(data=st.data(), c=st.integers(1, 3), mid=st.integers(1, 3),
           n=st.integers(6, 9) if ndim == 1 else st.integers(5, 6))
    def check(data, c, mid, n):
        one, size = (1,) * ndim, (n,) * ndim
        s1 = ConvSpec(ndim, c, mid, 1, (3,) * ndim, one, one, one, size)
        s2 = ConvSpec(ndim, mid, c, 1, (3,) * ndim, one, one, (0,) * ndim, size)
        w1, w2 = data.draw(int_arrays(s1.weight_shape)), data.draw(int_arrays(s2.weight_shape))
        x = data.draw(int_arrays((c, *(n,) * ndim)))
        A1 = ConvOperator.from_weight(w1, padding=1)
        A2 = ConvOperator.from_weight(w2, padding=1)
        I = ConvOperator.identity(A1.ring, c)
        # layer 2 with padding 0 on the output of a padded layer 1: exact on the window
        # [0, n-2) shifted by one (the residual crops the first/last pixel).
        inner = torch_conv(torch_conv(x, w1, None, s1), w2, None, s2)
        crop = (slice(None), *(slice(1, n - 1),) * ndim)
        expected = x[crop] + inner
        block = I + A2 @ A1
        got = apply_operator(block, x, (n,) * ndim)[crop]
        assert_exact(got, expected)
        assert ConvOperator.identity(A1.ring, mid) @ A1 == A1 and A1 @ I == A1
        assert_exact(apply_operator(I, x, (n,) * ndim), x)
    check()


@pytest.mark.parametrize("ndim", NDIMS)
def test_adjoint_equals_conv_transpose_and_autograd(ndim):
    @settings(max_examples=budget(_examples(ndim, 25)))
    @given(data=st.data(), spec=conv_specs(ndim), kind=st.sampled_from(["int", "normal"]))
    def check(data, spec, kind):
        w = data.draw(weights(spec.weight_shape, kind), label="w")
        b = data.draw(weights((spec.cout,), kind), label="b")
        g = data.draw(weights((spec.cout, *spec.out_shape), kind), label="g")
        op = ConvOperator.from_weight(w, b, **spec.kwargs())
        adj = op.adjoint()
        assert adj.shape == (spec.cin, spec.cout) and adj.upsample == spec.stride
        assert not adj.has_bias
        # conv_transpose with the same weight; output_padding chosen to reach size n
        natural = tuple((L - 1) * s - 2 * p + d * (k - 1) + 1 for L, s, p, d, k in
                        zip(spec.out_shape, spec.stride, spec.padding, spec.dilation, spec.kernel))
        out_pad = tuple(n - m for n, m in zip(spec.n, natural))
        assert all(0 <= q < s for q, s in zip(out_pad, spec.stride))
        expected = torch_conv_transpose(g, w, None, stride=spec.stride, padding=spec.padding,
                                        dilation=spec.dilation, groups=spec.groups,
                                        output_padding=out_pad)
        got = apply_operator(adj, g, spec.n)
        # the vector-Jacobian product of the conv (bias does not matter)
        x = torch.zeros((1, spec.cin, *spec.n), dtype=torch.float64, requires_grad=True)
        y = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d,
             3: torch.nn.functional.conv3d}[ndim](x, torch.from_numpy(w), torch.from_numpy(b),
                                                  **spec.kwargs())
        (grad,) = torch.autograd.grad(y, x, torch.from_numpy(g)[None])
        if kind == "int":
            assert_exact(got, expected)
            assert_exact(got, grad[0].numpy())
        else:
            assert_close(as_float(got), expected)
            assert_close(as_float(got), grad[0].numpy())
        assert adj.adjoint() == op.linear_part()
    check()


@pytest.mark.parametrize("ndim", NDIMS)
def test_transposed_from_weight_matches_conv_transpose(ndim):
    @settings(max_examples=budget(_examples(ndim, 25)))
    @given(data=st.data(), spec=conv_specs(ndim), with_bias=st.booleans())
    def check(data, spec, with_bias):
        # a transposed conv from cin to cout channels; its input has size spec.n
        w = data.draw(int_arrays(spec.transposed_weight_shape), label="w")
        b = data.draw(int_arrays((spec.cout,)), label="b") if with_bias else None
        x = data.draw(int_arrays((spec.cin, *spec.n)), label="x")
        out_pad = tuple(data.draw(st.integers(0, max(s, d) - 1))
                        for s, d in zip(spec.stride, spec.dilation))
        size = [(n - 1) * s - 2 * p + d * (k - 1) + q + 1 for n, s, p, d, k, q in
                zip(spec.n, spec.stride, spec.padding, spec.dilation, spec.kernel, out_pad)]
        assume(all(m >= 1 for m in size))
        expected = torch_conv_transpose(x, w, b, stride=spec.stride, padding=spec.padding,
                                        dilation=spec.dilation, groups=spec.groups,
                                        output_padding=out_pad)
        op = ConvOperator.from_weight(w, b, transposed=True, **spec.kwargs())
        assert op.shape == (spec.cout, spec.cin) and op.upsample == spec.stride
        assert_exact(apply_operator(op, x, expected.shape[1:]), expected)
    check()


@pytest.mark.parametrize("ndim", NDIMS)
def test_dilate_equals_torch_dilation(ndim):
    """``from_weight(w, padding=p).dilate(d)`` is torch's conv with dilation d, padding d*p."""
    @settings(max_examples=budget(_examples(ndim, 20)))
    @given(data=st.data(), spec=conv_specs(ndim, max_dilation=3))
    def check(data, spec):
        d = spec.dilation
        w = data.draw(int_arrays(spec.weight_shape), label="w")
        b = data.draw(int_arrays((spec.cout,)), label="b")
        dilated = ConvSpec(ndim, spec.cin, spec.cout, spec.groups, spec.kernel, spec.stride, d,
                           tuple(di * p for di, p in zip(d, spec.padding)), spec.n)
        if any(o < 1 for o in dilated.out_shape):
            return
        x = data.draw(int_arrays((spec.cin, *spec.n)), label="x")
        op = ConvOperator.from_weight(w, b, stride=spec.stride, padding=spec.padding,
                                      groups=spec.groups).dilate(d)
        assert op.stride == spec.stride
        assert_exact(apply_operator(op, x, dilated.out_shape), torch_conv(x, w, b, dilated))
        assert op == ConvOperator.from_weight(w, b, **dilated.kwargs())
    check()


# -- channel structure ----------------------------------------------------------------------
@pytest.mark.parametrize("ndim", [1, 2])
def test_block_diag_vstack_hstack_split_match_torch(ndim):
    @settings(max_examples=budget(15))
    @given(data=st.data(), spec=conv_specs(ndim, groups=False), parts=st.integers(1, 3))
    def check(data, spec, parts):
        cin, cout = spec.cin, spec.cout
        ws = [data.draw(int_arrays(spec.weight_shape)) for _ in range(parts)]
        bs = [data.draw(int_arrays((cout,))) for _ in range(parts)]
        ops = [ConvOperator.from_weight(w, b, **spec.kwargs()) for w, b in zip(ws, bs)]
        out = spec.out_shape
        # block_diag == grouped conv with the weights stacked along the output axis
        xg = data.draw(int_arrays((cin * parts, *spec.n)))
        grouped = ConvSpec(ndim, cin * parts, cout * parts, parts, spec.kernel, spec.stride,
                           spec.dilation, spec.padding, spec.n)
        expected = torch_conv(xg, np.concatenate(ws), np.concatenate(bs), grouped)
        assert_exact(apply_operator(block_diag(ops), xg, out), expected)
        # vstack == concatenation of outputs of parallel convs on the same input
        x = data.draw(int_arrays((cin, *spec.n)))
        ys = [torch_conv(x, w, b, spec) for w, b in zip(ws, bs)]
        assert_exact(apply_operator(vstack(ops), x, out), np.concatenate(ys))
        # hstack == sum of convs on the channel blocks of a concatenated input
        expected = sum(torch_conv(xg[i * cin:(i + 1) * cin], w, b, spec)
                       for i, (w, b) in enumerate(zip(ws, bs)))
        assert_exact(apply_operator(hstack(ops), xg, out), expected)
        # channel split == rows of the output
        rows = data.draw(st.lists(st.integers(0, cout - 1), min_size=1, max_size=3))
        assert_exact(apply_operator(ops[0][rows], x, out), ys[0][rows])
        assert_exact(apply_operator(ops[0][1:], x, out) if cout > 1 else
                     apply_operator(ops[0][0], x, out), ys[0][1:] if cout > 1 else ys[0][:1])
    check()


def test_zero_operator_and_bias_only_composition():
    rng = np.random.default_rng(4)
    w = rng.integers(-3, 4, (3, 2, 3)).astype(float)
    b = np.array([1.0, -2.0, 0.5])
    A = ConvOperator.from_weight(w, b, stride=2, padding=1)
    Z = ConvOperator.zero(A.ring, 3, 2, stride=2)
    assert Z.shape == (3, 2) and not Z.has_bias and Z.support() is None
    x = rng.integers(-3, 4, (2, 9)).astype(float)
    spec = ConvSpec(1, 2, 3, 1, (3,), (2,), (1,), (1,), (9,))
    assert_exact(apply_operator(Z, x, spec.out_shape), np.zeros((3, *spec.out_shape)))
    assert A + Z == A and A - A == Z
    # anything after a zero kernel sees only the bias: y = K2(1) b1 + b2 everywhere
    w2 = rng.integers(-3, 4, (1, 3, 2)).astype(float)
    Zb = ConvOperator.from_weight(np.zeros((3, 2, 3)), b, stride=2, padding=1)
    y1 = torch_conv(x, np.zeros((3, 2, 3)), b, spec)
    spec2 = ConvSpec(1, 3, 1, 1, (2,), (1,), (1,), (0,), y1.shape[1:])
    y2 = torch_conv(y1, w2, np.array([3.0]), spec2)
    total = ConvOperator.from_weight(w2, np.array([3.0])) @ Zb
    assert_exact(apply_operator(total, x, y2.shape[1:]), y2)
    assert np.all(y2 == w2.sum(axis=2) @ b + 3.0)


# -- evaluation ---------------------------------------------------------------------------
@pytest.mark.parametrize("ndim", NDIMS)
def test_at_one_is_the_response_to_a_constant_image(ndim):
    """On a constant image ``c`` a conv gives ``K(1) c + b`` wherever it does not touch the
    zero padding (torch with padding 0)."""
    @settings(max_examples=budget(_examples(ndim, 15)))
    @given(data=st.data(), spec=conv_specs(ndim))
    def check(data, spec):
        w = data.draw(int_arrays(spec.weight_shape), label="w")
        b = data.draw(int_arrays((spec.cout,)), label="b")
        c = data.draw(int_arrays((spec.cin,)), label="c")
        op = ConvOperator.from_weight(w, b, **spec.kwargs())
        valid = ConvSpec(ndim, spec.cin, spec.cout, spec.groups, spec.kernel, spec.stride,
                         spec.dilation, (0,) * ndim,
                         tuple(d * (k - 1) + 1 for d, k in zip(spec.dilation, spec.kernel)))
        x = np.broadcast_to(c.reshape((-1,) + (1,) * ndim), (spec.cin, *valid.n)).copy()
        y = torch_conv(x, w, b, valid).reshape(spec.cout)
        K1 = np.array(op.at_one().tolist(), dtype=object)
        got = K1.dot(c.astype(int).astype(object)) + np.array(
            [op.bias_vector()[o] for o in range(spec.cout)], dtype=object)
        assert_exact(got, y)
    check()


@pytest.mark.parametrize("ndim", [1, 2])
def test_symbol_on_torus_diagonalises_circular_conv(ndim):
    """DFT of a circular conv output = K(e^{2 pi i k/n}) @ DFT of the input, per frequency,
    with DFT ``X(w) = sum_j x[j] w^j`` (numpy: ``n * ifft``)."""
    @settings(max_examples=budget(15))
    @given(data=st.data(), spec=circular_specs(ndim, max_stride=1))
    def check(data, spec):
        w = data.draw(normal_arrays(spec.weight_shape), label="w")
        x = data.draw(normal_arrays((spec.cin, *spec.n)), label="x")
        y = torch_conv_circular(x, w, None, spec)
        axes = tuple(range(1, ndim + 1))
        size = int(np.prod(spec.n))
        X = np.fft.ifftn(x, axes=axes) * size
        Y = np.fft.ifftn(y, axes=axes) * size
        op = ConvOperator.from_weight(w, **spec.kwargs())
        for freq in itertools.islice(np.ndindex(*spec.n), 12):
            point = [np.exp(2j * np.pi * f / n) for f, n in zip(freq, spec.n)]
            K = op.evaluate(point)
            assert isinstance(K, np.ndarray) and K.shape == (spec.cout, spec.cin)
            np.testing.assert_allclose(K @ X[(slice(None), *freq)], Y[(slice(None), *freq)],
                                       rtol=1e-9, atol=1e-9)
    check()


def test_evaluate_exact_point_and_explicit_formula():
    """``K(z) = sum_a w[a] z^(p - d a)`` at exact points, by hand."""
    import sympy
    w = np.array([[[1.0, -2.0, 0.5]]])
    op = ConvOperator.from_weight(w, padding=3, dilation=2)
    z = sympy.Rational(3, 2)
    expected = 1 * z**3 - 2 * z**1 + sympy.Rational(1, 2) * z**-1
    assert op.evaluate([z]) == sympy.Matrix([[expected]])
    assert op.at_one() == sympy.Matrix([[sympy.Rational(-1, 2)]])
