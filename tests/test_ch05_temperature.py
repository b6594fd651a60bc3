"""Chapter 05 (temperature): every formula and measured claim of the chapter, and bgcn.temperature."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import bgcn
from bgcn.temperature import (TAU_METHODS, gradient_norm_vs_tau, soft_topk_gradient, suggest_tau,
                              temperature_sweep)


def _sim(n=60, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, d, generator=g, dtype=torch.float64)
    return bgcn.cosine_similarity(f)


@pytest.fixture(scope="module")
def digits_similarity(digits):
    images, _ = digits
    return bgcn.cosine_similarity(images.flatten(1).double())


# --------------------------------------------------------------------------- eq. (7): the limits

def test_eq7_cold_limit_is_one_hot_at_argmax():
    s = torch.tensor([0.3, 0.9, -0.2, 0.85, 0.1], dtype=torch.float64)
    w = torch.softmax(s / 1e-3, 0)
    one_hot = torch.nn.functional.one_hot(s.argmax(), 5).double()
    assert (w - one_hot).abs().max() < 1e-12
    # the approach is exponential in the gaps: w_max = 1 / sum_j exp(-(s_max - s_j)/τ) exactly
    for tau in (0.1, 0.02, 0.01):
        w = torch.softmax(s / tau, 0)
        assert w.max().item() == pytest.approx(1 / torch.exp(-(s.max() - s) / tau).sum().item(), rel=1e-12)


def test_eq7_hot_limit_is_uniform():
    s = _sim()[0]
    for tau in (1e2, 1e4, 1e6):
        w = torch.softmax(s / tau, 0)
        bound = (math.exp((s.max() - s.min()).item() / tau) - 1) / s.numel()  # |w_j - 1/n| <= (e^{range/τ} - 1)/n
        assert (w - 1 / s.numel()).abs().max() <= bound


def test_temperature_sweep_limits_and_monotone():
    S = _sim(50)
    taus = np.logspace(-4, 3, 15)
    r = temperature_sweep(S, taus, k=5, exclude_self=True)
    assert r["n"] == 49
    assert r["effective"][0] == pytest.approx(1.0, abs=0.05)
    assert r["effective"][-1] == pytest.approx(49.0, rel=1e-3)
    assert r["topk_mass"][0] == pytest.approx(1.0, abs=1e-3)
    assert r["topk_mass"][-1] == pytest.approx(5 / 49, rel=1e-2)
    assert torch.all(torch.diff(r["topk_mass"]) <= 1e-12)     # mass of the top-k decreases with τ
    assert torch.all(torch.diff(r["effective"]) >= -1e-9)     # e^H increases with τ
    assert torch.allclose(r["entropy"].exp(), r["effective"], rtol=0.2)  # exp of the mean ≈ mean of exp here
    sub = temperature_sweep(S, taus, k=5, exclude_self=True, rows=torch.arange(10))
    manual = temperature_sweep(S[:10], taus, k=5)  # without masking: differs (self included)
    assert not torch.allclose(sub["topk_mass"], manual["topk_mass"])
    assert temperature_sweep(S, [1.0], k=5, rows=500)["n"] == 50  # rows >= N: all rows
    with pytest.raises(ValueError):
        temperature_sweep(S, [], k=5)
    with pytest.raises(ValueError):
        temperature_sweep(S[0], [1.0], k=5, exclude_self=True)
    with pytest.raises(ValueError):
        temperature_sweep(S, [1.0, -1.0], k=5)


# --------------------------------------------------------------------------- DESIGN point 3 on the digits

def test_design3_tau1_softmax_over_all_digits_is_nearly_uniform(digits_similarity):
    S = digits_similarity
    assert S.shape == (1797, 1797)
    w = torch.softmax(S / 1.0, dim=-1)  # seed 000 eq. (9), τ = 1, self included as in the seed
    eff = bgcn.effective_neighbours(w).mean().item()
    mass = bgcn.topk_mass(w, 10).mean().item()
    assert 1780 < eff < 1797          # measured 1788.8
    assert 0.006 < mass < 0.008       # measured 0.72 %
    r = temperature_sweep(S, [1.0], 10, exclude_self=True)
    assert 1780 < r["effective"][0] < 1796 and 0.006 < r["topk_mass"][0] < 0.008


# --------------------------------------------------------------------------- the gradient against τ

@pytest.mark.parametrize("exclude_self", [False, True])
def test_soft_topk_gradient_matches_autograd(exclude_self):
    S = _sim(20).clone().requires_grad_(True)
    g = torch.randn(20, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for tau in (0.05, 0.5, 3.0):
        S.grad = None
        w, _ = bgcn.soft_topk(S, 4, tau, exclude_self=exclude_self)
        (g * w).sum().backward()
        formula = soft_topk_gradient(S.detach(), g, 4, tau, exclude_self=exclude_self)
        assert (S.grad - formula).abs().max() < 1e-12
        # every entry of a row gets gradient through the normaliser (off the diagonal)
        off = ~torch.eye(20, dtype=torch.bool) if exclude_self else torch.ones(20, 20, dtype=torch.bool)
        assert (formula[off] != 0).all()


def test_gradient_norm_vs_tau_agrees_and_vanishes_at_both_ends():
    S = _sim(40)
    taus = [1e-4, 1e-2, 0.1, 1.0, 10.0, 100.0]
    r = gradient_norm_vs_tau(S, taus, 5, upstream="random", seed=0)
    g = torch.randn(40, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for i, t in enumerate(taus):
        ref = soft_topk_gradient(S, g, 5, t, exclude_self=True).norm(dim=-1)
        assert r["grad_norm"][i].item() == pytest.approx(ref.mean().item(), rel=1e-10, abs=1e-300)
        assert r["grad_norm_median"][i].item() == pytest.approx(ref.median().item(), rel=1e-10, abs=1e-300)
    peak = r["grad_norm"].max()
    # cold: most rows saturated and their gradient vanishes (the mean keeps the rare near-tie rows)
    assert r["grad_norm_median"][0] < 1e-6 * r["grad_norm_median"].max() and r["saturated"][0] > 0.9
    assert r["grad_norm"][-1] < 1e-2 * peak and r["saturated"][-1] == 0      # hot: ∝ 1/(Nτ)
    assert r["grad_norm"][-2] / r["grad_norm"][-1] == pytest.approx(10.0, rel=0.05)
    assert 0 <= r["outside_share"].min() and r["outside_share"].max() <= 1
    ones = gradient_norm_vs_tau(S, [1.0], 5, upstream="ones")
    assert ones["grad_norm"][0] > 0
    with pytest.raises(ValueError):
        gradient_norm_vs_tau(S, [1.0], 5, upstream="bad")
    with pytest.raises(ValueError):
        gradient_norm_vs_tau(S, [1.0], 5, upstream=torch.ones(3, 5))
    sub = gradient_norm_vs_tau(S, [0.1], 5, rows=10, seed=1)
    assert sub["grad_norm"].shape == (1,)


# --------------------------------------------------------------------------- suggest_tau

def test_suggest_tau_mass_hits_target():
    S = _sim(80)
    for target in (0.3, 0.5, 0.8):
        t = suggest_tau(S, 5, "mass", target_mass=target)
        m = temperature_sweep(S, [t], 5, exclude_self=True)["topk_mass"][0].item()
        assert m == pytest.approx(target, abs=1e-4)


def test_suggest_tau_gap_and_kth_gap():
    S = _sim(80)
    v = torch.topk(bgcn.topk.mask_diagonal(S), 6, dim=-1).values
    assert suggest_tau(S, 5, "kth_gap") == pytest.approx((v[:, 4] - v[:, 5]).mean().item())
    tg = suggest_tau(S, 5, "gap")
    assert tg > 0 and math.isfinite(tg)
    # all three are scales of the same row: kth_gap < mass-based τ here
    assert suggest_tau(S, 5, "kth_gap") < suggest_tau(S, 5, "mass")


def test_suggest_tau_bad_input():
    S = _sim(30)
    with pytest.raises(ValueError, match="method"):
        suggest_tau(S, 5, "entropy")
    with pytest.raises(ValueError, match="target_mass"):
        suggest_tau(S, 5, "mass", target_mass=0.1)  # below k/N: the uniform level
    with pytest.raises(ValueError, match="target_mass"):
        suggest_tau(S, 5, "mass", target_mass=1.5)
    with pytest.raises(ValueError):
        suggest_tau(S, 40)
    with pytest.raises(ValueError):
        suggest_tau(S[0], 5)
    assert set(TAU_METHODS) == {"mass", "gap", "kth_gap"}


def test_suggest_tau_on_digits(digits_similarity):
    t = suggest_tau(digits_similarity, 10, "mass", target_mass=0.5)
    assert 0.01 < t < 0.05           # measured 0.023: some 40x below seed 000's τ = 1


def test_effective_neighbours_of_an_even_row_is_its_support():
    for m in (1, 3, 8, 50):
        w = torch.zeros(50, dtype=torch.float64)
        w[:m] = 1 / m
        assert bgcn.effective_neighbours(w).item() == pytest.approx(m, rel=1e-12)


def test_topk_mass_range_bound():
    """m_k <= k e^{r/τ} / (k e^{r/τ} + N - k), r = range of the row (chapter 05, eq-ch05-mass-bound)."""
    S = _sim(100)
    for tau in (0.05, 0.3, 1.0, 5.0):
        w = torch.softmax(S / tau, dim=-1)
        r = S.max(1).values - S.min(1).values
        bound = 6 * torch.exp(r / tau) / (6 * torch.exp(r / tau) + 100 - 6)
        assert (bgcn.topk_mass(w, 6) <= bound + 1e-15).all()


# --------------------------------------------------------------------------- claims added in issue 9

def test_node0_gap_is_typical_of_the_digits(digits_similarity):
    """The chapter reads node 0's top-1/top-2 gap as 'typical': it lies near the median gap."""
    S = digits_similarity
    n = S.shape[0]
    off = S.masked_select(~torch.eye(n, dtype=torch.bool)).view(n, n - 1)
    top2 = torch.topk(off, 2, dim=1).values
    gaps = top2[:, 0] - top2[:, 1]
    med = gaps.median().item()
    assert 0.004 < med < 0.008                                # measured 0.0056
    assert gaps.quantile(0.25) < gaps[0] < gaps.quantile(0.75)  # node 0 (0.0063) is typical
    # and the gradient peak (tau ~ 0.003) is about half of it, as the text says
    r = gradient_norm_vs_tau(S, np.logspace(-5, 2, 29), 10, rows=torch.arange(0, n, 9))
    peak = float(np.logspace(-5, 2, 29)[int(r["grad_norm_median"].argmax())])
    assert 0.3 < peak / med < 0.9


def test_hot_gradient_limit_error_falls_like_one_over_tau():
    """||dL/dS_i|| -> ||g_hat_i - mean||/(n tau); the relative error is O(1/tau) (chapter 05 check)."""
    S = _sim(200, d=16)
    n = S.shape[0] - 1
    off = ~torch.eye(S.shape[0], dtype=torch.bool)
    g = torch.randn(S.shape[0], 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    top = torch.topk(S.masked_fill(~off, -np.inf), 5).indices
    g_hat = torch.zeros(S.shape[0], S.shape[0], dtype=torch.float64).scatter(1, top, g)[off].view(-1, n)
    spread = (g_hat - g_hat.mean(1, keepdim=True)).norm(dim=1).mean().item()
    rel = {}
    for tau in (1e2, 1e3, 1e4):
        norm = gradient_norm_vs_tau(S, [tau], 5, upstream=g)["grad_norm"][0].item()
        rel[tau] = abs(norm - spread / (n * tau)) / (spread / (n * tau))
    assert rel[1e4] < 1e-3
    assert rel[1e2] / rel[1e3] == pytest.approx(10, rel=0.05)
    assert rel[1e3] / rel[1e4] == pytest.approx(10, rel=0.05)


def test_exercise_05_2_hot_gradient_entries_use_the_mean():
    """Exercise 05-2's solution: at large tau, kept entries ~ (g - gbar)/(N tau), unkept ~ -gbar/(N tau),

    with gbar the *mean* of g_hat over the N entries of the row (not the sum).
    """
    S = _sim(300, d=16)
    N, k, tau = S.shape[0], 6, 1e5
    g = torch.randn(N, k, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    grad = soft_topk_gradient(S, g, k, tau)                   # self included: all N entries
    idx = torch.topk(S, k).indices
    g_hat = torch.zeros(N, N, dtype=torch.float64).scatter(1, idx, g)
    gbar = g_hat.mean(1, keepdim=True)
    approx = (g_hat - gbar) / (N * tau)
    assert ((grad - approx).abs().max() / approx.abs().max()).item() < 1e-3
    kept = torch.zeros(N, N, dtype=torch.bool).scatter(1, idx, True)
    unkept = grad.masked_select(~kept).view(N, N - k)
    assert torch.allclose(unkept, (-gbar / (N * tau)).expand(N, N - k), rtol=1e-3, atol=0)
    # the sum in place of the mean would be N times too large
    assert not torch.allclose(unkept, (-g_hat.sum(1, keepdim=True) / (N * tau)).expand(N, N - k), rtol=0.5)


def test_suggest_tau_features_names_a_bad_seed():
    from bgcn.temperature import suggest_tau_features

    with pytest.raises(ValueError, match="seed"):
        suggest_tau_features(torch.randn(50, 4), 3, max_rows=10, seed="a")


def test_suggest_tau_from_features_equals_the_matrix_version_on_the_same_rows():
    from bgcn.similarity import cosine_similarity
    from bgcn.temperature import suggest_tau, suggest_tau_features

    g = torch.Generator().manual_seed(0)
    f = torch.randn(300, 16, generator=g, dtype=torch.float64)
    exact = suggest_tau(cosine_similarity(f), 10)
    assert suggest_tau_features(f, 10, max_rows=300) == exact
    # a sample of rows: the same rows of the full matrix (their own column excluded) give the same tau
    sampled = suggest_tau_features(f, 10, max_rows=120, seed=3)
    rows = torch.randperm(300, generator=torch.Generator().manual_seed(3))[:120]
    assert sampled == pytest.approx(suggest_tau(cosine_similarity(f), 10, rows=rows), rel=1e-6)
    assert sampled == pytest.approx(exact, rel=0.2)
    # max_entries caps the sampled matrix at max_entries // N rows: the same draw as max_rows=that
    assert suggest_tau_features(f, 10, max_entries=300 * 120, seed=3) == sampled


def test_the_live_widget_starts_where_the_page_says():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "chapters" / "05_temperature_1_weights.md").read_text()
    call = re.search(r"widget_softmax_temperature\([^)]*tau=([0-9.e-]+)\)", text)
    said = re.search(r"The slider starts at \$\\tau = ([0-9.]+)\$", text)
    assert call and said and float(call.group(1)) == float(said.group(1))
