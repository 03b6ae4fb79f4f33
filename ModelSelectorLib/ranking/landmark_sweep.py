"""What a sweep needs to train and test landmark candidates (a sweep file with ``task_type: landmarks``).

The dataset is a landmark folder (the shared data root with ``cxr_landmarks/``, or ``<id>.png`` +
``<id>_landmarks.json``); a candidate's settings are those of
:class:`~ModelSelectorLib.training.landmarks.LandmarkTrainConfig` plus ``variant``, ``fraction``,
``steps_per_group`` and ``unlabelled_pool`` (:class:`~ModelSelectorLib.training.landmark_grid.GridConfig`).
The fixed test split is the landmark grid's split with the sweep's seed and test fraction, so every candidate
trains on the same images and none sees a test image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Union

from .. import atomic
from ..errors import DatasetError, TrainingError

PathLike = Union[str, "os.PathLike[str]"]
#: candidate settings that are not training settings of the coarse and refinement stages
GRID_KEYS = ("variant", "fraction", "steps_per_group", "unlabelled_pool")
#: validation share of the training images (the grid's default)
VAL_FRACTION = 0.1


def grid_config(settings: dict[str, Any], seed: int, test_fraction: float) -> Any:
    """The :class:`~ModelSelectorLib.training.landmark_grid.GridConfig` of one candidate.

    Raises:
        TrainingError: unknown or invalid settings.
    """
    from ..training.landmark_grid import GridConfig

    train = {k: v for k, v in settings.items() if k not in GRID_KEYS and k != "seed"}
    grid = {k: settings[k] for k in ("steps_per_group", "unlabelled_pool") if k in settings}
    return GridConfig.from_dict({**grid, "train": train, "split_seed": int(seed), "seeds": [int(seed)],
                                 "test_fraction": float(test_fraction), "val_fraction": VAL_FRACTION})  # fmt: skip


def check_settings(settings: dict[str, Any]) -> None:
    """Refuse a candidate whose settings a landmark model cannot be trained with."""
    from ..training.landmarks import VARIANTS

    grid_config(settings, 0, 0.2)
    if settings.get("variant", "student_supervised") not in VARIANTS:
        raise TrainingError(f"variant {settings.get('variant')!r}: choose one of {', '.join(VARIANTS)}.")
    if not 0 < float(settings.get("fraction", 1.0)) <= 1:
        raise TrainingError(f"fraction {settings.get('fraction')} must lie in (0, 1].")


def make_split(
    dataset_dir: PathLike, work_dir: PathLike, test_fraction: float = 0.2, seed: int = 0
) -> tuple[Path, Path]:
    """Write ``work_dir/test_split.json`` (the test images and their landmark files, absolute paths); an existing
    split of the same folder is kept. Returns ``(dataset folder, split file)``."""
    from ..training.landmark_grid import write_landmark_split

    root = Path(dataset_dir).resolve()
    split_file = Path(work_dir) / "test_split.json"
    if split_file.is_file():
        old = json.loads(split_file.read_text(encoding="utf-8"))
        if old.get("dataset") == str(root):
            return root, split_file
        raise DatasetError(f"{split_file}: holds the test split of another dataset ({old.get('dataset')}).")
    write_landmark_split(root, split_file, seed=seed, val_fraction=VAL_FRACTION, test_fraction=test_fraction)
    return root, split_file


def train(job: dict[str, Any]) -> Path:
    """Train one candidate into ``job["zoo"]`` as model ``job["model"]`` (a worker process); returns the bundle."""
    from ..training.landmark_study import train_into_zoo
    from ..zoo.catalog import Zoo

    settings = dict(job["settings"])
    seed = int(settings.get("seed", 0))
    cfg = grid_config(settings, seed, float(job.get("test_fraction", 0.2)))
    train_into_zoo(job["dataset"], job["zoo"], cfg, name=job["model"], variant=settings.get("variant", "student_supervised"),
                   fraction=float(settings.get("fraction", 1.0)), seed=seed)  # fmt: skip
    bundle = Zoo(job["zoo"]).get(job["model"])
    atomic.write_json(bundle / "configs" / "sweep_settings.json", settings)
    return bundle


def same_settings(bundle: Path, settings: dict[str, Any]) -> bool:
    """Whether ``bundle`` was trained by a sweep with exactly ``settings``."""
    f = Path(bundle) / "configs" / "sweep_settings.json"
    try:
        return json.loads(f.read_text(encoding="utf-8")) == json.loads(json.dumps(settings))
    except (OSError, ValueError):
        return False


__all__ = ["GRID_KEYS", "check_settings", "grid_config", "make_split", "same_settings", "train"]
