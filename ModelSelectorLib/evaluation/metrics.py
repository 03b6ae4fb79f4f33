"""Which metrics exist for ranking, and whether a higher value of each is better."""

from __future__ import annotations

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
    return base.startswith(("dice", "nsd", "sdr", "acc", "auc", "iou", "sens", "spec", "prec", "recall"))
