"""``modelselector apply``: apply a zoo model to an image and write a Slicer ``.seg.nrrd`` (segmentation)
or ``.mrk.json`` (landmarks)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "apply",
        help="apply a zoo model to an image: a .seg.nrrd (segmentation) or .mrk.json (landmarks)",
        description="Apply model --model of the zoo --zoo to IMAGE; the segmentation is written to --out in "
        "exactly the image's geometry, with the model's segment names, colours and terminology; a landmark "
        "model writes its contours as Slicer markups curves (.mrk.json, LPS mm, one closed curve per structure, "
        "point names from the model card; `modelselector landmarks apply --points` writes a point list).",
    )
    p.add_argument("image", type=Path, help="image file (NIfTI, NRRD, MHA, PNG, ...) or DICOM series folder")
    p.add_argument(
        "--zoo", type=Path, default=None, help="zoo folder (default: $MODELSELECTOR_ZOO or the bundled zoo)"
    )
    p.add_argument("--model", required=True, help="model name in the zoo")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output file: OUT.seg.nrrd (segmentation) or OUT.mrk.json (landmarks)",
    )
    p.add_argument(
        "--series", metavar="UID", help="the DICOM series to read from a folder that holds several"
    )
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..apply import apply_to_file
    from ..resources import default_zoo_path

    zoo = args.zoo if args.zoo is not None else default_zoo_path()
    out = apply_to_file(zoo, args.model, args.image, args.out, device=args.device, series_uid=args.series,
                        warn=lambda w: print(f"modelselector: warning: {w}", file=sys.stderr))  # fmt: skip
    print(out)
    return 0
