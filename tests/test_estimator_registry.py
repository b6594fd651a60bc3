"""One estimator spec read by everyone (bgcn.estimators._registry) and one row rule (bgcn.topk.row_weights)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import bgcn
import bgcn.estimators as E
from bgcn.bank import BANK_ESTIMATORS
from bgcn.bank._subgraph import _estimator_weights
from bgcn.estimators import EstimatorSpec, estimator_names, get_spec, register_estimator, rowwise_names
from bgcn.similarity import mask_diagonal, normalize_rows
from bgcn.topk import row_weights


def test_every_registered_estimator_has_one_frozen_spec():
    assert bgcn.ESTIMATORS is E.ESTIMATORS
    assert set(E.ESTIMATOR_SPECS) == set(bgcn.ESTIMATORS)
    for name, fn in bgcn.ESTIMATORS.items():
        spec = get_spec(name)
        assert isinstance(spec, EstimatorSpec) and spec.name == name and spec.fn is fn
        assert get_spec(fn) is spec
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.name = "x"  # type: ignore[misc]
        # the attributes code may still read off the function mirror the spec
        assert (fn.estimator_name, fn.needs_dense, fn.stochastic) == (name, spec.needs_dense, spec.stochastic)


def test_flags_replace_the_hand_kept_lists():
    # the lists the flags replace: bank.BANK_ESTIMATORS, model._CHUNKABLE, estimators.SELECTION_ESTIMATORS
    assert set(rowwise_names()) == {"hard", "values", "masked_softmax", "softmax"} == set(BANK_ESTIMATORS)
    assert set(rowwise_names(normaliser=False)) == {"hard", "values", "masked_softmax"}
    assert estimator_names(needs_normaliser=True) == ("softmax",)
    ours = {n for n, s in E.ESTIMATOR_SPECS.items() if s.fn.__module__.startswith("bgcn.estimators")}
    assert set(E.SELECTION_ESTIMATORS) == ours == set(estimator_names(rowwise=False)) & ours
    assert set(estimator_names(needs_dense=True)) == {"ste", "identity", "blackbox", "imle", "sigmoid",
                                                      "capped_simplex"}
    assert set(estimator_names(stochastic=True)) == {"imle", "gumbel_reinforce"}


def test_a_callable_that_was_never_registered_gets_a_plain_spec():
    def mine(scores, k, tau=1.0, **kw):
        return bgcn.ESTIMATORS["hard"](scores, k, tau, **kw)

    spec = get_spec(mine)
    assert (spec.name, spec.rowwise, spec.needs_dense, spec.stochastic) == ("mine", False, False, False)
    mine.estimator_name, mine.stochastic = "hard", True  # e.g. EndToEnd.build_graph's wrapper
    spec = get_spec(mine)
    assert spec.name == "hard" and spec.stochastic and spec.fn is mine and not spec.rowwise


def test_register_refuses_contradictory_flags():
    with pytest.raises(ValueError, match="row_rule"):
        register_estimator("bad_norm", needs_normaliser=True)
    with pytest.raises(ValueError, match="dense"):
        register_estimator("bad_dense", needs_dense=True, row_rule=lambda v, t, l: v)
    assert "bad_norm" not in bgcn.ESTIMATORS and "bad_dense" not in bgcn.ESTIMATORS


def test_a_registered_rowwise_estimator_works_on_the_chunked_graph():
    name = "test_registry_square"

    def rule(values, tau, lse):
        return values.clamp_min(0.0) ** 2

    @register_estimator(name, row_rule=rule)
    def square(scores, k, tau=1.0, *, exclude_self=False, generator=None):
        s = mask_diagonal(scores) if exclude_self else scores
        v, i = torch.topk(s, k, dim=-1)
        return E.Selection(i, row_weights(v, name, tau))

    try:
        x = torch.randn(30, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        dense = bgcn.knn_graph(x, 4, name)
        chunked = bgcn.knn_graph(x, 4, name, chunk_size=7)
        assert name in rowwise_names(normaliser=False)
        torch.testing.assert_close(chunked.weights, dense.weights, rtol=0, atol=1e-12)
    finally:
        del bgcn.ESTIMATORS[name], E.ESTIMATOR_SPECS[name]


@pytest.fixture
def vals():
    g = torch.Generator().manual_seed(3)
    return torch.rand(6, 4, generator=g, dtype=torch.float64) * 2 - 1


def test_row_weights_rules(vals):
    assert torch.equal(row_weights(vals, "hard"), torch.ones_like(vals))
    assert not row_weights(vals.requires_grad_(), "hard").requires_grad
    assert torch.equal(row_weights(vals, "values"), vals.clamp_min(0.0))
    assert torch.equal(row_weights(vals, "masked_softmax", 0.3), torch.softmax(vals / 0.3, -1))
    lse = torch.logsumexp(vals / 0.3, -1) + 1.0
    assert torch.equal(row_weights(vals, "softmax", 0.3, lse), torch.exp(vals / 0.3 - lse[:, None]))


def test_row_weights_refuses(vals):
    with pytest.raises(ValueError, match="needs the row log-normalisers"):
        row_weights(vals, "softmax", 1.0)
    with pytest.raises(ValueError, match="no row rule"):
        row_weights(vals, "ste")
    with pytest.raises(ValueError, match="unknown estimator"):
        row_weights(vals, "sofmax")


def test_the_four_paths_share_the_rule():
    """topk's estimators, knn_graph's chunked branch, the bank and chunked_soft_topk give the same weights."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, dtype=torch.float64, generator=g)
    s = bgcn.cosine_similarity(x)
    for name in ("hard", "values", "masked_softmax"):
        sel = bgcn.ESTIMATORS[name](s, 5, 0.4, exclude_self=True)
        fn = normalize_rows(x)
        vals = (fn.unsqueeze(1) * fn[sel.indices]).sum(-1)
        torch.testing.assert_close(sel.weights, row_weights(vals, name, 0.4), rtol=0, atol=1e-14)
        chunked = bgcn.knn_graph(x, 5, name, 0.4, chunk_size=9)
        torch.testing.assert_close(chunked.weights, sel.weights, rtol=0, atol=1e-14)
        assert torch.equal(_estimator_weights(vals, name, 0.4, True), row_weights(vals, name, 0.4))
        assert torch.equal(_estimator_weights(vals, name, 0.4, False), torch.ones_like(vals))
    w_chunk, idx = bgcn.scaling.chunked_soft_topk(x, 5, 0.4, chunk_size=9)
    w_dense, idx_dense = bgcn.soft_topk(s, 5, 0.4, exclude_self=True)
    assert torch.equal(idx, idx_dense)
    torch.testing.assert_close(w_chunk, w_dense, rtol=1e-12, atol=1e-15)
