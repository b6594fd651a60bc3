"""The committed benchmark results (``benchmarks/results/*.json``) read back, and the numbers a page
quotes from them.

The scripts in ``benchmarks/`` measure what a unit test cannot (time, peak memory, curves over
many epochs) and commit one JSON each. A page reads them through :func:`load_benchmark` (d2l's
``load_*`` pattern: the file, or an error that names the command that writes it) and quotes them
through one ``*_findings`` function per benchmark, which returns plain Python numbers (percent
where the page says percent, MB where it says MB), so the page only glues and writes the reading.

- ``staleness.json`` (``benchmarks/bench_staleness.py``): recall@k of the bank's graph against a
  fresh one, epoch by epoch, and mini-batch against full-batch accuracy over seeds;
  :func:`staleness_findings`.
- ``minibatch.json`` and ``minibatch_large.json`` (``benchmarks/bench_minibatch.py``): peak memory
  and time of one epoch against N; :func:`load_minibatch_costs`, :func:`minibatch_cost_findings`,
  :func:`minibatch_cost_table`.
- ``overhead.json`` (``benchmarks/bench_overhead.py``): an end-to-end epoch against a supervised
  one; :func:`overhead_findings`.
- ``distributed.json`` (``benchmarks/bench_distributed.py``): two processes against one;
  :func:`distributed_findings`.

The folder is :func:`bgcn.experiments.common.benchmarks_root` (``BGCN_BENCHMARKS`` overrides it).

Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md and
chapters/11_minibatch_3_inductive_distributed.md).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

from ..stats import beyond_noise
from .common import benchmarks_root

__all__ = ["BENCHMARK_COMMANDS", "load_benchmark", "staleness_findings", "load_minibatch_costs",
           "minibatch_cost_findings", "minibatch_cost_table", "overhead_findings", "distributed_findings",
           "scale_findings", "index_accuracy_findings"]

#: The command that writes each committed benchmark file (run from the repository root).
BENCHMARK_COMMANDS = {
    "staleness.json": "python benchmarks/bench_staleness.py",
    "minibatch.json": "python benchmarks/bench_minibatch.py",
    "minibatch_large.json": ("OMP_NUM_THREADS=1 python benchmarks/bench_minibatch.py --sizes 50000 100000 "
                             "--max-full-n 0 --out benchmarks/results/minibatch_large.json"),
    "overhead.json": "python benchmarks/bench_overhead.py",
    "distributed.json": "python benchmarks/bench_distributed.py",
    "knn_full.json": "python benchmarks/bench_knn.py --full",
    "index.json": "OMP_NUM_THREADS=1 python benchmarks/bench_index.py",
    "index_full.json": "OMP_NUM_THREADS=1 python benchmarks/bench_index.py --full",
    "scale.json": "python benchmarks/bench_scale.py",
    "scale_full.json": "python benchmarks/bench_scale.py --full",
    "index_accuracy.json": "OMP_NUM_THREADS=1 python benchmarks/bench_index_accuracy.py",
}

_MB = 1e6


def load_benchmark(name: str, keys: Sequence[str] = (), path: str | os.PathLike | None = None) -> dict:
    """The committed benchmark file ``name`` (plain JSON) from :func:`~bgcn.experiments.common.benchmarks_root`.

    ``path`` overrides the folder's file. A missing file raises ``FileNotFoundError`` naming the
    command that writes it (:data:`BENCHMARK_COMMANDS`); a file without one of ``keys`` (written by
    an older script) raises ``KeyError`` asking for a re-run.

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    path = Path(path) if path is not None else benchmarks_root() / name
    if not path.is_file():
        cmd = BENCHMARK_COMMANDS.get(Path(name).name, f"the script in benchmarks/ that writes {name}")
        raise FileNotFoundError(f"{str(path)!r} does not exist: `{cmd}` (from the repository root) writes it")
    data = json.loads(path.read_text())
    missing = [k for k in keys if k not in data]
    if missing:
        cmd = BENCHMARK_COMMANDS.get(Path(name).name, "its benchmark script")
        raise KeyError(f"{str(path)!r} has no {missing}: it was written by an older script; re-run `{cmd}`")
    return data


def _joint(run: dict) -> list[dict]:
    return [c for c in run["curve"] if c["epoch"] > run["warmup_epochs"]]


def staleness_findings(st: dict) -> dict:
    """The numbers a reading of ``staleness.json`` quotes (accuracies and differences in points).

    ``st`` is :func:`load_benchmark`'s dict of ``staleness.json``. Returns

    - ``"k"``, ``"lr_backbone"``, ``"epochs"``, ``"warmup_epochs"``, ``"batch_sizes"`` (sorted) of
      the staleness curves, and ``"acc_batch_size"``, ``"seeds"`` (their number) of the accuracy pairs;
    - ``"recall_min"``: the lowest recall@k at the end of any joint epoch of any curve (in the
      warm-up the extractor does not move and the recall is 1);
    - ``"recall_joint"``: ``{batch size: mean recall over the joint epochs of its curves}``;
    - ``"acc_mini"``, ``"acc_full"``: mean test accuracy at the best validation epoch (%);
      ``"diff"``, ``"se"``, ``"wins"``: their paired difference (mini-batch minus full batch, points),
      its standard error and the seeds on which mini-batch was ahead; ``"final_diff"``,
      ``"final_se"`` the same at the last epoch;
    - ``"ahead"``: the first difference is positive and beyond noise
      (:func:`bgcn.stats.beyond_noise`: more than two standard errors, one comparison).

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    curves = st["staleness"]
    first = curves[0]
    by_b: dict[int, list[float]] = {}
    for run in curves:
        by_b.setdefault(run["batch_size"], []).extend(c["recall"] for c in _joint(run))
    joint = [r for rs in by_b.values() for r in rs]
    acc = st["accuracy"]
    best = acc["summary"]["test_acc_at_best_val"]
    final = acc["summary"]["final_test_acc"]
    pd, pf = best["paired_difference"], final["paired_difference"]
    return {
        "k": int(st["setup"]["k"]), "lr_backbone": float(first["lr_backbone"]), "epochs": int(first["epochs"]),
        "warmup_epochs": int(first["warmup_epochs"]), "batch_sizes": sorted(by_b),
        "acc_batch_size": int(acc["batch_size"]), "seeds": len(acc["seeds"]),
        "recall_min": float(min(joint)) if joint else 1.0,
        "recall_joint": {b: float(sum(v) / len(v)) for b, v in sorted(by_b.items()) if v},
        "acc_mini": 100 * float(best["minibatch"]["mean"]), "acc_full": 100 * float(best["full"]["mean"]),
        "diff": 100 * float(pd["mean"]), "se": 100 * float(pd["se"]), "wins": int(pd["wins"]),
        "final_diff": 100 * float(pf["mean"]), "final_se": 100 * float(pf["se"]),
        "ahead": bool(pd["mean"] > 0 and beyond_noise(pd["mean"], pd["se"], int(pd["n"]))),
    }


def load_minibatch_costs(names: Iterable[str] = ("minibatch.json", "minibatch_large.json")) -> list[dict]:
    """The rows (one per N) of the committed ``bench_minibatch.py`` files, merged and sorted by N.

    Each row is ``{"n", "minibatch": {...}, "minibatch_cached": {...}?, "full": {...}?}`` as the
    script writes it (``time_s``, ``peak_bytes``, ``bank_bytes``, ``search_s``, ``search_share``,
    ``max_subgraph_nodes``, ...); the large file has no full-batch runs.

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    rows = [r for name in names for r in load_benchmark(name, ("results",))["results"]]
    return sorted(rows, key=lambda r: r["n"])


def minibatch_cost_findings(rows: Sequence[dict]) -> dict:
    """The numbers a reading of :func:`load_minibatch_costs` quotes (MB, GB, s, %).

    Returns ``"peak_mb_lo"`` / ``"peak_mb_hi"`` (the mini-batch epoch's lowest and highest peak
    over all N), ``"n_lo"`` / ``"n_hi"`` (the smallest and largest N), at the largest N
    ``"bank_mb_hi"``, ``"epoch_s_hi"``, ``"search_pct_hi"`` (the exact search's share of the epoch)
    and ``"subgraph_hi"`` (the largest subgraph of a step), and ``"full_peak_gb"`` at ``"full_n"``,
    the largest N with a full-batch run (NaN and 0 without one).

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    if not rows:
        raise ValueError("no benchmark rows: load_minibatch_costs() found none")
    peaks = [r["minibatch"]["peak_bytes"] for r in rows]
    big = rows[-1]["minibatch"]
    with_full = [r for r in rows if "full" in r]
    return {
        "peak_mb_lo": min(peaks) / _MB, "peak_mb_hi": max(peaks) / _MB,
        "n_lo": int(rows[0]["n"]), "n_hi": int(rows[-1]["n"]),
        "bank_mb_hi": big["bank_bytes"] / _MB, "epoch_s_hi": float(big["time_s"]),
        "search_pct_hi": 100 * float(big["search_share"]), "subgraph_hi": int(big["max_subgraph_nodes"]),
        "full_peak_gb": with_full[-1]["full"]["peak_bytes"] / 1e9 if with_full else math.nan,
        "full_n": int(with_full[-1]["n"]) if with_full else 0,
    }


def minibatch_cost_table(rows: Sequence[dict]) -> str:
    """Markdown: one line per N of :func:`load_minibatch_costs`, peak memory (MB) and epoch time (s)
    of the mini-batch and full-batch engines, the bank's size, the search's share, the subgraph.

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    lines = ["| $N$ | mini-batch peak (MB) | bank (MB) | full batch peak (MB) | mini-batch epoch (s) "
             "| search share | full batch epoch (s) | largest subgraph |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mm, fl = r["minibatch"], r.get("full")
        full_mb = f"{fl['peak_bytes'] / _MB:.0f}" if fl else "–"
        full_s = f"{fl['time_s']:.2f}" if fl else "–"
        lines.append(f"| {_thousands(r['n'])} | {mm['peak_bytes'] / _MB:.0f} | {mm['bank_bytes'] / _MB:.1f} | {full_mb} "
                     f"| {mm['time_s']:.2f} | {100 * mm['search_share']:.0f} % | {full_s} "
                     f"| {_thousands(mm['max_subgraph_nodes'])} |")
    return "\n".join(lines) + "\n"


def _thousands(n: int) -> str:
    return f"{n:,}".replace(",", "\u2009")


def overhead_findings(ov: dict) -> dict:
    """The numbers a reading of ``overhead.json`` quotes, one dict per setting (``"resnet18"``, ``"digits"``).

    Each holds ``"n"``, ``"batch_size"``, ``"ratio"`` (an end-to-end epoch over a supervised one),
    ``"ratio_with_fill"`` (with one bank refresh), ``"search_pct"`` and ``"backbone_pct"`` (the
    exact search's and the backbone's forward + backward share of the end-to-end epoch, %).

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    out = {}
    for r in ov["results"]:
        share = r["e2e_share"]
        out[r["setting"]] = {
            "n": int(r["n"]), "batch_size": int(r["batch_size"]), "ratio": float(r["ratio"]),
            "ratio_with_fill": float(r["ratio_with_fill"]), "search_pct": 100 * float(share["search"]),
            "backbone_pct": 100 * float(share["backbone_fwd"] + share["backbone_bwd"]),
        }
    return out


def distributed_findings(d: dict) -> dict:
    """The numbers a reading of ``distributed.json`` quotes.

    Returns ``"n"``, ``"epochs"``, ``"batch_size"``, ``"world"`` (processes), ``"backend"``,
    ``"speedup"`` (one process's step time over the ranks'), ``"comm_pct"`` (communication's share
    of the wall time, %), ``"comm_s"`` (``{kind: seconds}``) and ``"loss_rel"``, the largest relative
    difference between one process's epoch losses and any rank's.

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md).
    """
    rel = max(abs(a - b) / abs(b) for losses in d["loss_ranks"] for a, b in zip(losses, d["loss_one"]))
    return {
        "n": int(d["n"]), "epochs": int(d["epochs"]), "batch_size": int(d["batch_size"]), "world": int(d["world"]),
        "backend": d["meta"].get("backend"), "speedup": float(d["speedup_steps"]),
        "comm_pct": 100 * float(d["comm_share_of_wall"]), "comm_s": {k: float(v) for k, v in d["comm_s"].items()},
        "loss_rel": float(rel),
    }


def scale_findings(sc: dict) -> dict:
    """The numbers a reading of ``scale_full.json`` (``benchmarks/bench_scale.py --full``) quotes.

    For the largest N measured with the index and each thread count t: ``epoch_s_{t}t`` (one epoch:
    steps and evaluation), ``wall_s_{t}t`` (the whole command), ``peak_gib_{t}t`` (the process's
    peak resident set), ``recall_built_{t}t`` / ``recall_after_{t}t`` (the index's recall@10 when
    built and after the epoch's steps) and ``linearity_{t}t`` (the epoch time from 10^5 to the
    largest N over the linear prediction; 1 is linear); with ``n_big``, and at 10^5 images on one
    thread ``exact_100k_s`` and ``index_100k_s`` (the exact search's epoch and the index's).

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    runs = sc["runs"]
    auto = [r for r in runs if r["kind"] == "auto"]
    if not auto:
        raise ValueError("scale file holds no run with the index (kind 'auto')")
    n_big = max(r["n"] for r in auto)
    out: dict = {"n_big": int(n_big)}
    for r in auto:
        t = r["threads"]
        if r["n"] == n_big:
            out.update({f"epoch_s_{t}t": float(r["epoch_s"]), f"wall_s_{t}t": float(r["wall_s"]),
                        f"peak_gib_{t}t": r["peak_rss_bytes"] / 2**30,
                        f"recall_built_{t}t": float(r["recall_built"]), f"recall_after_{t}t": float(r["recall_after"])})
    for t in {r["threads"] for r in auto}:
        pts = {r["n"]: r for r in auto if r["threads"] == t}
        if 100_000 in pts and n_big > 100_000:
            out[f"linearity_{t}t"] = (pts[n_big]["epoch_s"] / pts[100_000]["epoch_s"]) / (n_big / 100_000)
    one = {(r["n"], r["kind"]): r for r in runs if r["threads"] == 1}
    if (100_000, "exact") in one and (100_000, "auto") in one:
        out["exact_100k_s"] = float(one[100_000, "exact"]["epoch_s"])
        out["index_100k_s"] = float(one[100_000, "auto"]["epoch_s"])
    return out


def index_accuracy_findings(ia: dict) -> dict:
    """The numbers a reading of ``index_accuracy.json`` (``benchmarks/bench_index_accuracy.py``) quotes.

    For each data set ``d`` in the file (``"digits"``, ``"fashion"``) and approximate index ``m``
    (``"ivf"``, ``"hnsw"``): ``{d}_{m}_diff`` and ``{d}_{m}_se`` (the seed-paired test-accuracy
    difference against the exact search and its standard error, in points), ``{d}_{m}_beyond``
    (more than two standard errors from zero), ``{d}_{m}_recall`` (recall@10 after the steps, mean
    over seeds and epochs); ``{d}_seeds``, ``{d}_n`` and ``{d}_exact`` (the exact runs' mean test
    accuracy, %); ``comparisons`` (the number of differences read, all data sets together).

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    out: dict = {"comparisons": 0}
    for d in ("digits", "fashion"):
        if d not in ia:
            continue
        summ = ia[d]["summary"]
        out[f"{d}_seeds"] = len(ia[d]["config"]["seeds"])
        out[f"{d}_n"] = int(ia[d]["n"])
        out[f"{d}_exact"] = 100 * float(summ["exact"]["mean"])
        for m in ("ivf", "hnsw"):
            pd = summ[m]["vs_exact"]
            out[f"{d}_{m}_diff"], out[f"{d}_{m}_se"] = 100 * float(pd["mean"]), 100 * float(pd["se"])
            out[f"{d}_{m}_beyond"] = bool(abs(pd["mean"]) > 2 * pd["se"])
            out[f"{d}_{m}_recall"] = float(summ[m]["recall_after"])
            out["comparisons"] += 1
    return out
