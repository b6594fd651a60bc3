"""What a training run returns: :class:`History`, :class:`TrainResult`, the errors, :func:`accuracy`;
and :func:`load_metrics`, which reads back the ``metrics.json`` a ``python -m bgcn train`` run wrote.

Shared by both engines (:func:`bgcn.train.train`, :func:`bgcn.minibatch.train_minibatch`).

Taught in: chapter 08 (chapters/08_end_to_end_2_tau_n.md).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..model import EndToEnd
from ..utils import NotFoundError

__all__ = ["TrainingDiverged", "NonFiniteImages", "History", "TrainResult", "accuracy", "load_metrics"]


class TrainingDiverged(RuntimeError):
    """The loss (or the features) became NaN/Inf; the last good checkpoint is left untouched.

    Attributes: ``epoch`` (the epoch that diverged), ``checkpoint`` (path of the last good one or None).

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_2_tau_n.md).
    """

    def __init__(self, message: str, epoch: int, checkpoint: str | None = None):
        super().__init__(message)
        self.epoch = epoch
        self.checkpoint = checkpoint


class NonFiniteImages(TrainingDiverged, ValueError):
    """Some input images hold NaN/Inf values: bad input, refused before any training step.

    The same error on both engines (:func:`bgcn.train.train` and
    :func:`bgcn.minibatch.train_minibatch`). It is a ``ValueError`` (bad input); it is also a
    :class:`TrainingDiverged` (``epoch`` 0, no checkpoint) because the mini-batch engine reported
    it as one before, and code written against that keeps working.

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_2_tau_n.md).
    """

    def __init__(self, message: str):
        super().__init__(message, 0, None)


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

    Taught in: chapter 08 (chapters/08_end_to_end_2_tau_n.md).
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

    Taught in: chapter 08 (chapters/08_end_to_end_2_tau_n.md).
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


def accuracy(logp: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None) -> float:
    r"""Share of nodes in ``mask`` whose arg-max class is the label: :math:`\frac1{|M|}\sum_{i\in M}[\hat y_i = y_i]`.

    Returns NaN for an empty or absent mask.

    Shapes: logp (N, C), labels (N,), mask (N,) bool -> float

    Taught in: chapter 08 (chapters/08_end_to_end_2_tau_n.md).
    """
    if mask is None or not bool(mask.any()):
        return float("nan")
    return float((logp[mask].argmax(-1) == labels[mask]).float().mean())


def load_metrics(path: str | os.PathLike) -> dict:
    """Read the ``metrics.json`` that ``python -m bgcn train`` wrote: give the file or its ``--out`` folder.

    Returns the record as written — ``command``, ``config`` (the run's settings: ``k``, ``tau``,
    ``class_names``, ``num_train``, …), ``train_config``, ``best_epoch``, ``best_val_acc``,
    ``test_acc_at_best_val`` (the number to report: the test accuracy of the epoch chosen on the
    validation labels), ``final`` (the last epoch's accuracies), ``warmup`` and
    ``gain_over_warmup`` (end-to-end runs: the GCN trained alone on the first graph, and what the
    joint epochs added to it), ``timings``, ``images_per_s``, ``peak_memory_bytes``, ``status``,
    ``versions`` — with ``history`` made a :class:`History` (``m["history"].val_acc`` is a list
    with one value an epoch; a NaN, written as JSON ``null``, is read back as ``nan``).
    Accuracies are fractions in [0, 1]. The file is plain JSON, so reading one runs no code,
    whoever wrote it (unlike a pickle or a checkpoint).

    Raises :class:`~bgcn.utils.NotFoundError` for a missing file (or a folder without
    ``metrics.json``) and ``ValueError`` for a file that is not such a record.

    Shapes: every history series is a list of length ``m["epochs_run"]``.

    Taught in: chapter 14 (chapters/14_own_images.md)
    """
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "metrics.json"
    if not p.is_file():
        raise NotFoundError(f"no metrics file at {str(p)!r}; pass the --out folder of a `python -m bgcn train` "
                            f"run (it writes OUT/metrics.json when it finishes)")
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(p)!r} is not valid JSON ({e}); it is not a metrics file a run wrote") from None
    if not isinstance(m, dict) or not isinstance(m.get("history"), dict):
        raise ValueError(f"{str(p)!r} has no 'history': it is not the metrics.json of a `python -m bgcn train` run")
    hist = {k: ([math.nan if v is None else v for v in vals] if isinstance(vals, list) else vals)
            for k, vals in m["history"].items()}
    return {**m, "history": History.from_state_dict(hist)}
