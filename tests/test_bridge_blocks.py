"""Re-parameterization blocks (bridge.models.reparam) and their partial collapse by the converter.

Two halves:

* the models themselves: every block is one convolution in eval mode — its paper's
  hand-written merge (``reparameterize`` / ``deploy``) reproduces it in float64 — except
  DBB with zero-padded middle maps, whose merge is wrong exactly on the border;
* ``bridge.convert.convert(model, x, mode="partial")``: the converted module equals the
  ORIGINAL model run in float64 (float32 within a dtype-aware tolerance, float64 at
  ~1e-10 when the converted module casts), leaves one convolution per block and no batch
  norm, keeps the nonlinearities as boundaries, and its report says what happened.
"""
from __future__ import annotations

import copy
from collections import Counter
from typing import Any, Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from laurentnet.bridge.models.reparam import (ACBlock, DBBBlock, DiracBlock, MobileOneBlock,
                                              RepVGGBlock, SqueezeExcite, acnet_net, dbb_net,
                                              deploy, diracnet_net, mobileone_net,
                                              randomize_bn_, repvgg_net, resnet18_relu)

torch.set_num_threads(min(2, torch.get_num_threads()))

# ------------------------------------------------------------------------------ helpers

BLOCKS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "repvgg": lambda i, o, s: RepVGGBlock(i, o, s),
    "acnet": lambda i, o, s: ACBlock(i, o, s),
    "dbb_bn_pad": lambda i, o, s: DBBBlock(i, o, 3, s, border="bn_pad"),
    "dbb5_bn_pad": lambda i, o, s: DBBBlock(i, o, 5, s, internal=2, border="bn_pad"),
    "mobileone": lambda i, o, s: MobileOneBlock(i, o, 3, s, branches=3),
    "mobileone_pointwise": lambda i, o, s: MobileOneBlock(i, o, 1, s, branches=2),
    "mobileone_depthwise": lambda i, o, s: MobileOneBlock(i, i, 3, s, groups=i, branches=2),
}

NETS: dict[str, Callable[..., nn.Module]] = {
    "repvgg": repvgg_net,
    "acnet": acnet_net,
    "dbb_bn_pad": lambda **kw: dbb_net(border="bn_pad", **kw),
    "mobileone": mobileone_net,
    "diracnet": diracnet_net,
    "diracnet_scalar": lambda **kw: diracnet_net(per_channel=False, **kw),
}

SMALL = dict(in_channels=3, num_classes=5, widths=(4, 8), depth=1)


def perturb_dirac_(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """Random ``a, b`` of every DiracBlock (the default a=1, b=0.1 is too tame)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DiracBlock):
                m.alpha.uniform_(0.5, 1.5, generator=gen)
                m.beta.uniform_(-1.0, 1.0, generator=gen)
    return model


def prepared(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with random BN statistics/affine parameters and Dirac scalars, eval mode."""
    gen = torch.Generator().manual_seed(seed)
    return perturb_dirac_(randomize_bn_(model, gen), gen).eval()


def sample(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The ORIGINAL model in float64 on the same (float32-representable) input."""
    with torch.no_grad():
        return copy.deepcopy(model).double()(x.double())


def f32_tolerance(model: nn.Module, x: torch.Tensor, ref: torch.Tensor) -> float:
    """Dtype-aware bound for a float32 output: 16× the original float32 model's own error
    plus 64 float32 ulps of the output scale (merging re-associates the sums)."""
    with torch.no_grad():
        own = float((model(x).double() - ref).abs().max())
    scale = float(ref.abs().max())
    return 16 * own + 64 * torch.finfo(torch.float32).eps * max(scale, 1.0)


def interior(size: int, k: int, stride: int) -> slice:
    """Output indices whose ``k``-tap window (centred padding ``k//2``) is inside ``size``."""
    p = k // 2
    first = -(-p // stride)
    last = (size - 1 - (k - 1 - p)) // stride
    return slice(first, last + 1)


def max_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).abs().max())


def count(module: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


# ------------------------------------------------------------------- the models alone


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", [(6, 6), (5, 6)])
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_hand_merge_is_the_block(name: str, shape: tuple[int, int], stride: int) -> None:
    """Each paper's merge (one nn.Conv2d) equals its train-time block in float64."""
    for c_in, c_out in [(4, 4), (3, 5)]:
        block = prepared(BLOCKS[name](c_in, c_out, stride)).double()
        merged = block.reparameterize()
        assert isinstance(merged, nn.Conv2d)
        x = sample((2, c_in, *shape)).double()
        with torch.no_grad():
            y, z = block(x), merged(x)
        assert y.shape == z.shape
        assert max_err(z, y) <= 1e-12 * max(1.0, float(y.abs().max()))


@pytest.mark.parametrize("per_channel,normalize,bn",
                         [(True, False, True), (False, False, False), (True, True, True),
                          (False, True, False)])
def test_dirac_block_is_a_dirac_plus_b_conv(per_channel: bool, normalize: bool, bn: bool) -> None:
    block = prepared(DiracBlock(4, per_channel=per_channel, normalize=normalize, bn=bn)).double()
    x = sample((2, 4, 7, 5)).double()
    w = block.weight()
    if normalize:
        assert torch.allclose(w.flatten(1).norm(dim=1), torch.ones(4, dtype=w.dtype))
    with torch.no_grad():
        conv = nn.functional.conv2d(x, w, block.conv.bias, padding=1)
        by_hand = block.alpha * x + block.beta * conv
        if bn:
            by_hand = block.bn(by_hand)
        assert max_err(block(x), by_hand) <= 1e-13
        assert max_err(block.reparameterize()(x), by_hand) <= 1e-12


@pytest.mark.parametrize("stride", [1, 2])
def test_dbb_zero_border_merge_is_wrong_exactly_on_the_border(stride: int) -> None:
    """The naive DBB merge with zero-padded middle maps differs by O(BN bias) on the
    one-pixel border and agrees inside; the BNAndPad form is exact everywhere."""
    torch.manual_seed(0)
    zeros = prepared(DBBBlock(4, 4, 3, stride, border="zeros")).double()
    with pytest.raises(ValueError, match="border"):
        zeros.reparameterize()
    x = sample((2, 4, 9, 8)).double()
    with torch.no_grad():
        diff = (zeros(x) - zeros.reparameterize(allow_inexact=True)(x)).abs().amax((0, 1))
    inner = diff[interior(9, 3, stride), interior(8, 3, stride)]
    assert inner.numel() > 0
    assert float(inner.max()) <= 1e-12
    assert float(diff.max()) > 1e-2
    bn_pad = prepared(DBBBlock(4, 4, 3, stride, border="bn_pad")).double()
    with torch.no_grad():
        assert max_err(bn_pad.reparameterize()(x), bn_pad(x)) <= 1e-12


def test_randomize_bn_gives_every_batch_norm_non_trivial_statistics() -> None:
    model = randomize_bn_(dbb_net(**SMALL), torch.Generator().manual_seed(0))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 2 * 6  # stem + 2 blocks x (dense, 1x1, 2 sequential, 2 average)
    for bn in bns:
        for t, trivial in [(bn.running_mean, 0.0), (bn.running_var, 1.0), (bn.weight, 1.0),
                           (bn.bias, 0.0)]:
            assert float((t.detach() - trivial).abs().min()) > 0


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("activation,se", [("relu", False), ("hardswish", True)])
def test_hand_deployed_network_has_one_conv_per_block(name: str, activation: str,
                                                      se: bool) -> None:
    model = prepared(NETS[name](activation=activation, se=se, **SMALL))
    deployed = deploy(copy.deepcopy(model).double())  # merged in float64
    units = len(model.blocks())
    assert count(deployed, nn.Conv2d) == units <= count(model, nn.Conv2d)
    assert count(deployed, nn.BatchNorm2d) == 0 < count(model, nn.BatchNorm2d)
    if not name.startswith("diracnet"):  # a DiracNet block has one conv before merging too
        assert units < count(model, nn.Conv2d)
    x = sample((3, 3, 12, 12))
    with torch.no_grad():
        assert max_err(deployed(x.double()), reference(model, x)) <= 1e-10
    assert count(model, nn.Hardswish if activation == "hardswish" else nn.ReLU) == units


def test_resnet18_relu_is_torchvision_shaped() -> None:
    model = resnet18_relu()
    assert 11.1e6 < sum(p.numel() for p in model.parameters()) < 11.3e6
    assert count(model, nn.Conv2d) == 1 + 16 + 3 and count(model, nn.BatchNorm2d) == 20
    names = {n for n, _ in model.named_modules()}
    assert {"conv1", "bn1", "layer1.0.conv2", "layer2.0.downsample.0", "fc"} <= names
    small = resnet18_relu(in_channels=1, num_classes=7, width=4).eval()
    with torch.no_grad():
        assert small(sample((2, 1, 28, 28))).shape == (2, 7)
        big_stem = resnet18_relu(width=4, stem="imagenet").eval()
        assert big_stem(sample((2, 3, 32, 32))).shape == (2, 10)
    torch.fx.symbolic_trace(small)  # traceable, in-place ReLUs and all


# ---------------------------------------------------------------------- the converter


def converter() -> tuple[Callable[..., Any], Callable[[nn.Module], dict[str, int]]]:
    """``convert, count_layers`` (imported here so the model tests run without them)."""
    from laurentnet.bridge.convert import convert, count_layers
    return convert, count_layers


def converted(model: nn.Module, x: torch.Tensor, float64: bool = True, **options: Any) -> Any:
    """``convert(model, x, mode="partial", measure=False, **options)``, checked against the
    ORIGINAL model in float64 (:func:`reference`):

    * the float32 conversion within :func:`f32_tolerance`;
    * the same module cast with ``.double()`` (its weights were rounded to float32 once, so
      it is held to the float32 tolerance, but it must run in float64);
    * with ``float64``: the conversion of the float64 model (weights emitted in float64)
      at 1e-10 relative, with the same layer counts as the float32 one.

    Returns the float32 conversion."""
    convert, count_layers = converter()
    options = {"mode": "partial", "measure": False, **options}
    conversion = convert(model, x, **options)
    ref = reference(model, x)
    tol = f32_tolerance(model, x, ref)
    with torch.no_grad():
        y = conversion.module(x)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    assert max_err(y, ref) <= tol
    with torch.no_grad():
        y_cast = copy.deepcopy(conversion.module).double()(x.double())
    assert y_cast.dtype == torch.float64 and max_err(y_cast, ref) <= tol
    if float64:
        conversion64 = convert_float64(model, x, **options)
        assert count_layers(conversion64.module) == count_layers(conversion.module)
    return conversion


def convert_float64(model: nn.Module, x: torch.Tensor, **options: Any) -> Any:
    """Convert a float64 copy of ``model``; its output equals the original's float64 run
    at 1e-10 relative."""
    convert, _ = converter()
    conversion = convert(copy.deepcopy(model).double(), x.double(), **options)
    with torch.no_grad():
        y64 = conversion.module(x.double())
    ref = reference(model, x)
    assert y64.dtype == torch.float64
    assert max_err(y64, ref) <= 1e-10 * max(1.0, float(ref.abs().max()))
    return conversion


def kept_ops(report: Any) -> Counter[str]:
    """How many boundaries of each ATen op (``aten.relu.default`` -> ``relu``)."""
    return Counter(b.op.split(".")[1] if b.op.startswith("aten.") else b.op
                   for b in report.boundaries)


def n_convs(segment: Any) -> int:
    """Convolutions among a segment's layers (``"name: aten.conv2d.default"``)."""
    return sum(node.split(": ")[-1].startswith("aten.conv") for node in segment.nodes)


def check_report(conversion: Any, model: nn.Module) -> None:
    """The report is what happened: a merged segment is exact, says what it became and why,
    and counts as one conv if it had any; a kept one says why and keeps its convs; the
    converted module has exactly that many convs and no batch norm from a merged segment."""
    _, count_layers = converter()
    segments = conversion.report.segments
    expected = 0
    for s in segments:
        assert s.reason, s.name
        if s.merged:
            assert s.exact and s.merged_into and s.macs_after is not None, s.name
            expected += 1 if n_convs(s) else 0
        else:
            expected += n_convs(s)
    after = count_layers(conversion.module)
    assert after["conv"] == expected
    assert sum(n_convs(s) for s in segments) == count_layers(model)["conv"]


@pytest.mark.parametrize("name", sorted(NETS))
def test_partial_collapse_leaves_one_conv_per_block(name: str) -> None:
    """One conv per block (and the stem), no BN, as few convs as the hand-written
    re-parameterization, equal to the original, the ReLUs kept as named boundaries."""
    _, count_layers = converter()
    model = prepared(NETS[name](**SMALL))
    x = sample((3, 3, 12, 12))
    before = count_layers(model)
    conversion = converted(model, x)
    after = count_layers(conversion.module)
    units = len(model.blocks())
    assert before["conv"] >= units and before["batch_norm"] > 0
    assert after["conv"] == units and after["batch_norm"] == 0
    assert after["conv"] <= count_layers(deploy(model))["conv"]
    check_report(conversion, model)
    assert kept_ops(conversion.report) == Counter(relu=count(model, nn.ReLU))
    assert all(b.name in conversion.module.code for b in conversion.report.boundaries)


@pytest.mark.parametrize("name,activation,se", [("mobileone", "hardswish", False),
                                                ("repvgg", "hardswish", True),
                                                ("diracnet", "relu", True)])
def test_activations_and_se_gates_stay_as_named_boundaries(name: str, activation: str,
                                                           se: bool) -> None:
    """Hardswish, and the SE gate's relu / sigmoid / multiply, are kept and named; the
    blocks around them still collapse to one conv each (the SE layers are nn.Linear)."""
    _, count_layers = converter()
    model = prepared(NETS[name](activation=activation, se=se, **SMALL))
    x = sample((2, 3, 10, 10))
    conversion = converted(model, x, float64=False)
    after = count_layers(conversion.module)
    assert after["conv"] == len(model.blocks()) and after["batch_norm"] == 0
    check_report(conversion, model)
    n_se = count(model, SqueezeExcite)
    assert (n_se > 0) == se
    expected = Counter({"relu": count(model, nn.ReLU) + n_se,
                        "hardswish": count(model, nn.Hardswish), "sigmoid": n_se, "mul": n_se})
    assert kept_ops(conversion.report) == +expected


def test_dbb_zero_border_branch_is_exact_or_reported() -> None:
    """DBB with zero-padded middle maps: the converter either merges each block exactly
    (one conv per block, possibly with a per-position bias map) or keeps it, saying why;
    either way the output equals the original everywhere, the border included."""
    _, count_layers = converter()
    model = prepared(dbb_net(**SMALL))
    x = sample((2, 3, 9, 9))
    conversion = converted(model, x)
    check_report(conversion, model)
    assert count_layers(conversion.module)["conv"] >= len(model.blocks())
    border = sample((2, 3, 9, 9), 7)
    border[:, :, 1:-1, 1:-1] = 0  # only the border pixels carry signal
    ref = reference(model, border)
    with torch.no_grad():
        assert max_err(conversion.module(border), ref) <= f32_tolerance(model, border, ref)


@pytest.mark.parametrize("stride", [1, 2])
def test_dbb_zero_border_with_allow_inexact_is_honest(stride: int) -> None:
    """With ``allow_inexact``: a segment reported exact is exact everywhere; a difference
    from the original is confined to the border and its segment is reported not exact."""
    convert, count_layers = converter()
    block = prepared(DBBBlock(4, 4, 3, stride, border="zeros"))
    x = sample((2, 4, 9, 8))
    conversion = convert(block, x, mode="partial", allow_inexact=True, measure=False)
    ref = reference(block, x)
    with torch.no_grad():
        diff = (conversion.module(x).double() - ref).abs().amax((0, 1))
    tol = f32_tolerance(block, x, ref)
    assert float(diff[interior(9, 3, stride), interior(8, 3, stride)].max()) <= tol
    (segment,) = conversion.report.segments
    assert segment.merged and count_layers(conversion.module)["batch_norm"] == 0
    if segment.exact:
        assert float(diff.max()) <= tol
    else:
        assert "INEXACT" in segment.reason and conversion.region is not None


def test_resnet18_relu_keeps_its_convs_and_folds_every_batch_norm() -> None:
    """Every conv+BN folds; the ReLUs and the residual adds (two sources) are kept."""
    _, count_layers = converter()
    model = prepared(resnet18_relu(width=4))
    x = sample((2, 3, 32, 32))
    conversion = converted(model, x)
    after = count_layers(conversion.module)
    assert after["batch_norm"] == 0 and after["conv"] == 20 and after["linear"] == 1
    check_report(conversion, model)
    assert kept_ops(conversion.report) == Counter(relu=1 + 2 * 8, add=8)


def test_segments_are_timed_when_measured() -> None:
    convert, _ = converter()
    model = prepared(repvgg_net(**SMALL))
    conversion = convert(model, sample((2, 3, 8, 8)), mode="partial")
    merged = [s for s in conversion.report.segments if s.merged]
    assert merged and all(s.seconds_before > 0 and s.seconds_after > 0 for s in merged)
    assert set(conversion.report.as_dict()) >= {"segments", "boundaries"}
    assert all(s.name in conversion.report.table() for s in conversion.report.segments)


FAMILIES = sorted(BLOCKS)


@settings(max_examples=8)
@given(family=st.sampled_from(FAMILIES), c_in=st.integers(1, 5), c_out=st.integers(1, 5),
       height=st.integers(3, 9), width=st.integers(3, 9), stride=st.sampled_from([1, 2]),
       calibrate=st.booleans(), seed=st.integers(0, 2**16))
def test_random_block_collapses_to_one_exact_conv(family: str, c_in: int, c_out: int,
                                                  height: int, width: int, stride: int,
                                                  calibrate: bool, seed: int) -> None:
    """Random channels, sizes, strides, and BN statistics either random or computed from
    a batch in train mode (as after training): any block is one conv, no BN, and (in
    float64) equal to the block at 1e-10."""
    _, count_layers = converter()
    block = prepared(BLOCKS[family](c_in, c_out, stride), seed)
    if calibrate:
        calibrate_bn_(block, sample((4, c_in, height, width), seed + 2))
    x = sample((2, c_in, height, width), seed + 1)
    conversion = convert_float64(block, x, mode="partial", measure=False)
    after = count_layers(conversion.module)
    assert after["conv"] == 1 and after["batch_norm"] == 0
    (segment,) = conversion.report.segments
    assert segment.merged and segment.exact


def calibrate_bn_(model: nn.Module, batch: torch.Tensor) -> nn.Module:
    """Running statistics = the train-mode batch statistics of ``batch`` (momentum None,
    one batch); back to eval mode."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    with torch.no_grad():
        model(batch)
    return model.eval()
