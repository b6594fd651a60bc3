"""Every formula and measured claim of chapter 02 (chapters/02_hard_topk.md): hard top-k."""
from __future__ import annotations

import pytest
import torch

import bgcn
from bgcn.topk import ESTIMATORS, topk_selection_matrix

D = torch.float64


def test_selection_matrix_gives_values_eq_ch02_selection():
    g = torch.Generator().manual_seed(0)
    for n, k in [(6, 3), (10, 1), (7, 7)]:
        y = torch.rand(n, generator=g, dtype=D)
        P = topk_selection_matrix(y, k)
        assert P.shape == (k, n) and not P.requires_grad
        assert torch.equal(P @ y, torch.topk(y, k).values)
        assert torch.equal(P.sum(1), torch.ones(k, dtype=D))  # one 1 per row


def test_seed001_two_routes_identical_gradients():
    g = torch.Generator().manual_seed(1)
    x0, W0 = torch.rand(6, generator=g, dtype=D), torch.rand(6, 6, generator=g, dtype=D)
    xa, Wa = x0.clone().requires_grad_(), W0.clone().requires_grad_()
    (torch.topk(Wa @ xa, 3).values ** 2).sum().backward()
    xb, Wb = x0.clone().requires_grad_(), W0.clone().requires_grad_()
    yb = Wb @ xb
    ((topk_selection_matrix(yb, 3) @ yb) ** 2).sum().backward()
    assert torch.equal(Wa.grad, Wb.grad) and torch.equal(xa.grad, xb.grad)
    assert int((Wa.grad.abs().sum(1) == 0).sum()) == 6 - 3  # n - k rows get nothing


def test_topk_jacobian_is_selection_matrix_eq_ch02_jacobian():
    g = torch.Generator().manual_seed(2)
    y = torch.randn(9, generator=g, dtype=D)
    J = torch.autograd.functional.jacobian(lambda t: torch.topk(t, 4).values, y)
    assert torch.equal(J, topk_selection_matrix(y, 4))


def test_indices_carry_no_gradient_values_do():
    # bgcn.hard_topk / soft_topk: values and weights are in the autograd graph, the indices are
    # int64 and outside it (no backward through them is possible)
    y = torch.tensor([[0.3, 0.9, 0.1, 0.6], [0.5, 0.2, 0.8, 0.4]], dtype=D, requires_grad=True)
    vals, idx = bgcn.hard_topk(y, 2)
    w, idx_soft = bgcn.soft_topk(y, 2, 0.5)
    assert torch.equal(idx, torch.tensor([[1, 3], [2, 0]])) and torch.equal(idx_soft, idx)
    assert vals.grad_fn is not None and w.grad_fn is not None
    for t in (idx, idx_soft, bgcn.knn_indices(y.detach(), 1)):
        assert t.dtype == torch.int64 and not t.requires_grad and t.grad_fn is None
    with pytest.raises(RuntimeError):
        torch.autograd.grad(idx.double().sum(), y)
    # the values' gradient is the selection matrix (an independent check of the same claim)
    (g,) = torch.autograd.grad(vals.sum(), y)
    assert g.tolist() == [[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0]]


def test_index_finite_difference_zero_except_at_tie():
    # the top-1 index of bgcn.hard_topk as a function of one score: piecewise constant, so its
    # central difference is 0 except in the step of width 2h around the tie with 0.6
    a = torch.linspace(-0.2, 1.0, 10001, dtype=D)
    h = 1e-4
    y_of = lambda t: torch.stack([t, *(torch.full_like(t, v) for v in (0.2, 0.4, 0.6))], dim=1)
    top1 = lambda t: bgcn.hard_topk(y_of(t), 1)[1][:, 0]
    fd = (top1(a + h) - top1(a - h)).double() / (2 * h)
    nz = torch.nonzero(fd).flatten()
    assert 1 <= nz.numel() <= 2
    assert bool(((a[nz] - 0.6).abs() <= h).all())
    assert torch.allclose(fd[nz], torch.full_like(fd[nz], -3 / (2 * h)))


def test_topk_values_piecewise_linear_derivative_is_entry_of_P():
    # d(second-largest value)/da, by autograd through bgcn.hard_topk, equals the entry P[1, 0] of
    # bgcn.topk_selection_matrix at every a: 1 while a is the second largest, 0 elsewhere
    a = torch.linspace(-0.2, 1.0, 601, dtype=D, requires_grad=True)
    Y = torch.stack([a, *(torch.full_like(a, v) for v in (0.2, 0.4, 0.6))], dim=1)
    vals, idx = bgcn.hard_topk(Y, 2)
    d2 = torch.autograd.grad(vals[:, 1].sum(), a)[0]
    P10 = torch.stack([topk_selection_matrix(row, 2)[1, 0] for row in Y.detach()])
    assert torch.equal(d2, P10)
    ad = a.detach()
    inside = (ad > 0.4 + 1e-9) & (ad < 0.6 - 1e-9)
    outside = (ad < 0.4 - 1e-9) | (ad > 0.6 + 1e-9)
    assert bool((d2[inside] == 1).all()) and bool((d2[outside] == 0).all())
    assert set(idx[:, 1].tolist()) == {0, 2, 3}


def test_selection_matrix_changes_when_order_swaps():
    y0 = torch.tensor([0.9, 0.50, 0.49, 0.1], dtype=D)
    P0 = topk_selection_matrix(y0, 2)
    e2 = torch.tensor([0, 0, 1.0, 0], dtype=D)
    assert torch.equal(topk_selection_matrix(y0 + 0.005 * e2, 2), P0)
    y1 = y0 + 0.02 * e2
    assert not torch.equal(topk_selection_matrix(y1, 2), P0)
    assert float((P0 @ y1 - torch.topk(y1, 2).values).abs().max()) == pytest.approx(0.01)
    y = y0.clone().requires_grad_()
    (g,) = torch.autograd.grad(torch.topk(y, 2).values.sum(), y)
    assert g.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_values_estimator_gradient_support_is_the_selection_eq_ch02_values():
    g = torch.Generator().manual_seed(0)
    N, k = 8, 3
    F = (torch.randn(N, 5, generator=g, dtype=D) + 1.0).requires_grad_()
    S = bgcn.cosine_similarity(F)
    sel = ESTIMATORS["values"](S, k, exclude_self=True)
    c = torch.randn(N, k, generator=g, dtype=D)
    gS, gF = torch.autograd.grad((c * sel.weights).sum(), [S, F])
    mask = torch.zeros(N, N, dtype=torch.bool).scatter_(1, sel.indices, True)
    assert bool((sel.weights > 0).all())
    assert torch.equal(gS != 0, mask)
    assert int((gS != 0).sum()) == N * k
    assert bool((gF.abs().sum(1) > 0).all())
    # finite differences on every entry of S
    Sd = S.detach()
    f = lambda s: (c * ESTIMATORS["values"](s, k, exclude_self=True).weights).sum()
    eps = 1e-6
    fd = torch.zeros(N, N, dtype=D)
    for i in range(N):
        for j in range(N):
            e = torch.zeros(N, N, dtype=D)
            e[i, j] = eps
            fd[i, j] = (f(Sd + e) - f(Sd - e)) / (2 * eps)
    assert torch.allclose(fd, gS, atol=1e-6)


def test_values_estimator_clips_negative_similarities():
    S = torch.tensor([[0.0, -0.5, -0.2], [0.3, 0.0, -0.1], [0.2, 0.4, 0.0]], dtype=D, requires_grad=True)
    sel = ESTIMATORS["values"](S, 1, exclude_self=True)
    assert bool((sel.weights >= 0).all())
    (gS,) = torch.autograd.grad(sel.weights.sum(), S)
    assert float(gS[0].abs().sum()) == 0.0  # row 0's best neighbour has similarity -0.2 -> clipped
