"""Scoring a bundle on the cases of a test split, whatever its task: the one entry point of sweeps,
leaderboards and the promotion gate.

A runtime that scores its own predictions against reference files (``scores_references``, e.g. landmarks:
MRE, SDR, lung Dice) is run case by case through ``predict`` and ``score``; segmentation bundles keep their
label-map evaluation with MONAI metrics (:func:`ModelSelectorLib.evaluation.segmentation.evaluate_bundle`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import DatasetError
from ..evaluation.segmentation import evaluate_bundle
from ..io.image import read_image
from ..models.registry import runtime_class, runtime_for
from ..progress import check_cancel, progress_bar

#: the ranking metric of a task whose runtime names none (segmentation)
FALLBACK_METRIC = "dice"


def primary_metric(task_type: str) -> str:
    """The metric that ranks and gates models of ``task_type`` (``mre_mm`` for landmarks, ``dice`` otherwise)."""
    return runtime_class(task_type).primary_metric or FALLBACK_METRIC


def _check_split_kind(card: Any, cases: Sequence[Mapping[str, Any]]) -> None:
    """Refuse, before any case is evaluated, a split of the other kind of task: reference files (``.json``) for a
    model scored on label maps, or label maps for one scored against reference files (landmarks)."""
    references = runtime_class(card.task_type).scores_references
    for case in cases:
        if str(case["label"]).lower().endswith(".json") != references:
            held = "reference files (.json)" if not references else "label maps"
            raise DatasetError(f"{case['label']}: the split's cases are labelled with {held}, not as a "
                               f"{card.task_type} model is scored; use a split of {card.name}'s task.")  # fmt: skip


def evaluate_cases(
    loaded: Any,
    cases: Sequence[Mapping[str, Any]],
    labels: Optional[Mapping[int, str]] = None,
    device: str = "cpu",
    cancel: Optional[Any] = None,
    on_case: Optional[Callable[..., Optional[dict[str, Any]]]] = None,
    desc: str = "evaluate",
) -> list[dict[str, Any]]:
    """Score a loaded bundle on ``cases`` (``[{"id", "image", "label"}]``, ``label``: the reference file).

    Args:
        labels: ``{value: name}`` of the outputs to score (segmentation: the labels; landmarks: the points;
            default: all the model's).
        on_case: called per case as ``on_case(id, image, reference, prediction)``; a returned dict is merged
            into the case's result. For a segmentation bundle ``reference`` and ``prediction`` are label-map
            images; otherwise ``reference`` is the reference file and ``prediction`` the runtime's
            :class:`~ModelSelectorLib.models.base.Prediction`.

    Returns:
        one dict of scalar metrics per case, with its ``"id"``.
    """
    _check_split_kind(loaded.card, cases)
    if not runtime_class(loaded.card.task_type).scores_references:
        return evaluate_bundle(loaded, cases, labels, device, cancel, on_case, desc)
    runtime = runtime_for(loaded, device=device)
    results = []
    for case in progress_bar(list(cases), desc=desc):
        check_cancel(cancel)
        image = read_image(case["image"])
        prediction = runtime.predict(image, cancel)
        res: dict[str, Any] = {"id": str(case.get("id", Path(str(case["image"])).name))}
        res.update(
            runtime.score(prediction, Path(case["label"]), names=list(labels.values()) if labels else None)
        )
        if on_case is not None:
            res.update(on_case(res["id"], image, Path(case["label"]), prediction) or {})
        results.append(res)
    return results


__all__ = ["FALLBACK_METRIC", "evaluate_cases", "primary_metric"]
