"""The exact basis operator ``W(z) = C · B(z)``: the identity proved on symbolic weights,
exact subset decompositions over QQ, counts, refusals."""
from __future__ import annotations

import numpy as np
import pytest
import sympy
from hypothesis import given, strategies as st

from laurentnet.algebra import (LIBRARY, BasisOperator, ConvOperator, InvalidInputError,
                                InvalidTypeError, Network, prove, prove_basis_identity)
from laurentnet.algebra.basis import symbolic_coefficients
from laurentnet.algebra.symbolic_weights import weight_symbols


@pytest.mark.parametrize("subset,stride,padding", [(False, 1, 1), (True, 1, 0), (False, 2, 1),
                                                    (True, 2, 2)])
def test_identity_is_proved_for_symbolic_weights(subset, stride, padding):
    cert = prove_basis_identity(3, 2, 2, (2, 2), stride=stride, padding=padding, subset=subset)
    assert cert and cert.difference_terms == 0 and cert.weight_symbols > 0
    assert "index sums" in cert.method


def test_identity_is_in_the_library():
    entry = next(i for i in LIBRARY if i.name == "basis_convolution")
    assert entry.check()


def test_a_wrong_mixing_is_refuted():
    """The prover can fail: conv1x1(C with two rows swapped) ∘ conv(B) ≠ conv(C·B)."""
    c = symbolic_coefficients(3, 2)
    b = weight_symbols("b", (2, 2, 2, 2))
    merged = np.vectorize(sympy.expand, otypes=[object])(np.tensordot(c, b, axes=([1], [0])))
    dense = Network(2, 2)
    dense.conv(dense.input, merged, padding=1)
    wrong = Network(2, 2)
    hidden = wrong.conv(wrong.input, b, padding=1)
    wrong.conv(hidden, c[[1, 0, 2]].reshape(3, 2, 1, 1))
    result = prove(dense, wrong, input_shape=(2, 3, 3))
    assert not result and result.mismatches > 0


def test_operator_form_matches_the_merged_weight_by_canonical_forms():
    basis = BasisOperator.symbolic(3, 2, 2, (3, 1), padding=(1, 0), bias=True)
    c = symbolic_coefficients(3, 2)
    b = weight_symbols("b", (2, 2, 3, 1))
    merged = np.vectorize(sympy.expand, otypes=[object])(np.tensordot(c, b, axes=([1], [0])))
    bias = [sympy.Symbol(f"beta_{o}") for o in range(3)]
    domain = basis.to_operator().ring.domain
    dense = ConvOperator.from_weight(merged, bias, padding=(1, 0), domain=domain)
    assert prove(basis.to_operator(), dense)


small_weights = st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 2)).flatmap(
    lambda s: st.lists(st.integers(-3, 3), min_size=s[0] * s[1] * s[2] * s[2],
                       max_size=s[0] * s[1] * s[2] * s[2]).map(
        lambda v: np.array(v, dtype=np.int64).reshape(s[0], s[1], s[2], s[2])))


@given(small_weights)
def test_full_rank_subset_basis_reproduces_the_operator_exactly(w):
    op = ConvOperator.from_weight(w, np.arange(w.shape[0]), padding=1)
    rank = int(np.linalg.matrix_rank(w.reshape(w.shape[0], -1).astype(float)))
    if rank == 0:
        with pytest.raises(InvalidInputError, match="zero"):
            BasisOperator.from_operator(op)
        return
    basis = BasisOperator.from_operator(op)
    assert basis.rank == rank
    assert basis.to_operator() == op
    assert basis.residual_squared(op) == 0
    # the basis filters are filters of op, and their rows of C are the identity
    rows = list(basis.basis_rows)
    assert basis.basis.matrix == tuple(op.matrix[i] for i in rows)
    assert basis.coefficients[rows, :] == sympy.eye(rank)


def test_lower_rank_is_the_exact_orthogonal_projection():
    w = np.array([[[1, 2, 3]], [[2, 4, 7]], [[0, 1, 1]]])
    op = ConvOperator.from_weight(w, padding=1)
    basis = BasisOperator.from_operator(op, 1)
    m = sympy.Matrix(w.reshape(3, 3))
    b = m[0, :]                                    # the first filter is independent
    projection = m * b.T * (b * b.T).inv() * b     # independent: sympy's dense matrices
    expected = sum((m - projection).applyfunc(lambda v: v ** 2))
    assert basis.basis_rows == (0,)
    assert sympy.Rational(str(basis.residual_squared(op))) == expected


def test_counts():
    basis = BasisOperator.symbolic(8, 4, 3, (3, 3), bias=True)
    assert basis.parameter_count() == 3 * 4 * 9 + 8 * 3 + 8
    assert basis.dense_parameter_count() == 8 * 4 * 9 + 8
    assert basis.multiply_adds(10) == 10 * (3 * 4 * 9 + 8 * 3)
    assert basis.dense_multiply_adds(10) == 10 * 8 * 4 * 9
    assert basis.cheaper_than_dense()
    assert not BasisOperator.symbolic(8, 4, 8, (3, 3)).cheaper_than_dense()
    assert "\\cdot" in basis.latex()


def test_refusals_name_the_problem():
    w = np.arange(12).reshape(2, 2, 3).astype(float)
    op = ConvOperator.from_weight(w)
    with pytest.raises(InvalidInputError, match="rank 3 is above the rank"):
        BasisOperator.from_operator(op, 3)
    with pytest.raises(InvalidInputError, match="rank must be a positive integer"):
        BasisOperator.from_operator(op, 0)
    with pytest.raises(InvalidInputError, match="over QQ only"):
        BasisOperator.from_operator(ConvOperator.symbolic("a", 2, 2, 3))
    with pytest.raises(InvalidTypeError, match="op must be a ConvOperator"):
        BasisOperator.from_operator(w)
    with pytest.raises(InvalidInputError, match="constant matrix"):
        BasisOperator(op, ConvOperator.from_weight(np.ones((2, 2, 1))))
    with pytest.raises(InvalidInputError, match="no bias"):
        BasisOperator(ConvOperator.from_weight(np.ones((2, 2, 1))),
                      ConvOperator.from_weight(w, [1, 1]))
    with pytest.raises(InvalidInputError, match="coefficients must be a C_out x 2"):
        BasisOperator.from_factors(np.ones((3, 3)), op)
