"""Append the runs of other experiment outputs to a partial file (chapter 12's one-process-per-seed runs).

    python scripts/merge_partial.py results/real/fashion-mnist.partial.json results/real_seed2/fashion-mnist.json

Each source is a partial file or a finished JSON of `python -m bgcn experiment --dataset ...`
with the same settings apart from which seeds it ran; runs already in the target (same row, seed
and labels per class) are not added twice. Then `... experiment --resume` writes the table.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    target = Path(argv[0])
    data = json.loads(target.read_text())
    keys = {(r["row"], r["seed"], r["labels_per_class"]) for r in data["runs"]}
    for src in argv[1:]:
        other = json.loads(Path(src).read_text())
        if other["settings"] != data["settings"]:
            diff = sorted(k for k in set(other["settings"]) | set(data["settings"])
                          if other["settings"].get(k) != data["settings"].get(k))
            raise SystemExit(f"{src}: settings differ from {target} ({', '.join(diff)})")
        for r in other["runs"]:
            key = (r["row"], r["seed"], r["labels_per_class"])
            if key not in keys:
                data["runs"].append(r)
                keys.add(key)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, target)
    print(f"{target}: {len(data['runs'])} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
