"""numeric.cost and numeric.evaluator: every method computes the same map as torch's layers,
and the report is honest about which is cheapest."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from laurentnet.algebra import apply_operator
from laurentnet.numeric.cost import estimate_costs
from laurentnet.numeric.evaluator import OperatorEvaluator, conv_direct, conv_fft, dense_matrix
from laurentnet.numeric.kernels import KernelOperator
from laurentnet.numeric.memory import MemoryBudgetError

CONV = {1: F.conv1d, 2: F.conv2d}


def torch_chain(x, weights, biases, strides, circular):
    """The reference: torch convs one after another ('valid', or circular 'same')."""
    for w, b, s in zip(weights, biases, strides):
        conv = CONV[w.ndim - 2]
        if circular:
            pads = [v for k in reversed(w.shape[2:]) for v in ((k - 1) // 2, k - 1 - (k - 1) // 2)]
            x = conv(F.pad(x, pads, mode="circular"), w, b, stride=s)
        else:
            x = conv(x, w, b, stride=s)
    return x


def chain(seed, ndim, channels, kernels, strides):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn((o, i, *(k,) * ndim), generator=g, dtype=torch.float64) / (i * k) ** 0.5
               for (o, i), k in zip(zip(channels[1:], channels[:-1]), kernels)]
    biases = [torch.randn(o, generator=g, dtype=torch.float64) for o in channels[1:]]
    return weights, biases, strides


@pytest.mark.parametrize("ndim,circular", [(2, False), (2, True), (1, False), (1, True)])
def test_all_methods_agree_with_torch_layers(ndim, circular):
    weights, biases, strides = chain(ndim + 2 * circular, ndim, [3, 16, 16, 5], [3, 3, 1], [2, 1, 2])
    padding = "circular" if circular else "zeros"
    layers = [KernelOperator.from_weight(w, b, stride=s,
                                               padding=(w.shape[-1] - 1) // 2 if circular else 0)
              for w, b, s in zip(weights, biases, strides)]
    total = layers[0]
    for layer in layers[1:]:
        total = layer @ total
    size = (2, 3, *((16, 12) if ndim == 2 else (20,)))
    x = torch.randn(size, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    ref = torch_chain(x, weights, biases, strides, circular)
    for method in ("direct", "fft", "gemm", "layers"):
        ev = OperatorEvaluator(total, size, padding=padding, method=method, layers=layers)
        y = ev(x)
        assert y.shape == ref.shape, method
        torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10, msg=method)
        y32 = ev.float()(x.float())
        torch.testing.assert_close(y32.double(), ref, rtol=1e-4, atol=1e-4, msg=method)
    auto = OperatorEvaluator(total, size, padding=padding, layers=layers)
    assert auto.method == auto.report.chosen
    torch.testing.assert_close(auto(x), ref, rtol=1e-10, atol=1e-10)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10**6), st.integers(-4, 3), st.integers(1, 4), st.integers(1, 3),
       st.integers(1, 4), st.booleans())
def test_methods_match_exact_application(seed, low, k, stride, periods, circular):
    """Odd supports (only ahead, only behind) in 1-D against algebra.apply_operator."""
    g = torch.Generator().manual_seed(seed)
    op = KernelOperator(torch.randn(2, 2, k, generator=g, dtype=torch.float64), low, stride,
                        torch.randn(2, generator=g, dtype=torch.float64))
    n = stride * periods + (0 if circular else k + 4)  # zero padding: room for the reach
    padding = "circular" if circular else "zeros"
    x = torch.randn(1, 2, n, generator=g, dtype=torch.float64)
    out = op.output_shape((n,), padding)
    exact = apply_operator(op.to_algebra(), x[0].numpy(), out, periodic=circular)
    expected = torch.tensor(exact.astype(float))[None]
    torch.testing.assert_close(conv_direct(op, x, padding), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(conv_fft(op, x, padding), expected, rtol=1e-12, atol=1e-12)
    W = dense_matrix(op, (n,), padding)
    gemm = (W @ x.reshape(-1)).reshape(2, -1) + op.bias[:, None]
    torch.testing.assert_close(gemm[None], expected, rtol=1e-12, atol=1e-12)


def test_report_says_when_collapsing_does_not_pay():
    """A 64 -> 4 -> 64 bottleneck: the collapsed 64x64 5x5 kernel costs far more."""
    weights, biases, strides = chain(3, 2, [64, 4, 64], [3, 3], [1, 1])
    layers = [KernelOperator.from_weight(w, b, padding=0) for w, b in zip(weights, biases)]
    total = layers[1] @ layers[0]
    size = (2, 64, 20, 20)
    report = estimate_costs(total, size, layers=layers)
    assert report.chosen == "layers" and report.collapse_pays is False
    assert report["direct"].macs > 10 * report["layers"].macs
    text = str(report)
    assert "does NOT pay" in text and "*layers" in text
    for method in ("direct", "fft", "gemm"):
        assert method in text
    ev = OperatorEvaluator(total, size, layers=layers)
    x = torch.randn(size, dtype=torch.float64)
    assert ev.method == "layers"
    torch.testing.assert_close(ev(x), torch_chain(x, weights, biases, strides, False))


def test_report_prefers_collapse_fft_and_gemm_where_they_win():
    weights, biases, _ = chain(4, 2, [64, 64, 64], [1, 1], [1, 1])
    layers = [KernelOperator.from_weight(w, b) for w, b in zip(weights, biases)]
    report = estimate_costs(layers[1] @ layers[0], (8, 64, 16, 16), layers=layers)
    assert report.collapse_pays is True and report.chosen != "layers"
    assert "collapsing pays" in report.reason
    big = KernelOperator(torch.randn(1, 1, 31, 31, dtype=torch.float64), -15)
    assert estimate_costs(big, (4, 1, 128, 128), padding="circular").chosen == "fft"
    assert estimate_costs(big, (4, 1, 128, 128), padding="circular")["fft"].macs < \
        estimate_costs(big, (4, 1, 128, 128), padding="circular")["direct"].macs / 10
    classifier = KernelOperator(torch.randn(10, 1, 28, 28, dtype=torch.float64), -27)
    report = estimate_costs(classifier, (256, 1, 28, 28))
    assert report["gemm"].macs == 256 * 10 * 784 and report["gemm"].feasible


def test_memory_budget_rules_out_gemm():
    op = KernelOperator(torch.randn(8, 8, 3, 3, dtype=torch.float64), -1)
    size = (1, 8, 32, 32)
    report = estimate_costs(op, size, budget=2**20)
    assert not report["gemm"].feasible and report.chosen != "gemm"
    assert "over budget" in str(report)
    with pytest.raises(MemoryBudgetError):
        OperatorEvaluator(op, size, method="gemm", budget=2**20)


def test_evaluator_errors():
    op = KernelOperator(torch.randn(2, 3, 3, 3, dtype=torch.float64), -1)
    ev = OperatorEvaluator(op, (1, 3, 8, 8), method="direct")
    with pytest.raises(ValueError, match="built for inputs"):
        ev(torch.zeros(1, 3, 9, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs the original layers"):
        OperatorEvaluator(op, (1, 3, 8, 8), method="layers")
    with pytest.raises(ValueError, match="method must be"):
        OperatorEvaluator(op, (1, 3, 8, 8), method="winograd")
    with pytest.raises(ValueError, match="the layers map"):
        OperatorEvaluator(op, (1, 3, 8, 8), layers=[op.with_bias(None).columns([0, 1, 2])[:1]])
    with pytest.raises(ValueError, match="divide"):
        OperatorEvaluator(KernelOperator(op.coeffs, -1, 3), (1, 3, 8, 8), padding="circular")
    with pytest.raises(ValueError, match="no output position"):
        KernelOperator(torch.ones(1, 1, 9), -8).output_shape((4,))
    with pytest.raises(ValueError, match="input size"):
        estimate_costs(op, (1, 4, 8, 8))
