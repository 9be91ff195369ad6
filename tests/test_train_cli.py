"""``laurentnet train`` (bridge.cli_train): end to end on a tiny model, --json, bad input."""
from __future__ import annotations

import json

import pytest
import torch

from laurentnet.bridge import load
from laurentnet.bridge.cli import main
from laurentnet.bridge.data import digits

TINY = ["--model", "resnet_tiny", "--epochs", "2", "--t0", "1", "--repeats", "2",
        "--timing-batch", "32", "--no-progress"]


@pytest.mark.slow
def test_train_command_json(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "-o", str(out), *TINY, "--json", "--no-plots"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["deployment"]["kind"] == "skipless" and payload["deployment"]["ok"]
    assert payload["train"]["skip_weights"] == [0.0, 0.0] and payload["train"]["zero_at"] == 1.0
    assert len(payload["history"]) == 2
    timing = payload["timing"]
    assert set(timing["median_s"]) == {"trained", "bn_folded", "deployed"}
    assert timing["batch"] == [32, 1, 8, 8] and timing["repeats"] == 2
    for key in ("time_reduction_total", "time_reduction_skips"):
        assert -1 < timing[key] < 1
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "model.pt2", "train.jsonl"]
    # the deployed file: plain torch, no batch norm, same predictions as its report says
    module = load(out / "model.pt2").module
    x = digits(seed=0).x_test
    with torch.no_grad():
        assert module(x).shape == (len(x), 10)
    # the table form, with the skips kept (constant schedule): BN folded, skips in place
    assert main(["train", "-o", str(tmp_path / "skips"), *TINY[:4], "--schedule", "constant",
                 "--repeats", "2", "--timing-batch", "32", "--no-progress", "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert "skips kept" in text and "deployed model.pt2" in text and "median ms" in text
    assert "λ reached 0    never (skips kept)" in text


@pytest.mark.parametrize("extra,message", [
    (["--data", "cifar"], "data 'cifar' not understood"),
    (["--schedule", "auto", "--t0", "3"], "drop --t0"),
    (["--t0", "5"], "after the last epoch"),
    (["--data", "mnist:/no/such/folder"], "no such folder"),
    (["--seed", "-1"], "--seed must be >= 0"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, extra, message) -> None:
    args = ["train", "-o", str(tmp_path / "x"), "--model", "resnet_tiny", "--epochs", "2",
            "--no-progress", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("laurentnet train:")


def test_parser_refuses_bad_numbers(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "-o", str(tmp_path), "--epochs", "0"])
    assert info.value.code == 2 and "--epochs" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["train", "-o", str(tmp_path / "file"), "--model", "resnet_tiny"]) == 2
    assert "not a folder" in capsys.readouterr().err
