"""Output-path helpers for the command line: check where a result will be written, and
write it atomically (a reader never sees a half-written file; a failed write leaves the
old file untouched)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from ..algebra.errors import InvalidTypeError, LaurentnetError
from ..algebra.validate import describe

__all__ = ["OutputPathError", "check_output_path", "atomic_write"]


class OutputPathError(LaurentnetError, ValueError):
    """An output path that must not be written (one line naming the path and why)."""


def check_output_path(out: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (),
                      suffix: str = ".pt2") -> Path:
    """Return ``out`` as a Path after checking it can be written as a result file.

    Refuses: a suffix other than ``suffix`` (the message says ``suffix`` is the output
    format), a folder that does not exist, an existing directory, and a path that is (or,
    via ``os.path.samefile``, is the same file as) one of ``inputs``.
    """
    if not isinstance(out, (str, os.PathLike)):
        raise InvalidTypeError(f"out must be a path (str or os.PathLike), got {describe(out)}")
    path = Path(out)
    if path.suffix.lower() != suffix.lower():
        raise OutputPathError(f"{path}: the output format is {suffix}; give a path "
                              f"ending in {suffix}")
    if path.is_dir():
        raise OutputPathError(f"{path}: is a directory; give a file path ending in {suffix}")
    folder = path.parent
    if not folder.is_dir():
        raise OutputPathError(f"{path}: the output folder {folder} does not exist")
    for source in inputs:
        if _same_file(path, Path(source)):
            raise OutputPathError(f"{path}: the output would overwrite the input {source}")
    return path


def _same_file(a: Path, b: Path) -> bool:
    """True if ``a`` and ``b`` name the same file (same absolute path, or samefile)."""
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:   # one of them does not exist (or is not a path, e.g. a factory spec)
        return False


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file in ``path``'s folder, fsync it and
    ``os.replace`` it onto ``path``.

    On any exception (including KeyboardInterrupt) the temporary file is removed, the
    target is left untouched and the exception propagates.  The temporary file keeps
    ``path``'s suffix (torch.export.save wants ``.pt2``); the result gets the mode of the
    file it replaces, or 0o644.
    """
    target = Path(path)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                suffix=f".tmp{target.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        _fsync(tmp)
        os.chmod(tmp, target.stat().st_mode & 0o7777 if target.exists() else 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
