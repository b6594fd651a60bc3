"""The backbone registry: name -> (builder, default config), as timm's model registry.

:func:`register_backbone` adds a builder, :func:`list_backbones` lists the names,
:func:`backbone_config` gives a name's defaults and :func:`backbone_entrypoint` its builder (the
CLI reads the builder's flags, e.g. ``bgcn_resizes_images``). :func:`bgcn.backbone.create_backbone`
builds from it.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

__all__ = ["DEFAULT_BACKBONE", "register_backbone", "list_backbones", "is_backbone", "backbone_config",
           "backbone_entrypoint"]

#: The backbone used when none is named: a 0.2 M-parameter ViT for 8×8 one-channel images.
DEFAULT_BACKBONE = "vit_digits"

# name -> (builder, default config). Builders take the merged config as keyword arguments.
# Private: read it through list_backbones / backbone_config / backbone_entrypoint.
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {}


def register_backbone(name: str, **defaults: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder(**config) -> nn.Module`` under ``name`` with default config.

    ``create_backbone(name, **overrides)`` calls ``builder(**{**defaults, **overrides})``; the module
    must map (N, C_in, H, W) to (N, D) and have ``.num_features == D``. Flags a builder may carry
    (class attributes or function attributes): ``bgcn_takes_head`` (``num_classes`` reaches it),
    ``bgcn_loads_pretrained_file`` (``pretrained_file`` reaches it), ``bgcn_resizes_images`` (it
    takes any image size and channel count, so a caller must not set ``img_size``/``in_chans``
    from the data).

    Args:
        name: the registered name (unique).
        **defaults: the builder's default keyword arguments.

    Shapes:
        - ``builder(**cfg)(images)``: images (N, C_in, H, W) -> features (N, D)

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name={name!r}: a backbone name is a non-empty str")

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered; choose another name")
        _REGISTRY[name] = (builder, dict(defaults))
        return builder
    return deco


def list_backbones() -> list[str]:
    """Our registered backbone names, sorted (any ``timm.list_models()`` name works too).

    Shapes:
        returns a list of names

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    return sorted(_REGISTRY)


def is_backbone(name: str) -> bool:
    """Whether ``name`` is one of :func:`list_backbones` (a timm name is not).

    Shapes:
        returns a bool

    Taught in: no chapter (used by the CLI)
    """
    return isinstance(name, str) and name in _REGISTRY


def _entry(name: str) -> tuple[Callable[..., nn.Module], dict[str, Any]]:
    if not is_backbone(name):
        raise ValueError(f"{name!r} is not a registered backbone; registered: {', '.join(list_backbones())}")
    return _REGISTRY[name]


def backbone_config(name: str) -> dict[str, Any]:
    """The default configuration of a registered backbone (a copy; pass overrides to create_backbone).

    Shapes:
        returns a dict of keyword arguments

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    return dict(_entry(name)[1])


def backbone_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The builder registered under ``name`` (read its ``bgcn_*`` flags, e.g. ``bgcn_resizes_images``).

    Shapes:
        returns a callable ``builder(**config) -> nn.Module``

    Taught in: no chapter (used by the CLI)
    """
    return _entry(name)[0]
