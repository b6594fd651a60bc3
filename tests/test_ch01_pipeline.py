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
def digits(digits):
    """The first 400 of conftest's digits."""
    images, labels = digits
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


def test_recorded_loss_is_the_mean_nll_over_labelled_nodes(digits):
    # chapter 01's loss, -1/|L| sum_{i in L} log p_{i, y_i}, is what bgcn.train records: its first
    # epoch's loss equals the formula on the untrained model's output (dropout 0: deterministic)
    import copy
    import warnings

    images, labels = digits
    train_mask, _, _ = bgcn.label_masks(labels, 3, 0, seed=0)
    torch.manual_seed(0)
    m = bgcn.build_model(bgcn.create_backbone("mlp_digits"), num_classes=10, k=8, hidden=16, dropout=0.0,
                         mode="frozen")
    before = copy.deepcopy(m).eval()
    with torch.no_grad():
        logp = before(images).double()
    manual = float(-logp[train_mask].gather(1, labels[train_mask, None]).mean())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = bgcn.train(m, images, labels, train_mask, None, None, mode="frozen", epochs=1, progress=False,
                       device="cpu", seed=0)
    # float32 forward: 2e-8 .. 3e-7 observed over seeds; the mean over all nodes differs by ~1e-3
    assert abs(r.history.loss[0] - manual) < 1e-5


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


def _train_run(images, labels, train_mask, mode, estimator, epochs=3):
    """bgcn.train on the digits with only the training mask: (NLL per epoch, surrogate, final state)."""
    import warnings

    torch.manual_seed(0)
    m = bgcn.build_model(bgcn.create_backbone("mlp_digits"), num_classes=10, k=8, hidden=16,
                         estimator=estimator, mode=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # no validation set: the selection warning
        r = bgcn.train(m, images, labels, train_mask, None, None, mode=mode, epochs=epochs,
                       progress=False, device="cpu", seed=0)
    return list(r.history.loss), list(r.history.surrogate), {k: v.clone() for k, v in r.model.state_dict().items()}


@pytest.mark.parametrize("mode, estimator", [("frozen", "hard"), ("end2end", "softmax"),
                                             ("end2end", "gumbel_reinforce")])
def test_training_reads_the_labels_of_labelled_nodes_only(digits, mode, estimator):
    # bgcn.train's losses, score-function surrogate and trained parameters are bit-identical when
    # every *unlabelled* node's label is changed: no label outside train_mask leaks into training
    images, labels = digits
    train_mask, _, _ = bgcn.label_masks(labels, 3, 0, seed=0)
    other = labels.clone()
    other[~train_mask] = (other[~train_mask] + 1) % 10
    loss_a, sur_a, state_a = _train_run(images, labels, train_mask, mode, estimator)
    loss_b, sur_b, state_b = _train_run(images, other, train_mask, mode, estimator)
    assert loss_a == loss_b and sur_a == sur_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    # control: changing one *labelled* node's label changes the very first loss
    flipped = labels.clone()
    i = int(train_mask.nonzero()[0])
    flipped[i] = (flipped[i] + 1) % 10
    loss_c, _, _ = _train_run(images, flipped, train_mask, mode, estimator, epochs=1)
    assert loss_c[0] != loss_a[0]


def test_labelled_outputs_depend_on_unlabelled_features(digits):
    # transductive: the loss reads labelled nodes only, but through the graph their outputs depend
    # on the features of the unlabelled nodes that send them messages, and on no other node
    images, labels = digits
    train_mask, _, _ = bgcn.label_masks(labels, 3, 0, seed=0)
    feats = images.flatten(1).double()
    g = bgcn.knn_graph(feats, 8, "hard")
    torch.manual_seed(0)
    gcn = bgcn.GCN(64, 16, 10, dropout=0.0).double()
    x = feats.clone().requires_grad_(True)
    F.nll_loss(gcn(x, g.edge_index)[train_mask], labels[train_mask]).backward()
    reach = x.grad.abs().sum(1) > 0                       # nodes whose features move the loss
    # two layers: the loss reaches the labelled nodes and their 1- and 2-hop in-neighbours
    hop1 = torch.zeros_like(train_mask)
    hop1[g.edge_index[0][train_mask[g.edge_index[1]]]] = True
    hop2 = hop1.clone()
    hop2[g.edge_index[0][(hop1 | train_mask)[g.edge_index[1]]]] = True
    assert torch.equal(reach, train_mask | hop1 | hop2)
    assert (reach & ~train_mask).sum() > train_mask.sum()   # most of the reached nodes are unlabelled
