"""bgcn — BackProp GCN: a GCN on a kNN graph of image features, trained end to end through the ranking step.

Library of the book; see README.md and chapters/. Public API in DESIGN.md.
"""
from __future__ import annotations

__version__ = "0.1.0"

import warnings as _warnings

# torch_geometric 2.8 calls the deprecated torch.jit.script at import time; the warning is not ours
# and would clutter every notebook page.
_warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from . import utils
from .utils import get_device, seed_everything
from .similarity import cosine_similarity, knn_indices, normalize_rows
from .topk import (ESTIMATORS, Selection, effective_neighbours, get_estimator, hard_topk, register_estimator,
                   soft_topk, softmax_jacobian, topk_mass, topk_selection_matrix)
from .graph import KNNGraph, edge_change_fraction, knn_graph, rankings_to_edges, to_networkx
from .data import Dataset, label_masks, load_dataset
from .backbone import create_backbone, extract_features, list_backbones
from .gcn import GCN, dense_gcn_norm, edge_index_to_dense
from . import gcn_spec
from . import argmax, scaling, temperature
from .temperature import suggest_tau
from . import estimators  # registers the selection estimators of chapter 09 in ESTIMATORS
from .model import MODES, EndToEnd, build_model
from .train import History, TrainResult, TrainingDiverged, load_checkpoint, pretrain_backbone, save_checkpoint, train

_LAZY = {"viz", "cli", "experiment"}


def __getattr__(name):  # lazy submodules: bgcn.viz imports plotly/matplotlib only when used
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'bgcn' has no attribute {name!r}")
