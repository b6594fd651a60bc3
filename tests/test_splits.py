"""The field's digits split (LDS / IDGL, issue 16): bgcn.data.benchmark_split("digits-lds", seed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bgcn.data import BENCHMARK_SPLITS, FIELD_SEEDS, TEN_SEEDS, benchmark_split


@pytest.fixture(scope="module")
def labels(digits):
    return digits.labels


def test_the_seeds_are_the_fields():
    assert FIELD_SEEDS == (42, 6666, 4968, 7545, 2842)
    assert TEN_SEEDS == FIELD_SEEDS + (0, 1, 2, 3, 4) and len(set(TEN_SEEDS)) == 10
    assert "digits-lds" in BENCHMARK_SPLITS


@pytest.mark.parametrize("seed", TEN_SEEDS)
def test_digits_lds_sizes_per_class_disjoint_covering(seed, labels):
    train, val, test = benchmark_split("digits-lds", seed)
    for m in (train, val, test):
        assert m.dtype == torch.bool and m.shape == (1797,)
    assert (int(train.sum()), int(val.sum()), int(test.sum())) == (50, 100, 1647)
    assert torch.equal(torch.bincount(labels[train], minlength=10), torch.full((10,), 5))
    assert torch.equal(torch.bincount(labels[val], minlength=10), torch.full((10,), 10))
    assert not (train & val).any() and not (train & test).any() and not (val & test).any()
    assert bool((train | val | test).all())


def test_deterministic_per_seed_and_different_across_seeds(labels):
    a = benchmark_split("digits-lds", 42)
    b = benchmark_split("digits-lds", 42, labels=labels)  # the labels given = the ones loaded
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    trains = [benchmark_split("digits-lds", s)[0] for s in FIELD_SEEDS]
    for i in range(len(trains)):
        for j in range(i + 1, len(trains)):
            assert not torch.equal(trains[i], trains[j])


def test_the_recipe_is_two_nested_stratified_train_test_splits(labels):
    """Written out from the description (150 / 1647, then 50 / 100, random_state=seed, stratify=y)."""
    from sklearn.model_selection import train_test_split

    y = labels.numpy()
    for seed in (42, 7545):
        tv, te, y_tv, _ = train_test_split(np.arange(1797), y, train_size=150, test_size=1647, random_state=seed,
                                           stratify=y)
        tr, va, _, _ = train_test_split(tv, y_tv, train_size=50, test_size=100, random_state=seed, stratify=y_tv)
        train, val, test = benchmark_split("digits-lds", seed)
        assert set(np.flatnonzero(train.numpy())) == set(tr)
        assert set(np.flatnonzero(val.numpy())) == set(va)
        assert set(np.flatnonzero(test.numpy())) == set(te)


@pytest.mark.parametrize("lpc", [10, 20])
def test_more_labels_a_class_same_recipe(lpc, labels):
    train, val, test = benchmark_split("digits-lds", 42, labels_per_class=lpc)
    assert (int(train.sum()), int(val.sum()), int(test.sum())) == (10 * lpc, 100, 1797 - 10 * lpc - 100)
    # stratified rounding may move one label between classes (sklearn's), never more
    per_class = torch.bincount(labels[train], minlength=10)
    assert int(per_class.min()) >= lpc - 1 and int(per_class.max()) <= lpc + 1
    assert not (train & val).any() and bool((train | val | test).all()) and not ((train | val) & test).any()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown benchmark split 'digits'.*digits-lds"):
        benchmark_split("digits", 0)
    with pytest.raises(ValueError, match="labels_per_class=200"):
        benchmark_split("digits-lds", 0, labels_per_class=200)
    with pytest.raises(ValueError, match="labels_per_class=0"):
        benchmark_split("digits-lds", 0, labels_per_class=0)
    with pytest.raises(ValueError, match="seed"):
        benchmark_split("digits-lds", -1)
