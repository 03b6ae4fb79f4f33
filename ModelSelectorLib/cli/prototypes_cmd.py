"""``modelselector prototypes``: make the exemplar and data-free prototypes of one zoo model, or of all."""

from __future__ import annotations

import argparse
import sys
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
            "--all: modelselector index build --zoo ZOO, with --data DIR when the index was calibrated on labelled "
            "images)."
        ),
    )
    p.add_argument(
        "--zoo", type=Path, default=None, help="zoo folder (default: $MODELSELECTOR_ZOO, else Resources/zoo)"
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", metavar="NAME", help="model name in the zoo")
    which.add_argument("--all", action="store_true",
                       help="every model of the zoo, current versions (e.g. after the encoder changed; the exemplar "
                       "prototypes come from each card's example inputs, else the stored ones are kept, or embedded "
                       "again from their recorded sources when another encoder made them: see --data)")  # fmt: skip
    p.add_argument("--version", dest="model_version", default=None, help="model version (default: current)")
    p.add_argument("--exemplars", nargs="+", type=Path, default=None, metavar="DIR_OR_FILE",
                   help="example input images, DICOM series folders, or a folder of them (replaces the stored "
                   "exemplar prototypes). A folder gives its image files, or itself when it is one DICOM series "
                   "(files with or without .dcm), each file when it holds single-file DICOM images, and every DICOM "
                   "series folder below it; other subfolders are skipped with a warning. An exemplar is one series: "
                   "put each series in its own folder. An exemplar the encoder reads as another modality:region "
                   "than the card's is named in a warning")  # fmt: skip
    p.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="data folder: exemplar sources inside it are recorded relative to it, and stored exemplars "
                   "recorded relative to it are found there when they must be embedded again (the stored "
                   "prototypes were made by another encoder, or their vectors are damaged)")  # fmt: skip
    p.add_argument("--drop-missing", dest="drop_missing", action="store_true",
                   help="when stored exemplars must be embedded again and some cannot be found, drop those (with a "
                   "warning naming the model and how many) instead of refusing; by default nothing is changed and "
                   "the command names the missing sources")  # fmt: skip
    p.add_argument("--data-free", dest="data_free", type=non_negative_int, default=4, metavar="N",
                   help="inputs to synthesise from the model (default 4; 0 keeps the stored data-free prototypes, "
                   "or drops them with a warning when another encoder made them)")  # fmt: skip
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
    roots = [args.data] if args.data is not None else []
    if args.exemplars is None and not args.drop_missing:  # refuse before synthesising anything
        _check_sources(zoo, names, args.model_version, roots)
    for name in names:
        info: dict = {}
        pset = generate_for_model(zoo, name, exemplars=args.exemplars, data_free=args.data_free,
                                  version=args.model_version, steps=args.steps, seed=args.seed, settings=settings,
                                  source_root=args.data, data_roots=roots, drop_missing=args.drop_missing,
                                  warn=_warn, info=info)  # fmt: skip
        _report(zoo, pset, args.model_version, info)
    if args.all:
        print(f"Rebuild the index: {_build_command(zoo, args.data)}")
    else:
        print(f"Update the index: modelselector index add --zoo {zoo.path} --model {args.model}")
    return 0


def _build_command(zoo: Zoo, data: Any) -> str:
    """The ``index build`` command for ``zoo``: with ``--data`` when its index's calibration was made on
    labelled images, which a build without them refuses to replace."""
    from ..errors import ModelSelectorError
    from ..selection.calibration import made_on_labelled_images
    from ..selection.index import load_index

    command = f"modelselector index build --zoo {zoo.path}"
    if data is not None:
        return f"{command} --data {data}"
    try:
        labelled = made_on_labelled_images(load_index(zoo.path).calibration)
    except ModelSelectorError:  # no index yet, or one that does not load
        labelled = False
    return f"{command} --data DIR (the labelled images its calibration was made on)" if labelled else command


def _warn(message: str) -> None:
    print(f"modelselector: warning: {message}", file=sys.stderr)


def _check_sources(zoo: Zoo, names: list[str], version: Any, roots: list[Path]) -> None:
    """Refuse, before any model is touched, when stored exemplars of a model without example inputs on its card
    must be embedded again with this encoder and some cannot be found (so ``--all`` never stops half-way)."""
    from ..selection.encoder import default_encoder
    from ..selection.prototypes import check_stale_sources, stale_exemplar_sources

    for name in names:
        if not zoo.card(name, version).example_inputs:
            sources, found = stale_exemplar_sources(zoo.get(name, version), default_encoder(), roots)
            check_stale_sources(name, sources, found, drop_missing=False)


def _report(zoo: Zoo, pset: Any, version: Any, info: dict) -> None:
    """Print what this run did for one model: facts of prototypes it kept as they were are not this run's."""
    counts = pset.origins()
    bundle = zoo.get(pset.model, version)
    print(f"{pset.model} {pset.version}: {counts.get('exemplar', 0)} exemplar and {counts.get('data-free', 0)} "
          f"data-free prototype(s) stored in {bundle / 'prototypes'}")  # fmt: skip
    ex, df, dropped = info.get("exemplar"), info.get("data-free"), info.get("dropped_exemplars", 0)
    if ex == "re-embedded":
        print("exemplar prototypes: embedded again with this encoder from their recorded sources"
              + (f" ({dropped} source(s) not found, dropped)" if dropped else ""))  # fmt: skip
    elif ex == "kept":
        print("exemplar prototypes: the stored ones, unchanged")
    meta = pset.meta.get("data-free") or {}
    if df == "made":
        print(f"data-free inputs: {meta.get('n_inputs')} synthesised with {meta.get('method')} "
              f"({meta.get('bn_layers')} batch-norm layer(s), {meta.get('steps')} steps, {meta.get('seconds')} s); "
              f"pictures in {bundle / 'docs' / 'prototypes'}")  # fmt: skip
    elif df == "kept":
        print(
            f"data-free prototypes: the stored ones, unchanged (synthesised {meta.get('created', 'earlier')})"
        )
