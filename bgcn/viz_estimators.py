"""Chapter 09's figures of one row of the score matrix: they live in :mod:`bgcn.viz` (``bgcn/viz/_estimators.py``).

This module keeps ``bgcn.viz_estimators.<name>`` and ``from bgcn.viz_estimators import ...`` working.

Taught in: chapter 09 (chapters/09_estimators_1_softmax.md, chapters/09_estimators_4_digits.md).
"""
from __future__ import annotations

from .viz import (CHOSEN_COLOUR, OTHER_COLOUR, ROW_ESTIMATORS, classify_differences, estimator_row,
                  estimator_row_figure, paired_differences, paired_reading, plot_estimator_row,
                  plot_paired_differences, plot_toy_row)

__all__ = ["ROW_ESTIMATORS", "CHOSEN_COLOUR", "OTHER_COLOUR", "estimator_row", "plot_toy_row", "plot_estimator_row",
           "estimator_row_figure", "paired_differences", "classify_differences", "paired_reading",
           "plot_paired_differences"]
