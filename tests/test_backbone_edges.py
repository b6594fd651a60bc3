"""Edge cases of what a backbone takes (issue 15, items 7 and 9): floats in [0, 1], checked once.

- EfficientNet-Lite0's [0, 1] check lets no NaN/Inf through (comparisons with NaN are false): one
  ValueError, one line, naming the images;
- float images in [0, 255] (or any non-negative images above 1) warn on every other backbone,
  through the one forward pre-hook of ``create_backbone``; [0, 1] and normalised images do not.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from bgcn.backbone import (ResidualHead, check_image_values, create_backbone, embed_images,
                           extract_features)

RANGE = r"images have values in \[[0-9.e+-]+, [0-9.e+]+\], but a backbone takes float images in \[0, 1\].*/ 255"


@pytest.fixture(scope="module")
def images():
    return torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _no_warning(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn()


def test_strict_check_names_nan_and_inf_images_in_one_line():
    x = torch.rand(5, 1, 4, 4)
    x[3, 0, 1, 2] = float("nan")
    with pytest.raises(ValueError) as e:
        check_image_values(x, strict=True)
    msg = str(e.value)
    assert "\n" not in msg and "images contain NaN or Inf in 1 of 5 images (first: index 3)" in msg
    x[1, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"2 of 5 new_images \(first: index 1\)"):
        check_image_values(x, "new_images", strict=True)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\].*\[-0\.5, 1\]"):
        check_image_values(torch.tensor([[-0.5, 1.0]]), strict=True)
    check_image_values(torch.tensor([[0.0, 1.0005]]), strict=True)  # rounding slack
    _no_warning(lambda: check_image_values(x))  # lenient: non-finite values are the engines' to refuse


def test_lenient_check_warns_only_on_images_that_look_like_8bit_pixels(images):
    with pytest.warns(UserWarning, match=RANGE) as rec:
        check_image_values(images * 255)
    assert "[0.315, 255]" in str(rec[0].message) and rec[0].filename == __file__  # points at the caller
    _no_warning(lambda: check_image_values(images))
    _no_warning(lambda: check_image_values((images - 0.5) / 0.25))  # normalised: negative values, values > 1
    _no_warning(lambda: check_image_values(torch.zeros(0, 1, 8, 8)))
    _no_warning(lambda: check_image_values(torch.full((2, 3), 1.0005)))  # slack


@pytest.mark.parametrize("name", ["mlp_digits", "cnn_digits", "vit_tiny_digits", "pixels", "identity_linear"])
def test_every_backbone_warns_on_0_255_images(name, images):
    m = create_backbone(name).eval()
    with torch.no_grad():
        with pytest.warns(UserWarning, match=RANGE) as rec:
            m(images * 255)
        assert rec[0].filename == __file__  # the line that called the backbone
        _no_warning(lambda: m(images))
    with pytest.warns(UserWarning, match=RANGE):
        extract_features(m, images * 255)
    with pytest.warns(UserWarning, match=RANGE):
        embed_images(m, images * 255, 4)


def test_a_head_on_a_backbone_checks_once(images):
    m = create_backbone("mlp_digits", head="residual")
    with pytest.warns(UserWarning, match=RANGE) as rec:
        m(images * 255)
    assert len([w for w in rec if "255" in str(w.message)]) == 1


def test_backbone_docstrings_say_images_are_in_0_1():
    import bgcn
    from bgcn.backbone import EfficientNetLite0ImageNet, MLPBackbone, PixelBackbone

    for obj in (bgcn.create_backbone, bgcn.extract_features, embed_images, MLPBackbone, PixelBackbone,
                EfficientNetLite0ImageNet):
        assert "[0, 1]" in (obj.__doc__ or ""), obj.__name__


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("timm")
    return create_backbone("efficientnet_lite0_imagenet", imagenet=False, img_size=32).eval()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_efficientnet_refuses_nan_and_inf_images(lite0, bad):
    x = torch.rand(4, 1, 28, 28)
    x[2, 0, 5, 5] = bad
    with torch.no_grad(), pytest.raises(ValueError) as e:
        lite0(x)
    msg = str(e.value)
    assert "\n" not in msg and "images contain NaN or Inf in 1 of 4 images (first: index 2)" in msg
    with pytest.raises(ValueError, match="NaN or Inf"):
        embed_images(lite0, x, 2)   # the engines' loop: the batch holding it is named
    with torch.no_grad():
        f = lite0(torch.rand(2, 1, 28, 28))
    assert torch.isfinite(f).all()


def test_efficientnet_still_refuses_0_255_and_normalised_images(lite0):
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
            lite0(torch.rand(2, 3, 16, 16) * 255)
        with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
            lite0(torch.rand(2, 3, 16, 16) * 2 - 1)


def test_efficientnet_with_a_head_keeps_its_strict_check(lite0):
    m = ResidualHead(lite0).eval()
    x = torch.rand(2, 1, 16, 16)
    x[0, 0, 0, 0] = float("nan")
    with torch.no_grad(), pytest.raises(ValueError, match="NaN or Inf"):
        m(x)
    assert m.bgcn_checks_images
