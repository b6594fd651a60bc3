"""The selection estimators of chapter 09 on a candidate set in the mini-batch engine (issue 17):
k' = N - 1 and b = N is the full-batch dense path; k' < N is exact in value for the hard-forward
estimators; a short run trains; bad input is refused in one line."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bgcn.bank import FeatureBank, bank_estimator, candidate_subgraph, subgraph_log_probs
from bgcn.estimators import score_function_surrogate
from bgcn.minibatch import evaluate_full, minibatch_loss, stratified_batches, train_minibatch
from bgcn.train import TrainConfig

N, C, K = 60, 4, 5
TOL = 1e-10
KC = N - 1

pytestmark = pytest.mark.usefixtures("one_thread")

# the deterministic selection estimators, and the stochastic ones with their sampling switched off
# by their own keyword (sample=False: imle is then blackbox, gumbel_reinforce its mode + log_prob)
CASES = [("ste", {}), ("ste", {"surrogate": "sigmoid"}), ("identity", {}), ("blackbox", {}), ("sigmoid", {}),
         ("capped_simplex", {"tau_m_rel": 1.0}), ("imle", {"sample": False}), ("gumbel_reinforce", {"sample": False})]


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data(n=N, classes=C, double=True)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("estimator,kw", CASES, ids=[f"{e}{'-' + '-'.join(k) if k else ''}" for e, k in CASES])
def test_all_candidates_and_full_batch_equal_the_dense_path(data, estimator, kw, tiny_model):
    """k' = N - 1, b = N: loss (plus the score-function surrogate) and every parameter gradient equal
    the full-batch dense step's, float64, relative 1e-10; the backbone gets a graph-path gradient."""
    images, labels, tr, _, _ = data
    full = tiny_model(estimator, double=True, estimator_kw=kw)
    mini = tiny_model(estimator, double=True, estimator_kw=kw)
    mini.load_state_dict(full.state_dict())
    full.train(), mini.train()  # GCN dropout on: the same draws on the same node order
    torch.manual_seed(7)
    logp = full(images)
    assert full.last_graph.dense is not None  # the dense path
    lf = F.nll_loss(logp[tr], labels[tr])
    lp = full.last_graph.info.get("log_prob")
    if lp is not None:
        lf = lf + score_function_surrogate(lp, F.nll_loss(logp, labels, reduction="none"), tr)
    lf.backward()
    bank = FeatureBank.from_backbone(mini, images)
    torch.manual_seed(7)
    lm, info = minibatch_loss(mini, images, torch.arange(N), bank, labels, tr, candidates=KC)
    lm.backward()
    assert info["nodes"] == N and info["hop1"] == 0 and info["hop2"] == 0
    assert (lp is not None) == (float(info["surrogate"]) != 0.0)
    assert abs(float(lf.detach() - lm.detach())) <= TOL * abs(float(lf.detach()))
    gf, gm = _grads(full), _grads(mini)
    assert gf.keys() == gm.keys()
    for name in gf:
        scale = float(gf[name].abs().max())
        assert float((gf[name] - gm[name]).abs().max()) <= TOL * max(scale, 1e-30), name
    # the graph path is reached: the backbone's gradient differs from the node path's alone
    assert float(full.last_path_grads["graph"].abs().max()) > 1e-8


HARD_FORWARD = [("ste", {}), ("identity", {}), ("blackbox", {}), ("imle", {"sample": False}),
                ("gumbel_reinforce", {"sample": False})]


@pytest.mark.parametrize("estimator,kw", HARD_FORWARD, ids=[e for e, _ in HARD_FORWARD])
def test_fewer_candidates_keep_the_query_rows_exact_in_value(data, estimator, kw, tiny_model):
    """k' < N, b < N: the query rows' log-probs equal the full dense graph's (the estimators whose forward
    is the hard top-k; the rows outside the batch are hard rows there too), in grad mode, float64."""
    images, labels, tr, _, _ = data
    model = tiny_model(estimator, double=True, estimator_kw=kw).eval()
    with torch.no_grad():
        ref = model(images)
    bank = FeatureBank.from_backbone(model, images)
    batch = stratified_batches(tr, 12, torch.Generator().manual_seed(0))[1]
    feats = model.features(images[batch])
    sub = candidate_subgraph(bank, feats, K, 3 * K, query_ids=batch, estimator=estimator, tau=model.tau,
                             estimator_kw=kw, chunk_size=16, bank_chunk=7)
    assert sub.num_hop1 > 0 and sub.num_hop2 > 0 and sub.num_nodes < N  # a real subgraph
    assert sub.candidates.shape == (batch.numel(), 3 * K) and sub.indices.shape == (batch.numel(), K)
    logp = subgraph_log_probs(model, sub)
    assert logp.requires_grad
    assert float((logp.detach() - ref[batch]).abs().max()) < TOL
    # the chosen k are the full graph's hard top-k (bank ids)
    assert torch.equal(sub.indices.sort(1).values, model.last_graph.indices[batch].sort(1).values)


@pytest.mark.parametrize("estimator,kw", CASES[:1] + CASES[4:6], ids=["ste", "sigmoid", "capped_simplex"])
def test_evaluation_on_all_candidates_is_the_dense_forward(data, estimator, kw, tiny_model):
    """evaluate_full with k' = N - 1 (no grad) equals the model's dense forward, relaxed masks included."""
    images, _, _, _, _ = data
    model = tiny_model(estimator, double=True, estimator_kw=kw).eval()
    with torch.no_grad():
        ref = model(images)
    logp, graph, _ = evaluate_full(model, images, candidates=N - 1, chunk_size=16)
    assert float((logp - ref).abs().max()) < TOL
    assert graph.indices.shape == (N, K)


def test_a_short_run_on_digits_trains_the_backbone(tiny_model):
    """train_minibatch with candidates=32 on 300 digits: two epochs of steps run, the backbone moves, the
    history and the record say what ran."""
    from bgcn.data import label_masks, load_dataset

    ds = load_dataset("digits")
    images, labels = ds.images[:300], ds.labels[:300]
    tr, va, te = label_masks(labels, 5, seed=0)
    model = tiny_model("ste", classes=10)
    before = [p.detach().clone() for p in model.backbone.parameters()]
    res = train_minibatch(model, images, labels, tr, va, te, batch_size=64, candidates=32, epochs=2,
                          lr_backbone=1e-3, device="cpu", seed=0)
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(model.backbone.parameters(), before))
    assert moved > 1e-5
    assert res.config["candidates"] == 32 and res.config["estimator"] == "ste"
    assert all(s["hop1"] > 0 for s in res.steps)
    assert len(res.history.loss) == 2 and all(torch.isfinite(torch.tensor(res.history.loss)))


def test_gumbel_reinforce_trains_with_its_surrogate(data, tiny_model):
    """A sampling estimator on candidates: the score-function surrogate is in the history."""
    images, labels, tr, va, te = data
    res = train_minibatch(tiny_model("gumbel_reinforce"), images.float(), labels, tr, va, te, batch_size=30,
                          candidates=20, epochs=2, device="cpu")
    assert any(s != 0.0 for s in res.history.surrogate)


def test_bad_candidates_are_refused_in_one_line(data, tiny_model):
    images, labels, tr, va, te = data
    run = dict(epochs=1, device="cpu")

    def one_line(exc, *words):
        msg = str(exc.value)
        assert "\n" not in msg
        for w in words:
            assert w in msg, (w, msg)

    with pytest.raises(ValueError) as e:  # candidates <= k
        train_minibatch(tiny_model("ste"), images.float(), labels, tr, va, te, batch_size=20, candidates=K, **run)
    one_line(e, "candidates=5", f">= {K + 1}")
    with pytest.raises(ValueError) as e:  # candidates > N - 1
        train_minibatch(tiny_model("ste"), images.float(), labels, tr, va, te, batch_size=20, candidates=N, **run)
    one_line(e, f"candidates={N}", f"<= {N - 1}")
    with pytest.raises(ValueError) as e:  # candidates on the full-batch engine
        TrainConfig(candidates=20)
    one_line(e, "candidates", "mini-batch")
    with pytest.raises(ValueError) as e:  # a selection estimator without candidates
        train_minibatch(tiny_model("blackbox"), images.float(), labels, tr, va, te, batch_size=20, **run)
    one_line(e, "'blackbox'", "candidates=", "--candidates")
    with pytest.raises(ValueError) as e:
        bank_estimator(tiny_model("imle"))
    one_line(e, "candidates=")
    assert bank_estimator(tiny_model("imle"), candidates=20) == "imle"
    with pytest.raises(ValueError) as e:  # a row-wise estimator needs no candidates
        train_minibatch(tiny_model("masked_softmax"), images.float(), labels, tr, va, te, batch_size=20,
                        candidates=20, **run)
    one_line(e, "candidates=20", "drop candidates")


def test_cli_refuses_candidates_without_batch_size(tmp_path, capsys):
    from bgcn.cli import main

    rc = main(["train", "--dataset", "synthetic", "--synthetic-n", "40", "--estimator", "ste", "--candidates", "20",
               "--epochs", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "\n" not in err
    assert "--candidates applies only to the mini-batch engine" in err and "--batch-size" in err


def test_cli_batch_size_with_candidates_records_them(tmp_path):
    import json

    from bgcn.cli import main

    out = tmp_path / "mb"
    args = ["train", "--dataset", "synthetic", "--synthetic-n", "120", "--backbone", "mlp_digits", "--k", "5",
            "--labels-per-class", "5", "--epochs", "2", "--device", "cpu", "--no-progress", "--estimator", "blackbox",
            "--batch-size", "32", "--candidates", "20", "--out", str(out)]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["candidates"] == 20 and m["train_config"]["candidates"] == 20
    assert m["config"]["estimator"] == "blackbox"


def test_neighbour_lists_give_the_searched_subgraph_on_a_fresh_bank(data, tiny_model):
    """use_neighbours=True reads the hop-1 rows from bank.neighbours: on a freshly filled bank the
    subgraph and the log-probs are the searched ones; the batch's hard rows are written back."""
    images, _, tr, _, _ = data
    model = tiny_model("ste", double=True).eval()
    bank = FeatureBank.from_backbone(model, images)
    batch = stratified_batches(tr, 12, torch.Generator().manual_seed(1))[0]
    feats = model.features(images[batch]).detach()
    a = candidate_subgraph(bank, feats, K, 15, query_ids=batch, estimator="ste", tau=model.tau)
    bank.fill_neighbours(K)
    before = bank.neighbours.clone()
    b = candidate_subgraph(bank, feats, K, 15, query_ids=batch, estimator="ste", tau=model.tau, use_neighbours=True)
    assert torch.equal(a.extra, b.extra) and torch.equal(a.edge_index, b.edge_index)
    assert torch.equal(bank.neighbours, before)  # the batch's rows were already fresh
    with torch.no_grad():
        assert torch.equal(subgraph_log_probs(model, a), subgraph_log_probs(model, b))


def test_a_run_with_candidates_resumes_exactly(data, tmp_path, tiny_model):
    """Killed after 2 of 3 epochs and resumed: the sampling estimator's draws (the run's generator) and
    the history are the uninterrupted run's."""
    images, labels, tr, va, te = data
    kw = dict(batch_size=30, candidates=20, device="cpu", seed=2, lr_backbone=1e-3)
    est = dict(estimator_kw={"noise_rel": 0.5})
    whole = train_minibatch(tiny_model("imle", **est), images.float(), labels, tr, va, te, epochs=3, **kw)
    ck = tmp_path / "ck.pt"
    train_minibatch(tiny_model("imle", **est), images.float(), labels, tr, va, te, epochs=2, checkpoint=ck, **kw)
    resumed = train_minibatch(tiny_model("imle", **est), images.float(), labels, tr, va, te, epochs=3,
                              checkpoint=ck, resume=True, **kw)
    assert resumed.history.loss == whole.history.loss


@pytest.mark.parametrize("estimator,kw", [("ste", {}), ("blackbox", {}), ("sigmoid", {}), ("identity", {})],
                         ids=["ste", "blackbox", "sigmoid", "identity"])
def test_sub_batch_step_is_the_dense_graph_it_describes(data, estimator, kw, tiny_model):
    """k' < N, b < N: loss and gradients equal a dense N x N graph built independently: the batch's rows
    are the estimator's mask on their candidates (scattered into the row), every other row its hard
    top-k, and only the batch's features carry gradient (float64). What candidate_subgraph says it is."""
    images, labels, tr, _, _ = data
    kc = 3 * K
    batch = stratified_batches(tr, 15, torch.Generator().manual_seed(0))[2]
    ref, mini = tiny_model(estimator, double=True, estimator_kw=kw), tiny_model(estimator, double=True, estimator_kw=kw)
    mini.load_state_dict(ref.state_dict())
    ref.eval(), mini.eval()
    bank = FeatureBank.from_backbone(ref, images)
    feats = ref.features(images)
    inb = torch.zeros(N, dtype=torch.bool)
    inb[batch] = True
    mixed = torch.where(inb[:, None], feats, feats.detach())
    fn = F.normalize(mixed, dim=1)
    cand = bank.search(feats[batch].detach(), kc, exclude=batch)
    scores = (fn[batch].unsqueeze(1) * fn[cand]).sum(-1)
    from bgcn.estimators import get_spec

    dense = get_spec(estimator).fn(scores, K, ref.tau, exclude_self=False, **kw).dense
    others = torch.nonzero(~inb).flatten()
    hard = bank.search(bank.features[others], K, exclude=others)
    adj = torch.zeros(N, N, dtype=torch.float64)
    adj = adj.index_put((others.repeat_interleave(K), hard.reshape(-1)), torch.ones(hard.numel(), dtype=adj.dtype))
    adj = adj.index_put((batch.repeat_interleave(kc), cand.reshape(-1)), dense.reshape(-1))
    lab = tr & inb
    lf = F.nll_loss(ref.gcn(mixed, adj=adj)[lab], labels[lab])
    lf.backward()
    lm, info = minibatch_loss(mini, images, batch, FeatureBank.from_backbone(mini, images), labels, tr,
                              candidates=kc, chunk_size=16, bank_chunk=7)
    lm.backward()
    assert info["hop1"] > 0 and info["hop2"] > 0 and info["nodes"] < N
    assert abs(float(lf.detach() - lm.detach())) <= TOL * abs(float(lf.detach()))
    gf, gm = _grads(ref), _grads(mini)
    assert gf.keys() == gm.keys()
    for name in gf:
        assert float((gf[name] - gm[name]).abs().max()) <= TOL * max(float(gf[name].abs().max()), 1e-30), name
    assert float(gm["backbone.net.1.weight"].abs().max()) > 1e-8


def test_predict_with_candidates_is_the_candidate_subgraph(data, tiny_model):
    """Inductive prediction for a selection estimator: refused without candidates, and with them each new
    image's answer does not depend on which others are predicted with it."""
    from bgcn.bank import predict

    images, *_ = data
    model = tiny_model("blackbox", double=True).eval()
    bank = FeatureBank.from_backbone(model, images[:50])
    new = images[50:]
    with pytest.raises(ValueError, match="candidates="):
        predict(model, new, bank)
    a = predict(model, new, bank, candidates=20)
    b = predict(model, new, bank, candidates=20, batch_size=3)
    assert a.shape == (10, C) and float((a - b).abs().max()) < TOL
