"""Images laid out as a viewer shows them, for the pictures the project draws (demo panels, dashboard overlays).

A file may store a volume's voxels in any axis order (MSD NIfTI files run to R, A, S; DICOM series to L, P, S):
drawn as stored, the same patient would appear flipped or upside down from one file to the next. These
functions only reorder and flip voxels (no resampling), so labels drawn over them stay exact.
"""

from __future__ import annotations

from typing import Optional

import SimpleITK as sitk

from .image import Image


def in_lps_axes(image: Image) -> Image:
    """A volume's voxels reordered and flipped so that its axes run towards L, P and S (the closest axes of an
    oblique one; no resampling). Drawn with the first array axis as slices, each slice is then axial in
    radiological layout: the patient's left on the screen's right, anterior up."""
    return Image.from_sitk(sitk.DICOMOrient(image.to_sitk(), "LPS"), dict(image.meta))


def as_viewed(image: Image, labels: Optional[Image] = None) -> tuple[Image, Optional[Image]]:
    """An image and its label map (same grid) as a viewer lays them out.

    - a volume: voxel axes running to the patient's left, back and head (:func:`in_lps_axes`), whatever order
      the file stored them in, so that its slices are drawn in radiological layout;
    - a lone slice of a volume (e.g. a coronal radiograph stored as 512 x 1 x 512): in view layout
      (:meth:`Image.in_view_layout`), its single slice along the array's first axis as for an axial one;
    - a 2D image: as it is.
    """
    if image.ndim != 3:
        return image, labels
    if not image.is_single_slice:
        return in_lps_axes(image), None if labels is None else in_lps_axes(labels)
    return image.in_view_layout()[0], None if labels is None else labels.in_view_layout()[0]


__all__ = ["as_viewed", "in_lps_axes"]
