"""Full-batch train(): evaluation every few epochs, and checkpoints whose graph history is stored
apart (one file per snapshot, written once), resumed exactly."""
from __future__ import annotations

import math

import pytest
import torch

from bgcn.backbone import create_backbone
from bgcn.data import label_masks, load_dataset
from bgcn.model import build_model
from bgcn.train import load_checkpoint, train

N, C, K = 90, 3, 5
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    ds = load_dataset("synthetic", n=N, num_classes=C, seed=1)
    tr, va, te = label_masks(ds.labels, 5, seed=0)
    return ds.images.double(), ds.labels, tr, va, te


def _model():
    torch.manual_seed(0)
    return build_model(create_backbone("mlp_digits"), C, k=K, estimator="softmax", tau=0.1, hidden=16).double()


KW = dict(epochs=6, warmup_epochs=2, device="cpu", progress=False, lr_backbone=1e-3, seed=2)


def test_eval_every_skips_evaluation_and_selects_among_evaluated_epochs(data, recwarn):
    images, labels, tr, va, te = data
    r = train(_model(), images, labels, tr, va, te, **KW, eval_every=4)
    h = r.history
    assert [e for e, v in zip(h.epoch, h.val_acc) if not math.isnan(v)] == [4, 6]
    assert all(not math.isnan(x) for x in h.loss)
    assert r.best_epoch in (4, 6) and r.config["eval_every"] == 4
    full = train(_model(), images, labels, tr, va, te, **KW)
    assert h.loss == full.history.loss  # evaluation never changes training
    assert "eval_every" not in full.config  # the default is not recorded: old checkpoints still resume


def test_graphs_are_stored_apart_and_resume_reads_them(data, tmp_path, recwarn):
    images, labels, tr, va, te = data
    ck = tmp_path / "ck.pt"
    straight = train(_model(), images, labels, tr, va, te, **KW)
    train(_model(), images, labels, tr, va, te, **{**KW, "epochs": 3}, checkpoint=ck)
    state = load_checkpoint(ck)
    assert state["history"]["graphs"] == [] and state["history"]["graph_epochs"] == [0, 1, 2, 3]
    files = sorted(p.name for p in (tmp_path / "ck.pt.graphs").iterdir())
    assert files == [f"epoch_{e:05d}.pt" for e in range(4)]
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ck.pt.graphs").iterdir()}
    res = train(_model(), images, labels, tr, va, te, **KW, checkpoint=ck, resume=True)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ck.pt.graphs").iterdir()}
    assert all(after[k] == v for k, v in before.items())  # each graph file written once
    assert [g["epoch"] for g in res.history.graphs] == [g["epoch"] for g in straight.history.graphs]
    for a, b in zip(res.history.graphs, straight.history.graphs):
        assert torch.equal(a["indices"], b["indices"]) and torch.equal(a["weights"], b["weights"])
    assert res.history.loss == straight.history.loss
    # a missing graph file is named, not silently dropped
    (tmp_path / "ck.pt.graphs" / "epoch_00002.pt").unlink()
    with pytest.raises(FileNotFoundError, match="epoch_00002"):
        train(_model(), images, labels, tr, va, te, **{**KW, "epochs": 8}, checkpoint=ck, resume=True)


def test_eval_every_is_validated(data):
    images, labels, tr, va, te = data
    with pytest.raises(ValueError, match="eval_every"):
        train(_model(), images, labels, tr, va, te, **KW, eval_every=0)


def test_suggest_tau_from_features_equals_the_matrix_version_on_the_same_rows():
    from bgcn.similarity import cosine_similarity
    from bgcn.temperature import suggest_tau, suggest_tau_features

    g = torch.Generator().manual_seed(0)
    f = torch.randn(300, 16, generator=g, dtype=torch.float64)
    exact = suggest_tau(cosine_similarity(f), 10)
    assert suggest_tau_features(f, 10, max_rows=300) == exact
    # a sample of rows: the same rows of the full matrix (their own column excluded) give the same tau
    sampled = suggest_tau_features(f, 10, max_rows=120, seed=3)
    rows = torch.randperm(300, generator=torch.Generator().manual_seed(3))[:120]
    assert sampled == pytest.approx(suggest_tau(cosine_similarity(f), 10, rows=rows), rel=1e-6)
    assert sampled == pytest.approx(exact, rel=0.2)
