"""``modelselector index``: build, update, calibrate and check the zoo's prototype index."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..resources import default_zoo_path
from ..zoo.catalog import Zoo
from .args import open_fraction


def _common(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--zoo", type=Path, default=None, help="zoo folder (default: $MODELSELECTOR_ZOO, else Resources/zoo)"
    )
    q.add_argument("--index", type=Path, default=None, help="index folder (default: ZOO/index)")


def register(sub: Any) -> None:
    """Add the ``index`` command and its subcommands to the top-level subparsers ``sub``."""
    p = sub.add_parser(
        "index",
        help="build, update, calibrate and check the prototype index of a zoo",
        description=(
            "The selector's index: hnswlib (cosine) over every model's prototypes, with a JSON sidecar, saved "
            "atomically in ZOO/index. Make prototypes first with `modelselector prototypes`."
        ),
    )
    isub = p.add_subparsers(dest="index_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    q = isub.add_parser("build", help="index every model's prototypes and calibrate the threshold")
    _common(q)
    q.add_argument(
        "--far",
        type=open_fraction,
        default=0.05,
        help="false-accept rate of the calibrated threshold (default 0.05)",
    )
    q.add_argument(
        "--no-calibrate", dest="calibrate", action="store_false", help="skip the threshold calibration"
    )
    q.set_defaults(func=cmd_build)

    q = isub.add_parser("add", help="add (or refresh) one model's prototypes")
    _common(q)
    q.add_argument("--model", required=True, metavar="NAME")
    q.add_argument("--version", dest="model_version", default=None, help="model version (default: current)")
    q.add_argument("--calibrate", action="store_true", help="recalibrate the threshold afterwards")
    q.set_defaults(func=cmd_add)

    q = isub.add_parser("remove", help="remove one model from the index")
    _common(q)
    q.add_argument("--model", required=True, metavar="NAME")
    q.set_defaults(func=cmd_remove)

    q = isub.add_parser("calibrate", help="recalibrate the 'nothing fits' threshold")
    _common(q)
    q.add_argument("--far", type=open_fraction, default=0.05, help="false-accept rate (default 0.05)")
    q.set_defaults(func=cmd_calibrate)

    q = isub.add_parser("check", help="check that the index matches the zoo")
    _common(q)
    q.set_defaults(func=cmd_check)


def _paths(args: argparse.Namespace) -> tuple[Zoo, Path]:
    from ..selection.index import default_index_dir

    zoo = Zoo(args.zoo if args.zoo is not None else default_zoo_path())
    return zoo, (args.index if args.index is not None else default_index_dir(zoo))


def _summary(idx: Any) -> str:
    parts = [f"{n} ({len(idx.labels_of(n))})" for n in idx.model_names()]
    return f"{len(idx)} prototype(s) of {len(parts)} model(s): {', '.join(parts)}"


def _print_calibration(cal: dict) -> None:
    th = (cal or {}).get("thresholds", {})
    for key in sorted(th):
        t = th[key]
        tpr = "-" if t.get("tpr") is None else f"{t['tpr']:.2f}"
        far = "-" if t.get("far") is None else f"{t['far']:.2f}"
        rule = "best of the origins' scores" if t.get("fused") else f"threshold {t['raw_threshold']:.3f}"
        print(f"  {key:28s} {rule}  (positives {t['n_positive']}, accepted {tpr}; "
              f"references {t['n_negative']}, falsely accepted {far})")  # fmt: skip


def cmd_build(args: argparse.Namespace) -> int:
    from ..selection.calibration import build_index

    zoo, out = _paths(args)
    idx = build_index(zoo, calibrate=args.calibrate, far=args.far)
    idx.save(out)
    print(f"Index saved to {out}: {_summary(idx)}")
    if args.calibrate:
        print(f"Calibrated 'nothing fits' thresholds (target false-accept rate {args.far}):")
        _print_calibration(idx.calibration)
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from ..selection.index import updating_index

    zoo, out = _paths(args)
    with updating_index(out) as idx:
        n = idx.add_model(zoo, args.model, args.model_version)
        if args.calibrate:
            from ..selection.calibration import calibrate

            calibrate(idx, zoo)
        idx.save(out)
    print(f"Added {n} prototype(s) of {args.model} to {out}; now {_summary(idx)}")
    if not args.calibrate:
        print(
            f"The threshold was calibrated without it; recalibrate with `modelselector index calibrate --zoo {zoo.path}`."
        )
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from ..selection.index import updating_index

    zoo, out = _paths(args)
    with updating_index(out) as idx:
        n = idx.remove_model(args.model)
        idx.save(out)
    print(f"Removed {n} prototype(s) of {args.model} from {out}; now {_summary(idx)}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..selection.calibration import calibrate
    from ..selection.index import updating_index

    zoo, out = _paths(args)
    with updating_index(out) as idx:
        cal = calibrate(idx, zoo, far=args.far)
        idx.save(out)
    print(f"Calibrated thresholds saved to {out} (target false-accept rate {args.far}):")
    _print_calibration(cal)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from ..selection.index import ZooIndex

    zoo, out = _paths(args)
    idx = ZooIndex.load(out)
    idx.check_against(zoo)
    print(f"The index {out} matches the zoo {zoo.path}: {_summary(idx)}")
    _print_calibration(idx.calibration)
    return 0
