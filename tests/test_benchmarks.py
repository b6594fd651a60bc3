"""Chapter 10 / benchmarks: chunked kNN equals dense kNN, the memory model, and a smoke run of bench_knn.

No timing assertions here: speed targets live in benchmarks/ only.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import bgcn
from bgcn.scaling import (chunked_logsumexp, chunked_soft_topk, memory_model, neighbour_similarities, peak_memory,
                          saved_tensor_bytes)

ROOT = Path(__file__).resolve().parents[1]
DT = torch.float64


def _bench():
    spec = importlib.util.spec_from_file_location("bench_knn", ROOT / "benchmarks" / "bench_knn.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _feats(n, d, seed=0, dtype=DT, grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype).requires_grad_(grad)


# ------------------------------------------------------------------ chunked == dense

@pytest.mark.parametrize("n,chunk", [(50, 7), (123, 32), (200, 1000), (64, 64)])
@pytest.mark.parametrize("exclude_self", [True, False])
def test_chunked_knn_indices_equal_dense(n, chunk, exclude_self):
    f = _feats(n, 12, seed=n, grad=False)
    s = bgcn.cosine_similarity(f)
    if exclude_self:
        s.fill_diagonal_(float("-inf"))
    dense = torch.topk(s, 6, dim=1).indices
    assert torch.equal(bgcn.knn_indices(f, 6, exclude_self=exclude_self, chunk_size=chunk), dense)


def test_chunked_knn_graph_equals_dense_masked_softmax():
    f = _feats(150, 10, seed=1)
    g = torch.randn(150 * 5, dtype=DT)
    dense = bgcn.knn_graph(f, 5, "masked_softmax", tau=0.3)
    (gd,) = torch.autograd.grad((dense.edge_weight * g).sum(), f)
    chunked = bgcn.knn_graph(f, 5, "masked_softmax", tau=0.3, chunk_size=37)
    (gc,) = torch.autograd.grad((chunked.edge_weight * g).sum(), f)
    assert torch.equal(dense.edge_index, chunked.edge_index)
    torch.testing.assert_close(chunked.edge_weight, dense.edge_weight, rtol=0, atol=1e-12)
    torch.testing.assert_close(gc, gd, rtol=0, atol=1e-12)


@pytest.mark.parametrize("exclude_self", [True, False])
@pytest.mark.parametrize("checkpoint", [True, False])
@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_chunked_soft_topk_equals_soft_topk(exclude_self, checkpoint, tau):
    f = _feats(130, 9, seed=2)
    g = torch.randn(130, 4, dtype=DT)
    w_d, i_d = bgcn.soft_topk(bgcn.cosine_similarity(f), 4, tau, exclude_self=exclude_self)
    (gr_d,) = torch.autograd.grad((w_d * g).sum(), f)
    w_c, i_c = chunked_soft_topk(f, 4, tau, exclude_self=exclude_self, chunk_size=29, checkpoint=checkpoint)
    (gr_c,) = torch.autograd.grad((w_c * g).sum(), f)
    assert torch.equal(i_c, i_d)
    torch.testing.assert_close(w_c, w_d, rtol=0, atol=1e-13)
    torch.testing.assert_close(gr_c, gr_d, rtol=0, atol=1e-12)


def test_chunked_soft_topk_gradcheck():
    f = _feats(20, 4, seed=3)
    g = torch.randn(20, 3, dtype=DT)
    assert torch.autograd.gradcheck(lambda x: (chunked_soft_topk(x, 3, 0.5, chunk_size=6)[0] * g).sum(), (f,))


def test_chunked_logsumexp_equals_dense():
    f = _feats(90, 6, seed=4)
    s = bgcn.cosine_similarity(f) / 0.2
    ref = torch.logsumexp(s.masked_fill(torch.eye(90, dtype=torch.bool), float("-inf")), dim=1)
    (g_ref,) = torch.autograd.grad(ref.sum(), f)
    out = chunked_logsumexp(f, 0.2, chunk_size=16)
    (g_out,) = torch.autograd.grad(out.sum(), f)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_out, g_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(chunked_logsumexp(f, 0.2, exclude_self=False, chunk_size=90),
                               torch.logsumexp(s, dim=1), rtol=0, atol=1e-12)


def test_neighbour_similarities_checkpoint_matches_plain_and_saves_less():
    f = _feats(100, 32, seed=5)
    fh = bgcn.normalize_rows(f)
    idx = bgcn.knn_indices(f, 8)
    plain, b_plain = saved_tensor_bytes(neighbour_similarities, fh, idx, checkpoint=False)
    ck, b_ck = saved_tensor_bytes(neighbour_similarities, fh, idx, chunk_size=30, checkpoint=True)
    torch.testing.assert_close(ck, plain, rtol=0, atol=1e-14)
    torch.testing.assert_close(plain, bgcn.cosine_similarity(f).gather(1, idx), rtol=0, atol=1e-14)
    (g1,) = torch.autograd.grad(plain.sum(), f, retain_graph=True)
    (g2,) = torch.autograd.grad(ck.sum(), f)
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-13)
    assert b_plain >= 8 * 100 * 8 * 32          # the gathered (N, k, D) float64 neighbours are saved
    assert b_ck < 8 * 100 * 8 * 32 / 4          # with checkpointing they are not


def test_input_validation():
    f = _feats(10, 3)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_soft_topk(f, 3, chunk_size=0)
    with pytest.raises(ValueError, match="k="):
        chunked_soft_topk(f, 10)
    with pytest.raises(ValueError, match="tau"):
        chunked_logsumexp(f, tau=0.0)
    with pytest.raises(ValueError, match="method"):
        memory_model(10, 3, 2, "sparse")
    with pytest.raises(ValueError, match="n="):
        memory_model(0, 3, 2)
    with pytest.raises(TypeError, match="callable"):
        saved_tensor_bytes(3)
    with pytest.raises(ValueError, match="indices"):
        neighbour_similarities(f, torch.zeros(3, 2, dtype=torch.long))


# ------------------------------------------------------------------ memory model

@pytest.mark.parametrize("dtype,b", [(torch.float32, 4), (torch.float64, 8)])
@pytest.mark.parametrize("n,d,k", [(300, 48, 5), (517, 20, 3)])
def test_memory_model_saved_matches_autograd(dtype, b, n, d, k):
    f = _feats(n, d, seed=6, dtype=dtype)
    runs = {"dense_softmax": lambda: bgcn.knn_graph(f, k, "softmax"),
            "chunked_masked_softmax": lambda: bgcn.knn_graph(f, k, "masked_softmax", chunk_size=128),
            "chunked_softmax": lambda: chunked_soft_topk(f, k, chunk_size=128)}
    for method, fn in runs.items():
        _, saved = saved_tensor_bytes(fn)
        model = memory_model(n, d, k, method, chunk_size=128, bytes_per_float=b)
        assert abs(saved - model["saved"]) <= 0.02 * model["saved"], (method, saved, model["saved"])
        assert model["peak"] == model["saved"] + model["transient"]


def test_memory_model_formulas_and_scaling():
    n, d, k, b = 20000, 384, 10, 4
    dense = memory_model(n, d, k, "dense_softmax")
    assert dense["saved"] == (b + 1) * n * n + 2 * b * n * d + 8 * n * k + 2 * b * n
    assert dense["transient"] == 3 * b * n * n
    ch = memory_model(n, d, k, "chunked_masked_softmax", chunk_size=1024)
    assert ch["saved"] == b * n * k * d + 2 * b * n * d + (8 + b) * n * k + 2 * b * n
    cs = memory_model(n, d, k, "chunked_softmax", chunk_size=1024)
    assert cs["saved"] == 2 * b * n * d + (8 + b) * n * k + 2 * b * n
    assert cs["transient"] == 5 * b * 1024 * n
    # quadratic vs linear growth
    assert memory_model(2 * n, d, k)["saved"] / dense["saved"] == pytest.approx(4, rel=0.03)
    assert memory_model(2 * n, d, k, "chunked_masked_softmax")["saved"] / ch["saved"] == pytest.approx(2, rel=1e-9)
    # the crossover: below N ~ b k D / (b + 1) the dense N^2 term is the smaller one
    assert memory_model(1000, d, k)["saved"] < memory_model(1000, d, k, "chunked_masked_softmax")["saved"]
    assert memory_model(5000, d, k)["saved"] > memory_model(5000, d, k, "chunked_masked_softmax")["saved"]


def test_measured_saved_bytes_grow_quadratically_for_dense_only():
    saved = {}
    for n in (200, 400):
        f = _feats(n, 16, dtype=torch.float32)
        saved[("dense", n)] = saved_tensor_bytes(lambda: bgcn.knn_graph(f, 4, "softmax"))[1]
        saved[("chunked", n)] = saved_tensor_bytes(lambda: chunked_soft_topk(f, 4, chunk_size=64))[1]
    assert saved[("dense", 400)] / saved[("dense", 200)] > 3.5
    assert saved[("chunked", 400)] / saved[("chunked", 200)] == pytest.approx(2, rel=0.05)


def test_checkpointing_removes_the_quadratic_term():
    n = 400
    f = _feats(n, 16, dtype=torch.float32)
    _, with_ck = saved_tensor_bytes(lambda: chunked_soft_topk(f, 4, chunk_size=50, checkpoint=True))
    _, without = saved_tensor_bytes(lambda: chunked_soft_topk(f, 4, chunk_size=50, checkpoint=False))
    assert without >= 4 * n * n       # every block's similarities kept for backward
    assert with_ck < n * n            # only O(N D + N k)


def test_peak_memory_sees_an_allocation():
    _, peak = peak_memory(lambda: torch.ones(10_000_000).sum(), device="cpu")   # 40 MB
    if peak is None:
        pytest.skip("no /proc peak-RSS counters on this system")
    assert peak >= 30e6
    out, _ = peak_memory(lambda x: x + 1, 2, device="cpu")
    assert out == 3


# ------------------------------------------------------------------ the benchmark script

@pytest.mark.slow
def test_bench_knn_smoke(tmp_path):
    bench = _bench()
    data = bench.run([120, 240], list(bench.METHODS), d=16, k=4, chunk_size=50, device="cpu", verbose=False)
    assert {r["method"] for r in data["results"]} == set(bench.METHODS)
    for r in data["results"]:
        assert r["status"] == "ok"
        assert r["num_edges"] == r["n"] * 4
        assert r["saved_bytes"] == pytest.approx(r["model_saved"], rel=0.02)
        assert r["forward_s"] > 0 and r["backward_s"] > 0
    for e in data["edges"]:
        assert e["loop_s"] > 0 and e["vectorised_s"] > 0
    json.dumps(data)
    png = bench.plot(data, tmp_path / "knn.png")
    assert Path(png).stat().st_size > 10_000


@pytest.mark.slow
def test_bench_knn_main_and_skip(tmp_path, capsys):
    bench = _bench()
    out = tmp_path / "r.json"
    assert bench.main(["--sizes", "100", "300", "--d", "8", "--k", "3", "--max-dense-n", "200", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    status = {(r["method"], r["n"]): r["status"] for r in data["results"]}
    assert status[("dense", 100)] == "ok" and status[("chunked_softmax", 300)] == "ok"
    assert status[("seed_loop", 300)].startswith("skipped") and status[("dense", 300)].startswith("skipped")
    assert out.with_suffix(".png").exists()
    assert data["meta"]["d"] == 8 and data["meta"]["cpu_count"] >= 1
    assert bench.main(["--plot-only", "--out", str(out)]) == 0


def test_committed_results_are_consistent():
    path = ROOT / "benchmarks" / "results" / "knn_full.json"
    assert path.exists(), "benchmarks/results/knn_full.json is committed; regenerate it with benchmarks/bench_knn.py --full"
    data = json.loads(path.read_text())
    ok = [r for r in data["results"] if r["status"] == "ok"]
    assert ok and {"meta", "results", "edges"} <= set(data)
    for r in ok:
        assert r["saved_bytes"] == pytest.approx(r["model_saved"], rel=0.02)
