"""The teacher–student comparison grid: variants x label fractions x seeds, resumable, with a report.

Layout of the output folder ``OUT``::

    OUT/config.json             the grid and training settings (a restart must use the same ones)
    OUT/splits.json             train / val / test case ids (fixed seed), written before any training
    OUT/runs/<run>.json         one finished run: metrics on val and test, time, parameters, predictions
    OUT/runs/<run>.pt           its weights (state_dict); teachers are reused by the distillation variants
    OUT/results.json            every run's metrics plus the aggregated table
    OUT/report.md               Markdown tables (mean ± std over seeds), plot, overlays
    OUT/mre_vs_fraction.png     mean radial error against label fraction per variant
    OUT/overlays/*.png          predicted (red) vs true (green) landmarks on test images

A run is named ``<variant>_f<percent>_s<seed>``; a run whose JSON exists is not repeated, so a cancelled
or crashed grid continues where it stopped. All runs share one split, one image size and one number of
student optimisation steps.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .. import __version__, atomic
from ..datasets.landmarks import (
    LandmarkCase,
    find_landmark_folders,
    labelled_subset,
    load_dataset,
    split_cases,
)
from ..errors import TrainingError
from ..evaluation.landmarks import evaluate_predictions
from ..models.landmarks import (
    DEFAULT_STEPS,
    GROUP_NAMES,
    GROUPS,
    LandmarkSchema,
    decode_logits,
    heatmap_entropy,
    landmark_labels,
    to_original,
)
from ..progress import check_cancel, progress_bar
from ..settings import check_settings
from ..zoo.bundle import save_bundle
from ..zoo.card import ModelCard
from ..zoo.catalog import Zoo
from .landmarks import (
    VARIANT_TITLES,
    VARIANTS,
    Arrays,
    LandmarkTrainConfig,
    VariantResult,
    build_network,
    count_parameters,
    network_def,
    predict_logits,
    predict_points,
    run_variant,
    stack_cases,
    torch_threads,
)

PathLike = Union[str, Path]


@dataclasses.dataclass
class GridConfig:
    """The comparison grid.

    Attributes:
        variants: subset of :data:`~ModelSelectorLib.landmarks.VARIANTS`.
        fractions: labelled fractions of the training images.
        seeds: training seeds (also choose which training images keep their labels).
        split_seed: seed of the train/val/test split (one split for all runs).
        val_fraction, test_fraction: split sizes.
        max_unlabelled: cap on the external unlabelled pool (None: all).
        train: :class:`~ModelSelectorLib.landmarks.LandmarkTrainConfig` settings.
        steps_per_group: every ``n``-th contour point of each group (the landmark schema).
        radii: SDR radii in mm.
        n_overlays: test images in each overlay figure.
    """

    variants: list[str] = dataclasses.field(default_factory=lambda: list(VARIANTS))
    fractions: list[float] = dataclasses.field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    split_seed: int = 20261124
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    max_unlabelled: Optional[int] = None
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    steps_per_group: dict[str, int] = dataclasses.field(default_factory=lambda: dict(DEFAULT_STEPS))
    radii: list[float] = dataclasses.field(default_factory=lambda: [2.0, 4.0, 10.0])
    n_overlays: int = 3

    @classmethod
    def quick(cls) -> GridConfig:
        """Seconds-long configuration of the same code (tests, smoke runs)."""
        return cls(fractions=[0.5, 1.0], seeds=[0], max_unlabelled=8, n_overlays=2,
                   steps_per_group={"RL": 11, "LL": 10, "H": 9},
                   train={"size": 32, "steps": 4, "batch_size": 2, "teacher": "teacher-tiny",
                          "student": "student-tiny", "mc_samples": 2, "sigma": 1.0, "threads": 1})  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GridConfig:
        check_settings(cls, data, "grid")
        cfg = cls(**data)
        bad = [v for v in cfg.variants if v not in VARIANTS]
        if bad:
            raise TrainingError(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}.")
        if not cfg.fractions or any(not 0 < f <= 1 for f in cfg.fractions) or not cfg.seeds:
            raise TrainingError("the grid needs label fractions in (0, 1] and at least one seed.")
        LandmarkTrainConfig.from_dict(cfg.train)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def train_config(self) -> LandmarkTrainConfig:
        return LandmarkTrainConfig.from_dict(self.train)


METHOD_TEXT = """\
- Data: every chest X-ray with landmarks (`cxr_landmarks/`: 204 JSRT with lungs, heart and clavicles, 10
  Shenzhen with lungs only; `cxr_lungseg_imlab/`: 4 JSRT), split by image into train / validation / test
  before anything else (seed and ids in `splits.json`). Unlabelled pool for the semi-supervised variants:
  the training images whose labels are hidden plus `cxr_unlabelled/` (240 images, mostly paediatric AP:
  a domain shift). Landmark groups an image lacks are masked out of losses and metrics.
- Targets: one heatmap channel per landmark ({n} landmarks: every 4th right-lung, 5th left-lung, 3rd heart
  and 4th clavicle contour point), a Gaussian normalised to sum 1; the network output is read as a
  spatial softmax and trained with cross-entropy; points are decoded to sub-pixel positions by the local
  centroid (11 x 11 px window) around the maximum.
- Metrics: mean radial error (MRE) in mm in the original image (JSRT 0.7 mm per pixel at 512 px; images
  without a known spacing count only in the pixel MRE, in original pixels); success detection rate
  (SDR) within 2, 4 and 10 mm; plausibility: the share of test images whose predicted right or left lung
  contour self-intersects.
- Variants: supervised student on the labelled fraction (baseline; at 100 % the fully supervised
  reference); supervised teacher; offline distillation (the teacher trained on the labelled fraction gives
  temperature-scaled heatmaps of unlabelled images; loss CE(labels) + weight x T^2 x CE(teacher)); mean
  teacher (EMA of the student; consistency between the student on a strongly augmented view and the EMA
  teacher on a weakly augmented, shift-aligned view; the EMA network is evaluated); uncertainty-guided
  distillation (as offline distillation, each pixel of the distillation loss weighted by exp(-std/mean) of
  the teacher's Monte-Carlo-dropout samples). Every network gets the same number of optimisation steps;
  the distillation variants' train time excludes the teacher (one teacher per fraction and seed is
  shared)."""


#: terms of the images and annotations a landmark model learns from (``../shared/data/MANIFEST.md``)
TRAINING_DATA_LICENCE = (
    "JSRT database terms (research use; cite Shiraishi et al., AJR 2000; redistribution terms not verified); "
    "landmarks from ngaggion/Chest-xray-landmark-dataset (cite Gaggion et al.); Shenzhen chest X-ray set "
    "(NLM/NIH, research use; cite Jaeger et al. 2014); unlabelled paediatric images: Kermany et al. 2018, "
    "CC BY 4.0"
)


def run_name(variant: str, fraction: float, seed: int) -> str:
    return f"{variant}_f{int(round(fraction * 100)):03d}_s{seed}"


def _needs_teacher(variant: str) -> bool:
    return variant in ("offline_kd", "uncertainty_kd")


def _check_config(out: Path, cfg: GridConfig) -> None:
    path = out / "config.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if (
            old.get("train") != cfg.to_dict()["train"]
            or old.get("split_seed") != cfg.split_seed
            or old.get("steps_per_group") != cfg.steps_per_group
        ):
            raise TrainingError(
                f"{out}: holds runs made with other settings (config.json differs); use a new --out folder "
                "or the same --config."
            )
    atomic.write_json(path, cfg.to_dict())


def run_grid(
    data: PathLike,
    out: PathLike,
    cfg: GridConfig,
    cancel: Optional[Any] = None,
    log: Any = print,
) -> dict[str, Any]:
    """Run every missing run of the grid, then write ``results.json`` and the report.

    Returns:
        the results dict (``{"runs": [...], "summary": {...}, ...}``).

    Raises:
        Cancelled: ``cancel`` was set (finished runs stay on disk).
        TrainingError / DatasetError: bad settings or data.
    """

    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    _check_config(out, cfg)
    tc = cfg.train_config
    with torch_threads(tc.threads):
        return _run_grid(data, out, cfg, tc, cancel, log)


def _run_grid(
    data: PathLike, out: Path, cfg: GridConfig, tc: LandmarkTrainConfig, cancel: Optional[Any], log: Any
) -> dict[str, Any]:
    schema = LandmarkSchema.default(cfg.steps_per_group)
    labelled, unlabelled = load_dataset(data, tc.size, schema, cache=out / "cache.npz", cancel=cancel)
    if cfg.max_unlabelled is not None:
        unlabelled = unlabelled[: cfg.max_unlabelled]
    splits = split_cases([c.case_id for c in labelled], cfg.split_seed, cfg.val_fraction, cfg.test_fraction)
    split_path = out / "splits.json"
    if (
        split_path.is_file()
        and json.loads(split_path.read_text(encoding="utf-8")).get("train") != splits["train"]
    ):
        raise TrainingError(f"{split_path}: differs from the split of this data; use a new --out folder.")
    atomic.write_json(split_path, {**splits, "seed": cfg.split_seed})
    by_id = {c.case_id: c for c in labelled}
    val_cases = [by_id[i] for i in splits["val"]]
    test_cases = [by_id[i] for i in splits["test"]]
    val_arr = stack_cases(val_cases, tc.sigma)
    test_arr = stack_cases(test_cases, tc.sigma)

    todo = [(s, f, v) for s in cfg.seeds for f in cfg.fractions for v in cfg.variants]
    # a teacher is trained (once) for every (fraction, seed) whose distillation variants are asked for
    bar = progress_bar(total=len(todo), desc="landmark grid")
    t_grid = time.perf_counter()
    for seed, fraction, variant in todo:
        check_cancel(cancel)
        name = run_name(variant, fraction, seed)
        bar.set_description(name)
        if (out / "runs" / f"{name}.json").is_file():
            bar.update(1)
            continue
        keep = set(labelled_subset(splits["train"], fraction, seed))
        lab_cases = [by_id[i] for i in splits["train"] if i in keep]
        hidden = [by_id[i] for i in splits["train"] if i not in keep]
        lab_arr = stack_cases(lab_cases, tc.sigma)
        unl_images = _images(hidden + list(unlabelled))
        teacher = None
        if _needs_teacher(variant):
            teacher = _teacher(out, fraction, seed, lab_arr, unl_images, tc, cancel, val_arr, val_cases,
                               test_arr, test_cases, schema, cfg, len(unl_images))  # fmt: skip
        log(f"run {name}: {len(lab_cases)} labelled, {len(unl_images)} unlabelled images")
        res = run_variant(variant, lab_arr, unl_images, tc, seed, teacher=teacher, cancel=cancel)
        _save_run(out, name, variant, fraction, seed, res, len(lab_cases), len(unl_images), tc,
                  val_arr, val_cases, test_arr, test_cases, schema, cfg)  # fmt: skip
        bar.update(1)
    bar.close()
    results = collect_results(out, cfg)
    results["grid_seconds_this_call"] = time.perf_counter() - t_grid
    atomic.write_json(out / "results.json", results)
    write_report(out, results, cfg, labelled_cases=by_id, splits=splits, schema=schema)
    return results


def _images(cases: Sequence[LandmarkCase]) -> Any:
    import torch

    if not cases:
        return torch.zeros((0, 1, 1, 1))
    return torch.from_numpy(np.stack([c.image for c in cases])[:, None].astype(np.float32))


def _teacher(out: Path, fraction: float, seed: int, lab_arr: Arrays, unl_images: Any,
             tc: LandmarkTrainConfig, cancel: Any, val_arr: Arrays, val_cases: list, test_arr: Arrays,
             test_cases: list, schema: LandmarkSchema, cfg: GridConfig, n_unl: int) -> Any:  # fmt: skip
    """The supervised teacher of ``(fraction, seed)``: loaded from its run, or trained and stored as a run."""
    import torch

    name = run_name("teacher_supervised", fraction, seed)
    weights = out / "runs" / f"{name}.pt"
    if (out / "runs" / f"{name}.json").is_file() and weights.is_file():
        net = build_network(tc.teacher, schema.n_points)
        net.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
        return net.eval()
    res = run_variant("teacher_supervised", lab_arr, unl_images, tc, seed, cancel=cancel)
    _save_run(out, name, "teacher_supervised", fraction, seed, res, len(lab_arr.images), n_unl, tc,
              val_arr, val_cases, test_arr, test_cases, schema, cfg)  # fmt: skip
    return res.network


def _save_run(out: Path, name: str, variant: str, fraction: float, seed: int, res: VariantResult,
              n_lab: int, n_unl: int, tc: LandmarkTrainConfig, val_arr: Arrays, val_cases: list,
              test_arr: Arrays, test_cases: list, schema: LandmarkSchema, cfg: GridConfig) -> None:  # fmt: skip
    import torch

    val_pred = predict_points(res.network, val_arr.images, tc)
    test_pred = predict_points(res.network, test_arr.images, tc)
    test_orig = [np.round(to_original(p, c.scale), 2).tolist() for p, c in zip(test_pred, test_cases)]
    with atomic.atomic_path(out / "runs" / f"{name}.pt") as tmp:
        torch.save(res.network.state_dict(), str(tmp))
    record = {
        "name": name, "variant": variant, "fraction": fraction, "seed": seed,
        "network": res.size_name, "parameters": count_parameters(res.network),
        "n_labelled": n_lab, "n_unlabelled": n_unl if variant != "teacher_supervised" and
        variant != "student_supervised" else 0, "train_seconds": round(res.seconds, 2),
        "val": evaluate_predictions(val_pred, val_cases, schema, cfg.radii),
        "test": evaluate_predictions(test_pred, test_cases, schema, cfg.radii),
        "test_predictions_px": test_orig,
    }  # fmt: skip
    atomic.write_json(out / "runs" / f"{name}.json", record)  # written last: marks the run finished


def collect_results(out: PathLike, cfg: GridConfig) -> dict[str, Any]:
    """All finished runs of the grid and their aggregate ``summary[variant][fraction][metric] = {mean, std, n}``."""
    out = Path(out)
    runs = []
    for v in cfg.variants:
        for f in cfg.fractions:
            for s in cfg.seeds:
                p = out / "runs" / f"{run_name(v, f, s)}.json"
                if p.is_file():
                    runs.append(json.loads(p.read_text(encoding="utf-8")))
    summary: dict[str, Any] = {}
    for r in runs:
        summary.setdefault(r["variant"], {}).setdefault(str(r["fraction"]), []).append(r)
    agg: dict[str, Any] = {}
    for v, by_f in summary.items():
        for f, rs in by_f.items():
            keys = [k for k, val in rs[0]["test"].items() if isinstance(val, (int, float))]
            cell = {}
            for k in keys:
                vals = np.array([r["test"][k] for r in rs], float)
                vals = vals[np.isfinite(vals)]
                cell[k] = {"mean": float(vals.mean()) if vals.size else None,
                           "std": float(vals.std(ddof=1)) if vals.size > 1 else 0.0, "n": int(vals.size)}  # fmt: skip
            cell["train_seconds"] = float(np.sum([r["train_seconds"] for r in rs]))
            cell["parameters"] = rs[0]["parameters"]
            agg.setdefault(v, {})[f] = cell
    total = float(sum(r["train_seconds"] for r in runs))
    slim = [{k: v for k, v in r.items() if k != "test_predictions_px"} for r in runs]
    return {"config": cfg.to_dict(), "runs": slim, "summary": agg, "train_seconds_total": total}


# --- report ---------------------------------------------------------------------------------------------
def _fmt(cell: Optional[dict[str, Any]], key: str, digits: int = 2, pct: bool = False) -> str:
    if not cell or key not in cell or cell[key]["mean"] is None:
        return "-"
    m, s = cell[key]["mean"], cell[key]["std"]
    if pct:
        return f"{100 * m:.0f} ± {100 * s:.0f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def winners(results: dict[str, Any], metric: str = "mre_mm") -> dict[str, dict[str, Any]]:
    """For each fraction: the best *student* variant (lowest mean ``metric``) and its margin to the
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
        base = summary.get("student_supervised", {}).get(f, {}).get(metric, {}).get("mean")
        out[f] = {"variant": cands[0][0], "mean": cands[0][1], "std": cands[0][2],
                  "runner_up": cands[1][0] if len(cands) > 1 else None,
                  "margin_to_runner_up": (cands[1][1] - cands[0][1]) if len(cands) > 1 else None,
                  "baseline": base, "gain_over_baseline": (base - cands[0][1]) if base is not None else None}  # fmt: skip
    return out


def best_student(results: dict[str, Any], metric: str = "mre_mm") -> Optional[dict[str, Any]]:
    """The student configuration to put into the zoo: the (variant, label fraction), teacher excluded, with
    the lowest mean *validation* ``metric`` over seeds (chosen on validation images so that the test
    figures stay unbiased; a mean over seeds so that one lucky seed does not decide).

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
    (variant, fraction), runs = min(groups.items(), key=lambda kv: np.mean([r["val"][metric] for r in kv[1]]))
    val = [r["val"][metric] for r in runs]
    test = [r["test"][metric] for r in runs]
    return {"variant": variant, "fraction": fraction, "val_mean": float(np.mean(val)), "val_std": float(np.std(val)),
            "test_mean": float(np.mean(test)), "test_std": float(np.std(test)), "n_seeds": len(runs),
            "name": min(runs, key=lambda r: r["seed"])["name"], "seed": min(r["seed"] for r in runs)}  # fmt: skip


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


def plot_overlays(
    out: PathLike,
    run: dict[str, Any],
    cases: Sequence[LandmarkCase],
    image_paths: Sequence[Path],
    path: PathLike,
    n: int = 3,
) -> Path:
    """Test images with true (green) and predicted (red) landmarks of one run, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(cases))
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.7), dpi=80, squeeze=False)
    for k in range(n):
        ax = axes[0, k]
        img = _read_png(image_paths[k])
        ax.imshow(img, cmap="gray")
        true = to_original(cases[k].points, cases[k].scale)
        pred = np.asarray(run["test_predictions_px"][k])
        ok = cases[k].mask
        ax.scatter(true[ok, 0], true[ok, 1], s=6, c="lime", label="true")
        ax.scatter(pred[:, 0], pred[:, 1], s=6, c="red", label="predicted")
        ax.set_title(cases[k].case_id, fontsize=7)
        ax.axis("off")
    fig.suptitle(f"{VARIANT_TITLES[run['variant']]}, {run['fraction'] * 100:g} % labels, seed {run['seed']}",
                 fontsize=8)  # fmt: skip
    fig.tight_layout()
    return atomic.save_figure(fig, path)


def _report_settings(results: dict[str, Any], cfg: GridConfig, fractions: list[str],
                     splits: Optional[dict[str, list[str]]]) -> list[str]:  # fmt: skip
    """The report's opening: runs, seeds, fractions, settings, networks and split."""
    summary = results["summary"]
    tc = cfg.train_config
    lines = [
        f"{len(results['runs'])} finished runs; {len(cfg.seeds)} seed(s) {cfg.seeds}; label fractions "
        f"{', '.join(f'{100 * float(f):g} %' for f in cfg.fractions)}. Test-set metrics, mean ± std over seeds.",
        "",
        f"Settings: images {tc.size} x {tc.size} px; Gaussian sigma {tc.sigma} px; {tc.steps} optimisation steps "
        f"per student (teacher {tc.teacher_steps or tc.steps}), batch {tc.batch_size} labelled"
        f" (+ {tc.batch_size} unlabelled for the semi-supervised variants); AdamW lr {tc.lr} with cosine decay; "
        f"distillation weight {tc.kd_weight}, temperature {tc.kd_temperature}; EMA decay {tc.ema_decay}; "
        f"{tc.mc_samples} MC-dropout samples; decoding: {tc.decode} (radius {tc.decode_radius} px).",
        "",
    ]
    params = {
        v: summary[v][fractions[0]]["parameters"] for v in summary if fractions and fractions[0] in summary[v]
    }
    if "teacher_supervised" in params and "student_supervised" in params:
        lines += [f"Networks (MONAI UNet): teacher `{tc.teacher}` {params['teacher_supervised']:,} parameters, "
                  f"student `{tc.student}` {params['student_supervised']:,} parameters "
                  f"(ratio {params['student_supervised'] / params['teacher_supervised']:.2f}).", ""]  # fmt: skip
    if splits:
        lines += [f"Split (seed {cfg.split_seed}, by image): {len(splits['train'])} train, {len(splits['val'])} "
                  f"validation, {len(splits['test'])} test images; ids in `splits.json`.", ""]  # fmt: skip
    return lines


def _report_winners(results: dict[str, Any]) -> list[str]:
    """The best student at each label fraction, against the supervised student and the runner-up."""
    win = winners(results)
    if not win:
        return []
    lines = ["## Best student at each label fraction", "", "| labels | best student | MRE (mm) | vs supervised "
             "student | lead over runner-up |", "|---|---|---|---|---|"]  # fmt: skip
    for f, w in win.items():
        gain = "-"
        if w["variant"] == "student_supervised":
            gain = "(is the baseline)"
        elif w["gain_over_baseline"] is not None:
            gain = f"{w['gain_over_baseline']:.2f} mm lower"
        runner = (f"{w['margin_to_runner_up']:.2f} mm ({VARIANT_TITLES[w['runner_up']]})"
                  if w["runner_up"] else "-")  # fmt: skip
        lines.append(f"| {100 * float(f):g} % | {VARIANT_TITLES[w['variant']]} | {w['mean']:.2f} ± {w['std']:.2f} "
                     f"| {gain} | {runner} |")  # fmt: skip
    return lines + [""]


def _report_tables(summary: dict[str, Any], cfg: GridConfig, fractions: list[str]) -> list[str]:
    """SDR, pixel MRE, plausibility and time per variant and fraction; MRE per landmark group."""
    radii = [f"sdr_{r:g}" for r in cfg.radii]
    lines = ["## Success detection rate (%) and plausibility", "",
             "| variant | labels | " + " | ".join(f"SDR {r:g} mm" for r in cfg.radii) + " | MRE (px) | "
             "lung contour self-intersects (% of images) | train time (s, all seeds) |",
             "|---|---|" + "---|" * (len(radii) + 3)]  # fmt: skip
    cells = [(v, f, summary.get(v, {}).get(f)) for v in VARIANTS for f in fractions]
    for v, f, cell in cells:
        if cell:
            lines.append(f"| {VARIANT_TITLES[v]} | {100 * float(f):g} % | " + " | ".join(_fmt(cell, r, pct=True) for r in radii)
                         + f" | {_fmt(cell, 'mre_px')} | {_fmt(cell, 'self_intersection', pct=True)} | "
                         f"{cell['train_seconds']:.0f} |")  # fmt: skip
    groups = [g for g in GROUPS if any(f"mre_mm_{g}" in c for vv in summary.values() for c in vv.values())]
    lines += ["", "## Mean radial error per landmark group (mm)", "",
              "| variant | labels | " + " | ".join(GROUP_NAMES[g] for g in groups) + " |",
              "|---|---|" + "---|" * len(groups)]  # fmt: skip
    for v, f, cell in cells:
        if cell:
            lines.append(f"| {VARIANT_TITLES[v]} | {100 * float(f):g} % | "
                         + " | ".join(_fmt(cell, f"mre_mm_{g}") for g in groups) + " |")  # fmt: skip
    return lines


def _report_zoo_student(results: dict[str, Any]) -> list[str]:
    """The student chosen for the zoo (lowest mean validation MRE) and the command that puts it there."""
    best = best_student(results)
    if not best:
        return []
    return ["", "## Student for the zoo", "",
            f"Lowest mean validation MRE among the students ({best['n_seeds']} seeds): "
            f"{VARIANT_TITLES[best['variant']]} with {100 * best['fraction']:g} % labels: validation "
            f"{best['val_mean']:.2f} ± {best['val_std']:.2f} mm, test {best['test_mean']:.2f} ± {best['test_std']:.2f} mm. "
            f"Put its seed-{best['seed']} run into a zoo with",
            "", "```",
            f"modelselector landmarks train --data DATA --zoo ZOO --config grid.yaml --variant {best['variant']} "
            f"--fraction {best['fraction']:g} --seed {best['seed']} --weights OUT/runs/{best['name']}.pt",
            "```"]  # fmt: skip


def write_report(
    out: PathLike,
    results: dict[str, Any],
    cfg: GridConfig,
    labelled_cases: Optional[dict[str, LandmarkCase]] = None,
    splits: Optional[dict[str, list[str]]] = None,
    schema: Optional[LandmarkSchema] = None,
    image_paths: Optional[dict[str, Path]] = None,
) -> Path:
    """``report.md`` with the tables, the plot and overlays (when the cases are given)."""
    out = Path(out)
    summary = results["summary"]
    fractions = sorted({f for v in summary.values() for f in v}, key=float)
    plot = plot_error_vs_fraction(results, out / "mre_vs_fraction.png")
    lines = ["# Chest X-ray landmarks: teacher–student variants compared", ""]
    lines += _report_settings(results, cfg, fractions, splits)
    lines += ["## Mean radial error (mm)", "", "| variant | " + " | ".join(f"{100 * float(f):g} %" for f in fractions)
              + " |", "|---|" + "---|" * len(fractions)]  # fmt: skip
    for v in VARIANTS:
        if v in summary:
            lines.append(f"| {VARIANT_TITLES[v]} | " + " | ".join(_fmt(summary[v].get(f), "mre_mm") for f in fractions)
                         + " |")  # fmt: skip
    lines += ["", f"![MRE vs label fraction]({plot.name})", ""]
    lines += _report_winners(results)
    lines += _report_tables(summary, cfg, fractions)
    overlay_files = []
    if labelled_cases is not None and splits is not None:
        overlay_files = _write_overlays(out, cfg, labelled_cases, splits, image_paths)
    if overlay_files:
        lines += ["", "## Overlays (test images; green: true, red: predicted)", ""]
        lines += [f"![{p.stem}](overlays/{p.name})" for p in overlay_files]
    lines += _report_zoo_student(results)
    lines += ["", "## Method", "", *METHOD_TEXT.format(n=schema.n_points if schema else "all").splitlines()]
    lines += [
        "",
        f"Total training time of the finished runs: {results['train_seconds_total'] / 60:.1f} min.",
        "",
    ]
    path = out / "report.md"
    atomic.write_text(path, "\n".join(lines))
    return path


def _write_overlays(out: Path, cfg: GridConfig, cases: dict[str, LandmarkCase], splits: dict[str, list[str]],
                    image_paths: Optional[dict[str, Path]]) -> list[Path]:  # fmt: skip
    """Overlays of the first seed at the smallest fraction for every variant."""
    test_ids = splits["test"][: cfg.n_overlays]
    paths = image_paths or {}
    if not paths:
        data = _data_root(out)
        if data is not None:
            labelled, _ = find_landmark_folders(data)
            paths = {p.stem: p for p in labelled}
    if not all(i in paths for i in test_ids):
        return []
    files = []
    fracs = [min(cfg.fractions)]
    for v in cfg.variants:
        for f in fracs:
            p = out / "runs" / f"{run_name(v, f, cfg.seeds[0])}.json"
            if not p.is_file():
                continue
            run = json.loads(p.read_text(encoding="utf-8"))
            name = out / "overlays" / f"{run_name(v, f, cfg.seeds[0])}.png"
            files.append(plot_overlays(out, run, [cases[i] for i in test_ids], [paths[i] for i in test_ids],
                                       name, cfg.n_overlays))  # fmt: skip
    return files


def _data_root(out: Path) -> Optional[Path]:
    p = out / "data.txt"
    return Path(p.read_text(encoding="utf-8").strip()) if p.is_file() else None


def compare(
    data: PathLike,
    out: PathLike,
    cfg: Optional[GridConfig] = None,
    cancel: Optional[Any] = None,
    log: Any = print,
) -> dict[str, Any]:
    """``modelselector landmarks compare``: run (or continue) the grid on ``data`` and write the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "data.txt", str(Path(data).resolve()) + "\n")
    return run_grid(data, out, cfg or GridConfig(), cancel=cancel, log=log)


# --- a landmark model into the zoo ----------------------------------------------------------------------
def train_into_zoo(
    data: PathLike,
    zoo: PathLike,
    cfg: GridConfig,
    name: str = "dx-chest-landmarks",
    version: str = "1.0.0",
    variant: str = "uncertainty_kd",
    fraction: float = 1.0,
    seed: int = 0,
    weights: Optional[PathLike] = None,
    cancel: Optional[Any] = None,
) -> dict[str, Any]:
    """Train ``variant`` on the grid's split of ``data`` (or load ``weights``, a grid run's ``.pt``), score it
    on the validation and test images, and add it to ``zoo`` as a bundle with task type ``landmarks``.

    Returns:
        the zoo's catalog entry of the new model version.
    """
    if variant not in VARIANTS:
        raise TrainingError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
    tc = cfg.train_config
    with torch_threads(tc.threads):
        return _train_into_zoo(data, zoo, cfg, tc, name, version, variant, fraction, seed, weights, cancel)


def _train_into_zoo(data: PathLike, zoo: PathLike, cfg: GridConfig, tc: LandmarkTrainConfig, name: str,
                    version: str, variant: str, fraction: float, seed: int, weights: Optional[PathLike],
                    cancel: Optional[Any]) -> dict[str, Any]:  # fmt: skip
    import tempfile

    import torch

    schema = LandmarkSchema.default(cfg.steps_per_group)
    labelled, unlabelled = load_dataset(data, tc.size, schema, cancel=cancel)
    if cfg.max_unlabelled is not None:
        unlabelled = unlabelled[: cfg.max_unlabelled]
    splits = split_cases([c.case_id for c in labelled], cfg.split_seed, cfg.val_fraction, cfg.test_fraction)
    by_id = {c.case_id: c for c in labelled}
    keep = set(labelled_subset(splits["train"], fraction, seed))
    lab_arr = stack_cases([by_id[i] for i in splits["train"] if i in keep], tc.sigma)
    unl = _images([by_id[i] for i in splits["train"] if i not in keep] + list(unlabelled))
    size_name = tc.teacher if variant == "teacher_supervised" else tc.student
    t0 = time.perf_counter()
    if weights is not None:
        net = build_network(size_name, schema.n_points)
        try:
            net.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
        except (RuntimeError, OSError) as e:
            raise TrainingError(
                f"{weights}: not weights of a {size_name} network for {schema.n_points} landmarks ({e})."
            ) from e
        net.eval()
    else:
        teacher = None
        if _needs_teacher(variant):
            teacher = run_variant("teacher_supervised", lab_arr, unl, tc, seed, cancel=cancel).network
        net = run_variant(variant, lab_arr, unl, tc, seed, teacher=teacher, cancel=cancel).network
    seconds = time.perf_counter() - t0
    folders = [
        ", ".join(sorted({f"{q.parent.name}/" for q in paths})) or "-"
        for paths in find_landmark_folders(data)
    ]
    metrics = {}
    for part in ("val", "test"):
        cases = [by_id[i] for i in splits[part]]
        logits = predict_logits(net, stack_cases(cases, tc.sigma).images, device=tc.device)
        pred = decode_logits(logits, tc.decode, tc.decode_radius)
        if part == "val":  # the reference of the selector's model-alone check (selector.verify_fit)
            metrics["val_heatmap_entropy"] = round(float(heatmap_entropy(logits).mean()), 4)
        m = evaluate_predictions(pred, cases, schema, cfg.radii)
        metrics.update({f"{part}_{k}": round(float(v), 4) for k, v in m.items()
                        if k in ("mre_mm", "mre_px", "sdr_2", "sdr_4", "sdr_10", "self_intersection")})  # fmt: skip
    card = ModelCard(
        name=name, version=version, task_type="landmarks", modality="DX", body_region="CHEST",
        labels=landmark_labels(schema), input_channels=1, spatial_dims=2, target_spacing=None,
        intensity={"mode": "percentile", "a_min": 0.5, "a_max": 99.5}, roi_size=[tc.size, tc.size],
        training_data=f"chest X-ray landmark images of {folders[0]}: {len(splits['train'])} training images "
        f"({len(keep)} labelled, variant {variant}), {len(unlabelled)} extra unlabelled images of {folders[1]}; "
        f"{len(splits['val'])} validation and {len(splits['test'])} test images (split by image, seed "
        f"{cfg.split_seed}); lung contours, heart, clavicles ({schema.n_points} points)",
        n_training_cases=len(keep), validation_metrics=metrics, seed=seed,
        code_version=f"ModelSelectorLib {__version__}", license=TRAINING_DATA_LICENCE,
        training_time_s=None if weights is not None else round(seconds, 1),
    )  # fmt: skip
    description = (
        f"2D landmark detection on frontal chest radiographs ({VARIANT_TITLES[variant]}): MONAI UNet "
        f"heatmap regression, one spatial-softmax channel per landmark, input resized to {tc.size} x {tc.size} "
        "pixels (layout x, y), intensities to percentiles 0.5-99.5; points decoded by local centroid and mapped "
        "back to the input's geometry. `modelselector apply` writes a Slicer .mrk.json point list."
    )
    with tempfile.TemporaryDirectory() as tmp:
        bundle = save_bundle(Path(tmp) / name, card, network_def(size_name, schema.n_points), net.state_dict(),
                             description=description)  # fmt: skip
        return Zoo.create(zoo).add(bundle)
