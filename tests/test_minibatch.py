"""Mini-batch training over a feature bank (chapter 11): the full-batch limit, the sub-batch step,
batch drawing, the bank, no N x N tensor, bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from bgcn.backbone import create_backbone
from bgcn.bank import FeatureBank, computation_subgraph
from bgcn.data import label_masks, load_dataset
from bgcn.graph import knn_graph
from bgcn.minibatch import evaluate_full, minibatch_loss, stratified_batches, train_minibatch
from bgcn.model import build_model
from bgcn.train import train

N, C, K = 120, 4, 5
TOL = 1e-10

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data(n=N, classes=C, double=True)


def _max_grad_diff(a, b):
    out = 0.0
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        assert (pa.grad is None) == (pb.grad is None), na
        if pa.grad is not None:
            out = max(out, float((pa.grad - pb.grad).abs().max()))
    return out


@pytest.mark.parametrize("estimator", ["hard", "masked_softmax", "values", "softmax"])
def test_full_batch_limit_is_exact(data, estimator, tiny_model):
    """b >= N: one mini-batch step is the full-batch step (loss and every gradient), float64 1e-10;
    three epochs of train_minibatch give train()'s history (losses and accuracies)."""
    images, labels, tr, va, te = data
    full, mini = tiny_model(estimator, double=True), tiny_model(estimator, double=True)
    mini.load_state_dict(full.state_dict())
    full.train(), mini.train()  # GCN dropout on: the same RNG draws on the same node order
    torch.manual_seed(7)
    lf = F.nll_loss(full(images)[tr], labels[tr])
    lf.backward()
    bank = FeatureBank.from_backbone(mini, images)
    torch.manual_seed(7)
    lm, info = minibatch_loss(mini, images, torch.arange(N), bank, labels, tr)
    lm.backward()
    assert info["nodes"] == N and info["hop1"] == 0 and info["hop2"] == 0
    assert abs(float(lf.detach() - lm.detach())) < TOL
    gd = _max_grad_diff(full, mini)
    assert gd < TOL
    # the graph path exists and is reached (not a trivially equal zero gradient)
    assert float(full.backbone.net[1].weight.grad.abs().max()) > 1e-6

    kw = dict(epochs=3, lr_backbone=1e-3, lr_gcn=1e-2, weight_decay=5e-4, seed=3, device="cpu")
    ra = train(tiny_model(estimator, double=True), images, labels, tr, va, te, progress=False, **kw)
    rb = train_minibatch(tiny_model(estimator, double=True), images, labels, tr, va, te, batch_size=N, **kw)
    for x, y in zip(ra.history.loss, rb.history.loss):
        assert abs(x - y) < TOL
    assert ra.history.val_acc == rb.history.val_acc and ra.history.test_acc == rb.history.test_acc
    pa, pb = ra.model.state_dict(), rb.model.state_dict()
    assert max(float((pa[k] - pb[k]).abs().max()) for k in pa) < 1e-8


def test_full_batch_limit_with_warmup_and_frozen(data, tiny_model):
    images, labels, tr, va, te = data
    kw = dict(epochs=3, lr_backbone=1e-3, seed=1, device="cpu")
    for mode, warm in (("end2end", 1), ("frozen", 0)):
        ra = train(tiny_model(mode=mode, double=True), images, labels, tr, va, te, mode=mode, warmup_epochs=warm,
                   progress=False, **kw)
        rb = train_minibatch(tiny_model(mode=mode, double=True), images, labels, tr, va, te, mode=mode,
                             warmup_epochs=warm, batch_size=10 * N, **kw)
        assert max(abs(x - y) for x, y in zip(ra.history.loss, rb.history.loss)) < TOL, mode
        assert ra.history.val_acc == rb.history.val_acc


@pytest.mark.parametrize("estimator", ["hard", "masked_softmax", "values", "softmax"])
def test_sub_batch_step_is_the_full_graph_with_the_rest_detached(data, estimator, tiny_model):
    """b < N: the step's loss and gradients equal those of the full graph in which only the batch's
    features carry gradient (every other node a constant = its bank row), float64."""
    images, labels, tr, _, _ = data
    batch = stratified_batches(tr, 30, torch.Generator().manual_seed(0))[1]
    full, mini = tiny_model(estimator, double=True), tiny_model(estimator, double=True)
    mini.load_state_dict(full.state_dict())
    full.eval(), mini.eval()  # no dropout: the subgraph orders its nodes differently
    feats = full.features(images)
    inb = torch.zeros(N, dtype=torch.bool)
    inb[batch] = True
    mixed = torch.where(inb[:, None], feats, feats.detach())
    g = knn_graph(mixed, K, estimator, full.tau, chunk_size=None if estimator == "softmax" else 16)
    logp = full.gcn(mixed, g.edge_index, g.edge_weight)
    lab = tr & inb
    lf = F.nll_loss(logp[lab], labels[lab])
    lf.backward()
    bank = FeatureBank.from_backbone(mini, images)
    lm, info = minibatch_loss(mini, images, batch, bank, labels, tr, chunk_size=16, bank_chunk=7)
    lm.backward()
    assert info["hop1"] > 0 and info["hop2"] > 0 and info["nodes"] < N  # a real subgraph
    assert abs(float(lf.detach() - lm.detach())) < TOL
    assert _max_grad_diff(full, mini) < TOL
    assert float(mini.backbone.net[1].weight.grad.abs().max()) > 1e-6


def test_every_step_sees_labelled_nodes(data, tiny_model):
    images, labels, tr, va, te = data
    g = torch.Generator().manual_seed(0)
    for b in (7, 16, 50, N, 5 * N):
        batches = stratified_batches(tr, b, g)
        allb = torch.cat(batches)
        assert all(bool(tr[x].any()) for x in batches)
        assert len(batches) == -(-N // b)
        if int(tr.sum()) >= len(batches):  # enough labels: a partition of the nodes
            assert torch.equal(torch.sort(allb).values, torch.arange(N))
        else:  # few labels: every unlabelled node once, labelled nodes revisited
            assert torch.equal(torch.unique(allb), torch.arange(N))
            assert int((~tr[allb]).sum()) == int((~tr).sum())
        assert max(x.numel() for x in batches) <= b + 1
    few = torch.zeros(N, dtype=torch.bool)
    few[[3, 70]] = True
    assert all(bool(few[x].any()) for x in stratified_batches(few, 10, g))
    r = train_minibatch(tiny_model(), images.float(), labels, tr, va, te, batch_size=16, epochs=2,
                        device="cpu", lr_backbone=1e-3)
    assert len(r.steps) == 2 * -(-N // 16) and min(s["labelled"] for s in r.steps) >= 1


def test_bank_after_an_epoch_equals_a_fresh_fill_when_lr_is_zero(data, tiny_model):
    images, labels, tr, va, te = data
    kw = dict(batch_size=16, epochs=1, device="cpu", bank_refresh=0)
    r = train_minibatch(tiny_model(double=True), images, labels, tr, va, te, lr_backbone=0.0, **kw)
    fresh = FeatureBank.from_backbone(r.model, images).features
    assert float((r.bank.features - fresh).abs().max()) < 1e-12
    # and the probe can fail: with a learning rate the bank holds features of several steps ago
    r2 = train_minibatch(tiny_model(double=True), images, labels, tr, va, te, lr_backbone=1e-2, **kw)
    fresh2 = FeatureBank.from_backbone(r2.model, images).features
    assert float((r2.bank.features - fresh2).abs().max()) > 1e-4
    # a refresh at the end of the epoch makes it fresh again
    r3 = train_minibatch(tiny_model(double=True), images, labels, tr, va, te, lr_backbone=1e-2,
                         **{**kw, "bank_refresh": 1})
    fresh3 = FeatureBank.from_backbone(r3.model, images).features
    assert float((r3.bank.features - fresh3).abs().max()) < 1e-12


def test_momentum_bank_runs_and_lags(data, tiny_model):
    images, labels, tr, va, te = data
    r = train_minibatch(tiny_model(double=True), images, labels, tr, va, te, batch_size=32, epochs=2, device="cpu",
                        lr_backbone=1e-2, bank_momentum=0.9, bank_refresh=0)
    fresh = FeatureBank.from_backbone(r.model, images).features
    assert torch.isfinite(r.bank.features).all()
    assert float((r.bank.features - fresh).abs().max()) > 1e-4  # the EMA copy lags the backbone


class _Largest(TorchDispatchMode):
    """Records the largest tensor any aten op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("estimator", ["masked_softmax", "softmax"])
def test_no_n_by_n_tensor_on_the_training_path(estimator):
    n, d = 1000, 64
    ds = load_dataset("synthetic", n=n, num_classes=C, seed=1)
    tr, va, te = label_masks(ds.labels, 5, seed=0)
    torch.manual_seed(0)
    model = build_model(create_backbone("mlp_digits"), C, k=K, estimator=estimator, hidden=16)
    with _Largest() as rec:
        train_minibatch(model, ds.images, ds.labels, tr, va, te, batch_size=32, epochs=1, device="cpu",
                        chunk_size=16, bank_chunk=64, embed_batch_size=64)
    # the largest tensors: the (N, D) bank, the evaluation GCN's messages over all N nodes
    # (N (k + 1) edges x hidden 16), the 2-hop ring's (|H2|, k, D) neighbour features: all
    # O(N) or independent of N (measured: <= 98 240 for N = 1000), far below N^2 = 10^6
    assert rec.largest <= n * n // 10, rec.largest
    with _Largest() as rec_n:  # without bank_chunk a search block is chunk_size x N
        train_minibatch(model, ds.images, ds.labels, tr, va, te, batch_size=32, epochs=1, device="cpu",
                        chunk_size=128, embed_batch_size=64)
    assert n * d < rec_n.largest <= 128 * n < n * n // 4
    with _Largest() as rec_full:  # the recorder sees the full-batch engine's N x N similarity
        train(model, ds.images, ds.labels, tr, va, te, epochs=1, device="cpu", progress=False)
    assert rec_full.largest >= n * n


@pytest.mark.parametrize("estimator", ["masked_softmax", "softmax"])
def test_evaluate_full_matches_the_dense_forward(data, estimator, tiny_model):
    images, labels, tr, _, _ = data
    m = tiny_model(estimator, double=True)
    m.eval()
    with torch.no_grad():
        dense = m(images)
    logp, graph, feats = evaluate_full(m, images, chunk_size=16, bank_chunk=33, batch_size=50)
    assert float((logp - dense).abs().max()) < TOL
    assert torch.equal(torch.sort(graph.indices, 1).values, torch.sort(m.last_graph.indices, 1).values)


def test_bad_input(data, tiny_model):
    images, labels, tr, va, te = data
    kw = dict(device="cpu", epochs=1)
    with pytest.raises(ValueError, match="batch_size"):
        train_minibatch(tiny_model(double=True), images, labels, tr, batch_size=0, **kw)
    with pytest.raises(ValueError, match="bank engine"):
        train_minibatch(tiny_model("gumbel_reinforce", double=True), images, labels, tr, batch_size=16, **kw)
    with pytest.raises(ValueError, match="symmetric"):
        train_minibatch(tiny_model(double=True, symmetric=True), images, labels, tr, batch_size=16, **kw)
    with pytest.raises(ValueError, match="lr_backbone"):
        train_minibatch(tiny_model(double=True), images, labels, tr, batch_size=16, lr_backbone=-1.0, **kw)
    with pytest.raises(ValueError, match="bank_chunk"):
        train_minibatch(tiny_model(double=True), images, labels, tr, batch_size=16, bank_chunk=0, **kw)
    with pytest.raises(ValueError, match="bank_momentum"):
        train_minibatch(tiny_model(double=True), images, labels, tr, batch_size=16, bank_momentum=1.5, **kw)
    with pytest.raises(TypeError, match="floating"):
        train_minibatch(tiny_model(double=True), (images * 255).to(torch.int64), labels, tr, batch_size=16, **kw)
    with pytest.raises(TypeError, match="image source"):
        train_minibatch(tiny_model(double=True), images.numpy(), labels, tr, batch_size=16, **kw)
    with pytest.raises(ValueError, match="train_mask"):
        train_minibatch(tiny_model(double=True), images, labels, tr[:-1], batch_size=16, **kw)
    with pytest.raises(ValueError, match="k=5"):
        train_minibatch(tiny_model(double=True), images[:5], labels[:5], tr[:5], batch_size=16, **kw)
    with pytest.raises(ValueError, match="no node"):
        stratified_batches(torch.zeros(N, dtype=torch.bool), 10)


@pytest.mark.parametrize("estimator", ["masked_softmax", "softmax"])
def test_neighbour_cache_is_exact_while_nothing_moves_and_searches_less(data, estimator, monkeypatch, tiny_model):
    """cache_neighbours=True with a fixed backbone (lr_backbone=0): the cached rows are the exact
    ones, so the run equals the searching run; with b >= N it equals train()."""
    images, labels, tr, va, te = data
    kw = dict(batch_size=24, epochs=2, device="cpu", lr_backbone=0.0, seed=2)
    a = train_minibatch(tiny_model(estimator, double=True), images, labels, tr, va, te, **kw)
    b = train_minibatch(tiny_model(estimator, double=True), images, labels, tr, va, te, cache_neighbours=True, **kw)
    assert max(abs(x - y) for x, y in zip(a.history.loss, b.history.loss)) < TOL
    assert a.history.val_acc == b.history.val_acc
    assert b.bank.neighbours.shape == (N, K)
    fn = b.bank.features  # the lists hold the exact top-k (the bank rows never changed)
    fn = fn / b.bank.features.norm(dim=1, keepdim=True)
    s = (fn @ fn.T).fill_diagonal_(float("-inf"))
    assert float((s.gather(1, b.bank.neighbours) - torch.topk(s, K, 1).values).abs().max()) < 1e-12
    full = train(tiny_model(estimator, double=True), images, labels, tr, va, te, epochs=2, lr_backbone=1e-3,
                 device="cpu", progress=False, seed=2)
    c = train_minibatch(tiny_model(estimator, double=True), images, labels, tr, va, te, batch_size=N, epochs=2,
                        lr_backbone=1e-3, device="cpu", seed=2, cache_neighbours=True)
    assert max(abs(x - y) for x, y in zip(full.history.loss, c.history.loss)) < TOL
    # the cache is used: a step searches only its own b rows (plus the evaluation's N)
    rows = []
    orig = FeatureBank.search

    def counting(self, query, k, *args, **kw):
        rows.append(query.shape[0])
        return orig(self, query, k, *args, **kw)

    monkeypatch.setattr(FeatureBank, "search", counting)
    bank = FeatureBank.from_backbone(tiny_model(estimator, double=True), images)
    for use in (False, True):
        rows.clear()
        if use:
            bank.fill_neighbours(K)
            rows.clear()
        minibatch_loss(tiny_model(estimator, double=True), images, torch.arange(0, N, 5), bank, labels, tr,
                       use_neighbours=use)
        if use:
            assert rows == [N // 5]
        else:
            assert sum(rows) > 2 * (N // 5)


def test_frozen_steps_read_the_batch_rows_from_the_cache_and_search_nothing(data, monkeypatch, tiny_model):
    """A fixed step (frozen mode, warm-up) writes nothing into the bank, so with cached lists the batch
    rows come from the cache too: the same losses as the searching run, and no search at all."""
    images, labels, tr, va, te = data
    pytest.importorskip("faiss")
    # warm-up epochs over an approximate index refreshed every other epoch: the cached lists are the
    # index's own answers, so the fixed epochs' losses equal the searching run's
    kw = dict(batch_size=24, epochs=4, warmup_epochs=3, device="cpu", seed=4, index="ivf", bank_refresh=2,
              eval_every=2)
    a = train_minibatch(tiny_model(double=True), images, labels, tr, va, te, **kw)
    b = train_minibatch(tiny_model(double=True), images, labels, tr, va, te, cache_neighbours=True, **kw)
    assert max(abs(x - y) for x, y in zip(a.history.loss[:3], b.history.loss[:3])) < TOL
    rows = []
    orig = FeatureBank.search
    monkeypatch.setattr(FeatureBank, "search", lambda self, q, *args, **kw: rows.append(q.shape[0])
                        or orig(self, q, *args, **kw))
    bank = FeatureBank.from_backbone(tiny_model(double=True), images)
    bank.fill_neighbours(K)
    rows.clear()
    loss, _ = minibatch_loss(tiny_model(double=True), images, torch.arange(0, N, 5), bank, labels, tr,
                             use_neighbours=True, fixed=True)
    assert rows == []
    searched, _ = minibatch_loss(tiny_model(double=True), images, torch.arange(0, N, 5), bank, labels, tr,
                                 fixed=True)
    assert abs(float(loss) - float(searched)) < TOL  # the same loss as the step that searches
    with pytest.raises(ValueError, match="unmoved=True"):
        computation_subgraph(bank, bank.features[:3], K, unmoved=True)
