"""Leaderboards and per-model dashboards: static HTML (Jinja2 templates in ``templates/``) with PNG figures.

* :func:`evaluate_candidate` scores one bundle on a fixed split of held-out cases (:mod:`ModelSelectorLib.evaluate`) and
  draws, per case, an overlay of a representative slice as a viewer shows it: ground-truth contour in GREEN,
  prediction contour in RED (:mod:`.overlays`).
* :func:`summarize` gives mean / median / std / worst of each metric; :func:`rank` orders candidates by any
  metric in its own direction (Dice: higher is better; HD95, MSD: lower is better).
* :func:`write_dashboard` writes one model's folder (``index.html``, ``curve.png``, ``overlays/*.png``):
  loss curves, summary, per-case table worst case first, configuration and card.
* :func:`write_leaderboard` writes ``leaderboard.html``: every candidate, best first, best value of each
  column highlighted, links to the dashboards; every column sorts on click (a few lines of inline
  JavaScript). Pages open from disk: no server, no network.
* :func:`write_reports` rewrites a sweep folder's pages and ``leaderboard.json`` (the same object
  ``modelselector leaderboard --json`` prints), marking candidates the current sweep file no longer holds.
"""

from __future__ import annotations

import datetime
import html
import json
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .. import atomic
from ..errors import DatasetError, InputError, ModelSelectorError, ZooError
from ..evaluation.metrics import SEGMENTATION_METRICS, higher_is_better
from ..evaluation.segmentation import DISTANCE_METRICS, summary_in_unit
from ..evaluation.statistics import sample_std
from ..io.image import Image, read_image
from ..models.registry import DEFAULT_TASK_TYPE, runtime_class
from ..provenance import utc_timestamp
from ..zoo.card import distinct_safe_name, safe_name
from .overlays import (
    GT_COLOR,
    OVERLAY_PX,
    PRED_COLOR,
    draw_slice,
    render_overlay,
    render_points_overlay,
    representative_slice,
    truth_and_prediction_points,
    viewed_slice,
)
from .scoring import evaluate_cases, primary_metric

PathLike = Union[str, "os.PathLike[str]"]

TEMPLATES = Path(__file__).resolve().parent / "templates"
#: what marks a folder as an earlier dashboard of `modelselector dashboard`: its page, and the evaluation it shows
DASHBOARD_FILES = ("index.html", "evaluation.json")


# --- figures --------------------------------------------------------------------------------------------
def render_curve(curve: Mapping[str, Any], path: PathLike) -> Optional[Path]:
    """Write training and validation loss (left axis) and validation Dice (right axis) per epoch as a PNG.

    Args:
        curve: ``{"epochs": [{"epoch", "train_loss", "val_loss"?, "val_dice"?}]}`` (a bundle's
            ``docs/training_curve.json``).

    Returns:
        ``path``, or ``None`` when the curve has no epochs.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    epochs = list(curve.get("epochs") or [])
    if not epochs:
        return None
    fig, ax = plt.subplots(figsize=(4.6, 2.6), dpi=80)
    x = [e["epoch"] for e in epochs]
    ax.plot(x, [e["train_loss"] for e in epochs], label="training loss", color="#1f77b4")
    val = [(e["epoch"], e["val_loss"]) for e in epochs if "val_loss" in e]
    if val:
        ax.plot(*zip(*val), "o-", ms=3, label="validation loss", color="#ff7f0e")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    dice = [(e["epoch"], e["val_dice"]) for e in epochs if "val_dice" in e]
    lines, names = ax.get_legend_handles_labels()
    if dice:
        ax2 = ax.twinx()
        ax2.plot(*zip(*dice), "s--", ms=3, color="#2ca02c", label="validation Dice")
        ax2.set_ylabel("Dice")
        ax2.set_ylim(0, 1)
        l2, n2 = ax2.get_legend_handles_labels()
        lines, names = lines + l2, names + n2
    ax.legend(lines, names, fontsize=7, loc="center right")
    fig.tight_layout()
    return atomic.save_figure(fig, path)


# --- evaluation of one candidate ------------------------------------------------------------------------
def evaluate_candidate(
    bundle_dir: PathLike,
    split: Mapping[str, Any],
    out_json: PathLike,
    dashboard_dir: Optional[PathLike] = None,
    candidate: Optional[str] = None,
    device: str = "cpu",
    cancel: Optional[Any] = None,
    seen: Collection[str] = (),
) -> dict[str, Any]:
    """Score a bundle on a split of held-out cases (a sweep's selection split, a test split), draw its
    overlays, and save the result as JSON.

    Args:
        bundle_dir: the bundle folder.
        split: a split file's content (:func:`ModelSelectorLib.datasets.split_file.read_split`):
            ``{"cases", "labels", ...}``.
        out_json: where the evaluation is written (atomically).
        dashboard_dir: the model's dashboard folder; overlays go to ``overlays/<case>.png`` there (a distinct
            file name per case: :func:`~ModelSelectorLib.zoo.card.distinct_safe_name`), and each case records
            ``"overlay"`` (its path there) and, for a label map, ``"overlay_slice"`` (which slice it shows).
        candidate: display name (default: the card's name).
        seen: ids of split cases that the bundle records among its training or validation cases (its figures on
            them are not held-out figures), recorded as ``"seen_cases"`` and marked on its dashboard.

    Returns:
        ``{"candidate", "model", "version", "bundle", "labels", "cases": [...], "evaluated"}``, and
        ``"seen_cases"`` when ``seen`` names any case.
    """
    from ..zoo.bundle import load_bundle

    loaded = load_bundle(bundle_dir, device=device)
    card = loaded.card
    labels = {int(k): str(v) for k, v in split["labels"].items()}
    outputs = {int(lb["value"]) for lb in card.labels if "value" in lb}
    # the model would score 0 on labels it never outputs
    if labels and outputs and not set(labels) <= outputs:
        raise DatasetError(
            f"the split's labels {labels} are not among {card.name}'s outputs "
            f"{ {int(lb['value']): lb['name'] for lb in card.labels} }; use a split of this model's task."
        )
    on_case = None
    if dashboard_dir is not None:
        overlays, taken = Path(dashboard_dir) / "overlays", set()

        def on_case(case_id: str, image: Image, truth: Any, pred: Any) -> dict[str, Any]:
            # one file per case, also for ids that differ only in characters a file name cannot hold
            name = f"{distinct_safe_name(case_id, taken)}.png"
            if not isinstance(pred, Image):  # points: the reference file's in green, the prediction's in red
                render_points_overlay(image, truth_and_prediction_points(pred, truth), overlays / name)
                return {"overlay": f"overlays/{name}"}
            view = viewed_slice(image, truth, pred)  # a label map: contours of truth and prediction
            draw_slice(view, overlays / name)
            return {"overlay": f"overlays/{name}", "overlay_slice": view.caption}

    cases = evaluate_cases(loaded, split["cases"], labels, device=device, cancel=cancel, on_case=on_case,
                           desc=f"evaluate {candidate or card.name}")  # fmt: skip
    result = {
        "candidate": candidate or card.name,
        "model": card.name,
        "version": card.version,
        "bundle": str(Path(bundle_dir).resolve()),
        "labels": {str(k): v for k, v in labels.items()},
        "cases": cases,
        "evaluated": utc_timestamp(),
    }
    if seen:
        result["seen_cases"] = sorted(seen)
    atomic.write_json(out_json, _finite(result))
    return result


#: what a runtime that scores its predictions against reference files (landmarks) writes per case: the families
#: of radial errors and detection rates (``mre_mm``, ``rmse_px``, ``sdr_4``, ``sdr_px_5``) and the lungs' Dice
REFERENCE_METRIC_FAMILIES = ("mre", "rmse", "sdr")
REFERENCE_METRICS = ("dice_lungs",)


def metric_problem(
    task_type: str, metric: str, labels: Optional[Mapping[Any, str]] = None, in_pixels: Optional[bool] = None
) -> Optional[str]:
    """Why the evaluation of a ``task_type`` model would have no ``metric`` (None when it may have it), told
    before the model is evaluated rather than after every case was.

    Args:
        labels: the split's ``{value: name}`` (segmentation: several labels add ``<metric>_<label>``).
        in_pixels: whether the split's images are pictures without a pixel size (:func:`split_in_pixels`), whose
            distances are named in pixels (``hd95_px``); ``None``: either names.
    """
    if runtime_class(task_type).scores_references:
        ok = metric.split("_", 1)[0] in REFERENCE_METRIC_FAMILIES or metric in REFERENCE_METRICS
        known = ", ".join([f"{f}_..." for f in REFERENCE_METRIC_FAMILIES] + list(REFERENCE_METRICS))
    else:
        names = list((labels or {}).values())
        per_label = [f"{m}_{n}" for m in SEGMENTATION_METRICS for n in names] if len(names) > 1 else []
        names_mm = list(dict.fromkeys((*SEGMENTATION_METRICS, *per_label)))
        names_px = list(summary_in_unit(dict.fromkeys(names_mm), "px"))
        allowed = names_mm if in_pixels is False else names_px if in_pixels else [*names_mm, *names_px]
        ok, known = metric in allowed, ", ".join(allowed)
        if in_pixels and metric in names_mm:
            known += (
                "; the split's images are pictures without a pixel size, so their distances are in pixels"
            )
    if ok:
        return None
    return (
        f"metric {metric!r} is not among the metrics of a {task_type} model ({known}); its ranking metric is "
        f"{primary_metric(task_type)}."
    )


def split_in_pixels(cases: Sequence[Mapping[str, Any]]) -> Optional[bool]:
    """Whether a split's images are pictures without a pixel size (read from its first case's image), so that
    their distances are in pixels (:mod:`ModelSelectorLib.evaluation.segmentation`); None without cases."""
    return None if not cases else not read_image(cases[0]["image"]).pixel_size_known


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


# --- statistics and ranking -----------------------------------------------------------------------------
def metric_names(cases: Sequence[Mapping[str, Any]]) -> list[str]:
    """The scalar metrics that at least one case has a number for, main ones (``dice``, ``hd95``, ``msd``) first.

    A case may lack a figure (``None`` after the JSON round trip of a NaN, e.g. ``mre_mm`` of an image without
    a pixel spacing); the summaries skip such cases, so the metric still counts when any case has it.
    """
    found = {k for c in cases for k, v in c.items() if _is_number(v)}
    main = [m for m in SEGMENTATION_METRICS if m in found]
    return main + sorted(k for k in found if k not in main)


def _is_number(value: Any) -> bool:
    """Whether ``value`` is a finite scalar figure (not a flag, a text, ``None`` or NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def case_values(cases: Sequence[Mapping[str, Any]], metric: str) -> np.ndarray:
    """Per-case values of ``metric`` (NaN where missing), in case order."""
    return np.array([np.nan if c.get(metric) is None else float(c[metric]) for c in cases], dtype=float)


def is_pooled_rms(metric: str) -> bool:
    """Whether ``metric`` is a root mean square (``rmse_*``), whose summary over cases is pooled: the root of
    the cases' mean square (over cases with equally many points, the RMS over all of them), not the mean of
    the per-case figures, which comes out smaller."""
    return metric.startswith("rmse")


def summarize(cases: Sequence[Mapping[str, Any]], metric: str) -> dict[str, Any]:
    """``{"mean", "median", "std", "best", "worst", "worst_case", "n"}`` of ``metric`` over the cases
    ("worst" in the metric's own direction); for a root mean square (:func:`is_pooled_rms`) ``"mean"`` is the
    pooled figure, the root of the cases' mean square."""
    vals = case_values(cases, metric)
    ok = np.isfinite(vals)
    if not ok.any():
        return {"mean": None, "median": None, "std": None, "best": None, "worst": None, "worst_case": None,
                "n": 0}  # fmt: skip
    hib = higher_is_better(metric)
    v = vals[ok]
    worst_i = int(np.nanargmin(vals) if hib else np.nanargmax(vals))
    return {
        "mean": float(np.sqrt((v**2).mean()) if is_pooled_rms(metric) else v.mean()),
        "median": float(np.median(v)),
        "std": sample_std(v),
        "best": float(v.max() if hib else v.min()),
        "worst": float(v.min() if hib else v.max()),
        "worst_case": str(cases[worst_i].get("id")),
        "n": int(v.size),
    }


def rank(rows: Sequence[Mapping[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Rows (each with ``"summary": {metric: {"mean", ...}}``) sorted best first by the mean of ``metric``;
    adds ``"rank"`` (1 = best). Rows without the metric go last.

    Raises:
        InputError: no row has ``metric``; the message lists the metrics there are.
    """
    have = [r for r in rows if (r.get("summary", {}).get(metric) or {}).get("mean") is not None]
    if rows and not have:
        known = sorted({m for r in rows for m in r.get("summary", {})})
        raise InputError(f"no candidate has the metric {metric!r}; choose one of: {', '.join(known)}.")
    sign = -1.0 if higher_is_better(metric) else 1.0
    ordered = sorted(have, key=lambda r: (sign * r["summary"][metric]["mean"], str(r.get("candidate"))))
    ordered += [r for r in rows if r not in have]
    return [{**r, "rank": i + 1} for i, r in enumerate(ordered)]


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgb)


def _fmt(value: Any, metric: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not np.isfinite(value):
            return "–"
        return f"{value:.3f}" if higher_is_better(metric) or abs(value) < 100 else f"{value:.1f}"
    return str(value)


# --- HTML -----------------------------------------------------------------------------------------------
def _env() -> Any:
    import jinja2

    if not TEMPLATES.is_dir():
        raise ModelSelectorError(f"{TEMPLATES}: the HTML templates are missing; reinstall ModelSelectorLib.")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)  # fmt: skip
    env.filters["fmt"] = _fmt
    return env


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def candidate_row(evaluation: Mapping[str, Any], extra: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """A leaderboard row: the candidate's summary of every metric, its settings and card facts."""
    cases = evaluation.get("cases") or []
    row = {
        "candidate": evaluation.get("candidate"),
        "model": evaluation.get("model"),
        "version": evaluation.get("version"),
        "bundle": evaluation.get("bundle"),
        "n_cases": len(cases),
        "summary": {m: summarize(cases, m) for m in metric_names(cases)},
    }
    row.update(extra or {})
    return row


#: settings always shown on a leaderboard when a candidate has them (every other one only where candidates differ)
SETTING_COLUMNS = ("architecture", "loss", "augment", "lr", "epochs", "channels")
#: settings of how a run was carried out, not of what it trained: never a column of their own
RUN_ONLY_SETTINGS = ("device", "version", "num_threads", "num_workers", "license")
#: the mark of a ranked candidate that the sweep file of the sweep's last run no longer holds
NOT_IN_SWEEP_FILE = "not in the current sweep file"
#: what the training-time column holds
TIME_TITLE = ("the training time on the model's card, the epochs alone (no start-up, imports or data loading); a "
              "figure marked wall, or a column named wall s, is the training worker's wall time, start-up, imports "
              "and data loading included, for a card that records no training time")  # fmt: skip


def setting_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The settings columns of a leaderboard: those of :data:`SETTING_COLUMNS` that any row has, then, in order of
    appearance, every other setting whose values differ between the rows (a row without it counts as differing),
    so that two candidates never look alike while trained differently; :data:`RUN_ONLY_SETTINGS` are left out."""
    settings = [dict(r.get("settings") or {}) for r in rows]
    keys = list(dict.fromkeys(k for s in settings for k in s))

    def differs(key: str) -> bool:
        return len({(key in s, json.dumps(s.get(key), sort_keys=True, default=str)) for s in settings}) > 1

    fixed = [c for c in SETTING_COLUMNS if c in keys]
    return fixed + [k for k in keys if k not in fixed and k not in RUN_ONLY_SETTINGS and differs(k)]


def _setting_text(value: Any) -> str:
    """A setting as a leaderboard cell shows it (``None``: a dash; floats without trailing digits)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_setting_text(v) for v in value) + "]"
    return str(value)


def training_time(row: Mapping[str, Any]) -> tuple[Optional[float], str]:
    """``(seconds, kind)`` of a row: the card's training time (the epochs alone, ``"training"``) when it has one,
    else the training worker's wall time (start-up, imports and data loading included, ``"wall"``), else
    ``(None, "")``."""
    for key, kind in (("training_time_s", "training"), ("wall_time_s", "wall")):
        if _is_number(row.get(key)):
            return float(row[key]), kind
    return None, ""


def time_column(rows: Sequence[Mapping[str, Any]]) -> tuple[str, list[str]]:
    """The header of the leaderboard's training-time column and each row's text: ``"training s"`` (the cards'
    training time; a row with only a wall time says ``wall``), or ``"wall s"`` when no row has a card's time."""
    times = [training_time(r) for r in rows]
    wall_only = any(k == "wall" for _, k in times) and not any(k == "training" for _, k in times)
    header = "wall s" if wall_only else "training s"
    marked = "" if wall_only else " wall"
    return header, ["–" if s is None else f"{s:.1f}" + (marked if k == "wall" else "") for s, k in times]


def write_dashboard(
    evaluation: Mapping[str, Any], out_dir: PathLike, metric: str = "dice", title: Optional[str] = None,
    settings: Optional[Mapping[str, Any]] = None, leaderboard_href: Optional[str] = None,
) -> Path:  # fmt: skip
    """Write a model's dashboard ``out_dir/index.html`` (+ ``curve.png``); overlays must already be there. Cases
    the evaluation names in ``seen_cases`` (training or validation cases of the model) are marked as such, and the
    page does not call the cases held out.

    Returns:
        the ``index.html`` path.
    """
    from ..zoo.bundle import read_metadata

    out = Path(out_dir)
    cases = list(evaluation.get("cases") or [])
    metrics = metric_names(cases)
    if metric not in metrics and metrics:
        raise InputError(f"metric {metric!r} is not among this model's metrics: {', '.join(metrics)}.")
    bundle = Path(str(evaluation.get("bundle", "")))
    curve = _read_json(bundle / "docs" / "training_curve.json")
    settings = dict(settings or _read_json(bundle / "configs" / "train_config.json"))
    card = (
        (read_metadata(bundle).get("modelselector") or {})
        if (bundle / "configs" / "metadata.json").is_file()
        else {}
    )
    curve_png = render_curve(curve, out / "curve.png") if curve else None
    hib = higher_is_better(metric)
    worst_first = sorted(
        cases, key=lambda c: np.inf if c.get(metric) is None else (1 if hib else -1) * float(c[metric])
    )
    summary = {m: summarize(cases, m) for m in metrics}
    seen = sorted({str(c) for c in evaluation.get("seen_cases") or []} & {str(c.get("id")) for c in cases})
    # the planes the overlays show ("axial slice 12 of 40 (from the feet)"), named in the legend
    planes = sorted({str(c["overlay_slice"]).split()[0] for c in cases if c.get("overlay_slice")})
    page = _env().get_template("dashboard.html.j2").render(
        title=title or f"{evaluation.get('candidate')} — dashboard",
        ev=evaluation, cases=worst_first, metrics=metrics, metric=metric, summary=summary, seen=seen, planes=planes,
        higher={m: higher_is_better(m) for m in metrics}, pooled={m: is_pooled_rms(m) for m in metrics},
        curve=bool(curve_png), curve_data=curve,
        settings=settings, card=card, leaderboard_href=leaderboard_href, gt_color=_hex(GT_COLOR), pred_color=_hex(PRED_COLOR),
    )  # fmt: skip
    atomic.write_text(out / "index.html", page)
    return out / "index.html"


def is_dashboard_folder(folder: PathLike) -> bool:
    """Whether ``folder`` holds a dashboard that `modelselector dashboard` wrote (:data:`DASHBOARD_FILES`: a page,
    and an evaluation as :func:`evaluate_candidate` saves it), which a new dashboard may replace as a whole."""
    folder = Path(folder)
    page, evaluation = (folder / f for f in DASHBOARD_FILES)
    saved = _read_json(evaluation) if evaluation.is_file() else {}
    return (
        page.is_file()
        and isinstance(saved, dict)
        and {"candidate", "bundle", "cases", "evaluated"} <= set(saved)
    )


def write_leaderboard(
    rows: Sequence[Mapping[str, Any]], out_html: PathLike, metric: str = "dice", title: str = "Leaderboard",
    dashboards: Optional[Mapping[str, str]] = None, note: str = "",
) -> Path:  # fmt: skip
    """Write ``leaderboard.html``: rows ranked by ``metric``, best value of every column highlighted.

    Args:
        rows: :func:`candidate_row` dicts; optional ``"training_time_s"`` (the card's), ``"wall_time_s"`` (the
            training worker's) and ``"in_current_sweep_file"`` (``False`` marks the row
            :data:`NOT_IN_SWEEP_FILE`).
        dashboards: ``{candidate: relative link}`` to each dashboard.
    """
    ranked = rank(rows, metric)
    metrics = []
    for r in ranked:
        metrics += [m for m in r["summary"] if m not in metrics]
    best: dict[str, Any] = {}
    for m in metrics:
        vals = [
            r["summary"][m]["mean"] for r in ranked if (r["summary"].get(m) or {}).get("mean") is not None
        ]
        if vals:
            best[m] = max(vals) if higher_is_better(m) else min(vals)
    columns = setting_columns(ranked)
    time_header, time_texts = time_column(ranked)
    shown = [{**r, "setting_texts": [_setting_text((r.get("settings") or {}).get(c)) for c in columns],
              "time_s": training_time(r)[0], "time_text": t,
              "stale": r.get("in_current_sweep_file") is False} for r, t in zip(ranked, time_texts)]  # fmt: skip
    page = _env().get_template("leaderboard.html.j2").render(
        title=title, rows=shown, metrics=metrics, metric=metric, best=best, note=note,
        higher={m: higher_is_better(m) for m in metrics}, pooled={m: is_pooled_rms(m) for m in metrics},
        dashboards=dict(dashboards or {}), not_in_sweep_file=NOT_IN_SWEEP_FILE,
        time_header=time_header, time_title=TIME_TITLE,
        settings_cols=columns, generated=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        surface=any(m.split("_")[0] in DISTANCE_METRICS for m in metrics),
        radial=any(m.split("_")[0] in REFERENCE_METRIC_FAMILIES for m in metrics),
    )  # fmt: skip
    atomic.write_text(out_html, page)
    return Path(out_html)


def _removed_from_zoo(work: Path, evaluation: Mapping[str, Any]) -> bool:
    """Whether the evaluated model version was removed from the zoo that holds the sweep folder
    (``ZOO/sweeps/TASK``); False for a folder outside a zoo."""
    from ..zoo.catalog import CATALOG, SWEEPS, Zoo

    zoo_dir = work.parent.parent
    if work.parent.name != SWEEPS or not (zoo_dir / CATALOG).is_file():
        return False
    zoo, model = Zoo(zoo_dir), str(evaluation.get("model"))
    return model not in zoo or str(evaluation.get("version")) not in zoo.versions(model)


def _sweep_row(
    evaluation: Mapping[str, Any], entry: Mapping[str, Any], in_sweep_file: Optional[Collection[str]]
) -> dict[str, Any]:
    """The leaderboard row of a sweep's saved evaluation.

    Args:
        evaluation: the candidate's evaluation (:func:`evaluate_candidate`).
        entry: the candidate's entry in ``sweep.json`` (``settings``, ``bundle``, ``train_seconds``).
        in_sweep_file: the candidates of the sweep file of the sweep's last run (None: the folder does not say).

    Returns:
        a :func:`candidate_row` with the evaluated bundle's exact training settings (its ``train_config.json``
        over the sweep file's), ``training_time_s`` (the card's), ``wall_time_s`` (the training worker's, when
        it trained this version) and ``in_current_sweep_file`` (None when unknown).
    """
    bundle = Path(str(evaluation.get("bundle", "")))
    settings = {**(entry.get("settings") or {}), **_read_json(bundle / "configs" / "train_config.json")}
    card = _read_json(bundle / "configs" / "metadata.json").get("modelselector", {})
    # the entry's wall time is that of the candidate's last trained version, which may not be the evaluated one
    same = Path(str(entry.get("bundle", ""))).parts[-2:] == bundle.parts[-2:]
    name = evaluation.get("candidate")
    return candidate_row(evaluation, {
        "settings": settings, "training_time_s": card.get("training_time_s"),
        "wall_time_s": entry.get("train_seconds") if same else None,
        "in_current_sweep_file": None if in_sweep_file is None else name in in_sweep_file,
    })  # fmt: skip


def dashboard_folders(names: Sequence[str]) -> dict[str, str]:
    """``{candidate: folder}`` of each candidate's dashboard under a sweep's ``report/dashboards``: a candidate's
    own name where it is a safe name (as `sweep` names its candidates and their folders, where it drew their
    overlays), else a distinct safe name (:func:`~ModelSelectorLib.zoo.card.distinct_safe_name`), so that a name
    read from a copied or edited evaluation (``../../x``, ``a/b``) never leads outside the folder and no two
    candidates share one."""
    names = list(dict.fromkeys(str(n) for n in names))
    folders = {n: n for n in names if safe_name(n) == n}
    taken = {n.lower() for n in folders}
    folders.update({n: distinct_safe_name(n, taken) for n in names if n not in folders})
    return folders


def leaderboard_document(
    task: str, metric: str, ranked: Sequence[Mapping[str, Any]], removed: Sequence[str] = ()
) -> dict[str, Any]:
    """What ``leaderboard.json`` holds and ``modelselector leaderboard --json`` prints: ``{"task", "metric",
    "setting_columns", "time_column", "ranking": [{"rank", "candidate", "model", "version", "in_current_sweep_file",
    "settings", "training_time_s", "wall_time_s", "n_cases", "summary"}], "removed": [candidates]}``."""
    keys = ("rank", "candidate", "model", "version", "in_current_sweep_file", "settings", "training_time_s",
            "wall_time_s", "n_cases", "summary")  # fmt: skip
    return _finite({"task": task, "metric": metric, "setting_columns": setting_columns(ranked),
                    "time_column": time_column(ranked)[0], "ranking": [{k: r.get(k) for k in keys} for r in ranked],
                    "removed": list(removed)})  # fmt: skip


def _sweep_note(task: str, state: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                evaluations: Sequence[Mapping[str, Any]], removed: Sequence[str]) -> str:  # fmt: skip
    """The sentence above a sweep's leaderboard: what was ranked on what, and who is left out or out of date."""
    note = (
        f"{len(rows)} candidates of task {task}, each evaluated on the same {rows[0]['n_cases']} held-out cases "
        f"({state.get('split', 'the sweep split')})."
    )
    unheld = sorted(
        {n for ev in evaluations for c in ev.get("cases") or [] for n in c.get("not_measured") or []}
    )
    if unheld:
        note += f" Not measured (no held-out case holds it): {', '.join(unheld)}."
    stale = [str(r["candidate"]) for r in rows if r.get("in_current_sweep_file") is False]
    if stale:
        note += (f" Ranked too, though {NOT_IN_SWEEP_FILE} (evaluated in an earlier run of this sweep; the settings "
                 f"columns show what each was trained with): {', '.join(stale)}.")  # fmt: skip
    if removed:
        note += f" Left out, removed from the zoo since their evaluation: {', '.join(removed)}."
    return note


def write_reports(sweep_folder: PathLike, metric: Optional[str] = None) -> dict[str, Any]:
    """(Re)write the leaderboard, ``leaderboard.json`` and every dashboard of a sweep folder from its saved
    evaluations, ranked by ``metric`` (default: the ranking metric of the sweep's task, ``dice`` or ``mre_mm``). A
    candidate whose evaluated version was removed from the zoo since is left out (and named in ``removed``); one
    that the sweep file of the sweep's last run no longer holds is ranked and marked :data:`NOT_IN_SWEEP_FILE`.

    Returns:
        ``{"sweep", "leaderboard", "ranking": rows best first, "best": row, "metric", "removed": [candidates],
        "document": what leaderboard.json holds (:func:`leaderboard_document`)}``.

    Raises:
        ModelSelectorError: no evaluations in the folder, or every evaluated version was removed.
    """
    work = Path(sweep_folder)
    state = _read_json(work / "sweep.json")
    metric = metric or primary_metric(state.get("task_type") or DEFAULT_TASK_TYPE)
    evals = sorted((work / "evaluation").glob("*.json"))
    if not evals:
        raise ZooError(f"{work}: no evaluations found; run `modelselector sweep` first.")
    report = work / "report"
    listed = state.get("sweep_file_candidates")
    in_sweep_file = None if listed is None else {str(n) for n in listed}
    rows, links, loaded, removed = [], {}, [], []
    for f in evals:
        ev = _read_json(f)
        name = str(ev.get("candidate") or f.stem)
        if _removed_from_zoo(work, ev):
            removed.append(name)
            continue
        row = _sweep_row(
            {**ev, "candidate": name}, (state.get("candidates") or {}).get(name, {}), in_sweep_file
        )
        rows.append(row)
        loaded.append((name, ev, row["settings"]))
    if not rows:
        raise ZooError(f"{work}: every evaluated candidate ({', '.join(removed)}) was removed from the zoo since; "
                       "run `modelselector sweep` again.")  # fmt: skip
    rank(rows, metric)  # refuses an unknown metric before anything is written
    folders = dashboard_folders([name for name, _, _ in loaded])
    for name, ev, settings in loaded:
        links[name] = f"dashboards/{folders[name]}/index.html"
        write_dashboard(ev, report / "dashboards" / folders[name], metric, settings=settings,
                        leaderboard_href="../../leaderboard.html")  # fmt: skip
    task = state.get("task", work.name)
    note = _sweep_note(task, state, rows, [ev for _, ev, _ in loaded], removed)
    html_path = write_leaderboard(
        rows, report / "leaderboard.html", metric, f"Leaderboard — {task}", links, note
    )
    ranked = rank(rows, metric)
    document = leaderboard_document(task, metric, ranked, removed)
    atomic.write_json(report / "leaderboard.json", document)
    return {
        "sweep": work,
        "leaderboard": html_path,
        "ranking": ranked,
        "best": ranked[0],
        "metric": metric,
        "removed": removed,
        "document": document,
    }


def escape(text: Any) -> str:
    """HTML-escape ``text`` (for callers that build small snippets)."""
    return html.escape(str(text))


__all__ = [
    "DASHBOARD_FILES",
    "GT_COLOR",
    "NOT_IN_SWEEP_FILE",
    "OVERLAY_PX",
    "PRED_COLOR",
    "SETTING_COLUMNS",
    "candidate_row",
    "dashboard_folders",
    "evaluate_candidate",
    "is_dashboard_folder",
    "leaderboard_document",
    "metric_problem",
    "rank",
    "render_curve",
    "render_overlay",
    "render_points_overlay",
    "representative_slice",
    "setting_columns",
    "summarize",
    "time_column",
    "training_time",
    "truth_and_prediction_points",
    "write_dashboard",
    "write_leaderboard",
    "write_reports",
]
