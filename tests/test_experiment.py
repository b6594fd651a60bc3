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


# ---------------------------------------------------------------------------------------------
# reading a committed results file (chapter 08's experiment page shows tables, not plumbing)
def _results(seeds=3):
    """A small results file: frozen and end2end_features (+0.01 ± noise), a random control, a baseline."""
    from bgcn.experiment import FULL

    runs = []
    for lpc in (5, 10):
        for s in range(seeds):
            base = 0.80 + 0.01 * s + 0.02 * (lpc == 10)
            for name, acc, extra in (
                    ("knn_pixels", base - 0.05, {}),
                    ("frozen_random", base - 0.03, {}),
                    ("frozen", base, {}),
                    ("end2end_features", base + 0.01 + 0.001 * s,
                     {"warmup_epochs": 2, "gain_over_warmup": 0.002 * s, "grad_graph_share": None,
                      "homophily_before": 0.90, "homophily_after": 0.91}),
                    ("end2end_features_random", base - 0.04 - 0.001 * s,
                     {"warmup_epochs": 2, "gain_over_warmup": -0.01, "grad_graph_share": 0.2,
                      "homophily_before": 0.80, "homophily_after": 0.85})):
                runs.append({"method": name, "labels_per_class": lpc, "seed": s, "test_acc": acc,
                             "time_per_epoch": None, **extra})
    cfg = {**FULL, "labels_per_class": [5, 10], "seeds": seeds, "threads": 1, "k": 10,
           "methods": ["knn_pixels", "frozen_random", "frozen", "end2end_features", "end2end_features_random"]}
    return {"config": cfg, "runs": runs, "summary": [], "wall_time_s": 1.0, "tau_data": 0.03}


def test_experiment_command_parses_back_to_the_settings():
    from bgcn.cli._parser import build_parser
    from bgcn.experiment import FULL, ROWS, experiment_command

    full = {**FULL, "methods": list(ROWS), "threads": 1}
    assert experiment_command(full) == "python -m bgcn experiment --out results --threads 1"
    cfg = {**full, "seeds": 3, "epochs": 140, "lr_backbone": 1e-3, "labels_per_class": [10],
           "methods": ["frozen", "end2end_values"]}
    cmd = experiment_command(cfg, "results/longer_joint")
    args = build_parser().parse_args(cmd.split()[3:])
    assert (args.out, args.seeds, args.epochs, args.lr_backbone, args.labels, args.methods, args.threads) == (
        "results/longer_joint", 3, 140, 1e-3, [10], ["frozen", "end2end_values"], 1)
    assert args.warmup_epochs is None and args.pretrain_epochs is None  # defaults left out


def test_load_experiment_recomputes_the_summary_and_names_the_command(tmp_path, monkeypatch):
    import json

    from bgcn.experiments.digits import load_experiment

    res = _results()
    (tmp_path / "longer_joint").mkdir()
    (tmp_path / "longer_joint" / "experiment.json").write_text(json.dumps(res))
    monkeypatch.setenv("BGCN_RESULTS", str(tmp_path))
    got = load_experiment(run="longer_joint")
    assert got["summary"] == summarize(res["runs"], res["config"]["methods"], [5, 10])
    assert got["command"].startswith("python -m bgcn experiment --out results/longer_joint --seeds 3")
    with pytest.raises(FileNotFoundError, match="python -m bgcn experiment --out results"):
        load_experiment()  # tmp_path has no experiment.json


def test_paired_table_and_findings_by_hand():
    from bgcn.experiment import summarize
    from bgcn.experiments.digits import experiment_findings, paired_table

    res = _results()
    res["summary"] = summarize(res["runs"], res["config"]["methods"], [5, 10])
    tab = paired_table(res)
    assert tab["comparisons"] == 4  # two end-to-end rows x two label settings
    d = tab["cells"][("end2end_features", 10)]
    assert d["n"] == 3 and d["wins"] == 3 and d["comparisons"] == 4
    assert d["mean"] == pytest.approx(0.011) and d["beyond_noise"]
    c = tab["cells"][("end2end_features_random", 5)]  # the control: against frozen_random
    assert c["mean"] == pytest.approx(-0.011)
    assert "| end2end_features − frozen | +1.1* ± 0.1 (3/3) |" in tab["markdown"]
    assert "end2end_features_random − frozen_random" in tab["markdown"]

    f = experiment_findings(res)
    assert f["comparisons"] == 4 and f["chance"] == pytest.approx(0.2)
    assert f["best"]["row"] == "end2end_features" and f["best"]["mean"] == pytest.approx(1.1)
    assert ("end2end_features_random", 5) in f["behind"] and ("end2end_features", 5) in f["ahead"]
    row = f["by_row"]["end2end_features"]
    assert row["diff_min"] == pytest.approx(1.1) and row["diff_max"] == pytest.approx(1.1)
    assert row["gain_over_warmup"] == pytest.approx(0.2) and row["graph_share"] is None
    assert row["homophily_change"] == pytest.approx(1.0)
    assert f["by_row"]["end2end_features_random"]["graph_share"] == pytest.approx(0.2)
    assert f["warmup"]["runs"] == 12 and f["warmup"]["min"] == pytest.approx(-1.0)
    assert f["test"]["knn_pixels"][10] == pytest.approx(100 * (0.82 + 0.01 - 0.05))


def test_findings_of_the_committed_results_match_the_json():
    """The committed file's summary is what its runs give (the chapter recomputes it)."""
    import json

    from bgcn.experiments.digits import experiment_findings, load_experiment
    from bgcn.experiments.common import results_root

    path = results_root() / "experiment.json"
    assert path.is_file(), "results/experiment.json is committed; python -m bgcn experiment writes it"
    res = load_experiment()
    assert res["summary"] == json.loads(path.read_text())["summary"]
    f = experiment_findings(res)
    assert f["comparisons"] == 7 * len(res["config"]["labels_per_class"])
    assert all(t[0] in f["by_row"] for t in f["ahead"] + f["behind"])
