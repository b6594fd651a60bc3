"""Tests of the measurements behind the Sources page's three seed claims (chapters/sources.md):

- seed 000's DINOv2: :func:`bgcn.backbone.batch_dependence` (LayerNorm against BatchNorm);
- seed 003's "clip the gradients and rescale the targets": :func:`bgcn.argmax.score_function_ascent`
  and :func:`bgcn.experiments.seeds.clipping_runs`;
- seed 004's cost collapse: :func:`bgcn.experiments.seeds.score_scale`, :class:`ScoreScale` (a
  plug-in of :func:`bgcn.train`) and :func:`score_scale_runs`.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bgcn
from bgcn.argmax import score_function_ascent
from bgcn.backbone import batch_dependence, norm_layers
from bgcn.experiments import seeds as S

D = torch.float64
QUICK = {"epochs": 3, "warmup_epochs": 1}  # the runs' plumbing, not their result


class _BNNet(nn.Module):
    """A two-layer conv net with BatchNorm: images (N, 1, 8, 8) -> (N, 8)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.num_features = 8

    def forward(self, x):
        return self.net(x)


# ------------------------------------------------------------------ batch dependence

def test_layernorm_vit_features_ignore_the_batch(digits):
    vit = bgcn.create_backbone("vit_tiny_digits")
    d = batch_dependence(vit, digits.images[:40])
    assert d["batch_change"] < 1e-6 and d["train_eval_change"] < 1e-6 and d["min_cosine"] > 1 - 1e-6
    assert d["layernorm"] == 5 and d["batchnorm"] == 0 and d["running_stats"] == 0


def test_batchnorm_features_depend_on_the_batch_and_the_backbone_is_untouched(digits):
    torch.manual_seed(0)
    net = _BNNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    d = batch_dependence(net, digits.images[:40], queries=3, batch_size=10)
    assert d["batch_change"] > 1e-3 and d["train_eval_change"] > 1e-3 and d["min_cosine"] < 1
    assert d["batchnorm"] == 1 and d["running_stats"] == 1
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running statistics kept
    assert net.training  # the caller's mode is kept too


def test_batchnorm_in_eval_mode_ignores_the_batch(digits):
    bb = bgcn.create_backbone("efficientnet_lite0_imagenet", bn_policy="eval")
    d = batch_dependence(bb, digits.images[:28])
    assert d["batch_change"] < 1e-6 and d["train_eval_change"] < 1e-6 and d["batchnorm"] > 0


def test_norm_layers_counts():
    net = nn.Sequential(nn.LayerNorm(4), nn.BatchNorm1d(4, track_running_stats=False), nn.GroupNorm(2, 4),
                        nn.BatchNorm1d(4))
    assert norm_layers(net) == {"batchnorm": 2, "layernorm": 1, "groupnorm": 1, "running_stats": 1}


@pytest.mark.parametrize("kw, match", [({"queries": 0}, "queries"), ({"queries": 16}, "queries"),
                                       ({"batch_size": 1}, "batch_size")])
def test_batch_dependence_refuses_bad_settings(digits, kw, match):
    with pytest.raises(ValueError, match=match):
        batch_dependence(_BNNet(), digits.images[:40], **kw)


def test_batch_dependence_needs_enough_images(digits):
    with pytest.raises(ValueError, match=r"M >= 2\*batch_size - queries = 28"):
        batch_dependence(_BNNet(), digits.images[:27])


# ------------------------------------------------------------------ seed 003: the toy

def _toy():
    v = torch.tensor([0.2, 1.5, -0.3, 0.9, 2.0], dtype=D)
    return torch.tensor([0.1, 0.5, -0.2, 0.0, 0.6], dtype=D), (1.0 - v) ** 2


def test_score_function_ascent_shapes_and_learns_the_toy():
    theta0, cost = _toy()
    out = score_function_ascent(theta0.expand(50, 5), cost, steps=200, generator=torch.Generator().manual_seed(0))
    assert out["expected_cost"].shape == (201, 50) and out["grad_norm"].shape == (200, 50)
    assert out["probs"].shape == out["logits"].shape == (50, 5) and out["finite"].all()
    assert torch.allclose(out["expected_cost"][0], torch.softmax(theta0, -1) @ cost)
    assert (out["probs"].argmax(-1) == cost.argmin()).all()  # chapter 3: it trains the toy
    one = score_function_ascent(theta0, cost, steps=2)        # (n,) is one run
    assert one["probs"].shape == (1, 5)


def test_rescaling_the_cost_is_rescaling_the_step():
    # c^2 times the cost with lr / c^2 is the same run (same samples): what rescaling the targets undoes
    theta0, cost = _toy()
    a = score_function_ascent(theta0.expand(20, 5), cost, steps=30, lr=0.5,
                              generator=torch.Generator().manual_seed(3))
    b = score_function_ascent(theta0.expand(20, 5), 100 * cost, steps=30, lr=0.005,
                              generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a["logits"], b["logits"], atol=1e-10)


def test_large_costs_lock_runs_on_a_wrong_class_and_clipping_bounds_the_step():
    theta0, cost = _toy()
    plain = score_function_ascent(theta0.expand(200, 5), 100 * cost, generator=torch.Generator().manual_seed(0))
    assert (plain["probs"].argmax(-1) != cost.argmin()).any()
    clipped = score_function_ascent(theta0.expand(200, 5), 100 * cost, steps=3, lr=0.5, max_grad_norm=0.5,
                                    generator=torch.Generator().manual_seed(0))
    step = (clipped["logits"] - theta0).norm(dim=-1)
    assert (step <= 3 * 0.5 * 0.5 + 1e-12).all()  # three steps of lr * max_grad_norm at most


@pytest.mark.parametrize("kw, match", [({"max_grad_norm": 0.0}, "max_grad_norm"), ({"steps": 0}, "steps"),
                                       ({"lr": -1.0}, "lr")])
def test_score_function_ascent_refuses_bad_settings(kw, match):
    theta0, cost = _toy()
    with pytest.raises(ValueError, match=match):
        score_function_ascent(theta0, cost, **kw)


def test_score_function_ascent_needs_one_cost_per_category():
    theta0, cost = _toy()
    with pytest.raises(ValueError, match="one cost per category"):
        score_function_ascent(theta0, cost[:4])


# ------------------------------------------------------------------ seed 004: the score scale

def test_score_scale_by_hand():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(30, 6, generator=g, dtype=D)
    s = bgcn.cosine_similarity(f)
    s.fill_diagonal_(float("nan"))
    rows = [r[~r.isnan()] for r in s]
    sd = torch.stack([r.std(unbiased=False) for r in rows])
    top = torch.stack([r.sort(descending=True).values[:4] for r in rows])
    gap = (top[:, 2] - top[:, 3]) / sd
    got = S.score_scale(f, k=3)
    assert math.isclose(got["spread"], float(sd.mean()), rel_tol=1e-12)
    assert math.isclose(got["gap"], float(gap.mean()), rel_tol=1e-12)
    half = S.score_scale(f, k=3, tau=0.5)  # the spread scales with 1/tau, the gap does not
    assert math.isclose(half["spread"], 2 * got["spread"], rel_tol=1e-12)
    assert math.isclose(half["gap"], got["gap"], rel_tol=1e-12)


def test_score_scale_plugin_records_every_evaluation_and_changes_nothing(tiny_data, tiny_model):
    images, labels, tr, va, te = tiny_data()
    kw = dict(mode="end2end", epochs=4, warmup_epochs=1, seed=0, device="cpu", progress=False)
    plain = bgcn.train(tiny_model("identity", tau=1.0), images, labels, tr, va, te, **kw)
    plug = S.ScoreScale(k=5)
    watched = bgcn.train(tiny_model("identity", tau=1.0), images, labels, tr, va, te, plugins=[plug], **kw)
    assert [r["epoch"] for r in plug.rows] == [0, 1, 2, 3, 4]
    assert plug.rows[0]["spread"] == plug.rows[1]["spread"]  # the warm-up does not move the backbone
    assert plain.history.loss == watched.history.loss


# ------------------------------------------------------------------ the runs of the page

def test_clipping_runs_and_summary():
    runs = S.clipping_runs(seeds=2, max_grad_norm=1.0, **QUICK)
    assert [(r["seed"], r["max_grad_norm"]) for r in runs] == [(0, None), (0, 1.0), (1, None), (1, 1.0)]
    assert all(not r["diverged"] and len(r["loss"]) == 3 and len(r["grad_backbone"]) == 2 for r in runs)
    s = S.clipping_summary(runs)
    assert s["seeds"] == 2 and s["diverged_plain"] == s["diverged_clipped"] == 0
    assert s["diff"].n == 2 and 0 <= s["clip_active"] <= 1 and s["grad_median"] > 0


def test_score_scale_runs_and_summary():
    runs = S.score_scale_runs(["identity", ("identity", {"noise_rel": 1.0})], seeds=1, **QUICK)
    assert [r["estimator_kw"] for r in runs] == [{}, {"noise_rel": 1.0}]
    assert all(r["epoch"] == [0, 1, 2, 3] for r in runs)
    summary = S.score_scale_summary(runs)
    assert set(summary) == {"identity", "identity noise_rel=1.0"}
    r = runs[0]
    assert summary["identity"]["spread_ratio"] == pytest.approx(r["spread"][-1] / r["spread"][0])
