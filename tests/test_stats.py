"""bgcn.stats: mean ± std and seed-paired differences, checked by hand in float64 (NumPy, SciPy)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bgcn import stats
from bgcn.experiment import paired_difference as experiment_paired_difference


def test_mean_std_by_hand():
    x = [0.81, 0.79, None, float("nan"), 0.86, float("inf"), 0.8]
    m, s, n = stats.mean_std(x)
    v = np.array([0.81, 0.79, 0.86, 0.8], dtype=np.float64)
    assert n == 4
    assert m == v.sum() / 4
    assert s == math.sqrt(((v - v.mean()) ** 2).sum() / 3)
    assert stats.mean_std([0.5]) == (0.5, 0.0, 1)
    m, s, n = stats.mean_std([None, float("nan")])
    assert n == 0 and math.isnan(m) and math.isnan(s)
    assert stats.mean_std(np.float32([1, 3])) == (2.0, math.sqrt(2), 2)


def test_paired_difference_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.normal(0.8, 0.05, 7)
    b = a - rng.normal(0.01, 0.02, 7)
    d = stats.paired_difference(list(a), list(b), comparisons=3)
    diff = a - b
    assert d["n"] == 7 and d.n == 7 and d["comparisons"] == 3 and d["seeds"] == list(range(7))
    assert d["mean"] == pytest.approx(diff.mean(), rel=1e-15, abs=1e-17)
    assert d["std"] == pytest.approx(np.std(diff, ddof=1), rel=1e-13)
    assert d["se"] == pytest.approx(scipy_stats.sem(diff), rel=1e-13)
    # |mean| / se is the paired t statistic
    t = scipy_stats.ttest_rel(a, b).statistic
    assert d["mean"] / d["se"] == pytest.approx(t, rel=1e-12)
    assert d["beyond_noise"] is bool(abs(t) > 2)
    assert d["wins"] == int((diff > 0).sum())
    np.testing.assert_array_equal(d["diffs"], diff)


def test_paired_difference_pairs_by_seed_and_skips_missing():
    a = {0: 0.9, 1: 0.8, 2: 0.7, 3: None, 5: 0.1}
    b = {0: 0.85, 1: 0.79, 2: 0.71, 3: 0.5, 4: 0.4, 5: float("nan")}
    d = stats.paired_difference(a, b)
    assert d["seeds"] == [0, 1, 2] and d["n"] == 3 and d["wins"] == 2
    diffs = np.array([0.9 - 0.85, 0.8 - 0.79, 0.7 - 0.71])
    assert d["mean"] == diffs.mean() and d["std"] == np.std(diffs, ddof=1)
    assert d["se"] == np.std(diffs, ddof=1) / math.sqrt(3)
    one = stats.paired_difference({0: 1.0}, {0: 0.5})
    assert one["n"] == 1 and one["std"] == 0.0 and one["se"] == 0.0 and not one["beyond_noise"]
    none = stats.paired_difference({0: 1.0}, {1: 0.5})
    assert none["n"] == 0 and math.isnan(none["mean"]) and not none["beyond_noise"] and none["diffs"] == []
    with pytest.raises(ValueError, match="equal length"):
        stats.paired_difference([1.0, 2.0], [1.0])


def test_beyond_noise_rule_and_comparisons():
    assert stats.beyond_noise(0.021, 0.01, 5)
    assert not stats.beyond_noise(0.02, 0.01, 5)  # exactly 2 se: not beyond
    assert not stats.beyond_noise(0.5, 0.0, 1)    # one seed: no spread to compare with
    assert stats.beyond_noise(-0.5, 0.0, 2)       # identical non-zero differences
    assert not stats.beyond_noise(float("nan"), 0.1, 5)
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="comparisons="):
            stats.beyond_noise(1.0, 0.1, 5, comparisons=bad)


def test_bonferroni_z_matches_scipy_and_grows_with_the_comparisons():
    from scipy.stats import norm

    for m in (1, 2, 9, 10, 100):
        assert stats.bonferroni_z(m) == pytest.approx(norm.ppf(1 - 0.025 / m), abs=1e-9)
    assert stats.bonferroni_z(1, level=0.1) == pytest.approx(norm.ppf(0.95), abs=1e-9)
    assert isinstance(stats.bonferroni_z(9), float)
    assert stats.bonferroni_z(1) < stats.bonferroni_z(2) < stats.bonferroni_z(10)
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="comparisons="):
            stats.bonferroni_z(bad)
    with pytest.raises(ValueError, match="level"):
        stats.bonferroni_z(3, level=1.0)


def test_paired_runs_and_experiment_delegate():
    runs = [{"method": "a", "labels_per_class": 10, "seed": s, "test_acc": v} for s, v in enumerate([0.9, 0.8, 0.7])]
    runs += [{"method": "b", "labels_per_class": 10, "seed": s, "test_acc": v} for s, v in enumerate([0.85, 0.79, 0.71])]
    runs += [{"method": "b", "labels_per_class": 5, "seed": 0, "test_acc": 0.0}]
    runs += [{"row": "c", "seed": 0, "test_acc": 0.5}]  # estimators.json names rows "row"
    assert stats.paired_runs(runs, "b", labels_per_class=10) == {0: 0.85, 1: 0.79, 2: 0.71}
    assert stats.paired_runs(runs, "b", labels_per_class=5) == {0: 0.0}
    assert stats.paired_runs(runs, "c", labels_per_class=10) == {0: 0.5}
    ours = experiment_paired_difference(runs, "a", "b", 10)
    direct = stats.paired_difference(stats.paired_runs(runs, "a", labels_per_class=10),
                                     stats.paired_runs(runs, "b", labels_per_class=10))
    assert ours == direct


def test_public_names_are_documented():
    import inspect

    import bgcn.experiments.common as common
    import bgcn.io as bio

    for mod in (stats, bio, common):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            doc = inspect.getdoc(obj) or ""
            assert "Shapes:" in doc and "Taught in:" in doc, f"{mod.__name__}.{name}"


def test_mcnemar_exact_matches_scipy_binomtest():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for n, pa, pb in [(397, 0.95, 0.93), (60, 0.7, 0.5), (30, 0.5, 0.5)]:
        a, b = rng.random(n) < pa, rng.random(n) < pb
        r = stats.mcnemar_exact(a, b)
        assert r["only_a"] == int((a & ~b).sum()) and r["only_b"] == int((~a & b).sum())
        assert r["only_a"] + r["only_b"] + r["both"] + r["neither"] == n
        ref = scipy_stats.binomtest(r["only_a"], r["only_a"] + r["only_b"]).pvalue
        assert r["p"] == pytest.approx(ref, rel=1e-12)
    assert stats.mcnemar_exact([True, False], [True, False])["p"] == 1.0  # they never disagree
    assert stats.mcnemar_exact([True] * 10, [False] * 10)["p"] == pytest.approx(2 / 2 ** 10)
    with pytest.raises(ValueError, match="one entry per item"):
        stats.mcnemar_exact([True], [True, False])
