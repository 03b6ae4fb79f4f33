"""``modelselector encoder``: train the bundled image encoder, or classify / embed an image with it."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encoder",
        help="train the image encoder, or classify an image with it",
        description="The image encoder maps an image (2D, or 3D as slices of three planes) to 128-d embeddings "
        "used to find matching models; its training head names the image's modality and body region.",
    )
    esub = p.add_subparsers(dest="encoder_command", metavar="ACTION")

    t = esub.add_parser(
        "train",
        help="train the encoder on modality x body-region classes and write weights + model card",
        description="Train on DATA/radiology_2d/labels.csv and the 3D volumes of DATA/manifest.csv; writes "
        "encoder.pt, card.json, README.md and confusion.png into --out (atomically).",
    )
    t.add_argument("--data", type=Path, required=True, help="shared data folder, e.g. ../shared/data")
    t.add_argument(
        "--out", type=Path, default=None, help="output folder (default: the bundled Resources/encoder)"
    )
    t.add_argument("--epochs", type=positive_int, default=18, help="training epochs (default 18)")
    t.add_argument("--image-size", type=positive_int, default=64, help="view side in pixels (default 64)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument(
        "--max-minutes", type=positive_float, default=11.0, help="stop after this many minutes (default 11)"
    )
    t.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1)")
    t.set_defaults(func=run_train)

    c = esub.add_parser(
        "classify",
        help="print the most likely modality x body-region classes of an image",
        description="Classify IMAGE (NIfTI, NRRD, MHA, DICOM folder, PNG, ...) with the encoder's head: "
        "probabilities averaged over the image's views.",
    )
    c.add_argument("image", type=Path, help="image file or DICOM series folder")
    c.add_argument("--weights", type=Path, default=None, help="encoder.pt (default: the bundled encoder)")
    c.add_argument("--top", type=positive_int, default=3, help="how many classes to print (default 3)")
    c.add_argument(
        "--series", metavar="UID", help="the DICOM series to read from a folder that holds several"
    )
    c.set_defaults(func=run_classify)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_train(args: argparse.Namespace) -> int:
    from ..io.outputs import check_output_folder
    from ..resources import encoder_dir
    from ..training.encoder import train_encoder

    out = check_output_folder(args.out if args.out is not None else encoder_dir())
    card = train_encoder(
        args.data,
        out,
        epochs=args.epochs,
        image_size=args.image_size,
        seed=args.seed,
        max_minutes=args.max_minutes,
        threads=args.threads,
    )
    v = card["validation"]
    print(
        f"wrote {out}/encoder.pt ({card['weights_bytes'] / 1e6:.1f} MB), card.json, README.md, confusion.png"
    )
    print(f"validation accuracy {v['accuracy']:.3f}, balanced accuracy {v['balanced_accuracy']:.3f}")
    for name, pc in v["per_class"].items():
        r = "-" if pc["recall"] is None else f"{pc['recall']:.2f}"
        print(f"  {name:14s} recall {r}  ({pc['n_val_views']} views)")
    return 0


def run_classify(args: argparse.Namespace) -> int:
    from ..io.image import read_image
    from ..selection.encoder import Encoder

    enc = Encoder.load(args.weights)
    image = read_image(args.image, series_uid=args.series)
    for name, prob in enc.classify(image, top_k=args.top):
        print(f"{name}\t{prob:.3f}")
    return 0
