"""EndToEnd(chunk_size=...): the training graph without an N×N matrix equals the dense one (float64)."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bgcn.backbone import create_backbone
from bgcn.model import build_model

pytestmark = pytest.mark.usefixtures("one_thread")
N, C, K = 90, 3, 4


@pytest.fixture(scope="module")
def data(tiny_data):
    images, labels, tr, va, te = tiny_data(n=N, classes=C, seed=1, double=True)
    return images, labels, tr


class _Squares(TorchDispatchMode):
    """Records every aten op (forward and backward) that returns a tensor with two dimensions of size
    ``n``: an N x N matrix (or a batch of them), whichever function or module computes it."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.seen = n, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor) and list(t.shape).count(self.n) >= 2:
                self.seen.append((str(func), tuple(t.shape)))
        return out


def _pair(tiny_model, mode, estimator, chunk):
    """The dense and the chunked model, equal weights (seed 0), float64, in eval mode."""
    return [tiny_model(estimator, mode=mode, classes=C, k=K, hidden=8, double=True, chunk_size=cs).eval()
            for cs in (None, chunk)]


@pytest.mark.parametrize("mode,estimator", [("end2end-features", "softmax"), ("frozen", "ste"),
                                            ("end2end", "masked_softmax"), ("end2end", "values")])
def test_chunked_equals_dense(data, mode, estimator, tiny_model):
    images, labels, tr = data
    dense, chunked = _pair(tiny_model, mode, estimator, 16)
    with _Squares(N) as dense_ops:
        lp_d = dense(images)
        loss_d = torch.nn.functional.nll_loss(lp_d[tr], labels[tr])
    assert dense_ops.seen  # the guard sees the dense path's N x N similarity: it guards something
    with _Squares(N) as chunked_ops:  # the chunked path must never form an N x N tensor
        lp_c = chunked(images)
        loss_c = torch.nn.functional.nll_loss(lp_c[tr], labels[tr])
    assert not chunked_ops.seen, chunked_ops.seen[:5]
    torch.testing.assert_close(lp_c, lp_d, rtol=0, atol=1e-10)
    if mode != "frozen":
        gd = torch.autograd.grad(loss_d, list(dense.backbone.parameters()))
        with _Squares(N) as backward_ops:  # nor in the backward pass
            gc = torch.autograd.grad(loss_c, list(chunked.backbone.parameters()))
        assert not backward_ops.seen, backward_ops.seen[:5]
        for a, b in zip(gc, gd):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_chunked_refuses_full_row_estimators():
    with pytest.raises(ValueError, match="chunk_size"):
        build_model(create_backbone("mlp_digits"), C, k=K, estimator="softmax", mode="end2end", chunk_size=16)
    with pytest.raises(ValueError, match="chunk_size"):
        build_model(create_backbone("mlp_digits"), C, k=K, chunk_size=0)
    # frozen / end2end-features use the hard graph, so any estimator is fine there
    m = build_model(create_backbone("mlp_digits"), C, k=K, estimator="softmax", mode="frozen", chunk_size=16)
    assert m.chunk_size == 16


def test_cli_chunk_size_flag(tmp_path, capsys):
    from bgcn.cli import main

    code = main(["train", "--dataset", "digits", "--mode", "end2end", "--estimator", "softmax",
                 "--chunk-size", "256", "--epochs", "2", "--no-progress", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and "chunk_size" in err and "Traceback" not in err
    assert not (tmp_path / "a" / "metrics.json").exists()
