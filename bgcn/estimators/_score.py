r"""The score function (REINFORCE, Williams 1992), written once, with one sign convention.

For a sample :math:`z \sim p_{z}` with a *cost* :math:`L(z)` (lower is better: a loss), the
surrogate of this module is

.. math::
    \mathcal S = \operatorname{sg}\big(L(z) - b\big)\,\log p_{z}(z),
    \qquad \mathbb E[\nabla_{z} \mathcal S] = \mathbb E\big[(L - b)\,\nabla_{z} \log p_{z}\big]
    = \nabla_{z}\, \mathbb E_{z\sim p_{z}}[L]

(:math:`\operatorname{sg}` = stop-gradient), so **adding it to the loss and minimising descends the
expected cost**, for any baseline :math:`b` that does not depend on the sample it multiplies.
A *reward* R (higher is better) is the cost :math:`-R`. Every score-function helper of the library
reduces to these two functions: :func:`reinforce_baseline` (one rule for the baselines) and
:func:`score_function_terms` (one sign): :func:`score_function_surrogate` (a sampled graph, loss per
labelled node), :func:`bgcn.estimators.reinforce_surrogate` (rewards over S samples) and
:func:`bgcn.argmax.score_function_gradient` (chapter 03's explicit estimate of
:math:`\nabla\mathbb E[R]`).

Taught in: chapter 03 (chapters/03_argmax_score_function_3_score_function.md), chapter 08 and chapter 09.
"""
from __future__ import annotations

import torch

from .._checks import check_number, check_tensor

__all__ = ["BASELINES", "reinforce_baseline", "score_function_terms", "score_function_surrogate"]

#: the named baselines of :func:`reinforce_baseline` (besides a number or a tensor)
BASELINES = ("none", "mean", "loo")


def reinforce_baseline(values: torch.Tensor, baseline: str | float | torch.Tensor | None = "none",
                       dim: int = 0) -> torch.Tensor:
    r"""The baseline :math:`b` of every entry of ``values`` (costs or rewards), detached.

    Along ``dim`` (the samples, or the nodes that share one pool of rewards), with n entries:

    - ``"none"`` / ``None``: :math:`b = 0`;
    - ``"mean"``: :math:`b = \frac1n\sum_t v_t` — it contains the entry itself, so the estimate
      shrinks by :math:`(n-1)/n` in expectation (biased; kept for comparison);
    - ``"loo"``: leave-one-out, :math:`b_s = \frac1{n-1}\sum_{t\ne s} v_t` (0 when n = 1): unbiased,
      since :math:`b_s` does not depend on entry s (Kool et al., 2019);
    - a number: :math:`b = c`; a tensor: broadcast to ``values``.

    Shapes:
        - values: any shape with ``dim``
        - output: the shape of ``values``

    Taught in: chapter 03 (chapters/03_argmax_score_function_3_score_function.md).
    """
    v = values.detach()
    if baseline is None or (isinstance(baseline, str) and baseline == "none"):
        return torch.zeros_like(v)
    if isinstance(baseline, str):
        if baseline == "mean":
            return v.mean(dim, keepdim=True).expand_as(v)
        if baseline == "loo":
            n = v.shape[dim]
            return (v.sum(dim, keepdim=True) - v) / (n - 1) if n > 1 else torch.zeros_like(v)
        raise ValueError(f"baseline={baseline!r} must be one of {BASELINES}, a number or a tensor")
    if isinstance(baseline, torch.Tensor):
        return baseline.detach().to(v.dtype).expand_as(v)
    return torch.full_like(v, check_number(baseline, "baseline", hint=f"or one of {BASELINES}, or a tensor"))


def score_function_terms(log_prob: torch.Tensor, cost: torch.Tensor,
                         baseline: torch.Tensor | float = 0.0) -> torch.Tensor:
    r"""Surrogate terms :math:`\operatorname{sg}(L - b)\,\log p`, entry by entry (the one sign convention).

    Their gradient is :math:`(L - b)\,\nabla\log p`, an estimate of :math:`\nabla\mathbb E[L]`:
    minimise (the sum or mean of) them together with the loss. ``cost`` is a loss (lower is
    better); pass ``-reward`` for a reward. The value itself is meaningless.

    Shapes:
        - log_prob: any; cost, baseline: broadcastable to it
        - output: the broadcast shape

    Taught in: chapter 09 (chapters/09_estimators_3_stochastic.md).
    """
    return (cost - baseline).detach() * log_prob


def _check_node_inputs(log_prob, node_loss, mask, reward) -> None:
    check_tensor(log_prob, "log_prob", ndim=1, finite=False)
    if reward not in ("node", "global"):
        raise ValueError(f"reward={reward!r} must be 'node' or 'global'")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != log_prob.shape:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(log_prob.shape)} (the labelled nodes)")
    if not bool(mask.any()):
        raise ValueError("mask selects no node: the score-function surrogate needs at least one labelled node")
    if not isinstance(node_loss, torch.Tensor) or node_loss.shape != log_prob.shape:
        raise ValueError(f"node_loss must be a tensor of shape {tuple(log_prob.shape)} (one loss per node, like "
                         f"log_prob), got {tuple(node_loss.shape) if isinstance(node_loss, torch.Tensor) else type(node_loss).__name__}")


def score_function_surrogate(log_prob: torch.Tensor, node_loss: torch.Tensor, mask: torch.Tensor,
                             reward: str = "node", baseline: str | float = "loo") -> torch.Tensor:
    r"""Score-function surrogate for a *sampled* graph, to be added to the loss (chapters 08, 09).

    A stochastic estimator (e.g. ``gumbel_reinforce``) that samples node i's neighbour set with
    log-probability :math:`\log p_i` puts it in ``KNNGraph.info["log_prob"]`` (N,). The training
    loop adds

    .. math::
        \mathcal L_\text{sf} = \frac{1}{|M|}\sum_{i\in M} \operatorname{sg}(R_i - b_i)\,\log p_i
        \quad(\texttt{reward="node"}),\qquad
        \mathcal L_\text{sf} = \operatorname{sg}(R - b)\,\sum_{i=1}^{N} \log p_i
        \quad(\texttt{reward="global"}),

    with the cost convention of :func:`score_function_terms` (the "reward" R is the detached
    loss; minimising descends its expectation). ``"global"``: the sampled graph has
    log-probability :math:`\sum_i \log p_i` (rows are sampled independently) and is credited with
    the mean labelled loss R; :math:`b` is ``"none"`` (0) or a float (e.g. a moving average);
    ``"loo"`` and ``"mean"`` are refused (one reward has no other to compare with). ``"node"``:
    labelled node i's choice is credited with its own loss :math:`R_i = \ell_i` (lower variance;
    unlabelled nodes' choices get no signal), with the baseline of :func:`reinforce_baseline` over
    the labelled nodes: ``"loo"`` (default, unbiased when :math:`R_i` depends on node i's choice
    only), ``"mean"`` (biased, for comparison), ``"none"`` or a number.

    With rewards that couple nodes (message passing) the per-node credit drops the cross terms
    :math:`R_j\nabla\log p_i`: lower variance, biased; ``"global"`` keeps them.

    Shapes:
        - log_prob: (N,)
        - node_loss: (N,) per-node loss (only entries in ``mask`` are used)
        - mask: (N,) bool, the labelled nodes M
        - output: () scalar

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md); used in chapter 09.
    """
    _check_node_inputs(log_prob, node_loss, mask, reward)
    ell = node_loss.detach().to(log_prob.dtype)
    if reward == "node":
        if isinstance(baseline, str) and baseline not in BASELINES:
            raise ValueError(f"baseline={baseline!r} must be 'loo', 'mean', 'none' or a number")
        if not isinstance(baseline, str):
            baseline = check_number(baseline, "baseline", hint="or one of 'loo', 'mean', 'none'")
        r = ell[mask]
        return score_function_terms(log_prob[mask], r, reinforce_baseline(r, baseline)).mean()
    if baseline in ("mean", "loo"):
        raise ValueError(f"baseline={baseline!r} is meaningless with one global reward (it cancels the signal); "
                         f"pass 'none' or a float such as a moving average of past losses")
    b = 0.0 if isinstance(baseline, str) and baseline == "none" else \
        check_number(baseline, "baseline", hint="or 'none', for reward='global'")
    return score_function_terms(log_prob.sum(), ell[mask].mean(), b)
