r"""The frozen-vs-end-to-end comparison on the digits (``python -m bgcn experiment``).

For every number of labels per class and every seed (the seed fixes the label split, the
initialisation and the dropout), the methods below are trained/fitted and scored on the test
images at the epoch of best validation accuracy:

===========================  ==================================================================
row                          what it is
===========================  ==================================================================
``knn_pixels``               kNN classifier on raw pixels (scikit-learn)
``knn``                      kNN classifier on the pre-trained, frozen features
``label_spreading``          label spreading (scikit-learn, kNN kernel) on the same features
``frozen_random``            frozen GCN on a *randomly initialised* backbone (seed 000 §1 with no
                             pre-training: the extractor has learned nothing)
``frozen``                   frozen GCN on the pre-trained backbone (seed 000 §1)
``end2end_features``         end to end from the pre-trained backbone, hard graph, weights unused
                             (seed 000 §3 as intended)
``end2end_softmax_tau1``     end to end, seed 000's soft top-k at the seed's τ = 1
``end2end_softmax_taudata``  the same at τ from the data: the τ at which the k nearest neighbours
                             hold half of the softmax mass on the pre-trained features
                             (:func:`bgcn.temperature.suggest_tau`, ``method="mass"``)
``end2end_masked_softmax``   softmax over the k kept similarities, same τ from the data
``end2end_values``           the kept similarities as weights
``end2end_features_random``  positive control: end to end through the node features from the
                             *random* initialisation that ``frozen_random`` freezes
``end2end_softmax_random``   the same through the softmax graph, τ from that run's initial features
===========================  ==================================================================

Every end-to-end row first trains the GCN alone on the frozen mode's hard graph (warm-up), then
backbone and GCN together; its score is the test accuracy at the best validation epoch *among the
joint epochs*, reported beside the same run's warm-up model (``warmup_test_acc``, the model joint
training starts from) and the gain over it. The graph measures are taken on the model that was
scored (its weights at the best epoch): edge homophily of the hard kNN graph
(:func:`bgcn.graph.edge_homophily`, an analysis quantity using all labels, never used in training)
before and after, the share of kNN edges and of rows that changed, and the graph path's share of
the backbone's parameter gradient, :math:`\lVert g_\text{graph}\rVert/(\lVert g_\text{node}\rVert +
\lVert g_\text{graph}\rVert)` with :math:`g = J_\theta^\top\,\partial L/\partial F` per path (mean over
the joint epochs).

The pre-training is a short self-supervised SimCLR-lite run (:func:`bgcn.train.pretrain_backbone`,
no labels) on all images; its weights are saved to ``OUT/pretrained_<backbone>.pt`` and every
frozen/end-to-end row loads them with ``create_backbone(pretrained_file=...)``, so "frozen" and
"end to end" start from the same extractor.

Outputs: ``OUT/experiment.json`` (config, versions, every run with its history summary, the
summary table), ``OUT/results.md`` and ``OUT/results.csv``.

Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
"""
from __future__ import annotations

import copy
import csv
import json
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ._version import __version__
from .backbone import (create_backbone, extract_features, load_backbone_weights, save_backbone_weights)
from .data import label_masks
from .experiments.common import Partial, digits_subset, results_root, schedule_config, train_digits_row
from .graph import edge_change_fraction, edge_homophily
from .io import atomic_write, atomic_write_json, atomic_write_text
from .model import build_model
from .similarity import cosine_similarity, knn_indices
from .stats import mean_std, paired_difference as _paired, paired_runs
from .temperature import suggest_tau
from .train import pretrain_backbone, progress_enabled
from .utils import get_device, seed_everything, versions

__all__ = ["METHODS", "run_experiment", "sk_baselines", "summarize", "format_table", "format_paths_table",
           "write_report", "QUICK", "FULL", "paired_difference", "run_measures", "hard_knn", "rows_changed", "CONTROLS",
           "experiment_command"]

#: GCN rows: name -> (mode, estimator, tau ("1" or "data"), backbone init ("random"/"pretrained"))
METHODS: dict[str, tuple[str, str, str, str]] = {
    "frozen_random": ("frozen", "hard", "1", "random"),
    "frozen": ("frozen", "hard", "1", "pretrained"),
    "end2end_features": ("end2end-features", "hard", "1", "pretrained"),
    "end2end_softmax_tau1": ("end2end", "softmax", "1", "pretrained"),
    "end2end_softmax_taudata": ("end2end", "softmax", "data", "pretrained"),
    "end2end_masked_softmax": ("end2end", "masked_softmax", "data", "pretrained"),
    "end2end_values": ("end2end", "values", "1", "pretrained"),
    "end2end_features_random": ("end2end-features", "hard", "1", "random"),
    "end2end_softmax_random": ("end2end", "softmax", "run", "random"),
}
BASELINES = ("knn_pixels", "knn", "label_spreading")
ROWS = BASELINES + tuple(METHODS)
#: The controls: a row trained end to end from a *random* extractor -> that extractor frozen, its reference.
CONTROLS = {"end2end_features_random": "frozen_random", "end2end_softmax_random": "frozen_random"}

#: Settings of the full and the quick experiment (overridable by run_experiment's arguments).
FULL = {"labels_per_class": [5, 10, 20], "seeds": 5, "epochs": 60, "warmup_epochs": 40, "backbone": "mlp_digits",
        "pretrain_epochs": 100, "max_images": None, "lr_backbone": 3e-4, "lr_gcn": 2e-2}
QUICK = {"labels_per_class": [10], "seeds": 1, "epochs": 4, "warmup_epochs": 2, "backbone": "mlp_digits",
         "pretrain_epochs": 1, "max_images": 400, "lr_backbone": 3e-4, "lr_gcn": 2e-2}


def sk_baselines(feats: np.ndarray, pixels: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray,
                 k: int) -> dict[str, dict]:
    """The scikit-learn rows of a table: k-NN on the pixels, k-NN on the features (cosine, distance
    weights, k neighbours or fewer when fewer images are labelled) and label spreading on the kNN
    graph of the L2-normalised features; test accuracy and wall time of each.

    Shapes: feats (N, D), pixels (N, P), labels (N,), train/test (N,) bool -> {row: {"test_acc", "time_total"}}

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.semi_supervised import LabelSpreading

    out = {}
    for name, x in (("knn_pixels", pixels), ("knn", feats)):
        t0 = time.perf_counter()
        clf = KNeighborsClassifier(n_neighbors=min(k, int(train.sum())), weights="distance", metric="cosine")
        clf.fit(x[train], labels[train])
        acc = float((clf.predict(x[test]) == labels[test]).mean())
        out[name] = {"test_acc": acc, "time_total": time.perf_counter() - t0}
    t0 = time.perf_counter()
    xn = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    y = np.where(train, labels, -1)
    ls = LabelSpreading(kernel="knn", n_neighbors=k, alpha=0.2, max_iter=200)
    ls.fit(xn, y)
    out["label_spreading"] = {"test_acc": float((ls.transduction_[test] == labels[test]).mean()),
                              "time_total": time.perf_counter() - t0}
    return out


#: the name run_experiment calls (tests patch it to interrupt a run)
_sk_baselines = sk_baselines


def run_experiment(out: str | os.PathLike = "results", quick: bool = False, seeds: int | None = None,
                   labels_per_class: Sequence[int] | None = None, epochs: int | None = None,
                   backbone: str | None = None, pretrain_epochs: int | None = None, warmup_epochs: int | None = None,
                   k: int = 10,
                   device: str = "auto", progress: bool | None = None, max_images: int | None = None,
                   methods: Sequence[str] | None = None, resume: bool = False,
                   lr_backbone: float | None = None) -> dict:
    r"""Run the comparison and write ``experiment.json``, ``results.md`` and ``results.csv`` to ``out``.

    Score: test accuracy at the epoch of best validation accuracy (GCN rows; the validation images
    are never labelled for training), or of the fitted classifier (scikit-learn rows). Reported as
    mean ± standard deviation (ddof = 1) over seeds, with the mean wall time per epoch.

    ``quick=True`` is a tiny smoke version (:data:`QUICK`: 400 digits, 1 seed, 3 epochs, MLP
    backbone); every other argument overrides the defaults in :data:`FULL`/:data:`QUICK`.

    Progress is saved to ``OUT/experiment.partial.json`` after every (labels, seed) pair; with
    ``resume=True`` a run with the same settings continues from it (and reuses the pre-trained
    weights file) instead of starting over. The partial file is removed at the end.

    Returns ``{"summary": rows, "runs": runs, "table_md": str, "files": [paths], ...}``.

    Shapes: none (file outputs).

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """
    cfg, rows = _settings(quick, {"seeds": seeds, "labels_per_class": labels_per_class, "epochs": epochs,
                                  "backbone": backbone, "pretrain_epochs": pretrain_epochs,
                                  "max_images": max_images, "warmup_epochs": warmup_epochs,
                                  "lr_backbone": lr_backbone}, k, device, methods)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    show = progress_enabled(progress)
    t_all = time.perf_counter()

    images, labels = digits_subset(cfg["max_images"])
    cfg["num_images"] = int(images.shape[0])

    partial = Partial(out / "experiment.partial.json",
                      {key: cfg[key] for key in cfg if key not in ("device", "threads", "quick")}, resume)
    done_runs: list[dict] = partial.runs
    pre, pre_path, bb = _pretrain_once(cfg, images, out, device, show,
                                       partial.extra.get("pretrain") if partial.resumed else None)
    feats = extract_features(bb, images, device=get_device(device), to_cpu=True)
    tau_data = float(suggest_tau(cosine_similarity(feats), k, method="mass", target_mass=0.5))
    feats_np = feats.numpy().astype(np.float64)
    pixels_np = images.reshape(images.shape[0], -1).numpy().astype(np.float64)
    labels_np = labels.numpy()

    runs: list[dict] = []
    for seed in range(cfg["seeds"]):  # seeds outermost: a partial result covers every label setting
        for lpc in cfg["labels_per_class"]:
            prev = [r for r in done_runs if r["labels_per_class"] == lpc and r["seed"] == seed]
            if {r["method"] for r in prev} >= set(rows):
                runs.extend(r for r in prev if r["method"] in rows)
                continue
            tr, va, te = label_masks(labels, lpc, seed=seed)
            base = _sk_baselines(feats_np, pixels_np, labels_np, tr.numpy(), te.numpy(), k)
            for name in rows:
                if name in BASELINES:
                    runs.append({"method": name, "labels_per_class": lpc, "seed": seed, **base[name],
                                 "time_per_epoch": None})
                    continue
                runs.append(_gcn_run(name, cfg, lpc, seed, images, labels, (tr, va, te), pre_path, tau_data, device))
                if show:
                    print(f"  lpc={lpc} seed={seed} {name:26s} test@bestval={runs[-1]['test_acc']:.4f} "
                          f"({runs[-1]['time_per_epoch']:.3f} s/epoch)", flush=True)
            partial.save(runs, pretrain={"loss": pre["loss"], "time": pre["time"], "file": pre_path.name})
    summary = summarize(runs, rows, cfg["labels_per_class"])
    result = {"config": cfg, "versions": versions(), "bgcn": __version__, "tau_data": tau_data,
              "pretrain": {"loss": pre["loss"], "time": pre["time"], "file": pre_path.name},
              "runs": runs, "summary": summary, "wall_time_s": time.perf_counter() - t_all}
    atomic_write_json(out / "experiment.json", result)
    files = [out / "experiment.json"] + write_report(out)
    partial.finish()
    result["table_md"] = format_table(summary, rows, cfg["labels_per_class"])
    result["files"] = [str(f) for f in files]
    return result


def _settings(quick: bool, overrides: dict, k: int, device, methods: Sequence[str] | None) -> tuple[dict, list[str]]:
    """The run's settings: :data:`QUICK` or :data:`FULL`, the non-None ``overrides``, the fixed ones."""
    cfg = dict(QUICK if quick else FULL)
    for key, val in overrides.items():
        if val is not None:
            cfg[key] = list(val) if key == "labels_per_class" else val
    rows = list(ROWS if methods is None else methods)
    bad = [m for m in rows if m not in ROWS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; valid: {list(ROWS)}")
    cfg.update({"k": k, "device": str(get_device(device)), "quick": quick, "methods": rows,
                "threads": torch.get_num_threads(),
                "val_per_class": "= labels_per_class", "weight_decay": 5e-4, "hidden": 64, "dropout": 0.5,
                "selection": "test accuracy at the epoch of best validation accuracy among the joint epochs "
                             "(after the warm-up) for end-to-end rows"})
    schedule_config(cfg, (METHODS[m][0] for m in rows if m in METHODS))
    return cfg, rows


def _pretrain_once(cfg: dict, images: torch.Tensor, out: Path, device, show: bool, pre: dict | None):
    """The label-free pre-trained backbone of every ``"pretrained"`` row (its weights in
    ``OUT/pretrained_<backbone>.pt``): loaded when resuming, else pre-trained (SimCLR-lite) or saved
    as initialised (``pretrain_epochs=0``). Returns ``(pretrain record, weights path, backbone)``."""
    seed_everything(0)
    bb = create_backbone(cfg["backbone"])
    pre_path = out / f"pretrained_{cfg['backbone']}.pt"
    if pre is not None and pre_path.is_file():
        load_backbone_weights(bb, pre_path)
        bb.to(get_device(device))
    elif cfg["pretrain_epochs"] > 0:
        pre = pretrain_backbone(bb, images, epochs=cfg["pretrain_epochs"], seed=0, device=device, progress=show,
                                save_to=pre_path)
    else:
        save_backbone_weights(bb, pre_path)
        pre = {"loss": [], "time": 0.0, "path": str(pre_path)}
    return pre, pre_path, bb


def _gcn_run(name: str, cfg: dict, lpc: int, seed: int, images: torch.Tensor, labels: torch.Tensor, masks: tuple,
             pre_path: Path, tau_data: float, device) -> dict:
    """One GCN row of :data:`METHODS` for one (labels per class, seed): train, then the results row."""
    k = cfg["k"]
    mode, est, tau_kind, init = METHODS[name]
    seed_everything(seed)
    backbone_ = create_backbone(cfg["backbone"], pretrained_file=pre_path if init == "pretrained" else None)
    init_state = {k_: v.clone() for k_, v in backbone_.state_dict().items()}
    if tau_kind == "run":  # τ from this run's own initial features (random init)
        f0 = extract_features(backbone_, images, device=get_device(device), to_cpu=True)
        tau = float(suggest_tau(cosine_similarity(f0), k, method="mass", target_mass=0.5))
    else:
        tau = tau_data if tau_kind == "data" else 1.0
    model = build_model(backbone_, int(labels.max()) + 1, k=k, estimator=est, tau=tau, hidden=cfg["hidden"],
                        dropout=cfg["dropout"], mode=mode)
    res, warm = train_digits_row(model, images, labels, masks, cfg, mode, seed, device)
    h = res.history
    return {"method": name, "labels_per_class": lpc, "seed": seed, "mode": mode, "estimator": est,
            "tau": tau, "init": init, "test_acc": res.test_acc_at_best_val,
            "best_epoch": res.best_epoch, "best_val_acc": res.best_val_acc,
            "final_test_acc": res.final["test_acc"], "initial_test_acc": h.initial["test_acc"],
            # the mode's own epochs (after the warm-up for end-to-end rows)
            "time_per_epoch": float(np.mean(h.time[warm:])),
            "time_per_epoch_warmup": float(np.mean(h.time[:warm])) if warm else None,
            "time_total": res.timings["total"], "warmup_epochs": warm,
            **run_measures(res, warm, init_state, images, labels, k, device),
            "loss_first": h.loss[0], "loss_last": h.loss[-1]}


def hard_knn(backbone, images: torch.Tensor, k: int, device: str | torch.device = "auto") -> torch.Tensor:
    """The hard cosine kNN sets (self excluded) of a backbone's features, on the CPU.

    Shapes: images (N, C_in, H, W) -> (N, k) long

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """
    f = extract_features(backbone, images, device=get_device(device), to_cpu=True)
    return knn_indices(f.double(), k, exclude_self=True)


def rows_changed(old: torch.Tensor, new: torch.Tensor) -> float:
    """Share of nodes whose kNN *set* differs between two (N, k) rankings.

    Shapes: old, new (N, k) -> float in [0, 1]

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """
    return float((old.sort(1).values != new.sort(1).values).any(1).double().mean())


def run_measures(res, warm: int, init_state: dict, images: torch.Tensor, labels: torch.Tensor, k: int,
                 device: str | torch.device = "auto") -> dict:
    r"""What a results row reports about one :func:`bgcn.train.train` run, measured on the *scored* model.

    - ``warmup_test_acc``: test accuracy of the model at the end of the warm-up (where joint
      training starts), ``gain_over_warmup`` = ``test_acc`` − it (end-to-end rows);
      ``warmup_best_test_acc``: the warm-up's own best-validation test accuracy;
    - ``homophily_before`` / ``homophily_after``: :func:`bgcn.graph.edge_homophily` of the hard kNN
      graph of the initial backbone and of the backbone at the best epoch (the scored model);
    - ``edges_changed`` / ``rows_changed``: between those two hard kNN graphs;
    - ``grad_graph_share``: mean over the joint epochs of
      :math:`\lVert g^\theta_\text{graph}\rVert / (\lVert g^\theta_\text{node}\rVert + \lVert g^\theta_\text{graph}\rVert)`,
      the graph path's share of the backbone's parameter gradient (NaN when not measured);
      ``grad_node_mean`` / ``grad_graph_mean``: the means of the two norms.

    Shapes: images (N, C_in, H, W), labels (N,)

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """
    h = res.history
    backbone0 = copy.deepcopy(res.model.backbone)
    backbone0.load_state_dict(init_state)
    scored = copy.deepcopy(res.model)
    if res.best_state:
        scored.load_state_dict(res.best_state)
    g0 = hard_knn(backbone0, images, k, device)
    g1 = hard_knn(scored.backbone, images, k, device)
    joint = slice(warm, None)
    node = np.asarray(h.grad_backbone_node[joint], dtype=float)
    graph = np.asarray(h.grad_backbone_graph[joint], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = graph / (node + graph)
    measured = len(share) and not np.isnan(node).all()
    out = {"warmup_test_acc": res.warmup["test_acc"] if res.warmup else None,
           "warmup_best_test_acc": res.warmup["test_acc_at_best_val"] if res.warmup else None,
           "gain_over_warmup": res.gain_over_warmup if res.warmup else None,
           "homophily_before": edge_homophily(g0, labels), "homophily_after": edge_homophily(g1, labels),
           "edges_changed": edge_change_fraction(g0, g1), "rows_changed": rows_changed(g0, g1),
           "grad_node_mean": float(np.nanmean(node)) if measured else None,
           "grad_graph_mean": float(np.nanmean(graph)) if measured else None,
           "grad_graph_share": float(np.nanmean(share)) if measured and not np.isnan(share).all() else None}
    return out


def summarize(runs: list[dict], rows: Sequence[str], lpcs: Sequence[int]) -> list[dict]:
    """Mean ± std (ddof = 1, 0 for one seed) of test accuracy and mean time per epoch per (method, labels).

    Shapes: none (lists of dicts, text).

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """
    out = []
    for name in rows:
        for lpc in lpcs:
            rs = [r for r in runs if r["method"] == name and r["labels_per_class"] == lpc]
            if not rs:
                continue
            acc_mean, acc_std, _ = mean_std(r["test_acc"] for r in rs)
            tpe = [r["time_per_epoch"] for r in rs if r.get("time_per_epoch") is not None]
            row = {"method": name, "labels_per_class": lpc, "n_seeds": len(rs), "test_acc_mean": acc_mean,
                   "test_acc_std": acc_std, "time_per_epoch": float(np.mean(tpe)) if tpe else None}
            for key in ("grad_node_mean", "grad_graph_mean", "grad_graph_share", "edges_changed", "rows_changed",
                        "final_test_acc", "best_epoch", "warmup_test_acc", "warmup_best_test_acc",
                        "gain_over_warmup", "homophily_before", "homophily_after"):
                vals = [r[key] for r in rs if r.get(key) is not None]
                if vals:
                    row[key] = float(np.mean(vals))
            _, gain_std, n_gains = mean_std(r.get("gain_over_warmup") for r in rs)
            if n_gains > 1:
                row["gain_over_warmup_std"] = gain_std
            out.append(row)
    return out


def paired_difference(runs: list[dict], method: str, baseline: str, labels_per_class: int | None,
                      key: str = "test_acc", comparisons: int = 1) -> dict:
    r"""Paired difference of one row against another over the seeds they share, with a noise verdict.

    .. math::
        d_s = a_s - b_s,\quad \bar d = \frac1n\sum_s d_s,\quad
        \text{se} = \frac{\operatorname{std}(d)}{\sqrt n},\quad
        \text{beyond noise} \iff |\bar d| > 2\,\text{se}

    The seed fixes the label split, which both rows share, so the paired difference is much
    sharper than the two rows' ± side by side. "Beyond noise" is a rough two-standard-error rule,
    not a test with a stated level (with 5 seeds, a t-test at 5 % would ask for about 2.8 se).

    Returns ``{"mean", "std", "se", "n", "wins", "beyond_noise", "diffs", "seeds", "comparisons"}``
    (differences in accuracy units, ``diffs`` per shared seed in seed order; ``wins`` = seeds with
    :math:`d_s > 0`; ``comparisons``: how many differences the caller reads with this rule); ``n = 0``
    and NaNs when no seed is shared. Runs name their row by ``"method"`` (experiment.json) or
    ``"row"`` (estimators.json); runs without ``labels_per_class`` match any setting; missing or NaN
    values are skipped. The statistics are :func:`bgcn.stats.paired_difference` (their one home).

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """
    a = paired_runs(runs, method, key, labels_per_class=labels_per_class)
    b = paired_runs(runs, baseline, key, labels_per_class=labels_per_class)
    return _paired(a, b, comparisons)


def format_table(summary: list[dict], rows: Sequence[str], lpcs: Sequence[int]) -> str:
    """Markdown table: one row per method, one column per labels-per-class setting, plus time per epoch.

    Shapes: none (lists of dicts, text).

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """
    head = "| method | " + " | ".join(f"{l} labels/class" for l in lpcs) + " | s/epoch |"
    sep = "|---|" + "---:|" * (len(lpcs) + 1)
    lines = [head, sep]
    for name in rows:
        cells, tpe = [], []
        for lpc in lpcs:
            r = next((r for r in summary if r["method"] == name and r["labels_per_class"] == lpc), None)
            if r is None:
                cells.append("–")
                continue
            cells.append(f"{100 * r['test_acc_mean']:.1f} ± {100 * r['test_acc_std']:.1f}")
            if r["time_per_epoch"] is not None:
                tpe.append(r["time_per_epoch"])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean(tpe):.3f} |" if tpe else
                     f"| {name} | " + " | ".join(cells) + " | – |")
    return "\n".join(lines)


def format_paths_table(summary: list[dict], rows: Sequence[str], lpc: int) -> str:
    """Markdown table, for one labels-per-class setting: what moved, and by which path.

    Columns (means over seeds): the paired test accuracy of the warm-up model and the gain of the
    joint epochs over it (± std over seeds), the edge homophily of the hard kNN graph before and
    after (on the scored model), the share of kNN edges and rows that changed, and the graph
    path's share of the backbone's parameter gradient.

    Shapes: none (text).

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """
    lines = [f"| method ({lpc} labels/class) | test % after warm-up | gain (points) | homophily before → after | "
             "edges changed | rows changed | graph share of ∇θ |", "|---|---:|---:|---:|---:|---:|---:|"]

    def pct(v, fmt=".1f"):
        return "–" if v is None else f"{100 * v:{fmt}}"

    for name in rows:
        r = next((r for r in summary if r["method"] == name and r["labels_per_class"] == lpc), None)
        if r is None or "homophily_before" not in r:
            continue
        gain = r.get("gain_over_warmup")
        gain_s = "–" if gain is None else f"{100 * gain:+.1f} ± {100 * r.get('gain_over_warmup_std', 0.0):.1f}"
        share = r.get("grad_graph_share")
        lines.append(f"| {name} | {pct(r.get('warmup_test_acc'))} | {gain_s} | "
                     f"{pct(r['homophily_before'])} → {pct(r['homophily_after'])} % | "
                     f"{pct(r.get('edges_changed'))} % | {pct(r.get('rows_changed'))} % | "
                     f"{'–' if share is None else f'{share:.3f}'} |")
    return "\n".join(lines)


def write_report(out: str | os.PathLike) -> list[Path]:
    """(Re)write ``results.md`` and ``results.csv`` from ``OUT/experiment.json``; returns their paths.

    Shapes: none (lists of dicts, text).

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """
    out = Path(out)
    res = json.loads((out / "experiment.json").read_text())
    cfg, summary = res["config"], res["summary"]
    rows, lpcs = cfg["methods"], cfg["labels_per_class"]
    table = format_table(summary, rows, lpcs)
    header = (f"Test accuracy (%) at the epoch of best validation accuracy, mean ± std over {cfg['seeds']} "
              f"seed(s); digits ({cfg['num_images']} images), k = {cfg['k']}, backbone `{cfg['backbone']}` "
              f"pre-trained without labels (SimCLR-lite, {cfg['pretrain_epochs']} epochs), {cfg['epochs']} epochs "
              f"per run. End-to-end rows: the first {cfg['warmup_epochs']} epochs train the GCN only on the "
              f"initial features and their hard kNN graph (warm-up), the rest train backbone and GCN together, "
              f"and only those joint epochs compete in the model selection. τ from the data = "
              f"{res['tau_data']:.4f}. s/epoch: mean wall time of one epoch of the row's mode (step + evaluation; "
              f"for end-to-end rows the joint epochs after the warm-up), {cfg.get('threads', '?')} CPU thread(s).")
    text = (header + "\n\n" + table + "\n\nWhat moved, measured on the scored model (means over seeds; "
            "homophily = share of kNN edges joining two images of the same class, computed with all labels for "
            "analysis only; graph share = ‖∇θ via the graph‖ / (‖via the node features‖ + ‖via the graph‖) "
            "for the backbone's parameters θ, mean over the joint epochs):\n\n"
            + "\n\n".join(format_paths_table(summary, rows, l) for l in lpcs) + "\n")
    files = [out / "results.md", out / "results.csv"]
    atomic_write_text(files[0], text)
    _write_csv(files[1], summary)
    return files


def _write_csv(path: Path, summary: list[dict]) -> None:
    keys = ["method", "labels_per_class", "n_seeds", "test_acc_mean", "test_acc_std", "time_per_epoch",
            "final_test_acc", "best_epoch", "warmup_test_acc", "warmup_best_test_acc", "gain_over_warmup",
            "gain_over_warmup_std", "homophily_before", "homophily_after", "edges_changed", "rows_changed",
            "grad_node_mean", "grad_graph_mean", "grad_graph_share"]

    def write(fh):
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in summary:
            w.writerow({k: r.get(k, "") for k in keys})

    atomic_write(path, write, "w", newline="")


# ---------------------------------------------------------------------------------------------
# reading the committed results (chapter 08 shows the tables and writes the reading as prose)
def experiment_command(cfg: dict, out: str = "results") -> str:
    """The ``python -m bgcn experiment`` command line that regenerates a results file with config ``cfg``.

    Only the settings that differ from :data:`FULL` (and the rows, when not all of :data:`ROWS`) are
    spelled out; ``--threads`` is kept because it was part of how the file was made.

    Shapes: none (text).

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """
    cmd = f"python -m bgcn experiment --out {out}"
    for key, flag in (("seeds", "--seeds"), ("epochs", "--epochs"), ("warmup_epochs", "--warmup-epochs"),
                      ("pretrain_epochs", "--pretrain-epochs"), ("lr_backbone", "--lr-backbone")):
        if key in cfg and cfg[key] != FULL[key]:
            cmd += f" {flag} {cfg[key]:g}"
    if list(cfg["labels_per_class"]) != FULL["labels_per_class"]:
        cmd += " --labels " + " ".join(map(str, cfg["labels_per_class"]))
    if list(cfg["methods"]) != list(ROWS):
        cmd += " --methods " + " ".join(cfg["methods"])
    if cfg.get("threads"):
        cmd += f" --threads {cfg['threads']}"
    return cmd
