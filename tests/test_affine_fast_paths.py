"""The fast paths of the affine side (issue 14, points 2 and 4), against independent
computations: ``torch.func.jacrev`` and explicit index sums for ``W``, float64
``X @ W.T + B`` and ``F.linear`` for the products, ``F.conv2d`` for the evaluators."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from laurentnet.numeric import KernelOperator, OperatorEvaluator
from laurentnet.numeric.affine import AffineModule, affine_product, apply_affine, extract_affine
from laurentnet.numeric.evaluator import DirectConv


def linear_net(seed: int = 0) -> nn.Module:
    """conv - BN - strided conv + a skip-free avg pool - linear: affine, biases everywhere."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4),
                        nn.Conv2d(4, 3, 3, stride=2, padding=1), nn.AvgPool2d(2),
                        nn.Flatten(), nn.Linear(12, 5))
    bn = net[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return net.eval()


def test_extraction_equals_jacrev_in_float64() -> None:
    """W and B at the accuracy the benchmark asks for: max|dW| <= 1e-11 max|W|."""
    net = linear_net()
    amap = extract_affine(net, (2, 8, 8))
    net64 = linear_net().double()
    x0 = torch.zeros(1, 2, 8, 8, dtype=torch.float64)
    jac = torch.func.jacrev(net64)(x0).reshape(5, 128)
    with torch.no_grad():
        b0 = net64(x0).reshape(5)
    jac = jac.detach()
    assert float((amap.W - jac).abs().max()) <= 1e-11 * float(jac.abs().max())
    assert float((amap.B - b0).abs().max()) <= 1e-11 * float(b0.abs().max())


def test_extraction_of_one_conv_equals_the_explicit_index_sum() -> None:
    """``y[o, i, j] = b[o] + sum_{c,a,b} w[o, c, a, b] x[c, i + a - 1, j + b - 1]``."""
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 3, padding=1).eval()
    n = 5
    amap = extract_affine(conv, (2, n, n))
    w, b = conv.weight.detach().double(), conv.bias.detach().double()
    dense = torch.zeros(3, n, n, 2, n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            for a in range(3):
                for c in range(3):
                    if 0 <= i + a - 1 < n and 0 <= j + c - 1 < n:
                        dense[:, i, j, :, i + a - 1, j + c - 1] = w[:, :, a, c]
    assert float((amap.W - dense.reshape(3 * n * n, 2 * n * n)).abs().max()) <= 1e-14
    assert torch.allclose(amap.B, b.repeat_interleave(n * n), rtol=0, atol=1e-14)


@settings(max_examples=25, deadline=None)
@given(n_out=st.sampled_from([1, 3, 10, 32, 33, 70]), n_in=st.integers(1, 40),
       batch=st.sampled_from([1, 5, 31, 32, 100]), bias=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
def test_affine_product_equals_float64_reference(n_out: int, n_in: int, batch: int, bias: bool,
                                                 dtype: torch.dtype, seed: int) -> None:
    """Both orientations (few outputs and a large batch take ``(W X^T + B)^T``) give
    ``X W^T + B`` to round-off, as a contiguous ``(N, n_out)`` tensor."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(batch, n_in, generator=g, dtype=dtype)
    W = torch.randn(n_out, n_in, generator=g, dtype=dtype)
    B = torch.randn(n_out, generator=g, dtype=dtype) if bias else None
    Y = affine_product(X, W, B)
    ref = X.double() @ W.double().t() + (0 if B is None else B.double())
    tol = (1e-5 if dtype == torch.float32 else 1e-13) * (float(ref.abs().max()) + 1) * n_in ** 0.5
    assert Y.shape == (batch, n_out) and Y.dtype == dtype and Y.is_contiguous()
    assert float((Y.double() - ref).abs().max()) <= tol


@pytest.mark.parametrize("batch", [1, 7, 256])
def test_affine_module_equals_f_linear(batch: int) -> None:
    """The module's hot path (matching dtype and shape) against ``F.linear`` on its own
    weights; float64 weights so round-off is far below the tolerance."""
    g = torch.Generator().manual_seed(batch)
    W, B = torch.randn(10, 784, generator=g, dtype=torch.float64), torch.randn(10, generator=g,
                                                                               dtype=torch.float64)
    module = AffineModule(W, B, (1, 28, 28), (10,), dtype=None)
    X = torch.randn(batch, 1, 28, 28, generator=g, dtype=torch.float64)
    Y = module(X)
    assert Y.shape == (batch, 10) and Y.is_contiguous()
    assert torch.allclose(Y, F.linear(X.reshape(batch, 784), W, B), rtol=1e-13, atol=1e-13)
    X.requires_grad_(True)
    module(X).sum().backward()  # d/dX sum(X W^T + B) = 1 W: every row is the column sums of W
    assert torch.allclose(X.grad.reshape(batch, 784), W.sum(0).expand(batch, 784), rtol=1e-13,
                          atol=1e-13)


def test_affine_module_slow_path_casts_and_checks() -> None:
    """Other dtypes and numpy go through ``apply_affine`` (cast to the module's dtype);
    wrong shapes raise; a non-flat output shape is restored."""
    g = torch.Generator().manual_seed(3)
    W, B = torch.randn(6, 12, generator=g), torch.randn(6, generator=g)
    module = AffineModule(W, B, (3, 4), (2, 3))
    X = torch.randn(40, 3, 4, generator=g)
    want = F.linear(X.reshape(40, 12), W, B).reshape(40, 2, 3)
    assert torch.allclose(module(X), want, rtol=1e-5, atol=1e-5)
    assert module(X.double()).dtype == torch.float32
    assert torch.allclose(module(X.double().numpy()), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(apply_affine(module.weight, module.bias, X, (2, 3), (3, 4)), module(X))
    with pytest.raises(ValueError, match=r"expected \(batch, 3, 4\)"):
        module(torch.randn(40, 4, 3))
    with pytest.raises(ValueError, match=r"expected \(batch, 3, 4\)"):
        module(torch.randn(12))
    with pytest.raises(TypeError, match="complex"):
        module(torch.randn(2, 3, 4, dtype=torch.complex64))


def test_affine_module_state_dict_and_export() -> None:
    """State dict keys and shapes unchanged (plain ``weight (n_out, n_in)``, ``bias``); a
    reloaded module agrees exactly; ``torch.export`` with a static and a dynamic batch."""
    g = torch.Generator().manual_seed(4)
    W, B = torch.randn(10, 784, generator=g), torch.randn(10, generator=g)
    module = AffineModule(W, B, (1, 28, 28), (10,))
    state = module.state_dict()
    assert set(state) == {"weight", "bias"} and state["weight"].shape == (10, 784)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    clone = AffineModule(torch.zeros(10, 784), torch.zeros(10), (1, 28, 28), (10,))
    clone.load_state_dict(torch.load(buf, weights_only=True))
    X = torch.randn(64, 1, 28, 28, generator=g)
    assert torch.equal(clone(X), module(X))
    ref = F.linear(X.reshape(64, 784), W, B)
    def close(y: torch.Tensor, want: torch.Tensor) -> bool:  # float32 round-off of 784 terms
        return float((y - want).abs().max()) <= 1e-5 * float(want.abs().max())
    static = torch.export.export(module, (X,)).module()
    assert close(static(X), ref)
    batch = torch.export.Dim("batch", min=2, max=1024)
    dynamic = torch.export.export(module, (X,), dynamic_shapes={"X": {0: batch}}).module()
    for n in (3, 64):
        assert close(dynamic(X[:n]), ref[:n])


def test_gemm_evaluator_and_direct_conv_equal_conv2d() -> None:
    """The kernel evaluators against ``F.conv2d`` in float64 on the same weights; the
    error message for a wrong input shape still names the expected shape."""
    g = torch.Generator().manual_seed(5)
    w, b = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64), torch.randn(3, generator=g,
                                                                                  dtype=torch.float64)
    op = KernelOperator.from_weight(w, b, padding=1)
    for batch in (1, 40):
        x = torch.randn(batch, 2, 6, 6, generator=g, dtype=torch.float64)
        ref = F.conv2d(x, w, b, padding=1)
        gemm = OperatorEvaluator(op, tuple(x.shape), method="gemm")
        assert torch.allclose(gemm(x), ref, rtol=1e-12, atol=1e-12)
        assert torch.allclose(DirectConv(op, (6, 6))(x), ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"expected \(batch, 2, n, n\)"):
        DirectConv(op, (6, 6))(np.ones((1, 3, 6, 6)))
