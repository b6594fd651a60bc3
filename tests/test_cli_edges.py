"""python -m bgcn train at its edges (issue 15): what a demanding user tries, each refused in one line.

- a corrupt image read in DataLoader workers (--num-workers 2) names the file;
- a flag of one engine given to the other (--bank-refresh, --cache-neighbours, --num-workers without
  --batch-size; --graph-every, --amp with it) exits 2 naming the flag and the fix;
- a new run into an --out that holds a checkpoint, without --resume, is refused (--overwrite replaces);
- a data-set flag given to a data set that does not take it is refused; a data set registered in
  bgcn.data trains from the command line with no change to the CLI.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bgcn.cli import main
from bgcn.data import DATASETS, Dataset, make_synthetic, register_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(args, capsys):
    """``main(["train", *args])`` in-process; (exit status, the error lines of stderr)."""
    try:
        code = main(["train", *args])
    except SystemExit as e:  # argparse errors
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, [ln for ln in err.splitlines() if "error:" in ln]


def _tiny(out, epochs: int = 1) -> list[str]:
    return ["--dataset", "synthetic", "--synthetic-n", "60", "--backbone", "mlp_digits", "--k", "3",
            "--labels-per-class", "2", "--epochs", str(epochs), "--device", "cpu", "--no-progress", "--tau", "0.1",
            "--mode", "frozen", "--out", str(out)]


def _png_folder(root, corrupt: str | None = None):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "owl"]):
        (root / name).mkdir(parents=True)
        for i in range(6):
            a = (rng.integers(0, 80, size=(8, 8)) + 60 * c).astype(np.uint8)
            Image.fromarray(a).save(root / name / f"{i:03d}.png")
    if corrupt:
        (root / corrupt).write_bytes(b"this is not an image")
    return root


# ------------------------------------------------------------------ (3) a corrupt image in a worker
def test_corrupt_image_in_a_dataloader_worker_names_the_file(tmp_path, capsys):
    folder = _png_folder(tmp_path / "imgs", corrupt="dog/003.png")
    args = ["--dataset", str(folder), "--backbone", "mlp_digits", "--k", "3", "--labels-per-class", "2",
            "--val-per-class", "2", "--epochs", "1", "--device", "cpu", "--no-progress", "--tau", "0.1",
            "--batch-size", "6", "--num-workers", "2", "--out", str(tmp_path / "run")]
    code, errors = _run(args, capsys)
    assert code == 2 and len(errors) == 1, errors
    assert str(folder / "dog" / "003.png") in errors[0] and "DataLoader worker" in errors[0]
    assert not (tmp_path / "run" / "metrics.json").exists()


# ------------------------------------------------------------------ (4) flags of the other engine
@pytest.mark.parametrize("flag", [["--bank-refresh", "2"], ["--cache-neighbours"], ["--num-workers", "2"]])
def test_minibatch_flags_without_batch_size_are_refused(flag, tmp_path, capsys):
    code, errors = _run(_tiny(tmp_path / "r") + flag, capsys)
    assert code == 2 and len(errors) == 1
    assert flag[0] in errors[0] and "--batch-size" in errors[0] and "mini-batch" in errors[0]
    assert not (tmp_path / "r").exists()  # refused before anything was written


@pytest.mark.parametrize("flag", [["--graph-every", "2"], ["--amp"]])
def test_full_batch_flags_with_batch_size_are_refused(flag, tmp_path, capsys):
    code, errors = _run(_tiny(tmp_path / "r") + ["--batch-size", "16"] + flag, capsys)
    assert code == 2 and len(errors) == 1
    assert flag[0] in errors[0] and "--batch-size 0" in errors[0]
    assert not (tmp_path / "r").exists()


def test_engine_flags_at_their_defaults_pass_and_are_recorded(tmp_path, capsys):
    # the same flags with their own engine run, and metrics.json records what was given
    out = tmp_path / "mb"
    code, _ = _run(_tiny(out) + ["--batch-size", "16", "--bank-refresh", "2", "--cache-neighbours",
                                 "--num-workers", "0"], capsys)
    assert code == 0
    tc = json.loads((out / "metrics.json").read_text())["train_config"]
    assert tc["bank_refresh"] == 2 and tc["cache_neighbours"] is True and tc["batch_size"] == 16


# ------------------------------------------------------------------ (8) an --out that holds a checkpoint
def test_a_new_run_into_an_out_with_a_checkpoint_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"an earlier run's checkpoint")
    code, errors = _run(_tiny(out), capsys)
    assert code == 2 and len(errors) == 1
    assert "--resume" in errors[0] and "--overwrite" in errors[0] and "checkpoint" in errors[0]
    assert (out / "checkpoint.pt").read_bytes() == b"an earlier run's checkpoint"
    # --overwrite replaces it with the new run's
    code, _ = _run(_tiny(out) + ["--overwrite"], capsys)
    assert code == 0 and (out / "checkpoint.pt").read_bytes() != b"an earlier run's checkpoint"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_resume_and_overwrite_exclude_each_other(tmp_path, capsys):
    code, errors = _run(_tiny(tmp_path / "r") + ["--resume", "--overwrite"], capsys)
    assert code == 2 and "--overwrite" in errors[0] and "--resume" in errors[0]


def test_an_out_without_a_checkpoint_needs_no_flag(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _ = _run(_tiny(out), capsys)
    assert code == 0 and (out / "checkpoint.pt").is_file() and (out / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------ data-set flags, from the registry
@pytest.mark.parametrize("dataset,flag", [("digits", ["--synthetic-n", "50"]), ("synthetic", ["--split", "test"]),
                                          ("digits", ["--image-size", "16"]), ("nuisance-shapes", ["--subset", "40"]),
                                          ("synthetic", ["--data-dir", "/tmp"])])
def test_a_data_set_flag_the_data_set_does_not_take_is_refused(dataset, flag, tmp_path, capsys):
    args = _tiny(tmp_path / "r")
    args[args.index("--dataset") + 1] = dataset
    if dataset != "synthetic":
        i = args.index("--synthetic-n")
        del args[i:i + 2]
    code, errors = _run(args + flag, capsys)
    assert code == 2 and len(errors) == 1 and flag[0] in errors[0] and dataset in errors[0]


def test_a_registered_data_set_trains_from_the_command_line_unchanged(tmp_path, capsys):
    """A new data set is one registered function: its flags reach it, no CLI edit needed."""
    from bgcn.data import _registry  # noqa: PLC2701 - the test removes what it registered

    seen = {}

    @register_dataset("edge-test-blobs", cli_options={"n": "--synthetic-n", "seed": "--seed"})
    def blobs(n: int = 30, seed: int = 0) -> Dataset:
        seen.update(n=n, seed=seed)
        ds = make_synthetic(n=n, num_classes=3, seed=seed)
        return Dataset(ds.images, ds.labels, ["a", "b", "c"], "edge-test-blobs")

    try:
        assert "edge-test-blobs" not in DATASETS  # the built-in tuple is fixed; the registry is not
        out = tmp_path / "blobs"
        args = _tiny(out)
        args[args.index("--dataset") + 1] = "edge_test_blobs"  # "_" and "-" are one
        args[args.index("--synthetic-n") + 1] = "45"
        code, errors = _run(args + ["--seed", "3"], capsys)
        assert code == 0, errors
        assert seen == {"n": 45, "seed": 3}
        cfg = json.loads((out / "metrics.json").read_text())["config"]
        assert cfg["class_names"] == ["a", "b", "c"] and cfg["synthetic_n"] == 45 and cfg["subset"] is None
        # a flag it did not claim is refused naming it
        code, errors = _run(_tiny(tmp_path / "x") + ["--subset", "9"], capsys)
        assert code == 2 and "--subset" in errors[0]
    finally:
        _registry._REGISTRY.pop("edge-test-blobs", None)  # noqa: SLF001
