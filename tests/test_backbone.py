"""Tests for bgcn.backbone: creation, timm names, weights files, feature extraction, gradients."""
from __future__ import annotations

import pytest
import torch

from bgcn.backbone import (DEFAULT_BACKBONE, TimmFeatures, backbone_config, create_backbone,
                           extract_features, list_backbones, load_backbone_weights,
                           save_backbone_weights)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(20, 1, 8, 8, generator=g)


def test_registered_names():
    names = list_backbones()
    assert DEFAULT_BACKBONE == "vit_digits"
    assert {"vit_digits", "vit_tiny_digits", "mlp_digits", "cnn_digits"} <= set(names)
    cfg = backbone_config("vit_digits")
    assert cfg["embed_dim"] == 64 and cfg["depth"] == 4 and cfg["num_heads"] == 4
    cfg["depth"] = 99  # a copy: the registry must not change
    assert backbone_config("vit_digits")["depth"] == 4


@pytest.mark.parametrize("name", ["vit_digits", "vit_tiny_digits", "mlp_digits", "cnn_digits"])
def test_output_shape(name, images):
    torch.manual_seed(0)
    m = create_backbone(name)
    f = m(images)
    assert f.shape == (20, m.num_features)
    assert torch.isfinite(f).all()


def test_vit_digits_size():
    m = create_backbone("vit_digits")
    assert m.num_features == 64
    n = sum(p.numel() for p in m.parameters())
    assert 150_000 < n < 250_000  # ≈ 0.2 M parameters
    assert create_backbone().num_features == 64  # default name


def test_overrides_for_other_images():
    x = torch.rand(3, 3, 16, 16)
    for name in ["vit_tiny_digits", "mlp_digits", "cnn_digits"]:
        m = create_backbone(name, img_size=16, in_chans=3) if name != "cnn_digits" \
            else create_backbone(name, in_chans=3)
        assert m(x).shape == (3, m.num_features)
    m = create_backbone("vit_tiny_digits", embed_dim=48, num_heads=4)
    assert m.num_features == 48


def test_bad_override():
    with pytest.raises(TypeError, match="options"):
        create_backbone("mlp_digits", depth_of_field=3)
    with pytest.raises(ValueError, match="num_classes"):
        create_backbone("vit_digits", num_classes=10)
    with pytest.raises(ValueError, match="pretrained_file"):
        create_backbone("resnet18", pretrained=True)


def test_any_timm_name():
    m = create_backbone("resnet18", in_chans=1)
    assert m.num_features == 512
    m.eval()
    with torch.no_grad():
        assert m(torch.rand(2, 1, 32, 32)).shape == (2, 512)


def test_timm_head_hidden_size_is_the_feature_width():
    # MobileNetV3 has a head conv after pooling: timm's num_features (288) is not its output width
    m = create_backbone("mobilenetv3_small_050", in_chans=1)
    assert isinstance(m, TimmFeatures)
    m.eval()
    with torch.no_grad():
        f = m(torch.rand(2, 1, 32, 32))
    assert f.shape == (2, m.num_features)
    assert m.num_features != m.model.num_features


def test_unknown_name_lists_valid():
    with pytest.raises(ValueError) as e:
        create_backbone("vit_digitz")
    msg = str(e.value)
    for name in list_backbones():
        assert name in msg
    assert "timm.list_models()" in msg
    assert "Did you mean 'vit_digits'" in msg
    with pytest.raises(ValueError, match="internet"):
        create_backbone("hf-hub:timm/resnet18.a1_in1k")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("name", ["vit_digits", "cnn_digits"])
def test_weights_round_trip(tmp_path, images, name, suffix):
    torch.manual_seed(1)
    a = create_backbone(name).eval()
    path = save_backbone_weights(a, tmp_path / f"w{suffix}")
    torch.manual_seed(2)
    fresh = create_backbone(name).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(images), a(images))  # different init: the test can fail
    b = create_backbone(name, pretrained_file=path).eval()
    with torch.no_grad():
        assert torch.equal(a(images), b(images))


def test_torch_save_of_own_state_dict_and_wrapped_forms(tmp_path, images):
    torch.manual_seed(3)
    a = create_backbone("vit_tiny_digits").eval()
    sd = a.state_dict()
    torch.save(sd, tmp_path / "plain.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "ddp.pth")
    torch.save({"model": sd, "epoch": 3}, tmp_path / "ckpt.pth")
    with torch.no_grad():
        want = a(images)
        for f in ["plain.pth", "ddp.pth", "ckpt.pth"]:
            b = create_backbone("vit_tiny_digits", pretrained_file=tmp_path / f).eval()
            assert torch.equal(b(images), want), f


def test_classifier_head_keys_dropped_with_warning(tmp_path, images):
    import timm

    full = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=8,
                             patch_size=2, in_chans=1, embed_dim=64, depth=4, num_heads=4)
    torch.save(full.state_dict(), tmp_path / "cls.pth")
    with pytest.warns(UserWarning, match="head"):
        b = create_backbone("vit_digits", pretrained_file=tmp_path / "cls.pth").eval()
    full.reset_classifier(0)
    full.eval()
    with torch.no_grad():
        assert torch.equal(b(images), full(images))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        create_backbone("mlp_digits", pretrained_file=tmp_path / "nope.safetensors")
    for name in ["bad.safetensors", "bad.pt"]:
        (tmp_path / name).write_bytes(b"this is not a weights file")
        with pytest.raises(ValueError, match=f"could not read weights from .*{name}"):
            create_backbone("mlp_digits", pretrained_file=tmp_path / name)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="state dict"):
        create_backbone("mlp_digits", pretrained_file=tmp_path / "list.pt")


def test_mismatched_keys(tmp_path):
    save_backbone_weights(create_backbone("vit_digits"), tmp_path / "vit.safetensors")
    with pytest.raises(ValueError, match="unexpected key"):
        create_backbone("vit_tiny_digits", pretrained_file=tmp_path / "vit.safetensors")
    with pytest.raises(ValueError, match="missing key"):
        create_backbone("vit_digits", depth=5, pretrained_file=tmp_path / "vit.safetensors")
    m = create_backbone("mlp_digits")
    with pytest.raises(ValueError, match="missing key"):
        load_backbone_weights(m, tmp_path / "vit.safetensors")


def test_extract_features_batches_and_no_grad(images):
    torch.manual_seed(0)
    m = create_backbone("vit_digits")
    m.train()
    f = extract_features(m, images, batch_size=7)
    assert f.shape == (20, 64) and not f.requires_grad
    assert m.training  # mode restored
    m.eval()
    with torch.no_grad():
        assert torch.allclose(f, m(images), atol=1e-5)
    g = extract_features(m, images, batch_size=7, grad=True)
    assert g.requires_grad
    g.sum().backward()
    assert m.patch_embed.proj.weight.grad is not None
    with pytest.raises(ValueError):
        extract_features(m, images, batch_size=0)
    with pytest.raises(ValueError):
        extract_features(m, images[0])


@pytest.mark.parametrize("name", ["vit_digits", "mlp_digits", "cnn_digits"])
def test_gradient_reaches_backbone(name, images):
    m = create_backbone(name)
    f = m(images)
    f.sum().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("name", ["vit_digits", "mlp_digits", "cnn_digits", "resnet18"])
def test_float64_images_are_cast_to_the_parameters_dtype(name, images):
    """torch.from_numpy gives float64: a float32 backbone casts them (exactly, since these values are
    float32 numbers); a float64 backbone computes in float64 from float32 images."""
    torch.manual_seed(0)
    kw = {"in_chans": 1} if name == "resnet18" else {}
    m = create_backbone(name, **kw).eval()
    x = images if name != "resnet18" else torch.nn.functional.interpolate(images, size=16)
    with torch.no_grad():
        f32 = m(x)
        f64in = m(x.double())
        assert f64in.dtype == torch.float32 and torch.equal(f64in, f32)
        assert torch.equal(extract_features(m, x.double()), extract_features(m, x))
        m.double()
        f = m(x)
        assert f.dtype == torch.float64
        assert (f - f32.double()).abs().max().item() < 1e-3 * max(1.0, f.abs().max().item())


def test_integer_images_are_refused_with_the_fix(images):
    m = create_backbone("cnn_digits")
    with pytest.raises(TypeError, match=r"uint8.*images\.float\(\) / 255"):
        m((images * 255).to(torch.uint8))


@pytest.mark.parametrize("name,shape,match", [
    ("resnet18", (1, 16, 16), r"built for 3-channel images: create it with in_chans=1"),
    ("cnn_digits", (3, 16, 16), r"built for 1-channel images: create it with in_chans=3"),
    ("mlp_digits", (1, 12, 12), r"\(1, 12, 12\).*img_size="),
    ("vit_digits", (1, 16, 16), r"\(1, 16, 16\).*Input height \(16\)"),
])
def test_check_backbone_input_names_the_mismatch(name, shape, match):
    from bgcn.backbone import check_backbone_input

    m = create_backbone(name)
    m.train()
    with pytest.raises(ValueError, match=match):
        check_backbone_input(m, torch.rand(2, *shape))
    assert m.training  # mode restored
    good = (3, 16, 16) if name == "resnet18" else (1, 8, 8)
    assert check_backbone_input(m, torch.rand(3, *good)) == m.num_features
