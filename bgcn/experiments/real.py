r"""Seed 000's setting for real: an ImageNet-pretrained extractor on real images (chapter 12).

``python -m bgcn experiment --dataset fashion-mnist`` (or ``nuisance-shapes``, the positive
control) trains and scores, for every seed (label split, GCN initialisation, dropout, batches) on
one fixed stratified subset of N images:

============================  ================================================================
row                           what it is
============================  ================================================================
``knn_pixels``                cosine kNN classifier on raw pixels (scikit-learn)
``knn``                       cosine kNN classifier on the frozen ImageNet features
``label_spreading``           label spreading (kNN kernel) on the same features
``frozen``                    frozen GCN on the hard kNN graph of those features (seed 000 §1)
``finetune``                  plain supervised fine-tuning of the backbone + a linear head on the
                              labelled images only, no graph: what a practitioner tries first
``end2end_features``          end to end through the node features, hard graph (seed 000 §3)
``end2end_softmax``           end to end, seed 000's softmax weights at τ from the data
``end2end_masked_softmax``    end to end, softmax over the k kept similarities, same τ
``end2end_features_bntrain``  ``end2end_features`` with the backbone's BatchNorm in train mode
                              (plain PyTorch): the collapse that ``bn_policy="eval"`` prevents
============================  ================================================================

The GCN rows run the mini-batch engine (:func:`bgcn.minibatch.train_minibatch`, chapter 11) with
a warm-up on the frozen hard graph and then joint epochs; the score is the test accuracy at the
best validation epoch among the joint epochs (the frozen row: among all), beside the final one and
the warm-up model's. Each row also reports the edge homophily of the hard kNN graph before and
after (:func:`bgcn.graph.edge_homophily`, with every label: an analysis quantity, never used in
training; for ``nuisance-shapes`` also with the nuisance label), seconds per epoch and images/s.

The dense selection estimators of chapter 09 need an N×N score matrix and are refused by the
mini-batch engine, so they are not rows here (chapter 12 says why).

Taught in: chapter 12 (chapters/12_real_extractor_3_table.md).
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .._checks import check_int
from ..io import atomic_write_json, atomic_write_text
from ..backbone import create_backbone
from ..data import label_masks, load_dataset
from ..experiment import sk_baselines
from ..graph import edge_homophily
from ..backbone import embed_images
from ..minibatch import train_minibatch
from ..model import build_model
from ..temperature import suggest_tau_features
from ..train import progress_enabled
from ..utils import command_line, get_device, versions
from .common import Partial, read_committed, results_root, schedule_config, summarize_runs

__all__ = ["ROWS", "FULL", "QUICK", "DATASETS", "E2E_ROWS", "COMPARISONS", "run_real_experiment",
           "supervised_finetune", "format_table", "format_compact_table", "load_real_dataset", "load_real_results",
           "joint_epoch_cost", "real_findings", "load_bn_collapse"]

BASELINES = ("knn_pixels", "knn", "label_spreading")
GCN_ROWS = ("frozen", "end2end_features", "end2end_softmax", "end2end_masked_softmax", "end2end_features_bntrain")
ROWS = BASELINES + ("finetune",) + GCN_ROWS
#: the rows trained end to end with ``bn_policy="eval"`` (the library's choice for pretrained weights)
E2E_ROWS = ("end2end_features", "end2end_softmax", "end2end_masked_softmax")
#: the differences chapter 12 reads from a results file, each ``(row, against)``, paired by seed; a pair
#: whose rows the file lacks is skipped, and the reading's m counts the pairs read
COMPARISONS = (tuple((r, "frozen") for r in E2E_ROWS) + tuple((r, "finetune") for r in E2E_ROWS)
               + (("knn", "knn_pixels"), ("frozen", "label_spreading"),
                  ("end2end_features_bntrain", "end2end_features")))
DATASETS = ("fashion-mnist", "nuisance-shapes")

#: the committed run (about 30 min on one CPU thread per dataset; resumable with --resume)
FULL = {"n": 2000, "img_size": 32, "labels_per_class": [10], "val_per_class": 10, "seeds": 3, "epochs": 20,
        "warmup_epochs": 10, "batch_size": 250, "lr_backbone": 1e-4, "lr_gcn": 1e-2, "finetune_epochs": 30,
        "k": 10, "rows": list(ROWS)}
#: a smoke run in under 2 minutes
QUICK = {"n": 300, "img_size": 32, "labels_per_class": [5], "val_per_class": 5, "seeds": 1, "epochs": 3,
         "warmup_epochs": 2, "batch_size": 150, "lr_backbone": 1e-4, "lr_gcn": 1e-2, "finetune_epochs": 3,
         "k": 10, "rows": ["knn", "label_spreading", "frozen", "finetune", "end2end_features"]}


def load_real_dataset(name: str, n: int, seed: int = 0):
    """The experiment's data: ``(images (N, C, H, W) float in [0, 1], labels (N,), extra labels dict)``.

    ``fashion-mnist``: a stratified subset of N training images (the same for every run seed);
    ``nuisance-shapes``: N generated images whose label is the shape and whose background (the
    nuisance, in ``extra["nuisance"]``) is independent of it.

    Shapes: images (N, C, H, W), labels (N,)

    Taught in: chapter 12 (chapters/12_real_extractor_4_control.md).
    """
    if name == "fashion-mnist":
        ds = load_dataset("fashion-mnist", split="train", subset=n, seed=seed)
        return ds.images, ds.labels, {}
    if name == "nuisance-shapes":
        ds = load_dataset("nuisance-shapes", n=n, seed=seed)
        extra = {}
        nuis = getattr(ds, "nuisance", None)
        if nuis is None and hasattr(ds, "extras"):
            nuis = (ds.extras or {}).get("nuisance")
        if nuis is not None:
            extra["nuisance"] = torch.as_tensor(nuis).long()
        return ds.images, ds.labels, extra
    raise ValueError(f"dataset={name!r}: use one of {list(DATASETS)} (the digits comparison is "
                     f"python -m bgcn experiment without --dataset)")


def supervised_finetune(backbone: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                        train_mask: torch.Tensor, val_mask: torch.Tensor, test_mask: torch.Tensor, *,
                        epochs: int = 30, lr_backbone: float = 1e-4, lr_head: float = 1e-2,
                        batch_size: int = 64, seed: int = 0, device: str | torch.device = "cpu",
                        eval_batch_size: int = 256) -> dict:
    r"""Plain fine-tuning without a graph: backbone + a linear head, cross-entropy on the labelled images.

    .. math:: \min_{\theta, W, b}\ -\frac{1}{|M|}\sum_{i\in M}\log\operatorname{softmax}(W f_\theta(x_i) + b)_{y_i}

    AdamW (``lr_backbone`` for θ, ``lr_head`` for W, b), shuffled batches of the labelled images,
    ``epochs`` passes; after each, accuracy on the validation and test images (eval mode). Returns
    ``{"test_acc"` (at the best validation epoch), ``"final_test_acc"``, ``"best_epoch"``,
    ``"time_per_epoch"``, ``"images_per_s"``}``. The baseline a practitioner tries first.

    Shapes: images (N, C, H, W); labels, masks (N,)

    Taught in: chapter 12 (chapters/12_real_extractor_3_table.md).
    """
    dev = get_device(device)
    g = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    backbone = backbone.to(dev)
    num_classes = int(labels.max()) + 1
    head = torch.nn.Linear(int(backbone.num_features), num_classes).to(dev)
    params = [p for p in backbone.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": params, "lr": lr_backbone}, {"params": head.parameters(), "lr": lr_head}],
                            weight_decay=5e-4)
    lab = torch.nonzero(train_mask).flatten()
    y = labels.to(dev)
    best = (-math.inf, float("nan"), 0)
    final = float("nan")
    t_steps = 0.0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        backbone.train()
        for part in torch.split(lab[torch.randperm(lab.numel(), generator=g)], batch_size):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(head(backbone(images[part].to(dev))), y[part.to(dev)])
            loss.backward()
            opt.step()
        t_steps += time.perf_counter() - t0
        with torch.no_grad():
            pred = head(embed_images(backbone, images, eval_batch_size, dev)).argmax(1)
        va = float((pred[val_mask.to(dev)] == y[val_mask.to(dev)]).double().mean())
        te = float((pred[test_mask.to(dev)] == y[test_mask.to(dev)]).double().mean())
        final = te
        if va > best[0]:
            best = (va, te, epoch)
    return {"test_acc": best[1], "final_test_acc": final, "best_epoch": best[2], "best_val_acc": best[0],
            "time_per_epoch": t_steps / epochs, "images_per_s": lab.numel() * epochs / max(t_steps, 1e-12)}


def _backbone(img_size: int, bn_policy: str = "eval"):
    return create_backbone("efficientnet_lite0_imagenet", img_size=img_size, bn_policy=bn_policy)


def _best_joint(history, warm: int, key: str):
    """``key`` of the best-validation epoch among the evaluated epochs after the warm-up."""
    best, out = -math.inf, float("nan")
    for e, v, x in zip(history.epoch, history.val_acc, getattr(history, key)):
        if e > warm and not math.isnan(v) and v > best:
            best, out = v, x
    return out


def _gcn_row(row: str, images, labels, masks, cfg: dict, seed: int, tau: float, extra: dict, device) -> dict:
    mode, est, policy = {"frozen": ("frozen", "hard", "eval"),
                         "end2end_features": ("end2end-features", "hard", "eval"),
                         "end2end_softmax": ("end2end", "softmax", "eval"),
                         "end2end_masked_softmax": ("end2end", "masked_softmax", "eval"),
                         "end2end_features_bntrain": ("end2end-features", "hard", "train")}[row]
    num_classes = int(labels.max()) + 1
    torch.manual_seed(seed)
    model = build_model(_backbone(cfg["img_size"], policy), num_classes, k=cfg["k"], estimator=est, tau=tau,
                        hidden=64, dropout=0.5, mode=mode)
    warm = 0 if mode == "frozen" else cfg["warmup_epochs"]
    tr, va, te = masks
    res = train_minibatch(model, images, labels, tr, va, te, mode=mode, epochs=cfg["epochs"], warmup_epochs=warm,
                          batch_size=cfg["batch_size"], lr_backbone=cfg["lr_backbone"], lr_gcn=cfg["lr_gcn"],
                          seed=seed, device=device, analysis_labels=labels, progress=False)
    h = res.history
    out = {"test_acc": res.test_acc_at_best_val, "final_test_acc": res.final.get("test_acc"),
           "best_epoch": res.best_epoch, "warmup_test_acc": res.warmup["test_acc"] if res.warmup else None,
           "gain_over_warmup": res.gain_over_warmup if res.warmup else None,
           "homophily_before": h.initial.get("homophily"),
           "homophily_after": _best_joint(h, warm, "homophily") if warm else h.homophily[res.best_epoch - 1],
           "homophily_final": h.homophily[-1], "homophily_series": list(h.homophily),
           "test_acc_series": list(h.test_acc), "time_per_epoch": res.timings["per_epoch"],
           "images_per_s": res.timings["images_per_s"], "tau": tau}
    if "nuisance" in extra and res.graphs:
        for when in ("initial", "best", "final"):
            g = res.graphs.get(when)
            if g is not None:
                out[f"nuisance_homophily_{when}"] = edge_homophily(g["indices"].long(), extra["nuisance"])
    return out


def run_real_experiment(dataset: str = "fashion-mnist", out: str | os.PathLike = "results/real", quick: bool = False,
                        seeds: int | None = None, labels_per_class: Sequence[int] | None = None,
                        n: int | None = None, epochs: int | None = None, warmup_epochs: int | None = None,
                        batch_size: int | None = None, img_size: int | None = None, rows: Sequence[str] | None = None,
                        lr_backbone: float | None = None, k: int | None = None, device: str = "auto",
                        resume: bool = False, progress: bool | None = None,
                        only_seeds: Sequence[int] | None = None) -> dict:
    """Run the table of this module's docstring; write ``OUT/<dataset>.json`` and ``.md``.

    Progress is saved after every run to ``OUT/<dataset>.partial.json``; ``resume=True`` continues
    from it (same settings) across sessions. ``quick=True`` is :data:`QUICK` (under 2 minutes);
    the other arguments override :data:`FULL`'s values. ``only_seeds`` runs just those of the
    ``seeds`` (e.g. one process per seed, each with its own ``out``; their partial files' runs
    can be concatenated into one, whose resume then writes the table).

    Shapes: none (writes files; returns the results dict).

    Taught in: chapter 12 (chapters/12_real_extractor_3_table.md).
    """
    cfg, todo = _settings(dataset, quick, {
        "seeds": seeds, "labels_per_class": None if labels_per_class is None else list(labels_per_class), "n": n,
        "epochs": epochs, "warmup_epochs": warmup_epochs, "batch_size": batch_size, "img_size": img_size,
        "rows": None if rows is None else list(rows), "lr_backbone": lr_backbone, "k": k}, only_seeds)
    dev = get_device(device)
    show = progress_enabled(progress)
    out = Path(out)
    settings = {"dataset": dataset, **cfg}
    partial = Partial(out / f"{dataset}.partial.json", settings, resume)

    t_all = time.perf_counter()
    images, labels, extra = load_real_dataset(dataset, cfg["n"])
    bb = _backbone(cfg["img_size"]).to(dev).eval()
    t0 = time.perf_counter()
    feats = embed_images(bb, images, 256, dev).cpu()
    t_feat = time.perf_counter() - t0
    tau = float(suggest_tau_features(feats, cfg["k"]))
    arrays = (feats.numpy(), images.reshape(images.shape[0], -1).numpy(), labels.numpy())
    for seed in todo:
        for lpc in cfg["labels_per_class"]:
            masks = label_masks(labels, lpc, cfg["val_per_class"], seed=seed)
            base: dict = {}
            for row in cfg["rows"]:
                if partial.done(row=row, seed=seed, labels_per_class=lpc):
                    continue
                t0 = time.perf_counter()
                rec = _run_row(row, images, labels, masks, cfg, seed, tau, extra, dev, arrays, base)
                rec.update(row=row, seed=seed, labels_per_class=lpc, wall_s=time.perf_counter() - t0)
                partial.add(rec)
                if show:
                    print(f"[{dataset}] seed {seed} lpc {lpc} {row}: test {rec['test_acc']:.4f} "
                          f"({rec['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    runs = partial.runs
    summary = summarize(runs, cfg["rows"], cfg["labels_per_class"])
    result = {"settings": settings, "summary": summary, "runs": runs, "tau": tau,
              "frozen_features_s": t_feat, "wall_s": time.perf_counter() - t_all,
              "meta": {"versions": versions(), "device": str(dev), "cpu_count": os.cpu_count(),
                       "torch_threads": torch.get_num_threads(), "command": command_line(),
                       "date": time.strftime("%Y-%m-%d")}}
    table = format_table(summary, cfg["rows"], cfg["labels_per_class"])
    files = [atomic_write_json(out / f"{dataset}.json", result), atomic_write_text(out / f"{dataset}.md", table + "\n")]
    partial.finish()
    result["table_md"] = table
    result["files"] = [str(f) for f in files]
    return result


def _settings(dataset: str, quick: bool, overrides: dict, only_seeds) -> tuple[dict, list[int]]:
    """The run's settings (:data:`QUICK` or :data:`FULL` with the non-None ``overrides``), checked
    before any work, and the seeds this process runs."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r}: use one of {list(DATASETS)}")
    cfg = dict(QUICK if quick else FULL)
    cfg.update({key: v for key, v in overrides.items() if v is not None})
    bad = [r for r in cfg["rows"] if r not in ROWS]
    if bad:
        raise ValueError(f"unknown rows {bad}; the rows are {list(ROWS)}")
    # every GCN row but "frozen" trains the backbone after the warm-up
    schedule_config(cfg, ("frozen" if r == "frozen" else "end2end" for r in cfg["rows"] if r in GCN_ROWS))
    todo = list(range(cfg["seeds"])) if only_seeds is None else list(only_seeds)
    for x in todo:
        check_int(x, "only_seeds", 0, cfg["seeds"] - 1, hint=f"a seed of the run: --seeds is {cfg['seeds']}")
    return cfg, todo


def _run_row(row: str, images, labels, masks: tuple, cfg: dict, seed: int, tau: float, extra: dict, dev,
             arrays: tuple, base: dict) -> dict:
    """One row for one (seed, labels per class): a scikit-learn baseline (computed once per split
    into ``base``; ``arrays`` = features, pixels, labels as NumPy), plain fine-tuning or a GCN row."""
    tr, va, te = masks
    if row in BASELINES:
        if not base:
            f_np, pixels, y = arrays
            base.update(sk_baselines(f_np, pixels, y, tr.numpy(), te.numpy(), cfg["k"]))
        return dict(base[row])
    if row == "finetune":
        torch.manual_seed(seed)
        return supervised_finetune(_backbone(cfg["img_size"]), images, labels, tr, va, te,
                                   epochs=cfg["finetune_epochs"], lr_backbone=cfg["lr_backbone"], seed=seed,
                                   device=dev)
    return _gcn_row(row, images, labels, masks, cfg, seed, tau, extra, dev)


def summarize(runs: list[dict], rows: Sequence[str], lpcs: Sequence[int]) -> list[dict]:
    """Mean ± std over seeds of every measure of a row (one dict per row and labels-per-class).

    Shapes: none.

    Taught in: chapter 12 (chapters/12_real_extractor_3_table.md).
    """
    keys = ("test_acc", "final_test_acc", "warmup_test_acc", "gain_over_warmup", "homophily_before",
            "homophily_after", "homophily_final", "nuisance_homophily_initial", "nuisance_homophily_best",
            "time_per_epoch", "images_per_s")
    return summarize_runs(runs, ({"row": row, "labels_per_class": lpc} for lpc in lpcs for row in rows), keys,
                          count="seeds")


def format_table(summary: list[dict], rows: Sequence[str], lpcs: Sequence[int]) -> str:
    """A Markdown table: test accuracy (mean ± std), final, warm-up, homophily before → after, s/epoch.

    Shapes: none.

    Taught in: chapter 12 (chapters/12_real_extractor_3_table.md).
    """
    def pm(d, key, scale=100.0, digits=1):
        if key not in d:
            return "—"
        return f"{scale * d[key]:.{digits}f} ± {scale * d[key + '_std']:.{digits}f}"

    lines = ["| labels/class | row | test acc (best val) | final | warm-up model | homophily before → after "
             "| s/epoch | images/s |", "|---|---|---|---|---|---|---|---|"]
    for d in summary:
        hom = (f"{100 * d['homophily_before']:.1f} → {100 * d['homophily_after']:.1f}"
               if "homophily_before" in d and "homophily_after" in d else "—")
        lines.append(f"| {d['labels_per_class']} | {d['row']} | {pm(d, 'test_acc')} | {pm(d, 'final_test_acc')} "
                     f"| {pm(d, 'warmup_test_acc')} | {hom} | "
                     f"{d['time_per_epoch']:.1f} | {d['images_per_s']:.0f} |"
                     if "time_per_epoch" in d else
                     f"| {d['labels_per_class']} | {d['row']} | {pm(d, 'test_acc')} | — | — | — | — | — |")
    return "\n".join(lines)


def load_real_results(dataset: str = "fashion-mnist", path: str | os.PathLike | None = None,
                      labels_per_class: int = 10, partial: bool = False) -> dict:
    """The committed results of :func:`run_real_experiment` (plain JSON) with ``"by_row"``: ``{row: test
    accuracy in %}`` (mean over seeds, at ``labels_per_class``) and ``"state"`` beside the file's own keys.

    ``path`` defaults to ``results/real/<dataset>.json`` of the repository (or of the folder in the
    ``BGCN_RESULTS`` environment variable). With ``partial=True`` a missing file falls back to the
    progress file ``<dataset>.partial.json`` of a run under way, summarised here (:func:`summarize`);
    ``"state"`` is then ``"partial"`` (else ``"complete"``).

    Shapes: none.

    Taught in: chapter 12 (chapters/12_real_extractor_3_table.md) and chapter 13
    (chapters/13_what_we_found_2_other_settings.md).
    """
    import json

    if path is None:
        root = results_root()
        path = root / "real" / f"{dataset}.json"
    path = Path(path)
    part = path.with_name(path.name[:-len(".json")] + ".partial.json") if path.name.endswith(".json") else None
    if path.is_file():
        res, state = json.loads(path.read_text()), "complete"
    elif partial and part is not None and part.is_file():
        res, state = json.loads(part.read_text()), "partial"
        s = res["settings"]
        res["summary"] = summarize(res["runs"], s["rows"], s["labels_per_class"])
    else:
        raise FileNotFoundError(f"{str(path)!r} does not exist: run python -m bgcn experiment --dataset {dataset} "
                                f"--threads 1 --out results/real (results/real/README.md)")
    res["state"] = state
    res["by_row"] = {s["row"]: 100 * s["test_acc"] for s in res["summary"]
                     if s.get("labels_per_class") == labels_per_class}
    return res


def joint_epoch_cost(epoch_s: float, frozen_epoch_s: float, epochs: int, warmup_epochs: int) -> dict:
    r"""What one joint epoch of an end-to-end run costs: seconds, and epochs on the frozen graph.

    An end-to-end run of :math:`E` epochs, the first :math:`W` of them warm-up, takes :math:`\bar t`
    seconds an epoch on average over all :math:`E`. A warm-up epoch trains the GCN on the cached
    features of the frozen graph, as an epoch of the frozen row does (:math:`t_\text{frozen}`); a
    joint epoch also runs the extractor forward and backward on every image. So

    .. math::
        t_\text{joint} = \frac{E\,\bar t - W\,t_\text{frozen}}{E - W},\qquad
        \text{ratio} = t_\text{joint} / t_\text{frozen}.

    The book's one definition of the cost of end-to-end training: a *joint* epoch against an epoch
    on the frozen graph. For a run whose epochs were timed one by one, pass the mean over all its
    epochs and the mean over its warm-up epochs: :math:`t_\text{joint}` is then the mean over its
    joint epochs, exactly. For the committed files (which keep each row's mean over all epochs),
    pass the frozen row's mean as :math:`t_\text{frozen}`.

    Returns ``{"joint_s", "frozen_s", "ratio"}``.

    Shapes: none.

    Taught in: chapter 12 (chapters/12_real_extractor_2_end_to_end.md).
    """
    epochs = check_int(epochs, "epochs", 1)
    warmup_epochs = check_int(warmup_epochs, "warmup_epochs", 0, epochs - 1,
                              hint="fewer than the epochs: a run needs joint epochs to have their cost")
    joint = (epochs * float(epoch_s) - warmup_epochs * float(frozen_epoch_s)) / (epochs - warmup_epochs)
    return {"joint_s": joint, "frozen_s": float(frozen_epoch_s), "ratio": joint / float(frozen_epoch_s)}


def real_findings(res: dict, labels_per_class: int = 10, comparisons: Sequence[tuple[str, str]] = COMPARISONS,
                  key: str = "test_acc") -> dict:
    """The numbers chapter 12 quotes from one results file, flat (floats, ints and str), ready to glue.

    ``res`` is :func:`load_real_results`'s dict. Accuracies, differences and homophilies are in
    points (percent); seconds are seconds. Keys:

    - ``"seeds"``: how many seeds the file's runs hold (counted in the runs, not read from the settings);
      ``"m"``: how many pairs of ``comparisons`` the file has both rows of;
    - ``"best_row"``, ``"best_test"``: the row with the highest mean test accuracy, and that mean;
    - per row ``r`` of the summary: ``r_test``, ``r_test_std``, and where measured ``r_warmup``,
      ``r_warmup_std`` (the warm-up model's test accuracy), ``r_hom_before``, ``r_hom_after`` (edge homophily before
      training and at the best joint epoch), ``r_bg_before``, ``r_bg_after`` (the same with the
      nuisance label), ``r_epoch_s``; for an end-to-end row also ``r_joint_s`` and ``r_joint_x``
      (:func:`joint_epoch_cost` against the frozen row);
    - per pair ``(a, b)``: ``a_vs_b_mean``, ``a_vs_b_se`` (the seed-paired difference a − b and its
      standard error, :func:`bgcn.experiment.paired_difference`, one of m comparisons),
      ``a_vs_b_wins``, ``a_vs_b_n`` and ``a_vs_b_counts`` (1 when beyond noise by the two-standard-
      error rule, else 0).

    Shapes: none.

    Taught in: chapter 12 (chapters/12_real_extractor_3_table.md).
    """
    from ..experiment import paired_difference

    s = res["settings"]
    summ = {d["row"]: d for d in res["summary"] if d.get("labels_per_class") == labels_per_class}
    if not summ:
        raise ValueError(f"the results hold no row at labels_per_class={labels_per_class}; "
                         f"they have {sorted({d.get('labels_per_class') for d in res['summary']})}")
    runs = [r for r in res["runs"] if r.get("labels_per_class", labels_per_class) == labels_per_class]
    out: dict = {"seeds": len({r["seed"] for r in runs})}
    best = max(summ, key=lambda r: summ[r][key])
    out.update(best_row=best, best_test=100 * summ[best][key])
    names = {"warmup_test_acc": "warmup", "homophily_before": "hom_before", "homophily_after": "hom_after",
             "nuisance_homophily_initial": "bg_before", "nuisance_homophily_best": "bg_after",
             "time_per_epoch": "epoch_s"}
    for row, d in summ.items():
        out[f"{row}_test"], out[f"{row}_test_std"] = 100 * d[key], 100 * d[key + "_std"]
        for k, short in names.items():
            if k in d:
                out[f"{row}_{short}"] = d[k] if k == "time_per_epoch" else 100 * d[k]
        if "warmup_test_acc_std" in d:
            out[f"{row}_warmup_std"] = 100 * d["warmup_test_acc_std"]
        if row != "frozen" and row in GCN_ROWS and "time_per_epoch" in d and "time_per_epoch" in summ.get("frozen", {}):
            c = joint_epoch_cost(d["time_per_epoch"], summ["frozen"]["time_per_epoch"], s["epochs"],
                                 s["warmup_epochs"])
            out[f"{row}_joint_s"], out[f"{row}_joint_x"] = c["joint_s"], c["ratio"]
    pairs = [(a, b) for a, b in comparisons if a in summ and b in summ]
    out["m"] = len(pairs)
    for a, b in pairs:
        d = paired_difference(runs, a, b, labels_per_class, key, comparisons=max(len(pairs), 1))
        out.update({f"{a}_vs_{b}_mean": 100 * d["mean"], f"{a}_vs_{b}_se": 100 * d["se"],
                    f"{a}_vs_{b}_wins": int(d["wins"]), f"{a}_vs_{b}_n": int(d["n"]),
                    f"{a}_vs_{b}_counts": int(bool(d["beyond_noise"]))})
    return out


def format_compact_table(res: dict, labels_per_class: int = 10) -> str:
    """The results table in the width of a book column: one setting, the columns a reader compares.

    Columns: the row; its test accuracy at the best validation epoch and the warm-up model's (mean ±
    std over seeds, %); edge homophily before → at the best joint epoch (%); seconds an epoch, for an
    end-to-end row a *joint* epoch (:func:`joint_epoch_cost`). The full table, with the final
    accuracy and images per second, is :func:`format_table` (the committed ``.md`` file).

    Shapes: none (text).

    Taught in: chapter 12 (chapters/12_real_extractor_3_table.md).
    """
    f = real_findings(res, labels_per_class)
    rows = [r for r in res["settings"]["rows"] if f"{r}_test" in f]

    def pm(row, what):
        return f"{f[f'{row}_{what}']:.1f} ± {f[f'{row}_{what}_std']:.1f}" if f"{row}_{what}_std" in f else "—"

    lines = ["| row | test % | warm-up % | homophily % | s / epoch |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        hom = f"{f[f'{r}_hom_before']:.1f} → {f[f'{r}_hom_after']:.1f}" if f"{r}_hom_after" in f else "—"
        sec = f.get(f"{r}_joint_s", f.get(f"{r}_epoch_s"))
        lines.append(f"| `{r}` | {pm(r, 'test')} | {pm(r, 'warmup')} | {hom} | {'—' if sec is None else f'{sec:.1f}'} |")
    return "\n".join(lines)


def load_bn_collapse(path: str | os.PathLike | None = None) -> dict:
    """The numbers of ``results/bn_collapse.json`` (``scripts/bn_collapse.py``) that chapter 12 quotes, flat.

    Keys: ``n``, ``img_size`` (the images of the measurement); ``cosine`` (mean cosine of each
    image's train-mode features to its eval-mode ones, all N images as one batch) and ``overlap``
    (share of the eval-mode 10-NN graph's edges the train-mode graph keeps, %); ``probe_eval`` and
    ``probe_train`` (a linear classifier fitted on eval-mode features, scored on eval-mode and on
    train-mode features, %); and for the short end-to-end runs of the
    same warm-up model, ``e2e_warm`` (its test accuracy, %) and ``e2e_<policy>`` (the final test
    accuracy under ``bn_policy`` = ``train``, ``eval``, ``frozen``, %).

    Shapes: none.

    Taught in: chapter 12 (chapters/12_real_extractor_1_frozen.md).
    """
    d, path = read_committed("bn_collapse.json", "OMP_NUM_THREADS=1 python scripts/bn_collapse.py --e2e (a few "
                             "minutes on one core)", path)
    full = d["train_mode_full_batch"]
    probe = d["probe_fit_eval_apply_train_mode_full_batch"]
    out = {"n": int(d["meta"]["n"]), "img_size": int(d["meta"]["img_size"]),
           "cosine": float(full["cosine_to_eval"]["mean"]), "overlap": 100 * float(full["knn_overlap_with_eval"]),
           "probe_eval": 100 * float(probe["fit_on_eval_test_on_eval"]),
           "probe_train": 100 * float(probe["fit_on_eval_test_on_train_mode"])}
    runs = d.get("e2e", {}).get("runs", {})
    if runs:
        out["e2e_warm"] = 100 * float(runs["eval"]["test_acc_end_of_warmup"])
        out.update({f"e2e_{pol}": 100 * float(r["test_acc_final"]) for pol, r in runs.items()})
    return out
