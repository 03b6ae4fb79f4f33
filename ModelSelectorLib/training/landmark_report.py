"""Results and report of the landmark comparison grid (:mod:`.landmark_study`).

``OUT/results.json`` holds every finished run (without its predictions), the mean ± std over seeds of every
test metric per variant and label fraction, and the paired comparisons: each student variant against the
supervised student on the same test images, seeds and splits (mean difference, a bootstrap confidence interval
over images and seeds, a one-sided Wilcoxon signed-rank test with Holm's correction over all comparisons of the
grid), and, for an ablation grid (``reuse_from``), each variant against the same variant of the reference grid.
``OUT/report.md`` shows them with a plot, contour overlays and the published reference figures.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .. import atomic
from ..datasets.landmarks import LandmarkCase, find_landmark_folders
from ..evaluation.landmarks import holm, paired_comparison
from ..evaluation.statistics import sample_std
from ..models.landmarks import GROUP_COLORS, GROUP_NAMES, GROUPS, LandmarkSchema, to_original
from .landmark_grid import GridConfig, run_name
from .landmarks import VARIANT_TITLES, VARIANTS

PathLike = Union[str, Path]
#: published figures of HybridGNet (Gaggion et al., IEEE TMI 2022) on ngaggion's landmark set (1024 px images,
#: their own split), the reference the report puts our figures beside
HYBRIDGNET_REFERENCE = {"lung_dice": 0.966, "mse_px2_1024": 165.0}
#: the baseline every student variant is compared with
BASELINE = "student_supervised"
#: the ``against`` of a paired comparison with the same variant in the ``reuse_from`` grid
REFERENCE_GRID = "reference grid"
#: the semi-supervised student variants (their unlabelled pool is what an ablation changes)
STUDENT_VARIANTS = ("offline_kd", "mean_teacher", "uncertainty_kd")


def _load_runs(folder: Path, cfg: GridConfig) -> list[dict[str, Any]]:
    runs = []
    for v in cfg.variants:
        for f in cfg.fractions:
            for s in cfg.seeds:
                p = folder / "runs" / f"{run_name(v, f, s)}.json"
                if p.is_file():
                    runs.append(json.loads(p.read_text(encoding="utf-8")))
    return runs


def _aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``summary[variant][fraction][metric] = {mean, std, n}`` of the test metrics (``coarse_<metric>``: the
    coarse stage alone), with summed train time and the parameters."""
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in runs:
        groups.setdefault(r["variant"], {}).setdefault(str(r["fraction"]), []).append(r)
    agg: dict[str, Any] = {}
    for v, by_f in groups.items():
        for f, rs in by_f.items():
            cell: dict[str, Any] = {}
            for prefix, part in (("", "test"), ("coarse_", "test_coarse"), ("val_", "val")):
                keys = [k for k, val in rs[0].get(part, {}).items() if isinstance(val, (int, float))]
                for k in keys:
                    vals = np.array([r[part].get(k, np.nan) for r in rs], float)
                    vals = vals[np.isfinite(vals)]
                    cell[prefix + k] = {"mean": float(vals.mean()) if vals.size else None,
                                        "std": sample_std(vals), "n": int(vals.size)}  # fmt: skip
            cell["train_seconds"] = float(np.sum([r["train_seconds"] for r in rs]))
            cell["parameters"] = rs[0]["parameters"]
            cell["parameters_coarse"] = rs[0].get("parameters_coarse", rs[0]["parameters"])
            agg.setdefault(v, {})[f] = cell
    return agg


def _per_image(runs: Sequence[dict[str, Any]], variant: str, fraction: float) -> dict[int, np.ndarray]:
    return {int(r["seed"]): np.asarray(r["test"]["per_case_mre_mm"], float) for r in runs
            if r["variant"] == variant and float(r["fraction"]) == float(fraction) and "per_case_mre_mm" in r["test"]}  # fmt: skip


def _compare(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> Optional[dict[str, float]]:
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    return paired_comparison(np.stack([a[s] for s in seeds]), np.stack([b[s] for s in seeds]))


def paired_tests(runs: Sequence[dict[str, Any]], cfg: GridConfig,
                 reference: Optional[Sequence[dict[str, Any]]] = None) -> list[dict[str, Any]]:  # fmt: skip
    """Every student variant against the supervised student per label fraction (and, with ``reference`` runs
    of another grid, every variant against the same variant there), on the seeds both have; Holm-adjusted
    p-values over the whole list."""
    rows = []
    for f in cfg.fractions:
        base = _per_image(runs, BASELINE, f)
        for v in cfg.variants:
            if v != BASELINE and v in VARIANTS:
                res = _compare(_per_image(runs, v, f), base)
                if res:
                    rows.append({"fraction": f, "variant": v, "against": BASELINE, **res})
            if reference is not None and v in STUDENT_VARIANTS:
                res = _compare(_per_image(runs, v, f), _per_image(reference, v, f))
                if res:
                    rows.append({"fraction": f, "variant": v, "against": REFERENCE_GRID, **res})
    adjusted = holm([r["p_wilcoxon"] for r in rows]) if rows else []
    for r, p in zip(rows, adjusted):
        r["p_holm"] = p
        r["better"] = bool(r["ci_high"] < 0 and p < 0.05)
        r["worse"] = bool(r["ci_low"] > 0)
    return rows


def collect_results(out: PathLike, cfg: GridConfig) -> dict[str, Any]:
    """All finished runs of the grid, their aggregate ``summary`` and the ``paired`` comparisons."""
    out = Path(out)
    runs = _load_runs(out, cfg)
    reference = _load_runs(Path(cfg.reuse_from), cfg) if cfg.reuse_from else None
    refiners = [
        json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / "runs").glob("refiner_*.json"))
    ]
    total = float(sum(r["train_seconds"] for r in runs) + sum(r["train_seconds"] for r in refiners))
    # the first test images' predictions stay (the overlays), so the record alone can redraw the report
    slim = [
        {k: (v[: cfg.n_overlays] if k == "test_predictions_px" else v) for k, v in r.items()} for r in runs
    ]
    return {"config": cfg.to_dict(), "runs": slim, "summary": _aggregate(runs), "paired": paired_tests(runs, cfg, reference),
            "refiners": refiners, "train_seconds_total": total}  # fmt: skip


def winners(results: dict[str, Any], metric: str = "mre_mm") -> dict[str, dict[str, Any]]:
    """For each fraction: the best *student* variant (lowest mean test ``metric``) and its margin to the
    supervised student baseline and to the runner-up."""
    summary = results["summary"]
    fractions = sorted({f for v in summary.values() for f in v}, key=float)
    out = {}
    for f in fractions:
        cands = [(v, summary[v][f][metric]["mean"], summary[v][f][metric]["std"]) for v in summary
                 if v != "teacher_supervised" and f in summary[v] and summary[v][f][metric]["mean"] is not None]  # fmt: skip
        if not cands:
            continue
        cands.sort(key=lambda c: c[1])
        base = summary.get(BASELINE, {}).get(f, {}).get(metric, {}).get("mean")
        out[f] = {"variant": cands[0][0], "mean": cands[0][1], "std": cands[0][2],
                  "runner_up": cands[1][0] if len(cands) > 1 else None,
                  "margin_to_runner_up": (cands[1][1] - cands[0][1]) if len(cands) > 1 else None,
                  "baseline": base, "gain_over_baseline": (base - cands[0][1]) if base is not None else None}  # fmt: skip
    return out


def best_student(results: dict[str, Any], metric: str = "mre_mm") -> Optional[dict[str, Any]]:
    """The student configuration to put into the zoo: the (variant, label fraction), teacher excluded, with
    the lowest mean *validation* ``metric`` over seeds (chosen on validation images so that the test
    figures stay unbiased; a mean over seeds so that one lucky seed does not decide). Only configurations with
    the most finished seeds compete, so that a partly run grid does not pick a cell of one or two seeds.

    Returns:
        ``{"variant", "fraction", "val_mean", "val_std", "test_mean", "test_std", "name"}`` (``name``: the run
        of the lowest seed), or None when no student run has the metric.
    """
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in results["runs"]:
        if r["variant"] == "teacher_supervised" or not np.isfinite(r["val"].get(metric, float("nan"))):
            continue
        groups.setdefault((r["variant"], float(r["fraction"])), []).append(r)
    if not groups:
        return None
    most = max(len(rs) for rs in groups.values())
    complete = {k: rs for k, rs in groups.items() if len(rs) == most}
    (variant, fraction), runs = min(
        complete.items(), key=lambda kv: np.mean([r["val"][metric] for r in kv[1]])
    )
    val = [r["val"][metric] for r in runs]
    test = [r["test"][metric] for r in runs]
    return {"variant": variant, "fraction": fraction, "val_mean": float(np.mean(val)), "val_std": float(np.std(val)),
            "test_mean": float(np.mean(test)), "test_std": float(np.std(test)), "n_seeds": len(runs),
            "name": min(runs, key=lambda r: r["seed"])["name"], "seed": min(r["seed"] for r in runs)}  # fmt: skip


# --- figures --------------------------------------------------------------------------------------------------
def plot_error_vs_fraction(results: dict[str, Any], path: PathLike, metric: str = "mre_mm") -> Path:
    """Line plot of ``metric`` (mean ± std over seeds) against label fraction, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for v in VARIANTS:
        cells = results["summary"].get(v)
        if not cells:
            continue
        fs = sorted(cells, key=float)
        m = [cells[f][metric]["mean"] for f in fs]
        s = [cells[f][metric]["std"] for f in fs]
        ax.errorbar([100 * float(f) for f in fs], m, yerr=s, marker="o", capsize=3, label=VARIANT_TITLES[v])
    ax.set_xscale("log")
    ticks = sorted({100 * float(f) for c in results["summary"].values() for f in c})
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.set_xlabel("labelled training images (%)")
    ax.set_ylabel("mean radial error (mm)" if metric == "mre_mm" else metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return atomic.save_figure(fig, path)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image as PILImage

    with PILImage.open(path) as im:
        return np.asarray(im.convert("L"))


def _draw_contours(ax: Any, points: np.ndarray, mask: np.ndarray, schema: LandmarkSchema, color: Any) -> None:
    for g in schema.groups:
        ch = schema.channels(g)
        if len(ch) < 2 or not np.asarray(mask)[ch].all():
            continue
        p = np.vstack([points[ch], points[ch][:1]])
        ax.plot(p[:, 0], p[:, 1], "-", lw=0.8, color=color if color else GROUP_COLORS[g])


def plot_overlays(run: dict[str, Any], cases: Sequence[LandmarkCase], image_paths: Sequence[Path],
                  path: PathLike, schema: LandmarkSchema, n: int = 3) -> Path:  # fmt: skip
    """Test images with the true (green) and predicted (red) contours of one run, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(cases))
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), dpi=100, squeeze=False)
    for k in range(n):
        ax = axes[0, k]
        ax.imshow(_read_png(image_paths[k]), cmap="gray")
        true = to_original(cases[k].points, cases[k].scale)
        pred = np.asarray(run["test_predictions_px"][k])
        _draw_contours(ax, true, cases[k].mask, schema, "lime")
        _draw_contours(ax, pred, np.ones(len(pred), bool), schema, "red")
        ax.set_title(cases[k].case_id, fontsize=7, parse_math=False)  # a file name: a "$" in it is no formula
        ax.axis("off")
    fig.suptitle(f"{VARIANT_TITLES[run['variant']]}, {run['fraction'] * 100:g} % labels, seed {run['seed']}",
                 fontsize=8)  # fmt: skip
    fig.tight_layout()
    return atomic.save_figure(fig, path)


# --- the report -----------------------------------------------------------------------------------------------
def _fmt(cell: Optional[dict[str, Any]], key: str, digits: int = 2, pct: bool = False) -> str:
    if not cell or key not in cell or cell[key]["mean"] is None:
        return "-"
    m, s = cell[key]["mean"], cell[key]["std"]
    if pct:
        return f"{100 * m:.0f} ± {100 * s:.0f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _label(f: Any) -> str:
    return f"{100 * float(f):g} %"


def _report_settings(results: dict[str, Any], cfg: GridConfig, fractions: list[str],
                     splits: Optional[dict[str, list[str]]]) -> list[str]:  # fmt: skip
    """The report's opening: runs, seeds, fractions, settings, networks and split."""
    summary, tc = results["summary"], cfg.train_config
    pool = "adult PA only (in-domain)" if cfg.unlabelled_pool == "in_domain" else "all"
    lines = [
        f"{len(results['runs'])} finished runs; seeds {cfg.seeds}; label fractions "
        f"{', '.join(_label(f) for f in cfg.fractions)}; external unlabelled images: {pool}. Test-set metrics, "
        "mean ± std over seeds.", "",
        f"Settings: coarse stage {tc.size} x {tc.size} px, Gaussian sigma {tc.sigma} px, {tc.steps} optimisation "
        f"steps per network (teacher {tc.teacher_steps or tc.steps}), batch {tc.batch_size} labelled (+ "
        f"{tc.batch_size} unlabelled for the semi-supervised variants), AdamW lr {tc.lr} with cosine decay, "
        f"distillation weight {tc.kd_weight}, temperature {tc.kd_temperature}, EMA decay {tc.ema_decay}, "
        f"{tc.mc_samples} MC-dropout samples, decoding {tc.decode} (radius {tc.decode_radius} px); shape model "
        f"{tc.shape_modes} modes{f', contour stage {tc.contour_modes} modes' if tc.contour_modes else ''}"
        f"{', per-landmark offsets' if tc.point_offsets else ''}; "
        f"refinement {tc.refine_steps} steps of {tc.batch_size} x {tc.refine_points} "
        f"patches (jitter {tc.refine_jitter} px, sigma {tc.refine_sigma} px, lr {tc.refine_lr}).", "",
    ]  # fmt: skip
    # the most labels: the shape model keeps fewer modes with fewer labelled shapes, so the count varies with them
    full = max(fractions, key=float) if fractions else None
    if full and "teacher_supervised" in summary and BASELINE in summary and full in summary[BASELINE]:
        t, s = summary["teacher_supervised"][full], summary[BASELINE][full]
        lines += [f"Parameters (all stages, with {_label(full)} of the labels): teacher `{tc.teacher}` "
                  f"{t['parameters']:,}, student `{tc.student}` "
                  f"{s['parameters']:,} (ratio {s['parameters'] / t['parameters']:.2f}); coarse networks alone "
                  f"{t['parameters_coarse']:,} and {s['parameters_coarse']:,}.", ""]  # fmt: skip
    if splits:
        lines += [f"Split (seed {cfg.split_seed}, by image): {len(splits['train'])} train, {len(splits['val'])} "
                  f"validation, {len(splits['test'])} test images; ids in `splits.json`.", ""]  # fmt: skip
    return lines


def _report_mre(summary: dict[str, Any], fractions: list[str]) -> list[str]:
    head = "| variant | " + " | ".join(_label(f) for f in fractions) + " |"
    rule = "|---|" + "---|" * len(fractions)
    lines = ["## Mean radial error (mm), whole model", "", head, rule]
    for v in VARIANTS:
        if v in summary:
            lines.append(
                f"| {VARIANT_TITLES[v]} | "
                + " | ".join(_fmt(summary[v].get(f), "mre_mm") for f in fractions)
                + " |"
            )
    lines += [
        "",
        "## The coarse stage alone (a single-stage model at the coarse grid), MRE (mm)",
        "",
        head,
        rule,
    ]
    for v in VARIANTS:
        if v in summary:
            lines.append(f"| {VARIANT_TITLES[v]} | "
                         + " | ".join(_fmt(summary[v].get(f), "coarse_mre_mm") for f in fractions) + " |")  # fmt: skip
    return lines + [""]


def _report_paired(results: dict[str, Any]) -> list[str]:
    rows = results.get("paired") or []
    if not rows:
        return []
    lines = ["## Paired comparisons (same seeds, splits and test images)", "",
             "Difference of test MRE (mm; negative: the variant has the lower error), 95 % bootstrap interval over "
             "images and seeds, one-sided Wilcoxon signed-rank p (per-image differences averaged over seeds) and "
             "Holm's adjustment over every comparison listed.", "",
             "| labels | variant | against | difference (mm) | 95 % interval | Wilcoxon p | Holm p | verdict |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        verdict = "lower error" if r["better"] else ("higher error" if r["worse"] else "no difference shown")
        against = (
            "the same variant in the reference grid (`reuse_from`)"
            if r["against"] == REFERENCE_GRID
            else VARIANT_TITLES.get(r["against"], r["against"])
        )
        lines.append(f"| {_label(r['fraction'])} | {VARIANT_TITLES[r['variant']]} | {against} | {r['mean_diff']:+.2f} | "
                     f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] | {r['p_wilcoxon']:.3g} | {r['p_holm']:.3g} | "
                     f"{verdict} ({r['n_seeds']} seed(s) x {r['n_images']} images) |")  # fmt: skip
    return lines + [""]


def _report_tables(summary: dict[str, Any], cfg: GridConfig, fractions: list[str]) -> list[str]:
    """SDR, pixel MRE, lung Dice, plausibility and time per variant and fraction; MRE per landmark group."""
    radii = [f"sdr_{r:g}" for r in cfg.radii] + [f"sdr_px_{r:g}" for r in cfg.radii_px]
    names = [f"SDR {r:g} mm" for r in cfg.radii] + [f"SDR {r:g} px" for r in cfg.radii_px]
    lines = ["## Success detection rate (%), lung Dice and plausibility", "",
             "| variant | labels | " + " | ".join(names) + " | MRE (px) | lung Dice of the contours | "
             "lung contour self-intersects (% of images) | train time (s, all seeds) |",
             "|---|---|" + "---|" * (len(radii) + 4)]  # fmt: skip
    cells = [(v, f, summary.get(v, {}).get(f)) for v in VARIANTS for f in fractions]
    for v, f, cell in cells:
        if cell:
            lines.append(f"| {VARIANT_TITLES[v]} | {_label(f)} | " + " | ".join(_fmt(cell, r, pct=True) for r in radii)
                         + f" | {_fmt(cell, 'mre_px')} | {_fmt(cell, 'lung_dice', 3)} | "
                         f"{_fmt(cell, 'self_intersection', pct=True)} | {cell['train_seconds']:.0f} |")  # fmt: skip
    groups = [g for g in GROUPS if any(f"mre_mm_{g}" in c for vv in summary.values() for c in vv.values())]
    lines += ["", "## Mean radial error per landmark group (mm)", "",
              "| variant | labels | " + " | ".join(GROUP_NAMES[g] for g in groups) + " |",
              "|---|---|" + "---|" * len(groups)]  # fmt: skip
    for v, f, cell in cells:
        if cell:
            lines.append(
                f"| {VARIANT_TITLES[v]} | {_label(f)} | "
                + " | ".join(_fmt(cell, f"mre_mm_{g}") for g in groups)
                + " |"
            )
    return lines + [""]


def _report_coverage(results: dict[str, Any], cfg: GridConfig) -> list[str]:
    """Seeds finished per variant and label fraction, and the runs of the configuration that were not run."""
    done = {(r["variant"], float(r["fraction"]), int(r["seed"])) for r in results["runs"]}
    lines = ["## Runs", "", "| variant | " + " | ".join(_label(f) for f in cfg.fractions) + " |",
             "|---|" + "---|" * len(cfg.fractions)]  # fmt: skip
    missing: dict[tuple[str, ...], list[str]] = {}
    for f in cfg.fractions:
        for v in cfg.variants:
            absent = tuple(str(s) for s in cfg.seeds if (v, float(f), int(s)) not in done)
            if absent:
                missing.setdefault((_label(f), *absent), []).append(VARIANT_TITLES[v])
    for v in cfg.variants:
        cells = [
            f"{sum((v, float(f), int(s)) in done for s in cfg.seeds)} of {len(cfg.seeds)} seeds"
            for f in cfg.fractions
        ]
        lines.append(f"| {VARIANT_TITLES[v]} | " + " | ".join(cells) + " |")
    gaps = [f"{k[0]}, seed(s) {', '.join(k[1:])}: {', '.join(vs) if len(vs) < len(cfg.variants) else 'every variant'}"
            for k, vs in missing.items()]  # fmt: skip
    lines += ["", f"Not run: {'; '.join(gaps)}." if gaps else "Every run of the configuration finished.", ""]
    return lines


def _report_reference(results: dict[str, Any]) -> list[str]:
    """The chosen student beside HybridGNet's published figures."""
    best = best_student(results)
    if not best:
        return []
    cell = results["summary"][best["variant"]][str(best["fraction"])]
    rmse = cell.get("rmse_px", {}).get("mean")
    mse_1024 = (
        (2.0 * rmse) ** 2 if rmse is not None else float("nan")
    )  # our originals are 512 px: x 2 for 1024
    dice = cell.get("lung_dice", {}).get("mean")
    return ["## Beside the published reference", "",
            "| model | test images | lung Dice | landmark MSE (px², at 1024 px) | MRE (mm) |", "|---|---|---|---|---|",
            f"| HybridGNet (Gaggion et al. 2022; 1024 px, ngaggion's split, published) | theirs | "
            f"{HYBRIDGNET_REFERENCE['lung_dice']:.3f} | {HYBRIDGNET_REFERENCE['mse_px2_1024']:.0f} | ≈ 4.5 (RMS, derived) |",
            f"| this grid's chosen student ({VARIANT_TITLES[best['variant']]}, {_label(best['fraction'])} labels) | "
            f"our test split | {'-' if dice is None else f'{dice:.3f}'} | {mse_1024:.0f} | {best['test_mean']:.2f} |",
            "", "The test sets differ (ours: JSRT and Shenzhen images of this repository's split), so the comparison "
            "is indicative only.", ""]  # fmt: skip


def _report_zoo_student(results: dict[str, Any]) -> list[str]:
    best = best_student(results)
    if not best:
        return []
    f = f"f{int(round(best['fraction'] * 100)):03d}_s{best['seed']}"
    return ["## Student for the zoo", "",
            f"Lowest mean validation MRE among the students with {best['n_seeds']} finished seed(s): "
            f"{VARIANT_TITLES[best['variant']]} with {_label(best['fraction'])} labels: validation "
            f"{best['val_mean']:.2f} ± {best['val_std']:.2f} mm, test {best['test_mean']:.2f} ± {best['test_std']:.2f} mm. "
            f"Put its seed-{best['seed']} run into a zoo with", "", "```",
            f"modelselector landmarks train --data DATA --zoo ZOO --config grid.yaml --variant {best['variant']} "
            f"--fraction {best['fraction']:g} --seed {best['seed']} --weights OUT/runs/{best['name']}.pt "
            f"--refiner OUT/runs/refiner_{f}.pt", "```", ""]  # fmt: skip


METHOD_TEXT = """\
- Data: every chest X-ray with landmarks (`cxr_landmarks/`: 204 JSRT with lungs, heart and clavicles, 10
  Shenzhen with lungs only; `cxr_lungseg_imlab/`: 4 JSRT), split by image into train / validation / test
  before anything else (seed and ids in `splits.json`). Unlabelled pool of the semi-supervised variants: the
  training images whose labels are hidden plus `cxr_unlabelled/` (all 240, 232 of them paediatric AP: a domain
  shift), or with `unlabelled_pool: in_domain` only its 8 adult PA images. Landmark groups an image lacks are
  masked out of losses and metrics.
- Model ({n} landmarks): a coarse UNet gives one heatmap per landmark on the image resized to the coarse grid
  (targets: Gaussians normalised to sum 1, spatial-softmax cross-entropy; decoding: local centroid); the points
  are projected onto the main modes of a point-distribution model of the labelled training shapes; a refinement
  UNet then looks at a patch of the image at 4 x the coarse resolution around each point (conditioned on the
  landmark's group and position along its contour) and moves the point to the centroid of its heatmap. The
  variants differ in how the coarse stage learns; the shape model and the refiner are learnt from the labelled
  images of each fraction and seed and shared by its variants.
- Metrics: mean radial error (MRE) in mm in the original image (JSRT 0.7 mm per pixel at 512 px; images
  without a known spacing count only in the pixel figures, in original pixels); success detection rate within
  2, 4 and 10 mm and within 5 and 10 px; Dice of the filled predicted lung contours against the lung masks;
  plausibility: the share of test images whose predicted right or left lung contour self-intersects.
- Variants (coarse stage): supervised student on the labelled fraction (baseline; at 100 % the fully supervised
  reference); supervised teacher; offline distillation (the teacher trained on the labelled fraction gives
  temperature-scaled heatmaps of unlabelled images; loss CE(labels) + weight x T^2 x CE(teacher)); mean teacher
  (EMA of the student; consistency between the student on a strongly augmented view and the EMA teacher on a
  weakly augmented, shift-aligned view; the EMA network is evaluated); uncertainty-guided distillation (as
  offline distillation, each pixel of the distillation loss weighted by exp(-std/mean) of the teacher's
  Monte-Carlo-dropout samples). Every coarse network gets the same number of optimisation steps; the
  distillation variants' train time excludes the teacher (one teacher per fraction and seed is shared)."""


def write_report(
    out: PathLike,
    results: dict[str, Any],
    cfg: GridConfig,
    labelled_cases: Optional[dict[str, LandmarkCase]] = None,
    splits: Optional[dict[str, list[str]]] = None,
    schema: Optional[LandmarkSchema] = None,
    image_paths: Optional[dict[str, Path]] = None,
) -> Path:
    """``report.md`` with the tables, the paired tests, the plot and overlays (when the cases are given)."""
    out = Path(out)
    summary = results["summary"]
    fractions = sorted({f for v in summary.values() for f in v}, key=float)
    lines = ["# Chest X-ray landmarks: teacher–student variants of a coarse-to-fine model", ""]
    lines += _report_settings(results, cfg, fractions, splits)
    lines += _report_coverage(results, cfg)
    lines += _report_mre(summary, fractions)
    if summary:
        plot = plot_error_vs_fraction(results, out / "mre_vs_fraction.png")
        lines += [f"![MRE vs label fraction]({plot.name})", ""]
    lines += _report_paired(results) + _report_tables(summary, cfg, fractions) + _report_reference(results)
    if labelled_cases is not None and splits is not None and schema is not None:
        files = _write_overlays(out, cfg, labelled_cases, splits, schema, image_paths)
        if files:
            lines += ["## Overlays (test images; green: true contours, red: predicted)", ""]
            lines += [f"![{p.stem}](overlays/{p.name})" for p in files] + [""]
    lines += _report_zoo_student(results)
    lines += ["## Method", "", *METHOD_TEXT.format(n=schema.n_points if schema else "all").splitlines(), ""]
    lines += [f"Total training time of the finished runs and refiners: {results['train_seconds_total'] / 60:.1f} min "
              "(single-thread CPU).", ""]  # fmt: skip
    path = out / "report.md"
    atomic.write_text(path, "\n".join(lines))
    return path


def _write_overlays(out: Path, cfg: GridConfig, cases: dict[str, LandmarkCase], splits: dict[str, list[str]],
                    schema: LandmarkSchema, image_paths: Optional[dict[str, Path]]) -> list[Path]:  # fmt: skip
    """Overlays of the first seed at the smallest fraction for every variant."""
    test_ids = splits["test"][: cfg.n_overlays]
    paths = image_paths or {}
    data = out / "data.txt"
    if not paths and data.is_file():
        paths = {p.stem: p for p in find_landmark_folders(data.read_text(encoding="utf-8").strip())[0]}
    if not all(i in paths for i in test_ids):
        return []
    files = []
    f = min(cfg.fractions)
    for v in cfg.variants:
        p = out / "runs" / f"{run_name(v, f, cfg.seeds[0])}.json"
        if p.is_file():
            run = json.loads(p.read_text(encoding="utf-8"))
            target = out / "overlays" / f"{run_name(v, f, cfg.seeds[0])}.png"
            files.append(plot_overlays(run, [cases[i] for i in test_ids], [paths[i] for i in test_ids], target,
                                       schema, cfg.n_overlays))  # fmt: skip
    return files


__all__ = [
    "BASELINE", "HYBRIDGNET_REFERENCE", "best_student", "collect_results", "paired_tests", "plot_error_vs_fraction",
    "plot_overlays", "winners", "write_report",
]  # fmt: skip
