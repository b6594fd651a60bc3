"""Committed experiments, one module each, sharing :mod:`bgcn.experiments.common` (partial results
that resume, the one atomic write, the subset of a dataset).

- :mod:`bgcn.experiments.real`: a real ImageNet-pretrained extractor on Fashion-MNIST and the
  nuisance-shapes positive control (``python -m bgcn experiment --dataset fashion-mnist``, chapter 12).

The digits comparison (chapter 08) is :mod:`bgcn.experiment` and the estimator comparison
(chapter 09) :mod:`bgcn.estimator_experiment`; both predate this package and keep their names.
"""
