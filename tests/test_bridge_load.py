"""Safe loading of untrusted model files (laurentnet.bridge.safe_load) and the output-path
helpers (laurentnet.bridge.files).

Round trips compare against the original module's output; every bad file must raise
CheckpointError (or FileNotFoundError / IsADirectoryError) naming the problem and leave no
file behind; malicious payloads are first shown to be live (they do run under plain pickle
/ torch.export.load) and then shown not to run under our loader.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import shlex
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from laurentnet.algebra.errors import LaurentnetError
from laurentnet.bridge.files import OutputPathError, atomic_write, check_output_path
from laurentnet.bridge.models import randomize_batchnorm_, resnet_tiny
from laurentnet.bridge.safe_load import (ARCHS, CheckpointError, LoadedModel, load,
                                         load_factory, load_program, read_state_dict)

MODEL_JSON = "models/model.json"
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"


# --------------------------------------------------------------------------- models

class BranchNet(nn.Module):
    """conv+BN+ReLU stem, two branches joined by cat, a residual add, a lifted constant,
    a non-persistent buffer, global pooling and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.left = nn.Conv2d(4, 3, 3, padding=1, bias=False)
        self.right = nn.Sequential(nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5))
        self.mix = nn.Conv2d(8, 4, 1)
        self.register_buffer("gain", torch.linspace(0.5, 1.5, 4).view(1, 4, 1, 1),
                             persistent=False)
        self.offset = torch.tensor([0.25, -0.5, 0.75, 1.0]).view(1, 4, 1, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.stem(x)
        y = self.mix(torch.cat([self.left(h), self.right(h)], dim=1))
        y = torch.relu(y * self.gain + h + self.offset)
        return self.fc(y.mean(dim=(2, 3)))


def _tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = resnet_tiny(linear=False, in_channels=1, num_classes=5)
    return randomize_batchnorm_(model, torch.Generator().manual_seed(1)).eval()


def _branch_net() -> nn.Module:
    torch.manual_seed(2)
    return randomize_batchnorm_(BranchNet(), torch.Generator().manual_seed(3)).eval()


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """name -> (module, .pt2 path, example input); branch has a dynamic batch axis."""
    folder = tmp_path_factory.mktemp("programs")
    out = {}
    cases = {"resnet": (_tiny_resnet(), torch.randn(2, 1, 8, 8), None),
             "branch": (_branch_net(), torch.randn(3, 2, 6, 6),
                        {"x": {0: torch.export.Dim("batch", min=2, max=64)}})}
    for name, (module, x, dynamic) in cases.items():
        ep = torch.export.export(module, (x,), dynamic_shapes=dynamic)
        path = folder / f"{name}.pt2"
        torch.export.save(ep, path)
        out[name] = (module, path, x)
    return out


@pytest.fixture()
def good_pt2(programs, tmp_path) -> Path:
    """A private copy of the resnet program in tmp_path (safe to rewrite)."""
    path = tmp_path / "good.pt2"
    path.write_bytes(programs["resnet"][1].read_bytes())
    return path


# --------------------------------------------------------------------------- helpers

def rewrite(src: Path, dst: Path, replace: dict | None = None, drop: tuple = (),
            compression: int = zipfile.ZIP_STORED) -> Path:
    """Copy the zip ``src`` to ``dst``; ``replace`` maps names relative to the archive
    root to new bytes or to a function old bytes -> new bytes."""
    replace = dict(replace or {})
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        root = zin.namelist()[0].split("/", 1)[0] + "/"
        for info in zin.infolist():
            rel = info.filename[len(root):]
            if rel in drop:
                continue
            data = zin.read(info)
            if rel in replace:
                new = replace.pop(rel)
                data = new(data) if callable(new) else new
            zout.writestr(info.filename, data)
        for rel, data in replace.items():       # new entries
            zout.writestr(root + rel, data)
    return dst


def edit_json(fn):
    """A ``rewrite`` replacement that edits a JSON entry in place with ``fn(doc)``."""
    def apply(data: bytes) -> bytes:
        doc = json.loads(data)
        fn(doc)
        return json.dumps(doc).encode()
    return apply


def refused(path, match: str, *, error=CheckpointError, **kwargs) -> str:
    """Assert load(path) raises ``error`` matching ``match`` in one line naming the
    source, and that the folder holds the same files afterwards."""
    folder = Path(path).parent if Path(path).parent.is_dir() else Path.cwd()
    before = sorted(os.listdir(folder))
    with pytest.raises(error, match=match) as info:
        load(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert sorted(os.listdir(folder)) == before
    return message


class Evil:
    """Unpickling this runs ``touch marker`` through os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.fixture()
def evil(tmp_path):
    """(pickle payload, marker path); the payload is checked to be live."""
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(Evil(marker), protocol=2)
    pickle.loads(payload)                    # control: plain pickle runs the payload
    assert marker.exists()
    marker.unlink()
    return payload, marker


def fresh_input(x: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    shape = (batch or x.shape[0], *x.shape[1:])
    return torch.randn(shape, generator=torch.Generator().manual_seed(7))


# --------------------------------------------------------------------------- .pt2 round trips

@pytest.mark.parametrize("name", ["resnet", "branch"])
def test_pt2_round_trip_is_exact(programs, name):
    module, path, x = programs[name]
    loaded = load(path)
    assert isinstance(loaded, LoadedModel) and loaded.kind == "pt2"
    assert loaded.source == str(path)
    assert isinstance(loaded.program, torch.export.ExportedProgram)
    assert loaded.input_shape == tuple(x.shape[1:])
    assert len(loaded.example_inputs) == 1 and torch.equal(loaded.example_inputs[0], x)
    assert not loaded.module.training
    probe = fresh_input(x)
    with torch.no_grad():
        assert torch.equal(loaded.module(probe), module(probe))
        assert torch.equal(loaded.program.module()(probe), module(probe))
    expected = dict(module.state_dict())
    for key, value in loaded.program.state_dict.items():
        assert torch.equal(value, expected[key])


def test_pt2_dynamic_batch_axis_survives(programs):
    module, path, x = programs["branch"]
    loaded = load(path)
    probe = fresh_input(x, batch=5)
    with torch.no_grad():
        assert torch.equal(loaded.module(probe), module(probe))


def test_pt2_reader_never_unpickles_freely(programs, monkeypatch):
    """Every torch.load is weights_only=True; torch's own loader and its bytes ->
    artifact path (which falls back to full pickle) are never reached."""
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("unsafe loader called")

    import torch._export.serde.serialize as serde
    monkeypatch.setattr(torch, "load", spy)
    monkeypatch.setattr(torch.export, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    real_artifact = serde.deserialize_torch_artifact
    monkeypatch.setattr(serde, "deserialize_torch_artifact", lambda a: (
        forbidden() if isinstance(a, (bytes, bytearray)) and a else real_artifact(a)))
    load_program(programs["branch"][1])
    assert calls == [True]                   # the example inputs, restricted unpickler


def test_pt2_node_metadata_is_dropped(programs):
    program = load_program(programs["resnet"][1])
    assert not any("stack_trace" in n.meta or n.meta.get("custom")
                   for n in program.graph.nodes)


# --------------------------------------------------------------------------- malicious .pt2

def test_pt2_pickled_weight_payload_does_not_run(good_pt2, tmp_path, evil):
    payload, marker = evil

    def make_pickled(doc):
        doc["config"]["stem.0.weight"]["use_pickle"] = True

    bad = rewrite(good_pt2, tmp_path / "bad.pt2", {
        WEIGHTS_CONFIG: edit_json(make_pickled), "data/weights/weight_0": payload})
    message = refused(bad, "unpickling arbitrary objects")
    assert "posix.system" in message and "stem.0.weight" in message
    assert not marker.exists()


def test_pt2_pickled_example_inputs_do_not_run(good_pt2, tmp_path, evil):
    payload, marker = evil
    for i, data in enumerate([payload, _torch_save({"x": Evil(marker)})]):
        bad = rewrite(good_pt2, tmp_path / f"bad{i}.pt2", {SAMPLE_INPUTS: data})
        refused(bad, "example inputs would need unpickling")
        assert not marker.exists()


def _torch_save(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("prefix, match", [("opaque_obj_", "opaque Python object"),
                                           ("custom_obj_", "TorchScript object")])
def test_pt2_object_constants_are_refused(good_pt2, tmp_path, evil, prefix, match):
    payload, marker = evil

    def add_constant(doc):
        doc["config"]["evil"] = {"path_name": f"{prefix}0", "is_param": False,
                                 "use_pickle": True, "tensor_meta": None}

    bad = rewrite(good_pt2, tmp_path / "bad.pt2", {
        CONSTANTS_CONFIG: edit_json(add_constant), f"data/constants/{prefix}0": payload})
    refused(bad, match)
    assert not marker.exists()


def _rename_value(doc, old: str, new: str):
    """Rename the graph value ``old`` to ``new`` everywhere in the program JSON."""
    def walk(o):
        if isinstance(o, dict):
            return {(new if k == old else k): walk(v) for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return new if o == old else o
    doc.update(walk(doc))


def test_pt2_name_injection_is_refused(good_pt2, tmp_path):
    marker = tmp_path / "PWNED"
    evil_name = f"x=__import__('os').system('touch {marker}')"
    bad = rewrite(good_pt2, tmp_path / "bad.pt2", {
        MODEL_JSON: edit_json(lambda d: _rename_value(d, "x", evil_name))})
    with pytest.raises(Exception):           # control: torch's loader runs the name
        torch.export.load(bad).module()
    assert marker.exists()
    marker.unlink()
    refused(bad, "not a plain identifier")
    assert not marker.exists()


def _first_node(doc):
    return doc["graph_module"]["graph"]["nodes"][0]


@pytest.mark.parametrize("edit, match", [
    (lambda d, m: d["graph_module"]["graph"]["tensor_values"]["x"]["sizes"].__setitem__(
        0, {"as_expr": {"expr_str": f"__import__('os').system('touch {m}')",
                        "hint": {"as_int": 2}}}), "symbolic shape"),
    (lambda d, m: d["graph_module"]["graph"]["tensor_values"]["x"]["sizes"].__setitem__(
        0, {"as_expr": {"expr_str": f"Symbol('s0') + \"__import__('os').system('touch {m}')\"",
                        "hint": {"as_int": 2}}}), "symbolic shape"),
    (lambda d, m: d.__setitem__("guards_code", [f"__import__('os').system('touch {m}')"]),
     "guards_code"),
    (lambda d, m: _first_node(d).__setitem__("target", "torch.os.system"),
     "not an aten operator"),
    (lambda d, m: _first_node(d).__setitem__("target", "torch.ops.aten.from_file.default"),
     "files or the console"),
    (lambda d, m: d["graph_module"]["signature"]["input_specs"][0]["parameter"].__setitem__(
        "parameter_name", f"stem\")+__import__('os').system('touch {m}')+(\""),
     "dotted attribute path"),
    (lambda d, m: d["graph_module"]["module_call_graph"][0]["signature"].__setitem__(
        "in_spec", json.dumps([1, {"type": "builtins.dict", "children_spec": [],
                                   "context": json.dumps([{"__enum__": True,
                                                           "fqn": "antigravity:x",
                                                           "name": "a"}])}])),
     "pytree context"),
    (lambda d, m: d["graph_module"]["graph"]["inputs"].__setitem__(0, {"as_int": 3}),
     "only tensor inputs"),
])
def test_pt2_code_paths_in_the_json_are_refused(good_pt2, tmp_path, edit, match):
    marker = tmp_path / "PWNED"
    bad = rewrite(good_pt2, tmp_path / "bad.pt2",
                  {MODEL_JSON: edit_json(lambda d: edit(d, marker))})
    refused(bad, match)
    assert not marker.exists()


# --------------------------------------------------------------------------- bad .pt2 files

def test_missing_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load(tmp_path / "absent.pt2")
    (tmp_path / "folder.pt2").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load(tmp_path / "folder.pt2")


@pytest.mark.parametrize("suffix", [".pt2", ".pt", ".safetensors"])
def test_empty_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.touch()
    refused(path, "the file is empty", arch="resnet_tiny" if suffix != ".pt2" else None)


def test_pt2_not_an_archive(tmp_path, good_pt2):
    text = tmp_path / "notes.pt2"
    text.write_text("just some notes\n")
    refused(text, "is a text file, not a .pt2 archive")
    cut = tmp_path / "cut.pt2"
    cut.write_bytes(good_pt2.read_bytes()[: good_pt2.stat().st_size // 2])
    refused(cut, "damaged or truncated zip")
    plain = tmp_path / "plain.pt2"
    with zipfile.ZipFile(plain, "w") as z:
        z.writestr("hello.txt", "hi")
    refused(plain, "not a torch.export archive")
    state = tmp_path / "state.pt2"
    torch.save({"w": torch.ones(2)}, state)
    refused(state, "torch.save checkpoint")


@pytest.mark.parametrize("change, match", [
    (dict(replace={"archive_version": b"7"}), "archive version"),
    (dict(replace={"archive_format": b"zip"}), "not a torch.export"),
    (dict(replace={"byteorder": b"big"}), "big-endian"),
    (dict(drop=("data/weights/weight_0",)), "no entry 'data/weights/weight_0'"),
    (dict(replace={"data/weights/weight_0": b"\0" * 12}), "needs 36 elements .* holds 3"),
    (dict(replace={"data/weights/weight_0": b"\0" * 13}), "not a multiple"),
    (dict(drop=(MODEL_JSON,)), "without an exported program"),
    (dict(replace={MODEL_JSON: b"{not json"}), "not valid JSON"),
    (dict(replace={MODEL_JSON: b'{"graph_module": {"graph": {}}}'}), "no graph signature"),
    (dict(replace={MODEL_JSON: edit_json(lambda d: d.pop("schema_version"))}),
     "does not follow torch's exported-program schema"),
    (dict(replace={MODEL_JSON: edit_json(lambda d: d.update(
        schema_version={"major": 99, "minor": 0}))}), "schema version"),
    (dict(replace={MODEL_JSON: edit_json(lambda d: d["graph_module"]["graph"]["nodes"].pop(0))}),
     "could not rebuild the program"),
    (dict(compression=zipfile.ZIP_DEFLATED), "compressed"),
])
def test_pt2_broken_archives(good_pt2, tmp_path, change, match):
    refused(rewrite(good_pt2, tmp_path / "bad.pt2", **change), match)


def test_pt2_missing_parameter_is_named(good_pt2, tmp_path):
    def forget(doc):
        del doc["config"]["fc.bias"]
    bad = rewrite(good_pt2, tmp_path / "bad.pt2", {WEIGHTS_CONFIG: edit_json(forget)})
    refused(bad, "parameter 'fc.bias' is missing")


def test_pt2_nan_weights_are_refused(tmp_path):
    module = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        module[0].weight[1, 2] = float("nan")
    path = tmp_path / "nan.pt2"
    torch.export.save(torch.export.export(module, (torch.randn(1, 3),)), path)
    refused(path, "'0.weight' contains NaN")


def test_pt2_training_mode_export_is_refused(tmp_path):
    module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train()
    path = tmp_path / "train.pt2"
    torch.export.save(torch.export.export(module, (torch.randn(2, 1, 5, 5),)), path)
    refused(path, "training mode")


def test_pt2_rejects_arch(programs):
    refused(programs["resnet"][1], "apply only to state dicts", arch="resnet18")


@settings(max_examples=20)
@given(fraction=st.floats(0.0, 0.999))
def test_pt2_any_truncation_is_a_checkpoint_error(programs, tmp_path_factory, fraction):
    data = programs["resnet"][1].read_bytes()
    path = tmp_path_factory.mktemp("cut") / "cut.pt2"
    path.write_bytes(data[: max(1, int(len(data) * fraction))])
    with pytest.raises(CheckpointError):
        load_program(path)


@settings(max_examples=20)
@given(position=st.floats(0.0, 0.999), flip=st.integers(1, 255))
def test_pt2_flipped_byte_is_refused_or_harmless(programs, tmp_path_factory, position, flip):
    module, source, x = programs["resnet"]
    data = bytearray(source.read_bytes())
    data[int(len(data) * position)] ^= flip
    path = tmp_path_factory.mktemp("flip") / "flip.pt2"
    path.write_bytes(bytes(data))
    try:
        loaded = load(path)
    except CheckpointError:
        return
    with torch.no_grad():                    # bytes outside any checksummed entry
        assert torch.equal(loaded.module(x), module(x))


# --------------------------------------------------------------------------- state dicts

OPTIONS = {"linear": False, "num_classes": 3, "in_channels": 2}


@pytest.fixture()
def tiny_state():
    torch.manual_seed(4)
    model = randomize_batchnorm_(resnet_tiny(**OPTIONS), torch.Generator().manual_seed(5))
    return model.eval(), {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("fmt", ["pt", "pth-nested", "safetensors"])
def test_state_dict_round_trip_is_exact(tmp_path, tiny_state, fmt):
    model, state = tiny_state
    if fmt == "safetensors":
        from safetensors.torch import save_file
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    elif fmt == "pt":
        path = tmp_path / "w.pt"
        torch.save(state, path)
    else:
        path = tmp_path / "w.pth"
        torch.save({"epoch": 3, "state_dict": state}, path)
    loaded = load(path, arch="resnet_tiny", arch_options=OPTIONS)
    assert loaded.kind == "state_dict" and loaded.program is None
    assert loaded.input_shape is None and not loaded.module.training
    x = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), model(x))


def test_state_dict_needs_a_known_arch(tmp_path, tiny_state):
    path = tmp_path / "w.pt"
    torch.save(tiny_state[1], path)
    message = refused(path, "--arch")
    assert all(name in message for name in ARCHS)
    refused(path, "unknown arch 'vgg'", arch="vgg")
    refused(path, "cannot build resnet_tiny", arch="resnet_tiny", arch_options={"depth": 3})


def test_state_dict_mismatches_are_listed(tmp_path, tiny_state):
    path = tmp_path / "w.pt"
    torch.save(tiny_state[1], path)
    message = refused(path, "does not fit ResNet", arch="resnet18", arch_options=OPTIONS)
    assert "missing keys" in message and "shape mismatches" in message
    message = refused(path, "shape mismatches", arch="resnet_tiny",
                      arch_options={**OPTIONS, "num_classes": 7})
    assert "fc.weight (3, 8) vs (7, 8)" in message
    extra = dict(tiny_state[1], **{"head.extra": torch.zeros(1)})
    torch.save(extra, path)
    refused(path, "unexpected keys head.extra", arch="resnet_tiny", arch_options=OPTIONS)


def test_state_dict_bad_contents(tmp_path, tiny_state, evil):
    payload, marker = evil
    cases = {
        "list.pt": (lambda p: torch.save([torch.ones(2)], p), "holds a list"),
        "mixed.pt": (lambda p: torch.save({"w": torch.ones(2), "n": 3}, p), "holding a int"),
        "module.pt": (lambda p: torch.save(resnet_tiny(), p), "references laurentnet"),
        "evil.pt": (lambda p: p.write_bytes(payload), "posix.system"),
        "evilzip.pt": (lambda p: torch.save({"w": Evil(marker)}, p), "posix.system"),
        "text.pt": (lambda p: p.write_text("weights: 1 2 3\n"), "it is a text file"),
        "nan.pt": (lambda p: torch.save({"w": torch.tensor([1.0, float("nan")])}, p),
                   "'w' contains NaN"),
        "cut.pt": (lambda p: p.write_bytes(_torch_save(tiny_state[1])[:3000]),
                   "corrupt or truncated"),
        "text.safetensors": (lambda p: p.write_text("not safetensors\n"), "text file"),
        "cut.safetensors": (lambda p: p.write_bytes(_safetensors(tiny_state[1])[:500]),
                            "not a valid .safetensors"),
        "inf.safetensors": (lambda p: p.write_bytes(_safetensors(
            {"w": torch.tensor([float("inf")])})), "'w' contains Inf"),
    }
    for name, (write, match) in cases.items():
        path = tmp_path / name
        write(path)
        refused(path, match, arch="resnet_tiny")
    assert not marker.exists()


def _safetensors(state) -> bytes:
    from safetensors.torch import save
    return save(state)


def test_read_state_dict_unwraps_model_key(tmp_path, tiny_state):
    path = tmp_path / "w.pt"
    torch.save({"model": tiny_state[1], "optimizer": {"lr": 0.1}}, path)
    state = read_state_dict(path)
    assert state.keys() == tiny_state[1].keys()


def test_wrong_suffix(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07")
    message = refused(path, "unsupported suffix '.onnx'")
    assert ".pt2" in message and "factory" in message


# --------------------------------------------------------------------------- factories

FACTORY_SOURCE = """
import torch
from torch import nn

def good():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2)).train()

def not_a_module():
    return "model"

def broken():
    raise RuntimeError("no weights here")

def nan():
    m = nn.Linear(2, 2)
    with torch.no_grad():
        m.bias[0] = float("inf")
    return m

value = 3
"""


@pytest.fixture()
def factory_module(tmp_path, monkeypatch):
    name = f"lnet_factories_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_factory_round_trip(factory_module):
    loaded = load(f"{factory_module}:good")
    assert loaded.kind == "factory" and loaded.program is None
    assert not loaded.module.training
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(3, 2))
    x = torch.randn(4, 3)
    assert torch.equal(loaded.module(x), reference(x))


@pytest.mark.parametrize("attr, match", [
    ("not_a_module", "returned a str, not a torch.nn.Module"),
    ("broken", "broken\\(\\) raised RuntimeError: no weights here"),
    ("missing", "has no attribute 'missing'"),
    ("value", "non-callable 'value'"),
    ("nan", "'bias' contains Inf"),
])
def test_factory_refusals(factory_module, attr, match):
    with pytest.raises(CheckpointError, match=match):
        load(f"{factory_module}:{attr}")


def test_factory_not_importable():
    with pytest.raises(CheckpointError, match="cannot import module 'no_such_pkg.models'"):
        load("no_such_pkg.models:build")
    with pytest.raises(CheckpointError, match="apply only to state dicts"):
        load("no_such_pkg.models:build", arch="resnet18")
    with pytest.raises(CheckpointError, match="package.module:factory"):
        load_factory("not a spec")


def test_errors_are_package_errors():
    assert issubclass(CheckpointError, LaurentnetError)
    assert issubclass(CheckpointError, ValueError)
    assert issubclass(OutputPathError, LaurentnetError)


# --------------------------------------------------------------------------- output paths

def test_check_output_path_accepts_a_new_file(tmp_path):
    out = check_output_path(str(tmp_path / "out.pt2"), inputs=[tmp_path / "in.pt"])
    assert out == tmp_path / "out.pt2"


def test_check_output_path_refusals(tmp_path):
    source = tmp_path / "in.pt2"
    source.write_bytes(b"x")
    (tmp_path / "dir.pt2").mkdir()
    os.link(source, tmp_path / "hard.pt2")
    (tmp_path / "soft.pt2").symlink_to(source)
    cases = [
        (tmp_path / "in.pt2", "would overwrite the input"),
        (tmp_path / "sub" / ".." / "in.pt2", "would overwrite the input"),
        (tmp_path / "hard.pt2", "would overwrite the input"),
        (tmp_path / "soft.pt2", "would overwrite the input"),
        (tmp_path / "missing" / "out.pt2", "output folder .* does not exist"),
        (tmp_path / "dir.pt2", "is a directory"),
        (tmp_path / "out.onnx", "the output format is .pt2"),
    ]
    (tmp_path / "sub").mkdir()
    for out, match in cases:
        with pytest.raises(OutputPathError, match=match):
            check_output_path(out, inputs=["pkg.mod:factory", source])


def test_atomic_write_replaces_the_target(tmp_path):
    target = tmp_path / "out.pt2"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    atomic_write(target, lambda p: p.write_bytes(b"new"))
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == ["out.pt2"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_write_keeps_the_old_target_when_the_writer_fails(tmp_path, exc):
    target = tmp_path / "out.pt2"
    target.write_bytes(b"old")
    fresh = tmp_path / "fresh.pt2"

    def writer(path: Path):
        path.write_bytes(b"half written")
        raise exc("writer failed")

    for path in (target, fresh):
        with pytest.raises(exc, match="writer failed"):
            atomic_write(path, writer)
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["out.pt2"]


def test_atomic_write_of_an_exported_program(tmp_path, programs):
    module, source, x = programs["resnet"]
    program = load_program(source)
    target = check_output_path(tmp_path / "copy.pt2", inputs=[source])
    atomic_write(target, lambda p: torch.export.save(program, p))
    with torch.no_grad():
        assert torch.equal(load(target).module(x), module(x))
