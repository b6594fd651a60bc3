"""The backbone-fitting rules of ``train``: which options a backbone gets from the images."""
from __future__ import annotations

import sys

import torch

from .._checks import ArgumentTypeError
from ..backbone import backbone_config, backbone_entrypoint, create_backbone, is_backbone
from ..data import as_image_source

__all__ = ["create_backbone_for", "image_shape", "sample_images"]


def image_shape(images) -> tuple:
    """(C_in, H, W) of a tensor (N, C_in, H, W) or of an image source."""
    return tuple(images.shape[1:]) if hasattr(images, "shape") else tuple(images.image_shape)


def sample_images(images) -> torch.Tensor:
    """A few images as a float tensor (for the backbone's input check): uint8 becomes pixel / 255."""
    return as_image_source(images).take(torch.arange(min(2, len(images))))


def _resizes_images(name: str) -> bool:
    """Whether the registered backbone ``name`` takes the images as they come (1/3 channels, any size)
    and resizes them itself, so that no ``in_chans``/``img_size`` may be set from the data."""
    return is_backbone(name) and bool(getattr(backbone_entrypoint(name), "bgcn_resizes_images", False))


def create_backbone_for(name: str, pretrained_file, images, **opts) -> tuple:
    """``create_backbone(name)`` fitted to the images; returns (backbone, images, options used).

    A registered backbone gets ``in_chans`` and ``img_size`` from the data where its config has
    them (``cnn_digits`` takes any size, so no ``img_size``). A timm model gets ``in_chans`` from
    the data and, if its architecture takes one (ViTs), ``img_size``; with ``pretrained_file`` it
    keeps the 3 input channels its weights were trained on and one-channel images are repeated
    over 3 channels (a grayscale image as RGB). ``opts`` (``bn_policy``, ``train_blocks``,
    ``img_size``) go only to a backbone that resizes the images itself.
    """
    c, h, w = (int(v) for v in image_shape(images))
    size = h if h == w else (h, w)
    resizes = _resizes_images(name)
    if opts and not resizes:
        flags = ", ".join("--" + k.replace("_", "-") for k in opts)
        raise ValueError(f"{flags} apply to --backbone efficientnet_lite0_imagenet, not {name!r}; drop them")
    if resizes:  # it takes the images as they come (1/3 channels, any size) and resizes them itself
        backbone = create_backbone(name, pretrained_file=pretrained_file, **opts)
        kw = dict(opts)
    elif is_backbone(name):
        cfg = backbone_config(name)
        kw = {k: v for k, v in (("in_chans", c), ("img_size", size)) if k in cfg}
        backbone = create_backbone(name, pretrained_file=pretrained_file, **kw)
    else:
        kw = {}
        if pretrained_file is None:
            kw["in_chans"] = c
        elif c == 1 and isinstance(images, torch.Tensor):
            print(f"python -m bgcn train: {name} with --pretrained-file takes 3-channel images: the "
                  f"one-channel images are repeated over 3 channels", file=sys.stderr)
            images = images.expand(-1, 3, -1, -1).contiguous()
        try:  # timm ViTs are built for one image size: give them the data's
            backbone = create_backbone(name, pretrained_file=pretrained_file, img_size=size, **kw)
            kw["img_size"] = size
        except ArgumentTypeError:  # a bad value of a known option: its own message names it
            raise
        except TypeError:  # the architecture takes no img_size (a conv net): any size works
            backbone = create_backbone(name, pretrained_file=pretrained_file, **kw)
    return backbone, images, {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}
