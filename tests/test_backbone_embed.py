"""The one no-grad embedding loop, ``bgcn.backbone.embed_images`` (issue 15: bank and mini-batch
engine each had one; ``extract_features`` runs the same loop).

Checked against the engine's copy in ``bgcn.minibatch`` (float64 equality) until that module
re-exports this one, and against a plain forward.
"""
from __future__ import annotations

import pytest
import torch

import bgcn.minibatch
from bgcn.backbone import create_backbone, embed_images, extract_features, image_rows, param_dtype
from bgcn.bank import FeatureBank


class _Source:
    """An image source as the engines see one: ``len`` and ``take(indices)`` (no tensor)."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[idx]


@pytest.fixture(scope="module")
def images():
    return torch.rand(23, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.fixture()
def vit():
    torch.manual_seed(0)
    return create_backbone("vit_tiny_digits").double()


def _plain(backbone, x):
    backbone.eval()
    with torch.no_grad():
        return backbone(x)


def test_equals_a_plain_forward_and_the_engines_copy(vit, images):
    vit.train()
    f = embed_images(vit, images, 5)
    assert vit.training and not f.requires_grad and f.dtype == torch.float64
    assert torch.equal(f, bgcn.minibatch.embed_images(vit, images, 5))
    torch.testing.assert_close(f, _plain(vit, images), rtol=1e-12, atol=1e-12)   # batches of 5 vs one batch
    assert torch.equal(f, extract_features(vit, images, batch_size=5))


def test_indices_uint8_and_image_sources(vit, images):
    idx = torch.tensor([7, 0, 22, 3])
    assert torch.equal(embed_images(vit, images, 3, indices=idx), embed_images(vit, images, 3)[idx])
    assert torch.equal(embed_images(vit, images, 3, indices=idx),
                       bgcn.minibatch.embed_images(vit, images, 3, indices=idx))
    u8 = (images * 255).round().to(torch.uint8)
    want = _plain(vit, (u8.float() / 255).double())   # 8-bit pixels / 255 in float32, then cast
    torch.testing.assert_close(embed_images(vit, u8, 4), want, rtol=1e-12, atol=1e-12)
    assert torch.equal(image_rows(u8, idx), u8[idx].float() / 255)
    src = _Source(images)
    assert torch.equal(embed_images(vit, src, 6), embed_images(vit, images, 6))
    assert torch.equal(embed_images(vit, src, 6, indices=idx), embed_images(vit, images, 6, indices=idx))


def test_casts_to_the_parameters_and_returns_float32_from_half(images):
    torch.manual_seed(0)
    mlp = create_backbone("mlp_digits")
    assert param_dtype(mlp) == torch.float32 and param_dtype(create_backbone("pixels")) is None
    f = embed_images(mlp, images, 8)                       # float64 images into a float32 backbone
    assert f.dtype == torch.float32 and torch.equal(f, _plain(mlp, images.float()))
    bf = embed_images(mlp.to(torch.bfloat16), images, 8)
    assert bf.dtype == torch.float32


def test_the_bank_fills_through_it(vit, images):
    bank = FeatureBank.from_backbone(vit, images, chunk_size=4)
    assert torch.equal(bank.features, embed_images(vit, images, 4))
    bank2 = FeatureBank(23, vit.num_features, torch.float64).fill(vit, images, chunk_size=7)
    assert torch.equal(bank2.features, embed_images(vit, images, 7))


def test_a_wrong_output_is_one_error(images):
    class Bad(torch.nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ValueError, match=r"returned \(4, 1, 8, 8\) for 4 images, expected \(4, D\) features"):
        embed_images(Bad(), images, 4)


def test_embed_refuses_no_images_and_a_backbone_that_drops_rows():
    from bgcn.backbone import embed_images

    with pytest.raises(ValueError, match="no images to embed"):
        embed_images(torch.nn.Flatten(), torch.zeros(0, 1, 4, 4))
    with pytest.raises(ValueError, match="for 3 images"):  # never a half-written (uninitialised) table
        embed_images(_DropsARow(), torch.zeros(3, 1, 4, 4))


class _DropsARow(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:-1]
