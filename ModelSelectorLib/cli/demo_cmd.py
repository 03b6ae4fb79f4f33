"""``modelselector demo``: the end-to-end demo on the bundled defaults or on a given image."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the end-to-end demo (bundled zoo, or a tiny synthetic one) and write results",
        description="Apply the zoo's models to a sample image (or IMAGE) and write .seg.nrrd outputs, "
        "overlay images and an HTML summary into --out.",
    )
    p.add_argument("image", nargs="?", type=Path, help="image to use instead of the bundled sample")
    p.add_argument("--out", type=Path, default=Path("modelselector-demo"), help="output folder")
    p.add_argument("--zoo", type=Path, default=None, help="zoo folder (default: the bundled starter zoo)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(args.image, args.out, args.zoo, args.device)
    return 0
