r"""Short measurements for two seed claims no chapter settles (the Sources page).

- Seed 003's "training may be unstable: clip the gradients": :func:`clipping_runs` trains the
  score-function estimator of the book (``gumbel_reinforce``) end to end on the digits, each seed
  once without and once with ``max_grad_norm``, and records divergence, the loss and the accuracy.
- Seed 004's "a regularisation that prevents cost collapse": :func:`score_scale` measures how
  spread out each row of scores is and how far its top-k boundary is from a tie;
  :class:`ScoreScale` records it at every evaluation of a training run, and
  :func:`score_scale_runs` runs ``identity`` (and other estimators) end to end with it.

Every run is chapter 09's loop on a small subset of the digits (:data:`SETTINGS`), starting from
chapter 08's label-free pre-trained MLP, so that the page that calls them executes in seconds.

Taught in: the Sources page (chapters/sources.md).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..backbone import create_backbone
from ..data import label_masks
from ..estimators import row_std
from ..model import build_model
from ..similarity import cosine_similarity, mask_diagonal
from ..stats import mean_std, paired_difference
from ..train import Plugin, TrainingDiverged, pretrain_backbone, train
from ..utils import seed_everything
from .common import digits_subset

__all__ = ["SETTINGS", "pretrained_digits_mlp", "score_scale", "ScoreScale", "score_scale_runs", "score_scale_summary",
           "clipping_runs", "clipping_summary"]

#: The runs' settings: chapter 09's loop (k, GCN, learning rates) on 300 digits, 10 labels a class.
SETTINGS = {"max_images": 300, "labels_per_class": 10, "k": 10, "hidden": 64, "dropout": 0.5,
            "lr_backbone": 3e-4, "lr_gcn": 2e-2, "weight_decay": 5e-4, "warmup_epochs": 20, "epochs": 60}


def pretrained_digits_mlp(results: str | os.PathLike | None = None) -> Path:
    """Chapter 08's label-free pre-trained ``mlp_digits`` weights: the committed file, or made now.

    ``results`` (default: ``$BGCN_RESULTS`` or the repository's ``results/``) holding
    ``pretrained_mlp_digits.pt``; when it is missing the same recipe (SimCLR-lite, 100 epochs, seed
    0, about 10 s) writes it to a temporary folder.

    Shapes: none (a file path).

    Taught in: the Sources page (chapters/sources.md).
    """
    root = Path(__file__).resolve().parents[2]
    folder = Path(results) if results is not None else Path(os.environ.get("BGCN_RESULTS", root / "results"))
    path = folder / "pretrained_mlp_digits.pt"
    if path.is_file():
        return path
    from ..data import load_dataset

    path = Path(tempfile.mkdtemp()) / path.name
    seed_everything(0)
    pretrain_backbone(create_backbone("mlp_digits"), load_dataset("digits").images, epochs=100, seed=0,
                      device="cpu", progress=False, save_to=path)
    return path


def score_scale(features: torch.Tensor, k: int, tau: float = 1.0) -> dict[str, float]:
    r"""How spread out each row of scores :math:`\theta = S/\tau` is, and how far its top-k is from a tie.

    With :math:`S` the cosine similarities of ``features`` (diagonal left out) and :math:`s_i` the
    standard deviation of row i (:func:`bgcn.estimators.row_std`), returns the means over rows

    .. math::
        \text{spread} = \frac1N\sum_i s_i, \qquad
        \text{gap} = \frac1N\sum_i \frac{\theta_{i(k)} - \theta_{i(k+1)}}{s_i},

    where :math:`\theta_{i(k)}` is the k-th largest score of row i. A *cost collapse* is the spread
    going to 0 (every candidate scored alike) or the gap going to 0 (the top-k boundary at a tie,
    where any noise changes the selection). The gap is in row standard deviations, so it does
    not depend on :math:`\tau`; the spread scales with :math:`1/\tau`.

    Shapes:
        features: (N, D), N > k + 1 -> a dict of floats

    Taught in: the Sources page (chapters/sources.md).
    """
    with torch.no_grad():
        theta = mask_diagonal(cosine_similarity(features.detach().double())) / tau
        s = row_std(theta)
        top = theta.topk(k + 1, dim=-1).values
        gap = (top[:, k - 1] - top[:, k]) / s[:, 0]
    return {"spread": float(s.mean()), "gap": float(gap.mean())}


class ScoreScale(Plugin):
    """:func:`score_scale` of the backbone's features at every evaluation (eval mode, no gradient).

    ``self.rows`` collects ``{"epoch", "spread", "gap"}`` dicts, epoch 0 being the model before
    training. It consumes no random numbers, so the run is the one it would be without it.

    Shapes: none.

    Taught in: the Sources page (chapters/sources.md).
    """

    def __init__(self, k: int, tau: float = 1.0):
        self.k, self.tau, self.rows = int(k), float(tau), []

    def _measure(self, run, epoch: int) -> dict:
        backbone = run.engine.model.backbone
        was = backbone.training
        backbone.eval()
        with torch.no_grad():
            f = backbone(run.engine.images)
        backbone.train(was)
        self.rows.append({"epoch": int(epoch), **score_scale(f, self.k, self.tau)})
        return {}

    def on_initial(self, run, graph) -> dict:
        return self._measure(run, 0)

    def on_evaluate(self, run, epoch: int, graph) -> dict:
        return self._measure(run, epoch)


def _digits(cfg: dict, seed: int):
    images, labels = digits_subset(cfg["max_images"])
    return images, labels, label_masks(labels, cfg["labels_per_class"], seed=seed)


def _run(estimator: str, seed: int, pretrained: Path, cfg: dict, plugins=(), estimator_kw=None, **kw):
    images, labels, (tr, va, te) = _digits(cfg, seed)
    seed_everything(seed)
    backbone = create_backbone("mlp_digits", pretrained_file=pretrained)
    model = build_model(backbone, int(labels.max()) + 1, k=cfg["k"], estimator=estimator, tau=1.0,
                        hidden=cfg["hidden"], dropout=cfg["dropout"], mode="end2end", estimator_kw=estimator_kw)
    return train(model, images, labels, tr, va, te, mode="end2end", epochs=cfg["epochs"],
                 warmup_epochs=cfg["warmup_epochs"], lr_backbone=cfg["lr_backbone"], lr_gcn=cfg["lr_gcn"],
                 weight_decay=cfg["weight_decay"], seed=seed, device="cpu", graph_every=0, progress=False,
                 plugins=plugins, **kw)


def score_scale_runs(estimators: Sequence[str | tuple[str, dict]] = ("identity",), seeds: int = 3,
                     pretrained: str | os.PathLike | None = None, **settings) -> list[dict]:
    """End-to-end runs with :class:`ScoreScale`: does the score scale collapse during training?

    For every estimator and seed, chapter 09's loop (:data:`SETTINGS`, overridden by
    ``settings``) from the label-free pre-trained MLP, with :func:`score_scale` of the backbone's
    features before training and after every epoch (constant during the warm-up, when the
    backbone does not learn). An entry of ``estimators`` is a name or ``(name, keyword
    arguments)``, e.g. ``("identity", {"noise_rel": 1.0})`` for the identity with its noise.

    Returns one dict per run: ``{"estimator", "estimator_kw", "seed", "epoch": [...],
    "spread": [...], "gap": [...], "test_acc", "warmup_epochs"}``.

    Shapes: none.

    Taught in: the Sources page (chapters/sources.md).
    """
    cfg = {**SETTINGS, **settings}
    pre = Path(pretrained) if pretrained is not None else pretrained_digits_mlp()
    out = []
    for entry in estimators:
        est, kw = (entry, {}) if isinstance(entry, str) else (entry[0], dict(entry[1]))
        for seed in range(seeds):
            plug = ScoreScale(cfg["k"])
            res = _run(est, seed, pre, cfg, plugins=[plug], estimator_kw=kw or None)
            out.append({"estimator": est, "estimator_kw": kw, "seed": seed, "warmup_epochs": cfg["warmup_epochs"],
                        **{key: [r[key] for r in plug.rows] for key in ("epoch", "spread", "gap")},
                        "test_acc": res.test_acc_at_best_val})
    return out


def clipping_runs(seeds: int = 5, max_grad_norm: float = 1.0, estimator: str = "gumbel_reinforce",
                  pretrained: str | os.PathLike | None = None, **settings) -> list[dict]:
    """Each seed trained twice end to end, without and with gradient clipping (seed 003's advice).

    Chapter 09's loop (:data:`SETTINGS`, overridden by ``settings``) with the score-function
    estimator ``gumbel_reinforce`` (per-node rewards, leave-one-out baseline), AdamW, from the
    label-free pre-trained MLP; the second run of a seed clips the global gradient norm at
    ``max_grad_norm`` (:func:`bgcn.train`'s option). Same seed: same split, initialisation,
    dropout and estimator noise until the clipped step first differs.

    Returns one dict per run: ``{"seed", "max_grad_norm" (None or the value), "diverged" (a
    :class:`~bgcn.train.TrainingDiverged` was raised), "test_acc", "loss" (per epoch),
    "grad_backbone" (per joint epoch, before clipping), "warmup_epochs"}``.

    Shapes: none.

    Taught in: the Sources page (chapters/sources.md).
    """
    cfg = {**SETTINGS, **settings}
    pre = Path(pretrained) if pretrained is not None else pretrained_digits_mlp()
    out = []
    for seed in range(seeds):
        for clip in (None, float(max_grad_norm)):
            row = {"seed": seed, "max_grad_norm": clip, "warmup_epochs": cfg["warmup_epochs"]}
            try:
                res = _run(estimator, seed, pre, cfg, max_grad_norm=clip)
            except TrainingDiverged:
                out.append({**row, "diverged": True, "test_acc": float("nan"), "loss": [], "grad_backbone": []})
                continue
            h = res.history
            out.append({**row, "diverged": False, "test_acc": res.test_acc_at_best_val, "loss": list(h.loss),
                        "grad_backbone": list(h.grad_backbone[cfg["warmup_epochs"]:])})
    return out


def clipping_summary(runs: Sequence[dict]) -> dict:
    """What :func:`clipping_runs` found: divergences, the paired accuracy difference, how often clipping acted.

    Returns ``{"seeds", "max_grad_norm", "diverged_plain", "diverged_clipped", "acc_plain",
    "acc_clipped"`` (means, %), ``"diff"`` (a :class:`~bgcn.stats.PairedDifference` of clipped
    minus plain test accuracy, in points), ``"clip_active"`` (the share of the clipped runs' joint
    steps whose backbone gradient alone was above the clip, a lower bound on how often it
    acted), ``"grad_median"`` (the median backbone gradient norm of those steps)``}``.

    Shapes: none.

    Taught in: the Sources page (chapters/sources.md).
    """
    plain = {r["seed"]: r for r in runs if r["max_grad_norm"] is None}
    clipped = {r["seed"]: r for r in runs if r["max_grad_norm"] is not None}
    clip = next(iter(clipped.values()))["max_grad_norm"] if clipped else float("nan")
    grads = np.array([g for r in clipped.values() for g in r["grad_backbone"]], dtype=np.float64)
    acc = lambda rs: 100 * float(np.nanmean([r["test_acc"] for r in rs.values()]))  # noqa: E731
    return {"seeds": len(plain), "max_grad_norm": clip,
            "diverged_plain": sum(r["diverged"] for r in plain.values()),
            "diverged_clipped": sum(r["diverged"] for r in clipped.values()),
            "acc_plain": acc(plain), "acc_clipped": acc(clipped),
            "diff": paired_difference({s: 100 * r["test_acc"] for s, r in clipped.items()},
                                      {s: 100 * r["test_acc"] for s, r in plain.items()}),
            "clip_active": float((grads > clip).mean()) if grads.size else float("nan"),
            "grad_median": float(np.median(grads)) if grads.size else float("nan")}


def score_scale_summary(runs: Sequence[dict]) -> dict[str, dict]:
    """Per estimator (and keyword arguments), how the score scale of :func:`score_scale_runs` ended.

    Returns ``{label: {"spread_ratio", "spread_ratio_std", "gap_ratio", "gap_ratio_std",
    "test_acc", "n"}}``: each run's spread and gap at its last epoch over their values before
    training (1: unchanged; the warm-up does not move them), mean and standard deviation over
    seeds, and the mean test accuracy (%). The label is the estimator's name, followed by its
    keyword arguments when it has some (``"identity noise_rel=1.0"``).

    Shapes: none.

    Taught in: the Sources page (chapters/sources.md).
    """
    groups: dict[str, list[dict]] = {}
    for r in runs:
        kw = r.get("estimator_kw") or {}
        label = " ".join([r["estimator"], *(f"{k}={v}" for k, v in sorted(kw.items()))])
        groups.setdefault(label, []).append(r)
    out = {}
    for label, rs in groups.items():
        row = {"n": len(rs), "test_acc": 100 * float(np.mean([r["test_acc"] for r in rs]))}
        for key in ("spread", "gap"):
            m, sd, _ = mean_std(r[key][-1] / r[key][0] for r in rs)
            row[f"{key}_ratio"], row[f"{key}_ratio_std"] = m, sd
        out[label] = row
    return out
