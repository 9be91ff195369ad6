"""numeric.kernels: the array-level operator against the exact algebra and against torch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from laurentnet.algebra import ConvOperator
from laurentnet.numeric import KernelOperator, block_diag, polymatmul, vstack
from laurentnet.numeric.memory import MemoryBudgetError

CONV = {1: F.conv1d, 2: F.conv2d}
FAST = settings(max_examples=25, deadline=None)


@st.composite
def layers(draw, ndim=None, c_in=None, groups_ok=True):
    """A random small conv layer: (weight, bias, stride, padding, dilation, groups)."""
    ndim = ndim or draw(st.sampled_from([1, 2]))
    groups = draw(st.sampled_from([1, 2])) if groups_ok else 1
    c_in = c_in or groups * draw(st.integers(1, 2))
    if c_in % groups:
        groups = 1
    c_out = groups * draw(st.integers(1, 2))
    k = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    w = torch.randn((c_out, c_in // groups, *k), generator=g, dtype=torch.float64)
    b = torch.randn(c_out, generator=g, dtype=torch.float64) if draw(st.booleans()) else None
    stride = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(ndim))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    return w, b, stride, padding, dilation, groups


def both(layer):
    """The same layer in the numeric and in the exact package."""
    w, b, stride, padding, dilation, groups = layer
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    num = KernelOperator.from_weight(w, b, **kw)
    alg = ConvOperator.from_weight(w.numpy(), None if b is None else b.numpy(), **kw)
    return num, alg


@FAST
@given(layers())
def test_from_weight_matches_algebra_exactly(layer):
    num, alg = both(layer)
    assert num.to_algebra() == alg
    back = KernelOperator.from_algebra(alg)
    assert back.allclose(num, rtol=0, atol=0)


@FAST
@given(st.data())
def test_composition_matches_algebra(data):
    ndim = data.draw(st.sampled_from([1, 2]))
    l1 = data.draw(layers(ndim=ndim))
    l2 = data.draw(layers(ndim=ndim, c_in=l1[0].shape[0]))
    n1, a1 = both(l1)
    n2, a2 = both(l2)
    exact = KernelOperator.from_algebra(a2 @ a1)
    assert (n2 @ n1).allclose(exact, rtol=1e-12, atol=1e-12)
    assert n2.compose(n1, method="conv").allclose(exact, rtol=1e-12, atol=1e-12)
    assert exact.stride == tuple(a * b for a, b in zip(l1[2], l2[2]))


@FAST
@given(st.data())
def test_sum_scale_dilate_adjoint_match_algebra(data):
    ndim = data.draw(st.sampled_from([1, 2]))
    l1 = data.draw(layers(ndim=ndim, groups_ok=False))
    w, b, stride, *_ = l1
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    k2 = tuple(data.draw(st.integers(1, 3)) for _ in range(ndim))
    w2 = torch.randn((*w.shape[:2], *k2), generator=g, dtype=torch.float64)
    l2 = (w2, None, stride, tuple(data.draw(st.integers(0, 2)) for _ in range(ndim)), 1, 1)
    n1, a1 = both(l1)
    n2, a2 = both(l2)
    tol = dict(rtol=1e-13, atol=1e-13)
    assert (n1 + n2).allclose(KernelOperator.from_algebra(a1 + a2), **tol)
    assert (n1 - 0.5 * n2).allclose(KernelOperator.from_algebra(a1 - a2 * 0.5), **tol)
    d = data.draw(st.integers(1, 3))
    assert n1.dilate(d).allclose(KernelOperator.from_algebra(a1.dilate(d)), **tol)
    unit = both((w, b, 1, *l1[3:]))
    assert unit[0].adjoint().allclose(KernelOperator.from_algebra(unit[1].adjoint()), **tol)
    assert torch.allclose(n1.at_one(), torch.tensor(np.array(a1.at_one(), dtype=float)), **tol)


def test_composition_at_64_channels_matches_torch_layers():
    g = torch.Generator().manual_seed(0)
    specs = [(64, 3, (3, 3), 1), (64, 64, (3, 3), 2), (64, 64, (1, 1), 1), (32, 64, (3, 2), 2)]
    weights = [torch.randn((o, i, *k), generator=g, dtype=torch.float64) / (i * np.prod(k)) ** 0.5
               for o, i, k, _ in specs]
    biases = [torch.randn(o, generator=g, dtype=torch.float64) for o, *_ in specs]
    x = torch.randn(2, 3, 29, 31, generator=g, dtype=torch.float64)
    ref = x
    for w, b, (*_, s) in zip(weights, biases, specs):
        ref = F.conv2d(ref, w, b, stride=s)
    ops = [KernelOperator.from_weight(w, b, stride=s)
           for w, b, (*_, s) in zip(weights, biases, specs)]
    total = ops[0]
    for op in ops[1:]:
        total = op @ total
    assert total.stride == (4, 4) and total.shape == (32, 3)
    t = total.to_weight()
    y = F.conv2d(x, t.weight, t.bias, stride=t.stride, padding=t.padding)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    # float32 on request (and the conv product) agrees to float32 precision
    total32 = ops[0].to(torch.float32)
    for op in ops[1:]:
        total32 = op.to(torch.float32).compose(total32, method="conv")
    assert total32.dtype == torch.float32
    t32 = total32.to_weight()
    y32 = F.conv2d(x.float(), t32.weight, t32.bias, stride=t32.stride, padding=t32.padding)
    torch.testing.assert_close(y32.double(), ref, rtol=1e-4, atol=1e-4)


@FAST
@given(st.integers(-3, 3), st.integers(1, 4), st.integers(1, 2), st.integers(0, 2**31 - 1))
def test_to_weight_matches_algebra_layout(low, size, stride, seed):
    """Kernels looking only ahead (high < 0) or only back (low > 0) included."""
    g = torch.Generator().manual_seed(seed)
    op = KernelOperator(torch.randn(2, 3, size, generator=g, dtype=torch.float64), low, stride,
                        torch.randn(2, generator=g, dtype=torch.float64))
    mine = op.to_weight()
    theirs = op.to_algebra().to_weight()
    assert mine.padding == tuple(theirs.padding) and mine.stride == tuple(theirs.stride)
    np.testing.assert_array_equal(mine.weight.numpy(), theirs.weight)
    again = KernelOperator.from_weight(mine.weight, mine.bias, **mine.kwargs())
    assert again.allclose(op, rtol=0, atol=0)


def test_groups_block_diag_concat_split_against_torch():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    grouped = KernelOperator.from_weight(w, b, padding=1, groups=3)
    parts = [KernelOperator.from_weight(w[2 * i:2 * i + 2], b[2 * i:2 * i + 2], padding=1)
             for i in range(3)]
    assert block_diag(parts).allclose(grouped, rtol=0, atol=0)
    x = torch.randn(2, 6, 7, 8, generator=g, dtype=torch.float64)
    t = grouped.to_weight()
    torch.testing.assert_close(F.conv2d(x, t.weight, t.bias, padding=t.padding),
                               F.conv2d(x, w, b, padding=1, groups=3))
    # channel concatenation and split are inverse; concat output = cat of outputs
    w2 = torch.randn(4, 6, 1, 1, generator=g, dtype=torch.float64)
    shifted = KernelOperator.from_weight(w2, padding=0)
    stacked = vstack([grouped, shifted])
    assert stacked[:6].allclose(grouped, rtol=0, atol=0)
    assert stacked[6:].allclose(shifted, rtol=0, atol=0)
    assert stacked[[0, 7]].allclose(vstack([grouped[0], shifted[1]]), rtol=0, atol=0)
    assert stacked.columns([1, 2]).shape == (10, 2)


def test_adjoint_is_conv_transpose():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(5, 3, 3, 4, generator=g, dtype=torch.float64)
    op = KernelOperator.from_weight(w, padding=(1, 2))
    y = torch.randn(2, 5, 6, 7, generator=g, dtype=torch.float64)
    t = op.adjoint().to_weight()
    mine = F.conv2d(y, t.weight, padding=t.padding)
    torch.testing.assert_close(mine, F.conv_transpose2d(y, w, padding=(1, 2)))
    # the adjoint of a strided conv is the up-sampling (transposed) conv with the same weight
    assert KernelOperator.from_weight(w, stride=2).adjoint().allclose(
        KernelOperator.from_weight(w, stride=2, transposed=True), rtol=0, atol=0)


def test_polymatmul_methods_agree_and_handle_dilation():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(4, 3, 2, 3, generator=g, dtype=torch.float64)
    b = torch.randn(3, 2, 3, 1, generator=g, dtype=torch.float64)
    fft = polymatmul(a, b, (2, 3), method="fft")
    conv = polymatmul(a, b, (2, 3), method="conv")
    assert fft.shape == (4, 2, 2 * 1 + 3, 3 * 2 + 1)
    # one entry by the definition: C[o,c,t] = sum_m sum_{d a + b = t} A[o,m,a] B[m,c,b]
    expected = sum(a[1, m, ia, ja] * b[m, 0, ib, jb] for m in range(3) for ia in range(2)
                   for ja in range(3) for ib in range(3) for jb in range(1)
                   if (2 * ia + ib, 3 * ja + jb) == (2, 3))
    torch.testing.assert_close(fft[1, 0, 2, 3], expected)
    torch.testing.assert_close(fft, conv)


def test_mod_circular_and_trimmed_match_algebra():
    g = torch.Generator().manual_seed(4)
    op = KernelOperator(torch.randn(1, 1, 9, generator=g, dtype=torch.float64), -5)
    folded = op.mod_circular(4)
    exact = op.to_algebra().matrix[0][0].mod_circular(4)
    assert folded.kernel_size == (4,) and folded.low == (0,)
    np.testing.assert_allclose(folded.coeffs[0, 0].numpy(),
                               [float(exact.coeff(i)) for i in range(4)], rtol=1e-15)
    padded = KernelOperator(F.pad(op.coeffs, (2, 3)), -7)
    assert padded.trimmed().low == (-5,) and padded.trimmed().allclose(op, rtol=0, atol=0)


def test_errors_are_clear():
    op = KernelOperator.identity(2)
    with pytest.raises(AttributeError, match="immutable"):
        op.stride = (2, 2)
    with pytest.raises(ValueError, match="non-finite"):
        KernelOperator.from_weight(torch.tensor([[[1.0, float("nan")]]]))
    with pytest.raises(ValueError, match="takes 2 channels"):
        op @ KernelOperator.identity(3)
    with pytest.raises(ValueError, match="strides"):
        op + KernelOperator(op.coeffs, 0, 2)
    transposed = ConvOperator.from_weight(np.ones((1, 1, 2)), stride=2, transposed=True)
    with pytest.raises(ValueError, match="up-sampling"):  # the twin refuses what algebra does
        KernelOperator.from_algebra(transposed) @ KernelOperator.from_weight(np.ones((1, 1, 1)),
                                                                            stride=2)
    symbolic = ConvOperator.symbolic("w", 1, 1, 2, ndim=1)
    with pytest.raises(ValueError, match="symbolic"):
        KernelOperator.from_algebra(symbolic)


def test_memory_guard_refuses_before_allocating(monkeypatch):
    # a 20000 x 20000 float32 composed kernel (1.6 GB) from two tiny factors
    tall = KernelOperator(torch.ones(20000, 1, 1), 0)
    wide = KernelOperator(torch.ones(1, 20000, 1), 0)
    with pytest.raises(MemoryBudgetError) as info:
        tall.compose(wide, budget=10**8)
    assert info.value.estimate >= 20000 ** 2 * 4
    monkeypatch.setenv("LAURENTNET_MEMORY_BUDGET", "100M")
    with pytest.raises(MemoryBudgetError, match="over the memory budget"):
        tall @ wide
    # a stride of 10^6 would dilate the outer 3x3 kernel to ~(2*10^6)^2 taps: refused, not built
    outer = KernelOperator(torch.ones(2, 2, 3, 3), -1)
    inner = KernelOperator(torch.ones(2, 2, 1, 1), 0, stride=10**6)
    with pytest.raises(MemoryBudgetError):
        outer @ inner
    with pytest.raises(MemoryBudgetError):
        outer.dilate(10**6)
    small = KernelOperator(torch.ones(2, 2, 3, 3), -1)
    assert (small @ small).kernel_size == (5, 5)  # ordinary work still passes


def test_fft_composition_keeps_structural_zeros_exact():
    """Dilated taps (0, 2, 4) composed with themselves: the odd taps are exactly zero, as
    are the off-block entries of grouped kernels (no FFT round-off left behind)."""
    w = torch.tensor([[[1.0, 0.0, 2.0, 0.0, 3.0]]], dtype=torch.float64)
    A = KernelOperator(w, 0)
    C = A.compose(A, method="fft")
    assert torch.count_nonzero(C.coeffs) == 5
    exact = A.to_algebra() @ A.to_algebra()
    got = C.to_algebra()
    assert [e for e, _ in got.matrix[0][0].terms()] == [e for e, _ in exact.matrix[0][0].terms()]
    assert C.allclose(KernelOperator.from_algebra(exact), rtol=1e-14, atol=0)
    g = torch.randn(4, 2, 3, dtype=torch.float64)
    G = KernelOperator.from_weight(g, groups=2, padding=1)
    GG = G.compose(G, method="fft")
    assert torch.count_nonzero(GG.coeffs[:2, 2:]) == 0 and torch.count_nonzero(GG.coeffs[2:, :2]) == 0
