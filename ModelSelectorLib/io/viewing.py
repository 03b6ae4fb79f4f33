"""Images laid out as a viewer shows them, for the pictures the project draws (demo panels, dashboard overlays).

A file may store a volume's voxels in any axis order (MSD NIfTI files run to R, A, S; DICOM series to L, P, S):
drawn as stored, the same patient would appear flipped or upside down from one file to the next. These
functions only reorder and flip voxels (no resampling), so labels drawn over them stay exact.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk

from .image import Image

#: two voxel axes whose cosines with one world axis differ by less than this are a tie, left to SimpleITK's rule
TIE = 1e-6


def _lps_order(direction: np.ndarray) -> Optional[tuple[list[int], list[float]]]:
    """For each LPS axis, the voxel axis (ITK order) running closest to it and the sign of that run, paired as
    ``DICOMOrient`` pairs them (the largest cosine first, then the largest of the remaining axes); None when two
    pairings are (nearly) as close, as in a volume turned by 45 degrees.

    Args:
        direction: ``3 x 3`` direction cosines (columns: world direction of i, j, k).
    """
    mags = np.abs(direction)
    axes = [0, 0, 0]
    for _ in range(3):
        close = np.argwhere(mags > mags.max() - TIE)  # (world, voxel) pairs as close as the closest
        if len(set(close[:, 0])) < len(close) or len(set(close[:, 1])) < len(close):
            return None  # two of them compete for one axis: the choice is SimpleITK's
        w, a = close[0]
        axes[w] = int(a)
        mags[w, :] = mags[:, a] = -1.0  # taken
    return axes, [1.0 if direction[w, a] >= 0 else -1.0 for w, a in enumerate(axes)]


def in_lps_axes(image: Image) -> Image:
    """A volume's voxels reordered and flipped so that its axes run towards L, P and S (the closest axes of an
    oblique one; no resampling). Drawn with the first array axis as slices, each slice is then axial in
    radiological layout: the patient's left on the screen's right, anterior up.

    The voxels are a view of ``image``'s (a transpose and flips, no copy: drawing a few slices of a large
    volume costs no second volume), so the result is for reading; geometry follows the voxels exactly, as
    ``SimpleITK.DICOMOrient(image, "LPS")`` gives it, which decides the rare ties (:data:`TIE`)."""
    d = image.direction_matrix()
    order = _lps_order(d)
    if order is None:
        return Image.from_sitk(sitk.DICOMOrient(image.to_sitk(), "LPS"), dict(image.meta))
    axes, signs = order
    # the array's axes are ITK's reversed; colour components stay last
    perm = [2 - a for a in reversed(axes)] + list(range(3, image.array.ndim))
    flips = tuple(2 - w for w, sg in enumerate(signs) if sg < 0)
    first = np.zeros(3)  # the old index of the new first voxel
    for a, sg in zip(axes, signs):
        first[a] = 0.0 if sg > 0 else image.size[a] - 1.0
    return Image(
        np.flip(image.array.transpose(perm), flips),
        tuple(image.spacing[a] for a in axes),
        tuple((image.ijk_to_lps() @ np.append(first, 1.0))[:3].tolist()),
        tuple(np.stack([d[:, a] * sg for a, sg in zip(axes, signs)], axis=1).ravel().tolist()),
        dict(image.meta),
    )


def as_viewed(image: Image, labels: Optional[Image] = None) -> tuple[Image, Optional[Image]]:
    """An image and its label map (same grid) as a viewer lays them out.

    - a volume: voxel axes running to the patient's left, back and head (:func:`in_lps_axes`), whatever order
      the file stored them in, so that its slices are drawn in radiological layout;
    - a lone slice of a volume (e.g. a coronal radiograph stored as 512 x 1 x 512): in view layout
      (:meth:`Image.in_view_layout`), its single slice along the array's first axis as for an axial one;
    - a 2D image: as it is.

    A volume's voxels are views of the given arrays (no copy), to be read, not written.
    """
    if image.ndim != 3:
        return image, labels
    if not image.is_single_slice:
        return in_lps_axes(image), None if labels is None else in_lps_axes(labels)
    return image.in_view_layout()[0], None if labels is None else labels.in_view_layout()[0]


__all__ = ["as_viewed", "in_lps_axes"]
