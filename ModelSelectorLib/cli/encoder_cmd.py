"""``modelselector encoder``: train the bundled image encoder, or classify / embed an image with it."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encoder",
        help="train the image encoder, or classify an image with it",
        description="The image encoder maps an image (2D, or 3D as slices of three planes) to embeddings "
        "used to find matching models; its training head names the image's modality and body region.",
    )
    esub = p.add_subparsers(dest="encoder_command", metavar="ACTION")

    t = esub.add_parser(
        "train",
        help="train the encoder on modality x body-region classes and write weights + model card",
        description="Train on the train part of the protocol split of DATA (radiology_2d/labels.csv and the "
        "images of manifest.csv, split by source and patient with near-duplicates kept together; the epoch is "
        "chosen on the dev part); writes encoder.pt, card.json, README.md, confusion.png and split.json into "
        "--out (atomically).",
    )
    t.add_argument("--data", type=Path, required=True, help="shared data folder, e.g. ../shared/data")
    # no default: forgetting --out would replace the bundled encoder, and every index made with it would stop
    # matching; rebuilding that one is asked for by name (--out Resources/encoder)
    t.add_argument(
        "--out", type=Path, required=True, help="output folder (the bundled one is Resources/encoder)"
    )
    t.add_argument("--epochs", type=positive_int, default=40, help="training epochs (default 40)")
    t.add_argument("--image-size", type=positive_int, default=64, help="view side in pixels (default 64)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument(
        "--max-minutes", type=positive_float, default=60.0, help="stop after this many minutes (default 60)"
    )
    t.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1)")
    t.add_argument("--split", type=Path, default=None, metavar="JSON",
                   help="use this protocol split (from `modelselector encoder split`) instead of making one")  # fmt: skip
    t.set_defaults(func=run_train)

    sp = esub.add_parser(
        "split",
        help="write the protocol split (train / dev / test) of a data folder",
        description="Split DATA's labelled images into train / dev / test by source (whole sources held out "
        "for classes with several) and by patient, keeping near-duplicates (64 px correlation > 0.98, also "
        "flipped or turned) in one part; prints the leakage checks.",
    )
    sp.add_argument("--data", type=Path, required=True, help="shared data folder, e.g. ../shared/data")
    sp.add_argument("--out", type=Path, required=True, help="output JSON file")
    sp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sp.set_defaults(func=run_split)

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
    from ..training.encoder import train_encoder

    out = check_output_folder(args.out)
    card = train_encoder(
        args.data,
        out,
        epochs=args.epochs,
        image_size=args.image_size,
        seed=args.seed,
        max_minutes=args.max_minutes,
        threads=args.threads,
        split_file=args.split,
    )
    v = card["validation"]
    print(f"wrote {out}/encoder.pt ({card['weights_bytes'] / 1e6:.1f} MB), card.json, README.md, confusion.png, "
          "split.json")  # fmt: skip
    print(f"dev accuracy {v['accuracy']:.3f}, balanced accuracy {(v['balanced_accuracy'] or 0.0):.3f}")
    for name, pc in v["per_class"].items():
        r = "-" if pc["recall"] is None else f"{pc['recall']:.2f}"
        print(f"  {name:14s} recall {r}  ({pc['n_dev_images']} dev images)")
    return 0


def run_split(args: argparse.Namespace) -> int:
    from ..evaluation.selection_split import make_split
    from ..training.encoder import portable_data_root

    split = make_split(args.data, seed=args.seed)
    split.save(args.out, portable_data_root(split.root))
    print(f"wrote {args.out}: {len(split.items)} images, digest {split.digest()}, "
          f"{len(split.duplicates)} near-duplicate pairs")  # fmt: skip
    for name, n in split.leakage().items():
        print(f"  {name}: {n}")
    for label, counts in split.counts().items():
        print(f"  {label:18s} " + "  ".join(f"{k} {counts.get(k, 0)}" for k in ("train", "dev", "test")))
    return 0


def run_classify(args: argparse.Namespace) -> int:
    from ..io.image import check_model_input, read_image
    from ..selection.encoder import Encoder

    enc = Encoder.load(args.weights)
    image = read_image(args.image, series_uid=args.series)
    check_model_input(image, str(args.image))  # as select does: a label map or an icon has no class to give
    for name, prob in enc.classify(image, top_k=args.top):
        print(f"{name}\t{prob:.3f}")
    return 0
