"""The PyTorch bridge core: trace any model, collapse its linear parts, export plain torch.

Every check compares the converted module with the ORIGINAL module run in float64 (a deep
copy cast with ``.double()``): float64 models are converted in float64, so a merged
segment must agree to float64 round-off; float32 models within a float32 tolerance.
"""
from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
import textwrap
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from laurentnet.bridge.convert import ConversionError, convert, count_layers
from laurentnet.bridge.trace import trace, trace_model

torch.set_num_threads(min(2, torch.get_num_threads()))


def sample(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return copy.deepcopy(model).double()(x.double())


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).abs().max() / max(1.0, float(ref.abs().max())))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.5, generator=g)
    return model.eval()


class Fn(nn.Module):
    """A model given by a function of its input and of its own parameters ``self.p``."""

    def __init__(self, fn: Callable[..., torch.Tensor], **params: torch.Tensor | nn.Module):
        super().__init__()
        self.fn = fn
        for name, value in params.items():
            if isinstance(value, nn.Module):
                self.add_module(name, value)
            else:
                self.register_parameter(name, nn.Parameter(value))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self, x)


def w(*shape: int, seed: int = 1) -> torch.Tensor:
    return sample(*shape, seed=seed, dtype=torch.float32) * 0.5


# Every supported op, in module, functional and method form: (name, model, input shape).
LINEAR_CASES: list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]] = [
    ("nn.Conv2d", lambda: nn.Conv2d(3, 4, 3, padding=1), (3, 7, 6)),
    ("F.conv2d stride dilation", lambda: Fn(lambda s, x: F.conv2d(x, s.w, s.b, stride=2,
                                                                  padding=2, dilation=2),
                                            w=w(4, 3, 3, 3), b=w(4)), (3, 9, 8)),
    ("F.conv2d groups", lambda: Fn(lambda s, x: F.conv2d(x, s.w, padding=1, groups=2),
                                   w=w(4, 2, 3, 3)), (4, 6, 6)),
    ("conv padding='same' even kernel", lambda: nn.Conv2d(2, 3, (4, 2), padding="same"),
     (2, 7, 5)),
    ("conv circular", lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), (2, 6, 6)),
    ("conv reflect", lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (2, 6, 6)),
    ("conv replicate", lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="replicate"),
     (2, 6, 6)),
    ("F.pad reflect + conv", lambda: Fn(lambda s, x: F.conv2d(F.pad(x, (1, 2, 0, 1), "reflect"),
                                                              s.w), w=w(3, 2, 3, 3)), (2, 6, 6)),
    ("F.pad zeros + padded conv", lambda: Fn(lambda s, x: F.conv2d(F.pad(x, (1, 0, 2, 1)), s.w,
                                                                   padding=1),
                                             w=w(3, 2, 3, 3)), (2, 5, 6)),
    ("conv1d", lambda: nn.Conv1d(2, 3, 5, padding=2, stride=2), (2, 11)),
    ("conv3d", lambda: nn.Conv3d(2, 2, 3, padding=1), (2, 4, 5, 4)),
    ("conv_transpose2d", lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1), (3, 4, 5)),
    ("F.conv_transpose1d", lambda: Fn(lambda s, x: F.conv_transpose1d(x, s.w, stride=2),
                                      w=w(2, 3, 3)), (2, 6)),
    ("nn.AvgPool2d", lambda: nn.AvgPool2d(2), (2, 6, 7)),
    ("F.avg_pool2d exclude pad", lambda: Fn(lambda s, x: F.avg_pool2d(x, 3, 1, 1,
                                                                      count_include_pad=False)),
     (2, 5, 5)),
    ("nn.AdaptiveAvgPool2d(2)", lambda: nn.AdaptiveAvgPool2d(2), (2, 6, 4)),
    ("adaptive_avg_pool1d(1)", lambda: Fn(lambda s, x: F.adaptive_avg_pool1d(x, 1)), (3, 7)),
    ("x.mean((2, 3))", lambda: Fn(lambda s, x: x.mean((2, 3))), (3, 4, 5)),
    ("torch.mean keepdim", lambda: Fn(lambda s, x: torch.mean(x, (-1, -2), keepdim=True)),
     (3, 4, 5)),
    ("x.sum((2, 3))", lambda: Fn(lambda s, x: x.sum((2, 3))), (3, 4, 5)),
    ("flatten + nn.Linear", lambda: nn.Sequential(nn.Flatten(), nn.Linear(24, 5)), (2, 3, 4)),
    ("view + F.linear", lambda: Fn(lambda s, x: F.linear(x.view(x.shape[0], -1), s.w, s.b),
                                   w=w(5, 24), b=w(5)), (2, 3, 4)),
    ("reshape + matmul", lambda: Fn(lambda s, x: x.reshape(x.shape[0], -1) @ s.w,
                                    w=w(24, 4)), (2, 3, 4)),
    ("torch.flatten + torch.mm + bias", lambda: Fn(lambda s, x: torch.mm(torch.flatten(x, 1),
                                                                         s.w) + s.b,
                                                   w=w(24, 4), b=w(4)), (2, 3, 4)),
    ("torch.cat + x.chunk", lambda: Fn(lambda s, x: torch.cat(x.chunk(2, dim=1)[::-1], 1)),
     (4, 3, 3)),
    ("torch.split + slicing", lambda: Fn(lambda s, x: torch.split(x, [1, 3], 1)[1][:, 1:]
                                         + x[:, :2]), (4, 3, 3)),
    ("x.narrow", lambda: Fn(lambda s, x: x.narrow(1, 1, 2) * 2), (4, 3, 3)),
    ("x * 2, 2 * x, x / 3", lambda: Fn(lambda s, x: x * 2 + 2 * x - x / 3), (2, 3, 3)),
    ("x - y, -x, 3 - x, x + 1", lambda: Fn(lambda s, x: (x - F.avg_pool2d(x, 1)) - x + (3 - x)
                                           + 1), (2, 3, 3)),
    ("per-channel scale and shift", lambda: Fn(lambda s, x: x * s.a + s.b, a=w(3, 1, 1),
                                               b=w(1, 3, 1, 1)), (3, 4, 4)),
    ("DiracNet a*x + b*conv(x)", lambda: Fn(lambda s, x: s.a * x + s.b * s.conv(x),
                                            a=w(3, 1, 1), b=torch.tensor(0.3),
                                            conv=nn.Conv2d(3, 3, 3, padding=1)), (3, 5, 5)),
    ("BatchNorm2d + Dropout + Identity + clone",
     lambda: Fn(lambda s, x: s.drop(s.id(s.bn(x))).clone().contiguous(),
                bn=nn.BatchNorm2d(3), drop=nn.Dropout(0.5), id=nn.Identity()), (3, 4, 4)),
    ("BatchNorm1d on features", lambda: nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4)), (6,)),
]


@pytest.mark.parametrize("name,build,shape", LINEAR_CASES, ids=[c[0] for c in LINEAR_CASES])
def test_every_supported_op_round_trips(name: str, build: Callable[[], nn.Module],
                                        shape: tuple[int, ...]) -> None:
    """Each op is recognised as linear (no kept op) and its merged form equals the
    original in float64 (``merge_slower`` so that even a single layer is re-emitted)."""
    torch.manual_seed(0)
    model = randomize_bn(build()).double()
    x = sample(2, *shape)
    conversion = convert(model, x, mode="partial", merge_slower=True, measure=False)
    assert conversion.report.boundaries == [], conversion.report.table()
    with torch.no_grad():
        y = conversion.module(x)
    assert y.shape == reference(model, x).shape
    assert rel_err(y, reference(model, x)) <= 1e-11
    segments = conversion.report.segments
    # reflect/replicate padding and exclude-pad pooling differ from one conv at the border
    exact = not any(k in name for k in ("reflect", "replicate", "exclude pad"))
    assert all(s.exact == exact for s in segments if s.macs_after is not None)
    if "transpose" not in name:  # numeric collapse has no strided form of up-sampling
        assert all(s.merged for s in segments) == exact, conversion.report.table()


def test_module_functional_and_method_forms_trace_to_the_same_ops() -> None:
    conv, mean = nn.Conv2d(2, 2, 3).eval(), Fn(lambda s, x: x.mean((2, 3)))
    fn = Fn(lambda s, x: F.conv2d(x, s.w).mean(dim=(-2, -1)), w=w(2, 2, 3, 3))
    x = sample(2, 2, 5, 5, dtype=torch.float32)
    targets = [{str(n.target) for n in trace(m, x).graph.nodes if n.op == "call_function"}
               for m in (nn.Sequential(conv, mean).eval(), fn)]
    assert targets[0] == targets[1] == {"aten.conv2d.default", "aten.mean.dim"}


# ------------------------------------------------------------------ full collapse


class LinearResNet(nn.Module):
    """conv+BN stem, two residual blocks (one strided with a 1x1 shortcut), avg pool."""

    def __init__(self, padding_mode: str = "zeros", c: int = 3, head: bool = True):
        super().__init__()
        conv = lambda i, o, k=3, s=1: nn.Conv2d(i, o, k, s, k // 2, bias=False,  # noqa: E731
                                                padding_mode=padding_mode)
        self.stem = nn.Sequential(conv(2, c), nn.BatchNorm2d(c))
        self.b1 = nn.Sequential(conv(c, c), nn.BatchNorm2d(c), conv(c, c), nn.BatchNorm2d(c))
        self.b2 = nn.Sequential(conv(c, 2 * c, 3, 2), nn.BatchNorm2d(2 * c), conv(2 * c, 2 * c))
        self.short = nn.Sequential(conv(c, 2 * c, 1, 2), nn.BatchNorm2d(2 * c))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * c, 4)) \
            if head else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = h + 0.5 * self.b1(h)
        return self.head(self.b2(h) + self.short(h))


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_affine_collapse_is_exact_for_every_padding_mode(padding_mode: str) -> None:
    model = randomize_bn(LinearResNet(padding_mode)).double()
    x = sample(3, 2, 8, 8)
    conversion = convert(model, x, mode="affine", measure=False)
    assert count_layers(conversion.module) == {"conv": 0, "batch_norm": 0, "linear": 1}
    with torch.no_grad():
        assert rel_err(conversion.module(x), reference(model, x)) <= 1e-11
        assert rel_err(conversion.module(x[:1]), reference(model, x[:1])) <= 1e-11  # any batch


def test_kernel_collapse_of_zero_padding_is_border_corrected_unless_inexact_allowed() -> None:
    model = randomize_bn(LinearResNet("zeros", head=False)).double()
    x = sample(2, 2, 16, 16)
    exact = convert(model, x, mode="kernel", measure=False)   # kernel inside, layers on strips
    assert exact.exact and exact.region is None and exact.report.segments[0].border
    with torch.no_grad():
        assert rel_err(exact.module(x), reference(model, x)) <= 1e-11
    conversion = convert(model, x, mode="kernel", allow_inexact=True, measure=False)
    assert count_layers(conversion.module) == {"conv": 1, "batch_norm": 0, "linear": 0}
    region = conversion.region
    assert region is not None and region.shape == (8, 8) and 0 < region.sum() < region.size
    with torch.no_grad():
        diff = (conversion.module(x) - reference(model, x)).abs().amax((0, 1))
    assert float(diff[torch.as_tensor(region)].max()) <= 1e-11
    assert float(diff[~torch.as_tensor(region)].max()) > 1e-6  # the region is tight
    assert not conversion.exact and "of 64 output positions" in conversion.region_text


def test_kernel_collapse_of_a_circular_cnn_is_one_exact_conv() -> None:
    model = randomize_bn(LinearResNet("circular", head=False)).double()
    x = sample(2, 2, 8, 8)
    conversion = convert(model, x, mode="kernel", measure=False)
    assert count_layers(conversion.module) == {"conv": 1, "batch_norm": 0, "linear": 0}
    assert conversion.region is None and conversion.exact
    with torch.no_grad():
        assert rel_err(conversion.module(x), reference(model, x)) <= 1e-11


def test_auto_picks_a_form_and_says_why() -> None:
    model = randomize_bn(LinearResNet("zeros")).float()
    x = sample(2, 2, 8, 8, dtype=torch.float32)
    conversion = convert(model, x, mode="auto", measure=False)
    report = conversion.report
    assert report.requested == "auto" and report.mode == "affine"
    assert "cheapest by the cost model" in report.reason and "kernel" in report.reason
    with torch.no_grad():
        y = conversion.module(x)
    assert y.dtype == torch.float32
    assert conversion.module.get_submodule("affine").weight.dtype == torch.float32
    assert rel_err(y, reference(model, x)) <= 1e-5


# -------------------------------------------------------------- partial collapse


class Sandwich(nn.Module):
    """conv+BN+conv+BN, an unsupported op, conv+BN+conv+BN."""

    def __init__(self, middle: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        block = lambda: nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3),  # noqa: E731
                                      nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular"),
                                      nn.BatchNorm2d(3))
        self.a, self.b, self.middle = block(), block(), middle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.middle(self.a(x)))


@pytest.mark.parametrize("middle,op", [(torch.relu, "relu"),
                                       (lambda t: torch.sort(t, dim=-1)[0], "sort")])
def test_unsupported_op_in_the_middle_collapses_both_sides(middle: Callable, op: str) -> None:
    model = randomize_bn(Sandwich(middle)).double()
    x = sample(2, 3, 6, 6)
    conversion = convert(model, x, mode="auto")
    report = conversion.report
    assert report.mode == "partial"
    assert [b.op for b in report.boundaries if not b.op.startswith("getitem")] == \
        [f"aten.{op}.default"]
    assert count_layers(model) == {"conv": 4, "batch_norm": 4, "linear": 0}
    assert count_layers(conversion.module) == {"conv": 2, "batch_norm": 0, "linear": 0}
    assert [s.merged and s.exact for s in report.segments] == [True, True]
    assert all(s.seconds_before is not None and s.seconds_after is not None
               for s in report.segments)
    with torch.no_grad():
        assert rel_err(conversion.module(x), reference(model, x)) <= 1e-11


class ReLUBlock(nn.Module):
    """``relu(BN(conv(relu(BN(conv x)))) + x)``: the add reads two different sources."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                               nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, bias=False),
                               nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.f(x) + x)


def test_multi_source_add_is_kept_and_splits_segments() -> None:
    model = randomize_bn(nn.Sequential(nn.Conv2d(2, 4, 1), ReLUBlock(), ReLUBlock())).double()
    x = sample(2, 2, 6, 6)
    conversion = convert(model, x, mode="partial", measure=False)
    report = conversion.report
    kept_adds = [b for b in report.boundaries if b.op == "aten.add.Tensor"]
    assert len(kept_adds) == 2 and all("different sources" in b.reason for b in kept_adds)
    assert any("add/cat" in n for n in report.notes)
    assert count_layers(conversion.module) == {"conv": 5, "batch_norm": 0, "linear": 0}
    with torch.no_grad():
        assert rel_err(conversion.module(x), reference(model, x)) <= 1e-11


class DBBBranch(nn.Module):
    """``conv3x3(BN(conv1x1 x))`` with zero padding, plus ``BN(conv3x3 x)``: the first
    BN's bias reaches the border only through part of the 3x3 taps."""

    def __init__(self, c: int = 3):
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c),
                                 nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.dense = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.seq(x) + self.dense(x))


def test_zero_padded_bias_border_merges_exactly_with_a_bias_map() -> None:
    model = randomize_bn(DBBBranch()).double()
    x = sample(2, 3, 7, 6)
    conversion = convert(model, x, mode="partial", measure=False)
    (segment,) = conversion.report.segments
    assert segment.merged and segment.exact and "bias map" in segment.region
    assert "bias map" in segment.merged_into
    assert count_layers(conversion.module) == {"conv": 1, "batch_norm": 0, "linear": 0}
    with torch.no_grad():
        assert rel_err(conversion.module(x), reference(model, x)) <= 1e-11


def test_depthwise_branches_merge_into_a_depthwise_conv() -> None:
    c = 4
    model = randomize_bn(Fn(lambda s, x: torch.relu(s.bn1(s.dw3(x)) + s.bn2(s.dw1(x)) + s.bn3(x)),
                            dw3=nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
                            dw1=nn.Conv2d(c, c, 1, groups=c, bias=False),
                            bn1=nn.BatchNorm2d(c), bn2=nn.BatchNorm2d(c),
                            bn3=nn.BatchNorm2d(c))).double()
    x = sample(2, c, 6, 6)
    conversion = convert(model, x, mode="partial", measure=False)
    (segment,) = conversion.report.segments
    assert segment.merged and "depthwise" in segment.merged_into
    (conv,) = [m for m in conversion.module.modules() if isinstance(m, nn.Conv2d)]
    assert conv.groups == c
    with torch.no_grad():
        assert rel_err(conversion.module(x), reference(model, x)) <= 1e-11


def test_a_long_wide_chain_stays_unless_merge_slower() -> None:
    c = 8
    chain = nn.Sequential(*[nn.Conv2d(c, c, 3, padding=1, padding_mode="circular")
                            for _ in range(4)])
    model = Fn(lambda s, x: torch.relu(s.chain(x)), chain=chain).double().eval()
    x = sample(2, c, 12, 12)
    kept = convert(model, x, mode="partial", measure=False)
    (segment,) = kept.report.segments
    assert not segment.merged and "merge_slower" in segment.reason
    assert count_layers(kept.module)["conv"] == 4
    merged = convert(model, x, mode="partial", merge_slower=True, measure=False)
    (segment,) = merged.report.segments
    assert segment.merged and segment.macs_after > segment.macs_before
    assert count_layers(merged.module)["conv"] == 1
    with torch.no_grad():
        assert rel_err(merged.module(x), reference(model, x)) <= 1e-11


def test_squeeze_excite_gate_is_a_boundary_and_the_block_still_merges() -> None:
    class SE(nn.Module):
        def __init__(self, c: int = 4):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
            self.fc1, self.fc2 = nn.Linear(c, 2), nn.Linear(2, c)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.bn(self.conv(x))
            g = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3))))))
            return y * g[:, :, None, None]
    model = randomize_bn(SE()).double()
    x = sample(2, 4, 5, 5)
    conversion = convert(model, x, mode="partial", measure=False)
    ops = {b.op for b in conversion.report.boundaries}
    assert {"aten.sigmoid.default", "aten.mul.Tensor", "aten.relu.default"} <= ops
    assert count_layers(conversion.module)["batch_norm"] == 0
    with torch.no_grad():
        assert rel_err(conversion.module(x), reference(model, x)) <= 1e-11


def test_in_place_ops_are_read_as_their_functional_meaning() -> None:
    """``relu_`` on a value nothing else reads is rewritten out of place; one whose input is
    read again afterwards (``y * 2`` sees the ReLU'd ``y``) forces functionalization."""
    class InPlace(nn.Module):
        def __init__(self, reread: bool):
            super().__init__()
            self.conv, self.bn, self.reread = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2), reread

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.bn(self.conv(x))
            z = torch.relu_(y)
            return y * 2 + z if self.reread else z * 2
    x = sample(2, 2, 4, 4)
    for reread in (False, True):
        model = randomize_bn(InPlace(reread)).double()
        conversion = convert(model, x, measure=False)
        with torch.no_grad():
            assert rel_err(conversion.module(x), reference(model, x)) <= 1e-12
        assert count_layers(conversion.module)["batch_norm"] == 0


def test_dilated_conv_and_batch_norm_merge_into_a_dilated_conv() -> None:
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 3, 3, padding=2, dilation=2),
                                       nn.BatchNorm2d(3), nn.ReLU())).double()
    x = sample(2, 3, 7, 7)
    conversion = convert(model, x, progress=True, measure=False)
    (conv,) = [m for m in conversion.module.modules() if isinstance(m, nn.Conv2d)]
    assert conv.dilation == (2, 2) and conv.kernel_size == (3, 3)
    with torch.no_grad():
        assert rel_err(conversion.module(x), reference(model, x)) <= 1e-12


def test_a_collapse_estimated_too_slow_is_not_attempted(monkeypatch) -> None:
    from laurentnet.bridge import convert_merge
    monkeypatch.setattr(convert_merge, "COLLAPSE_SECONDS_LIMIT", 0.0)
    model = randomize_bn(DBBBranch()).double()
    x = sample(2, 3, 6, 6)
    conversion = convert(model, x, measure=False)
    (segment,) = conversion.report.segments
    assert not segment.merged and "collapsing would take about" in segment.reason
    with torch.no_grad():
        assert rel_err(conversion.module(x), reference(model, x)) <= 1e-12


# ----------------------------------------------------------- export and purity


def test_saved_pt2_loads_with_plain_torch_and_gives_the_same_output(tmp_path) -> None:
    model = randomize_bn(Sandwich(torch.relu)).float()
    x = sample(1, 3, 6, 6, dtype=torch.float32)
    conversion = convert(model, x, measure=False)
    path = conversion.save(tmp_path / "model.pt2")
    assert path.exists() and not [p for p in tmp_path.iterdir() if p.name != "model.pt2"]
    loaded = torch.export.load(str(path)).module()
    batch = sample(5, 3, 6, 6, seed=3, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(loaded(batch), conversion.module(batch))
    x_file, out_file = tmp_path / "x.pt", tmp_path / "y.pt"
    torch.save(batch, x_file)
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] == 'laurentnet':
                    raise ImportError('laurentnet must not be imported')
        sys.meta_path.insert(0, Block())
        import torch
        module = torch.export.load({str(path)!r}).module()
        torch.save(module(torch.load({str(x_file)!r})), {str(out_file)!r})
        assert not any(m.startswith('laurentnet') for m in sys.modules)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert torch.equal(torch.load(out_file), conversion.module(batch))


def test_converted_module_holds_no_laurentnet_objects() -> None:
    model = randomize_bn(DBBBranch()).float()
    conversion = convert(model, sample(2, 3, 6, 6, dtype=torch.float32), measure=False)
    module = conversion.module
    for sub in module.modules():
        assert not type(sub).__module__.startswith("laurentnet"), type(sub)
        for value in vars(sub).values():
            assert not type(value).__module__.startswith("laurentnet"), type(value)
    for node in module.graph.nodes:
        assert "laurentnet" not in str(getattr(node.target, "__module__", "")), node
    assert b"laurentnet" not in pickle.dumps(module)


# ------------------------------------------------------------------- front ends


def test_fx_fallback_is_used_and_named_when_export_fails(monkeypatch) -> None:
    model = randomize_bn(Sandwich(torch.relu)).double()
    real_export = torch.export.export

    def export(module, *args, **kwargs):
        if isinstance(module, Sandwich):
            raise RuntimeError("export refuses this model")
        return real_export(module, *args, **kwargs)
    monkeypatch.setattr(torch.export, "export", export)
    x = sample(2, 3, 6, 6)
    conversion = convert(model, x, measure=False)
    assert conversion.report.front_end.startswith("torch.fx.symbolic_trace")
    assert any("export refuses this model" in n for n in conversion.report.notes)
    with torch.no_grad():
        assert rel_err(conversion.module(x), reference(model, x)) <= 1e-11


def test_a_model_that_fixes_its_batch_is_traced_static_and_says_so() -> None:
    model = Fn(lambda s, x: s.lin(x.view(3, -1)), lin=nn.Linear(8, 2)).double()
    x = sample(3, 2, 2, 2)
    traced = trace_model(model, x)
    assert not traced.dynamic_batch and "batch fixed at 3" in traced.front_end
    conversion = convert(model, x, measure=False)
    with torch.no_grad():
        assert rel_err(conversion.module(x), reference(model, x)) <= 1e-11


def test_an_exported_program_converts_too() -> None:
    model = randomize_bn(Sandwich(torch.relu)).double()
    x = sample(2, 3, 6, 6)
    program = torch.export.export(model, (x,))
    conversion = convert(program, x, measure=False)
    assert "given" in conversion.report.front_end
    with torch.no_grad():
        assert rel_err(conversion.module(x), reference(model, x)) <= 1e-11


# ------------------------------------------------------------------ the report


def test_report_is_json_ready_and_readable() -> None:
    model = randomize_bn(Sandwich(torch.relu)).float()
    conversion = convert(model, sample(2, 3, 6, 6, dtype=torch.float32))
    data = json.loads(json.dumps(conversion.report.as_dict()))
    assert data["mode"] == "partial" and len(data["segments"]) == 2
    first = data["segments"][0]
    assert {"name", "nodes", "merged_into", "exact", "region", "merged", "reason",
            "macs_before", "macs_after", "seconds_before", "seconds_after"} <= set(first)
    assert first["macs_after"] < first["macs_before"] and first["merged_into"].startswith("Conv2d")
    assert data["boundaries"][0]["op"] == "aten.relu.default"
    table = conversion.report.table()
    assert "segment1" in table and "aten.relu.default" in table and "Conv2d 3->3" in table


# ----------------------------------------------------------------- bad inputs


def test_bad_inputs_give_clear_errors(tmp_path) -> None:
    model = randomize_bn(Sandwich(torch.relu)).float()
    x = sample(2, 3, 6, 6, dtype=torch.float32)
    with pytest.raises(ConversionError, match="example_input must be a torch.Tensor"):
        convert(model, np.zeros((2, 3, 6, 6)))
    with pytest.raises(ConversionError, match="dtype torch.int64"):
        convert(model, torch.zeros(2, 3, 6, 6, dtype=torch.long))
    with pytest.raises(ConversionError, match="mode must be one of"):
        convert(model, x, mode="fast")
    training = copy.deepcopy(model).train()
    with pytest.raises(ConversionError, match=r"training mode.*model\.eval\(\)"):
        convert(training, x)
    assert training.training  # refused, not silently switched
    with pytest.raises(ConversionError, match="mode='kernel' needs a linear model: node relu"):
        convert(model, x, mode="kernel")
    with pytest.raises(ConversionError, match="mode='affine' needs a linear model"):
        convert(model, x, mode="affine")
    conversion = convert(model, x, measure=False)
    with pytest.raises(ValueError, match=r"output format is \.pt2"):
        conversion.save(tmp_path / "model.pt")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ConversionError, match="cannot trace the model"):
        convert(Fn(lambda s, t: t if float(t.sum()) > 0 else -t), x)
