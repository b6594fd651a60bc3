"""python -m bgcn train --batch-size B: the mini-batch engine from the command line, killed and
resumed, and under torchrun with two processes (the README's command)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from bgcn.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["train", "--dataset", "synthetic", "--synthetic-n", "120", "--backbone", "mlp_digits", "--k", "5",
         "--labels-per-class", "5", "--epochs", "3", "--device", "cpu", "--no-progress",
         "--estimator", "masked_softmax"]


def _epochs(n: int) -> list[str]:
    a = list(SMALL)
    a[a.index("--epochs") + 1] = str(n)
    return a


def test_batch_size_trains_checkpoints_and_records_throughput(tmp_path):
    out = tmp_path / "mb"
    assert main(SMALL + ["--batch-size", "32", "--out", str(out), "--eval-every", "2"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["batch_size"] == 32 and m["images_per_s"] > 0 and m["world_size"] == 1
    assert m["peak_memory_bytes"] is None or m["peak_memory_bytes"] > 0
    assert m["checkpoint"] == str(out / "checkpoint.pt") and (out / "checkpoint.pt").is_file()
    assert len(m["history"]["loss"]) == 3
    assert [v is None for v in m["history"]["val_acc"]] == [True, False, False]  # NaN -> null in JSON


def test_batch_size_resume_continues_the_run(tmp_path):
    out = tmp_path / "mb"
    assert main(SMALL + ["--batch-size", "32", "--out", str(out)]) == 0
    m3 = json.loads((out / "metrics.json").read_text())
    assert main(_epochs(5) + ["--batch-size", "32", "--out", str(out), "--resume"]) == 0
    m5 = json.loads((out / "metrics.json").read_text())
    assert len(m5["history"]["loss"]) == 5 and m5["history"]["loss"][:3] == m3["history"]["loss"]
    straight = tmp_path / "straight"
    assert main(_epochs(5) + ["--batch-size", "32", "--out", str(straight),
                              "--warmup-epochs", str(m3["config"]["warmup_epochs"])]) == 0
    ms = json.loads((straight / "metrics.json").read_text())
    assert ms["history"]["loss"] == m5["history"]["loss"]


def test_batch_size_refuses_amp_and_a_changed_setting(tmp_path, capsys):
    code = main(SMALL + ["--batch-size", "32", "--amp", "--out", str(tmp_path / "amp")])
    err = capsys.readouterr().err
    assert code == 2 and "--amp" in err and "--batch-size" in err and "Traceback" not in err
    out = tmp_path / "mb"
    assert main(SMALL + ["--batch-size", "32", "--out", str(out)]) == 0
    capsys.readouterr()
    code = main(SMALL + ["--batch-size", "16", "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "batch_size" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_torchrun_two_processes_from_the_command_line(tmp_path):
    """``torchrun --nproc-per-node 2 -m bgcn train --device cpu --batch-size B``: rank 0 writes
    metrics.json and the checkpoint; the result equals one process with the same global batch."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    args = [*SMALL[1:], "--batch-size", "40", "--threads", "1", "--dropout", "0"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "bgcn", "train", *args, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote") == 1  # one rank reports
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2 and two["config"]["world_size"] == 2
    assert not list((tmp_path / "two").glob("*.tmp"))
    assert main(["train", *args, "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert two["history"]["loss"] == pytest.approx(one["history"]["loss"], rel=1e-5, abs=1e-6)
    assert two["history"]["val_acc"] == one["history"]["val_acc"]


def _png_folder(root, n_per_class=12, classes=("cat", "dog", "owl")):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            a = rng.integers(0, 80, size=(8, 8), dtype=np.uint8) + 60 * c
            Image.fromarray(a.astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


def test_a_students_folder_is_read_lazily_and_trains_like_the_loaded_tensor(tmp_path):
    from bgcn.data import ImageFolderSource, load_dataset

    folder = _png_folder(tmp_path / "imgs")
    args = ["train", "--dataset", str(folder), "--backbone", "mlp_digits", "--k", "4", "--labels-per-class", "3",
            "--val-per-class", "3", "--epochs", "3", "--device", "cpu", "--no-progress", "--estimator",
            "masked_softmax", "--batch-size", "12", "--tau", "0.1"]
    assert main(args + ["--out", str(tmp_path / "lazy")]) == 0
    assert main(args + ["--out", str(tmp_path / "lazy2"), "--num-workers", "2"]) == 0
    lazy = json.loads((tmp_path / "lazy" / "metrics.json").read_text())
    lazy2 = json.loads((tmp_path / "lazy2" / "metrics.json").read_text())
    assert lazy["config"]["class_names"] == ["cat", "dog", "owl"]
    assert lazy2["history"]["loss"] == lazy["history"]["loss"]  # workers decode, same numbers
    src, ds = ImageFolderSource(folder), load_dataset(str(folder))
    assert torch.equal(src.take(torch.arange(len(src))), ds.images) and torch.equal(src.labels, ds.labels)


def test_dataset_flags_that_do_not_apply_are_refused(tmp_path, capsys):
    code = main(SMALL + ["--subset", "50", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "--subset" in err and "synthetic" in err


def test_seed_softmax_on_a_large_bank_prints_its_cost_first(tmp_path, capsys, monkeypatch):
    import bgcn.cli._train as T

    line = T.softmax_cost_note(1_000_000, 64, 10, torch.device("cpu"))
    assert "N = 1,000,000" in line and "1.2e+13 similarities an epoch" in line and "masked_softmax" in line
    monkeypatch.setattr(T, "SOFTMAX_NOTE_FROM", 100)  # a small bank stands in for a large one
    args = [a for a in SMALL if a not in ("--estimator", "masked_softmax")] + ["--estimator", "softmax"]
    assert main(args + ["--batch-size", "32", "--epochs", "1", "--out", str(tmp_path / "s")]) == 0
    assert "--estimator softmax normalises every row over all N = 120 images" in capsys.readouterr().err
    m = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert m["config"]["index"] == "auto"  # the default: exact at this size
