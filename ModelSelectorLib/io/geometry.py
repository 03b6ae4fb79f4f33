"""Grids in the world (LPS, mm): the canonical network grid, resampling onto a grid, array layouts.

ITK stores a 3D array as ``(z, y, x)``; MONAI networks see spatial axes ``(x, y, z)`` (as ``LoadImage``
gives them). :func:`to_network_layout` converts between the two (a transpose view).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .image import Image

#: canonical orientation of a network's input grid (MONAI Orientationd axcodes)
CANONICAL_AXCODES = "RAS"

# LPS world direction of each orientation code
_AXIS_LPS = {
    "L": (1.0, 0.0, 0.0),
    "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0),
    "A": (0.0, -1.0, 0.0),
    "S": (0.0, 0.0, 1.0),
    "I": (0.0, 0.0, -1.0),
}


# --- geometry -------------------------------------------------------------------------------------------
def axcodes_direction(axcodes: str, ndim: int = 3) -> np.ndarray:
    """ITK direction matrix (LPS, columns = world direction of i, j[, k]) for orientation codes.

    For 2D (``ndim=2``) the identity is used: 2D images keep their in-plane orientation.
    """
    if ndim == 2:
        return np.eye(2)
    return np.array([_AXIS_LPS[c] for c in axcodes.upper()[:3]], dtype=float).T


def canonical_grid(
    image: sitk.Image, target_spacing: Optional[Sequence[float]], axcodes: str = CANONICAL_AXCODES
) -> sitk.Image:
    """An empty reference image: axis-aligned (``axcodes``), ``target_spacing`` (mm, ``(x, y[, z])``),
    covering the physical extent of ``image`` (every voxel centre of ``image`` lies inside it)."""
    ndim = image.GetDimension()
    direction = axcodes_direction(axcodes, ndim)
    spacing = np.asarray(target_spacing if target_spacing else image.GetSpacing(), dtype=float)
    size_in = np.asarray(image.GetSize())
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in size_in], indexing="ij")).reshape(ndim, -1).T
    pts = np.array([image.TransformContinuousIndexToPhysicalPoint([float(c) for c in cn]) for cn in corners])
    coords = pts @ direction  # coordinates along the canonical axes
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    size = np.maximum(np.floor((hi - lo) / spacing + 1e-4).astype(int) + 1, 1)
    # centre the grid on the input's extent
    lo = lo + ((hi - lo) - (size - 1) * spacing) / 2.0
    ref = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    ref.SetSpacing([float(s) for s in spacing])
    ref.SetOrigin([float(v) for v in direction @ lo])
    ref.SetDirection([float(d) for d in direction.ravel()])
    return ref


def resample_to(
    image: sitk.Image, reference: sitk.Image, interpolator: int, default: float = 0.0
) -> sitk.Image:
    """``image`` resampled onto ``reference``'s grid (identity transform, world coordinates)."""
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, float(default), image.GetPixelID())


def to_network_layout(array_zyx: np.ndarray) -> np.ndarray:
    """SimpleITK array ``(z, y, x)`` -> MONAI spatial layout ``(x, y, z)`` (a view)."""
    return array_zyx.transpose(tuple(range(array_zyx.ndim))[::-1])


def reference_grid(image: Image) -> sitk.Image:
    """An empty SimpleITK image with exactly ``image``'s size, spacing, origin and direction."""
    ref = sitk.Image([int(v) for v in image.size], sitk.sitkUInt8)
    ref.SetSpacing([float(v) for v in image.spacing])
    ref.SetOrigin([float(o) for o in image.origin])
    ref.SetDirection([float(d) for d in image.direction])
    return ref
