r"""Shared pieces of the selection estimators: the deterministic top-k mask, the row scale, argument helpers.

Taught in: chapter 09 (chapters/09_estimators_1_softmax.md).
"""
from __future__ import annotations

import torch

from .._checks import check_k, check_tau, check_tensor
from ..similarity import mask_diagonal
from ._registry import Selection


def topk_indices(theta: torch.Tensor, k: int) -> torch.Tensor:
    r"""Indices of the k largest entries of every row, by decreasing score, ties to the lower index.

    ``torch.topk`` leaves the order of tied entries unspecified (and it differs between devices);
    this helper makes the *set* and the order deterministic: an entry equal to the k-th largest
    value is kept only if fewer than k entries are strictly larger and it is among the lowest
    indices of its tie. ``-inf`` entries (masked candidates) are chosen last.

    Shapes:
        - theta: (N, M) or (M,)
        - output: (N, k) or (k,) long

    Taught in: chapter 09 (chapters/09_estimators_1_softmax.md).
    """
    return _topk_indices_mask(theta, k)[0]


def topk_mask(theta: torch.Tensor, k: int) -> torch.Tensor:
    r"""Hard k-hot rows :math:`\operatorname{topk}({z}) = \arg\max_{y\in\{0,1\}^M, \sum y = k}\langle{z},y\rangle`.

    Ties are broken towards the lower index (see :func:`topk_indices`), so every row has exactly k
    ones (the ``theta >= kth_value`` threshold of the reference notebooks can give more than k).
    No gradient: the result is piecewise constant in ``theta``.

    Shapes:
        - theta: (N, M) or (M,)
        - output: same shape and dtype as theta, entries in {0, 1}, each row sums to k

    Taught in: chapter 09 (chapters/09_estimators_1_softmax.md).
    """
    return _topk_indices_mask(theta, k)[1]


def _topk_indices_mask(theta: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(theta, torch.Tensor) or theta.dim() not in (1, 2):
        raise ValueError("theta must be a 1-D (M,) or 2-D (N, M) tensor of scores")
    squeeze = theta.dim() == 1
    t = theta.detach().unsqueeze(0) if squeeze else theta.detach()
    k = check_k(k, t.shape[-1])
    if bool(torch.isnan(t).any()):
        raise ValueError("theta contains NaN; top-k of a NaN score is undefined (check the scores and the loss gradient)")
    n_rows, m_cols = t.shape
    kk = min(k + 1, m_cols)
    top = torch.topk(t, kk, dim=-1)
    idx = top.indices[:, :k]
    # fast path: the k-th and (k+1)-th values differ in every row, so torch.topk's *set* is the unique
    # answer; only the order of tied values inside the set is unspecified: sort by (value desc, index asc)
    tied = (top.values[:, k - 1] == top.values[:, k]) if kk > k else torch.zeros(n_rows, dtype=torch.bool,
                                                                                  device=t.device)
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        tr = t[rows]
        kth = top.values[rows, k - 1:k]
        gt = tr > kth
        eq = tr == kth
        need = k - gt.sum(-1, keepdim=True)                                  # how many tied entries to keep
        keep = gt | (eq & (torch.cumsum(eq.to(torch.int32), dim=-1) <= need))  # lowest indices first
        idx = idx.clone()
        idx[rows] = keep.nonzero(as_tuple=False)[:, 1].reshape(rows.numel(), k)
    idx = idx.sort(dim=-1).values                                            # index ascending ...
    order = torch.sort(t.gather(-1, idx), dim=-1, descending=True, stable=True).indices
    idx = idx.gather(-1, order)                                              # ... then value descending (stable)
    mask = torch.zeros_like(t, dtype=theta.dtype).scatter_(-1, idx, 1.0)
    if squeeze:
        return idx[0], mask[0]
    return idx, mask


def row_std(theta: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    r"""Per-row standard deviation over the finite entries (masked ``-inf`` candidates ignored), no gradient.

    :math:`s_i = \sqrt{\tfrac1{n_i}\sum_{j\,:\,{z}_{ij}>-\infty}({z}_{ij}-\bar{z}_i)^2}`, clamped
    below by ``eps`` (a constant row would otherwise give 0). This is the unit in which the default
    hyper-parameters of the estimators are expressed.

    Shapes:
        - theta: (N, M)
        - output: (N, 1)

    Taught in: chapter 09 (chapters/09_estimators_2_deterministic.md).
    """
    t = theta.detach()
    valid = torch.isfinite(t)
    n = valid.sum(-1, keepdim=True).clamp_min(1)
    tv = torch.where(valid, t, torch.zeros_like(t))
    mean = tv.sum(-1, keepdim=True) / n
    var = (torch.where(valid, t - mean, torch.zeros_like(t)) ** 2).sum(-1, keepdim=True) / n
    return var.sqrt().clamp_min(eps)


def _row_rms(g: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    gv = torch.where(valid, g, torch.zeros_like(g))
    n = valid.sum(-1, keepdim=True).clamp_min(1)
    return ((gv ** 2).sum(-1, keepdim=True) / n).sqrt()


def _safe_rms(g: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Row rms of g, with 1 where the row of g is exactly zero (then λ·g = 0 and the gradient is 0, never NaN)."""
    rms = _row_rms(g, valid)
    return torch.where(rms > 0, rms, torch.ones_like(rms))


def _do_sample(sample: bool | None) -> bool:
    """``sample=None``: sample exactly when autograd is recording (training), not under ``torch.no_grad()``."""
    return torch.is_grad_enabled() if sample is None else bool(sample)


def _prepare_theta(scores: torch.Tensor, k: int, tau: float, exclude_self: bool) -> tuple[torch.Tensor, int]:
    check_tensor(scores, "scores", ndim=2)
    k = check_k(k, scores.shape[-1], exclude_self=exclude_self)
    tau = check_tau(tau)
    theta = scores / tau
    if exclude_self:
        theta = mask_diagonal(theta)
    return theta, k


def _selection(dense: torch.Tensor, idx: torch.Tensor) -> Selection:
    return Selection(idx, dense.gather(-1, idx), dense)
