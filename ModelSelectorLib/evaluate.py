"""Evaluation of segmentation and landmark models on labelled test cases.

Segmentation metrics are computed per case and per label with MONAI (``monai.metrics``) in physical units:

* ``dice``: Dice overlap, 0-1 (higher is better). Both masks empty -> 1.0.
* ``hd95``: 95th-percentile symmetric Hausdorff distance in mm (lower is better), using the voxel spacing.
* ``msd``: mean symmetric surface distance in mm (lower is better), using the voxel spacing.

A label present in the ground truth but missing from the prediction (or the reverse) has no surface distance;
it gets the image diagonal in mm, the largest distance possible inside the image, so that summary statistics
and paired tests stay defined and such failures rank last. Both absent -> 0 mm.

Landmark metrics: radial (Euclidean) error per landmark in mm, mean radial error (MRE) and the success
detection rate (SDR) at given radii.

Array layout follows :mod:`ModelSelectorLib.io`: ``(z, y, x)`` / ``(y, x)`` arrays with spacing in ITK order
``(x, y[, z])``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .errors import InputError
from .io import Image

#: metrics of segmentation cases and whether a higher value is better
SEGMENTATION_METRICS = {"dice": True, "hd95": False, "msd": False}
#: metrics of landmark cases and whether a higher value is better
LANDMARK_METRICS = {"mre": False, "sdr2": True, "sdr4": True}


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better (``dice``, ``dice_<label>``, ``sdr*``) or worse
    (``hd95``, ``msd``, ``mre``, ``*_error``, distances)."""
    base = metric.split("_", 1)[0].lower()
    if base in SEGMENTATION_METRICS:
        return SEGMENTATION_METRICS[base]
    if base in LANDMARK_METRICS:
        return LANDMARK_METRICS[base]
    return base.startswith(("dice", "sdr", "acc", "auc", "iou", "sens", "spec", "prec", "recall"))


def _diagonal_mm(shape: Sequence[int], spacing_zyx: Sequence[float]) -> float:
    return float(math.sqrt(sum((float(n) * float(s)) ** 2 for n, s in zip(shape, spacing_zyx))))


def segmentation_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    labels: Mapping[int, str],
) -> dict[str, dict[str, float]]:
    """Dice, HD95 and mean surface distance of each label of one case.

    Args:
        pred: predicted label map, ``(z, y, x)`` or ``(y, x)`` integers.
        truth: ground-truth label map of the same shape.
        spacing: voxel size in mm in ITK order ``(x, y[, z])``.
        labels: ``{label value: name}`` of the foreground labels to score (0 = background is never scored).

    Returns:
        ``{name: {"dice": 0-1, "hd95": mm, "msd": mm}}``.

    Raises:
        InputError: shapes or dimensions disagree, or no label to score.
    """
    import torch
    from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance

    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise InputError(
            f"prediction shape {pred.shape} differs from the ground truth's {truth.shape}; "
            "resample the prediction onto the label's grid first."
        )
    if len(spacing) != pred.ndim:
        raise InputError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {pred.ndim}D label map.")
    fg = {int(v): str(n) for v, n in labels.items() if int(v) != 0}
    if not fg:
        raise InputError("no foreground label to evaluate; pass labels such as {1: 'liver'}.")
    spacing_zyx = [float(s) for s in reversed(list(spacing))]
    diagonal = _diagonal_mm(pred.shape, spacing_zyx)
    out: dict[str, dict[str, float]] = {}
    for value, name in sorted(fg.items()):
        p = torch.from_numpy((pred == value)[None, None].astype(np.float32))
        t = torch.from_numpy((truth == value)[None, None].astype(np.float32))
        p_any, t_any = bool(p.any()), bool(t.any())
        if not p_any and not t_any:
            out[name] = {"dice": 1.0, "hd95": 0.0, "msd": 0.0}
            continue
        dice = float(compute_dice(p, t, include_background=True, ignore_empty=False)[0, 0])
        if p_any and t_any:
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
            hd = float(compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=spacing_zyx)[0, 0])  # fmt: skip
            msd = float(compute_average_surface_distance(p, t, include_background=True, symmetric=True, spacing=spacing_zyx)[0, 0])  # fmt: skip
        else:
            hd = msd = diagonal
        out[name] = {"dice": dice, "hd95": hd, "msd": msd}
    return out


def case_summary(per_label: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Flatten per-label metrics of one case: the mean over labels (``dice``, ``hd95``, ``msd``) and
    ``<metric>_<label>`` for each label."""
    out: dict[str, float] = {}
    names = list(per_label)
    for metric in SEGMENTATION_METRICS:
        vals = [float(per_label[n][metric]) for n in names]
        out[metric] = float(np.mean(vals)) if vals else float("nan")
    if len(names) > 1:
        for n in names:
            for metric in SEGMENTATION_METRICS:
                out[f"{metric}_{n}"] = float(per_label[n][metric])
    return out


def evaluate_segmentation(prediction: Image, truth: Image, labels: Mapping[int, str]) -> dict[str, Any]:
    """Metrics of one predicted :class:`~ModelSelectorLib.io.Image` against its ground truth.

    The two images must share size and spacing (a prediction from :func:`~ModelSelectorLib.infer.apply_model`
    does: it has exactly its input's geometry).

    Returns:
        ``{"per_label": {name: {dice, hd95, msd}}, **case_summary}``.

    Raises:
        InputError: the grids differ.
    """
    if prediction.size != truth.size or not np.allclose(prediction.spacing, truth.spacing, rtol=1e-4):
        raise InputError(
            f"prediction grid (size {prediction.size}, spacing {prediction.spacing}) differs from the ground "
            f"truth's (size {truth.size}, spacing {truth.spacing}); apply the model to the label's own image."
        )
    per = segmentation_metrics(prediction.array, truth.array, truth.spacing, labels)
    return {"per_label": per, **case_summary(per)}


def evaluate_bundle(
    bundle: Any,
    cases: Sequence[Mapping[str, Any]],
    labels: Optional[Mapping[int, str]] = None,
    device: str = "cpu",
    cancel: Optional[Any] = None,
    on_case: Optional[Callable[[str, Image, Image, Image], Optional[dict[str, Any]]]] = None,
    desc: str = "evaluate",
) -> list[dict[str, Any]]:
    """Apply a segmentation bundle to labelled cases and score every case.

    Args:
        bundle: bundle folder or :class:`~ModelSelectorLib.bundle.LoadedBundle`.
        cases: ``[{"id", "image", "label"}]`` (file paths); the same list for every model compared.
        labels: ``{value: name}`` to score (default: the card's labels).
        device: torch device.
        cancel: Event-like; raises :class:`~ModelSelectorLib.errors.Cancelled` between cases.
        on_case: called as ``on_case(id, image, truth, prediction)``; a returned dict is merged into the
            case's result (e.g. the path of an overlay image).
        desc: progress bar text.

    Returns:
        one dict per case: ``{"id", "per_label": {...}, "dice", "hd95", "msd", ...}``.
    """
    from .bundle import load_bundle
    from .infer import apply_model
    from .io import read_image
    from .progress import check_cancel, progress_bar

    loaded = load_bundle(bundle, device=device) if not hasattr(bundle, "card") else bundle
    if labels is None:
        labels = {int(lb["value"]): str(lb["name"]) for lb in loaded.card.labels}
    results = []
    for case in progress_bar(list(cases), desc=desc):
        check_cancel(cancel)
        image = read_image(case["image"])
        truth = read_image(case["label"], check_content=False)
        if truth.is_multicomponent:
            truth = truth.to_grayscale()
        truth = truth.with_array(np.asarray(truth.array).astype(np.int32))
        pred = apply_model(loaded, image, device=device, cancel=cancel)
        res: dict[str, Any] = {"id": str(case.get("id", Path(str(case["image"])).name))}
        res.update(evaluate_segmentation(pred, truth, labels))
        if on_case is not None:
            res.update(on_case(res["id"], image, truth, pred) or {})
        results.append(res)
    return results


# --- landmarks ------------------------------------------------------------------------------------------
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


__all__ = [
    "LANDMARK_METRICS",
    "SEGMENTATION_METRICS",
    "case_summary",
    "evaluate_bundle",
    "evaluate_segmentation",
    "higher_is_better",
    "landmark_metrics",
    "radial_errors",
    "segmentation_metrics",
]
