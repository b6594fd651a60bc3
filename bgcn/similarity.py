"""Cosine similarity between feature vectors, dense and chunked.

Taught in: chapter 01 (chapters/01_frozen_pipeline.md) and chapter 10 (chapters/10_scaling_1_memory.md).
"""
from __future__ import annotations

import torch

from ._checks import check_int, check_k, check_tensor

__all__ = ["cosine_similarity", "normalize_rows", "mask_diagonal", "gather_similarities", "knn_search", "knn_indices", "KEY_CHUNK"]


def normalize_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    r"""Scale every row to unit Euclidean length: :math:`\hat f_i = f_i / \max(\lVert f_i\rVert, \epsilon)`.

    A zero row stays zero (no NaN, and its gradient is finite), so its similarity to every other
    row is 0.

    Shapes:
        - x: (N, D)
        - output: (N, D)

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md) and chapter 10 (chapters/10_scaling_1_memory.md).
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


def mask_diagonal(scores: torch.Tensor, value: float = float("-inf")) -> torch.Tensor:
    """Return a copy of a square-ish (N, M) score matrix with entries (i, i) set to ``value``.

    Used to exclude self-similarity (:math:`S_{ii}=1`, every node is its own top-1). Out of place,
    so autograd still flows to the other entries.

    Shapes:
        - scores: (N, M) with N <= M
        - output: (N, M)

    Taught in: chapter 06 (chapters/06_rankings_to_graph_1_edges.md).
    """
    n = scores.shape[0]
    eye = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    idx = torch.arange(min(n, scores.shape[-1]), device=scores.device)
    eye[idx, idx] = True
    return scores.masked_fill(eye, value)


def gather_similarities(rows: torch.Tensor, keys: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    r"""The similarities of each row with its k chosen keys, with autograd: :math:`V_{im} = \hat r_i \cdot \hat g_{\,\mathcal N_{im}}`.

    .. math::
        V_{im} = \sum_{d=1}^{D} R_{id}\, G_{\mathcal N_{im}, d}

    for unit rows R and keys G (:func:`normalize_rows`): the k values that the chunked graphs
    (:func:`bgcn.knn_graph` with ``chunk_size``, :func:`bgcn.scaling.neighbour_similarities`, the
    bank's subgraph) recompute with autograd after an index search without it. Autograd keeps the
    gathered keys: :math:`O(NkD)`. No checks (a building block; callers check).

    Shapes:
        - rows: (N, D), keys: (M, D), indices: (N, k) long in [0, M)
        - output: (N, k)

    Taught in: chapter 10 (chapters/10_scaling_1_memory.md).
    """
    return (rows.unsqueeze(1) * keys[indices]).sum(-1)


#: key rows per block of :func:`knn_search` when ``key_chunk`` is not given: a 4 096 × 4 096 block
#: (64 MiB in float32) bounds the search's memory at any N
KEY_CHUNK = 4096


@torch.no_grad()
def knn_search(query: torch.Tensor, keys: torch.Tensor, k: int, *, exclude: torch.Tensor | None = None,
               chunk_size: int = 4096, key_chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Exact cosine top-k of every query row among the key rows, block by block, without gradient.

    .. math::
        \mathcal N_k(q) = \operatorname{top-k}_{j \ne e_q}\ \hat q \cdot \hat g_j

    The one exact search of the library (:func:`knn_indices` and
    :meth:`bgcn.bank.FeatureBank.search` call it). Query rows are taken ``chunk_size`` at a time;
    against one ``chunk_size`` × M block of similarities, or with ``key_chunk`` against
    ``chunk_size`` × ``key_chunk`` blocks whose top-k are merged into a running top-k (then the peak
    memory does not grow with M at all). ``key_chunk=None`` takes :data:`KEY_CHUNK` key rows a
    block: a whole row of M similarities per query would be 16 GB a block of 4 096 queries at a
    million images, and it is no faster (``benchmarks/bench_knn.py``). Query and keys are normalised to unit rows here (a key
    block at a time).

    Ties: ``torch.topk`` does not specify which of two equal similarities comes first, so among
    tied neighbours the choice may differ between devices, chunk sizes and torch versions.

    Args:
        query: (Q, D) query features.
        keys: (M, D) key features (the candidates).
        k: neighbours per query row, 1 <= k <= M (M - 1 with ``exclude``).
        exclude: (Q,) long, the key id that query row r must not find (itself, when the queries
            are keys), or ``None``.
        chunk_size: query rows per block.
        key_chunk: key rows per block (``None``: :data:`KEY_CHUNK`).

    Returns:
        ``(values, indices)``, each (Q, k): the similarities and key ids, by decreasing similarity.

    Shapes:
        - query: (Q, D), keys: (M, D), exclude: (Q,) or None
        - values: (Q, k) float, indices: (Q, k) long

    Taught in: chapter 10 (chapters/10_scaling_1_memory.md) and chapter 11 (chapters/11_minibatch_1_bank.md).
    """
    check_tensor(query, "query", ndim=2, finite=False)  # callers check finiteness where it matters
    check_tensor(keys, "keys", ndim=2, finite=False)
    if keys.shape[1] != query.shape[1]:
        raise ValueError(f"query has D={query.shape[1]} features but keys have D={keys.shape[1]}; both must have the same D")
    if keys.device != query.device or keys.dtype != query.dtype:
        raise ValueError(f"query ({query.dtype}, {query.device}) and keys ({keys.dtype}, {keys.device}) must share "
                         f"dtype and device; convert with query.to(keys)")
    m, n = query.shape[0], keys.shape[0]
    k = check_k(k, n, exclude_self=exclude is not None)
    chunk_size = check_int(chunk_size, "chunk_size", 1)
    bc = min(n, KEY_CHUNK) if key_chunk is None else check_int(key_chunk, "key_chunk", 1)
    if exclude is not None and (not isinstance(exclude, torch.Tensor) or exclude.shape != (m,)):
        raise ValueError(f"exclude must be a ({m},) long tensor of key ids, one per query row, or None")
    qn = normalize_rows(query.detach())
    values = torch.empty(m, k, dtype=qn.dtype, device=query.device)
    out = torch.empty(m, k, dtype=torch.long, device=query.device)
    # one similarity buffer for every block: a fresh 64 MiB block each time would be mapped and
    # unmapped by the allocator, page by page (millions of page faults an epoch)
    buf = torch.empty(min(chunk_size, m) * min(bc, n), dtype=qn.dtype, device=query.device)
    for start in range(0, m, chunk_size):
        stop = min(start + chunk_size, m)
        rows = torch.arange(stop - start, device=query.device)
        best_v = best_i = None
        for c0 in range(0, n, bc):
            c1 = min(c0 + bc, n)
            s = torch.mm(qn[start:stop], normalize_rows(keys[c0:c1].detach()).T,
                         out=buf[:(stop - start) * (c1 - c0)].view(stop - start, c1 - c0))
            if exclude is not None:
                e = exclude[start:stop]
                inside = (e >= c0) & (e < c1)
                s[rows[inside], e[inside] - c0] = float("-inf")
            v, i = torch.topk(s, min(k, c1 - c0), dim=1)
            i = i + c0
            if best_v is not None:
                v, j = torch.topk(torch.cat([best_v, v], 1), min(k, best_v.shape[1] + v.shape[1]), dim=1)
                i = torch.cat([best_i, i], 1).gather(1, j)
            best_v, best_i = v, i
        values[start:stop], out[start:stop] = best_v, best_i
    return values, out


@torch.no_grad()
def knn_indices(features: torch.Tensor, k: int, exclude_self: bool = True, chunk_size: int = 4096) -> torch.Tensor:
    r"""Exact cosine kNN indices, computed chunk by chunk without gradient.

    For each block of rows, :math:`S_{\text{block}} = \hat F_{\text{block}} \hat F^\top` is formed and
    only its top-k indices are kept, so the peak memory is ``chunk_size * N`` instead of ``N * N``
    (:func:`knn_search` of the features against themselves).
    Indices carry no gradient anyway (chapter 02); recompute the k similarity values with
    autograd afterwards (:func:`bgcn.graph.knn_graph` with ``chunk_size``) for an O(N·k·D)
    autograd footprint.

    Ties: ``torch.topk`` does not specify which of two equal similarities comes first, so among
    tied neighbours the choice (and the order) may differ between devices, chunk sizes and torch
    versions; only the multiset of the k similarity values is determined.

    Shapes:
        - features: (N, D)
        - output: (N, k) long, row i sorted by decreasing similarity

    Taught in: chapter 10 (chapters/10_scaling_1_memory.md).
    """
    check_tensor(features, "features", ndim=2)
    n = features.shape[0]
    k = check_k(k, n, exclude_self=exclude_self)
    chunk_size = check_int(chunk_size, "chunk_size", 1)
    exclude = torch.arange(n, device=features.device) if exclude_self else None
    return knn_search(features, features, k, exclude=exclude, chunk_size=chunk_size)[1]
