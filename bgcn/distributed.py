"""Several processes with ``torch.distributed``: the glue between ``torchrun`` and the training loop.

``torchrun --nproc-per-node P -m bgcn train ...`` starts P copies of the program; each reads its
place from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``). Data parallel training of a kNN-graph loss needs four things beyond
:class:`torch.nn.parallel.DistributedDataParallel` (DDP):

1. every rank takes a shard of each global batch (:func:`shard`);
2. the fresh features of the whole global batch are gathered *with* gradient
   (:func:`all_gather_with_grad`), since each rank's loss compares its rows with everyone's rows;
3. the feature bank stays identical on every rank (:func:`sync_bank_rows`, :func:`broadcast_`);
4. only rank 0 writes checkpoints and metrics, the others wait (:func:`main_only`,
   :func:`write_if_main`).

Every function works unchanged in one process (no process group): gathers are the identity,
barriers and broadcasts do nothing, rank 0 is the only rank. Nothing here imports the bank or the
mini-batch engine: the bank is passed as a plain ``(N, D)`` tensor.

Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md)
"""
from __future__ import annotations

import datetime
import functools
import os
import warnings
from typing import Any, Callable, Sequence

import torch

from ._checks import check_int, check_number

__all__ = [
    "available",
    "dist_info",
    "init_distributed",
    "is_initialized",
    "is_main",
    "rank_world",
    "barrier",
    "cleanup",
    "shard",
    "all_gather_with_grad",
    "all_gather_rows",
    "sync_bank_rows",
    "broadcast_",
    "main_only",
    "write_if_main",
    "wrap_ddp",
    "unwrap",
]


#: torchrun's variables; RANK and WORLD_SIZE are required together, LOCAL_RANK defaults to RANK
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_RENDEZVOUS_ENV = ("MASTER_ADDR", "MASTER_PORT")


def available() -> bool:
    """Whether this torch build has ``torch.distributed`` at all (some macOS/Windows wheels don't).

    Shapes: none (returns a bool).

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md)
    """
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - builds without distributed
        return False
    return bool(dist.is_available())


def is_initialized() -> bool:
    """Whether a default process group exists (``init_distributed`` or the caller made one).

    Shapes: none (returns a bool).

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md)
    """
    return available() and torch.distributed.is_initialized()


def _env_int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer; launch with "
                         f"torchrun (which sets it) or unset it") from None


def _env_info() -> tuple[int, int, int] | None:
    """(rank, world, local_rank) from torchrun's variables, None if none is set; half-set raises."""
    present = {k: os.environ[k] for k in _ENV if os.environ.get(k, "") != ""}
    if not present:
        return None
    missing = [k for k in ("RANK", "WORLD_SIZE") if k not in present]
    if missing:
        raise ValueError(f"torch.distributed environment is half-set: {', '.join(sorted(present))} "
                         f"set but {', '.join(missing)} missing; launch with torchrun "
                         f"--nproc-per-node P, or unset {', '.join(sorted(present))}")
    rank = _env_int("RANK", present["RANK"])
    world = _env_int("WORLD_SIZE", present["WORLD_SIZE"])
    local = _env_int("LOCAL_RANK", present.get("LOCAL_RANK", str(rank)))
    if world < 1:
        raise ValueError(f"environment variable WORLD_SIZE={world} must be >= 1; launch with "
                         f"torchrun --nproc-per-node P")
    if not 0 <= rank < world:
        raise ValueError(f"environment variable RANK={rank} must lie in [0, WORLD_SIZE={world}); "
                         f"launch with torchrun, which sets both")
    if local < 0:
        raise ValueError(f"environment variable LOCAL_RANK={local} must be >= 0; launch with torchrun")
    return rank, world, local


def dist_info() -> tuple[int, int, int]:
    """This process's place: ``(rank, world_size, local_rank)``.

    From the initialised process group if there is one (``local_rank`` from ``LOCAL_RANK``,
    else the rank), else from torchrun's environment variables ``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, else ``(0, 1, 0)``: one process. A half-set environment (``RANK`` without
    ``WORLD_SIZE``, a non-integer, ``RANK >= WORLD_SIZE``) raises a one-line ``ValueError``.

    Shapes: none (returns three ints).

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md)
    """
    if is_initialized():
        dist = torch.distributed
        rank, world = dist.get_rank(), dist.get_world_size()
        env = os.environ.get("LOCAL_RANK", "")
        local = _env_int("LOCAL_RANK", env) if env != "" else rank
        return rank, world, local
    info = _env_info()
    return info if info is not None else (0, 1, 0)


def _pick_backend(backend: str, device: str | torch.device | None) -> str:
    dist = torch.distributed
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string ('auto', 'gloo' or 'nccl'), got {type(backend).__name__}")
    if backend != "auto":
        return backend
    dev = torch.device(device) if device is not None else None
    want_cuda = torch.cuda.is_available() if dev is None else dev.type == "cuda"
    if want_cuda and dist.is_nccl_available():
        return "nccl"
    if dist.is_gloo_available():
        return "gloo"
    raise RuntimeError("backend='auto' found neither NCCL (with CUDA) nor gloo in this torch build; "
                       "pass backend= one that torch.distributed supports here")


def init_distributed(backend: str = "auto", device: str | torch.device | None = None, *,
                     init_method: str | None = None, rank: int | None = None,
                     world_size: int | None = None, timeout_s: float | None = None
                     ) -> tuple[int, int, int]:
    """Join the process group that ``torchrun`` prepared; return :func:`dist_info`.

    ``backend="auto"`` is NCCL when the training device is CUDA (``device``; when ``None``,
    whether CUDA is available) and gloo otherwise, so ``torchrun ... train --device cpu`` uses gloo
    even on a GPU machine. With NCCL the process's GPU is set to ``cuda:LOCAL_RANK``.

    Idempotent: if a process group exists it is kept. Without torchrun's variables and without
    ``init_method`` nothing is initialised and ``(0, 1, 0)`` is returned (one process). A
    half-set environment raises a one-line ``ValueError``. ``init_method`` / ``rank`` /
    ``world_size`` bypass the environment (``"tcp://127.0.0.1:PORT"``, as the tests do).

    Shapes: none (returns ``(rank, world_size, local_rank)``).

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md)
    """
    if not available():
        raise RuntimeError("torch.distributed is not available in this torch build; run in one "
                           "process (without torchrun) or install a torch with distributed support")
    dist = torch.distributed
    if dist.is_initialized():
        return dist_info()
    if init_method is None:
        info = _env_info()
        if info is None:
            if rank is not None or world_size is not None:
                raise ValueError("rank=/world_size= need init_method= (e.g. 'tcp://127.0.0.1:PORT') "
                                 "or torchrun's environment")
            return 0, 1, 0
        missing = [k for k in _RENDEZVOUS_ENV if os.environ.get(k, "") == ""]
        if missing:
            raise ValueError(f"torch.distributed environment is half-set: RANK/WORLD_SIZE set but "
                             f"{', '.join(missing)} missing; launch with torchrun, or set "
                             f"MASTER_ADDR=127.0.0.1 and MASTER_PORT=<free port>")
        rank_, world_, local = info
        init_method = "env://"
    else:
        if rank is None or world_size is None:
            raise ValueError("init_method= needs rank= and world_size= too (e.g. rank=0, world_size=2)")
        world_size = check_int(world_size, "world_size", 1)
        rank = check_int(rank, "rank", 0, world_size - 1, hint="0 <= rank < world_size")
        rank_, world_, local = rank, world_size, rank
        env = os.environ.get("LOCAL_RANK", "")
        if env != "":
            local = _env_int("LOCAL_RANK", env)
    check_number(timeout_s, "timeout_s", 0, open_min=True, optional=True, hint="seconds")
    name = _pick_backend(backend, device)
    if name == "nccl":
        torch.cuda.set_device(local)
    kwargs: dict[str, Any] = {"backend": name, "init_method": init_method, "rank": rank_,
                              "world_size": world_}
    if timeout_s is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=float(timeout_s))
    dist.init_process_group(**kwargs)
    return dist_info()


def is_main() -> bool:
    """Whether this is rank 0 (always ``True`` in one process).

    Shapes: none (returns a bool).

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md)
    """
    return dist_info()[0] == 0


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group; ``(0, 1)`` without one.

    Unlike :func:`dist_info` it does not read torchrun's variables: the collectives need the
    group, so a run whose group is not initialised is one process (even under torchrun). The
    engines and the embedding loop shard their work with it.

    Shapes: none (returns two ints).

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md)
    """
    if not is_initialized():
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def _world() -> int:
    return rank_world()[1]


def _comm_device(like: torch.Tensor | None = None) -> torch.device:
    """Where small control tensors live: the current GPU for NCCL, else the CPU."""
    if is_initialized() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if like is None else like.device


def barrier() -> None:
    """Wait until every rank gets here; nothing in one process.

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md)
    """
    if _world() > 1:
        dist = torch.distributed
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def cleanup() -> None:
    """Destroy the process group if there is one (call once at the end of a torchrun program).

    Every rank first waits at a barrier, so that no rank tears its group down while another is
    still inside a collective with it (gloo then aborts the process at exit: "terminate called
    without an active exception"). A barrier that fails (a peer already gone) is ignored: the
    group is destroyed anyway.

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md)
    """
    if is_initialized():
        try:
            barrier()
        except Exception:  # noqa: BLE001 - tearing down: a dead peer must not hide the real error
            pass
        torch.distributed.destroy_process_group()


def shard(x: torch.Tensor | Sequence, rank: int | None = None, world_size: int | None = None):
    """This rank's contiguous share of a global batch: ``torch.tensor_split(x, world)[rank]``.

    Shard sizes differ by at most one (``B = 10`` over 4 ranks: 3, 3, 2, 2); concatenating the
    shards in rank order gives ``x`` back, which is the order :func:`all_gather_with_grad` returns.

    Shapes:
        x: (B, ...) -> (b_rank, ...) with sum over ranks of b_rank = B

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md)
    """
    r, w, _ = dist_info()
    r = r if rank is None else rank
    w = w if world_size is None else world_size
    w = check_int(w, "world_size", 1)
    r = check_int(r, "rank", 0, w - 1, hint="0 <= rank < world_size")
    if isinstance(x, torch.Tensor):
        if x.dim() == 0:
            raise ValueError("x must have a batch dimension (shape (B, ...)), got a 0-d tensor")
        return torch.tensor_split(x, w)[r]
    n = len(x)
    lo, hi = r * (n // w) + min(r, n % w), (r + 1) * (n // w) + min(r + 1, n % w)
    return x[lo:hi]


def _gather_sizes(n: int, device: torch.device, group=None) -> list[int]:
    dist = torch.distributed
    w = dist.get_world_size(group)
    mine = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.empty_like(mine) for _ in range(w)]
    dist.all_gather(sizes, mine, group=group)
    return [int(s) for s in torch.cat(sizes).cpu().tolist()]  # one host sync


def _check_rows(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (b, ...), got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError(f"{name} must have a batch dimension (shape (b, ...)), got a 0-d tensor")


def all_gather_with_grad(x: torch.Tensor, group=None, *, equal_sizes: bool = False,
                         return_sizes: bool = False):
    r"""Concatenate every rank's rows, in rank order, *keeping the gradient to every rank's rows*.

    Rank r holds x_r of shape (b_r, D); every rank gets G = [x_0; x_1; ...; x_{W-1}] of shape
    (B, D), B = Σ_r b_r, and computes its own loss L_s(G). The backward of the gather (through
    ``torch.distributed.nn.functional.all_gather``) sends each rank's ∂L_s/∂G back to the owner of
    those rows and sums, so rank r receives

        g_r = Σ_{s=0}^{W-1} ∂L_s/∂x_r,

    the gradient of the *total* loss Σ_s L_s with respect to its own rows. Backpropagated through
    rank r's backbone and averaged by DDP (×1/W), the parameter gradient is ∇_θ (1/W) Σ_s L_s:
    exactly what one process computes for the loss (1/W) Σ_s L_s on the whole global batch.

    The plain ``torch.distributed.all_gather(list, x)`` is *not* differentiable: its outputs are
    constants. Putting the local x_r back into its slot (open_clip's ``gather_with_grad=False``)
    restores only the local term, g_r = ∂L_r/∂x_r, and silently drops Σ_{s≠r} ∂L_s/∂x_r, the
    pull that the other ranks' rows exert on rank r's rows through the kNN graph. Its result
    then depends on the number of processes; this function's does not.

    Unequal batch sizes are allowed: the sizes are exchanged (one tiny all_gather and one host
    sync), every part is padded to max b_r, gathered and un-padded. ``equal_sizes=True`` skips the
    exchange when every rank is known to hold the same b (an unequal call then fails inside the
    collective). ``return_sizes=True`` also returns the list [b_0, ..., b_{W-1}], so rank r's own
    rows are ``G[sum(sizes[:r]) : sum(sizes[:r + 1])]``. One process (or world size 1): the
    identity, ``G is x``.

    Shapes:
        x: (b_r, ...) on each rank -> G: (B, ...), B = Σ_r b_r; same dtype and device as x

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md)
    """
    _check_rows("x", x)
    if not is_initialized() or torch.distributed.get_world_size(group) == 1:
        return (x, [int(x.shape[0])]) if return_sizes else x
    from torch.distributed.nn.functional import all_gather as _all_gather_autograd

    dist = torch.distributed
    w = dist.get_world_size(group)
    if equal_sizes:
        sizes = [int(x.shape[0])] * w
    else:
        sizes = _gather_sizes(int(x.shape[0]), _comm_device(x), group)
    top = max(sizes)
    pad = top - x.shape[0]
    xp = x if pad == 0 else torch.cat([x, x.new_zeros((pad, *x.shape[1:]))], dim=0)
    with warnings.catch_warnings():
        # torch >= 2.10 marks it deprecated in favour of the private _functional_collectives; it
        # is the public, documented autograd gather (open_clip's), so keep it and stay quiet
        warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is "
                                r"deprecated", category=FutureWarning)
        parts = _all_gather_autograd(xp, group=group)
    if top * w != sum(sizes):
        parts = [p[:n] for p, n in zip(parts, sizes)]
    out = torch.cat(list(parts), dim=0)
    return (out, sizes) if return_sizes else out


def all_gather_rows(*tensors: torch.Tensor, group=None) -> tuple[torch.Tensor, ...]:
    """Concatenate every rank's rows of each tensor in rank order, without gradient.

    For what needs no gradient: bank indices and detached features, labels of the global batch.
    Unequal row counts per rank are allowed (as in :func:`all_gather_with_grad`); all tensors of
    one call must have the same row count on a rank. One process: the tensors, detached.

    Shapes:
        each tensor: (b_r, ...) on each rank -> (B, ...), B = Σ_r b_r

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md)
    """
    if not tensors:
        raise ValueError("all_gather_rows needs at least one tensor, e.g. all_gather_rows(indices, feats)")
    for i, t in enumerate(tensors):
        _check_rows(f"tensors[{i}]", t)
    n = int(tensors[0].shape[0])
    if any(int(t.shape[0]) != n for t in tensors):
        raise ValueError(f"all tensors must have the same number of rows on a rank, got "
                         f"{[int(t.shape[0]) for t in tensors]}; gather them in separate calls")
    if not is_initialized() or torch.distributed.get_world_size(group) == 1:
        return tuple(t.detach() for t in tensors)
    dist = torch.distributed
    sizes = _gather_sizes(n, _comm_device(tensors[0]), group)
    top = max(sizes)
    out = []
    for t in tensors:
        t = t.detach().contiguous()
        if top > n:
            t = torch.cat([t, t.new_zeros((top - n, *t.shape[1:]))], dim=0)
        parts = [torch.empty_like(t) for _ in sizes]
        dist.all_gather(parts, t, group=group)
        out.append(torch.cat([p[:m] for p, m in zip(parts, sizes)], dim=0))
    return tuple(out)


@torch.no_grad()
def sync_bank_rows(bank_feats: torch.Tensor, indices: torch.Tensor, feats: torch.Tensor,
                   group=None, *, validate: bool = True) -> torch.Tensor:
    """Write every rank's fresh rows into this rank's bank, so the bank stays identical everywhere.

    Each rank holds a shard of the global batch: bank indices i_r (b_r,) and their fresh,
    detached features f_r (b_r, D). All ranks gather (i, f) = ([i_0; ...; i_{W-1}],
    [f_0; ...; f_{W-1}]) and set

        bank[i_j] = f_j  for j in order, the last write of an index winning,

    which is what one process does with ``bank[i] = f`` over the whole global batch. Duplicates
    are resolved explicitly (last occurrence in rank order), so the result is deterministic on
    every device, unlike an indexed assignment with repeated indices. If the banks were identical
    before (e.g. after :func:`broadcast_`), they are identical after. In place; returns
    ``bank_feats``. ``validate=True`` checks that the indices lie in [0, N) (one host sync).

    Shapes:
        bank_feats: (N, D); indices: (b_r,) long; feats: (b_r, D) -> bank_feats (N, D)

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md)
    """
    if not isinstance(bank_feats, torch.Tensor) or bank_feats.dim() != 2:
        raise ValueError(f"bank_feats must be a 2-d tensor (N, D), got "
                         f"{tuple(bank_feats.shape) if isinstance(bank_feats, torch.Tensor) else type(bank_feats).__name__}; "
                         f"pass the bank's .feats")
    if not isinstance(indices, torch.Tensor) or indices.dim() != 1:
        raise ValueError("indices must be a 1-d tensor of bank rows (b,), e.g. the batch's indices")
    if indices.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"indices must be an integer tensor (torch.long), got {indices.dtype}; "
                        f"use indices.long()")
    if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or feats.shape[0] != indices.shape[0] \
            or feats.shape[1] != bank_feats.shape[1]:
        raise ValueError(f"feats must have shape (b, D) = ({indices.shape[0]}, {bank_feats.shape[1]}) "
                         f"to match indices and the bank, got "
                         f"{tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__}")
    idx = indices.to(device=bank_feats.device, dtype=torch.long)
    f = feats.detach().to(device=bank_feats.device, dtype=bank_feats.dtype)
    idx, f = all_gather_rows(idx, f, group=group)
    if idx.numel() == 0:
        return bank_feats
    if validate:
        lo, hi = torch.aminmax(idx)
        lo, hi = int(lo), int(hi)
        n = bank_feats.shape[0]
        if lo < 0 or hi >= n:
            raise ValueError(f"indices must lie in [0, N={n}) of the bank, got values in [{lo}, {hi}]")
    uniq, inverse = torch.unique(idx, return_inverse=True)
    pos = torch.arange(idx.numel(), device=idx.device)
    last = torch.full((uniq.numel(),), -1, dtype=torch.long, device=idx.device)
    last.scatter_reduce_(0, inverse, pos, reduce="amax")
    bank_feats[uniq] = f[last]
    return bank_feats


def broadcast_(tensor: torch.Tensor, src: int = 0, group=None) -> torch.Tensor:
    """Overwrite ``tensor`` on every rank with rank ``src``'s copy (in place; returns it).

    Used once after filling the bank (every rank filled it, rank 0's copy becomes everyone's) and
    to share anything drawn at random on one rank. One process: nothing.

    Shapes: tensor: any shape, same on every rank -> same tensor

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md)
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    w = _world() if group is None else (torch.distributed.get_world_size(group) if is_initialized() else 1)
    src = check_int(src, "src", 0, w - 1, hint=f"a rank in [0, {w})")
    if w > 1:
        if tensor.is_contiguous():
            torch.distributed.broadcast(tensor, src=src, group=group)
        else:
            tmp = tensor.contiguous()
            torch.distributed.broadcast(tmp, src=src, group=group)
            tensor.copy_(tmp)
    return tensor


def _status_from_main(ok: bool) -> bool:
    """Rank 0 tells everyone whether its write succeeded; the others block until it does."""
    flag = torch.tensor([1 if ok else 0], dtype=torch.long, device=_comm_device())
    torch.distributed.broadcast(flag, src=0)
    return bool(int(flag.item()))


def main_only(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: run ``fn`` on rank 0 only; every other rank waits for it, then gets ``None``.

    The wait is a broadcast of rank 0's success flag (a barrier that carries one bit), so when
    any rank returns, rank 0's ``fn`` has finished: a file it wrote exists. If ``fn`` raises on
    rank 0, rank 0 re-raises it and the others raise ``RuntimeError`` instead of hanging at a
    barrier. One process: ``fn`` runs.

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md)
    """
    if not callable(fn):
        raise TypeError(f"main_only needs a callable, got {type(fn).__name__}")

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _world() == 1:
            return fn(*args, **kwargs)
        if is_main():
            try:
                out = fn(*args, **kwargs)
            except BaseException:
                _status_from_main(False)
                raise
            _status_from_main(True)
            return out
        if not _status_from_main(False):
            raise RuntimeError(f"{getattr(fn, '__name__', 'fn')} failed on rank 0 (see rank 0's "
                               f"traceback); this rank stops too")
        return None

    return wrapper


def write_if_main(path: str | os.PathLike, writer: Callable[[str | os.PathLike], Any]) -> Any:
    """``writer(path)`` on rank 0 only (a checkpoint, ``metrics.json``); the others wait for it.

    E.g. ``write_if_main(out / "ckpt.pt", lambda p: torch.save(state, p))``. Returns the
    writer's result on rank 0 and ``None`` elsewhere; see :func:`main_only` for errors.

    Shapes: none.

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md)
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if not callable(writer):
        raise TypeError(f"writer must be a callable taking the path, got {type(writer).__name__}")
    return main_only(writer)(path)


def wrap_ddp(model: torch.nn.Module, device: str | torch.device | None = None, **ddp_kwargs):
    """``DistributedDataParallel(model)`` when there are several ranks, ``model`` otherwise.

    On CUDA the module is bound to its device (``device_ids=[device]``); on the CPU (gloo) no
    device ids. DDP broadcasts rank 0's parameters at construction and averages the gradients,
    (1/W) Σ_r ∇_θ L_r, during ``backward``.

    Shapes: none (returns a module).

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md)
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if _world() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    dev = torch.device(device) if device is not None else next(model.parameters()).device
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        return DistributedDataParallel(model, device_ids=[idx], output_device=idx, **ddp_kwargs)
    return DistributedDataParallel(model, **ddp_kwargs)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP (``model.module``), or ``model`` itself: what a checkpoint saves.

    Shapes: none (returns a module).

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md)
    """
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model
