"""Argument types of the command line: argparse turns their ArgumentTypeError into
``argument --flag: message`` (exit 2); and the constants behind the ``auto`` values."""
from __future__ import annotations

import argparse
import difflib
import math

from ..estimators import ESTIMATORS
from ..utils import get_device

__all__ = ["TAU_MIN", "SEED_MAX", "LR_BACKBONE_RANDOM", "LR_BACKBONE_PRETRAINED", "WARMUP_SHARE"]


def _parse_number(text: str, kind: type, minimum: float, strict: bool):
    """``kind(text)`` checked against ``minimum`` (``> minimum`` if ``strict`` else ``>=``); finite."""
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(v) or (v <= minimum if strict else v < minimum):
        what = "an integer" if kind is int else "a finite number"
        raise argparse.ArgumentTypeError(f"{text} must be {what} {'>' if strict else '>='} {minimum}")
    return v


def _positive_int(text: str) -> int:
    return _parse_number(text, int, 0, strict=True)


def _nonneg_int(text: str) -> int:
    return _parse_number(text, int, 0, strict=False)


def _positive_float(text: str) -> float:
    return _parse_number(text, float, 0, strict=True)


def _nonneg_float(text: str) -> float:
    return _parse_number(text, float, 0, strict=False)


def _probability(text: str) -> float:
    v = _nonneg_float(text)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"{text} must lie in [0, 1)")
    return v


#: The smallest temperature the CLI takes. Scores are cosines in [-1, 1], so scores/τ reach 1/τ and
#: the softmax's gradient scales with 1/τ: at τ = 1e-8 a cosine gap of one float32 rounding step
#: (6e-8) already becomes a logit gap of 6, a hard argmax, and below it only overflow is left
#: (float32 ends at 3.4e38, so τ < 3e-39 makes scores/τ infinite).
TAU_MIN = 1e-8

#: Seeds are ints in [0, SEED_MAX]: torch's generators take 64 bits and the runs seed with seed + 1.
SEED_MAX = 2**63 - 1


def _tau(text: str) -> float | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        v = _positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"tau={text!r} must be a number > 0 or 'auto' (chosen from the data)") from None
    if v < TAU_MIN:
        raise argparse.ArgumentTypeError(
            f"tau={text} is below {TAU_MIN:g}: scores/tau (cosines in [-1, 1]) would reach {1 / v:.1e} and the "
            f"softmax is a hard argmax whose gradient scales with 1/tau; use tau >= {TAU_MIN:g} or 'auto'")
    return v


#: ``--lr-backbone auto``: from random weights, and with --pretrained-file (measured in issue 9 on
#: generated folders of 120 images and on the digits: 1e-3 from random weights beat 1e-4 and 3e-4).
LR_BACKBONE_RANDOM = 1e-3
LR_BACKBONE_PRETRAINED = 1e-4
#: ``--warmup-epochs auto`` is this share of --epochs (rounded down).
WARMUP_SHARE = 0.25


def _auto_or(kind):
    """An argument type that takes 'auto' or what ``kind`` takes."""
    def parse(text: str):
        return "auto" if text.strip().lower() == "auto" else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def _seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= v <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"seed {text} is out of range; use an integer in [0, 2**63 - 1]")
    return v


def _estimator(text: str) -> str:
    if text not in ESTIMATORS:
        close = difflib.get_close_matches(text, list(ESTIMATORS), n=2)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise argparse.ArgumentTypeError(f"unknown estimator {text!r}{hint}; "
                                         f"choose one of {', '.join(sorted(ESTIMATORS))}")
    return text


def _device(text: str) -> str:
    try:
        get_device(text)
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text
