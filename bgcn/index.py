r"""Neighbour indices behind the bank: the exact chunked search, or an approximate FAISS index.

One interface, :class:`NeighbourIndex`: :meth:`~NeighbourIndex.build` on the (N, D) key rows
(the bank, once an epoch), then :meth:`~NeighbourIndex.search` for query rows, which returns the
ids of each query's k nearest keys by cosine similarity, a query's own id excluded.

* :class:`ExactIndex` is :func:`bgcn.similarity.knn_search`: exact, the reference, and the
  default below :data:`APPROXIMATE_FROM` keys (and wherever exactness is the point: the book's
  chapters, the b = N equality tests).
* :class:`FaissIndex` proposes ``candidates`` ids a query from a FAISS index built on the keys
  (``"ivf"``: an inverted file, ``nlist`` ≈ 4·√N lists, ``nprobe`` of them searched; ``"hnsw"``: a
  graph index; ``"flat"``: FAISS's exact inner-product scan), then **re-ranks them exactly**
  against the current key rows (which may have moved since the build: the bank's rows change
  every step) and keeps the top k. Only which ids are candidates is approximate; the k
  similarities that carry gradient are recomputed from fresh features by the caller, as with
  the exact search.

:func:`recall_at_k` measures what the approximation (and the staleness of the build) keeps: the
fraction of the exact k neighbours that the index returns, on a sample of rows.

The field builds whole-data-set graphs the same way: LP-DeepSSL (Iscen et al. 2019) rebuilds a
FAISS kNN graph over all training images every epoch (FAISS: Johnson, Douze and Jégou 2019,
"Billion-scale similarity search with GPUs").

Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
"""
from __future__ import annotations

import math

import torch

from ._checks import check_choice, check_int, check_k, check_tensor
from .similarity import knn_search, normalize_rows

__all__ = ["NeighbourIndex", "ExactIndex", "FaissIndex", "make_index", "resolve_index_kind", "recall_at_k",
           "INDEX_KINDS", "FLAT_FROM", "APPROXIMATE_FROM",
           "NPROBE_8_FROM"]

INDEX_KINDS = ("exact", "flat", "ivf", "hnsw")
"""The kinds :func:`make_index` accepts besides ``"auto"``."""

FLAT_FROM = 20_000
"""``"auto"`` on the CPU uses FAISS's exhaustive ``"flat"`` scan from this many keys: the same
neighbours (re-ranked exactly from 2k candidates), about 2.4× faster than the torch search at
20 000 keys on one thread (``benchmarks/bench_index.py``); below it the torch search is as fast."""

APPROXIMATE_FROM = 100_000
"""``"auto"`` uses ``"ivf"`` from this many keys (``benchmarks/bench_index.py``: the exhaustive
search costs N²·D an epoch, the IVF index about N·√N·D with recall@10 above 0.95)."""


NPROBE_8_FROM = 300_000
"""From this many keys the IVF index probes 8 lists a query instead of 16 (see :class:`FaissIndex`)."""


class NeighbourIndex:
    """Base class: ``build(keys)`` once, then ``search(query, k, exclude)`` as often as needed.

    Shapes:
        - keys: (N, D); query: (M, D); exclude: (M,) long or None
        - search output: (M, k) long key ids, by decreasing similarity

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """

    kind = "base"
    exact = True

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None

    def build(self, keys: torch.Tensor) -> "NeighbourIndex":
        check_tensor(keys, "keys", ndim=2)
        self.keys = keys
        return self

    def _check_query(self, query: torch.Tensor, k: int, exclude: torch.Tensor | None) -> int:
        if self.keys is None:
            raise RuntimeError(f"{type(self).__name__}.search before build(): call index.build(keys) first")
        check_tensor(query, "query", ndim=2, finite=False)
        if query.shape[1] != self.keys.shape[1]:
            raise ValueError(f"query has D={query.shape[1]} features but the index holds D={self.keys.shape[1]}")
        if exclude is not None and (not isinstance(exclude, torch.Tensor) or exclude.shape != (query.shape[0],)):
            raise ValueError(f"exclude must be a ({query.shape[0]},) long tensor of key ids, one per query row, "
                             f"or None")
        return check_k(k, self.keys.shape[0], exclude_self=exclude is not None)

    def search(self, query: torch.Tensor, k: int, exclude: torch.Tensor | None = None, *,
               keys: torch.Tensor | None = None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        n = "unbuilt" if self.keys is None else f"N={self.keys.shape[0]}"
        return f"{type(self).__name__}({n})"


class ExactIndex(NeighbourIndex):
    """The exact chunked search (:func:`bgcn.similarity.knn_search`); ``build`` only keeps the keys.

    Args:
        chunk_size: query rows per block.
        key_chunk: key rows per block (``None``: :data:`bgcn.similarity.KEY_CHUNK`).

    Shapes: see :class:`NeighbourIndex`.

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """

    kind = "exact"

    def __init__(self, chunk_size: int = 4096, key_chunk: int | None = None):
        super().__init__()
        self.chunk_size = check_int(chunk_size, "chunk_size", 1)
        self.key_chunk = None if key_chunk is None else check_int(key_chunk, "key_chunk", 1)

    @torch.no_grad()
    def search(self, query, k, exclude=None, *, keys=None):
        """``keys``: search these rows instead of the built ones (the bank's current rows)."""
        k = self._check_query(query, k, exclude)
        keys = self.keys if keys is None else keys
        return knn_search(query, keys, k, exclude=exclude, chunk_size=self.chunk_size, key_chunk=self.key_chunk)[1]


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is in requirements.txt
        raise ImportError("an approximate index needs FAISS: pip install faiss-cpu (or use index='exact')") from exc
    return faiss


class FaissIndex(NeighbourIndex):
    r"""Candidates from a FAISS index on the unit key rows, re-ranked exactly against the current keys.

    .. math::
        C(q) = \text{FAISS}_{k'}(\hat q),\qquad
        \mathcal N_k(q) = \operatorname{top-k}_{j \in C(q),\, j \ne e_q}\ \hat q \cdot \hat g_j

    Args:
        kind: ``"ivf"`` (``IndexIVFFlat``, inner product; trained on at most ``train_size`` rows),
            ``"hnsw"`` (``IndexHNSWFlat``) or ``"flat"`` (``IndexFlatIP``: exact up to float32
            rounding; the speed floor of an exhaustive scan).
        candidates: k′, the ids asked from FAISS per query (default ``max(2k, k + 10)``; one more
            when the query's own id is excluded). More candidates: higher recall, more re-ranking.
        nlist: IVF lists (default ``4·√N``, at least 1). nprobe: IVF lists searched a query
            (default: 16 below :data:`NPROBE_8_FROM` keys, 8 from there: with 4·√N lists a probe
            scans √N/4 rows, so all N queries cost N·√N either way; 8 halves the constant, and on a
            million clustered rows keeps recall@10 at 1.000 at 64 µs a query against 116 µs).
        hnsw_m, ef_search, ef_construction: HNSW's graph degree and beam widths.
        train_size: at most this many rows train the IVF quantiser (a random sample, ``seed``).
        threads: FAISS threads (default: ``torch.get_num_threads()``).
        rerank_rows: query rows searched and re-ranked at a time (each block gathers its (rows,
            candidates, D) key rows: 22 MiB at 4 096 rows, 21 candidates, D = 64, whatever the
            number of queries).

    FAISS works in float32 on the CPU (the faiss-cpu wheel): keys on a GPU are copied to the CPU
    for the build and the query; use :class:`ExactIndex` on a GPU unless the FAISS build has GPU
    indices. Rows FAISS cannot fill (an IVF probe with too few entries) fall back to the exact
    search for those rows only.

    Shapes: see :class:`NeighbourIndex`.

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """

    exact = False

    def __init__(self, kind: str = "ivf", *, candidates: int | None = None, nlist: int | None = None,
                 nprobe: int | None = None, hnsw_m: int = 16, ef_search: int = 64, ef_construction: int = 40,
                 train_size: int = 50_000, threads: int | None = None, seed: int = 0,
                 rerank_rows: int = 4096):
        super().__init__()
        self.kind = check_choice(kind, "kind", ("ivf", "hnsw", "flat"))
        self.candidates = None if candidates is None else check_int(candidates, "candidates", 1)
        self.nlist = None if nlist is None else check_int(nlist, "nlist", 1)
        self.nprobe = None if nprobe is None else check_int(nprobe, "nprobe", 1)
        self.hnsw_m = check_int(hnsw_m, "hnsw_m", 2)
        self.ef_search = check_int(ef_search, "ef_search", 1)
        self.ef_construction = check_int(ef_construction, "ef_construction", 1)
        self.train_size = check_int(train_size, "train_size", 1)
        self.threads = None if threads is None else check_int(threads, "threads", 1)
        self.seed = int(seed)
        self.rerank_rows = check_int(rerank_rows, "rerank_rows", 1)
        self.exact = kind == "flat"
        self.index = None
        self._quantiser = None

    @torch.no_grad()
    def build(self, keys: torch.Tensor) -> "FaissIndex":
        """Index the unit rows of ``keys`` (float32 copy on the CPU); the IVF quantiser is trained here."""
        super().build(keys)
        faiss = _faiss()
        faiss.omp_set_num_threads(self.threads or torch.get_num_threads())
        x = normalize_rows(keys.detach()).to("cpu", torch.float32).contiguous().numpy()
        n, d = x.shape
        if self.kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
        else:
            nlist = min(self.nlist or max(1, round(4 * math.sqrt(n))), n)
            quantiser = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantiser, d, nlist, faiss.METRIC_INNER_PRODUCT)
            g = torch.Generator().manual_seed(self.seed)
            sample = torch.randperm(n, generator=g)[:max(self.train_size, nlist)].sort().values.numpy()
            index.cp.min_points_per_centroid = 1  # a 50 000-row sample trains up to 12 500 lists
            index.train(x[sample])
            nprobe = self.nprobe or (16 if n < NPROBE_8_FROM else 8)
            index.nprobe = min(nprobe, nlist)
            self._quantiser = quantiser  # the IVF index refers to it: keep it alive
        index.add(x)
        if self.kind == "hnsw":
            index.hnsw.efSearch = self.ef_search
        self.index = index
        return self

    @torch.no_grad()
    def candidate_ids(self, query: torch.Tensor, kc: int) -> torch.Tensor:
        """The ``kc`` ids FAISS proposes for each query row (-1 where it found fewer).

        Shapes: query (M, D) -> (M, kc) long, on query's device
        """
        faiss = _faiss()
        faiss.omp_set_num_threads(self.threads or torch.get_num_threads())
        q = normalize_rows(query.detach()).to("cpu", torch.float32).contiguous().numpy()
        kc = min(kc, self.keys.shape[0])
        _, ids = self.index.search(q, kc)
        return torch.from_numpy(ids).to(query.device)

    @torch.no_grad()
    def search(self, query, k, exclude=None, *, keys=None):
        """``keys``: re-rank against these rows (the bank's current rows; default: the built keys).
        Queries go ``rerank_rows`` at a time, so that a search of all N rows (the evaluation's)
        holds one block's candidates, not N × candidates ids and their key rows."""
        k = self._check_query(query, k, exclude)
        keys = self.keys if keys is None else keys
        kc = (self.candidates or max(2 * k, k + 10)) + (exclude is not None)
        out = torch.empty(query.shape[0], k, dtype=torch.long, device=query.device)
        for a in range(0, query.shape[0], self.rerank_rows):
            b = min(a + self.rerank_rows, query.shape[0])
            out[a:b] = self._search_block(query[a:b], k, None if exclude is None else exclude[a:b], keys, kc)
        return out

    def _search_block(self, query, k, exclude, keys, kc):
        cand = self.candidate_ids(query, max(kc, k + (exclude is not None)))
        valid = cand >= 0
        if exclude is not None:
            valid &= cand != exclude.to(cand.device).unsqueeze(1)
        safe = cand.clamp_min(0)
        sims = (normalize_rows(query.detach()).unsqueeze(1) * normalize_rows(keys[safe])).sum(-1)
        out = safe.gather(1, torch.topk(sims.masked_fill(~valid, float("-inf")), k, dim=1).indices)
        short = valid.sum(1) < k  # FAISS found fewer than k usable ids: search those rows exactly
        if bool(short.any()):
            rows = torch.nonzero(short).squeeze(1)
            out[rows] = knn_search(query[rows], keys, k, exclude=None if exclude is None else exclude[rows])[1]
        return out

    def __repr__(self) -> str:
        n = "unbuilt" if self.keys is None else f"N={self.keys.shape[0]}"
        return f"FaissIndex({self.kind!r}, {n})"


def resolve_index_kind(kind: str, num_keys: int | None = None, device: str | torch.device = "cpu") -> str:
    """The kind ``"auto"`` stands for at ``num_keys`` keys on ``device``: on the CPU ``"exact"`` below
    :data:`FLAT_FROM`, ``"flat"`` below :data:`APPROXIMATE_FROM`, else ``"ivf"``; on a GPU always
    ``"exact"`` (the faiss-cpu wheel has no GPU index; torch's search is fast there). Any other kind
    is checked and returned.

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    kind = check_choice(kind, "index", ("auto",) + INDEX_KINDS)
    if kind != "auto":
        return kind
    if num_keys is None:
        raise ValueError("index='auto' needs num_keys (N) to choose; or name the kind, e.g. index='exact'")
    n = check_int(num_keys, "num_keys", 1)
    if torch.device(device).type != "cpu" or n < FLAT_FROM:
        return "exact"
    return "flat" if n < APPROXIMATE_FROM else "ivf"


def make_index(kind: str = "auto", num_keys: int | None = None, device: str | torch.device = "cpu",
               **options) -> NeighbourIndex:
    """An unbuilt index by name: ``"exact"``, ``"flat"``, ``"ivf"``, ``"hnsw"`` or ``"auto"``
    (:func:`resolve_index_kind`). ``options`` go to the class.

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    kind = resolve_index_kind(kind, num_keys, device)
    if kind == "exact":
        return ExactIndex(**{k: v for k, v in options.items() if k in ("chunk_size", "key_chunk")})
    return FaissIndex(kind, **{k: v for k, v in options.items() if k not in ("chunk_size", "key_chunk")})


@torch.no_grad()
def recall_at_k(found: torch.Tensor, exact: torch.Tensor) -> float:
    """The fraction of the exact neighbours that were found: the mean over rows of the number of ids
    in both ``found`` and ``exact``, divided by k.

    Shapes: found (M, k) long, exact (M, k) long -> float in [0, 1]

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    if not isinstance(found, torch.Tensor) or not isinstance(exact, torch.Tensor) or found.shape != exact.shape \
            or found.dim() != 2:
        raise ValueError(f"found and exact must be (M, k) id tensors of the same shape, got "
                         f"{getattr(found, 'shape', type(found))} and {getattr(exact, 'shape', type(exact))}")
    hits = (found.unsqueeze(2) == exact.unsqueeze(1)).any(2).sum()
    return float(hits) / max(exact.numel(), 1)
