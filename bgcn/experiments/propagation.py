r"""The field's graph baselines without training: Laplace and Poisson learning on a kNN graph of features.

:func:`propagate_labels` builds graphlearning's self-tuning Gaussian kNN graph (Calder et al.'s
``graphlearning`` package, whose solvers a well-kept library already implements) and solves for a
class a node; it is the ``laplace`` and ``poisson`` rows of :mod:`bgcn.experiments.field` and the
first baseline of chapter 14's own images.

Taught in: chapter 14 (chapters/14_own_images.md).
"""
from __future__ import annotations

import numpy as np
import torch

from .._checks import check_choice, check_int

__all__ = ["propagate_labels"]


def _knn(x: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances) of each point's k nearest neighbours, itself first (graphlearning's format)."""
    from sklearn.neighbors import NearestNeighbors

    xs = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12) if metric == "angular" else x
    dist, ind = NearestNeighbors(n_neighbors=k + 1).fit(xs).kneighbors(xs)
    return ind, dist


def propagate_labels(features, labels, train_mask, k: int = 10, metric: str = "angular",
                     method: str = "laplace") -> torch.Tensor:
    r"""Laplace (or Poisson) learning on a kNN graph of ``features``: a class for every node from the training labels.

    The graph is graphlearning's self-tuning Gaussian kNN graph (the ``laplace`` and ``poisson``
    rows' graph): each node's ``k`` nearest points, itself counted (graphlearning's convention, so
    k − 1 others), by Euclidean distance (``metric="euclidean"``) or by the Euclidean distance of
    the unit-normalised rows (``"angular"``, the cosine ranking of the book's kNN graph), weighted
    :math:`w_{ij} = \exp(-4\,d_{ij}^2 / d_k(i)^2)` with :math:`d_k(i)` the distance to the farthest
    of them, then symmetrised, :math:`(W + W^\top)/2`. Laplace learning (Zhu,
    Ghahramani, Lafferty 2003) predicts :math:`\hat y_i = \arg\max_c u_{ic}` for the harmonic
    :math:`u` (:math:`(Lu)_i = 0` off the training nodes, :math:`u_i` = the one-hot label on them);
    Poisson learning (Calder et al. 2020, ``method="poisson"``) puts the labels in as sources
    instead, which keeps the solution from flattening with very few labels. Only
    ``labels[train_mask]`` is read: the other labels may be anything. No training, no seed: the
    same graph and labels give the same prediction.

    Shapes:
        features: (N, D), or images (N, C, H, W) (flattened); labels, train_mask: (N,)
        returns: (N,) long, the predicted class of every node

    Taught in: chapter 14 (chapters/14_own_images.md)
    """
    import graphlearning as gl

    check_choice(method, "method", ("laplace", "poisson"))
    check_choice(metric, "metric", ("euclidean", "angular"))
    k = check_int(k, "k", 1)
    x = torch.as_tensor(features).detach().cpu()
    x = x.reshape(x.shape[0], -1).double().numpy()
    y = torch.as_tensor(labels).detach().cpu().numpy()
    tr = torch.as_tensor(train_mask).detach().cpu().numpy().astype(bool)
    if not (len(y) == len(tr) == len(x)):
        raise ValueError(f"features, labels and train_mask need one entry a node, got {len(x)}, {len(y)}, "
                         f"{len(tr)}")
    if k >= len(x):
        raise ValueError(f"k={k} needs more than k nodes, got {len(x)}; use a smaller k")
    if not tr.any():
        raise ValueError("train_mask selects no node: Laplace learning needs at least one label a class")
    ind, dist = _knn(x, k, metric)
    w = gl.weightmatrix.knn(None, k, knn_data=(ind, dist))
    train_ind = np.flatnonzero(tr)
    pred = getattr(gl.ssl, method)(w).fit_predict(train_ind, y[train_ind])
    return torch.as_tensor(np.asarray(pred), dtype=torch.long)
