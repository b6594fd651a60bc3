r"""The (N, D) table of the latest detached feature of every image: :class:`FeatureBank`.

Taught in: chapter 11 (chapters/11_minibatch_1_bank.md).
"""
from __future__ import annotations

import torch
from torch import nn

from .._checks import check_int
from ..backbone import embed_images
from ..index import ExactIndex, NeighbourIndex
from ..similarity import knn_search
from ..utils import check_k, check_positive, check_tensor


def _backbone_of(backbone):
    """The feature extractor: an ``EndToEnd``'s ``.backbone``, else the module itself."""
    inner = getattr(backbone, "backbone", None)
    return inner if isinstance(inner, nn.Module) and hasattr(backbone, "gcn") else backbone


def _check_images(images, name: str = "images") -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (N, C_in, H, W), got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be floating point with values in [0, 1], got dtype {images.dtype}; "
                        f"convert with {name}.float() / 255 (uint8) or {name}.float()")
    if images.dim() < 2 or images.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, ...) with N >= 1 images, got {tuple(images.shape)}")
    return images


class FeatureBank:
    r"""An (N, D) table :math:`B` of the latest *detached* feature of every image.

    .. math::
        B_i \leftarrow f_\theta(x_i)\ \text{(fill: all i, no grad)},\qquad
        B_i \leftarrow \operatorname{sg}(f_\theta(x_i))\ \text{for}\ i \in \text{batch (update)}

    (:math:`\operatorname{sg}` = stop-gradient.) A row is as old as the last step whose batch held
    that image, or the last :meth:`fill`; :meth:`refresh` is a fill. Its memory is N·D floats.

    Args:
        num_nodes: N.
        dim: D.
        dtype, device: of the table (a :meth:`fill` from a float64 backbone makes it float64).

    Shapes:
        - features: (N, D), never requires grad

    Taught in: chapter 11 (chapters/11_minibatch_1_bank.md).
    """

    def __init__(self, num_nodes: int, dim: int, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
        n = check_int(num_nodes, "num_nodes", 2)
        d = check_int(dim, "dim", 1)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}")
        self.features = torch.zeros(n, d, dtype=dtype, device=device)
        self.filled = False
        #: optional (N, k) neighbour lists (:meth:`fill_neighbours`): each row as found at that
        #: node's last batch or the last fill; ``None`` = always search
        self.neighbours: torch.Tensor | None = None
        #: optional neighbour index (:meth:`build_index`): proposes candidates, re-ranked exactly
        #: against the current rows; ``None`` = the exact chunked search
        self.index: NeighbourIndex | None = None

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_backbone(cls, backbone: nn.Module, images: torch.Tensor, chunk_size: int = 512,
                      device: str | torch.device | None = None) -> "FeatureBank":
        """A bank filled by one no-grad pass of ``backbone`` (or an ``EndToEnd``'s) over ``images``.

        Shapes: images (N, C_in, H, W) -> bank.features (N, D)
        """
        bb = _backbone_of(backbone)
        if not isinstance(bb, nn.Module):
            raise TypeError(f"backbone must be a torch.nn.Module, got {type(backbone).__name__}")
        images = _check_images(images)
        chunk_size = check_int(chunk_size, "chunk_size")
        dev = device if device is not None else _device_of(bb, images)
        feats = embed_images(bb, images, chunk_size, dev)
        bank = cls(feats.shape[0], feats.shape[1], feats.dtype, feats.device)
        bank.features.copy_(feats)
        bank.filled = True
        return bank

    def fill(self, backbone: nn.Module, images: torch.Tensor, chunk_size: int = 512) -> "FeatureBank":
        r"""Overwrite every row: :math:`B = f_\theta(X)` in eval mode, ``chunk_size`` images at a time,
        under ``no_grad`` (the backbone's train/eval mode is restored after).

        Shapes: images (N, C_in, H, W) with N = ``num_nodes``
        """
        bb = _backbone_of(backbone)
        images = _check_images(images)
        if images.shape[0] != self.num_nodes:
            raise ValueError(f"images has {images.shape[0]} rows but the bank holds N={self.num_nodes}; "
                             f"fill it with the same N images it was made for")
        chunk_size = check_int(chunk_size, "chunk_size")
        for start in range(0, self.num_nodes, chunk_size):
            f = embed_images(bb, images[start:start + chunk_size], chunk_size, self.device)
            self._check_rows(f, "backbone features", f.shape[0])
            self.features[start:start + f.shape[0]] = f.to(self.dtype)
        self.filled = True
        return self

    refresh = fill

    @torch.no_grad()
    def fill_neighbours(self, k: int, chunk_size: int = 4096, bank_chunk: int | None = None) -> torch.Tensor:
        r"""Search every bank row's k neighbours once and keep them: :math:`\mathcal N_k(i)` for all i.

        With the lists kept, :func:`computation_subgraph` reads the rows of the out-of-batch
        neighbours from them instead of searching (about k times fewer queries a step) and writes
        each batch's freshly searched rows back: *historical neighbour lists*, as stale as the
        bank's rows. Memory N·k longs.

        Shapes: -> neighbours (N, k) long
        """
        ids = torch.arange(self.num_nodes, device=self.device)
        self.neighbours = self.search(self.features, k, exclude=ids, chunk_size=chunk_size, bank_chunk=bank_chunk)
        return self.neighbours

    def build_index(self, index: NeighbourIndex) -> NeighbourIndex:
        """Build ``index`` (:func:`bgcn.index.make_index`) on the current rows and search through it from now on.

        The index is a snapshot: rows written later (:meth:`update`) are re-ranked with their
        current values but are found as candidates only where the snapshot proposes them, until the
        next build (the engine rebuilds it with each bank refresh). ``bank.index = None`` returns to
        the exact search.

        Shapes: features (N, D) -> an index over N keys
        """
        if not isinstance(index, NeighbourIndex):
            raise TypeError(f"index must be a bgcn.index.NeighbourIndex (e.g. bgcn.index.make_index('ivf')), "
                            f"got {type(index).__name__}")
        self.index = index.build(self.features)
        return self.index

    # -- properties ---------------------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.features.dtype

    @property
    def device(self) -> torch.device:
        return self.features.device

    @property
    def nbytes(self) -> int:
        """Bytes held: N·D·(bytes per float), plus N·k·8 with the neighbour lists."""
        extra = 0 if self.neighbours is None else self.neighbours.numel() * self.neighbours.element_size()
        return self.features.numel() * self.features.element_size() + extra

    def __len__(self) -> int:
        return self.num_nodes

    def __repr__(self) -> str:
        return (f"FeatureBank(N={self.num_nodes}, D={self.dim}, dtype={self.dtype}, device={self.device}, "
                f"filled={self.filled})")

    # -- checks -------------------------------------------------------------------------------
    def _check_rows(self, feats, name: str, m: int | None = None) -> torch.Tensor:
        check_tensor(feats, name, ndim=2)
        if feats.shape[1] != self.dim:
            raise ValueError(f"{name} has D={feats.shape[1]} features but the bank holds D={self.dim}")
        if m is not None and feats.shape[0] != m:
            raise ValueError(f"{name} has {feats.shape[0]} rows, expected {m}")
        if feats.device != self.device:
            raise ValueError(f"{name} is on {feats.device} but the bank is on {self.device}; "
                             f"move it with .to({str(self.device)!r})")
        if feats.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {feats.dtype} but the bank holds {self.dtype}; "
                            f"cast it with .to({self.dtype}) (or build the bank in that dtype)")
        return feats

    def _check_ids(self, ids, name: str) -> torch.Tensor:
        if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.is_floating_point() or ids.dtype == torch.bool:
            raise TypeError(f"{name} must be a 1-D integer tensor of node ids, got "
                            f"{ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__}")
        if ids.device != self.device:
            raise ValueError(f"{name} is on {ids.device} but the bank is on {self.device}; move it with .to()")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_nodes):
            raise ValueError(f"{name} holds ids in [{int(ids.min())}, {int(ids.max())}]; they must lie in "
                             f"[0, {self.num_nodes - 1}]")
        return ids.long()

    # -- writing and searching ----------------------------------------------------------------
    @torch.no_grad()
    def update(self, indices: torch.Tensor, feats: torch.Tensor) -> "FeatureBank":
        r"""Write a batch's fresh features, detached: :math:`B_{i} \leftarrow \operatorname{sg}(f_i)`.

        Shapes: indices (b,) long, feats (b, D)
        """
        idx = self._check_ids(indices, "indices")
        self._check_rows(feats, "feats", idx.shape[0])
        self.features[idx] = feats.detach()
        return self

    @torch.no_grad()
    def search(self, query: torch.Tensor, k: int, exclude: torch.Tensor | None = None,
               chunk_size: int = 4096, bank_chunk: int | None = None) -> torch.Tensor:
        r"""Exact cosine top-k of each query row against the bank, chunk by chunk, without gradient.

        .. math::
            \mathcal N_k(q) = \operatorname{top-k}_{j \ne e_q}\ \hat q \cdot \hat B_j

        ``exclude[r]`` is the bank id of query r (a query that is itself in the bank must not find
        itself); ``None`` for new images. One ``chunk_size`` × ``bank_chunk`` block exists at a time
        (``None``: :data:`bgcn.similarity.KEY_CHUNK` keys), its top-k merged into a running top-k,
        so the peak memory does not grow with N: :func:`bgcn.similarity.knn_search`
        of the query against the bank. With an index (:meth:`build_index`) the candidates come from
        it and are re-ranked exactly against the current rows (``chunk_size``/``bank_chunk`` unused).

        Shapes:
            - query: (M, D); exclude: (M,) long or None
            - output: (M, k) long bank ids, each row by decreasing similarity

        Taught in: chapter 11 (chapters/11_minibatch_1_bank.md).
        """
        self._check_rows(query, "query")
        m = query.shape[0]
        k = check_k(k, self.num_nodes, exclude_self=exclude is not None)
        chunk_size = check_int(chunk_size, "chunk_size", 1)
        if exclude is not None:
            exclude = self._check_ids(exclude, "exclude")
            if exclude.shape[0] != m:
                raise ValueError(f"exclude has {exclude.shape[0]} ids but query has {m} rows; give one per row")
        if bank_chunk is not None:
            bank_chunk = check_int(bank_chunk, "bank_chunk", 1)
        if self.index is not None and not isinstance(self.index, ExactIndex):
            return self.index.search(query, k, exclude, keys=self.features)
        return knn_search(query, self.features, k, exclude=exclude, chunk_size=chunk_size, key_chunk=bank_chunk)[1]


def _device_of(module: nn.Module, fallback: torch.Tensor) -> torch.device:
    p = next(iter(module.parameters()), None)
    return p.device if p is not None else fallback.device
