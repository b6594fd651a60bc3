"""The GCN layer and a 2-layer GCN with mean-pool readout, forward *and* backward written by hand.

This module follows seed ``002_4ee46ed17765942d.txt`` (a specification of a 2-layer GCN with an
explicit backward): pure functions, no ``torch.autograd`` inside, every shape explicit. It exists
for teaching; the trainable model is :class:`bgcn.gcn.GCN` on PyG's ``GCNConv``.

One layer (Kipf & Welling, 2017) with an adjacency-like operator ``A`` (usually
``Â = D^-1/2 (A + I) D^-1/2`` from :func:`normalized_adjacency`)::

    Z = A X W + b

and its vector-Jacobian products for an upstream gradient ``dZ = ∂L/∂Z``::

    dA = dZ (X W)ᵀ      dX = Aᵀ dZ Wᵀ      dW = (A X)ᵀ dZ      db = Σ_rows dZ

The 2-layer model::

    Z1 = A X W1 + b1,   H1 = ReLU(Z1),   H2 = A H1 W2 + b2,   y = mean_nodes(H2)

Taught in: chapter 07 (chapters/07_gcn_backward.md)
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from bgcn._checks import check_bool, check_int, check_positive, check_tensor

__all__ = [
    "gcn_layer_forward",
    "gcn_layer_backward",
    "normalized_adjacency",
    "GCN2Params",
    "GCN2Cache",
    "GCN2Grads",
    "init_gcn2_params",
    "gcn2_forward",
    "gcn2_backward",
]


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------

def _check_same_dtype(ref: torch.Tensor, ref_name: str, **others: torch.Tensor) -> None:
    for name, t in others.items():
        if t.dtype != ref.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; "
                             f"use one dtype for all inputs (e.g. {name}.to({ref_name}.dtype))")
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; "
                             f"move it with {name}.to({ref_name}.device)")


def _check_adjacency(A: torch.Tensor, name: str = "A") -> int:
    check_tensor(A, name, ndim=2)
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"{name} must be square (N, N), got shape {tuple(A.shape)}")
    if A.shape[0] == 0:
        raise ValueError(f"{name} has 0 nodes; the graph needs N >= 1 nodes")
    return A.shape[0]


def _check_layer(A: torch.Tensor, X: torch.Tensor, W: torch.Tensor, b: torch.Tensor,
                 names: tuple[str, str, str, str] = ("A", "X", "W", "b")) -> tuple[int, int, int]:
    nA, nX, nW, nb = names
    n = _check_adjacency(A, nA)
    check_tensor(X, nX, ndim=2)
    check_tensor(W, nW, ndim=2)
    check_tensor(b, nb, ndim=1)
    _check_same_dtype(A, nA, **{nX: X, nW: W, nb: b})
    if X.shape[0] != n:
        raise ValueError(f"{nX} has {X.shape[0]} rows but {nA} is ({n}, {n}); "
                         f"{nX} needs one row per node, shape ({n}, D_in)")
    if W.shape[0] != X.shape[1]:
        raise ValueError(f"{nW} has {W.shape[0]} rows but {nX} has {X.shape[1]} columns; "
                         f"{nW} must be (D_in, D_out) = ({X.shape[1]}, D_out)")
    if b.shape[0] != W.shape[1]:
        raise ValueError(f"{nb} has length {b.shape[0]} but {nW} has {W.shape[1]} columns; "
                         f"{nb} must be (D_out,) = ({W.shape[1]},)")
    return n, X.shape[1], W.shape[1]


# --------------------------------------------------------------------------------------------
# one layer
# --------------------------------------------------------------------------------------------

def gcn_layer_forward(A: torch.Tensor, X: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r"""One GCN layer: :math:`Z = A X W + b`.

    ``A`` is the adjacency-like operator the layer propagates with (Kipf & Welling use
    :math:`\hat A = D^{-1/2}(A+I)D^{-1/2}`, see :func:`normalized_adjacency`); row ``i`` of ``Z``
    mixes the rows ``j`` of ``X W`` with weights ``A[i, j]``, then adds the bias ``b``.

    Shapes:
        - A: (N, N)
        - X: (N, D_in)
        - W: (D_in, D_out)
        - b: (D_out,)
        - returns Z: (N, D_out)

    Taught in: chapter 07 (chapters/07_gcn_backward.md)
    """
    _check_layer(A, X, W, b)
    return A @ (X @ W) + b


def gcn_layer_backward(A: torch.Tensor, X: torch.Tensor, W: torch.Tensor, b: torch.Tensor,
                       dZ: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Vector-Jacobian products of :func:`gcn_layer_forward` for ``dZ = ∂L/∂Z``, by hand.

    .. math::
        dA = dZ\,(XW)^\top,\quad dX = A^\top dZ\, W^\top,\quad
        dW = (AX)^\top dZ,\quad db = \textstyle\sum_{i} dZ_{i,:}

    ``b`` is not needed by the formulas (the layer is affine in ``b``); it is taken so that the
    signature mirrors the forward and its shape is checked. Exact (float64) against autograd.

    Shapes:
        - A: (N, N), X: (N, D_in), W: (D_in, D_out), b: (D_out,)
        - dZ: (N, D_out)
        - returns (dA (N, N), dX (N, D_in), dW (D_in, D_out), db (D_out,))

    Taught in: chapter 07 (chapters/07_gcn_backward.md)
    """
    n, _, d_out = _check_layer(A, X, W, b)
    check_tensor(dZ, "dZ", ndim=2)
    _check_same_dtype(A, "A", dZ=dZ)
    if tuple(dZ.shape) != (n, d_out):
        raise ValueError(f"dZ must have the shape of Z = A X W + b, ({n}, {d_out}), got {tuple(dZ.shape)}")
    dA = dZ @ (X @ W).T
    dX = A.T @ dZ @ W.T
    dW = (A @ X).T @ dZ
    db = dZ.sum(dim=0)
    return dA, dX, dW, db


def normalized_adjacency(A: torch.Tensor, add_self_loops: bool = True) -> torch.Tensor:
    r"""The Kipf–Welling propagation operator :math:`\hat A = D^{-1/2}(A + I)D^{-1/2}` (dense).

    :math:`D_{ii} = \sum_j (A + I)_{ij}` (row sums). With ``add_self_loops=False`` the ``I`` is
    left out. A node of zero degree gets a zero row and column (no division by zero, no NaN in
    the forward or in the gradient). Differentiable in ``A``.

    Shapes:
        - A: (N, N)
        - returns Â: (N, N)

    Taught in: chapter 07 (chapters/07_gcn_backward.md)
    """
    n = _check_adjacency(A, "A")
    add_self_loops = check_bool(add_self_loops, "add_self_loops")
    if add_self_loops:
        A = A + torch.eye(n, dtype=A.dtype, device=A.device)
    deg = A.sum(dim=1)
    pos = deg > 0
    inv_sqrt = torch.where(pos, torch.where(pos, deg, torch.ones_like(deg)).rsqrt(), torch.zeros_like(deg))
    return inv_sqrt[:, None] * A * inv_sqrt[None, :]


# --------------------------------------------------------------------------------------------
# two layers + mean-pool readout
# --------------------------------------------------------------------------------------------

class GCN2Params(NamedTuple):
    """Parameters of the 2-layer GCN of seed 002.

    Shapes:
        - W1: (D_in, D_hid), b1: (D_hid,)
        - W2: (D_hid, D_out), b2: (D_out,)

    Taught in: chapter 07 (chapters/07_gcn_backward.md)
    """

    W1: torch.Tensor
    b1: torch.Tensor
    W2: torch.Tensor
    b2: torch.Tensor


class GCN2Cache(NamedTuple):
    """Intermediates of :func:`gcn2_forward` (``return_cache=True``), for teaching and inspection.

    Shapes:
        - Z1: (N, D_hid) pre-activation, H1: (N, D_hid) = ReLU(Z1)
        - H2: (N, D_out) node outputs, y: (D_out,) = mean over nodes of H2

    Taught in: chapter 07 (chapters/07_gcn_backward.md)
    """

    Z1: torch.Tensor
    H1: torch.Tensor
    H2: torch.Tensor
    y: torch.Tensor


class GCN2Grads(NamedTuple):
    """Gradients returned by :func:`gcn2_backward`: every parameter, the operator ``A`` and ``X``.

    ``A`` is the sum of the two layers' ``dA`` (both layers share the operator).

    Shapes:
        - W1: (D_in, D_hid), b1: (D_hid,), W2: (D_hid, D_out), b2: (D_out,)
        - A: (N, N), X: (N, D_in)

    Taught in: chapter 07 (chapters/07_gcn_backward.md)
    """

    W1: torch.Tensor
    b1: torch.Tensor
    W2: torch.Tensor
    b2: torch.Tensor
    A: torch.Tensor
    X: torch.Tensor


def init_gcn2_params(in_dim: int, hid_dim: int, out_dim: int, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> GCN2Params:
    r"""Glorot-uniform weights and zero biases (the initialisation of PyG's ``GCNConv``).

    :math:`W \sim U(-a, a)`, :math:`a = \sqrt{6 / (D_{in} + D_{out})}`; ``b = 0``. Pass a seeded
    ``torch.Generator`` for reproducible parameters.

    Shapes:
        - returns GCN2Params(W1 (D_in, D_hid), b1 (D_hid,), W2 (D_hid, D_out), b2 (D_out,))

    Taught in: chapter 07 (chapters/07_gcn_backward.md)
    """
    in_dim, hid_dim, out_dim = (check_int(v, name, 1) for name, v in
                                (("in_dim", in_dim), ("hid_dim", hid_dim), ("out_dim", out_dim)))
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")

    def glorot(fan_in: int, fan_out: int) -> torch.Tensor:
        a = math.sqrt(6.0 / (fan_in + fan_out))
        w = torch.rand(fan_in, fan_out, generator=generator, dtype=dtype)
        return ((2 * w - 1) * a).to(device)

    return GCN2Params(
        W1=glorot(in_dim, hid_dim),
        b1=torch.zeros(hid_dim, dtype=dtype, device=device),
        W2=glorot(hid_dim, out_dim),
        b2=torch.zeros(out_dim, dtype=dtype, device=device),
    )


def _check_params(params: GCN2Params) -> GCN2Params:
    if not (isinstance(params, tuple) and len(params) == 4):
        raise TypeError("params must be a GCN2Params(W1, b1, W2, b2); build one with init_gcn2_params(...)")
    return GCN2Params(*params)


def _forward_with_cache(params: GCN2Params, A: torch.Tensor, X: torch.Tensor) -> GCN2Cache:
    W1, b1, W2, b2 = params
    _check_layer(A, X, W1, b1, names=("A", "X", "params.W1", "params.b1"))
    check_tensor(W2, "params.W2", ndim=2)
    if W2.shape[0] != W1.shape[1]:
        raise ValueError(f"params.W2 has {W2.shape[0]} rows but params.W1 has {W1.shape[1]} columns; "
                         f"W2 must be (D_hid, D_out) = ({W1.shape[1]}, D_out)")
    Z1 = gcn_layer_forward(A, X, W1, b1)
    H1 = torch.relu(Z1)
    _check_layer(A, H1, W2, b2, names=("A", "H1", "params.W2", "params.b2"))
    H2 = gcn_layer_forward(A, H1, W2, b2)
    y = H2.mean(dim=0)
    return GCN2Cache(Z1=Z1, H1=H1, H2=H2, y=y)


def gcn2_forward(params: GCN2Params, A: torch.Tensor, X: torch.Tensor,
                 return_cache: bool = False) -> torch.Tensor | tuple[torch.Tensor, GCN2Cache]:
    r"""2-layer GCN with a graph-level mean-pool readout (seed 002).

    .. math::
        Z_1 = A X W_1 + b_1,\quad H_1 = \mathrm{ReLU}(Z_1),\quad
        H_2 = A H_1 W_2 + b_2,\quad y = \tfrac1N \textstyle\sum_i H_{2,i,:}

    With ``return_cache=True`` returns ``(y, GCN2Cache(Z1, H1, H2, y))``.

    Shapes:
        - params: GCN2Params(W1 (D_in, D_hid), b1 (D_hid,), W2 (D_hid, D_out), b2 (D_out,))
        - A: (N, N), X: (N, D_in)
        - returns y: (D_out,)

    Taught in: chapter 07 (chapters/07_gcn_backward.md)
    """
    cache = _forward_with_cache(_check_params(params), A, X)
    return (cache.y, cache) if return_cache else cache.y


def gcn2_backward(params: GCN2Params, A: torch.Tensor, X: torch.Tensor, dy: torch.Tensor) -> GCN2Grads:
    r"""Backward of :func:`gcn2_forward` by hand, for an upstream gradient ``dy = ∂L/∂y``.

    Follows the forward in reverse, recomputing the small intermediates (no autograd):

    .. math::
        dH_2 = \tfrac1N \mathbf 1\, dy^\top,\quad
        (dA_2, dH_1, dW_2, db_2) = \mathrm{layer\_backward}(A, H_1, W_2, b_2, dH_2),\\
        dZ_1 = dH_1 \odot [Z_1 > 0],\quad
        (dA_1, dX, dW_1, db_1) = \mathrm{layer\_backward}(A, X, W_1, b_1, dZ_1),\quad
        dA = dA_1 + dA_2

    ReLU'(0) is taken as 0, as autograd does.

    Shapes:
        - params: GCN2Params(W1 (D_in, D_hid), b1 (D_hid,), W2 (D_hid, D_out), b2 (D_out,))
        - A: (N, N), X: (N, D_in), dy: (D_out,)
        - returns GCN2Grads(W1, b1, W2, b2, A, X), each the shape of its input

    Taught in: chapter 07 (chapters/07_gcn_backward.md)
    """
    params = _check_params(params)
    W1, b1, W2, b2 = params
    Z1, H1, H2, _ = _forward_with_cache(params, A, X)
    check_tensor(dy, "dy", ndim=1)
    _check_same_dtype(A, "A", dy=dy)
    n, d_out = H2.shape
    if dy.shape[0] != d_out:
        raise ValueError(f"dy must have the shape of y, ({d_out},), got {tuple(dy.shape)}")
    dH2 = dy.expand(n, d_out) / n                           # mean over nodes: broadcast, scale 1/N
    dA2, dH1, dW2, db2 = gcn_layer_backward(A, H1, W2, b2, dH2)
    dZ1 = dH1 * (Z1 > 0).to(dH1.dtype)                      # ReLU gate
    dA1, dX, dW1, db1 = gcn_layer_backward(A, X, W1, b1, dZ1)
    return GCN2Grads(W1=dW1, b1=db1, W2=dW2, b2=db2, A=dA1 + dA2, X=dX)
