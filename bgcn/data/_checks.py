"""Argument checks shared by the data modules."""
from __future__ import annotations

from typing import Any

import numpy as np


def check_int(value: Any, name: str, minimum: int | None) -> int:
    """``value`` as an int (a Python or NumPy integer, not a bool), at least ``minimum``.

    Shapes: none (a scalar).
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return value
