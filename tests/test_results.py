"""The committed results (results/) are complete and say what chapter 08's prose says of them.

Chapter 08 computes its numbers from results/experiment.json (glue); these tests pin the
qualitative claims its sentences make, so that a regenerated table that contradicts them fails
here instead of leaving a wrong sentence on the page.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bgcn.experiment import FULL, METHODS, ROWS, paired_difference

RESULTS = Path(__file__).resolve().parents[1] / "results"


@pytest.fixture(scope="module")
def exp():
    path = RESULTS / "experiment.json"
    assert path.is_file(), "results/experiment.json is committed (python -m bgcn experiment --out results)"
    return json.loads(path.read_text())


def test_experiment_is_complete_and_full_size(exp):
    cfg = exp["config"]
    assert not cfg["quick"] and cfg["seeds"] == FULL["seeds"] and cfg["epochs"] == FULL["epochs"]
    assert cfg["labels_per_class"] == FULL["labels_per_class"] and set(cfg["methods"]) == set(ROWS)
    for lpc in cfg["labels_per_class"]:
        for name in ROWS:
            seeds = sorted(r["seed"] for r in exp["runs"] if r["method"] == name and r["labels_per_class"] == lpc)
            assert seeds == list(range(cfg["seeds"])), (name, lpc)
    # the new measures are in every end-to-end run (not an old file)
    e2e = [r for r in exp["runs"] if r.get("warmup_epochs")]
    assert len(e2e) == cfg["seeds"] * len(cfg["labels_per_class"]) * sum(m[0] != "frozen" for m in METHODS.values())
    for r in e2e:
        assert r["best_epoch"] > r["warmup_epochs"], "selection among the joint epochs only"
        assert 0 <= r["homophily_before"] <= 1 and 0 <= r["homophily_after"] <= 1
        assert r["gain_over_warmup"] == pytest.approx(r["test_acc"] - r["warmup_test_acc"])


def test_chapter08_claims(exp):
    lpcs = exp["config"]["labels_per_class"]
    tau1 = [paired_difference(exp["runs"], "end2end_softmax_tau1", "frozen", l) for l in lpcs]
    assert all(d["beyond_noise"] and d["mean"] < 0 and d["wins"] == 0 for d in tau1), "τ = 1 worse on every seed"
    feat = [paired_difference(exp["runs"], "end2end_features", "frozen", l) for l in lpcs]
    assert all(d["mean"] > 0 for d in feat) and any(d["beyond_noise"] for d in feat), "small consistent gain"
    ctrl = [paired_difference(exp["runs"], "end2end_features_random", "frozen_random", l) for l in lpcs]
    assert all(d["mean"] > 0 for d in ctrl), "the positive control gains over its frozen twin"
    soft = [paired_difference(exp["runs"], "end2end_softmax_taudata", "frozen", l) for l in lpcs]
    assert all(d["mean"] < 0 for d in soft), "the softmax at tau from the data behind frozen on average"
    # the softmax at tau from the data loses against its own warm-up on average (the switch of graphs)
    wg = [r["gain_over_warmup"] for r in exp["runs"] if r["method"] == "end2end_softmax_taudata"]
    assert sum(wg) / len(wg) < 0


def test_longer_joint_is_committed():
    path = RESULTS / "longer_joint" / "experiment.json"
    assert path.is_file()
    lj = json.loads(path.read_text())
    assert lj["config"]["epochs"] - lj["config"]["warmup_epochs"] >= 100
    assert all(r["best_epoch"] > r["warmup_epochs"] for r in lj["runs"] if r.get("warmup_epochs"))
