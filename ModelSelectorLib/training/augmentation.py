"""Training-time data augmentation of segmentation patches (MONAI transforms)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Optional

from ..errors import TrainingError
from .config import MIN_POOLED_SIZE, TrainConfig


def flip_axes(config: TrainConfig, label_names: Sequence[str], spatial_dims: int) -> tuple[int, ...]:
    """The axes :func:`train_transforms` flips: ``config.flip_axes``, or every axis except the left-right
    one (0 in the canonical RAS grid and in a 2D image's x) when a label name is lateral."""
    if config.flip_axes is not None:
        bad = [a for a in config.flip_axes if not 0 <= int(a) < spatial_dims]
        if bad:
            raise TrainingError(f"flip_axes {list(config.flip_axes)}: axes must be in 0..{spatial_dims - 1}.")
        return tuple(int(a) for a in config.flip_axes)
    lateral = any(is_lateral(n) for n in label_names)
    return tuple(range(1 if lateral else 0, spatial_dims))


#: words that give a label a side (whole words of its name, in any case)
_SIDE_WORDS = frozenset({"left", "right", "lt", "rt", "sinister", "dexter"})


def is_lateral(name: str) -> bool:
    """Whether a label name gives a side, however it is written: ``Left kidney``, ``kidney_left``, ``LeftLung``,
    ``Lung L``, ``Lt kidney``, ``L_kidney`` (a lone L or R that is not a level such as the vertebra ``L1``)."""
    words = [w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", name)]
    if any(w in _SIDE_WORDS for w in words):
        return True
    return re.search(r"(?<![A-Za-z0-9])[LRlr](?![A-Za-z0-9])", name) is not None


def mirror_axes(config: TrainConfig, flips: Sequence[int], roi: Sequence[int]) -> list[int]:
    """Axes of test-time mirroring: the training flip axes along which the patch is more than 1 voxel (``[]``
    without ``config.tta_mirror``, or without ``config.augment``: the network then never saw a flipped input)."""
    if not (config.tta_mirror and config.augment):
        return []
    return [int(a) for a in flips if int(roi[a]) > 1]


def nnunet_transforms(
    config: TrainConfig, roi: Sequence[int], spatial_dims: int, flips: Sequence[int],
    spacing: Optional[Sequence[float]] = None,
) -> list[Any]:  # fmt: skip
    """nnU-Net's data augmentation in MONAI transforms, with its probabilities.

    A patch 25 % larger than ``roi`` (along the axes it rotates or scales) is cropped around a label-balanced
    centre, then ``RandAffined`` rotates (+-30 deg; in-plane only, about the last axis, for slice-wise, thin-slab
    or strongly anisotropic patches) and scales (0.7-1.4) it with probability 0.33 and resamples it to ``roi``
    (labels: nearest). Then Gaussian noise (p 0.1), Gaussian blur (p 0.2, sigma 0.5-1 voxel), brightness
    (x 0.75-1.25, p 0.15), contrast (p 0.15), low-resolution simulation (p 0.25), gamma (0.7-1.5, p 0.3, with
    inverted image p 0.1) and mirroring along ``flips`` (p 0.5 each).
    """
    from monai import transforms as T

    keys = ["image", "label"]
    aniso = spacing is not None and max(spacing) / min(spacing) > 3.0
    slab = spatial_dims == 3 and int(roi[2]) < MIN_POOLED_SIZE
    inplane = spatial_dims == 3 and (min(roi) == 1 or slab or aniso)
    # a slab is not rotated out of its plane or scaled across it: no margin there (and no blend of slices)
    big = [int(math.ceil(r * 1.25)) if r > 1 and not (slab and a == 2) else int(r) for a, r in enumerate(roi)]
    rot = math.pi / 6
    if spatial_dims == 2:
        rotate, scale = (rot,), (0.3, 0.3)
    elif inplane:
        rotate, scale = (0.0, 0.0, rot), (0.3, 0.3, 0.0)
    else:
        rotate, scale = (rot, rot, rot), (0.3, 0.3, 0.3)
    sigma = (0.5, 1.0)
    return [
        T.SpatialPadd(keys, spatial_size=big),
        T.RandCropByPosNegLabeld(
            keys, label_key="label", spatial_size=big, pos=1, neg=1, num_samples=config.num_samples
        ),  # fmt: skip
        T.RandAffined(
            keys,
            spatial_size=list(roi),
            prob=0.33,
            rotate_range=rotate,
            scale_range=[(-v, 0.4 * v / 0.3) if v else 0.0 for v in scale],
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),  # fmt: skip
        T.RandGaussianNoised("image", prob=0.1, mean=0.0, std=0.1),
        T.RandGaussianSmoothd(
            "image", prob=0.2, sigma_x=sigma, sigma_y=sigma, sigma_z=(0.0, 0.0) if inplane else sigma
        ),  # fmt: skip
        T.RandScaleIntensityd("image", factors=0.25, prob=0.15),
        T.RandScaleIntensityFixedMeand("image", factors=0.25, preserve_range=True, prob=0.15),
        T.RandSimulateLowResolutiond("image", prob=0.25, zoom_range=(0.5, 1.0)),
        T.RandAdjustContrastd("image", prob=0.1, gamma=(0.7, 1.5), invert_image=True, retain_stats=True),
        T.RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5), retain_stats=True),
        *[T.RandFlipd(keys, prob=0.5, spatial_axis=a) for a in flips],
    ]


def train_transforms(
    config: TrainConfig, roi: Sequence[int], spatial_dims: int, flips: Optional[Sequence[int]] = None,
    spacing: Optional[Sequence[float]] = None,
) -> Any:  # fmt: skip
    """MONAI training transforms: pad, label-balanced crops and (``config.augment``) flips along ``flips``
    (default: every axis), in-plane quarter turns (when axis 0 is among the flips and the in-plane roi is
    square) and intensity jitter; or with ``config.augment_preset == "nnunet"`` :func:`nnunet_transforms`."""
    from monai import transforms as T

    keys = ["image", "label"]
    if config.augment and config.augment_preset == "nnunet":
        axes = tuple(range(spatial_dims)) if flips is None else tuple(flips)
        ts = nnunet_transforms(config, roi, spatial_dims, axes, spacing)
        ts.append(T.EnsureTyped(keys, dtype=None, track_meta=False))
        return T.Compose(ts)
    ts = [
        T.SpatialPadd(keys, spatial_size=list(roi)),
        T.RandCropByPosNegLabeld(
            keys, label_key="label", spatial_size=list(roi), pos=2, neg=1, num_samples=config.num_samples
        ),  # fmt: skip
    ]
    if config.augment:
        axes = tuple(range(spatial_dims)) if flips is None else tuple(flips)
        ts += [T.RandFlipd(keys, prob=0.5, spatial_axis=a) for a in axes]
        # quarter turns also move the left-right axis (so only where it may be mirrored anyway), and would
        # give a non-square patch two shapes within a batch
        if 0 in axes and roi[0] == roi[1]:
            ts.append(T.RandRotate90d(keys, prob=0.3, spatial_axes=(0, 1)))
        ts += [
            T.RandScaleIntensityd("image", factors=0.1, prob=0.3),
            T.RandShiftIntensityd("image", offsets=0.05, prob=0.3),
        ]
    ts.append(T.EnsureTyped(keys, dtype=None, track_meta=False))
    return T.Compose(ts)
