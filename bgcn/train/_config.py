r"""Every setting of a training run in one validated value: :class:`TrainConfig`.

Both engines (:func:`bgcn.train.train`, :func:`bgcn.minibatch.train_minibatch`) build one from their
keyword arguments and trust it; the command line builds one from its flags; :func:`bgcn.config.fit`
hands one to the engine it names.

Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ..index import INDEX_KINDS
from .._checks import MAX_LR, check_bool, check_int, check_lr, check_number

__all__ = ["TrainConfig", "ENGINES", "MAX_LR"]

ENGINES = ("full", "minibatch")
_MODES = ("frozen", "end2end-features", "end2end")
# settings only the mini-batch engine has, with their defaults (a full-batch config must keep them)
_MINIBATCH_ONLY = {"bank_refresh": 1, "bank_momentum": None, "cache_neighbours": False, "num_workers": 0,
                   "embed_batch_size": 512, "bank_chunk": None, "index": "exact", "candidates": None}
# settings only the full-batch engine has
_FULL_ONLY = {"amp": False, "graph_every": 1, "reinforce_reward": "node", "param_path_norms": False}


def _int(name: str, v: Any, lo: int, hi: int | None = None) -> int:
    """``v`` as a Python int (NumPy integers are ints) in [lo, hi]: :func:`bgcn._checks.check_int`."""
    return check_int(v, f"TrainConfig.{name}", lo, hi)


def _num(name: str, v: Any, lo: float = 0.0, hi: float = math.inf, open_hi: bool = False) -> float:
    """``v`` as a Python float (NumPy numbers too), finite and in range: :func:`bgcn._checks.check_number`."""
    return check_number(v, f"TrainConfig.{name}", lo, hi, open_max=open_hi)


@dataclass(frozen=True)
class TrainConfig:
    r"""Every setting of a training run, validated once.

    ``batch_size=0`` is the full-batch engine (one step an epoch on all N images: the chapters'
    exact path); ``batch_size=b > 0`` the mini-batch engine over a feature bank (chapter 11; with
    b ≥ N its step equals the full-batch one). The fields mean what the keyword arguments of
    :func:`bgcn.train.train` and :func:`bgcn.minibatch.train_minibatch` mean; the bank fields
    (``bank_refresh``, ``bank_momentum``, ``cache_neighbours``, ``num_workers``,
    ``embed_batch_size``) belong to the mini-batch engine and ``amp``, ``graph_every``,
    ``reinforce_reward``, ``param_path_norms`` to the full-batch one: setting one for the other
    engine is an error, not silently ignored. ``mode=None`` follows the model's own mode.
    ``bank_chunk`` (mini-batch; None = the whole bank) is the bank columns of one search block;
    ``index`` (mini-batch) the bank's neighbour index, ``"exact"`` or one of
    :func:`bgcn.index.make_index`'s kinds (``"auto"``: exact below
    :data:`bgcn.index.APPROXIMATE_FROM` images). ``candidates`` (mini-batch; None = none) is k′,
    the candidate neighbours per row on which a selection estimator of chapter 09 runs
    (:func:`bgcn.bank.candidate_subgraph`; k < k′ ≤ N − 1, checked by the engine).

    This is the only place a setting is checked: :func:`bgcn.train.train` and
    :func:`bgcn.minibatch.train_minibatch` build one from their keyword arguments. Numbers are
    stored as Python ``int``/``float`` (NumPy integers and floats are accepted); a learning rate
    lies in [0, :data:`MAX_LR`].

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """

    mode: str | None = None
    epochs: int = 100
    warmup_epochs: int = 0
    lr_backbone: float = 1e-4
    lr_gcn: float = 1e-2
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"
    max_grad_norm: float | None = None
    eval_every: int = 1
    checkpoint: str | None = None
    checkpoint_every: int = 1
    resume: bool = False
    progress: bool | None = None
    deterministic: bool | None = None
    batch_size: int = 0
    chunk_size: int = 4096
    bank_refresh: int = 1
    bank_momentum: float | None = None
    cache_neighbours: bool = False
    num_workers: int = 0
    embed_batch_size: int = 512
    bank_chunk: int | None = None
    index: str = "exact"
    candidates: int | None = None
    amp: bool = False
    graph_every: int = 1
    reinforce_reward: str = "node"
    param_path_norms: bool = False
    extra: dict | None = field(default_factory=dict)

    def __post_init__(self):
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen dataclass
        if self.mode is not None and self.mode not in _MODES:
            raise ValueError(f"TrainConfig.mode={self.mode!r}: use one of {list(_MODES)} (or None: the model's own)")
        for name, lo in (("epochs", 1), ("warmup_epochs", 0), ("eval_every", 1), ("checkpoint_every", 1),
                         ("batch_size", 0), ("chunk_size", 1), ("bank_refresh", 0), ("num_workers", 0),
                         ("embed_batch_size", 1), ("graph_every", 0)):
            put(name, _int(name, getattr(self, name), lo))
        if self.mode not in (None, "frozen") and self.warmup_epochs >= self.epochs:
            raise ValueError(f"TrainConfig.warmup_epochs={self.warmup_epochs} must be < epochs={self.epochs}: the "
                             f"backbone learns only after the warm-up, so it would never train (mode='frozen' trains "
                             f"only the GCN)")
        for name in ("lr_backbone", "lr_gcn"):
            put(name, check_lr(getattr(self, name), f"TrainConfig.{name}"))
        put("weight_decay", _num("weight_decay", self.weight_decay))
        shrink = max(self.lr_backbone, self.lr_gcn) * self.weight_decay
        if shrink >= 1:
            raise ValueError(f"TrainConfig.weight_decay={self.weight_decay!r} with a learning rate of "
                             f"{max(self.lr_backbone, self.lr_gcn):g}: AdamW multiplies the weights by 1 - lr * "
                             f"weight_decay = {1 - shrink:g} a step, which must stay in (0, 1]; use weight_decay < "
                             f"{1 / max(self.lr_backbone, self.lr_gcn):g}")
        put("seed", _int("seed", self.seed, 0, 2**64 - 1))
        if self.device is None or isinstance(self.device, torch.device):
            put("device", "auto" if self.device is None else str(self.device))
        if not isinstance(self.device, str):
            raise TypeError(f"TrainConfig.device must be a string such as 'auto', 'cpu' or 'cuda:0' (a torch.device "
                            f"or None = 'auto' are stored as one), got "
                            f"{type(self.device).__name__}")
        if self.max_grad_norm is not None:
            put("max_grad_norm", _num("max_grad_norm", self.max_grad_norm))
            if self.max_grad_norm == 0:
                raise ValueError("TrainConfig.max_grad_norm=0 would clip every gradient to zero; use a positive "
                                 "norm or None")
        if self.checkpoint is not None and not isinstance(self.checkpoint, (str, os.PathLike)):
            raise TypeError(f"TrainConfig.checkpoint must be a path or None, got {type(self.checkpoint).__name__}")
        if self.checkpoint is not None:
            put("checkpoint", os.fspath(self.checkpoint))
        for name in ("resume", "cache_neighbours", "amp", "param_path_norms"):
            check_bool(getattr(self, name), f"TrainConfig.{name}")
        for name in ("progress", "deterministic"):
            check_bool(getattr(self, name), f"TrainConfig.{name}", optional=True)
        if self.resume and self.checkpoint is None:
            raise ValueError("TrainConfig.resume=True needs checkpoint= (the file to continue from)")
        if self.bank_momentum is not None:
            put("bank_momentum", _num("bank_momentum", self.bank_momentum, 0.0, 1.0, open_hi=True))
        if self.bank_chunk is not None:
            put("bank_chunk", _int("bank_chunk", self.bank_chunk, 1))
        if self.candidates is not None:  # k < candidates <= N - 1 is checked where k and N are known
            put("candidates", _int("candidates", self.candidates, 2))
        if self.index not in ("auto",) + INDEX_KINDS:
            raise ValueError(f"TrainConfig.index={self.index!r}: use one of {['auto', *INDEX_KINDS]}")
        if self.reinforce_reward not in ("node", "global"):
            raise ValueError(f"TrainConfig.reinforce_reward={self.reinforce_reward!r}: use 'node' or 'global'")
        if self.extra is None:
            put("extra", {})
        if not isinstance(self.extra, dict):
            raise TypeError(f"TrainConfig.extra (extra_config= of the engines) must be a dict of plain values, got "
                            f"{type(self.extra).__name__}")
        clash = sorted(set(self.extra) & {f.name for f in dataclasses.fields(self)})
        if clash:
            raise ValueError(f"TrainConfig.extra keys {clash} clash with the config's own fields; rename them")
        wrong = _FULL_ONLY if self.batch_size else _MINIBATCH_ONLY
        bad = [k for k, d in wrong.items() if getattr(self, k) != d]
        if bad:
            eng = "full-batch (batch_size=0)" if self.batch_size else "mini-batch (batch_size > 0)"
            raise ValueError(f"TrainConfig: {', '.join(bad)} {'does' if len(bad) == 1 else 'do'} not apply to the "
                             f"{'mini-batch' if self.batch_size else 'full-batch'} engine; only the "
                             f"{'full-batch' if self.batch_size else 'mini-batch'} engine has "
                             f"{'it' if len(bad) == 1 else 'them'} (this config is "
                             f"{'mini-batch' if self.batch_size else 'full-batch'}; the other is {eng})")

    @property
    def engine(self) -> str:
        """``"full"`` (batch_size 0) or ``"minibatch"``."""
        return "minibatch" if self.batch_size else "full"

    def to_dict(self) -> dict:
        """Plain values (JSON-ready), every field; :meth:`from_dict` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The config a :meth:`to_dict` (or ``metrics.json``'s ``train_config``) recorded; an unknown key
        is an error naming it."""
        if not isinstance(d, dict):
            raise TypeError(f"from_dict needs a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"TrainConfig.from_dict: unknown keys {unknown}; the fields are {sorted(names)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def engine_kwargs(self) -> dict:
        """The keyword arguments of the engine's function (:func:`bgcn.train.train` or
        :func:`bgcn.minibatch.train_minibatch`)."""
        common = {k: getattr(self, k) for k in ("mode", "epochs", "warmup_epochs", "lr_backbone", "lr_gcn",
                                                 "weight_decay", "seed", "device", "max_grad_norm", "eval_every",
                                                 "checkpoint", "checkpoint_every", "resume", "progress",
                                                 "deterministic")}
        common["extra_config"] = dict(self.extra) or None
        if self.batch_size:
            return {**common, "batch_size": self.batch_size, "chunk_size": self.chunk_size,
                    **{k: getattr(self, k) for k in _MINIBATCH_ONLY}}
        return {**common, **{k: getattr(self, k) for k in _FULL_ONLY}}


