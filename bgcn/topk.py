r"""Top-k selection: hard top-k, the selection matrix, seed 000's soft top-k, and the estimator registry.

An *estimator* turns a row-wise score matrix :math:`S` (N, M) into a :class:`Selection`: for every
row i the indices of k chosen columns and a weight per chosen column, and (for estimators that learn
*which* columns to choose) a dense (N, M) mask through which the loss gradient reaches every score.

Estimators registered here (chapters 02 and 06):

======================  ====================================================  ==============================================
name                    weights :math:`\tilde w_{ij}` for j in top-k          gradient reaching :math:`S`
======================  ====================================================  ==============================================
``"hard"``              1                                                     none
``"values"``            :math:`\max(S_{ij}, 0)`                               through the selection matrix (chapter 02)
``"softmax"``           :math:`\mathrm{softmax}(S_i/\tau)_j`, full row            softmax Jacobian, all N entries of the row
``"masked_softmax"``    softmax over the k kept scores only                   only the k kept entries of the row
======================  ====================================================  ==============================================

Further estimators (straight-through, identity with projection, I-MLE, ...) register themselves from
:mod:`bgcn.estimators` (chapter 09).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

import torch

from .utils import check_k, check_tau, check_tensor

__all__ = [
    "Selection",
    "ESTIMATORS",
    "register_estimator",
    "get_estimator",
    "topk_selection_matrix",
    "hard_topk",
    "soft_topk",
    "mask_diagonal",
    "softmax_jacobian",
    "effective_neighbours",
    "topk_mass",
]


@dataclass
class Selection:
    """What an estimator returns for a score matrix with N rows and M columns.

    Attributes:
        indices: (N, k) long, the chosen columns of each row, by decreasing score.
        weights: (N, k) float, the weight of each chosen column (differentiable or not).
        dense: (N, M) float or ``None``: a dense mask whose gradient is the estimator's gradient for
            *every* score, chosen or not (selection estimators, chapter 09). ``None`` when the
            estimator only re-weights the hard top-k.

    Shapes:
        - indices, weights: (N, k)
        - dense: (N, M) or None

    Taught in: chapter 06 (chapters/06_rankings_to_graph.md); ``dense`` in chapter 09.
    """

    indices: torch.Tensor
    weights: torch.Tensor
    dense: torch.Tensor | None = None


EstimatorFn = Callable[..., Selection]
ESTIMATORS: dict[str, EstimatorFn] = {}


def register_estimator(name: str, needs_dense: bool = False, stochastic: bool = False):
    """Decorator adding an estimator to :data:`ESTIMATORS` under ``name``.

    The decorated callable has the signature
    ``fn(scores, k, tau=1.0, *, exclude_self=False, generator=None, **kw) -> Selection``.
    ``needs_dense=True`` marks estimators whose gradient needs the loss gradient for non-edges too,
    i.e. a dense adjacency path in the GCN; ``stochastic=True`` marks those that sample.

    Shapes: the estimator maps scores (N, M) to a :class:`Selection` with indices, weights (N, k).

    Taught in: chapter 09 (chapters/09_estimators.md).
    """

    def deco(fn: EstimatorFn) -> EstimatorFn:
        fn.estimator_name = name  # type: ignore[attr-defined]
        fn.needs_dense = needs_dense  # type: ignore[attr-defined]
        fn.stochastic = stochastic  # type: ignore[attr-defined]
        ESTIMATORS[name] = fn
        return fn

    return deco


def get_estimator(name: str | EstimatorFn) -> EstimatorFn:
    """Look an estimator up by name (a callable is returned unchanged); unknown names list the valid ones.

    Shapes: none (returns the estimator callable).

    Taught in: chapter 06 (chapters/06_rankings_to_graph.md) and chapter 09 (chapters/09_estimators.md).
    """
    if callable(name):
        return name
    if not isinstance(name, str):
        raise TypeError(f"estimator must be a name (str) or a callable, got {type(name).__name__}")
    if name not in ESTIMATORS:
        close = difflib.get_close_matches(name, list(ESTIMATORS), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown estimator={name!r}; valid names are {sorted(ESTIMATORS)}.{hint}")
    return ESTIMATORS[name]


def _check_scores(scores: torch.Tensor, name: str = "scores") -> torch.Tensor:
    return check_tensor(scores, name, ndim=(1, 2))


def mask_diagonal(scores: torch.Tensor, value: float = float("-inf")) -> torch.Tensor:
    """Return a copy of a square-ish (N, M) score matrix with entries (i, i) set to ``value``.

    Used to exclude self-similarity (:math:`S_{ii}=1`, every node is its own top-1). Out of place,
    so autograd still flows to the other entries.

    Shapes:
        - scores: (N, M) with N <= M
        - output: (N, M)

    Taught in: chapter 06 (chapters/06_rankings_to_graph.md).
    """
    n = scores.shape[0]
    eye = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    idx = torch.arange(min(n, scores.shape[-1]), device=scores.device)
    eye[idx, idx] = True
    return scores.masked_fill(eye, value)


def topk_selection_matrix(y: torch.Tensor, k: int) -> torch.Tensor:
    r"""The 0/1 selection matrix :math:`P` of hard top-k (seed 001).

    :math:`P \in \{0,1\}^{k\times n}` has :math:`P_{m, j} = 1` iff j is the m-th largest entry of
    :math:`y`, so that :math:`P y = \operatorname{topk}(y, k).\text{values}`. Locally (while the order
    does not change) top-k *is* this linear map, hence
    :math:`\partial\,\operatorname{topk}(y)/\partial y = P`: values carry gradient. But :math:`P`
    itself depends on :math:`y` (it is piecewise constant in :math:`y`), so top-k is only piecewise
    linear, and the indices carry no gradient at all. :math:`P` is returned without gradient.

    Shapes:
        - y: (n,) or (N, n) for a batch of rows
        - output: (k, n) or (N, k, n), same dtype as y

    Taught in: chapter 02 (chapters/02_hard_topk.md).
    """
    _check_scores(y, "y")
    k = check_k(k, y.shape[-1])
    idx = torch.topk(y.detach(), k, dim=-1).indices
    eye = torch.eye(y.shape[-1], dtype=y.dtype, device=y.device)
    return eye[idx]


def hard_topk(scores: torch.Tensor, k: int, exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Row-wise hard top-k: ``(values, indices)`` of the k largest scores of each row.

    ``values`` carry gradient (the selection matrix, chapter 02); ``indices`` are integers and carry
    none. With ``exclude_self`` the diagonal is masked first (N <= M; k <= M - 1).

    Shapes:
        - scores: (n,) or (N, M)
        - values, indices: (k,) or (N, k)

    Taught in: chapter 02 (chapters/02_hard_topk.md).
    """
    _check_scores(scores)
    if exclude_self and scores.dim() != 2:
        raise ValueError("exclude_self=True needs a 2-D scores matrix (N, M); a single row has no diagonal")
    k = check_k(k, scores.shape[-1], exclude_self=exclude_self)
    s = mask_diagonal(scores) if exclude_self else scores
    out = torch.topk(s, k, dim=-1)
    return out.values, out.indices


def soft_topk(scores: torch.Tensor, k: int, tau: float = 1.0, exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Seed 000's soft top-k, eqs. (9)–(11): softmax over the whole row, gathered at the hard top-k.

    .. math::
        w_i = \mathrm{softmax}(S_i/\tau), \qquad
        \mathcal N_k(i) = \operatorname{topk}(S_i, k), \qquad
        \tilde w_{ij} = w_{ij}\ \text{for}\ j \in \mathcal N_k(i)

    The weights are differentiable with respect to every entry of the row (through the softmax
    normaliser, eq. (6)), but the *choice* :math:`\mathcal N_k(i)` is hard. The k weights do not sum
    to one: at :math:`\tau = 1` on cosine similarities they hold a tiny fraction of the mass when the
    row is long (chapter 05). With ``exclude_self`` the diagonal is removed from both the softmax and
    the ranking.

    Args:
        scores: :math:`S`, shape (n,) or (N, M).
        k: neighbours per row, 1 <= k <= M (M - 1 with ``exclude_self``).
        tau: temperature :math:`\tau > 0`.

    Returns:
        ``(weights, indices)``, each (k,) or (N, k); indices sorted by decreasing score.

    Shapes:
        - scores: (n,) or (N, M)
        - weights, indices: (k,) or (N, k)

    Taught in: chapter 06 (chapters/06_rankings_to_graph.md); the softmax in chapters 04 and 05.
    """
    _check_scores(scores)
    tau = check_tau(tau)
    if exclude_self and scores.dim() != 2:
        raise ValueError("exclude_self=True needs a 2-D scores matrix (N, M); a single row has no diagonal")
    k = check_k(k, scores.shape[-1], exclude_self=exclude_self)
    s = mask_diagonal(scores) if exclude_self else scores
    w = torch.softmax(s / tau, dim=-1)
    idx = torch.topk(s.detach(), k, dim=-1).indices
    return w.gather(-1, idx), idx


def softmax_jacobian(w: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    r"""The softmax Jacobian of seed 000 eq. (6) from the softmax output :math:`w = \mathrm{softmax}(s/\tau)`:

    .. math::
        \frac{\partial w_j}{\partial s_l} = \frac{1}{\tau}\, w_j(\delta_{jl} - w_l),
        \qquad J = \frac{1}{\tau}\left(\operatorname{diag}(w) - w w^\top\right)

    J is symmetric, its rows sum to zero (shift invariance) and it is positive semi-definite.

    Shapes:
        - w: (n,) or (N, n)
        - output: (n, n) or (N, n, n)

    Taught in: chapter 04 (chapters/04_softmax_jacobian.md).
    """
    check_tensor(w, "w", ndim=(1, 2))
    tau = check_tau(tau)
    return (torch.diag_embed(w) - w.unsqueeze(-1) * w.unsqueeze(-2)) / tau


def effective_neighbours(w: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    r"""Effective number of neighbours :math:`\exp(H(w))`, :math:`H(w) = -\sum_j w_j \log w_j`.

    Equals n for a uniform row and 1 for a one-hot row. Rows must sum to one.

    Shapes:
        - w: (n,) or (N, n)
        - output: () or (N,)

    Taught in: chapter 05 (chapters/05_temperature.md).
    """
    check_tensor(w, "w", ndim=(1, 2))
    ent = -(w * torch.log(w.clamp_min(eps))).sum(-1)
    return torch.exp(ent)


def topk_mass(w: torch.Tensor, k: int) -> torch.Tensor:
    """Share of a probability row held by its k largest entries.

    Shapes:
        - w: (n,) or (N, n)
        - output: () or (N,)

    Taught in: chapter 05 (chapters/05_temperature.md).
    """
    check_tensor(w, "w", ndim=(1, 2))
    k = check_k(k, w.shape[-1])
    return torch.topk(w, k, dim=-1).values.sum(-1)


# --------------------------------------------------------------------------- estimators

def _prep(scores: torch.Tensor, k: int, exclude_self: bool) -> tuple[torch.Tensor, int]:
    check_tensor(scores, "scores", ndim=2)
    k = check_k(k, scores.shape[-1], exclude_self=exclude_self)
    s = mask_diagonal(scores) if exclude_self else scores
    return s, k


@register_estimator("hard")
def hard_estimator(scores: torch.Tensor, k: int, tau: float = 1.0, *, exclude_self: bool = False,
                   generator: torch.Generator | None = None) -> Selection:
    r"""Hard top-k with unit weights: :math:`\tilde w_{ij} = 1`. No gradient reaches the scores.

    Shapes: scores (N, M) -> indices, weights (N, k).

    Taught in: chapter 02 (chapters/02_hard_topk.md).
    """
    s, k = _prep(scores, k, exclude_self)
    idx = torch.topk(s.detach(), k, dim=-1).indices
    return Selection(idx, torch.ones(idx.shape, dtype=scores.dtype, device=scores.device))


@register_estimator("values")
def values_estimator(scores: torch.Tensor, k: int, tau: float = 1.0, *, exclude_self: bool = False,
                     generator: torch.Generator | None = None) -> Selection:
    r"""The selected similarities as weights: :math:`\tilde w_{ij} = \max(S_{ij}, 0)`, j in top-k.

    Gradient reaches the k selected scores of each row through the selection matrix (chapter 02),
    as in SLAPS/IDGL-style masked similarity graphs; non-selected scores get exactly zero. Negative
    similarities are clipped to 0 so that GCN degrees stay positive.

    Shapes: scores (N, M) -> indices, weights (N, k).

    Taught in: chapter 02 (chapters/02_hard_topk.md) and chapter 06.
    """
    s, k = _prep(scores, k, exclude_self)
    vals, idx = torch.topk(s, k, dim=-1)
    return Selection(idx, vals.clamp_min(0.0))


@register_estimator("softmax")
def softmax_estimator(scores: torch.Tensor, k: int, tau: float = 1.0, *, exclude_self: bool = False,
                      generator: torch.Generator | None = None) -> Selection:
    r"""Seed 000's soft top-k as an estimator (see :func:`soft_topk`, eqs. (9)–(11)).

    Shapes: scores (N, M) -> indices, weights (N, k).

    Taught in: chapter 06 (chapters/06_rankings_to_graph.md).
    """
    check_tensor(scores, "scores", ndim=2)
    w, idx = soft_topk(scores, k, tau, exclude_self=exclude_self)
    return Selection(idx, w)


@register_estimator("masked_softmax")
def masked_softmax_estimator(scores: torch.Tensor, k: int, tau: float = 1.0, *, exclude_self: bool = False,
                             generator: torch.Generator | None = None) -> Selection:
    r"""Softmax over the k kept scores only:

    .. math::
        \tilde w_{ij} = \frac{\exp(S_{ij}/\tau)}{\sum_{l\in\mathcal N_k(i)} \exp(S_{il}/\tau)}, \quad j\in\mathcal N_k(i)

    Each row's weights sum to one. This equals seed 000's weights renormalised over the k kept
    neighbours, and then the N - k unselected scores get *exactly* zero gradient.

    Shapes: scores (N, M) -> indices, weights (N, k).

    Taught in: chapter 06 (chapters/06_rankings_to_graph.md).
    """
    tau = check_tau(tau)
    s, k = _prep(scores, k, exclude_self)
    vals, idx = torch.topk(s, k, dim=-1)
    return Selection(idx, torch.softmax(vals / tau, dim=-1))
