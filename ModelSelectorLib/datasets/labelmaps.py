"""Label maps as a segmentation network trains on them and as they are scored.

* :func:`class_indices`: a dataset's declared label values (``{0, 255}``, ``{0, 1, 5}``, ``{0, 1, 300}``) mapped to
  consecutive class indices ``0..K`` (0 = background), one network output per declared label.
* :func:`to_class_indices`: a label array in those indices (uint8), refusing values the dataset does not declare.
* :func:`align_label`: a label map on its image's grid. A label whose geometry differs (a Slicer ``.seg.nrrd``
  cropped to its segments, another spacing) is resampled by nearest neighbour through physical space; one whose
  foreground does not land inside the image (a flipped direction, a shifted origin) is refused.

Array layout follows :mod:`ModelSelectorLib.io`: ``(z, y, x)`` / ``(y, x)`` arrays, sizes and spacing ``(x, y[, z])``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Optional, Union

import numpy as np

from ..errors import DatasetError
from ..io.image import Image

PathLike = Union[str, "os.PathLike[str]"]

#: class indices are stored as uint8: background + at most 255 labels
MAX_CLASSES = 256
#: a label may lose at most this fraction of its foreground voxels when it is put on its image's grid
MAX_LOST_FOREGROUND = 0.01
#: foreground voxels checked for landing inside the image (an evenly strided sample of larger labels)
_MAX_CHECKED_VOXELS = 1_000_000


def class_indices(labels: Mapping[int, str], where: PathLike = "dataset.json") -> dict[int, int]:
    """``{declared label value: class index}``: 0 -> 0 (background, declared or not), the foreground values in
    increasing order -> ``1..K``.

    Args:
        labels: ``{value: name}`` as ``dataset.json`` declares them.
        where: the file named in errors.

    Raises:
        DatasetError: a negative value, or more than ``MAX_CLASSES - 1`` foreground labels.
    """
    values = sorted(int(v) for v in labels if int(v) != 0)
    if values and values[0] < 0:
        raise DatasetError(
            f"{where}: label value {values[0]} is negative; label values are whole numbers >= 0."
        )
    if len(values) >= MAX_CLASSES:
        raise DatasetError(
            f"{where}: declares {len(values)} foreground labels; a model here has at most {MAX_CLASSES - 1}, "
            "so merge labels or split them over several models."
        )
    return {0: 0, **{v: i + 1 for i, v in enumerate(values)}}


def is_identity(mapping: Mapping[int, int]) -> bool:
    """True when every declared value is already its class index (labels ``0..K``)."""
    return all(int(v) == int(i) for v, i in mapping.items())


def _shown(values: list[float]) -> str:
    text = ", ".join(str(int(v)) if float(v).is_integer() else str(v) for v in values[:5])
    return text + (f" and {len(values) - 5} more" if len(values) > 5 else "")


def as_label_map(label: Image, path: PathLike) -> Image:
    """``label`` with one value per voxel: a mask saved as a grey RGB(A) picture (equal colour channels; the
    alpha channel ignored) keeps its first channel.

    Raises:
        DatasetError: the colour channels differ, so the file is a colour picture, not a label map.
    """
    if not label.is_multicomponent:
        return label
    array = np.asarray(label.array)
    colours = array[..., : min(array.shape[-1], 3)]
    if not (colours == colours[..., :1]).all():
        raise DatasetError(
            f"{path}: a colour picture, where a label map (one value per pixel, e.g. 0 and 255 in grey) is needed; "
            "save the mask in grey."
        )
    return label.with_array(array[..., 0])


def to_class_indices(array: np.ndarray, mapping: Mapping[int, int], path: PathLike) -> np.ndarray:
    """``array``'s label values replaced by their class indices.

    Args:
        array: label map, any shape, integer or integral float values.
        mapping: :func:`class_indices`.
        path: the label file, named in errors.

    Returns:
        uint8 array of ``array``'s shape holding ``0..K``.

    Raises:
        DatasetError: the array holds a value the mapping (``dataset.json``'s labels) does not declare.
    """
    values = np.unique(np.asarray(array))
    unknown = [float(v) for v in values if not float(v).is_integer() or int(v) not in mapping]
    if unknown:
        raise DatasetError(
            f"{path}: holds label value(s) {_shown(unknown)} that dataset.json does not declare (it declares "
            f"{_shown([float(v) for v in sorted(mapping)])}); add them to its 'labels' or relabel the file."
        )
    if is_identity(mapping) and np.asarray(array).dtype == np.uint8:
        return np.asarray(array)
    keys = np.asarray(sorted(mapping), dtype=np.int64)
    lut = np.asarray([mapping[int(k)] for k in keys], dtype=np.uint8)
    return lut[np.searchsorted(keys, np.asarray(array).astype(np.int64))]


def remap_values(
    array: np.ndarray, mapping: Optional[Mapping[int, int]], path: PathLike = "the label"
) -> np.ndarray:
    """``array`` with each value of ``mapping``'s keys (the split's ``label_values``) replaced by its value, 0
    staying background (a reference label file in the class indices a model outputs); ``array`` itself when
    ``mapping`` is empty.

    Raises:
        DatasetError: the file holds a value the mapping does not name (it is never scored as background).
    """
    if not mapping:
        return array
    classes = to_class_indices(array, {0: 0, **{int(k): int(v) for k, v in mapping.items()}}, path)
    return classes.astype(np.int32)


def _numbers(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in np.round(np.asarray(values, float), 3)) + ")"


def _geometry_text(image: Image) -> str:
    return (f"size {image.size}, spacing {_numbers(image.spacing)}, origin {_numbers(image.origin)}, direction "
            f"{_numbers(image.direction)}")  # fmt: skip


def outside_fraction(label: Image, image: Image) -> float:
    """The fraction (0-1) of ``label``'s foreground voxels whose centres lie outside ``image``'s extent, in
    physical (LPS) space; 0.0 for a label without foreground."""
    idx = np.nonzero(np.asarray(label.array))
    n = idx[0].size
    if n == 0:
        return 0.0
    step = max(1, n // _MAX_CHECKED_VOXELS)
    ijk = np.stack([a[::step] for a in reversed(idx)], axis=0).astype(float)  # (ndim, m), ITK order
    world = label.ijk_to_lps() @ np.vstack([ijk, np.ones((1, ijk.shape[1]))])
    cont = np.linalg.inv(image.ijk_to_lps()) @ world
    size = np.asarray(image.size, float)[:, None]
    inside = np.all((cont[:-1] >= -0.5) & (cont[:-1] <= size - 0.5), axis=0)
    return float(1.0 - inside.mean())


def align_label(label: Image, image: Image, path: PathLike, image_path: Optional[PathLike] = None) -> Image:
    """``label`` on ``image``'s grid (size, spacing, origin and direction): unchanged when the geometries agree,
    otherwise resampled by nearest neighbour (SimpleITK) through physical space.

    Args:
        label: single-component label map.
        image: the image (or prediction) whose grid the label must have.
        path: the label file, named in errors.
        image_path: the image file, named in errors (default: ``image``'s ``meta["path"]``).

    Raises:
        DatasetError: dimensions differ, or more than ``MAX_LOST_FOREGROUND`` of the label's foreground falls
            outside the image, or none is left on its grid: the label's header does not place it on the image.
    """
    import SimpleITK as sitk

    from ..io.geometry import reference_grid, resample_to

    if label.same_geometry(image):
        return label
    target = image_path or image.meta.get("path", "its image")
    if label.ndim != image.ndim:
        raise DatasetError(f"{path}: a {label.ndim}D label for the {image.ndim}D image {target}; give each image a "
                           "label map of its own dimension.")  # fmt: skip
    lost = outside_fraction(label, image)
    res = resample_to(label.to_sitk(), reference_grid(image), sitk.sitkNearestNeighbor, 0.0)
    out = image.with_array(sitk.GetArrayFromImage(res))
    out = Image(out.array, out.spacing, out.origin, out.direction, dict(label.meta))
    had = bool(np.any(np.asarray(label.array)))
    if lost > MAX_LOST_FOREGROUND or (had and not np.any(out.array)):
        what = (
            f"{lost:.0%} of its foreground falls outside"
            if lost > MAX_LOST_FOREGROUND
            else "no foreground is left on"
        )
        raise DatasetError(
            f"{path}: {what} {target}: the label's origin/direction/spacing do not place it on the image (label {_geometry_text(label)}; image {_geometry_text(image)}); fix the "
            "label's header or resample it onto its image."
        )
    return out


__all__ = [
    "MAX_CLASSES",
    "MAX_LOST_FOREGROUND",
    "align_label",
    "as_label_map",
    "class_indices",
    "is_identity",
    "outside_fraction",
    "remap_values",
    "to_class_indices",
]
