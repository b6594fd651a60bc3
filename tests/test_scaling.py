"""bgcn.scaling: bad input is refused with a message naming the argument (chapter 10).

The numerical checks of the chunked routines (equal to dense, gradcheck, memory model) live in
tests/test_benchmarks.py.
"""
import pytest
import torch

from bgcn.scaling import chunked_logsumexp, chunked_soft_topk, memory_model, neighbour_similarities
from bgcn.similarity import normalize_rows


def test_neighbour_similarities_values_and_bad_indices():
    f = normalize_rows(torch.randn(6, 3, dtype=torch.float64))
    idx = torch.tensor([[1, 2]] * 6)
    v = neighbour_similarities(f, idx, checkpoint=False)
    assert torch.allclose(v, torch.stack([f @ f[1], f @ f[2]], 1))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, N-1\] = \[0, 5\]"):
        neighbour_similarities(f, torch.full((6, 2), 9))
    with pytest.raises(ValueError, match="indices must lie"):
        neighbour_similarities(f, torch.full((6, 2), -1))
    with pytest.raises(ValueError, match=r"\(N, k\) = \(6, k\)"):
        neighbour_similarities(f, torch.zeros(5, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="long"):
        neighbour_similarities(f, torch.zeros(6, 2, dtype=torch.int32))


def test_chunked_bad_input():
    x = torch.randn(6, 4)
    with pytest.raises(ValueError, match="k="):
        chunked_soft_topk(x, 9)
    with pytest.raises(ValueError, match="features must have 2"):
        chunked_soft_topk(torch.randn(5), 2)
    with pytest.raises(ValueError, match="tau"):
        chunked_logsumexp(x, tau=0)
    with pytest.raises(ValueError, match="method"):
        memory_model(10, 4, 2, method="nope")
