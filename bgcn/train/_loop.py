r"""The training loop both engines share: for each epoch, step, maybe evaluate, maybe checkpoint.

An *engine* says how one epoch's step(s) and one evaluation are made: the full graph
(:class:`bgcn.train._fullbatch.FullBatchEngine`) or the bank and its subgraphs
(:class:`bgcn.minibatch.MinibatchEngine`). Everything else is here, once: model selection (the
warm-up recorded apart, the best joint epoch by validation accuracy), resume (settings check,
state restore), divergence (:class:`TrainingDiverged`), the history and the :class:`TrainResult`.
Chapter measurements (homophily, graph snapshots, a user callback) are :class:`Plugin` objects.

An engine is an :class:`Engine`; a NaN/Inf its ``step``/``evaluate`` finds is raised as
``FloatingPointError(what)``, which the loop reports as :class:`TrainingDiverged` with the last
good checkpoint.

Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import distributed as bd
from ._config import TrainConfig
from ..graph import edge_change_fraction, edge_homophily
from ._checks import check_analysis_labels
from ._checkpoint import history_apart, load_checkpoint, load_graph_files, rng_state, save_checkpoint, set_rng_state
from ._progress import pbar, progress_enabled
from ._result import History, TrainingDiverged, TrainResult, accuracy
from ..utils import seed_everything

__all__ = ["Engine", "LoopSettings", "Plugin", "train_with", "analysis_plugins", "Homophily", "GraphSnapshots", "run",
           "make_optimizer",
           "deterministic_algorithms", "merge_extra", "snapshot", "restore_state"]

#: what every checkpoint holds (an engine adds its own ``required_keys``)
_REQUIRED = ("epoch", "model", "optimizer", "history", "best", "best_model", "rng")


@dataclass
class LoopSettings:
    """The loop's part of a run's settings (the rest belongs to the engine).

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """

    mode: str
    epochs: int
    warm: int
    eval_every: int = 1
    checkpoint: Path | None = None
    checkpoint_every: int = 1
    resume: bool = False
    progress: bool = False

    @classmethod
    def from_config(cls, cfg: TrainConfig, warm: int) -> "LoopSettings":
        """The loop's settings of a validated config (``warm``: the engine's warm-up, 0 when frozen)."""
        return cls(mode=cfg.mode, epochs=cfg.epochs, warm=warm, eval_every=cfg.eval_every,
                   checkpoint=None if cfg.checkpoint is None else Path(cfg.checkpoint),
                   checkpoint_every=cfg.checkpoint_every, resume=cfg.resume, progress=progress_enabled(cfg.progress))


class Engine:
    """What the loop needs of an engine; the hooks with a body here are optional.

    Attributes: ``model``, ``optimizer``, ``generator`` (the run's random generator, checkpointed),
    ``device``, ``labels`` and ``masks`` (``{"train_mask", "val_mask", "test_mask"}`` on the device),
    ``warm`` (warm-up epochs, 0 when frozen), ``config`` (the recorded settings; a resume must
    match them except ``resume_free``), ``kind`` and ``resume_hint`` (for the error when a
    checkpoint is another engine's), ``checkpoint_format``, ``required_keys`` (its own checkpoint
    entries), ``rank``, ``desc`` (the progress bar's) and ``t_feat`` (seconds of the initial
    feature pass). Graph snapshots are stored apart from every checkpoint (``<checkpoint>.graphs/``).

    Methods: ``prepare(start_epoch)`` before the first epoch (fresh or resumed), ``initial()`` ->
    ``(logp, graph)`` of the untrained model, ``step(epoch)`` -> the history entries of the epoch's
    step(s) (``loss`` at least), ``evaluate(epoch)`` -> ``(logp (N, C), graph)``.

    Shapes: logp (N, C); graph.indices (N, k).

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """

    kind, resume_hint, checkpoint_format, required_keys, resume_free = "", "", None, (), frozenset()
    rank, t_feat = 0, 0.0

    def before_resume(self, path: Path) -> None:
        """Called before a checkpoint is looked for (e.g. every rank must see it)."""

    def load_state_dict(self, state: dict, path: Path) -> None:
        """Restore the engine's own checkpoint entries (model and optimizer are the loop's)."""

    def state_dict(self) -> dict:
        """The engine's own checkpoint entries."""
        return {}

    def end_epoch(self, epoch: int, evaluated) -> None:
        """After the epoch's evaluation (``evaluated``: its ``(logp, graph)`` or None)."""

    def postfix(self, t_step: float) -> dict:
        """Extra entries for the progress bar."""
        return {}

    def timings(self, history: History) -> dict:
        """Extra entries for ``TrainResult.timings``."""
        return {}

    def finish(self, result: TrainResult) -> TrainResult:
        """The result, with anything the engine adds."""
        return result


class Plugin:
    """A measurement the loop calls; override the hooks you need (each does nothing here).

    ``after_step(run, epoch)``: after the epoch's step(s), before its evaluation;
    ``on_initial(run, graph)`` and ``on_evaluate(run, epoch, graph)``: extra entries for
    ``history.initial`` and the epoch's history row (a dict).

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """

    def after_step(self, run: "_Run", epoch: int) -> None:
        return None

    def on_initial(self, run: "_Run", graph) -> dict:
        return {}

    def on_evaluate(self, run: "_Run", epoch: int, graph) -> dict:
        return {}


class Homophily(Plugin):
    """``history.homophily``: edge homophily of each evaluated graph under ``labels`` (every node's
    class; an analysis quantity, never read by training).

    Shapes: labels (N,) long on the CPU.

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """

    def __init__(self, labels: torch.Tensor):
        self.labels = labels

    def on_initial(self, run, graph) -> dict:
        return {"homophily": edge_homophily(graph.indices.detach().cpu(), self.labels)}

    def on_evaluate(self, run, epoch, graph) -> dict:
        return {"homophily": edge_homophily(graph.indices.detach().cpu(), self.labels)}


class GraphSnapshots(Plugin):
    """Keep the eval graph every ``every`` epochs in ``history.graphs`` (epoch 0 and the last are
    always kept).

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """

    def __init__(self, every: int):
        self.every = int(every)

    def on_evaluate(self, run, epoch, graph) -> dict:
        if self.every and epoch % self.every == 0 and epoch != run.settings.epochs:
            run.history.graphs.append(snapshot(graph, epoch))
        return {}


def analysis_plugins(analysis_labels, n: int) -> list:
    """``[Homophily(analysis_labels)]`` after checking them (every node's class, (N,)); ``[]`` for None.

    Shapes: analysis_labels (N,).

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """
    labels = check_analysis_labels(analysis_labels, n)
    return [] if labels is None else [Homophily(labels)]


def snapshot(graph, epoch: int) -> dict:
    """A graph as ``{"epoch", "indices" (N, k) int16/int32, "weights" (N, k) float16}`` on the CPU.

    Shapes: graph.indices (N, k) -> indices, weights (N, k).

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """
    idx = graph.indices.detach().cpu()
    idx = idx.to(torch.int16 if graph.num_nodes < 2**15 else torch.int32)
    return {"epoch": int(epoch), "indices": idx, "weights": graph.weights.detach().float().cpu().to(torch.float16)}


def make_optimizer(model, mode: str, lr_backbone: float, lr_gcn: float, weight_decay: float):
    """AdamW with two groups: ``lr_gcn`` for the non-backbone parameters, ``lr_backbone`` for the
    backbone (not in ``"frozen"``). Returns ``(optimizer, backbone_params, other_params)``.

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    other = [p for p in model.parameters() if id(p) not in backbone_ids and p.requires_grad]
    groups = [{"params": other, "lr": lr_gcn, "name": "gcn"}]
    if mode != "frozen" and backbone_params:
        groups.append({"params": backbone_params, "lr": lr_backbone, "name": "backbone"})
    return torch.optim.AdamW(groups, weight_decay=weight_decay), backbone_params, other


@contextlib.contextmanager
def deterministic_algorithms(deterministic: bool | None, dev: torch.device):
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` for the block (``None``: on the
    CPU only), restored after; on CUDA it also sets ``CUBLAS_WORKSPACE_CONFIG`` if cuBLAS has not
    started (else it warns).

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    if deterministic is None:
        deterministic = dev.type == "cpu"
    if deterministic:
        if dev.type == "cuda" and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
            if torch.cuda.is_initialized():
                warnings.warn("deterministic=True on CUDA, but cuBLAS has already started without "
                              "CUBLAS_WORKSPACE_CONFIG: its matrix products may not be deterministic; set "
                              "CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment before Python starts",
                              UserWarning, stacklevel=4)
            else:
                os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])


def merge_extra(config: dict, extra: dict | None, owner: str) -> dict:
    """``config`` with the user's ``extra`` values added; a key the engine records itself is refused.

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """
    clash = sorted(set(extra or {}) & set(config))
    if clash:
        raise ValueError(f"extra_config keys {clash} clash with {owner}'s own settings; rename them")
    return {**config, **dict(extra or {})}


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]) if lines else type(e).__name__


class _Run:
    """One run's state: history, selection, the checkpoint bookkeeping."""

    def __init__(self, engine, settings: LoopSettings, plugins):
        self.engine, self.settings, self.plugins = engine, settings, list(plugins)
        self.path = settings.checkpoint
        self.history = History()
        self.best = {"epoch": 0, "score": -math.inf, "val_acc": float("nan"), "test_acc": float("nan")}
        self.best_state: dict = {}
        self.warm_info: dict | None = None
        self.snaps: dict = {}
        self.prev: torch.Tensor | None = None
        self.last_saved = 0
        self.written: set = set()  # epochs whose graph file is on disk

    # -- the spine ---------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        eng, s = self.engine, self.settings
        t_start = time.perf_counter()
        done = self._resume()
        eng.prepare(done + 1)
        if done == 0:
            self._initial()
        self.last_saved = done
        status = "completed" if done < s.epochs else "resumed-complete"
        bar = pbar(range(done + 1, s.epochs + 1), s.progress and eng.rank == 0, desc=eng.desc, unit="epoch",
                   initial=done, total=s.epochs)
        for epoch in bar:
            t0 = time.perf_counter()
            row = self._guard(epoch, eng.step, epoch)
            t_step = time.perf_counter() - t0
            for p in self.plugins:
                p.after_step(self, epoch)
            evaluated = None
            if epoch % s.eval_every == 0 or epoch == s.epochs:
                evaluated = self._guard(epoch, eng.evaluate, epoch)
            self._record(epoch, row, evaluated, t0, t_step)
            bar.set_postfix(**self.postfix, refresh=False)
            if self.path is not None and (epoch % s.checkpoint_every == 0 or epoch == s.epochs):
                self._save(epoch)
        bar.close()
        if self.path is not None and status == "completed" and self.last_saved != s.epochs:
            self._save(s.epochs)
        return eng.finish(self._result(status, time.perf_counter() - t_start))

    # -- parts ---------------------------------------------------------------------------------------
    def _guard(self, epoch: int, fn, *args):
        try:
            return fn(*args)
        except FloatingPointError as e:
            raise self.diverged(epoch, str(e)) from None

    def diverged(self, epoch: int, what: str) -> TrainingDiverged:
        """The error for a NaN/Inf at ``epoch``, naming the last good checkpoint."""
        kept = self.path is not None and self.last_saved > 0
        where = (f"the last good checkpoint (epoch {self.last_saved}) is kept: {str(self.path)!r} holds epoch "
                 f"{self.last_saved}, and resume=True continues from it" if kept else "no checkpoint was written")
        return TrainingDiverged(f"training diverged at epoch {epoch}: {what}; {where}. Lower the learning rates "
                                f"(lr_backbone/lr_gcn), raise tau, or clip the gradients (max_grad_norm).", epoch,
                                str(self.path) if kept else None)

    def _initial(self) -> None:
        logp, graph = self._guard(0, self.engine.initial)
        self.history.initial = {**self._accuracies(logp), "homophily": float("nan")}
        for p in self.plugins:
            self.history.initial.update(p.on_initial(self, graph))
        self.history.graphs.append(snapshot(graph, 0))
        self.snaps["initial"] = snapshot(graph, 0)
        self.prev = graph.indices.detach().cpu()

    def _accuracies(self, logp) -> dict:
        eng = self.engine
        return {f"{m}_acc": accuracy(logp, eng.labels, eng.masks[f"{m}_mask"]) for m in ("train", "val", "test")}

    def _record(self, epoch: int, row: dict, evaluated, t0: float, t_step: float) -> None:
        eng, s = self.engine, self.settings
        row = {"epoch": epoch, **row}
        graph = None
        if evaluated is not None:
            logp, graph = evaluated
            row.update(self._accuracies(logp))
            new = graph.indices.detach().cpu()
            row["edge_change"] = 0.0 if self.prev is None else edge_change_fraction(self.prev, new)
            self.prev = new
            for p in self.plugins:
                row.update(p.on_evaluate(self, epoch, graph))
        eng.end_epoch(epoch, evaluated)
        if eng.device.type == "cuda":
            torch.cuda.synchronize(eng.device)
        self.history.append(**row, time=time.perf_counter() - t0, time_step=t_step)
        nan = float("nan")
        self.postfix = {"loss": f"{row['loss']:.3f}", "val": f"{row.get('val_acc', nan):.3f}",
                        "test": f"{row.get('test_acc', nan):.3f}", **eng.postfix(t_step)}
        if graph is not None:
            if epoch == s.epochs:
                self.history.graphs.append(snapshot(graph, epoch))
                self.snaps["final"] = snapshot(graph, epoch)
            self._select(epoch, row["val_acc"], row["test_acc"], graph)

    def _select(self, epoch: int, va: float, te: float, graph) -> None:
        """Model selection: with a warm-up, only the joint epochs compete (the warm-up is recorded apart)."""
        warm = self.settings.warm
        score = va if self.engine.masks["val_mask"] is not None else float(epoch)  # no validation: the last wins
        if warm > 0 and epoch <= warm:
            wb = self.warm_info or {"best_epoch": 0, "best_val_acc": -math.inf, "test_acc_at_best_val": float("nan")}
            if score > wb["best_val_acc"]:
                wb = {**wb, "best_epoch": epoch, "best_val_acc": float(score), "test_acc_at_best_val": te}
            self.warm_info = {**wb, "epoch": epoch, "val_acc": va, "test_acc": te}
            if epoch == warm:
                self.snaps["warmup"] = snapshot(graph, epoch)
        elif score > self.best["score"]:
            self.best = {"epoch": epoch, "score": float(score), "val_acc": va, "test_acc": te}
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.engine.model.state_dict().items()}
            self.snaps["best"] = snapshot(graph, epoch)

    # -- checkpoints ---------------------------------------------------------------------------------
    def _state(self, epoch: int) -> dict:
        eng = self.engine
        hist = history_apart(self.path, self.history, self.written)
        return {"format": eng.checkpoint_format, "epoch": int(epoch), "model": eng.model.state_dict(),
                "optimizer": eng.optimizer.state_dict(), "history": hist, "best": dict(self.best),
                "best_model": self.best_state, "rng": rng_state(eng.generator), "warmup": self.warm_info,
                "snapshots": self.snaps,
                "prev_indices": torch.empty(0, dtype=torch.long) if self.prev is None else self.prev,
                "config": dict(eng.config), **eng.state_dict()}

    def _save(self, epoch: int) -> None:
        bd.write_if_main(self.path, lambda p: save_checkpoint(p, self._state(epoch)))
        self.last_saved = epoch

    def _resume(self) -> int:
        """Restore the run from its checkpoint; returns the last epoch done (0: a fresh start)."""
        eng, path = self.engine, self.path
        if not self.settings.resume or path is None:
            return 0
        eng.before_resume(path)
        if not path.is_file():
            warnings.warn(f"resume=True but there is no checkpoint at {str(path)!r}: starting afresh",
                          UserWarning, stacklevel=5)
            return 0
        state = load_checkpoint(path, map_location="cpu")
        self._check_resumable(state)
        restore_state(eng.model, state["model"], path, "its model weights do not fit this model")
        restore_state(eng.optimizer, state["optimizer"], path,
                      "its optimizer state does not fit this model's parameters")
        eng.load_state_dict(state, path)
        self.history = History.from_state_dict(state["history"])
        files = load_graph_files(path, state["history"])
        if files is not None:  # graphs stored apart: those files are on disk
            self.history.graphs = files
            self.written = {int(g["epoch"]) for g in files}
        # (an older checkpoint holds its graphs inline: none is on disk yet, so the next save writes them all)
        self.best = dict(state["best"])
        self.best_state = {k: v.clone() for k, v in state["best_model"].items()}
        self.warm_info = state.get("warmup") or None
        self.snaps = dict(state.get("snapshots") or {})
        prev = state.get("prev_indices")
        self.prev = None if prev is None or prev.numel() == 0 else prev.long()
        set_rng_state(state["rng"], eng.generator)
        return int(state["epoch"])

    def _check_resumable(self, state: dict) -> None:
        eng, where = self.engine, f"cannot resume from {str(self.path)!r}"
        if state.get("format") != eng.checkpoint_format:
            raise ValueError(f"{where}: it is not a {eng.kind} checkpoint (format {state.get('format')!r}); "
                             f"{eng.resume_hint}, or use another checkpoint path")
        missing = [k for k in (*_REQUIRED, *eng.required_keys) if k not in state]
        if missing:
            raise ValueError(f"{where}: the checkpoint has no {', '.join(map(repr, missing))} (it is incomplete); "
                             f"use another checkpoint path, or start afresh without resume")
        old = state.get("config", {})
        keys = sorted((set(old) | set(eng.config)) - eng.resume_free)
        diff = [f"{key}: checkpoint {old.get(key)!r} vs now {eng.config.get(key)!r}"
                for key in keys if old.get(key) != eng.config.get(key)]
        if diff:
            raise ValueError(f"{where}: the settings differ ({'; '.join(diff)}); use the same settings or another "
                             f"checkpoint path")

    def _result(self, status: str, total: float) -> TrainResult:
        h, eng = self.history, self.engine
        final = {"train_acc": h.train_acc[-1], "val_acc": h.val_acc[-1], "test_acc": h.test_acc[-1],
                 "loss": h.loss[-1]} if len(h) else {}
        timings = {"total": total, "per_epoch": float(np.mean(h.time)) if len(h) else float("nan"),
                   "per_epoch_step": float(np.mean(h.time_step)) if len(h) else float("nan"),
                   "features": eng.t_feat, **eng.timings(h)}
        return TrainResult(model=eng.model, history=h, best_epoch=int(self.best["epoch"]),
                           best_val_acc=float(self.best["val_acc"]), test_acc_at_best_val=float(self.best["test_acc"]),
                           final=final, best_state=self.best_state, status=status,
                           checkpoint=None if self.path is None else str(self.path), timings=timings,
                           config=eng.config, warmup=self.warm_info, graphs=self.snaps)


def restore_state(obj, state: dict, path: Path, what: str) -> None:
    """``obj.load_state_dict(state)``; a mismatch is a one-line ``ValueError`` naming the checkpoint and ``what``.

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """
    try:
        obj.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot resume from {str(path)!r}: {what} ({_first_line(e)}); use the checkpoint's own "
                         f"settings, or another checkpoint path") from None


def run(engine, settings: LoopSettings, plugins=()) -> TrainResult:
    """Train with ``engine``: for each epoch, its step(s), maybe an evaluation, maybe a checkpoint.

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """
    return _Run(engine, settings, plugins).fit()


def train_with(cfg: TrainConfig, dev: torch.device, build, plugins=()) -> TrainResult:
    """Seed, make the engine (``build()``) and :func:`run` it, with deterministic algorithms as
    ``cfg.deterministic`` says (restored after): the common tail of both engines' functions.

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """
    with deterministic_algorithms(cfg.deterministic, dev):
        seed_everything(cfg.seed)
        engine = build()
        return run(engine, LoopSettings.from_config(cfg, engine.warm), plugins)
