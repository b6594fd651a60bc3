"""Defects a review of the mini-batch / config / data changes found, each with the test that fails
on the old code."""
from __future__ import annotations

import pytest
import torch

from bgcn.backbone import create_backbone
from bgcn.config import TrainConfig
from bgcn.data import label_masks, load_dataset, stratified_subset
from bgcn.minibatch import train_minibatch
from bgcn.model import build_model
from bgcn.train import load_checkpoint, save_checkpoint, train
from bgcn.viz import neighbour_mosaic

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    ds = load_dataset("synthetic", n=80, num_classes=4, seed=0)
    tr, va, te = label_masks(ds.labels, 5, seed=0)
    return ds.images.double(), ds.labels, tr, va, te


def _model():
    torch.manual_seed(0)
    return build_model(create_backbone("mlp_digits"), 4, k=5, estimator="masked_softmax", tau=0.1,
                       hidden=8).double()


def test_an_old_inline_checkpoint_resumes_twice(data, tmp_path, recwarn):
    """A checkpoint from before the graphs were stored apart (graphs inline) resumes, and the
    checkpoint it then writes resumes again: its graphs are written to files, none is lost."""
    images, labels, tr, va, te = data
    kw = dict(epochs=2, device="cpu", progress=False, mode="frozen")
    ck = tmp_path / "ck.pt"
    train(_model(), images, labels, tr, va, te, **kw, checkpoint=ck)
    state = load_checkpoint(ck)  # rewrite it in the old format
    state["history"]["graphs"] = [load_checkpoint(p) for p in sorted((tmp_path / "ck.pt.graphs").iterdir())]
    del state["history"]["graph_epochs"]
    for p in (tmp_path / "ck.pt.graphs").iterdir():
        p.unlink()
    save_checkpoint(ck, state)
    train(_model(), images, labels, tr, va, te, **{**kw, "epochs": 3}, checkpoint=ck, resume=True)
    r = train(_model(), images, labels, tr, va, te, **{**kw, "epochs": 4}, checkpoint=ck, resume=True)
    assert [g["epoch"] for g in r.history.graphs] == [0, 1, 2, 3, 4]


def test_extra_config_cannot_overwrite_the_engines_settings(data):
    images, labels, tr, va, te = data
    with pytest.raises(ValueError, match="clash"):
        train_minibatch(_model(), images, labels, tr, va, te, batch_size=20, epochs=1, device="cpu",
                        extra_config={"mode": "x"})
    with pytest.raises(ValueError, match="clash"):
        TrainConfig(extra={"epochs": 3})


def test_minibatch_flags_are_validated(data):
    images, labels, tr, va, te = data
    kw = dict(batch_size=20, epochs=1, device="cpu")
    with pytest.raises(TypeError, match="progress"):
        train_minibatch(_model(), images, labels, tr, va, te, progress="yes", **kw)
    with pytest.raises(TypeError, match="deterministic"):
        train_minibatch(_model(), images, labels, tr, va, te, deterministic="x", **kw)
    with pytest.raises(ValueError, match="max_grad_norm=0"):
        train_minibatch(_model(), images, labels, tr, va, te, max_grad_norm=0.0, **kw)
    with pytest.raises(ValueError, match="max_grad_norm"):
        TrainConfig(max_grad_norm=0.0)


def test_a_fashion_subset_smaller_than_the_classes_is_refused(tmp_path):
    """Checked before any file is read: the message names subset, not a missing file."""
    with pytest.raises(ValueError, match="subset=5 is smaller than the 10 classes"):
        load_dataset("fashion-mnist", subset=5, data_dir=tmp_path)
    labels = torch.arange(40) % 10  # the general helper still shares n < C "as far as possible"
    assert torch.unique(labels[stratified_subset(labels, 10)]).numel() == 10


def test_neighbour_mosaic_refuses_non_integer_ids():
    images = torch.rand(6, 1, 2, 2)
    idx = torch.stack([torch.roll(torch.arange(6), -1), torch.roll(torch.arange(6), -2)], 1)
    with pytest.raises(TypeError, match="indices"):
        neighbour_mosaic(images, idx.float(), [0])
    with pytest.raises(ValueError, match="indices"):
        neighbour_mosaic(images, idx + 6, [0])
    with pytest.raises(ValueError, match="queries"):
        neighbour_mosaic(images, idx, [0.7])
    with pytest.raises(TypeError, match="queries"):
        neighbour_mosaic(images, idx, 3)
    with pytest.raises(ValueError, match="n_neighbours"):
        neighbour_mosaic(images, idx, [0], n_neighbours=1.5)
    assert neighbour_mosaic(images, idx, torch.tensor([1, 2])).shape == (4, 6)


def test_suggest_tau_features_names_a_bad_seed():
    from bgcn.temperature import suggest_tau_features

    with pytest.raises(ValueError, match="seed"):
        suggest_tau_features(torch.randn(50, 4), 3, max_rows=10, seed="a")


def test_only_seeds_is_checked_before_any_work(tmp_path):
    from bgcn.experiments.real import run_real_experiment

    with pytest.raises(ValueError, match="only_seeds"):
        run_real_experiment("fashion-mnist", out=tmp_path, quick=True, only_seeds=[9])
    assert not list(tmp_path.iterdir())  # nothing was loaded or written


def test_cli_trains_on_nuisance_shapes(tmp_path):
    import json

    from bgcn.cli import main

    args = ["train", "--dataset", "nuisance-shapes", "--synthetic-n", "80", "--backbone", "mlp_digits", "--k", "4",
            "--labels-per-class", "5", "--epochs", "2", "--device", "cpu", "--no-progress", "--mode", "frozen",
            "--out", str(tmp_path / "n")]
    assert main(args) == 0
    m = json.loads((tmp_path / "n" / "metrics.json").read_text())
    assert m["config"]["synthetic_n"] == 80 and m["config"]["image_shape"] == [3, 32, 32]


@pytest.mark.parametrize("name", ["synthetic", "fashion-mnist", "nuisance_shapes"])
def test_load_dataset_names_an_unknown_option_and_what_it_accepts(name):
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['bogus'\]; it accepts .*seed"):
        load_dataset(name, bogus=1)
