"""``create_backbone``: a registered name or any timm name -> a feature extractor without a head.

The one place that turns a name into a module: the registry's builder (or timm), an optional
identity-initialised head (:data:`bgcn.backbone.HEADS`), the forward pre-hook that checks and
casts the images (:func:`bgcn.backbone.cast_images_hook`), and local weights.
"""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from .._checks import ArgumentTypeError
from ._identity import FeatureHead
from ._input import cast_images_hook
from ._registry import DEFAULT_BACKBONE, _REGISTRY
from ._timm import create_timm_backbone
from ._weights import load_backbone_weights

__all__ = ["create_backbone"]


def _check_head_options(name: str, opts: dict[str, Any], takes_head: bool) -> None:
    """Refuse a classifier head (``num_classes``) unless the builder takes one, and hub downloads."""
    if opts.get("num_classes", 0) != 0 and not takes_head:
        raise ValueError(f"num_classes={opts['num_classes']}: a backbone has no classifier head "
                         f"(num_classes=0); the GCN does the classification")
    if not takes_head:
        opts.pop("num_classes", None)
    if opts.pop("pretrained", False):
        raise ValueError("pretrained=True would download weights from a model hub; pass "
                         "pretrained_file='weights.safetensors' (a local file) instead")


def _build_registered(name: str, opts: dict[str, Any], pretrained_file) -> tuple[nn.Module, Any]:
    """The registered builder called with its merged config; returns (module, pretrained_file left to load)."""
    builder, defaults = _REGISTRY[name]
    cfg = {**defaults, **opts}
    if pretrained_file is not None and getattr(builder, "bgcn_loads_pretrained_file", False):
        cfg["pretrained_file"], pretrained_file = pretrained_file, None  # the builder loads (and maps) it
    try:
        model = builder(**cfg)
    except ArgumentTypeError:  # a bad value of a known option: its own message names it
        raise
    except TypeError as e:
        raise TypeError(f"backbone {name!r} does not accept these options: {e}; its options are "
                        f"{', '.join(sorted(defaults))}") from None
    return model, pretrained_file


def create_backbone(name: str = DEFAULT_BACKBONE, pretrained_file: str | os.PathLike | None = None, *,
                    head: str | None = None, **timm_kwargs: Any) -> nn.Module:
    r"""Build a feature extractor f_θ: images → features, F = f_θ(x), without a classifier head.

    ``name`` is one of :func:`list_backbones` (keyword arguments override its config, e.g.
    ``img_size=16`` for 16×16 synthetic images or ``in_chans=3`` for RGB) or any
    ``timm.list_models()`` name (keyword arguments go to ``timm.create_model``, always with
    ``pretrained=False, num_classes=0``). ``pretrained_file`` loads local weights
    (see :func:`load_backbone_weights`).

    Images are **floating-point in [0, 1]** (8-bit pixels divided by 255): integer images are a
    ``TypeError``, floats that look like [0, 255] (all ≥ 0, some > 1) a warning
    (:func:`check_image_values`); float64 images are cast to the parameters' dtype.

    Args:
        name: a registered name (``"vit_digits"`` by default, ``"pixels"``, ``"identity_linear"``,
            ``"efficientnet_lite0_imagenet"``, …) or a timm architecture name.
        pretrained_file: a local weights file (``.safetensors`` or ``torch.save``); with ``head``
            it holds the weights of the whole extractor (backbone and head, as
            :func:`save_backbone_weights` writes them).
        head: ``None`` (default), or ``"linear"``, ``"diag"``, ``"residual"``: the backbone followed
            by an identity-initialised head (:class:`FeatureHead`; :math:`F = h(f(x))` with
            :math:`h = \mathrm{id}` at init, so the first graph is the backbone's). For another
            hidden width of the residual head use ``ResidualHead(create_backbone(name), hidden=...)``.
        **timm_kwargs: the registered config's overrides, or ``timm.create_model``'s options.

    Shapes:
        returned module: images (N, C_in, H, W) in [0, 1] -> F (N, D), D = module.num_features

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md); end to end in chapter 08
    (chapters/08_end_to_end_1_loop.md)
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a backbone name (str), got {name!r}")
    entry = _REGISTRY.get(name)
    takes_head = entry is not None and getattr(entry[0], "bgcn_takes_head", False)
    _check_head_options(name, timm_kwargs, takes_head)
    base_file, whole_file = (pretrained_file, None) if head is None else (None, pretrained_file)
    if entry is not None:
        model, base_file = _build_registered(name, timm_kwargs, base_file)
    else:
        model = create_timm_backbone(name, timm_kwargs)
    if not hasattr(model, "num_features"):
        raise TypeError(f"backbone {name!r} has no .num_features attribute")
    if base_file is not None:
        load_backbone_weights(model, base_file)
    if head is not None:
        model = FeatureHead(model, head)
        if whole_file is not None:
            load_backbone_weights(model, whole_file)
    model.bgcn_name = name if head is None else f"{name}+{head}"  # type: ignore[attr-defined]
    model.register_forward_pre_hook(cast_images_hook)
    return model
