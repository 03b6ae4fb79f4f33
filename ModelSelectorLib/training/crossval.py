"""K-fold cross-validation of segmentation training by case or by patient (no patient on both sides)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import atomic
from ..datasets.msd import load_msd
from ..errors import TrainingError
from .augmentation import mirror_axes
from .config import TrainConfig
from .fitting import fit, run_peak_memory_mb
from .networks import build_network
from .segmentation import measured_labels, prepare_run, run_fingerprint
from .validation import choose_postprocessing, evaluate_cases, summarize_cases


# --- cross-validation -----------------------------------------------------------------------------------
def kfold_split(
    n: int, k: int, fold: int, seed: int = 0, groups: Optional[Sequence[str]] = None
) -> tuple[list[int], list[int]]:
    """Case indices ``(train, val)`` of fold ``fold`` of ``k``: groups (patients; default one per case)
    shuffled with ``seed`` and dealt to the folds in turn, so no group is on both sides.

    Raises:
        TrainingError: ``fold`` outside ``0..k-1``, ``k < 2`` or fewer groups than folds.
    """
    if k < 2 or not 0 <= fold < k:
        raise TrainingError(f"fold {fold} of {k}: need k >= 2 and 0 <= fold < k.")
    groups = [str(g) for g in groups] if groups is not None else [str(i) for i in range(n)]
    if len(groups) != n:
        raise TrainingError(f"{len(groups)} group ids for {n} cases.")
    unique = sorted(set(groups))
    if len(unique) < k:
        raise TrainingError(f"{len(unique)} groups cannot fill {k} folds.")
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[g]: i % k for i, g in enumerate(order)}
    val = [i for i in range(n) if fold_of[groups[i]] == fold]
    return [i for i in range(n) if fold_of[groups[i]] != fold], val


def train_fold(
    dataset_dir: os.PathLike[str] | str, k: int, fold: int, config: TrainConfig,
    work_dir: os.PathLike[str] | str, groups: Optional[Sequence[str]] = None, modality: Optional[str] = None,
    cancel: Optional[Any] = None, nsd_tolerance: Optional[float] = None,
) -> dict[str, Any]:  # fmt: skip
    """Train fold ``fold`` of a ``k``-fold cross-validation by case (or by ``groups``, e.g. patient ids, one
    per case of the dataset) and evaluate it on its held-out cases as the model would be applied.

    The run is resumable: its checkpoint lives in ``work_dir`` (:func:`fit`); the result is also written
    there as ``result.json``. Largest-component post-processing is chosen (``config.postprocess``) on this
    fold's held-out cases and reported both ways. A label that none of the fold's held-out cases holds is not
    scored (it would count 1 or 0 by its false positives alone) and is named in ``not_measured``.

    Returns:
        ``{"fold", "k", "train_cases", "val_cases", "plan", "inference", "postprocessing": {name:
        {"dice", "dice_lcc"}}, "summary": summarize_cases(...), "per_case": [...], "history",
        "training_time_s", "evaluation_time_s", "peak_memory_mb", "threads", "resumed_from", "not_measured"}``.

    Raises:
        TrainingError: no held-out case of the fold holds any label.
    """
    import torch
    from monai.utils import set_determinism

    config = config.check()
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    dataset = load_msd(dataset_dir)
    train_idx, val_idx = kfold_split(len(dataset.training), k, fold, config.seed, groups)
    set_determinism(seed=config.seed)
    run = prepare_run(dataset, train_idx, val_idx, config, modality)
    network = build_network(run.net_def).to(config.device)
    res = fit(network, run.train_items, run.val_items, config, run.n_classes, run.plan.roi_size, cancel,
              run.flips, run.plan.spacing, work_dir, run_fingerprint(config, dataset, train_idx), run.net_def)  # fmt: skip
    set_determinism(seed=None)
    network.load_state_dict(res.state)
    measured = measured_labels(run.val_items, run.label_names)
    if not measured:
        raise TrainingError(f"fold {fold} of {k}: none of its {len(val_idx)} held-out cases holds a label; "
                            "use fewer folds or another seed.")  # fmt: skip
    t0 = time.monotonic()
    inference = {"sw_mode": config.sw_mode, "overlap": config.sw_overlap,
                 "mirror_axes": mirror_axes(config, run.flips, run.plan.roi_size)}  # fmt: skip
    per_case = evaluate_cases(network, run.val_items, run.plan.roi_size, run.n_classes, inference, run.plan.spacing,
                              measured, config.device, cancel, nsd_tolerance=nsd_tolerance)  # fmt: skip
    lcc, figures = choose_postprocessing(per_case, config.postprocess)
    values = {n: v for v, n in run.label_names.items()}
    result = {
        "fold": fold, "k": k, "seed": config.seed,
        "train_cases": [Path(dataset.training[i]["image"]).name for i in train_idx],
        "val_cases": [Path(dataset.training[i]["image"]).name for i in val_idx],
        "plan": {"spacing": list(run.plan.spacing), "roi_size": list(run.plan.roi_size), **run.plan.to_card()},
        "network": run.net_def, "flip_axes": list(run.flips),
        "inference": {**inference, "keep_largest_component": [values[n] for n in lcc]}, "postprocessing": figures,
        "summary": summarize_cases(per_case, lcc), "per_case": per_case, "history": res.history,
        "training_time_s": res.seconds, "evaluation_time_s": round(time.monotonic() - t0, 1),
        "peak_memory_mb": run_peak_memory_mb(res),
        "threads": torch.get_num_threads(), "resumed_from": res.resumed_from,
        "not_measured": [n for v, n in run.label_names.items() if v not in measured],
        "config": json.loads(json.dumps(dataclasses.asdict(config), default=list)),
    }  # fmt: skip
    atomic.write_json(Path(work_dir) / "result.json", result)
    return result
