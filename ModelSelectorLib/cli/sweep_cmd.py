"""``modelselector sweep | leaderboard | dashboard``: train competing configurations and rank them."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .args import metric_name, positive_int

SWEEP_EXAMPLE = """\
example sweep file (YAML):
  task: lungs                      # candidates become zoo models lungs-<candidate>
  seed: 0
  test_fraction: 0.2               # test split for `promote`: no candidate trains or is ranked on it
  selection_fraction: 0.2          # selection split: the leaderboard ranks every candidate on it
  not_in_test: current_cases.txt   # optional: case ids that may not become test cases
  base: {roi_size: [128, 128], target_spacing: [2.8, 2.8], epochs: 20}
  grid:                            # every combination
    architecture: [unet, segresnet, attentionunet, dynunet]
    loss: [dice, dicece, dicefocal]
    augment: [true, false]
  candidates:                      # and/or a list
    - {name: small-lr, architecture: unet, lr: 0.0003}

landmark models: "task_type: landmarks", --dataset a landmark folder, landmark training settings, e.g.
  base: {size: 64, steps: 400, sigma: 1.0, shape_modes: 20, refine_steps: 600, threads: 1}
  grid: {variant: [student_supervised, uncertainty_kd]}

outputs: ZOO/sweeps/TASK/report/leaderboard.html and dashboards/<candidate>/index.html (open from disk).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="train every configuration of a grid/list, rank all on one selection split, write a leaderboard",
        description="Train competing configurations of one task in parallel worker processes (or on a Ray "
        "cluster), add each as a bundle to the zoo --out, evaluate every one on the same held-out selection cases "
        "(Dice, HD95, mean surface distance in mm; in pixels for pictures without a pixel size) and write a leaderboard and one dashboard per model. A "
        "separate test split is kept for `modelselector promote`.",
        epilog=SWEEP_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", type=Path, required=True, help="labelled MSD (or nnU-Net v2) dataset folder")
    p.add_argument("--config", type=Path, required=True, help="sweep YAML file (see below)")
    p.add_argument("--out", type=Path, required=True, help="zoo folder receiving the candidates (created)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local worker processes (default) or a Ray cluster")  # fmt: skip
    p.add_argument("--address", help="Ray cluster address, e.g. ray://head:10001 (default: a local Ray)")
    p.add_argument("--workers", type=positive_int, default=max(1, (os.cpu_count() or 2) // 2),
                   help="parallel worker processes of the local executor (default: half the CPUs)")  # fmt: skip
    p.add_argument(
        "--threads", type=positive_int, default=1, help="torch threads per worker / CPUs per Ray task (1)"
    )
    p.add_argument(
        "--metric",
        type=metric_name,
        help="leaderboard ranking metric: dice, hd95, msd (hd95_px, msd_px for pictures), dice_<label>, mre_mm, sdr_4, ... "
        "(default: dice, or mre_mm for landmark models)",
    )
    p.add_argument("--device", default="cpu", help="torch device of the evaluation (cpu, cuda)")
    p.add_argument("--retrain", action="store_true", help="train candidates again even if already in the zoo")
    p.set_defaults(func=run_sweep)

    lb = sub.add_parser(
        "leaderboard",
        help="rank a sweep's candidates by a metric (rewrites the leaderboard and dashboards)",
        description="Rank the evaluated candidates of a sweep by --metric and rewrite its HTML leaderboard "
        "and dashboards; prints the ranking.",
    )
    lb.add_argument("--zoo", type=Path, required=True, help="zoo folder the sweep wrote to")
    lb.add_argument("--task", required=True, help="task name of the sweep")
    lb.add_argument(
        "--metric",
        type=metric_name,
        help="dice, hd95, msd (hd95_px, msd_px for pictures), dice_<label>, mre_mm, ... "
        "(default: the task's)",
    )
    lb.add_argument("--json", action="store_true",
                    help="print the ranking as JSON: the object report/leaderboard.json holds")  # fmt: skip
    lb.set_defaults(func=run_leaderboard)

    db = sub.add_parser(
        "dashboard",
        help="evaluate one bundle on a test split and write its dashboard",
        description="Evaluate a bundle on the cases of a test split (test_split.json written by `sweep`) and "
        "write its dashboard folder: loss curves, per-case metrics, overlays (ground truth green, prediction red). "
        "Cases the bundle records among its training or validation cases are named in a warning and marked on "
        "the page, which then does not call the cases held out.",
    )
    db.add_argument("--bundle", type=Path, required=True, help="bundle folder")
    db.add_argument("--split", type=Path, required=True, help="test split file (test_split.json)")
    db.add_argument("--out", type=Path, required=True,
                    help="dashboard folder to write: a new or empty one, or an earlier dashboard, which is replaced")  # fmt: skip
    db.add_argument(
        "--metric",
        type=metric_name,
        help="metric ordering the case table, worst first (default: the model's ranking metric: dice, or mre_mm "
        "for landmark models)",
    )
    db.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    db.set_defaults(func=run_dashboard)


def _print_ranking(result: dict, metric: str) -> None:
    """The ranking as the leaderboard page shows it: metric, version, training time, and the mark of a candidate
    that the current sweep file no longer holds."""
    from ..ranking.leaderboard import NOT_IN_SWEEP_FILE, time_column

    time_header, times = time_column(result["ranking"])
    print(f"rank  {'candidate':<28} {metric:>10}  median   worst  {'version':<9} {time_header:>10}")
    for r, t in zip(result["ranking"], times):
        s = r["summary"].get(metric) or {}
        mean = "-" if s.get("mean") is None else f"{s['mean']:.4f}"
        med = "-" if s.get("median") is None else f"{s['median']:.4f}"
        worst = "-" if s.get("worst") is None else f"{s['worst']:.4f}"
        mark = f"  ({NOT_IN_SWEEP_FILE})" if r.get("in_current_sweep_file") is False else ""
        print(f"{r['rank']:>4}  {r['candidate']:<28} {mean:>10}  {med:>6}  {worst:>6}  "
              f"{str(r.get('version') or '-'):<9} {t:>10}{mark}")  # fmt: skip
    print(f"leaderboard: {result['leaderboard']}")


def run_sweep(args: argparse.Namespace) -> int:
    from ..io.outputs import check_output_folder
    from ..ranking.sweep import load_sweep
    from ..ranking.sweep import run_sweep as sweep

    check_output_folder(args.out)
    spec = load_sweep(args.config)
    result = sweep(args.dataset, spec, args.out, executor=args.executor, workers=args.workers,
                   threads=args.threads, address=args.address, metric=args.metric, device=args.device,
                   retrain=args.retrain)  # fmt: skip
    _print_ranking(result, result["metric"])
    return 0


def run_leaderboard(args: argparse.Namespace) -> int:
    from ..ranking.leaderboard import write_reports
    from ..ranking.sweep import sweep_dir
    from ..zoo.catalog import Zoo

    # a missing folder, or one that is not a zoo, is named as such rather than as "no evaluations"
    Zoo(args.zoo).names()
    result = write_reports(sweep_dir(args.zoo, args.task), metric=args.metric)
    if result["removed"]:
        print(f"left out (removed from the zoo since their evaluation): {', '.join(result['removed'])}",
              file=sys.stderr)  # fmt: skip
    if args.json:  # the object leaderboard.json holds
        print(json.dumps(result["document"], indent=2))
    else:
        _print_ranking(result, result["metric"])
    return 0


def run_dashboard(args: argparse.Namespace) -> int:
    from ..atomic import atomic_dir
    from ..errors import InputError
    from ..io.outputs import check_replaced_folder
    from ..ranking import leaderboard as lb
    from ..ranking.promotion import seen_cases
    from ..ranking.scoring import primary_metric
    from ..ranking.sweep import read_split
    from ..zoo.bundle import validate_bundle

    # the dashboard replaces its folder whole (no overlay of an earlier run stays), so it must not hold the user's
    # own files, nor be a sweep's dashboard, which `leaderboard` rewrites from the sweep's own evaluation
    out = check_replaced_folder(args.out, lb.is_dashboard_folder,
                                f"dashboard ({' and '.join(lb.DASHBOARD_FILES)} written by `modelselector dashboard`)",
                                "the dashboard")  # fmt: skip
    split = read_split(args.split)
    task_type = validate_bundle(args.bundle).task_type
    metric = args.metric or primary_metric(task_type)
    # a metric the model cannot have is refused before the whole split is evaluated
    problem = lb.metric_problem(task_type, metric, split.get("labels"), lb.split_in_pixels(split["cases"]))
    if problem:
        raise InputError(f"{args.bundle}: {problem}")
    # a look at training cases is allowed, but its figures must not pass for held-out ones
    seen = seen_cases(args.bundle, split["cases"])
    if seen:
        print(f"modelselector: warning: {len(seen)} of the {len(split['cases'])} cases of {args.split} were training "
              f"or validation cases of {args.bundle} (e.g. {', '.join(seen[:3])}); the dashboard marks them, and its "
              "figures on them are not held-out figures.", file=sys.stderr)  # fmt: skip
    with atomic_dir(out) as staging:
        ev = lb.evaluate_candidate(
            args.bundle, split, staging / "evaluation.json", staging, device=args.device, seen=seen
        )
        page = lb.write_dashboard(ev, staging, metric).name
    print(out / page)
    return 0
