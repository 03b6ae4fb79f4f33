"""Datasets: Medical Segmentation Decathlon (MSD) folders, CSV manifests, and synthetic test data.

* :func:`load_msd` reads an MSD-style folder (``dataset.json`` + ``imagesTr``/``labelsTr``) and checks that
  every listed file exists.
* :func:`load_manifest` reads a CSV manifest (columns ``path, modality, body_region, ...``) such as
  ``shared/data/manifest.csv``.
* :func:`make_synthetic_case` / :func:`make_synthetic_msd` generate small CT-like or MR-like volumes with two
  foreground classes (an ellipsoid and a box) on an oblique, anisotropic grid, for tests and demos.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .atomic import write_json
from .errors import DatasetError
from .io import Image, write_image

#: label names and colours (RGB 0-1) of the synthetic task
SYNTHETIC_LABELS = {"0": "background", "1": "sphere", "2": "box"}
SYNTHETIC_COLORS = {1: (0.9, 0.3, 0.2), 2: (0.2, 0.6, 0.9)}

_MR_ALIASES = ("MR", "MRI", "T1", "T2", "FLAIR", "ADC", "DWI", "T1W", "T2W", "CINE", "PD")


def normalize_modality(name: str) -> str:
    """Map an MSD/DICOM modality name to the project's codes: ``"CT"``, ``"MR"`` or the name upper-cased.

    Examples: ``"CT"`` -> ``"CT"``; ``"MRI"``, ``"T2"``, ``"FLAIR"``, ``"ADC"`` -> ``"MR"``.
    """
    n = str(name).strip().upper()
    if n.startswith("CT"):
        return "CT"
    if n in _MR_ALIASES or n.startswith("MR"):
        return "MR"
    return n


# --- MSD folders ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class MSDDataset:
    """An MSD dataset folder.

    Attributes:
        root: the folder holding ``dataset.json``.
        name: dataset name from ``dataset.json``.
        modality: ``{"0": "CT", ...}`` as in ``dataset.json`` (one entry per input channel).
        labels: ``{label value: name}``, including 0 (background).
        training: one ``{"image": Path, "label": Path}`` per case, paths absolute.
        description: free text from ``dataset.json``.
        raw: the parsed ``dataset.json``.
    """

    root: Path
    name: str
    modality: dict[str, str]
    labels: dict[int, str]
    training: list[dict[str, Path]]
    description: str = ""
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def n_channels(self) -> int:
        return max(1, len(self.modality))

    @property
    def modality_code(self) -> str:
        """The project's modality code of channel 0 (``"CT"``, ``"MR"``, ...)."""
        return normalize_modality(self.modality.get("0", next(iter(self.modality.values()), "")))

    @property
    def foreground_labels(self) -> dict[int, str]:
        return {v: n for v, n in self.labels.items() if v != 0}


def _resolve(root: Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else (root / p).resolve()


def load_msd(folder: os.PathLike[str] | str) -> MSDDataset:
    """Read an MSD dataset folder and check that every listed image and label file exists.

    Args:
        folder: folder holding ``dataset.json`` (keys ``name``, ``modality``, ``labels``, ``training``).

    Raises:
        DatasetError: missing folder or ``dataset.json``, malformed JSON or keys, or missing files (all named).
    """
    root = Path(folder)
    meta_path = root / "dataset.json"
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder; pass an MSD folder holding dataset.json.")
    if not meta_path.is_file():
        raise DatasetError(f"{root}: holds no dataset.json; it is not an MSD dataset folder.")
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{meta_path}: not valid JSON ({e}).") from e
    missing_keys = [k for k in ("modality", "labels", "training") if k not in raw]
    if missing_keys:
        raise DatasetError(f"{meta_path}: lacks the key(s) {', '.join(missing_keys)} that MSD datasets have.")
    try:
        labels = {int(k): str(v) for k, v in raw["labels"].items()}
        modality = {str(k): str(v) for k, v in raw["modality"].items()}
    except (AttributeError, ValueError) as e:
        raise DatasetError(f"{meta_path}: 'labels' and 'modality' must map numbers to names ({e}).") from e
    training: list[dict[str, Path]] = []
    missing: list[str] = []
    for i, case in enumerate(raw["training"]):
        if not isinstance(case, dict) or "image" not in case or "label" not in case:
            raise DatasetError(f"{meta_path}: training entry {i} needs 'image' and 'label'.")
        entry = {"image": _resolve(root, case["image"]), "label": _resolve(root, case["label"])}
        missing += [str(p) for p in entry.values() if not p.is_file()]
        training.append(entry)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetError(f"{root}: dataset.json lists {len(missing)} missing file(s): {shown}.")
    if not training:
        raise DatasetError(f"{meta_path}: the training list is empty.")
    return MSDDataset(
        root=root.resolve(),
        name=str(raw.get("name", root.name)),
        modality=modality,
        labels=labels,
        training=training,
        description=str(raw.get("description", "")),
        raw=raw,
    )


# --- manifests ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ManifestRow:
    """One row of a CSV manifest.

    Attributes:
        path: absolute file path (relative paths are resolved against the CSV's folder or ``root``).
        modality: e.g. ``"CT"``, ``"MR"``, ``"LABEL(CT)"``.
        body_region: free-text region.
        modality_code: normalised modality code (column ``modality_code`` or derived from ``modality``).
        region_code: ``";"``-joined region codes (column ``region_code``, or ``""``).
        columns: every column of the row as text.
    """

    path: Path
    modality: str
    body_region: str
    modality_code: str
    region_code: str
    columns: dict[str, str]

    def __getitem__(self, key: str) -> str:
        return self.columns[key]

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        return self.columns.get(key, default)


def load_manifest(
    csv_path: os.PathLike[str] | str, root: Optional[os.PathLike[str] | str] = None
) -> list[ManifestRow]:
    """Read a CSV manifest with at least the columns ``path, modality, body_region``.

    Args:
        csv_path: the CSV file.
        root: folder that relative paths are relative to (default: the CSV's folder).

    Raises:
        DatasetError: missing file or missing required columns.
    """
    p = Path(csv_path)
    if not p.is_file():
        raise DatasetError(f"{p}: no such manifest file.")
    base = Path(root) if root is not None else p.parent
    with open(p, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        missing = [c for c in ("path", "modality", "body_region") if c not in fields]
        if missing:
            raise DatasetError(f"{p}: the manifest lacks the column(s) {', '.join(missing)}.")
        rows = []
        for rec in reader:
            cols = {k: (v or "").strip() for k, v in rec.items() if k is not None}
            if not cols.get("path"):
                continue
            rows.append(
                ManifestRow(
                    path=_resolve(base, cols["path"]),
                    modality=cols["modality"],
                    body_region=cols["body_region"],
                    modality_code=cols.get("modality_code") or normalize_modality(cols["modality"]),
                    region_code=cols.get("region_code", ""),
                    columns=cols,
                )
            )
    return rows


# --- synthetic data -------------------------------------------------------------------------------------
def _rotation_z(deg: float) -> tuple[float, ...]:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


def make_synthetic_case(
    seed: int,
    profile: str = "ct",
    shape: Sequence[int] = (24, 32, 32),
    spacing: Sequence[float] = (1.2, 1.2, 3.0),
    oblique: bool = True,
    angle_deg: float = 20.0,
) -> tuple[Image, Image]:
    """A small synthetic volume with two foreground classes and its label map.

    Class 1 is an ellipsoid, class 2 a box, each at a random position inside a body (an elliptic cylinder)
    and with its own intensity. Objects are sized in mm so they survive resampling.

    Args:
        seed: random seed (same seed -> same case).
        profile: ``"ct"`` (HU: air -1000, tissue ~40, ellipsoid ~200, box ~-100, noise) or ``"mr"``
            (positive arbitrary units, smooth multiplicative bias field, noise).
        shape: array shape ``(z, y, x)``.
        spacing: voxel size ``(x, y, z)`` in mm.
        oblique: rotate the grid ``angle_deg`` about z and use a non-zero origin.

    Returns:
        ``(image, label)``: float32 image and uint8 label map (0, 1, 2) with identical geometry.
    """
    if profile not in ("ct", "mr"):
        raise ValueError(f"profile must be 'ct' or 'mr', not {profile!r}")
    rng = np.random.default_rng(seed)
    nz, ny, nx = (int(s) for s in shape)
    sx, sy, sz = (float(s) for s in spacing)
    z, y, x = np.meshgrid(np.arange(nz) * sz, np.arange(ny) * sy, np.arange(nx) * sx, indexing="ij")
    ext = np.array([nx * sx, ny * sy, nz * sz])  # mm, (x, y, z)
    centre = ext / 2.0
    body = ((x - centre[0]) / (0.46 * ext[0])) ** 2 + ((y - centre[1]) / (0.46 * ext[1])) ** 2 <= 1.0

    label = np.zeros((nz, ny, nx), np.uint8)
    # class 2: a box (half-size ~18-22% of the in-plane extent) in one half of the body
    half = rng.integers(0, 2)
    bsize = np.array([rng.uniform(0.17, 0.21), rng.uniform(0.17, 0.21), rng.uniform(0.25, 0.32)]) * ext
    side = 1 if half else -1
    bx = centre[0] + side * rng.uniform(0.18, 0.22) * ext[0]
    by = centre[1] + rng.uniform(-0.08, 0.08) * ext[1]
    bz = centre[2] + rng.uniform(-0.12, 0.12) * ext[2]
    box = (np.abs(x - bx) <= bsize[0]) & (np.abs(y - by) <= bsize[1]) & (np.abs(z - bz) <= bsize[2])
    # class 1: an ellipsoid in the other half
    radii = np.array([rng.uniform(0.17, 0.21), rng.uniform(0.17, 0.21), rng.uniform(0.25, 0.32)]) * ext
    ex = centre[0] - side * rng.uniform(0.18, 0.22) * ext[0]
    ey = centre[1] + rng.uniform(-0.08, 0.08) * ext[1]
    ez = centre[2] + rng.uniform(-0.12, 0.12) * ext[2]
    ell = ((x - ex) / radii[0]) ** 2 + ((y - ey) / radii[1]) ** 2 + ((z - ez) / radii[2]) ** 2 <= 1.0
    label[box & body] = 2
    label[ell & body] = 1

    if profile == "ct":
        img = np.full(label.shape, -1000.0, np.float32)
        img[body] = 40.0
        img[label == 1] = 200.0
        img[label == 2] = -100.0
        img += rng.normal(0.0, 15.0, img.shape).astype(np.float32)
    else:
        img = np.zeros(label.shape, np.float32)
        img[body] = 300.0
        img[label == 1] = 700.0
        img[label == 2] = 120.0
        g = rng.normal(size=3)
        g /= np.linalg.norm(g)
        ramp = (
            g[0] * (x - centre[0]) / ext[0]
            + g[1] * (y - centre[1]) / ext[1]
            + g[2] * (z - centre[2]) / ext[2]
        )
        img *= (1.0 + 0.4 * ramp).astype(np.float32)  # bias field 0.8 - 1.2
        img = np.abs(img + rng.normal(0.0, 15.0, img.shape)).astype(np.float32)

    direction = _rotation_z(angle_deg) if oblique else (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
    origin = (-23.5, 41.25, -12.0) if oblique else (0.0, 0.0, 0.0)
    geo = dict(spacing=(sx, sy, sz), origin=origin, direction=tuple(float(d) for d in direction))
    meta = {"modality": "CT" if profile == "ct" else "MR", "synthetic": True}
    return Image(img, meta=meta, **geo), Image(label, meta={"synthetic": True}, **geo)


def make_synthetic_msd(
    folder: os.PathLike[str] | str,
    n_cases: int = 5,
    profile: str = "ct",
    seed: int = 0,
    **case_kwargs: Any,
) -> Path:
    """Write a synthetic MSD dataset: ``imagesTr/case_NNN.nii.gz``, ``labelsTr/case_NNN.nii.gz``, ``dataset.json``.

    Args:
        folder: output folder (created).
        n_cases: number of cases; case ``i`` uses seed ``seed + i``.
        profile: ``"ct"`` or ``"mr"`` (see :func:`make_synthetic_case`).
        case_kwargs: passed to :func:`make_synthetic_case` (``shape``, ``spacing``, ``oblique``).

    Returns:
        the dataset folder.
    """
    root = Path(folder)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(n_cases):
        image, label = make_synthetic_case(seed + i, profile=profile, **case_kwargs)
        name = f"case_{i:03d}.nii.gz"
        write_image(image, root / "imagesTr" / name)
        write_image(label, root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    write_json(
        root / "dataset.json",
        {
            "name": f"Synthetic{profile.upper()}",
            "description": f"synthetic {profile.upper()} volumes with an ellipsoid (1) and a box (2); seed {seed}",
            "synthetic": True,
            "body_region": "ABDOMEN",
            "modality": {"0": "CT" if profile == "ct" else "MRI"},
            "labels": dict(SYNTHETIC_LABELS),
            "numTraining": n_cases,
            "numTest": 0,
            "training": training,
            "test": [],
        },
    )
    return root
