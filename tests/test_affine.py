"""Fixed-size affine-map extraction (numeric.affine): methods agree with each other and with
the network, the affinity check, the memory guard, and the module it returns."""
from __future__ import annotations

import copy
import io

import pytest
import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from laurentnet.bridge.models import PADDING_MODES, randomize_batchnorm_, resnet_tiny
from laurentnet.numeric.affine import (AffineModule, GemmConvMode, NotAffineError, check_affine,
                            extract_affine, gemm_conv2d)
from laurentnet.numeric.memory import MemoryBudgetError

METHODS = ("vjp", "jvp", "identity_batch")


def tiny_linear(padding_mode: str, stem: str = "3x3", seed: int = 0) -> nn.Module:
    """A small linear ResNet (one strided stage) with non-trivial batch norm, eval mode."""
    torch.manual_seed(seed)
    model = resnet_tiny(in_channels=2, num_classes=5, linear=True, padding_mode=padding_mode,
                        stem=stem)
    return randomize_batchnorm_(model, torch.Generator().manual_seed(seed)).eval()


def net64(model: nn.Module) -> nn.Module:
    """The independent reference: a float64 copy of the network, evaluated layer by layer."""
    return copy.deepcopy(model).double()


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max())


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("stem", ["3x3", "7x7"])
def test_methods_agree_with_each_other_and_the_network(padding_mode: str, stem: str) -> None:
    model = tiny_linear(padding_mode, stem)
    in_shape = (2, 12, 10)  # non-square; 7x7 stem: stride 2 + avg pool stride 2, then stride 2
    maps = {m: extract_affine(model, in_shape, method=m) for m in METHODS}
    ref = net64(model)
    x = torch.randn(7, *in_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y_ref = ref(x)
    scale = float(y_ref.abs().max())
    w_scale = float(maps["vjp"].W.abs().max())
    for name, amap in maps.items():
        assert amap.W.shape == (5, 240) and amap.B.shape == (5,) and amap.method == name
        assert amap.W.dtype == torch.float64
        assert max_abs(amap(x), y_ref) <= 1e-12 * scale, name
        assert max_abs(amap.B, ref(torch.zeros(1, *in_shape, dtype=torch.float64))[0]) <= 1e-12 * scale
    assert max_abs(maps["vjp"].W, maps["jvp"].W) <= 1e-13 * w_scale
    # the identity batch subtracts f(0) and loses digits to that cancellation
    assert max_abs(maps["vjp"].W, maps["identity_batch"].W) <= 1e-12 * max(w_scale, scale)


def test_gemm_conv_path_matches_aten_and_is_used() -> None:
    model = tiny_linear("reflect")
    in_shape = (2, 12, 12)  # stage 1 at 144 positions (ATen), stage 2 at 36 (GEMM path)
    calls = []

    class Spy(GemmConvMode):
        def _use_gemm(self, *a):  # type: ignore[override]
            used = super()._use_gemm(*a)
            calls.append(used)
            return used

    with Spy():
        y = model.double()(torch.randn(3, *in_shape, dtype=torch.float64))
    assert y.shape == (3, 5) and any(calls) and not all(calls)
    model.float()
    fast = extract_affine(model, in_shape, gemm_conv=True)
    slow = extract_affine(model, in_shape, gemm_conv=False)
    assert max_abs(fast.W, slow.W) <= 1e-13 * float(slow.W.abs().max())
    assert max_abs(fast.B, slow.B) <= 1e-13 * float(slow.B.abs().max())


@settings(max_examples=25, deadline=None)
@given(c_in=st.integers(1, 4), c_out=st.integers(1, 4), k=st.integers(1, 4),
       stride=st.integers(1, 3), padding=st.integers(0, 2), dilation=st.integers(1, 2),
       size=st.integers(5, 9), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_gemm_conv2d_equals_conv2d(c_in: int, c_out: int, k: int, stride: int, padding: int,
                                   dilation: int, size: int, bias: bool, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c_in, size, size + 1, dtype=torch.float64, generator=g)
    w = torch.randn(c_out, c_in, k, k, dtype=torch.float64, generator=g)
    b = torch.randn(c_out, dtype=torch.float64, generator=g) if bias else None
    if (size + 2 * padding - dilation * (k - 1)) < 1:
        return
    ref = F.conv2d(x, w, b, stride, padding, dilation)
    got = gemm_conv2d(x, w, b, stride, padding, dilation)
    assert got.shape == ref.shape
    assert max_abs(got, ref) <= 1e-12 * (1 + float(ref.abs().max()))
    # its adjoint (under vmap, as in extraction) is the adjoint of the convolution
    cot = torch.randn(3, *ref.shape, dtype=torch.float64, generator=g)
    _, vjp_ref = torch.func.vjp(lambda t: F.conv2d(t, w, b, stride, padding, dilation), x)
    _, vjp_got = torch.func.vjp(lambda t: gemm_conv2d(t, w, b, stride, padding, dilation), x)
    assert max_abs(torch.func.vmap(vjp_got)(cot)[0], torch.func.vmap(vjp_ref)(cot)[0]) <= 1e-11


def test_exact_small_cases_by_hand() -> None:
    lin = nn.Linear(6, 3).eval()
    amap = extract_affine(lin, (6,))
    assert amap.method == "vjp" and amap.passes == 2 and amap.chunks == 1
    assert torch.equal(amap.W, lin.weight.detach().double())
    assert torch.equal(amap.B, lin.bias.detach().double())

    def f(x: torch.Tensor) -> torch.Tensor:  # a plain function: 2x + 1, elementwise
        return 2 * x + 1
    amap = extract_affine(f, (2, 3))
    assert amap.method == "jvp" and amap.output_shape == (2, 3)  # n_out = n_in: forward mode
    assert torch.equal(amap.W, 2 * torch.eye(6, dtype=torch.float64))
    assert torch.equal(amap.B, torch.ones(6, dtype=torch.float64))
    for method in METHODS:
        got = extract_affine(f, (2, 3), method=method, chunk_size=4)
        assert got.chunks == 2 and torch.equal(got.W, amap.W), method


def test_padded_conv_matrix_by_hand() -> None:
    """A 1-D zero-padded conv, W written down from y[i] = b + sum_a w[a] x[i + a - 1]."""
    conv = nn.Conv1d(1, 1, 3, padding=1).eval()
    n = 5
    w, b = conv.weight.detach().double().reshape(3), conv.bias.detach().double()
    W = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for a in range(3):
            if 0 <= i + a - 1 < n:
                W[i, i + a - 1] = w[a]
    for method in METHODS:
        amap = extract_affine(conv, (1, n), method=method)
        assert max_abs(amap.W, W) <= 1e-15 and max_abs(amap.B, b.expand(n)) <= 1e-15


def test_affinity_check_rejects_relu_network() -> None:
    torch.manual_seed(0)
    relu_net = resnet_tiny(linear=False).eval()
    with pytest.raises(NotAffineError, match=r"not affine.*ReLU"):
        check_affine(relu_net, (1, 10, 10))
    with pytest.raises(NotAffineError, match="stages.0.0.act1 \\(ReLU\\)"):
        extract_affine(relu_net, (1, 10, 10), check=True)
    with pytest.raises(NotAffineError, match="nonlinearity"):
        check_affine(lambda x: torch.tanh(x), (4,))
    assert check_affine(tiny_linear("zeros"), (2, 10, 10)) < 1e-12
    assert check_affine(tiny_linear("zeros"), (2, 10, 10), dtype=torch.float32) < 1e-4


def test_training_mode_is_refused_and_user_module_untouched() -> None:
    model = tiny_linear("circular")
    with pytest.raises(ValueError, match="training mode"):
        extract_affine(copy.deepcopy(model).train(), (2, 8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    extract_affine(model, (2, 8, 8))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype
               for k in before)
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert all(p.requires_grad for p in model.parameters())


def test_memory_guard_refuses_before_allocating(monkeypatch: pytest.MonkeyPatch) -> None:
    conv = nn.Conv2d(1, 1, 3, padding=1).eval()  # on 64x64: W is 4096 x 4096 = 128 MiB
    conv64 = copy.deepcopy(conv).double()
    batches: list[int] = []

    def spy(x: torch.Tensor) -> torch.Tensor:
        batches.append(x.shape[0])
        return conv64(x)

    with pytest.raises(MemoryBudgetError, match=r"4096 x 4096 affine map W.*MiB"):
        extract_affine(spy, (1, 64, 64), method="identity_batch", budget=2**20)
    assert batches == [1]  # only f(0) ran: no chunk of unit vectors was pushed
    monkeypatch.setenv("LAURENTNET_MEMORY_BUDGET", "1M")
    batches.clear()
    with pytest.raises(MemoryBudgetError, match="over the memory budget of 1.0 MiB"):
        extract_affine(spy, (1, 64, 64))
    assert batches == [1]
    monkeypatch.setenv("LAURENTNET_MEMORY_BUDGET", "1G")
    assert extract_affine(conv, (1, 8, 8)).W.shape == (64, 64)


def test_affine_module_and_float32_deployment() -> None:
    model = tiny_linear("replicate")
    amap = extract_affine(model, (2, 9, 9))
    module = amap.to_module()
    assert isinstance(module, AffineModule) and module.weight.dtype == torch.float32
    x = torch.randn(4, 2, 9, 9)
    with torch.no_grad():
        y64 = net64(model)(x.double())
        y32 = module(x)
    assert y32.dtype == torch.float32 and y32.shape == (4, 5)
    assert max_abs(y32.double(), y64) <= 1e-5 * float(y64.abs().max())
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    clone = AffineModule(torch.zeros_like(amap.W), torch.zeros_like(amap.B), (2, 9, 9), (5,))
    clone.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(clone(x), y32)


def test_extraction_inside_inference_mode_and_float32() -> None:
    model = tiny_linear("zeros")
    with torch.inference_mode():
        amap = extract_affine(model, (2, 8, 8))
        amap32 = extract_affine(model, (2, 8, 8), dtype=torch.float32)
    assert amap32.W.dtype == torch.float32
    assert max_abs(amap32.W.double(), amap.W) <= 1e-5 * float(amap.W.abs().max())


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="method"):
        extract_affine(nn.Identity(), (3,), method="magic")
    with pytest.raises(ValueError, match="chunk_size"):
        extract_affine(nn.Identity(), (3,), chunk_size=0)
    with pytest.raises(ValueError, match="batch dimension"):
        extract_affine(lambda x: x.sum(0), (3,))


def test_eval_batch_norm_replacement_matches_aten() -> None:
    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Unflatten(1, (3, 1, 1)),
                        nn.BatchNorm2d(3, affine=False))
    randomize_batchnorm_(net, torch.Generator().manual_seed(8))
    net.eval()
    fast = extract_affine(net, (4,), gemm_conv=True)
    slow = extract_affine(net, (4,), gemm_conv=False)
    assert max_abs(fast.W, slow.W) <= 1e-15 and max_abs(fast.B, slow.B) <= 1e-15
    x = torch.randn(5, 4, dtype=torch.float64)
    with torch.no_grad():
        assert max_abs(fast(x), net64(net)(x)) <= 1e-14


def test_gemm_conv2d_weight_gradients_fall_back_to_autograd() -> None:
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    cot = torch.randn(2, 4, 4, 7, dtype=torch.float64, generator=g)
    ref = torch.autograd.grad(F.conv2d(x, w, None, (2, 1), (1, 1)), (x, w), cot)
    got = torch.autograd.grad(gemm_conv2d(x, w, None, (2, 1), (1, 1)), (x, w), cot)
    assert all(max_abs(a, b) <= 1e-12 for a, b in zip(got, ref))


def test_concurrent_extractions_are_correct():
    """Two threads extracting at once get the same W as one thread: never the zeros (or
    forward-AD RuntimeErrors) that torch's process-global AD state gave without the lock
    (about half of 80 JVP calls failed so before the fix)."""
    import threading
    from laurentnet.algebra import Network
    from laurentnet.numeric import affine_numeric
    net = Network(ndim=2, in_channels=2)
    net.set_output(net.conv(net.input, np.random.default_rng(0).normal(size=(2, 2, 3, 3)),
                            padding=1))
    expected = affine_numeric(net, (2, 5, 5), method="jvp").W
    assert float(expected.abs().max()) > 0
    failures: list[str] = []

    def work() -> None:
        for _ in range(30):
            try:
                W = affine_numeric(net, (2, 5, 5), method="jvp").W
                if not torch.allclose(W, expected, rtol=0, atol=1e-13):
                    failures.append(f"wrong W, max |W| = {float(W.abs().max())}")
            except RuntimeError as exc:
                failures.append(str(exc))
    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
