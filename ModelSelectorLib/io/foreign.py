"""What a caller hands over as an image, checked and converted for :class:`~.image.Image`.

- The geometry of an ``Image(array, spacing, origin, direction)`` (:func:`checked_geometry`): tuples of floats
  of the image's dimension, a positive spacing, an orthonormal direction, an array whose axes fit it.
- MONAI (``LoadImage``, a ``MetaTensor``) and nibabel images (:func:`monai_voxels`, :func:`nibabel_voxels`,
  :func:`sitk_of_voxels`). Both keep a volume's voxels as ``(x, y, z)`` = ``(i, j, k)`` and map a voxel index
  to world mm with an affine in RAS (x towards the patient's right, y anterior, z superior); this project, as
  ITK, DICOM and 3D Slicer, keeps a ``(z, y, x)`` array with spacing, origin and direction in LPS. The
  conversion reverses the spatial axes, takes the spacing as the lengths of the affine's columns and the
  direction as those columns made unit, and flips the signs of the first two world axes (RAS -> LPS), so that
  every voxel keeps its value and its world position; nothing is resampled.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, NamedTuple, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import InputError


# --- geometry given with an array -------------------------------------------------------------------------
def _floats(values: Any, what: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in np.asarray(values, dtype=float).ravel())
    except (TypeError, ValueError):
        raise InputError(f"{name}: the {what} must be numbers, not {values!r}.") from None


def checked_geometry(
    shape: tuple[int, ...], spacing: Any, origin: Any, direction: Any, name: str
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Spacing, origin and direction as tuples of floats, checked against each other and the array's
    ``shape``.

    Raises:
        InputError: wrong lengths, a spacing that is not positive and finite, non-finite origin or direction,
            a direction that is not orthonormal, an array whose axes do not fit the geometry.
    """
    sp, org, d = (
        _floats(v, w, name) for v, w in ((spacing, "spacing"), (origin, "origin"), (direction, "direction"))
    )
    n = len(sp)
    axes = "x, y, z" if n == 3 else "x, y"
    if n not in (2, 3):
        raise InputError(f"{name}: the spacing has {n} values; give one per axis, (x, y) for a 2D image or "
                         "(x, y, z) for a volume, in mm.")  # fmt: skip
    if len(org) != n:
        raise InputError(f"{name}: the origin has {len(org)} values and the spacing {n}; give both in ({axes}) "
                         "order, one value per axis (mm; the origin in LPS).")  # fmt: skip
    if len(d) != n * n:
        raise InputError(f"{name}: the direction has {len(d)} values where a {n}D image needs {n * n}: an {n}x{n} "
                         f"matrix (row-major) whose columns are the LPS directions of the {axes} axes.")  # fmt: skip
    if not all(np.isfinite(v) and v > 0 for v in sp):
        raise InputError(f"{name}: the spacing {sp} must be positive and finite (the voxel size in mm along "
                         f"{axes}).")  # fmt: skip
    if not np.all(np.isfinite(org + d)):
        raise InputError(f"{name}: the origin {org} and direction {d} must be finite.")
    check_orthogonal(d, name)
    _check_layout(shape, n, name)
    return sp, org, d


def _check_layout(shape: tuple[int, ...], n: int, name: str) -> None:
    """Refuse an array that is not ``n``-dimensional (``(z, y, x)`` or ``(y, x)``) with at most 4 colour
    components last: a channel-first array, or an array of another dimension than its geometry, would be read
    as a picture of as many components as the array has columns."""
    order = "(z, y, x)" if n == 3 else "(y, x)"
    if len(shape) == n + 1 and shape[0] == 1 and shape[-1] > 4:
        raise InputError(f"{name}: the array {tuple(shape)} has a leading channel axis of size 1 for a {n}D "
                         f"geometry; drop the channel axis (array[0]) and give the voxels in {order} order.")  # fmt: skip
    if len(shape) not in (n, n + 1) or (len(shape) == n + 1 and shape[-1] > 4):
        raise InputError(f"{name}: an array of shape {tuple(shape)} does not fit a {n}D geometry ({n} spacing "
                         f"values): its voxels must be {order}, colour components (at most 4) last; give the "
                         "geometry of the array's dimension, or keep one channel.")  # fmt: skip


def sheared_error(path: os.PathLike | str, detail: str = "") -> InputError:
    return InputError(
        f"{path}: the image's axes are not perpendicular (a sheared grid{detail}), which this program cannot "
        "represent; resample it onto an orthogonal grid first (e.g. with 3D Slicer's Resample Scalar Volume)."
    )


def check_orthogonal(direction: Sequence[float], name: os.PathLike | str) -> None:
    """Refuse a flattened ``n x n`` direction whose columns are not perpendicular unit vectors (within 1e-3)."""
    n = int(round(np.sqrt(len(direction))))
    d = np.asarray(direction, dtype=float).reshape(n, n)
    gram = d.T @ d
    if np.allclose(gram, np.eye(n), atol=1e-3):
        return
    if np.allclose(gram, np.diag(np.diag(gram)), atol=1e-3) and np.all(np.diag(gram) > 0):
        raise InputError(
            f"{name}: the direction's columns have lengths {' '.join(f'{v:g}' for v in np.sqrt(np.diag(gram)))}, "
            "not 1: a direction holds unit vectors and the voxel size belongs in the spacing; fix the file's header "
            "(e.g. resave it from 3D Slicer) or the geometry given."
        )
    raise sheared_error(name, f", direction {' '.join(f'{v:g}' for v in d.ravel())}")


# --- MONAI and nibabel ------------------------------------------------------------------------------------
def foreign_kind(obj: Any) -> Optional[str]:
    """``"MONAI"`` for a MONAI ``MetaTensor``, ``"nibabel"`` for a nibabel spatial image, else None; told by
    class names, so that neither package is imported to ask."""
    names = {(c.__module__.split(".")[0], c.__name__) for c in type(obj).__mro__}
    if ("monai", "MetaTensor") in names:
        return "MONAI"
    if ("nibabel", "SpatialImage") in names:
        return "nibabel"
    return None


def plain_array(array: Any, name: str) -> np.ndarray:
    """``array`` as a numpy array for :class:`~.image.Image`.

    Raises:
        InputError: a MONAI or nibabel image, whose voxels are ``(x, y, z)`` in RAS, naming its converter.
    """
    kind = foreign_kind(array)
    if kind:
        raise InputError(
            f"{name}: a {kind} image holds its voxels as (x, y, z) with an RAS affine, not the (z, y, x) array in "
            f"LPS that Image(array, spacing, origin, direction) takes; convert it with Image.from_{kind.lower()}()."
        )
    return np.asarray(array)


class Voxels(NamedTuple):
    """A MONAI or nibabel image's data as they come: ``voxels`` ``(x, y[, z][, c])`` (a channel axis last,
    ``c > 1``), ``affine`` (voxel index to world mm, at least ``(ndim + 1) x (ndim + 1)``), ``ndim`` (2 or 3),
    ``ras`` (the affine is RAS; else LPS) and ``source`` (the file it was loaded from, or None)."""

    voxels: np.ndarray
    affine: np.ndarray
    ndim: int
    ras: bool
    source: Optional[str]


def monai_voxels(tensor: Any) -> Voxels:
    """The :class:`Voxels` of a MONAI ``MetaTensor``: ``(x, y, z)``, or channel-first ``(C, x, y, z)`` as
    ``LoadImage(ensure_channel_first=True)`` and MONAI's transforms give it (``(x, y)``, ``(C, x, y)`` in 2D; a
    colour picture read without ``ensure_channel_first`` has its channels last). The affine is in the frame
    ``meta["space"]`` names, RAS (MONAI's default) or LPS; a 2D image without a space (a picture from MONAI's
    PIL reader, whose affine is its pixel grid) keeps its pixel axes, as :func:`~.image.read_image` reads it.

    Raises:
        InputError: a batch or another shape, a space other than RAS and LPS.
    """
    meta = dict(getattr(tensor, "meta", None) or {})
    voxels = tensor.detach().cpu().numpy()
    spatial = meta.get("spatial_shape")
    spatial = tuple(int(v) for v in np.asarray(spatial).ravel()) if spatial is not None else None
    ndim = len(spatial) if spatial and len(spatial) in (2, 3) else (3 if voxels.ndim >= 3 else 2)
    filename = meta.get("filename_or_obj")
    source = str(filename) if isinstance(filename, (str, os.PathLike)) and str(filename) else None
    name = source or "image"
    if voxels.ndim not in (ndim, ndim + 1):
        raise InputError(
            f"{name}: a MONAI image of shape {tuple(voxels.shape)} is neither {ndim}D nor channel-first {ndim}D "
            f"(C, x, y{', z' if ndim == 3 else ''}); pass one image (e.g. tensor[0] of a batch)."
        )
    if voxels.ndim == ndim + 1:
        last = spatial is not None and voxels.shape[:ndim] == spatial and voxels.shape[1:] != spatial
        voxels = voxels if last else np.moveaxis(voxels, 0, -1)
        voxels = voxels[..., 0] if voxels.shape[-1] == 1 else voxels
    space = meta.get("space")
    space = None if space is None else str(getattr(space, "value", space)).upper()
    if space not in (None, "RAS", "LPS"):
        raise InputError(
            f"{name}: the MONAI image's space is {space!r}; only RAS and LPS affines are understood."
        )
    affine = tensor.affine
    affine = np.asarray(affine.detach().cpu().numpy() if hasattr(affine, "detach") else affine, dtype=float)
    return Voxels(voxels, affine, ndim, space == "RAS" or (space is None and ndim == 3), source)


def nibabel_voxels(img: Any) -> Voxels:
    """The :class:`Voxels` of a nibabel spatial image (``nibabel.load``: NIfTI, Analyze, MGH, ...): data
    ``(x, y, z)`` scaled as nibabel scales them (``(x, y)`` in 2D; ``(x, y, z, 1)`` as that volume;
    ``(x, y, z, 1, c)`` a vector image), RAS affine.

    Raises:
        InputError: several volumes, more than 5 or fewer than 2 dimensions, no affine.
    """
    filename = img.get_filename() if hasattr(img, "get_filename") else None
    name = filename or "image"
    if img.affine is None:
        raise InputError(
            f"{name}: the nibabel image has no affine, so its voxels have no place in the world."
        )
    voxels = np.asanyarray(img.dataobj)
    shape = tuple(voxels.shape)
    if not 2 <= len(shape) <= 5:
        raise InputError(f"{name}: has {len(shape)} dimensions; only 2D images and 3D volumes are supported.")
    if len(shape) >= 4:
        if shape[3] != 1:
            raise InputError(
                f"{name}: is 4D ({shape[3]} volumes, e.g. time points or channels) where a 3D volume is needed; "
                "extract one volume first (e.g. in Slicer, or with nibabel: img.slicer[..., 0])."
            )
        voxels = voxels[:, :, :, 0]
    return Voxels(np.asarray(voxels), np.asarray(img.affine, dtype=float), min(len(shape), 3), True, filename)


def sitk_of_voxels(data: Voxels, picture: bool = False) -> sitk.Image:
    """A SimpleITK image (LPS) of :class:`Voxels`, every voxel at its world position; a colour channel axis
    becomes vector pixels. A ``picture`` loaded as floats gets back the whole-number type its file stored, so
    that it is read as :func:`~.image.read_image` reads the file.

    Raises:
        InputError: a degenerate affine (an axis of no length, two axes along one line).
    """
    n = data.ndim
    arr = np.transpose(data.voxels, (*range(n - 1, -1, -1), *range(n, data.voxels.ndim)))  # -> (z, y, x[, c])
    if arr.dtype == bool or arr.dtype == np.float16:  # types ITK does not hold
        arr = arr.astype(np.uint8 if arr.dtype == bool else np.float32)
    m = data.affine
    rzs, origin = m[:n, :n].copy(), m[:n, -1].copy()
    if data.ras:
        rzs[:2], origin[:2] = -rzs[:2], -origin[:2]
    spacing = np.linalg.norm(rzs, axis=0)
    if not np.all(np.isfinite(m)) or np.any(spacing < 1e-9) or abs(np.linalg.det(rzs)) < 1e-12:
        raise InputError(
            f"{data.source or 'image'}: the affine {m[: n + 1, : n + 1].round(4).tolist()} gives the voxel axes no "
            "volume (an axis of no length, or two axes along one line); fix the image's affine."
        )
    if picture and arr.dtype.kind == "f" and arr.size:
        top = float(arr.max())
        if float(arr.min()) >= 0 and top <= 65535 and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.uint8 if top < 256 else np.uint16)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=arr.ndim > n)
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(origin.tolist())
    img.SetDirection((rzs / spacing).ravel().tolist())
    return img


__all__ = [
    "Voxels",
    "check_orthogonal",
    "checked_geometry",
    "foreign_kind",
    "monai_voxels",
    "nibabel_voxels",
    "plain_array",
    "sheared_error",
    "sitk_of_voxels",
]
