"""Peak memory and time of one training epoch against N: mini-batch over a feature bank vs full batch.

Both engines train the same ``EndToEnd`` (backbone ``mlp_digits``, GCN hidden 64, k neighbours,
``masked_softmax`` weights, float32) on generated images (``bgcn.load_dataset("synthetic", n=N)``,
10 labelled images a class):

* ``minibatch``: one epoch of ``bgcn.minibatch`` steps (batch b, ``stratified_batches``,
  ``minibatch_loss`` + backward + AdamW step); the bank (N·D floats) is filled before and its
  bytes are reported apart; searches in ``chunk_size`` x ``bank_chunk`` blocks. Memory should be
  flat in N apart from the bank and the images; time
  grows as N² per epoch (each step's exact search scans the bank), the search's share reported.
* ``minibatch_cached``: the same with the bank's neighbour lists kept (``cache_neighbours``):
  out-of-batch rows read, not searched; the one full search that fills them is timed apart.
* ``full``: one full-batch step of ``bgcn.train`` (``model(images)``, dense N×N similarity with
  autograd, backward, AdamW step), up to ``--max-full-n``.

Peak memory is ``bgcn.scaling.peak_memory``: the rise of the process's peak resident set size
(Linux ``VmHWM``) around the epoch, on the CPU; CUDA ``max_memory_allocated`` on a GPU.

Usage (from the repository root)::

    python benchmarks/bench_minibatch.py       # N = 2 000 .. 20 000 (full batch to 10 000), < 1 min
    OMP_NUM_THREADS=1 python benchmarks/bench_minibatch.py --sizes 50000 100000 --max-full-n 0 \
        --out benchmarks/results/minibatch_large.json   # about 4 min on one core (committed)

Writes ``benchmarks/results/minibatch.json`` by default. No unit test checks these timings.
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bgcn.backbone import create_backbone  # noqa: E402
from bgcn.bank import FeatureBank  # noqa: E402
from bgcn.data import label_masks, load_dataset  # noqa: E402
from bgcn.minibatch import minibatch_loss, stratified_batches  # noqa: E402
from bgcn.model import build_model  # noqa: E402
from bgcn.scaling import peak_memory  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SIZES = [2000, 5000, 10000, 20000]


def _model(k: int, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(create_backbone("mlp_digits"), 10, k=k, estimator="masked_softmax", tau=0.1, hidden=64)


def _optimizer(model):
    bb = {id(p) for p in model.backbone.parameters()}
    return torch.optim.AdamW([{"params": [p for p in model.parameters() if id(p) not in bb], "lr": 1e-2},
                              {"params": list(model.backbone.parameters()), "lr": 1e-3}], weight_decay=5e-4)


def minibatch_epoch(images, labels, tr, k, batch_size, chunk_size, bank_chunk, dev, cache=False):
    model = _model(k).to(dev)
    opt = _optimizer(model)
    bank = FeatureBank.from_backbone(model, images, 1024, dev)
    t0 = time.perf_counter()
    if cache:
        bank.fill_neighbours(k, chunk_size, bank_chunk)
    t_fill_neighbours = time.perf_counter() - t0
    labels, tr_dev = labels.to(dev), tr.to(dev)
    gen = torch.Generator().manual_seed(0)
    stats = {"search_s": 0.0, "steps": 0, "max_subgraph_nodes": 0}

    def epoch():
        model.train()
        for batch in stratified_batches(tr, batch_size, gen):
            opt.zero_grad(set_to_none=True)
            loss, info = minibatch_loss(model, images, batch, bank, labels, tr_dev, chunk_size=chunk_size,
                                        bank_chunk=bank_chunk, use_neighbours=cache)
            loss.backward()
            opt.step()
            stats["search_s"] += info["search_s"]
            stats["steps"] += 1
            stats["max_subgraph_nodes"] = max(stats["max_subgraph_nodes"], info["nodes"])
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    t0 = time.perf_counter()
    _, peak = peak_memory(epoch, device=dev)
    dt = time.perf_counter() - t0
    return {"time_s": dt, "peak_bytes": peak, "bank_bytes": bank.nbytes, **stats,
            "search_share": stats["search_s"] / dt, "fill_neighbours_s": t_fill_neighbours}


def full_epoch(images, labels, tr, k, dev):
    model = _model(k).to(dev)
    opt = _optimizer(model)
    x, labels, tr = images.to(dev), labels.to(dev), tr.to(dev)

    def epoch():
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = F.nll_loss(model(x)[tr], labels[tr])
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    t0 = time.perf_counter()
    _, peak = peak_memory(epoch, device=dev)
    return {"time_s": time.perf_counter() - t0, "peak_bytes": peak}


def run(sizes, *, k=10, batch_size=256, chunk_size=1024, bank_chunk=4096, max_full_n=10000, device="cpu",
        cached=True, verbose=True) -> dict:
    dev = torch.device(device)
    out = []
    for n in sizes:
        ds = load_dataset("synthetic", n=n, num_classes=10, seed=0)
        tr, _, _ = label_masks(ds.labels, 10, val_per_class=0, seed=0)
        rec = {"n": n, "images_bytes": ds.images.numel() * ds.images.element_size(),
               "minibatch": minibatch_epoch(ds.images, ds.labels, tr, k, batch_size, chunk_size, bank_chunk,
                                                    dev)}
        gc.collect()
        if cached:
            rec["minibatch_cached"] = minibatch_epoch(ds.images, ds.labels, tr, k, batch_size, chunk_size,
                                                      bank_chunk, dev, cache=True)
            gc.collect()
        if n <= max_full_n:
            rec["full"] = full_epoch(ds.images, ds.labels, tr, k, dev)
            gc.collect()
        out.append(rec)
        if verbose:
            mb = rec["minibatch"]
            fb = rec.get("full")
            print(f"N={n:>7}: minibatch {mb['time_s']:.2f} s/epoch, peak {(mb['peak_bytes'] or 0) / 2**20:.1f} MiB "
                  f"(bank {mb['bank_bytes'] / 2**20:.1f} MiB), search {100 * mb['search_share']:.0f}%"
                  + ("" if "minibatch_cached" not in rec else
                     f" | cached lists {rec['minibatch_cached']['time_s']:.2f} s "
                     f"(+{rec['minibatch_cached']['fill_neighbours_s']:.2f} s to fill them)")
                  + ("" if fb is None else f" | full {fb['time_s']:.2f} s, peak {(fb['peak_bytes'] or 0) / 2**20:.1f}"
                                           f" MiB"), flush=True)
    meta = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "device": str(dev), "k": k, "batch_size": batch_size, "chunk_size": chunk_size,
            "bank_chunk": bank_chunk, "backbone": "mlp_digits",
            "estimator": "masked_softmax", "dtype": "float32"}
    return {"meta": meta, "results": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--bank-chunk", type=int, default=4096)
    ap.add_argument("--max-full-n", type=int, default=10000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-cached", action="store_true", help="skip the run with cached neighbour lists")
    ap.add_argument("--out", default=str(RESULTS / "minibatch.json"))
    a = ap.parse_args(argv)
    data = run(a.sizes, k=a.k, batch_size=a.batch_size, chunk_size=a.chunk_size, bank_chunk=a.bank_chunk,
               max_full_n=a.max_full_n,
               device=a.device, cached=not a.no_cached)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
