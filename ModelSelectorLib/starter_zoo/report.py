"""Markdown tables of the starter zoo's held-out figures beside the published references
(``docs/starter-zoo.md``), read from each bundle's ``docs/held_out.json``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Union

from ..zoo.catalog import Zoo

PathLike = Union[str, "os.PathLike[str]"]
#: where a bundle keeps its held-out record (written by :func:`~.build.build_model`)
HELD_OUT_FILE = Path("docs") / "held_out.json"


def _cell(d: dict[str, Any], metric: str) -> str:
    """``mean ± std [low, high]`` of one :func:`~ModelSelectorLib.evaluation.statistics.describe` block."""
    if not d or not math.isfinite(d.get("mean", float("nan"))):
        return "-"
    digits = 2 if metric == "hd95" else 3
    lo, hi = d["ci95"]
    return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def held_out_table(record: dict[str, Any]) -> list[str]:
    """The Markdown table of one model's held-out record: one row per label (and their mean), Dice, HD95 and
    NSD as mean ± std [95 % bootstrap interval], and the reference's Dice beside ours. Distances are in the
    record's ``distance_unit`` (default ``mm``; ``nominal mm`` where the data's spacing is nominal, ``px`` for
    pictures without a pixel size), which both headers name."""
    summary, reference = record["summary"], record.get("reference") or {}
    ref_dice = reference.get("dice", {})
    metrics = [m for m in ("dice", "hd95", "nsd") if m in summary]
    tol, unit = record.get("nsd_tolerance_mm"), record.get("distance_unit", "mm")
    heads = {"dice": "Dice", "hd95": f"HD95 ({unit})", "nsd": f"NSD ({tol:g} {unit})" if tol else "NSD"}
    lines = ["| label | " + " | ".join(heads[m] for m in metrics) + " | reference Dice |",
             "|---|" + "---|" * (len(metrics) + 1)]  # fmt: skip
    labels = [n for n in summary["dice"] if n != "mean"]
    for name in [*labels, "mean"]:
        ref = ref_dice.get(name) if name != "mean" else reference.get("mean")
        if name == "mean" and ref is None and ref_dice and len(ref_dice) == len(labels):
            ref = sum(ref_dice.values()) / len(ref_dice)
        cells = [_cell(summary[m].get(name, {}), m) for m in metrics]
        label = "**mean over labels**" if name == "mean" else name
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {'-' if ref is None else f'{ref:.3f}'} |")
    return lines


def held_out_report(zoo_dir: PathLike) -> str:
    """The held-out section of ``docs/starter-zoo.md`` for every model of ``zoo_dir`` that has a record."""
    zoo = Zoo(zoo_dir)
    out: list[str] = []
    for name in zoo.names():
        path = zoo.get(name) / HELD_OUT_FILE
        if not path.is_file():
            continue
        record = json.loads(path.read_text(encoding="utf-8"))
        ref = (record.get("reference") or {}).get("source", "")
        out += [f"### {name}", "", f"Held out: {record['protocol']}; {record['summary']['n']} cases.",
                *([f"Reference: {ref}."] if ref else []), "", *held_out_table(record), ""]  # fmt: skip
        cv = record.get("cross_validation")
        if cv:
            folds = ", ".join(f"{f['summary'].get('dice', float('nan')):.3f}" for f in cv["folds"])
            out += [f"Mean Dice per fold (before the pooled post-processing choice): {folds}. Largest-component "
                    f"post-processing kept for: {', '.join(cv['lcc']) or 'no label'}. Training time of the folds: "
                    f"{cv['training_time_s'] / 60:.0f} min in all.", ""]  # fmt: skip
    return "\n".join(out)


__all__ = ["HELD_OUT_FILE", "held_out_report", "held_out_table"]
