"""Planning a segmentation model's input grid and patch from its training cases, nnU-Net style."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..datasets.msd import MSDDataset
from ..errors import DatasetError, TrainingError
from ..io.image import IMAGE_2D_SUFFIXES
from .config import MIN_POOLED_SIZE, TrainConfig


def dynunet_kernels_strides(
    roi_size: Sequence[int], spacing: Sequence[float], max_levels: int, even_only: bool = True
) -> tuple[list[list[int]], list[list[int]]]:
    """Per-level convolution kernels and strides of an nnU-Net-style ``DynUNet`` (MONAI DynUNet tutorial rule).

    An axis is pooled (stride 2) while its size is at least ``MIN_POOLED_SIZE`` (8) voxels (and even, with
    ``even_only``) and its current spacing is at most twice the finest; its kernel is 1 until its spacing first
    comes within twice the finest (3 from then on, as in nnU-Net). An axis along which the patch is 1 voxel
    thick (slice-wise models) has kernel 1, is never pooled and does not count as the finest.

    Args:
        roi_size: patch size in voxels ``(x, y[, z])``.
        spacing: voxel size (mm) of the network grid.
        max_levels: at most this many levels (``len(channels)``).
        even_only: pool only even sizes (the network's rule); ``False`` is used while planning a patch.

    Returns:
        ``(kernels, strides)``: one ``[kx, ky[, kz]]`` per level; ``strides[0]`` is all ones.
    """
    sizes = [float(r) for r in roi_size]
    sp = [float(v) for v in spacing]
    fine = [False] * len(sizes)  # the axis has reached a kernel of 3

    def finest() -> float:
        return min([v for v, n in zip(sp, sizes) if n > 1] or sp)

    def kernel() -> list[int]:
        for a, v in enumerate(sp):
            fine[a] = fine[a] or v / finest() <= 2.0
        return [3 if f and n > 1 else 1 for f, n in zip(fine, sizes)]

    kernels, strides = [kernel()], [[1] * len(sizes)]
    while len(strides) < max_levels:
        stride = [2 if v / finest() <= 2.0 and n >= MIN_POOLED_SIZE and (not even_only or n % 2 == 0) else 1
                  for v, n in zip(sp, sizes)]  # fmt: skip
        if all(st == 1 for st in stride):
            break
        sizes = [n / st for n, st in zip(sizes, stride)]
        sp = [v * st for v, st in zip(sp, stride)]
        strides.append(stride)
        kernels.append(kernel())
    return kernels, strides


def plan_patch(
    median_shape: Sequence[float], spacing: Sequence[float], max_voxels: int, max_levels: int,
    fixed: Optional[Sequence[int]] = None,
) -> tuple[int, ...]:  # fmt: skip
    """nnU-Net-style patch size: the median shape, rounded up so every pooling level divides it, then shrunk
    (the axis of largest physical extent first, one pooling divisor at a time) until it holds at most
    ``max_voxels`` voxels.

    Args:
        median_shape: median case size in voxels on the network grid ``(x, y[, z])``.
        spacing: network grid spacing (mm).
        max_voxels: cap on ``prod(patch)``.
        max_levels: network levels (pooling steps + 1) at most.
        fixed: sizes that are kept as given (entries > 0); 0 = planned.

    Returns:
        patch size in voxels ``(x, y[, z])``.
    """
    fixed = list(fixed) if fixed is not None else [0] * len(median_shape)
    free = [a for a, f in enumerate(fixed) if int(f) <= 0]
    patch = [int(f) if int(f) > 0 else max(int(math.ceil(m)), 1) for f, m in zip(fixed, median_shape)]
    for _ in range(1000):
        _, strides = dynunet_kernels_strides(patch, spacing, max_levels, even_only=False)
        div = np.prod(np.asarray(strides), axis=0).astype(int)
        rounded = [int(math.ceil(n / d) * d) if a in free else n for a, (n, d) in enumerate(zip(patch, div))]
        if rounded != patch:
            patch = rounded
            continue
        if int(np.prod(patch)) <= max_voxels or not free:
            return tuple(patch)
        shrinkable = [a for a in free if patch[a] > 1]
        if not shrinkable:
            return tuple(patch)
        ax = max(shrinkable, key=lambda a: (patch[a] * float(spacing[a]), patch[a]))
        patch[ax] = max(patch[ax] - int(div[ax]), 1) if patch[ax] > int(div[ax]) else max(patch[ax] // 2, 1)
    raise TrainingError(f"could not plan a patch for median shape {list(median_shape)}; give roi_size.")


def canonical_geometry(path: os.PathLike[str] | str) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Voxel spacing (mm) and size of an image along the canonical (``RAS``) axes, from its header only."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    ndim = reader.GetDimension()
    direction = np.asarray(reader.GetDirection(), dtype=float).reshape(ndim, ndim)
    # the file axis that runs along each canonical axis
    order = np.argmax(np.abs(direction), axis=1) if ndim == 3 else np.arange(ndim)
    spacing, size = reader.GetSpacing(), reader.GetSize()
    return tuple(float(spacing[i]) for i in order), tuple(int(size[i]) for i in order)


def check_dimensions(dataset: MSDDataset, indices: Sequence[int]) -> None:
    """Refuse cases of two kinds: a model takes 2D images or 3D volumes, not both (headers only).

    Raises:
        DatasetError: naming one 2D and one 3D case.
    """
    first: dict[int, Path] = {}
    for i in indices:
        path = Path(dataset.training[i]["image"])
        first.setdefault(len(canonical_geometry(path)[0]), path)
    if len(first) > 1:
        (low, a), (high, b) = sorted(first.items())[:2]
        raise DatasetError(
            f"{dataset.root}: mixes {low}D and {high}D cases (e.g. {a.name} is {low}D, {b.name} {high}D); a model takes "
            "one kind, so list only one kind in dataset.json (or make two datasets)."
        )


@dataclasses.dataclass
class Plan:
    """Input grid and patch of a model (:func:`plan_training`).

    Attributes:
        spacing: target voxel size in mm ``(x, y[, z])`` on the canonical grid.
        roi_size: patch size in voxels (also the sliding window).
        median_shape: median case size in voxels at ``spacing`` (canonical axes).
        max_patch_voxels: the cap the patch was planned under.
        planned: axes whose patch size was planned (the others were given).
        pixel_size_known: False when the training images were pictures without a pixel size (PNG, or 2D images
            of exactly 1 x 1 mm), so that the model's millimetres are picture pixels: such a model takes any 2D
            image as showing its training images' field (:func:`~ModelSelectorLib.models.segmentation.at_training_field`).
    """

    spacing: tuple[float, ...]
    roi_size: tuple[int, ...]
    median_shape: tuple[float, ...]
    max_patch_voxels: int
    planned: tuple[int, ...] = ()
    pixel_size_known: bool = True

    def to_card(self) -> dict[str, Any]:
        card = {"median_shape": [round(float(v), 1) for v in self.median_shape],
                "max_patch_voxels": int(self.max_patch_voxels), "planned_axes": list(self.planned)}  # fmt: skip
        return card if self.pixel_size_known else {**card, "pixel_size_known": False}


def plan_training(dataset: MSDDataset, indices: Sequence[int], config: TrainConfig) -> Plan:
    """Target spacing and patch size from the training cases ``indices`` (headers only).

    Spacing: ``config.target_spacing`` or the median spacing; patch: ``config.roi_size`` with its planned
    axes (:attr:`TrainConfig.planned_axes`) from the median shape at that spacing (:func:`plan_patch`)."""
    check_dimensions(dataset, indices)
    geo = [canonical_geometry(dataset.training[i]["image"]) for i in indices]
    spacings = np.asarray([g[0] for g in geo], dtype=float)
    sizes = np.asarray([g[1] for g in geo], dtype=float)
    spacing = tuple(float(v) for v in (config.target_spacing or np.median(spacings, axis=0)))
    if len(spacing) != spacings.shape[1]:
        raise TrainingError(
            f"target_spacing {spacing} has {len(spacing)} values for {spacings.shape[1]}D images."
        )
    median_shape = tuple(float(v) for v in np.median(sizes * spacings / np.asarray(spacing), axis=0))
    pictures = all(
        Path(str(dataset.training[i]["image"])).suffix.lower() in IMAGE_2D_SUFFIXES
        or (len(s) == 2 and set(s) == {1.0})
        for i, s in zip(indices, spacings.tolist())
    )
    roi_size = config.roi_size
    if roi_size is not None and len(roi_size) != len(spacing):
        if tuple(roi_size) != TrainConfig.__dataclass_fields__["roi_size"].default:
            raise TrainingError(
                f"roi_size {tuple(roi_size)} has {len(roi_size)} values for {len(spacing)}D images; give "
                f"{len(spacing)} values, or leave roi_size out to plan the patch from the data."
            )
        roi_size = None  # the default patch is a volume's: plan the patch of 2D images from their shape
    planned = config.planned_axes if roi_size is not None else tuple(range(len(spacing)))
    if not planned:
        roi = tuple(int(r) for r in roi_size)
    else:
        fixed = [0] * len(spacing) if roi_size is None else [max(int(r), 0) for r in roi_size]
        levels = len(config.channels) if config.architecture == "dynunet" else 0
        if config.architecture == "unet":  # MONAI UNet pools every axis at every level
            need = 2 ** (len(config.channels) - 1)
            roi = tuple(int(f) if f else max(need, int(math.ceil(m / need) * need))
                        for f, m in zip(fixed, median_shape))  # fmt: skip
            while int(np.prod(roi)) > config.max_patch_voxels and any(roi[a] > need for a in planned):
                ax = max((a for a in planned if roi[a] > need), key=lambda a: roi[a] * spacing[a])
                roi = tuple(r - need if a == ax else r for a, r in enumerate(roi))
        else:
            roi = plan_patch(median_shape, spacing, config.max_patch_voxels, levels, fixed)
    return Plan(spacing, roi, median_shape, int(config.max_patch_voxels), tuple(planned), not pictures)
