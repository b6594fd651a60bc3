r"""Argmax without a gradient, and three ways around it: soft-argmax, straight-through, score function.

Seed ``003_a044298e7128168f.txt`` asks how to backpropagate through an ``argmax`` that picks which
entry of another tensor to use. The index is an integer: casting with ``.long()`` detaches it, and
``.round()`` keeps a ``grad_fn`` whose derivative is zero almost everywhere. This module holds the
three standard answers, each stated with its formula and checked in ``tests/test_argmax.py``:

========================================  ==================================================================
function                                  what it computes
========================================  ==================================================================
:func:`soft_argmax`                       :math:`\sum_i i\,\mathrm{softmax}(\beta x)_i`, a real-valued "index"
:func:`straight_through_argmax`           one-hot argmax forward, softmax Jacobian backward (STE)
:func:`score_function_gradient`           REINFORCE: :math:`\nabla_\theta \mathbb E_{i\sim p_\theta}[R(i)]`
                                          from samples, with an optional baseline
:func:`exact_expected_reward_gradient`    the same gradient by enumerating the n outcomes (for checks)
:func:`score_function_ascent`             many independent training runs of the logits with that estimate,
                                          optionally with clipped gradients (seed 003's advice)
:func:`seed003_toy`                       the five-class problem of seed 003 that chapter 03 works on
========================================  ==================================================================

Symbols: n categories, S samples, ``...`` any batch shape, :math:`\theta` logits,
:math:`p = \mathrm{softmax}(\theta)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .estimators import BASELINES, reinforce_baseline
from ._checks import check_int, check_number, check_positive, check_tau, check_tensor

__all__ = [
    "soft_argmax",
    "straight_through_argmax",
    "ScoreFunctionEstimate",
    "score_function_gradient",
    "exact_expected_reward_gradient",
    "score_function_ascent",
    "ArgmaxToy",
    "seed003_toy",
]  # BASELINES stays importable from here; it is documented in bgcn.estimators


def _check_last_dim(x: torch.Tensor, name: str) -> torch.Tensor:
    check_tensor(x, name)
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"{name} must have at least one entry along its last dimension, got shape {tuple(x.shape)}")
    return x


def soft_argmax(x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    r"""Soft-argmax: the expected index under :math:`\mathrm{softmax}(\beta x)`.

    .. math::
        \operatorname{softargmax}_\beta(x) = \sum_{i=0}^{n-1} i\,
        \frac{e^{\beta x_i}}{\sum_l e^{\beta x_l}}

    Differentiable in ``x``, and it tends to ``argmax(x)`` as :math:`\beta\to\infty` when the
    maximum is unique. Two flaws the book measures: at large :math:`\beta` the softmax saturates and
    the gradient vanishes; and when two non-adjacent entries are (nearly) tied it returns a
    fractional "index" between them, which may point at an entry that is not large at all.

    Args:
        x: scores, shape (..., n), floating point.
        beta: inverse temperature :math:`\beta > 0` (seed 003 uses 100).

    Shapes:
        - x: (..., n)
        - output: (...), same dtype as x

    Taught in: chapter 03 (chapters/03_argmax_score_function_1_index.md).
    """
    _check_last_dim(x, "x")
    beta = check_positive(beta, "beta")
    p = torch.softmax(beta * x, dim=-1)
    idx = torch.arange(x.shape[-1], dtype=x.dtype, device=x.device)
    return (p * idx).sum(-1)


def straight_through_argmax(x: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    r"""Straight-through argmax: a one-hot vector forward, the softmax's gradient backward.

    .. math::
        y = \mathrm{onehot}(\arg\max_i x_i) + \left(w - \mathrm{sg}[w]\right),
        \qquad
        \frac{\partial L}{\partial x} := J_\tau^\top \frac{\partial L}{\partial y},\quad
        J_\tau = \tfrac{1}{\tau}\left(\operatorname{diag}(w) - w w^\top\right),\quad w = \mathrm{softmax}(x/\tau)

    where sg is stop-gradient (``.detach()``). Since :math:`w - \mathrm{sg}[w]` is exactly zero in
    floating point, the forward value is exactly one-hot; the backward is the gradient of the
    softmax, a *biased* surrogate (Bengio et al., 2013): it is not the derivative of the forward,
    which is zero almost everywhere. Ties go to the lowest index (``torch.argmax``).

    Args:
        x: scores, shape (..., n).
        tau: temperature of the backward softmax, :math:`\tau > 0`.

    Shapes:
        - x: (..., n)
        - output: (..., n), one-hot along the last dimension

    Taught in: chapter 03 (chapters/03_argmax_score_function_2_straight_through.md).
    """
    _check_last_dim(x, "x")
    tau = check_tau(tau)
    soft = torch.softmax(x / tau, dim=-1)
    hard = torch.zeros_like(soft).scatter_(-1, x.detach().argmax(-1, keepdim=True), 1.0)
    return hard + (soft - soft.detach())


@dataclass
class ScoreFunctionEstimate:
    r"""What :func:`score_function_gradient` returns.

    Attributes:
        grad: (..., n) the estimate of :math:`\nabla_\theta \mathbb E[R]`, the mean of ``per_sample``.
        per_sample: (S, ..., n) the terms :math:`(R(i_s) - b_s)\,\nabla_\theta \log p_\theta(i_s)`.
        samples: (S, ...) long, the sampled categories :math:`i_s`.
        rewards: (S, ...) the rewards :math:`R(i_s)`.
        baselines: (S, ...) the baseline :math:`b_s` used for each sample (zeros for ``"none"``).

    Shapes:
        - grad: (..., n); per_sample: (S, ..., n)
        - samples, rewards, baselines: (S, ...)

    Taught in: chapter 03 (chapters/03_argmax_score_function_3_score_function.md).
    """

    grad: torch.Tensor
    per_sample: torch.Tensor
    samples: torch.Tensor
    rewards: torch.Tensor
    baselines: torch.Tensor


def _check_score_function_args(logits, reward_fn, num_samples, baseline, generator) -> None:
    _check_last_dim(logits, "logits")
    if not callable(reward_fn):
        raise TypeError(f"reward_fn must be callable (indices (S, ...) -> rewards (S, ...)), got {type(reward_fn).__name__}")
    num_samples = check_int(num_samples, "num_samples", 1)
    if isinstance(baseline, str):
        if baseline not in BASELINES:
            raise ValueError(f"baseline={baseline!r} is not one of {BASELINES} or a number")
        if baseline == "loo" and num_samples < 2:
            raise ValueError("baseline='loo' needs num_samples >= 2 (the other samples form the baseline)")
    else:
        check_number(baseline, "baseline", hint=f"or one of {BASELINES}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def score_function_gradient(logits: torch.Tensor, reward_fn: Callable[[torch.Tensor], torch.Tensor],
                            num_samples: int, baseline: str | float = "none",
                            generator: torch.Generator | None = None) -> ScoreFunctionEstimate:
    r"""Score-function (REINFORCE) estimate of the gradient of an expected reward (Williams, 1992).

    For a categorical :math:`p_\theta = \mathrm{softmax}(\theta)` and any reward :math:`R` (no
    derivative of :math:`R` needed):

    .. math::
        \nabla_\theta\, \mathbb E_{i\sim p_\theta}[R(i)] = \mathbb E_{i\sim p_\theta}\!\left[R(i)\,\nabla_\theta \log p_\theta(i)\right],
        \qquad \nabla_\theta \log p_\theta(i) = e_i - p_\theta,

    estimated with S i.i.d. **samples** :math:`i_s \sim p_\theta` (not the argmax):

    .. math::
        \hat g = \frac1S \sum_{s=1}^S \left(R(i_s) - b_s\right)\left(e_{i_s} - p_\theta\right).

    Baselines :math:`b_s` (the one rule of :func:`bgcn.estimators.reinforce_baseline`; the estimate is
    minus the gradient of the surrogate :func:`bgcn.estimators.score_function_terms` with the cost
    :math:`-R`, the library's one sign convention):

    - ``"none"``: :math:`b_s = 0`. Unbiased, high variance.
    - ``"mean"``: :math:`b_s = \frac1S\sum_t R(i_t)`, the batch mean. It includes sample s itself,
      so the estimate is shrunk by exactly :math:`(S-1)/S` in expectation (biased for small S).
    - ``"loo"``: leave-one-out, :math:`b_s = \frac1{S-1}\sum_{t\ne s} R(i_t)` (Kool et al., 2019).
      Unbiased, because :math:`b_s` does not depend on :math:`i_s`; it equals the ``"mean"`` estimate
      times :math:`S/(S-1)`. Needs :math:`S \ge 2`.
    - a number: a constant baseline :math:`b_s = b`. Unbiased.

    Args:
        logits: :math:`\theta`, shape (..., n). Every leading index is an independent categorical
            (useful to draw many independent estimates at once).
        reward_fn: maps sampled categories, a long tensor of shape (S, ...), to rewards of the
            same shape (floating point). It is called once, without gradient.
        num_samples: S >= 1.
        baseline: ``"none"``, ``"mean"``, ``"loo"`` or a number.
        generator: optional ``torch.Generator`` for reproducible samples.

    Returns:
        :class:`ScoreFunctionEstimate`; ``.grad`` has the shape of ``logits`` and no autograd graph.

    Shapes:
        - logits: (..., n)
        - reward_fn: (S, ...) long -> (S, ...) float
        - grad: (..., n); per_sample: (S, ..., n); samples, rewards, baselines: (S, ...)

    Taught in: chapter 03 (chapters/03_argmax_score_function_3_score_function.md).
    """
    _check_score_function_args(logits, reward_fn, num_samples, baseline, generator)
    theta = logits.detach()
    n = theta.shape[-1]
    batch = theta.shape[:-1]
    p = torch.softmax(theta, dim=-1)
    flat = p.reshape(-1, n)
    if generator is not None and generator.device != flat.device:
        raise ValueError(f"generator is on {generator.device} but logits are on {flat.device}; use one device")
    # (B, S) -> (S, ...)
    draws = torch.multinomial(flat, num_samples, replacement=True, generator=generator)
    samples = draws.T.reshape((num_samples,) + tuple(batch))
    with torch.no_grad():
        rewards = reward_fn(samples)
    if not isinstance(rewards, torch.Tensor):
        rewards = torch.as_tensor(rewards, dtype=theta.dtype, device=theta.device)
    if rewards.shape != samples.shape:
        raise ValueError(f"reward_fn returned shape {tuple(rewards.shape)}; it must return one reward per sample, "
                         f"shape {tuple(samples.shape)}")
    rewards = check_tensor(rewards.detach(), "rewards").to(theta.dtype)

    b = reinforce_baseline(rewards, baseline, dim=0)  # the one baseline rule (bgcn.estimators._score)
    # the explicit estimate of grad E[R] (ascent on a reward): minus the gradient of the surrogate
    # bgcn.estimators.score_function_terms(log p, -R, -b), whose convention is descent on a cost
    score = torch.nn.functional.one_hot(samples, n).to(theta.dtype) - p  # (S, ..., n): grad log p(i_s)
    per_sample = (rewards - b).unsqueeze(-1) * score
    return ScoreFunctionEstimate(per_sample.mean(0), per_sample, samples, rewards, b)


def exact_expected_reward_gradient(logits: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    r"""Exact :math:`\nabla_\theta \mathbb E_{i\sim \mathrm{softmax}(\theta)}[r_i]` by enumerating the n outcomes.

    .. math::
        \mathbb E[r] = \sum_i p_i r_i, \qquad
        \nabla_\theta \mathbb E[r] = p \odot \left(r - \langle p, r\rangle\right)

    (the softmax Jacobian of seed 000 eq. (6), at :math:`\tau = 1`, applied to r). This is the
    reference that :func:`score_function_gradient` must match on average.

    Args:
        logits: :math:`\theta`, shape (..., n).
        rewards: :math:`r`, the reward of each category, shape (..., n) (broadcast against logits).

    Shapes:
        - logits, rewards: (..., n)
        - output: (..., n)

    Taught in: chapter 03 (chapters/03_argmax_score_function_3_score_function.md).
    """
    _check_last_dim(logits, "logits")
    _check_last_dim(rewards, "rewards")
    if rewards.shape[-1] != logits.shape[-1]:
        raise ValueError(f"rewards has {rewards.shape[-1]} categories but logits has {logits.shape[-1]}; "
                         "give one reward per category")
    p = torch.softmax(logits.detach(), dim=-1)
    r = rewards.detach().to(p.dtype)
    return p * (r - (p * r).sum(-1, keepdim=True))


def score_function_ascent(logits: torch.Tensor, cost: torch.Tensor, *, steps: int = 300, lr: float = 0.5,
                          num_samples: int = 8, baseline: str | float = "loo", max_grad_norm: float | None = None,
                          generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    r"""Train R independent copies of the logits by gradient ascent with the score-function estimate.

    Every run starts from its row of ``logits`` and takes ``steps`` steps

    .. math::
        \hat g = \text{score\_function\_gradient}(\theta, R = -\text{cost}),\qquad
        \hat g \leftarrow \hat g\,\min\!\Big(1, \frac{\text{max\_grad\_norm}}{\lVert\hat g\rVert}\Big),
        \qquad \theta \leftarrow \theta + \text{lr}\,\hat g

    (the clipping only when ``max_grad_norm`` is given, run by run, as
    ``torch.nn.utils.clip_grad_norm_`` does for one run). The step is proportional to the cost:
    targets and values c times larger multiply the cost, and so the step, by :math:`c^2`.
    Rescaling them back (seed 003's advice) is the run at c = 1; clipping bounds the step instead.
    All R runs are one batched call per step, so hundreds of runs cost about what one costs.

    Args:
        logits: (R, n) or (n,) the initial logits of each run.
        cost: (n,) the cost of each category (lower is better); the reward is ``-cost``.
        steps, lr: number of steps and step size.
        num_samples, baseline: S and the baseline of :func:`score_function_gradient` (``"loo"``
            needs S >= 2).
        max_grad_norm: clip each run's estimate to this norm (None: no clipping).
        generator: for reproducible samples.

    Returns:
        a dict: ``expected_cost`` (steps + 1, R), the expected cost :math:`\langle p,
        \text{cost}\rangle` before every step and after the last; ``probs`` (R, n), the final
        :math:`\mathrm{softmax}(\theta)`; ``logits`` (R, n); ``grad_norm`` (steps, R), the norm of
        each estimate before clipping; ``finite`` (R,) bool, whether the run's logits stayed finite.

    Shapes:
        - logits: (R, n) or (n,) (then R = 1); cost: (n,)
        - expected_cost: (steps + 1, R); probs, logits: (R, n); grad_norm: (steps, R); finite: (R,)

    Taught in: the Sources page (chapters/sources.md); its estimator: chapters/03_argmax_score_function.md.
    """
    _check_last_dim(logits, "logits")
    theta = logits.detach().clone().reshape(-1, logits.shape[-1])
    cost = check_tensor(cost, "cost", ndim=1).detach().to(theta.dtype)
    if cost.shape[0] != theta.shape[-1]:
        raise ValueError(f"cost has {cost.shape[0]} categories but logits has {theta.shape[-1]}; give one cost "
                         "per category")
    steps = check_int(steps, "steps", 1)
    lr = check_number(lr, "lr", 0)
    if max_grad_norm is not None:
        max_grad_norm = check_positive(max_grad_norm, "max_grad_norm")
    reward = -cost
    history, norms = [], []
    for _ in range(steps):
        history.append(torch.softmax(theta, -1) @ cost)
        g = score_function_gradient(theta, lambda i: reward[i], num_samples, baseline=baseline,
                                    generator=generator).grad
        n = g.norm(dim=-1, keepdim=True)
        norms.append(n[:, 0])
        if max_grad_norm is not None:
            g = g * (max_grad_norm / n.clamp_min(torch.finfo(g.dtype).tiny)).clamp(max=1.0)
        theta = theta + lr * g
    p = torch.softmax(theta, -1)
    history.append(p @ cost)
    return {"expected_cost": torch.stack(history), "probs": p, "logits": theta,
            "grad_norm": torch.stack(norms), "finite": torch.isfinite(theta).all(-1)}
@dataclass(frozen=True)
class ArgmaxToy:
    r"""Seed 003's one-choice problem: a classifier with logits :math:`z` picks one of n classes, and
    choosing class i costs :math:`(t - v_i)^2`, where :math:`v_i` is what a second network predicts
    for that class and t is the target.

    Attributes:
        values: (n,) :math:`v`, the second network's prediction for each class.
        target: t, a float.
        logits: (n,) :math:`z_0`, the classifier's logits before any training.
        cost: (n,) :math:`(t - v_i)^2`; ``reward`` is its negative, :math:`R(i) = -(t - v_i)^2`.

    Shapes:
        - values, logits, cost, reward: (n,)

    Taught in: chapter 03 (chapters/03_argmax_score_function.md).
    """

    values: torch.Tensor
    target: float
    logits: torch.Tensor

    @property
    def cost(self) -> torch.Tensor:
        return (self.target - self.values) ** 2

    @property
    def reward(self) -> torch.Tensor:
        return -self.cost


def seed003_toy(dtype: torch.dtype = torch.float64) -> ArgmaxToy:
    r"""The five-class toy on which every page of chapter 03 measures its estimators.

    :math:`v = (0.2, 1.5, -0.3, 0.9, 2.0)`, :math:`t = 1` and :math:`z_0 = (0.1, 0.5, -0.2, 0.0, 0.6)`:
    the classifier prefers class 4 (cost 1), the best class is 3 (cost 0.01), the worst is 2; the
    two largest logits are 0.1 apart, which sets the scale of soft-argmax's useful :math:`\beta`.

    Shapes: none in -> :class:`ArgmaxToy` with (5,) tensors of ``dtype``.

    Taught in: chapter 03 (chapters/03_argmax_score_function.md).
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.float64, got {dtype!r}")
    return ArgmaxToy(values=torch.tensor([0.2, 1.5, -0.3, 0.9, 2.0], dtype=dtype), target=1.0,
                     logits=torch.tensor([0.1, 0.5, -0.2, 0.0, 0.6], dtype=dtype))
