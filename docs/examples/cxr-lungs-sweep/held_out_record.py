"""Score the promoted lung model on the sweep's test split as the starter zoo scores its models (Dice, HD95,
NSD per case; mean, std and 95 % bootstrap interval) and write the record into the bundle's
``docs/held_out.json``, where ``docs/starter-zoo.md``'s tables come from.

Usage: python held_out_record.py BUNDLE   (run from the checkout; needs msd/ from prepare_cxr_msd.py)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ModelSelectorLib.atomic import write_json
from ModelSelectorLib.starter_zoo.heldout import describe_cases, score_bundle
from ModelSelectorLib.starter_zoo.report import HELD_OUT_FILE

HERE = Path(__file__).parent
NSD_TOLERANCE = 2.0  # mm
#: JSRT's pixel size in the shared 512-px copy (0.175 mm at 2048 px; every test image's _landmarks.json gives it):
#: the PNG files carry none, so distances are measured with it, while the model sees the files as a user gives them
PIXEL_MM = 0.7


def main(bundle: Path) -> dict:
    split = json.loads((HERE / "test_split.json").read_text(encoding="utf-8"))
    cases = [{"image": c["image"], "label": c["label"]} for c in split["cases"]]
    per_case = score_bundle(
        bundle, HERE / split["dataset"], cases, NSD_TOLERANCE, pixel_size=(PIXEL_MM, PIXEL_MM)
    )
    record = {
        "protocol": f"test split of {len(cases)} JSRT images that no choice was made on (the sweep chose on 31 "
        "selection images; none of the test images was a training or validation image of either version)",
        "summary": describe_cases(per_case), "per_case": per_case, "nsd_tolerance_mm": NSD_TOLERANCE,
        "distance_unit": "mm",
        "reference": {"source": "HybridGNet (Gaggion et al., IEEE TMI 2022), JSRT lungs at 1024 px",
                      "dice": {"Lungs": 0.966}},
    }  # fmt: skip
    write_json(bundle / HELD_OUT_FILE, record)
    return record


if __name__ == "__main__":
    rec = main(Path(sys.argv[1]))
    print(json.dumps({k: v.get("mean") for k, v in rec["summary"]["dice"].items()}))
