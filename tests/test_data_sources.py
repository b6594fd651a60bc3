"""Tests for the image sources: TensorImages, ImageFolderSource, as_image_source, loader()."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bgcn.data import (ImageFolderSource, ImageSource, TensorImages, as_image_source, load_dataset,
                       load_image_folder)


def _write_pngs(root, sizes=None, gray=False):
    """A folder root/<class>/[sub/]img*.png; sizes[i] is (H, W) of the i-th image written."""
    from PIL import Image

    rng = np.random.default_rng(0)
    layout = {"cat": ["a.png", "sub/b.png", "c.png"], "ant": ["z.png", "x.png"], "bee": ["deep/er/q.png"]}
    i = 0
    for cls, names in layout.items():
        for name in names:
            h, w = sizes[i % len(sizes)] if sizes else (6, 7)
            i += 1
            f = root / cls / name
            f.parent.mkdir(parents=True, exist_ok=True)
            shape = (h, w) if gray else (h, w, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(f)
    (root / "cat" / "readme.txt").write_text("skipped")
    return root


# ---------------------------------------------------------------------------------- TensorImages
def test_tensor_take_equals_indexing_float():
    x = torch.rand(23, 2, 5, 4, dtype=torch.float64)
    src = TensorImages(x)
    assert src.images is x  # no copy
    assert len(src) == 23 and src.image_shape == (2, 5, 4) and src.dtype == torch.float64
    idx = torch.tensor([7, 0, 22, 7, 3])  # any order, repeats allowed
    assert torch.equal(src.take(idx), x[idx])
    img, i = src[5]
    assert i == 5 and torch.equal(img, x[5])
    assert src[-1][1] == 22 and torch.equal(src[-1][0], x[22])
    assert src.take(torch.tensor([], dtype=torch.long)).shape == (0, 2, 5, 4)


def test_tensor_uint8_is_converted_per_batch_exactly():
    raw = torch.arange(256, dtype=torch.uint8).repeat(3).view(12, 1, 8, 8)
    src = TensorImages(raw)
    assert src.images.dtype == torch.uint8 and src.dtype == torch.float32
    idx = torch.arange(12).flip(0)
    got = src.take(idx)
    assert got.dtype == torch.float32
    # exactly pixel / 255 correctly rounded: the float64 quotient rounded once to float32
    ref = (raw[idx].double() / 255).float()
    assert torch.equal(got, ref) and torch.equal(got, raw.float()[idx] / 255)
    assert torch.equal(src[3][0], ref[8])
    assert float(got.min()) == 0.0 and float(got.max()) == 1.0
    assert raw.dtype == torch.uint8 and int(raw.max()) == 255  # the stored tensor is untouched


def test_take_accepts_lists_and_rejects_bad_indices():
    src = TensorImages(torch.rand(5, 1, 2, 2))
    assert torch.equal(src.take([4, 1]), src.images[[4, 1]])
    with pytest.raises(IndexError, match="0..4"):
        src.take(torch.tensor([0, 5]))
    with pytest.raises(IndexError):
        src.take(torch.tensor([-1]))
    with pytest.raises(TypeError, match="integer"):
        src.take(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="1-D"):
        src.take(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(IndexError):
        src[5]
    with pytest.raises(TypeError):
        src[1.0]


@pytest.mark.parametrize("bad,exc", [(torch.rand(3, 4, 4), ValueError),
                                     (torch.zeros(2, 1, 3, 3, dtype=torch.int64), TypeError),
                                     (np.zeros((2, 1, 3, 3)), TypeError)])
def test_tensor_images_rejects(bad, exc):
    with pytest.raises(exc):
        TensorImages(bad)


# -------------------------------------------------------------------------------------- loader
@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_covers_every_index_once_in_order(num_workers):
    raw = torch.randint(0, 256, (23, 1, 3, 3), dtype=torch.uint8)
    src = TensorImages(raw)
    seen, sizes = [], []
    for idx, images in src.loader(batch_size=5, num_workers=num_workers, pin_memory=True):
        assert idx.dtype == torch.long and images.dtype == torch.float32
        assert torch.equal(images, src.take(idx))
        seen.append(idx)
        sizes.append(idx.numel())
    assert sizes == [5, 5, 5, 5, 3]
    assert torch.equal(torch.cat(seen), torch.arange(23))


def test_loader_rejects_bad_arguments():
    src = TensorImages(torch.rand(4, 1, 2, 2))
    for kw, exc in ((dict(batch_size=0), ValueError), (dict(batch_size=2.0), TypeError),
                    (dict(batch_size=2, num_workers=-1), ValueError),
                    (dict(batch_size=2, pin_memory="yes"), TypeError)):
        with pytest.raises(exc):
            src.loader(**kw)
    # a tensor that is not on the CPU (here the "meta" device, standing in for a GPU): no workers
    off_cpu = TensorImages(torch.empty(4, 1, 2, 2, device="meta"))
    assert off_cpu.device.type == "meta"
    with pytest.raises(ValueError, match="num_workers=0"):
        off_cpu.loader(batch_size=2, num_workers=2)


# ---------------------------------------------------------------------------- ImageFolderSource
@pytest.mark.parametrize("image_size,grayscale", [((5, 4), False), (3, True), (None, False)])
def test_folder_source_equals_eager_loader(tmp_path, image_size, grayscale):
    _write_pngs(tmp_path)
    eager = load_image_folder(tmp_path, image_size=image_size, grayscale=grayscale)
    lazy = ImageFolderSource(tmp_path, image_size=image_size, grayscale=grayscale)
    assert len(lazy) == 6 and lazy.image_shape == tuple(eager.images.shape[1:])
    assert lazy.class_names == eager.class_names == ["ant", "bee", "cat"]
    assert torch.equal(lazy.labels, eager.labels) and lazy.labels.dtype == torch.long
    got = lazy.take(torch.arange(len(lazy)))
    assert got.dtype == torch.float32
    assert torch.equal(got.double(), eager.images.double())
    perm = torch.tensor([5, 0, 3])
    assert torch.equal(lazy.take(perm), eager.images[perm])
    img, i = lazy[4]
    assert i == 4 and torch.equal(img, eager.images[4])
    batches = list(lazy.loader(batch_size=4))
    assert torch.equal(torch.cat([b[0] for b in batches]), torch.arange(6))
    assert torch.equal(torch.cat([b[1] for b in batches]), eager.images)


def test_folder_source_is_lazy(tmp_path):
    _write_pngs(tmp_path)
    lazy = ImageFolderSource(tmp_path, image_size=4)
    (tmp_path / "cat" / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n broken after the scan")
    assert len(lazy) == 6  # only paths were read at construction
    bad = lazy.files.index(tmp_path / "cat" / "c.png")
    lazy.take(torch.tensor([j for j in range(6) if j != bad]))  # the other files still decode
    with pytest.raises(ValueError, match="c.png"):
        lazy.take(torch.tensor([bad]))


def test_folder_source_mismatched_sizes_need_image_size(tmp_path):
    _write_pngs(tmp_path, sizes=[(6, 7), (6, 7), (6, 7), (9, 4)])
    lazy = ImageFolderSource(tmp_path)
    # written: cat/a, cat/sub/b, cat/c, ant/z (9x4), ant/x, bee/q; the first in sorted order is ant/x (6x7)
    assert lazy.files[0] == tmp_path / "ant" / "x.png" and lazy.image_shape == (3, 6, 7)
    lazy.take(torch.tensor([0, 2, 3]))
    with pytest.raises(ValueError, match=r"z\.png.*9×4.*image_size"):
        lazy.take(torch.arange(6))
    fixed = ImageFolderSource(tmp_path, image_size=(6, 7)).take(torch.arange(6))
    assert torch.equal(fixed, load_image_folder(tmp_path, image_size=(6, 7)).images)


def test_folder_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        ImageFolderSource(tmp_path / "nope")
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolderSource(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match="has no images"):
        ImageFolderSource(tmp_path)
    with pytest.raises(TypeError):
        ImageFolderSource(123)
    with pytest.raises(TypeError):
        ImageFolderSource(tmp_path, grayscale="yes")
    (tmp_path / "a" / "x.png").write_bytes(b"not an image")
    (tmp_path / "b" / "y.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="x.png"):  # the first file is opened for its size
        ImageFolderSource(tmp_path)
    lazy = ImageFolderSource(tmp_path, image_size=4)
    with pytest.raises(ValueError, match="y.png"):
        lazy[1]


def test_folder_source_gray_pixels_exact(tmp_path):
    from PIL import Image

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    arr = (np.arange(16, dtype=np.uint8).reshape(4, 4) * 17)
    Image.fromarray(arr).save(tmp_path / "a" / "x.png")
    Image.fromarray(255 - arr).save(tmp_path / "b" / "y.png")
    lazy = ImageFolderSource(tmp_path, grayscale=True)
    assert torch.equal(lazy[0][0][0].double(), torch.from_numpy(arr.astype(np.float64) / 255).float().double())
    assert torch.equal(lazy[1][0][0], torch.from_numpy((255 - arr).astype(np.float32) / 255))


# ------------------------------------------------------------------------------ as_image_source
def test_as_image_source(tmp_path):
    x = torch.rand(4, 1, 3, 3)
    s = as_image_source(x)
    assert isinstance(s, TensorImages) and isinstance(s, ImageSource) and s.images is x
    assert as_image_source(s) is s
    u = as_image_source(torch.zeros(2, 1, 3, 3, dtype=torch.uint8))
    assert isinstance(u, TensorImages) and u.take([0]).dtype == torch.float32
    _write_pngs(tmp_path)
    f = ImageFolderSource(tmp_path, image_size=3)
    assert as_image_source(f) is f
    assert isinstance(f, torch.utils.data.Dataset)
    with pytest.raises(TypeError, match="ImageSource.*tensor"):
        as_image_source(np.zeros((2, 1, 3, 3)))
    ds = load_dataset("synthetic", n=10)
    with pytest.raises(TypeError, match="dataset.images"):
        as_image_source(ds)
    with pytest.raises(ValueError, match="4 dimensions"):
        as_image_source(torch.rand(3, 3))
