r"""One validated training configuration and one entry point over both engines.

:class:`TrainConfig` holds every setting of a run, checked once when it is made (a bad value
raises a ``ValueError``/``TypeError`` naming the field and the fix); :func:`fit` hands it to the
engine it names: the full-batch step of the chapters (:func:`bgcn.train.train`, ``batch_size=0``)
or mini-batches over a feature bank (:func:`bgcn.minibatch.train_minibatch`, ``batch_size > 0``).
The command line builds one from its flags (``python -m bgcn train``) and writes it to
``metrics.json`` as ``train_config``; :meth:`TrainConfig.from_dict` reads it back, so a run can be
repeated from its record::

    cfg = bgcn.TrainConfig(mode="end2end", epochs=60, warmup_epochs=40, batch_size=256)
    result = bgcn.fit(model, images, labels, train_mask, val_mask, test_mask, cfg)

Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
"""
from __future__ import annotations

from typing import Any

from .minibatch import train_minibatch
from .train import ENGINES, MAX_LR, TrainConfig, train

__all__ = ["fit"]  # TrainConfig, ENGINES, MAX_LR: documented in bgcn.train, importable here too


def fit(model, images, labels, train_mask, val_mask=None, test_mask=None, config: TrainConfig | None = None,
        *, analysis_labels=None, **overrides: Any):
    r"""Train ``model`` with ``config`` (``overrides`` replace its fields) on the engine it names.

    ``batch_size=0``: :func:`bgcn.train.train` (full batch); ``batch_size > 0``:
    :func:`bgcn.minibatch.train_minibatch`. Returns their :class:`~bgcn.train.TrainResult`, with
    ``result.train_config`` the config used.

    Shapes:
        - images: (N, C_in, H, W); labels, masks: (N,)

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md).
    """
    if config is None:
        config = TrainConfig(**overrides)
    elif not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a bgcn.TrainConfig (or None), got {type(config).__name__}; build one "
                        f"with bgcn.TrainConfig(...) or TrainConfig.from_dict(d)")
    elif overrides:
        config = config.replace(**overrides)
    kw = config.engine_kwargs()
    if config.batch_size:
        res = train_minibatch(model, images, labels, train_mask, val_mask, test_mask, analysis_labels=analysis_labels,
                              **kw)
    else:
        res = train(model, images, labels, train_mask, val_mask, test_mask, analysis_labels=analysis_labels, **kw)
    res.train_config = config
    return res
