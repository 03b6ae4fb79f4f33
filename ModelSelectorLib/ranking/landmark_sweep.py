"""What a sweep needs to train and test landmark candidates (a sweep file with ``task_type: landmarks``).

The dataset is a landmark folder (the shared data root with ``cxr_landmarks/``, or ``<id>.png`` +
``<id>_landmarks.json``); a candidate's settings are those of
:class:`~ModelSelectorLib.training.landmarks.LandmarkTrainConfig` plus ``variant``, ``fraction``,
``steps_per_group`` and ``unlabelled_pool`` (:class:`~ModelSelectorLib.training.landmark_grid.GridConfig`).
Like a segmentation sweep, a landmark sweep holds out a test split (for the promotion gate; ``not_in_test``
images are never drawn into it) and a separate selection split (the leaderboard ranks on it) with the sweep's
seed and fractions; every candidate trains on the same remaining images and none sees a selection or test
image while it trains.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

from .. import atomic
from ..datasets.split_file import check_earlier_split, draw_test, write_split
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


#: file names in the sweep folder: the selection split (the leaderboard ranks on it), the test split (the
#: promotion gate compares on it; no candidate trains or is ranked on it) and every part's image ids
SELECTION_SPLIT, TEST_SPLIT, SPLITS = "selection_split.json", "test_split.json", "landmark_splits.json"


def make_split(
    dataset_dir: PathLike,
    work_dir: PathLike,
    test_fraction: float = 0.2,
    seed: int = 0,
    selection_fraction: float = 0.2,
    not_in_test: Sequence[str] = (),
) -> tuple[Path, Path, Path]:
    """Hold out a test split and a selection split of the labelled images of a landmark folder.

    Writes ``work_dir/test_split.json`` and ``work_dir/selection_split.json`` (split files: images and their
    landmark files, absolute paths) and ``work_dir/landmark_splits.json`` (the ``train``, ``val``, ``selection``
    and ``test`` image ids the candidates train on). Image ids in ``not_in_test`` (e.g. the current model's
    training images) are never drawn into the test split; with none, the test images are those of the landmark
    grid's split with the same seed and fractions (``modelselector landmarks split``). An existing split of the
    same folder is kept.

    Returns:
        ``(dataset folder, selection split file, test split file)``.

    Raises:
        DatasetError: a split of another folder, a folder of a sweep that ranked on its test split, too few
            images, or a ``not_in_test`` that names none of the folder's images.
    """
    from ..datasets.landmarks import find_landmark_folders

    root = Path(dataset_dir).resolve()
    work = Path(work_dir)
    test_file, selection_file, ids_file = work / TEST_SPLIT, work / SELECTION_SPLIT, work / SPLITS
    if test_file.is_file():
        kept = json.loads(test_file.read_text(encoding="utf-8"))
        check_earlier_split(test_file, kept.get("dataset"), root, [selection_file, ids_file], kept, not_in_test,
                            seed, test_fraction)  # fmt: skip
        return root, selection_file, test_file
    images = {p.stem: p for p in find_landmark_folders(root)[0]}
    parts = _parts(sorted(images), seed, test_fraction, selection_fraction, set(not_in_test), root)
    atomic.write_json(ids_file, {"dataset": str(root), "seed": int(seed), **parts})
    for path, part, fraction, purpose in (
        (selection_file, "selection", selection_fraction, "selection: the leaderboard ranks the candidates on it"),
        (test_file, "test", test_fraction, "test: the promotion gate compares on it; nothing is chosen on it"),
    ):  # fmt: skip
        cases = [{"id": i, "image": str(images[i]), "label": str(images[i].with_name(f"{i}_landmarks.json"))}
                 for i in parts[part]]  # fmt: skip
        write_split(path, root, cases, {}, seed, purpose=purpose, fraction=float(fraction))
    return root, selection_file, test_file


def _parts(ids: list[str], seed: int, test_fraction: float, selection_fraction: float, barred: set[str],
           root: Path) -> dict[str, list[str]]:  # fmt: skip
    """``{"train", "val", "selection", "test"}``: sorted image ids, drawn in the order of the landmark grid's
    seeded permutation (test first, skipping ``barred`` images; then selection, validation, training)."""
    n = len(ids)
    n_test = max(1, int(round(test_fraction * n)))
    n_sel = max(1, int(round(selection_fraction * n)))
    n_val = max(1, int(round(VAL_FRACTION * n)))
    if n - n_test - n_sel - n_val < 1:
        raise DatasetError(f"{root}: {n} labelled image(s); a landmark sweep needs at least "
                           f"{n_test + n_sel + n_val + 1} (test, selection, validation, training).")  # fmt: skip
    positions, test_positions = draw_test(ids, seed, n_test, barred, root, ("image", "folder"))
    test = [ids[i] for i in test_positions]
    rest = [ids[i] for i in positions if ids[i] not in set(test)]
    return {"train": sorted(rest[n_sel + n_val :]), "val": sorted(rest[n_sel : n_sel + n_val]),
            "selection": sorted(rest[:n_sel]), "test": sorted(test)}  # fmt: skip


def read_parts(work_dir: PathLike) -> dict[str, list[str]]:
    """The image ids of a sweep's parts (``landmark_splits.json``), for training a candidate.

    Raises:
        DatasetError: the file is missing or unreadable.
    """
    path = Path(work_dir) / SPLITS
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as e:
        raise DatasetError(
            f"{path}: the sweep's image split is missing or unreadable ({e}); start a new sweep."
        ) from e


def job_fields(work_dir: PathLike) -> dict[str, Any]:
    """What a worker needs besides the candidate: ``{"parts"}``, the sweep's image ids of every part."""
    return {"parts": read_parts(work_dir)}


def train(job: dict[str, Any]) -> Path:
    """Train one candidate into ``job["zoo"]`` as model ``job["model"]`` (a worker process) on the sweep's training
    images ``job["parts"]`` (:func:`job_fields`); returns the bundle."""
    from ..training.landmark_study import train_into_zoo
    from ..zoo.catalog import Zoo

    settings = dict(job["settings"])
    seed = int(settings.get("seed", 0))
    cfg = grid_config(settings, seed, float(job.get("test_fraction", 0.2)))
    parts = job["parts"]
    # the card's held-out figures are the selection images': a candidate never sees the test split
    splits = {"train": parts["train"], "val": parts["val"], "test": parts["selection"]}
    train_into_zoo(job["dataset"], job["zoo"], cfg, name=job["model"], variant=settings.get("variant", "student_supervised"),
                   fraction=float(settings.get("fraction", 1.0)), seed=seed, splits=splits)  # fmt: skip
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


__all__ = [
    "GRID_KEYS",
    "SELECTION_SPLIT",
    "SPLITS",
    "TEST_SPLIT",
    "check_settings",
    "grid_config",
    "job_fields",
    "make_split",
    "read_parts",
    "same_settings",
    "train",
]
