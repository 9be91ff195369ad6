"""``BasisConv`` against torch's own convolution; collapse back; the converter merges it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st
from torch import nn

from laurentnet.algebra import InvalidInputError
from laurentnet.bridge import BasisConv, collapse_basis_convs_, convert, count_layers
from laurentnet.numeric import factorize
from basis_fixtures import one_torch_thread  # noqa: F401,E402  (autouse)

CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
FUNCTIONAL = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _conv(ndim: int, c_in: int, c_out: int, k: int, seed: int, **options) -> nn.Module:
    torch.manual_seed(seed)
    return CONVS[ndim](c_in, c_out, k, **options).double()


def _traced_convs(module: nn.Module, x: torch.Tensor) -> int:
    """Convolution nodes of the module's torch.export graph."""
    graph = torch.export.export(module, (x,)).graph
    return sum(1 for n in graph.nodes if n.op == "call_function" and "conv" in str(n.target))


def _basis(conv: nn.Module, rank: int, method: str) -> BasisConv:
    f = factorize(conv.weight.detach().reshape(conv.out_channels, -1), rank, method)
    return BasisConv.from_factors(conv, f.coefficients, f.basis, f.basis_rows)


settings = st.fixed_dictionaries({
    "ndim": st.sampled_from([1, 2, 3]), "c_in": st.integers(1, 3), "c_out": st.integers(1, 4),
    "k": st.integers(1, 3), "stride": st.integers(1, 2), "padding": st.integers(0, 2),
    "dilation": st.integers(1, 2), "bias": st.booleans(),
    "padding_mode": st.sampled_from(["zeros", "reflect", "replicate", "circular"]),
    "method": st.sampled_from(["qr", "svd"]), "seed": st.integers(0, 1000)})


@given(settings)
def test_full_rank_equals_torch_conv(s):
    conv = _conv(s["ndim"], s["c_in"], s["c_out"], s["k"], s["seed"], stride=s["stride"],
                 padding=s["padding"], dilation=s["dilation"], bias=s["bias"],
                 padding_mode=s["padding_mode"])
    full = min(s["c_out"], s["c_in"] * s["k"] ** s["ndim"])
    module = _basis(conv, full, s["method"])
    x = torch.randn(2, s["c_in"], *(7,) * s["ndim"], dtype=torch.float64)
    with torch.no_grad():
        expected = conv(x)           # torch's own convolution of the original weight
        assert torch.allclose(module(x), expected, rtol=0, atol=1e-12)
        assert torch.allclose(module.to_conv()(x), expected, rtol=0, atol=1e-12)
    assert torch.allclose(module.dense_weight(), conv.weight, atol=1e-12)


def test_low_rank_is_the_conv_of_the_low_rank_weight():
    conv = _conv(2, 4, 6, 3, 0, padding=1, stride=2)
    module = _basis(conv, 2, "svd")
    x = torch.randn(3, 4, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        w_r = module.dense_weight()
        assert torch.allclose(module(x), F.conv2d(x, w_r, conv.bias, 2, 1), atol=1e-12)
        assert not torch.allclose(module(x), conv(x), atol=1e-3)


def test_subset_form_trains_only_a_and_reproduces_the_basis_filters():
    conv = _conv(2, 3, 5, 3, 1, padding=1)
    module = _basis(conv, 2, "qr")
    rows = list(module.basis_rows)
    assert module.parameter_count() == 2 * 3 * 9 + (5 - 2) * 2 + 5
    assert torch.equal(module.basis.weight, conv.weight[rows])
    c = module.coefficients()
    assert torch.equal(c[rows], torch.eye(2, dtype=torch.float64))
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():   # the outputs of the basis filters are the original conv's
        assert torch.allclose(module(x)[:, rows], conv(x)[:, rows], atol=1e-12)
    module(x).square().sum().backward()
    assert module.mixing.coefficients.grad is not None
    assert {n for n, p in module.named_parameters()} == {"basis.weight", "mixing.coefficients",
                                                         "mixing.bias"}


def test_counts():
    module = BasisConv(16, 32, 4, 3, padding=1)
    assert module.parameter_count() == 4 * 16 * 9 + 32 * 4 + 32
    assert module.dense_parameter_count() == 32 * 16 * 9 + 32
    assert module.multiply_adds(100) == 100 * (4 * 16 * 9 + 32 * 4)
    assert module.dense_multiply_adds(100) == 100 * 32 * 16 * 9
    assert not module.cheaper_as_conv()
    assert BasisConv(16, 32, 32, 3).cheaper_as_conv()


def test_collapse_only_where_cheaper():
    torch.manual_seed(0)
    model = nn.Sequential(BasisConv(8, 8, 2, 3, padding=1), nn.ReLU(),
                          BasisConv(8, 8, 8, 3, padding=1)).double().eval()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
    assert collapse_basis_convs_(model) == ["2"]
    assert isinstance(model[0], BasisConv) and isinstance(model[2], nn.Conv2d)
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-12)


@pytest.mark.parametrize("method", ["svd", "qr"])
def test_the_converter_merges_a_full_rank_basis_conv_into_one_conv(method):
    conv = _conv(2, 3, 4, 3, 2, padding=1)
    model = nn.Sequential(_basis(conv, 4, method), nn.ReLU()).eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    assert _traced_convs(model, x) == 2
    conversion = convert(model, x, mode="partial", measure=False)
    assert _traced_convs(conversion.module, x) == 1 == count_layers(conversion.module)["conv"]
    with torch.no_grad():
        assert torch.allclose(conversion.module(x), conv(x).relu(), atol=1e-12)


def test_the_converter_keeps_a_cheaper_low_rank_basis_conv():
    conv = _conv(2, 16, 16, 3, 3, padding=1)
    model = nn.Sequential(_basis(conv, 2, "svd"), nn.ReLU()).eval()
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64)
    kept = convert(model, x, mode="partial", measure=False)
    assert count_layers(kept.module)["conv"] == 2
    merged = convert(model, x, mode="partial", merge_slower=True, measure=False)
    assert count_layers(merged.module)["conv"] == 1
    with torch.no_grad():
        assert torch.allclose(merged.module(x), model(x), atol=1e-12)


def test_refusals():
    with pytest.raises(InvalidInputError, match="rank must be at most 4"):
        BasisConv(3, 4, 5, 3)
    with pytest.raises(InvalidInputError, match="groups=1"):
        BasisConv.from_factors(nn.Conv2d(4, 4, 3, groups=2), torch.ones(4, 2), torch.ones(2, 18))
    with pytest.raises(InvalidInputError, match="do not fit"):
        BasisConv.from_factors(nn.Conv2d(4, 4, 3), torch.ones(4, 2), torch.ones(2, 5))
    with pytest.raises(InvalidInputError, match=r"C\[basis_rows\] = I"):
        BasisConv.from_factors(nn.Conv2d(2, 3, 1), torch.ones(3, 2), torch.ones(2, 2), (0, 1))
