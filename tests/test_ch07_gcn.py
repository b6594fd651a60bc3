"""Chapter 7 (chapters/07_gcn_backward.md): the formulas the chapter states, as tests.

The layer VJPs and gcn2 backward themselves are covered by tests/test_gcn_spec.py; here: the
hand-checkable toy, the NLL gradient entering the node-level model, the hand backward against
PyG's GCNConv, sparse vs dense adjacency gradients, and the low-rank bound on dL/dA.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import bgcn
from bgcn.gcn import GCN, edge_index_to_dense
from bgcn.gcn_spec import gcn_layer_backward, gcn_layer_forward, normalized_adjacency

DT = torch.float64
PATH4 = torch.tensor([[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0]], dtype=DT)


def _knn_problem(n=50, d_in=6, k=4, C=3, seed=0, estimator="values"):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, d_in, generator=g, dtype=DT)
    y = torch.randint(0, C, (n,), generator=g)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=g)[: n // 4]] = True
    graph = bgcn.knn_graph(feats, k, estimator)
    return feats, y, mask, graph


def test_toy_normalized_adjacency_by_hand():
    r6 = 1 / math.sqrt(6)
    hand = torch.tensor([[1 / 2, r6, 0, 0], [r6, 1 / 3, 1 / 3, 0], [0, 1 / 3, 1 / 3, r6], [0, 0, r6, 1 / 2]], dtype=DT)
    eye = torch.eye(4, dtype=DT)
    z = gcn_layer_forward(normalized_adjacency(PATH4), eye, eye, torch.zeros(4, dtype=DT))
    torch.testing.assert_close(z, hand, rtol=0, atol=1e-15)


def test_toy_backward_by_hand_and_nonedge_gradient():
    a_hat = normalized_adjacency(PATH4)
    eye = torch.eye(4, dtype=DT)
    dz = torch.zeros(4, 4, dtype=DT)
    dz[0] = 1.0
    da, dx, dw, db = gcn_layer_backward(a_hat, eye, eye, torch.zeros(4, dtype=DT), dz)
    torch.testing.assert_close(da, dz, rtol=0, atol=0)                     # e_0 1^T, non-edges (0,2),(0,3) too
    assert da[0, 2] == 1 and PATH4[0, 2] == 0
    col = torch.tensor([0.5, 1 / math.sqrt(6), 0, 0], dtype=DT)[:, None].expand(4, 4)
    torch.testing.assert_close(dx, col, rtol=0, atol=1e-15)
    torch.testing.assert_close(dw, col, rtol=0, atol=1e-15)
    torch.testing.assert_close(db, torch.ones(4, dtype=DT), rtol=0, atol=0)


def test_cycle_exercise_all_entries_one_third():
    a = PATH4.clone()
    a[0, 3] = a[3, 0] = 1
    a_hat = normalized_adjacency(a)
    torch.testing.assert_close(a_hat[(a + torch.eye(4, dtype=DT)) > 0], torch.full((12,), 1 / 3, dtype=DT))


def test_nll_gradient_formula():
    n, C = 20, 5
    z = torch.randn(n, C, dtype=DT, requires_grad=True)
    y = torch.randint(0, C, (n,))
    m = torch.rand(n) < 0.4
    m[0] = True
    F.nll_loss(torch.log_softmax(z, 1)[m], y[m]).backward()
    hand = (torch.softmax(z.detach(), 1) - F.one_hot(y, C).to(DT)) * m[:, None] / m.sum()
    torch.testing.assert_close(z.grad, hand, rtol=0, atol=1e-15)
    assert torch.all(z.grad[~m] == 0)
    torch.testing.assert_close(z.grad.sum(1), torch.zeros(n, dtype=DT), rtol=0, atol=1e-15)  # rows sum to 0


def test_hand_backward_of_node_model_equals_pyg_autograd():
    feats, y, m, graph = _knn_problem()
    ew = graph.edge_weight.detach()
    model = GCN(6, 8, 3, dropout=0.0).double().eval()
    logp = model(feats, graph.edge_index, ew)
    F.nll_loss(logp[m], y[m]).backward()
    w1, b1 = model.conv1.lin.weight.detach().T, model.conv1.bias.detach()
    w2, b2 = model.conv2.lin.weight.detach().T, model.conv2.bias.detach()
    a_hat = normalized_adjacency(edge_index_to_dense(graph.edge_index, ew, feats.shape[0]))
    z1 = gcn_layer_forward(a_hat, feats, w1, b1)
    h1 = torch.relu(z1)
    z2 = gcn_layer_forward(a_hat, h1, w2, b2)
    torch.testing.assert_close(torch.log_softmax(z2, 1), logp.detach(), rtol=0, atol=1e-12)
    dz2 = (torch.softmax(z2, 1) - F.one_hot(y, 3).to(DT)) * m[:, None] / m.sum()
    _, dh1, dw2, db2 = gcn_layer_backward(a_hat, h1, w2, b2, dz2)
    _, _, dw1, db1 = gcn_layer_backward(a_hat, feats, w1, b1, dh1 * (z1 > 0))
    for hand, auto in [(dw1, model.conv1.lin.weight.grad.T), (db1, model.conv1.bias.grad),
                       (dw2, model.conv2.lin.weight.grad.T), (db2, model.conv2.bias.grad)]:
        torch.testing.assert_close(hand, auto, rtol=0, atol=1e-12)


def _dense_grad(model, feats, y, m, graph):
    a = edge_index_to_dense(graph.edge_index, graph.edge_weight.detach(), feats.shape[0]).requires_grad_(True)
    F.nll_loss(model(feats, adj=a)[m], y[m]).backward()
    return a


def test_sparse_edge_grad_equals_dense_grad_on_edges_and_nonedges_are_nonzero():
    feats, y, m, graph = _knn_problem(seed=1)
    model = GCN(6, 8, 3, dropout=0.0).double()
    a = _dense_grad(model, feats, y, m, graph)
    ew = graph.edge_weight.detach().clone().requires_grad_(True)
    F.nll_loss(model(feats, graph.edge_index, ew)[m], y[m]).backward()
    torch.testing.assert_close(ew.grad, a.grad[graph.edge_index[1], graph.edge_index[0]], rtol=0, atol=1e-12)
    nonedge = a.detach() == 0
    assert (a.grad[nonedge] != 0).float().mean() > 0.2
    assert (a.grad.abs() * nonedge).sum() > (a.grad.abs() * ~nonedge).sum()


@pytest.mark.parametrize("hid,C", [(4, 3), (6, 5), (4, 10), (3, 8)])
def test_dL_dA_low_rank_bound(hid, C):
    feats, y, m, graph = _knn_problem(n=80, C=C, seed=hid)
    torch.manual_seed(hid)
    model = GCN(6, hid, C, dropout=0.0).double()
    a = _dense_grad(model, feats, y, m, graph)
    sv = torch.linalg.svdvals(a.grad)
    rank = int((sv > sv[0] * 1e-10).sum())
    # eq-ch07-lowrank, tightened: G1 has rank <= hid, G2 = dZ2 (H1 W2)^T <= min(hid, C - 1) (softmax
    # rows sum to zero; H1 W2 passes through hid columns), the degree term + 1 (exercise 07-3)
    assert 1 < rank <= hid + min(hid, C - 1) + 1
    assert rank < 80 // 2


def test_single_layer_dA_rank_at_most_d_out():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(30, 30, generator=g, dtype=DT)
    x = torch.randn(30, 7, generator=g, dtype=DT)
    w = torch.randn(7, 2, generator=g, dtype=DT)
    da, *_ = gcn_layer_backward(a, x, w, torch.zeros(2, dtype=DT), torch.randn(30, 2, generator=g, dtype=DT))
    assert int(torch.linalg.matrix_rank(da)) == 2


def test_two_layer_feature_gradient_reaches_only_two_hops():
    # path 0-1-2-3-4-5 (directed both ways), label only node 0: features of nodes 0,1,2 get gradient
    n = 6
    src = torch.tensor([0, 1, 1, 2, 2, 3, 3, 4, 4, 5])
    dst = torch.tensor([1, 0, 2, 1, 3, 2, 4, 3, 5, 4])
    ei = torch.stack([src, dst])
    torch.manual_seed(0)
    model = GCN(3, 4, 2, dropout=0.0).double()
    with torch.no_grad():
        model.conv1.lin.weight.abs_()           # keep every ReLU open for positive inputs
    x = torch.rand(n, 3, dtype=DT).add(0.1).requires_grad_(True)
    m = torch.zeros(n, dtype=torch.bool)
    m[0] = True
    F.nll_loss(model(x, ei)[m], torch.tensor([1])).backward()
    reached = (x.grad.abs().sum(1) > 0).tolist()
    assert reached == [True, True, True, False, False, False]


def test_lowrank_formula_with_degree_term_equals_autograd():
    # eq-ch07-lowrank: dL/dA = D^-1/2 G D^-1/2 + c 1^T, c_i = -(sum_j G_ij Â_ij + G_ji Â_ji) / (2 D_ii)
    feats, y, m, graph = _knn_problem(n=45, seed=7)
    n, C = 45, 3
    torch.manual_seed(7)
    model = GCN(6, 5, C, dropout=0.0).double()
    a = _dense_grad(model, feats, y, m, graph)
    w1, b1 = model.conv1.lin.weight.detach().T, model.conv1.bias.detach()
    w2, b2 = model.conv2.lin.weight.detach().T, model.conv2.bias.detach()
    deg = (a.detach() + torch.eye(n, dtype=DT)).sum(1)
    a_hat = normalized_adjacency(a.detach())
    z1 = gcn_layer_forward(a_hat, feats, w1, b1)
    h1 = torch.relu(z1)
    z2 = gcn_layer_forward(a_hat, h1, w2, b2)
    dz2 = (torch.softmax(z2, 1) - F.one_hot(y, C).to(DT)) * m[:, None] / m.sum()
    g2, dh1, _, _ = gcn_layer_backward(a_hat, h1, w2, b2, dz2)
    dz1 = dh1 * (z1 > 0)
    g1, _, _, _ = gcn_layer_backward(a_hat, feats, w1, b1, dz1)
    g = g1 + g2
    c = -((g * a_hat).sum(1) + (g * a_hat).sum(0)) / (2 * deg)
    s = deg.rsqrt()
    torch.testing.assert_close(s[:, None] * g * s[None, :] + c[:, None], a.grad, rtol=0, atol=1e-12)
    u = torch.cat([s[:, None] * dz1, s[:, None] * dz2, c[:, None]], 1)        # the thin factors
    v = torch.cat([s[:, None] * (feats @ w1), s[:, None] * (h1 @ w2), torch.ones(n, 1, dtype=DT)], 1)
    torch.testing.assert_close(u @ v.T, a.grad, rtol=0, atol=1e-12)
    assert u.shape == (n, 5 + C + 1)
