"""Any ``timm.list_models()`` architecture as a backbone: no head, no hub, the true output width.

:func:`create_timm_backbone` calls ``timm.create_model(name, pretrained=False, num_classes=0)``
(never a model hub: weights come from a local file, see :mod:`bgcn.backbone._weights`);
:class:`TimmFeatures` wraps a model whose output width is not timm's ``num_features``.
"""
from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn

from ._registry import list_backbones

__all__ = ["TimmFeatures", "create_timm_backbone"]


class TimmFeatures(nn.Module):
    """Wraps a timm model whose ``num_features`` is not its pooled output width D.

    timm's ``num_features`` is the width of ``forward_features`` (before pooling and any head
    convolution); models such as MobileNetV3 add a head convolution, so with ``num_classes=0`` they
    output ``head_hidden_size`` features instead. This wrapper exposes the true D as
    ``.num_features`` and keeps the timm model as ``.model``.

    Args:
        model: the timm model (built with ``num_classes=0``).
        num_features: its output width D.

    Shapes:
        x: (N, C_in, H, W) -> F: (N, num_features)

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """

    def __init__(self, model: nn.Module, num_features: int):
        super().__init__()
        self.model = model
        self.num_features = int(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def create_timm_backbone(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=0, **kwargs)``, wrapped in
    :class:`TimmFeatures` when its output width differs from ``num_features``.

    An unknown name is a ValueError listing our registered names and the closest timm names; a
    hub name (``hf-hub:...``) is refused (it needs the internet).

    Shapes:
        returned module: images (N, C_in, H, W) -> F (N, D), D = module.num_features

    Taught in: no chapter (create_backbone calls it for a timm name)
    """
    import timm

    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or ":" in name:
        raise ValueError(f"{name!r} refers to a model hub or remote config, which needs the internet; use "
                         f"a timm architecture name with pretrained_file='weights.safetensors'")
    if not timm.is_model(name):
        ours = list_backbones()
        close = difflib.get_close_matches(name, ours + timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown backbone {name!r}. Registered here: {', '.join(ours)}; any name from "
                         f"timm.list_models() (e.g. 'resnet18', 'vit_tiny_patch16_224') works too.{hint}")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as e:
        raise TypeError(f"timm model {name!r} does not accept the options {sorted(kwargs)}: {e}") from None
    d = getattr(model, "head_hidden_size", None)
    if d is not None and int(d) != int(model.num_features):
        # e.g. MobileNetV3: a head conv after pooling, so the output width is head_hidden_size.
        model = TimmFeatures(model, int(d))
    return model
