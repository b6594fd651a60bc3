"""Chapter 11 benchmarks: the committed staleness/accuracy/overhead JSONs say what their numbers say,
and the scripts' core functions measure real properties on tiny problems.

No timing is compared with a threshold here (speed lives in benchmarks/): the JSON checks are
structure and internal consistency (recall in [0, 1], exact recall in the warm-up, verdicts that
follow from the recorded differences, ratios that are the recorded times' quotient).
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RES = BENCH / "results"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _json(name: str) -> dict:
    p = RES / name
    if not p.is_file():
        pytest.skip(f"{p} not committed")
    return json.loads(p.read_text())


STALENESS = [n for n in ("staleness.json", "staleness_full.json") if (RES / n).is_file()] or ["staleness.json"]
OVERHEAD = [n for n in ("overhead.json", "overhead_full.json") if (RES / n).is_file()] or ["overhead.json"]
META_KEYS = {"date", "command", "machine", "torch", "torch_threads", "loadavg", "cpu_count", "device"}


# ------------------------------------------------------------------------------- committed JSONs
@pytest.mark.parametrize("name", STALENESS)
def test_staleness_json_consistent(name):
    d = _json(name)
    assert META_KEYS <= set(d["meta"]), META_KEYS - set(d["meta"])
    assert d["meta"]["command"].startswith("python benchmarks/bench_staleness.py")
    assert (RES / name).with_suffix(".png").is_file()
    cfg = d["config"]
    seen = {(r["lr_backbone"], r["batch_size"], r["bank_refresh"], r["seed"]) for r in d["staleness"]}
    assert {(b, r) for _, b, r, _ in seen} == {(b, r) for b in cfg["batch_sizes"] for r in cfg["refresh"]}
    for r in d["staleness"]:
        curve = r["curve"]
        assert [c["epoch"] for c in curve] == list(range(1, r["epochs"] + 1))
        for c in curve:
            assert 0.0 <= c["recall_min_row"] <= c["recall"] <= 1.0
            assert 0.0 <= c["rows_exact"] <= 1.0
            assert 0.0 <= c["drift_median"] <= c["drift_max"] and c["drift_mean"] <= c["drift_max"] + 1e-12
            refreshed = r["bank_refresh"] > 0 and c["epoch"] % r["bank_refresh"] == 0
            assert c["refreshed_after"] == refreshed
            assert c["recall_next_start"] == (1.0 if refreshed else c["recall"])
            if c["epoch"] <= r["warmup_epochs"]:  # backbone frozen, bank not written: exact
                assert c["recall"] == 1.0 and c["drift_max"] == 0.0, (r["batch_size"], r["bank_refresh"], c)
        joint = [c for c in curve if c["epoch"] > r["warmup_epochs"]]
        assert r["final_recall"] == curve[-1]["recall"]
        assert math.isclose(r["mean_recall_joint"], np.mean([c["recall"] for c in joint]), rel_tol=1e-12)
        assert math.isclose(r["mean_recall_next_start_joint"], np.mean([c["recall_next_start"] for c in joint]),
                            rel_tol=1e-12)
        assert r["steps_per_epoch"] == math.ceil(d["setup"]["num_images"] / r["batch_size"])
    # refreshing every epoch: every epoch after the first starts from the fresh graph (recall 1),
    # never worse than a bank that is never refreshed, at the last epoch and on average
    for lr, b, _, s in seen:
        never = next(x for x in d["staleness"] if (x["lr_backbone"], x["batch_size"], x["bank_refresh"], x["seed"])
                     == (lr, b, 0, s))
        each = next(x for x in d["staleness"] if (x["lr_backbone"], x["batch_size"], x["bank_refresh"], x["seed"])
                    == (lr, b, 1, s))
        assert each["curve"][-1]["recall_next_start"] >= never["curve"][-1]["recall_next_start"]
        assert each["mean_recall_next_start_joint"] >= never["mean_recall_next_start_joint"]


@pytest.mark.parametrize("name", STALENESS)
def test_accuracy_claims_follow_from_the_pairs(name):
    acc = _json(name)["accuracy"]
    pairs = acc["pairs"]
    assert [p["seed"] for p in pairs] == acc["seeds"] and len(pairs) >= 3
    for key, s in acc["summary"].items():
        for eng in ("minibatch", "full"):
            v = [p[eng][key] for p in pairs]
            assert all(0.0 <= x <= 1.0 for x in v)
            assert math.isclose(s[eng]["mean"], np.mean(v), rel_tol=1e-12)
            assert math.isclose(s[eng]["std"], np.std(v, ddof=1), rel_tol=1e-9, abs_tol=1e-15)
        diffs = [p["minibatch"][key] - p["full"][key] for p in pairs]
        pd = s["paired_difference"]
        np.testing.assert_allclose(pd["diffs"], diffs, rtol=0, atol=1e-15)
        assert math.isclose(pd["mean"], np.mean(diffs), rel_tol=1e-9, abs_tol=1e-15)
        se = np.std(diffs, ddof=1) / math.sqrt(len(diffs))
        assert math.isclose(pd["se"], se, rel_tol=1e-9, abs_tol=1e-15)
        assert s["verdict"] == ("within noise" if abs(pd["mean"]) <= 2 * pd["se"] else "beyond noise")
    for p in pairs:
        for eng in ("minibatch", "full"):
            assert len(p[eng]["loss"]) == acc["epochs"]
            assert 1 + acc["warmup_epochs"] <= p[eng]["best_epoch"] <= acc["epochs"]  # among the joint epochs
        assert math.isclose(p["max_abs_loss_diff"],
                            max(abs(a - b) for a, b in zip(p["minibatch"]["loss"], p["full"]["loss"])), rel_tol=1e-12)
    one = acc["one_batch_equals_full"]
    assert one["batch_size"] >= _json(name)["setup"]["num_images"]
    # one batch of every node is the full-batch step: float64 to rounding, float32 to its epsilon
    assert one["float64"]["max_abs_loss_diff"] <= 1e-10
    assert one["float32"]["max_abs_loss_diff"] <= 1e-4
    assert one["float64"]["test_acc_at_best_val"][0] == one["float64"]["test_acc_at_best_val"][1]


@pytest.mark.parametrize("name", OVERHEAD)
def test_overhead_json_consistent(name):
    d = _json(name)
    assert META_KEYS <= set(d["meta"])
    assert d["meta"]["command"].startswith("python benchmarks/bench_overhead.py")
    assert (RES / name).with_suffix(".png").is_file()
    mod = _load("bench_overhead")
    settings = {r["setting"] for r in d["results"]}
    assert {"resnet18", "digits"} <= settings
    for r in d["results"]:
        assert r["ratio"] == pytest.approx(r["e2e_s"] / r["supervised_s"], rel=1e-12)
        assert r["ratio_with_fill"] == pytest.approx((r["e2e_s"] + r["bank_fill_s"]) / r["supervised_s"], rel=1e-12)
        assert r["e2e_s"] == pytest.approx(float(np.median(r["e2e_repeats_s"])), rel=1e-12)
        assert r["supervised_s"] == pytest.approx(float(np.median(r["supervised_repeats_s"])), rel=1e-12)
        assert len(r["e2e_repeats_s"]) == len(r["supervised_repeats_s"]) == r["repeats"]
        if "ratio_repeats" in r:
            np.testing.assert_allclose(r["ratio_repeats"], np.divide(r["e2e_repeats_s"], r["supervised_repeats_s"]),
                                       rtol=1e-12)
        assert r["steps"] == math.ceil(r["n"] / r["batch_size"])
        for kind, parts in (("e2e", mod.PARTS_E2E), ("supervised", mod.PARTS_SUP)):
            bd = r[f"{kind}_breakdown"]
            assert sum(bd[p] for p in (*parts, "other")) == pytest.approx(bd["total"], rel=1e-9)
            assert all(bd[p] >= 0 for p in parts)
            # the same backbone passes: one call per batch, every image once
            assert bd["backbone_calls"] == r["steps"] and bd["backbone_images"] == r["n"]
        assert r["e2e_breakdown"]["total"] == r["e2e_s"]  # the breakdown is of the median repeat
        assert sum(r["e2e_share"].values()) == pytest.approx(1.0, rel=1e-9)
    real = [r for r in d["results"] if r["setting"] == "resnet18"]
    assert all(r["backbone"] == "resnet18" and r["image_shape"] == [3, 32, 32] and r["num_features"] == 512
               for r in real)


# ------------------------------------------------------------------------------- smoke runs
def _tiny(n=120):
    import bgcn

    ds = bgcn.load_dataset("synthetic", n=n, num_classes=10, image_size=8, channels=1, seed=3)
    return ds.images, ds.labels


def test_knn_recall_counts_shared_neighbours():
    st = _load("bench_staleness")
    a = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert st.knn_recall(a, a.flip(1)).tolist() == [1.0, 1.0]
    assert st.knn_recall(a, torch.tensor([[1, 7, 8], [9, 10, 11]])).tolist() == [1 / 3, 0.0]
    with pytest.raises(ValueError, match="idx_a"):
        st.knn_recall(a, a[:, :2])


@pytest.mark.filterwarnings("ignore:the validation set has only")
def test_staleness_is_exactly_zero_when_the_backbone_cannot_move():
    """lr_backbone = 0 (AdamW's decoupled decay is lr·wd = 0 too): every bank row equals the fresh
    feature, so recall@k is 1 at every epoch; with a large lr the probe sees the bank go stale."""
    torch.set_num_threads(1)
    st = _load("bench_staleness")
    images, labels = _tiny()
    masks = st.label_masks(labels, 3, seed=0)
    kw = dict(tau=0.1, batch_size=32, bank_refresh=0, epochs=3, warmup=1, seed=0)
    still = st.staleness_run(images, labels, masks, lr_backbone=0.0, **kw)
    assert [c["recall"] for c in still["curve"]] == [1.0, 1.0, 1.0]
    assert max(c["drift_max"] for c in still["curve"]) <= 1e-5  # batch vs chunked pass, float32
    moving = st.staleness_run(images, labels, masks, lr_backbone=3e-2, **kw)
    assert moving["curve"][0]["recall"] == 1.0  # warm-up: frozen
    assert moving["curve"][-1]["recall"] < 1.0 and moving["curve"][-1]["drift_mean"] > 1e-3


@pytest.mark.filterwarnings("ignore:the validation set has only")
def test_one_batch_is_the_full_batch_in_float64():
    st = _load("bench_staleness")
    images, labels = _tiny(100)
    masks = st.label_masks(labels, 3, seed=1)
    p = st.accuracy_pair(images, labels, masks, tau=0.1, seed=1, batch_size=100, epochs=3, warmup=1,
                         dtype=torch.float64)
    assert p["max_abs_loss_diff"] <= 1e-10
    assert p["minibatch"]["final_test_acc"] == p["full"]["final_test_acc"]
    q = st.accuracy_pair(images, labels, masks, tau=0.1, seed=1, batch_size=25, epochs=3, warmup=1,
                         dtype=torch.float64)
    assert q["max_abs_loss_diff"] > 1e-6  # four batches a step are not the full batch: the check can fail


def test_overhead_smoke_same_backbone_passes():
    torch.set_num_threads(1)
    ov = _load("bench_overhead")
    images, labels = _tiny(150)
    r = ov.measure("tiny", 150, 64, repeats=1, images=images, labels=labels, backbone_name="mlp_digits",
                   verbose=False)
    assert r["steps"] == 3
    for kind in ("e2e", "supervised"):
        bd = r[f"{kind}_breakdown"]
        assert bd["backbone_calls"] == 3 and bd["backbone_images"] == 150
    assert r["e2e_breakdown"]["search"] > 0 and r["bank_fill_s"] > 0
    assert r["ratio"] == r["e2e_s"] / r["supervised_s"]
