r"""What does the graph cost? One mini-batch end-to-end epoch against one supervised fine-tuning epoch.

Both epochs make the **same backbone forward+backward passes** over the same images, in the same
batches of b (``bgcn.minibatch.stratified_batches``), with AdamW (``lr_backbone`` for the backbone,
``lr_gcn`` for the rest):

* ``e2e``: the steps of ``bgcn.minibatch.train_minibatch`` as its loop takes them
  (``minibatch_loss`` over a ``FeatureBank``: fresh batch features written into the bank, the
  2-hop computation subgraph searched in it, the GCN on it, NLL over the batch's labelled nodes
  (10 a class), backward, the backbone's gradient norm, the optimiser step);
* ``supervised``: plain fine-tuning with a linear head, every image labelled:
  ``cross_entropy(Linear(D, C)(f_θ(x_Q)), y_Q)``, backward, step.

Time of the e2e epoch, split (wall clock, CPU; synchronised on CUDA):

* ``backbone_fwd``: forward hooks around the backbone;
* ``search``: ``info["search_s"]`` of each step (``bgcn.bank.computation_subgraph``: the exact
  neighbour searches of the batch and its 1-hop ring in the bank, and the edge weights);
* ``gcn_fwd``: the rest of ``minibatch_loss`` (the batch's images gathered, the bank write, the
  GCN on the subgraph, the loss);
* ``graph_bwd``: ``backward()`` from its start until the gradient reaches the batch features (a
  tensor hook), i.e. back through the loss, the GCN and the edge weights;
* ``backbone_bwd``: the rest of ``backward()``;
* ``optimizer``: the step (plus, for e2e, the gradient norm the library's loop records);
* ``bank_fill`` (apart, not in the epoch): one no-grad pass over all N images
  (``FeatureBank.fill``), what a bank refresh costs when it is not the evaluation's pass.

``ratio`` = e2e epoch / supervised epoch (medians over ``--repeats`` interleaved epochs, one
untimed warm-up epoch each; ``ratio_repeats``: each repeat's own quotient, to see the noise);
``ratio_with_fill`` adds one bank fill to the e2e epoch (``bank_refresh=1`` without evaluation).
Two settings: (a) ``resnet18``: timm's ResNet-18 (random init,
``bgcn.create_backbone("resnet18", in_chans=3)``, D = 512) on generated 32x32 RGB images
(``bgcn.load_dataset("synthetic", n=N, image_size=32, channels=3)``), N = 2 000; (b) ``digits``:
the book's ``mlp_digits`` (D = 64) on the 1797 digits, where the backbone is so small that the
graph's share shows.

Usage (from the repository root)::

    python benchmarks/bench_overhead.py           # N = 2 000, b = 256, 3 repeats; about 2 min on 2 cores
    python benchmarks/bench_overhead.py --full    # N = 2 000 and 10 000 (resnet18), b = 256 and 512,
                                                  # 3 repeats; about 8 min on 2 cores

Writes ``benchmarks/results/overhead.json`` + ``overhead.png`` (``overhead_full.*`` with ``--full``).
On a shared machine compare the ratios (measured within one run), not absolute times across runs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import bgcn  # noqa: E402
from bgcn.bank import FeatureBank  # noqa: E402
from bgcn.data import label_masks, load_dataset  # noqa: E402
from bgcn.minibatch import minibatch_loss, stratified_batches  # noqa: E402
from bgcn.model import build_model  # noqa: E402
from bgcn.utils import json_safe  # noqa: E402
from bench_staleness import atomic_write, machine_meta  # noqa: E402
from bgcn.io import atomic_write as _atomic_write  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PARTS_E2E = ("backbone_fwd", "search", "gcn_fwd", "graph_bwd", "backbone_bwd", "optimizer")
PARTS_SUP = ("backbone_fwd", "head_fwd", "head_bwd", "backbone_bwd", "optimizer")
#: (setting, N, b); the digits epochs take a tenth of a second, so they get ``TINY_REPEATS`` repeats
DEFAULT = {"settings": [("resnet18", 2000, 256), ("digits", 1797, 256)], "repeats": 3}
FULL = {"settings": [("resnet18", 2000, 256), ("resnet18", 2000, 512), ("resnet18", 10000, 256),
                     ("digits", 1797, 256), ("digits", 1797, 64)], "repeats": 3}
TINY_REPEATS = 21
LR_BACKBONE, LR_HEAD, WEIGHT_DECAY, K = 3e-4, 2e-2, 5e-4, 10


class _Clock:
    """Wall-clock accumulator with an optional CUDA synchronisation before each reading."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def _hook_backbone(backbone: nn.Module, clock: _Clock, acc: dict):
    """Forward pre/post hooks adding the backbone's forward time to ``acc["backbone_fwd"]`` and counting
    its calls and images (``acc["backbone_calls"]``, ``acc["backbone_images"]``)."""
    state = {}
    acc.setdefault("backbone_calls", 0)
    acc.setdefault("backbone_images", 0)

    def pre(_m, a):
        state["t"] = clock()
        acc["backbone_calls"] += 1
        acc["backbone_images"] += int(a[0].shape[0])

    def post(_m, _a, _o):
        acc["backbone_fwd"] += clock() - state["t"]

    return [backbone.register_forward_pre_hook(pre), backbone.register_forward_hook(post)]


def _optimizer(model: nn.Module, backbone: nn.Module) -> torch.optim.Optimizer:
    ids = {id(p) for p in backbone.parameters()}
    return torch.optim.AdamW([{"params": [p for p in model.parameters() if id(p) not in ids], "lr": LR_HEAD},
                              {"params": list(backbone.parameters()), "lr": LR_BACKBONE}], weight_decay=WEIGHT_DECAY)


def e2e_epoch(model, opt, bank, images, labels, train_mask, batches, clock, chunk_size=4096) -> dict:
    """One epoch of ``train_minibatch``'s steps, timed part by part (seconds)."""
    acc = dict.fromkeys(PARTS_E2E, 0.0)
    hooks = _hook_backbone(model.backbone, clock, acc)
    bb_params = [p for p in model.backbone.parameters() if p.requires_grad]
    dev = bank.device
    tm = train_mask.to(dev)
    lab = labels.to(dev)
    model.train()
    try:
        t_start = clock()
        for batch in batches:
            opt.zero_grad(set_to_none=True)
            t0 = clock()
            loss, info = minibatch_loss(model, images, batch, bank, lab, tm, chunk_size=chunk_size)
            t1 = clock()
            acc["search"] += info["search_s"]
            fwd_other = (t1 - t0) - info["search_s"]
            reached = {}
            info["features"].register_hook(lambda g: reached.__setitem__("t", clock()) or None)
            loss.backward()
            t2 = clock()
            acc["graph_bwd"] += reached.get("t", t2) - t1
            acc["backbone_bwd"] += t2 - reached.get("t", t2)
            # the library's loop records the backbone's gradient norm every step
            float(torch.stack([p.grad.detach().double().pow(2).sum() for p in bb_params if p.grad is not None])
                  .sum().sqrt())
            opt.step()
            t3 = clock()
            acc["optimizer"] += t3 - t2
            acc["gcn_fwd"] += fwd_other  # includes the backbone forward; subtracted below
        total = clock() - t_start
    finally:
        for h in hooks:
            h.remove()
    acc["gcn_fwd"] -= acc["backbone_fwd"]
    acc["other"] = total - sum(acc[p] for p in PARTS_E2E)
    acc["total"] = total
    return acc


def supervised_epoch(backbone, head, opt, images, labels, batches, clock) -> dict:
    """One epoch of plain fine-tuning over the same batches: linear head, cross-entropy on every image."""
    acc = dict.fromkeys(PARTS_SUP, 0.0)
    hooks = _hook_backbone(backbone, clock, acc)
    dev = next(head.parameters()).device
    backbone.train()
    head.train()
    try:
        t_start = clock()
        for batch in batches:
            opt.zero_grad(set_to_none=True)
            x, y = images[batch].to(dev), labels[batch].to(dev)
            t0 = clock()
            f = backbone(x)
            t1 = clock()
            loss = F.cross_entropy(head(f), y)
            t2 = clock()
            reached = {}
            f.register_hook(lambda g: reached.__setitem__("t", clock()) or None)
            loss.backward()
            t3 = clock()
            opt.step()
            t4 = clock()
            acc["head_fwd"] += t2 - t1
            acc["head_bwd"] += reached.get("t", t3) - t2
            acc["backbone_bwd"] += t3 - reached.get("t", t3)
            acc["optimizer"] += t4 - t3
            del t0
        total = clock() - t_start
    finally:
        for h in hooks:
            h.remove()
    acc["other"] = total - sum(acc[p] for p in PARTS_SUP)
    acc["total"] = total
    return acc


def _data(name: str, n: int):
    if name == "digits":
        ds = load_dataset("digits")
        return ds.images, ds.labels, "mlp_digits", {}
    if name == "resnet18":
        ds = load_dataset("synthetic", n=n, num_classes=10, image_size=32, channels=3, seed=0)
        return ds.images, ds.labels, "resnet18", {"in_chans": 3}
    raise ValueError(f"setting {name!r} must be 'resnet18' or 'digits'")


def measure(name: str, n: int, batch_size: int, *, repeats: int = 3, device: str = "cpu", seed: int = 0,
            images=None, labels=None, backbone_name=None, backbone_kw=None, tau: float = 0.1,
            verbose: bool = True) -> dict:
    """Interleaved e2e and supervised epochs of one setting; medians, breakdown and ratios."""
    dev = torch.device(device)
    clock = _Clock(dev)
    if images is None:
        images, labels, backbone_name, backbone_kw = _data(name, n)
    n = int(images.shape[0])
    tr, _, _ = label_masks(labels, 10, val_per_class=0, seed=seed)
    torch.manual_seed(seed)
    bb_e2e = bgcn.create_backbone(backbone_name, **(backbone_kw or {}))
    model = build_model(bb_e2e, 10, k=K, estimator="masked_softmax", tau=tau, hidden=64).to(dev)
    opt_e2e = _optimizer(model, model.backbone)
    torch.manual_seed(seed)
    bb_sup = bgcn.create_backbone(backbone_name, **(backbone_kw or {})).to(dev)
    head = nn.Linear(bb_sup.num_features, 10).to(dev)
    opt_sup = _optimizer(nn.ModuleList([bb_sup, head]), bb_sup)
    t0 = clock()
    bank = FeatureBank.from_backbone(model, images, 512, dev)
    first_fill = clock() - t0
    gen = torch.Generator().manual_seed(seed)
    e2e, sup, fills = [], [], []
    for rep in range(repeats + 1):  # rep 0: untimed warm-up of both
        batches = stratified_batches(tr, batch_size, gen)
        a = e2e_epoch(model, opt_e2e, bank, images, labels, tr, batches, clock)
        b = supervised_epoch(bb_sup, head, opt_sup, images, labels, batches, clock)
        t0 = clock()
        bank.fill(model.backbone, images, 512)
        fill = clock() - t0
        if rep > 0:
            e2e.append(a)
            sup.append(b)
            fills.append(fill)
        if verbose:
            print(f"  {name} N={n} b={batch_size} {'warm-up' if rep == 0 else f'repeat {rep}'}: e2e {a['total']:.2f} s"
                  f" (search {a['search']:.2f}), supervised {b['total']:.2f} s, fill {fill:.2f} s", flush=True)
    med_e2e = float(np.median([r["total"] for r in e2e]))
    med_sup = float(np.median([r["total"] for r in sup]))
    med_fill = float(np.median(fills))
    # breakdown of the median-total repeat (parts then add up to its total)
    i_e = int(np.argsort([r["total"] for r in e2e])[len(e2e) // 2])
    i_s = int(np.argsort([r["total"] for r in sup])[len(sup) // 2])
    return {"setting": name, "backbone": backbone_name, "backbone_kwargs": backbone_kw or {}, "n": n,
            "batch_size": int(batch_size), "steps": math.ceil(n / batch_size),
            "num_features": int(model.backbone.num_features), "num_labelled_e2e": int(tr.sum()),
            "image_shape": list(images.shape[1:]), "repeats": int(repeats),
            "e2e_s": med_e2e, "supervised_s": med_sup, "bank_fill_s": med_fill, "first_fill_s": first_fill,
            "ratio": med_e2e / med_sup, "ratio_with_fill": (med_e2e + med_fill) / med_sup,
            "e2e_breakdown": e2e[i_e], "supervised_breakdown": sup[i_s],
            "e2e_share": {p: e2e[i_e][p] / e2e[i_e]["total"] for p in (*PARTS_E2E, "other")},
            "e2e_repeats_s": [r["total"] for r in e2e], "supervised_repeats_s": [r["total"] for r in sup],
            "ratio_repeats": [a["total"] / b["total"] for a, b in zip(e2e, sup)],
            "bank_fill_repeats_s": fills}


def plot(data: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = data["results"]
    fig, axes = plt.subplots(1, len(recs), figsize=(2.6 * len(recs) + 1.5, 3.8), squeeze=False)
    colors = {"backbone_fwd": "tab:blue", "backbone_bwd": "tab:cyan", "search": "tab:red", "gcn_fwd": "tab:orange",
              "graph_bwd": "tab:olive", "optimizer": "tab:purple", "head_fwd": "tab:orange", "head_bwd": "tab:olive",
              "other": "0.6"}
    names = {"gcn_fwd": "GCN fwd / head fwd", "graph_bwd": "graph bwd / head bwd"}
    done = set()
    for ax, r in zip(axes[0], recs):
        for x, (kind, parts) in enumerate((("e2e", PARTS_E2E), ("supervised", PARTS_SUP))):
            bd = r[f"{kind}_breakdown"]
            bottom = 0.0
            for p in (*parts, "other"):
                v = max(bd[p], 0.0)
                key = {"head_fwd": "gcn_fwd", "head_bwd": "graph_bwd"}.get(p, p)
                ax.bar(x, v, bottom=bottom, color=colors[p], width=0.7,
                       label=None if key in done else names.get(key, key))
                done.add(key)
                bottom += v
            if kind == "e2e":
                ax.bar(x, r["bank_fill_s"], bottom=bottom, color="none", edgecolor="tab:gray", hatch="//", width=0.7,
                       label=None if "fill" in done else "bank fill (refresh)")
                done.add("fill")
        ax.set_xticks([0, 1])
        ax.set_xticklabels(["e2e", "supervised"], fontsize=8)
        ax.set_title(f"{r['setting']} N={r['n']} b={r['batch_size']}\ne2e/supervised = {r['ratio']:.2f}x "
                     f"({r['ratio_with_fill']:.2f}x with fill)", fontsize=8)
        ax.set_ylabel("seconds per epoch (median repeat)", fontsize=8)
    axes[0][0].legend(fontsize=6, loc="upper right")
    meta = data["meta"]
    fig.suptitle(f"The graph's overhead: {meta['torch_threads']} thread(s), {meta['device']}, torch {meta['torch']}",
                 fontsize=8)
    fig.tight_layout()
    _atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
    return path


def summary_lines(data: dict) -> list[str]:
    out = []
    for r in data["results"]:
        sh = r["e2e_share"]
        out.append(f"{r['setting']} N={r['n']} b={r['batch_size']}: e2e {r['e2e_s']:.2f} s / supervised "
                   f"{r['supervised_s']:.2f} s = {r['ratio']:.2f}x ({r['ratio_with_fill']:.2f}x with a bank fill of "
                   f"{r['bank_fill_s']:.2f} s); e2e shares: " +
                   ", ".join(f"{p} {100 * sh[p]:.0f}%" for p in (*PARTS_E2E, "other")))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="more N and b (~8 min)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (recorded in meta)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="JSON path (default results/overhead[_full].json)")
    ap.add_argument("--plot-only", action="store_true")
    a = ap.parse_args(argv)
    cfg = dict(FULL if a.full else DEFAULT)
    suffix = ("_full" if a.full else "") + ("" if a.device == "cpu" else "_" + a.device.split(":")[0])
    out = Path(a.out) if a.out else RESULTS / f"overhead{suffix}.json"
    png = out.with_suffix(".png")
    if a.plot_only:
        print(f"wrote {plot(json.loads(out.read_text()), png)}")
        return 0
    torch.set_num_threads(a.threads)
    repeats = a.repeats or cfg["repeats"]
    meta = machine_meta(a.device, argv)
    meta.update(k=K, estimator="masked_softmax", tau=0.1, lr_backbone=LR_BACKBONE, lr_head=LR_HEAD,
                weight_decay=WEIGHT_DECAY, dtype="float32")
    results = [measure(name, n, b, repeats=max(repeats, TINY_REPEATS) if name == "digits" else repeats,
                       device=a.device) for name, n, b in cfg["settings"]]
    meta["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    data = {"meta": meta, "config": {"settings": [list(s) for s in cfg["settings"]], "repeats": repeats},
            "results": results}
    data["summary"] = summary_lines(data)
    atomic_write(out, json.dumps(json_safe(data), indent=1) + "\n")
    plot(data, png)
    print("\n".join(data["summary"]))
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
