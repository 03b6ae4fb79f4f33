"""``modelselector landmarks``: compare teacher–student variants, train a landmark student into a zoo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .args import fraction

COMPARE_HELP = """\
Run the comparison grid (variants x label fractions x seeds) on a chest X-ray landmark folder and write
OUT/report.md, OUT/mre_vs_fraction.png, OUT/overlays/ and OUT/results.json. Finished runs are stored in
OUT/runs/ and never repeated: run the same command again to continue after a stop (Ctrl-C). On another
machine, --runs-from OLD/results.json continues from the runs an earlier grid recorded (whole blocks of a
label fraction and seed; the networks are not in results.json, so an unfinished block is trained again).

DIR is the shared data root (with cxr_landmarks/, cxr_lungseg_imlab/, cxr_unlabelled/) or a folder of
<id>.png + <id>_landmarks.json (with an optional unlabelled/ sub-folder).

--config YAML sets any GridConfig field, e.g.
  fractions: [0.1, 0.25, 0.5, 1.0]
  seeds: [0, 1, 2]
  variants: [student_supervised, teacher_supervised, offline_kd, mean_teacher, uncertainty_kd]
  train: {size: 64, steps: 300, batch_size: 8, kd_weight: 1.0, kd_temperature: 1.0, threads: 1}
"""

TRAIN_HELP = """\
Train one landmark model variant on all training images of DIR (the grid's split; --fraction of them
labelled) and add it to the zoo --zoo as a MONAI bundle with task type "landmarks". Apply it with
`modelselector apply --zoo ZOO --model NAME IMAGE --out OUT.mrk.json`.
"""


DEVICE_HELP = "torch device of training: cpu or cuda (default: the config's train.device, else cpu)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("landmarks", help="chest X-ray landmark models: compare variants, train into a zoo",
                       description="Landmark detection by heatmap regression with teacher–student variants.")  # fmt: skip
    lsub = p.add_subparsers(dest="landmarks_command", metavar="COMMAND")
    c = lsub.add_parser("compare", help="run the variant comparison grid and write a report",
                        description=COMPARE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    c.add_argument("--data", type=Path, required=True, help="landmark data folder")
    c.add_argument("--out", type=Path, required=True, help="output folder (runs, report); reuse it to resume")
    c.add_argument("--quick", action="store_true", help="seconds-long configuration of the same code")
    c.add_argument("--config", type=Path, help="YAML with GridConfig settings")
    c.add_argument("--report-only", action="store_true", help="report the finished runs, train nothing")
    c.add_argument("--runs-from", type=Path, metavar="RESULTS_JSON",
                   help="continue an earlier grid: take the whole blocks (fraction and seed) of finished runs "
                   "recorded in its results.json (e.g. docs/landmarks/results.json) as done")  # fmt: skip
    c.add_argument("--device", help=DEVICE_HELP)
    c.set_defaults(func=run_compare)
    t = lsub.add_parser("train", help="train a landmark student and add it to a zoo", description=TRAIN_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    t.add_argument("--data", type=Path, required=True, help="landmark data folder")
    t.add_argument("--zoo", type=Path, required=True, help="zoo folder (created if missing)")
    t.add_argument("--name", default="dx-chest-landmarks", help="model name in the zoo")
    t.add_argument("--version", default="1.0.0", help="model version")
    t.add_argument("--variant", default="uncertainty_kd", help="training variant (default: uncertainty_kd)")
    t.add_argument("--fraction", type=fraction, default=1.0, help="labelled fraction of the training images")
    t.add_argument("--seed", type=int, default=0, help="random seed")
    t.add_argument("--config", type=Path, help="YAML with GridConfig settings (its 'train' block is used)")
    t.add_argument("--quick", action="store_true", help="seconds-long configuration (for trying it out)")
    t.add_argument("--device", help=DEVICE_HELP)
    t.add_argument(
        "--weights", type=Path, help="use these trained weights (a grid run's .pt) instead of training"
    )
    t.add_argument(
        "--refiner", type=Path, help="use this refinement stage (a grid's refiner_*.pt) instead of training"
    )
    t.set_defaults(func=run_train)
    a = lsub.add_parser("apply", help="apply a landmark model: contours as Slicer curves, or a point list",
                        description="Apply landmark model --model to IMAGE and write --out (.mrk.json, LPS mm): one "
                        "closed curve per structure (lungs, heart, clavicles), or with --points one point list.")  # fmt: skip
    a.add_argument(
        "image", type=Path, help="image file (PNG, NRRD, NIfTI, DICOM, ...) or DICOM series folder"
    )
    a.add_argument(
        "--series", metavar="UID", help="the DICOM series to read from a folder that holds several"
    )
    a.add_argument("--zoo", type=Path, help="zoo folder (default: $MODELSELECTOR_ZOO or the bundled zoo)")
    a.add_argument("--model", default="dx-chest-landmarks", help="landmark model in the zoo")
    a.add_argument("--out", type=Path, required=True, help="output OUT.mrk.json")
    a.add_argument("--points", action="store_true", help="write a point list instead of curves")
    a.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    a.set_defaults(func=run_apply)
    sp = lsub.add_parser("split", help="write the landmark grid's test split as a split file for `promote`",
                        description="Write the test images of the landmark grid's split of DIR (with their "
                        "_landmarks.json) as a test split file, the --split of `modelselector promote`.")  # fmt: skip
    sp.add_argument("--data", type=Path, required=True, help="landmark data folder")
    sp.add_argument("--out", type=Path, required=True, help="split file to write (e.g. test_split.json)")
    sp.add_argument("--config", type=Path, help="YAML with GridConfig settings (split seed and fractions)")
    sp.add_argument("--relative", action="store_true", help="paths relative to the file (a split to commit)")
    sp.set_defaults(func=run_split)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _grid_config(args: argparse.Namespace) -> Any:
    from ..training.landmark_study import GridConfig

    if args.config:
        from ..settings import read_settings_file

        data = read_settings_file(args.config, example="seeds: [0, 1, 2]")
        base = GridConfig.quick().to_dict() if getattr(args, "quick", False) else {}
        cfg = GridConfig.from_dict({**base, **data})
    else:
        cfg = GridConfig.quick() if getattr(args, "quick", False) else GridConfig()
    if getattr(args, "device", None):  # checked by cli.main before the command runs
        cfg.train = {**cfg.train, "device": args.device}
    return cfg


def run_compare(args: argparse.Namespace) -> int:
    from ..io.outputs import check_output_folder
    from ..training.landmark_report import best_student, winners
    from ..training.landmark_study import compare

    check_output_folder(args.out)
    cfg = _grid_config(args)
    results = compare(args.data, args.out, cfg, report_only=args.report_only, runs_from=args.runs_from)
    for f, w in winners(results).items():
        print(
            f"{100 * float(f):g} % labels: best student {w['variant']} MRE {w['mean']:.2f} ± {w['std']:.2f} mm"
        )
    best = best_student(results)
    if best:
        print(
            f"best student for the zoo (mean validation MRE): {best['variant']} with {100 * best['fraction']:g} % "
            f"labels, {best['val_mean']:.2f} mm (run {best['name']})"
        )
    print(args.out / "report.md")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from ..training.landmark_study import train_into_zoo

    cfg = _grid_config(args)
    entry = train_into_zoo(args.data, args.zoo, cfg, name=args.name, version=args.version, variant=args.variant,
                           fraction=args.fraction, seed=args.seed, weights=args.weights,
                           refiner=args.refiner)  # fmt: skip
    print(f"{entry['name']} {entry['version']} added to {args.zoo}")
    return 0


def run_apply(args: argparse.Namespace) -> int:
    from ..apply import open_runtime, read_model_input
    from ..errors import InputError
    from ..io.outputs import check_output_file
    from ..models.registry import runtime_class
    from ..resources import default_zoo_path
    from ..zoo.catalog import Zoo

    out = check_output_file(args.out, ".mrk.json")
    zoo = Zoo(args.zoo if args.zoo is not None else default_zoo_path())
    card = zoo.card(args.model)
    if not hasattr(runtime_class(card.task_type), "write_points"):
        raise InputError(f"{args.model} is a {card.task_type} model; `landmarks apply` runs landmark models.")
    # the image is checked (and warned about) as `apply` does, before the model is loaded
    image = read_model_input(args.image, card, series_uid=args.series,
                             warn=lambda w: print(f"modelselector: warning: {w}", file=sys.stderr), zoo=zoo)  # fmt: skip
    runtime = open_runtime(zoo, args.model, args.device)
    prediction = runtime.predict(image)
    print(runtime.write_points(prediction, out) if args.points else runtime.write(prediction, out))
    return 0


def run_split(args: argparse.Namespace) -> int:
    from ..io.outputs import check_output_file
    from ..training.landmark_grid import write_landmark_split

    out = check_output_file(args.out, ".json")
    cfg = _grid_config(args)
    print(
        write_landmark_split(
            args.data, out, cfg.split_seed, cfg.val_fraction, cfg.test_fraction, args.relative
        )
    )
    return 0
