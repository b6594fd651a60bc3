r"""The exact 2-hop computation graph of a batch over the bank's kNN graph: :func:`computation_subgraph`.

Taught in: chapter 11 (chapters/11_minibatch_1_bank.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..estimators import ESTIMATORS, get_spec, rowwise_names
from ..scaling import similarity_logsumexp
from ..similarity import gather_similarities, normalize_rows
from ..topk import row_weights
from ._table import FeatureBank


@dataclass
class Subgraph:
    r"""The graph a 2-layer GCN needs to compute the outputs of ``m`` query nodes exactly.

    Local node order: the m query nodes first (0..m-1), then ``extra`` (sorted bank ids).

    Shapes:
        - x: (m + len(extra), D), the first m rows may require grad
        - edge_index: (2, E) local ids, edge_weight: (E,)
        - indices: (m, k) bank ids of the query nodes' neighbours
        - extra: (n_extra,) long bank ids
        - candidates: (m, k′) long bank ids or None (:func:`bgcn.bank.candidate_subgraph`)
        - log_prob: (m,) or None, a sampling estimator's log-probability of the query rows' choice

    Taught in: chapter 11 (chapters/11_minibatch_1_bank.md).
    """

    x: torch.Tensor
    edge_index: torch.Tensor
    edge_weight: torch.Tensor
    num_query: int
    indices: torch.Tensor
    extra: torch.Tensor
    num_hop1: int
    num_hop2: int
    candidates: torch.Tensor | None = None
    log_prob: torch.Tensor | None = None

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

    Taught in: chapter 11 (chapters/11_minibatch_1_bank.md).
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
                         bank_chunk: int | None = None, use_neighbours: bool = False,
                         unmoved: bool = False) -> Subgraph:
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
    bank's (exact again after a refresh, or when nothing has moved). ``unmoved=True`` (with
    ``use_neighbours`` and ``query_ids``) says that no bank row has changed since the lists were
    filled, as in the frozen and warm-up steps, which write nothing: the query rows' lists are then
    read from ``bank.neighbours`` too, the same lists the search would return, and nothing is searched.
    It is the caller's promise: after a step that wrote the bank, refill the lists
    (:meth:`FeatureBank.fill_neighbours`) before passing it again (the engine refreshes them with
    the bank).

    Features: query node i gets ``query_feats[i]`` (fresh, with gradient); every other node its
    bank row (a constant). With ``query_ids`` (the query nodes are bank nodes, e.g. a training
    batch) a query node is excluded from its own ranking and is found by others as itself, so
    write the batch into the bank (:meth:`FeatureBank.update`) *before* calling this, so that
    searches see its fresh feature. Without ``query_ids`` (new images, :func:`predict`) the query
    nodes are not candidates: the graph among bank nodes does not change.

    Shapes:
        - query_feats: (m, D); query_ids: (m,) long, sorted ascending, or None
        - output: :class:`Subgraph`

    Taught in: chapter 11 (chapters/11_minibatch_1_bank.md).
    """
    if not isinstance(estimator, str) or estimator not in ESTIMATORS or not get_spec(estimator).rowwise:
        raise ValueError(f"estimator {estimator!r} is not supported over a bank; choose one of "
                         f"{list(rowwise_names())}")
    q = _Query(bank, query_feats, query_ids)
    search = dict(chunk_size=chunk_size, bank_chunk=bank_chunk)
    cache = bank.neighbours if use_neighbours else None
    if use_neighbours and (cache is None or cache.shape[1] != k):
        raise ValueError(f"use_neighbours=True needs bank.fill_neighbours({k}) first")
    if unmoved and (cache is None or q.ids is None):
        raise ValueError("unmoved=True reads the query rows from bank.neighbours: pass use_neighbours=True "
                         "and query_ids")
    if unmoved:
        idx0 = cache[q.ids]
    else:
        idx0 = bank.search(query_feats, k, exclude=q.ids, **search)
        if cache is not None and q.ids is not None:
            cache[q.ids] = idx0  # the batch's rows, fresh
    hop1, idx1, hop2, extra = _two_hops(q, idx0, k, cache, search)
    x = torch.cat([query_feats, bank.features[extra]])
    xn = normalize_rows(x)
    rows = torch.cat([torch.arange(q.m, device=bank.device), q.local(hop1, extra)])
    nbrs = torch.cat([q.local(idx0, extra), q.local(idx1, extra)])
    vals = gather_similarities(xn[rows], xn, nbrs)  # (m + |H1|, k), O(rows·k·D)
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

    Taught in: chapter 11 (chapters/11_minibatch_1_bank.md).
    """
    return model.gcn(sub.x, sub.edge_index, sub.edge_weight)[: sub.num_query]
