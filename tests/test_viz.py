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

def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "the widget's image is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_widget_softmax_temperature_redraws_when_tau_moves():
    import ipywidgets as W

    s = torch.linspace(0, 1, 30, dtype=torch.float64)
    w = viz.widget_softmax_temperature(s, k=5, tau_range=(1e-3, 10.0), tau=1.0)
    assert isinstance(w, W.VBox) and isinstance(w.image, W.Image)
    sl = w.tau_slider
    assert isinstance(sl, W.FloatLogSlider) and sl.base == 10
    assert sl.min == pytest.approx(-3) and sl.max == pytest.approx(1) and sl.value == pytest.approx(1.0)
    hot_png, hot_caption = w.image.value, w.caption.value
    assert _png_size(hot_png)[0] > 100
    # what the caption states is the softmax of the row at the slider's tau
    p = torch.softmax(s / 1.0, 0)
    assert w.shown["effective"] == pytest.approx(bgcn.effective_neighbours(p).item(), rel=1e-12)
    assert w.shown["topk_mass"] == pytest.approx(p.topk(5).values.sum().item(), rel=1e-12)
    sl.value = 0.01                       # moving the slider redraws (no kernel needed)
    assert w.shown["tau"] == pytest.approx(0.01)
    assert w.image.value != hot_png and w.caption.value != hot_caption
    assert "τ = 0.01" in w.caption.value
    cold = torch.softmax(s / 0.01, 0)
    assert w.shown["topk_mass"] == pytest.approx(cold.topk(5).values.sum().item(), rel=1e-12)
    assert w.shown["topk_mass"] > 0.99 and p.topk(5).values.sum().item() < 0.3   # sharper when cold
    with pytest.raises(ValueError):
        viz.widget_softmax_temperature(s, tau_range=(1.0, 0.1))
    with pytest.raises(ValueError):
        viz.widget_softmax_temperature(torch.zeros(2, 2))


def test_widget_knn_graph_redraws_for_k_tau_and_estimator():
    import ipywidgets as W

    f, lab = _clusters(30)
    pos = viz.layout_2d(f)
    w = viz.widget_knn_graph(f, lab, pos, k_range=(1, 12), tau_range=(1e-2, 1.0), k=4, tau=0.1)
    assert isinstance(w.k_slider, W.IntSlider) and (w.k_slider.min, w.k_slider.max, w.k_slider.value) == (1, 12, 4)
    assert isinstance(w.tau_slider, W.FloatLogSlider)
    assert w.tau_slider.min == pytest.approx(-2) and w.tau_slider.max == pytest.approx(0)
    assert "softmax" in w.estimator_menu.options and "masked_softmax" in w.estimator_menu.options
    first = w.image.value
    w.k_slider.value = 6
    g = bgcn.knn_graph(f, 6, estimator="softmax", tau=0.1)
    same = (lab[g.indices] == lab[:, None]).double().mean().item()
    assert w.shown["k"] == 6 and w.shown["same_class"] == pytest.approx(same, abs=1e-12)
    assert w.image.value != first and "k = 6" in w.caption.value
    assert w.shown["w_first"] == pytest.approx(g.weights[:, 0].double().mean().item(), rel=1e-6)
    before = w.image.value
    w.estimator_menu.value = "hard"
    assert w.shown["estimator"] == "hard" and w.shown["w_first"] == w.shown["w_last"] == 1.0
    assert w.image.value != before and w.caption.value.startswith("hard")
    w.tau_slider.value = 1.0
    assert w.shown["tau"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        viz.widget_knn_graph(f, lab, pos, k_range=(1, 30))   # k > N - 1
    with pytest.raises(ValueError):
        viz.widget_knn_graph(f, lab, pos[:3])


def _fake_history(f, lab, epochs=(0, 2, 4), seed=1):
    """A History as bgcn.train records it: graphs every 2 epochs, accuracies per epoch."""
    from bgcn.train import History

    g = torch.Generator().manual_seed(seed)
    h = History()
    for e in range(1, max(epochs) + 1):
        h.append(epoch=e, train_acc=0.5 + 0.1 * e, val_acc=0.4 + 0.1 * e, test_acc=0.3 + 0.1 * e)
    h.initial = {"train_acc": 0.45, "val_acc": 0.35, "test_acc": 0.25}
    for e, noise in zip(epochs, (3.0, 1.0, 0.0)):
        gr = bgcn.knn_graph(f + noise * torch.randn(f.shape, generator=g), 3, tau=0.1)
        h.graphs.append({"epoch": e, "indices": gr.indices.to(torch.int16),
                         "weights": gr.weights.float().to(torch.float16)})
    return h


def test_widget_graph_evolution_follows_the_epoch_slider():
    import ipywidgets as W

    from bgcn.graph import edge_change_fraction

    f, lab = _clusters(30)
    pos = viz.layout_2d(f)
    h = _fake_history(f, lab)
    w = viz.widget_graph_evolution(pos, lab, h)
    sl = w.epoch_slider
    assert isinstance(sl, W.SelectionSlider) and isinstance(w.play, W.Play)
    assert [lbl for lbl, _ in sl.options] == ["0", "2", "4"] and w.play.max == 2
    assert w.shown["epoch"] == 0 and w.shown["accuracies"] == {"val": 0.35, "test": 0.25}
    assert np.isnan(w.shown["changed"])
    first_png, first_caption = w.image.value, w.caption.value
    assert _png_size(first_png)[0] > 300
    sl.value = 2                          # the last recorded graph, epoch 4
    idx = h.graphs[2]["indices"].long()
    assert w.shown["epoch"] == 4 and w.shown["index"] == 2
    assert w.shown["accuracies"]["val"] == pytest.approx(0.8) and w.shown["accuracies"]["test"] == pytest.approx(0.7)
    assert w.shown["same_class"] == pytest.approx((lab[idx] == lab[:, None]).double().mean().item(), abs=1e-12)
    assert w.shown["changed"] == pytest.approx(edge_change_fraction(h.graphs[1]["indices"].long(), idx), abs=1e-12)
    assert w.image.value != first_png and w.caption.value != first_caption
    assert w.caption.value.startswith("epoch 4: val 0.800, test 0.700")
    # explicit graphs and curves, as for graph_evolution_figure
    w2 = viz.widget_graph_evolution(pos, lab, [(gr["indices"], gr["weights"]) for gr in h.graphs],
                                    {"train": [0.1, 0.2, 0.3]}, epochs=[0, 1, 2])
    w2.epoch_slider.value = 1
    assert w2.shown["accuracies"] == {"train": 0.2}


def test_widget_graph_evolution_bad_input():
    f, lab = _clusters(20)
    pos = viz.layout_2d(f)
    h = _fake_history(f, lab)
    with pytest.raises(ValueError, match="non-empty"):
        viz.widget_graph_evolution(pos, lab, [])
    with pytest.raises(ValueError, match="accuracies is missing"):
        viz.widget_graph_evolution(pos, lab, h.graphs)
    with pytest.raises(ValueError, match="recorded at epoch"):
        viz.widget_graph_evolution(pos, lab, h.graphs, {"val": [0.1, 0.2]})
    with pytest.raises(ValueError, match="nodes"):
        viz.widget_graph_evolution(pos[:10], lab[:10], h)


def test_graph_evolution_figure_accepts_a_history():
    f, lab = _clusters(30)
    pos = viz.layout_2d(f)
    h = _fake_history(f, lab)
    fig = viz.graph_evolution_figure(pos, lab, h)
    assert [st.label for st in fig.layout.sliders[0].steps] == ["0", "2", "4"]
    markers = [fr.data[-1] for fr in fig.frames]
    assert [m.x[0] for m in markers] == [0, 2, 4]
    assert list(markers[2].y) == pytest.approx([0.8, 0.7])       # val and test at epoch 4
    assert list(markers[0].y) == pytest.approx([0.35, 0.25])     # before training
    for fr in fig.frames:
        edge = [tr for tr in fr.data if tr.x is not None and None in list(tr.x)]
        assert sum(_segments(tr) for tr in edge) == 30 * 3


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


def test_neighbour_mosaic_tiles_the_query_and_its_neighbours():
    from bgcn.viz import neighbour_mosaic, plot_neighbours

    g = torch.Generator().manual_seed(0)
    images = torch.rand(12, 3, 4, 5, generator=g)
    indices = torch.stack([torch.roll(torch.arange(12), -s) for s in (1, 2, 3)], 1)  # (12, 3): i+1, i+2, i+3
    m = neighbour_mosaic(images, indices, [2, 7], n_neighbours=2)
    assert m.shape == (2 * 4, 3 * 5, 3)
    for r, q in enumerate([2, 7]):
        for c, node in enumerate([q, (q + 1) % 12, (q + 2) % 12]):
            assert torch.equal(m[r * 4:(r + 1) * 4, c * 5:(c + 1) * 5], images[node].permute(1, 2, 0))
    grey = neighbour_mosaic(images[:, :1], indices, [0])
    assert grey.shape == (4, 4 * 5) and torch.equal(grey[:, 5:10], images[1, 0])
    with pytest.raises(ValueError, match="n_neighbours"):
        neighbour_mosaic(images, indices, [0], n_neighbours=4)
    with pytest.raises(ValueError, match="queries"):
        neighbour_mosaic(images, indices, [12])
    assert plot_neighbours(images, indices, [0, 1]) is not None


def test_neighbour_mosaic_refuses_non_integer_ids():
    images = torch.rand(6, 1, 2, 2)
    idx = torch.stack([torch.roll(torch.arange(6), -1), torch.roll(torch.arange(6), -2)], 1)
    with pytest.raises(TypeError, match="indices"):
        viz.neighbour_mosaic(images, idx.float(), [0])
    with pytest.raises(ValueError, match="indices"):
        viz.neighbour_mosaic(images, idx + 6, [0])
    with pytest.raises(ValueError, match="queries"):
        viz.neighbour_mosaic(images, idx, [0.7])
    with pytest.raises(TypeError, match="queries"):
        viz.neighbour_mosaic(images, idx, 3)
    with pytest.raises(ValueError, match="n_neighbours"):
        viz.neighbour_mosaic(images, idx, [0], n_neighbours=1.5)
    assert viz.neighbour_mosaic(images, idx, torch.tensor([1, 2])).shape == (4, 6)
