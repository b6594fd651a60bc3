"""train(): modes, history, determinism, checkpoints/resume, divergence, pre-training (chapter 08)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bgcn.backbone import create_backbone
from bgcn.graph import edge_homophily
from bgcn.train import (History, TrainingDiverged, augment_images, load_checkpoint, nt_xent_loss, pretrain_backbone,
                        progress_enabled, rng_state, save_checkpoint, set_rng_state, train)
from bgcn.utils import seed_everything

N, C, K = 120, 4, 5


pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one thread is faster


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data(n=N, classes=C)


@pytest.fixture
def run(data, tiny_model):
    """``run(mode="end2end", epochs=3, estimator="softmax", **train_kw)``: train a fresh seeded model."""
    def go(mode="end2end", epochs=3, **kw):
        images, labels, tr, va, te = data
        model = tiny_model(kw.pop("estimator", "softmax"), mode=mode)
        return train(model, images, labels, tr, va, te, mode=mode, epochs=epochs, device="cpu", progress=False,
                     lr_backbone=1e-3, **kw)

    return go


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


def test_frozen_leaves_backbone_alone_end2end_changes_it(data, tiny_model):
    images, labels, tr, va, te = data
    before = {k: v.clone() for k, v in create_backbone("mlp_digits").state_dict().items()}
    torch.manual_seed(0)
    bb = create_backbone("mlp_digits")
    bb.load_state_dict(before)
    res = train(tiny_model("softmax", mode="frozen", backbone=bb), images, labels, tr, va, te, mode="frozen",
                epochs=3, progress=False)
    assert all(torch.equal(before[k], v) for k, v in res.model.backbone.state_dict().items())
    assert all(p.grad is None for p in res.model.backbone.parameters())
    assert res.history.grad_total == [0.0, 0.0, 0.0] and res.history.edge_change == [0.0, 0.0, 0.0]

    bb = create_backbone("mlp_digits")
    bb.load_state_dict(before)
    res = train(tiny_model("softmax", backbone=bb), images, labels, tr, va, te, mode="end2end", epochs=3,
                progress=False)
    assert any(not torch.equal(before[k], v) for k, v in res.model.backbone.state_dict().items())
    assert all(g > 0 for g in res.history.grad_graph) and all(g > 0 for g in res.history.grad_backbone)


def test_end2end_features_has_zero_graph_gradient(data, run):
    res = run("end2end-features")
    h = res.history
    assert h.grad_graph == [0.0] * 3
    assert all(g > 0 for g in h.grad_node)
    assert res.model.estimator_name == "hard" and not res.model.use_graph_weights


def test_history_contents(data, run):
    res = run("end2end", epochs=4, graph_every=2)
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


def test_same_seed_same_history(data, run):
    a = run("end2end", epochs=3)
    b = run("end2end", epochs=3)
    assert _series(a.history) == _series(b.history)
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("warmup", [0, 2])
def test_resume_equals_uninterrupted(data, tmp_path, warmup, run):
    straight = run("end2end", epochs=6, warmup_epochs=warmup, checkpoint=tmp_path / "a.pt")
    run("end2end", epochs=3, warmup_epochs=warmup, checkpoint=tmp_path / "b.pt")
    resumed = run("end2end", epochs=6, warmup_epochs=warmup, checkpoint=tmp_path / "b.pt", resume=True)
    assert _series(straight.history) == _series(resumed.history)
    for (ka, va), (kb, vb) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert straight.best_epoch == resumed.best_epoch
    assert straight.test_acc_at_best_val == resumed.test_acc_at_best_val
    ck = load_checkpoint(tmp_path / "b.pt")  # weights_only=True inside
    assert ck["epoch"] == 6 and len(ck["history"]["loss"]) == 6
    # graphs: epoch 0..6 in both
    assert [g["epoch"] for g in straight.history.graphs] == [g["epoch"] for g in resumed.history.graphs]


def test_resume_refuses_other_settings(data, tmp_path, run):
    run("end2end", epochs=2, checkpoint=tmp_path / "c.pt")
    with pytest.raises(ValueError, match="settings differ.*lr_gcn"):
        run("end2end", epochs=4, checkpoint=tmp_path / "c.pt", resume=True, lr_gcn=0.5)


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


def test_nan_stops_with_clear_message_and_keeps_checkpoint(data, tmp_path, tiny_model):
    images, labels, tr, va, te = data
    model = tiny_model("softmax", backbone=_NaNAfter(bad=4))
    ck = tmp_path / "run" / "checkpoint.pt"
    with pytest.raises(TrainingDiverged, match=r"diverged at epoch 4.*last good checkpoint \(epoch 3\)") as ei:
        train(model, images, labels, tr, va, te, mode="end2end", epochs=10, checkpoint=ck, progress=False)
    assert ei.value.epoch == 4 and ei.value.checkpoint == str(ck)
    state = load_checkpoint(ck)
    assert state["epoch"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "checkpoint.pt.tmp").exists()


def test_nan_loss_is_caught(data, monkeypatch, tiny_model):
    """A NaN loss (not only NaN features) stops the run before the optimizer step."""
    images, labels, tr, va, te = data
    model = tiny_model("softmax", mode="frozen")
    with torch.no_grad():
        model.gcn.conv2.bias.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="loss is nan"):
        train(model, images, labels, tr, va, te, mode="frozen", epochs=2, progress=False)


def test_score_function_hook_reaches_a_parameter(data, monkeypatch, tiny_model):
    """graph.info['log_prob'] adds the REINFORCE surrogate: its gradient reaches what log_prob depends on."""
    images, labels, tr, va, te = data
    model = tiny_model("hard")
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


def test_bad_train_arguments(data, tiny_model):
    images, labels, tr, va, te = data
    m = tiny_model("softmax")
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


def test_gumbel_reinforce_trains_through_the_score_function(data, tiny_model):
    """A sampled graph has no pathwise gradient; the surrogate on graph.info['log_prob'] supplies it."""
    pytest.importorskip("bgcn.estimators")
    from bgcn.topk import ESTIMATORS

    assert "gumbel_reinforce" in ESTIMATORS  # registered by importing bgcn
    images, labels, tr, va, te = data
    model = tiny_model("gumbel_reinforce", tau=1.0)
    model(images)
    assert "log_prob" in model.last_graph.info and model.last_graph.info["log_prob"].shape == (N,)
    res = train(model, images, labels, tr, va, te, mode="end2end", epochs=2, progress=False)
    assert all(g > 0 for g in res.history.grad_graph)


# == the training loop's corrections (issue 9, section 2): one mode, the warm-up is the frozen run,
# selection among the joint epochs, NLL and surrogate apart, the graph path on the parameters,
# homophily from analysis labels, resume refuses any changed setting, bad input ==================
def _train(data, model, **kw):
    images, labels, tr, va, te = data
    kw.setdefault("device", "cpu")
    kw.setdefault("progress", False)
    kw.setdefault("lr_backbone", 1e-3)
    return train(model, images, labels, tr, va, te, **kw)


# -- one mode --------------------------------------------------------------------------------------
def test_train_without_mode_follows_the_model(data, tiny_model):
    m = tiny_model("softmax", mode="frozen")
    res = _train(data, m, epochs=2)
    assert res.config["mode"] == "frozen" and res.model.mode == "frozen"
    assert all(g == 0.0 for g in res.history.grad_backbone)
    # an explicit mode reconfigures the model, and the model then says so too
    res = _train(data, m, epochs=2, mode="end2end")
    assert res.model.mode == "end2end" and res.config["estimator"] == "softmax"


# -- warm-up ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["imle", "gumbel_reinforce", "sigmoid", "capped_simplex", "softmax"])
def test_warmup_is_the_frozen_run(data, estimator, tiny_model):
    """Every end-to-end run warms up on the frozen mode's hard graph: its warm-up epochs are the frozen run's."""
    w = 3
    frozen = _train(data, tiny_model(estimator, mode="frozen"), epochs=w, mode="frozen")
    e2e = _train(data, tiny_model(estimator), epochs=w + 1, warmup_epochs=w, mode="end2end")
    assert e2e.history.loss[:w] == frozen.history.loss
    assert e2e.history.val_acc[:w] == frozen.history.val_acc
    ie, ifr = e2e.history.initial, frozen.history.initial
    assert ie.keys() == ifr.keys()
    assert all(ie[k] == ifr[k] or (ie[k] != ie[k] and ifr[k] != ifr[k]) for k in ie)  # NaN == NaN here
    # the warm-up graph has k unit-weight edges a row (no dense or sampled graph)
    g = e2e.graphs["warmup"]
    assert g["indices"].shape == (N, K) and bool((g["weights"] == 1).all())


def test_warmup_must_leave_joint_epochs(data, tiny_model):
    with pytest.raises(ValueError, match="warmup_epochs"):
        _train(data, tiny_model("softmax"), epochs=3, warmup_epochs=3, mode="end2end")


# -- model selection ---------------------------------------------------------------------------------
def test_selection_among_joint_epochs_only(data, tiny_model):
    w = 4
    res = _train(data, tiny_model("softmax"), epochs=w + 3, warmup_epochs=w, mode="end2end", lr_gcn=5e-2)
    assert res.best_epoch > w
    assert res.warmup["epoch"] == w and 1 <= res.warmup["best_epoch"] <= w
    assert res.warmup["test_acc"] == res.history.test_acc[w - 1]
    joint = res.history.val_acc[w:]
    assert res.best_val_acc == max(joint)
    assert res.test_acc_at_best_val == res.history.test_acc[res.best_epoch - 1]
    assert math.isclose(res.gain_over_warmup, res.test_acc_at_best_val - res.warmup["test_acc"])
    # the scored model's graph is kept (edges changed / homophily are measured on it)
    assert res.graphs["best"]["epoch"] == res.best_epoch
    assert res.summary()["warmup"]["epoch"] == w


def test_without_warmup_every_epoch_competes(data, tiny_model):
    res = _train(data, tiny_model("softmax"), epochs=4, mode="end2end")
    assert res.warmup is None and math.isnan(res.gain_over_warmup)
    assert res.best_val_acc == max(res.history.val_acc)


# -- losses apart ----------------------------------------------------------------------------------
def test_history_loss_is_the_nll_not_the_surrogate(data, tiny_model):
    images, labels, tr, va, te = data
    seed = 3
    res = _train(data, tiny_model("gumbel_reinforce"), epochs=1, mode="end2end", seed=seed)
    # replay the first step's forward by hand: the same seeds, the same generator
    model = tiny_model("gumbel_reinforce")
    seed_everything(seed)
    g = torch.Generator().manual_seed(seed + 1)
    model.train()
    logp = model(images, generator=g)
    nll = torch.nn.functional.nll_loss(logp[tr], labels[tr])
    assert res.history.loss[0] == pytest.approx(float(nll.detach()), rel=1e-6, abs=1e-7)
    assert res.history.surrogate[0] != 0.0
    plain = _train(data, tiny_model("softmax"), epochs=1, mode="end2end")
    assert plain.history.surrogate == [0.0]


# -- the graph path on the parameters ----------------------------------------------------------------
def test_param_path_norms(data, tiny_model):
    res = _train(data, tiny_model("softmax", mode="end2end-features"), epochs=2, mode="end2end-features",
                 param_path_norms=True)
    h = res.history
    assert h.grad_backbone_graph == [0.0, 0.0]
    np.testing.assert_allclose(h.grad_backbone_node, h.grad_backbone, rtol=1e-5)
    res = _train(data, tiny_model("softmax", tau=0.05), epochs=2, mode="end2end", param_path_norms=True)
    h = res.history
    for node, graph, total in zip(h.grad_backbone_node, h.grad_backbone_graph, h.grad_backbone):
        assert graph > 0 and node > 0
        # the two paths' updates add up to the real one: triangle inequality both ways
        assert abs(node - graph) * (1 - 1e-4) <= total <= (node + graph) * (1 + 1e-4)
    off = _train(data, tiny_model("softmax"), epochs=1, mode="end2end")
    assert math.isnan(off.history.grad_backbone_graph[0])


# -- homophily / symmetric ----------------------------------------------------------------------------
def test_train_records_homophily_from_analysis_labels_only(data, tiny_model):
    images, labels, tr, va, te = data
    res = _train(data, tiny_model("softmax", mode="frozen"), epochs=2, mode="frozen", analysis_labels=labels)
    g = res.graphs["initial"]["indices"].long()
    assert res.history.initial["homophily"] == edge_homophily(g, labels)
    assert res.history.homophily == [edge_homophily(g, labels)] * 2  # frozen: the graph never moves
    # the labels used for analysis change nothing in the training
    other = _train(data, tiny_model("softmax", mode="frozen"), epochs=2, mode="frozen",
                   analysis_labels=torch.zeros_like(labels))
    assert other.history.loss == res.history.loss and other.history.homophily == [1.0, 1.0]


# -- resume ------------------------------------------------------------------------------------------
def test_resume_refuses_changed_extra_config(data, tmp_path, tiny_model):
    ck = tmp_path / "ck.pt"
    _train(data, tiny_model("softmax"), epochs=2, mode="end2end", checkpoint=ck,
           extra_config={"hidden": 16, "backbone": "mlp"})
    with pytest.raises(ValueError, match="hidden"):
        _train(data, tiny_model("softmax"), epochs=3, mode="end2end", checkpoint=ck, resume=True,
               extra_config={"hidden": 32, "backbone": "mlp"})
    res = _train(data, tiny_model("softmax"), epochs=3, mode="end2end", checkpoint=ck, resume=True,
                 extra_config={"hidden": 16, "backbone": "mlp"})
    assert len(res.history) == 3


def test_resume_without_checkpoint_warns(data, tmp_path, tiny_model):
    with pytest.warns(UserWarning, match="starting afresh"):
        _train(data, tiny_model("softmax"), epochs=1, mode="end2end", checkpoint=tmp_path / "none.pt", resume=True)


def test_generator_state_of_another_device_is_not_forced():
    g = torch.Generator().manual_seed(0)
    st = rng_state(g)
    st["generator_device"] = torch.tensor([1])  # as if saved from a CUDA generator
    before = g.get_state().clone()
    torch.rand(3, generator=g)
    with pytest.warns(UserWarning, match="generator"):
        set_rng_state(st, g)
    assert not torch.equal(g.get_state(), before)  # left as it was, not overwritten with a foreign state
    st["generator_device"] = torch.tensor([0])
    set_rng_state(st, g)
    assert torch.equal(g.get_state(), before)


# -- bad input -------------------------------------------------------------------------------------
def test_class_without_a_labelled_node_is_refused(data, tiny_model):
    images, labels, tr, va, te = data
    tr2 = tr & (labels != 2)
    with pytest.raises(ValueError, match=r"class\(es\) \[2\]"):
        train(tiny_model("softmax"), images, labels, tr2, va, te, epochs=1, device="cpu", progress=False)


def test_tiny_validation_set_warns(data, tiny_model):
    images, labels, tr, va, te = data
    tiny = torch.zeros_like(va)
    tiny[torch.nonzero(va)[:3, 0]] = True
    with pytest.warns(UserWarning, match="validation set has only 3"):
        train(tiny_model("softmax"), images, labels, tr, tiny, None, epochs=1, device="cpu", progress=False)


def test_float64_images_train_and_uint8_are_refused(data, tiny_model):
    images, labels, tr, va, te = data
    a = train(tiny_model("softmax"), images.double(), labels, tr, va, te, epochs=2, device="cpu", progress=False)
    b = train(tiny_model("softmax"), images, labels, tr, va, te, epochs=2, device="cpu", progress=False)
    np.testing.assert_allclose(a.history.loss, b.history.loss, rtol=1e-6)
    with pytest.raises(TypeError, match="images"):
        train(tiny_model("softmax"), (images * 255).to(torch.uint8), labels, tr, va, te, epochs=1, device="cpu",
              progress=False)


# -- evaluation every few epochs; graphs stored apart in the checkpoint (one file a snapshot) ----
@pytest.fixture(scope="module")
def data90(tiny_data):
    """90 images, 3 classes (seed 1), float64."""
    return tiny_data(n=90, classes=3, seed=1, double=True)


def _model90(tiny_model):
    return tiny_model("softmax", classes=3, double=True)


KW = dict(epochs=6, warmup_epochs=2, device="cpu", progress=False, lr_backbone=1e-3, seed=2)


def test_eval_every_skips_evaluation_and_selects_among_evaluated_epochs(data90, tiny_model, recwarn):
    images, labels, tr, va, te = data90
    r = train(_model90(tiny_model), images, labels, tr, va, te, **KW, eval_every=4)
    h = r.history
    assert [e for e, v in zip(h.epoch, h.val_acc) if not math.isnan(v)] == [4, 6]
    assert all(not math.isnan(x) for x in h.loss)
    assert r.best_epoch in (4, 6) and r.config["eval_every"] == 4
    full = train(_model90(tiny_model), images, labels, tr, va, te, **KW)
    assert h.loss == full.history.loss  # evaluation never changes training
    assert "eval_every" not in full.config  # the default is not recorded: old checkpoints still resume


def test_graphs_are_stored_apart_and_resume_reads_them(data90, tiny_model, tmp_path, recwarn):
    images, labels, tr, va, te = data90
    ck = tmp_path / "ck.pt"
    straight = train(_model90(tiny_model), images, labels, tr, va, te, **KW)
    train(_model90(tiny_model), images, labels, tr, va, te, **{**KW, "epochs": 3}, checkpoint=ck)
    state = load_checkpoint(ck)
    assert state["history"]["graphs"] == [] and state["history"]["graph_epochs"] == [0, 1, 2, 3]
    files = sorted(p.name for p in (tmp_path / "ck.pt.graphs").iterdir())
    assert files == [f"epoch_{e:05d}.pt" for e in range(4)]
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ck.pt.graphs").iterdir()}
    res = train(_model90(tiny_model), images, labels, tr, va, te, **KW, checkpoint=ck, resume=True)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ck.pt.graphs").iterdir()}
    assert all(after[k] == v for k, v in before.items())  # each graph file written once
    assert [g["epoch"] for g in res.history.graphs] == [g["epoch"] for g in straight.history.graphs]
    for a, b in zip(res.history.graphs, straight.history.graphs):
        assert torch.equal(a["indices"], b["indices"]) and torch.equal(a["weights"], b["weights"])
    assert res.history.loss == straight.history.loss
    # a missing graph file is named, not silently dropped
    (tmp_path / "ck.pt.graphs" / "epoch_00002.pt").unlink()
    with pytest.raises(FileNotFoundError, match="epoch_00002"):
        train(_model90(tiny_model), images, labels, tr, va, te, **{**KW, "epochs": 8}, checkpoint=ck, resume=True)


def test_eval_every_is_validated(data90, tiny_model):
    images, labels, tr, va, te = data90
    with pytest.raises(ValueError, match="eval_every"):
        train(_model90(tiny_model), images, labels, tr, va, te, **KW, eval_every=0)


def test_an_old_inline_checkpoint_resumes_twice(tiny_data, tiny_model, tmp_path, recwarn):
    """A checkpoint from before the graphs were stored apart (graphs inline) resumes, and the
    checkpoint it then writes resumes again: its graphs are written to files, none is lost."""
    images, labels, tr, va, te = tiny_data(n=80, double=True)
    kw = dict(epochs=2, device="cpu", progress=False, mode="frozen")
    ck = tmp_path / "ck.pt"
    train(tiny_model(hidden=8, double=True), images, labels, tr, va, te, **kw, checkpoint=ck)
    state = load_checkpoint(ck)  # rewrite it in the old format
    state["history"]["graphs"] = [load_checkpoint(p) for p in sorted((tmp_path / "ck.pt.graphs").iterdir())]
    del state["history"]["graph_epochs"]
    for p in (tmp_path / "ck.pt.graphs").iterdir():
        p.unlink()
    save_checkpoint(ck, state)
    train(tiny_model(hidden=8, double=True), images, labels, tr, va, te, **{**kw, "epochs": 3}, checkpoint=ck,
          resume=True)
    r = train(tiny_model(hidden=8, double=True), images, labels, tr, va, te, **{**kw, "epochs": 4}, checkpoint=ck,
              resume=True)
    assert [g["epoch"] for g in r.history.graphs] == [0, 1, 2, 3, 4]
