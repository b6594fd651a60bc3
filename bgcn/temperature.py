r"""Temperature of the softmax soft top-k: sweeps, the gradient against τ, and a data-driven τ.

Seed 000 (eq. (7), §4.4) recommends τ = 1. On cosine similarities, whose range is [-1, 1], the
softmax over a whole row of N entries is then nearly uniform once N is large: what counts is τ
against the *spread* of a row, and against log N. This module measures that and picks τ from the
data (:func:`suggest_tau`).

Taught in: chapter 05 (chapters/05_temperature_1_weights.md and chapters/05_temperature_2_gradient.md).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .similarity import cosine_similarity
from .topk import effective_neighbours, mask_diagonal, topk_mass
from ._checks import check_int, check_k, check_positive, check_seed, check_tau, check_tensor

__all__ = ["temperature_sweep", "soft_topk_gradient", "gradient_norm_vs_tau", "suggest_tau", "suggest_tau_features",
           "TAU_METHODS"]

#: Methods accepted by :func:`suggest_tau`.
TAU_METHODS = ("mass", "gap", "kth_gap")


def _taus(taus: Sequence[float] | torch.Tensor) -> list[float]:
    if isinstance(taus, torch.Tensor):
        taus = taus.detach().cpu().reshape(-1).tolist()
    try:
        taus = [float(t) for t in taus]
    except TypeError as e:
        raise TypeError(f"taus must be a sequence of numbers, got {type(taus).__name__}") from e
    if not taus:
        raise ValueError("taus is empty; pass at least one temperature, e.g. numpy.logspace(-3, 1, 25)")
    for t in taus:
        check_tau(t, "taus[...]")
    return taus


def _rows(scores: torch.Tensor, exclude_self: bool, rows: int | torch.Tensor | None = None,
          seed: int = 0) -> torch.Tensor:
    """Detached score rows, the diagonal set to -inf when ``exclude_self``, optionally a subset of rows."""
    check_tensor(scores, "scores", ndim=(1, 2))
    s = scores.detach()
    if s.dim() == 1:
        if exclude_self:
            raise ValueError("exclude_self=True needs a 2-D similarity matrix (N, M); a single row has no diagonal")
        if rows is not None:
            raise ValueError("rows=... needs a 2-D similarity matrix (N, M)")
        return s.unsqueeze(0)
    if exclude_self:
        s = mask_diagonal(s)
    if rows is not None:
        if isinstance(rows, torch.Tensor):
            idx = rows.long().reshape(-1)
            if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= s.shape[0]:
                raise ValueError(f"rows must index into the {s.shape[0]} rows of scores")
        else:
            r = check_int(rows, "rows", 1)
            if r >= s.shape[0]:
                return s
            idx = torch.randperm(s.shape[0], generator=torch.Generator().manual_seed(int(seed)))[:r].sort().values
        s = s[idx.to(s.device)]
    return s


def temperature_sweep(scores: torch.Tensor, taus: Sequence[float], k: int = 10,
                      exclude_self: bool = False, rows: int | torch.Tensor | None = None,
                      seed: int = 0) -> dict[str, torch.Tensor]:
    r"""Entropy, effective number of neighbours and top-k mass of :math:`\mathrm{softmax}(S_i/\tau)` for each τ.

    .. math::
        H_i(\tau) = -\sum_j w_{ij}\log w_{ij},\qquad n_{\text{eff}} = e^{H_i},\qquad
        m_k = \sum_{j\in\mathcal N_k(i)} w_{ij}, \qquad w_i = \mathrm{softmax}(S_i/\tau)

    Values are averaged over the rows. ``exclude_self`` drops the diagonal (self-similarity 1)
    from the softmax, as :func:`bgcn.knn_graph` does; a row then has M - 1 candidates. ``rows``
    (an int, drawn with ``seed``, or an index tensor) averages over a subset of rows only, to save
    time; each row still has all its M columns.

    Shapes:
        - scores: (n,) one row, or (N, M)
        - output: dict of (T,) float64 CPU tensors ``tau``, ``entropy``, ``effective``, ``topk_mass``
          (T = len(taus)) and the int ``n`` (candidates per row)

    Taught in: chapter 05 (chapters/05_temperature_1_weights.md).
    """
    taus = _taus(taus)
    s = _rows(scores, exclude_self, rows, seed)
    n = s.shape[-1] - (1 if exclude_self else 0)
    k = check_k(k, n, "k")
    ent, eff, mass = [], [], []
    for t in taus:
        w = torch.softmax(s / t, dim=-1)
        e = -(w * torch.log(w.clamp_min(1e-300 if w.dtype == torch.float64 else 1e-30))).sum(-1)
        ent.append(e.mean())
        eff.append(effective_neighbours(w).mean())
        mass.append(topk_mass(w, k).mean())
    as64 = lambda xs: torch.stack([x.detach().double() for x in xs]).cpu()  # noqa: E731
    return {"tau": torch.tensor(taus, dtype=torch.float64), "entropy": as64(ent),
            "effective": as64(eff), "topk_mass": as64(mass), "n": n}


def soft_topk_gradient(scores: torch.Tensor, upstream: torch.Tensor, k: int, tau: float,
                       exclude_self: bool = False) -> torch.Tensor:
    r"""Closed-form gradient of :math:`L = \sum_{i}\sum_{j\in\mathcal N_k(i)} g_{ij}\,\tilde w_{ij}` with respect to S.

    With :math:`w_i = \mathrm{softmax}(S_i/\tau)` and :math:`\hat g_i` the upstream gradient
    :math:`g_i` scattered onto the k kept columns (zero elsewhere), seed 000 eq. (6) gives

    .. math::
        \frac{\partial L}{\partial S_{il}} = \frac{1}{\tau}\, w_{il}\,\bigl(\hat g_{il} - \langle \hat g_i, w_i\rangle\bigr)

    Every entry l of the row receives gradient (through the normaliser), also the N - k unkept ones.
    For τ → ∞ it behaves like :math:`(\hat g_{il}-\bar g_i)/(N\tau)`; for τ → 0, :math:`w_i` is one-hot
    and the bracket vanishes at the argmax, so the gradient vanishes at both ends.

    Shapes:
        - scores: (N, M); upstream: (N, k)
        - output: (N, M)

    Taught in: chapter 05 (chapters/05_temperature_2_gradient.md).
    """
    check_tensor(scores, "scores", ndim=2)
    check_tensor(upstream, "upstream", ndim=2)
    tau = check_tau(tau)
    k = check_k(k, scores.shape[-1], exclude_self=exclude_self)
    if upstream.shape != (scores.shape[0], k):
        raise ValueError(f"upstream must have shape (N, k) = {(scores.shape[0], k)}, got {tuple(upstream.shape)}")
    s = mask_diagonal(scores) if exclude_self else scores
    w = torch.softmax(s / tau, dim=-1)
    idx = torch.topk(s, k, dim=-1).indices
    g = torch.zeros_like(w).scatter(-1, idx, upstream.to(device=w.device, dtype=w.dtype))
    return w * (g - (g * w).sum(-1, keepdim=True)) / tau


def gradient_norm_vs_tau(scores: torch.Tensor, taus: Sequence[float], k: int = 10, *,
                         upstream: str | torch.Tensor = "random", exclude_self: bool = True,
                         rows: int | torch.Tensor | None = None, seed: int = 0,
                         saturation: float = 0.999) -> dict[str, torch.Tensor]:
    r"""Size of the gradient that reaches S through the gathered soft top-k weights, for each τ.

    For each τ: :math:`\tilde w = ` :func:`bgcn.soft_topk` (S, k, τ), :math:`L = \sum g\odot\tilde w`
    with a fixed upstream gradient g (``"random"``: standard normal drawn with ``seed``;
    ``"ones"``: L is the top-k mass; or a given (R, k) tensor), and ``L.backward()`` by autograd.
    Per row i the norm :math:`\lVert \partial L/\partial S_{i,:}\rVert_2` is taken; returned are
    its mean and median over rows, the share of the squared gradient that lands outside the k
    kept columns (through the softmax normaliser), and the fraction of *saturated* rows, whose
    largest softmax weight exceeds ``saturation`` (there the gradient is ≈ 0).

    ``rows`` (int or index tensor) uses a subset of R rows (each with all M columns) to save time.

    Shapes:
        - scores: (N, M)
        - output: dict of (T,) float64 CPU tensors ``tau``, ``grad_norm`` (mean), ``grad_norm_median``,
          ``outside_share``, ``saturated``

    Taught in: chapter 05 (chapters/05_temperature_2_gradient.md).
    """
    taus = _taus(taus)
    check_tensor(scores, "scores", ndim=2)
    k = check_k(k, scores.shape[-1], exclude_self=exclude_self)
    s0 = _rows(scores, exclude_self, rows, seed)
    n = s0.shape[0]
    if isinstance(upstream, torch.Tensor):
        if upstream.shape != (n, k):
            raise ValueError(f"upstream must have shape (rows, k) = {(n, k)}, got {tuple(upstream.shape)}")
        g = upstream.detach().to(device=s0.device, dtype=s0.dtype)
    elif upstream == "random":
        # drawn on the CPU (the same numbers on every device for a seed), then moved to the scores
        gen = torch.Generator().manual_seed(int(seed))
        g = torch.randn(n, k, generator=gen, dtype=torch.float64).to(device=s0.device, dtype=s0.dtype)
    elif upstream == "ones":
        g = torch.ones(n, k, dtype=s0.dtype, device=s0.device)
    else:
        raise ValueError(f"upstream must be 'random', 'ones' or an (N, k) tensor, got {upstream!r}")
    mean, median, outside, sat = [], [], [], []
    for t in taus:
        s = s0.clone().requires_grad_(True)
        # = bgcn.soft_topk(S, k, t, exclude_self=...) on these rows (the diagonal is already -inf)
        idx = torch.topk(s0, k, dim=-1).indices
        w = torch.softmax(s / t, dim=-1).gather(-1, idx)
        (g * w).sum().backward()
        gr = s.grad
        norms = gr.norm(dim=-1)
        mean.append(norms.mean())
        median.append(norms.median())
        inside = torch.zeros_like(gr, dtype=torch.bool).scatter(-1, idx, True)
        tot = gr.pow(2).sum()
        outside.append(gr[~inside].pow(2).sum() / tot if tot > 0 else torch.zeros((), dtype=gr.dtype, device=gr.device))
        with torch.no_grad():
            sat.append((torch.softmax(s0 / t, dim=-1).max(-1).values > saturation).to(torch.float64).mean())
    as64 = lambda xs: torch.stack([x.detach().double() for x in xs]).cpu()  # noqa: E731
    return {"tau": torch.tensor(taus, dtype=torch.float64), "grad_norm": as64(mean),
            "grad_norm_median": as64(median), "outside_share": as64(outside), "saturated": as64(sat)}


def suggest_tau(similarities: torch.Tensor, k: int, method: str = "mass", target_mass: float = 0.5,
                exclude_self: bool = True, tau_bounds: tuple[float, float] = (1e-4, 1e2),
                rows: int | torch.Tensor | None = None, seed: int = 0) -> float:
    r"""A temperature chosen from the similarities themselves instead of a constant.

    Methods:

    ``"mass"`` (default)
        The τ at which the k nearest neighbours hold, on average over rows, a share ``target_mass``
        of the softmax mass: solve :math:`\overline{m_k}(\tau) = m^\star` by bisection on
        :math:`\log\tau` (the top-k mass of a row decreases monotonically in τ).
    ``"gap"``
        A closed-form approximation of the same: if the k kept scores sat at their mean
        :math:`a_i` and the other N - k at the row mean :math:`b_i`, the top-k mass would be
        :math:`m^\star` at

        .. math:: \tau = \frac{\overline{a_i - b_i}}{\log\bigl(\tfrac{N-k}{k}\cdot\tfrac{m^\star}{1-m^\star}\bigr)}

        (it ignores the spread of the unkept scores, so it overestimates τ for long rows).
    ``"kth_gap"``
        The mean gap between the k-th and (k+1)-th similarity of each row, so that the last kept
        neighbour outweighs the first dropped one by a factor e. This is a scale for the *order* of
        the row, usually far smaller than the others, and it saturates the softmax (chapter 05).

    ``rows`` (int, drawn with ``seed``, or an index tensor) estimates from a subset of rows, each
    with all its columns; the result is returned clipped to ``tau_bounds``.

    Shapes:
        - similarities: (N, M)
        - output: float

    Taught in: chapter 05 (chapters/05_temperature_2_gradient.md).
    """
    check_tensor(similarities, "similarities", ndim=2)
    if method not in TAU_METHODS:
        raise ValueError(f"unknown method={method!r}; valid methods are {list(TAU_METHODS)}")
    target_mass = check_positive(target_mass, "target_mass")
    n = similarities.shape[-1] - (1 if exclude_self else 0)
    k = check_k(k, similarities.shape[-1], exclude_self=exclude_self)
    if k >= n:
        raise ValueError(f"k={k} keeps every candidate; a temperature only matters for k < {n}")
    s = _rows(similarities, exclude_self, rows, seed)
    s = (s.cpu() if s.device.type == "mps" else s).double()   # MPS has no float64
    lo, hi = (check_positive(b, "tau_bounds") for b in tau_bounds)
    if lo >= hi:
        raise ValueError(f"tau_bounds={tau_bounds} must be (low, high) with low < high")
    if method == "kth_gap":
        v = torch.topk(s, k + 1, dim=-1).values
        return float(min(max((v[:, k - 1] - v[:, k]).mean().item(), lo), hi))
    uniform = k / n
    if not (uniform < target_mass < 1.0):
        raise ValueError(f"target_mass={target_mass} must lie between k/N = {uniform:.3g} (uniform) and 1 (one-hot)")
    if method == "gap":
        finite = torch.isfinite(s)
        row_mean = torch.where(finite, s, torch.zeros_like(s)).sum(-1) / finite.sum(-1)
        a = torch.topk(s, k, dim=-1).values.mean(-1)
        gap = (a - row_mean).mean().item()
        tau = gap / math.log((n - k) / k * target_mass / (1 - target_mass))
        return float(min(max(tau, lo), hi))

    top = torch.topk(s, k, dim=-1).values  # the top-k of a softmax are the top-k scores

    def mass(t: float) -> float:  # topk_mass(softmax(s / t), k) without the (rows, N) weights
        return float(torch.exp(torch.logsumexp(top / t, -1) - torch.logsumexp(s / t, -1)).mean())

    a, b = math.log(lo), math.log(hi)
    if mass(lo) < target_mass:
        return lo
    if mass(hi) > target_mass:
        return hi
    for _ in range(50):
        m = 0.5 * (a + b)
        if mass(math.exp(m)) > target_mass:
            a = m
        else:
            b = m
        if b - a < 1e-5:
            break
    return float(math.exp(0.5 * (a + b)))


@torch.no_grad()
def suggest_tau_features(features: torch.Tensor, k: int, method: str = "mass", exclude_self: bool = True,
                         max_rows: int = 2048, seed: int = 0, max_entries: int = 2**22, **kwargs) -> float:
    r""":func:`suggest_tau` from features, without the N×N similarity matrix.

    With N ≤ ``max_rows`` it is exactly ``suggest_tau(cosine_similarity(F), k, ...)``. Above, it
    draws ``max_rows`` rows (``seed``) and uses their similarities to *all* N nodes,
    :math:`S_R = \hat F_R \hat F^	op` (``max_rows`` × N), each row's own column pushed to
    :math:`-10^4` when ``exclude_self`` (a softmax weight of :math:`e^{-10^4/	au}` = 0): the
    same rows, the same estimate as ``suggest_tau(..., rows=R)`` on the full matrix, in
    ``max_rows``·N memory. ``max_entries`` caps that matrix: at most ``max_entries // N`` rows (at
    least 32) are drawn, so that a million images cost 32 rows × N (0.26 GB in float64), not
    2 048 × N (16 GB).

    Shapes: features (N, D) -> float

    Taught in: chapter 05 (chapters/05_temperature_2_gradient.md); used at scale in chapter 11.
    """
    check_tensor(features, "features", ndim=2)
    n = features.shape[0]
    max_rows = check_int(max_rows, "max_rows", 1)
    max_entries = check_int(max_entries, "max_entries", 1)
    if n <= max_rows and n * n <= max_entries:
        return suggest_tau(cosine_similarity(features), k, method=method, exclude_self=exclude_self, **kwargs)
    seed = check_seed(seed)
    max_rows = min(max_rows, max(32, max_entries // n), n)
    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(n, generator=g)[:max_rows].to(features.device)
    s = cosine_similarity(features[rows], features)
    if exclude_self:
        s[torch.arange(max_rows, device=s.device), rows] = -1e4
        check_k(k, n, exclude_self=True)
    return suggest_tau(s, k, method=method, exclude_self=False, **kwargs)
