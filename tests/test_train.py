"""train(): modes, history, determinism, checkpoints/resume, divergence, pre-training (chapter 08)."""
from __future__ import annotations


import pytest
import torch
from torch import nn

from bgcn.backbone import create_backbone
from bgcn.data import label_masks, load_dataset
from bgcn.model import build_model
from bgcn.train import (History, TrainingDiverged, augment_images, load_checkpoint, nt_xent_loss, pretrain_backbone,
                        progress_enabled, save_checkpoint, train)

N, C, K = 120, 4, 5


pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one thread is faster


@pytest.fixture(scope="module")
def data():
    ds = load_dataset("synthetic", n=N, num_classes=C, seed=0)
    tr, va, te = label_masks(ds.labels, 5, seed=0)
    return ds.images, ds.labels, tr, va, te


def _model(mode="end2end", estimator="softmax", tau=0.1, seed=0, backbone=None):
    torch.manual_seed(seed)
    bb = backbone if backbone is not None else create_backbone("mlp_digits")
    return build_model(bb, C, k=K, estimator=estimator, tau=tau, hidden=16, mode=mode)


def _run(data, mode="end2end", epochs=3, **kw):
    images, labels, tr, va, te = data
    model = _model(mode, kw.pop("estimator", "softmax"))
    return train(model, images, labels, tr, va, te, mode=mode, epochs=epochs, device="cpu", progress=False,
                 lr_backbone=1e-3, **kw)


def _nan_to_none(v):
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, list):
        return [_nan_to_none(x) for x in v]
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    return v


def _series(h: History) -> dict:
    """The series without wall times, NaN (not measured) as None so that equal histories compare equal."""
    s = h.series()
    s.pop("time"), s.pop("time_step")
    return _nan_to_none(s)


def test_frozen_leaves_backbone_alone_end2end_changes_it(data):
    images, labels, tr, va, te = data
    before = {k: v.clone() for k, v in create_backbone("mlp_digits").state_dict().items()}
    torch.manual_seed(0)
    bb = create_backbone("mlp_digits")
    bb.load_state_dict(before)
    res = train(_model("frozen", backbone=bb), images, labels, tr, va, te, mode="frozen", epochs=3, progress=False)
    assert all(torch.equal(before[k], v) for k, v in res.model.backbone.state_dict().items())
    assert all(p.grad is None for p in res.model.backbone.parameters())
    assert res.history.grad_total == [0.0, 0.0, 0.0] and res.history.edge_change == [0.0, 0.0, 0.0]

    bb = create_backbone("mlp_digits")
    bb.load_state_dict(before)
    res = train(_model("end2end", backbone=bb), images, labels, tr, va, te, mode="end2end", epochs=3, progress=False)
    assert any(not torch.equal(before[k], v) for k, v in res.model.backbone.state_dict().items())
    assert all(g > 0 for g in res.history.grad_graph) and all(g > 0 for g in res.history.grad_backbone)


def test_end2end_features_has_zero_graph_gradient(data):
    res = _run(data, "end2end-features")
    h = res.history
    assert h.grad_graph == [0.0] * 3
    assert all(g > 0 for g in h.grad_node)
    assert res.model.estimator_name == "hard" and not res.model.use_graph_weights


def test_history_contents(data):
    res = _run(data, "end2end", epochs=4, graph_every=2)
    h = res.history
    assert h.epoch == [1, 2, 3, 4] and len(h.loss) == 4
    assert all(0.0 <= a <= 1.0 for a in h.train_acc + h.val_acc + h.test_acc)
    assert all(0.0 <= c <= 1.0 for c in h.edge_change)
    assert [g["epoch"] for g in h.graphs] == [0, 2, 4]
    g = h.graphs[-1]
    assert g["indices"].shape == (N, K) and g["indices"].dtype == torch.int16 and g["weights"].dtype == torch.float16
    assert set(h.initial) == {"train_acc", "val_acc", "test_acc", "homophily"}
    assert res.best_epoch in h.epoch
    assert res.test_acc_at_best_val == h.test_acc[res.best_epoch - 1]
    assert res.best_val_acc == max(h.val_acc)


def test_same_seed_same_history(data):
    a = _run(data, "end2end", epochs=3)
    b = _run(data, "end2end", epochs=3)
    assert _series(a.history) == _series(b.history)
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("warmup", [0, 2])
def test_resume_equals_uninterrupted(data, tmp_path, warmup):
    straight = _run(data, "end2end", epochs=6, warmup_epochs=warmup, checkpoint=tmp_path / "a.pt")
    _run(data, "end2end", epochs=3, warmup_epochs=warmup, checkpoint=tmp_path / "b.pt")
    resumed = _run(data, "end2end", epochs=6, warmup_epochs=warmup, checkpoint=tmp_path / "b.pt", resume=True)
    assert _series(straight.history) == _series(resumed.history)
    for (ka, va), (kb, vb) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert straight.best_epoch == resumed.best_epoch
    assert straight.test_acc_at_best_val == resumed.test_acc_at_best_val
    ck = load_checkpoint(tmp_path / "b.pt")  # weights_only=True inside
    assert ck["epoch"] == 6 and len(ck["history"]["loss"]) == 6
    # graphs: epoch 0..6 in both
    assert [g["epoch"] for g in straight.history.graphs] == [g["epoch"] for g in resumed.history.graphs]


def test_resume_refuses_other_settings(data, tmp_path):
    _run(data, "end2end", epochs=2, checkpoint=tmp_path / "c.pt")
    with pytest.raises(ValueError, match="settings differ.*lr_gcn"):
        _run(data, "end2end", epochs=4, checkpoint=tmp_path / "c.pt", resume=True, lr_gcn=0.5)


class _NaNAfter(nn.Module):
    """MLP backbone whose output turns NaN from the ``bad``-th training forward on."""

    def __init__(self, bad: int):
        super().__init__()
        self.inner = create_backbone("mlp_digits")
        self.num_features = self.inner.num_features
        self.calls, self.bad = 0, bad

    def forward(self, x):
        f = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.bad:
                f = f * float("nan")
        return f


def test_nan_stops_with_clear_message_and_keeps_checkpoint(data, tmp_path):
    images, labels, tr, va, te = data
    model = _model("end2end", backbone=_NaNAfter(bad=4))
    ck = tmp_path / "run" / "checkpoint.pt"
    with pytest.raises(TrainingDiverged, match=r"diverged at epoch 4.*last good checkpoint \(epoch 3\)") as ei:
        train(model, images, labels, tr, va, te, mode="end2end", epochs=10, checkpoint=ck, progress=False)
    assert ei.value.epoch == 4 and ei.value.checkpoint == str(ck)
    state = load_checkpoint(ck)
    assert state["epoch"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "checkpoint.pt.tmp").exists()


def test_nan_loss_is_caught(data, monkeypatch):
    """A NaN loss (not only NaN features) stops the run before the optimizer step."""
    images, labels, tr, va, te = data
    model = _model("frozen")
    with torch.no_grad():
        model.gcn.conv2.bias.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="loss is nan"):
        train(model, images, labels, tr, va, te, mode="frozen", epochs=2, progress=False)


def test_score_function_hook_reaches_a_parameter(data, monkeypatch):
    """graph.info['log_prob'] adds the REINFORCE surrogate: its gradient reaches what log_prob depends on."""
    images, labels, tr, va, te = data
    model = _model("end2end", "hard")
    theta = nn.Parameter(torch.zeros(N))
    model.register_parameter("theta", theta)
    orig = model.build_graph

    def build_graph(features, generator=None):
        g = orig(features, generator)
        g.info["log_prob"] = torch.log_softmax(model.theta, 0)
        return g

    monkeypatch.setattr(model, "build_graph", build_graph)
    res = train(model, images, labels, tr, va, te, mode="end2end", epochs=2, progress=False)
    assert float(res.model.theta.detach().abs().sum()) > 0


def test_bad_train_arguments(data):
    images, labels, tr, va, te = data
    m = _model()
    with pytest.raises(ValueError, match="mode"):
        train(m, images, labels, tr, mode="joint")
    with pytest.raises(ValueError, match="epochs"):
        train(m, images, labels, tr, epochs=0)
    with pytest.raises(ValueError, match="lr_gcn"):
        train(m, images, labels, tr, lr_gcn=-1.0)
    with pytest.raises(TypeError, match="train_mask"):
        train(m, images, labels, tr.long())
    with pytest.raises(ValueError, match="resume"):
        train(m, images, labels, tr, resume=True)
    with pytest.raises(TypeError, match="EndToEnd"):
        train(m.gcn, images, labels, tr)
    with pytest.raises(ValueError, match="labels"):
        train(m, images, labels[:-1], tr)
    with pytest.raises(ValueError, match="selects no node"):
        train(m, images, labels, torch.zeros_like(tr))
    with pytest.raises(ValueError, match=r"out_channels C = 4.*num_classes=10"):
        train(m, images, torch.where(tr, torch.full_like(labels, 9), labels), tr)
    with pytest.raises(ValueError, match="test_mask nodes must be >= 0"):
        train(m, images, torch.where(te, torch.full_like(labels, -1), labels), tr, va, te)


def test_atomic_checkpoint_roundtrip(tmp_path):
    p = save_checkpoint(tmp_path / "x.pt", {"a": torch.arange(3), "h": {"loss": [1.0, 0.5]}})
    assert load_checkpoint(p)["h"]["loss"] == [1.0, 0.5]
    assert [f.name for f in tmp_path.iterdir()] == ["x.pt"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="does not exist"):  # NotFoundError is both
        load_checkpoint(tmp_path / "missing.pt")


def test_pretrain_lowers_contrastive_loss_and_saves(data, tmp_path):
    images = data[0]
    torch.manual_seed(0)
    bb = create_backbone("mlp_digits")
    out = pretrain_backbone(bb, images, epochs=5, batch_size=60, save_to=tmp_path / "pre.pt", progress=False)
    assert out["loss"][-1] < out["loss"][0]
    again = create_backbone("mlp_digits", pretrained_file=tmp_path / "pre.pt")
    for (k, a), (_, b) in zip(bb.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a.cpu(), b), k


def test_augment_and_nt_xent():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(7, 1, 8, 8)
    y = augment_images(x, g, max_shift=1, noise=0.0, scale=(1.0, 1.0), drop=0.0)
    assert y.shape == x.shape
    # a pure shift: every view is its image moved by (dy, dx) in {-1, 0, 1}^2 with zero padding
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1))
    shifts = [(dy, dx) for dy in range(3) for dx in range(3)]
    for i in range(7):
        assert any(torch.equal(y[i], pad[i, :, dy:dy + 8, dx:dx + 8]) for dy, dx in shifts), i
    z = torch.randn(5, 3)
    assert float(nt_xent_loss(z, z, 0.1)) < float(nt_xent_loss(z, torch.randn(5, 3), 0.1))
    # nt_xent against its formula: -1/(2B) sum_a log(exp(s_a,a+ / t) / sum_{b != a} exp(s_ab / t))
    z1, z2 = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    zz = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=-1)
    sim = zz @ zz.T / 0.5
    ref = 0.0
    for a in range(8):
        others = torch.cat([sim[a, :a], sim[a, a + 1:]])
        ref -= float(sim[a, (a + 4) % 8] - torch.logsumexp(others, 0))
    assert float(nt_xent_loss(z1, z2, 0.5)) == pytest.approx(ref / 8, rel=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        nt_xent_loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(z, z, 0.0)


def test_progress_switch(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress_enabled(None) is False
    assert progress_enabled(True) is True
    monkeypatch.delenv("TQDM_DISABLE")
    assert progress_enabled(False) is False


def test_gumbel_reinforce_trains_through_the_score_function(data):
    """A sampled graph has no pathwise gradient; the surrogate on graph.info['log_prob'] supplies it."""
    pytest.importorskip("bgcn.estimators")
    from bgcn.topk import ESTIMATORS

    assert "gumbel_reinforce" in ESTIMATORS  # registered by importing bgcn
    images, labels, tr, va, te = data
    model = _model("end2end", "gumbel_reinforce", tau=1.0)
    model(images)
    assert "log_prob" in model.last_graph.info and model.last_graph.info["log_prob"].shape == (N,)
    res = train(model, images, labels, tr, va, te, mode="end2end", epochs=2, progress=False)
    assert all(g > 0 for g in res.history.grad_graph)
