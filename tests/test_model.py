"""EndToEnd: which gradient reaches the backbone, by which path (chapter 08)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bgcn.backbone import create_backbone
from bgcn.model import EndToEnd, score_function_surrogate
from bgcn.topk import Selection


pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one thread is faster


@pytest.fixture(scope="module")
def data(tiny_data):
    images, labels, tr, va, te = tiny_data(n=120, classes=4)
    return images, labels, tr


def _loss(model, images, labels, mask):
    logp = model(images)
    return F.nll_loss(logp[mask], labels[mask])


def test_gradient_reaches_backbone_in_end2end(data, tiny_model):
    images, labels, tr = data
    model = tiny_model("softmax")
    _loss(model, images, labels, tr).backward()
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    norms = model.path_grad_norms()
    assert norms["node"] > 0 and norms["graph"] > 0


def test_no_gradient_reaches_backbone_when_frozen(data, tiny_model):
    images, labels, tr = data
    model = tiny_model("softmax", mode="frozen")
    loss = _loss(model, images, labels, tr)
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.gcn.parameters())
    assert model.path_grad_norms() == {"node": 0.0, "graph": 0.0, "total": 0.0}


@pytest.mark.parametrize("mode,estimator,graph_zero", [("end2end-features", "softmax", True),
                                                         ("end2end", "softmax", False),
                                                         ("end2end", "values", False),
                                                         ("end2end", "masked_softmax", False),
                                                         ("end2end", "hard", True)])
def test_graph_path_gradient(data, mode, estimator, graph_zero, tiny_model):
    """Seed 000 as intended (weights unused) gives an exactly zero ranking-path gradient."""
    images, labels, tr = data
    model = tiny_model(estimator, mode=mode)
    loss = _loss(model, images, labels, tr)
    g = model.path_gradients(loss)
    assert float(g["node"].abs().sum()) > 0
    if graph_zero:
        assert torch.equal(g["graph"], torch.zeros_like(g["graph"]))
    else:
        assert float(g["graph"].abs().sum()) > 0


def test_paths_add_up_to_the_total_gradient(data, tiny_model):
    """dL/dF = g_node + g_graph, and the backward hooks record the same tensors."""
    images, labels, tr = data
    model = tiny_model("softmax", tau=0.2).double()
    with torch.no_grad():
        feats = model.backbone(images.double())
    feats.requires_grad_(True)
    logp = model(features=feats)
    loss = F.nll_loss(logp[tr], labels[tr])
    g = model.path_gradients(loss, retain_graph=True)
    (total,) = torch.autograd.grad(loss, feats, retain_graph=True)
    torch.testing.assert_close(g["node"] + g["graph"], total)
    loss.backward()
    torch.testing.assert_close(model.last_path_grads["node"], g["node"])
    torch.testing.assert_close(model.last_path_grads["graph"], g["graph"])


def test_graph_rebuilt_from_current_features(data, tiny_model):
    images, labels, tr = data
    model = tiny_model("softmax")
    model(images)
    g1 = model.last_graph.indices.clone()
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.5 * torch.randn_like(p))
    model(images)
    assert not torch.equal(g1, model.last_graph.indices)
    assert model.last_graph.edge_index.shape == (2, images.shape[0] * 5)


def test_dense_selection_goes_through_adj(data, tiny_model):
    """An estimator with Selection.dense hands the GCN a dense adjacency: every score gets gradient."""
    images, labels, tr = data
    seen = {}

    def dense_softmax(scores, k, tau=1.0, *, exclude_self=False, generator=None):
        s = scores.masked_fill(torch.eye(scores.shape[0], dtype=torch.bool), float("-inf")) if exclude_self else scores
        w = torch.softmax(s / tau, dim=-1)
        idx = torch.topk(s.detach(), k, dim=-1).indices
        s.retain_grad()
        seen["s"] = s
        return Selection(idx, w.gather(1, idx), dense=w)

    model = tiny_model(dense_softmax)
    _loss(model, images, labels, tr).backward()
    grad = seen["s"].grad
    off = ~torch.eye(grad.shape[0], dtype=torch.bool)
    # the dense path reaches (almost) every off-diagonal score, not only the k selected per row
    assert float((grad[off] != 0).float().mean()) > 0.9


def test_bad_arguments_are_clear():
    bb = create_backbone("mlp_digits")
    from bgcn.gcn import GCN

    gcn = GCN(64, 8, 3)
    with pytest.raises(ValueError, match="k="):
        EndToEnd(bb, gcn, k=0)
    with pytest.raises(ValueError, match="estimator"):
        EndToEnd(bb, gcn, k=3, estimator="nope")
    with pytest.raises(ValueError, match="tau"):
        EndToEnd(bb, gcn, k=3, tau=-1.0)
    with pytest.raises(TypeError, match="backbone"):
        EndToEnd("vit", gcn, k=3)
    with pytest.raises(ValueError, match="mode"):
        EndToEnd(bb, gcn, k=3).configure("end-to-end")
    with pytest.raises(ValueError, match="exactly one"):
        EndToEnd(bb, gcn, k=3)()


def test_score_function_surrogate_gradient():
    """Its gradient is sum (l_i - b_i) dlogp_i / |M| over the labelled nodes; b_i is leave-one-out by default."""
    theta = torch.randn(6, requires_grad=True, dtype=torch.float64)
    log_prob = torch.log_softmax(theta, 0)
    node_loss = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=torch.float64)
    mask = torch.tensor([True, True, True, False, False, False])
    score_function_surrogate(log_prob, node_loss, mask).backward()
    # leave-one-out baselines (2+3)/2, (1+3)/2, (1+2)/2 -> coefficients -1.5, 0, 1.5
    expect_coef = torch.tensor([-1.5, 0.0, 1.5, 0, 0, 0], dtype=torch.float64) / 3
    (expect,) = torch.autograd.grad(torch.log_softmax(theta, 0), theta, grad_outputs=expect_coef)
    torch.testing.assert_close(theta.grad, expect, rtol=0, atol=1e-14)
    # "mean" keeps the node's own loss in the baseline: coefficients -1, 0, 1 = (1 - 1/|M|) x LOO's
    theta.grad = None
    score_function_surrogate(torch.log_softmax(theta, 0), node_loss, mask, baseline="mean").backward()
    torch.testing.assert_close(theta.grad, expect * (1 - 1 / 3), rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="baseline"):
        score_function_surrogate(log_prob.detach(), node_loss, mask, reward="global", baseline="mean")
    with pytest.raises(ValueError, match="baseline"):
        score_function_surrogate(log_prob.detach(), node_loss, mask, reward="global", baseline="loo")
    with pytest.raises(ValueError, match="mask"):
        score_function_surrogate(log_prob.detach(), node_loss, torch.zeros(6, dtype=torch.bool))
    with pytest.raises(ValueError, match="node_loss"):
        score_function_surrogate(log_prob.detach(), node_loss[:4], mask)


def _exact_expectations(reward: str, baseline):
    """Enumerate every joint sample of 3 independent nodes (3 choices each): the exact E[grad surrogate]
    and the exact grad E[R] (float64)."""
    import itertools

    torch.manual_seed(3)
    theta = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)  # node i's logits over its 3 choices
    table = torch.randn(3, 3, dtype=torch.float64)  # R_i(a_i): node i's loss for its choice a_i
    mask = torch.tensor([True, True, True])
    e_grad = torch.zeros_like(theta)
    e_reward = torch.zeros((), dtype=torch.float64)
    for a in itertools.product(range(3), repeat=3):
        logp = torch.log_softmax(theta, 1)
        lp = logp[torch.arange(3), torch.tensor(a)]  # (N,) log p_i(a_i)
        p = lp.sum().exp()
        node_loss = table[torch.arange(3), torch.tensor(a)]
        (g,) = torch.autograd.grad(score_function_surrogate(lp, node_loss, mask, reward, baseline), theta,
                                   retain_graph=True)
        e_grad += p.detach() * g
        e_reward = e_reward + p * node_loss.mean()
    (true,) = torch.autograd.grad(e_reward, theta)
    return e_grad, true


def test_score_function_surrogate_unbiased_against_exact_expectation():
    """Per-node rewards that depend on the node's own choice: LOO and global are unbiased, 'mean' is shrunk."""
    e_loo, true = _exact_expectations("node", "loo")
    torch.testing.assert_close(e_loo, true, rtol=0, atol=1e-12)
    e_glob, true = _exact_expectations("global", 0.7)  # any constant baseline
    torch.testing.assert_close(e_glob, true, rtol=0, atol=1e-12)
    e_mean, true = _exact_expectations("node", "mean")
    torch.testing.assert_close(e_mean, true * (1 - 1 / 3), rtol=0, atol=1e-12)
    assert (e_mean - true).abs().max() > 1e-3  # the bias the old default had is real


def test_configure_frozen_then_end2end_keeps_the_estimator(tiny_model):
    m = tiny_model("ste")
    m.configure("frozen")
    assert m.estimator_name == "hard" and not m.use_graph_weights and not m.train_backbone
    m.configure("end2end")
    assert m.estimator_name == "ste" and m.use_graph_weights and m.train_backbone
    assert m.mode == "end2end"
