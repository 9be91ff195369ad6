"""numeric.spectrum: the symbol on the torus against the algebra and dense circulant matrices."""
from __future__ import annotations

import cmath

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from laurentnet.numeric.kernels import KernelOperator
from laurentnet.numeric.memory import MemoryBudgetError
from laurentnet.numeric.spectrum import (implicit_solve, lipschitz_bound, operator_norm, singular_values,
                              symbol)

CONV = {1: F.conv1d, 2: F.conv2d}


def random_layer(seed, c_out, c_in, k, stride=1, dilation=1, ndim=2):
    """A torch weight (kernel ``k`` per axis, odd ``d (k - 1)`` allowed) and its
    circular-padding arguments (``2p = d (k - 1)``, rounded up: the extra tap folds)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn((c_out, c_in, *(k,) * ndim), generator=g, dtype=torch.float64)
    return w, dilation * (k - 1) // 2, stride, dilation


def dense_circular(w, p, s, d, n):
    """The operator matrix of torch's circular-padded conv on an n-periodic grid, built by
    pushing the identity basis through ``F.pad(mode='circular')`` + ``conv``."""
    ndim = w.ndim - 2
    c_in = w.shape[1]
    size = c_in * int(np.prod(n))
    basis = torch.eye(size, dtype=torch.float64).reshape(size, c_in, *n)
    total = d * (w.shape[-1] - 1)
    pad = [p, total - p] * ndim  # the same on every axis
    y = CONV[ndim](F.pad(basis, pad, mode="circular"), w, stride=s, dilation=d)
    return y.reshape(size, -1).T


def test_symbol_matches_algebra_evaluate_at_roots_of_unity():
    g = torch.Generator().manual_seed(0)
    op = KernelOperator(torch.randn(2, 3, 4, 3, generator=g, dtype=torch.float64), (-3, 2))
    exact = op.to_algebra()
    n = (5, 7)
    S = symbol(op, n)
    assert S.shape == (5, 7, 2, 3)
    for j in [(0, 0), (1, 3), (4, 6), (2, 1)]:
        point = [cmath.exp(2j * cmath.pi * jj / nn) for jj, nn in zip(j, n)]
        np.testing.assert_allclose(S[j].numpy(), exact.evaluate(point), rtol=1e-12, atol=1e-12)
    one_d = KernelOperator(torch.randn(1, 1, 6, generator=g, dtype=torch.float64), -9)
    point = [cmath.exp(2j * cmath.pi * 3 / 4)]  # a kernel longer than the period folds
    np.testing.assert_allclose(symbol(one_d, 4)[3].numpy(), one_d.to_algebra().evaluate(point),
                               rtol=1e-12)


def test_symbol_of_composition_is_product_with_noble_identity():
    """Frequency form of K = K2(z^s1) K1(z): symbol(A2 @ A1)(θ) = symbol(A2)(s1 θ) symbol(A1)(θ)."""
    w1, p1, _, _ = random_layer(1, 4, 3, 3)
    w2, p2, _, _ = random_layer(2, 2, 4, 3)
    a1 = KernelOperator.from_weight(w1, padding=p1, stride=2)
    a2 = KernelOperator.from_weight(w2, padding=p2)
    n = 12
    lhs = symbol(a2 @ a1, n)
    s1 = symbol(a1, n)
    double = torch.arange(n) * 2 % n
    s2 = symbol(a2, n)[double][:, double]
    torch.testing.assert_close(lhs, s2 @ s1)
    b = KernelOperator.from_weight(w1, padding=p1)
    torch.testing.assert_close(symbol(b.adjoint(), n), symbol(b, n).mH)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 3), st.integers(1, 3), st.sampled_from([1, 3]),
       st.sampled_from([1, 2]), st.sampled_from([1, 2]))
def test_singular_values_and_norm_match_dense_circulant(seed, c_out, c_in, k, stride, dilation):
    w, p, s, d = random_layer(seed, c_out, c_in, k, stride, dilation)
    op = KernelOperator.from_weight(w, padding=p, stride=s, dilation=d)
    n = (6, 4)
    D = dense_circular(w, p, s, d, n)
    expected = torch.linalg.matrix_norm(D, ord=2).item()
    assert operator_norm(op, n) == pytest.approx(expected, rel=1e-10)
    mine = torch.sort(singular_values(op, n).flatten(), descending=True).values
    full = torch.linalg.svdvals(D)
    if s == 1:  # the one-sided grid holds each conjugate pair once
        assert set(np.round(mine.numpy(), 9)) == set(np.round(full.numpy(), 9))
    else:
        torch.testing.assert_close(mine, full[: mine.numel()], rtol=1e-9, atol=1e-9)
        assert torch.all(full[mine.numel():] < 1e-9)


def test_lipschitz_bound_of_a_chain():
    n = (8, 8)
    specs = [(1, 4, 3, 3, 1), (2, 4, 4, 3, 2), (3, 2, 4, 1, 1)]  # seed, out, in, k, stride
    layers, dense = [], []
    size = n
    for seed, o, i, k, s in specs:
        w, p, _, _ = random_layer(seed, o, i, k)
        layers.append(KernelOperator.from_weight(w, torch.ones(o), padding=p, stride=s))
        dense.append(dense_circular(w, p, s, 1, size))
        size = tuple(m // s for m in size)
    bound = lipschitz_bound(layers, n)
    chain = dense[2] @ dense[1] @ dense[0]
    assert bound.collapsed == pytest.approx(torch.linalg.matrix_norm(chain, ord=2).item(), rel=1e-10)
    for mine, D in zip(bound.layer_norms, dense):
        assert mine == pytest.approx(torch.linalg.matrix_norm(D, ord=2).item(), rel=1e-10)
    assert bound.collapsed <= bound.product * (1 + 1e-12) and bound.ratio >= 1


@pytest.mark.parametrize("c_out,c_in,h,batched", [(3, 2, 0.7, False), (2, 3, 5.0, True), (3, 3, 0.05, True),
                                                 (3, 3, -0.3, False)])  # h < 0: indefinite, LU
def test_implicit_solve_matches_dense_solve(c_out, c_in, h, batched):
    w, p, _, _ = random_layer(c_out * 10 + c_in, c_out, c_in, 3)
    op = KernelOperator.from_weight(w, padding=p)
    n = (6, 5)
    D = dense_circular(w, p, 1, 1, n)
    A = torch.eye(D.shape[1], dtype=torch.float64) + h * D.T @ D
    g = torch.Generator().manual_seed(7)
    y = torch.randn((2, c_in, *n) if batched else (c_in, *n), generator=g, dtype=torch.float64)
    z = implicit_solve(op, y, h)
    expected = torch.linalg.solve(A, y.reshape(-1, D.shape[1]).T).T.reshape(y.shape)
    torch.testing.assert_close(z, expected, rtol=1e-10, atol=1e-10)


def test_spectrum_errors_and_budget(monkeypatch):
    op = KernelOperator.from_weight(torch.ones(2, 2, 3, 3), stride=2)
    with pytest.raises(ValueError, match="divide"):
        operator_norm(op, (5, 6))
    with pytest.raises(ValueError, match="stride-1"):
        implicit_solve(op, torch.zeros(2, 6, 6), 1.0)
    monkeypatch.setenv("LAURENTNET_MEMORY_BUDGET", "1K")
    with pytest.raises(MemoryBudgetError, match="symbol"):
        symbol(op, (64, 64))
