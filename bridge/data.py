"""Data for training the ResNets: nothing here downloads anything.

* :func:`digits` — scikit-learn's 1797 handwritten digits (8×8, shipped inside
  scikit-learn), pixel values ``v / 16`` in ``[0, 1]``; optionally resized to 28×28
  (bilinear, the reference paper's MNIST size) by :func:`resize`;
* :func:`read_idx` / :func:`write_idx` / :func:`load_mnist` — the IDX format of MNIST (and
  Fashion-MNIST) for users who have the files, plain or gzip-compressed;
* :func:`synthetic_signals` — seeded oriented sinusoids plus noise, a classification task of
  any size, channel count and class count;
* :func:`load_data` — one of the above from a short spec (``"digits"``, ``"digits28"``,
  ``"mnist:FOLDER"``, ``"synthetic"``), as used by ``laurentnet train``.

Every loader returns :class:`Splits`: float32 images ``(N, C, H, W)`` and int64 labels for
train, validation and test.

The IDX format (big-endian): 4 magic bytes ``00 00 T D`` — ``T`` the element type (``08``
uint8, ``09`` int8, ``0B`` int16, ``0C`` int32, ``0D`` float32, ``0E`` float64), ``D`` the
number of dimensions — then ``D`` unsigned 32-bit sizes, then ``prod(sizes)`` elements in
C order.  A file that is too short, has another magic, an unknown type or extra bytes is
refused with a :class:`DataError` that names the file and what is wrong.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from ..algebra.errors import LaurentnetError

__all__ = ["DataError", "Splits", "split_tensors", "digits", "resize", "read_idx", "write_idx",
           "load_mnist", "synthetic_signals", "load_data", "IDX_TYPES"]


class DataError(LaurentnetError, ValueError):
    """A data file or data spec that cannot be used (the message names it and why)."""


#: IDX type code -> big-endian numpy dtype
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

_MAX_IDX_BYTES = 4 << 30  # refuse (compressed or not) files that would expand beyond 4 GiB


@dataclass(frozen=True)
class Splits:
    """Train / validation / test images (float32, ``(N, C, H, W)``) and labels (int64)."""
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_shape(self) -> tuple[int, ...]:
        """``(C, H, W)``: one input without the batch axis."""
        return tuple(int(n) for n in self.x_train.shape[1:])

    def dataset(self, split: str) -> TensorDataset:
        """``"train"``, ``"val"`` or ``"test"`` as a ``TensorDataset`` of (image, label)."""
        if split not in ("train", "val", "test"):
            raise DataError(f"split {split!r} not in ('train', 'val', 'test')")
        return TensorDataset(getattr(self, f"x_{split}"), getattr(self, f"y_{split}"))

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}

    def describe(self) -> str:
        s = self.sizes()
        return (f"{self.name}: {'×'.join(map(str, self.image_shape))} images, "
                f"{self.num_classes} classes, {s['train']} train / {s['val']} val / "
                f"{s['test']} test")


def split_tensors(x: torch.Tensor, y: torch.Tensor, fractions: Sequence[float] = (0.6, 0.2, 0.2),
                  seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A seeded random split of ``(x, y)`` into train / val / test by ``fractions``.

    The order is ``torch.randperm(N)`` from a generator seeded with ``seed``; the first
    ``floor(f_train N)`` go to train, the next ``floor(f_val N)`` to validation, the rest to
    test.  Returns ``x_train, y_train, x_val, y_val, x_test, y_test``."""
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
        raise DataError(f"fractions {tuple(fractions)} must be three numbers >= 0 summing to 1")
    n = len(y)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    n_train, n_val = int(fractions[0] * n), int(fractions[1] * n)
    parts = (order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:])
    if min(len(p) for p in parts) == 0:
        raise DataError(f"splitting {n} samples by {tuple(fractions)} leaves a split empty")
    return tuple(t for idx in parts for t in (x[idx], y[idx]))


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of ``(N, C, H, W)`` images to ``size × size``
    (``F.interpolate(mode="bilinear", align_corners=False)``; identity when unchanged)."""
    if size < 1:
        raise DataError(f"size must be positive, got {size}")
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def digits(size: int = 8, seed: int = 0, fractions: Sequence[float] = (0.6, 0.2, 0.2)) -> Splits:
    """scikit-learn's digits as :class:`Splits`: ``1 × size × size`` images (8 is the
    original; e.g. 28 is bilinear upsampling), values ``pixel / 16`` in ``[0, 1]``, 10
    classes, split by :func:`split_tensors` (default 60/20/20: 1078/359/360)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # a dependency of the package, but say what to do if it is missing
        raise DataError("the digits data set ships with scikit-learn: pip install "
                        "scikit-learn") from None
    raw = load_digits()
    x = torch.from_numpy(raw.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(raw.target.astype(np.int64))
    parts = split_tensors(resize(x, size), y, fractions, seed)
    return Splits(f"digits {size}×{size}", *parts, num_classes=10)


# ------------------------------------------------------------------------------- IDX


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic ``1f 8b``."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        if head != b"\x1f\x8b":
            if os.fstat(f.fileno()).st_size > max_bytes:
                raise DataError(f"{path}: larger than the {max_bytes:,}-byte limit")
            return f.read()
        try:
            with gzip.GzipFile(fileobj=f) as z:
                data = z.read(max_bytes + 1)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: a damaged gzip file ({exc})") from None
    if len(data) > max_bytes:
        raise DataError(f"{path}: decompresses to more than the {max_bytes:,}-byte limit")
    return data


def read_idx(path: str | os.PathLike, max_bytes: int = _MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file (plain or gzip) into a native-endian numpy array of its shape.

    Checks, each refused with a :class:`DataError` naming the file: the 4-byte magic
    (``00 00``, a known type code, at least one dimension), the header length, and that
    exactly ``prod(sizes) · itemsize`` data bytes follow (truncated or over-long files)."""
    path = Path(path)
    data = _read_bytes(path, max_bytes)
    if len(data) < 4:
        raise DataError(f"{path}: truncated: {len(data)} bytes, an IDX header needs at least 4")
    zero1, zero2, code, ndim = data[:4]
    if zero1 or zero2:
        raise DataError(f"{path}: not an IDX file: magic bytes {data[:4].hex(' ')} (an IDX file "
                        "starts with 00 00, a type code and the number of dimensions)")
    if code not in IDX_TYPES:
        known = ", ".join(f"{c:02x} {t.name}" for c, t in IDX_TYPES.items())
        raise DataError(f"{path}: unknown IDX type code {code:02x} (known: {known})")
    if ndim == 0:
        raise DataError(f"{path}: the IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated header: {ndim} dimensions need {header} bytes, "
                        f"the file has {len(data)}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_TYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    got = len(data) - header
    if got < expected:
        raise DataError(f"{path}: truncated: shape {shape} of {dtype.name} needs {expected:,} "
                        f"data bytes, only {got:,} follow the header")
    if got > expected:
        raise DataError(f"{path}: {got - expected:,} bytes after the {expected:,} data bytes "
                        f"that shape {shape} of {dtype.name} needs (not an IDX file, or a "
                        "damaged one)")
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header)
    return array.reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``)."""
    array = np.asarray(array)
    codes = {t.newbyteorder("=").str[1:]: c for c, t in IDX_TYPES.items()}
    key = array.dtype.newbyteorder("=").str[1:]
    if key not in codes:
        raise DataError(f"IDX has no type for {array.dtype} (use uint8, int8, int16, int32, "
                        "float32 or float64)")
    if not 1 <= array.ndim <= 255:
        raise DataError(f"IDX needs 1 to 255 dimensions, the array has {array.ndim}")
    code = codes[key]
    payload = (bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
               + np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes())
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


_MNIST_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
                "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def _find(folder: Path, stem: str) -> Path:
    """``stem``, ``stem.gz`` or the ``train-images.idx3-ubyte`` spelling, in ``folder``."""
    dotted = stem.replace("-idx", ".idx")
    candidates = [folder / f"{s}{ext}" for s in (stem, dotted) for ext in ("", ".gz")]
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(f"{folder}: no {stem} file (looked for "
                    f"{', '.join(c.name for c in candidates)})")


def _images_labels(images: np.ndarray, labels: np.ndarray, where: str) -> tuple[torch.Tensor, ...]:
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{where}: images must be (N, H, W) and labels (N,), got "
                        f"{images.shape} and {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or not np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"{where}: labels must be non-negative integers")
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    x = torch.from_numpy(images.astype(np.float32) / scale).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_mnist(folder: str | os.PathLike, val_fraction: float = 1 / 6, seed: int = 0,
               limit: int | None = None) -> Splits:
    """MNIST-format IDX files in ``folder`` (``train-images-idx3-ubyte`` etc., optionally
    ``.gz``) as :class:`Splits`: the training files split into train and validation
    (``val_fraction``, seeded), the ``t10k`` files the test set; uint8 pixels scaled to
    ``[0, 1]``.  ``limit`` keeps the first ``limit`` images of each file (quick runs)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (give the folder holding the MNIST IDX files)")
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    arrays = {k: read_idx(_find(folder, stem)) for k, stem in _MNIST_FILES.items()}
    cut = slice(None) if limit is None else slice(0, int(limit))
    x_tr, y_tr = _images_labels(arrays["train_images"][cut], arrays["train_labels"][cut],
                                f"{folder} (train)")
    x_te, y_te = _images_labels(arrays["test_images"][cut], arrays["test_labels"][cut],
                                f"{folder} (t10k)")
    order = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(int(seed)))
    n_val = max(1, int(val_fraction * len(y_tr)))
    val, train = order[:n_val], order[n_val:]
    classes = int(max(y_tr.max(), y_te.max())) + 1
    return Splits(f"MNIST IDX ({folder.name})", x_tr[train], y_tr[train], x_tr[val], y_tr[val],
                  x_te, y_te, num_classes=max(classes, 2))


# ------------------------------------------------------------------------- synthetic


def synthetic_signals(n: int = 1200, size: int = 8, channels: int = 1, classes: int = 4,
                      noise: float = 0.3, seed: int = 0,
                      fractions: Sequence[float] = (0.6, 0.2, 0.2)) -> Splits:
    """Oriented sinusoids: class ``c`` is the orientation ``θ_c = π c / classes``.

    Sample ``i`` of class ``c`` is, in channel ``k``,
    ``g_k sin(2π f (u cos θ_c + v sin θ_c) / size + φ) + noise · ε``, with ``u, v`` the pixel
    indices, ``f ~ U(1, 2.5)`` cycles per image, ``φ ~ U(0, 2π)``, channel gains
    ``g_k ~ U(0.5, 1.5)`` and ``ε ~ N(0, 1)`` per pixel; labels ``i mod classes`` (balanced).
    All draws from a generator seeded with ``seed``."""
    if n < 3 or size < 2 or channels < 1 or classes < 2 or not (noise >= 0 and math.isfinite(noise)):
        raise DataError(f"synthetic_signals needs n >= 3, size >= 2, channels >= 1, classes >= 2 "
                        f"and a finite noise >= 0 (got n={n}, size={size}, channels={channels}, "
                        f"classes={classes}, noise={noise})")
    g = torch.Generator().manual_seed(int(seed))
    labels = torch.arange(n) % classes
    theta = math.pi * labels.double() / classes
    freq = 1 + 1.5 * torch.rand(n, generator=g, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    gain = 0.5 + torch.rand(n, channels, generator=g, dtype=torch.float64)
    u = torch.arange(size, dtype=torch.float64)
    proj = (u[None, :, None] * torch.cos(theta)[:, None, None]
            + u[None, None, :] * torch.sin(theta)[:, None, None])           # (n, H, W)
    wave = torch.sin(2 * math.pi * freq[:, None, None] * proj / size + phase[:, None, None])
    x = gain[:, :, None, None] * wave[:, None] + noise * torch.randn(
        n, channels, size, size, generator=g, dtype=torch.float64)
    parts = split_tensors(x.float(), labels.long(), fractions, seed)
    return Splits(f"synthetic signals {size}×{size}", *parts, num_classes=classes)


def load_data(spec: str, seed: int = 0) -> Splits:
    """``"digits"`` (8×8), ``"digits28"`` (resized to 28×28), ``"digitsN"`` (N×N),
    ``"mnist:FOLDER"`` (IDX files) or ``"synthetic"`` (:func:`synthetic_signals` defaults)."""
    if spec.startswith("mnist:"):
        return load_mnist(spec.removeprefix("mnist:"), seed=seed)
    if spec == "synthetic":
        return synthetic_signals(seed=seed)
    if spec.startswith("digits"):
        rest = spec.removeprefix("digits") or "8"
        if rest.isdigit() and int(rest) >= 1:
            return digits(int(rest), seed=seed)
    raise DataError(f"data {spec!r} not understood: use digits, digits28, mnist:FOLDER or "
                    "synthetic")
