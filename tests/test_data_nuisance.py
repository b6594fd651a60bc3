"""The nuisance-shapes positive control (bgcn.data.make_nuisance_shapes, issue 11)."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

import bgcn
from bgcn.data import (DATASETS, NUISANCE_KINDS, NUISANCE_SHAPES, _hsv_palette, _shape_mask, load_dataset,
                       make_nuisance_shapes)
from bgcn.data import NUISANCE_SHAPE_AREAS
from bgcn.graph import edge_homophily

#: Each shape's perimeter in radius units.
PERIMETER = {"disc": 2 * math.pi * 0.9, "square": 8 * 0.62, "triangle": 3 * math.sqrt(3),
             "cross": 2 + 8 * (0.96 - 0.25), "ring": 2 * math.pi * 1.55, "star": 10 * 0.6641,
             "bar": 2 * (1.9 + 0.6), "corner": 8 * 0.7}


def test_registered_and_shapes():
    assert "nuisance-shapes" in DATASETS
    ds = load_dataset("nuisance-shapes", n=203, seed=3)
    images, labels = ds  # still a 2-tuple
    assert images.shape == (203, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (203,) and labels.dtype == torch.long
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert ds.num_classes == 4 and ds.class_names == list(NUISANCE_SHAPES[:4]) and ds.name == "nuisance-shapes"
    assert ds.nuisance.shape == (203,) and ds.nuisance.dtype == torch.long
    assert set(ds.nuisance.tolist()) == {0, 1, 2, 3} and len(ds.nuisance_names) == 4
    ds2 = make_nuisance_shapes(n=50, num_classes=8, num_nuisance=3, image_size=20, seed=1)
    assert ds2.images.shape == (50, 3, 20, 20) and set(ds2.labels.tolist()) == set(range(8))
    assert int(ds2.nuisance.max()) == 2 and len(ds2.nuisance_names) == 3
    back = pickle.loads(pickle.dumps(ds))
    assert torch.equal(back.nuisance, ds.nuisance) and back.nuisance_names == ds.nuisance_names


def test_deterministic_per_seed_and_different_across_seeds():
    a = make_nuisance_shapes(n=64, seed=7)
    b = make_nuisance_shapes(n=64, seed=7)
    c = make_nuisance_shapes(n=64, seed=8)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.nuisance, b.nuisance)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.labels, c.labels) or not torch.equal(a.nuisance, c.nuisance)
    torch.manual_seed(0)
    np.random.seed(0)
    state_t, state_np = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    make_nuisance_shapes(n=16, seed=1)  # the global RNGs are left alone
    assert torch.equal(torch.random.get_rng_state(), state_t)
    assert np.array_equal(np.random.get_state()[1], state_np)


@pytest.mark.parametrize("n,c,m", [(1000, 4, 4), (997, 5, 3), (40, 8, 2)])
def test_label_and_nuisance_independent(n, c, m):
    ds = make_nuisance_shapes(n=n, num_classes=c, num_nuisance=m, image_size=8, object_size=0.3, seed=2)
    joint = torch.zeros(c, m, dtype=torch.long)
    joint.index_put_((ds.labels, ds.nuisance), torch.ones(n, dtype=torch.long), accumulate=True)
    # dealt cyclically over the C·M pairs: every pair floor(n/CM) or one more times, so P(y, z) = P(y) P(z)
    assert int(joint.min()) >= n // (c * m) and int(joint.max()) <= -(-n // (c * m))
    assert int(joint.sum()) == n


@pytest.mark.parametrize("shape", NUISANCE_SHAPES)
def test_shape_mask_area_matches_its_formula(shape):
    # point-in-shape on a grid of spacing h: the error is at most the boundary band, perimeter · h
    h = 2.4 / 1200
    g = -1.2 + h * (np.arange(1200) + 0.5)
    u, v = np.meshgrid(g, g, indexing="xy")
    inside = _shape_mask(shape, u, v)
    area = float(inside.sum()) * h * h
    assert abs(area - NUISANCE_SHAPE_AREAS[shape]) <= PERIMETER[shape] * h
    assert not inside[np.hypot(u, v) > 1.0 + 1e-9].any()  # fits in the unit disc
    centre = _shape_mask(shape, np.zeros(1), np.zeros(1))[0]
    assert centre == (shape not in ("ring", "corner"))  # the ring has a hole, the corner's notch covers 0


def test_each_class_draws_its_shape():
    # nuisance off, full contrast, no noise, fixed radius: x = 0.5 · (1 − m), so m = 1 − 2x exactly
    s, size = 32, 0.3
    ds = make_nuisance_shapes(n=160, num_classes=8, image_size=s, seed=4, nuisance="none", contrast=1.0,
                              noise=0.0, size_jitter=0.0, object_size=size)
    r = size * s
    x = ds.images.double()
    assert torch.allclose(x[:, 0], x[:, 1]) and torch.allclose(x[:, 0], x[:, 2])
    mask = 1 - 2 * x[:, 0]
    assert float(mask.min()) >= -1e-6 and float(mask.max()) <= 1 + 1e-6
    area = mask.sum(dim=(1, 2)) / r**2  # in radius units
    for c, shape in enumerate(NUISANCE_SHAPES):
        got = area[ds.labels == c]
        # anti-aliasing on 4 × 4 sub-pixels: error at most the boundary band perimeter · r · (1/4) px
        tol = PERIMETER[shape] * r * 0.25 / r**2
        assert got.numel() == 20
        assert float((got - NUISANCE_SHAPE_AREAS[shape]).abs().max()) <= tol, shape
        # rotation and position change the pixels but not the area: the spread is much smaller than the bound
    means = torch.stack([area[ds.labels == c].mean() for c in range(8)])
    ref = torch.tensor([NUISANCE_SHAPE_AREAS[s_] for s_ in NUISANCE_SHAPES], dtype=torch.float64)
    assert float((means - ref).abs().max()) < 0.03  # measured ≈ 0.005


def test_background_is_set_by_the_nuisance_label_only():
    # the corner pixel is never covered (the object's disc lies inside the image): it shows the background
    ds = make_nuisance_shapes(n=120, num_nuisance=5, seed=5, nuisance="colour", noise=0.0)
    pal = torch.from_numpy(_hsv_palette(5))
    corner = ds.images[:, :, 0, 0].double()
    assert float((corner - pal[ds.nuisance]).abs().max()) <= 0.05 + 1e-6  # colour κ_z + jitter in ±0.05
    none = make_nuisance_shapes(n=60, seed=5, nuisance="none", noise=0.0)
    assert torch.equal(none.images[:, :, 0, 0], torch.full((60, 3), 0.5))


@pytest.mark.parametrize("kind", NUISANCE_KINDS)
def test_every_kind_renders(kind):
    ds = make_nuisance_shapes(n=20, seed=0, nuisance=kind)
    assert float(ds.images.min()) >= 0 and float(ds.images.max()) <= 1


def test_pixel_knn_graph_follows_the_nuisance_not_the_shape():
    ds = make_nuisance_shapes(n=400, seed=0)
    idx = bgcn.knn_indices(ds.images.flatten(1).double(), 10, exclude_self=True)
    h_shape, h_nuis = edge_homophily(idx, ds.labels), edge_homophily(idx, ds.nuisance)
    assert h_nuis > 0.9  # measured 1.000
    assert h_shape < 0.25 + 0.1  # chance 1/4; measured ≈ 0.26
    assert h_nuis > h_shape


@pytest.mark.parametrize("kwargs,exc,word", [
    ({"n": 0}, ValueError, "n="),
    ({"n": 2.5}, TypeError, "n must"),
    ({"num_classes": 1}, ValueError, "num_classes"),
    ({"num_classes": 9}, ValueError, "num_classes"),
    ({"image_size": 4}, ValueError, "image_size"),
    ({"seed": -1}, ValueError, "seed"),
    ({"nuisance": "plaid"}, ValueError, "nuisance"),
    ({"num_nuisance": 0}, ValueError, "num_nuisance"),
    ({"object_size": 0.0}, ValueError, "object_size"),
    ({"object_size": 0.45}, ValueError, "object_size"),
    ({"object_size": "big"}, TypeError, "object_size"),
    ({"size_jitter": 1.0}, ValueError, "size_jitter"),
    ({"contrast": 1.5}, ValueError, "contrast"),
    ({"contrast": float("nan")}, ValueError, "contrast"),
    ({"texture": -0.1}, ValueError, "texture"),
    ({"noise": True}, TypeError, "noise"),
])
def test_bad_arguments_name_the_argument(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        make_nuisance_shapes(**kwargs)


def test_load_dataset_unknown_option_lists_the_accepted_ones():
    with pytest.raises(TypeError, match="contrast"):
        load_dataset("nuisance-shapes", colour="red")
    assert load_dataset("nuisance_shapes", n=8).images.shape[0] == 8
