"""Reference files of the landmark task and the per-case scores of a prediction against them.

A reference is a ``<id>_landmarks.json`` beside its image (the chest X-ray landmark set's format): groups of
``[x, y]`` pixel coordinates (x right, y down) and a ``_meta`` block with ``pixel_spacing_mm``; a lung-field mask
``<id>_lungmask.png`` beside it, if present, lets the lung contours be scored by Dice as well.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..errors import DatasetError
from .landmark_schema import GROUPS, LUNG_GROUPS, LandmarkSchema

PathLike = Union[str, Path]

#: JSRT raw pixel size (mm at 2048 px), used when a JSRT case's JSON does not state its spacing
JSRT_RAW_SPACING_MM = 0.175
JSRT_RAW_SIZE = 2048


#: how far (a share of the image's side) a landmark may lie outside its image: the shared data's lie inside it
OUTSIDE_MARGIN = 0.05


def read_landmark_json(
    path: PathLike,
    schema: LandmarkSchema,
    image_width: Optional[int] = None,
    image_shape: Optional[tuple[int, int]] = None,
) -> tuple[np.ndarray, np.ndarray, Optional[float], dict[str, Any]]:
    """Read a ``<id>_landmarks.json``.

    Args:
        image_width: the image's width in pixels (a JSRT case's spacing follows from it).
        image_shape: the image's ``(height, width)`` in pixels: points far outside it are refused (they are in
            another image's pixels, e.g. a 1024 px annotation of a 512 px image).

    Returns:
        ``(points (P, 2) original px with NaN for missing, mask (P,), spacing_mm or None, meta)``.
        The spacing is ``_meta.pixel_spacing_mm``; for a JSRT case (``_meta.jsrt_id``) that does not
        state it, ``0.175 mm * 2048 / image_width``.

    Raises:
        DatasetError: unreadable JSON, a group with the wrong number of points, a point that is not a number
            (null, NaN), or points outside the image of ``image_shape``.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable landmark JSON ({e}).") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: must hold an object with groups such as 'RL': [[x, y], ...].")
    pts = np.full((schema.n_points, 2), np.nan)
    mask = np.zeros(schema.n_points, dtype=bool)
    k = 0
    for group, idx in schema.indices.items():
        values = data.get(group)
        if values is not None:
            arr = _group_points(values, group, path)
            if arr.ndim != 2 or arr.shape != (GROUPS[group], 2):
                raise DatasetError(
                    f"{path}: group '{group}' has shape {arr.shape}; expected ({GROUPS[group]}, 2) [x, y] points "
                    "(every point of the contour, in order); complete the group, leave it out of the file (its "
                    "points are then not scored), or move the file out of the data folder."
                )
            if not np.isfinite(arr).all():
                raise DatasetError(
                    f"{path}: group '{group}' has {int((~np.isfinite(arr).all(axis=1)).sum())} point(s) that are not "
                    "numbers (null, NaN or infinite); give every point of the group, or leave the group out of the file."
                )
            _check_inside(arr, image_shape, group, path)
            pts[k : k + len(idx)] = arr[idx]
            mask[k : k + len(idx)] = True
        k += len(idx)
    meta = data.get("_meta") if isinstance(data.get("_meta"), dict) else {}
    spacing = meta.get("pixel_spacing_mm")
    if spacing is None and meta.get("jsrt_id") and image_width:
        spacing = JSRT_RAW_SPACING_MM * JSRT_RAW_SIZE / float(image_width)
    return pts, mask, (float(spacing) if spacing else None), meta


def _group_points(values: Any, group: str, path: Path) -> np.ndarray:
    """A group's ``[[x, y], ...]`` as floats (NaN where a value is null)."""
    try:
        return np.asarray(
            [[np.nan if v is None else v for v in p] if isinstance(p, list) else p for p in values],
            dtype=float,
        )
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path}: group '{group}' is not a list of [x, y] numbers ({e}).") from None


def _check_inside(points: np.ndarray, image_shape: Optional[tuple[int, int]], group: str, path: Path) -> None:
    """Refuse points far outside an image of ``image_shape`` ``(height, width)``."""
    if image_shape is None:
        return
    size = np.array([image_shape[1], image_shape[0]], dtype=float)  # (x, y)
    margin = OUTSIDE_MARGIN * size
    outside = ((points < -margin) | (points > size - 1 + margin)).any(axis=1)
    if outside.any():
        far = np.abs(points).max(axis=0)
        raise DatasetError(
            f"{path}: {int(outside.sum())} point(s) of group '{group}' lie outside the {int(size[0])} x {int(size[1])} "
            f"px image (up to x {far[0]:.0f}, y {far[1]:.0f}); the points must be in this image's pixels (x right, "
            "y down), not another copy's (e.g. a 1024 px annotation of a 512 px image): scale them."
        )


def contour_mask(points: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The filled polygon of ``points`` ``(n, 2)`` ``(x, y)`` (pixel centres) as a ``(H, W)`` bool mask."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    h, w = int(shape[0]), int(shape[1])
    canvas = PILImage.new("L", (w, h), 0)
    pts = np.asarray(points, float)
    if len(pts) >= 3 and np.isfinite(pts).all():
        ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in pts], fill=1, outline=1)
    return np.asarray(canvas, bool)


def lung_dice(points_px: np.ndarray, schema: LandmarkSchema, mask: np.ndarray) -> float:
    """Dice of the filled right and left lung contours ``points_px`` (``(P, 2)`` original pixels, ``x, y``)
    against a lung-field ``mask`` ``(H, W)``; NaN when the schema has no lung contour or the mask is empty."""
    truth = np.asarray(mask, bool)
    pred = np.zeros_like(truth)
    lungs = [g for g in LUNG_GROUPS if len(schema.channels(g)) >= 3]
    if not lungs or not truth.any():
        return float("nan")
    for g in lungs:
        pred |= contour_mask(np.asarray(points_px)[schema.channels(g)], truth.shape)
    return float(2.0 * (pred & truth).sum() / max(int(pred.sum() + truth.sum()), 1))


def score_points(
    pred_px: np.ndarray,
    truth_px: np.ndarray,
    mask: np.ndarray,
    spacing_mm: Optional[float],
    radii: Sequence[float] = (2.0, 4.0, 10.0),
    radii_px: Sequence[float] = (5.0, 10.0),
) -> dict[str, float]:
    """Scores of one case's predicted points against the reference, both ``(P, 2)`` in original pixels.

    Returns:
        ``{"mre_px", "rmse_px", "sdr_px_<r>", "mre_mm", "sdr_<r>"}`` (mm figures NaN without a spacing) over the
        annotated landmarks (``mask``).
    """
    m = np.asarray(mask, bool)
    err = np.linalg.norm(np.asarray(pred_px, float)[m] - np.asarray(truth_px, float)[m], axis=1)
    nan = float("nan")
    out = {
        "mre_px": float(err.mean()) if err.size else nan,
        "rmse_px": float(np.sqrt((err**2).mean())) if err.size else nan,
    }
    out.update({f"sdr_px_{r:g}": float((err <= r).mean()) if err.size else nan for r in radii_px})
    mm = err * float(spacing_mm) if spacing_mm else None
    out["mre_mm"] = float(mm.mean()) if mm is not None and mm.size else nan
    out.update({f"sdr_{r:g}": float((mm <= r).mean()) if mm is not None and mm.size else nan for r in radii})
    return out


__all__ = ["contour_mask", "lung_dice", "read_landmark_json", "score_points"]
