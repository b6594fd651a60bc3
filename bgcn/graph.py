r"""From rankings to a graph: edges, weights, symmetrising, self-loops, networkx export.

Convention (PyG's ``flow="source_to_target"``): ``edge_index[0]`` holds the neighbour j (source)
and ``edge_index[1]`` the node i (target) whose ranking chose j, so that in a GCN node i aggregates
the features of its k ranked neighbours. Seed 000's loop appends ``[i, neighbour]``, the reverse
direction, under which each node instead receives messages from the nodes that chose *it*.

Taught in: chapter 06 (chapters/06_rankings_to_graph_1_edges.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .similarity import cosine_similarity, gather_similarities, knn_indices, normalize_rows
from .estimators import Selection, get_spec, rowwise_names
from .topk import row_weights
from ._checks import check_int
from .utils import check_k, check_tau, check_tensor

__all__ = ["KNNGraph", "rankings_to_edges", "rankings_to_edges_loop", "knn_graph", "to_networkx", "edge_change_fraction",
           "symmetrize_dense", "edge_homophily", "class_homophily", "hop_reach"]


@dataclass
class KNNGraph:
    r"""A kNN graph built from rankings: :math:`E = \{(j\to i, \tilde w_{ij}) : j\in\mathcal N_k(i)\}`.

    Shapes:
        - edge_index: (2, E), edge_weight: (E,), E = N·k before symmetrising / self-loops
        - indices, weights: (N, k); dense: (N, N) or None

    Taught in: chapter 06 (chapters/06_rankings_to_graph_1_edges.md).

    Attributes:
        edge_index: (2, E) long; row 0 = neighbour j (source), row 1 = node i (target).
        edge_weight: (E,) float, differentiable when the estimator is.
        indices: (N, k) long, the ranked neighbours of each node.
        weights: (N, k) float, the estimator's weight of each ranked neighbour.
        num_nodes: N.
        dense: (N, N) float or ``None``: the estimator's dense selection mask (chapter 09), with
            ``dense[i, j]`` the weight of edge j -> i.
        estimator: the estimator's name.
    """

    edge_index: torch.Tensor
    edge_weight: torch.Tensor
    indices: torch.Tensor
    weights: torch.Tensor
    num_nodes: int
    dense: torch.Tensor | None = None
    estimator: str = ""
    info: dict = field(default_factory=dict)

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    def to_dense(self) -> torch.Tensor:
        """Dense weighted adjacency A (N, N) with ``A[i, j]`` = weight of edge j -> i (duplicates summed)."""
        a = torch.zeros(self.num_nodes, self.num_nodes, dtype=self.edge_weight.dtype, device=self.edge_weight.device)
        return a.index_put((self.edge_index[1], self.edge_index[0]), self.edge_weight, accumulate=True)

    def to_networkx(self):
        """A ``networkx.DiGraph`` with edge attribute ``weight`` (see :func:`to_networkx`)."""
        return to_networkx(self.edge_index, self.edge_weight, self.num_nodes)

    def detach(self) -> "KNNGraph":
        """A copy without autograd history, on the CPU (for logging and replay)."""
        return KNNGraph(self.edge_index.detach().cpu(), self.edge_weight.detach().cpu(), self.indices.detach().cpu(),
                        self.weights.detach().cpu(), self.num_nodes,
                        None if self.dense is None else self.dense.detach().cpu(), self.estimator, dict(self.info))


def rankings_to_edges(indices: torch.Tensor, weights: torch.Tensor | None = None, *, symmetric: bool = False,
                      self_loops: bool = False, self_loop_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Turn rankings into an edge list without Python loops.

    .. math::
        E = \{(j \to i) : j \in \mathcal N_k(i)\}, \qquad
        \texttt{edge\_index} = \begin{pmatrix} \mathrm{vec}(\mathcal N) \\ (0,\dots,0,1,\dots,1,\dots) \end{pmatrix}

    ``edge_index[0] = indices.flatten()``, ``edge_index[1] = arange(N).repeat_interleave(k)``, and
    ``edge_weight = weights.flatten()`` (ones when ``weights`` is None). Autograd flows through the
    weights; the indices are integers.

    With ``symmetric=True`` every edge j -> i is paired with i -> j; a pair present in both
    directions gets the mean of the two weights, a pair present in one direction keeps its weight in
    both (``torch_geometric.utils.to_undirected`` with ``reduce="mean"``). ``self_loops=True``
    appends (i -> i) with ``self_loop_weight`` (``torch_geometric.utils.add_self_loops``; leave it off
    when the GCN adds its own).

    Shapes:
        - indices: (N, k) long
        - weights: (N, k) float or None
        - edge_index: (2, E) long, E = N·k (before symmetrising / self-loops)
        - edge_weight: (E,)

    Taught in: chapter 06 (chapters/06_rankings_to_graph_1_edges.md).
    """
    if not isinstance(indices, torch.Tensor) or indices.dim() != 2:
        raise ValueError(f"indices must be a 2-D (N, k) tensor of neighbour indices, got "
                         f"{tuple(indices.shape) if isinstance(indices, torch.Tensor) else type(indices).__name__}")
    if indices.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"indices must be an integer tensor, got dtype {indices.dtype}")
    n, k = indices.shape
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n):
        raise ValueError(f"indices must lie in [0, N-1] = [0, {n - 1}]; got values in [{int(indices.min())}, {int(indices.max())}]")
    if weights is None:
        weights = torch.ones(n, k, device=indices.device)
    elif not isinstance(weights, torch.Tensor) or weights.shape != indices.shape:
        raise ValueError(f"weights must have the same shape as indices {tuple(indices.shape)}, got "
                         f"{tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__}")
    else:
        check_tensor(weights, "weights", ndim=2)
    src = indices.reshape(-1).long()
    dst = torch.arange(n, device=indices.device).repeat_interleave(k)
    edge_index = torch.stack([src, dst])
    edge_weight = weights.reshape(-1)
    if symmetric or self_loops:
        from torch_geometric.utils import add_self_loops, to_undirected  # heavy: not imported by `import bgcn`

        if symmetric:
            edge_index, edge_weight = to_undirected(edge_index, edge_weight, num_nodes=n, reduce="mean")
        if self_loops:
            edge_index, edge_weight = add_self_loops(edge_index, edge_weight, fill_value=float(self_loop_weight),
                                                     num_nodes=n)
    return edge_index, edge_weight


def rankings_to_edges_loop(rankings: torch.Tensor) -> torch.Tensor:
    """Seed 000's Python double loop, kept as the slow reference: returns (2, N·k) edges ``[i, neighbour]``.

    Note the direction: the seed appends ``[i, neighbour]`` (i is the source). Flip the rows to get
    our convention: ``rankings_to_edges_loop(r).flip(0)`` equals ``rankings_to_edges(r)[0]``.

    Shapes: rankings (N, k) -> (2, N·k)

    Taught in: chapter 06 (chapters/06_rankings_to_graph_1_edges.md).
    """
    edges = []
    n, k = rankings.shape
    for i in range(n):
        for j in range(k):
            edges.append([i, int(rankings[i, j])])
    return torch.tensor(edges, dtype=torch.long).reshape(-1, 2).T.contiguous()


def to_networkx(edge_index: torch.Tensor, edge_weight: torch.Tensor | None = None, num_nodes: int | None = None):
    r"""Export to a ``networkx.DiGraph``: nodes 0..N-1, an arc :math:`j \to i` per column
    ``(j, i)`` of ``edge_index`` with attribute ``weight`` :math:`= \sum_e w_e` (duplicates summed).

    Shapes:
        - edge_index: (2, E) integer, row 0 = source j, row 1 = target i
        - edge_weight: (E,) or None (weight 1)
        - output: a DiGraph with N = ``num_nodes`` (default ``edge_index.max() + 1``) nodes

    Taught in: chapter 06 (chapters/06_rankings_to_graph_1_edges.md).
    """
    import networkx as nx

    if not isinstance(edge_index, torch.Tensor):
        raise TypeError(f"edge_index must be a torch.Tensor of shape (2, E), got {type(edge_index).__name__}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.is_floating_point():
        raise ValueError(f"edge_index must be an integer tensor of shape (2, E) (row 0 = source j, row 1 = target i), "
                         f"got shape {tuple(edge_index.shape)} dtype {edge_index.dtype}")
    if edge_weight is not None:
        check_tensor(edge_weight, "edge_weight", ndim=1)
        if edge_weight.shape[0] != edge_index.shape[1]:
            raise ValueError(f"edge_weight has {edge_weight.shape[0]} entries but edge_index has E = "
                             f"{edge_index.shape[1]} edges; give one weight per column")
    hi = int(edge_index.max()) + 1 if edge_index.numel() else 0
    n = int(num_nodes if num_nodes is not None else hi)
    if edge_index.numel() and (int(edge_index.min()) < 0 or hi > n):
        raise ValueError(f"edge_index holds node ids in [{int(edge_index.min())}, {hi - 1}] but num_nodes={n}; "
                         f"ids must lie in [0, {n - 1}]")
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    ei = edge_index.detach().cpu().tolist()
    ew = [1.0] * len(ei[0]) if edge_weight is None else edge_weight.detach().cpu().double().tolist()
    for s, t, w in zip(ei[0], ei[1], ew):
        if g.has_edge(s, t):
            g[s][t]["weight"] += w
        else:
            g.add_edge(s, t, weight=w)
    return g


def edge_change_fraction(old_indices: torch.Tensor, new_indices: torch.Tensor) -> float:
    r"""Fraction of kNN edges that differ between two rankings (order within a row ignored).

    :math:`1 - \frac{1}{Nk}\sum_i |\mathcal N^{old}_k(i) \cap \mathcal N^{new}_k(i)|`

    Shapes: old_indices, new_indices (N, k) -> float in [0, 1]

    Taught in: chapter 08 (chapters/08_end_to_end_2_tau_n.md).
    """
    for nm, t in (("old_indices", old_indices), ("new_indices", new_indices)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{nm} must be an (N, k) tensor of neighbour indices (KNNGraph.indices), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if old_indices.shape != new_indices.shape:
        raise ValueError(f"old_indices {tuple(old_indices.shape)} and new_indices {tuple(new_indices.shape)} must have the same shape")
    n, k = old_indices.shape
    if n * k == 0:
        return 0.0
    old, new = old_indices.detach().cpu(), new_indices.detach().cpu()
    same = (new.unsqueeze(2) == old.unsqueeze(1)).any(2).sum()  # O(N k^2), no N x N matrix
    return 1.0 - float(same) / float(n * k)


def symmetrize_dense(adj: torch.Tensor) -> torch.Tensor:
    r"""Symmetrise a dense adjacency with the rule of :func:`rankings_to_edges` (``symmetric=True``).

    .. math::
        A^{\text{sym}}_{ij} = \frac{A_{ij} + A_{ji}}{\max\big(1,\ [A_{ij}\ne0] + [A_{ji}\ne0]\big)}

    A pair present both ways gets the mean of its two weights, a pair present one way keeps its
    weight in both directions, and an absent pair stays 0 — the same weights as the sparse path
    (``to_undirected(..., reduce="mean")``), so ``symmetric=True`` means one thing on both paths.
    The count in the denominator is read off the forward values and carries no gradient, so the
    backward of a selection estimator (whose forward is 0/1) still reaches every entry.

    Shapes: adj (N, N) -> (N, N)

    Taught in: chapter 06 (chapters/06_rankings_to_graph_1_edges.md); used in chapter 09.
    """
    check_tensor(adj, "adj", ndim=2, finite=False)
    if adj.shape[0] != adj.shape[1]:
        raise ValueError(f"adj must be a square (N, N) adjacency, got shape {tuple(adj.shape)}")
    present = (adj.detach() != 0).to(adj.dtype)
    count = (present + present.transpose(0, 1)).clamp_min(1.0)
    return (adj + adj.transpose(0, 1)) / count


def edge_homophily(indices: torch.Tensor, labels: torch.Tensor) -> float:
    r"""Edge homophily of a kNN graph: the share of its edges that join two images of the same class.

    .. math::
        h = \frac{1}{Nk}\sum_{i=1}^{N}\sum_{j\in\mathcal N_k(i)} [y_i = y_j]

    The value of ``torch_geometric.utils.homophily(edge_index, labels, method="edge")`` on the
    edges of :func:`rankings_to_edges`, computed here in float64: PyG averages in float32, which
    differs in the last bits (e.g. 1/3), and committed results hold these numbers.

    An *analysis* quantity: it reads every image's label, so it must never enter training; it says
    whether a graph is a better graph for the task (more same-class neighbours), which "edges
    changed" alone cannot.

    Shapes: indices (N, k) integer, labels (N,) integer -> float in [0, 1]

    Taught in: chapter 08 (chapters/08_end_to_end_2_tau_n.md).
    """
    if not isinstance(indices, torch.Tensor) or indices.dim() != 2 or indices.is_floating_point():
        raise ValueError(f"indices must be an integer (N, k) tensor of neighbour indices (KNNGraph.indices), got "
                         f"{tuple(indices.shape) if isinstance(indices, torch.Tensor) else type(indices).__name__}")
    n = indices.shape[0]
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,) or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape ({n},), one class per node, got "
                         f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    if indices.numel() == 0:
        return float("nan")
    lab = labels.detach().cpu().long()
    idx = indices.detach().cpu().long()
    if int(idx.min()) < 0 or int(idx.max()) >= n:
        raise ValueError(f"indices must lie in [0, {n - 1}]")
    return float((lab[idx] == lab[:, None]).double().mean())


def class_homophily(indices: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    r"""Edge homophily per class: of the edges that start at an image of class c, the share that end in class c.

    .. math::
        h_c = \frac{1}{k\,\lvert\{i : y_i = c\}\rvert}\sum_{i : y_i = c}\ \sum_{j\in\mathcal N_k(i)} [y_j = c]

    The edges of node i are its k ranked neighbours, as in :func:`edge_homophily`, whose value is the
    mean of :math:`h_c` weighted by the class sizes. A class without images gets NaN. Where
    :func:`edge_homophily` says how good a graph is, this says *for which classes*: a change of the
    graph during training shows up as the classes whose bars move. An analysis quantity (it reads
    every label), never used in training.

    Shapes: indices (N, k) integer, labels (N,) integer -> (C,) float64, C = ``num_classes`` (default
    ``labels.max() + 1``)

    Taught in: chapter 12 (chapters/12_real_extractor_2_end_to_end.md).
    """
    edge_homophily(indices, labels)  # the same checks
    lab = labels.detach().cpu().long()
    if lab.numel() and int(lab.min()) < 0:
        raise ValueError(f"labels must be classes 0, 1, ..., C - 1; got {int(lab.min())}")
    idx = indices.detach().cpu().long()
    c = int(lab.max()) + 1 if num_classes is None else check_int(num_classes, "num_classes", int(lab.max()) + 1,
                                                                  hint="more than the largest label")
    same = (lab[idx] == lab[:, None]).double().sum(1)                      # (N,) same-class edges of each node
    hits = torch.zeros(c, dtype=torch.float64).index_add_(0, lab, same)
    count = torch.bincount(lab, minlength=c).double() * idx.shape[1]
    return torch.where(count > 0, hits / count.clamp_min(1), torch.full_like(hits, float("nan")))


def hop_reach(indices: torch.Tensor, sources: torch.Tensor, hops: int) -> torch.Tensor:
    r"""Which nodes lie within ``hops`` edges of a source node in the kNN graph, edges taken both ways.

    .. math::
        R_0 = \text{sources},\qquad R_{h+1} = R_h \cup \{i : \exists j\in R_h,\ j\in\mathcal N_k(i)\ \text{or}\
        i\in\mathcal N_k(j)\}

    A GCN with L layers sees a label only within L hops: ``hop_reach(graph.indices, train_mask, 2)``
    is the set of nodes a 2-layer GCN can reach from the labelled ones (chapter 13 reads it on the
    test nodes). No N×N tensor is built (one pass over the N·k edges a hop).

    Shapes: indices (N, k) integer, sources (N,) bool -> (N,) bool

    Taught in: chapter 13 (chapters/13_what_we_found_1_benchmark.md).
    """
    if not isinstance(indices, torch.Tensor) or indices.dim() != 2 or indices.is_floating_point():
        raise ValueError("indices must be an integer (N, k) tensor of neighbour indices (KNNGraph.indices)")
    n = indices.shape[0]
    if not isinstance(sources, torch.Tensor) or sources.shape != (n,) or sources.dtype != torch.bool:
        raise ValueError(f"sources must be a bool tensor of shape ({n},) (e.g. the train mask)")
    hops = check_int(hops, "hops", 0, hint="the number of GCN layers")
    idx = indices.detach().cpu().long()
    rows = torch.arange(n).repeat_interleave(idx.shape[1])
    cols = idx.reshape(-1)
    reach = sources.detach().cpu().clone()
    for _ in range(hops):
        nxt = reach.clone()
        nxt[rows[reach[cols]]] = True   # i reaches a source among its neighbours
        nxt[cols[reach[rows]]] = True   # a node that has a source in its own list
        reach = nxt
    return reach


def _quoted(names) -> str:
    q = [repr(n) for n in names]
    return ", ".join(q[:-1]) + " or " + q[-1] if len(q) > 1 else "".join(q)


def knn_graph(features: torch.Tensor, k: int, estimator="softmax", tau: float = 1.0, *, exclude_self: bool = True,
              symmetric: bool = False, self_loops: bool = False, chunk_size: int | None = None,
              generator: torch.Generator | None = None, **estimator_kw) -> KNNGraph:
    r"""Features → cosine similarity → estimator → edges, differentiable end to end.

    .. math::
        S = \hat F \hat F^\top,\quad (\mathcal N, \tilde w) = \text{estimator}(S, k, \tau),\quad
        E = \{(j\to i, \tilde w_{ij}) : j\in\mathcal N_k(i)\}

    The node itself is excluded from its ranking by default (``exclude_self=True``): its cosine
    similarity is 1, so it would always be its own top-1 (the GCN adds self-loops anyway).

    ``chunk_size`` (only for the row-wise estimators without a row normaliser,
    :func:`bgcn.estimators.rowwise_names` ``(normaliser=False)``: ``"hard"``, ``"values"`` and
    ``"masked_softmax"``, which need no full rows): the neighbour indices are found chunk by chunk under ``no_grad`` and the k similarities
    per row are recomputed with autograd, so memory is O(N·chunk + N·k·D) instead of O(N²)
    (chapter 10).

    Args:
        features: :math:`F`, (N, D), may require grad.
        k: neighbours per node.
        estimator: a name in :data:`bgcn.ESTIMATORS` or a callable returning a :class:`~bgcn.topk.Selection`.
        tau: temperature τ > 0 (ignored by estimators that have none).
        symmetric, self_loops: see :func:`rankings_to_edges`.
        generator: random generator for stochastic estimators.
        **estimator_kw: passed to the estimator.

    Shapes:
        - features: (N, D)
        - output.edge_index: (2, E), output.edge_weight: (E,), E = N·k before symmetrising
        - output.indices, output.weights: (N, k)

    Taught in: chapter 06 (chapters/06_rankings_to_graph_1_edges.md); used in chapter 08.
    """
    check_tensor(features, "features", ndim=2)
    n = features.shape[0]
    k = check_k(k, n, exclude_self=exclude_self)
    tau = check_tau(tau)
    spec = get_spec(estimator)
    fn, name = spec.fn, spec.name
    if chunk_size is not None:
        if not spec.chunkable:
            raise ValueError(f"chunk_size works with estimator {_quoted(rowwise_names(normaliser=False))} (no full "
                             f"rows needed), not {name!r}; leave chunk_size=None for it")
        idx = knn_indices(features, k, exclude_self=exclude_self, chunk_size=chunk_size)
        fhat = normalize_rows(features)
        vals = gather_similarities(fhat, fhat, idx)  # (N, k), O(N k D) autograd memory
        sel = Selection(idx, row_weights(vals, name, tau))
    else:
        s = cosine_similarity(features)
        sel = fn(s, k, tau, exclude_self=exclude_self, generator=generator, **estimator_kw)
        if not isinstance(sel, Selection):
            raise TypeError(f"estimator {name!r} must return a bgcn.topk.Selection, got {type(sel).__name__}")
    edge_index, edge_weight = rankings_to_edges(sel.indices, sel.weights, symmetric=symmetric, self_loops=self_loops)
    info = {}
    if getattr(sel, "log_prob", None) is not None:  # score-function estimators (chapter 09): log p_i, (N,)
        info["log_prob"] = sel.log_prob
    return KNNGraph(edge_index, edge_weight, sel.indices, sel.weights, n, sel.dense, name, info)
