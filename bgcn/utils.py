"""Small shared helpers: device choice, seeding, JSON-safe values, versions, peak memory.

The argument checks live in ``bgcn._checks`` (their one home); the public ones are re-exported
here (``from bgcn.utils import check_k`` keeps working), so that bad input raises a
``ValueError``/``TypeError`` naming the argument and the fix, never a deep traceback.
"""
from __future__ import annotations

import math
import os
import platform
import random
from typing import Any

import numpy as np
import torch

from ._version import __version__
from ._checks import check_finite, check_k, check_positive, check_seed, check_tau, check_tensor

__all__ = [
    "NotFoundError",
    "command_line",
    "get_device",
    "seed_everything",
    "check_seed",
    "versions",
    "check_tensor",
    "check_k",
    "check_tau",
    "check_positive",
    "check_finite",
    "json_safe",
    "peak_memory_bytes",
    "reset_peak_memory",
]


class NotFoundError(FileNotFoundError, ValueError):
    """A missing file or folder: both a ``FileNotFoundError`` and a ``ValueError`` (bad argument).

    Shapes: none (an exception).

    Taught in: no chapter; raised by :func:`bgcn.load_dataset`, :func:`bgcn.create_backbone` and
    :func:`bgcn.load_checkpoint`.
    """


def get_device(device: str | torch.device | None = "auto") -> torch.device:
    """Return the device to run on.

    ``"auto"`` (or ``None``) picks CUDA when it is available, else the CPU. ``"cpu"``, ``"cuda"``,
    ``"cuda:N"`` and ``"mps"`` are honoured; a device this machine does not have (CUDA without a
    GPU, ``"cuda:7"`` with fewer GPUs, ``"mps"`` off Apple silicon) raises a one-line
    ``ValueError`` naming ``device`` and what is available, instead of failing later inside a
    kernel ("invalid device ordinal").

    Shapes: none (returns a ``torch.device``).

    Taught in: chapter 08 (chapters/08_end_to_end_4_watching.md) and chapter 10 (chapters/10_scaling_2_measured.md).
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError as e:
            raise ValueError(f"device={device!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    else:
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was asked for but CUDA is not available here; "
                             f"use device='auto' or 'cpu'")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device={device!r} does not exist: this machine has {n} CUDA device(s) "
                             f"(cuda:0 .. cuda:{n - 1}); use device='cuda' or 'cuda:N' with N < {n}")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            cuda = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA"
            raise ValueError(f"device={device!r} was asked for but MPS (Apple GPU) is not available here "
                             f"({cuda}); use device='auto' or 'cpu'")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a CPU ``torch.Generator`` seeded the same.

    ``seed`` must be an int in ``[0, 2**64)`` (:func:`check_seed`); NumPy gets ``seed % 2**32``.

    Shapes: none.

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md); every chapter seeds with it.
    """
    seed = check_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dumps`` writes as standard JSON.

    NaN/Inf floats become ``None`` (JSON has no NaN), NumPy scalars become Python numbers, dict keys
    become strings; lists, tuples and dicts are converted recursively, anything else is returned
    as is.

    Shapes: none (nested Python containers).

    Taught in: chapter 08 (chapters/08_end_to_end_4_watching.md), where ``metrics.json`` and the results files
    are written.
    """
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def versions() -> dict:
    """Versions of Python, torch, bgcn and friends, plus the platform and CPU threads.

    Written into ``metrics.json`` and the results files, so a number can be traced to the software
    that made it. Lives here (not in :mod:`bgcn.cli`) so that :mod:`bgcn.experiment` and
    :mod:`bgcn.estimator_experiment` need not import the command line.

    Shapes: none (a dict of strings and ints).

    Taught in: chapter 08 (chapters/08_end_to_end_4_watching.md).
    """

    out = {"python": platform.python_version(), "torch": torch.__version__, "bgcn": __version__,
           "platform": platform.platform(), "torch_threads": torch.get_num_threads(),
           "cuda": torch.version.cuda if torch.cuda.is_available() else None}
    for mod in ("torch_geometric", "timm", "sklearn", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    return out


def reset_peak_memory(device: str | torch.device = "cpu") -> None:
    """Start a new peak-memory window for :func:`peak_memory_bytes` (CUDA: the allocator's peak
    statistics; CPU on Linux: the process's peak resident size, through ``/proc/self/clear_refs``).

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        return
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_memory_bytes(device: str | torch.device = "cpu") -> int | None:
    """The peak memory since :func:`reset_peak_memory` (or the process start): CUDA
    ``max_memory_allocated`` (tensors only), or on the CPU the process's peak resident set size
    ``VmHWM`` (everything the process touched: Python, torch, data, tensors). ``None`` where the
    kernel gives no such counter.

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.max_memory_allocated(dev))
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running, as a reader would retype it from the repository root.

    ``python -m bgcn …`` when the entry point is the package's ``__main__.py`` (whatever its absolute
    path on this machine), else the script's path relative to the working directory: committed
    results must not carry the path of the machine that made them.

    Shapes: none.

    Taught in: no chapter (results files; see results/README.md).
    """
    import shlex
    import sys

    argv = list(sys.argv if argv is None else argv)
    head = argv[0] if argv else "python"
    if os.path.basename(head) == "__main__.py" and os.path.basename(os.path.dirname(head)) == "bgcn":
        head = "python -m bgcn"
    elif os.path.isabs(head):
        rel = os.path.relpath(head)
        head = rel if not rel.startswith("..") else os.path.basename(head)
    return " ".join([head, *map(shlex.quote, argv[1:])])
