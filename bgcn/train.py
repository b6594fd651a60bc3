r"""Training: frozen, end-to-end through the node features, end-to-end through the graph.

One *epoch* is one full-batch step: all N images form the kNN graph at once (transductive — the
graph spans the labelled *and* the unlabelled images; the loss sees the labelled ones only), then
one evaluation pass records accuracies, the graph and the gradient norms.

.. math::
    L = -\frac{1}{|M_\text{train}|}\sum_{i\in M_\text{train}} \log p_{i, y_i},
    \qquad \theta \leftarrow \text{AdamW}(\theta, \nabla_\theta L)

Modes (seed 000):

- ``"frozen"`` (§1): features once under ``no_grad``, hard kNN graph, only the GCN learns;
- ``"end2end-features"`` (§3 as written): the extractor learns through the node features; the
  graph is hard and its weights unused, so the ranking path carries exactly zero gradient;
- ``"end2end"`` (§3 as intended): through the node features *and* the estimator's edge weights.

Also here: checkpoints that resume bit-exactly on the CPU, :class:`TrainingDiverged` for NaN/Inf,
and a self-supervised pre-training of the backbone (:func:`pretrain_backbone`) so that "frozen" is
not "random".

Taught in: chapter 08 (chapters/08_end_to_end.md).
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .model import MODES, EndToEnd, score_function_surrogate
from .topk import mask_diagonal
from .utils import NotFoundError, check_k, check_positive, check_tensor, get_device, seed_everything

__all__ = [
    "TrainingDiverged",
    "History",
    "TrainResult",
    "train",
    "accuracy",
    "save_checkpoint",
    "load_checkpoint",
    "pretrain_backbone",
    "nt_xent_loss",
    "augment_images",
    "progress_enabled",
    "CHECKPOINT_FORMAT",
]

CHECKPOINT_FORMAT = 1


class TrainingDiverged(RuntimeError):
    """The loss (or the features) became NaN/Inf; the last good checkpoint is left untouched.

    Attributes: ``epoch`` (the epoch that diverged), ``checkpoint`` (path of the last good one or None).

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end.md).
    """

    def __init__(self, message: str, epoch: int, checkpoint: str | None = None):
        super().__init__(message)
        self.epoch = epoch
        self.checkpoint = checkpoint


# --------------------------------------------------------------------------------------------------
# history
# --------------------------------------------------------------------------------------------------
_SERIES = ("epoch", "loss", "surrogate", "train_acc", "val_acc", "test_acc", "grad_node", "grad_graph", "grad_total",
           "grad_backbone", "grad_backbone_node", "grad_backbone_graph", "edge_change", "homophily", "time",
           "time_step")


@dataclass
class History:
    r"""Per-epoch record of a run (plain Python numbers, so it is JSON- and ``weights_only``-safe).

    Series (one entry per epoch, epoch = 1, 2, …):

    - ``loss``: training NLL on the labelled nodes (before the step), never the surrogate;
    - ``surrogate``: the score-function surrogate added for a sampled graph (0 otherwise; its value
      means nothing, only its gradient does);
    - ``train_acc``, ``val_acc``, ``test_acc``: accuracies after the step (eval mode);
    - ``grad_node``, ``grad_graph``, ``grad_total``: :math:`\lVert\partial L/\partial F\rVert` reaching
      the backbone's output through the node features, through the graph weights, and both
      (norm of the sum); 0 when the path does not exist (frozen; graph path of end2end-features);
    - ``grad_backbone``: :math:`\lVert\nabla_\theta L\rVert` over all backbone parameters;
    - ``grad_backbone_node``, ``grad_backbone_graph``: the same gradient split by path,
      :math:`\lVert J_\theta^\top g_\text{node}\rVert` and :math:`\lVert J_\theta^\top g_\text{graph}\rVert`
      with :math:`J_\theta = \partial F/\partial\theta`: the update each path actually makes
      (filled with ``param_path_norms=True``, else NaN; 0 where the path does not exist);
    - ``homophily``: edge homophily of the eval graph (:func:`bgcn.graph.edge_homophily`), an
      analysis quantity computed from ``analysis_labels`` when given (NaN otherwise), never used in
      training;
    - ``edge_change``: fraction of kNN edges that changed since the previous epoch
      (:func:`bgcn.graph.edge_change_fraction`);
    - ``time``: seconds for the epoch (step + evaluation), ``time_step``: the step alone.

    ``initial`` holds the accuracies before training (epoch 0). ``graphs`` keeps the eval graph
    every ``graph_every`` epochs (and at epoch 0 and the last one) for replay/animation: dicts
    ``{"epoch": e, "indices": (N, k) int16/int32, "weights": (N, k) float16}`` on the CPU.

    Shapes: every series is a list of length = number of epochs run; graphs[m]["indices"] (N, k).

    Taught in: chapter 08 (chapters/08_end_to_end.md).
    """

    epoch: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    surrogate: list = field(default_factory=list)
    train_acc: list = field(default_factory=list)
    val_acc: list = field(default_factory=list)
    test_acc: list = field(default_factory=list)
    grad_node: list = field(default_factory=list)
    grad_graph: list = field(default_factory=list)
    grad_total: list = field(default_factory=list)
    grad_backbone: list = field(default_factory=list)
    grad_backbone_node: list = field(default_factory=list)
    grad_backbone_graph: list = field(default_factory=list)
    edge_change: list = field(default_factory=list)
    homophily: list = field(default_factory=list)
    time: list = field(default_factory=list)
    time_step: list = field(default_factory=list)
    initial: dict = field(default_factory=dict)
    graphs: list = field(default_factory=list)

    def append(self, **row: float) -> None:
        for name in _SERIES:
            getattr(self, name).append(row.get(name, float("nan")))

    def __len__(self) -> int:
        return len(self.epoch)

    def series(self) -> dict[str, list]:
        """The per-epoch series as a dict of lists (no graphs), ready for ``json.dump``."""
        out = {name: list(getattr(self, name)) for name in _SERIES}
        out["initial"] = dict(self.initial)
        return out

    def state_dict(self) -> dict:
        """Everything, graphs included (tensors), for a checkpoint."""
        d = self.series()
        d["graphs"] = [dict(g) for g in self.graphs]
        return d

    @classmethod
    def from_state_dict(cls, d: dict) -> "History":
        h = cls()
        for name in _SERIES:
            setattr(h, name, list(d.get(name, [])))
        h.initial = dict(d.get("initial", {}))
        h.graphs = [dict(g) for g in d.get("graphs", [])]
        return h


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained :class:`~bgcn.model.EndToEnd` (parameters of the *last* epoch).
        history: the :class:`History`.
        best_epoch: epoch of the best validation accuracy (first one on ties; last epoch without a
            validation mask); ``best_val_acc`` and ``test_acc_at_best_val`` at it. With a warm-up,
            only the joint epochs (after it) compete, so the score is the end-to-end model's.
        warmup: ``None`` without a warm-up, else the model at the end of the warm-up, the one joint
            training starts from: ``{"epoch", "val_acc", "test_acc", "best_epoch",
            "best_val_acc", "test_acc_at_best_val"}`` (the last three: best validation within the
            warm-up). ``gain_over_warmup`` = ``test_acc_at_best_val - warmup["test_acc"]``.
        graphs: ``{"initial", "warmup", "best", "final"}`` eval-graph snapshots (``History.graphs``
            format) of the model before training, at the end of the warm-up, at ``best_epoch``
            (the model that was scored) and at the end.
        final: accuracies of the last epoch.
        best_state: the model's state dict at ``best_epoch`` (CPU tensors).
        status: ``"completed"`` or ``"resumed-complete"`` (the checkpoint had already reached ``epochs``).
        checkpoint: path of the checkpoint or None.
        timings: seconds: ``total``, ``per_epoch`` (mean), ``features`` (frozen extraction).
        config: the run's settings as plain values.

    Shapes: ``best_state`` tensors as in ``model.state_dict()``.

    Taught in: chapter 08 (chapters/08_end_to_end.md).
    """

    model: EndToEnd
    history: History
    best_epoch: int
    best_val_acc: float
    test_acc_at_best_val: float
    final: dict
    best_state: dict
    status: str
    checkpoint: str | None
    timings: dict
    config: dict
    warmup: dict | None = None
    graphs: dict = field(default_factory=dict)

    @property
    def gain_over_warmup(self) -> float:
        """Test accuracy at the best joint epoch minus that of the model at the end of the warm-up (NaN without one)."""
        if not self.warmup:
            return float("nan")
        return float(self.test_acc_at_best_val - self.warmup["test_acc"])

    def summary(self) -> dict:
        """Plain-number summary (no model, no graphs) for metrics.json."""
        return {"best_epoch": self.best_epoch, "best_val_acc": self.best_val_acc,
                "test_acc_at_best_val": self.test_acc_at_best_val, "final": dict(self.final),
                "warmup": None if self.warmup is None else dict(self.warmup),
                "gain_over_warmup": self.gain_over_warmup,
                "status": self.status, "timings": dict(self.timings), "epochs_run": len(self.history)}


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def accuracy(logp: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None) -> float:
    r"""Share of nodes in ``mask`` whose arg-max class is the label: :math:`\frac1{|M|}\sum_{i\in M}[\hat y_i = y_i]`.

    Returns NaN for an empty or absent mask.

    Shapes: logp (N, C), labels (N,), mask (N,) bool -> float

    Taught in: chapter 08 (chapters/08_end_to_end.md).
    """
    if mask is None or not bool(mask.any()):
        return float("nan")
    return float((logp[mask].argmax(-1) == labels[mask]).float().mean())


def progress_enabled(progress: bool | None = None) -> bool:
    """Whether to show a tqdm bar: ``progress`` if given, else only on a terminal and without ``TQDM_DISABLE``.

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end.md).
    """
    if progress is not None:
        return bool(progress)
    if os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _pbar(iterable, enabled: bool, **kw):
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not enabled, dynamic_ncols=True, **kw)


def _check_mask(mask: Any, n: int, name: str, device: torch.device, required: bool = False) -> torch.Tensor | None:
    if mask is None:
        if required:
            raise ValueError(f"{name} is required: a (N,) bool tensor marking the labelled nodes")
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool torch.Tensor of shape (N,), got "
                        f"{mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    if mask.shape != (n,):
        raise ValueError(f"{name} has shape {tuple(mask.shape)} but there are N={n} images; it must be ({n},)")
    if required and not bool(mask.any()):
        raise ValueError(f"{name} selects no node; label at least one image")
    return mask.to(device)


def _grad_norm(params) -> float:
    sq = [p.grad.detach().float().pow(2).sum() for p in params if p.grad is not None]
    return float(torch.stack(sq).sum().sqrt()) if sq else 0.0


def _snapshot(graph, epoch: int) -> dict:
    idx = graph.indices.detach().cpu()
    idx = idx.to(torch.int16 if graph.num_nodes < 2**15 else torch.int32)
    return {"epoch": int(epoch), "indices": idx, "weights": graph.weights.detach().float().cpu().to(torch.float16)}


# -- RNG state as tensors (weights_only-safe) -------------------------------------------------------
def _rng_state(generator: torch.Generator | None) -> dict:
    py = random.getstate()
    npst = np.random.get_state()
    st = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor([py[0], *py[1]], dtype=torch.int64),
        "python_gauss": torch.tensor([] if py[2] is None else [py[2]], dtype=torch.float64),
        "numpy": torch.from_numpy(np.asarray(npst[1], dtype=np.int64).copy()),
        "numpy_pos": torch.tensor([int(npst[2]), int(npst[3])], dtype=torch.int64),
        "numpy_gauss": torch.tensor([float(npst[4])], dtype=torch.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = list(torch.cuda.get_rng_state_all())
    if generator is not None:
        st["generator"] = generator.get_state()
        st["generator_device"] = torch.tensor([0 if generator.device.type == "cpu" else 1], dtype=torch.int64)
    return st


def _set_rng_state(st: dict, generator: torch.Generator | None) -> None:
    torch.set_rng_state(st["torch"])
    py = st["python"].tolist()
    gauss = st["python_gauss"].tolist()
    random.setstate((int(py[0]), tuple(int(v) for v in py[1:]), gauss[0] if gauss else None))
    pos = st["numpy_pos"].tolist()
    np.random.set_state(("MT19937", st["numpy"].numpy().astype(np.uint32), int(pos[0]), int(pos[1]),
                         float(st["numpy_gauss"][0])))
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])
    if generator is not None and "generator" in st:
        saved = "cpu" if "generator_device" not in st or int(st["generator_device"][0]) == 0 else "cuda"
        if saved == generator.device.type:
            generator.set_state(st["generator"])
        else:  # a CUDA generator's state does not fit a CPU one (and back): keep the fresh seeded one
            warnings.warn(f"the checkpoint's random generator was on {saved}, this run's is on "
                          f"{generator.device.type}: the stochastic estimator's noise continues from a fresh seed, "
                          f"so the resumed run will not match an uninterrupted one exactly", UserWarning, stacklevel=3)


# -- checkpoints ------------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write a checkpoint atomically: ``torch.save`` to ``path.tmp`` in the same folder, then ``os.replace``.

    A crash mid-write leaves the previous checkpoint intact. ``state`` must hold only tensors,
    (nested) dicts/lists and plain Python values, so that :func:`load_checkpoint` can read it with
    ``torch.load(weights_only=True)``.

    Shapes: any.

    Taught in: chapter 08 (chapters/08_end_to_end.md).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`train` with ``torch.load(weights_only=True)`` (no pickled code).

    Keys: ``format``, ``epoch``, ``model``, ``optimizer``, ``best_model``, ``history``, ``best``,
    ``rng``, ``prev_indices``, ``config``.

    Shapes: state dicts as saved.

    Taught in: chapter 08 (chapters/08_end_to_end.md).
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"checkpoint {str(path)!r} does not exist; pass the checkpoint= path a train() run wrote")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt files raise many kinds of errors
        raise ValueError(f"could not read checkpoint {str(path)!r}: {type(e).__name__}: {e}") from e


# the settings that may change between a run and its resume (every other config key must match)
_RESUME_FREE = frozenset({"epochs", "device", "graph_every", "checkpoint_every", "amp"})


def _resolve_mode(model: EndToEnd, mode: str | None) -> str:
    """``mode`` checked, or the model's own when None (shared by :func:`train` and ``train_minibatch``)."""
    if mode is None:
        mode = model.mode if model.mode is not None else ("end2end" if model.train_backbone else "frozen")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not a training mode; choose one of {list(MODES)}")
    return mode


def _check_training_labels(labels: torch.Tensor, train_mask: torch.Tensor, val_mask: torch.Tensor | None,
                           test_mask: torch.Tensor | None, num_classes: int | None) -> None:
    """The label checks of a training run (shared by :func:`train` and ``train_minibatch``).

    Labels in the masks lie in 0..C-1; every class seen in val/test has a labelled node; a warning
    when the validation set is too small to select an epoch on (< 5 nodes a class).
    """
    for mname, m in (("train_mask", train_mask), ("val_mask", val_mask), ("test_mask", test_mask)):
        if m is None or not bool(m.any()):
            continue
        lo, hi = int(labels[m].min()), int(labels[m].max())
        if lo < 0:
            raise ValueError(f"labels of the {mname} nodes must be >= 0, got {lo}; leave unlabelled nodes out of the mask")
        if num_classes is not None and hi >= int(num_classes):
            raise ValueError(f"labels of the {mname} nodes go up to {hi} but the GCN has out_channels C = {num_classes}; "
                             f"labels must lie in 0..{int(num_classes) - 1} (build the model with num_classes={hi + 1})")
    trained = set(labels[train_mask].unique().tolist())
    for mname, m in (("val_mask", val_mask), ("test_mask", test_mask)):
        if m is None or not bool(m.any()):
            continue
        missing = sorted(set(labels[m].unique().tolist()) - trained)
        if missing:
            raise ValueError(f"class(es) {missing} appear in {mname} but have no labelled node in train_mask: the GCN "
                             f"cannot learn them; label at least one image of each class (e.g. raise labels_per_class)")
    if val_mask is not None and bool(val_mask.any()):
        n_val = int(val_mask.sum())
        n_cls = len(set(labels[val_mask].unique().tolist()))
        if n_val < 5 * max(n_cls, 1):
            warnings.warn(f"the validation set has only {n_val} node(s) for {n_cls} class(es) (< 5 a class): one "
                          f"node is {100 / n_val:.0f} accuracy points, so selecting the best epoch on it is mostly "
                          f"noise; label more validation images, or judge by the last epoch (TrainResult.final)",
                          UserWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------------
def train(model: EndToEnd, images: torch.Tensor, labels: torch.Tensor, train_mask: torch.Tensor,
          val_mask: torch.Tensor | None = None, test_mask: torch.Tensor | None = None, *,
          mode: str | None = None, epochs: int = 100, warmup_epochs: int = 0, lr_backbone: float = 1e-4,
          lr_gcn: float = 1e-2,
          weight_decay: float = 5e-4, seed: int = 0, device: str | torch.device = "auto", amp: bool = False,
          deterministic: bool | None = None, graph_every: int = 1, checkpoint: str | os.PathLike | None = None,
          checkpoint_every: int = 1, resume: bool = False, progress: bool | None = None,
          reinforce_reward: str = "node", max_grad_norm: float | None = None,
          extra_config: dict | None = None, analysis_labels: torch.Tensor | None = None,
          param_path_norms: bool = False, eval_every: int = 1) -> TrainResult:
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

    Args:
        model: the model; moved to ``device``.
        images: (N, C_in, H, W) all images (labelled or not).
        labels: (N,) long; only entries in the masks are read.
        train_mask, val_mask, test_mask: (N,) bool. Model selection is by best validation accuracy
            (among the joint epochs when there is a warm-up); a warning says when the validation
            set is too small to select on (fewer than 5 nodes a class).
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

    Returns:
        :class:`TrainResult`.

    Shapes:
        - images: (N, C_in, H, W); labels, masks: (N,)
        - history.graphs[m]["indices"], ["weights"]: (N, k)

    Taught in: chapter 08 (chapters/08_end_to_end.md).
    """
    # ---- validate -------------------------------------------------------------------------------
    if not isinstance(model, EndToEnd):
        raise TypeError(f"model must be a bgcn.EndToEnd (see bgcn.model.build_model), got {type(model).__name__}")
    mode = _resolve_mode(model, mode)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs={epochs!r} must be a positive int")
    lr_backbone = check_positive(lr_backbone, "lr_backbone")
    lr_gcn = check_positive(lr_gcn, "lr_gcn")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise ValueError(f"weight_decay={weight_decay!r} must be a number >= 0")
    if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
        raise ValueError(f"warmup_epochs={warmup_epochs!r} must be an int >= 0")
    if mode != "frozen" and warmup_epochs >= epochs:
        raise ValueError(f"warmup_epochs={warmup_epochs} >= epochs={epochs}: the backbone would never train in mode "
                         f"{mode!r}; use fewer warm-up epochs or more epochs (or mode='frozen')")
    if not isinstance(param_path_norms, bool):
        raise TypeError(f"param_path_norms must be a bool, got {type(param_path_norms).__name__}")
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"eval_every={eval_every!r} must be an int >= 1 (1: evaluate every epoch)")
    if isinstance(graph_every, bool) or not isinstance(graph_every, int) or graph_every < 0:
        raise ValueError(f"graph_every={graph_every!r} must be an int >= 0 (0 keeps only the first and last graph)")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every={checkpoint_every!r} must be a positive int")
    if reinforce_reward not in ("node", "global"):
        raise ValueError(f"reinforce_reward={reinforce_reward!r} must be 'node' or 'global'")
    if max_grad_norm is not None:
        max_grad_norm = check_positive(max_grad_norm, "max_grad_norm")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=path (the file to continue from)")
    dev = get_device(device)
    check_tensor(images, "images", ndim=(2, 3, 4, 5))
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor with values in [0, 1], got dtype {images.dtype}; "
                        f"convert with images.float() / 255 (uint8) or images.float()")
    n = images.shape[0]
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,) or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape ({n},) (one class per image), got "
                         f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    check_k(model.k, n, exclude_self=model.exclude_self)
    images = images.to(dev)
    labels = labels.to(dev).long()
    train_mask = _check_mask(train_mask, n, "train_mask", dev, required=True)
    val_mask = _check_mask(val_mask, n, "val_mask", dev)
    test_mask = _check_mask(test_mask, n, "test_mask", dev)
    _check_training_labels(labels, train_mask, val_mask, test_mask, getattr(model.gcn, "out_channels", None))
    if analysis_labels is not None:
        if (not isinstance(analysis_labels, torch.Tensor) or analysis_labels.shape != (n,)
                or analysis_labels.is_floating_point()):
            raise ValueError(f"analysis_labels must be an integer tensor of shape ({n},) (every node's class, for "
                             f"the homophily only) or None")
        analysis_labels = analysis_labels.detach().cpu().long()

    model.configure(mode)
    model.amp = bool(amp)
    config = {"mode": mode, "k": model.k, "estimator": model.estimator_name,
              "configured_estimator": model.configured_estimator_name, "tau": model.tau,
              "use_graph_weights": model.use_graph_weights, "exclude_self": model.exclude_self,
              "symmetric": model.symmetric, "epochs": epochs, "lr_backbone": lr_backbone, "lr_gcn": lr_gcn,
              "weight_decay": float(weight_decay), "seed": int(seed), "device": str(dev), "amp": bool(amp),
              "num_nodes": int(n), "num_train": int(train_mask.sum()), "warmup_epochs": warmup_epochs,
              "graph_every": graph_every,
              "max_grad_norm": max_grad_norm, "reinforce_reward": reinforce_reward,
              "param_path_norms": param_path_norms}
    if eval_every != 1:  # absent = 1, so checkpoints from before the option still resume
        config["eval_every"] = eval_every
    if extra_config is not None and not isinstance(extra_config, dict):
        raise TypeError(f"extra_config must be a dict of plain values or None, got {type(extra_config).__name__}")
    clash = sorted(set(extra_config or {}) & set(config))
    if clash:
        raise ValueError(f"extra_config keys {clash} clash with train()'s own settings; rename them")
    config.update(dict(extra_config or {}))

    # ---- determinism ----------------------------------------------------------------------------
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if deterministic is None:
        deterministic = dev.type == "cpu"
    if deterministic:
        if dev.type == "cuda" and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
            if torch.cuda.is_initialized():
                warnings.warn("deterministic=True on CUDA, but cuBLAS has already started without "
                              "CUBLAS_WORKSPACE_CONFIG: its matrix products may not be deterministic; set "
                              "CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment before Python starts",
                              UserWarning, stacklevel=2)
            else:
                os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train(model, images, labels, train_mask, val_mask, test_mask, mode=mode, epochs=epochs,
                      warmup_epochs=warmup_epochs,
                      lr_backbone=lr_backbone, lr_gcn=lr_gcn, weight_decay=float(weight_decay), seed=int(seed),
                      dev=dev, graph_every=graph_every, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                      resume=resume, progress=progress_enabled(progress), reinforce_reward=reinforce_reward,
                      max_grad_norm=max_grad_norm, config=config, analysis_labels=analysis_labels,
                      param_path_norms=param_path_norms, eval_every=eval_every)
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)


def _train(model: EndToEnd, images, labels, train_mask, val_mask, test_mask, *, mode, epochs, warmup_epochs,
           lr_backbone, lr_gcn,
           weight_decay, seed, dev, graph_every, checkpoint, checkpoint_every, resume, progress, reinforce_reward,
           max_grad_norm, config, analysis_labels, param_path_norms, eval_every=1) -> TrainResult:
    from .graph import edge_change_fraction, edge_homophily

    seed_everything(seed)
    model.to(dev)
    generator = torch.Generator(device=dev)
    generator.manual_seed((seed + 1) % 2**64)  # seed may be 2**64 - 1
    warm = 0 if mode == "frozen" else warmup_epochs

    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    other_params = [p for p in model.parameters() if id(p) not in backbone_ids and p.requires_grad]
    groups = [{"params": other_params, "lr": lr_gcn, "name": "gcn"}]
    if mode != "frozen" and backbone_params:
        groups.append({"params": backbone_params, "lr": lr_backbone, "name": "backbone"})
    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)

    history = History()
    best = {"epoch": 0, "score": -math.inf, "val_acc": float("nan"), "test_acc": float("nan")}
    best_state: dict = {}
    warm_info: dict | None = None
    snaps: dict = {}
    prev_indices: torch.Tensor | None = None
    start_epoch = 1
    loss_ema: float | None = None
    ckpt_path = None if checkpoint is None else Path(checkpoint)
    written: set = set()  # epochs whose graph file is on disk

    if resume and ckpt_path is not None and not ckpt_path.is_file():
        warnings.warn(f"resume=True but there is no checkpoint at {str(ckpt_path)!r}: starting afresh",
                      UserWarning, stacklevel=3)
    if resume and ckpt_path is not None and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, map_location="cpu")
        old = state.get("config", {})
        keys = sorted((set(old) | set(config)) - _RESUME_FREE)
        diff = [f"{key}: checkpoint {old.get(key)!r} vs now {config.get(key)!r}"
                for key in keys if old.get(key) != config.get(key)]
        if diff:
            raise ValueError(f"cannot resume from {str(ckpt_path)!r}: the settings differ ({'; '.join(diff)}); "
                             f"use the same settings or another checkpoint path")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = History.from_state_dict(state["history"])
        files = _load_graph_files(ckpt_path, state["history"])
        if files is not None:  # graphs stored apart: those files are on disk
            history.graphs = files
            written = {int(g["epoch"]) for g in files}
        # (an older checkpoint holds its graphs inline: none is on disk yet, so the next save writes them all)
        best = dict(state["best"])
        best_state = {k: v.clone() for k, v in state["best_model"].items()}
        warm_info = state.get("warmup") or None
        snaps = dict(state.get("snapshots") or {})
        prev_indices = state.get("prev_indices")
        prev_indices = None if prev_indices is None or prev_indices.numel() == 0 else prev_indices.long()
        loss_ema = state.get("loss_ema")
        start_epoch = int(state["epoch"]) + 1
        _set_rng_state(state["rng"], generator)

    def eval_forward(fixed):
        model.eval()
        with torch.no_grad():
            if fixed is not None:
                feats, graph = fixed
                logp = model.gcn_forward(feats, graph)
            else:
                logp = model(images, generator=generator)
                graph = model.last_graph
        return logp, graph

    def make_state(epoch: int) -> dict:
        return {"format": CHECKPOINT_FORMAT, "epoch": int(epoch), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "history": _history_apart(ckpt_path, history, written),
                "best": dict(best),
                "best_model": best_state, "rng": _rng_state(generator), "warmup": warm_info, "snapshots": snaps,
                "prev_indices": torch.empty(0, dtype=torch.long) if prev_indices is None else prev_indices,
                "loss_ema": loss_ema, "config": dict(config)}

    def homophily(graph) -> float:
        return float("nan") if analysis_labels is None else edge_homophily(graph.indices, analysis_labels)

    t_start = time.perf_counter()
    # ---- frozen (or warm-up): features and the hard graph once, under no_grad ---------------------
    fixed = None
    t_feat = 0.0
    if mode == "frozen" or start_epoch <= warm:
        t0 = time.perf_counter()
        model.backbone.eval()
        with torch.no_grad():
            feats = model.features(images)
            if not bool(torch.isfinite(feats).all()):
                raise TrainingDiverged("the backbone produced NaN/Inf features before training", 0, None)
            graph0 = model.build_graph(feats, generator=generator, estimator="hard")
        fixed = (feats, graph0)
        model.last_graph = graph0
        t_feat = time.perf_counter() - t0

    def fixed_at(epoch: int):
        return fixed if mode == "frozen" or epoch <= warm else None

    def gcn_on_fixed(cur):
        # the hard graph's edges with unit weights: exactly what the frozen mode trains on
        feats, graph = cur
        return model.gcn(feats, graph.edge_index)

    if start_epoch == 1:
        if fixed_at(0) is not None:
            model.eval()
            with torch.no_grad():
                logp, graph = gcn_on_fixed(fixed), fixed[1]
        else:
            logp, graph = eval_forward(None)
        history.initial = {"train_acc": accuracy(logp, labels, train_mask), "val_acc": accuracy(logp, labels, val_mask),
                           "test_acc": accuracy(logp, labels, test_mask), "homophily": homophily(graph)}
        history.graphs.append(_snapshot(graph, 0))
        snaps["initial"] = _snapshot(graph, 0)
        prev_indices = graph.indices.detach().cpu()

    status = "completed" if start_epoch <= epochs else "resumed-complete"
    bar = _pbar(range(start_epoch, epochs + 1), progress, desc=f"train {mode}", unit="epoch",
                initial=start_epoch - 1, total=epochs)
    last_saved = start_epoch - 1
    for epoch in bar:
        t0 = time.perf_counter()
        # ---- step --------------------------------------------------------------------------------
        cur = fixed_at(epoch)
        model.train()
        if cur is not None:
            model.backbone.eval()
        optimizer.zero_grad(set_to_none=True)
        try:
            if cur is not None:
                logp = gcn_on_fixed(cur)
                graph = cur[1]
            else:
                logp = model(images, generator=generator)
                graph = model.last_graph
        except FloatingPointError as e:
            raise _diverged(epoch, str(e), ckpt_path, last_saved) from None
        node_loss = F.nll_loss(logp, labels.clamp_min(0), reduction="none")
        nll = node_loss[train_mask].mean()
        loss = nll
        log_prob = graph.info.get("log_prob") if (cur is None and isinstance(graph.info, dict)) else None
        surrogate_value = 0.0
        if log_prob is not None:
            base = "loo" if reinforce_reward == "node" else (0.0 if loss_ema is None else loss_ema)
            sur = score_function_surrogate(log_prob, node_loss, train_mask, reinforce_reward, base)
            surrogate_value = float(sur.detach())
            loss = loss + sur
        loss_value = float(nll.detach())
        if not math.isfinite(loss_value) or not math.isfinite(surrogate_value):
            raise _diverged(epoch, f"the loss is {loss_value} (surrogate {surrogate_value})", ckpt_path, last_saved)
        if not param_path_norms:
            g_bb_node = g_bb_graph = float("nan")
        elif cur is None and backbone_params and model._aliases:
            g_bb_node, g_bb_graph = _param_path_norms(model, loss, backbone_params)
        else:
            g_bb_node = g_bb_graph = 0.0  # warm-up / frozen: no path reaches the backbone
        loss.backward()
        norms = model.path_grad_norms() if cur is None else {"node": 0.0, "graph": 0.0, "total": 0.0}
        g_backbone = _grad_norm(backbone_params) if cur is None else 0.0
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], max_grad_norm)
        optimizer.step()
        loss_ema = loss_value if loss_ema is None else 0.9 * loss_ema + 0.1 * loss_value
        t_step = time.perf_counter() - t0

        # ---- evaluate ----------------------------------------------------------------------------
        if not (epoch % eval_every == 0 or epoch == epochs):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            nan = float("nan")
            history.append(epoch=epoch, loss=loss_value, surrogate=surrogate_value, train_acc=nan, val_acc=nan,
                           test_acc=nan, grad_node=norms["node"], grad_graph=norms["graph"],
                           grad_total=norms["total"], grad_backbone=g_backbone, grad_backbone_node=g_bb_node,
                           grad_backbone_graph=g_bb_graph, edge_change=nan, homophily=nan,
                           time=time.perf_counter() - t0, time_step=t_step)
            bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
            if ckpt_path is not None and epoch % checkpoint_every == 0:
                save_checkpoint(ckpt_path, make_state(epoch))
                last_saved = epoch
            continue
        try:
            if cur is not None:
                model.eval()
                with torch.no_grad():
                    logp, graph = gcn_on_fixed(cur), cur[1]
            else:
                logp, graph = eval_forward(None)
        except FloatingPointError as e:
            raise _diverged(epoch, str(e), ckpt_path, last_saved) from None
        tr, va, te = (accuracy(logp, labels, train_mask), accuracy(logp, labels, val_mask),
                      accuracy(logp, labels, test_mask))
        new_indices = graph.indices.detach().cpu()
        change = 0.0 if prev_indices is None else edge_change_fraction(prev_indices, new_indices)
        prev_indices = new_indices
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        dt = time.perf_counter() - t0
        history.append(epoch=epoch, loss=loss_value, surrogate=surrogate_value, train_acc=tr, val_acc=va, test_acc=te,
                       grad_node=norms["node"], grad_graph=norms["graph"], grad_total=norms["total"],
                       grad_backbone=g_backbone, grad_backbone_node=g_bb_node, grad_backbone_graph=g_bb_graph,
                       edge_change=change, homophily=homophily(graph), time=dt, time_step=t_step)
        if (graph_every and epoch % graph_every == 0) or epoch == epochs:
            history.graphs.append(_snapshot(graph, epoch))  # (epochs not evaluated keep no graph)
        # model selection: with a warm-up, only the joint epochs compete (the warm-up is recorded apart)
        in_warmup = warm > 0 and epoch <= warm
        if in_warmup:
            wb = warm_info or {"best_epoch": 0, "best_val_acc": -math.inf, "test_acc_at_best_val": float("nan")}
            wscore = va if val_mask is not None else float(epoch)
            if wscore > wb["best_val_acc"]:
                wb = {**wb, "best_epoch": epoch, "best_val_acc": float(wscore), "test_acc_at_best_val": te}
            warm_info = {**wb, "epoch": epoch, "val_acc": va, "test_acc": te}
            if epoch == warm:
                snaps["warmup"] = _snapshot(graph, epoch)
        else:
            score = va if val_mask is not None else float(epoch)  # no validation mask: the last epoch wins
            if score > best["score"]:
                best = {"epoch": epoch, "score": float(score), "val_acc": va, "test_acc": te}
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                snaps["best"] = _snapshot(graph, epoch)
        if epoch == epochs:
            snaps["final"] = _snapshot(graph, epoch)
        bar.set_postfix(loss=f"{loss_value:.3f}", val=f"{va:.3f}", test=f"{te:.3f}", refresh=False)
        if ckpt_path is not None and (epoch % checkpoint_every == 0 or epoch == epochs):
            save_checkpoint(ckpt_path, make_state(epoch))
            last_saved = epoch
    bar.close()

    total = time.perf_counter() - t_start
    if ckpt_path is not None and status == "completed" and last_saved != epochs:
        save_checkpoint(ckpt_path, make_state(epochs))
    best_val = best["val_acc"]
    final = {"train_acc": history.train_acc[-1], "val_acc": history.val_acc[-1], "test_acc": history.test_acc[-1],
             "loss": history.loss[-1]} if len(history) else {}
    times = history.time
    timings = {"total": total, "per_epoch": float(np.mean(times)) if times else float("nan"),
               "per_epoch_step": float(np.mean(history.time_step)) if times else float("nan"), "features": t_feat}
    return TrainResult(model=model, history=history, best_epoch=int(best["epoch"]), best_val_acc=float(best_val),
                       test_acc_at_best_val=float(best["test_acc"]), final=final, best_state=best_state,
                       status=status, checkpoint=None if ckpt_path is None else str(ckpt_path),
                       timings=timings, config=config, warmup=warm_info, graphs=snaps)


def _graphs_dir(ckpt_path: Path) -> Path:
    return ckpt_path.with_name(ckpt_path.name + ".graphs")


def _history_apart(ckpt_path: Path | None, history: History, written: set) -> dict:
    """The history for a checkpoint with its graphs stored apart: each snapshot is written once to
    ``<checkpoint>.graphs/epoch_NNNNN.pt`` (atomically); the checkpoint keeps only their epochs."""
    d = history.state_dict()
    if ckpt_path is None:
        return d
    folder = _graphs_dir(ckpt_path)
    for g in history.graphs:
        e = int(g["epoch"])
        if e not in written:
            save_checkpoint(folder / f"epoch_{e:05d}.pt", dict(g))
            written.add(e)
    d["graphs"] = []
    d["graph_epochs"] = [int(g["epoch"]) for g in history.graphs]
    return d


def _load_graph_files(ckpt_path: Path, hist: dict) -> list | None:
    """The graphs a checkpoint's history names (``graph_epochs``), read back from its folder."""
    epochs = hist.get("graph_epochs")
    if epochs is None:
        return None  # an older checkpoint: graphs inline
    folder = _graphs_dir(ckpt_path)
    out = []
    for e in epochs:
        f = folder / f"epoch_{int(e):05d}.pt"
        if not f.is_file():
            raise NotFoundError(f"the checkpoint {str(ckpt_path)!r} names the graph of epoch {e}, but {str(f)!r} is "
                                f"missing; keep the folder {str(folder)!r} next to the checkpoint, or start afresh")
        out.append(load_checkpoint(f))
    return out


def _param_path_norms(model: EndToEnd, loss: torch.Tensor, params: list) -> tuple[float, float]:
    r"""Norms of the backbone's parameter gradient by path: :math:`\lVert J_\theta^\top g_\text{node}\rVert`,
    :math:`\lVert J_\theta^\top g_\text{graph}\rVert` (two VJPs; leaves every ``.grad`` untouched)."""
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
    return out["node"], out["graph"]


def _diverged(epoch: int, what: str, ckpt_path: Path | None, last_saved: int) -> TrainingDiverged:
    where = (f"the last good checkpoint (epoch {last_saved}) is kept at {str(ckpt_path)!r}"
             if ckpt_path is not None and last_saved > 0 else "no checkpoint was written")
    return TrainingDiverged(f"training diverged at epoch {epoch}: {what}; {where}. Lower the learning rates "
                            f"(lr_backbone/lr_gcn), raise tau, or set max_grad_norm.", epoch,
                            str(ckpt_path) if ckpt_path is not None and last_saved > 0 else None)


# --------------------------------------------------------------------------------------------------
# self-supervised pre-training (so that "frozen" is not "random")
# --------------------------------------------------------------------------------------------------
def augment_images(images: torch.Tensor, generator: torch.Generator | None = None, max_shift: int = 1,
                   noise: float = 0.1, scale: tuple[float, float] = (0.8, 1.2),
                   drop: float = 0.1) -> torch.Tensor:
    r"""Random views of small images: shift, contrast, pixel dropout and Gaussian noise.

    .. math::
        \tilde x = a \cdot \mathrm{shift}_{(dy,dx)}(x) \odot m + \sigma\varepsilon,\quad
        dy, dx \in \{-s..s\},\ a \sim U(\text{scale}),\ m_{hw} \sim \text{Bernoulli}(1 - \text{drop}),\ 
        \varepsilon\sim\mathcal N(0, I)

    The shift pads with zeros (no wrap-around). All randomness comes from ``generator``.

    Shapes: images (B, C, H, W) -> (B, C, H, W)

    Taught in: chapter 08 (chapters/08_end_to_end.md).
    """
    check_tensor(images, "images", ndim=4)
    b, c, h, w = images.shape
    dev = images.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device="cpu").to(dev)

    x = images
    if max_shift > 0:
        s = int(max_shift)
        pad = F.pad(x, (s, s, s, s))
        off = (rand(b, 2) * (2 * s + 1)).long().clamp_max(2 * s)
        rows = off[:, 0:1] + torch.arange(h, device=dev)  # (B, H)
        cols = off[:, 1:2] + torch.arange(w, device=dev)  # (B, W)
        bi = torch.arange(b, device=dev)[:, None, None]
        x = pad.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    a = scale[0] + (scale[1] - scale[0]) * rand(b, 1, 1, 1)
    x = x * a
    if drop > 0:
        x = x * (rand(b, 1, h, w) >= drop).to(x.dtype)
    if noise > 0:
        x = x + noise * torch.randn(b, c, h, w, generator=generator, device="cpu").to(dev)
    return x


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    r"""SimCLR's normalised-temperature cross-entropy over 2B views.

    .. math::
        \ell = -\frac{1}{2B}\sum_{a}\log
        \frac{\exp(\hat z_a\cdot\hat z_{a^+}/t)}{\sum_{b\ne a}\exp(\hat z_a\cdot\hat z_b/t)}

    with :math:`a^+` the other view of the same image.

    Shapes: z1, z2 (B, P) -> ()

    Taught in: chapter 08 (chapters/08_end_to_end.md).
    """
    check_tensor(z1, "z1", ndim=2)
    check_tensor(z2, "z2", ndim=2)
    if z1.shape != z2.shape:
        raise ValueError(f"z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} must have the same shape (B, P): "
                         f"two views of the same B images")
    temperature = check_positive(temperature, "temperature")
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    b = z1.shape[0]
    logits = mask_diagonal(z @ z.T) / temperature
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, target)


def pretrain_backbone(backbone: nn.Module, images: torch.Tensor, *, epochs: int = 30, batch_size: int = 256,
                      lr: float = 1e-3, weight_decay: float = 1e-4, temperature: float = 0.2, max_shift: int = 1,
                      noise: float = 0.1, proj_dim: int = 64, seed: int = 0, device: str | torch.device = "auto",
                      progress: bool | None = None, save_to: str | os.PathLike | None = None) -> dict:
    r"""Self-supervised pre-training of a backbone (SimCLR-lite), without any label.

    Two random views :math:`\tilde x^{(1)}, \tilde x^{(2)}` of every image
    (:func:`augment_images`: ±``max_shift``-pixel shifts, contrast, pixel dropout, noise) pass
    through the backbone and a projection head :math:`g` (Linear–ReLU–Linear to ``proj_dim``,
    discarded afterwards); AdamW minimises :func:`nt_xent_loss` of
    :math:`g(f(\tilde x^{(1)})), g(f(\tilde x^{(2)}))` over mini-batches of ``batch_size`` images.

    It uses no labels, so pre-training on all N images (the test images included) is fair in the
    transductive setting: it is what "an extractor that first learned something" means here, and
    what the frozen baseline freezes. ``save_to`` writes the backbone's weights
    (:func:`bgcn.backbone.save_backbone_weights`; load them with
    ``create_backbone(name, pretrained_file=...)``). The backbone is trained in place.

    Returns ``{"loss": [per-epoch mean loss], "time": seconds, "path": str or None}``.

    Shapes: images (N, C_in, H, W); backbone: (B, C_in, H, W) -> (B, D)

    Taught in: chapter 08 (chapters/08_end_to_end.md).
    """
    check_tensor(images, "images", ndim=4)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs={epochs!r} must be a positive int")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size={batch_size!r} must be an int >= 2 (contrastive pairs need two images)")
    lr = check_positive(lr, "lr")
    temperature = check_positive(temperature, "temperature")
    d = getattr(backbone, "num_features", None)
    if not isinstance(d, int):
        raise TypeError("backbone must have an int .num_features; create it with bgcn.create_backbone")
    dev = get_device(device)
    seed_everything(seed)
    g = torch.Generator().manual_seed(seed)
    head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, proj_dim)).to(dev)
    backbone.to(dev).train()
    opt = torch.optim.AdamW(list(backbone.parameters()) + list(head.parameters()), lr=lr, weight_decay=weight_decay)
    x_all = images.to(dev)
    n = x_all.shape[0]
    losses = []
    t0 = time.perf_counter()
    amp = dev.type == "cuda"
    for _ in _pbar(range(epochs), progress_enabled(progress), desc="pretrain", unit="epoch"):
        perm = torch.randperm(n, generator=g).to(dev)
        tot, cnt = 0.0, 0
        for start in range(0, n - 1, batch_size):
            idx = perm[start:start + batch_size]
            if idx.numel() < 2:
                continue
            x = x_all[idx]
            v1, v2 = augment_images(x, g, max_shift, noise), augment_images(x, g, max_shift, noise)
            with torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext():
                z = head(backbone(torch.cat([v1, v2])))
            loss = nt_xent_loss(z[: idx.numel()].float(), z[idx.numel():].float(), temperature)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"pre-training diverged (loss {float(loss)}); lower lr", len(losses) + 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * idx.numel()
            cnt += idx.numel()
        losses.append(tot / max(cnt, 1))
    backbone.eval()
    path = None
    if save_to is not None:
        from .backbone import save_backbone_weights

        path = str(save_backbone_weights(backbone, save_to))
    return {"loss": losses, "time": time.perf_counter() - t0, "path": path}
