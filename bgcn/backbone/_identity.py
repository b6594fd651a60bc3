r"""Extractors that start from the best frozen graph: learnable maps initialised to the identity.

Each head :math:`h: \mathbb R^D \to \mathbb R^D` equals the identity at initialisation, exactly (in
float64 too), so an extractor :math:`h \circ f` starts with the features of :math:`f`, its first kNN
graph is :math:`f`'s graph and epoch 0 of end-to-end training is the frozen row:

- ``"linear"`` (:class:`IdentityLinear`): :math:`h(F) = F W^\top + b`, :math:`W = I`, :math:`b = 0`;
- ``"diag"`` (:class:`IdentityDiag`): :math:`h(F) = F \odot w`, :math:`w = \mathbf 1` — a
  per-dimension weighting; the cosine of :math:`F_i \odot w` and :math:`F_j \odot w` is IDGL's
  weighted cosine (Chen et al. 2020) with one perspective;
- ``"residual"`` (:class:`ResidualMLP`): :math:`h(F) = F + W_2\,\mathrm{GELU}(W_1 F + b_1) + b_2`
  with :math:`W_2 = 0`, :math:`b_2 = 0` (the last layer starts at zero, as in ReZero/adapters).

:class:`FeatureHead` puts a head on top of any backbone (``ResidualHead(backbone)`` for the
residual one; ``create_backbone(name, head="residual")`` does the same for a named backbone).
On the flattened pixels they are registered as ``"identity_linear"``, ``"identity_diag"`` and
``"identity_residual"``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_int
from ._pixels import PixelBackbone
from ._registry import register_backbone

__all__ = ["HEADS", "IdentityLinear", "IdentityDiag", "ResidualMLP", "FeatureHead", "ResidualHead"]


class IdentityLinear(nn.Module):
    r"""A linear map initialised to the identity: :math:`h(F) = F W^\top + b`, :math:`W = I_D`, :math:`b = 0`.

    Args:
        dim: D (input and output width).

    Shapes:
        F: (N, dim) -> (N, dim)

    Taught in: no chapter yet (issue 16: the digits against the field start from the pixels' graph)
    """

    def __init__(self, dim: int):
        super().__init__()
        d = check_int(dim, "dim", 1)
        self.weight = nn.Parameter(torch.eye(d))
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return F.linear(f, self.weight, self.bias)


class IdentityDiag(nn.Module):
    r"""A per-dimension weighting initialised to one: :math:`h(F) = F \odot w`, :math:`w = \mathbf 1_D`.

    With cosine similarity downstream, :math:`\cos(F_i \odot w, F_j \odot w)` is IDGL's weighted
    cosine with one perspective.

    Args:
        dim: D.

    Shapes:
        F: (N, dim) -> (N, dim)

    Taught in: no chapter yet (issue 16: the digits against the field start from the pixels' graph)
    """

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(check_int(dim, "dim", 1)))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f * self.weight


class ResidualMLP(nn.Module):
    r"""A residual MLP whose last layer starts at zero: :math:`h(F) = F + W_2\,\mathrm{GELU}(W_1 F + b_1) + b_2`.

    :math:`W_1, b_1` have PyTorch's default initialisation, :math:`W_2 = 0`, :math:`b_2 = 0`, so
    :math:`h` is the identity at initialisation and the first gradient step moves :math:`W_2, b_2`
    (the gradient of :math:`W_1, b_1` is zero until :math:`W_2 \ne 0`).

    Args:
        dim: D.
        hidden: width of the hidden layer.

    Shapes:
        F: (N, dim) -> (N, dim)

    Taught in: no chapter yet (issue 16: the digits against the field start from the pixels' graph)
    """

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        d, h = check_int(dim, "dim", 1), check_int(hidden, "hidden", 1)
        self.fc1 = nn.Linear(d, h)
        self.fc2 = nn.Linear(h, d)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f + self.fc2(F.gelu(self.fc1(f)))


#: The identity-initialised heads by name: ``create_backbone(name, head=...)`` and :class:`FeatureHead`.
HEADS = {"linear": IdentityLinear, "diag": IdentityDiag, "residual": ResidualMLP}


class FeatureHead(nn.Module):
    r"""A backbone followed by an identity-initialised head: :math:`F = h(f(x))`, :math:`h = \mathrm{id}` at init.

    Args:
        backbone: any backbone (``.num_features`` = D), e.g. ``create_backbone("pixels")`` or the
            ImageNet EfficientNet.
        head: ``"linear"``, ``"diag"`` or ``"residual"`` (see :data:`HEADS`).
        hidden: hidden width of the ``"residual"`` head (ignored by the others).

    ``num_features`` is the backbone's D. The backbone's ``frozen_parameters()`` (if any) are
    passed through, so :meth:`bgcn.model.EndToEnd.configure` keeps them frozen.

    Shapes:
        x: (N, C_in, H, W) -> F: (N, D)

    Taught in: no chapter yet (issue 16: the digits against the field start from the pixels' graph)
    """

    def __init__(self, backbone: nn.Module, head: str = "residual", hidden: int = 128):
        super().__init__()
        if not isinstance(backbone, nn.Module) or not isinstance(getattr(backbone, "num_features", None), int):
            raise TypeError("backbone must be a torch.nn.Module with an int .num_features; create it with "
                            "bgcn.create_backbone")
        if head not in HEADS:
            raise ValueError(f"head={head!r}: choose one of {', '.join(map(repr, HEADS))}")
        self.backbone = backbone
        self.head_kind = head
        self.num_features = int(backbone.num_features)
        self.head = ResidualMLP(self.num_features, hidden) if head == "residual" else HEADS[head](self.num_features)

    @property
    def bgcn_checks_images(self) -> bool:
        """Whether the backbone checks its images' values itself (then the pre-hook does not)."""
        return bool(getattr(self.backbone, "bgcn_checks_images", False))

    def frozen_parameters(self) -> list[nn.Parameter]:
        """The backbone's frozen parameters (``train_blocks``, ``bn_policy``); the head has none."""
        keep = getattr(self.backbone, "frozen_parameters", None)
        return list(keep()) if callable(keep) else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def extra_repr(self) -> str:
        return f"head={self.head_kind!r}, num_features={self.num_features}"


class ResidualHead(FeatureHead):
    r"""``FeatureHead(backbone, "residual", hidden)``: :math:`F = f(x) + \mathrm{MLP}(f(x))`, last layer at zero.

    Args:
        backbone: any backbone with ``.num_features``.
        hidden: hidden width of the MLP.

    Shapes:
        x: (N, C_in, H, W) -> F: (N, D)

    Taught in: no chapter yet (issue 16: the digits against the field start from the pixels' graph)
    """

    def __init__(self, backbone: nn.Module, hidden: int = 128):
        super().__init__(backbone, "residual", hidden)


def _identity_builder(head: str):
    takes = {"hidden"} if head == "residual" else set()

    def build(img_size: int | tuple[int, int] = 8, in_chans: int = 1, **kw) -> FeatureHead:
        if set(kw) - takes:
            raise TypeError(f"unexpected option(s) {', '.join(sorted(set(kw) - takes))}")
        return FeatureHead(PixelBackbone(img_size, in_chans), head, **kw)
    build.__name__ = f"identity_{head}"
    build.__doc__ = f"``FeatureHead(PixelBackbone(img_size, in_chans), {head!r})``: identity at init on the pixels."
    return build


register_backbone("identity_linear", img_size=8, in_chans=1)(_identity_builder("linear"))
register_backbone("identity_diag", img_size=8, in_chans=1)(_identity_builder("diag"))
register_backbone("identity_residual", img_size=8, in_chans=1, hidden=128)(_identity_builder("residual"))
