"""Slicer markups files (``.mrk.json``): point lists and curves with LPS positions in mm.

One file may hold several markups (Slicer's markups JSON schema allows a list): :func:`write_markups` writes
one point list, :func:`write_curves` a scene-ready set of curves (closed curves for outlines such as the lungs,
open curves for lines), each loaded by Slicer as its own node.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..atomic import write_json
from ..errors import InputError

PathLike = Union[str, Path]

#: the markups JSON schema Slicer reads (``Modules/Loadable/Markups/Resources/Schema``)
MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
    "Schema/markups-schema-v1.0.3.json#"
)
#: the markups types of :class:`Curve` (closed or open) in the JSON file
CURVE_TYPES = {True: "ClosedCurve", False: "Curve"}
_ORIENTATION = [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0]


@dataclasses.dataclass
class Curve:
    """One curve of a markups file.

    Attributes:
        name: the node's name in Slicer.
        points_lps: ``(n, 3)`` control points in LPS millimetres, in order along the curve.
        labels: one label per control point.
        closed: a closed curve (an outline) or an open one.
        color: display colour, RGB in [0, 1].
    """

    name: str
    points_lps: np.ndarray
    labels: list[str]
    closed: bool = True
    color: tuple[float, float, float] = (0.4, 1.0, 1.0)


def _control_points(points_lps: np.ndarray, labels: Sequence[str]) -> list[dict[str, Any]]:
    return [{"id": str(i + 1), "label": str(name), "description": "", "associatedNodeID": "",
             "position": [float(v) for v in p], "orientation": list(_ORIENTATION), "selected": True,
             "locked": False, "visibility": True, "positionStatus": "defined"}
            for i, (name, p) in enumerate(zip(labels, np.asarray(points_lps, float)))]  # fmt: skip


def _markup(
    kind: str, name: str, cps: list[dict[str, Any]], color: Sequence[float], glyph: float
) -> dict[str, Any]:
    return {"type": kind, "coordinateSystem": "LPS", "coordinateUnits": "mm", "locked": False,
            "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d", "lastUsedControlPointNumber": len(cps),
            "name": name, "controlPoints": cps, "measurements": [],
            "display": {"visibility": True, "opacity": 1.0, "color": [float(c) for c in color],
                        "selectedColor": [float(c) for c in color], "propertiesLabelVisibility": False,
                        "pointLabelsVisibility": kind == "Fiducial", "textScale": 2.0, "glyphType": "Sphere3D",
                        "glyphScale": glyph, "glyphSize": 5.0, "useGlyphScale": True}}  # fmt: skip


def markups_json(points_lps: np.ndarray, names: Sequence[str], label: str = "Landmarks") -> dict[str, Any]:
    """A Slicer markups point list (``.mrk.json``, schema v1.0.3) with LPS positions in mm."""
    cps = _control_points(points_lps, names)
    return {"@schema": MARKUPS_SCHEMA, "markups": [_markup("Fiducial", label, cps, (0.4, 1.0, 1.0), 1.5)]}


def curves_json(curves: Sequence[Curve]) -> dict[str, Any]:
    """A Slicer markups file with one closed or open curve per entry of ``curves`` (in that order)."""
    if not curves:
        raise InputError("no curve to write; a markups curve file needs at least one curve.")
    marks = []
    for c in curves:
        pts = np.asarray(c.points_lps, float)
        if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) != len(c.labels) or len(pts) < 2:
            raise InputError(
                f"curve {c.name!r}: needs (n, 3) LPS points (n >= 2) and one label each, got {pts.shape}."
            )
        marks.append(
            _markup(CURVE_TYPES[bool(c.closed)], c.name, _control_points(pts, c.labels), c.color, 0.6)
        )
    return {"@schema": MARKUPS_SCHEMA, "markups": marks}


def _check_suffix(path: Path) -> None:
    if not path.name.lower().endswith(".json"):
        raise InputError(f"{path}: a landmark output must be a Slicer markups file ending in .mrk.json.")


def write_markups(
    path: PathLike, points_lps: np.ndarray, names: Sequence[str], label: str = "Landmarks"
) -> Path:
    """Write a Slicer ``.mrk.json`` point list atomically; returns the path."""
    path = Path(path)
    _check_suffix(path)
    write_json(path, markups_json(points_lps, names, label))
    return path


def write_curves(path: PathLike, curves: Sequence[Curve]) -> Path:
    """Write a Slicer ``.mrk.json`` holding ``curves`` (one markups node each) atomically; returns the path."""
    path = Path(path)
    _check_suffix(path)
    write_json(path, curves_json(curves))
    return path


def read_markups_set(path: PathLike) -> list[dict[str, Any]]:
    """Every markup of a ``.mrk.json``: ``[{"name", "type", "points" (n, 3) LPS mm, "labels"}]`` in file order.

    Raises:
        InputError: not a readable markups file.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        marks = data["markups"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a readable Slicer markups file ({e}).") from e
    out = []
    for m in marks:
        cps = m.get("controlPoints") or []
        pts = np.array([cp["position"] for cp in cps], float).reshape(-1, 3)
        if m.get("coordinateSystem", "LPS") == "RAS":
            pts[:, :2] *= -1
        out.append({"name": m.get("name", ""), "type": m.get("type", ""), "points": pts,
                    "labels": [cp.get("label", "") for cp in cps]})  # fmt: skip
    return out


def read_markups(path: PathLike, index: Optional[int] = None) -> tuple[np.ndarray, list[str]]:
    """Positions ``(N, 3)`` (LPS mm) and labels of the control points of a ``.mrk.json``: of markup ``index``,
    or of every markup in file order (a point list, or the curves of a set) when ``index`` is None."""
    marks = read_markups_set(path)
    if index is not None:
        marks = [marks[index]]
    pts = np.concatenate([m["points"] for m in marks]) if marks else np.zeros((0, 3))
    return pts, [lb for m in marks for lb in m["labels"]]
