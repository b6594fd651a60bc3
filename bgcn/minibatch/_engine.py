r"""The mini-batch engine: its steps and evaluations over a feature bank, and :func:`train_minibatch`.

The loop around them (selection, resume, divergence, history) is :func:`bgcn.train.run`'s, shared
with the full-batch engine.

Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from pathlib import Path

import torch

from .. import distributed as bd
from ..bank import (FeatureBank, bank_estimator, check_candidates, ema_backbone, is_selection, momentum_update,
                    selection_names)
from ..index import ExactIndex, make_index, recall_at_k, resolve_index_kind
from ..train import TrainConfig
from ..model import EndToEnd
from ..train import (Engine, NonFiniteImages, Plugin, TrainingDiverged, TrainResult, analysis_plugins,
                     check_images, check_labels, check_masks, check_model, default_mode, make_optimizer,
                     merge_extra, restore_state, train_with)
from ..utils import check_k, get_device, peak_memory_bytes, reset_peak_memory
from ._sampler import stratified_batches
from ..backbone import embed_images
from ._step import evaluate_full, minibatch_loss

__all__ = ["MinibatchEngine", "train_minibatch", "MINIBATCH_CHECKPOINT_FORMAT"]

#: mini-batch checkpoints: what may change between a run and its resume
_MB_RESUME_FREE = frozenset({"epochs", "device", "checkpoint_every", "world_size", "num_workers"})
MINIBATCH_CHECKPOINT_FORMAT = "bgcn-minibatch-1"


def _allreduce_mean_(params: list) -> None:
    """Average the gradients of ``params`` over the ranks (one flat all-reduce; nothing in one process)."""
    if not bd.is_initialized() or torch.distributed.get_world_size() == 1 or not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    off = 0
    for p in params:
        m = p.numel()
        p.grad.copy_(flat[off:off + m].view_as(p.grad))
        off += m


@contextlib.contextmanager
def _diverged_features(where: str):
    """The bank refuses NaN/Inf rows with a ``ValueError`` (its input check); inside training that is
    divergence (the images were checked), reported as such, not as bad input."""
    try:
        yield
    except ValueError as e:
        if "NaN/Inf" not in str(e):
            raise
        raise FloatingPointError(f"the backbone's features {where} became NaN/Inf") from None


class _Callback(Plugin):
    """``callback(epoch, model, bank)`` after each epoch's steps, before its evaluation and bank refresh."""

    def __init__(self, fn):
        self.fn = fn

    def after_step(self, run, epoch: int) -> None:
        eng = run.engine
        eng.model.eval()
        with torch.no_grad():
            self.fn(epoch, eng.model, eng.bank)


class MinibatchEngine(Engine):
    """How the mini-batch engine makes an epoch's steps and an evaluation (the loop is :func:`bgcn.train.run`).

    Holds the bank (:class:`~bgcn.bank.FeatureBank`, filled by :meth:`prepare`, refreshed by
    :meth:`end_epoch`), the optional EMA backbone, the batch sampler's generator and the per-step
    record; its checkpoint entries are ``bank``, ``neighbours``, ``ema``, ``steps``, ``search_s``.

    Shapes: images (N, C_in, H, W) tensor or image source; labels, masks (N,) on the device.

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """

    kind, checkpoint_format, resume_free = "mini-batch", MINIBATCH_CHECKPOINT_FORMAT, _MB_RESUME_FREE
    resume_hint = "a full-batch run resumes with bgcn.train.train"

    def __init__(self, model: EndToEnd, images, labels, masks: dict, cfg: TrainConfig, dev: torch.device):
        self.model, self.images, self.labels, self.masks, self.device, self.cfg = model, images, labels, masks, dev, cfg
        self.train_cpu = masks["train_mask"].cpu()
        self.n, self.mode = len(images), cfg.mode
        self.warm = 0 if cfg.mode == "frozen" else cfg.warmup_epochs
        self.rank, self.world = bd.rank_world()
        if self.world == 1 and bd.dist_info()[1] > 1:
            warnings.warn(f"torchrun started {bd.dist_info()[1]} processes but no process group is initialised, so "
                          f"each trains alone on all the data; call bgcn.distributed.init_distributed() first",
                          UserWarning, stacklevel=4)
        model.to(dev)
        if self.world > 1:  # every rank starts from rank 0's parameters
            for t in model.state_dict().values():
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    bd.broadcast_(t)
        self.generator = torch.Generator().manual_seed(int(cfg.seed) % 2**63)
        self.optimizer, self.backbone_params, self.other = make_optimizer(model, cfg.mode, cfg.lr_backbone,
                                                                          cfg.lr_gcn, cfg.weight_decay)
        trains_backbone = cfg.mode != "frozen" and bool(self.backbone_params)
        self.ddp_backbone = bd.wrap_ddp(model.backbone, dev) if self.world > 1 and trains_backbone else model.backbone
        self.config = merge_extra(self._record(), cfg.extra, "train_minibatch()")
        self.required_keys = ("bank", "neighbours", "steps", "prev_indices") + (("ema",) if cfg.bank_momentum
                                                                                  is not None else ())
        self.desc = f"train {cfg.mode} b={cfg.batch_size}"
        reset_peak_memory(dev)
        self.ema = ema_backbone(model.backbone) if cfg.bank_momentum is not None else None
        self.bank: FeatureBank | None = None
        self.steps: list[list[int]] = []
        self.t_search, self.t_feat, self._fixed, self._eval_feats = 0.0, 0.0, False, None
        # the neighbour index: exact (the reference) or approximate, built with every bank fill
        self.index_kind = resolve_index_kind(cfg.index, self.n, dev)
        self._eval_index, self.recall, self._recall_built = None, [], None  # recall: see _measure_recall

    def _record(self) -> dict:
        cfg, model = self.cfg, self.model
        return {"engine": "minibatch", "mode": cfg.mode, "k": model.k, "estimator": model.estimator_name,
                "tau": model.tau, "batch_size": cfg.batch_size, "epochs": cfg.epochs, "warmup_epochs": self.warm,
                "lr_backbone": cfg.lr_backbone, "lr_gcn": cfg.lr_gcn, "weight_decay": cfg.weight_decay,
                "seed": cfg.seed, "device": str(self.device), "bank_refresh": cfg.bank_refresh,
                "bank_momentum": cfg.bank_momentum, "eval_every": cfg.eval_every, "chunk_size": cfg.chunk_size,
                "bank_chunk": cfg.bank_chunk, "cache_neighbours": cfg.cache_neighbours, "num_nodes": int(self.n),
                "num_train": int(self.train_cpu.sum()), "max_grad_norm": cfg.max_grad_norm,
                "checkpoint_every": cfg.checkpoint_every, "world_size": int(self.world),
                "num_workers": cfg.num_workers, "index": cfg.index,
                # absent = None, so checkpoints from before the option still resume
                **({"candidates": cfg.candidates} if cfg.candidates is not None else {})}

    # -- checkpoint ----------------------------------------------------------------------------------
    def before_resume(self, path: Path) -> None:
        """Several processes: every rank must see the checkpoint (or none), to continue the same run."""
        if self.world == 1:
            return
        seen = torch.tensor([float(path.is_file())])
        lo, hi = seen.clone(), seen.clone()
        torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
        torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
        if float(lo) != float(hi):
            raise ValueError(f"resume=True: the checkpoint {str(path)!r} exists on some ranks only; put it on a "
                             f"file system that every process sees (rank 0 writes it)")

    def state_dict(self) -> dict:
        bank = self.bank
        return {"bank": bank.features.detach().cpu(),
                "neighbours": (bank.neighbours.detach().cpu() if bank.neighbours is not None
                               else torch.empty(0, dtype=torch.long)),
                "ema": self.ema.state_dict() if self.ema is not None else {},
                "steps": torch.tensor(self.steps, dtype=torch.long).reshape(-1, 6), "search_s": self.t_search}

    def load_state_dict(self, state: dict, path: Path) -> None:
        feats, nbrs = state["bank"], state["neighbours"]
        d = getattr(self.model.backbone, "num_features", None)
        if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or feats.shape[0] != self.n \
                or (isinstance(d, int) and feats.shape[1] != d):
            got = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            raise ValueError(f"cannot resume from {str(path)!r}: its bank has shape {got}, this run needs "
                             f"({self.n}, {d if isinstance(d, int) else 'D'}); use the checkpoint's own data and "
                             f"backbone, or another checkpoint path")
        if not isinstance(nbrs, torch.Tensor) or (nbrs.numel() and tuple(nbrs.shape) != (self.n, self.model.k)):
            got = tuple(nbrs.shape) if isinstance(nbrs, torch.Tensor) else type(nbrs).__name__
            raise ValueError(f"cannot resume from {str(path)!r}: its neighbour lists have shape {got}, this run "
                             f"needs ({self.n}, {self.model.k}); use another checkpoint path")
        self.bank = FeatureBank(self.n, feats.shape[1], feats.dtype, self.device)
        self.bank.features.copy_(feats.to(self.device))
        self.bank.filled = True
        if nbrs.numel():
            self.bank.neighbours = nbrs.to(self.device)
        if self.ema is not None:
            restore_state(self.ema, state["ema"], path, "its EMA backbone does not fit this backbone")
        self.steps = [list(map(int, r)) for r in state["steps"].tolist()]
        self.t_search = float(state.get("search_s", 0.0))

    # -- the run -------------------------------------------------------------------------------------
    def _embed(self, num_workers: int | None = None) -> torch.Tensor:
        cfg = self.cfg
        return embed_images(self.ema if self.ema is not None else self.model.backbone, self.images,
                            cfg.embed_batch_size, self.device,
                            num_workers=cfg.num_workers if num_workers is None else num_workers)

    def _new_index(self):
        """An unbuilt index of the run's kind, or None for the exact search."""
        if self.index_kind == "exact":
            return None
        return make_index(self.index_kind, self.n, chunk_size=self.cfg.chunk_size, key_chunk=self.cfg.bank_chunk)

    def _build_index(self) -> None:
        index = self._new_index()
        if index is not None:
            self.bank.build_index(index)
        self._recall_built = self._recall()

    def _recall(self, sample: int = 512) -> float | None:
        """recall@k of the bank's index against the exact search on the bank's current rows, over a
        fixed sample of rows; ``None`` for the exact search."""
        if self.bank.index is None or isinstance(self.bank.index, ExactIndex):
            return None
        g = torch.Generator().manual_seed(12345)
        rows = torch.randperm(self.n, generator=g)[:sample].sort().values.to(self.device)
        q = self.bank.features[rows]
        exact = ExactIndex(self.cfg.chunk_size, self.cfg.bank_chunk).build(self.bank.features)
        return recall_at_k(self.bank.search(q, self.model.k, exclude=rows),
                           exact.search(q, self.model.k, exclude=rows))

    def _measure_recall(self, epoch: int) -> None:
        """Record ``[epoch, recall when the index was built, recall after the epoch's steps]``: what the
        approximation costs, and what it and the rows written since the build cost together."""
        after = self._recall()
        if after is not None:
            self.recall.append([epoch, self._recall_built, after])

    def prepare(self, start_epoch: int) -> None:
        """A fresh run: fill the bank (and the neighbour lists) from the initial backbone, build the index."""
        if self.bank is not None:
            if self.bank.index is None:
                self._build_index()  # a resumed run: the index is rebuilt, not saved
            return
        t0 = time.perf_counter()
        feats0 = self._embed()
        bad = ~torch.isfinite(feats0).all(dim=1)
        if bool(bad.any()):
            what = (f"the backbone produced NaN/Inf features for {int(bad.sum())} image(s) before training (the "
                    f"first: image {int(torch.nonzero(bad)[0])})")
            if isinstance(self.images, torch.Tensor):  # the images are finite (checked): the backbone is at fault
                raise TrainingDiverged(f"{what}; check the backbone's weights", 0, None)
            raise NonFiniteImages(f"{what}; check those images for NaN/Inf values")
        self.bank = FeatureBank(self.n, feats0.shape[1], feats0.dtype, self.device)
        self.bank.features.copy_(feats0)
        self.bank.filled = True
        self._build_index()
        if self.cfg.cache_neighbours:
            self.bank.fill_neighbours(self.model.k, self.cfg.chunk_size, self.cfg.bank_chunk)
        self.t_feat = time.perf_counter() - t0

    def initial(self):
        cfg = self.cfg
        logp, graph, _ = evaluate_full(self.model, self.images, fixed=self.mode == "frozen" or self.warm > 0,
                                       chunk_size=cfg.chunk_size, bank_chunk=cfg.bank_chunk,
                                       batch_size=cfg.embed_batch_size, device=self.device,
                                       features=self.bank.features if self.ema is None else None,
                                       index=self.bank.index if self.ema is None else None,
                                       candidates=cfg.candidates)
        return logp, graph

    def step(self, epoch: int) -> dict:
        """The epoch's steps: one AdamW step a stratified batch (:func:`minibatch_loss`)."""
        cfg, model, dev = self.cfg, self.model, self.device
        self._fixed = fixed = self.mode == "frozen" or epoch <= self.warm
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        lab_total, n_steps = 0, 0
        sur_sum = torch.zeros((), dtype=torch.float64, device=dev)
        g_backbone = torch.zeros((), dtype=torch.float64, device=dev)
        for batch in stratified_batches(self.train_cpu, cfg.batch_size, self.generator):
            self.optimizer.zero_grad(set_to_none=True)
            loss, info = self._batch_loss(batch, fixed)
            loss.backward()
            if self.world > 1:
                _allreduce_mean_(self.other)
            if not fixed and self.backbone_params:
                grads = [p.grad.detach().double().pow(2).sum() for p in self.backbone_params if p.grad is not None]
                g_backbone = torch.stack(grads).sum().sqrt() if grads else torch.zeros_like(g_backbone)
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                               cfg.max_grad_norm)
            self.optimizer.step()
            if self.ema is not None and not fixed:
                momentum_update(self.ema, model.backbone, cfg.bank_momentum)
                self.bank.update(batch.to(dev), embed_images(self.ema, self.images, cfg.embed_batch_size, dev,
                                                             indices=batch).to(self.bank.dtype))
            n_lab = int(self.train_cpu[batch].sum())
            loss_sum = loss_sum + info["loss"].double() * n_lab
            lab_total += n_lab
            sur_sum, n_steps = sur_sum + info["surrogate"].double(), n_steps + 1
            self.t_search += info["search_s"]
            self.steps.append([epoch, int(batch.numel()), n_lab, info["nodes"], info["hop1"], info["hop2"]])
        loss_value = float(loss_sum) / max(lab_total, 1)  # the epoch's one read of the device
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"the mean batch loss is {loss_value}")
        surrogate = float(sur_sum) / max(n_steps, 1)
        return {"loss": loss_value, "surrogate": surrogate, "grad_backbone": float(g_backbone)}

    def _batch_loss(self, batch: torch.Tensor, fixed: bool):
        cfg = self.cfg
        with _diverged_features("of a batch (an earlier step of this epoch diverged)"):
            return minibatch_loss(self.model, self.images, batch, self.bank, self.labels, self.masks["train_mask"],
                                  chunk_size=cfg.chunk_size, bank_chunk=cfg.bank_chunk, fixed=fixed,
                                  write_bank=self.ema is None, use_neighbours=cfg.cache_neighbours,
                                  backbone=None if fixed else self.ddp_backbone, candidates=cfg.candidates,
                                  generator=self.generator)

    def evaluate(self, epoch: int):
        cfg = self.cfg
        reuse = self._fixed and self.ema is None and self.bank.index is not None  # nothing moved: the
        self._eval_index = self.bank.index if reuse else self._new_index()  # bank's index is the one to build
        with _diverged_features("of the evaluation pass (the epoch's steps diverged)"):
            logp, graph, self._eval_feats = evaluate_full(
                self.model, self.images, fixed=self._fixed, chunk_size=cfg.chunk_size, bank_chunk=cfg.bank_chunk,
                batch_size=cfg.embed_batch_size, device=self.device,
                features=self.bank.features if self._fixed and self.ema is None else None,
                num_workers=cfg.num_workers, index=self._eval_index, candidates=cfg.candidates)
        return logp, graph

    def end_epoch(self, epoch: int, evaluated) -> None:
        """Refresh the bank every ``bank_refresh`` epochs (from the evaluation's pass when there was one)."""
        cfg, bank = self.cfg, self.bank
        self._measure_recall(epoch)
        refresh = cfg.bank_refresh > 0 and epoch % cfg.bank_refresh == 0
        if evaluated is not None and refresh and self.ema is None:
            bank.features.copy_(self._eval_feats.to(bank.dtype))
            if self._eval_index is not None:  # built on these very features by the evaluation
                self._eval_index.keys = bank.features
                bank.index = self._eval_index
                self._recall_built = self._recall()
            if cfg.cache_neighbours:
                bank.neighbours = evaluated[1].indices.clone()
        self._eval_feats, self._eval_index = None, None
        if refresh and (self.ema is not None or evaluated is None):
            bank.features.copy_(self._embed().to(bank.dtype))
            self._build_index()
            if cfg.cache_neighbours:
                bank.fill_neighbours(self.model.k, cfg.chunk_size, cfg.bank_chunk)

    def postfix(self, t_step: float) -> dict:
        return {"img_s": f"{self.n / max(t_step, 1e-12):.0f}"}

    def timings(self, history) -> dict:
        h = len(history)
        run_steps = sum(history.time_step) if h else float("nan")
        return {"search": self.t_search,
                "images_per_s": float(self.n * h / max(run_steps, 1e-12)) if h else float("nan"),
                "peak_memory_bytes": peak_memory_bytes(self.device), "bank_bytes": int(self.bank.nbytes),
                "index": self.index_kind, "index_recall": [list(r) for r in self.recall]}

    def finish(self, result: TrainResult) -> TrainResult:
        result.bank = self.bank
        result.steps = [dict(zip(("epoch", "batch_size", "labelled", "nodes", "hop1", "hop2"), r)) for r in self.steps]
        return result


def train_minibatch(model: EndToEnd, images, labels: torch.Tensor, train_mask: torch.Tensor,
                    val_mask: torch.Tensor | None = None, test_mask: torch.Tensor | None = None, *,
                    batch_size: int, epochs: int = 100, mode: str | None = None, warmup_epochs: int = 0,
                    lr_backbone: float = 1e-4, lr_gcn: float = 1e-2, weight_decay: float = 5e-4,
                    seed: int = 0, device: str | torch.device = "auto", bank_refresh: int = 1,
                    bank_momentum: float | None = None, eval_every: int = 1, chunk_size: int = 4096,
                    bank_chunk: int | None = None, cache_neighbours: bool = False,
                    embed_batch_size: int = 512, deterministic: bool | None = None,
                    max_grad_norm: float | None = None, progress: bool | None = False,
                    callback=None, checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 1,
                    resume: bool = False, analysis_labels: torch.Tensor | None = None,
                    extra_config: dict | None = None, num_workers: int = 0, index: str = "exact",
                    candidates: int | None = None) -> TrainResult:
    r"""Train an :class:`~bgcn.model.EndToEnd` in mini-batches over a feature bank.

    Each epoch draws :func:`stratified_batches` (every batch holds labelled nodes; a CPU
    generator seeded with ``seed``), and for each batch takes one AdamW step on
    :func:`minibatch_loss` (learning rate ``lr_backbone`` for the backbone, ``lr_gcn`` for the
    rest, as :func:`bgcn.train.train`). The bank is filled once before training; each step writes
    its batch's fresh features into it; every ``bank_refresh`` epochs (0: never) it is refilled by
    a full no-grad pass (free when the epoch is evaluated: the evaluation's pass is that fill).
    ``bank_momentum=m`` keeps the bank from an EMA copy of the backbone instead
    (:func:`bgcn.bank.ema_backbone`, MoCo-style: after each step
    :math:`\theta_\text{ema} \leftarrow m\theta_\text{ema} + (1-m)\theta` and the batch's rows are
    rewritten from it); the step's graph weights still use the fresh features, and the step is
    then no longer the exact full-graph step (the bank's batch rows are EMA features).

    With ``batch_size >= N`` one batch holds every node and the run equals
    :func:`bgcn.train.train` with the same settings (losses, gradients, accuracies; float64).

    Estimators: ``"hard"``, ``"masked_softmax"``, ``"values"`` (weights from the k kept
    similarities) and seed 000's ``"softmax"``, whose normaliser runs over the whole row of N:
    each row's log-sum-exp is computed against the bank (the batch's columns fresh, with
    gradient; :func:`bgcn.bank.computation_subgraph`), exact but one more pass over the bank per
    subgraph row; ``"masked_softmax"`` (the same weights renormalised over the k kept ones) is the
    cheap choice. The selection estimators of chapter 09 (``ste``, ``identity``, ``blackbox``,
    ``imle``, ``sigmoid``, ``capped_simplex``, ``gumbel_reinforce``) need ``candidates=k′``
    (k < k′ ≤ N − 1, e.g. 3k-4k): each batch row keeps its k′ most similar bank rows (the bank's
    index, under no_grad), the estimator runs on the fresh similarities to them, and every
    candidate is an edge weighted by the estimator's mask (:func:`bgcn.bank.candidate_subgraph`:
    what is exact, what is approximated); the evaluation builds the same graph for every row.
    With k′ = N − 1 and ``batch_size >= N`` the run is :func:`bgcn.train.train`'s dense path.
    ``gumbel_reinforce`` adds the score-function surrogate over each batch's labelled rows with
    the full-batch default (``reinforce_reward="node"``, leave-one-out baseline; one process only);
    its noise, and I-MLE's, is drawn from the run's generator. Without ``candidates`` a selection
    estimator is refused.

    ``epochs``, ``warmup_epochs``, ``mode``, ``seed``, ``device``, ``deterministic`` and
    ``max_grad_norm`` mean what they mean in :func:`bgcn.train.train`; the warm-up and the frozen
    mode train the GCN on the bank's initial features and hard graph. Evaluation
    (:func:`evaluate_full`, every ``eval_every`` epochs and at the last) records accuracies on the
    full graph (NaN in the epochs between); model selection (best validation, joint epochs only)
    sees the evaluated epochs. The learning rates may be 0 (a probe of the bank). ``chunk_size``
    × ``bank_chunk`` (``None``: N) is the largest similarity block of a search
    (:meth:`FeatureBank.search`); ``embed_batch_size`` the images per no-grad backbone pass.
    ``cache_neighbours=True`` keeps every node's neighbour list in the bank (N·k longs, refreshed
    with it; a batch rewrites its own rows) and reads the out-of-batch rows from it instead of
    searching them: about k times fewer queries a step, the lists as stale as the bank
    (:meth:`FeatureBank.fill_neighbours`).
    ``index``: the bank's neighbour index (:mod:`bgcn.index`): ``"exact"`` (the chunked exact
    search, the reference), ``"ivf"`` / ``"hnsw"`` / ``"flat"`` (FAISS proposes candidates, re-ranked
    exactly against the current rows; built with every bank fill, i.e. once an epoch) or
    ``"auto"`` (:func:`bgcn.index.resolve_index_kind`: the torch search below
    :data:`bgcn.index.FLAT_FROM` images, FAISS's flat scan below :data:`bgcn.index.APPROXIMATE_FROM`,
    the inverted file above). With a FAISS index, ``result.timings["index_recall"]`` holds per epoch
    ``[epoch, recall when built, recall after the steps]``: recall@k of the bank's search against
    the exact one on 512 fixed rows, when the index was built (the approximation) and after the
    epoch's steps had rewritten the bank (the approximation and the staleness together).

    ``images`` may be a float tensor, a uint8 tensor (kept as uint8, each batch divided by 255:
    a quarter of the memory) or an image source read lazily (:class:`bgcn.data.ImageSource`):
    nothing needs all images as one float tensor. ``num_workers`` decodes a source's images in
    ``DataLoader`` workers for the full no-grad passes (bank fills, evaluations).

    **Checkpoints.** ``checkpoint=path`` writes the whole run state (model, optimizer, the bank,
    the EMA copy, every random state, history, best model) atomically every
    ``checkpoint_every`` epochs and at the end; ``resume=True`` continues from it and on the CPU
    reaches exactly the uninterrupted run's result. Only ``epochs``, ``device``,
    ``checkpoint_every``, ``world_size`` and ``num_workers`` may change between a run and its
    resume (more ``epochs``: exact when the first run's last epoch is one the longer run
    evaluates too, see :func:`bgcn.train.train`'s ``eval_every``).

    **Settings** are checked once, by the :class:`~bgcn.config.TrainConfig` built from the keyword
    arguments; the loop (model selection, resume, divergence, history) is the one
    :func:`bgcn.train.train` shares (:func:`bgcn.train.run`), around :class:`MinibatchEngine`'s
    steps and evaluations. Images with NaN/Inf are refused as on the full-batch engine
    (:class:`~bgcn.train.NonFiniteImages`, a ``ValueError``; an image source's when its features
    are first computed); a checkpoint without its optimizer state or bank, or with tensors of
    another shape, is a one-line ``ValueError`` naming the file.

    **Several processes.** Under ``torchrun`` (``bgcn.distributed.init_distributed`` called
    first) every rank draws the same global batches, embeds its shard of each one through the
    backbone wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, and the fresh
    features are gathered with gradient (:func:`minibatch_loss`); the GCN's gradients are
    all-reduced, the bank is written with the whole gathered batch on every rank (identical
    everywhere), bank fills and evaluations are sharded, and only rank 0 writes the checkpoint.
    The result equals one process with the same global batch (tested, gloo, CPU). A backbone with
    BatchNorm in train mode would see per-shard statistics: use LayerNorm backbones or keep
    BatchNorm in eval mode.

    ``callback(epoch, model, bank)``, if given, is called after each epoch's steps and before its
    evaluation and bank refresh (the bank then holds what the steps left in it: for measuring
    staleness). It must not change the model or the bank. ``analysis_labels`` (N,) fills
    ``history.homophily`` of the evaluated graphs (never used in training).

    Per step there is no host synchronisation apart from what the subgraph's data-dependent
    sizes need: the losses stay on the device and are read once an epoch (a NaN/Inf is then
    reported as :class:`~bgcn.train.TrainingDiverged`, the last checkpoint intact).

    Returns:
        :class:`bgcn.train.TrainResult`; its ``history.loss`` is the epoch's mean NLL over the
        labelled nodes of its batches (weighted by their count). Also ``result.bank`` (the
        :class:`~bgcn.bank.FeatureBank`, for :func:`bgcn.bank.predict`) and ``result.steps``
        (per step: epoch, batch size, labelled nodes, subgraph nodes, hop-1 and hop-2 counts);
        ``result.timings`` holds ``images_per_s`` and ``peak_memory_bytes``.

    Shapes:
        - images: (N, C_in, H, W) (may stay on the CPU; batches are moved); labels, masks: (N,)
        - result.bank.features: (N, D)

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    check_model(model)
    cfg = TrainConfig(mode=default_mode(model, mode), epochs=epochs, warmup_epochs=warmup_epochs,
                      lr_backbone=lr_backbone, lr_gcn=lr_gcn, weight_decay=weight_decay, seed=seed, device=device,
                      batch_size=batch_size, bank_refresh=bank_refresh, bank_momentum=bank_momentum,
                      eval_every=eval_every,
                      chunk_size=chunk_size, bank_chunk=bank_chunk, cache_neighbours=cache_neighbours,
                      embed_batch_size=embed_batch_size, deterministic=deterministic, max_grad_norm=max_grad_norm,
                      progress=progress, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume,
                      num_workers=num_workers, extra=extra_config, index=index, candidates=candidates)
    if cfg.batch_size == 0:
        raise ValueError("batch_size=0 must be a positive int (>= N for one full batch); the full-batch engine is "
                         "bgcn.train.train")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a function callback(epoch, model, bank) or None, got "
                        f"{type(callback).__name__}")
    check_images(images, lazy=True)
    n = len(images)
    check_labels(labels, n)
    check_k(model.k, n, exclude_self=True)
    model.configure(cfg.mode)
    if cfg.candidates is not None:
        check_candidates(cfg.candidates, model.k, n)
        if not is_selection(model.configured_estimator_name):
            raise ValueError(f"candidates={cfg.candidates} applies to the selection estimators "
                             f"{list(selection_names())}; estimator {model.configured_estimator_name!r} keeps its k "
                             f"neighbours without candidates: drop candidates (--candidates)")
    bank_estimator(model, cfg.candidates)  # refuses an estimator the bank cannot compute
    dev = get_device(cfg.device)
    labels = labels.to(dev).long()
    masks = check_masks(model, labels, train_mask, val_mask, test_mask, dev)
    plugins = analysis_plugins(analysis_labels, n) + ([] if callback is None else [_Callback(callback)])
    return train_with(cfg, dev, lambda: MinibatchEngine(model, images, labels, masks, cfg, dev), plugins)
