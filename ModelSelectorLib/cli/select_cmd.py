"""``modelselector select``: which models of the zoo fit an image?"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..resources import default_zoo_path
from .args import fraction, origins, positive_int


def register(sub: Any) -> None:
    """Add the ``select`` command to the top-level subparsers ``sub``."""
    p = sub.add_parser(
        "select",
        help="which models of the zoo fit this image? (ranked, with reasons)",
        description=(
            "Embed the image, find the nearest model prototypes in the zoo's index, verify the best candidates "
            "with the models themselves, and list the models best first with a calibrated score (0-1; a model "
            "fits when its score reaches the threshold, 0.5 by default). Says plainly when no model fits."
        ),
    )
    p.add_argument("image", metavar="IMAGE", help="image file (NIfTI, NRRD, MHA, PNG, ...) or DICOM folder")
    p.add_argument(
        "--zoo",
        type=Path,
        default=None,
        help="zoo folder (default: $MODELSELECTOR_ZOO, else the bundled zoo)",
    )
    p.add_argument("--index", type=Path, default=None, help="index folder (default: ZOO/index)")
    p.add_argument(
        "--top", type=positive_int, default=5, metavar="K", help="number of models to list (default 5)"
    )
    p.add_argument("--threshold", type=fraction, default=None, metavar="T",
                   help="minimum calibrated score for a model to fit (default 0.5)")  # fmt: skip
    p.add_argument("--origins", type=origins, default="exemplar,data-free",
                   help="prototype origins to use: exemplar, data-free or both (default: exemplar,data-free)")  # fmt: skip
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the model-alone verification of the candidates")  # fmt: skip
    p.add_argument(
        "--series", metavar="UID", help="the DICOM series to read from a folder that holds several"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print exactly one JSON object on stdout (an error prints nothing there: one line on stderr, exit status 2)",
    )
    p.add_argument("--reasons", action="store_true", help="with --json: add each model's reasons")
    p.set_defaults(func=cmd_select)


def cmd_select(args: argparse.Namespace) -> int:
    from ..io.image import read_image
    from ..selection.selector import select

    sel = select(
        read_image(args.image, series_uid=args.series) if args.series else args.image,
        zoo=args.zoo if args.zoo is not None else default_zoo_path(),
        index=args.index,
        top_k=args.top,
        threshold=args.threshold,
        origins=args.origins,
        verify=args.verify,
        progress=True,  # on stderr (or PROGRESS lines): stdout keeps only the answer
    )
    sel.input = str(args.image)
    for w in sel.warnings:
        print(f"modelselector: warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(sel.to_json_dict(reasons=args.reasons)))
        return 0
    print(sel.to_text(reasons="all"))
    return 0
