"""Package-level promises: algebra never imports torch; the CLI and the demo behave."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from laurentnet.bridge.cli import main


def test_algebra_imports_no_torch():
    code = "import sys, laurentnet.algebra; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_help_for_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    assert "--json" in capsys.readouterr().out


def test_bad_input_exits_2_with_one_line(capsys):
    assert main(["demo", "--channels", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "channels" in err[0]


def test_demo_json_report_is_exact_and_within_tolerance(capsys, tmp_path):
    assert main(["demo", "--json", "--channels", "3", "--epochs", "3", "--repeats", "1",
                 "--out-dir", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["proved"] and report["verification"]["ok"]
    assert report["exact_rel_error"] <= report["tolerance"]
    assert report["accuracy_converted"] == report["accuracy_original"] > 0.5
    assert report["converted_into"].startswith("affine")
    # the demo's files are real torch.export programs the safe loader reads back
    from laurentnet.bridge.safe_load import load
    for name in ("digits_resnet.pt2", "digits_resnet_collapsed.pt2"):
        assert load(tmp_path / name).input_shape == (1, 8, 8)


def test_python_dash_m_laurentnet_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "laurentnet", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout
