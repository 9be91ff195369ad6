"""Bad input to numeric/: a clear ValueError/TypeError naming the problem, never a silent
wrong answer or a raw torch error from deep inside (the package promise: clear errors, no silent wrong answers)."""
from __future__ import annotations

import numpy as np
import pytest
import sympy
import torch
from torch import nn

from laurentnet.algebra import ConvOperator
from laurentnet.algebra.layout import default_ring
from laurentnet.algebra.network import Network
from laurentnet.numeric import (KernelOperator, MemoryBudgetError, NetworkModule, NotAffineError,
                     OperatorEvaluator, block_diag, collapse_numeric, conv_direct, conv_fft,
                     estimate_costs, extract_affine, implicit_solve, network_forward,
                     polymatmul, vstack)
from laurentnet.numeric.network_collapse import NumericBackend

K = KernelOperator


@pytest.fixture
def op() -> KernelOperator:
    torch.manual_seed(0)
    return K.from_weight(torch.randn(4, 3, 3, 3, dtype=torch.float64), padding=1)


# -- 1. KernelOperator construction and arithmetic --------------------------------------------
@pytest.mark.parametrize("coeffs", [torch.full((1, 1, 3), float("nan")),
                                    np.full((1, 1, 3), np.inf), [[[1.0, float("-inf")]]]])
def test_non_finite_coefficients_are_refused(coeffs) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        K(coeffs)


def test_non_finite_bias_is_refused(op: KernelOperator) -> None:
    with pytest.raises(ValueError, match="bias has a non-finite"):
        K(torch.ones(1, 1, 3), bias=[float("nan")])
    with pytest.raises(ValueError, match="bias has a non-finite"):
        op.with_bias(torch.tensor([0.0, float("inf"), 0.0, 0.0]))


@pytest.mark.parametrize("coeffs", [torch.ones(1, 1, 3, dtype=torch.complex128),
                                    np.ones((1, 1, 3)) * (1 + 1j)])
def test_complex_coefficients_are_refused(coeffs) -> None:
    with pytest.raises(TypeError, match="complex weights not supported"):
        K(coeffs)
    with pytest.raises(TypeError, match="complex weights not supported"):
        K.from_weight(coeffs)


def test_complex_bias_is_refused() -> None:
    with pytest.raises(TypeError, match="complex weights not supported"):
        K(torch.ones(1, 1, 3), bias=torch.tensor([1 + 2j]))


def test_non_floating_dtype_is_refused(op: KernelOperator) -> None:
    w = torch.tensor([[[0.4, 1.7, -0.6]]])
    with pytest.raises(TypeError, match="floating point"):
        K(w, dtype=torch.int64)
    with pytest.raises(TypeError, match="floating point"):
        K.from_weight(w, dtype=torch.int64)
    with pytest.raises(TypeError, match="floating point"):
        op.to(torch.int32)
    with pytest.raises(TypeError, match="float16 is not supported"):
        K(w, dtype=torch.float16)
    net = Network(1, 1)
    net.conv("input", np.array([[[0.4, 1.7, -0.6]]]))
    with pytest.raises(TypeError, match="floating point"):
        collapse_numeric(net, (1, 5), dtype=torch.int64)


def test_half_precision_tensors_widen_exactly() -> None:
    w = torch.tensor([[[0.1, 0.2]]], dtype=torch.float16)
    k = K(w)
    assert k.dtype == torch.float32 and torch.equal(k.coeffs, w.float())


@pytest.mark.parametrize("scalar", [float("nan"), float("inf"), np.float64("-inf"),
                                    torch.tensor(float("nan"))])
def test_scaling_by_non_finite_is_refused(op: KernelOperator, scalar) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        op * scalar
    with pytest.raises(ValueError, match="non-finite"):
        scalar * op


def test_scaling_by_complex_and_exact_rationals(op: KernelOperator) -> None:
    with pytest.raises(TypeError, match="complex"):
        op * 1j
    assert (op * sympy.Rational(1, 2)).allclose(op * 0.5, 0, 0)


def test_identity_and_mod_circular_arguments(op: KernelOperator) -> None:
    with pytest.raises(ValueError, match="channels must be >= 1"):
        K.identity(-1)
    with pytest.raises(ValueError, match="ndim must be 1, 2 or 3"):
        K.identity(2, ndim=0)
    for n in (0, -1):
        with pytest.raises(ValueError, match="sizes must be positive"):
            op.mod_circular(n)


def test_polymatmul_arguments() -> None:
    with pytest.raises(ValueError, match="1-3 spatial axes"):
        polymatmul(torch.ones(2, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match="dilation must be positive"):
        polymatmul(torch.ones(1, 1, 3), torch.ones(1, 1, 3), dilation=0)
    with pytest.raises(TypeError, match="torch tensor"):
        polymatmul(np.ones((1, 1, 3)), np.ones((1, 1, 3)))
    with pytest.raises(TypeError, match="floating point"):
        polymatmul(torch.ones(1, 1, 3, dtype=torch.int64), torch.ones(1, 1, 3, dtype=torch.int64))


def test_channel_selection_arguments(op: KernelOperator) -> None:
    with pytest.raises(TypeError, match="index must be an int"):
        op["a"]
    with pytest.raises(TypeError, match="index must be an int"):
        op[1.5]
    with pytest.raises(ValueError, match="output channel 10 out of range"):
        op[10]
    with pytest.raises(IndexError):  # also an IndexError, as for any sequence
        op[-5]
    with pytest.raises(ValueError, match="input channel 3 out of range"):
        op.columns([3])
    assert op[-1].allclose(op[3], 0, 0)


def test_low_must_be_integers() -> None:
    with pytest.raises(TypeError, match="low must be an int"):
        K(torch.ones(1, 1, 3), low=0.5)


# -- 2. memory guard --------------------------------------------------------------------------
def test_memory_guard_covers_add_block_diag_vstack_mod_circular_to_algebra(
        monkeypatch: pytest.MonkeyPatch) -> None:
    a = K(torch.ones(4, 4, 1, 1))
    far = K(torch.ones(4, 4, 1, 1), low=(-3000, -3000))  # the sum spans 3001 x 3001 taps
    monkeypatch.setenv("LAURENTNET_MEMORY_BUDGET", "64M")
    with pytest.raises(MemoryBudgetError, match="adding"):
        a + far
    with pytest.raises(MemoryBudgetError, match="block-diagonal"):
        block_diag([a, far])
    with pytest.raises(MemoryBudgetError, match="stacked"):
        vstack([a, far])
    big = K(torch.ones(64, 64, 1, 100))
    monkeypatch.setenv("LAURENTNET_MEMORY_BUDGET", "200K")
    with pytest.raises(MemoryBudgetError, match="folded"):
        big.mod_circular((1, 10**6))
    with pytest.raises(MemoryBudgetError, match="exact form"):
        big.to_algebra()


# -- 3. one correct rounding of exact rationals -----------------------------------------------
def _midpoint_operator():
    v = sympy.Rational(1) + sympy.Rational(1, 2**24) + sympy.Rational(1, 2**60)
    ring = default_ring(1)
    return ConvOperator(ring, [[ring.from_dict({(0,): v})]], bias=[v])


def test_from_algebra_rounds_once_to_float32() -> None:
    correct = float(np.nextafter(np.float32(1.0), np.float32(2)))  # 1.0000001
    k = K.from_algebra(_midpoint_operator(), dtype=torch.float32)
    assert k.coeffs.item() == correct and k.bias.item() == correct


def test_network_module_rounds_once_to_float32() -> None:
    correct = float(np.nextafter(np.float32(1.0), np.float32(2)))
    net = Network(1, 1)
    net.conv_operator(net.input, _midpoint_operator())
    module = NetworkModule(net, torch.float32)
    (params,) = [p for p in module.params.values() if "weight" in p]
    assert params["weight"].item() == correct


# -- 4. extract_affine -------------------------------------------------------------------------
def test_extract_affine_refuses_nonlinear_modules_without_check() -> None:
    relu = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU()).eval()
    with pytest.raises(NotAffineError, match=r"1 \(ReLU\)"):
        extract_affine(relu, (1, 4, 4))
    with pytest.raises(NotAffineError, match=r"MaxPool2d"):
        extract_affine(nn.Sequential(nn.MaxPool2d(2)).eval(), (1, 4, 4), method="identity_batch")


def test_extract_affine_refuses_non_finite_weights_and_outputs() -> None:
    conv = nn.Conv2d(1, 1, 1).eval().requires_grad_(False)
    conv.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite.*weight"):
        extract_affine(conv, (1, 4, 4))
    with pytest.raises(ValueError, match="non-finite"):
        extract_affine(lambda x: x * float("nan"), (1, 4, 4))
    with pytest.raises(ValueError, match="non-finite"):  # B finite, W not
        extract_affine(lambda x: x * float("inf"), (3,), method="jvp")


@pytest.mark.parametrize("shape", [(1, -4, 4), (1, 0, 4), ()])
def test_extract_affine_validates_input_shape(shape) -> None:
    with pytest.raises(ValueError, match="input_shape"):
        extract_affine(nn.Identity(), shape)


def test_extract_affine_wraps_failure_on_the_given_shape() -> None:
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double().eval()
    with pytest.raises(ValueError, match=r"evaluating f on an input of shape \(1, 2, 4, 4\).*failed"):
        extract_affine(lin, (2, 4, 4))
    with pytest.raises(ValueError, match="evaluating f on an input of shape"):
        extract_affine(nn.Conv1d(1, 1, 3).eval(), (1, 4, 4), method="jvp")


def test_extract_affine_dtype_and_output_type() -> None:
    with pytest.raises(TypeError, match="floating point"):
        extract_affine(nn.Identity(), (3,), dtype=torch.int64)
    with pytest.raises(TypeError, match="must return a torch.Tensor"):
        extract_affine(lambda x: (x, x), (3,))
    with pytest.raises(TypeError, match="floating-point tensor"):
        extract_affine(lambda x: (x > 0).long(), (3,), method="identity_batch")
    with pytest.raises(ValueError, match="batch dimension"):
        extract_affine(lambda x: x.sum(), (3,))


def test_affine_map_casts_and_checks_its_input() -> None:
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(32, 3)).eval()
    amap = extract_affine(lin, (1, 4, 4))
    x = torch.randn(2, 1, 4, 4)
    want = amap(x.double())
    assert torch.equal(amap(x), want)  # float32 input cast to W's float64
    assert torch.equal(amap(x.double().numpy()), want)  # numpy accepted
    module = amap.to_module()
    assert module(x.double()).dtype == torch.float32
    with pytest.raises(ValueError, match=r"expected \(batch, 1, 4, 4\)"):
        amap(torch.randn(1, 4, 4))  # unbatched, same number of entries
    with pytest.raises(ValueError, match=r"expected \(batch, 1, 4, 4\)"):
        module(torch.randn(2, 4, 4, 1))
    with pytest.raises(TypeError, match="complex"):
        amap(torch.randn(2, 1, 4, 4, dtype=torch.complex128))


# -- 5. NetworkModule input ----------------------------------------------------------------
def test_network_forward_validates_its_input() -> None:
    net = Network(2, 1)
    net.conv("input", np.random.default_rng(0).normal(size=(2, 1, 3, 3)), padding=1)
    with pytest.raises(ValueError, match=r"expected shape \(batch, 1, n, n\)"):
        network_forward(net, torch.ones(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(batch, 1, n, n\).*got \(1, 4, 4\)"):
        network_forward(net, torch.ones(1, 4, 4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        network_forward(net, np.ones((1, 1, 4, 4)))
    net.conv(net.output_name, np.ones((1, 2, 5, 5)))
    with pytest.raises(ValueError, match="cannot run on an input of shape"):
        network_forward(net, torch.ones(1, 1, 3, 3))


# -- 6. symbolic coefficients in the numeric collapse -------------------------------------
def test_combine_refuses_symbolic_coefficient() -> None:
    backend = NumericBackend(Network(1, 1), torch.float64)
    a = K.identity(1, 1)
    with pytest.raises(ValueError, match="symbolic"):
        backend.combine([a, a], [1, sympy.Symbol("c")])
    with pytest.raises(ValueError, match="not finite"):
        backend.combine([a, a], [1, float("nan")])


# -- 7. evaluator and implicit solve -------------------------------------------------------
@pytest.mark.parametrize("apply", [conv_direct, conv_fft])
def test_conv_wrong_channels_and_unbatched(op: KernelOperator, apply) -> None:
    with pytest.raises(ValueError, match=r"expected \(batch, 3, n, n\)"):
        apply(op, torch.randn(2, 4, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"unsqueeze"):
        apply(op, torch.randn(3, 8, 8, dtype=torch.float64))


def test_operator_evaluator_input(op: KernelOperator) -> None:
    ev = OperatorEvaluator(op, (2, 3, 8, 8), method="fft")
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"built for inputs \(batch, 3, 8, 8\)"):
        ev(torch.randn(2, 4, 8, 8, dtype=torch.float64))
    assert torch.allclose(ev(x.numpy()), ev(x))


def test_implicit_solve_input_h_and_singular_systems() -> None:
    torch.manual_seed(0)
    k = K.from_weight(torch.randn(3, 3, 3, 3, dtype=torch.float64), padding=1)
    y = torch.randn(3, 8, 8, dtype=torch.float64)
    assert torch.allclose(implicit_solve(k, y.numpy(), 0.1), implicit_solve(k, y, 0.1))
    for h in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="h must be finite"):
            implicit_solve(k, y, h)
    with pytest.raises(ValueError, match=r"I \+ h K\^T K is singular at frequency"):
        implicit_solve(K(torch.ones(1, 1, 1, 1)), torch.randn(1, 4, 4), -1.0)


# -- 8. cost model -------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(-2, 3, 8, 8), (0, 3, 8, 8), (2, 3, 0, 8), (2, 3, 8, -1)])
def test_estimate_costs_refuses_non_positive_sizes(op: KernelOperator, size) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        estimate_costs(op, size)
