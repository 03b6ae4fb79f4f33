"""Slicer segmentations (``.seg.nrrd``) with names, colours, terminology and geometry, through ``slicerio``."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError, OutputError
from .image import Image
from .outputs import output_name

#: Slicer terminology context of the segment category/type codes that cards carry without one: the context
#: that the 3D Slicer module ships for the zoo's labels (``SegmentationCategoryTypeModifier-ModelSelector.term.json``)
TERMINOLOGY_CONTEXT = "Segmentation category and type - ModelSelector"
#: Slicer's standard context of anatomic region codes (DICOM CID 4031 and related), for cards without one
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


def with_contexts(terminology: dict[str, Any]) -> dict[str, Any]:
    """A copy of a Slicer terminology entry with its context names filled in where missing, so that Slicer can
    look its codes up: :data:`TERMINOLOGY_CONTEXT` and, for an anatomic region, :data:`ANATOMIC_CONTEXT`."""
    term = {"contextName": TERMINOLOGY_CONTEXT, **terminology}
    if term.get("anatomicRegion"):
        term.setdefault("anatomicContextName", ANATOMIC_CONTEXT)
    return term


@dataclasses.dataclass
class Segment:
    """One segment of a label map: its label value, name, colour (RGB 0-1) and terminology.

    ``terminology`` follows Slicer: ``{"category": [scheme, code, meaning], "type": [scheme, code, meaning]}``
    with optional ``typeModifier``, ``anatomicRegion``, ``anatomicRegionModifier`` and ``contextName``.
    """

    value: int
    name: str
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)
    terminology: Optional[dict[str, Any]] = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Segment:
        return cls(
            int(d["value"]),
            str(d["name"]),
            tuple(float(c) for c in d.get("color", (0.5, 0.5, 0.5))),
            d.get("terminology"),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"value": self.value, "name": self.name, "color": list(self.color)}
        if self.terminology:
            d["terminology"] = self.terminology
        return d


def write_segmentation(
    labelmap: Image, path: os.PathLike | str, segments: Sequence[Segment | dict[str, Any]]
) -> Path:
    """Write a label map as a Slicer ``.seg.nrrd`` (one layer, one segment per label value), atomically.

    Args:
        labelmap: integer label map; its geometry becomes the segmentation's geometry. A 2D label map is
            written as a one-slice volume.
        path: output path ending in ``.seg.nrrd`` (or ``.nrrd``).
        segments: names, colours and terminology per label value; values absent from ``segments`` are
            written as generic segments named ``Label N``.

    Raises:
        OutputError: ``path`` names another format (``.nii.gz``, ...), which would hold NRRD bytes that no
            reader takes; a plain label map is written in any format by :func:`~.image.write_image`.
    """
    import slicerio

    if not Path(path).name.lower().endswith(".nrrd"):
        raise OutputError(
            f"{path}: a segmentation is written as a Slicer .seg.nrrd, so a file of this name would hold the "
            f"wrong format; name it {output_name(path, '.seg.nrrd')}, or write the plain label map with "
            'io.write_image(prediction.value, "x.nii.gz").'
        )
    lm = labelmap.as_3d()
    if lm.is_multicomponent:
        raise ValueError("a label map must have one component per voxel")
    segs = [s if isinstance(s, Segment) else Segment.from_dict(s) for s in segments]
    values = sorted(int(v) for v in np.unique(lm.array) if v != 0)
    known = {s.value for s in segs}
    segs = segs + [Segment(v, f"Label {v}") for v in values if v not in known]
    seg_dicts: list[dict[str, Any]] = []
    for s in segs:
        d: dict[str, Any] = {
            "id": f"Segment_{s.value}",
            "labelValue": int(s.value),
            "layer": 0,
            "name": s.name,
            "color": [float(c) for c in s.color],
        }
        if s.terminology:
            d["terminology"] = with_contexts(s.terminology)
        seg_dicts.append(d)
    voxels = np.ascontiguousarray(
        np.transpose(lm.array, (2, 1, 0)).astype(np.uint8 if lm.array.max() < 256 else np.int16)
    )
    segmentation = {
        "voxels": voxels,
        "ijkToLPS": lm.ijk_to_lps().tolist(),
        "segments": seg_dicts,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
    }
    path = Path(path)
    with atomic_path(path, suffix=".seg.nrrd") as tmp:
        slicerio.write_segmentation(str(tmp), segmentation)
    return path


def read_segmentation(path: os.PathLike | str) -> tuple[Image, list[Segment]]:
    """Read a Slicer ``.seg.nrrd`` back into a label map :class:`Image` and its :class:`Segment` list."""
    import slicerio

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file; check the path.")
    try:
        seg = slicerio.read_segmentation(str(p))
    except Exception as e:  # slicerio/pynrrd raise several types for bad files
        raise InputError(f"{p}: not a readable Slicer segmentation (.seg.nrrd): {e}") from e
    voxels = np.asarray(seg["voxels"])
    if voxels.ndim == 4:
        raise InputError(f"{p}: has overlapping segments in several layers; flatten it in Slicer first.")
    m = np.asarray(seg["ijkToLPS"], dtype=float)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    direction = m[:3, :3] / spacing
    image = Image(
        np.ascontiguousarray(np.transpose(voxels, (2, 1, 0))),
        tuple(float(s) for s in spacing),
        tuple(float(o) for o in m[:3, 3]),
        tuple(float(d) for d in direction.ravel()),
        {"format": "seg.nrrd", "path": str(p)},
    )
    segments = []
    for s in seg["segments"]:
        segments.append(
            Segment(
                int(s.get("labelValue", 0)),
                s.get("name", ""),
                tuple(s.get("color", (0.5, 0.5, 0.5))),
                s.get("terminology"),
            )
        )
    return image, segments
