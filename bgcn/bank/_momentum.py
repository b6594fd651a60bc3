r"""A momentum (EMA) backbone for the bank, as in MoCo.

Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .._checks import check_number


def ema_backbone(backbone: nn.Module) -> nn.Module:
    r"""A frozen copy :math:`\theta_\text{ema} = \theta` of the backbone, for a momentum bank (MoCo).

    Update it after every step with :func:`momentum_update`; its features change slowly, so the
    bank's rows written at different steps stay comparable.

    Shapes: same as the backbone.

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone must be a torch.nn.Module, got {type(backbone).__name__}")
    ema = copy.deepcopy(backbone)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema.eval()


@torch.no_grad()
def momentum_update(ema: nn.Module, backbone: nn.Module, momentum: float = 0.99) -> nn.Module:
    r""":math:`\theta_\text{ema} \leftarrow m\,\theta_\text{ema} + (1 - m)\,\theta` for every parameter
    (buffers are copied).

    Shapes: none (parameters in place).

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    momentum = check_number(momentum, "momentum", 0, 1, hint="0 copies the backbone")
    pe, pb = list(ema.parameters()), list(backbone.parameters())
    if len(pe) != len(pb) or any(a.shape != b.shape for a, b in zip(pe, pb)):
        raise ValueError("ema and backbone must have the same architecture (make ema with ema_backbone(backbone))")
    for a, b in zip(pe, pb):
        a.mul_(momentum).add_(b.detach(), alpha=1.0 - momentum)
    for a, b in zip(ema.buffers(), backbone.buffers()):
        a.copy_(b)
    return ema
