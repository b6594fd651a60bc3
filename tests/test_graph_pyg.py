"""bgcn.graph against PyG's own utilities: add_self_loops is PyG's (identical to bgcn's old loop),
edge homophily agrees with PyG's homophily(method="edge") up to PyG's float32 averaging."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bgcn.graph import edge_homophily, rankings_to_edges

torch_geometric = pytest.importorskip("torch_geometric")


def _old_self_loops(edge_index, edge_weight, n, w):
    loop = torch.arange(n)
    return (torch.cat([edge_index, torch.stack([loop, loop])], dim=1),
            torch.cat([edge_weight, torch.full((n,), float(w), dtype=edge_weight.dtype)]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("w", [1.0, 2.5])
def test_self_loops_are_pygs_and_identical_to_the_old_loop(dtype, w):
    g = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(20, generator=g)[:4] for _ in range(20)])
    weights = torch.rand(20, 4, generator=g, dtype=dtype).requires_grad_(True)
    ei, ew = rankings_to_edges(idx, weights, self_loops=True, self_loop_weight=w)
    ei0, ew0 = rankings_to_edges(idx, weights)
    old_ei, old_ew = _old_self_loops(ei0, ew0, 20, w)
    assert torch.equal(ei, old_ei) and torch.equal(ew, old_ew) and ew.dtype == dtype
    (g1,) = torch.autograd.grad((ew * torch.arange(ew.numel())).sum(), weights)
    (g2,) = torch.autograd.grad((old_ew * torch.arange(old_ew.numel())).sum(), weights)
    assert torch.equal(g1, g2)


def test_edge_homophily_is_pygs_definition():
    from torch_geometric.utils import homophily

    g = torch.Generator().manual_seed(1)
    for n, k, c in [(30, 3, 2), (97, 5, 4), (200, 10, 7)]:
        idx = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(n)])
        y = torch.randint(0, c, (n,), generator=g)
        ei, _ = rankings_to_edges(idx)
        ours, pyg = edge_homophily(idx, y), homophily(ei, y, method="edge")
        assert abs(ours - pyg) <= 1e-7  # PyG averages in float32; ours is the float64 mean
        same = int((y[idx] == y[:, None]).sum())
        assert ours == same / (n * k)


@pytest.mark.slow
def test_import_bgcn_still_does_not_import_torch_geometric():
    code = "import sys, bgcn; bgcn.graph.rankings_to_edges; print('torch_geometric' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
