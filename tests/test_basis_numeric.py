"""The float basis factorizations against independent computations, and the twins."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from laurentnet.algebra import BasisOperator as ExactBasis
from laurentnet.algebra import ConvOperator, InvalidInputError
from laurentnet.numeric import BasisOperator, KernelOperator, energy_rank, factorize

shapes = st.tuples(st.integers(1, 7), st.integers(1, 9), st.integers(0, 2**31 - 1))


def _matrix(m: int, n: int, seed: int, rank: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, n, generator=g, dtype=torch.float64)
    if rank is not None and rank < min(m, n):   # a matrix of lower rank
        a = torch.randn(m, rank, generator=g, dtype=torch.float64) @ \
            torch.randn(rank, n, generator=g, dtype=torch.float64)
    return a


@given(shapes, st.data())
def test_svd_error_is_the_discarded_singular_values(shape, data):
    m, n, seed = shape
    r = data.draw(st.integers(1, min(m, n)))
    a = _matrix(m, n, seed)
    f = factorize(a, r, "svd")
    sigma = torch.linalg.svdvals(a)              # independent: torch's own SVD
    discarded = float(torch.sqrt((sigma[r:] ** 2).sum()))
    assert f.error == pytest.approx(discarded, rel=1e-9, abs=1e-12)
    assert float(torch.linalg.norm(a - f.coefficients @ f.basis)) == pytest.approx(f.error, abs=1e-12)
    assert f.discarded == pytest.approx(discarded, rel=1e-9, abs=1e-12)
    # Eckart-Young: no subset basis of the same rank does better
    assert factorize(a, r, "qr").error >= f.error - 1e-9


@given(shapes, st.data())
def test_qr_basis_reproduces_the_chosen_filters_exactly(shape, data):
    m, n, seed = shape
    r = data.draw(st.integers(1, min(m, n)))
    a = _matrix(m, n, seed)
    f = factorize(a, r, "qr")
    rows = list(f.basis_rows)
    assert len(set(rows)) == r
    assert torch.equal(f.basis, a[rows])                      # bit for bit
    assert torch.equal(f.coefficients[rows], torch.eye(r, dtype=torch.float64))
    assert torch.equal((f.coefficients @ f.basis)[rows], a[rows])
    # the other rows are least squares: the residual is orthogonal to the basis filters
    residual = a - f.coefficients @ f.basis
    assert torch.allclose(residual @ f.basis.T, torch.zeros(m, r, dtype=torch.float64), atol=1e-9)


def test_qr_picks_the_pivots_of_scipy_column_pivoted_qr():
    import scipy.linalg
    a = _matrix(6, 9, 4)
    _, _, pivots = scipy.linalg.qr(a.numpy().T, pivoting=True)
    assert factorize(a, 3, "qr").basis_rows == tuple(int(p) for p in pivots[:3])


@given(st.lists(st.floats(0, 10), min_size=1, max_size=8), st.floats(0.01, 1.0))
def test_energy_rank_is_the_smallest_rank_keeping_the_energy(values, energy):
    sigma = np.sort(np.array(values))[::-1]
    r = energy_rank(torch.tensor(sigma.copy()), energy)
    total = float((sigma ** 2).sum())
    if total == 0:
        assert r == 1
        return
    kept = np.cumsum(sigma ** 2) / total
    assert kept[r - 1] >= energy * (1 - 1e-12)
    assert r == 1 or kept[r - 2] < energy


def test_energy_one_gives_the_numerical_rank():
    a = _matrix(6, 8, 1, rank=3)
    assert energy_rank(torch.linalg.svdvals(a), 1.0) in (3, 4)
    f = factorize(a, 3, "svd")
    assert f.relative_error < 1e-12 and f.energy == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["qr", "svd"])
def test_full_rank_basis_operator_is_the_operator(method):
    w = _matrix(6, 4 * 9, 2).reshape(6, 4, 3, 3)
    op = KernelOperator.from_weight(w, torch.arange(6.0), stride=2, padding=1, dilation=2)
    basis = BasisOperator.from_operator(op, method=method)
    assert basis.rank == 6 and basis.stride == (2, 2)
    assert basis.to_operator().allclose(op, rtol=0, atol=1e-12)
    assert basis.residual_squared(op) < 1e-24
    low = BasisOperator.from_operator(op, 2, method="svd")
    sigma = torch.linalg.svdvals(w.reshape(6, -1))
    assert low.residual_squared(op) == pytest.approx(float((sigma[2:] ** 2).sum()), rel=1e-9)


def test_twins_agree_on_an_integer_weight():
    g = np.random.default_rng(3)
    w = g.integers(-2, 3, (4, 2, 2, 2)).astype(np.float64)
    w[3] = w[0] - 2 * w[1]                        # rank 3
    exact = ExactBasis.from_operator(ConvOperator.from_weight(w, [1, 2, 3, 4], padding=1))
    float_ = BasisOperator.from_operator(KernelOperator.from_weight(w, [1, 2, 3, 4], padding=1),
                                         3, method="qr")
    assert exact.rank == float_.rank == 3
    for name in ("shape", "out_channels", "in_channels", "ndim", "stride", "kernel_size",
                 "has_bias", "rank"):
        assert getattr(exact, name) == getattr(float_, name), name
    for name in ("parameter_count", "dense_parameter_count", "multiply_adds",
                 "dense_multiply_adds", "cheaper_than_dense", "to_operator", "from_operator",
                 "from_factors", "residual_squared", "coefficients", "basis_rows", "mixing",
                 "basis"):
        assert hasattr(exact, name) and hasattr(float_, name), name
    assert exact.parameter_count() == float_.parameter_count()
    assert exact.multiply_adds(7) == float_.multiply_adds(7)
    assert KernelOperator.from_algebra(exact.to_operator()).allclose(float_.to_operator(),
                                                                     rtol=0, atol=1e-12)


def test_refusals():
    a = _matrix(3, 4, 0)
    with pytest.raises(InvalidInputError, match="rank must be at most 3"):
        factorize(a, 4)
    with pytest.raises(InvalidInputError, match="positive integer"):
        factorize(a, 0)
    with pytest.raises(InvalidInputError, match="'qr', 'svd'"):
        factorize(a, 1, "lu")
    with pytest.raises(InvalidInputError, match="finite"):
        factorize(torch.tensor([[float("nan"), 1.0]]), 1)
    with pytest.raises(InvalidInputError, match=r"energy must be in \(0, 1\]"):
        energy_rank(torch.ones(3), 1.5)
    op = KernelOperator.from_weight(a.reshape(3, 4, 1, 1))
    with pytest.raises(InvalidInputError, match="rank or energy, not both"):
        BasisOperator.from_operator(op, 1, energy=0.5)
