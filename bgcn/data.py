"""Datasets and label masks: the images that enter the pipeline and which of them carry labels.

Four sources, one return type:

* ``"digits"`` — scikit-learn's bundled handwritten digits (N = 1797, 8×8, one channel, 10 classes),
  shipped with scikit-learn, so nothing is downloaded;
* ``"synthetic"`` — generated images of any size N with a known class structure (for scaling);
* ``"nuisance-shapes"`` — generated shapes on a label-free background that dominates the pixels (a
  positive control where a frozen extractor's kNN graph is wrong); the background class rides
  along as ``dataset.nuisance``;
* ``"fashion-mnist"`` — Zalando's Fashion-MNIST (60 000 + 10 000, 28×28, one channel, 10 classes)
  from local IDX files, e.g. Debian's ``apt-get install dataset-fashion-mnist``; ``subset=n`` for a
  stratified sample;
* a folder ``path/<class_name>/**/<image>`` of the reader's own images (png, jpg, bmp, tif,
  webp; at any depth under the class folder; 8- or 16-bit).

:func:`load_dataset` returns a :class:`Dataset`, a 2-tuple ``(images, labels)`` that also carries
``class_names`` and ``name`` as attributes, so both ``images, labels = load_dataset("digits")`` and
``ds = load_dataset("digits"); ds.class_names`` work.

Images that need not fit in memory: an :class:`ImageSource` hands out images by index, one
(``source[i]``) or a batch (``source.take(indices)``, ``source.loader(batch_size)``) at a time;
:class:`TensorImages` wraps a tensor (uint8 converted per batch), :class:`ImageFolderSource` reads
a folder lazily, and :func:`as_image_source` turns either a tensor or a source into a source.

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
import torch.utils.data as tud

from .utils import NotFoundError, check_seed, check_tensor

__all__ = [
    "Dataset",
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "load_dataset",
    "load_digits",
    "make_synthetic",
    "make_nuisance_shapes",
    "NUISANCE_SHAPES",
    "NUISANCE_KINDS",
    "load_image_folder",
    "label_masks",
    "check_labels",
    "read_idx",
    "load_fashion_mnist",
    "fashion_mnist_dir",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DEBIAN_DIR",
    "FASHION_MNIST_ENV",
    "stratified_subset",
    "ImageSource",
    "TensorImages",
    "ImageFolderSource",
    "as_image_source",
    "check_every_class_labelled",
    "image_mean_std",
    "normalize_images",
]

#: Names accepted by :func:`load_dataset` besides a folder path.
DATASETS = ("digits", "synthetic", "fashion-mnist", "nuisance-shapes")
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
        - images: (N, C_in, H, W) float32 in [0, 1] (C_in image channels, not the class count C),
          or uint8 in {0, …, 255} where asked for (``load_fashion_mnist(dtype=torch.uint8)``);
          :class:`TensorImages` turns those into x = pixel / 255 one batch at a time
        - labels: (N,) long in {0, …, C-1}
        - class_names: list of C strings

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """

    # No __slots__: instances get a __dict__ for the two extra attributes.
    def __new__(cls, images: torch.Tensor, labels: torch.Tensor,
                class_names: Sequence[str] | None = None, name: str = ""):
        if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:  # raw pixels 0..255
            check_tensor(images, "images", ndim=4, finite=False, floating=False)
        else:
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
# nuisance shapes: a positive control where the label is not what dominates the pixels
# --------------------------------------------------------------------------------------------------
#: The shapes of :func:`make_nuisance_shapes`, class c draws ``NUISANCE_SHAPES[c]``.
NUISANCE_SHAPES = ("disc", "square", "triangle", "cross", "ring", "star", "bar", "corner")
#: Background kinds of :func:`make_nuisance_shapes` (what the nuisance label z changes).
NUISANCE_KINDS = ("texture", "colour", "stripes", "none")
#: Area of each shape in units of its radius r squared (every shape lies inside the disc of radius r).
NUISANCE_SHAPE_AREAS = {
    "disc": math.pi * 0.9 ** 2,                       # u² + v² ≤ 0.9²
    "square": (2 * 0.62) ** 2,                        # |u|, |v| ≤ 0.62
    "triangle": 3 * math.sqrt(3) / 4,                 # equilateral, circumradius 1 (inradius 1/2)
    "cross": 8 * 0.25 * 0.96 - 4 * 0.25 ** 2,         # two 1.92 × 0.5 arms
    "ring": math.pi * (1 - 0.55 ** 2),                # 0.55 ≤ √(u² + v²) ≤ 1
    "star": 5 * 0.5 * math.sin(math.pi / 5),          # 5 points, outer radius 1, inner 0.5
    "bar": 2 * 0.95 * 2 * 0.3,                        # |u| ≤ 0.95, |v| ≤ 0.3
    "corner": (2 * 0.7) ** 2 - 0.85 ** 2,             # |u|, |v| ≤ 0.7 minus u, v > −0.15
}
_SUPERSAMPLE = 4  # sub-pixels per axis for the anti-aliased object mask
_STRIPE_PERIOD = 0.2  # stripe period as a share of the image side


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Indicator of ``shape`` at points (u, v) in the object's own frame (radius 1, centred, unrotated).

    Shapes: u, v any equal shape -> bool of that shape
    """
    if shape == "disc":
        return u * u + v * v <= 0.9 ** 2
    if shape == "square":
        return (np.abs(u) <= 0.62) & (np.abs(v) <= 0.62)
    if shape == "triangle":  # vertices at 90°, 210°, 330°; edges at distance 1/2 along −90°, 30°, 150°
        inside = np.ones(u.shape, dtype=bool)
        for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6):
            inside &= u * math.cos(a) + v * math.sin(a) <= 0.5
        return inside
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.25) & (av <= 0.96)) | ((av <= 0.25) & (au <= 0.96))
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55 ** 2)
    if shape == "star":  # fold the angle into one half-point: outer vertex A = (1, 0), inner B at π/5
        r = np.sqrt(u * u + v * v)
        psi = np.mod(np.arctan2(v, u), 2 * math.pi / 5)
        psi = np.minimum(psi, 2 * math.pi / 5 - psi)
        px, py = r * np.cos(psi), r * np.sin(psi)
        bx, by = 0.5 * math.cos(math.pi / 5), 0.5 * math.sin(math.pi / 5)
        return (bx - 1.0) * py - by * (px - 1.0) >= 0  # on the origin's side of the line A-B
    if shape == "bar":
        return (np.abs(u) <= 0.95) & (np.abs(v) <= 0.3)
    if shape == "corner":
        return (np.abs(u) <= 0.7) & (np.abs(v) <= 0.7) & ~((u > -0.15) & (v > -0.15))
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(NUISANCE_SHAPES)}")


def _hsv_palette(m: int) -> np.ndarray:
    """m background colours: hue z/m, saturation 0.75, value alternating 0.9 / 0.55 (for m > 3)."""
    import colorsys

    vals = [0.9 if (z % 2 == 0 or m <= 3) else 0.55 for z in range(m)]
    return np.array([colorsys.hsv_to_rgb(z / m, 0.75, vals[z]) for z in range(m)], dtype=np.float64)


def make_nuisance_shapes(n: int = 2000, num_classes: int = 4, image_size: int = 32, seed: int = 0,
                         nuisance: str = "texture", num_nuisance: int | None = None,
                         object_size: float = 0.2, size_jitter: float = 0.25, contrast: float = 0.35,
                         texture: float = 0.6, noise: float = 0.03) -> Dataset:
    """A positive control: the label is a small object's *shape*; a label-free background dominates.

    Image i has a shape class y_i ∈ {0, …, C-1} (class c draws ``NUISANCE_SHAPES[c]``: disc, square,
    triangle, cross, ring, star, bar, corner) and a nuisance class z_i ∈ {0, …, M-1}
    (M = ``num_nuisance``, default C). The pairs (y_i, z_i) are dealt cyclically over all C·M
    combinations (y = j mod C, z = ⌊j/C⌋ mod M for j = 0, …, n-1) and then shuffled, so every
    combination occurs ⌊n/(CM)⌋ or one more times and every class ⌊n/C⌋ or one more: y and z are
    independent (exactly, up to that ±1). Per image, from one ``numpy`` Generator(seed):

    * background b_i(p) at pixel p = (row, col), per channel:
      ``"texture"``: b = κ_{z} + δ_i + (τ/2)·sin(2π⟨p, n_z⟩/P + φ_i), ``"colour"``: b = κ_z + δ_i,
      ``"stripes"``: b = 0.5 + δ_i + (τ/2)·sin(…), ``"none"``: b = 0.5; with κ_z the z-th of M
      colours (hue z/M), δ_i ~ U(−0.05, 0.05)³ a colour jitter, τ = ``texture``, stripe direction
      n_z at angle π·z/M, period P = 0.2·image_size, random phase φ_i ~ U(0, 2π);
    * the object: radius r_i = object_size · image_size · U(1 − j, 1 + j) (j = ``size_jitter``),
      angle θ_i ~ U(0, 2π), centre uniform where the radius-r_i disc fits in the image; its mask
      m_i(p) ∈ [0, 1] is the area share of pixel p inside the rotated, scaled shape
      (4 × 4 sub-pixels); its ink t_i = 1 if the background colour is dark (mean < 0.5), else 0;
    * x_i(p) = clip( (1 − a·m_i(p))·b_i(p) + a·m_i(p)·t_i + σ·ε_i(p), 0, 1 ), a = ``contrast``,
      σ = ``noise``, ε ~ N(0, 1).

    With the defaults (object radius 0.2 of the side, contrast 0.35) the background fills most of
    the pixels and most of their variance, so the cosine kNN graph of raw pixels, and of a frozen
    ImageNet extractor, joins images of the same *background* far more often than of the same shape
    (see ``results/nuisance_probe.json``), while the shape stays learnable from labels. The nuisance
    label rides along as the attribute ``dataset.nuisance`` ((N,) long) with ``dataset.nuisance_names``;
    it is for analysis (edge homophily w.r.t. z) and must not enter training.

    Shapes:
        images: (n, 3, image_size, image_size) float32 in [0, 1]
        labels: (n,) long in {0, …, num_classes-1}, the shape
        nuisance (attribute): (n,) long in {0, …, num_nuisance-1}, the background

    Taught in: chapter 12 (chapters/12_real_extractor.md)
    """
    n = _check_int(n, "n", 1)
    num_classes = _check_int(num_classes, "num_classes", 2)
    if num_classes > len(NUISANCE_SHAPES):
        raise ValueError(f"num_classes={num_classes} but there are only {len(NUISANCE_SHAPES)} shapes "
                         f"({', '.join(NUISANCE_SHAPES)}); use num_classes <= {len(NUISANCE_SHAPES)}")
    image_size = _check_int(image_size, "image_size", 8)
    seed = check_seed(seed)
    if not isinstance(nuisance, str) or nuisance not in NUISANCE_KINDS:
        raise ValueError(f"nuisance={nuisance!r}: choose one of {', '.join(map(repr, NUISANCE_KINDS))}")
    m = num_classes if num_nuisance is None else _check_int(num_nuisance, "num_nuisance", 1)

    def _real(value: Any, name: str, lo: float, hi: float, hi_open: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value) or value < lo or value > hi or (hi_open and value == hi):
            raise ValueError(f"{name}={value} must lie in [{lo:g}, {hi:g}{')' if hi_open else ']'}")
        return value

    object_size = _real(object_size, "object_size", 0.0, 0.5)
    size_jitter = _real(size_jitter, "size_jitter", 0.0, 1.0, hi_open=True)
    contrast = _real(contrast, "contrast", 0.0, 1.0)
    texture = _real(texture, "texture", 0.0, 1.0)
    noise = _real(noise, "noise", 0.0, 1.0)
    if object_size == 0.0:
        raise ValueError("object_size=0 draws no object; give the object radius as a share of the image side, "
                         "e.g. 0.2")
    if object_size * (1 + size_jitter) > 0.5:
        raise ValueError(f"object_size={object_size} with size_jitter={size_jitter} gives radii up to "
                         f"{object_size * (1 + size_jitter):.3g} of the side, more than 0.5: the object would not "
                         f"fit; lower object_size or size_jitter")

    rng = np.random.default_rng(seed)
    s = image_size
    i = rng.permutation(n)  # pair i ↦ (i mod C, ⌊i / C⌋ mod M): all C·M pairs once per C·M images
    labels, nuis = i % num_classes, (i // num_classes) % m
    radius = object_size * s * rng.uniform(1 - size_jitter, 1 + size_jitter, n)
    theta = rng.uniform(0, 2 * math.pi, n)
    centre = radius[:, None] + rng.uniform(0, 1, (n, 2)) * (s - 2 * radius[:, None])  # (row, col)
    phase = rng.uniform(0, 2 * math.pi, n)
    jitter = rng.uniform(-0.05, 0.05, (n, 3))
    eps = rng.standard_normal((n, 3, s, s), dtype=np.float32)

    # background (n, 3, s, s)
    rows = np.arange(s, dtype=np.float64)[:, None] + 0.5
    cols = np.arange(s, dtype=np.float64)[None, :] + 0.5
    palette = _hsv_palette(m)
    if nuisance in ("texture", "colour"):
        base = palette[nuis] + jitter
    elif nuisance == "stripes":
        base = 0.5 + jitter
    else:
        base = np.full((n, 3), 0.5)
    bg = np.broadcast_to(base[:, :, None, None], (n, 3, s, s)).copy()
    if nuisance in ("texture", "stripes") and texture > 0:
        ang = math.pi * nuis / m
        proj = np.cos(ang)[:, None, None] * rows + np.sin(ang)[:, None, None] * cols  # (n, s, s)
        bg += (texture / 2) * np.sin(2 * math.pi * proj / (_STRIPE_PERIOD * s) + phase[:, None, None])[:, None]
    ink = (base.mean(axis=1) < 0.5).astype(np.float64)

    # object mask (n, s, s): area share of each pixel inside the shape, from ss × ss sub-pixels
    ss = _SUPERSAMPLE
    sub = (np.arange(s * ss, dtype=np.float64) + 0.5) / ss
    mask = np.empty((n, s, s))
    chunk = 256
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        dr = sub[None, :, None] - centre[sl, 0, None, None]
        dc = sub[None, None, :] - centre[sl, 1, None, None]
        c, si = np.cos(theta[sl])[:, None, None], np.sin(theta[sl])[:, None, None]
        r = radius[sl, None, None]
        u, v = (c * dc + si * dr) / r, (-si * dc + c * dr) / r  # rotate by −θ, scale to radius 1
        hit = np.zeros(u.shape, dtype=bool)
        lab = labels[sl]
        for k in np.unique(lab):
            j = lab == k
            hit[j] = _shape_mask(NUISANCE_SHAPES[k], u[j], v[j])
        mask[sl] = hit.reshape(-1, s, ss, s, ss).mean(axis=(2, 4))

    am = contrast * mask[:, None]
    x = (1 - am) * bg + am * ink[:, None, None, None] + noise * eps
    images = torch.from_numpy(np.clip(x, 0.0, 1.0).astype(np.float32))
    ds = Dataset(images.contiguous(), torch.from_numpy(labels.astype(np.int64)),
                 list(NUISANCE_SHAPES[:num_classes]), "nuisance-shapes")
    ds.nuisance = torch.from_numpy(nuis.astype(np.int64))
    ds.nuisance_names = [f"{nuisance}_{z}" for z in range(m)]
    return ds

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
        return (_check_int(image_size, "image_size", 1),) * 2
    try:
        h, w = image_size
    except (TypeError, ValueError):
        raise TypeError(f"image_size must be an int, a (H, W) pair or None, got {image_size!r}") from None
    return (_check_int(h, "image_size[0]", 1), _check_int(w, "image_size[1]", 1))


def _decode_image(f: Path, grayscale: bool) -> np.ndarray:
    """Decode one image file to float32 (1 or 3, H, W) in [0, 1]; a ValueError names a bad file."""
    from PIL import Image

    try:
        with Image.open(f) as im:
            return _image_array(im, grayscale)
    except ValueError as e:
        raise ValueError(f"could not read image {str(f)!r}: {e}; fix or remove the file") from e
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds of errors on bad files
        raise ValueError(f"could not read image {str(f)!r}: {type(e).__name__}: {e}; fix or "
                         f"remove the file") from e


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


# --------------------------------------------------------------------------------------------------
# IDX files and Fashion-MNIST
# --------------------------------------------------------------------------------------------------
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

    Taught in: chapter 12 (chapters/12_real_extractor.md)
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

    Taught in: chapter 12 (chapters/12_real_extractor.md)
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

    Taught in: chapter 12 (chapters/12_real_extractor.md)
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


def stratified_subset(labels: torch.Tensor, n: int, seed: int = 0, num_classes: int | None = None) -> torch.Tensor:
    """Indices of a seeded, class-balanced sample of ``n`` of the N labelled items, in increasing order.

    Every class gets ⌊n / C⌋ items, and the n mod C left over go one each to classes drawn in a
    seeded random order (a class with too few items gives all it has; the rest is shared among the
    others the same way). Within class c the items are the first ones of a seeded permutation of
    its members, so for one seed a larger n gives a superset. A private ``torch.Generator`` is
    used: the result depends on ``seed`` only, not on (and does not touch) torch's global RNG.

    Shapes:
        labels: (N,) integer;  returns (n,) long, sorted, without repeats

    Taught in: chapter 12 (chapters/12_real_extractor.md)
    """
    check_labels(labels)
    labels_cpu = labels.detach().cpu().long()
    total = labels_cpu.numel()
    n = _check_int(n, "subset", 1)
    if n > total:
        raise ValueError(f"subset={n} is larger than the {total} images available; choose 1 <= subset <= {total}")
    seed = check_seed(seed)
    c_all = int(labels_cpu.max()) + 1
    if num_classes is not None:
        c_all = max(c_all, _check_int(num_classes, "num_classes", 1))
    counts = torch.bincount(labels_cpu, minlength=c_all).tolist()
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(c_all, generator=g).tolist()  # who gets the left-over items first
    members = [(labels_cpu == c).nonzero(as_tuple=True)[0] for c in range(c_all)]
    members = [m[torch.randperm(m.numel(), generator=g)] for m in members]
    quota = [0] * c_all
    remaining = n
    while remaining > 0:  # each round fills every class or exhausts at least one
        open_ = [c for c in order if quota[c] < counts[c]]
        share, extra = divmod(remaining, len(open_))
        for j, c in enumerate(open_):
            give = min(counts[c] - quota[c], share + (1 if j < extra else 0))
            quota[c] += give
            remaining -= give
    idx = torch.cat([members[c][:quota[c]] for c in range(c_all)])
    return idx.sort().values


# --------------------------------------------------------------------------------------------------
# image sources: images by index, in memory or read lazily, batch by batch
# --------------------------------------------------------------------------------------------------
class ImageSource(tud.Dataset):
    """N images that can be fetched by index, one or a batch at a time, without holding all of them.

    The mini-batch engine and the feature bank read images only through this interface, so an
    in-memory tensor (:class:`TensorImages`) and a folder read lazily (:class:`ImageFolderSource`)
    are interchangeable. Subclasses implement ``__len__``, ``image_shape`` and ``_read(i)`` (one
    image) and may override :meth:`take` with a faster batch read.

    * ``source[i]`` → ``(image (C_in, H, W) float in [0, 1], i)`` (a ``torch.utils.data.Dataset``);
    * ``source.take(indices)`` → images (b, C_in, H, W) in the order of ``indices``;
    * ``source.loader(batch_size)`` → batches ``(indices (b,), images (b, C_in, H, W))`` in index
      order over all N (the last batch may be smaller), from a ``torch.utils.data.DataLoader``.

    Images are float32 (uint8 storage is divided by 255 per batch), except that a floating tensor
    wrapped by :class:`TensorImages` keeps its own dtype.

    Shapes:
        image_shape: (C_in, H, W);  take(indices (b,)) -> (b, C_in, H, W)

    Taught in: chapter 11 (chapters/11_minibatch.md)
    """

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def image_shape(self) -> tuple[int, int, int]:  # pragma: no cover - abstract
        """(C_in, H, W) of one image."""
        raise NotImplementedError

    def _read(self, i: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Where the batches are made: the CPU, except for a :class:`TensorImages` over a GPU tensor."""
        return torch.device("cpu")

    def _index(self, i: Any) -> int:
        if isinstance(i, torch.Tensor) and i.dim() == 0 and not i.is_floating_point() and i.dtype != torch.bool:
            i = int(i)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"an image index must be an int, got {type(i).__name__}; use take(indices) for a batch")
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"image index {i} is out of range for {n} images")
        return i % n

    def __getitem__(self, i: Any) -> tuple[torch.Tensor, int]:
        i = self._index(i)
        return self._read(i), i

    def _check_indices(self, indices: Any) -> torch.Tensor:
        if not isinstance(indices, torch.Tensor):
            try:
                indices = torch.as_tensor(indices)
            except Exception:  # noqa: BLE001
                raise TypeError(f"indices must be a 1-D LongTensor of image indices, got "
                                f"{type(indices).__name__}") from None
        if indices.dim() != 1:
            raise ValueError(f"indices must be 1-D (b,), got shape {tuple(indices.shape)}")
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise TypeError(f"indices must hold integer image indices, got dtype {indices.dtype}; call .long()")
        indices = indices.long()
        n = len(self)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n):
            raise IndexError(f"indices span [{int(indices.min())}, {int(indices.max())}] but there are {n} "
                             f"images; every index must lie in 0..{n - 1}")
        return indices

    def take(self, indices: Any) -> torch.Tensor:
        """The images at ``indices``, stacked in the order given (repeats allowed).

        Shapes:
            indices: (b,) long in 0..N-1;  returns (b, C_in, H, W) float
        """
        idx = self._check_indices(indices).cpu()
        if idx.numel() == 0:
            return torch.empty((0, *self.image_shape), dtype=torch.float32)
        return torch.stack([self._read(int(i)) for i in idx])

    def loader(self, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> tud.DataLoader:
        """Batches ``(indices, images)`` over all N images in index order: 0..b-1, b..2b-1, ….

        Each batch is one :meth:`take` call; with ``num_workers`` > 0 the batches are read in that
        many worker processes (still yielded in order). ``pin_memory=True`` pins the batches in
        page-locked memory for faster copies to a GPU; it is ignored when CUDA is not available or
        the source already lives on the GPU. A GPU-resident source needs ``num_workers=0`` (CUDA
        tensors cannot be used in forked worker processes).

        Shapes:
            yields indices (b,) long, images (b, C_in, H, W); b = batch_size except maybe the last

        Taught in: chapter 11 (chapters/11_minibatch.md)
        """
        batch_size = _check_int(batch_size, "batch_size", 1)
        num_workers = _check_int(num_workers, "num_workers", 0)
        if not isinstance(pin_memory, bool):
            raise TypeError(f"pin_memory must be True or False, got {pin_memory!r}")
        on_cpu = self.device.type == "cpu"
        if num_workers and not on_cpu:
            raise ValueError(f"num_workers={num_workers} needs images on the CPU but this source is on "
                             f"{self.device}; use num_workers=0 (a GPU tensor is already fast to index)")
        return tud.DataLoader(_Batches(self, batch_size), batch_size=None, shuffle=False, num_workers=num_workers,
                              pin_memory=pin_memory and on_cpu and torch.cuda.is_available())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(N={len(self)}, image_shape={self.image_shape})"


class _Batches(tud.Dataset):
    """Batch j of a source: (indices j·b … min((j+1)·b, N) − 1, their images)."""

    def __init__(self, source: ImageSource, batch_size: int):
        self.source, self.batch_size = source, batch_size

    def __len__(self) -> int:
        return -(-len(self.source) // self.batch_size)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= j < len(self):
            raise IndexError(j)
        idx = torch.arange(j * self.batch_size, min((j + 1) * self.batch_size, len(self.source)))
        return idx, self.source.take(idx)


class TensorImages(ImageSource):
    """An :class:`ImageSource` over an in-memory tensor (CPU or GPU), float or uint8.

    A floating tensor is kept as it is (no copy) and batches come back in its dtype; a uint8
    tensor is kept as uint8 (a quarter of float32's memory) and each batch is converted on the
    fly, x = pixel / 255 in float32, exactly ``images.float() / 255`` of those rows.

    Shapes:
        images: (N, C_in, H, W) float or uint8;  take(indices (b,)) -> (b, C_in, H, W)

    Taught in: chapter 11 (chapters/11_minibatch.md)
    """

    def __init__(self, images: torch.Tensor):
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor (N, C_in, H, W), got {type(images).__name__}")
        if images.dim() != 4:
            raise ValueError(f"images must have 4 dimensions (N, C_in, H, W), got shape {tuple(images.shape)}")
        if not (images.is_floating_point() or images.dtype == torch.uint8):
            raise TypeError(f"images must be floating (values in [0, 1]) or uint8 (0..255), got dtype "
                            f"{images.dtype}; call .float() or .to(torch.uint8)")
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    @property
    def device(self) -> torch.device:
        """The device of the wrapped tensor (batches are made there)."""
        return self.images.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the batches: the tensor's own if floating, float32 for uint8."""
        return self.images.dtype if self.images.is_floating_point() else torch.float32

    def _convert(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.is_floating_point() else x.float().div_(255)

    def _read(self, i: int) -> torch.Tensor:
        return self._convert(self.images[i])

    def take(self, indices: Any) -> torch.Tensor:
        idx = self._check_indices(indices).to(self.images.device)
        return self._convert(self.images[idx])


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

    Taught in: chapter 11 (chapters/11_minibatch.md)
    """

    def __init__(self, path: str | os.PathLike, image_size: int | tuple[int, int] | None = None,
                 grayscale: bool = False):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a folder path (str or Path), got {type(path).__name__}")
        if not isinstance(grayscale, bool):
            raise TypeError(f"grayscale must be True or False, got {grayscale!r}")
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
                raise ValueError(f"could not read image {str(files[0])!r}: {type(e).__name__}: {e}; fix or "
                                 f"remove the file") from e
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
            raise ValueError(f"image {str(f)!r} is {a.shape[1]}×{a.shape[2]} but the first image "
                             f"({str(self.files[0])!r}) is {self._size[0]}×{self._size[1]}; pass "
                             f"image_size=(H, W) to resize every image")
        return torch.from_numpy(np.ascontiguousarray(_resize_clip(a, self._size), dtype=np.float32))


def as_image_source(images: Any) -> ImageSource:
    """An :class:`ImageSource` for ``images``: a source is returned as it is, a 4-D float or uint8
    tensor is wrapped in :class:`TensorImages`; anything else raises TypeError.

    Shapes:
        images: ImageSource, or a tensor (N, C_in, H, W) float/uint8

    Taught in: chapter 11 (chapters/11_minibatch.md)
    """
    if isinstance(images, ImageSource):
        return images
    if isinstance(images, torch.Tensor):
        return TensorImages(images)
    hint = "; pass dataset.images" if isinstance(images, tuple) and hasattr(images, "images") else ""
    raise TypeError(f"images must be an ImageSource (TensorImages, ImageFolderSource) or a tensor "
                    f"(N, C_in, H, W) float or uint8, got {type(images).__name__}{hint}")


# --------------------------------------------------------------------------------------------------
# dispatcher
# --------------------------------------------------------------------------------------------------
def load_dataset(name_or_path: str | os.PathLike, **kwargs: Any) -> Dataset:
    """Load a dataset by name or from a folder; returns ``(images, labels)`` as a :class:`Dataset`.

    * ``"digits"`` — :func:`load_digits` (no keyword arguments);
    * ``"synthetic"`` — :func:`make_synthetic` (``n``, ``num_classes``, ``image_size``, ``channels``,
      ``noise``, ``max_shift``, ``seed``);
    * ``"fashion-mnist"`` (or ``"fashion_mnist"``) — :func:`load_fashion_mnist` (``split``,
      ``subset``, ``seed``, ``data_dir``, ``dtype``);
    * ``"nuisance-shapes"`` (or ``"nuisance_shapes"``) — :func:`make_nuisance_shapes` (``n``,
      ``num_classes``, ``image_size``, ``seed``, ``nuisance``, ``num_nuisance``, ``object_size``,
      ``size_jitter``, ``contrast``, ``texture``, ``noise``); ``.nuisance`` holds the background class;
    * a folder path — :func:`load_image_folder` (``image_size``, ``grayscale``).

    ``images, labels = load_dataset("digits")`` unpacks; ``.class_names`` and ``.name`` ride along.

    Shapes:
        images: (N, C_in, H, W) float32 in [0, 1] (uint8 for fashion-mnist with dtype=torch.uint8)
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
    builders = {"synthetic": make_synthetic, "fashion-mnist": load_fashion_mnist,
                "nuisance-shapes": make_nuisance_shapes}
    fn = builders.get(key.replace("_", "-"))
    if fn is not None:  # one check for every generated/packaged set: unknown options named, not a traceback
        import inspect

        accepted = list(inspect.signature(fn).parameters)
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise TypeError(f"load_dataset({key.replace('_', '-')!r}) got unexpected keyword argument(s) "
                            f"{unknown}; it accepts {', '.join(accepted)}")
        return fn(**kwargs)
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
