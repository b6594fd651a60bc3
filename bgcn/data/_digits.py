"""scikit-learn's handwritten digits, registered as ``"digits"``."""
from __future__ import annotations

import numpy as np
import torch

from ._dataset import Dataset
from ._registry import register_dataset

__all__ = ["load_digits"]


@register_dataset("digits")
def load_digits() -> Dataset:
    """scikit-learn's handwritten digits as images in [0, 1].

    The pixel counts 0…16 are divided by 16: ``x = counts / 16``.

    Shapes:
        images: (1797, 1, 8, 8) float32 in [0, 1]
        labels: (1797,) long in {0, …, 9}

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    d = _sk_load_digits()
    images = torch.from_numpy(np.ascontiguousarray(d.images, dtype=np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(np.asarray(d.target, dtype=np.int64))
    return Dataset(images, labels, [str(c) for c in range(10)], "digits")

