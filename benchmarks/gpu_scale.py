"""One prepared GPU run (≤ 8 minutes on one H200): the differentiable kNN graph at N = 10⁵ … 10⁶
and one mini-batch epoch end to end on the largest generated set.

    python benchmarks/gpu_scale.py --device cuda                  # writes benchmarks/results/gpu_scale.json
    python benchmarks/gpu_scale.py --dry-run                      # CPU, tiny sizes: checks the script

1. kNN graph forward + backward, D = 384, k = 10, float32, for N in --sizes (default 100 000,
   200 000, 500 000, 1 000 000): ``bgcn.knn_graph(F, k, "masked_softmax", chunk_size=C)`` (exact
   chunked neighbours, the k similarities recomputed with autograd) and seed 000's global softmax
   through ``bgcn.scaling.chunked_soft_topk`` (checkpointed log-sum-exp); a fixed linear loss of
   the edge weights, ``backward()``; wall seconds (synchronised) and peak GPU memory. Target: 1M
   under 20 s.
2. One mini-batch epoch (``bgcn.train_minibatch``, end to end, masked softmax) on
   ``--epoch-n`` generated 3-channel 16×16 images with a small CNN: seconds, images/s, peak memory,
   the neighbour index it used (``--index``; ``auto`` is the exact torch search on a GPU, FAISS on
   a CPU: ``bgcn.index.resolve_index_kind``) and that index's recall@k.

Each step's record is written to the JSON as soon as it is measured; a step whose estimated time
would pass the --budget is recorded as skipped, so a killed run keeps what it measured.

Taught in: chapter 10 (chapters/10_scaling_2_measured.md) and chapter 11 (chapters/11_minibatch_1_bank.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bgcn.io import atomic_write_text  # noqa: E402


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak(dev):
    return int(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else None


def _reset(dev):
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def graph_step(n: int, d: int, k: int, method: str, dev, chunk: int) -> dict:
    import bgcn
    from bgcn.scaling import chunked_soft_topk

    g = torch.Generator(device=dev).manual_seed(0)
    f = torch.randn(n, d, device=dev, generator=g).requires_grad_(True)
    _reset(dev)
    _sync(dev)
    t0 = time.perf_counter()
    if method == "masked_softmax":
        graph = bgcn.knn_graph(f, k, "masked_softmax", tau=0.1, chunk_size=chunk)
        w = graph.edge_weight
    else:
        w, _ = chunked_soft_topk(f, k, tau=0.1, chunk_size=chunk)
    _sync(dev)
    t1 = time.perf_counter()
    coef = torch.linspace(-1, 1, w.numel(), device=dev).reshape(w.shape)
    (w * coef).sum().backward()
    _sync(dev)
    t2 = time.perf_counter()
    out = {"n": n, "d": d, "k": k, "method": method, "forward_s": t1 - t0, "backward_s": t2 - t1,
           "total_s": t2 - t0, "peak_bytes": _peak(dev), "grad_finite": bool(torch.isfinite(f.grad).all())}
    del f, w
    return out


def epoch_step(n: int, dev, batch: int, index: str = "auto") -> dict:
    import warnings

    from bgcn.backbone import create_backbone
    from bgcn.data import label_masks, load_dataset
    from bgcn.minibatch import train_minibatch
    from bgcn.model import build_model

    warnings.simplefilter("ignore", UserWarning)
    ds = load_dataset("synthetic", n=n, num_classes=10, image_size=16, channels=3, seed=0)
    tr, va, te = label_masks(ds.labels, 10, seed=0)
    torch.manual_seed(0)
    model = build_model(create_backbone("cnn_digits", in_chans=3, width=32), 10, k=10, estimator="masked_softmax",
                        tau=0.1, hidden=64)
    _reset(dev)
    t0 = time.perf_counter()
    res = train_minibatch(model, ds.images, ds.labels, tr, va, te, batch_size=batch, epochs=1, device=dev,
                          lr_backbone=1e-3, bank_refresh=0, progress=False, chunk_size=8192,
                          index=index)
    _sync(dev)
    return {"n": n, "batch_size": batch, "wall_s": time.perf_counter() - t0, "step_s": res.history.time_step[0],
            "images_per_s": res.timings["images_per_s"], "search_s": res.timings["search"],
            "peak_bytes": res.timings["peak_memory_bytes"], "bank_bytes": res.timings["bank_bytes"],
            "test_acc": res.final.get("test_acc"), "index": res.timings["index"],
            "index_recall": res.timings["index_recall"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes")
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 200_000, 500_000, 1_000_000])
    p.add_argument("--epoch-n", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--chunk-size", type=int, default=8192)
    p.add_argument("--budget", type=float, default=420.0, help="seconds for everything")
    p.add_argument("--index", default="auto", choices=("auto", "exact", "flat", "ivf", "hnsw"),
                   help="the epoch's neighbour index (auto: exact on a GPU, bgcn.index.resolve_index_kind)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    from bgcn.utils import versions

    if a.dry_run:
        a.device, a.sizes, a.epoch_n, a.batch_size, a.chunk_size = "cpu", [2000, 4000], 3000, 512, 512
    dev = torch.device(a.device)
    out = Path(a.out or (os.environ.get("OUT", str(ROOT / "benchmarks" / "results")) + "/gpu_scale.json"))
    rec = {"meta": {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
                    "versions": versions(), "device": str(dev),
                    "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None, "dry_run": a.dry_run},
           "graph": [], "epoch": None, "skipped": []}
    t_start = time.perf_counter()

    def save():
        atomic_write_text(out, json.dumps(rec, indent=1))

    last = {}
    for method in ("masked_softmax", "softmax"):
        for n in a.sizes:
            # estimate from the last size of this method: the cost is ~ N² (the exact search)
            est = last.get(method, (0, 0.0))
            guess = est[1] * (n / est[0]) ** 2 if est[0] else 0.0
            if time.perf_counter() - t_start + guess > a.budget:
                rec["skipped"].append({"method": method, "n": n, "reason": f"budget (estimated {guess:.0f} s)"})
                save()
                continue
            try:
                r = graph_step(n, 384, 10, method, dev, a.chunk_size)
            except torch.OutOfMemoryError as e:  # noqa: PERF203
                r = {"n": n, "method": method, "error": f"out of memory: {str(e)[:200]}"}
            rec["graph"].append(r)
            if "total_s" in r:
                last[method] = (n, r["total_s"])
                print(f"{method} N={n}: {r['total_s']:.2f} s (fwd {r['forward_s']:.2f}, bwd {r['backward_s']:.2f}), "
                      f"peak {(r['peak_bytes'] or 0) / 2**30:.2f} GiB", flush=True)
            save()
    left = a.budget - (time.perf_counter() - t_start)
    if left > 60 or a.dry_run:
        try:
            rec["epoch"] = epoch_step(a.epoch_n, dev, a.batch_size, a.index)
            print(f"mini-batch epoch N={a.epoch_n}: {rec['epoch']['wall_s']:.1f} s", flush=True)
        except torch.OutOfMemoryError as e:
            rec["epoch"] = {"n": a.epoch_n, "error": f"out of memory: {str(e)[:200]}"}
    else:
        rec["skipped"].append({"epoch_n": a.epoch_n, "reason": f"budget ({left:.0f} s left)"})
    rec["total_s"] = time.perf_counter() - t_start
    save()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
