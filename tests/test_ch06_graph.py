"""Chapter 06 (from rankings to a graph): every formula and measured claim of the chapter."""
from __future__ import annotations

import pytest
import torch

import bgcn
from bgcn.graph import rankings_to_edges_loop

D = torch.float64


def _feats(n=40, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=D)


@pytest.fixture(scope="module")
def digits(digits):
    """conftest's digits, flattened to float64 rows."""
    images, labels = digits
    return images.flatten(1).double(), labels


# --------------------------------------------------------------------------- eqs. (8)-(11)

def test_soft_topk_is_softmax_gathered_at_topk():
    S = bgcn.cosine_similarity(_feats())
    for tau in (0.03, 1.0):
        w, idx = bgcn.soft_topk(S, 5, tau)
        assert torch.equal(idx, torch.topk(S, 5).indices)
        assert torch.allclose(w, torch.softmax(S / tau, -1).gather(1, idx), atol=0, rtol=0)
        assert (w.sum(1) < 1).all()  # the k weights hold only the top-k mass


def test_self_is_top1_and_exclude_self_removes_it():
    F = _feats()
    S = bgcn.cosine_similarity(F)
    assert torch.allclose(S.diagonal(), torch.ones(40, dtype=D), atol=1e-12)
    _, idx = bgcn.soft_topk(S, 5, 0.1)
    assert torch.equal(idx[:, 0], torch.arange(40))
    w, idx = bgcn.soft_topk(S, 5, 0.1, exclude_self=True)
    assert not (idx == torch.arange(40)[:, None]).any()
    Sm = S.clone().fill_diagonal_(float("-inf"))
    assert torch.allclose(w, torch.softmax(Sm / 0.1, -1).gather(1, torch.topk(Sm, 5).indices), atol=1e-15)
    g = bgcn.knn_graph(F, 5)  # default excludes self
    assert not (g.edge_index[0] == g.edge_index[1]).any()


# --------------------------------------------------------------------------- edges and direction

def test_loop_equals_vectorised_up_to_direction():
    idx = torch.randint(0, 30, (30, 4), generator=torch.Generator().manual_seed(0))
    ei, ew = bgcn.rankings_to_edges(idx)
    loop = rankings_to_edges_loop(idx)
    assert torch.equal(loop.flip(0), ei)
    assert not torch.equal(loop, ei)
    assert torch.equal(ew, torch.ones(120))


def test_pyg_source_to_target_aggregates_ranked_neighbours():
    from torch_geometric.nn import SimpleConv
    from torch_geometric.utils import degree

    F = _feats(30)
    g = bgcn.knn_graph(F, 4, tau=0.1)
    X = torch.randn(30, 3, dtype=D)
    ours = SimpleConv(aggr="sum")(X, g.edge_index, g.edge_weight)
    assert torch.allclose(ours, (g.weights.unsqueeze(-1) * X[g.indices]).sum(1), atol=1e-12)
    assert (degree(g.edge_index[1], 30) == 4).all()               # every node receives k messages
    seed_dir = rankings_to_edges_loop(g.indices)
    in_seed = degree(seed_dir[1], 30)
    assert torch.equal(in_seed, torch.bincount(g.indices.flatten(), minlength=30).double())
    assert in_seed.sum() == 120


# --------------------------------------------------------------------------- symmetry

def test_mutual_share_and_symmetric_option():
    F = _feats(50)
    g = bgcn.knn_graph(F, 5, estimator="hard")
    A = g.to_dense() > 0
    mutual = ((A & A.T).sum() / A.sum()).item()
    # brute force over edges
    edges = set(zip(g.edge_index[0].tolist(), g.edge_index[1].tolist()))
    brute = sum((i, j) in edges for (j, i) in edges) / len(edges)
    assert mutual == pytest.approx(brute)
    assert 0 < mutual < 1
    gs = bgcn.knn_graph(F, 5, estimator="softmax", tau=0.1, symmetric=True)
    As = gs.to_dense()
    assert torch.allclose(As, As.T)
    assert gs.num_edges == int(2 * A.sum() - (A & A.T).sum())
    # a mutual pair gets the mean of its two weights
    g1 = bgcn.knn_graph(F, 5, estimator="softmax", tau=0.1)
    W = g1.to_dense()
    both = (W > 0) & (W.T > 0)
    assert torch.allclose(As[both], ((W + W.T) / 2)[both])


def test_digits_measurements(digits):
    F, labels = digits
    g = bgcn.knn_graph(F, 10, estimator="hard")
    A = g.to_dense() > 0
    mutual = ((A & A.T).sum() / A.sum()).item()
    assert 0.58 < mutual < 0.63                       # the book says about 60 %
    from torch_geometric.utils import degree

    in_seed = degree(rankings_to_edges_loop(g.indices)[1], F.shape[0])
    assert int((in_seed == 0).sum()) == 31 and int(in_seed.max()) == 44
    same = (labels[g.indices] == labels[:, None]).double().mean().item()
    assert 0.95 < same < 0.975


# --------------------------------------------------------------------------- weights and gradients

def test_renormalised_softmax_equals_masked_softmax():
    S = bgcn.cosine_similarity(_feats(30)).requires_grad_(True)
    up = torch.randn(30, 4, dtype=D, generator=torch.Generator().manual_seed(1))
    for tau in (0.05, 1.0):
        sel = bgcn.ESTIMATORS["masked_softmax"](S, 4, tau, exclude_self=True)
        w, idx = bgcn.soft_topk(S, 4, tau, exclude_self=True)
        renorm = w / w.sum(1, keepdim=True)
        assert torch.equal(idx, sel.indices)
        assert (renorm - sel.weights).abs().max() < 1e-14
        (g1,) = torch.autograd.grad((up * renorm).sum(), S)
        (g2,) = torch.autograd.grad((up * sel.weights).sum(), S)
        assert (g1 - g2).abs().max() < 1e-13
        kept = torch.zeros(30, 30, dtype=torch.bool).scatter(1, idx, True)
        assert (g2[~kept] == 0).all()                 # exactly zero for the masked softmax
        assert g1[~kept].abs().max() < 1e-14          # zero up to rounding after renormalising


@pytest.mark.parametrize("name,expected", [("hard", 0), ("values", 3), ("softmax", 19), ("masked_softmax", 3)])
def test_gradient_sparsity_per_estimator(name, expected):
    S = bgcn.cosine_similarity(_feats(20)).requires_grad_(True)
    sel = bgcn.ESTIMATORS[name](S, 3, 0.05, exclude_self=True)
    if not sel.weights.requires_grad:
        assert expected == 0
        return
    up = torch.randn(20, 3, dtype=D, generator=torch.Generator().manual_seed(2))
    (grad,) = torch.autograd.grad((up * sel.weights).sum(), S)
    nz = (grad != 0).sum(1)
    if name == "values":  # clamp_min(0) may kill a negative similarity's gradient
        assert (nz <= expected).all() and nz.max() == expected
    else:
        assert (nz == expected).all()
    if name == "softmax":
        assert (grad.diagonal() == 0).all()          # the excluded diagonal gets nothing


def test_unkept_gradient_is_proportional_to_weight():
    """Chapter 06, exercise 4: under the softmax estimator, dL/dS_il = -c_i w_il off the top-k."""
    S = bgcn.cosine_similarity(_feats(30))
    row = S[0].clone().requires_grad_(True)
    w, ix = bgcn.soft_topk(row, 4, 0.1)
    g = torch.randn(4, dtype=D, generator=torch.Generator().manual_seed(3))
    (gr,) = torch.autograd.grad((g * w).sum(), row)
    wr = torch.softmax(row.detach() / 0.1, 0)
    out = torch.ones(30, dtype=torch.bool)
    out[ix] = False
    ratio = gr[out] / wr[out]
    assert ratio.std() < 1e-12
    assert ratio.mean().item() == pytest.approx(-(g * w.detach()).sum().item() / 0.1)


# --------------------------------------------------------------------------- transductive

def test_transductive_reach(digits):
    F, labels = digits
    train, _, _ = bgcn.label_masks(labels, labels_per_class=10, val_per_class=0)
    A = bgcn.knn_graph(F, 10, estimator="hard").to_dense() > 0
    reach = A | ((A.double() @ A.double()) > 0)
    has_labelled_nb = A[~train][:, train].any(1).double().mean().item()
    feeds = reach[train].any(0).double().mean().item()
    assert 0.35 < has_labelled_nb < 0.5               # "fewer than half"
    assert 0.75 < feeds < 0.9                          # "most images"


# --------------------------------------------------------------------------- the chapter's text (issue 9)

def test_chapter_quotes_the_edge_loop_speedup_from_the_cell():
    """The speed-up of the reshape over the seed's loop depends on N and on the machine: chapter 06
    quotes it only through glue, at two sizes, and says that it depends on N."""
    import re
    from pathlib import Path

    ch06 = (Path(__file__).resolve().parents[1] / "chapters" / "06_rankings_to_graph_1_edges.md").read_text(encoding="utf-8")
    prose = re.sub(r"```.*?```", "", ch06, flags=re.S)         # the text outside code
    assert not re.search(r"\b\d[\d,]*\s*(×|x|times)\s+faster", prose), "a typed speed-up in chapter 06"
    assert not re.search(r"(a|about a) thousand times faster", prose)
    for n in (200, 2000):
        assert f"{{glue:text}}`speedup_{n}:" in prose
        assert f'glue(f"speedup_{{n_t}}"' in ch06 and f"for n_t in (200, 2000)" in ch06
    assert "depends on $N$" in prose
