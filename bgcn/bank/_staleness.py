r"""How stale a bank is: its kNN graph against the graph of fresh features.

During an epoch the extractor moves after every step, and row :math:`i` of the bank is as old as
the steps taken since image :math:`i`'s batch. The graph built from such a bank is compared with
the one of fresh features :math:`F = f_\theta(X)` of the current extractor, row by row:

.. math::
    \text{recall@}k = \frac{1}{Nk}\sum_{i=1}^N \big|\mathcal N_k^B(i)\cap\mathcal N_k^F(i)\big|,
    \qquad \text{drift}_i = \frac{\lVert B_i - F_i\rVert}{\lVert F_i\rVert}.

A recall of 1 is a fresh graph. ``benchmarks/bench_staleness.py`` records these after every epoch.

Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
"""
from __future__ import annotations

import torch
from torch import nn

from ._table import FeatureBank

__all__ = ["bank_staleness"]


@torch.no_grad()
def bank_staleness(model: nn.Module, bank: FeatureBank, images: torch.Tensor, k: int, chunk_size: int = 4096,
                   embed_batch_size: int = 512) -> dict:
    r"""Recall@k of ``bank``'s kNN graph against the fresh one of ``model``'s extractor, and the drift of its rows.

    ``model`` is an ``EndToEnd`` or a backbone; the fresh features are one no-grad pass over
    ``images`` (:meth:`FeatureBank.from_backbone`), and both graphs come from the exact search
    (each node excluded from its own list). Returns ``{"recall", "recall_min_row", "rows_exact",
    "drift_mean", "drift_median", "drift_max"}``: the mean recall over the rows, the worst row's,
    the share of rows whose k neighbours are all right, and statistics of the relative drift.

    Shapes: bank.features (N, D); images (N, C_in, H, W) -> floats

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    fresh = FeatureBank.from_backbone(model, images, embed_batch_size, bank.device)
    if fresh.num_nodes != bank.num_nodes:
        raise ValueError(f"images has {fresh.num_nodes} images but the bank {bank.num_nodes} rows; give the images "
                         "the bank was filled from")
    ids = torch.arange(bank.num_nodes, device=bank.device)
    idx_bank = bank.search(bank.features, k, exclude=ids, chunk_size=chunk_size)
    idx_fresh = fresh.search(fresh.features, k, exclude=ids, chunk_size=chunk_size)
    rec = (idx_bank.unsqueeze(2) == idx_fresh.unsqueeze(1)).any(2).double().sum(1) / k
    f = fresh.features.double()
    drift = (bank.features.double() - f).norm(dim=1) / f.norm(dim=1).clamp_min(1e-12)
    return {"recall": float(rec.mean()), "recall_min_row": float(rec.min()),
            "rows_exact": float((rec == 1).double().mean()),
            "drift_mean": float(drift.mean()), "drift_median": float(drift.median()), "drift_max": float(drift.max())}
