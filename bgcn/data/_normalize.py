"""Per-channel image statistics and standardisation."""
from __future__ import annotations

from typing import Any

import torch

from ..utils import check_tensor

__all__ = ["image_mean_std", "normalize_images"]


def image_mean_std(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation over images and pixels.

    μ_c = mean_{i,h,w} x_{i,c,h,w},  σ_c = std_{i,h,w} x_{i,c,h,w}.

    Shapes:
        images: (N, C_in, H, W);  returns mean (C_in,), std (C_in,)

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    check_tensor(images, "images", ndim=4)
    return images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3))


def normalize_images(images: torch.Tensor, mean: Any = None, std: Any = None) -> torch.Tensor:
    """Standardise per channel: x̂ = (x − μ_c) / σ_c (μ, σ from the images themselves when None).

    Shapes:
        images: (N, C_in, H, W);  mean, std: (C_in,) or scalars;  returns (N, C_in, H, W)

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    check_tensor(images, "images", ndim=4)
    if mean is None or std is None:
        m, s = image_mean_std(images)
        mean = m if mean is None else mean
        std = s if std is None else std
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).reshape(-1, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).reshape(-1, 1, 1)
    if mean.shape[0] not in (1, images.shape[1]) or std.shape[0] not in (1, images.shape[1]):
        raise ValueError(f"mean/std must have 1 or {images.shape[1]} entries (one per channel)")
    if bool((std <= 0).any()):
        raise ValueError("std must be > 0 for every channel (a constant channel cannot be standardised)")
    return (images - mean) / std

