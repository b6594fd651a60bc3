r"""Against the field: the LDS/IDGL digits benchmark, the field's baselines re-run on it, and end to end
from the strongest frozen graph.

The protocol (:func:`bgcn.data.benchmark_split`, ``"digits-lds"``): scikit-learn's 1 797 digits, for
each seed a new stratified split into 50 training labels (5 a class), 100 validation labels and the
other 1 647 images as the test set; the graph spans all 1 797 images (transductive). Every row has
the same tuning budget: a small grid of settings (:data:`ROWS`), each run on every seed; the setting
with the best *mean validation accuracy over the seeds* is the row's choice, and its test accuracy
(read once per run, at the run's best validation epoch) is the row's number. Differences to the
reference row (the frozen kNN-GCN on the pixels) are paired by seed (:func:`bgcn.stats.paired_difference`,
the 2-standard-error rule with the number of comparisons named).

Rows:

- ``knn_gcn_pixels``: the field's kNN-GCN baseline, on the raw pixels (``create_backbone("pixels")``,
  mode ``"frozen"``): 2-layer GCN, hidden 16, dropout 0.5, learning rate 0.01, weight decay 5e-4,
  best validation epoch of 300.
- ``laplace``: Laplace learning (Zhu, Ghahramani, Lafferty 2003) on a self-tuning Gaussian kNN graph of
  the pixels, from the ``graphlearning`` package (Calder et al.): a classic graph baseline a
  well-kept library already implements.
- ``poisson``: Poisson learning (Calder et al. 2020), the same package and graph: built for very
  few labels, where Laplace learning's solution flattens.
- ``label_spreading``: scikit-learn's ``LabelSpreading`` on a kNN graph of the pixels.
- ``e2e_*``: end to end from the pixels with an extractor initialised to the identity
  (``identity_diag``: IDGL's weighted cosine; ``identity_linear``: a linear map at I), so that
  the first graph *is* the frozen kNN graph; the GCN trains alone for ``warmup`` epochs, then the
  extractor joins, through the node features only (``end2end-features``) or through the ranking
  with the estimator in the row's name.

The other protocols run the same rows on other images: ``"digits-stamps"`` (the positive
control, :func:`bgcn.data.make_digits_stamps`) and ``"fashion-2000"`` (chapter 12's 2 000
Fashion-MNIST images, 10 labels a class); ``labels_per_class`` (``--labels``) gives the digits'
10 and 20 labels-a-class columns, which have no published comparator.

``python -m bgcn experiment --protocol digits-lds`` writes ``results/field/digits-lds.json`` and
``.md`` (``--quick``: 2 seeds, one setting a row; ``--resume`` continues a partial run).

Taught in: chapter 13 (chapters/13_what_we_found_1_benchmark.md).
"""
from __future__ import annotations

import json
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .._checks import check_choice, check_int
from ..backbone import create_backbone
from ..data import BENCHMARK_SPLITS, FIELD_SEEDS, TEN_SEEDS, benchmark_data, benchmark_split
from ..graph import edge_homophily
from ..model import build_model
from ..similarity import knn_indices
from ..stats import mean_std, paired_difference
from ..train import train
from ..utils import json_safe, versions
from .common import Partial, results_root, write_atomic
from .propagation import propagate_labels

__all__ = ["PROTOCOLS", "FEATURE_PROTOCOLS", "REDUCED", "FULL_SIZE_ROWS", "PROTOCOL_ROWS", "BANK_FROM", "protocol_data", "Row", "ROWS", "ESTIMATOR_ROWS", "EXTRA_ROWS", "REFERENCE", "PUBLISHED", "PUBLISHED_FASHION", "run_field_experiment", "run_row", "summarize",
           "format_field_table", "load_field_results", "published_table", "chosen_runs", "verdict", "headline", "columns_table",
           "verdict_table"]

#: Protocols whose input is a frozen pretrained extractor's features instead of the pixels:
#: name -> (the split protocol, the backbone, its input side). The rows then read the features as
#: their "pixels" (``knn_gcn_pixels`` is the frozen kNN-GCN on them, ``e2e_*`` learn a head on them).
FEATURE_PROTOCOLS = {"fashion-2000-imagenet96": ("fashion-2000", "efficientnet_lite0_imagenet", 96),
                     "fashion-70k-imagenet96": ("fashion-70k", "efficientnet_lite0_imagenet", 96)}
#: Feature protocols whose features are cached on disk and reduced to their first principal
#: components (:mod:`bgcn.experiments.features`): name -> dimensions kept.
REDUCED = {"fashion-70k-imagenet96": 128}

PROTOCOLS = tuple(BENCHMARK_SPLITS) + tuple(FEATURE_PROTOCOLS)
"""The benchmarks this module runs: the LDS/IDGL digits split, the same split of the stamped digits
(``"digits-stamps"``, the positive control), chapter 12's Fashion-MNIST images from the pixels
(``"fashion-2000"``) and from the ImageNet extractor's features (``"fashion-2000-imagenet96"``), and
all 70 000 Fashion-MNIST images (``"fashion-70k"``, ``"fashion-70k-imagenet96"``: Poisson learning's
setting, run at the settings chosen at 2 000 images, :data:`FULL_SIZE_ROWS`)."""


def _split_name(protocol: str) -> str:
    return FEATURE_PROTOCOLS[protocol][0] if protocol in FEATURE_PROTOCOLS else protocol


def protocol_data(protocol: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` of a protocol: its images, or for :data:`FEATURE_PROTOCOLS` the frozen
    extractor's features of them as (N, 1, 1, D) "images" (one pass, eval mode, no gradient; for
    :data:`REDUCED` cached on disk and projected on their first principal components).

    Shapes: inputs (N, C, H, W) float32, labels (N,) long.

    Taught in: chapter 13 (chapters/13_what_we_found_1_benchmark.md).
    """
    check_choice(protocol, "protocol", PROTOCOLS)
    images, labels = benchmark_data(_split_name(protocol))
    if protocol in FEATURE_PROTOCOLS:
        from ..backbone import embed_images

        split, name, side = FEATURE_PROTOCOLS[protocol]
        if protocol in REDUCED:  # computed once, kept on disk; then its principal components
            from .features import cached_features, pca_project

            feats = pca_project(cached_features(split, name, side, images, labels), REDUCED[protocol])
        else:
            torch.manual_seed(0)
            feats = embed_images(create_backbone(name, img_size=side), images, batch_size=250)
        images = feats.reshape(len(feats), 1, 1, -1).contiguous()
    return images, labels

REFERENCE = "knn_gcn_pixels"
"""The row every other row is compared with, seed by seed."""

#: the field's GCN: 2 layers, hidden 16, dropout 0.5, Adam(W) 0.01, weight decay 5e-4, 300 epochs
GCN_SETTINGS = {"hidden": 16, "dropout": 0.5, "lr_gcn": 0.01, "weight_decay": 5e-4, "epochs": 300}


#: Published Digits numbers on this protocol (5 labels a class, test accuracy in %, mean and std over 5
#: seeds) that could be *read*: the baselines of LDS as reprinted in HGLAT's Table 1 (Yang, Chen, Yang
#: 2021), and HGLAT's own row. LDS's, IDGL's and SLAPS's own Digits numbers are not here: their tables
#: could not be read where this book was written, and a number that was not read is not printed.
PUBLISHED = (
    {"method": "logistic regression", "mean": 85.5, "std": 1.5, "source": "LDS baselines as reprinted by yang2021hglat, Table 1"},
    {"method": "RBF SVM", "mean": 86.9, "std": 3.2, "source": "LDS baselines as reprinted by yang2021hglat, Table 1"},
    {"method": "label propagation", "mean": 91.9, "std": 3.1, "source": "LDS baselines as reprinted by yang2021hglat, Table 1"},
    {"method": "kNN-GCN", "mean": 91.3, "std": 0.5, "source": "LDS baselines as reprinted by yang2021hglat, Table 1"},
    {"method": "HGLAT (a learned graph)", "mean": 91.0, "std": 0.7, "source": "yang2021hglat, Table 1"},
)


#: Published Fashion-MNIST numbers in the setting of ``"fashion-70k"`` (all 70 000 images, 10 labels a
#: class, accuracy on the unlabelled images, mean ± std over 100 label draws), read from the authors'
#: per-trial result files (jwcalder/GraphLearning, ``ResultsFromPaper/FashionMNISTModRate_vae_k10_*``,
#: commit e8de19f): a k = 10 graph on a VAE trained on Fashion-MNIST itself, not on ImageNet features.
PUBLISHED_FASHION = tuple(
    {"method": m, "mean": a, "std": b, "source": "calder2020poisson, the authors' result files (VAE, k = 10)"}
    for m, a, b in (("Laplace learning", 70.6, 3.1), ("Poisson learning", 75.2, 1.5), ("Poisson MBO", 76.1, 1.4)))


@dataclass(frozen=True)
class Row:
    """One row of the table: how it trains (``kind``), what is fixed, and the grid searched on validation.

    ``kind`` is ``"gcn"`` (:func:`bgcn.train.train` on an :class:`~bgcn.model.EndToEnd` built from
    ``fixed``), ``"laplace"`` / ``"poisson"`` (graphlearning's Laplace / Poisson learning) or ``"spreading"`` (scikit-learn's
    label spreading). Every row's grid has the same size (the tuning budget).

    Shapes: none.

    Taught in: chapter 13 (chapters/13_what_we_found_1_benchmark.md).
    """

    name: str
    kind: str
    grid: tuple[dict, ...]
    fixed: dict = field(default_factory=dict)


def _e2e(name: str, backbone: str, mode: str, estimator: str = "hard", tau: float = 0.1) -> Row:
    grid = tuple({"k": k, "lr_backbone": lr} for k in (10, 20) for lr in (1e-3, 1e-2))
    return Row(name, "gcn", grid, {"backbone": backbone, "mode": mode, "estimator": estimator, "tau": tau,
                                   "warmup": 150})


ROWS: tuple[Row, ...] = (
    Row(REFERENCE, "gcn", tuple({"k": k, "hidden": h} for k in (10, 20) for h in (16, 64)),
        {"backbone": "pixels", "mode": "frozen"}),
    Row("laplace", "laplace", tuple({"k": k, "metric": m} for k in (5, 10) for m in ("euclidean", "angular"))),
    Row("poisson", "poisson", tuple({"k": k, "metric": m} for k in (5, 10) for m in ("euclidean", "angular"))),
    Row("label_spreading", "spreading", tuple({"k": k, "alpha": a} for k in (10, 20) for a in (0.2, 0.8))),
    _e2e("e2e_features_linear", "identity_linear", "end2end-features"),
    _e2e("e2e_values_diag", "identity_diag", "end2end", "values"),
    _e2e("e2e_values_linear", "identity_linear", "end2end", "values"),
    _e2e("e2e_masked_softmax_linear", "identity_linear", "end2end", "masked_softmax", 0.05),
    _e2e("e2e_ste_linear", "identity_linear", "end2end", "ste"),
    _e2e("e2e_blackbox_linear", "identity_linear", "end2end", "blackbox"),
)
"""The rows of the committed table, in table order (every grid has four settings)."""

ESTIMATOR_ROWS: tuple[Row, ...] = (
    _e2e("e2e_softmax_linear", "identity_linear", "end2end", "softmax", 0.05),
    _e2e("e2e_identity_linear", "identity_linear", "end2end", "identity"),
    _e2e("e2e_sigmoid_linear", "identity_linear", "end2end", "sigmoid"),
    _e2e("e2e_capped_simplex_linear", "identity_linear", "end2end", "capped_simplex"),
    _e2e("e2e_gumbel_reinforce_linear", "identity_linear", "end2end", "gumbel_reinforce"),
    _e2e("e2e_imle_linear", "identity_linear", "end2end", "imle"),
)
"""One end-to-end row for each chapter-09 estimator not in :data:`ROWS`, run when named
(``--methods``, with ``--tag estimators``): two to four times a blackbox run each on one core,
and I-MLE, whose perturbed top-k samples make a run about 5× a blackbox run (about 290 s against
62 s for 300 epochs on the digits)."""

EXTRA_ROWS: tuple[Row, ...] = (
    _e2e("e2e_values_residual", "identity_residual", "end2end", "values"),
    Row("gcn_mlp_features", "gcn", tuple({"k": k, "hidden": h} for k in (10, 20) for h in (16, 64)),
        {"backbone": "mlp_digits", "pretrained": "pretrained_mlp_digits.pt", "mode": "frozen"}),
)
"""Rows run only when named (``--methods``): a residual head on a pretrained extractor's features
(:data:`FEATURE_PROTOCOLS`), whose last layer starts at zero so that the first graph is the frozen one;
and the frozen GCN on chapter 8's label-free MLP features (``results/pretrained_mlp_digits.pt``,
SimCLR-lite on the unlabelled digits), the starting point of the book's older rows."""


FULL_SIZE_ROWS: tuple[Row, ...] = (
    Row(REFERENCE, "gcn", ({"k": 10, "hidden": 64},), {"backbone": "pixels", "mode": "frozen", "eval_every": 10}),
    Row("laplace", "laplace", ({"k": 10, "metric": "euclidean"},)),
    Row("poisson", "poisson", ({"k": 10, "metric": "angular"},)),
    Row("e2e_values_residual", "gcn", ({"k": 20, "lr_backbone": 1e-3},),
        {**EXTRA_ROWS[0].fixed, "eval_every": 10}),
)
"""The rows of ``"fashion-70k-imagenet96"``: each at the one setting ``"fashion-2000-imagenet96"`` chose on
validation labels (a test reads them back from its committed results), not re-tuned at 70 000 images;
evaluated every 10 epochs (the best validation epoch is chosen among those)."""

#: Protocols whose rows are not :data:`ROWS`.
PROTOCOL_ROWS = {"fashion-70k-imagenet96": FULL_SIZE_ROWS}

#: From this many nodes a GCN row trains as one batch of all N through the bank engine
#: (:func:`bgcn.minibatch.train_minibatch` with ``batch_size=N``, whose step with the exact search is
#: tested equal to the full-batch one) with the FAISS inverted-file index instead of the exact search,
#: so that no N × N matrix is built: the graph is then approximate, and each run records the index's
#: recall@k against the exact search (``recall_built``, ``recall_after``).
BANK_FROM = 20_000


def _gcn_run(row: Row, setting: dict, images, labels, masks, seed: int, epochs: int | None) -> dict:
    tr, va, te = masks
    opts = {**GCN_SETTINGS, **row.fixed, **setting}
    if epochs is not None:  # a shorter run (tests, --quick): the warm-up keeps its share
        opts["warmup"] = opts.get("warmup", 0) * epochs // opts["epochs"]
        opts["epochs"] = epochs
    torch.manual_seed(seed)
    pre = opts.get("pretrained")  # a committed weights file, relative to the results folder
    bb = create_backbone(opts["backbone"], pretrained_file=None if pre is None else results_root() / pre,
                         in_chans=images.shape[1], img_size=tuple(images.shape[2:]))
    model = build_model(bb, int(labels.max()) + 1, k=opts["k"], estimator=opts.get("estimator", "hard"),
                        tau=opts.get("tau", 0.1), hidden=opts["hidden"], dropout=opts["dropout"], mode=opts["mode"])
    warm = 0 if opts["mode"] == "frozen" else opts.get("warmup", 0)
    kw = dict(mode=opts["mode"], epochs=opts["epochs"], warmup_epochs=warm, lr_gcn=opts["lr_gcn"],
              lr_backbone=opts.get("lr_backbone", 1e-3), weight_decay=opts["weight_decay"], seed=seed, device="cpu",
              progress=False, analysis_labels=labels, eval_every=min(opts.get("eval_every", 1), opts["epochs"]))
    if len(images) >= BANK_FROM:
        from ..minibatch import train_minibatch

        res = train_minibatch(model, images, labels, tr, va, te, batch_size=len(images), index="ivf",
                              cache_neighbours=True, bank_refresh=kw["eval_every"], **kw)
    else:
        res = train(model, images, labels, tr, va, te, **kw)
    h = res.history
    at_best = h.epoch.index(res.best_epoch) if res.best_epoch in h.epoch else len(h.epoch) - 1
    out = {"val_acc": res.best_val_acc, "test_acc": res.test_acc_at_best_val,
           "homophily_before": h.initial.get("homophily"), "homophily_after": h.homophily[at_best]}
    recall = res.timings.get("index_recall") if res.timings else None
    if recall:  # [epoch, when built, after the steps] per epoch: the run's mean of each
        out.update(recall_built=float(np.mean([r[1] for r in recall])),
                   recall_after=float(np.mean([r[2] for r in recall])))
    return out


def _graph_run(row: Row, setting: dict, images, labels, masks, seed: int, epochs: int | None) -> dict:
    tr, va, te = (m.numpy() for m in masks)
    x = images.reshape(images.shape[0], -1).double().numpy()
    y = labels.numpy()
    if row.kind in ("laplace", "poisson"):
        pred = propagate_labels(x, labels, masks[0], setting["k"], setting["metric"], row.kind).numpy()
    else:
        from sklearn.semi_supervised import LabelSpreading

        target = np.where(tr, y, -1)
        pred = LabelSpreading(kernel="knn", n_neighbors=setting["k"], alpha=setting["alpha"],
                              max_iter=1000).fit(x, target).transduction_
    hom = edge_homophily(knn_indices(images.reshape(images.shape[0], -1).float(), setting["k"]), labels)
    return {"val_acc": float((pred[va] == y[va]).mean()), "test_acc": float((pred[te] == y[te]).mean()),
            "homophily_before": hom, "homophily_after": hom}


def run_row(row: Row, setting: dict, seed: int, protocol: str = "digits-lds", images=None, labels=None,
            epochs: int | None = None, labels_per_class: int | None = None) -> dict:
    """One run: ``row`` with one ``setting`` of its grid on the split of ``seed``; validation and test accuracy.

    Shapes: none (returns a dict of numbers).

    Taught in: chapter 13 (chapters/13_what_we_found_1_benchmark.md).
    """
    check_choice(protocol, "protocol", PROTOCOLS)
    if images is None or labels is None:
        images, labels = protocol_data(protocol)
    masks = benchmark_split(_split_name(protocol), seed, labels_per_class, labels=labels)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        if protocol in FEATURE_PROTOCOLS:  # features are not images in [0, 1], and are not meant to be
            warnings.filterwarnings("ignore", message=".*a backbone takes float images in")
        out = (_gcn_run if row.kind == "gcn" else _graph_run)(row, setting, images, labels, masks, seed, epochs)
    return {"row": row.name, "seed": int(seed), "setting": dict(setting), **out, "time": time.perf_counter() - t0}


def _choose(runs: list[dict], row: Row, seeds: Sequence[int]) -> dict:
    """The row's setting with the best mean validation accuracy over the seeds, and its runs."""
    best = None
    for setting in row.grid:
        mine = [r for r in runs if r["row"] == row.name and r["setting"] == setting and r["seed"] in seeds]
        if len(mine) != len(seeds):
            continue
        val = float(np.mean([r["val_acc"] for r in mine]))
        if best is None or val > best["val_acc"]:
            best = {"setting": setting, "val_acc": val, "runs": sorted(mine, key=lambda r: seeds.index(r["seed"]))}
    return best


def summarize(runs: list[dict], rows: Sequence[Row], seeds: Sequence[int]) -> list[dict]:
    """One line per row: the chosen setting, test mean ± std (in %), the seed-paired difference to
    :data:`REFERENCE` with its standard error, homophily before → after.

    Shapes: none.

    Taught in: chapter 13 (chapters/13_what_we_found_1_benchmark.md).
    """
    seeds = list(seeds)
    chosen = {row.name: _choose(runs, row, seeds) for row in rows}
    ref = chosen.get(REFERENCE)
    comparisons = sum(1 for r in rows if r.name != REFERENCE and chosen[r.name] is not None)
    out = []
    for row in rows:
        c = chosen[row.name]
        if c is None:
            continue
        acc = {r["seed"]: 100 * r["test_acc"] for r in c["runs"]}
        m, s, _ = mean_std(list(acc.values()))
        line = {"row": row.name, "setting": c["setting"], "val_acc": 100 * c["val_acc"], "test_mean": m,
                "test_std": s, "n": len(acc),
                "homophily_before": float(np.mean([r["homophily_before"] for r in c["runs"]])),
                "homophily_after": float(np.mean([r["homophily_after"] for r in c["runs"]]))}
        if ref is not None and row.name != REFERENCE:
            d = paired_difference(acc, {r["seed"]: 100 * r["test_acc"] for r in ref["runs"]}, comparisons)
            line.update(diff_mean=d["mean"], diff_se=d["se"], beyond_noise=d["beyond_noise"], comparisons=comparisons)
        out.append(line)
    return out


def format_field_table(summary: list[dict], title: str) -> str:
    """Markdown table of :func:`summarize`'s lines.

    Shapes: none.

    Taught in: chapter 13 (chapters/13_what_we_found_1_benchmark.md).
    """
    head = (f"**{title}**\n\n| row | chosen setting | test acc. (%) | Δ vs {REFERENCE} (paired, ± se) | "
            f"homophily before → after |\n|---|---|---|---|---|\n")
    lines = []
    for s in summary:
        diff = "reference" if "diff_mean" not in s else \
            f"{s['diff_mean']:+.2f} ± {s['diff_se']:.2f}{' *' if s['beyond_noise'] else ''}"
        setting = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in s["setting"].items())
        lines.append(f"| {s['row']} | {setting} | {s['test_mean']:.2f} ± {s['test_std']:.2f} | {diff} | "
                     f"{s['homophily_before']:.3f} → {s['homophily_after']:.3f} |")
    m = next((s["comparisons"] for s in summary if "comparisons" in s), 0)
    note = (f"\n\n\\*: the seed-paired difference is more than two standard errors from zero ({m} comparisons "
            f"with the reference; about {m}/20 such differences appear by chance alone).\n" if m else "\n")
    return head + "\n".join(lines) + note


def run_field_experiment(protocol: str = "digits-lds", *, out: str | Path = "results/field", seeds: int = 10,
                         rows: Sequence[str] | None = None, quick: bool = False, resume: bool = False,
                         progress: bool = True, epochs: int | None = None,
                         labels_per_class: int | None = None, tag: str | None = None) -> dict:
    """Every row of :data:`ROWS` (or ``rows``), every setting of its grid, every seed; chosen on validation.

    ``seeds``: 5 (the field's list, :data:`bgcn.data.FIELD_SEEDS`) or 10 (:data:`bgcn.data.TEN_SEEDS`).
    ``quick``: 2 seeds, the first setting of each grid and 60 epochs (a smoke run, not a result);
    ``epochs`` shortens every GCN run (the warm-up keeps its share). ``labels_per_class``: the
    training labels a class (default: the protocol's published 5; 10 and 20 have no published
    comparator); the files are then ``<protocol>-lpc<n>``. ``tag``: a name appended to the files
    (``<protocol>-<tag>``), for rows run apart from a committed table (e.g. the estimator rows at
    the field's 5 seeds, ``tag="estimators"``), so that they never overwrite it. Writes
    ``<out>/<protocol>.json`` (settings, every run, the summaries over the first 5 and all seeds)
    and ``.md``; partial results in ``<out>/<protocol>.partial.json`` let ``resume=True`` continue.

    Shapes: none.

    Taught in: chapter 13 (chapters/13_what_we_found_1_benchmark.md).
    """
    check_choice(protocol, "protocol", PROTOCOLS)
    seeds = check_int(seeds, "seeds", 2, 10, hint="5: the field's list, 10: with 0-4")
    known = PROTOCOL_ROWS.get(protocol, ROWS + ESTIMATOR_ROWS + EXTRA_ROWS)
    for r in rows or ():
        check_choice(r, "rows", [r.name for r in known])
    chosen_rows = list(PROTOCOL_ROWS.get(protocol, ROWS)) if rows is None else [r for r in known if r.name in rows]
    seed_list = list((FIELD_SEEDS if seeds <= 5 else TEN_SEEDS)[:seeds])
    epochs = check_int(epochs, "epochs", 2, optional=True, hint="None: the field's 300")
    lpc = check_int(labels_per_class, "labels_per_class", 1, optional=True, hint="None: the published 5")
    published = BENCHMARK_SPLITS[_split_name(protocol)].labels_per_class
    stem = protocol if lpc in (None, published) else f"{protocol}-lpc{lpc}"
    if tag is not None:
        if not isinstance(tag, str) or not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", tag):
            raise ValueError(f"tag must be lowercase letters and digits joined by '-' (got {tag!r}), "
                             f"e.g. tag='estimators'")
        stem = f"{stem}-{tag}"
    if quick:
        epochs = epochs or 60
        seed_list = seed_list[:2]
        chosen_rows = [Row(r.name, r.kind, r.grid[:1], r.fixed) for r in chosen_rows]
    out = Path(out)
    settings = {"protocol": protocol, "labels_per_class": lpc or published,
                "seeds": seed_list, "quick": quick, "gcn": GCN_SETTINGS, "epochs": epochs,
                "rows": [{"name": r.name, "kind": r.kind, "grid": list(r.grid), "fixed": r.fixed} for r in chosen_rows]}
    part = Partial(out / f"{stem}.partial.json", settings, resume)
    images, labels = protocol_data(protocol)
    # seed by seed: an interrupted run holds whole seeds, every row of each (each run is seeded alone)
    todo = [(row, s, seed) for seed in seed_list for row in chosen_rows for s in row.grid]
    for row, setting, seed in tqdm(todo, desc=stem, disable=not progress):
        if part.done(row=row.name, seed=seed, setting=setting):
            continue
        part.add(run_row(row, setting, seed, protocol, images, labels, epochs, lpc))
    runs = part.runs
    cmd = (f"python -m bgcn experiment --protocol {protocol} --seeds {seeds}" + (" --quick" if quick else "")
           + (f" --epochs {epochs}" if epochs and not quick else "")
           + (f" --labels {lpc}" if lpc not in (None, published) else "")
           + (f" --tag {tag}" if tag is not None else "")
           + (f" --methods {' '.join(r.name for r in chosen_rows)}" if rows else ""))
    res = {"command": cmd, "settings": settings, "versions": versions(), "runs": runs,
           "summary_5": summarize(runs, chosen_rows, seed_list[:5]),
           "summary": summarize(runs, chosen_rows, seed_list)}
    md = format_field_table(res["summary"], f"{stem}, {len(seed_list)} seeds")
    if len(seed_list) > 5:
        md += "\n" + format_field_table(res["summary_5"], f"{stem}, the field's 5 seeds")
    files = [write_atomic(out / f"{stem}.json", json.dumps(json_safe(res), indent=1, allow_nan=False)),
             write_atomic(out / f"{stem}.md", md)]
    part.finish()
    res.update(table_md=md, files=[str(f) for f in files])
    return res


def load_field_results(path: str | Path | None = None, name: str = "digits-lds") -> dict:
    """The committed results of :func:`run_field_experiment` (plain JSON), with each summary line keyed by row.

    ``path`` defaults to ``results/field/<name>.json`` of the repository (or of the folder in the
    ``BGCN_RESULTS`` environment variable); ``name`` is a protocol, optionally with ``-lpc<n>``
    (e.g. ``"digits-stamps"``, ``"digits-lds-lpc10"``). Returns the file's dict plus ``"by_row"`` (all seeds) and ``"by_row_5"`` (the field's five):
    ``{row: summary line}``.

    Shapes: none.

    Taught in: chapter 13 (chapters/13_what_we_found_1_benchmark.md).
    """
    if path is None:
        root = results_root()
        path = root / "field" / f"{name}.json"
    path = Path(path)
    if not path.is_file():
        proto, _, lpc = path.stem.partition("-lpc")
        raise FileNotFoundError(f"{str(path)!r} does not exist: run python -m bgcn experiment --protocol "
                                f"{proto}{' --labels ' + lpc if lpc else ''} (see results/README.md for its "
                                f"rows and cost), or add --quick for a smoke run")
    res = json.loads(path.read_text())
    res["by_row"] = {s["row"]: s for s in res["summary"]}
    res["by_row_5"] = {s["row"]: s for s in res["summary_5"]}
    return res


def published_table(summary: list[dict], published: Sequence[dict] = PUBLISHED,
                    column: str = "Digits, 5 labels a class (%)") -> str:
    """Markdown: ``published`` (:data:`PUBLISHED`, or :data:`PUBLISHED_FASHION` with its ``column``)
    above bgcn's re-runs (the rows of ``summary``), one number format.

    Shapes: none.

    Taught in: chapter 13 (chapters/13_what_we_found_1_benchmark.md).
    """
    lines = [f"| method | {column} | where the number comes from |", "|---|---|---|"]
    for p in published:
        source = p["source"].replace("yang2021hglat", "HGLAT").replace("calder2020poisson", "Calder et al. 2020")
        lines.append(f"| {p['method']} | {p['mean']:.1f} ± {p['std']:.1f} | {source} |")
    for s in summary:
        lines.append(f"| {s['row']} | {s['test_mean']:.1f} ± {s['test_std']:.1f} | bgcn's re-run, {s['n']} seeds, "
                     f"chosen on validation |")
    return "\n".join(lines) + "\n"


def chosen_runs(res: dict, seeds: int | None = None) -> list[dict]:
    """The runs of each row's chosen setting (of ``res["summary"]``, or ``"summary_5"`` with ``seeds=5``),
    for :func:`bgcn.viz.paired_differences` and friends.

    Shapes: none.

    Taught in: chapter 13 (chapters/13_what_we_found_1_benchmark.md).
    """
    summary = res["summary_5"] if seeds == 5 else res["summary"]
    keep = {(s["row"], json.dumps(s["setting"], sort_keys=True)) for s in summary}
    allowed = set(res["settings"]["seeds"][:5] if seeds == 5 else res["settings"]["seeds"])
    return [r for r in res["runs"] if (r["row"], json.dumps(r["setting"], sort_keys=True)) in keep
            and r["seed"] in allowed]


def verdict(res: dict) -> dict:
    """The answer one committed table gives: the reference row, the end-to-end row *chosen on validation*
    and how many end-to-end rows are ahead of / behind the reference beyond noise.

    ``res`` is :func:`load_field_results`'s dict. Returns ``{"reference", "best", "best_test",
    "e2e", "ahead", "behind", "level", "comparisons", "goal_reached"}``: ``reference`` and ``best``
    are summary lines (``best`` has the highest mean *validation* accuracy of the ``e2e_*`` rows),
    ``best_test`` the line with the highest test mean (for "no row reaches …"), ``e2e`` their
    number, ``comparisons`` the rows the table compares with the reference, ``goal_reached``
    whether ``best`` is ahead beyond noise (:func:`bgcn.stats.beyond_noise`).

    Shapes: none.

    Taught in: chapter 13 (chapters/13_what_we_found_3_verdict.md).
    """
    summary = res["summary"]
    e2e = [s for s in summary if s["row"].startswith("e2e_")]
    if not e2e:
        raise ValueError("the results have no end-to-end (e2e_*) row to judge; run them with --methods")
    best = max(e2e, key=lambda s: s["val_acc"])
    ahead = sum(bool(s["beyond_noise"]) and s["diff_mean"] > 0 for s in e2e)
    behind = sum(bool(s["beyond_noise"]) and s["diff_mean"] < 0 for s in e2e)
    return {"reference": next(s for s in summary if s["row"] == REFERENCE), "best": best,
            "best_test": max(e2e, key=lambda s: s["test_mean"]), "e2e": len(e2e), "ahead": ahead,
            "behind": behind, "level": len(e2e) - ahead - behind, "comparisons": best["comparisons"],
            "goal_reached": bool(best["beyond_noise"]) and best["diff_mean"] > 0}


def headline(res: dict) -> dict[str, float | int | str]:
    """The numbers a page quotes from one committed table, flat, for ``glue``: the frozen reference,
    Laplace learning, the end-to-end row chosen on validation and the verdict's counts.

    ``res`` is :func:`load_field_results`'s dict (with a ``laplace`` row). Keys (test accuracies
    in %, differences in points, seed-paired to :data:`REFERENCE`):

    - ``gcn``, ``gcn_std``: the frozen kNN-GCN on the pixels, test mean and std over the seeds;
    - ``laplace``, ``laplace_gap`` (Laplace minus the reference's mean), ``laplace_diff``,
      ``laplace_se`` (its paired difference);
    - ``best_name`` (the row's name in backticks, Markdown), ``best_test_mean``, ``best_test_std``,
      ``best_diff_mean``, ``best_diff_se``, ``best_homophily_before``, ``best_homophily_after``,
      ``hom_pct`` (100 × homophily before) and ``best_z`` (diff / se): the row of :func:`verdict`;
    - ``e2e``, ``comparisons``, ``ahead``, ``behind``, ``level``: :func:`verdict`'s counts;
    - ``e2e_max``: the highest test mean of any end-to-end row;
    - ``bonf_z``: the :math:`|z|` a Bonferroni correction for the comparisons asks
      (:func:`bgcn.stats.bonferroni_z`).

    Every value is a Python ``float``, ``int`` or ``str``.

    Shapes: none.

    Taught in: chapter 13 (chapters/13_what_we_found_1_benchmark.md).
    """
    from ..stats import bonferroni_z

    v = verdict(res)
    ref, best = v["reference"], v["best"]
    lap = next(s for s in res["summary"] if s["row"] == "laplace")
    out: dict[str, float | int | str] = {
        "gcn": ref["test_mean"], "gcn_std": ref["test_std"], "laplace": lap["test_mean"],
        "laplace_gap": lap["test_mean"] - ref["test_mean"], "laplace_diff": lap["diff_mean"],
        "laplace_se": lap["diff_se"], "best_name": f"`{best['row']}`"}
    for key in ("test_mean", "test_std", "diff_mean", "diff_se", "homophily_before", "homophily_after"):
        out[f"best_{key}"] = best[key]
    out["hom_pct"] = 100 * best["homophily_before"]
    out["best_z"] = best["diff_mean"] / best["diff_se"]
    for key in ("e2e", "comparisons", "ahead", "behind", "level"):
        out[key] = v[key]
    out["e2e_max"] = v["best_test"]["test_mean"]
    out["bonf_z"] = bonferroni_z(v["comparisons"])
    return {k: (x if isinstance(x, str) else int(x) if isinstance(x, (bool, int, np.integer)) else float(x))
            for k, x in out.items()}


def columns_table(results: dict[int, dict]) -> str:
    """Markdown: one row per method, one column per labels-a-class setting (``{lpc: res}``), each cell
    test mean ± std and the seed-paired difference to :data:`REFERENCE` (``*``: beyond noise).

    Only rows present in every setting are shown, in the first setting's order.

    Shapes: none.

    Taught in: chapter 13 (chapters/13_what_we_found_2_other_settings.md).
    """
    lpcs = sorted(results)
    by = {lpc: {s["row"]: s for s in results[lpc]["summary"]} for lpc in lpcs}
    names = [s["row"] for s in results[lpcs[0]]["summary"] if all(s["row"] in by[l] for l in lpcs)]
    seeds = "/".join(str(len(results[l]["settings"]["seeds"])) for l in lpcs)
    head = ("| row | " + " | ".join(f"{l} labels a class" for l in lpcs) + " |\n|---|"
            + "---|" * len(lpcs) + "\n")
    lines = []
    for name in names:
        cells = []
        for l in lpcs:
            s = by[l][name]
            d = ("" if "diff_mean" not in s else
                 f" ({s['diff_mean']:+.1f} ± {s['diff_se']:.1f}{'*' if s['beyond_noise'] else ''})")
            cells.append(f"{s['test_mean']:.1f} ± {s['test_std']:.1f}{d}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + f"\n\nSeeds: {seeds}.\n"


def verdict_table(results: dict[str, dict]) -> str:
    """Markdown: one line per setting (``{title: res}``): the frozen reference, the end-to-end row chosen on
    validation, their seed-paired difference ± se, the comparisons m and the rows ahead / level / behind.

    Shapes: none.

    Taught in: chapter 13 (chapters/13_what_we_found_3_verdict.md).
    """
    lines = ["| setting | seeds | frozen kNN-GCN on the input | end to end, chosen on validation | Δ (paired, ± se) "
             "| m | e2e rows ahead / level / behind |", "|---|---|---|---|---|---|---|"]
    for title, res in results.items():
        v = verdict(res)
        ref, best = v["reference"], v["best"]
        lines.append(f"| {title} | {ref['n']} | {ref['test_mean']:.1f} ± {ref['test_std']:.1f} | `{best['row']}` "
                     f"{best['test_mean']:.1f} ± {best['test_std']:.1f} | {best['diff_mean']:+.2f} ± "
                     f"{best['diff_se']:.2f}{' *' if best['beyond_noise'] else ''} | {v['comparisons']} | "
                     f"{v['ahead']} / {v['level']} / {v['behind']} |")
    return "\n".join(lines) + "\n"
