"""What a backbone takes: floating-point images in [0, 1], checked once per forward, cheaply.

:func:`check_image_values` is the one check of the pixel values (one ``aminmax`` reduction):
every backbone made by :func:`bgcn.backbone.create_backbone` runs it in a forward pre-hook
(:func:`cast_images_hook`, which also casts the images to the parameters' dtype), in its lenient
form (a warning for images that look like 8-bit pixels in [0, 255]); a backbone that maps [0, 1]
itself (EfficientNet-Lite0) runs the strict form (NaN, Inf or values outside [0, 1] are a
ValueError). :func:`check_backbone_input` tries one forward pass on two images and turns any
failure into one error naming the fix.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from ..utils import check_tensor

__all__ = ["check_image_values", "cast_images_hook", "check_backbone_input"]

_SLACK = 1e-3  # rounding slack around [0, 1]


def _non_finite_images(x: torch.Tensor, name: str) -> str:
    """'2 of 6 images (first: image 3)' for the images holding a NaN or an Inf (the failing path only)."""
    bad = ~torch.isfinite(x.detach().reshape(x.shape[0], -1)).all(1) if x.dim() > 1 \
        else ~torch.isfinite(x.detach())
    idx = torch.nonzero(bad).flatten().tolist()
    return f"{len(idx)} of {x.shape[0]} {name} (first: index {idx[0] if idx else '?'})"


def check_image_values(x: torch.Tensor, name: str = "images", strict: bool = False, stacklevel: int = 2) -> None:
    r"""Check that floating-point images hold pixel values in [0, 1]: one ``aminmax`` reduction.

    Every backbone takes floats in :math:`[0, 1]` (8-bit pixels divided by 255). With
    ``strict=False`` (every backbone made by :func:`bgcn.backbone.create_backbone`) images whose
    values are all :math:`\ge 0` and some :math:`> 1` (they look like 8-bit pixels in [0, 255],
    or sklearn's digits in [0, 16]) raise a ``UserWarning``; normalised images (negative values)
    and NaN/Inf pass (the training engines refuse non-finite features). With ``strict=True`` (a
    backbone that maps [0, 1] to its own range, e.g. EfficientNet-Lite0) a NaN or Inf, or any
    value outside :math:`[-10^{-3}, 1 + 10^{-3}]`, is a ``ValueError`` naming the images
    (comparisons with NaN are false, so NaN is tested first). Integer or empty tensors are not
    checked here (the forward pre-hook refuses integer images).

    Args:
        x: the images.
        name: the argument's name, for the messages.
        strict: raise on NaN/Inf or values outside [0, 1] instead of warning on [0, 255].
        stacklevel: of the warning (2: the caller of this function).

    Shapes:
        x: (N, C, H, W) (any shape works; N = x.shape[0] names the images)

    Taught in: no chapter (argument checking used by every backbone; see CONTRIBUTING.md)
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.numel() == 0:
        return
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        if strict:
            raise ValueError(f"{name} contain NaN or Inf in {_non_finite_images(x, name)}: a backbone takes "
                             f"finite floats in [0, 1]; repair or drop those images")
        return
    if strict and (lo < -_SLACK or hi > 1 + _SLACK):
        raise ValueError(f"{name} must be in [0, 1] (this backbone maps them to [-1, 1] itself), got values "
                         f"in [{lo:.3g}, {hi:.3g}]; pass unnormalised images (e.g. uint8 / 255), or "
                         f"check_range=False")
    if not strict and lo >= 0 and hi > 1 + _SLACK:
        warnings.warn(f"{name} have values in [{lo:.3g}, {hi:.3g}], but a backbone takes float images in "
                      f"[0, 1]; divide 8-bit pixels by 255 (images.float() / 255)", UserWarning, stacklevel=stacklevel)


def _check_shape(x: torch.Tensor, in_chans: int, img_size: tuple[int, int]) -> None:
    """Refuse images that are not (N, in_chans, H, W) with (H, W) = img_size, naming the fix."""
    if x.dim() != 4 or tuple(x.shape[1:]) != (in_chans, *img_size):
        raise ValueError(f"images must have shape (N, {in_chans}, {img_size[0]}, {img_size[1]}), got "
                         f"{tuple(x.shape)}; create the backbone with img_size=/in_chans= matching the data")


def _pair(img_size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    return int(h), int(w)


def cast_images_hook(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook of every backbone from ``create_backbone``: refuse integer images, check the
    values (:func:`check_image_values`, unless the module checks them itself: ``bgcn_checks_images``),
    cast floating images to the parameters' dtype.

    Shapes:
        args[0]: images (N, C_in, H, W), floating point

    Taught in: no chapter (argument checking used by every backbone; see CONTRIBUTING.md)
    """
    if not args or not isinstance(args[0], torch.Tensor):
        return None
    x = args[0]
    if not x.is_floating_point():
        raise TypeError(f"images have dtype {x.dtype}, but a backbone takes floating-point images in [0, 1]; "
                        f"convert them first, e.g. images.float() / 255 for 8-bit pixels")
    if not getattr(module, "bgcn_checks_images", False):
        check_image_values(x, stacklevel=6)  # the line that called the backbone
    p = next(module.parameters(), None)
    if p is not None and p.is_floating_point() and x.dtype != p.dtype:
        return (x.to(p.dtype), *args[1:])
    return None


def _first_conv_in_channels(backbone: nn.Module) -> int | None:
    """in_channels of the first Conv2d (or ``in_chans`` of our MLP), for error messages only."""
    if isinstance(getattr(backbone, "in_chans", None), int):
        return int(backbone.in_chans)
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


def check_backbone_input(backbone: nn.Module, images: torch.Tensor, name: str | None = None) -> int:
    """Check that ``backbone`` takes these images: one forward pass on two of them; returns D.

    Any failure (a wrong number of channels, an image size a ViT was not built for, a dtype) is
    re-raised as one ``ValueError`` that names the image shape, what the backbone expects where it
    can tell, and the fix (``in_chans=``/``img_size=`` in :func:`create_backbone`, another
    backbone, or ``image_size=`` when loading a folder). The backbone's mode is restored.

    Shapes:
        images: (N, C_in, H, W) (only the first two are used);  returns D = F.shape[1]

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    check_tensor(images, "images", ndim=4, finite=False)
    name = name or getattr(backbone, "bgcn_name", type(backbone).__name__)
    p = next(iter(backbone.parameters()), None)
    dev = p.device if p is not None else torch.device("cpu")
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            f = backbone(images[:2].to(dev))
    except Exception as e:  # noqa: BLE001 - conv, attention and size asserts raise many kinds
        shape = tuple(images.shape[1:])
        want = _first_conv_in_channels(backbone)
        hint = ""
        if want is not None and want != shape[0]:
            hint = (f" it was built for {want}-channel images: create it with in_chans={shape[0]}"
                    f" (or load the folder with grayscale=True/False to match);")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"backbone {name!r} cannot take images of shape (C, H, W) = {shape}:{hint} "
                         f"{type(e).__name__}: {first}; pass in_chans=/img_size= matching the images to "
                         f"create_backbone, or choose another backbone") from e
    finally:
        backbone.train(was_training)
    if not isinstance(f, torch.Tensor) or f.dim() != 2:
        raise ValueError(f"backbone {name!r} returned {tuple(getattr(f, 'shape', ()))} for 2 images, expected "
                         f"(2, D); create it with num_classes=0 through create_backbone")
    return int(f.shape[1])

