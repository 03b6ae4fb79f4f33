"""How often the nearest model is a relevant one, on the development images that have a relevant model.

Reads the ``results.csv`` that ``modelselector evaluate-selection --part dev`` wrote for each weight
(``run_weight.sh``) and prints, per ranker, the number of those images whose first model is relevant (same
modality, intersecting regions; a 3D model counts for a lone slice of its domain).

usage: python dev_metrics.py WORK 0 0.3 1.0
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

RANKERS = ("prototypes-exemplar", "prototypes-data-free", "ours-exemplar", "ours-data-free", "ours-both")


def main(work: Path, weights: list[str]) -> None:
    for w in weights:
        rows = list(csv.DictReader(open(work / f"dev_w{w}" / "results.csv", encoding="utf-8")))
        print(f"encoder weight {w}:")
        for ranker in RANKERS:
            have = [r for r in rows if r["ranker"] == ranker and r["relevant_models"]]
            hits = sum(r["top1"] in r["relevant_models"].split(";") for r in have)
            print(f"  {ranker:22s} relevant model first: {hits}/{len(have)} = {hits / len(have):.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
