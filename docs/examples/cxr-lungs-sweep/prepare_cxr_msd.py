"""Convert JSRT chest radiographs with lung masks (``cxr_landmarks`` of the shared data) into an MSD folder.

Usage: python prepare_cxr_msd.py DATA_DIR OUT_DIR [--cases N] [--pixel-units] [--cases-of BUNDLE IDS_FILE]

Cases are the first ``N`` JSRT ids (default: all) after a seeded shuffle; label 1 = both lung fields, named,
coloured and coded as the shipped ``dx-chest-lungs`` labels them. By default
each PNG gets its pixel spacing from the case's ``*_landmarks.json`` (``_meta.pixel_spacing_mm``, 0.7 mm for
the 512 px JSRT images), so distances in the evaluation are in mm. ``--pixel-units`` keeps the PNG's own
geometry instead (1 unit per pixel), which is what a user's PNG file gives a model: use it for a model that
is to replace ``dx-chest-lungs``. ``--cases-of`` writes the case ids a zoo bundle trained or chose on (one per
line) to ``IDS_FILE``, for a sweep's ``not_in_test``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ModelSelectorLib.atomic import write_json, write_text
from ModelSelectorLib.io import read_image, write_image
from ModelSelectorLib.ranking.promotion import seen_case_ids
from ModelSelectorLib.starter_zoo.recipes import recipes

#: the label of the shipped dx-chest-lungs (name, colour, terminology), so that a candidate can replace it
LUNGS = recipes(["dx-chest-lungs"])[0].labels[0]


def main(data: Path, out: Path, n_cases: int = 0, pixel_units: bool = False) -> Path:
    folder = data / "cxr_landmarks"
    ids = sorted(p.name[: -len("_lungmask.png")] for p in folder.glob("JPC*_lungmask.png"))
    ids = [ids[i] for i in np.random.default_rng(0).permutation(len(ids))[: n_cases or len(ids)]]
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for cid in sorted(ids):
        image = read_image(folder / f"{cid}.png")
        if image.is_multicomponent:
            image = image.to_grayscale()
        mask = read_image(folder / f"{cid}_lungmask.png", check_content=False)
        if mask.is_multicomponent:
            mask = mask.to_grayscale()
        image = image.with_array(np.asarray(image.array, np.float32))
        if not pixel_units:
            meta = json.loads((folder / f"{cid}_landmarks.json").read_text())["_meta"]
            sp = float(meta.get("pixel_spacing_mm", 1.0))
            image.spacing = (sp, sp)
        label = image.with_array((np.asarray(mask.array) > 0).astype(np.uint8))
        write_image(image, out / "imagesTr" / f"{cid}.nii.gz")
        write_image(label, out / "labelsTr" / f"{cid}.nii.gz")
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    write_json(out / "dataset.json", {
        "name": "JSRT-lungs", "description": "JSRT PA chest radiographs (cxr_landmarks) with SCR lung-field masks",
        "modality": {"0": "DX"}, "body_region": "CHEST", "labels": {"0": "background", "1": LUNGS.name},
        "colors": {"1": list(LUNGS.color)}, "terminology": {"1": LUNGS.terminology},
        "numTraining": len(training), "training": training,
    })  # fmt: skip
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--cases", type=int, default=0, help="number of JSRT images (default all)")
    ap.add_argument("--pixel-units", action="store_true", help="keep 1 unit per pixel, as a user's PNG has")
    ap.add_argument("--cases-of", nargs=2, type=Path, metavar=("BUNDLE", "IDS_FILE"))
    args = ap.parse_args()
    print(main(args.data, args.out, args.cases, args.pixel_units))
    if args.cases_of:
        bundle, ids_file = args.cases_of
        write_text(ids_file, "".join(f"{i}\n" for i in sorted(seen_case_ids(bundle))))
        print(ids_file)
