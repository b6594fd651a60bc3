r"""Figures of chapter 09: what each selection estimator does to **one row** of the score matrix.

For one node with :math:`n` candidates (scores :math:`z\in\mathbb R^n`, a row :math:`S_{i,:}/\tau`),
:math:`k` to keep and a fixed upstream gradient :math:`g = \partial L/\partial m` (the loss is
taken linear in the mask, :math:`L = \langle g, m\rangle`, so :math:`g` is exactly what arrives
at the mask), :func:`estimator_row` runs the estimator of :data:`bgcn.ESTIMATORS` forward and
backward and returns

- the **forward** weights :math:`m_j` the GCN would consume for candidate :math:`j` (hard 0/1,
  soft, or one sample),
- which candidates are **chosen** (``Selection.indices``),
- the **backward** gradient :math:`\partial L/\partial z_j` the estimator gives every
  candidate's score, computed with autograd through the library's estimator (nothing is
  re-implemented here).

:func:`plot_estimator_row` draws both as bar charts side by side (chosen candidates red, the
others grey); :func:`estimator_row_figure` draws the same as a Plotly figure with one precomputed
slider step per value of one hyper-parameter (λ for blackbox, τ for the softmax, the noise for
I-MLE); :func:`plot_toy_row` draws the row itself and its upstream gradient;
:func:`plot_paired_differences` draws a results table's rows against a reference row, paired by
seed (chapter 09's comparison on the digits). Every ``plot_*`` function returns a ``matplotlib``
Figure, :func:`estimator_row_figure` a ``plotly.graph_objects.Figure``.

Taught in: chapter 09 (chapters/09_estimators_1_softmax.md, chapters/09_estimators_2_deterministic.md,
chapters/09_estimators_3_stochastic.md, chapters/09_estimators_4_digits.md).
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Sequence

import numpy as np
import torch

from ..estimators import (ESTIMATORS, SELECTION_ESTIMATORS, get_spec, plackett_luce_log_prob, reinforce_surrogate,
                          row_std)
from ..stats import beyond_noise, paired_difference, paired_runs
from .._checks import check_int, check_k, check_tau

__all__ = [
    "ROW_ESTIMATORS",
    "CHOSEN_COLOUR",
    "OTHER_COLOUR",
    "estimator_row",
    "plot_toy_row",
    "plot_estimator_row",
    "estimator_row_figure",
    "paired_differences",
    "classify_differences",
    "paired_reading",
    "plot_paired_differences",
]

ROW_ESTIMATORS = ("softmax", "masked_softmax") + tuple(SELECTION_ESTIMATORS)
"""The estimators :func:`estimator_row` accepts: the two re-weighting softmaxes and every selection estimator."""

CHOSEN_COLOUR = "#d62728"
"""Bar colour of a chosen candidate (red)."""
OTHER_COLOUR = "#7f7f7f"
"""Bar colour of a candidate that is not chosen (grey)."""

_MAX_ENUM = 20_000  # ordered k-tuples enumerated for the exact REINFORCE expectation


def _row(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(x.detach() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float))
    t = t.to(torch.float64).cpu()
    if t.dim() != 1 or t.numel() < 2:
        raise ValueError(f"{name} must be one row of scores, shape (n,) with n >= 2; got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return t


def estimator_row(name: str, z: Any, k: int, upstream: Any, *, seed: int = 0, samples: int = 8,
                  tau: float = 1.0, **estimator_kw) -> dict:
    r"""Forward weights and backward gradient of one estimator on one row, for a given upstream gradient.

    The loss is linear in what the GCN consumes, so that :math:`\partial L/\partial m = g` exactly:

    - selection estimators (``Selection.dense``): :math:`L = \langle g, m\rangle`,
      :math:`m` = ``dense``, and ``grad`` = :math:`\partial L/\partial z` by autograd through
      the estimator's own backward;
    - ``"softmax"`` / ``"masked_softmax"`` (they only re-weight the hard top-k):
      :math:`L = \sum_{j\in\text{chosen}} g_j w_j`, and :math:`m` is :math:`w` on the chosen
      candidates, 0 elsewhere;
    - ``"gumbel_reinforce"``: ``samples`` Plackett–Luce samples :math:`m^{(s)}`, losses
      :math:`L_s = \langle g, m^{(s)}\rangle`, and ``grad`` = the gradient of
      :func:`bgcn.estimators.reinforce_surrogate` with rewards :math:`-L_s` and the leave-one-out
      baseline, an unbiased estimate of :math:`\nabla_z\,\mathbb E[L]`. The forward shown is
      the first sample. ``exact`` holds :math:`\nabla_z\,\mathbb E[L]` by enumerating every
      ordered k-tuple (when there are at most 20 000 of them, else ``None``).

    Stochastic estimators draw from ``torch.Generator().manual_seed(seed)``; ``estimator_kw`` go
    to the estimator (e.g. ``lam_rel``, ``tau_m``, ``noise_rel``). ``tau`` is the temperature the
    estimator divides ``z`` by (default 1: ``z`` is already :math:`S_{i,:}/\tau`); the softmax's
    weights are then :math:`\softmax(z/\tau)`, and ``grad`` stays :math:`\partial L/\partial z`.
    ``"gumbel_reinforce"`` takes only ``tau = 1`` (its noise scale is ``noise_rel`` or ``tau_noise``).

    Returns a dict: ``name``, ``z`` (n,), ``upstream`` (n,), ``weights`` (n,), ``chosen``
    (n,) bool, ``grad`` (n,) = :math:`\partial L/\partial z`, ``exact`` (n,) or ``None``, all
    float64 NumPy arrays.

    Shapes: z (n,), upstream (n,) -> weights, chosen, grad (n,).

    Taught in: chapter 09 (chapters/09_estimators_1_softmax.md).
    """
    if name not in ROW_ESTIMATORS:
        raise ValueError(f"name={name!r} must be one of {list(ROW_ESTIMATORS)}")
    th = _row(z, "z")
    g = _row(upstream, "upstream")
    if g.shape != th.shape:
        raise ValueError(f"upstream has shape {tuple(g.shape)}; it must match z's {tuple(th.shape)}")
    n = th.shape[0]
    k = check_k(k, n)
    samples = check_int(samples, "samples", 2, hint="the leave-one-out baseline needs two")
    tau = check_tau(tau, "tau")
    if name == "gumbel_reinforce" and tau != 1.0:
        raise ValueError("gumbel_reinforce takes tau=1 here; set its noise scale with noise_rel or tau_noise")
    gen = torch.Generator().manual_seed(int(seed))
    fn = ESTIMATORS[name]
    exact = None
    if name == "gumbel_reinforce":
        rows = th.expand(samples, n).clone().requires_grad_(True)
        sel = fn(rows, k, 1.0, generator=gen, **estimator_kw)
        losses = (sel.dense * g).sum(1)                                   # (S,) L_s = <g, m_s>
        sur = reinforce_surrogate(sel.log_prob.unsqueeze(1), -losses.unsqueeze(1), "loo")
        (grad,) = torch.autograd.grad(sur, rows)
        grad = grad.sum(0)
        weights, idx = sel.dense[0].detach(), sel.indices[0]
        exact = _exact_reinforce(th, k, g, estimator_kw)
    else:
        x = th.unsqueeze(0).clone().requires_grad_(True)
        kw = dict(estimator_kw)
        if get_spec(name).stochastic:
            kw["generator"] = gen
        sel = fn(x, k, tau, **kw)
        idx = sel.indices[0]
        if sel.dense is None:                                            # softmax: re-weights top-k only
            loss = (g[idx] * sel.weights[0]).sum()
            weights = torch.zeros(n, dtype=torch.float64).scatter(0, idx, sel.weights[0].detach())
        else:
            loss = (sel.dense[0] * g).sum()
            weights = sel.dense[0].detach()
        (grad,) = torch.autograd.grad(loss, x)
        grad = grad[0]
    chosen = torch.zeros(n, dtype=torch.bool).scatter(0, idx, True)
    return {"name": name, "z": th.numpy(), "upstream": g.numpy(), "weights": weights.double().numpy(),
            "chosen": chosen.numpy(), "grad": grad.detach().double().numpy(),
            "exact": None if exact is None else exact.numpy()}


def _exact_reinforce(th: torch.Tensor, k: int, g: torch.Tensor, estimator_kw: dict) -> torch.Tensor | None:
    """∇_z E[<g, m>] under the estimator's Plackett–Luce law, by enumerating the ordered k-tuples."""
    n = th.shape[0]
    if math.perm(n, k) > _MAX_ENUM:
        return None
    x = th.unsqueeze(0).clone().requires_grad_(True)
    tau_g = estimator_kw.get("tau_noise")
    scale = tau_g if tau_g is not None else estimator_kw.get("noise_rel", 0.1) * row_std(x.detach())
    logits = (x / scale)[0]
    tuples = torch.tensor(list(itertools.permutations(range(n), k)))
    p = plackett_luce_log_prob(logits.expand(len(tuples), n), tuples).exp()
    loss_t = g[tuples].sum(1)
    (grad,) = torch.autograd.grad((p * loss_t).sum(), x)
    return grad[0].detach()


def plot_toy_row(z: Any, k: int, upstream: Any, *, target: Sequence[int] | None = None):
    r"""Two bar charts of the row the estimator figures use: its scores :math:`z_j` (the hard
    top-k red) and the upstream gradient :math:`g_j = \partial L/\partial m_j` (negative: the loss
    wants candidate j in; positive: out). ``target``: candidate indices marked with a star.

    Shapes: z (n,), upstream (n,) -> matplotlib Figure.

    Taught in: chapter 09 (chapters/09_estimators_1_softmax.md).
    """
    import matplotlib.pyplot as plt

    th, g = _row(z, "z"), _row(upstream, "upstream")
    if g.shape != th.shape:
        raise ValueError(f"upstream has shape {tuple(g.shape)}; it must match z's {tuple(th.shape)}")
    n = th.shape[0]
    k = check_k(k, n)
    chosen = torch.zeros(n, dtype=torch.bool).scatter(0, torch.topk(th, k).indices, True).numpy()
    cols = [CHOSEN_COLOUR if c else OTHER_COLOUR for c in chosen]
    pos = np.arange(1, n + 1)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.0, 2.6))
    a1.bar(pos, th.numpy(), color=cols)
    a2.bar(pos, g.numpy(), color=cols)
    if target is not None:
        for j in target:
            a1.plot(int(j) + 1, float(th[int(j)]), "k*", ms=9)
    a1.set(xlabel="candidate j", ylabel=r"score $z_j$", title=f"the row: top-{k} in red")
    a2.set(xlabel="candidate j", ylabel=r"$g_j = \partial L/\partial m_j$",
           title="upstream gradient (< 0: the loss wants j in)")
    for a in (a1, a2):
        a.set_xticks(pos)
        a.axhline(0, color="k", lw=0.6)
    fig.tight_layout()
    return fig


def plot_estimator_row(name: str, z: Any, k: int, upstream: Any, *, seed: int = 0, samples: int = 8,
                       title: str | None = None, **estimator_kw):
    r"""Forward selection and backward gradient of one estimator on one row, side by side.

    Left: the weight :math:`m_j` of every candidate in the forward pass (what the GCN consumes).
    Right: :math:`-\partial L/\partial z_j`, the direction a gradient-descent step moves each
    score (up: the estimator wants candidate j more). Bars of chosen candidates are red
    (:data:`CHOSEN_COLOUR`), the others grey. For ``"gumbel_reinforce"`` black dots mark the exact
    :math:`-\nabla_z\mathbb E[L]` the REINFORCE estimate is unbiased for. The values are those
    of :func:`estimator_row` with the same arguments; the bar heights equal them exactly.

    Shapes: z (n,), upstream (n,) -> matplotlib Figure with two axes.

    Taught in: chapter 09 (chapters/09_estimators_1_softmax.md).
    """
    import matplotlib.pyplot as plt

    r = estimator_row(name, z, k, upstream, seed=seed, samples=samples, **estimator_kw)
    n = len(r["z"])
    pos = np.arange(1, n + 1)
    cols = [CHOSEN_COLOUR if c else OTHER_COLOUR for c in r["chosen"]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.0, 2.6))
    a1.bar(pos, r["weights"], color=cols)
    a2.bar(pos, -r["grad"], color=cols)
    if r["exact"] is not None:
        a2.plot(pos, -r["exact"], "ko", ms=4, label=r"exact $-\nabla\,\mathbb{E}[L]$")
        a2.legend(fontsize=7, loc="best")
    fwd = "one sample" if name in ("imle", "gumbel_reinforce") else "forward"
    a1.set(xlabel="candidate j", ylabel="weight $m_j$",
           title=f"{title or name}: {fwd}, row sum {r['weights'].sum():.3g}")
    a2.set(xlabel="candidate j", ylabel=r"$-\partial L/\partial z_j$",
           title=f"{title or name}: backward (descent direction)")
    for a in (a1, a2):
        a.set_xticks(pos)
        a.axhline(0, color="k", lw=0.6)
    fig.tight_layout()
    return fig


def estimator_row_figure(name: str, z: Any, k: int, upstream: Any, *, param: str, values: Sequence[float],
                         active: int = 0, seed: int = 0, samples: int = 8, title: str | None = None,
                         scores_name: str = "z", **estimator_kw):
    r"""Plotly figure of :func:`plot_estimator_row` with a slider over one hyper-parameter.

    One slider step per entry of ``values``; each step is a precomputed frame (the figure works on a
    static page) holding :func:`estimator_row` for ``{param: value}``: left, the forward weights
    :math:`m_j`; right, :math:`-\partial L/\partial z_j` (chosen candidates red, the others grey;
    for ``"gumbel_reinforce"`` the exact :math:`-\nabla_z\mathbb E[L]` as black dots). ``param``
    is ``"tau"`` (the temperature :func:`estimator_row` divides ``z`` by: the softmax's) or any
    keyword of the estimator (``"lam_rel"`` for blackbox, ``"noise_rel"`` for I-MLE, ...). Both
    y axes are fixed over the frames, so a gradient that shrinks as the slider moves is seen to
    shrink; each frame's title gives the value, the number of candidates with a non-zero gradient
    and the largest :math:`|\partial L/\partial z_j|`. ``active`` is the step shown first;
    ``scores_name`` is the letter the axes and titles give the row (``"S"`` when the slider is
    the temperature the row is divided by).

    Returns a ``plotly.graph_objects.Figure``; ``fig.frames[i]`` holds the bars of ``values[i]``
    (traces 0 and 1, and 2 for the exact dots).

    Shapes: z (n,), upstream (n,), values (V,) -> figure with V frames / slider steps.

    Taught in: chapter 09 (chapters/09_estimators_2_deterministic.md).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from ._common import _active, _slider

    if not isinstance(param, str) or not param:
        raise TypeError(f"param must be the name of one hyper-parameter, e.g. 'lam_rel'; got {param!r}")
    vals = [float(v) for v in np.asarray(values, dtype=float).reshape(-1)]
    if len(vals) < 2:
        raise ValueError(f"values must hold at least two settings of {param!r} for a slider; got {vals}")
    rows = []
    for v in vals:
        kw = dict(estimator_kw)
        kw[param] = v
        rows.append(estimator_row(name, z, k, upstream, seed=seed, samples=samples, **kw))
    n = len(rows[0]["z"])
    pos = np.arange(1, n + 1)
    a = _active(active, len(vals))
    label = title or name
    top_w = max(1.0, max(float(np.abs(r["weights"]).max()) for r in rows)) * 1.05
    top_g = max(max(float(np.abs(r["grad"]).max()) for r in rows),
                max((float(np.abs(r["exact"]).max()) for r in rows if r["exact"] is not None), default=0.0))
    top_g = 1.1 * top_g if top_g > 0 else 1.0

    def colours(r):
        return [CHOSEN_COLOUR if c else OTHER_COLOUR for c in r["chosen"]]

    def heading(v, r):
        nz = int((r["grad"] != 0).sum())
        big = float(np.abs(r["grad"]).max())
        return (f"{label}, {param} = {v:g}: {nz} of {n} candidates get a gradient, "
                f"largest |∂L/∂{scores_name}| {big:.3g}")

    def traces(r):
        out = [go.Bar(x=pos, y=np.round(r["weights"], 6), marker_color=colours(r), showlegend=False,
                      hovertemplate="candidate %{x}: m = %{y:.4g}<extra></extra>"),
               go.Bar(x=pos, y=np.round(-r["grad"], 6), marker_color=colours(r), showlegend=False,
                      hovertemplate=f"candidate %{{x}}: -dL/d{scores_name} = %{{y:.4g}}<extra></extra>")]
        if r["exact"] is not None:
            out.append(go.Scatter(x=pos, y=np.round(-r["exact"], 6), mode="markers", name="exact −∇E[L]",
                                  marker={"color": "black", "size": 7}))
        return out

    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("forward: weight m<sub>j</sub> the GCN consumes",
                                        f"backward: −∂L/∂{scores_name}<sub>j</sub> (descent direction)"))
    for i, t in enumerate(traces(rows[a])):
        fig.add_trace(t, 1, 2 if i else 1)
    names = [f"{param}={v:g}" for v in vals]
    fig.frames = [go.Frame(name=nm, traces=list(range(len(fig.data))), data=traces(r),
                           layout={"title": {"text": heading(v, r)}})
                  for nm, v, r in zip(names, vals, rows)]
    fig.update_layout(title={"text": heading(vals[a], rows[a]), "font": {"size": 13}}, height=430,
                      margin={"t": 80, "b": 40, "l": 60, "r": 20}, bargap=0.25,
                      sliders=[_slider([f"{v:g}" for v in vals], names, f"{param} = ", active=a, y=-0.2)],
                      legend={"x": 0.99, "xanchor": "right", "y": 1.0, "bgcolor": "rgba(255,255,255,0.8)"})
    fig.update_xaxes(title_text="candidate j", tickmode="linear", dtick=1)
    fig.update_yaxes(title_text="m<sub>j</sub>", range=[0, top_w], row=1, col=1)
    fig.update_yaxes(title_text=f"−∂L/∂{scores_name}<sub>j</sub>", range=[-top_g, top_g], zeroline=True,
                     zerolinecolor="black", row=1, col=2)
    return fig


def paired_differences(runs: Sequence[dict], reference: str, key: str = "test_acc", scale: float = 100.0) -> dict:
    r"""Per row of a results file, the difference to a reference row paired by seed.

    For every row r and every seed s present for both r and ``reference``:
    :math:`d_s = \text{scale}\cdot(x_{r,s} - x_{\text{ref},s})`; returns
    ``{row: {"mean", "std", "n", "se", "diffs"}}`` with the sample standard deviation (ddof 1;
    NaN for one seed) and the standard error :math:`\text{std}/\sqrt n`. ``runs`` is the
    ``"runs"`` list of ``estimators.json`` (dicts with ``row``, ``seed`` and ``key``); runs whose
    ``key`` is missing or ``None`` are skipped. Each row is one call of
    :func:`bgcn.stats.paired_difference` (the same computation as chapter 08's tables), scaled.

    Shapes: runs: list of dicts -> dict of dicts.

    Taught in: chapter 09 (chapters/09_estimators_4_digits.md).
    """
    rows = []
    for r in runs:
        v = r.get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)) and r["row"] not in rows:
            rows.append(r["row"])
    if reference not in rows:
        raise ValueError(f"reference={reference!r} has no runs with {key!r}; rows present: {sorted(rows)}")
    out = {}
    for row in rows:  # the one paired-difference computation, bgcn.stats.paired_difference
        p = paired_difference(paired_runs(runs, row, key), paired_runs(runs, reference, key))
        if not p["n"]:
            continue
        n = p["n"]
        sd = scale * p["std"] if n > 1 else float("nan")
        out[row] = {"mean": scale * p["mean"], "std": sd, "n": n,
                    "se": sd / math.sqrt(n) if n > 1 else float("nan"), "diffs": [scale * x for x in p["diffs"]]}
    return out


def classify_differences(diffs: dict, exclude: Sequence[str] = (), rule: str = "se") -> dict:
    r"""Sort the rows of :func:`paired_differences` into ahead / within / behind a reference.

    ``rule="se"`` (the default, the book's rule, :func:`bgcn.stats.beyond_noise`): a row is
    ``"ahead"`` / ``"behind"`` when its mean paired difference is more than two standard errors
    (:math:`\text{std}(d)/\sqrt n`) above / below zero, ``"within"`` otherwise. With *m* such
    comparisons about *m*/20 pass by chance alone, so the caller names *m*.
    ``rule="std"``: the older reading by one standard deviation of the paired differences
    (:math:`|\bar d| \le \text{std}(d)` is ``"within"``). Either way a row with a single seed
    (no spread to compare with) is ``"one_seed"``, and rows in ``exclude`` (e.g. the reference
    itself) are left out. Each list is ordered by decreasing mean difference.

    Shapes: dict of dicts -> {"ahead", "within", "behind", "one_seed"}: lists of row names.

    Taught in: chapter 09 (chapters/09_estimators_4_digits.md).
    """
    if rule not in ("se", "std"):
        raise ValueError(f"rule must be 'se' (two standard errors, the book's rule) or 'std'; got {rule!r}")
    out = {"ahead": [], "within": [], "behind": [], "one_seed": []}
    for row, d in sorted(diffs.items(), key=lambda kv: -kv[1]["mean"]):
        if row in exclude:
            continue
        if d["n"] < 2 or not math.isfinite(d["std"]):
            out["one_seed"].append(row)
            continue
        if rule == "se":
            counts = beyond_noise(d["mean"], d["std"] / math.sqrt(d["n"]), d["n"])
        else:
            counts = abs(d["mean"]) > d["std"]
        if not counts:
            out["within"].append(row)
        elif d["mean"] > 0:
            out["ahead"].append(row)
        else:
            out["behind"].append(row)
    return out


def paired_reading(runs: Sequence[dict], references: dict, rule: str = "se") -> list[str]:
    r"""One markdown bullet per reference row: every other row ahead / within / behind it.

    For each ``reference -> description`` of ``references``, :func:`paired_differences` against the
    reference, sorted by :func:`classify_differences` with ``rule``. With ``rule="se"`` (the book's
    rule) the line reads ``- against <description> (`ref`, n seeds): ahead beyond 2 se: `row` +d ±
    se; within 2 se: ...`` (mean ± standard error of the paired differences); with ``rule="std"``,
    ``ahead by > 1 std: `row` +d ± std; within one std: ...``.

    Shapes: runs: list of dicts -> list of str.

    Taught in: chapter 09 (chapters/09_estimators_4_digits.md).
    """
    if not isinstance(references, dict) or not references:
        raise ValueError("references must be a non-empty dict {reference row: description}")
    spread = "se" if rule == "se" else "std"
    lines = []
    for ref, what in references.items():
        d = paired_differences(runs, ref)
        cls = classify_differences(d, exclude=[ref], rule=rule)
        parts = []
        for kind in ("ahead", "within", "behind"):
            if cls[kind]:
                rows = ", ".join(f"`{r}` {d[r]['mean']:+.1f} ± {d[r][spread]:.1f}" for r in cls[kind])
                if rule == "se":
                    how = "within 2 se" if kind == "within" else f"{kind} beyond 2 se"
                else:
                    how = "within one std" if kind == "within" else f"{kind} by > 1 std"
                parts.append(f"{how}: {rows}")
        if cls["one_seed"]:
            parts.append("one seed only: " + ", ".join(f"`{r}`" for r in cls["one_seed"]))
        n = max(v["n"] for v in d.values())
        lines.append(f"- against {what} (`{ref}`, {n} seeds): " + "; ".join(parts))
    return lines


def plot_paired_differences(panels: Sequence[tuple[str, dict]], *, unit: str = "points"):
    r"""Horizontal bars of paired differences (:func:`paired_differences`), one panel per reference.

    ``panels``: ``[(title, {row: {"mean", "std", ...}}), ...]``. Each bar is a mean difference over
    seeds, its error bar one standard deviation of the paired differences; the seeds' own
    differences are dots.

    Shapes: panels of dicts -> matplotlib Figure.

    Taught in: chapter 09 (chapters/09_estimators_4_digits.md).
    """
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError("panels must hold at least one (title, differences) pair")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), sharey=True, squeeze=False)
    rows = list(panels[0][1])
    for ax, (title, diffs) in zip(axes[0], panels):
        ys = np.arange(len(rows))
        mean = [diffs[r]["mean"] if r in diffs else np.nan for r in rows]
        sd = [diffs[r]["std"] if r in diffs else np.nan for r in rows]
        ax.barh(ys, mean, xerr=np.nan_to_num(sd), color="#1f77b4", alpha=0.7, capsize=3)
        for y, r in zip(ys, rows):
            if r in diffs:
                ax.plot(diffs[r]["diffs"], [y] * len(diffs[r]["diffs"]), "k.", ms=4)
        ax.axvline(0, color="k", lw=0.8)
        ax.set(title=title, xlabel=f"difference ({unit})")
        ax.set_yticks(ys)
        ax.set_yticklabels(rows)
        ax.invert_yaxis()
    fig.tight_layout()
    return fig
