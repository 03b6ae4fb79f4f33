"""Evaluating a segmentation network as it will be applied (Gaussian-weighted windows, test-time mirroring)
and choosing largest-connected-component post-processing on validation cases."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..evaluation.metrics import dice_per_label
from ..evaluation.segmentation import segmentation_metrics
from ..evaluation.statistics import sample_std
from ..models.segmentation import keep_largest_component, predict_probabilities
from ..progress import check_cancel


def evaluate_cases(
    network: Any, items: list[dict[str, Any]], roi: Sequence[int], n_classes: int,
    inference: dict[str, Any], spacing: Sequence[float], label_names: dict[int, str],
    device: str = "cpu", cancel: Optional[Any] = None, surface: bool = True, nsd_tolerance: Optional[float] = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Per-case metrics of ``network`` applied as a bundle would be (:func:`~ModelSelectorLib.models.segmentation.
    predict_probabilities` with ``inference``'s blending, overlap and mirror axes), on the network grid.

    Args:
        items: preprocessed cases (``{"image": (1, x, y, z), "label": (1, x, y, z), "case"}``).
        inference: ``{"sw_mode", "overlap", "mirror_axes"}``.
        spacing: network grid spacing (mm), for the surface distances.
        label_names: ``{value: name}`` of the foreground labels.
        nsd_tolerance: with ``surface``, also the normalised surface Dice at this tolerance (mm).
        surface: also HD95 and mean surface distance (MONAI, :func:`~ModelSelectorLib.evaluation.
            segmentation.segmentation_metrics`) of the prediction without and with largest-component post-processing.

    Returns:
        one ``{"case", "dice": {name: d}, "dice_lcc": {name: d}[, "hd95", "hd95_lcc", "msd", "msd_lcc"]}``
        per case (``_lcc``: after keeping each label's largest connected component).
    """
    network.eval()
    values = sorted(label_names)
    out = []
    for item in items:
        check_cancel(cancel)
        probs = predict_probabilities(network, item["image"][0], roi, device, 4, float(inference["overlap"]),
                                      inference["sw_mode"], inference["mirror_axes"])  # fmt: skip
        pred = np.argmax(probs, axis=0).astype(np.uint8)
        pred_lcc = keep_largest_component(pred, values)
        truth = item["label"][0]
        row: dict[str, Any] = {"case": Path(str(item.get("case", ""))).name.replace(".nii.gz", ""),
                               "dice": {label_names[v]: d for v, d in dice_per_label(pred, truth, values).items()},
                               "dice_lcc": {label_names[v]: d for v, d in dice_per_label(pred_lcc, truth, values).items()}}  # fmt: skip
        if surface:
            # segmentation_metrics takes (z, y, x) arrays and (x, y, z) spacing
            for key, p in (("", pred), ("_lcc", pred_lcc)):
                m = segmentation_metrics(p.T, truth.T, spacing, label_names, nsd_tolerance)
                for metric in ("hd95", "msd", "nsd"):
                    if metric in next(iter(m.values())):
                        row[metric + key] = {n: m[n][metric] for n in m}
        out.append(row)
    return out


def choose_postprocessing(
    per_case: list[dict[str, Any]], mode: str = "auto"
) -> tuple[list[str], dict[str, Any]]:
    """Labels that keep only their largest connected component, and the mean Dice both ways.

    ``mode``: ``"auto"`` keeps a label's largest component only when that raises its mean Dice over
    ``per_case`` (:func:`evaluate_cases` rows); ``"lcc"`` every label; ``"none"`` no label.

    Returns:
        ``(label names, {name: {"dice": mean without, "dice_lcc": mean with}})``.
    """
    if not per_case:
        return [], {}
    names = list(per_case[0]["dice"])
    figures = {n: {"dice": float(np.mean([r["dice"][n] for r in per_case])),
                   "dice_lcc": float(np.mean([r["dice_lcc"][n] for r in per_case]))} for n in names}  # fmt: skip
    if mode == "lcc":
        return names, figures
    if mode == "none":
        return [], figures
    return [n for n in names if figures[n]["dice_lcc"] > figures[n]["dice"]], figures


def summarize_cases(per_case: list[dict[str, Any]], lcc_labels: Sequence[str] = ()) -> dict[str, Any]:
    """Mean and standard deviation over cases of each label's Dice (and HD95 / MSD when present), with the
    largest-component result for ``lcc_labels``: ``{"dice": mean over labels, "dice_<name>",
    "dice_<name>_std", "hd95_<name>", ..., "cases": n}``."""
    if not per_case:
        return {"cases": 0}
    out: dict[str, Any] = {}
    names = list(per_case[0]["dice"])
    for metric in ("dice", "hd95", "msd", "nsd"):
        if metric not in per_case[0]:
            continue
        means = []
        for n in names:
            key = metric + ("_lcc" if n in lcc_labels else "")
            vals = np.asarray([r[key][n] for r in per_case], dtype=float)
            out[f"{metric}_{n}"] = round(float(vals.mean()), 4)
            out[f"{metric}_{n}_std"] = round(sample_std(vals), 4)
            means.append(vals.mean())
        out[metric] = round(float(np.mean(means)), 4)
    out["cases"] = len(per_case)
    return out
