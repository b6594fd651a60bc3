"""bgcn.viz_estimators: the bars chapter 09 draws are the estimators' own forward and backward."""
import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import bgcn  # noqa: E402
import bgcn.estimators as E  # noqa: E402
from bgcn.viz_estimators import (  # noqa: E402
    CHOSEN_COLOUR,
    classify_differences,
    OTHER_COLOUR,
    ROW_ESTIMATORS,
    estimator_row,
    paired_differences,
    estimator_row_figure,
    plot_estimator_row,
    plot_paired_differences,
    plot_toy_row,
)

N, K = 12, 3


def _row():
    gen = torch.Generator().manual_seed(0)
    th = torch.sort(torch.randn(N, dtype=torch.float64, generator=gen), descending=True).values
    target = torch.zeros(N, dtype=torch.float64)
    target[[1, 3, 4]] = 1.0
    g = E.topk_mask(th[None], K)[0] - target   # d/dm of 0.5 ||m - 1_T||^2 at the hard mask
    return th, g


def _reference(name, th, g, seed=0, samples=8):
    """The estimator called directly: forward weights, chosen set and -dL/dtheta."""
    fn = bgcn.ESTIMATORS[name]
    gen = torch.Generator().manual_seed(seed)
    if name == "gumbel_reinforce":
        rows = th.expand(samples, N).clone().requires_grad_(True)
        sel = fn(rows, K, 1.0, generator=gen)
        loss = (sel.dense * g).sum(1)
        sur = E.reinforce_surrogate(sel.log_prob[:, None], -loss[:, None], "loo")
        (gr,) = torch.autograd.grad(sur, rows)
        return sel.dense[0].numpy(), sel.indices[0], -gr.sum(0).numpy()
    x = th[None].clone().requires_grad_(True)
    sel = fn(x, K, 1.0, generator=gen) if fn.stochastic else fn(x, K, 1.0)
    if sel.dense is None:
        loss = (g[sel.indices[0]] * sel.weights[0]).sum()
        w = torch.zeros(N, dtype=torch.float64).scatter(0, sel.indices[0], sel.weights[0].detach())
    else:
        loss = (sel.dense[0] * g).sum()
        w = sel.dense[0].detach()
    (gr,) = torch.autograd.grad(loss, x)
    return w.numpy(), sel.indices[0], -gr[0].numpy()


@pytest.mark.parametrize("name", ROW_ESTIMATORS)
def test_bar_heights_are_the_estimators_forward_and_autograd_gradient(name):
    th, g = _row()
    fig = plot_estimator_row(name, th, K, g)
    a_fwd, a_bwd = fig.axes[:2]
    h_fwd = np.array([p.get_height() for p in a_fwd.containers[0]])
    h_bwd = np.array([p.get_height() for p in a_bwd.containers[0]])
    w, idx, neg_grad = _reference(name, th, g)
    assert np.array_equal(h_fwd, w)            # float64, same computation: exactly equal
    assert np.array_equal(h_bwd, neg_grad)
    red = [j for j, p in enumerate(a_fwd.containers[0])
           if matplotlib.colors.to_hex(p.get_facecolor()) == CHOSEN_COLOUR]
    grey = [j for j, p in enumerate(a_bwd.containers[0])
            if matplotlib.colors.to_hex(p.get_facecolor()) == OTHER_COLOUR]
    assert sorted(red) == sorted(idx.tolist())
    assert len(grey) == N - K
    plt.close(fig)


def test_what_the_figures_show_per_estimator():
    """The contrasts the chapter's figures are there to show, on the chapter's toy row."""
    th, g = _row()
    r = {n: estimator_row(n, th, K, g) for n in ROW_ESTIMATORS}
    un = ~r["softmax"]["chosen"]
    # softmax: every unselected score gets the same push per unit of its weight (normaliser only)
    w_all = torch.softmax(th, 0).numpy()
    ratio = r["softmax"]["grad"][un] / w_all[un]
    assert np.ptp(ratio) <= 1e-12 * np.abs(ratio).max()
    assert np.all(r["masked_softmax"]["grad"][un] == 0.0)
    # STE: the upstream gradient itself; identity: no shift, no scale component
    assert np.array_equal(r["ste"]["grad"], g.numpy())
    c = th.numpy() - th.numpy().mean()
    assert abs(r["identity"]["grad"].sum()) < 1e-14 and abs(r["identity"]["grad"] @ c) < 1e-14
    # blackbox: the wanted candidates outside the top-k are pushed up, the unwanted chosen ones down
    assert np.all(-r["blackbox"]["grad"][[3, 4]] > 0) and np.all(-r["blackbox"]["grad"][[0, 2]] < 0)
    # relaxations: soft forward with rows summing to k
    for n in ("sigmoid", "capped_simplex"):
        assert abs(r[n]["weights"].sum() - K) < 1e-9
        assert 0 < ((r[n]["weights"] > 0) & (r[n]["weights"] < 1)).sum()


def test_gumbel_exact_expectation_matches_enumeration_and_the_estimate_is_unbiased():
    th, g = _row()
    r = estimator_row("gumbel_reinforce", th, K, g)
    # the exact gradient by finite differences of the enumerated expectation
    tuples = torch.tensor(list(itertools.permutations(range(N), K)))
    scale = 0.1 * E.row_std(th[None])[0, 0]

    def expected_loss(t):
        p = E.plackett_luce_log_prob((t / scale).expand(len(tuples), N), tuples).exp()
        return float((p * g[tuples].sum(1)).sum())

    h = 1e-6
    fd = np.array([(expected_loss(th + h * e) - expected_loss(th - h * e)) / (2 * h)
                   for e in torch.eye(N, dtype=torch.float64)])
    assert np.abs(fd - r["exact"]).max() < 1e-6 * max(1.0, np.abs(fd).max())
    # averaged over many seeds, the leave-one-out estimate approaches the exact gradient
    est = np.stack([estimator_row("gumbel_reinforce", th, K, g, seed=s)["grad"] for s in range(400)])
    se = est.std(0, ddof=1) / np.sqrt(len(est))
    # (candidates far below the boundary are almost never sampled: their sample variance misses
    # the rare draws, so they get an absolute slack of 1e-3 of the largest entry; exact there <= 3e-4)
    err = np.abs(est.mean(0) - r["exact"])
    assert np.all(err <= 5.0 * se + 1e-3 * np.abs(r["exact"]).max()), err / se


def test_toy_row_figure_and_bad_input():
    th, g = _row()
    fig = plot_toy_row(th, K, g, target=[1, 3, 4])
    assert np.array_equal([p.get_height() for p in fig.axes[1].containers[0]], g.numpy())
    plt.close(fig)
    with pytest.raises(ValueError, match="name="):
        estimator_row("hard_argmax", th, K, g)
    with pytest.raises(ValueError, match="upstream"):
        estimator_row("ste", th, K, g[:5])
    with pytest.raises(ValueError, match="z must be one row"):
        estimator_row("ste", th[None], K, g)
    with pytest.raises(ValueError, match="tau=1"):
        estimator_row("gumbel_reinforce", th, K, g, tau=0.5)
    with pytest.raises(ValueError, match="samples"):
        estimator_row("gumbel_reinforce", th, K, g, samples=1)


def test_paired_differences_pairs_by_seed():
    runs = [{"row": "a", "seed": s, "test_acc": 0.90 + 0.01 * s} for s in range(3)]
    runs += [{"row": "b", "seed": s, "test_acc": 0.91 + 0.01 * s + (0.02 if s == 1 else 0)}
             for s in range(3)]
    runs += [{"row": "c", "seed": 0, "test_acc": None}]
    d = paired_differences(runs, "a")
    assert d["a"]["mean"] == 0.0 and d["a"]["std"] == 0.0
    assert np.allclose(d["b"]["diffs"], [1.0, 3.0, 1.0], atol=1e-12)
    assert abs(d["b"]["std"] - np.std([1.0, 3.0, 1.0], ddof=1)) < 1e-12
    assert "c" not in d
    with pytest.raises(ValueError, match="reference="):
        paired_differences(runs, "z")
    runs += [{"row": "e", "seed": s, "test_acc": 0.90 + 0.01 * s - 0.02 - 0.001 * s}
             for s in range(3)]
    runs += [{"row": "f", "seed": 0, "test_acc": 0.95}]
    d = paired_differences(runs, "a")
    cls = classify_differences(d, exclude=["a"], rule="std")
    # b: mean +1.67, std 1.15 -> ahead; e: mean -2.1, std 0.1 -> behind; f: one seed
    assert cls == {"ahead": ["b"], "within": [], "behind": ["e"], "one_seed": ["f"]}
    # the book's rule (the default): b's se is 1.15 / sqrt(3) = 0.67, so 1.67 > 2 se: ahead
    assert classify_differences(d, exclude=["a"]) == cls
    d["b"]["std"] = 2.0
    assert classify_differences(d, exclude=["a"], rule="std")["within"] == ["b"]
    # 2 se = 2.31 > 1.67: within by the book's rule too; 1.5 std (2 se = 1.73) is within by 2 se
    # but ahead by one std
    assert classify_differences(d, exclude=["a"])["within"] == ["b"]
    d["b"]["std"] = 1.5
    assert classify_differences(d, exclude=["a"])["within"] == ["b"]
    assert classify_differences(d, exclude=["a"], rule="std")["ahead"] == ["b"]
    with pytest.raises(ValueError, match="rule"):
        classify_differences(d, rule="sd")
    fig = plot_paired_differences([("vs a", d)])
    assert len(fig.axes) == 1
    plt.close(fig)


def test_paired_reading_lines():
    from bgcn.viz_estimators import paired_reading

    runs = [{"row": "ref", "seed": s, "test_acc": 0.90} for s in range(3)]
    runs += [{"row": "up", "seed": s, "test_acc": 0.92 + 0.001 * s} for s in range(3)]     # +2.1 ± 0.1
    runs += [{"row": "same", "seed": s, "test_acc": 0.90 + 0.01 * (s - 1)} for s in range(3)]  # +0.0 ± 1.0
    (line,) = paired_reading(runs, {"ref": "the reference"}, rule="std")
    assert line.startswith("- against the reference (`ref`, 3 seeds): ahead by > 1 std: `up` +2.1 ± 0.1")
    assert "within one std: `same` +0.0 ± 1.0" in line and "`ref`" not in line.split(":", 1)[1]
    # the book's rule (the default): mean ± standard error, two standard errors
    (line,) = paired_reading(runs, {"ref": "the reference"})
    assert line.startswith("- against the reference (`ref`, 3 seeds): ahead beyond 2 se: `up` +2.1 ± 0.1")
    assert "within 2 se: `same` +0.0 ± 0.6" in line
    with pytest.raises(ValueError, match="references"):
        paired_reading(runs, {})


def test_estimator_row_tau_divides_the_row_and_the_gradient_is_with_respect_to_the_input():
    """The softmax slider of chapter 09: estimator_row(..., tau=t) is the estimator at temperature t."""
    th, g = _row()
    for t in (0.2, 1.0, 3.0):
        r = estimator_row("softmax", th, K, g, tau=t)
        x = th[None].clone().requires_grad_(True)
        sel = bgcn.ESTIMATORS["softmax"](x, K, t)
        (gr,) = torch.autograd.grad((g[sel.indices[0]] * sel.weights[0]).sum(), x)
        assert np.array_equal(r["grad"], gr[0].numpy())
        w = torch.softmax(th / t, 0).numpy()
        assert np.allclose(r["weights"][r["chosen"]], w[r["chosen"]], rtol=1e-12, atol=0)


@pytest.mark.parametrize("name, param, values", [("blackbox", "lam_rel", [0.03, 0.1, 1.0, 10.0]),
                                                 ("softmax", "tau", [0.1, 1.0, 3.0]),
                                                 ("imle", "noise_rel", [0.1, 3.0]),
                                                 ("gumbel_reinforce", "noise_rel", [0.1, 1.0])])
def test_estimator_row_figure_frames_are_estimator_row(name, param, values):
    """Every slider step is a frame holding estimator_row's numbers for that value."""
    th, g = _row()
    fig = estimator_row_figure(name, th, K, g, param=param, values=values, active=1)
    steps = fig.layout.sliders[0].steps
    assert len(fig.frames) == len(steps) == len(values)
    assert [s.args[0][0] for s in steps] == [f.name for f in fig.frames]
    for v, fr in zip(values, fig.frames):
        r = estimator_row(name, th, K, g, **{param: v})
        assert np.allclose(fr.data[0].y, r["weights"], atol=1e-6)
        assert np.allclose(fr.data[1].y, -r["grad"], atol=1e-6)
        cols = [CHOSEN_COLOUR if c else OTHER_COLOUR for c in r["chosen"]]
        assert list(fr.data[1].marker.color) == cols
        assert (len(fr.data) == 3) == (r["exact"] is not None)
    # the figure opens on step `active`, and both y axes hold every frame
    assert np.allclose(fig.data[1].y, fig.frames[1].data[1].y)
    top = max(np.abs(f.data[1].y).max() for f in fig.frames)
    assert fig.layout.yaxis2.range[1] >= top


def test_estimator_row_figure_blackbox_lambda_shows_exercise_09_3():
    """Exercise 09-3's answer (the label ex-09-3), read off the slider's frames: no swap (zero gradient) at a tiny
    lam_rel, two candidates at 0.1, the four of the target swap at 1 and 10, ten times smaller at 10."""
    th, g = _row()
    fig = estimator_row_figure("blackbox", th, K, g, param="lam_rel", values=[0.03, 0.1, 1.0, 10.0])
    nz = [int((np.asarray(f.data[1].y) != 0).sum()) for f in fig.frames]
    big = [float(np.abs(f.data[1].y).max()) for f in fig.frames]
    assert nz == [0, 2, 4, 4]
    assert big[2] == pytest.approx(10 * big[3], rel=1e-4)
    with pytest.raises(ValueError, match="at least two"):
        estimator_row_figure("blackbox", th, K, g, param="lam_rel", values=[1.0])


def test_glueable_gives_glue_the_figure_bundle():
    """bgcn.viz.glueable: what {glue:figure} needs from a Plotly figure (it displays itself otherwise)."""
    import plotly.io as pio
    from IPython.core.formatters import format_display_data

    from bgcn.viz import glueable

    th, g = _row()
    fig = estimator_row_figure("blackbox", th, K, g, param="lam_rel", values=[0.1, 1.0])
    old = pio.renderers.default
    pio.renderers.default = "notebook_connected"
    try:
        data, _ = format_display_data(glueable(fig))
    finally:
        pio.renderers.default = old
    assert "Plotly.newPlot" in data["text/html"] and "addFrames" in data["text/html"]
    assert glueable(fig).figure is fig
    with pytest.raises(TypeError, match="plotly"):
        glueable(plt.figure())
