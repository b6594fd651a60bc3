r"""The feature bank: the latest detached feature of every image, and the graph around a batch.

Training past one batch (chapter 11) keeps an (N, D) table :math:`B` of features, one row per
image, written by a no-grad pass over all images (:meth:`FeatureBank.fill`) and then row by row
as each batch computes fresh features (:meth:`FeatureBank.update`). A batch's neighbours are
searched in it exactly (:meth:`FeatureBank.search`, chunked, like
:func:`bgcn.similarity.knn_indices`), and :func:`computation_subgraph` builds the small graph a
2-layer GCN needs to compute the batch's outputs *exactly as the full graph would*, with the
out-of-batch nodes' inputs taken from the bank (the historical-embedding idea of GNNAutoScale,
Fey et al. 2021, applied to the GCN's input features).

Memory: the bank is N·D floats (plus N·k longs with the optional neighbour lists,
:meth:`FeatureBank.fill_neighbours`); nothing else here grows with N: a search holds one
``chunk_size`` × ``bank_chunk`` block at a time (``chunk_size`` × N without ``bank_chunk``),
under ``no_grad``.

Taught in: chapter 11 (chapters/11_minibatch.md).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .estimators import ESTIMATORS, get_spec, rowwise_names
from .scaling import similarity_logsumexp
from .similarity import knn_search, normalize_rows
from .topk import row_weights
from .utils import check_k, check_positive, check_tensor

__all__ = ["FeatureBank", "Subgraph", "computation_subgraph", "subgraph_log_probs", "predict",
           "ema_backbone", "momentum_update", "BANK_ESTIMATORS", "bank_estimator", "bank_logsumexp"]

#: Estimators the bank engine supports: the row-wise ones (:func:`bgcn.estimators.rowwise_names`,
#: read from their specs when this module is imported): ``"hard"``, ``"values"``,
#: ``"masked_softmax"`` need only the k kept similarities of a row; ``"softmax"`` (seed 000) also a
#: row's log-sum-exp over all N, computed against the bank. A row-wise estimator registered later
#: is accepted too (the engine asks its spec).
BANK_ESTIMATORS = rowwise_names()


def _check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an int >= {minimum}")
    return int(value)


def _param_dtype(module: nn.Module) -> torch.dtype | None:
    p = next(iter(module.parameters()), None)
    return p.dtype if p is not None and p.is_floating_point() else None


def _backbone_of(backbone):
    """The feature extractor: an ``EndToEnd``'s ``.backbone``, else the module itself."""
    inner = getattr(backbone, "backbone", None)
    return inner if isinstance(inner, nn.Module) and hasattr(backbone, "gcn") else backbone


def _embed(backbone: nn.Module, images: torch.Tensor, chunk_size: int, device) -> torch.Tensor:
    """Features of ``images`` in eval mode, chunk by chunk, without gradient (mode restored):
    :func:`bgcn.minibatch.embed_images` (one copy of the loop)."""
    from .minibatch import embed_images  # minibatch imports this module: import at call time

    return embed_images(backbone, images, chunk_size, device)


def _check_images(images, name: str = "images") -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (N, C_in, H, W), got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be floating point with values in [0, 1], got dtype {images.dtype}; "
                        f"convert with {name}.float() / 255 (uint8) or {name}.float()")
    if images.dim() < 2 or images.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, ...) with N >= 1 images, got {tuple(images.shape)}")
    return images


class FeatureBank:
    r"""An (N, D) table :math:`B` of the latest *detached* feature of every image.

    .. math::
        B_i \leftarrow f_\theta(x_i)\ \text{(fill: all i, no grad)},\qquad
        B_i \leftarrow \operatorname{sg}(f_\theta(x_i))\ \text{for}\ i \in \text{batch (update)}

    (:math:`\operatorname{sg}` = stop-gradient.) A row is as old as the last step whose batch held
    that image, or the last :meth:`fill`; :meth:`refresh` is a fill. Its memory is N·D floats.

    Args:
        num_nodes: N.
        dim: D.
        dtype, device: of the table (a :meth:`fill` from a float64 backbone makes it float64).

    Shapes:
        - features: (N, D), never requires grad

    Taught in: chapter 11 (chapters/11_minibatch.md).
    """

    def __init__(self, num_nodes: int, dim: int, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
        n = _check_int(num_nodes, "num_nodes", 2)
        d = _check_int(dim, "dim", 1)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}")
        self.features = torch.zeros(n, d, dtype=dtype, device=device)
        self.filled = False
        #: optional (N, k) neighbour lists (:meth:`fill_neighbours`): each row as found at that
        #: node's last batch or the last fill; ``None`` = always search
        self.neighbours: torch.Tensor | None = None

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_backbone(cls, backbone: nn.Module, images: torch.Tensor, chunk_size: int = 512,
                      device: str | torch.device | None = None) -> "FeatureBank":
        """A bank filled by one no-grad pass of ``backbone`` (or an ``EndToEnd``'s) over ``images``.

        Shapes: images (N, C_in, H, W) -> bank.features (N, D)
        """
        bb = _backbone_of(backbone)
        if not isinstance(bb, nn.Module):
            raise TypeError(f"backbone must be a torch.nn.Module, got {type(backbone).__name__}")
        images = _check_images(images)
        chunk_size = _check_int(chunk_size, "chunk_size")
        dev = device if device is not None else _device_of(bb, images)
        feats = _embed(bb, images, chunk_size, dev)
        bank = cls(feats.shape[0], feats.shape[1], feats.dtype, feats.device)
        bank.features.copy_(feats)
        bank.filled = True
        return bank

    def fill(self, backbone: nn.Module, images: torch.Tensor, chunk_size: int = 512) -> "FeatureBank":
        r"""Overwrite every row: :math:`B = f_\theta(X)` in eval mode, ``chunk_size`` images at a time,
        under ``no_grad`` (the backbone's train/eval mode is restored after).

        Shapes: images (N, C_in, H, W) with N = ``num_nodes``
        """
        bb = _backbone_of(backbone)
        images = _check_images(images)
        if images.shape[0] != self.num_nodes:
            raise ValueError(f"images has {images.shape[0]} rows but the bank holds N={self.num_nodes}; "
                             f"fill it with the same N images it was made for")
        chunk_size = _check_int(chunk_size, "chunk_size")
        for start in range(0, self.num_nodes, chunk_size):
            f = _embed(bb, images[start:start + chunk_size], chunk_size, self.device)
            self._check_rows(f, "backbone features", f.shape[0])
            self.features[start:start + f.shape[0]] = f.to(self.dtype)
        self.filled = True
        return self

    refresh = fill

    @torch.no_grad()
    def fill_neighbours(self, k: int, chunk_size: int = 4096, bank_chunk: int | None = None) -> torch.Tensor:
        r"""Search every bank row's k neighbours once and keep them: :math:`\mathcal N_k(i)` for all i.

        With the lists kept, :func:`computation_subgraph` reads the rows of the out-of-batch
        neighbours from them instead of searching (about k times fewer queries a step) and writes
        each batch's freshly searched rows back: *historical neighbour lists*, as stale as the
        bank's rows. Memory N·k longs.

        Shapes: -> neighbours (N, k) long
        """
        ids = torch.arange(self.num_nodes, device=self.device)
        self.neighbours = self.search(self.features, k, exclude=ids, chunk_size=chunk_size, bank_chunk=bank_chunk)
        return self.neighbours

    # -- properties ---------------------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.features.dtype

    @property
    def device(self) -> torch.device:
        return self.features.device

    @property
    def nbytes(self) -> int:
        """Bytes held: N·D·(bytes per float), plus N·k·8 with the neighbour lists."""
        extra = 0 if self.neighbours is None else self.neighbours.numel() * self.neighbours.element_size()
        return self.features.numel() * self.features.element_size() + extra

    def __len__(self) -> int:
        return self.num_nodes

    def __repr__(self) -> str:
        return (f"FeatureBank(N={self.num_nodes}, D={self.dim}, dtype={self.dtype}, device={self.device}, "
                f"filled={self.filled})")

    # -- checks -------------------------------------------------------------------------------
    def _check_rows(self, feats, name: str, m: int | None = None) -> torch.Tensor:
        check_tensor(feats, name, ndim=2)
        if feats.shape[1] != self.dim:
            raise ValueError(f"{name} has D={feats.shape[1]} features but the bank holds D={self.dim}")
        if m is not None and feats.shape[0] != m:
            raise ValueError(f"{name} has {feats.shape[0]} rows, expected {m}")
        if feats.device != self.device:
            raise ValueError(f"{name} is on {feats.device} but the bank is on {self.device}; "
                             f"move it with .to({str(self.device)!r})")
        if feats.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {feats.dtype} but the bank holds {self.dtype}; "
                            f"cast it with .to({self.dtype}) (or build the bank in that dtype)")
        return feats

    def _check_ids(self, ids, name: str) -> torch.Tensor:
        if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.is_floating_point() or ids.dtype == torch.bool:
            raise TypeError(f"{name} must be a 1-D integer tensor of node ids, got "
                            f"{ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__}")
        if ids.device != self.device:
            raise ValueError(f"{name} is on {ids.device} but the bank is on {self.device}; move it with .to()")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_nodes):
            raise ValueError(f"{name} holds ids in [{int(ids.min())}, {int(ids.max())}]; they must lie in "
                             f"[0, {self.num_nodes - 1}]")
        return ids.long()

    # -- writing and searching ----------------------------------------------------------------
    @torch.no_grad()
    def update(self, indices: torch.Tensor, feats: torch.Tensor) -> "FeatureBank":
        r"""Write a batch's fresh features, detached: :math:`B_{i} \leftarrow \operatorname{sg}(f_i)`.

        Shapes: indices (b,) long, feats (b, D)
        """
        idx = self._check_ids(indices, "indices")
        self._check_rows(feats, "feats", idx.shape[0])
        self.features[idx] = feats.detach()
        return self

    @torch.no_grad()
    def search(self, query: torch.Tensor, k: int, exclude: torch.Tensor | None = None,
               chunk_size: int = 4096, bank_chunk: int | None = None) -> torch.Tensor:
        r"""Exact cosine top-k of each query row against the bank, chunk by chunk, without gradient.

        .. math::
            \mathcal N_k(q) = \operatorname{top-k}_{j \ne e_q}\ \hat q \cdot \hat B_j

        ``exclude[r]`` is the bank id of query r (a query that is itself in the bank must not find
        itself); ``None`` for new images. One ``chunk_size`` × N block exists at a time, or, with
        ``bank_chunk``, one ``chunk_size`` × ``bank_chunk`` block whose top-k is merged into a running
        top-k (then the peak memory does not grow with N at all): :func:`bgcn.similarity.knn_search`
        of the query against the bank.

        Shapes:
            - query: (M, D); exclude: (M,) long or None
            - output: (M, k) long bank ids, each row by decreasing similarity

        Taught in: chapter 11 (chapters/11_minibatch.md).
        """
        self._check_rows(query, "query")
        m = query.shape[0]
        k = check_k(k, self.num_nodes, exclude_self=exclude is not None)
        chunk_size = int(check_positive(chunk_size, "chunk_size"))
        if exclude is not None:
            exclude = self._check_ids(exclude, "exclude")
            if exclude.shape[0] != m:
                raise ValueError(f"exclude has {exclude.shape[0]} ids but query has {m} rows; give one per row")
        if bank_chunk is not None:
            bank_chunk = int(check_positive(bank_chunk, "bank_chunk"))
        return knn_search(query, self.features, k, exclude=exclude, chunk_size=chunk_size, key_chunk=bank_chunk)[1]


def _device_of(module: nn.Module, fallback: torch.Tensor) -> torch.device:
    p = next(iter(module.parameters()), None)
    return p.device if p is not None else fallback.device


# ----------------------------------------------------------------------------------------------
# momentum (EMA) backbone, as in MoCo
# ----------------------------------------------------------------------------------------------
def ema_backbone(backbone: nn.Module) -> nn.Module:
    r"""A frozen copy :math:`\theta_\text{ema} = \theta` of the backbone, for a momentum bank (MoCo).

    Update it after every step with :func:`momentum_update`; its features change slowly, so the
    bank's rows written at different steps stay comparable.

    Shapes: same as the backbone.

    Taught in: chapter 11 (chapters/11_minibatch.md).
    """
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone must be a torch.nn.Module, got {type(backbone).__name__}")
    ema = copy.deepcopy(backbone)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema.eval()


@torch.no_grad()
def momentum_update(ema: nn.Module, backbone: nn.Module, momentum: float = 0.99) -> nn.Module:
    r""":math:`\theta_\text{ema} \leftarrow m\,\theta_\text{ema} + (1 - m)\,\theta` for every parameter
    (buffers are copied).

    Shapes: none (parameters in place).

    Taught in: chapter 11 (chapters/11_minibatch.md).
    """
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum={momentum!r} must be a number in [0, 1] (0 copies the backbone)")
    pe, pb = list(ema.parameters()), list(backbone.parameters())
    if len(pe) != len(pb) or any(a.shape != b.shape for a, b in zip(pe, pb)):
        raise ValueError("ema and backbone must have the same architecture (make ema with ema_backbone(backbone))")
    for a, b in zip(pe, pb):
        a.mul_(momentum).add_(b.detach(), alpha=1.0 - momentum)
    for a, b in zip(ema.buffers(), backbone.buffers()):
        a.copy_(b)
    return ema


# ----------------------------------------------------------------------------------------------
# the computation subgraph of a batch
# ----------------------------------------------------------------------------------------------
@dataclass
class Subgraph:
    r"""The graph a 2-layer GCN needs to compute the outputs of ``m`` query nodes exactly.

    Local node order: the m query nodes first (0..m-1), then ``extra`` (sorted bank ids).

    Shapes:
        - x: (m + len(extra), D), the first m rows may require grad
        - edge_index: (2, E) local ids, edge_weight: (E,)
        - indices: (m, k) bank ids of the query nodes' neighbours
        - extra: (n_extra,) long bank ids

    Taught in: chapter 11 (chapters/11_minibatch.md).
    """

    x: torch.Tensor
    edge_index: torch.Tensor
    edge_weight: torch.Tensor
    num_query: int
    indices: torch.Tensor
    extra: torch.Tensor
    num_hop1: int
    num_hop2: int

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])


def _estimator_weights(vals: torch.Tensor, estimator: str, tau: float, use_weights: bool,
                       lse: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`bgcn.topk.row_weights`, with unit weights when the graph's weights are unused."""
    return row_weights(vals, estimator if use_weights else "hard", tau, lse)


def _constant_row_sum(estimator: str, k: int) -> float | None:
    """The row sum of :func:`bgcn.topk.row_weights` when it is the same for every row (``"hard"``: k,
    ``"masked_softmax"``: 1), else ``None``: then a degree :math:`d_l = 1 + \\sum_j \\tilde w_{lj}` needs row l."""
    return {"hard": float(k), "masked_softmax": 1.0}.get(estimator)


def bank_logsumexp(bank: "FeatureBank", q: torch.Tensor, tau: float, exclude: torch.Tensor | None,
                   chunk_size: int, bank_chunk: int | None) -> torch.Tensor:
    r""":math:`A_r = \log\sum_{l \ne e_r} \exp(\hat q_r\cdot\hat B_l/\tau)` over every bank row, in
    ``chunk_size`` x ``bank_chunk`` blocks (:func:`bgcn.scaling.similarity_logsumexp`); with gradient
    to ``q`` (blocks recomputed in backward by ``torch.utils.checkpoint``, so only (rows,) values per
    block are kept).

    Shapes: q (r, D), exclude (r,) or None -> (r,)

    Taught in: chapter 11 (chapters/11_minibatch.md).
    """
    return similarity_logsumexp(normalize_rows(q), bank.features, tau, exclude=exclude, chunk_size=chunk_size,
                                key_chunk=bank_chunk, checkpoint=True, normalize_keys=True)


def _softmax_lse(bank, row_feats, row_ids, query_feats, query_ids, tau, chunk_size, bank_chunk):
    r"""Row log-sum-exps :math:`L_r` over all N with the batch's columns *fresh*:
    :math:`L_r = A_r + \sum_{l\in Q, l\ne r} \operatorname{sg}(p_{rl})\,(t_{rl} - \operatorname{sg}(t_{rl}))`,
    :math:`t_{rl} = \operatorname{sg}(\hat q_r)\cdot\hat F_l/\tau`, :math:`p_{rl} = e^{t_{rl} - A_r}`.
    The bank already holds the batch's fresh values, so :math:`A_r` has the right value and the
    gradient to :math:`q_r`; the second term (value 0) adds the gradient to the batch columns."""
    a = bank_logsumexp(bank, row_feats, tau, row_ids, chunk_size, bank_chunk)
    if query_ids is None or query_feats.shape[0] == 0 or not query_feats.requires_grad:
        return a
    qn_rows = normalize_rows(row_feats.detach())
    fq = normalize_rows(query_feats)
    t = (qn_rows @ fq.T) / tau  # (rows, b): gradient to the batch's fresh features only
    if row_ids is not None:
        t = t.masked_fill(row_ids.unsqueeze(1) == query_ids.unsqueeze(0), float("-inf"))
    p = torch.exp(t.detach() - a.detach().unsqueeze(1))
    corr = torch.nan_to_num(p * (t - t.detach()), nan=0.0)  # -inf - (-inf) at excluded entries
    return a + corr.sum(1)


def computation_subgraph(bank: FeatureBank, query_feats: torch.Tensor, k: int, *,
                         query_ids: torch.Tensor | None = None, estimator: str = "hard", tau: float = 1.0,
                         use_weights: bool = True, chunk_size: int = 4096,
                         bank_chunk: int | None = None, use_neighbours: bool = False) -> Subgraph:
    r"""The exact 2-hop computation graph of the query nodes over the bank's kNN graph.

    The full graph has edges :math:`j \to i` for :math:`j \in \mathcal N_k(i)` with weight
    :math:`\tilde w_{ij}` = estimator of :math:`s_{ij} = \hat f_i\cdot\hat f_j`, and a GCN layer
    :math:`h'_i = \sum_{j} \tilde w_{ij} (d_i d_j)^{-1/2} h_j\Theta + d_i^{-1} h_i\Theta + b` with
    :math:`d_i = 1 + \sum_j \tilde w_{ij}` (in-degree plus self-loop; it depends on row i only).
    Node i's output after two layers needs, with Q the query nodes,
    :math:`H_1 = \mathcal N(Q)\setminus Q` (their rows and features) and
    :math:`H_2 = \mathcal N(H_1)\setminus(Q\cup H_1)` (their features and degrees only).
    So the subgraph holds the rows of :math:`Q \cup H_1` (k edges each) and, for a node
    :math:`l \in H_2`, one self-loop of weight :math:`d_l`: PyG's ``gcn_norm`` keeps an existing
    self-loop's weight, so :math:`d_l` comes out right (its own output is wrong, and unused).
    ``"hard"`` has :math:`d_l = 1 + k`, ``"masked_softmax"`` :math:`d_l = 2`; ``"values"`` and
    ``"softmax"`` search the rows of :math:`H_2` too (indices under no_grad; their weights keep
    the gradient to the query features).

    ``"softmax"`` (seed 000: :math:`\tilde w_{ij} = e^{s_{ij}/\tau} / \sum_{l\ne i} e^{s_{il}/\tau}`
    over all N): every row's normaliser is a log-sum-exp against the whole bank, in
    ``chunk_size`` × ``bank_chunk`` blocks (checkpointed for the query rows, so autograd keeps
    O(rows) values per block, not the blocks), plus a zero-valued term that carries the gradient
    to the batch's own columns (rows × b). It costs one more pass over the bank per row of
    :math:`Q\cup H_1\cup H_2`; the weights are exactly the full graph's.

    ``use_neighbours=True`` reads the rows of :math:`H_1` (and :math:`H_2`) from
    ``bank.neighbours`` (:meth:`FeatureBank.fill_neighbours`) instead of searching them, and
    writes the query rows into it: k times fewer queries, at the price of rows as stale as the
    bank's (exact again after a refresh, or when nothing has moved).

    Features: query node i gets ``query_feats[i]`` (fresh, with gradient); every other node its
    bank row (a constant). With ``query_ids`` (the query nodes are bank nodes, e.g. a training
    batch) a query node is excluded from its own ranking and is found by others as itself, so
    write the batch into the bank (:meth:`FeatureBank.update`) *before* calling this, so that
    searches see its fresh feature. Without ``query_ids`` (new images, :func:`predict`) the query
    nodes are not candidates: the graph among bank nodes does not change.

    Shapes:
        - query_feats: (m, D); query_ids: (m,) long, sorted ascending, or None
        - output: :class:`Subgraph`

    Taught in: chapter 11 (chapters/11_minibatch.md).
    """
    if not isinstance(estimator, str) or estimator not in ESTIMATORS or not get_spec(estimator).rowwise:
        raise ValueError(f"estimator {estimator!r} is not supported over a bank; choose one of "
                         f"{list(rowwise_names())}")
    q = _Query(bank, query_feats, query_ids)
    search = dict(chunk_size=chunk_size, bank_chunk=bank_chunk)
    cache = bank.neighbours if use_neighbours else None
    if use_neighbours and (cache is None or cache.shape[1] != k):
        raise ValueError(f"use_neighbours=True needs bank.fill_neighbours({k}) first")
    idx0 = bank.search(query_feats, k, exclude=q.ids, **search)
    if cache is not None and q.ids is not None:
        cache[q.ids] = idx0  # the batch's rows, fresh
    hop1, idx1, hop2, extra = _two_hops(q, idx0, k, cache, search)
    x = torch.cat([query_feats, bank.features[extra]])
    xn = normalize_rows(x)
    rows = torch.cat([torch.arange(q.m, device=bank.device), q.local(hop1, extra)])
    nbrs = torch.cat([q.local(idx0, extra), q.local(idx1, extra)])
    vals = (xn[rows].unsqueeze(1) * xn[nbrs]).sum(-1)  # (m + |H1|, k), O(rows·k·D)
    soft = use_weights and get_spec(estimator).needs_normaliser
    lse = None
    if soft:
        lse_q = _softmax_lse(bank, query_feats, q.ids, query_feats, q.ids, tau, chunk_size, bank_chunk)
        lse_1 = _softmax_lse(bank, bank.features[hop1], hop1, query_feats, q.ids, tau, chunk_size,
                             bank_chunk) if hop1.numel() else lse_q[:0]
        lse = torch.cat([lse_q, lse_1])
    w = _estimator_weights(vals, estimator, tau, use_weights, lse)
    src, dst = nbrs.reshape(-1), rows.repeat_interleave(k)
    ew = w.reshape(-1)
    if hop2.numel():
        deg = _hop2_degrees(q, hop2, k, estimator, tau, use_weights, soft, cache, search).to(ew.dtype)
        l2 = q.local(hop2, extra)
        src, dst = torch.cat([src, l2]), torch.cat([dst, l2])
        ew = torch.cat([ew, deg])
    return Subgraph(x, torch.stack([src, dst]), ew, q.m, idx0, extra, int(hop1.numel()), int(hop2.numel()))


class _Query:
    """The query nodes of a subgraph: their fresh features and (optional, sorted) bank ids."""

    def __init__(self, bank: FeatureBank, feats: torch.Tensor, ids: torch.Tensor | None):
        bank._check_rows(feats, "query_feats")
        self.bank, self.feats, self.m = bank, feats, feats.shape[0]
        if ids is not None:
            ids = bank._check_ids(ids, "query_ids")
            if ids.shape[0] != self.m:
                raise ValueError(f"query_ids has {ids.shape[0]} ids but query_feats has {self.m} rows")
            if self.m > 1 and not bool((ids[1:] > ids[:-1]).all()):
                raise ValueError("query_ids must be sorted ascending without repeats (use torch.unique(ids))")
        self.ids = ids

    def position(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(is bank id g a query node?, its query position)."""
        if self.ids is None:
            return torch.zeros_like(g, dtype=torch.bool), torch.zeros_like(g)
        p = torch.searchsorted(self.ids, g).clamp_max(self.m - 1)
        return self.ids[p] == g, p

    def lookup(self, g: torch.Tensor) -> torch.Tensor:
        """Features of bank ids g: the fresh query feature where g is a query node, else the bank row."""
        inq, p = self.position(g)
        out = self.bank.features[g]
        if self.ids is None or not bool(inq.any()):
            return out
        return torch.where(inq.unsqueeze(-1), self.feats[p], out)

    def local(self, g: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        """Local ids of bank ids g: query nodes first, then ``extra`` (sorted)."""
        inq, p = self.position(g)
        return torch.where(inq, p, self.m + torch.searchsorted(extra, g))


def _two_hops(q: _Query, idx0: torch.Tensor, k: int, cache: torch.Tensor | None, search: dict):
    r""":math:`H_1 = \mathcal N(Q)\setminus Q`, its rows, :math:`H_2 = \mathcal N(H_1)\setminus(Q\cup H_1)`
    and ``extra`` = :math:`H_1\cup H_2` sorted."""
    bank = q.bank
    hop1 = torch.unique(idx0)
    if q.ids is not None:
        hop1 = hop1[~torch.isin(hop1, q.ids)]
    if hop1.numel() and cache is not None:
        idx1 = cache[hop1]
    elif hop1.numel():
        idx1 = bank.search(bank.features[hop1], k, exclude=hop1, **search)
    else:
        idx1 = torch.empty(0, k, dtype=torch.long, device=bank.device)
    hop2 = torch.unique(idx1)
    known = hop1 if q.ids is None else torch.cat([q.ids, hop1])
    hop2 = hop2[~torch.isin(hop2, known)]
    return hop1, idx1, hop2, torch.unique(torch.cat([hop1, hop2]))


def _hop2_degrees(q: _Query, hop2: torch.Tensor, k: int, estimator: str, tau: float, use_weights: bool,
                  soft: bool, cache: torch.Tensor | None, search: dict) -> torch.Tensor:
    r"""Degrees :math:`d_l = 1 + \sum_j \tilde w_{lj}` of the nodes :math:`l \in H_2`: a constant when the row
    rule's row sum is one, else from their own rows (searched, or read from the neighbour lists)."""
    bank = q.bank
    const = _constant_row_sum(estimator if use_weights else "hard", k)
    if const is not None:
        return torch.full((hop2.numel(),), 1.0 + const, dtype=bank.dtype, device=bank.device)
    idx2 = cache[hop2] if cache is not None else bank.search(bank.features[hop2], k, exclude=hop2, **search)
    f2 = normalize_rows(bank.features[hop2])
    v2 = (f2.unsqueeze(1) * normalize_rows(q.lookup(idx2.reshape(-1))).reshape(*idx2.shape, -1)).sum(-1)
    lse2 = _softmax_lse(bank, bank.features[hop2], hop2, q.feats, q.ids, tau, search["chunk_size"],
                        search["bank_chunk"]) if soft else None
    return 1.0 + _estimator_weights(v2, estimator, tau, use_weights, lse2).sum(-1)


def subgraph_log_probs(model: nn.Module, sub: Subgraph) -> torch.Tensor:
    r"""The GCN of ``model`` (an :class:`~bgcn.model.EndToEnd`) on a :class:`Subgraph`: log-probs of the
    m query nodes, equal to the full graph's rows for them.

    Shapes: sub with m query nodes -> (m, C)

    Taught in: chapter 11 (chapters/11_minibatch.md).
    """
    return model.gcn(sub.x, sub.edge_index, sub.edge_weight)[: sub.num_query]


def _check_finite_rows(x: torch.Tensor, name: str, fix: str, offset: int = 0) -> None:
    """Raise ``ValueError`` naming the first rows (images) of ``x`` that hold NaN/Inf."""
    bad = ~torch.isfinite(x.detach().reshape(x.shape[0], -1)).all(1)
    if bool(bad.any()):
        rows = (torch.nonzero(bad).flatten() + offset).tolist()
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        raise ValueError(f"{name} holds NaN/Inf values in {len(rows)} image(s) (index {shown} of new_images); {fix}")


def bank_estimator(model) -> str:
    """The estimator name of ``model`` if the bank engine can run it (a row-wise estimator, ``symmetric=False``,
    ``exclude_self=True``), else a ``ValueError`` saying what to change.

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch.md).
    """
    if getattr(model, "symmetric", False):
        raise ValueError("a symmetric graph (symmetric=True) has in-edges from every node that chose i, which a "
                         "batch cannot see without a search over all N; build the model with symmetric=False")
    if not getattr(model, "exclude_self", True):
        raise ValueError("the bank engine needs exclude_self=True (a node is not its own neighbour)")
    name = model.estimator_name
    if name not in ESTIMATORS or not get_spec(name).rowwise:
        raise ValueError(f"estimator {name!r} is not supported by the bank engine (it needs a dense "
                         f"N x N selection); use one of {list(rowwise_names())}")
    return name


@torch.no_grad()
def predict(model: nn.Module, new_images: torch.Tensor, bank: FeatureBank, *, batch_size: int = 256,
            chunk_size: int = 4096, bank_chunk: int | None = None) -> torch.Tensor:
    r"""Inductive prediction: log-probabilities of images the model never saw, without retraining.

    .. math::
        f = f_\theta(x_\text{new}),\quad \mathcal N_k(f) = \operatorname{top-k}_j \hat f\cdot\hat B_j,
        \quad \log p = \mathrm{GCN}\big(\text{2-hop subgraph of } \{x_\text{new}\} \cup B\big)

    Each new image is embedded (eval mode), finds its k neighbours in the bank, and the GCN runs
    on the :func:`computation_subgraph` of ``batch_size`` new images at a time: the new nodes,
    their neighbours, and the neighbours' own neighbours, all taken from the bank. The new images
    are not candidates for the bank nodes' rows (and not for each other), so the answer for one
    image does not depend on which others are predicted with it.

    Args:
        model: a trained :class:`~bgcn.model.EndToEnd` (estimator in :data:`BANK_ESTIMATORS`,
            ``symmetric=False``).
        new_images: (M, C_in, H, W).
        bank: a filled :class:`FeatureBank` of the training images (same backbone).
        batch_size: new images per subgraph; chunk_size, bank_chunk: see :meth:`FeatureBank.search`.

    Shapes:
        - new_images: (M, C_in, H, W)
        - output: (M, C) log-probabilities

    Taught in: chapter 11 (chapters/11_minibatch.md).
    """
    if not isinstance(bank, FeatureBank):
        raise TypeError(f"bank must be a bgcn.bank.FeatureBank, got {type(bank).__name__}")
    if not bank.filled:
        raise ValueError("the bank is empty; fill it first with bank.fill(model, train_images)")
    new_images = _check_images(new_images, "new_images")
    _check_finite_rows(new_images, "new_images", "images with NaN/Inf pixels have no prediction; drop or repair them")
    batch_size = _check_int(batch_size, "batch_size")
    est = bank_estimator(model)
    check_k(model.k, bank.num_nodes, exclude_self=True)
    was = model.training
    model.eval()
    try:
        outs = []
        for start in range(0, new_images.shape[0], batch_size):
            x = new_images[start:start + batch_size].to(bank.device)
            f = model.features(x)
            if f.dtype != bank.dtype:
                f = f.to(bank.dtype)
            _check_finite_rows(f, f"the backbone's features of new_images[{start}:{start + x.shape[0]}]",
                               "the images are finite, so the backbone itself diverged", offset=start)
            sub = computation_subgraph(bank, f, model.k, estimator=est, tau=model.tau,
                                       use_weights=model.use_graph_weights, chunk_size=chunk_size,
                                       bank_chunk=bank_chunk)
            outs.append(subgraph_log_probs(model, sub))
    finally:
        model.train(was)
    return torch.cat(outs)


# the names bgcn.minibatch imported before they were public
_bank_estimator = bank_estimator
_bank_logsumexp = bank_logsumexp
