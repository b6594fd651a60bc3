"""Chapter 14 (chapters/14_own_images.md): the claims of the own-images page that can fail.

- the folder the page writes loads with the classes, counts and pixels the page says;
- every command the page runs or shows parses with ``python -m bgcn train``'s parser, and every
  ``--option`` on the page exists; the resume command is the end-to-end command with more epochs;
- ``bgcn.label_masks`` with the run's settings is the split the command line draws;
- the bank engine takes exactly the estimators the page names; ``identity_linear`` / ``identity_diag``
  hold D × D / D weights;
- :func:`bgcn.train.load_metrics` reads what a run writes; :func:`bgcn.experiments.propagation.propagate_labels`
  reads only the training labels and is the field's ``laplace`` row.
"""
from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

import bgcn
from bgcn.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "chapters" / "14_own_images.md"
CELL_RE = re.compile(r"```\{code-cell\} ipython3\n(.*?)```", re.S)
SH_RE = re.compile(r"\bsh\(((?:\s*\"[^\"]*\")+)\s*\)")
TORCHRUN_FLAGS = {"--standalone", "--nproc-per-node"}


def page() -> str:
    return PAGE.read_text(encoding="utf-8")


def run_commands() -> list[str]:
    """The commands the page runs: the string literals of every ``sh("..." "...")`` call, joined."""
    return ["".join(re.findall(r"\"([^\"]*)\"", m.group(1))) for m in SH_RE.finditer(page())]


def shown_commands() -> list[str]:
    """The commands of the page's ```bash blocks (continuation lines joined)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", page(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.strip().startswith(("for ", "done")):
                out.append(line.strip())
    return out


def train_argv(command: str) -> list[str]:
    argv = shlex.split(command.replace("$s", "0"))  # the exercise's loop variable
    if argv[0] == "torchrun":
        argv = argv[argv.index("bgcn") + 1:]
    else:
        assert argv[:3] == ["python", "-m", "bgcn"], command
        argv = argv[3:]
    assert argv[0] == "train", command
    # the parser checks that the device exists: --device cuda is parsed as cpu on a machine without one
    if "--device" in argv and not torch.cuda.is_available():
        argv[argv.index("--device") + 1] = "cpu"
    return argv


def write_folder(work: Path) -> dict:
    """Run the page's folder-writing cell (the one that saves PNGs) with ``work`` given."""
    (cell,) = [c for c in CELL_RE.findall(page()) if ".save(folder" in c]
    ns = {"work_dir": work}
    code = cell.replace("work = Path(tempfile.mkdtemp())", "work = work_dir")
    exec(compile(code, str(PAGE), "exec"), ns)  # noqa: S102 - our own page
    return ns


def test_the_page_folder_loads_with_the_classes_the_page_names(tmp_path, capsys):
    ns = write_folder(tmp_path)
    printed = capsys.readouterr().out
    ds = bgcn.load_dataset(tmp_path / "my_images")
    # the sorted folder names, so class 0 is "eight", as the page says
    assert ds.class_names == ["eight", "five", "nine", "three"]
    assert torch.bincount(ds.labels).tolist() == [50, 50, 50, 50]
    assert tuple(ds.images.shape) == (200, 3, 8, 8)  # grey PNGs read as three channels
    assert "25 of them in nine/more/" in printed and (tmp_path / "my_images/nine/notes.txt").is_file()
    # the pixels are the digits' own, in the loader's order (class, then path inside the class)
    digits = ns["digits"]
    for c, (name, digit) in enumerate(zip(ds.class_names, (8, 5, 9, 3))):
        mine = ds.images[ds.labels == c][:, 0]
        picked = np.flatnonzero(digits.target == digit)[:50]
        files = sorted((tmp_path / "my_images" / name).rglob("*.png"),
                       key=lambda f: f.relative_to(tmp_path).parts)
        order = [int(f.stem[-4:]) for f in files]
        assert sorted(order) == sorted(picked.tolist())
        ref = torch.as_tensor(digits.images[order] / 16, dtype=torch.float32)
        assert (mine - ref).abs().max().item() <= 0.5 / 255 + 1e-7


def test_every_command_on_the_page_parses_with_train():
    runs, shown = run_commands(), shown_commands()
    assert len(runs) == 3 and len(shown) >= 6
    parser = build_parser()
    for command in runs + shown:
        args = parser.parse_args(train_argv(command))
        assert args.command == "train" and args.dataset == "my_images", command
    for command in runs:  # the commands the page runs use only the options they show
        assert shlex.split(command)[:5] == ["python", "-m", "bgcn", "train", "--dataset"]


def test_every_option_on_the_page_exists():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    train = sub.choices["train"]
    options = {o for a in train._actions for o in a.option_strings}
    used = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", page()))
    assert used, "no --option on the page"
    missing = sorted(used - options - TORCHRUN_FLAGS)
    assert not missing, f"options on chapters/14_own_images.md that `python -m bgcn train` lacks: {missing}"


def test_resume_command_is_the_end_to_end_command_with_more_epochs():
    frozen, e2e, resume = (train_argv(c) for c in run_commands())
    assert "--resume" in resume and "--resume" not in e2e
    parser = build_parser()
    a, b = vars(parser.parse_args(e2e)), vars(parser.parse_args(resume))
    differ = {k for k in a if a[k] != b[k]}
    assert differ == {"epochs", "resume"} and b["epochs"] > a["epochs"]
    assert a["warmup_epochs"] != "auto"  # a fixed warm-up, so the resumed run keeps it
    f = vars(parser.parse_args(frozen))
    assert f["mode"] == "frozen" and f["backbone"] == "pixels" and a["mode"] == "end2end"
    assert a["backbone"] == "identity_linear"


def test_label_masks_give_the_split_the_command_line_draws(tmp_path):
    from bgcn.cli._train import _masks

    write_folder(tmp_path)
    ds = bgcn.load_dataset(tmp_path / "my_images")
    args = build_parser().parse_args(["train", "--dataset", str(tmp_path / "my_images"),
                                      "--labels-per-class", "5", "--val-per-class", "10"])
    cli = _masks(args, ds)
    mine = bgcn.label_masks(ds.labels, 5, 10, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(cli, mine))
    assert [int(m.sum()) for m in mine] == [20, 40, 140]


def test_bank_estimators_and_identity_extractor_sizes_are_as_the_page_says():
    from bgcn.bank import BANK_ESTIMATORS

    assert set(BANK_ESTIMATORS) == {"hard", "values", "softmax", "masked_softmax"}
    assert not {"blackbox", "ste"} & set(BANK_ESTIMATORS)
    d = 3 * 8 * 8
    lin = bgcn.create_backbone("identity_linear", in_chans=3, img_size=8)
    diag = bgcn.create_backbone("identity_diag", in_chans=3, img_size=8)
    weights = [p for p in lin.parameters() if p.dim() == 2]
    assert [tuple(w.shape) for w in weights] == [(d, d)]
    assert sum(p.numel() for p in diag.parameters()) == d


# -- bgcn.train.load_metrics --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A real (tiny) `python -m bgcn train` run on a folder, in process."""
    from bgcn.cli import main

    work = tmp_path_factory.mktemp("own")
    write_folder(work)
    out = work / "runs" / "e2e"
    rc = main(["train", "--dataset", str(work / "my_images"), "--labels-per-class", "2",
               "--val-per-class", "2", "--backbone", "identity_diag", "--mode", "end2end",
               "--estimator", "softmax", "--hidden", "8", "--epochs", "6", "--warmup-epochs", "3",
               "--threads", "1", "--no-progress", "--out", str(out)])
    assert rc == 0
    return out


def test_load_metrics_reads_a_run(small_run):
    from bgcn.train import History, load_metrics

    m = load_metrics(small_run)
    same = load_metrics(small_run / "metrics.json")  # the file itself, or its --out folder
    assert same["best_epoch"] == m["best_epoch"] and same["history"].loss == m["history"].loss
    raw = json.loads((small_run / "metrics.json").read_text())
    h = m["history"]
    assert isinstance(h, History) and len(h) == m["epochs_run"] == 6
    assert h.epoch == list(range(1, 7)) and h.initial == raw["history"]["initial"]
    assert m["test_acc_at_best_val"] == h.test_acc[m["best_epoch"] - 1]
    assert m["warmup"]["epoch"] == 3 and m["best_epoch"] > 3  # chosen among the joint epochs
    assert m["config"]["class_names"] == ["eight", "five", "nine", "three"]
    for key in ("command", "train_config", "final", "timings", "gain_over_warmup", "versions"):
        assert key in m
    # a NaN is written as null and read back as nan
    assert all(v is None for v in raw["history"]["grad_backbone_node"])
    assert all(math.isnan(v) for v in h.grad_backbone_node)
    assert bgcn.TrainConfig.from_dict(m["train_config"]).epochs == 6


def test_load_metrics_refuses_what_is_not_a_record(tmp_path):
    from bgcn.train import load_metrics
    from bgcn.utils import NotFoundError

    with pytest.raises(NotFoundError, match="no metrics file"):
        load_metrics(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_metrics(tmp_path / "nothing.json")
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"best_epoch": 3}))
    with pytest.raises(ValueError, match="no 'history'"):
        load_metrics(tmp_path / "metrics.json")


# -- bgcn.experiments.propagation.propagate_labels ---------------------------------------------------------
def test_propagate_labels_reads_only_the_training_labels_and_is_the_laplace_row():
    from bgcn.data import benchmark_split
    from bgcn.experiments import field
    from bgcn.experiments.propagation import propagate_labels

    images, labels = bgcn.load_dataset("digits")
    tr, va, te = benchmark_split("digits-lds", 42)
    pred = propagate_labels(images, labels, tr, k=10, metric="angular")
    assert pred.shape == labels.shape and pred.dtype == torch.long
    scrambled = labels.clone()
    perm = torch.randperm(int((~tr).sum()), generator=torch.Generator().manual_seed(0))
    scrambled[~tr] = labels[~tr][perm]
    assert torch.equal(pred, propagate_labels(images, scrambled, tr, k=10, metric="angular"))
    row = next(r for r in field.ROWS if r.name == "laplace")
    run = field.run_row(row, {"k": 10, "metric": "angular"}, 42, images=images, labels=labels)
    assert run["test_acc"] == pytest.approx((pred[te] == labels[te]).double().mean().item(), abs=1e-12)
    assert (pred[te] == labels[te]).double().mean() > 0.9
    poisson = propagate_labels(images.flatten(1), labels, tr, k=10, method="poisson")
    assert (poisson[te] == labels[te]).double().mean() > 0.9


def test_propagate_labels_refuses_bad_input():
    from bgcn.experiments.propagation import propagate_labels

    x, y = torch.rand(20, 4), torch.arange(20) % 2
    tr = torch.zeros(20, dtype=torch.bool)
    with pytest.raises(ValueError, match="selects no node"):
        propagate_labels(x, y, tr, k=3)
    tr[:4] = True
    with pytest.raises(ValueError, match="more than k nodes"):
        propagate_labels(x, y, tr, k=20)
    with pytest.raises(ValueError, match="one entry a node"):
        propagate_labels(x, y[:10], tr, k=3)
    with pytest.raises(ValueError):
        propagate_labels(x, y, tr, k=3, method="heat")
    assert propagate_labels(x, y, tr, k=3).shape == (20,)
