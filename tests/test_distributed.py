"""bgcn.distributed: two real processes on the CPU (gloo) against one process doing the same work.

One module-scoped fixture spawns 2 ranks once (``torch.multiprocessing.spawn``, rendezvous through
torchrun's environment variables on 127.0.0.1 and a free port); each rank runs every scenario and
saves what it saw; the tests compare that with a single-process computation of the same total loss:

- ``all_gather_with_grad``: forward = concatenation; each rank's gradient for its own rows equals
  the one-process gradient of Σ_r L_r (float64, 1e-10), with unequal shards (3 and 5 rows);
- contrast: a plain ``dist.all_gather`` with the local rows put back gives only ∂L_r/∂x_r, which
  differs from the total gradient by O(1);
- DDP parity: mlp_digits backbone + linear head, 3 AdamW steps on a kNN-softmax loss over the
  gathered global batch, 2 ranks x 4 images = 1 process x 8 images (float64, 1e-10); the plain
  gather misses it;
- ``sync_bank_rows`` / ``broadcast_``: both banks identical and equal to the sequential writes;
- ``write_if_main`` / ``main_only``: rank 0 writes, rank 1 returns only after the file exists;
  a failure on rank 0 raises on both ranks instead of hanging.

Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md)
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import bgcn
from bgcn import distributed as bd

WORLD = 2
GATHER_SIZES = [3, 5]
LABELS = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])
TAU = 0.5
DDP_STEPS = 3
DDP_LR = 0.05

pytestmark = pytest.mark.skipif(
    not (bd.available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build")


# ----------------------------------------------------------------------------- shared definitions

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _row_losses(q: torch.Tensor, keys: torch.Tensor, offset: int, y_all: torch.Tensor) -> torch.Tensor:
    """kNN-softmax classification loss of rows q against all rows keys (q = keys[offset:offset+b]).

    p_i = softmax_j(cos(q_i, key_j)/τ) over j ≠ self; loss_i = -log Σ_{j: y_j = y_i} p_ij.
    """
    qn = torch.nn.functional.normalize(q, dim=1)
    kn = torch.nn.functional.normalize(keys, dim=1)
    s = qn @ kn.T / TAU
    b = q.shape[0]
    self_mask = torch.zeros_like(s, dtype=torch.bool)
    self_mask[torch.arange(b), torch.arange(offset, offset + b)] = True
    p = torch.softmax(s.masked_fill(self_mask, float("-inf")), dim=1)
    onehot = torch.nn.functional.one_hot(y_all, int(y_all.max()) + 1).to(p.dtype)
    p_class = p @ onehot
    return -torch.log(p_class[torch.arange(b), y_all[offset:offset + b]])


def _rank_loss(gathered: torch.Tensor, rank: int, offset: int, b: int) -> torch.Tensor:
    """L_r = (r + 1) Σ_{i in shard r} w_i loss_i: rank-dependent, so the ranks' losses differ."""
    w = 1.0 + 0.1 * torch.arange(offset, offset + b, dtype=gathered.dtype)
    return (rank + 1) * (w * _row_losses(gathered[offset:offset + b], gathered, offset, LABELS)).sum()


def _gather_input() -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return torch.randn(sum(GATHER_SIZES), 4, generator=g, dtype=torch.float64)


def _ddp_model(dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(bgcn.create_backbone("mlp_digits"), torch.nn.Linear(64, 16)).to(dtype)


def _ddp_batches(b: int = 8, dtype=torch.float64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(DDP_STEPS):
        x = torch.rand(b, 1, 8, 8, generator=g, dtype=torch.float64).to(dtype)
        y = torch.randint(0, 3, (b,), generator=g)
        y[:6] = torch.tensor([0, 1, 2, 0, 1, 2])  # every class twice: no row without a positive
        out.append((x, y))
    return out


#: DDP runs: name -> (gather, global batch, dtype, optimizer); b = 7 gives shards of 4 and 3 rows.
#: float32 uses SGD: AdamW's first steps are ≈ lr·sign(g), which turns float32 rounding of
#: near-zero gradients into parameter differences of ~1e-4 (measured 4.5e-5) in either engine.
DDP_RUNS = {"with_grad": ("with_grad", 8, torch.float64, "adamw"),
            "plain": ("plain", 8, torch.float64, "adamw"),
            "uneven": ("with_grad", 7, torch.float64, "adamw"),
            "float32": ("with_grad", 8, torch.float32, "sgd")}


def _optimizer(name: str, params):
    if name == "adamw":
        return torch.optim.AdamW(params, lr=DDP_LR)
    return torch.optim.SGD(params, lr=DDP_LR, momentum=0.9)


def _ddp_train(gather: str, b: int, dtype, opt_name: str) -> dict:
    """3 AdamW steps; each rank's loss is Σ_{its rows} loss_i · W / B, so DDP's average is the mean."""
    rank, world, _ = bd.dist_info()
    model = bd.wrap_ddp(_ddp_model(dtype))
    opt = _optimizer(opt_name, model.parameters())
    for xb, yb in _ddp_batches(b, dtype):
        xs, ys = bd.shard(xb), bd.shard(yb)
        f = model(xs)
        if gather == "with_grad":
            fa, szs = bd.all_gather_with_grad(f, return_sizes=True)
        else:  # plain dist.all_gather, own rows put back (open_clip's gather_with_grad=False)
            parts = [torch.empty_like(f) for _ in range(world)]
            torch.distributed.all_gather(parts, f.detach())
            parts[rank] = f
            fa, szs = torch.cat(parts), [f.shape[0]] * world
        (ya,) = bd.all_gather_rows(ys)
        o = sum(szs[:rank])
        loss = _row_losses(fa[o:o + f.shape[0]], fa, o, ya).sum() * world / sum(szs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in bd.unwrap(model).state_dict().items()}


def _bank_init(rank: int) -> torch.Tensor:
    return torch.randn(10, 3, generator=torch.Generator().manual_seed(100 + rank), dtype=torch.float64)


#: per step, per rank: the bank rows that rank writes (duplicates within and across ranks, an empty shard)
BANK_STEPS = [[[1, 4, 7], [4, 2]], [[0], []], [[9, 9], [3, 9]]]


def _bank_feats(step: int, rank: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + 10 * step + rank)
    return torch.randn(n, 3, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- the 2-rank worker

def _worker(rank: int, port: int, outdir: str) -> None:
    torch.set_num_threads(1)
    out: dict = {}
    # torchrun's environment, set by hand: init_distributed reads it (the env:// path)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank)})
    out["info"] = bd.init_distributed(device="cpu", timeout_s=60)
    out["info_again"] = bd.init_distributed(device="cpu")  # idempotent
    out["backend"] = torch.distributed.get_backend()
    out["is_main"] = bd.is_main()
    try:
        # all_gather_with_grad, unequal shards
        x_all = _gather_input()
        off, b = sum(GATHER_SIZES[:rank]), GATHER_SIZES[rank]
        x = x_all[off:off + b].clone().requires_grad_(True)
        g, sizes = bd.all_gather_with_grad(x, return_sizes=True)
        out["gathered"], out["sizes"] = g.detach().clone(), sizes
        _rank_loss(g, rank, off, b).backward()
        out["grad"] = x.grad.clone()

        # contrast: plain dist.all_gather, own rows put back (open_clip's gather_with_grad=False)
        x2 = x_all[off:off + b].clone().requires_grad_(True)
        top = max(GATHER_SIZES)
        padded = torch.cat([x2.detach(), x2.new_zeros(top - b, 4)])
        parts = [torch.empty_like(padded) for _ in range(WORLD)]
        torch.distributed.all_gather(parts, padded)
        parts = [p[:n] for p, n in zip(parts, GATHER_SIZES)]
        parts[rank] = x2
        _rank_loss(torch.cat(parts), rank, off, b).backward()
        out["grad_plain"] = x2.grad.clone()

        # equal sizes, the fast path
        e = torch.full((2, 3), float(rank), dtype=torch.float64, requires_grad=True)
        ge = bd.all_gather_with_grad(e, equal_sizes=True)
        (ge * torch.arange(4.0, dtype=torch.float64)[:, None]).sum().backward()
        out["equal_gathered"], out["equal_grad"] = ge.detach().clone(), e.grad.clone()

        # DDP parity, with-grad gather and plain gather
        for name, run in DDP_RUNS.items():
            out[f"ddp_{name}"] = _ddp_train(*run)

        # the bank: different on each rank, made identical, then synchronised writes
        bank = _bank_init(rank)
        bd.broadcast_(bank, src=0)
        out["bank_after_broadcast"] = bank.clone()
        for step, per_rank in enumerate(BANK_STEPS):
            idx = torch.tensor(per_rank[rank], dtype=torch.long)
            bd.sync_bank_rows(bank, idx, _bank_feats(step, rank, len(idx)))
        out["bank"] = bank.clone()
        try:
            bd.sync_bank_rows(bank, torch.tensor([10 + rank]), torch.zeros(1, 3, dtype=torch.float64))
        except ValueError as err:
            out["bank_error"] = str(err)

        # rank-0-only writes
        path = Path(outdir) / "written.txt"

        def writer(p):
            time.sleep(0.5)  # rank 1 must wait for this
            Path(p).write_text(f"written by rank {bd.dist_info()[0]}")
            return "done"

        out["write_result"] = bd.write_if_main(path, writer)
        out["exists_on_return"] = path.exists()

        @bd.main_only
        def failing():
            raise OSError("disk full")

        try:
            failing()
        except BaseException as err:  # noqa: BLE001 - recorded for the test
            out["fail"] = f"{type(err).__name__}: {err}"
        bd.barrier()
    finally:
        torch.save(out, Path(outdir) / f"rank{rank}.pt")
        bd.cleanup()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("dist")
    t0 = time.perf_counter()
    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(outdir)), nprocs=WORLD, join=True)
    seconds = time.perf_counter() - t0
    res = [torch.load(outdir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return {"ranks": res, "outdir": outdir, "seconds": seconds}


# ----------------------------------------------------------------------------- one-process references

def _reference_grads() -> tuple[torch.Tensor, torch.Tensor]:
    """(∂ Σ_r L_r / ∂X, [∂L_r/∂X rows r]_r): the total gradient and each rank's local-only term."""
    x = _gather_input().requires_grad_(True)
    total = sum(_rank_loss(x, r, sum(GATHER_SIZES[:r]), GATHER_SIZES[r]) for r in range(WORLD))
    (g_total,) = torch.autograd.grad(total, x)
    local = []
    for r in range(WORLD):
        xr = _gather_input().requires_grad_(True)
        off, b = sum(GATHER_SIZES[:r]), GATHER_SIZES[r]
        (gr,) = torch.autograd.grad(_rank_loss(xr, r, off, b), xr)
        local.append(gr[off:off + b])
    return g_total, torch.cat(local)


def _reference_ddp(b: int = 8, dtype=torch.float64, opt_name: str = "adamw") -> dict:
    """One process, the whole global batch, the mean loss: written apart from _ddp_train."""
    model = _ddp_model(dtype)
    opt = _optimizer(opt_name, model.parameters())
    for xb, yb in _ddp_batches(b, dtype):
        f = model(xb)
        loss = _row_losses(f, f, 0, yb).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ----------------------------------------------------------------------------- tests on 2 ranks

@pytest.mark.slow
def test_two_ranks_join_through_torchrun_environment(two_ranks):
    r0, r1 = two_ranks["ranks"]
    assert tuple(r0["info"]) == (0, 2, 0) and tuple(r1["info"]) == (1, 2, 1)
    assert r0["info_again"] == r0["info"] and r1["info_again"] == r1["info"]
    assert r0["backend"] == "gloo" and r1["backend"] == "gloo"
    assert r0["is_main"] is True and r1["is_main"] is False
    assert two_ranks["seconds"] < 120


@pytest.mark.slow
def test_all_gather_with_grad_forward_is_the_concatenation(two_ranks):
    x_all = _gather_input()
    for r in two_ranks["ranks"]:
        assert r["sizes"] == GATHER_SIZES
        assert torch.equal(r["gathered"], x_all)
    # equal-size path: rank r contributed rows of value r; the gradient of Σ_i i·G_i summed over
    # both ranks' losses reaches rank r's rows i = 2r, 2r+1 twice (once per rank's loss)
    for rank, r in enumerate(two_ranks["ranks"]):
        assert torch.equal(r["equal_gathered"][:, 0], torch.tensor([0.0, 0, 1, 1], dtype=torch.float64))
        expect = 2 * torch.tensor([2 * rank, 2 * rank + 1], dtype=torch.float64)[:, None].expand(2, 3)
        assert torch.equal(r["equal_grad"], expect)


@pytest.mark.slow
def test_all_gather_with_grad_gives_the_total_loss_gradient(two_ranks):
    g_total, _ = _reference_grads()
    got = torch.cat([r["grad"] for r in two_ranks["ranks"]])
    err = float((got - g_total).abs().max())
    assert err < 1e-10, err
    assert float(g_total.abs().max()) > 1e-2  # a real gradient, not zeros


@pytest.mark.slow
def test_plain_all_gather_drops_the_other_ranks_gradient(two_ranks):
    g_total, g_local = _reference_grads()
    got = torch.cat([r["grad_plain"] for r in two_ranks["ranks"]])
    # what it computes is exactly the local term ∂L_r/∂x_r ...
    assert float((got - g_local).abs().max()) < 1e-10
    # ... which misses Σ_{s≠r} ∂L_s/∂x_r: an O(1) error, relative to the gradient's size
    rel = float((got - g_total).abs().max() / g_total.abs().max())
    assert rel > 0.1, rel


@pytest.mark.slow
def test_ddp_two_ranks_match_one_process(two_ranks):
    ref = _reference_ddp()
    init = {k: v.detach() for k, v in _ddp_model().state_dict().items()}
    assert _max_diff(ref, init) > 1e-3  # the steps moved the parameters
    for r in two_ranks["ranks"]:
        err = _max_diff(r["ddp_with_grad"], ref)
        assert err < 1e-10, err
    # the same DDP run with a plain gather ends elsewhere
    for r in two_ranks["ranks"]:
        assert _max_diff(r["ddp_plain"], ref) > 1e-2


@pytest.mark.slow
def test_ddp_uneven_shards_and_float32_match_one_process(two_ranks):
    ref7 = _reference_ddp(7)
    ref32 = _reference_ddp(8, torch.float32, "sgd")
    assert _max_diff(ref32, _ddp_model(torch.float32).state_dict()) > 1e-3  # SGD moved them
    for r in two_ranks["ranks"]:
        assert _max_diff(r["ddp_uneven"], ref7) < 1e-10  # shards of 4 and 3 images
        assert _max_diff(r["ddp_float32"], ref32) < 1e-5  # the tolerance, CPU float32


@pytest.mark.slow
def test_bank_identical_on_both_ranks_and_equal_to_one_process(two_ranks):
    r0, r1 = two_ranks["ranks"]
    assert torch.equal(r0["bank_after_broadcast"], _bank_init(0))
    assert torch.equal(r1["bank_after_broadcast"], _bank_init(0))
    ref = _bank_init(0)
    for step, per_rank in enumerate(BANK_STEPS):  # sequential writes in global-batch order
        for rank, rows in enumerate(per_rank):
            feats = _bank_feats(step, rank, len(rows))
            for j, i in enumerate(rows):
                ref[i] = feats[j]
    assert torch.equal(r0["bank"], r1["bank"])
    assert torch.equal(r0["bank"], ref)
    assert not torch.equal(ref, _bank_init(0))
    for r in (r0, r1):
        assert "[0, N=10)" in r["bank_error"] and "[10, 11]" in r["bank_error"]


@pytest.mark.slow
def test_write_if_main_writes_once_and_others_wait(two_ranks):
    r0, r1 = two_ranks["ranks"]
    assert (two_ranks["outdir"] / "written.txt").read_text() == "written by rank 0"
    assert r0["write_result"] == "done" and r1["write_result"] is None
    assert r0["exists_on_return"] and r1["exists_on_return"]
    assert r0["fail"] == "OSError: disk full"
    assert r1["fail"].startswith("RuntimeError: failing failed on rank 0")


# ----------------------------------------------------------------------------- one process, no group

@pytest.fixture
def no_env(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert not bd.is_initialized()
    return monkeypatch


def test_dist_info_without_environment_is_one_process(no_env):
    assert bd.dist_info() == (0, 1, 0)
    assert bd.init_distributed() == (0, 1, 0)
    assert not bd.is_initialized() and bd.is_main()
    bd.barrier()
    bd.cleanup()


def test_dist_info_reads_torchrun_environment(no_env):
    no_env.setenv("RANK", "3")
    no_env.setenv("WORLD_SIZE", "4")
    no_env.setenv("LOCAL_RANK", "1")
    assert bd.dist_info() == (3, 4, 1)
    assert not bd.is_main()
    no_env.delenv("LOCAL_RANK")
    assert bd.dist_info() == (3, 4, 3)


@pytest.mark.parametrize("env, match", [
    ({"RANK": "0"}, "WORLD_SIZE missing"),
    ({"LOCAL_RANK": "0"}, "RANK, WORLD_SIZE missing"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' is not an integer"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, r"RANK=2 must lie in \[0, WORLD_SIZE=2\)"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be >= 1"),
])
def test_half_set_environment_is_a_clear_error(no_env, env, match):
    for k, v in env.items():
        no_env.setenv(k, v)
    with pytest.raises(ValueError, match=match):
        bd.dist_info()
    with pytest.raises(ValueError, match=match):
        bd.init_distributed()


def test_init_without_rendezvous_address_is_a_clear_error(no_env):
    no_env.setenv("RANK", "0")
    no_env.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="MASTER_ADDR, MASTER_PORT missing"):
        bd.init_distributed()
    with pytest.raises(ValueError, match="needs rank= and world_size="):
        bd.init_distributed(init_method="tcp://127.0.0.1:1")
    assert not bd.is_initialized()


def test_one_process_gather_is_identity_and_bank_sync_is_sequential_write(no_env):
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert bd.all_gather_with_grad(x) is x
    g, sizes = bd.all_gather_with_grad(x, return_sizes=True)
    assert g is x and sizes == [5]
    bank = torch.zeros(6, 2, dtype=torch.float64)
    idx = torch.tensor([1, 3, 1, 5])
    feats = torch.arange(8, dtype=torch.float64).reshape(4, 2)
    bd.sync_bank_rows(bank, idx, feats)
    expect = torch.zeros(6, 2, dtype=torch.float64)
    for j, i in enumerate(idx.tolist()):
        expect[i] = feats[j]
    assert torch.equal(bank, expect)
    with pytest.raises(ValueError, match="feats must have shape"):
        bd.sync_bank_rows(bank, idx, feats[:, :1])
    with pytest.raises(TypeError, match="indices.long"):
        bd.sync_bank_rows(bank, idx.double(), feats)
    with pytest.raises(ValueError, match=r"\[0, N=6\)"):
        bd.sync_bank_rows(bank, torch.tensor([-1, 0, 1, 2]), feats)
    t = torch.ones(3)
    assert bd.broadcast_(t) is t and torch.equal(t, torch.ones(3))
    with pytest.raises(ValueError, match="src=1"):
        bd.broadcast_(t, src=1)


def test_shard_splits_in_rank_order(no_env):
    x = torch.arange(10)
    parts = [bd.shard(x, r, 4) for r in range(4)]
    assert [len(p) for p in parts] == [3, 3, 2, 2]
    assert torch.equal(torch.cat(parts), x)
    lst = list(range(10))
    assert sum((bd.shard(lst, r, 4) for r in range(4)), []) == lst
    assert torch.equal(bd.shard(x), x)  # one process: everything
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        bd.shard(x, 4, 4)


def test_main_only_runs_in_one_process(no_env, tmp_path):
    p = tmp_path / "m.json"
    assert bd.write_if_main(p, lambda q: Path(q).write_text("{}")) == 2
    assert p.read_text() == "{}"
    model = torch.nn.Linear(2, 2)
    assert bd.wrap_ddp(model) is model and bd.unwrap(model) is model
    with pytest.raises(TypeError, match="writer must be a callable"):
        bd.write_if_main(p, "not callable")


def test_every_public_function_is_documented():
    for name in bd.__all__:
        doc = getattr(bd, name).__doc__ or ""
        assert "Shapes:" in doc and "Taught in: chapter 11 (chapters/11_minibatch_3_inductive_distributed.md)" in doc, name
    doc = bd.all_gather_with_grad.__doc__
    assert "torch.distributed.nn.functional.all_gather" in doc and "Σ_{s=0}^{W-1} ∂L_s/∂x_r" in doc


# ----------------------------------------------------------------------------- the real torchrun

@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    """``torchrun --standalone --nproc-per-node 2`` on a script: the command the README gives."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent("""
        import sys, torch
        torch.set_num_threads(1)
        from bgcn import distributed as bd
        rank, world, local = bd.init_distributed(device="cpu")
        x = torch.full((rank + 1, 2), float(rank + 1), dtype=torch.float64, requires_grad=True)
        g = bd.all_gather_with_grad(x)
        (g ** 2).sum().backward()   # every rank's loss touches every row
        bd.write_if_main(sys.argv[1] + f"/out.txt",
                         lambda p: open(p, "w").write(f"{world} {g.shape[0]} {g.sum().item()}"))
        open(sys.argv[1] + f"/grad{rank}.txt", "w").write(str(x.grad.flatten().tolist()))
        bd.cleanup()
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    world, rows, total = (tmp_path / "out.txt").read_text().split()
    assert (int(world), int(rows), float(total)) == (2, 3, 1 * 2 + 2 * 4)
    # d/dx Σ_s Σ g² = 2 ranks x 2x: rank 0's entries are 1 -> 4, rank 1's are 2 -> 8
    assert json.loads((tmp_path / "grad0.txt").read_text()) == [4.0, 4.0]
    assert json.loads((tmp_path / "grad1.txt").read_text()) == [8.0] * 4
