"""Exact borders at kernel cost: ``convert(mode="kernel")`` of a zero/reflect/replicate
padded linear CNN is the collapsed kernel on the interior plus the original layers on
border strips, and equals the model at EVERY output position.

The reference is always the model itself — torch's own ``nn.Conv{n}d`` (with its
``padding_mode``), ``F.pad``, ``nn.AvgPool{n}d`` — run in float64 on the whole input.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from laurentnet.algebra import Network
from laurentnet.algebra.errors import InvalidInputError
from laurentnet.bridge import load, verify
from laurentnet.bridge.cli import main
from laurentnet.bridge.convert import ConversionError, convert
from laurentnet.bridge.convert_merge import merge_exits
from laurentnet.bridge.convert_plan import analyse
from laurentnet.bridge.segments import build_network
from laurentnet.numeric import border_plan, interior_box, strip_box

torch.set_num_threads(min(2, torch.get_num_threads()))

CONV = {1: nn.Conv1d, 2: nn.Conv2d}
POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d}


class Pad(nn.Module):
    """``F.pad`` with explicit (possibly asymmetric) amounts and a mode."""

    def __init__(self, amounts: list[int], mode: str):
        super().__init__()
        self.amounts, self.mode = amounts, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.amounts, mode=self.mode)


class Residual(nn.Module):
    """``x + 0.5 * body(x)``: a skip around a size-keeping body."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.5 * self.body(x)


def reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.double()(x.double())


def sample(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@st.composite
def linear_cnns(draw, modes=("zeros", "reflect", "replicate")):
    """(model, input) of a linear CNN: 1-D or 2-D, 1-4 layers of the drawn padding mode
    (symmetric conv padding or an explicit asymmetric ``F.pad``), strides and dilations,
    residual skips and average pools."""
    ndim = draw(st.sampled_from([1, 2]))
    mode = draw(st.sampled_from(modes))
    c = draw(st.integers(1, 3))
    size = draw(st.integers(9, 15 if ndim == 2 else 24))
    layers: list[nn.Module] = []
    strides = 0
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "conv", "pad", "skip", "pool"]))
        k, d = draw(st.integers(1, 3)), draw(st.sampled_from([1, 1, 2]))
        s = draw(st.sampled_from([1, 1, 2])) if strides < 2 else 1
        bias = draw(st.booleans())
        if kind == "conv":
            p = draw(st.integers(0, min(2, d * (k - 1) // 2 + 1)))
            layers.append(CONV[ndim](c, c, k, stride=s, padding=p, dilation=d, bias=bias,
                                     padding_mode=mode))
        elif kind == "pad":
            amounts = [draw(st.integers(0, 2)) for _ in range(2 * ndim)]
            layers += [Pad(amounts, "constant" if mode == "zeros" else mode),
                       CONV[ndim](c, c, k, stride=s, dilation=d, bias=bias)]
        elif kind == "skip":
            k = draw(st.sampled_from([1, 3]))
            s = 1
            layers.append(Residual(CONV[ndim](c, c, k, padding=d * (k - 1) // 2, dilation=d,
                                              bias=bias, padding_mode=mode)))
        else:
            k = draw(st.integers(2, 3))
            s = draw(st.integers(1, 2)) if strides < 2 else 1
            layers.append(POOL[ndim](k, s, padding=draw(st.integers(0, k // 2)),
                                     count_include_pad=draw(st.booleans())))
        strides += s > 1
    model = nn.Sequential(*layers).double().eval()
    g = torch.Generator().manual_seed(draw(st.integers(0, 99)))
    with torch.no_grad():
        for prm in model.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g, dtype=torch.float64))
    x = sample(2, c, *([size] * ndim), seed=draw(st.integers(0, 99)))
    try:
        reference(model, x)
    except RuntimeError:        # a layer torch refuses for this size (reflect pad >= size)
        model = nn.Sequential(CONV[ndim](c, c, 3, padding=1, padding_mode=mode)).double()
    return model, x


def check_exact(model: nn.Module, x: torch.Tensor, conversion=None) -> None:
    conversion = conversion or convert(model, x, mode="kernel", measure=False)
    assert conversion.exact and conversion.region is None
    with torch.no_grad():
        y = conversion.module(x)
    ref = reference(model, x)
    assert y.shape == ref.shape
    scale = max(1.0, float(ref.abs().max()))
    assert float((y - ref).abs().max()) <= 1e-11 * scale


def check_strips(model: nn.Module, x: torch.Tensor) -> None:
    """Every strip of the plan (strips forced even where one whole run is cheaper), run
    through the MODEL itself, gives the whole image's output on its piece."""
    analysis = analyse(model, x)
    if len(analysis.part.segments) != 1:
        return
    segment = analysis.part.segments[0]
    (merged,) = merge_exits(segment, analysis.traced, analysis.ops)
    if merged.exact or merged.kind != "conv":
        return
    sn = build_network(segment, analysis.traced, analysis.ops)
    sn.network.set_output(sn.exit_value(merged.exit))
    plan = border_plan(sn.network, sn.input_shape, merged.region, 1, whole_if_cheaper=False)
    full = reference(model, x)
    for piece in plan.pieces:
        y = reference(model, x[(..., *(slice(a, b) for a, b in piece.in_box))])
        got = y[(..., *(slice(o, o + hi - lo) for o, (lo, hi) in zip(piece.offset,
                                                                     piece.out_box)))]
        want = full[(..., *(slice(lo, hi) for lo, hi in piece.out_box))]
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-10, rtol=1e-10)


@settings(max_examples=6, deadline=None)
@given(linear_cnns())
def test_border_corrected_kernel_equals_the_model_at_every_position(case) -> None:
    check_exact(*case)
    check_strips(*case)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("ndim", [1, 2])
def test_every_padding_mode_strided_chain_with_skip(mode: str, ndim: int) -> None:
    """A strided chain with a residual skip and a strided average pool; circular padding
    (strides dividing the sizes) is periodic, hence one exact kernel with no border."""
    conv = lambda s=1: CONV[ndim](2, 2, 3, stride=s, padding=1, padding_mode=mode)  # noqa: E731
    model = nn.Sequential(conv(), Residual(conv()), conv(2), POOL[ndim](2), conv()).double().eval()
    n = 64 if ndim == 2 else 32        # large enough that strips beat one whole run
    x = sample(2, 2, *([n] * ndim))
    conversion = convert(model, x, mode="kernel", measure=False)
    border = conversion.report.segments[0].border
    assert (border is None) == (mode == "circular")
    if border is not None:
        assert border["strips"] == 2 * ndim and border["border_positions"] > 0
        assert border["interior_positions"] > 0
        assert border["interior_positions"] + border["border_positions"] == (n // 4) ** ndim
    check_exact(model, x, conversion)


def test_border_strips_alone_equal_the_layers_on_the_whole_image() -> None:
    """Numeric side: every piece's strip, run through the layers (torch, float64), gives
    the whole image's values on the piece, including over-padded asymmetric layers
    (``t_max < 0``) and strides that do not divide the size."""
    rng = np.random.default_rng(0)
    net = Network(ndim=2, in_channels=2)
    h = net.conv(net.input, rng.normal(size=(2, 2, 3, 3)), None, padding=((3, 0), (1, 1)))
    h = net.conv(h, rng.normal(size=(2, 2, 2, 3)), rng.normal(size=2), stride=2,
                 padding=((1, 0), (1, 1)), padding_mode="reflect")
    h = net.add(h, net.conv(h, rng.normal(size=(2, 2, 3, 3)), None, padding=1,
                            padding_mode="replicate"))
    net.set_output(net.conv(h, rng.normal(size=(2, 2, 1, 3)), None, padding=((0, 0), (2, 0))))
    shape = (2, 19, 17)
    full_model = lambda x: _torch_net(net, x)  # noqa: E731
    x = sample(1, *shape)
    full = full_model(x)
    region = np.zeros(full.shape[2:], bool)
    region[3:-3, 2:-2] = True
    plan = border_plan(net, shape, region, kernel_taps=1, whole_if_cheaper=False)
    assert plan.interior == ((3, full.shape[2] - 3), (2, full.shape[3] - 2))
    covered = np.zeros(full.shape[2:], int)
    covered[3:-3, 2:-2] += 1
    for piece in plan.pieces:
        (a0, b0), (a1, b1) = piece.in_box
        y = full_model(x[:, :, a0:b0, a1:b1])
        (lo0, hi0), (lo1, hi1) = piece.out_box
        o0, o1 = piece.offset
        got = y[:, :, o0:o0 + hi0 - lo0, o1:o1 + hi1 - lo1]
        assert torch.allclose(got, full[:, :, lo0:hi0, lo1:hi1], atol=1e-12, rtol=0)
        assert piece.in_box != ((0, 19), (0, 17))     # a real strip, not the whole input
        covered[lo0:hi0, lo1:hi1] += 1
    assert (covered == 1).all()                        # every position exactly once


def _torch_net(net: Network, x: torch.Tensor) -> torch.Tensor:
    """The test network above, layer by layer with torch (independent of the package)."""
    from laurentnet.algebra.network import Add, Conv
    values = {"input": x}
    for name in net.order():
        node = net.nodes[name]
        if isinstance(node, Conv):
            pads = [v for pair in reversed(node.padding) for v in pair]
            mode = "constant" if node.mode == "zeros" else node.mode
            w = torch.tensor(np.asarray(node.weight, dtype=np.float64))
            b = None if node.bias is None else torch.tensor(np.asarray(node.bias, np.float64))
            values[name] = F.conv2d(F.pad(values[node.input], pads, mode=mode), w, b,
                                    stride=node.stride)
        elif isinstance(node, Add):
            values[name] = sum(values[t] for t in node.terms)
    return values[net.output_name]


def test_interior_box_is_inside_the_region() -> None:
    region = np.zeros((9, 11), bool)
    region[2:7, 1:9] = True
    region[2, 1] = False                       # a notch: the box must avoid it
    lo_hi = interior_box(region)
    box = region[tuple(slice(lo, hi) for lo, hi in lo_hi)]
    assert box.size > 0 and box.all()
    assert interior_box(np.zeros((4, 4), bool)) == ((0, 0), (0, 0))


def test_strip_widths_follow_the_receptive_field() -> None:
    """Four 3x3 zero-padded layers: the top strip of a band of r rows needs r + 4 input
    rows (one per layer of context), independently of the image size."""
    net = Network(ndim=2, in_channels=1)
    h = net.input
    for _ in range(4):
        h = net.conv(h, np.ones((1, 1, 3, 3)), None, padding=1)
    net.set_output(h)
    for n in (20, 40):
        assert strip_box(net, (1, n, n), ((0, 3), (0, n))) == ((0, 7), (0, n))
        assert strip_box(net, (1, n, n), ((n - 3, n), (0, n))) == ((n - 7, n), (0, n))


def test_exported_program_loads_safely_and_verifies_everywhere(tmp_path: Path) -> None:
    conv = lambda s=1: nn.Conv2d(3, 3, 3, stride=s, padding=1, bias=True)  # noqa: E731
    model = nn.Sequential(conv(), Residual(conv()), conv(2), conv()).eval()
    x = sample(2, 3, 20, 20).float()
    conversion = convert(model, x, mode="kernel", measure=False)
    modules = {type(m).__module__.split(".")[0] for m in conversion.module.modules()}
    assert modules == {"torch"}                       # plain torch: no laurentnet object
    path = conversion.save(tmp_path / "fast.pt2")
    loaded = load(path)                               # the safe loader: nothing unpickled
    check = verify(model, loaded.module, x)
    assert check.ok and check.where == "every output", check.table()
    with torch.no_grad():
        assert torch.allclose(loaded.module(x).double(), reference(model, x), atol=1e-4)


def test_cost_grows_like_the_image_not_its_square() -> None:
    """The border's multiply-adds grow like the side (perimeter x depth): doubling the
    side doubles them (up to the corners), while the affine map would grow 16-fold."""
    model = nn.Sequential(*[nn.Conv2d(4, 4, 3, padding=1) for _ in range(3)]).eval()
    costs = {}
    for n in (32, 64):
        report = convert(model, sample(1, 4, n, n).float(), mode="kernel", measure=False).report
        costs[n] = report.segments[0].border
        taps = 4 * 4 * 7 * 7                                   # the collapsed 7x7 kernel
        assert costs[n]["interior_macs"] == taps * costs[n]["interior_positions"]
        assert costs[n]["interior_positions"] + costs[n]["border_positions"] == n * n
        layers = 3 * n * n * 4 * 4 * 9
        assert costs[n]["border_macs"] < layers
    assert 1.8 <= costs[64]["border_macs"] / costs[32]["border_macs"] <= 2.2
    assert costs[64]["border_positions"] / costs[32]["border_positions"] <= 2.2


def test_layers_without_strips_are_refused_with_the_region() -> None:
    """Mixed circular and zero padding: a strip cannot read the opposite edge, so the
    kernel is refused (naming why); allow_inexact still gives the bare kernel."""
    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"),
                          nn.Conv2d(2, 2, 3, padding=1)).double().eval()
    x = sample(2, 2, 10, 10)
    with pytest.raises(ConversionError, match="circular padding reads the opposite edge"):
        convert(model, x, mode="kernel", measure=False)
    bare = convert(model, x, mode="kernel", allow_inexact=True, measure=False)
    assert not bare.exact and bare.region is not None
    with pytest.raises(InvalidInputError, match="local layers"):
        net = Network(ndim=1, in_channels=1)
        net.set_output(net.global_avg_pool(net.input))
        strip_box(net, (1, 8), ((0, 1),))


def test_cli_collapse_kernel_is_exact_and_reports_the_split(tmp_path: Path, capsys) -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"),
                          nn.Conv2d(3, 2, 3, stride=2, padding=1)).eval()
    x = sample(2, 2, 18, 18).float()
    source = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=(
        {0: torch.export.Dim.AUTO},)), str(source))
    out = tmp_path / "fast.pt2"
    code = main(["collapse", str(source), "-o", str(out), "--mode", "kernel", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and out.exists()
    assert payload["verification"]["ok"] and payload["verification"]["where"] == "every output"
    border = payload["report"]["segments"][0]["border"]
    assert border["strips"] == 4 and border["interior_positions"] > 0
    assert border["interior_positions"] + border["border_positions"] == 9 * 9
    assert math.isfinite(payload["verification"]["max_rel_error"])
    assert main(["verify", str(source), str(out), "--json"]) == 0      # the written file
    check = json.loads(capsys.readouterr().out)
    assert check["ok"] and check["where"] == "every output"


def test_border_corrected_module_pickles_without_laurentnet_classes():
    """The emitted module is a plain-torch graph: it pickles, and the bytes name no
    laurentnet class."""
    import pickle
    import torch.nn as nn
    from laurentnet.bridge import convert
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 2, 3, padding=1,
                                                                   padding_mode="reflect")).double().eval()
    x = torch.randn(1, 2, 40, 40, dtype=torch.float64)   # large enough for strips
    converted = convert(model, x, mode="kernel").module
    assert "BorderCorrectedConv" in [type(m).__name__ for m in converted.children()]
    data = pickle.dumps(converted)
    assert b"laurentnet" not in data
    with torch.no_grad():
        torch.testing.assert_close(pickle.loads(data)(x), model(x), rtol=1e-10, atol=1e-10)


def test_border_corrected_module_refuses_another_input_size():
    """Its crops are fixed to the converted size: a larger input must be refused, not
    cropped to the converted window."""
    import torch.nn as nn
    from laurentnet.bridge import convert
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"),
                          nn.Conv2d(2, 2, 3, padding=1)).double().eval()
    converted = convert(model, torch.randn(1, 2, 40, 48, dtype=torch.float64), mode="kernel").module
    with torch.no_grad(), pytest.raises(AssertionError, match=r"\(batch, 2, 40, 48\)"):
        converted(torch.randn(1, 2, 50, 60, dtype=torch.float64))
