r"""Inductive prediction for new images through the bank: :func:`predict`.

Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md).
"""
from __future__ import annotations

import torch
from torch import nn

from ..estimators import ESTIMATORS, get_spec, rowwise_names
from ..utils import check_k
from ._candidates import candidate_subgraph, check_candidates, is_selection
from ._subgraph import computation_subgraph, subgraph_log_probs
from .._checks import check_int
from ._table import FeatureBank, _check_images


def _check_finite_rows(x: torch.Tensor, name: str, fix: str, offset: int = 0) -> None:
    """Raise ``ValueError`` naming the first rows (images) of ``x`` that hold NaN/Inf."""
    bad = ~torch.isfinite(x.detach().reshape(x.shape[0], -1)).all(1)
    if bool(bad.any()):
        rows = (torch.nonzero(bad).flatten() + offset).tolist()
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        raise ValueError(f"{name} holds NaN/Inf values in {len(rows)} image(s) (index {shown} of new_images); {fix}")


def bank_estimator(model, candidates: int | None = None) -> str:
    """The estimator name of ``model`` if the bank engine can run it (a row-wise estimator, or a selection
    estimator of chapter 09 when ``candidates`` = k′ is given; ``symmetric=False``, ``exclude_self=True``),
    else a ``ValueError`` saying what to change.

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md).
    """
    if getattr(model, "symmetric", False):
        raise ValueError("a symmetric graph (symmetric=True) has in-edges from every node that chose i, which a "
                         "batch cannot see without a search over all N; build the model with symmetric=False")
    if not getattr(model, "exclude_self", True):
        raise ValueError("the bank engine needs exclude_self=True (a node is not its own neighbour)")
    name = model.estimator_name
    if name in ESTIMATORS and get_spec(name).rowwise:
        return name
    if candidates is not None and is_selection(name):
        return name
    if is_selection(name):
        raise ValueError(f"estimator {name!r} is not supported by the bank engine without candidates (it needs a "
                         f"dense N x N selection); pass candidates=k' (--candidates K', k < k' < N, e.g. 4k) to run "
                         f"it on k' candidates per row, or use one of {list(rowwise_names())}")
    raise ValueError(f"estimator {name!r} is not supported by the bank engine (it needs a dense "
                     f"N x N selection); use one of {list(rowwise_names())}")


@torch.no_grad()
def predict(model: nn.Module, new_images: torch.Tensor, bank: FeatureBank, *, batch_size: int = 256,
            chunk_size: int = 4096, bank_chunk: int | None = None, candidates: int | None = None) -> torch.Tensor:
    r"""Inductive prediction: log-probabilities of images the model never saw, without retraining.

    .. math::
        f = f_\theta(x_\text{new}),\quad \mathcal N_k(f) = \operatorname{top-k}_j \hat f\cdot\hat B_j,
        \quad \log p = \mathrm{GCN}\big(\text{2-hop subgraph of } \{x_\text{new}\} \cup B\big)

    Each new image is embedded (eval mode), finds its k neighbours in the bank, and the GCN runs
    on the :func:`computation_subgraph` of ``batch_size`` new images at a time: the new nodes,
    their neighbours, and the neighbours' own neighbours, all taken from the bank. The new images
    are not candidates for the bank nodes' rows (and not for each other), so the answer for one
    image does not depend on which others are predicted with it.

    Args:
        model: a trained :class:`~bgcn.model.EndToEnd` (estimator in :data:`BANK_ESTIMATORS`,
            ``symmetric=False``).
        new_images: (M, C_in, H, W).
        bank: a filled :class:`FeatureBank` of the training images (same backbone).
        batch_size: new images per subgraph; chunk_size, bank_chunk: see :meth:`FeatureBank.search`.
        candidates: k′ for a model with a selection estimator of chapter 09: each new image's k′
            most similar bank rows are its candidates and the estimator (no grad: the sampling ones
            give their mode) weights them (:func:`candidate_subgraph`); k < k′ ≤ N.

    Shapes:
        - new_images: (M, C_in, H, W)
        - output: (M, C) log-probabilities

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md).
    """
    if not isinstance(bank, FeatureBank):
        raise TypeError(f"bank must be a bgcn.bank.FeatureBank, got {type(bank).__name__}")
    if not bank.filled:
        raise ValueError("the bank is empty; fill it first with bank.fill(model, train_images)")
    new_images = _check_images(new_images, "new_images")
    _check_finite_rows(new_images, "new_images", "images with NaN/Inf pixels have no prediction; drop or repair them")
    batch_size = check_int(batch_size, "batch_size")
    est = bank_estimator(model, candidates)
    check_k(model.k, bank.num_nodes, exclude_self=True)
    use_candidates = candidates is not None and is_selection(est) and model.use_graph_weights
    if candidates is not None:
        check_candidates(candidates, model.k, bank.num_nodes + 1)
    was = model.training
    model.eval()
    try:
        outs = []
        for start in range(0, new_images.shape[0], batch_size):
            x = new_images[start:start + batch_size].to(bank.device)
            f = model.features(x)
            if f.dtype != bank.dtype:
                f = f.to(bank.dtype)
            _check_finite_rows(f, f"the backbone's features of new_images[{start}:{start + x.shape[0]}]",
                               "the images are finite, so the backbone itself diverged", offset=start)
            if use_candidates:
                sub = candidate_subgraph(bank, f, model.k, candidates, estimator=est, tau=model.tau,
                                         estimator_kw=model.estimator_kw, chunk_size=chunk_size,
                                         bank_chunk=bank_chunk)
            else:
                sub = computation_subgraph(bank, f, model.k, estimator=est, tau=model.tau,
                                           use_weights=model.use_graph_weights, chunk_size=chunk_size,
                                           bank_chunk=bank_chunk)
            outs.append(subgraph_log_probs(model, sub))
    finally:
        model.train(was)
    return torch.cat(outs)
