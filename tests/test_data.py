"""Tests for bgcn.data: datasets, the folder loader, label masks and label checks."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from bgcn.data import (DATASETS, Dataset, check_labels, image_mean_std, label_masks, load_dataset,
                       normalize_images)

# Class counts of scikit-learn's digits (load_digits().target), digits 0..9.
DIGITS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


# ---------------------------------------------------------------------------------------- digits
def test_digits_shape_range_dtype(digits):
    images, labels = digits  # unpacks as exactly two values
    assert images.shape == (1797, 1, 8, 8)
    assert images.dtype == torch.float32
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    assert labels.shape == (1797,) and labels.dtype == torch.long


def test_digits_classes_and_counts(digits):
    assert digits.class_names == [str(c) for c in range(10)]
    assert digits.num_classes == 10 and digits.name == "digits"
    assert torch.bincount(digits.labels).tolist() == DIGITS_COUNTS


def test_digits_values_are_counts_over_16(digits):
    # the raw data are integer counts 0..16; scaling must be exactly /16
    assert torch.equal(digits.images * 16, (digits.images * 16).round())


def test_dataset_is_a_pair_with_attributes(digits):
    assert isinstance(digits, Dataset) and isinstance(digits, tuple) and len(digits) == 2
    assert digits[0] is digits.images and digits[1] is digits.labels
    back = pickle.loads(pickle.dumps(digits))
    assert torch.equal(back.images, digits.images) and back.class_names == digits.class_names
    assert "digits" in repr(digits)


def test_unknown_name_lists_valid(tmp_path):
    with pytest.raises(ValueError) as e:
        load_dataset("mnist")
    for name in DATASETS:
        assert repr(name) in str(e.value)
    assert "folder" in str(e.value)


def test_digits_rejects_options():
    with pytest.raises(TypeError):
        load_dataset("digits", n=10)


# ------------------------------------------------------------------------------------- synthetic
def test_synthetic_shapes():
    ds = load_dataset("synthetic", n=123, num_classes=4, image_size=16, channels=3, seed=1)
    assert ds.images.shape == (123, 3, 16, 16) and ds.images.dtype == torch.float32
    assert ds.labels.shape == (123,) and ds.labels.dtype == torch.long
    assert ds.num_classes == 4 and len(ds.class_names) == 4
    assert set(ds.labels.tolist()) == {0, 1, 2, 3}
    counts = torch.bincount(ds.labels)
    assert int(counts.max() - counts.min()) <= 1  # balanced
    assert float(ds.images.min()) >= 0.0 and float(ds.images.max()) <= 1.0


def test_synthetic_deterministic_and_seed_dependent():
    a = load_dataset("synthetic", n=200, seed=3)
    b = load_dataset("synthetic", n=200, seed=3)
    c = load_dataset("synthetic", n=200, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


def test_synthetic_has_class_structure():
    ds = load_dataset("synthetic", n=2000, num_classes=10, image_size=8, noise=0.5, seed=0)
    x, y = ds.images.flatten(1), ds.labels
    train = torch.arange(len(y)) < 1000
    means = torch.stack([x[train & (y == c)].mean(0) for c in range(10)])
    acc = (torch.cdist(x[~train], means).argmin(1) == y[~train]).float().mean().item()
    assert acc > 0.5  # chance is 0.1
    # noise makes it harder: the task is not trivial at high noise
    hard = load_dataset("synthetic", n=2000, num_classes=10, image_size=8, noise=3.0, seed=0)
    xh = hard.images.flatten(1)
    means_h = torch.stack([xh[train & (hard.labels == c)].mean(0) for c in range(10)])
    acc_h = (torch.cdist(xh[~train], means_h).argmin(1) == hard.labels[~train]).float().mean().item()
    assert acc_h < acc


@pytest.mark.parametrize("kw", [dict(n=0), dict(num_classes=0), dict(noise=-1.0), dict(n=1.5),
                                dict(max_shift=8, image_size=8)])
def test_synthetic_bad_arguments(kw):
    with pytest.raises((ValueError, TypeError)):
        load_dataset("synthetic", **kw)


def test_synthetic_unknown_option_names_valid_ones():
    with pytest.raises(TypeError, match="num_classes"):
        load_dataset("synthetic", classes=3)


# ---------------------------------------------------------------------------------------- folder
def _write_folder(root, sizes=((10, 12), (10, 12), (7, 5))):
    from PIL import Image

    rng = np.random.default_rng(0)
    spec = {"cat": 2, "ant": 3}  # sorted: ant=0, cat=1
    i = 0
    for cls, count in spec.items():
        (root / cls).mkdir(parents=True)
        for j in range(count):
            h, w = sizes[i % len(sizes)]
            i += 1
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"img{j}.{'png' if j % 2 == 0 else 'jpg'}")
    (root / "ant" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    return spec


def test_folder_labels_and_class_names(tmp_path):
    _write_folder(tmp_path)
    ds = load_dataset(str(tmp_path), image_size=6)
    assert ds.class_names == ["ant", "cat"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1]
    assert ds.images.shape == (5, 3, 6, 6) and ds.images.dtype == torch.float32
    assert float(ds.images.min()) >= 0 and float(ds.images.max()) <= 1
    gray = load_dataset(tmp_path, image_size=(4, 5), grayscale=True)  # a Path works too
    assert gray.images.shape == (5, 1, 4, 5)


def test_folder_default_size_is_first_image(tmp_path):
    _write_folder(tmp_path)
    ds = load_dataset(str(tmp_path))
    # the first file in sorted order is ant/img0.png, the third image written: 7×5
    assert ds.images.shape[2:] == (7, 5)


def test_folder_pixel_values(tmp_path):
    from PIL import Image

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    arr = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    Image.fromarray(arr).save(tmp_path / "a" / "x.png")
    Image.fromarray(255 - arr).save(tmp_path / "b" / "y.png")
    ds = load_dataset(str(tmp_path), grayscale=True)
    assert torch.equal(ds.images[0, 0], torch.from_numpy(arr.astype(np.float32) / 255))
    assert torch.equal(ds.images[1, 0], torch.from_numpy((255 - arr).astype(np.float32) / 255))
    rgb = load_dataset(str(tmp_path))  # a grayscale file read as RGB: the same value in 3 channels
    assert rgb.images.shape == (2, 3, 4, 4) and torch.equal(rgb.images[:, :1].expand(-1, 3, -1, -1), rgb.images)


def test_folder_missing(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_dataset(str(missing))
    with pytest.raises(ValueError):  # also a ValueError, per the conventions
        load_dataset(str(missing))


def test_folder_without_classes(tmp_path):
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_dataset(str(tmp_path))


def test_folder_class_without_images(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        load_dataset(str(tmp_path))


def test_folder_corrupt_image_named(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="broken.png"):
        load_dataset(str(tmp_path))


# ------------------------------------------------------------------------------------ label masks
def test_label_masks_counts_disjoint_cover(digits):
    train, val, test = label_masks(digits.labels, 10, val_per_class=5, seed=0)
    for m in (train, val, test):
        assert m.dtype == torch.bool and m.shape == (1797,)
    assert torch.bincount(digits.labels[train], minlength=10).tolist() == [10] * 10
    assert torch.bincount(digits.labels[val], minlength=10).tolist() == [5] * 10
    assert not (train & val).any() and not (train & test).any() and not (val & test).any()
    assert (train | val | test).all()
    assert int(test.sum()) == 1797 - 150


def test_label_masks_default_val_and_zero_val(digits):
    train, val, _ = label_masks(digits.labels, 3)
    assert int(val.sum()) == int(train.sum()) == 30
    _, val0, test0 = label_masks(digits.labels, 3, val_per_class=0)
    assert not val0.any() and int(test0.sum()) == 1797 - 30


def test_label_masks_seeded(digits):
    a = label_masks(digits.labels, 5, seed=7)
    b = label_masks(digits.labels, 5, seed=7)
    c = label_masks(digits.labels, 5, seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_label_masks_errors():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2])
    with pytest.raises(ValueError, match="class 2 has 1"):
        label_masks(labels, 1, val_per_class=1)
    with pytest.raises(ValueError):
        label_masks(labels, 0)
    with pytest.raises(ValueError):
        label_masks(labels.view(2, 4), 1)
    with pytest.raises(TypeError):
        label_masks(labels.float(), 1)
    with pytest.raises(TypeError):
        label_masks(labels.int(), 1)
    with pytest.raises(ValueError, match="test mask is empty"):
        label_masks(torch.tensor([0, 0, 1, 1]), 1, val_per_class=1)


# ---------------------------------------------------------------------------------- check_labels
def test_check_labels():
    labels = torch.tensor([0, 1, 2, 1])
    assert check_labels(labels, 4) is labels
    with pytest.raises(ValueError, match="labels has 4 entries but features have 12 rows"):
        check_labels(labels, 12)
    with pytest.raises(ValueError, match="empty"):
        check_labels(labels, 4, mask=torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError):
        check_labels(labels, 4, mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError):
        check_labels(labels, 4, mask=torch.ones(4))
    with pytest.raises(TypeError):
        check_labels(labels.float(), 4)
    with pytest.raises(ValueError):
        check_labels(torch.tensor([0, -1]), 2)
    with pytest.raises(TypeError):
        check_labels([0, 1], 2)


# ---------------------------------------------------------------------------------- normalisation
def test_normalize_images(digits):
    mean, std = image_mean_std(digits.images)
    assert mean.shape == (1,) and std.shape == (1,)
    z = normalize_images(digits.images)
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.std()) - 1) < 1e-4
    z2 = normalize_images(digits.images, mean=0.5, std=0.5)
    assert torch.allclose(z2, digits.images * 2 - 1)
    with pytest.raises(ValueError):
        normalize_images(digits.images, mean=0.0, std=0.0)


def test_dataset_rejects_mismatched_labels_and_names():
    images = torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match="3 entries but .* 4 rows"):
        Dataset(images, torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer class indices"):
        Dataset(images, torch.zeros(4))
    with pytest.raises(ValueError, match="images must have 4 dimensions"):
        Dataset(torch.rand(4, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="only 2 class_names"):
        Dataset(images, torch.tensor([0, 1, 2, 0]), ["a", "b"])
    ds = Dataset(images, torch.tensor([0, 1, 2, 0]))
    assert ds.class_names == ["0", "1", "2"] and ds.num_classes == 3
