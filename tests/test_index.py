"""bgcn.index: the exact and the FAISS neighbour indices behind the bank, and recall@k."""
from __future__ import annotations

import pytest
import torch

import bgcn
from bgcn.bank import FeatureBank
from bgcn.index import (APPROXIMATE_FROM, FLAT_FROM, ExactIndex, FaissIndex, make_index, recall_at_k,
                        resolve_index_kind)
from bgcn.similarity import knn_search, normalize_rows

pytest.importorskip("faiss")


def _clustered(n=3000, d=16, clusters=30, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g, dtype=torch.float64)
    x = centres[torch.randint(0, clusters, (n,), generator=g)] + 0.4 * torch.randn(n, d, generator=g,
                                                                                    dtype=torch.float64)
    return x.to(dtype)


def _sims(query, keys, ids):
    return (normalize_rows(query).unsqueeze(1) * normalize_rows(keys)[ids]).sum(-1)


def test_flat_index_finds_the_exact_neighbours():
    # continuous random data: no ties, so the exact k-sets are unique and FAISS's float32 scan,
    # re-ranked in float64, must return them in the same order
    x = _clustered(dtype=torch.float64)
    ids = torch.arange(len(x))
    exact = knn_search(x, x, 10, exclude=ids)[1]
    flat = make_index("flat").build(x).search(x, 10, ids)
    assert recall_at_k(flat, exact) == 1.0
    assert torch.equal(flat, exact)


def test_ivf_probing_every_list_is_exact_and_fewer_lists_keep_most_neighbours():
    x = _clustered()
    ids = torch.arange(len(x))
    exact = knn_search(x, x, 10, exclude=ids)[1]
    full = FaissIndex("ivf", nlist=16, nprobe=16).build(x).search(x, 10, ids)
    assert recall_at_k(full, exact) > 0.999  # float32 near-ties only
    some = FaissIndex("ivf", nlist=64, nprobe=4).build(x).search(x, 10, ids)
    assert 0.8 < recall_at_k(some, exact) <= recall_at_k(full, exact)


def test_ivf_probes_fewer_lists_from_its_threshold_and_blocks_give_the_same_answer(monkeypatch):
    import bgcn.index as index_mod

    x = _clustered(n=1200)
    ids = torch.arange(len(x))
    assert FaissIndex("ivf").build(x).index.nprobe == 16
    monkeypatch.setattr(index_mod, "NPROBE_8_FROM", 1000)
    assert FaissIndex("ivf").build(x).index.nprobe == 8
    assert FaissIndex("ivf", nprobe=12).build(x).index.nprobe == 12  # an explicit value wins
    whole = FaissIndex("ivf", nlist=40, nprobe=3).build(x).search(x, 10, ids)
    blocks = FaissIndex("ivf", nlist=40, nprobe=3, rerank_rows=7).build(x).search(x, 10, ids)
    assert torch.equal(whole, blocks)  # 7 queries at a time: each block its own rows and exclusions
    with pytest.raises(ValueError, match="rerank_rows"):
        FaissIndex("ivf", rerank_rows=0)


def test_hnsw_keeps_the_neighbours_of_clustered_data():
    x = _clustered()
    ids = torch.arange(len(x))
    exact = knn_search(x, x, 10, exclude=ids)[1]
    assert recall_at_k(FaissIndex("hnsw").build(x).search(x, 10, ids), exact) > 0.95


def test_a_query_never_finds_itself_and_short_rows_fall_back_to_the_exact_search():
    x = _clustered(n=600)
    ids = torch.arange(len(x))
    # 300 lists, one probed, 6 candidates asked: many rows get fewer than k usable ids from FAISS
    idx = FaissIndex("ivf", nlist=300, nprobe=1, candidates=5).build(x)
    out = idx.search(x, 5, ids)
    assert out.shape == (600, 5) and int(out.min()) >= 0
    assert not bool((out == ids.unsqueeze(1)).any())
    assert all(len(set(r)) == 5 for r in out.tolist())  # no id twice in a row


def test_candidates_are_re_ranked_against_the_current_keys():
    x = _clustered(n=800, dtype=torch.float64)
    idx = FaissIndex("flat", candidates=40).build(x.clone())
    moved = x + 0.3 * torch.randn_like(x)  # the bank's rows after some steps
    q = moved[:50]
    out = idx.search(q, 10, torch.arange(50), keys=moved)
    s = _sims(q, moved, out)
    assert bool((s[:, :-1] >= s[:, 1:]).all()), "each row must be sorted by the current similarity"
    # the candidates came from the old keys: compared with the exact search on the moved rows,
    # every returned id is at least as good as the exact k-th neighbour's similarity, or a miss
    exact = knn_search(q, moved, 10, exclude=torch.arange(50))[0]
    assert bool((s[:, 0] <= exact[:, 0] + 1e-12).all())


def test_recall_counts_the_shared_ids():
    a = torch.tensor([[1, 2, 3], [4, 5, 6]])
    b = torch.tensor([[3, 2, 9], [7, 8, 9]])
    assert recall_at_k(a, a) == 1.0 and recall_at_k(a, b) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="same shape"):
        recall_at_k(a, b[:, :2])


def test_auto_is_exact_below_the_threshold_and_ivf_from_it():
    assert resolve_index_kind("auto", FLAT_FROM - 1) == "exact"
    assert resolve_index_kind("auto", FLAT_FROM) == "flat"
    assert resolve_index_kind("auto", APPROXIMATE_FROM - 1) == "flat"
    assert resolve_index_kind("auto", APPROXIMATE_FROM) == "ivf"
    assert resolve_index_kind("auto", APPROXIMATE_FROM, device="cuda") == "exact"
    assert resolve_index_kind("hnsw", 10) == "hnsw"
    assert isinstance(make_index("auto", 10), ExactIndex)
    with pytest.raises(ValueError, match="index"):
        make_index("annoy")
    with pytest.raises(ValueError, match="num_keys"):
        make_index("auto")
    with pytest.raises(RuntimeError, match="build"):
        ExactIndex().search(torch.randn(3, 4), 1)


def test_the_bank_searches_through_its_index():
    x = _clustered(n=500)
    bank = FeatureBank(500, x.shape[1])
    bank.features.copy_(x)
    ids = torch.arange(500)
    exact = bank.search(x, 8, exclude=ids)
    bank.build_index(make_index("flat"))
    assert recall_at_k(bank.search(x, 8, exclude=ids), exact) > 0.999
    with pytest.raises(TypeError, match="NeighbourIndex"):
        bank.build_index("ivf")


def _digits_run(index, epochs=2):
    ds = bgcn.data.load_dataset("digits")
    x, y = ds.images[:600], ds.labels[:600]
    g = torch.Generator().manual_seed(0)
    tr = torch.zeros(600, dtype=torch.bool)
    tr[torch.randperm(600, generator=g)[:100]] = True
    torch.manual_seed(0)
    model = bgcn.build_model(bgcn.create_backbone("mlp_digits"), 10, k=10, estimator="masked_softmax", tau=0.1,
                             mode="end2end")
    return bgcn.minibatch.train_minibatch(model, x, y, tr, ~tr, ~tr, batch_size=128, epochs=epochs, index=index,
                                          seed=0, device="cpu")


def test_the_engine_with_a_flat_index_trains_as_the_exact_search_does():
    exact, flat = _digits_run("exact"), _digits_run("flat")
    assert flat.history.loss == pytest.approx(exact.history.loss, rel=1e-5)
    assert exact.timings["index_recall"] == [] and flat.timings["index"] == "flat"
    rec = flat.timings["index_recall"]
    assert [r[0] for r in rec] == [1, 2] and all(0.9 < r[2] <= 1.0 for r in rec)
    assert all(r[1] == 1.0 for r in rec)  # a flat index is exact when built


def test_a_bad_index_setting_is_one_line():
    with pytest.raises(ValueError, match="TrainConfig.index"):
        bgcn.TrainConfig(batch_size=8, index="annoy")
    with pytest.raises(ValueError, match="--index applies only to the mini-batch engine"):
        from bgcn.cli import run_train
        from bgcn.cli import build_parser
        run_train(build_parser().parse_args(["train", "--index", "ivf", "--epochs", "1"]))


def test_bench_index_smoke(tmp_path):
    import importlib.util
    from pathlib import Path
    import json

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("bench_index", root / "benchmarks" / "bench_index.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "index.json"
    assert mod.main(["--sizes", "1500", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    run = data["runs"][0]["methods"]
    assert run["exact"]["recall"] == 1.0 and set(run) == {"exact", "flat", "ivf", "hnsw"}
    assert all(0.9 < r["recall"] <= 1.0 and r["search_s"] > 0 for r in run.values())
    assert out.with_suffix(".png").is_file()
