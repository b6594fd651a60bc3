"""DESIGN.md's public API, imported exactly as DESIGN writes it, each checked on a tiny input.

Tests outside the repository rely on these names and signatures: a rename or a changed return
shape must fail here first.
"""
from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch

import bgcn
import bgcn.gcn_spec


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_cosine_similarity_x_y_and_x_alone():
    assert _params(bgcn.cosine_similarity)[:2] == ["x", "y"]
    assert inspect.signature(bgcn.cosine_similarity).parameters["y"].default is None
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    s = bgcn.cosine_similarity(x, y)
    assert s.shape == (5, 4)
    assert torch.allclose(s, torch.nn.functional.cosine_similarity(x[:, None], y[None], dim=-1))
    assert bgcn.cosine_similarity(x).shape == (5, 5)


def test_topk_selection_matrix_reproduces_topk_values():
    assert _params(bgcn.topk_selection_matrix) == ["y", "k"]
    y = torch.randn(7, dtype=torch.float64)
    p = bgcn.topk_selection_matrix(y, 3)
    assert p.shape == (3, 7) and set(p.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(p @ y, torch.topk(y, 3).values)


def test_soft_topk_returns_weights_then_indices():
    assert _params(bgcn.soft_topk)[:3] == ["scores", "k", "tau"]
    s = torch.randn(4, 6, dtype=torch.float64)
    weights, indices = bgcn.soft_topk(s, 2, 0.5)
    assert weights.shape == indices.shape == (4, 2) and indices.dtype == torch.long
    assert torch.equal(indices, torch.topk(s, 2, dim=-1).indices)
    assert torch.allclose(weights, torch.softmax(s / 0.5, dim=-1).gather(-1, indices))


def test_estimators_registry():
    assert isinstance(bgcn.ESTIMATORS, dict)
    assert {"hard", "softmax", "masked_softmax", "values"} <= set(bgcn.ESTIMATORS)
    assert all(callable(fn) for fn in bgcn.ESTIMATORS.values())
    sel = bgcn.ESTIMATORS["softmax"](torch.randn(5, 5), 2, 1.0)
    assert sel.indices.shape == sel.weights.shape == (5, 2)


def test_knn_graph_fields_and_self_excluded():
    assert _params(bgcn.knn_graph)[:4] == ["features", "k", "estimator", "tau"]
    sig = inspect.signature(bgcn.knn_graph).parameters
    assert sig["estimator"].default == "softmax" and sig["tau"].default == 1.0
    n, k = 7, 3
    g = bgcn.knn_graph(torch.randn(n, 4), k)
    assert g.edge_index.shape == (2, n * k) and g.edge_index.dtype == torch.long
    assert g.edge_weight.shape == (n * k,)
    assert g.indices.shape == g.weights.shape == (n, k)
    assert (g.indices != torch.arange(n)[:, None]).all()  # self excluded unless asked
    assert torch.equal(g.edge_index[1], torch.arange(n).repeat_interleave(k))  # row 1 = target i


def test_gcn_in_hidden_out_and_log_probs():
    assert _params(bgcn.GCN.__init__)[1:4] == ["in_channels", "hidden_channels", "out_channels"]
    assert _params(bgcn.GCN.forward)[1:4] == ["x", "edge_index", "edge_weight"]
    gcn = bgcn.GCN(4, 8, 3).eval()
    x = torch.randn(6, 4)
    ei = torch.tensor([[1, 2, 3, 4, 5, 0], [0, 1, 2, 3, 4, 5]])
    out = gcn(x, ei)
    assert out.shape == (6, 3)
    assert torch.allclose(out.exp().sum(-1), torch.ones(6), atol=1e-5)  # log-probabilities
    assert gcn(x, ei, torch.rand(6)).shape == (6, 3)


def test_gcn_spec_layer_forward_backward():
    from bgcn.gcn_spec import gcn_layer_backward, gcn_layer_forward

    g = torch.Generator().manual_seed(0)
    A, X = torch.rand(5, 5, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    W, b = torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn(2, generator=g, dtype=torch.float64)
    Z = gcn_layer_forward(A, X, W, b)
    assert torch.allclose(Z, A @ X @ W + b)
    dZ = torch.randn(5, 2, generator=g, dtype=torch.float64)
    grads = gcn_layer_backward(A, X, W, b, dZ)
    leaves = [t.clone().requires_grad_(True) for t in (A, X, W, b)]
    auto = torch.autograd.grad((gcn_layer_forward(*leaves) * dZ).sum(), leaves)
    assert len(grads) == 4
    for got, ref in zip(grads, auto):  # (dA, dX, dW, db)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


def test_gcn_spec_two_layer_forward_backward():
    from bgcn.gcn_spec import gcn2_backward, gcn2_forward, init_gcn2_params

    params = init_gcn2_params(3, 4, 2, generator=torch.Generator().manual_seed(1))
    A = bgcn.gcn_spec.normalized_adjacency((torch.rand(5, 5, dtype=torch.float64) > 0.5).to(torch.float64))
    X = torch.randn(5, 3, dtype=torch.float64)
    y = gcn2_forward(params, A, X)
    assert y.shape == (2,)  # mean over nodes -> (outDim,)
    dy = torch.randn(2, dtype=torch.float64)
    grads = gcn2_backward(params, A, X, dy)
    leaves = {name: getattr(params, name).clone().requires_grad_(True) for name in ("W1", "b1", "W2", "b2")}
    A_, X_ = A.clone().requires_grad_(True), X.clone().requires_grad_(True)
    out = gcn2_forward(type(params)(**leaves), A_, X_)
    auto = torch.autograd.grad((out * dy).sum(), [*leaves.values(), A_, X_])
    for name, ref in zip(("W1", "b1", "W2", "b2", "A", "X"), auto):
        torch.testing.assert_close(getattr(grads, name), ref, rtol=0, atol=1e-12, msg=name)


def test_create_backbone_signature_and_features(tmp_path):
    params = inspect.signature(bgcn.create_backbone).parameters
    assert list(params)[:2] == ["name", "pretrained_file"] and params["pretrained_file"].default is None
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    torch.manual_seed(0)
    bb = bgcn.create_backbone("mlp_digits").eval()
    f = bb(torch.rand(3, 1, 8, 8))
    assert f.shape == (3, bb.num_features)
    path = tmp_path / "w.pt"
    torch.save(bb.state_dict(), path)
    again = bgcn.create_backbone("mlp_digits", pretrained_file=path).eval()
    assert torch.equal(again(torch.ones(2, 1, 8, 8)), bb(torch.ones(2, 1, 8, 8)))
    with pytest.raises(FileNotFoundError):
        bgcn.create_backbone("mlp_digits", pretrained_file=tmp_path / "missing.pt")


def test_load_dataset_images_labels():
    images, labels = bgcn.load_dataset("synthetic", n=20, num_classes=2, seed=0)
    assert images.dim() == 4 and images.shape[0] == 20 and images.is_floating_point()
    assert labels.shape == (20,) and labels.dtype == torch.long and set(labels.tolist()) <= {0, 1}


@pytest.mark.slow
def test_cli_train_help():
    r = subprocess.run([sys.executable, "-m", "bgcn", "train", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--epochs" in r.stdout and "--out" in r.stdout
