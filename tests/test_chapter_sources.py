"""Static checks on the chapter sources (no execution): what a live notebook needs.

A chapter must not set Plotly's renderer: the book build sets ``PLOTLY_RENDERER`` for its kernels
(scripts/bookext.py), and ``notebook_connected`` in a live JupyterLab calls ``Plotly.newPlot``
before its ``<script src>`` has loaded, so every figure is blank after Run All.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.md"))


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_does_not_set_plotly_renderer(path):
    text = path.read_text(encoding="utf-8")
    bad = [m.group(0) for m in re.finditer(r"^.*(renderers\.default\s*=|set_plotly_renderer\().*$", text, re.M)]
    assert not bad, f"{path.name} sets the Plotly renderer ({bad}); leave it to the book build"
