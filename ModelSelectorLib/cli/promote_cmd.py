"""``modelselector promote | retrain | restore``: change a task's current model only for a better one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InputError
from .args import finite_float, metric_name, open_fraction, positive_int


def _gate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", type=Path,
                   help="test split file (default: the one the current version was promoted on, else the "
                        "task's sweep split ZOO/sweeps/TASK/test_split.json)")  # fmt: skip
    p.add_argument("--metric", type=metric_name, help="compared metric: dice, hd95, msd (hd95_px, msd_px for pictures), dice_<label>, mre_mm, sdr_4, ... "
                   "(default: dice, or mre_mm for landmark models)")  # fmt: skip
    p.add_argument("--method", choices=("wilcoxon", "bootstrap"), default="wilcoxon",
                   help="paired test: Wilcoxon signed-rank (default) or paired bootstrap CI")  # fmt: skip
    p.add_argument(
        "--level", type=open_fraction, default=0.95, help="confidence level of the paired test (0.95)"
    )
    p.add_argument("--min-improvement", type=finite_float, default=0.0,
                   help="smallest mean improvement accepted, in the metric's units (0)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "promote",
        help="make a candidate the task's current model only if it is better on the same test cases",
        description="Evaluate the candidate bundle and the task's current version on the same test cases and "
        "promote the candidate (a new version; nothing is overwritten) only if its mean is better and a paired "
        "test is significant. A refusal prints the numbers and exits with status 1.",
    )
    p.add_argument("--zoo", type=Path, required=True, help="zoo folder")
    p.add_argument("--task", required=True, help="model name of the task in the zoo")
    p.add_argument("--candidate", type=Path, required=True,
                   help="candidate bundle folder (a MONAI bundle without a card, e.g. a new release of an imported "
                        "one, is imported with the task's name, modality and body region)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="decide and report only")
    p.add_argument("--trust", action="store_true",
                   help="build the candidate's whole config as MONAI would (its own code), as `zoo add --trust` does; "
                        "the trust is recorded only if the candidate is promoted")  # fmt: skip
    _gate_args(p)
    p.set_defaults(func=run_promote)

    r = sub.add_parser(
        "retrain",
        help="train the task again on new data and promote the result only if the gate accepts it",
        description="Train the task with its current version's settings on a new MSD (or nnU-Net v2) dataset (test cases "
        "removed), then run the same promotion gate as `promote`.",
    )
    r.add_argument("--zoo", type=Path, required=True, help="zoo folder")
    r.add_argument("--task", required=True, help="model name of the task in the zoo")
    r.add_argument(
        "--dataset", type=Path, required=True, help="MSD (or nnU-Net v2) dataset folder with the new data"
    )
    r.add_argument("--epochs", type=positive_int, help="override the number of epochs")
    r.add_argument("--seed", type=int, help="override the training seed")
    _gate_args(r)
    r.set_defaults(func=run_retrain)

    s = sub.add_parser(
        "restore",
        help="make an earlier version of a task current again, or list its history",
        description="Make the version that was current before the present one (or --version) current "
        "again. Versions are never deleted, so any earlier one can be restored.",
    )
    s.add_argument("--zoo", type=Path, required=True, help="zoo folder")
    s.add_argument("--task", required=True, help="model name of the task in the zoo")
    s.add_argument("--version", help="version to make current (default: the previous current one)")
    s.add_argument("--list", action="store_true", help="list versions and history, change nothing")
    s.set_defaults(func=run_restore)


def _report(result: dict, zoo: Path, dry_run: bool = False) -> int:
    from ..zoo.catalog import Zoo
    from .zoo_cmd import note_stale_index

    print(result.get("report") or result.get("reason"))
    if result["accepted"]:
        if result.get("version"):
            print(f"promoted: {result['task']} is now version {result['version']}"
                  + (f" (was {result['previous']})" if result.get("previous") else ""))  # fmt: skip
            note_stale_index(Zoo(zoo), [result["task"]])
        elif dry_run:
            # a task not in the zoo gets 0.1.0 (and a dry run leaves no new zoo behind to ask)
            version = Zoo(zoo).next_version(result["task"]) if result.get("previous") else "0.1.0"
            print(f"dry run: {result['task']} would become version {version}; the zoo is unchanged.")
        return 0
    print(f"refused: {result['task']} stays at version {result['previous']}.")
    return 1


def _check_level(args: argparse.Namespace) -> None:
    if not 0.0 < args.level < 1.0:
        raise InputError(f"--level {args.level} must lie between 0 and 1, e.g. 0.95.")


def run_promote(args: argparse.Namespace) -> int:
    from ..ranking.promotion import promote

    _check_level(args)
    result = promote(args.zoo, args.task, args.candidate, args.split, args.metric, args.method, args.level,
                     args.min_improvement, args.device, dry_run=args.dry_run, trust=args.trust)  # fmt: skip
    return _report(result, args.zoo, args.dry_run)


def run_retrain(args: argparse.Namespace) -> int:
    from ..ranking.promotion import retrain

    _check_level(args)
    settings = {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed)) if v is not None}
    result = retrain(args.zoo, args.task, args.dataset, args.split, settings, args.metric, args.method,
                     args.level, args.min_improvement, args.device)  # fmt: skip
    return _report(result, args.zoo)


def _candidate_text(ev: dict) -> str:
    """The candidate of a promote or refuse event: its card's name and version and the start of its weights'
    SHA-256 (what it was, whether or not its folder still exists), then the folder it came from."""
    card = ev.get("candidate_card") or {}
    folder = ev.get("candidate", "")
    if not card:
        return folder
    sha = str((card.get("weights") or {}).get("sha256", ""))[:12]
    return f"{card.get('name')} {card.get('version')} (weights sha256 {sha}; folder {folder})"


def _event_text(ev: dict) -> str:
    gate = ev.get("gate") or {}
    numbers = ""
    if gate:
        numbers = f" ({gate.get('metric')} mean improvement {gate.get('mean_improvement', 0.0):+.4f}, n={gate.get('n')})"
    action = ev.get("action")
    if action == "refuse":
        return f"refused {_candidate_text(ev)}{numbers}"
    if action == "promote":
        was = f"was {ev['from']}" if ev.get("from") else "first version"
        return f"promoted {ev.get('version')} ({was}) from {_candidate_text(ev)}{numbers}"
    if action == "restore":
        return f"restored {ev.get('version')} (was {ev.get('from')})"
    if action == "remove":
        return f"removed {ev.get('version')}" + (
            f" (current became {ev['current']})" if ev.get("current") else ""
        )
    if action == "build":
        return f"built {ev.get('version')} (was {ev.get('from')}) from recipe {ev.get('recipe_hash')}"
    return json.dumps(ev)


def run_restore(args: argparse.Namespace) -> int:
    from ..ranking.promotion import restore
    from ..zoo.catalog import Zoo
    from .zoo_cmd import note_stale_index

    if args.list:
        zoo = Zoo(args.zoo)
        cur = zoo.current(args.task)
        for v in zoo.versions(args.task):
            info = zoo.version_info(args.task, v)
            test = (info.get("evaluation") or {}).get("test_metrics") or {}
            print(f"{'*' if v == cur else ' '} {v:<10} added {info.get('added', '')}  promoted "
                  f"{info.get('promoted', '-')}  {json.dumps(test)}")  # fmt: skip
        for ev in zoo.history(args.task):
            print(f"  {ev.get('date')} {_event_text(ev)}")
        return 0
    out = restore(args.zoo, args.task, args.version)
    print(f"restored: {out['task']} is now version {out['version']} (was {out['from']}).")
    note_stale_index(Zoo(args.zoo), [args.task])
    return 0
