r"""Figures of the book: Plotly figures with precomputed slider steps, matplotlib helpers, ipywidgets.

Three kinds of figure, one per place the reader meets them:

* **Plotly** (``*_figure``): every slider step / animation frame is computed in Python when the
  figure is built, so the figure works on a static HTML page without a kernel (the book online).
  Each returns a ``plotly.graph_objects.Figure``; nothing here calls ``.show()``.
* **matplotlib** (``plot_*``): static plots; each returns a ``matplotlib.figure.Figure``.
* **ipywidgets** (``widget_*``): the same pictures driven by live sliders, for a running Jupyter
  kernel only (Binder, a local notebook). ipywidgets is imported inside these functions.

Slider conventions: a figure with slider steps has ``fig.layout.sliders[0].steps``; a step's
``args[0]`` is a list with the name of one of ``fig.frames``, and the frame holds the data of the
traces that change (``frame.traces`` are their indices in ``fig.data``).

Edges are drawn as line segments (``[x_j, x_i, None]`` per edge) in a few traces, one per width bin
(and per same-class / cross-class colour), instead of one trace per edge, which keeps a page under a
few MB.

Taught in: chapter 05 (chapters/05_temperature.md), chapter 06 (chapters/06_rankings_to_graph.md),
chapter 08 (chapters/08_end_to_end.md).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .graph import KNNGraph, knn_graph
from .similarity import cosine_similarity
from .temperature import temperature_sweep
from .topk import get_estimator
from .utils import check_k, check_tau, check_tensor

__all__ = [
    "QUALITATIVE",
    "set_plotly_renderer",
    "layout_2d",
    "edge_segments",
    "softmax_temperature_figure",
    "effective_neighbours_figure",
    "knn_graph_figure",
    "graph_evolution_figure",
    "plot_softmax_weights",
    "plot_knn_graph",
    "plot_gradient_norm_vs_tau",
    "neighbour_mosaic",
    "plot_neighbours",
    "widget_softmax_temperature",
    "widget_knn_graph",
    "widget_graph_evolution",
]

#: Qualitative palette for classes (Plotly's "D3" / matplotlib's tab10 colours), 10 classes.
QUALITATIVE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
               "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
_SAME_EDGE = "rgba(90,90,90,0.55)"
_CROSS_EDGE = "rgba(214,39,40,0.8)"
_ANIM = {"mode": "immediate", "frame": {"duration": 0, "redraw": True}, "transition": {"duration": 0}}


# --------------------------------------------------------------------------- helpers

def _np(x: Any, name: str, ndim: int | None = None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x)
    except Exception as e:  # pragma: no cover - numpy rarely refuses
        raise TypeError(f"{name} must be array-like (a tensor, numpy array or list), got {type(x).__name__}") from e
    if a.dtype == object:
        raise TypeError(f"{name} must be numeric array-like, got {type(x).__name__}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {a.shape}")
    return a


def _colour(c: int) -> str:
    return QUALITATIVE[int(c) % len(QUALITATIVE)]


def _check_positions(positions: Any, n: int | None = None, name: str = "positions") -> np.ndarray:
    p = _np(positions, name, 2).astype(float)
    if p.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {p.shape}; use bgcn.viz.layout_2d(features)")
    if n is not None and p.shape[0] != n:
        raise ValueError(f"{name} has {p.shape[0]} rows but there are N={n} nodes")
    if not np.isfinite(p).all():
        raise ValueError(f"{name} contains NaN/Inf")
    return p


def _check_labels(labels: Any, n: int) -> np.ndarray:
    lab = _np(labels, "labels", 1)
    if lab.shape[0] != n:
        raise ValueError(f"labels has {lab.shape[0]} entries but there are N={n} nodes")
    if not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"labels must be integer class ids, got dtype {lab.dtype}")
    return lab.astype(int)


def _check_taus(taus: Any, name: str = "taus") -> list[float]:
    t = _np(taus, name).reshape(-1).tolist()
    if not t:
        raise ValueError(f"{name} is empty; pass at least one temperature, e.g. numpy.logspace(-3, 1, 25)")
    return [check_tau(float(v), name) for v in t]


def _slider(labels: Sequence[str], frame_names: Sequence[str], prefix: str, active: int = 0,
            y: float = -0.08) -> dict:
    return dict(active=active, currentvalue={"prefix": prefix, "font": {"size": 14}}, pad={"t": 40, "b": 10},
                x=0.05, len=0.9, y=y, yanchor="top",
                steps=[dict(method="animate", label=lab, args=[[nm], _ANIM]) for lab, nm in zip(labels, frame_names)])


def _active(active: Any, n_steps: int) -> int:
    if isinstance(active, bool) or not isinstance(active, (int, np.integer)):
        raise TypeError(f"active must be an int (the index of the first slider step), got {type(active).__name__}")
    a = int(active)
    if not -n_steps <= a < n_steps:
        raise ValueError(f"active={a} is not a step index; there are {n_steps} steps")
    return a % n_steps


def _play_buttons(y: float = -0.08) -> dict:
    return dict(type="buttons", showactive=False, direction="left", x=0.0, y=y, xanchor="right", yanchor="top",
                pad={"t": 40, "r": 10},
                buttons=[dict(label="▶", method="animate",
                              args=[None, {"mode": "immediate", "fromcurrent": True,
                                           "frame": {"duration": 600, "redraw": True}, "transition": {"duration": 0}}]),
                         dict(label="❚❚", method="animate", args=[[None], _ANIM])])


def set_plotly_renderer(renderer: str = "notebook_connected") -> str:
    """Set ``plotly.io.renderers.default`` (default ``"notebook_connected"``) and return the old one.

    ``"notebook_connected"`` writes each figure as HTML that loads plotly.js from its CDN: it shows in
    Jupyter and in Jupyter Book 1 pages (a bare ``fig.show()`` with the default renderer there gives
    "skipping unknown output mime type" and an empty figure).

    Shapes: none (returns the previous renderer's name).

    Taught in: chapter 05 (chapters/05_temperature.md).
    """
    import plotly.io as pio

    if not isinstance(renderer, str) or not renderer:
        raise TypeError(f"renderer must be a non-empty str such as 'notebook_connected', got {renderer!r}")
    old = pio.renderers.default
    pio.renderers.default = renderer
    return old


def layout_2d(features: torch.Tensor | np.ndarray, method: str = "pca", seed: int = 0, **kw) -> np.ndarray:
    r"""2-D node positions for drawing a graph of N feature vectors (scikit-learn).

    ``"pca"``: the first two principal components (fast, deterministic, linear). ``"tsne"``: t-SNE on
    the cosine metric, initialised with PCA, ``random_state=seed`` (slower; clusters separate more).
    The output is centred and scaled so that the larger coordinate range is [-1, 1].

    Shapes:
        - features: (N, D)
        - output: (N, 2) numpy float array

    Taught in: chapter 06 (chapters/06_rankings_to_graph.md).
    """
    f = _np(features, "features", 2).astype(np.float64)
    n = f.shape[0]
    if n < 3:
        raise ValueError(f"layout_2d needs at least 3 points, got N={n}")
    if not np.isfinite(f).all():
        raise ValueError("features contains NaN/Inf")
    if method == "pca":
        from sklearn.decomposition import PCA

        p = PCA(n_components=2, random_state=seed).fit_transform(f)
    elif method == "tsne":
        from sklearn.manifold import TSNE

        from threadpoolctl import threadpool_limits

        perplexity = kw.pop("perplexity", min(30.0, (n - 1) / 3.0))
        # one thread: for a few hundred points OpenMP threads only fight over a busy CPU
        with threadpool_limits(limits=1 if n <= 2000 else None):
            p = TSNE(n_components=2, init="pca", metric=kw.pop("metric", "cosine"), perplexity=perplexity,
                     random_state=seed, **kw).fit_transform(f)
    else:
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    p = p - p.mean(0)
    scale = np.abs(p).max()
    return p / scale if scale > 0 else p


def _as_rankings(graph: Any, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(indices (N,k), weights (N,k)) from a KNNGraph, a (indices, weights) pair or indices alone."""
    if isinstance(graph, KNNGraph):
        idx, w = graph.indices, graph.weights
    elif isinstance(graph, Mapping) and "indices" in graph:   # History.graphs entry
        idx, w = graph["indices"], graph.get("weights")
    elif isinstance(graph, (tuple, list)) and len(graph) == 2:
        idx, w = graph
    else:
        idx, w = graph, None
    idx = _np(idx, "indices", 2)
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"indices must be integer, got dtype {idx.dtype}")
    w = np.ones(idx.shape) if w is None else _np(w, "weights", 2).astype(float)
    if w.shape != idx.shape:
        raise ValueError(f"weights {w.shape} and indices {idx.shape} must have the same shape (N, k)")
    if n is not None and idx.shape[0] != n:
        raise ValueError(f"the graph has {idx.shape[0]} nodes but positions/labels have N={n}")
    if idx.size and (idx.min() < 0 or idx.max() >= idx.shape[0]):
        raise ValueError(f"indices must lie in [0, N-1] = [0, {idx.shape[0] - 1}]")
    return idx, w


def edge_segments(positions: Any, indices: Any, weights: Any = None, labels: Any = None, n_bins: int = 4,
                  width_range: tuple[float, float] = (0.4, 4.0)) -> list[dict]:
    r"""Line segments of a kNN graph grouped into a few Plotly traces (width bins × same/cross class).

    Edge j → i (j a ranked neighbour of i) becomes the segment ``[x_j, x_i, None]``. Weights are
    divided by their maximum (so the widths show *relative* weight), cut into ``n_bins`` equal bins
    on [0, 1], and bin b is drawn with width ``width_range[0] + (b + 1)/n_bins · (hi - lo)``. With
    ``labels``, edges between two nodes of the same class are grey and cross-class edges red.

    Returns a list of dicts ``{"x", "y", "width", "color", "count", "same_class", "name"}``, one per
    non-empty group (``count`` edges each; the counts sum to N·k).

    Shapes:
        - positions: (N, 2); indices, weights: (N, k); labels: (N,)

    Taught in: chapter 06 (chapters/06_rankings_to_graph.md).
    """
    p = _check_positions(positions)
    idx, w = _as_rankings((indices, weights) if weights is not None else indices, p.shape[0])
    n, k = idx.shape
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    dst = np.repeat(np.arange(n), k)
    src = idx.reshape(-1)
    ww = w.reshape(-1)
    wmax = np.abs(ww).max() if ww.size else 1.0
    rel = np.abs(ww) / wmax if wmax > 0 else np.ones_like(ww)
    b = np.minimum((rel * n_bins).astype(int), n_bins - 1)
    same = np.ones_like(src, dtype=bool) if labels is None else (_check_labels(labels, n)[src] == _check_labels(labels, n)[dst])
    lo, hi = width_range
    out = []
    for is_same in ([True] if labels is None else [True, False]):
        for bi in range(n_bins):
            m = (b == bi) & (same == is_same)
            cnt = int(m.sum())
            xs = np.full(3 * cnt, np.nan)
            ys = np.full(3 * cnt, np.nan)
            xs[0::3], xs[1::3] = p[src[m], 0], p[dst[m], 0]
            ys[0::3], ys[1::3] = p[src[m], 1], p[dst[m], 1]
            out.append({"x": [None if math.isnan(v) else round(float(v), 4) for v in xs],
                        "y": [None if math.isnan(v) else round(float(v), 4) for v in ys],
                        "width": lo + (bi + 1) / n_bins * (hi - lo), "count": cnt, "same_class": is_same,
                        "color": _SAME_EDGE if is_same else _CROSS_EDGE,
                        "name": f"{'same' if is_same else 'cross'}-class edges, weight bin {bi + 1}/{n_bins}"})
    return out


def _edge_traces(segs: list[dict], xaxis: str = "x", yaxis: str = "y") -> list:
    import plotly.graph_objects as go

    return [go.Scatter(x=s["x"], y=s["y"], mode="lines", line={"width": s["width"], "color": s["color"]},
                       hoverinfo="skip", showlegend=False, name=s["name"], xaxis=xaxis, yaxis=yaxis) for s in segs]


def _node_traces(p: np.ndarray, lab: np.ndarray, class_names: Sequence[str] | None, xaxis="x", yaxis="y",
                 size: float = 7.0) -> list:
    import plotly.graph_objects as go

    traces = []
    for c in np.unique(lab):
        m = lab == c
        nm = str(class_names[c]) if class_names is not None and c < len(class_names) else str(c)
        ids = np.nonzero(m)[0]
        traces.append(go.Scatter(x=np.round(p[m, 0], 4), y=np.round(p[m, 1], 4), mode="markers", name=f"class {nm}",
                                 marker={"color": _colour(c), "size": size, "line": {"width": 0.5, "color": "white"}},
                                 text=[f"node {i}, class {nm}" for i in ids], hoverinfo="text", legendgroup=f"c{c}",
                                 xaxis=xaxis, yaxis=yaxis))
    return traces


def _same_class_share(idx: np.ndarray, lab: np.ndarray) -> float:
    return float((lab[idx] == lab[:, None]).mean())


# --------------------------------------------------------------------------- chapter 05

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

    Taught in: chapter 05 (chapters/05_temperature.md).
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

    Taught in: chapter 05 (chapters/05_temperature.md).
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


# --------------------------------------------------------------------------- chapter 06

def knn_graph_figure(positions: Any, labels: Any, features: torch.Tensor, ks: Sequence[int], taus: Any,
                     estimator: str = "softmax", exclude_self: bool = True, n_bins: int = 4,
                     class_names: Sequence[str] | None = None, title: str = "kNN graph", active: int = 0):
    r"""Plotly figure of the kNN graph of N nodes with one slider step per (k, τ) pair.

    Nodes sit at ``positions`` (e.g. :func:`layout_2d`), coloured by class (legend). For each k in
    ``ks`` and τ in ``taus`` (k outer, τ inner) the graph :func:`bgcn.knn_graph` (features, k,
    estimator, τ) is drawn: each edge j → i a segment whose width is proportional to its weight
    relative to the largest weight of that step (:func:`edge_segments`), grey within a class and red
    across classes. The slider label is ``k=…, τ=…``; the title gives the share of same-class edges
    and the mean weight of the first and the k-th neighbour. ``active`` is the step shown first
    (index into the (k, τ) product, k outer).

    One slider over the product keeps steps self-contained on a static page (two Plotly sliders
    cannot combine their settings). Keep N·k·len(ks)·len(taus) moderate: 150 nodes, k ≤ 10 and
    ~20 steps give about 1 MB.

    Shapes: positions (N, 2), labels (N,), features (N, D) -> figure with len(ks)·len(taus) frames.

    Taught in: chapter 06 (chapters/06_rankings_to_graph.md).
    """
    import plotly.graph_objects as go

    check_tensor(features, "features", ndim=2)
    n = features.shape[0]
    p = _check_positions(positions, n)
    lab = _check_labels(labels, n)
    ks = [check_k(int(v), n, exclude_self=exclude_self) for v in _np(ks, "ks").reshape(-1)]
    if not ks:
        raise ValueError("ks is empty; pass e.g. [1, 3, 5, 10]")
    taus = _check_taus(taus)
    get_estimator(estimator)
    steps = []
    with torch.no_grad():
        for k in ks:
            for t in taus:
                g = knn_graph(features.detach(), k, estimator=estimator, tau=t, exclude_self=exclude_self)
                idx, w = g.indices.cpu().numpy(), g.weights.double().cpu().numpy()
                segs = edge_segments(p, idx, w, lab, n_bins=n_bins)
                steps.append((k, t, segs, _same_class_share(idx, lab), w[:, 0].mean(), w[:, -1].mean()))
    a = _active(active, len(steps))
    segs0 = steps[a][2]
    fig = go.Figure(_edge_traces(segs0) + _node_traces(p, lab, class_names))
    n_edge = len(segs0)
    names, labs, frames = [], [], []
    for k, t, segs, same, w1, wk in steps:
        nm = f"k={k},tau={t:.4g}"
        names.append(nm)
        labs.append(f"k={k}, τ={t:.3g}")
        ttl = (f"{title} ({estimator}): k = {k}, τ = {t:.3g}<br>{100 * same:.1f} % same-class edges; "
               f"mean weight of 1st / {k}-th neighbour {w1:.3g} / {wk:.3g}")
        frames.append(go.Frame(name=nm, traces=list(range(n_edge)),
                               data=[go.Scatter(x=s["x"], y=s["y"], line={"width": s["width"], "color": s["color"]})
                                     for s in segs], layout={"title": {"text": ttl}}))
    fig.frames = frames
    fig.update_layout(title={"text": frames[a].layout.title.text, "font": {"size": 12}}, height=700,
                      margin={"t": 80, "l": 10, "r": 10}, plot_bgcolor="white",
                      xaxis={"visible": False}, yaxis={"visible": False, "scaleanchor": "x"},
                      legend={"title": {"text": "class"}, "font": {"size": 11}},
                      sliders=[_slider(labs, names, "", active=a, y=0.0)])
    return fig


def _history_curves(history: Any, names: Sequence[str] = ("val", "test")) -> dict[str, np.ndarray]:
    """Accuracy curves of a :class:`bgcn.train.History` indexed by epoch (0 = before training)."""
    epochs = [int(e) for e in history.epoch]
    length = max(epochs, default=0) + 1
    curves = {}
    for name in names:
        series = getattr(history, f"{name}_acc", None)
        if series is None:
            raise ValueError(f"history has no {name}_acc series; accuracies names must be train/val/test")
        c = np.full(length, np.nan)
        c[0] = float(history.initial.get(f"{name}_acc", np.nan))
        for e, v in zip(epochs, series):
            c[e] = float(v)
        curves[name] = c
    return curves


def _evolution_inputs(graphs: Any, accuracies: Any, epochs: Sequence[int] | None, n: int):
    """(rankings, epochs, curves) from a History or from recorded graphs and accuracy curves."""
    if hasattr(graphs, "graphs") and hasattr(graphs, "test_acc"):      # a bgcn.train.History
        history, graphs = graphs, graphs.graphs
        if accuracies is None:
            accuracies = _history_curves(history)
    if not isinstance(graphs, Sequence) or isinstance(graphs, (str, bytes)) or len(graphs) == 0:
        raise ValueError("graphs must be a non-empty list of recorded graphs (KNNGraph, (indices, weights) or "
                         "History.graphs dicts), or a History with recorded graphs (train(..., graph_every=4))")
    T = len(graphs)
    ranks = [_as_rankings(g, n) for g in graphs]
    if epochs is None:
        epochs = [int(g["epoch"]) if isinstance(g, Mapping) and "epoch" in g else t for t, g in enumerate(graphs)]
    epochs = [int(e) for e in epochs]
    if len(epochs) != T:
        raise ValueError(f"epochs has {len(epochs)} entries but there are {T} graphs")
    if accuracies is None:
        raise ValueError("accuracies is missing: pass one curve or a dict name -> curve (one value per epoch), "
                         "or pass a History as graphs")
    if isinstance(accuracies, Mapping):
        curves = {str(kname): _np(v, f"accuracies[{kname!r}]", 1).astype(float) for kname, v in accuracies.items()}
    else:
        curves = {"accuracy": _np(accuracies, "accuracies", 1).astype(float)}
    if not curves:
        raise ValueError("accuracies is empty")
    for kname, c in curves.items():
        if len(c) <= max(epochs):
            raise ValueError(f"accuracy curve {kname!r} has {len(c)} epochs but a graph was recorded at epoch {max(epochs)}")
    return ranks, epochs, curves


def graph_evolution_figure(positions: Any, labels: Any, graphs: Any, accuracies: Any = None,
                           epochs: Sequence[int] | None = None, n_bins: int = 3,
                           class_names: Sequence[str] | None = None, title: str = "kNN graph during training"):
    r"""Plotly animation of the kNN graph over training, with the accuracy curve and a moving marker.

    Args:
        positions: (N, 2) fixed node positions, or (T, N, 2) one layout per recorded graph.
        labels: (N,) classes (node colour).
        graphs: a :class:`bgcn.train.History` with recorded graphs (``train(...,
            graph_every=4)``), or T recorded graphs, each a :class:`~bgcn.graph.KNNGraph`, a pair
            ``(indices (N, k), weights (N, k))``, an ``indices`` array or a ``History.graphs``
            dict ``{"epoch", "indices", "weights"}``.
        accuracies: one curve (a sequence of floats, one per epoch) or a dict ``name -> sequence``
            (e.g. ``{"train": [...], "test": [...]}``), in [0, 1] or in %. With a History, the
            default is its validation and test accuracy (epoch 0: before training).
        epochs: the epoch of each recorded graph (default: the dicts' ``"epoch"``, else 0, 1, …,
            T-1); indexes the curves.

    Top: the graph of each recorded epoch (edge width ∝ relative weight, grey same-class / red
    cross-class edges); bottom: the curves with a marker at the current epoch. A play button and a
    slider step through the T frames; the title gives the share of same-class edges and the share
    of edges changed since the previous frame.

    Shapes: T frames; every graph has N rows.

    Taught in: chapter 08 (chapters/08_end_to_end.md).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    T = len(graphs.graphs) if hasattr(graphs, "graphs") else (len(graphs) if isinstance(graphs, Sequence) else 0)
    if T == 0 or isinstance(graphs, (str, bytes)):
        _evolution_inputs(graphs, accuracies, epochs, -1)   # raises the error for empty / bad graphs
    pos = _np(positions, "positions")
    if pos.ndim == 3:
        if pos.shape[0] != T:
            raise ValueError(f"positions has {pos.shape[0]} layouts but there are {T} graphs")
        n = pos.shape[1]
        pos_t = [_check_positions(pos[t], n) for t in range(T)]
    else:
        n = pos.shape[0] if pos.ndim == 2 else -1
        pos_t = [_check_positions(pos)] * T
    lab = _check_labels(labels, n)
    ranks, epochs, curves = _evolution_inputs(graphs, accuracies, epochs, n)
    pct = max(np.nanmax(c) for c in curves.values()) > 1.0 + 1e-9
    fig = make_subplots(rows=2, cols=1, row_heights=[0.72, 0.28], vertical_spacing=0.08,
                        subplot_titles=("graph (node colour = class)", "accuracy"))
    segs0 = edge_segments(pos_t[0], ranks[0][0], ranks[0][1], lab, n_bins=n_bins)
    for tr in _edge_traces(segs0, "x", "y"):
        fig.add_trace(tr)
    n_edge = len(segs0)
    for tr in _node_traces(pos_t[0], lab, class_names, "x", "y", size=6):
        fig.add_trace(tr)
    node_ids = list(range(n_edge, len(fig.data)))
    classes = np.unique(lab)
    curve_cols = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]
    for c, (kname, cv) in enumerate(curves.items()):
        fig.add_trace(go.Scatter(x=np.arange(len(cv)), y=cv, mode="lines", name=kname, xaxis="x2", yaxis="y2",
                                 line={"color": curve_cols[c % 5]}))
    marker_id = len(fig.data)
    fig.add_trace(go.Scatter(x=[epochs[0]] * len(curves), y=[float(cv[epochs[0]]) for cv in curves.values()],
                             mode="markers", xaxis="x2", yaxis="y2", showlegend=False,
                             marker={"size": 11, "color": curve_cols[:len(curves)], "line": {"width": 1, "color": "black"}}))
    names, frames = [], []
    prev = None
    for t, (e, (idx, w)) in enumerate(zip(epochs, ranks)):
        segs = edge_segments(pos_t[t], idx, w, lab, n_bins=n_bins)
        if len(segs) != n_edge:  # pragma: no cover - constant by construction
            raise RuntimeError("edge trace count changed between frames")
        data = [go.Scatter(x=s["x"], y=s["y"], line={"width": s["width"], "color": s["color"]}) for s in segs]
        traces = list(range(n_edge))
        if pos.ndim == 3:
            for tid, c in zip(node_ids, classes):
                m = lab == c
                data.append(go.Scatter(x=np.round(pos_t[t][m, 0], 4), y=np.round(pos_t[t][m, 1], 4)))
                traces.append(tid)
        data.append(go.Scatter(x=[e] * len(curves), y=[float(cv[e]) for cv in curves.values()]))
        traces.append(marker_id)
        if prev is not None and prev.shape == idx.shape:
            from .graph import edge_change_fraction

            changed = f", {100 * edge_change_fraction(torch.as_tensor(prev), torch.as_tensor(idx)):.1f} % edges changed"
        else:
            changed = ""
        prev = idx
        accs = ", ".join(f"{kname} {float(cv[e]):.3g}" for kname, cv in curves.items())
        nm = f"epoch={e}"
        names.append(nm)
        frames.append(go.Frame(name=nm, traces=traces, data=data,
                               layout={"title": {"text": f"{title} — epoch {e}: {accs}<br>"
                                                         f"{100 * _same_class_share(idx, lab):.1f} % same-class edges{changed}"}}))
    fig.frames = frames
    fig.update_layout(title={"text": frames[0].layout.title.text, "font": {"size": 12}}, height=860,
                      margin={"t": 80, "b": 30, "l": 50, "r": 20}, plot_bgcolor="white",
                      legend={"font": {"size": 11}, "tracegroupgap": 0, "itemsizing": "constant"},
                      sliders=[_slider([str(e) for e in epochs], names, "epoch ", y=-0.06)],
                      updatemenus=[_play_buttons(y=-0.06)])
    fig.update_xaxes(visible=False, row=1, col=1)
    fig.update_yaxes(visible=False, scaleanchor="x", row=1, col=1)
    fig.update_xaxes(title_text="epoch", row=2, col=1, showgrid=True, gridcolor="#eee")
    fig.update_yaxes(title_text="accuracy (%)" if pct else "accuracy (0–1)", row=2, col=1, showgrid=True, gridcolor="#eee")
    return fig


# --------------------------------------------------------------------------- matplotlib

def plot_softmax_weights(scores: Any, tau: float, k: int = 10, max_bars: int = 60, ax=None):
    """Matplotlib bars of softmax(s/τ) for the ``max_bars`` largest scores of one row (top-k red).

    Shapes: scores (n,) -> matplotlib Figure.

    Taught in: chapter 05 (chapters/05_temperature.md).
    """
    import matplotlib.pyplot as plt

    s = scores if isinstance(scores, torch.Tensor) else torch.as_tensor(_np(scores, "scores"))
    check_tensor(s, "scores", ndim=1)
    tau = check_tau(tau)
    k = check_k(k, s.shape[0])
    s = s.detach().double().cpu()
    w = torch.softmax(s / tau, 0)
    order = torch.argsort(s, descending=True)[:max_bars]
    fig, ax = (plt.subplots(figsize=(7, 3.2)) if ax is None else (ax.figure, ax))
    ax.bar(np.arange(1, len(order) + 1), w[order].numpy(),
           color=["#d62728" if r < k else "#7f7f7f" for r in range(len(order))])
    m = float(torch.topk(w, k).values.sum())
    ax.set(xlabel="rank of the score in the row", ylabel="softmax weight w (probability)",
           title=f"τ = {tau:.3g}: top-{k} mass {100 * m:.2f} %, e^H = {float(torch.exp(-(w * w.clamp_min(1e-300).log()).sum())):.1f} of {len(s)}")
    return fig


def plot_knn_graph(positions: Any, labels: Any, indices: Any, weights: Any = None, ax=None, title: str | None = None,
                   node_size: float = 18.0, max_width: float = 3.0):
    """Matplotlib drawing of a kNN graph: nodes coloured by class, edges j → i with width ∝ relative weight.

    Same-class edges grey, cross-class edges red.

    Shapes: positions (N, 2), labels (N,), indices and weights (N, k) -> matplotlib Figure.

    Taught in: chapter 06 (chapters/06_rankings_to_graph.md).
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    p = _check_positions(positions)
    n = p.shape[0]
    lab = _check_labels(labels, n)
    idx, w = _as_rankings((indices, weights) if weights is not None else indices, n)
    fig, ax = (plt.subplots(figsize=(6.5, 6)) if ax is None else (ax.figure, ax))
    k = idx.shape[1]
    dst = np.repeat(np.arange(n), k)
    src = idx.reshape(-1)
    rel = np.abs(w.reshape(-1))
    rel = rel / rel.max() if rel.max() > 0 else np.ones_like(rel)
    same = lab[src] == lab[dst]
    segs = np.stack([p[src], p[dst]], axis=1)
    cols = np.where(same[:, None], np.array([[0.35, 0.35, 0.35, 0.5]]), np.array([[0.84, 0.15, 0.16, 0.8]]))
    ax.add_collection(LineCollection(segs, linewidths=0.2 + max_width * rel, colors=cols, zorder=1))
    for c in np.unique(lab):
        m = lab == c
        ax.scatter(p[m, 0], p[m, 1], s=node_size, color=_colour(c), label=str(c), zorder=2, edgecolors="white", linewidths=0.4)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.legend(title="class", loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title(title or f"kNN graph, k = {k}: {100 * same.mean():.1f} % same-class edges")
    return fig


def plot_gradient_norm_vs_tau(result: Mapping[str, Any], ax=None, title: str | None = None,
                              decades: float | None = 10.0):
    """Matplotlib log–log plot of :func:`bgcn.temperature.gradient_norm_vs_tau`'s output (mean, median, saturated rows).

    ``decades`` limits the y-axis to that many powers of ten below the largest value (smaller
    values, e.g. the exactly saturated rows, fall off the bottom); ``None`` shows everything.

    Shapes: result["tau"], result["grad_norm"], ... (T,) -> matplotlib Figure.

    Taught in: chapter 05 (chapters/05_temperature.md).
    """
    import matplotlib.pyplot as plt

    for key in ("tau", "grad_norm"):
        if key not in result:
            raise ValueError(f"result must be the dict returned by gradient_norm_vs_tau (missing {key!r})")
    t = _np(result["tau"], "tau", 1)
    fig, ax = (plt.subplots(figsize=(7, 4)) if ax is None else (ax.figure, ax))
    ax.loglog(t, _np(result["grad_norm"], "grad_norm", 1), "o-", label="mean over rows", color="#1f77b4")
    if "grad_norm_median" in result:
        med = _np(result["grad_norm_median"], "grad_norm_median", 1)
        ax.loglog(t, np.where(med > 0, med, np.nan), "s-", label="median over rows", color="#ff7f0e")
    ax.set(xlabel="temperature τ (log scale)", ylabel="‖∂L/∂S_i‖ per row (log scale)",
           title=title or "gradient reaching S through the soft top-k weights")
    if "saturated" in result:
        ax2 = ax.twinx()
        ax2.plot(t, _np(result["saturated"], "saturated", 1), "--", color="#7f7f7f", label="saturated rows (right)")
        ax2.set_ylabel("share of saturated rows (max w > 0.999)")
        ax2.set_ylim(0, 1.02)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="lower center")
    else:
        ax.legend()
    if decades is not None:
        top = float(np.nanmax(_np(result["grad_norm"], "grad_norm", 1)))
        if "grad_norm_median" in result:
            top = max(top, float(np.nanmax(_np(result["grad_norm_median"], "grad_norm_median", 1))))
        if top > 0:
            ax.set_ylim(top * 10.0 ** (-float(decades)), top * 3)
    ax.grid(True, which="major", alpha=0.3)
    return fig


# --------------------------------------------------------------------------- ipywidgets (live kernels only)
#
# Each widget draws a matplotlib figure into an ``ipywidgets.Image`` (PNG bytes), with an
# ``ipywidgets.HTML`` caption that states the numbers shown. The picture is a widget trait, so it
# works the same in JupyterLab, Notebook 7, Colab and a headless test (no Output-widget capture),
# and ``box.update()`` redraws from the controls' current values.

def _png(fig, dpi: int = 90) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _live_box(W, controls: list, image, caption, draw, watch: list | None = None) -> Any:
    for wdg in controls if watch is None else watch:
        wdg.observe(lambda change: draw(), names="value")
    draw()
    box = W.VBox(([W.HBox(controls)] if len(controls) > 1 else controls) + [caption, image])
    box.image, box.caption, box.update = image, caption, draw
    return box


def widget_softmax_temperature(scores: Any, k: int = 10, tau_range: tuple[float, float] = (1e-3, 10.0),
                               tau: float = 1.0, max_bars: int = 60):
    r"""Live twin of :func:`softmax_temperature_figure`: a ``FloatLogSlider`` for τ redraws the bars.

    Each move redraws :func:`plot_softmax_weights` of :math:`w = \mathrm{softmax}(s/\tau)` and
    states :math:`e^{H(w)}` and the top-k mass in the caption.

    Returns an ``ipywidgets.VBox``; display it in a running notebook (the precomputed
    :func:`softmax_temperature_figure` is the version for a static page). Attributes:
    ``.tau_slider`` (``min``/``max`` are base-10 exponents), ``.image`` (``ipywidgets.Image``, PNG),
    ``.caption`` (``ipywidgets.HTML``), ``.update()`` (redraw), ``.shown`` (dict of what is drawn:
    ``tau``, ``effective``, ``topk_mass``).

    Shapes: scores (n,).

    Taught in: chapter 05 (chapters/05_temperature.md).
    """
    import ipywidgets as W

    from .topk import effective_neighbours, topk_mass

    s = scores if isinstance(scores, torch.Tensor) else torch.as_tensor(_np(scores, "scores"))
    check_tensor(s, "scores", ndim=1)
    k = check_k(k, s.shape[0])
    lo, hi = (check_tau(v, "tau_range") for v in tau_range)
    if lo >= hi:
        raise ValueError(f"tau_range={tau_range} must be (low, high) with low < high")
    s = s.detach().double().cpu()
    slider = W.FloatLogSlider(value=min(max(check_tau(tau), lo), hi), base=10, min=math.log10(lo), max=math.log10(hi),
                              step=0.05, description="τ", continuous_update=False)
    image, caption = W.Image(format="png"), W.HTML()
    shown: dict = {}

    def draw():
        t = float(slider.value)
        w = torch.softmax(s / t, 0)
        shown.update(tau=t, effective=float(effective_neighbours(w)), topk_mass=float(topk_mass(w, k)))
        caption.value = (f"τ = {t:.3g}: e<sup>H</sup> = {shown['effective']:.1f} effective neighbours of "
                         f"n = {s.shape[0]}, top-{k} mass {100 * shown['topk_mass']:.1f} %")
        image.value = _png(plot_softmax_weights(s, t, k, max_bars))

    box = _live_box(W, [slider], image, caption, draw)
    box.tau_slider, box.shown = slider, shown
    return box


def widget_knn_graph(features: torch.Tensor, labels: Any, positions: Any, k_range: tuple[int, int] = (1, 20),
                     tau_range: tuple[float, float] = (1e-3, 10.0), k: int = 5, tau: float = 0.05,
                     estimator: str = "softmax"):
    """Live twin of :func:`knn_graph_figure`: an ``IntSlider`` for k, a ``FloatLogSlider`` for τ and an estimator menu.

    Each change recomputes :func:`bgcn.knn_graph` (features, k, estimator, τ) and redraws it with
    :func:`plot_knn_graph` (matplotlib); the caption gives the share of same-class edges and the
    mean weight of the first and the k-th neighbour.

    Returns an ``ipywidgets.VBox``; its ``.k_slider``, ``.tau_slider`` and ``.estimator_menu``
    attributes are the controls, ``.image``/``.caption``/``.update()``/``.shown`` as in
    :func:`widget_softmax_temperature` (``shown``: ``k``, ``tau``, ``estimator``, ``same_class``,
    ``w_first``, ``w_last``).

    Shapes: features (N, D), labels (N,), positions (N, 2).

    Taught in: chapter 06 (chapters/06_rankings_to_graph.md).
    """
    import ipywidgets as W

    from .topk import ESTIMATORS

    check_tensor(features, "features", ndim=2)
    n = features.shape[0]
    p = _check_positions(positions, n)
    lab = _check_labels(labels, n)
    k_lo, k_hi = (check_k(int(v), n, "k_range", exclude_self=True) for v in k_range)
    if k_lo > k_hi:
        raise ValueError(f"k_range={k_range} must be (low, high) with low <= high")
    lo, hi = (check_tau(v, "tau_range") for v in tau_range)
    if lo >= hi:
        raise ValueError(f"tau_range={tau_range} must be (low, high) with low < high")
    get_estimator(estimator)
    ks = W.IntSlider(value=min(max(int(k), k_lo), k_hi), min=k_lo, max=k_hi, step=1, description="k",
                     continuous_update=False)
    ts = W.FloatLogSlider(value=min(max(check_tau(tau), lo), hi), base=10, min=math.log10(lo), max=math.log10(hi),
                          step=0.05, description="τ", continuous_update=False)
    names = [e for e in ("hard", "values", "softmax", "masked_softmax") if e in ESTIMATORS]
    menu = W.Dropdown(options=names + sorted(set(ESTIMATORS) - set(names)) if estimator in ESTIMATORS else names,
                      value=estimator, description="estimator")
    image, caption = W.Image(format="png"), W.HTML()
    f = features.detach()
    shown: dict = {}

    def draw():
        with torch.no_grad():
            g = knn_graph(f, ks.value, estimator=menu.value, tau=ts.value)
        idx, w = g.indices.cpu().numpy(), g.weights.double().cpu().numpy()
        shown.update(k=int(ks.value), tau=float(ts.value), estimator=menu.value,
                     same_class=_same_class_share(idx, lab), w_first=float(w[:, 0].mean()),
                     w_last=float(w[:, -1].mean()))
        caption.value = (f"{menu.value}, k = {ks.value}, τ = {ts.value:.3g}: "
                         f"{100 * shown['same_class']:.1f} % same-class edges; mean weight of the 1st / "
                         f"{ks.value}-th neighbour {shown['w_first']:.3g} / {shown['w_last']:.3g}")
        image.value = _png(plot_knn_graph(p, lab, idx, w, title=f"{menu.value}, k = {ks.value}, "
                                                                f"τ = {ts.value:.3g}"))

    box = _live_box(W, [ks, ts, menu], image, caption, draw)
    box.k_slider, box.tau_slider, box.estimator_menu, box.shown = ks, ts, menu, shown
    return box


def widget_graph_evolution(positions: Any, labels: Any, graphs: Any, accuracies: Any = None,
                           epochs: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
                           title: str = "kNN graph during training"):
    r"""Live twin of :func:`graph_evolution_figure`: an epoch slider over a run's recorded graphs.

    Left: the recorded kNN graph at the chosen epoch (:func:`plot_knn_graph`: nodes at
    ``positions``, coloured by class; edge width ∝ relative weight; grey same-class, red
    cross-class edges). Right, beside it: the accuracy curves with a marker at that epoch. The
    caption gives the accuracies, the share of same-class edges and the share of edges changed
    since the previous recorded graph (:func:`bgcn.graph.edge_change_fraction`). A play button
    steps through the epochs.

    Args:
        positions: (N, 2) node positions (e.g. :func:`layout_2d` of the inputs).
        labels: (N,) classes (node colour; an analysis quantity, not used by the graph).
        graphs: a :class:`bgcn.train.History` (``run.history`` of ``bgcn.train(...,
            graph_every=4)``), or recorded graphs as in :func:`graph_evolution_figure`.
        accuracies: dict ``name -> curve`` indexed by epoch, or one curve; default with a History:
            its validation and test accuracy (epoch 0: before training).
        epochs: the epoch of each graph (default: the ``History.graphs`` dicts' ``"epoch"``).

    Returns an ``ipywidgets.VBox`` with ``.epoch_slider`` (a ``SelectionSlider`` whose value is
    the index of the recorded graph, labelled by its epoch), ``.play``, ``.image``,
    ``.caption``, ``.update()`` and ``.shown`` (``epoch``, ``index``, ``accuracies``,
    ``same_class``, ``changed``).

    Shapes: T recorded graphs of N rows; positions (N, 2); labels (N,).

    Taught in: chapter 08 (chapters/08_end_to_end.md).
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt

    from .graph import edge_change_fraction

    p = _check_positions(positions)
    n = p.shape[0]
    lab = _check_labels(labels, n)
    ranks, epochs, curves = _evolution_inputs(graphs, accuracies, epochs, n)
    slider = W.SelectionSlider(options=[(str(e), i) for i, e in enumerate(epochs)], value=0,
                               description="epoch", continuous_update=False)
    play = W.Play(value=0, min=0, max=len(epochs) - 1, step=1, interval=900, description="play")
    W.jslink((play, "value"), (slider, "index"))
    image, caption = W.Image(format="png"), W.HTML()
    cols = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]
    shown: dict = {}

    def draw():
        i = int(slider.value)
        e = epochs[i]
        idx, w = ranks[i]
        changed = (edge_change_fraction(torch.as_tensor(ranks[i - 1][0]), torch.as_tensor(idx))
                   if i > 0 and ranks[i - 1][0].shape == idx.shape else float("nan"))
        accs = {name: float(c[e]) for name, c in curves.items()}
        shown.update(epoch=e, index=i, accuracies=accs, same_class=_same_class_share(idx, lab), changed=changed)
        fig, (ag, aa) = plt.subplots(1, 2, figsize=(10.5, 4.6), gridspec_kw={"width_ratios": [1.35, 1]})
        plot_knn_graph(p, lab, idx, w, ax=ag, title=f"epoch {e}: {100 * shown['same_class']:.1f} % same-class edges")
        for c, (name, cv) in enumerate(curves.items()):
            aa.plot(np.arange(len(cv)), cv, color=cols[c % 5], label=name)
            aa.plot([e], [cv[e]], "o", color=cols[c % 5], ms=9, mec="black")
        aa.axvline(e, color="#7f7f7f", lw=0.8, ls="--")
        aa.set(xlabel="epoch", ylabel="accuracy", title="accuracy (marker: this epoch)")
        aa.grid(True, alpha=0.3)
        aa.legend(loc="lower right")
        fig.suptitle(title, y=1.0)
        txt = ", ".join(f"{name} {v:.3f}" for name, v in accs.items())
        ch = "" if math.isnan(changed) else f"; {100 * changed:.1f} % of the edges changed since the previous graph"
        caption.value = f"epoch {e}: {txt}; {100 * shown['same_class']:.1f} % same-class edges{ch}"
        image.value = _png(fig)

    box = _live_box(W, [play, slider], image, caption, draw, watch=[slider])
    box.epoch_slider, box.play, box.shown = slider, play, shown
    return box


def neighbour_mosaic(images: torch.Tensor, indices: torch.Tensor, queries: Sequence[int],
                     n_neighbours: int | None = None) -> torch.Tensor:
    r"""One image of a few query images (first column) and their kNN neighbours (the next columns).

    Row r is image ``queries[r]`` followed by ``images[indices[queries[r], j]]`` for
    j = 0 … n_neighbours − 1 (best first, as :func:`bgcn.knn_indices` orders them), tiled
    without gaps: pixel (r·H + y, c·W + x) of the mosaic is pixel (y, x) of tile c of row r.

    Shapes:
        - images: (N, C, H, W) in [0, 1]; indices: (N, k) long; queries: Q node ids
        - output: (Q·H, (1 + n)·W, C) (or (Q·H, (1 + n)·W) for one channel), n = n_neighbours ≤ k

    Taught in: chapter 12 (chapters/12_real_extractor.md).
    """
    check_tensor(images, "images", ndim=4)
    check_tensor(indices, "indices", ndim=2, floating=False, finite=False)
    n, c, h, w = images.shape
    if indices.shape[0] != n:
        raise ValueError(f"indices has {indices.shape[0]} rows but there are {n} images; pass the (N, k) "
                         f"neighbour indices of these images")
    if indices.dtype not in (torch.int16, torch.int32, torch.int64, torch.uint8):
        raise TypeError(f"indices must be an integer tensor of node ids (N, k), got dtype {indices.dtype}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n):
        raise ValueError(f"indices must be node ids in [0, {n}), got values from {int(indices.min())} to "
                         f"{int(indices.max())}")
    k = indices.shape[1]
    m = k if n_neighbours is None else n_neighbours
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= k:
        raise ValueError(f"n_neighbours={n_neighbours!r} must be an int between 1 and k={k}")
    if isinstance(queries, torch.Tensor):
        queries = queries.tolist() if not queries.is_floating_point() else [float(v) for v in queries]
    if isinstance(queries, (int, str)) or not hasattr(queries, "__iter__"):
        raise TypeError(f"queries must be a sequence of node ids, e.g. [0, 5, 9], got {queries!r}")
    queries = list(queries)
    if not queries or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n for v in queries):
        raise ValueError(f"queries must be 1 or more int node ids in [0, {n}), got {queries!r}")
    q = torch.tensor(queries, dtype=torch.long)
    rows = torch.cat([q[:, None], indices[q, :m].long().cpu()], 1)          # (Q, 1 + m)
    tiles = images.detach().cpu()[rows.flatten()].reshape(q.numel(), 1 + m, c, h, w)
    out = tiles.permute(0, 3, 1, 4, 2).reshape(q.numel() * h, (1 + m) * w, c)
    return out[..., 0] if c == 1 else out


def plot_neighbours(images: torch.Tensor, indices: torch.Tensor, queries: Sequence[int],
                    n_neighbours: int | None = None, ax=None, cmap: str = "gray_r"):
    """Draw :func:`neighbour_mosaic` with matplotlib (no axes); returns the figure.

    Shapes: as :func:`neighbour_mosaic`.

    Taught in: chapter 12 (chapters/12_real_extractor.md).
    """
    import matplotlib.pyplot as plt

    mosaic = neighbour_mosaic(images, indices, queries, n_neighbours)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 0.8 * len(list(queries)) + 0.4))
    ax.imshow(mosaic.numpy(), cmap=cmap if mosaic.dim() == 2 else None, vmin=0.0, vmax=1.0)
    ax.axis("off")
    return ax.figure
