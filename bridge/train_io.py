"""What a training run writes: resumable checkpoints and the JSON-lines log.

A checkpoint is one ``torch.save`` dict of tensors, numbers, strings, lists and dicts
(``format`` = :data:`CHECKPOINT_FORMAT`, ``epoch`` = epochs completed, ``model`` and
``optimizer`` state dicts, the schedule's state, the history, and what the run was
configured with), written atomically (temporary file, fsync, rename: a run killed while
writing leaves the previous checkpoint intact) and read back with
``torch.load(weights_only=True)``: a checkpoint file is data, never code.

The log holds one JSON object a line: ``{"event": "start", ...}``, one
``{"event": "epoch", ...}`` per epoch, ``{"event": "resume", ...}`` when a run continues,
``{"event": "end", ...}``.  On resume it is rewritten from the checkpoint (the history is
in it), so it never holds an epoch the checkpoint does not.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import torch

from ..algebra.errors import LaurentnetError
from .files import atomic_write

__all__ = ["TrainingError", "CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint",
           "JsonLog", "read_log", "json_safe"]

CHECKPOINT_FORMAT = "laurentnet-train-checkpoint/1"


class TrainingError(LaurentnetError, ValueError):
    """A training run that cannot start or continue (bad configuration, data that do not fit
    the model, an incompatible checkpoint); the message names the problem."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """``torch.save({"format": CHECKPOINT_FORMAT, **state})`` atomically onto ``path``."""
    payload = {"format": CHECKPOINT_FORMAT, **state}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise TrainingError(f"{path}: not a readable training checkpoint ({detail})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: not a laurentnet training checkpoint (no format "
                            f"{CHECKPOINT_FORMAT!r})")
    return state


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as strings (``"inf"``, ``"nan"``), so the log is
    strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class JsonLog:
    """Append-only JSON-lines file (each line flushed and fsynced as it is written)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rewrite(self, records: Iterable[dict[str, Any]]) -> None:
        """Replace the whole file (atomically) by ``records``."""
        text = "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in records)
        atomic_write(self.path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines log."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
