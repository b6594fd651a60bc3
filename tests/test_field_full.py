"""The 70 000-image Fashion-MNIST protocol: cached features, their principal components, the rows at
the settings chosen at 2 000 images, and GCN rows through the bank engine above BANK_FROM nodes.
A small stand-in (Fashion-MNIST's first images, the pixels as "features") runs the whole path."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import bgcn
from bgcn.experiments import features as FT
from bgcn.experiments import field as F

ROOT = F.results_root()


@pytest.fixture(scope="module")
def small():
    ds = bgcn.load_dataset("fashion-mnist", split="all", subset=300)
    return ds.images, ds.labels


def test_pca_is_the_covariance_eigenbasis_in_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    z = FT.pca_project(x, 3).double()
    c = z.T @ z  # uncorrelated components, by decreasing variance, the scatter's top eigenvalues
    top = torch.linalg.eigvalsh((x - x.mean(0)).T @ (x - x.mean(0))).flip(0)[:3]
    assert float((c - torch.diag(torch.diagonal(c))).abs().max()) < 1e-5 * float(top[0])
    torch.testing.assert_close(torch.diagonal(c), top, rtol=1e-5, atol=0)
    from sklearn.decomposition import PCA  # the same projection up to each component's sign

    want = PCA(3, svd_solver="full").fit_transform(x.numpy())
    assert np.abs(np.abs(z.numpy()) - np.abs(want)).max() < 1e-4 * np.abs(want).max()
    perm = torch.randperm(200, generator=g)  # the signs are fixed by the data, not by the row order
    torch.testing.assert_close(FT.pca_project(x[perm], 3).double(), z[perm], rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="dim"):
        FT.pca_project(x, 7)
    with pytest.raises(ValueError, match="flatten"):
        FT.pca_project(x.reshape(200, 2, 3), 2)


def test_cached_features_are_computed_once_and_recomputed_for_other_images(small, tmp_path, monkeypatch):
    images, labels = small
    monkeypatch.setenv("BGCN_CACHE_DIR", str(tmp_path))
    first = FT.cached_features("t", "pixels", 28, images, labels, progress=False)
    path = tmp_path / "t-pixels-28.pt"
    assert path.is_file() and first.shape == (300, 784)
    torch.testing.assert_close(first, images.reshape(300, -1), rtol=0, atol=0)
    calls = []
    real = bgcn.backbone.embed_images
    monkeypatch.setattr(bgcn.backbone, "embed_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = FT.cached_features("t", "pixels", 28, images, labels, progress=False)
    assert calls == [] and torch.equal(again, first)  # read back, nothing embedded
    FT.cached_features("t", "pixels", 28, images[:-1], labels[:-1], progress=False)
    assert calls == [1]  # fewer images: computed again (and the file replaced)
    FT.cached_features("t", "pixels", 28, images[:-1], labels[:-1], progress=False)
    assert calls == [1]
    other = images[:-1].clone()
    other[5, 0, 3, 3] += 0.5  # one pixel of one image, the labels unchanged: computed again
    FT.cached_features("t", "pixels", 28, other, labels[:-1], progress=False)
    assert calls == [1, 1]
    FT.cached_features("u", "pixels", 28, images, labels, cache=False, progress=False)
    assert not (tmp_path / "u-pixels-28.pt").exists()
    with pytest.raises(ValueError, match="labels has 299"):
        FT.cached_features("t", "pixels", 28, images, labels[:-1])


def test_full_size_rows_are_the_settings_chosen_at_2000_images():
    chosen = {s["row"]: s["setting"] for s in
              json.loads((ROOT / "field" / "fashion-2000-imagenet96.json").read_text())["summary"]}
    for row in F.FULL_SIZE_ROWS:
        assert len(row.grid) == 1 and row.grid[0] == chosen[row.name], row.name
    residual = next(r for r in F.EXTRA_ROWS if r.name == "e2e_values_residual")
    e2e = next(r for r in F.FULL_SIZE_ROWS if r.name == "e2e_values_residual")
    assert {k: v for k, v in e2e.fixed.items() if k != "eval_every"} == residual.fixed
    assert F.FULL_SIZE_ROWS[0].name == F.REFERENCE


def test_the_protocol_runs_end_to_end_on_a_stand_in(small, tmp_path, monkeypatch):
    """protocol_data -> cached features -> principal components -> every row, the GCN rows through the
    bank engine with the inverted-file index (BANK_FROM lowered), the results written and resumable."""
    images, labels = small
    monkeypatch.setenv("BGCN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(F.FEATURE_PROTOCOLS, "fashion-70k-imagenet96", ("fashion-70k", "pixels", 28))
    monkeypatch.setitem(F.REDUCED, "fashion-70k-imagenet96", 16)
    monkeypatch.setattr(F, "benchmark_data", lambda name: bgcn.data.Dataset(images, labels))
    monkeypatch.setattr(F, "BANK_FROM", 100)
    calls = []
    real = F.benchmark_split
    monkeypatch.setattr(F, "benchmark_split", lambda name, *a, **k: calls.append(name) or real(name, *a, **k))
    x, y = F.protocol_data("fashion-70k-imagenet96")
    assert x.shape == (300, 1, 1, 16) and torch.equal(y, labels)
    res = F.run_field_experiment("fashion-70k-imagenet96", out=tmp_path, seeds=2, epochs=4, progress=False)
    assert set(calls) == {"fashion-70k"}
    assert [s["row"] for s in res["summary"]] == [r.name for r in F.FULL_SIZE_ROWS]
    gcn_runs = [r for r in res["runs"] if r["row"] in (F.REFERENCE, "e2e_values_residual")]
    # 300 rows make 4·√300 ≈ 69 lists of which 16 are probed: the recall is measured, below one
    assert len(gcn_runs) == 4 and all(0 < r["recall_after"] <= 1 and 0 < r["recall_built"] <= 1 for r in gcn_runs)
    frozen = [r for r in gcn_runs if r["row"] == F.REFERENCE]
    assert all(r["recall_built"] == r["recall_after"] for r in frozen)  # frozen: nothing moves
    assert (tmp_path / "fashion-70k-imagenet96.json").is_file()
    again = F.run_field_experiment("fashion-70k-imagenet96", out=tmp_path, seeds=2, epochs=4, progress=False)
    assert [r["test_acc"] for r in again["runs"]] == [r["test_acc"] for r in res["runs"]]  # reproducible
    assert [(r["seed"], r["row"]) for r in res["runs"]][:4] == [(42, r.name) for r in F.FULL_SIZE_ROWS]
    with pytest.raises(ValueError, match="rows"):
        F.run_field_experiment("fashion-70k-imagenet96", out=tmp_path, seeds=2, rows=["label_spreading"])


def test_published_fashion_numbers_print_above_the_re_runs():
    summary = [{"row": "poisson", "test_mean": 74.0, "test_std": 1.0, "n": 3}]
    table = F.published_table(summary, F.PUBLISHED_FASHION, "Fashion-MNIST, 70 000 images (%)")
    lines = table.strip().splitlines()
    assert lines[0].startswith("| method | Fashion-MNIST, 70 000 images (%) |")
    assert "| Poisson learning | 75.2 ± 1.5 | Calder et al. 2020" in table and lines[-1].startswith("| poisson | 74.0")
    assert len(lines) == 2 + len(F.PUBLISHED_FASHION) + 1
