"""The progress bar of the training loops (tqdm).

Taught in: chapter 08 (chapters/08_end_to_end_2_tau_n.md).
"""
from __future__ import annotations

import os
import sys

__all__ = ["progress_enabled", "pbar"]


def progress_enabled(progress: bool | None = None) -> bool:
    """Whether to show a tqdm bar: ``progress`` if given, else only on a terminal and without ``TQDM_DISABLE``.

    (tqdm reads its ``TQDM_*`` variables once, when it is imported, and an explicit ``disable=``
    overrides them; this reads ``TQDM_DISABLE`` at call time, so a notebook can set it late.)

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_2_tau_n.md).
    """
    if progress is not None:
        return bool(progress)
    if os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def pbar(iterable, enabled: bool, **kw):
    """``tqdm(iterable)``, shown when ``enabled``.

    Shapes: none.

    Taught in: chapter 08 (chapters/08_end_to_end_2_tau_n.md).
    """
    from tqdm.auto import tqdm  # at call time: tqdm.auto probes IPython, which `import bgcn` must not load

    return tqdm(iterable, disable=not enabled, dynamic_ncols=True, **kw)
