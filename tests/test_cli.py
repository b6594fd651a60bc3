"""python -m bgcn: train writes metrics + checkpoint, --help documents defaults, bad flags are one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bgcn.cli import build_parser, main
from bgcn.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one thread is faster


def _small(epochs: int = 3) -> list[str]:
    return ["train", "--dataset", "synthetic", "--synthetic-n", "100", "--backbone", "mlp_digits", "--k", "5",
            "--labels-per-class", "3", "--epochs", str(epochs), "--device", "cpu", "--no-progress"]


SMALL = _small()


@pytest.mark.slow
def test_train_writes_metrics_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(SMALL + ["--mode", "end2end", "--tau", "auto", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ("config", "versions", "seed", "final", "test_acc_at_best_val", "best_epoch", "timings", "history"):
        assert key in m, key
    assert {"python", "torch", "bgcn"} <= set(m["versions"])
    assert m["config"]["mode"] == "end2end" and m["config"]["estimator"] == "softmax"
    assert 0 < m["config"]["tau"] < 1  # 'auto' chose a temperature from the data
    assert len(m["history"]["loss"]) == 3 and m["timings"]["per_epoch"] > 0
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["epoch"] == 3
    # --resume with more epochs continues from epoch 3
    assert main(_small(5) + ["--mode", "end2end", "--tau", str(m["config"]["tau"]), "--out", str(out), "--resume"]) == 0
    m2 = json.loads((out / "metrics.json").read_text())
    assert m2["history"]["loss"][:3] == m["history"]["loss"] and len(m2["history"]["loss"]) == 5
    assert "metrics.json" in capsys.readouterr().out


def test_help_documents_every_flag_with_default():
    p = build_parser()
    sub = p._subparsers._group_actions[0].choices  # noqa: SLF001
    for name in ("train", "experiment"):
        text = sub[name].format_help()
        for action in sub[name]._actions:  # noqa: SLF001
            if action.option_strings and action.dest != "help":
                assert action.option_strings[0] in text
                assert action.help, f"{name} {action.option_strings[0]} has no help"
        assert "(default:" in text
    text = " ".join(sub["train"].format_help().split())
    for flag, default in (("--k", "10"), ("--tau", "auto"), ("--backbone", "mlp_digits"), ("--mode", "end2end"), ("--lr-gcn", "0.01"),
                          ("--device", "auto"), ("--labels-per-class", "10"), ("--estimator", "softmax"),
                          ("--warmup-epochs", "auto"), ("--lr-backbone", "auto")):
        assert flag in text and f"(default: {default})" in text


@pytest.mark.parametrize("args,flag", [
    (["--k", "0"], "--k"),
    (["--k", "ten"], "--k"),
    (["--tau", "-1"], "--tau"),
    (["--tau", "hot"], "--tau"),
    (["--mode", "joint"], "--mode"),
    (["--estimator", "sofmax"], "--estimator"),
    (["--lr-gcn", "0"], "--lr-gcn"),
    (["--epochs", "-3"], "--epochs"),
    (["--dropout", "1.5"], "--dropout"),
    (["--bogus-flag"], "--bogus-flag"),
])
def test_bad_flags_exit_2_naming_the_flag(args, flag, capsys):
    with pytest.raises(SystemExit) as ei:
        main(["train"] + args)
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "error:" in err and "Traceback" not in err


def test_library_errors_become_one_line(tmp_path, capsys):
    # k larger than the number of images: the library's ValueError, printed without a traceback
    code = main(["train", "--dataset", "synthetic", "--synthetic-n", "40", "--backbone", "mlp_digits", "--k", "500",
                 "--labels-per-class", "1", "--epochs", "1", "--device", "cpu", "--no-progress",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "error:" in err and "k=500" in err and "Traceback" not in err
    code = main(SMALL + ["--pretrained-file", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "r2")])
    err = capsys.readouterr().err
    assert code == 2 and "nope.pt" in err


@pytest.mark.slow
def test_cli_subprocess_bad_flag_no_traceback():
    r = subprocess.run([sys.executable, "-m", "bgcn", "train", "--k", "0"], capture_output=True, text=True,
                       env=_env(), cwd=ROOT, timeout=120)
    assert r.returncode == 2
    assert "--k" in r.stderr and "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1, r.stderr


@pytest.mark.slow
def test_quick_experiment_runs_the_quick_settings(tmp_path):
    from bgcn.experiment import QUICK

    cmd = [sys.executable, "-m", "bgcn", "experiment", "--quick", "--out", str(tmp_path), "--threads", "1"]
    r = subprocess.run(cmd,
                       capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "experiment.json").read_text())
    methods = {row["method"] for row in res["summary"]}
    assert {"knn", "label_spreading", "frozen", "frozen_random", "end2end_features", "end2end_softmax_tau1",
            "end2end_softmax_taudata", "end2end_masked_softmax", "end2end_values"} <= methods
    assert all(0 <= row["test_acc_mean"] <= 1 for row in res["summary"])
    # --quick is the small version: 400 images, QUICK's epochs and labels, one run per row and seed
    cfg = res["config"]
    assert cfg["quick"] is True and cfg["num_images"] == QUICK["max_images"] == 400
    assert cfg["epochs"] == QUICK["epochs"] and cfg["labels_per_class"] == QUICK["labels_per_class"]
    pairs = [(run["method"], run["seed"]) for run in res["runs"]]
    assert len(pairs) == len(set(pairs)) and {s for _, s in pairs} == set(range(QUICK["seeds"]))
    md = (tmp_path / "results.md").read_text()
    assert "| method |" in md and "± " in md
    assert (tmp_path / "results.csv").read_text().startswith("method,labels_per_class")
    assert (tmp_path / "pretrained_mlp_digits.pt").is_file()


def test_experiment_resume_skips_finished_pairs(tmp_path, monkeypatch):
    """An interrupted experiment continues from experiment.partial.json with the same numbers."""
    import bgcn.experiment as ex

    kw = dict(out=tmp_path, quick=True, seeds=2, methods=["knn", "frozen"], epochs=2, progress=False)
    full = ex.run_experiment(**{**kw, "out": tmp_path / "full"})
    real = ex._sk_baselines
    calls = []

    def boom(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ex, "_sk_baselines", boom)
    with pytest.raises(KeyboardInterrupt):
        ex.run_experiment(**kw)
    assert (tmp_path / "experiment.partial.json").is_file()
    monkeypatch.setattr(ex, "_sk_baselines", real)
    calls.clear()
    res = ex.run_experiment(**kw, resume=True)
    assert not (tmp_path / "experiment.partial.json").exists()
    assert [(r["method"], r["seed"], r["test_acc"]) for r in res["runs"]] == \
        [(r["method"], r["seed"], r["test_acc"]) for r in full["runs"]]


def test_estimators_subcommand_delegates(capsys):
    with pytest.raises(SystemExit) as e:
        main(["estimators", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "selection estimators" in out and "--quick" in out
    main_help = build_parser().format_help()
    assert "estimators" in main_help


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    """One 2-epoch run with --out, for the resume tests."""
    out = tmp_path_factory.mktemp("resume") / "run"
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_small(2) + ["--tau", "0.1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(old)
    return out


@pytest.mark.parametrize("flag,value,key", [
    ("--hidden", "32", "hidden"),
    ("--dropout", "0.1", "dropout"),
    ("--backbone", "cnn_digits", "backbone"),
    ("--labels-per-class", "4", "labels_per_class"),
    ("--val-per-class", "1", "val_per_class"),
])
def test_resume_with_a_changed_setting_is_refused_naming_it(two_epoch_run, flag, value, key, capsys):
    """--resume after changing a setting that defines the run: exit 2 naming it, no traceback, and the
    checkpoint is left as it was (not a load_state_dict crash, not two runs mixed)."""
    before = (two_epoch_run / "checkpoint.pt").read_bytes()
    args = _small(4) + ["--tau", "0.1", "--out", str(two_epoch_run), "--resume"]
    i = args.index(flag) if flag in args else None
    if i is None:
        args += [flag, value]
    else:
        args[i + 1] = value
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "error:" in err and "Traceback" not in err
    error = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(error) == 1 and key in error[0] and "resume" in error[0], err
    assert (two_epoch_run / "checkpoint.pt").read_bytes() == before
    assert load_checkpoint(two_epoch_run / "checkpoint.pt")["epoch"] == 2


def test_every_setting_that_defines_a_run_is_in_its_config(two_epoch_run):
    cfg = load_checkpoint(two_epoch_run / "checkpoint.pt")["config"]
    for key in ("dataset", "synthetic_n", "backbone", "backbone_kwargs", "pretrained_file", "hidden", "dropout",
                "labels_per_class", "val_per_class", "num_classes", "image_shape", "class_names",
                "mode", "k", "estimator", "tau", "seed", "warmup_epochs", "lr_backbone", "lr_gcn"):
        assert key in cfg, key
    assert cfg["hidden"] == 64 and cfg["backbone"] == "mlp_digits" and cfg["synthetic_n"] == 100
    assert cfg["backbone_kwargs"] == {"in_chans": 1, "img_size": 8} and cfg["image_shape"] == [1, 8, 8]


def test_auto_warmup_is_a_quarter_of_epochs_and_kept_on_resume(tmp_path):
    out = tmp_path / "run"
    assert main(_small(8) + ["--tau", "0.1", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["warmup_epochs"] == 2 and m["warmup_arg"] == "auto"
    # a longer --epochs on --resume continues the same run: the warm-up stays the checkpoint's
    assert main(_small(12) + ["--tau", "0.1", "--out", str(out), "--resume"]) == 0
    m2 = json.loads((out / "metrics.json").read_text())
    assert m2["config"]["warmup_epochs"] == 2 and len(m2["history"]["loss"]) == 12
    assert m2["history"]["loss"][:8] == m["history"]["loss"]
    # frozen has no warm-up; an explicit value is taken as it is
    assert main(_small(4) + ["--mode", "frozen", "--tau", "0.1", "--out", str(tmp_path / "f")]) == 0
    assert json.loads((tmp_path / "f" / "metrics.json").read_text())["config"]["warmup_epochs"] == 0
    assert main(_small(4) + ["--warmup-epochs", "3", "--tau", "0.1", "--out", str(tmp_path / "w")]) == 0
    assert json.loads((tmp_path / "w" / "metrics.json").read_text())["config"]["warmup_epochs"] == 3


def test_auto_lr_backbone_depends_on_pretrained_file(tmp_path):
    from bgcn.backbone import create_backbone, save_backbone_weights
    from bgcn.cli import LR_BACKBONE_PRETRAINED, LR_BACKBONE_RANDOM

    assert main(_small(2) + ["--tau", "0.1", "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["config"]["lr_backbone"] == LR_BACKBONE_RANDOM
    w = save_backbone_weights(create_backbone("mlp_digits"), tmp_path / "w.pt")
    assert main(_small(2) + ["--tau", "0.1", "--pretrained-file", str(w), "--out", str(tmp_path / "b")]) == 0
    cfg = json.loads((tmp_path / "b" / "metrics.json").read_text())["config"]
    assert cfg["lr_backbone"] == LR_BACKBONE_PRETRAINED and cfg["pretrained_file"] == str(w)
    assert main(_small(2) + ["--tau", "0.1", "--lr-backbone", "5e-4", "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["config"]["lr_backbone"] == 5e-4


def test_cli_trains_on_nuisance_shapes(tmp_path):
    args = ["train", "--dataset", "nuisance-shapes", "--synthetic-n", "80", "--backbone", "mlp_digits", "--k", "4",
            "--labels-per-class", "5", "--epochs", "2", "--device", "cpu", "--no-progress", "--mode", "frozen",
            "--out", str(tmp_path / "n")]
    assert main(args) == 0
    m = json.loads((tmp_path / "n" / "metrics.json").read_text())
    assert m["config"]["synthetic_n"] == 80 and m["config"]["image_shape"] == [3, 32, 32]
