"""``modelselector demo``: select and apply models for the bundled sample image (or any image)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import non_negative_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the end-to-end demo on the bundled sample image (or IMAGE) and write the results",
        description="Rank the zoo's models for the bundled sample image (or IMAGE), apply the ones that fit, "
        "and write .seg.nrrd / .mrk.json outputs, overlay images and an HTML summary into --out. For an image "
        "no model fits (e.g. a photograph) it says so and applies nothing.",
    )
    p.add_argument("image", nargs="?", type=Path, help="image to use instead of the bundled sample")
    p.add_argument("--out", type=Path, default=Path("modelselector-demo"), help="output folder")
    p.add_argument(
        "--zoo",
        type=Path,
        default=None,
        help="zoo folder (default: $MODELSELECTOR_ZOO, else the bundled starter zoo)",
    )
    p.add_argument(
        "--series", metavar="UID", help="the DICOM series to read from a folder that holds several"
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument(
        "--max-models", type=non_negative_int, default=3, help="apply at most this many fitting models"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(args.image, args.out, args.zoo, args.device, max_models=args.max_models, series_uid=args.series)
    return 0
