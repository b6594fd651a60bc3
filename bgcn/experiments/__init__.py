"""Committed experiments, one module each, sharing :mod:`bgcn.experiments.common` (partial results
that resume, the one atomic write, the subset of a dataset).

- :mod:`bgcn.experiments.real`: a real ImageNet-pretrained extractor on Fashion-MNIST and the
  nuisance-shapes positive control (``python -m bgcn experiment --dataset fashion-mnist``, chapter 12).
- :mod:`bgcn.experiments.seeds`: short runs that measure two seed claims no chapter settles
  (gradient clipping for the score function, the scale of the scores during training), called
  live by the Sources page.

The digits comparison (chapter 08) is :mod:`bgcn.experiment` and the estimator comparison
(chapter 09) :mod:`bgcn.estimator_experiment`; both predate this package and keep their names.
"""
