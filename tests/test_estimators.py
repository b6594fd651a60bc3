"""Tests of bgcn.estimators (chapter 09): the selection estimators, their signs, gradients and noise."""
import itertools
import math

import pytest
import torch

import bgcn
import bgcn.estimators as E
from bgcn.topk import ESTIMATORS, mask_diagonal

NAMES = list(E.SELECTION_ESTIMATORS)
DETERMINISTIC_HARD = ["ste", "identity", "blackbox"]  # forward = hard top-k of theta


def _scores(n=7, m=None, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, m or n, generator=g, dtype=dtype) * 2 - 1


# ---------------------------------------------------------------- registry and Selection contract

def test_registered_with_flags():
    for name in NAMES:
        assert name in ESTIMATORS and name in bgcn.ESTIMATORS
    dense = {n for n in NAMES if ESTIMATORS[n].needs_dense}
    assert dense == {"ste", "identity", "blackbox", "imle", "sigmoid", "capped_simplex"}
    assert {n for n in NAMES if ESTIMATORS[n].stochastic} == {"imle", "gumbel_reinforce"}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("exclude_self", [False, True])
def test_selection_contract(name, exclude_self):
    s = _scores(9, seed=1).requires_grad_(True)
    k = 3
    sel = ESTIMATORS[name](s, k, 0.5, exclude_self=exclude_self, generator=torch.Generator().manual_seed(0))
    assert sel.indices.shape == (9, k) and sel.indices.dtype == torch.long
    assert sel.weights.shape == (9, k) and sel.dense.shape == (9, 9)
    assert torch.equal(sel.weights, sel.dense.gather(1, sel.indices))
    assert torch.allclose(sel.dense.sum(1), torch.full((9,), float(k), dtype=s.dtype), atol=1e-9)
    assert ((sel.dense >= 0) & (sel.dense <= 1)).all()
    assert all(len(set(r)) == k for r in sel.indices.tolist())
    if name in DETERMINISTIC_HARD:
        ref = torch.topk(mask_diagonal(s.detach()) if exclude_self else s.detach(), k).indices
        assert torch.equal(sel.indices, ref)
        assert torch.equal(sel.dense.detach(), torch.zeros(9, 9, dtype=s.dtype).scatter(1, ref, 1.0))
    if exclude_self:
        assert not (sel.indices == torch.arange(9)[:, None]).any()
        assert float(sel.dense.detach().diagonal().abs().max()) == 0.0
        if sel.dense.requires_grad:
            (sel.dense * torch.randn(9, 9, dtype=s.dtype)).sum().backward()
            assert float(s.grad.diagonal().abs().max()) == 0.0
            assert torch.isfinite(s.grad).all()


def test_topk_mask_breaks_ties_to_lower_index():
    x = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0], [5.0, 5.0, 5.0, 5.0, 5.0]])
    m = E.topk_mask(x, 2)
    assert m.sum(1).tolist() == [2.0, 2.0]                     # exactly k, unlike `x >= kth value` (4 and 5 ones)
    assert m.tolist() == [[0, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    assert E.topk_indices(x, 2).tolist() == [[1, 2], [0, 1]]
    assert int((x >= torch.topk(x, 2).values[:, -1:]).sum()) == 8  # the notebooks' threshold rule
    with pytest.raises(ValueError, match="NaN"):
        E.topk_mask(torch.tensor([[1.0, float("nan"), 0.0]]), 1)


# ---------------------------------------------------------------- the sign test

SIGN_KW = E.SIGN_TEST_KW


@pytest.mark.parametrize("name", NAMES)
def test_sign_test_recovers_target(name):
    kw = dict(SIGN_KW[name])
    for seed in range(3):
        r = E.sign_test(name, n=16, k=3, seed=seed, **kw)
        assert r["overlap"][0] == 0.0          # the target avoids the initial top-k
        assert r["success"], (name, seed, r["overlap"][::10])


def test_argmin_blackbox_rule_fails_sign_test():
    """Pitfall: blackbox-backprop's argmin rule copied onto top-k (an argmax) never moves the selection."""
    for seed in range(3):
        for loss in ("mse", "linear"):
            bad = E.sign_test("blackbox_argmin_verbatim", seed=seed, loss=loss)
            assert max(bad["overlap"]) == 0.0
            assert E.sign_test("blackbox", seed=seed, loss=loss, lam_rel=2.0)["success"]


def test_flipped_sign_ste_fails_sign_test():
    """A gradient with the wrong sign (the argmin 'negative identity' on an argmax) drives theta away."""
    def flipped(theta):
        m = ESTIMATORS["ste"](theta, 3).dense
        return 2 * m.detach() - m                    # same forward, gradient negated
    r = E.sign_test(flipped, seed=0)
    assert not r["success"] and max(r["overlap"]) == 0.0


# ---------------------------------------------------------------- identity with projection

@pytest.mark.parametrize("exclude_self", [False, True])
def test_identity_backward_is_projected_identity(exclude_self):
    s = _scores(6, 11, seed=2).requires_grad_(True)
    tau = 0.7
    sel = ESTIMATORS["identity"](s, 3, tau, exclude_self=exclude_self)
    g = torch.randn(6, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    (sel.dense * g).sum().backward()
    theta = s.detach() / tau
    for i in range(6):
        keep = [j for j in range(11) if not (exclude_self and j == i)]
        th, gi = theta[i, keep], g[i, keep]
        n = len(keep)
        c = th - th.mean()
        u = c / c.norm()
        P1 = torch.eye(n, dtype=th.dtype) - torch.ones(n, n, dtype=th.dtype) / n
        P2 = torch.eye(n, dtype=th.dtype) - torch.outer(u, u)
        expect = P1 @ (P2 @ gi) / c.norm() / tau            # d theta / d S = 1/tau
        assert torch.allclose(s.grad[i, keep], expect, atol=1e-13, rtol=0)
        assert abs(float(s.grad[i, keep].sum())) < 1e-12     # no shift component
        assert abs(float(s.grad[i, keep] @ c)) < 1e-12       # no rescaling component
        if exclude_self:
            assert float(s.grad[i, i]) == 0.0


def test_ste_identity_and_surrogate():
    s = _scores(5, 8, seed=4).requires_grad_(True)
    g = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    (ESTIMATORS["ste"](s, 2, 0.5).dense * g).sum().backward()
    assert torch.allclose(s.grad, g / 0.5, atol=0, rtol=1e-15)
    # surrogate: forward exactly hard, backward = the sigmoid relaxation's
    s2 = s.detach().clone().requires_grad_(True)
    sel = ESTIMATORS["ste"](s2, 2, 0.5, surrogate="sigmoid", tau_m=0.3)
    assert torch.equal(sel.dense.detach(), E.topk_mask(s.detach(), 2))
    (sel.dense * g).sum().backward()
    s3 = s.detach().clone().requires_grad_(True)
    (ESTIMATORS["sigmoid"](s3, 2, 0.5, tau_m=0.3).dense * g).sum().backward()
    assert torch.allclose(s2.grad, s3.grad, atol=1e-14, rtol=0)


# ---------------------------------------------------------------- blackbox and I-MLE

def test_blackbox_backward_formula_and_state():
    s = _scores(6, 10, seed=6).requires_grad_(True)
    lam = 3.0
    state = E.PerturbationState()
    sel = ESTIMATORS["blackbox"](s, 3, 1.0, lam=lam, state=state)
    g = torch.randn(6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    (sel.dense * g).sum().backward()
    m = E.topk_mask(s.detach(), 3)
    expect = (m - E.topk_mask(s.detach() - lam * g, 3)) / lam       # argmax form
    assert torch.equal(s.grad, expect)
    assert state.calls == 1 and state.changed_rows > 0
    # lambda far too small: exactly zero gradient, and the state says so
    s2 = s.detach().clone().requires_grad_(True)
    (ESTIMATORS["blackbox"](s2, 3, 1.0, lam=1e-9, state=state).dense * g).sum().backward()
    assert float(s2.grad.abs().max()) == 0.0 and state.changed_rows == 0.0


def test_blackbox_relative_lambda_is_invariant_to_loss_scale():
    s = _scores(6, 10, seed=8)
    g = torch.randn(6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    grads = []
    for scale in (1.0, 1e-6):
        x = s.clone().requires_grad_(True)
        (ESTIMATORS["blackbox"](x, 3).dense * g * scale).sum().backward()
        grads.append(x.grad / scale)
    assert float(grads[0].abs().sum()) > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-9, atol=0)


def test_imle_backward_uses_the_same_noise_and_equals_blackbox_without_noise():
    s = _scores(5, 12, seed=10).requires_grad_(True)
    k, lam = 3, 2.0
    g = torch.randn(5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    sel = ESTIMATORS["imle"](s, k, 1.0, lam=lam, tau_noise=0.5, generator=torch.Generator().manual_seed(42))
    (sel.dense * g).sum().backward()
    eps = E.sum_of_gamma_noise((5, 12), k, s=10, tau=1.0, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(42)) * 0.5
    z = s.detach() + eps
    assert torch.equal(sel.dense.detach(), E.topk_mask(z, k))
    assert torch.equal(s.grad, (E.topk_mask(z, k) - E.topk_mask(z - lam * g, k)) / lam)
    # symmetric version and scale=False
    s2 = s.detach().clone().requires_grad_(True)
    sel2 = ESTIMATORS["imle"](s2, k, 1.0, lam=lam, tau_noise=0.5, symmetric=True, scale=False,
                              generator=torch.Generator().manual_seed(42))
    (sel2.dense * g).sum().backward()
    assert torch.equal(s2.grad, 0.5 * (E.topk_mask(z + lam * g, k) - E.topk_mask(z - lam * g, k)))
    # no noise (evaluation) = blackbox
    a, b = s.detach().clone().requires_grad_(True), s.detach().clone().requires_grad_(True)
    (ESTIMATORS["imle"](a, k, 1.0, sample=False).dense * g).sum().backward()
    (ESTIMATORS["blackbox"](b, k, 1.0).dense * g).sum().backward()
    assert torch.equal(a.grad, b.grad)


def test_adaptive_lambda_moves_beta_towards_target():
    s = _scores(20, 30, seed=12)
    g = torch.randn(20, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(13))
    state = E.PerturbationState(adaptive=True, beta=50.0, target_swaps=1.0, step=0.2)
    swaps = []
    for i in range(60):
        x = s.clone().requires_grad_(True)
        (ESTIMATORS["imle"](x, 4, lam_rel=1.0, state=state, generator=torch.Generator().manual_seed(i)).dense * g).sum().backward()
        swaps.append(state.swaps)
    assert swaps[0] > 2.0                              # beta = 50: far too many swaps at first
    assert 0.3 < sum(swaps[-20:]) / 20 < 2.0           # then about one swap per row
    assert state.beta < 50.0


def test_sum_of_gamma_k_sum_is_gumbel():
    """k-fold sum of SoG noise: mean H_s - log s -> 0.5772, variance sum_{i<=s} 1/i^2 -> pi^2/6 = 1.645.

    With s = 100 the exact values are 0.5822 and 1.6350 (within 1/(2s) and 1/s of Gumbel's). With
    n = 10 000 k-sums the standard errors are sqrt(1.645/n) = 0.0128 for the mean and
    sqrt((mu4 - sigma^4)/n) = sqrt((5.4 - 1) * 1.645^2 / n) = 0.034 for the variance (the Gumbel's
    excess kurtosis is 2.4); we allow 4 standard errors around Gumbel's values plus the finite-s bias.
    """
    n, k, s = 10_000, 4, 100
    se_mean, se_var = 0.0128, 0.034
    tot = E.sum_of_gamma_noise((n, k), k, s=s, generator=torch.Generator().manual_seed(0)).double().sum(1)
    mean_s = sum(1.0 / i for i in range(1, s + 1)) - math.log(s)
    var_s = sum(1.0 / i ** 2 for i in range(1, s + 1))
    assert abs(mean_s - E.EULER_GAMMA) < 1 / (2 * s) and abs(var_s - math.pi ** 2 / 6) < 1 / s
    assert abs(float(tot.mean()) - E.EULER_GAMMA) < 4 * se_mean + 1 / (2 * s)
    assert abs(float(tot.var()) - math.pi ** 2 / 6) < 4 * se_var + 1 / s
    # s = 10 (the paper's default) is biased but close: exact mean 0.6264, variance 1.5498
    tot10 = E.sum_of_gamma_noise((n, k), k, s=10, generator=torch.Generator().manual_seed(1)).double().sum(1)
    assert abs(float(tot10.mean()) - 0.6264) < 4 * se_mean and abs(float(tot10.var()) - 1.5498) < 4 * se_var
    # the temperature scales the noise linearly, and the generator makes it reproducible
    a = E.sum_of_gamma_noise((50, k), k, tau=3.0, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    b = E.sum_of_gamma_noise((50, k), k, tau=1.0, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.allclose(a, 3 * b)
    # the TF notebooks' parameterisation (k/i passed as a rate where the scale is meant), at their k = 10,
    # s = 10: the k-sum has mean sum(i)/k^2 - log s = -1.75 and variance sum(i^2)/k^4 = 0.04: almost no noise
    kt = 10
    conc = torch.full((5000, kt), 1.0 / kt)
    gen = torch.Generator().manual_seed(2)
    bad = sum(torch._standard_gamma(conc, generator=gen) / (kt / i) for i in range(1, 11))
    bad_tot = ((bad - math.log(10)) / kt).double().sum(1)
    assert abs(float(bad_tot.mean()) - (-1.75)) < 0.02 and abs(float(bad_tot.var()) - 0.0385) < 0.01
    good_tot = E.sum_of_gamma_noise((5000, kt), kt, s=10, generator=gen).double().sum(1)
    assert abs(float(good_tot.mean()) - 0.6264) < 0.1 and abs(float(good_tot.var()) - 1.5498) < 0.3


def test_gumbel_noise_is_finite_and_gumbel_max_samples_softmax():
    g = E.gumbel_noise((400_000,), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(g).all()
    assert abs(float(g.mean()) - E.EULER_GAMMA) < 0.01 and abs(float(g.var()) - math.pi ** 2 / 6) < 0.03
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5], dtype=torch.float64)
    n = 100_000
    gg = E.gumbel_noise((n, 4), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    freq = torch.bincount((logits + gg).argmax(1), minlength=4).double() / n
    p = torch.softmax(logits, 0)
    assert torch.allclose(freq, p, atol=4 * math.sqrt(0.25 / n) + 1e-3)
    # float32 extremes: u clamped away from 0 and 1
    g32 = E.gumbel_noise((10,), dtype=torch.float32)
    assert g32.dtype == torch.float32 and torch.isfinite(g32).all()


# ---------------------------------------------------------------- smooth relaxations

def test_sigmoid_and_capped_gradcheck_and_row_sums():
    x = _scores(4, 9, seed=14).requires_grad_(True)
    for fn in (E.sigmoid_topk, E.capped_simplex_topk):
        m = fn(x, 3, tau_m=0.4)
        assert torch.allclose(m.sum(1), torch.full((4,), 3.0, dtype=torch.float64), atol=1e-12)
        assert torch.autograd.gradcheck(lambda t: fn(t, 3, tau_m=0.4), (x,))
    # through the estimators, with the diagonal excluded and the temperature tau
    for name in ("sigmoid", "capped_simplex"):
        y = _scores(6, seed=15).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t: ESTIMATORS[name](t, 2, 0.8, exclude_self=True, tau_m=0.5).dense, (y,))


def test_capped_simplex_is_sparse_and_projection():
    x = _scores(3, 30, seed=16)
    m = E.capped_simplex_topk(x, 4, tau_m=0.2)
    assert (m == 0).sum() > 0 and (m == 1).sum() >= 0
    assert ((m > 0).sum(1) < 30).all()
    # it is the Euclidean projection of x/tau_m onto {0 <= y <= 1, sum y = k}: KKT check
    z = x / 0.2
    for i in range(3):
        free = (m[i] > 0) & (m[i] < 1)
        nu = float((z[i] - m[i])[free].mean()) if free.any() else None
        if nu is not None:
            assert torch.allclose((z[i] - m[i])[free], torch.full((int(free.sum()),), nu, dtype=z.dtype), atol=1e-10)
            assert (z[i][m[i] == 0] <= nu + 1e-10).all() and (z[i][m[i] == 1] >= nu + 1 - 1e-10).all()


def test_sigmoid_closed_form_equals_implicit_autograd():
    """Closed form = autograd through one Newton step from the (detached) bisection root, i.e. the
    implicit function theorem done by autograd, and = the explicit formula h/tau (g - <h,g>/sum h)."""
    x = _scores(5, 12, seed=17).requires_grad_(True)
    tau_m, k = 0.3, 4
    g = torch.randn(5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(18))
    (E.sigmoid_topk(x, k, tau_m=tau_m) * g).sum().backward()
    closed = x.grad.clone()
    x2 = x.detach().clone().requires_grad_(True)
    z = x2 / tau_m
    t0 = E._sigmoid_threshold(z, k).detach()
    m0 = torch.sigmoid(z - t0)
    t = t0 + (m0.sum(1, keepdim=True) - k) / (m0 * (1 - m0)).sum(1, keepdim=True)  # Newton step, differentiable
    (torch.sigmoid(z - t) * g).sum().backward()
    assert torch.allclose(closed, x2.grad, atol=1e-12, rtol=0)
    m = E.sigmoid_topk(x.detach(), k, tau_m=tau_m)
    h = m * (1 - m)
    formula = h / tau_m * (g - (h * g).sum(1, keepdim=True) / h.sum(1, keepdim=True))
    assert torch.allclose(closed, formula, atol=1e-13, rtol=0)


def test_capped_simplex_closed_form_equals_autograd_of_explicit_solution():
    x = _scores(5, 15, seed=19).requires_grad_(True)
    tau_m, k = 0.25, 4
    g = torch.randn(5, 15, dtype=torch.float64, generator=torch.Generator().manual_seed(20))
    (E.capped_simplex_topk(x, k, tau_m=tau_m) * g).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    m = E.capped_simplex_topk(x.detach(), k, tau_m=tau_m)
    free, upper = (m > 0) & (m < 1), m >= 1
    z = x2 / tau_m
    nu = ((z * free).sum(1, keepdim=True) - (k - upper.sum(1, keepdim=True))) / free.sum(1, keepdim=True)
    m2 = torch.where(free, z - nu, upper.to(z.dtype))
    assert torch.allclose(m2.detach(), m, atol=1e-12)
    (m2 * g).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-12, rtol=0)
    assert float(x.grad[~free].abs().max()) == 0.0


# ---------------------------------------------------------------- Gumbel top-k + REINFORCE

def _all_ordered(n, k):
    return list(itertools.permutations(range(n), k))


def test_plackett_luce_probabilities_sum_to_one_and_match_samples():
    theta = torch.tensor([0.3, -1.0, 1.2, 0.0, 0.5], dtype=torch.float64)
    for k in (1, 2, 3):
        tuples = torch.tensor(_all_ordered(5, k))
        lp = E.plackett_luce_log_prob(theta.expand(len(tuples), 5), tuples)
        assert abs(float(lp.exp().sum()) - 1.0) < 1e-12
    # a masked (-inf) candidate has probability 0 and the rest still sums to one
    th = theta.clone()
    th[1] = float("-inf")
    tuples = torch.tensor([t for t in _all_ordered(5, 2) if 1 not in t])
    assert abs(float(E.plackett_luce_log_prob(th.expand(len(tuples), 5), tuples).exp().sum()) - 1.0) < 1e-12
    # Gumbel-top-k samples of gumbel_reinforce follow PL(theta / tau_g)
    n = 40_000
    rows = theta.expand(n, 5).contiguous()
    sel = ESTIMATORS["gumbel_reinforce"](rows, 2, tau_noise=1.0, generator=torch.Generator().manual_seed(0))
    counts = {}
    for a, b in sel.indices.tolist():
        counts[(a, b)] = counts.get((a, b), 0) + 1
    tuples = _all_ordered(5, 2)
    p = E.plackett_luce_log_prob(theta.expand(len(tuples), 5), torch.tensor(tuples)).exp()
    for t, pt in zip(tuples, p.tolist()):
        assert abs(counts.get(t, 0) / n - pt) < 5 * math.sqrt(pt * (1 - pt) / n) + 1e-3
    assert torch.allclose(sel.log_prob[:3], E.plackett_luce_log_prob(theta.expand(3, 5), sel.indices[:3]))


def _reward(idx):  # a reward of the unordered set, with an interaction term
    w = torch.tensor([1.0, -0.5, 2.0, 0.3], dtype=torch.float64)
    m = torch.zeros(idx.shape[0], 4, dtype=torch.float64).scatter(1, idx, 1.0)
    return 10.0 + m @ w + 1.5 * m[:, 0] * m[:, 3]     # +10: a large offset that a baseline must remove


def test_reinforce_is_unbiased_and_rloo_reduces_variance():
    theta0 = torch.tensor([0.2, -0.3, 0.5, 0.0], dtype=torch.float64)
    k = 2
    # exact gradient of E[R] by enumeration
    th = theta0.clone().requires_grad_(True)
    tuples = torch.tensor(_all_ordered(4, k))
    lp = E.plackett_luce_log_prob(th.expand(len(tuples), 4), tuples)
    (lp.exp() * _reward(tuples)).sum().backward()
    exact = th.grad.clone()
    # Monte Carlo: B samples in groups of S for RLOO
    B, S = 60_000, 4
    rows = theta0.repeat(B, 1).requires_grad_(True)
    sel = ESTIMATORS["gumbel_reinforce"](rows, k, tau_noise=1.0, generator=torch.Generator().manual_seed(1))
    R = _reward(sel.indices)
    ests = {}
    for name, baseline in (("none", None), ("loo", "loo")):
        rows.grad = None
        lp_s = E.plackett_luce_log_prob(rows, sel.indices).reshape(S, B // S)
        sur = E.reinforce_surrogate(lp_s, R.reshape(S, B // S), baseline)
        sur.backward()
        # per-graph-sample estimate of -grad E[R]: the S rows of one group together
        per = -rows.grad.reshape(S, B // S, 4).sum(0)
        ests[name] = per
        mean, se = per.mean(0), per.std(0) / math.sqrt(per.shape[0])
        assert torch.all((mean - exact).abs() < 5 * se + 1e-3), (name, mean, exact, se)
    var_none = float(ests["none"].var(0).sum())
    var_loo = float(ests["loo"].var(0).sum())
    assert var_loo < var_none / 20, (var_none, var_loo)   # measured: about 100x smaller with the +10 offset


def test_reinforce_surrogate_sign_descends_expected_cost():
    """Minimising the surrogate (with reward = -cost) lowers the expected cost (seed 003's sign is the opposite)."""
    theta = torch.zeros(1, 6, dtype=torch.float64, requires_grad=True)
    cost = torch.tensor([3.0, 0.0, 2.0, 1.0, 5.0, 4.0], dtype=torch.float64)
    opt = torch.optim.SGD([theta], lr=0.5)
    gen = torch.Generator().manual_seed(0)

    def expected_cost():
        t = _all_ordered(6, 2)
        lp = E.plackett_luce_log_prob(theta.detach().expand(len(t), 6), torch.tensor(t))
        return float((lp.exp() * torch.tensor([cost[a] + cost[b] for a, b in t], dtype=torch.float64)).sum())

    start = expected_cost()
    for _ in range(100):
        sel = ESTIMATORS["gumbel_reinforce"](theta.expand(8, 6), 2, tau_noise=1.0, generator=gen)
        c = (sel.dense * cost).sum(1)
        opt.zero_grad()
        E.reinforce_surrogate(sel.log_prob.unsqueeze(1), -c.unsqueeze(1), "loo").backward()
        opt.step()
    assert expected_cost() < start - 2.0
    assert set(E.topk_indices(theta.detach(), 2)[0].tolist()) == {1, 3}


def test_ema_baseline():
    ema = E.EMABaseline(3, decay=0.5)
    assert torch.equal(ema(torch.tensor([1.0, 2.0, 3.0])), torch.zeros(3))
    assert torch.equal(ema(torch.tensor([3.0, 2.0, 1.0])), torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(ema.value, torch.tensor([2.0, 2.0, 2.0]))
    lp = torch.zeros(3, requires_grad=True)
    E.reinforce_surrogate(lp, torch.ones(3), ema(torch.ones(3))).backward()
    assert torch.allclose(lp.grad, torch.ones(3))  # -(1 - 2)


# ---------------------------------------------------------------- end to end: the gradient reaches the backbone

def _dense_gcn_logits(x, adj, w1, w2):
    """Fallback 2-layer GCN on the dense normalised adjacency D^-1/2 (A + I) D^-1/2."""
    a = adj + torch.eye(adj.shape[0], dtype=adj.dtype)
    d = a.sum(1).rsqrt()
    a = d[:, None] * a * d[None, :]
    return torch.log_softmax(a @ torch.relu(a @ x @ w1) @ w2, -1)


@pytest.mark.parametrize("name", NAMES + ["hard"])
def test_gradient_reaches_backbone_through_graph(name):
    torch.manual_seed(0)
    n, k, c = 24, 3, 3
    inputs = torch.randn(n, 8)
    backbone = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 6))
    x = torch.randn(n, 5)                     # GCN input independent of the backbone: only the graph path
    labels = torch.randint(0, c, (n,))
    labelled = torch.arange(n) < 12
    try:
        from bgcn.gcn import GCN
        gcn = GCN(5, 8, c, dropout=0.0)
        run = lambda adj: gcn(x, adj=adj)
    except ImportError:                        # pragma: no cover - before bgcn.gcn exists
        w1, w2 = torch.randn(5, 8), torch.randn(8, c)
        run = lambda adj: _dense_gcn_logits(x, adj, w1, w2)
    feats = backbone(inputs)
    gen = torch.Generator().manual_seed(0)
    if name == "gumbel_reinforce":
        s = bgcn.cosine_similarity(feats)
        sels = [ESTIMATORS[name](s, k, exclude_self=True, generator=gen) for _ in range(2)]
        nll = [torch.nn.functional.nll_loss(run(sel.dense), labels, reduction="none") for sel in sels]
        reward = torch.stack([-(l * labelled) for l in nll])
        loss = sum(l[labelled].mean() for l in nll) / 2 + E.reinforce_surrogate(
            torch.stack([sel.log_prob for sel in sels]), reward, "loo")
    else:
        graph = bgcn.knn_graph(feats, k, estimator=name, tau=0.5, generator=gen)
        adj = graph.dense if graph.dense is not None else graph.to_dense()
        loss = torch.nn.functional.nll_loss(run(adj)[labelled], labels[labelled])
    loss.backward()
    grads = [p.grad for p in backbone.parameters()]
    if name == "hard":                         # control: hard top-k gives the backbone nothing
        assert all(gr is None or float(gr.abs().max()) == 0.0 for gr in grads)
        return
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert all(float(gr.abs().max()) > 0 for gr in grads), name


# ---------------------------------------------------------------- bad hyper-parameters

@pytest.mark.parametrize("name,kw,match", [
    ("blackbox", {"lam": 0.0}, "lam"),
    ("blackbox", {"lam": -1.0}, "lam"),
    ("blackbox", {"lam_rel": 0.0}, "lam_rel"),
    ("imle", {"lam": -2.0}, "lam"),
    ("imle", {"tau_noise": 0.0}, "tau_noise"),
    ("imle", {"noise_rel": -1.0}, "noise_rel"),
    ("imle", {"s": 0}, "s=0"),
    ("sigmoid", {"tau_m": 0.0}, "tau_m"),
    ("capped_simplex", {"tau_m": -0.1}, "tau_m"),
    ("capped_simplex", {"tau_m_rel": 0.0}, "tau_m_rel"),
    ("gumbel_reinforce", {"tau_noise": -1.0}, "tau_noise"),
    ("identity", {"noise_rel": -0.5}, "noise_rel"),
    ("ste", {"surrogate": "softmax"}, "surrogate"),
])
def test_bad_hyper_parameters_raise(name, kw, match):
    with pytest.raises(ValueError, match=match):
        ESTIMATORS[name](_scores(6), 2, **kw)


@pytest.mark.parametrize("name", NAMES)
def test_bad_k_and_tau_raise(name):
    s = _scores(6)
    with pytest.raises(ValueError, match="k=0"):
        ESTIMATORS[name](s, 0)
    with pytest.raises(ValueError, match="k=6"):
        ESTIMATORS[name](s, 6, exclude_self=True)
    with pytest.raises(ValueError, match="tau"):
        ESTIMATORS[name](s, 2, 0.0)
    with pytest.raises(ValueError, match="tau"):
        ESTIMATORS[name](s, 2, -1.0)


def test_bad_helper_arguments_raise():
    with pytest.raises(ValueError, match="s=0"):
        E.sum_of_gamma_noise((3,), 2, s=0)
    with pytest.raises(ValueError, match="tau"):
        E.sum_of_gamma_noise((3,), 2, tau=0.0)
    with pytest.raises(ValueError, match="k=0"):
        E.sum_of_gamma_noise((3,), 0)
    with pytest.raises(ValueError, match="S >= 2"):
        E.reinforce_surrogate(torch.zeros(1, 4), torch.zeros(1, 4), "loo")
    with pytest.raises(ValueError, match="baseline"):
        E.reinforce_surrogate(torch.zeros(2, 4), torch.zeros(2, 4), "mean")
    with pytest.raises(ValueError, match="shape"):
        E.reinforce_surrogate(torch.zeros(2, 4), torch.zeros(2, 3), None)
    with pytest.raises(TypeError, match="state"):
        ESTIMATORS["blackbox"](_scores(6), 2, state="adaptive")
    with pytest.raises(ValueError, match="beta"):
        E.PerturbationState(beta=0.0)


@pytest.mark.parametrize("name", ["imle", "gumbel_reinforce"])
def test_stochastic_estimators_are_reproducible(name):
    s = _scores(30, seed=21)
    a = ESTIMATORS[name](s, 4, generator=torch.Generator().manual_seed(5))
    b = ESTIMATORS[name](s, 4, generator=torch.Generator().manual_seed(5))
    c = ESTIMATORS[name](s, 4, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.indices, b.indices) and not torch.equal(a.indices, c.indices)
    det = ESTIMATORS[name](s, 4, sample=False)
    assert torch.equal(det.indices, E.topk_indices(s, 4))


@pytest.mark.parametrize("name", ["imle", "gumbel_reinforce"])
def test_sampling_follows_grad_mode(name):
    """sample=None: a training step (autograd recording) samples, an evaluation under no_grad takes the hard top-k."""
    s = _scores(30, seed=22)
    hard = E.topk_indices(s, 4)
    with torch.no_grad():
        ev = ESTIMATORS[name](s, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ev.indices, hard)
    tr = ESTIMATORS[name](s, 4, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(tr.indices, hard)
    with torch.no_grad():
        forced = ESTIMATORS[name](s, 4, generator=torch.Generator().manual_seed(0), sample=True)
    assert torch.equal(forced.indices, tr.indices)


def test_experiment_helpers():
    from bgcn.estimator_experiment import ROWS, format_tables, rows_changed, summarize

    assert set(E.SELECTION_ESTIMATORS) <= set(ROWS)
    a = torch.tensor([[1, 2, 3], [0, 2, 3], [0, 1, 3]])
    b = torch.tensor([[3, 2, 1], [0, 2, 1], [0, 1, 3]])       # row 0: same set, other order; row 1: changed
    assert rows_changed(a, b) == pytest.approx(1 / 3)
    runs = [{"row": "ste", "seed": s, "test_acc": 0.9 + 0.01 * s, "relvar_backbone": 0.0} for s in range(3)]
    summ = summarize(runs, ["ste"])
    assert summ[0]["test_acc"] == pytest.approx(0.91) and summ[0]["test_acc_std"] == pytest.approx(0.01)
    cfg = {"num_images": 10, "labels_per_class": 1, "k": 3, "seeds": 3, "timing_rounds": 2, "backbone": "b", "pretrain_epochs": 1,
           "epochs": 2, "warmup_epochs": 1, "device": "cpu", "threads": 1, "grad_repeats": 2}
    assert "| ste | 91.0 ± 1.0 |" in format_tables(summ, cfg, 0.1)
