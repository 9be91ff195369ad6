"""The command line's exit status tells the truth about whose fault an error is.

* 2 — bad input: usage errors, the package's own refusals (``LaurentnetError``), OS errors
  on files the user named; one line on stderr, no traceback (``--debug`` shows it);
* 3 — anything else is a bug in laurentnet: one line saying so and asking for a report,
  with the exception's type and message; the traceback only with ``--debug``;
* 1 — a check failed (verification, the demo's exact collapse or proof);
* 130 — Ctrl-C, one line.

Internal failures are simulated by monkeypatching a function the command calls, so these
tests are fast and need no model files except where a real missing file is the point.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import laurentnet.bridge.safe_load as safe_load
from laurentnet.algebra.errors import InvalidInputError, InvalidTypeError, LaurentnetError
from laurentnet.algebra.memory import MemoryBudgetError
from laurentnet.bridge import demo as demo_module
from laurentnet.bridge.cli import build_parser, main


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def _raising(exc: BaseException):
    def fake(*args, **kwargs):
        raise exc
    return fake


@pytest.fixture
def model_file(tmp_path):
    """An existing (never read) model path, so the failure comes from the patched loader."""
    path = tmp_path / "model.pt2"
    path.write_bytes(b"not read: load is patched")
    return path


# -- internal errors: exit 3, one line asking for a bug report ----------------------------------
@pytest.mark.parametrize("exc", [ValueError("operands could not be broadcast"),
                                 TypeError("'NoneType' object is not iterable"),
                                 KeyError("weight"), AttributeError("no attribute 'ring'"),
                                 RuntimeError("shape mismatch"), IndexError("tuple index"),
                                 MemoryError(), FileNotFoundError(2, "No such file",
                                                                  "/usr/lib/laurentnet-internal")])
def test_an_internal_error_exits_3_with_a_bug_report_line(monkeypatch, capsys, model_file, exc):
    monkeypatch.setattr(safe_load, "load", _raising(exc))
    code, _, err = _run(["inspect", str(model_file)], capsys)
    assert code == 3, err
    assert len(err) == 1, err
    line = err[0]
    assert "internal error in laurentnet" in line and "bug" in line and "report" in line
    assert type(exc).__name__ in line and "--debug" in line
    assert "Traceback" not in line


def test_debug_shows_the_traceback_of_an_internal_error(monkeypatch, capsys, model_file):
    monkeypatch.setattr(safe_load, "load", _raising(ValueError("deep inside")))
    code = main(["--debug", "inspect", str(model_file)])
    err = capsys.readouterr().err
    assert code == 3
    assert "Traceback (most recent call last)" in err and "deep inside" in err
    assert "internal error in laurentnet" in err.strip().splitlines()[-1]


# -- the package's own refusals: exit 2, one line, no traceback ---------------------------------
@pytest.mark.parametrize("exc", [InvalidInputError("input_shape must be positive"),
                                 InvalidTypeError("network must be a Network"),
                                 LaurentnetError("refused"),
                                 MemoryBudgetError("the affine map", 10 * 2**30, 2**20),
                                 safe_load.CheckpointError("model.pt2: not a .pt2 archive")])
def test_a_package_error_exits_2_with_its_message(monkeypatch, capsys, model_file, exc):
    monkeypatch.setattr(safe_load, "load", _raising(exc))
    code, _, err = _run(["inspect", str(model_file)], capsys)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("laurentnet inspect: error: "), err
    assert str(exc).split()[0] in err[0] and "internal" not in err[0]


def test_debug_shows_the_traceback_of_a_package_error(monkeypatch, capsys, model_file):
    monkeypatch.setattr(safe_load, "load", _raising(InvalidInputError("bad value")))
    assert main(["--debug", "inspect", str(model_file)]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err


# -- OS errors: the user's files are the user's problem, other files are ours -------------------
def test_a_missing_file_exits_2(tmp_path, capsys):
    missing = tmp_path / "missing.pt2"
    code, _, err = _run(["inspect", str(missing)], capsys)
    assert code == 2 and len(err) == 1 and "missing.pt2" in err[0], err


@pytest.mark.parametrize("make", [
    lambda p: PermissionError(13, "Permission denied", str(p)),
    lambda p: IsADirectoryError(21, "Is a directory", str(p)),
    lambda p: FileNotFoundError(f"{p}: no such file"),          # no filename, named in the text
])
def test_an_os_error_on_a_file_the_user_named_exits_2(monkeypatch, capsys, model_file, make):
    monkeypatch.setattr(safe_load, "load", _raising(make(model_file)))
    code, _, err = _run(["inspect", str(model_file)], capsys)
    assert code == 2 and len(err) == 1 and "internal" not in err[0], err


def test_an_os_error_next_to_the_output_is_the_users(monkeypatch, capsys, model_file, tmp_path):
    """Writing the output goes through a temporary file in the output's folder."""
    out = tmp_path / "fast.pt2"
    monkeypatch.setattr(safe_load, "load", _raising(
        PermissionError(13, "Permission denied", str(tmp_path / ".fast.pt2.tmp123"))))
    code, _, err = _run(["collapse", str(model_file), "-o", str(out)], capsys)
    assert code == 2, err


def test_an_os_error_on_some_other_file_is_internal(monkeypatch, capsys, model_file):
    monkeypatch.setattr(safe_load, "load", _raising(
        PermissionError(13, "Permission denied", "/usr/share/laurentnet/cache.bin")))
    code, _, err = _run(["inspect", str(model_file)], capsys)
    assert code == 3 and "internal error" in err[0], err


# -- the demo: a failed check is exit 1, a refusal exit 2 ---------------------------------------
def _demo_report(**changes):
    """A real DemoReport (fields filled generically, so later fields do not break this)."""
    tiny = nn.Conv2d(1, 1, 3).eval()
    from laurentnet.bridge.verify import verify
    values = dict(channels=3, train_images=10, test_images=5, train_seconds=0.1,
                  program="digits_resnet.pt2", converted_into="affine: Linear 64->10",
                  convert_seconds=0.1, verification=verify(tiny, tiny, input_shape=(1, 4, 4),
                                                           samples=1).as_dict(),
                  accuracy_original=0.9, accuracy_converted=0.9, seconds_original=2e-3,
                  seconds_converted=1e-3, exact_operator="one 3x1 kernel 5x5, stride 2x2",
                  exact_where="every output", exact_seconds=0.1, proof="compared: 1 entries",
                  proved=True, exact_rel_error=1e-16, tolerance=1e-10)
    values.update(changes)
    fields = {f.name for f in dataclasses.fields(demo_module.DemoReport)}
    return demo_module.DemoReport(**{k: v for k, v in values.items() if k in fields})


@pytest.mark.parametrize("changes", [{"proved": False},                  # not exact: refuted
                                     {"exact_rel_error": 1e-3},          # float64 disagrees
                                     {"verification": {"ok": False, "max_rel_error": 1.0,
                                                       "reference": "float64",
                                                       "tolerance": 1e-13}}])
def test_the_demo_not_exact_or_not_verified_exits_1(monkeypatch, capsys, changes):
    assert _demo_report().ok  # the baseline passes, so exit 1 comes from the change
    monkeypatch.setattr(demo_module, "run_demo", lambda **kw: _demo_report(**changes))
    code, out, err = _run(["demo", "--repeats", "1"], capsys)
    assert code == 1, (out, err)
    assert "FAILED" in out and not err


def test_the_demo_passing_exits_0(monkeypatch, capsys):
    monkeypatch.setattr(demo_module, "run_demo", lambda **kw: _demo_report())
    code, out, _ = _run(["demo"], capsys)
    assert code == 0 and "OK" in out


def test_the_demo_without_scikit_learn_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails
    code, _, err = _run(["demo", "--json", "--epochs", "1"], capsys)  # no progress bar
    assert code == 2 and len(err) == 1 and "pip install scikit-learn" in err[0], err


# -- argument parsing ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["demo", "--tolerance", "-inf"], ["demo", "--tolerance=-inf"],
                                  ["demo", "--tolerance", "-1e-5"], ["demo", "--tolerance", "0"],
                                  ["demo", "--tolerance", "nan"], ["demo", "--tolerance", "inf"],
                                  ["demo", "--tolerance", "-.5"]])
def test_a_bad_tolerance_is_read_as_a_value_and_refused(monkeypatch, capsys, argv):
    monkeypatch.setattr(demo_module, "run_demo", _raising(AssertionError("must not run")))
    code, _, err = _run(argv, capsys)
    assert code == 2 and len(err) == 1, err
    assert "--tolerance must be a positive finite number" in err[0], err


@pytest.mark.parametrize("argv, needle", [(["demo", "--channels", "-3"], "--channels"),
                                          (["demo", "--epochs", "0"], "--epochs"),
                                          (["demo", "--seed", "-1"], "--seed"),
                                          (["verify", "a.pt2", "b.pt2", "--samples", "-2"],
                                           "--samples")])
def test_negative_numbers_are_values_not_flags(monkeypatch, capsys, argv, needle):
    monkeypatch.setattr(demo_module, "run_demo", _raising(AssertionError("must not run")))
    code, _, err = _run(argv, capsys)
    assert code == 2 and len(err) == 1 and needle in err[0], err


def test_negative_value_attachment_does_not_swallow_flags():
    parser = build_parser()
    args = parser.parse_args(["demo", "--tolerance", "-1e-3", "--json", "--seed", "-2"])
    assert args.tolerance == -1e-3 and args.json and args.seed == -2
    with pytest.raises(SystemExit):  # a flag where a value goes is still a usage error
        parser.parse_args(["demo", "--tolerance", "--json"])


def test_no_command_is_one_line(capsys):
    code, out, err = _run([], capsys)
    assert code == 2 and not out and len(err) == 1 and "give a command" in err[0]
    assert "demo" in err[0] and "collapse" in err[0]


def test_a_usage_error_exits_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["collapse", "--bogus"])
    assert info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys, model_file):
    monkeypatch.setattr(safe_load, "load", _raising(KeyboardInterrupt()))
    code, _, err = _run(["inspect", str(model_file)], capsys)
    assert code == 130 and err == ["laurentnet inspect: interrupted"]


def test_help_documents_the_exit_status(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("1 a check failed", "2 bad input", "3 an internal error", "bug", "--debug",
                   "130"):
        assert needle in text, needle


def test_exit_3_through_python_dash_m(tmp_path):
    """A bug seen from a real process: one line on stderr, exit 3 (the loader is made to fail
    with a plain ValueError through a sitecustomize-free ``-c`` wrapper)."""
    code = ("import sys, laurentnet.bridge.safe_load as s\n"
            "def boom(*a, **k): raise ValueError('an internal invariant broke')\n"
            "s.load = boom\n"
            "from laurentnet.bridge.cli import main\n"
            f"sys.exit(main(['inspect', {str(tmp_path)!r}]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 3 and len(lines) == 1, done.stderr
    assert "internal error in laurentnet (ValueError: an internal invariant broke)" in lines[0]
