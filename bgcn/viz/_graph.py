"""Plotly figures of the kNN graph: over (k, τ) (chapter 06) and over the training epochs (chapter 08)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..graph import edge_change_fraction, knn_graph
from ..topk import get_estimator
from .._checks import check_int
from ..utils import check_k, check_tensor
from ._common import _active, _check_labels, _check_positions, _check_taus, _np, _play_buttons, _slider
from ._layout import _as_rankings, _edge_traces, _node_traces, _same_class_share, edge_segments

__all__ = ["knn_graph_figure", "graph_evolution_figure"]


def knn_graph_figure(positions: Any, labels: Any, features: torch.Tensor, ks: Sequence[int], taus: Any,
                     estimator: str = "softmax", exclude_self: bool = True, n_bins: int = 4,
                     class_names: Sequence[str] | None = None, title: str = "kNN graph", active: int = 0,
                     height: int = 700):
    r"""Plotly figure of the kNN graph of N nodes with one slider step per (k, τ) pair.

    Nodes sit at ``positions`` (e.g. :func:`layout_2d`), coloured by class (legend). For each k in
    ``ks`` and τ in ``taus`` (k outer, τ inner) the graph :func:`bgcn.knn_graph` (features, k,
    estimator, τ) is drawn: each edge j → i a segment whose width is proportional to its weight
    relative to the largest weight of that step (:func:`edge_segments`), grey within a class and red
    across classes. The slider label is ``k=…, τ=…`` (only ``k=…`` when ``taus`` has one value,
    only ``τ=…`` when ``ks`` has one); the title gives the share of same-class edges and the mean
    weight of the first and the k-th neighbour. ``active`` is the step shown first (index into the
    (k, τ) product, k outer); ``height`` is the figure's height in px.

    Two Plotly sliders cannot combine their settings on a static page, so for one idea per control
    draw two figures: one with a single τ (its slider moves k) and one with a single k (its slider
    moves τ), as chapter 06 does. Keep N·k·len(ks)·len(taus) moderate: 150 nodes, k ≤ 10 and ~20
    steps give about 1 MB.

    Shapes: positions (N, 2), labels (N,), features (N, D) -> figure with len(ks)·len(taus) frames.

    Taught in: chapter 06 (chapters/06_rankings_to_graph_3_picture.md).
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
    height = check_int(height, "height", 200, hint="the figure's height in px, e.g. 520")
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
        labs.append(f"τ={t:.3g}" if len(ks) == 1 and len(taus) > 1
                    else f"k={k}" if len(taus) == 1 and len(ks) > 1 else f"k={k}, τ={t:.3g}")
        ttl = (f"{title} ({estimator}): k = {k}, τ = {t:.3g}<br>{100 * same:.1f} % same-class edges; "
               f"mean weight of 1st / {k}-th neighbour {w1:.3g} / {wk:.3g}")
        frames.append(go.Frame(name=nm, traces=list(range(n_edge)),
                               data=[go.Scatter(x=s["x"], y=s["y"], line={"width": s["width"], "color": s["color"]})
                                     for s in segs], layout={"title": {"text": ttl}}))
    fig.frames = frames
    fig.update_layout(title={"text": frames[a].layout.title.text, "font": {"size": 12}}, height=height,
                      margin={"t": 80, "l": 10, "r": 10}, plot_bgcolor="white",
                      xaxis={"visible": False}, yaxis={"visible": False, "scaleanchor": "x"},
                      legend={"title": {"text": "class"}, "font": {"size": 11}, "tracegroupgap": 0},
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


def _evolution_positions(positions: Any, T: int) -> tuple[bool, int, list[np.ndarray]]:
    """(moving, N, one (N, 2) layout per frame) from fixed (N, 2) or per-frame (T, N, 2) positions."""
    pos = _np(positions, "positions")
    if pos.ndim == 3:
        if pos.shape[0] != T:
            raise ValueError(f"positions has {pos.shape[0]} layouts but there are {T} graphs")
        n = pos.shape[1]
        return True, n, [_check_positions(pos[t], n) for t in range(T)]
    n = pos.shape[0] if pos.ndim == 2 else -1
    return False, n, [_check_positions(pos)] * T


def _evolution_base(pos0: np.ndarray, rank0: tuple[np.ndarray, np.ndarray], lab: np.ndarray,
                    class_names: Sequence[str] | None, curves: dict, epoch0: int, n_bins: int):
    """The first frame's figure: edges and nodes on top, the curves and their marker below.

    Returns (figure, number of edge traces, node trace ids, marker trace id)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, row_heights=[0.72, 0.28], vertical_spacing=0.08,
                        subplot_titles=("graph (node colour = class)", "accuracy"))
    segs0 = edge_segments(pos0, rank0[0], rank0[1], lab, n_bins=n_bins)
    for tr in _edge_traces(segs0, "x", "y"):
        fig.add_trace(tr)
    n_edge = len(segs0)
    for tr in _node_traces(pos0, lab, class_names, "x", "y", size=6):
        fig.add_trace(tr)
    node_ids = list(range(n_edge, len(fig.data)))
    curve_cols = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]
    for c, (kname, cv) in enumerate(curves.items()):
        fig.add_trace(go.Scatter(x=np.arange(len(cv)), y=cv, mode="lines", name=kname, xaxis="x2", yaxis="y2",
                                 line={"color": curve_cols[c % 5]}))
    marker_id = len(fig.data)
    fig.add_trace(go.Scatter(x=[epoch0] * len(curves), y=[float(cv[epoch0]) for cv in curves.values()],
                             mode="markers", xaxis="x2", yaxis="y2", showlegend=False,
                             marker={"size": 11, "color": curve_cols[:len(curves)], "line": {"width": 1, "color": "black"}}))
    return fig, n_edge, node_ids, marker_id


def _frame_title(title: str, e: int, curves: dict, idx: np.ndarray, prev: np.ndarray | None, lab: np.ndarray) -> str:
    """A frame's title: the accuracies at epoch e, the same-class share, the edges changed since ``prev``."""
    if prev is not None and prev.shape == idx.shape:
        changed = f", {100 * edge_change_fraction(torch.as_tensor(prev), torch.as_tensor(idx)):.1f} % edges changed"
    else:
        changed = ""
    accs = ", ".join(f"{kname} {float(cv[e]):.3g}" for kname, cv in curves.items())
    return f"{title} — epoch {e}: {accs}<br>{100 * _same_class_share(idx, lab):.1f} % same-class edges{changed}"


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

    Taught in: chapter 08 (chapters/08_end_to_end_4_watching.md).
    """
    import plotly.graph_objects as go

    T = len(graphs.graphs) if hasattr(graphs, "graphs") else (len(graphs) if isinstance(graphs, Sequence) else 0)
    if T == 0 or isinstance(graphs, (str, bytes)):
        _evolution_inputs(graphs, accuracies, epochs, -1)   # raises the error for empty / bad graphs
    moving, n, pos_t = _evolution_positions(positions, T)
    lab = _check_labels(labels, n)
    ranks, epochs, curves = _evolution_inputs(graphs, accuracies, epochs, n)
    pct = max(np.nanmax(c) for c in curves.values()) > 1.0 + 1e-9
    fig, n_edge, node_ids, marker_id = _evolution_base(pos_t[0], ranks[0], lab, class_names, curves, epochs[0], n_bins)
    classes = np.unique(lab)
    names, frames = [], []
    prev = None
    for t, (e, (idx, w)) in enumerate(zip(epochs, ranks)):
        segs = edge_segments(pos_t[t], idx, w, lab, n_bins=n_bins)
        if len(segs) != n_edge:  # pragma: no cover - constant by construction
            raise RuntimeError("edge trace count changed between frames")
        data = [go.Scatter(x=s["x"], y=s["y"], line={"width": s["width"], "color": s["color"]}) for s in segs]
        traces = list(range(n_edge))
        if moving:
            for tid, c in zip(node_ids, classes):
                m = lab == c
                data.append(go.Scatter(x=np.round(pos_t[t][m, 0], 4), y=np.round(pos_t[t][m, 1], 4)))
                traces.append(tid)
        data.append(go.Scatter(x=[e] * len(curves), y=[float(cv[e]) for cv in curves.values()]))
        traces.append(marker_id)
        names.append(f"epoch={e}")
        frames.append(go.Frame(name=names[-1], traces=traces, data=data,
                               layout={"title": {"text": _frame_title(title, e, curves, idx, prev, lab)}}))
        prev = idx
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
