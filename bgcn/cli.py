r"""Command line: ``python -m bgcn train …`` and ``python -m bgcn experiment …``.

``train`` trains one model (frozen, end-to-end through the features, or end-to-end through the
graph) and writes ``OUT/metrics.json`` (config, versions, seed, accuracies, timings, history) and
``OUT/checkpoint.pt`` (state dicts, ``torch.load(weights_only=True)``). ``experiment`` runs the
comparison of :mod:`bgcn.experiment`.

Bad flags exit with status 2 and a one-line ``error: …`` naming the flag (no traceback); a run that
diverges (NaN loss) exits with status 1 and keeps its last good checkpoint.

Taught in: chapter 08 (chapters/08_end_to_end.md).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from .utils import json_safe as _json_safe
from .utils import versions

__all__ = ["main", "build_parser", "run_train", "versions"]


# --------------------------------------------------------------------------------------------------
# argument types: argparse turns their ArgumentTypeError into "argument --flag: message", exit 2
# --------------------------------------------------------------------------------------------------
def _parse_number(text: str, kind: type, minimum: float, strict: bool):
    """``kind(text)`` checked against ``minimum`` (``> minimum`` if ``strict`` else ``>=``); finite."""
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(v) or (v <= minimum if strict else v < minimum):
        what = "an integer" if kind is int else "a finite number"
        raise argparse.ArgumentTypeError(f"{text} must be {what} {'>' if strict else '>='} {minimum}")
    return v


def _positive_int(text: str) -> int:
    return _parse_number(text, int, 0, strict=True)


def _nonneg_int(text: str) -> int:
    return _parse_number(text, int, 0, strict=False)


def _positive_float(text: str) -> float:
    return _parse_number(text, float, 0, strict=True)


def _nonneg_float(text: str) -> float:
    return _parse_number(text, float, 0, strict=False)


def _probability(text: str) -> float:
    v = _nonneg_float(text)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"{text} must lie in [0, 1)")
    return v


#: The smallest temperature the CLI takes. Scores are cosines in [-1, 1], so scores/τ reach 1/τ and
#: the softmax's gradient scales with 1/τ: at τ = 1e-8 a cosine gap of one float32 rounding step
#: (6e-8) already becomes a logit gap of 6, a hard argmax, and below it only overflow is left
#: (float32 ends at 3.4e38, so τ < 3e-39 makes scores/τ infinite).
TAU_MIN = 1e-8

#: Seeds are ints in [0, SEED_MAX]: torch's generators take 64 bits and the runs seed with seed + 1.
SEED_MAX = 2**63 - 1


def _tau(text: str) -> float | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        v = _positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"tau={text!r} must be a number > 0 or 'auto' (chosen from the data)") from None
    if v < TAU_MIN:
        raise argparse.ArgumentTypeError(
            f"tau={text} is below {TAU_MIN:g}: scores/tau (cosines in [-1, 1]) would reach {1 / v:.1e} and the "
            f"softmax is a hard argmax whose gradient scales with 1/tau; use tau >= {TAU_MIN:g} or 'auto'")
    return v


#: ``--lr-backbone auto``: from random weights, and with --pretrained-file (measured in issue 9 on
#: generated folders of 120 images and on the digits: 1e-3 from random weights beat 1e-4 and 3e-4).
LR_BACKBONE_RANDOM = 1e-3
LR_BACKBONE_PRETRAINED = 1e-4
#: ``--warmup-epochs auto`` is this share of --epochs (rounded down).
WARMUP_SHARE = 0.25


def _auto_or(kind):
    """An argument type that takes 'auto' or what ``kind`` takes."""
    def parse(text: str):
        return "auto" if text.strip().lower() == "auto" else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def _seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= v <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"seed {text} is out of range; use an integer in [0, 2**63 - 1]")
    return v


def _estimator(text: str) -> str:
    from .topk import ESTIMATORS

    _load_estimators()
    if text not in ESTIMATORS:
        import difflib

        close = difflib.get_close_matches(text, list(ESTIMATORS), n=2)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise argparse.ArgumentTypeError(f"unknown estimator {text!r}{hint}; "
                                         f"choose one of {', '.join(sorted(ESTIMATORS))}")
    return text


def _device(text: str) -> str:
    from .utils import get_device

    try:
        get_device(text)
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _load_estimators() -> None:
    """Register the chapter-09 estimators when that module is present."""
    try:
        from . import estimators  # noqa: F401
    except ImportError:
        pass


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``<prog>: error: <message>`` (exit 2)."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``python -m bgcn`` parser with sub-commands ``train`` and ``experiment``.

    Shapes: none (command line).

    Taught in: chapter 08 (chapters/08_end_to_end.md).
    """
    from .model import MODES

    p = _Parser(prog="python -m bgcn", description="BackProp GCN: a GCN on a kNN graph of image features, "
                "trained end to end through the ranking step.", formatter_class=_Formatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("train", help="train one model and write metrics.json + checkpoint.pt",
                       formatter_class=_Formatter, description=(
                           "Train one model full-batch on all images (transductive: the kNN graph spans "
                           "labelled and unlabelled images).\n\nModes: frozen = features once, hard graph, only "
                           "the GCN learns; end2end-features = the extractor learns through the node features, "
                           "hard graph (seed 000's loop as written); end2end = through the features and the "
                           "estimator's edge weights.\n\nExample:\n  python -m bgcn train --dataset digits --mode "
                           "end2end --estimator softmax --k 10 --tau 0.05 --labels-per-class 10 --epochs 100 "
                           "--device auto --out runs/softmax"))
    d = t.add_argument_group("data")
    d.add_argument("--dataset", default="digits",
                   help="'digits', 'synthetic', 'nuisance-shapes' (chapter 12's positive control), 'fashion-mnist' "
                        "(Debian's dataset-fashion-mnist) or a folder "
                        "path/<class>/*.png (with --batch-size it is read lazily, image by image)")
    d.add_argument("--subset", type=_positive_int, default=None,
                   help="fashion-mnist: a stratified subset of this many images (the same for every --seed)")
    d.add_argument("--split", default="train", choices=["train", "test", "all"], help="fashion-mnist split")
    d.add_argument("--data-dir", default=None,
                   help="fashion-mnist: folder of the IDX files (default $BGCN_FASHION_MNIST_DIR, else Debian's)")
    d.add_argument("--image-size", type=_positive_int, default=None,
                   help="folder datasets: resize every image to this size (needed when sizes differ)")
    d.add_argument("--num-workers", type=_nonneg_int, default=0,
                   help="with --batch-size and a folder: decode images in this many DataLoader workers")
    d.add_argument("--synthetic-n", type=_positive_int, default=1000, help="number of images for --dataset synthetic / nuisance-shapes")
    d.add_argument("--labels-per-class", type=_positive_int, default=10, help="labelled (training) images per class")
    d.add_argument("--val-per-class", type=_nonneg_int, default=None,
                   help="validation images per class (default: same as --labels-per-class)")
    m = t.add_argument_group("model")
    m.add_argument("--mode", default="end2end", choices=list(MODES), help="what learns and through which path")
    m.add_argument("--estimator", type=_estimator, default="softmax",
                   help="top-k estimator for --mode end2end (see bgcn.ESTIMATORS); ignored by the other modes")
    m.add_argument("--k", type=_positive_int, default=10, help="neighbours per node")
    m.add_argument("--chunk-size", type=_positive_int, default=None,
                   help="build the kNN graph in blocks of this many rows, never an N x N matrix (hard graph, "
                        "or --estimator values / masked_softmax; chapter 10); default: dense")
    m.add_argument("--tau", type=_tau, default="auto",
                   help="temperature > 0, or 'auto': the tau at which the k nearest neighbours hold half of the "
                        "softmax mass on the initial features (bgcn.temperature.suggest_tau); seed 000's tau=1 "
                        "makes the softmax nearly uniform on the digits (chapter 05)")
    m.add_argument("--backbone", default="mlp_digits",
                   help="bgcn.create_backbone name (mlp_digits, cnn_digits, vit_digits, vit_tiny_digits, or any timm "
                        "name); from random weights vit_digits reaches only ~15%% on the digits in 60 epochs, so "
                        "the default is the small MLP (chapter 08)")
    m.add_argument("--pretrained-file", default=None, help="local backbone weights (.safetensors or .pt)")
    m.add_argument("--bn-policy", default=None, choices=["eval", "train", "frozen"],
                   help="BatchNorm of backbones that have it (efficientnet_lite0_imagenet): eval = running "
                        "statistics kept (the default with pretrained weights; train mode collapses end-to-end "
                        "training on Fashion-MNIST, chapter 12), train = plain PyTorch, frozen = eval + no "
                        "affine update")
    m.add_argument("--train-blocks", type=_nonneg_int, default=None,
                   help="efficientnet_lite0_imagenet: train only the last N stages (default: all)")
    m.add_argument("--img-size", type=_positive_int, default=None,
                   help="efficientnet_lite0_imagenet: the size it resizes images to (default 64)")
    m.add_argument("--hidden", type=_positive_int, default=64, help="GCN hidden channels")
    m.add_argument("--dropout", type=_probability, default=0.5, help="GCN dropout")
    m.add_argument("--symmetric", action="store_true", help="symmetrise the kNN graph")
    m.add_argument("--include-self", action="store_true", help="keep each node in its own ranking")
    o = t.add_argument_group("optimisation")
    o.add_argument("--epochs", type=_positive_int, default=100,
                   help="epochs (full batch: one step each; with --batch-size: one pass over the images)")
    o.add_argument("--batch-size", type=_nonneg_int, default=0,
                   help="images per step, over a feature bank (bgcn.minibatch.train_minibatch, chapter 11); "
                        "0: full batch (the chapters' exact path). Needed under torchrun")
    o.add_argument("--bank-refresh", type=_nonneg_int, default=1,
                   help="with --batch-size: refill the feature bank every R epochs (0: never)")
    o.add_argument("--cache-neighbours", action="store_true",
                   help="with --batch-size: keep every node's neighbour list in the bank (faster, staler)")
    o.add_argument("--eval-every", type=_positive_int, default=1,
                   help="evaluate on the whole graph every E epochs (and at the last); model selection sees "
                        "only the evaluated epochs")
    o.add_argument("--warmup-epochs", type=_auto_or(_nonneg_int), default="auto",
                   help="end-to-end modes: first train only the GCN on the initial features for this many epochs, "
                        "then the backbone too; must be < --epochs. 'auto': a quarter of --epochs (on --resume: "
                        "the checkpoint's), so the backbone learns through a GCN that already fits the labels")
    o.add_argument("--lr-backbone", type=_auto_or(_positive_float), default="auto",
                   help=f"AdamW learning rate of the backbone; 'auto': {LR_BACKBONE_RANDOM:g} from random weights, "
                        f"{LR_BACKBONE_PRETRAINED:g} with --pretrained-file (a smaller step keeps what the "
                        f"weights learnt)")
    o.add_argument("--lr-gcn", type=_positive_float, default=1e-2, help="AdamW learning rate of the GCN")
    o.add_argument("--weight-decay", type=_nonneg_float, default=5e-4, help="AdamW weight decay")
    o.add_argument("--max-grad-norm", type=_positive_float, default=None, help="clip the gradient norm")
    o.add_argument("--seed", type=_seed, default=0, help="seed of the label split, initialisation and dropout")
    r = t.add_argument_group("run")
    r.add_argument("--device", type=_device, default="auto", help="auto (CUDA when present), cpu or cuda")
    r.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is faster on a busy machine)")
    amp = r.add_mutually_exclusive_group()
    amp.add_argument("--amp", action="store_true",
                     help="bf16 autocast for the backbone on CUDA (off by default: bf16-rounded features "
                          "change the kNN graph; worth it only for a large backbone)")
    amp.add_argument("--no-amp", action="store_true", help="no bf16 autocast (the default; kept for old scripts)")
    r.add_argument("--out", default=None, help="output folder (default runs/<mode>-<estimator>-seed<seed>)")
    r.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    r.add_argument("--checkpoint-every", type=_positive_int, default=1,
                   help="write OUT/checkpoint.pt every C epochs (and at the last)")
    r.add_argument("--graph-every", type=_nonneg_int, default=1,
                   help="keep the kNN graph every this many epochs in the checkpoint (0: first and last only)")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on/off; None = only on a terminal and without TQDM_DISABLE=1")

    sub.add_parser("estimators", add_help=False,
                   help="chapter 09: compare the selection estimators on the digits "
                        "(python -m bgcn estimators --help; --quick for a smoke run)")
    e = sub.add_parser("experiment", help="frozen vs end-to-end comparison; writes results/*.json, .md, .csv",
                       formatter_class=_Formatter,
                       description="Run the comparison of bgcn.experiment on the digits: kNN classifier and label "
                                   "spreading on frozen features, frozen GCN (random and pre-trained backbone), "
                                   "end2end-features, end2end softmax at tau=1 and at a tau from the data, "
                                   "end2end masked_softmax and values; mean +- std over seeds.")
    e.add_argument("--dataset", default="digits", choices=["digits", "fashion-mnist", "nuisance-shapes"],
                   help="digits: chapter 08's comparison; fashion-mnist / nuisance-shapes: chapter 12's, with the "
                        "ImageNet EfficientNet-Lite0 and the mini-batch engine (bgcn.experiments.real; writes "
                        "OUT/<dataset>.json and .md; default OUT results/real)")
    e.add_argument("--n", type=_positive_int, default=None, help="chapter 12: images in the fixed subset")
    e.add_argument("--batch-size", type=_positive_int, default=None, help="chapter 12: images per step")
    e.add_argument("--img-size", type=_positive_int, default=None, help="chapter 12: backbone input size")
    e.add_argument("--only-seeds", type=_nonneg_int, nargs="+", default=None,
                   help="chapter 12: run only these of the --seeds (one process per seed, each with its own --out)")
    e.add_argument("--quick", action="store_true",
                   help="tiny version (400 digits, 1 label setting, 1 seed, 4 epochs, MLP backbone; chapter 12: "
                        "300 images, 3 epochs, 5 rows)")
    e.add_argument("--seeds", type=_positive_int, default=None, help="number of seeds (default 5; 1 with --quick)")
    e.add_argument("--labels", type=_positive_int, nargs="+", default=None,
                   help="labels per class settings (default 5 10 20; 10 with --quick)")
    e.add_argument("--epochs", type=_positive_int, default=None, help="epochs per run (default: see bgcn.experiment)")
    e.add_argument("--backbone", default=None, help="backbone name (default mlp_digits, see bgcn.experiment.FULL)")
    e.add_argument("--pretrain-epochs", type=_nonneg_int, default=None, help="SimCLR-lite pre-training epochs")
    e.add_argument("--warmup-epochs", type=_nonneg_int, default=None,
                   help="end-to-end rows: GCN-only epochs on the pre-trained features before joint training")
    e.add_argument("--methods", nargs="+", default=None, metavar="ROW",
                   help="only these rows (see bgcn.experiment.ROWS); default: all")
    e.add_argument("--lr-backbone", type=_positive_float, default=None,
                   help="backbone learning rate of the end-to-end rows (default: see bgcn.experiment.FULL)")
    e.add_argument("--k", type=_positive_int, default=10, help="neighbours per node")
    e.add_argument("--device", type=_device, default="auto", help="auto (CUDA when present), cpu or cuda")
    e.add_argument("--out", default=None, help="output folder (default results, or results/real for chapter 12)")
    e.add_argument("--resume", action="store_true",
                   help="continue from OUT/experiment.partial.json (same settings) instead of starting over")
    e.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is faster on a busy machine)")
    e.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars and one line per run; None = only on a terminal and without TQDM_DISABLE=1")
    return p


# --------------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------------
def _check_out(out: Path) -> None:
    """``--out`` must be a folder or creatable as one: not a file, not under a file, writable."""
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"--out {str(out)!r} is a file, not a folder; give the path of a folder")
        if not os.access(out, os.W_OK):
            raise ValueError(f"--out {str(out)!r} is not writable; give a folder you can write to")
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


def _flags(message: str) -> str:
    """A library message in the CLI's words: ``labels_per_class=5`` -> ``--labels-per-class 5``."""
    for name in ("labels_per_class", "val_per_class"):
        message = message.replace(f"{name}=", f"--{name.replace('_', '-')} ").replace(
            name, f"--{name.replace('_', '-')}")
    return message


def _is_fashion(name: str) -> bool:
    return str(name).lower().replace("_", "-") == "fashion-mnist"


def _shape(images) -> tuple:
    return tuple(images.image_shape) if not hasattr(images, "shape") else tuple(images.shape[1:])


def _sample_images(images):
    """A few images as a float tensor (for the backbone's input check)."""
    import torch

    from .minibatch import _rows

    return _rows(images, torch.arange(min(2, len(images))))


def _load_data(args: argparse.Namespace):
    """The dataset and its images: a float tensor (full batch), a uint8 tensor (fashion-mnist with
    --batch-size: a quarter of the memory) or a lazy folder source (a folder with --batch-size)."""
    import torch

    from .data import ImageFolderSource, load_dataset

    fashion = _is_fashion(args.dataset)
    for flag, value, ok in (("--subset", args.subset, fashion), ("--data-dir", args.data_dir, fashion),
                            ("--image-size", args.image_size, not fashion and args.dataset.replace("_", "-") not in (
                                "digits", "synthetic", "nuisance-shapes"))):
        if value is not None and not ok:
            raise ValueError(f"{flag} does not apply to --dataset {args.dataset}; drop it")
    if args.dataset == "synthetic":
        ds = load_dataset("synthetic", n=args.synthetic_n, seed=args.seed)
    elif args.dataset.replace("_", "-") == "nuisance-shapes":
        ds = load_dataset("nuisance-shapes", n=args.synthetic_n, seed=0)
    elif fashion:
        ds = load_dataset("fashion-mnist", split=args.split, subset=args.subset, seed=0, data_dir=args.data_dir,
                          dtype=torch.uint8 if args.batch_size else torch.float32)
    elif args.dataset != "digits" and args.batch_size and Path(args.dataset).is_dir():
        src = ImageFolderSource(args.dataset, image_size=args.image_size)
        return src, src
    else:
        kw = {"image_size": args.image_size} if args.image_size is not None else {}
        ds = load_dataset(args.dataset, **kw)
    return ds, ds.images


def _create_backbone_for(name: str, pretrained_file, images, **opts) -> tuple:
    """``create_backbone(name)`` fitted to the images; returns (backbone, images, options used).

    A registered backbone gets ``in_chans`` and ``img_size`` from the data where its config has
    them (``cnn_digits`` takes any size, so no ``img_size``). A timm model gets ``in_chans`` from
    the data and, if its architecture takes one (ViTs), ``img_size``; with ``pretrained_file`` it
    keeps the 3 input channels its weights were trained on and one-channel images are repeated
    over 3 channels (a grayscale image as RGB).
    """
    from .backbone import backbone_config, create_backbone, list_backbones

    c, h, w = (int(v) for v in _shape(images))
    size = h if h == w else (h, w)
    from .backbone import _REGISTRY

    if opts and (name not in list_backbones() or not getattr(_REGISTRY[name][0], "bgcn_resizes_images", False)):
        flags = ", ".join("--" + k.replace("_", "-") for k in opts)
        raise ValueError(f"{flags} apply to --backbone efficientnet_lite0_imagenet, not {name!r}; drop them")
    if name in list_backbones() and getattr(_REGISTRY[name][0], "bgcn_resizes_images", False):
        # it takes the images as they come (1/3 channels, any size) and resizes them itself
        backbone = create_backbone(name, pretrained_file=pretrained_file, **opts)
        kw = dict(opts)
    elif name in list_backbones():
        cfg = backbone_config(name)
        kw = {k: v for k, v in (("in_chans", c), ("img_size", size)) if k in cfg}
        backbone = create_backbone(name, pretrained_file=pretrained_file, **kw)
    else:
        kw = {}
        if pretrained_file is None:
            kw["in_chans"] = c
        elif c == 1 and isinstance(images, __import__("torch").Tensor):
            print(f"python -m bgcn train: {name} with --pretrained-file takes 3-channel images: the "
                  f"one-channel images are repeated over 3 channels", file=sys.stderr)
            images = images.expand(-1, 3, -1, -1).contiguous()
        try:  # timm ViTs are built for one image size: give them the data's
            backbone = create_backbone(name, pretrained_file=pretrained_file, img_size=size, **kw)
            kw["img_size"] = size
        except TypeError:  # the architecture takes no img_size (a conv net): any size works
            backbone = create_backbone(name, pretrained_file=pretrained_file, **kw)
    return backbone, images, {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}


def run_train(args: argparse.Namespace) -> dict:
    """Run ``train`` from parsed arguments; returns the metrics written to ``OUT/metrics.json``.

    Every flag is checked before any training starts (a bad one raises ``ValueError`` naming it):
    ``--out`` must be a folder (or creatable), ``--warmup-epochs`` < ``--epochs`` in the end-to-end
    modes (``auto``: a quarter of ``--epochs``, or the checkpoint's on ``--resume``), every class must have ``--labels-per-class`` + ``--val-per-class`` images, and the
    backbone must take the images (``in_chans``/``img_size`` are set from the data). Everything that
    defines the run goes into ``extra_config``, so ``--resume`` refuses a checkpoint made with other
    settings; ``--resume`` without a checkpoint says that it starts afresh.

    Shapes: none (command line).

    Taught in: chapter 08 (chapters/08_end_to_end.md).
    """
    from .backbone import check_backbone_input
    from .data import label_masks, load_dataset
    from .model import build_model
    from .similarity import cosine_similarity
    from .train import train
    import torch

    from .utils import get_device, peak_memory_bytes, seed_everything

    _load_estimators()
    estimator = args.estimator if args.mode == "end2end" else "hard"
    out = Path(args.out or f"runs/{args.mode}-{estimator}-seed{args.seed}")
    _check_out(out)
    ckpt = out / "checkpoint.pt"
    resume = bool(args.resume)
    from . import distributed as bd

    rank, world, local = bd.dist_info()
    if world > 1 and not args.batch_size:
        raise ValueError(f"{world} processes (torchrun) need the mini-batch engine: pass --batch-size B "
                         f"(B >= the number of images gives the full-batch step, split over the processes)")
    if args.batch_size and args.amp:
        raise ValueError("--amp does not work with --batch-size yet; drop it, or train full batch (--batch-size 0)")
    if world > 1:  # before any pass over the data: embedding is sharded over the ranks
        bd.init_distributed(device=None if args.device == "auto" else args.device)
    if resume and not ckpt.is_file():
        print(f"python -m bgcn train: --resume: no checkpoint at {ckpt}, so this run starts afresh",
              file=sys.stderr)
        resume = False
    warmup = args.warmup_epochs
    if warmup == "auto":
        warmup = 0 if args.mode == "frozen" else int(WARMUP_SHARE * args.epochs)
        if resume:  # a longer --epochs must not move the warm-up of the run being continued
            from .train import load_checkpoint

            old = load_checkpoint(ckpt, map_location="cpu").get("config", {}).get("warmup_epochs")
            warmup = old if isinstance(old, int) and not isinstance(old, bool) else warmup
    elif args.mode != "frozen" and warmup >= args.epochs:
        raise ValueError(f"--warmup-epochs {warmup} must be smaller than --epochs {args.epochs}: the backbone "
                         f"learns only after the warm-up, so it would never train (use --mode frozen for that)")
    lr_backbone = args.lr_backbone
    if lr_backbone == "auto":
        pretrained = args.pretrained_file is not None or args.backbone.endswith("_imagenet")
        lr_backbone = LR_BACKBONE_PRETRAINED if pretrained else LR_BACKBONE_RANDOM
    ds, images = _load_data(args)
    labels = ds.labels
    num_classes = ds.num_classes
    try:
        train_mask, val_mask, test_mask = label_masks(labels, args.labels_per_class, args.val_per_class,
                                                      seed=args.seed, num_classes=num_classes,
                                                      class_names=ds.class_names)
    except ValueError as e:
        raise ValueError(_flags(str(e))) from None

    seed_everything(args.seed)
    opts = {k: v for k, v in (("bn_policy", args.bn_policy), ("train_blocks", args.train_blocks),
                              ("img_size", args.img_size)) if v is not None}
    backbone, images, backbone_kw = _create_backbone_for(args.backbone, args.pretrained_file, images, **opts)
    check_backbone_input(backbone, _sample_images(images), name=args.backbone)
    device = get_device(args.device)
    tau = args.tau
    if tau == "auto":
        from .minibatch import embed_images
        from .temperature import suggest_tau_features

        feats = embed_images(backbone.to(device), images, 512, device, num_workers=args.num_workers)
        tau = suggest_tau_features(feats, args.k, method="mass", exclude_self=not args.include_self)
        del feats
    model = build_model(backbone, num_classes, k=args.k, estimator=estimator, tau=float(tau), hidden=args.hidden,
                        dropout=args.dropout, mode=args.mode, exclude_self=not args.include_self,
                        symmetric=args.symmetric, chunk_size=args.chunk_size)
    # everything that defines the run: train() refuses to resume a checkpoint where one differs
    generated = args.dataset.replace("_", "-") in ("synthetic", "nuisance-shapes")
    extra = {"dataset": args.dataset, "synthetic_n": args.synthetic_n if generated else None,
             "subset": args.subset, "split": args.split if _is_fashion(args.dataset) else None,
             "image_shape": [int(v) for v in _shape(images)], "num_classes": int(num_classes),
             "class_names": list(ds.class_names), "backbone": args.backbone, "backbone_kwargs": backbone_kw,
             "pretrained_file": args.pretrained_file, "labels_per_class": args.labels_per_class,
             "val_per_class": args.val_per_class, "hidden": args.hidden, "dropout": args.dropout}
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local)
    from .config import TrainConfig, fit

    mini = {"bank_refresh": args.bank_refresh, "cache_neighbours": args.cache_neighbours,
            "num_workers": args.num_workers}
    full = {"amp": bool(args.amp), "graph_every": args.graph_every}
    cfg = TrainConfig(mode=args.mode, epochs=args.epochs, warmup_epochs=warmup, lr_backbone=lr_backbone,
                      lr_gcn=args.lr_gcn, weight_decay=args.weight_decay, seed=args.seed, device=str(device),
                      max_grad_norm=args.max_grad_norm, eval_every=args.eval_every, checkpoint=str(ckpt),
                      checkpoint_every=args.checkpoint_every, resume=resume, progress=args.progress,
                      batch_size=args.batch_size, extra=extra, **(mini if args.batch_size else full))
    t0 = time.perf_counter()
    res = fit(model, images, labels, train_mask, val_mask, test_mask, cfg, analysis_labels=labels)
    timings = res.timings
    metrics = {"command": "python -m bgcn " + " ".join(sys.argv[1:]) if sys.argv[1:] else None,
               "config": res.config, "train_config": cfg.to_dict(), "tau_arg": str(args.tau), "warmup_arg": str(args.warmup_epochs),
               "lr_backbone_arg": str(args.lr_backbone), "versions": versions(), "seed": args.seed,
               "device": str(device), "world_size": world, **res.summary(),
               "images_per_s": timings.get("images_per_s", len(images) / max(timings.get("per_epoch_step", 0)
                                                                              or float("nan"), 1e-12)),
               "peak_memory_bytes": timings.get("peak_memory_bytes", peak_memory_bytes(device)),
               "wall_time_s": time.perf_counter() - t0, "out": str(out), "checkpoint": res.checkpoint,
               "history": res.history.series()}

    from .experiments.common import write_atomic

    bd.write_if_main(out / "metrics.json", lambda path: write_atomic(path, json.dumps(_json_safe(metrics), indent=2)))
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bgcn`` (and the ``bgcn`` script). Returns the exit status.

    Shapes: none (command line).

    Taught in: chapter 08 (chapters/08_end_to_end.md).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["estimators"]:  # chapter 09's comparison has its own parser
        from .estimator_experiment import main as estimators_main

        return estimators_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"python -m bgcn {args.command}"
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):  # one line, no source echo
        text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
        print(f"{prog}: warning: {text}", file=sys.stderr if file is None else file)

    with warnings.catch_warnings():
        warnings.showwarning = show
        return _run_command(args, prog)


def _run_command(args: argparse.Namespace, prog: str) -> int:
    from .train import TrainingDiverged

    try:
        if args.command == "train":
            from .distributed import cleanup, is_main

            try:
                m = run_train(args)
            finally:
                cleanup()
            if not is_main():
                return 0
            print(f"{prog}: test accuracy at best validation {m['test_acc_at_best_val']:.4f} "
                  f"(epoch {m['best_epoch']}), final {m['final'].get('test_acc', float('nan')):.4f}; "
                  f"{m['timings']['per_epoch']:.3f} s/epoch; wrote {m['out']}/metrics.json"
                  + (f" and {m['checkpoint']}" if m.get("checkpoint") else ""))
        elif args.dataset != "digits":
            from .experiments.real import run_real_experiment

            if args.pretrain_epochs is not None or args.backbone is not None:
                raise ValueError("--pretrain-epochs/--backbone apply to the digits comparison; chapter 12's uses "
                                 "the ImageNet EfficientNet-Lite0")
            res = run_real_experiment(args.dataset, out=args.out or "results/real", quick=args.quick,
                                      seeds=args.seeds, labels_per_class=args.labels, n=args.n, epochs=args.epochs,
                                      warmup_epochs=args.warmup_epochs, batch_size=args.batch_size,
                                      img_size=args.img_size, rows=args.methods, lr_backbone=args.lr_backbone,
                                      k=args.k, device=args.device, resume=args.resume, progress=args.progress,
                                      only_seeds=args.only_seeds)
            print(res["table_md"])
            print(f"{prog}: wrote {', '.join(res['files'])}")
        else:
            from .experiment import run_experiment

            for flag, v in (("--n", args.n), ("--batch-size", args.batch_size), ("--img-size", args.img_size),
                            ("--only-seeds", args.only_seeds)):
                if v is not None:
                    raise ValueError(f"{flag} applies to --dataset fashion-mnist / nuisance-shapes, not the digits")
            res = run_experiment(out=args.out or "results", quick=args.quick, seeds=args.seeds, labels_per_class=args.labels,
                                 epochs=args.epochs, backbone=args.backbone, pretrain_epochs=args.pretrain_epochs,
                                 warmup_epochs=args.warmup_epochs,
                                 k=args.k, device=args.device, progress=args.progress, resume=args.resume,
                                 methods=args.methods, lr_backbone=args.lr_backbone)
            print(res["table_md"])
            print(f"{prog}: wrote {', '.join(res['files'])}")
    except TrainingDiverged as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    return 0
