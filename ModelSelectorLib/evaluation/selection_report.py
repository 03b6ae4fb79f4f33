"""The selection evaluation's outputs: per-image CSV, metrics JSON, confusion matrix and Markdown report."""

from __future__ import annotations

import csv
import dataclasses
import io as _io
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..atomic import atomic_path, save_figure, write_json, write_text
from .selection import (
    SELECTOR_VARIANTS,
    SUBSETS,
    EvaluationResult,
    average_precision,
    class_correct,
    evaluate_selection,
)
from .selection_split import ProtocolSplit

PathLike = Union[str, "os.PathLike[str]"]

#: the selection targets on the source-disjoint images: (metric, ranker, target, text)
TARGETS = (
    ("first_fitting", "ours-both", 0.90, "first model relevant and fitting, in-zoo images"),
    ("fit_balanced_accuracy", "ours-both", 0.90, "fit balanced accuracy (accept in-zoo, reject the others)"),
    ("ood_auroc", "ours-both", 0.95, "OOD AUROC (in-zoo against out-of-distribution)"),
)
METRIC_COLUMNS = ["top1", "first_fitting", "P@3", "R@3", "mAP", "ood_auroc", "accept_in_zoo", "reject_ood",
                  "reject_needs_volume", "fit_balanced_accuracy", "needs_volume_named", "class_accuracy",
                  "seconds_per_image"]  # fmt: skip
METRIC_HEADERS = ["top-1", "1st fits", "P@3", "R@3", "mAP", "OOD AUROC", "accept in-zoo", "reject OOD",
                  "reject needs-vol.", "fit bal. acc.", "needs-vol. named", "class acc.", "s/image"]  # fmt: skip


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        return "–" if math.isnan(x) else f"{x:.{digits}f}"
    return "–" if x is None else str(x)


# --- files ----------------------------------------------------------------------------------------------
def results_csv(res: EvaluationResult) -> str:
    """The per-image results as CSV text: one row per image and ranker."""
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "source", "held_out_source", "truth", "category", "applicable_models", "relevant_models",
                "ranker", "top1", "top1_applicable", "average_precision", "confidence", "fits", "fitting",
                "needs_volume", "predicted_class", "class_correct", "top5", "seconds", "error"])  # fmt: skip
    for name, rows in res.results.items():
        for r in rows:
            rk = r.ranking
            ap = average_precision(rk.names, r.applicable) if rk else float("nan")
            w.writerow([
                str(r.case.path), r.case.source, int(r.case.held_out_source), r.case.label, r.category,
                ";".join(r.applicable), ";".join(r.relevant), name, r.top1, int(r.top1 in r.applicable) if rk else "",
                "" if math.isnan(ap) else f"{ap:.4f}", f"{rk.confidence:.6g}" if rk else "",
                "" if rk is None or rk.fits is None else int(rk.fits), ";".join(rk.fitting) if rk else "",
                ";".join(rk.needs_volume) if rk else "", rk.predicted if rk else "",
                int(class_correct(rk.predicted, r.case)) if rk and rk.predicted else "",
                ";".join(rk.names[:5]) if rk else "", f"{r.seconds:.3f}", r.error,
            ])  # fmt: skip
    return buf.getvalue()


def confusion(res: EvaluationResult, ranker: str) -> tuple[np.ndarray, list[str], list[str]]:
    """Counts of true image class (rows) vs the ranker's predicted modality:region class (columns)."""
    rows = [r for r in res.results.get(ranker, []) if r.ranking is not None and r.ranking.predicted]
    truths = sorted({r.case.label for r in rows})
    preds = sorted({r.ranking.predicted for r in rows})  # type: ignore[union-attr]
    cm = np.zeros((len(truths), len(preds)), dtype=np.int64)
    for r in rows:
        cm[truths.index(r.case.label), preds.index(r.ranking.predicted)] += 1  # type: ignore[union-attr]
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
    ax.set_xlabel("predicted modality:region")
    ax.set_ylabel("image's modality:region (true)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


# --- report ---------------------------------------------------------------------------------------------
def metrics_table(res: EvaluationResult, subset: str) -> list[str]:
    """One subset's rankers x metrics table."""
    lines = ["| ranker | " + " | ".join(METRIC_HEADERS) + " |", "|---|" + "---|" * len(METRIC_HEADERS)]
    for r in res.rankers:
        m = res.metrics[subset][r["name"]]
        cells = [_fmt(m[c], 3 if c != "seconds_per_image" else 2) for c in METRIC_COLUMNS]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return lines


def _difference_row(res: EvaluationResult, a: str, b: str, metric: str, target: float, text: str) -> str:
    """A targets row: ``metric`` of ranker ``a`` minus that of ``b``, source-disjoint and whole part."""
    cells = []
    for sub in ("source-disjoint", "all"):
        x, y = res.metrics[sub][a][metric], res.metrics[sub][b][metric]
        cells.append(f"{_fmt(x)} - {_fmt(y)} = {_fmt(x - y)}")
    d = res.metrics["source-disjoint"][a][metric] - res.metrics["source-disjoint"][b][metric]
    met = "–" if math.isnan(d) else ("yes" if d >= target else "no")
    return f"| {text} | >= {target:+.2f} | {cells[0]} | {cells[1]} | {met} |"


def targets_section(res: EvaluationResult) -> list[str]:
    """The targets with the figures of this run (source-disjoint images and the whole part)."""
    names = set(r["name"] for r in res.rankers)
    lines = ["## Targets", "", "| figure | target | source-disjoint | whole part | met (source-disjoint) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for metric, ranker, target, text in TARGETS:
        if ranker in names:
            sd, al = res.metrics["source-disjoint"][ranker][metric], res.metrics["all"][ranker][metric]
            met = "–" if math.isnan(sd) else ("yes" if sd >= target else "no")
            lines.append(f"| {text} (`{ranker}`) | >= {target:.2f} | {_fmt(sd)} | {_fmt(al)} | {met} |")
    rows = (
        ("ours-data-free", "ours-exemplar", "first_fitting", -0.05,
         "selector with data-free prototypes only minus with exemplar prototypes only: first fitting"),
        ("prototypes-data-free", "prototypes-exemplar", "top1", -0.05,
         "data-free prototype similarity alone minus exemplar prototype similarity alone: top-1"),
        ("ours-both", "histogram-knn-train", "top1", 0.05, "selector minus histogram k-NN: top-1, in-zoo images"),
        ("ours-both", "histogram-knn-train", "class_accuracy", 0.05,
         "encoder minus histogram k-NN: modality:region of every image"),
    )  # fmt: skip
    for a, b, metric, target, text in rows:
        if {a, b} <= names:
            lines.append(_difference_row(res, a, b, metric, target, text))
    return lines + [""]


def per_class_table(res: EvaluationResult) -> list[str]:
    """Per image class and kind of answer: count, and per ranker the top-1 (in-zoo: applicable; needs-volume:
    relevant) with the acceptance in brackets, or the rejection rate (OOD)."""
    names = [r["name"] for r in res.rankers]
    lines = [
        "| image class | n | answer | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    first = res.results[names[0]] if names else []
    for label, cat in sorted({(r.case.label, r.category) for r in first}):
        cells, n = [], 0
        for name in names:
            rows = [
                r
                for r in res.results[name]
                if (r.case.label, r.category) == (label, cat) and r.ranking is not None
            ]
            n = len(rows)
            decides = rows and all(r.ranking.fits is not None for r in rows)  # type: ignore[union-attr]
            if not rows:
                cells.append("–")
            elif cat == "ood":
                cells.append(
                    "rejects " + _fmt(float(np.mean([not r.ranking.fits for r in rows]))) if decides else "–"
                )  # type: ignore[union-attr]
            else:
                ok = [r.top1 in (r.applicable if cat == "in-zoo" else r.relevant) for r in rows]
                acc = (
                    f" (accepts {_fmt(float(np.mean([bool(r.ranking.fits) for r in rows])))})"
                    if decides
                    else ""
                )  # type: ignore[union-attr]
                cells.append(_fmt(float(np.mean(ok))) + acc)
        models = sorted({m for r in first if (r.case.label, r.category) == (label, cat)
                         for m in (r.applicable if cat == "in-zoo" else r.relevant)})  # fmt: skip
        answer = {"in-zoo": "fits: ", "needs-volume": "needs the volume: "}.get(
            cat, "nothing fits"
        ) + ", ".join(models)
        lines.append(f"| {label} | {n} | {answer} | " + " | ".join(cells) + " |")
    return lines + ["", "Cells: in-zoo rows: top-1 applicable, and (in brackets) the fraction accepted as fitting; "
                    "needs-volume rows (2D slices whose models take volumes): top-1 relevant, (fraction wrongly "
                    "accepted); out-of-distribution rows: the fraction rejected ('–': the ranker makes no fit "
                    "decision)."]  # fmt: skip


def class_accuracy_table(res: EvaluationResult, rankers: Sequence[str]) -> list[str]:
    """Per image class: the predicted modality:region class accuracy of ``rankers``, per subset."""
    rankers = [r for r in rankers if r in res.results]
    lines = [
        "| image class | n (source-disjoint) | " + " | ".join(rankers) + " |",
        "|---|---|" + "---|" * len(rankers),
    ]
    for label in sorted({c.label for c in res.cases}):
        cells, n, nsd = [], 0, 0
        for name in rankers:
            rows = [
                r for r in res.results[name] if r.case.label == label and r.ranking and r.ranking.predicted
            ]
            n, nsd = len(rows), sum(1 for r in rows if r.case.held_out_source)
            cells.append(
                _fmt(float(np.mean([class_correct(r.ranking.predicted, r.case) for r in rows])))
                if rows
                else "–"
            )  # type: ignore[union-attr]
        lines.append(f"| {label} | {n} ({nsd}) | " + " | ".join(cells) + " |")
    return lines + [""]


def held_out_sources_table(
    res: EvaluationResult, ranker: str = "ours-both", baseline: str = "histogram-knn-train"
) -> list[str]:
    """Per held-out source (leave-one-source-out): images by answer, what ``ranker`` did with them, and its
    class accuracy beside ``baseline``'s."""
    if ranker not in res.results:
        return []
    rows = [r for r in res.results[ranker] if r.case.held_out_source and r.ranking is not None]
    base = {str(r.case.path): r for r in res.results.get(baseline, []) if r.ranking is not None}
    lines = ["| source | images | in-zoo: 1st fits | needs-volume: named | OOD: rejected | class acc. | "
             f"{baseline} class acc. |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for src in sorted({r.case.source for r in rows}):
        mine = [r for r in rows if r.case.source == src]
        by = {c: [r for r in mine if r.category == c] for c in ("in-zoo", "needs-volume", "ood")}
        first = [float(r.top1 in r.applicable and r.top1 in r.ranking.fitting) for r in by["in-zoo"]]  # type: ignore[union-attr]
        named = [float(r.top1 in r.relevant and r.top1 in r.ranking.needs_volume) for r in by["needs-volume"]]  # type: ignore[union-attr]
        rejected = [float(not r.ranking.fits) for r in by["ood"]]  # type: ignore[union-attr]
        acc = [float(class_correct(r.ranking.predicted, r.case)) for r in mine]  # type: ignore[union-attr]
        other = [float(class_correct(base[str(r.case.path)].ranking.predicted, r.case)) for r in mine  # type: ignore[union-attr]
                 if str(r.case.path) in base]  # fmt: skip

        def cell(xs: list[float]) -> str:
            return f"{np.mean(xs):.3f} ({len(xs)})" if xs else "–"

        lines.append(f"| {src} | {len(mine)} | {cell(first)} | {cell(named)} | {cell(rejected)} | {cell(acc)} | "
                     f"{cell(other)} |")  # fmt: skip
    return lines + ["", "Counts in brackets. Each source here is absent from the encoder's training and development "
                    "images and from the calibration.", ""]  # fmt: skip


def calibration_section(res: EvaluationResult, key: str = "data-free+exemplar:verify") -> list[str]:
    """Each model's operating point, false-accept and false-reject rates on the development images, from the
    index sidecar, and the signals kept per task type."""
    setting = (res.calibration.get("settings") or {}).get(key)
    if not setting:
        return ["## Calibration", "", "The index holds no calibration of format 2 for this setting.", ""]
    lines = ["## Calibration per model (development images)", "",
             f"Setting `{key}`; calibrated on {res.calibration.get('images', '?')}. Weights of the domain logit: "
             f"{setting['weights']}. Pooled operating point {setting['threshold']:.3f} (false-accept "
             f"{_fmt(setting.get('far'))}, false-reject {_fmt(setting.get('frr'))}).", "",
             "| model | threshold | own or pooled | positives | negatives | false-accept | false-reject |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, m in sorted((setting.get("models") or {}).items()):
        lines.append(f"| {name} | {m['threshold']:.3f} | {'pooled' if m['pooled'] else 'own'} | {m['n_positive']} | "
                     f"{m['n_negative']} | {_fmt(m['far'])} | {_fmt(m['frr'])} |")  # fmt: skip
    for task, sel in sorted((setting.get("signal_selection") or {}).items()):
        kept = (setting.get("verify") or {}).get(task) or {}
        lines.append("")
        lines.append(f"Model-alone signals of `{task}` models, 5-fold cross-validated log-loss on the development "
                     f"pairs: {sel}; kept: {kept or 'none'}.")  # fmt: skip
    return lines + [""]


def protocol_section(res: EvaluationResult, split: Optional[ProtocolSplit]) -> list[str]:
    """The protocol: split, held-out sources, exclusions, leakage checks, zoo, rankers."""
    p = res.protocol
    meta = p["split_meta"]
    lines = ["## Protocol", "",
             f"- Split (digest {p['split_digest']}): by source and patient; whole sources held out "
             f"{meta.get('held_out_sources')}; the other sources' patient groups {meta.get('fractions')} "
             f"(seed {meta.get('seed')}); near-duplicates: {meta.get('duplicate_rule')}, kept in one part. The "
             "development part chose every setting (encoder epoch, score weights, signals, thresholds); this "
             f"report measures the `{p['part']}` part once.",
             f"- Images: {p['n_candidates']} candidates in the part; left out: {p['images_dropped'] or 'none'}; "
             f"{p['n_evaluated']} evaluated ({p['n_source_disjoint']} from held-out sources); categories "
             f"{p['categories']}; unreadable: {len(res.unreadable)}.",
             f"- Classes: {p['per_class']}.",
             "- Relevance: a model is relevant when its card's modality equals the image's and their regions "
             "intersect; applicable when it can also take the image (2D model - 2D image, 3D model - volume).",
             "- Confidence for the OOD AUROC: the best calibrated score among the models that can take the image "
             "(selector), the 0-3 rule score (header rules), minus the histogram distance (k-NN), random.",
             "", "### Leakage checks", "", "| check | count |", "|---|---|"]  # fmt: skip
    lines += [f"| {k.replace('_', ' ')} | {v} |" for k, v in res.leakage.items()]
    if split is not None:
        lines += ["", "### Images per class and part of the split", "", "| class | train | dev | test |",
                  "|---|---|---|---|"]  # fmt: skip
        lines += [
            f"| {k} | {v.get('train', 0)} | {v.get('dev', 0)} | {v.get('test', 0)} |"
            for k, v in split.counts().items()
        ]
    lines += ["", "### Zoo", "", "| model | version | task | modality | region | dims | example inputs |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {m.name} | {m.version} | {m.task_type} | {m.modality} | {';'.join(m.regions)} | {m.spatial_dims}D | "
              f"{len(m.example_inputs)} |" for m in res.models]  # fmt: skip
    lines += ["", "### Rankers", ""] + [f"- `{r['name']}`: {r['description']}." for r in res.rankers]
    return lines + ["", "Files: `results.csv` (one row per image and ranker), `metrics.json` (every table)."]


def report_markdown(res: EvaluationResult, confusion_name: str = "confusion.png", confusion_ranker: str = "",
                    split: Optional[ProtocolSplit] = None, note: str = "") -> str:  # fmt: skip
    """The evaluation report as Markdown: targets, results per subset, per class, class accuracy, calibration,
    protocol and leakage checks."""
    p = res.protocol
    lines = ["# Selection evaluation", "",
             f"Created {p['created']} in {p['seconds']:.0f} s; zoo `{p['zoo']}` ({len(res.models)} models); seed "
             f"{p['seed']}; part `{p['part']}` of the protocol split.", *([note, ""] if note else []),
             *([f"Command: `{p['command']}`", ""] if p.get("command") else []), *targets_section(res)]  # fmt: skip
    for sub in SUBSETS:
        m0 = next(iter(res.metrics[sub].values()), {})
        lines += [f"## Results: {sub} images", "",
                  f"{m0.get('n_images', 0)} images: {m0.get('n_in_zoo', 0)} in-zoo, {m0.get('n_needs_volume', 0)} "
                  f"needing the volume, {m0.get('n_ood', 0)} out-of-distribution.", "", *metrics_table(res, sub), ""]  # fmt: skip
    lines += ["top-1, 1st fits, P@k, R@k and mAP are over in-zoo images; OOD AUROC in-zoo against out-of-distribution; "
              "fit balanced accuracy = mean of acceptance of in-zoo images and rejection of all others; class accuracy "
              "over every image ('–': the ranker makes no such decision or prediction).", "",
              "### Per held-out source (source-disjoint images)", "", *held_out_sources_table(res),
              "### Per class (whole part)", "", *per_class_table(res), "",
              "### Modality and region of every image: encoder against the histogram k-NN", "",
              *class_accuracy_table(res, ["ours-both", "histogram-knn-train", "header-rules"])]  # fmt: skip
    if confusion_ranker:
        lines += [f"![confusion matrix]({confusion_name})", "",
                  f"Confusion matrix of `{confusion_ranker}`'s predicted class (the encoder's reading), whole part.", ""]  # fmt: skip
    lines += calibration_section(res) + protocol_section(res, split)
    if res.unreadable:
        lines += ["", "Unreadable images:", ""] + [f"- {u}" for u in res.unreadable[:20]]
    return "\n".join(lines) + "\n"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def write_outputs(res: EvaluationResult, out_dir: PathLike, docs_report: Optional[PathLike] = None,
                  split: Optional[ProtocolSplit] = None, note: str = "") -> Path:  # fmt: skip
    """Write ``results.csv``, ``metrics.json``, ``confusion.png`` and ``report.md`` (last) into ``out_dir``,
    each atomically; with ``docs_report`` also that Markdown file and its confusion matrix beside it
    (``docs/selection-report.md`` -> ``docs/selection-confusion.png``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.csv", results_csv(res))
    write_json(out / "metrics.json", {"metrics": _jsonable(res.metrics), "protocol": res.protocol, "leakage": res.leakage,
                                      "rankers": res.rankers, "models": [dataclasses.asdict(m) for m in res.models]})  # fmt: skip
    names = [r["name"] for r in res.rankers]
    cm_ranker = (
        "ours-both" if "ours-both" in names else next((n for n in names if n in SELECTOR_VARIANTS), "")
    )
    if cm_ranker:
        cm, truths, preds = confusion(res, cm_ranker)
        plot_confusion(
            cm, truths, preds, out / "confusion.png", f"{cm_ranker}: true class vs predicted class"
        )
    if docs_report is not None:
        doc = Path(docs_report)
        png = doc.with_name(re.sub(r"-?report$", "", doc.stem) + "-confusion.png")
        if cm_ranker:
            copy_atomic(out / "confusion.png", png)
        write_text(doc, report_markdown(res, png.name, cm_ranker, split, note))
    write_text(out / "report.md", report_markdown(res, "confusion.png", cm_ranker, split, note))
    return out


def copy_atomic(src: PathLike, dst: PathLike) -> None:
    """Copy a file to ``dst`` through a temporary sibling (atomic replace)."""
    import shutil

    with atomic_path(Path(dst)) as tmp:
        shutil.copyfile(src, tmp)
    os.chmod(dst, 0o644)


def run_selection_evaluation(zoo: Any, split: ProtocolSplit, out_dir: PathLike, *, docs_report: Optional[PathLike] = None,
                             note: str = "", **settings: Any) -> EvaluationResult:  # fmt: skip
    """:func:`~.selection.evaluate_selection` (``settings`` are its keyword arguments), then
    :func:`write_outputs` (written only when the whole run has finished, each file atomically)."""
    res = evaluate_selection(zoo, split, **settings)
    write_outputs(res, out_dir, docs_report, split, note)
    return res
