"""Which nodes a mini-batch step takes: :func:`stratified_batches` (every batch holds labelled nodes).

Taught in: chapter 11 (chapters/11_minibatch_1_bank.md).
"""
from __future__ import annotations

import math

import torch

from .._checks import check_int

__all__ = ["stratified_batches"]


def stratified_batches(train_mask: torch.Tensor, batch_size: int,
                       generator: torch.Generator | None = None) -> list[torch.Tensor]:
    r"""One epoch of batches in which **every batch holds labelled nodes**.

    With :math:`n_b = \lceil N / b\rceil` batches, the labelled nodes (``train_mask``) and the other
    nodes are shuffled *separately* and each list is cut into :math:`n_b` near-equal parts; batch t
    is labelled part t plus unlabelled part t. So every batch holds
    :math:`\lfloor |M|/n_b\rfloor` or :math:`\lceil |M|/n_b\rceil` labelled nodes and every node is
    in exactly one batch. With fewer labelled nodes than batches, batch t also gets labelled node
    :math:`t \bmod |M|` (of the shuffled list): a labelled node may then appear in more than one
    batch of an epoch (it is *revisited*, never left out).

    Shapes:
        - train_mask: (N,) bool
        - output: list of n_b sorted (≈b,) long tensors on the CPU

    Taught in: chapter 11 (chapters/11_minibatch_1_bank.md).
    """
    if not isinstance(train_mask, torch.Tensor) or train_mask.dtype != torch.bool or train_mask.dim() != 1:
        raise TypeError("train_mask must be a (N,) bool tensor")
    batch_size = check_int(batch_size, "batch_size", 1, hint=">= N for one full batch")
    mask = train_mask.detach().cpu()
    n = mask.shape[0]
    lab = torch.nonzero(mask).flatten()
    if lab.numel() == 0:
        raise ValueError("train_mask selects no node; every batch needs labelled nodes")
    unl = torch.nonzero(~mask).flatten()
    nb = max(1, math.ceil(n / batch_size))
    lab = lab[torch.randperm(lab.numel(), generator=generator)]
    unl = unl[torch.randperm(unl.numel(), generator=generator)]
    lparts = list(torch.tensor_split(lab, nb))
    uparts = list(torch.tensor_split(unl, nb))
    out = []
    for t in range(nb):
        part = lparts[t]
        if part.numel() == 0:
            part = lab[t % lab.numel()].reshape(1)
        out.append(torch.sort(torch.cat([part, uparts[t]])).values)
    return out

