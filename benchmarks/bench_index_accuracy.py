r"""What the approximate index costs in accuracy: the same runs with the exact search and with FAISS (chapter 11).

For each seed (label split, initialisation, dropout, batch order), one ``bgcn.train_minibatch`` run
per neighbour index (``exact``, the reference; ``ivf``; ``hnsw``; :mod:`bgcn.index`), everything
else equal; test accuracy at the best validation epoch, and the index's recall@k when built and
after the steps (``timings["index_recall"]``, averaged over the epochs). Differences are
seed-paired against ``exact`` (``bgcn.stats.paired_difference``: mean ± standard error, "beyond
noise" past two standard errors; 2 comparisons a data set).

* ``digits`` (N = 1 797): the chapter-08 setup of ``bench_staleness.py`` (``mlp_digits`` from the
  committed label-free pre-training, masked softmax at τ from the data, k = 10, 10 + 10 labels a
  class, AdamW 3e-4 / 2e-2), b = 256, 30 epochs of which 10 warm-up, 10 seeds. The inverted file
  has 4·√N ≈ 170 lists of about 10 rows and searches 16: a real approximation even here.
* ``fashion`` (5 000 Fashion-MNIST images, a stratified subset): ``identity_residual`` on the
  28×28 pixels (a residual head at the identity, chapter 13's strongest frozen graph on pixels
  first), masked softmax at τ from the data, k = 10, 10 + 10 labels a class, AdamW 1e-3 / 1e-2,
  b = 512, neighbour lists cached, 16 epochs of which 8 warm-up, 5 seeds.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python benchmarks/bench_index_accuracy.py    # about 12 min on one core

Writes ``benchmarks/results/index_accuracy.json``. No unit test checks these numbers.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

import bgcn  # noqa: E402
from bench_staleness import SETUP, machine_meta, make_model, tau_from_data  # noqa: E402
from bgcn.io import atomic_write_text  # noqa: E402
from bgcn.minibatch import train_minibatch  # noqa: E402
from bgcn.stats import paired_difference  # noqa: E402
from bgcn.utils import json_safe  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
KINDS = ("exact", "ivf", "hnsw")
CONFIG = {
    "digits": {"seeds": list(range(10)), "batch_size": 256, "epochs": 30, "warmup": 10, "lr_backbone": 3e-4,
               "lr_gcn": 2e-2, "cache_neighbours": False},
    "fashion": {"seeds": list(range(5)), "n": 5000, "batch_size": 512, "epochs": 16, "warmup": 8,
                "lr_backbone": 1e-3, "lr_gcn": 1e-2, "cache_neighbours": True},
}


def _digits():
    ds = bgcn.load_dataset("digits")
    tau = tau_from_data(ds.images, SETUP["k"])
    return ds.images, ds.labels, lambda seed: make_model(seed, tau), tau


def _fashion(n: int):
    ds = bgcn.load_dataset("fashion-mnist", subset=n)
    images = ds.images.float() / 255.0 if ds.images.dtype == torch.uint8 else ds.images
    side = images.shape[-1]
    feats = bgcn.extract_features(bgcn.create_backbone("identity_residual", img_size=side), images)
    tau = float(bgcn.suggest_tau(bgcn.cosine_similarity(feats), 10))

    def model(seed):
        bgcn.seed_everything(seed)
        return bgcn.build_model(bgcn.create_backbone("identity_residual", img_size=side), 10, k=10,
                                estimator="masked_softmax", tau=tau, hidden=64, dropout=0.5)

    return images, ds.labels, model, tau


def run_dataset(name: str, cfg: dict, verbose: bool = True) -> dict:
    images, labels, model, tau = _digits() if name == "digits" else _fashion(cfg["n"])
    runs = []
    for seed in cfg["seeds"]:
        tr, va, te = bgcn.label_masks(labels, 10, seed=seed)
        for kind in KINDS:
            t0 = time.perf_counter()
            res = train_minibatch(model(seed), images, labels, tr, va, te, batch_size=cfg["batch_size"],
                                  epochs=cfg["epochs"], warmup_epochs=cfg["warmup"], lr_backbone=cfg["lr_backbone"],
                                  lr_gcn=cfg["lr_gcn"], seed=seed, device="cpu", index=kind,
                                  cache_neighbours=cfg["cache_neighbours"])
            rec = res.timings["index_recall"]
            runs.append({"seed": seed, "index": kind, "test_acc": float(res.test_acc_at_best_val),
                         "time_s": time.perf_counter() - t0,
                         "recall_built": float(np.mean([r[1] for r in rec])) if rec else 1.0,
                         "recall_after": float(np.mean([r[2] for r in rec])) if rec else 1.0})
            if verbose:
                r = runs[-1]
                print(f"{name} seed {seed} {kind:>5}: test {r['test_acc']:.4f} recall {r['recall_built']:.3f} / "
                      f"{r['recall_after']:.3f} ({r['time_s']:.1f} s)", flush=True)
    acc = {kind: [r["test_acc"] for r in runs if r["index"] == kind] for kind in KINDS}
    summary = {kind: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)),
                      "recall_built": float(np.mean([r["recall_built"] for r in runs if r["index"] == kind])),
                      "recall_after": float(np.mean([r["recall_after"] for r in runs if r["index"] == kind]))}
               for kind, v in acc.items()}
    for kind in KINDS[1:]:
        summary[kind]["vs_exact"] = paired_difference(acc[kind], acc["exact"])
    return {"config": cfg, "n": int(len(labels)), "tau": tau, "runs": runs, "summary": summary}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(CONFIG), choices=list(CONFIG))
    p.add_argument("--out", type=Path, default=RESULTS / "index_accuracy.json")
    p.add_argument("--quick", action="store_true", help="one seed, 3 epochs, 1 000 Fashion images: checks the script")
    args = p.parse_args(argv)
    config = {name: ({**cfg, "seeds": [0], "epochs": 3, "warmup": 1, "n": 1000} if args.quick else cfg)
              for name, cfg in CONFIG.items()}
    data = {"meta": machine_meta(), "comparisons_per_dataset": len(KINDS) - 1}
    for name in args.datasets:
        data[name] = run_dataset(name, config[name])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(json_safe(data), indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
