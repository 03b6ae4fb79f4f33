"""``modelselector evaluate-selection``: measure model selection against baselines on labelled images."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from .args import positive_int

_EPILOG = """\
Output in --out: report.md (protocol, counts, table of rankers x metrics), confusion.png (true
modality:region vs the top-1 model of ours-both), results.csv (one row per image and ranker) and
metrics.json. Nothing is written before the run has finished (Ctrl-C leaves no half-written report).

Example, on the shared data (held-out part of the encoder's split):
  modelselector evaluate-selection --zoo Resources/zoo \\
      --manifest ../shared/data/manifest.csv --manifest ../shared/data/radiology_2d/labels.csv \\
      --out selection_eval
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate-selection",
        help="evaluate model selection (top-1, P@k, R@k, mAP, OOD AUROC) against baselines",
        description="Run the selector (exemplar, data-free and both kinds of prototypes) and baselines "
        "(random, image-header rules, intensity-histogram k-NN) on every manifest image whose modality and "
        "body region are known; a model is relevant when its card's modality equals the image's and their "
        "regions intersect; images with no relevant model are the out-of-distribution set.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--zoo", type=Path, default=None, help="zoo folder (default: $MODELSELECTOR_ZOO, else Resources/zoo)"
    )
    p.add_argument("--manifest", type=Path, action="append", required=True, metavar="CSV",
                   help="CSV with path + modality_code/region_code (manifest.csv) or path + modality/body_region "
                   "codes (radiology_2d/labels.csv); repeat for several")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="evaluate at most N images (taken class by class in a seeded order)")  # fmt: skip
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the random baseline, tie-breaks and --limit (default 0)"
    )
    p.add_argument("--split", choices=("heldout", "unseen", "all"), default="heldout",
                   help="heldout: only the encoder's held-out validation images (default); unseen: every image "
                   "the encoder did not train on; all: every image (optimistic, for debugging)")  # fmt: skip
    p.add_argument("--rankers", default=None,
                   help="comma-separated subset of: ours-exemplar, ours-data-free, ours-both, random, "
                   "header-rules, histogram-knn-exemplars, histogram-knn-train (default: all that apply)")  # fmt: skip
    p.add_argument("--docs", type=Path, default=None, metavar="MD",
                   help="also write the report to this Markdown file, with the confusion matrix beside it "
                   "(e.g. docs/selection-report.md -> docs/selection-confusion.png)")  # fmt: skip
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="selector without the model-alone re-ranking")  # fmt: skip
    p.set_defaults(func=run)


def command_line(args: argparse.Namespace) -> str:
    """The command line equivalent to ``args`` (for the report)."""
    parts = ["modelselector", "evaluate-selection"]
    if args.zoo is not None:
        parts += ["--zoo", str(args.zoo)]
    for m in args.manifest:
        parts += ["--manifest", str(m)]
    parts += ["--out", str(args.out), "--split", args.split, "--seed", str(args.seed)]
    if args.limit is not None:
        parts += ["--limit", str(args.limit)]
    if args.rankers:
        parts += ["--rankers", args.rankers]
    if args.docs is not None:
        parts += ["--docs", str(args.docs)]
    if not args.verify:
        parts.append("--no-verify")
    return " ".join(shlex.quote(p) for p in parts)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.selection_report import run_selection_evaluation
    from ..io.outputs import check_output_folder
    from ..resources import default_zoo_path

    check_output_folder(args.out)
    rankers = [r.strip() for r in args.rankers.split(",") if r.strip()] if args.rankers else None
    res = run_selection_evaluation(
        args.zoo if args.zoo is not None else default_zoo_path(),
        args.manifest,
        args.out,
        split=args.split,
        limit=args.limit,
        seed=args.seed,
        rankers=rankers,
        verify=args.verify,
        docs_report=args.docs,
        command=command_line(args),
    )
    p = res.protocol
    print(
        f"{p['n_evaluated']} images ({p['n_in_distribution']} in-distribution, {p['n_ood']} out-of-distribution)"
    )
    print(f"{'ranker':<24} {'top-1':>6} {'mAP':>6} {'P@1':>6} {'R@3':>6} {'OODAUC':>7} {'fitacc':>7}")
    for r in res.rankers:
        m = res.metrics[r["name"]]

        def f(x: float) -> str:
            return "     -" if x != x else f"{x:6.3f}"

        print(f"{r['name']:<24} {f(m['top1'])} {f(m['mAP'])} {f(m['P@1'])} {f(m['R@3'])} {f(m['ood_auroc'])} "
              f"{f(m['fit_accuracy'])}")  # fmt: skip
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0
