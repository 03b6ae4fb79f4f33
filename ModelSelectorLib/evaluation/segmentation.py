"""Segmentation metrics of labelled test cases, with MONAI (``monai.metrics``) in physical units.

* ``dice``: Dice overlap, 0-1 (higher is better). Both masks empty -> 1.0.
* ``hd95``: 95th-percentile symmetric Hausdorff distance in mm (lower is better), using the voxel spacing.
* ``msd``: mean symmetric surface distance in mm (lower is better), using the voxel spacing.
* ``nsd`` (when a tolerance is given): normalised surface Dice at that tolerance in mm, 0-1 (higher is better;
  the Medical Segmentation Decathlon's second metric).

A label present in the ground truth but missing from the prediction (or the reverse) has no surface distance;
it gets the image diagonal in mm, the largest distance possible inside the image, so that summary statistics
and paired tests stay defined and such failures rank last. Both absent -> 0 mm.

A picture without a pixel size (PNG, JPEG; :attr:`~ModelSelectorLib.io.Image.pixel_size_known`) has no mm: its
distances are in its pixels, named ``hd95_px`` and ``msd_px`` (``hd95_px_<label>``, ...), and the case says
``"distance_unit": "px"``.

A label that no case of an evaluated set holds in its ground truth cannot be measured on that set (its Dice would
only count false positives): :func:`evaluate_bundle` leaves it out of every case's mean and lists it as
``not_measured``, as training leaves it out of the validation figure.

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

from ..datasets.labelmaps import align_label, as_label_map, remap_values
from ..errors import InputError
from ..io.image import Image, read_image
from ..models.segmentation import apply_model
from ..progress import check_cancel, progress_bar
from ..zoo.bundle import load_bundle
from .metrics import SEGMENTATION_METRICS, higher_is_better  # noqa: F401  (re-exported for ranking)


def _diagonal_mm(shape: Sequence[int], spacing_zyx: Sequence[float]) -> float:
    return float(math.sqrt(sum((float(n) * float(s)) ** 2 for n, s in zip(shape, spacing_zyx))))


def segmentation_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    labels: Mapping[int, str],
    nsd_tolerance: Optional[float] = None,
) -> dict[str, dict[str, float]]:
    """Dice, HD95 and mean surface distance (and normalised surface Dice) of each label of one case.

    Args:
        pred: predicted label map, ``(z, y, x)`` or ``(y, x)`` integers.
        truth: ground-truth label map of the same shape.
        spacing: voxel size in mm in ITK order ``(x, y[, z])``.
        labels: ``{label value: name}`` of the foreground labels to score (0 = background is never scored).
        nsd_tolerance: tolerance in mm of the normalised surface Dice (MONAI ``compute_surface_dice``);
            ``None``: no NSD.

    Returns:
        ``{name: {"dice": 0-1, "hd95": mm, "msd": mm[, "nsd": 0-1]}}``.

    Raises:
        InputError: shapes or dimensions disagree, or no label to score.
    """
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

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
            out[name] = {"dice": 1.0, "hd95": 0.0, "msd": 0.0, **({"nsd": 1.0} if nsd_tolerance else {})}
            continue
        dice = float(compute_dice(p, t, include_background=True, ignore_empty=False)[0, 0])
        if p_any and t_any:
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
            hd = float(compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=spacing_zyx)[0, 0])  # fmt: skip
            msd = float(compute_average_surface_distance(p, t, include_background=True, symmetric=True, spacing=spacing_zyx)[0, 0])  # fmt: skip
        else:
            hd = msd = diagonal
        out[name] = {"dice": dice, "hd95": hd, "msd": msd}
        if nsd_tolerance:
            nsd = compute_surface_dice(
                p, t, [float(nsd_tolerance)], include_background=True, spacing=spacing_zyx
            )
            out[name]["nsd"] = float(nsd[0, 0]) if p_any and t_any else 0.0
    return out


def case_summary(per_label: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Flatten per-label metrics of one case: the mean over labels (``dice``, ``hd95``, ``msd``) and
    ``<metric>_<label>`` for each label."""
    out: dict[str, float] = {}
    names = list(per_label)
    metrics = [m for m in (*SEGMENTATION_METRICS, "nsd") if names and m in per_label[names[0]]]
    for metric in metrics:
        vals = [float(per_label[n][metric]) for n in names]
        out[metric] = float(np.mean(vals)) if vals else float("nan")
    if len(names) > 1:
        for n in names:
            for metric in metrics:
                out[f"{metric}_{n}"] = float(per_label[n][metric])
    return out


#: the metrics in mm, which a picture without a pixel size has in pixels instead (``<metric>_px``)
DISTANCE_METRICS = ("hd95", "msd")


def summary_in_unit(summary: Mapping[str, float], unit: str = "mm") -> dict[str, float]:
    """A :func:`case_summary` with its distances named for ``unit``: unchanged for ``"mm"``; for ``"px"``
    ``hd95`` -> ``hd95_px`` and ``hd95_<label>`` -> ``hd95_px_<label>`` (likewise ``msd``)."""
    if unit == "mm":
        return dict(summary)
    out = {}
    for key, value in summary.items():
        base = key.split("_", 1)[0]
        out[f"{base}_{unit}{key[len(base) :]}" if base in DISTANCE_METRICS else key] = value
    return out


def evaluate_segmentation(
    prediction: Image,
    truth: Image,
    labels: Mapping[int, str],
    truth_path: Optional[str] = None,
    pixel_size_known: Optional[bool] = None,
) -> dict[str, Any]:
    """Metrics of one predicted :class:`~ModelSelectorLib.io.Image` against its ground truth.

    The two are compared voxel by voxel on the prediction's grid (a prediction from
    :func:`~ModelSelectorLib.infer.apply_model` has exactly its input's geometry): a truth whose size, spacing,
    origin or direction differ is first put on that grid by nearest neighbour, as training puts a label on its
    image's (:func:`~ModelSelectorLib.datasets.labelmaps.align_label`).

    Args:
        truth_path: the truth's file, named in errors (default: its ``meta["path"]``).
        pixel_size_known: whether the image has a pixel size (default: the prediction's
            :attr:`~ModelSelectorLib.io.Image.pixel_size_known`); without one, distances are in pixels (module
            docstring).

    Returns:
        ``{"per_label": {name: {dice, hd95, msd}}, **case_summary}`` (``per_label`` distances in the case's
        ``distance_unit``, when it names one).

    Raises:
        DatasetError: the truth's header does not place its foreground on the prediction's grid.
    """
    if not truth.same_geometry(prediction):
        truth = align_label(truth, prediction, truth_path or truth.meta.get("path", "the ground truth"))
    per = segmentation_metrics(prediction.array, truth.array, prediction.spacing, labels)
    known = prediction.pixel_size_known if pixel_size_known is None else pixel_size_known
    if known:
        return {"per_label": per, **case_summary(per)}
    return {"per_label": per, **summary_in_unit(case_summary(per), "px"), "distance_unit": "px"}


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
        bundle: bundle folder or :class:`~ModelSelectorLib.zoo.bundle.LoadedBundle`.
        cases: ``[{"id", "image", "label"[, "label_values"]}]`` (file paths; ``label_values``: ``{value in the
            label file: the model's label value}`` when they differ); the same list for every model compared.
        labels: ``{value: name}`` to score (default: the card's labels).
        device: torch device.
        cancel: Event-like; raises :class:`~ModelSelectorLib.errors.Cancelled` between cases.
        on_case: called as ``on_case(id, image, truth, prediction)``; a returned dict is merged into the
            case's result (e.g. the path of an overlay image).
        desc: progress bar text.

    Returns:
        one dict per case: ``{"id", "per_label": {...}, "dice", "hd95", "msd", ...}``.
    """
    loaded = load_bundle(bundle, device=device) if not hasattr(bundle, "card") else bundle
    if labels is None:
        labels = {int(lb["value"]): str(lb["name"]) for lb in loaded.card.labels}
    results, held = [], set()
    for case in progress_bar(list(cases), desc=desc):
        check_cancel(cancel)
        image = read_image(case["image"])
        truth = as_label_map(read_image(case["label"], check_content=False), case["label"])
        # a split of data whose label values are not the model's 1..K says how they map (``label_values``)
        truth = truth.with_array(
            remap_values(np.asarray(truth.array), case.get("label_values"), case["label"]).astype(np.int32)
        )
        pred = apply_model(loaded, image, device=device, cancel=cancel)
        truth = align_label(truth, pred, case["label"], case["image"])  # the prediction has the image's grid
        held.update(int(v) for v in np.unique(truth.array))
        res: dict[str, Any] = {"id": str(case.get("id", Path(str(case["image"])).name))}
        res.update(evaluate_segmentation(pred, truth, labels, str(case["label"]), image.pixel_size_known))
        if on_case is not None:
            res.update(on_case(res["id"], image, truth, pred) or {})
        results.append(res)
    return leave_out_unheld(results, labels, held)


def leave_out_unheld(
    results: list[dict[str, Any]], labels: Mapping[int, str], held: set[int]
) -> list[dict[str, Any]]:
    """``results`` (one dict per case, as :func:`evaluate_bundle` builds them) with the labels that no case's
    ground truth holds (values not in ``held``) left out of each case's summary and named in ``not_measured``;
    ``per_label`` keeps every label. Unchanged when every label, or none, is held."""
    fg = {int(v): str(n) for v, n in labels.items() if int(v) != 0}
    unheld = [n for v, n in sorted(fg.items()) if v not in held]
    if not unheld or len(unheld) == len(fg):
        return results
    for res in results:
        per, unit = res["per_label"], res.get("distance_unit", "mm")
        for key in summary_in_unit(case_summary(per), unit):
            res.pop(key, None)
        left = {n: m for n, m in per.items() if n not in unheld}
        kept = case_summary(left)
        if len(left) == 1:  # still named per label, as a split of several labels names its metrics
            name, metrics = next(iter(left.items()))
            kept.update({f"{m}_{name}": kept[m] for m in metrics if m in kept})
        res.update(summary_in_unit(kept, unit), not_measured=unheld)
    return results


__all__ = [
    "case_summary",
    "evaluate_bundle",
    "evaluate_segmentation",
    "higher_is_better",
    "leave_out_unheld",
    "summary_in_unit",
    "segmentation_metrics",
]
