"""The feature bank (chapter 11): fill/update, exact chunked search, the 2-hop computation subgraph,
the EMA backbone, inductive predict, bad input."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from bgcn.backbone import create_backbone, extract_features
from bgcn.bank import FeatureBank, computation_subgraph, ema_backbone, momentum_update, predict, subgraph_log_probs
from bgcn.data import label_masks, load_dataset
from bgcn.graph import knn_graph
from bgcn.model import build_model
from bgcn.similarity import cosine_similarity

ROOT = Path(__file__).resolve().parents[1]

N, C, K = 150, 4, 5
TOL = 1e-10

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ds():
    return load_dataset("synthetic", n=N, num_classes=C, seed=2)


def test_fill_update_and_memory(ds, tiny_model):
    m = tiny_model(double=True)
    x = ds.images.double()
    bank = FeatureBank.from_backbone(m, x, chunk_size=17)
    ref = extract_features(m.backbone, x, batch_size=N)
    assert bank.features.shape == (N, 64) and bank.dtype == torch.float64 and not bank.features.requires_grad
    assert float((bank.features - ref).abs().max()) < 1e-12
    assert bank.nbytes == N * 64 * 8  # N·D floats
    m.backbone.train()
    bank2 = FeatureBank(N, 64, torch.float64).fill(m, x, chunk_size=40)
    assert m.backbone.training  # mode restored
    assert float((bank2.features - ref).abs().max()) < 1e-12
    idx = torch.tensor([3, 7, 11])
    new = torch.randn(3, 64, dtype=torch.float64, requires_grad=True)
    bank2.update(idx, new * 2)
    assert torch.equal(bank2.features[idx], (new * 2).detach()) and not bank2.features.requires_grad
    assert torch.equal(bank2.features[4], bank.features[4])


@pytest.mark.parametrize("chunk,bank_chunk", [(1, None), (7, 3), (7, 64), (1000, None), (1000, 149)])
def test_search_is_the_exact_top_k(ds, chunk, bank_chunk, tiny_model):
    bank = FeatureBank.from_backbone(tiny_model(double=True), ds.images.double())
    q = torch.arange(0, N, 3)
    got = bank.search(bank.features[q], K, exclude=q, chunk_size=chunk, bank_chunk=bank_chunk)
    s = cosine_similarity(bank.features[q], bank.features)
    s[torch.arange(q.numel()), q] = float("-inf")
    ref = torch.topk(s, K, dim=1)
    assert not bool((got == q[:, None]).any())  # a node never finds itself
    assert float((s.gather(1, got) - ref.values).abs().max()) < 1e-12  # same similarities (ties robust)
    # new images (no exclude): may find any bank node
    new = torch.randn(4, 64, dtype=torch.float64)
    got2 = bank.search(new, K, chunk_size=chunk, bank_chunk=bank_chunk)
    s2 = cosine_similarity(new, bank.features)
    assert float((s2.gather(1, got2) - torch.topk(s2, K, 1).values).abs().max()) < 1e-12


def test_search_bad_input(ds, tiny_model):
    bank = FeatureBank.from_backbone(tiny_model(double=True), ds.images.double())
    f = bank.features[:4]
    with pytest.raises(ValueError, match="k=150"):
        bank.search(f, N, exclude=torch.arange(4))
    with pytest.raises(ValueError, match="D=3"):
        bank.search(torch.zeros(4, 3, dtype=torch.float64), K)
    with pytest.raises(TypeError, match="dtype"):
        bank.search(f.float(), K)
    with pytest.raises(ValueError, match="4 rows"):
        bank.search(f, K, exclude=torch.arange(3))
    with pytest.raises(ValueError, match=r"\[0, 149\]"):
        bank.update(torch.tensor([N]), f[:1])
    with pytest.raises(TypeError, match="integer"):
        bank.update(torch.tensor([0.5]), f[:1])
    with pytest.raises(ValueError, match="rows"):
        bank.fill(tiny_model(double=True), ds.images.double()[:10])
    with pytest.raises(TypeError, match="floating"):
        FeatureBank.from_backbone(tiny_model(double=True), (ds.images * 255).to(torch.uint8))


def test_ema_backbone_and_momentum_update():
    torch.manual_seed(0)
    bb = create_backbone("mlp_digits")
    ema = ema_backbone(bb)
    assert all(not p.requires_grad for p in ema.parameters())
    before = [p.clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in bb.parameters():
            p.add_(1.0)
    momentum_update(ema, bb, 0.75)
    for e, b0, b in zip(ema.parameters(), before, bb.parameters()):
        assert torch.allclose(e, 0.75 * b0 + 0.25 * b, atol=1e-6)
    momentum_update(ema, bb, 0.0)
    assert all(torch.equal(e, b) for e, b in zip(ema.parameters(), bb.parameters()))
    with pytest.raises(ValueError, match="momentum"):
        momentum_update(ema, bb, 1.5)
    with pytest.raises(ValueError, match="architecture"):
        momentum_update(ema, create_backbone("cnn_digits"), 0.5)


@pytest.mark.parametrize("estimator", ["hard", "masked_softmax", "values", "softmax"])
def test_subgraph_outputs_equal_the_full_graph(ds, estimator, tiny_model):
    """The query nodes' log-probs on their 2-hop subgraph equal the full kNN graph's (eval, float64)."""
    m = tiny_model(estimator, double=True).eval()
    bank = FeatureBank.from_backbone(m, ds.images.double())
    g = knn_graph(bank.features, K, estimator, m.tau)
    full = m.gcn(bank.features, g.edge_index, g.edge_weight)
    q = torch.tensor([0, 5, 9, 40, 41, 100])
    sub = computation_subgraph(bank, bank.features[q], K, query_ids=q, estimator=estimator, tau=m.tau,
                               chunk_size=4, bank_chunk=50)
    assert sub.num_hop2 > 0 and sub.num_nodes < N
    assert float((subgraph_log_probs(m, sub) - full[q]).detach().abs().max()) < TOL
    with pytest.raises(ValueError, match="sorted"):
        computation_subgraph(bank, bank.features[q.flip(0)], K, query_ids=q.flip(0), estimator=estimator)


@pytest.mark.parametrize("estimator", ["hard", "masked_softmax", "values", "softmax"])
def test_predict_equals_the_graph_with_new_nodes_appended(ds, estimator, tiny_model):
    """predict = GCN on the bank's graph plus one row per new image (neighbours among the bank)."""
    m = tiny_model(estimator, double=True)
    train_x, new_x = ds.images[:120].double(), ds.images[120:].double()
    bank = FeatureBank.from_backbone(m, train_x)
    got = predict(m, new_x, bank, batch_size=7)
    m.eval()
    with torch.no_grad():
        fb, fn = bank.features, m.features(new_x)
        gb = knn_graph(fb, K, estimator, m.tau)
        s = cosine_similarity(fn, fb)
        vals, idx = torch.topk(s, K, dim=1)
        w = {"hard": torch.ones_like(vals), "values": vals.clamp_min(0),
             "masked_softmax": torch.softmax(vals / m.tau, dim=1),
             "softmax": torch.softmax(s / m.tau, dim=1).gather(1, idx)}[estimator]
        src = torch.cat([gb.edge_index[0], idx.reshape(-1)])
        dst = torch.cat([gb.edge_index[1], (120 + torch.arange(fn.shape[0])).repeat_interleave(K)])
        ref = m.gcn(torch.cat([fb, fn]), torch.stack([src, dst]), torch.cat([gb.edge_weight, w.reshape(-1)]))[120:]
    assert float((got - ref).abs().max()) < TOL


def test_predict_on_held_out_digits_is_as_good_as_transductive():
    """Measured (seed 0, 1400 pool / 397 held out, 10 labels a class, 40 mini-batch epochs, b=256):
    transductive test accuracy 0.93, held-out (inductive) 0.94."""
    from bgcn.minibatch import train_minibatch

    ds = load_dataset("digits")
    perm = torch.randperm(1797, generator=torch.Generator().manual_seed(0))
    pool, held = perm[:1400], perm[1400:]
    x, y = ds.images[pool], ds.labels[pool]
    tr, va, te = label_masks(y, 10, seed=0)
    torch.manual_seed(0)
    m = build_model(create_backbone("mlp_digits"), 10, k=10, estimator="masked_softmax", tau=0.1, hidden=64)
    r = train_minibatch(m, x, y, tr, va, te, batch_size=256, epochs=40, lr_backbone=1e-3, lr_gcn=1e-2,
                        device="cpu", eval_every=40)
    lp = predict(r.model, ds.images[held], r.bank)
    held_acc = float((lp.argmax(1) == ds.labels[held]).float().mean())
    trans = r.final["test_acc"]
    assert trans > 0.8 and held_acc > 0.8
    assert abs(held_acc - trans) < 0.06


def test_predict_bad_input(ds, tiny_model):
    m = tiny_model(double=True)
    bank = FeatureBank.from_backbone(m, ds.images.double())
    with pytest.raises(ValueError, match="empty"):
        predict(m, ds.images.double(), FeatureBank(N, 64, torch.float64))
    with pytest.raises(TypeError, match="FeatureBank"):
        predict(m, ds.images.double(), bank.features)
    with pytest.raises(ValueError, match="bank engine"):
        predict(tiny_model("gumbel_reinforce", double=True), ds.images.double(), bank)
    with pytest.raises(ValueError, match="symmetric"):
        predict(tiny_model(double=True, symmetric=True), ds.images.double(), bank)
    with pytest.raises(TypeError, match="floating"):
        predict(m, ds.images.to(torch.uint8), bank)


def test_device_mismatch_is_one_clear_error():
    bank = FeatureBank(10, 4, torch.float32, device="meta")  # no data: only the checks run
    with pytest.raises(ValueError, match="meta"):
        bank.search(torch.zeros(2, 4), 3)
    with pytest.raises(ValueError, match="meta"):
        bank.update(torch.tensor([0]), torch.zeros(1, 4))


def test_public_functions_are_documented():
    import bgcn.bank
    import bgcn.minibatch

    for mod in (bgcn.bank, bgcn.minibatch):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if not callable(obj):
                continue
            doc = obj.__doc__ or ""
            m = re.search(r"Taught in: chapter 11 \(chapters/(11_minibatch_\d_\w+\.md)\)", doc)
            assert "Shapes:" in doc and m, name
            assert (ROOT / "chapters" / m.group(1)).is_file(), (name, m.group(1))
