"""bgcn.experiments (chapter 12): the shared partial/resume helper, the summary, plain fine-tuning,
and a tiny run of the real-extractor table (skipped without Debian's Fashion-MNIST)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bgcn.data import FASHION_MNIST_DEBIAN_DIR
from bgcn.experiments.common import Partial, mean_std, write_atomic
from bgcn.experiments.real import QUICK, ROWS, run_real_experiment, summarize, supervised_finetune

pytestmark = pytest.mark.usefixtures("one_thread")
HAVE_FASHION = any((Path(FASHION_MNIST_DEBIAN_DIR) / f).is_file()
                   for f in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"))


def test_partial_saves_each_run_and_refuses_other_settings(tmp_path):
    p = Partial(tmp_path / "x.partial.json", {"n": 10, "rows": ["a"]}, resume=False)
    p.add({"row": "a", "seed": 0, "test_acc": 0.5})
    assert json.loads((tmp_path / "x.partial.json").read_text())["runs"][0]["test_acc"] == 0.5
    again = Partial(tmp_path / "x.partial.json", {"n": 10, "rows": ["a"]}, resume=True)
    assert again.done(row="a", seed=0)["test_acc"] == 0.5 and again.done(row="a", seed=1) is None
    assert Partial(tmp_path / "x.partial.json", {"n": 10, "rows": ["a"]}, resume=False).runs == []
    with pytest.raises(ValueError, match="settings differ \\(n\\)"):
        Partial(tmp_path / "x.partial.json", {"n": 11, "rows": ["a"]}, resume=True)
    again.finish()
    assert not (tmp_path / "x.partial.json").exists()
    write_atomic(tmp_path / "y.txt", "hello")
    assert (tmp_path / "y.txt").read_text() == "hello" and not list(tmp_path.glob("*.tmp"))


def test_mean_std_and_summary():
    assert mean_std([1.0, 3.0, None, float("nan")]) == (2.0, pytest.approx(2 ** 0.5), 2)
    assert mean_std([0.5]) == (0.5, 0.0, 1)
    runs = [{"row": "frozen", "labels_per_class": 10, "seed": s, "test_acc": a, "time_per_epoch": 1.0,
             "images_per_s": 10.0} for s, a in enumerate((0.6, 0.8))]
    (d,) = summarize(runs, ["frozen", "finetune"], [10])
    assert d["seeds"] == 2 and d["test_acc"] == pytest.approx(0.7) and d["test_acc_std"] == pytest.approx(0.1414, 1e-3)


def test_supervised_finetune_learns_a_separable_task():
    """Two classes that differ in brightness: fine-tuning a small backbone + linear head fits them."""
    from bgcn.backbone import create_backbone

    g = torch.Generator().manual_seed(0)
    y = torch.arange(80) % 2
    x = (0.3 + 0.4 * y.float()).view(-1, 1, 1, 1) + 0.05 * torch.randn(80, 1, 8, 8, generator=g)
    tr = torch.zeros(80, dtype=torch.bool)
    tr[:20] = True
    va = torch.zeros(80, dtype=torch.bool)
    va[20:40] = True
    te = ~(tr | va)
    torch.manual_seed(0)
    r = supervised_finetune(create_backbone("mlp_digits"), x.clamp(0, 1), y, tr, va, te, epochs=15,
                            lr_backbone=1e-3, lr_head=5e-2, batch_size=10)
    assert r["test_acc"] > 0.9 and 1 <= r["best_epoch"] <= 15 and r["images_per_s"] > 0


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="dataset"):
        run_real_experiment("cifar", out=tmp_path)
    with pytest.raises(ValueError, match="unknown rows"):
        run_real_experiment("fashion-mnist", out=tmp_path, rows=["nope"])
    with pytest.raises(ValueError, match="warmup_epochs"):
        run_real_experiment("fashion-mnist", out=tmp_path, epochs=3, warmup_epochs=3)
    assert set(QUICK["rows"]) <= set(ROWS)


@pytest.mark.skipif(not HAVE_FASHION, reason="Debian's dataset-fashion-mnist is not installed "
                                               "(apt-get install dataset-fashion-mnist)")
def test_a_tiny_real_run_writes_the_table_and_resumes(tmp_path):
    kw = dict(out=tmp_path, quick=True, n=150, rows=["knn", "frozen"], epochs=2, warmup_epochs=1, batch_size=30, progress=False)
    res = run_real_experiment("fashion-mnist", **kw)
    assert (tmp_path / "fashion-mnist.json").is_file() and (tmp_path / "fashion-mnist.md").is_file()
    assert not (tmp_path / "fashion-mnist.partial.json").exists()
    rows = {d["row"]: d for d in res["summary"]}
    assert set(rows) == {"knn", "frozen"} and all(0.0 <= d["test_acc"] <= 1.0 for d in rows.values())
    assert 0.0 <= rows["frozen"]["homophily_before"] <= 1.0 and rows["frozen"]["time_per_epoch"] > 0
    assert "| 5 | frozen |" in res["table_md"]


def test_only_seeds_is_checked_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="only_seeds"):
        run_real_experiment("fashion-mnist", out=tmp_path, quick=True, only_seeds=[9])
    assert not list(tmp_path.iterdir())  # nothing was loaded or written
