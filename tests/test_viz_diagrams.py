"""bgcn.viz diagrams of chapters 06, 07 and 10: one control per idea, the hop reach, the block search."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from bgcn import viz
from bgcn.gcn_spec import normalized_adjacency
from bgcn.similarity import cosine_similarity, knn_search

PATH4 = torch.tensor([[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0]], dtype=torch.float64)


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_hop_reach_writes_the_weights_and_colours_the_reach():
    a_hat = normalized_adjacency(PATH4)
    fig = viz.plot_hop_reach(a_hat, node=0, hops=2)
    assert len(fig.axes) == 3
    first = _texts(fig.axes[0])
    assert "0.41" in first and "0.33" in first and "0.50" in first      # 1/sqrt(6), 1/3, 1/2
    # one layer: row 0 of A_hat is (1/2, 1/sqrt 6, 0, 0); two layers: node 2 joins, node 3 stays out
    one, two = _texts(fig.axes[1]), _texts(fig.axes[2])
    assert one[-1] == "0" and one[-3] == "0" and "0.50" in one
    two_hop = (a_hat @ a_hat)[0]
    assert f"{two_hop[2]:.2f}" in two and two[-1] == "0"
    assert "reaches {0, 1}" in fig.axes[1].get_title() and "reaches {0, 1, 2}" in fig.axes[2].get_title()


def test_hop_reach_directed_weights_and_bad_input():
    a = torch.tensor([[0.5, 0.3, 0.0], [0.0, 0.6, 0.0], [0.2, 0.0, 0.4]], dtype=torch.float64)
    fig = viz.plot_hop_reach(a, node=2, hops=1)
    assert "0.30 | 0.00" in _texts(fig.axes[0])          # A_01 | A_10 for an asymmetric pair
    assert "reaches {0, 2}" in fig.axes[1].get_title()
    with pytest.raises(ValueError, match="square"):
        viz.plot_hop_reach(torch.ones(2, 3))
    with pytest.raises(ValueError, match="node"):
        viz.plot_hop_reach(a, node=3)


def test_block_search_figure_steps_match_the_library_search():
    f = torch.randn(12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fig = viz.block_search_figure(f, 3, chunk_size=4, key_chunk=5)
    assert len(fig.frames) == 3 * 3 and len(fig.layout.sliders[0].steps) == 9
    assert fig.layout.meta["blocks"][1] == [0, 4, 5, 10]
    # after the last key block of each query chunk, the running top-k is the library's exact top-k
    _, idx = knn_search(f, f, 3, exclude=torch.arange(12), chunk_size=4, key_chunk=5)
    for q in range(3):
        fr = fig.frames[3 * q + 2]
        got = sorted(zip(fr.data[2].y, fr.data[2].x))
        want = sorted((i, int(j)) for i in range(4 * q, 4 * q + 4) for j in idx[i])
        assert got == want
    # the current block only is coloured; the blocks before it are grey; the diagonal never marked
    fr = fig.frames[4]
    cur = torch.tensor(fr.data[1].z, dtype=torch.float64)
    s = cosine_similarity(f).fill_diagonal_(float("nan"))            # the excluded self is blank
    assert torch.allclose(cur[4:8, 5:10], s[4:8, 5:10], equal_nan=True) and torch.isnan(cur[:4]).all()
    grey = torch.tensor(fr.data[0].z, dtype=torch.float64)
    assert (grey[:4] == 1).all() and (grey[4:8, :5] == 1).all() and torch.isnan(grey[4:8, 5:]).all()
    assert all(x != y for fr in fig.frames for x, y in zip(fr.data[2].x, fr.data[2].y))
    with pytest.raises(ValueError):
        viz.block_search_figure(f, 12, 4, 4)            # k > N - 1


def test_knn_graph_figure_one_control_per_idea():
    g = torch.Generator().manual_seed(0)
    f = torch.cat([torch.randn(10, 4, generator=g) + 4 * c for c in range(3)])
    lab = torch.arange(3).repeat_interleave(10)
    pos = viz.layout_2d(f)
    by_k = viz.knn_graph_figure(pos, lab, f, [1, 3, 5], [0.03], height=450)
    by_tau = viz.knn_graph_figure(pos, lab, f, [5], [0.01, 0.1, 1.0])
    assert [s.label for s in by_k.layout.sliders[0].steps] == ["k=1", "k=3", "k=5"]
    assert [s.label for s in by_tau.layout.sliders[0].steps] == ["τ=0.01", "τ=0.1", "τ=1"]
    assert by_k.layout.height == 450 and by_tau.layout.height == 700
    both = viz.knn_graph_figure(pos, lab, f, [1, 3], [0.1, 1.0])
    assert both.layout.sliders[0].steps[0].label == "k=1, τ=0.1"
    with pytest.raises(ValueError, match="height"):
        viz.knn_graph_figure(pos, lab, f, [1], [0.1], height=10)
