"""The return type of every loader: :class:`Dataset`, a 2-tuple ``(images, labels)`` with names."""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from ..utils import check_tensor
from ._masks import check_labels

__all__ = ["Dataset"]


class _ImagesLabels(NamedTuple):
    images: torch.Tensor
    labels: torch.Tensor


class Dataset(_ImagesLabels):
    """A labelled image set: a 2-tuple ``(images, labels)`` with ``class_names`` and ``name`` attached.

    It unpacks as exactly two values, ``images, labels = ds``; ``ds.images``/``ds.labels`` are the
    same tensors, and ``ds.class_names[c]`` names class ``c``.

    Shapes:
        - images: (N, C_in, H, W) float32 in [0, 1] (C_in image channels, not the class count C),
          or uint8 in {0, …, 255} where asked for (``load_fashion_mnist(dtype=torch.uint8)``);
          :class:`TensorImages` turns those into x = pixel / 255 one batch at a time
        - labels: (N,) long in {0, …, C-1}
        - class_names: list of C strings

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """

    # No __slots__: instances get a __dict__ for the two extra attributes.
    def __new__(cls, images: torch.Tensor, labels: torch.Tensor,
                class_names: Sequence[str] | None = None, name: str = ""):
        if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:  # raw pixels 0..255
            check_tensor(images, "images", ndim=4, finite=False, floating=False)
        else:
            check_tensor(images, "images", ndim=4, finite=False)
        check_labels(labels, images.shape[0])
        self = super().__new__(cls, images, labels)
        if class_names is None:
            c = int(labels.max()) + 1 if labels.numel() else 0
            class_names = [str(i) for i in range(c)]
        self.class_names = [str(c) for c in class_names]
        if labels.numel() and int(labels.max()) >= len(self.class_names):
            raise ValueError(f"labels go up to {int(labels.max())} but only {len(self.class_names)} class_names "
                             f"were given; give one name per class 0..{int(labels.max())}")
        self.name = str(name)
        return self

    @property
    def num_classes(self) -> int:
        """C, the number of classes (``len(class_names)``)."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C_in, H, W) of one image."""
        return tuple(self.images.shape[1:])

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, images={tuple(self.images.shape)} {self.images.dtype}, "
                f"labels={tuple(self.labels.shape)}, num_classes={self.num_classes})")

