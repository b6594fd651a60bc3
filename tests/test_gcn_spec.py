"""Hand-written GCN forward/backward (seed 002) against autograd, in float64."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bgcn.gcn_spec import (
    GCN2Grads,
    GCN2Params,
    gcn2_backward,
    gcn2_forward,
    gcn_layer_backward,
    gcn_layer_forward,
    init_gcn2_params,
    normalized_adjacency,
)

DT = torch.float64
TOL = dict(rtol=0, atol=1e-10)


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _dense_A(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(n, n, generator=g, dtype=DT)


def _knn_A(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    """A normalised kNN-like graph: cosine top-k (self excluded), A[i, neighbour] = 1, then Â."""
    f = torch.randn(n, 5, generator=g, dtype=DT)
    f = f / f.norm(dim=1, keepdim=True)
    s = f @ f.T
    s.fill_diagonal_(-float("inf"))
    idx = s.topk(k, dim=1).indices
    A = torch.zeros(n, n, dtype=DT).scatter_(1, idx, 1.0)
    return normalized_adjacency(A)


def _rand_params(d_in: int, d_hid: int, d_out: int, g: torch.Generator) -> GCN2Params:
    return GCN2Params(*(torch.randn(*s, generator=g, dtype=DT)
                        for s in [(d_in, d_hid), (d_hid,), (d_hid, d_out), (d_out,)]))


def _autograd_layer(A, X, W, b, dZ):
    leaves = [t.clone().requires_grad_(True) for t in (A, X, W, b)]
    Z = leaves[0] @ leaves[1] @ leaves[2] + leaves[3]
    return torch.autograd.grad(Z, leaves, grad_outputs=dZ)


def _autograd_gcn2(params, A, X, dy):
    W1, b1, W2, b2, A_, X_ = (t.clone().requires_grad_(True) for t in (*params, A, X))
    H1 = torch.relu(A_ @ X_ @ W1 + b1)
    y = (A_ @ H1 @ W2 + b2).mean(dim=0)
    return GCN2Grads(*torch.autograd.grad(y, (W1, b1, W2, b2, A_, X_), grad_outputs=dy))


# ---------------------------------------------------------------------------------------------
# one layer
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["dense", "knn"])
@pytest.mark.parametrize("n,d_in,d_out", [(1, 3, 2), (6, 4, 3), (25, 7, 5), (60, 16, 8)])
def test_layer_backward_equals_autograd(kind, n, d_in, d_out):
    g = _gen(n * 100 + d_in)
    A = _dense_A(n, g) if kind == "dense" else _knn_A(n, min(3, max(n - 1, 1)), g) if n > 1 else torch.ones(1, 1, dtype=DT)
    X = torch.randn(n, d_in, generator=g, dtype=DT)
    W = torch.randn(d_in, d_out, generator=g, dtype=DT)
    b = torch.randn(d_out, generator=g, dtype=DT)
    dZ = torch.randn(n, d_out, generator=g, dtype=DT)
    Z = gcn_layer_forward(A, X, W, b)
    torch.testing.assert_close(Z, A @ X @ W + b, **TOL)
    ours = gcn_layer_backward(A, X, W, b, dZ)
    ref = _autograd_layer(A, X, W, b, dZ)
    for name, o, r in zip(["dA", "dX", "dW", "db"], ours, ref):
        assert o.shape == r.shape, name
        torch.testing.assert_close(o, r, **TOL, msg=lambda m, name=name: f"{name}: {m}")


def test_layer_backward_no_autograd_graph():
    g = _gen(1)
    A, X, W, b = _dense_A(4, g), torch.randn(4, 3, generator=g, dtype=DT), torch.randn(3, 2, generator=g, dtype=DT), torch.zeros(2, dtype=DT)
    with torch.no_grad():
        dA, dX, dW, db = gcn_layer_backward(A, X, W, b, torch.ones(4, 2, dtype=DT))
    torch.testing.assert_close(db, torch.full((2,), 4.0, dtype=DT), **TOL)


# ---------------------------------------------------------------------------------------------
# normalised adjacency
# ---------------------------------------------------------------------------------------------

def test_normalized_adjacency_formula_and_symmetry():
    g = _gen(2)
    A = (torch.rand(7, 7, generator=g, dtype=DT) > 0.6).to(DT)
    A = ((A + A.T) > 0).to(DT)
    A.fill_diagonal_(0)
    Ah = normalized_adjacency(A)
    At = A + torch.eye(7, dtype=DT)
    d = At.sum(1)
    expected = torch.tensor([[At[i, j] / (d[i] * d[j]).sqrt() for j in range(7)] for i in range(7)], dtype=DT)
    torch.testing.assert_close(Ah, expected, **TOL)
    torch.testing.assert_close(Ah, Ah.T, **TOL)
    # spectrum of D^-1/2 (A+I) D^-1/2 lies in (-1, 1]; the top eigenvalue is 1
    ev = torch.linalg.eigvalsh(Ah)
    assert ev.max() == pytest.approx(1.0, abs=1e-12) and ev.min() > -1


def test_normalized_adjacency_zero_degree_is_safe():
    A2 = torch.zeros(3, 3, dtype=DT)
    A2[0, 1] = 2.0
    A2.requires_grad_(True)
    Ah = normalized_adjacency(A2, add_self_loops=False)
    assert torch.isfinite(Ah).all()
    assert (Ah[2] == 0).all() and (Ah[:, 2] == 0).all()  # node 2 is isolated
    Ah.sum().backward()
    assert torch.isfinite(A2.grad).all()


# ---------------------------------------------------------------------------------------------
# two layers
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,dims", [(1, (2, 3, 2)), (5, (3, 4, 2)), (30, (8, 16, 4))])
@pytest.mark.parametrize("kind", ["dense", "knn"])
def test_gcn2_backward_equals_autograd(n, dims, kind):
    g = _gen(7 * n + len(kind))
    A = _dense_A(n, g) if kind == "dense" or n < 3 else _knn_A(n, 2, g)
    X = torch.randn(n, dims[0], generator=g, dtype=DT)
    params = _rand_params(*dims, g)
    dy = torch.randn(dims[2], generator=g, dtype=DT)
    ours = gcn2_backward(params, A, X, dy)
    ref = _autograd_gcn2(params, A, X, dy)
    assert isinstance(ours, GCN2Grads)
    for name in GCN2Grads._fields:
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), **TOL,
                                   msg=lambda m, name=name: f"grad {name}: {m}")


def test_gcn2_relu_gate_is_active():
    """The test data must actually exercise the ReLU gate: some Z1 < 0, and dropping the gate changes dW1."""
    g = _gen(11)
    n, dims = 8, (3, 6, 2)
    A, X = _knn_A(n, 3, g), torch.randn(n, 3, generator=g, dtype=DT)
    params = _rand_params(*dims, g)
    _, cache = gcn2_forward(params, A, X, return_cache=True)
    assert (cache.Z1 < 0).any() and (cache.Z1 > 0).any()
    dy = torch.ones(2, dtype=DT)
    grads = gcn2_backward(params, A, X, dy)
    dH2 = dy.expand(n, 2) / n
    _, dH1, _, _ = gcn_layer_backward(A, cache.H1, params.W2, params.b2, dH2)
    _, _, dW1_ungated, _ = gcn_layer_backward(A, X, params.W1, params.b1, dH1)
    assert not torch.allclose(grads.W1, dW1_ungated)


def test_gcn2_forward_cache_consistent():
    g = _gen(3)
    params = init_gcn2_params(4, 5, 3, generator=g)
    A, X = _knn_A(9, 2, g), torch.randn(9, 4, generator=g, dtype=DT)
    y, cache = gcn2_forward(params, A, X, return_cache=True)
    torch.testing.assert_close(cache.H1, torch.relu(cache.Z1), **TOL)
    torch.testing.assert_close(cache.Z1, A @ X @ params.W1 + params.b1, **TOL)
    torch.testing.assert_close(cache.H2, A @ cache.H1 @ params.W2 + params.b2, **TOL)
    torch.testing.assert_close(y, cache.H2.mean(0), **TOL)
    torch.testing.assert_close(gcn2_forward(params, A, X), y, **TOL)
    assert y.shape == (3,)


def test_init_gcn2_params_shapes_and_reproducible():
    p = init_gcn2_params(5, 7, 3, generator=_gen(0))
    q = init_gcn2_params(5, 7, 3, generator=_gen(0))
    assert [tuple(t.shape) for t in p] == [(5, 7), (7,), (7, 3), (3,)]
    assert all(t.dtype == DT for t in p)
    for a, b in zip(p, q):
        assert torch.equal(a, b)
    bound = (6 / (5 + 7)) ** 0.5
    assert p.W1.abs().max() <= bound and p.W1.std() > 0
    assert init_gcn2_params(2, 2, 2, dtype=torch.float32).W1.dtype == torch.float32
    with pytest.raises(ValueError, match="hid_dim"):
        init_gcn2_params(2, 0, 2)
    with pytest.raises(TypeError, match="in_dim"):
        init_gcn2_params(2.5, 3, 2)


# ---------------------------------------------------------------------------------------------
# errors name the argument
# ---------------------------------------------------------------------------------------------

def _ok():
    return (torch.eye(4, dtype=DT), torch.ones(4, 3, dtype=DT), torch.ones(3, 2, dtype=DT),
            torch.zeros(2, dtype=DT))


@pytest.mark.parametrize("which,bad,match", [
    (0, torch.ones(4, 5, dtype=DT), "A must be square"),
    (0, torch.ones(4, dtype=DT), "A must have 2 dimensions"),
    (1, torch.ones(5, 3, dtype=DT), "X has 5 rows"),
    (1, torch.ones(4, 3, 1, dtype=DT), "X must have 2 dimensions"),
    (2, torch.ones(2, 2, dtype=DT), "W has 2 rows"),
    (3, torch.zeros(3, dtype=DT), "b has length 3"),
    (3, torch.zeros(1, 2, dtype=DT), "b must have 1 dimensions"),
    (2, torch.ones(3, 2, dtype=torch.float32), "W has dtype"),
])
def test_layer_errors_name_the_argument(which, bad, match):
    args = list(_ok())
    args[which] = bad
    with pytest.raises(ValueError, match=match):
        gcn_layer_forward(*args)
    with pytest.raises(ValueError, match=match):
        gcn_layer_backward(*args, torch.ones(4, 2, dtype=DT))


@pytest.mark.parametrize("dZ", [torch.ones(4, 3, dtype=DT), torch.ones(3, 2, dtype=DT), torch.ones(8, dtype=DT)])
def test_layer_backward_bad_dZ(dZ):
    with pytest.raises(ValueError, match="dZ"):
        gcn_layer_backward(*_ok(), dZ)


def test_gcn2_errors():
    params = init_gcn2_params(3, 4, 2)
    A, X = torch.eye(5, dtype=DT), torch.ones(5, 3, dtype=DT)
    with pytest.raises(ValueError, match="dy"):
        gcn2_backward(params, A, X, torch.ones(3, dtype=DT))
    with pytest.raises(ValueError, match="params.W1 has 3 rows"):
        gcn2_forward(params, A, torch.ones(5, 4, dtype=DT))
    with pytest.raises(ValueError, match="params.W2 has 5 rows"):
        gcn2_forward(params._replace(W2=torch.ones(5, 2, dtype=DT)), A, X)
    with pytest.raises(ValueError, match="params.b2 has length 3"):
        gcn2_forward(params._replace(b2=torch.ones(3, dtype=DT)), A, X)
    with pytest.raises(ValueError, match="X has 4 rows"):
        gcn2_forward(params, A, torch.ones(4, 3, dtype=DT))
    with pytest.raises(TypeError, match="params"):
        gcn2_forward((1, 2), A, X)
    with pytest.raises(ValueError, match="A has 0 nodes"):
        gcn2_forward(params, torch.zeros(0, 0, dtype=DT), torch.zeros(0, 3, dtype=DT))


# ---------------------------------------------------------------------------------------------
# property test
# ---------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 12), d_in=st.integers(1, 6), d_hid=st.integers(1, 6), d_out=st.integers(1, 4),
       seed=st.integers(0, 2**31 - 1), normalise=st.booleans())
def test_property_hand_backward_equals_autograd(n, d_in, d_hid, d_out, seed, normalise):
    g = _gen(seed)
    A = torch.rand(n, n, generator=g, dtype=DT)
    if normalise:
        A = normalized_adjacency((A > 0.5).to(DT))
    X = torch.randn(n, d_in, generator=g, dtype=DT)
    params = _rand_params(d_in, d_hid, d_out, g)
    dy = torch.randn(d_out, generator=g, dtype=DT)
    ours = gcn2_backward(params, A, X, dy)
    ref = _autograd_gcn2(params, A, X, dy)
    for name in GCN2Grads._fields:
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), **TOL)
    dZ = torch.randn(n, d_hid, generator=g, dtype=DT)
    for o, r in zip(gcn_layer_backward(A, X, params.W1, params.b1, dZ),
                    _autograd_layer(A, X, params.W1, params.b1, dZ)):
        torch.testing.assert_close(o, r, **TOL)
