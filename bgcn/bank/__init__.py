r"""The feature bank: the latest detached feature of every image, and the graph around a batch.

Training past one batch (chapter 11) keeps an (N, D) table :math:`B` of features, one row per
image, written by a no-grad pass over all images (:meth:`FeatureBank.fill`) and then row by row
as each batch computes fresh features (:meth:`FeatureBank.update`). A batch's neighbours are
searched in it exactly (:meth:`FeatureBank.search`, chunked, like
:func:`bgcn.similarity.knn_indices`), and :func:`computation_subgraph` builds the small graph a
2-layer GCN needs to compute the batch's outputs *exactly as the full graph would*, with the
out-of-batch nodes' inputs taken from the bank (the historical-embedding idea of GNNAutoScale,
Fey et al. 2021, applied to the GCN's input features).

Memory: the bank is N·D floats (plus N·k longs with the optional neighbour lists,
:meth:`FeatureBank.fill_neighbours`); nothing else here grows with N: a search holds one
``chunk_size`` × ``bank_chunk`` block at a time (``chunk_size`` × N without ``bank_chunk``),
under ``no_grad``.

How stale the bank's graph is, as recall@k against a fresh one: :func:`bank_staleness`.

Taught in: chapter 11 (chapters/11_minibatch_1_bank.md).
"""
from __future__ import annotations

from ..estimators import rowwise_names
from ._candidates import candidate_subgraph, check_candidates, is_selection, selection_names
from ._momentum import ema_backbone, momentum_update
from ._predict import bank_estimator, predict
from ._staleness import bank_staleness
from ._subgraph import Subgraph, bank_logsumexp, computation_subgraph, subgraph_log_probs
from ._table import FeatureBank

__all__ = ["FeatureBank", "Subgraph", "computation_subgraph", "subgraph_log_probs", "predict",
           "ema_backbone", "momentum_update", "bank_staleness", "BANK_ESTIMATORS", "bank_estimator", "bank_logsumexp",
           "candidate_subgraph", "selection_names", "is_selection", "check_candidates"]

#: Estimators the bank engine supports: the row-wise ones (:func:`bgcn.estimators.rowwise_names`,
#: read from their specs when this module is imported): ``"hard"``, ``"values"``,
#: ``"masked_softmax"`` need only the k kept similarities of a row; ``"softmax"`` (seed 000) also a
#: row's log-sum-exp over all N, computed against the bank. A row-wise estimator registered later
#: is accepted too (the engine asks its spec).
BANK_ESTIMATORS = rowwise_names()

