"""Tests of bgcn.viz: slider steps/frames, that frames differ, edge counts, widgets headless, bad input."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import bgcn  # noqa: E402
from bgcn import viz  # noqa: E402


def _clusters(n=60, d=12, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=g) * 3
    labels = torch.arange(n) % c
    feats = centres[labels] + torch.randn(n, d, generator=g)
    return feats, labels


def _segments(trace):
    """Number of line segments in an edge trace ([x_j, x_i, None] per edge)."""
    xs = list(trace.x) if trace.x is not None else []
    return sum(1 for v in xs if v is None)


# --------------------------------------------------------------------------- softmax / temperature figures

def test_softmax_temperature_figure_steps_and_frames_differ():
    s = torch.linspace(-1, 1, 50)
    taus = np.logspace(-3, 1, 9)
    fig = viz.softmax_temperature_figure(s, taus, k=5, max_bars=20)
    assert len(fig.frames) == 9
    assert len(fig.layout.sliders[0].steps) == 9
    assert [st.args[0][0] for st in fig.layout.sliders[0].steps] == [fr.name for fr in fig.frames]
    cold = np.array(fig.frames[0].data[0].y)
    hot = np.array(fig.frames[-1].data[0].y)
    assert cold[0] > 0.99 and cold[1:].max() < 1e-3          # τ = 1e-3: one-hot at the argmax
    assert hot.max() - hot.min() < 0.05 and hot.max() < 0.05  # τ = 10: nearly uniform 1/50
    # the top-k bars are highlighted
    cols = list(fig.data[0].marker.color)
    assert cols[:5] == [cols[0]] * 5 and cols[5] != cols[0]
    # the marker of the right panel moves with τ
    assert fig.frames[0].data[1].x[0] != fig.frames[-1].data[1].x[0]


def test_softmax_temperature_figure_bad_input():
    with pytest.raises(ValueError):
        viz.softmax_temperature_figure(torch.zeros(3, 3), [1.0])
    with pytest.raises(ValueError):
        viz.softmax_temperature_figure(torch.zeros(5), [])
    with pytest.raises(ValueError):
        viz.softmax_temperature_figure(torch.zeros(5), [0.0, 1.0])
    with pytest.raises(ValueError):
        viz.softmax_temperature_figure(torch.zeros(5), [1.0], k=9)


def test_effective_neighbours_figure():
    f, _ = _clusters(80)
    taus = np.logspace(-2, 1, 6)
    fig = viz.effective_neighbours_figure([20, 50, 80], taus, features=f, k=5, rows=30)
    assert len(fig.frames) == 6 and len(fig.layout.sliders[0].steps) == 6
    # lines: effective and mass for each N (+ a dotted uniform level), then 2 marker traces
    eff_lines = [tr for tr in fig.data if tr.name and tr.name.startswith("N = ") and tr.showlegend is not False]
    assert [tr.name for tr in eff_lines] == ["N = 20", "N = 50", "N = 80"]
    # e^H grows with tau and with N; at large tau close to N - 1
    for tr, n in zip(eff_lines, [20, 50, 80]):
        y = np.array(tr.y)
        assert np.all(np.diff(y) > -1e-9)
        assert y[-1] == pytest.approx(n - 1, rel=0.05)
    assert fig.frames[0].data[0].y != fig.frames[-1].data[0].y
    S = bgcn.cosine_similarity(f)
    fig2 = viz.effective_neighbours_figure([30], taus, similarities=S, k=5)
    assert len(fig2.frames) == 6


def test_effective_neighbours_figure_bad_input():
    f, _ = _clusters(40)
    with pytest.raises(ValueError, match="exactly one"):
        viz.effective_neighbours_figure([10], [1.0])
    with pytest.raises(ValueError, match="exactly one"):
        viz.effective_neighbours_figure([10], [1.0], features=f, similarities=bgcn.cosine_similarity(f))
    with pytest.raises(ValueError, match="N <="):
        viz.effective_neighbours_figure([41], [1.0], features=f, k=5)
    with pytest.raises(ValueError, match="square"):
        viz.effective_neighbours_figure([10], [1.0], similarities=torch.rand(10, 12), k=3)


# --------------------------------------------------------------------------- kNN graph figures

def test_edge_segments_counts_and_coordinates():
    f, lab = _clusters(30)
    pos = viz.layout_2d(f)
    g = bgcn.knn_graph(f, 4, tau=0.1)
    segs = viz.edge_segments(pos, g.indices, g.weights, lab, n_bins=3)
    assert len(segs) == 6  # 3 width bins x (same, cross)
    assert sum(s["count"] for s in segs) == 30 * 4
    for s in segs:
        assert len(s["x"]) == 3 * s["count"] and sum(v is None for v in s["x"]) == s["count"]
    # one edge j -> i: its segment starts at x_j and ends at x_i
    seg = next(s for s in segs if s["count"])
    xj, xi = seg["x"][0], seg["x"][1]
    assert any(np.isclose(pos[:, 0], xj, atol=1e-4)) and any(np.isclose(pos[:, 0], xi, atol=1e-4))
    # widths increase with the bin
    ws = [s["width"] for s in segs[:3]]
    assert ws == sorted(ws)
    with pytest.raises(ValueError):
        viz.edge_segments(pos[:10], g.indices, g.weights)


def test_knn_graph_figure_steps_edges_and_weights():
    f, lab = _clusters(40)
    pos = viz.layout_2d(f)
    ks, taus = [2, 5], [0.01, 1.0]
    fig = viz.knn_graph_figure(pos, lab, f, ks, taus, n_bins=4)
    assert len(fig.frames) == 4 and len(fig.layout.sliders[0].steps) == 4
    labels = [st.label for st in fig.layout.sliders[0].steps]
    assert labels[0].startswith("k=2") and labels[-1].startswith("k=5")
    n_edge = len(fig.frames[0].traces)
    for fr, k in zip(fig.frames, [2, 2, 5, 5]):
        assert sum(_segments(tr) for tr in fr.data) == 40 * k      # N·k edges in this step
    # τ changes the weights, hence the distribution over width bins (counts per trace)
    cold = [_segments(tr) for tr in fig.frames[2].data]
    hot = [_segments(tr) for tr in fig.frames[3].data]
    assert cold != hot
    # at τ = 1 the softmax weights of the k neighbours are nearly equal: all in the widest bin
    widest = [i for i in range(n_edge) if (i % 4) == 3]
    assert sum(hot[i] for i in widest) >= 0.9 * 40 * 5
    assert sum(cold[i] for i in widest) < 0.5 * 40 * 5
    # node traces: one per class with a legend entry
    node_traces = [tr for tr in fig.data if tr.mode == "markers"]
    assert len(node_traces) == 4 and all(tr.name.startswith("class") for tr in node_traces)


def test_knn_graph_figure_bad_input():
    f, lab = _clusters(20)
    pos = viz.layout_2d(f)
    with pytest.raises(ValueError):
        viz.knn_graph_figure(pos, lab, f, [20], [1.0])  # k > N - 1
    with pytest.raises(ValueError):
        viz.knn_graph_figure(pos[:5], lab, f, [2], [1.0])
    with pytest.raises(ValueError):
        viz.knn_graph_figure(pos, lab[:5], f, [2], [1.0])
    with pytest.raises(ValueError, match="unknown estimator"):
        viz.knn_graph_figure(pos, lab, f, [2], [1.0], estimator="nope")
    with pytest.raises(TypeError):
        viz.knn_graph_figure(pos, lab.float(), f, [2], [1.0])


def test_graph_evolution_figure_frames_marker_and_edges():
    f, lab = _clusters(30)
    pos = viz.layout_2d(f)
    g = torch.Generator().manual_seed(1)
    graphs = [bgcn.knn_graph(f + s * torch.randn(f.shape, generator=g), 3, tau=0.1) for s in (3.0, 1.0, 0.0)]
    acc = {"train": [0.3, 0.5, 0.7, 0.9], "test": [0.2, 0.4, 0.6, 0.8]}
    fig = viz.graph_evolution_figure(pos, lab, graphs, acc, epochs=[0, 2, 3])
    assert len(fig.frames) == 3 and len(fig.layout.sliders[0].steps) == 3
    assert fig.layout.updatemenus[0].buttons[0].method == "animate"
    for fr in fig.frames:
        edge = [tr for tr, i in zip(fr.data, fr.traces) if tr.x is not None and None in list(tr.x)]
        assert sum(_segments(tr) for tr in edge) == 30 * 3
    markers = [fr.data[-1] for fr in fig.frames]
    assert [m.x[0] for m in markers] == [0, 2, 3]
    assert list(markers[1].y) == [0.7, 0.6]  # the curves at epoch 2
    # the graphs differ, so the edge data of the frames differ
    assert fig.frames[0].data[0].x != fig.frames[-1].data[0].x or fig.frames[0].data[4].x != fig.frames[-1].data[4].x
    # accept (indices, weights) tuples, per-frame positions and a single curve
    pos_t = np.stack([pos, pos * 0.5, pos * 0.2])
    fig2 = viz.graph_evolution_figure(pos_t, lab, [(gr.indices, gr.weights) for gr in graphs], [0.1, 0.2, 0.3])
    assert len(fig2.frames) == 3


def test_graph_evolution_figure_bad_input():
    f, lab = _clusters(20)
    pos = viz.layout_2d(f)
    gr = bgcn.knn_graph(f, 3)
    with pytest.raises(ValueError, match="non-empty"):
        viz.graph_evolution_figure(pos, lab, [], [0.5])
    with pytest.raises(ValueError, match="epochs"):
        viz.graph_evolution_figure(pos, lab, [gr, gr], [0.5, 0.6], epochs=[0])
    with pytest.raises(ValueError, match="recorded at epoch"):
        viz.graph_evolution_figure(pos, lab, [gr, gr], [0.5])
    with pytest.raises(ValueError, match="layouts"):
        viz.graph_evolution_figure(np.stack([pos] * 3), lab, [gr, gr], [0.5, 0.6])
    with pytest.raises(ValueError):
        viz.graph_evolution_figure(pos[:10], lab, [gr], [0.5])


# --------------------------------------------------------------------------- layout, matplotlib, renderer

def test_layout_2d():
    f, _ = _clusters(40)
    p = viz.layout_2d(f, "pca")
    assert p.shape == (40, 2) and np.abs(p).max() == pytest.approx(1.0)
    assert np.allclose(p.mean(0), 0, atol=1e-9)
    p2 = viz.layout_2d(f, "tsne", seed=0, max_iter=250)
    assert p2.shape == (40, 2)
    assert np.allclose(p2, viz.layout_2d(f, "tsne", seed=0, max_iter=250))
    with pytest.raises(ValueError, match="pca"):
        viz.layout_2d(f, "umap")
    with pytest.raises(ValueError):
        viz.layout_2d(torch.zeros(5))


def test_matplotlib_helpers_return_figures():
    import matplotlib.figure
    import matplotlib.pyplot as plt

    f, lab = _clusters(30)
    pos = viz.layout_2d(f)
    g = bgcn.knn_graph(f, 3)
    figs = [viz.plot_softmax_weights(torch.linspace(0, 1, 40), 0.1, k=5),
            viz.plot_knn_graph(pos, lab, g.indices, g.weights),
            viz.plot_gradient_norm_vs_tau(bgcn.temperature.gradient_norm_vs_tau(bgcn.cosine_similarity(f.double()),
                                                                                [0.01, 0.1, 1.0], 3))]
    assert all(isinstance(fig, matplotlib.figure.Figure) for fig in figs)
    with pytest.raises(ValueError, match="gradient_norm_vs_tau"):
        viz.plot_gradient_norm_vs_tau({"tau": [1.0]})
    plt.close("all")


def test_set_plotly_renderer():
    import plotly.io as pio

    before = pio.renderers.default
    try:
        old = viz.set_plotly_renderer("notebook_connected")
        assert old == before and pio.renderers.default == "notebook_connected"
        with pytest.raises(TypeError):
            viz.set_plotly_renderer("")
    finally:
        pio.renderers.default = before


# --------------------------------------------------------------------------- ipywidgets (headless)

def test_widget_softmax_temperature_headless():
    import ipywidgets as W

    w = viz.widget_softmax_temperature(torch.linspace(0, 1, 30), k=5, tau_range=(1e-3, 10.0), tau=1.0)
    assert isinstance(w, W.VBox)
    s = w.tau_slider
    assert isinstance(s, W.FloatLogSlider) and s.base == 10
    assert s.min == pytest.approx(-3) and s.max == pytest.approx(1) and s.value == pytest.approx(1.0)
    s.value = 0.01  # triggers a redraw without a kernel
    with pytest.raises(ValueError):
        viz.widget_softmax_temperature(torch.linspace(0, 1, 30), tau_range=(1.0, 0.1))
    with pytest.raises(ValueError):
        viz.widget_softmax_temperature(torch.zeros(2, 2))


def test_widget_knn_graph_headless():
    import ipywidgets as W

    f, lab = _clusters(30)
    pos = viz.layout_2d(f)
    w = viz.widget_knn_graph(f, lab, pos, k_range=(1, 12), tau_range=(1e-2, 1.0), k=4, tau=0.1)
    assert isinstance(w.k_slider, W.IntSlider) and (w.k_slider.min, w.k_slider.max, w.k_slider.value) == (1, 12, 4)
    assert isinstance(w.tau_slider, W.FloatLogSlider)
    assert w.tau_slider.min == pytest.approx(-2) and w.tau_slider.max == pytest.approx(0)
    assert "softmax" in w.estimator_menu.options and "masked_softmax" in w.estimator_menu.options
    w.k_slider.value = 6
    w.estimator_menu.value = "hard"
    with pytest.raises(ValueError):
        viz.widget_knn_graph(f, lab, pos, k_range=(1, 30))   # k > N - 1
    with pytest.raises(ValueError):
        viz.widget_knn_graph(f, lab, pos[:3])


def test_active_step_sets_initial_data():
    s = torch.linspace(-1, 1, 30)
    taus = [1e-3, 1e-1, 10.0]
    fig = viz.softmax_temperature_figure(s, taus, k=3, active=2)
    assert fig.layout.sliders[0].active == 2
    assert list(fig.data[0].y) == list(fig.frames[2].data[0].y)
    assert fig.layout.title.text == fig.frames[2].layout.title.text
    f, lab = _clusters(30)
    pos = viz.layout_2d(f)
    g = viz.knn_graph_figure(pos, lab, f, [2, 4], [0.1], active=-1)
    assert g.layout.sliders[0].active == 1
    assert sum(_segments(tr) for tr in g.data if tr.mode == "lines") == 30 * 4
    with pytest.raises(ValueError, match="step"):
        viz.softmax_temperature_figure(s, taus, active=3)
    with pytest.raises(TypeError):
        viz.effective_neighbours_figure([10], taus, features=f, k=3, active=0.5)
