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
    if timm_kwargs.get("num_classes", 0) != 0:
        raise ValueError(f"num_classes={timm_kwargs['num_classes']}: a backbone has no classifier head "
                         f"(num_classes=0); the GCN does the classification")
    timm_kwargs.pop("num_classes", None)
    if timm_kwargs.pop("pretrained", False):
        raise ValueError("pretrained=True would download weights from a model hub; pass "
                         "pretrained_file='weights.safetensors' (a local file) instead")

    if name in _REGISTRY:
        builder, defaults = _REGISTRY[name]
        cfg = {**defaults, **timm_kwargs}
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
    own = target.state_dict()

    changed = True
    while changed:
        changed = False
        for p in _WRAP_PREFIXES:
            if all(k.startswith(p) for k in sd) and not any(k.startswith(p) for k in own):
                sd = {k[len(p):]: v for k, v in sd.items()}
                changed = True
    head = sorted(k for k in sd if k not in own and k.startswith(_HEAD_PREFIXES))
    if head:
        warnings.warn(f"{path.name}: dropped {len(head)} classifier-head key(s) the backbone does not have "
                      f"({', '.join(head[:4])}{', …' if len(head) > 4 else ''}); the backbone has no head",
                      stacklevel=2)
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
    target.load_state_dict(sd, strict=True)
    return backbone


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
