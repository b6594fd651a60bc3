r"""``EndToEnd``: images → backbone → features → kNN graph → GCN → log-probabilities, one module.

The graph is rebuilt from the *current* features at every forward pass, so one ``loss.backward()``
reaches the feature extractor along two paths (seed 000 §3, eq. (12)):

1. **node features**: :math:`F` is the GCN's input :math:`X`, so
   :math:`\partial L/\partial F \mathrel{+}= \partial L/\partial X`;
2. **graph**: :math:`F \to S = \hat F \hat F^\top \to \tilde w = \text{estimator}(S) \to` edge
   weights of the GCN, so :math:`\partial L/\partial F \mathrel{+}= (\partial L/\partial \tilde w)
   (\partial \tilde w/\partial S)(\partial S/\partial F)`.

The two paths are kept measurable: the features enter the GCN as two aliases ``F_node`` and
``F_graph`` (``F.clone()`` each; the clone's backward is the identity), so the gradient arriving
through each path is the gradient of the loss with respect to that alias. A backward hook records
both (``EndToEnd.last_path_grads``) at no extra cost; :meth:`EndToEnd.path_gradients` returns them
as tensors. With a hard graph whose weights are unused (seed 000's loop as intended) path 2 does
not exist in the autograd graph at all, and its gradient is exactly zero.

Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .estimators import get_estimator, get_spec, rowwise_names, score_function_surrogate
from .gcn import GCN
from .graph import KNNGraph, knn_graph, symmetrize_dense
from ._checks import check_bool, check_int, check_k, check_tau, check_tensor

__all__ = ["EndToEnd", "MODES", "build_model", "score_function_surrogate"]

#: Training modes understood by :class:`EndToEnd` and :func:`bgcn.train.train`.
MODES = ("frozen", "end2end-features", "end2end")


class EndToEnd(nn.Module):
    r"""Backbone, differentiable kNN graph and GCN in one ``nn.Module``.

    .. math::
        F = \text{backbone}(\text{images}),\qquad
        (\mathcal N, \tilde w) = \text{estimator}(\hat F \hat F^\top, k, \tau),\qquad
        \log p = \text{GCN}(F, \{(j\to i, \tilde w_{ij}) : j\in\mathcal N_k(i)\})

    Every forward pass rebuilds the graph from the current features (``.last_graph`` keeps the last
    one). The graph spans *all* images given to the forward — labelled and unlabelled alike — so
    training is **transductive**: the loss uses the labelled nodes only, but the unlabelled nodes
    are in the graph and pass messages.

    Which graph reaches the GCN:

    - ``use_graph_weights=True`` (default): the estimator's weights ride on the edges
      (``edge_weight``); an estimator that returns a dense selection mask (``Selection.dense``, the
      selection estimators of chapter 09) hands the GCN the dense adjacency ``adj`` instead, so the
      loss gradient reaches every score, chosen or not.
    - ``use_graph_weights=False``: only the edges (unit weights) reach the GCN — seed 000's loop as
      written, which computes ``top_k_weights`` and then calls ``gcn(features, edges)`` without
      them; the ranking path then carries no gradient.
    - ``train_backbone=False``: the features are computed under ``no_grad`` (frozen extractor).

    Args:
        backbone: ``nn.Module`` mapping images (N, C_in, H, W) to features (N, D).
        gcn: a :class:`bgcn.GCN` (or any module with ``forward(x, edge_index, edge_weight, *, adj)``).
        k: neighbours per node.
        estimator: a name in :data:`bgcn.ESTIMATORS` or a callable returning a ``Selection``.
        tau: temperature τ > 0 (ignored by estimators without one).
        use_graph_weights: hand the estimator's weights (or dense mask) to the GCN.
        exclude_self: leave node i out of its own ranking (its similarity is 1; the GCN adds
            self-loops anyway).
        symmetric: add j → i for every i → j (mean weight for pairs present both ways, the weight
            itself for a one-way pair); a dense mask gets the same rule
            (:func:`bgcn.graph.symmetrize_dense`).
        train_backbone: let gradients reach the backbone.
        amp: bf16 autocast for the backbone on CUDA (default off). The graph and the GCN stay
            float32, but the features come out of the backbone rounded to bf16, and that rounding
            changes the kNN set of 5-7 % of the rows for ``mlp_digits`` and up to 74 % for
            ``vit_digits``: with ``amp=True`` a GPU builds another graph than the CPU. Turn it on
            for a large backbone where the speed matters more. Ignored on the CPU.
        estimator_kw: extra keyword arguments for the estimator.
        chunk_size: build the graph without an N×N matrix (:func:`bgcn.knn_graph` with
            ``chunk_size``: neighbours found chunk by chunk under ``no_grad``, the k similarities a
            row recomputed with autograd, O(N·chunk + N·k·D) memory; chapter 10). Works for the
            graphs that need no full row: ``"hard"`` (frozen, end2end-features) and the
            ``"values"`` / ``"masked_softmax"`` estimators; other estimators in ``"end2end"`` are
            refused when the mode is set. ``None`` (default): the dense path.

    Shapes:
        - images: (N, C_in, H, W) (or whatever the backbone takes, N first)
        - features F: (N, D)
        - output: log-probabilities (N, C)
        - ``last_graph.edge_index`` (2, E), ``.edge_weight`` (E,), ``.indices``/``.weights`` (N, k)

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """

    def __init__(self, backbone: nn.Module, gcn: nn.Module, k: int, estimator: Any = "softmax", tau: float = 1.0,
                 use_graph_weights: bool = True, exclude_self: bool = True, symmetric: bool = False,
                 train_backbone: bool = True, amp: bool = False, estimator_kw: dict | None = None,
                 chunk_size: int | None = None):
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be a torch.nn.Module (images -> (N, D) features), "
                            f"got {type(backbone).__name__}")
        if not isinstance(gcn, nn.Module):
            raise TypeError(f"gcn must be a torch.nn.Module such as bgcn.GCN, got {type(gcn).__name__}")
        k = check_int(k, "k", 1, hint="neighbours per node")
        get_estimator(estimator)  # raises ValueError listing the valid names
        self.backbone = backbone
        self.gcn = gcn
        self.k = int(k)
        self.estimator = estimator
        self.tau = check_tau(tau)
        self.use_graph_weights = check_bool(use_graph_weights, "use_graph_weights")
        self.exclude_self = check_bool(exclude_self, "exclude_self")
        self.symmetric = check_bool(symmetric, "symmetric")
        self.train_backbone = check_bool(train_backbone, "train_backbone")
        self.amp = check_bool(amp, "amp")
        if estimator_kw is not None and not isinstance(estimator_kw, dict):
            raise TypeError(f"estimator_kw must be a dict or None, got {type(estimator_kw).__name__}")
        self.estimator_kw = dict(estimator_kw or {})
        self.chunk_size = check_int(chunk_size, "chunk_size", 1, optional=True, hint="rows per block")
        #: training mode (:meth:`configure`); ``None`` = as the flags above say (custom use)
        self.mode: str | None = None
        self.last_graph: KNNGraph | None = None
        #: ``{"node": ∂L/∂F via the node features, "graph": ∂L/∂F via the graph}``, filled by the
        #: backward pass that follows a forward in grad mode (absent path = not filled).
        self.last_path_grads: dict[str, torch.Tensor] = {}
        self._aliases: dict[str, torch.Tensor] = {}
        self._feats: torch.Tensor | None = None

    # -- configuration ----------------------------------------------------------------------

    def configure(self, mode: str) -> "EndToEnd":
        """Set the training mode (see :data:`MODES`) and return ``self``; ``self.mode`` is the one record of it.

        - ``"frozen"``: ``train_backbone=False``, hard graph, weights unused (seed 000 §1);
        - ``"end2end-features"``: ``train_backbone=True``, hard graph, weights unused (seed 000 §3
          as intended);
        - ``"end2end"``: ``train_backbone=True``, the estimator's weights on the edges.

        The estimator given at construction (``self.estimator``) is never overwritten: the first two
        modes *use* the hard graph (:attr:`graph_estimator` is ``"hard"``), so a model configured
        ``"frozen"`` and later ``"end2end"`` gets its estimator back. The backbone's parameters get
        ``requires_grad = train_backbone``.
        """
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not a training mode; choose one of {list(MODES)}")
        if mode == "end2end" and self.chunk_size is not None:
            name = self.configured_estimator_name
            if not get_spec(self.estimator).chunkable:
                raise ValueError(f"chunk_size={self.chunk_size} needs an estimator without full rows "
                                 f"({sorted(rowwise_names(normaliser=False))}), not {name!r} in mode 'end2end'; use one of "
                                 f"those, or chunk_size=None (dense N×N path)")
        self.mode = mode
        self.use_graph_weights = mode == "end2end"
        self.train_backbone = mode != "frozen"
        # a backbone that freezes part of itself (partial fine-tuning, frozen BatchNorm) keeps it frozen
        keep = getattr(self.backbone, "frozen_parameters", None)
        frozen = {id(p) for p in keep()} if callable(keep) else set()
        for p in self.backbone.parameters():
            p.requires_grad_(self.train_backbone and id(p) not in frozen)
        return self

    @property
    def graph_estimator(self) -> Any:
        """The estimator the graph is built with: ``"hard"`` in the modes that use no graph weights.

        Shapes: none.
        """
        return "hard" if self.mode in ("frozen", "end2end-features") else self.estimator

    @property
    def estimator_name(self) -> str:
        """Name of the estimator the graph is built with now (``"hard"`` for frozen / end2end-features)."""
        return get_spec(self.graph_estimator).name

    @property
    def configured_estimator_name(self) -> str:
        """Name of the estimator given at construction (used by the ``"end2end"`` mode)."""
        return get_spec(self.estimator).name

    # -- forward ----------------------------------------------------------------------------

    def features(self, images: torch.Tensor) -> torch.Tensor:
        r"""Backbone features :math:`F` (N, D); bf16 autocast output is cast back to float32.

        Computed under ``no_grad`` when the backbone is frozen (``train_backbone=False``).

        Shapes: images (N, ...) -> F (N, D)
        """
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor (N, C_in, H, W), got {type(images).__name__}")
        if not images.is_floating_point():
            raise TypeError(f"images must be a floating-point tensor with values in [0, 1], got dtype {images.dtype}; "
                            f"convert with images.float() / 255 (uint8) or images.float()")
        p0 = next(iter(self.backbone.parameters()), None)
        if p0 is not None and p0.is_floating_point() and images.dtype != p0.dtype:
            images = images.to(p0.dtype)  # e.g. float64 from torch.from_numpy into a float32 backbone
        ctx = torch.no_grad() if not self.train_backbone else contextlib.nullcontext()
        amp = self.amp and images.device.type == "cuda"
        with ctx, torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp) if amp else contextlib.nullcontext():
            feats = self.backbone(images)
        if not isinstance(feats, torch.Tensor) or feats.dim() != 2:
            raise ValueError(f"the backbone must return (N, D) features, got "
                             f"{tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__}")
        # autocast output (bf16) back to float32; float32/float64 stay as they are
        return feats.float() if feats.dtype in (torch.float16, torch.bfloat16) else feats

    def build_graph(self, features: torch.Tensor, generator: torch.Generator | None = None,
                    estimator: Any = None) -> KNNGraph:
        r"""The kNN graph of ``features`` with this model's k, estimator and τ (:func:`bgcn.knn_graph`).

        ``estimator`` overrides :attr:`graph_estimator` for this call (the training loop's warm-up
        builds the hard graph with it).

        A ``log_prob`` (N,) that a stochastic estimator attaches to its ``Selection`` (as an
        attribute or in a ``Selection.info`` dict) is copied into ``graph.info["log_prob"]``, where
        :func:`bgcn.train.train` adds the score-function surrogate for it.

        Shapes: features (N, D) -> KNNGraph with edge_index (2, E), edge_weight (E,), indices (N, k)
        """
        use = self.graph_estimator if estimator is None else estimator
        spec = get_spec(use)
        fn = spec.fn
        # the estimator's own keyword arguments go to it only (not to the hard graph of a warm-up)
        est_kw = self.estimator_kw if use is self.estimator else {}
        captured: dict = {}

        def estimator(scores, k, tau=1.0, **kw):
            captured["sel"] = sel = fn(scores, k, tau, **kw)
            return sel

        # knn_graph names the graph after the wrapper's spec (bgcn.estimators.get_spec reads these)
        estimator.estimator_name, estimator.needs_dense, estimator.stochastic = (spec.name, spec.needs_dense,
                                                                                 spec.stochastic)
        name = spec.name
        chunk = self.chunk_size if spec.chunkable else None
        if self.chunk_size is not None and chunk is None:
            raise ValueError(f"chunk_size={self.chunk_size} does not work with estimator {name!r} (it needs full "
                             f"rows); use one of {sorted(rowwise_names(normaliser=False))} or chunk_size=None")
        graph = knn_graph(features, self.k, estimator if chunk is None else name, self.tau,
                          exclude_self=self.exclude_self, symmetric=self.symmetric, chunk_size=chunk,
                          generator=generator, **est_kw)
        # extension point: what a stochastic estimator says about its sample (Selection.info or a
        # Selection.log_prob attribute) rides on graph.info, where train() looks for "log_prob"
        sel = captured.get("sel")
        if sel is not None:
            graph.info.update(getattr(sel, "info", None) or {})
            if getattr(sel, "log_prob", None) is not None:
                graph.info.setdefault("log_prob", sel.log_prob)
        return graph

    def gcn_forward(self, x: torch.Tensor, graph: KNNGraph) -> torch.Tensor:
        r"""Run the GCN on node features ``x`` and ``graph`` as configured (weights, dense mask or edges only).

        Shapes: x (N, D), graph with N nodes -> log-probabilities (N, C)
        """
        if not self.use_graph_weights:
            return self.gcn(x, graph.edge_index)
        if graph.dense is not None:
            adj = graph.dense
            if self.symmetric:
                adj = symmetrize_dense(adj)
            return self.gcn(x, adj=adj)
        return self.gcn(x, graph.edge_index, graph.edge_weight)

    def forward(self, images: torch.Tensor | None = None, *, features: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        r"""Log-probabilities :math:`\log p = \text{GCN}(F, \text{graph}(F))` for every image (transductive).

        Pass ``images`` (the backbone runs), or precomputed ``features`` (the backbone is skipped;
        used for a frozen extractor). In grad mode the features enter the GCN as two aliases whose
        gradients are recorded in ``last_path_grads`` during the next backward.

        Shapes:
            - images: (N, C_in, H, W) or features: (N, D)
            - output: (N, C)
        """
        if (images is None) == (features is None):
            raise ValueError("give exactly one of images (runs the backbone) or features (precomputed (N, D))")
        if features is None:
            feats = self.features(images)
        else:
            feats = check_tensor(features, "features", ndim=2, finite=False)
        if not bool(torch.isfinite(feats.detach()).all()):
            raise FloatingPointError("the backbone produced NaN/Inf features; training has diverged "
                                     "(lower the learning rate, or check the input images)")
        self.last_path_grads = {}
        self._aliases = {}
        self._feats = feats
        if feats.requires_grad and torch.is_grad_enabled():
            f_node, f_graph = feats.clone(), feats.clone()
            self._aliases = {"node": f_node, "graph": f_graph}
            for name, t in self._aliases.items():
                t.register_hook(self._make_hook(name))
        else:
            f_node = f_graph = feats
        graph = self.build_graph(f_graph, generator=generator)
        self.last_graph = graph
        return self.gcn_forward(f_node, graph)

    def _make_hook(self, name: str):
        def hook(grad: torch.Tensor) -> None:
            self.last_path_grads[name] = grad.detach()
        return hook

    def path_grad_norms(self) -> dict[str, float]:
        r"""Norms :math:`\lVert\partial L/\partial F\rVert` per path after a backward: keys ``node``,
        ``graph`` and ``total`` (norm of their sum). A path the backward never reached counts 0.
        """
        g_node = self.last_path_grads.get("node")
        g_graph = self.last_path_grads.get("graph")
        out = {"node": 0.0 if g_node is None else float(g_node.norm()),
               "graph": 0.0 if g_graph is None else float(g_graph.norm())}
        if g_node is None and g_graph is None:
            out["total"] = 0.0
        else:
            tot = (0 if g_node is None else g_node) + (0 if g_graph is None else g_graph)
            out["total"] = float(tot.norm())
        return out

    def path_gradients(self, loss: torch.Tensor, retain_graph: bool = False) -> dict[str, torch.Tensor]:
        r"""The gradient of ``loss`` with respect to the features along each path, via ``torch.autograd.grad``.

        .. math::
            g_\text{node} = \frac{\partial L}{\partial F}\Big|_\text{node features},\quad
            g_\text{graph} = \frac{\partial L}{\partial F}\Big|_{F\to S\to\tilde w},\quad
            \frac{\partial L}{\partial F} = g_\text{node} + g_\text{graph}

        Call it right after a forward in grad mode (the backbone must be trainable). A path absent
        from the autograd graph (e.g. the graph path when the weights are unused) gives an exact
        zero tensor. Does not touch any ``.grad``.

        Shapes: returns ``{"node": (N, D), "graph": (N, D)}``
        """
        if not self._aliases:
            raise RuntimeError("path_gradients needs a forward pass in grad mode with a trainable backbone "
                               "(train_backbone=True) right before it")
        names = list(self._aliases)
        ts = [self._aliases[n] for n in names]
        grads = torch.autograd.grad(loss, ts, retain_graph=retain_graph, allow_unused=True)
        return {n: (torch.zeros_like(t) if g is None else g) for n, t, g in zip(names, ts, grads)}

    def extra_repr(self) -> str:
        return (f"k={self.k}, estimator={self.estimator_name!r}, tau={self.tau}, "
                f"use_graph_weights={self.use_graph_weights}, exclude_self={self.exclude_self}, "
                f"symmetric={self.symmetric}, train_backbone={self.train_backbone}")


def build_model(backbone: nn.Module, num_classes: int, k: int = 10, estimator: Any = "softmax", tau: float = 1.0,
                hidden: int = 64, dropout: float = 0.5, mode: str = "end2end", **kw: Any) -> EndToEnd:
    r"""Convenience: a :class:`bgcn.GCN` sized for ``backbone`` wrapped with it in an :class:`EndToEnd`.

    ``GCN(backbone.num_features, hidden, num_classes, dropout)``, then :meth:`EndToEnd.configure`
    with ``mode``. Extra keyword arguments go to :class:`EndToEnd`.

    Shapes: the returned module maps images (N, C_in, H, W) to log-probabilities (N, num_classes)

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """
    d = getattr(backbone, "num_features", None)
    if not isinstance(d, int) or d <= 0:
        raise TypeError("backbone must have an int .num_features (its feature dimension D); "
                        "create it with bgcn.create_backbone")
    gcn = GCN(d, hidden, num_classes, dropout=dropout)
    return EndToEnd(backbone, gcn, k, estimator=estimator, tau=tau, **kw).configure(mode)
