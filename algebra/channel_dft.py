"""The DFT over channels diagonalizes a block-circulant coupling — exactly, in a cyclotomic field.

Let ``C`` be block-circulant with first block row ``A_0, ..., A_{m-1}`` (block ``(r, c)`` is
``A_{(c - r) mod m}``, :class:`~algebra.structured.BlockCirculant`) and ``ζ = e^{2πi/m}``.
With the DFT over the block index ``F_{jr} = ζ^{-jr}`` (numpy's forward convention) and
its inverse ``(F^{-1})_{rj} = ζ^{jr} / m``,

    (F ⊗ I_{b_out}) C (F^{-1} ⊗ I_{b_in}) = diag(Λ_0, ..., Λ_{m-1}),    Λ_j(z) = Σ_k ζ^{jk} A_k(z)

since ``Σ_{r,c} ζ^{-jr} A_{c-r} ζ^{j'c} / m = Σ_k A_k ζ^{j'k} δ_{jj'}``.  The computation here
is exact: the operators are taken over ``QQ(ζ)`` — sympy's cyclotomic field
``QQ.cyclotomic_field(m)`` (``ζ`` a root of the ``m``-th cyclotomic polynomial), or
``QQ(ζ)[w...]`` when the weights are symbols — and :meth:`ChannelDFT.check` proves the
identity with :func:`algebra.prove.prove` (the expanded difference of the two Laurent
matrices over that field is zero).  So both readings hold: the spectrum is computed in
the cyclotomic extension, and ``F C F^{-1} = diag(Λ)`` is proved symbolically.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sympy.polys.domains import QQ, ZZ
from sympy.polys.domains.domain import Domain

from .errors import InvalidInputError, InvalidTypeError
from .laurent import LaurentRing
from .operator import ConvOperator, block_diag
from .prove import Certificate, Counterexample, prove
from .structured import BlockCirculant, Grouped
from .validate import describe, int_arg

__all__ = ["ChannelDFT", "channel_dft", "cyclotomic_domain", "root_of_unity", "dft_operator"]


def cyclotomic_domain(m: int, base: Domain = QQ) -> Domain:
    """``QQ(ζ_m)`` for ``base`` = ``QQ``/``ZZ``, ``QQ(ζ_m)[w...]`` for ``base = QQ[w...]``."""
    m = int_arg(m, "m", minimum=1)
    field = QQ.cyclotomic_field(m)
    if base in (QQ, ZZ):
        return field
    if getattr(base, "is_PolynomialRing", False) and base.domain in (QQ, ZZ):
        return field[list(base.symbols)]
    raise InvalidInputError(f"the exact channel DFT needs weights over QQ or QQ[symbols], got {base}")


def root_of_unity(domain: Domain, m: int) -> Any:
    """``ζ = e^{2πi/m}`` as an element of ``domain`` (a :func:`cyclotomic_domain`)."""
    field = QQ.cyclotomic_field(m)
    zeta = field.from_sympy(field.ext)
    return zeta if domain == field else domain.convert_from(zeta, field)


def dft_operator(ring: LaurentRing, m: int, block: int, *, inverse: bool = False) -> ConvOperator:
    """``F ⊗ I_block`` (``F_{jr} = ζ^{-jr}``), or ``F^{-1} ⊗ I_block`` (``ζ^{jr} / m``), as a
    constant operator over ``ring`` (whose domain contains ``ζ``)."""
    zeta = root_of_unity(ring.domain, m)
    dom = ring.domain
    scale = dom.convert_from(QQ(1, m), QQ) if inverse else dom.one
    sign = 1 if inverse else -1
    powers = [zeta ** k for k in range(m)]
    rows = []
    for j in range(m):
        for i in range(block):
            rows.append([ring.ground(powers[(sign * j * r) % m] * scale) if i == k else ring.zero
                         for r in range(m) for k in range(block)])
    return ConvOperator(ring, rows)


@dataclass(frozen=True)
class ChannelDFT:
    """The exact diagonalization of a block-circulant coupling (module docstring):
    ``forward = F ⊗ I_{b_out}``, ``inverse = F^{-1} ⊗ I_{b_in}``, ``spectrum[j] = Λ_j``, all
    over the cyclotomic ring ``circulant.ring``."""
    circulant: BlockCirculant
    forward: ConvOperator
    inverse: ConvOperator
    spectrum: tuple[ConvOperator, ...]

    def diagonal(self) -> ConvOperator:
        """``diag(Λ_0, ..., Λ_{m-1})`` (block diagonal)."""
        return block_diag(self.spectrum)

    def as_grouped(self) -> Grouped:
        """The diagonal as a :class:`Grouped` coupling (``m`` groups)."""
        return Grouped(self.spectrum)

    def check(self) -> Certificate | Counterexample:
        """Prove ``(F ⊗ I) C (F^{-1} ⊗ I) = diag(Λ_j)`` exactly over ``QQ(ζ)``."""
        lhs = self.forward @ self.circulant.dense() @ self.inverse
        m = self.circulant.m
        return prove(lhs, self.diagonal(),
                     claim=f"F C F^-1 = diag(Λ_0..Λ_{m - 1}), Λ_j = Σ_k ζ^(jk) A_k, ζ = e^(2πi/{m})")

    def latex(self) -> str:
        r"""``\Lambda_j`` in LaTeX, one per line."""
        return " \\\\ ".join(f"\\Lambda_{{{j}}} = {s.latex()}" for j, s in enumerate(self.spectrum))


def channel_dft(circulant: BlockCirculant) -> ChannelDFT:
    """The DFT over the block index of ``circulant``, computed exactly over ``QQ(ζ_m)``:
    ``Λ_j = Σ_k ζ^{jk} A_k``."""
    if not isinstance(circulant, BlockCirculant):
        raise InvalidTypeError(f"circulant must be a BlockCirculant, got {describe(circulant)}")
    m = circulant.m
    ring = circulant.ring.with_domain(cyclotomic_domain(m, circulant.ring.domain))
    circ = circulant.set_ring(ring)
    zeta = root_of_unity(ring.domain, m)
    spectrum = []
    for j in range(m):
        total = None
        for k, block in enumerate(circ.blocks):
            term = block * zeta ** ((j * k) % m)
            total = term if total is None else total + term
        spectrum.append(total)
    bo, bi = circ.block_shape
    return ChannelDFT(circ, dft_operator(ring, m, bo), dft_operator(ring, m, bi, inverse=True),
                      tuple(spectrum))
