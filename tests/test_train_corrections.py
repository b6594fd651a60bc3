"""The training loop's corrections of issue 9 (§2): each test failed before the change.

- one source of truth for the mode (configure frozen -> end2end keeps the estimator);
- the warm-up trains on the frozen mode's hard graph under no_grad, for every estimator;
- model selection among the joint epochs only, with the warm-up model recorded beside it;
- the NLL and the score-function surrogate kept apart in the history;
- the graph path measured on the backbone's parameters; homophily as an analysis quantity;
- resume refuses any changed setting (extra_config included) and says when it starts afresh;
- a generator state saved on another device is not forced into this one.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from bgcn.backbone import create_backbone
from bgcn.data import label_masks, load_dataset
from bgcn.graph import edge_homophily, knn_graph, rankings_to_edges, symmetrize_dense, KNNGraph
from bgcn.model import build_model
from bgcn.train import _rng_state, _set_rng_state, train
from bgcn.utils import seed_everything

N, C, K = 120, 4, 5
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    ds = load_dataset("synthetic", n=N, num_classes=C, seed=0)
    tr, va, te = label_masks(ds.labels, 5, seed=0)
    return ds.images, ds.labels, tr, va, te


def _model(mode="end2end", estimator="softmax", tau=0.1, seed=0):
    torch.manual_seed(seed)
    return build_model(create_backbone("mlp_digits"), C, k=K, estimator=estimator, tau=tau, hidden=16, mode=mode)


def _train(data, model, **kw):
    images, labels, tr, va, te = data
    kw.setdefault("device", "cpu")
    kw.setdefault("progress", False)
    kw.setdefault("lr_backbone", 1e-3)
    return train(model, images, labels, tr, va, te, **kw)


# -- one mode --------------------------------------------------------------------------------------
def test_configure_frozen_then_end2end_keeps_the_estimator():
    m = _model("end2end", estimator="ste")
    m.configure("frozen")
    assert m.estimator_name == "hard" and not m.use_graph_weights and not m.train_backbone
    m.configure("end2end")
    assert m.estimator_name == "ste" and m.use_graph_weights and m.train_backbone
    assert m.mode == "end2end"


def test_train_without_mode_follows_the_model(data):
    m = _model("frozen")
    res = _train(data, m, epochs=2)
    assert res.config["mode"] == "frozen" and res.model.mode == "frozen"
    assert all(g == 0.0 for g in res.history.grad_backbone)
    # an explicit mode reconfigures the model, and the model then says so too
    res = _train(data, m, epochs=2, mode="end2end")
    assert res.model.mode == "end2end" and res.config["estimator"] == "softmax"


# -- warm-up ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["imle", "gumbel_reinforce", "sigmoid", "capped_simplex", "softmax"])
def test_warmup_is_the_frozen_run(data, estimator):
    """Every end-to-end run warms up on the frozen mode's hard graph: its warm-up epochs are the frozen run's."""
    w = 3
    frozen = _train(data, _model("frozen", estimator), epochs=w, mode="frozen")
    e2e = _train(data, _model("end2end", estimator), epochs=w + 1, warmup_epochs=w, mode="end2end")
    assert e2e.history.loss[:w] == frozen.history.loss
    assert e2e.history.val_acc[:w] == frozen.history.val_acc
    ie, ifr = e2e.history.initial, frozen.history.initial
    assert ie.keys() == ifr.keys()
    assert all(ie[k] == ifr[k] or (ie[k] != ie[k] and ifr[k] != ifr[k]) for k in ie)  # NaN == NaN here
    # the warm-up graph has k unit-weight edges a row (no dense or sampled graph)
    g = e2e.graphs["warmup"]
    assert g["indices"].shape == (N, K) and bool((g["weights"] == 1).all())


def test_warmup_must_leave_joint_epochs(data):
    with pytest.raises(ValueError, match="warmup_epochs"):
        _train(data, _model(), epochs=3, warmup_epochs=3, mode="end2end")


# -- model selection ---------------------------------------------------------------------------------
def test_selection_among_joint_epochs_only(data):
    w = 4
    res = _train(data, _model(), epochs=w + 3, warmup_epochs=w, mode="end2end", lr_gcn=5e-2)
    assert res.best_epoch > w
    assert res.warmup["epoch"] == w and 1 <= res.warmup["best_epoch"] <= w
    assert res.warmup["test_acc"] == res.history.test_acc[w - 1]
    joint = res.history.val_acc[w:]
    assert res.best_val_acc == max(joint)
    assert res.test_acc_at_best_val == res.history.test_acc[res.best_epoch - 1]
    assert math.isclose(res.gain_over_warmup, res.test_acc_at_best_val - res.warmup["test_acc"])
    # the scored model's graph is kept (edges changed / homophily are measured on it)
    assert res.graphs["best"]["epoch"] == res.best_epoch
    assert res.summary()["warmup"]["epoch"] == w


def test_without_warmup_every_epoch_competes(data):
    res = _train(data, _model(), epochs=4, mode="end2end")
    assert res.warmup is None and math.isnan(res.gain_over_warmup)
    assert res.best_val_acc == max(res.history.val_acc)


# -- losses apart ----------------------------------------------------------------------------------
def test_history_loss_is_the_nll_not_the_surrogate(data):
    images, labels, tr, va, te = data
    seed = 3
    res = _train(data, _model("end2end", "gumbel_reinforce"), epochs=1, mode="end2end", seed=seed)
    # replay the first step's forward by hand: the same seeds, the same generator
    model = _model("end2end", "gumbel_reinforce")
    seed_everything(seed)
    g = torch.Generator().manual_seed(seed + 1)
    model.train()
    logp = model(images, generator=g)
    nll = torch.nn.functional.nll_loss(logp[tr], labels[tr])
    assert res.history.loss[0] == pytest.approx(float(nll.detach()), rel=1e-6, abs=1e-7)
    assert res.history.surrogate[0] != 0.0
    plain = _train(data, _model(), epochs=1, mode="end2end")
    assert plain.history.surrogate == [0.0]


# -- the graph path on the parameters ----------------------------------------------------------------
def test_param_path_norms(data):
    res = _train(data, _model("end2end-features"), epochs=2, mode="end2end-features", param_path_norms=True)
    h = res.history
    assert h.grad_backbone_graph == [0.0, 0.0]
    np.testing.assert_allclose(h.grad_backbone_node, h.grad_backbone, rtol=1e-5)
    res = _train(data, _model("end2end", "softmax", tau=0.05), epochs=2, mode="end2end", param_path_norms=True)
    h = res.history
    for node, graph, total in zip(h.grad_backbone_node, h.grad_backbone_graph, h.grad_backbone):
        assert graph > 0 and node > 0
        # the two paths' updates add up to the real one: triangle inequality both ways
        assert abs(node - graph) * (1 - 1e-4) <= total <= (node + graph) * (1 + 1e-4)
    off = _train(data, _model(), epochs=1, mode="end2end")
    assert math.isnan(off.history.grad_backbone_graph[0])


# -- homophily / symmetric ----------------------------------------------------------------------------
def test_edge_homophily_by_hand():
    idx = torch.tensor([[1, 2], [0, 3], [3, 0], [2, 1]])
    lab = torch.tensor([0, 0, 1, 1])
    # same-class edges: 0-1, 1-0, 2-3, 3-2 -> 4 of 8
    assert edge_homophily(idx, lab) == 0.5
    with pytest.raises(ValueError, match="labels"):
        edge_homophily(idx, lab[:3])


def test_train_records_homophily_from_analysis_labels_only(data):
    images, labels, tr, va, te = data
    res = _train(data, _model("frozen"), epochs=2, mode="frozen", analysis_labels=labels)
    g = res.graphs["initial"]["indices"].long()
    assert res.history.initial["homophily"] == edge_homophily(g, labels)
    assert res.history.homophily == [edge_homophily(g, labels)] * 2  # frozen: the graph never moves
    # the labels used for analysis change nothing in the training
    other = _train(data, _model("frozen"), epochs=2, mode="frozen", analysis_labels=torch.zeros_like(labels))
    assert other.history.loss == res.history.loss and other.history.homophily == [1.0, 1.0]


def test_symmetric_dense_equals_sparse():
    torch.manual_seed(0)
    n, k = 9, 3
    idx = torch.stack([torch.randperm(n - 1)[:k] for _ in range(n)])
    idx = idx + (idx >= torch.arange(n)[:, None]).long()  # no self
    w = torch.rand(n, k, dtype=torch.float64) + 0.1
    ei, ew = rankings_to_edges(idx, w, symmetric=True)
    sparse = KNNGraph(ei, ew, idx, w, n).to_dense()
    dense = torch.zeros(n, n, dtype=torch.float64)
    dense[torch.arange(n).repeat_interleave(k), idx.reshape(-1)] = w.reshape(-1)
    torch.testing.assert_close(symmetrize_dense(dense), sparse, rtol=0, atol=1e-15)
    # a one-way edge keeps its weight both ways (not half of it)
    one = torch.zeros(3, 3, dtype=torch.float64)
    one[0, 1] = 0.8
    assert symmetrize_dense(one)[1, 0] == 0.8 and symmetrize_dense(one)[0, 1] == 0.8


# -- resume ------------------------------------------------------------------------------------------
def test_resume_refuses_changed_extra_config(data, tmp_path):
    ck = tmp_path / "ck.pt"
    _train(data, _model(), epochs=2, mode="end2end", checkpoint=ck, extra_config={"hidden": 16, "backbone": "mlp"})
    with pytest.raises(ValueError, match="hidden"):
        _train(data, _model(), epochs=3, mode="end2end", checkpoint=ck, resume=True,
               extra_config={"hidden": 32, "backbone": "mlp"})
    res = _train(data, _model(), epochs=3, mode="end2end", checkpoint=ck, resume=True,
                 extra_config={"hidden": 16, "backbone": "mlp"})
    assert len(res.history) == 3


def test_resume_without_checkpoint_warns(data, tmp_path):
    with pytest.warns(UserWarning, match="starting afresh"):
        _train(data, _model(), epochs=1, mode="end2end", checkpoint=tmp_path / "none.pt", resume=True)


def test_generator_state_of_another_device_is_not_forced():
    g = torch.Generator().manual_seed(0)
    st = _rng_state(g)
    st["generator_device"] = torch.tensor([1])  # as if saved from a CUDA generator
    before = g.get_state().clone()
    torch.rand(3, generator=g)
    with pytest.warns(UserWarning, match="generator"):
        _set_rng_state(st, g)
    assert not torch.equal(g.get_state(), before)  # left as it was, not overwritten with a foreign state
    st["generator_device"] = torch.tensor([0])
    _set_rng_state(st, g)
    assert torch.equal(g.get_state(), before)


# -- bad input -------------------------------------------------------------------------------------
def test_class_without_a_labelled_node_is_refused(data):
    images, labels, tr, va, te = data
    tr2 = tr & (labels != 2)
    with pytest.raises(ValueError, match=r"class\(es\) \[2\]"):
        train(_model(), images, labels, tr2, va, te, epochs=1, device="cpu", progress=False)


def test_tiny_validation_set_warns(data):
    images, labels, tr, va, te = data
    tiny = torch.zeros_like(va)
    tiny[torch.nonzero(va)[:3, 0]] = True
    with pytest.warns(UserWarning, match="validation set has only 3"):
        train(_model(), images, labels, tr, tiny, None, epochs=1, device="cpu", progress=False)


def test_float64_images_train_and_uint8_are_refused(data):
    images, labels, tr, va, te = data
    a = train(_model(), images.double(), labels, tr, va, te, epochs=2, device="cpu", progress=False)
    b = train(_model(), images, labels, tr, va, te, epochs=2, device="cpu", progress=False)
    np.testing.assert_allclose(a.history.loss, b.history.loss, rtol=1e-6)
    with pytest.raises(TypeError, match="images"):
        train(_model(), (images * 255).to(torch.uint8), labels, tr, va, te, epochs=1, device="cpu", progress=False)


def test_minibatch_shares_the_label_checks(data):
    """train_minibatch runs the same label checks as train (one copy, bgcn.train._check_training_labels)."""
    from bgcn.minibatch import train_minibatch

    images, labels, tr, va, te = data
    tr2 = tr & (labels != 2)
    with pytest.raises(ValueError, match=r"class\(es\) \[2\]"):
        train_minibatch(_model("end2end", "masked_softmax"), images, labels, tr2, va, te, batch_size=32,
                        epochs=1, device="cpu")
    tiny = torch.zeros_like(va)
    tiny[torch.nonzero(va)[:3, 0]] = True
    with pytest.warns(UserWarning, match="validation set has only 3"):
        train_minibatch(_model("end2end", "masked_softmax"), images, labels, tr, tiny, None, batch_size=64,
                        epochs=1, device="cpu")
    with pytest.raises(ValueError, match="mode="):
        train_minibatch(_model(), images, labels, tr, va, te, batch_size=32, epochs=1, mode="joint")
