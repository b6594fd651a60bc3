"""Labels and the masks that decide whose labels the loss may see.

The setting is transductive (see the book): the kNN graph spans every image, labelled or not, and
:func:`label_masks` only decides which labels the loss reads.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..utils import check_seed
from .._checks import check_int

__all__ = ["check_labels", "label_masks", "check_every_class_labelled"]


def check_labels(labels: Any, n: int | None = None, mask: Any = None, name: str = "labels") -> torch.Tensor:
    """Check class labels (and optionally a node mask) against N rows of features; return ``labels``.

    Labels must be an integer tensor of shape (N,) with values >= 0 (``-1`` style "unknown" labels
    are not allowed; leave such nodes out of the mask instead). A mask must be a bool tensor of
    shape (N,) selecting at least one node.

    Shapes:
        labels: (N,) long
        mask:   (N,) bool, optional

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md)
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(labels).__name__}; "
                        f"use torch.as_tensor(...).long()")
    if labels.dim() != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {labels.dtype}; call .long()")
    if n is not None and labels.shape[0] != int(n):
        raise ValueError(f"{name} has {labels.shape[0]} entries but features have {int(n)} rows; "
                         f"pass one label per image")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"{name} contains negative class index {int(labels.min())}; labels must be 0..C-1")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool torch.Tensor, got "
                            f"{mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__}")
        if mask.shape != labels.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)} but {name} has shape {tuple(labels.shape)}")
        if not bool(mask.any()):
            raise ValueError("the label mask is empty (selects no node); choose at least one labelled node")
    return labels


def label_masks(labels: torch.Tensor, labels_per_class: int, val_per_class: int | None = None,
                seed: int = 0, num_classes: int | None = None,
                class_names: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stratified train / validation / test masks: ``labels_per_class`` labelled nodes per class.

    For every class c, a seeded random permutation of its nodes gives the first
    ``labels_per_class`` to train, the next ``val_per_class`` to validation (``None`` means as many
    as for training, ``0`` gives an empty validation mask) and the rest to test. The masks are
    disjoint and cover all N nodes; the same seed gives the same masks.

    Every class must have ``labels_per_class + val_per_class`` nodes, so that every class has a
    labelled node: a class the loss never sees is never predicted. With ``num_classes`` = C, the
    classes 0..C-1 that have no node at all are refused too (labels with a gap). ``class_names``
    only names the classes in the error messages.

    Shapes:
        labels: (N,) long
        returns: train_mask, val_mask, test_mask, each (N,) bool

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    check_labels(labels)
    if labels.dtype != torch.long:
        raise TypeError(f"labels must be a long tensor, got dtype {labels.dtype}; call .long()")
    if labels.numel() == 0:
        raise ValueError("labels is empty; nothing to split")
    lpc = check_int(labels_per_class, "labels_per_class", 1)
    vpc = lpc if val_per_class is None else check_int(val_per_class, "val_per_class", 0)
    seed = check_seed(seed)

    labels_cpu = labels.detach().cpu()
    n = labels_cpu.shape[0]
    c_all = int(labels_cpu.max()) + 1
    if num_classes is not None:
        num_classes = check_int(num_classes, "num_classes", 1)
        if c_all > num_classes:
            raise ValueError(f"labels go up to {c_all - 1} but num_classes={num_classes}")
        c_all = num_classes
    counts_all = torch.bincount(labels_cpu, minlength=c_all)
    need = lpc + vpc

    def _name(c: int) -> str:
        if class_names is not None and c < len(class_names) and str(class_names[c]) != str(c):
            return f"class {c} ({class_names[c]!r})"
        return f"class {c}"

    if num_classes is not None:
        empty = [c for c in range(c_all) if int(counts_all[c]) == 0]
        if empty:
            raise ValueError(f"{', '.join(_name(c) for c in empty[:5])} has no node at all, so no node can "
                             f"be labelled; remove the class or add examples of it")
    g = torch.Generator().manual_seed(seed)
    train = torch.zeros(n, dtype=torch.bool)
    val = torch.zeros(n, dtype=torch.bool)
    classes = [c for c in range(c_all) if int(counts_all[c]) > 0]
    short = [(c, int(counts_all[c])) for c in classes if int(counts_all[c]) < need]
    if short:
        desc = ", ".join(f"{_name(c)} has {m}" for c, m in short[:5])
        raise ValueError(f"labels_per_class={lpc} + val_per_class={vpc} = {need} examples per class are "
                         f"needed but {desc}; lower labels_per_class/val_per_class or add examples")
    for c in classes:
        idx = (labels_cpu == c).nonzero(as_tuple=True)[0]
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        train[idx[:lpc]] = True
        val[idx[lpc:need]] = True
    test = ~(train | val)
    if not bool(test.any()):
        raise ValueError(f"the test mask is empty: every node is in train or validation "
                         f"(labels_per_class={lpc}, val_per_class={vpc}); lower them")
    dev = labels.device
    return train.to(dev), val.to(dev), test.to(dev)


def check_every_class_labelled(labels: torch.Tensor, train_mask: torch.Tensor, num_classes: int | None = None,
                               class_names: Sequence[str] | None = None, name: str = "train_mask") -> None:
    """Refuse a label mask that leaves a class without a labelled node.

    Class c is labelled when some i has ``train_mask[i]`` and ``labels[i] == c``; the NLL of a
    class with no labelled node is never minimised, so the GCN never predicts it. ``num_classes``
    (default: max label + 1 over all nodes) says which classes must appear.

    Shapes:
        labels: (N,) integer;  train_mask: (N,) bool

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    check_labels(labels, mask=train_mask, name="labels")
    labels_cpu = labels.detach().cpu().long()
    c_all = int(labels_cpu.max()) + 1 if num_classes is None else check_int(num_classes, "num_classes", 1)
    seen = torch.bincount(labels_cpu[train_mask.detach().cpu()], minlength=c_all)
    missing = [c for c in range(c_all) if int(seen[c]) == 0]
    if missing:
        names = ", ".join(f"{c} ({class_names[c]!r})" if class_names is not None and c < len(class_names)
                          else str(c) for c in missing[:5])
        raise ValueError(f"{name} has no labelled node of class {names}; label at least one node of every "
                         f"class (e.g. label_masks(labels, labels_per_class) draws some from each class)")

