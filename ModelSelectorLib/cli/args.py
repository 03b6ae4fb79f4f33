"""Argument types of the command line that refuse values which would give a wrong answer without an error
(``--top 0``, ``--threshold nan``, a negative count); argparse turns the refusal into a one-line error."""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not {'an integer' if kind is int else 'a number'}"
        ) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def finite_float(text: str) -> float:
    """Any finite number (a margin in a metric's units)."""
    return float(_number(text, float))


def metric_name(text: str) -> str:
    """A ranking metric of a family the evaluations compute (``dice``, ``dice_<label>``, ``hd95``, ``mre_mm``,
    ``sdr_4``, ...), refused at once rather than after every model was evaluated; whether the cases hold that
    exact metric (a label's name) is checked when they are scored."""
    from ..evaluation.metrics import METRIC_FAMILIES

    if text.split("_", 1)[0].lower() not in METRIC_FAMILIES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a metric; use one of {', '.join(METRIC_FAMILIES)}, or one per label or group such as "
            "dice_<label> or mre_mm_<group>"
        )
    return text


def positive_int(text: str) -> int:
    """An integer of 1 or more (a count of things to list, epochs, threads)."""
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer of 0 or more."""
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (minutes, a scale)."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {value:g}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number of 0 or more (a loss weight)."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value:g}")
    return value


def fraction(text: str) -> float:
    """A finite number from 0 to 1 (a score threshold, a fraction)."""
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {value:g}")
    return value


def open_fraction(text: str) -> float:
    """A finite number strictly between 0 and 1 (a rate or a confidence level)."""
    value = _number(text, float)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be above 0 and below 1, not {value:g}")
    return value


def fold_list(text: str) -> list[int | str]:
    """Comma-separated cross-validation folds (integers of 0 or more) and ``final`` (the model trained on every
    case; :data:`~ModelSelectorLib.starter_zoo.build.FINAL_RUN`)."""
    from ..starter_zoo.build import FINAL_RUN

    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(
            f"{text!r}: name folds (0, 1, ...) and/or {FINAL_RUN}, comma-separated"
        )
    out: list[int | str] = []
    for t in items:
        if t != FINAL_RUN and not (t.isdigit() and t.isascii()):
            raise argparse.ArgumentTypeError(f"{t!r} is neither a fold number (0, 1, ...) nor {FINAL_RUN}")
        out.append(t if t == FINAL_RUN else int(t))
    return out


def origins(text: str) -> tuple[str, ...]:
    """Comma-separated prototype origins, each one of :data:`~ModelSelectorLib.selection.prototypes.ORIGINS`."""
    from ..selection.prototypes import ORIGINS

    chosen = tuple(o.strip() for o in text.split(",") if o.strip())
    unknown = [o for o in chosen if o not in ORIGINS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(ORIGINS)} (comma-separated)")
    return chosen


__all__ = [
    "fold_list",
    "fraction",
    "non_negative_int",
    "open_fraction",
    "origins",
    "positive_float",
    "positive_int",
]
