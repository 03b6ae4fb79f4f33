"""``modelselector build-starter-zoo``: rebuild the bundled starter zoo from the shared data folder."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import InputError
from .args import fold_list, non_negative_int, positive_float, positive_int

_EPILOG = """\
Stages (run in this order; pick with --stages):
  train       prepare an MSD folder per model from --data, train it, complete its model card, add it
  prototypes  exemplar (training inputs) and data-free prototypes for every model
  index       one hnswlib index over the zoo, in OUT/index

Resumable: a model whose bundle records the same recipe hash (recipe, source files, settings, seed) is
skipped; --force retrains it. Deterministic for a given --seed.

Examples:
  modelselector build-starter-zoo --data ../shared/data --out Resources/zoo
  modelselector build-starter-zoo --data ../shared/data --out /tmp/zoo --only dx-chest-lungs --stages train
  modelselector build-starter-zoo --data ../shared/data --work /tmp/szw --only mr-hippocampus --folds 0,1
  modelselector build-starter-zoo --data ../shared/data --work /tmp/szw --only mr-hippocampus --folds 2,final
  modelselector build-starter-zoo --data ../shared/data --only mr-brain-flair-lesion --test-split split.json
  modelselector build-starter-zoo --data ../shared/data --work /tmp/szw --only mr-brain-flair-lesion --dev-cv 5 --folds 0,1
  modelselector build-starter-zoo --list

--test-split writes the test patients of one held-out-test recipe as the --split of `modelselector
promote`, so that a model built from a changed recipe is compared with the zoo's version on them.

--dev-cv K cross-validates one held-out-validation or -test recipe over its development cases (training and
validation; never its test cases) in K folds, resumable in --work (processes can split them with --folds),
and prints the pooled figures once every fold is done: a choice about the recipe can then rest on every
development case. Nothing goes into a zoo.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build-starter-zoo",
        help="rebuild the starter zoo (models, prototypes, index) from the shared data folder",
        description="Train the starter zoo's task models from the real labelled images of a data folder (see "
        "docs/starter-zoo.md), then build their prototypes and one index.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data", type=Path, help="the shared data folder (holding MANIFEST.md), e.g. ../shared/data"
    )
    p.add_argument("--out", type=Path, help="output zoo folder (default: the bundled Resources/zoo)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="build only these models (see --list)")
    p.add_argument("--seed", type=int, default=0, help="seed of splits, weights and patches (default 0)")
    p.add_argument(
        "--stages", default="train,prototypes,index", help="comma-separated stages (default: all three)"
    )
    p.add_argument(
        "--work", type=Path, help="keep the prepared MSD folders here (default: a temporary folder)"
    )
    p.add_argument(
        "--threads", type=positive_int, help="torch CPU threads during training (default: torch's choice)"
    )
    p.add_argument(
        "--data-free", type=non_negative_int, default=4, help="data-free prototypes per model (default 4)"
    )
    p.add_argument(
        "--epochs-scale",
        type=positive_float,
        default=1.0,
        help="multiply every recipe's epochs (trial builds)",
    )
    p.add_argument(
        "--force", action="store_true", help="retrain models even when their recipe hash is unchanged"
    )
    p.add_argument(
        "--folds",
        type=fold_list,
        help="cross-validation folds to run now, e.g. 0,1, and 'final' for the final model (default all; "
        "processes sharing --work can split them, e.g. --folds 0,1 / --folds 2,final)",
    )
    p.add_argument(
        "--test-split",
        type=Path,
        metavar="FILE",
        help="write the test split of the one --only recipe as a split file for `promote` and exit",
    )
    p.add_argument(
        "--relative", action="store_true", help="with --test-split: paths relative to the file (to commit)"
    )
    p.add_argument(
        "--dev-cv",
        type=positive_int,
        metavar="K",
        help="cross-validate the one --only recipe over its development cases in K folds and exit (needs --work)",
    )
    p.add_argument("--list", action="store_true", help="list the recipes and exit")
    p.set_defaults(func=run)


def _list() -> int:
    from ..starter_zoo.recipes import LandmarkRecipe, recipes

    for r in recipes():
        if isinstance(r, LandmarkRecipe):
            what = f"2D  landmarks: {r.variant}, {100 * r.fraction:g} % labels"
        else:
            what = f"{r.spatial_dims}D  " + ", ".join(lb.name for lb in r.labels)
        print(
            f"{r.name:20s} {r.modality:3s} {r.body_region:8s} {what}"
            + ("" if r.bundled else "  (not bundled yet)")
        )
    return 0


def _one_segmentation_recipe(args: argparse.Namespace, option: str) -> Any:
    """The one segmentation recipe that ``--only`` names, which ``option`` needs."""
    from ..starter_zoo.recipes import Recipe, recipes

    chosen = [r for r in recipes() if r.name in (args.only or [])]
    if len(chosen) != 1 or len(args.only) != 1 or not isinstance(chosen[0], Recipe):
        raise InputError(f"{option} needs one segmentation recipe in --only (see --list).")
    return chosen[0]


def _test_split(args: argparse.Namespace) -> int:
    from ..io.outputs import check_output_file
    from ..starter_zoo.build import write_test_split

    recipe = _one_segmentation_recipe(args, "--test-split")
    out = check_output_file(args.test_split, ".json")
    print(write_test_split(recipe, args.data, out, args.seed, args.relative))
    return 0


def _dev_cv(args: argparse.Namespace) -> int:
    from ..starter_zoo.build import FINAL_RUN, cross_validate_development

    recipe = _one_segmentation_recipe(args, "--dev-cv")
    if args.work is None:
        raise InputError("--dev-cv needs --work, the folder where its folds train and resume.")
    if args.folds is not None and FINAL_RUN in args.folds:
        raise InputError(f"--dev-cv trains no final model: name folds only, not {FINAL_RUN!r}.")
    record = cross_validate_development(
        recipe, args.data, args.work, args.dev_cv, args.folds, args.seed, args.threads, args.epochs_scale,
        log=lambda line: print(line, flush=True),
    )  # fmt: skip
    if record is None:
        print(f"{recipe.name}: folds still missing in {args.work}; run the others (--folds) to pool them")
        return 0
    dice = record["summary"]["dice"]
    print(f"{record['recipe']} {record['version']}: {record['k']}-fold cross-validation over "
          f"{record['development_cases']} development cases (figures as applied)")  # fmt: skip
    for name, fig in record["postprocessing"].items():
        d = dice[name]
        print(f"  {name}: Dice {fig['dice']:.3f} without, {fig['dice_lcc']:.3f} with the largest component; "
              f"as chosen on the pooled folds {d['mean']:.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]")  # fmt: skip
    print(f"  largest component kept for: {', '.join(record['lcc']) or 'none'}; training "
          f"{record['training_time_s'] / 60:.1f} min over the folds")  # fmt: skip
    return 0


def run(args: argparse.Namespace) -> int:
    from ..io.outputs import check_output_folder
    from ..resources import default_zoo_path
    from ..starter_zoo.build import build_starter_zoo

    if args.list:
        return _list()
    if args.data is None:
        raise InputError("pass the shared data folder with --data (e.g. --data ../shared/data).")
    if args.test_split is not None:
        return _test_split(args)
    if args.dev_cv is not None:
        return _dev_cv(args)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    out = check_output_folder(args.out or default_zoo_path())
    t0 = time.monotonic()
    build_starter_zoo(
        args.data, out, only=args.only, seed=args.seed, stages=stages, work_dir=args.work,
        num_threads=args.threads, epochs_scale=args.epochs_scale, data_free=args.data_free, force=args.force,
        log=lambda line: print(line, flush=True),
        folds=args.folds,
    )  # fmt: skip
    print(f"starter zoo in {out} ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    return 0
