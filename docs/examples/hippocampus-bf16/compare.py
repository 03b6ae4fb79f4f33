"""Paired comparison of two cross-validated versions of a starter-zoo model on the same folds and cases.

Reads each version's ``docs/held_out.json`` (per-case figures of its cross-validation) and card, and prints per
label the mean Dice of both, the mean per-case difference (new - old) with its paired bootstrap 95 % interval
and a two-sided Wilcoxon signed-rank p, then the training time and peak memory of the folds and of the final
model. ``--without-folds`` leaves out the validation cases of the folds named (those that chose the change),
so that the comparison is on cases that chose nothing. Run from the repository root::

    python docs/examples/hippocampus-bf16/compare.py [--zoo Resources/zoo] [--model mr-hippocampus]
        [--old 1.0.0] [--new 1.0.1] [--without-folds 0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from ModelSelectorLib.evaluation.statistics import bootstrap_interval  # noqa: E402
from ModelSelectorLib.ranking.sweep import case_id  # noqa: E402
from ModelSelectorLib.starter_zoo.report import HELD_OUT_FILE  # noqa: E402
from ModelSelectorLib.zoo.catalog import Zoo  # noqa: E402


def _per_case(zoo: Zoo, model: str, version: str) -> tuple[dict[str, dict[str, float]], dict]:
    record = json.loads((zoo.get(model, version) / HELD_OUT_FILE).read_text(encoding="utf-8"))
    return {c["case"]: c["dice"] for c in record["per_case"]}, record["cross_validation"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="Resources/zoo")
    parser.add_argument("--model", default="mr-hippocampus")
    parser.add_argument("--old", default="1.0.0")
    parser.add_argument("--new", default="1.0.1")
    parser.add_argument("--without-folds", type=int, nargs="*", default=[], metavar="FOLD",
                        help="leave out the validation cases of these folds (of the new version's folds)")  # fmt: skip
    args = parser.parse_args()

    from scipy.stats import wilcoxon

    zoo = Zoo(args.zoo)
    (old, old_cv), (new, new_cv) = (_per_case(zoo, args.model, v) for v in (args.old, args.new))
    if sorted(old) != sorted(new):
        raise SystemExit("the two versions were not scored on the same cases; nothing to pair.")
    left_out = {case_id(c) for f in new_cv["folds"] if f["fold"] in args.without_folds
                for c in f["val_cases"]}  # fmt: skip
    cases = sorted(set(old) - left_out)
    labels = list(old[cases[0]])
    scope = f" (without folds {', '.join(map(str, args.without_folds))})" if args.without_folds else ""
    print(
        f"{args.model}: {args.new} against {args.old}, Dice on the same {len(cases)} cross-validation "
        f"cases{scope}"
    )
    print(f"{'label':<24} {args.old:>8} {args.new:>8} {'new - old':>10}  95 % interval      Wilcoxon p")
    for label in [*labels, "mean"]:
        a = np.array([np.mean(list(old[c].values())) if label == "mean" else old[c][label] for c in cases])
        b = np.array([np.mean(list(new[c].values())) if label == "mean" else new[c][label] for c in cases])
        d = b - a
        lo, hi = bootstrap_interval(d, n_resamples=10000)
        p = float(wilcoxon(b, a).pvalue) if np.any(d) else 1.0
        print(
            f"{label:<24} {a.mean():8.4f} {b.mean():8.4f} {d.mean():+10.4f}  [{lo:+.4f}, {hi:+.4f}]  {p:10.3g}"
        )
    for version, cv in ((args.old, old_cv), (args.new, new_cv)):
        card = zoo.card(args.model, version)
        folds = ", ".join(f"{f['training_time_s'] / 60:.1f}" for f in cv["folds"])
        print(f"{version}: folds trained {folds} min (peak {cv['peak_memory_mb']:.0f} MiB); final model "
              f"{card.training_time_s / 60:.1f} min (peak {card.peak_memory_mb:.0f} MiB)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
