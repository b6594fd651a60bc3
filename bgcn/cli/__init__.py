r"""Command line: ``python -m bgcn train …``, ``python -m bgcn experiment …`` and ``python -m bgcn estimators …``.

``train`` trains one model (frozen, end-to-end through the features, or end-to-end through the
graph) and writes ``OUT/metrics.json`` (config, versions, seed, accuracies, timings, history) and
``OUT/checkpoint.pt`` (state dicts, ``torch.load(weights_only=True)``). ``experiment`` runs the
comparison of :mod:`bgcn.experiment` (or chapter 12's, :mod:`bgcn.experiments.real`).

Bad flags exit with status 2 and a one-line ``error: …`` naming the flag (no traceback); a run that
diverges (NaN loss) exits with status 1 and keeps its last good checkpoint.

Parts: ``_types`` (argument types and the constants behind ``auto``), ``_parser`` (the parser),
``_dataset`` (data-set flags, read from the data registry: no data set is named there),
``_backbone`` (which options a backbone gets from the images), ``_train`` (``train``), ``_main``
(the entry point and the experiment commands). Nothing in the library imports this package.

Taught in: chapter 08 (chapters/08_end_to_end_4_watching.md).
"""
from __future__ import annotations

from ..utils import versions
from ._main import main
from ._parser import DATASET_FLAGS, ENGINE_FLAGS, build_parser, train_defaults
from ._train import run_train
from ._types import (LR_BACKBONE_PRETRAINED, LR_BACKBONE_RANDOM, SEED_MAX, TAU_MIN, WARMUP_SHARE, _nonneg_float,
                     _nonneg_int, _positive_float, _positive_int, _probability, _seed, _tau)  # noqa: F401 - tests

__all__ = ["main", "build_parser", "run_train", "versions", "train_defaults", "DATASET_FLAGS", "ENGINE_FLAGS",
           "TAU_MIN", "SEED_MAX", "LR_BACKBONE_RANDOM", "LR_BACKBONE_PRETRAINED", "WARMUP_SHARE"]
