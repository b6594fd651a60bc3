r"""The statistics every results table uses: mean ± std over seeds and differences paired by seed.

A seed fixes the label split (and the initialisation), which every row of a table shares, so the
difference of two rows *within* a seed is much sharper than their two ± side by side: an unlucky
split lowers both rows and cancels in the difference. For two rows :math:`a, b` measured on the
seeds :math:`s = 1..n` they share,

.. math::
    d_s = a_s - b_s,\qquad \bar d = \frac1n\sum_s d_s,\qquad
    \operatorname{std}(d) = \sqrt{\tfrac{1}{n-1}\textstyle\sum_s (d_s-\bar d)^2},\qquad
    \text{se} = \frac{\operatorname{std}(d)}{\sqrt n},

and a difference is **beyond noise** when :math:`|\bar d| > 2\,\text{se}`. This is a rough
two-standard-error rule, not a test with a stated level: with 5 seeds a t-test at 5 % would ask
for about 2.8 se, and a table that reads *m* differences this way expects about
:math:`0.05\,m` of them to pass by chance even when nothing differs. Every verdict therefore
carries the number of comparisons it was one of (:func:`beyond_noise`'s ``comparisons``).

All sums are in float64; missing values (``None``) and NaN are skipped, never averaged.

Shapes: none (sequences of floats and lists of run dicts).

Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md), chapter 09 (chapters/09_estimators_4_digits.md)
and chapter 12 (chapters/12_real_extractor.md).
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Iterable, Sequence

import numpy as np

from ._checks import check_int

__all__ = ["finite_values", "mean_std", "PairedDifference", "paired_difference", "beyond_noise",
           "bonferroni_z", "mcnemar_exact", "paired_runs", "NOISE_SE"]

#: The "beyond noise" rule: a mean paired difference more than this many standard errors from 0.
NOISE_SE = 2.0


def finite_values(values: Iterable[Any]) -> np.ndarray:
    """The finite values of ``values`` (``None``, NaN and ±Inf dropped) as a float64 array.

    Shapes: (n,) -> (m,) with m <= n.

    Taught in: no chapter (the statistics of the results tables).
    """
    out = []
    for x in values:
        if x is None:
            continue
        x = float(x)
        if math.isfinite(x):
            out.append(x)
    return np.asarray(out, dtype=np.float64)


def mean_std(values: Iterable[float | None]) -> tuple[float, float, int]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of the finite values, and their count.

    ``(nan, nan, 0)`` when no value is finite.

    Shapes: none.

    Taught in: chapter 12 (chapters/12_real_extractor_3_table.md).
    """
    v = finite_values(values)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def beyond_noise(mean: float, se: float, n: int, comparisons: int = 1, k: float = NOISE_SE) -> bool:
    r"""The two-standard-error rule: :math:`n \ge 2` and :math:`|\bar d| > k\,\text{se}` (k = 2).

    ``comparisons`` (how many differences the table reads this way, ≥ 1) is not used to change the
    threshold; it is checked and carried so that no verdict is quoted without it (see the module
    docstring: about 5 % of the comparisons pass by chance).

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """
    comparisons = check_int(comparisons, "comparisons", 1,
                            hint="the number of differences the table reads with this rule")
    return bool(n > 1 and math.isfinite(mean) and math.isfinite(se) and abs(mean) > k * se)


def bonferroni_z(comparisons: int, level: float = 0.05) -> float:
    r"""The :math:`|z|` a difference must pass when ``comparisons`` are read at once (Bonferroni, two-sided).

    .. math:: z_m = \Phi^{-1}\!\left(1 - \frac{\alpha}{2m}\right)

    with :math:`\alpha` = ``level``: about 1.96 for one comparison, 2.81 for ten. The stricter rule
    that :func:`beyond_noise`'s ``comparisons`` only names: a mean paired difference counts past the
    correction when ``abs(mean / se) > bonferroni_z(m)``.

    Shapes: none.

    Taught in: chapter 13 (chapters/13_what_we_found_1_benchmark.md).
    """
    comparisons = check_int(comparisons, "comparisons", 1,
                            hint="the number of differences the table reads with this rule")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return float(NormalDist().inv_cdf(1.0 - level / (2 * comparisons)))


class PairedDifference(dict):
    """The result of :func:`paired_difference`: a ``dict`` with keys ``mean``, ``std``, ``se``, ``n``,
    ``wins``, ``beyond_noise``, ``diffs``, ``seeds`` and ``comparisons`` (also readable as attributes).

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e


def paired_difference(a: dict[Any, float] | Sequence[float], b: dict[Any, float] | Sequence[float],
                      comparisons: int = 1) -> PairedDifference:
    r"""Difference :math:`d_s = a_s - b_s` paired by seed: mean, std (ddof 1), se, wins, beyond-noise verdict.

    ``a`` and ``b`` map a seed to a value (dicts; only the seeds both have, with finite values,
    are paired) or are two sequences of equal length in the same seed order. ``std`` and ``se``
    are 0 for one shared seed (and ``beyond_noise`` is then False); NaN with ``n = 0``.
    ``wins`` counts the seeds with :math:`d_s > 0`.

    Shapes: a, b: (n,) -> scalars and ``diffs`` (n_shared,).

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """
    if not isinstance(a, dict) or not isinstance(b, dict):
        if isinstance(a, dict) or isinstance(b, dict) or len(a) != len(b):
            raise ValueError("a and b must both be dicts {seed: value} or two sequences of equal length; "
                             f"got {type(a).__name__} and {type(b).__name__}")
        a, b = dict(enumerate(a)), dict(enumerate(b))
    fa = {s: float(v) for s, v in a.items() if v is not None and math.isfinite(float(v))}
    fb = {s: float(v) for s, v in b.items() if v is not None and math.isfinite(float(v))}
    seeds = sorted(set(fa) & set(fb))
    if not seeds:
        nan = float("nan")
        return PairedDifference(mean=nan, std=nan, se=nan, n=0, wins=0, diffs=[], seeds=[], comparisons=comparisons,
                                beyond_noise=beyond_noise(nan, nan, 0, comparisons))
    d = np.array([fa[s] - fb[s] for s in seeds], dtype=np.float64)
    sd = float(d.std(ddof=1)) if d.size > 1 else 0.0
    se = sd / math.sqrt(d.size)
    mean = float(d.mean())
    return PairedDifference(mean=mean, std=sd, se=se, n=int(d.size), wins=int((d > 0).sum()), diffs=d.tolist(),
                            seeds=seeds, comparisons=comparisons,
                            beyond_noise=beyond_noise(mean, se, int(d.size), comparisons))


def paired_runs(runs: Iterable[dict], row: str, key: str = "test_acc", **match: Any) -> dict[int, float]:
    """``{seed: value}`` of one row of a results file's ``"runs"`` list, for :func:`paired_difference`.

    A run names its row by ``"method"`` (experiment.json) or ``"row"``; ``match`` keeps only runs whose fields equal
    the given values (a run without the field matches any value).
    Missing and NaN values are skipped.

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """
    out = {}
    for r in runs:
        v = r.get(key)
        if r.get("method", r.get("row")) != row or v is None or not math.isfinite(float(v)):
            continue
        if all(r.get(f, want) == want for f, want in match.items()):
            out[int(r["seed"])] = float(v)
    return out


def mcnemar_exact(right_a: Sequence[bool], right_b: Sequence[bool]) -> dict:
    r"""McNemar's exact test of two classifiers on the same items: do they differ more than chance?

    Only the items on which they disagree count: :math:`n_a` right only by ``a``, :math:`n_b` right
    only by ``b``. If neither is better, each disagreement falls either way with probability 1/2, and
    the two-sided p-value is the binomial tail

    .. math:: p = \min\Big(1,\ 2\sum_{i=0}^{\min(n_a, n_b)} \binom{n_a+n_b}{i} 2^{-(n_a+n_b)}\Big)

    (``scipy.stats.binomtest(n_a, n_a + n_b).pvalue``; 1 when they never disagree). It compares
    these two trained models on these items, not two methods in general.

    Returns ``{"only_a", "only_b", "both", "neither", "p"}``.

    Shapes: right_a, right_b (n,) bool -> ints and a float.

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md).
    """
    a = [bool(x) for x in (right_a.tolist() if hasattr(right_a, "tolist") else right_a)]
    b = [bool(x) for x in (right_b.tolist() if hasattr(right_b, "tolist") else right_b)]
    if len(a) != len(b):
        raise ValueError(f"right_a and right_b must have one entry per item each, got {len(a)} and {len(b)}")
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    n = only_a + only_b
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n if n else 1.0
    return {"only_a": only_a, "only_b": only_b, "both": sum(x and y for x, y in zip(a, b)),
            "neither": sum(not x and not y for x, y in zip(a, b)), "p": float(min(1.0, 2 * tail))}
