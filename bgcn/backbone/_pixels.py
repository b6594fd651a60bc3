r"""The ``"pixels"`` backbone: the flattened images themselves, no parameters.

:math:`F = \operatorname{vec}(x) \in \mathbb R^{C\cdot H\cdot W}`. Its frozen row *is* the kNN-GCN
on the pixels, the field's baseline on the digits (LDS, IDGL); the identity-initialised extractors
(:mod:`bgcn.backbone._identity`) start from it.
"""
from __future__ import annotations

import torch
from torch import nn

from .._checks import check_int
from ._input import _check_shape, _pair
from ._registry import register_backbone

__all__ = ["PixelBackbone"]


class PixelBackbone(nn.Module):
    r"""The flattened image as its feature vector: :math:`F = \operatorname{vec}(x)`, no parameters.

    ``num_features`` is :math:`D = C_\text{in}\cdot H\cdot W` (64 for the 8×8 digits, 784 for
    Fashion-MNIST). The output is a copy (not a view of the images) in the images' dtype: with no
    parameters nothing casts them, so float64 images give float64 features.

    Args:
        img_size: side (or (H, W)) of the images.
        in_chans: number of channels C_in.

    Shapes:
        x: (N, in_chans, H, W), floats in [0, 1] -> F: (N, in_chans·H·W)

    Taught in: no chapter yet (issue 16: the digits against the field start from the pixels' graph)
    """

    def __init__(self, img_size: int | tuple[int, int] = 8, in_chans: int = 1):
        super().__init__()
        h, w = _pair(img_size)
        in_chans = check_int(in_chans, "in_chans", 1, hint="the C of the images (N, C, H, W)")
        h, w = (check_int(v, "img_size", 1, hint="the H and W of the images (N, C, H, W)") for v in (h, w))
        self.img_size, self.in_chans = (h, w), in_chans
        self.num_features = self.in_chans * h * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_shape(x, self.in_chans, self.img_size)
        return x.flatten(1).clone()

    def extra_repr(self) -> str:
        return f"img_size={self.img_size}, in_chans={self.in_chans}, num_features={self.num_features}"


register_backbone("pixels", img_size=8, in_chans=1)(PixelBackbone)
