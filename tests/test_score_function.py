"""One score-function surrogate with one sign convention (bgcn.estimators._score).

Convention: score_function_terms(log p, L, b) = sg(L - b) * log p, whose gradient (L - b) * grad log p
estimates grad E[L]: minimising it descends the expected cost. The three helpers that had their own
signs (model.score_function_surrogate: a loss; estimators.reinforce_surrogate: a reward;
argmax.score_function_gradient: an explicit ascent estimate) agree with it, bit for bit with what
they computed before.
"""
from __future__ import annotations

import pytest
import torch

from bgcn.argmax import score_function_gradient
from bgcn.estimators import (reinforce_baseline, reinforce_surrogate, score_function_surrogate,
                             score_function_terms)
from bgcn.model import score_function_surrogate as model_surrogate


def _old_model_surrogate(log_prob, node_loss, mask, reward="node", baseline="loo"):
    ell = node_loss.detach().to(log_prob.dtype)
    if reward == "node":
        r = ell[mask]
        m = r.numel()
        if baseline == "loo":
            b = (r.sum() - r) / (m - 1) if m > 1 else torch.zeros_like(r)
        elif baseline == "mean":
            b = r.mean()
        elif baseline == "none":
            b = 0.0
        else:
            b = float(baseline)
        return ((r - b) * log_prob[mask]).mean()
    b = 0.0 if baseline == "none" else float(baseline)
    return (ell[mask].mean() - b) * log_prob.sum()


def _old_reinforce(log_prob, reward, baseline="loo"):
    r = reward.detach()
    if r.dim() == 1:
        r, lp = r.unsqueeze(0), log_prob.unsqueeze(0)
    else:
        lp = log_prob
    s = r.shape[0]
    if baseline == "loo":
        b = (r.sum(0, keepdim=True) - r) / (s - 1)
    elif baseline is None:
        b = torch.zeros_like(r)
    else:
        b = baseline.detach().to(r.dtype).expand_as(r)
    return -((r - b) * lp).sum() / s


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(12, dtype=torch.float64, generator=g).requires_grad_(True)
    loss = torch.rand(12, dtype=torch.float64, generator=g)
    mask = torch.rand(12, generator=g) < 0.6
    mask[0] = True
    return lp, loss, mask


@pytest.mark.parametrize("reward,baseline", [("node", "loo"), ("node", "mean"), ("node", "none"), ("node", 0.3),
                                             ("global", "none"), ("global", 0.25)])
def test_sampled_graph_surrogate_is_the_old_one_bit_for_bit(data, reward, baseline):
    lp, loss, mask = data
    new = score_function_surrogate(lp, loss, mask, reward, baseline)
    old = _old_model_surrogate(lp, loss, mask, reward, baseline)
    assert torch.equal(new, old)
    assert torch.equal(torch.autograd.grad(new, lp)[0], torch.autograd.grad(old, lp)[0])
    assert torch.equal(model_surrogate(lp, loss, mask, reward, baseline), new)


def test_sampled_graph_surrogate_refuses(data):
    lp, loss, mask = data
    with pytest.raises(ValueError, match="meaningless"):
        score_function_surrogate(lp, loss, mask, "global", "loo")
    with pytest.raises(ValueError, match="'loo', 'mean', 'none' or a number"):
        score_function_surrogate(lp, loss, mask, "node", "median")
    with pytest.raises(ValueError, match="no node"):
        score_function_surrogate(lp, loss, torch.zeros_like(mask))


@pytest.mark.parametrize("baseline", ["loo", None, "tensor"])
def test_reinforce_surrogate_is_the_old_one_bit_for_bit(baseline):
    g = torch.Generator().manual_seed(1)
    lp = torch.randn(4, 9, dtype=torch.float64, generator=g).requires_grad_(True)
    reward = torch.randn(4, 9, dtype=torch.float64, generator=g)
    b = torch.randn(9, dtype=torch.float64, generator=g) if baseline == "tensor" else baseline
    new, old = reinforce_surrogate(lp, reward, b), _old_reinforce(lp, reward, b)
    assert torch.equal(new, old)
    assert torch.equal(torch.autograd.grad(new, lp)[0], torch.autograd.grad(old, lp)[0])


def test_one_sign_convention():
    """A reward R is the cost -R: the three helpers give the same gradient for the same sample."""
    g = torch.Generator().manual_seed(2)
    theta = torch.randn(5, dtype=torch.float64, generator=g)
    rewards = torch.tensor([0.3, -1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    est = score_function_gradient(theta, lambda i: rewards[i], num_samples=6, baseline="loo", generator=g)
    # rebuild the same estimate from the surrogate: minus its gradient is the ascent direction of E[R]
    th = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(th, -1)[est.samples]                              # (S,)
    terms = score_function_terms(logp, -est.rewards, -reinforce_baseline(est.rewards, "loo"))
    (grad_cost,) = torch.autograd.grad(terms.mean(), th)
    torch.testing.assert_close(-grad_cost, est.grad, rtol=0, atol=1e-14)
    # reinforce_surrogate (rewards, a minimiser's surrogate) has the same gradient
    sur = reinforce_surrogate(torch.log_softmax(th, -1)[est.samples][:, None], est.rewards[:, None], "loo")
    (g2,) = torch.autograd.grad(sur, th)
    torch.testing.assert_close(g2, grad_cost, rtol=0, atol=1e-14)


def test_reinforce_baseline_rules():
    v = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 1.0]], dtype=torch.float64)
    assert torch.equal(reinforce_baseline(v, "none"), torch.zeros_like(v))
    assert torch.equal(reinforce_baseline(v, None), torch.zeros_like(v))
    assert torch.equal(reinforce_baseline(v, "mean"), v.mean(0, keepdim=True).expand_as(v))
    assert torch.equal(reinforce_baseline(v, "loo"), torch.tensor([[4.0, 3.5], [3.0, 1.5], [2.0, 4.0]],
                                                                   dtype=torch.float64))
    assert torch.equal(reinforce_baseline(v[:1], "loo"), torch.zeros_like(v[:1]))
    assert torch.equal(reinforce_baseline(v, 0.5), torch.full_like(v, 0.5))
    with pytest.raises(ValueError, match="baseline"):
        reinforce_baseline(v, "median")
    with pytest.raises(TypeError, match="baseline"):
        reinforce_baseline(v, True)
