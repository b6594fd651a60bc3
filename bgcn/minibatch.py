r"""Mini-batch end-to-end training over a feature bank (chapter 11).

One *step* takes a batch :math:`Q` of b images:

1. fresh features :math:`F_Q = f_\theta(x_Q)` **with** gradient; they are written (detached) into
   the bank :math:`B` (:class:`bgcn.bank.FeatureBank`) first, so that the search sees them;
2. the batch's neighbours, their neighbours' rows and the 2-hop ring are searched in the bank
   (exact, chunked, indices under ``no_grad``; :func:`bgcn.bank.computation_subgraph`);
3. the edge weights are recomputed from :math:`F_Q` where a node is in the batch and from bank
   rows (constants) where it is not, so the graph path reaches every fresh feature;
4. the GCN runs on that subgraph, with out-of-batch inputs from the bank (GNNAutoScale's
   historical embeddings, Fey et al. 2021, here for the GCN's input features); the loss is the
   NLL over the labelled nodes of the batch:

.. math::
    L_Q = -\frac{1}{|Q\cap M|}\sum_{i\in Q\cap M}\log p_{i,y_i},\qquad
    \log p_Q = \mathrm{GCN}\big(\mathrm{sub}(Q);\ F_Q \cup B_{\text{sub}\setminus Q}\big)_Q

With b ≥ N there is one batch, :math:`Q` = every node, the bank is the current features and the
step *is* the full-batch step of :func:`bgcn.train.train` (same loss and gradients; tested in
float64). No N×N tensor is built: the largest is one ``chunk_size`` × N search block.

Taught in: chapter 11 (chapters/11_minibatch.md).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from .bank import (FeatureBank, _bank_estimator, _bank_logsumexp, _embed, _estimator_weights,
                   computation_subgraph, ema_backbone, momentum_update, subgraph_log_probs)
from .graph import KNNGraph, edge_change_fraction, rankings_to_edges
from .similarity import normalize_rows
from .model import EndToEnd
from .train import History, TrainResult, TrainingDiverged, _check_mask, _check_training_labels, _pbar, \
    _resolve_mode, _snapshot, accuracy, \
    progress_enabled
from .utils import check_k, get_device, seed_everything

__all__ = ["stratified_batches", "minibatch_loss", "evaluate_full", "train_minibatch"]


def stratified_batches(train_mask: torch.Tensor, batch_size: int,
                       generator: torch.Generator | None = None) -> list[torch.Tensor]:
    r"""One epoch of batches in which **every batch holds labelled nodes**.

    With :math:`n_b = \lceil N / b\rceil` batches, the labelled nodes (``train_mask``) and the other
    nodes are shuffled *separately* and each list is cut into :math:`n_b` near-equal parts; batch t
    is labelled part t plus unlabelled part t. So every batch holds
    :math:`\lfloor |M|/n_b\rfloor` or :math:`\lceil |M|/n_b\rceil` labelled nodes and every node is
    in exactly one batch. With fewer labelled nodes than batches, batch t also gets labelled node
    :math:`t \bmod |M|` (of the shuffled list): a labelled node may then appear in more than one
    batch of an epoch (it is *revisited*, never left out).

    Shapes:
        - train_mask: (N,) bool
        - output: list of n_b sorted (≈b,) long tensors on the CPU

    Taught in: chapter 11 (chapters/11_minibatch.md).
    """
    if not isinstance(train_mask, torch.Tensor) or train_mask.dtype != torch.bool or train_mask.dim() != 1:
        raise TypeError("train_mask must be a (N,) bool tensor")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int (>= N for one full batch)")
    mask = train_mask.detach().cpu()
    n = mask.shape[0]
    lab = torch.nonzero(mask).flatten()
    if lab.numel() == 0:
        raise ValueError("train_mask selects no node; every batch needs labelled nodes")
    unl = torch.nonzero(~mask).flatten()
    nb = max(1, math.ceil(n / batch_size))
    lab = lab[torch.randperm(lab.numel(), generator=generator)]
    unl = unl[torch.randperm(unl.numel(), generator=generator)]
    lparts = list(torch.tensor_split(lab, nb))
    uparts = list(torch.tensor_split(unl, nb))
    out = []
    for t in range(nb):
        part = lparts[t]
        if part.numel() == 0:
            part = lab[t % lab.numel()].reshape(1)
        out.append(torch.sort(torch.cat([part, uparts[t]])).values)
    return out


def minibatch_loss(model: EndToEnd, images: torch.Tensor, batch: torch.Tensor, bank: FeatureBank,
                   labels: torch.Tensor, train_mask: torch.Tensor, *, chunk_size: int = 4096,
                   bank_chunk: int | None = None, fixed: bool = False, write_bank: bool = True,
                   use_neighbours: bool = False) -> tuple[torch.Tensor, dict]:
    r"""The loss of one mini-batch step (module docstring, steps 1–4), ready for ``backward()``.

    ``fixed=True`` (frozen mode, warm-up): no backbone pass; the batch's features are its bank
    rows and the graph is hard with unit weights (what :func:`bgcn.train.train` trains on then).
    ``write_bank=False`` leaves the bank alone (a momentum bank is written by its EMA backbone).
    ``use_neighbours=True``: out-of-batch rows from ``bank.neighbours`` (see
    :func:`bgcn.bank.computation_subgraph`).

    Returns ``(loss, info)`` with ``info`` = ``{"labelled", "nodes", "hop1", "hop2", "search_s",
    "features"}`` (``features``: the fresh (b, D) tensor, or None).

    Shapes:
        - images: (N, C_in, H, W) (any device; the batch is moved to the bank's); batch: (b,) sorted long
        - labels, train_mask: (N,) on the bank's device
        - loss: ()

    Taught in: chapter 11 (chapters/11_minibatch.md).
    """
    dev = bank.device
    b_dev = batch.to(dev)
    if fixed:
        feats = bank.features[b_dev]
        est, use_w = "hard", False
    else:
        feats = model.features(images[batch].to(dev))
        if feats.dtype != bank.dtype:
            feats = feats.to(bank.dtype)
        if write_bank:
            bank.update(b_dev, feats)
        est, use_w = _bank_estimator(model), model.use_graph_weights
    t0 = time.perf_counter()
    sub = computation_subgraph(bank, feats, model.k, query_ids=b_dev, estimator=est, tau=model.tau,
                               use_weights=use_w, chunk_size=chunk_size, bank_chunk=bank_chunk,
                               use_neighbours=use_neighbours)
    t_search = time.perf_counter() - t0
    logp = subgraph_log_probs(model, sub)
    lab = train_mask[b_dev]
    loss = F.nll_loss(logp[lab], labels[b_dev][lab].clamp_min(0))
    return loss, {"labelled": int(lab.sum()), "nodes": sub.num_nodes, "hop1": sub.num_hop1,
                  "hop2": sub.num_hop2, "search_s": t_search, "features": None if fixed else feats}


@torch.no_grad()
def evaluate_full(model: EndToEnd, images: torch.Tensor, *, fixed: bool = False, chunk_size: int = 4096,
                  bank_chunk: int | None = None, batch_size: int = 512, device: torch.device | None = None):
    r"""Log-probabilities of every node under the current model, without an N×N matrix.

    One chunked no-grad pass of the backbone (eval mode) gives fresh features :math:`F`; their kNN
    graph comes from :meth:`bgcn.bank.FeatureBank.search` (exact, ``chunk_size`` × ``bank_chunk``
    blocks) with the k similarities :math:`\hat f_i\cdot\hat f_j` and the estimator's weights
    (``"hard"`` when ``fixed``), as :func:`bgcn.knn_graph` with ``chunk_size`` builds it; then the
    GCN over all N nodes. Returns ``(logp (N, C), graph, features (N, D))``; the features are a
    fresh bank fill.

    Shapes: images (N, C_in, H, W) -> logp (N, C), features (N, D)

    Taught in: chapter 11 (chapters/11_minibatch.md).
    """
    was = model.training
    model.eval()
    try:
        dev = device if device is not None else next(model.parameters()).device
        feats = _embed(model.backbone, images, batch_size, dev)
        est = "hard" if fixed else _bank_estimator(model)
        n = feats.shape[0]
        tmp = FeatureBank(n, feats.shape[1], feats.dtype, feats.device)
        tmp.features = feats
        ids = torch.arange(n, device=feats.device)
        idx = tmp.search(feats, model.k, exclude=ids, chunk_size=chunk_size, bank_chunk=bank_chunk)
        fn = normalize_rows(feats)
        vals = torch.cat([(fn[a:a + chunk_size].unsqueeze(1) * fn[idx[a:a + chunk_size]]).sum(-1)
                          for a in range(0, n, chunk_size)])  # (N, k), chunk·k·D at a time
        lse = _bank_logsumexp(tmp, feats, model.tau, ids, chunk_size, bank_chunk) if est == "softmax" else None
        w = _estimator_weights(vals, est, model.tau, True, lse)
        edge_index, edge_weight = rankings_to_edges(idx, w)
        graph = KNNGraph(edge_index, edge_weight, idx, w, n, None, est)
        if fixed or not model.use_graph_weights:
            logp = model.gcn(feats, graph.edge_index)
        else:
            logp = model.gcn(feats, graph.edge_index, graph.edge_weight)
    finally:
        model.train(was)
    return logp, graph, feats


def _check_lr(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value!r} must be a finite number >= 0")
    return float(value)


def train_minibatch(model: EndToEnd, images: torch.Tensor, labels: torch.Tensor, train_mask: torch.Tensor,
                    val_mask: torch.Tensor | None = None, test_mask: torch.Tensor | None = None, *,
                    batch_size: int, epochs: int = 100, mode: str | None = None, warmup_epochs: int = 0,
                    lr_backbone: float = 1e-4, lr_gcn: float = 1e-2, weight_decay: float = 5e-4,
                    seed: int = 0, device: str | torch.device = "auto", bank_refresh: int = 1,
                    bank_momentum: float | None = None, eval_every: int = 1, chunk_size: int = 4096,
                    bank_chunk: int | None = None, cache_neighbours: bool = False,
                    embed_batch_size: int = 512, deterministic: bool | None = None,
                    max_grad_norm: float | None = None, progress: bool | None = False,
                    callback=None) -> TrainResult:
    r"""Train an :class:`~bgcn.model.EndToEnd` in mini-batches over a feature bank.

    Each epoch draws :func:`stratified_batches` (every batch holds labelled nodes; a CPU
    generator seeded with ``seed``), and for each batch takes one AdamW step on
    :func:`minibatch_loss` (learning rate ``lr_backbone`` for the backbone, ``lr_gcn`` for the
    rest, as :func:`bgcn.train.train`). The bank is filled once before training; each step writes
    its batch's fresh features into it; every ``bank_refresh`` epochs (0: never) it is refilled by
    a full no-grad pass (free when the epoch is evaluated: the evaluation's pass is that fill).
    ``bank_momentum=m`` keeps the bank from an EMA copy of the backbone instead
    (:func:`bgcn.bank.ema_backbone`, MoCo-style: after each step
    :math:`\theta_\text{ema} \leftarrow m\theta_\text{ema} + (1-m)\theta` and the batch's rows are
    rewritten from it); the step's graph weights still use the fresh features, and the step is
    then no longer the exact full-graph step (the bank's batch rows are EMA features).

    With ``batch_size >= N`` one batch holds every node and the run equals
    :func:`bgcn.train.train` with the same settings (losses, gradients, accuracies; float64).

    Estimators: ``"hard"``, ``"masked_softmax"``, ``"values"`` (weights from the k kept
    similarities) and seed 000's ``"softmax"``, whose normaliser runs over the whole row of N:
    each row's log-sum-exp is computed against the bank (the batch's columns fresh, with
    gradient; :func:`bgcn.bank.computation_subgraph`), exact but one more pass over the bank per
    subgraph row; ``"masked_softmax"`` (the same weights renormalised over the k kept ones) is the
    cheap choice. The dense selection estimators of chapter 09 are refused.

    ``callback(epoch, model, bank)``, if given, is called after each epoch's steps and before its
    evaluation and bank refresh (the bank then holds what the steps left in it: for measuring
    staleness). It must not change the model or the bank.

    ``epochs``, ``warmup_epochs``, ``mode``, ``seed``, ``device``, ``deterministic`` and
    ``max_grad_norm`` mean what they mean in :func:`bgcn.train.train`; the warm-up and the frozen
    mode train the GCN on the bank's initial features and hard graph. Evaluation
    (:func:`evaluate_full`, every ``eval_every`` epochs and at the last) records accuracies on the
    full graph. The learning rates may be 0 (a probe of the bank). ``chunk_size`` × ``bank_chunk``
    (``None``: N) is the largest similarity block of a search (:meth:`FeatureBank.search`);
    ``embed_batch_size`` the images per no-grad backbone pass. ``cache_neighbours=True`` keeps
    every node's neighbour list in the bank (N·k longs, refreshed with it; a batch rewrites its
    own rows) and reads the out-of-batch rows from it instead of searching them: about k times
    fewer queries a step, the lists as stale as the bank (:meth:`FeatureBank.fill_neighbours`).

    Returns:
        :class:`bgcn.train.TrainResult`; its ``history.loss`` is the epoch's mean NLL over the
        labelled nodes of its batches (weighted by their count). Also ``result.bank`` (the
        :class:`~bgcn.bank.FeatureBank`, for :func:`bgcn.bank.predict`) and ``result.steps``
        (per step: epoch, batch size, labelled nodes, subgraph nodes, hop-1 and hop-2 counts).

    Shapes:
        - images: (N, C_in, H, W) (may stay on the CPU; batches are moved); labels, masks: (N,)
        - result.bank.features: (N, D)

    Taught in: chapter 11 (chapters/11_minibatch.md).
    """
    # ---- validate ------------------------------------------------------------------------------
    if not isinstance(model, EndToEnd):
        raise TypeError(f"model must be a bgcn.EndToEnd (see bgcn.model.build_model), got {type(model).__name__}")
    mode = _resolve_mode(model, mode)
    for nm, v, lo in (("epochs", epochs, 1), ("warmup_epochs", warmup_epochs, 0), ("bank_refresh", bank_refresh, 0),
                      ("eval_every", eval_every, 1), ("chunk_size", chunk_size, 1),
                      ("embed_batch_size", embed_batch_size, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{nm}={v!r} must be an int >= {lo}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int (>= N for one full batch)")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a function callback(epoch, model, bank) or None, got "
                        f"{type(callback).__name__}")
    if not isinstance(cache_neighbours, bool):
        raise TypeError(f"cache_neighbours must be a bool, got {type(cache_neighbours).__name__}")
    if bank_chunk is not None and (isinstance(bank_chunk, bool) or not isinstance(bank_chunk, int) or bank_chunk < 1):
        raise ValueError(f"bank_chunk={bank_chunk!r} must be None (the whole bank) or a positive int")
    if mode != "frozen" and warmup_epochs >= epochs:
        raise ValueError(f"warmup_epochs={warmup_epochs} >= epochs={epochs}: the backbone would never train")
    lr_backbone, lr_gcn = _check_lr(lr_backbone, "lr_backbone"), _check_lr(lr_gcn, "lr_gcn")
    weight_decay = _check_lr(weight_decay, "weight_decay")
    if bank_momentum is not None and (isinstance(bank_momentum, bool) or not isinstance(bank_momentum, (int, float))
                                      or not 0.0 <= bank_momentum < 1.0):
        raise ValueError(f"bank_momentum={bank_momentum!r} must be None or a number in [0, 1)")
    if max_grad_norm is not None:
        max_grad_norm = float(_check_lr(max_grad_norm, "max_grad_norm"))
    if not isinstance(images, torch.Tensor) or images.dim() < 2:
        raise TypeError("images must be a torch.Tensor (N, C_in, H, W)")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor with values in [0, 1], got dtype {images.dtype}; "
                        f"convert with images.float() / 255 (uint8) or images.float()")
    n = images.shape[0]
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,) or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape ({n},) (one class per image)")
    check_k(model.k, n, exclude_self=True)
    model.configure(mode)
    _bank_estimator(model)
    dev = get_device(device)
    cpu = torch.device("cpu")
    train_cpu = _check_mask(train_mask, n, "train_mask", cpu, required=True)
    masks = {nm: _check_mask(m, n, nm, dev) for nm, m in (("train_mask", train_mask), ("val_mask", val_mask),
                                                          ("test_mask", test_mask))}
    labels = labels.to(dev).long()
    _check_training_labels(labels, masks["train_mask"], masks["val_mask"], masks["test_mask"],
                           getattr(model.gcn, "out_channels", None))
    if deterministic is None:
        deterministic = dev.type == "cpu"
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _loop(model, images, labels, train_cpu, masks, mode=mode, n=n, batch_size=batch_size, epochs=epochs,
                     warm=0 if mode == "frozen" else warmup_epochs, lr_backbone=lr_backbone, lr_gcn=lr_gcn,
                     weight_decay=weight_decay, seed=seed, dev=dev, bank_refresh=bank_refresh,
                     bank_momentum=bank_momentum, eval_every=eval_every, chunk_size=chunk_size,
                     bank_chunk=bank_chunk, cache_neighbours=cache_neighbours, embed_batch_size=embed_batch_size,
                     max_grad_norm=max_grad_norm, callback=callback,
                     progress=progress_enabled(progress))
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])


def _loop(model, images, labels, train_cpu, masks, *, mode, n, batch_size, epochs, warm, lr_backbone, lr_gcn,
          weight_decay, seed, dev, bank_refresh, bank_momentum, eval_every, chunk_size, bank_chunk,
          cache_neighbours, embed_batch_size,
          max_grad_norm, progress, callback=None) -> TrainResult:
    seed_everything(seed)
    model.to(dev)
    gen = torch.Generator().manual_seed(int(seed) % 2**63)
    train_mask, val_mask, test_mask = masks["train_mask"], masks["val_mask"], masks["test_mask"]
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    other = [p for p in model.parameters() if id(p) not in backbone_ids and p.requires_grad]
    groups = [{"params": other, "lr": lr_gcn, "name": "gcn"}]
    if mode != "frozen" and backbone_params:
        groups.append({"params": backbone_params, "lr": lr_backbone, "name": "backbone"})
    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)
    config = {"engine": "minibatch", "mode": mode, "k": model.k, "estimator": model.estimator_name,
              "tau": model.tau, "batch_size": int(batch_size), "epochs": epochs, "warmup_epochs": warm,
              "lr_backbone": lr_backbone, "lr_gcn": lr_gcn, "weight_decay": weight_decay, "seed": int(seed),
              "device": str(dev), "bank_refresh": bank_refresh, "bank_momentum": bank_momentum,
              "eval_every": eval_every, "chunk_size": chunk_size, "bank_chunk": bank_chunk,
              "cache_neighbours": cache_neighbours, "num_nodes": int(n),
              "num_train": int(train_cpu.sum())}

    t_start = time.perf_counter()
    ema = ema_backbone(model.backbone) if bank_momentum is not None else None
    bank = FeatureBank.from_backbone(ema if ema is not None else model.backbone, images, embed_batch_size, dev)
    if cache_neighbours:
        bank.fill_neighbours(model.k, chunk_size, bank_chunk)
    t_feat = time.perf_counter() - t_start

    history = History()
    steps: list[dict] = []
    best = {"epoch": 0, "score": -math.inf, "val_acc": float("nan"), "test_acc": float("nan")}
    best_state: dict = {}
    warm_info = None
    snaps: dict = {}

    def is_fixed(epoch: int) -> bool:
        return mode == "frozen" or epoch <= warm

    logp, graph, _ = evaluate_full(model, images, fixed=mode == "frozen" or warm > 0, chunk_size=chunk_size,
                                   bank_chunk=bank_chunk, batch_size=embed_batch_size, device=dev)
    history.initial = {"train_acc": accuracy(logp, labels, train_mask), "val_acc": accuracy(logp, labels, val_mask),
                       "test_acc": accuracy(logp, labels, test_mask), "homophily": float("nan")}
    history.graphs.append(_snapshot(graph, 0))
    snaps["initial"] = _snapshot(graph, 0)
    prev_indices = graph.indices.detach().cpu()
    t_search_total = 0.0
    bar = _pbar(range(1, epochs + 1), progress, desc=f"train {mode} b={batch_size}", unit="epoch")
    for epoch in bar:
        t0 = time.perf_counter()
        fixed = is_fixed(epoch)
        model.train()
        losses, counts = [], []
        g_backbone = 0.0
        for batch in stratified_batches(train_cpu, batch_size, gen):
            optimizer.zero_grad(set_to_none=True)
            loss, info = minibatch_loss(model, images, batch, bank, labels, train_mask, chunk_size=chunk_size,
                                        bank_chunk=bank_chunk, fixed=fixed, write_bank=ema is None,
                                        use_neighbours=cache_neighbours)
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise TrainingDiverged(f"training diverged at epoch {epoch}: the batch loss is {lv}; lower the "
                                       f"learning rates (lr_backbone/lr_gcn) or set max_grad_norm", epoch, None)
            loss.backward()
            if not fixed and backbone_params:
                g_backbone = float(torch.stack([p.grad.detach().double().pow(2).sum()
                                                for p in backbone_params if p.grad is not None]).sum().sqrt()) \
                    if any(p.grad is not None for p in backbone_params) else 0.0
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], max_grad_norm)
            optimizer.step()
            if ema is not None and not fixed:
                momentum_update(ema, model.backbone, bank_momentum)
                bank.update(batch.to(dev), _embed(ema, images[batch], embed_batch_size, dev).to(bank.dtype))
            losses.append(lv)
            counts.append(info["labelled"])
            t_search_total += info["search_s"]
            steps.append({"epoch": epoch, "batch_size": int(batch.numel()), "labelled": info["labelled"],
                          "nodes": info["nodes"], "hop1": info["hop1"], "hop2": info["hop2"]})
        loss_value = float(np.average(losses, weights=counts))
        t_step = time.perf_counter() - t0
        if callback is not None:
            model.eval()
            with torch.no_grad():
                callback(epoch, model, bank)

        evaluate = epoch % eval_every == 0 or epoch == epochs
        refresh = bank_refresh > 0 and epoch % bank_refresh == 0
        tr = va = te = change = float("nan")
        if evaluate:
            logp, graph, feats = evaluate_full(model, images, fixed=fixed, chunk_size=chunk_size,
                                               bank_chunk=bank_chunk, batch_size=embed_batch_size, device=dev)
            tr, va, te = (accuracy(logp, labels, train_mask), accuracy(logp, labels, val_mask),
                          accuracy(logp, labels, test_mask))
            new_indices = graph.indices.detach().cpu()
            change = edge_change_fraction(prev_indices, new_indices)
            prev_indices = new_indices
            if refresh and ema is None:
                bank.features.copy_(feats.to(bank.dtype))
                if cache_neighbours:
                    bank.neighbours = graph.indices.clone()
            del feats
        if refresh and (ema is not None or not evaluate):
            bank.fill(ema if ema is not None else model.backbone, images, embed_batch_size)
            if cache_neighbours:
                bank.fill_neighbours(model.k, chunk_size, bank_chunk)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        dt = time.perf_counter() - t0
        history.append(epoch=epoch, loss=loss_value, surrogate=0.0, train_acc=tr, val_acc=va, test_acc=te,
                       grad_backbone=g_backbone, edge_change=change, time=dt, time_step=t_step)
        if evaluate:
            if epoch == epochs:
                history.graphs.append(_snapshot(graph, epoch))
                snaps["final"] = _snapshot(graph, epoch)
            if warm > 0 and epoch <= warm:
                wb = warm_info or {"best_epoch": 0, "best_val_acc": -math.inf, "test_acc_at_best_val": float("nan")}
                wscore = va if val_mask is not None else float(epoch)
                if wscore > wb["best_val_acc"]:
                    wb = {**wb, "best_epoch": epoch, "best_val_acc": float(wscore), "test_acc_at_best_val": te}
                warm_info = {**wb, "epoch": epoch, "val_acc": va, "test_acc": te}
                if epoch == warm:
                    snaps["warmup"] = _snapshot(graph, epoch)
            else:
                score = va if val_mask is not None else float(epoch)
                if score > best["score"]:
                    best = {"epoch": epoch, "score": float(score), "val_acc": va, "test_acc": te}
                    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                    snaps["best"] = _snapshot(graph, epoch)
        bar.set_postfix(loss=f"{loss_value:.3f}", val=f"{va:.3f}", refresh=False)
    bar.close()
    total = time.perf_counter() - t_start
    final = {"train_acc": history.train_acc[-1], "val_acc": history.val_acc[-1], "test_acc": history.test_acc[-1],
             "loss": history.loss[-1]}
    timings = {"total": total, "per_epoch": float(np.mean(history.time)),
               "per_epoch_step": float(np.mean(history.time_step)), "features": t_feat, "search": t_search_total,
               "images_per_s": float(n * epochs / max(sum(history.time_step), 1e-12))}
    result = TrainResult(model=model, history=history, best_epoch=int(best["epoch"]),
                         best_val_acc=float(best["val_acc"]), test_acc_at_best_val=float(best["test_acc"]),
                         final=final, best_state=best_state, status="completed", checkpoint=None, timings=timings,
                         config=config, warmup=warm_info, graphs=snaps)
    result.bank = bank
    result.steps = steps
    return result
