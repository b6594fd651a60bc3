r"""Figures of training past one batch (chapter 11): the bank's staleness and cost from the committed
benchmarks (Plotly), and the gradients a gather must keep across two ranks (matplotlib)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._common import _np

__all__ = ["staleness_figure", "minibatch_cost_figure", "plot_gather_gradient"]

_ENGINES = {"minibatch": ("mini-batch", "#1f77b4"), "minibatch_cached": ("mini-batch, cached lists", "#2ca02c"),
            "full": ("full batch", "#d62728")}


def staleness_figure(st: dict):
    """Plotly: recall@k of the bank's graph after each epoch's steps, one line per (batch size, refresh),
    a dotted line at the end of the warm-up.

    ``st`` is ``staleness.json`` (:func:`bgcn.experiments.bench.load_benchmark`).

    Shapes: none; returns a ``plotly.graph_objects.Figure``.

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    for run in st["staleness"]:
        ep = [c["epoch"] for c in run["curve"]]
        fig.add_trace(go.Scatter(x=ep, y=[c["recall"] for c in run["curve"]], mode="lines+markers",
                                 name=f"|Q| = {run['batch_size']}, refresh {run['bank_refresh']}"))
    warm = st["staleness"][0]["warmup_epochs"]
    fig.add_vline(x=warm + 0.5, line_dash="dot", line_color="grey")
    fig.update_layout(height=380, xaxis_title="epoch (recall measured after its steps)",
                      yaxis_title=f"recall@{st['setup']['k']} of the bank's graph",
                      title="Staleness of the bank (warm-up left of the dotted line)",
                      margin=dict(l=60, r=20, t=50, b=50))
    return fig


def minibatch_cost_figure(rows: Sequence[dict]):
    """Plotly, two panels against N (log–log): the peak memory of one epoch per engine with the bank's
    own N·D floats (dashed), and the time of one epoch (solid) with its exact search (dotted).

    ``rows`` is :func:`bgcn.experiments.bench.load_minibatch_costs`.

    Shapes: none; returns a ``plotly.graph_objects.Figure``.

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    mb = 1e6
    fig = make_subplots(rows=1, cols=2, subplot_titles=("peak memory of one epoch (MB)", "time of one epoch (s)"))
    for eng, (name, colour) in _ENGINES.items():
        pts = [(r["n"], r[eng]) for r in rows if eng in r]
        if not pts:
            continue
        ns = [n for n, _ in pts]
        fig.add_trace(go.Scatter(x=ns, y=[e["peak_bytes"] / mb for _, e in pts], mode="lines+markers", name=name,
                                 line_color=colour), row=1, col=1)
        fig.add_trace(go.Scatter(x=ns, y=[e["time_s"] for _, e in pts], mode="lines+markers",
                                 name=f"{name}: epoch", line_color=colour, showlegend=False), row=1, col=2)
        if "search_s" in pts[0][1]:
            fig.add_trace(go.Scatter(x=ns, y=[e["search_s"] for _, e in pts], mode="lines", line_dash="dot",
                                     line_color=colour, name=f"{name}: search"), row=1, col=2)
    ns = [r["n"] for r in rows]
    fig.add_trace(go.Scatter(x=ns, y=[r["minibatch"]["bank_bytes"] / mb for r in rows], mode="lines",
                             line_dash="dash", line_color="grey", name="the bank, N·D floats"), row=1, col=1)
    fig.update_xaxes(type="log", title_text="N (images)")
    fig.update_yaxes(type="log")
    fig.update_layout(height=420, legend=dict(orientation="h", y=-0.25), margin=dict(l=50, r=20, t=40, b=40))
    return fig


def plot_gather_gradient(norms: Any, figsize: tuple[float, float] = (10.0, 3.9)):
    r"""Matplotlib, two panels: which :math:`\partial\mathcal L_s/\partial F_{Q_r}` reach the owner of the
    rows with two ranks, through :func:`bgcn.distributed.all_gather_with_grad` (left: all four, summed
    into :math:`g_r`) and through a plain ``all_gather`` (right: only :math:`s = r`; the two
    cross terms, each rank's pull on the other rank's rows through the graph, are dropped).

    ``norms[r][s]`` is :math:`\lVert\partial\mathcal L_s/\partial F_{Q_r}\rVert`, written on the
    arrows (their width grows with it).

    Shapes: norms (2, 2) -> matplotlib Figure.

    Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    g = _np(norms, "norms", 2).astype(float)
    if g.shape != (2, 2) or not np.isfinite(g).all() or (g < 0).any():
        raise ValueError(f"norms must be a (2, 2) array of finite norms >= 0, norms[r][s] = |dL_s/dF_Q_r|; got {g}")
    colours = ["#ff7f0e", "#1f77b4"]
    fig, axes = plt.subplots(1, 2, figsize=figsize)
    top = g.max() if g.max() > 0 else 1.0
    ys = [0.72, 0.18]
    titles = ["all_gather_with_grad: $g_r=\\sum_s\\,\\partial\\mathcal{L}_s/\\partial F_{Q_r}$",
              "plain all_gather: $g_r=\\partial\\mathcal{L}_r/\\partial F_{Q_r}$ only"]
    for p, ax in enumerate(axes):
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.05, 0.86)
        ax.axis("off")
        ax.set_title(titles[p], fontsize=10.5)
        for r in range(2):
            ax.add_patch(FancyBboxPatch((0.02, ys[r] - 0.08), 0.26, 0.16, boxstyle="round,pad=0.01",
                                        fc=colours[r], alpha=0.18, ec=colours[r], lw=1.5))
            ax.text(0.15, ys[r], f"rank {r}: $F_{{Q_{r}}}$", ha="center", va="center", fontsize=10.5)
            ax.add_patch(FancyBboxPatch((0.76, ys[r] - 0.08), 0.22, 0.16, boxstyle="round,pad=0.01",
                                        fc="white", ec=colours[r], lw=1.5))
            ax.text(0.87, ys[r], f"rank {r}: $\\mathcal{{L}}_{r}$", ha="center", va="center", fontsize=10.5)
        for s in range(2):          # from the loss of rank s ...
            for r in range(2):      # ... back to the rows of rank r
                kept = p == 0 or r == s
                start, end = (0.75, ys[s]), (0.29, ys[r])
                width = 0.8 + 3.5 * g[r, s] / top
                arrow = FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14,
                                        lw=width if kept else 1.0, ls="-" if kept else (0, (4, 3)),
                                        color=colours[s] if kept else "#bbbbbb",
                                        connectionstyle="arc3,rad=0.0", shrinkA=2, shrinkB=2)
                ax.add_patch(arrow)
                # the label sits on the arrow: mid-way, or near its loss for the crossing ones
                t = 0.5 if r == s else 0.22
                x, y = start[0] + t * (end[0] - start[0]), start[1] + t * (end[1] - start[1])
                label = f"{g[r, s]:.3g}" if kept else f"{g[r, s]:.3g}\ndropped"
                ax.text(x, y + (0.05 if r == s else 0.0), label, ha="center", va="center", fontsize=9,
                        color="black" if kept else "#d62728",
                        bbox=dict(fc="white", ec="none", alpha=0.85, pad=1.0))
        note = ("every loss reaches every row: one process's gradient" if p == 0 else
                "crossing terms lost: the result depends on $n_p$")
        ax.text(0.5, -0.02, note, ha="center", va="bottom", fontsize=9.5, style="italic")
    fig.tight_layout()
    return fig
