r"""The toy sign test: gradient descent on the scores alone must recover a target top-k set.

Taught in: chapter 09 (chapters/09_estimators_3_stochastic.md).
"""
from __future__ import annotations

from typing import Callable

import torch

from .._checks import check_int, check_k, check_positive
from ._common import topk_indices, topk_mask
from ._perturbed import blackbox_argmin_verbatim
from ._registry import get_estimator
from ._reinforce import reinforce_surrogate


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

    One row :math:`{z}\in\mathbb R^n` starts at standard-normal values; a target set T of k
    entries is drawn among the entries *not* in the initial top-k; the loss is
    :math:`\lVert m({z}) - \mathbb 1_T\rVert^2` (``loss="mse"``) or
    :math:`-\langle m({z}), \mathbb 1_T\rangle` (``"linear"``). A correctly signed estimator drives
    :math:`\operatorname{topk}({z})` to T; a sign-flipped rule does not. For
    ``gumbel_reinforce`` the loss is the expectation over ``samples`` Plackett–Luce samples,
    differentiated with :func:`reinforce_surrogate` (RLOO). ``estimator`` is a registered name,
    ``"blackbox_argmin_verbatim"`` (the pitfall) or a callable ``theta (1, n) -> dense mask (1, n)``.

    Returns a dict with ``overlap`` (list of :math:`|\operatorname{topk}({z})\cap T|/k` per step,
    step 0 = before any update), ``loss`` (per step), ``success`` (final overlap == 1),
    ``theta`` (final, detached) and ``target`` (indices). :data:`SIGN_TEST_KW` holds, per
    estimator, the settings at which it passes (the test suite uses them); draw the figure as the
    overlap against the step for each estimator and for ``"blackbox_argmin_verbatim"``.

    Shapes: theta (1, n) internally; ``overlap``/``loss`` lists of length steps + 1 / steps.

    Taught in: chapter 09 (chapters/09_estimators_3_stochastic.md): the figure of the sign test.
    """
    n = check_int(n, "n", 2)
    k = check_k(k, n)
    if 2 * k > n:
        raise ValueError(f"n={n} must be >= 2k = {2 * k} so that the target can avoid the initial top-k")
    steps = check_int(steps, "steps", 0)
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
