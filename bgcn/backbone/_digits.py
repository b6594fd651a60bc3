"""The small backbones for the bundled 8×8 one-channel digits: two ViTs, an MLP and a CNN.

Registered as ``"vit_digits"`` (the default), ``"vit_tiny_digits"``, ``"mlp_digits"`` and
``"cnn_digits"``; keyword arguments of :func:`bgcn.backbone.create_backbone` override their config
(e.g. ``img_size=16, in_chans=3``). Images are floats in [0, 1].
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._input import _check_shape, _pair
from ._registry import register_backbone

__all__ = ["MLPBackbone", "CNNBackbone"]


def _vit(**cfg: Any) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(**cfg)


# The ViTs are exactly what timm.create_model("vit_tiny_patch16_224", img_size=8, patch_size=2,
# in_chans=1, embed_dim=64, depth=4, num_heads=4, num_classes=0) builds; registered under short names.
register_backbone("vit_digits", img_size=8, patch_size=2, in_chans=1, embed_dim=64, depth=4,
                  num_heads=4, num_classes=0)(_vit)
register_backbone("vit_tiny_digits", img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2,
                  num_heads=2, num_classes=0)(_vit)


class MLPBackbone(nn.Module):
    """A two-layer perceptron on the flattened image: F = W₂ · GELU(W₁ · vec(x) + b₁) + b₂.

    The fastest backbone; for quick tests and for the book's small examples.

    Args:
        img_size: side (or (H, W)) of the images.
        in_chans: number of channels C_in.
        hidden: width of the hidden layer.
        num_features: D.

    Shapes:
        x: (N, in_chans, img_size, img_size), floats in [0, 1] -> F: (N, num_features)

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md)
    """

    def __init__(self, img_size: int | tuple[int, int] = 8, in_chans: int = 1, hidden: int = 128,
                 num_features: int = 64):
        super().__init__()
        h, w = _pair(img_size)
        self.img_size, self.in_chans, self.num_features = (h, w), int(in_chans), int(num_features)
        self.net = nn.Sequential(nn.Flatten(1), nn.Linear(self.in_chans * h * w, hidden), nn.GELU(),
                                 nn.Linear(hidden, self.num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_shape(x, self.in_chans, self.img_size)
        return self.net(x)


class CNNBackbone(nn.Module):
    """A small conv net: three 3×3 convolutions with GELU, one 2×2 max-pool, global average pool.

    F = mean_{h,w} GELU(conv₃(pool(GELU(conv₂(GELU(conv₁ x)))))). Works for any image size ≥ 2.

    Args:
        in_chans: number of channels C_in.
        width: channels of the first convolution (the second has twice as many).
        num_features: D.

    Shapes:
        x: (N, in_chans, H, W), floats in [0, 1] -> F: (N, num_features)

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md)
    """

    def __init__(self, in_chans: int = 1, width: int = 32, num_features: int = 64):
        super().__init__()
        self.in_chans, self.num_features = int(in_chans), int(num_features)
        self.net = nn.Sequential(
            nn.Conv2d(self.in_chans, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, self.num_features, 3, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


register_backbone("mlp_digits", img_size=8, in_chans=1, hidden=128, num_features=64)(MLPBackbone)
register_backbone("cnn_digits", in_chans=1, width=32, num_features=64)(CNNBackbone)
