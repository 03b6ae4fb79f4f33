"""Convert JSRT chest radiographs with lung masks (``cxr_landmarks`` of the shared data) into an MSD folder.

Usage: python prepare_cxr_msd.py DATA_DIR OUT_DIR [N_CASES]

Each PNG gets its pixel spacing from the case's ``*_landmarks.json`` (``_meta.pixel_spacing_mm``, 0.7 mm for
the 512 px JSRT images), so distances in the evaluation are in mm. Cases are the first ``N_CASES`` JSRT ids
(sorted) after a seeded shuffle. Label 1 = both lung fields.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ModelSelectorLib.atomic import write_json
from ModelSelectorLib.io import read_image, write_image


def main(data: Path, out: Path, n_cases: int = 48) -> Path:
    folder = data / "cxr_landmarks"
    ids = sorted(p.name[: -len("_lungmask.png")] for p in folder.glob("JPC*_lungmask.png"))
    ids = [ids[i] for i in np.random.default_rng(0).permutation(len(ids))[:n_cases]]
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for cid in sorted(ids):
        meta = json.loads((folder / f"{cid}_landmarks.json").read_text())["_meta"]
        sp = float(meta.get("pixel_spacing_mm", 1.0))
        image = read_image(folder / f"{cid}.png")
        if image.is_multicomponent:
            image = image.to_grayscale()
        mask = read_image(folder / f"{cid}_lungmask.png", check_content=False)
        if mask.is_multicomponent:
            mask = mask.to_grayscale()
        image = image.with_array(np.asarray(image.array, np.float32))
        image.spacing = (sp, sp)
        label = image.with_array((np.asarray(mask.array) > 0).astype(np.uint8))
        write_image(image, out / "imagesTr" / f"{cid}.nii.gz")
        write_image(label, out / "labelsTr" / f"{cid}.nii.gz")
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    write_json(out / "dataset.json", {
        "name": "JSRT-lungs", "description": "JSRT PA chest radiographs (cxr_landmarks) with SCR lung-field masks",
        "modality": {"0": "DX"}, "body_region": "CHEST", "labels": {"0": "background", "1": "lungs"},
        "colors": {"1": [0.77, 0.65, 0.57]}, "numTraining": len(training), "training": training,
    })  # fmt: skip
    return out


if __name__ == "__main__":
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 48
    print(main(Path(sys.argv[1]), Path(sys.argv[2]), n))
