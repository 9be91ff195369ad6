"""The exact structured couplings (algebra/structured.py, algebra/channel_dft.py).

Each structure is checked against an independent computation: torch's own convolution
with the structure's native weight layout (groups, 1x1, the sum of two convolutions, a
block-circulant weight assembled here by explicit loops), the prover for the closure
facts, and a direct count of weight symbols / product terms for the parameter and
multiply-add counts.
"""
from __future__ import annotations

import numpy as np
import pytest
import sympy
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from laurentnet.algebra import (BlockCirculant, Certificate, ConvOperator, Dense, Depthwise,
                                Grouped, InvalidInputError, InvalidTypeError, LIBRARY, Lean,
                                Pointwise, apply_operator, channel_dft, prove)
from laurentnet.algebra.structured_identities import STRUCTURED_IDENTITIES


def _ints(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Small integers as float64: exact in torch and in the algebra."""
    return rng.integers(-3, 4, shape).astype(np.float64)


def _torch_same(x: np.ndarray, weight: np.ndarray, groups: int = 1) -> np.ndarray:
    """torch's zero-padded 'same' convolution (odd kernels), float64."""
    p = weight.shape[-1] // 2
    y = F.conv2d(torch.from_numpy(x)[None], torch.from_numpy(weight), padding=p, groups=groups)
    return y[0].numpy()


def _exact_same(op: ConvOperator, x: np.ndarray) -> np.ndarray:
    return apply_operator(op, x, x.shape[1:]).astype(np.float64)


def _loops_block_circulant(first: np.ndarray) -> np.ndarray:
    """Block ``(r, c)`` of the dense weight is ``first[(c - r) % m]`` (written out)."""
    m, bo, bi = first.shape[:3]
    dense = np.zeros((m * bo, m * bi, *first.shape[3:]))
    for r in range(m):
        for c in range(m):
            dense[r * bo:(r + 1) * bo, c * bi:(c + 1) * bi] = first[(c - r) % m]
    return dense


# -- each structure equals its dense equivalent (torch conv) -----------------------------

@settings(max_examples=8)
@given(seed=st.integers(0, 2**16), k=st.sampled_from([1, 3]), channels=st.sampled_from([2, 4]))
def test_structures_equal_torch_convolutions(seed, k, channels):
    rng = np.random.default_rng(seed)
    c, p = channels, k // 2
    x = _ints(rng, c, 5, 4)
    w_dense, w_dw, w_pw = _ints(rng, c, c, k, k), _ints(rng, c, 1, k, k), _ints(rng, c, c, 1, 1)
    w_grouped, w_circ = _ints(rng, c, c // 2, k, k), _ints(rng, 2, c // 2, c // 2, k, k)
    cases = [
        (Dense.from_weight(w_dense, padding=p), _torch_same(x, w_dense)),
        (Depthwise.from_weight(w_dw, padding=p), _torch_same(x, w_dw, groups=c)),
        (Pointwise.from_weight(w_pw), _torch_same(x, w_pw)),
        (Grouped.from_weight(w_grouped, groups=2, padding=p), _torch_same(x, w_grouped, groups=2)),
        (Lean.from_weight(w_dw, w_pw, padding=p), _torch_same(x, w_dw, c) + _torch_same(x, w_pw)),
        (BlockCirculant.from_weight(w_circ, padding=p), _torch_same(x, _loops_block_circulant(w_circ))),
    ]
    for structure, expected in cases:
        np.testing.assert_array_equal(_exact_same(structure.dense(), x), expected,
                                      err_msg=type(structure).__name__)


def test_from_dense_recovers_each_structure_and_refuses_others():
    rng = np.random.default_rng(3)
    w_dw, w_pw = _ints(rng, 4, 1, 3, 3), _ints(rng, 4, 4, 1, 1)
    circ = BlockCirculant.from_weight(_ints(rng, 4, 1, 1, 3, 3), padding=1)
    lean = Lean.from_weight(w_dw, w_pw, padding=1)
    assert BlockCirculant.from_dense(circ.dense(), 4) == circ
    assert Lean.from_dense(lean.dense()).dense() == lean.dense()
    assert Depthwise.from_dense(Depthwise.from_weight(w_dw, padding=1).dense()).params == 36
    dense = Dense.from_weight(_ints(rng, 4, 4, 3, 3), padding=1).dense()
    for make in (lambda: Depthwise.from_dense(dense), lambda: Pointwise.from_dense(dense),
                 lambda: Grouped.from_dense(dense, 2), lambda: Lean.from_dense(dense),
                 lambda: BlockCirculant.from_dense(dense, 4)):
        with pytest.raises(InvalidInputError, match="not|constant"):
            make()


def test_refusals_name_the_argument():
    op = ConvOperator.from_weight(np.ones((2, 2, 3)), padding=1)
    with pytest.raises(InvalidInputError, match="stride-1"):
        Dense(ConvOperator.from_weight(np.ones((2, 2, 3)), stride=2))
    with pytest.raises(InvalidTypeError, match="operator must be"):
        Dense("not an operator")
    with pytest.raises(InvalidInputError, match="m=3 blocks must divide"):
        BlockCirculant.from_dense(op, 3)
    with pytest.raises(InvalidInputError, match="outside the stencil box"):
        Dense(op, ((0,), (0,)))
    with pytest.raises(InvalidTypeError, match="combines two couplings"):
        Dense(op) @ op


# -- closure, proved --------------------------------------------------------------------

@settings(max_examples=6)
@given(m=st.integers(1, 4), bo=st.integers(1, 2), bm=st.integers(1, 2), bi=st.integers(1, 2),
       taps=st.integers(1, 2))
def test_block_circulant_closed_under_products_sums_adjoints(m, bo, bm, bi, taps):
    A = BlockCirculant.symbolic("a", m, bo, bm, taps)
    B = BlockCirculant.symbolic("b", m, bm, bi, taps)
    C = BlockCirculant.symbolic("c", m, bo, bm, taps)
    product, total, adjoint = A @ B, A + C, A.adjoint()
    assert all(isinstance(v, BlockCirculant) for v in (product, total, adjoint))
    for lhs, rhs in ((product.dense(), A.dense() @ B.dense()), (total.dense(), A.dense() + C.dense()),
                     (adjoint.dense(), A.dense().adjoint())):
        assert isinstance(prove(lhs, rhs), Certificate)
    # and the dense product really is block-circulant: from_dense accepts it
    assert BlockCirculant.from_dense(A.dense() @ B.dense(), m) == product


def test_closure_proof_can_fail():
    """A wrong product formula (the blocks multiplied in the other cyclic order) is refuted."""
    A = BlockCirculant.symbolic("a", 3, 1, 1, 2)
    B = BlockCirculant.symbolic("b", 3, 1, 1, 2)
    wrong = [A.blocks[i] @ B.blocks[(i - k) % 3] for k in range(3) for i in range(3)]
    blocks = [wrong[3 * k] + wrong[3 * k + 1] + wrong[3 * k + 2] for k in range(3)]
    assert not prove(BlockCirculant(blocks).dense(), (A @ B).dense())


@pytest.mark.parametrize("structure", [
    Depthwise.symbolic("d", 3, 3, padding=1), Pointwise.symbolic("p", 2, 3, ndim=1),
    Grouped.symbolic("g", 4, 4, 2, 2), Lean.symbolic("l", 3, 3, padding=1),
    BlockCirculant.symbolic("c", 3, 2, 1, 2), Dense.symbolic("w", 2, 2, 3, padding=1)])
def test_adjoint_keeps_the_structure(structure):
    adjoint = structure.adjoint()
    assert type(adjoint) is type(structure)
    assert isinstance(prove(adjoint.dense(), structure.dense().adjoint()), Certificate)
    assert adjoint.adjoint() == structure


@pytest.mark.parametrize("structure", [Depthwise.symbolic("d", 3, 3, padding=1),
                                       Pointwise.symbolic("p", 3, 3, ndim=1),
                                       Grouped.symbolic("g", 4, 4, 2, 2)])
def test_products_and_sums_stay_in_the_structure(structure):
    other = type(structure).from_dense(structure.dense() * 2, *(
        [2] if isinstance(structure, Grouped) else []))
    for result, dense in ((structure @ other, structure.dense() @ other.dense()),
                          (structure + other, structure.dense() + other.dense())):
        assert type(result) is type(structure)
        assert result.dense() == dense


def test_lean_sums_stay_lean_but_products_do_not():
    A, B = Lean.symbolic("a", 2, 3, padding=1), Lean.symbolic("b", 2, 3, padding=1)
    assert isinstance(A + B, Lean) and (A + B).dense() == A.dense() + B.dense()
    product = A @ B
    assert isinstance(product, Dense) and product.dense() == A.dense() @ B.dense()
    with pytest.raises(InvalidInputError, match="not lean"):
        Lean.from_dense(product.dense())


def test_library_holds_the_closure_facts():
    names = {i.name for i in LIBRARY}
    assert {n for n, _, _ in STRUCTURED_IDENTITIES} <= names
    for name, _, check in STRUCTURED_IDENTITIES:
        result = check()
        assert isinstance(result, Certificate) and result.difference_terms == 0, name


# -- the DFT over channels ------------------------------------------------------------------

@pytest.mark.parametrize("m,b", [(1, 1), (2, 1), (3, 2), (4, 1), (5, 1), (6, 1)])
def test_dft_diagonalizes_circulants_exactly(m, b):
    dft = channel_dft(BlockCirculant.symbolic("a", m, b, b, 2))
    certificate = dft.check()
    assert isinstance(certificate, Certificate) and certificate.difference_terms == 0
    assert certificate.domain.startswith("QQ<")  # the cyclotomic field QQ(ζ_m)[weights]


def test_dft_spectrum_matches_numpy_on_numbers():
    """Λ_j evaluated exactly, then numerically, against numpy's FFT of the first row."""
    rng = np.random.default_rng(7)
    first = _ints(rng, 5, 1, 1, 3)
    dft = channel_dft(BlockCirculant.from_weight(first, padding=1))
    expected = 5 * np.fft.ifft(first[:, 0, 0, ::-1], axis=0)  # coefficients of z^-1, z^0, z^1
    to_sympy = dft.spectrum[0].ring.domain.to_sympy  # zeta is the algebraic number e^(2πi/5)
    for j, spectrum in enumerate(dft.spectrum):
        entry = spectrum.matrix[0][0]
        values = [complex(sympy.N(to_sympy(entry.coeff(e)))) for e in (-1, 0, 1)]
        np.testing.assert_allclose(values, expected[j], atol=1e-12)


def test_a_wrong_spectrum_is_refuted():
    dft = channel_dft(BlockCirculant.symbolic("a", 3, 1, 1, 1))
    swapped = type(dft)(dft.circulant, dft.forward, dft.inverse,
                        (dft.spectrum[0], dft.spectrum[2], dft.spectrum[1]))
    assert not swapped.check()


# -- parameter and multiply-add counts ----------------------------------------------------

def _terms(op: ConvOperator) -> int:
    return sum(len(e) for row in op.matrix for e in row)


@pytest.mark.parametrize("structure,params", [
    (Dense.symbolic("w", 3, 2, (3, 3), padding=1), 3 * 2 * 9),
    (Depthwise.symbolic("d", 4, (3, 3), padding=1), 4 * 9),
    (Pointwise.symbolic("p", 3, 4), 12),
    (Grouped.symbolic("g", 4, 6, (3, 3), 2, padding=1), 4 * 3 * 9),
    (Lean.symbolic("l", 3, (3, 3), padding=1), 3 * 9 + 9),
    (BlockCirculant.symbolic("c", 3, 2, 1, (3, 3), padding=1), 3 * 2 * 9)])
def test_counts_equal_a_direct_count(structure, params):
    assert structure.params == params == len(structure.free_symbols)
    if isinstance(structure, Lean):
        direct = _terms(structure.depthwise.dense()) + _terms(structure.pointwise.dense())
    else:
        direct = _terms(structure.dense())  # every symbol one multiply-add of the direct sum
    assert structure.macs() == direct
    assert structure.macs((5, 7)) == direct * 35
    if isinstance(structure, BlockCirculant):
        assert structure.macs() == structure.m * structure.params


def test_boxes_of_products_and_adjoints():
    d = Depthwise.symbolic("d", 2, 3, padding=1)
    assert (d @ d).box == ((-2,), (2,)) and (d @ d).params == 2 * 5
    shifted = Depthwise.symbolic("e", 2, 3, padding=0)  # exponents -2..0
    assert shifted.adjoint().box == ((0,), (2,))
