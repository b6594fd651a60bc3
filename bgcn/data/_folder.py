"""A folder ``path/<class_name>/**/<image>`` of the reader's own images: loaded at once, or lazily.

png, jpg, bmp, tif and webp files at any depth under each class folder, 8- or 16-bit;
:func:`load_image_folder` decodes all of them (the loader :func:`~bgcn.data.load_dataset` uses for a
path), :class:`ImageFolderSource` one per access (the mini-batch engine's, with ``--batch-size``).
A file that cannot be read raises :class:`ImageReadError` naming it, in a ``DataLoader`` worker too.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils import NotFoundError
from .._checks import check_bool, check_int
from ._dataset import Dataset
from ._registry import register_dataset
from ._sources import ImageSource

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "load_image_folder", "ImageFolderSource"]

#: File extensions (lower case) read by the folder loader.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(ValueError):
    """An image file that cannot be read (or has the wrong size); the message names the file.

    Raised in a ``DataLoader`` worker process, it reaches the main process as
    ``ImageReadError("Caught ImageReadError in DataLoader worker process 0.\\nOriginal Traceback …")``
    (torch rebuilds it from that text); the constructor then puts the original message, which
    names the file, first: ``could not read image '…': …; fix or remove the file (in DataLoader
    worker process 0)``. The worker's traceback stays in ``worker_traceback``.

    Shapes: none.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        text = str(message)
        self.path = None if path is None else str(path)
        self.worker_traceback = None
        if text.startswith("Caught ") and "\nOriginal Traceback" in text:
            self.worker_traceback = text
            where = text.split("\n", 1)[0].rstrip(".")
            where = where[where.find(" in ") + 4:] if " in " in where else "a worker process"
            tag = f"{type(self).__name__}: "
            lines = [ln for ln in text.splitlines() if tag in ln]
            if lines:
                text = f"{lines[-1].split(tag, 1)[1]} (in {where})"
        super().__init__(text)


def load_image_folder(path: str | os.PathLike, image_size: int | tuple[int, int] | None = None,
                      grayscale: bool = False) -> Dataset:
    """Read ``path/<class_name>/**/<image>``; classes are the sub-folders, sorted by name.

    Every image under a class folder is read, at any depth (``cats/2019/a.png`` is a cat), in
    sorted order of its relative path; hidden files and folders (``.name``) and files whose
    extension is not in :data:`IMAGE_EXTENSIONS` are skipped. Each image is converted to RGB (or
    to one channel with ``grayscale=True``) and scaled to [0, 1] by the largest value its pixel
    type can hold: ``x = pixel / 255`` for 8-bit images, ``x = pixel / 65535`` for 16-bit ones
    (PIL modes ``"I;16"`` and ``"I"``), float images (mode ``"F"``) as they are if they lie in
    [0, 1]. Images are resized with bilinear resampling to ``image_size`` (an int for square
    images or ``(H, W)``; ``None`` keeps the size of the first image in sorted order and resizes
    the others to it).

    Shapes:
        images: (N, 3 or 1, H, W) float32 in [0, 1]
        labels: (N,) long, label c = index of the class folder in sorted order

    Raises ``FileNotFoundError`` for a missing folder and ``ValueError`` for a folder without class
    sub-folders, a folder with only one class (a classifier needs at least two), a class folder
    without images, or an unreadable image (the file is named). :class:`ImageFolderSource` reads
    the same folder lazily, one image at a time, in the same order and with the same labels.

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    root, class_dirs, files, labels = _scan_image_folder(path)
    size = _check_image_size(image_size)
    arrays: list[np.ndarray] = []
    for f in files:
        a = _decode_image(f, grayscale)
        if size is None:
            size = a.shape[1:]
        arrays.append(_resize_clip(a, size))
    images = torch.from_numpy(np.stack(arrays).astype(np.float32, copy=False)).contiguous()
    return Dataset(images, torch.tensor(labels, dtype=torch.long), [d.name for d in class_dirs],
                   root.name or str(root))


def _scan_image_folder(path: str | os.PathLike) -> tuple[Path, list[Path], list[Path], list[int]]:
    """Check the layout of ``path/<class_name>/**/<image>``; return (root, class_dirs, files, labels).

    ``files`` are in class order, then in sorted order of their path relative to the class folder;
    ``labels[j]`` is the class index of ``files[j]``. Only paths are gathered; nothing is decoded.
    """
    root = Path(path).expanduser()
    layout = "path/<class_name>/<image>.png (one sub-folder per class)"
    if not root.exists():
        raise NotFoundError(f"image folder {str(root)!r} does not exist; expected {layout}")
    if not root.is_dir():
        raise ValueError(f"{str(root)!r} is a file, not a folder; expected {layout}")
    class_dirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                        key=lambda d: d.name)
    if not class_dirs:
        loose = sum(1 for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        what = f"holds {loose} image(s) but no class sub-folders" if loose else "has no class sub-folders"
        raise ValueError(f"image folder {str(root)!r} {what}; put the images of each class in their "
                         f"own folder: {root}/<class_name>/<image>.png")
    if len(class_dirs) < 2:
        raise ValueError(f"image folder {str(root)!r} has only one class sub-folder "
                         f"({class_dirs[0].name!r}); a classifier needs at least 2 classes: put the "
                         f"images of each class in their own folder {root}/<class_name>/")
    files: list[Path] = []
    labels: list[int] = []
    for c, d in enumerate(class_dirs):
        found = _image_files(d)
        if not found:
            raise ValueError(f"class folder {str(d)!r} has no images with extension "
                             f"{'/'.join(IMAGE_EXTENSIONS)} (searched its sub-folders too); add images "
                             f"or remove the folder")
        files.extend(found)
        labels.extend([c] * len(found))
    return root, class_dirs, files, labels


def _check_image_size(image_size: Any) -> tuple[int, int] | None:
    """``image_size`` as ``(H, W)`` (an int means a square), or ``None``."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        return (check_int(image_size, "image_size", 1),) * 2
    try:
        h, w = image_size
    except (TypeError, ValueError):
        raise TypeError(f"image_size must be an int, a (H, W) pair or None, got {image_size!r}") from None
    return (check_int(h, "image_size[0]", 1), check_int(w, "image_size[1]", 1))


def _decode_image(f: Path, grayscale: bool) -> np.ndarray:
    """Decode one image file to float32 (1 or 3, H, W) in [0, 1]; an ImageReadError names a bad file."""
    from PIL import Image

    try:
        with Image.open(f) as im:
            return _image_array(im, grayscale)
    except ValueError as e:
        raise ImageReadError(f"could not read image {str(f)!r}: {e}; fix or remove the file", f) from e
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds of errors on bad files
        raise ImageReadError(f"could not read image {str(f)!r}: {type(e).__name__}: {e}; fix or "
                             f"remove the file", f) from e


def _resize_clip(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (C, H, W) float32 array to ``size`` = (H', W'), channel by channel; clip to [0, 1]."""
    from PIL import Image

    if a.shape[1:] != tuple(size):
        a = np.stack([np.asarray(Image.fromarray(ch).resize((size[1], size[0]), Image.BILINEAR))
                      for ch in a])
    return np.clip(a, 0.0, 1.0, out=a)


def _image_files(class_dir: Path) -> list[Path]:
    """Image files under ``class_dir`` at any depth, sorted by relative path; hidden parts skipped."""
    out = []
    for f in class_dir.rglob("*"):
        rel = f.relative_to(class_dir)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
            out.append(rel)
    return [class_dir / r for r in sorted(out, key=lambda r: r.parts)]


# The largest 16-bit value. PIL mode "I" (32-bit int) holds 16-bit data in practice (older Pillow
# opens 16-bit PNGs as "I"), so it is scaled by 65535 too and values above that are refused.
_MAX_16BIT = 65535.0


def _image_array(im: Any, grayscale: bool) -> np.ndarray:
    """One PIL image as a float32 array (C, H, W) in [0, 1], C = 1 (grayscale) or 3.

    8-bit modes go through PIL's own conversion (``"L"`` or ``"RGB"``) and are divided by 255;
    16-bit (``"I;16*"``, ``"I"``) and float (``"F"``) grayscale images keep their precision:
    x = pixel / 65535 (resp. x = pixel), and are repeated over 3 channels unless ``grayscale``.

    Shapes:
        returns (1 or 3, H, W) float32
    """
    mode = im.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        a = np.asarray(im).astype(np.float64)
        if mode == "F":
            lo, hi = float(a.min()), float(a.max())
            if not (np.isfinite(a).all() and lo >= 0.0 and hi <= 1.0):
                raise ValueError(f"a float (mode 'F') image must hold values in [0, 1], this one spans "
                                 f"[{lo:g}, {hi:g}]")
        else:
            lo, hi = float(a.min()), float(a.max())
            if lo < 0 or hi > _MAX_16BIT:
                raise ValueError(f"a 32-bit integer (mode {mode!r}) image is read as 16-bit data "
                                 f"(0..65535), this one spans [{lo:g}, {hi:g}]; save it as 8- or 16-bit")
            a = a / _MAX_16BIT
        a = a.astype(np.float32)[None]
        return a if grayscale else np.repeat(a, 3, axis=0)
    a = np.asarray(im.convert("L" if grayscale else "RGB"), dtype=np.float32) / 255.0
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))



class ImageFolderSource(ImageSource):
    """A folder ``path/<class_name>/**/<image>`` read lazily: one decoded image per access.

    Only the file paths and labels are held; each access opens the file with PIL and converts it
    exactly as :func:`load_image_folder` does (same files, order, class names and labels, same
    scaling to [0, 1] and bilinear resize to ``image_size``), so ``take(arange(N))`` equals
    ``load_image_folder(path, image_size, grayscale).images``. Unlike the eager loader, with
    ``image_size=None`` every image must have the size of the first one (a file of another size
    raises a ValueError naming it and asking for ``image_size``), since the images are not all
    seen up front.

    Shapes:
        image_shape: (1 or 3, H, W);  labels: (N,) long;  take(indices (b,)) -> (b, C_in, H, W) float32

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md)
    """

    def __init__(self, path: str | os.PathLike, image_size: int | tuple[int, int] | None = None,
                 grayscale: bool = False):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a folder path (str or Path), got {type(path).__name__}")
        check_bool(grayscale, "grayscale")
        root, class_dirs, files, labels = _scan_image_folder(path)
        self.root = root
        self.files = files
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.class_names = [d.name for d in class_dirs]
        self.name = root.name or str(root)
        self.grayscale = grayscale
        self.image_size = _check_image_size(image_size)
        if self.image_size is None:  # the first image's size; PIL reads only the header here
            from PIL import Image

            try:
                with Image.open(files[0]) as im:
                    w, h = im.size
            except Exception as e:  # noqa: BLE001
                raise ImageReadError(f"could not read image {str(files[0])!r}: {type(e).__name__}: {e}; "
                                     f"fix or remove the file", files[0]) from e
            self._size = (int(h), int(w))
        else:
            self._size = self.image_size

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        """C, the number of classes (class folders)."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1 if self.grayscale else 3, *self._size)

    def _read(self, i: int) -> torch.Tensor:
        f = self.files[i]
        a = _decode_image(f, self.grayscale)
        if self.image_size is None and a.shape[1:] != self._size:
            raise ImageReadError(f"image {str(f)!r} is {a.shape[1]}×{a.shape[2]} but the first image "
                                 f"({str(self.files[0])!r}) is {self._size[0]}×{self._size[1]}; pass "
                                 f"image_size=(H, W) to resize every image", f)
        return torch.from_numpy(np.ascontiguousarray(_resize_clip(a, self._size), dtype=np.float32))


register_dataset("folder", from_path=True, cli_options={"image_size": "--image-size"},
                 source=ImageFolderSource)(load_image_folder)
