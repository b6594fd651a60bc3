"""The one atomic write: a file is either its old content or its new one, never half of either.

Every writer of results, checkpoints and partial files goes through :func:`atomic_write`: the data
goes to a unique temporary file in the same folder (same file system), is flushed to disk, and
``os.replace`` swaps it in (atomic on POSIX and Windows). A crash or an exception mid-write leaves
the previous file intact and no temporary file behind.

Shapes: none (files).

Taught in: chapter 08 (chapters/08_end_to_end_4_watching.md), where checkpoints and ``metrics.json`` are written.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable, IO

import torch

from .utils import json_safe

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_torch_save"]


def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], mode: str = "wb",
                 newline: str | None = None) -> Path:
    """Call ``write(fh)`` on a temporary file next to ``path``, then ``os.replace`` it onto ``path``.

    The parent folder is created. ``mode`` is ``"wb"`` (binary) or ``"w"`` (text, UTF-8;
    ``newline`` as :func:`open`'s, e.g. ``""`` for :mod:`csv`). If ``write`` raises, the
    temporary file is removed, ``path`` is untouched and the exception propagates. Returns
    ``Path(path)``.

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_4_watching.md).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode={mode!r} is not valid: use 'wb' (bytes) or 'w' (text)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        kw = {} if mode == "wb" else {"encoding": "utf-8", "newline": newline}
        with os.fdopen(fd, mode, **kw) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _create_temp(path: Path) -> tuple[int, str]:
    """A new file ``path.<random>.tmp`` next to ``path``, opened for writing, with the permissions
    a plain ``open`` would give it (``0o666`` less the umask; ``tempfile.mkstemp`` gives ``0o600``)."""
    for _ in range(100):
        tmp = os.path.join(path.parent, f"{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {str(path)!r}; remove its stale *.tmp files")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`); returns ``Path(path)``.

    Shapes: none.

    Taught in: no chapter (the one atomic write).
    """
    return atomic_write(path, lambda fh: fh.write(data), "wb")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`); returns ``Path(path)``.

    Shapes: none.

    Taught in: chapter 12 (chapters/12_real_extractor_3_table.md), where the results files are written.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}; use atomic_write_bytes for bytes")
    return atomic_write(path, lambda fh: fh.write(text), "w", newline="")


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    """Write ``obj`` as standard JSON (through :func:`bgcn.utils.json_safe`: NaN/Inf become
    ``null``, NumPy scalars Python numbers) to ``path`` atomically; returns ``Path(path)``.

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_4_watching.md), where ``metrics.json`` is written.
    """
    return atomic_write_text(path, json.dumps(json_safe(obj), indent=indent, allow_nan=False))


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (a crash mid-write keeps the previous checkpoint).

    Shapes: any (tensors inside ``obj``).

    Taught in: chapter 08 (chapters/08_end_to_end_4_watching.md), where checkpoints are written.
    """
    return atomic_write(path, lambda fh: torch.save(obj, fh), "wb")
