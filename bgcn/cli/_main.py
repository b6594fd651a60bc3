"""The entry point: parse, run the command, turn errors into one line and an exit status."""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

import torch

from ..distributed import cleanup, is_main
from ..estimator_experiment import main as estimators_main
from ..experiment import run_experiment
from ..experiments.field import run_field_experiment
from ..experiments.real import DATASETS as REAL_DATASETS
from ..experiments.real import run_real_experiment
from ..train import TrainingDiverged
from ._parser import build_parser
from ._train import run_train

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bgcn`` (and the ``bgcn`` script). Returns the exit status.

    Shapes: none (command line).

    Taught in: chapter 08 (chapters/08_end_to_end_4_watching.md).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["estimators"]:  # chapter 09's comparison has its own parser
        return estimators_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"python -m bgcn {args.command}"
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    def show(message, category, filename, lineno, file=None, line=None):  # one line, no source echo
        text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
        print(f"{prog}: warning: {text}", file=sys.stderr if file is None else file)

    with warnings.catch_warnings():
        warnings.showwarning = show
        return _run_command(args, prog)


def _run_command(args: argparse.Namespace, prog: str) -> int:
    """Run ``train`` or ``experiment``; a bad setting exits 2, divergence 1, an interrupt 130."""
    try:
        if args.command == "train":
            _train(args, prog)
        else:
            _experiment(args, prog)
    except (ValueError, TypeError, FileNotFoundError) as e:  # bad input (a NaN image too): exit 2
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:  # a RuntimeError: the run went wrong, not its input
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    return 0


def _train(args: argparse.Namespace, prog: str) -> None:
    try:
        m = run_train(args)
    finally:
        cleanup()
    if is_main():
        print(f"{prog}: test accuracy at best validation {m['test_acc_at_best_val']:.4f} "
              f"(epoch {m['best_epoch']}), final {m['final'].get('test_acc', float('nan')):.4f}; "
              f"{m['timings']['per_epoch']:.3f} s/epoch; wrote {m['out']}/metrics.json"
              + (f" and {m['checkpoint']}" if m.get("checkpoint") else ""))


def _one_label_setting(labels: list[int] | None) -> int | None:
    """``--labels`` with ``--protocol``: one number of training labels a class (or None: the published)."""
    if labels is not None and len(labels) != 1:
        raise ValueError(f"--labels takes one value with --protocol (got {len(labels)}); run one protocol "
                         f"command per setting, e.g. --labels 10")
    return None if labels is None else labels[0]


def _experiment(args: argparse.Namespace, prog: str) -> None:
    """``experiment``: chapter 08's digits comparison, chapter 12's on the other --dataset choices, or the
    field's benchmark with --protocol."""
    if args.protocol is not None:
        for flag, v in (("--dataset", None if args.dataset == "digits" else args.dataset), ("--n", args.n),
                        ("--batch-size", args.batch_size), ("--img-size", args.img_size),
                        ("--only-seeds", args.only_seeds), ("--backbone", args.backbone),
                        ("--pretrain-epochs", args.pretrain_epochs), ("--warmup-epochs", args.warmup_epochs),
                        ("--lr-backbone", args.lr_backbone)):
            if v is not None:
                raise ValueError(f"{flag} does not apply to --protocol {args.protocol}: its rows fix their settings "
                                 f"or choose them on validation (see bgcn.experiments.field.ROWS)")
        res = run_field_experiment(args.protocol, out=args.out or "results/field", seeds=args.seeds or 10,
                                   rows=args.methods, quick=args.quick, resume=args.resume,
                                   progress=args.progress is not False, epochs=args.epochs,
                                   labels_per_class=_one_label_setting(args.labels), tag=args.tag)
    elif args.tag is not None:
        raise ValueError("--tag applies only with --protocol (it names that run's files); drop it")
    elif args.dataset != "digits":
        if args.pretrain_epochs is not None or args.backbone is not None:
            raise ValueError("--pretrain-epochs/--backbone apply to the digits comparison; chapter 12's uses "
                             "the ImageNet EfficientNet-Lite0")
        res = run_real_experiment(args.dataset, out=args.out or "results/real", quick=args.quick,
                                  seeds=args.seeds, labels_per_class=args.labels, n=args.n, epochs=args.epochs,
                                  warmup_epochs=args.warmup_epochs, batch_size=args.batch_size,
                                  img_size=args.img_size, rows=args.methods, lr_backbone=args.lr_backbone,
                                  k=args.k, device=args.device, resume=args.resume, progress=args.progress,
                                  only_seeds=args.only_seeds)
    else:
        for flag, v in (("--n", args.n), ("--batch-size", args.batch_size), ("--img-size", args.img_size),
                        ("--only-seeds", args.only_seeds)):
            if v is not None:
                raise ValueError(f"{flag} applies to --dataset {' / '.join(REAL_DATASETS)}, not the digits")
        res = run_experiment(out=args.out or "results", quick=args.quick, seeds=args.seeds,
                             labels_per_class=args.labels, epochs=args.epochs, backbone=args.backbone,
                             pretrain_epochs=args.pretrain_epochs, warmup_epochs=args.warmup_epochs, k=args.k,
                             device=args.device, progress=args.progress, resume=args.resume,
                             methods=args.methods, lr_backbone=args.lr_backbone)
    print(res["table_md"])
    print(f"{prog}: wrote {', '.join(res['files'])}")
