"""Which metrics exist for ranking, whether a higher value of each is better, and the plain overlap of two
label maps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: metrics of segmentation cases and whether a higher value is better
SEGMENTATION_METRICS = {"dice": True, "hd95": False, "msd": False}
#: metrics of landmark cases and whether a higher value is better
LANDMARK_METRICS = {"mre": False, "sdr2": True, "sdr4": True}
#: the first part (before ``_``) of every metric the evaluations write per case: segmentation (``dice``,
#: ``dice_<label>``, ``hd95``, ``msd``, ``nsd``) and landmarks (``mre_mm``, ``rmse_px``, ``sdr_4``, ``dice_lungs``)
METRIC_FAMILIES = ("dice", "hd95", "msd", "nsd", "mre", "rmse", "sdr")


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better (``dice``, ``dice_<label>``, ``sdr*``) or worse
    (``hd95``, ``msd``, ``mre``, ``*_error``, distances)."""
    base = metric.split("_", 1)[0].lower()
    if base in SEGMENTATION_METRICS:
        return SEGMENTATION_METRICS[base]
    if base in LANDMARK_METRICS:
        return LANDMARK_METRICS[base]
    return base.startswith(("dice", "nsd", "sdr", "acc", "auc", "iou", "sens", "spec", "prec", "recall"))


def dice_per_label(pred: np.ndarray, truth: np.ndarray, values: Sequence[int]) -> dict[int, float]:
    """Dice of each label value between two label maps of equal shape (1.0 when both lack the label).

    Args:
        pred, truth: integer label maps of any equal shape.
        values: the label values to score.

    Returns:
        ``{value: Dice}`` in the order of ``values``.
    """
    out = {}
    for v in values:
        p, t = pred == v, truth == v
        denom = int(p.sum()) + int(t.sum())
        out[int(v)] = 1.0 if denom == 0 else 2.0 * float(np.logical_and(p, t).sum()) / denom
    return out
