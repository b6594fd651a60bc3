"""Feature extractors: images (N, C_in, H, W) → features F (N, D), built on ``timm``.

:func:`create_backbone` takes either one of our registered configs (``"vit_digits"``, the default,
is a timm ``VisionTransformer`` sized for the 8×8 one-channel digits; ``"pixels"`` is the flattened
images; ``"identity_linear"``, ``"identity_diag"``, ``"identity_residual"`` are learnable maps on
the pixels that start as the identity; ``"efficientnet_lite0_imagenet"`` carries ImageNet weights)
or any ``timm.list_models()`` name. The model never has a classifier head (``num_classes=0``): its
output is the feature matrix F that the similarity, the kNN graph and the GCN consume, and its
``.num_features`` is D. Images are floats in [0, 1]. Weights come only from a local file
(``pretrained_file``), never from a model hub: ``pretrained=True`` is never passed to timm.

In the frozen pipeline (chapter 1) the features are computed once with :func:`extract_features`
under ``torch.no_grad()`` (the engines use :func:`embed_images`, the same loop); end to end
(chapter 8) the same module runs with gradients and ``loss.backward()`` reaches its parameters.

Parts: ``_registry`` (names), ``_factory`` (:func:`create_backbone`), ``_input`` (what a backbone
takes), ``_digits`` (the small ViT/MLP/CNN), ``_timm`` (any timm name), ``_weights`` (local
files), ``_imagenet`` (EfficientNet-Lite0), ``_pixels`` and ``_identity`` (extractors that start
from the pixels' graph), ``_embed`` (the one embedding loop), ``_batch`` (whether a feature depends on its batch).
"""
from __future__ import annotations

from ._registry import (_REGISTRY, DEFAULT_BACKBONE, backbone_config, backbone_entrypoint, is_backbone,
                        list_backbones, register_backbone)
from ._input import cast_images_hook, check_backbone_input, check_image_values
from ._timm import TimmFeatures, create_timm_backbone
from ._weights import load_backbone_weights, save_backbone_weights
from ._digits import CNNBackbone, MLPBackbone
from ._pixels import PixelBackbone
from ._identity import HEADS, FeatureHead, IdentityDiag, IdentityLinear, ResidualHead, ResidualMLP
from ._imagenet import (BN_POLICIES, EFFICIENTNET_LITE0_WHEEL, EfficientNetLite0ImageNet,
                        efficientnet_lite0_weights_file)
from ._factory import create_backbone
from ._embed import embed_images, extract_features, image_rows, param_dtype
from ._batch import batch_dependence, norm_layers

__all__ = [
    "DEFAULT_BACKBONE",
    "create_backbone",
    "list_backbones",
    "is_backbone",
    "register_backbone",
    "backbone_config",
    "backbone_entrypoint",
    "load_backbone_weights",
    "save_backbone_weights",
    "extract_features",
    "embed_images",
    "image_rows",
    "param_dtype",
    "check_backbone_input",
    "check_image_values",
    "cast_images_hook",
    "create_timm_backbone",
    "MLPBackbone",
    "CNNBackbone",
    "TimmFeatures",
    "PixelBackbone",
    "HEADS",
    "IdentityLinear",
    "IdentityDiag",
    "ResidualMLP",
    "FeatureHead",
    "ResidualHead",
    "EfficientNetLite0ImageNet",
    "efficientnet_lite0_weights_file",
    "BN_POLICIES",
    "EFFICIENTNET_LITE0_WHEEL",
    "batch_dependence",
    "norm_layers",
]
