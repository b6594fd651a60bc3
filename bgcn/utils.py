"""Small shared helpers: device choice, seeding and argument checks with actionable errors.

Every public function of :mod:`bgcn` validates its input with these helpers so that bad input
raises a ``ValueError``/``TypeError`` naming the argument and the fix, never a deep traceback.
"""
from __future__ import annotations

import math
import os
import platform
import random
from typing import Any

import numpy as np
import torch

__all__ = [
    "NotFoundError",
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

    Taught in: chapter 08 (chapters/08_end_to_end.md) and chapter 10 (chapters/10_scaling.md).
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


def check_seed(seed: Any, name: str = "seed") -> int:
    """Check that a seed is an int in ``[0, 2**64)`` (what ``torch.manual_seed`` takes) and return it.

    Shapes: none (a scalar).

    Taught in: no chapter (argument checking; see CONTRIBUTING.md).
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"{name} must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"{name}={seed} is out of range; a seed must be an int in [0, 2**64 - 1]")
    return seed


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


def check_tensor(x: Any, name: str, ndim: int | tuple[int, ...] | None = None, finite: bool = True,
                 floating: bool = True) -> torch.Tensor:
    """Check that ``x`` is a tensor with the expected number of dimensions, floating and finite.

    Raises ``TypeError`` (not a tensor, not floating) or ``ValueError`` (wrong ``x.dim()``, NaN/Inf),
    naming ``name`` and the fix; returns ``x`` unchanged.

    Shapes: x: any shape whose number of dimensions is in ``ndim``.

    Taught in: no chapter (argument checking used by every public function; see CONTRIBUTING.md).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}; wrap it with torch.as_tensor(...)")
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in dims:
            want = " or ".join(str(d) for d in dims)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}; call .float()")
    if finite and x.numel() and floating:
        check_finite(x, name)
    return x


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise ``ValueError`` if ``x`` holds NaN or Inf (says how many); return ``x``.

    Shapes: x: any.

    Taught in: no chapter (argument checking; see CONTRIBUTING.md).
    """
    bad = ~torch.isfinite(x.detach())
    if bool(bad.any()):
        n = int(bad.sum())
        raise ValueError(f"{name} contains {n} NaN/Inf value(s); clean the input (e.g. torch.nan_to_num) first")
    return x


def check_k(k: Any, n: int, name: str = "k", exclude_self: bool = False) -> int:
    """Check ``1 <= k <= n`` (``n - 1`` when the node itself is excluded) and return ``int(k)``.

    Shapes: none (k and n are counts: k neighbours among n candidates per row).

    Taught in: no chapter (argument checking; see CONTRIBUTING.md).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    k = int(k)
    hi = n - 1 if exclude_self else n
    if k <= 0:
        raise ValueError(f"{name}={k} must be positive; choose 1 <= {name} <= {hi}")
    if k > hi:
        extra = " (the node itself is excluded)" if exclude_self else ""
        raise ValueError(f"{name}={k} is larger than the {hi} candidates per row{extra}; choose 1 <= {name} <= {hi}")
    return k


def check_positive(value: Any, name: str) -> float:
    """Check that a hyper-parameter is a finite number > 0 and return it as float.

    A one-element tensor is accepted and converted with ``float``.

    Shapes: none (a scalar).

    Taught in: no chapter (argument checking; see CONTRIBUTING.md).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = float(value)
        else:
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value} must be a finite number > 0")
    return value


def check_tau(tau: Any, name: str = "tau") -> float:
    """Temperature check: finite and > 0 (τ → 0 is the hard limit; pass the hard estimator instead).

    Shapes: none (τ is a scalar).

    Taught in: chapter 05 (chapters/05_temperature.md).
    """
    return check_positive(tau, name)


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dumps`` writes as standard JSON.

    NaN/Inf floats become ``None`` (JSON has no NaN), NumPy scalars become Python numbers, dict keys
    become strings; lists, tuples and dicts are converted recursively, anything else is returned
    as is.

    Shapes: none (nested Python containers).

    Taught in: chapter 08 (chapters/08_end_to_end.md), where ``metrics.json`` and the results files are written.
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

    Taught in: chapter 08 (chapters/08_end_to_end.md).
    """
    from . import __version__

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

    Taught in: chapter 11 (chapters/11_minibatch.md).
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

    Taught in: chapter 11 (chapters/11_minibatch.md).
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
