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
