"""What every committed experiment shares: partial results that resume, an atomic write, the
mean ± std summary of runs.

The three experiments (:mod:`bgcn.experiment`, :mod:`bgcn.estimator_experiment`,
:mod:`bgcn.experiments.real`) and ``scripts/merge_partial.py`` keep their partial results with
:class:`Partial` (one format: ``{"settings": ..., "runs": [...], <extra keys>}``), write through
:mod:`bgcn.io` and summarise with :mod:`bgcn.stats`.

Taught in: chapter 12 (chapters/12_real_extractor_3_table.md).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ..data import load_dataset
from ..io import atomic_write_text
from ..stats import mean_std
from ..train import TrainConfig, TrainResult, train
from ..utils import json_safe

__all__ = ["write_atomic", "results_root", "benchmarks_root", "read_committed", "Partial", "merge_partial", "mean_std", "fixed_subset", "digits_subset", "summarize_runs",
           "schedule_config", "train_digits_row"]


def results_root() -> Path:
    """The folder committed results are read from: ``BGCN_RESULTS`` if set, else the repository's ``results/``.

    Shapes: none.

    Taught in: chapter 13 (chapters/13_what_we_found_1_benchmark.md).
    """
    return Path(os.environ.get("BGCN_RESULTS", Path(__file__).resolve().parents[2] / "results"))


def benchmarks_root() -> Path:
    """The folder committed benchmark results are read from: ``BGCN_BENCHMARKS`` if set, else the
    repository's ``benchmarks/results/`` (what the scripts in ``benchmarks/`` write).

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    default = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    return Path(os.environ.get("BGCN_BENCHMARKS", default))


def read_committed(name: str, command: str, path: str | os.PathLike | None = None) -> tuple[dict, Path]:
    """A committed results file read as plain JSON: ``path``, or ``name`` under :func:`results_root`.

    A missing file is a ``FileNotFoundError`` that names ``command``, the command that writes it.
    Returns ``(data, path)``.

    Shapes: none.

    Taught in: chapter 13 (chapters/13_what_we_found_1_benchmark.md).
    """
    import json

    path = Path(path) if path is not None else results_root() / name
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist: {command} writes it")
    return json.loads(path.read_text()), path


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`bgcn.io.atomic_write_text`): never half a file.

    Shapes: none.

    Taught in: chapter 12 (chapters/12_real_extractor_3_table.md).
    """
    return atomic_write_text(path, text)


def fixed_subset(labels: torch.Tensor, max_images: int | None) -> torch.Tensor:
    """Indices of ``max_images`` images drawn once in a fixed random order (seed 12345, independent of
    the run's seed), sorted; all images when ``max_images`` is ``None`` or at least N.

    The digits experiments of chapters 08 and 09 run on this subset (``--quick``: 400 and 300).

    Shapes: labels (N,) -> (min(max_images, N),) long

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """
    n = labels.shape[0]
    if max_images is None or max_images >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(12345)
    return torch.randperm(n, generator=g)[:max_images].sort().values


def digits_subset(max_images: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits experiments' images and labels: the :func:`fixed_subset` of ``max_images`` digits.

    Shapes: returns images (M, 1, 8, 8), labels (M,) long; M = min(max_images, 1797).

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """
    ds = load_dataset("digits")
    keep = fixed_subset(ds.labels, max_images)
    return ds.images[keep], ds.labels[keep]


#: the settings of an experiment that are settings of its training runs (:class:`~bgcn.train.TrainConfig` fields)
_RUN_SETTINGS = ("epochs", "warmup_epochs", "lr_backbone", "lr_gcn", "weight_decay", "batch_size")


def schedule_config(cfg: dict, modes: Iterable[str]) -> TrainConfig:
    """The :class:`~bgcn.train.TrainConfig` of an experiment's shared training settings, built before any work.

    ``cfg`` is the experiment's settings (those of :data:`_RUN_SETTINGS` it holds are used) and
    ``modes`` the training modes of its rows: ``TrainConfig`` alone decides whether the settings
    are valid (a warm-up shorter than the epochs when a row trains the backbone, the learning
    rates, ...), with its own messages; an experiment does not check or cap them itself.

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """
    joint = any(m != "frozen" for m in modes)
    return TrainConfig(mode="end2end" if joint else "frozen", **{k: cfg[k] for k in _RUN_SETTINGS if k in cfg})


def train_digits_row(model: Any, images: torch.Tensor, labels: torch.Tensor, masks: tuple, cfg: dict, mode: str,
                     seed: int, device: Any) -> tuple[TrainResult, int]:
    """One GCN row of a digits experiment (chapters 08 and 09): :func:`bgcn.train` with the
    experiment's schedule, learning rates and weight decay; the warm-up (0 for a frozen row) is
    returned with the result.

    Path norms are measured on the rows that train the backbone; no graph snapshots.

    Shapes: images (N, C_in, H, W), labels (N,), masks three (N,) bool.

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """
    warm = 0 if mode == "frozen" else cfg["warmup_epochs"]
    tr, va, te = masks
    res = train(model, images, labels, tr, va, te, mode=mode, epochs=cfg["epochs"], warmup_epochs=warm,
                lr_backbone=cfg["lr_backbone"], lr_gcn=cfg["lr_gcn"], weight_decay=cfg["weight_decay"],
                seed=seed, device=device, graph_every=0, progress=False, analysis_labels=labels,
                param_path_norms=mode != "frozen")
    return res, warm


def summarize_runs(runs: Sequence[dict], groups: Iterable[dict], keys: Sequence[str],
                   count: str = "n_seeds") -> list[dict]:
    """Mean ± std (:func:`~bgcn.stats.mean_std`, ddof = 1) over the runs of each group.

    A group is a dict of run keys and values (``{"row": "end2end", "labels_per_class": 5}``); its
    summary is that dict, ``count`` (how many runs match) and, for every key of ``keys`` with a
    finite value in some run, ``key`` (the mean) and ``key + "_std"``. A group that no run matches
    is left out.

    Shapes: none.

    Taught in: chapter 12 (chapters/12_real_extractor_3_table.md).
    """
    out = []
    for group in groups:
        rs = [r for r in runs if all(r.get(k) == v for k, v in group.items())]
        if not rs:
            continue
        row = {**group, count: len(rs)}
        for key in keys:
            m, sd, n = mean_std(r.get(key) for r in rs)
            if n:
                row[key], row[key + "_std"] = m, sd
        out.append(row)
    return out


def _normalise(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, NaN ``None``, NumPy scalars numbers)."""
    return json.loads(json.dumps(json_safe(obj)))


def _differing_keys(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


class Partial:
    """Runs saved after each one to ``path`` (JSON), so that an interrupted experiment resumes.

    ``resume=True`` reads the runs (and any extra keys, e.g. ``"pretrain"``) back if the saved
    ``settings`` equal these, else raises a ``ValueError`` naming the keys that differ;
    ``resume=False`` starts over (the file is overwritten at the first save). :meth:`done` finds a
    saved run, :meth:`add` appends one and saves, :meth:`save` rewrites the whole file,
    :meth:`finish` removes it.

    Shapes: none.

    Taught in: chapter 12 (chapters/12_real_extractor_3_table.md).
    """

    def __init__(self, path: str | os.PathLike, settings: dict, resume: bool):
        self.path = Path(path)
        self.settings = _normalise(settings)
        self.runs: list[dict] = []
        self.extra: dict = {}
        self.resumed = False
        if resume and self.path.is_file():
            old = json.loads(self.path.read_text())
            if old.get("settings") != self.settings:
                keys = _differing_keys(old.get("settings", {}), self.settings)
                raise ValueError(f"cannot resume from {str(self.path)!r}: its settings differ ({', '.join(keys)}); "
                                 f"use the same options, or delete the file to start over")
            self.runs = list(old.get("runs", []))
            self.extra = {k: v for k, v in old.items() if k not in ("settings", "runs")}
            self.resumed = True

    @staticmethod
    def key(run: dict, fields: Iterable[str]) -> tuple:
        """The tuple of ``run``'s values of ``fields`` (what identifies a run).

        Shapes: none.

        Taught in: chapter 12 (chapters/12_real_extractor_3_table.md).
        """
        return tuple(run.get(f) for f in fields)

    def done(self, **key: Any) -> dict | None:
        """The first saved run whose fields equal ``key`` (e.g. ``row="frozen", seed=0``), or ``None``.

        Shapes: none.

        Taught in: chapter 12 (chapters/12_real_extractor_3_table.md).
        """
        for r in self.runs:
            if all(r.get(k) == v for k, v in key.items()):
                return r
        return None

    def add(self, run: dict) -> None:
        """Append ``run`` (as it reads back from JSON) and save the file.

        Shapes: none.

        Taught in: chapter 12 (chapters/12_real_extractor_3_table.md).
        """
        self.runs.append(_normalise(run))
        self.save()

    def save(self, runs: Sequence[dict] | None = None, **extra: Any) -> None:
        """Write the file atomically; ``runs`` replaces the saved runs, ``extra`` adds top-level keys.

        Shapes: none.

        Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
        """
        if runs is not None:
            self.runs = [_normalise(r) for r in runs]
        self.extra.update(_normalise(extra))
        write_atomic(self.path, json.dumps({"settings": self.settings, "runs": self.runs, **self.extra}, indent=1))

    def finish(self) -> None:
        """Remove the file (the finished results are written; nothing is left to resume).

        Shapes: none.

        Taught in: chapter 12 (chapters/12_real_extractor_3_table.md).
        """
        if self.path.exists():
            self.path.unlink()


def merge_partial(target: str | os.PathLike, sources: Iterable[str | os.PathLike],
                  fields: Sequence[str] = ("row", "seed", "labels_per_class")) -> int:
    """Append to the partial file ``target`` the runs of ``sources`` it lacks; return the run count.

    Each source is a partial file or a finished results JSON with the same ``"settings"`` (else a
    ``ValueError`` naming the source and the keys that differ); a run already in ``target`` (the
    same values of ``fields``) is not added twice. Then ``--resume`` writes the table.

    Shapes: none.

    Taught in: chapter 12 (chapters/12_real_extractor_3_table.md).
    """
    target = Path(target)
    data = json.loads(target.read_text())
    keys = {Partial.key(r, fields) for r in data["runs"]}
    for src in sources:
        other = json.loads(Path(src).read_text())
        if other.get("settings") != data.get("settings"):
            diff = _differing_keys(other.get("settings", {}), data.get("settings", {}))
            raise ValueError(f"{src}: settings differ from {target} ({', '.join(diff)}); merge only runs of the "
                             f"same options")
        for r in other["runs"]:
            key = Partial.key(r, fields)
            if key not in keys:
                data["runs"].append(r)
                keys.add(key)
    write_atomic(target, json.dumps(data, indent=1))
    return len(data["runs"])
