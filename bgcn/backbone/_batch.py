r"""Does an image's feature depend on the other images of its batch? (LayerNorm against BatchNorm.)

:func:`batch_dependence` embeds the same images twice in ``.train()`` mode, each time beside other
companions, and once in ``.eval()`` mode. A LayerNorm network (the ViTs of this book, DINOv2)
normalises every token of every image on its own, so nothing changes; a BatchNorm network in train
mode normalises with the statistics of the batch, so an image's feature depends on its companions
(and, under ``torchrun``, on its rank's shard).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .._checks import check_int

__all__ = ["batch_dependence", "norm_layers"]


def norm_layers(backbone: nn.Module) -> dict[str, int]:
    """How many normalisation layers of each kind ``backbone`` holds, and its running-statistics buffers.

    Returns ``{"batchnorm": n, "layernorm": n, "groupnorm": n, "running_stats": n}``, where
    ``running_stats`` counts the BatchNorm layers that keep running means and variances (buffers
    that a train-mode forward overwrites).

    Shapes: none.

    Taught in: the Sources page (chapters/sources.md).
    """
    bns = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return {"batchnorm": len(bns),
            "layernorm": sum(isinstance(m, nn.LayerNorm) for m in backbone.modules()),
            "groupnorm": sum(isinstance(m, nn.GroupNorm) for m in backbone.modules()),
            "running_stats": sum(m.track_running_stats for m in bns)}


def batch_dependence(backbone: nn.Module, images: torch.Tensor, queries: int = 4,
                     batch_size: int = 16) -> dict[str, float]:
    r"""How much the train-mode features of ``queries`` images change with the rest of their batch.

    The first ``queries`` images are embedded in ``.train()`` mode in two batches of
    ``batch_size`` that share them and differ in every other image (companions A and B, taken in
    order from the images after them), and in ``.eval()`` mode beside companions A. With
    :math:`F_A, F_B, F_\text{eval}` the query rows,

    .. math::
        \text{batch\_change} = \max_q \frac{\lVert F_A[q] - F_B[q]\rVert}{\overline{\lVert F_A\rVert}},
        \qquad
        \text{train\_eval\_change} = \max_q \frac{\lVert F_A[q] - F_\text{eval}[q]\rVert}{\overline{\lVert F_A\rVert}},

    and ``min_cosine`` is the smallest cosine between :math:`F_A[q]` and :math:`F_B[q]`. Both
    changes are 0 (to rounding) for a network whose layers see one image at a time (LayerNorm,
    no dropout); a BatchNorm network in train mode normalises with the batch's statistics, so its
    features move with the companions. The forwards run without gradient on a copy of
    ``backbone``: its running statistics are not touched. ``norm_layers`` is added to the result.

    Args:
        backbone: images (N, C_in, H, W) -> features (N, D).
        images: at least ``2 * batch_size - queries`` images.
        queries: the images whose features are compared (1 ≤ queries < batch_size).
        batch_size: the size of each batch.

    Shapes:
        images: (M, C_in, H, W), M >= 2·batch_size − queries -> a dict of floats

    Taught in: the Sources page (chapters/sources.md).
    """
    batch_size = check_int(batch_size, "batch_size", 2)
    queries = check_int(queries, "queries", 1, batch_size - 1)
    need = 2 * batch_size - queries
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] < need:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be (M, C_in, H, W) with M >= 2*batch_size - queries = {need}; got {got}")
    q, rest = images[:queries], images[queries:]
    comp_a, comp_b = rest[:batch_size - queries], rest[batch_size - queries:need - queries]
    net = copy.deepcopy(backbone)
    with torch.no_grad():
        f_a = net.train()(torch.cat([q, comp_a]))[:queries]
        f_b = net.train()(torch.cat([q, comp_b]))[:queries]
        f_eval = copy.deepcopy(backbone).eval()(torch.cat([q, comp_a]))[:queries]
    scale = f_a.norm(dim=1).mean().clamp_min(torch.finfo(f_a.dtype).tiny)
    return {"batch_change": float(((f_a - f_b).norm(dim=1) / scale).max()),
            "train_eval_change": float(((f_a - f_eval).norm(dim=1) / scale).max()),
            "min_cosine": float(torch.nn.functional.cosine_similarity(f_a, f_b, dim=1).min()),
            **{k: float(v) for k, v in norm_layers(backbone).items()}}
