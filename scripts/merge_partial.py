"""Append the runs of other experiment outputs to a partial file (chapter 12's one-process-per-seed runs).

    python scripts/merge_partial.py results/real/fashion-mnist.partial.json results/real_seed2/fashion-mnist.json

Each source is a partial file or a finished JSON of `python -m bgcn experiment --dataset ...`
with the same settings apart from which seeds it ran; runs already in the target (same row, seed
and labels per class) are not added twice. Then `... experiment --resume` writes the table.
The merge itself is :func:`bgcn.experiments.common.merge_partial`.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bgcn.experiments.common import merge_partial  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        n = merge_partial(argv[0], argv[1:])
    except ValueError as e:
        raise SystemExit(str(e)) from None
    print(f"{argv[0]}: {n} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
