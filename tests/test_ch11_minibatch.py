"""What chapter 11 (chapters/11_minibatch_*.md) states and the library's other tests do not pin down:
the labelled count of every stratified batch, the revisits with fewer labels than batches, the
exact 5 N^2 term of the full-batch step's saved memory, the sizes of a step's subgraph, and an
inductive prediction that does not depend on the images predicted with it."""
from __future__ import annotations

import math

import pytest
import torch

from bgcn.bank import FeatureBank, predict
from bgcn.data import label_masks, load_dataset
from bgcn.minibatch import minibatch_loss, stratified_batches
from bgcn.scaling import saved_tensor_bytes

N, C, K = 150, 4, 5
TOL = 1e-10

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ds():
    return load_dataset("synthetic", n=N, num_classes=C, seed=4)


@pytest.mark.parametrize("n_lab", [7, 20, 33, 60])
@pytest.mark.parametrize("b", [9, 16, 25, 64, 149, 150, 400])
def test_every_batch_holds_floor_or_ceil_of_the_labels(n_lab, b):
    """eq-ch11-labelled: with |M| >= n_b = ceil(N/b), every batch holds floor(|M|/n_b) or
    ceil(|M|/n_b) labelled nodes, and exactly |M| mod n_b batches hold the larger count."""
    gen = torch.Generator().manual_seed(n_lab * 1000 + b)
    mask = torch.zeros(N, dtype=torch.bool)
    mask[torch.randperm(N, generator=gen)[:n_lab]] = True
    nb = math.ceil(N / b)
    batches = stratified_batches(mask, b, gen)
    assert len(batches) == nb
    counts = [int(mask[q].sum()) for q in batches]
    if n_lab >= nb:
        lo, hi = n_lab // nb, -(-n_lab // nb)
        assert set(counts) <= {lo, hi}
        assert sum(c == hi for c in counts) == (n_lab % nb if lo != hi else nb)
        assert sum(counts) == n_lab  # each labelled node exactly once
    else:  # fewer labels than batches: one labelled node each, nb - |M| of them revisits
        assert counts == [1] * nb
        seen = torch.cat([q[mask[q]] for q in batches])
        assert torch.equal(torch.unique(seen), torch.nonzero(mask).flatten())
        assert seen.numel() - n_lab == nb - n_lab


def test_full_batch_saved_memory_has_exactly_five_n_squared(tiny_model):
    """The chapter's fit: saved bytes of one full-batch forward (dense softmax graph, float32) are
    5 N^2 + c N + e; second differences over equally spaced N remove c and e and leave 2·5·h^2."""
    images = load_dataset("synthetic", n=400, num_classes=C, seed=0).images
    h, saved = 100, []
    for n in (200, 300, 400):
        m = tiny_model("softmax", double=True).float()
        _, s = saved_tensor_bytes(lambda: m(images[:n]))
        saved.append(s)
    second = saved[2] - 2 * saved[1] + saved[0]
    assert second == 2 * 5 * h * h
    # and the linear part is not zero (the extractor and the GCN keep something per image)
    assert saved[1] - saved[0] > 5 * (300 ** 2 - 200 ** 2)


def test_subgraph_rings_are_bounded_and_add_up(ds, tiny_model):
    """Q, then at most b·k 1-hop nodes and b·k² 2-hop nodes: the subgraph never exceeds b(1+k+k²)."""
    tr, _, _ = label_masks(ds.labels, 5, seed=0)
    m = tiny_model(double=True)
    images = ds.images.double()
    bank = FeatureBank.from_backbone(m, images)
    for b in (3, 10, 40):
        q = stratified_batches(tr, b, torch.Generator().manual_seed(b))[0]
        _, info = minibatch_loss(m, images, q, bank, ds.labels, tr)
        assert info["nodes"] == q.numel() + info["hop1"] + info["hop2"]
        assert info["hop1"] <= q.numel() * K and info["hop2"] <= q.numel() * K * K
        assert info["nodes"] <= min(N, q.numel() * (1 + K + K * K))
        assert info["labelled"] == int(tr[q].sum()) >= 1
    assert info["hop1"] > 0 and info["hop2"] > 0  # real rings, so the bounds were not trivial


@pytest.mark.parametrize("estimator", ["masked_softmax", "softmax"])
def test_predict_does_not_depend_on_the_companions(ds, estimator, tiny_model):
    """An image's inductive prediction is the same alone, in any batch, in any order, and with other
    new images around it (they are not candidates for anyone's neighbours), float64."""
    m = tiny_model(estimator, double=True)
    train_x, new_x = ds.images[:110].double(), ds.images[110:].double()
    bank = FeatureBank.from_backbone(m, train_x)
    ref = predict(m, new_x, bank, batch_size=len(new_x))
    alone = torch.cat([predict(m, new_x[i:i + 1], bank) for i in range(len(new_x))])
    assert float((alone - ref).abs().max()) < TOL
    perm = torch.randperm(len(new_x), generator=torch.Generator().manual_seed(0))
    shuffled = predict(m, new_x[perm], bank, batch_size=7)
    assert float((shuffled - ref[perm]).abs().max()) < TOL
    # with unrelated extra images (training images again, as new ones) in the same batch
    mixed = predict(m, torch.cat([new_x[:5], train_x[:30]]), bank, batch_size=64)[:5]
    assert float((mixed - ref[:5]).abs().max()) < TOL
    # and the prediction does depend on the bank (the check could fail)
    other = FeatureBank.from_backbone(m, ds.images[:60].double())
    assert float((predict(m, new_x[:5], other) - ref[:5]).abs().max()) > 1e-6


def test_the_staleness_sentence_matches_the_committed_benchmark():
    # chapter 11 says the mini-batch run is ahead of full batch by more than two standard errors
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    d = json.loads((root / "benchmarks" / "results" / "staleness.json").read_text())
    diff = d["accuracy"]["summary"]["test_acc_at_best_val"]["paired_difference"]
    text = " ".join((root / "chapters" / "11_minibatch_2_staleness.md").read_text().split())
    said = "The first difference is more than two standard errors from zero" in text
    assert said == (diff["mean"] > 2 * diff["se"]), diff
    # and the library's reading of the file agrees (the glued numbers come from it)
    from bgcn.experiments.bench import staleness_findings

    assert staleness_findings(d)["ahead"] == said


def test_the_inductive_reading_is_a_computed_mcnemar_test():
    """Page 3 compares inductive and transductive on the same held-out images with McNemar's exact
    test (bgcn.stats.mcnemar_exact), computed in the page, not called "the same within noise"."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "chapters" / "11_minibatch_3_inductive_distributed.md").read_text()
    assert "mc = mcnemar_exact(right_ind, right_tra)" in text
    assert "{glue:text}`ch11_p_sign:.2g`" in text and "within noise" not in text
