"""Generated data sets of any size, deterministic for a seed.

* ``"synthetic"`` (:func:`make_synthetic`) — smooth class prototypes, shifted and noisy (scaling);
* ``"nuisance-shapes"`` (:func:`make_nuisance_shapes`) — a small shape on a label-free background
  that dominates the pixels (a positive control where a frozen extractor's kNN graph is wrong);
  the background class rides along as ``dataset.nuisance``.
"""
from __future__ import annotations

import math
import numpy as np
import torch

from ..utils import check_seed
from .._checks import check_int, check_number
from ._dataset import Dataset
from ._registry import register_dataset

__all__ = ["make_synthetic", "make_nuisance_shapes", "NUISANCE_SHAPES", "NUISANCE_KINDS", "NUISANCE_SHAPE_AREAS"]


# --------------------------------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------------------------------
@register_dataset("synthetic", cli_options={"n": "--synthetic-n", "seed": "--seed"})
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

    Taught in: chapter 10 (chapters/10_scaling_2_measured.md)
    """
    n = check_int(n, "n", 1)
    num_classes = check_int(num_classes, "num_classes", 1)
    image_size = check_int(image_size, "image_size", 2)
    channels = check_int(channels, "channels", 1)
    max_shift = check_int(max_shift, "max_shift", 0)
    seed = check_seed(seed)
    noise = check_number(noise, "noise", 0)
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

    # The images are computed in place in eps, 65 536 at a time: the same values as one
    # sigmoid(2·contrast·base + 2·noise·eps) over all n, without four (n, C, H, W) temporaries
    images = eps
    for a in range(0, n, 65_536):
        b = min(a + 65_536, n)
        base = protos[labels[a:b]]  # (rows, channels, H, W)
        if max_shift > 0:
            # One roll per distinct (dy, dx): at most (2·max_shift+1)² vectorised rolls.
            sh = shifts[a:b]
            code = (sh[:, 0] + max_shift) * (2 * max_shift + 1) + (sh[:, 1] + max_shift)
            for c in torch.unique(code).tolist():
                idx = (code == c).nonzero(as_tuple=True)[0]
                dy, dx = int(sh[idx[0], 0]), int(sh[idx[0], 1])
                base[idx] = torch.roll(base[idx], shifts=(dy, dx), dims=(2, 3))
        images[a:b].mul_(2.0 * noise).add_(2.0 * contrast[a:b].view(-1, 1, 1, 1) * base).sigmoid_()
    return Dataset(images.float().contiguous(), labels.long(), [f"class_{c}" for c in range(num_classes)],
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


@register_dataset("nuisance-shapes", cli_options={"n": "--synthetic-n"})
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

    Taught in: chapter 12 (chapters/12_real_extractor_4_control.md)
    """
    n = check_int(n, "n", 1)
    num_classes = check_int(num_classes, "num_classes", 2)
    if num_classes > len(NUISANCE_SHAPES):
        raise ValueError(f"num_classes={num_classes} but there are only {len(NUISANCE_SHAPES)} shapes "
                         f"({', '.join(NUISANCE_SHAPES)}); use num_classes <= {len(NUISANCE_SHAPES)}")
    image_size = check_int(image_size, "image_size", 8)
    seed = check_seed(seed)
    if not isinstance(nuisance, str) or nuisance not in NUISANCE_KINDS:
        raise ValueError(f"nuisance={nuisance!r}: choose one of {', '.join(map(repr, NUISANCE_KINDS))}")
    m = num_classes if num_nuisance is None else check_int(num_nuisance, "num_nuisance", 1)

    object_size = check_number(object_size, "object_size", 0.0, 0.5)
    size_jitter = check_number(size_jitter, "size_jitter", 0.0, 1.0, open_max=True)
    contrast = check_number(contrast, "contrast", 0.0, 1.0)
    texture = check_number(texture, "texture", 0.0, 1.0)
    noise = check_number(noise, "noise", 0.0, 1.0)
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

    bg, ink = _background(nuisance, nuis, m, jitter, phase, texture, s)
    mask = _object_mask(labels, centre, theta, radius, s)
    am = contrast * mask[:, None]
    x = (1 - am) * bg + am * ink[:, None, None, None] + noise * eps
    images = torch.from_numpy(np.clip(x, 0.0, 1.0).astype(np.float32))
    ds = Dataset(images.contiguous(), torch.from_numpy(labels.astype(np.int64)),
                 list(NUISANCE_SHAPES[:num_classes]), "nuisance-shapes")
    ds.nuisance = torch.from_numpy(nuis.astype(np.int64))
    ds.nuisance_names = [f"{nuisance}_{z}" for z in range(m)]
    return ds


def _background(nuisance: str, nuis: np.ndarray, m: int, jitter: np.ndarray, phase: np.ndarray, texture: float,
                s: int) -> tuple[np.ndarray, np.ndarray]:
    """The backgrounds b_i (n, 3, s, s) of :func:`make_nuisance_shapes` and each image's ink t_i (n,)."""
    n = nuis.shape[0]
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
    return bg, ink


def _object_mask(labels: np.ndarray, centre: np.ndarray, theta: np.ndarray, radius: np.ndarray,
                 s: int) -> np.ndarray:
    """Object masks m_i (n, s, s): the area share of each pixel inside the rotated, scaled shape of
    class labels[i], from ss × ss sub-pixels (ss = 4), 256 images at a time."""
    n = labels.shape[0]
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
    return mask
