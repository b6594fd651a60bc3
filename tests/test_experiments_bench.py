"""bgcn.experiments.bench (the committed benchmark files read back, the numbers chapter 11 quotes),
bgcn.bank.bank_staleness, and chapter 11's figures: each number recomputed by hand from the JSON."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bgcn.bank import FeatureBank, bank_staleness
from bgcn.data import load_dataset
from bgcn.experiments import bench
from bgcn.experiments.common import benchmarks_root

pytestmark = pytest.mark.usefixtures("one_thread")


def test_load_benchmark_names_the_command_and_the_missing_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("BGCN_BENCHMARKS", str(tmp_path))
    assert benchmarks_root() == tmp_path
    with pytest.raises(FileNotFoundError, match="bench_staleness.py"):
        bench.load_benchmark("staleness.json")
    (tmp_path / "overhead.json").write_text(json.dumps({"results": []}))
    assert bench.load_benchmark("overhead.json", ("results",)) == {"results": []}
    with pytest.raises(KeyError, match="re-run `python benchmarks/bench_overhead.py`"):
        bench.load_benchmark("overhead.json", ("results", "summary"))


def test_staleness_findings_by_hand():
    st = bench.load_benchmark("staleness.json")
    f = bench.staleness_findings(st)
    joint = [(r["batch_size"], c["recall"]) for r in st["staleness"] for c in r["curve"]
             if c["epoch"] > r["warmup_epochs"]]
    assert f["recall_min"] == min(x for _, x in joint)
    for b, mean in f["recall_joint"].items():
        assert mean == pytest.approx(np.mean([x for bb, x in joint if bb == b]), rel=1e-12)
    pairs = st["accuracy"]["pairs"]
    d = [p["minibatch"]["test_acc_at_best_val"] - p["full"]["test_acc_at_best_val"] for p in pairs]
    assert f["seeds"] == len(pairs)
    assert f["diff"] == pytest.approx(100 * np.mean(d), rel=1e-9)
    assert f["se"] == pytest.approx(100 * np.std(d, ddof=1) / math.sqrt(len(d)), rel=1e-9)
    assert f["wins"] == sum(x > 0 for x in d)
    assert f["ahead"] == (f["diff"] > 2 * f["se"])
    assert f["acc_mini"] == pytest.approx(100 * np.mean([p["minibatch"]["test_acc_at_best_val"] for p in pairs]))
    # a made-up file where mini-batch is behind: never "ahead", whatever the noise
    fake = json.loads(json.dumps(st))
    s = fake["accuracy"]["summary"]["test_acc_at_best_val"]["paired_difference"]
    s["mean"] = -abs(s["mean"])
    assert bench.staleness_findings(fake)["ahead"] is False


def test_minibatch_costs_by_hand():
    rows = bench.load_minibatch_costs()
    ns = [r["n"] for r in rows]
    assert ns == sorted(ns) and len(ns) == len(set(ns))
    f = bench.minibatch_cost_findings(rows)
    peaks = [r["minibatch"]["peak_bytes"] / 1e6 for r in rows]
    assert (f["peak_mb_lo"], f["peak_mb_hi"]) == (min(peaks), max(peaks))
    assert f["n_hi"] == max(ns) and f["bank_mb_hi"] == rows[-1]["minibatch"]["bank_bytes"] / 1e6
    full = [r for r in rows if "full" in r]
    assert f["full_n"] == full[-1]["n"] and f["full_peak_gb"] == full[-1]["full"]["peak_bytes"] / 1e9
    table = bench.minibatch_cost_table(rows)
    assert table.count("\n") == len(rows) + 2 and "–" in table  # no full batch at the large N
    with pytest.raises(ValueError, match="no benchmark rows"):
        bench.minibatch_cost_findings([])


def test_overhead_and_distributed_findings_by_hand():
    ov = bench.load_benchmark("overhead.json")
    f = bench.overhead_findings(ov)
    for r in ov["results"]:
        g = f[r["setting"]]
        assert g["ratio"] == r["e2e_s"] / r["supervised_s"] or g["ratio"] == pytest.approx(r["ratio"])
        assert g["search_pct"] == pytest.approx(100 * r["e2e_share"]["search"])
    assert f["resnet18"]["backbone_pct"] > 50 > f["digits"]["backbone_pct"]
    d = bench.load_benchmark("distributed.json")
    g = bench.distributed_findings(d)
    assert g["speedup"] == pytest.approx(d["step_s_one"] / d["step_s_world"], rel=1e-9)
    assert g["comm_pct"] == pytest.approx(100 * d["comm_s_total"] / d["wall_s_world"], rel=1e-6)
    assert 0 <= g["loss_rel"] < 1e-4


def test_bank_staleness_is_exact_for_a_fresh_bank_and_drops_when_rows_move(tiny_model):
    images = load_dataset("synthetic", n=90, num_classes=4, seed=2).images.double()
    m = tiny_model(double=True)
    bank = FeatureBank.from_backbone(m, images)
    s = bank_staleness(m, bank, images, 5)
    assert s["recall"] == s["recall_min_row"] == s["rows_exact"] == 1.0 and s["drift_max"] == 0.0
    # move half of the rows: recall by hand, drift of the moved rows
    g = torch.Generator().manual_seed(0)
    moved = torch.arange(0, 90, 2)
    bank.features[moved] += 0.5 * torch.randn(len(moved), bank.features.shape[1], generator=g,
                                              dtype=bank.features.dtype)
    s = bank_staleness(m, bank, images, 5)
    fresh = FeatureBank.from_backbone(m, images)
    ids = torch.arange(90)
    a, b = bank.search(bank.features, 5, exclude=ids), fresh.search(fresh.features, 5, exclude=ids)
    per_row = torch.tensor([len(set(x.tolist()) & set(y.tolist())) / 5 for x, y in zip(a, b)],
                           dtype=torch.float64)
    assert s["recall"] == pytest.approx(float(per_row.mean()), abs=1e-12) and s["recall"] < 1.0
    assert s["recall_min_row"] == pytest.approx(float(per_row.min()), abs=1e-12)
    assert s["drift_median"] == 0.0 < s["drift_mean"] < s["drift_max"]  # half the rows unmoved
    with pytest.raises(ValueError, match="images the bank was filled from"):
        bank_staleness(m, bank, images[:50], 5)


def test_chapter_11_figures():
    pytest.importorskip("plotly")
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from bgcn.viz import minibatch_cost_figure, plot_gather_gradient, staleness_figure

    st = bench.load_benchmark("staleness.json")
    fig = staleness_figure(st)
    assert len(fig.data) == len(st["staleness"]) and fig.data[0].name.startswith("|Q| = ")
    rows = bench.load_minibatch_costs()
    fig = minibatch_cost_figure(rows)
    names = {t.name for t in fig.data}
    assert {"mini-batch", "full batch", "the bank, N·D floats"} <= names
    f = plot_gather_gradient([[0.3, 0.05], [0.08, 0.25]])
    texts = [t.get_text() for ax in f.axes for t in ax.texts]
    assert sum("dropped" in t for t in texts) == 2  # the two crossing terms, right panel only
    plt.close(f)
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        plot_gather_gradient([[1.0, 2.0, 3.0]])


def _scale_run(n, kind, threads, epoch_s, peak_gib=1.0, built=None, after=None):
    return {"n": n, "kind": kind, "threads": threads, "epoch_s": epoch_s, "wall_s": epoch_s + 5,
            "peak_rss_bytes": peak_gib * 2**30, "recall_built": built, "recall_after": after}


def test_scale_findings_by_hand():
    runs = [_scale_run(100_000, "exact", 1, 200.0), _scale_run(100_000, "auto", 1, 20.0, 1.2, 0.9, 0.5),
            _scale_run(1_000_000, "auto", 1, 300.0, 3.5, 0.8, 0.1), _scale_run(100_000, "auto", 2, 12.0),
            _scale_run(1_000_000, "auto", 2, 150.0, 3.6, 0.8, 0.2)]
    f = bench.scale_findings({"runs": runs})
    assert f["n_big"] == 1_000_000 and f["epoch_s_1t"] == 300.0 and f["wall_s_2t"] == 155.0
    assert f["linearity_1t"] == pytest.approx(1.5) and f["linearity_2t"] == pytest.approx(150 / 120)
    assert f["peak_gib_2t"] == pytest.approx(3.6) and f["recall_after_1t"] == 0.1
    assert f["exact_100k_s"] == 200.0 and f["index_100k_s"] == 20.0
    with pytest.raises(ValueError, match="no run with the index"):
        bench.scale_findings({"runs": runs[:1]})


def test_bench_scale_measures_one_command_line_run(tmp_path):
    """One point of benchmarks/bench_scale.py: a real `python -m bgcn train` process, its peak RSS
    and its own timings read back."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_scale

    r = bench_scale.measure(1500, "auto", 1, bench_scale.DEFAULT)
    assert r["index"] == "exact" and r["recall_built"] is None  # auto is the torch search below 20 000
    assert 0 < r["epoch_s"] <= r["run_total_s"] < r["wall_s"]
    assert 2**20 < r["peak_rss_bytes"] < 2**34 and r["minor_faults"] > 0
    assert "--synthetic-n 1500" in r["command"] and "--index auto" in r["command"]
    bench_scale.plot({"config": {**bench_scale.DEFAULT, "kinds": ["auto"]}, "runs": [r]}, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_index_accuracy_findings_by_hand():
    def summ(diff, se):
        return {"exact": {"mean": 0.9, "recall_after": 1.0},
                "ivf": {"recall_after": 0.99, "vs_exact": {"mean": diff, "se": se}},
                "hnsw": {"recall_after": 0.98, "vs_exact": {"mean": -diff, "se": 2 * se}}}

    ia = {"digits": {"config": {"seeds": list(range(10))}, "n": 1797, "summary": summ(-0.004, 0.001)},
          "fashion": {"config": {"seeds": [0, 1]}, "n": 5000, "summary": summ(0.003, 0.002)}}
    f = bench.index_accuracy_findings(ia)
    assert f["comparisons"] == 4 and f["digits_seeds"] == 10 and f["fashion_n"] == 5000
    assert f["digits_ivf_diff"] == pytest.approx(-0.4) and f["digits_ivf_beyond"]
    assert not f["digits_hnsw_beyond"] and not f["fashion_ivf_beyond"]  # 0.4 = 2 se exactly: not beyond
    assert f["fashion_hnsw_recall"] == 0.98 and f["digits_exact"] == pytest.approx(90.0)
