"""The ResNet family for small images (bridge.models.resnet): layout, shapes, skip weight."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from laurentnet.bridge.models import (PADDING_MODES, BasicBlock, ResNet, calibrate_batchnorm_,
                           randomize_batchnorm_, remove_zero_skips_, resnet18, resnet34,
                           resnet_tiny, set_skip_weight_)


def stage_layout(model: ResNet) -> list[tuple[int, int, int]]:
    """(blocks, output channels, stride of the first block) per stage, read off the modules."""
    return [(len(stage), stage[0].conv1.out_channels, stage[0].conv1.stride[0])
            for stage in model.stages]


def test_resnet34_and_resnet18_layout_and_shapes() -> None:
    torch.manual_seed(0)
    r34 = resnet34().eval()
    assert stage_layout(r34) == [(3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)]
    assert len(r34.blocks()) == 16 and r34.linear
    assert r34.stem[0].in_channels == 1 and r34.stem[0].kernel_size == (3, 3)
    assert r34.fc.in_features == 512 and r34.fc.out_features == 10
    n_convs = sum(isinstance(m, nn.Conv2d) for m in r34.modules())
    assert n_convs == 1 + 2 * 16 + 3  # stem, two per block, three projection shortcuts
    assert 21.2e6 < sum(p.numel() for p in r34.parameters()) < 21.4e6
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert r34.features(x).shape == (2, 512, 4, 4)  # 28 -> 28 -> 14 -> 7 -> 4
        assert r34(x).shape == (2, 10)
    r18 = resnet18(in_channels=3, num_classes=7, linear=False, base_width=16).eval()
    assert stage_layout(r18) == [(2, 16, 1), (2, 32, 2), (2, 64, 2), (2, 128, 2)]
    assert not r18.linear and any(isinstance(m, nn.ReLU) for m in r18.modules())
    with torch.no_grad():
        assert r18(torch.randn(3, 3, 32, 32)).shape == (3, 7)


def test_linear_variant_has_no_nonlinearity() -> None:
    model = resnet34(base_width=8)
    kinds = {type(m) for m in model.modules()}
    assert nn.ReLU not in kinds and nn.MaxPool2d not in kinds and nn.Identity in kinds
    with pytest.raises(ValueError, match="max pooling is nonlinear"):
        resnet_tiny(stem="7x7", stem_pool="max")
    assert any(isinstance(m, nn.MaxPool2d)
               for m in resnet_tiny(linear=False, stem="7x7", stem_pool="max").modules())


def test_tiny_variant_stems_and_padding_modes() -> None:
    for mode in PADDING_MODES:
        model = resnet_tiny(in_channels=2, num_classes=3, padding_mode=mode).eval()
        assert stage_layout(model) == [(1, 4, 1), (1, 8, 2)]
        assert all(m.padding_mode == mode for m in model.modules()
                   if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
        assert model.features(torch.randn(1, 2, 10, 9)).shape == (1, 8, 5, 5)
    big_stem = resnet_tiny(stem="7x7").eval()  # 7x7 stride 2 + avg pool stride 2
    assert isinstance(big_stem.stem[3], nn.AvgPool2d)
    assert big_stem.features(torch.randn(1, 1, 28, 28)).shape == (1, 8, 4, 4)
    with pytest.raises(ValueError, match="padding_mode"):
        resnet_tiny(padding_mode="mirror")
    with pytest.raises(ValueError, match="stem"):
        resnet_tiny(stem="5x5")
    with pytest.raises(ValueError, match="equal"):
        ResNet((1, 1), (4,))


def hand_residual(block: BasicBlock, x: torch.Tensor, act) -> torch.Tensor:
    """F(x) = bn2(conv2(act(bn1(conv1(x))))) written with torch.nn.functional only."""
    def bn(m: nn.BatchNorm2d, t: torch.Tensor) -> torch.Tensor:
        scale = m.weight / torch.sqrt(m.running_var + m.eps)
        return t * scale[:, None, None] + (m.bias - m.running_mean * scale)[:, None, None]

    c1, c2 = block.conv1, block.conv2
    t = F.conv2d(x, c1.weight, stride=c1.stride, padding=1)
    t = act(bn(block.bn1, t))
    return bn(block.bn2, F.conv2d(t, c2.weight, padding=1))


@pytest.mark.parametrize("linear", [True, False])
def test_skip_weight_zero_removes_the_skip(linear: bool) -> None:
    torch.manual_seed(1)
    act = (lambda t: t) if linear else F.relu
    model = randomize_batchnorm_(resnet_tiny(linear=linear, skip_weight=0.0),
                                 torch.Generator().manual_seed(2)).eval()
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        for block in model.blocks():
            assert float(block.skip_weight) == 0.0
            x_in = x if block.conv1.in_channels == 4 else torch.randn(2, 4, 6, 6)
            expected = act(hand_residual(block, x_in, act))
            assert torch.allclose(block(x_in), expected, atol=1e-6, rtol=1e-5)
            # skip weight 1: identity or projection shortcut added back, by hand too
            set_skip_weight_(block, 1.0)
            if isinstance(block.shortcut, nn.Identity):
                short = x_in
            else:
                conv, bn = block.shortcut
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                short = (F.conv2d(x_in, conv.weight, stride=conv.stride) * scale[:, None, None]
                         + (bn.bias - bn.running_mean * scale)[:, None, None])
            expected = act(short + hand_residual(block, x_in, act))
            assert torch.allclose(block(x_in), expected, atol=1e-5, rtol=1e-5)
            set_skip_weight_(block, 0.0)


def test_skip_weight_is_a_buffer_and_zero_skips_can_be_dropped() -> None:
    torch.manual_seed(3)
    model = resnet_tiny(linear=False).eval()
    assert "stages.0.0.skip_weight" in model.state_dict()
    assert model.double().stages[0][0].skip_weight.dtype == torch.float64
    model.float()
    set_skip_weight_(model, 0.5)
    assert all(float(b.skip_weight) == 0.5 for b in model.blocks())
    assert remove_zero_skips_(model) == 0
    set_skip_weight_(model, 0.0)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        before = model(x)
        assert remove_zero_skips_(model) == 2
        assert all(b.shortcut is None for b in model.blocks())
        assert torch.equal(model(x), before)


def test_randomize_and_calibrate_batchnorm() -> None:
    torch.manual_seed(4)
    a, b = resnet_tiny(), resnet_tiny()
    b.load_state_dict(a.state_dict())
    randomize_batchnorm_(a, torch.Generator().manual_seed(5))
    randomize_batchnorm_(b, torch.Generator().manual_seed(5))
    bn = a.stem[1]
    assert torch.equal(bn.running_var, b.stem[1].running_var)
    assert not torch.allclose(bn.running_var, torch.ones(4))
    assert not torch.allclose(bn.running_mean, torch.zeros(4))
    assert not torch.allclose(bn.weight.detach(), torch.ones(4))
    assert bool((bn.running_var > 0).all())
    mean_before = bn.running_mean.clone()
    randomize_batchnorm_(a, torch.Generator().manual_seed(6), stats=False)
    assert torch.equal(bn.running_mean, mean_before)

    x = torch.randn(40, 1, 8, 8)
    a.eval()
    calibrate_batchnorm_(a, x)  # one chunk: exactly the batch statistics
    assert not any(m.training for m in a.modules()) and bn.momentum == 0.1
    with torch.no_grad():
        z = F.conv2d(x, a.stem[0].weight, padding=1)  # the stem BN's input, by hand
    assert torch.allclose(bn.running_mean, z.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, z.var((0, 2, 3), unbiased=True), rtol=1e-4)


def test_constructor_arguments_reach_the_layers() -> None:
    model = resnet_tiny(in_channels=3, num_classes=4, widths=(2, 6), activation=nn.Tanh(),
                        skip_weight=0.25)
    assert model.stem[0].in_channels == 3 and model.fc.out_features == 4
    assert stage_layout(model) == [(1, 2, 1), (1, 6, 2)]
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 1 + 2 * 2
    tanhs = [m for m in model.modules() if isinstance(m, nn.Tanh)]
    assert len({id(t) for t in tanhs}) == len(tanhs)  # one module per slot (fx-friendly)
    assert all(float(b.skip_weight) == 0.25 for b in model.blocks())
    clone = copy.deepcopy(model)
    assert torch.equal(clone(torch.ones(1, 3, 6, 6)), model(torch.ones(1, 3, 6, 6)))
