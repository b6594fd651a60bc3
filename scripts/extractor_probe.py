"""Which input makes the better frozen graph on chapter 12's Fashion-MNIST images: the pixels, or the
ImageNet EfficientNet-Lite0 at 32, 64 or 96 px? Chosen on validation labels (chapter 13).

    OMP_NUM_THREADS=1 python scripts/extractor_probe.py      # results/field/fashion-2000-extractors.json, ~3 min
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bgcn.experiments.probe import extractor_probe  # noqa: E402
from bgcn.io import atomic_write_text  # noqa: E402
from bgcn.utils import json_safe, versions  # noqa: E402


def main() -> int:
    torch.set_num_threads(1)
    res = extractor_probe("fashion-2000", sizes=(32, 64, 96), seeds=3)
    res.update(command="OMP_NUM_THREADS=1 python scripts/extractor_probe.py", versions=versions())
    path = ROOT / "results" / "field" / "fashion-2000-extractors.json"
    atomic_write_text(path, json.dumps(json_safe(res), indent=1, allow_nan=False))
    for c in res["candidates"]:
        print(f"{c['input']:>16}: val Laplace {c['val_laplace']:.3f}, val kNN {c['val_knn']:.3f}, "
              f"homophily {c['homophily']:.3f}, embed {c['embed_s']:.1f} s")
    print("chosen:", res["chosen"], "->", path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
