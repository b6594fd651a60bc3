"""Cosine similarity between feature vectors, dense and chunked.

Taught in: chapter 01 (chapters/01_frozen_pipeline.md) and chapter 10 (chapters/10_scaling.md).
"""
from __future__ import annotations

import torch

from .utils import check_k, check_positive, check_tensor

__all__ = ["cosine_similarity", "normalize_rows", "knn_indices"]


def normalize_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    r"""Scale every row to unit Euclidean length: :math:`\hat f_i = f_i / \max(\lVert f_i\rVert, \epsilon)`.

    A zero row stays zero (no NaN, and its gradient is finite), so its similarity to every other
    row is 0.

    Shapes:
        - x: (N, D)
        - output: (N, D)

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md) and chapter 10 (chapters/10_scaling.md).
    """
    norm = x.norm(dim=-1, keepdim=True).clamp_min(eps)
    return x / norm


def cosine_similarity(x: torch.Tensor, y: torch.Tensor | None = None, eps: float = 1e-12) -> torch.Tensor:
    r"""Cosine similarity matrix, seed 000 eq. (2):

    .. math::
        S_{ij} = \frac{f_i \cdot g_j}{\max(\lVert f_i\rVert,\epsilon)\,\max(\lVert g_j\rVert,\epsilon)}

    ``y=None`` compares ``x`` with itself (then :math:`S_{ii} = 1` for every non-zero row: each
    node is its own nearest neighbour, which is why :func:`bgcn.knn_graph` excludes the diagonal by
    default). Zero vectors give similarity 0, never NaN. Differentiable in both arguments.

    Args:
        x: features :math:`F`, shape (N, D).
        y: features :math:`G`, shape (M, D); defaults to ``x``.
        eps: lower bound on the norms.

    Any floating dtype works (float64 from ``torch.from_numpy`` included); when ``x`` and ``y``
    differ, both are promoted to the wider one (``torch.promote_types``).

    Shapes:
        - x: (N, D), y: (M, D)
        - output: (N, M) with entries in [-1, 1]

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md).
    """
    check_tensor(x, "x", ndim=2)
    xn = normalize_rows(x, eps)
    if y is None:
        return xn @ xn.transpose(0, 1)
    check_tensor(y, "y", ndim=2)
    if y.shape[1] != x.shape[1]:
        raise ValueError(f"x has D={x.shape[1]} features but y has D={y.shape[1]}; both must have the same feature dimension")
    if y.device != x.device:
        raise ValueError(f"x is on {x.device} but y is on {y.device}; move y with y.to(x.device)")
    yn = normalize_rows(y, eps)
    if yn.dtype != xn.dtype:  # e.g. float64 from torch.from_numpy against float32: the wider dtype
        common = torch.promote_types(xn.dtype, yn.dtype)
        xn, yn = xn.to(common), yn.to(common)
    return xn @ yn.transpose(0, 1)


@torch.no_grad()
def knn_indices(features: torch.Tensor, k: int, exclude_self: bool = True, chunk_size: int = 4096) -> torch.Tensor:
    r"""Exact cosine kNN indices, computed chunk by chunk without gradient.

    For each block of rows, :math:`S_{\text{block}} = \hat F_{\text{block}} \hat F^\top` is formed and
    only its top-k indices are kept, so the peak memory is ``chunk_size * N`` instead of ``N * N``.
    Indices carry no gradient anyway (chapter 02); recompute the k similarity values with
    autograd afterwards (:func:`bgcn.graph.knn_graph` with ``chunk_size``) for an O(N·k·D)
    autograd footprint.

    Ties: ``torch.topk`` does not specify which of two equal similarities comes first, so among
    tied neighbours the choice (and the order) may differ between devices, chunk sizes and torch
    versions; only the multiset of the k similarity values is determined.

    Shapes:
        - features: (N, D)
        - output: (N, k) long, row i sorted by decreasing similarity

    Taught in: chapter 10 (chapters/10_scaling.md).
    """
    check_tensor(features, "features", ndim=2)
    n = features.shape[0]
    k = check_k(k, n, exclude_self=exclude_self)
    chunk_size = int(check_positive(chunk_size, "chunk_size"))
    fn = normalize_rows(features)
    out = torch.empty(n, k, dtype=torch.long, device=features.device)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        s = fn[start:stop] @ fn.T
        if exclude_self:
            rows = torch.arange(stop - start, device=s.device)
            s[rows, rows + start] = float("-inf")
        out[start:stop] = torch.topk(s, k, dim=1).indices
    return out
