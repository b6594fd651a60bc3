"""The PyG-based GCN: sparse and dense paths agree with the Kipf–Welling formula, gradients flow."""
from __future__ import annotations

import pytest
import torch
from torch_geometric.nn import GCNConv

from bgcn.gcn import GCN, dense_gcn_norm, edge_index_to_dense

DT = torch.float64
TOL = dict(rtol=0, atol=1e-10)


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _directed_weighted_graph(n: int = 9, k: int = 3, seed: int = 0):
    """kNN-like directed graph without self-loops: every node i receives edges from k random j != i."""
    g = _gen(seed)
    src, dst = [], []
    for i in range(n):
        others = torch.tensor([j for j in range(n) if j != i])
        nb = others[torch.randperm(n - 1, generator=g)[:k]]
        src += nb.tolist()
        dst += [i] * k
    edge_index = torch.tensor([src, dst])
    edge_weight = torch.rand(edge_index.shape[1], generator=g, dtype=DT) + 0.1
    return edge_index, edge_weight


def _symmetric_graph(n: int = 8, seed: int = 1):
    g = _gen(seed)
    W = torch.rand(n, n, generator=g, dtype=DT) * (torch.rand(n, n, generator=g) > 0.5)
    W = torch.triu(W, diagonal=1)
    W = W + W.T
    ij = W.nonzero().T                      # (2, E): row 0 = i, row 1 = j; symmetric so direction is moot
    return ij.flip(0).contiguous(), W[ij[0], ij[1]].clone(), W


def _model(in_c=5, hid=6, out_c=3, seed=0, **kw):
    torch.manual_seed(seed)
    m = GCN(in_c, hid, out_c, **kw).double().eval()
    with torch.no_grad():                    # non-zero biases so that they are tested too
        m.conv1.bias.normal_()
        m.conv2.bias.normal_()
    return m


def _explicit_norm(A, self_loops=True):
    """D^-1/2 (A + I) D^-1/2 element by element, written independently of the library."""
    n = A.shape[0]
    At = A + torch.eye(n, dtype=A.dtype) if self_loops else A
    d = At.sum(1)
    out = torch.zeros_like(At)
    for i in range(n):
        for j in range(n):
            if d[i] > 0 and d[j] > 0:
                out[i, j] = At[i, j] / (d[i] * d[j]).sqrt()
    return out


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def test_edge_index_to_dense_direction_and_duplicates():
    ei = torch.tensor([[0, 0, 2, 0], [1, 2, 1, 1]])        # 0→1 twice, 0→2, 2→1
    w = torch.tensor([1.0, 2.0, 3.0, 0.5], dtype=DT)
    A = edge_index_to_dense(ei, w, 4)
    expected = torch.zeros(4, 4, dtype=DT)
    expected[1, 0] = 1.5
    expected[2, 0] = 2.0
    expected[1, 2] = 3.0
    assert torch.equal(A, expected)
    counts = torch.tensor([[0, 0, 0], [2, 0, 1], [1, 0, 0]], dtype=torch.get_default_dtype())
    assert torch.equal(edge_index_to_dense(ei), counts)      # N inferred as max id + 1 = 3, weight 1


def test_edge_index_to_dense_matches_pyg_aggregation():
    """A @ X equals PyG's sum aggregation of messages source → target."""
    from torch_geometric.nn import SimpleConv
    ei, w = _directed_weighted_graph(7, 2, seed=3)
    x = torch.randn(7, 4, dtype=DT)
    out = SimpleConv(aggr="sum")(x, ei, w)
    torch.testing.assert_close(edge_index_to_dense(ei, w, 7) @ x, out, **TOL)


def test_dense_gcn_norm_formula():
    g = _gen(5)
    A = torch.rand(6, 6, generator=g, dtype=DT) * (torch.rand(6, 6, generator=g) > 0.4)   # directed
    A.fill_diagonal_(0)
    torch.testing.assert_close(dense_gcn_norm(A), _explicit_norm(A), **TOL)
    torch.testing.assert_close(dense_gcn_norm(A, add_self_loops=False), _explicit_norm(A, False), **TOL)


def test_dense_gcn_norm_zero_degree_gradient_is_finite():
    A = torch.zeros(4, 4, dtype=DT)
    A[1, 0] = 1.0
    A.requires_grad_(True)
    out = dense_gcn_norm(A, add_self_loops=False)
    assert torch.isfinite(out).all() and (out[3] == 0).all()
    out.sum().backward()
    assert torch.isfinite(A.grad).all()


# ---------------------------------------------------------------------------------------------
# agreement with the dense formula
# ---------------------------------------------------------------------------------------------

def test_single_gcnconv_equals_dense_formula_on_symmetric_graph():
    ei, w, A = _symmetric_graph()
    torch.manual_seed(0)
    conv = GCNConv(4, 3).double()
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(A.shape[0], 4, dtype=DT)
    Theta = conv.lin.weight.T                # (F_in, F_out)
    expected = _explicit_norm(A) @ x @ Theta + conv.bias
    torch.testing.assert_close(conv(x, ei, w), expected, **TOL)
    torch.testing.assert_close(dense_gcn_norm(edge_index_to_dense(ei, w, A.shape[0])), _explicit_norm(A), **TOL)


def test_module_equals_dense_formula_on_symmetric_graph():
    ei, w, A = _symmetric_graph(10, seed=4)
    m = _model(in_c=4)
    x = torch.randn(10, 4, dtype=DT)
    Ah = _explicit_norm(A)
    h = torch.relu(Ah @ x @ m.conv1.lin.weight.T + m.conv1.bias)
    logits = Ah @ h @ m.conv2.lin.weight.T + m.conv2.bias
    expected = torch.log_softmax(logits, dim=-1)
    torch.testing.assert_close(m(x, ei, w), expected, **TOL)
    torch.testing.assert_close(m(x, adj=A), expected, **TOL)
    torch.testing.assert_close(m.embed(x, ei, w), h, **TOL)


@pytest.mark.parametrize("kw", [{}, {"normalize": False}, {"add_self_loops": False}])
def test_sparse_path_equals_dense_path_on_directed_weighted_graph(kw):
    ei, w = _directed_weighted_graph(11, 3, seed=7)
    A = edge_index_to_dense(ei, w, 11)
    assert not torch.allclose(A, A.T)                      # really directed
    m = _model(**kw)
    x = torch.randn(11, 5, dtype=DT)
    sparse = m(x, ei, w)
    dense = m(x, adj=A)
    torch.testing.assert_close(sparse, dense, **TOL)
    torch.testing.assert_close(m.embed(x, ei, w), m.embed(x, adj=A), **TOL)
    # and the gradient w.r.t. the edge weights equals the gradient w.r.t. the dense entries
    w_ = w.clone().requires_grad_(True)
    A_ = A.clone().requires_grad_(True)
    torch.autograd.backward(m(x, ei, w_)[:, 0].sum())
    torch.autograd.backward(m(x, adj=A_)[:, 0].sum())
    torch.testing.assert_close(w_.grad, A_.grad[ei[1], ei[0]], **TOL)


def test_sparse_equals_dense_in_training_mode_with_same_dropout_seed():
    ei, w = _directed_weighted_graph(8, 2, seed=9)
    m = _model(dropout=0.5).train()
    x = torch.randn(8, 5, dtype=DT)
    torch.manual_seed(123)
    a = m(x, ei, w)
    torch.manual_seed(123)
    b = m(x, adj=edge_index_to_dense(ei, w, 8))
    torch.testing.assert_close(a, b, **TOL)
    m.eval()
    assert not torch.allclose(a, m(x, ei, w))               # dropout did something in training mode


def test_unweighted_edges_equal_weight_one():
    ei, _ = _directed_weighted_graph(6, 2, seed=2)
    m = _model()
    x = torch.randn(6, 5, dtype=DT)
    torch.testing.assert_close(m(x, ei), m(x, ei, torch.ones(ei.shape[1], dtype=DT)), **TOL)
    torch.testing.assert_close(m(x, ei), m(x, adj=edge_index_to_dense(ei, None, 6).double()), **TOL)


def test_self_loop_in_edge_list_follows_pyg_remaining_rule():
    """Documented difference: PyG keeps an existing self-loop weight (no +1); the dense path adds I."""
    ei = torch.tensor([[1, 0, 1], [0, 1, 1]])                # 1→0, 0→1 and a self-loop 1→1
    w = torch.tensor([1.0, 1.0, 0.5], dtype=DT)
    m = _model(in_c=2)
    x = torch.randn(2, 2, dtype=DT)
    A = edge_index_to_dense(ei, w, 2)
    # PyG's operator before normalising is [[1, 1], [1, 0.5]] (node 1 keeps 0.5, no +1);
    # dense_gcn_norm adds I, so the dense equivalent is that matrix minus I.
    A_pyg = A.clone()
    A_pyg[1, 1] -= 1.0
    torch.testing.assert_close(m(x, ei, w), m(x, adj=A_pyg), **TOL)
    assert not torch.allclose(m(x, ei, w), m(x, adj=A))


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------

def test_gradcheck_wrt_x_and_edge_weight():
    ei, w = _directed_weighted_graph(5, 2, seed=11)          # small: gradcheck costs 2 forwards per input entry
    m = _model(in_c=2, hid=4, out_c=2)
    x = torch.randn(5, 2, dtype=DT, requires_grad=True)
    w = w.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x_, w_: m(x_, ei, w_), (x, w), eps=1e-6, atol=1e-7)


def test_gradcheck_wrt_dense_adj():
    ei, w = _directed_weighted_graph(4, 2, seed=12)
    m = _model(in_c=2, hid=4, out_c=2)
    x = torch.randn(4, 2, dtype=DT, requires_grad=True)
    A = edge_index_to_dense(ei, w, 4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x_, a_: m(x_, adj=a_), (x, A), eps=1e-6, atol=1e-7)


def test_gradient_reaches_edge_weight_x_and_parameters():
    ei, w = _directed_weighted_graph(10, 3, seed=13)
    m = _model()
    x = torch.randn(10, 5, dtype=DT, requires_grad=True)
    w = w.clone().requires_grad_(True)
    y = torch.randint(0, 3, (10,), generator=_gen(0))
    torch.nn.functional.nll_loss(m(x, ei, w), y).backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gradient_reaches_dense_adj():
    ei, w = _directed_weighted_graph(10, 3, seed=14)
    m = _model()
    A = edge_index_to_dense(ei, w, 10).requires_grad_(True)
    torch.nn.functional.nll_loss(m(torch.randn(10, 5, dtype=DT), adj=A), torch.zeros(10, dtype=torch.long)).backward()
    assert A.grad.abs().sum() > 0


def test_float32_default_and_shapes():
    ei, w = _directed_weighted_graph(7, 2, seed=15)
    m = GCN(5, 8, 4)
    out = m.eval()(torch.randn(7, 5), ei, w.float())
    assert out.shape == (7, 4) and out.dtype == torch.float32
    torch.testing.assert_close(out.exp().sum(1), torch.ones(7))


@pytest.mark.parametrize("feat_dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_other_feature_dtypes_are_cast_to_the_layers_dtype(feat_dtype):
    # float64 (torch.from_numpy) or half-precision features into a float32 GCN: the result is the
    # float32 model on the features rounded to feat_dtype, on both paths, and x gets its gradient
    ei, w = _directed_weighted_graph(8, 3, seed=18)
    torch.manual_seed(0)
    m = GCN(5, 6, 3).eval()
    x = torch.randn(8, 5, dtype=DT).to(feat_dtype).requires_grad_(True)
    ref = m(x.detach().float(), ei, w.float())          # the same numbers, already float32
    out = m(x, ei, w)                                    # w is float64 too
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(m(x, adj=edge_index_to_dense(ei, w, 8)), ref, rtol=0, atol=1e-5)
    out.sum().backward()
    assert x.grad is not None and x.grad.dtype == feat_dtype and x.grad.abs().sum() > 0


def test_float64_model_keeps_float64_and_x_on_another_device_is_named():
    ei, w = _directed_weighted_graph(6, 2, seed=19)
    m = _model()
    out = m(torch.randn(6, 5, dtype=torch.float32), ei, w)
    assert out.dtype == DT
    with pytest.raises(ValueError, match=r"x is on meta but the GCN's parameters are on cpu"):
        m(torch.empty(6, 5, dtype=DT, device="meta"), ei, w)


def test_cached_reuses_the_first_graph():
    ei, w = _directed_weighted_graph(6, 2, seed=16)
    m = _model(cached=True)
    x = torch.randn(6, 5, dtype=DT)
    first = m(x, ei, w)
    torch.testing.assert_close(m(x, ei, w * 3.0), first, **TOL)   # cached: new weights ignored
    m.reset_parameters()
    assert m.conv1._cached_edge_index is None


# ---------------------------------------------------------------------------------------------
# errors name the argument
# ---------------------------------------------------------------------------------------------

def test_bad_inputs_name_the_argument():
    ei, w = _directed_weighted_graph(6, 2, seed=17)
    m = _model()
    x = torch.randn(6, 5, dtype=DT)
    A = edge_index_to_dense(ei, w, 6)
    with pytest.raises(ValueError, match="x must have 2 dimensions"):
        m(x[0], ei, w)
    with pytest.raises(ValueError, match="in_channels=5"):
        m(torch.randn(6, 4, dtype=DT), ei, w)
    with pytest.raises(ValueError, match="exactly one of edge_index.*both"):
        m(x, ei, w, adj=A)
    with pytest.raises(ValueError, match="exactly one of edge_index.*neither"):
        m(x)
    with pytest.raises(ValueError, match="edge_weight has 11 entries"):
        m(x, ei, w[:-1])
    with pytest.raises(ValueError, match="edge_weight must have 1 dimensions"):
        m(x, ei, w[:, None])
    with pytest.raises(ValueError, match=r"edge_index must have shape \(2, E\)"):
        m(x, ei.T)
    with pytest.raises(ValueError, match="edge_index holds node ids"):
        m(x[:3], ei)
    with pytest.raises(TypeError, match="edge_index must be a long"):
        m(x, ei.int())
    with pytest.raises(ValueError, match="adj must be a square"):
        m(x, adj=A[:, :5])
    with pytest.raises(ValueError, match="adj is .* but x has N = 5 rows"):
        m(x[:5], adj=A)
    with pytest.raises(ValueError, match="adj must have 2 dimensions"):
        m(x, adj=A[0])
    with pytest.raises(ValueError, match="edge_weight goes with edge_index"):
        m(x, edge_weight=w, adj=A)
    with pytest.raises(ValueError, match="x contains"):
        m(torch.full((6, 5), float("nan"), dtype=DT), ei, w)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="hidden_channels"):
        GCN(3, 0, 2)
    with pytest.raises(TypeError, match="in_channels"):
        GCN(3.0, 4, 2)
    with pytest.raises(ValueError, match="dropout"):
        GCN(3, 4, 2, dropout=1.5)
    with pytest.raises(ValueError, match="add_self_loops=True needs normalize=True"):
        GCN(3, 4, 2, normalize=False, add_self_loops=True)
    assert GCN(3, 4, 2, normalize=False).add_self_loops is False


@pytest.mark.parametrize("kw", [{}, {"normalize": False}, {"add_self_loops": False}])
def test_large_graphs_without_autograd_take_one_sparse_product_with_the_same_result(monkeypatch, kw):
    """Above bgcn.gcn.SPARSE_FROM edges a no-grad forward multiplies by the normalised adjacency as one
    sparse matrix (memory (N, hidden), not (E, hidden)); it must equal PyG's messages, self-loops
    in the edge list included."""
    import bgcn.gcn as gcn_mod

    ei, w = _directed_weighted_graph(11, 3, seed=7)
    ei = torch.cat([ei, torch.tensor([[2, 5], [2, 5]])], 1)  # two explicit self-loops
    w = torch.cat([w, torch.tensor([0.7, 1.9], dtype=DT)])
    m = _model(**kw).eval()
    x = torch.randn(11, 5, dtype=DT)
    with torch.no_grad():
        messages, h_messages = m(x, ei, w), m.embed(x, ei, w)
        monkeypatch.setattr(gcn_mod, "SPARSE_FROM", 1)
        taken = m._sparse_eval(x, ei, w, None)[2]
        assert isinstance(taken, tuple) and taken[0].layout == torch.sparse_csr  # the CSR path runs
        torch.testing.assert_close(m(x, ei, w), messages, **TOL)
        torch.testing.assert_close(m.embed(x, ei, w), h_messages, **TOL)
        torch.testing.assert_close(m(x, ei), m(x, ei, torch.ones_like(w)), **TOL)
    assert m(x, ei, w).requires_grad  # with autograd the messages path is kept
    with torch.no_grad():  # half precision has no CSR product on the CPU: the messages path, no error
        assert m._sparse_eval(x.bfloat16(), ei, w, None)[2] is None
        mb = _model(**kw).eval().bfloat16()
        assert torch.isfinite(mb(x.bfloat16(), ei, w.bfloat16()).float()).all()
