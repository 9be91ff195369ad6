"""Basis convolutions in floating point: the twin of :mod:`laurentnet.algebra.basis`.

A convolution's weight reshaped to ``M`` (``C_out × C_in·k^d``, one row per filter) is
factored as ``M ≈ C B`` with ``r`` basis filters ``B`` (``r × C_in·k^d``) and the mixing
``C`` (``C_out × r``); the layer then runs as the ``r`` basis convolutions followed by a
1×1 mixing, ``W(z) = C · B(z)``.  Two ways to choose the basis (:func:`factorize`):

* ``"qr"`` — a subset of the actual filters, seed 003's form ``[I; A] B``: column-pivoted
  QR of ``Mᵀ`` (``scipy.linalg.qr(Mᵀ, pivoting=True)``, ``Mᵀ P = Q R``) picks the filters
  ``P[:r]`` greedily by the norm of what they add to the span of those already chosen;
  ``B = M[P[:r]]`` exactly, ``C[P[:r]] = I`` exactly, and the other rows of ``C`` are the
  least-squares coefficients ``A = argmin ‖M_rest − A B‖_F`` (``scipy.linalg.lstsq``);
* ``"svd"`` — optimal in the Frobenius norm (Eckart–Young): ``M = U Σ Vᵀ``,
  ``C = U_r Σ_r^{1/2}``, ``B = Σ_r^{1/2} V_rᵀ`` (the singular values split evenly between
  the two factors), whose error is exactly the discarded singular values,
  ``‖M − C B‖_F = (Σ_{i>r} σ_i²)^{1/2}``.

The ``energy`` rank (:func:`energy_rank`) is the smallest ``r`` with
``Σ_{i≤r} σ_i² ≥ E Σ_i σ_i²``.  :class:`BasisOperator` holds the factors as two
:class:`~laurentnet.numeric.KernelOperator`\\ s (``mixing`` with the bias, ``basis`` with
the stride), under the same names as the exact twin.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import scipy.linalg
import torch

from ..algebra.errors import InvalidInputError, InvalidTypeError
from ..algebra.validate import choice_arg, int_arg, real_arg
from .kernels import KernelOperator

__all__ = ["BasisOperator", "Factorization", "MatrixFactors", "factorize", "energy_rank",
           "BASIS_METHODS"]

#: ``"qr"``: a subset of the filters (seed 003's ``[I; A]``); ``"svd"``: optimal
BASIS_METHODS = ("qr", "svd")


@dataclass(frozen=True)
class Factorization:
    """``M ≈ C B`` of rank ``rank``: ``coefficients`` C (``m × r``), ``basis`` B
    (``r × n``), ``basis_rows`` (the rows of ``M`` that are B, ``"qr"`` only), the full
    spectrum ``singular_values`` of ``M``, ``error = ‖M − C B‖_F`` (computed from the
    factors), ``norm = ‖M‖_F`` and ``discarded = (Σ_{i>r} σ_i²)^{1/2}`` (the SVD's error,
    the lower bound of every rank-``r`` factorization)."""
    method: str
    rank: int
    coefficients: torch.Tensor
    basis: torch.Tensor
    basis_rows: tuple[int, ...] | None
    singular_values: torch.Tensor
    error: float
    norm: float
    discarded: float

    @property
    def relative_error(self) -> float:
        """``‖M − C B‖_F / ‖M‖_F`` (0 for a zero matrix)."""
        return self.error / self.norm if self.norm else 0.0

    @property
    def energy(self) -> float:
        """``Σ_{i≤r} σ_i² / Σ σ_i²``: the share of ``‖M‖_F²`` the first ``r`` singular
        directions hold (1 for a zero matrix)."""
        total = float((self.singular_values ** 2).sum())
        return float((self.singular_values[:self.rank] ** 2).sum()) / total if total else 1.0

    def product(self) -> torch.Tensor:
        """``C B``, the rank-``r`` approximation of ``M``."""
        return self.coefficients @ self.basis


def _matrix_arg(matrix: Any) -> torch.Tensor:
    if not isinstance(matrix, torch.Tensor):
        matrix = torch.as_tensor(np.asarray(matrix, dtype=np.float64))
    if matrix.ndim != 2 or min(matrix.shape) < 1:
        raise InvalidInputError(f"matrix must be a non-empty 2-D array (one row per filter), "
                                f"got shape {tuple(matrix.shape)}")
    if matrix.is_complex() or not torch.isfinite(matrix).all():
        raise InvalidInputError("matrix must hold finite real numbers")
    return matrix.detach().to(torch.float64).cpu()


class MatrixFactors:
    """The decompositions of one matrix ``M``, computed once and reused for every rank:
    ``svd()`` (``U, σ, Vᵀ``) and ``qr_pivots()`` (the order column-pivoted QR of ``Mᵀ``
    chooses the rows of ``M``)."""

    def __init__(self, matrix: Any):
        self.matrix = _matrix_arg(matrix)
        self._svd: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._pivots: np.ndarray | None = None

    @property
    def max_rank(self) -> int:
        """``min(m, n)``: the largest rank a factorization can have."""
        return min(self.matrix.shape)

    def svd(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._svd is None:
            self._svd = scipy.linalg.svd(self.matrix.numpy(), full_matrices=False,
                                         lapack_driver="gesdd")
        return self._svd

    def singular_values(self) -> torch.Tensor:
        return torch.from_numpy(self.svd()[1].copy())

    def qr_pivots(self) -> np.ndarray:
        if self._pivots is None:
            _, _, self._pivots = scipy.linalg.qr(self.matrix.numpy().T, mode="economic",
                                                 pivoting=True)
        return self._pivots

    def factor(self, rank: int, method: str = "svd") -> Factorization:
        """The rank-``rank`` factorization by ``method`` (module docstring)."""
        method = choice_arg(method, "method", BASIS_METHODS)
        rank = int_arg(rank, "rank", minimum=1, maximum=self.max_rank)
        m = self.matrix.numpy()
        sigma = self.svd()[1]
        if method == "svd":
            u, _, vt = self.svd()
            root = np.sqrt(sigma[:rank])
            coefficients, basis, rows = u[:, :rank] * root, root[:, None] * vt[:rank], None
        else:
            coefficients, basis, rows = self._subset(m, rank)
        error = float(np.linalg.norm(m - coefficients @ basis))
        return Factorization(method, rank, torch.from_numpy(np.ascontiguousarray(coefficients)),
                             torch.from_numpy(np.ascontiguousarray(basis)), rows,
                             torch.from_numpy(sigma.copy()), error, float(np.linalg.norm(m)),
                             float(np.sqrt((sigma[rank:] ** 2).sum())))

    def _subset(self, m: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
        """``B = M[P[:r]]``, ``C[P[:r]] = I``, ``C[rest] = lstsq`` (module docstring)."""
        chosen = [int(i) for i in self.qr_pivots()[:rank]]
        rest = [i for i in range(m.shape[0]) if i not in set(chosen)]
        basis = m[chosen].copy()
        coefficients = np.zeros((m.shape[0], rank))
        coefficients[chosen, np.arange(rank)] = 1.0
        if rest:
            solution = scipy.linalg.lstsq(basis.T, m[rest].T, lapack_driver="gelsd")[0]
            coefficients[rest] = solution.T
        return coefficients, basis, tuple(chosen)


def factorize(matrix: Any, rank: int, method: str = "svd") -> Factorization:
    """``M ≈ C B`` of rank ``rank`` (``1 ≤ rank ≤ min(m, n)``) by ``"qr"`` or ``"svd"``."""
    return MatrixFactors(matrix).factor(rank, method)


def energy_rank(singular_values: Any, energy: float) -> int:
    """The smallest ``r ≥ 1`` with ``Σ_{i≤r} σ_i² ≥ energy · Σ σ_i²``, ``0 < energy ≤ 1``."""
    energy = real_arg(energy, "energy", positive=True)
    if energy > 1:
        raise InvalidInputError(f"energy must be in (0, 1] (the share of ‖W‖_F² to keep), got {energy}")
    sigma = np.sort(np.asarray(torch.as_tensor(singular_values, dtype=torch.float64)))[::-1]
    if sigma.size == 0:
        raise InvalidInputError("singular_values is empty")
    cumulative = np.cumsum(sigma ** 2)
    if cumulative[-1] == 0:
        return 1
    # a relative slack of a few ulps, so that energy=1 gives the numerical rank and not
    # min(m, n) because of round-off in the smallest singular values
    target = energy * cumulative[-1] * (1 - 8 * np.finfo(np.float64).eps)
    return int(np.searchsorted(cumulative, target) + 1)


class BasisOperator:
    """``W(z) = C · B(z) + b`` as two :class:`KernelOperator`\\ s: ``basis`` (``r × C_in``,
    the stride) then ``mixing`` (the constant ``C_out × r`` matrix, the bias); the twin of
    :class:`laurentnet.algebra.BasisOperator`.  ``basis_rows``: the original filters that
    are the basis (``method="qr"``), else None.  Immutable."""

    __slots__ = ("mixing", "basis", "basis_rows")

    def __init__(self, mixing: KernelOperator, basis: KernelOperator,
                 basis_rows: Sequence[int] | None = None):
        for what, op in (("mixing", mixing), ("basis", basis)):
            if not isinstance(op, KernelOperator):
                raise InvalidTypeError(f"{what} must be a KernelOperator, got {type(op).__name__}")
        if mixing.kernel_size != (1,) * mixing.ndim or mixing.low != (0,) * mixing.ndim \
                or any(s != 1 for s in mixing.stride):
            raise InvalidInputError("mixing must be a constant matrix (a 1x1 convolution, "
                                    "stride 1): W(z) = C · B(z) needs a constant C")
        if basis.has_bias:
            raise InvalidInputError("basis must have no bias (the mixing carries it)")
        if mixing.ndim != basis.ndim or mixing.in_channels != basis.out_channels:
            raise InvalidInputError(f"mixing takes {mixing.in_channels} channels ({mixing.ndim}-D), "
                                    f"the basis gives {basis.out_channels} ({basis.ndim}-D)")
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
    def from_factors(cls, coefficients: Any, basis: KernelOperator, bias: Any = None,
                     basis_rows: Sequence[int] | None = None) -> "BasisOperator":
        """``C`` (``C_out × r``) and the basis operator ``B``; ``bias`` of length ``C_out``."""
        if not isinstance(basis, KernelOperator):
            raise InvalidTypeError(f"basis must be a KernelOperator, got {type(basis).__name__}")
        c = coefficients if isinstance(coefficients, torch.Tensor) else \
            torch.as_tensor(np.asarray(coefficients, dtype=np.float64))
        if c.ndim != 2 or c.shape[1] != basis.out_channels or c.shape[0] < 1:
            raise InvalidInputError(f"coefficients must be a C_out x {basis.out_channels} matrix "
                                    f"(one column per basis filter), got shape {tuple(c.shape)}")
        c = c.to(basis.dtype)
        mixing = KernelOperator(c.reshape(*c.shape, *(1,) * basis.ndim), 0, 1, bias)
        return cls(mixing, basis, basis_rows)

    @classmethod
    def from_operator(cls, op: KernelOperator, rank: int | None = None, *,
                      method: str = "svd", energy: float | None = None) -> "BasisOperator":
        """Factor ``op``'s filters ``M`` (rows ``coeffs[o].flatten()``) by ``method``
        (``"qr"``: a subset of the filters, ``"svd"``: optimal); ``rank`` (default: the
        ``energy`` rank, or ``min(C_out, C_in·k^d)`` — then ``C · B(z) = K(z)`` up to
        round-off).  The reordering of the taps between a PyTorch weight and ``coeffs`` is a
        fixed permutation of the columns of ``M``, which changes neither factor."""
        if not isinstance(op, KernelOperator):
            raise InvalidTypeError(f"op must be a KernelOperator, got {type(op).__name__}")
        factors = MatrixFactors(op.coeffs.reshape(op.out_channels, -1))
        if rank is None:
            rank = factors.max_rank if energy is None else \
                energy_rank(factors.singular_values(), energy)
        elif energy is not None:
            raise InvalidInputError("give rank or energy, not both")
        f = factors.factor(rank, method)
        basis = KernelOperator(f.basis.to(op.dtype).reshape(f.rank, *op.coeffs.shape[1:]),
                               op.low, op.stride)
        return cls.from_factors(f.coefficients.to(op.dtype), basis, op.bias, f.basis_rows)

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
        return self.out_channels, self.in_channels

    @property
    def ndim(self) -> int:
        return self.basis.ndim

    @property
    def stride(self) -> tuple[int, ...]:
        return self.basis.stride

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return self.basis.kernel_size

    @property
    def has_bias(self) -> bool:
        return self.mixing.has_bias

    @property
    def coefficients(self) -> torch.Tensor:
        """``C``, the ``C_out × r`` mixing matrix."""
        return self.mixing.coeffs.reshape(self.out_channels, self.rank)

    def parameter_count(self, bias: bool = True) -> int:
        """``r C_in k^d + C_out r`` (``+ C_out`` biases)."""
        taps = math.prod(self.kernel_size)
        return self.rank * self.in_channels * taps + self.out_channels * self.rank + \
            (self.out_channels if bias and self.has_bias else 0)

    def dense_parameter_count(self, bias: bool = True) -> int:
        """``C_out C_in k^d`` (``+ C_out``)."""
        return self.out_channels * self.in_channels * math.prod(self.kernel_size) + \
            (self.out_channels if bias and self.has_bias else 0)

    def multiply_adds(self, positions: int = 1) -> int:
        """``positions · (r C_in k^d + C_out r)``."""
        positions = int_arg(positions, "positions", minimum=0)
        taps = math.prod(self.kernel_size)
        return positions * (self.rank * self.in_channels * taps + self.out_channels * self.rank)

    def dense_multiply_adds(self, positions: int = 1) -> int:
        """``positions · C_out C_in k^d``."""
        positions = int_arg(positions, "positions", minimum=0)
        return positions * self.out_channels * self.in_channels * math.prod(self.kernel_size)

    def cheaper_than_dense(self) -> bool:
        return self.multiply_adds() < self.dense_multiply_adds()

    # -- algebra --------------------------------------------------------------------------
    def to_operator(self) -> KernelOperator:
        """``C · B(z)`` with the bias: the dense convolution (``mixing @ basis``)."""
        return self.mixing @ self.basis

    def residual_squared(self, op: KernelOperator) -> float:
        """``‖K − C·B‖_F²`` over the union of the supports."""
        if not isinstance(op, KernelOperator):
            raise InvalidTypeError(f"op must be a KernelOperator, got {type(op).__name__}")
        difference = (self.to_operator().linear_part() - op.linear_part()).coeffs
        return float((difference.to(torch.float64) ** 2).sum())

    def __repr__(self) -> str:
        rows = "" if self.basis_rows is None else f", basis filters {list(self.basis_rows)}"
        return (f"BasisOperator({self.out_channels}x{self.in_channels}, rank {self.rank}, "
                f"kernel {self.kernel_size}{rows}, {str(self.basis.dtype).removeprefix('torch.')})")
