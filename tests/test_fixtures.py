"""The shared fixtures of tests/conftest.py build what the per-file copies build."""
from __future__ import annotations

import torch

from bgcn.backbone import create_backbone
from bgcn.data import label_masks, load_dataset
from bgcn.model import build_model


def test_digits_is_the_digits(digits):
    images, labels = digits
    assert images.shape == (1797, 1, 8, 8) and labels.shape == (1797,)
    ref = load_dataset("digits")
    assert torch.equal(images, ref.images) and torch.equal(labels, ref.labels)


def test_tiny_data_is_synthetic_with_masks_and_fresh(tiny_data):
    images, labels, tr, va, te = tiny_data(n=60, classes=3, seed=1, labels_per_class=4, double=True)
    ds = load_dataset("synthetic", n=60, num_classes=3, seed=1)
    ref = label_masks(ds.labels, 4, seed=0)
    assert images.dtype == torch.float64 and torch.equal(images, ds.images.double())
    assert torch.equal(labels, ds.labels) and all(torch.equal(a, b) for a, b in zip((tr, va, te), ref))
    images.zero_()
    labels.zero_()
    again = tiny_data(n=60, classes=3, seed=1, labels_per_class=4)
    assert again[0].dtype == torch.float32 and torch.equal(again[0], ds.images)  # the cache was not touched
    assert torch.equal(again[1], ds.labels)


def test_tiny_model_equals_the_per_file_copy(tiny_model):
    # tests/test_minibatch.py's _model(): seed, mlp_digits, masked_softmax, tau 0.1, hidden 16, float64
    torch.manual_seed(3)
    ref = build_model(create_backbone("mlp_digits"), 4, k=5, estimator="masked_softmax", tau=0.1, hidden=16,
                      mode="end2end").double()
    m = tiny_model(seed=3, double=True)
    assert type(m) is type(ref) and m.mode == ref.mode
    sa, sb = m.state_dict(), ref.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(p.dtype == torch.float64 for p in m.parameters())
    other = tiny_model(estimator="softmax", mode="frozen", classes=10, k=8, seed=4)
    assert other.mode == "frozen" and next(other.parameters()).dtype == torch.float32


def test_tiny_model_takes_a_given_backbone(tiny_model):
    # tests/test_train.py's _model(backbone=bb): the seed, then the GCN around the given backbone
    bb = create_backbone("mlp_digits")
    m = tiny_model("softmax", mode="frozen", backbone=bb)
    torch.manual_seed(0)
    ref = build_model(bb, 4, k=5, estimator="softmax", tau=0.1, hidden=16, mode="frozen")
    assert m.backbone is bb
    sa, sb = m.gcn.state_dict(), ref.gcn.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
