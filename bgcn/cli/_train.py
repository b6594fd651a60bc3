"""``python -m bgcn train``: flags -> data, backbone, model and a :class:`~bgcn.TrainConfig`; one run."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

from .. import distributed as bd
from ..backbone import check_backbone_input
from ..config import TrainConfig, fit
from ..data import label_masks
from ..experiments.common import write_atomic
from ..backbone import embed_images
from ..model import build_model
from ..temperature import suggest_tau_features
from ..train import load_checkpoint
from ..utils import get_device, json_safe, peak_memory_bytes, seed_everything, versions
from ._backbone import create_backbone_for, image_shape, sample_images
from ._dataset import dataset_record, load_data
from ._parser import ENGINE_FLAGS, train_defaults
from ._types import LR_BACKBONE_PRETRAINED, LR_BACKBONE_RANDOM, WARMUP_SHARE

__all__ = ["run_train"]


def run_train(args: argparse.Namespace) -> dict:
    """Run ``train`` from parsed arguments; returns the metrics written to ``OUT/metrics.json``.

    Every flag is checked before any training starts (a bad one raises ``ValueError`` naming it):
    ``--out`` must be a folder (or creatable) that holds no checkpoint unless ``--resume`` or
    ``--overwrite`` is given, a flag of one engine is refused by the other (``--bank-refresh``,
    ``--cache-neighbours``, ``--num-workers`` need ``--batch-size``; ``--graph-every`` and ``--amp``
    are full-batch only), a data-set flag must be one the data set takes, ``--warmup-epochs`` <
    ``--epochs`` in the end-to-end modes (``auto``: a quarter of ``--epochs``, or the checkpoint's on
    ``--resume``), every class must have ``--labels-per-class`` + ``--val-per-class`` images, and
    the backbone must take the images (``in_chans``/``img_size`` are set from the data). Everything
    that defines the run goes into the config, so ``--resume`` refuses a checkpoint made with other
    settings; ``--resume`` without a checkpoint says that it starts afresh.

    Shapes: none (command line).

    Taught in: chapter 08 (chapters/08_end_to_end_4_watching.md).
    """
    defaults = train_defaults()
    _check_engine_flags(args, defaults)
    estimator = args.estimator if args.mode == "end2end" else "hard"
    out = Path(args.out or f"runs/{args.mode}-{estimator}-seed{args.seed}")
    ckpt = out / "checkpoint.pt"
    _check_out(out, ckpt, args)
    rank, world, local = bd.dist_info()
    if world > 1 and not args.batch_size:
        raise ValueError(f"{world} processes (torchrun) need the mini-batch engine: pass --batch-size B "
                         f"(B >= the number of images gives the full-batch step, split over the processes)")
    if world > 1:  # before any pass over the data: embedding is sharded over the ranks
        bd.init_distributed(device=None if args.device == "auto" else args.device)
    resume = _resume(args, ckpt)
    # every setting is checked once, by the TrainConfig, before any data is read (device and the record of
    # the data are filled in below)
    cfg = _config(args, _warmup(args, ckpt, resume), _lr_backbone(args), args.device, ckpt, resume, {})
    ds, images = load_data(args, defaults)
    masks = _masks(args, ds)
    seed_everything(args.seed)
    opts = {k: v for k, v in (("bn_policy", args.bn_policy), ("train_blocks", args.train_blocks),
                              ("img_size", args.img_size)) if v is not None}
    backbone, images, backbone_kw = create_backbone_for(args.backbone, args.pretrained_file, images, **opts)
    check_backbone_input(backbone, sample_images(images), name=args.backbone)
    device = get_device(args.device)
    tau = _tau(args, backbone, images, device)
    model = build_model(backbone, ds.num_classes, k=args.k, estimator=estimator, tau=float(tau),
                        hidden=args.hidden, dropout=args.dropout, mode=args.mode,
                        exclude_self=not args.include_self, symmetric=args.symmetric, chunk_size=args.chunk_size)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local)
    if args.batch_size and estimator == "softmax" and len(images) >= SOFTMAX_NOTE_FROM and rank == 0:
        print(softmax_cost_note(len(images), int(getattr(backbone, "num_features", 64)), args.k, device),
              file=sys.stderr, flush=True)
    extra = {"dataset": args.dataset, **dataset_record(args), "image_shape": [int(v) for v in image_shape(images)],
             "num_classes": int(ds.num_classes), "class_names": list(ds.class_names), "backbone": args.backbone,
             "backbone_kwargs": backbone_kw, "pretrained_file": args.pretrained_file,
             "labels_per_class": args.labels_per_class, "val_per_class": args.val_per_class,
             "hidden": args.hidden, "dropout": args.dropout}
    cfg = cfg.replace(device=str(device), extra=extra)
    t0 = time.perf_counter()
    res = fit(model, images, ds.labels, *masks, cfg, analysis_labels=ds.labels)
    metrics = _metrics(args, res, cfg, device, world, len(images), out, time.perf_counter() - t0)
    bd.write_if_main(out / "metrics.json", lambda path: write_atomic(path, json.dumps(json_safe(metrics), indent=2)))
    return metrics


SOFTMAX_NOTE_FROM = 20_000
"""From this many images a mini-batch run with seed 000's full-row softmax prints its cost first."""


def softmax_cost_note(n: int, d: int, k: int, device: torch.device, rows: int = 256) -> str:
    """What seed 000's softmax costs an epoch over a bank of ``n`` rows, measured here, and the way out.

    Every subgraph row (about (k + 1)·N an epoch, plus N for the evaluation) needs a log-sum-exp
    over all N bank rows: (k + 2)·N² similarities. Their rate is timed on one (``rows`` × N)
    block of random ``d``-dimensional features on ``device``.

    Shapes: none (returns one line).

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(rows, d, generator=g).to(device)
    bank = torch.randn(min(n, 200_000), d, generator=g).to(device)
    t0 = time.perf_counter()
    torch.logsumexp(q @ bank.T / 0.1, dim=1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    rate = rows * bank.shape[0] / max(time.perf_counter() - t0, 1e-9)
    work = (k + 2) * float(n) ** 2
    return (f"python -m bgcn train: note: --estimator softmax normalises every row over all N = {n:,} images: "
            f"about (k + 2)·N² = {work:.2g} similarities an epoch, at {rate:.2g}/s here about "
            f"{work / rate / 60:.0f} min an epoch before anything else. --estimator masked_softmax (the same "
            f"weights renormalised over the k kept neighbours) is linear in N, with --index auto")


def _check_engine_flags(args: argparse.Namespace, defaults: dict) -> None:
    """A flag of the mini-batch engine without ``--batch-size``, or of the full-batch engine with it, is
    refused (it would be ignored while ``metrics.json`` recorded the default)."""
    for flag, engine in ENGINE_FLAGS.items():
        dest = flag.lstrip("-").replace("-", "_")
        if getattr(args, dest) == defaults[dest]:
            continue
        if engine == "minibatch" and not args.batch_size:
            raise ValueError(f"{flag} applies only to the mini-batch engine; add --batch-size B (e.g. 256), or "
                             f"drop {flag}")
        if engine == "full" and args.batch_size:
            raise ValueError(f"{flag} does not work with --batch-size (the mini-batch engine); drop {flag}, or "
                             f"train full batch (--batch-size 0)")


def _check_out(out: Path, ckpt: Path, args: argparse.Namespace) -> None:
    """``--out`` must be a folder or creatable as one: not a file, not under a file, writable; a
    checkpoint in it is continued (``--resume``) or replaced (``--overwrite``), never silently."""
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"--out {str(out)!r} is a file, not a folder; give the path of a folder")
        if not os.access(out, os.W_OK):
            raise ValueError(f"--out {str(out)!r} is not writable; give a folder you can write to")
        if ckpt.is_file() and not (args.resume or args.overwrite):
            raise ValueError(f"--out {str(out)!r} already holds a checkpoint ({ckpt.name}); pass --resume to "
                             f"continue that run, --overwrite to replace it, or another --out")
        return
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"--out {str(out)!r} lies under {str(parent)!r}, which is a file, not a folder; "
                         f"give another --out")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--out {str(out)!r} cannot be created: {str(parent)!r} is not writable; give "
                         f"another --out")


def _resume(args: argparse.Namespace, ckpt: Path) -> bool:
    if args.resume and not ckpt.is_file():
        print(f"python -m bgcn train: --resume: no checkpoint at {ckpt}, so this run starts afresh",
              file=sys.stderr)
        return False
    return bool(args.resume)


def _warmup(args: argparse.Namespace, ckpt: Path, resume: bool) -> int:
    """``--warmup-epochs``: 'auto' is a quarter of --epochs (0 when frozen; the checkpoint's on --resume)."""
    warmup = args.warmup_epochs
    if warmup == "auto":
        warmup = 0 if args.mode == "frozen" else int(WARMUP_SHARE * args.epochs)
        if resume:  # a longer --epochs must not move the warm-up of the run being continued
            old = load_checkpoint(ckpt, map_location="cpu").get("config", {}).get("warmup_epochs")
            warmup = old if isinstance(old, int) and not isinstance(old, bool) else warmup
    return warmup  # checked with every other setting by the TrainConfig (_config)


def _lr_backbone(args: argparse.Namespace) -> float:
    if args.lr_backbone != "auto":
        return args.lr_backbone
    pretrained = args.pretrained_file is not None or args.backbone.endswith("_imagenet")
    return LR_BACKBONE_PRETRAINED if pretrained else LR_BACKBONE_RANDOM


def _masks(args: argparse.Namespace, ds) -> tuple:
    try:
        return label_masks(ds.labels, args.labels_per_class, args.val_per_class, seed=args.seed,
                           num_classes=ds.num_classes, class_names=ds.class_names)
    except ValueError as e:
        raise ValueError(_flags(str(e))) from None


def _flags(message: str) -> str:
    """A library message in the CLI's words: ``labels_per_class=5`` -> ``--labels-per-class 5``,
    ``TrainConfig.warmup_epochs=4 must be < epochs=4`` -> ``--warmup-epochs 4 must be < --epochs 4``."""
    for name in ("labels_per_class", "val_per_class"):
        message = message.replace(f"{name}=", f"--{name.replace('_', '-')} ").replace(
            name, f"--{name.replace('_', '-')}")
    names = "|".join(sorted((f.name for f in dataclasses.fields(TrainConfig)), key=len, reverse=True))
    message = re.sub(rf"(?:TrainConfig\.)?\b({names})=", lambda m: f"--{m.group(1).replace('_', '-')} ", message)
    return message.replace("TrainConfig.", "")


def _tau(args: argparse.Namespace, backbone, images, device) -> float:
    """``--tau``, or for 'auto' the τ at which the k nearest neighbours hold half the softmax mass."""
    if args.tau != "auto":
        return args.tau
    feats = embed_images(backbone.to(device), images, 512, device, num_workers=args.num_workers)
    return suggest_tau_features(feats, args.k, method="mass", exclude_self=not args.include_self)


def _config(args: argparse.Namespace, warmup: int, lr_backbone: float, device, ckpt: Path, resume: bool,
            extra: dict) -> TrainConfig:
    """The run's :class:`~bgcn.TrainConfig` (it validates every setting once; its messages name the flags)."""
    mini = {"bank_refresh": args.bank_refresh, "cache_neighbours": args.cache_neighbours,
            "num_workers": args.num_workers, "index": args.index, "bank_chunk": args.bank_chunk,
            "candidates": args.candidates,
            **({"chunk_size": args.chunk_size} if args.chunk_size is not None else {})}
    full = {"amp": bool(args.amp), "graph_every": args.graph_every}
    try:
        return TrainConfig(mode=args.mode, epochs=args.epochs, warmup_epochs=warmup, lr_backbone=lr_backbone,
                           lr_gcn=args.lr_gcn, weight_decay=args.weight_decay, seed=args.seed, device=str(device),
                           max_grad_norm=args.max_grad_norm, eval_every=args.eval_every, checkpoint=str(ckpt),
                           checkpoint_every=args.checkpoint_every, resume=resume, progress=args.progress,
                           batch_size=args.batch_size, extra=extra, **(mini if args.batch_size else full))
    except (ValueError, TypeError) as e:
        raise type(e)(_flags(str(e))) from None


def _metrics(args: argparse.Namespace, res, cfg: TrainConfig, device, world: int, n: int, out: Path,
             wall: float) -> dict:
    """What ``OUT/metrics.json`` records: the command, configs, versions, results, timings, history."""
    timings = res.timings
    per_step = timings.get("per_epoch_step", 0) or float("nan")
    return {"command": "python -m bgcn " + " ".join(sys.argv[1:]) if sys.argv[1:] else None,
            "config": res.config, "train_config": cfg.to_dict(), "tau_arg": str(args.tau),
            "warmup_arg": str(args.warmup_epochs), "lr_backbone_arg": str(args.lr_backbone),
            "versions": versions(), "seed": args.seed, "device": str(device), "world_size": world,
            **res.summary(),
            "images_per_s": timings.get("images_per_s", n / max(per_step, 1e-12)),
            "peak_memory_bytes": timings.get("peak_memory_bytes", peak_memory_bytes(device)),
            "wall_time_s": wall, "out": str(out), "checkpoint": res.checkpoint,
            "history": res.history.series()}
