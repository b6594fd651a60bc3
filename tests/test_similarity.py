import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bgcn
from bgcn.similarity import knn_indices, normalize_rows


def test_cosine_matches_definition_eq2():
    torch.manual_seed(0)
    x = torch.randn(7, 5, dtype=torch.float64)
    y = torch.randn(4, 5, dtype=torch.float64)
    s = bgcn.cosine_similarity(x, y)
    for i in range(7):
        for j in range(4):
            ref = float(x[i] @ y[j] / (x[i].norm() * y[j].norm()))
            assert abs(float(s[i, j]) - ref) < 1e-12


def test_self_similarity_is_one_and_symmetric():
    x = torch.randn(10, 3, dtype=torch.float64)
    s = bgcn.cosine_similarity(x)
    assert torch.allclose(s.diagonal(), torch.ones(10, dtype=torch.float64))
    assert torch.allclose(s, s.T)
    assert float(s.abs().max()) <= 1 + 1e-12


def test_zero_vector_gives_zero_not_nan_and_finite_grad():
    x = torch.randn(4, 3, dtype=torch.float64)
    x[2] = 0
    x.requires_grad_(True)
    s = bgcn.cosine_similarity(x)
    assert torch.isfinite(s).all()
    assert float(s[2].detach().abs().max()) == 0.0
    s.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_cosine_gradcheck_float64():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bgcn.cosine_similarity, (x, y))
    assert torch.autograd.gradcheck(lambda a: bgcn.cosine_similarity(a), (x,))


def test_scale_invariance():
    x = torch.randn(6, 4, dtype=torch.float64)
    scale = torch.rand(6, 1, dtype=torch.float64) * 10 + 0.1
    assert torch.allclose(bgcn.cosine_similarity(x), bgcn.cosine_similarity(x * scale))


@pytest.mark.parametrize("bad, err", [
    (torch.randn(3), ValueError),
    (torch.randn(2, 3, 4), ValueError),
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), ValueError),
    (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), ValueError),
    (torch.ones(3, 2, dtype=torch.long), TypeError),
    ([[1.0, 2.0]], TypeError),
])
def test_cosine_bad_input(bad, err):
    with pytest.raises(err, match="x"):
        bgcn.cosine_similarity(bad)


def test_cosine_mismatched_dims():
    with pytest.raises(ValueError, match="feature dimension"):
        bgcn.cosine_similarity(torch.randn(3, 2), torch.randn(3, 4))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 40), d=st.integers(1, 6), k=st.integers(1, 10), chunk=st.integers(1, 50),
       seed=st.integers(0, 10_000))
def test_chunked_knn_equals_dense(n, d, k, chunk, seed):
    k = min(k, n - 1)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    idx = knn_indices(x, k, exclude_self=True, chunk_size=chunk)
    s = bgcn.cosine_similarity(x)
    s.fill_diagonal_(-math.inf)
    ref_vals = torch.topk(s, k, dim=1).values
    got_vals = s.gather(1, idx)
    # same similarity values (indices may differ only on exact ties)
    assert torch.allclose(got_vals, ref_vals)
    assert (idx != torch.arange(n).unsqueeze(1)).all()
    assert all(len(set(r.tolist())) == k for r in idx)


def test_normalize_rows_unit_norm():
    x = torch.randn(5, 3)
    assert torch.allclose(normalize_rows(x).norm(dim=1), torch.ones(5))


def test_float64_and_mixed_dtypes():
    # torch.from_numpy gives float64: it works alone and against float32 (promoted to float64)
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 4)), rng.standard_normal((5, 4))
    ref = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    x64, y64 = torch.from_numpy(a), torch.from_numpy(b)
    s = bgcn.cosine_similarity(x64, y64)
    assert s.dtype == torch.float64
    np.testing.assert_allclose(s.numpy(), ref, rtol=0, atol=1e-14)
    for x, y in [(x64, y64.float()), (x64.float(), y64)]:
        mixed = bgcn.cosine_similarity(x, y)
        assert mixed.dtype == torch.float64
        # the float32 side was rounded: error of float32 rounding (~6e-8), not more
        np.testing.assert_allclose(mixed.numpy(), ref, rtol=0, atol=1e-6)
    half = bgcn.cosine_similarity(x64.bfloat16(), y64)
    assert half.dtype == torch.float64


def test_knn_indices_float64_from_numpy_matches_numpy_reference():
    import numpy as np

    rng = np.random.default_rng(3)
    f = rng.standard_normal((25, 6))
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    s = fn @ fn.T
    np.fill_diagonal(s, -np.inf)
    ref = np.argsort(-s, axis=1, kind="stable")[:, :4]        # random data: no ties
    for chunk in (1, 7, 4096):
        got = knn_indices(torch.from_numpy(f), 4, chunk_size=chunk)
        assert got.dtype == torch.long
        np.testing.assert_array_equal(got.numpy(), ref)
