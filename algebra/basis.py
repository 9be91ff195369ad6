"""Basis convolutions, exactly: ``W(z) = C · B(z)`` with a constant ``C``.

With a convolution's weight reshaped to the ``C_out × (C_in·k^d)`` matrix ``M`` (one row
per filter), a *basis decomposition* of rank ``r`` is ``M = C B``: ``B`` holds ``r``
basis filters and ``C`` is ``C_out × r``.  In the convolution algebra the basis filters
are an ``r × C_in`` matrix of Laurent polynomials ``B(z)`` and the mixing is the constant
matrix ``C`` (a 1×1 convolution), so

    W(z) = C · B(z),        y = down_s( C B(z) X(z) ) + b = C · (down_s B(z) X(z)) + b,

i.e. the layer runs as ``r`` basis convolutions followed by a 1×1 mixing (a constant
matrix commutes with ``down_s``).  When the basis is a subset of the filters (seed 003's
form), ``C`` restricted to the chosen rows is the identity: after ordering the chosen
filters first, ``M = [I; A] B``.

:class:`BasisOperator` holds the two factors as :class:`~algebra.operator.ConvOperator`\\ s
(``mixing`` carries the bias, ``basis`` the stride).  :meth:`BasisOperator.from_operator`
finds an exact subset basis over ``QQ`` (Gaussian elimination: the first filters that are
linearly independent), and the coefficients of the other filters exactly,
``C = M Bᵀ (B Bᵀ)⁻¹`` (for a rank below ``rank M`` this is the orthogonal projection of
every filter onto the span of the chosen ones; :meth:`residual_squared` is then the exact
``‖M − C B‖_F²``).  :func:`prove_basis_identity` proves ``conv(C·B) = conv1x1(C) ∘ conv(B)``
for symbolic weights by explicit index sums.

Multiply-adds per output position: ``C_out · C_in · k^d`` for the dense layer,
``r · C_in · k^d + C_out · r`` for the basis form; parameters the same counts (plus the
``C_out`` biases).  The basis form is cheaper exactly when
``r < C_out C_in k^d / (C_in k^d + C_out)``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import sympy
from sympy.polys.domains import QQ
from sympy.polys.matrices import DomainMatrix

from .errors import InvalidInputError, InvalidTypeError
from .laurent import per_axis
from .layout import default_ring, operator_from_weight
from .network import Network
from .operator import ConvOperator
from .prove import Certificate, Counterexample, prove
from .symbolic_weights import weight_symbols
from .validate import bool_arg, choice_arg, int_arg, optional_int_arg

__all__ = ["BasisOperator", "prove_basis_identity", "BASIS_METHODS"]

#: how :meth:`BasisOperator.from_operator` chooses the basis (exact side: a subset of the
#: filters; the float twin also has ``"svd"``)
BASIS_METHODS = ("qr",)


def _is_constant(op: ConvOperator) -> bool:
    """Every entry of ``K`` is a constant (a 1×1 convolution)."""
    box = op.support()
    return box is None or (all(v == 0 for v in box[0]) and all(v == 0 for v in box[1]))


def _filter_matrix(op: ConvOperator) -> tuple[DomainMatrix, list[tuple[int, tuple[int, ...]]]]:
    """``M``: one row per output channel, one column per (input channel, exponent) that
    occurs in any filter, over ``QQ``."""
    columns = sorted({(c, e) for row in op.matrix for c, entry in enumerate(row)
                      for e, _ in entry.iterterms()})
    where = {key: j for j, key in enumerate(columns)}
    src = op.ring.domain
    rows = [[QQ.zero] * max(len(columns), 1) for _ in range(op.out_channels)]
    for o, row in enumerate(op.matrix):
        for c, entry in enumerate(row):
            for e, coeff in entry.iterterms():
                rows[o][where[(c, e)]] = QQ.convert_from(coeff, src)
    return DomainMatrix(rows, (op.out_channels, max(len(columns), 1)), QQ), columns


def _mixing_operator(ring: Any, coefficients: Sequence[Sequence[Any]], bias: Sequence[Any]
                     ) -> ConvOperator:
    """The 1×1 convolution with the constant matrix ``coefficients`` and ``bias``."""
    return ConvOperator(ring, [[ring(v) for v in row] for row in coefficients], bias=bias)


class BasisOperator:
    """``W(z) = C · B(z) + b``: ``basis`` (``r × C_in`` Laurent matrix ``B(z)``, the stride)
    followed by ``mixing`` (the constant ``C_out × r`` matrix ``C``, the bias ``b``).

    ``basis_rows`` names the filters of the original operator the basis consists of, when
    it is a subset of them (then ``C[basis_rows] = I``), else None.  Immutable."""

    __slots__ = ("mixing", "basis", "basis_rows")

    def __init__(self, mixing: ConvOperator, basis: ConvOperator,
                 basis_rows: Sequence[int] | None = None):
        for what, op in (("mixing", mixing), ("basis", basis)):
            if not isinstance(op, ConvOperator):
                raise InvalidTypeError(f"{what} must be a ConvOperator, got {type(op).__name__}")
        if not _is_constant(mixing) or any(s != 1 for s in mixing.stride) \
                or any(u != 1 for u in mixing.upsample):
            raise InvalidInputError("mixing must be a constant matrix (a 1x1 convolution, "
                                    "stride 1): W(z) = C · B(z) needs a constant C")
        if basis.has_bias:
            raise InvalidInputError("basis must have no bias (the mixing carries it)")
        if any(u != 1 for u in basis.upsample):
            raise InvalidInputError("basis must not up-sample (a transposed convolution)")
        if mixing.in_channels != basis.out_channels:
            raise InvalidInputError(f"mixing takes {mixing.in_channels} channels, the basis "
                                    f"gives {basis.out_channels} (the rank)")
        mixing, basis = mixing._unified(basis)
        rows = None
        if basis_rows is not None:
            rows = tuple(int_arg(v, "basis_rows entry", minimum=0, maximum=mixing.out_channels - 1)
                         for v in basis_rows)
            if len(rows) != basis.out_channels or len(set(rows)) != len(rows):
                raise InvalidInputError(f"basis_rows must name {basis.out_channels} distinct "
                                        f"output channels, got {rows}")
        for name, value in (("mixing", mixing), ("basis", basis), ("basis_rows", rows)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("BasisOperator is immutable")

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def from_factors(cls, coefficients: Any, basis: ConvOperator, bias: Any = None,
                     basis_rows: Sequence[int] | None = None) -> "BasisOperator":
        """``C`` (a ``C_out × r`` nested sequence or array of numbers or sympy expressions
        in the basis's domain) and the basis operator ``B``; ``bias`` of length ``C_out``."""
        if not isinstance(basis, ConvOperator):
            raise InvalidTypeError(f"basis must be a ConvOperator, got {type(basis).__name__}")
        matrix = np.asarray(coefficients, dtype=object)
        if matrix.ndim != 2 or matrix.shape[1] != basis.out_channels or matrix.shape[0] < 1:
            raise InvalidInputError(f"coefficients must be a C_out x {basis.out_channels} matrix "
                                    f"(one column per basis filter), got shape {matrix.shape}")
        bias = [0] * matrix.shape[0] if bias is None else list(bias)
        return cls(_mixing_operator(basis.ring, matrix.tolist(), bias), basis, basis_rows)

    @classmethod
    def from_operator(cls, op: ConvOperator, rank: int | None = None, *,
                      method: str = "qr") -> "BasisOperator":
        """An exact subset basis of ``op``'s filters (module docstring): the first ``rank``
        linearly independent filters (default: all of them, ``rank = rank M``, so that
        ``C · B(z) = K(z)`` exactly) and ``C = M Bᵀ (B Bᵀ)⁻¹``.  Numbers only (over ``QQ``);
        the float twin :class:`laurentnet.numeric.BasisOperator` also has ``method="svd"``."""
        if not isinstance(op, ConvOperator):
            raise InvalidTypeError(f"op must be a ConvOperator, got {type(op).__name__}")
        choice_arg(method, "method", BASIS_METHODS)
        if any(u != 1 for u in op.upsample):
            raise InvalidInputError("op up-samples (a transposed convolution); a basis "
                                    "decomposition needs a convolution")
        if op.free_symbols or not (op.ring.domain.is_QQ or op.ring.domain.is_ZZ):
            raise InvalidInputError(f"op has coefficients in {op.ring.domain}; an exact basis is "
                                    "found over QQ only (substitute numbers with op.subs, or "
                                    "build symbolic factors with BasisOperator.from_factors)")
        matrix, _ = _filter_matrix(op)
        _, pivots = matrix.transpose().rref()
        full = len(pivots)
        if full == 0:
            raise InvalidInputError("op is zero: it has no basis filter")
        rank = full if rank is None else int_arg(rank, "rank", minimum=1)
        if rank > full:
            raise InvalidInputError(f"rank {rank} is above the rank of the filters ({full}): "
                                    f"only {full} of the {op.out_channels} filters are linearly "
                                    "independent")
        rows = list(pivots[:rank])
        basis_matrix = matrix.extract(rows, list(range(matrix.shape[1])))
        gram = basis_matrix * basis_matrix.transpose()
        coefficients = (matrix * basis_matrix.transpose() * gram.inv()).to_list()
        ring = op.ring
        dom = ring.domain
        coefficients = [[dom.convert_from(v, QQ) for v in row] for row in coefficients]
        basis = ConvOperator(ring, [op.matrix[i] for i in rows], stride=op.stride)
        return cls(_mixing_operator(ring, coefficients, op.bias), basis, rows)

    @classmethod
    def symbolic(cls, out_channels: int, in_channels: int, rank: int,
                 kernel_size: int | Sequence[int], *, coefficient_name: str = "c",
                 basis_name: str = "b", stride: int | Sequence[int] = 1,
                 padding: int | Sequence[int] = 0, bias: bool = False,
                 subset: bool = False) -> "BasisOperator":
        """Every weight its own symbol: ``C_{o,j} = c_{oj}`` (``subset=True``: the seed's
        ``C = [I; A]``, the first ``rank`` outputs being the basis filters), the basis
        filters ``B = b_{j,i,a}`` (:meth:`ConvOperator.symbolic`), bias ``beta_o``."""
        out_channels = int_arg(out_channels, "out_channels", minimum=1)
        in_channels = int_arg(in_channels, "in_channels", minimum=1)
        rank = int_arg(rank, "rank", minimum=1, maximum=out_channels)
        subset, bias = bool_arg(subset, "subset"), bool_arg(bias, "bias")
        kernel = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
        kernel = per_axis(kernel, len(kernel), "kernel_size")
        filters = weight_symbols(basis_name, (rank, in_channels, *kernel))
        coefficients = symbolic_coefficients(out_channels, rank, coefficient_name, subset)
        biases = [sympy.Symbol(f"beta_{o}") for o in range(out_channels)] if bias else None
        # one ring for both factors: unifying two rings of many symbols later is slow
        ring = default_ring(len(kernel), QQ[_symbols_of(coefficients, biases, filters)])
        basis = operator_from_weight(filters, stride=stride, padding=padding, ring=ring,
                                     domain=ring.domain)
        mixing = operator_from_weight(coefficients.reshape(out_channels, rank, *(1,) * len(kernel)),
                                      biases, ring=ring, domain=ring.domain)
        rows = tuple(range(rank)) if subset else None
        return cls(mixing, basis, rows)

    # -- shape and counts -----------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.basis.out_channels

    @property
    def out_channels(self) -> int:
        return self.mixing.out_channels

    @property
    def in_channels(self) -> int:
        return self.basis.in_channels

    @property
    def shape(self) -> tuple[int, int]:
        """``(C_out, C_in)`` of the operator it stands for."""
        return self.out_channels, self.in_channels

    @property
    def ndim(self) -> int:
        return self.basis.ndim

    @property
    def stride(self) -> tuple[int, ...]:
        return self.basis.stride

    @property
    def kernel_size(self) -> tuple[int, ...]:
        """The basis filters' support box (that of ``C · B(z)`` too)."""
        return self.basis.kernel_size

    @property
    def has_bias(self) -> bool:
        return self.mixing.has_bias

    @property
    def coefficients(self) -> sympy.Matrix:
        """``C``, the ``C_out × r`` mixing matrix (``K_mixing(1)``)."""
        return self.mixing.at_one()

    def parameter_count(self, bias: bool = True) -> int:
        """``r C_in k^d + C_out r`` (``+ C_out`` biases): ``k^d`` the basis box."""
        taps = math.prod(self.kernel_size)
        return self.rank * self.in_channels * taps + self.out_channels * self.rank + \
            (self.out_channels if bias and self.has_bias else 0)

    def dense_parameter_count(self, bias: bool = True) -> int:
        """``C_out C_in k^d`` (``+ C_out``): the single convolution ``C · B(z)``."""
        return self.out_channels * self.in_channels * math.prod(self.kernel_size) + \
            (self.out_channels if bias and self.has_bias else 0)

    def multiply_adds(self, positions: int = 1) -> int:
        """``positions · (r C_in k^d + C_out r)``: the basis convolutions and the mixing at
        ``positions`` output positions."""
        positions = int_arg(positions, "positions", minimum=0)
        taps = math.prod(self.kernel_size)
        return positions * (self.rank * self.in_channels * taps + self.out_channels * self.rank)

    def dense_multiply_adds(self, positions: int = 1) -> int:
        """``positions · C_out C_in k^d``: the collapsed single convolution."""
        positions = int_arg(positions, "positions", minimum=0)
        return positions * self.out_channels * self.in_channels * math.prod(self.kernel_size)

    def cheaper_than_dense(self) -> bool:
        """Whether the basis form needs fewer multiply-adds than ``C · B(z)`` as one conv."""
        return self.multiply_adds() < self.dense_multiply_adds()

    # -- algebra --------------------------------------------------------------------------
    def to_operator(self) -> ConvOperator:
        """``C · B(z)`` with the bias: the dense convolution (``mixing @ basis``)."""
        return self.mixing @ self.basis

    def residual_squared(self, op: ConvOperator) -> Any:
        """``‖K − C·B‖_F²``, the sum of the squared coefficient differences (exact)."""
        if not isinstance(op, ConvOperator):
            raise InvalidTypeError(f"op must be a ConvOperator, got {type(op).__name__}")
        dense, target = self.to_operator()._unified(op)
        if dense.shape != target.shape:
            raise InvalidInputError(f"op has shape {target.shape}, the basis operator {dense.shape}")
        dom = dense.ring.domain
        total = dom.zero
        for row_a, row_b in zip(dense.matrix, target.matrix):
            for a, b in zip(row_a, row_b):
                for _, value in (a - b).iterterms():
                    total += value * value
        return total

    def latex(self) -> str:
        """``C \\cdot B(z)`` in LaTeX (plus the bias)."""
        bias = f" + {sympy.latex(self.mixing.bias_vector())}" if self.has_bias else ""
        return f"{sympy.latex(self.coefficients)} \\cdot {self.basis.latex()}{bias}"

    def _repr_latex_(self) -> str:
        return f"$\\displaystyle {self.latex()}$"

    def __repr__(self) -> str:
        rows = "" if self.basis_rows is None else f", basis filters {list(self.basis_rows)}"
        return (f"BasisOperator({self.out_channels}x{self.in_channels}, rank {self.rank}, "
                f"kernel {self.kernel_size}{rows})")


def symbolic_coefficients(out_channels: int, rank: int, name: str = "c",
                          subset: bool = False) -> np.ndarray:
    """An object array ``C`` (``C_out × r``) of symbols ``name_{oj}``; ``subset=True``: the
    seed's ``[I; A]`` (identity on the first ``r`` rows, symbols ``a_{oj}`` below)."""
    if not subset:
        return weight_symbols(name, (out_channels, rank))
    rest = weight_symbols("a", (out_channels - rank, rank)) if out_channels > rank else \
        np.empty((0, rank), dtype=object)
    top = np.array([[sympy.Integer(1 if i == j else 0) for j in range(rank)]
                    for i in range(rank)], dtype=object)
    return np.concatenate([top, rest]) if len(rest) else top


def _symbols_of(*arrays: Any) -> list[sympy.Symbol]:
    found: set[sympy.Symbol] = set()
    for array in arrays:
        if array is None:
            continue
        for value in np.asarray(array, dtype=object).flat:
            found |= getattr(value, "free_symbols", set())
    return sorted(found, key=str)


def prove_basis_identity(out_channels: int = 3, in_channels: int = 2, rank: int = 2,
                         kernel_size: int | Sequence[int] = (2, 2), *,
                         stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 1,
                         size: int | None = None, subset: bool = False,
                         bias: bool = True) -> Certificate | Counterexample:
    """``conv(W = C·B) = conv1x1(C) ∘ conv(B)`` for symbolic ``C``, ``B`` (and bias) as two
    PyTorch-semantics networks, compared by explicit index sums on a symbolic
    ``C_in × size × …`` input (zero padding, any stride): the left side is ONE convolution
    whose weights are the expressions ``W[o,i,a] = Σ_j C[o,j] B[j,i,a]``."""
    out_channels = int_arg(out_channels, "out_channels", minimum=1)
    in_channels = int_arg(in_channels, "in_channels", minimum=1)
    rank = int_arg(rank, "rank", minimum=1, maximum=out_channels)
    kernel = (kernel_size,) * 2 if isinstance(kernel_size, int) else tuple(kernel_size)
    size = optional_int_arg(size, "size", minimum=1) or max(kernel) + 2
    coefficients = symbolic_coefficients(out_channels, rank, "c", bool_arg(subset, "subset"))
    filters = weight_symbols("b", (rank, in_channels, *kernel))
    biases = np.array([sympy.Symbol(f"beta_{o}") for o in range(out_channels)], dtype=object) \
        if bias else None
    merged = np.tensordot(coefficients, filters, axes=([1], [0]))
    merged = np.vectorize(sympy.expand, otypes=[object])(merged)
    ndim = len(kernel)
    dense = Network(ndim, in_channels)
    dense.conv(dense.input, merged, biases, stride=stride, padding=padding)
    factored = Network(ndim, in_channels)
    hidden = factored.conv(factored.input, filters, stride=stride, padding=padding)
    factored.conv(hidden, coefficients.reshape(out_channels, rank, *(1,) * ndim), biases)
    form = "[I; A]" if subset else "C"
    return prove(dense, factored, input_shape=(in_channels, *(size,) * ndim),
                 claim=f"conv(W = {form} · B) = conv1x1({form}) ∘ conv(B)  "
                       f"(C_out={out_channels}, C_in={in_channels}, r={rank}, k={kernel})")
