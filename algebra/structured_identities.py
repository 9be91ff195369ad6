"""The closure facts of the structured couplings, each proved for symbolic weights.

Each check builds the left side with the *structure's own formula* (a cyclic convolution of
first block rows, blockwise adjoints, ...) — whose result the structure's constructor
accepts only if it has the pattern — and the right side from the dense Laurent matrices
with :class:`~algebra.operator.ConvOperator` arithmetic, then proves them equal with
:func:`~algebra.prove.prove` (canonical forms, and, where an ``input_shape`` is given,
also as maps on a symbolic periodic signal by coefficient reading).  The entries join
:data:`algebra.identities.LIBRARY`:

==============================  ==============================================================
``block_circulant_product``     ``circ(A) circ(B) = circ(A ⊛ B)``, ``(A ⊛ B)_k = Σ_{i+j≡k} A_i B_j``
``block_circulant_sum``         ``circ(A) + circ(B) = circ(A + B)``
``block_circulant_adjoint``     ``circ(A)^* = circ(A^*_{-k mod m})``
``circulant_dft_diagonal``      ``F circ(A) F^{-1} = diag(Σ_k ζ^{jk} A_k)`` over ``QQ(ζ)``
``structured_adjoints``         depthwise, 1x1, grouped and lean adjoints keep the structure
==============================  ==============================================================
"""
from __future__ import annotations

from typing import Any

from .channel_dft import channel_dft
from .errors import LaurentnetError
from .operator import block_diag
from .prove import Certificate, Counterexample, prove
from .structured import BlockCirculant, Depthwise, Grouped, Lean, Pointwise

__all__ = ["block_circulant_product", "block_circulant_sum", "block_circulant_adjoint",
           "circulant_dft_diagonal", "structured_adjoints", "STRUCTURED_IDENTITIES"]


def _kept(result: Any, structure: type, what: str) -> Any:
    """``result`` if the operation stayed in ``structure`` (the closure claim itself)."""
    if type(result) is not structure:
        raise LaurentnetError(f"{what} left the {structure.__name__} structure "
                              f"({type(result).__name__})")
    return result


def block_circulant_product(m: int = 3) -> Certificate | Counterexample:
    """Rectangular blocks (``1 x 2`` times ``2 x 1``), 2-tap stencils, compared also on a
    symbolic 4-periodic signal."""
    A = BlockCirculant.symbolic("a", m, 1, 2, 2)
    B = BlockCirculant.symbolic("b", m, 2, 1, 2)
    product = _kept(A @ B, BlockCirculant, "the product")
    return prove(product.dense(), A.dense() @ B.dense(), input_shape=(m, 4), periodic=True,
                 claim=f"circ(A) circ(B) = circ(A ⊛ B)  (m = {m}, cyclic convolution of block rows)")


def block_circulant_sum(m: int = 3) -> Certificate | Counterexample:
    A = BlockCirculant.symbolic("a", m, 2, 1, 3, padding=1)
    B = BlockCirculant.symbolic("b", m, 2, 1, 2)
    total = _kept(A + B, BlockCirculant, "the sum")
    return prove(total.dense(), A.dense() + B.dense(), claim=f"circ(A) + circ(B) = circ(A + B)  (m = {m})")


def block_circulant_adjoint(m: int = 4) -> Certificate | Counterexample:
    A = BlockCirculant.symbolic("a", m, 1, 2, 3, padding=1)
    adjoint = _kept(A.adjoint(), BlockCirculant, "the adjoint")
    return prove(adjoint.dense(), A.dense().adjoint(), input_shape=(m, 5), periodic=True,
                 claim=f"circ(A)^* = circ(A^*_(-k mod m))  (m = {m}, A^*(z) = A(1/z)^T)")


def circulant_dft_diagonal(m: int = 4) -> Certificate | Counterexample:
    """A scalar-block circulant of 3-tap stencils over ``QQ(ζ_4)[weights]``."""
    return channel_dft(BlockCirculant.symbolic("c", m, 1, 1, 3, padding=1)).check()


def structured_adjoints() -> Certificate | Counterexample:
    """``S.adjoint()`` (built blockwise in each structure) against ``S.dense().adjoint()``,
    for a depthwise, a 1x1, a grouped and a lean coupling at once (block diagonal)."""
    structures = [Depthwise.symbolic("d", 2, 3, padding=1), Pointwise.symbolic("p", 2, 3, ndim=1),
                  Grouped.symbolic("g", 4, 2, 2, 2), Lean.symbolic("l", 2, 3, padding=1)]
    lhs = block_diag([_kept(s.adjoint(), type(s), "the adjoint").dense() for s in structures])
    rhs = block_diag([s.dense().adjoint() for s in structures])
    return prove(lhs, rhs, claim="the adjoint of a depthwise, 1x1, grouped and lean coupling is "
                                 "of the same structure")


#: ``(name, LaTeX statement, check)`` for :data:`algebra.identities.LIBRARY`
STRUCTURED_IDENTITIES = [
    ("block_circulant_product", r"\mathrm{circ}(A)\,\mathrm{circ}(B) = \mathrm{circ}(A \circledast B)",
     block_circulant_product),
    ("block_circulant_sum", r"\mathrm{circ}(A) + \mathrm{circ}(B) = \mathrm{circ}(A + B)",
     block_circulant_sum),
    ("block_circulant_adjoint", r"\mathrm{circ}(A)^* = \mathrm{circ}\big((A^*_{-k \bmod m})_k\big)",
     block_circulant_adjoint),
    ("circulant_dft_diagonal", r"F\,\mathrm{circ}(A)\,F^{-1} = \mathrm{diag}_j\Big(\sum_k \zeta^{jk} A_k\Big)",
     circulant_dft_diagonal),
    ("structured_adjoints", r"S^* \in \mathcal{S}\ \text{for}\ \mathcal{S} \in "
     r"\{\text{depthwise}, 1{\times}1, \text{grouped}, \text{lean}\}", structured_adjoints),
]
