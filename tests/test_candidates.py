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
