"""``modelselector prototypes``: make the exemplar and data-free prototypes of one zoo model, or of all."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..resources import default_zoo_path
from ..selection.inversion import InversionSettings
from ..zoo.catalog import Zoo
from .args import non_negative_float, non_negative_int, positive_int


def register(sub: Any) -> None:
    """Add the ``prototypes`` command to the top-level subparsers ``sub``."""
    p = sub.add_parser(
        "prototypes",
        help="make a model's prototypes (exemplar embeddings, data-free synthesised inputs)",
        description=(
            "Make the prototypes that represent a model in the selector's index and store them in its bundle "
            "(prototypes/prototypes.npz + .json). Exemplar prototypes embed example inputs you give; data-free "
            "prototypes embed inputs synthesised from the model alone (model inversion: batch-norm statistics "
            "matching, confident foreground, image prior, and the selector's encoder reading each input as the card's "
            "modality and region); a few are saved as PNGs in the bundle's "
            "docs/prototypes/. Afterwards update the index: modelselector index add --zoo ZOO --model NAME (after "
            "--all: modelselector index build --zoo ZOO)."
        ),
    )
    p.add_argument(
        "--zoo", type=Path, default=None, help="zoo folder (default: $MODELSELECTOR_ZOO, else Resources/zoo)"
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", metavar="NAME", help="model name in the zoo")
    which.add_argument("--all", action="store_true",
                       help="every model of the zoo, current versions (e.g. after the encoder changed; the exemplar "
                       "prototypes come from each card's example inputs, else the stored ones are kept)")  # fmt: skip
    p.add_argument("--version", dest="model_version", default=None, help="model version (default: current)")
    p.add_argument("--exemplars", nargs="+", type=Path, default=None, metavar="DIR_OR_FILE",
                   help="example input images, or a folder of them (replaces the stored exemplar prototypes)")  # fmt: skip
    p.add_argument("--data-free", dest="data_free", type=non_negative_int, default=4, metavar="N",
                   help="inputs to synthesise from the model (default 4; 0 keeps the stored data-free prototypes)")  # fmt: skip
    p.add_argument(
        "--steps", type=positive_int, default=100, help="optimisation steps of the synthesis (default 100)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the synthesis (default 0)")
    p.add_argument("--encoder-weight", dest="encoder_weight", type=non_negative_float,
                   default=InversionSettings.encoder, metavar="W",
                   help="weight of the synthesis term that asks the selector's encoder to read each input as the "
                   "card's modality and region (default %(default)s; 0 leaves it out)")  # fmt: skip
    p.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    p.set_defaults(func=cmd_prototypes)


def cmd_prototypes(args: argparse.Namespace) -> int:
    import torch

    from ..errors import InputError
    from ..selection.prototypes import generate_for_model

    if args.all and (args.exemplars is not None or args.model_version is not None):
        raise InputError("--all takes each model's current version and its card's example inputs; leave out "
                         "--exemplars and --version, or name one model with --model.")  # fmt: skip
    settings = InversionSettings(encoder=float(args.encoder_weight))
    if args.threads:
        torch.set_num_threads(int(args.threads))
    zoo = Zoo(args.zoo if args.zoo is not None else default_zoo_path())
    names = zoo.names() if args.all else [args.model]
    for name in names:
        pset = generate_for_model(zoo, name, exemplars=args.exemplars, data_free=args.data_free,
                                  version=args.model_version, steps=args.steps, seed=args.seed,
                                  settings=settings)  # fmt: skip
        _report(zoo, pset, args.model_version)
    if args.all:
        print(f"Rebuild the index: modelselector index build --zoo {zoo.path}")
    else:
        print(f"Update the index: modelselector index add --zoo {zoo.path} --model {args.model}")
    return 0


def _report(zoo: Zoo, pset: Any, version: Any) -> None:
    """Print what was stored for one model."""
    counts = pset.origins()
    bundle = zoo.get(pset.model, version)
    print(f"{pset.model} {pset.version}: {counts.get('exemplar', 0)} exemplar and {counts.get('data-free', 0)} "
          f"data-free prototype(s) stored in {bundle / 'prototypes'}")  # fmt: skip
    df = pset.meta.get("data-free")
    if df:
        print(f"data-free inputs: {df.get('n_inputs')} synthesised with {df.get('method')} "
              f"({df.get('bn_layers')} batch-norm layer(s), {df.get('steps')} steps, {df.get('seconds')} s); "
              f"pictures in {bundle / 'docs' / 'prototypes'}")  # fmt: skip
