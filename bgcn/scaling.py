r"""Scaling the differentiable kNN graph to many images: memory accounting and chunked normalisers.

Two facts drive this module (chapter 10):

* Seed 000's recipe builds the full :math:`N\times N` similarity matrix *with autograd*, so every
  saved :math:`N\times N` intermediate costs :math:`4N^2` bytes in float32 (1.6 GB at N = 20 000).
* Exact kNN *indices* carry no gradient (chapter 02), so they can be found chunk by chunk under
  ``no_grad`` (:func:`bgcn.knn_indices`), and only the :math:`N\cdot k` similarity *values* need
  autograd: :math:`O(NkD)` memory (:func:`bgcn.knn_graph` with ``chunk_size``).

What is left is seed 000's *global* softmax normaliser :math:`\sum_{l} \exp(S_{il}/\tau)`, which
touches all N entries of every row. :func:`chunked_logsumexp` computes it block by block under
activation checkpointing, so neither the forward nor the backward pass ever holds more than one
``chunk_size × N`` block: :func:`chunked_soft_topk` returns exactly the weights and gradients of
:func:`bgcn.soft_topk` at :math:`O(N\cdot\text{chunk} + NkD)` memory.

:func:`saved_tensor_bytes` measures what autograd keeps for the backward pass (exact and
deterministic, on any device); :func:`memory_model` predicts it from N, D, k.

Taught in: chapter 10 (chapters/10_scaling_1_memory.md and chapters/10_scaling_2_measured.md).
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from .similarity import gather_similarities, knn_indices, normalize_rows
from .topk import row_weights
from ._checks import check_bool, check_int, check_k, check_positive, check_tau, check_tensor

__all__ = ["saved_tensor_bytes", "peak_memory", "memory_model", "neighbour_similarities", "chunked_logsumexp", "chunked_soft_topk",
           "similarity_logsumexp"]

_METHODS = ("dense_softmax", "chunked_masked_softmax", "chunked_softmax")


def saved_tensor_bytes(fn: Callable[..., Any], *args, **kwargs) -> tuple[Any, int]:
    r"""Run ``fn(*args, **kwargs)`` and count the bytes autograd saves for the backward pass.

    Every tensor that an operation stores for its backward goes through
    :func:`torch.autograd.graph.saved_tensors_hooks`; this function records the storage of each
    (counted once, however many views of it are saved) and returns the total,
    :math:`\sum_{\text{storages}} \text{nbytes}`. Tensors recomputed by activation checkpointing are
    not saved and are not counted. Temporaries that are freed during the forward pass are not
    counted either, so the *peak* memory of a forward+backward is larger (benchmarks/bench_knn.py
    measures it); the saved bytes are the part that grows with the graph built for backward.

    Returns:
        ``(result, nbytes)``: the return value of ``fn`` and the saved bytes (int).

    Shapes: any.

    Taught in: chapter 10 (chapters/10_scaling_1_memory.md).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    seen: dict[tuple[str, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            st = t.untyped_storage()
            key = (str(t.device), st.data_ptr())
            seen[key] = max(seen.get(key, 0), st.nbytes())
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. some wrappers)
            seen[("other", id(t))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args, **kwargs)
    return out, int(sum(seen.values()))


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as fh:
        m = re.search(key + r":\s+(\d+)\s*kB", fh.read())
    if m is None:
        raise OSError(f"{key} not in /proc/self/status")
    return int(m.group(1)) * 1024


_MALLOC_TAMED = False


def _reset_cpu_peak() -> bool:
    global _MALLOC_TAMED
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        if not _MALLOC_TAMED:
            # glibc raises its mmap threshold after each large free (up to 32 MiB), after which freed
            # tensor blocks stay in the heap and the resident size no longer follows the live tensors.
            # A fixed 1 MiB threshold (M_MMAP_THRESHOLD = -3) hands every large block back on free.
            libc.mallopt(-3, 1 << 20)
            _MALLOC_TAMED = True
        libc.malloc_trim(0)  # return freed heap pages to the OS, so that reusing them shows up as a rise
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as fh:   # "5" resets the peak RSS (VmHWM), Linux >= 4.0
            fh.write("5")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[..., Any], *args, device: str | torch.device | None = None, **kwargs) -> tuple[Any, int | None]:
    r"""Run ``fn(*args, **kwargs)`` and return ``(result, peak_bytes)``: the peak *extra* memory it used.

    .. math:: M_\text{peak} = \max_t M(t) - M(t_0)

    * CUDA (``device`` a CUDA device, or ``None`` and CUDA in use): ``torch.cuda.max_memory_allocated``
      after ``torch.cuda.reset_peak_memory_stats``, minus what was allocated before; tensors only.
    * CPU (Linux): the process's peak resident set size ``VmHWM`` from ``/proc/self/status`` after
      resetting it through ``/proc/self/clear_refs``, minus the resident size before. So that the
      resident size follows the live tensors, the first call fixes glibc's mmap threshold at 1 MiB
      (``mallopt``; blocks above it are returned to the OS when freed — a process-wide setting) and
      every call runs ``malloc_trim`` first. This counts
      every byte the process touched (tensors, allocator slack, Python objects), so it is
      noisier than the CUDA figure; run it on an otherwise idle process. ``peak_bytes`` is ``None``
      where the kernel offers no such counters (not Linux, or a restricted ``/proc``).

    Shapes: any.

    Taught in: chapter 10 (chapters/10_scaling_2_measured.md).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        out = fn(*args, **kwargs)
        torch.cuda.synchronize(dev)
        return out, int(torch.cuda.max_memory_allocated(dev) - before)
    ok = os.path.exists("/proc/self/status") and _reset_cpu_peak()
    if not ok:
        return fn(*args, **kwargs), None
    before = _proc_status_bytes("VmRSS")
    out = fn(*args, **kwargs)
    return out, max(0, _proc_status_bytes("VmHWM") - before)


def memory_model(n: int, d: int, k: int, method: str = "dense_softmax", *, chunk_size: int = 1024,
                 bytes_per_float: int = 4) -> dict[str, float]:
    r"""Predicted memory (bytes) of building a differentiable kNN graph for N images.

    ``b`` = ``bytes_per_float`` (4 for float32, 8 for float64), c = ``min(chunk_size, N)``; indices
    are int64 (8 bytes). Every method saves the features and their unit-norm copy
    (:math:`2bND`), the neighbour indices (:math:`8Nk`) and two norms per row (:math:`2bN`).
    On top of that:

    * ``"dense_softmax"`` (seed 000; :func:`bgcn.knn_graph` with ``estimator="softmax"``): the
      softmax output :math:`w` and the boolean diagonal mask,

      .. math:: M_\text{saved} = (b+1)N^2 + 2bND + 8Nk + 2bN;

      the forward pass also holds :math:`S`, :math:`S/\tau` and the masked copy, and the backward
      pass builds :math:`N\times N` gradients: ``transient`` :math:`= 3bN^2`.
    * ``"chunked_masked_softmax"`` (:func:`bgcn.knn_graph` with ``chunk_size``): the gathered
      neighbour features and the k weights,

      .. math:: M_\text{saved} = bNkD + 2bND + (8+b)Nk + 2bN;

      ``transient`` :math:`= \max(3bcN,\ 2bNkD)` (a search block and its top-k work space; the
      gradients of the product and of the gathered features in the backward pass).
    * ``"chunked_softmax"`` (:func:`chunked_soft_topk` with checkpointing): no :math:`NkD` term,

      .. math:: M_\text{saved} = 2bND + (8+b)Nk + 2bN;

      ``transient`` :math:`= 5bcN` (a recomputed block, its scaled and masked copies, its
      exponentials and their gradient).

    ``saved`` is exact (checked against :func:`saved_tensor_bytes` in the tests); ``peak = saved +
    transient`` is an estimate of the largest extra memory during forward + backward, calibrated
    against :func:`peak_memory` on CPU (benchmarks/bench_knn.py; within about 10 % for the dense
    method, and a few MB of allocator overhead on top for the chunked ones).

    Returns:
        dict with keys ``"saved"``, ``"transient"``, ``"peak"`` (bytes, float).

    Shapes: scalars only.

    Taught in: chapter 10 (chapters/10_scaling_1_memory.md).
    """
    n, d, k = (check_int(v, name, 1) for name, v in (("n", n), ("d", d), ("k", k)))
    if method not in _METHODS:
        raise ValueError(f"method={method!r} is not modelled; choose one of {list(_METHODS)}")
    b = int(check_positive(bytes_per_float, "bytes_per_float"))
    c = min(check_int(chunk_size, "chunk_size", 1, hint="rows per block"), n)
    common = 2 * b * n * d + 8 * n * k + 2 * b * n
    if method == "dense_softmax":
        saved = (b + 1) * n * n + common
        transient = 3 * b * n * n
    elif method == "chunked_masked_softmax":
        saved = b * n * k * d + common + b * n * k
        transient = max(3 * b * c * n, 2 * b * n * k * d)
    else:
        saved = common + b * n * k
        transient = 5 * b * c * n
    return {"saved": float(saved), "transient": float(transient), "peak": float(saved + transient)}


def _lse_block(q: torch.Tensor, keys: torch.Tensor, tau: float, excl: torch.Tensor | None, normalize_keys: bool,
               diag: int | None = None) -> torch.Tensor:
    """log-sum-exp of one (rows, key block) block of similarities / tau. ``excl[r] >= 0`` masks column
    excl[r]; ``diag`` (an int, no tensor to keep for the backward) masks column r + diag of row r."""
    kn = normalize_rows(keys) if normalize_keys else keys
    s = (q @ kn.T) / tau                                         # (rows, key block)
    if diag is not None:
        rows = torch.arange(s.shape[0], device=s.device)
        cols = rows + diag
        ok = (cols >= 0) & (cols < s.shape[1])
        if bool(ok.any()):
            mask = torch.zeros(s.shape, dtype=torch.bool, device=s.device)
            mask[rows[ok], cols[ok]] = True
            s = s.masked_fill(mask, float("-inf"))
    elif excl is not None:
        hit = excl >= 0
        if bool(hit.any()):
            mask = torch.zeros(s.shape, dtype=torch.bool, device=s.device)
            mask[torch.nonzero(hit).flatten(), excl[hit]] = True
            s = s.masked_fill(mask, float("-inf"))
    return torch.logsumexp(s, dim=1)


def similarity_logsumexp(query: torch.Tensor, keys: torch.Tensor, tau: float, *, exclude: torch.Tensor | str | None = None,
                         chunk_size: int = 1024, key_chunk: int | None = None, checkpoint: bool = True,
                         normalize_keys: bool = False) -> torch.Tensor:
    r"""Row log-normalisers against every key, block by block: :math:`\ell_r = \log\sum_{l\ne e_r}\exp(\hat q_r\cdot\hat g_l/\tau)`.

    The one chunked log-sum-exp of the library (:func:`chunked_logsumexp`, :func:`chunked_soft_topk`
    and the bank's seed-000 softmax, :func:`bgcn.bank.computation_subgraph`). Query rows are taken
    ``chunk_size`` at a time against ``key_chunk`` keys at a time (all M with ``None``), and the
    blocks' log-sum-exps are combined by a log-sum-exp. With ``checkpoint=True`` (and a query or
    key that requires grad) each block runs under :func:`torch.utils.checkpoint.checkpoint`: only
    its inputs are kept and its similarities are recomputed in the backward pass, so no more than
    one block exists at any moment.

    Args:
        query: (Q, D) unit-norm query rows (:func:`bgcn.normalize_rows`), may require grad.
        keys: (M, D) key rows: unit-norm, or raw with ``normalize_keys=True`` (normalised a block
            at a time, inside the checkpoint).
        tau: temperature τ > 0 (checked by the caller).
        exclude: (Q,) long, the key id left out of row r's sum (itself); ``"self"`` when query and keys
            are the same rows (row r leaves out key r, with no index tensor kept for the backward);
            or ``None``.
        chunk_size, key_chunk: block sizes (checked by the caller).

    Shapes:
        - query: (Q, D), keys: (M, D), exclude: (Q,) or None
        - output: (Q,)

    Taught in: chapter 10 (chapters/10_scaling_1_memory.md); over a bank in chapter 11.
    """
    n = keys.shape[0]
    bc = n if key_chunk is None else int(key_chunk)
    use_ckpt = checkpoint and torch.is_grad_enabled() and (query.requires_grad or keys.requires_grad)
    out = []
    for start in range(0, query.shape[0], chunk_size):
        stop = min(start + chunk_size, query.shape[0])
        parts = []
        for c0 in range(0, n, bc):
            c1 = min(c0 + bc, n)
            if isinstance(exclude, str):  # "self": row r leaves out key r (query and keys are the same rows)
                excl, diag = None, start - c0
            elif exclude is None:
                excl, diag = None, None
            else:
                e = exclude[start:stop]
                excl, diag = torch.where((e >= c0) & (e < c1), e - c0, torch.full_like(e, -1)), None
            args = (query[start:stop], keys[c0:c1], tau, excl, normalize_keys, diag)
            parts.append(_checkpoint(_lse_block, *args, use_reentrant=False) if use_ckpt else _lse_block(*args))
        out.append(parts[0] if len(parts) == 1 else torch.logsumexp(torch.stack(parts, 1), dim=1))
    return torch.cat(out) if out else query.new_zeros(0)


def _lse_from_unit_rows(fhat: torch.Tensor, tau: float, exclude_self: bool, chunk_size: int, checkpoint: bool) -> torch.Tensor:
    return similarity_logsumexp(fhat, fhat, tau, exclude="self" if exclude_self else None, chunk_size=chunk_size, checkpoint=checkpoint)


def neighbour_similarities(fhat: torch.Tensor, indices: torch.Tensor, *, chunk_size: int = 1024,
                           checkpoint: bool = True) -> torch.Tensor:
    r"""The k similarities per row, :math:`S_{i,\mathcal N_k(i)_m} = \hat f_i \cdot \hat f_{\mathcal N_k(i)_m}`, with autograd.

    .. math::
        V_{im} = \sum_{d=1}^{D} \hat F_{i d}\, \hat F_{\,\mathcal N_k(i)_m,\, d}

    Plain autograd (``checkpoint=False``, what :func:`bgcn.knn_graph` does with ``chunk_size``)
    saves the gathered neighbour features :math:`\hat F[\mathcal N]` for the backward pass:
    :math:`N k D` floats. With ``checkpoint=True`` the rows are processed ``chunk_size`` at a time
    under :func:`torch.utils.checkpoint.checkpoint`: only :math:`\hat F` (N·D, needed anyway) and
    the indices are kept, and each block's gather is redone in the backward pass, so the autograd
    memory drops from :math:`O(NkD)` to :math:`O(ND + Nk)` at the price of a second gather.

    Args:
        fhat: unit-norm features :math:`\hat F` (N, D) (e.g. :func:`bgcn.normalize_rows`), may require grad.
        indices: (N, k) long, the neighbours of each row (e.g. :func:`bgcn.knn_indices`).

    Shapes:
        - fhat: (N, D), indices: (N, k)
        - output: (N, k)

    Taught in: chapter 10 (chapters/10_scaling_1_memory.md).
    """
    check_tensor(fhat, "fhat", ndim=2)
    if not isinstance(indices, torch.Tensor) or indices.dim() != 2 or indices.shape[0] != fhat.shape[0]:
        raise ValueError(f"indices must be an (N, k) = ({fhat.shape[0]}, k) long tensor, got "
                         f"{tuple(indices.shape) if isinstance(indices, torch.Tensor) else type(indices).__name__}")
    if indices.dtype != torch.long:
        raise TypeError(f"indices must be a long tensor, got {indices.dtype}; call .long()")
    n = fhat.shape[0]
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n):
        raise ValueError(f"indices must lie in [0, N-1] = [0, {n - 1}]; got values in "
                         f"[{int(indices.min())}, {int(indices.max())}]")
    chunk_size = check_int(chunk_size, "chunk_size", 1, hint="rows per block")
    checkpoint = check_bool(checkpoint, "checkpoint")
    use_ckpt = checkpoint and torch.is_grad_enabled() and fhat.requires_grad
    if not use_ckpt:
        return gather_similarities(fhat, fhat, indices)
    parts = []
    for start in range(0, fhat.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        parts.append(_checkpoint(gather_similarities, fhat[sl], fhat, indices[sl], use_reentrant=False))
    return torch.cat(parts)


def chunked_logsumexp(features: torch.Tensor, tau: float = 1.0, *, exclude_self: bool = True,
                      chunk_size: int = 1024, checkpoint: bool = True) -> torch.Tensor:
    r"""Row log-normalisers of seed 000's softmax, block by block: :math:`\ell_i = \log\sum_{l} \exp(S_{il}/\tau)`.

    .. math::
        \ell_i = \log \sum_{l \ne i} \exp\!\big(\hat f_i\cdot \hat f_l / \tau\big),
        \qquad \frac{\partial \ell_i}{\partial S_{il}} = \frac{w_{il}}{\tau}

    (the sum runs over :math:`l \ne i` when ``exclude_self``). Rows are processed ``chunk_size`` at
    a time; with ``checkpoint=True`` (and autograd on) each block runs under
    :func:`torch.utils.checkpoint.checkpoint`, which keeps only its inputs and recomputes the
    ``chunk × N`` similarities in the backward pass, so the memory is :math:`O(\text{chunk}\cdot N)`
    at every moment instead of :math:`O(N^2)`. With ``checkpoint=False`` every block's
    similarities are saved for backward (:math:`N^2` again) — the point of the comparison in
    chapter 10. The log-sum-exp is computed stably (max subtracted).

    Args:
        features: :math:`F`, (N, D), may require grad (normalised to unit rows inside).
        tau: temperature τ > 0.
        exclude_self: leave the diagonal :math:`S_{ii}=1` out of the sum.
        chunk_size: rows per block.
        checkpoint: recompute the blocks in backward instead of storing them.

    Shapes:
        - features: (N, D)
        - output: (N,)

    Taught in: chapter 10 (chapters/10_scaling_1_memory.md).
    """
    check_tensor(features, "features", ndim=2)
    tau = check_tau(tau)
    chunk_size = check_int(chunk_size, "chunk_size", 1, hint="rows per block")
    checkpoint = check_bool(checkpoint, "checkpoint")
    if exclude_self and features.shape[0] < 2:
        raise ValueError("exclude_self=True needs N >= 2 rows (a single row has nothing left to sum)")
    return _lse_from_unit_rows(normalize_rows(features), tau, exclude_self, chunk_size, checkpoint)


def chunked_soft_topk(features: torch.Tensor, k: int, tau: float = 1.0, *, exclude_self: bool = True,
                      chunk_size: int = 1024, checkpoint: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Seed 000's soft top-k (eqs. (8)–(11)) from features, without any :math:`N\times N` autograd tensor.

    .. math::
        \mathcal N_k(i) = \operatorname{topk}(S_i, k)\ \text{(chunked, no grad)},\qquad
        \tilde w_{ij} = \exp\!\big(S_{ij}/\tau - \ell_i\big),\ j\in\mathcal N_k(i)

    with :math:`S_{ij} = \hat f_i\cdot\hat f_j` recomputed with autograd for the k neighbours only
    (:func:`neighbour_similarities`) and :math:`\ell_i` the row log-normaliser of
    :func:`chunked_logsumexp`. The result equals
    ``bgcn.soft_topk(bgcn.cosine_similarity(features), k, tau, exclude_self=exclude_self)`` — values
    and gradients with respect to ``features`` — up to rounding (and the order of tied neighbours).
    With ``checkpoint=True`` autograd keeps :math:`O(ND + Nk)` and the largest temporary is one
    ``chunk_size × N`` block; with ``checkpoint=False`` the blocks are stored (:math:`O(N^2)`).

    Returns:
        ``(weights, indices)``, each (N, k); indices sorted by decreasing similarity.

    Shapes:
        - features: (N, D)
        - weights: (N, k) float, indices: (N, k) long

    Taught in: chapter 10 (chapters/10_scaling_1_memory.md).
    """
    check_tensor(features, "features", ndim=2)
    n = features.shape[0]
    k = check_k(k, n, exclude_self=exclude_self)
    tau = check_tau(tau)
    chunk_size = check_int(chunk_size, "chunk_size", 1, hint="rows per block")
    checkpoint = check_bool(checkpoint, "checkpoint")
    idx = knn_indices(features, k, exclude_self=exclude_self, chunk_size=chunk_size)
    fhat = normalize_rows(features)
    vals = neighbour_similarities(fhat, idx, chunk_size=chunk_size, checkpoint=checkpoint)     # (N, k)
    lse = _lse_from_unit_rows(fhat, tau, exclude_self, chunk_size, checkpoint)                 # (N,)
    return row_weights(vals, "softmax", tau, lse), idx
