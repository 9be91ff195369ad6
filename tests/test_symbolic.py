"""Symbolic operators (every weight its own symbol), display, and clear errors on bad input."""
from __future__ import annotations

import numpy as np
import pytest
import sympy
from hypothesis import given, settings, strategies as st
from sympy.polys.domains import QQ

from laurentnet.algebra import (ConvOperator, LaurentRing, apply_operator, block_diag, hstack,
                     laurent_ring, vstack)
from strategies import ConvSpec, assert_exact, budget, torch_conv, valid_chains


def names(prefix: str, shape) -> list[tuple[tuple[int, ...], sympy.Symbol]]:
    """The documented naming ``{prefix}_{indices}`` (indices concatenated, all < 10)."""
    assert max(shape) <= 10
    return [(idx, sympy.Symbol(f"{prefix}_{''.join(map(str, idx))}")) for idx in np.ndindex(*shape)]


def symbolic_of(prefix: str, spec: ConvSpec, bias: bool = True) -> ConvOperator:
    return ConvOperator.symbolic(prefix, spec.cout, spec.cin, spec.kernel, ndim=spec.ndim,
                                 bias=bias, **spec.kwargs())


# -- composition then substitution --------------------------------------------------------
@pytest.mark.parametrize("ndim", [1, 2])
def test_symbolic_composition_then_subs_equals_numeric_composition(ndim):
    @settings(max_examples=budget(15 if ndim == 1 else 10))
    @given(data=st.data(), specs=valid_chains(ndim, max_layers=3 if ndim == 1 else 2))
    def check(data, specs):
        prefixes = "abc"
        sym_ops, num_ops, values, ws, bs = [], [], {}, [], []
        for prefix, spec in zip(prefixes, specs):
            op = symbolic_of(prefix, spec)
            expected_symbols = {s for _, s in names(prefix, spec.weight_shape)} | \
                {sympy.Symbol(f"b_{prefix}_{o}") for o in range(spec.cout)}
            assert op.free_symbols == expected_symbols
            w = np.zeros(spec.weight_shape)
            for idx, s in names(prefix, spec.weight_shape):
                w[idx] = values[s] = data.draw(st.integers(-3, 3))
            b = np.zeros(spec.cout)
            for o in range(spec.cout):
                b[o] = values[sympy.Symbol(f"b_{prefix}_{o}")] = data.draw(st.integers(-3, 3))
            sym_ops.append(op)
            num_ops.append(ConvOperator.from_weight(w, b, **spec.kwargs()))
            ws.append(w)
            bs.append(b)
        sym_total, num_total = sym_ops[0], num_ops[0]
        for s_op, n_op in zip(sym_ops[1:], num_ops[1:]):
            sym_total, num_total = s_op @ sym_total, n_op @ num_total
        assert sym_total.free_symbols == set(values)
        substituted = sym_total.subs(values)
        assert not substituted.free_symbols and substituted.ring.domain == QQ
        assert substituted == num_total
        # and, independently of the numeric algebra, equal to torch run layer by layer
        x = np.array(data.draw(st.lists(st.integers(-3, 3), min_size=int(np.prod(
            (specs[0].cin, *specs[0].n))), max_size=int(np.prod((specs[0].cin, *specs[0].n))))),
            dtype=float).reshape(specs[0].cin, *specs[0].n)
        y = x
        for spec, w, b in zip(specs, ws, bs):
            y = torch_conv(y, w, b, spec)
        assert_exact(apply_operator(substituted, x, y.shape[1:]), y)
    check()


def test_partial_subs_keeps_remaining_symbols():
    A = ConvOperator.symbolic("a", 1, 1, 2, bias=True)
    half = A.subs({"a_000": 2, sympy.Symbol("b_a_0"): sympy.Rational(1, 2)})
    assert half.free_symbols == {sympy.Symbol("a_001")}
    z = half.ring.symbols[0]
    assert sympy.expand(half.as_matrix()[0, 0] - (2 + sympy.Symbol("a_001") / z)) == 0
    assert half.bias_vector() == sympy.Matrix([sympy.Rational(1, 2)])
    full = half.subs({"a_001": -1})
    assert full.ring.domain == QQ and not full.free_symbols


# -- exact application to symbolic signals ------------------------------------------------
@pytest.mark.parametrize("ndim", [1, 2])
def test_symbolic_conv_on_symbolic_signal_equals_index_sums(ndim):
    """``y[o, i] = b_o + sum_{c', a} w[o, c', a] x[c, s i + d a - p]`` (zero outside the
    array), expanded by hand in sympy, for symbolic weights *and* symbolic inputs."""
    specs = {1: [ConvSpec(1, 2, 2, 1, (3,), (2,), (1,), (1,), (7,)),
                 ConvSpec(1, 4, 2, 2, (2,), (1,), (2,), (2,), (5,))],
             2: [ConvSpec(2, 2, 2, 2, (2, 3), (1, 2), (2, 1), (1, 1), (4, 4))]}[ndim]
    for spec in specs:
        xs = np.empty((spec.cin, *spec.n), dtype=object)
        for idx in np.ndindex(*xs.shape):
            xs[idx] = sympy.Symbol(f"x_{'_'.join(map(str, idx))}")
        ring = LaurentRing(" ".join(f"z{i}" for i in range(ndim)), QQ[list(xs.flat)])
        op = ConvOperator.symbolic("w", spec.cout, spec.cin, spec.kernel, ring=ring, bias=True,
                                   **spec.kwargs())
        y = apply_operator(op, xs, spec.out_shape)
        assert y.shape == (spec.cout, *spec.out_shape)
        ipg, opg = spec.cin // spec.groups, spec.cout // spec.groups
        w = dict(names("w", spec.weight_shape))
        for o in range(spec.cout):
            for i in np.ndindex(*spec.out_shape):
                expected = sympy.Symbol(f"b_w_{o}")
                for cl in range(ipg):
                    c = (o // opg) * ipg + cl
                    for a in np.ndindex(*spec.kernel):
                        j = tuple(s * ii + d * aa - p for s, ii, d, aa, p in
                                  zip(spec.stride, i, spec.dilation, a, spec.padding))
                        if all(0 <= jj < n for jj, n in zip(j, spec.n)):
                            expected += w[(o, cl, *a)] * xs[(c, *j)]
                assert sympy.expand(y[(o, *i)] - expected) == 0, (o, i)


def test_symbolic_adjoint_and_at_one():
    A = ConvOperator.symbolic("a", 2, 1, 3, padding=1, dilation=2)
    z = A.ring.symbols[0]
    a = {idx: s for idx, s in names("a", (2, 1, 3))}
    for o in range(2):
        expected = sum(a[(o, 0, k)] * z ** (1 - 2 * k) for k in range(3))
        assert sympy.expand(A.as_matrix()[o, 0] - expected) == 0
        assert sympy.expand(A.adjoint().as_matrix()[0, o] - expected.subs(z, 1 / z)) == 0
        assert sympy.expand(A.at_one()[o, 0] - sum(a[(o, 0, k)] for k in range(3))) == 0


# -- display ---------------------------------------------------------------------------------
def test_latex_contains_the_symbols_and_rates():
    A = ConvOperator.symbolic("w", 2, 2, (2, 2), stride=2, bias=True)
    latex = A.latex()
    for s in A.free_symbols:
        assert sympy.latex(s) in latex
    assert "z_{1}" in latex and "z_{2}" in latex
    assert "\\downarrow_{2}" in latex
    assert A._repr_latex_() == f"$\\displaystyle {latex}$"
    T = ConvOperator.from_weight(np.ones((1, 1, 2)), stride=3, transposed=True)
    assert "\\uparrow_{3}" in T.latex()
    plain = ConvOperator.from_weight(np.array([[[1.0, 0.5]]]))
    assert "\\downarrow" not in plain.latex() and "\\uparrow" not in plain.latex()
    assert "\\frac{1}{2}" in plain.latex() or "0.5" not in plain.latex()
    assert "w_{0000}" in repr(A) or "w_0000" in repr(A)


# -- clear errors on bad input -------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    w = np.ones((2, 3, 3))
    bad = w.copy()
    bad[0, 1, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        ConvOperator.from_weight(bad)
    with pytest.raises(ValueError, match="bias"):
        ConvOperator.from_weight(w, np.ones(3))
    A = ConvOperator.from_weight(w)              # 3 -> 2 channels
    B = ConvOperator.from_weight(np.ones((4, 3, 1)))  # 3 -> 4 channels
    with pytest.raises(ValueError, match="compose"):
        A @ B
    with pytest.raises(ValueError, match="compose"):
        ConvOperator.symbolic("a", 2, 2, 3) @ ConvOperator.symbolic("b", 3, 2, 3)
    S = ConvOperator.from_weight(w, stride=2)
    with pytest.raises(ValueError, match="strides"):
        A + S
    with pytest.raises(ValueError, match="strides"):
        S - A
    with pytest.raises(ValueError, match="shape"):
        A + ConvOperator.from_weight(np.ones((3, 3, 3)))
    with pytest.raises(TypeError):
        A @ 2
    with pytest.raises(ValueError, match="ragged"):
        R, z = laurent_ring("z", QQ)
        ConvOperator(R, [[z, z], [z]])
    with pytest.raises(ValueError, match="bias"):
        ConvOperator(laurent_ring("z", QQ)[0], [[1]], bias=[1, 2])
    with pytest.raises(ValueError, match="groups"):
        ConvOperator.symbolic("a", 3, 2, 3, groups=2)
    with pytest.raises(ValueError):
        block_diag([])
    with pytest.raises(ValueError, match="input channels"):
        vstack([A, B.columns([0, 1])])
    with pytest.raises(ValueError, match="output channels"):
        hstack([A, B])
    with pytest.raises(ValueError, match="channels"):
        apply_operator(A, np.ones((2, 5)))
    with pytest.raises(ValueError, match="axes"):
        apply_operator(A, np.ones((3, 5, 5)))
    with pytest.raises(ValueError):
        A[[]]
    # up-sampling by 2 after a stride 2 is not one multi-rate convolution
    up = ConvOperator.from_weight(np.ones((2, 2, 2)), stride=2, transposed=True)
    with pytest.raises(ValueError, match="gcd"):
        up @ S
    with pytest.raises(ValueError, match="symbolic"):
        ConvOperator.symbolic("a", 1, 1, 2).to_weight()


def test_mixed_rate_composition_when_coprime():
    """``up_3`` after ``down_2`` commutes (gcd 1): the composition still equals torch."""
    rng = np.random.default_rng(5)
    w1 = rng.integers(-3, 4, (2, 1, 3)).astype(float)
    w2 = rng.integers(-3, 4, (2, 1, 2)).astype(float)  # conv_transpose weight (C_in, C_out, k)
    A = ConvOperator.from_weight(w1, stride=2)
    T = ConvOperator.from_weight(w2, stride=3, transposed=True)
    x = rng.integers(-3, 4, (1, 13)).astype(float)
    import torch
    y1 = torch.nn.functional.conv1d(torch.from_numpy(x)[None], torch.from_numpy(w1), stride=2)
    y2 = torch.nn.functional.conv_transpose1d(y1, torch.from_numpy(w2), stride=3)[0].numpy()
    assert_exact(apply_operator(T @ A, x, y2.shape[1:]), y2)
