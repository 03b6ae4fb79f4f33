"""Small 2D synthetic data for the sweep, ranking and promotion tests: bright disks on a noisy background."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPACING = (0.8, 1.2)  # mm (x, y): anisotropic on purpose


def disk_case(seed: int, shape: tuple[int, int] = (32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """``(image, label)`` arrays ``(y, x)``: a disk (label 1) of random centre and radius, intensity 200 on 60."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    y, x = np.meshgrid(np.arange(ny) * SPACING[1], np.arange(nx) * SPACING[0], indexing="ij")
    cy, cx = rng.uniform(0.35, 0.65) * ny * SPACING[1], rng.uniform(0.35, 0.65) * nx * SPACING[0]
    r = rng.uniform(5.0, 8.0)
    label = (((y - cy) ** 2 + (x - cx) ** 2) <= r * r).astype(np.uint8)
    image = np.where(label > 0, 200.0, 60.0) + rng.normal(0, 12.0, shape)
    return image.astype(np.float32), label


def make_disk_msd(folder: Path, n_cases: int = 8, seed: int = 0) -> Path:
    """A 2D MSD dataset (NIfTI, spacing :data:`SPACING`, non-zero origin) of disk cases."""
    from ModelSelectorLib.atomic import write_json
    from ModelSelectorLib.io import Image, write_image

    folder = Path(folder)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(n_cases):
        img, lab = disk_case(seed + i)
        geo = dict(spacing=SPACING, origin=(5.0, -3.0), direction=(1.0, 0.0, 0.0, 1.0))
        write_image(Image(img, **geo), folder / "imagesTr" / f"disk_{i:02d}.nii.gz")
        write_image(Image(lab, **geo), folder / "labelsTr" / f"disk_{i:02d}.nii.gz")
        training.append(
            {"image": f"./imagesTr/disk_{i:02d}.nii.gz", "label": f"./labelsTr/disk_{i:02d}.nii.gz"}
        )
    write_json(folder / "dataset.json", {
        "name": "Disks2D", "description": "synthetic 2D disks", "synthetic": True, "body_region": "CHEST",
        "modality": {"0": "DX"}, "labels": {"0": "background", "1": "disk"}, "numTraining": n_cases,
        "training": training,
    })  # fmt: skip
    return folder


#: training settings of a tiny, fast 2D model
TINY = {"channels": [8, 16], "roi_size": [32, 32], "target_spacing": [1.0, 1.0], "intensity": "percentile",
        "batch_size": 2, "num_samples": 2, "augment": False, "val_interval": 1, "seed": 0}  # fmt: skip
