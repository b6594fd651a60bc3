"""The stamped digits (bgcn.data.make_digits_stamps): the control whose frozen pixel graph is wrong."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import bgcn
from bgcn.data import benchmark_split, load_dataset, make_digits_stamps


@pytest.fixture(scope="module")
def stamps():
    return load_dataset("digits-stamps")


def test_the_digit_is_kept_and_the_stamp_sits_beside_it(stamps):
    digits = load_dataset("digits")
    assert stamps.images.shape == (1797, 1, 8, 16) and stamps.images.dtype == torch.float32
    assert torch.equal(stamps.images[..., :8], digits.images) and torch.equal(stamps.labels, digits.labels)
    panel = stamps.images[..., 8:].reshape(1797, -1)
    # images with the same stamp index have the same panel, and no panel is empty
    z = stamps.nuisance
    for m in z.unique()[:10]:
        rows = panel[z == m]
        assert torch.equal(rows, rows[:1].expand_as(rows))
    assert (panel.sum(1) > 0).all()


def test_the_stamp_is_drawn_independently_of_the_class(stamps):
    # a chi-square test of independence of (class, stamp) would need ~18 images per cell; instead:
    # the stamp index predicts the class no better than chance by a wide margin (majority class
    # within each stamp group, on the whole set, vs the 1/10 base rate and its binomial noise)
    y, z = stamps.labels.numpy(), stamps.nuisance.numpy()
    assert len(np.unique(z)) == 100
    hits = sum(np.bincount(y[z == m]).max() for m in np.unique(z))
    # majority-of-a-group accuracy for independent draws of ~18 items over 10 classes is about 0.25
    assert hits / len(y) < 0.35


def test_the_frozen_pixel_graph_follows_the_stamp(stamps):
    x = stamps.images.reshape(1797, -1)
    nb = bgcn.knn_indices(x, 10)
    clean = bgcn.knn_indices(load_dataset("digits").images.reshape(1797, -1), 10)
    assert bgcn.graph.edge_homophily(clean, stamps.labels) > 0.9
    assert bgcn.graph.edge_homophily(nb, stamps.labels) < 0.3
    assert bgcn.graph.edge_homophily(nb, stamps.nuisance) > 0.9
    # without the stamp panel (an extractor that learned to drop it) the digit graph comes back
    assert torch.equal(bgcn.knn_indices(stamps.images[..., :8].reshape(1797, -1), 10), clean)


def test_same_split_as_the_digits_and_deterministic():
    for got, want in zip(benchmark_split("digits-stamps", 7545), benchmark_split("digits-lds", 7545)):
        assert torch.equal(got, want)
    assert torch.equal(make_digits_stamps(seed=3).images, make_digits_stamps(seed=3).images)
    assert not torch.equal(make_digits_stamps(seed=3).images, make_digits_stamps(seed=4).images)


@pytest.mark.parametrize("kw, name", [({"num_stamps": 1}, "num_stamps"), ({"density": 0.0}, "density"),
                                      ({"strength": -1.0}, "strength"), ({"seed": -1}, "seed")])
def test_bad_arguments_are_named(kw, name):
    with pytest.raises((ValueError, TypeError), match=name):
        make_digits_stamps(**kw)
