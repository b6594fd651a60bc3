"""Datasets and label masks: the images that enter the pipeline and which of them carry labels.

Every data set is one registered function (:func:`register_dataset`, timm's convention for
models); :func:`load_dataset` dispatches through the registry and :func:`list_datasets` lists it:

* ``"digits"`` — scikit-learn's bundled handwritten digits (N = 1797, 8×8, one channel, 10 classes),
  shipped with scikit-learn, so nothing is downloaded;
* ``"synthetic"`` — generated images of any size N with a known class structure (for scaling);
* ``"nuisance-shapes"`` — generated shapes on a label-free background that dominates the pixels (a
  positive control where a frozen extractor's kNN graph is wrong); the background class rides
  along as ``dataset.nuisance``;
* ``"fashion-mnist"`` — Zalando's Fashion-MNIST (60 000 + 10 000, 28×28, one channel, 10 classes)
  from local IDX files, e.g. Debian's ``apt-get install dataset-fashion-mnist``; ``subset=n`` for a
  stratified sample;
* a folder ``path/<class_name>/**/<image>`` of the reader's own images (png, jpg, bmp, tif,
  webp; at any depth under the class folder; 8- or 16-bit).

:func:`load_dataset` returns a :class:`Dataset`, a 2-tuple ``(images, labels)`` that also carries
``class_names`` and ``name`` as attributes, so both ``images, labels = load_dataset("digits")`` and
``ds = load_dataset("digits"); ds.class_names`` work.

Images that need not fit in memory: an :class:`ImageSource` hands out images by index, one
(``source[i]``) or a batch (``source.take(indices)``, ``source.loader(batch_size)``) at a time;
:class:`TensorImages` wraps a tensor (uint8 converted per batch), :class:`ImageFolderSource` reads
a folder lazily, and :func:`as_image_source` turns either a tensor or a source into a source;
:func:`open_dataset` gives the form that suits the engine (lazy or uint8 when read in batches).

The setting is transductive (see the book): the kNN graph spans every image, labelled or not, and
:func:`label_masks` only decides whose labels the loss may see; :func:`benchmark_split` gives the
masks of a published protocol (``"digits-lds"``, the field's split of the digits).

Modules: ``_registry`` (the registry and the dispatch), ``_dataset`` (the return type), ``_digits``,
``_generated`` (synthetic, nuisance-shapes), ``_stamps`` (the digits with label-free stamps), ``_fashion`` (IDX files, Fashion-MNIST), ``_folder``
(a folder, eager or lazy), ``_sources`` (image sources), ``_masks`` (labels and masks), ``_splits``
(stratified subsets, benchmark splits), ``_normalize`` (per-channel standardisation).
"""
from __future__ import annotations

from ._masks import check_every_class_labelled, check_labels, label_masks
from ._dataset import Dataset
from ._registry import (DatasetSpec, dataset_spec, dataset_specs, list_datasets, load_dataset, open_dataset,
                        register_dataset)
from ._sources import ImageSource, TensorImages, as_image_source
from ._splits import BENCHMARK_SPLITS, FIELD_SEEDS, TEN_SEEDS, benchmark_data, benchmark_split, stratified_subset
from ._normalize import image_mean_std, normalize_images
# the built-in data sets register themselves on import
from ._digits import load_digits
from ._generated import (NUISANCE_KINDS, NUISANCE_SHAPE_AREAS, NUISANCE_SHAPES, make_nuisance_shapes,
                         make_synthetic)
from ._stamps import make_digits_stamps
from ._generated import _hsv_palette, _shape_mask  # noqa: F401 - tests of the shapes read them here
from ._fashion import (FASHION_MNIST_CLASSES, FASHION_MNIST_DEBIAN_DIR, FASHION_MNIST_ENV, fashion_mnist_dir,
                       load_fashion_mnist, read_idx)
from ._folder import IMAGE_EXTENSIONS, ImageFolderSource, ImageReadError, load_image_folder

#: The built-in names accepted by :func:`load_dataset` besides a folder path (:func:`list_datasets`
#: also lists the ones registered later).
DATASETS = tuple(list_datasets())

__all__ = [
    "Dataset", "make_digits_stamps", "benchmark_data",
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "DatasetSpec",
    "register_dataset",
    "list_datasets",
    "dataset_spec",
    "dataset_specs",
    "load_dataset",
    "open_dataset",
    "load_digits",
    "make_synthetic",
    "make_nuisance_shapes",
    "NUISANCE_SHAPES",
    "NUISANCE_KINDS",
    "NUISANCE_SHAPE_AREAS",
    "load_image_folder",
    "ImageReadError",
    "label_masks",
    "check_labels",
    "read_idx",
    "load_fashion_mnist",
    "fashion_mnist_dir",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DEBIAN_DIR",
    "FASHION_MNIST_ENV",
    "stratified_subset",
    "benchmark_split",
    "BENCHMARK_SPLITS",
    "FIELD_SEEDS",
    "TEN_SEEDS",
    "ImageSource",
    "TensorImages",
    "ImageFolderSource",
    "as_image_source",
    "check_every_class_labelled",
    "image_mean_std",
    "normalize_images",
]
