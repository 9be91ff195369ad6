"""Multirate linear models through the PyTorch bridge: a stride followed by an up-sampling
(``ConvTranspose`` / ``nn.Upsample(mode='nearest')``), a U-Net style skip ``x + up(down(x))``.
No single ``down_s K up_u + b`` computes them; ``convert`` emits a traced ``PolyphaseConv``
(pixel-unshuffle, one stride-1 conv, pixel-shuffle).  Every check compares the converted
module with torch's own layers in float64 on every output position (or on the reported
exact region), and the ``.pt2`` files go back through the package's safe ``load``."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from laurentnet.bridge import ConversionError, convert, load, verify
from laurentnet.bridge.cli import main

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_TRANSPOSE = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}


class Skip(nn.Module):
    """``y = x + up(down(x))``: a stride-2 conv and a stride-2 transposed conv (U-Net skip)."""

    def __init__(self, ndim: int, channels: int = 3, padding: int = 1, mode: str = "zeros",
                 kernel: int = 3):
        super().__init__()
        self.down = _CONV[ndim](channels, channels, kernel, stride=2, padding=padding,
                                padding_mode=mode)
        self.up = _TRANSPOSE[ndim](channels, channels, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.down(x))


class Chain(nn.Module):
    """A stride-2 conv then a transposed conv with stride 2 and a bias (kernel 2: an
    overlapping one would read the first conv outside its window, exact only inside)."""

    def __init__(self, ndim: int, channels: int = 2):
        super().__init__()
        self.down = _CONV[ndim](channels, 3, 3, stride=2)
        self.up = _TRANSPOSE[ndim](3, channels, 2, stride=2, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class Nearest(nn.Module):
    """A stride-2 conv then nearest up-sampling by ``factor``."""

    def __init__(self, ndim: int, factor: int = 2):
        super().__init__()
        self.down = _CONV[ndim](2, 2, 3, stride=2)
        self.up = nn.Upsample(scale_factor=factor, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class WithReLU(nn.Module):
    """A nonlinear model whose linear segment after the ReLU is multirate."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 2, 1)
        self.down = nn.Conv2d(2, 2, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(2, 2, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(torch.relu(self.stem(x))))


def _sample(ndim: int, n: int, channels: int, batch: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, channels, *(n,) * ndim, generator=g, dtype=torch.float64)


def _model(cls, *args, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return cls(*args, **kwargs).double().eval()


def _polyphase_modules(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if type(m).__name__ == "PolyphaseConv"]


CASES = [(Skip, 1, 3, 8), (Skip, 2, 3, 8), (Chain, 1, 2, 9), (Chain, 2, 2, 9),
         (Nearest, 1, 2, 9), (Nearest, 2, 2, 9)]


@pytest.mark.parametrize("cls, ndim, channels, n", CASES,
                         ids=[f"{c.__name__}-{d}d" for c, d, _, _ in CASES])
def test_kernel_mode_emits_a_polyphase_conv_exact_everywhere(cls, ndim, channels, n):
    model = _model(cls, ndim)
    x = _sample(ndim, n, channels)
    conversion = convert(model, x[:1], mode="kernel", measure=False)
    (segment,) = conversion.report.segments
    assert segment.merged and segment.exact and "polyphase" in segment.merged_into
    phases = int(segment.merged_into.split("polyphase, ")[1].split(" phases")[0])
    assert phases == 2 ** ndim   # the output period is 2 per axis
    assert len(_polyphase_modules(conversion.module)) == 1 and conversion.region is None
    with torch.no_grad():
        torch.testing.assert_close(conversion.module(x), model(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("ndim", [1, 2])
def test_a_bias_through_zero_insertion_becomes_a_bias_map(ndim):
    """conv(stride 2, zero padding) -> conv_transpose(stride 2) -> conv(zero padding): the
    linear part is exact everywhere, the biases reach the border only in part."""
    torch.manual_seed(2)
    model = nn.Sequential(_CONV[ndim](2, 3, 3, stride=2, padding=1),
                          _TRANSPOSE[ndim](3, 3, 2, stride=2),
                          _CONV[ndim](3, 2, 3, padding=1)).double().eval()
    x = _sample(ndim, 9, 2)
    conversion = convert(model, x[:1], mode="kernel", measure=False)
    text = conversion.report.segments[0].merged_into
    assert f"polyphase, {2 ** ndim} phases" in text and "bias map" in text
    with torch.no_grad():
        torch.testing.assert_close(conversion.module(x), model(x), rtol=1e-10, atol=1e-10)


def test_rates_that_cancel_give_one_plain_conv():
    """conv_transpose(stride 2) -> conv(stride 2) is ``down_2 K up_2``: shift-invariant, one
    stride-1 ``nn.Conv2d`` (no pixel shuffles)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.ConvTranspose2d(2, 3, 2, stride=2),
                          nn.Conv2d(3, 2, 3, stride=2)).double().eval()
    x = _sample(2, 7, 2)
    conversion = convert(model, x[:1], mode="kernel", measure=False)
    assert conversion.report.segments[0].merged_into.startswith("Conv2d 2->2")
    assert not _polyphase_modules(conversion.module)
    with torch.no_grad():
        torch.testing.assert_close(conversion.module(x), model(x), rtol=1e-10, atol=1e-10)


def test_nearest_upsampling_by_three_in_1d():
    model = _model(Nearest, 1, 3)
    x = _sample(1, 11, 2)
    conversion = convert(model, x[:1], mode="kernel", measure=False)
    assert "polyphase, 3 phases" in conversion.report.segments[0].merged_into
    with torch.no_grad():
        torch.testing.assert_close(conversion.module(x), model(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("ndim", [1, 2])
def test_auto_mode_is_exact_on_a_multirate_model(ndim):
    model = _model(Skip, ndim, padding=0, kernel=2)
    x = _sample(ndim, 8, 3)
    conversion = convert(model, x[:1], mode="auto", measure=False)
    assert "kernel" in conversion.report.reason or "partial" in conversion.report.reason
    with torch.no_grad():
        torch.testing.assert_close(conversion.module(x), model(x), rtol=1e-10, atol=1e-10)


def test_partial_mode_merges_a_multirate_segment():
    model = _model(WithReLU)
    x = _sample(2, 8, 2)
    conversion = convert(model, x[:1], mode="partial", merge_slower=True, measure=False)
    merged = [s for s in conversion.report.segments if s.merged]
    assert any("polyphase, 4 phases" in s.merged_into for s in merged)
    assert _polyphase_modules(conversion.module)
    with torch.no_grad():
        torch.testing.assert_close(conversion.module(x), model(x), rtol=1e-10, atol=1e-10)


def test_pt2_round_trip_through_the_safe_loader(tmp_path):
    model = _model(Skip, 2)
    x = _sample(2, 8, 3)
    conversion = convert(model, x[:1], mode="kernel", measure=False)
    pickled = pickle.dumps(conversion.module)   # plain torch: no laurentnet class inside
    assert b"laurentnet" not in pickled
    with torch.no_grad():
        torch.testing.assert_close(pickle.loads(pickled)(x), model(x), rtol=1e-10, atol=1e-10)
    path = conversion.save(tmp_path / "skip.pt2")
    loaded = load(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), model(x), rtol=1e-10, atol=1e-10)
    assert verify(model, loaded.module, x[:1]).ok


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_an_inexact_border_is_refused_or_given_with_its_region(mode):
    model = _model(Skip, 2, mode=mode)
    x = _sample(2, 8, 3)
    with pytest.raises(ConversionError) as info:
        convert(model, x[:1], mode="kernel", measure=False)
    text = str(info.value)
    assert "polyphase" in text and "allow_inexact=True" in text and "mode='affine'" in text
    conversion = convert(model, x[:1], mode="kernel", allow_inexact=True, measure=False)
    region = torch.from_numpy(np.broadcast_to(conversion.region, (3, 8, 8)).copy())
    assert 0 < int(region.sum()) < region.numel()
    with torch.no_grad():
        got, want = conversion.module(x), model(x)
    torch.testing.assert_close(got[:, region], want[:, region], rtol=1e-10, atol=1e-10)
    assert not torch.allclose(got, want)   # outside the region it really differs
    assert verify(model, conversion.module, x[:1], region=conversion.region).ok


def test_ops_that_are_not_convolutions_get_a_clear_refusal():
    class Bilinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.down = nn.Conv2d(2, 2, 3, stride=2)
            self.up = nn.Upsample(scale_factor=2.5, mode="nearest")

        def forward(self, x):
            return self.up(self.down(x))

    model = _model(Bilinear)
    x = _sample(2, 9, 2)
    with pytest.raises(ConversionError, match=r"upsample_nearest2d.*mode='affine'"):
        convert(model, x[:1], mode="kernel", measure=False)
    affine = convert(model, x[:1], mode="affine", measure=False)
    with torch.no_grad():
        torch.testing.assert_close(affine.module(x), model(x), rtol=1e-10, atol=1e-10)


@settings(max_examples=12, deadline=None)
@given(stride=st.integers(1, 3), up=st.integers(1, 3), k=st.integers(1, 4), k2=st.integers(1, 4),
       padding=st.integers(0, 1), n=st.integers(7, 12))
def test_random_1d_stride_then_upsampling(stride, up, k, k2, padding, n):
    """conv(stride s) -> conv_transpose(stride u): exact at every position, or a
    ConversionError (never another exception)."""
    torch.manual_seed(stride * 100 + up * 10 + k)
    model = nn.Sequential(nn.Conv1d(2, 2, k, stride=stride, padding=padding),
                          nn.ConvTranspose1d(2, 2, k2, stride=up)).double().eval()
    x = _sample(1, n, 2)
    try:
        conversion = convert(model, x[:1], mode="kernel", measure=False)
    except ConversionError as exc:
        assert "mode='affine'" in str(exc)
        return
    with torch.no_grad():
        torch.testing.assert_close(conversion.module(x), model(x), rtol=1e-10, atol=1e-10)


def test_cli_collapse_kernel_verify_and_inspect(tmp_path, capsys):
    model = _model(Skip, 2).float()
    source = tmp_path / "skip.pt2"
    example = torch.randn(2, 3, 8, 8)
    torch.export.save(torch.export.export(model, (example,),
                                          dynamic_shapes=({0: torch.export.Dim.AUTO},)),
                      str(source))
    out = tmp_path / "skip-kernel.pt2"
    assert main(["collapse", str(source), "-o", str(out), "--mode", "kernel", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["verification"]["ok"]
    assert "polyphase, 4 phases" in json.dumps(payload["report"])
    assert main(["verify", str(source), str(out)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(source), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["segments"]
    converted = load(out).module
    with torch.no_grad():
        torch.testing.assert_close(converted(example), model(example), rtol=1e-4, atol=1e-5)


def test_converted_polyphase_module_refuses_another_input_size():
    """Its reshapes are fixed to the converted size: swapped height and width (same number
    of values) must be refused, not answered for the converted size."""
    import pytest
    from laurentnet.bridge import convert
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, stride=2, padding=1),
                                torch.nn.ConvTranspose2d(3, 2, 2, stride=2)).double().eval()
    converted = convert(model, torch.randn(1, 2, 10, 12, dtype=torch.float64), mode="kernel").module
    x = torch.randn(3, 2, 10, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), rtol=1e-10, atol=1e-10)
        with pytest.raises(AssertionError, match=r"\(batch, 2, 10, 12\)"):
            converted(torch.randn(1, 2, 12, 10, dtype=torch.float64))
