"""The trainable GCN: two PyG ``GCNConv`` layers, with weighted edges or a dense (soft) adjacency.

Edge direction follows PyG (``flow="source_to_target"``): ``edge_index[0]`` is the neighbour
``j`` (source), ``edge_index[1]`` the node ``i`` (target) that aggregates it. The equivalent dense
matrix has ``A[i, j] = e_{j,i}`` (row = target, column = source), see :func:`edge_index_to_dense`.

Taught in: chapter 07 (chapters/07_gcn_backward.md); used end to end in chapter 08
(chapters/08_end_to_end_1_loop.md).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from bgcn.gcn_spec import normalized_adjacency
from bgcn._checks import check_bool, check_int, check_number, check_tensor

__all__ = ["GCN", "dense_gcn_norm", "edge_index_to_dense", "SPARSE_FROM"]

#: without autograd, a graph of at least this many edges is propagated as one sparse matrix product
#: (``torch.sparse.mm`` with the normalised adjacency) instead of PyG's per-edge messages: (N, hidden)
#: memory instead of (E, hidden), 2.8 GB a layer at a million nodes with k = 10
SPARSE_FROM = 1_000_000


def _gcn_conv_class():
    """PyG's ``GCNConv``, imported on first use: ``torch_geometric.nn`` costs about a second, half
    of ``import bgcn``, and only a model needs it."""
    import warnings

    with warnings.catch_warnings():
        # torch_geometric 2.8 calls the deprecated torch.jit.script at import time; not ours
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        from torch_geometric.nn import GCNConv

    return GCNConv


def _check_edge_index(edge_index, num_nodes: int, device: torch.device | None = None) -> torch.Tensor:
    if not isinstance(edge_index, torch.Tensor):
        raise TypeError(f"edge_index must be a torch.Tensor of shape (2, E), got {type(edge_index).__name__}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape (2, E) (row 0 = source j, row 1 = target i), "
                         f"got {tuple(edge_index.shape)}")
    if edge_index.dtype != torch.long:
        raise TypeError(f"edge_index must be a long (int64) tensor, got {edge_index.dtype}; call .long()")
    if device is not None and edge_index.device != device:
        raise ValueError(f"edge_index is on {edge_index.device} but x is on {device}; move it with .to(x.device)")
    if edge_index.numel():
        lo, hi = int(edge_index.min()), int(edge_index.max())
        if lo < 0 or hi >= num_nodes:
            raise ValueError(f"edge_index holds node ids in [{lo}, {hi}] but there are {num_nodes} nodes; "
                             f"ids must lie in [0, {num_nodes - 1}]")
    return edge_index


def _check_edge_weight(edge_weight, num_edges: int, ref: torch.Tensor | None = None) -> torch.Tensor:
    check_tensor(edge_weight, "edge_weight", ndim=1)
    if edge_weight.shape[0] != num_edges:
        raise ValueError(f"edge_weight has {edge_weight.shape[0]} entries but edge_index has E = {num_edges} "
                         f"edges; give one weight per column of edge_index")
    if ref is not None and edge_weight.device != ref.device:
        raise ValueError(f"edge_weight is on {edge_weight.device} but x is on {ref.device}; "
                         f"move it with .to(x.device)")
    return edge_weight


def _check_adj(adj, num_nodes: int | None = None, ref: torch.Tensor | None = None) -> torch.Tensor:
    check_tensor(adj, "adj", ndim=2)
    if adj.shape[0] != adj.shape[1]:
        raise ValueError(f"adj must be a square (N, N) matrix, got shape {tuple(adj.shape)}")
    if num_nodes is not None and adj.shape[0] != num_nodes:
        raise ValueError(f"adj is {tuple(adj.shape)} but x has N = {num_nodes} rows; "
                         f"adj must be ({num_nodes}, {num_nodes})")
    if ref is not None and adj.device != ref.device:
        raise ValueError(f"adj is on {adj.device} but x is on {ref.device}; move it with .to(x.device)")
    return adj


def edge_index_to_dense(edge_index: torch.Tensor, edge_weight: torch.Tensor | None = None,
                        num_nodes: int | None = None) -> torch.Tensor:
    r"""The dense adjacency of a PyG edge list: :math:`A_{ij} = \sum_{e:\, j \to i} w_e`.

    Row = target ``i = edge_index[1]``, column = source ``j = edge_index[0]``, so that
    ``A @ X`` aggregates, for every node, its in-neighbours' features exactly as
    ``MessagePassing(flow="source_to_target", aggr="add")`` does. Duplicate edges are summed.
    ``edge_weight=None`` means weight 1. Differentiable in ``edge_weight``.

    Shapes:
        - edge_index: (2, E) long
        - edge_weight: (E,) or None
        - returns A: (N, N), N = ``num_nodes`` (default ``edge_index.max() + 1``)

    Taught in: chapter 07 (chapters/07_gcn_backward.md)
    """
    if num_nodes is None:
        if not isinstance(edge_index, torch.Tensor):
            raise TypeError(f"edge_index must be a torch.Tensor of shape (2, E), got {type(edge_index).__name__}")
        num_nodes = int(edge_index.max()) + 1 if edge_index.numel() else 0
    num_nodes = check_int(num_nodes, "num_nodes", 0, hint="the number of nodes N")
    edge_index = _check_edge_index(edge_index, num_nodes)
    E = edge_index.shape[1]
    if edge_weight is None:
        edge_weight = torch.ones(E, dtype=torch.get_default_dtype(), device=edge_index.device)
    else:
        _check_edge_weight(edge_weight, E, edge_index)
    A = torch.zeros(num_nodes, num_nodes, dtype=edge_weight.dtype, device=edge_weight.device)
    # index_put with accumulate=True sums duplicates and is differentiable in edge_weight.
    return A.index_put((edge_index[1], edge_index[0]), edge_weight, accumulate=True)


def dense_gcn_norm(adj: torch.Tensor, add_self_loops: bool = True) -> torch.Tensor:
    r"""Dense GCN normalisation :math:`\hat A = D^{-1/2}(A + I)D^{-1/2}`, as PyG's ``gcn_norm``.

    ``adj[i, j]`` is the weight of the edge ``j → i`` (see :func:`edge_index_to_dense`).
    :math:`D_{ii} = 1 + \sum_j A_{ij}` is the weighted *in*-degree of the target ``i`` — what
    ``gcn_norm`` computes from ``edge_index[1]`` — so for a directed graph
    :math:`\hat A_{ij} = w_{j\to i} / \sqrt{D_{ii} D_{jj}}` equals PyG's coefficient of the message
    ``j → i``. ``add_self_loops=False`` leaves out the ``I``; a node of degree 0 then gets a zero row
    and column (no NaN in the forward or in the gradient). Differentiable in ``adj``.

    Difference from PyG: on an edge list that *already has* a self-loop ``i → i`` with weight
    ``w``, ``gcn_norm`` (``add_remaining_self_loops``) keeps ``w`` instead of adding 1; this
    function always adds 1 (``A + I``). Both agree on graphs without self-loops.

    Shapes:
        - adj: (N, N)
        - returns Â: (N, N)

    Taught in: chapter 07 (chapters/07_gcn_backward.md)
    """
    _check_adj(adj)
    check_bool(add_self_loops, "add_self_loops")
    # the same operator as the teaching spec's (chapter 07): one implementation for both
    return normalized_adjacency(adj, add_self_loops)


class GCN(nn.Module):
    r"""Two-layer graph convolutional network (Kipf & Welling, 2017) for node classification.

    Each layer is a PyG ``GCNConv``:

    .. math::
        \mathbf{X}' = \hat{\mathbf{D}}^{-1/2} \hat{\mathbf{A}} \hat{\mathbf{D}}^{-1/2}
        \mathbf{X} \mathbf{\Theta} + \mathbf{b},

    with :math:`\hat{\mathbf{A}} = \mathbf{A} + \mathbf{I}` and
    :math:`\hat{D}_{ii} = \sum_j \hat{A}_{ij}` (weighted in-degree of the target ``i``). The model is

    .. math::
        \mathrm{out} = \log\mathrm{softmax}\big(\mathrm{GCN}_2(\mathrm{dropout}(\mathrm{ReLU}(
        \mathrm{GCN}_1(X))))\big).

    The graph comes in one of two forms (exactly one):

    - ``edge_index`` (+ optional ``edge_weight``): sparse, through ``GCNConv`` itself; the weights
      are passed to it, so ``∂loss/∂edge_weight`` flows back (to a differentiable kNN graph).
    - ``adj``: a dense ``(N, N)`` matrix with ``adj[i, j]`` = weight of ``j → i`` (e.g. a soft
      selection mask, differentiable); the *same* parameters (``conv.lin.weight``, ``conv.bias``)
      are applied with :func:`dense_gcn_norm`. On a graph without self-loops both forms give the
      same output (to rounding).

    Features of another floating dtype than the layers' (float64 from ``torch.from_numpy``,
    bf16/fp16 from a half-precision backbone) are cast to the layers' dtype (``conv1.lin.weight``),
    differentiably; the output is in the layers' dtype. Call ``.double()`` on the model to compute
    in float64.

    Args:
        in_channels (int): input feature size ``D``.
        hidden_channels (int): hidden size.
        out_channels (int): number of classes ``C``.
        dropout (float): dropout probability between the layers (training mode only).
        normalize (bool): symmetric normalisation (and self-loops) on the fly; ``False`` uses the
            raw weights ``A X Θ + b``.
        add_self_loops (bool, optional): add ``I`` before normalising; default ``normalize``.
            ``True`` with ``normalize=False`` is refused, as in PyG.
        cached (bool): cache the normalised edge weights of the first call (sparse path only).
            Only for a *fixed* graph: a cached graph receives no gradient after the first call,
            so leave it ``False`` when the graph is learnt end to end.

    Shapes:
        - **input:** x (N, F_in); edge_index (2, E) and edge_weight (E,) *or* adj (N, N)
        - **output:** log-probabilities (N, C)

    Taught in: chapter 07 (chapters/07_gcn_backward.md); used in chapter 08
    (chapters/08_end_to_end_1_loop.md).
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, dropout: float = 0.5,
                 normalize: bool = True, add_self_loops: bool | None = None, cached: bool = False):
        super().__init__()
        in_channels = check_int(in_channels, "in_channels", 1, hint="a positive number of channels")
        hidden_channels = check_int(hidden_channels, "hidden_channels", 1, hint="a positive number of channels")
        out_channels = check_int(out_channels, "out_channels", 1, hint="a positive number of channels")
        dropout = check_number(dropout, "dropout", 0.0, 1.0, open_max=True, hint="a probability")
        normalize = check_bool(normalize, "normalize")
        if add_self_loops is None:
            add_self_loops = normalize
        add_self_loops = check_bool(add_self_loops, "add_self_loops")
        if add_self_loops and not normalize:
            raise ValueError("add_self_loops=True needs normalize=True (GCNConv adds self-loops only while "
                             "normalising); pass add_self_loops=False or normalize=True")
        cached = check_bool(cached, "cached")
        self.in_channels, self.hidden_channels, self.out_channels = in_channels, hidden_channels, out_channels
        self.dropout = float(dropout)
        self.normalize, self.add_self_loops, self.cached = normalize, add_self_loops, cached
        kw = dict(normalize=normalize, add_self_loops=add_self_loops, cached=cached)
        GCNConv = _gcn_conv_class()
        self.conv1 = GCNConv(in_channels, hidden_channels, **kw)
        self.conv2 = GCNConv(hidden_channels, out_channels, **kw)

    def reset_parameters(self) -> None:
        """Re-initialise both layers (Glorot weights, zero bias) and drop any cached graph."""
        self.conv1.reset_parameters()
        self.conv2.reset_parameters()

    # -- graph handling --------------------------------------------------------------------

    def _prepare(self, x, edge_index, edge_weight, adj):
        check_tensor(x, "x", ndim=2, finite=False)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x has {x.shape[1]} features per node but the GCN was built with "
                             f"in_channels={self.in_channels}")
        w = self.conv1.lin.weight
        if x.device != w.device:
            raise ValueError(f"x is on {x.device} but the GCN's parameters are on {w.device}; "
                             f"move one of them, e.g. x.to({str(w.device)!r})")
        check_tensor(x, "x")                           # finite
        if x.dtype != w.dtype:
            # float64 (torch.from_numpy), bf16/fp16 features: computed in the layers' dtype (the cast
            # is differentiable, so the gradient reaches x in its own dtype); under autocast the
            # matmuls still run in the autocast dtype.
            x = x.to(w.dtype)
        n = x.shape[0]
        if (edge_index is None) == (adj is None):
            which = "both" if adj is not None else "neither"
            raise ValueError(f"give exactly one of edge_index (sparse graph) or adj (dense (N, N) matrix); "
                             f"got {which}")
        if adj is not None:
            if edge_weight is not None:
                raise ValueError("edge_weight goes with edge_index; with adj put the weights into adj itself")
            adj = _check_adj(adj, n, x)
            if adj.dtype != x.dtype:
                adj = adj.to(x.dtype)
            a_hat = dense_gcn_norm(adj, self.add_self_loops) if self.normalize else adj
            return x, None, None, a_hat
        edge_index = _check_edge_index(edge_index, n, x.device)
        if edge_weight is not None:
            _check_edge_weight(edge_weight, edge_index.shape[1], x)
            if edge_weight.dtype != x.dtype:
                edge_weight = edge_weight.to(x.dtype)
        return x, edge_index, edge_weight, None

    def _sparse_eval(self, x, edge_index, edge_weight, a_hat):
        r"""Large graphs without autograd: :math:`\hat A = D^{-1/2}(A + I)D^{-1/2}` as one sparse CSR
        matrix (rows = targets) plus its diagonal, with exactly PyG's ``gcn_norm`` weights: the degree
        sums the weights into each target, a self-loop of weight 1 is added where a node has none (an
        existing self-loop keeps its weight). Returns ``(None, None, (csr, diagonal or None))``."""
        if a_hat is not None or torch.is_grad_enabled() or edge_index.shape[1] < SPARSE_FROM \
                or x.dtype not in (torch.float32, torch.float64) or torch.is_autocast_enabled(x.device.type):
            return edge_index, edge_weight, a_hat  # (no CSR product in half precision: PyG's path)
        n = x.shape[0]
        src, dst = edge_index[0], edge_index[1]
        w = torch.ones(src.shape[0], dtype=x.dtype, device=x.device) if edge_weight is None else edge_weight
        diag = None
        if self.normalize:
            if self.add_self_loops:
                loops = src == dst
                diag = torch.ones(n, dtype=x.dtype, device=x.device)
                if bool(loops.any()):  # PyG's "remaining" rule: an existing self-loop keeps its weight
                    diag[src[loops]] = w[loops]
                    src, dst, w = src[~loops], dst[~loops], w[~loops]
            deg = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, dst, w)
            if diag is not None:
                deg += diag
            dinv = deg.pow(-0.5).masked_fill_(deg == 0, 0.0)
            w = dinv[src] * w * dinv[dst]
            diag = None if diag is None else dinv * diag * dinv
        if not bool((dst[1:] >= dst[:-1]).all()):  # CSR rows: the edges grouped by target
            order = torch.argsort(dst, stable=True)
            src, dst, w = src[order], dst[order], w[order]
        crow = torch.zeros(n + 1, dtype=torch.long, device=x.device)
        crow[1:] = torch.cumsum(torch.bincount(dst, minlength=n), 0)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            a = torch.sparse_csr_tensor(crow, src, w, (n, n), check_invariants=False)
        return None, None, (a, diag)

    @staticmethod
    def _conv(conv, x, edge_index, edge_weight, a_hat):
        if a_hat is None:
            return conv(x, edge_index, edge_weight)
        if isinstance(a_hat, tuple):  # (sparse Â without its diagonal, the diagonal): _sparse_eval
            a, diag = a_hat
            h = conv.lin(x)
            out = a @ h
            if diag is not None:
                out.addcmul_(diag.unsqueeze(1), h)  # in place: one (N, hidden) buffer fewer
        else:
            out = a_hat @ conv.lin(x)                  # same Θ as the sparse path
        return out + conv.bias if conv.bias is not None else out

    # -- public -----------------------------------------------------------------------------

    def embed(self, x: torch.Tensor, edge_index: torch.Tensor | None = None,
              edge_weight: torch.Tensor | None = None, *, adj: torch.Tensor | None = None) -> torch.Tensor:
        r"""The hidden node representation :math:`H_1 = \mathrm{ReLU}(\mathrm{GCN}_1(X))` (before dropout).

        Shapes:
            - x (N, F_in); edge_index (2, E), edge_weight (E,) *or* adj (N, N)
            - returns H1 (N, hidden_channels)

        Taught in: chapter 07 (chapters/07_gcn_backward.md)
        """
        x, edge_index, edge_weight, a_hat = self._prepare(x, edge_index, edge_weight, adj)
        edge_index, edge_weight, a_hat = self._sparse_eval(x, edge_index, edge_weight, a_hat)
        return F.relu(self._conv(self.conv1, x, edge_index, edge_weight, a_hat))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor | None = None,
                edge_weight: torch.Tensor | None = None, *, adj: torch.Tensor | None = None) -> torch.Tensor:
        r"""Log-probabilities :math:`\log\mathrm{softmax}(\mathrm{GCN}_2(\mathrm{dropout}(\mathrm{ReLU}(\mathrm{GCN}_1(X)))))`.

        Shapes:
            - x (N, F_in); edge_index (2, E), edge_weight (E,) *or* adj (N, N)
            - returns (N, C) log-probabilities

        Taught in: chapter 07 (chapters/07_gcn_backward.md); used in chapter 08
        (chapters/08_end_to_end_1_loop.md).
        """
        x, edge_index, edge_weight, a_hat = self._prepare(x, edge_index, edge_weight, adj)
        edge_index, edge_weight, a_hat = self._sparse_eval(x, edge_index, edge_weight, a_hat)
        h = F.relu(self._conv(self.conv1, x, edge_index, edge_weight, a_hat))
        h = F.dropout(h, p=self.dropout, training=self.training)
        out = self._conv(self.conv2, h, edge_index, edge_weight, a_hat)
        return F.log_softmax(out, dim=-1)

    def extra_repr(self) -> str:
        return (f"dropout={self.dropout}, normalize={self.normalize}, add_self_loops={self.add_self_loops}, "
                f"cached={self.cached}")
