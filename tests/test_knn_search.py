"""One exact search (bgcn.similarity.knn_search) and one chunked log-sum-exp
(bgcn.scaling.similarity_logsumexp): bit-identical to the two copies each replaced.

The reference functions below are the code that bgcn.similarity.knn_indices, FeatureBank.search,
bgcn.scaling.chunked_logsumexp and the bank's softmax normaliser held before they shared one
implementation; the library must give the very same bits.
"""
from __future__ import annotations

import pytest
import torch

from bgcn.bank import FeatureBank, bank_logsumexp
from bgcn.scaling import chunked_logsumexp, similarity_logsumexp
from bgcn.similarity import knn_indices, knn_search, normalize_rows


def _old_knn_indices(features, k, exclude_self=True, chunk_size=4096):
    with torch.no_grad():
        n = features.shape[0]
        fn = normalize_rows(features)
        out = torch.empty(n, k, dtype=torch.long)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            s = fn[start:stop] @ fn.T
            if exclude_self:
                rows = torch.arange(stop - start)
                s[rows, rows + start] = float("-inf")
            out[start:stop] = torch.topk(s, k, dim=1).indices
        return out


def _old_bank_search(features, query, k, exclude=None, chunk_size=4096, bank_chunk=None):
    with torch.no_grad():
        m, n = query.shape[0], features.shape[0]
        bc = n if bank_chunk is None else bank_chunk
        qn = normalize_rows(query)
        out = torch.empty(m, k, dtype=torch.long)
        for start in range(0, m, chunk_size):
            stop = min(start + chunk_size, m)
            rows = torch.arange(stop - start)
            best_v = best_i = None
            for c0 in range(0, n, bc):
                c1 = min(c0 + bc, n)
                s = qn[start:stop] @ normalize_rows(features[c0:c1]).T
                if exclude is not None:
                    e = exclude[start:stop]
                    inside = (e >= c0) & (e < c1)
                    s[rows[inside], e[inside] - c0] = float("-inf")
                v, i = torch.topk(s, min(k, c1 - c0), dim=1)
                i = i + c0
                if best_v is not None:
                    v, j = torch.topk(torch.cat([best_v, v], 1), k, dim=1)
                    i = torch.cat([best_i, i], 1).gather(1, j)
                best_v, best_i = v, i
            out[start:stop] = best_i
        return out


def _old_chunked_lse(features, tau, exclude_self, chunk_size):
    fhat = normalize_rows(features)
    parts = []
    for start in range(0, fhat.shape[0], chunk_size):
        block = fhat[start:start + chunk_size]
        s = (block @ fhat.T) / tau
        if exclude_self:
            rows = torch.arange(block.shape[0])
            mask = torch.zeros(s.shape, dtype=torch.bool)
            mask[rows, rows + start] = True
            s = s.masked_fill(mask, float("-inf"))
        parts.append(torch.logsumexp(s, dim=1))
    return torch.cat(parts)


def _old_bank_lse(features, q, tau, exclude, chunk_size, bank_chunk):
    n = features.shape[0]
    bc = n if bank_chunk is None else bank_chunk
    qn = normalize_rows(q)
    out = []
    for start in range(0, q.shape[0], chunk_size):
        stop = min(start + chunk_size, q.shape[0])
        parts = []
        for c0 in range(0, n, bc):
            c1 = min(c0 + bc, n)
            if exclude is None:
                excl = torch.full((stop - start,), -1, dtype=torch.long)
            else:
                e = exclude[start:stop]
                excl = torch.where((e >= c0) & (e < c1), e - c0, torch.full_like(e, -1))
            s = (qn[start:stop] @ normalize_rows(features[c0:c1]).T) / tau
            hit = excl >= 0
            if bool(hit.any()):
                mask = torch.zeros_like(s, dtype=torch.bool)
                mask[torch.nonzero(hit).flatten(), excl[hit]] = True
                s = s.masked_fill(mask, float("-inf"))
            parts.append(torch.logsumexp(s, dim=1))
        out.append(torch.logsumexp(torch.stack(parts, 1), dim=1))
    return torch.cat(out)


@pytest.fixture
def feats():
    g = torch.Generator().manual_seed(0)
    return torch.randn(53, 7, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("exclude_self", [True, False])
@pytest.mark.parametrize("chunk", [5, 16, 4096])
def test_knn_indices_bit_identical_to_the_old_loop(feats, exclude_self, chunk):
    assert torch.equal(knn_indices(feats, 6, exclude_self=exclude_self, chunk_size=chunk),
                       _old_knn_indices(feats, 6, exclude_self, chunk))


@pytest.mark.parametrize("bank_chunk", [None, 7, 20])
@pytest.mark.parametrize("with_exclude", [True, False])
def test_bank_search_bit_identical_to_the_old_loop(feats, bank_chunk, with_exclude):
    bank = FeatureBank(feats.shape[0], feats.shape[1], dtype=torch.float64)
    bank.features.copy_(feats)
    ids = torch.tensor([0, 3, 9, 10, 40, 52])
    q = feats[ids] + 0.01
    exclude = ids if with_exclude else None
    got = bank.search(q, 5, exclude=exclude, chunk_size=4, bank_chunk=bank_chunk)
    assert torch.equal(got, _old_bank_search(feats, q, 5, exclude, 4, bank_chunk))


def test_knn_search_values_are_the_similarities_of_the_indices(feats):
    v, i = knn_search(feats[:9], feats, 4, exclude=torch.arange(9), chunk_size=4, key_chunk=11)
    fn = normalize_rows(feats)
    torch.testing.assert_close(v, (fn[:9].unsqueeze(1) * fn[i]).sum(-1), rtol=0, atol=1e-12)
    assert not (i == torch.arange(9)[:, None]).any()
    assert bool((v[:, :-1] >= v[:, 1:]).all())


def test_knn_search_merges_key_blocks_smaller_than_k(feats):
    # key blocks of 1 column: the running top-k grows one column at a time (once a crash: topk(2 columns, k=3))
    v1, i1 = knn_search(feats[:4], feats, 3, key_chunk=1)
    v2, i2 = knn_search(feats[:4], feats, 3)
    torch.testing.assert_close(v1, v2, rtol=0, atol=1e-12)  # other GEMM shapes: last-bit rounding
    assert torch.equal(i1, i2)


def test_knn_search_refuses_mismatched_inputs(feats):
    with pytest.raises(ValueError, match="same D"):
        knn_search(feats, feats[:, :3], 2)
    with pytest.raises(ValueError, match="dtype and device"):
        knn_search(feats.float(), feats, 2)
    with pytest.raises(ValueError, match="exclude"):
        knn_search(feats, feats, 2, exclude=torch.arange(3))


@pytest.mark.parametrize("exclude_self", [True, False])
@pytest.mark.parametrize("checkpoint", [True, False])
def test_chunked_logsumexp_bit_identical_to_the_old_blocks(feats, exclude_self, checkpoint):
    x1 = feats.clone().requires_grad_(True)
    x2 = feats.clone().requires_grad_(True)
    new = chunked_logsumexp(x1, 0.3, exclude_self=exclude_self, chunk_size=8, checkpoint=checkpoint)
    old = _old_chunked_lse(x2, 0.3, exclude_self, 8)
    assert torch.equal(new, old)
    w = torch.linspace(-1, 1, feats.shape[0], dtype=feats.dtype)
    (g1,) = torch.autograd.grad((new * w).sum(), x1)
    (g2,) = torch.autograd.grad((old * w).sum(), x2)
    assert torch.equal(g1, g2)


@pytest.mark.parametrize("bank_chunk", [None, 9])
def test_bank_logsumexp_bit_identical_to_the_old_blocks(feats, bank_chunk):
    bank = FeatureBank(feats.shape[0], feats.shape[1], dtype=torch.float64)
    bank.features.copy_(feats)
    ids = torch.tensor([1, 2, 30])
    q1 = (feats[ids] * 1.5).requires_grad_(True)
    q2 = (feats[ids] * 1.5).requires_grad_(True)
    new = bank_logsumexp(bank, q1, 0.5, ids, 2, bank_chunk)
    old = _old_bank_lse(feats, q2, 0.5, ids, 2, bank_chunk)
    assert torch.equal(new, old)
    (g1,) = torch.autograd.grad(new.sum(), q1)
    (g2,) = torch.autograd.grad(old.sum(), q2)
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-15)


def test_similarity_logsumexp_matches_the_dense_formula(feats):
    fn = normalize_rows(feats)
    ex = torch.arange(10, 20)
    got = similarity_logsumexp(fn[10:20], feats, 0.7, exclude=ex, chunk_size=3, key_chunk=8, normalize_keys=True)
    s = (fn[10:20] @ fn.T) / 0.7
    s[torch.arange(10), ex] = float("-inf")
    torch.testing.assert_close(got, torch.logsumexp(s, 1), rtol=0, atol=1e-12)
