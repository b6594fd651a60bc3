"""What every committed experiment shares: partial results that resume, an atomic write, the
mean ± std summary of runs.

Taught in: chapter 12 (chapters/12_real_extractor.md).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..utils import json_safe

__all__ = ["write_atomic", "Partial", "mean_std"]


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through ``path.tmp`` and ``os.replace``: never half a file.

    Shapes: none.

    Taught in: chapter 12 (chapters/12_real_extractor.md).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


class Partial:
    """Runs saved after each one to ``path`` (JSON), keyed by a tuple; ``resume=True`` reads them
    back if the saved ``settings`` equal these (else a ``ValueError`` naming the keys that differ),
    ``resume=False`` starts over. :meth:`done` / :meth:`add` / :meth:`finish` (removes the file).

    Shapes: none.

    Taught in: chapter 12 (chapters/12_real_extractor.md).
    """

    def __init__(self, path: str | os.PathLike, settings: dict, resume: bool):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(json_safe(settings)))
        self.runs: list[dict] = []
        if resume and self.path.is_file():
            old = json.loads(self.path.read_text())
            if old.get("settings") != self.settings:
                keys = sorted(k for k in set(old.get("settings", {})) | set(self.settings)
                              if old.get("settings", {}).get(k) != self.settings.get(k))
                raise ValueError(f"cannot resume from {str(self.path)!r}: its settings differ ({', '.join(keys)}); "
                                 f"use the same options, or delete the file to start over")
            self.runs = list(old.get("runs", []))

    @staticmethod
    def key(run: dict, fields: Iterable[str]) -> tuple:
        return tuple(run.get(f) for f in fields)

    def done(self, **key: Any) -> dict | None:
        for r in self.runs:
            if all(r.get(k) == v for k, v in key.items()):
                return r
        return None

    def add(self, run: dict) -> None:
        self.runs.append(json.loads(json.dumps(json_safe(run))))
        write_atomic(self.path, json.dumps({"settings": self.settings, "runs": self.runs}, indent=1))

    def finish(self) -> None:
        if self.path.exists():
            self.path.unlink()


def mean_std(values: Iterable[float | None]) -> tuple[float, float, int]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of the finite values, and their count.

    Shapes: none.

    Taught in: chapter 12 (chapters/12_real_extractor.md).
    """
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)
