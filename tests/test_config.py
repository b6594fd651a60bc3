"""bgcn.TrainConfig and bgcn.fit (chapter 11): one validated config over both engines."""
from __future__ import annotations

import json

import pytest

import bgcn
from bgcn.config import TrainConfig, fit
from bgcn.minibatch import train_minibatch
from bgcn.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kw,match", [
    ({"epochs": 0}, "epochs"), ({"mode": "joint"}, "mode"), ({"lr_gcn": -1.0}, "lr_gcn"),
    ({"mode": "end2end", "epochs": 5, "warmup_epochs": 5}, "warmup_epochs"), ({"resume": True}, "checkpoint"),
    ({"bank_refresh": 3}, "bank_refresh.*mini-batch"), ({"batch_size": 32, "amp": True}, "amp.*full-batch"),
    ({"batch_size": -1}, "batch_size"), ({"bank_momentum": 1.0, "batch_size": 8}, "bank_momentum"),
    ({"reinforce_reward": "x"}, "reinforce_reward"), ({"seed": -1}, "seed"), ({"eval_every": 0}, "eval_every")])
def test_bad_settings_name_the_field(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TrainConfig(**kw)


def test_round_trip_through_json_and_unknown_keys():
    cfg = TrainConfig(mode="end2end", epochs=7, warmup_epochs=3, batch_size=64, bank_refresh=2, extra={"a": 1})
    back = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.engine == "minibatch" and TrainConfig().engine == "full"
    with pytest.raises(ValueError, match="unknown keys \\['lr'\\]"):
        TrainConfig.from_dict({**cfg.to_dict(), "lr": 1})
    with pytest.raises(ValueError, match="epochs"):
        cfg.replace(epochs=0)
    assert bgcn.TrainConfig is TrainConfig and bgcn.fit is fit


def test_fit_runs_the_engine_the_config_names(tiny_data, tiny_model):
    images, labels, tr, va, te = tiny_data(n=80)

    def model():
        return tiny_model(hidden=8)

    kw = dict(mode="end2end", epochs=3, warmup_epochs=1, device="cpu", progress=False, lr_backbone=1e-3)
    a = fit(model(), images, labels, tr, va, te, TrainConfig(**kw))
    b = train(model(), images, labels, tr, va, te, **kw)
    assert a.history.loss == b.history.loss and a.train_config.engine == "full"
    c = fit(model(), images, labels, tr, va, te, TrainConfig(**kw), batch_size=20)  # an override
    d = train_minibatch(model(), images, labels, tr, va, te, batch_size=20, **kw)
    assert c.history.loss == d.history.loss and c.config["engine"] == "minibatch"
    with pytest.raises(TypeError, match="TrainConfig"):
        fit(model(), images, labels, tr, va, te, {"epochs": 3})
