"""The ``python -m bgcn`` parser: sub-commands ``train``, ``experiment`` and ``estimators``.

Bad flags exit with status 2 and a one-line ``error: …`` naming the flag. The data-set options
(:data:`DATASET_FLAGS`) say in their help which registered data sets take them
(:func:`bgcn.data.register_dataset`'s ``cli_options``); a data set needs no code here.
"""
from __future__ import annotations

import argparse
import functools

from ..data import dataset_specs, list_datasets
from ..experiments.field import PROTOCOLS as FIELD_PROTOCOLS
from ..experiments.real import DATASETS as REAL_DATASETS
from ..model import MODES
from ._types import (LR_BACKBONE_PRETRAINED, LR_BACKBONE_RANDOM, _auto_or, _device, _estimator, _nonneg_float,
                     _nonneg_int, _positive_float, _positive_int, _probability, _seed, _tau)

__all__ = ["build_parser", "train_defaults", "DATASET_FLAGS", "ENGINE_FLAGS"]

#: Flags that only some data sets take: each registered data set claims the ones it reads in
#: ``register_dataset(..., cli_options={option: flag})``; given to another data set, one is refused.
DATASET_FLAGS = ("--synthetic-n", "--subset", "--split", "--data-dir", "--image-size")
#: Flags that only one engine has: flag -> "minibatch" (needs --batch-size) or "full" (refused with it).
ENGINE_FLAGS = {"--bank-refresh": "minibatch", "--cache-neighbours": "minibatch", "--num-workers": "minibatch",
                "--index": "minibatch", "--bank-chunk": "minibatch", "--candidates": "minibatch",
                "--graph-every": "full", "--amp": "full"}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``<prog>: error: <message>`` (exit 2)."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m bgcn`` parser with sub-commands ``train``, ``experiment`` and ``estimators``.

    Shapes: none (command line).

    Taught in: chapter 08 (chapters/08_end_to_end_4_watching.md).
    """
    p = _Parser(prog="python -m bgcn", description="BackProp GCN: a GCN on a kNN graph of image features, "
                "trained end to end through the ranking step.", formatter_class=_Formatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("train", help="train one model and write metrics.json + checkpoint.pt",
                       formatter_class=_Formatter, description=(
                           "Train one model full-batch on all images (transductive: the kNN graph spans "
                           "labelled and unlabelled images).\n\nModes: frozen = features once, hard graph, only "
                           "the GCN learns; end2end-features = the extractor learns through the node features, "
                           "hard graph (seed 000's loop as intended); end2end = through the features and the "
                           "estimator's edge weights.\n\nExample:\n  python -m bgcn train --dataset digits --mode "
                           "end2end --estimator softmax --k 10 --tau 0.05 --labels-per-class 10 --epochs 100 "
                           "--device auto --out runs/softmax"))
    _add_data_args(t.add_argument_group("data"))
    _add_model_args(t.add_argument_group("model"))
    _add_optim_args(t.add_argument_group("optimisation"))
    _add_run_args(t.add_argument_group("run"))
    sub.add_parser("estimators", add_help=False,
                   help="chapter 09: compare the selection estimators on the digits "
                        "(python -m bgcn estimators --help; --quick for a smoke run)")
    _add_experiment_parser(sub)
    return p


@functools.lru_cache(maxsize=1)
def _train_defaults() -> tuple:
    return tuple(vars(build_parser().parse_args(["train"])).items())


def train_defaults() -> dict:
    """``{dest: default}`` of every ``train`` flag (to tell a flag that was given from one left alone).

    Shapes: none.
    """
    return dict(_train_defaults())


def _claimants(flag: str) -> str:
    """The data sets that take ``flag`` (their registry entry claims it), for the help text."""
    names = [s.name if not s.from_path else "a folder" for s in dataset_specs() if flag in s.cli_options.values()]
    return ", ".join(names) or "no registered data set"


def _add_data_args(d) -> None:
    d.add_argument("--dataset", default="digits",
                   help=f"a registered data set ({', '.join(list_datasets())}; bgcn.data.list_datasets()) or a folder "
                        "path/<class>/*.png (with --batch-size it is read lazily, image by image)")
    d.add_argument("--subset", type=_positive_int, default=None,
                   help=f"{_claimants('--subset')}: a stratified subset of this many images (the same for every --seed)")
    d.add_argument("--split", default="train", choices=["train", "test", "all"], help=f"{_claimants('--split')} split")
    d.add_argument("--data-dir", default=None,
                   help=f"{_claimants('--data-dir')}: folder of the IDX files (default $BGCN_FASHION_MNIST_DIR, else Debian's)")
    d.add_argument("--image-size", type=_positive_int, default=None,
                   help=f"{_claimants('--image-size')}: resize every image to this size (needed when sizes differ)")
    d.add_argument("--num-workers", type=_nonneg_int, default=0,
                   help="with --batch-size: decode images in this many DataLoader workers (a folder read lazily)")
    d.add_argument("--synthetic-n", type=_positive_int, default=1000,
                   help=f"number of images for --dataset {_claimants('--synthetic-n')}")
    d.add_argument("--labels-per-class", type=_positive_int, default=10, help="labelled (training) images per class")
    d.add_argument("--val-per-class", type=_nonneg_int, default=None,
                   help="validation images per class (default: same as --labels-per-class)")


def _add_model_args(m) -> None:
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


def _add_optim_args(o) -> None:
    o.add_argument("--epochs", type=_positive_int, default=100,
                   help="epochs (full batch: one step each; with --batch-size: one pass over the images)")
    o.add_argument("--batch-size", type=_nonneg_int, default=0,
                   help="images per step, over a feature bank (bgcn.minibatch.train_minibatch, chapter 11); "
                        "0: full batch (the chapters' exact path). Needed under torchrun")
    o.add_argument("--bank-refresh", type=_nonneg_int, default=1,
                   help="with --batch-size: refill the feature bank every R epochs (0: never)")
    o.add_argument("--cache-neighbours", action="store_true",
                   help="with --batch-size: keep every node's neighbour list in the bank (faster, staler)")
    o.add_argument("--index", default="auto", choices=["auto", "exact", "flat", "ivf", "hnsw"],
                   help="with --batch-size: the bank's neighbour index (bgcn.index): exact (the reference), or "
                        "FAISS candidates re-ranked exactly (flat: exhaustive; ivf, hnsw: approximate), rebuilt "
                        "once an epoch; auto = on the CPU exact below 20 000 images, flat below 100 000, ivf from "
                        "there; exact on a GPU. metrics.json records recall@k a epoch")
    o.add_argument("--bank-chunk", type=_positive_int, default=None,
                   help="with --batch-size: bank rows per exact-search block (bounds the search's memory to "
                        "chunk x bank-chunk similarities; default: the whole bank)")
    o.add_argument("--candidates", type=_positive_int, default=None,
                   help="with --batch-size: run a selection estimator of chapter 09 (ste, identity, blackbox, imle, "
                        "sigmoid, capped_simplex, gumbel_reinforce) on K candidate neighbours per row (k < K < N, "
                        "e.g. 4k; bgcn.bank.candidate_subgraph); needed for them, refused for the others")
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


def _add_run_args(r) -> None:
    r.add_argument("--device", type=_device, default="auto", help="auto (CUDA when present), cpu or cuda")
    r.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is faster on a busy machine)")
    amp = r.add_mutually_exclusive_group()
    amp.add_argument("--amp", action="store_true",
                     help="bf16 autocast for the backbone on CUDA (off by default: bf16-rounded features "
                          "change the kNN graph; worth it only for a large backbone)")
    amp.add_argument("--no-amp", action="store_true", help="no bf16 autocast (the default; kept for old scripts)")
    r.add_argument("--out", default=None, help="output folder (default runs/<mode>-<estimator>-seed<seed>)")
    again = r.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    again.add_argument("--overwrite", action="store_true",
                       help="start afresh even if OUT/checkpoint.pt exists (it is replaced); without --resume or "
                            "--overwrite an existing checkpoint is refused")
    r.add_argument("--checkpoint-every", type=_positive_int, default=1,
                   help="write OUT/checkpoint.pt every C epochs (and at the last)")
    r.add_argument("--graph-every", type=_nonneg_int, default=1,
                   help="keep the kNN graph every this many epochs in the checkpoint (0: first and last only)")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on/off; None = only on a terminal and without TQDM_DISABLE=1")


def _add_experiment_parser(sub) -> None:
    e = sub.add_parser("experiment", help="frozen vs end-to-end comparison; writes results/*.json, .md, .csv",
                       formatter_class=_Formatter,
                       description="Run the comparison of bgcn.experiment on the digits: kNN classifier and label "
                                   "spreading on frozen features, frozen GCN (random and pre-trained backbone), "
                                   "end2end-features, end2end softmax at tau=1 and at a tau from the data, "
                                   "end2end masked_softmax and values; mean +- std over seeds.")
    e.add_argument("--dataset", default="digits", choices=["digits", *REAL_DATASETS],
                   help="digits: chapter 08's comparison; fashion-mnist / nuisance-shapes: chapter 12's, with the "
                        "ImageNet EfficientNet-Lite0 and the mini-batch engine (bgcn.experiments.real; writes "
                        "OUT/<dataset>.json and .md; default OUT results/real)")
    e.add_argument("--protocol", default=None, choices=list(FIELD_PROTOCOLS),
                   help="the field's benchmark instead (bgcn.experiments.field: the LDS/IDGL digits split, the "
                        "field's baselines and end to end from the pixels, every choice on validation labels; "
                        "writes OUT/<protocol>.json and .md, default OUT results/field; --seeds 5 or 10, "
                        "--methods picks rows, --epochs shortens the GCN runs)")
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
                   help="labels per class settings (default 5 10 20; 10 with --quick); with --protocol one "
                        "value, the training labels a class (default the published 5; writes <protocol>-lpc<n>)")
    e.add_argument("--epochs", type=_positive_int, default=None, help="epochs per run (default: see bgcn.experiment)")
    e.add_argument("--tag", default=None, help="with --protocol: a name appended to the output files "
                                               "(OUT/<protocol>-<tag>.json), for rows run apart from a committed table")
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
