"""Fashion-MNIST from local IDX files (nothing is downloaded), registered as ``"fashion-mnist"``.

Zalando's Fashion-MNIST (60 000 + 10 000, 28×28, one channel, 10 classes), e.g. from Debian's
``apt-get install dataset-fashion-mnist``; ``subset=n`` for a stratified sample. :func:`read_idx`
reads the MNIST file format.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..utils import NotFoundError, check_seed
from ._dataset import Dataset
from ._registry import register_dataset
from ._splits import stratified_subset

__all__ = ["read_idx", "load_fashion_mnist", "fashion_mnist_dir", "FASHION_MNIST_CLASSES",
           "FASHION_MNIST_DEBIAN_DIR", "FASHION_MNIST_ENV"]


#: IDX type codes (third byte of the magic number) and the big-endian dtypes they stand for.
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or plain, into a NumPy array.

    Layout: a 4-byte magic number ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian uint32
    sizes d_1 … d_ndim, then d_1·…·d_ndim values of the type (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64; multi-byte values big-endian). Compression is
    recognised by the gzip signature ``1f 8b``, not by the file name. The values keep their type
    (uint8 images stay uint8, 1 byte a pixel), in native byte order.

    Shapes:
        returns (d_1, …, d_ndim), e.g. (N, 28, 28) uint8 for an image file, (N,) uint8 for labels

    Raises :class:`~bgcn.utils.NotFoundError` for a missing file and ``ValueError`` naming the
    file for a bad magic number, an unknown type code, a truncated file or trailing bytes.

    Taught in: chapter 12 (chapters/12_real_extractor_1_frozen.md)
    """
    import gzip
    import zlib

    p = Path(path).expanduser()
    if not p.is_file():
        raise NotFoundError(f"IDX file {str(p)!r} does not exist")
    with open(p, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(p, "rb") if gz else open(p, "rb")) as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[:2] != b"\x00\x00":
                raise ValueError(f"IDX file {str(p)!r} has magic number {magic.hex() or '(empty)'}, not "
                                 f"00 00 <type> <ndim>; it is not an IDX file (or it is corrupt)")
            code, ndim = magic[2], magic[3]
            if code not in _IDX_DTYPES:
                raise ValueError(f"IDX file {str(p)!r} has unknown type code 0x{code:02x}; known: "
                                 f"{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}")
            if ndim == 0:
                raise ValueError(f"IDX file {str(p)!r} declares 0 dimensions; it is corrupt")
            head = f.read(4 * ndim)
            if len(head) < 4 * ndim:
                raise ValueError(f"IDX file {str(p)!r} is truncated inside its header ({ndim} sizes "
                                 f"expected); download or reinstall it")
            dims = tuple(int(d) for d in np.frombuffer(head, dtype=">u4"))
            dtype = _IDX_DTYPES[code]
            out = np.empty(dims, dtype=dtype.newbyteorder("="))
            want = out.nbytes
            buf = memoryview(out.reshape(-1).view(np.uint8))
            got = 0
            while got < want:
                n = f.readinto(buf[got:])
                if not n:
                    break
                got += n
            if got < want:
                raise ValueError(f"IDX file {str(p)!r} is truncated: its header declares shape {dims} "
                                 f"({want} bytes of data) but only {got} bytes follow; download or "
                                 f"reinstall it")
            if f.read(1):
                raise ValueError(f"IDX file {str(p)!r} has bytes after the {want} bytes of data its "
                                 f"header (shape {dims}) declares; it is corrupt")
    except (EOFError, OSError, zlib.error) as e:
        raise ValueError(f"IDX file {str(p)!r} could not be read ({type(e).__name__}: {e}); it is "
                         f"truncated or corrupt; download or reinstall it") from e
    if dtype.byteorder == ">" and np.little_endian:  # the bytes were read as stored: swap them
        out = out.byteswap()
    return out


#: The ten Fashion-MNIST classes, label c = position in this list.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
#: Where Debian's package ``dataset-fashion-mnist`` puts the IDX files.
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
#: Environment variable naming a folder with the four Fashion-MNIST IDX files.
FASHION_MNIST_ENV = "BGCN_FASHION_MNIST_DIR"
_FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_FASHION_SPLITS = ("train", "test", "all")


def fashion_mnist_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the Fashion-MNIST IDX files: ``data_dir``, else ``$BGCN_FASHION_MNIST_DIR``,
    else Debian's ``/usr/share/datasets/fashion-mnist``. The folder is not checked here.

    Shapes: none.

    Taught in: chapter 12 (chapters/12_real_extractor_1_frozen.md)
    """
    if data_dir is not None:
        if not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(f"data_dir must be a folder path (str or Path) or None, got {type(data_dir).__name__}")
        return Path(data_dir).expanduser()
    env = os.environ.get(FASHION_MNIST_ENV, "").strip()
    return Path(env).expanduser() if env else Path(FASHION_MNIST_DEBIAN_DIR)


def _fashion_file(folder: Path, stem: str, source: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise NotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {str(folder)!r} ({source}). Install the Debian "
        f"package with `sudo apt-get install dataset-fashion-mnist` (files in {FASHION_MNIST_DEBIAN_DIR}), "
        f"or put the four IDX files (train-/t10k-images-idx3-ubyte, train-/t10k-labels-idx1-ubyte, "
        f"gzip'd or not) in a folder and name it with data_dir=... (CLI: --data-dir) or the "
        f"environment variable {FASHION_MNIST_ENV}")


@register_dataset("fashion-mnist", cli_options={"split": "--split", "subset": "--subset", "data_dir": "--data-dir"},
                  batch_options={"dtype": torch.uint8})
def load_fashion_mnist(split: str = "train", subset: int | None = None, seed: int = 0,
                       data_dir: str | os.PathLike | None = None,
                       dtype: torch.dtype = torch.float32) -> Dataset:
    """Fashion-MNIST (Zalando): 28×28 grey images of 10 kinds of clothing, from local IDX files.

    ``split`` is ``"train"`` (60 000 images), ``"test"`` (10 000) or ``"all"`` (70 000, train then
    test). ``subset=n`` keeps a stratified sample of n of them (:func:`stratified_subset`: n / 10
    per class as far as possible, seeded by ``seed``, in the files' order). The files are looked up
    in ``data_dir``, else ``$BGCN_FASHION_MNIST_DIR``, else Debian's location
    (``apt-get install dataset-fashion-mnist``); nothing is downloaded.

    ``dtype=torch.float32`` (the default, like every other dataset) gives x = pixel / 255 in
    [0, 1]; any floating dtype works the same. ``dtype=torch.uint8`` keeps the raw pixels 0…255
    (N·784 bytes: 47 MB for the training split instead of 188 MB in float32); wrap them with
    :class:`TensorImages` (or :func:`as_image_source`), which divides by 255 one batch at a time.

    Shapes:
        images: (N, 1, 28, 28) float in [0, 1], or uint8 in {0, …, 255} with dtype=torch.uint8
        labels: (N,) long in {0, …, 9};  class_names: :data:`FASHION_MNIST_CLASSES`

    Raises :class:`~bgcn.utils.NotFoundError` (a FileNotFoundError) naming the apt package,
    ``data_dir`` and the environment variable when the files are missing.

    Taught in: chapter 12 (chapters/12_real_extractor_1_frozen.md)
    """
    if not isinstance(split, str) or split.strip().lower() not in _FASHION_SPLITS:
        raise ValueError(f"split={split!r} is not one of {', '.join(map(repr, _FASHION_SPLITS))}")
    split = split.strip().lower()
    if subset is not None and not isinstance(subset, bool) and isinstance(subset, int) \
            and subset < len(FASHION_MNIST_CLASSES):
        raise ValueError(f"subset={subset} is smaller than the {len(FASHION_MNIST_CLASSES)} classes, so some class "
                         f"would have no image; choose subset >= {len(FASHION_MNIST_CLASSES)} (e.g. 100: 10 a class)")
    if not isinstance(dtype, torch.dtype) or not (dtype == torch.uint8 or dtype.is_floating_point):
        raise TypeError(f"dtype must be torch.uint8 (raw pixels) or a floating torch dtype such as "
                        f"torch.float32 (pixels / 255), got {dtype!r}")
    seed = check_seed(seed)
    folder = fashion_mnist_dir(data_dir)
    source = ("data_dir" if data_dir is not None
              else f"${FASHION_MNIST_ENV}" if os.environ.get(FASHION_MNIST_ENV, "").strip()
              else "the Debian default")
    if not folder.is_dir():
        _fashion_file(folder, _FASHION_FILES["train" if split == "all" else split][0], source)  # raises
    parts = ("train", "test") if split == "all" else (split,)
    images_l, labels_l = [], []
    for part in parts:
        fi, fl = (_fashion_file(folder, stem, source) for stem in _FASHION_FILES[part])
        im, lab = read_idx(fi), read_idx(fl)
        if im.dtype != np.uint8 or im.ndim != 3 or lab.dtype != np.uint8 or lab.ndim != 1:
            raise ValueError(f"{str(fi)!r} / {str(fl)!r} hold {im.dtype} {im.shape} / {lab.dtype} {lab.shape}; "
                             f"expected uint8 images (N, H, W) and uint8 labels (N,)")
        if im.shape[0] != lab.shape[0]:
            raise ValueError(f"{str(fi)!r} holds {im.shape[0]} images but {str(fl)!r} {lab.shape[0]} labels")
        if lab.size and int(lab.max()) >= len(FASHION_MNIST_CLASSES):
            raise ValueError(f"{str(fl)!r} holds label {int(lab.max())}; Fashion-MNIST labels are 0..9")
        images_l.append(im)
        labels_l.append(lab)
    images_np = images_l[0] if len(images_l) == 1 else np.concatenate(images_l)
    labels = torch.from_numpy(np.concatenate(labels_l).astype(np.int64))
    images = torch.from_numpy(images_np).unsqueeze(1)  # (N, 1, H, W) uint8
    if subset is not None:
        idx = stratified_subset(labels, subset, seed=seed, num_classes=len(FASHION_MNIST_CLASSES))
        images, labels = images[idx], labels[idx]
    images = images.contiguous() if dtype == torch.uint8 else images.to(dtype).div_(255)
    name = "fashion-mnist" if split == "train" else f"fashion-mnist-{split}"
    return Dataset(images, labels, list(FASHION_MNIST_CLASSES), name)
