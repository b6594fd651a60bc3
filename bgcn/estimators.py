r"""Estimators for the *selection* step: learning **which** k neighbours each node keeps (chapter 09).

The softmax estimators of :mod:`bgcn.topk` only re-weight the edges that hard top-k already chose;
the *choice* gets no gradient (chapter 02). The estimators here return, besides the k chosen
columns per row, a dense (N, M) mask :math:`m` whose backward pass is the estimator's gradient for
**every** score, chosen or not. Importing this module registers them in :data:`bgcn.ESTIMATORS`.

Notation (per row i; the rows are independent). :math:`S` (N, M) cosine similarities,
:math:`\theta = S/\tau` the scores, :math:`g = \partial L/\partial m` the loss gradient arriving at
the mask, :math:`\operatorname{topk}(\theta)` the hard k-hot row

.. math::
    \operatorname{topk}(\theta) = \arg\max_{y\in\{0,1\}^M,\ \sum_j y_j = k} \langle\theta, y\rangle .

**Top-k is an argmax.** Blackbox differentiation (Vlastelica et al., 2020) and the "negative
identity" of Sahoo et al. (2023) are written for *argmin* solvers; copied verbatim onto top-k they
train in the wrong direction, or not at all (:func:`blackbox_argmin_verbatim`, :func:`sign_test`).

The estimators (forward; backward :math:`\partial L/\partial\theta`; needs the dense path?; stochastic?):

- ``"ste"``: :math:`\operatorname{topk}(\theta)`; :math:`g` (or a surrogate's Jacobian); dense; deterministic.
- ``"identity"``: topk of :math:`u = c/\lVert c\rVert`, :math:`c = \theta - \bar\theta`;
  :math:`(I-\tfrac1n\mathbf 1\mathbf 1^\top)\tfrac{1}{\lVert c\rVert}(I-uu^\top)g`; dense; deterministic.
- ``"blackbox"``: :math:`\operatorname{topk}(\theta)`; :math:`(m - \operatorname{topk}(\theta-\lambda g))/\lambda`;
  dense; deterministic.
- ``"imle"``: :math:`\operatorname{topk}(\theta+\epsilon)`, ε Sum-of-Gamma;
  :math:`(m - \operatorname{topk}(\theta+\epsilon-\lambda g))/\lambda`; dense; stochastic.
- ``"sigmoid"``: :math:`\sigma((\theta-t)/\tau_m)` with row sums k;
  :math:`\tfrac{h}{\tau_m}\odot(g - \tfrac{\langle h,g\rangle}{\sum h})`, :math:`h = m(1-m)`; dense; deterministic.
- ``"capped_simplex"``: :math:`\mathrm{clip}(\theta/\tau_m-\nu,0,1)` with row sums k;
  :math:`(g_F-\overline{g_F})/\tau_m` on the free set F; dense; deterministic.
- ``"gumbel_reinforce"``: :math:`\operatorname{topk}(\theta + \tau_g G)`, G Gumbel; no pathwise gradient, the
  score function through ``sel.log_prob`` and :func:`reinforce_surrogate`; sparse is enough; stochastic.

"Dense path" (``needs_dense=True`` in the registry): the estimator's gradient needs
:math:`\partial L/\partial m_{ij}` for *non-edges* too, so the GCN must consume the dense mask
(``GCN(x, adj=graph.dense)``); with a sparse ``edge_index`` autograd only sees the k chosen
entries per row and the selection never learns. ``gumbel_reinforce`` needs no dense GCN path (its
gradient comes from the score-function surrogate :func:`reinforce_surrogate`), but its
``log_prob`` uses full rows of :math:`\theta`.

**Hyper-parameters are tied to the score scale.** Cosine similarities of one row differ by a few
hundredths, so a constant λ or noise temperature means nothing. By default every scale-like
hyper-parameter is a multiple of the row's standard deviation :math:`s_i = \mathrm{std}_j(\theta_{ij})`
(over the candidate columns; computed without gradient, i.e. treated as a constant):

- blackbox / imle: :math:`\lambda_i = \texttt{lam\_rel}\cdot s_i / \mathrm{rms}(g_i)`, so that the
  perturbation :math:`\lambda_i g_i` has root-mean-square :math:`\texttt{lam\_rel}\cdot s_i`
  whatever the scale of the loss (the adaptive I-MLE rule of Minervini et al., 2023, per row).
  Pass ``lam=`` for the paper's absolute λ.
- imle: noise temperature :math:`\tau_{noise,i} = \texttt{noise\_rel}\cdot s_i` (``tau_noise=`` for
  an absolute one).
- sigmoid / capped_simplex: relaxation temperature :math:`\tau_{m,i} = \texttt{tau\_m\_rel}\cdot s_i`
  (``tau_m=`` for an absolute one).
- gumbel_reinforce: Gumbel scale :math:`\tau_{g,i} = \texttt{noise\_rel}\cdot s_i` (``tau_noise=``).

Every stochastic estimator takes ``generator`` (a ``torch.Generator``) and is reproducible with it.

Taught in: chapter 09 (chapters/09_estimators.md).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .topk import ESTIMATORS, Selection, get_estimator, mask_diagonal, register_estimator
from .utils import check_k, check_positive, check_tau, check_tensor

__all__ = [
    "EULER_GAMMA",
    "topk_mask",
    "topk_indices",
    "gumbel_noise",
    "sum_of_gamma_noise",
    "row_std",
    "PerturbationState",
    "sigmoid_topk",
    "capped_simplex_topk",
    "plackett_luce_log_prob",
    "reinforce_surrogate",
    "EMABaseline",
    "blackbox_argmin_verbatim",
    "sign_test",
    "SIGN_TEST_KW",
    "SELECTION_ESTIMATORS",
    "ste_estimator",
    "identity_estimator",
    "blackbox_estimator",
    "imle_estimator",
    "sigmoid_estimator",
    "capped_simplex_estimator",
    "gumbel_reinforce_estimator",
]

EULER_GAMMA = 0.5772156649015329
"""Mean of the standard Gumbel distribution (its variance is π²/6 ≈ 1.645)."""

SELECTION_ESTIMATORS = ("ste", "identity", "blackbox", "imle", "sigmoid", "capped_simplex", "gumbel_reinforce")
"""The names this module registers, in the order chapter 09 presents them."""


# =========================================================================== helpers

def _check_int(value, name: str, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if int(value) < lo:
        raise ValueError(f"{name}={int(value)} must be >= {lo}")
    return int(value)


def _check_optional_positive(value, name: str) -> float | None:
    return None if value is None else check_positive(value, name)


def topk_indices(theta: torch.Tensor, k: int) -> torch.Tensor:
    r"""Indices of the k largest entries of every row, by decreasing score, ties to the lower index.

    ``torch.topk`` leaves the order of tied entries unspecified (and it differs between devices);
    this helper makes the *set* and the order deterministic: an entry equal to the k-th largest
    value is kept only if fewer than k entries are strictly larger and it is among the lowest
    indices of its tie. ``-inf`` entries (masked candidates) are chosen last.

    Shapes:
        - theta: (N, M) or (M,)
        - output: (N, k) or (k,) long

    Taught in: chapter 09 (chapters/09_estimators.md).
    """
    return _topk_indices_mask(theta, k)[0]


def topk_mask(theta: torch.Tensor, k: int) -> torch.Tensor:
    r"""Hard k-hot rows :math:`\operatorname{topk}(\theta) = \arg\max_{y\in\{0,1\}^M, \sum y = k}\langle\theta,y\rangle`.

    Ties are broken towards the lower index (see :func:`topk_indices`), so every row has exactly k
    ones (the ``theta >= kth_value`` threshold of the reference notebooks can give more than k).
    No gradient: the result is piecewise constant in ``theta``.

    Shapes:
        - theta: (N, M) or (M,)
        - output: same shape and dtype as theta, entries in {0, 1}, each row sums to k

    Taught in: chapter 09 (chapters/09_estimators.md).
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

    :math:`s_i = \sqrt{\tfrac1{n_i}\sum_{j\,:\,\theta_{ij}>-\infty}(\theta_{ij}-\bar\theta_i)^2}`, clamped
    below by ``eps`` (a constant row would otherwise give 0). This is the unit in which the default
    hyper-parameters of the estimators are expressed.

    Shapes:
        - theta: (N, M)
        - output: (N, 1)

    Taught in: chapter 09 (chapters/09_estimators.md).
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


def gumbel_noise(shape, *, dtype: torch.dtype = torch.float32, device=None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Standard Gumbel(0, 1) samples :math:`G = -\log(-\log U)`, :math:`U\sim\mathcal U(0,1)`.

    U is clamped to :math:`[\text{tiny}, 1-\epsilon]` of its dtype, so :math:`\log 0` never occurs:
    the NaNs that ``F.gumbel_softmax`` once produced (pytorch/pytorch #22442, #101620) came from an
    exponential sample of exactly 0. Mean :math:`\gamma\approx0.5772`, variance :math:`\pi^2/6`.

    Shapes:
        - output: ``shape``

    Taught in: chapter 09 (chapters/09_estimators.md); the Gumbel-max trick in chapter 03.
    """
    info = torch.finfo(dtype)
    gen_device = generator.device if generator is not None else device
    u = torch.rand(shape, dtype=dtype, device=gen_device, generator=generator)
    u = u.clamp(min=info.tiny, max=1.0 - info.eps)
    g = -torch.log(-torch.log(u))
    return g.to(device) if device is not None else g


def sum_of_gamma_noise(shape, k: int, s: int = 10, tau: float = 1.0, *, dtype: torch.dtype = torch.float32,
                       device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Sum-of-Gamma noise of I-MLE (Niepert et al., 2021, eq. for k-subsets), torch-imle's parameterisation.

    .. math::
        \epsilon = \frac{\tau}{k}\Big(\sum_{i=1}^{s} \Gamma_i - \log s\Big), \qquad
        \Gamma_i \sim \mathrm{Gamma}(\text{concentration}=1/k,\ \text{rate}=i/k)

    The sum of k independent copies of :math:`\epsilon/\tau` is approximately Gumbel(0, 1): its mean
    is :math:`H_s - \log s \to \gamma` and its variance :math:`\sum_{i\le s} 1/i^2 \to \pi^2/6`
    (exactly, for every s). Perturbing every score with this noise and taking the top k then
    behaves like adding one Gumbel to each *subset* score. **Pitfall**: the TF reference notebooks
    (tf-imle, and the identity notebook copied from it) call ``tf.random.gamma(shape, 1/k, k/i)``,
    whose third argument is a *rate*; the k-sum then has mean ≈ −1.75 and almost no variance.

    Args:
        shape: output shape.
        k: subset size (the k of top-k), >= 1.
        s: number of Gamma terms, >= 1 (10 in the paper; larger s is closer to Gumbel).
        tau: temperature τ > 0 (the scale of the noise).
        generator: a ``torch.Generator`` for reproducibility.

    Shapes:
        - output: ``shape``

    Taught in: chapter 09 (chapters/09_estimators.md).
    """
    k = _check_int(k, "k")
    s = _check_int(s, "s")
    tau = check_positive(tau, "tau")
    gen_device = generator.device if generator is not None else device
    shape = tuple(shape)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    conc = torch.full(shape, 1.0 / k, dtype=work, device=gen_device)
    total = torch.zeros(shape, dtype=work, device=gen_device)
    for i in range(1, s + 1):  # Gamma(1/k, rate=i/k) = StandardGamma(1/k) / (i/k); O(shape) memory
        total += torch._standard_gamma(conc, generator=generator) * (k / i)
    eps = (tau / k) * (total - math.log(s))
    eps = eps.to(dtype)
    return eps.to(device) if device is not None else eps


class PerturbationState:
    r"""Mutable companion of ``blackbox`` / ``imle``: logs what the backward pass did, optionally adapts λ.

    After every backward pass it holds ``changed_rows`` (fraction of rows whose perturbed top-k
    differs from the forward one: 0 means λ is too small and the gradient is exactly zero),
    ``swaps`` (mean number of neighbours swapped per row) and ``calls``.

    With ``adaptive=True`` it implements the adaptive-λ idea of AIMLE (Minervini et al., 2023):
    the relative perturbation size is multiplied by ``beta``, and after each backward pass
    ``beta *= exp(+step)`` if the mean number of swaps per row is below ``target_swaps``, else
    ``exp(-step)``. Pass the same object on every call (``knn_graph(..., state=st)``).

    Shapes: none (scalars).

    Taught in: chapter 09 (chapters/09_estimators.md).
    """

    def __init__(self, adaptive: bool = False, beta: float = 1.0, target_swaps: float = 1.0, step: float = 0.05):
        self.adaptive = bool(adaptive)
        self.beta = check_positive(beta, "beta")
        self.target_swaps = check_positive(target_swaps, "target_swaps")
        self.step = check_positive(step, "step")
        self.changed_rows = float("nan")
        self.swaps = float("nan")
        self.calls = 0

    def update(self, changed_rows: float, swaps: float) -> None:
        self.changed_rows, self.swaps = float(changed_rows), float(swaps)
        self.calls += 1
        if self.adaptive:
            self.beta *= math.exp(self.step if self.swaps < self.target_swaps else -self.step)

    def __repr__(self) -> str:
        return (f"PerturbationState(adaptive={self.adaptive}, beta={self.beta:.4g}, changed_rows={self.changed_rows:.3g}, "
                f"swaps={self.swaps:.3g}, calls={self.calls})")


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


# =========================================================================== straight-through / identity

class _IdentitySolver(torch.autograd.Function):
    """Forward: hard top-k of the input (mask, indices); backward: the incoming gradient unchanged (+identity: argmax)."""

    @staticmethod
    def forward(ctx, theta, k):
        ctx.save_for_backward(torch.isfinite(theta))
        idx, m = _topk_indices_mask(theta, k)
        ctx.mark_non_differentiable(idx)
        return m, idx

    @staticmethod
    def backward(ctx, g, _g_idx):
        (valid,) = ctx.saved_tensors
        return torch.where(valid, g, torch.zeros_like(g)), None


@register_estimator("ste", needs_dense=True)
def ste_estimator(scores: torch.Tensor, k: int, tau: float = 1.0, *, exclude_self: bool = False,
                  generator: torch.Generator | None = None, surrogate: str | None = None,
                  tau_m: float | None = None, tau_m_rel: float = 0.1) -> Selection:
    r"""Straight-through top-k (Bengio, Léonard & Courville, 2013, arXiv 1308.3432).

    Forward: :math:`m = \operatorname{topk}(\theta)`, :math:`\theta = S/\tau`, hard k-hot rows.
    Backward:

    - ``surrogate=None``: identity, :math:`\partial L/\partial\theta := g` (so
      :math:`\partial L/\partial S = g/\tau`). Top-k is an argmax, so the sign is +.
    - ``surrogate="sigmoid"`` or ``"capped_simplex"``: the Jacobian of that relaxation
      (:func:`sigmoid_topk`, :func:`capped_simplex_topk` at ``tau_m``), written
      :math:`m = m_{hard} + (m_{soft} - \mathrm{sg}(m_{soft}))`, whose forward value is exactly
      :math:`m_{hard}`.

    Biased: the identity gradient has a component along :math:`\mathbf 1` (shifting a whole row
    changes nothing in top-k), which ``"identity"`` projects away. Needs the dense path.

    Shapes: scores (N, M) -> indices, weights (N, k), dense (N, M).

    Taught in: chapter 09 (chapters/09_estimators.md).
    """
    theta, k = _prepare_theta(scores, k, tau, exclude_self)
    if surrogate is None:
        m, idx = _IdentitySolver.apply(theta, k)
    elif surrogate in ("sigmoid", "capped_simplex"):
        fn = sigmoid_topk if surrogate == "sigmoid" else capped_simplex_topk
        soft = fn(theta, k, tau_m=tau_m, tau_m_rel=tau_m_rel)
        idx, hard = _topk_indices_mask(theta, k)
        m = hard + (soft - soft.detach())
    else:
        raise ValueError(f"surrogate={surrogate!r} must be None (identity), 'sigmoid' or 'capped_simplex'")
    return _selection(m, idx)


@register_estimator("identity", needs_dense=True)
def identity_estimator(scores: torch.Tensor, k: int, tau: float = 1.0, *, exclude_self: bool = False,
                       generator: torch.Generator | None = None, noise_rel: float = 0.0, s: int = 10,
                       sample: bool | None = None) -> Selection:
    r"""Identity with projection (Sahoo, Paulus, Vlastelica, Musil, Kuleshov & Martius, ICLR 2023, arXiv 2205.15213; seed 004).

    Forward, per row (the order of the reference notebook): optionally
    :math:`\theta \leftarrow \theta + \epsilon` (Sum-of-Gamma noise of temperature
    ``noise_rel``·s_i, "margin" against cost collapse; off by default; with ``sample=None`` only
    while autograd records, i.e. in training steps), then

    .. math::
        c = \theta - \bar\theta\,\mathbf 1, \qquad u = c/\lVert c\rVert, \qquad m = \operatorname{topk}(u)

    (centring and rescaling do not change the top-k, so the forward equals ``topk(θ)``).

    Backward: the solver is treated as the **identity** (:math:`\partial L/\partial u := g`; the
    paper's "negative identity" is for argmin solvers; top-k is an argmax, so +identity), and
    autograd applies the two projections:

    .. math::
        \nabla_\theta L = \Big(I - \tfrac{1}{n}\mathbf 1\mathbf 1^\top\Big)\,
        \frac{1}{\lVert c\rVert}\,\big(I - u u^\top\big)\, g

    The gradient has no component along :math:`\mathbf 1` (a shift, invisible to top-k) and none
    along :math:`c` (a rescaling, invisible too). With ``exclude_self`` the diagonal is left out of
    the mean and the norm (n = M − 1) and gets zero gradient. No hyper-parameter; needs the dense
    path.

    Shapes: scores (N, M) -> indices, weights (N, k), dense (N, M).

    Taught in: chapter 09 (chapters/09_estimators.md).
    """
    theta, k = _prepare_theta(scores, k, tau, exclude_self)
    if isinstance(noise_rel, bool) or not isinstance(noise_rel, (int, float)) or not math.isfinite(noise_rel) or noise_rel < 0:
        raise ValueError(f"noise_rel={noise_rel!r} must be a number >= 0 (0 switches the noise off)")
    valid = torch.isfinite(theta)
    if noise_rel > 0 and _do_sample(sample):
        eps = sum_of_gamma_noise(theta.shape, k, s=s, tau=1.0, dtype=theta.dtype, device=theta.device,
                                 generator=generator) * (noise_rel * row_std(theta))
        theta = theta + eps
    n = valid.sum(-1, keepdim=True)
    tv = torch.where(valid, theta, torch.zeros_like(theta))
    c = torch.where(valid, tv - tv.sum(-1, keepdim=True) / n, torch.zeros_like(theta))
    norm = c.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(theta.dtype).tiny ** 0.5)
    u = c / norm
    u = torch.where(valid, u, torch.full_like(u, float("-inf")))
    m, idx = _IdentitySolver.apply(u, k)
    return _selection(m, idx)


# =========================================================================== blackbox / I-MLE

class _PerturbedTopK(torch.autograd.Function):
    r"""Forward: topk(θ + ε). Backward: (m − topk(θ + ε − λg)) [/λ], or the symmetric version."""

    @staticmethod
    def forward(ctx, theta, k, eps, lam, lam_rel, symmetric, scale, state):
        z = theta if eps is None else theta + eps
        idx, m = _topk_indices_mask(z, k)
        ctx.mark_non_differentiable(idx)
        ctx.k, ctx.lam, ctx.lam_rel, ctx.symmetric, ctx.scale, ctx.state = k, lam, lam_rel, symmetric, scale, state
        ctx.save_for_backward(z, m)
        return m, idx

    @staticmethod
    def backward(ctx, g, _g_idx):
        z, m = ctx.saved_tensors
        valid = torch.isfinite(z)
        g = torch.where(valid, g, torch.zeros_like(g))
        if ctx.lam is not None:
            lam = torch.full((z.shape[0], 1), ctx.lam, dtype=z.dtype, device=z.device)
        else:
            beta = ctx.state.beta if ctx.state is not None else 1.0
            lam = beta * ctx.lam_rel * row_std(z) / _safe_rms(g, valid)    # λ_i g_i has rms lam_rel·s_i
        if ctx.symmetric:
            grad = 0.5 * (topk_mask(z + lam * g, ctx.k) - topk_mask(z - lam * g, ctx.k))
            changed = grad.abs().sum(-1)
        else:
            grad = m - topk_mask(z - lam * g, ctx.k)
            changed = grad.abs().sum(-1) / 2.0                              # swaps per row
        if ctx.state is not None:
            ctx.state.update(float((changed > 0).float().mean()), float(changed.mean()))
        if ctx.scale:
            grad = grad / lam
        return grad, None, None, None, None, None, None, None


def _check_lam(lam, lam_rel) -> tuple[float | None, float]:
    return _check_optional_positive(lam, "lam"), check_positive(lam_rel, "lam_rel")


def _check_state(state) -> PerturbationState | None:
    if state is not None and not isinstance(state, PerturbationState):
        raise TypeError(f"state must be a bgcn.estimators.PerturbationState or None, got {type(state).__name__}")
    return state


@register_estimator("blackbox", needs_dense=True)
def blackbox_estimator(scores: torch.Tensor, k: int, tau: float = 1.0, *, exclude_self: bool = False,
                       generator: torch.Generator | None = None, lam: float | None = None, lam_rel: float = 1.0,
                       state: PerturbationState | None = None) -> Selection:
    r"""Blackbox differentiation of the top-k solver (Vlastelica, Paulus, Musil, Martius & Rolínek, ICLR 2020, arXiv 1912.02175), **argmax form**.

    Forward :math:`m = \operatorname{topk}(\theta)`. Backward: solve once more on scores moved
    against the gradient and return the finite difference

    .. math::
        m_\lambda = \operatorname{topk}(\theta - \lambda g), \qquad \nabla_\theta L = (m - m_\lambda)/\lambda .

    It is the gradient of a piecewise-linear interpolation of :math:`L(\theta)`. The paper (and
    ``blackbox-backprop``) is written for argmin solvers: :math:`w' = w + \lambda g`,
    :math:`\nabla_w = -(y - y_\lambda)/\lambda`; with :math:`w = -\theta` this is the rule above.
    Copying the argmin rule verbatim onto top-k never moves the selection
    (:func:`blackbox_argmin_verbatim`, shown by :func:`sign_test`).

    λ: by default :math:`\lambda_i = \texttt{lam\_rel}\cdot s_i/\mathrm{rms}(g_i)` per row, i.e. the
    perturbation :math:`\lambda_i g_i` is as large (root-mean-square) as ``lam_rel`` row standard
    deviations of θ, whatever the size of the loss. A fixed ``lam`` (the paper's, e.g. 5–20 for
    logits of order 1) gives exactly zero gradient when :math:`\lambda\lVert g\rVert` is below the
    gap between the k-th and (k+1)-th score, which on cosine similarities with a per-node loss is
    the usual case. Pass a :class:`PerturbationState` to log the fraction of rows that changed.
    Needs the dense path.

    Shapes: scores (N, M) -> indices, weights (N, k), dense (N, M).

    Taught in: chapter 09 (chapters/09_estimators.md).
    """
    theta, k = _prepare_theta(scores, k, tau, exclude_self)
    lam, lam_rel = _check_lam(lam, lam_rel)
    state = _check_state(state)
    m, idx = _PerturbedTopK.apply(theta, k, None, lam, lam_rel, False, True, state)
    return _selection(m, idx)


@register_estimator("imle", needs_dense=True, stochastic=True)
def imle_estimator(scores: torch.Tensor, k: int, tau: float = 1.0, *, exclude_self: bool = False,
                   generator: torch.Generator | None = None, lam: float | None = None, lam_rel: float = 1.0,
                   tau_noise: float | None = None, noise_rel: float = 0.3, s: int = 10, symmetric: bool = False,
                   scale: bool = True, sample: bool | None = None, state: PerturbationState | None = None) -> Selection:
    r"""Implicit MLE for k-subsets (Niepert, Minervini & Franceschi, NeurIPS 2021, arXiv 2106.01798), perturb-and-MAP.

    Forward (training): :math:`\epsilon` = Sum-of-Gamma noise (:func:`sum_of_gamma_noise`,
    temperature :math:`\tau_{noise}`), :math:`m = \operatorname{topk}(\theta+\epsilon)`: a hard
    sample. Evaluation: :math:`m = \operatorname{topk}(\theta)`. ``sample=None`` (default) samples
    exactly when autograd is recording (``torch.is_grad_enabled()``), so a training step samples and
    an evaluation under ``torch.no_grad()`` does not; ``True``/``False`` force it.

    Backward with the **same** noise (the perturbation-based implicit differentiation target,
    α = 1, β = λ):

    .. math::
        m' = \operatorname{topk}(\theta + \epsilon - \lambda g), \qquad
        \nabla_\theta L = (m - m') \,/\, \lambda\ \ (\texttt{scale=True})

    ``symmetric=True``: :math:`\tfrac12(\operatorname{topk}(\theta+\epsilon+\lambda g) - \operatorname{topk}(\theta+\epsilon-\lambda g))`
    (AIMLE's two-sided difference, Minervini et al., 2023). ``scale=False`` returns
    :math:`m - m'` undivided, as torch-imle does by default; AIMLE's
    ``do_gradient_scaling=True`` divides by λ, which we do by default so that the gradient scales
    with the loss like the other estimators. The sign is the argmax one: an early torch-imle
    commit returned :math:`m' - m`, which trains backwards.

    Defaults tied to the score scale: :math:`\tau_{noise,i} = \texttt{noise\_rel}\cdot s_i` and
    :math:`\lambda_i = \texttt{lam\_rel}\cdot s_i/\mathrm{rms}(g_i)` (see :func:`blackbox_estimator`;
    ``tau_noise=``/``lam=`` give absolute values; the paper's notebooks use τ = λ = 10 for logits
    of order 1). A :class:`PerturbationState` with ``adaptive=True`` adapts λ (AIMLE). With
    ε = 0 this is exactly ``blackbox``. Needs the dense path.

    Shapes: scores (N, M) -> indices, weights (N, k), dense (N, M).

    Taught in: chapter 09 (chapters/09_estimators.md).
    """
    theta, k = _prepare_theta(scores, k, tau, exclude_self)
    lam, lam_rel = _check_lam(lam, lam_rel)
    tau_noise = _check_optional_positive(tau_noise, "tau_noise")
    noise_rel = check_positive(noise_rel, "noise_rel")
    s = _check_int(s, "s")
    state = _check_state(state)
    eps = None
    if _do_sample(sample):
        scale_i = tau_noise if tau_noise is not None else noise_rel * row_std(theta)
        eps = sum_of_gamma_noise(theta.shape, k, s=s, tau=1.0, dtype=theta.dtype, device=theta.device,
                                 generator=generator) * scale_i
    m, idx = _PerturbedTopK.apply(theta, k, eps, lam, lam_rel, bool(symmetric), bool(scale), state)
    return _selection(m, idx)


def blackbox_argmin_verbatim(theta: torch.Tensor, k: int, lam: float | None = None, lam_rel: float = 1.0) -> torch.Tensor:
    r"""**The pitfall, for teaching only**: blackbox's argmin rule copied verbatim onto top-k.

    ``blackbox-backprop`` perturbs *costs* with :math:`w' = w + \lambda g` and returns
    :math:`-(y - y_\lambda)/\lambda`. Applied to the top-k *scores* θ as if they were costs:

    .. math::
        y_\lambda = \operatorname{topk}(\theta + \lambda g), \qquad \nabla_\theta L := -(y - y_\lambda)/\lambda .

    :math:`\theta+\lambda g` *raises* the scores whose increase hurts the loss, so
    :math:`y_\lambda` swaps chosen good entries for unchosen bad ones, and the gradient only ever
    reinforces the current selection: descent never changes it (:func:`sign_test` shows it stuck).
    Never use it; :func:`blackbox_estimator` is the correct (argmax) rule.

    Shapes: theta (N, M) -> dense mask (N, M).

    Taught in: chapter 09 (chapters/09_estimators.md).
    """
    lam, lam_rel = _check_lam(lam, lam_rel)
    return _ArgminVerbatim.apply(theta, check_k(k, theta.shape[-1]), lam, lam_rel)


class _ArgminVerbatim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, theta, k, lam, lam_rel):
        m = topk_mask(theta, k)
        ctx.k, ctx.lam, ctx.lam_rel = k, lam, lam_rel
        ctx.save_for_backward(theta, m)
        return m

    @staticmethod
    def backward(ctx, g):
        theta, m = ctx.saved_tensors
        valid = torch.isfinite(theta)
        if ctx.lam is not None:
            lam = torch.full((theta.shape[0], 1), ctx.lam, dtype=theta.dtype, device=theta.device)
        else:
            lam = ctx.lam_rel * row_std(theta) / _safe_rms(g, valid)
        return -(m - topk_mask(theta + lam * g, ctx.k)) / lam, None, None, None


# =========================================================================== smooth relaxations

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
        m_j = \sigma\!\Big(\frac{\theta_j - t}{\tau_m}\Big),\qquad t \text{ such that } \sum_j m_j = k

    t is found per row by safeguarded Newton (bisection fallback), under ``no_grad``; the
    backward is the implicit-function closed form, with :math:`h = m(1-m)`:

    .. math::
        \nabla_\theta L = \frac{h}{\tau_m}\odot\Big(g - \frac{\langle h, g\rangle}{\sum_j h_j}\Big)

    (the derivative of t is :math:`\langle h,\cdot\rangle/\sum h`). Every entry is non-zero.
    ``-inf`` entries (masked diagonal) give :math:`m = 0` and zero gradient. τ_m → 0 gives hard
    top-k and vanishing gradients; by default :math:`\tau_{m,i} = \texttt{tau\_m\_rel}\cdot s_i`.

    Shapes:
        - theta: (N, M), k <= number of finite entries per row
        - output: (N, M), rows sum to k

    Taught in: chapter 09 (chapters/09_estimators.md).
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
        m = \arg\min_{0\le y\le 1,\ \sum y = k}\ \lVert y - \theta/\tau_m\rVert^2
          = \mathrm{clip}(\theta/\tau_m - \nu,\ 0,\ 1),\qquad \nu \text{ such that } \sum_j m_j = k

    ν by bisection, then exactly from the free set :math:`F = \{0 < m < 1\}`. Exactly sparse: the
    mask has at most :math:`k + |F|` non-zeros. Backward (closed form, on F only):

    .. math::
        (\nabla_\theta L)_F = \frac{g_F - \overline{g_F}}{\tau_m}, \qquad 0 \text{ on saturated entries}

    Entries clipped at 0 or 1 get no gradient: when the k-th and (k+1)-th scores are more than
    τ_m apart the row is hard and gets none at all. By default
    :math:`\tau_{m,i} = \texttt{tau\_m\_rel}\cdot s_i`. (Related: Sander et al., ICML 2023, arXiv
    2302.01425; sparsemax, Martins & Astudillo, 2016.)

    Shapes:
        - theta: (N, M)
        - output: (N, M), entries in [0, 1], rows sum to k

    Taught in: chapter 09 (chapters/09_estimators.md).
    """
    check_tensor(theta, "theta", ndim=2, finite=False)
    k = check_k(k, theta.shape[-1])
    return _CappedSimplexTopK.apply(theta, k, _tau_m(theta, tau_m, tau_m_rel))


@register_estimator("sigmoid", needs_dense=True)
def sigmoid_estimator(scores: torch.Tensor, k: int, tau: float = 1.0, *, exclude_self: bool = False,
                      generator: torch.Generator | None = None, tau_m: float | None = None,
                      tau_m_rel: float = 0.1) -> Selection:
    r"""The smooth sigmoid top-k mask of :func:`sigmoid_topk` as an estimator, on :math:`\theta = S/\tau`.

    ``dense`` is the soft mask (every entry positive, rows sum to k); ``indices`` are the k
    largest scores and ``weights`` the mask there, so the sparse path drops the mass outside the
    top k (and its gradient): use the dense path.

    Shapes: scores (N, M) -> indices, weights (N, k), dense (N, M).

    Taught in: chapter 09 (chapters/09_estimators.md).
    """
    theta, k = _prepare_theta(scores, k, tau, exclude_self)
    m = sigmoid_topk(theta, k, tau_m=tau_m, tau_m_rel=tau_m_rel)
    return _selection(m, topk_indices(theta, k))


@register_estimator("capped_simplex", needs_dense=True)
def capped_simplex_estimator(scores: torch.Tensor, k: int, tau: float = 1.0, *, exclude_self: bool = False,
                             generator: torch.Generator | None = None, tau_m: float | None = None,
                             tau_m_rel: float = 0.3) -> Selection:
    r"""The sparse capped-simplex top-k of :func:`capped_simplex_topk` as an estimator, on :math:`\theta = S/\tau`.

    ``dense`` has at most :math:`k + |F|` non-zeros per row; ``indices``/``weights`` keep the k largest.
    Use the dense path: the entries of the free set beyond the k-th carry weight and gradient.

    Shapes: scores (N, M) -> indices, weights (N, k), dense (N, M).

    Taught in: chapter 09 (chapters/09_estimators.md).
    """
    theta, k = _prepare_theta(scores, k, tau, exclude_self)
    m = capped_simplex_topk(theta, k, tau_m=tau_m, tau_m_rel=tau_m_rel)
    return _selection(m, topk_indices(theta, k))


# =========================================================================== Gumbel top-k + REINFORCE

def plackett_luce_log_prob(theta: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    r"""Log-probability of an *ordered* k-subset under the Plackett–Luce model of :math:`\mathrm{softmax}(\theta)`.

    .. math::
        \log p(j_1,\dots,j_k) = \sum_{m=1}^{k}\Big[\theta_{j_m} -
        \log\!\!\sum_{l\notin\{j_1,\dots,j_{m-1}\}}\!\! e^{\theta_l}\Big]

    This is the exact law of ``topk(θ + Gumbel)`` in its sampled order (the Gumbel-top-k trick;
    Kool, van Hoof & Welling, ICML 2019, arXiv 1903.06059). Differentiable in θ. The normaliser of
    step m is computed exactly (no cancellation) as the logsumexp of the never-chosen entries (one
    pass over the row) together with :math:`\theta_{j_m},\dots,\theta_{j_k}`: O(N·M + N·k²).
    ``-inf`` entries of θ (masked diagonal) are never candidates.

    Shapes:
        - theta: (N, M) (or (M,))
        - idx: (N, k) long (or (k,)), in sampled order
        - output: (N,) (or ())

    Taught in: chapter 09 (chapters/09_estimators.md); the score function in chapter 03.
    """
    squeeze = theta.dim() == 1
    if squeeze:
        theta, idx = theta.unsqueeze(0), idx.unsqueeze(0)
    check_tensor(theta, "theta", ndim=2, finite=False)
    if idx.dim() != 2 or idx.shape[0] != theta.shape[0]:
        raise ValueError(f"idx must be (N, k) with N = {theta.shape[0]}, got {tuple(idx.shape)}")
    k = idx.shape[1]
    # the candidates left at step m are the never-chosen ones ("rest", one logsumexp over the row)
    # plus j_m..j_k: log Z_m = logsumexp(lse_rest, θ_{j_m}, ..., θ_{j_k}), exact and O(N·M + N·k²)
    chosen = torch.zeros(theta.shape, dtype=torch.bool, device=theta.device).scatter(-1, idx, True)
    masked = theta.masked_fill(chosen, float("-inf"))
    has_rest = torch.isfinite(masked).any(-1, keepdim=True)
    lse_rest = torch.logsumexp(torch.where(has_rest, masked, torch.zeros_like(masked)), -1, keepdim=True)
    lse_rest = torch.where(has_rest, lse_rest, torch.full_like(lse_rest, float("-inf")))
    vals = theta.gather(-1, idx)
    total = vals.sum(-1)
    for m in range(k):
        total = total - torch.logsumexp(torch.cat([lse_rest, vals[:, m:]], dim=-1), dim=-1)
    return total[0] if squeeze else total


def reinforce_surrogate(log_prob: torch.Tensor, reward: torch.Tensor, baseline="loo") -> torch.Tensor:
    r"""Score-function (REINFORCE) surrogate loss, to be **added** to the task loss and minimised.

    .. math::
        L_{sf} = -\frac{1}{S}\sum_{s=1}^{S}\sum_i \big(R_{s,i} - b_{s,i}\big)\,\log p_i(\text{sample}_s)

    with the rewards R and baselines b detached, so that :math:`\nabla L_{sf}` is an unbiased
    estimate of :math:`-\nabla_\theta \mathbb E[\sum_i R_i]` (ascent on the expected reward). **R is a
    reward (higher is better)**: for a per-node loss :math:`\ell_i` pass ``reward = -ℓ_i``. Seed
    003's snippet minimises ``-log_prob * reward`` with ``reward`` a *squared error*: that is the
    wrong sign (it makes large errors more likely), and it scores the argmax instead of a sample.

    Baselines (all keep the estimator unbiased because b does not depend on the sample it
    multiplies):

    - ``"loo"`` (RLOO, leave-one-out over S >= 2 samples):
      :math:`b_{s,i} = \frac{1}{S-1}\sum_{s'\ne s} R_{s',i}`;
    - ``None``: :math:`b = 0` (high variance);
    - a tensor broadcastable to ``reward`` (e.g. :class:`EMABaseline`), detached.

    Per-node rewards are a credit assignment: node i's selection is scored by node i's own reward
    (exact when :math:`R_i` depends only on row i's sample; with a GCN it also depends on its
    neighbours' rows, a bias traded for much lower variance).

    Shapes:
        - log_prob: (S, N) for S samples of the whole graph, or (N,) for one
        - reward: same shape as log_prob
        - output: () scalar

    Taught in: chapter 09 (chapters/09_estimators.md); REINFORCE and its baseline in chapter 03.
    """
    if not isinstance(log_prob, torch.Tensor) or not isinstance(reward, torch.Tensor):
        raise TypeError("log_prob and reward must be torch.Tensors")
    if log_prob.shape != reward.shape:
        raise ValueError(f"reward {tuple(reward.shape)} must have the shape of log_prob {tuple(log_prob.shape)}")
    r = reward.detach()
    if r.dim() == 1:
        r, lp = r.unsqueeze(0), log_prob.unsqueeze(0)
    else:
        lp = log_prob
    n_samples = r.shape[0]
    if isinstance(baseline, str):
        if baseline != "loo":
            raise ValueError(f"baseline={baseline!r} must be 'loo', None or a tensor")
        if n_samples < 2:
            raise ValueError("baseline='loo' needs S >= 2 samples (log_prob of shape (S, N)); "
                             "draw more samples or pass baseline=None / an EMABaseline tensor")
        b = (r.sum(0, keepdim=True) - r) / (n_samples - 1)
    elif baseline is None:
        b = torch.zeros_like(r)
    elif isinstance(baseline, torch.Tensor):
        b = baseline.detach().to(r.dtype).expand_as(r) if baseline.dim() <= r.dim() else None
        if b is None:
            raise ValueError(f"baseline tensor {tuple(baseline.shape)} does not broadcast to {tuple(r.shape)}")
    else:
        raise TypeError(f"baseline must be 'loo', None or a tensor, got {type(baseline).__name__}")
    return -((r - b) * lp).sum() / n_samples


class EMABaseline:
    r"""Per-node exponential-moving-average baseline :math:`b_i \leftarrow \beta b_i + (1-\beta) R_i`.

    ``b = ema(reward)`` returns the baseline *before* the update (so it does not depend on the
    current sample) and then updates it with the mean reward over the samples. Use it when only
    one sample per step is drawn; RLOO (``baseline="loo"``) is preferred with S >= 2.

    Shapes: reward (N,) or (S, N) -> baseline (N,)

    Taught in: chapter 09 (chapters/09_estimators.md).
    """

    def __init__(self, num_nodes: int, decay: float = 0.9):
        self.num_nodes = _check_int(num_nodes, "num_nodes")
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay={decay!r} must lie in [0, 1)")
        self.decay = float(decay)
        self.value: torch.Tensor | None = None

    def __call__(self, reward: torch.Tensor) -> torch.Tensor:
        r = reward.detach()
        r = r.mean(0) if r.dim() == 2 else r
        if r.shape != (self.num_nodes,):
            raise ValueError(f"reward must have {self.num_nodes} entries per sample, got {tuple(reward.shape)}")
        if self.value is None:
            self.value = torch.zeros_like(r)
            out = self.value.clone()
            self.value = r.clone()   # first call: baseline 0, then initialise with the rewards
            return out
        out = self.value.clone()
        self.value = self.decay * self.value + (1 - self.decay) * r
        return out


@register_estimator("gumbel_reinforce", needs_dense=False, stochastic=True)
def gumbel_reinforce_estimator(scores: torch.Tensor, k: int, tau: float = 1.0, *, exclude_self: bool = False,
                               generator: torch.Generator | None = None, tau_noise: float | None = None,
                               noise_rel: float = 0.1, sample: bool | None = None) -> Selection:
    r"""Gumbel top-k sampling with a score-function gradient (Kool et al., 2019; REINFORCE, Williams 1992; seed 003).

    Forward (training): a Plackett–Luce sample of k neighbours per row,

    .. math::
        (j_1,\dots,j_k) = \operatorname{topk}(\theta + \tau_g G),\quad G\sim\mathrm{Gumbel}(0,1)
        \quad\Longleftrightarrow\quad \text{PL}(\mathrm{softmax}(\theta/\tau_g))

    ``dense`` is the hard 0/1 mask, **without** pathwise gradient, and ``weights`` are ones. The
    gradient reaches θ only through the score function: the returned Selection carries
    ``sel.log_prob`` (N,) = :func:`plackett_luce_log_prob` of θ/τ_g at the sample, differentiable,
    to be used as ``loss + reinforce_surrogate(sel.log_prob, reward, baseline)`` with per-node
    rewards (e.g. ``-nll_i`` on labelled nodes) and an RLOO baseline over S samples (stack the
    log-probs of S calls). ``sel.theta`` holds θ/τ_g. Evaluation: the hard top-k of θ (the mode of the
    distribution). ``sample=None`` (default) samples exactly when ``torch.is_grad_enabled()``
    (training step yes, evaluation under ``torch.no_grad()`` no); ``True``/``False`` force it.

    Scale: :math:`\tau_{g,i} = \texttt{noise\_rel}\cdot s_i` (default 0.1 row standard deviations:
    on the digits about 75 % of the sampled neighbours are in the hard top-10),
    or ``tau_noise=`` absolute. τ_g is computed without gradient: the policy at this step is
    PL(θ/τ_g) with τ_g a constant. Unbiased for the stochastic graph (up to the per-node credit
    assignment of :func:`reinforce_surrogate`); high variance without a baseline. Contrast with
    DGM (Kazi et al., 2022), whose "log-probs" are unnormalised logits (no log-partition) and whose
    graph branch is detached. Does not need the dense GCN path.

    Shapes: scores (N, M) -> indices, weights (N, k), dense (N, M), log_prob (N,).

    Taught in: chapter 09 (chapters/09_estimators.md).
    """
    theta, k = _prepare_theta(scores, k, tau, exclude_self)
    tau_noise = _check_optional_positive(tau_noise, "tau_noise")
    noise_rel = check_positive(noise_rel, "noise_rel")
    scale = tau_noise if tau_noise is not None else noise_rel * row_std(theta)
    logits = theta / scale
    if _do_sample(sample):
        g = gumbel_noise(theta.shape, dtype=theta.dtype, device=theta.device, generator=generator)
        idx = topk_indices(logits.detach() + g, k)
    else:
        idx = topk_indices(logits.detach(), k)
    dense = torch.zeros_like(theta).detach().scatter(-1, idx, 1.0)
    sel = Selection(idx, torch.ones(idx.shape, dtype=theta.dtype, device=theta.device), dense)
    sel.log_prob = plackett_luce_log_prob(logits, idx)  # type: ignore[attr-defined]
    sel.theta = logits  # type: ignore[attr-defined]
    return sel


# =========================================================================== the toy sign test

SIGN_TEST_KW: dict[str, dict] = {
    "ste": {},
    "identity": {},
    "blackbox": {},
    "imle": {"noise_rel": 1.0},
    "sigmoid": {"tau_m": 1.0},
    "capped_simplex": {"tau_m": 10.0, "steps": 60, "lr": 2.0},
    "gumbel_reinforce": {"noise_rel": 1.0, "steps": 100, "lr": 1.0},
    "blackbox_argmin_verbatim": {},
}
"""Keyword arguments of :func:`sign_test` at which each estimator recovers the target (n = 16, k = 3).

The smooth relaxations need a temperature comparable to the spread of the scores (at their
graph defaults, τ_m = 0.1–0.3 row standard deviations, targets far below the threshold get a
vanishing (sigmoid) or exactly zero (capped simplex) gradient and the toy does not converge), and
Gumbel/REINFORCE needs enough exploration (noise_rel = 1). The argmin rule fails at any setting.
"""


def sign_test(estimator: str | Callable = "ste", n: int = 16, k: int = 3, steps: int = 100, lr: float = 0.5,
              loss: str = "mse", seed: int = 0, samples: int = 8, **estimator_kw) -> dict:
    r"""Gradient descent on the scores alone must recover a target top-k set (the toy sign test).

    One row :math:`\theta\in\mathbb R^n` starts at standard-normal values; a target set T of k
    entries is drawn among the entries *not* in the initial top-k; the loss is
    :math:`\lVert m(\theta) - \mathbb 1_T\rVert^2` (``loss="mse"``) or
    :math:`-\langle m(\theta), \mathbb 1_T\rangle` (``"linear"``). A correctly signed estimator drives
    :math:`\operatorname{topk}(\theta)` to T; a sign-flipped rule does not. For
    ``gumbel_reinforce`` the loss is the expectation over ``samples`` Plackett–Luce samples,
    differentiated with :func:`reinforce_surrogate` (RLOO). ``estimator`` is a registered name,
    ``"blackbox_argmin_verbatim"`` (the pitfall) or a callable ``theta (1, n) -> dense mask (1, n)``.

    Returns a dict with ``overlap`` (list of :math:`|\operatorname{topk}(\theta)\cap T|/k` per step,
    step 0 = before any update), ``loss`` (per step), ``success`` (final overlap == 1),
    ``theta`` (final, detached) and ``target`` (indices). :data:`SIGN_TEST_KW` holds, per
    estimator, the settings at which it passes (the test suite uses them); draw the figure as the
    overlap against the step for each estimator and for ``"blackbox_argmin_verbatim"``.

    Shapes: theta (1, n) internally; ``overlap``/``loss`` lists of length steps + 1 / steps.

    Taught in: chapter 09 (chapters/09_estimators.md): the figure of the sign test.
    """
    n = _check_int(n, "n", 2)
    k = check_k(k, n)
    if 2 * k > n:
        raise ValueError(f"n={n} must be >= 2k = {2 * k} so that the target can avoid the initial top-k")
    steps = _check_int(steps, "steps", 0)
    lr = check_positive(lr, "lr")
    if loss not in ("mse", "linear"):
        raise ValueError(f"loss={loss!r} must be 'mse' or 'linear'")
    gen = torch.Generator().manual_seed(int(seed))
    theta = torch.randn(1, n, generator=gen, dtype=torch.float64)
    init = set(topk_indices(theta, k)[0].tolist())
    others = [j for j in range(n) if j not in init]
    perm = torch.randperm(len(others), generator=gen)[:k]
    target_idx = sorted(others[int(p)] for p in perm)
    target = torch.zeros(1, n, dtype=torch.float64)
    target[0, target_idx] = 1.0
    theta = theta.requires_grad_(True)

    def overlap() -> float:
        return float(topk_mask(theta.detach(), k)[0] @ target[0]) / k

    def loss_of(m):
        return ((m - target) ** 2).sum(-1) if loss == "mse" else -(m * target).sum(-1)

    name = estimator if isinstance(estimator, str) else getattr(estimator, "__name__", "callable")
    hist_overlap, hist_loss = [overlap()], []
    for _ in range(steps):
        if name == "gumbel_reinforce":
            rows = theta.expand(samples, n)
            sel = get_estimator("gumbel_reinforce")(rows, k, 1.0, generator=gen, **estimator_kw)
            value = loss_of(sel.dense)                                            # (S,)
            obj = reinforce_surrogate(sel.log_prob.unsqueeze(1), -value.unsqueeze(1), "loo")
            cur = float(value.mean())
        else:
            if name == "blackbox_argmin_verbatim":
                m = blackbox_argmin_verbatim(theta, k, **estimator_kw)
            elif isinstance(estimator, str):
                m = get_estimator(estimator)(theta, k, 1.0, generator=gen, **estimator_kw).dense
                if m is None:
                    raise ValueError(f"estimator {estimator!r} has no dense mask: the sign test needs a selection estimator")
            else:
                m = estimator(theta)
            obj = loss_of(m).sum()
            cur = float(obj.detach())
        theta.grad = None
        obj.backward()
        with torch.no_grad():
            theta -= lr * theta.grad
        hist_overlap.append(overlap())
        hist_loss.append(cur)
    return {"estimator": name, "overlap": hist_overlap, "loss": hist_loss, "success": hist_overlap[-1] == 1.0,
            "theta": theta.detach()[0], "target": target_idx}
