r"""Training: frozen, end-to-end through the node features, end-to-end through the graph.

One *epoch* of :func:`train` is one full-batch step: all N images form the kNN graph at once
(transductive — the graph spans the labelled *and* the unlabelled images; the loss sees the
labelled ones only), then one evaluation pass records accuracies, the graph and the gradient norms.

.. math::
    L = -\frac{1}{|M_\text{train}|}\sum_{i\in M_\text{train}} \log p_{i, y_i},
    \qquad \theta \leftarrow \text{AdamW}(\theta, \nabla_\theta L)

The parts (timm's layout: private modules behind this public one):

- ``_result``: :class:`TrainingDiverged`, :class:`NonFiniteImages`, :class:`History`,
  :class:`TrainResult`, :func:`accuracy`, :func:`load_metrics` (a run's ``metrics.json``);
- ``_checkpoint``: :func:`save_checkpoint`, :func:`load_checkpoint`, random states, graphs stored apart;
- ``_loop``: the loop both engines share (selection, resume, divergence, history, plug-ins);
- ``_fullbatch``: the full-batch engine and :func:`train`;
- ``_pretrain``: :func:`pretrain_backbone` (SimCLR-lite, so that "frozen" is not "random");
- ``_checks``, ``_progress``: the data-argument checks, the progress bar.

``bgcn.train`` is both this module and, called, :func:`train` (see ``bgcn/__init__.py``).

Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
"""
from __future__ import annotations

from ._config import ENGINES, MAX_LR, TrainConfig
from ._checkpoint import CHECKPOINT_FORMAT, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ._fullbatch import FullBatchEngine, ParamPathNorms, train
from ._checks import (check_analysis_labels, check_finite_images, check_images, check_labels, check_masks,
                      check_model, default_mode)
from ._loop import (Engine, GraphSnapshots, Homophily, LoopSettings, Plugin, analysis_plugins,
                    deterministic_algorithms, make_optimizer, merge_extra, restore_state, run, snapshot, train_with)
from ._pretrain import augment_images, nt_xent_loss, pretrain_backbone
from ._progress import progress_enabled
from ._result import History, NonFiniteImages, TrainingDiverged, TrainResult, accuracy, load_metrics


__all__ = [
    "TrainConfig",
    "ENGINES",
    "MAX_LR",
    "TrainingDiverged",
    "NonFiniteImages",
    "History",
    "TrainResult",
    "train",
    "accuracy",
    "load_metrics",
    "save_checkpoint",
    "load_checkpoint",
    "pretrain_backbone",
    "nt_xent_loss",
    "augment_images",
    "progress_enabled",
    "CHECKPOINT_FORMAT",
    "rng_state",
    "set_rng_state",
    "run",
    "train_with",
    "Engine",
    "analysis_plugins",
    "LoopSettings",
    "Plugin",
    "Homophily",
    "GraphSnapshots",
    "FullBatchEngine",
    "ParamPathNorms",
    "snapshot",
    "make_optimizer",
    "deterministic_algorithms",
    "merge_extra",
    "restore_state",
    "check_model",
    "default_mode",
    "check_images",
    "check_finite_images",
    "check_labels",
    "check_masks",
    "check_analysis_labels",
]
