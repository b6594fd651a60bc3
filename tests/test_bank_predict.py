"""predict() on images with NaN/Inf: the error names ``new_images`` and the image, not an internal tensor."""
from __future__ import annotations

import pytest
import torch

import bgcn
from bgcn.bank import FeatureBank, predict


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    images = torch.rand(40, 1, 8, 8)
    model = bgcn.build_model(bgcn.create_backbone("mlp_digits"), 3, k=4, estimator="masked_softmax", mode="end2end",
                             symmetric=False)
    bank = FeatureBank.from_backbone(model, images, chunk_size=16)
    return model, bank


def test_predict_names_the_nan_image(trained):
    model, bank = trained
    new = torch.rand(7, 1, 8, 8)
    new[5, 0, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"new_images.*index 5 of new_images") as info:
        predict(model, new, bank, batch_size=4)
    assert "query_feats" not in str(info.value)


def test_predict_names_every_bad_image_once(trained):
    model, bank = trained
    new = torch.rand(9, 1, 8, 8)
    new[[1, 8]] = float("inf")
    with pytest.raises(ValueError, match=r"2 image\(s\) \(index 1, 8 of new_images\)"):
        predict(model, new, bank)


def test_predict_names_the_image_whose_features_diverge(trained, monkeypatch):
    model, bank = trained
    real = model.features

    def diverging(x):  # a backbone that diverges on the second image of the last batch (2 images)
        f = real(x).clone()
        if x.shape[0] == 2:
            f[1] = float("nan")
        return f

    monkeypatch.setattr(model, "features", diverging)
    with pytest.raises(ValueError, match=r"features of new_images\[4:6\].*index 5 of new_images"):
        predict(model, torch.rand(6, 1, 8, 8), bank, batch_size=4)


def test_predict_finite_images_still_work(trained):
    model, bank = trained
    out = predict(model, torch.rand(5, 1, 8, 8), bank, batch_size=2)
    assert out.shape == (5, 3) and bool(torch.isfinite(out).all())
