"""Datasets and label masks: the images that enter the pipeline and which of them carry labels.

Three sources, one return type:

* ``"digits"`` — scikit-learn's bundled handwritten digits (N = 1797, 8×8, one channel, 10 classes),
  shipped with scikit-learn, so nothing is downloaded;
* ``"synthetic"`` — generated images of any size N with a known class structure (for scaling);
* a folder ``path/<class_name>/**/<image>`` of the reader's own images (png, jpg, bmp, tif,
  webp; at any depth under the class folder; 8- or 16-bit).

:func:`load_dataset` returns a :class:`Dataset`, a 2-tuple ``(images, labels)`` that also carries
``class_names`` and ``name`` as attributes, so both ``images, labels = load_dataset("digits")`` and
``ds = load_dataset("digits"); ds.class_names`` work.

The setting is transductive (see the book): the kNN graph spans every image, labelled or not, and
:func:`label_masks` only decides whose labels the loss may see.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

from .utils import NotFoundError, check_seed, check_tensor

__all__ = [
    "Dataset",
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "load_dataset",
    "load_digits",
    "make_synthetic",
    "load_image_folder",
    "label_masks",
    "check_labels",
    "check_every_class_labelled",
    "image_mean_std",
    "normalize_images",
]

#: Names accepted by :func:`load_dataset` besides a folder path.
DATASETS = ("digits", "synthetic")
#: File extensions (lower case) read by the folder loader.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class _ImagesLabels(NamedTuple):
    images: torch.Tensor
    labels: torch.Tensor


class Dataset(_ImagesLabels):
    """A labelled image set: a 2-tuple ``(images, labels)`` with ``class_names`` and ``name`` attached.

    It unpacks as exactly two values, ``images, labels = ds``; ``ds.images``/``ds.labels`` are the
    same tensors, and ``ds.class_names[c]`` names class ``c``.

    Shapes:
        images: (N, C_in, H, W) float32 in [0, 1]   (C_in image channels, not the class count C)
        labels: (N,) long in {0, …, C-1}
        class_names: list of C strings

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """

    # No __slots__: instances get a __dict__ for the two extra attributes.
    def __new__(cls, images: torch.Tensor, labels: torch.Tensor,
                class_names: Sequence[str] | None = None, name: str = ""):
        check_tensor(images, "images", ndim=4, finite=False)
        check_labels(labels, images.shape[0])
        self = super().__new__(cls, images, labels)
        if class_names is None:
            c = int(labels.max()) + 1 if labels.numel() else 0
            class_names = [str(i) for i in range(c)]
        self.class_names = [str(c) for c in class_names]
        if labels.numel() and int(labels.max()) >= len(self.class_names):
            raise ValueError(f"labels go up to {int(labels.max())} but only {len(self.class_names)} class_names "
                             f"were given; give one name per class 0..{int(labels.max())}")
        self.name = str(name)
        return self

    @property
    def num_classes(self) -> int:
        """C, the number of classes (``len(class_names)``)."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C_in, H, W) of one image."""
        return tuple(self.images.shape[1:])

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, images={tuple(self.images.shape)} {self.images.dtype}, "
                f"labels={tuple(self.labels.shape)}, num_classes={self.num_classes})")


# --------------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------------
def load_digits() -> Dataset:
    """scikit-learn's handwritten digits as images in [0, 1].

    The pixel counts 0…16 are divided by 16: ``x = counts / 16``.

    Shapes:
        images: (1797, 1, 8, 8) float32 in [0, 1]
        labels: (1797,) long in {0, …, 9}

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    d = _sk_load_digits()
    images = torch.from_numpy(np.ascontiguousarray(d.images, dtype=np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(np.asarray(d.target, dtype=np.int64))
    return Dataset(images, labels, [str(c) for c in range(10)], "digits")


# --------------------------------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------------------------------
def make_synthetic(n: int = 1000, num_classes: int = 10, image_size: int = 8, channels: int = 1,
                   noise: float = 0.5, max_shift: int = 1, seed: int = 0) -> Dataset:
    """Generated images with a known class structure, any N, deterministic for a seed.

    Each class c gets a smooth random prototype P_c (random low-resolution pattern upsampled to
    ``image_size``, scaled to [-1, 1]). Image i of class y_i is

        x_i = sigmoid( 2 · a_i · shift_{s_i}(P_{y_i}) + 2 · noise · ε_i ),   ε_i ~ N(0, I),

    with a random contrast a_i ∈ [0.5, 1.5] and a random circular shift s_i of at most
    ``max_shift`` pixels per axis. Classes are separable by their prototypes, but the shift and the
    noise make it non-trivial; larger ``noise`` makes it harder. Labels are balanced
    (``n // num_classes`` or one more per class) in a random order.

    Shapes:
        images: (n, channels, image_size, image_size) float32 in (0, 1)
        labels: (n,) long in {0, …, num_classes-1}

    Taught in: chapter 10 (chapters/10_scaling.md)
    """
    n = _check_int(n, "n", 1)
    num_classes = _check_int(num_classes, "num_classes", 1)
    image_size = _check_int(image_size, "image_size", 2)
    channels = _check_int(channels, "channels", 1)
    max_shift = _check_int(max_shift, "max_shift", 0)
    seed = check_seed(seed)
    noise = float(noise)
    if not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise={noise} must be a finite number >= 0")
    if max_shift >= image_size:
        raise ValueError(f"max_shift={max_shift} must be smaller than image_size={image_size}")

    g = torch.Generator().manual_seed(seed)
    # Smooth prototypes: a random (low, low) pattern per class and channel, upsampled bilinearly.
    low = max(2, image_size // 2)
    coarse = torch.randn(num_classes, channels, low, low, generator=g)
    protos = torch.nn.functional.interpolate(coarse, size=(image_size, image_size), mode="bilinear",
                                             align_corners=False)
    flat = protos.flatten(1)
    flat = flat - flat.mean(dim=1, keepdim=True)
    flat = flat / flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-6)
    protos = flat.view_as(protos)

    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    contrast = 0.5 + torch.rand(n, generator=g)
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=g)
    eps = torch.randn(n, channels, image_size, image_size, generator=g)

    base = protos[labels]  # (n, channels, H, W)
    if max_shift > 0:
        # One roll per distinct (dy, dx): at most (2·max_shift+1)² vectorised rolls.
        code = (shifts[:, 0] + max_shift) * (2 * max_shift + 1) + (shifts[:, 1] + max_shift)
        for c in torch.unique(code).tolist():
            idx = (code == c).nonzero(as_tuple=True)[0]
            dy, dx = int(shifts[idx[0], 0]), int(shifts[idx[0], 1])
            base[idx] = torch.roll(base[idx], shifts=(dy, dx), dims=(2, 3))
    images = torch.sigmoid(2.0 * contrast.view(n, 1, 1, 1) * base + 2.0 * noise * eps).float()
    return Dataset(images.contiguous(), labels.long(), [f"class_{c}" for c in range(num_classes)],
                   "synthetic")


# --------------------------------------------------------------------------------------------------
# folder of images
# --------------------------------------------------------------------------------------------------
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
    without images, or an unreadable image (the file is named).

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    from PIL import Image

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
    size: tuple[int, int] | None
    if image_size is None:
        size = None
    elif isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size = (_check_int(image_size, "image_size", 1),) * 2
    else:
        try:
            h, w = image_size  # type: ignore[misc]
        except (TypeError, ValueError):
            raise TypeError(f"image_size must be an int, a (H, W) pair or None, got {image_size!r}") from None
        size = (_check_int(h, "image_size[0]", 1), _check_int(w, "image_size[1]", 1))

    arrays: list[np.ndarray] = []
    labels: list[int] = []
    for c, d in enumerate(class_dirs):
        files = _image_files(d)
        if not files:
            raise ValueError(f"class folder {str(d)!r} has no images with extension "
                             f"{'/'.join(IMAGE_EXTENSIONS)} (searched its sub-folders too); add images "
                             f"or remove the folder")
        for f in files:
            try:
                with Image.open(f) as im:
                    a = _image_array(im, grayscale)
            except ValueError as e:
                raise ValueError(f"could not read image {str(f)!r}: {e}; fix or remove the file") from e
            except Exception as e:  # noqa: BLE001 - PIL raises many kinds of errors on bad files
                raise ValueError(f"could not read image {str(f)!r}: {type(e).__name__}: {e}; fix or "
                                 f"remove the file") from e
            if size is None:
                size = a.shape[1:]
            if a.shape[1:] != size:
                a = np.stack([np.asarray(Image.fromarray(ch).resize((size[1], size[0]), Image.BILINEAR))
                              for ch in a])
            arrays.append(np.clip(a, 0.0, 1.0, out=a))
            labels.append(c)
    images = torch.from_numpy(np.stack(arrays).astype(np.float32, copy=False)).contiguous()
    return Dataset(images, torch.tensor(labels, dtype=torch.long), [d.name for d in class_dirs],
                   root.name or str(root))


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


# --------------------------------------------------------------------------------------------------
# dispatcher
# --------------------------------------------------------------------------------------------------
def load_dataset(name_or_path: str | os.PathLike, **kwargs: Any) -> Dataset:
    """Load a dataset by name or from a folder; returns ``(images, labels)`` as a :class:`Dataset`.

    * ``"digits"`` — :func:`load_digits` (no keyword arguments);
    * ``"synthetic"`` — :func:`make_synthetic` (``n``, ``num_classes``, ``image_size``, ``channels``,
      ``noise``, ``max_shift``, ``seed``);
    * a folder path — :func:`load_image_folder` (``image_size``, ``grayscale``).

    ``images, labels = load_dataset("digits")`` unpacks; ``.class_names`` and ``.name`` ride along.

    Shapes:
        images: (N, C_in, H, W) float32 in [0, 1]
        labels: (N,) long in {0, …, C-1}

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    if isinstance(name_or_path, os.PathLike):
        return load_image_folder(name_or_path, **kwargs)
    if not isinstance(name_or_path, str):
        raise TypeError(f"name_or_path must be a dataset name or a folder path, got {type(name_or_path).__name__}")
    key = name_or_path.strip().lower()
    if key == "digits":
        if kwargs:
            raise TypeError(f"load_dataset('digits') takes no options, got {sorted(kwargs)}")
        return load_digits()
    if key == "synthetic":
        try:
            return make_synthetic(**kwargs)
        except TypeError as e:
            if "unexpected keyword" in str(e):
                raise TypeError(f"{e}; load_dataset('synthetic') accepts n, num_classes, image_size, "
                                f"channels, noise, max_shift, seed") from None
            raise
    p = Path(name_or_path).expanduser()
    if p.exists() or os.sep in name_or_path or (os.altsep and os.altsep in name_or_path):
        return load_image_folder(p, **kwargs)
    raise ValueError(f"unknown dataset {name_or_path!r}; valid names are {', '.join(map(repr, DATASETS))}, "
                     f"or the path of a folder laid out as path/<class_name>/*.png")


# --------------------------------------------------------------------------------------------------
# labels and masks
# --------------------------------------------------------------------------------------------------
def check_labels(labels: Any, n: int | None = None, mask: Any = None, name: str = "labels") -> torch.Tensor:
    """Check class labels (and optionally a node mask) against N rows of features; return ``labels``.

    Labels must be an integer tensor of shape (N,) with values >= 0 (``-1`` style "unknown" labels
    are not allowed; leave such nodes out of the mask instead). A mask must be a bool tensor of
    shape (N,) selecting at least one node.

    Shapes:
        labels: (N,) long
        mask:   (N,) bool, optional

    Taught in: chapter 08 (chapters/08_end_to_end.md)
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(labels).__name__}; "
                        f"use torch.as_tensor(...).long()")
    if labels.dim() != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {labels.dtype}; call .long()")
    if n is not None and labels.shape[0] != int(n):
        raise ValueError(f"{name} has {labels.shape[0]} entries but features have {int(n)} rows; "
                         f"pass one label per image")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"{name} contains negative class index {int(labels.min())}; labels must be 0..C-1")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool torch.Tensor, got "
                            f"{mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__}")
        if mask.shape != labels.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)} but {name} has shape {tuple(labels.shape)}")
        if not bool(mask.any()):
            raise ValueError("the label mask is empty (selects no node); choose at least one labelled node")
    return labels


def label_masks(labels: torch.Tensor, labels_per_class: int, val_per_class: int | None = None,
                seed: int = 0, num_classes: int | None = None,
                class_names: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stratified train / validation / test masks: ``labels_per_class`` labelled nodes per class.

    For every class c, a seeded random permutation of its nodes gives the first
    ``labels_per_class`` to train, the next ``val_per_class`` to validation (``None`` means as many
    as for training, ``0`` gives an empty validation mask) and the rest to test. The masks are
    disjoint and cover all N nodes; the same seed gives the same masks.

    Every class must have ``labels_per_class + val_per_class`` nodes, so that every class has a
    labelled node: a class the loss never sees is never predicted. With ``num_classes`` = C, the
    classes 0..C-1 that have no node at all are refused too (labels with a gap). ``class_names``
    only names the classes in the error messages.

    Shapes:
        labels: (N,) long
        returns: train_mask, val_mask, test_mask, each (N,) bool

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    check_labels(labels)
    if labels.dtype != torch.long:
        raise TypeError(f"labels must be a long tensor, got dtype {labels.dtype}; call .long()")
    if labels.numel() == 0:
        raise ValueError("labels is empty; nothing to split")
    lpc = _check_int(labels_per_class, "labels_per_class", 1)
    vpc = lpc if val_per_class is None else _check_int(val_per_class, "val_per_class", 0)
    seed = check_seed(seed)

    labels_cpu = labels.detach().cpu()
    n = labels_cpu.shape[0]
    c_all = int(labels_cpu.max()) + 1
    if num_classes is not None:
        num_classes = _check_int(num_classes, "num_classes", 1)
        if c_all > num_classes:
            raise ValueError(f"labels go up to {c_all - 1} but num_classes={num_classes}")
        c_all = num_classes
    counts_all = torch.bincount(labels_cpu, minlength=c_all)
    need = lpc + vpc

    def _name(c: int) -> str:
        if class_names is not None and c < len(class_names) and str(class_names[c]) != str(c):
            return f"class {c} ({class_names[c]!r})"
        return f"class {c}"

    if num_classes is not None:
        empty = [c for c in range(c_all) if int(counts_all[c]) == 0]
        if empty:
            raise ValueError(f"{', '.join(_name(c) for c in empty[:5])} has no node at all, so no node can "
                             f"be labelled; remove the class or add examples of it")
    g = torch.Generator().manual_seed(seed)
    train = torch.zeros(n, dtype=torch.bool)
    val = torch.zeros(n, dtype=torch.bool)
    classes = [c for c in range(c_all) if int(counts_all[c]) > 0]
    short = [(c, int(counts_all[c])) for c in classes if int(counts_all[c]) < need]
    if short:
        desc = ", ".join(f"{_name(c)} has {m}" for c, m in short[:5])
        raise ValueError(f"labels_per_class={lpc} + val_per_class={vpc} = {need} examples per class are "
                         f"needed but {desc}; lower labels_per_class/val_per_class or add examples")
    for c in classes:
        idx = (labels_cpu == c).nonzero(as_tuple=True)[0]
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        train[idx[:lpc]] = True
        val[idx[lpc:need]] = True
    test = ~(train | val)
    if not bool(test.any()):
        raise ValueError(f"the test mask is empty: every node is in train or validation "
                         f"(labels_per_class={lpc}, val_per_class={vpc}); lower them")
    dev = labels.device
    return train.to(dev), val.to(dev), test.to(dev)


def check_every_class_labelled(labels: torch.Tensor, train_mask: torch.Tensor, num_classes: int | None = None,
                               class_names: Sequence[str] | None = None, name: str = "train_mask") -> None:
    """Refuse a label mask that leaves a class without a labelled node.

    Class c is labelled when some i has ``train_mask[i]`` and ``labels[i] == c``; the NLL of a
    class with no labelled node is never minimised, so the GCN never predicts it. ``num_classes``
    (default: max label + 1 over all nodes) says which classes must appear.

    Shapes:
        labels: (N,) integer;  train_mask: (N,) bool

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    check_labels(labels, mask=train_mask, name="labels")
    labels_cpu = labels.detach().cpu().long()
    c_all = int(labels_cpu.max()) + 1 if num_classes is None else _check_int(num_classes, "num_classes", 1)
    seen = torch.bincount(labels_cpu[train_mask.detach().cpu()], minlength=c_all)
    missing = [c for c in range(c_all) if int(seen[c]) == 0]
    if missing:
        names = ", ".join(f"{c} ({class_names[c]!r})" if class_names is not None and c < len(class_names)
                          else str(c) for c in missing[:5])
        raise ValueError(f"{name} has no labelled node of class {names}; label at least one node of every "
                         f"class (e.g. label_masks(labels, labels_per_class) draws some from each class)")


# --------------------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------------------
def image_mean_std(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation over images and pixels.

    μ_c = mean_{i,h,w} x_{i,c,h,w},  σ_c = std_{i,h,w} x_{i,c,h,w}.

    Shapes:
        images: (N, C_in, H, W);  returns mean (C_in,), std (C_in,)

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    check_tensor(images, "images", ndim=4)
    return images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3))


def normalize_images(images: torch.Tensor, mean: Any = None, std: Any = None) -> torch.Tensor:
    """Standardise per channel: x̂ = (x − μ_c) / σ_c (μ, σ from the images themselves when None).

    Shapes:
        images: (N, C_in, H, W);  mean, std: (C_in,) or scalars;  returns (N, C_in, H, W)

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    check_tensor(images, "images", ndim=4)
    if mean is None or std is None:
        m, s = image_mean_std(images)
        mean = m if mean is None else mean
        std = s if std is None else std
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).reshape(-1, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).reshape(-1, 1, 1)
    if mean.shape[0] not in (1, images.shape[1]) or std.shape[0] not in (1, images.shape[1]):
        raise ValueError(f"mean/std must have 1 or {images.shape[1]} entries (one per channel)")
    if bool((std <= 0).any()):
        raise ValueError("std must be > 0 for every channel (a constant channel cannot be standardised)")
    return (images - mean) / std


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _check_int(value: Any, name: str, minimum: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return value
