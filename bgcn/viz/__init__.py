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

Chapter 09's figures of one row of the score matrix (:func:`estimator_row`,
:func:`plot_estimator_row`, the paired differences) are here too; ``bgcn.viz_estimators`` keeps
their old import path.

Two diagrams explain a computation rather than a result (``_diagrams``): a toy graph's weights and
what a node reaches in one and two layers (:func:`plot_hop_reach`, chapter 07,
chapters/07_gcn_backward.md) and the blocked exact kNN search with its running top-k
(:func:`block_search_figure`, chapter 10, chapters/10_scaling_1_memory.md).

Parts: ``_common`` (palette, checks, sliders, renderer), ``_layout`` (node positions, edge
segments), ``_temperature`` (chapter 05), ``_graph`` (chapters 06 and 08), ``_static``
(matplotlib), ``_widgets`` (ipywidgets), ``_mosaic`` (neighbour images, chapter 12),
``_estimators`` (chapter 09), ``_minibatch`` (chapter 11). Nothing heavy is imported here: plotly,
matplotlib, scikit-learn and ipywidgets are imported inside the functions that draw.

Taught in: chapter 05 (chapters/05_temperature.md), chapter 06 (chapters/06_rankings_to_graph.md),
chapter 08 (chapters/08_end_to_end_4_watching.md), chapter 09 (chapters/09_estimators_1_softmax.md),
chapter 11 (chapters/11_minibatch_2_staleness.md), chapter 12 (chapters/12_real_extractor_1_frozen.md).
"""
from __future__ import annotations

from ._common import QUALITATIVE, glueable, set_plotly_renderer
from ._layout import edge_segments, layout_2d
from ._temperature import effective_neighbours_figure, softmax_temperature_figure
from ._graph import graph_evolution_figure, knn_graph_figure
from ._static import (plot_batchnorm_modes, plot_class_homophily, plot_gradient_norm_vs_tau, plot_knn_graph,
                      plot_softmax_weights)
from ._mosaic import neighbour_mosaic, plot_neighbours
from ._diagrams import block_search_figure, plot_hop_reach
from ._minibatch import minibatch_cost_figure, plot_gather_gradient, staleness_figure
from ._widgets import widget_graph_evolution, widget_knn_graph, widget_softmax_temperature
from ._estimators import (CHOSEN_COLOUR, OTHER_COLOUR, ROW_ESTIMATORS, classify_differences, estimator_row,
                          estimator_row_figure, paired_differences, paired_reading, plot_estimator_row,
                          plot_paired_differences, plot_toy_row)

__all__ = [
    "QUALITATIVE",
    "set_plotly_renderer",
    "glueable",
    "layout_2d",
    "edge_segments",
    "softmax_temperature_figure",
    "effective_neighbours_figure",
    "knn_graph_figure",
    "graph_evolution_figure",
    "plot_softmax_weights",
    "plot_knn_graph",
    "plot_gradient_norm_vs_tau",
    "plot_class_homophily",
    "plot_batchnorm_modes",
    "neighbour_mosaic",
    "plot_neighbours",
    "widget_softmax_temperature",
    "widget_knn_graph",
    "widget_graph_evolution",
    "ROW_ESTIMATORS",
    "CHOSEN_COLOUR",
    "OTHER_COLOUR",
    "estimator_row",
    "plot_toy_row",
    "plot_estimator_row",
    "estimator_row_figure",
    "paired_differences",
    "classify_differences",
    "paired_reading",
    "plot_paired_differences",
    "plot_hop_reach",
    "block_search_figure",
    "staleness_figure",
    "minibatch_cost_figure",
    "plot_gather_gradient",
]
