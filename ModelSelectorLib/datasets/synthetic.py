"""Synthetic test data with known answers: small CT-like or MR-like volumes with two foreground classes
(an ellipsoid and a box) on an oblique, anisotropic grid, as single cases or a whole MSD folder."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..atomic import write_json
from ..io.image import Image, write_image

#: label names and colours (RGB 0-1) of the synthetic task
SYNTHETIC_LABELS = {"0": "background", "1": "sphere", "2": "box"}
SYNTHETIC_COLORS = {1: (0.9, 0.3, 0.2), 2: (0.2, 0.6, 0.9)}


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
    label_values: Optional[Mapping[int, int]] = None,
    labels: Optional[Mapping[str, str]] = None,
    **case_kwargs: Any,
) -> Path:
    """Write a synthetic MSD dataset: ``imagesTr/case_NNN.nii.gz``, ``labelsTr/case_NNN.nii.gz``, ``dataset.json``.

    Args:
        folder: output folder (created).
        n_cases: number of cases; case ``i`` uses seed ``seed + i``.
        profile: ``"ct"`` or ``"mr"`` (see :func:`make_synthetic_case`).
        label_values: the value each synthetic label ``v`` gets in the label files (uint16; unnamed ones become
            0), e.g. ``{1: 255}``; default: ``v`` itself.
        labels: ``dataset.json``'s ``labels`` (default: the synthetic ellipsoid and box).
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
        if label_values is not None:
            values = np.zeros(label.array.shape, np.uint16)
            for v, new in label_values.items():
                values[label.array == v] = new
            label = label.with_array(values)
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
            "labels": dict(labels or SYNTHETIC_LABELS),
            "numTraining": n_cases,
            "numTest": 0,
            "training": training,
            "test": [],
        },
    )
    return root
