"""matplotlib versions of the figures (static plots; each returns a ``matplotlib.figure.Figure``)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from ..utils import check_k, check_tau, check_tensor
from ._common import _check_labels, _check_positions, _colour, _np
from ._layout import _as_rankings

__all__ = ["plot_softmax_weights", "plot_knn_graph", "plot_gradient_norm_vs_tau", "plot_class_homophily",
           "plot_batchnorm_modes"]


def plot_softmax_weights(scores: Any, tau: float, k: int = 10, max_bars: int = 60, ax=None):
    """Matplotlib bars of softmax(s/τ) for the ``max_bars`` largest scores of one row (top-k red).

    Shapes: scores (n,) -> matplotlib Figure.

    Taught in: chapter 05 (chapters/05_temperature_1_weights.md).
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

    Taught in: chapter 06 (chapters/06_rankings_to_graph_3_picture.md).
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

    Taught in: chapter 05 (chapters/05_temperature_2_gradient.md).
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


def plot_class_homophily(graphs: Mapping[str, Any], labels: Any, class_names: Any = None, ax=None,
                         title: str | None = None):
    """Grouped bars of :func:`bgcn.graph.class_homophily`: one group per class, one bar per graph.

    ``graphs`` maps a legend name (``"before"``, ``"after"``) to the graph's ``(N, k)`` neighbour
    indices; every graph is over the same N images. A dotted line marks each graph's overall edge
    homophily (:func:`bgcn.graph.edge_homophily`). Where a graph changed, the classes whose bars move
    are the ones it changed for: that is the picture of "what training did to the graph" that a
    drawing of all N·k edges cannot give.

    Shapes: graphs: values (N, k) integer; labels (N,) integer -> matplotlib Figure.

    Taught in: chapter 12 (chapters/12_real_extractor_2_end_to_end.md).
    """
    import matplotlib.pyplot as plt

    from ..graph import class_homophily, edge_homophily

    if not graphs:
        raise ValueError("graphs must map at least one name to (N, k) neighbour indices")
    lab = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(_np(labels, "labels"))
    c = int(lab.max()) + 1
    names = [str(i) for i in range(c)] if class_names is None else [str(x) for x in class_names]
    if len(names) != c:
        raise ValueError(f"class_names has {len(names)} names but the labels have {c} classes")
    fig, ax = (plt.subplots(figsize=(8, 3.0)) if ax is None else (ax.figure, ax))
    width = 0.8 / len(graphs)
    x = np.arange(c)
    for g, (name, idx) in enumerate(graphs.items()):
        idx = idx if isinstance(idx, torch.Tensor) else torch.as_tensor(_np(idx, name))
        h = class_homophily(idx, lab, c).numpy()
        colour = _colour(g) if len(graphs) > 2 else ("#9e9e9e", "#1f77b4")[g]
        ax.bar(x - 0.4 + width * (g + 0.5), 100 * h, width, color=colour,
               label=f"{name} (all: {100 * edge_homophily(idx, lab):.1f} %)")
        ax.axhline(100 * edge_homophily(idx, lab), color=colour, ls=":", lw=1)
    ax.set_xticks(x)
    ax.set_xticklabels(names, fontsize=8, rotation=20 if max(map(len, names)) > 6 else 0)
    ax.set(ylabel="same-class edges (%)", ylim=(0, 100))
    ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_batchnorm_modes():
    r"""The computation of one BatchNorm channel in ``.train()`` mode and in ``.eval()`` mode, side by side.

    Train mode normalises image i with the mean and variance of *its batch*, so its output depends
    on the other images of the batch, and it overwrites the running statistics
    (:math:`\mu^\text{run} \leftarrow 0.9\,\mu^\text{run} + 0.1\,\mu_\text{batch}`). Eval mode
    normalises with the stored running statistics (for a pretrained network, ImageNet's) and writes
    nothing: image i's output depends on image i alone. Both end with the learnable scale and shift
    :math:`\gamma, \beta`. ``bn_policy="eval"`` keeps every BatchNorm layer on the eval path even when
    the model is in ``.train()`` mode.

    Shapes: none -> matplotlib Figure.

    Taught in: chapter 12 (chapters/12_real_extractor_1_frozen.md).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    fig, axes = plt.subplots(1, 2, figsize=(10, 2.8))

    def box(ax, x, y, text, colour="#f0f0f0", w=0.3, h=0.26):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.01",
                                    fc=colour, ec="#555555", lw=0.8))
        ax.text(x, y, text, ha="center", va="center", fontsize=9)

    def arrow(ax, a, b, colour="#333333", ls="-"):
        ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.1, ls=ls,
                                                        shrinkA=0, shrinkB=0))

    norm = r"$\hat x_c = \dfrac{x_c - \mu_c}{\sqrt{\sigma_c^2 + \epsilon}}$"
    for ax, mode in zip(axes, ("train", "eval")):
        ax.set(xlim=(-0.03, 1.62), ylim=(0.05, 1.0))
        ax.axis("off")
        box(ax, 0.17, 0.72, "image $i$\nof the batch", w=0.34)
        box(ax, 0.64, 0.72, norm, w=0.44)
        box(ax, 1.12, 0.72, r"$\gamma_c\,\hat x_c + \beta_c$", "#dcebf7", w=0.3)
        box(ax, 1.48, 0.72, "BN$(x)_c$", w=0.22)
        arrow(ax, (0.34, 0.72), (0.42, 0.72))
        arrow(ax, (0.86, 0.72), (0.97, 0.72))
        arrow(ax, (1.27, 0.72), (1.37, 0.72))
        if mode == "train":
            box(ax, 0.17, 0.26, "other images\nof the batch", "#fbe3e3", w=0.37)
            box(ax, 0.64, 0.26, "$\\mu_c, \\sigma_c^2$\nof the batch", "#fbe3e3", w=0.3)
            box(ax, 1.22, 0.26, "running $\\mu_c, \\sigma_c^2$\n(overwritten)", "#fbe3e3", w=0.4)
            arrow(ax, (0.355, 0.26), (0.49, 0.26))
            arrow(ax, (0.26, 0.59), (0.54, 0.39))
            arrow(ax, (0.64, 0.39), (0.64, 0.59))
            arrow(ax, (0.79, 0.26), (1.02, 0.26), "#d62728", ls="--")
            ax.set_title('.train(): plain PyTorch, bn_policy="train"', fontsize=10)
        else:
            box(ax, 0.64, 0.26, "running $\\mu_c, \\sigma_c^2$\n(ImageNet's, read only)", "#e3f3e3", w=0.5)
            arrow(ax, (0.64, 0.39), (0.64, 0.59))
            ax.text(0.14, 0.26, "no other\nimage involved", ha="center", va="center", fontsize=9, color="#555555")
            ax.set_title('.eval(), and any mode under bn_policy="eval"', fontsize=10)
    fig.tight_layout()
    return fig
