"""The one home of argument checks: every public function of :mod:`bgcn` validates its input here.

Each check returns the value it accepted (converted: a NumPy integer becomes an ``int``, a NumPy
float a ``float``) or raises one line naming the argument, the valid values and the fix:

- a value of the wrong *type* raises :class:`ArgumentTypeError`, which is both a ``TypeError``
  and a ``ValueError`` (so callers that caught either keep working);
- a value of the right type outside its range raises ``ValueError``.

``bool`` is refused wherever an int or a number is asked for (``True`` is an ``int`` in Python,
but ``epochs=True`` is a mistake), and NaN/Inf wherever a finite number is.

Shapes: none (scalars and the tensors they check).

Taught in: no chapter (argument checking; see CONTRIBUTING.md).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import torch

__all__ = [
    "ArgumentTypeError",
    "MAX_LR",
    "check_bool",
    "check_choice",
    "check_finite",
    "check_int",
    "check_k",
    "check_lr",
    "check_mask",
    "check_number",
    "check_optional_positive",
    "check_positive",
    "check_seed",
    "check_tau",
    "check_tensor",
]

#: The largest learning rate :func:`check_lr` accepts. Above it an optimiser step moves a weight
#: by more than 1000 times its gradient: every model here diverges in one step, and values near
#: ``1e38`` overflow float32 inside the optimiser ("value cannot be converted to type float").
MAX_LR = 10.0


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type: both a ``TypeError`` and a ``ValueError`` (bad argument).

    Shapes: none (an exception).

    Taught in: no chapter (argument checking; see CONTRIBUTING.md).
    """


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def check_int(value: Any, name: str, minimum: int | None = None, maximum: int | None = None, *,
              optional: bool = False, hint: str | None = None) -> int | None:
    """Check that ``value`` is an int (NumPy integers too, ``bool`` refused) in ``[minimum, maximum]``.

    Either bound may be ``None`` (open). ``optional=True`` lets ``None`` through (returned as is);
    ``hint`` is a short reason shown in brackets after the valid values (e.g. ``"1: evaluate every
    epoch"``). Returns ``int(value)``.

    Example: ``check_int(0, "epochs", 1)`` raises ``ValueError: epochs=0 must be an int >= 1; ...``.

    Shapes: none (a scalar).

    Taught in: no chapter (argument checking; see CONTRIBUTING.md).
    """
    if optional and value is None:
        return None
    lo = "" if minimum is None else f" >= {minimum}"
    hi = "" if maximum is None else f" <= {maximum}"
    want = ("None or " if optional else "") + f"an int{lo}{' and' if lo and hi else ''}{hi}" \
        + (f" ({hint})" if hint else "")
    example = minimum if minimum is not None else (maximum if maximum is not None else 1)
    if not _is_int(value):
        raise ArgumentTypeError(f"{name} must be {want}, got {type(value).__name__} {value!r}; "
                                f"pass a whole number such as {name}={example}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name}={value} must be {want}; pass e.g. {name}={example}")
    return value


def check_number(value: Any, name: str, minimum: float = -math.inf, maximum: float = math.inf, *,
                 open_min: bool = False, open_max: bool = False, optional: bool = False,
                 hint: str | None = None) -> float | None:
    r"""Check that ``value`` is a finite number in the interval from ``minimum`` to ``maximum``.

    The interval is closed unless ``open_min`` / ``open_max`` (e.g. dropout :math:`p \in [0, 1)`:
    ``check_number(p, "dropout", 0, 1, open_max=True)``). NumPy scalars and one-element tensors
    are accepted; ``bool``, NaN and ±Inf are refused. ``optional=True`` lets ``None`` through;
    ``hint`` is a short reason shown in brackets after the valid values. Returns ``float(value)``.

    Shapes: none (a scalar).

    Taught in: no chapter (argument checking; see CONTRIBUTING.md).
    """
    parts = []
    if math.isfinite(minimum):
        parts.append(f"{'>' if open_min else '>='} {_fmt(minimum)}")
    if math.isfinite(maximum):
        parts.append(f"{'<' if open_max else '<='} {_fmt(maximum)}")
    if optional and value is None:
        return None
    want = ("None or " if optional else "") + "a finite number" + (" " + " and ".join(parts) if parts else "") \
        + (f" ({hint})" if hint else "")
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype == torch.bool:
        value = value.item()
    if not _is_number(value):
        raise ArgumentTypeError(f"{name} must be {want}, got {type(value).__name__} {value!r}; pass a float")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}={value} must be {want}; NaN and Inf are not allowed")
    low = value <= minimum if open_min else value < minimum
    high = value >= maximum if open_max else value > maximum
    if low or high:
        raise ValueError(f"{name}={value:g} must be {want}; choose a value in that range")
    return value


def check_positive(value: Any, name: str) -> float:
    """Check that a hyper-parameter is a finite number > 0 and return it as float.

    A one-element tensor is accepted and converted with ``float``.

    Shapes: none (a scalar).

    Taught in: no chapter (argument checking; see CONTRIBUTING.md).
    """
    if not _is_number(value):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = float(value)
        else:
            raise ArgumentTypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value} must be a finite number > 0")
    return value


def check_optional_positive(value: Any, name: str) -> float | None:
    """``None``, or a finite number > 0 (:func:`check_positive`).

    Shapes: none (a scalar).

    Taught in: no chapter (argument checking; see CONTRIBUTING.md).
    """
    return None if value is None else check_positive(value, name)


def check_tau(tau: Any, name: str = "tau") -> float:
    """Temperature check: finite and > 0 (τ → 0 is the hard limit; pass the hard estimator instead).

    Shapes: none (τ is a scalar).

    Taught in: chapter 05 (chapters/05_temperature_1_weights.md).
    """
    return check_positive(tau, name)


def check_lr(value: Any, name: str = "lr", maximum: float = MAX_LR) -> float:
    r"""Check a learning rate: a finite number in :math:`[0, \text{maximum}]` (default :data:`MAX_LR`).

    0 is allowed (that parameter group does not move). Returns ``float(value)``.

    Shapes: none (a scalar).

    Taught in: no chapter (argument checking; see CONTRIBUTING.md).
    """
    if _is_number(value) and math.isfinite(float(value)) and float(value) > maximum:
        raise ValueError(f"{name}={float(value):g} is too large: a learning rate must be a finite number in "
                         f"[0, {maximum:g}] ({name} <= {maximum:g}); use e.g. {name}=1e-3")
    return check_number(value, name, 0.0, maximum)


def check_bool(value: Any, name: str, optional: bool = False, *, hint: str | None = None) -> bool | None:
    """Check that ``value`` is ``True`` or ``False`` (NumPy ``bool_`` too; ``None`` when ``optional``).

    ``0``/``1`` and strings are refused: ``resume="no"`` would otherwise be true. ``hint`` is a
    short reason shown in brackets after the valid values.

    Shapes: none (a scalar).

    Taught in: no chapter (argument checking; see CONTRIBUTING.md).
    """
    if optional and value is None:
        return None
    if not isinstance(value, (bool, np.bool_)):
        want = ("True, False or None" if optional else "True or False") + (f" ({hint})" if hint else "")
        raise ArgumentTypeError(f"{name} must be {want}, got {type(value).__name__} {value!r}; "
                                f"pass {name}=True or {name}=False")
    return bool(value)


def check_choice(value: Any, name: str, choices: Iterable[Any], *, hint: str | None = None) -> Any:
    """Check that ``value`` is one of ``choices`` and return it (``True`` is not the choice ``1``).

    ``hint`` is a short reason appended to the error (e.g. what each choice means).

    Shapes: none.

    Taught in: no chapter (argument checking; see CONTRIBUTING.md).
    """
    choices = list(choices)
    try:  # True == 1: a bool is a choice only where the choices are bools
        ok = any(bool(c == value) and isinstance(c, bool) == isinstance(value, bool) for c in choices)
    except Exception:  # noqa: BLE001 - an incomparable value is not a choice
        ok = False
    if not ok:
        raise ValueError(f"{name}={value!r} is not valid: use one of {choices}" + (f" ({hint})" if hint else ""))
    return value


def check_seed(seed: Any, name: str = "seed") -> int:
    """Check that a seed is an int in ``[0, 2**64)`` (what ``torch.manual_seed`` takes) and return it.

    Shapes: none (a scalar).

    Taught in: no chapter (argument checking; see CONTRIBUTING.md).
    """
    if not _is_int(seed):
        raise ArgumentTypeError(f"{name} must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"{name}={seed} is out of range; a seed must be an int in [0, 2**64 - 1]")
    return seed


def check_k(k: Any, n: int, name: str = "k", exclude_self: bool = False) -> int:
    """Check ``1 <= k <= n`` (``n - 1`` when the node itself is excluded) and return ``int(k)``.

    Shapes: none (k and n are counts: k neighbours among n candidates per row).

    Taught in: no chapter (argument checking; see CONTRIBUTING.md).
    """
    if not _is_int(k):
        raise ArgumentTypeError(f"{name} must be an int, got {type(k).__name__}")
    k = int(k)
    hi = n - 1 if exclude_self else n
    if k <= 0:
        raise ValueError(f"{name}={k} must be positive; choose 1 <= {name} <= {hi}")
    if k > hi:
        extra = " (the node itself is excluded)" if exclude_self else ""
        raise ValueError(f"{name}={k} is larger than the {hi} candidates per row{extra}; choose 1 <= {name} <= {hi}")
    return k


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise ``ValueError`` if ``x`` holds NaN or Inf (says how many); return ``x``.

    Shapes: x: any.

    Taught in: no chapter (argument checking; see CONTRIBUTING.md).
    """
    bad = ~torch.isfinite(x.detach())
    if bool(bad.any()):
        n = int(bad.sum())
        raise ValueError(f"{name} contains {n} NaN/Inf value(s); clean the input (e.g. torch.nan_to_num) first")
    return x


def check_tensor(x: Any, name: str, ndim: int | tuple[int, ...] | None = None, finite: bool = True,
                 floating: bool = True) -> torch.Tensor:
    """Check that ``x`` is a tensor with the expected number of dimensions, floating and finite.

    Raises ``TypeError`` (not a tensor, not floating) or ``ValueError`` (wrong ``x.dim()``, NaN/Inf),
    naming ``name`` and the fix; returns ``x`` unchanged.

    Shapes: x: any shape whose number of dimensions is in ``ndim``.

    Taught in: no chapter (argument checking used by every public function; see CONTRIBUTING.md).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}; wrap it with torch.as_tensor(...)")
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in dims:
            want = " or ".join(str(d) for d in dims)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}; call .float()")
    if finite and x.numel() and floating:
        check_finite(x, name)
    return x


def check_mask(mask: Any, n: int, name: str, device: torch.device | str | None = None,
               required: bool = False) -> torch.Tensor | None:
    """Check a node mask: a bool tensor of shape ``(n,)`` (``None`` allowed unless ``required``).

    ``required=True`` also refuses a mask that selects no node. The mask is moved to ``device``
    when one is given.

    Shapes: mask (N,) bool -> (N,) bool on ``device``.

    Taught in: no chapter (argument checking; see CONTRIBUTING.md).
    """
    if mask is None:
        if required:
            raise ValueError(f"{name} is required: a (N,) bool tensor marking the labelled nodes")
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ArgumentTypeError(f"{name} must be a bool torch.Tensor of shape (N,), got "
                                f"{mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__}; "
                                f"build it with a comparison or torch.zeros({n}, dtype=torch.bool)")
    if mask.shape != (n,):
        raise ValueError(f"{name} has shape {tuple(mask.shape)} but there are N={n} images; it must be ({n},)")
    if required and not bool(mask.any()):
        raise ValueError(f"{name} selects no node; label at least one image")
    return mask if device is None else mask.to(device)
