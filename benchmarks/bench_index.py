r"""The neighbour search past the quadratic wall: exact against FAISS indices (bgcn.index, chapter 11).

For N clustered unit vectors (D = 64, 100 clusters, the scale of engine features), every row's
k = 10 nearest neighbours (itself excluded), one thread unless ``--threads``:

* ``exact``: :class:`bgcn.index.ExactIndex` (:func:`bgcn.similarity.knn_search`, query blocks of
  4 096 rows against the whole bank), the library's reference;
* ``flat``: FAISS ``IndexFlatIP`` (an exhaustive scan: the floor an exact search can reach);
* ``ivf``: FAISS ``IndexIVFFlat``, 4·√N lists, 16 probed, trained on ≤ 50 000 rows;
* ``hnsw``: FAISS ``IndexHNSWFlat``, M = 16, efSearch 64;

each approximate one asked for max(2k, k + 10) candidates, re-ranked exactly (what the bank does).
The exhaustive searches (exact, flat) cost N²·D: above ``--max-exhaustive`` rows they are timed on
a sample of 2 000 queries and scaled by N / 2 000 (their cost per query is the same for every
query; the JSON marks such times ``projected``). recall@10 of every index is measured on 2 000
sampled rows against the exact search.

Usage (from the repository root)::

    python benchmarks/bench_index.py            # N = 10 000, 30 000; about 1 min on one idle core
    python benchmarks/bench_index.py --full     # N = 10 000 ... 1 000 000; about 15 min

Writes ``benchmarks/results/index.json`` and ``index.png`` (``index_full.*`` with ``--full``);
``--plot-only`` redraws the PNG. Compare ratios within one run: the meta records the load.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from bench_staleness import machine_meta, write_json_and_plot  # noqa: E402
from bgcn.index import ExactIndex, FaissIndex, recall_at_k  # noqa: E402
from bgcn.scaling import peak_memory  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT = {"sizes": [10_000, 30_000], "dim": 64, "k": 10, "clusters": 100, "sample": 2000,
           "max_exhaustive": 30_000, "methods": ["exact", "flat", "ivf", "hnsw"]}
FULL = {**DEFAULT, "sizes": [10_000, 30_000, 100_000, 300_000, 1_000_000], "max_exhaustive": 100_000}


def clustered_unit_rows(n: int, d: int, clusters: int, seed: int = 0) -> torch.Tensor:
    """(n, d) float32 unit rows around ``clusters`` random centres (noise 0.5 a coordinate).

    Shapes: -> (n, d)
    """
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g)
    x = centres[torch.randint(0, clusters, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g)
    return x / x.norm(dim=1, keepdim=True)


def _index(method: str):
    return ExactIndex(chunk_size=4096) if method == "exact" else FaissIndex(method)


def measure(n: int, cfg: dict, seed: int = 0) -> dict:
    """One N: build and search time, peak memory and recall@k of every method."""
    x = clustered_unit_rows(n, cfg["dim"], cfg["clusters"], seed)
    k, ids = cfg["k"], torch.arange(n)
    g = torch.Generator().manual_seed(seed + 1)
    sample = torch.randperm(n, generator=g)[:min(cfg["sample"], n)].sort().values
    truth = ExactIndex().build(x).search(x[sample], k, sample)
    out = {"n": n, "methods": {}}
    for method in cfg["methods"]:
        rec: dict = {}
        exhaustive = method in ("exact", "flat")
        rows = sample if exhaustive and n > cfg["max_exhaustive"] else ids

        def build_and_search():
            t0 = time.perf_counter()
            index = _index(method).build(x)
            t1 = time.perf_counter()
            found = index.search(x[rows], k, rows)
            return found, t1 - t0, time.perf_counter() - t1

        (found, rec["build_s"], search_s), rec["peak_bytes"] = peak_memory(build_and_search, device="cpu")
        rec["search_s"] = search_s * n / len(rows)
        rec["projected"] = len(rows) < n
        pos = torch.searchsorted(rows, sample) if len(rows) < n else sample
        rec["recall"] = recall_at_k(found[pos], truth)
        rec["total_s"] = rec["build_s"] + rec["search_s"]
        out["methods"][method] = rec
        print(f"N={n:>9,} {method:>5}: build {rec['build_s']:7.2f} s, search {rec['search_s']:8.2f} s"
              f"{' (projected)' if rec['projected'] else ''}, recall@{k} {rec['recall']:.3f}", flush=True)
    return out


def plot(data: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for method in data["config"]["methods"]:
        ns = [r["n"] for r in data["runs"]]
        ts = [r["methods"][method]["total_s"] for r in data["runs"]]
        a.loglog(ns, ts, "o-", label=method)
        b.semilogx(ns, [r["methods"][method]["recall"] for r in data["runs"]], "o-", label=method)
    a.set(xlabel="N (rows)", ylabel="build + search of all N rows (s)", title="time (one thread)")
    b.set(xlabel="N (rows)", ylabel=f"recall@{data['config']['k']}", title="recall against the exact search",
          ylim=(0.8, 1.005))
    a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="N up to 1 000 000")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="override the sizes")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/index[_full].json)")
    p.add_argument("--plot-only", action="store_true")
    args = p.parse_args(argv)
    cfg = dict(FULL if args.full else DEFAULT)
    if args.sizes:
        cfg["sizes"] = args.sizes
    out = args.out or RESULTS / ("index_full.json" if args.full else "index.json")
    if args.plot_only:
        plot(json.loads(out.read_text()), out.with_suffix(".png"))
        return 0
    torch.set_num_threads(args.threads)
    data = {"meta": machine_meta("cpu", argv), "config": {**cfg, "threads": args.threads},
            "runs": [measure(n, cfg) for n in cfg["sizes"]]}
    write_json_and_plot(data, out, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
