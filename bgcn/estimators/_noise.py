r"""Noise for perturbed and sampled top-k: Gumbel and I-MLE's Sum-of-Gamma.

Taught in: chapter 09 (chapters/09_estimators_3_stochastic.md); the Gumbel-max trick in chapter 03.
"""
from __future__ import annotations

import math

import torch

from .._checks import check_int, check_positive


EULER_GAMMA = 0.5772156649015329
"""Mean of the standard Gumbel distribution (its variance is π²/6 ≈ 1.645)."""


def gumbel_noise(shape, *, dtype: torch.dtype = torch.float32, device=None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Standard Gumbel(0, 1) samples :math:`G = -\log(-\log U)`, :math:`U\sim\mathcal U(0,1)`.

    U is clamped to :math:`[\text{tiny}, 1-\epsilon]` of its dtype, so :math:`\log 0` never occurs:
    the NaNs that ``F.gumbel_softmax`` once produced (pytorch/pytorch #22442, #101620) came from an
    exponential sample of exactly 0. Mean :math:`\gamma\approx0.5772`, variance :math:`\pi^2/6`.

    Shapes:
        - output: ``shape``

    Taught in: chapter 09 (chapters/09_estimators_3_stochastic.md); the Gumbel-max trick in chapter 03.
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

    Taught in: chapter 09 (chapters/09_estimators_3_stochastic.md).
    """
    k = check_int(k, "k", 1)
    s = check_int(s, "s", 1)
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
