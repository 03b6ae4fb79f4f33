"""The selection evaluation's outputs: per-image CSV, metrics JSON, confusion matrix and Markdown report."""

from __future__ import annotations

import csv
import dataclasses
import io as _io
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..atomic import atomic_path, save_figure, write_json, write_text
from .selection import SELECTOR_VARIANTS, EvaluationResult, average_precision, evaluate_selection
from .selection_cases import SPLIT_TEXT

PathLike = Union[str, "os.PathLike[str]"]


# --- outputs --------------------------------------------------------------------------------------------
def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        return "–" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def results_csv(res: EvaluationResult) -> str:
    """The per-image results as CSV text: one row per image and ranker."""
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["path", "source", "truth", "relevant_models", "ranker", "top1", "top1_label", "top1_relevant",
         "average_precision", "confidence", "fits", "predicted", "top5", "seconds", "error"]
    )  # fmt: skip
    by_name = {m.name: m for m in res.models}
    for name, rows in res.results.items():
        for r in rows:
            rk = r.ranking
            top1 = r.top1
            ap = average_precision(rk.names, r.relevant) if rk else float("nan")
            w.writerow([
                str(r.case.path), r.case.source, r.case.label, ";".join(r.relevant), name, top1,
                by_name[top1].label if top1 in by_name else "", int(top1 in r.relevant) if rk else "",
                "" if math.isnan(ap) else f"{ap:.4f}", f"{rk.confidence:.6g}" if rk else "",
                "" if rk is None or rk.fits is None else int(rk.fits), rk.predicted if rk else "",
                ";".join(rk.names[:5]) if rk else "", f"{r.seconds:.3f}", r.error,
            ])  # fmt: skip
    return buf.getvalue()


def confusion(res: EvaluationResult, ranker: str) -> tuple[np.ndarray, list[str], list[str]]:
    """Counts of true image class (rows) vs the top-1 model's ``MODALITY:REGION`` (columns) for ``ranker``."""
    by_name = {m.name: m for m in res.models}
    rows = [r for r in res.results.get(ranker, []) if r.ranking is not None]
    truths = sorted({r.case.label for r in rows})
    preds = sorted({by_name[r.top1].label for r in rows if r.top1 in by_name})
    cm = np.zeros((len(truths), len(preds)), dtype=np.int64)
    for r in rows:
        if r.top1 in by_name:
            cm[truths.index(r.case.label), preds.index(by_name[r.top1].label)] += 1
    return cm, truths, preds


def plot_confusion(
    cm: np.ndarray, truths: Sequence[str], preds: Sequence[str], path: PathLike, title: str
) -> None:
    """Write the confusion matrix as a PNG (row-normalised colours, counts written in cells), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nr, nc = max(1, len(truths)), max(1, len(preds))
    fig, ax = plt.subplots(figsize=(0.55 * nc + 3.2, 0.4 * nr + 2.6))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if cm.size else np.zeros((nr, nc))
    ax.imshow(norm if cm.size else np.zeros((nr, nc)), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(len(preds)))
    ax.set_yticks(range(len(truths)))
    ax.set_xticklabels(preds, rotation=60, ha="right", fontsize=8)
    ax.set_yticklabels(truths, fontsize=8)
    ax.set_xlabel("top-1 model's modality:region")
    ax.set_ylabel("image's modality:region (true)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


METRIC_COLUMNS = ["top1", "P@1", "P@3", "P@5", "R@1", "R@3", "R@5", "mAP", "ood_auroc", "fit_accuracy",
                  "fit_balanced_accuracy", "seconds_per_image"]  # fmt: skip
METRIC_HEADERS = ["top-1", "P@1", "P@3", "P@5", "R@1", "R@3", "R@5", "mAP", "OOD AUROC", "fit acc.",
                  "fit bal. acc.", "s/image"]  # fmt: skip


def _zoo_and_protocol(res: EvaluationResult) -> list[str]:
    """The report's zoo table, protocol and rankers."""
    p = res.protocol
    lines: list[str] = []
    lines += [
        "",
        "## Zoo",
        "",
        "| model | version | task | modality | region | example inputs |",
        "|---|---|---|---|---|---|",
    ]
    for m in res.models:
        lines.append(
            f"| {m.name} | {m.version} | {m.task_type} | {m.modality} | {';'.join(m.regions)} | {len(m.example_inputs)} |"
        )
    lines += [
        "",
        "## Protocol",
        "",
        f"- Manifests: {', '.join('`' + x + '`' for x in p['manifests'])}; {p['n_candidates']} images with a known "
        f"modality and body region (rows left out: {p['rows_skipped'] or 'none'}).",
        f"- Images evaluated (split `{p['split']}`): {SPLIT_TEXT[p['split']]} Encoder split: {p['encoder_split']}.",
        f"- Images left out: {p['images_dropped'] or 'none'}; unreadable: {len(res.unreadable)}.",
        "- Relevance: a model is relevant to an image when its card's modality equals the image's modality "
        "code and their body regions (`;`-separated lists) intersect. Images with no relevant model, "
        "including the non-medical photographs (modality OT), are the out-of-distribution set.",
        "- Confidence for the OOD AUROC: the ranker's best model score (selector: its calibrated score; "
        "header rules: 0-3 rule score; k-NN: minus the histogram distance to the nearest reference; random: "
        "a random number). Label: the image has a relevant model.",
        "- Ties in a ranker's scores are broken in a seeded random order per image.",
        f"- Classes of the evaluated images: {p['per_class']}.",
        "",
        "Rankers, all measured in this run on the same images:",
        "",
    ]
    for r in res.rankers:
        lines.append(f"- `{r['name']}`: {r['description']}.")
    lines += [
        "",
        "Files: `results.csv` (one row per image and ranker: truth, relevant models, top-1, average precision, "
        "confidence, fit decision, top 5), `metrics.json` (the table above and the protocol).",
        "",
    ]
    return lines


def report_markdown(
    res: EvaluationResult, confusion_name: str = "confusion.png", confusion_ranker: str = ""
) -> str:
    """The evaluation report as Markdown: protocol, counts, rankers, metrics table, confusion matrix."""
    p = res.protocol
    lines = [
        "# Selection evaluation",
        "",
        f"Created {p['created']} in {p['seconds']:.0f} s; zoo `{p['zoo']}` ({len(res.models)} models); seed {p['seed']}.",
        *([f"Command: `{p['command']}`"] if p.get("command") else []),
        "",
        "## Results",
        "",
        f"{p['n_evaluated']} images: {p['n_in_distribution']} with at least one relevant model "
        f"(in-distribution), {p['n_ood']} with none (out-of-distribution).",
        "",
        "| ranker | " + " | ".join(METRIC_HEADERS) + " |",
        "|---|" + "---|" * len(METRIC_HEADERS),
    ]
    for r in res.rankers:
        m = res.metrics[r["name"]]
        cells = [_fmt(m[c], 3 if c != "seconds_per_image" else 2) for c in METRIC_COLUMNS]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    errs = {
        r["name"]: res.metrics[r["name"]]["n_errors"]
        for r in res.rankers
        if res.metrics[r["name"]]["n_errors"]
    }
    max_rel = max((len(c.relevant(res.models)) for c in res.cases), default=0)
    lines += [
        "",
        "top-1, P@k, R@k and mAP are over the in-distribution images; OOD AUROC and the fit/no-fit accuracy "
        "over all images ('–': the ranker makes no fit decision). P@k divides by k, so with at most "
        f"{max_rel} relevant model(s) per image P@3 and P@5 cannot reach 1.",
    ]
    if any(r["name"] in SELECTOR_VARIANTS for r in res.rankers):
        lines += [
            "",
            "Time per image (s/image) is measured per ranker in run order; the selector keeps the embedding and "
            "the model-alone verification of the last images in a cache, so the first selector variant carries "
            "that cost for all three.",
        ]
    dims = Counter(
        (c.label, "3D" if _is_volume(c.path) else "2D") for c in res.cases if c.relevant(res.models)
    )
    if dims:
        lines += [
            "",
            "In-distribution images by kind: "
            + ", ".join(f"{lab} {kind} {n}" for (lab, kind), n in sorted(dims.items()))
            + ". Relevance follows the card's modality and region only, so 2D slices of CT or MR count as "
            "relevant to a 3D model of that modality and region.",
        ]
    if errs:
        lines += ["", f"Images a ranker could not handle (counted as missing, not as wrong): {errs}."]
    lines += ["", "### Per class", "", *per_class_table(res)]
    if confusion_ranker:
        lines += [
            "",
            f"![confusion matrix]({confusion_name})",
            "",
            f"Confusion matrix of `{confusion_ranker}`: rows are the images' true modality:region, columns the "
            "modality:region of the top-ranked model (every image gets a top-ranked model, also those the "
            "selector rejects as out-of-distribution).",
        ]
    lines += _zoo_and_protocol(res)
    if res.unreadable:
        lines += ["Unreadable images:", ""] + [f"- {u}" for u in res.unreadable[:20]] + [""]
    return "\n".join(lines)


def _is_volume(path: Path) -> bool:
    """True for volume file formats (NIfTI, NRRD, MHA, DICOM); 2D picture formats give False."""
    from ..io.image import IMAGE_2D_SUFFIXES

    return not str(path).lower().endswith(IMAGE_2D_SUFFIXES)


def per_class_table(res: EvaluationResult) -> list[str]:
    """Markdown lines of a per-class table: for classes with a relevant model, each ranker's top-1
    accuracy; for out-of-distribution classes, the fraction of images the ranker rejects ("nothing fits";
    '–' for rankers without that decision)."""
    names = [r["name"] for r in res.rankers]
    lines = [
        "| image class | n | relevant models | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    labels = sorted({c.label for c in res.cases})
    for label in labels:
        cells = []
        n, rel = 0, []
        for name in names:
            rows = [r for r in res.results[name] if r.case.label == label and r.ranking is not None]
            n, rel = len(rows), (rows[0].relevant if rows else [])
            if not rows:
                cells.append("–")
            elif rel:
                cell = _fmt(float(np.mean([r.top1 in r.relevant for r in rows])))
                if all(r.ranking.fits is not None for r in rows):  # type: ignore[union-attr]
                    cell += " (accepts " + _fmt(float(np.mean([bool(r.ranking.fits) for r in rows]))) + ")"  # type: ignore[union-attr]
                cells.append(cell)
            elif all(r.ranking.fits is not None for r in rows):  # type: ignore[union-attr]
                cells.append("rejects " + _fmt(float(np.mean([not r.ranking.fits for r in rows]))))  # type: ignore[union-attr]
            else:
                cells.append("–")
        lines.append(f"| {label} | {n} | {', '.join(rel) or 'none (OOD)'} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cells: for classes with a relevant model, the top-1 accuracy and (in brackets) the fraction of images "
        "the ranker accepts as 'a model fits'; for out-of-distribution classes, the fraction it rejects as "
        "'nothing fits' ('–': the ranker makes no such decision).",
    ]
    return lines


def write_outputs(res: EvaluationResult, out_dir: PathLike, docs_report: Optional[PathLike] = None) -> Path:
    """Write ``results.csv``, ``metrics.json``, ``confusion.png`` and ``report.md`` (last) into ``out_dir``,
    each atomically.

    Args:
        docs_report: also write the report to this Markdown file, with the confusion matrix beside it as
            ``<name>-confusion.png`` (``docs/selection-report.md`` -> ``docs/selection-confusion.png``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.csv", results_csv(res))
    write_json(out / "metrics.json", {"metrics": _jsonable(res.metrics), "protocol": res.protocol,
                                      "rankers": res.rankers, "models": [dataclasses.asdict(m) for m in res.models]})  # fmt: skip
    names = [r["name"] for r in res.rankers]
    cm_ranker = "ours-both" if "ours-both" in names else (names[0] if names else "")
    if cm_ranker:
        cm, truths, preds = confusion(res, cm_ranker)
        plot_confusion(cm, truths, preds, out / "confusion.png", f"{cm_ranker}: true class vs top-1 model")
    if docs_report is not None and cm_ranker:
        doc = Path(docs_report)
        png = doc.with_name(re.sub(r"-?report$", "", doc.stem) + "-confusion.png")
        shutil_copy_atomic(out / "confusion.png", png)
        write_text(doc, report_markdown(res, png.name, cm_ranker))
    write_text(out / "report.md", report_markdown(res, "confusion.png", cm_ranker))
    return out


def shutil_copy_atomic(src: PathLike, dst: PathLike) -> None:
    """Copy a file to ``dst`` through a temporary sibling (atomic replace)."""
    import shutil

    with atomic_path(Path(dst)) as tmp:
        shutil.copyfile(src, tmp)
    os.chmod(dst, 0o644)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def run_selection_evaluation(
    zoo: Any,
    manifests: Sequence[PathLike],
    out_dir: PathLike,
    *,
    docs_report: Optional[PathLike] = None,
    **settings: Any,
) -> EvaluationResult:
    """:func:`~.selection.evaluate_selection` (``settings`` are its keyword arguments), then
    :func:`write_outputs` into ``out_dir`` (``report.md``, ``confusion.png``, ``results.csv``,
    ``metrics.json``; written only when the whole run has finished, each file atomically) and, when given,
    ``docs_report``."""
    res = evaluate_selection(zoo, manifests, **settings)
    write_outputs(res, out_dir, docs_report)
    return res
