"""The two training engines at their edges (issue 15): one loop, one validator, the same errors.

- a learning rate has an upper bound, named in a one-line error (both engines, ``TrainConfig``);
- NumPy integers are ints (``TrainConfig(epochs=np.int64(5))``);
- a NaN image is the same ``ValueError`` on both engines, naming the image;
- overlapping train and validation masks are refused;
- a mini-batch checkpoint without its optimizer / bank, or with tensors of another shape, is a
  one-line ``ValueError`` naming the file and what is missing or wrong;
- the divergence message does not advise ``torch.nan_to_num`` (the learning rate is the cause);
- a garbage or pickled checkpoint never gets the advice to load it with ``weights_only=False``;
- checkpoints hold no Python/NumPy random state (nothing draws from it), and older ones that do
  still resume bit-exactly.
"""
from __future__ import annotations

import functools
import json
import pickle

import numpy as np
import pytest
import torch

from bgcn.config import MAX_LR, TrainConfig, fit
from bgcn.minibatch import train_minibatch
from bgcn.train import NonFiniteImages, TrainingDiverged, load_checkpoint, save_checkpoint, train

N, C, K = 60, 3, 4

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data(n=N, classes=C, seed=1, double=True)


@pytest.fixture(autouse=True)
def _quiet(recwarn):  # the small validation set warns on every run
    yield


@pytest.fixture
def small_model(tiny_model):
    """conftest's tiny_model at this file's sizes: ``small_model()`` = 3 classes, k = 4, hidden 8, float64."""
    return functools.partial(tiny_model, classes=C, k=K, hidden=8, double=True)


FULL = dict(epochs=2, device="cpu", progress=False)
MB = dict(batch_size=20, epochs=2, device="cpu")


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("name", ["lr_gcn", "lr_backbone"])
def test_a_huge_learning_rate_is_refused_naming_the_bound(data, name, small_model):
    images, labels, tr, va, te = data
    for run in (lambda: train(small_model(), images, labels, tr, va, te, **FULL, **{name: 1e300}),
                lambda: train_minibatch(small_model(), images, labels, tr, va, te, **MB, **{name: 1e300}),
                lambda: fit(small_model(), images, labels, tr, va, te, TrainConfig(epochs=2, device="cpu"),
                            **{name: 1e300}),
                lambda: TrainConfig(**{name: 1e300})):
        with pytest.raises(ValueError, match=rf"{name}=1e\+300 .*<= {MAX_LR:g}") as ei:
            run()
        _one_line(ei)
    assert TrainConfig(**{name: MAX_LR}).to_dict()[name] == MAX_LR


def test_numpy_numbers_are_numbers():
    cfg = TrainConfig(epochs=np.int64(5), warmup_epochs=np.int32(1), seed=np.uint64(3), lr_gcn=np.float32(0.5),
                      mode="end2end", batch_size=np.int64(8), bank_chunk=np.int16(4))
    assert (cfg.epochs, cfg.warmup_epochs, cfg.seed, cfg.batch_size, cfg.bank_chunk) == (5, 1, 3, 8, 4)
    assert type(cfg.epochs) is int and type(cfg.lr_gcn) is float and cfg.lr_gcn == 0.5
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=np.float64(5.0))
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=True)


def test_a_nan_image_is_the_same_value_error_on_both_engines(data, small_model):
    images, labels, tr, va, te = data
    bad = images.clone()
    bad[7, 0, 1, 1] = float("nan")
    errors = []
    for run in (lambda: train(small_model(), bad, labels, tr, va, te, **FULL),
                lambda: train_minibatch(small_model(), bad, labels, tr, va, te, **MB),
                lambda: train_minibatch(small_model(), bad.float(), labels, tr, va, te, **MB)):
        with pytest.raises(ValueError, match=r"image 7\b") as ei:
            run()
        errors.append(ei)
    assert {type(e.value) for e in errors} == {NonFiniteImages}
    assert all("nan_to_num" not in _one_line(e) for e in errors)


def test_overlapping_train_and_validation_masks_are_refused(data, small_model):
    images, labels, tr, va, te = data
    va2 = va.clone()
    first = int(torch.nonzero(tr)[0])
    va2[first] = True
    for run in (lambda: train(small_model(), images, labels, tr, va2, te, **FULL),
                lambda: train_minibatch(small_model(), images, labels, tr, va2, te, **MB)):
        with pytest.raises(ValueError, match=rf"train_mask and val_mask share 1 node.*node {first}\b.*disjoint"):
            run()


def test_divergence_advises_the_learning_rate_not_nan_to_num(data, small_model):
    images, labels, tr, va, te = data

    def poison(epoch, model, bank):  # the backbone's weights become NaN after epoch 1's steps
        if epoch == 1:
            next(model.backbone.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingDiverged) as ei:
        train_minibatch(small_model(), images, labels, tr, va, te, **{**MB, "epochs": 3}, callback=poison)
    msg = _one_line(ei)
    assert "epoch 1" in msg and "nan_to_num" not in msg and "learning rate" in msg and "max_grad_norm" in msg
    model = small_model()
    with torch.no_grad():
        model.gcn.conv2.bias.fill_(float("nan"))
    with pytest.raises(TrainingDiverged) as ei:
        train(model, images, labels, tr, va, te, **FULL)
    msg = _one_line(ei)
    assert "nan_to_num" not in msg and "learning rate" in msg


def test_garbage_and_pickled_checkpoints_never_advise_an_unsafe_load(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint" * 20)

    class Evil:
        def __reduce__(self):
            return (print, ("never printed",))

    evil = tmp_path / "evil.pt"
    torch.save({"a": Evil()}, evil)
    for path in (garbage, evil):
        with pytest.raises(ValueError, match=rf"could not read checkpoint .*{path.name}") as ei:
            load_checkpoint(path)
        msg = _one_line(ei)
        assert "weights_only" not in msg and "will likely succeed" not in msg, msg
    blob = tmp_path / "plain.pkl"
    blob.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(ValueError, match="not a bgcn checkpoint"):
        load_checkpoint(blob)


def _mb_checkpoint(data, tmp_path, small_model):
    images, labels, tr, va, te = data
    ck = tmp_path / "mb.pt"
    train_minibatch(small_model(), images, labels, tr, va, te, **MB, checkpoint=ck)
    return ck


@pytest.mark.parametrize("key", ["optimizer", "bank", "model", "rng"])
def test_a_minibatch_checkpoint_without_a_part_is_named(data, tmp_path, key, small_model):
    images, labels, tr, va, te = data
    ck = _mb_checkpoint(data, tmp_path, small_model)
    state = load_checkpoint(ck)
    del state[key]
    save_checkpoint(ck, state)
    with pytest.raises(ValueError, match=rf"cannot resume from .*mb\.pt.*has no '{key}'") as ei:
        train_minibatch(small_model(), images, labels, tr, va, te, **{**MB, "epochs": 3}, checkpoint=ck, resume=True)
    _one_line(ei)


@pytest.mark.parametrize("part,match", [
    ("bank", r"its bank has shape \(60, 5\), this run needs \(60, \d+\)"),
    ("neighbours", r"neighbour lists have shape \(3,\), this run needs \(60, 4\)"),
    ("model", r"its model weights do not fit this model \(size mismatch"),
    ("optimizer", r"its optimizer state does not fit")])
def test_a_minibatch_checkpoint_with_tensors_of_another_shape_is_named(data, tmp_path, part, match, small_model):
    images, labels, tr, va, te = data
    ck = _mb_checkpoint(data, tmp_path, small_model)
    state = load_checkpoint(ck)
    if part == "bank":
        state["bank"] = torch.zeros(N, 5, dtype=torch.float64)
    elif part == "neighbours":
        state["neighbours"] = torch.zeros(3, dtype=torch.long)
    elif part == "model":
        name = next(k for k, v in state["model"].items() if v.dim() == 2)
        state["model"][name] = torch.zeros(3, 3, dtype=torch.float64)
    else:
        state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1] * 3
    save_checkpoint(ck, state)
    with pytest.raises(ValueError, match=rf"cannot resume from .*mb\.pt.*{match}") as ei:
        train_minibatch(small_model(), images, labels, tr, va, te, **{**MB, "epochs": 3}, checkpoint=ck, resume=True)
    _one_line(ei)


def test_no_python_or_numpy_random_state_is_written_and_old_checkpoints_resume(data, tmp_path, small_model):
    images, labels, tr, va, te = data
    kw = dict(FULL, epochs=4, mode="end2end")
    whole = train(small_model(), images, labels, tr, va, te, **kw)
    ck = tmp_path / "ck.pt"
    train(small_model(), images, labels, tr, va, te, **{**kw, "epochs": 2}, checkpoint=ck)
    state = load_checkpoint(ck)
    assert set(state["rng"]) <= {"torch", "cuda", "generator", "generator_device"}
    # a checkpoint of before the change held them too: it still resumes, to the same result
    state["rng"].update(python=torch.arange(625, dtype=torch.int64), python_gauss=torch.tensor([], dtype=torch.float64),
                        numpy=torch.arange(624, dtype=torch.int64), numpy_pos=torch.tensor([624, 0]),
                        numpy_gauss=torch.tensor([0.0], dtype=torch.float64))
    save_checkpoint(ck, state)
    res = train(small_model(), images, labels, tr, va, te, **kw, checkpoint=ck, resume=True)
    assert res.history.loss == whole.history.loss and res.history.val_acc == whole.history.val_acc


def test_a_weight_decay_that_flips_the_weights_is_refused():
    with pytest.raises(ValueError, match=r"weight_decay=1e\+300 .*use weight_decay < 100"):
        TrainConfig(lr_gcn=0.01, weight_decay=1e300)
    assert TrainConfig(lr_gcn=0.0, lr_backbone=0.0, weight_decay=1e6).weight_decay == 1e6  # nothing moves


def test_device_and_extra_are_normalised_once():
    assert TrainConfig(device=None).device == "auto" and TrainConfig(device=torch.device("cpu")).device == "cpu"
    assert TrainConfig(extra=None).extra == {}
    with pytest.raises(TypeError, match="TrainConfig.device"):
        TrainConfig(device=0)
