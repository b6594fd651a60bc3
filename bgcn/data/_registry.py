"""The data set registry: a data set is one registered function (timm's convention for models).

``@register_dataset("name", ...)`` on a builder ``fn(**options) -> Dataset`` makes
``load_dataset("name", **options)`` call it, ``list_datasets()`` list it and the command line
(``python -m bgcn train --dataset name``) train on it, with no other change anywhere: the builder's
signature says which options it takes (an unknown one is named in a TypeError), ``cli_options``
says which command-line flag feeds which option, ``batch_options`` what to add when the images are
read batch by batch (the mini-batch engine: e.g. uint8 storage), and ``source`` how to read them
lazily. One spec may be registered with ``from_path=True``: the loader of a folder path, used when
the name is not a registered one but looks like a path.

Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from .._checks import check_bool

__all__ = ["DatasetSpec", "register_dataset", "list_datasets", "dataset_specs", "dataset_spec", "load_dataset",
           "open_dataset"]


@dataclasses.dataclass(frozen=True, eq=False)  # one spec per registration: compared by identity
class DatasetSpec:
    """What the registry knows about one data set.

    Args:
        name: the registered name (lower case; ``"_"`` and ``"-"`` are interchangeable when looked up).
        builder: ``builder(**options) -> Dataset`` (``builder(path, **options)`` when ``from_path``).
        cli_options: builder keyword -> the command-line flag that sets it, e.g. ``{"n": "--synthetic-n"}``.
        batch_options: keywords added when the images are read batch by batch (mini-batch engine).
        source: ``source(**options)`` (``source(path, **options)``) -> an image source read lazily, with
            ``labels``, ``class_names`` and ``num_classes``; used batch by batch instead of the builder.
        from_path: the builder's first argument is a folder path (the loader of the reader's own images).

    Shapes: none (metadata).
    """

    name: str
    builder: Callable[..., Any]
    cli_options: Mapping[str, str] = dataclasses.field(default_factory=dict)
    batch_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    source: Callable[..., Any] | None = None
    from_path: bool = False

    @property
    def options(self) -> list[str]:
        """The keyword options the builder accepts (its signature; the path excluded)."""
        names = list(inspect.signature(self.builder).parameters)
        return names[1:] if self.from_path else names

    def check_options(self, options: Mapping[str, Any], what: str | None = None) -> None:
        """Raise TypeError naming every option the builder does not take, and the ones it does."""
        what = what or self.name
        unknown = sorted(set(options) - set(self.options))
        if not unknown:
            return
        if not self.options:
            raise TypeError(f"load_dataset({what!r}) takes no options, got {unknown}")
        raise TypeError(f"load_dataset({what!r}) got unexpected keyword argument(s) {unknown}; it accepts "
                        f"{', '.join(self.options)}")


_REGISTRY: dict[str, DatasetSpec] = {}
_PATH_SPEC: list[DatasetSpec] = []  # at most one: the loader of a folder path


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register_dataset(name: str, *, cli_options: Mapping[str, str] | None = None,
                     batch_options: Mapping[str, Any] | None = None, source: Callable[..., Any] | None = None,
                     from_path: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``builder(**options) -> Dataset`` under ``name`` (see :class:`DatasetSpec`).

    Every keyword of ``cli_options`` must be an argument of the builder; the builder is returned
    unchanged. Registering a taken name, or a second ``from_path`` loader, is a ValueError.

    Shapes: none (a decorator).

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"name must be a non-empty string, got {name!r}")

    def deco(builder: Callable[..., Any]) -> Callable[..., Any]:
        spec = DatasetSpec(_key(name), builder, MappingProxyType(dict(cli_options or {})),
                           MappingProxyType(dict(batch_options or {})), source, bool(from_path))
        bad = sorted(set(spec.cli_options) - set(spec.options))
        if bad:
            raise ValueError(f"cli_options {bad} of data set {name!r} are not arguments of {builder.__name__}; "
                             f"it takes {', '.join(spec.options)}")
        if spec.name in _REGISTRY or (from_path and _PATH_SPEC):
            raise ValueError(f"data set {name!r} is already registered" if spec.name in _REGISTRY else
                             f"a folder loader ({_PATH_SPEC[0].name!r}) is already registered")
        _REGISTRY[spec.name] = spec
        if from_path:
            _PATH_SPEC.append(spec)
        return builder
    return deco


def list_datasets() -> list[str]:
    """The registered data set names, sorted (a folder path works too; it is not a name).

    Shapes: none.

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    return sorted(n for n, s in _REGISTRY.items() if not s.from_path)


def dataset_specs() -> list[DatasetSpec]:
    """Every registered :class:`DatasetSpec`, the folder loader included, sorted by name.

    Shapes: none.
    """
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def _resolve(name_or_path: str | os.PathLike) -> tuple[DatasetSpec, Path | None]:
    """The spec for a name or a folder path, and the path (None for a name)."""
    if isinstance(name_or_path, os.PathLike):
        return _path_spec(), Path(name_or_path).expanduser()
    if not isinstance(name_or_path, str):
        raise TypeError(f"name_or_path must be a dataset name or a folder path, got {type(name_or_path).__name__}")
    spec = _REGISTRY.get(_key(name_or_path))
    if spec is not None and not spec.from_path:
        return spec, None
    p = Path(name_or_path).expanduser()
    if _PATH_SPEC and (p.exists() or os.sep in name_or_path or (os.altsep and os.altsep in name_or_path)):
        return _PATH_SPEC[0], p
    raise ValueError(f"unknown dataset {name_or_path!r}; valid names are {', '.join(map(repr, list_datasets()))}, "
                     f"or the path of a folder laid out as path/<class_name>/*.png")


def _path_spec() -> DatasetSpec:
    if not _PATH_SPEC:
        raise ValueError("no folder loader is registered (register_dataset(..., from_path=True))")
    return _PATH_SPEC[0]


def dataset_spec(name_or_path: str | os.PathLike) -> DatasetSpec:
    """The :class:`DatasetSpec` that :func:`load_dataset` would use for ``name_or_path``.

    Raises ValueError for a name that is neither registered nor a path (listing the names).

    Shapes: none.

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    return _resolve(name_or_path)[0]


def load_dataset(name_or_path: str | os.PathLike, **options: Any):
    """Load a registered data set by name, or a folder; returns ``(images, labels)`` as a :class:`Dataset`.

    Built in (see :func:`list_datasets`; each builder's own docstring lists its options):

    * ``"digits"`` — :func:`load_digits` (no options);
    * ``"synthetic"`` — :func:`make_synthetic` (``n``, ``num_classes``, ``image_size``, ``channels``,
      ``noise``, ``max_shift``, ``seed``);
    * ``"fashion-mnist"`` (or ``"fashion_mnist"``) — :func:`load_fashion_mnist` (``split``,
      ``subset``, ``seed``, ``data_dir``, ``dtype``);
    * ``"nuisance-shapes"`` (or ``"nuisance_shapes"``) — :func:`make_nuisance_shapes` (``n``,
      ``num_classes``, ``image_size``, ``seed``, ``nuisance``, ``num_nuisance``, ``object_size``,
      ``size_jitter``, ``contrast``, ``texture``, ``noise``); ``.nuisance`` holds the background class;
    * a folder path — :func:`load_image_folder` (``image_size``, ``grayscale``).

    An option the builder does not take is a TypeError naming it and the ones it takes.
    ``images, labels = load_dataset("digits")`` unpacks; ``.class_names`` and ``.name`` ride along.

    Shapes:
        images: (N, C_in, H, W) float32 in [0, 1] (uint8 for fashion-mnist with dtype=torch.uint8)
        labels: (N,) long in {0, …, C-1}

    Taught in: chapter 01 (chapters/01_frozen_pipeline.md)
    """
    spec, path = _resolve(name_or_path)
    spec.check_options(options, str(path) if spec.from_path else spec.name)
    return spec.builder(path, **options) if spec.from_path else spec.builder(**options)


def open_dataset(name_or_path: str | os.PathLike, batched: bool = False, **options: Any) -> tuple[Any, Any]:
    """``(dataset, images)`` for training: :func:`load_dataset`'s, or the form that suits reading in batches.

    With ``batched=False`` this is ``ds = load_dataset(name_or_path, **options)`` and
    ``(ds, ds.images)``. With ``batched=True`` (the mini-batch engine reads the images a batch at a
    time) a data set registered with a ``source`` is opened lazily, ``(source, source)``, and the
    others are loaded with their ``batch_options`` added (e.g. Fashion-MNIST as uint8, a quarter of
    the memory); options given here win. ``dataset`` has ``labels``, ``class_names`` and
    ``num_classes`` either way.

    Shapes:
        images: (N, C_in, H, W) tensor (float, or uint8 when batched), or an image source of N images
        dataset.labels: (N,) long

    Taught in: chapter 11 (chapters/11_minibatch_2_staleness.md)
    """
    check_bool(batched, "batched")
    spec, path = _resolve(name_or_path)
    spec.check_options(options, str(path) if spec.from_path else spec.name)
    args = (path,) if spec.from_path else ()
    if batched and spec.source is not None:
        src = spec.source(*args, **options)
        return src, src
    if batched:
        options = {**spec.batch_options, **options}
    ds = spec.builder(*args, **options)
    return ds, ds.images
