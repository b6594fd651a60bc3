"""Image sources: N images handed out by index, one or a batch at a time, in memory or read lazily.

The mini-batch engine and the feature bank read images only through :class:`ImageSource`, so an
in-memory tensor (:class:`TensorImages`) and a folder read lazily
(:class:`~bgcn.data.ImageFolderSource`) are interchangeable; :func:`as_image_source` turns a
tensor or a source into a source.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.utils.data as tud

from .._checks import check_bool, check_int

__all__ = ["ImageSource", "TensorImages", "as_image_source"]


class ImageSource(tud.Dataset):
    """N images that can be fetched by index, one or a batch at a time, without holding all of them.

    The mini-batch engine and the feature bank read images only through this interface, so an
    in-memory tensor (:class:`TensorImages`) and a folder read lazily (:class:`ImageFolderSource`)
    are interchangeable. Subclasses implement ``__len__``, ``image_shape`` and ``_read(i)`` (one
    image) and may override :meth:`take` with a faster batch read.

    * ``source[i]`` → ``(image (C_in, H, W) float in [0, 1], i)`` (a ``torch.utils.data.Dataset``);
    * ``source.take(indices)`` → images (b, C_in, H, W) in the order of ``indices``;
    * ``source.loader(batch_size)`` → batches ``(indices (b,), images (b, C_in, H, W))`` in index
      order over all N (the last batch may be smaller), from a ``torch.utils.data.DataLoader``.

    Images are float32 (uint8 storage is divided by 255 per batch), except that a floating tensor
    wrapped by :class:`TensorImages` keeps its own dtype.

    Shapes:
        image_shape: (C_in, H, W);  take(indices (b,)) -> (b, C_in, H, W)

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md)
    """

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def image_shape(self) -> tuple[int, int, int]:  # pragma: no cover - abstract
        """(C_in, H, W) of one image."""
        raise NotImplementedError

    def _read(self, i: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Where the batches are made: the CPU, except for a :class:`TensorImages` over a GPU tensor."""
        return torch.device("cpu")

    def _index(self, i: Any) -> int:
        if isinstance(i, torch.Tensor) and i.dim() == 0 and not i.is_floating_point() and i.dtype != torch.bool:
            i = int(i)
        i = check_int(i, "index", hint="one image; use take(indices) for a batch")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"image index {i} is out of range for {n} images")
        return i % n

    def __getitem__(self, i: Any) -> tuple[torch.Tensor, int]:
        i = self._index(i)
        return self._read(i), i

    def _check_indices(self, indices: Any) -> torch.Tensor:
        if not isinstance(indices, torch.Tensor):
            try:
                indices = torch.as_tensor(indices)
            except Exception:  # noqa: BLE001
                raise TypeError(f"indices must be a 1-D LongTensor of image indices, got "
                                f"{type(indices).__name__}") from None
        if indices.dim() != 1:
            raise ValueError(f"indices must be 1-D (b,), got shape {tuple(indices.shape)}")
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise TypeError(f"indices must hold integer image indices, got dtype {indices.dtype}; call .long()")
        indices = indices.long()
        n = len(self)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n):
            raise IndexError(f"indices span [{int(indices.min())}, {int(indices.max())}] but there are {n} "
                             f"images; every index must lie in 0..{n - 1}")
        return indices

    def take(self, indices: Any) -> torch.Tensor:
        """The images at ``indices``, stacked in the order given (repeats allowed).

        Shapes:
            indices: (b,) long in 0..N-1;  returns (b, C_in, H, W) float
        """
        idx = self._check_indices(indices).cpu()
        if idx.numel() == 0:
            return torch.empty((0, *self.image_shape), dtype=torch.float32)
        return torch.stack([self._read(int(i)) for i in idx])

    def loader(self, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> tud.DataLoader:
        """Batches ``(indices, images)`` over all N images in index order: 0..b-1, b..2b-1, ….

        Each batch is one :meth:`take` call; with ``num_workers`` > 0 the batches are read in that
        many worker processes (still yielded in order). ``pin_memory=True`` pins the batches in
        page-locked memory for faster copies to a GPU; it is ignored when CUDA is not available or
        the source already lives on the GPU. A GPU-resident source needs ``num_workers=0`` (CUDA
        tensors cannot be used in forked worker processes).

        Shapes:
            yields indices (b,) long, images (b, C_in, H, W); b = batch_size except maybe the last

        Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md)
        """
        batch_size = check_int(batch_size, "batch_size", 1)
        num_workers = check_int(num_workers, "num_workers", 0)
        check_bool(pin_memory, "pin_memory")
        on_cpu = self.device.type == "cpu"
        if num_workers and not on_cpu:
            raise ValueError(f"num_workers={num_workers} needs images on the CPU but this source is on "
                             f"{self.device}; use num_workers=0 (a GPU tensor is already fast to index)")
        return tud.DataLoader(_Batches(self, batch_size), batch_size=None, shuffle=False, num_workers=num_workers,
                              pin_memory=pin_memory and on_cpu and torch.cuda.is_available())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(N={len(self)}, image_shape={self.image_shape})"


class _Batches(tud.Dataset):
    """Batch j of a source: (indices j·b … min((j+1)·b, N) − 1, their images)."""

    def __init__(self, source: ImageSource, batch_size: int):
        self.source, self.batch_size = source, batch_size

    def __len__(self) -> int:
        return -(-len(self.source) // self.batch_size)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= j < len(self):
            raise IndexError(j)
        idx = torch.arange(j * self.batch_size, min((j + 1) * self.batch_size, len(self.source)))
        return idx, self.source.take(idx)


class TensorImages(ImageSource):
    """An :class:`ImageSource` over an in-memory tensor (CPU or GPU), float or uint8.

    A floating tensor is kept as it is (no copy) and batches come back in its dtype; a uint8
    tensor is kept as uint8 (a quarter of float32's memory) and each batch is converted on the
    fly, x = pixel / 255 in float32, exactly ``images.float() / 255`` of those rows.

    Shapes:
        images: (N, C_in, H, W) float or uint8;  take(indices (b,)) -> (b, C_in, H, W)

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md)
    """

    def __init__(self, images: torch.Tensor):
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor (N, C_in, H, W), got {type(images).__name__}")
        if images.dim() != 4:
            raise ValueError(f"images must have 4 dimensions (N, C_in, H, W), got shape {tuple(images.shape)}")
        if not (images.is_floating_point() or images.dtype == torch.uint8):
            raise TypeError(f"images must be floating (values in [0, 1]) or uint8 (0..255), got dtype "
                            f"{images.dtype}; call .float() or .to(torch.uint8)")
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    @property
    def device(self) -> torch.device:
        """The device of the wrapped tensor (batches are made there)."""
        return self.images.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the batches: the tensor's own if floating, float32 for uint8."""
        return self.images.dtype if self.images.is_floating_point() else torch.float32

    def _convert(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.is_floating_point() else x.float().div_(255)

    def _read(self, i: int) -> torch.Tensor:
        return self._convert(self.images[i])

    def take(self, indices: Any) -> torch.Tensor:
        idx = self._check_indices(indices).to(self.images.device)
        return self._convert(self.images[idx])


def as_image_source(images: Any) -> ImageSource:
    """An :class:`ImageSource` for ``images``: a source is returned as it is, a 4-D float or uint8
    tensor is wrapped in :class:`TensorImages`; anything else raises TypeError.

    Shapes:
        images: ImageSource, or a tensor (N, C_in, H, W) float/uint8

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md)
    """
    if isinstance(images, ImageSource):
        return images
    if isinstance(images, torch.Tensor):
        return TensorImages(images)
    hint = "; pass dataset.images" if isinstance(images, tuple) and hasattr(images, "images") else ""
    raise TypeError(f"images must be an ImageSource (TensorImages, ImageFolderSource) or a tensor "
                    f"(N, C_in, H, W) float or uint8, got {type(images).__name__}{hint}")

