"""The distribution owns one import name: the wheel's only top-level package is
``laurentnet``, and a non-editable install works from outside the source tree."""
from __future__ import annotations

import configparser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _setup_version() -> str:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config["metadata"]["version"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    base = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)]
    done = subprocess.run(base + ["--no-build-isolation"], capture_output=True, text=True)
    if done.returncode != 0:  # no setuptools in this environment: let pip fetch the backend
        done = subprocess.run(base, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = out.glob("laurentnet-*.whl")
    return path


@pytest.mark.slow
def test_wheel_has_one_top_level_name(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
        top_level = [n for n in names if n.endswith("top_level.txt")]
        listed = archive.read(top_level[0]).decode().split() if top_level else None
    assert tops == {"laurentnet"}, tops
    if listed is not None:
        assert listed == ["laurentnet"]
    for sub in ("algebra", "numeric", "bridge"):
        assert f"laurentnet/{sub}/__init__.py" in names
    assert "laurentnet/__main__.py" in names and "laurentnet/__init__.py" in names
    assert not any(n.startswith("laurentnet/tests") or "package_root" in n for n in names)


@pytest.mark.slow
def test_non_editable_install_imports_from_outside_the_tree(wheel, tmp_path):
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                           "--target", str(target), str(wheel)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import laurentnet, laurentnet.algebra as A, laurentnet.numeric, laurentnet.bridge;"
            "from pathlib import Path;"
            f"assert Path(laurentnet.__file__).resolve().is_relative_to(Path({str(target)!r}).resolve()), laurentnet.__file__;"
            "op = A.ConvOperator.from_weight([[[1.0, 2.0]]]);"
            "print((op @ op).kernel_size, laurentnet.__version__)")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["(3,)", _setup_version()]
    cli = subprocess.run([sys.executable, "-m", "laurentnet", "--version"], cwd=tmp_path,
                         env=env, capture_output=True, text=True)
    assert cli.returncode == 0 and cli.stdout.strip() == f"laurentnet {_setup_version()}"


def test_version_comes_from_setup_cfg():
    run = subprocess.run([sys.executable, "-m", "laurentnet", "--version"], capture_output=True,
                         text=True)
    assert run.returncode == 0 and run.stdout.strip() == f"laurentnet {_setup_version()}"


def test_no_bare_package_imports_anywhere():
    """Inside the package imports are relative; tests, notebooks, benchmarks use laurentnet.*"""
    import re
    pattern = re.compile(r"^\s*(from|import) (algebra|numeric|bridge)\b", re.M)
    offenders = []
    for path in ROOT.rglob("*"):
        if path.suffix not in (".py", ".ipynb") or any(p.startswith(".") for p in path.relative_to(ROOT).parts):
            continue
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".ipynb":
            text = text.replace('\\n",', "\n").replace('"', "")
        if pattern.search(text):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders
