"""The digits with a label-free stamp beside each one: a positive control for learning the graph.

``"digits-stamps"`` (:func:`make_digits_stamps`) puts one of M random binary 8 × 8 patterns (the
*stamp*, drawn independently of the digit's class) beside every digit. The stamp carries more
energy than the digit, so the cosine similarity of the raw pixels ranks images by their stamp:
the frozen kNN graph joins images of different classes that share a stamp. An extractor that
learns to turn the stamp's pixels down restores the digit graph — which only a gradient through
the ranking asks it to do; the GCN can ignore the stamp in its node features on its own.

Taught in: chapter 13 (chapters/13_what_we_found_2_other_settings.md)
"""
from __future__ import annotations

import numpy as np
import torch

from .._checks import check_int, check_number
from ..utils import check_seed
from ._dataset import Dataset
from ._digits import load_digits
from ._registry import register_dataset

__all__ = ["make_digits_stamps"]


@register_dataset("digits-stamps")
def make_digits_stamps(num_stamps: int = 100, density: float = 0.25, strength: float = 1.0,
                       seed: int = 0) -> Dataset:
    r"""scikit-learn's 1 797 digits, each with a label-free stamp in an 8 × 8 panel on its right.

    From one ``numpy`` Generator(``seed``): M = ``num_stamps`` stamps
    :math:`s_m \in \{0, a\}^{8\times 8}` (a = ``strength``, each pixel on with probability
    ``density``, at least one pixel on), and for image i a stamp index
    :math:`z_i \sim U\{0, …, M-1\}` drawn independently of its class. The image is
    :math:`x_i = [\,d_i \mid s_{z_i}\,]`, the digit :math:`d_i` (``load_digits``, values in [0, 1])
    and its stamp side by side. The order and the labels are the digits' own, so
    :func:`bgcn.data.benchmark_split` gives the same masks as on ``"digits"``; the stamp index
    rides along as ``dataset.nuisance``.

    With the defaults a stamp has about 16 pixels at 1 (energy ≈ 16) against a digit's ≈ 12, so
    two images that share a stamp are closer in cosine than two of the same class that do not.

    Shapes:
        images: (1797, 1, 8, 16) float32 in [0, max(1, strength)]
        labels: (1797,) long in {0, …, 9};  nuisance: (1797,) long in {0, …, M-1}

    Taught in: chapter 13 (chapters/13_what_we_found_2_other_settings.md)
    """
    m = check_int(num_stamps, "num_stamps", 2)
    density = check_number(density, "density", 0.0, 1.0, open_min=True)
    strength = check_number(strength, "strength", 0.0, open_min=True)
    rng = np.random.default_rng(check_seed(seed))
    digits = load_digits()
    stamps = rng.random((m, 8, 8)) < density
    for s in stamps:  # every stamp has at least one pixel on
        if not s.any():
            s[rng.integers(8), rng.integers(8)] = True
    z = rng.integers(0, m, size=digits.labels.shape[0])
    panel = torch.from_numpy(stamps[z].astype(np.float32) * strength).unsqueeze(1)
    ds = Dataset(torch.cat([digits.images, panel], dim=3), digits.labels, digits.class_names, "digits-stamps")
    ds.nuisance = torch.from_numpy(z.astype(np.int64))
    return ds
