"""``laurentnet decompose`` end to end on .pt2 files, and its bad inputs: exit 2 with one
line naming the problem, exit 1 when the budget cannot be met, no output file either way."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from laurentnet.bridge import load
from laurentnet.bridge.cli import main
from laurentnet.bridge.models import build_resnet, randomize_batchnorm_
from basis_fixtures import one_torch_thread  # noqa: F401,E402  (autouse)


def _save(model: nn.Module, path, shape) -> str:
    example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    program = torch.export.export(model.eval(), (example,),
                                  dynamic_shapes=({0: torch.export.Dim.AUTO},))
    torch.export.save(program, str(path))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decompose")
    torch.manual_seed(0)
    resnet = build_resnet("resnet_tiny")
    randomize_batchnorm_(resnet, torch.Generator().manual_seed(1))
    g = np.random.default_rng(0)
    np.save(folder / "x.npy", g.standard_normal((48, 1, 8, 8)).astype(np.float32))
    np.save(folder / "y.npy", g.integers(0, 10, 48))
    return {"resnet": _save(resnet, folder / "resnet.pt2", (1, 8, 8)),
            "noconv": _save(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), folder / "noconv.pt2",
                            (1, 8, 8)),
            "x": str(folder / "x.npy"), "y": str(folder / "y.npy"), "folder": folder}


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:       # argparse's own usage errors exit 2 directly
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _truncated(weight: torch.Tensor, rank: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(weight.detach().double().reshape(weight.shape[0], -1),
                                full_matrices=False)
    return ((u[:, :rank] * s[:rank]) @ vh[:rank]).reshape(weight.shape).to(weight)


def test_decompose_writes_the_low_rank_model(files, capsys, tmp_path):
    out = tmp_path / "basis.pt2"
    code, stdout, _ = _run(["decompose", files["resnet"], "-o", str(out), "--rank", "2",
                            "--json"], capsys)
    assert code == 0
    report = json.loads(stdout)
    assert report["written"] == str(out) and report["verification"]["ok"]
    layers = report["decomposition"]["layers"]
    assert len(layers) == 6 and all(layer["rank"] == 2 for layer in layers)
    assert report["decomposition"]["multiply_adds_after"] < report["decomposition"]["multiply_adds_before"]
    # independent check: the original with every conv weight truncated by torch's own SVD
    original, written = load(files["resnet"]).module, load(out).module
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for layer in layers:
            conv = original.get_submodule(layer["layer"])
            conv.weight.copy_(_truncated(conv.weight, 2))
        assert torch.allclose(written(x), original(x), rtol=1e-4, atol=1e-5)


def test_energy_one_keeps_the_model(files, capsys, tmp_path):
    out = tmp_path / "full.pt2"
    code, _, _ = _run(["decompose", files["resnet"], "-o", str(out), "--energy", "1",
                       "--method", "qr"], capsys)
    assert code == 0
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(load(out).module(x), load(files["resnet"]).module(x), atol=1e-5)


def test_budget_with_labels_selects_layers(files, capsys, tmp_path):
    out = tmp_path / "selected.pt2"
    code, stdout, _ = _run(["decompose", files["resnet"], "-o", str(out), "--rank", "2",
                            "--budget", "accuracy=0.05", "--data", files["x"], "--labels",
                            files["y"], "--json"], capsys)
    assert code == 0 and out.exists()
    report = json.loads(stdout)
    assert report["selection"]["met"] and report["sensitivity"]["metric"] == "cross_entropy"
    quality = report["quality"]
    assert quality["accuracy_before"] - quality["accuracy_after"] <= 0.05 + 1e-9


def test_budget_that_cannot_be_met_exits_1_and_writes_nothing(files, capsys, tmp_path):
    out = tmp_path / "never.pt2"
    code, stdout, _ = _run(["decompose", files["resnet"], "-o", str(out), "--rank", "2",
                            "--budget", "macs=0.05"], capsys)
    assert code == 1 and not out.exists()
    assert "not written: the budget cannot be met" in stdout


@pytest.mark.parametrize("extra,message", [
    (["--rank", "0"], "--rank must be a positive integer"),
    (["--rank", "5"], "--rank 5 is above what layer stem.0 allows"),
    (["--energy", "1.5"], "--energy must be in (0, 1]"),
    (["--rank", "2", "--budget", "fast"], "--budget"),
    (["--rank", "2", "--budget", "accuracy=0.1"], "needs --data and --labels"),
    (["--rank", "2", "--labels", "y.npy"], "--labels needs --data"),
    (["--rank", "2", "--layers", "nope"], "no convolution layer named 'nope'"),
    (["--rank", "1", "--energy", "0.5"], "not allowed with argument"),
    ([], "one of the arguments --rank --energy is required"),
])
def test_bad_input_exits_2_with_one_line(files, capsys, tmp_path, extra, message):
    out = tmp_path / "bad.pt2"
    code, _, err = _run(["decompose", files["resnet"], "-o", str(out), *extra], capsys)
    assert code == 2 and not out.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_bad_files_exit_2(files, capsys, tmp_path):
    cases = [([files["noconv"], "-o", str(tmp_path / "a.pt2")], "no convolution layer to decompose"),
             ([str(tmp_path / "missing.pt2"), "-o", str(tmp_path / "b.pt2")], "no such file"),
             ([files["resnet"], "-o", files["resnet"]], "would overwrite the input"),
             ([files["resnet"], "-o", str(tmp_path / "c.onnx")], "output format is .pt2")]
    for argv, message in cases:
        code, _, err = _run(["decompose", *argv, "--rank", "2"], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.glob("*.pt2"))


def test_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["decompose", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "--budget" in text and "--energy" in text and "--json" in text
