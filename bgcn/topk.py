r"""Top-k selection: hard top-k, the selection matrix, seed 000's soft top-k, the row rule and four estimators.

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
:mod:`bgcn.estimators` (chapter 09), which also holds what an estimator is (:class:`Selection`, its
:class:`~bgcn.estimators.EstimatorSpec`, the registry); :func:`row_weights` is the one rule that turns
the k kept similarities of a row into these weights.
"""
from __future__ import annotations

import torch

from .estimators import ESTIMATORS, Selection, get_estimator, get_spec, register_estimator, rowwise_names
from .similarity import mask_diagonal
from .utils import check_k, check_tau, check_tensor

# Selection, ESTIMATORS, register_estimator, get_estimator (bgcn.estimators) and mask_diagonal
# (bgcn.similarity) stay importable from here, and are documented once, in their homes.
__all__ = [
    "row_weights",
    "topk_selection_matrix",
    "hard_topk",
    "soft_topk",
    "softmax_jacobian",
    "effective_neighbours",
    "topk_mass",
]


def _check_scores(scores: torch.Tensor, name: str = "scores") -> torch.Tensor:
    return check_tensor(scores, name, ndim=(1, 2))


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

    Taught in: chapter 06 (chapters/06_rankings_to_graph_1_edges.md); the softmax in chapters 04 and 05.
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

    Taught in: chapter 05 (chapters/05_temperature_1_weights.md).
    """
    check_tensor(w, "w", ndim=(1, 2))
    ent = -(w * torch.log(w.clamp_min(eps))).sum(-1)
    return torch.exp(ent)


def topk_mass(w: torch.Tensor, k: int) -> torch.Tensor:
    """Share of a probability row held by its k largest entries.

    Shapes:
        - w: (n,) or (N, n)
        - output: () or (N,)

    Taught in: chapter 05 (chapters/05_temperature_1_weights.md).
    """
    check_tensor(w, "w", ndim=(1, 2))
    k = check_k(k, w.shape[-1])
    return torch.topk(w, k, dim=-1).values.sum(-1)


# --------------------------------------------------------------------------- the row rule and the estimators

def _rule_hard(values: torch.Tensor, tau: float, lse: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(values).detach()


def _rule_values(values: torch.Tensor, tau: float, lse: torch.Tensor | None) -> torch.Tensor:
    return values.clamp_min(0.0)


def _rule_masked_softmax(values: torch.Tensor, tau: float, lse: torch.Tensor | None) -> torch.Tensor:
    return torch.softmax(values / tau, dim=-1)


def _rule_softmax(values: torch.Tensor, tau: float, lse: torch.Tensor | None) -> torch.Tensor:
    return torch.exp(values / tau - lse.unsqueeze(-1))


def row_weights(values: torch.Tensor, estimator: str, tau: float = 1.0, lse: torch.Tensor | None = None) -> torch.Tensor:
    r"""Edge weights of a row-wise estimator from the k kept similarities of each row (the one rule).

    ======================  ===============================================================
    ``estimator``           :math:`\tilde w_{ij},\ j\in\mathcal N_k(i)`
    ======================  ===============================================================
    ``"hard"``              1 (no gradient)
    ``"values"``            :math:`\max(S_{ij}, 0)`
    ``"masked_softmax"``    :math:`\exp(S_{ij}/\tau) / \sum_{l\in\mathcal N_k(i)} \exp(S_{il}/\tau)`
    ``"softmax"``           :math:`\exp(S_{ij}/\tau - \ell_i)`, :math:`\ell_i = \log\sum_{l} \exp(S_{il}/\tau)`
                            over the whole row (seed 000; ``lse`` = :math:`\ell`)
    ======================  ===============================================================

    Every path that builds these weights from k similarities calls it: the estimators of this
    module, :func:`bgcn.knn_graph` with ``chunk_size``, :func:`bgcn.scaling.chunked_soft_topk` and
    the bank engine (:func:`bgcn.bank.computation_subgraph`). The rule of each name is its
    :attr:`bgcn.estimators.EstimatorSpec.row_rule`; a registered row-wise estimator brings its own.

    Args:
        values: (N, k) the kept similarities :math:`S_{i,\mathcal N_k(i)}`, may require grad.
        estimator: a row-wise estimator's name (:func:`bgcn.estimators.rowwise_names`).
        tau: temperature τ > 0.
        lse: (N,) the row log-normalisers, for estimators that need them (``"softmax"``).

    Shapes:
        - values: (N, k); lse: (N,) or None
        - output: (N, k)

    Taught in: chapter 06 (chapters/06_rankings_to_graph_2_gradient.md); chunked in chapters 10 and 11.
    """
    spec = get_spec(estimator)
    if not spec.rowwise:
        raise ValueError(f"estimator {spec.name!r} has no row rule (it needs the full score rows); "
                         f"row_weights works for {list(rowwise_names())}")
    if spec.needs_normaliser and lse is None:
        raise ValueError(f"estimator {spec.name!r} needs the row log-normalisers: pass lse (N,), e.g. "
                         f"bgcn.scaling.chunked_logsumexp(features, tau)")
    return spec.row_rule(values, tau, lse)


def _prep(scores: torch.Tensor, k: int, exclude_self: bool) -> tuple[torch.Tensor, int]:
    check_tensor(scores, "scores", ndim=2)
    k = check_k(k, scores.shape[-1], exclude_self=exclude_self)
    s = mask_diagonal(scores) if exclude_self else scores
    return s, k


@register_estimator("hard", row_rule=_rule_hard)
def hard_estimator(scores: torch.Tensor, k: int, tau: float = 1.0, *, exclude_self: bool = False,
                   generator: torch.Generator | None = None) -> Selection:
    r"""Hard top-k with unit weights: :math:`\tilde w_{ij} = 1`. No gradient reaches the scores.

    Shapes: scores (N, M) -> indices, weights (N, k).

    Taught in: chapter 02 (chapters/02_hard_topk.md).
    """
    s, k = _prep(scores, k, exclude_self)
    vals, idx = torch.topk(s.detach(), k, dim=-1)
    return Selection(idx, row_weights(vals, "hard"))


@register_estimator("values", row_rule=_rule_values)
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
    return Selection(idx, row_weights(vals, "values"))


@register_estimator("softmax", row_rule=_rule_softmax, needs_normaliser=True)
def softmax_estimator(scores: torch.Tensor, k: int, tau: float = 1.0, *, exclude_self: bool = False,
                      generator: torch.Generator | None = None) -> Selection:
    r"""Seed 000's soft top-k as an estimator (see :func:`soft_topk`, eqs. (9)–(11)).

    Row-wise given the row's log-normaliser (:func:`row_weights`), which the bank engine and
    :func:`bgcn.scaling.chunked_soft_topk` compute in blocks; here the whole row is at hand.

    Shapes: scores (N, M) -> indices, weights (N, k).

    Taught in: chapter 06 (chapters/06_rankings_to_graph_2_gradient.md).
    """
    check_tensor(scores, "scores", ndim=2)
    w, idx = soft_topk(scores, k, tau, exclude_self=exclude_self)
    return Selection(idx, w)


@register_estimator("masked_softmax", row_rule=_rule_masked_softmax)
def masked_softmax_estimator(scores: torch.Tensor, k: int, tau: float = 1.0, *, exclude_self: bool = False,
                             generator: torch.Generator | None = None) -> Selection:
    r"""Softmax over the k kept scores only:

    .. math::
        \tilde w_{ij} = \frac{\exp(S_{ij}/\tau)}{\sum_{l\in\mathcal N_k(i)} \exp(S_{il}/\tau)}, \quad j\in\mathcal N_k(i)

    Each row's weights sum to one. This equals seed 000's weights renormalised over the k kept
    neighbours, and then the N - k unselected scores get *exactly* zero gradient.

    Shapes: scores (N, M) -> indices, weights (N, k).

    Taught in: chapter 06 (chapters/06_rankings_to_graph_2_gradient.md).
    """
    tau = check_tau(tau)
    s, k = _prep(scores, k, exclude_self)
    vals, idx = torch.topk(s, k, dim=-1)
    return Selection(idx, row_weights(vals, "masked_softmax", tau))
