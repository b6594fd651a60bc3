r"""Smooth relaxations of the k-hot mask: sigmoid with a threshold and the capped simplex.

Taught in: chapter 09 (chapters/09_estimators_2_deterministic.md).
"""
from __future__ import annotations

import torch

from ..utils import check_k, check_positive, check_tensor
from ._common import _prepare_theta, _selection, row_std, topk_indices
from ._registry import Selection, register_estimator


def _tau_m(theta: torch.Tensor, tau_m, tau_m_rel) -> torch.Tensor:
    if tau_m is not None:
        return torch.full((theta.shape[0], 1), check_positive(tau_m, "tau_m"), dtype=theta.dtype, device=theta.device)
    return check_positive(tau_m_rel, "tau_m_rel") * row_std(theta)


def _sigmoid_threshold(x: torch.Tensor, k: int, max_iter: int = 100) -> torch.Tensor:
    """t per row with Σ_j σ(x_j − t) = k (x already divided by τ_m; -inf entries contribute 0). No grad.

    Safeguarded Newton: start between the k-th and (k+1)-th largest x, keep a bracket [lo, hi] with
    f(lo) > 0 > f(hi), take the Newton step t + f/Σh when it stays inside, else bisect; stop when
    |Σσ − k| is at the rounding level of the row sum (usually 5–10 passes over the row).
    """
    x = x.detach()
    valid = torch.isfinite(x)
    n_valid = valid.sum(-1, keepdim=True)
    big = torch.finfo(x.dtype).max
    lo = torch.where(valid, x, torch.full_like(x, big)).amin(-1, keepdim=True) - 40.0   # Σσ ≈ n >= k
    hi = torch.where(valid, x, torch.full_like(x, -big)).amax(-1, keepdim=True) + 40.0  # Σσ ≈ 0 < k
    top = torch.topk(x, min(k + 1, x.shape[-1]), dim=-1).values
    t = 0.5 * (top[:, k - 1:k] + top[:, -1:]) if top.shape[-1] > k else lo.clone()
    t = torch.maximum(torch.minimum(t.nan_to_num(nan=0.0, neginf=-big), hi), lo)
    tol = 4.0 * torch.finfo(x.dtype).eps * n_valid.to(x.dtype)
    for _ in range(max_iter):
        m = torch.sigmoid(x - t)
        f = m.sum(-1, keepdim=True) - k
        done = f.abs() <= tol
        if bool(done.all()):
            break
        d = (m * (1 - m)).sum(-1, keepdim=True)
        lo = torch.where(f > 0, t, lo)
        hi = torch.where(f > 0, hi, t)
        tn = t + f / d.clamp_min(torch.finfo(x.dtype).tiny)
        bad = (d <= 0) | ~((tn > lo) & (tn < hi))
        tn = torch.where(bad, 0.5 * (lo + hi), tn)
        t = torch.where(done, t, tn)
    return t


class _SigmoidTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, theta, k, tau_m):
        x = theta / tau_m
        t = _sigmoid_threshold(x, k)
        m = torch.sigmoid(x - t)
        ctx.save_for_backward(m, tau_m)
        return m

    @staticmethod
    def backward(ctx, g):
        m, tau_m = ctx.saved_tensors
        h = m * (1 - m)
        hs = h.sum(-1, keepdim=True)
        hg = (h * g).sum(-1, keepdim=True)
        coef = torch.where(hs > 0, hg / hs.clamp_min(torch.finfo(h.dtype).tiny), torch.zeros_like(hs))
        grad = h / tau_m * (g - coef)
        return grad, None, None


def sigmoid_topk(theta: torch.Tensor, k: int, tau_m: float | None = None, tau_m_rel: float = 0.1) -> torch.Tensor:
    r"""Smooth top-k mask with sum k (LML-style; Amos, Koltun & Kolter, 2019, arXiv 1906.08707).

    .. math::
        m_j = \sigma\!\Big(\frac{{z}_j - t}{\tau_m}\Big),\qquad t \text{ such that } \sum_j m_j = k

    t is found per row by safeguarded Newton (bisection fallback), under ``no_grad``; the
    backward is the implicit-function closed form, with :math:`h = m(1-m)`:

    .. math::
        \nabla_{z} L = \frac{h}{\tau_m}\odot\Big(g - \frac{\langle h, g\rangle}{\sum_j h_j}\Big)

    (the derivative of t is :math:`\langle h,\cdot\rangle/\sum h`). Every entry is non-zero.
    ``-inf`` entries (masked diagonal) give :math:`m = 0` and zero gradient. τ_m → 0 gives hard
    top-k and vanishing gradients; by default :math:`\tau_{m,i} = \texttt{tau\_m\_rel}\cdot s_i`.

    Shapes:
        - theta: (N, M), k <= number of finite entries per row
        - output: (N, M), rows sum to k

    Taught in: chapter 09 (chapters/09_estimators_2_deterministic.md).
    """
    check_tensor(theta, "theta", ndim=2, finite=False)
    k = check_k(k, theta.shape[-1])
    return _SigmoidTopK.apply(theta, k, _tau_m(theta, tau_m, tau_m_rel))


def _capped_threshold(x: torch.Tensor, k: int, iters: int = 40) -> torch.Tensor:
    """ν per row with Σ_j clip(x_j − ν, 0, 1) = k, exact. No grad.

    ν lies in (x_(k+1) − 1, x_(k)) (at ν = x_(k) at most k − 1 entries contribute; at x_(k+1) − 1
    the top k + 1 contribute 1 each), so only the entries above x_(k+1) − 1 matter: take enough of
    the largest (a top-C candidate set, C doubled until it covers them), bisect on those, then solve
    exactly on the free set F (0 < x − ν < 1) and the upper set U (x − ν >= 1): Σ_F (x − ν) + |U| = k.
    """
    x = x.detach()
    m_cols = x.shape[-1]
    c = min(m_cols, max(4 * (k + 1), 64))
    while True:
        cand = torch.topk(x, c, dim=-1).values                             # (N, C), descending
        if c == m_cols or k + 1 > c or bool((cand[:, -1] <= cand[:, k] - 1).all()):
            break
        c = min(m_cols, 2 * c)
    valid = torch.isfinite(cand)
    big = torch.finfo(x.dtype).max
    lo = torch.where(valid, cand, torch.full_like(cand, big)).amin(-1, keepdim=True) - 1.0   # sum >= k
    hi = cand[:, :1].clone()                                                                  # sum = 0 < k
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        f = (cand - mid).clamp(0, 1).sum(-1, keepdim=True) - k
        lo = torch.where(f > 0, mid, lo)
        hi = torch.where(f > 0, hi, mid)
    nu = 0.5 * (lo + hi)
    for _ in range(3):  # exact solve on the sets found, repeated so that a set changed by rounding settles
        free = (cand - nu > 0) & (cand - nu < 1)
        upper = cand - nu >= 1
        nf = free.sum(-1, keepdim=True)
        xs = torch.where(free, cand, torch.zeros_like(cand)).sum(-1, keepdim=True)
        exact = (xs - (k - upper.sum(-1, keepdim=True))) / nf.clamp_min(1)
        nu = torch.where(nf > 0, exact, nu)
    return nu


class _CappedSimplexTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, theta, k, tau_m):
        x = theta / tau_m
        nu = _capped_threshold(x, k)
        m = (x - nu).clamp(0, 1)
        free = (m > 0) & (m < 1)
        ctx.save_for_backward(free, tau_m)
        return m

    @staticmethod
    def backward(ctx, g):
        free, tau_m = ctx.saved_tensors
        gf = torch.where(free, g, torch.zeros_like(g))
        nf = free.sum(-1, keepdim=True)
        mean = gf.sum(-1, keepdim=True) / nf.clamp_min(1)
        grad = torch.where(free, (g - mean) / tau_m, torch.zeros_like(g))
        return grad, None, None


def capped_simplex_topk(theta: torch.Tensor, k: int, tau_m: float | None = None, tau_m_rel: float = 0.3) -> torch.Tensor:
    r"""Sparse top-k relaxation: Euclidean projection onto the capped simplex ("sparsemax for top-k").

    .. math::
        m = \arg\min_{0\le y\le 1,\ \sum y = k}\ \lVert y - {z}/\tau_m\rVert^2
          = \mathrm{clip}({z}/\tau_m - \nu,\ 0,\ 1),\qquad \nu \text{ such that } \sum_j m_j = k

    ν by bisection, then exactly from the free set :math:`F = \{0 < m < 1\}`. Exactly sparse: the
    mask has at most :math:`k + |F|` non-zeros. Backward (closed form, on F only):

    .. math::
        (\nabla_{z} L)_F = \frac{g_F - \overline{g_F}}{\tau_m}, \qquad 0 \text{ on saturated entries}

    Entries clipped at 0 or 1 get no gradient: when the k-th and (k+1)-th scores are more than
    τ_m apart the row is hard and gets none at all. By default
    :math:`\tau_{m,i} = \texttt{tau\_m\_rel}\cdot s_i`. (Related: Sander et al., ICML 2023, arXiv
    2302.01425; sparsemax, Martins & Astudillo, 2016.)

    Shapes:
        - theta: (N, M)
        - output: (N, M), entries in [0, 1], rows sum to k

    Taught in: chapter 09 (chapters/09_estimators_2_deterministic.md).
    """
    check_tensor(theta, "theta", ndim=2, finite=False)
    k = check_k(k, theta.shape[-1])
    return _CappedSimplexTopK.apply(theta, k, _tau_m(theta, tau_m, tau_m_rel))


@register_estimator("sigmoid", needs_dense=True)
def sigmoid_estimator(scores: torch.Tensor, k: int, tau: float = 1.0, *, exclude_self: bool = False,
                      generator: torch.Generator | None = None, tau_m: float | None = None,
                      tau_m_rel: float = 0.1) -> Selection:
    r"""The smooth sigmoid top-k mask of :func:`sigmoid_topk` as an estimator, on :math:`{z} = S/\tau`.

    ``dense`` is the soft mask (every entry positive, rows sum to k); ``indices`` are the k
    largest scores and ``weights`` the mask there, so the sparse path drops the mass outside the
    top k (and its gradient): use the dense path.

    Shapes: scores (N, M) -> indices, weights (N, k), dense (N, M).

    Taught in: chapter 09 (chapters/09_estimators_2_deterministic.md).
    """
    theta, k = _prepare_theta(scores, k, tau, exclude_self)
    m = sigmoid_topk(theta, k, tau_m=tau_m, tau_m_rel=tau_m_rel)
    return _selection(m, topk_indices(theta, k))


@register_estimator("capped_simplex", needs_dense=True)
def capped_simplex_estimator(scores: torch.Tensor, k: int, tau: float = 1.0, *, exclude_self: bool = False,
                             generator: torch.Generator | None = None, tau_m: float | None = None,
                             tau_m_rel: float = 0.3) -> Selection:
    r"""The sparse capped-simplex top-k of :func:`capped_simplex_topk` as an estimator, on :math:`{z} = S/\tau`.

    ``dense`` has at most :math:`k + |F|` non-zeros per row; ``indices``/``weights`` keep the k largest.
    Use the dense path: the entries of the free set beyond the k-th carry weight and gradient.

    Shapes: scores (N, M) -> indices, weights (N, k), dense (N, M).

    Taught in: chapter 09 (chapters/09_estimators_2_deterministic.md).
    """
    theta, k = _prepare_theta(scores, k, tau, exclude_self)
    m = capped_simplex_topk(theta, k, tau_m=tau_m, tau_m_rel=tau_m_rel)
    return _selection(m, topk_indices(theta, k))
