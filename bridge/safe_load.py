"""Safe loading of untrusted model files: torch.export programs, state dicts, factories.

Nothing loaded here executes code from the file.  ``torch.export.load`` is not used: it
unpickles parts of the archive with full pickle, and torch 2.13's JSON graph
deserializer itself has code paths that run strings from the file (node names and
metadata are pasted into generated Python source, symbolic shapes go through
``sympy.sympify`` = ``eval``, ``guards_code`` is ``exec``-ed by ``.module()``, node targets
may name any ``torch.*`` callable, pytree contexts may import modules).  So a ``.pt2``
archive is read entry by entry with :mod:`zipfile`, every tensor is rebuilt from raw
bytes, pickled entries go through ``torch.load(weights_only=True)`` (the restricted
unpickler) or are refused, and the program JSON is checked against a strict allowlist
before torch's own deserializer turns it into an :class:`~torch.export.ExportedProgram`.

Sources (:func:`load`):

* ``*.pt2``: a program written by ``torch.export.save`` (:func:`load_program`);
* ``*.pt`` / ``*.pth`` / ``*.safetensors``: a state dict (:func:`read_state_dict`) loaded
  into an architecture of the model zoo (``arch``, see :data:`ARCHS`);
* ``package.module:factory``: the user's own code (trusted by the user through that
  syntax) that builds the module (:func:`load_factory`).

Every refusal is a :class:`CheckpointError` (or ``FileNotFoundError`` /
``IsADirectoryError``) whose message is one line naming the source and the problem.
"""
from __future__ import annotations

import ast
import importlib
import io
import json
import os
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from ..algebra.errors import InvalidTypeError, LaurentnetError
from ..algebra.validate import describe, optional_str_arg
from .models import MODELS

__all__ = ["CheckpointError", "LoadedModel", "ARCHS", "STATE_DICT_SUFFIXES", "load",
           "load_program", "read_state_dict", "load_state_dict_into", "load_factory"]

#: Architectures a state dict can be loaded into: name -> constructor (keyword options).
#: (the ResNet family of :mod:`bridge.models.resnet`, so ``laurentnet train`` checkpoints load)
ARCHS: dict[str, Callable[..., nn.Module]] = dict(MODELS)
STATE_DICT_SUFFIXES = (".pt", ".pth", ".safetensors")

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_FQN = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*\Z")
_FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*\Z")
_MAX_DEPTH = 200          # nesting of the program JSON we walk
_MAX_MESSAGE = 240        # characters of an embedded exception message


class CheckpointError(LaurentnetError, ValueError):
    """A model file (or factory) that cannot be loaded safely; one line naming the source
    and the problem."""


@dataclass(frozen=True)
class LoadedModel:
    """What :func:`load` returns.

    ``module`` is in eval mode and runs with plain torch; ``program`` is the exported
    program (``.pt2`` only); ``example_inputs`` the program's stored positional example
    inputs, if any; ``input_shape`` the first example input's shape without the batch
    axis; ``kind`` is ``"pt2"``, ``"state_dict"`` or ``"factory"``; ``source`` the path or
    factory spec as given.
    """

    module: nn.Module
    program: torch.export.ExportedProgram | None
    example_inputs: tuple[torch.Tensor, ...] | None
    input_shape: tuple[int, ...] | None
    kind: str
    source: str


class _Bad(Exception):
    """Internal: a problem with the file's content, turned into a CheckpointError naming
    the file by the caller."""


def _short(text: object) -> str:
    """``text`` on one line, at most ``_MAX_MESSAGE`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= _MAX_MESSAGE else line[:_MAX_MESSAGE - 3] + "..."


def _error(source: object, problem: str) -> CheckpointError:
    return CheckpointError(f"{source}: {_short(problem)}")


# --------------------------------------------------------------------------- files

def _check_file(path: Path) -> None:
    """Refuse a missing path, a directory, or an empty file."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not a model file")
    if path.stat().st_size == 0:
        raise _error(path, "the file is empty")


def _head(path: Path, n: int = 512) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _looks_like_text(head: bytes) -> bool:
    """True if ``head`` is UTF-8 (possibly cut inside a last character) without control
    bytes other than whitespace."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:
            return False
        text = head[:e.start].decode("utf-8")
    return all(c.isprintable() or c in "\t\r\n\f" for c in text)


def _describe_content(head: bytes) -> str:
    """A short description of a file that is not what its suffix promises."""
    if head.startswith(b"PK"):
        return "a damaged or truncated zip archive"
    if _looks_like_text(head):
        return "a text file"
    return "an unrecognised binary file"


# --------------------------------------------------------------------------- public API

def load(source: str | os.PathLike, *, arch: str | None = None,
         arch_options: dict | None = None) -> LoadedModel:
    """Load a model from ``source`` without executing code from any file.

    ``*.pt2`` -> :func:`load_program`; ``*.pt``/``*.pth``/``*.safetensors`` -> a state dict
    loaded (strictly) into ``ARCHS[arch](**arch_options)``; ``package.module:factory``
    (when no such file exists) -> :func:`load_factory`.  Returns a :class:`LoadedModel`.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise InvalidTypeError(f"source must be a path (str or os.PathLike) or "
                               f"'package.module:factory', got {describe(source)}")
    text = os.fspath(source)
    if not isinstance(text, str):
        text = os.fsdecode(text)
    arch = optional_str_arg(arch, "arch")
    if arch_options is not None and (not isinstance(arch_options, Mapping) or
                                     not all(isinstance(k, str) for k in arch_options)):
        raise InvalidTypeError(f"arch_options must be a dict of keyword arguments such as "
                               f"{{'linear': True}}, got {describe(arch_options)}")
    path = Path(text)
    if not path.exists() and _FACTORY.match(text):
        _no_arch(text, arch, arch_options, "a factory builds its own module")
        return LoadedModel(load_factory(text), None, None, None, "factory", text)
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix == ".pt2":
        _no_arch(path, arch, arch_options, "a .pt2 program carries its own architecture")
        return _loaded_program(path, text)
    if suffix in STATE_DICT_SUFFIXES:
        model = _build_arch(path, arch, arch_options)
        load_state_dict_into(model, read_state_dict(path), source=path)
        return LoadedModel(model.eval(), None, None, None, "state_dict", text)
    raise _error(path, f"unsupported suffix {suffix or '(none)'!r}: expected .pt2 "
                       "(torch.export program), .pt/.pth/.safetensors (state dict, with "
                       "--arch) or package.module:factory")


def _no_arch(source: object, arch: str | None, options: dict | None, why: str) -> None:
    if arch is not None or options:
        raise _error(source, f"--arch and its options apply only to state dicts ({why})")


def _loaded_program(path: Path, text: str) -> LoadedModel:
    program = load_program(path)
    try:
        module = program.module()
    except Exception as e:  # torch rejects the program's signature/example inputs
        raise _error(path, "torch cannot build a runnable module from the program "
                           f"({type(e).__name__}: {e})") from e
    for sub in module.modules():   # exported graphs refuse .eval(); the graph is eval-mode
        sub.training = False
    example = program.example_inputs
    args = tuple(example[0]) if example is not None else None
    shape = tuple(args[0].shape[1:]) if args and args[0].dim() >= 1 else None
    return LoadedModel(module, program, args, shape, "pt2", text)


# --------------------------------------------------------------------------- state dicts

def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict (``str -> tensor``) from ``.pt``/``.pth`` (``torch.load`` with
    ``weights_only=True``; a dict nested under ``"state_dict"`` or ``"model"`` is
    unwrapped) or ``.safetensors`` (``safetensors.torch.load_file``).

    Refuses anything that is not a mapping of names to tensors, and NaN/Inf values.
    """
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        state = _read_safetensors(path)
    elif suffix in (".pt", ".pth"):
        state = _unwrap_state_dict(path, _torch_load_file(path))
    else:
        raise _error(path, f"unsupported state-dict suffix {suffix or '(none)'!r} "
                           f"(expected one of {', '.join(STATE_DICT_SUFFIXES)})")
    _check_finite(path, state.items())
    return state


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` (a JSON header plus raw bytes: no code runs)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, ValueError, OSError) as e:
        what = _describe_content(_head(path))
        looks = " (it looks like a text file)" if what == "a text file" else ""
        raise _error(path, f"is not a valid .safetensors file{looks}: corrupt, truncated "
                           f"or another format ({e})") from e


def _torch_load_file(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with the failures named."""
    head = _head(path)
    if not head.startswith((b"PK\x03\x04", b"\x80")):
        raise _error(path, f"is not a torch.save checkpoint: it is {_describe_content(head)}")
    try:
        with open(path, "rb") as f:
            return _restricted_load(f, "the checkpoint")
    except _Bad as e:
        raise _error(path, str(e)) from e.__cause__


def _restricted_load(stream: io.IOBase, what: str) -> Any:
    """``torch.load(stream, map_location="cpu", weights_only=True)``: torch's restricted
    unpickler, which rebuilds tensors and plain containers and refuses any other global."""
    try:
        return torch.load(stream, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise _Bad(f"{what} would need unpickling arbitrary objects (it references "
                       f"{found.group(1)}); refused. Save a plain state_dict or a .pt2 "
                       "program instead") from e
        raise _Bad(f"{what} is not a valid torch.save pickle ({_pickle_reason(e)})") from e
    except MemoryError:
        raise
    except Exception as e:  # torch.load on damaged data raises anything
        if "PytorchStreamReader" in str(e) or isinstance(e, EOFError):
            raise _Bad(f"{what} is corrupt or truncated ({str(e).split('.')[0]})") from e
        raise _Bad(f"{what} is not a valid torch.save file ({type(e).__name__}: {e})") from e


def _pickle_reason(e: Exception) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[-2] if len(lines) >= 2 else (lines[0] if lines else type(e).__name__)


def _unwrap_state_dict(path: Path, obj: Any) -> dict[str, torch.Tensor]:
    """The ``str -> tensor`` mapping in ``obj`` (itself, or under "state_dict"/"model")."""
    for _ in range(3):
        if isinstance(obj, Mapping) and not _tensor_mapping(obj):
            inner = next((obj[k] for k in ("state_dict", "model") if k in obj), None)
            if isinstance(inner, Mapping):
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping):
        raise _error(path, f"holds a {type(obj).__name__}, not a state dict (a mapping of "
                           "parameter names to tensors)")
    bad = next(((k, v) for k, v in obj.items()
                if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None or not obj:
        what = "is empty" if bad is None else \
            f"has entry {bad[0]!r} holding a {type(bad[1]).__name__}"
        raise _error(path, f"is not a state dict: the mapping {what} (expected parameter "
                           "names -> tensors, possibly under 'state_dict' or 'model')")
    return {k: v for k, v in obj.items()}


def _tensor_mapping(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                             for k, v in obj.items())


def _check_finite(source: object, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Refuse NaN or Inf in any floating/complex tensor, naming the first one found."""
    for name, t in tensors:
        if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
            continue
        values = t.detach()
        if values.element_size() == 1:          # float8: no isfinite kernel
            values = values.to(torch.float32)
        if not bool(torch.isfinite(values).all()):
            kind = "NaN" if bool(torch.isnan(values).any()) else "Inf"
            raise _error(source, f"tensor {name!r} contains {kind} values; refused")


def _build_arch(path: Path, arch: str | None, options: dict | None) -> nn.Module:
    """``ARCHS[arch](**options)``; refuses a missing or unknown arch and bad options."""
    names = ", ".join(sorted(ARCHS))
    if arch is None:
        raise _error(path, f"a state dict holds only weights: pass --arch (one of {names}) "
                           "to choose the architecture to load it into")
    if arch not in ARCHS:
        raise _error(path, f"unknown arch {arch!r} (choose from {names})")
    options = dict(options or {})
    try:
        return ARCHS[arch](**options)
    except (TypeError, ValueError) as e:
        raise _error(path, f"cannot build {arch} with options {options}: {e}") from e


def load_state_dict_into(model: nn.Module, state: Mapping[str, torch.Tensor], *,
                         source: object = "state dict") -> nn.Module:
    """``model.load_state_dict(state, strict=True)`` after checking keys and shapes, so a
    mismatch is one line listing the missing keys, unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [f"{label} {_listing(items)}" for label, items in
                (("missing keys", missing), ("unexpected keys", unexpected),
                 ("shape mismatches (file vs model)", shapes)) if items]
    if problems:
        raise _error(source, f"does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(dict(state), strict=True)
    return model


def _listing(items: list[str], n: int = 4) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


# --------------------------------------------------------------------------- factories

def load_factory(spec: str) -> nn.Module:
    """Import ``package.module`` from ``spec = "package.module:factory"``, call
    ``factory()`` with no arguments and return the module it builds, in eval mode.

    This runs the user's own code: the ``module:factory`` syntax is how the user says
    they trust it.  Refuses a malformed spec, an unimportable module, a missing or
    non-callable factory, a factory that raises, and a result that is not an nn.Module.
    """
    if not _FACTORY.match(spec):
        raise _error(spec, "a factory must be written package.module:factory")
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise _error(spec, f"cannot import module {module_name!r} ({e})") from e
    except Exception as e:  # the user's module raised while importing
        raise _error(spec, f"importing {module_name!r} raised {type(e).__name__}: {e}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        what = "has no attribute" if factory is None else "has a non-callable"
        raise _error(spec, f"module {module_name!r} {what} {attr!r}")
    try:
        built = factory()
    except Exception as e:
        raise _error(spec, f"{attr}() raised {type(e).__name__}: {e}") from e
    if not isinstance(built, nn.Module):
        raise _error(spec, f"{attr}() returned a {type(built).__name__}, not a torch.nn.Module")
    _check_finite(spec, built.state_dict().items())
    return built.eval()


# --------------------------------------------------------------------------- .pt2 archives

def load_program(path: str | os.PathLike) -> torch.export.ExportedProgram:
    """Read a ``.pt2`` file written by ``torch.export.save`` (torch 2.13 archive layout)
    without unpickling anything but through the restricted unpickler.

    Layout read (under the archive's single root folder): ``archive_format`` (``pt2``),
    ``archive_version`` (``0``), ``byteorder``, ``models/model.json`` (the program as
    JSON), ``data/weights/model_weights_config.json`` and ``data/constants/
    model_constants_config.json`` (name -> entry, dtype, sizes, strides, offset),
    ``data/weights/weight_<i>`` and ``data/constants/tensor_<i>`` (raw little-endian
    storage bytes, rebuilt with ``torch.frombuffer`` + ``as_strided``), and
    ``data/sample_inputs/model.pt`` (example inputs, a torch.save pickle read with
    ``weights_only=True``).  Pickled tensors are read the same restricted way;
    TorchScript/opaque objects, compressed entries, AOTInductor-only archives, non-CPU
    programs, training-mode programs and any program JSON outside the allowlist (see
    module docstring) are refused.  Returns the :class:`~torch.export.ExportedProgram`.
    """
    path = Path(path)
    _check_file(path)
    try:
        with _open_zip(path) as zf:
            return _read_program(path, _Archive(zf))
    except _Bad as e:
        raise _error(path, str(e)) from None
    except RecursionError:
        raise _error(path, "the program JSON is nested too deeply") from None


def _open_zip(path: Path) -> zipfile.ZipFile:
    """Open ``path`` as a zip; any failure after the file could be read means the content
    is not a (sound) zip archive: a damaged directory raises BadZipFile, EOFError,
    UnicodeDecodeError (names), OSError/ValueError (offsets) or NotImplementedError."""
    head = _head(path)          # permission problems surface here, as themselves
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, NotImplementedError) as e:
        raise _error(path, f"is {_describe_content(head)}, not a .pt2 archive "
                           "(torch.export.save writes a zip archive)") from e


class _Archive:
    """Read-only view of a torch zip archive: entries relative to its one root folder."""

    def __init__(self, zf: zipfile.ZipFile):
        infos = zf.infolist()
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise _Bad("the zip archive has duplicate entry names")
        roots = {n.split("/", 1)[0] for n in names}
        nested = len(roots) == 1 and all("/" in n for n in names)
        cut = len(next(iter(roots))) + 1 if nested else 0
        self.zf = zf
        self.infos = {i.filename[cut:]: i for i in infos}

    def has(self, name: str) -> bool:
        return name in self.infos

    def names(self) -> list[str]:
        return list(self.infos)

    def size(self, name: str) -> int:
        return self.infos[name].file_size

    def read(self, name: str) -> bytes:
        """The bytes of entry ``name`` (must exist, be stored uncompressed, pass its CRC)."""
        info = self.infos.get(name)
        if info is None:
            raise _Bad(f"the archive has no entry {name!r}")
        if info.compress_type != zipfile.ZIP_STORED:
            raise _Bad(f"entry {name!r} is compressed; torch writes archives uncompressed "
                       "(refused as a possible zip bomb)")
        try:
            return self.zf.read(info)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as e:
            raise _Bad(f"entry {name!r} is corrupt or truncated ({e})") from None

    def read_text(self, name: str) -> str:
        try:
            return self.read(name).decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad(f"entry {name!r} is not UTF-8 text") from None

    def read_json(self, name: str) -> Any:
        try:
            return json.loads(self.read_text(name))
        except json.JSONDecodeError as e:
            raise _Bad(f"entry {name!r} is not valid JSON ({e})") from None


def _read_program(path: Path, archive: _Archive) -> torch.export.ExportedProgram:
    _check_format(archive)
    name = _model_name(archive)
    weights = _read_payloads(archive, f"data/weights/{name}_weights_config.json",
                             "data/weights/", "weight")
    constants = _read_payloads(archive, f"data/constants/{name}_constants_config.json",
                               "data/constants/", "tensor")
    _check_finite(path, [*weights.items(), *constants.items()])
    example = _read_example_inputs(archive, f"data/sample_inputs/{name}.pt")
    doc = archive.read_json(f"models/{name}.json")
    _check_program(doc)
    program = _deserialize(doc, weights, constants, example)
    _check_eval_mode(program)
    return program


def _check_format(archive: _Archive) -> None:
    """Refuse zips that are not torch.export archives of the 2.13 layout."""
    if not archive.has("archive_format"):
        if archive.has("data.pkl"):
            raise _Bad("is a torch.save checkpoint (a pickle), not a torch.export program; "
                       "rename it to .pt and pass --arch")
        if archive.has("serialized_exported_program.json"):
            raise _Bad("uses the pre-2.8 torch.export layout, which stores weights as "
                       "pickles; re-save it with torch.export.save")
        raise _Bad("is a zip archive but not a torch.export archive (no archive_format entry)")
    if archive.read_text("archive_format") != "pt2":
        raise _Bad("is a zip archive but not a torch.export (pt2) archive")
    version = archive.read_text("archive_version") if archive.has("archive_version") else "?"
    if version != "0":
        raise _Bad(f"has pt2 archive version {version!r}; this loader reads version '0'")
    order = archive.read_text("byteorder").strip() if archive.has("byteorder") else "little"
    if order != "little" or sys.byteorder != "little":
        raise _Bad(f"stores {order}-endian tensors; only little-endian machines and "
                   "archives are supported")


def _model_name(archive: _Archive) -> str:
    """The program's name: ``model`` (what torch.export.save writes), or the only one."""
    models = sorted(n[len("models/"):-len(".json")] for n in archive.names()
                    if n.startswith("models/") and n.endswith(".json"))
    if "model" in models:
        return "model"
    if len(models) == 1 and _IDENT.match(models[0]):
        return models[0]
    if not models and any(n.startswith("data/aotinductor/") for n in archive.names()):
        raise _Bad("holds only AOTInductor-compiled code (shared libraries, which would run "
                   "native code from the file); refused")
    if not models:
        raise _Bad("is a pt2 archive without an exported program (no models/*.json)")
    raise _Bad(f"holds several programs ({', '.join(models)}) and none named 'model'")


# ----------------------------------------------------------------- weights and constants

def _read_payloads(archive: _Archive, config_name: str, folder: str,
                   prefix: str) -> dict[str, torch.Tensor]:
    """Rebuild the tensors listed in a payload config (``{"config": {name: meta}}``).

    Raw entries become ``frombuffer(bytes)[as_strided]``; entries shared by several names
    share one storage (aliasing preserved).  Pickled tensors use the restricted unpickler;
    TorchScript and opaque Python objects are refused.
    """
    what = "weight" if prefix == "weight" else "constant"
    if not archive.has(config_name):
        if archive.has(f"{folder}model.pt"):
            raise _Bad(f"stores its {what}s in the legacy pickled layout; re-save it with "
                       "torch.export.save")
        raise _Bad(f"the archive has no entry {config_name!r}")
    config = archive.read_json(config_name)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise _Bad(f"entry {config_name!r} is not a payload config")
    storages: dict[str, torch.Tensor] = {}
    return {fqn: _payload_tensor(archive, folder, prefix, what, fqn, meta, storages)
            for fqn, meta in entries.items()}


def _payload_tensor(archive: _Archive, folder: str, prefix: str, what: str, fqn: str,
                    meta: Any, storages: dict[str, torch.Tensor]) -> torch.Tensor:
    if not isinstance(fqn, str) or not _FQN.match(fqn):
        raise _Bad(f"{what} name {fqn!r} is not a dotted attribute path")
    if not isinstance(meta, dict) or not isinstance(meta.get("path_name"), str):
        raise _Bad(f"{what} {fqn!r} has a malformed entry in its config")
    entry = meta["path_name"]
    if entry.startswith("custom_obj_"):
        raise _Bad(f"{what} {fqn!r} is a TorchScript object, which only full unpickling "
                   "can rebuild; refused")
    if entry.startswith("opaque_obj_"):
        raise _Bad(f"{what} {fqn!r} is an opaque Python object stored as a pickle; refused")
    if not re.fullmatch(rf"{prefix}_\d+", entry):
        raise _Bad(f"{what} {fqn!r} points at unexpected entry {entry!r}")
    label = f"{what} {fqn!r}"
    if meta.get("use_pickle") is True:
        tensor = _pickled_tensor(archive, folder + entry, label)
        grad = tensor.requires_grad
    else:
        spec = _TensorSpec.parse(meta.get("tensor_meta"), label)
        tensor = _raw_tensor(archive, folder + entry, label, spec, storages)
        grad = meta["tensor_meta"].get("requires_grad") is True
    if meta.get("is_param") is True:
        floating = tensor.is_floating_point() or tensor.is_complex()
        return nn.Parameter(tensor.detach(), requires_grad=grad and floating)
    return tensor.detach()


def _pickled_tensor(archive: _Archive, entry: str, label: str) -> torch.Tensor:
    value = _restricted_load(io.BytesIO(archive.read(entry)), label)
    if type(value) not in (torch.Tensor, nn.Parameter):
        raise _Bad(f"{label} unpickles to a {type(value).__name__}, not a plain tensor")
    return value.detach()


@dataclass(frozen=True)
class _TensorSpec:
    """dtype / sizes / strides / storage offset of a raw tensor entry, validated."""

    dtype: torch.dtype
    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int

    @classmethod
    def parse(cls, meta: Any, label: str) -> "_TensorSpec":
        from torch._export.serde.schema import Layout
        from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE
        if not isinstance(meta, dict):
            raise _Bad(f"{label} has no tensor metadata")
        dtype = _SERIALIZE_TO_TORCH_DTYPE.get(meta.get("dtype"))
        if dtype is None:
            raise _Bad(f"{label} has unsupported dtype code {meta.get('dtype')!r}")
        if meta.get("layout") != Layout.Strided.value:
            raise _Bad(f"{label} is not a dense (strided) tensor")
        _check_device(meta.get("device"), label)
        sizes, strides = _ints(meta.get("sizes"), label), _ints(meta.get("strides"), label)
        offset = _ints([meta.get("storage_offset")], label)[0]
        if len(sizes) != len(strides):
            raise _Bad(f"{label} has {len(sizes)} sizes but {len(strides)} strides")
        return cls(dtype, sizes, strides, offset)

    def extent(self) -> int:
        """Storage elements the view needs (0 for an empty tensor)."""
        if 0 in self.sizes:
            return 0
        return self.offset + 1 + sum((n - 1) * s for n, s in zip(self.sizes, self.strides))


def _ints(values: Any, label: str) -> tuple[int, ...]:
    """``[{"as_int": n}, ...]`` -> ``(n, ...)``: non-negative ints only (no symbols)."""
    if not isinstance(values, list):
        raise _Bad(f"{label} has malformed shape metadata")
    out = []
    for v in values:
        n = v.get("as_int") if isinstance(v, dict) else None
        if type(n) is not int or n < 0:
            raise _Bad(f"{label} has a non-constant or negative size/stride/offset {v!r}")
        out.append(n)
    return tuple(out)


def _check_device(device: Any, label: str) -> None:
    kind = device.get("type") if isinstance(device, dict) else None
    if kind != "cpu":
        raise _Bad(f"{label} lives on device {kind!r}; only CPU programs are supported "
                   "(export the model on the CPU)")


def _raw_tensor(archive: _Archive, entry: str, label: str, spec: _TensorSpec,
                storages: dict[str, torch.Tensor]) -> torch.Tensor:
    """View ``spec`` of the raw storage in ``entry`` (read once per entry)."""
    if entry not in storages:
        storages[entry] = _raw_storage(archive, entry, spec.dtype, label)
    flat = storages[entry]
    if flat.dtype != spec.dtype:
        raise _Bad(f"{label} reads entry {entry!r} as {spec.dtype} but it is shared as "
                   f"{flat.dtype}")
    need = spec.extent()
    if need > flat.numel():
        raise _Bad(f"{label} needs {need} elements of {entry!r} but the entry holds "
                   f"{flat.numel()} (truncated or inconsistent metadata)")
    if need == 0:
        return torch.zeros(spec.sizes, dtype=spec.dtype)
    return flat.as_strided(spec.sizes, spec.strides, spec.offset)


def _raw_storage(archive: _Archive, entry: str, dtype: torch.dtype,
                 label: str) -> torch.Tensor:
    data = archive.read(entry)
    item = torch.empty((), dtype=dtype).element_size()
    if len(data) % item:
        raise _Bad(f"{label}: entry {entry!r} has {len(data)} bytes, not a multiple of "
                   f"the {item}-byte {dtype}")
    if not data:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype)


def _read_example_inputs(archive: _Archive, entry: str
                         ) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]] | None:
    """The stored ``(args, kwargs)`` example inputs (restricted unpickler), or None."""
    if not archive.has(entry) or archive.size(entry) == 0:
        return None
    value = _restricted_load(io.BytesIO(archive.read(entry)), "the example inputs")
    ok = (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], tuple)
          and isinstance(value[1], dict))
    leaves = [*value[0], *value[1].values()] if ok else []
    if not ok or not all(type(t) in (torch.Tensor, nn.Parameter) for t in leaves) or \
            not all(isinstance(k, str) and _IDENT.match(k) for k in value[1]):
        raise _Bad("the example inputs are not (tuple of tensors, dict of tensors)")
    return tuple(t.detach() for t in value[0]), {k: t.detach() for k, t in value[1].items()}


# ----------------------------------------------------------------- program JSON allowlist

# Ops that touch files or the console rather than tensors.
_DENIED_OPS = frozenset({"from_file", "save", "_print", "warn"})
_ALLOWED_INPUT_SPECS = frozenset({"user_input", "parameter", "buffer", "tensor_constant"})
_ALLOWED_OUTPUT_SPECS = frozenset({"user_output", "buffer_mutation", "user_input_mutation"})
# Union members whose use the loader refuses: subgraphs, script objects, effect tokens,
# operators passed as values, joint (training) graphs.
_REFUSED_KEYS = frozenset({
    "as_graph", "as_custom_obj", "as_operator", "as_string_to_argument", "custom_obj",
    "token", "constant_input", "loss_output", "gradient_to_parameter",
    "gradient_to_user_input", "parameter_mutation"})
_NAME_KEYS = frozenset({"name", "as_name", "user_input_name"})
_FQN_KEYS = frozenset({"parameter_name", "buffer_name", "tensor_constant_name"})
_TREESPEC_TYPES = frozenset({None, "builtins.tuple", "builtins.list", "builtins.dict",
                             "collections.OrderedDict"})
_ATEN_TARGET = re.compile(r"torch\.ops\.aten\.([A-Za-z_]\w*)\.([A-Za-z_]\w*)\Z")


def _sym_op_names() -> frozenset[str]:
    from torch._export.serde.serialize import _SYM_OPS
    return frozenset(f"{f.__module__}.{f.__name__}" for f in _SYM_OPS)


def _check_program(doc: Any) -> None:
    """Check the program JSON against the allowlist, in place dropping node metadata
    (stack traces, annotations: debugging text that FX pastes into generated source)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("graph_module"), dict):
        raise _Bad("models/model.json is not an exported-program document")
    if doc.get("guards_code"):
        raise _Bad("the program carries guards_code (Python source that torch would exec); "
                   "refused")
    for symbol in doc.get("range_constraints") or {}:
        _check_ident(symbol, "range-constraint symbol")
    _check_verifiers(doc.get("verifiers"))
    module = doc["graph_module"]
    module["metadata"], module["treespec_namedtuple_fields"] = {}, {}
    graph = module.get("graph")
    if not isinstance(graph, dict):
        raise _Bad("the program has no graph")
    _check_graph(graph)
    _check_signature(module.get("signature"))
    _check_module_call_graph(module.get("module_call_graph"))
    _walk(module, 0)


def _check_ident(name: Any, what: str) -> None:
    if not isinstance(name, str) or not _IDENT.match(name):
        raise _Bad(f"{what} {_short(repr(name))} is not a plain identifier; refused")


def _check_verifiers(verifiers: Any) -> None:
    from torch._export.verifier import _VerifierMeta
    known = {"", "ATEN", *_VerifierMeta._registry}
    for v in verifiers or []:
        if v not in known:
            raise _Bad(f"the program names unknown verifier dialect {_short(repr(v))}")


def _check_graph(graph: dict) -> None:
    for i, arg in enumerate(graph.get("inputs") or []):
        if not (isinstance(arg, dict) and list(arg) == ["as_tensor"]):
            kind = next(iter(arg), "?") if isinstance(arg, dict) else type(arg).__name__
            raise _Bad(f"graph input #{i} is {kind!r}; only tensor inputs are supported")
    if graph.get("custom_obj_values"):
        raise _Bad("the graph uses TorchScript custom objects; refused")
    for table in ("tensor_values", "sym_int_values", "sym_float_values", "sym_bool_values"):
        for name in graph.get(table) or {}:
            _check_ident(name, "graph value name")
    sym_ops = _sym_op_names()
    for node in graph.get("nodes") or []:
        if not isinstance(node, dict):
            raise _Bad("the graph has a malformed node")
        _check_target(node.get("target"), node.get("name"), sym_ops)
        node["metadata"] = {}


def _check_target(target: Any, node: Any, sym_ops: frozenset[str]) -> None:
    """Allow aten operators (except file/console ops) and torch's symbolic-int ops only."""
    if target in sym_ops:
        return
    label = f"node {_short(repr(node))} calls {_short(repr(target))}"
    found = _ATEN_TARGET.match(target) if isinstance(target, str) else None
    if found is None or any(part.startswith("__") for part in found.groups()):
        raise _Bad(f"{label}, which is not an aten operator; refused")
    if found.group(1) in _DENIED_OPS:
        raise _Bad(f"{label}, which reads/writes files or the console; refused")
    packet = getattr(torch.ops.aten, found.group(1), None)
    if not isinstance(getattr(packet, found.group(2), None), torch._ops.OpOverload):
        raise _Bad(f"{label}, which this torch does not know")


def _check_signature(signature: Any) -> None:
    if not isinstance(signature, dict):
        raise _Bad("the program has no graph signature")
    for specs, allowed, what in ((signature.get("input_specs"), _ALLOWED_INPUT_SPECS, "input"),
                                 (signature.get("output_specs"), _ALLOWED_OUTPUT_SPECS,
                                  "output")):
        for spec in specs or []:
            kind = next(iter(spec), None) if isinstance(spec, dict) else None
            if kind not in allowed:
                raise _Bad(f"the signature has a {_short(repr(kind))} {what}; supported: "
                           f"{', '.join(sorted(allowed))}")


def _check_module_call_graph(entries: Any) -> None:
    for entry in entries or []:
        if not isinstance(entry, dict):
            raise _Bad("the module call graph is malformed")
        fqn = entry.get("fqn")
        if fqn != "" and not (isinstance(fqn, str) and _FQN.match(fqn)):
            raise _Bad(f"module path {_short(repr(fqn))} is not a dotted attribute path")
        signature = entry.get("signature")
        if signature is None:
            continue
        if not isinstance(signature, dict):
            raise _Bad("the module call graph is malformed")
        for key in ("in_spec", "out_spec"):
            _check_treespec(signature.get(key))
        for name in signature.get("forward_arg_names") or []:
            _check_ident(name, "forward argument name")


def _check_treespec(text: Any) -> None:
    """A pytree spec (JSON string) of tuples/lists/dicts only, without enum contexts
    (torch would import the module an enum context names)."""
    try:
        protocol, spec = json.loads(text) if isinstance(text, str) else (None, None)
    except (json.JSONDecodeError, TypeError, ValueError):
        raise _Bad("a pytree spec in the module call graph is not valid JSON") from None
    if protocol != 1:
        raise _Bad("a pytree spec in the module call graph has an unknown protocol")
    stack = [spec]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict) or not isinstance(node.get("children_spec"), list):
            raise _Bad("a pytree spec in the module call graph is malformed")
        if node.get("type") not in _TREESPEC_TYPES:
            raise _Bad(f"inputs/outputs use pytree type {_short(repr(node.get('type')))}; "
                       "only tuples, lists and dicts are supported")
        _check_context(node.get("context"))
        stack.extend(node["children_spec"])


def _check_context(context: Any) -> None:
    if context is None:
        return
    try:
        value = json.loads(context) if isinstance(context, str) else None
    except json.JSONDecodeError:
        raise _Bad("a pytree context in the module call graph is not valid JSON") from None
    if not isinstance(value, (list, type(None))) or \
            not all(isinstance(k, (str, int)) for k in value or []):
        raise _Bad("a pytree context holds objects (e.g. enums torch would import); refused")


def _walk(value: Any, depth: int) -> None:
    """Apply the per-key rules everywhere in the graph module JSON."""
    if depth > _MAX_DEPTH:
        raise _Bad("the program JSON is nested too deeply")
    if isinstance(value, list):
        for item in value:
            _walk(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_key(key, item)
            _walk(item, depth + 1)


def _check_key(key: str, item: Any) -> None:
    if key in _REFUSED_KEYS and item is not None:
        raise _Bad(f"the program uses {key!r} (subgraphs, script objects, effect tokens or "
                   "training graphs), which this loader does not support")
    if key in _NAME_KEYS and isinstance(item, str):
        _check_ident(item, "name")
    elif key in _FQN_KEYS and not (isinstance(item, str) and _FQN.match(item)):
        raise _Bad(f"{key} {_short(repr(item))} is not a dotted attribute path")
    elif key == "expr_str":
        _check_sym_expr(item)
    elif key in ("device", "as_device") and item is not None:
        _check_device(item, "a graph value")


# ----------------------------------------------------------------- symbolic expressions

# Functions that sympy's srepr of torch shape expressions can call (sympy classes and
# torch.utils._sympy.functions); anything else is refused before sympify (= eval) sees it.
_SYM_CALLS = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs",
    "Mod", "floor", "ceiling", "Equality", "Unequality", "StrictLessThan", "LessThan",
    "StrictGreaterThan", "GreaterThan", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or",
    "Not", "Piecewise", "ExprCondPair", "ITE",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "IntInfinity",
    "NegativeIntInfinity"})
_POW_CALLS = frozenset({"Pow", "PowByNatural", "FloatPow"})
_SYM_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow,
               ast.BitAnd, ast.BitOr)
_SYM_COMPARE = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\Z")
_MAX_EXPR = 4000


def _check_sym_expr(text: Any) -> None:
    """Allow only arithmetic/comparison trees of allowlisted calls, identifiers and
    numbers (what ``sympy.srepr`` of a shape expression looks like)."""
    if not isinstance(text, str) or len(text) > _MAX_EXPR:
        raise _Bad("a symbolic shape expression is not a short string")
    try:
        ok = _sym_ok(ast.parse(text, mode="eval").body)
    except SyntaxError:
        ok = False
    if not ok:
        raise _Bad(f"symbolic shape {_short(repr(text))} is not a plain shape expression "
                   "(allowlisted functions, identifiers and numbers only); refused")


def _sym_ok(node: ast.AST) -> bool:
    """Recursively: calls of allowlisted functions, operators, identifiers, numbers."""
    if isinstance(node, ast.Call):
        return _sym_call_ok(node) and all(_sym_ok(a) for a in node.args if not _is_str(a))
    if isinstance(node, ast.Name):
        return bool(_IDENT.match(node.id)) and not node.id.startswith("_")
    if isinstance(node, ast.Constant):
        return type(node.value) in (int, float, bool) and abs(node.value) <= 2 ** 64
    if isinstance(node, ast.BinOp):
        return isinstance(node.op, _SYM_BINOPS) and _sym_ok(node.left) and \
            _sym_ok(node.right) and (not isinstance(node.op, ast.Pow)
                                     or _small_exponent(node.right))
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, (ast.USub, ast.UAdd)) and _sym_ok(node.operand)
    if isinstance(node, ast.Compare):
        return all(isinstance(op, _SYM_COMPARE) for op in node.ops) and \
            _sym_ok(node.left) and all(_sym_ok(c) for c in node.comparators)
    return False


def _is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _sym_call_ok(node: ast.Call) -> bool:
    """An allowlisted function; a string only as the first argument of Symbol (a name) or
    Float/Integer/Rational (a number literal); keywords (assumptions, precision) only on
    Symbol/Float with bool/int values; small literal exponents."""
    name = node.func.id if isinstance(node.func, ast.Name) else None
    if name not in _SYM_CALLS:
        return False
    for i, arg in enumerate(node.args):
        if _is_str(arg):
            pattern = _IDENT if name == "Symbol" else _NUMBER
            if i != 0 or name not in ("Symbol", "Float", "Integer", "Rational") or \
                    len(arg.value) > 40 or not pattern.match(arg.value):
                return False
    for kw in node.keywords:
        if name not in ("Symbol", "Float") or kw.arg is None or not _IDENT.match(kw.arg) or \
                not isinstance(kw.value, ast.Constant) or type(kw.value.value) not in (bool, int):
            return False
    if name in _POW_CALLS and len(node.args) == 2:
        return _small_exponent(node.args[1])
    return True


def _small_exponent(node: ast.AST) -> bool:
    """A literal exponent is at most 64 in size (sympy would compute huge powers)."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Integer" and node.args:
        node = node.args[0]
    if isinstance(node, ast.UnaryOp):
        node = node.operand
    if isinstance(node, ast.Constant):
        try:
            return abs(float(node.value)) <= 64
        except (TypeError, ValueError):
            return False
    return True


# ----------------------------------------------------------------- deserialization

def _deserialize(doc: dict, weights: dict[str, torch.Tensor],
                 constants: dict[str, torch.Tensor],
                 example: tuple | None) -> torch.export.ExportedProgram:
    """Torch's own JSON -> ExportedProgram deserializer, fed tensors (never bytes, so it
    never unpickles) and an allowlist-checked document."""
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass
    try:
        serialized = _dict_to_dataclass(schema.ExportedProgram, doc)
    except Exception as e:  # malformed JSON structure (missing fields, wrong types)
        raise _Bad("models/model.json does not follow torch's exported-program schema "
                   f"({type(e).__name__}: {e})") from None
    _check_names_match(serialized, weights, constants)
    try:
        return ExportedProgramDeserializer().deserialize(
            serialized, weights, constants, example)
    except Exception as e:  # torch rejects the (allowlisted) graph as inconsistent
        raise _Bad(f"torch could not rebuild the program from its graph "
                   f"({type(e).__name__}: {_first_line(e)})") from None


def _first_line(e: Exception) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _check_names_match(serialized: Any, weights: Mapping[str, torch.Tensor],
                       constants: Mapping[str, torch.Tensor]) -> None:
    """Every parameter/buffer/constant the signature reads must be in the archive."""
    for spec in serialized.graph_module.signature.input_specs:
        kind, value = spec.type, spec.value
        if kind == "parameter" and value.parameter_name not in weights:
            raise _Bad(f"parameter {value.parameter_name!r} is missing from the archive")
        if kind == "buffer":
            table = weights if value.persistent else constants
            if value.buffer_name not in table:
                raise _Bad(f"buffer {value.buffer_name!r} is missing from the archive")
        if kind == "tensor_constant" and value.tensor_constant_name not in constants:
            raise _Bad(f"constant {value.tensor_constant_name!r} is missing from the archive")


def _check_eval_mode(program: torch.export.ExportedProgram) -> None:
    """Refuse graphs that use batch statistics or dropout randomness (training mode)."""
    for node in program.graph.nodes:
        target = node.target
        if not isinstance(target, torch._ops.OpOverload):
            continue
        for i, arg in enumerate(target._schema.arguments):
            if arg.name not in ("training", "train"):
                continue
            value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name, False)
            if value is True:
                raise _Bad(f"was exported in training mode (node {node.name!r} calls "
                           f"{target} with {arg.name}=True); export after model.eval()")
