"""``modelselector evaluate-selection``: measure model selection against baselines on the protocol split."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from .args import positive_int

_EPILOG = """\
Output in --out: report.md (targets, tables of rankers x metrics for the source-disjoint and the
patient-disjoint images, per class, the encoder's class accuracy against the histogram k-NN, each
model's calibrated operating point, the leakage checks), confusion.png, results.csv (one row per image
and ranker) and metrics.json. Nothing is written before the run has finished.

Example, the test part of the bundled encoder's split of the shared data:
  modelselector evaluate-selection --zoo Resources/zoo --data ../shared/data --out selection_eval \\
      --docs docs/selection-report.md
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate-selection",
        help="evaluate model selection (first fitting model, fit decision, OOD AUROC, ...) against baselines",
        description="Run the selector (exemplar, data-free and both kinds of prototypes) and baselines "
        "(random, image-header rules, intensity-histogram k-NN) on one part of the protocol split (source- and "
        "patient-disjoint, near-duplicates kept together); images the zoo's models were built from are left out.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--zoo", type=Path, default=None, help="zoo folder (default: $MODELSELECTOR_ZOO, else Resources/zoo)"
    )
    p.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="the data folder (default: the one the split file names)")  # fmt: skip
    p.add_argument("--split-file", type=Path, default=None, metavar="JSON",
                   help="protocol split (default: the bundled encoder's split.json)")  # fmt: skip
    p.add_argument("--part", choices=("test", "dev", "train", "all"), default="test",
                   help="which part of the split to evaluate (default test)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="evaluate at most N images (taken class by class in a seeded order)")  # fmt: skip
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the random baseline, tie-breaks and --limit (default 0)"
    )
    p.add_argument("--rankers", default=None,
                   help="comma-separated subset of: ours-exemplar, ours-data-free, ours-both, prototypes-exemplar, "
                   "prototypes-data-free, random, header-rules, histogram-knn-exemplars, histogram-knn-train "
                   "(default: all that apply)")  # fmt: skip
    p.add_argument("--docs", type=Path, default=None, metavar="MD",
                   help="also write the report to this Markdown file, with the confusion matrix beside it "
                   "(e.g. docs/selection-report.md -> docs/selection-confusion.png)")  # fmt: skip
    p.add_argument("--note", default="", help="a sentence put at the top of the report (e.g. which zoo)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="selector without the model-alone signals")  # fmt: skip
    p.set_defaults(func=run)


def command_line(args: argparse.Namespace) -> str:
    """The command line equivalent to ``args`` (for the report)."""
    parts = ["modelselector", "evaluate-selection"]
    for flag, value in (("--zoo", args.zoo), ("--data", args.data), ("--split-file", args.split_file)):
        if value is not None:
            parts += [flag, str(value)]
    parts += ["--part", args.part, "--out", str(args.out), "--seed", str(args.seed)]
    if args.limit is not None:
        parts += ["--limit", str(args.limit)]
    if args.rankers:
        parts += ["--rankers", args.rankers]
    if args.docs is not None:
        parts += ["--docs", str(args.docs)]
    if args.note:
        parts += ["--note", args.note]
    if not args.verify:
        parts.append("--no-verify")
    return " ".join(shlex.quote(p) for p in parts)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..evaluation.selection_cases import load_protocol
    from ..evaluation.selection_report import run_selection_evaluation
    from ..io.outputs import check_output_folder
    from ..resources import default_zoo_path

    check_output_folder(args.out)
    rankers = [r.strip() for r in args.rankers.split(",") if r.strip()] if args.rankers else None
    split = load_protocol(args.split_file, args.data)
    if not split.root.is_dir():
        raise InputError(f"{split.root}: the split's data folder is not there; pass it with --data.")
    res = run_selection_evaluation(
        args.zoo if args.zoo is not None else default_zoo_path(), split, args.out, part=args.part, limit=args.limit,
        seed=args.seed, rankers=rankers, verify=args.verify, docs_report=args.docs, note=args.note,
        command=command_line(args),
    )  # fmt: skip
    p = res.protocol
    print(f"{p['n_evaluated']} images ({p['categories']}; {p['n_source_disjoint']} from held-out sources)")
    cols = ("top1", "first_fitting", "fit_balanced_accuracy", "ood_auroc", "class_accuracy")
    print(f"{'ranker':<24} {'subset':<17} " + " ".join(f"{c[:10]:>10}" for c in cols))
    for sub in ("source-disjoint", "all"):
        for r in res.rankers:
            m = res.metrics[sub][r["name"]]
            print(
                f"{r['name']:<24} {sub:<17} "
                + " ".join("         -" if m[c] != m[c] else f"{m[c]:10.3f}" for c in cols)
            )
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0
