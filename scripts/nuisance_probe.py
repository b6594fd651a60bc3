"""Probe the nuisance-shapes positive control (issue 11): does the frozen kNN graph follow the background?

For ``load_dataset("nuisance-shapes", n=1000)`` (defaults of :func:`bgcn.data.make_nuisance_shapes`)
and two feature sets, raw pixels and a frozen ImageNet EfficientNet-Lite0
(``create_backbone("efficientnet_lite0_imagenet")``, eval mode, no grad), it measures

* the edge homophily of the cosine 10-NN graph (self excluded) w.r.t. the shape label y and the
  background label z: h = (1/Nk) Σ_i Σ_{j∈N_k(i)} [y_i = y_j]  (chance ≈ 1/C for balanced labels);
* 5-fold cosine 10-NN classification accuracy of the shape (majority vote, ties to the nearest);

then trains ``create_backbone("cnn_digits", in_chans=3)`` + a linear head, supervised, on 500
labelled images and reports its accuracy on the other 500 (is the shape learnable at all?), and
sweeps ``contrast`` for the frozen extractor. Writes ``results/nuisance_probe.json``.

    OMP_NUM_THREADS=1 python scripts/nuisance_probe.py [--quick] [--out results/nuisance_probe.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import bgcn
from bgcn.backbone import extract_features
from bgcn.data import make_nuisance_shapes
from bgcn.graph import edge_homophily
from bgcn.io import atomic_write_text

K = 10


def knn_cv_accuracy(feats: torch.Tensor, labels: torch.Tensor, k: int = K, folds: int = 5, seed: int = 0) -> float:
    """Mean over ``folds`` folds of cosine k-NN majority-vote accuracy (train = the other folds)."""
    f = torch.nn.functional.normalize(feats.double(), dim=1)
    n, c = f.shape[0], int(labels.max()) + 1
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    accs = []
    for part in perm.chunk(folds):
        test = torch.zeros(n, dtype=torch.bool)
        test[part] = True
        tr = (~test).nonzero(as_tuple=True)[0]
        sim = f[test] @ f[tr].T
        nb = sim.topk(k, dim=1).indices
        votes = torch.zeros(int(test.sum()), c, dtype=torch.float64)
        w = 1.0 + 1e-6 * torch.arange(k, 0, -1, dtype=torch.float64)  # break ties towards nearer ones
        votes.scatter_add_(1, labels[tr][nb], w.expand_as(nb).contiguous())
        accs.append(float((votes.argmax(1) == labels[test]).double().mean()))
    return float(np.mean(accs))


def graph_stats(feats: torch.Tensor, ds) -> dict:
    idx = bgcn.knn_indices(feats.double(), K, exclude_self=True)
    return {"homophily_shape": edge_homophily(idx, ds.labels),
            "homophily_nuisance": edge_homophily(idx, ds.nuisance),
            "knn_acc_shape_5fold": knn_cv_accuracy(feats, ds.labels),
            "knn_acc_nuisance_5fold": knn_cv_accuracy(feats, ds.nuisance)}


def effnet_features(images: torch.Tensor) -> torch.Tensor:
    bb = bgcn.create_backbone("efficientnet_lite0_imagenet").eval()
    return extract_features(bb, images, batch_size=250)


def train_cnn(ds, n_train: int = 500, epochs: int = 40, seed: int = 0) -> dict:
    """Supervised cnn_digits(in_chans=3) + linear head on n_train images (stratified), test on the rest."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    c = ds.num_classes
    per = n_train // c
    tr = torch.cat([(ds.labels == k).nonzero(as_tuple=True)[0][:per] for k in range(c)])
    test = torch.ones(len(ds.labels), dtype=torch.bool)
    test[tr] = False
    bb = bgcn.create_backbone("cnn_digits", in_chans=3)
    model = torch.nn.Sequential(bb, torch.nn.Linear(bb.num_features, c))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = ds.images, ds.labels
    x = (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-3)  # per image
    hist = []
    for ep in range(epochs):
        model.train()
        order = tr[torch.randperm(tr.numel(), generator=g)]
        for b in order.split(50):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[b]), y[b])
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(x[test]).argmax(1) == y[test]).double().mean())
        hist.append(round(acc, 4))
    return {"n_train": int(tr.numel()), "n_test": int(test.sum()), "epochs": epochs,
            "optimizer": "Adam lr 1e-3, batch 50",
            "input": "per-image standardised (x - mean_hw) / std",
            "test_acc_last": hist[-1], "test_acc_best": max(hist), "test_acc_per_epoch": hist}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="n=200, 2 epochs, no sweep (a smoke run)")
    ap.add_argument("--out", default="results/nuisance_probe.json")
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.epochs = 200, 2
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t0 = time.perf_counter()
    ds = make_nuisance_shapes(n=a.n, seed=a.seed)
    c, m = ds.num_classes, len(ds.nuisance_names)
    res: dict = {"dataset": {"name": ds.name, "n": a.n, "seed": a.seed, "num_classes": c, "num_nuisance": m,
                             "class_names": ds.class_names, "image_shape": list(ds.image_shape),
                             "defaults": {"nuisance": "texture", "object_size": 0.2, "size_jitter": 0.25,
                                          "contrast": 0.35, "texture": 0.6, "noise": 0.03}},
                 "chance": {"shape": 1 / c, "nuisance": 1 / m}, "k": K}
    res["pixels"] = graph_stats(ds.images.flatten(1), ds)
    t = time.perf_counter()
    res["efficientnet_lite0_imagenet"] = graph_stats(effnet_features(ds.images), ds)
    res["efficientnet_lite0_imagenet"]["img_size"] = 64
    res["efficientnet_lite0_imagenet"]["extract_s"] = round(time.perf_counter() - t, 2)
    if not a.quick:
        sweep = []
        for contrast in (0.2, 0.35, 0.6, 1.0):
            d2 = make_nuisance_shapes(n=a.n, seed=a.seed, contrast=contrast)
            row = {"contrast": contrast, "pixels": graph_stats(d2.images.flatten(1), d2),
                   "efficientnet": graph_stats(effnet_features(d2.images), d2)}
            sweep.append(row)
        res["contrast_sweep"] = sweep
        d2 = make_nuisance_shapes(n=a.n, seed=a.seed, texture=1.0)
        res["texture_1.0"] = {"pixels": graph_stats(d2.images.flatten(1), d2),
                              "efficientnet": graph_stats(effnet_features(d2.images), d2)}
    t = time.perf_counter()
    res["cnn_supervised"] = train_cnn(ds, n_train=min(500, a.n // 2), epochs=a.epochs, seed=a.seed)
    res["cnn_supervised"]["train_s"] = round(time.perf_counter() - t, 1)
    res["meta"] = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "torch": torch.__version__, "python": platform.python_version(),
                   "threads": torch.get_num_threads(),
                   "command": "OMP_NUM_THREADS=1 python scripts/nuisance_probe.py " + " ".join(sys.argv[1:]),
                   "wall_s": round(time.perf_counter() - t0, 1)}
    out = Path(a.out)
    atomic_write_text(out, json.dumps(res, indent=2))

    print(f"nuisance-shapes n={a.n}: chance shape {1 / c:.3f}, nuisance {1 / m:.3f}; {K}-NN cosine graph")
    for key in ("pixels", "efficientnet_lite0_imagenet"):
        r = res[key]
        print(f"  {key:28s} h(shape)={r['homophily_shape']:.3f} h(nuisance)={r['homophily_nuisance']:.3f} "
              f"kNN acc shape={r['knn_acc_shape_5fold']:.3f} nuisance={r['knn_acc_nuisance_5fold']:.3f}")
    for row in res.get("contrast_sweep", []):
        e = row["efficientnet"]
        print(f"  contrast {row['contrast']:.2f}: effnet h(shape)={e['homophily_shape']:.3f} "
              f"h(nuisance)={e['homophily_nuisance']:.3f} kNN acc shape={e['knn_acc_shape_5fold']:.3f}")
    if "texture_1.0" in res:
        e = res["texture_1.0"]["efficientnet"]
        print(f"  texture 1.0 (contrast 0.35): effnet h(shape)={e['homophily_shape']:.3f} "
              f"h(nuisance)={e['homophily_nuisance']:.3f} kNN acc shape={e['knn_acc_shape_5fold']:.3f}")
    cs = res["cnn_supervised"]
    print(f"  cnn_digits supervised on {cs['n_train']}: test acc last {cs['test_acc_last']:.3f} "
          f"best {cs['test_acc_best']:.3f} ({cs['train_s']} s)")
    print(f"wrote {out} in {res['meta']['wall_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
