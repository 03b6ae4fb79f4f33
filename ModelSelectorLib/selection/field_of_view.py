"""Whether a volume shows as much of the body as a 3D model's training inputs did.

A model trained on crops around one structure (``mr-hippocampus``: about 35 x 50 x 36 mm) segments noise all
over a whole-head scan, and a model trained on whole scans (``mr-brain-flair-lesion``: 256 mm across) sees
too little in such a crop; prototypes and the encoder cannot tell, since a crop of a brain looks like a brain.
The card's plan holds what is needed, with no training data: the median training case size in voxels on the
network grid (``plan.median_shape``) at ``target_spacing``.

The field of view is compared as one figure, the geometric mean of the two largest physical extents (mm);
the smallest is left out, because in a thick-slice stack it is the slice direction, whose nominal spacing is
often not the real one.
A volume suits the model when that figure is within :data:`FACTOR` of the model's: the widest spread of a
training set around its median in the starter zoo is 2.0 (ACDC: 279-702 mm against 353 mm; the
hippocampus crops span 39-48 mm, the FLAIR volumes 256 mm), so a factor of 3 leaves room for any training
case and flags only the crops and whole scans that differ several-fold. 2D images are not compared: their
pixel spacing is often unknown (PNG, JPEG), and a 2D model takes such a picture as showing what its training
images showed (:func:`~ModelSelectorLib.models.segmentation.at_training_field`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Optional

#: a volume suits a model when its field of view is between 1/FACTOR and FACTOR times the model's
FACTOR = 3.0


def extent_mm(size: Sequence[float], spacing: Sequence[float]) -> float:
    """Field of view in mm: the geometric mean of the two largest of ``size * spacing`` (``x, y, z`` order)."""
    ext = sorted((float(n) * float(s) for n, s in zip(size, spacing)), reverse=True)
    return math.sqrt(ext[0] * ext[1]) if len(ext) > 1 else ext[0]


def image_extent_mm(image: Any) -> Optional[float]:
    """Field of view of an :class:`~ModelSelectorLib.io.Image` volume (None for a 2D image or a lone slice)."""
    if image.ndim != 3 or image.is_single_slice:
        return None
    return extent_mm(image.size, image.spacing)


def training_size_mm(card: Any) -> Optional[tuple[float, ...]]:
    """Physical size ``(x, y, z)`` in mm of a 3D model's median training case, from its card (None when the
    card does not say: a 2D model, or no ``plan.median_shape`` and ``target_spacing``)."""
    shape = (card.plan or {}).get("median_shape")
    spacing = card.target_spacing
    if int(card.spatial_dims) != 3 or not shape or not spacing or len(shape) != len(spacing):
        return None
    return tuple(float(n) * float(s) for n, s in zip(shape, spacing))


def training_extent_mm(card: Any) -> Optional[float]:
    """Field of view of a 3D model's median training case (:func:`training_size_mm`; None when unknown)."""
    size = training_size_mm(card)
    return extent_mm(size, [1.0] * len(size)) if size else None


@dataclasses.dataclass(frozen=True)
class FieldOfView:
    """A volume's field of view against a model's: ``image_mm`` and ``model_mm`` (see :func:`extent_mm`), and
    the model's median training case size ``(x, y, z)`` in mm when known (for the advice)."""

    image_mm: float
    model_mm: float
    model_size_mm: tuple[float, ...] = ()

    @property
    def ratio(self) -> float:
        return self.image_mm / self.model_mm

    @property
    def fits(self) -> bool:
        return 1.0 / FACTOR <= self.ratio <= FACTOR

    @property
    def verdict(self) -> str:
        """``"fits"``, ``"needs a crop"`` (the image is wider) or ``"needs a wider view"``."""
        if self.fits:
            return "fits"
        return "needs a crop" if self.ratio > FACTOR else "needs a wider view"

    def describe(self) -> str:
        """What was compared, e.g. ``"the image spans about 256 mm across, the model's training inputs 42 mm"``."""
        return f"the image spans about {self.image_mm:.0f} mm across, the model's training inputs {self.model_mm:.0f} mm"

    def advice(self) -> str:
        """What to do about a mismatch (empty when the field of view fits)."""
        if self.fits:
            return ""
        if self.ratio > FACTOR:
            size = " x ".join(f"{v:.0f}" for v in self.model_size_mm)
            return (
                f"crop the image around the structure{f' to about {size} mm' if size else ''}, with a margin"
            )
        return "give it a scan that shows the whole region"

    def reason(self) -> str:
        """The comparison as one of a selection's reasons."""
        return f"field of view: {self.describe()}" + (f": {self.advice()}" if not self.fits else "")

    def to_json_dict(self) -> dict[str, Any]:
        return {"image_mm": round(self.image_mm, 1), "model_mm": round(self.model_mm, 1),
                "fits": self.fits, "verdict": self.verdict}  # fmt: skip


def compare_field_of_view(
    image_mm: Optional[float], model_mm: Optional[float], model_size_mm: Sequence[float] = ()
) -> Optional[FieldOfView]:
    """The comparison, or None when either side is unknown."""
    if image_mm is None or model_mm is None or model_mm <= 0:
        return None
    return FieldOfView(float(image_mm), float(model_mm), tuple(float(v) for v in model_size_mm))


def card_field_of_view(image_mm: Optional[float], card: Any) -> Optional[FieldOfView]:
    """A volume's field of view ``image_mm`` (:func:`image_extent_mm`) against the model of ``card``."""
    return compare_field_of_view(image_mm, training_extent_mm(card), training_size_mm(card) or ())


def field_of_view(image: Any, card: Any) -> Optional[FieldOfView]:
    """``image``'s field of view against the model of ``card`` (None when it cannot be compared)."""
    return card_field_of_view(image_extent_mm(image), card)


def view_fits(fov: Optional[FieldOfView]) -> bool:
    """True unless the comparison shows a mismatch (an unknown field of view is no reason to refuse)."""
    return fov is None or fov.fits


__all__ = ["FACTOR", "FieldOfView", "card_field_of_view", "compare_field_of_view", "extent_mm", "field_of_view",
           "image_extent_mm", "training_extent_mm", "training_size_mm", "view_fits"]  # fmt: skip
