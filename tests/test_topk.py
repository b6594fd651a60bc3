import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bgcn
from bgcn.topk import ESTIMATORS, mask_diagonal

BASE = ["hard", "values", "softmax", "masked_softmax"]


# ---------------------------------------------------------------- selection matrix (seed 001)

def test_selection_matrix_reproduces_topk_values():
    torch.manual_seed(0)
    y = torch.randn(9, dtype=torch.float64)
    p = bgcn.topk_selection_matrix(y, 4)
    assert p.shape == (4, 9)
    assert torch.equal(p @ y, torch.topk(y, 4).values)
    assert torch.equal(p.sum(1), torch.ones(4, dtype=torch.float64))  # one 1 per row
    assert float(p.sum(0).max()) == 1.0  # each entry chosen at most once


def test_selection_matrix_gradient_equals_topk_gradient_seed001():
    """Seed 001's experiment: loss = sum(topk(W x)^2); both routes give the same dW and dx."""
    g = torch.Generator().manual_seed(1)
    x1 = torch.rand(6, generator=g, dtype=torch.float64, requires_grad=True)
    w1 = torch.rand(6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    w2 = w1.detach().clone().requires_grad_(True)
    (torch.topk(w1 @ x1, 3).values ** 2).sum().backward()
    y2 = w2 @ x2
    p = bgcn.topk_selection_matrix(y2, 3)
    ((p @ y2) ** 2).sum().backward()
    assert torch.allclose(w1.grad, w2.grad, atol=1e-14, rtol=0)
    assert torch.allclose(x1.grad, x2.grad, atol=1e-14, rtol=0)
    # rows of W whose output was not selected get exactly zero gradient
    unselected = torch.ones(6, dtype=torch.bool)
    unselected[torch.topk(y2.detach(), 3).indices] = False
    assert float(w1.grad[unselected].abs().max()) == 0.0


def test_selection_matrix_batched_and_depends_on_input():
    y = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]])
    p = bgcn.topk_selection_matrix(y, 2)
    assert p.shape == (2, 2, 3)
    assert torch.equal(torch.einsum("bkn,bn->bk", p, y), torch.topk(y, 2).values)
    # the matrix is only locally constant: swapping the order changes it
    y2 = y.clone()
    y2[0, 1] = 10.0
    assert not torch.equal(bgcn.topk_selection_matrix(y2, 2)[0], p[0])


# ---------------------------------------------------------------- soft top-k (seed 000 eqs. 9-11)

def test_soft_topk_is_softmax_gathered_at_hard_topk():
    torch.manual_seed(2)
    s = torch.randn(5, 12, dtype=torch.float64)
    w, idx = bgcn.soft_topk(s, 3, tau=0.7)
    ref_w = torch.softmax(s / 0.7, dim=1)
    assert torch.equal(idx, torch.topk(s, 3, dim=1).indices)
    assert torch.allclose(w, ref_w.gather(1, idx))
    # weights are sorted like the scores and hold less than all the mass
    assert (w[:, :-1] >= w[:, 1:]).all()
    assert (w.sum(1) < 1).all()


def test_soft_topk_one_row():
    s = torch.tensor([0.1, 0.9, 0.5, 0.3], dtype=torch.float64)
    w, idx = bgcn.soft_topk(s, 2, tau=1.0)
    assert idx.tolist() == [1, 2]
    assert torch.allclose(w, torch.softmax(s, 0)[[1, 2]])


def test_soft_topk_gradcheck():
    s = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: bgcn.soft_topk(x, 3, 0.5)[0], (s,))
    s2 = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: bgcn.soft_topk(x, 2, 0.3, exclude_self=True)[0], (s2,))


def test_soft_topk_gradient_reaches_every_entry_of_the_row():
    """The softmax normaliser couples the whole row: eq. (12)'s sum over j in N_k(i) is incomplete."""
    s = torch.randn(3, 20, dtype=torch.float64, requires_grad=True)
    w, _ = bgcn.soft_topk(s, 4, tau=1.0)
    w.sum().backward()
    assert int((s.grad != 0).sum()) == 3 * 20


def test_soft_topk_exclude_self():
    s = bgcn.cosine_similarity(torch.randn(6, 3, dtype=torch.float64))
    w, idx = bgcn.soft_topk(s, 2, tau=0.5, exclude_self=True)
    assert (idx != torch.arange(6).unsqueeze(1)).all()
    masked = s.clone()
    masked.fill_diagonal_(-math.inf)
    assert torch.allclose(w, torch.softmax(masked / 0.5, 1).gather(1, idx))
    _, idx_self = bgcn.soft_topk(s, 1, tau=0.5)
    assert torch.equal(idx_self[:, 0], torch.arange(6))  # every node is its own top-1


def test_temperature_limits_eq7():
    s = torch.tensor([[0.2, 0.9, 0.5, 0.85]], dtype=torch.float64)
    w_cold, _ = bgcn.soft_topk(s, 4, tau=1e-3)
    assert abs(float(w_cold[0, 0]) - 1.0) < 1e-12  # one-hot at the argmax
    w_hot, _ = bgcn.soft_topk(s, 4, tau=1e6)
    assert torch.allclose(w_hot, torch.full_like(w_hot, 0.25), atol=1e-6)  # uniform


# ---------------------------------------------------------------- softmax Jacobian (seed 000 eq. 6)

def test_softmax_jacobian_equals_eq6_entry_by_entry():
    torch.manual_seed(3)
    s = torch.randn(6, dtype=torch.float64)
    tau = 0.4
    w = torch.softmax(s / tau, 0)
    auto = torch.autograd.functional.jacobian(lambda x: torch.softmax(x / tau, 0), s)
    formula = bgcn.softmax_jacobian(w, tau)
    for j in range(6):
        for l in range(6):
            eq6 = (1 / tau) * float(w[j]) * ((1.0 if j == l else 0.0) - float(w[l]))
            assert abs(float(auto[j, l]) - eq6) < 1e-14
            assert abs(float(formula[j, l]) - eq6) < 1e-14
    assert torch.allclose(formula.sum(1), torch.zeros(6, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(formula, formula.T)
    assert float(torch.linalg.eigvalsh(formula).min()) > -1e-14


def test_effective_neighbours_and_mass():
    assert abs(float(bgcn.effective_neighbours(torch.full((50,), 1 / 50, dtype=torch.float64))) - 50) < 1e-9
    assert abs(float(bgcn.effective_neighbours(torch.tensor([1.0, 0, 0]))) - 1) < 1e-6
    w = torch.tensor([0.5, 0.3, 0.2])
    assert abs(float(bgcn.topk_mass(w, 2)) - 0.8) < 1e-6


# ---------------------------------------------------------------- estimators

@pytest.mark.parametrize("name", BASE)
def test_estimators_shapes_and_index_agreement(name):
    s = bgcn.cosine_similarity(torch.randn(9, 4, dtype=torch.float64))
    sel = ESTIMATORS[name](s, 3, 0.5, exclude_self=True)
    assert sel.indices.shape == (9, 3) and sel.weights.shape == (9, 3)
    ref = torch.topk(mask_diagonal(s), 3, dim=1).indices
    assert torch.equal(sel.indices, ref)


def test_estimator_weights_definitions():
    s = torch.randn(5, 8, dtype=torch.float64)
    idx = torch.topk(s, 3, 1).indices
    assert torch.equal(ESTIMATORS["hard"](s, 3).weights, torch.ones(5, 3, dtype=torch.float64))
    assert torch.allclose(ESTIMATORS["values"](s, 3).weights, s.gather(1, idx).clamp_min(0))
    sm = ESTIMATORS["softmax"](s, 3, 0.3).weights
    assert torch.allclose(sm, torch.softmax(s / 0.3, 1).gather(1, idx))
    ms = ESTIMATORS["masked_softmax"](s, 3, 0.3).weights
    assert torch.allclose(ms, torch.softmax(s.gather(1, idx) / 0.3, 1))
    # renormalising seed 000's gathered weights over the k kept ones gives masked_softmax exactly
    assert torch.allclose(sm / sm.sum(1, keepdim=True), ms)


@pytest.mark.parametrize("name", ["values", "softmax", "masked_softmax"])
def test_estimator_gradcheck(name):
    s = torch.rand(4, 7, dtype=torch.float64, requires_grad=True)
    fn = ESTIMATORS[name]
    assert torch.autograd.gradcheck(lambda x: fn(x, 3, 0.5).weights, (s,))


def test_which_scores_receive_gradient():
    s = torch.rand(4, 10, dtype=torch.float64, requires_grad=True)
    counts = {}
    for name in BASE:
        if s.grad is not None:
            s.grad = None
        w = ESTIMATORS[name](s, 3, 0.5).weights
        if w.requires_grad:
            (w * torch.arange(1, 4, dtype=torch.float64)).sum().backward()
            counts[name] = int((s.grad != 0).sum())
        else:
            counts[name] = 0
    assert counts == {"hard": 0, "values": 12, "softmax": 40, "masked_softmax": 12}


def test_unknown_estimator_lists_names():
    with pytest.raises(ValueError, match="valid names are .*softmax"):
        bgcn.get_estimator("sofmax")
    with pytest.raises(ValueError, match="Did you mean 'softmax'"):
        bgcn.get_estimator("sofmax")


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("k", [0, -1, 8])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k="):
        bgcn.soft_topk(torch.randn(3, 7), k, 1.0)


def test_k_equal_n_minus_one_with_self_excluded():
    s = torch.randn(5, 5)
    bgcn.soft_topk(s, 4, 1.0, exclude_self=True)
    with pytest.raises(ValueError, match="excluded"):
        bgcn.soft_topk(s, 5, 1.0, exclude_self=True)


@pytest.mark.parametrize("tau", [0, -1.0, float("nan"), float("inf")])
def test_bad_tau(tau):
    with pytest.raises(ValueError, match="tau"):
        bgcn.soft_topk(torch.randn(3, 7), 2, tau)


def test_bad_types():
    with pytest.raises(TypeError, match="k must be an int"):
        bgcn.soft_topk(torch.randn(3, 7), 2.5, 1.0)
    with pytest.raises(TypeError, match="tau must be a number"):
        bgcn.soft_topk(torch.randn(3, 7), 2, "1")
    with pytest.raises(ValueError, match="scores"):
        bgcn.soft_topk(torch.randn(2, 3, 4), 2, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        bgcn.soft_topk(torch.tensor([[1.0, float("nan"), 0.0]]), 1, 1.0)


# ---------------------------------------------------------------- properties

@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 30), m_extra=st.integers(0, 10), k=st.integers(1, 30),
       log_tau=st.floats(-4, 3), seed=st.integers(0, 10_000), exclude=st.booleans(),
       name=st.sampled_from(BASE))
def test_estimator_properties(n, m_extra, k, log_tau, seed, exclude, name):
    m = n + m_extra
    k = max(1, min(k, m - 1 if exclude else m))
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(n, m, generator=g) * 2 - 1
    sel = ESTIMATORS[name](s, k, 10 ** log_tau, exclude_self=exclude)
    assert torch.isfinite(sel.weights).all()
    assert (sel.weights >= 0).all() and (sel.weights <= 1 + 1e-6).all()
    assert int(sel.indices.min()) >= 0 and int(sel.indices.max()) < m
    for i, row in enumerate(sel.indices.tolist()):
        assert len(set(row)) == k
        if exclude:
            assert i not in row
