"""The notebooks in ``notebooks/`` run top to bottom and say what they claim.

Every ``*.ipynb`` is executed with nbclient (so notebooks added later are covered too) from
an in-memory copy, in a temporary working directory: the committed files are never
written.  Each cell has a timeout and any error fails the test.  Specific outputs are then
checked on cells tagged in the notebooks' metadata (e.g. notebook 02's proof summary).

The kernel is ``python3`` resolved *inside this environment only*: the kernel-spec search
is restricted to ``sys.prefix`` plus ipykernel's built-in spec, whose command is
``sys.executable``, so a user-level or system kernelspec pointing at another interpreter
cannot hijack the run (a fresh venv with ipykernel installed is enough).
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402  (after importorskip)
from jupyter_client.manager import KernelManager  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 180  # seconds per cell; each notebook takes ~10 s in total

pytestmark = pytest.mark.slow


def _kernel_manager() -> KernelManager:
    """A ``python3`` kernel running this interpreter (see the module docstring)."""
    spec_manager = KernelSpecManager(
        kernel_dirs=[os.path.join(sys.prefix, "share", "jupyter", "kernels")],
        ensure_native_kernel=True)
    return KernelManager(kernel_name="python3", kernel_spec_manager=spec_manager)


def _execute(notebook: "nbformat.NotebookNode", workdir: Path) -> "nbformat.NotebookNode":
    client = nbclient.NotebookClient(
        notebook, km=_kernel_manager(), kernel_name="python3", timeout=CELL_TIMEOUT,
        allow_errors=False, resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return notebook


@pytest.fixture(scope="session")
def executed(tmp_path_factory):
    """``executed(path)`` -> the notebook at ``path`` run in a temporary directory (cached
    for the session; the executed copy is written there for inspection)."""
    cache: dict[Path, nbformat.NotebookNode] = {}

    def run(path: Path) -> nbformat.NotebookNode:
        if path not in cache:
            workdir = tmp_path_factory.mktemp(path.stem)
            notebook = nbformat.read(path, as_version=4)
            try:
                _execute(notebook, workdir)
            finally:
                nbformat.write(notebook, workdir / path.name)
            cache[path] = notebook
        return cache[path]

    return run


def _text(cell) -> str:
    """All plain-text and LaTeX output of a code cell (stream chunks joined as printed)."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("display_data", "execute_result"):
            parts.append(output.data.get("text/plain", "") + "\n")
            parts.append(output.data.get("text/latex", "") + "\n")
        elif output.output_type == "error":
            parts.append("\n".join(output.traceback) + "\n")
    return "".join(parts)


def _tagged(notebook, tag: str) -> str:
    cells = [c for c in notebook.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert cells, f"no cell tagged {tag!r}"
    return "\n".join(_text(c) for c in cells)


def _notebook(name: str) -> Path:
    path = NOTEBOOK_DIR / name
    if not path.exists():
        pytest.skip(f"{name} is not in notebooks/")
    return path


# -- every notebook ----------------------------------------------------------------------

def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


def test_kernel_is_this_interpreter(tmp_path):
    """``python3`` starts this environment's interpreter, whatever other specs exist."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import sys; print(sys.prefix); print(sys.executable)")])
    _execute(notebook, tmp_path)
    prefix, executable = _text(notebook.cells[0]).split()
    assert os.path.realpath(prefix) == os.path.realpath(sys.prefix)
    assert os.path.realpath(executable) == os.path.realpath(sys.executable)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, executed):
    notebook = executed(path)
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebook_has_outputs(path):
    """Notebooks are committed executed, with an output on every code cell."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code
    for index, cell in enumerate(code):
        assert cell.outputs, f"code cell {index} of {path.name} has no output"
        assert not any(o.output_type == "error" for o in cell.outputs), \
            f"code cell {index} of {path.name} was committed with an error"
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3"


# -- specific claims ---------------------------------------------------------------------

def test_collapse_theorem_outputs(executed):
    notebook = executed(_notebook("01_collapse_theorem.ipynb"))
    zeros = _tagged(notebook, "region-zeros")
    assert "[1 0 0 0 0 0 0 0]" in zeros  # the isolated exact corner of the tight region
    circular = _tagged(notebook, "region-circular")
    assert "exact at every position" in circular
    assert "layer-by-layer == collapsed at all 64 positions: True" in circular
    affine = _tagged(notebook, "affine-check")
    assert affine.count("equal: True") == 3 and "False" not in affine
    torch_check = _tagged(notebook, "torch-check")
    differences = [float(v) for v in re.findall(r"max \|difference\| = (\S+)", torch_check)]
    assert len(differences) == 4 and max(differences) < 1e-12


def test_proof_checking_outputs(executed):
    from laurentnet.algebra import LIBRARY

    notebook = executed(_notebook("02_proof_checking.ipynb"))
    summary = _tagged(notebook, "library-summary")
    for identity in LIBRARY:
        assert re.search(rf"^{re.escape(identity.name)}\s+PROVED\b", summary, re.M), \
            f"library identity {identity.name} is not PROVED in notebook 02"
    assert "REFUTED" not in summary

    for tag in ("refuted-border", "refuted-bias", "refuted-commute"):
        text = _tagged(notebook, tag)
        assert "REFUTED:" in text and "PROVED" not in text, f"{tag}: {text[:200]}"
    for tag in ("proved-region", "proved-bias", "proved-commute-1ch"):
        text = _tagged(notebook, tag)
        assert "PROVED:" in text and "REFUTED" not in text, f"{tag}: {text[:200]}"
    assert "constant term (zero input)" in _tagged(notebook, "refuted-bias")

    verdicts = re.findall(r"^(PROVED|REFUTED)\s", _tagged(notebook, "summary"), re.M)
    assert verdicts.count("REFUTED") == 3
    assert verdicts.count("PROVED") == len(LIBRARY) + 2
