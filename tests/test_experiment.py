"""bgcn.experiment.run_measures: the graph measures are taken on the scored model, not on the last one."""
from __future__ import annotations

import copy

import pytest
import torch

from bgcn.backbone import create_backbone
from bgcn.data import label_masks, load_dataset
from bgcn.experiment import format_paths_table, hard_knn, rows_changed, run_measures, summarize
from bgcn.graph import edge_change_fraction, edge_homophily
from bgcn.model import build_model
from bgcn.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
N, C, K = 120, 4, 5


@pytest.fixture(scope="module")
def run():
    ds = load_dataset("synthetic", n=N, num_classes=C, seed=0)
    tr, va, te = label_masks(ds.labels, 5, seed=0)
    torch.manual_seed(0)
    bb = create_backbone("mlp_digits")
    init = copy.deepcopy(bb.state_dict())
    model = build_model(bb, C, k=K, estimator="softmax", tau=0.1, hidden=16, mode="end2end")
    res = train(model, ds.images, ds.labels, tr, va, te, epochs=8, warmup_epochs=3, lr_backbone=3e-2,
                device="cpu", progress=False, param_path_norms=True, analysis_labels=ds.labels)
    return res, init, ds


def test_measures_by_hand(run):
    res, init, ds = run
    m = run_measures(res, 3, init, ds.images, ds.labels, K, "cpu")
    bb0 = create_backbone("mlp_digits")
    bb0.load_state_dict(init)
    g0 = hard_knn(bb0, ds.images, K, "cpu")
    scored = copy.deepcopy(res.model)
    scored.load_state_dict(res.best_state)
    g1 = hard_knn(scored.backbone, ds.images, K, "cpu")
    assert m["homophily_before"] == edge_homophily(g0, ds.labels)
    assert m["homophily_after"] == edge_homophily(g1, ds.labels)
    assert m["edges_changed"] == edge_change_fraction(g0, g1) and m["rows_changed"] == rows_changed(g0, g1)
    assert m["edges_changed"] > 0  # lr 3e-2 moves the backbone
    assert m["warmup_test_acc"] == res.warmup["test_acc"]
    assert m["gain_over_warmup"] == pytest.approx(res.test_acc_at_best_val - res.warmup["test_acc"])
    h = res.history
    share = [g / (n + g) for n, g in zip(h.grad_backbone_node[3:], h.grad_backbone_graph[3:])]
    assert m["grad_graph_share"] == pytest.approx(sum(share) / len(share))
    assert 0 < m["grad_graph_share"] < 1


def test_measures_follow_the_scored_weights(run):
    """Pretend the best epoch was the initial model: nothing changed, whatever the last backbone is."""
    res, init, ds = run
    fake = copy.copy(res)
    state = {k: v.clone() for k, v in res.best_state.items()}
    for k, v in init.items():
        state["backbone." + k] = v.clone()
    fake.best_state = state
    m = run_measures(fake, 3, init, ds.images, ds.labels, K, "cpu")
    assert m["edges_changed"] == 0.0 and m["rows_changed"] == 0.0
    assert m["homophily_after"] == m["homophily_before"]


def test_paths_table_shows_gain_and_homophily(run):
    res, init, ds = run
    m = run_measures(res, 3, init, ds.images, ds.labels, K, "cpu")
    runs = [{"method": "end2end_softmax_taudata", "labels_per_class": 5, "seed": s, "test_acc": 0.9,
             "time_per_epoch": 0.1, **m, "gain_over_warmup": m["gain_over_warmup"] + 0.01 * s} for s in range(3)]
    summ = summarize(runs, ["end2end_softmax_taudata"], [5])
    assert summ[0]["gain_over_warmup_std"] == pytest.approx(0.01)
    table = format_paths_table(summ, ["end2end_softmax_taudata"], 5)
    assert f"{100 * m['homophily_before']:.1f} → {100 * m['homophily_after']:.1f} %" in table
    assert f"{100 * (m['gain_over_warmup'] + 0.01):+.1f} ± 1.0" in table


def test_paired_difference_by_hand():
    from bgcn.experiment import paired_difference

    runs = [{"method": "a", "labels_per_class": 10, "seed": s, "test_acc": v} for s, v in enumerate([0.9, 0.8, 0.7])]
    runs += [{"method": "b", "labels_per_class": 10, "seed": s, "test_acc": v} for s, v in enumerate([0.85, 0.79, 0.71])]
    runs += [{"method": "b", "labels_per_class": 5, "seed": 0, "test_acc": 0.0}]  # another setting: ignored
    d = paired_difference(runs, "a", "b", 10)
    diffs = [0.05, 0.01, -0.01]
    assert d["n"] == 3 and d["wins"] == 2
    assert d["mean"] == pytest.approx(sum(diffs) / 3)
    sd = float(torch.tensor(diffs, dtype=torch.float64).std())
    assert d["std"] == pytest.approx(sd) and d["se"] == pytest.approx(sd / 3 ** 0.5)
    assert d["beyond_noise"] is (abs(d["mean"]) > 2 * d["se"])
    # a consistent gain is beyond noise; rows without shared seeds give n = 0
    runs2 = [{"method": m, "labels_per_class": 10, "seed": s, "test_acc": 0.5 + (0.02 + 0.001 * s) * (m == "a")}
             for m in "ab" for s in range(5)]
    assert paired_difference(runs2, "a", "b", 10)["beyond_noise"]
    assert paired_difference(runs2, "a", "zz", 10)["n"] == 0
