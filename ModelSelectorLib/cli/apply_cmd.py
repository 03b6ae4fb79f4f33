"""``modelselector apply``: apply a zoo model to an image and write a Slicer ``.seg.nrrd`` (segmentation)
or ``.mrk.json`` (landmarks)."""

from __future__ import annotations

import argparse
import os
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
    p.add_argument("image", type=Path, nargs="+",
                   help="image file (NIfTI, NRRD, MHA, PNG, ...) or DICOM series folder; several: --out is a folder "
                        "and each output is named after its image (ct.nii.gz -> ct.seg.nrrd)")  # fmt: skip
    p.add_argument(
        "--zoo", type=Path, default=None, help="zoo folder (default: $MODELSELECTOR_ZOO or the bundled zoo)"
    )
    p.add_argument("--model", required=True, help="model name in the zoo")
    p.add_argument(
        "--out",
        type=str,  # as typed: a trailing separator says "a folder"
        required=True,
        help="output file: OUT.seg.nrrd (segmentation) or OUT.mrk.json (landmarks); or a folder (DIR/, or one that "
        "exists; always with several images), where each output is named after its image",
    )
    p.add_argument(
        "--series", metavar="UID", help="the DICOM series to read from a folder that holds several"
    )
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..apply import apply_to_file, apply_to_files, output_in_folder
    from ..errors import InputError
    from ..resources import default_zoo_path

    zoo = args.zoo if args.zoo is not None else default_zoo_path()

    def warn(w: str) -> None:
        print(f"modelselector: warning: {w}", file=sys.stderr)

    if len(args.image) == 1:  # into a folder (``--out DIR/``, or one that exists) named after the image
        into_folder = args.out.endswith(("/", os.sep)) or Path(args.out).is_dir()
        out = output_in_folder(zoo, args.model, args.image[0], args.out) if into_folder else Path(args.out)
        print(apply_to_file(zoo, args.model, args.image[0], out, device=args.device, series_uid=args.series,
                            warn=warn))  # fmt: skip
        return 0
    if args.series:
        raise InputError(
            "--series chooses the series of one DICOM folder; apply to one folder at a time with it."
        )
    results = apply_to_files(zoo, args.model, args.image, Path(args.out), device=args.device, warn=warn)
    for _, out, _ in results:
        if out is not None:
            print(out)
    skipped = [why for _, _, why in results if why is not None]
    for why in skipped:
        print(f"modelselector: skipped: {why}", file=sys.stderr)
    if skipped:
        print(f"modelselector: error: {len(skipped)} of {len(results)} images were skipped (see above).",
              file=sys.stderr)  # fmt: skip
        return InputError.exit_code
    return 0
