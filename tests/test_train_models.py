"""The ResNet family extended for the homotopy (bridge.models.resnet): bottleneck blocks,
width multiplier, 1 or 3 input channels, λ scaling the projection shortcut too."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from laurentnet.algebra.errors import LaurentnetError
from laurentnet.bridge.models import (Bottleneck, ResNet, build_resnet, fix_unit_skips_,
                                      randomize_batchnorm_, remove_zero_skips_, resnet50,
                                      set_skip_weight_, skip_weights)


def bn_eval(m: nn.BatchNorm2d, t: torch.Tensor) -> torch.Tensor:
    scale = m.weight / torch.sqrt(m.running_var + m.eps)
    return t * scale[:, None, None] + (m.bias - m.running_mean * scale)[:, None, None]


def bottleneck_by_hand(block: Bottleneck, x: torch.Tensor, lam: float) -> torch.Tensor:
    """relu(λ · BN(conv1x1_s(x)) + BN3(conv3(relu(BN2(conv2_s(relu(BN1(conv1(x)))))))))"""
    h = F.relu(bn_eval(block.bn1, F.conv2d(x, block.conv1.weight)))
    h = F.relu(bn_eval(block.bn2, F.conv2d(h, block.conv2.weight, stride=block.conv2.stride,
                                           padding=1)))
    h = bn_eval(block.bn3, F.conv2d(h, block.conv3.weight))
    conv, bn = block.shortcut
    skip = bn_eval(bn, F.conv2d(x, conv.weight, stride=conv.stride))
    return F.relu(lam * skip + h)


@pytest.mark.parametrize("lam", [1.0, 0.3, 0.0])
def test_bottleneck_projection_is_scaled_by_lambda(lam: float) -> None:
    torch.manual_seed(0)
    block = randomize_batchnorm_(Bottleneck(6, 4, stride=2), torch.Generator().manual_seed(1))
    block.eval()
    assert block.conv3.out_channels == 16 and isinstance(block.shortcut, nn.Sequential)
    set_skip_weight_(block, lam)
    x = torch.randn(2, 6, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), bottleneck_by_hand(block, x, lam), atol=1e-5)
        if lam == 0.0:
            before = block(x)
            assert remove_zero_skips_(block) == 1 and block.shortcut is None
            assert torch.equal(block(x), before)


def test_bottleneck_resnet_width_multiplier_and_rgb() -> None:
    torch.manual_seed(0)
    model = resnet50(in_channels=3, num_classes=7, linear=False, width_multiplier=0.125).eval()
    assert model.block_type == "Bottleneck" and len(model.blocks()) == 16
    assert [s[0].conv1.out_channels for s in model.stages] == [8, 16, 32, 64]
    assert model.fc.in_features == 64 * 4 and model.stem[0].in_channels == 3
    with torch.no_grad():
        assert model(torch.randn(2, 3, 28, 28)).shape == (2, 7)
    # every stage's first block changes the shape -> a projection; 4 projections in all
    assert sum(isinstance(b.shortcut, nn.Sequential) for b in model.blocks()) == 4
    basic = build_resnet("resnet18", width_multiplier=0.5)
    assert basic.widths == (32, 64, 128, 256) and not basic.linear
    assert build_resnet("resnet_small", block="bottleneck").block_type == "Bottleneck"
    assert build_resnet("resnet_small", in_channels=3).stem[0].in_channels == 3


def test_per_block_skip_weights_and_unit_skips() -> None:
    torch.manual_seed(2)
    model = randomize_batchnorm_(build_resnet("resnet_small")).eval()
    set_skip_weight_(model, [1.0, 0.5, 0.0, 1.0, 0.25, 0.0])
    assert skip_weights(model) == [1.0, 0.5, 0.0, 1.0, 0.25, 0.0]
    with pytest.raises(LaurentnetError, match="3 skip weights for 6 blocks"):
        set_skip_weight_(model, [1.0, 0.5, 0.0])
    set_skip_weight_(model, 1.0)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        before = model(x)
        assert fix_unit_skips_(model) == 6
        assert not any(b.scaled_skip for b in model.blocks())
        assert torch.equal(model(x), before)  # 1 · s == s exactly


def test_model_arguments_are_checked() -> None:
    for kwargs, message in [(dict(block="wide"), "block"),
                            (dict(width_multiplier=0), "width_multiplier"),
                            (dict(in_channels=0), "in_channels")]:
        with pytest.raises(LaurentnetError, match=message):
            ResNet((1, 1), (4, 8), **kwargs)
    with pytest.raises(LaurentnetError, match="model 'resnet9'"):
        build_resnet("resnet9")
