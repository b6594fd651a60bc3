"""Tests of bgcn.argmax (chapter 03): soft-argmax, straight-through argmax, score-function estimator."""
from __future__ import annotations

import math

import pytest
import torch

from bgcn.argmax import (exact_expected_reward_gradient, score_function_gradient, soft_argmax,
                         straight_through_argmax)
from bgcn.topk import softmax_jacobian

D = torch.float64


def _toy(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, generator=g, dtype=D)
    rewards = torch.randn(n, generator=g, dtype=D) + 2.0  # offset: a baseline then matters
    return logits, rewards


# ------------------------------------------------------------------ .round() / .long()

def test_rounding_gives_no_gradient_the_straight_through_argmax_does():
    # chapter 03: .round() has derivative 0 and .long() cuts the graph, so a rounded soft-argmax
    # trains nothing; bgcn's straight-through argmax has the same (exact) one-hot forward and a
    # non-zero gradient: the softmax Jacobian, computed here by hand
    x = torch.tensor([0.3, 1.7, 2.2, -0.4], dtype=D, requires_grad=True)
    (g_round,) = torch.autograd.grad(soft_argmax(x, 50.0).round(), x)
    assert torch.equal(g_round, torch.zeros_like(g_round))
    assert soft_argmax(x, 50.0).long().grad_fn is None
    y = straight_through_argmax(x, 0.5)
    assert y.detach().tolist() == [0.0, 0.0, 1.0, 0.0]
    v = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=D)
    (g_st,) = torch.autograd.grad(y, x, v)
    w = torch.softmax(x.detach() / 0.5, -1)
    torch.testing.assert_close(g_st, w * (v - (w * v).sum()) / 0.5, rtol=0, atol=1e-14)
    assert float(g_st.abs().min()) > 0


# ------------------------------------------------------------------ soft-argmax

def test_soft_argmax_formula_and_limit():
    x = torch.tensor([0.1, 0.9, 0.3, -0.2], dtype=D)
    p = torch.softmax(2.0 * x, -1)
    assert torch.allclose(soft_argmax(x, 2.0), (p * torch.arange(4, dtype=D)).sum())
    errs = [abs(float(soft_argmax(x, b)) - 1.0) for b in (1.0, 10.0, 100.0, 1000.0)]
    assert errs == sorted(errs, reverse=True)
    assert errs[-1] < 1e-12


def test_soft_argmax_batch_shape_and_gradcheck():
    x = torch.randn(3, 2, 5, dtype=D, requires_grad=True)
    assert soft_argmax(x, 1.5).shape == (3, 2)
    assert torch.autograd.gradcheck(lambda t: soft_argmax(t, 1.5), (x,))


def test_soft_argmax_saturates_and_returns_between_modes():
    x = torch.tensor([1.0, 0.0, 0.2, 0.0, 0.5], dtype=D, requires_grad=True)
    (g,) = torch.autograd.grad(soft_argmax(x, 100.0), x)
    assert float(g.abs().max()) < 1e-15  # gap 0.5 at beta=100: exp(-50)
    tie = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0], dtype=D)
    assert float(soft_argmax(tie, 100.0)) == pytest.approx(2.0)  # points at an entry with x = 0


@pytest.mark.parametrize("bad, err", [
    (dict(x=[0.0, 1.0]), TypeError), (dict(x=torch.tensor([1, 2])), TypeError),
    (dict(x=torch.tensor([0.0, float("nan")])), ValueError), (dict(x=torch.zeros(3, 0)), ValueError),
    (dict(beta=0.0), ValueError), (dict(beta=-1.0), ValueError), (dict(beta="big"), TypeError),
])
def test_soft_argmax_bad_input(bad, err):
    kw = dict(x=torch.zeros(3), beta=1.0)
    kw.update(bad)
    with pytest.raises(err):
        soft_argmax(kw["x"], kw["beta"])


# ------------------------------------------------------------------ straight-through argmax

@pytest.mark.parametrize("tau", [0.3, 1.0, 4.0])
def test_straight_through_forward_onehot_backward_softmax_jacobian(tau):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=g, dtype=D, requires_grad=True)
    y = straight_through_argmax(x, tau)
    expected = torch.nn.functional.one_hot(x.argmax(-1), 6).to(D)
    assert torch.equal(y.detach(), expected)  # exactly one-hot
    v = torch.randn(4, 6, generator=g, dtype=D)
    (gx,) = torch.autograd.grad(y, x, v)
    J = softmax_jacobian(torch.softmax(x.detach() / tau, -1), tau)  # (4, 6, 6), symmetric
    assert torch.allclose(gx, (J.transpose(-1, -2) @ v.unsqueeze(-1)).squeeze(-1), atol=1e-13)


def test_straight_through_ties_lowest_index_and_bad_input():
    y = straight_through_argmax(torch.tensor([2.0, 5.0, 5.0]))
    assert y.tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError):
        straight_through_argmax(torch.zeros(3), tau=0.0)
    with pytest.raises(TypeError):
        straight_through_argmax([1.0, 2.0])


# ------------------------------------------------------------------ score function

def test_exact_gradient_matches_autograd_of_expectation():
    logits, r = _toy(7)
    th = logits.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((torch.softmax(th, -1) * r).sum(), th)
    assert torch.allclose(exact_expected_reward_gradient(logits, r), g, atol=1e-14)
    # batch broadcast
    L = torch.stack([logits, 2 * logits])
    assert exact_expected_reward_gradient(L, r).shape == (2, 7)


def test_per_sample_term_equals_autograd_of_categorical_log_prob():
    logits, r = _toy(5)
    g = torch.Generator().manual_seed(3)
    est = score_function_gradient(logits, lambda i: r[i], 8, generator=g)
    for s in range(8):
        th = logits.clone().requires_grad_(True)
        lp = torch.distributions.Categorical(logits=th).log_prob(est.samples[s])
        (gs,) = torch.autograd.grad(r[est.samples[s]] * lp, th)
        assert torch.allclose(est.per_sample[s], gs, atol=1e-14)
    assert torch.allclose(est.grad, est.per_sample.mean(0))


@pytest.mark.parametrize("baseline", ["none", "loo", 1.5])
def test_score_function_unbiased(baseline):
    logits, r = _toy(5)
    exact = exact_expected_reward_gradient(logits, r)
    reps, S = 20000, 4
    g = torch.Generator().manual_seed(0)
    est = score_function_gradient(logits.expand(reps, 5), lambda i: r[i], S, baseline=baseline, generator=g)
    mean = est.grad.mean(0)
    se = est.grad.std(0) / math.sqrt(reps)
    assert bool(((mean - exact).abs() <= 5 * se + 1e-12).all()), (mean, exact, se)


def test_mean_baseline_is_shrunk_by_s_minus_one_over_s_and_loo_rescales_it():
    logits, r = _toy(5)
    exact = exact_expected_reward_gradient(logits, r)
    reps, S = 40000, 2
    g = torch.Generator().manual_seed(5)
    est = score_function_gradient(logits.expand(reps, 5), lambda i: r[i], S, baseline="mean", generator=g)
    mean = est.grad.mean(0)
    se = est.grad.std(0) / math.sqrt(reps)
    assert bool(((mean - exact * (S - 1) / S).abs() <= 5 * se + 1e-12).all())
    # same samples: loo == mean * S/(S-1)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    a = score_function_gradient(logits, lambda i: r[i], 6, baseline="mean", generator=g1)
    b = score_function_gradient(logits, lambda i: r[i], 6, baseline="loo", generator=g2)
    assert torch.equal(a.samples, b.samples)
    assert torch.allclose(b.grad, a.grad * 6 / 5, atol=1e-14)


def test_baseline_reduces_variance():
    logits, r = _toy(5)
    reps = 4000
    var = {}
    for bl in ("none", "loo"):
        g = torch.Generator().manual_seed(11)
        est = score_function_gradient(logits.expand(reps, 5), lambda i: r[i], 8, baseline=bl, generator=g)
        var[bl] = float(est.grad.var(0).sum())
    assert var["loo"] < 0.5 * var["none"], var


def test_variance_falls_like_one_over_s():
    logits, r = _toy(5)
    v = []
    for S in (2, 32):
        g = torch.Generator().manual_seed(2)
        est = score_function_gradient(logits.expand(4000, 5), lambda i: r[i], S, generator=g)
        v.append(float(est.grad.var(0).sum()))
    assert 8 < v[0] / v[1] < 32  # ideal ratio 16


def test_score_function_reproducible_with_generator():
    logits, r = _toy(5)
    a = score_function_gradient(logits, lambda i: r[i], 10, generator=torch.Generator().manual_seed(4))
    b = score_function_gradient(logits, lambda i: r[i], 10, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.grad, b.grad) and a.grad.shape == (5,) and a.samples.shape == (10,)


@pytest.mark.parametrize("kw, err", [
    (dict(num_samples=0), ValueError), (dict(num_samples=2.0), TypeError),
    (dict(baseline="median"), ValueError), (dict(baseline="loo", num_samples=1), ValueError),
    (dict(baseline=[1.0]), TypeError), (dict(reward_fn=3), TypeError),
    (dict(reward_fn=lambda i: torch.zeros(2)), ValueError), (dict(generator=5), TypeError),
    (dict(logits=torch.tensor([1, 2, 3])), TypeError), (dict(logits=torch.tensor([0.0, float("inf")])), ValueError),
])
def test_score_function_bad_input(kw, err):
    args = dict(logits=torch.zeros(3, dtype=D), reward_fn=lambda i: i.to(D), num_samples=4, baseline="none",
                generator=None)
    args.update(kw)
    with pytest.raises(err):
        score_function_gradient(**args)


def test_exact_gradient_bad_input():
    with pytest.raises(ValueError):
        exact_expected_reward_gradient(torch.zeros(3), torch.zeros(4))
    with pytest.raises(TypeError):
        exact_expected_reward_gradient([0.0, 1.0], torch.zeros(2))


def test_soft_argmax_gradient_formula_eq_ch03_softargmax():
    x = torch.tensor([0.1, 0.5, -0.2, 0.0, 0.6], dtype=D, requires_grad=True)
    for beta in (0.5, 3.0, 20.0):
        (g,) = torch.autograd.grad(soft_argmax(x, beta), x)
        w = torch.softmax(beta * x.detach(), -1)
        idx = torch.arange(5, dtype=D)
        assert torch.allclose(g, beta * w * (idx - (idx * w).sum()), atol=1e-13, rtol=0)


def test_seed003_toy_is_the_chapter_03_problem():
    from bgcn.argmax import seed003_toy

    toy = seed003_toy()
    assert toy.values.dtype == torch.float64 and toy.target == 1.0
    assert torch.allclose(toy.cost, torch.tensor([0.64, 0.25, 1.69, 0.01, 1.0], dtype=D))
    assert torch.equal(toy.reward, -toy.cost)
    # the classifier prefers class 4; the best class is 3 and the worst 2; the top logit gap is 0.1
    assert int(toy.logits.argmax()) == 4 and int(toy.cost.argmin()) == 3 and int(toy.cost.argmax()) == 2
    top2 = torch.topk(toy.logits, 2).values
    assert (top2[0] - top2[1]).item() == pytest.approx(0.1)
    assert seed003_toy(torch.float32).logits.dtype == torch.float32
    with pytest.raises(TypeError, match="dtype"):
        seed003_toy(torch.long)
