"""The landmark comparison grid's settings, run names and data, shared by the grid runner and its report.

:class:`GridConfig` holds the grid (variants x label fractions x seeds) and the training settings;
:func:`load_grid_data` loads, splits and caches the landmark images at the coarse and fine sizes;
:func:`evaluate_model` scores a landmark model (coarse stage alone or all stages) on one split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..datasets.landmarks import (
    LandmarkCase,
    find_landmark_folders,
    jsrt_outlines,
    labelled_image_ids,
    load_dataset,
    lung_mask_path,
    paediatric_ids,
    split_cases,
)
from ..errors import TrainingError
from ..evaluation.landmarks import evaluate_predictions, lung_dice
from ..models.landmark_stages import REFINE_SCALE, landmark_conditioning, predict_landmarks
from ..models.landmarks import DEFAULT_STEPS, GROUPS, LandmarkSchema, to_original
from ..settings import check_settings
from .landmarks import VARIANTS, LandmarkTrainConfig, stack_cases

PathLike = Union[str, Path]
#: which unlabelled images the semi-supervised variants see besides the training images whose labels are hidden
UNLABELLED_POOLS = ("all", "in_domain")


@dataclasses.dataclass
class GridConfig:
    """The comparison grid.

    Attributes:
        variants: subset of :data:`~ModelSelectorLib.training.landmarks.VARIANTS`.
        fractions: labelled fractions of the training images.
        seeds: training seeds (also choose which training images keep their labels).
        split_seed: seed of the train/val/test split (one split for all runs).
        val_fraction, test_fraction: split sizes.
        max_unlabelled: cap on the external unlabelled pool (None: all).
        unlabelled_pool: ``"all"`` external unlabelled images, or ``"in_domain"``: only those the data's
            manifest does not describe as paediatric (adult PA radiographs, like the labelled ones).
        reuse_from: another grid folder whose teachers and refiners (same settings) this grid uses.
        extra_outlines: an outline-only annotation file, relative to the data folder (e.g.
            ``cxr_landmarks_ngaggion/landmarks_all_1024.json``): its complete JSRT outlines of images that are
            not among the data's labelled images join the training shapes of the shape and contour stages.
            They come without images, so no network and no split sees them
            (:func:`~ModelSelectorLib.datasets.landmarks.jsrt_outlines`).
        train: :class:`~ModelSelectorLib.training.landmarks.LandmarkTrainConfig` settings.
        steps_per_group: every ``n``-th contour point of each group (the landmark schema; 1 = whole contours).
        radii: SDR radii in mm; radii_px: SDR radii in original pixels.
        n_overlays: test images in each overlay figure.
    """

    variants: list[str] = dataclasses.field(default_factory=lambda: list(VARIANTS))
    fractions: list[float] = dataclasses.field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    split_seed: int = 20261124
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    max_unlabelled: Optional[int] = None
    unlabelled_pool: str = "all"
    reuse_from: Optional[str] = None
    extra_outlines: Optional[str] = None
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    steps_per_group: dict[str, int] = dataclasses.field(default_factory=lambda: dict(DEFAULT_STEPS))
    radii: list[float] = dataclasses.field(default_factory=lambda: [2.0, 4.0, 10.0])
    radii_px: list[float] = dataclasses.field(default_factory=lambda: [5.0, 10.0])
    n_overlays: int = 3

    @classmethod
    def quick(cls) -> GridConfig:
        """Seconds-long configuration of the same code (tests, smoke runs)."""
        return cls(fractions=[0.5, 1.0], seeds=[0], max_unlabelled=8, n_overlays=2,
                   steps_per_group={"RL": 11, "LL": 10, "H": 9},
                   train={"size": 32, "steps": 4, "batch_size": 2, "teacher": "teacher-tiny",
                          "student": "student-tiny", "mc_samples": 2, "sigma": 1.0, "threads": 1,
                          "shape_modes": 3, "refine_steps": 3, "refine_network": "refine-tiny",
                          "refine_points": 4})  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GridConfig:
        check_settings(cls, data, "grid")
        cfg = cls(**data)
        bad = [v for v in cfg.variants if v not in VARIANTS]
        if bad:
            raise TrainingError(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}.")
        if not cfg.fractions or any(not 0 < f <= 1 for f in cfg.fractions) or not cfg.seeds:
            raise TrainingError("the grid needs label fractions in (0, 1] and at least one seed.")
        if cfg.unlabelled_pool not in UNLABELLED_POOLS:
            raise TrainingError(
                f"unlabelled_pool {cfg.unlabelled_pool!r}: use one of {', '.join(UNLABELLED_POOLS)}."
            )
        LandmarkTrainConfig.from_dict(cfg.train)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def train_config(self) -> LandmarkTrainConfig:
        return LandmarkTrainConfig.from_dict(self.train)

    @property
    def schema(self) -> LandmarkSchema:
        return LandmarkSchema.default(self.steps_per_group)


#: terms of the images and annotations a landmark model learns from (``../shared/data/MANIFEST.md``)
TRAINING_DATA_LICENCE = (
    "JSRT database terms (research use; cite Shiraishi et al., AJR 2000; redistribution terms not verified); "
    "landmarks from ngaggion/Chest-xray-landmark-dataset (cite Gaggion et al.); Shenzhen chest X-ray set "
    "(NLM/NIH, research use; cite Jaeger et al. 2014; NLM's readme of its sister Montgomery set asks that it not "
    "be shared outside the research group), its lung points derived from masks attributed to Stirenko et al. "
    "2018 and stated as CC BY-NC-SA 4.0 (non-commercial, share-alike; not verified at source); unlabelled "
    "paediatric images: Kermany et al. 2018, CC BY 4.0"
)


def run_name(variant: str, fraction: float, seed: int) -> str:
    return f"{variant}_f{int(round(fraction * 100)):03d}_s{seed}"


def needs_teacher(variant: str) -> bool:
    """Whether ``variant`` learns from a teacher trained on the same labels."""
    return variant in ("offline_kd", "uncertainty_kd")


# --- data -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class GridData:
    """Everything a grid or a zoo model learns from and is scored on.

    Attributes:
        by_id: labelled cases on the coarse grid; fine: the same on the fine grid (None without refinement).
        unlabelled: the external unlabelled cases of the chosen pool (coarse grid).
        splits: ``{"train", "val", "test"}`` ids; masks: lung-mask paths of the labelled images that have one.
        schema: the landmark schema; conditioning: its refinement conditioning ``(P, C)``.
        extra_shapes: ``(M, P, 2)`` outlines without images on the coarse grid (``GridConfig.extra_outlines``),
            for the shape models only.
    """

    by_id: dict[str, LandmarkCase]
    fine: Optional[dict[str, LandmarkCase]]
    unlabelled: list[LandmarkCase]
    splits: dict[str, list[str]]
    masks: dict[str, Path]
    schema: LandmarkSchema
    conditioning: np.ndarray
    extra_shapes: Optional[np.ndarray] = None

    def cases(self, part: str) -> list[LandmarkCase]:
        return [self.by_id[i] for i in self.splits[part]]

    def fine_images(self, ids: Sequence[str]) -> Any:
        import torch

        if self.fine is None:
            return None
        return torch.from_numpy(np.stack([self.fine[i].image for i in ids]).astype(np.float32))

    def predict(self, network: Any, ids: Sequence[str], tc: LandmarkTrainConfig) -> tuple[np.ndarray, Any]:
        """``network``'s (coarse alone or the stages) points ``(N, P, 2)`` on the coarse grid and coarse logits
        for the labelled images ``ids``."""
        images = stack_cases([self.by_id[i] for i in ids], tc.sigma).images
        return predict_landmarks(network, images, self.fine_images(ids), self.conditioning, tc.decode,
                                 tc.decode_radius, contours=self.schema.contours)  # fmt: skip


def load_grid_data(
    data: PathLike, cfg: GridConfig, cache_dir: Optional[Path] = None, cancel: Any = None
) -> GridData:
    """Load, split and (with ``cache_dir``) cache the grid's data at the coarse and fine sizes."""
    tc, schema = cfg.train_config, cfg.schema
    cache = (lambda s: cache_dir / f"cache{s}.npz") if cache_dir is not None else (lambda s: None)
    labelled, unlabelled = load_dataset(data, tc.size, schema, cache=cache(tc.size), cancel=cancel)
    fine = None
    if tc.refine_steps > 0:
        fine_l, _ = load_dataset(data, tc.size * REFINE_SCALE, schema, cache=cache(tc.size * REFINE_SCALE),
                                 cancel=cancel, unlabelled=False)  # fmt: skip
        fine = {c.case_id: c for c in fine_l}
    if cfg.unlabelled_pool == "in_domain":
        other = paediatric_ids(data)
        unlabelled = [c for c in unlabelled if c.case_id not in other]
    if cfg.max_unlabelled is not None:
        unlabelled = unlabelled[: cfg.max_unlabelled]
    splits = split_cases([c.case_id for c in labelled], cfg.split_seed, cfg.val_fraction, cfg.test_fraction)
    paths = {p.stem: p for p in find_landmark_folders(data)[0]}
    masks = {i: m for i, p in paths.items() if (m := lung_mask_path(p)) is not None}
    cond = landmark_conditioning(schema.names, GROUPS)
    extra = None
    if cfg.extra_outlines:
        extra = jsrt_outlines(Path(data) / cfg.extra_outlines, schema, tc.size, labelled_image_ids(data))
    return GridData({c.case_id: c for c in labelled}, fine, unlabelled, splits, masks, schema, cond, extra)


def evaluate_model(network: Any, gd: GridData, part: str, tc: LandmarkTrainConfig, radii: Sequence[float],
                   radii_px: Sequence[float], with_dice: bool = False) -> tuple[dict[str, Any], np.ndarray, Any]:  # fmt: skip
    """Metrics of ``network`` (coarse alone or the stages) on split ``part``; returns ``(metrics, predicted points
    (N, P, 2) on the coarse grid, coarse logits)``. ``with_dice``: the Dice of the filled lung contours against
    the lung masks (``lung_dice``, mean over the images with a mask; ``per_case_lung_dice``)."""
    ids = gd.splits[part]
    cases = gd.cases(part)
    pts, logits = gd.predict(network, ids, tc)
    metrics = evaluate_predictions(pts, cases, gd.schema, radii, radii_px)
    if with_dice:
        dice = [lung_dice(to_original(p, c.scale), gd.schema, _read_mask(gd.masks[i])) if i in gd.masks
                else float("nan") for i, p, c in zip(ids, pts, cases)]  # fmt: skip
        metrics["per_case_lung_dice"] = dice
        finite = [d for d in dice if np.isfinite(d)]
        metrics["lung_dice"] = float(np.mean(finite)) if finite else float("nan")
    return metrics, pts, logits


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image as PILImage

    with PILImage.open(path) as im:
        return np.asarray(im.convert("L")) > 127


def write_landmark_split(
    data: PathLike,
    path: PathLike,
    seed: int = 20261124,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    relative: bool = False,
) -> Path:
    """Write the test split of the landmark images under ``data`` (the grid's split with ``seed`` and the
    fractions) as a test split file for sweeps and the promotion gate: ``{"dataset", "seed", "labels": {},
    "test_fraction", "cases": [{"id", "image", "label"}]}`` (``label``: the ``_landmarks.json``). With
    ``relative``, ``dataset`` is relative to the file's folder and the cases to ``dataset`` (a split that can
    be committed beside the code)."""
    import os

    from ..datasets.split_file import write_split

    root = Path(data).resolve()
    images = {p.stem: p for p in find_landmark_folders(root)[0]}
    test = split_cases(sorted(images), seed, val_fraction, test_fraction)["test"]

    def name(p: Path) -> str:
        return Path(os.path.relpath(p, root)).as_posix() if relative else str(p)

    cases = [{"id": i, "image": name(images[i]), "label": name(images[i].with_name(i + "_landmarks.json"))}
             for i in test]  # fmt: skip
    return write_split(path, root, cases, {}, seed, relative, test_fraction=float(test_fraction))


#: held-out figures of a landmark model recorded on its card (with a ``val_`` / ``test_`` prefix)
CARD_METRICS = ("mre_mm", "mre_px", "rmse_px", "sdr_2", "sdr_4", "sdr_10", "sdr_px_5", "sdr_px_10",
                "self_intersection", "lung_dice")  # fmt: skip


__all__ = [
    "CARD_METRICS", "TRAINING_DATA_LICENCE", "UNLABELLED_POOLS", "GridConfig", "GridData", "evaluate_model",
    "load_grid_data", "needs_teacher", "run_name", "write_landmark_split",
]  # fmt: skip
