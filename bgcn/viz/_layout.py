"""Where the nodes and edges go: 2-D layouts and a kNN graph's edges as a few Plotly line traces (chapter 06)."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .._checks import check_int
from ..graph import KNNGraph
from ._common import _CROSS_EDGE, _SAME_EDGE, _check_labels, _check_positions, _colour, _np

__all__ = ["layout_2d", "edge_segments"]


def layout_2d(features: torch.Tensor | np.ndarray, method: str = "pca", seed: int = 0, **kw) -> np.ndarray:
    r"""2-D node positions for drawing a graph of N feature vectors (scikit-learn).

    ``"pca"``: the first two principal components (fast, deterministic, linear). ``"tsne"``: t-SNE on
    the cosine metric, initialised with PCA, ``random_state=seed`` (slower; clusters separate more).
    The output is centred and scaled so that the larger coordinate range is [-1, 1].

    Shapes:
        - features: (N, D)
        - output: (N, 2) numpy float array

    Taught in: chapter 06 (chapters/06_rankings_to_graph_3_picture.md).
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

    Taught in: chapter 06 (chapters/06_rankings_to_graph_3_picture.md).
    """
    p = _check_positions(positions)
    idx, w = _as_rankings((indices, weights) if weights is not None else indices, p.shape[0])
    n, k = idx.shape
    n_bins = check_int(n_bins, "n_bins", 1)
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
