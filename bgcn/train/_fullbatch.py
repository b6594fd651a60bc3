r"""The full-batch engine: one step an epoch on the kNN graph of all N images (chapter 08).

.. math::
    L = -\frac{1}{|M_\text{train}|}\sum_{i\in M_\text{train}} \log p_{i, y_i},
    \qquad \theta \leftarrow \text{AdamW}(\theta, \nabla_\theta L)

Modes (seed 000):

- ``"frozen"`` (§1): features once under ``no_grad``, hard kNN graph, only the GCN learns;
- ``"end2end-features"`` (§3's loop as intended, once its three bugs are fixed): the extractor
  learns through the node features; the graph is hard and its weights unused, so the ranking path
  carries exactly zero gradient;
- ``"end2end"`` (what §2.5 claims of that loop): through the node features *and* the estimator's
  edge weights.

The loop around the step (selection, resume, divergence, history) is :mod:`bgcn.train._loop`'s.

Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ._config import TrainConfig
from ..model import EndToEnd, score_function_surrogate
from ..utils import check_k, get_device
from ._checkpoint import CHECKPOINT_FORMAT
from ._checks import check_images, check_labels, check_masks, check_model, default_mode
from ._loop import Engine, GraphSnapshots, Plugin, analysis_plugins, make_optimizer, merge_extra, train_with
from ._result import TrainResult, TrainingDiverged

__all__ = ["train", "FullBatchEngine", "ParamPathNorms"]

# the settings that may change between a run and its resume (every other config key must match)
_RESUME_FREE = frozenset({"epochs", "device", "graph_every", "checkpoint_every", "amp"})


class ParamPathNorms:
    r"""``history.grad_backbone_node`` / ``_graph``: the backbone's parameter gradient split by path,
    :math:`\lVert J_\theta^\top g_\text{node}\rVert` and :math:`\lVert J_\theta^\top g_\text{graph}\rVert`
    (two VJPs a step, before the backward; every ``.grad`` is left untouched). A loss hook of
    :class:`FullBatchEngine` (``train(param_path_norms=True)`` installs it).

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """

    def on_loss(self, engine: "FullBatchEngine", loss: torch.Tensor, fixed: bool) -> dict:
        model, params = engine.model, engine.backbone_params
        if fixed or not params or not model._aliases:
            return {"grad_backbone_node": 0.0, "grad_backbone_graph": 0.0}  # no path reaches the backbone
        aliases = model._aliases
        names = [n for n in ("node", "graph") if n in aliases]
        grads = torch.autograd.grad(loss, [aliases[n] for n in names], retain_graph=True, allow_unused=True)
        out = {"node": 0.0, "graph": 0.0}
        feats = model._feats
        for name, g in zip(names, grads):
            if g is None or feats is None or not feats.requires_grad:
                continue
            vj = torch.autograd.grad(feats, params, grad_outputs=g, retain_graph=True, allow_unused=True)
            sq = [v.detach().double().pow(2).sum() for v in vj if v is not None]
            out[name] = float(torch.stack(sq).sum().sqrt()) if sq else 0.0
        return {"grad_backbone_node": out["node"], "grad_backbone_graph": out["graph"]}


def _grad_norm(params) -> float:
    sq = [p.grad.detach().float().pow(2).sum() for p in params if p.grad is not None]
    return float(torch.stack(sq).sum().sqrt()) if sq else 0.0


class FullBatchEngine(Engine):
    """How the full-batch engine makes a step and an evaluation (the loop is :func:`bgcn.train._loop.run`).

    In ``"frozen"`` mode and during a warm-up the features and the hard kNN graph are computed once
    under ``no_grad`` (:meth:`prepare`) and the GCN trains on them with unit edge weights; otherwise
    every step rebuilds the graph from the current features.

    Shapes: images (N, C_in, H, W); labels, masks (N,) on the device.

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """

    kind, checkpoint_format, resume_free, required_keys = "full-batch", CHECKPOINT_FORMAT, _RESUME_FREE, ()
    resume_hint = "a mini-batch run resumes with bgcn.minibatch.train_minibatch"

    def __init__(self, model: EndToEnd, images, labels, masks: dict, cfg: TrainConfig, dev: torch.device,
                 loss_hooks=()):
        self.model, self.images, self.labels, self.masks, self.device = model, images, labels, masks, dev
        self.mode, self.reward, self.max_grad_norm = cfg.mode, cfg.reinforce_reward, cfg.max_grad_norm
        self.warm = 0 if cfg.mode == "frozen" else cfg.warmup_epochs
        self.loss_hooks = list(loss_hooks)
        model.to(dev)
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed((cfg.seed + 1) % 2**64)  # seed may be 2**64 - 1
        self.optimizer, self.backbone_params, _ = make_optimizer(model, cfg.mode, cfg.lr_backbone, cfg.lr_gcn,
                                                                 cfg.weight_decay)
        self.loss_ema: float | None = None
        self.fixed = None  # (features, hard graph) of the frozen mode / the warm-up
        self.t_feat = 0.0
        self.desc = f"train {cfg.mode}"
        self.config = merge_extra(self._record(model, cfg, dev, images.shape[0], masks), cfg.extra, "train()")

    @staticmethod
    def _record(model, cfg: TrainConfig, dev, n: int, masks: dict) -> dict:
        config = {"mode": cfg.mode, "k": model.k, "estimator": model.estimator_name,
                  "configured_estimator": model.configured_estimator_name, "tau": model.tau,
                  "use_graph_weights": model.use_graph_weights, "exclude_self": model.exclude_self,
                  "symmetric": model.symmetric, "epochs": cfg.epochs, "lr_backbone": float(cfg.lr_backbone),
                  "lr_gcn": float(cfg.lr_gcn), "weight_decay": float(cfg.weight_decay), "seed": int(cfg.seed),
                  "device": str(dev), "amp": bool(cfg.amp), "num_nodes": int(n),
                  "num_train": int(masks["train_mask"].sum()), "warmup_epochs": cfg.warmup_epochs,
                  "graph_every": cfg.graph_every, "max_grad_norm": cfg.max_grad_norm,
                  "reinforce_reward": cfg.reinforce_reward, "param_path_norms": cfg.param_path_norms}
        if cfg.eval_every != 1:  # absent = 1, so checkpoints from before the option still resume
            config["eval_every"] = cfg.eval_every
        return config

    # -- checkpoint ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"loss_ema": self.loss_ema}

    def load_state_dict(self, state: dict, path: Path) -> None:
        self.loss_ema = state.get("loss_ema")

    # -- the run -------------------------------------------------------------------------------------
    def _fixed_at(self, epoch: int):
        return self.fixed if self.mode == "frozen" or epoch <= self.warm else None

    def prepare(self, start_epoch: int) -> None:
        """Frozen (or a warm-up still to run): the features and the hard graph once, under no_grad."""
        if not (self.mode == "frozen" or start_epoch <= self.warm):
            return
        t0 = time.perf_counter()
        model = self.model
        model.backbone.eval()
        with torch.no_grad():
            feats = model.features(self.images)
            if not bool(torch.isfinite(feats).all()):
                raise TrainingDiverged("the backbone produced NaN/Inf features before training", 0, None)
            graph0 = model.build_graph(feats, generator=self.generator, estimator="hard")
        self.fixed = (feats, graph0)
        model.last_graph = graph0
        self.t_feat = time.perf_counter() - t0

    def _forward(self, cur):
        if cur is not None:  # the hard graph's edges with unit weights: exactly what the frozen mode trains on
            feats, graph = cur
            return self.model.gcn(feats, graph.edge_index), graph
        return self.model(self.images, generator=self.generator), self.model.last_graph

    def initial(self):
        return self.evaluate(0)

    def evaluate(self, epoch: int):
        self.model.eval()
        with torch.no_grad():
            return self._forward(self._fixed_at(epoch))

    def step(self, epoch: int) -> dict:
        model, cur = self.model, self._fixed_at(epoch)
        model.train()
        if cur is not None:
            model.backbone.eval()
        self.optimizer.zero_grad(set_to_none=True)
        logp, graph = self._forward(cur)
        train_mask = self.masks["train_mask"]
        node_loss = F.nll_loss(logp, self.labels.clamp_min(0), reduction="none")
        nll = node_loss[train_mask].mean()
        loss = nll
        log_prob = graph.info.get("log_prob") if (cur is None and isinstance(graph.info, dict)) else None
        surrogate = 0.0
        if log_prob is not None:
            base = "loo" if self.reward == "node" else (0.0 if self.loss_ema is None else self.loss_ema)
            sur = score_function_surrogate(log_prob, node_loss, train_mask, self.reward, base)
            surrogate = float(sur.detach())
            loss = loss + sur
        loss_value = float(nll.detach())
        if not math.isfinite(loss_value) or not math.isfinite(surrogate):
            raise FloatingPointError(f"the loss is {loss_value} (surrogate {surrogate})")
        row = {"loss": loss_value, "surrogate": surrogate}
        for hook in self.loss_hooks:
            row.update(hook.on_loss(self, loss, cur is not None))
        loss.backward()
        norms = model.path_grad_norms() if cur is None else {"node": 0.0, "graph": 0.0, "total": 0.0}
        row.update(grad_node=norms["node"], grad_graph=norms["graph"], grad_total=norms["total"],
                   grad_backbone=_grad_norm(self.backbone_params) if cur is None else 0.0)
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           self.max_grad_norm)
        self.optimizer.step()
        self.loss_ema = loss_value if self.loss_ema is None else 0.9 * self.loss_ema + 0.1 * loss_value
        return row



def train(model: EndToEnd, images: torch.Tensor, labels: torch.Tensor, train_mask: torch.Tensor,
          val_mask: torch.Tensor | None = None, test_mask: torch.Tensor | None = None, *,
          mode: str | None = None, epochs: int = 100, warmup_epochs: int = 0, lr_backbone: float = 1e-4,
          lr_gcn: float = 1e-2,
          weight_decay: float = 5e-4, seed: int = 0, device: str | torch.device = "auto", amp: bool = False,
          deterministic: bool | None = None, graph_every: int = 1, checkpoint: str | os.PathLike | None = None,
          checkpoint_every: int = 1, resume: bool = False, progress: bool | None = None,
          reinforce_reward: str = "node", max_grad_norm: float | None = None,
          extra_config: dict | None = None, analysis_labels: torch.Tensor | None = None,
          param_path_norms: bool = False, eval_every: int = 1, plugins: Sequence[Plugin] = ()) -> TrainResult:
    r"""Train an :class:`~bgcn.model.EndToEnd` model full-batch and transductively.

    Every epoch is one AdamW step on

    .. math::
        L = -\frac{1}{|M_\text{train}|}\sum_{i\in M_\text{train}}\log p_{i,y_i}
        \;\big[+\ \mathcal L_\text{sf}\ \text{for sampled graphs}\big],\qquad
        \log p = \text{GCN}\big(F, \text{graph}(F)\big),\ F = \text{backbone}(\text{images}),

    with learning rate ``lr_backbone`` for the backbone's parameters and ``lr_gcn`` for the rest
    (AdamW, decoupled ``weight_decay`` on both). The graph spans all N images — labelled and
    unlabelled (transductive); only ``train_mask`` enters the loss. ``mode`` (see
    :data:`bgcn.model.MODES`; ``None`` = the model's own ``model.mode``, as
    :func:`~bgcn.model.build_model` set it) configures the model first via
    :meth:`EndToEnd.configure`, so the model and the run never disagree:
    ``"frozen"`` extracts F once under ``no_grad`` and builds one hard graph; the end-to-end modes
    rebuild the graph from the current features at every step.

    **Extension point (score function).** If the estimator puts per-node log-probabilities of its
    sampled neighbour sets in ``graph.info["log_prob"]`` (N,), the loss gains
    :func:`~bgcn.model.score_function_surrogate` with ``reward=reinforce_reward`` (baseline:
    leave-one-out for ``"node"``, a moving average of past losses for ``"global"``); it is recorded
    apart from the NLL (``history.surrogate``). A stochastic estimator
    gets a ``torch.Generator`` seeded with ``seed + 1`` on the training device.

    **Reproducibility.** ``seed_everything(seed)`` is called first (seed the *model's*
    initialisation yourself before building it), and with ``deterministic=True`` (the default on
    the CPU; ``None`` = CPU only, since PyG's scatter kernels have no deterministic CUDA version)
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` is on for the run (restored
    after). On the CPU two runs with the same seed give identical histories, and
    ``resume=True`` from a checkpoint reaches exactly the result of an uninterrupted run. On CUDA
    nothing is promised: ``deterministic=True`` there sets ``CUBLAS_WORKSPACE_CONFIG`` only if CUDA
    has not started yet (otherwise it warns that cuBLAS may not be deterministic), and
    ``amp=True`` (off by default) runs the backbone under bf16 autocast, which changes the ranking
    (see :class:`~bgcn.model.EndToEnd`).

    **Checkpoints** (``checkpoint=path``): state dicts, history, best-model weights and RNG states,
    written atomically every ``checkpoint_every`` epochs and at the end; read back with
    ``torch.load(weights_only=True)``. ``resume=True`` continues from it when it exists (the run's
    settings must match: every key of the config, ``extra_config`` included, except ``epochs``,
    ``device``, ``graph_every``, ``checkpoint_every`` and ``amp``; the error names the one that
    differs) and starts afresh otherwise, with a warning. A checkpoint's random generator state is
    restored only on the device it was saved from. A NaN/Inf loss or feature matrix raises
    :class:`TrainingDiverged` before the bad step is applied; the last checkpoint stays as it was.
    A checkpoint that lacks a part or holds tensors of another shape is a one-line ``ValueError``.

    **Settings** are checked once, by the :class:`~bgcn.config.TrainConfig` built from the keyword
    arguments (its errors name the field; e.g. a learning rate lies in [0, 10]). The loop (model
    selection, resume, divergence, history) is the one :func:`bgcn.minibatch.train_minibatch` shares
    (:func:`bgcn.train.run`); ``param_path_norms``, ``graph_every`` and ``analysis_labels`` install
    its plug-ins (:class:`ParamPathNorms`, :class:`GraphSnapshots`, :class:`Homophily`).

    Args:
        model: the model; moved to ``device``.
        images: (N, C_in, H, W) all images (labelled or not), floating point in [0, 1]; an image
            with NaN/Inf is refused (:class:`NonFiniteImages`, a ``ValueError`` naming it).
        labels: (N,) long; only entries in the masks are read.
        train_mask, val_mask, test_mask: (N,) bool, train and validation disjoint. Model selection
            is by best validation accuracy (among the joint epochs when there is a warm-up); a
            warning says when the validation set is too small to select on (fewer than 5 nodes a
            class).
        mode: ``"frozen"``, ``"end2end-features"`` or ``"end2end"``.
        epochs: total number of epochs (a resumed run counts the ones already done).
        warmup_epochs: for the end-to-end modes, train only the GCN for this many first epochs on
            the features and graph of the initial backbone (computed once, as in ``"frozen"``), then
            switch to the mode ("linear probe, then fine-tune"): the GCN the backbone's gradient
            flows through is then no longer random. The optimizer is the same throughout (the
            backbone's parameters get no gradient during the warm-up). The warm-up graph is the
            frozen mode's: the *hard* kNN graph of the initial features, built once under
            ``no_grad`` (never a sampled or dense graph), so every end-to-end run of one seed starts
            from the same warm-up model. Must be < ``epochs``. Ignored by ``"frozen"``.
        graph_every: keep the eval graph every this many epochs in ``history.graphs`` (0: only
            epoch 0 and the last). With a checkpoint the graphs are stored apart, one file each in
            ``<checkpoint>.graphs/`` written once, so a checkpoint every epoch writes O(N·k) bytes,
            not the whole growing history.
        eval_every: evaluate (the eval-mode forward: the whole kNN graph rebuilt, accuracies,
            edge change, homophily, model selection) every this many epochs and at the last; the
            other epochs record NaN there. 1: every epoch (the chapters' default). A run resumed
            with more ``epochs`` keeps the first run's evaluation (and graph snapshot) of its last
            epoch, which the longer uninterrupted run might not have made: it is exact only when
            that epoch is one the longer run evaluates too (with ``eval_every=1``: always, up to
            that extra snapshot in ``history.graphs``).
        progress: tqdm bar; ``None`` = only on a terminal and without ``TQDM_DISABLE=1``.
        max_grad_norm: clip the global gradient norm (None: no clipping).
        extra_config: plain values stored with the run's config (e.g. the backbone name); they
            must match on resume.
        analysis_labels: (N,) labels of *all* nodes, for ``history.homophily`` only (never read
            by the loss or the model selection); ``None``: no homophily.
        param_path_norms: also split the backbone's parameter gradient by path
            (``history.grad_backbone_node`` / ``_graph``; one extra backward through the backbone
            a step).
        plugins: more :class:`~bgcn.train.Plugin` measurements for the loop to call (after the
            library's own); a plugin keeps what it measures itself (e.g. on ``self``), since
            :class:`History` records only its own series.

    Returns:
        :class:`TrainResult`.

    Shapes:
        - images: (N, C_in, H, W); labels, masks: (N,)
        - history.graphs[m]["indices"], ["weights"]: (N, k)

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """
    check_model(model)
    cfg = TrainConfig(mode=default_mode(model, mode), epochs=epochs, warmup_epochs=warmup_epochs,
                      lr_backbone=lr_backbone, lr_gcn=lr_gcn, weight_decay=weight_decay, seed=seed, device=device,
                      amp=amp, deterministic=deterministic, graph_every=graph_every, eval_every=eval_every,
                      checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume, progress=progress,
                      reinforce_reward=reinforce_reward, max_grad_norm=max_grad_norm,
                      param_path_norms=param_path_norms, extra=extra_config)
    dev = get_device(cfg.device)
    check_images(images)
    n = images.shape[0]
    check_labels(labels, n)
    check_k(model.k, n, exclude_self=model.exclude_self)
    images, labels = images.to(dev), labels.to(dev).long()
    masks = check_masks(model, labels, train_mask, val_mask, test_mask, dev)
    plugins = [GraphSnapshots(cfg.graph_every), *analysis_plugins(analysis_labels, n), *plugins]
    model.configure(cfg.mode)
    model.amp = cfg.amp
    hooks = [ParamPathNorms()] if cfg.param_path_norms else []
    return train_with(cfg, dev, lambda: FullBatchEngine(model, images, labels, masks, cfg, dev, hooks), plugins)
