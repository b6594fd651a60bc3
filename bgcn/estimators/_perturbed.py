r"""Blackbox differentiation (``"blackbox"``) and I-MLE (``"imle"``), and the argmin-written rule copied verbatim (the pitfall).

Taught in: chapter 09 (chapters/09_estimators_2_deterministic.md, chapters/09_estimators_3_stochastic.md).
"""
from __future__ import annotations

import math

import torch

from .._checks import check_int, check_k, check_optional_positive, check_positive
from ._common import (_do_sample, _prepare_theta, _safe_rms, _selection,
                      _topk_indices_mask, row_std, topk_mask)
from ._noise import sum_of_gamma_noise
from ._registry import Selection, register_estimator


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

    Taught in: chapter 09 (chapters/09_estimators_2_deterministic.md).
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
    return check_optional_positive(lam, "lam"), check_positive(lam_rel, "lam_rel")


def _check_state(state) -> PerturbationState | None:
    if state is not None and not isinstance(state, PerturbationState):
        raise TypeError(f"state must be a bgcn.estimators.PerturbationState or None, got {type(state).__name__}")
    return state


@register_estimator("blackbox", needs_dense=True)
def blackbox_estimator(scores: torch.Tensor, k: int, tau: float = 1.0, *, exclude_self: bool = False,
                       generator: torch.Generator | None = None, lam: float | None = None, lam_rel: float = 1.0,
                       state: PerturbationState | None = None) -> Selection:
    r"""Blackbox differentiation of the top-k solver (Vlastelica, Paulus, Musil, Martius & Rolínek, ICLR 2020, arXiv 1912.02175), **argmax form**.

    Forward :math:`m = \operatorname{topk}({z})`. Backward: solve once more on scores moved
    against the gradient and return the finite difference

    .. math::
        m_\lambda = \operatorname{topk}({z} - \lambda g), \qquad \nabla_{z} L = (m - m_\lambda)/\lambda .

    It is the gradient of a piecewise-linear interpolation of :math:`L({z})`. The paper (and
    ``blackbox-backprop``) is written for argmin solvers: :math:`w' = w + \lambda g`,
    :math:`\nabla_w = -(y - y_\lambda)/\lambda`; with :math:`w = -{z}` this is the rule above.
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

    Taught in: chapter 09 (chapters/09_estimators_2_deterministic.md).
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
    temperature :math:`\tau_{noise}`), :math:`m = \operatorname{topk}({z}+\epsilon)`: a hard
    sample. Evaluation: :math:`m = \operatorname{topk}({z})`. ``sample=None`` (default) samples
    exactly when autograd is recording (``torch.is_grad_enabled()``), so a training step samples and
    an evaluation under ``torch.no_grad()`` does not; ``True``/``False`` force it.

    Backward with the **same** noise (the perturbation-based implicit differentiation target,
    α = 1, β = λ):

    .. math::
        m' = \operatorname{topk}({z} + \epsilon - \lambda g), \qquad
        \nabla_{z} L = (m - m') \,/\, \lambda\ \ (\texttt{scale=True})

    ``symmetric=True``: :math:`\tfrac12(\operatorname{topk}({z}+\epsilon+\lambda g) - \operatorname{topk}({z}+\epsilon-\lambda g))`
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

    Taught in: chapter 09 (chapters/09_estimators_3_stochastic.md).
    """
    theta, k = _prepare_theta(scores, k, tau, exclude_self)
    lam, lam_rel = _check_lam(lam, lam_rel)
    tau_noise = check_optional_positive(tau_noise, "tau_noise")
    noise_rel = check_positive(noise_rel, "noise_rel")
    s = check_int(s, "s", 1)
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
        y_\lambda = \operatorname{topk}({z} + \lambda g), \qquad \nabla_{z} L := -(y - y_\lambda)/\lambda .

    :math:`{z}+\lambda g` *raises* the scores whose increase hurts the loss, so
    :math:`y_\lambda` swaps chosen good entries for unchosen bad ones, and the gradient only ever
    reinforces the current selection: descent never changes it (:func:`sign_test` shows it stuck).
    Never use it; :func:`blackbox_estimator` is the correct (argmax) rule.

    Shapes: theta (N, M) -> dense mask (N, M).

    Taught in: chapter 09 (chapters/09_estimators_3_stochastic.md).
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
