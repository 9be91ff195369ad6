"""Training data (bridge.data): digits, resizing, the IDX reader on good and bad files,
synthetic signals.  IDX files are written here by hand with ``struct`` (independently of
the package's writer)."""
from __future__ import annotations

import gzip
import re
import struct

import numpy as np
import pytest
import torch

from laurentnet.algebra.errors import LaurentnetError
from laurentnet.bridge.data import (DataError, digits, load_data, load_mnist, read_idx, resize,
                                    split_tensors, synthetic_signals, write_idx)


def idx_bytes(array: np.ndarray, code: int, fmt: str) -> bytes:
    """The IDX encoding of ``array`` written out by hand: magic, big-endian sizes, data."""
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + b"".join(struct.pack(">" + fmt, v) for v in array.ravel().tolist())


@pytest.mark.parametrize("dtype,code,fmt", [(np.uint8, 0x08, "B"), (np.int8, 0x09, "b"),
                                            (np.int16, 0x0B, "h"), (np.int32, 0x0C, "i"),
                                            (np.float32, 0x0D, "f"), (np.float64, 0x0E, "d")])
def test_read_idx_every_type(tmp_path, dtype, code, fmt) -> None:
    rng = np.random.default_rng(0)
    array = (rng.integers(-100, 100, size=(3, 4, 5)) if np.issubdtype(dtype, np.signedinteger)
             else rng.integers(0, 255, size=(3, 4, 5)) if dtype == np.uint8
             else rng.standard_normal((3, 4, 5))).astype(dtype)
    path = tmp_path / "a.idx"
    path.write_bytes(idx_bytes(array, code, fmt))
    got = read_idx(path)
    assert got.dtype == dtype and got.shape == (3, 4, 5)
    np.testing.assert_array_equal(got, array)
    # the package's writer produces exactly the hand-built bytes, gzip read back too
    write_idx(tmp_path / "b.idx", array)
    assert (tmp_path / "b.idx").read_bytes() == path.read_bytes()
    write_idx(tmp_path / "c.idx.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "c.idx.gz"), array)


def test_gzip_detected_by_content(tmp_path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "images"  # no .gz suffix: the gzip magic is what counts
    path.write_bytes(gzip.compress(idx_bytes(array, 0x08, "B")))
    np.testing.assert_array_equal(read_idx(path), array)


@pytest.mark.parametrize("content,message", [
    (b"", "truncated: 0 bytes"),
    (b"\x00\x00", "truncated: 2 bytes"),
    (b"\x12\x34\x08\x01" + struct.pack(">I", 1) + b"\x00", "not an IDX file: magic bytes 12 34 08 01"),
    (b"PK\x03\x04rest", "not an IDX file"),
    (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "unknown IDX type code 07"),
    (b"\x00\x00\x08\x00", "declares 0 dimensions"),
    (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "truncated header: 3 dimensions need 16 bytes"),
    (b"\x00\x00\x08\x02" + struct.pack(">II", 2, 3) + b"\x01" * 5, "truncated: shape (2, 3)"),
    (b"\x00\x00\x0d\x01" + struct.pack(">I", 2) + b"\x00" * 7, "needs 8 data bytes, only 7"),
    (b"\x00\x00\x08\x01" + struct.pack(">I", 2) + b"\x01" * 3, "1 bytes after the 2 data bytes"),
])
def test_bad_idx_files_are_refused_clearly(tmp_path, content, message) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(message)) as info:
        read_idx(path)
    assert str(path) in str(info.value) and isinstance(info.value, LaurentnetError)
    assert isinstance(info.value, ValueError)


def test_truncated_gzip_and_missing_file(tmp_path) -> None:
    whole = gzip.compress(idx_bytes(np.zeros((50, 28, 28), np.uint8), 0x08, "B"))
    path = tmp_path / "t.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="damaged gzip|truncated"):
        read_idx(path)
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "nope")


def write_mnist(folder, n_train: int, n_test: int, size: int = 6, gz: bool = False) -> tuple:
    rng = np.random.default_rng(1)
    parts = {}
    for stem, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, size, size)).astype(np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if gz else ""
        for name, arr, rank in (("images", images, 3), ("labels", labels, 1)):
            data = idx_bytes(arr, 0x08, "B")
            file = folder / f"{stem}-{name}-idx{rank}-ubyte{suffix}"
            file.write_bytes(gzip.compress(data) if gz else data)
        parts[stem] = (images, labels)
    return parts


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_folder(tmp_path, gz) -> None:
    parts = write_mnist(tmp_path, 60, 20, gz=gz)
    splits = load_mnist(tmp_path, val_fraction=0.25, seed=3)
    assert splits.sizes() == {"train": 45, "val": 15, "test": 20}
    assert splits.image_shape == (1, 6, 6) and splits.num_classes == 10
    images, labels = parts["t10k"]
    assert torch.equal(splits.x_test, torch.from_numpy(images / 255.0).float().unsqueeze(1))
    assert torch.equal(splits.y_test, torch.from_numpy(labels.astype(np.int64)))
    # train + val are a permutation of the training file
    both = torch.cat([splits.x_train, splits.x_val]).flatten(1)
    ref = torch.from_numpy(parts["train"][0] / 255.0).float().flatten(1)
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, ref.tolist()))
    assert load_data(f"mnist:{tmp_path}").sizes()["test"] == 20


def test_load_mnist_mismatched_and_missing(tmp_path) -> None:
    write_mnist(tmp_path, 10, 10)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(7, np.uint8), 0x08, "B"))
    with pytest.raises(DataError, match="10 images but 7 labels"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="no t10k-labels-idx1-ubyte file"):
        load_mnist(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        load_mnist(tmp_path / "missing")


def test_digits_splits_and_resize() -> None:
    from sklearn.datasets import load_digits
    raw = load_digits()
    d = digits(seed=0)
    assert d.sizes() == {"train": 1078, "val": 359, "test": 360} and d.num_classes == 10
    assert d.image_shape == (1, 8, 8) and d.x_train.dtype == torch.float32
    assert float(d.x_train.min()) == 0.0 and float(d.x_train.max()) == 1.0
    # the splits partition the data set: every image (x 16) is one of sklearn's
    all_x = torch.cat([d.x_train, d.x_val, d.x_test]) * 16
    assert sorted(map(tuple, all_x.flatten(1).round().long().tolist())) == \
        sorted(map(tuple, raw.images.reshape(len(raw.images), -1).astype(int).tolist()))
    assert torch.equal(digits(seed=0).x_val, d.x_val) and not torch.equal(digits(seed=1).x_val, d.x_val)
    big = digits(28, seed=0)
    assert big.image_shape == (1, 28, 28)
    # a constant image stays constant under bilinear resizing; sizes are kept
    assert torch.allclose(resize(torch.full((1, 1, 8, 8), 0.5), 28), torch.full((1, 1, 28, 28), 0.5))
    assert resize(d.x_test, 8) is d.x_test


def test_split_tensors_refuses_bad_fractions() -> None:
    x, y = torch.zeros(10, 1), torch.zeros(10, dtype=torch.long)
    with pytest.raises(DataError, match="summing to 1"):
        split_tensors(x, y, (0.5, 0.2, 0.2))
    with pytest.raises(DataError, match="empty"):
        split_tensors(x, y, (0.95, 0.05, 0.0))


def test_synthetic_signals_are_seeded_oriented_waves() -> None:
    s = synthetic_signals(n=40, size=8, channels=3, classes=4, noise=0.0, seed=5)
    assert s.image_shape == (3, 8, 8) and s.num_classes == 4
    assert torch.equal(s.x_train, synthetic_signals(n=40, size=8, channels=3, classes=4,
                                                    noise=0.0, seed=5).x_train)
    # without noise, class 0 (θ = 0) varies along the rows only, class 2 (θ = π/2) along
    # the columns only: an independent check of the orientation
    for x, y in zip(s.x_train, s.y_train):
        if int(y) == 0:
            assert torch.allclose(x, x[:, :, :1].expand_as(x), atol=1e-6)
        if int(y) == 2:
            assert torch.allclose(x, x[:, :1, :].expand_as(x), atol=1e-6)
    with pytest.raises(DataError, match="classes >= 2"):
        synthetic_signals(classes=1)
    with pytest.raises(DataError, match="not understood"):
        load_data("cifar")
    assert float(load_data("synthetic").x_train.std()) > 0.5  # waves plus noise 0.3
