import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bgcn
from bgcn.graph import (KNNGraph, edge_change_fraction, edge_homophily, rankings_to_edges, rankings_to_edges_loop,
                        symmetrize_dense)


def test_edges_follow_source_to_target_convention():
    idx = torch.tensor([[1, 2], [0, 2], [1, 0]])
    w = torch.tensor([[0.5, 0.25], [1.0, 2.0], [3.0, 4.0]])
    ei, ew = rankings_to_edges(idx, w)
    assert ei.tolist() == [[1, 2, 0, 2, 1, 0], [0, 0, 1, 1, 2, 2]]
    assert ew.tolist() == [0.5, 0.25, 1.0, 2.0, 3.0, 4.0]


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 25), k=st.integers(1, 6), seed=st.integers(0, 999))
def test_vectorised_edges_equal_seed_loop(n, k, seed):
    k = min(k, n - 1)
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))
    g = bgcn.knn_graph(x, k, estimator="hard")
    loop = rankings_to_edges_loop(g.indices)
    assert torch.equal(loop.flip(0), g.edge_index)
    assert g.edge_index.shape == (2, n * k)


def test_symmetric_and_self_loops():
    idx = torch.tensor([[1], [2], [1]])  # 1->0, 2->1, 1->2 ; pair (1,2) mutual
    w = torch.tensor([[1.0], [2.0], [4.0]])
    ei, ew = rankings_to_edges(idx, w, symmetric=True)
    a = torch.zeros(3, 3)
    a[ei[1], ei[0]] = ew
    assert torch.allclose(a, a.T)
    assert float(a[1, 2]) == pytest.approx(3.0)  # mean of 2 and 4
    assert float(a[0, 1]) == pytest.approx(1.0) and float(a[1, 0]) == pytest.approx(1.0)
    ei2, ew2 = rankings_to_edges(idx, w, self_loops=True, self_loop_weight=0.5)
    assert ei2.shape == (2, 6)
    assert ei2[:, -3:].tolist() == [[0, 1, 2], [0, 1, 2]] and ew2[-3:].tolist() == [0.5] * 3


def test_knn_graph_weights_are_differentiable_and_reach_features():
    torch.manual_seed(0)
    x = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
    for name, expect_grad in [("hard", False), ("values", True), ("softmax", True), ("masked_softmax", True)]:
        g = bgcn.knn_graph(x, 3, estimator=name, tau=0.5)
        assert g.edge_weight.requires_grad == expect_grad, name
        assert (g.indices != torch.arange(12).unsqueeze(1)).all()
        if expect_grad:
            (gr,) = torch.autograd.grad((g.edge_weight * torch.arange(36.0, dtype=torch.float64)).sum(), x)
            assert float(gr.abs().sum()) > 0


def test_knn_graph_gradcheck_softmax():
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: bgcn.knn_graph(f, 2, "softmax", 0.7).edge_weight, (x,))


@pytest.mark.parametrize("name", ["hard", "values", "masked_softmax"])
def test_chunked_graph_equals_dense(name):
    x = torch.randn(40, 5, dtype=torch.float64, requires_grad=True)
    a = bgcn.knn_graph(x, 4, name, 0.3)
    b = bgcn.knn_graph(x, 4, name, 0.3, chunk_size=7)
    assert torch.equal(a.indices, b.indices)
    assert torch.allclose(a.edge_weight, b.edge_weight)
    if name != "hard":
        ga, = torch.autograd.grad(a.edge_weight.sum(), x)
        gb, = torch.autograd.grad(b.edge_weight.sum(), x)
        assert torch.allclose(ga, gb)


def test_chunked_softmax_rejected():
    with pytest.raises(ValueError, match="chunk_size"):
        bgcn.knn_graph(torch.randn(10, 3), 2, "softmax", chunk_size=4)


def test_to_dense_and_networkx():
    x = torch.randn(8, 3)
    g = bgcn.knn_graph(x, 2, "values")
    a = g.to_dense()
    for (s, t), w in zip(g.edge_index.T.tolist(), g.edge_weight.tolist()):
        assert float(a[t, s]) == pytest.approx(w)
    nxg = g.to_networkx()
    assert nxg.number_of_nodes() == 8 and nxg.number_of_edges() == 16
    s, t = g.edge_index[:, 0].tolist()
    assert nxg[s][t]["weight"] == pytest.approx(float(g.edge_weight[0]))


def test_edge_change_fraction():
    a = torch.tensor([[1, 2], [0, 2], [0, 1]])
    assert edge_change_fraction(a, a) == 0.0
    assert edge_change_fraction(a, a.flip(1)) == 0.0  # order in a row does not matter
    b = torch.tensor([[1, 2], [0, 2], [2, 1]])
    assert edge_change_fraction(a, b) == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="same shape"):
        edge_change_fraction(a, a[:2])


def test_bad_input():
    with pytest.raises(ValueError, match="k="):
        bgcn.knn_graph(torch.randn(5, 2), 5)
    with pytest.raises(ValueError, match="features"):
        bgcn.knn_graph(torch.randn(5), 2)
    with pytest.raises(ValueError, match="NaN"):
        bgcn.knn_graph(torch.tensor([[0.0, float("nan")], [1.0, 1.0], [2.0, 0.0]]), 1)
    with pytest.raises(ValueError, match="unknown estimator"):
        bgcn.knn_graph(torch.randn(5, 2), 2, estimator="nope")
    with pytest.raises(ValueError, match="tau"):
        bgcn.knn_graph(torch.randn(5, 2), 2, tau=0.0)
    with pytest.raises(ValueError, match="indices must lie"):
        rankings_to_edges(torch.tensor([[0, 5]]))
    with pytest.raises(ValueError, match="weights must have the same shape"):
        rankings_to_edges(torch.tensor([[0], [1]]), torch.ones(3))


def test_score_function_log_prob_rides_on_graph_info():
    x = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    g = bgcn.knn_graph(x, 2, "gumbel_reinforce", 0.5, generator=torch.Generator().manual_seed(0))
    lp = g.info["log_prob"]
    assert lp.shape == (10,) and bool((lp <= 0).all())
    (grad,) = torch.autograd.grad(lp.sum(), x)
    assert float(grad.abs().sum()) > 0
    assert "log_prob" not in bgcn.knn_graph(x, 2, "softmax").info


def test_to_networkx_and_edge_change_bad_input():
    ei = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(TypeError, match="edge_index must be a torch.Tensor"):
        bgcn.to_networkx([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match=r"shape \(2, E\)"):
        bgcn.to_networkx(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="one weight per column"):
        bgcn.to_networkx(ei, torch.ones(3))
    with pytest.raises(ValueError, match="num_nodes=1"):
        bgcn.to_networkx(ei, num_nodes=1)
    g = bgcn.to_networkx(ei, torch.tensor([0.5, 2.0]), num_nodes=3)
    assert g.number_of_nodes() == 3 and g[0][1]["weight"] == 0.5 and g[1][0]["weight"] == 2.0
    with pytest.raises(ValueError, match=r"\(N, k\)"):
        edge_change_fraction(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="weights contains 1 NaN"):
        rankings_to_edges(torch.tensor([[1], [0]]), torch.tensor([[float("nan")], [1.0]]))


def test_edge_homophily_by_hand():
    idx = torch.tensor([[1, 2], [0, 3], [3, 0], [2, 1]])
    lab = torch.tensor([0, 0, 1, 1])
    # same-class edges: 0-1, 1-0, 2-3, 3-2 -> 4 of 8
    assert edge_homophily(idx, lab) == 0.5
    with pytest.raises(ValueError, match="labels"):
        edge_homophily(idx, lab[:3])


def test_symmetric_dense_equals_sparse():
    torch.manual_seed(0)
    n, k = 9, 3
    idx = torch.stack([torch.randperm(n - 1)[:k] for _ in range(n)])
    idx = idx + (idx >= torch.arange(n)[:, None]).long()  # no self
    w = torch.rand(n, k, dtype=torch.float64) + 0.1
    ei, ew = rankings_to_edges(idx, w, symmetric=True)
    sparse = KNNGraph(ei, ew, idx, w, n).to_dense()
    dense = torch.zeros(n, n, dtype=torch.float64)
    dense[torch.arange(n).repeat_interleave(k), idx.reshape(-1)] = w.reshape(-1)
    torch.testing.assert_close(symmetrize_dense(dense), sparse, rtol=0, atol=1e-15)
    # a one-way edge keeps its weight both ways (not half of it)
    one = torch.zeros(3, 3, dtype=torch.float64)
    one[0, 1] = 0.8
    assert symmetrize_dense(one)[1, 0] == 0.8 and symmetrize_dense(one)[0, 1] == 0.8


def test_hop_reach_equals_powers_of_the_adjacency():
    # the nodes within h hops of the sources = the non-zero rows of (I + A + A^T)^h s, by dense algebra
    g = torch.Generator().manual_seed(0)
    n, k = 60, 3
    idx = bgcn.knn_indices(torch.randn(n, 5, generator=g), k)
    src = torch.zeros(n, dtype=torch.bool)
    src[[0, 7, 33]] = True
    a = torch.zeros(n, n, dtype=torch.float64)
    a[torch.arange(n).repeat_interleave(k), idx.reshape(-1)] = 1
    step = torch.eye(n, dtype=torch.float64) + a + a.T
    for hops in range(4):
        dense = torch.linalg.matrix_power(step, hops) @ src.double() > 0
        assert torch.equal(bgcn.graph.hop_reach(idx, src, hops), dense), hops
    assert torch.equal(bgcn.graph.hop_reach(idx, src, 0), src)
    with pytest.raises(ValueError, match="sources must be a bool"):
        bgcn.graph.hop_reach(idx, src.long(), 1)
