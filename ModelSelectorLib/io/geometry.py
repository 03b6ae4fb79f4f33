"""Grids in the world (LPS, mm): the canonical network grid, resampling onto a grid, array layouts.

ITK stores a 3D array as ``(z, y, x)``; MONAI networks see spatial axes ``(x, y, z)`` (as ``LoadImage``
gives them). :func:`to_network_layout` converts between the two (a transpose view).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
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


#: most voxels along one axis of a working grid (the encoder's 2 mm view grid, a network's input grid): a
#: whole-body CT, about 2,000 mm long, needs 4,000 at 0.5 mm, and this leaves four times that; an image whose
#: voxel size was written in µm and read as mm (1000 mm voxels) asks for tens of thousands
MAX_GRID_SIDE = 1 << 14
#: most voxels of a whole working grid: a whole-body CT (about 2,000 x 500 x 500 mm) on a 0.5 mm grid has 4e9
MAX_GRID_VOXELS = 1 << 33


# --- geometry -------------------------------------------------------------------------------------------
def checked_grid_size(
    extent: Sequence[float], spacing: Sequence[float] | float, eps: float = 1e-4
) -> np.ndarray:
    """Voxels ``(x, y[, z])`` of a grid of ``spacing`` (mm) spanning ``extent`` (mm, from first to last voxel
    centre): ``floor(extent / spacing + eps) + 1``, at least 1.

    Raises:
        InputError: a size that is not finite or passes :data:`MAX_GRID_SIDE` or :data:`MAX_GRID_VOXELS`, naming
            the image's extent in mm (a voxel size written in µm rather than mm, or garbage in the header).
    """
    extent = np.asarray(extent, dtype=float)
    with np.errstate(all="ignore"):  # inf and NaN are refused below, not warned about
        size = np.floor(extent / np.asarray(spacing, dtype=float) + eps) + 1
        total = float(np.prod(size))
    if not np.all(np.isfinite(size)) or size.max() > MAX_GRID_SIDE or total > MAX_GRID_VOXELS:
        mm = " x ".join(f"{v:.6g}" for v in extent)
        step = " x ".join(f"{v:g}" for v in np.unique(np.asarray(spacing, dtype=float)))
        raise InputError(
            f"the image spans {mm} mm, so a grid of {step} mm voxels over it would need "
            f"{' x '.join(f'{v:.6g}' for v in size)} voxels (at most {MAX_GRID_SIDE} a side and {MAX_GRID_VOXELS:.2g} "
            "in all are worked with); check the voxel size in the file's header (µm written where mm are meant?) and "
            "save it again with the right one."
        )
    return np.maximum(size.astype(int), 1)


def axcodes_direction(axcodes: str, ndim: int = 3) -> np.ndarray:
    """ITK direction matrix (LPS, columns = world direction of i, j[, k]) for orientation codes.

    For 2D (``ndim=2``) the identity is used: 2D images keep their in-plane orientation.
    """
    if ndim == 2:
        return np.eye(2)
    return np.array([_AXIS_LPS[c] for c in axcodes.upper()[:3]], dtype=float).T


def empty_grid(
    size: Sequence[int], spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]
) -> sitk.Image:
    """An empty uint8 reference image: a grid of ``size`` voxels (``(x, y[, z])``), ``spacing`` (mm), ``origin``
    (LPS mm) and ``direction`` (flattened ITK direction matrix), for resampling onto."""
    ref = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
    ref.SetSpacing([float(v) for v in spacing])
    ref.SetOrigin([float(v) for v in origin])
    ref.SetDirection([float(v) for v in np.asarray(direction, dtype=float).ravel()])
    return ref


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
    size = checked_grid_size(hi - lo, spacing)
    # centre the grid on the input's extent
    lo = lo + ((hi - lo) - (size - 1) * spacing) / 2.0
    return empty_grid(size, spacing, direction @ lo, direction)


def resample_to(
    image: sitk.Image, reference: sitk.Image, interpolator: int, default: float = 0.0
) -> sitk.Image:
    """``image`` resampled onto ``reference``'s grid (identity transform, world coordinates)."""
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, float(default), image.GetPixelID())


# --- the grids MONAI's own transforms give -----------------------------------------------------------------
def _lps_flip(ndim: int) -> np.ndarray:
    """RAS <-> LPS for a volume; a 2D image keeps its pixel axes, as a picture's loader gives them."""
    return np.diag([-1.0, -1.0, 1.0]) if ndim == 3 else np.eye(ndim)


def monai_affine(image: sitk.Image) -> np.ndarray:
    """The ``(n + 1, n + 1)`` affine that MONAI's ``LoadImage`` gives ``image``: voxel index ``(i, j[, k])`` in
    the file's own order to world mm, RAS for a volume."""
    ndim = image.GetDimension()
    flip = _lps_flip(ndim)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(ndim, ndim)
    affine = np.eye(ndim + 1)
    affine[:ndim, :ndim] = flip @ direction @ np.diag(image.GetSpacing())
    affine[:ndim, ndim] = flip @ np.asarray(image.GetOrigin(), dtype=float)
    return affine


def grid_of_affine(affine: np.ndarray, shape: Sequence[int]) -> sitk.Image:
    """An empty reference image of ``shape`` ``(i, j[, k])`` whose voxel ``(i, j[, k])`` lies where MONAI's
    ``affine`` (RAS for a volume, as :func:`monai_affine`) puts it."""
    ndim = len(shape)
    flip = _lps_flip(ndim)
    rzs = flip @ np.asarray(affine, dtype=float)[:ndim, :ndim]
    spacing = np.linalg.norm(rzs, axis=0)
    return empty_grid(shape, spacing, flip @ np.asarray(affine, dtype=float)[:ndim, ndim], rzs / spacing)


def monai_grid(image: sitk.Image, steps: Sequence[dict]) -> sitk.Image:
    """The grid on which MONAI's ``Orientation`` and ``Spacing`` put ``image``, read as ``LoadImage`` reads it
    (:func:`monai_affine`): without a step, the image's own grid.

    Args:
        image: the input (its geometry only).
        steps: in the order of the bundle's transforms: ``{"axcodes": "RAS"}`` reorders and flips the voxel axes
            towards those codes (nibabel's closest orientation; the direction stays oblique where the image is;
            a 2D image keeps its axes, as a picture's loader gives no orientation); ``{"pixdim": [mm per axis],
            "diagonal": bool, "scale_extent": bool}`` keeps the direction (``diagonal``: axis-aligned RAS) and
            takes the shape and the position of the first voxel from MONAI's ``compute_shape_offset``: the grid
            starts at the input's corner voxel, not centred on it.
    """
    import nibabel as nib
    from monai.data.utils import compute_shape_offset, zoom_affine

    ndim = image.GetDimension()
    affine, shape = monai_affine(image), np.asarray(image.GetSize(), dtype=int)
    for step in steps:
        if "axcodes" in step:
            if ndim != 3:
                continue
            ornt = nib.orientations.ornt_transform(
                nib.io_orientation(affine), nib.orientations.axcodes2ornt(str(step["axcodes"])[:ndim])
            )
            affine = affine @ nib.orientations.inv_ornt_aff(ornt, shape)
            shape = shape[np.argsort(ornt[:, 0])]
        else:
            pixdim = [float(v) for v in step["pixdim"]][:ndim]
            checked_grid_size(
                np.abs(affine[:ndim, :ndim]) @ np.maximum(shape - 1, 0), (pixdim + pixdim[-1:] * ndim)[:ndim]
            )
            new = zoom_affine(affine, pixdim + pixdim[-1:] * (ndim - len(pixdim)), bool(step.get("diagonal")))
            shape, offset = compute_shape_offset(shape, affine, new, bool(step.get("scale_extent")))
            new[:ndim, -1] = offset[:ndim]
            affine, shape = new, np.asarray(shape, dtype=int)
    return grid_of_affine(affine, [int(s) for s in shape])


def spline_interpolator(order: int) -> int:
    """SimpleITK's interpolator of a spline ``order``: 0 nearest neighbour, 1 linear, 2 to 5 B-spline."""
    if order <= 1:
        return sitk.sitkLinear if order == 1 else sitk.sitkNearestNeighbor
    return getattr(sitk, f"sitkBSpline{order}")


#: MONAI's ``padding_mode`` of a resampling -> numpy's ``pad`` mode that gives the same values outside the image
_PAD_MODES = {"border": "edge", "reflection": "symmetric", "zeros": "constant"}


def resample_padded(image: sitk.Image, reference: sitk.Image, interpolator: int, padding: str) -> sitk.Image:
    """``image`` (scalar or vector pixels) resampled onto ``reference`` as torch's ``grid_sample`` does with
    MONAI's ``padding_mode``: ``"border"`` repeats the edge voxels outwards, ``"reflection"`` mirrors the image at
    its edges, ``"zeros"`` blends the edge voxels with 0. The image is padded that way first, by as many voxels as
    ``reference`` reaches beyond it plus one for the interpolation, since ITK alone puts a constant anywhere half
    a voxel out."""
    ndim = image.GetDimension()
    corners = (
        np.array(np.meshgrid(*[[0, s - 1] for s in reference.GetSize()], indexing="ij")).reshape(ndim, -1).T
    )
    index = np.array([image.TransformPhysicalPointToContinuousIndex(
        reference.TransformIndexToPhysicalPoint([int(c) for c in cn])) for cn in corners])  # fmt: skip
    lower = np.ceil(np.maximum(0.0, -index.min(axis=0))).astype(int) + 1
    upper = np.ceil(np.maximum(0.0, index.max(axis=0) - (np.asarray(image.GetSize()) - 1))).astype(int) + 1
    array = sitk.GetArrayViewFromImage(image)  # (z, y, x[, components])
    widths = [(int(lo), int(hi)) for lo, hi in zip(lower[::-1], upper[::-1])] + [(0, 0)] * (array.ndim - ndim)
    padded = sitk.GetImageFromArray(
        np.pad(array, widths, mode=_PAD_MODES[padding]), isVector=array.ndim > ndim
    )
    padded.SetSpacing(image.GetSpacing())
    padded.SetDirection(image.GetDirection())
    padded.SetOrigin(image.TransformContinuousIndexToPhysicalPoint([float(-v) for v in lower]))
    return resample_to(padded, reference, interpolator, 0.0)


def to_network_layout(array_zyx: np.ndarray) -> np.ndarray:
    """SimpleITK array ``(z, y, x)`` -> MONAI spatial layout ``(x, y, z)`` (a view)."""
    return array_zyx.transpose(tuple(range(array_zyx.ndim))[::-1])


def reference_grid(image: Image) -> sitk.Image:
    """An empty SimpleITK image with exactly ``image``'s size, spacing, origin and direction."""
    return empty_grid(image.size, image.spacing, image.origin, image.direction)
