"""Bad input a user will try (issue 9, item 5): each gives sane behaviour or a one-line error naming
the argument and the fix, never a traceback or a silently wrong result.

Folders are generated with PIL in ``tmp_path``; the CLI runs are tiny (a few epochs on <= 100
generated images, one thread).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bgcn.data import check_every_class_labelled, label_masks, load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _png(path, arr):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _rgb(seed, h=6, w=6):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------ folders
def test_folder_with_one_class_is_refused(tmp_path):
    for i in range(4):
        _png(tmp_path / "cats" / f"{i}.png", _rgb(i))
    with pytest.raises(ValueError, match=r"only one class.*'cats'.*at least 2 classes"):
        load_dataset(str(tmp_path))


def test_images_in_sub_folders_of_a_class_are_all_read(tmp_path):
    files = {"cats/a.png": 0, "cats/2019/b.png": 1, "cats/2019/deep/c.png": 2, "cats/2020/d.png": 3,
             "dogs/e.png": 4, "dogs/x/f.png": 5}
    for rel, seed in files.items():
        _png(tmp_path / rel, _rgb(seed))
    _png(tmp_path / "dogs" / ".thumbs" / "g.png", _rgb(9))  # hidden folder: skipped
    _png(tmp_path / "dogs" / ".h.png", _rgb(9))              # hidden file: skipped
    ds = load_dataset(str(tmp_path))
    assert ds.class_names == ["cats", "dogs"]
    assert ds.labels.tolist() == [0, 0, 0, 0, 1, 1]
    # sorted by relative path inside each class: 2019/b, 2019/deep/c, 2020/d, a; then e, x/f
    order = [1, 2, 3, 0, 4, 5]
    want = torch.stack([torch.from_numpy(_rgb(s).astype(np.float32) / 255).permute(2, 0, 1) for s in order])
    assert torch.equal(ds.images, want)


def _gradient16(h=8, w=8):
    return np.linspace(0, 65535, h * w).round().astype(np.uint16).reshape(h, w)


def test_16_bit_png_scaled_by_65535_not_clipped(tmp_path):
    a = _gradient16()
    _png(tmp_path / "a" / "x.png", a)
    _png(tmp_path / "b" / "y.png", a[::-1].copy())
    from PIL import Image

    with Image.open(tmp_path / "a" / "x.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    for grayscale in (True, False):
        ds = load_dataset(str(tmp_path), grayscale=grayscale)
        assert ds.images.shape == (2, 1 if grayscale else 3, 8, 8)
        want = torch.from_numpy(a.astype(np.float64) / 65535)
        err = (ds.images[0].double() - want).abs().max().item()
        assert err < 1e-6, err  # float32 rounding of values in [0, 1]: <= 6e-8
        assert float((ds.images == 1.0).double().mean()) < 0.05  # was 98 % before


def test_32_bit_int_and_float_images(tmp_path):
    from PIL import Image

    a = _gradient16()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(a.astype(np.int32)).save(tmp_path / "a" / "i.tif")        # mode "I"
    Image.fromarray((a / 65535).astype(np.float32)).save(tmp_path / "b" / "f.tif")  # mode "F"
    ds = load_dataset(str(tmp_path), grayscale=True)
    want = torch.from_numpy(a.astype(np.float64) / 65535)
    assert (ds.images[0, 0].double() - want).abs().max().item() < 1e-6
    assert (ds.images[1, 0].double() - want).abs().max().item() < 1e-6
    Image.fromarray((a / 100).astype(np.float32)).save(tmp_path / "b" / "g.tif")  # values up to 655
    with pytest.raises(ValueError, match=r"g\.tif.*\[0, 1\]"):
        load_dataset(str(tmp_path))


def test_empty_folder_and_loose_images(tmp_path):
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_dataset(str(tmp_path))
    _png(tmp_path / "a.png", _rgb(0))
    _png(tmp_path / "b.png", _rgb(1))
    with pytest.raises(ValueError, match=r"holds 2 image\(s\) but no class sub-folders.*<class_name>"):
        load_dataset(str(tmp_path))


def test_non_image_files_skipped_and_a_class_of_them_refused(tmp_path):
    _png(tmp_path / "a" / "x.png", _rgb(0))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0\1")
    _png(tmp_path / "b" / "y.jpg", _rgb(1))
    ds = load_dataset(str(tmp_path))
    assert ds.labels.tolist() == [0, 1]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "readme.md").write_text("#")
    with pytest.raises(ValueError, match=r"class folder .*'.*c'.* has no images"):
        load_dataset(str(tmp_path))


def test_truncated_image_names_the_file(tmp_path):
    import io

    from PIL import Image

    _png(tmp_path / "a" / "x.png", _rgb(0))
    buf = io.BytesIO()
    Image.fromarray(_rgb(1, 32, 32)).save(buf, format="PNG")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "cut.png").write_bytes(buf.getvalue()[:-40])  # header fine, data cut short
    with pytest.raises(ValueError, match=r"could not read image .*cut\.png.*fix or remove"):
        load_dataset(str(tmp_path))


def test_mixed_sizes_and_modes_are_resized_and_converted(tmp_path):
    _png(tmp_path / "a" / "0.png", _rgb(0, 6, 4))                          # first: sets the size
    _png(tmp_path / "a" / "1.png", _rgb(1, 12, 8))                         # larger RGB
    _png(tmp_path / "b" / "2.png", _rgb(2, 3, 2)[..., 0].copy())           # smaller, grayscale
    _png(tmp_path / "b" / "3.png", _gradient16(6, 4))                      # 16-bit, same size
    ds = load_dataset(str(tmp_path))
    assert ds.images.shape == (4, 3, 6, 4) and ds.images.dtype == torch.float32
    assert 0 <= float(ds.images.min()) and float(ds.images.max()) <= 1
    assert torch.equal(ds.images[0], torch.from_numpy(_rgb(0, 6, 4).astype(np.float32) / 255).permute(2, 0, 1))
    # a 2x downscale of a constant image is that constant: the resize keeps the value scale
    _png(tmp_path / "a" / "4.png", np.full((12, 8, 3), 200, dtype=np.uint8))
    ds = load_dataset(str(tmp_path))
    assert torch.allclose(ds.images[2], torch.full((3, 6, 4), 200 / 255), atol=1e-6)
    assert load_dataset(str(tmp_path), image_size=(5, 7)).images.shape == (5, 3, 5, 7)


# -------------------------------------------------------------------------------- label masks
def test_class_with_too_few_nodes_is_named():
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 3)
    with pytest.raises(ValueError, match=r"class 2 \('zebra'\) has 3.*lower labels_per_class"):
        label_masks(labels, 2, class_names=["ant", "bee", "zebra"])
    with pytest.raises(ValueError, match=r"class 1 has no node"):
        label_masks(torch.tensor([0] * 10 + [2] * 10), 2, num_classes=3)
    # without num_classes a gap is not a class (backward compatible)
    tr, va, te = label_masks(torch.tensor([0] * 10 + [2] * 10), 2)
    assert int(tr.sum()) == 4


def test_mask_without_a_class_is_refused():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    mask = torch.tensor([True, False, True, False, False, False])
    with pytest.raises(ValueError, match=r"train_mask has no labelled node of class 2 \('c'\)"):
        check_every_class_labelled(labels, mask, class_names=["a", "b", "c"])
    mask[4] = True
    check_every_class_labelled(labels, mask)  # every class has one: no error
    with pytest.raises(ValueError, match="class 3"):
        check_every_class_labelled(labels, mask, num_classes=4)
