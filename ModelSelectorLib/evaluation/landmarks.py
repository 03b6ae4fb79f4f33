"""Landmark metrics: radial error per landmark, mean radial error (MRE), success detection rate (SDR) at
given radii, and whether a predicted contour crosses itself."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from ..datasets.landmarks import LandmarkCase
from ..errors import InputError
from ..models.landmark_scoring import contour_mask, lung_dice  # noqa: F401  (re-exported)
from ..models.landmarks import LUNG_GROUPS, LandmarkSchema


def radial_errors(
    pred: np.ndarray, truth: np.ndarray, spacing: Optional[Sequence[float]] = None
) -> np.ndarray:
    """Euclidean distance per landmark.

    Args:
        pred, truth: ``(n_landmarks, d)`` positions, in mm, or in voxels when ``spacing`` is given.
        spacing: voxel size per coordinate (same order as the coordinates) to convert voxels to mm.

    Returns:
        ``(n_landmarks,)`` errors in mm (NaN where either position is NaN: a landmark not found).
    """
    p, t = np.asarray(pred, dtype=float), np.asarray(truth, dtype=float)
    if p.shape != t.shape or p.ndim != 2:
        raise InputError(f"landmark arrays must both be (n, d); got {p.shape} and {t.shape}.")
    d = p - t
    if spacing is not None:
        if len(spacing) != p.shape[1]:
            raise InputError(f"spacing {tuple(spacing)} does not match {p.shape[1]}-D landmarks.")
        d = d * np.asarray(spacing, dtype=float)
    return np.sqrt(np.sum(d**2, axis=1))


def landmark_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    names: Optional[Sequence[str]] = None,
    spacing: Optional[Sequence[float]] = None,
    radii: Sequence[float] = (2.0, 4.0),
) -> dict[str, Any]:
    """Radial error per landmark, mean radial error and success detection rates of one case.

    Returns:
        ``{"per_landmark": {name: error mm}, "mre": mm, "sdr<r>": fraction within r mm, ...}``.
    """
    err = radial_errors(pred, truth, spacing)
    names = list(names) if names is not None else [f"L{i + 1}" for i in range(len(err))]
    if len(names) != len(err):
        raise InputError(f"{len(names)} landmark names for {len(err)} landmarks.")
    finite = err[np.isfinite(err)]
    out: dict[str, Any] = {"per_landmark": {n: float(e) for n, e in zip(names, err)}}
    out["mre"] = float(finite.mean()) if finite.size else float("nan")
    for r in radii:
        out[f"sdr{r:g}"] = float(np.mean(np.nan_to_num(err, nan=np.inf) <= float(r)))
    return out


def case_radial_errors(
    pred: np.ndarray,
    true: np.ndarray,
    mask: np.ndarray,
    scale: Sequence[float],
    spacing_mm: Optional[Sequence[float]] = None,
) -> tuple[np.ndarray, str]:
    """Radial errors of one case's landmarks predicted on a resized grid, in original pixels or mm.

    Args:
        pred, true: ``(P, 2)`` ``(x, y)`` in the resized grid.
        mask: ``(P,)`` landmarks to score.
        scale: ``(sx, sy)`` original pixels per resized pixel.
        spacing_mm: ``(sx, sy)`` mm per original pixel, or None.

    Returns:
        ``(errors (P,) with NaN where masked, unit)``; unit ``"mm"`` or ``"px"`` (original pixels).
    """
    s = np.asarray(scale, float)
    err = radial_errors(np.asarray(pred, float) * s, np.asarray(true, float) * s, spacing_mm)
    return np.where(np.asarray(mask, bool), err, np.nan), ("mm" if spacing_mm is not None else "px")


def success_detection_rate(errors: np.ndarray, radii: Sequence[float]) -> dict[str, float]:
    """Fraction of (non-NaN) errors within each radius: ``{"sdr_2": 0.4, ...}``."""
    e = np.asarray(errors, float)
    e = e[np.isfinite(e)]
    return {f"sdr_{r:g}": float((e <= r).mean()) if e.size else float("nan") for r in radii}


def _segments_intersect(p1: np.ndarray, p2: np.ndarray, q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Proper intersection of segments p1-p2 and q1-q2 (broadcast arrays ``(..., 2)``)."""

    def cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a[..., 0] - o[..., 0]) * (b[..., 1] - o[..., 1]) - (a[..., 1] - o[..., 1]) * (
            b[..., 0] - o[..., 0]
        )

    d1, d2 = cross(q1, q2, p1), cross(q1, q2, p2)
    d3, d4 = cross(p1, p2, q1), cross(p1, p2, q2)
    return (d1 * d2 < 0) & (d3 * d4 < 0)


def polygon_self_intersects(polygon: np.ndarray, closed: bool = True) -> bool:
    """True when two non-adjacent edges of ``polygon`` (``(N, 2)``) cross."""
    pts = np.asarray(polygon, float)
    if len(pts) < 4 or not np.isfinite(pts).all():
        return False
    a = pts
    b = np.roll(pts, -1, axis=0) if closed else pts[1:]
    if not closed:
        a = pts[:-1]
    n = len(a)
    i, j = np.triu_indices(n, k=2)
    keep = ~((i == 0) & (j == n - 1)) if closed else np.ones(len(i), bool)
    i, j = i[keep], j[keep]
    return bool(_segments_intersect(a[i], b[i], a[j], b[j]).any())


def evaluate_predictions(
    preds: np.ndarray,
    cases: Sequence[LandmarkCase],
    schema: LandmarkSchema,
    radii: Sequence[float] = (2.0, 4.0, 10.0),
    radii_px: Sequence[float] = (5.0, 10.0),
) -> dict[str, Any]:
    """Metrics of predictions ``(N, P, 2)`` (resized grid) against ``cases``.

    Returns:
        ``{"mre_mm", "mre_px", "mre_mm_<group>", "mre_px_<group>", "rmse_px", "sdr_<r>" (within r mm, cases with
        spacing), "sdr_px_<r>" (within r original pixels, all cases), "self_intersection" (fraction of cases with a
        self-intersecting predicted lung contour), "n_cases", "n_cases_mm", "per_case_mre_mm", "per_case_mre_px"
        (lists in case order; NaN where a case has no spacing)}``. ``mre_px`` is in original pixels over all
        cases, ``mre_mm`` over cases whose spacing is known. Both are pooled over points, as the detection rates
        are: a case with fewer points (a Shenzhen image's 94 against JSRT's 166) weighs less than in the mean of
        ``per_case_mre_*``, which the leaderboard and the promotion gate use; over JSRT images alone the two agree.
    """
    groups = schema.group_of
    mm, px, per_mm = [], [], []
    bad = 0
    for pred, case in zip(preds, cases):
        e_px, _ = case_radial_errors(pred, case.points, case.mask, case.scale, None)
        px.append(e_px)
        e_mm = np.full(len(e_px), np.nan)
        if case.spacing_mm is not None:
            e_mm, _ = case_radial_errors(pred, case.points, case.mask, case.scale, case.spacing_mm)
            mm.append(e_mm)
        per_mm.append(_nanmean(e_mm))
        for g in LUNG_GROUPS:
            ch = schema.channels(g)
            if len(ch) >= 4 and polygon_self_intersects(pred[ch]):
                bad += 1
                break
    px_a = np.array(px) if px else np.zeros((0, schema.n_points))
    mm_a = np.array(mm) if mm else np.zeros((0, schema.n_points))
    out: dict[str, Any] = {"n_cases": len(px), "n_cases_mm": len(mm)}
    out["mre_mm"] = _nanmean(mm_a)
    out["mre_px"] = _nanmean(px_a)
    out["rmse_px"] = float(np.sqrt(_nanmean(px_a**2)))
    for g in schema.groups:
        sel = groups == g
        out[f"mre_mm_{g}"] = _nanmean(mm_a[:, sel])
        out[f"mre_px_{g}"] = _nanmean(px_a[:, sel])
    out.update(success_detection_rate(mm_a, radii))
    out.update({f"sdr_px_{k[4:]}": v for k, v in success_detection_rate(px_a, radii_px).items()})
    out["self_intersection"] = bad / max(len(px), 1)
    out["per_case_mre_mm"] = [float(v) for v in per_mm]
    out["per_case_mre_px"] = [_nanmean(e) for e in px]
    return out


def paired_comparison(
    variant: np.ndarray, baseline: np.ndarray, level: float = 0.95, n_boot: int = 10000, seed: int = 0
) -> dict[str, float]:
    """Whether ``variant`` has lower errors than ``baseline`` on the same images and seeds.

    Args:
        variant, baseline: ``(S, N)`` per-image errors (seeds x images; the same seeds, splits and images).

    Returns:
        ``{"mean_diff"`` (variant minus baseline, negative = variant better), ``"ci_low", "ci_high"`` (a paired
        bootstrap over images and seeds, resampled independently), ``"p_wilcoxon"`` (one-sided Wilcoxon
        signed-rank test on the per-image differences averaged over seeds: is the variant lower?),
        ``"n_images", "n_seeds"}``.
    """
    from scipy.stats import wilcoxon

    a, b = np.asarray(variant, float), np.asarray(baseline, float)
    if a.shape != b.shape or a.ndim != 2:
        raise InputError(
            f"paired errors must be (seeds, images) arrays of one shape; got {a.shape}, {b.shape}."
        )
    keep = np.isfinite(a).all(0) & np.isfinite(b).all(0)
    d = (a - b)[:, keep]
    if d.size == 0:
        nan = float("nan")
        return {
            "mean_diff": nan,
            "ci_low": nan,
            "ci_high": nan,
            "p_wilcoxon": nan,
            "n_images": 0,
            "n_seeds": 0,
        }
    rng = np.random.default_rng(seed)
    s, n = d.shape
    si = rng.integers(0, s, size=(n_boot, s))
    ni = rng.integers(0, n, size=(n_boot, n))
    boot = np.array([d[si[k]][:, ni[k]].mean() for k in range(n_boot)])
    lo, hi = np.percentile(boot, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    per_image = d.mean(0)
    p = 1.0 if np.allclose(per_image, 0.0) else float(wilcoxon(per_image, alternative="less").pvalue)
    return {"mean_diff": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi), "p_wilcoxon": p,
            "n_images": int(n), "n_seeds": int(s)}  # fmt: skip


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (family-wise error over ``p_values``), in input order."""
    p = np.asarray(p_values, float)
    order = np.argsort(p)
    adj = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adj[i] = running
    return [float(v) for v in adj]


def _nanmean(a: np.ndarray) -> float:
    a = np.asarray(a, float)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


__all__ = [
    "case_radial_errors",
    "contour_mask",
    "evaluate_predictions",
    "holm",
    "lung_dice",
    "paired_comparison",
    "landmark_metrics",
    "polygon_self_intersects",
    "radial_errors",
    "success_detection_rate",
]
