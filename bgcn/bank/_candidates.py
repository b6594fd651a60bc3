r"""The selection estimators of chapter 09 over a candidate set: :func:`candidate_subgraph`.

The row-wise estimators need only the k kept similarities of a row (:func:`computation_subgraph`).
The selection estimators (``ste``, ``identity``, ``blackbox``, ``imle``, ``sigmoid``,
``capped_simplex``, ``gumbel_reinforce``) learn *which* k columns a row keeps: their gradient
reaches every score of the row, chosen or not, so the full-batch path hands the GCN a dense
N × N mask. Here each query row keeps a candidate set of k′ ≫ k columns, found by the bank's
index under no_grad, and the estimator runs on the (m, k′) scores to those candidates: with
k′ = N − 1 this is the full-batch dense path exactly.

Taught in: chapter 11 (chapters/11_minibatch_1_bank.md).
"""
from __future__ import annotations

import torch

from .._checks import check_int
from ..estimators import ESTIMATORS, estimator_names, get_spec
from ..similarity import gather_similarities, normalize_rows
from ._subgraph import Subgraph, _Query, _two_hops
from ._table import FeatureBank

__all__ = ["candidate_subgraph", "selection_names", "is_selection", "check_candidates"]


def selection_names() -> tuple[str, ...]:
    """Names of the registered estimators that :func:`candidate_subgraph` runs: not row-wise, and either
    needing the dense mask or sampling (the selection estimators of chapter 09).

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_1_bank.md).
    """
    return tuple(n for n in estimator_names(rowwise=False) if is_selection(n))


def is_selection(estimator) -> bool:
    """Whether ``estimator`` (a name) is a selection estimator the candidate engine runs.

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_1_bank.md).
    """
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        return False
    spec = get_spec(estimator)
    return not spec.rowwise and (spec.needs_dense or spec.stochastic)


def check_candidates(candidates, k: int, num_nodes: int | None = None, name: str = "candidates") -> int:
    """``candidates`` as an int with k < k′ (and k′ ≤ N − 1 when ``num_nodes`` is given); else a one-line error.

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_1_bank.md).
    """
    hi = None if num_nodes is None else num_nodes - 1
    return check_int(candidates, name, k + 1, hi,
                     hint=f"candidate neighbours per row, more than k={k}" + ("" if hi is None else
                                                                               f", at most N - 1 = {hi}"))


def candidate_subgraph(bank: FeatureBank, query_feats: torch.Tensor, k: int, candidates: int, *,
                       query_ids: torch.Tensor | None = None, estimator: str = "ste", tau: float = 1.0,
                       estimator_kw: dict | None = None, generator: torch.Generator | None = None,
                       chunk_size: int = 4096, bank_chunk: int | None = None,
                       use_neighbours: bool = False) -> Subgraph:
    r"""The 2-hop computation graph of the query nodes with a selection estimator on k′ candidates per row.

    Query row i gets its candidate set :math:`\mathcal C_i` = the k′ bank rows most similar to
    :math:`f_i` (:meth:`FeatureBank.search`, under no_grad, i itself excluded), the scores
    :math:`s_{ic} = \hat f_i\cdot\hat f_c` with gradient (the fresh feature of c when c is in the
    batch) and the estimator's mask on them,

    .. math::
        m_{i\cdot} = \text{estimator}\big((s_{ic})_{c\in\mathcal C_i},\ k,\ \tau\big) \in \mathbb R^{k'},

    whose forward value is the row of the adjacency and whose backward is the estimator's gradient
    at every candidate, chosen or not. The subgraph has an edge :math:`c \to i` of weight
    :math:`m_{ic}` for every candidate (zeros included: the loss gradient at a non-edge,
    :math:`\partial L/\partial m_{ic}`, is what the estimator turns into a gradient for the choice,
    and :math:`d_i = 1 + \sum_c m_{ic}` carries gradient there too). Then, as in
    :func:`computation_subgraph`: :math:`H_1 = \bigcup_i \mathcal C_i \setminus Q` (every
    candidate, since their layer-1 outputs enter row i) with their own rows, and
    :math:`H_2 = \mathcal N(H_1)\setminus(Q\cup H_1)` as self-loops of weight :math:`d_l = 1 + k`.
    The rows of :math:`H_1` are the **hard top-k** with unit weights and no gradient (searched, or
    read from ``bank.neighbours`` with ``use_neighbours=True``).

    What is exact:

    - with k′ = N − 1 and Q = all nodes: the full-batch dense path (loss and every gradient; tested
      in float64 for each selection estimator, the stochastic ones with their sampling off);
    - with k′ < N, for the estimators whose forward is the hard top-k (``ste``, ``identity``,
      ``blackbox``, and ``imle`` / ``gumbel_reinforce`` when they do not sample, e.g. in
      evaluation): the query rows' log-probabilities, equal to the full graph's (the candidates hold
      the top k; the rows outside the batch are hard rows, as in the full graph).

    What is approximated when k′ < N:

    - the gradient: it reaches the k′ candidates of a row, not all N − 1 columns; the row
      statistics the estimators use (the row's standard deviation for λ, τ_m and the noise scale;
      identity's centring and norm) are over the candidates;
    - ``sigmoid`` / ``capped_simplex``: the forward itself. A query row's relaxed mask is computed
      over its candidates (its mass stays on them; the threshold that makes the row sum k is the
      candidates'), and a row outside the batch is its hard top-k instead of its relaxed mask; both
      rows still sum to k, so every degree is right;
    - while ``imle`` / ``gumbel_reinforce`` sample (training), the rows outside the batch are the
      distribution's mode (hard top-k), not a sample; and ``gumbel_reinforce``'s policy is the
      Plackett–Luce law over the candidates (its ``log_prob``, in ``Subgraph.log_prob``, is exact for
      the sample actually drawn);
    - as in :func:`computation_subgraph`, the rows outside the batch are constants: the gradient of
      their selection with respect to the batch's features is dropped.

    ``estimator_kw`` goes to the estimator (the model's ``estimator_kw``, as
    :meth:`bgcn.model.EndToEnd.build_graph` passes them), ``generator`` to a stochastic one.
    ``query_ids``: as in :func:`computation_subgraph` (write the batch into the bank first).

    Cost: the search of m·k′ candidates, m·k′ similarities (O(m·k′·D)), the estimator on an
    (m, k′) matrix, the rows of up to m·k′ hop-1 nodes (k each) and their hop-2 self-loops.

    Shapes:
        - query_feats: (m, D); query_ids: (m,) long sorted ascending, or None
        - output: :class:`Subgraph` with ``indices`` (m, k) the chosen bank ids, ``candidates``
          (m, k′) bank ids, ``log_prob`` (m,) or None; m·k′ query edges first, then
          :math:`|H_1|\cdot k`, then :math:`|H_2|` self-loops

    Taught in: chapter 11 (chapters/11_minibatch_1_bank.md).
    """
    if not is_selection(estimator):
        raise ValueError(f"estimator {estimator!r} is not a selection estimator; candidate_subgraph runs "
                         f"{list(selection_names())} (the row-wise ones use computation_subgraph)")
    q = _Query(bank, query_feats, query_ids)
    kc = check_candidates(candidates, k, bank.num_nodes if q.ids is not None else bank.num_nodes + 1)
    spec = get_spec(estimator)
    search = dict(chunk_size=chunk_size, bank_chunk=bank_chunk)
    cache = bank.neighbours if use_neighbours else None
    if use_neighbours and (cache is None or cache.shape[1] != k):
        raise ValueError(f"use_neighbours=True needs bank.fill_neighbours({k}) first")
    cand = bank.search(query_feats, kc, exclude=q.ids, **search)  # (m, k'), by decreasing similarity
    if cache is not None and q.ids is not None:
        cache[q.ids] = cand[:, :k]  # the batch's hard rows, fresh
    hop1, idx1, hop2, extra = _two_hops(q, cand, k, cache, search)
    x = torch.cat([query_feats, bank.features[extra]])
    xn = normalize_rows(x)
    cand_local = q.local(cand, extra)
    scores = gather_similarities(xn[: q.m], xn, cand_local)  # (m, k'), fresh where the candidate is in Q
    sel = spec.fn(scores, k, tau, exclude_self=False, generator=generator, **dict(estimator_kw or {}))
    dense = sel.dense if sel.dense is not None else torch.zeros_like(scores).scatter(-1, sel.indices, sel.weights)
    dev = bank.device
    src = [cand_local.reshape(-1)]
    dst = [torch.arange(q.m, device=dev).repeat_interleave(kc)]
    ew = [dense.reshape(-1)]
    if hop1.numel():
        src.append(q.local(idx1, extra).reshape(-1))
        dst.append(q.local(hop1, extra).repeat_interleave(k))
        ew.append(torch.ones(idx1.numel(), dtype=dense.dtype, device=dev))
    if hop2.numel():
        l2 = q.local(hop2, extra)
        src.append(l2)
        dst.append(l2)
        ew.append(torch.full((hop2.numel(),), 1.0 + k, dtype=dense.dtype, device=dev))
    return Subgraph(x, torch.stack([torch.cat(src), torch.cat(dst)]), torch.cat(ew), q.m,
                    cand.gather(1, sel.indices), extra, int(hop1.numel()), int(hop2.numel()), cand,
                    getattr(sel, "log_prob", None))
