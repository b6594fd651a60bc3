r"""One mini-batch training epoch against N through the command line, exact search vs the index (chapter 11).

Each point is one process, exactly what a practitioner runs::

    python -m bgcn train --dataset synthetic --synthetic-n N --batch-size 512 --epochs 1 \
        --estimator masked_softmax --index KIND --threads T --device cpu

(generated 8×8 images, the ``mlp_digits`` backbone, D = 64, k = 10, τ from the data, end to end;
the run's own defaults otherwise). ``KIND`` is ``exact`` (the torch search, the reference) or
``auto`` (:func:`bgcn.index.resolve_index_kind`: FAISS's flat scan from 20 000 images, the
inverted file from 100 000). Recorded per point:

* ``wall_s``: the whole process, from start to exit (imports, data, τ, the bank, the epoch, the
  final evaluation, the checkpoint);
* ``epoch_s``: the run's own ``timings.per_epoch`` (the steps and the evaluation that refreshes
  the bank), and its parts ``step_s`` and ``search_s``;
* ``peak_rss_bytes``: the process's peak resident set (``os.wait4``'s ``ru_maxrss``), the whole
  process as the memory goal counts it; ``minor_faults`` and ``system_s`` (allocation churn);
* ``recall_built`` / ``recall_after``: the index's recall@10 against the exact search on 512 rows
  when it was built and after the epoch's steps (``timings.index_recall``; none for ``exact``).

Usage (from the repository root)::

    python benchmarks/bench_scale.py          # N = 10 000, 30 000; exact and auto; 1 thread; about 2 min
    python benchmarks/bench_scale.py --full   # N = 10^4 ... 10^6 (exact to 10^5), 1 and 2 threads; about 25 min

Writes ``benchmarks/results/scale.json`` and ``scale.png`` (``scale_full.*`` with ``--full``);
``--plot-only`` redraws the PNG; ``--full --update --sizes 1000000 --threads 2 --kinds auto`` re-measures
single points of an existing file. The goal (issue 17): a 10^6-image epoch on 2 cores in under 10
minutes and under 4 GB, epoch time within 2× of linear from 10^5 to 10^6, recall@10 ≥ 0.95.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_staleness import machine_meta, write_json_and_plot  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT = {"sizes": [10_000, 30_000], "kinds": ["exact", "auto"], "threads": [1], "max_exact": 30_000,
           "batch_size": 512, "estimator": "masked_softmax"}
FULL = {**DEFAULT, "sizes": [10_000, 30_000, 100_000, 300_000, 1_000_000], "threads": [1, 2],
        "max_exact": 100_000}


def command(n: int, kind: str, threads: int, out: Path, cfg: dict) -> list[str]:
    """The command line of one point."""
    return [sys.executable, "-m", "bgcn", "train", "--dataset", "synthetic", "--synthetic-n", str(n),
            "--batch-size", str(cfg["batch_size"]), "--epochs", "1", "--estimator", cfg["estimator"],
            "--index", kind, "--threads", str(threads), "--device", "cpu", "--no-progress", "--out", str(out)]


def measure(n: int, kind: str, threads: int, cfg: dict) -> dict:
    """Run one point in its own process; its wall time, peak RSS and the run's own timings."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        out = Path(tmp) / "run"
        cmd = command(n, kind, threads, out, cfg)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        text = proc.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"N={n} {kind} x{threads} failed:\n{text[-2000:]}")
        m = json.loads((out / "metrics.json").read_text())
    t = m["timings"]
    rec = t.get("index_recall") or []
    return {"n": n, "kind": kind, "index": t.get("index"), "threads": threads, "wall_s": wall,
            "epoch_s": t["per_epoch"], "step_s": t["per_epoch_step"], "search_s": t["search"],
            "run_total_s": t["total"], "peak_rss_bytes": usage.ru_maxrss * 1024,
            "minor_faults": usage.ru_minflt, "system_s": usage.ru_stime, "user_s": usage.ru_utime,
            "recall_built": rec[-1][1] if rec else None, "recall_after": rec[-1][2] if rec else None,
            "tau": m["config"]["tau"], "test_acc": m["test_acc_at_best_val"],
            "command": " ".join(["python"] + cmd[1:-2])}


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.0))
    runs = data["runs"]
    for kind, threads, style in [(k, t, "-o" if k == "auto" else "--s") for k in data["config"]["kinds"]
                                 for t in data["config"]["threads"]]:
        pts = sorted((r for r in runs if r["kind"] == kind and r["threads"] == threads), key=lambda r: r["n"])
        if not pts:
            continue
        lab = f"{'index (auto)' if kind == 'auto' else 'exact'}, {threads} thread{'s' * (threads > 1)}"
        ns = [r["n"] for r in pts]
        axes[0].loglog(ns, [r["epoch_s"] for r in pts], style, label=lab)
        axes[1].loglog(ns, [r["peak_rss_bytes"] / 2**30 for r in pts], style, label=lab)
        if kind == "auto":
            axes[2].semilogx(ns, [r["recall_built"] if r["recall_built"] is not None else 1.0 for r in pts],
                             style, label=f"when built, {threads}t")
            axes[2].semilogx(ns, [r["recall_after"] if r["recall_after"] is not None else 1.0 for r in pts],
                             ":", marker="x", label=f"after the epoch, {threads}t")
    ns = sorted({r["n"] for r in runs})
    base = [r for r in runs if r["kind"] == "auto" and r["n"] == ns[0]]
    if base:
        e0 = min(r["epoch_s"] for r in base)
        axes[0].loglog(ns, [e0 * n / ns[0] for n in ns], color="grey", lw=0.8, label="linear in N")
    axes[0].axhline(600, color="red", lw=0.8, ls=":", label="10 min")
    axes[1].axhline(4, color="red", lw=0.8, ls=":", label="4 GiB")
    axes[2].axhline(0.95, color="red", lw=0.8, ls=":", label="0.95")
    for ax, title, ylab in [(axes[0], "one epoch (steps + evaluation)", "seconds"),
                            (axes[1], "peak memory of the whole process", "GiB (peak RSS)"),
                            (axes[2], "recall@10 of the index (1.0: exact search)", "recall@10")]:
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("images N")
        ax.set_ylabel(ylab)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="N = 10^4 ... 10^6, one and two threads")
    p.add_argument("--sizes", type=int, nargs="+", help="override the sizes")
    p.add_argument("--threads", type=int, nargs="+", help="override the thread counts")
    p.add_argument("--kinds", nargs="+", choices=("exact", "auto"), help="override the index kinds")
    p.add_argument("--out", type=Path, help="JSON path (default results/scale[_full].json)")
    p.add_argument("--plot-only", action="store_true", help="redraw the PNG from the JSON")
    p.add_argument("--update", action="store_true",
                   help="re-measure only the given points and replace them in the existing JSON")
    args = p.parse_args(argv)
    cfg = dict(FULL if args.full else DEFAULT)
    if args.sizes:
        cfg["sizes"] = args.sizes
    if args.threads:
        cfg["threads"] = args.threads
    if args.kinds:
        cfg["kinds"] = args.kinds
    out = args.out or RESULTS / ("scale_full.json" if args.full else "scale.json")
    if args.plot_only:
        plot(json.loads(out.read_text()), out.with_suffix(".png"))
        return 0
    runs = []
    for threads in cfg["threads"]:
        for n in cfg["sizes"]:
            for kind in cfg["kinds"]:
                if kind == "exact" and n > cfg["max_exact"]:
                    continue
                r = measure(n, kind, threads, cfg)
                runs.append(r)
                print(f"N={n:>8} {kind:>5} ({r['index']}) x{threads}: epoch {r['epoch_s']:7.1f} s, "
                      f"wall {r['wall_s']:7.1f} s, peak {r['peak_rss_bytes'] / 2**30:5.2f} GiB, "
                      f"recall {r['recall_built']} / {r['recall_after']}", flush=True)
    if args.update and out.exists():
        old = json.loads(out.read_text())
        fresh = {(r["n"], r["kind"], r["threads"]) for r in runs}
        runs = [r for r in old["runs"] if (r["n"], r["kind"], r["threads"]) not in fresh] + runs
        runs.sort(key=lambda r: (r["threads"], r["n"], r["kind"]))
        cfg = old["config"]
    data = {"meta": machine_meta(), "config": cfg, "runs": runs}
    big = [r for r in runs if r["kind"] == "auto"]
    summary = {}
    for threads in cfg["threads"]:
        pts = {r["n"]: r for r in big if r["threads"] == threads}
        if 100_000 in pts and 1_000_000 in pts:
            summary[f"linearity_{threads}t"] = (pts[1_000_000]["epoch_s"] / pts[100_000]["epoch_s"]) / 10
    data["summary"] = summary
    write_json_and_plot(data, out, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
