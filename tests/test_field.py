"""bgcn.experiments.field: the LDS/IDGL digits benchmark, its rows, the choice on validation labels only."""
from __future__ import annotations

import json

import pytest
import torch

import bgcn
from bgcn.experiments import field as F


@pytest.fixture(scope="module")
def digits_data():
    return bgcn.load_dataset("digits")


def _row(name):
    return next(r for r in F.ROWS if r.name == name)


def test_every_row_has_the_same_tuning_budget():
    sizes = {r.name: len(r.grid) for r in F.ROWS}
    assert len(set(sizes.values())) == 1, sizes
    assert F.ROWS[0].name == F.REFERENCE


def test_the_reference_row_is_the_frozen_knn_gcn_on_pixels(digits_data):
    images, labels = digits_data
    run = F.run_row(_row(F.REFERENCE), {"k": 10, "hidden": 16}, 42, images=images, labels=labels, epochs=5)
    assert 0.0 <= run["val_acc"] <= 1.0 and 0.0 <= run["test_acc"] <= 1.0
    # frozen: the graph never changes, and it is the pixels' cosine kNN graph
    assert run["homophily_before"] == run["homophily_after"]
    tr, va, te = bgcn.data.benchmark_split("digits-lds", 42)
    pix = images.reshape(len(images), -1)
    expected = bgcn.graph.edge_homophily(bgcn.knn_indices(pix, 10), labels)
    assert run["homophily_before"] == pytest.approx(expected, abs=1e-12)


def test_graph_baselines_read_only_the_training_labels(digits_data):
    images, labels = digits_data
    pytest.importorskip("graphlearning")
    tr, va, te = bgcn.data.benchmark_split("digits-lds", 42)
    a = F.run_row(_row("laplace"), {"k": 10, "metric": "euclidean"}, 42, images=images, labels=labels)
    # the validation and test labels may be anything: the prediction must not change
    scrambled = labels.clone()
    g = torch.Generator().manual_seed(0)
    scrambled[~tr] = torch.randint(0, 10, (int((~tr).sum()),), generator=g)
    b = F._graph_run(_row("laplace"), {"k": 10, "metric": "euclidean"}, images, scrambled, (tr, va, te), 42, None)
    assert a["test_acc"] > 0.8  # Laplace learning on the pixels is a strong baseline (about 0.97)
    assert b["test_acc"] < 0.3  # scored against scrambled labels: the prediction itself did not use them
    s = F.run_row(_row("label_spreading"), {"k": 10, "alpha": 0.2}, 42, images=images, labels=labels)
    assert s["test_acc"] > 0.8
    p = F.run_row(_row("poisson"), {"k": 10, "metric": "angular"}, 42, images=images, labels=labels)
    assert p["test_acc"] > 0.8


def test_more_labels_a_class_train_on_more_labels(digits_data, tmp_path):
    images, labels = digits_data
    pytest.importorskip("graphlearning")
    # Laplace learning is deterministic: with 20 labels a class it must differ from 5 a class, and the
    # files of a non-published setting carry its name
    a = F.run_row(_row("laplace"), {"k": 10, "metric": "angular"}, 0, images=images, labels=labels)
    b = F.run_row(_row("laplace"), {"k": 10, "metric": "angular"}, 0, images=images, labels=labels,
                  labels_per_class=20)
    assert a["test_acc"] != b["test_acc"]
    F.run_field_experiment(out=tmp_path, rows=["laplace"], quick=True, progress=False, labels_per_class=20)
    data = json.loads((tmp_path / "digits-lds-lpc20.json").read_text())
    assert data["settings"]["labels_per_class"] == 20 and data["command"].endswith("--labels 20 --methods laplace")
    assert F.load_field_results(name="digits-lds-lpc20", path=tmp_path / "digits-lds-lpc20.json")["by_row"]
    with pytest.raises(FileNotFoundError, match="--protocol digits-lds --labels 20"):
        F.load_field_results(tmp_path / "nope" / "digits-lds-lpc20.json")


def test_every_chapter_09_estimator_has_a_row():
    from bgcn.estimators import SELECTION_ESTIMATORS

    fixed = {r.fixed.get("estimator") for r in F.ROWS + F.ESTIMATOR_ROWS}
    assert set(SELECTION_ESTIMATORS) | {"softmax", "masked_softmax", "values"} <= fixed
    names = [r.name for r in F.ROWS + F.ESTIMATOR_ROWS + F.EXTRA_ROWS]
    assert len(names) == len(set(names))
    assert all(len(r.grid) == 4 for r in F.ROWS + F.ESTIMATOR_ROWS + F.EXTRA_ROWS)  # one tuning budget


def test_a_tag_names_the_files_and_never_overwrites_the_table(tmp_path):
    pytest.importorskip("graphlearning")
    F.run_field_experiment(out=tmp_path, rows=["laplace"], quick=True, progress=False, tag="extra")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits-lds-extra.json", "digits-lds-extra.md"]
    data = json.loads((tmp_path / "digits-lds-extra.json").read_text())
    assert data["command"].endswith("--tag extra --methods laplace")
    with pytest.raises(ValueError, match="tag must be lowercase"):
        F.run_field_experiment(out=tmp_path, rows=["laplace"], quick=True, progress=False, tag="../x")
    from bgcn.cli import main
    assert main(["experiment", "--tag", "x", "--quick"]) == 2


def test_the_choice_reads_validation_only():
    row = F.Row("x", "gcn", ({"k": 1}, {"k": 2}))
    ref = F.Row(F.REFERENCE, "gcn", ({"k": 1}, {"k": 2}))
    runs = []
    for seed in (0, 1, 2):
        # setting k=1: better validation, worse test; k=2 the reverse
        runs += [{"row": "x", "seed": seed, "setting": {"k": 1}, "val_acc": 0.9, "test_acc": 0.5 + 0.01 * seed,
                  "homophily_before": 0.5, "homophily_after": 0.6},
                 {"row": "x", "seed": seed, "setting": {"k": 2}, "val_acc": 0.8, "test_acc": 0.9,
                  "homophily_before": 0.5, "homophily_after": 0.6},
                 {"row": F.REFERENCE, "seed": seed, "setting": {"k": 1}, "val_acc": 0.7, "test_acc": 0.4,
                  "homophily_before": 0.5, "homophily_after": 0.5},
                 {"row": F.REFERENCE, "seed": seed, "setting": {"k": 2}, "val_acc": 0.6, "test_acc": 0.99,
                  "homophily_before": 0.5, "homophily_after": 0.5}]
    summary = {s["row"]: s for s in F.summarize(runs, [ref, row], [0, 1, 2])}
    assert summary["x"]["setting"] == {"k": 1} and summary[F.REFERENCE]["setting"] == {"k": 1}
    assert summary["x"]["test_mean"] == pytest.approx(51.0)
    # paired by seed: d_s = (50 + s) - 40
    assert summary["x"]["diff_mean"] == pytest.approx(11.0) and summary["x"]["diff_se"] == pytest.approx(
        (1.0 / 3 ** 0.5))
    assert summary["x"]["beyond_noise"] and summary["x"]["comparisons"] == 1


@pytest.mark.slow
def test_quick_run_writes_and_resumes(tmp_path, digits_data):
    pytest.importorskip("graphlearning")
    res = F.run_field_experiment(out=tmp_path, rows=[F.REFERENCE, "laplace"], quick=True, epochs=4, progress=False)
    data = json.loads((tmp_path / "digits-lds.json").read_text())
    assert {r["row"] for r in data["runs"]} == {F.REFERENCE, "laplace"} and len(data["runs"]) == 4
    assert not (tmp_path / "digits-lds.partial.json").exists()
    assert data["command"].startswith("python -m bgcn experiment --protocol digits-lds")
    assert "--quick" in data["command"]
    assert "| laplace |" in (tmp_path / "digits-lds.md").read_text() and res["summary"]
    back = F.load_field_results(tmp_path / "digits-lds.json")
    assert set(back["by_row"]) == {F.REFERENCE, "laplace"}
    assert len(F.chosen_runs(back)) == 4 and {r["seed"] for r in F.chosen_runs(back)} == set(back["settings"]["seeds"])
    table = F.published_table(back["summary"])
    assert "| kNN-GCN | 91.3 ± 0.5 |" in table and "| laplace |" in table
    with pytest.raises(ValueError, match="rows"):
        F.run_field_experiment(out=tmp_path, rows=["nope"], quick=True)


def test_cli_refuses_settings_the_protocol_fixes(capsys):
    from bgcn.cli import main

    assert main(["experiment", "--protocol", "digits-lds", "--lr-backbone", "0.1", "--quick"]) == 2
    assert "--lr-backbone does not apply to --protocol digits-lds" in capsys.readouterr().err
    assert main(["experiment", "--protocol", "digits-lds", "--methods", "nope", "--quick"]) == 2
    assert main(["experiment", "--protocol", "digits-lds", "--labels", "10", "20", "--quick"]) == 2
    assert "--labels takes one value with --protocol" in capsys.readouterr().err


@pytest.mark.parametrize("name, n_seeds", [("digits-lds", 10), ("digits-stamps", 10), ("digits-lds-lpc10", 5),
                                           ("digits-lds-lpc20", 5), ("fashion-2000", 3),
                                           ("digits-lds-estimators", 5), ("digits-lds-mlp", 10),
                                           ("fashion-2000-imagenet96", 3), ("fashion-70k-imagenet96", 3)])
def test_committed_results_are_reproduced_by_the_summary(name, n_seeds):
    # the committed table is what summarize() makes of the committed runs: the choice on validation,
    # the paired differences and the comparisons count (no number typed by hand)
    path = F.Path(__file__).resolve().parents[1] / "results" / "field" / f"{name}.json"
    assert path.is_file(), f"results/field/{name}.json is missing: see results/README.md for its command"
    res = F.load_field_results(path)
    rows = [F.Row(r["name"], r["kind"], tuple(r["grid"]), r["fixed"]) for r in res["settings"]["rows"]]
    seeds = res["settings"]["seeds"]
    again = json.loads(json.dumps(F.json_safe(F.summarize(res["runs"], rows, seeds))))
    assert again == res["summary"]
    assert len(seeds) == n_seeds and seeds[:5] == list(bgcn.data.FIELD_SEEDS)[:n_seeds]
    protocol = name.partition("-lpc")[0].removesuffix("-estimators").removesuffix("-mlp")
    assert res["command"].startswith(f"python -m bgcn experiment --protocol {protocol}")
    # every row tried its whole grid on every seed: the same budget for all
    for row in rows:
        assert sum(r["row"] == row.name for r in res["runs"]) == len(row.grid) * len(seeds), row.name


def test_verdict_and_columns_read_the_summary():
    line = {"val_acc": 90.0, "test_mean": 90.0, "test_std": 1.0, "n": 3, "homophily_before": 0.9,
            "homophily_after": 0.9, "setting": {}}
    summary = [{**line, "row": F.REFERENCE},
               {**line, "row": "e2e_a", "val_acc": 95.0, "test_mean": 89.0, "diff_mean": -1.0, "diff_se": 0.2,
                "beyond_noise": True, "comparisons": 3},
               {**line, "row": "e2e_b", "val_acc": 91.0, "test_mean": 92.0, "diff_mean": 2.0, "diff_se": 0.5,
                "beyond_noise": True, "comparisons": 3},
               {**line, "row": "laplace", "diff_mean": 0.1, "diff_se": 0.5, "beyond_noise": False, "comparisons": 3}]
    v = F.verdict({"summary": summary})
    # the end-to-end row is chosen on validation (e2e_a), not on test (e2e_b)
    assert v["best"]["row"] == "e2e_a" and v["best_test"]["row"] == "e2e_b"
    assert (v["e2e"], v["ahead"], v["behind"], v["level"]) == (2, 1, 1, 0) and not v["goal_reached"]
    with pytest.raises(ValueError, match="e2e"):
        F.verdict({"summary": summary[:1]})
    res = {"summary": summary, "settings": {"seeds": [1, 2, 3]}}
    table = F.columns_table({5: res, 10: {"summary": summary[:2], "settings": {"seeds": [1, 2, 3, 4, 5]}}})
    assert "| 5 labels a class | 10 labels a class |" in table and "laplace" not in table
    assert "89.0 ± 1.0 (-1.0 ± 0.2*)" in table and "Seeds: 3/5." in table
    vt = F.verdict_table({"toy": res})
    assert "| toy | 3 | 90.0 ± 1.0 | `e2e_a` 89.0 ± 1.0 | -1.00 ± 0.20 * | 3 | 1 / 0 / 1 |" in vt


def test_headline_is_the_verdict_flat_and_gluable():
    line = {"val_acc": 90.0, "test_mean": 90.0, "test_std": 1.0, "n": 3, "homophily_before": 0.9,
            "homophily_after": 0.95, "setting": {}}
    summary = [{**line, "row": F.REFERENCE},
               {**line, "row": "laplace", "test_mean": 93.0, "diff_mean": 3.0, "diff_se": 0.5,
                "beyond_noise": True, "comparisons": 3},
               {**line, "row": "e2e_a", "val_acc": 95.0, "test_mean": 91.0, "diff_mean": 1.0, "diff_se": 0.4,
                "beyond_noise": True, "comparisons": 3},
               {**line, "row": "e2e_b", "val_acc": 91.0, "test_mean": 92.0, "diff_mean": 2.0, "diff_se": 1.5,
                "beyond_noise": False, "comparisons": 3}]
    h = F.headline({"summary": summary})
    assert h["best_name"] == "`e2e_a`" and h["best_diff_mean"] == 1.0 and h["best_z"] == pytest.approx(2.5)
    assert (h["gcn"], h["laplace"], h["laplace_gap"], h["e2e_max"]) == (90.0, 93.0, 3.0, 92.0)
    assert (h["e2e"], h["comparisons"], h["ahead"], h["behind"], h["level"]) == (2, 3, 1, 0, 1)
    assert h["hom_pct"] == pytest.approx(90.0) and h["bonf_z"] == pytest.approx(bgcn.stats.bonferroni_z(3))
    assert all(type(x) in (float, int, str) for x in h.values())
    # the committed table: what chapter 13's pages glue
    h = F.headline(F.load_field_results())
    assert h["best_name"] == "`e2e_blackbox_linear`" and h["ahead"] == 1 and h["best_z"] < h["bonf_z"]


def test_feature_protocol_reads_the_frozen_extractor_and_the_fashion_split(monkeypatch):
    # a feature protocol's inputs are the backbone's features of the split protocol's images, as
    # (N, 1, 1, D) "images", with the split protocol's masks (a small stand-in backbone keeps it fast)
    monkeypatch.setitem(F.FEATURE_PROTOCOLS, "digits-mlp", ("digits-lds", "mlp_digits", None))
    monkeypatch.setattr(F, "PROTOCOLS", F.PROTOCOLS + ("digits-mlp",))
    calls = []
    real_create = F.create_backbone

    def create(name, img_size=None, **kw):
        calls.append((name, img_size))
        return real_create(name, **kw)

    monkeypatch.setattr(F, "create_backbone", create)
    x, y = F.protocol_data("digits-mlp")
    digits = bgcn.load_dataset("digits")
    assert x.shape[:3] == (1797, 1, 1) and torch.equal(y, digits.labels) and calls == [("mlp_digits", None)]
    torch.manual_seed(0)
    want = bgcn.backbone.embed_images(real_create("mlp_digits"), digits.images)
    torch.testing.assert_close(x.reshape(1797, -1), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="protocol"):
        F.protocol_data("nope")


def test_committed_extractor_probe_chose_on_validation():
    from bgcn.experiments import probe as P

    path = F.Path(__file__).resolve().parents[1] / "results" / "field" / "fashion-2000-extractors.json"
    res = json.loads(path.read_text())
    best = max(res["candidates"], key=lambda c: c["val_laplace"])
    assert res["chosen"] == best["input"]
    # the feature protocol runs the extractor at the side the probe chose
    _, _, side = F.FEATURE_PROTOCOLS["fashion-2000-imagenet96"]
    assert res["chosen"] == f"imagenet@{side}px"
    assert {c["input"] for c in res["candidates"]} >= {"pixels", "imagenet@32px", "imagenet@64px"}
    assert P.load_extractor_probe(path) == res
    table = P.probe_table(res)
    assert f"**{res['chosen']}** (chosen)" in table and table.count("(chosen)") == 1


def test_the_estimator_rows_read_as_chapter_13_says():
    # chapter 13 page 1: the row chosen on validation is level with the reference; any row ahead
    # beyond noise was picked out after the fact; none reaches 95 % or Laplace learning
    est = F.load_field_results(name="digits-lds-estimators")
    v = F.verdict(est)
    assert not v["goal_reached"] and v["comparisons"] == 5
    laplace = F.load_field_results()["by_row"]["laplace"]["test_mean"]
    assert all(s["test_mean"] < min(95.0, laplace) for s in est["summary"] if s["row"].startswith("e2e_"))
    assert v["ahead"] >= 1  # the page names the row ahead and its z


def test_the_pixels_are_the_stronger_frozen_graph_on_the_digits():
    # chapter 13 page 1: the frozen GCN on chapter 8's label-free MLP features is behind the pixels
    mlp = F.load_field_results(name="digits-lds-mlp")["by_row"]["gcn_mlp_features"]
    assert mlp["diff_mean"] < 0 and mlp["beyond_noise"]
