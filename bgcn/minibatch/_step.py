r"""One mini-batch step and the full no-grad passes: :func:`minibatch_loss`, :func:`embed_images`,
:func:`evaluate_full` (chapter 11; the module docstring of :mod:`bgcn.minibatch` derives the step).

Taught in: chapter 11 (chapters/11_minibatch_1_bank.md).
"""
from __future__ import annotations

import contextlib
import time

import torch
import torch.nn.functional as F

from .. import distributed as bd
from ..backbone import embed_images, image_rows
from ..bank import (FeatureBank, bank_estimator, bank_logsumexp, candidate_subgraph, computation_subgraph,
                    is_selection, subgraph_log_probs)
from ..estimators import get_spec, score_function_surrogate
from ..graph import KNNGraph, rankings_to_edges
from ..model import EndToEnd
from ..similarity import normalize_rows
from ..topk import row_weights

__all__ = ["minibatch_loss", "evaluate_full"]


def _fresh_features(model: EndToEnd, x: torch.Tensor, backbone=None) -> torch.Tensor:
    """F = f_θ(x) with gradient, through ``backbone`` (a DDP wrapper of ``model.backbone``) when given."""
    if backbone is None or backbone is model.backbone:
        return model.features(x)
    p0 = next(iter(model.backbone.parameters()), None)
    if p0 is not None and p0.is_floating_point() and x.dtype != p0.dtype:
        x = x.to(p0.dtype)
    f = backbone(x)
    return f.float() if f.dtype in (torch.float16, torch.bfloat16) else f


def minibatch_loss(model: EndToEnd, images: torch.Tensor, batch: torch.Tensor, bank: FeatureBank,
                   labels: torch.Tensor, train_mask: torch.Tensor, *, chunk_size: int = 4096,
                   bank_chunk: int | None = None, fixed: bool = False, write_bank: bool = True,
                   use_neighbours: bool = False, backbone=None, candidates: int | None = None,
                   generator: torch.Generator | None = None, reinforce_reward: str = "node",
                   reinforce_baseline: str | float = "loo") -> tuple[torch.Tensor, dict]:
    r"""The loss of one mini-batch step (module docstring, steps 1–4), ready for ``backward()``.

    ``fixed=True`` (frozen mode, warm-up): no backbone pass; the batch's features are its bank
    rows and the graph is hard with unit weights (what :func:`bgcn.train.train` trains on then).
    ``write_bank=False`` leaves the bank alone (a momentum bank is written by its EMA backbone).
    ``use_neighbours=True``: out-of-batch rows from ``bank.neighbours`` (see
    :func:`bgcn.bank.computation_subgraph`); in a ``fixed`` step, which writes nothing, the batch's
    rows too (``unmoved=True``: the lists the search would return, nothing searched).

    ``candidates=k′``: a selection estimator of chapter 09 (``ste``, ``identity``, ``blackbox``,
    ``imle``, ``sigmoid``, ``capped_simplex``, ``gumbel_reinforce``) runs on the k′ candidates of
    each batch row (:func:`bgcn.bank.candidate_subgraph`, with the model's ``estimator_kw`` and
    ``generator``); with k′ = N − 1 and b = N the step is the full-batch dense step. A sampling
    estimator that returns a ``log_prob`` (``gumbel_reinforce``) adds the score-function surrogate
    of :func:`bgcn.train.train` over the batch's labelled rows
    (:func:`bgcn.estimators.score_function_surrogate` with ``reinforce_reward`` and
    ``reinforce_baseline``); ``info["surrogate"]`` holds its detached value (0 otherwise), and the
    returned loss is the NLL plus it. Ignored by the row-wise estimators and in the fixed (hard) steps.

    **Several processes** (``torch.distributed`` initialised, W ranks; every rank calls this with
    the same global batch Q): rank r embeds only its shard :math:`Q_r`
    (:func:`bgcn.distributed.shard`) through ``backbone`` (its DDP wrapper), the shards are
    gathered *with* gradient (:func:`bgcn.distributed.all_gather_with_grad`), every rank builds
    the same subgraph and GCN output, and rank r's loss is its shard's share of the global one,

    .. math:: L_r = W\,\frac{1}{|Q\cap M|}\sum_{i\in Q_r\cap M} -\log p_{i,y_i},

    so that the average over ranks (DDP's for the backbone, an all-reduce for the GCN) is the
    gradient of :math:`L_Q` exactly as one process computes it.

    Returns ``(loss, info)`` with ``info`` = ``{"labelled", "nodes", "hop1", "hop2", "search_s",
    "features", "loss", "surrogate"}``: ``features`` the fresh (b, D) tensor (the whole global batch's) or
    None; ``loss`` the detached :math:`L_Q` (a tensor on the device: no host sync here);
    ``labelled`` = :math:`|Q\cap M|` when ``train_mask`` is on the CPU, else -1 (counting it
    would wait for the device; the training loop counts on its CPU copy).

    Shapes:
        - images: (N, C_in, H, W) tensor or image source (any device; batches are moved);
          batch: (b,) sorted long on the CPU
        - labels, train_mask: (N,) on the bank's device
        - loss: ()

    Taught in: chapter 11 (chapters/11_minibatch_1_bank.md).
    """
    dev = bank.device
    b_dev = batch.to(dev)
    rank, world = bd.rank_world()
    if fixed:
        feats = bank.features[b_dev]
        est, use_w = "hard", False
    else:
        mine = bd.shard(batch, rank, world) if world > 1 else batch
        # several ranks: a backbone that draws random numbers (dropout) draws them for its own
        # shard; forking the generator keeps every rank's later draws (the GCN's dropout) identical
        keep = torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []) if world > 1 \
            else contextlib.nullcontext()
        with keep:
            feats = _fresh_features(model, image_rows(images, mine).to(dev), backbone)
        if world > 1:
            feats = bd.all_gather_with_grad(feats)
        if feats.dtype != bank.dtype:
            feats = feats.to(bank.dtype)
        if write_bank:
            bank.update(b_dev, feats)
        est, use_w = bank_estimator(model, candidates), model.use_graph_weights
    t0 = time.perf_counter()
    if not fixed and use_w and candidates is not None and is_selection(est):
        sub = candidate_subgraph(bank, feats, model.k, candidates, query_ids=b_dev, estimator=est, tau=model.tau,
                                 estimator_kw=model.estimator_kw, generator=generator, chunk_size=chunk_size,
                                 bank_chunk=bank_chunk, use_neighbours=use_neighbours)
    else:
        sub = computation_subgraph(bank, feats, model.k, query_ids=b_dev, estimator=est, tau=model.tau,
                                   use_weights=use_w, chunk_size=chunk_size, bank_chunk=bank_chunk,
                                   use_neighbours=use_neighbours, unmoved=fixed and use_neighbours)
    t_search = time.perf_counter() - t0
    logp = subgraph_log_probs(model, sub)
    lab = train_mask[b_dev]
    y = labels[b_dev].clamp_min(0)
    if world == 1:
        loss = F.nll_loss(logp[lab], y[lab])
        reported = loss.detach()
    else:
        nll = F.nll_loss(logp, y, reduction="none")
        labf = lab.to(nll.dtype)
        total = labf.sum()
        reported = ((nll * labf).sum() / total).detach()
        lo = sum(t.numel() for t in torch.tensor_split(batch, world)[:rank])
        hi = lo + torch.tensor_split(batch, world)[rank].numel()
        own = torch.zeros_like(labf)
        own[lo:hi] = 1.0
        loss = world * (nll * labf * own).sum() / total
    surrogate = torch.zeros((), dtype=logp.dtype, device=logp.device)
    if sub.log_prob is not None:
        if world > 1:
            raise ValueError("a sampling estimator's score-function surrogate (gumbel_reinforce) is not split "
                             "over several processes yet; train it in one process")
        node_loss = F.nll_loss(logp, y, reduction="none")
        surrogate = score_function_surrogate(sub.log_prob, node_loss, lab, reinforce_reward, reinforce_baseline)
        loss = loss + surrogate
    labelled = int(train_mask[b_dev].sum()) if train_mask.device.type == "cpu" else -1
    return loss, {"labelled": labelled, "nodes": sub.num_nodes, "hop1": sub.num_hop1,
                  "hop2": sub.num_hop2, "search_s": t_search, "features": None if fixed else feats,
                  "loss": reported, "surrogate": surrogate.detach()}


@torch.no_grad()
def evaluate_full(model: EndToEnd, images: torch.Tensor, *, fixed: bool = False, chunk_size: int = 4096,
                  bank_chunk: int | None = None, batch_size: int = 512, device: torch.device | None = None,
                  features: torch.Tensor | None = None, num_workers: int = 0, index=None,
                  candidates: int | None = None):
    r"""Log-probabilities of every node under the current model, without an N×N matrix.

    One chunked no-grad pass of the backbone (eval mode; :func:`embed_images`, sharded over the
    ranks in several processes) gives fresh features :math:`F` (or ``features``, when given: e.g.
    the frozen bank); their kNN graph comes from :meth:`bgcn.bank.FeatureBank.search` (exact,
    ``chunk_size`` × ``bank_chunk`` blocks) with the k similarities
    :math:`\hat f_i\cdot\hat f_j` and the estimator's weights (``"hard"`` when ``fixed``), as
    :func:`bgcn.knn_graph` with ``chunk_size`` builds it; then the GCN over all N nodes. Returns
    ``(logp (N, C), graph, features (N, D))``; the features are a fresh bank fill. ``index`` (a
    :class:`bgcn.index.NeighbourIndex`) is built on those features, unless it was built on
    ``features`` itself, and searched instead (the engine keeps it for the next epoch's steps: one
    build an epoch).

    ``candidates=k′`` with a selection estimator (chapter 09): every row's k′ candidates are
    searched, the estimator runs on their similarities (``chunk_size`` rows at a time, under
    no_grad: the sampling estimators give their mode) and the GCN gets an edge from each candidate
    with the mask's weight, as the full-batch evaluation's dense mask (equal to it when
    k′ = N − 1). The graph's ``indices``/``weights`` are the estimator's k chosen columns (bank ids).

    Shapes: images (N, C_in, H, W) -> logp (N, C), features (N, D)

    Taught in: chapter 11 (chapters/11_minibatch_1_bank.md).
    """
    was = model.training
    model.eval()
    try:
        dev = device if device is not None else next(model.parameters()).device
        feats = features if features is not None else embed_images(model.backbone, images, batch_size, dev,
                                                                   num_workers=num_workers)
        est = "hard" if fixed else bank_estimator(model, candidates)
        n = feats.shape[0]
        tmp = FeatureBank(n, feats.shape[1], feats.dtype, feats.device)
        tmp.features = feats
        if index is not None and index.keys is feats:  # already built on these very features
            tmp.index = index
        elif index is not None:
            tmp.build_index(index)
        ids = torch.arange(n, device=feats.device)
        fn = normalize_rows(feats)
        if candidates is not None and not fixed and model.use_graph_weights and is_selection(est):
            logp, graph = _evaluate_candidates(model, tmp, feats, fn, ids, est, candidates, chunk_size, bank_chunk)
        else:
            idx = tmp.search(feats, model.k, exclude=ids, chunk_size=chunk_size, bank_chunk=bank_chunk)
            # (N, k), chunk·k·D at a time, written in place (a list of blocks fragments the heap)
            vals = torch.empty(idx.shape, dtype=fn.dtype, device=fn.device)
            for a in range(0, n, chunk_size):
                vals[a:a + chunk_size] = (fn[a:a + chunk_size].unsqueeze(1) * fn[idx[a:a + chunk_size]]).sum(-1)
            lse = bank_logsumexp(tmp, feats, model.tau, ids, chunk_size, bank_chunk) \
                if get_spec(est).needs_normaliser else None
            w = row_weights(vals, est, model.tau, lse)
            edge_index, edge_weight = rankings_to_edges(idx, w)
            graph = KNNGraph(edge_index, edge_weight, idx, w, n, None, est)
            if fixed or not model.use_graph_weights:
                logp = model.gcn(feats, graph.edge_index)
            else:
                logp = model.gcn(feats, graph.edge_index, graph.edge_weight)
    finally:
        model.train(was)
    return logp, graph, feats


def _evaluate_candidates(model: EndToEnd, bank: FeatureBank, feats, fn, ids, est: str, candidates: int,
                         chunk_size: int, bank_chunk: int | None):
    """(logp, graph) of :func:`evaluate_full` with a selection estimator on ``candidates`` per row (no_grad)."""
    n, k = feats.shape[0], model.k
    cand = bank.search(feats, candidates, exclude=ids, chunk_size=chunk_size, bank_chunk=bank_chunk)
    spec = get_spec(est)
    dense, chosen, weights = [], [], []
    for a in range(0, n, chunk_size):
        c = cand[a:a + chunk_size]
        vals = (fn[a:a + chunk_size].unsqueeze(1) * fn[c]).sum(-1)
        sel = spec.fn(vals, k, model.tau, exclude_self=False, **model.estimator_kw)
        m = sel.dense if sel.dense is not None else torch.zeros_like(vals).scatter(-1, sel.indices, sel.weights)
        dense.append(m)
        chosen.append(c.gather(1, sel.indices))
        weights.append(m.gather(1, sel.indices))
    dense = torch.cat(dense)
    edge_index, edge_weight = rankings_to_edges(cand, dense)
    graph = KNNGraph(edge_index, edge_weight, torch.cat(chosen), torch.cat(weights), n, None, est)
    return model.gcn(feats, edge_index, edge_weight), graph
