"""``laurentnet collapse / verify / inspect`` end to end on .pt2 files, and every bad input:
exit 2, one line naming the problem, the input untouched, no output file left behind."""
from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from laurentnet.bridge.cli import main


class LinearResidual(nn.Module):
    """A linear residual CNN with a classifier head: one affine map for a fixed size."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.head = nn.Linear(channels * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = h + self.conv2(self.bn1(self.conv1(h)))
        h = nn.functional.avg_pool2d(h, 2)
        return self.head(h.flatten(1))


class WithReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.bn(self.a(x))))


def _randomize_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


def _save(model: nn.Module, path: Path, shape: tuple[int, ...], batch_free: bool = True) -> Path:
    torch.manual_seed(0)
    example = torch.randn(2, *shape)
    dynamic = ({0: torch.export.Dim.AUTO},) if batch_free else None
    torch.export.save(torch.export.export(_randomize_bn(model), (example,), dynamic_shapes=dynamic),
                      str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    return {"linear": _save(LinearResidual(), folder / "linear.pt2", (1, 8, 8)),
            "relu": _save(WithReLU(), folder / "relu.pt2", (2, 6, 6)),
            "static": _save(WithReLU(), folder / "static.pt2", (2, 6, 6), batch_free=False),
            "folder": folder}


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("mode", ["auto", "affine", "partial"])
def test_collapse_writes_a_plain_torch_program_that_predicts_the_same(files, tmp_path, capsys, mode):
    out = tmp_path / f"out-{mode}.pt2"
    code, stdout, err = _run(["collapse", str(files["linear"]), "-o", str(out), "--mode", mode,
                              "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["verification"]["ok"] and report["written"] == str(out)
    original = torch.export.load(str(files["linear"])).module()
    converted = torch.export.load(str(out)).module()  # plain torch, our own file
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(converted(x), original(x), rtol=1e-4, atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name != out.name]  # no temp files left


def test_collapse_then_verify_and_inspect(files, tmp_path, capsys):
    out = tmp_path / "relu-out.pt2"
    code, _, err = _run(["collapse", str(files["relu"]), "-o", str(out)], capsys)
    assert code == 0, err
    code, stdout, err = _run(["verify", str(files["relu"]), str(out), "--json"], capsys)
    assert code == 0, err
    check = json.loads(stdout)
    assert check["ok"] and check["max_rel_error"] <= check["tolerance"]
    code, stdout, err = _run(["inspect", str(files["relu"]), "--json"], capsys)
    assert code == 0, err
    table = json.loads(stdout)
    assert any("relu" in json.dumps(b).lower() for b in table["boundaries"])
    code, stdout, _ = _run(["inspect", str(files["relu"])], capsys)
    assert code == 0 and "relu" in stdout.lower()


@pytest.mark.parametrize("mode", ["auto", "partial"])
def test_a_program_with_a_fixed_batch_size(files, tmp_path, capsys, mode):
    out = tmp_path / "static-out.pt2"
    code, _, err = _run(["collapse", str(files["static"]), "-o", str(out), "--mode", mode], capsys)
    assert code == 0, err
    code, _, err = _run(["verify", str(files["static"]), str(out)], capsys)
    assert code == 0, err


def test_verify_fails_with_exit_1_on_a_different_model(files, tmp_path, capsys):
    other = _save(LinearResidual(), tmp_path / "other.pt2", (1, 8, 8))  # other weights
    torch.manual_seed(1)
    code, stdout, _ = _run(["verify", str(files["linear"]), str(other), "--json"], capsys)
    assert code == 1 and not json.loads(stdout)["ok"]


def test_verify_accepts_user_data(files, tmp_path, capsys):
    data = tmp_path / "data.pt"
    torch.save(torch.rand(4, 1, 8, 8), data)
    code, stdout, err = _run(["verify", str(files["linear"]), str(files["linear"]), "--data",
                              str(data), "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["inputs"] == 8 + 4


def _bad_files(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, a word the error message must contain)."""
    bad: dict[str, tuple[Path, str]] = {}
    empty = folder / "empty.pt2"
    empty.write_bytes(b"")
    bad["empty"] = (empty, "empty")
    truncated = folder / "truncated.pt2"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    bad["truncated"] = (truncated, "truncated.pt2")
    text = folder / "text.pt2"
    text.write_text("this is not a model\n")
    bad["text"] = (text, "text.pt2")
    notorch = folder / "notorch.pt2"
    with zipfile.ZipFile(notorch, "w") as z:
        z.writestr("hello.txt", "hi")
    bad["zip"] = (notorch, "notorch.pt2")
    evil = folder / "evil.pt2"
    marker = folder / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith(".pkl") or "weight" in item.filename or "constants" in item.filename:
                data = pickle.dumps(Evil())
            dst.writestr(item, data)
    bad["evil"] = (evil, "evil.pt2")
    bad["missing"] = (folder / "missing.pt2", "missing.pt2")
    directory = folder / "dir.pt2"
    directory.mkdir()
    bad["directory"] = (directory, "dir.pt2")
    return bad


def test_every_bad_model_file_exits_2_with_one_line(files, tmp_path, capsys):
    bad = _bad_files(tmp_path, files["linear"])
    for name, (path, word) in bad.items():
        before = _snapshot(tmp_path)
        out = tmp_path / f"out-{name}.pt2"
        code, stdout, err = _run(["collapse", str(path), "-o", str(out), "--input-shape", "1,8,8"],
                                 capsys)
        assert code == 2, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and word.lower() in lines[0].lower(), (name, lines)
        assert "Traceback" not in err and not out.exists()
        assert _snapshot(tmp_path) == before, name  # the inputs are untouched
    assert not (tmp_path / "PWNED").exists()  # nothing in the archive was executed


def test_nan_weights_are_refused(tmp_path, capsys):
    model = WithReLU()
    with torch.no_grad():
        model.a.weight[0, 0, 0, 0] = float("nan")
    path = _save(model, tmp_path / "nan.pt2", (2, 6, 6))
    code, _, err = _run(["collapse", str(path), "-o", str(tmp_path / "o.pt2")], capsys)
    assert code == 2 and ("nan" in err.lower() or "non-finite" in err.lower())
    assert not (tmp_path / "o.pt2").exists()


@pytest.mark.parametrize("shape, word", [("1,8", "input"), ("a,b,c", "integers"),
                                         ("1,0,8", "positive"), ("1,2,3,4,5", "axes"),
                                         ("3,8,8", "input")])
def test_wrong_input_shape(files, tmp_path, capsys, shape, word):
    out = tmp_path / "o.pt2"
    code, _, err = _run(["collapse", str(files["linear"]), "-o", str(out), "--input-shape", shape],
                        capsys)
    assert code == 2 and word in err.lower() and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_output_paths(files, tmp_path, capsys):
    before = files["linear"].read_bytes()
    code, _, err = _run(["collapse", str(files["linear"]), "-o", str(files["linear"])], capsys)
    assert code == 2 and "input" in err.lower()
    assert files["linear"].read_bytes() == before
    code, _, err = _run(["collapse", str(files["linear"]), "-o", str(tmp_path / "nope" / "o.pt2")],
                        capsys)
    assert code == 2 and "nope" in err
    code, _, err = _run(["collapse", str(files["linear"]), "-o", str(tmp_path / "o.onnx")], capsys)
    assert code == 2 and ".pt2" in err
    assert not (tmp_path / "o.onnx").exists()


def test_a_collapse_over_the_memory_budget(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LAURENTNET_MEMORY_BUDGET", "1K")
    out = tmp_path / "o.pt2"
    code, _, err = _run(["collapse", str(files["linear"]), "-o", str(out), "--mode", "affine"],
                        capsys)
    assert code == 2 and "budget" in err.lower(), err
    assert not out.exists()


def test_exit_codes_through_python_dash_m(files, tmp_path):
    done = subprocess.run([sys.executable, "-m", "laurentnet", "collapse", str(tmp_path / "x.pt2"),
                           "-o", str(tmp_path / "y.pt2")], capture_output=True, text=True)
    assert done.returncode == 2 and "x.pt2" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "laurentnet", "--debug", "collapse",
                           str(tmp_path / "x.pt2"), "-o", str(tmp_path / "y.pt2")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" in done.stderr
