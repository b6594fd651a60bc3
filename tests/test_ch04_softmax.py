"""Every formula and measured claim of chapter 04 (chapters/04_softmax_jacobian.md): the softmax Jacobian."""
from __future__ import annotations

import pytest
import torch

import bgcn
from bgcn.topk import soft_topk, softmax_jacobian

D = torch.float64


def _row(n=7, seed=0):
    return torch.randn(n, dtype=D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tau", [0.05, 0.5, 1.0, 3.0])
def test_jacobian_equals_autograd_eq_ch04_jacobian(tau):
    s = _row()
    J_auto = torch.autograd.functional.jacobian(lambda x: torch.softmax(x / tau, -1), s)
    J = softmax_jacobian(torch.softmax(s / tau, -1), tau)
    assert torch.allclose(J, J_auto, atol=1e-14, rtol=0)


def test_jacobian_batched_rows():
    S = torch.randn(4, 6, dtype=D, generator=torch.Generator().manual_seed(1))
    J = softmax_jacobian(torch.softmax(S / 0.7, -1), 0.7)
    assert J.shape == (4, 6, 6)
    for r in range(4):
        Ja = torch.autograd.functional.jacobian(lambda x: torch.softmax(x / 0.7, -1), S[r])
        assert torch.allclose(J[r], Ja, atol=1e-14, rtol=0)


def test_symmetric_rows_sum_zero_shift_invariance_eq_ch04_shift():
    s = _row(9, 2)
    w = torch.softmax(s / 0.5, -1)
    J = softmax_jacobian(w, 0.5)
    assert torch.equal(J, J.T)
    assert float(J.sum(1).abs().max()) < 1e-14
    for c in (-50.0, 1.0, 123.456):
        assert torch.allclose(torch.softmax((s + c) / 0.5, -1), w, atol=1e-14, rtol=0)


def test_psd_quadratic_form_is_variance_and_rank_eq_ch04_psd():
    s = _row(7, 3)
    tau = 0.5
    w = torch.softmax(s / tau, -1)
    J = softmax_jacobian(w, tau)
    U = torch.randn(500, 7, dtype=D, generator=torch.Generator().manual_seed(4))
    quad = torch.einsum("bi,ij,bj->b", U, J, U)
    var = ((w * U ** 2).sum(1) - (w * U).sum(1) ** 2) / tau
    assert torch.allclose(quad, var, atol=1e-13, rtol=0)
    assert float(quad.min()) >= 0
    eig, vec = torch.linalg.eigh(J)
    assert float(eig.min()) > -1e-15 and int(torch.linalg.matrix_rank(J)) == 6
    ones = torch.ones(7, dtype=D) / 7 ** 0.5
    assert float((J @ ones).abs().max()) < 1e-15  # null space = span(1)
    assert float(eig.max()) <= float(w.max()) / tau + 1e-12  # exercise 04-2
    assert float(J.abs().max()) <= 1 / (4 * tau) + 1e-12


def test_naive_softmax_overflows_soft_topk_does_not_eq_ch04_stable():
    # exp(s / tau) overflows at small tau; bgcn.soft_topk (and the temperature sweep) stay finite
    # and equal the max-shifted formula computed by hand
    from bgcn.temperature import temperature_sweep

    sim = torch.tensor([0.95, 0.90, 0.40, -0.30, -1.00], dtype=D)
    for dt, tau in ((torch.float32, 0.01), (torch.float64, 0.001)):
        s = sim.to(dt)
        x = s / tau
        naive = torch.exp(x) / torch.exp(x).sum()
        assert bool(torch.isnan(naive).any())
        m = x.max()
        stable = torch.exp(x - m) / torch.exp(x - m).sum()
        w, idx = soft_topk(s, 5, tau)                      # k = n: every weight, sorted
        assert bool(torch.isfinite(w).all()) and abs(float(w.sum()) - 1) < 1e-6
        assert torch.allclose(w, stable[idx], atol=1e-15 if dt == D else 1e-7, rtol=0)
        sweep = temperature_sweep(s, [tau], k=2)
        assert bool(torch.isfinite(sweep["entropy"]).all()) and float(sweep["topk_mass"][0]) <= 1 + 1e-6
    x = (sim / 0.1).to(torch.float32)  # fine without the trick
    assert torch.allclose(torch.exp(x) / torch.exp(x).sum(), soft_topk(sim.float(), 5, 0.1)[0], atol=1e-6)


def test_backward_at_large_scores_is_finite():
    # tau = 0.001 on cosine scores: bgcn.soft_topk's gradient is finite and equals eq. (6) by hand
    from bgcn.temperature import soft_topk_gradient

    s = torch.tensor([[0.95, 0.90, 0.40]], dtype=D, requires_grad=True)
    w, idx = soft_topk(s, 2, 0.001)
    up = torch.tensor([[0.0, 1.0]], dtype=D)
    (g,) = torch.autograd.grad((w * up).sum(), s)
    assert bool(torch.isfinite(g).all()) and float(g.abs().max()) > 0
    wf = torch.softmax(s.detach() / 0.001, -1)
    ghat = torch.zeros_like(wf).scatter(-1, idx, up)
    torch.testing.assert_close(g, wf * (ghat - (ghat * wf).sum(-1, keepdim=True)) / 0.001, rtol=1e-12, atol=0)
    torch.testing.assert_close(soft_topk_gradient(s.detach(), up, 2, 0.001), g, rtol=1e-12, atol=0)


@pytest.mark.parametrize("tau", [0.3, 1.0])
def test_vjp_formula_eq_ch04_vjp(tau):
    s = _row(300, 5).requires_grad_()
    v = torch.randn(300, dtype=D, generator=torch.Generator().manual_seed(6))
    w = torch.softmax(s / tau, -1)
    (g_auto,) = torch.autograd.grad(w, s, v)
    w = w.detach()
    formula = w * (v - (w * v).sum()) / tau
    assert torch.allclose(formula, g_auto, atol=1e-14, rtol=0)
    assert torch.allclose(formula, softmax_jacobian(w, tau).T @ v, atol=1e-14, rtol=0)


def test_vjp_formula_row_wise_matrix_exercise_04_4():
    S = torch.randn(6, 6, dtype=D, generator=torch.Generator().manual_seed(7)).requires_grad_()
    V = torch.randn(6, 6, dtype=D, generator=torch.Generator().manual_seed(8))
    W = torch.softmax(S / 0.5, -1)
    (g,) = torch.autograd.grad(W, S, V)
    W = W.detach()
    assert torch.allclose(W * (V - (W * V).sum(1, keepdim=True)) / 0.5, g, atol=1e-14, rtol=0)
    # the same, row by row, through bgcn's batched Jacobian: g_i = J_i^T v_i
    J = softmax_jacobian(W, 0.5)                                   # (6, 6, 6)
    assert torch.allclose((J.transpose(-1, -2) @ V.unsqueeze(-1)).squeeze(-1), g, atol=1e-14, rtol=0)


def _gathered(N=50, k=5, tau=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    F = torch.randn(N, 16, dtype=D, generator=gen).requires_grad_()
    g = torch.randn(k, dtype=D, generator=gen)
    return F, g


def test_gathered_weights_gradient_reaches_all_n_scores_eq_ch04_gathered_grad():
    N, k, tau = 50, 5, 1.0
    F, g = _gathered(N, k, tau)
    row = bgcn.cosine_similarity(F)[0].detach().clone().requires_grad_()
    w_k, idx = soft_topk(row, k, tau)
    (grad_row,) = torch.autograd.grad((g * w_k).sum(), row)
    w = torch.softmax(row.detach() / tau, -1)
    in_top = torch.zeros(N, dtype=D)
    in_top[idx] = 1.0
    g_full = torch.zeros(N, dtype=D)
    g_full[idx] = g
    formula = (in_top * g_full * w - w * (g * w[idx]).sum()) / tau
    assert torch.allclose(formula, grad_row, atol=1e-14, rtol=0)
    assert int((grad_row != 0).sum()) == N  # not k
    seed12 = torch.zeros(N, dtype=D)
    seed12[idx] = g * w[idx] * (1 - w[idx]) / tau
    assert int((seed12 != 0).sum()) == k
    assert float((seed12 - grad_row).norm() / grad_row.norm()) > 0.05


def test_gathered_weights_gradient_reaches_every_feature_vector():
    N, k = 50, 5
    F, g = _gathered(N, k)
    w_k, _ = soft_topk(bgcn.cosine_similarity(F)[0], k, 1.0)
    (gF,) = torch.autograd.grad((g * w_k).sum(), F)
    assert int((gF.abs().sum(1) > 0).sum()) == N


def test_renormalised_gathered_weights_reach_only_k_scores_exercise_04_3():
    N, k = 50, 5
    F, g = _gathered(N, k)
    row = bgcn.cosine_similarity(F)[0].detach().clone().requires_grad_()
    w_k, idx = soft_topk(row, k, 1.0)
    (gr,) = torch.autograd.grad((g * (w_k / w_k.sum())).sum(), row)
    off = torch.ones(N, dtype=torch.bool)
    off[idx] = False
    assert float(gr[off].abs().max()) < 1e-16 < float(gr[~off].abs().min())  # zero up to rounding
    sel = bgcn.ESTIMATORS["masked_softmax"](row[None], k, 1.0)  # softmax over the k scores only
    (gm,) = torch.autograd.grad((g * sel.weights[0]).sum(), row)
    assert int((gm != 0).sum()) == k  # exactly zero elsewhere
    assert torch.allclose(gm, gr, atol=1e-15, rtol=0)
