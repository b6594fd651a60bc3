"""Which frozen extractor gives the strongest graph? The probe behind chapter 13's Fashion-MNIST rows.

:func:`extractor_probe` scores candidate extractors (the pixels, an ImageNet extractor at several
input sizes) by Laplace learning's *validation* accuracy on the protocol's split;
:func:`load_extractor_probe` reads the committed result and :func:`probe_table` prints it.

Taught in: chapter 13 (chapters/13_what_we_found_2_other_settings.md).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .._checks import check_choice, check_int
from ..backbone import create_backbone, embed_images
from ..data import benchmark_data, benchmark_split
from ..graph import edge_homophily
from ..similarity import knn_indices
from .common import results_root
from .field import PROTOCOLS
from .propagation import _knn

__all__ = ["extractor_probe", "load_extractor_probe", "probe_table"]


def extractor_probe(protocol: str = "fashion-2000", sizes: Sequence[int] = (32, 64, 96), seeds: int = 3,
                    k: int = 10, progress: bool = True) -> dict:
    """Which input makes the better frozen graph: the raw pixels, or the ImageNet extractor's features at
    each input side in ``sizes``? Judged on the *validation* labels only.

    For every candidate: the seconds to embed all N images (one pass, eval mode), and over the
    protocol's first ``seeds`` splits the validation accuracy of Laplace learning on the angular
    ``k``-NN graph (graphlearning, as the ``laplace`` row) and of a cosine ``k``-NN classifier, both
    reading the training labels only; the graph's edge homophily (all labels, an analysis number).
    The candidate with the best mean validation accuracy of Laplace learning is ``"chosen"``.

    Shapes: none (returns ``{"candidates": [{"input", "embed_s", "dim", "val_laplace", "val_knn",
    "homophily"}], "chosen", "seeds", "k"}``).

    Taught in: chapter 13 (chapters/13_what_we_found_2_other_settings.md).
    """
    import graphlearning as gl
    from sklearn.neighbors import KNeighborsClassifier

    from ..backbone import embed_images

    check_choice(protocol, "protocol", PROTOCOLS)
    seed_list = list(FIELD_SEEDS[:check_int(seeds, "seeds", 1, 5, hint="the field's first seeds")])
    images, labels = benchmark_data(protocol)
    y = labels.numpy()
    out = []
    for cand in tqdm(["pixels", *[int(s) for s in sizes]], desc="extractors", disable=not progress):
        t0 = time.perf_counter()
        if cand == "pixels":
            x = images.reshape(len(images), -1).double()
        else:
            torch.manual_seed(0)
            bb = create_backbone("efficientnet_lite0_imagenet", img_size=cand)
            x = embed_images(bb, images, batch_size=250).double()
        seconds = time.perf_counter() - t0
        xn = x.numpy()
        ind, dist = _knn(xn, k, "angular")
        w = gl.weightmatrix.knn(None, k, knn_data=(ind, dist))
        lap, knn = [], []
        for seed in seed_list:
            tr, va, _ = (m.numpy() for m in benchmark_split(protocol, seed, labels=labels))
            pred = gl.ssl.laplace(w).fit_predict(np.flatnonzero(tr), y[tr])
            lap.append(float((pred[va] == y[va]).mean()))
            clf = KNeighborsClassifier(n_neighbors=k, weights="distance", metric="cosine").fit(xn[tr], y[tr])
            knn.append(float((clf.predict(xn[va]) == y[va]).mean()))
        hom = edge_homophily(knn_indices(x.float(), k), labels)
        out.append({"input": "pixels" if cand == "pixels" else f"imagenet@{cand}px", "embed_s": seconds,
                    "dim": int(x.shape[1]), "val_laplace": float(np.mean(lap)), "val_knn": float(np.mean(knn)),
                    "homophily": hom})
    chosen = max(out, key=lambda c: c["val_laplace"])["input"]
    return {"protocol": protocol, "seeds": seed_list, "k": k, "candidates": out, "chosen": chosen}


def load_extractor_probe(path: str | Path | None = None) -> dict:
    """The committed result of :func:`extractor_probe` (``results/field/fashion-2000-extractors.json``).

    Shapes: none.

    Taught in: chapter 13 (chapters/13_what_we_found_2_other_settings.md).
    """
    if path is None:
        root = results_root()
        path = root / "field" / "fashion-2000-extractors.json"
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist: run OMP_NUM_THREADS=1 python scripts/extractor_probe.py")
    return json.loads(path.read_text())


def probe_table(probe: dict) -> str:
    """Markdown of :func:`extractor_probe`'s candidates: validation accuracy (Laplace learning, kNN
    classifier), homophily and the seconds to embed, the chosen one in bold.

    Shapes: none.

    Taught in: chapter 13 (chapters/13_what_we_found_2_other_settings.md).
    """
    lines = [f"| input | val. acc., Laplace learning (%) | val. acc., {probe['k']}-NN classifier (%) | "
             "homophily | seconds to embed |", "|---|---|---|---|---|"]
    for c in probe["candidates"]:
        name = f"**{c['input']}** (chosen)" if c["input"] == probe["chosen"] else c["input"]
        lines.append(f"| {name} | {100 * c['val_laplace']:.1f} | {100 * c['val_knn']:.1f} | "
                     f"{c['homophily']:.3f} | {c['embed_s']:.1f} |")
    return "\n".join(lines) + f"\n\nMeans over {len(probe['seeds'])} seeds' validation labels.\n"
