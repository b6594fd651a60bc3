"""Reading the committed digits comparison of chapter 08 (:func:`bgcn.experiment.run_experiment`).

:func:`load_experiment` reads ``results/experiment.json`` (or a named run) with its summary
recomputed from the runs; :func:`paired_table` and :func:`experiment_findings` give the
seed-paired differences and the numbers the chapter writes its reading from.

Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..experiment import CONTROLS, METHODS, experiment_command, paired_difference, summarize
from .common import results_root

__all__ = ["load_experiment", "paired_table", "experiment_findings"]


def load_experiment(path: str | os.PathLike | None = None, run: str | None = None) -> dict:
    """The committed results of :func:`run_experiment` (plain JSON), with ``"summary"`` recomputed from
    its runs (:func:`summarize`) and ``"command"``, the command line that regenerates it.

    ``path`` is the JSON file; by default ``experiment.json`` in the committed results folder
    (:func:`bgcn.experiments.common.results_root`: the repository's ``results/`` or ``BGCN_RESULTS``),
    or in its sub-folder ``run`` (``run="longer_joint"``: the longer training budget).

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """
    out = "results" if run is None else f"results/{run}"
    if path is None:
        path = results_root() / (run or "") / "experiment.json"
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist: `python -m bgcn experiment --out {out}` "
                                "(about 25 minutes on 2 CPU cores; see results/README.md) writes it")
    res = json.loads(path.read_text())
    cfg = res["config"]
    res["summary"] = summarize(res["runs"], cfg["methods"], cfg["labels_per_class"])
    res["command"] = experiment_command(cfg, out)
    return res


def _end_to_end_rows(methods: Sequence[str]) -> list[str]:
    return [n for n in methods if n in METHODS and METHODS[n][0] != "frozen"]


def paired_table(res: dict, rows: Sequence[str] | None = None, reference: str = "frozen",
                 controls: dict[str, str] | None = None) -> dict:
    """Every end-to-end row minus its reference, paired by seed, for every labels-per-class setting.

    ``res`` is :func:`load_experiment`'s dict; ``rows`` default to its end-to-end rows. A row of
    ``controls`` (default :data:`CONTROLS`) is compared with its own reference (the same random
    extractor frozen), every other row with ``reference``. The table reads
    ``m = len(rows) * len(labels settings)`` differences with the two-standard-error rule of
    :func:`bgcn.stats.paired_difference`, and each cell carries that ``m``.

    Returns ``{"cells": {(row, lpc): PairedDifference}, "comparisons": m, "markdown": str}``; a
    markdown cell reads ``mean ± std (wins/n)`` in points, with ``*`` where the difference counts.

    Shapes: none (lists of dicts, text).

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """
    cfg = res["config"]
    lpcs = list(cfg["labels_per_class"])
    rows = _end_to_end_rows(cfg["methods"]) if rows is None else list(rows)
    controls = CONTROLS if controls is None else controls
    m = len(rows) * len(lpcs)
    lines = ["| row − reference (points) | " + " | ".join(f"{l} labels/class" for l in lpcs) + " |",
             "|---|" + "---:|" * len(lpcs)]
    cells = {}
    for a in rows:
        ref = controls.get(a, reference)
        text = []
        for lpc in lpcs:
            d = paired_difference(res["runs"], a, ref, lpc, comparisons=m)
            cells[(a, lpc)] = d
            star = "*" if d["beyond_noise"] else ""
            text.append(f"{100 * d['mean']:+.1f}{star} ± {100 * d['std']:.1f} ({d['wins']}/{d['n']})")
        lines.append(f"| {a} − {ref} | " + " | ".join(text) + " |")
    return {"cells": cells, "comparisons": m, "markdown": "\n".join(lines)}


def experiment_findings(res: dict, reference: str = "frozen", controls: dict[str, str] | None = None) -> dict:
    """The numbers a reading of one results file quotes, all in points (percent of the test images).

    ``res`` is :func:`load_experiment`'s dict. Returns

    - ``"paired"``: :func:`paired_table`'s dict, and ``"comparisons"`` (its m) and ``"chance"`` (m/20,
      the differences expected to count by chance alone);
    - ``"ahead"`` / ``"behind"``: the (row, labels) cells that count, ahead of / behind their reference;
    - ``"best"`` / ``"worst"``: the cell of a non-control row with the largest / smallest mean paired
      difference, ``{"row", "lpc", "mean", "std", "wins", "n"}``;
    - ``"warmup"``: over every end-to-end run, the best joint epoch minus the same run's warm-up
      model, ``{"mean", "min", "max", "runs"}``;
    - ``"by_row"``: for each end-to-end row, ``diff_min`` / ``diff_max`` (its paired mean over the
      labels settings), ``gain_over_warmup``, ``homophily_change`` (after − before, on the scored
      model) and ``graph_share`` (of the backbone's parameter gradient; None without a graph path),
      means over its runs;
    - ``"test"``: ``{row: {lpc: mean test accuracy}}`` for every row of the file.

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_3_experiment.md).
    """
    controls = CONTROLS if controls is None else controls
    paired = paired_table(res, reference=reference, controls=controls)
    cells = paired["cells"]
    runs = res["runs"]

    def pts(d: dict) -> dict:
        return {"mean": 100 * d["mean"], "std": 100 * d["std"], "wins": d["wins"], "n": d["n"]}

    main = [(a, l) for (a, l) in cells if a not in controls]
    best = max(main, key=lambda t: cells[t]["mean"])
    worst = min(main, key=lambda t: cells[t]["mean"])
    e2e_runs = [r for r in runs if r.get("warmup_epochs") and r.get("gain_over_warmup") is not None]
    gains = 100 * np.array([r["gain_over_warmup"] for r in e2e_runs], dtype=np.float64)
    by_row = {}
    for a in dict.fromkeys(a for a, _ in cells):
        rr = [r for r in runs if r["method"] == a]
        diffs = [100 * cells[(a, l)]["mean"] for (b, l) in cells if b == a]
        share = [r["grad_graph_share"] for r in rr if r.get("grad_graph_share") is not None]
        hom = [100 * (r["homophily_after"] - r["homophily_before"]) for r in rr
               if r.get("homophily_after") is not None and r.get("homophily_before") is not None]
        wg = [100 * r["gain_over_warmup"] for r in rr if r.get("gain_over_warmup") is not None]
        by_row[a] = {"diff_min": min(diffs), "diff_max": max(diffs),
                     "gain_over_warmup": float(np.mean(wg)) if wg else None,
                     "homophily_change": float(np.mean(hom)) if hom else None,
                     "graph_share": float(np.mean(share)) if share else None}
    test: dict[str, dict[int, float]] = {}
    for s in res["summary"]:
        test.setdefault(s["method"], {})[s["labels_per_class"]] = 100 * s["test_acc_mean"]
    return {"paired": paired, "comparisons": paired["comparisons"], "chance": paired["comparisons"] / 20,
            "ahead": [t for t, d in cells.items() if d["beyond_noise"] and d["mean"] > 0],
            "behind": [t for t, d in cells.items() if d["beyond_noise"] and d["mean"] < 0],
            "best": {"row": best[0], "lpc": best[1], **pts(cells[best])},
            "worst": {"row": worst[0], "lpc": worst[1], **pts(cells[worst])},
            "warmup": {"mean": float(gains.mean()) if gains.size else float("nan"),
                       "min": float(gains.min()) if gains.size else float("nan"),
                       "max": float(gains.max()) if gains.size else float("nan"), "runs": int(gains.size)},
            "by_row": by_row, "test": test}
