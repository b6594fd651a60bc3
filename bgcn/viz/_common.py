"""Shared parts of the figures: the class palette, array and argument checks, Plotly sliders, the renderer."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .._checks import check_int, check_tau

__all__ = ["QUALITATIVE", "set_plotly_renderer", "glueable"]


#: Qualitative palette for classes (Plotly's "D3" / matplotlib's tab10 colours), 10 classes.
QUALITATIVE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
               "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
_SAME_EDGE = "rgba(90,90,90,0.55)"
_CROSS_EDGE = "rgba(214,39,40,0.8)"
_ANIM = {"mode": "immediate", "frame": {"duration": 0, "redraw": True}, "transition": {"duration": 0}}


def _np(x: Any, name: str, ndim: int | None = None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x)
    except Exception as e:  # pragma: no cover - numpy rarely refuses
        raise TypeError(f"{name} must be array-like (a tensor, numpy array or list), got {type(x).__name__}") from e
    if a.dtype == object:
        raise TypeError(f"{name} must be numeric array-like, got {type(x).__name__}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {a.shape}")
    return a


def _colour(c: int) -> str:
    return QUALITATIVE[int(c) % len(QUALITATIVE)]


def _check_positions(positions: Any, n: int | None = None, name: str = "positions") -> np.ndarray:
    p = _np(positions, name, 2).astype(float)
    if p.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {p.shape}; use bgcn.viz.layout_2d(features)")
    if n is not None and p.shape[0] != n:
        raise ValueError(f"{name} has {p.shape[0]} rows but there are N={n} nodes")
    if not np.isfinite(p).all():
        raise ValueError(f"{name} contains NaN/Inf")
    return p


def _check_labels(labels: Any, n: int) -> np.ndarray:
    lab = _np(labels, "labels", 1)
    if lab.shape[0] != n:
        raise ValueError(f"labels has {lab.shape[0]} entries but there are N={n} nodes")
    if not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"labels must be integer class ids, got dtype {lab.dtype}")
    return lab.astype(int)


def _check_taus(taus: Any, name: str = "taus") -> list[float]:
    t = _np(taus, name).reshape(-1).tolist()
    if not t:
        raise ValueError(f"{name} is empty; pass at least one temperature, e.g. numpy.logspace(-3, 1, 25)")
    return [check_tau(float(v), name) for v in t]


def _slider(labels: Sequence[str], frame_names: Sequence[str], prefix: str, active: int = 0,
            y: float = -0.08) -> dict:
    return dict(active=active, currentvalue={"prefix": prefix, "font": {"size": 14}}, pad={"t": 40, "b": 10},
                x=0.05, len=0.9, y=y, yanchor="top",
                steps=[dict(method="animate", label=lab, args=[[nm], _ANIM]) for lab, nm in zip(labels, frame_names)])


def _active(active: Any, n_steps: int) -> int:
    a = check_int(active, "active", -n_steps, n_steps - 1,
                  hint=f"the index of the first slider step; there are {n_steps} steps")
    return a % n_steps


def _play_buttons(y: float = -0.08) -> dict:
    return dict(type="buttons", showactive=False, direction="left", x=0.0, y=y, xanchor="right", yanchor="top",
                pad={"t": 40, "r": 10},
                buttons=[dict(label="▶", method="animate",
                              args=[None, {"mode": "immediate", "fromcurrent": True,
                                           "frame": {"duration": 600, "redraw": True}, "transition": {"duration": 0}}]),
                         dict(label="❚❚", method="animate", args=[[None], _ANIM])])


def set_plotly_renderer(renderer: str = "notebook_connected") -> str:
    """Set ``plotly.io.renderers.default`` (default ``"notebook_connected"``) and return the old one.

    ``"notebook_connected"`` writes each figure as HTML that loads plotly.js from its CDN: it shows in
    Jupyter and in Jupyter Book 1 pages (a bare ``fig.show()`` with the default renderer there gives
    "skipping unknown output mime type" and an empty figure).

    Shapes: none (returns the previous renderer's name).

    Taught in: chapter 05 (chapters/05_temperature_1_weights.md).
    """
    import plotly.io as pio

    if not isinstance(renderer, str) or not renderer:
        raise TypeError(f"renderer must be a non-empty str such as 'notebook_connected', got {renderer!r}")
    old = pio.renderers.default
    pio.renderers.default = renderer
    return old


class _Glueable:
    """A figure and nothing but its mime bundle (see :func:`glueable`)."""

    def __init__(self, figure: Any):
        self.figure = figure

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.figure._repr_mimebundle_()


def glueable(figure: Any) -> _Glueable:
    """A Plotly figure as ``myst_nb.glue`` can store it, so that ``{glue:figure}`` gives it a number.

    A Plotly figure displays itself (``_ipython_display_``), which ``glue`` cannot capture: glued as
    it is, it lands in the cell's output and the ``{glue:figure}`` stays empty. Wrapped,
    ``glue("name", glueable(fig), display=False)`` stores the figure's mime bundle under the current
    renderer (the book's ``notebook_connected``, set for every kernel by ``scripts/bookext.py``; this
    sets no renderer), and the renderer's plotly.js loader stays in the cell's output, above the
    figure. ``glueable(fig).figure`` is ``fig``.

    Shapes: none.

    Taught in: chapter 09 (chapters/09_estimators_2_deterministic.md).
    """
    if not hasattr(figure, "_repr_mimebundle_") or not hasattr(figure, "frames"):
        raise TypeError(f"figure must be a plotly.graph_objects.Figure, got {type(figure).__name__}")
    return _Glueable(figure)
