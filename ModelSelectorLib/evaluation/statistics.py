"""Summaries of per-case figures for reports: mean, standard deviation and a bootstrap confidence interval."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def bootstrap_interval(
    values: Sequence[float], n_resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (cases resampled with replacement).

    Returns:
        ``(low, high)``; ``(nan, nan)`` without finite values.
    """
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(int(n_resamples), v.size))].mean(axis=1)
    tail = (1.0 - float(level)) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def sample_std(values: Sequence[float]) -> float:
    """The sample standard deviation of ``values`` (``ddof=1``: an estimate over cases drawn from many, as
    challenge tables give it); 0 for a single value."""
    v = np.asarray(values, dtype=float)
    return float(v.std(ddof=1)) if v.size > 1 else 0.0


def describe(values: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """``{"mean", "std" (sample, :func:`sample_std`), "ci95": [low, high], "n"}`` of the finite ``values``."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "ci95": [float("nan")] * 2, "n": 0}
    lo, hi = bootstrap_interval(v, seed=seed)
    return {"mean": float(v.mean()), "std": sample_std(v), "ci95": [lo, hi], "n": int(v.size)}


__all__ = ["bootstrap_interval", "describe", "sample_std"]
