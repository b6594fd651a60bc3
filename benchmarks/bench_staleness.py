r"""How stale does the feature bank get, and does mini-batch training match full batch? (chapter 11)

Two measurements on the digits (N = 1797), in the setup of the chapter-08 experiment
(``bgcn.experiment.FULL``): backbone ``mlp_digits`` loaded from the committed label-free
pre-training ``results/pretrained_mlp_digits.pt``, GCN hidden 64, dropout 0.5, k = 10,
estimator ``masked_softmax`` at τ from the data (``bgcn.suggest_tau``, top-k mass 1/2),
10 labelled + 10 validation images a class (``bgcn.label_masks``), AdamW with
``lr_backbone`` = 3e-4 and ``lr_gcn`` = 2e-2, a warm-up that trains the GCN alone first.

**1. Staleness** (``staleness``). ``bgcn.minibatch.train_minibatch`` with batch size b and
``bank_refresh`` r ∈ {0 (never), 1 (every epoch), 5}; after each epoch's steps (its
``callback(epoch, model, bank)``, before the evaluation and the refresh) the bank B is compared
with fresh features F = f_θ(X) of the current backbone (a no-grad pass,
``FeatureBank.from_backbone``):

.. math::
    \text{recall@k} = \frac{1}{Nk}\sum_i \big|\mathcal N_k^B(i) \cap \mathcal N_k^F(i)\big|,
    \qquad \text{drift}_i = \frac{\lVert B_i - F_i\rVert}{\lVert F_i\rVert}

with :math:`\mathcal N_k^B(i)` the k nearest bank rows of bank row i (``FeatureBank.search``,
self excluded) and :math:`\mathcal N_k^F(i)` the same among the fresh features. Every node is in
exactly one batch an epoch and its batch writes its row, so at the callback row i is as old as
the steps taken since its batch; the refresh decides what the *next* epoch starts from (the
fresh features, recall 1, after a refresh; otherwise the bank measured here). Both are recorded:
``recall`` (end of the epoch) and ``recall_next_start``. During the warm-up the backbone does not
move and the bank is not written, so recall is 1 and drift 0 there. ``--full`` adds a second
backbone learning rate (10x, 3e-3): a bank under a fast-moving backbone.

**2. Mini-batch vs full batch** (``accuracy``). For each seed (label split, initialisation,
dropout), ``train_minibatch`` with b = 256 (r = 1) against ``bgcn.train`` (full batch), same
epochs, learning rates, warm-up: test accuracy at the best validation epoch (among the joint
epochs) and at the last epoch; mean ± std (ddof 1) and the paired differences
``bgcn.experiment.paired_difference`` (verdict "within noise" when |mean| ≤ 2 standard errors).
Sanity: with b ≥ N one batch is the full batch; the largest |loss difference| over the epochs of
``train_minibatch(batch_size=N)`` and ``train`` is recorded (float32 and float64).

Usage (from the repository root)::

    python benchmarks/bench_staleness.py          # b ∈ {128, 512}, 30 epochs (10 warm-up),
                                                  # 3 seeds of 60 epochs; about 1.5 min on 2 idle cores
    python benchmarks/bench_staleness.py --full   # b ∈ {64, 128, 256, 512}, 60 epochs (40 warm-up),
                                                  # lr_backbone 3e-4 and 3e-3, 5 seeds; about 10 min

Writes ``benchmarks/results/staleness.json`` and ``staleness.png`` (``staleness_full.*`` with
``--full``; ``--out`` to choose). ``--plot-only`` redraws the PNG from the JSON. Timings are not
the point here; the meta records the machine anyway.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import bgcn  # noqa: E402
from bgcn.bank import FeatureBank, bank_staleness as _bank_staleness  # noqa: E402
from bgcn.data import label_masks, load_dataset  # noqa: E402
from bgcn.experiment import paired_difference  # noqa: E402
from bgcn.minibatch import train_minibatch  # noqa: E402
from bgcn.model import build_model  # noqa: E402
from bgcn.train import train  # noqa: E402
from bgcn.io import atomic_write as _atomic_write, atomic_write_text  # noqa: E402
from bgcn.utils import json_safe  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PRETRAINED = ROOT / "results" / "pretrained_mlp_digits.pt"

#: the chapter-08 experiment's settings (bgcn.experiment.FULL) and this benchmark's grids
SETUP = {"backbone": "mlp_digits", "k": 10, "estimator": "masked_softmax", "hidden": 64, "dropout": 0.5,
         "labels_per_class": 10, "lr_backbone": 3e-4, "lr_gcn": 2e-2, "weight_decay": 5e-4}
DEFAULT = {"batch_sizes": [128, 512], "refresh": [0, 1, 5], "staleness_epochs": 30, "staleness_warmup": 10,
           "staleness_seeds": [0], "stress_lr": None, "acc_seeds": [0, 1, 2], "acc_epochs": 60, "acc_warmup": 40,
           "acc_batch_size": 256}
FULL = {**DEFAULT, "batch_sizes": [64, 128, 256, 512], "staleness_epochs": 60, "staleness_warmup": 40,
        "stress_lr": 3e-3, "acc_seeds": [0, 1, 2, 3, 4]}


def machine_meta(device: str = "cpu", argv=None) -> dict:
    """Machine, versions, threads, load average, date and the exact command (for every JSON here)."""
    args = sys.argv[1:] if argv is None else list(argv)
    meta = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python", os.path.relpath(sys.argv[0], ROOT) if sys.argv[0] else "?", *args]),
            "machine": platform.machine(), "platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "bgcn": bgcn.__version__, "device": str(device),
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        meta["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return meta


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` atomically: :func:`bgcn.io.atomic_write_text` (kept for bench_overhead's import)."""
    atomic_write_text(path, text)


# ---------------------------------------------------------------------------------------------
# the measurement
# ---------------------------------------------------------------------------------------------
def write_json_and_plot(data: dict, out: Path, plot) -> None:
    """Write ``data`` to ``out`` atomically (JSON), draw ``plot(data, out.with_suffix(".png"))``, say so."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(json_safe(data), indent=1))
    plot(data, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


def knn_recall(idx_a: torch.Tensor, idx_b: torch.Tensor) -> torch.Tensor:
    r"""Per-row recall :math:`|\mathcal N_a(i)\cap\mathcal N_b(i)|/k` of two (N, k) neighbour lists -> (N,)."""
    if idx_a.shape != idx_b.shape or idx_a.dim() != 2:
        raise ValueError(f"idx_a {tuple(idx_a.shape)} and idx_b {tuple(idx_b.shape)} must both be (N, k)")
    hit = (idx_a.unsqueeze(2) == idx_b.unsqueeze(1)).any(2)
    return hit.double().sum(1) / idx_a.shape[1]


def bank_staleness(model, bank: FeatureBank, images: torch.Tensor, k: int, chunk_size: int = 4096,
                   embed_batch_size: int = 512) -> dict:
    r"""Recall@k of the bank's kNN graph against the fresh one, and the per-row feature drift
    (:func:`bgcn.bank.bank_staleness`, which the book's chapter 11 calls too).

    Shapes: bank.features (N, D); images (N, C_in, H, W) -> scalars (recall, drift statistics)
    """
    return _bank_staleness(model.backbone, bank, images, k, chunk_size, embed_batch_size)


def tau_from_data(images: torch.Tensor, k: int, pretrained=PRETRAINED) -> float:
    bb = bgcn.create_backbone(SETUP["backbone"], pretrained_file=pretrained)
    f = bgcn.extract_features(bb, images)
    return float(bgcn.suggest_tau(bgcn.cosine_similarity(f), k))


def make_model(seed: int, tau: float, pretrained=PRETRAINED, dtype=torch.float32, num_classes: int = 10):
    bgcn.seed_everything(seed)
    bb = bgcn.create_backbone(SETUP["backbone"], pretrained_file=pretrained)
    m = build_model(bb, num_classes, k=SETUP["k"], estimator=SETUP["estimator"], tau=tau, hidden=SETUP["hidden"],
                    dropout=SETUP["dropout"])
    return m.to(dtype)


def staleness_run(images, labels, masks, *, tau, batch_size, bank_refresh, epochs, warmup, seed=0,
                  lr_backbone=SETUP["lr_backbone"], lr_gcn=SETUP["lr_gcn"], pretrained=PRETRAINED,
                  chunk_size=4096) -> dict:
    """One ``train_minibatch`` run with the staleness probe after every epoch; returns its record."""
    tr, va, te = masks
    model = make_model(seed, tau, pretrained)
    k = model.k
    curve: list[dict] = []

    def probe(epoch, m, bank):
        rec = {"epoch": int(epoch), **bank_staleness(m, bank, images, k, chunk_size)}
        refreshed = bank_refresh > 0 and epoch % bank_refresh == 0
        rec["refreshed_after"] = bool(refreshed)
        rec["recall_next_start"] = 1.0 if refreshed else rec["recall"]
        curve.append(rec)

    t0 = time.perf_counter()
    res = train_minibatch(model, images, labels, tr, va, te, batch_size=batch_size, epochs=epochs,
                          warmup_epochs=warmup, lr_backbone=lr_backbone, lr_gcn=lr_gcn,
                          weight_decay=SETUP["weight_decay"], seed=seed, device="cpu", bank_refresh=bank_refresh,
                          chunk_size=chunk_size, callback=probe)
    joint = [c for c in curve if c["epoch"] > warmup]
    return {"batch_size": int(batch_size), "bank_refresh": int(bank_refresh), "seed": int(seed),
            "lr_backbone": float(lr_backbone), "lr_gcn": float(lr_gcn), "epochs": int(epochs),
            "warmup_epochs": int(warmup), "steps_per_epoch": math.ceil(images.shape[0] / batch_size),
            "curve": curve, "final_recall": curve[-1]["recall"],
            "mean_recall_joint": float(np.mean([c["recall"] for c in joint])) if joint else 1.0,
            "mean_recall_next_start_joint": float(np.mean([c["recall_next_start"] for c in joint])) if joint else 1.0,
            "final_drift_mean": curve[-1]["drift_mean"], "test_acc_at_best_val": res.test_acc_at_best_val,
            "final_test_acc": res.final["test_acc"], "time_s": time.perf_counter() - t0}


def accuracy_pair(images, labels, masks, *, tau, seed, batch_size, epochs, warmup, pretrained=PRETRAINED,
                  dtype=torch.float32, bank_refresh=1) -> dict:
    """``train_minibatch`` (batch b) and ``bgcn.train`` (full batch) from the same seed and settings."""
    tr, va, te = masks
    x = images.to(dtype)
    kw = dict(epochs=epochs, warmup_epochs=warmup, lr_backbone=SETUP["lr_backbone"], lr_gcn=SETUP["lr_gcn"],
              weight_decay=SETUP["weight_decay"], seed=seed, device="cpu")
    t0 = time.perf_counter()
    mb = train_minibatch(make_model(seed, tau, pretrained, dtype), x, labels, tr, va, te, batch_size=batch_size,
                         bank_refresh=bank_refresh, **kw)
    t1 = time.perf_counter()
    fb = train(make_model(seed, tau, pretrained, dtype), x, labels, tr, va, te, graph_every=0, progress=False, **kw)
    t2 = time.perf_counter()
    out = {"seed": int(seed), "batch_size": int(batch_size)}
    for name, r, dt in (("minibatch", mb, t1 - t0), ("full", fb, t2 - t1)):
        out[name] = {"test_acc_at_best_val": r.test_acc_at_best_val, "best_epoch": r.best_epoch,
                     "best_val_acc": r.best_val_acc, "final_test_acc": r.final["test_acc"],
                     "loss": [float(v) for v in r.history.loss], "time_s": dt}
    out["max_abs_loss_diff"] = float(np.max(np.abs(np.subtract(out["minibatch"]["loss"], out["full"]["loss"]))))
    return out


def verdict(pd: dict) -> str:
    """The two-standard-error rule of ``bgcn.experiment.paired_difference``, as a word."""
    return "beyond noise" if pd["beyond_noise"] else "within noise"


def accuracy_section(images, labels, *, tau, seeds, batch_size, epochs, warmup, pretrained=PRETRAINED,
                     verbose=True) -> dict:
    n = images.shape[0]
    pairs = []
    for s in seeds:
        masks = label_masks(labels, SETUP["labels_per_class"], seed=s)
        p = accuracy_pair(images, labels, masks, tau=tau, seed=s, batch_size=batch_size, epochs=epochs,
                          warmup=warmup, pretrained=pretrained)
        pairs.append(p)
        if verbose:
            print(f"  seed {s}: b={batch_size} test@bestval {p['minibatch']['test_acc_at_best_val']:.4f} "
                  f"final {p['minibatch']['final_test_acc']:.4f} | full {p['full']['test_acc_at_best_val']:.4f} "
                  f"final {p['full']['final_test_acc']:.4f}", flush=True)
    summary = {}
    for key in ("test_acc_at_best_val", "final_test_acc"):
        runs = [{"method": eng, "seed": p["seed"], key: p[eng][key]} for p in pairs for eng in ("minibatch", "full")]
        pd = paired_difference(runs, "minibatch", "full", SETUP["labels_per_class"], key=key)
        summary[key] = {eng: {"mean": float(np.mean([p[eng][key] for p in pairs])),
                              "std": float(np.std([p[eng][key] for p in pairs], ddof=1)) if len(pairs) > 1 else 0.0}
                        for eng in ("minibatch", "full")}
        summary[key]["paired_difference"] = {k_: pd[k_] for k_ in ("mean", "std", "se", "n", "wins", "diffs")}
        summary[key]["verdict"] = verdict(pd)
    # b >= N: one batch is the full batch (seed 0), in float32 and in float64
    sanity = {}
    masks = label_masks(labels, SETUP["labels_per_class"], seed=seeds[0])
    for dname, dt in (("float32", torch.float32), ("float64", torch.float64)):
        p = accuracy_pair(images, labels, masks, tau=tau, seed=seeds[0], batch_size=n, epochs=epochs, warmup=warmup,
                          pretrained=pretrained, dtype=dt)
        sanity[dname] = {"max_abs_loss_diff": p["max_abs_loss_diff"],
                         "test_acc_at_best_val": [p["minibatch"]["test_acc_at_best_val"],
                                                  p["full"]["test_acc_at_best_val"]],
                         "final_test_acc": [p["minibatch"]["final_test_acc"], p["full"]["final_test_acc"]]}
    if verbose:
        print(f"  b >= N: max |loss diff| float32 {sanity['float32']['max_abs_loss_diff']:.2e}, "
              f"float64 {sanity['float64']['max_abs_loss_diff']:.2e}", flush=True)
    return {"batch_size": int(batch_size), "epochs": int(epochs), "warmup_epochs": int(warmup),
            "seeds": [int(s) for s in seeds], "pairs": pairs, "summary": summary,
            "one_batch_equals_full": {"batch_size": int(n), "seed": int(seeds[0]), **sanity}}


def run(cfg: dict, *, pretrained=PRETRAINED, images=None, labels=None, verbose=True) -> dict:
    """Both sections on the digits (or on ``images, labels`` if given); returns the JSON-ready dict."""
    if images is None:
        ds = load_dataset("digits")
        images, labels = ds.images, ds.labels
    k = SETUP["k"]
    tau = tau_from_data(images, k, pretrained)
    t0 = time.perf_counter()
    stale = []
    lrs = [SETUP["lr_backbone"]] + ([cfg["stress_lr"]] if cfg.get("stress_lr") else [])
    for seed in cfg["staleness_seeds"]:
        masks = label_masks(labels, SETUP["labels_per_class"], seed=seed)
        for lr in lrs:
            for b in cfg["batch_sizes"]:
                for r in cfg["refresh"]:
                    rec = staleness_run(images, labels, masks, tau=tau, batch_size=b, bank_refresh=r,
                                        epochs=cfg["staleness_epochs"], warmup=cfg["staleness_warmup"], seed=seed,
                                        lr_backbone=lr, pretrained=pretrained)
                    stale.append(rec)
                    if verbose:
                        print(f"  lr_bb={lr:g} b={b:4d} refresh={r}: recall@{k} last {rec['final_recall']:.4f}, "
                              f"mean(joint) {rec['mean_recall_joint']:.4f}, next-start mean "
                              f"{rec['mean_recall_next_start_joint']:.4f}, drift {rec['final_drift_mean']:.2e} "
                              f"({rec['time_s']:.1f} s)", flush=True)
    t1 = time.perf_counter()
    acc = accuracy_section(images, labels, tau=tau, seeds=cfg["acc_seeds"], batch_size=cfg["acc_batch_size"],
                           epochs=cfg["acc_epochs"], warmup=cfg["acc_warmup"], pretrained=pretrained, verbose=verbose)
    t2 = time.perf_counter()
    return {"setup": {**SETUP, "tau": tau, "num_images": int(images.shape[0]),
                      "pretrained": os.path.relpath(pretrained, ROOT) if Path(pretrained).is_absolute() else
                      str(pretrained)},
            "config": cfg, "staleness": stale, "accuracy": acc,
            "wall_s": {"staleness": t1 - t0, "accuracy": t2 - t1}}


# ---------------------------------------------------------------------------------------------
# the figure
# ---------------------------------------------------------------------------------------------
def plot(data: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = data["staleness"]
    lrs = sorted({r["lr_backbone"] for r in st})
    bss = sorted({r["batch_size"] for r in st})
    refs = sorted({r["bank_refresh"] for r in st})
    fig, axes = plt.subplots(len(lrs), len(bss), figsize=(max(7.0, 3.3 * len(bss)), 1.0 + 2.9 * len(lrs)),
                             squeeze=False, sharex=True)
    colors = {0: "tab:red", 1: "tab:blue", 5: "tab:green"}
    k = data["setup"]["k"]
    for i, lr in enumerate(lrs):
        for j, b in enumerate(bss):
            ax = axes[i][j]
            for r in refs:
                runs = [x for x in st
                        if x["lr_backbone"] == lr and x["batch_size"] == b and x["bank_refresh"] == r]
                if not runs:
                    continue
                ep = [c["epoch"] for c in runs[0]["curve"]]
                rec = np.mean([[c["recall"] for c in x["curve"]] for x in runs], axis=0)
                nxt = np.mean([[c["recall_next_start"] for c in x["curve"]] for x in runs], axis=0)
                lab = {0: "never", 1: "every epoch", 5: "every 5"}.get(r, f"every {r}")
                ax.plot(ep, rec, color=colors.get(r, None), label=f"refresh {lab}", lw=1.4)
                if r > 0:
                    ax.plot(ep, nxt, color=colors.get(r, None), ls=":", lw=1.0)
            warm = runs[0]["warmup_epochs"] if runs else 0
            ax.axvspan(0.5, warm + 0.5, color="0.9", zorder=0)
            ax.set_title(f"b = {b}, lr_backbone = {lr:g}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"recall@{k} of the bank's graph")
            if i == len(lrs) - 1:
                ax.set_xlabel("epoch (grey: warm-up)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    meta = data["meta"]
    fig.suptitle(f"Bank staleness on the digits (N = {data['setup']['num_images']}, k = {k})\nsolid: after the "
                 f"epoch's steps; dotted: what the next epoch starts from\ntorch {meta['torch']}, "
                 f"{meta['torch_threads']} thread(s), {meta['date'][:10]}", fontsize=8)
    fig.tight_layout()
    _atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
    return path


def summary_lines(data: dict) -> list[str]:
    out = []
    for r in data["staleness"]:
        out.append(f"lr_backbone {r['lr_backbone']:g}, b {r['batch_size']}, refresh {r['bank_refresh']}: last recall "
                   f"{r['final_recall']:.4f}, mean over joint epochs {r['mean_recall_joint']:.4f} "
                   f"(next start {r['mean_recall_next_start_joint']:.4f}), last drift {r['final_drift_mean']:.2e}")
    acc = data["accuracy"]
    for key, s in acc["summary"].items():
        pd = s["paired_difference"]
        out.append(f"{key}: mini-batch b={acc['batch_size']} {100 * s['minibatch']['mean']:.2f} ± "
                   f"{100 * s['minibatch']['std']:.2f} %, full {100 * s['full']['mean']:.2f} ± "
                   f"{100 * s['full']['std']:.2f} %, paired diff {100 * pd['mean']:+.2f} ± {100 * pd['se']:.2f} "
                   f"(se) points over {pd['n']} seeds: {s['verdict']}")
    one = acc["one_batch_equals_full"]
    out.append(f"b = N = {one['batch_size']}: max |loss diff| float32 {one['float32']['max_abs_loss_diff']:.2e}, "
               f"float64 {one['float64']['max_abs_loss_diff']:.2e}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true",
                    help="four batch sizes, 60 epochs, a 10x backbone lr, 5 accuracy seeds (~10 min)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch.set_num_threads (recorded in meta; 1: robust on a shared machine)")
    ap.add_argument("--out", default=None, help="JSON path (default results/staleness[_full].json)")
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG from the JSON")
    a = ap.parse_args(argv)
    out = Path(a.out) if a.out else RESULTS / ("staleness_full.json" if a.full else "staleness.json")
    png = out.with_suffix(".png")
    if a.plot_only:
        print(f"wrote {plot(json.loads(out.read_text()), png)}")
        return 0
    torch.set_num_threads(a.threads)
    cfg = dict(FULL if a.full else DEFAULT)
    meta = machine_meta("cpu", argv)
    data = run(cfg)
    meta["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    data = {"meta": meta, **data}
    data["summary"] = summary_lines(data)
    atomic_write(out, json.dumps(json_safe(data), indent=1) + "\n")
    plot(data, png)
    print("\n".join(data["summary"]))
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
