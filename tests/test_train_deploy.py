"""Deploying a network trained to λ = 0 (bridge.skip_removal): no skips, no batch norm, a
``.pt2`` that predicts what the λ = 0 network predicts."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from laurentnet.algebra.errors import LaurentnetError
from laurentnet.bridge import count_layers, load
from laurentnet.bridge.data import digits
from laurentnet.bridge.models import build_resnet, randomize_batchnorm_, set_skip_weight_
from laurentnet.bridge.schedules import make_schedule
from laurentnet.bridge.skip_removal import (SkipRemovalError, deploy_skipless,
                                            fold_batchnorm)
from laurentnet.bridge.trainer import TrainConfig, train


def reference64(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The λ = 0 network as trained (shortcuts still computed, times 0), in float64."""
    with torch.no_grad():
        return copy.deepcopy(model).eval().double()(x.double())


def test_deployed_pt2_equals_the_lambda_zero_network(tmp_path) -> None:
    data = digits(seed=0)
    torch.manual_seed(0)
    model = build_resnet("resnet_tiny", widths=(6, 12))
    train(model, data, make_schedule("linear", t0=1), TrainConfig(epochs=2, threads=1),
          progress=False)
    dep = deploy_skipless(model, data.x_test[:2], tmp_path / "m.pt2", data=data.x_test)
    assert dep.ok and dep.verification.ok
    assert dep.shortcuts_removed == 2 and dep.projections_removed == 1
    # the file alone, loaded without laurentnet's deployment objects
    module = load(tmp_path / "m.pt2").module
    layers = count_layers(module)
    assert layers["batch_norm"] == 0 and layers["conv"] == count_layers(model)["conv"] - 1
    ref = reference64(model, data.x_test)
    with torch.no_grad():
        got = module(data.x_test).double()
    rel = float((got - ref).abs().max() / ref.abs().max())
    assert rel < 1e-5
    assert torch.equal(got.argmax(1), ref.argmax(1))
    # and it is not the network with its skips back on (the comparison can fail)
    with_skips = set_skip_weight_(copy.deepcopy(model), 1.0)
    assert float((reference64(with_skips, data.x_test) - ref).abs().max()) > 100 * rel * float(
        ref.abs().max())
    assert model.blocks()[1].shortcut is not None  # the trained model itself is untouched


def test_bottleneck_deploy_and_batchnorm_folding(tmp_path) -> None:
    torch.manual_seed(1)
    model = randomize_batchnorm_(build_resnet("resnet_tiny", block="bottleneck", widths=(2, 4)),
                                 torch.Generator().manual_seed(2)).eval()
    x = torch.randn(3, 1, 8, 8)
    folded = fold_batchnorm(model, x[:2]).module  # skips kept, BN folded
    assert count_layers(folded)["batch_norm"] == 0
    with torch.no_grad():
        assert torch.allclose(folded(x).double(), reference64(model, x), atol=1e-4)
    set_skip_weight_(model, 0.0)
    dep = deploy_skipless(model, x[:2])  # in memory: the converted GraphModule
    assert dep.ok and dep.path is None and dep.projections_removed == 2  # both blocks change the width
    with torch.no_grad():
        got = dep.module(x).double()
    assert torch.allclose(got, reference64(model, x), atol=1e-4)


def test_deploy_refuses_skips_in_use() -> None:
    torch.manual_seed(0)
    model = build_resnet("resnet_small")
    set_skip_weight_(model, [0.0, 0.0, 0.1, 0.0, 1.0, 0.0])
    with pytest.raises(SkipRemovalError, match=r"2 of 6 blocks still use their skip: "
                                               r"stages\.1\.0 \(λ=0\.1\), stages\.2\.0 \(λ=1\)") as info:
        deploy_skipless(model, torch.zeros(2, 1, 8, 8))
    assert isinstance(info.value, LaurentnetError)
    with pytest.raises(SkipRemovalError, match="no residual blocks"):
        deploy_skipless(nn.Sequential(nn.Conv2d(1, 1, 3)), torch.zeros(2, 1, 8, 8))
