r"""A frozen extractor's features of a benchmark's images, computed once and kept on disk, and their
principal components: the inputs of the feature protocols of :mod:`bgcn.experiments.field`.

At 70 000 Fashion-MNIST images (``"fashion-70k-imagenet96"``) one pass of the ImageNet
EfficientNet-Lite0 at 96 px takes about 12 minutes on two CPU cores, so :func:`cached_features`
keeps the (N, 1 280) table in ``$BGCN_CACHE_DIR`` (default ``~/.cache/bgcn``), outside the
repository, as tensors only (read with ``torch.load(weights_only=True)``). :func:`pca_project`
reduces them label-free, so that the end-to-end rows' head and the GCN's first layer cost D² and
D·hidden per image with D = 128 instead of 1 280.

Taught in: chapter 13 (chapters/13_what_we_found_1_benchmark.md).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .._checks import check_int
from ..io import atomic_torch_save

__all__ = ["cache_dir", "cached_features", "pca_project"]


def cache_dir() -> Path:
    """Where :func:`cached_features` keeps its tables: ``$BGCN_CACHE_DIR`` if set, else ``~/.cache/bgcn``.

    Shapes: none.

    Taught in: chapter 13 (chapters/13_what_we_found_1_benchmark.md).
    """
    return Path(os.environ.get("BGCN_CACHE_DIR", Path.home() / ".cache" / "bgcn"))


def _key(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A fingerprint of the images and their order (float64): their count, a position-weighted sum of
    the labels, the sum of all pixels and of every pixel of about 1 000 rows (8-bit pixels as / 255)."""
    y = labels.detach().cpu().long()
    x = images.detach().cpu().reshape(len(images), -1)
    scale = 255.0 if x.dtype == torch.uint8 else 1.0
    sample = x[:: max(1, len(x) // 1000)].double()
    return torch.stack([torch.tensor(float(len(y))), (y * torch.arange(1, len(y) + 1)).sum().double(),
                        x.double().sum() / scale, (sample * torch.arange(1, sample.shape[1] + 1)).sum() / scale])


def cached_features(name: str, backbone: str, side: int, images, labels: torch.Tensor, *,
                    cache: bool = True, batch_size: int = 250, progress: bool = True) -> torch.Tensor:
    """The features of ``images`` under the frozen ``backbone`` at ``side`` px, from the cache when it has them.

    The file is ``cache_dir() / f"{name}-{backbone}-{side}.pt"``; it is used when it was made from
    the same images with the same labels in the same order (a float64 fingerprint of both, equal to
    1e-9 relative: the sums' rounding may differ between machines), else the features are computed
    (``torch.manual_seed(0)``, eval mode, no gradient, :func:`bgcn.backbone.embed_images`) and
    written atomically (``cache=False``: computed, not written).

    Shapes: images (N, C, H, W), labels (N,) -> features (N, D) float32

    Taught in: chapter 13 (chapters/13_what_we_found_1_benchmark.md).
    """
    from ..backbone import create_backbone, embed_images

    if len(labels) != len(images):
        raise ValueError(f"labels has {len(labels)} entries for {len(images)} images; give one label an image")
    batch_size = check_int(batch_size, "batch_size", 1)
    path = cache_dir() / f"{name}-{backbone}-{side}.pt"
    key = _key(images, labels)
    if cache and path.is_file():
        saved = torch.load(path, weights_only=True, map_location="cpu")
        old = saved.get("key") if isinstance(saved, dict) else None
        if isinstance(old, torch.Tensor) and old.shape == key.shape and torch.allclose(old, key, rtol=1e-9, atol=0):
            return saved["features"]
    torch.manual_seed(0)
    model = create_backbone(backbone, img_size=side)
    if progress:
        kept = f"; kept in {path}" if cache else ""
        print(f"embedding {len(images)} images with {backbone} at {side} px (one pass, no gradient{kept})",
              flush=True)
    feats = embed_images(model, images, batch_size=batch_size)
    if cache:
        atomic_torch_save(path, {"features": feats, "key": key})
    return feats


def pca_project(features: torch.Tensor, dim: int) -> torch.Tensor:
    r"""The features on their first ``dim`` principal components (centred; no label is read).

    :math:`Z = (F - \bar F)\,V_{:, :d}`, :math:`V` the eigenvectors of the centred float64
    scatter matrix :math:`(F - \bar F)^\top (F - \bar F)` by decreasing eigenvalue, each signed so
    that its entries sum to a non-negative number (the projection is then unique).

    Shapes: features (N, D) -> (N, dim) float32

    Taught in: chapter 13 (chapters/13_what_we_found_1_benchmark.md).
    """
    if not isinstance(features, torch.Tensor) or features.ndim != 2:
        raise ValueError("features must be an (N, D) tensor; flatten images first")
    dim = check_int(dim, "dim", 1, features.shape[1])
    f = features.double()
    centred = f - f.mean(0)
    vals, vecs = torch.linalg.eigh(centred.T @ centred)
    top = vecs[:, vals.argsort(descending=True)[:dim]]
    top = top * torch.where(top.sum(0) < 0, -1.0, 1.0)
    return (centred @ top).float()
