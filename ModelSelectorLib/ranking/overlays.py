"""The per-case overlays of a dashboard: one slice of a case with the ground truth and the prediction drawn over it.

* Contours of a label map (:func:`render_overlay`): ground truth in GREEN, prediction in RED (:data:`GT_COLOR`,
  :data:`PRED_COLOR`), on the slice with the most ground truth (:func:`representative_slice`).
* Points (:func:`render_points_overlay`): a landmark model's true points green, predicted ones red.

The slice is drawn as a viewer shows it (:func:`ModelSelectorLib.io.viewing.as_viewed`), whatever voxel order the
file stored: an axial slice of a volume in radiological layout (the patient's left on the screen's right,
anterior up), a radiograph or other lone slice in its own plane in the same convention, so that a volume
stored R-A-S (MSD NIfTI) and the same volume stored L-P-S (DICOM) give the same picture.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import numpy as np

from .. import atomic
from ..errors import InputError
from ..io.image import Image
from ..io.viewing import as_viewed

PathLike = Union[str, "os.PathLike[str]"]

#: contour colours of the overlays (RGB 0-1): ground truth green, prediction red
GT_COLOR = (0.0, 1.0, 0.0)
PRED_COLOR = (1.0, 0.0, 0.0)
#: width of overlay images in pixels
OVERLAY_PX = 200
#: the plane of a lone slice, by the world axis (L, P, S) its normal runs nearest to
_PLANES = ("sagittal", "coronal", "axial")


def representative_slice(truth: np.ndarray, pred: Optional[np.ndarray] = None) -> int:
    """Index along the first array axis (``z`` of a ``(z, y, x)`` array) with the most ground-truth voxels;
    the prediction's when the ground truth is empty; the middle slice when both are."""
    for mask in (truth, pred):
        if mask is None:
            continue
        area = np.count_nonzero(np.asarray(mask).reshape(mask.shape[0], -1), axis=1)
        if area.max(initial=0) > 0:
            return int(np.argmax(area))
    return int(truth.shape[0] // 2)


class ViewedSlice(NamedTuple):
    """One slice of a case as a viewer shows it: image, truth and prediction ``(y, x)`` (x to the screen's right,
    y down), pixel size ``(x, y)`` in mm, and which slice it is (e.g. ``"axial slice 12 of 40 (from the feet)"``;
    empty for a 2D image)."""

    image: np.ndarray
    truth: np.ndarray
    pred: np.ndarray
    spacing: tuple[float, float]
    caption: str


def _label_array(labels: Union[Image, np.ndarray]) -> np.ndarray:
    arr = np.asarray(labels.array if isinstance(labels, Image) else labels)
    return arr.astype(np.uint8) if arr.dtype == bool else arr  # SimpleITK has no boolean pixels


def viewed_slice(
    image: Image, truth: Union[Image, np.ndarray], pred: Union[Image, np.ndarray]
) -> ViewedSlice:
    """The slice of a case that its overlay shows, laid out as a viewer shows it (:func:`as_viewed`): for a
    volume, the axial slice (voxels reordered to L, P, S axes) with the most ground truth.

    Args:
        image: the case's image (2D or 3D; a colour image is shown in grey).
        truth, pred: label maps on ``image``'s grid (images, or arrays ``(z, y, x)`` / ``(y, x)``).

    Raises:
        InputError: image, truth and prediction have different shapes.
    """
    if image.is_multicomponent:
        image = image.to_grayscale()
    truth_arr, pred_arr = _label_array(truth), _label_array(pred)
    if truth_arr.shape != image.array.shape or pred_arr.shape != image.array.shape:
        raise InputError(
            f"overlay: image {image.array.shape}, truth {truth_arr.shape} and prediction {pred_arr.shape} differ."
        )
    laid, laid_truth = as_viewed(image, image.with_array(truth_arr))
    laid_pred = as_viewed(image.with_array(pred_arr))[0]  # the same grid, so the same layout
    arr, t, p = laid.array, laid_truth.array, laid_pred.array
    caption = ""
    if arr.ndim == 3:
        k = representative_slice(t, p)
        if image.is_single_slice:
            normal = image.direction_matrix()[:, image.slice_axis]
            caption = f"{_PLANES[int(np.argmax(np.abs(normal)))]} slice"
        else:
            caption = f"axial slice {k + 1} of {arr.shape[0]} (from the feet)"
        arr, t, p = arr[k], t[k], p[k]
    # only the slice drawn becomes float: a large volume costs no copy of its own
    return ViewedSlice(
        arr.astype(np.float32), t, p, (float(laid.spacing[0]), float(laid.spacing[1])), caption
    )


def _window(slab: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(slab, [1.0, 99.0]) if slab.size else (0.0, 1.0)
    return np.clip((slab - lo) / max(float(hi - lo), 1e-8), 0.0, 1.0)


def draw_slice(view: ViewedSlice, path: PathLike, width_px: int = OVERLAY_PX) -> Path:
    """Write a PNG of ``view`` with the ground-truth contour (green) and the prediction's (red) over it; every
    label is outlined. The height follows the physical aspect ratio (spacing). Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    arr, (sx, sy) = view.image, view.spacing
    h_mm, w_mm = arr.shape[0] * sy, arr.shape[1] * sx
    dpi = 100
    fig = plt.figure(figsize=(width_px / dpi, max(width_px * h_mm / w_mm, 16) / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    extent = (0, w_mm, h_mm, 0)
    ax.imshow(_window(arr), cmap="gray", vmin=0, vmax=1, extent=extent, interpolation="bilinear")
    for mask, color in ((view.truth, GT_COLOR), (view.pred, PRED_COLOR)):
        for value in np.unique(mask[mask > 0]):
            m = (mask == value).astype(np.float32)
            ys = (np.arange(m.shape[0]) + 0.5) * sy
            xs = (np.arange(m.shape[1]) + 0.5) * sx
            ax.contour(xs, ys, m, levels=[0.5], colors=[color], linewidths=2.0, antialiased=False)
    ax.set_xlim(0, w_mm)
    ax.set_ylim(h_mm, 0)
    return atomic.save_figure(fig, path, dpi=dpi)


def render_overlay(
    image: Image,
    truth: Union[Image, np.ndarray],
    pred: Union[Image, np.ndarray],
    path: PathLike,
    width_px: int = OVERLAY_PX,
) -> Path:
    """Write a PNG of a representative slice (:func:`viewed_slice`) with the ground-truth contour (green) and
    the prediction's (red).

    Args:
        image: the case's image (2D or 3D; a colour image is shown in grey).
        truth, pred: label maps on ``image``'s grid, ``(z, y, x)`` or ``(y, x)``; every label is outlined.
        path: output PNG (written atomically).
        width_px: image width in pixels; the height follows the physical aspect ratio (spacing).

    Returns:
        ``path``.
    """
    return draw_slice(viewed_slice(image, truth, pred), path, width_px)


def render_points_overlay(
    image: Image, drawn: Mapping[str, Any], path: PathLike, width_px: int = OVERLAY_PX
) -> Path:
    """Write a PNG of a 2D image with a runtime's predicted points (``overlay()``: ``points_lps`` ``(n, 3)`` and
    ``point_colors``) over it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    img = image.to_grayscale() if image.is_multicomponent else image
    flat = img.as_2d() if img.is_single_slice else img
    arr = np.asarray(flat.array, dtype=np.float32)
    if arr.ndim != 2:
        raise InputError(f"overlay: points are drawn on 2D images; got an image of shape {arr.shape}.")
    m = flat.ijk_to_lps()
    pts = np.asarray(drawn.get("points_lps", np.zeros((0, 3))), float)[:, :2]
    xy = np.linalg.solve(m[:2, :2], (pts - m[:2, 2]).T).T if len(pts) else np.zeros((0, 2))
    h, w = arr.shape
    dpi = 100
    fig = plt.figure(figsize=(width_px / dpi, max(width_px * h / w, 16) / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.imshow(_window(arr), cmap="gray", vmin=0, vmax=1, interpolation="bilinear")
    colors = drawn.get("point_colors") or [PRED_COLOR] * len(xy)
    ax.scatter(xy[:, 0], xy[:, 1], s=3, c=[tuple(c) for c in colors][: len(xy)])
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    return atomic.save_figure(fig, path, dpi=dpi)


def truth_and_prediction_points(prediction: Any, reference: PathLike) -> dict[str, Any]:
    """What :func:`render_points_overlay` draws for a landmark case: the true points of ``reference`` (a
    ``<id>_landmarks.json`` in pixels of the image) in :data:`GT_COLOR` and the predicted ones in
    :data:`PRED_COLOR`, both in LPS mm of the prediction's 2D image.

    Args:
        prediction: a landmark :class:`~ModelSelectorLib.models.base.Prediction` (``value`` ``(P, 3)`` LPS,
            ``names`` ``GROUP_NN``).
        reference: its true points; points the file lacks are not drawn.
    """
    from ..models.landmark_schema import LandmarkSchema
    from ..models.landmark_scoring import read_landmark_json

    image = prediction.image.to_grayscale() if prediction.image.is_multicomponent else prediction.image
    flat = image.as_2d() if image.is_single_slice else image
    # the points the scorer compares with (the file's spacing does not matter for a picture)
    truth_px, _, _, _ = read_landmark_json(reference, LandmarkSchema.from_names(prediction.names))
    truth_px = truth_px[np.isfinite(truth_px).all(axis=1)]
    m = flat.ijk_to_lps()
    truth = np.zeros((len(truth_px), 3))
    truth[:, :2] = truth_px @ m[:2, :2].T + m[:2, -1]
    pred = np.asarray(prediction.value, float).reshape(-1, 3)
    return {"points_lps": np.concatenate([truth, pred]),
            "point_colors": [GT_COLOR] * len(truth) + [PRED_COLOR] * len(pred)}  # fmt: skip


__all__ = [
    "GT_COLOR",
    "OVERLAY_PX",
    "PRED_COLOR",
    "ViewedSlice",
    "draw_slice",
    "render_overlay",
    "render_points_overlay",
    "representative_slice",
    "truth_and_prediction_points",
    "viewed_slice",
]
