"""Small explanatory diagrams: a toy graph's weights and hop reach (chapter 07), the block search (chapter 10)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._checks import check_int
from ..utils import check_k, check_tensor
from ._common import _active, _slider

__all__ = ["plot_hop_reach", "block_search_figure"]


def _line_or_circle(n: int) -> np.ndarray:
    if n <= 6:
        return np.stack([np.arange(n, dtype=float), np.zeros(n)], 1)
    a = np.pi / 2 - 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(a), np.sin(a)], 1) * n / (2 * np.pi)


def plot_hop_reach(a_hat: torch.Tensor, node: int = 0, hops: int = 2, positions: Any = None, fmt: str = ".2f"):
    r"""Matplotlib panels of a small graph: its weights :math:`\hat A`, then what ``node`` reaches in 1..``hops`` layers.

    Panel 1 draws every edge :math:`j \to i` with :math:`\hat A_{ij} \ne 0` (PyG's convention, row i
    is what node i receives) and writes its weight at the middle of the edge (one number for a
    symmetric pair, ``a | b`` for :math:`\hat A_{ij} | \hat A_{ji}` otherwise) and each self-loop's
    :math:`\hat A_{ii}` above its node. Panel h + 1 colours the nodes j with
    :math:`(\hat A^h)_{\text{node}, j} \ne 0`, the nodes whose features enter ``node``'s output after
    h layers (and, read backwards, the nodes a gradient at ``node`` reaches in h backward steps),
    and writes that entry under each node; the others are grey, with 0.

    ``positions`` (N, 2) places the nodes; by default a row for N <= 6, else a circle.

    Shapes: a_hat (N, N) -> matplotlib Figure with 1 + hops axes.

    Taught in: chapter 07 (chapters/07_gcn_backward.md).
    """
    import matplotlib.pyplot as plt

    check_tensor(a_hat, "a_hat", ndim=2)
    n = a_hat.shape[0]
    if a_hat.shape[1] != n:
        raise ValueError(f"a_hat must be square (N, N), got shape {tuple(a_hat.shape)}")
    node = check_int(node, "node", 0, n - 1)
    hops = check_int(hops, "hops", 1, 6)
    a = a_hat.detach().double().cpu()
    pos = _line_or_circle(n) if positions is None else np.asarray(positions, dtype=float)
    if pos.shape != (n, 2):
        raise ValueError(f"positions must have shape ({n}, 2), got {pos.shape}")
    fig, axes = plt.subplots(1, 1 + hops, figsize=(2.7 * (1 + hops), 1.8))
    span = np.ptp(pos[:, 0]) or 1.0
    r = 0.09 * span / max(n - 1, 1) * 3 if n <= 6 else 0.15

    def edges(ax, colour="#999999"):
        for i in range(n):
            for j in range(i + 1, n):
                if a[i, j] != 0 or a[j, i] != 0:
                    ax.plot(*pos[[i, j]].T, color=colour, lw=1.5, zorder=1)

    def finish(ax, title):
        ax.set_title(title, fontsize=10)
        ax.set_aspect("equal")
        ax.set_xlim(pos[:, 0].min() - 0.6, pos[:, 0].max() + 0.6)
        ax.set_ylim(pos[:, 1].min() - 0.75, pos[:, 1].max() + 0.75)
        ax.axis("off")

    ax = axes[0]
    edges(ax)
    for i in range(n):
        for j in range(i + 1, n):
            if a[i, j] != 0 or a[j, i] != 0:
                mid = pos[[i, j]].mean(0)
                txt = (f"{a[i, j]:{fmt}}" if torch.isclose(a[i, j], a[j, i])
                       else f"{a[i, j]:{fmt}} | {a[j, i]:{fmt}}")
                ax.text(*mid + [0, 0.12], txt, ha="center", va="bottom", fontsize=9, color="#444444")
        ax.add_patch(plt.Circle(pos[i] + [0, 0.32], 0.17, fill=False, color="#999999", lw=1.2))
        ax.text(*pos[i] + [0, 0.52], f"{a[i, i]:{fmt}}", ha="center", va="bottom", fontsize=9, color="#444444")
        ax.scatter(*pos[i], s=260, color="white", edgecolor="black", zorder=2)
        ax.text(*pos[i], str(i), ha="center", va="center", fontsize=9, zorder=3)
    finish(ax, r"$\hat A$: weights on edges and self-loops")

    power = torch.eye(n, dtype=a.dtype)
    cmap = plt.get_cmap("Blues")
    for h in range(1, hops + 1):
        power = power @ a
        row = power[node]
        top = float(row.abs().max()) or 1.0
        ax = axes[h]
        edges(ax, "#cccccc")
        reached = [j for j in range(n) if row[j] != 0]
        for j in range(n):
            on = row[j] != 0
            face = cmap(0.15 + 0.45 * float(row[j].abs()) / top) if on else "#eeeeee"
            ax.scatter(*pos[j], s=260, color=face, edgecolor="black" if j == node else "#888888",
                       linewidths=2.2 if j == node else 0.8, zorder=2)
            ax.text(*pos[j], str(j), ha="center", va="center", fontsize=9, zorder=3)
            ax.text(*pos[j] - [0, 0.3], f"{row[j]:{fmt}}" if on else "0", ha="center", va="top", fontsize=9,
                    color="black" if on else "#999999")
        sup = "" if h == 1 else f"^{h}"
        finish(ax, f"{h} layer{'s' if h > 1 else ''}: row {node} of $\\hat A{sup}$\n"
                   f"node {node} reaches {{{', '.join(map(str, reached))}}}")
    fig.tight_layout()
    return fig


def block_search_figure(features: torch.Tensor, k: int, chunk_size: int, key_chunk: int, exclude_self: bool = True,
                        title: str = "exact kNN, block by block", active: int = 0, height: int = 520):
    r"""Plotly figure of the blocked exact search, one slider step per block of the similarity matrix.

    The cosine similarities :math:`S = \hat F \hat F^\top` (N × N, query rows down, key rows across)
    are cut into ``chunk_size`` × ``key_chunk`` blocks, visited as
    :func:`bgcn.similarity.knn_search` visits them: query chunk by query chunk, and within one, key
    chunk by key chunk. At each step only the current block is coloured (the one block in memory);
    the blocks searched before it are grey (formed, used, thrown away). Red rings mark the running
    top-k of each row of the current query chunk: the top-k of the previous running top-k and of
    this block, which after the last key block is the row's exact top-k. Black dots are the final
    top-k of the query chunks already finished. With ``exclude_self`` the diagonal is never
    selected (drawn blank).

    Shapes: features (N, D) -> figure with ceil(N / chunk_size) · ceil(N / key_chunk) frames.

    Taught in: chapter 10 (chapters/10_scaling_1_memory.md).
    """
    import plotly.graph_objects as go

    from ..similarity import cosine_similarity

    check_tensor(features, "features", ndim=2)
    n = features.shape[0]
    k = check_k(k, n, exclude_self=exclude_self)
    cs = check_int(chunk_size, "chunk_size", 1, n)
    kc = check_int(key_chunk, "key_chunk", 1, n)
    height = check_int(height, "height", 200)
    s = cosine_similarity(features.detach().double().cpu())
    if exclude_self:
        s.fill_diagonal_(float("-inf"))
    shown = s.clone()
    shown[torch.isinf(shown)] = float("nan")
    blocks = [(q0, min(q0 + cs, n), c0, min(c0 + kc, n)) for q0 in range(0, n, cs) for c0 in range(0, n, kc)]
    n_q, n_k = math.ceil(n / cs), math.ceil(n / kc)

    def marks(rows, c1):
        idx = torch.topk(s[rows, :c1], min(k, c1), dim=1).indices
        ok = torch.isfinite(s[rows, :c1].gather(1, idx))
        ys = torch.as_tensor(rows)[:, None].expand_as(idx)
        return idx[ok].tolist(), ys[ok].tolist()

    frames, labels, names = [], [], []
    for b, (q0, q1, c0, c1) in enumerate(blocks):
        grey = np.full((n, n), np.nan)
        cur = np.full((n, n), np.nan)
        for (p0, p1, d0, d1) in blocks[:b]:
            grey[p0:p1, d0:d1] = 1.0
        cur[q0:q1, c0:c1] = shown[q0:q1, c0:c1].numpy()
        run_x, run_y = marks(list(range(q0, q1)), c1)
        done_x, done_y = marks(list(range(0, q0)), n) if q0 else ([], [])
        box_x = [c0 - 0.5, c1 - 0.5, c1 - 0.5, c0 - 0.5, c0 - 0.5]
        box_y = [q0 - 0.5, q0 - 0.5, q1 - 0.5, q1 - 0.5, q0 - 0.5]
        ttl = (f"{title}: block {b + 1} of {len(blocks)}, query rows {q0}–{q1 - 1} × key rows {c0}–{c1 - 1}<br>"
               f"in memory: this {q1 - q0}×{c1 - c0} block and the running top-{k} of its {q1 - q0} rows")
        data = [go.Heatmap(z=grey), go.Heatmap(z=cur), go.Scatter(x=run_x, y=run_y), go.Scatter(x=done_x, y=done_y),
                go.Scatter(x=box_x, y=box_y)]
        name = f"block{b}"
        frames.append(go.Frame(name=name, data=data, traces=[0, 1, 2, 3, 4], layout={"title": {"text": ttl}}))
        names.append(name)
        labels.append(f"{b // n_k + 1}·{b % n_k + 1}")
    a = _active(active, len(frames))
    f0 = frames[a]
    grey_scale = [[0, "#d9d9d9"], [1, "#d9d9d9"]]
    fig = go.Figure([
        go.Heatmap(z=f0.data[0].z, colorscale=grey_scale, showscale=False, hoverinfo="skip", name="searched"),
        go.Heatmap(z=f0.data[1].z, colorscale="Viridis", zmin=float(np.nanmin(shown.numpy())),
                   zmax=float(np.nanmax(shown.numpy())), colorbar={"title": {"text": "cosine<br>similarity"}, "len": 0.55, "y": 1.0,
                                                   "yanchor": "top"},
                   name="current block"),
        go.Scatter(x=f0.data[2].x, y=f0.data[2].y, mode="markers", name=f"running top-{k}",
                   marker={"symbol": "circle-open", "size": 15, "color": "#d62728", "line": {"width": 3}}),
        go.Scatter(x=f0.data[3].x, y=f0.data[3].y, mode="markers", name=f"final top-{k}",
                   marker={"symbol": "circle", "size": 8, "color": "black"}),
        go.Scatter(x=f0.data[4].x, y=f0.data[4].y, mode="lines", name="block in memory",
                   line={"color": "#d62728", "width": 3}),
    ])
    fig.frames = frames
    grid = ([{"type": "line", "x0": c - 0.5, "x1": c - 0.5, "y0": -0.5, "y1": n - 0.5} for c in range(kc, n, kc)]
            + [{"type": "line", "y0": q - 0.5, "y1": q - 0.5, "x0": -0.5, "x1": n - 0.5} for q in range(cs, n, cs)])
    for g in grid:
        g["line"] = {"color": "white", "width": 2}
    fig.update_layout(title={"text": f0.layout.title.text, "font": {"size": 12}}, height=height,
                      margin={"t": 60, "l": 10, "r": 10, "b": 10}, plot_bgcolor="white", shapes=grid,
                      xaxis={"title": "key row j", "range": [-0.5, n - 0.5], "dtick": 1, "showgrid": False,
                             "constrain": "domain"},
                      yaxis={"title": "query row i", "range": [n - 0.5, -0.5], "dtick": 1, "scaleanchor": "x",
                             "showgrid": False, "constrain": "domain"},
                      legend={"x": 1.0, "xanchor": "left", "y": 0.0, "yanchor": "bottom", "font": {"size": 11}},
                      sliders=[_slider(labels, names, "block (query chunk · key chunk) ", active=a, y=-0.12)])
    fig.layout.meta = {"blocks": [list(bl) for bl in blocks], "query_chunks": n_q, "key_chunks": n_k}
    return fig
