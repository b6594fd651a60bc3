r"""Straight-through (``"ste"``) and identity with projection (``"identity"``, Sahoo et al., 2023).

Taught in: chapter 09 (chapters/09_estimators_2_deterministic.md).
"""
from __future__ import annotations

import torch

from .._checks import check_number
from ._common import _do_sample, _prepare_theta, _selection, _topk_indices_mask, row_std
from ._noise import sum_of_gamma_noise
from ._registry import Selection, register_estimator
from ._relaxed import capped_simplex_topk, sigmoid_topk


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

    Forward: :math:`m = \operatorname{topk}({z})`, :math:`{z} = S/\tau`, hard k-hot rows.
    Backward:

    - ``surrogate=None``: identity, :math:`\partial L/\partial{z} := g` (so
      :math:`\partial L/\partial S = g/\tau`). Top-k is an argmax, so the sign is +.
    - ``surrogate="sigmoid"`` or ``"capped_simplex"``: the Jacobian of that relaxation
      (:func:`sigmoid_topk`, :func:`capped_simplex_topk` at ``tau_m``), written
      :math:`m = m_{hard} + (m_{soft} - \mathrm{sg}(m_{soft}))`, whose forward value is exactly
      :math:`m_{hard}`.

    Biased: the identity gradient has a component along :math:`\mathbf 1` (shifting a whole row
    changes nothing in top-k), which ``"identity"`` projects away. Needs the dense path.

    Shapes: scores (N, M) -> indices, weights (N, k), dense (N, M).

    Taught in: chapter 09 (chapters/09_estimators_2_deterministic.md).
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
    :math:`{z} \leftarrow {z} + \epsilon` (Sum-of-Gamma noise of temperature
    ``noise_rel``·s_i, "margin" against cost collapse; off by default; with ``sample=None`` only
    while autograd records, i.e. in training steps), then

    .. math::
        c = {z} - \bar{z}\,\mathbf 1, \qquad u = c/\lVert c\rVert, \qquad m = \operatorname{topk}(u)

    (centring and rescaling do not change the top-k, so the forward equals ``topk(θ)``).

    Backward: the solver is treated as the **identity** (:math:`\partial L/\partial u := g`; the
    paper's "negative identity" is for argmin solvers; top-k is an argmax, so +identity), and
    autograd applies the two projections:

    .. math::
        \nabla_{z} L = \Big(I - \tfrac{1}{n}\mathbf 1\mathbf 1^\top\Big)\,
        \frac{1}{\lVert c\rVert}\,\big(I - u u^\top\big)\, g

    The gradient has no component along :math:`\mathbf 1` (a shift, invisible to top-k) and none
    along :math:`c` (a rescaling, invisible too). With ``exclude_self`` the diagonal is left out of
    the mean and the norm (n = M − 1) and gets zero gradient. No hyper-parameter; needs the dense
    path.

    Shapes: scores (N, M) -> indices, weights (N, k), dense (N, M).

    Taught in: chapter 09 (chapters/09_estimators_2_deterministic.md).
    """
    theta, k = _prepare_theta(scores, k, tau, exclude_self)
    noise_rel = check_number(noise_rel, "noise_rel", 0, hint="0 switches the noise off")
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
