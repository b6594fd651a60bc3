"""The mini-batch engine as a user runs it (chapter 11): killed and resumed runs reach the
uninterrupted result, a changed setting is refused, uint8 images, evaluation every few epochs,
divergence, the timings a run reports."""
from __future__ import annotations

import math

import pytest
import torch

from bgcn.config import TrainConfig
from bgcn.data import label_masks, load_dataset
from bgcn.minibatch import train_minibatch
from bgcn.train import TrainingDiverged, load_checkpoint, train

N, C, K = 96, 4, 5

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data(n=N, classes=C, seed=3, labels_per_class=4, double=True)


@pytest.fixture(autouse=True)
def _quiet(recwarn):  # the tiny validation set warns on every run
    yield


KW = dict(batch_size=24, epochs=5, warmup_epochs=1, lr_backbone=1e-2, device="cpu", bank_refresh=2,
          eval_every=2, seed=5)


def _same(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa)


@pytest.mark.parametrize("extra", [{}, {"cache_neighbours": True, "estimator": "softmax"},
                                   {"bank_momentum": 0.5}])
def test_killed_and_resumed_run_equals_the_uninterrupted_one(data, tmp_path, extra, tiny_model):
    images, labels, tr, va, te = data
    extra = dict(extra)
    est = extra.pop("estimator", "masked_softmax")
    full = train_minibatch(tiny_model(est, double=True), images, labels, tr, va, te, **KW, **extra)
    ck = tmp_path / "mb.pt"

    def kill(epoch, model, bank):  # the process dies during epoch 4, after its steps
        if epoch == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_minibatch(tiny_model(est, double=True), images, labels, tr, va, te, **KW, **extra, checkpoint=ck,
                        callback=kill)
    assert load_checkpoint(ck)["epoch"] == 3
    res = train_minibatch(tiny_model(est, seed=99, double=True), images, labels, tr, va, te, **KW, **extra,
                          checkpoint=ck, resume=True)
    assert _same(full, res) == 0.0  # bit-exact on the CPU
    assert torch.equal(full.bank.features, res.bank.features)
    for key in ("loss", "val_acc", "test_acc", "edge_change"):
        a, b = getattr(full.history, key), getattr(res.history, key)
        assert len(a) == len(b) == KW["epochs"]
        assert all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b)), key
    assert (full.best_epoch, full.test_acc_at_best_val) == (res.best_epoch, res.test_acc_at_best_val)
    assert full.steps == res.steps
    # resuming a finished run changes nothing
    again = train_minibatch(tiny_model(est, double=True), images, labels, tr, va, te, **KW, **extra, checkpoint=ck,
                            resume=True)
    assert again.status == "resumed-complete" and _same(again, res) == 0.0


def test_resume_refuses_other_settings_and_a_full_batch_checkpoint(data, tmp_path, tiny_model):
    images, labels, tr, va, te = data
    ck = tmp_path / "mb.pt"
    train_minibatch(tiny_model(double=True), images, labels, tr, va, te, **{**KW, "epochs": 2}, checkpoint=ck)
    with pytest.raises(ValueError, match="batch_size: checkpoint 24 vs now 32"):
        train_minibatch(tiny_model(double=True), images, labels, tr, va, te, **{**KW, "batch_size": 32}, checkpoint=ck,
                        resume=True)
    # epochs may grow: the run continues
    r = train_minibatch(tiny_model(double=True), images, labels, tr, va, te, **{**KW, "epochs": 3}, checkpoint=ck,
                        resume=True)
    assert len(r.history) == 3
    fb = tmp_path / "full.pt"
    train(tiny_model(double=True), images, labels, tr, va, te, epochs=1, device="cpu", checkpoint=fb, progress=False)
    with pytest.raises(ValueError, match="not a mini-batch checkpoint"):
        train_minibatch(tiny_model(double=True), images, labels, tr, va, te, **KW, checkpoint=fb, resume=True)
    with pytest.raises(ValueError, match="resume=True needs checkpoint"):
        train_minibatch(tiny_model(double=True), images, labels, tr, va, te, **KW, resume=True)
    with pytest.warns(UserWarning, match="starting afresh"):
        train_minibatch(tiny_model(double=True), images, labels, tr, va, te, **{**KW, "epochs": 2},
                        checkpoint=tmp_path / "none.pt", resume=True)
    assert (tmp_path / "none.pt").is_file()
    assert not list(tmp_path.glob("*.tmp"))  # nothing half-written


def test_uint8_images_equal_their_float_conversion(tiny_model):
    ds = load_dataset("synthetic", n=N, num_classes=C, seed=4)
    u8 = (ds.images * 255).round().to(torch.uint8)
    tr, va, te = label_masks(ds.labels, 4, seed=0)
    kw = {**KW, "epochs": 2}

    a = train_minibatch(tiny_model(), u8, ds.labels, tr, va, te, **kw)
    b = train_minibatch(tiny_model(), u8.float() / 255, ds.labels, tr, va, te, **kw)
    assert _same(a, b) == 0.0 and a.history.loss == b.history.loss


def test_eval_every_and_the_reported_timings(data, tiny_model):
    images, labels, tr, va, te = data
    r = train_minibatch(tiny_model(double=True), images, labels, tr, va, te, **{**KW, "epochs": 5, "eval_every": 2},
                        analysis_labels=labels)
    h = r.history
    evaluated = [e for e, v in zip(h.epoch, h.val_acc) if not math.isnan(v)]
    assert evaluated == [2, 4, 5]
    assert [e for e, v in zip(h.epoch, h.homophily) if not math.isnan(v)] == evaluated
    assert all(0.0 <= v <= 1.0 for v in h.homophily if not math.isnan(v))
    assert r.best_epoch in evaluated
    t = r.timings
    assert t["images_per_s"] == pytest.approx(N * 5 / sum(h.time_step), rel=1e-9)
    assert t["bank_bytes"] == r.bank.features.numel() * r.bank.features.element_size()
    assert t["peak_memory_bytes"] is None or t["peak_memory_bytes"] > t["bank_bytes"]
    assert r.config["world_size"] == 1 and r.config["engine"] == "minibatch"


def test_divergence_is_reported_with_the_last_checkpoint(data, tmp_path, tiny_model):
    images, labels, tr, va, te = data
    ck = tmp_path / "mb.pt"
    bad = images.clone()
    bad[7, 0, 0, 0] = float("nan")  # a NaN pixel: named before any training
    with pytest.raises(TrainingDiverged, match="image 7"):
        train_minibatch(tiny_model(double=True), bad, labels, tr, va, te, **KW)

    def poison(epoch, model, bank):  # a NaN weight after epoch 2: epoch 3's loss is NaN
        if epoch == 2:
            with torch.no_grad():
                next(model.gcn.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match="epoch 3.*holds epoch 2") as ei:
        train_minibatch(tiny_model(double=True), images, labels, tr, va, te, **KW, checkpoint=ck, callback=poison)
    assert ei.value.epoch == 3 and load_checkpoint(ck)["epoch"] == 2


# -- argument checks: the engine's settings, its flags, the label checks it shares with train() --
def test_extra_config_cannot_overwrite_the_engines_settings(tiny_data, tiny_model):
    images, labels, tr, va, te = tiny_data(n=80, double=True)
    with pytest.raises(ValueError, match="clash"):
        train_minibatch(tiny_model(hidden=8, double=True), images, labels, tr, va, te, batch_size=20, epochs=1,
                        device="cpu", extra_config={"mode": "x"})
    with pytest.raises(ValueError, match="clash"):
        TrainConfig(extra={"epochs": 3})


def test_minibatch_flags_are_validated(tiny_data, tiny_model):
    images, labels, tr, va, te = tiny_data(n=80, double=True)
    kw = dict(batch_size=20, epochs=1, device="cpu")
    with pytest.raises(TypeError, match="progress"):
        train_minibatch(tiny_model(hidden=8, double=True), images, labels, tr, va, te, progress="yes", **kw)
    with pytest.raises(TypeError, match="deterministic"):
        train_minibatch(tiny_model(hidden=8, double=True), images, labels, tr, va, te, deterministic="x", **kw)
    with pytest.raises(ValueError, match="max_grad_norm=0"):
        train_minibatch(tiny_model(hidden=8, double=True), images, labels, tr, va, te, max_grad_norm=0.0, **kw)
    with pytest.raises(ValueError, match="max_grad_norm"):
        TrainConfig(max_grad_norm=0.0)


def test_minibatch_shares_the_label_checks(tiny_data, tiny_model):
    """train_minibatch runs the same label checks as train (one copy, bgcn.train._check_training_labels)."""
    images, labels, tr, va, te = tiny_data()
    tr2 = tr & (labels != 2)
    with pytest.raises(ValueError, match=r"class\(es\) \[2\]"):
        train_minibatch(tiny_model(), images, labels, tr2, va, te, batch_size=32,
                        epochs=1, device="cpu")
    tiny = torch.zeros_like(va)
    tiny[torch.nonzero(va)[:3, 0]] = True
    with pytest.warns(UserWarning, match="validation set has only 3"):
        train_minibatch(tiny_model(), images, labels, tr, tiny, None, batch_size=64,
                        epochs=1, device="cpu")
    with pytest.raises(ValueError, match="mode="):
        train_minibatch(tiny_model("softmax"), images, labels, tr, va, te, batch_size=32, epochs=1, mode="joint")
