"""The mini-batch engine in two processes (gloo, CPU) against one process with the same global
batch (chapter 11): same parameters after a few epochs, an identical bank on both ranks, the
checkpoint written by rank 0 only, and a resume across a different number of processes."""
from __future__ import annotations

import os
import socket

import pytest
import torch

from bgcn import distributed as bd

WORLD = 2
N, C, K = 80, 4, 5
KW = dict(batch_size=20, epochs=4, warmup_epochs=1, lr_backbone=1e-2, device="cpu", bank_refresh=2, seed=3,
          progress=False)

pytestmark = pytest.mark.skipif(not (bd.available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup(estimator: str, dtype):
    import warnings

    from bgcn.backbone import create_backbone
    from bgcn.data import label_masks, load_dataset
    from bgcn.model import build_model

    warnings.simplefilter("ignore", UserWarning)  # the tiny validation set warns
    ds = load_dataset("synthetic", n=N, num_classes=C, seed=2)
    tr, va, te = label_masks(ds.labels, 4, seed=0)
    torch.manual_seed(0)
    model = build_model(create_backbone("mlp_digits"), C, k=K, estimator=estimator, tau=0.2, hidden=16,
                        dropout=0.5).to(dtype)
    return model, ds.images.to(dtype), ds.labels, tr, va, te


def _run(estimator: str, dtype, **kw):
    from bgcn.minibatch import train_minibatch

    model, images, labels, tr, va, te = _setup(estimator, dtype)
    return train_minibatch(model, images, labels, tr, va, te, **{**KW, **kw})


def _worker(rank: int, port: int, outdir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank)})
    bd.init_distributed(device="cpu", timeout_s=120)
    out = {}
    try:
        for est, dtype in (("masked_softmax", torch.float64), ("softmax", torch.float32)):
            r = _run(est, dtype, checkpoint=os.path.join(outdir, f"ck_{est}.pt"))
            out[est] = {"state": {k: v.clone() for k, v in r.model.state_dict().items()},
                        "bank": r.bank.features.clone(), "loss": list(r.history.loss),
                        "val": list(r.history.val_acc), "world": r.config["world_size"]}
        # resume a one-process checkpoint (written by the test before spawning) in two processes
        r = _run("masked_softmax", torch.float64, epochs=4, checkpoint=os.path.join(outdir, "one.pt"),
                 resume=True)
        out["resumed"] = {k: v.clone() for k, v in r.model.state_dict().items()}
    finally:
        torch.save(out, os.path.join(outdir, f"rank{rank}.pt"))
        bd.cleanup()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("mbdist")
    _run("masked_softmax", torch.float64, epochs=2, checkpoint=str(outdir / "one.pt"))  # for the resume
    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(outdir)), nprocs=WORLD, join=True)
    return outdir, [torch.load(outdir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("estimator,dtype,tol", [("masked_softmax", torch.float64, 1e-10),
                                                 ("softmax", torch.float32, 1e-5)])
def test_two_processes_reach_the_one_process_parameters(two_ranks, estimator, dtype, tol):
    _, ranks = two_ranks
    one = _run(estimator, dtype)
    for r in ranks:
        assert r[estimator]["world"] == WORLD
        assert _max_diff(r[estimator]["state"], one.model.state_dict()) < tol
        assert float((r[estimator]["bank"].double() - one.bank.features.double()).abs().max()) < tol
        assert r[estimator]["loss"] == pytest.approx(one.history.loss, abs=tol)
    # the ranks agree with each other exactly: identical parameters and banks everywhere
    assert _max_diff(ranks[0][estimator]["state"], ranks[1][estimator]["state"]) == 0.0
    assert torch.equal(ranks[0][estimator]["bank"], ranks[1][estimator]["bank"])


@pytest.mark.slow
def test_checkpoint_written_once_and_resumable_in_another_world(two_ranks):
    outdir, ranks = two_ranks
    from bgcn.train import load_checkpoint

    ck = load_checkpoint(outdir / "ck_masked_softmax.pt")
    assert ck["epoch"] == KW["epochs"] and ck["config"]["world_size"] == WORLD
    assert not list(outdir.glob("*.tmp"))
    one = _run("masked_softmax", torch.float64)  # uninterrupted, one process
    for r in ranks:  # 2 epochs in one process, then 2 more in two processes
        assert _max_diff(r["resumed"], one.model.state_dict()) < 1e-10
