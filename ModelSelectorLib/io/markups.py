"""Slicer markups files (``.mrk.json``): point lists with LPS positions in mm."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..atomic import write_json
from ..errors import InputError

PathLike = Union[str, Path]


def markups_json(points_lps: np.ndarray, names: Sequence[str], label: str = "Landmarks") -> dict[str, Any]:
    """A Slicer markups point list (``.mrk.json``, schema v1.0.3) with LPS positions in mm."""
    cps = [{"id": str(i + 1), "label": str(name), "description": "", "associatedNodeID": "",
            "position": [float(v) for v in p], "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
            "selected": True, "locked": False, "visibility": True, "positionStatus": "defined"}
           for i, (name, p) in enumerate(zip(names, points_lps))]  # fmt: skip
    return {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
        "Schema/markups-schema-v1.0.3.json#",
        "markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm", "locked": False,
                     "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d", "lastUsedControlPointNumber":
                     len(cps), "name": label, "controlPoints": cps, "measurements": [],
                     "display": {"visibility": True, "opacity": 1.0, "color": [0.4, 1.0, 1.0],
                                 "selectedColor": [1.0, 0.5, 0.5], "propertiesLabelVisibility": False,
                                 "pointLabelsVisibility": True, "textScale": 2.0, "glyphType": "Sphere3D",
                                 "glyphScale": 1.5, "glyphSize": 5.0, "useGlyphScale": True}}],
    }  # fmt: skip


def write_markups(
    path: PathLike, points_lps: np.ndarray, names: Sequence[str], label: str = "Landmarks"
) -> Path:
    """Write a Slicer ``.mrk.json`` point list atomically; returns the path."""

    path = Path(path)
    if not path.name.endswith(".json"):
        raise InputError(f"{path}: a landmark output must be a Slicer markups file ending in .mrk.json.")
    write_json(path, markups_json(points_lps, names, label))
    return path


def read_markups(path: PathLike) -> tuple[np.ndarray, list[str]]:
    """Positions ``(N, 3)`` (LPS mm) and labels of the first point list of a ``.mrk.json``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    m = data["markups"][0]
    pts = np.array([cp["position"] for cp in m["controlPoints"]], float)
    if m.get("coordinateSystem", "LPS") == "RAS":
        pts[:, :2] *= -1
    return pts, [cp["label"] for cp in m["controlPoints"]]
