"""Plotly figures of chapter 05: softmax weights and the effective number of neighbours against τ."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from ..similarity import cosine_similarity
from ..temperature import temperature_sweep
from ..utils import check_k, check_tensor
from ._common import QUALITATIVE, _active, _check_taus, _np, _slider

__all__ = ["softmax_temperature_figure", "effective_neighbours_figure"]


def softmax_temperature_figure(scores: Any, taus: Any, k: int | None = 10, max_bars: int = 60,
                               title: str = "softmax(s/τ) of one row", active: int = 0,
                               log_y: bool = True, y_min: float = 1e-6):
    r"""Plotly figure with one slider step per τ: the softmax weights of one row, and n_eff / top-k mass vs τ.

    Top: bars of :math:`w = \mathrm{softmax}(s/\tau)` for the ``max_bars`` largest scores, sorted
    (the k largest highlighted). Bottom: the effective number of neighbours :math:`e^{H(w)}` divided
    by n and the top-k mass :math:`\sum_{j\in\text{top-}k} w_j`, both in [0, 1], against τ (log
    axis), with markers at the current τ. The title shows τ, :math:`e^H` and the top-k mass.
    ``active`` is the slider step shown first (an index into ``taus``). With ``log_y`` (default) the
    weight axis is logarithmic from ``y_min`` to 1, so that the flat rows of a hot softmax
    (weights ≈ 1/n) stay visible next to the one-hot rows of a cold one.

    Args:
        scores: one row of similarities, shape (n,).
        taus: temperatures (e.g. ``numpy.logspace(-3, 1, 25)``), one slider step each.
        k: neighbours highlighted and counted in the top-k mass (None: no highlight; k = 1 mass).
        max_bars: number of bars shown (the rest of the row still enters the softmax).

    Shapes: scores (n,), taus (T,) -> figure with T frames / slider steps.

    Taught in: chapter 05 (chapters/05_temperature_1_weights.md).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    s = scores if isinstance(scores, torch.Tensor) else torch.as_tensor(_np(scores, "scores"))
    check_tensor(s, "scores", ndim=1)
    s = s.detach().double().cpu()
    n = s.shape[0]
    if n < 2:
        raise ValueError(f"scores must hold at least 2 entries, got {n}")
    taus = _check_taus(taus)
    kk = 1 if k is None else check_k(k, n)
    max_bars = max(1, min(int(max_bars), n))
    order = torch.argsort(s, descending=True)
    sw = temperature_sweep(s, taus, kk)
    eff_share = (sw["effective"] / n).numpy()
    mass = sw["topk_mass"].numpy()
    bar_w = [torch.softmax(s / t, 0)[order[:max_bars]].numpy() for t in taus]
    colours = [("#d62728" if (k is not None and r < kk) else "#7f7f7f") for r in range(max_bars)]
    ymax = float(max(b.max() for b in bar_w)) * 1.05
    if log_y and not 0 < y_min < 1:
        raise ValueError(f"y_min={y_min} must lie in (0, 1) for a log axis")
    a = _active(active, len(taus))
    fig = make_subplots(rows=2, cols=1, row_heights=[0.55, 0.45], vertical_spacing=0.2,
                        subplot_titles=(f"weights of the {max_bars} largest of n = {n} scores",
                                        "effective neighbours / n and top-k mass against τ"))
    x_bars = np.arange(1, max_bars + 1)
    fig.add_trace(go.Bar(x=x_bars, y=np.round(bar_w[a], 6), marker_color=colours, name="softmax weight",
                         showlegend=False, hovertemplate="rank %{x}: w = %{y:.4g}<extra></extra>"), 1, 1)
    fig.add_trace(go.Scatter(x=taus, y=eff_share, mode="lines", name="e<sup>H</sup> / n", line={"color": "#1f77b4"}), 2, 1)
    fig.add_trace(go.Scatter(x=taus, y=mass, mode="lines", name=f"top-{kk} mass", line={"color": "#d62728"}), 2, 1)
    fig.add_trace(go.Scatter(x=[taus[a], taus[a]], y=[eff_share[a], mass[a]], mode="markers", showlegend=False,
                             marker={"size": 11, "color": ["#1f77b4", "#d62728"], "line": {"width": 1, "color": "black"}},
                             hoverinfo="skip"), 2, 1)
    names = [f"tau={t:.4g}" for t in taus]
    fig.frames = [go.Frame(name=nm, traces=[0, 3],
                           data=[go.Bar(y=np.round(bw, 6)), go.Scatter(x=[t, t], y=[e, m])],
                           layout={"title": {"text": f"{title}: τ = {t:.3g}, e<sup>H</sup> = {e * n:.1f} of n = {n}, "
                                                     f"top-{kk} mass = {100 * m:.1f} %"}})
                  for nm, t, bw, e, m in zip(names, taus, bar_w, eff_share, mass)]
    fig.update_layout(title={"text": fig.frames[a].layout.title.text, "font": {"size": 13}}, height=720,
                      margin={"t": 80, "b": 40, "l": 60, "r": 20},
                      sliders=[_slider([f"{t:.3g}" for t in taus], names, "τ = ", active=a)],
                      legend={"x": 0.99, "xanchor": "right", "y": 0.25, "yanchor": "middle",
                              "bgcolor": "rgba(255,255,255,0.8)"})
    fig.update_xaxes(title_text="rank of the score in the row", row=1, col=1)
    if log_y:
        fig.update_yaxes(title_text="softmax weight w (log scale)", type="log", exponentformat="power",
                         range=[math.log10(y_min), math.log10(1.5)], row=1, col=1)
    else:
        fig.update_yaxes(title_text="softmax weight w", range=[0, ymax], row=1, col=1)
    fig.update_xaxes(title_text="temperature τ (log scale)", type="log", row=2, col=1)
    fig.update_yaxes(title_text="share (0–1)", range=[0, 1.05], row=2, col=1)
    return fig


def effective_neighbours_figure(Ns: Sequence[int], taus: Any, features: Any = None, similarities: Any = None,
                                k: int = 10, rows: int = 200, seed: int = 0, exclude_self: bool = True,
                                active: int = 0):
    r"""Plotly figure: effective number of neighbours :math:`e^{H}` and top-k mass against τ, one line per N.

    For each N a random subset of N nodes is drawn (``seed``) from ``features`` (cosine similarity)
    or from a square ``similarities`` matrix, and :func:`bgcn.temperature.temperature_sweep` is run
    on its similarity matrix (``rows`` rows averaged, each a softmax over all N - 1 other nodes).
    Left: :math:`e^H` (log–log, with the uniform level N - 1 dotted); right: top-k mass. A slider
    over τ moves one marker per line and prints the values at that τ in the title. ``active`` is
    the slider step shown first.

    Shapes: features (N_max, D) or similarities (N_max, N_max); every N <= N_max.

    Taught in: chapter 05 (chapters/05_temperature_1_weights.md).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if (features is None) == (similarities is None):
        raise ValueError("pass exactly one of features=(N, D) or similarities=(N, N)")
    if features is not None:
        f = features if isinstance(features, torch.Tensor) else torch.as_tensor(_np(features, "features", 2))
        check_tensor(f, "features", ndim=2)
        nmax = f.shape[0]
    else:
        S = similarities if isinstance(similarities, torch.Tensor) else torch.as_tensor(_np(similarities, "similarities", 2))
        check_tensor(S, "similarities", ndim=2)
        if S.shape[0] != S.shape[1]:
            raise ValueError(f"similarities must be square (N, N), got {tuple(S.shape)}")
        nmax = S.shape[0]
    Ns = [int(v) for v in _np(Ns, "Ns").reshape(-1)]
    if not Ns:
        raise ValueError("Ns is empty")
    for v in Ns:
        if v <= k + 1 or v > nmax:
            raise ValueError(f"every N must satisfy k + 1 < N <= {nmax} (the data has {nmax} nodes), got N={v}")
    taus = _check_taus(taus)
    gen = torch.Generator().manual_seed(int(seed))
    res = {}
    for v in Ns:
        sub = torch.randperm(nmax, generator=gen)[:v]
        Sv = cosine_similarity(f[sub].double()) if features is not None else S[sub][:, sub].double()
        res[v] = temperature_sweep(Sv, taus, k, exclude_self=exclude_self, rows=min(rows, v), seed=seed)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=("effective neighbours e<sup>H</sup>", f"top-{k} mass"))
    for c, v in enumerate(Ns):
        col = QUALITATIVE[c % 10]
        fig.add_trace(go.Scatter(x=taus, y=res[v]["effective"].numpy(), mode="lines", name=f"N = {v}",
                                 line={"color": col}, legendgroup=str(v)), 1, 1)
        fig.add_trace(go.Scatter(x=taus, y=res[v]["topk_mass"].numpy(), mode="lines", name=f"N = {v}",
                                 line={"color": col}, legendgroup=str(v), showlegend=False), 1, 2)
        fig.add_trace(go.Scatter(x=[taus[0], taus[-1]], y=[res[v]["n"]] * 2, mode="lines", showlegend=False,
                                 line={"color": col, "dash": "dot", "width": 1}, hoverinfo="skip"), 1, 1)
    n_static = len(fig.data)
    a = _active(active, len(taus))
    eff0 = [float(res[v]["effective"][a]) for v in Ns]
    mass0 = [float(res[v]["topk_mass"][a]) for v in Ns]
    marker = {"size": 10, "color": [QUALITATIVE[c % 10] for c in range(len(Ns))], "line": {"width": 1, "color": "black"}}
    fig.add_trace(go.Scatter(x=[taus[a]] * len(Ns), y=eff0, mode="markers", marker=marker, showlegend=False), 1, 1)
    fig.add_trace(go.Scatter(x=[taus[a]] * len(Ns), y=mass0, mode="markers", marker=marker, showlegend=False), 1, 2)
    names = [f"tau={t:.4g}" for t in taus]
    frames = []
    for i, (nm, t) in enumerate(zip(names, taus)):
        eff = [float(res[v]["effective"][i]) for v in Ns]
        mass = [float(res[v]["topk_mass"][i]) for v in Ns]
        parts = [f"N = {v}: e<sup>H</sup> = {e:.4g}, top-{k} {100 * m:.3g} %" for v, e, m in zip(Ns, eff, mass)]
        txt = "<br>".join(" | ".join(parts[j:j + 2]) for j in range(0, len(parts), 2))
        frames.append(go.Frame(name=nm, traces=[n_static, n_static + 1],
                               data=[go.Scatter(x=[t] * len(Ns), y=eff), go.Scatter(x=[t] * len(Ns), y=mass)],
                               layout={"title": {"text": f"τ = {t:.3g}<br>{txt}", "font": {"size": 12}}}))
    fig.frames = frames
    n_lines = 2 + (len(Ns) - 1) // 2
    fig.update_layout(title=frames[a].layout.title, height=520 + 16 * n_lines, margin={"t": 50 + 18 * n_lines, "r": 20},
                      legend={"orientation": "h", "x": 0.5, "xanchor": "center", "y": -0.2, "yanchor": "top"},
                      sliders=[_slider([f"{t:.3g}" for t in taus], names, "τ = ", active=a, y=-0.32)])
    fig.update_xaxes(title_text="temperature τ (log scale)", type="log")
    fig.update_yaxes(title_text="e<sup>H</sup> (neighbours, log scale)", type="log", row=1, col=1)
    fig.update_yaxes(title_text=f"share of the mass in the top {k}", range=[0, 1.05], row=1, col=2)
    return fig
