"""Self-supervised pre-training of a backbone (SimCLR-lite), so that "frozen" is not "random".

Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
"""
from __future__ import annotations

import contextlib
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_int
from ..backbone import save_backbone_weights
from ..topk import mask_diagonal
from ..utils import check_positive, check_tensor, get_device, seed_everything
from ._progress import pbar, progress_enabled
from ._result import TrainingDiverged

__all__ = ["augment_images", "nt_xent_loss", "pretrain_backbone"]


def augment_images(images: torch.Tensor, generator: torch.Generator | None = None, max_shift: int = 1,
                   noise: float = 0.1, scale: tuple[float, float] = (0.8, 1.2),
                   drop: float = 0.1) -> torch.Tensor:
    r"""Random views of small images: shift, contrast, pixel dropout and Gaussian noise.

    .. math::
        \tilde x = a \cdot \mathrm{shift}_{(dy,dx)}(x) \odot m + \sigma\varepsilon,\quad
        dy, dx \in \{-s..s\},\ a \sim U(\text{scale}),\ m_{hw} \sim \text{Bernoulli}(1 - \text{drop}),\ 
        \varepsilon\sim\mathcal N(0, I)

    The shift pads with zeros (no wrap-around). All randomness comes from ``generator``.

    Shapes: images (B, C, H, W) -> (B, C, H, W)

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """
    check_tensor(images, "images", ndim=4)
    b, c, h, w = images.shape
    dev = images.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device="cpu").to(dev)

    x = images
    if max_shift > 0:
        s = int(max_shift)
        pad = F.pad(x, (s, s, s, s))
        off = (rand(b, 2) * (2 * s + 1)).long().clamp_max(2 * s)
        rows = off[:, 0:1] + torch.arange(h, device=dev)  # (B, H)
        cols = off[:, 1:2] + torch.arange(w, device=dev)  # (B, W)
        bi = torch.arange(b, device=dev)[:, None, None]
        x = pad.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    a = scale[0] + (scale[1] - scale[0]) * rand(b, 1, 1, 1)
    x = x * a
    if drop > 0:
        x = x * (rand(b, 1, h, w) >= drop).to(x.dtype)
    if noise > 0:
        x = x + noise * torch.randn(b, c, h, w, generator=generator, device="cpu").to(dev)
    return x


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    r"""SimCLR's normalised-temperature cross-entropy over 2B views.

    .. math::
        \ell = -\frac{1}{2B}\sum_{a}\log
        \frac{\exp(\hat z_a\cdot\hat z_{a^+}/t)}{\sum_{b\ne a}\exp(\hat z_a\cdot\hat z_b/t)}

    with :math:`a^+` the other view of the same image.

    Shapes: z1, z2 (B, P) -> ()

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """
    check_tensor(z1, "z1", ndim=2)
    check_tensor(z2, "z2", ndim=2)
    if z1.shape != z2.shape:
        raise ValueError(f"z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} must have the same shape (B, P): "
                         f"two views of the same B images")
    temperature = check_positive(temperature, "temperature")
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    b = z1.shape[0]
    logits = mask_diagonal(z @ z.T) / temperature
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, target)


def pretrain_backbone(backbone: nn.Module, images: torch.Tensor, *, epochs: int = 30, batch_size: int = 256,
                      lr: float = 1e-3, weight_decay: float = 1e-4, temperature: float = 0.2, max_shift: int = 1,
                      noise: float = 0.1, proj_dim: int = 64, seed: int = 0, device: str | torch.device = "auto",
                      progress: bool | None = None, save_to: str | os.PathLike | None = None) -> dict:
    r"""Self-supervised pre-training of a backbone (SimCLR-lite), without any label.

    Two random views :math:`\tilde x^{(1)}, \tilde x^{(2)}` of every image
    (:func:`augment_images`: ±``max_shift``-pixel shifts, contrast, pixel dropout, noise) pass
    through the backbone and a projection head :math:`g` (Linear–ReLU–Linear to ``proj_dim``,
    discarded afterwards); AdamW minimises :func:`nt_xent_loss` of
    :math:`g(f(\tilde x^{(1)})), g(f(\tilde x^{(2)}))` over mini-batches of ``batch_size`` images.

    It uses no labels, so pre-training on all N images (the test images included) is fair in the
    transductive setting: it is what "an extractor that first learned something" means here, and
    what the frozen baseline freezes. ``save_to`` writes the backbone's weights
    (:func:`bgcn.backbone.save_backbone_weights`; load them with
    ``create_backbone(name, pretrained_file=...)``). The backbone is trained in place.

    Returns ``{"loss": [per-epoch mean loss], "time": seconds, "path": str or None}``.

    Shapes: images (N, C_in, H, W); backbone: (B, C_in, H, W) -> (B, D)

    Taught in: chapter 08 (chapters/08_end_to_end_1_loop.md).
    """
    check_tensor(images, "images", ndim=4)
    epochs = check_int(epochs, "epochs", 1)
    batch_size = check_int(batch_size, "batch_size", 2, hint="contrastive pairs need two images")
    lr = check_positive(lr, "lr")
    temperature = check_positive(temperature, "temperature")
    d = getattr(backbone, "num_features", None)
    if not isinstance(d, int):
        raise TypeError("backbone must have an int .num_features; create it with bgcn.create_backbone")
    dev = get_device(device)
    seed_everything(seed)
    g = torch.Generator().manual_seed(seed)
    head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, proj_dim)).to(dev)
    backbone.to(dev).train()
    opt = torch.optim.AdamW(list(backbone.parameters()) + list(head.parameters()), lr=lr, weight_decay=weight_decay)
    x_all = images.to(dev)
    n = x_all.shape[0]
    losses = []
    t0 = time.perf_counter()
    amp = dev.type == "cuda"
    for _ in pbar(range(epochs), progress_enabled(progress), desc="pretrain", unit="epoch"):
        perm = torch.randperm(n, generator=g).to(dev)
        tot, cnt = 0.0, 0
        for start in range(0, n - 1, batch_size):
            idx = perm[start:start + batch_size]
            if idx.numel() < 2:
                continue
            x = x_all[idx]
            v1, v2 = augment_images(x, g, max_shift, noise), augment_images(x, g, max_shift, noise)
            with torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext():
                z = head(backbone(torch.cat([v1, v2])))
            loss = nt_xent_loss(z[: idx.numel()].float(), z[idx.numel():].float(), temperature)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"pre-training diverged (loss {float(loss)}); lower lr", len(losses) + 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * idx.numel()
            cnt += idx.numel()
        losses.append(tot / max(cnt, 1))
    backbone.eval()
    path = None
    if save_to is not None:
        path = str(save_backbone_weights(backbone, save_to))
    return {"loss": losses, "time": time.perf_counter() - t0, "path": path}
