"""Memory and time of a differentiable kNN graph against N: seed 000's dense recipe vs chunked exact kNN.

Methods (all build a kNN graph with k neighbours per node from features F (N, D) that require
grad, then run one backward pass of ``loss = sum(edge_weight * g)`` for a fixed random g):

* ``seed_loop``       seed 000 as written: S = cosine similarity (N x N, autograd), softmax over
                      the whole row, top-k, gather, and the Python double loop over edges.
* ``dense``           the same with the vectorised edge build (``bgcn.knn_graph(F, k, "softmax")``).
* ``chunked_masked``  exact kNN indices chunk by chunk under no_grad, then the k similarities
                      recomputed with autograd, softmax over the k kept neighbours
                      (``bgcn.knn_graph(F, k, "masked_softmax", chunk_size=...)``): O(N k D).
* ``chunked_softmax`` seed 000's *global* softmax weights without an N x N autograd tensor:
                      ``bgcn.scaling.chunked_soft_topk`` (checkpointed log-sum-exp): O(N D + N k).

Plus the edge build alone: seed 000's Python loop (``bgcn.graph.rankings_to_edges_loop``) vs
``bgcn.rankings_to_edges``.

Usage (from the repository root)::

    python benchmarks/bench_knn.py                 # small N range, < 2 min on 2 CPU cores
    python benchmarks/bench_knn.py --full          # N up to 50 000 (N x N methods and the
                                                   # checkpointed softmax up to 20 000)
    python benchmarks/bench_knn.py --device cuda   # on a GPU (peak = torch.cuda.max_memory_allocated)
    python benchmarks/bench_knn.py --plot-only     # redraw the PNG from the JSON

Writes ``benchmarks/results/knn.json`` (``knn_full.json`` with ``--full``, ``..._cuda.json`` on
CUDA) and the matching PNG. Peak
memory on CPU is the rise of the process's peak resident set size (Linux ``VmHWM``), measured
around each run (``bgcn.scaling.peak_memory``); "saved" is what autograd stores for backward
(``bgcn.scaling.saved_tensor_bytes``), exact and compared with ``bgcn.scaling.memory_model``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import bgcn  # noqa: E402
from bgcn.graph import rankings_to_edges, rankings_to_edges_loop  # noqa: E402
from bgcn.scaling import chunked_soft_topk, memory_model, peak_memory, saved_tensor_bytes  # noqa: E402

METHODS = ("seed_loop", "dense", "chunked_masked", "chunked_softmax")
DENSE = ("seed_loop", "dense")
MODEL_NAME = {"seed_loop": "dense_softmax", "dense": "dense_softmax",
              "chunked_masked": "chunked_masked_softmax", "chunked_softmax": "chunked_softmax"}
QUICK_SIZES = [500, 1000, 2000, 4000]
FULL_SIZES = [1000, 2000, 5000, 10000, 20000, 50000]
RESULTS = ROOT / "benchmarks" / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_graph(method: str, features: torch.Tensor, k: int, tau: float, chunk_size: int):
    """Build the graph with ``method``; return ``(edge_index, edge_weight, edges_seconds)``.

    ``edges_seconds`` is the time of the rankings -> edges step alone (the loop for ``seed_loop``).
    """
    dev = features.device
    if method in DENSE:
        s = bgcn.cosine_similarity(features)                                   # (N, N) with autograd
        w, idx = bgcn.soft_topk(s, k, tau, exclude_self=True)                  # softmax over the row, gathered
        _sync(dev)
        t = time.perf_counter()
        if method == "seed_loop":
            edge_index = rankings_to_edges_loop(idx.cpu()).flip(0).to(dev)     # seed's [i, nb] -> our [nb, i]
            edge_weight = w.reshape(-1)
        else:
            edge_index, edge_weight = rankings_to_edges(idx, w)
        _sync(dev)
        return edge_index, edge_weight, time.perf_counter() - t
    if method == "chunked_masked":
        g = bgcn.knn_graph(features, k, "masked_softmax", tau, chunk_size=chunk_size)
        return g.edge_index, g.edge_weight, float("nan")
    if method == "chunked_softmax":
        w, idx = chunked_soft_topk(features, k, tau, chunk_size=chunk_size)
        _sync(dev)
        t = time.perf_counter()
        edge_index, edge_weight = rankings_to_edges(idx, w)
        _sync(dev)
        return edge_index, edge_weight, time.perf_counter() - t
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def run_one(method: str, n: int, d: int, k: int, tau: float, chunk_size: int, device: torch.device, seed: int = 0,
            repeats: int = 1) -> dict:
    """One forward (graph build) + backward at size N; times in seconds (best of ``repeats``), memory in bytes."""
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, d, generator=gen).to(device).requires_grad_(True)
    g = torch.randn(n * k, generator=gen).to(device)
    gc.collect()

    def step():
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        (ei, ew, t_edges), saved = saved_tensor_bytes(build_graph, method, feats, k, tau, chunk_size)
        _sync(device)
        t1, c1 = time.perf_counter(), time.process_time()
        (ew * g).sum().backward()
        _sync(device)
        t2, c2 = time.perf_counter(), time.process_time()
        feats.grad = None
        return {"forward_s": t1 - t0, "edges_s": t_edges, "backward_s": t2 - t1, "forward_cpu_s": c1 - c0,
                "backward_cpu_s": c2 - c1, "saved_bytes": saved, "num_edges": int(ei.shape[1])}

    rec, peak = peak_memory(step, device=device)
    for _ in range(repeats - 1):  # keep the fastest time of each phase
        again = step()
        for key in ("forward_s", "edges_s", "backward_s", "forward_cpu_s", "backward_cpu_s"):
            rec[key] = min(rec[key], again[key])
    rec["repeats"] = repeats
    model = memory_model(n, d, k, MODEL_NAME[method], chunk_size=chunk_size)
    rec.update(method=method, n=n, d=d, k=k, tau=tau, chunk_size=chunk_size, peak_bytes=peak,
               total_s=rec["forward_s"] + rec["backward_s"], model_saved=model["saved"], model_peak=model["peak"],
               status="ok")
    del feats, g
    gc.collect()
    return rec


def time_edges(n: int, k: int, seed: int = 0) -> dict:
    """Seed 000's Python loop vs the vectorised edge build on the same (N, k) rankings (CPU)."""
    idx = torch.randint(0, n, (n, k), generator=torch.Generator().manual_seed(seed))
    t = time.perf_counter()
    loop = rankings_to_edges_loop(idx)
    t_loop = time.perf_counter() - t
    t_vec = float("inf")
    for _ in range(20):  # best of 20: the vectorised build takes well under a millisecond
        t = time.perf_counter()
        vec, _ = rankings_to_edges(idx)
        t_vec = min(t_vec, time.perf_counter() - t)
    assert torch.equal(loop.flip(0), vec), "the loop and the vectorised build disagree"
    return {"n": n, "k": k, "loop_s": t_loop, "vectorised_s": t_vec, "speedup": t_loop / t_vec}


def available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "processor": platform.processor(),
            "device": str(device), "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run(sizes, methods, d=384, k=10, tau=1.0, chunk_size=1024, device="cpu", max_dense_n=20000,
        mem_fraction=0.6, edge_sizes=None, verbose=True, repeats=1, max_softmax_n=20000, partial=None) -> dict:
    """Run the grid; return the JSON-ready dict (``meta``, ``results``, ``edges``).

    ``partial``: a path where the results so far are written after every run (a long ``--full``
    run that is stopped keeps what it measured).
    """
    dev = bgcn.get_device(device)
    # warm-up: lazy imports, kernels, allocator
    for m in methods:
        run_one(m, 64, d, k, tau, chunk_size, dev)
    results = []
    budget = None
    if dev.type == "cuda":
        budget = torch.cuda.mem_get_info(dev)[0] * mem_fraction
    elif available_bytes() is not None:
        budget = available_bytes() * mem_fraction
    for n in sizes:
        for m in methods:
            model = memory_model(n, d, k, MODEL_NAME[m], chunk_size=chunk_size)
            reason = None
            if m in DENSE and n > max_dense_n:
                reason = f"N > max_dense_n={max_dense_n}"
            elif m == "chunked_softmax" and n > max_softmax_n:
                reason = f"N > max_softmax_n={max_softmax_n}"
            elif budget is not None and model["peak"] > budget:
                reason = f"predicted peak {model['peak'] / 1e9:.1f} GB > budget {budget / 1e9:.1f} GB"
            if reason:
                rec = {"method": m, "n": n, "d": d, "k": k, "status": "skipped: " + reason}
            else:
                rec = run_one(m, n, d, k, tau, chunk_size, dev, repeats=repeats)
            results.append(rec)
            if partial is not None:
                Path(partial).write_text(json.dumps({"meta": machine_info(dev), "results": results, "edges": []}, indent=1))
            if verbose:
                if rec["status"] == "ok":
                    pk = "n/a" if rec["peak_bytes"] is None else f"{rec['peak_bytes'] / 1e6:9.1f} MB"
                    print(f"N={n:6d} {m:16s} fwd {rec['forward_s']:7.3f}s  bwd {rec['backward_s']:7.3f}s  "
                          f"peak {pk}  saved {rec['saved_bytes'] / 1e6:9.1f} MB (model {rec['model_saved'] / 1e6:9.1f})",
                          flush=True)
                else:
                    print(f"N={n:6d} {m:16s} {rec['status']}", flush=True)
    edges = [time_edges(n, k) for n in (edge_sizes if edge_sizes is not None else sizes)]
    if verbose:
        for e in edges:
            print(f"edges N={e['n']:6d}: loop {e['loop_s'] * 1e3:8.1f} ms, vectorised {e['vectorised_s'] * 1e3:6.2f} ms "
                  f"({e['speedup']:.0f}x)")
    meta = machine_info(dev)
    meta.update(d=d, k=k, tau=tau, chunk_size=chunk_size, sizes=list(sizes), methods=list(methods), repeats=repeats)
    return {"meta": meta, "results": results, "edges": edges}


def plot(data: dict, path: Path | str):
    """Time and peak memory against N (log-log), one line per method, and the edge build; saves a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    ok = [r for r in data["results"] if r.get("status") == "ok"]
    for m in METHODS:
        rs = sorted((r for r in ok if r["method"] == m), key=lambda r: r["n"])
        if not rs:
            continue
        ns = [r["n"] for r in rs]
        axes[0].plot(ns, [r["total_s"] for r in rs], "o-", label=m)
        if all(r["peak_bytes"] is not None for r in rs):
            axes[1].plot(ns, [max(r["peak_bytes"], 1) / 2**20 for r in rs], "o-", label=f"{m} (peak)")
        axes[1].plot(ns, [r["saved_bytes"] / 2**20 for r in rs], "x:", color=axes[1].lines[-1].get_color(),
                     label=f"{m} (saved for backward)")
    axes[0].set(xscale="log", yscale="log", xlabel="N (images)", ylabel="forward + backward time (s)",
                title="Time vs N")
    axes[1].set(xscale="log", yscale="log", xlabel="N (images)", ylabel="memory (MiB)", title="Memory vs N")
    e = sorted(data["edges"], key=lambda r: r["n"])
    axes[2].plot([r["n"] for r in e], [r["loop_s"] * 1e3 for r in e], "o-", label="seed 000 Python loop")
    axes[2].plot([r["n"] for r in e], [r["vectorised_s"] * 1e3 for r in e], "o-", label="rankings_to_edges")
    axes[2].set(xscale="log", yscale="log", xlabel="N (images)", ylabel="time (ms)", title=f"Edge build, k={e[0]['k'] if e else ''}")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, loc="upper left")
    meta = data["meta"]
    fig.suptitle(f"Differentiable kNN graph, D={meta['d']}, k={meta['k']} on {meta.get('gpu', meta['device'])} "
                 f"({meta['cpu_count']} CPU cores, torch {meta['torch']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    ap.add_argument("--full", action="store_true", help=f"sizes {FULL_SIZES} instead of {QUICK_SIZES}")
    ap.add_argument("--sizes", type=int, nargs="+", help="explicit list of N (overrides --full)")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--d", type=int, default=384, help="feature dimension D (default 384, ViT-S)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--tau", type=float, default=1.0)
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--max-dense-n", type=int, default=20000, help="largest N for the N x N methods")
    ap.add_argument("--max-softmax-n", type=int, default=20000,
                    help="largest N for chunked_softmax (it computes S three times)")
    ap.add_argument("--mem-fraction", type=float, default=0.6,
                    help="skip a run whose predicted peak exceeds this share of the free memory")
    ap.add_argument("--repeats", type=int, default=1, help="time each run this many times, keep the fastest")
    ap.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/knn[_full][_cuda].json)")
    ap.add_argument("--plot-only", action="store_true", help="only redraw the PNG from the JSON")
    ap.add_argument("--update", action="store_true",
                    help="re-measure only the given --sizes/--methods and replace those records in the existing "
                         "JSON (e.g. one point disturbed by another process); the rest is kept")
    args = ap.parse_args(argv)
    dev = bgcn.get_device(args.device)
    out = args.out or RESULTS / ("knn" + ("_full" if args.full else "") + ("_cuda" if dev.type == "cuda" else "") + ".json")
    png = out.with_suffix(".png")
    if args.plot_only:
        plot(json.loads(out.read_text()), png)
        print(f"wrote {png}")
        return 0
    sizes = args.sizes or (FULL_SIZES if args.full else QUICK_SIZES)
    edge_sizes = sorted(set(sizes) | ({20000} if args.full else set()))
    out.parent.mkdir(parents=True, exist_ok=True)
    data = run(sizes, args.methods, args.d, args.k, args.tau, args.chunk_size, dev, args.max_dense_n,
               args.mem_fraction, edge_sizes, repeats=max(1, args.repeats), max_softmax_n=args.max_softmax_n,
               partial=out.with_suffix(".partial.json"))
    data["meta"]["command"] = "python benchmarks/bench_knn.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.update and out.exists():
        old = json.loads(out.read_text())
        new_keys = {(r["method"], r["n"]) for r in data["results"]}
        kept = [r for r in old["results"] if (r["method"], r["n"]) not in new_keys]
        edges = {e["n"]: e for e in old.get("edges", [])}
        edges.update({e["n"]: e for e in data["edges"]})
        meta = old["meta"]
        meta.setdefault("updates", []).append({k: data["meta"][k] for k in ("command", "date", "loadavg_1min")})
        data = {"meta": meta, "results": sorted(kept + data["results"], key=lambda r: (r["n"], METHODS.index(r["method"]))),
                "edges": [edges[n] for n in sorted(edges)]}
    out.write_text(json.dumps(data, indent=1))
    out.with_suffix(".partial.json").unlink(missing_ok=True)
    plot(data, png)
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
