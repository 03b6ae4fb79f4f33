"""``modelselector train``: train a segmentation model on an MSD folder and add it to a zoo."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a segmentation model on an MSD dataset folder and add it to a zoo",
        description="Train a MONAI UNet, SegResNet, AttentionUnet or DynUNet on an MSD folder (dataset.json, imagesTr, labelsTr; or "
        "nnU-Net v2's form of it, one input channel) and add the resulting bundle, with its model card, to the "
        "zoo --out (created if missing).",
    )
    p.add_argument("--dataset", type=Path, required=True, help="MSD (or nnU-Net v2) dataset folder")
    p.add_argument("--name", required=True, help="model name in the zoo (letters, digits, ._+-)")
    p.add_argument("--out", type=Path, required=True, help="zoo folder to add the model to")
    p.add_argument("--config", type=Path, help="YAML file with TrainConfig settings (epochs, roi_size, ...)")
    p.add_argument("--epochs", type=positive_int, help="number of epochs (overrides --config)")
    p.add_argument(
        "--arch",
        choices=("unet", "segresnet", "attentionunet", "dynunet"),
        help="network architecture (overrides --config)",
    )
    p.add_argument("--seed", type=int, help="random seed (overrides --config)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda (overrides --config)")
    p.add_argument("--modality", help="modality code of the card (default: from dataset.json)")
    p.add_argument("--body-region", help="body region of the card, e.g. ABDOMEN (default: from dataset.json)")
    p.add_argument(
        "--work",
        type=Path,
        help="folder for a checkpoint written after every epoch: a run stopped (Ctrl-C, a crash) and started again "
        "with the same settings, cases and --work continues from its last epoch (default: no checkpoint)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io.outputs import check_output_folder
    from ..settings import read_settings_file
    from ..training.segmentation import TrainConfig, train_segmentation
    from ..zoo.catalog import Zoo
    from .zoo_cmd import note_stale_index

    check_output_folder(args.out)
    if args.work is not None:
        check_output_folder(args.work, "--work")
    settings = read_settings_file(args.config, example="epochs: 50") if args.config else {}
    for key, value in (("epochs", args.epochs), ("architecture", args.arch), ("seed", args.seed),
                       ("device", args.device)):  # fmt: skip
        if value is not None:
            settings[key] = value
    config = TrainConfig.from_dict(settings)
    path = train_segmentation(args.dataset, args.name, args.out, config, modality=args.modality,
                              body_region=args.body_region, work_dir=args.work)  # fmt: skip
    print(path)
    note_stale_index(Zoo(args.out), [args.name])  # `select` refuses the zoo until the model is indexed
    return 0
