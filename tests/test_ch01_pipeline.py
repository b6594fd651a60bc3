"""Chapter 1 (chapters/01_frozen_pipeline.md): the frozen pipeline's formulas and claims, as tests.

Features under no_grad -> cosine similarity -> top-k rankings -> kNN graph -> GCN on the labelled
nodes; the extractor's parameters keep .grad None; the graph is transductive.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.neighbors import NearestNeighbors

import bgcn


@pytest.fixture(scope="module")
def digits():
    images, labels = bgcn.load_dataset("digits")
    return images[:400], labels[:400]


def _train_frozen(backbone, images, labels, train_mask, k=8, steps=3):
    feats = bgcn.extract_features(backbone, images)
    graph = bgcn.knn_graph(feats, k, "hard")
    gcn = bgcn.GCN(feats.shape[1], 16, 10)
    opt = torch.optim.Adam(gcn.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        logp = gcn(feats, graph.edge_index)
        loss = F.nll_loss(logp[train_mask], labels[train_mask])
        loss.backward()
        opt.step()
    return feats, graph, gcn, logp, loss


def test_frozen_extractor_keeps_grad_none(digits):
    images, labels = digits
    train_mask, _, _ = bgcn.label_masks(labels, 3, 0, seed=0)
    vit = bgcn.create_backbone("vit_digits")
    feats, _, gcn, _, _ = _train_frozen(vit, images, labels, train_mask)
    assert not feats.requires_grad and feats.grad_fn is None
    assert all(p.grad is None for p in vit.parameters())
    assert all(p.grad is not None for p in gcn.parameters())


def test_without_no_grad_the_extractor_gets_gradient(digits):
    images, labels = digits
    train_mask, _, _ = bgcn.label_masks(labels, 3, 0, seed=0)
    vit = bgcn.create_backbone("vit_digits")
    feats = vit(images)                                       # exercise 1: autograd on
    graph = bgcn.knn_graph(feats.detach(), 8, "hard")
    gcn = bgcn.GCN(feats.shape[1], 16, 10)
    F.nll_loss(gcn(feats, graph.edge_index)[train_mask], labels[train_mask]).backward()
    assert all(p.grad is not None for p in vit.parameters() if p.requires_grad)


def test_cosine_equals_pairwise_definition():
    f = torch.randn(50, 7, dtype=torch.float64)
    ref = F.cosine_similarity(f[:, None, :], f[None, :, :], dim=-1)
    torch.testing.assert_close(bgcn.cosine_similarity(f), ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(bgcn.cosine_similarity(f).diagonal(), torch.ones(50, dtype=torch.float64))


def test_rankings_match_sklearn_cosine_neighbours():
    f = torch.randn(120, 9, dtype=torch.float64)
    k = 6
    idx = bgcn.knn_indices(f, k)
    dist, idx_sk = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(f.numpy()).kneighbors(f.numpy())
    ours = bgcn.cosine_similarity(f).gather(1, idx)
    torch.testing.assert_close(ours, torch.from_numpy(1 - dist[:, 1:]), rtol=0, atol=1e-9)
    assert torch.equal(idx, torch.from_numpy(idx_sk[:, 1:]))          # no ties in random floats
    assert not (idx == torch.arange(120)[:, None]).any()               # self excluded


def test_nll_loss_formula():
    logp = torch.log_softmax(torch.randn(30, 10, dtype=torch.float64), 1)
    y = torch.randint(0, 10, (30,))
    m = torch.zeros(30, dtype=torch.bool)
    m[::3] = True
    manual = -logp[m].gather(1, y[m, None]).mean()
    torch.testing.assert_close(manual, F.nll_loss(logp[m], y[m]), rtol=0, atol=1e-15)


def test_graph_is_transductive_and_has_nk_edges(digits):
    images, labels = digits
    n, k = len(labels), 10
    train_mask, val_mask, test_mask = bgcn.label_masks(labels, 5, 5, seed=0)
    assert int(train_mask.sum()) == 50 and not (train_mask & test_mask).any()
    g = bgcn.knn_graph(images.flatten(1), k, "hard")
    assert g.edge_index.shape == (2, n * k)
    targets = torch.zeros(n, dtype=torch.bool)
    targets[g.edge_index[1]] = True
    sources = torch.zeros(n, dtype=torch.bool)
    sources[g.edge_index[0]] = True
    assert targets[test_mask].all()                    # every test image receives messages
    assert sources[test_mask].float().mean() > 0.5     # and most of them send messages too
    assert torch.equal(g.edge_index[1], torch.arange(n).repeat_interleave(k))


def test_pixel_rankings_are_pure_on_digits(digits):
    images, labels = digits
    g = bgcn.knn_graph(images.flatten(1), 10, "hard")
    purity = (labels[g.indices] == labels[:, None]).float().mean()
    assert purity > 0.85


def test_loss_depends_on_labelled_nodes_only(digits):
    images, labels = digits
    train_mask, _, _ = bgcn.label_masks(labels, 3, 0, seed=0)
    feats = images.flatten(1)
    g = bgcn.knn_graph(feats, 8, "hard")
    torch.manual_seed(0)
    gcn = bgcn.GCN(64, 16, 10, dropout=0.0)
    other = labels.clone()
    other[~train_mask] = (other[~train_mask] + 1) % 10      # change every unlabelled label
    l1 = F.nll_loss(gcn(feats, g.edge_index)[train_mask], labels[train_mask])
    l2 = F.nll_loss(gcn(feats, g.edge_index)[train_mask], other[train_mask])
    assert l1.item() == l2.item()
