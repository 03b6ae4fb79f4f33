"""Preparing an image for a segmentation network, shared by inference and training so both see the same input.

Each image is resampled with SimpleITK onto an axis-aligned grid in the canonical orientation
(:data:`~ModelSelectorLib.io.geometry.CANONICAL_AXCODES`, as the bundle's ``Orientationd``) at the model's
``target_spacing``, then normalised (CT: clip to [a_min, a_max] and scale to [0, 1]; MR: z-score over
non-zero voxels; percentile: percentiles to [0, 1]).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.geometry import CANONICAL_AXCODES, canonical_grid, resample_to, to_network_layout
from ..io.image import Image


# --- intensities ----------------------------------------------------------------------------------------
def normalize_intensity(array: np.ndarray, intensity: Optional[dict[str, Any]]) -> np.ndarray:
    """Normalise intensities in place-free fashion as training did; returns float32.

    Args:
        array: voxels (any layout).
        intensity: ``{"mode": "ct", "a_min", "a_max"}`` -> clip to [a_min, a_max] and scale to [0, 1]
            (MONAI ``ScaleIntensityRange(clip=True)``); ``{"mode": "mr"}`` -> z-score over non-zero voxels,
            zeros stay 0 (MONAI ``NormalizeIntensity(nonzero=True)``); ``{"mode": "percentile",
            "a_min": lower %, "a_max": upper %}`` -> percentiles to [0, 1], clipped.
    """
    mode = (intensity or {}).get("mode", "mr")
    arr = np.asarray(array, dtype=np.float32)
    if mode == "ct":
        a_min = float(intensity.get("a_min", -1000.0))
        a_max = float(intensity.get("a_max", 1000.0))
        out = (arr - a_min) * (1.0 / (a_max - a_min))
        return np.clip(out, 0.0, 1.0, out=out)
    if mode == "percentile":
        lo, hi = np.percentile(arr, [float(intensity.get("a_min", 0.5)), float(intensity.get("a_max", 99.5))])
        lo, hi = float(lo), float(hi)
        out = (arr - lo) * (1.0 / max(hi - lo, 1e-8))
        return np.clip(out, 0.0, 1.0, out=out)
    mask = arr != 0
    out = arr.copy() if arr is array else arr
    if mask.any():
        vals = arr[mask]
        mean, std = float(vals.mean()), float(vals.std())
        out[mask] = (vals - mean) / (std if std > 0 else 1.0)
    return out


def background_value(array: np.ndarray, intensity: Optional[dict[str, Any]]) -> float:
    """Value for voxels outside the input when resampling: 0 for MR (stays 0 after nonzero z-score),
    the image minimum otherwise (air in CT)."""
    if (intensity or {}).get("mode", "mr") == "mr":
        return 0.0
    return float(np.min(array))


def preprocess(
    image: Image,
    target_spacing: Optional[Sequence[float]],
    intensity: Optional[dict[str, Any]],
    axcodes: str = CANONICAL_AXCODES,
) -> tuple[np.ndarray, sitk.Image]:
    """Resample ``image`` to the canonical grid and normalise its intensities.

    Returns:
        ``(array, grid)``: float32 C-contiguous array ``(x, y[, z])`` on the canonical grid, and the grid
        (a SimpleITK reference image).
    """
    src = image.to_sitk()
    if src.GetPixelID() != sitk.sitkFloat32:
        src = sitk.Cast(src, sitk.sitkFloat32)
    grid = canonical_grid(src, target_spacing, axcodes)
    res = resample_to(src, grid, sitk.sitkLinear, background_value(image.array, intensity))
    arr = normalize_intensity(sitk.GetArrayViewFromImage(res), intensity)
    return np.ascontiguousarray(to_network_layout(arr), dtype=np.float32), grid


def resample_label(label: Image, grid: sitk.Image) -> np.ndarray:
    """A label map resampled (nearest neighbour) onto ``grid``, as a ``(x, y[, z])`` array."""
    res = resample_to(label.to_sitk(), grid, sitk.sitkNearestNeighbor, 0)
    return np.ascontiguousarray(to_network_layout(sitk.GetArrayFromImage(res)))


# --- applying a model -----------------------------------------------------------------------------------
def check_device(device: str) -> None:
    """Raise :class:`InputError` when ``device`` is not a torch device, or names a GPU that torch cannot use
    here (none, a CPU build of torch, or ``cuda:N`` beyond the GPUs there are)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise InputError(f"device {device!r} is not a torch device; use cpu, cuda or cuda:N (GPU N).") from e
    if dev.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise InputError(f"device {device!r} was asked for but no CUDA GPU is available; use --device cpu.")
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        raise InputError(f"device {device!r}: this machine has {n} CUDA GPU(s), cuda:0 to cuda:{n - 1}.")
