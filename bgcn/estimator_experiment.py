r"""The estimator comparison of chapter 09: every selection estimator trained end to end on the digits.

``python -m bgcn.estimator_experiment [--quick] [--out results]`` runs, for every seed (the seed
fixes the label split, the initialisation, dropout and the estimators' noise), the rows below with
the training loop of chapter 08 (:func:`bgcn.train.train`, full batch, transductive), starting
from one backbone pre-trained without labels (SimCLR-lite, :func:`bgcn.train.pretrain_backbone`):

- ``frozen``: frozen pre-trained backbone, hard kNN graph, only the GCN learns;
- ``end2end_features``: end to end through the node features only (hard graph, weights unused);
- ``softmax_taudata``: seed 000's soft top-k at τ from the data (only re-weights the hard top-k);
- ``ste`` … ``gumbel_reinforce``: the selection estimators of :mod:`bgcn.estimators`, at their
  default hyper-parameters (tied to the per-row score scale); the GCN gets the dense mask (``adj``)
  so the gradient reaches non-edges; ``gumbel_reinforce`` learns the graph through
  :func:`bgcn.model.score_function_surrogate`.

Measured per run: test accuracy at the epoch of best validation accuracy; wall time per epoch of
the end-to-end epochs (step + evaluation); the fraction of rows (nodes) whose hard kNN neighbour
*set* (top-k of the backbone's cosine similarities) differs between the pre-trained backbone and
the trained one; the fraction of kNN edges that changed; the mean gradient norm reaching the backbone's output F by the node-feature path
and by the graph path; and the **gradient variance at the backbone**: at the trained parameters,
with dropout off, the gradient of the training loss (plus the score-function surrogate where
there is one) with respect to all backbone parameters is computed ``grad_repeats`` times with
independent estimator noise, and

.. math::
    \mathrm{relvar} = \frac{\frac1R\sum_r \lVert g_r - \bar g\rVert^2}{\lVert \bar g\rVert^2}

is reported (0 for deterministic estimators; the same for the graph-path gradient alone). For
``blackbox``/``imle`` the :class:`~bgcn.estimators.PerturbationState` of the last training step
gives the fraction of rows whose perturbed top-k differed (a λ that is too small shows as 0) and
the mean number of swapped neighbours per row.

Outputs: ``OUT/estimators.json`` (config, versions, every run, the summary), ``OUT/estimators.md``
(tables) and ``OUT/README_estimators.md`` (the command that regenerates them). Progress goes to
``OUT/estimators.partial.json`` after every run; ``--resume`` continues from it.

Taught in: chapter 09 (chapters/09_estimators_4_digits.md).
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._version import __version__
from . import estimators as E
from .backbone import create_backbone, extract_features, save_backbone_weights
from .data import label_masks
from .experiment import rows_changed as _rows_changed, run_measures
from .experiments.common import Partial, digits_subset, schedule_config, summarize_runs, train_digits_row
from .io import atomic_write_json, atomic_write_text
from .model import build_model, score_function_surrogate
from .similarity import cosine_similarity
from .temperature import suggest_tau
from .topk import ESTIMATORS
from .train import pretrain_backbone
from .utils import get_device, seed_everything, versions

__all__ = ["ROWS", "FULL", "QUICK", "REFERENCES", "run_estimator_experiment", "summarize", "format_tables",
           "compact_table", "load_estimator_results", "n_comparisons", "estimator_findings", "main"]

#: row -> (training mode, estimator, τ kind ("1" or "data"))
ROWS: dict[str, tuple[str, str, str]] = {
    "frozen": ("frozen", "hard", "1"),
    "end2end_features": ("end2end-features", "hard", "1"),
    "softmax_taudata": ("end2end", "softmax", "data"),
    "ste": ("end2end", "ste", "1"),
    "identity": ("end2end", "identity", "1"),
    "blackbox": ("end2end", "blackbox", "1"),
    "imle": ("end2end", "imle", "1"),
    "sigmoid": ("end2end", "sigmoid", "1"),
    "capped_simplex": ("end2end", "capped_simplex", "1"),
    "gumbel_reinforce": ("end2end", "gumbel_reinforce", "1"),
}

#: The reference rows every other row is compared with, paired by seed: row -> what it is.
REFERENCES: dict[str, str] = {
    "frozen": "the frozen extractor",
    "end2end_features": "end to end through the node features only",
    "softmax_taudata": "seed 000's softmax",
}

#: The full comparison (the training settings of chapter 08's experiment, 10 labels per class).
FULL = {"labels_per_class": 10, "seeds": 5, "epochs": 60, "warmup_epochs": 40, "backbone": "mlp_digits",
        "pretrain_epochs": 100, "max_images": None, "lr_backbone": 3e-4, "lr_gcn": 2e-2, "grad_repeats": 8,
        "k": 10, "hidden": 64, "dropout": 0.5, "weight_decay": 5e-4, "timing_rounds": 7}
#: A smoke version: 300 digits, 1 seed, 4 epochs.
QUICK = dict(FULL, seeds=1, epochs=4, warmup_epochs=2, pretrain_epochs=1, max_images=300, grad_repeats=3,
             timing_rounds=2)


def rows_changed(old: torch.Tensor, new: torch.Tensor) -> float:
    r"""Fraction of rows whose neighbour *set* differs: :math:`\frac1N\sum_i [\mathcal N^{old}(i) \ne \mathcal N^{new}(i)]`.

    The one copy lives in :func:`bgcn.experiment.rows_changed`.

    Shapes: old, new (N, k) -> float

    Taught in: chapter 09 (chapters/09_estimators_4_digits.md).
    """
    return _rows_changed(old.long(), new.long())


def _flat_grad(params) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def gradient_variance(model, images, labels, train_mask, repeats: int, seed: int) -> dict:
    r"""Relative variance of the backbone gradient over ``repeats`` independent draws of the estimator's noise.

    Dropout is off (``model.eval()``) while autograd records, so stochastic estimators sample and
    deterministic ones give the same gradient every time. Returns ``relvar_backbone`` (all backbone
    parameters), ``relvar_graph`` (∂L/∂F through the graph path), and the norms of the mean
    gradients (``norm_backbone``, ``norm_graph``, ``norm_node``).

    Shapes: images (N, ...), labels (N,), train_mask (N,) -> dict of floats

    Taught in: chapter 09 (chapters/09_estimators_4_digits.md).
    """
    model.eval()
    params = [p for p in model.backbone.parameters() if p.requires_grad]
    gb, gg, gn = [], [], []
    for r in range(repeats):
        gen = torch.Generator(device=images.device).manual_seed(10_000 * (seed + 1) + r)
        model.zero_grad(set_to_none=True)
        logp = model(images, generator=gen)
        node_loss = F.nll_loss(logp, labels.clamp_min(0), reduction="none")
        loss = node_loss[train_mask].mean()
        lp = model.last_graph.info.get("log_prob")
        if lp is not None:
            loss = loss + score_function_surrogate(lp, node_loss, train_mask, "node", "loo")
        paths = model.path_gradients(loss, retain_graph=True)
        loss.backward()
        gb.append(_flat_grad(params).detach().double())
        gg.append(paths["graph"].reshape(-1).double())
        gn.append(paths["node"].reshape(-1).double())
    model.zero_grad(set_to_none=True)

    def relvar(gs):
        g = torch.stack(gs)
        mean = g.mean(0)
        den = float(mean.pow(2).sum())
        return float((g - mean).pow(2).sum(1).mean()) / den if den > 0 else float("nan"), float(mean.norm())

    rb, nb = relvar(gb)
    rg, ng = relvar(gg)
    _, nn_ = relvar(gn)
    return {"relvar_backbone": rb, "relvar_graph": rg, "norm_backbone": nb, "norm_graph": ng, "norm_node": nn_}


def time_estimators(rows: Sequence[str] | None = None, rounds: int = 7, k: int = 10, backbone: str = "mlp_digits",
                    pretrained: str | os.PathLike | None = None, device: str = "auto", max_images: int | None = None,
                    tau_data: float | None = None) -> dict:
    r"""Interleaved timing of one end-to-end training step per row (forward + backward, no optimiser step).

    ``rounds`` rounds; in each, every row runs once in turn, so a load spike on a shared machine hits
    all rows alike; the median over rounds is reported (``step_s``), with the 25–75 % range. The step
    is the one of :func:`bgcn.train.train`: backbone → cosine similarity → estimator → GCN (dense
    mask for the selection estimators) → NLL on 100 labelled nodes (+ the score-function surrogate).

    Returns ``{row: {"step_s": median, "q25": ..., "q75": ..., "times": [...]}}``.

    Shapes: none.

    Taught in: chapter 09 (chapters/09_estimators_4_digits.md).
    """
    dev = get_device(device)
    names = [r for r in (rows or ROWS) if ROWS[r][0] != "frozen"]
    images, labels = (t.to(dev) for t in digits_subset(max_images))
    tr, _, _ = label_masks(labels.cpu(), 10, seed=0)
    tr = tr.to(dev)
    models = {}
    for name in names:
        mode, est, tau_kind = ROWS[name]
        seed_everything(0)
        bb = create_backbone(backbone, pretrained_file=pretrained)
        tau = (tau_data or 0.05) if tau_kind == "data" else 1.0
        models[name] = build_model(bb, int(labels.max()) + 1, k=k, estimator=est, tau=tau, mode=mode).to(dev)
    times: dict[str, list] = {n: [] for n in names}
    for r in range(rounds):
        for name in names:
            model = models[name]
            model.train()
            gen = torch.Generator(device=dev).manual_seed(r)
            t0 = time.perf_counter()
            logp = model(images, generator=gen)
            node_loss = F.nll_loss(logp, labels, reduction="none")
            loss = node_loss[tr].mean()
            lp = model.last_graph.info.get("log_prob")
            if lp is not None:
                loss = loss + score_function_surrogate(lp, node_loss, tr, "node", "loo")
            loss.backward()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times[name].append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
    return {n: {"step_s": float(np.median(t)), "q25": float(np.quantile(t, 0.25)), "q75": float(np.quantile(t, 0.75)),
                "times": [float(v) for v in t]} for n, t in times.items()}


def run_estimator_experiment(out: str | os.PathLike = "results", quick: bool = False, seeds: int | None = None,
                             epochs: int | None = None, warmup_epochs: int | None = None,
                             rows: Sequence[str] | None = None, device: str = "auto", resume: bool = False,
                             verbose: bool = True, pretrained: str | os.PathLike | None = None) -> dict:
    r"""Run the comparison and write ``estimators.json``, ``estimators.md`` and ``README_estimators.md`` to ``out``.

    ``quick=True`` runs :data:`QUICK` (a smoke test), else :data:`FULL`; ``seeds``, ``epochs``,
    ``warmup_epochs`` and ``rows`` override them. ``pretrained``: a backbone weights file to start
    from instead of pre-training (it must match the backbone).

    Returns ``{"config", "runs", "summary", "tables_md", "files"}``.

    Shapes: none (file outputs).

    Taught in: chapter 09 (chapters/09_estimators_4_digits.md).
    """
    cfg, names, dev = _settings(quick, seeds, epochs, warmup_epochs, rows, device, pretrained)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    images, labels = digits_subset(cfg["max_images"])
    cfg["num_images"] = int(images.shape[0])

    partial = Partial(out / "estimators.partial.json",
                      {k: v for k, v in cfg.items() if k not in ("device", "threads", "timing_rounds")}, resume)
    pre, pre_path = _pretrain_once(cfg, images, out, dev, pretrained, resume and bool(partial.runs))
    bb = create_backbone(cfg["backbone"], pretrained_file=pre_path)
    feats = extract_features(bb, images, device=dev, to_cpu=True)
    tau_data = float(suggest_tau(cosine_similarity(feats), cfg["k"], method="mass", target_mass=0.5))

    for seed in range(cfg["seeds"]):
        masks = label_masks(labels, cfg["labels_per_class"], seed=seed)
        for name in names:
            if partial.done(row=name, seed=seed):
                continue
            run = _row_run(name, cfg, seed, images, labels, masks, pre_path, tau_data, dev)
            partial.add(run)
            if verbose:
                print(f"seed={seed} {name:18s} test@bestval={run['test_acc']:.4f} "
                      f"{run['time_per_epoch']:.2f} s/epoch rows_changed={run['rows_changed']:.3f} "
                      f"relvar={run.get('relvar_backbone', float('nan')):.2e}", flush=True)

    timing = time_estimators(names, rounds=cfg["timing_rounds"], k=cfg["k"], backbone=cfg["backbone"],
                             pretrained=pre_path, device=str(dev), max_images=cfg["max_images"], tau_data=tau_data)
    runs = partial.runs
    summary = summarize(runs, names)
    for row in summary:
        if row["row"] in timing:
            row["step_s"] = timing[row["row"]]["step_s"]
            row["step_s_q25"], row["step_s_q75"] = timing[row["row"]]["q25"], timing[row["row"]]["q75"]
    result = {"timing": timing, "config": cfg, "versions": versions(), "bgcn": __version__, "tau_data": tau_data, "pretrain": pre,
              "defaults": _estimator_defaults(), "runs": runs, "summary": summary,
              "wall_time_s": time.perf_counter() - t_all}
    atomic_write_json(out / "estimators.json", result)
    tables = format_tables(summary, cfg, tau_data)
    atomic_write_text(out / "estimators.md", tables)
    atomic_write_text(out / "README_estimators.md", _readme(cfg, quick))
    partial.finish()
    result["tables_md"] = tables
    result["files"] = [str(out / f) for f in ("estimators.json", "estimators.md", "README_estimators.md")]
    return result


def _settings(quick: bool, seeds, epochs, warmup_epochs, rows, device, pretrained) -> tuple[dict, list[str], torch.device]:
    """The run's settings (:data:`QUICK` or :data:`FULL` with the non-None overrides), its rows and device."""
    cfg = dict(QUICK if quick else FULL)
    for key, val in (("seeds", seeds), ("epochs", epochs), ("warmup_epochs", warmup_epochs)):
        if val is not None:
            cfg[key] = int(val)
    names = list(ROWS if rows is None else rows)
    bad = [r for r in names if r not in ROWS]
    if bad:
        raise ValueError(f"unknown row(s) {bad}; valid: {list(ROWS)}")
    schedule_config(cfg, (ROWS[n][0] for n in names))
    dev = get_device(device)
    cfg.update({"rows": names, "quick": bool(quick), "device": str(dev), "threads": torch.get_num_threads(),
                "pretrained": None if pretrained is None else str(pretrained),
                "selection": "test accuracy at the epoch of best validation accuracy",
                "val_per_class": "= labels_per_class"})
    return cfg, names, dev


def _pretrain_once(cfg: dict, images: torch.Tensor, out: Path, dev, pretrained, reuse: bool) -> tuple[dict, Path]:
    """The one label-free pre-trained backbone of every row: the given ``pretrained`` file, the saved
    one when resuming (``reuse``), else pre-trained (SimCLR-lite) and saved. Returns ``(record, path)``."""
    pre_path = out / f"estimators_pretrained_{cfg['backbone']}.pt"
    seed_everything(0)
    bb = create_backbone(cfg["backbone"])
    if pretrained is not None:
        return {"loss": [], "time": 0.0, "file": str(Path(pretrained))}, Path(pretrained)
    if reuse and pre_path.is_file():
        return {"loss": [], "time": 0.0, "file": pre_path.name}, pre_path
    p = pretrain_backbone(bb, images, epochs=cfg["pretrain_epochs"], seed=0, device=dev, progress=False) \
        if cfg["pretrain_epochs"] > 0 else {"loss": [], "time": 0.0}
    save_backbone_weights(bb, pre_path)
    return {"loss": p["loss"], "time": p["time"], "file": pre_path.name}, pre_path


def _row_run(name: str, cfg: dict, seed: int, images: torch.Tensor, labels: torch.Tensor, masks: tuple,
             pre_path: Path, tau_data: float, dev: torch.device) -> dict:
    """One row of :data:`ROWS` for one seed: train from the pre-trained backbone, then measure."""
    tr, va, te = masks
    mode, est, tau_kind = ROWS[name]
    tau = tau_data if tau_kind == "data" else 1.0
    state = E.PerturbationState() if est in ("blackbox", "imle") else None
    seed_everything(seed)
    backbone = create_backbone(cfg["backbone"], pretrained_file=pre_path)
    init_state = {k_: v.clone() for k_, v in backbone.state_dict().items()}
    model = build_model(backbone, int(labels.max()) + 1, k=cfg["k"], estimator=est, tau=tau, hidden=cfg["hidden"],
                        dropout=cfg["dropout"], mode=mode, estimator_kw=None if state is None else {"state": state})
    res, warm = train_digits_row(model, images, labels, (tr, va, te), cfg, mode, seed, dev)
    h = res.history
    e2e = slice(warm, None)
    # graph measures on the scored model (weights at the best joint epoch), the hard kNN sets of the
    # backbone's features: the same measure for every row (a stochastic estimator's graph is a sample)
    run = {"row": name, "seed": seed, "mode": mode, "estimator": est, "tau": tau,
           "test_acc": res.test_acc_at_best_val, "best_epoch": res.best_epoch,
           "best_val_acc": res.best_val_acc, "final_test_acc": res.final["test_acc"],
           **run_measures(res, warm, init_state, images, labels, cfg["k"], dev),
           "time_per_epoch": float(np.mean(h.time[e2e])), "time_per_step": float(np.mean(h.time_step[e2e])),
           "loss_last": h.loss[-1]}
    if state is not None:
        run.update({"perturbed_rows_changed": state.changed_rows, "perturbed_swaps_per_row": state.swaps})
    if mode != "frozen":
        t0 = time.perf_counter()
        run.update(gradient_variance(res.model, images.to(dev), labels.to(dev), tr.to(dev), cfg["grad_repeats"], seed))
        run["time_grad_variance"] = time.perf_counter() - t0
    return run


def _estimator_defaults() -> dict:

    out = {}
    for name in E.SELECTION_ESTIMATORS:
        sig = inspect.signature(ESTIMATORS[name])
        out[name] = {p.name: p.default for p in sig.parameters.values()
                     if p.kind == p.KEYWORD_ONLY and p.name not in ("exclude_self", "generator", "state")
                     and isinstance(p.default, (int, float, str, bool, type(None)))}
    return out


def summarize(runs: list[dict], names: Sequence[str]) -> list[dict]:
    """Mean (± std, ddof = 1) over seeds of every measured quantity, one dict per row.

    Shapes: none.

    Taught in: chapter 09 (chapters/09_estimators_4_digits.md).
    """
    keys = ("test_acc", "final_test_acc", "warmup_test_acc", "warmup_best_test_acc", "gain_over_warmup",
            "homophily_before", "homophily_after", "time_per_epoch", "time_per_step", "rows_changed",
            "edges_changed", "grad_node_mean", "grad_graph_mean", "grad_graph_share", "relvar_backbone",
            "relvar_graph", "norm_backbone", "norm_graph", "norm_node", "perturbed_rows_changed",
            "perturbed_swaps_per_row", "best_epoch")
    return summarize_runs(runs, ({"row": name} for name in names), keys)


def format_tables(summary: list[dict], cfg: dict, tau_data: float) -> str:
    """The markdown report: accuracy/time/graph-change table and the gradient table.

    Shapes: none.

    Taught in: chapter 09 (chapters/09_estimators_4_digits.md).
    """
    def f(r, key, fmt, scale=1.0):
        v = r.get(key)
        return "–" if v is None else format(scale * v, fmt)

    head = (f"Digits ({cfg['num_images']} images), {cfg['labels_per_class']} labels per class, k = {cfg['k']}, "
            f"{cfg['seeds']} seed(s); backbone `{cfg['backbone']}` "
            + (f"loaded from `{Path(cfg['pretrained']).name}`" if cfg.get("pretrained") else
               f"pre-trained without labels ({cfg['pretrain_epochs']} epochs SimCLR-lite)")
            + f"; {cfg['epochs']} epochs per run, of which the first "
            f"{cfg['warmup_epochs']} train only the GCN on the pre-trained features (warm-up), then backbone and GCN "
            f"together; the warm-up trains on the hard kNN graph of the pre-trained features under no_grad, "
            f"the same for every row. Test accuracy at the epoch of best validation accuracy among the joint "
            f"epochs, mean ± std over seeds; after warm-up: the same run's model at the end of the warm-up; "
            f"gain: the difference, in points (± std over seeds). s/epoch: "
            f"wall time of one joint epoch (step + evaluation) on {cfg['device']} with {cfg['threads']} thread(s) "
            f"(a shared, loaded machine: these vary with the load). s/step: median over {cfg['timing_rounds']} "
            f"interleaved rounds of one training step (forward + backward) per row, measured after the runs, "
            f"the fairer comparison of cost. Rows changed: share of nodes whose hard "
            f"kNN neighbour set (top-k of the backbone's cosine similarities) differs between the pre-trained "
            f"backbone and the scored one (its weights at the best epoch); edges changed: share of kNN edges; "
            f"homophily: share of kNN edges joining two images of one class (all labels, analysis only). "
            f"τ from the data "
            f"(softmax row) = {tau_data:.4f}; the selection estimators use their defaults (see estimators.json).")
    lines = [head, "", "| row | test % | after warm-up % | gain (points) | final test % | s/step | rows changed | "
             "edges changed | homophily before → after |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary:
        gain = ("–" if r.get("gain_over_warmup") is None else
                f"{100 * r['gain_over_warmup']:+.1f} ± {100 * r.get('gain_over_warmup_std', 0.0):.1f}")
        lines.append(f"| {r['row']} | {f(r, 'test_acc', '.1f', 100)} ± {f(r, 'test_acc_std', '.1f', 100)} | "
                     f"{f(r, 'warmup_test_acc', '.1f', 100)} | {gain} | "
                     f"{f(r, 'final_test_acc', '.1f', 100)} | "
                     f"{f(r, 'step_s', '.3f')} | {f(r, 'rows_changed', '.1%')} | {f(r, 'edges_changed', '.1%')} | "
                     f"{f(r, 'homophily_before', '.1%')} → {f(r, 'homophily_after', '.1%')} |")
    lines += ["", "Gradient reaching the backbone (means over seeds). ‖∇θ‖ node / graph: mean over the joint "
              "epochs of the norm of the backbone's parameter gradient by each path (J_θᵀ g for g = ∂L/∂F along "
              "the path: the update each path makes); graph share = graph / (node + graph). Relative variance: "
              f"E‖g − ḡ‖²/‖ḡ‖² over {cfg['grad_repeats']} draws of the estimator's noise at the trained parameters, "
              "dropout off (0 = deterministic), for all backbone parameters and for the graph path alone. "
              "Perturbed rows / swaps: blackbox and I-MLE's backward at the last step (share of rows whose "
              "perturbed top-k differs, swapped neighbours per row).", "",
              "| row | ‖∇θ‖ node | ‖∇θ‖ graph | graph share | relvar backbone | relvar graph path | perturbed rows | "
              "swaps/row |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary:
        if r["row"] == "frozen":
            continue
        lines.append(f"| {r['row']} | {f(r, 'grad_node_mean', '.2e')} | {f(r, 'grad_graph_mean', '.2e')} | "
                     f"{f(r, 'grad_graph_share', '.3f')} | {f(r, 'relvar_backbone', '.2e')} | {f(r, 'relvar_graph', '.2e')} | "
                     f"{f(r, 'perturbed_rows_changed', '.1%')} | {f(r, 'perturbed_swaps_per_row', '.2f')} |")
    return "\n".join(lines) + "\n"


def compact_table(summary: list[dict]) -> str:
    """The accuracy table of :func:`format_tables` narrowed to fit a book's column.

    Columns: row, test % (mean ± std), after warm-up %, gain (points, ± std), s/step, rows changed
    (%) and homophily before → after (%); the final-epoch accuracy and the share of edges changed
    stay in :func:`format_tables`. A value and its ± are joined by non-breaking spaces so that a
    cell does not wrap inside a number.

    Shapes: none (markdown text).

    Taught in: chapter 09 (chapters/09_estimators_4_digits.md).
    """
    nb = "\u00a0"

    def pm(r, key, fmt, sign=""):
        v = r.get(key)
        if v is None:
            return "–"
        return f"{100 * v:{sign}{fmt}}{nb}±{nb}{100 * (r.get(key + '_std') or 0.0):{fmt}}"

    def pct(r, key, fmt=".1f"):
        v = r.get(key)
        return "–" if v is None else f"{100 * v:{fmt}}"

    lines = ["| row | test % | after warm-up % | gain (points) | s/step | rows changed % | "
             "homophily before → after % |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in summary:
        step = "–" if r.get("step_s") is None else f"{r['step_s']:.3f}"
        hom = f"{pct(r, 'homophily_before', '.2f')}{nb}→{nb}{pct(r, 'homophily_after', '.2f')}"
        lines.append(f"| {r['row']} | {pm(r, 'test_acc', '.1f')} | {pct(r, 'warmup_test_acc')} | "
                     f"{pm(r, 'gain_over_warmup', '.1f', '+')} | {step} | {pct(r, 'rows_changed', '.0f')} | {hom} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# reading a results file (chapter 09's digits page shows the tables and writes the reading as prose)
def load_estimator_results(path: str | os.PathLike | None = None) -> dict:
    """The committed results of :func:`run_estimator_experiment` (plain JSON), with its tables.

    ``path`` is the JSON file; by default ``estimators.json`` in the committed results folder
    (:func:`bgcn.experiments.common.results_root`: the repository's ``results/`` or
    ``BGCN_RESULTS``). The dict read from it gets ``"tables_md"`` (the ``estimators.md`` written
    beside it, or the tables formatted again from the file when that is missing) and
    ``"command"``, the command line that regenerates it.

    Shapes: none.

    Taught in: chapter 09 (chapters/09_estimators_4_digits.md).
    """
    from .experiments.common import read_committed

    res, path = read_committed("estimators.json", "`python -m bgcn estimators --out results` (tens of minutes "
                               "on two CPU cores; see results/README_estimators.md)", path)
    md = path.with_suffix(".md")
    res["tables_md"] = (md.read_text() if md.is_file() else
                        format_tables(res["summary"], res["config"], res.get("tau_data", float("nan"))))
    res["command"] = f"python -m bgcn estimators --out {path.parent.name or '.'}"
    return res


def n_comparisons(runs: Sequence[dict], references: Sequence[str]) -> int:
    """m: the pairs of rows a reading against ``references`` compares (a pair read twice counts once).

    Shapes: none.

    Taught in: chapter 09 (chapters/09_estimators_4_digits.md).
    """
    rows = {r["row"] for r in runs}
    return len({frozenset((r, ref)) for ref in references for r in rows if r != ref})


def estimator_findings(res: dict, references: dict[str, str] | None = None) -> dict:
    r"""The numbers a reading of one estimator comparison quotes (a committed file or a live run).

    ``res`` is :func:`load_estimator_results`'s dict or :func:`run_estimator_experiment`'s return
    value (both hold ``"config"``, ``"runs"`` and ``"summary"``). Differences are paired by seed
    (:func:`bgcn.viz.paired_differences`, in points) against each row of ``references`` (default
    :data:`REFERENCES`) and sorted by the book's two-standard-error rule
    (:func:`bgcn.viz.classify_differences`). Returns a dict with

    - ``"seeds"``, ``"n_test"`` (test images: all images minus the train and validation labels)
      and ``"image_points"`` (one test image in points), ``"comparisons"`` (m,
      :func:`n_comparisons`) and ``"chance"`` (m/20);
    - ``"diffs"`` / ``"classes"``: per reference, the paired differences and their classes;
    - ``"selection"``: the selection estimators present; ``"end_to_end"``: every row but ``frozen``;
    - ``"vs_softmax"``: ``{"ahead", "within", "behind"}`` (selection estimators only), ``"lead_min"``
      / ``"lead_max"`` (their mean paired differences) and ``"best"`` = ``{"row", "mean", "se",
      "images"}`` (the largest mean lead, and how many test images it is);
    - ``"vs_features"``: the classes against ``end2end_features`` (references excluded from none);
      ``"softmax_vs_features"``: ``{"mean", "se"}``; ``"vs_frozen_ahead"``: end-to-end rows ahead
      of ``frozen``; ``"level_with_both"``: selection estimators ahead of the softmax but within the
      noise of both ``end2end_features`` and ``frozen``;
    - ``"gain"``: per end-to-end row ``{"mean", "se", "n"}`` of the gain over the same run's warm-up
      model (points), ``"gain_counts"``: the rows whose gain is more than two standard errors above
      zero, ``"gain_min"`` / ``"gain_max"``;
    - ``"homophily_before"`` (percent), ``"homophily_change"`` (points, after − before, per row),
      ``"rows_changed"`` (percent, per row), ``"graph_share"`` (per row with a graph gradient) and
      ``"step_s"`` (seconds per training step, per row, where measured).

    Shapes: none.

    Taught in: chapter 09 (chapters/09_estimators_4_digits.md).
    """
    import math

    from .stats import beyond_noise, mean_std
    from .viz._estimators import classify_differences, paired_differences

    refs = dict(REFERENCES if references is None else references)
    runs, cfg = res["runs"], res["config"]
    summ = {s["row"]: s for s in res["summary"]}
    rows = list(dict.fromkeys(r["row"] for r in runs))
    selection = [r for r in E.SELECTION_ESTIMATORS if r in rows]
    e2e = [r for r in rows if r != "frozen"]
    diffs = {ref: paired_differences(runs, ref) for ref in refs if ref in rows}
    classes = {ref: classify_differences(d, exclude=[ref]) for ref, d in diffs.items()}
    n_test = int(cfg["num_images"] - 2 * 10 * cfg["labels_per_class"])
    out = {"seeds": max(v["n"] for d in diffs.values() for v in d.values()), "n_test": n_test,
           "image_points": 100.0 / n_test, "comparisons": n_comparisons(runs, list(diffs)),
           "diffs": diffs, "classes": classes, "selection": selection, "end_to_end": e2e}
    out["chance"] = out["comparisons"] / 20
    if "softmax_taudata" in diffs:
        sm, cls = diffs["softmax_taudata"], classes["softmax_taudata"]
        leads = {r: sm[r]["mean"] for r in selection}
        best = max(selection, key=leads.get)
        out["vs_softmax"] = {kind: [r for r in cls[kind] if r in selection] for kind in ("ahead", "within", "behind")}
        out["lead_min"], out["lead_max"] = min(leads.values()), max(leads.values())
        out["best"] = {"row": best, "mean": sm[best]["mean"], "se": sm[best]["se"],
                       "images": sm[best]["mean"] * n_test / 100}
    if "end2end_features" in diffs:
        out["vs_features"] = classes["end2end_features"]
        if "softmax_taudata" in diffs["end2end_features"]:
            d = diffs["end2end_features"]["softmax_taudata"]
            out["softmax_vs_features"] = {"mean": d["mean"], "se": d["se"]}
    if "frozen" in diffs:
        out["vs_frozen_ahead"] = [r for r in classes["frozen"]["ahead"] if r in e2e]
    if {"frozen", "end2end_features", "softmax_taudata"} <= set(diffs):
        out["level_with_both"] = [r for r in out["vs_softmax"]["ahead"]
                                  if r in classes["end2end_features"]["within"] and r in classes["frozen"]["within"]]
    gain = {}
    for r in e2e:
        mu, sd, n = mean_std(100 * x["gain_over_warmup"] for x in runs
                             if x["row"] == r and x.get("gain_over_warmup") is not None)
        if n:
            gain[r] = {"mean": mu, "se": sd / math.sqrt(n) if n > 1 else float("nan"), "n": n}
    out["gain"] = gain
    out["gain_counts"] = [r for r, g in gain.items() if g["mean"] > 0 and beyond_noise(g["mean"], g["se"], g["n"])]
    out["gain_min"] = min((g["mean"] for g in gain.values()), default=float("nan"))
    out["gain_max"] = max((g["mean"] for g in gain.values()), default=float("nan"))
    out["homophily_before"] = 100 * float(np.mean([s["homophily_before"] for s in summ.values()
                                                   if s.get("homophily_before") is not None]))
    out["homophily_change"] = {r: 100 * (s["homophily_after"] - s["homophily_before"]) for r, s in summ.items()
                               if s.get("homophily_after") is not None and s.get("homophily_before") is not None}
    out["rows_changed"] = {r: 100 * s["rows_changed"] for r, s in summ.items() if s.get("rows_changed") is not None}
    out["graph_share"] = {r: s["grad_graph_share"] for r, s in summ.items()
                          if r != "frozen" and s.get("grad_graph_share") is not None}
    out["step_s"] = {r: s["step_s"] for r, s in summ.items() if s.get("step_s") is not None}
    return out


def _readme(cfg: dict, quick: bool) -> str:
    cmd = "python -m bgcn.estimator_experiment --out results" + (" --quick" if quick else "")
    return (f"# Estimator comparison (chapter 09)\n\n`estimators.json` and `estimators.md` are written by\n\n"
            f"```\n{cmd}\n```\n\n(from the repository root, with the project's venv: "
            f"`.venv/bin/python -m bgcn.estimator_experiment --out results`; `--quick` is a smoke run of a few "
            f"seconds per row, `--resume` continues an interrupted run from `results/estimators.partial.json`). "
            f"The runs are deterministic on the CPU for a given seed; wall times depend on the machine and its load.\n\n"
            f"Settings: {json.dumps({k: cfg[k] for k in ('labels_per_class', 'seeds', 'epochs', 'warmup_epochs', 'backbone', 'pretrain_epochs', 'lr_backbone', 'lr_gcn', 'k', 'grad_repeats')})}\n")



def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m bgcn.estimator_experiment [--quick] [--out DIR] [--seeds N] [--resume]``; returns the exit status.

    Shapes: none.

    Taught in: chapter 09 (chapters/09_estimators_4_digits.md).
    """
    p = argparse.ArgumentParser(prog="python -m bgcn.estimator_experiment",
                                description="Compare the selection estimators of chapter 09 on the digits.")
    p.add_argument("--out", default="results", help="output folder (default: results)")
    p.add_argument("--quick", action="store_true", help="smoke run: 300 digits, 1 seed, 4 epochs")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 60)")
    p.add_argument("--warmup-epochs", type=int, default=None, help="GCN-only warm-up epochs (default 40)")
    p.add_argument("--rows", nargs="+", default=None, choices=list(ROWS), help="rows to run (default: all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--pretrained", default=None, help="backbone weights to start from (skips pre-training)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/estimators.partial.json")
    a = p.parse_args(argv)
    for flag, v in (("--seeds", a.seeds), ("--epochs", a.epochs)):
        if v is not None and v < 1:
            p.error(f"argument {flag}: must be >= 1")
    res = run_estimator_experiment(out=a.out, quick=a.quick, seeds=a.seeds, epochs=a.epochs,
                                   warmup_epochs=a.warmup_epochs, rows=a.rows, device=a.device, resume=a.resume,
                                   pretrained=a.pretrained)
    print(res["tables_md"])
    print("wrote", ", ".join(res["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
