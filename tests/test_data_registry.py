"""The data set registry (bgcn.data.register_dataset, issue 15): a data set is one registered function.

load_dataset / open_dataset dispatch through it, each builder's signature is its list of options,
the command-line flags a data set takes are declared where it is registered (and exist in the CLI),
and a folder read in DataLoader workers names an unreadable file.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import bgcn.data as bd
from bgcn.data import (DATASETS, Dataset, ImageFolderSource, ImageReadError, dataset_spec, dataset_specs,
                       list_datasets, load_dataset, open_dataset, register_dataset)


@pytest.fixture
def scratch_registry():
    """Registers made in a test are removed after it."""
    from bgcn.data import _registry  # noqa: PLC2701

    before = dict(_registry._REGISTRY)  # noqa: SLF001
    yield
    _registry._REGISTRY.clear()  # noqa: SLF001
    _registry._REGISTRY.update(before)  # noqa: SLF001


def test_the_built_in_sets_are_registered():
    assert set(DATASETS) == {"digits", "digits-stamps", "synthetic", "fashion-mnist", "nuisance-shapes"}
    assert set(DATASETS) <= set(list_datasets()) and list_datasets() == sorted(list_datasets())
    assert dataset_spec("digits").builder is bd.load_digits
    assert dataset_spec("Fashion_MNIST").builder is bd.load_fashion_mnist  # case and "_" do not matter
    assert dataset_spec("nuisance_shapes").builder is bd.make_nuisance_shapes
    folder = dataset_spec(Path("anywhere"))
    assert folder.from_path and folder.builder is bd.load_image_folder and folder.source is ImageFolderSource
    assert folder in dataset_specs() and "folder" not in list_datasets()


def test_every_declared_cli_option_is_a_builder_argument_and_a_cli_flag():
    from bgcn.cli import DATASET_FLAGS, build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]  # noqa: SLF001
    flags = {s for a in train._actions for s in a.option_strings}  # noqa: SLF001
    claimed = set()
    for spec in dataset_specs():
        assert set(spec.cli_options) <= set(spec.options), spec.name
        assert set(spec.cli_options.values()) <= flags, spec.name
        claimed |= set(spec.cli_options.values())
    assert set(DATASET_FLAGS) <= claimed  # every data-set flag is some data set's


def test_options_come_from_the_builders_signature():
    assert dataset_spec("synthetic").options == ["n", "num_classes", "image_size", "channels", "noise",
                                                 "max_shift", "seed"]
    assert dataset_spec("digits").options == []
    assert dataset_spec(Path(".")).options == ["image_size", "grayscale"]  # the path is not an option
    with pytest.raises(TypeError, match=r"load_dataset\('digits'\) takes no options, got \['n'\]"):
        load_dataset("digits", n=3)


def test_a_folder_option_it_does_not_take_is_named(tmp_path):
    _png_folder(tmp_path / "f")
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['n'\]; it accepts image_size, grayscale"):
        load_dataset(tmp_path / "f", n=3)
    assert load_dataset(str(tmp_path / "f"), image_size=4).images.shape == (6, 3, 4, 4)


def test_register_load_and_refusals(scratch_registry):
    @register_dataset("Two-Points", cli_options={"n": "--synthetic-n"})
    def two_points(n: int = 4, scale: float = 1.0) -> Dataset:
        x = torch.zeros(n, 1, 2, 2)
        x[::2] = scale
        return Dataset(x, torch.arange(n) % 2, ["dark", "light"], "two-points")

    assert "two-points" in list_datasets() and "two-points" not in DATASETS
    ds = load_dataset("two_points", n=6, scale=0.5)
    assert ds.images.shape == (6, 1, 2, 2) and float(ds.images.max()) == 0.5 and ds.class_names == ["dark", "light"]
    with pytest.raises(TypeError, match=r"\['colour'\]; it accepts n, scale"):
        load_dataset("two-points", colour=1)
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("two_points")(two_points)
    with pytest.raises(ValueError, match=r"cli_options \['size'\].*not arguments"):
        register_dataset("three-points", cli_options={"size": "--image-size"})(two_points)
    with pytest.raises(ValueError, match="folder loader"):
        register_dataset("another-folder", from_path=True)(bd.load_image_folder)
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'.*'two-points'.*folder"):
        load_dataset("nope")


def test_open_dataset_batched_forms(tmp_path):
    # a generated set: the same tensor either way
    ds, images = open_dataset("synthetic", batched=True, n=20, seed=1)
    assert images is ds.images and torch.equal(images, load_dataset("synthetic", n=20, seed=1).images)
    # a folder: read lazily when batched, the same pixels as loaded
    folder = _png_folder(tmp_path / "f")
    src, images = open_dataset(str(folder), batched=True)
    assert isinstance(src, ImageFolderSource) and images is src and src.class_names == ["cat", "dog"]
    full, images_full = open_dataset(folder)
    assert torch.equal(src.take(torch.arange(len(src))), images_full) and torch.equal(src.labels, full.labels)
    # Fashion-MNIST (IDX files written by hand): uint8 when batched, float otherwise; options given win
    data_dir = _fashion_files(tmp_path / "fm")
    _, u8 = open_dataset("fashion-mnist", batched=True, data_dir=data_dir)
    _, f32 = open_dataset("fashion-mnist", data_dir=data_dir)
    _, forced = open_dataset("fashion-mnist", batched=True, data_dir=data_dir, dtype=torch.float64)
    assert u8.dtype == torch.uint8 and f32.dtype == torch.float32 and forced.dtype == torch.float64
    assert torch.equal(u8.float() / 255, f32)
    with pytest.raises(TypeError, match="batched"):
        open_dataset("digits", batched=1)


# ------------------------------------------------------------------ an unreadable file in a worker
def test_image_read_error_rebuilt_from_a_worker_names_the_file():
    original = ImageReadError("could not read image '/data/cat/3.png': broken; fix or remove the file",
                              "/data/cat/3.png")
    assert original.path == "/data/cat/3.png" and str(original).startswith("could not read image")
    # what torch's ExceptionWrapper.reraise passes to the class in the main process
    text = ("Caught ImageReadError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
            '  File "x.py", line 1, in f\nbgcn.data._folder.ImageReadError: could not read image '
            "'/data/cat/3.png': broken; fix or remove the file\n")
    e = ImageReadError(text)
    assert str(e) == ("could not read image '/data/cat/3.png': broken; fix or remove the file "
                      "(in DataLoader worker process 1)")
    assert e.worker_traceback == text and isinstance(e, ValueError)


def test_a_corrupt_file_read_by_loader_workers_is_named(tmp_path):
    folder = _png_folder(tmp_path / "f")
    bad = folder / "dog" / "1.png"
    bad.write_bytes(b"garbage")
    src = ImageFolderSource(folder)
    with pytest.raises(ImageReadError) as ei:
        for _ in src.loader(batch_size=2, num_workers=2):
            pass
    assert str(bad) in str(ei.value).splitlines()[0] and "worker" in str(ei.value)
    with pytest.raises(ImageReadError, match="1.png"):  # in the main process too
        src.take(torch.arange(len(src)))


# ------------------------------------------------------------------ helpers
def _png_folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray((rng.integers(0, 100, (5, 5)) + 100 * c).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def _fashion_files(folder: Path) -> Path:
    """The four Fashion-MNIST IDX files (uint8), 20 training and 10 test images, written by hand."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)

    def idx(arr: np.ndarray) -> bytes:
        return bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()

    for part, n in (("train", 20), ("t10k", 10)):
        (folder / f"{part}-images-idx3-ubyte").write_bytes(idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)))
        (folder / f"{part}-labels-idx1-ubyte").write_bytes(idx((np.arange(n) % 10).astype(np.uint8)))
    return folder


@pytest.mark.parametrize("name", ["synthetic", "fashion-mnist", "nuisance_shapes"])
def test_load_dataset_names_an_unknown_option_and_what_it_accepts(name):
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['bogus'\]; it accepts .*seed"):
        load_dataset(name, bogus=1)
