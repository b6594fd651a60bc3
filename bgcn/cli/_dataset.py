"""Data-set handling of ``train``, read from the data registry: no data set is named here.

Each registered data set declares the flags it takes (``register_dataset(..., cli_options=...)``);
a flag of :data:`~bgcn.cli._parser.DATASET_FLAGS` given to a data set that does not take it is
refused, and the images come from :func:`bgcn.data.open_dataset` (lazily or as uint8 with
``--batch-size``, as the data set's registry entry says).
"""
from __future__ import annotations

import argparse

from ..data import dataset_spec, open_dataset
from ._parser import DATASET_FLAGS

__all__ = ["load_data", "dataset_record"]

#: Data-set flags recorded in the run's config (``--resume`` refuses a change); ``--data-dir`` and
#: ``--image-size`` are not: the image shape is recorded, and where the files lie does not define a run.
_RECORDED = ("--synthetic-n", "--subset", "--split")


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _options(args: argparse.Namespace, defaults: dict) -> dict:
    """The builder options the flags give; a data-set flag the data set does not take is refused."""
    spec = dataset_spec(args.dataset)
    claimed = set(spec.cli_options.values())
    for flag in DATASET_FLAGS:
        if flag not in claimed and getattr(args, _dest(flag)) != defaults.get(_dest(flag)):
            raise ValueError(f"{flag} does not apply to --dataset {args.dataset}; drop it")
    values = {kw: getattr(args, _dest(flag), None) for kw, flag in spec.cli_options.items()}
    return {kw: v for kw, v in values.items() if v is not None}


def load_data(args: argparse.Namespace, defaults: dict):
    """(dataset, images) for ``--dataset``: a float tensor (full batch), or with ``--batch-size`` what the
    registry entry gives for reading in batches (e.g. uint8 Fashion-MNIST, a folder read lazily)."""
    return open_dataset(args.dataset, batched=bool(args.batch_size), **_options(args, defaults))


def dataset_record(args: argparse.Namespace) -> dict:
    """The data-set flags that define the run, for its config: the value where the data set takes the
    flag, else None (``{"synthetic_n": 100, "subset": None, "split": None}`` for synthetic)."""
    claimed = set(dataset_spec(args.dataset).cli_options.values())
    return {_dest(f): (getattr(args, _dest(f)) if f in claimed else None) for f in _RECORDED}
