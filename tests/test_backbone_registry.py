"""The backbone registry's public face (timm-like): register, list, config, entry point.

The CLI reads a builder's flags through :func:`backbone_entrypoint` (it used to read the private
``_REGISTRY``, which stays importable for now).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import bgcn.backbone as bb


def test_list_is_backbone_and_entrypoint():
    names = bb.list_backbones()
    assert names == sorted(names) and {"vit_digits", "pixels", "efficientnet_lite0_imagenet"} <= set(names)
    assert bb.is_backbone("pixels") and not bb.is_backbone("resnet18") and not bb.is_backbone(3)
    assert bb.backbone_entrypoint("efficientnet_lite0_imagenet") is bb.EfficientNetLite0ImageNet
    assert getattr(bb.backbone_entrypoint("efficientnet_lite0_imagenet"), "bgcn_resizes_images", False)
    assert not getattr(bb.backbone_entrypoint("mlp_digits"), "bgcn_resizes_images", False)
    assert bb.backbone_entrypoint("mlp_digits") is bb._REGISTRY["mlp_digits"][0]   # the old private view agrees
    for fn in (bb.backbone_entrypoint, bb.backbone_config):
        with pytest.raises(ValueError, match=r"'resnet18' is not a registered backbone; registered: .*pixels"):
            fn("resnet18")


def test_register_a_new_backbone_and_create_it():
    name = "test_registry_linear"

    class Lin(nn.Module):
        def __init__(self, in_features: int = 4, num_features: int = 3):
            super().__init__()
            self.num_features = num_features
            self.fc = nn.Linear(in_features, num_features)

        def forward(self, x):
            return self.fc(x.flatten(1))

    try:
        bb.register_backbone(name, in_features=4, num_features=3)(Lin)
        assert name in bb.list_backbones() and bb.backbone_config(name) == {"in_features": 4, "num_features": 3}
        m = bb.create_backbone(name, num_features=5)
        assert m.num_features == 5 and m(torch.rand(2, 1, 2, 2)).shape == (2, 5)
        with pytest.raises(ValueError, match="already registered"):
            bb.register_backbone(name)(Lin)
    finally:
        bb._REGISTRY.pop(name, None)
    with pytest.raises(ValueError, match="non-empty str"):
        bb.register_backbone("")
