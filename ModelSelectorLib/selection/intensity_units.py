"""Whether an image's voxel values are in the units a model's intensity normalisation expects.

A CT model clips Hounsfield units (``card.intensity["mode"] == "ct"``: e.g. -250..350 HU for abdominal
organs); given an MR volume, or a CT whose DICOM rescale was not applied, it sees values its clipping
window turns into noise. An MR model z-scores arbitrary positive values and has never seen a CT. The encoder
cannot tell: it is made blind to units and windowing on purpose, so that one radiograph saved with 8 or 16
bits reads alike, and it confuses a T1 head volume with a head CT (``pyradiomics/brain1_image``: CT:HEAD,
p = 0.84). The units themselves tell, with no training data:

- in a CT in Hounsfield units, air, lung, bowel gas and the padding outside the scanner's circular field of
  view read -1000 HU or less; in the shared data 36-67 % of every CT file's voxels lie below
  :data:`AIR_HU` (4 CT volumes and a CT slice);
- MR magnitude images are not negative (and z-scored ones stay within a few units of 0): no voxel of the
  391 MR files of the data (volumes and a few slices) lies below it.

So an image is taken to be in Hounsfield units when at least :data:`MIN_AIR_SHARE` of its voxels lie below
:data:`AIR_HU`. A CT model fits only such an image; an MR model fits only an image that is not, and so does a
radiograph model (a projection modality, :data:`PROJECTION_MODALITIES`): a radiograph's pixel values have no
unit but none lies below :data:`AIR_HU` (none of the 460 projection images of the shared data), while a CT
slice in Hounsfield units has its air there.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

#: a voxel below this value (HU) is air, lung, gas or padding in a CT in Hounsfield units
AIR_HU = -500.0
#: an image is in Hounsfield units when at least this share of its voxels lies below :data:`AIR_HU`
MIN_AIR_SHARE = 0.01

#: what a model expects: CT in Hounsfield units, MR values or radiograph pixel values (any scale, not Hounsfield units)
HOUNSFIELD, MR_VALUES, RADIOGRAPH_VALUES = "hounsfield", "mr", "radiograph"
#: DICOM modalities of projection images (radiography, mammography, fluoroscopy, angiography)
PROJECTION_MODALITIES = frozenset({"CR", "DX", "MG", "RF", "XA", "PX", "IO"})

_MAX_SAMPLE = 1_000_000  # voxels read to estimate the share (a 512 x 512 x 300 CT holds 79 million)


def air_share(image: Any) -> float:
    """Share of ``image``'s voxels below :data:`AIR_HU` (0-1), from a regular grid of at most about a
    million voxels (the same step along every axis, so that whole rows and slices are skipped rather than
    read); 0.0 for an image without voxels."""
    array = np.asarray(image.array)
    if not array.size:
        return 0.0
    step = max(1, int(np.ceil((array.size / _MAX_SAMPLE) ** (1.0 / array.ndim))))
    sample = array[(slice(None, None, step),) * array.ndim]
    return float(np.count_nonzero(sample < AIR_HU)) / float(sample.size)


def expected_units(card: Any) -> Optional[str]:
    """:data:`HOUNSFIELD` or :data:`MR_VALUES` from the card's intensity normalisation (or, when the card
    does not say, its modality), else :data:`RADIOGRAPH_VALUES` for a projection modality; None for other
    models (ultrasound, photographs)."""
    mode = card.intensity.get("mode") if card.intensity else str(card.modality).lower()
    units = {"ct": HOUNSFIELD, "mr": MR_VALUES}.get(str(mode))
    if units is None and str(card.modality).upper() in PROJECTION_MODALITIES:
        return RADIOGRAPH_VALUES
    return units


@dataclasses.dataclass(frozen=True)
class Units:
    """An image's values against what a model expects: ``expected`` (:data:`HOUNSFIELD` or
    :data:`MR_VALUES`) and the image's ``air_share`` (:func:`air_share`)."""

    expected: str
    air_share: float

    @property
    def hounsfield(self) -> bool:
        """The image looks like a CT in Hounsfield units."""
        return self.air_share >= MIN_AIR_SHARE

    @property
    def fits(self) -> bool:
        return self.hounsfield == (self.expected == HOUNSFIELD)

    @property
    def verdict(self) -> str:
        """``"fits"``, ``"needs Hounsfield units"`` (a CT model) or ``"no"`` (an MR or radiograph model given
        a CT)."""
        if self.fits:
            return "fits"
        return "needs Hounsfield units" if self.expected == HOUNSFIELD else "no"

    def _share(self) -> str:
        return (
            f"{self.air_share:.0%}" if self.air_share >= 0.005 else ("none" if not self.air_share else "<1%")
        )

    def describe(self) -> str:
        share = self._share()
        what = {HOUNSFIELD: "CT in Hounsfield units", MR_VALUES: "MR"}.get(self.expected, "radiographs")
        return (f"the model takes {what}, and {share} of the image's voxels lie below {AIR_HU:.0f}, where a CT's air, "
                "lung and gas lie (about -1000 HU)")  # fmt: skip

    def advice(self) -> str:
        """What to do about a mismatch (empty when the units fit)."""
        if self.fits:
            return ""
        if self.expected == HOUNSFIELD:
            return ("if this is a CT, read it with its DICOM rescale slope and intercept applied (the DICOM series "
                    "folder, or a NIfTI/NRRD converted from it); an MR image needs an MR model")  # fmt: skip
        return "the image looks like a CT in Hounsfield units; choose a CT model"

    def reason(self) -> str:
        """The comparison as one of a selection's reasons."""
        if self.fits:
            units = "Hounsfield units" if self.hounsfield else "not Hounsfield units"
            return f"intensity units: {units} ({self._share()} of the voxels below {AIR_HU:.0f}), as the model takes"
        return f"intensity units: {self.describe()}: {self.advice()}"

    def to_json_dict(self) -> dict[str, Any]:
        return {"expected": self.expected, "air_share": round(self.air_share, 4), "fits": self.fits}


def compare_units(share: Optional[float], card: Any) -> Optional[Units]:
    """The comparison of an image's :func:`air_share` with the model of ``card``; None when the model
    expects no particular units or the share is unknown."""
    expected = expected_units(card)
    if share is None or expected is None:
        return None
    return Units(expected, float(share))


def units_fit(units: Optional[Units]) -> bool:
    """True unless the comparison shows a mismatch (no comparison is no reason to refuse)."""
    return units is None or units.fits


__all__ = ["AIR_HU", "HOUNSFIELD", "MIN_AIR_SHARE", "MR_VALUES", "PROJECTION_MODALITIES", "RADIOGRAPH_VALUES", "Units",
           "air_share", "compare_units", "expected_units", "units_fit"]  # fmt: skip
