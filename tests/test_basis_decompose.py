"""Decomposing the layers of traced models: every front end, errors equal to the discarded
singular values, the decomposed model equal to the model with the low-rank weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from laurentnet.algebra import InvalidInputError
from laurentnet.bridge import BasisConv, decompose, find_conv_layers
from laurentnet.bridge.conv_layers import substituted_weights, tensor_at
from laurentnet.bridge.decompose import low_rank_weights
from laurentnet.bridge.models import build_resnet, randomize_batchnorm_
from basis_fixtures import one_torch_thread  # noqa: F401,E402  (autouse)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = build_resnet("resnet_tiny")
    randomize_batchnorm_(model, torch.Generator().manual_seed(1))
    return model.eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def found(resnet, x):
    return find_conv_layers(resnet, x)


@pytest.fixture(scope="module")
def exported(resnet, x):
    module = _exported(resnet, x)
    return module, find_conv_layers(module, x)


class Functional(nn.Module):
    """Convolutions by F.conv2d on the module's own parameters (no nn.Conv2d)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.w1 = nn.Parameter(torch.randn(6, 1, 3, 3, generator=g))
        self.b1 = nn.Parameter(torch.randn(6, generator=g))
        self.w2 = nn.Parameter(torch.randn(4, 6, 3, 3, generator=g))

    def forward(self, x):
        return F.conv2d(torch.relu(F.conv2d(x, self.w1, self.b1, padding=1)), self.w2, stride=2)


def _exported(model: nn.Module, x: torch.Tensor) -> nn.Module:
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    module = program.module()
    for m in module.modules():      # what bridge.load does: the exported graph is eval-mode
        m.training = False
    return module


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def test_layers_of_a_resnet(resnet, x, found):
    names = [layer.name for layer in found.layers]
    assert names == [n for n, m in resnet.named_modules() if isinstance(m, nn.Conv2d)]
    for layer in found.layers:
        conv = resnet.get_submodule(layer.name)
        assert layer.weight_name == f"{layer.name}.weight" and layer.decomposable
        assert (layer.out_channels, layer.in_channels) == (conv.out_channels, conv.in_channels)
        assert layer.max_rank == min(conv.out_channels, conv.weight[0].numel())
    with torch.no_grad():   # output sizes, from a forward hook (independent of the trace)
        shapes = {}
        hooks = [resnet.get_submodule(n).register_forward_hook(
            lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:]))) for n in names]
        resnet(x)
        for h in hooks:
            h.remove()
    assert {layer.name: layer.output_shape for layer in found.layers} == shapes


@pytest.mark.parametrize("front", ["modules", "exported", "functional"])
@pytest.mark.parametrize("method", ["svd", "qr"])
def test_decomposed_model_is_the_model_with_low_rank_weights(resnet, x, found, exported, front,
                                                            method):
    model, inputs, layers = {"modules": (resnet, x, found), "exported": (*exported[:1], x, exported[1]),
                             "functional": (Functional().eval(), x, None)}[front]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = decompose(model, inputs, rank=2, method=method, found=layers)
    assert result.rewrite == ("modules" if front == "modules" else "graph")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # untouched
    with torch.no_grad():
        with substituted_weights(model, low_rank_weights(model, result.layers)):
            reference = model(inputs)
        assert _close(result.module(inputs), reference)
        assert not _close(result.module(inputs), model(inputs))
    basis_convs = [m for m in result.module.modules() if isinstance(m, BasisConv)]
    assert len(basis_convs) == len(result.layers)
    assert result.parameters_after == sum(p.numel() for p in result.module.parameters())
    assert result.parameters_after < result.parameters_before
    assert result.multiply_adds_after < result.multiply_adds_before


@pytest.mark.parametrize("front", ["modules", "exported"])
def test_full_rank_equals_the_model(resnet, x, found, exported, front):
    model, layers = (resnet, found) if front == "modules" else exported
    result = decompose(model, x, energy=1.0, found=layers)
    with torch.no_grad():
        assert _close(result.module(x), model(x))


def test_reported_svd_error_is_the_discarded_singular_values(resnet, x, found):
    result = decompose(resnet, x, rank=3, method="svd", layers=["stages.1.0.conv2"], found=found)
    (layer,) = result.layers
    w = resnet.get_submodule("stages.1.0.conv2").weight.detach().double()
    sigma = torch.linalg.svdvals(w.reshape(w.shape[0], -1))
    assert layer.factorization.error == pytest.approx(float(sigma[3:].norm()), rel=1e-9)
    assert layer.factorization.relative_error == pytest.approx(float(sigma[3:].norm() / w.norm()),
                                                               rel=1e-9)
    module = result.module.get_submodule("stages.1.0.conv2")
    assert float((module.dense_weight().detach().double() - w).norm()) == pytest.approx(
        float(sigma[3:].norm()), rel=1e-5)


def test_qr_keeps_the_chosen_filters_exactly(resnet, x, found):
    result = decompose(resnet, x, rank=3, method="qr", layers=["stages.1.0.conv2"], found=found)
    module = result.module.get_submodule("stages.1.0.conv2")
    rows = list(module.basis_rows)
    original = resnet.get_submodule("stages.1.0.conv2").weight
    assert torch.equal(module.basis.weight, original[rows])
    assert torch.equal(module.dense_weight()[rows], original[rows])


def test_energy_rank_per_layer(resnet, x, found):
    result = decompose(resnet, x, energy=0.9, found=found)
    for d in result.layers:
        sigma = d.factorization.singular_values
        kept = (sigma ** 2).cumsum(0) / (sigma ** 2).sum()
        assert kept[d.rank - 1] >= 0.9 - 1e-12 and (d.rank == 1 or kept[d.rank - 2] < 0.9)


def test_decomposed_exported_model_saves_and_reloads(x, exported, tmp_path):
    from laurentnet.bridge import load
    result = decompose(exported[0], x, rank=2, found=exported[1])
    path = result.save(tmp_path / "basis.pt2")
    loaded = load(path)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), result.module(x), atol=1e-6)


class Unusual(nn.Module):
    def __init__(self):
        super().__init__()
        self.grouped = nn.Conv2d(4, 4, 3, groups=2, padding=1)
        self.shared = nn.Conv2d(4, 4, 1)
        self.raw = nn.Parameter(torch.randn(4, 4, 1, 1))

    def forward(self, x):
        h = self.shared(self.grouped(x))
        return F.conv2d(h, self.raw * 2) + self.shared.weight.sum()


def test_layers_that_cannot_be_decomposed_say_why():
    found = find_conv_layers(Unusual().eval(), torch.randn(2, 4, 5, 5))
    reasons = {layer.name: layer.reason for layer in found.layers}
    assert "grouped" in reasons["grouped"] and "also read by" in reasons["shared"]
    assert "raw" not in reasons                     # a computed weight is no layer at all
    with pytest.raises(InvalidInputError, match="no convolution layer to decompose"):
        decompose(Unusual().eval(), torch.randn(2, 4, 5, 5), rank=1)


def test_refusals(resnet, x, found):
    with pytest.raises(InvalidInputError, match="rank 5 is too large for layer stem.0"):
        decompose(resnet, x, rank=5, found=found)
    with pytest.raises(InvalidInputError, match="rank must be a positive integer"):
        decompose(resnet, x, rank=0, found=found)
    with pytest.raises(InvalidInputError, match="no convolution layer named 'nope'"):
        decompose(resnet, x, rank=1, layers=["nope"], found=found)
    with pytest.raises(InvalidInputError, match="exactly one of rank and energy"):
        decompose(resnet, x, rank=1, energy=0.5, found=found)
    with pytest.raises(InvalidInputError, match="no convolution layer to decompose"):
        decompose(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval(), x, rank=1)
    assert tensor_at(resnet, "stem.0.weight") is resnet.stem[0].weight
