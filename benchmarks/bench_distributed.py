"""Two processes against one (gloo, CPU): same result, time per step, the communication's share.

Each of P ranks (torch.multiprocessing, one thread each) trains the same mini-batch run
(:func:`bgcn.minibatch.train_minibatch`, end to end, synthetic 3-channel images and a small CNN)
on its shard of every global batch; one process with one thread does the whole run. Recorded:
the per-epoch step time of each, the final losses (they must agree), and on the ranks the seconds
spent in the three kinds of communication, each timed synchronously around the collective:

- the gather of the batch's fresh features *with* gradient (forward and, through its autograd
  function, the backward) and of the sharded no-grad embeddings (bank fills, evaluations);
- the all-reduce of the GCN's gradients;
- DDP's all-reduce of the backbone's gradients (a timing communication hook that waits for each
  bucket, so DDP's overlap of communication with the backward is switched off while measuring).

    python benchmarks/bench_distributed.py            # N = 2000, 2 epochs, about a minute
    python benchmarks/bench_distributed.py --full     # N = 8000, 3 epochs

Writes benchmarks/results/distributed.json. On a 2-core machine the two ranks share the cores
with nothing else only if the machine is idle: compare ratios within one run.

Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _setup(n: int):
    import warnings

    from bgcn.backbone import create_backbone
    from bgcn.data import label_masks, load_dataset
    from bgcn.model import build_model

    warnings.simplefilter("ignore", UserWarning)
    ds = load_dataset("synthetic", n=n, num_classes=10, image_size=16, channels=3, seed=0)
    tr, va, te = label_masks(ds.labels, 10, seed=0)
    torch.manual_seed(0)
    model = build_model(create_backbone("cnn_digits", in_chans=3, width=32), 10, k=10,
                        estimator="masked_softmax", tau=0.1, hidden=64, dropout=0.0)
    return model, ds.images, ds.labels, tr, va, te


def _run(n: int, epochs: int, batch: int):
    from bgcn.minibatch import train_minibatch

    model, images, labels, tr, va, te = _setup(n)
    return train_minibatch(model, images, labels, tr, va, te, batch_size=batch, epochs=epochs, warmup_epochs=0,
                           lr_backbone=1e-3, device="cpu", bank_refresh=0, eval_every=epochs, progress=False)


def _worker(rank: int, world: int, port: int, n: int, epochs: int, batch: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    from bgcn import distributed as bd
    from bgcn import minibatch as mb

    bd.init_distributed(device="cpu", timeout_s=300)
    comm = {"gather": 0.0, "gcn_allreduce": 0.0, "ddp_allreduce": 0.0}

    def timed(fn, key):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            r = fn(*a, **kw)
            comm[key] += time.perf_counter() - t0
            return r
        return wrapper

    # the gather's backward runs inside autograd: time it with a hook on the gathered tensor
    orig_gather = bd.all_gather_with_grad

    def gather(x, *a, **kw):
        t0 = time.perf_counter()
        g = orig_gather(x, *a, **kw)
        comm["gather"] += time.perf_counter() - t0
        if g.requires_grad:
            g.register_hook(lambda grad: comm.__setitem__("_bwd_start", time.perf_counter()) or grad)
            x.register_hook(lambda grad: comm.__setitem__(
                "gather", comm["gather"] + time.perf_counter() - comm.get("_bwd_start", time.perf_counter())) or grad)
        return g

    bd.all_gather_with_grad = gather
    bd.all_gather_rows = timed(bd.all_gather_rows, "gather")
    mb._allreduce_mean_ = timed(mb._allreduce_mean_, "gcn_allreduce")
    orig_wrap = bd.wrap_ddp

    def wrap(module, device=None, **kw):
        ddp = orig_wrap(module, device, **kw)

        def hook(state, bucket):
            t0 = time.perf_counter()
            buf = bucket.buffer()
            torch.distributed.all_reduce(buf)
            buf /= world
            comm["ddp_allreduce"] += time.perf_counter() - t0
            fut = torch.futures.Future()
            fut.set_result(buf)
            return fut

        if ddp is not module:
            ddp.register_comm_hook(None, hook)
        return ddp

    bd.wrap_ddp = wrap
    t0 = time.perf_counter()
    res = _run(n, epochs, batch)
    wall = time.perf_counter() - t0
    comm.pop("_bwd_start", None)
    torch.save({"loss": res.history.loss, "time_step": res.history.time_step, "wall": wall, "comm": comm,
                "state": {k: v.clone() for k, v in res.model.state_dict().items()}},
               os.path.join(out, f"rank{rank}.pt"))
    bd.cleanup()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="N = 8000, 3 epochs")
    p.add_argument("--world", type=int, default=2, help="processes")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distributed.json"))
    a = p.parse_args(argv)
    n, epochs = (8000, 3) if a.full else (2000, 2)
    import tempfile

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    one = _run(n, epochs, a.batch_size)
    wall1 = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        torch.multiprocessing.spawn(_worker, args=(a.world, port, n, epochs, a.batch_size, tmp), nprocs=a.world,
                                    join=True)
        ranks = [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(a.world)]
    st1 = one.model.state_dict()
    max_param = max(float((ranks[0]["state"][k].double() - st1[k].double()).abs().max()) for k in st1)
    step1 = sum(one.history.time_step)
    stepP = max(sum(r["time_step"]) for r in ranks)
    comm = {k: max(r["comm"][k] for r in ranks) for k in ranks[0]["comm"]}
    comm_total = sum(comm.values())
    wallP = max(r["wall"] for r in ranks)
    from bgcn.io import atomic_write_text
    from bgcn.utils import versions

    result = {
        "meta": {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
                 "versions": versions(), "cpu_count": os.cpu_count(), "loadavg": os.getloadavg(),
                 "threads_per_process": 1, "backend": "gloo"},
        "n": n, "epochs": epochs, "batch_size": a.batch_size, "world": a.world,
        "loss_one": one.history.loss, "loss_ranks": [r["loss"] for r in ranks],
        "max_param_diff": max_param, "step_s_one": step1, "step_s_world": stepP,
        "speedup_steps": step1 / stepP, "wall_s_one": wall1, "wall_s_world": wallP, "speedup_wall": wall1 / wallP,
        "comm_s": comm, "comm_s_total": comm_total, "comm_share_of_wall": comm_total / wallP,
    }
    atomic_write_text(a.out, json.dumps(result, indent=1))
    print(f"N={n}: 1 process {step1:.1f} s of steps, {a.world} processes {stepP:.1f} s "
          f"(x{step1 / stepP:.2f}); wall x{wall1 / wallP:.2f}; communication {comm_total:.2f} s = "
          f"{100 * comm_total / wallP:.0f}% of the {a.world}-process wall time ({comm}); "
          f"max parameter difference {max_param:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
