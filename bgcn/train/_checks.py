"""The checks of a training run's data arguments (the settings are :class:`bgcn.config.TrainConfig`'s).

One helper a kind of argument, shared by both engines: the model, the images (no NaN/Inf: the same
:class:`NonFiniteImages` on both), the labels, the masks (their labels, and train/validation
disjoint) and the analysis labels.

Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
"""
from __future__ import annotations

import warnings
from typing import Any

import torch

from .._checks import check_mask, check_tensor
from ..model import EndToEnd
from ._result import NonFiniteImages

__all__ = ["check_model", "default_mode", "check_images", "check_finite_images", "check_labels", "check_masks",
           "check_analysis_labels"]


def check_model(model: Any) -> EndToEnd:
    """``model`` if it is an :class:`~bgcn.model.EndToEnd`, else a ``TypeError``.

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """
    if not isinstance(model, EndToEnd):
        raise TypeError(f"model must be a bgcn.EndToEnd (see bgcn.model.build_model), got {type(model).__name__}")
    return model


def default_mode(model: EndToEnd, mode: str | None) -> str | None:
    """``mode``, or the model's own when None (validated by :class:`~bgcn.config.TrainConfig`).

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """
    if mode is None:
        mode = model.mode if model.mode is not None else ("end2end" if model.train_backbone else "frozen")
    return mode


def check_images(images: Any, *, lazy: bool = False):
    """The images of a run: a floating (N, C_in, H, W) tensor with N >= 1 and no NaN/Inf.

    ``lazy=True`` (the mini-batch engine, which reads images batch by batch) also accepts a uint8
    tensor (each batch divided by 255) and an image source (:class:`bgcn.data.ImageSource`:
    a ``Dataset`` with ``take``), whose images are checked when read.

    Shapes: images (N, C_in, H, W) (2 to 5 dimensions) -> unchanged.

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """
    if lazy and not isinstance(images, torch.Tensor):
        if isinstance(images, torch.utils.data.Dataset) and callable(getattr(images, "take", None)):
            if len(images) == 0:
                raise ValueError("images (an image source) holds no image")
            return images
        raise TypeError(f"images must be a torch.Tensor (N, C_in, H, W) or an image source "
                        f"(bgcn.data.ImageSource, e.g. bgcn.data.ImageFolderSource for a folder read lazily), "
                        f"got {type(images).__name__}")
    check_tensor(images, "images", ndim=(2, 3, 4, 5), finite=False, floating=False)
    if images.shape[0] == 0:
        raise ValueError(f"images must have shape (N, C_in, H, W) with N >= 1, got {tuple(images.shape)}")
    if not (images.is_floating_point() or (lazy and images.dtype == torch.uint8)):
        also = " (or uint8 in 0..255, divided by 255 batch by batch)" if lazy else ""
        raise TypeError(f"images must be a floating-point tensor with values in [0, 1]{also}, got dtype "
                        f"{images.dtype}; convert with images.float() / 255 (uint8) or images.float()")
    return check_finite_images(images)


def check_finite_images(images: torch.Tensor) -> torch.Tensor:
    """Refuse images holding NaN/Inf (:class:`NonFiniteImages`, a ``ValueError``), naming the first.

    Shapes: images (N, ...) -> unchanged.

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """
    if not images.is_floating_point() or images.numel() == 0:
        return images
    bad = ~torch.isfinite(images.detach().reshape(images.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        raise NonFiniteImages(f"images: {int(bad.sum())} image(s) hold NaN/Inf values (the first: image "
                              f"{int(torch.nonzero(bad)[0])}); fix or drop those images before training")
    return images


def check_labels(labels: Any, n: int) -> torch.Tensor:
    """An integer (N,) tensor, one class per image.

    Shapes: labels (N,).

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,) or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape ({n},) (one class per image), got "
                         f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    return labels


def check_masks(model: EndToEnd, labels: torch.Tensor, train_mask: Any, val_mask: Any, test_mask: Any,
                device: torch.device) -> dict:
    """The three masks checked and moved to ``device``, with the label checks of a run.

    Each is a (N,) bool tensor (``train_mask`` required and non-empty); train and validation are
    disjoint; labels in the masks lie in 0..C-1 (C: the GCN's ``out_channels``); every class seen
    in val/test has a labelled node; a warning when the validation set is too small to select an epoch on (< 5 nodes a class).
    Returns ``{"train_mask", "val_mask", "test_mask"}`` (None where not given).

    Shapes: labels (N,) on ``device``; masks (N,) bool.

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """
    n = labels.shape[0]
    masks = {"train_mask": check_mask(train_mask, n, "train_mask", device, required=True),
             "val_mask": check_mask(val_mask, n, "val_mask", device),
             "test_mask": check_mask(test_mask, n, "test_mask", device)}
    tr, va = masks["train_mask"], masks["val_mask"]
    if va is not None and bool((tr & va).any()):
        both = tr & va
        raise ValueError(f"train_mask and val_mask share {int(both.sum())} node(s) (the first: node "
                         f"{int(torch.nonzero(both)[0])}): a validation accuracy on training nodes selects nothing; "
                         f"make them disjoint (bgcn.label_masks does)")
    _check_label_values(labels, masks, getattr(model.gcn, "out_channels", None))
    return masks


def _check_label_values(labels: torch.Tensor, masks: dict, num_classes: int | None) -> None:
    for mname, m in masks.items():
        if m is None or not bool(m.any()):
            continue
        lo, hi = int(labels[m].min()), int(labels[m].max())
        if lo < 0:
            raise ValueError(f"labels of the {mname} nodes must be >= 0, got {lo}; leave unlabelled nodes out of the "
                             f"mask")
        if num_classes is not None and hi >= int(num_classes):
            raise ValueError(f"labels of the {mname} nodes go up to {hi} but the GCN has out_channels C = "
                             f"{num_classes}; labels must lie in 0..{int(num_classes) - 1} (build the model with "
                             f"num_classes={hi + 1})")
    trained = set(labels[masks["train_mask"]].unique().tolist())
    for mname in ("val_mask", "test_mask"):
        m = masks[mname]
        if m is None or not bool(m.any()):
            continue
        missing = sorted(set(labels[m].unique().tolist()) - trained)
        if missing:
            raise ValueError(f"class(es) {missing} appear in {mname} but have no labelled node in train_mask: the GCN "
                             f"cannot learn them; label at least one image of each class (e.g. raise labels_per_class)")
    va = masks["val_mask"]
    if va is not None and bool(va.any()):
        n_val = int(va.sum())
        n_cls = len(set(labels[va].unique().tolist()))
        if n_val < 5 * max(n_cls, 1):
            warnings.warn(f"the validation set has only {n_val} node(s) for {n_cls} class(es) (< 5 a class): one "
                          f"node is {100 / n_val:.0f} accuracy points, so selecting the best epoch on it is mostly "
                          f"noise; label more validation images, or judge by the last epoch (TrainResult.final)",
                          UserWarning, stacklevel=4)


def check_analysis_labels(analysis_labels: Any, n: int) -> torch.Tensor | None:
    """Every node's class (for the homophily only), as a CPU long tensor; None stays None.

    Shapes: analysis_labels (N,).

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """
    if analysis_labels is None:
        return None
    if (not isinstance(analysis_labels, torch.Tensor) or analysis_labels.shape != (n,)
            or analysis_labels.is_floating_point()):
        raise ValueError(f"analysis_labels must be an integer tensor of shape ({n},) (every node's class, for "
                         f"the homophily only) or None")
    return analysis_labels.detach().cpu().long()
