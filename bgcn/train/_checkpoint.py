"""Checkpoints: atomic writes, safe reads, random states as tensors, graph snapshots stored apart.

Everything here is ``torch.load(weights_only=True)``-safe: tensors, (nested) dicts/lists and plain
Python values, never pickled code.

Taught in: chapter 08 (chapters/08_end_to_end_4_watching.md).
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch

from ..utils import NotFoundError

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state",
           "graphs_dir", "history_apart", "load_graph_files"]

CHECKPOINT_FORMAT = 1


# -- checkpoints ------------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write a checkpoint atomically: ``torch.save`` to ``path.tmp`` in the same folder, then ``os.replace``.

    A crash mid-write leaves the previous checkpoint intact. ``state`` must hold only tensors,
    (nested) dicts/lists and plain Python values, so that :func:`load_checkpoint` can read it with
    ``torch.load(weights_only=True)``.

    Shapes: any.

    Taught in: chapter 08 (chapters/08_end_to_end_4_watching.md).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def _why_unreadable(e: Exception) -> str:
    """The reason torch gives for refusing a file, without its advice to load it with
    ``weights_only=False`` (which would run whatever code an untrusted file holds)."""
    text = str(e)
    if "weights_only" in text or "Weights only load failed" in text:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        keep = [ln for ln in lines if not re.search(r"weights_only|Weights only load failed|file an issue|"
                                                     r"documentation of torch\.load", ln)]
        return f"a safe load refuses it ({keep[0] if keep else 'not plain tensors and values'})"
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`train` with ``torch.load(weights_only=True)`` (no pickled code).

    Keys: ``format``, ``epoch``, ``model``, ``optimizer``, ``best_model``, ``history``, ``best``,
    ``rng``, ``prev_indices``, ``config``. A file that is not such a checkpoint (corrupt, or holding
    pickled objects) is a one-line ``ValueError``; it is never loaded with ``weights_only=False``.

    Shapes: state dicts as saved.

    Taught in: chapter 08 (chapters/08_end_to_end_4_watching.md).
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"checkpoint {str(path)!r} does not exist; pass the checkpoint= path a train() run wrote")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt files raise many kinds of errors
        raise ValueError(f"could not read checkpoint {str(path)!r}: {_why_unreadable(e)}; it is corrupt or not a "
                         f"bgcn checkpoint: use another path, or start afresh without resume") from None


# -- RNG state as tensors (weights_only-safe) -------------------------------------------------------
def rng_state(generator: torch.Generator | None) -> dict:
    """The random states a run draws from: torch's global CPU (and CUDA) generators and ``generator``.

    Python's and NumPy's generators are not saved: nothing in training draws from them (older
    checkpoints that hold them still load; :func:`set_rng_state` ignores those entries).

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_4_watching.md).
    """
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = list(torch.cuda.get_rng_state_all())
    if generator is not None:
        st["generator"] = generator.get_state()
        st["generator_device"] = torch.tensor([0 if generator.device.type == "cpu" else 1], dtype=torch.int64)
    return st


def set_rng_state(st: dict, generator: torch.Generator | None) -> None:
    """Restore what :func:`rng_state` saved; ``generator``'s state only when saved from the same device type.

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_4_watching.md).
    """
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])
    if generator is not None and "generator" in st:
        saved = "cpu" if "generator_device" not in st or int(st["generator_device"][0]) == 0 else "cuda"
        if saved == generator.device.type:
            generator.set_state(st["generator"])
        else:  # a CUDA generator's state does not fit a CPU one (and back): keep the fresh seeded one
            warnings.warn(f"the checkpoint's random generator was on {saved}, this run's is on "
                          f"{generator.device.type}: the stochastic estimator's noise continues from a fresh seed, "
                          f"so the resumed run will not match an uninterrupted one exactly", UserWarning, stacklevel=3)


# -- graph snapshots stored apart -------------------------------------------------------------------
def graphs_dir(ckpt_path: Path) -> Path:
    """``<checkpoint>.graphs/``: the folder of a checkpoint's graph snapshots.

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_4_watching.md).
    """
    return ckpt_path.with_name(ckpt_path.name + ".graphs")


def history_apart(ckpt_path: Path | None, history, written: set) -> dict:
    """The history for a checkpoint with its graphs stored apart: each snapshot is written once to
    ``<checkpoint>.graphs/epoch_NNNNN.pt`` (atomically); the checkpoint keeps only their epochs.

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_4_watching.md).
    """
    d = history.state_dict()
    if ckpt_path is None:
        return d
    folder = graphs_dir(ckpt_path)
    for g in history.graphs:
        e = int(g["epoch"])
        if e not in written:
            save_checkpoint(folder / f"epoch_{e:05d}.pt", dict(g))
            written.add(e)
    d["graphs"] = []
    d["graph_epochs"] = [int(g["epoch"]) for g in history.graphs]
    return d


def load_graph_files(ckpt_path: Path, hist: dict) -> list | None:
    """The graphs a checkpoint's history names (``graph_epochs``), read back from its folder
    (None: an older checkpoint with its graphs inline).

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_4_watching.md).
    """
    epochs = hist.get("graph_epochs")
    if epochs is None:
        return None  # an older checkpoint: graphs inline
    folder = graphs_dir(ckpt_path)
    out = []
    for e in epochs:
        f = folder / f"epoch_{int(e):05d}.pt"
        if not f.is_file():
            raise NotFoundError(f"the checkpoint {str(ckpt_path)!r} names the graph of epoch {e}, but {str(f)!r} is "
                                f"missing; keep the folder {str(folder)!r} next to the checkpoint, or start afresh")
        out.append(load_checkpoint(f))
    return out
