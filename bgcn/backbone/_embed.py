r"""The one embedding loop: :math:`F = f_\theta(X)`, batch by batch, with the backbone's mode restored.

:func:`embed_images` is the no-grad, eval-mode pass every engine uses (bank fills, evaluation,
frozen features; sharded over the ranks in several processes); :func:`extract_features` is the
book's version of chapter 1 (optionally with gradient, optionally in train mode). Both run the
same loop (:func:`_forward_batches`).
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

from .. import distributed as bd
from .._checks import check_int
from ..utils import check_tensor, get_device

__all__ = ["embed_images", "extract_features", "image_rows", "param_dtype"]


def param_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of the module's first parameter when floating (images are cast to it), else ``None``.

    Shapes:
        returns a dtype or None

    Taught in: no chapter (used by the engines)
    """
    p = next(iter(module.parameters()), None)
    return p.dtype if p is not None and p.is_floating_point() else None


def image_rows(images, idx: torch.Tensor) -> torch.Tensor:
    """The images ``idx`` (in that order) as a float tensor: a tensor is indexed (8-bit pixels divided
    by 255), an image source (:class:`bgcn.data.ImageSource`, anything with ``.take``) reads them.

    Shapes:
        images: (N, C, H, W) tensor or image source;  idx: (B,) long -> (B, C, H, W) float

    Taught in: no chapter (used by the engines)
    """
    if not isinstance(images, torch.Tensor):
        return images.take(idx)
    x = images[idx]
    return x.float() / 255 if x.dtype == torch.uint8 else x


@contextlib.contextmanager
def _mode(backbone: nn.Module, eval_mode: bool) -> Iterator[None]:
    """Switch the backbone to eval mode (when asked) for the block; restore its mode after."""
    was = backbone.training
    if eval_mode:
        backbone.eval()
    try:
        yield
    finally:
        backbone.train(was)


def _forward_batches(backbone: nn.Module, batches: Iterable[torch.Tensor], device: torch.device | None,
                     dtype: torch.dtype | None = None) -> Iterator[torch.Tensor]:
    """``backbone(x)`` for each batch x (moved to ``device``, cast to ``dtype``), checked to be (B, D)."""
    for x in batches:
        x = x.to(device, non_blocking=True) if device is not None else x
        if dtype is not None and x.dtype != dtype:
            x = x.to(dtype)
        f = backbone(x)
        if not isinstance(f, torch.Tensor) or f.dim() != 2 or f.shape[0] != x.shape[0]:
            raise ValueError(f"the backbone returned {tuple(f.shape) if isinstance(f, torch.Tensor) else type(f)} "
                             f"for {x.shape[0]} images, expected ({x.shape[0]}, D) features; create it with "
                             f"num_classes=0 through create_backbone")
        yield f


def _image_batches(images, mine: torch.Tensor, batch_size: int, contiguous: bool, loader_workers: int,
                   pin_memory: bool) -> Iterator[torch.Tensor]:
    """The images of ``mine`` in batches: slices of a tensor, indexed rows, or a DataLoader's batches."""
    if loader_workers:
        for _, x in images.loader(batch_size, num_workers=loader_workers, pin_memory=pin_memory):
            yield x
        return
    for p in torch.split(mine, batch_size) if mine.numel() else ():
        yield images[int(p[0]):int(p[-1]) + 1] if contiguous else image_rows(images, p)  # a slice, not a copy


@torch.no_grad()
def embed_images(backbone: torch.nn.Module, images, batch_size: int = 512, device=None,
                 indices: torch.Tensor | None = None, num_workers: int = 0) -> torch.Tensor:
    r"""Features :math:`F = f_\theta(X)` of every image (or of ``indices``), eval mode, no gradient.

    ``batch_size`` images go through the backbone at a time (its train/eval mode is restored
    after); images are cast to the backbone's parameter dtype and half-precision features come
    back as float32. In several processes each rank embeds its :func:`bgcn.distributed.shard` of
    the rows and the parts are gathered (:func:`bgcn.distributed.all_gather_rows`), so a bank fill
    or an evaluation costs N / W backbone passes a rank and every rank ends with the same (N, D)
    table. For an image source (:class:`bgcn.data.ImageSource`) in one process, ``num_workers`` > 0
    decodes the images in that many ``DataLoader`` worker processes (pinned memory on CUDA).

    Args:
        backbone: the feature extractor.
        images: float images in [0, 1] (8-bit tensors are divided by 255), or an image source.
        batch_size: images a forward.
        device: where the images go (the backbone is not moved); ``None`` keeps them where they are.
        indices: embed only these rows, in this order.
        num_workers: DataLoader workers for an image source (one process only).

    Shapes: images (N, C_in, H, W) tensor or image source -> F (N, D) (or (len(indices), D))

    Taught in: chapter 11 (chapters/11_minibatch_1_bank.md).
    """
    n = len(images) if indices is None else int(indices.numel())
    idx = torch.arange(n) if indices is None else indices.detach().cpu().long()
    rank, world = bd.rank_world()
    mine = bd.shard(idx, rank, world) if world > 1 else idx
    contiguous = indices is None and isinstance(images, torch.Tensor) and images.dtype != torch.uint8
    dev = torch.device(device) if device is not None else None
    workers = num_workers if num_workers and indices is None and world == 1 and not isinstance(images, torch.Tensor) \
        else 0
    batches = _image_batches(images, mine, batch_size, contiguous, workers,
                             pin_memory=dev is not None and dev.type == "cuda")
    keep_rng = torch.random.fork_rng(devices=[]) if num_workers else contextlib.nullcontext()
    with _mode(backbone, True), keep_rng:  # a DataLoader with workers draws its base seed from the global
        # RNG: keep the run's random draws (dropout, noise) the same with and without workers
        feats, a = None, 0  # written into one (rows, D) tensor: a list of batches then a cat would
        for f in _forward_batches(backbone, batches, dev, param_dtype(backbone)):  # hold both
            f = f.float() if f.dtype in (torch.float16, torch.bfloat16) else f
            if feats is None:
                feats = torch.empty((len(mine), *f.shape[1:]), dtype=f.dtype, device=f.device)
            feats[a:a + f.shape[0]] = f
            a += f.shape[0]
    if feats is None:
        raise ValueError("there are no images to embed (images or indices has no rows); pass at least one")
    if world > 1:
        (feats,) = bd.all_gather_rows(feats)
    return feats


def extract_features(backbone: nn.Module, images: torch.Tensor, batch_size: int = 512,
                     device: str | torch.device | None = None, grad: bool = False,
                     eval_mode: bool = True, to_cpu: bool = False) -> torch.Tensor:
    """Run the backbone over all images in batches of B: F = [f_θ(x_{1:B}); f_θ(x_{B+1:2B}); …].

    With ``grad=False`` (the frozen pipeline of chapter 1) it runs under ``torch.no_grad()``, so F
    has no graph and no gradient can reach θ. ``eval_mode=True`` switches the backbone to
    ``eval()`` for the call (dropout off, batch-norm statistics fixed) and restores its mode after.
    ``device=None`` computes where the backbone's parameters are; otherwise the backbone is moved
    there. ``to_cpu=True`` returns F on the CPU. Images are floats in [0, 1]. One process: unlike
    :func:`embed_images` it never shards over ranks.

    Shapes:
        images: (N, C_in, H, W) -> F: (N, D)

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    check_tensor(images, "images", ndim=4)
    batch_size = check_int(batch_size, "batch_size", 1, hint="images per forward pass")
    if device is None:
        p = next(iter(backbone.parameters()), None)
        dev = p.device if p is not None else torch.device("cpu")
    else:
        dev = get_device(device)
        backbone.to(dev)
    batches = (images[start:start + batch_size] for start in range(0, images.shape[0], batch_size))
    with _mode(backbone, eval_mode), torch.set_grad_enabled(grad):
        outs = [f.cpu() if to_cpu else f for f in _forward_batches(backbone, batches, dev)]
    if not outs:
        d = int(getattr(backbone, "num_features", 0))
        return torch.zeros(0, d, device="cpu" if to_cpu else dev)
    return torch.cat(outs, dim=0)
