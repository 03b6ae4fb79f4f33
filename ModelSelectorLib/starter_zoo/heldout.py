"""Held-out figures of the starter zoo's models, challenge style.

Per label Dice, HD95 and normalised surface Dice (MONAI metrics) on cases the model never learnt from,
summarised as mean ± standard deviation with a 95 % bootstrap interval over cases, beside the published
reference of the task. Two protocols:

* a fixed test split (:func:`score_bundle` on the recipe's test cases, each in its own geometry, with the
  model applied exactly as a user applies it);
* K-fold cross-validation (:func:`cross_validate`): one network per fold (resumable, one work folder per
  fold) evaluated on its held-out fold; the pooled held-out cases give the figures and the choice of
  largest-component post-processing for the final model trained on every case.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from ..evaluation.segmentation import segmentation_metrics
from ..evaluation.statistics import describe
from ..io.image import read_image
from ..models.registry import runtime_for
from ..progress import check_cancel, progress_bar
from ..training.crossval import train_fold
from ..training.validation import choose_postprocessing
from ..zoo.bundle import load_bundle

PathLike = Union[str, "os.PathLike[str]"]
#: the metrics of the held-out tables, in report order
METRICS = ("dice", "hd95", "nsd")


def score_bundle(
    bundle_dir: PathLike, msd_root: PathLike, cases: Sequence[dict[str, str]], nsd_tolerance: Optional[float],
    cancel: Optional[Any] = None, pixel_size: Optional[Sequence[float]] = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Apply a segmentation bundle to each case in its own geometry and score it against its label map.

    Args:
        cases: ``[{"image", "label"}]`` paths relative to ``msd_root``.
        nsd_tolerance: tolerance (mm) of the normalised surface Dice; ``None``: no NSD.
        pixel_size: the true pixel size (mm, ``x, y[, z]``) that distances are measured with, for files that
            do not carry it (pictures); the model still sees the files as a user gives them. ``None``: the
            label files' spacing.

    Returns:
        one ``{"case", "dice": {label: d}, "hd95": {...}, "msd": {...}[, "nsd": {...}]}`` per case.
    """
    runtime = runtime_for(load_bundle(bundle_dir))
    names = {int(lb["value"]): str(lb["name"]) for lb in runtime.card.labels}
    out = []
    for case in progress_bar(list(cases), desc=f"scoring {runtime.card.name}"):
        check_cancel(cancel)
        image = read_image(Path(msd_root) / case["image"])
        truth = read_image(Path(msd_root) / case["label"], check_content=False)
        pred = runtime.predict(image).value
        spacing = truth.spacing if pixel_size is None else tuple(pixel_size)
        m = segmentation_metrics(pred.array, np.asarray(truth.array), spacing, names, nsd_tolerance)
        row: dict[str, Any] = {"case": Path(case["image"]).name.replace(".nii.gz", "")}
        for metric in ("dice", "hd95", "msd", "nsd"):
            if metric in next(iter(m.values())):
                row[metric] = {n: float(v[metric]) for n, v in m.items()}
        out.append(row)
    return out


def describe_cases(per_case: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """``{metric: {label: describe(...), "mean": describe(mean over labels per case)}, "n": cases}`` of
    per-case rows (:func:`score_bundle`, or cross-validation rows with the post-processing applied)."""
    if not per_case:
        return {"n": 0}
    names = list(per_case[0]["dice"])
    out: dict[str, Any] = {"n": len(per_case)}
    for metric in (*METRICS, "msd"):
        if metric not in per_case[0]:
            continue
        block = {n: describe([r[metric][n] for r in per_case], seed) for n in names}
        block["mean"] = describe([float(np.mean([r[metric][n] for n in names])) for r in per_case], seed)
        out[metric] = block
    return out


def card_metrics(summary: dict[str, Any], protocol: str) -> dict[str, Any]:
    """The card's ``validation_metrics`` from a held-out summary: ``dice`` (mean over labels and cases),
    ``dice_<label>``, ``hd95_<label>``, ``nsd_<label>``, ``validation_cases`` and ``held_out`` (the protocol)."""
    out: dict[str, Any] = {"dice": round(summary["dice"]["mean"]["mean"], 4)}
    for metric in METRICS:
        for name, d in summary.get(metric, {}).items():
            if name != "mean":
                out[f"{metric}_{name}"] = round(d["mean"], 4)
    out["validation_cases"] = int(summary["n"])
    out["held_out"] = protocol
    return out


def _with_postprocessing(rows: Sequence[dict[str, Any]], lcc: Sequence[str]) -> list[dict[str, Any]]:
    """Cross-validation rows with each label's largest-component figures where that label keeps only it."""
    out = []
    for r in rows:
        row = {"case": r["case"]}
        for metric in ("dice", "hd95", "msd", "nsd"):
            if metric in r:
                row[metric] = {n: r[f"{metric}_lcc" if n in lcc else metric][n] for n in r[metric]}
        out.append(row)
    return out


def cross_validate(
    msd_root: PathLike, k: int, config: Any, work_dir: PathLike, folds: Optional[Sequence[int]] = None,
    modality: Optional[str] = None, nsd_tolerance: Optional[float] = None, cancel: Optional[Any] = None,
    log: Callable[[str], None] = print,
) -> Optional[dict[str, Any]]:  # fmt: skip
    """Run the folds of a ``k``-fold cross-validation that have no result yet (all, or those in ``folds``),
    and pool the held-out cases once every fold is done.

    Each fold trains in ``work_dir/fold<i>`` (resumable; :func:`~ModelSelectorLib.training.crossval.train_fold`)
    and writes its ``result.json`` there. Folds can run in several processes at once (each with its own
    ``folds``); the last one to finish pools them.

    Returns:
        ``None`` while folds are missing; else ``{"folds": [fold summaries], "lcc": [labels that keep their
        largest component, chosen on the pooled held-out cases], "postprocessing": {label: {"dice",
        "dice_lcc"}}, "per_case": [rows with that choice applied], "summary": describe_cases(...),
        "training_time_s": summed over folds, "peak_memory_mb"}``.
    """
    work = Path(work_dir)
    for fold in sorted(set(folds) if folds is not None else range(k)):
        check_cancel(cancel)
        if not (work / f"fold{fold}" / "result.json").is_file():
            log(f"cross-validation fold {fold + 1} of {k}")
            train_fold(msd_root, k, fold, config, work / f"fold{fold}", modality=modality, cancel=cancel,
                       nsd_tolerance=nsd_tolerance)  # fmt: skip
    results = [work / f"fold{i}" / "result.json" for i in range(k)]
    if not all(p.is_file() for p in results):
        return None
    folds_data = [json.loads(p.read_text(encoding="utf-8")) for p in results]
    rows = [r for f in folds_data for r in f["per_case"]]
    lcc, figures = choose_postprocessing(rows, config.postprocess)
    pooled = _with_postprocessing(rows, lcc)
    return {
        "folds": [
            {
                "fold": f["fold"],
                "val_cases": f["val_cases"],
                "summary": f["summary"],
                "training_time_s": f["training_time_s"],
                "peak_memory_mb": f["peak_memory_mb"],
            }
            for f in folds_data
        ],  # fmt: skip
        "lcc": lcc,
        "postprocessing": figures,
        "per_case": pooled,
        "summary": describe_cases(pooled),
        "training_time_s": round(sum(f["training_time_s"] for f in folds_data), 1),
        "peak_memory_mb": max(f["peak_memory_mb"] for f in folds_data),
    }


__all__ = ["METRICS", "card_metrics", "cross_validate", "describe_cases", "score_bundle"]
