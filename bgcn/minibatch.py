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

import contextlib
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .bank import (FeatureBank, _bank_estimator, _bank_logsumexp, _estimator_weights, _param_dtype,
                   computation_subgraph, ema_backbone, momentum_update, subgraph_log_probs)
from .graph import KNNGraph, edge_change_fraction, rankings_to_edges
from .similarity import normalize_rows
from .model import EndToEnd
from .train import History, TrainResult, TrainingDiverged, _check_mask, _check_training_labels, _pbar, \
    _resolve_mode, _snapshot, accuracy, \
    progress_enabled
from .utils import check_k, get_device, seed_everything

__all__ = ["stratified_batches", "minibatch_loss", "embed_images", "evaluate_full", "train_minibatch"]


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


def _place() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one (even under torchrun:
    the collectives need the group, so an uninitialised run is one process)."""
    from . import distributed as bd

    if not bd.is_initialized():
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def _rows(images, idx: torch.Tensor) -> torch.Tensor:
    """The images ``idx`` (in that order) as a float tensor: a tensor is indexed, an image source
    (:class:`bgcn.data.ImageSource`, anything with ``.take``) reads them."""
    if not isinstance(images, torch.Tensor):
        return images.take(idx)
    x = images[idx]
    return x.float() / 255 if x.dtype == torch.uint8 else x


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
                   use_neighbours: bool = False, backbone=None) -> tuple[torch.Tensor, dict]:
    r"""The loss of one mini-batch step (module docstring, steps 1–4), ready for ``backward()``.

    ``fixed=True`` (frozen mode, warm-up): no backbone pass; the batch's features are its bank
    rows and the graph is hard with unit weights (what :func:`bgcn.train.train` trains on then).
    ``write_bank=False`` leaves the bank alone (a momentum bank is written by its EMA backbone).
    ``use_neighbours=True``: out-of-batch rows from ``bank.neighbours`` (see
    :func:`bgcn.bank.computation_subgraph`).

    **Several processes** (``torch.distributed`` initialised, W ranks; every rank calls this with
    the same global batch Q): rank r embeds only its shard :math:`Q_r`
    (:func:`bgcn.distributed.shard`) through ``backbone`` (its DDP wrapper), the shards are
    gathered *with* gradient (:func:`bgcn.distributed.all_gather_with_grad`), every rank builds
    the same subgraph and GCN output, and rank r's loss is its shard's share of the global one,

    .. math:: L_r = W\,\frac{1}{|Q\cap M|}\sum_{i\in Q_r\cap M} -\log p_{i,y_i},

    so that the average over ranks (DDP's for the backbone, an all-reduce for the GCN) is the
    gradient of :math:`L_Q` exactly as one process computes it.

    Returns ``(loss, info)`` with ``info`` = ``{"labelled", "nodes", "hop1", "hop2", "search_s",
    "features", "loss"}``: ``features`` the fresh (b, D) tensor (the whole global batch's) or
    None; ``loss`` the detached :math:`L_Q` (a tensor on the device: no host sync here);
    ``labelled`` = :math:`|Q\cap M|` when ``train_mask`` is on the CPU, else -1 (counting it
    would wait for the device; the training loop counts on its CPU copy).

    Shapes:
        - images: (N, C_in, H, W) tensor or image source (any device; batches are moved);
          batch: (b,) sorted long on the CPU
        - labels, train_mask: (N,) on the bank's device
        - loss: ()

    Taught in: chapter 11 (chapters/11_minibatch.md).
    """
    from . import distributed as bd

    dev = bank.device
    b_dev = batch.to(dev)
    rank, world = _place()
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
            feats = _fresh_features(model, _rows(images, mine).to(dev), backbone)
        if world > 1:
            feats = bd.all_gather_with_grad(feats)
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
    labelled = int(train_mask[b_dev].sum()) if train_mask.device.type == "cpu" else -1
    return loss, {"labelled": labelled, "nodes": sub.num_nodes, "hop1": sub.num_hop1,
                  "hop2": sub.num_hop2, "search_s": t_search, "features": None if fixed else feats,
                  "loss": reported}


@torch.no_grad()
def embed_images(backbone: torch.nn.Module, images, batch_size: int = 512, device=None,
                 indices: torch.Tensor | None = None, num_workers: int = 0) -> torch.Tensor:
    r"""Features :math:`F = f_\theta(X)` of every image (or of ``indices``), eval mode, no gradient.

    ``batch_size`` images go through the backbone at a time (its train/eval mode is restored
    after). In several processes each rank embeds its :func:`bgcn.distributed.shard` of the rows
    and the parts are gathered (:func:`bgcn.distributed.all_gather_rows`), so a bank fill or an
    evaluation costs N / W backbone passes a rank and every rank ends with the same (N, D) table.
    For an image source (:class:`bgcn.data.ImageSource`) in one process, ``num_workers`` > 0
    decodes the images in that many ``DataLoader`` worker processes (pinned memory on CUDA).

    Shapes: images (N, C_in, H, W) tensor or image source -> F (N, D) (or (len(indices), D))

    Taught in: chapter 11 (chapters/11_minibatch.md).
    """
    from . import distributed as bd

    n = len(images) if indices is None else int(indices.numel())
    idx = torch.arange(n) if indices is None else indices.detach().cpu().long()
    rank, world = _place()
    mine = bd.shard(idx, rank, world) if world > 1 else idx
    was = backbone.training
    backbone.eval()
    dt = _param_dtype(backbone)
    contiguous = indices is None and isinstance(images, torch.Tensor) and images.dtype != torch.uint8
    dev = torch.device(device) if device is not None else None
    def batches():  # a generator function: nothing (no DataLoader iterator) starts before the loop
        if num_workers and indices is None and world == 1 and not isinstance(images, torch.Tensor):
            for _, x in images.loader(batch_size, num_workers=num_workers,
                                      pin_memory=dev is not None and dev.type == "cuda"):
                yield x
        else:
            for p in torch.split(mine, batch_size):
                yield images[int(p[0]):int(p[-1]) + 1] if contiguous else _rows(images, p)  # a slice, not a copy
    keep_rng = torch.random.fork_rng(devices=[]) if num_workers else contextlib.nullcontext()
    try:
        outs = []
        with keep_rng:  # a DataLoader with workers draws its base seed from the global RNG: keep the run's
            for x in batches():  # random draws (dropout, noise) the same with and without workers
                x = x.to(dev, non_blocking=True) if dev is not None else x
                if dt is not None and x.dtype != dt:
                    x = x.to(dt)
                f = backbone(x)
                if not isinstance(f, torch.Tensor) or f.dim() != 2:
                    raise ValueError(f"the backbone must return (B, D) features, got "
                                     f"{tuple(f.shape) if isinstance(f, torch.Tensor) else type(f)}")
                outs.append(f.float() if f.dtype in (torch.float16, torch.bfloat16) else f)
    finally:
        backbone.train(was)
    feats = torch.cat(outs)
    if world > 1:
        (feats,) = bd.all_gather_rows(feats)
    return feats


@torch.no_grad()
def evaluate_full(model: EndToEnd, images: torch.Tensor, *, fixed: bool = False, chunk_size: int = 4096,
                  bank_chunk: int | None = None, batch_size: int = 512, device: torch.device | None = None,
                  features: torch.Tensor | None = None, num_workers: int = 0):
    r"""Log-probabilities of every node under the current model, without an N×N matrix.

    One chunked no-grad pass of the backbone (eval mode; :func:`embed_images`, sharded over the
    ranks in several processes) gives fresh features :math:`F` (or ``features``, when given: e.g.
    the frozen bank); their kNN graph comes from :meth:`bgcn.bank.FeatureBank.search` (exact,
    ``chunk_size`` × ``bank_chunk`` blocks) with the k similarities
    :math:`\hat f_i\cdot\hat f_j` and the estimator's weights (``"hard"`` when ``fixed``), as
    :func:`bgcn.knn_graph` with ``chunk_size`` builds it; then the GCN over all N nodes. Returns
    ``(logp (N, C), graph, features (N, D))``; the features are a fresh bank fill.

    Shapes: images (N, C_in, H, W) -> logp (N, C), features (N, D)

    Taught in: chapter 11 (chapters/11_minibatch.md).
    """
    was = model.training
    model.eval()
    try:
        dev = device if device is not None else next(model.parameters()).device
        feats = features if features is not None else embed_images(model.backbone, images, batch_size, dev,
                                                                   num_workers=num_workers)
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


def _check_images_arg(images):
    """A float/uint8 (N, C, H, W) tensor, or an image source with ``take`` and ``__len__``."""
    if isinstance(images, torch.Tensor):
        if images.dim() < 2 or images.shape[0] == 0:
            raise ValueError(f"images must have shape (N, C_in, H, W) with N >= 1, got {tuple(images.shape)}")
        if not (images.is_floating_point() or images.dtype == torch.uint8):
            raise TypeError(f"images must be a floating-point tensor with values in [0, 1] (or uint8 in "
                            f"0..255, divided by 255 batch by batch), got dtype {images.dtype}; convert with "
                            f"images.float()")
        return images
    if isinstance(images, torch.utils.data.Dataset) and callable(getattr(images, "take", None)):
        if len(images) == 0:
            raise ValueError("images (an image source) holds no image")
        return images
    raise TypeError(f"images must be a torch.Tensor (N, C_in, H, W) or an image source "
                    f"(bgcn.data.ImageSource, e.g. bgcn.data.ImageFolderSource for a folder read lazily), "
                    f"got {type(images).__name__}")


def train_minibatch(model: EndToEnd, images, labels: torch.Tensor, train_mask: torch.Tensor,
                    val_mask: torch.Tensor | None = None, test_mask: torch.Tensor | None = None, *,
                    batch_size: int, epochs: int = 100, mode: str | None = None, warmup_epochs: int = 0,
                    lr_backbone: float = 1e-4, lr_gcn: float = 1e-2, weight_decay: float = 5e-4,
                    seed: int = 0, device: str | torch.device = "auto", bank_refresh: int = 1,
                    bank_momentum: float | None = None, eval_every: int = 1, chunk_size: int = 4096,
                    bank_chunk: int | None = None, cache_neighbours: bool = False,
                    embed_batch_size: int = 512, deterministic: bool | None = None,
                    max_grad_norm: float | None = None, progress: bool | None = False,
                    callback=None, checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 1,
                    resume: bool = False, analysis_labels: torch.Tensor | None = None,
                    extra_config: dict | None = None, num_workers: int = 0) -> TrainResult:
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

    ``epochs``, ``warmup_epochs``, ``mode``, ``seed``, ``device``, ``deterministic`` and
    ``max_grad_norm`` mean what they mean in :func:`bgcn.train.train`; the warm-up and the frozen
    mode train the GCN on the bank's initial features and hard graph. Evaluation
    (:func:`evaluate_full`, every ``eval_every`` epochs and at the last) records accuracies on the
    full graph (NaN in the epochs between); model selection (best validation, joint epochs only)
    sees the evaluated epochs. The learning rates may be 0 (a probe of the bank). ``chunk_size``
    × ``bank_chunk`` (``None``: N) is the largest similarity block of a search
    (:meth:`FeatureBank.search`); ``embed_batch_size`` the images per no-grad backbone pass.
    ``cache_neighbours=True`` keeps every node's neighbour list in the bank (N·k longs, refreshed
    with it; a batch rewrites its own rows) and reads the out-of-batch rows from it instead of
    searching them: about k times fewer queries a step, the lists as stale as the bank
    (:meth:`FeatureBank.fill_neighbours`).

    ``images`` may be a float tensor, a uint8 tensor (kept as uint8, each batch divided by 255:
    a quarter of the memory) or an image source read lazily (:class:`bgcn.data.ImageSource`):
    nothing needs all images as one float tensor. ``num_workers`` decodes a source's images in
    ``DataLoader`` workers for the full no-grad passes (bank fills, evaluations).

    **Checkpoints.** ``checkpoint=path`` writes the whole run state (model, optimizer, the bank,
    the EMA copy, every random state, history, best model) atomically every
    ``checkpoint_every`` epochs and at the end; ``resume=True`` continues from it and on the CPU
    reaches exactly the uninterrupted run's result. Only ``epochs``, ``device``,
    ``checkpoint_every``, ``world_size`` and ``num_workers`` may change between a run and its
    resume (more ``epochs``: exact when the first run's last epoch is one the longer run
    evaluates too, see :func:`bgcn.train.train`'s ``eval_every``).

    **Several processes.** Under ``torchrun`` (``bgcn.distributed.init_distributed`` called
    first) every rank draws the same global batches, embeds its shard of each one through the
    backbone wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, and the fresh
    features are gathered with gradient (:func:`minibatch_loss`); the GCN's gradients are
    all-reduced, the bank is written with the whole gathered batch on every rank (identical
    everywhere), bank fills and evaluations are sharded, and only rank 0 writes the checkpoint.
    The result equals one process with the same global batch (tested, gloo, CPU). A backbone with
    BatchNorm in train mode would see per-shard statistics: use LayerNorm backbones or keep
    BatchNorm in eval mode.

    ``callback(epoch, model, bank)``, if given, is called after each epoch's steps and before its
    evaluation and bank refresh (the bank then holds what the steps left in it: for measuring
    staleness). It must not change the model or the bank. ``analysis_labels`` (N,) fills
    ``history.homophily`` of the evaluated graphs (never used in training).

    Per step there is no host synchronisation apart from what the subgraph's data-dependent
    sizes need: the losses stay on the device and are read once an epoch (a NaN/Inf is then
    reported as :class:`~bgcn.train.TrainingDiverged`, the last checkpoint intact).

    Returns:
        :class:`bgcn.train.TrainResult`; its ``history.loss`` is the epoch's mean NLL over the
        labelled nodes of its batches (weighted by their count). Also ``result.bank`` (the
        :class:`~bgcn.bank.FeatureBank`, for :func:`bgcn.bank.predict`) and ``result.steps``
        (per step: epoch, batch size, labelled nodes, subgraph nodes, hop-1 and hop-2 counts);
        ``result.timings`` holds ``images_per_s`` and ``peak_memory_bytes``.

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
                      ("embed_batch_size", embed_batch_size, 1), ("checkpoint_every", checkpoint_every, 1),
                      ("num_workers", num_workers, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{nm}={v!r} must be an int >= {lo}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int (>= N for one full batch)")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a function callback(epoch, model, bank) or None, got "
                        f"{type(callback).__name__}")
    if not isinstance(cache_neighbours, bool):
        raise TypeError(f"cache_neighbours must be a bool, got {type(cache_neighbours).__name__}")
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be a bool, got {type(resume).__name__}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=path (the file to continue from)")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path (str or os.PathLike) or None, got {type(checkpoint).__name__}")
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
    if extra_config is not None and not isinstance(extra_config, dict):
        raise TypeError(f"extra_config must be a dict or None, got {type(extra_config).__name__}")
    clash = sorted(set(extra_config or {}) & _OWN_CONFIG_KEYS)
    if clash:
        raise ValueError(f"extra_config keys {clash} clash with train_minibatch()'s own settings; rename them")
    for nm, v in (("progress", progress), ("deterministic", deterministic)):
        if v is not None and not isinstance(v, bool):
            raise TypeError(f"{nm} must be True, False or None, got {v!r}")
    if max_grad_norm is not None and max_grad_norm == 0:
        raise ValueError("max_grad_norm=0 would clip every gradient to zero (nothing trains); use a positive "
                         "norm, or None for no clipping")
    images = _check_images_arg(images)
    n = len(images)
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
    if analysis_labels is not None:
        if not isinstance(analysis_labels, torch.Tensor) or analysis_labels.shape != (n,) \
                or analysis_labels.is_floating_point():
            raise ValueError(f"analysis_labels must be an integer tensor of shape ({n},) or None")
        analysis_labels = analysis_labels.detach().cpu().long()
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
                     max_grad_norm=max_grad_norm, callback=callback, progress=progress_enabled(progress),
                     checkpoint=None if checkpoint is None else Path(checkpoint),
                     checkpoint_every=checkpoint_every, resume=resume, analysis_labels=analysis_labels,
                     extra_config=dict(extra_config or {}), num_workers=num_workers)
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])


#: the keys train_minibatch's config records itself (extra_config must not overwrite them)
_OWN_CONFIG_KEYS = frozenset({"engine", "mode", "k", "estimator", "tau", "batch_size", "epochs", "warmup_epochs",
                              "lr_backbone", "lr_gcn", "weight_decay", "seed", "device", "bank_refresh",
                              "bank_momentum", "eval_every", "chunk_size", "bank_chunk", "cache_neighbours",
                              "num_nodes", "num_train", "max_grad_norm", "checkpoint_every", "world_size",
                              "num_workers"})
#: mini-batch checkpoints: what may change between a run and its resume
_MB_RESUME_FREE = frozenset({"epochs", "device", "checkpoint_every", "world_size", "num_workers"})
MINIBATCH_CHECKPOINT_FORMAT = "bgcn-minibatch-1"


def _allreduce_mean_(params: list) -> None:
    """Average the gradients of ``params`` over the ranks (one flat all-reduce; nothing in one process)."""
    from . import distributed as bd

    if not bd.is_initialized() or torch.distributed.get_world_size() == 1 or not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    off = 0
    for p in params:
        m = p.numel()
        p.grad.copy_(flat[off:off + m].view_as(p.grad))
        off += m


def _loop(model, images, labels, train_cpu, masks, *, mode, n, batch_size, epochs, warm, lr_backbone, lr_gcn,
          weight_decay, seed, dev, bank_refresh, bank_momentum, eval_every, chunk_size, bank_chunk,
          cache_neighbours, embed_batch_size, max_grad_norm, progress, callback, checkpoint, checkpoint_every,
          resume, analysis_labels, extra_config, num_workers=0) -> TrainResult:
    from . import distributed as bd
    from .graph import edge_homophily
    from .train import _rng_state, _set_rng_state, load_checkpoint, save_checkpoint
    from .utils import peak_memory_bytes, reset_peak_memory

    rank, world = _place()
    if world == 1 and bd.dist_info()[1] > 1:
        import warnings

        warnings.warn(f"torchrun started {bd.dist_info()[1]} processes but no process group is initialised, so each "
                      f"trains alone on all the data; call bgcn.distributed.init_distributed() first",
                      UserWarning, stacklevel=3)
    seed_everything(seed)
    model.to(dev)
    if world > 1:  # every rank starts from rank 0's parameters
        for t in model.state_dict().values():
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                bd.broadcast_(t)
    gen = torch.Generator().manual_seed(int(seed) % 2**63)
    train_mask, val_mask, test_mask = masks["train_mask"], masks["val_mask"], masks["test_mask"]
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    other = [p for p in model.parameters() if id(p) not in backbone_ids and p.requires_grad]
    groups = [{"params": other, "lr": lr_gcn, "name": "gcn"}]
    trains_backbone = mode != "frozen" and bool(backbone_params)
    if trains_backbone:
        groups.append({"params": backbone_params, "lr": lr_backbone, "name": "backbone"})
    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)
    ddp_backbone = bd.wrap_ddp(model.backbone, dev) if world > 1 and trains_backbone else model.backbone
    config = {"engine": "minibatch", "mode": mode, "k": model.k, "estimator": model.estimator_name,
              "tau": model.tau, "batch_size": int(batch_size), "epochs": epochs, "warmup_epochs": warm,
              "lr_backbone": lr_backbone, "lr_gcn": lr_gcn, "weight_decay": weight_decay, "seed": int(seed),
              "device": str(dev), "bank_refresh": bank_refresh, "bank_momentum": bank_momentum,
              "eval_every": eval_every, "chunk_size": chunk_size, "bank_chunk": bank_chunk,
              "cache_neighbours": cache_neighbours, "num_nodes": int(n), "num_train": int(train_cpu.sum()),
              "max_grad_norm": max_grad_norm, "checkpoint_every": checkpoint_every, "world_size": int(world),
              "num_workers": num_workers, **extra_config}

    reset_peak_memory(dev)
    t_start = time.perf_counter()
    ema = ema_backbone(model.backbone) if bank_momentum is not None else None
    history = History()
    steps: list[list[int]] = []
    best = {"epoch": 0, "score": -math.inf, "val_acc": float("nan"), "test_acc": float("nan")}
    best_state: dict = {}
    warm_info = None
    snaps: dict = {}
    t_search_total = 0.0
    start_epoch = 1
    state = None
    if world > 1 and resume and checkpoint is not None:  # every rank must continue the same run
        seen = torch.tensor([float(checkpoint.is_file())])
        lo, hi = seen.clone(), seen.clone()
        torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
        torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
        if float(lo) != float(hi):
            raise ValueError(f"resume=True: the checkpoint {str(checkpoint)!r} exists on some ranks only; put it on a "
                             f"file system that every process sees (rank 0 writes it)")
    if resume and checkpoint is not None and not checkpoint.is_file():
        import warnings

        warnings.warn(f"resume=True but there is no checkpoint at {str(checkpoint)!r}: starting afresh",
                      UserWarning, stacklevel=3)
    elif resume and checkpoint is not None:
        state = load_checkpoint(checkpoint, map_location="cpu")
        if state.get("format") != MINIBATCH_CHECKPOINT_FORMAT:
            raise ValueError(f"cannot resume from {str(checkpoint)!r}: it is not a mini-batch checkpoint (format "
                             f"{state.get('format')!r}); a full-batch run resumes with bgcn.train.train, or use "
                             f"another checkpoint path")
        old = state.get("config", {})
        keys = sorted((set(old) | set(config)) - _MB_RESUME_FREE)
        diff = [f"{key}: checkpoint {old.get(key)!r} vs now {config.get(key)!r}"
                for key in keys if old.get(key) != config.get(key)]
        if diff:
            raise ValueError(f"cannot resume from {str(checkpoint)!r}: the settings differ ({'; '.join(diff)}); "
                             f"use the same settings or another checkpoint path")

    t_feat = 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        bank = FeatureBank(n, state["bank"].shape[1], state["bank"].dtype, dev)
        bank.features.copy_(state["bank"].to(dev))
        bank.filled = True
        if state["neighbours"].numel():
            bank.neighbours = state["neighbours"].to(dev)
        if ema is not None:
            ema.load_state_dict(state["ema"])
        history = History.from_state_dict(state["history"])
        best = dict(state["best"])
        best_state = {k: v.clone() for k, v in state["best_model"].items()}
        warm_info = state.get("warmup") or None
        snaps = dict(state.get("snapshots") or {})
        prev_indices = state["prev_indices"].long()
        steps = [list(map(int, r)) for r in state["steps"].tolist()]
        t_search_total = float(state.get("search_s", 0.0))
        start_epoch = int(state["epoch"]) + 1
        _set_rng_state(state["rng"], gen)
    else:
        t0 = time.perf_counter()
        feats0 = embed_images(ema if ema is not None else model.backbone, images, embed_batch_size, dev,
                              num_workers=num_workers)
        bad = ~torch.isfinite(feats0).all(dim=1)
        if bool(bad.any()):
            first = int(torch.nonzero(bad)[0])
            raise TrainingDiverged(f"the backbone produced NaN/Inf features for {int(bad.sum())} image(s) before "
                                   f"training (the first: image {first}); check those images for NaN/Inf values",
                                   0, None)
        bank = FeatureBank(n, feats0.shape[1], feats0.dtype, dev)
        bank.features.copy_(feats0)
        bank.filled = True
        if cache_neighbours:
            bank.fill_neighbours(model.k, chunk_size, bank_chunk)
        t_feat = time.perf_counter() - t0
        fixed0 = mode == "frozen" or warm > 0
        logp, graph, _ = evaluate_full(model, images, fixed=fixed0, chunk_size=chunk_size, bank_chunk=bank_chunk,
                                       batch_size=embed_batch_size, device=dev,
                                       features=bank.features if ema is None else None)
        hom0 = float("nan") if analysis_labels is None else edge_homophily(graph.indices, analysis_labels)
        history.initial = {"train_acc": accuracy(logp, labels, train_mask),
                           "val_acc": accuracy(logp, labels, val_mask),
                           "test_acc": accuracy(logp, labels, test_mask), "homophily": hom0}
        history.graphs.append(_snapshot(graph, 0))
        snaps["initial"] = _snapshot(graph, 0)
        prev_indices = graph.indices.detach().cpu()
        del feats0, logp, graph

    def make_state(epoch: int) -> dict:
        return {"format": MINIBATCH_CHECKPOINT_FORMAT, "epoch": int(epoch), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "bank": bank.features.detach().cpu(),
                "neighbours": (bank.neighbours.detach().cpu() if bank.neighbours is not None
                               else torch.empty(0, dtype=torch.long)),
                "ema": ema.state_dict() if ema is not None else {}, "history": history.state_dict(),
                "best": dict(best), "best_model": best_state, "warmup": warm_info, "snapshots": snaps,
                "prev_indices": prev_indices, "rng": _rng_state(gen),
                "steps": torch.tensor(steps, dtype=torch.long).reshape(-1, 6), "search_s": t_search_total,
                "config": dict(config)}

    def save(epoch: int) -> None:
        if checkpoint is not None:
            bd.write_if_main(checkpoint, lambda p: save_checkpoint(p, make_state(epoch)))

    def is_fixed(epoch: int) -> bool:
        return mode == "frozen" or epoch <= warm

    def diverged(epoch: int, what: str) -> TrainingDiverged:
        where = (f"; the checkpoint {str(checkpoint)!r} holds epoch {last_saved} (resume=True continues from it)"
                 if checkpoint is not None and last_saved > 0 else "")
        return TrainingDiverged(f"training diverged at epoch {epoch}: {what}; lower the learning rates "
                                f"(lr_backbone/lr_gcn) or set max_grad_norm{where}", epoch,
                                None if checkpoint is None else str(checkpoint))

    status = "completed" if start_epoch <= epochs else "resumed-complete"
    bar = _pbar(range(start_epoch, epochs + 1), progress and rank == 0, desc=f"train {mode} b={batch_size}",
                unit="epoch", initial=start_epoch - 1, total=epochs)
    last_saved = start_epoch - 1
    for epoch in bar:
        t0 = time.perf_counter()
        fixed = is_fixed(epoch)
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        lab_total = 0
        g_backbone = torch.zeros((), dtype=torch.float64, device=dev)
        for batch in stratified_batches(train_cpu, batch_size, gen):
            optimizer.zero_grad(set_to_none=True)
            try:
                loss, info = minibatch_loss(model, images, batch, bank, labels, train_mask, chunk_size=chunk_size,
                                            bank_chunk=bank_chunk, fixed=fixed, write_bank=ema is None,
                                            use_neighbours=cache_neighbours,
                                            backbone=None if fixed else ddp_backbone)
            except ValueError as e:  # the bank refuses NaN/Inf rows: an earlier step of this epoch diverged
                if "NaN/Inf" not in str(e):
                    raise
                raise diverged(epoch, str(e)) from None
            loss.backward()
            if world > 1:
                _allreduce_mean_(other)
            if not fixed and backbone_params:
                grads = [p.grad.detach().double().pow(2).sum() for p in backbone_params if p.grad is not None]
                g_backbone = torch.stack(grads).sum().sqrt() if grads else torch.zeros_like(g_backbone)
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], max_grad_norm)
            optimizer.step()
            if ema is not None and not fixed:
                momentum_update(ema, model.backbone, bank_momentum)
                bank.update(batch.to(dev), embed_images(ema, images, embed_batch_size, dev,
                                                        indices=batch).to(bank.dtype))
            n_lab = int(train_cpu[batch].sum())
            loss_sum = loss_sum + info["loss"].double() * n_lab
            lab_total += n_lab
            t_search_total += info["search_s"]
            steps.append([epoch, int(batch.numel()), n_lab, info["nodes"], info["hop1"], info["hop2"]])
        loss_value = float(loss_sum) / max(lab_total, 1)  # the epoch's one read of the device
        if not math.isfinite(loss_value):
            raise diverged(epoch, f"the mean batch loss is {loss_value}")
        t_step = time.perf_counter() - t0
        if callback is not None:
            model.eval()
            with torch.no_grad():
                callback(epoch, model, bank)

        evaluate = epoch % eval_every == 0 or epoch == epochs
        refresh = bank_refresh > 0 and epoch % bank_refresh == 0
        tr = va = te = change = hom = float("nan")
        graph = None
        if evaluate:
            logp, graph, feats = evaluate_full(model, images, fixed=fixed, chunk_size=chunk_size,
                                               bank_chunk=bank_chunk, batch_size=embed_batch_size, device=dev,
                                               features=bank.features if fixed and ema is None else None,
                                               num_workers=num_workers)
            tr, va, te = (accuracy(logp, labels, train_mask), accuracy(logp, labels, val_mask),
                          accuracy(logp, labels, test_mask))
            new_indices = graph.indices.detach().cpu()
            change = edge_change_fraction(prev_indices, new_indices)
            prev_indices = new_indices
            if analysis_labels is not None:
                hom = edge_homophily(new_indices, analysis_labels)
            if refresh and ema is None:
                bank.features.copy_(feats.to(bank.dtype))
                if cache_neighbours:
                    bank.neighbours = graph.indices.clone()
            del feats, logp
        if refresh and (ema is not None or not evaluate):
            fresh = embed_images(ema if ema is not None else model.backbone, images, embed_batch_size, dev,
                                 num_workers=num_workers)
            bank.features.copy_(fresh.to(bank.dtype))
            if cache_neighbours:
                bank.fill_neighbours(model.k, chunk_size, bank_chunk)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        dt = time.perf_counter() - t0
        history.append(epoch=epoch, loss=loss_value, surrogate=0.0, train_acc=tr, val_acc=va, test_acc=te,
                       grad_backbone=float(g_backbone), edge_change=change, homophily=hom, time=dt, time_step=t_step)
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
        del graph
        ips = n / max(t_step, 1e-12)
        bar.set_postfix(loss=f"{loss_value:.3f}", val=f"{va:.3f}", img_s=f"{ips:.0f}", refresh=False)
        if checkpoint is not None and (epoch % checkpoint_every == 0 or epoch == epochs):
            save(epoch)
            last_saved = epoch
    bar.close()
    if checkpoint is not None and status == "completed" and last_saved != epochs:
        save(epochs)
    total = time.perf_counter() - t_start
    final = {"train_acc": history.train_acc[-1], "val_acc": history.val_acc[-1], "test_acc": history.test_acc[-1],
             "loss": history.loss[-1]} if len(history) else {}
    run_steps = sum(history.time_step) if len(history) else float("nan")
    timings = {"total": total, "per_epoch": float(np.mean(history.time)) if len(history) else float("nan"),
               "per_epoch_step": float(np.mean(history.time_step)) if len(history) else float("nan"),
               "features": t_feat, "search": t_search_total,
               "images_per_s": float(n * len(history) / max(run_steps, 1e-12)) if len(history) else float("nan"),
               "peak_memory_bytes": peak_memory_bytes(dev), "bank_bytes": int(bank.nbytes)}
    result = TrainResult(model=model, history=history, best_epoch=int(best["epoch"]),
                         best_val_acc=float(best["val_acc"]), test_acc_at_best_val=float(best["test_acc"]),
                         final=final, best_state=best_state, status=status,
                         checkpoint=None if checkpoint is None else str(checkpoint), timings=timings,
                         config=config, warmup=warm_info, graphs=snaps)
    result.bank = bank
    result.steps = [dict(zip(("epoch", "batch_size", "labelled", "nodes", "hop1", "hop2"), r)) for r in steps]
    return result
