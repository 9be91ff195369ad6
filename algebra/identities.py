"""A library of collapse identities, each proved for symbolic weights.

Every entry builds both sides from independent descriptions — where possible two
*networks* in PyTorch terms, evaluated by explicit index sums — and proves them equal with
:func:`algebra.prove.prove`.  ``prove_library()`` checks them all.

=========================  ==================================================================
``residual_expansion``     ``(I + K4 K3)(I + K2 K1) = I + K2 K1 + K4 K3 + K4 K3 K2 K1``
``noble_identity``         ``K(z) ∘ down_s = down_s ∘ K(z^s)``
``adjoint_of_composition`` ``(A B)^* = B^* A^*`` with ``A^* = K(1/z)^T`` (strided)
``repvgg_merge``           ``BN(conv3x3) + BN(conv1x1) + BN(id) = one conv3x3 with a bias``
``bias_propagation``       ``K ∘ (x + b) = K x + K(1) b`` (valid padding)
``circular_mod``           two circular convs = one with kernel ``K2 K1 mod (z^n - 1)``
``strided_pooling``        ``avgpool_2 ∘ avgpool_2 = avgpool_4`` (strides 2, 2, 4)
``basis_convolution``      ``conv(W = C·B) = conv1x1(C) ∘ conv(B)`` (:mod:`algebra.basis`)
``block_circulant_*``, ``circulant_dft_diagonal``, ``structured_adjoints``: closure of the
structured couplings (:mod:`algebra.structured_identities`)
=========================  ==================================================================
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import sympy

from .network import Network
from .operator import ConvOperator
from .prove import Certificate, Counterexample, prove
from .symbolic_weights import weight_symbols
from .basis import prove_basis_identity
from .structured_identities import STRUCTURED_IDENTITIES

__all__ = ["Identity", "LIBRARY", "prove_library"]


@dataclass
class Identity:
    """A named identity with its LaTeX statement and a ``check()`` that proves it."""
    name: str
    statement: str
    check: Callable[[], Certificate | Counterexample]

    def _repr_latex_(self) -> str:
        name = self.name.replace("_", "\\_")
        return f"$$\\text{{{name}}}:\\quad {self.statement}$$"


def residual_expansion() -> Certificate | Counterexample:
    """Two residual blocks on 2 channels with symbolic 2-D 2x2 kernels."""
    K1, K2, K3, K4 = (ConvOperator.symbolic(n, 2, 2, (2, 2)) for n in ("p", "q", "r", "s"))
    I = ConvOperator.identity(K1.ring, 2)
    lhs = (I + K4 @ K3) @ (I + K2 @ K1)
    rhs = I + K2 @ K1 + K4 @ K3 + K4 @ (K3 @ (K2 @ K1))
    return prove(lhs, rhs, input_shape=(2, 3, 3),
                 claim="(I + K4 K3)(I + K2 K1) = I + K2 K1 + K4 K3 + K4 K3 K2 K1")


def noble_identity(stride: int = 2, kernel: int = 3, size: int = 12) -> Certificate | Counterexample:
    """As networks: a stride-``s`` 1x1 identity conv then ``K`` (valid), against ``K``
    dilated by ``s`` with stride ``s`` (valid)."""
    w = weight_symbols("w", (1, 1, kernel))
    lhs = Network(1, 1)
    lhs.conv(lhs.conv(lhs.input, np.ones((1, 1, 1), dtype=np.int64), stride=stride), w)
    rhs = Network(1, 1)
    rhs.conv(rhs.input, w, stride=stride, dilation=stride)
    return prove(lhs, rhs, input_shape=(1, size), claim=f"K(z) ∘ down_{stride} = down_{stride} ∘ K(z^{stride})")


def adjoint_of_composition() -> Certificate | Counterexample:
    """``(A B)^* = B^* A^*`` with ``B`` strided; compared on a finite symbolic signal too."""
    A = ConvOperator.symbolic("a", 2, 3, 3, padding=1)
    B = ConvOperator.symbolic("b", 3, 2, 2, stride=2)
    return prove((A @ B).adjoint(), B.adjoint() @ A.adjoint(), input_shape=(2, 4),
                 claim="(A B)^* = B^* A^*  (A^* = K(1/z)^T up_s)")


def repvgg_merge(channels: int = 2, size: int = 4) -> Certificate | Counterexample:
    """RepVGG: three branches with symbolic batch-norm scales and shifts against one 3x3
    conv whose weight and bias are the merged expressions."""
    C = channels
    w3 = weight_symbols("u", (C, C, 3, 3))
    w1 = weight_symbols("v", (C, C, 1, 1))
    scale = [[sympy.Symbol(f"g{k}_{c}") for c in range(C)] for k in range(3)]
    shift = [[sympy.Symbol(f"h{k}_{c}") for c in range(C)] for k in range(3)]
    lhs = Network(2, C)
    x = lhs.input
    a = lhs.channel_affine(lhs.conv(x, w3, padding=1), scale[0], shift[0], label="bn")
    b = lhs.channel_affine(lhs.conv(x, w1), scale[1], shift[1], label="bn")
    c = lhs.channel_affine(x, scale[2], shift[2], label="bn")
    lhs.add(a, b, c)
    merged = np.empty((C, C, 3, 3), dtype=object)
    for o in range(C):
        for i in range(C):
            for index in np.ndindex(3, 3):
                value = scale[0][o] * w3[o, i][index]
                if index == (1, 1):
                    value += scale[1][o] * w1[o, i, 0, 0] + (scale[2][o] if o == i else 0)
                merged[o, i][index] = value
    bias = np.array([shift[0][o] + shift[1][o] + shift[2][o] for o in range(C)], dtype=object)
    rhs = Network(2, C)
    rhs.conv(rhs.input, merged, bias, padding=1)
    return prove(lhs, rhs, input_shape=(C, size, size),
                 claim="BN(conv3x3 x) + BN(conv1x1 x) + BN(x) = conv3x3'(x) + b'")


def bias_propagation(size: int = 6) -> Certificate | Counterexample:
    """``K (x + b) = K x + K(1) b`` for a valid 2-channel 1-D conv with symbolic bias ``b``."""
    w = weight_symbols("k", (2, 2, 3))
    b = [sympy.Symbol(f"beta_{c}") for c in range(2)]
    lhs = Network(1, 2)
    lhs.conv(lhs.channel_affine(lhs.input, [1, 1], b, label="shift"), w)
    at_one = [sum(w[o, c, a] * b[c] for c in range(2) for a in range(3)) for o in range(2)]
    rhs = Network(1, 2)
    rhs.conv(rhs.input, w, np.array(at_one, dtype=object))
    return prove(lhs, rhs, input_shape=(2, size), claim="K ∘ (x + b) = K x + K(1) b")


def circular_mod(size: int = 4) -> Certificate | Counterexample:
    """Two circular 3-tap convs on a ``size``-periodic signal against one circular conv
    whose kernel is ``K2 K1 mod (z^n - 1)`` (computed by the polynomial arithmetic)."""
    K1 = ConvOperator.symbolic("k", 1, 1, 3, padding=1)
    K2 = ConvOperator.symbolic("m", 1, 1, 3, padding=1)
    lhs = Network(1, 1)
    lhs.conv_operator(lhs.conv_operator(lhs.input, K1, padding_mode="circular"), K2,
                      padding_mode="circular")
    product = K2 @ K1
    reduced = ConvOperator(product.ring, [[product.matrix[0][0].mod_circular(size)]])
    layout = reduced.to_weight(dtype=object)
    k = layout.weight.shape[-1]
    p = layout.padding[0]
    rhs = Network(1, 1)
    rhs.conv(rhs.input, layout.weight, padding=((p, k - 1 - p),), padding_mode="circular")
    return prove(lhs, rhs, input_shape=(1, size),
                 claim=f"circular K2 ∘ circular K1 = circular (K2 K1 mod z^{size} - 1)")


def strided_pooling(size: int = 8) -> Certificate | Counterexample:
    """``avgpool(2, 2) ∘ avgpool(2, 2) = avgpool(4, 4)`` in 2-D."""
    lhs = Network(2, 1)
    lhs.avg_pool(lhs.avg_pool(lhs.input, 2), 2)
    rhs = Network(2, 1)
    rhs.avg_pool(rhs.input, 4)
    return prove(lhs, rhs, input_shape=(1, size, size),
                 claim="avgpool_2 ∘ avgpool_2 = avgpool_4 (strides 2, 2, 4)")


LIBRARY: list[Identity] = [
    Identity("residual_expansion", r"(I + K_4 K_3)(I + K_2 K_1) = I + K_2K_1 + K_4K_3 + K_4K_3K_2K_1",
             residual_expansion),
    Identity("noble_identity", r"K(z)\circ{\downarrow_s} = {\downarrow_s}\circ K(z^s)", noble_identity),
    Identity("adjoint_of_composition", r"(AB)^* = B^*A^*,\ A^*(z) = A(z^{-1})^T",
             adjoint_of_composition),
    Identity("repvgg_merge", r"\mathrm{BN}_1(K_{3\times3}x) + \mathrm{BN}_2(K_{1\times1}x) + "
             r"\mathrm{BN}_3(x) = K'x + b'", repvgg_merge),
    Identity("bias_propagation", r"K(x + b) = Kx + K(1)\,b", bias_propagation),
    Identity("circular_mod", r"K_2 \circledast K_1 = (K_2K_1 \bmod z^n - 1)\circledast",
             circular_mod),
    Identity("strided_pooling", r"\mathrm{avg}_2\circ\mathrm{avg}_2 = \mathrm{avg}_4", strided_pooling),
    Identity("basis_convolution", r"W(z) = C\cdot B(z):\ \mathrm{conv}_W = \mathrm{conv}_{1\times1}(C)"
             r"\circ\mathrm{conv}_B", prove_basis_identity),
]
# the closure facts of the structured couplings (seed 002), see algebra.structured_identities
LIBRARY += [Identity(name, statement, check) for name, statement, check in STRUCTURED_IDENTITIES]


def prove_library() -> dict[str, Certificate | Counterexample]:
    """Prove every identity of :data:`LIBRARY`."""
    return {identity.name: identity.check() for identity in LIBRARY}
