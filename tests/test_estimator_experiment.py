"""bgcn.estimator_experiment (chapter 09): an interrupted run resumes from its partial file with the
numbers of an uninterrupted one (the shared bgcn.experiments.common.Partial)."""
from __future__ import annotations

import pytest

import bgcn.estimator_experiment as ee

pytestmark = pytest.mark.usefixtures("one_thread")


def test_estimator_experiment_resumes_with_the_same_numbers(tmp_path, monkeypatch):
    kw = dict(quick=True, rows=["frozen", "softmax_taudata"], seeds=1, epochs=3, verbose=False)
    full = ee.run_estimator_experiment(out=tmp_path / "full", **kw)
    real, calls = ee._row_run, []

    def boom(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ee, "_row_run", boom)
    with pytest.raises(KeyboardInterrupt):
        ee.run_estimator_experiment(out=tmp_path / "part", **kw)
    assert (tmp_path / "part" / "estimators.partial.json").is_file()
    monkeypatch.setattr(ee, "_row_run", real)
    with pytest.raises(ValueError, match=r"settings differ \(epochs\)"):
        ee.run_estimator_experiment(out=tmp_path / "part", resume=True, **{**kw, "epochs": 4})
    res = ee.run_estimator_experiment(out=tmp_path / "part", resume=True, **kw)
    assert not (tmp_path / "part" / "estimators.partial.json").exists()
    key = ("row", "seed", "test_acc", "final_test_acc", "rows_changed", "homophily_after")
    assert [tuple(r.get(k) for k in key) for r in res["runs"]] == [tuple(r.get(k) for k in key) for r in full["runs"]]
    assert res["pretrain"]["file"] == full["pretrain"]["file"]


def test_load_estimator_results_and_findings_match_the_committed_table():
    """The digits page's reading: estimator_findings on results/estimators.json agrees with the
    seed-paired differences it is built from, and its counts partition the rows."""
    from bgcn.viz_estimators import classify_differences, paired_differences

    res = ee.load_estimator_results()
    assert res["command"] == "python -m bgcn estimators --out results"
    assert res["tables_md"].count("\n|---") == 2                     # the accuracy and the gradient table
    f = ee.estimator_findings(res)
    rows = list(dict.fromkeys(r["row"] for r in res["runs"]))
    assert f["comparisons"] == ee.n_comparisons(res["runs"], list(ee.REFERENCES))
    # each reference against the other rows, a pair read twice counted once: 3 * 9 - 3
    assert f["comparisons"] == 3 * (len(rows) - 1) - 3
    assert f["n_test"] == res["config"]["num_images"] - 200 and f["seeds"] == res["config"]["seeds"]
    sm = paired_differences(res["runs"], "softmax_taudata")
    assert f["lead_max"] == max(sm[r]["mean"] for r in f["selection"])
    assert f["best"]["images"] == pytest.approx(f["best"]["mean"] * f["n_test"] / 100)
    cls = classify_differences(sm, exclude=["softmax_taudata"])
    assert f["vs_softmax"]["ahead"] == [r for r in cls["ahead"] if r in f["selection"]]
    assert sorted(sum((f["vs_softmax"][k] for k in ("ahead", "within", "behind")), [])) == sorted(f["selection"])
    for r, g in f["gain"].items():
        per = [100 * x["gain_over_warmup"] for x in res["runs"] if x["row"] == r]
        assert g["mean"] == pytest.approx(sum(per) / len(per)) and g["n"] == len(per)


def test_digits_page_prose_holds_on_the_committed_table():
    """chapters/09_estimators_4_digits.md glues the numbers but words a few claims around them;
    each of those claims is checked here against results/estimators.json."""
    f = ee.estimator_findings(ee.load_estimator_results())
    # "the softmax row is itself ... from end2end_features ... and behind it by the rule"
    assert "softmax_taudata" in f["vs_features"]["behind"]
    # "against the frozen extractor, ... end-to-end rows, end2end_features among them"
    assert "end2end_features" in f["vs_frozen_ahead"]
    # "Some estimators, ..., are ahead of the softmax yet level with both"
    assert f["level_with_both"]
    # "more than two standard errors above zero for 0 of the 9: no estimator shows a learnt selection"
    assert not [r for r in f["gain_counts"] if r in f["selection"]]
    # "a fraction of a point, for every row"
    assert all(abs(v) < 1.0 for v in f["homophily_change"].values())
    # the row with the largest graph share gains no more over its warm-up than end2end_features
    top = max((r for r in f["graph_share"] if r in f["selection"]), key=f["graph_share"].get)
    assert f["gain"][top]["mean"] <= f["gain"]["end2end_features"]["mean"]
    # I-MLE's step is the dearest, several times the straight-through's
    assert max(f["step_s"], key=f["step_s"].get) == "imle" and f["step_s"]["imle"] > 5 * f["step_s"]["ste"]


def test_estimator_findings_on_a_small_live_run(tmp_path):
    """The live run's dict (run_estimator_experiment) reads the same way as the committed file."""
    res = ee.run_estimator_experiment(out=tmp_path, quick=True, seeds=2, epochs=3, verbose=False,
                                      rows=["frozen", "end2end_features", "softmax_taudata", "ste"])
    f = ee.estimator_findings(res)
    assert f["selection"] == ["ste"] and f["n_test"] == 100 and f["image_points"] == 1.0
    assert f["comparisons"] == 6 and f["seeds"] == 2
    assert set(f["gain"]) == {"end2end_features", "softmax_taudata", "ste"}


def test_load_estimator_results_says_how_to_make_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m bgcn estimators"):
        ee.load_estimator_results(tmp_path / "estimators.json")


def test_compact_table_is_the_summary_in_fewer_columns():
    res = ee.load_estimator_results()
    md = ee.compact_table(res["summary"])
    lines = md.strip().split("\n")
    assert len(lines) == 2 + len(res["summary"])
    assert all(line.count("|") == 8 for line in lines)                # 7 columns
    by_row = {line.split("|")[1].strip(): line for line in lines[2:]}
    for s in res["summary"]:
        cells = [c.strip() for c in by_row[s["row"]].split("|")[1:-1]]
        assert cells[1] == f"{100 * s['test_acc']:.1f}\u00a0±\u00a0{100 * s['test_acc_std']:.1f}"
        assert cells[5] == f"{100 * s['rows_changed']:.0f}"
        assert cells[6].split("\u00a0→\u00a0") == [f"{100 * s['homophily_before']:.2f}",
                                                   f"{100 * s['homophily_after']:.2f}"]
    assert " ± " not in md                                             # no line break inside a value
