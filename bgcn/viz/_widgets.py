"""ipywidgets twins of the figures, for a running kernel only (Binder, a local notebook)."""
from __future__ import annotations

import io
import math
from typing import Any, Sequence

import numpy as np
import torch

from ..estimators import ESTIMATORS, get_estimator, rowwise_names
from ..graph import edge_change_fraction, knn_graph
from ..topk import effective_neighbours, topk_mass
from ..utils import check_k, check_tau, check_tensor
from ._common import _check_labels, _check_positions, _np
from ._graph import _evolution_inputs
from ._layout import _same_class_share
from ._static import plot_knn_graph, plot_softmax_weights

__all__ = ["widget_softmax_temperature", "widget_knn_graph", "widget_graph_evolution"]


# --------------------------------------------------------------------------- ipywidgets (live kernels only)
#
# Each widget draws a matplotlib figure into an ``ipywidgets.Image`` (PNG bytes), with an
# ``ipywidgets.HTML`` caption that states the numbers shown. The picture is a widget trait, so it
# works the same in JupyterLab, Notebook 7, Colab and a headless test (no Output-widget capture),
# and ``box.update()`` redraws from the controls' current values.

def _png(fig, dpi: int = 90) -> bytes:
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

    Taught in: chapter 05 (chapters/05_temperature_1_weights.md).
    """
    import ipywidgets as W

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

    Taught in: chapter 06 (chapters/06_rankings_to_graph_3_picture.md).
    """
    import ipywidgets as W

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
    names = list(rowwise_names())
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

    Taught in: chapter 08 (chapters/08_end_to_end_4_watching.md).
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt

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
