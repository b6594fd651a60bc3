"""python -m bgcn train --batch-size B: the mini-batch engine from the command line."""
from __future__ import annotations

import json

import pytest

from bgcn.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["train", "--dataset", "synthetic", "--synthetic-n", "120", "--backbone", "mlp_digits", "--k", "5",
         "--labels-per-class", "5", "--epochs", "3", "--device", "cpu", "--no-progress",
         "--estimator", "masked_softmax"]


def test_batch_size_trains_and_records_throughput(tmp_path):
    out = tmp_path / "mb"
    assert main(SMALL + ["--batch-size", "32", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["batch_size"] == 32 and m["timings"]["images_per_s"] > 0
    assert m["checkpoint"] is None and not (out / "checkpoint.pt").exists()
    assert len(m["history"]["loss"]) == 3


def test_batch_size_refuses_resume_and_amp(tmp_path, capsys):
    for flag in ("--resume", "--amp"):
        code = main(SMALL + ["--batch-size", "32", flag, "--out", str(tmp_path / flag.strip("-"))])
        err = capsys.readouterr().err
        assert code == 2 and flag in err and "--batch-size" in err and "Traceback" not in err
