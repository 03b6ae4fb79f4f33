"""Settings of segmentation training (:class:`TrainConfig`) and the card's intensity block.

nnU-Net-style pieces, each switched on by :class:`TrainConfig` settings:

* planning (:mod:`.planning`): target spacing = median spacing of the training cases, patch size
  (``roi_size`` ``None`` or entries 0) from their median shape on that grid, capped at ``max_patch_voxels``
  and rounded to what the network's pooling needs; ``dynunet`` gets per-axis kernels and strides (no
  pooling and 1-voxel kernels along a much coarser or 1-voxel axis, so a ``roi_size`` of ``(X, Y, 1)``
  trains a slice-wise model that stays a 3D bundle);
* ``augment_preset="nnunet"`` (:mod:`.augmentation`): rotation and scaling, Gaussian noise and blur,
  brightness, contrast, low-resolution simulation, gamma and mirroring with nnU-Net's probabilities,
  mirroring never along the left-right axis when labels are lateral;
* optimiser and learning-rate schedule (``sgd`` + ``poly`` as nnU-Net), a fixed number of steps per epoch;
* resumable training (:mod:`.fitting`): a checkpoint written atomically after every epoch;
* evaluation as the model will be applied (:mod:`.crossval`): Gaussian-weighted sliding windows, optional
  test-time mirroring, and largest-connected-component post-processing kept per label only where it raises
  the validation Dice; K-fold cross-validation by case or by patient.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from ..errors import TrainingError
from ..settings import check_settings

ARCHITECTURES = ("unet", "segresnet", "attentionunet", "dynunet")
#: bundle file with the per-epoch training curve written by :func:`train_segmentation`
CURVE_FILE = Path("docs") / "training_curve.json"
#: bundle file with the :class:`TrainConfig` the model was trained with
TRAIN_CONFIG_FILE = Path("configs") / "train_config.json"
LOSSES = ("dice", "dicece", "dicece_batch", "dicefocal")
AUGMENT_PRESETS = ("light", "nnunet")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "poly", "cosine")
POSTPROCESS = ("none", "auto", "lcc")
PRECISIONS = ("fp32", "bf16")
#: the planner pools an axis only while it has at least this many voxels; a patch thinner than this along its last
#: axis is a slab (one slice or a few), never pooled along it and augmented in-plane only
MIN_POOLED_SIZE = 8
#: checkpoint of :func:`fit` inside its work folder
CHECKPOINT_FILE = "checkpoint.pt"
#: TrainConfig fields that do not change what is trained (left out of the checkpoint fingerprint)
_RUN_ONLY_FIELDS = ("device", "version", "num_threads", "license")
#: TrainConfig fields applied only once training has ended (test-time mirroring, largest-component
#: post-processing): hashed at these defaults, so that a finished run given other values is evaluated again
#: without being trained again, and runs of the defaults keep their fingerprints
_EVALUATION_ONLY_FIELDS = {"tta_mirror": False, "postprocess": "none"}


@dataclasses.dataclass
class TrainConfig:
    """Settings of :func:`train_segmentation`.

    Attributes:
        architecture: ``"unet"`` (MONAI ``UNet``), ``"segresnet"`` (MONAI ``SegResNet``), ``"attentionunet"``
            (MONAI ``AttentionUnet``) or ``"dynunet"`` (MONAI ``DynUNet``, nnU-Net style).
        channels: feature channels per level (UNet, AttentionUnet, DynUNet) or ``(init_filters,)`` (SegResNet).
        epochs: passes over the training cases.
        lr: Adam learning rate.
        batch_size: cases per batch (each gives ``num_samples`` patches).
        num_samples: patches drawn per case per epoch.
        roi_size: patch size in voxels ``(x, y, z)``; also the sliding-window size at inference. ``None``
            plans every axis from the training cases' median shape (:func:`plan_training`), an entry 0 plans
            that axis only (e.g. ``(0, 0, 1)``: slice-wise patches planned in-plane).
        max_patch_voxels: cap on the voxels of a planned patch (CPU budget).
        target_spacing: voxel size in mm ``(x, y, z)``; ``None`` uses the median spacing of the dataset.
        intensity: ``"ct"``, ``"mr"`` or ``"percentile"``; ``None`` derives it from the MSD modality.
        a_min, a_max: CT window (HU) or percentiles for ``"percentile"``.
        norm: normalisation layers, ``"batch"`` or ``"instance"``. Batch norm keeps running statistics, which
            data-free prototypes (model inversion) and the selector's verification step match against.
        val_fraction: fraction of cases held out for validation (at least one when there are >= 2 cases).
        val_interval: validate every this many epochs (and after the last).
        seed: random seed (split, weights, patches).
        num_workers: DataLoader workers.
        loss: ``"dice"``, ``"dicece"``, ``"dicece_batch"`` or ``"dicefocal"``. ``"dicece_batch"`` computes the
            Dice term over the whole batch rather than per patch (nnU-Net's "batch Dice" of its 2D
            configuration): slice-wise patches without foreground then add no noisy per-patch Dice term.
        augment: random flips, 90-degree in-plane rotations (square in-plane ``roi_size``, and only when the
            left-right axis may be flipped) and intensity jitter.
        augment_preset: ``"light"`` (the above) or ``"nnunet"`` (rotation, scaling, noise, blur, brightness,
            contrast, low resolution, gamma, mirroring; see :func:`_train_transforms`).
        flip_axes: axes of the random flips (``None``: every axis but the left-right one, axis 0 of the
            canonical RAS grid, when a label is lateral -- its name says left or right -- since a mirrored
            image would teach the model the wrong side; every axis otherwise).
        max_cases: use at most this many cases (``None``: all).
        device: torch device.
        version: model version in the zoo (``None``: ``0.1.0``, or the next patch version of an existing model).
        num_threads: torch CPU threads (``None``: leave torch's default).
        license: licence of the trained weights.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (Nesterov, momentum 0.99, as nnU-Net).
        weight_decay: L2 weight decay.
        lr_schedule: ``"constant"``, ``"poly"`` (``lr * (1 - step / steps) ** 0.9``, nnU-Net) or ``"cosine"``.
        grad_clip: clip the gradient norm at this value (``None``: no clipping; nnU-Net uses 12).
        steps_per_epoch: optimiser steps per epoch (``None``: one pass over the training cases).
        keep: weights saved: ``"best"`` (highest validation Dice seen; the reported figure is then chosen on
            the validation cases) or ``"last"`` (last epoch; the validation figure is unbiased).
        sw_mode: sliding-window blending at validation and inference, ``"constant"`` or ``"gaussian"``.
        sw_overlap: sliding-window overlap (0-1).
        tta_mirror: test-time mirroring along the flip axes (those with ``roi_size`` > 1).
        postprocess: largest-connected-component post-processing: ``"none"``, ``"auto"`` (per label, kept
            only where it raises the mean validation Dice) or ``"lcc"`` (every label).
        precision: arithmetic of the training forward pass: ``"fp32"``, or ``"bf16"`` (``torch.autocast`` with
            bfloat16: convolutions in bfloat16, weights, optimiser state and loss in float32; about 2x faster
            per step on CPUs with AVX-512 BF16). Validation and inference stay in float32.
        slab_levels: for a ``dynunet`` on thin slabs (``roi_size`` ``(x, y, z)`` with
            ``1 < z <`` :data:`MIN_POOLED_SIZE`, an axis the network never pools): the number of finest levels
            whose kernels span 3 neighbouring slices; deeper levels work slice by slice. ``1``: only the input
            block sees the neighbours, a 2.5D network at about the cost of a slice-wise one. ``None``: the
            planner's kernels.
    """

    architecture: str = "unet"
    channels: tuple[int, ...] = (16, 32, 64, 128)
    epochs: int = 50
    lr: float = 1e-3
    batch_size: int = 2
    num_samples: int = 4
    roi_size: Optional[tuple[int, ...]] = (64, 64, 32)
    target_spacing: Optional[tuple[float, ...]] = None
    intensity: Optional[str] = None
    a_min: Optional[float] = None
    a_max: Optional[float] = None
    norm: str = "batch"
    val_fraction: float = 0.2
    val_interval: int = 1
    seed: int = 0
    num_workers: int = 0
    loss: str = "dicece"
    augment: bool = True
    flip_axes: Optional[tuple[int, ...]] = None
    max_cases: Optional[int] = None
    device: str = "cpu"
    version: Optional[str] = None
    num_threads: Optional[int] = None
    license: str = "CC-BY-4.0"
    max_patch_voxels: int = 64**3
    augment_preset: str = "light"
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    grad_clip: Optional[float] = None
    steps_per_epoch: Optional[int] = None
    keep: str = "best"
    sw_mode: str = "constant"
    sw_overlap: float = 0.25
    tta_mirror: bool = False
    postprocess: str = "none"
    precision: str = "fp32"
    slab_levels: Optional[int] = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A config from a dict (e.g. parsed YAML); unknown keys raise :class:`TrainingError`."""
        check_settings(cls, data, "training")
        kw = dict(data)
        for key in ("channels", "roi_size", "target_spacing", "flip_axes"):
            if kw.get(key) is not None:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    def check(self) -> TrainConfig:
        """Raise :class:`TrainingError` for settings that cannot work; returns ``self``."""
        if self.architecture not in ARCHITECTURES:
            raise TrainingError(
                f"architecture {self.architecture!r} is unknown; use one of {', '.join(ARCHITECTURES)}."
            )
        if self.loss not in LOSSES:
            raise TrainingError(f"loss {self.loss!r} is unknown; use one of {', '.join(LOSSES)}.")
        if self.norm not in ("batch", "instance"):
            raise TrainingError(f"norm {self.norm!r} is unknown; use batch or instance.")
        if self.intensity not in (None, "ct", "mr", "percentile"):
            raise TrainingError(f"intensity {self.intensity!r} is unknown; use ct, mr or percentile.")
        if self.epochs < 1 or self.batch_size < 1 or self.num_samples < 1:
            raise TrainingError("epochs, batch_size and num_samples must be at least 1.")
        choices = {"augment_preset": AUGMENT_PRESETS, "optimizer": OPTIMIZERS, "lr_schedule": LR_SCHEDULES,
                   "postprocess": POSTPROCESS, "keep": ("best", "last"),
                   "sw_mode": ("constant", "gaussian"), "precision": PRECISIONS}  # fmt: skip
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise TrainingError(
                    f"{key} {getattr(self, key)!r} is unknown; use one of {', '.join(allowed)}."
                )
        if not self.lr > 0 or self.weight_decay < 0:
            raise TrainingError(
                f"lr must be above 0 and weight_decay not below 0; got {self.lr} and {self.weight_decay}."
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise TrainingError(
                f"val_fraction {self.val_fraction} must be in [0, 1): the share of cases held out."
            )
        if self.target_spacing is not None and not all(float(v) > 0 for v in self.target_spacing):
            raise TrainingError(f"target_spacing {list(self.target_spacing)} must be voxel sizes above 0 mm.")
        if not self.channels or any(int(c) < 1 for c in self.channels):
            raise TrainingError(f"channels {list(self.channels)} must be feature counts of at least 1.")
        if self.architecture in ("unet", "attentionunet") and len(self.channels) < 2:
            raise TrainingError(
                f"a {self.architecture} needs at least 2 levels of channels; got {list(self.channels)}."
            )
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise TrainingError("steps_per_epoch must be at least 1 (or null for one pass over the cases).")
        if not 0.0 <= self.sw_overlap < 1.0:
            raise TrainingError(f"sw_overlap {self.sw_overlap} must be in [0, 1).")
        if self.architecture == "dynunet" and len(self.channels) < 3:
            raise TrainingError(f"dynunet needs at least 3 levels of channels; got {list(self.channels)}.")
        if self.slab_levels is not None:
            roi = self.roi_size or ()
            if self.architecture != "dynunet" or len(roi) != 3 or not 1 < int(roi[2]) < MIN_POOLED_SIZE:
                raise TrainingError(
                    f"slab_levels needs architecture dynunet and a roi_size (x, y, z) with 1 < z < {MIN_POOLED_SIZE}; "
                    f"got {self.architecture} with roi_size {list(roi) if roi else None}."
                )
            if not 1 <= int(self.slab_levels) <= len(self.channels):
                raise TrainingError(
                    f"slab_levels {self.slab_levels} must be in 1..{len(self.channels)} (the levels)."
                )
        if self.roi_size is None or self.planned_axes:
            if self.architecture not in ("unet", "dynunet"):
                raise TrainingError(
                    f"a planned roi_size needs architecture unet or dynunet, not {self.architecture}."
                )
            return self
        if len(self.roi_size) not in (2, 3) or any(int(r) < 4 for r in self.roi_size):
            if not (self.architecture == "dynunet" and len(self.roi_size) == 3 and min(self.roi_size) >= 1):
                raise TrainingError(f"roi_size {self.roi_size} must be 2 or 3 sizes of at least 4 voxels.")
        if self.architecture in ("unet", "attentionunet"):
            need = 2 ** (len(self.channels) - 1)
            if any(int(r) % need for r in self.roi_size):
                raise TrainingError(
                    f"roi_size {self.roi_size} must be divisible by {need} for a {len(self.channels)}-level UNet."
                )
        return self

    @property
    def planned_axes(self) -> tuple[int, ...]:
        """Axes whose patch size :func:`plan_training` chooses (every axis when ``roi_size`` is ``None``)."""
        if self.roi_size is None:
            return (0, 1, 2)
        return tuple(a for a, r in enumerate(self.roi_size) if int(r) <= 0)

    def fingerprint(self) -> str:
        """Short hash of the settings that decide what is trained (not device, threads, version, licence, test-time
        mirroring or post-processing; loader workers do, since each draws its own augmentations)."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if k not in _RUN_ONLY_FIELDS}
        data.update(_EVALUATION_ONLY_FIELDS)
        if data["precision"] == "fp32":  # runs from before the setting existed keep their fingerprints
            del data["precision"]
        if data["slab_levels"] is None:
            del data["slab_levels"]
        if data["num_workers"] == 0:  # workers draw their own augmentations; 0 keeps older fingerprints
            del data["num_workers"]
        return hashlib.sha1(json.dumps(data, sort_keys=True, default=list).encode("utf-8")).hexdigest()[:16]


def intensity_settings(config: TrainConfig, modality: str) -> dict[str, Any]:
    """The card's ``intensity`` block: from ``config.intensity`` or else from the modality code."""
    mode = config.intensity or ("ct" if modality == "CT" else "mr")
    if mode == "ct":
        return {"mode": "ct", "a_min": float(config.a_min if config.a_min is not None else -1000.0),
                "a_max": float(config.a_max if config.a_max is not None else 1000.0)}  # fmt: skip
    if mode == "percentile":
        return {"mode": "percentile", "a_min": float(config.a_min if config.a_min is not None else 0.5),
                "a_max": float(config.a_max if config.a_max is not None else 99.5)}  # fmt: skip
    return {"mode": "mr"}
