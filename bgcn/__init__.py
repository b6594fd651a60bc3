"""bgcn — BackProp GCN: a GCN on a kNN graph of image features, trained end to end through the ranking step.

Library of the book; see README.md and chapters/. Public API in DESIGN.md.
"""
from __future__ import annotations

from ._version import __version__

import warnings as _warnings

# torch_geometric 2.8 calls the deprecated torch.jit.script at import time; the warning is not ours
# and would clutter every notebook page.
_warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from . import utils
from .utils import get_device, seed_everything, versions
from .similarity import cosine_similarity, knn_indices, normalize_rows
from .estimators import ESTIMATORS, EstimatorSpec, Selection, get_estimator, get_spec, register_estimator
from .topk import effective_neighbours, hard_topk, soft_topk, softmax_jacobian, topk_mass, topk_selection_matrix
from .graph import KNNGraph, edge_change_fraction, knn_graph, rankings_to_edges, to_networkx
from .data import Dataset, label_masks, load_dataset
from .backbone import create_backbone, extract_features, list_backbones
from .gcn import GCN, dense_gcn_norm, edge_index_to_dense
from . import gcn_spec
from . import argmax, scaling, temperature
from .temperature import suggest_tau
from . import estimators  # noqa: F401 - the estimator registry (bgcn.ESTIMATORS) and chapter 09's estimators
from .model import MODES, EndToEnd, build_model
from .train import History, TrainResult, TrainingDiverged, load_checkpoint, pretrain_backbone, save_checkpoint

import inspect as _inspect
import sys as _sys
import types as _types


def _callable_module(module, fn):
    """Make ``module`` callable as ``fn`` (in place): ``module(*a, **kw)`` is ``fn(*a, **kw)``.

    ``bgcn.train`` must be both: the one-call training loop the book calls
    (``bgcn.train(model, images, ...)``) and the module that holds ``pretrain_backbone``,
    ``History``, ``save_checkpoint``... (``bgcn.train.pretrain_backbone``). A function attribute
    would shadow the module; a callable module serves both. ``fn`` is the class's ``__call__``
    itself (a staticmethod), so no extra frame sits between the caller and ``fn``: warnings with
    ``stacklevel=2`` still point at the caller's line.
    """
    cls = type("CallableModule", (_types.ModuleType,),
               {"__call__": staticmethod(fn), "__module__": __name__, "__doc__": fn.__doc__})
    module.__class__ = cls
    module.__signature__ = _inspect.signature(fn)
    return module


_train_module = _callable_module(_sys.modules[f"{__name__}.train"], _sys.modules[f"{__name__}.train"].train)
train = _train_module  # noqa: F811 - bgcn.train is the module, and calling it calls bgcn.train.train
del _inspect, _types, _train_module

# submodules imported on first attribute access: viz needs plotly/matplotlib, cli and the
# experiments are entry points (``python -m bgcn``), not library code
_LAZY = {"viz", "viz_estimators", "cli", "experiment", "estimator_experiment", "distributed", "bank", "minibatch",
         "config", "experiments"}


#: public names that live in a lazily imported submodule (chapter 11's engine)
_LAZY_NAMES = {"FeatureBank": "bank", "train_minibatch": "minibatch", "TrainConfig": "config", "fit": "config"}


def __getattr__(name):
    if name in _LAZY or name in _LAZY_NAMES:
        import importlib

        mod = importlib.import_module(f"{__name__}.{_LAZY_NAMES.get(name, name)}")
        return getattr(mod, name) if name in _LAZY_NAMES else mod
    raise AttributeError(f"module 'bgcn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _LAZY | set(_LAZY_NAMES))
