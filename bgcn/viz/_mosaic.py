"""A query image and its kNN neighbours as one mosaic (chapter 12)."""
from __future__ import annotations

from typing import Sequence

import torch

from .._checks import check_int
from ..utils import check_tensor

__all__ = ["neighbour_mosaic", "plot_neighbours"]


def neighbour_mosaic(images: torch.Tensor, indices: torch.Tensor, queries: Sequence[int],
                     n_neighbours: int | None = None) -> torch.Tensor:
    r"""One image of a few query images (first column) and their kNN neighbours (the next columns).

    Row r is image ``queries[r]`` followed by ``images[indices[queries[r], j]]`` for
    j = 0 … n_neighbours − 1 (best first, as :func:`bgcn.knn_indices` orders them), tiled
    without gaps: pixel (r·H + y, c·W + x) of the mosaic is pixel (y, x) of tile c of row r.

    Shapes:
        - images: (N, C, H, W) in [0, 1]; indices: (N, k) long; queries: Q node ids
        - output: (Q·H, (1 + n)·W, C) (or (Q·H, (1 + n)·W) for one channel), n = n_neighbours ≤ k

    Taught in: chapter 12 (chapters/12_real_extractor_1_frozen.md).
    """
    check_tensor(images, "images", ndim=4)
    check_tensor(indices, "indices", ndim=2, floating=False, finite=False)
    n, c, h, w = images.shape
    if indices.shape[0] != n:
        raise ValueError(f"indices has {indices.shape[0]} rows but there are {n} images; pass the (N, k) "
                         f"neighbour indices of these images")
    if indices.dtype not in (torch.int16, torch.int32, torch.int64, torch.uint8):
        raise TypeError(f"indices must be an integer tensor of node ids (N, k), got dtype {indices.dtype}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n):
        raise ValueError(f"indices must be node ids in [0, {n}), got values from {int(indices.min())} to "
                         f"{int(indices.max())}")
    k = indices.shape[1]
    m = k if n_neighbours is None else n_neighbours
    m = check_int(m, "n_neighbours", 1, k, hint=f"between 1 and k={k}")
    if isinstance(queries, torch.Tensor):
        queries = queries.tolist() if not queries.is_floating_point() else [float(v) for v in queries]
    if isinstance(queries, (int, str)) or not hasattr(queries, "__iter__"):
        raise TypeError(f"queries must be a sequence of node ids, e.g. [0, 5, 9], got {queries!r}")
    queries = list(queries)
    if not queries:
        raise ValueError(f"queries must be 1 or more int node ids in [0, {n}), got {queries!r}")
    queries = [check_int(v, "queries", 0, n - 1, hint="node ids") for v in queries]
    q = torch.tensor(queries, dtype=torch.long)
    rows = torch.cat([q[:, None], indices[q, :m].long().cpu()], 1)          # (Q, 1 + m)
    tiles = images.detach().cpu()[rows.flatten()].reshape(q.numel(), 1 + m, c, h, w)
    out = tiles.permute(0, 3, 1, 4, 2).reshape(q.numel() * h, (1 + m) * w, c)
    return out[..., 0] if c == 1 else out


def plot_neighbours(images: torch.Tensor, indices: torch.Tensor, queries: Sequence[int],
                    n_neighbours: int | None = None, ax=None, cmap: str = "gray_r",
                    labels: torch.Tensor | None = None, class_names: Sequence[str] | None = None):
    """Draw :func:`neighbour_mosaic` with matplotlib (no axes); returns the figure.

    With ``labels`` (and optionally ``class_names``), each tile gets its class written under it, in
    red where the neighbour's class is not the query's, and each row its count of same-class
    neighbours on the right: the figure then says what a list of class names would.

    Shapes: as :func:`neighbour_mosaic`; labels (N,) integer.

    Taught in: chapter 12 (chapters/12_real_extractor_1_frozen.md).
    """
    import matplotlib.pyplot as plt

    queries = list(queries.tolist() if isinstance(queries, torch.Tensor) else queries)
    mosaic = neighbour_mosaic(images, indices, queries, n_neighbours)
    q = len(queries)
    h, w = images.shape[-2:]
    m = mosaic.shape[1] // w - 1
    gap = 0
    if labels is not None:
        check_tensor(labels, "labels", ndim=1, floating=False, finite=False)
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels has {labels.shape[0]} entries but there are {images.shape[0]} images")
        # a blank band under each row for the class names (blank = 0 under gray_r, 1 in colour)
        gap = max(1, int(round(0.5 * h)))
        blank = torch.zeros(gap, mosaic.shape[1], *mosaic.shape[2:]) + (0.0 if mosaic.dim() == 2 else 1.0)
        mosaic = torch.cat([torch.cat([mosaic[r * h:(r + 1) * h], blank]) for r in range(q)])
    if ax is None:
        if labels is None:
            _, ax = plt.subplots(figsize=(6.4, 0.8 * q + 0.4))
        else:  # the height of the mosaic's aspect, so that no band of white frames it
            _, ax = plt.subplots(figsize=(7.0, 7.0 * mosaic.shape[0] / ((m + 1.5) * w)))
            ax.figure.subplots_adjust(left=0.0, right=1.0, top=1.0, bottom=0.0)
    ax.imshow(mosaic.numpy(), cmap=cmap if mosaic.dim() == 2 else None, vmin=0.0, vmax=1.0)
    ax.axis("off")
    if labels is not None:
        lab = labels.detach().cpu().long()
        names = [str(c) for c in range(int(lab.max()) + 1)] if class_names is None else list(class_names)
        for r, qi in enumerate(queries):
            row = [qi] + indices[qi, :m].long().cpu().tolist()
            same = sum(int(lab[j] == lab[qi]) for j in row[1:])
            top = r * (h + gap)
            for c, j in enumerate(row):
                ok = c == 0 or lab[j] == lab[qi]
                ax.text(c * w + w / 2, top + h + 0.5, names[int(lab[j])], ha="center", va="top",
                        fontsize=6, color="black" if ok else "#d62728",
                        fontweight="bold" if c == 0 else "normal")
            ax.text((m + 1) * w + 1, top + h / 2, f"{same}/{m}", ha="left", va="center", fontsize=8)
        ax.set_xlim(-0.5, (m + 1) * w + 0.5 * w)
    return ax.figure
