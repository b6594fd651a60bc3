"""Tests for the IDX reader, the stratified subset and load_dataset("fashion-mnist")."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bgcn.data import (DATASETS, FASHION_MNIST_CLASSES, FASHION_MNIST_DEBIAN_DIR, FASHION_MNIST_ENV,
                       Dataset, TensorImages, fashion_mnist_dir, load_dataset, load_fashion_mnist, read_idx,
                       stratified_subset)
from bgcn.utils import NotFoundError

_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
          np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def _idx_bytes(arr: np.ndarray, big_endian_dtype: str) -> bytes:
    """The IDX encoding written by hand from the format (not by the library)."""
    dt = np.dtype(big_endian_dtype)
    head = bytes([0, 0, _CODES[dt], arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return head + arr.astype(dt).tobytes()


def _write(path: Path, data: bytes, gz: bool) -> Path:
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


# -------------------------------------------------------------------------------------- read_idx
@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_uint8(tmp_path, gz):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    # the name says nothing: compression is recognised by content
    p = _write(tmp_path / "images.bin", _idx_bytes(arr, "u1"), gz)
    back = read_idx(p)
    assert back.dtype == np.uint8 and back.shape == (7, 5, 3)
    assert np.array_equal(back, arr)
    labels = rng.integers(0, 10, 11, dtype=np.uint8)
    assert np.array_equal(read_idx(_write(tmp_path / "l", _idx_bytes(labels, "u1"), gz)), labels)


@pytest.mark.parametrize("dt", ["i1", ">i2", ">i4", ">f4", ">f8"])
def test_idx_multibyte_types_are_big_endian(tmp_path, dt):
    arr = np.array([[0.5, -2.25], [100.0, 3.0]]) if "f" in dt else np.array([[-3, 100], [7, -12]])
    if dt in (">i2", ">i4"):
        arr = arr * 300  # values that need more than one byte
    p = _write(tmp_path / "x.idx", _idx_bytes(arr, dt), gz=False)
    back = read_idx(p)
    assert back.shape == (2, 2) and back.dtype == np.dtype(dt).newbyteorder("=")
    assert np.array_equal(back.astype(np.float64), arr.astype(np.float64))


@pytest.mark.parametrize("gz", [True, False])
def test_idx_corrupt_magic_names_file(tmp_path, gz):
    data = bytearray(_idx_bytes(np.zeros((2, 2, 2), np.uint8), "u1"))
    data[0] = 0x12
    p = _write(tmp_path / "broken-idx3-ubyte", bytes(data), gz)
    with pytest.raises(ValueError, match="broken-idx3-ubyte.*magic number"):
        read_idx(p)
    data = bytearray(_idx_bytes(np.zeros((2, 2, 2), np.uint8), "u1"))
    data[2] = 0x42  # unknown type code
    with pytest.raises(ValueError, match="unknown type code 0x42"):
        read_idx(_write(tmp_path / "badtype", bytes(data), gz))


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated_and_trailing(tmp_path, gz):
    data = _idx_bytes(np.arange(60, dtype=np.uint8).reshape(3, 4, 5), "u1")
    with pytest.raises(ValueError, match=r"short\.idx.*truncated.*60 bytes of data.*59"):
        read_idx(_write(tmp_path / "short.idx", data[:-1], gz))
    with pytest.raises(ValueError, match="truncated inside its header"):
        read_idx(_write(tmp_path / "head.idx", data[:9], gz))
    with pytest.raises(ValueError, match=r"long\.idx.*bytes after"):
        read_idx(_write(tmp_path / "long.idx", data + b"\x00", gz))
    with pytest.raises(ValueError, match="empty"):
        read_idx(_write(tmp_path / "empty.idx", b"", gz))


def test_idx_cut_gzip_stream_names_file(tmp_path):
    full = _write(tmp_path / "full.gz", _idx_bytes(np.arange(5000, dtype=np.uint8) % 7, "u1"), gz=True)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(full.read_bytes()[:-12])  # the compressed stream ends early
    with pytest.raises(ValueError, match=r"cut\.gz.*truncated or corrupt"):
        read_idx(cut)


def test_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere"):
        read_idx(tmp_path / "nothere")


# ----------------------------------------------------------------------------- stratified subset
def _labels(counts, seed=0):
    lab = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    return lab[torch.randperm(lab.numel(), generator=torch.Generator().manual_seed(seed))]


def test_subset_class_counts_equal_as_far_as_possible():
    labels = _labels([50] * 10)
    for n in (10, 100, 105, 7, 500):
        idx = stratified_subset(labels, n, seed=3)
        counts = torch.bincount(labels[idx], minlength=10)
        assert int(counts.sum()) == n and idx.numel() == n
        assert int(counts.max() - counts.min()) <= 1
    # a class with too few members gives all it has; the rest is shared equally among the others
    small = _labels([3, 40, 40, 40])
    counts = torch.bincount(small[stratified_subset(small, 60, seed=0)], minlength=4).tolist()
    assert counts[0] == 3 and sum(counts) == 60 and max(counts[1:]) - min(counts[1:]) <= 1


def test_subset_deterministic_sorted_unique_and_nested():
    labels = _labels([30, 20, 25])
    a = stratified_subset(labels, 31, seed=5)
    assert torch.equal(a, stratified_subset(labels, 31, seed=5))
    assert not torch.equal(a, stratified_subset(labels, 31, seed=6))
    assert a.dtype == torch.long and torch.equal(a, a.sort().values)  # the files' order
    assert a.unique().numel() == a.numel()  # no image twice
    bigger = stratified_subset(labels, 45, seed=5)
    assert set(a.tolist()) <= set(bigger.tolist())  # same seed, larger n: a superset
    assert torch.equal(stratified_subset(labels, 75, seed=5), torch.arange(75))


def test_subset_ignores_and_keeps_global_rng():
    labels = _labels([40] * 5)
    torch.manual_seed(1)
    a = stratified_subset(labels, 23, seed=9)
    state = torch.get_rng_state()
    torch.manual_seed(12345)
    b = stratified_subset(labels, 23, seed=9)
    assert torch.equal(a, b)
    torch.set_rng_state(state)
    stratified_subset(labels, 23, seed=9)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator was not advanced


@pytest.mark.parametrize("n,exc", [(0, ValueError), (201, ValueError), (2.5, TypeError), (True, TypeError)])
def test_subset_bad_n(n, exc):
    with pytest.raises(exc, match="subset"):
        stratified_subset(_labels([40] * 5), n)


# ------------------------------------------------------------------------- a fake IDX dataset dir
def _fake_fashion(folder: Path, n_train=40, n_test=20, gz=True) -> dict:
    """Write the four Fashion-MNIST files with known contents; return them as arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    out = {}
    for part, n in (("train", n_train), ("t10k", n_test)):
        im = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        lab = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(lab)
        sfx = ".gz" if gz else ""
        _write(folder / f"{part}-images-idx3-ubyte{sfx}", _idx_bytes(im, "u1"), gz)
        _write(folder / f"{part}-labels-idx1-ubyte{sfx}", _idx_bytes(lab, "u1"), gz)
        out[part] = (im, lab)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_from_data_dir(tmp_path, gz):
    arrays = _fake_fashion(tmp_path / "fm", gz=gz)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path / "fm", dtype=torch.uint8)
    assert isinstance(ds, Dataset) and ds.class_names == list(FASHION_MNIST_CLASSES)
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert ds.images.shape == (40, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert np.array_equal(ds.images[:, 0].numpy(), arrays["train"][0])
    assert np.array_equal(ds.labels.numpy(), arrays["train"][1]) and ds.labels.dtype == torch.long
    # default float32: exactly pixel / 255 (float64 reference rounded once to float32)
    f = load_dataset("fashion-mnist", split="test", data_dir=str(tmp_path / "fm"))
    assert f.images.dtype == torch.float32 and f.images.shape == (20, 1, 28, 28)
    ref = torch.from_numpy(arrays["t10k"][0].astype(np.float64) / 255).float().unsqueeze(1)
    assert torch.equal(f.images, ref)
    every = load_fashion_mnist("all", data_dir=tmp_path / "fm", dtype=torch.uint8)
    assert every.images.shape[0] == 60 and torch.equal(every.images[40:, 0], torch.from_numpy(arrays["t10k"][0]))
    assert torch.equal(every.labels[:40], ds.labels)


def test_fashion_subset_and_uint8_source(tmp_path):
    _fake_fashion(tmp_path, n_train=200)
    full = load_fashion_mnist(data_dir=tmp_path, dtype=torch.uint8)
    sub = load_fashion_mnist(subset=30, seed=4, data_dir=tmp_path, dtype=torch.uint8)
    assert torch.bincount(sub.labels, minlength=10).tolist() == [3] * 10
    idx = stratified_subset(full.labels, 30, seed=4)
    assert torch.equal(sub.images, full.images[idx]) and torch.equal(sub.labels, full.labels[idx])
    assert torch.equal(load_fashion_mnist(subset=30, seed=4, data_dir=tmp_path, dtype=torch.uint8).images,
                       sub.images)
    f = load_fashion_mnist(subset=30, seed=4, data_dir=tmp_path)
    assert torch.equal(TensorImages(sub.images).take(torch.arange(30)), f.images)  # per-batch /255 agrees


def test_fashion_env_var_and_precedence(tmp_path, monkeypatch):
    _fake_fashion(tmp_path / "env")
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "env"))
    assert fashion_mnist_dir() == tmp_path / "env"
    assert load_dataset("fashion_mnist").images.shape[0] == 40
    assert fashion_mnist_dir(tmp_path / "x") == tmp_path / "x"  # data_dir wins over the variable
    monkeypatch.setenv(FASHION_MNIST_ENV, "")
    assert fashion_mnist_dir() == Path(FASHION_MNIST_DEBIAN_DIR)


def test_fashion_missing_directory_error(tmp_path, monkeypatch):
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    with pytest.raises(NotFoundError) as e:
        load_dataset("fashion-mnist", data_dir=tmp_path / "nowhere")
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    for part in ("apt-get install dataset-fashion-mnist", FASHION_MNIST_ENV, "data_dir", "nowhere",
                 "train-images-idx3-ubyte"):
        assert part in msg, part
    _fake_fashion(tmp_path / "half")
    (tmp_path / "half" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_fashion_mnist("test", data_dir=tmp_path / "half")


def test_fashion_mismatched_files(tmp_path):
    _fake_fashion(tmp_path)
    _write(tmp_path / "train-labels-idx1-ubyte.gz", _idx_bytes(np.zeros(39, np.uint8), "u1"), gz=True)
    with pytest.raises(ValueError, match="40 images but .* 39 labels"):
        load_fashion_mnist(data_dir=tmp_path)


@pytest.mark.parametrize("kw,exc", [(dict(split="val"), ValueError), (dict(dtype=torch.int64), TypeError),
                                    (dict(subset=0), ValueError), (dict(seed=-1), ValueError),
                                    (dict(classes=3), TypeError)])
def test_fashion_bad_arguments(tmp_path, kw, exc):
    _fake_fashion(tmp_path)
    with pytest.raises(exc):
        load_dataset("fashion-mnist", data_dir=tmp_path, **kw)


def test_fashion_is_a_listed_dataset():
    assert "fashion-mnist" in DATASETS


# ----------------------------------------------------------------------------- the Debian package
_DEBIAN = Path(FASHION_MNIST_DEBIAN_DIR)
debian = pytest.mark.skipif(not (_DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
                            reason=f"Fashion-MNIST not installed in {FASHION_MNIST_DEBIAN_DIR} "
                                   f"(sudo apt-get install dataset-fashion-mnist)")


@debian
def test_debian_fashion_mnist(monkeypatch):
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    train = load_dataset("fashion-mnist", dtype=torch.uint8)
    test = load_dataset("fashion-mnist", split="test", dtype=torch.uint8)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255 and int(train.images.min()) == 0
    assert torch.bincount(train.labels, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(test.labels, minlength=10).tolist() == [1000] * 10
    # against an independent decoding of the same file (fixed 16-byte header, as the format says)
    with gzip.open(_DEBIAN / "t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(10000, 28, 28)
    assert np.array_equal(test.images[:, 0].numpy(), raw)


@debian
def test_debian_fashion_subset_float(monkeypatch):
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    sub = load_dataset("fashion-mnist", split="all", subset=2000, seed=0)
    assert sub.images.shape == (2000, 1, 28, 28) and sub.images.dtype == torch.float32
    assert torch.bincount(sub.labels, minlength=10).tolist() == [200] * 10
    assert float(sub.images.min()) == 0.0 and float(sub.images.max()) == 1.0
    raw = load_dataset("fashion-mnist", split="all", subset=2000, seed=0, dtype=torch.uint8)
    assert torch.equal(raw.labels, sub.labels)
    assert torch.equal(sub.images.double(), raw.images.double().div(255).float().double())


def test_a_fashion_subset_smaller_than_the_classes_is_refused(tmp_path):
    """Checked before any file is read: the message names subset, not a missing file."""
    with pytest.raises(ValueError, match="subset=5 is smaller than the 10 classes"):
        load_dataset("fashion-mnist", subset=5, data_dir=tmp_path)
    labels = torch.arange(40) % 10  # the general helper still shares n < C "as far as possible"
    assert torch.unique(labels[stratified_subset(labels, 10)]).numel() == 10
