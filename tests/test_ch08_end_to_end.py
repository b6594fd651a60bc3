"""Claims of chapter 08 (chapters/08_end_to_end_1_loop.md and 08_end_to_end_2_tau_n.md) not covered by
test_model.py / test_train.py.

- ``bgcn.train(mode="end2end")`` is the hand-written loop of seed 000 §3 (same losses, same
  parameters) — eqs. (eq-ch08-loss), (eq-ch08-adamw);
- the graph-path gradient is the explicit chain rule (eq-ch08-graph-path): soft top-k gradient
  (chapter 5) → (G + Gᵀ) F̂ → projection onto the tangent of each f_i; hence it is orthogonal to f_i;
- the GCN's self-loop weight is 1 / (1 + Σ_j w̃_ij), → 1 when the softmax weights are ≈ 1/N;
- on the hot side the ratio ‖g_graph‖ / ‖g_node‖ falls like 1/τ.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bgcn
from bgcn.data import label_masks, load_dataset
from bgcn.model import build_model
from bgcn.temperature import soft_topk_gradient

C, K = 4, 5


pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one thread is faster


@pytest.fixture(scope="module")
def data():
    ds = load_dataset("synthetic", n=120, num_classes=C, seed=0)
    tr, va, te = label_masks(ds.labels, 5, seed=0)
    return ds.images, ds.labels, tr, va, te


def test_train_equals_hand_written_loop(data):
    images, labels, tr, va, te = data
    tau, lr_b, lr_g, wd = 0.1, 3e-4, 2e-2, 5e-4
    bgcn.seed_everything(0)
    backbone = bgcn.create_backbone("mlp_digits")
    gcn = bgcn.GCN(backbone.num_features, 16, C, dropout=0.5)
    init = copy.deepcopy((backbone.state_dict(), gcn.state_dict()))
    opt = torch.optim.AdamW([{"params": backbone.parameters(), "lr": lr_b},
                             {"params": gcn.parameters(), "lr": lr_g}], weight_decay=wd)
    losses = []
    bgcn.seed_everything(0)
    for _ in range(3):
        backbone.train(), gcn.train()
        feats = backbone(images)
        graph = bgcn.knn_graph(feats, K, "softmax", tau)
        loss = F.nll_loss(gcn(feats, graph.edge_index, graph.edge_weight)[tr], labels[tr])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())

    bb, g = bgcn.create_backbone("mlp_digits"), bgcn.GCN(backbone.num_features, 16, C, dropout=0.5)
    bb.load_state_dict(init[0]), g.load_state_dict(init[1])
    model = bgcn.EndToEnd(bb, g, K, estimator="softmax", tau=tau)
    res = bgcn.train(model, images, labels, tr, va, te, mode="end2end", epochs=3, lr_backbone=lr_b,
                     lr_gcn=lr_g, weight_decay=wd, seed=0, device="cpu", progress=False)
    np.testing.assert_allclose(res.history.loss, losses, rtol=0, atol=1e-6)
    assert losses[-1] < losses[0]
    for p, q in zip(list(backbone.parameters()) + list(gcn.parameters()), model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    # and the backbone really moved
    assert any(not torch.equal(v, init[0][name]) for name, v in backbone.state_dict().items())


def _double_model(images, estimator="softmax", tau=0.2, mode="end2end"):
    torch.manual_seed(0)
    m = build_model(bgcn.create_backbone("mlp_digits"), C, k=K, estimator=estimator, tau=tau, hidden=16,
                    mode=mode).double().eval()
    with torch.no_grad():
        feats = m.backbone(images.double())
    return m, feats


def test_graph_path_is_the_explicit_chain_rule(data):
    images, labels, tr, _, _ = data
    tau = 0.2
    m, feats = _double_model(images, tau=tau)
    feats.requires_grad_(True)
    loss = F.nll_loss(m(features=feats)[tr], labels[tr])
    paths = m.path_gradients(loss, retain_graph=True)
    (g_w,) = torch.autograd.grad(loss, m.last_graph.weights)
    f = feats.detach()
    norms = f.norm(dim=1, keepdim=True)
    fh = f / norms
    G = soft_topk_gradient(fh @ fh.T, g_w, K, tau, exclude_self=True)
    d_fh = (G + G.T) @ fh
    g_graph = (d_fh - fh * (fh * d_fh).sum(1, keepdim=True)) / norms
    torch.testing.assert_close(g_graph, paths["graph"], rtol=0, atol=1e-13)
    assert float(g_graph.abs().max()) > 1e-8
    # scale invariance of cosine similarity: the graph path is orthogonal to every f_i, the node path is not
    assert float((paths["graph"] * f).sum(1).abs().max()) < 1e-14
    assert float((paths["node"] * f).sum(1).abs().max()) > 1e-6
    # dropping G^T (own row only) is not the gradient
    d_row = G @ fh
    g_row = (d_row - fh * (fh * d_row).sum(1, keepdim=True)) / norms
    assert float((g_row - g_graph).norm() / g_graph.norm()) > 0.05


def test_gcn_self_loop_weight_is_inverse_degree(data):
    images = data[0]
    feats = bgcn.create_backbone("mlp_digits")(images).detach().double()
    n = feats.shape[0]
    for tau in (0.05, 1.0, 100.0):
        g = bgcn.knn_graph(feats, K, "softmax", tau)
        a = bgcn.edge_index_to_dense(g.edge_index, g.edge_weight, n)
        diag = bgcn.dense_gcn_norm(a).diagonal()
        torch.testing.assert_close(diag, 1.0 / (1.0 + g.weights.sum(1)), rtol=0, atol=1e-12)
    # hot limit: every weight -> 1/(n-1), self-loop weight -> 1/(1 + k/(n-1))
    torch.testing.assert_close(diag, torch.full_like(diag, 1.0 / (1.0 + K / (n - 1))), rtol=0, atol=1e-3)


def test_graph_to_node_ratio_falls_like_inverse_tau_when_hot(data):
    images, labels, tr, _, _ = data
    taus = [10.0, 100.0]
    ratios = []
    for tau in taus:
        m, feats = _double_model(images, tau=tau)
        feats.requires_grad_(True)
        g = m.path_gradients(F.nll_loss(m(features=feats)[tr], labels[tr]))
        ratios.append(float(g["graph"].norm() / g["node"].norm()))
    slope = np.log(ratios[1] / ratios[0]) / np.log(taus[1] / taus[0])
    assert abs(slope + 1.0) < 0.05, slope
