"""The teacher–student comparison grid: variants x label fractions x seeds, resumable, and the zoo model.

Every run trains a coarse-to-fine landmark model (:mod:`ModelSelectorLib.models.landmark_stages`): the variant
decides how the *coarse* stage learns (supervised, from a teacher, mean teacher, ...); the shape model and the
refinement stage are learnt from the labelled images only, once per label fraction and seed, and shared by every
variant of that fraction and seed, so that variants differ in one thing.

Layout of the output folder ``OUT``::

    OUT/config.json             the grid and training settings (a restart must use the same ones)
    OUT/splits.json             train / val / test case ids (fixed seed), written before any training
    OUT/runs/<run>.json         one finished run: metrics on val and test (coarse stage alone and the whole
                                model), per-image test errors, time, parameters, test predictions
    OUT/runs/<run>.pt           its coarse network (state_dict); teachers are reused by the distillation variants
    OUT/runs/refiner_f<percent>_s<seed>.pt/.json   the shared refinement stage of a fraction and seed
    OUT/results.json, OUT/report.md, OUT/*.png, OUT/overlays/   see :mod:`.landmark_report`

A run is named ``<variant>_f<percent>_s<seed>``; a run whose JSON exists is not repeated, so a cancelled or
crashed grid continues where it stopped, and any subset of fractions and seeds can be run into one folder.
With ``reuse_from`` (another grid folder with the same settings), teachers and refiners already trained there
are used instead of training them again (ablations of the unlabelled pool share them with the main grid).
An earlier grid's ``results.json`` (without networks) continues in a fresh folder with :func:`import_runs`.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .. import __version__, atomic
from ..datasets.landmarks import LandmarkCase, find_landmark_folders, labelled_subset
from ..errors import BundleError, DatasetError, TrainingError
from ..models.heatmaps import heatmap_entropy
from ..models.landmark_stages import REFINE_SCALE, mean_offsets, offset_model, stage
from ..models.landmarks import GROUP_NAMES, landmark_labels, to_original
from ..models.preprocessing import check_device
from ..progress import check_cancel, progress_bar
from ..zoo.bundle import save_bundle
from ..zoo.card import ModelCard
from ..zoo.catalog import Zoo
from .config import CURVE_FILE
from .fitting import reset_peak_memory, training_device
from .landmark_grid import (
    CARD_METRICS,
    TRAINING_DATA_LICENCE,
    GridConfig,
    GridData,
    evaluate_model,
    load_grid_data,
    needs_teacher,
    run_name,
)
from .landmark_refine import (
    fine_arrays,
    fit_contour_stage,
    fit_shape,
    pipeline_def,
    pipeline_network,
    train_refiner,
)
from .landmarks import (
    VARIANT_TITLES,
    VARIANTS,
    Arrays,
    LandmarkTrainConfig,
    build_network,
    count_parameters,
    run_variant,
    stack_cases,
    torch_threads,
)

PathLike = Union[str, Path]


#: the settings a run's result depends on: runs made with other values cannot join a grid
RUN_SETTINGS = (
    "train",
    "split_seed",
    "steps_per_group",
    "unlabelled_pool",
    "max_unlabelled",
    "extra_outlines",
)
#: the settings a grid must share with its ``reuse_from`` grid (an ablation changes only the unlabelled pool;
#: outlines without images change the shape stages, not the networks it reuses)
SHARED_SETTINGS = ("train", "split_seed", "steps_per_group")


def _differing_settings(
    earlier: dict[str, Any], cfg: GridConfig, keys: Sequence[str] = RUN_SETTINGS
) -> list[str]:
    """The settings ``keys`` in which a grid's recorded configuration ``earlier`` differs from ``cfg`` (training
    settings it does not record have their defaults)."""
    now, then = cfg.to_dict(), dict(earlier)
    defaults = LandmarkTrainConfig().to_dict()
    for settings in (now, then):
        if isinstance(settings.get("train"), dict):
            settings["train"] = {**defaults, **settings["train"]}
    return [k for k in keys if then.get(k) != now[k]]


def _check_config(out: Path, cfg: GridConfig) -> None:
    path = out / "config.json"
    if path.is_file():
        if _differing_settings(json.loads(path.read_text(encoding="utf-8")), cfg):
            raise TrainingError(
                f"{out}: holds runs made with other settings (config.json differs); use a new --out folder "
                "or the same --config and --device."
            )
    if cfg.reuse_from:
        ref = Path(cfg.reuse_from) / "config.json"
        if not ref.is_file():
            raise TrainingError(
                f"reuse_from {cfg.reuse_from}: no config.json there; point it at the output folder of a landmark "
                "grid (`modelselector landmarks compare --out`)."
            )
        differ = _differing_settings(json.loads(ref.read_text(encoding="utf-8")), cfg, SHARED_SETTINGS)
        if differ:
            raise TrainingError(
                f"reuse_from {cfg.reuse_from}: its networks were trained with other settings ({', '.join(differ)}); "
                f"a grid that reuses them must have the same {', '.join(SHARED_SETTINGS)}."
            )
    atomic.write_json(path, cfg.to_dict())


def import_runs(out: PathLike, results: PathLike, cfg: GridConfig) -> list[str]:
    """Record in ``OUT/runs/`` the finished runs of an earlier grid's ``results.json`` (e.g. the committed
    ``docs/landmarks/results.json``), so the grid continues where that one stopped on another machine.

    ``results.json`` keeps every run's metrics but not its network, so only whole blocks are taken: a label
    fraction and seed of which every variant of ``cfg`` is recorded (with its refiner's record). A block with a
    missing run is trained again in full, so its distilled students and their teacher stay one set. Runs
    already in ``OUT/runs/`` are kept.

    Returns:
        the names of the runs recorded.

    Raises:
        TrainingError: the file is not a grid's results, or its runs were made with other settings.
    """
    out, results = Path(out), Path(results)
    try:
        data = json.loads(results.read_text(encoding="utf-8"))
        runs, earlier = list(data["runs"]), dict(data["config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TrainingError(f"{results}: not the results.json of a landmark grid ({e}).") from e
    differ = _differing_settings(earlier, cfg)
    if differ:
        raise TrainingError(
            f"{results}: its runs were made with other settings ({', '.join(differ)}); continue with the --config "
            "that made them, or leave --runs-from out."
        )
    by_name = {r["name"]: r for r in runs if "name" in r}
    refiners = {r["name"]: r for r in data.get("refiners", []) if "name" in r}
    (out / "runs").mkdir(parents=True, exist_ok=True)
    recorded = []
    for f in cfg.fractions:
        for s in cfg.seeds:
            block = [run_name(v, f, s) for v in cfg.variants]
            if not all(n in by_name for n in block):
                continue
            records = [by_name[n] for n in block]
            if run_name("refiner", f, s) in refiners:
                records.append(refiners[run_name("refiner", f, s)])
            for rec in records:
                target = out / "runs" / f"{rec['name']}.json"
                if not target.is_file():
                    atomic.write_json(target, rec)
                    recorded.append(str(rec["name"]))
    return recorded


def _images(cases: Sequence[LandmarkCase]) -> Any:
    import torch

    if not cases:
        return torch.zeros((0, 1, 1, 1))
    return torch.from_numpy(np.stack([c.image for c in cases])[:, None].astype(np.float32))


# --- the grid -------------------------------------------------------------------------------------------------
def run_grid(
    data: PathLike,
    out: PathLike,
    cfg: GridConfig,
    cancel: Optional[Any] = None,
    log: Any = print,
    report_only: bool = False,
    runs_from: Optional[PathLike] = None,
) -> dict[str, Any]:
    """Run every missing run of the grid (none with ``report_only``), then write ``results.json`` and the report
    of the grid's finished runs. ``runs_from``: an earlier grid's ``results.json`` whose whole blocks are taken as
    finished first (:func:`import_runs`).

    Returns:
        the results dict (``{"runs": [...], "summary": {...}, "paired": {...}, ...}``).

    Raises:
        Cancelled: ``cancel`` was set (finished runs stay on disk).
        TrainingError / DatasetError: bad settings or data.
    """
    from .landmark_report import collect_results, write_report

    if not report_only:
        check_device(cfg.train_config.device)
    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    _check_config(out, cfg)
    if runs_from is not None:
        log(f"{len(import_runs(out, runs_from, cfg))} finished runs recorded from {runs_from}")
    tc = cfg.train_config
    with torch_threads(tc.threads):
        gd = load_grid_data(data, cfg, out, cancel)
        split_path = out / "splits.json"
        if (
            split_path.is_file()
            and json.loads(split_path.read_text(encoding="utf-8")).get("train") != gd.splits["train"]
        ):
            raise TrainingError(f"{split_path}: differs from the split of this data; use a new --out folder.")
        atomic.write_json(split_path, {**gd.splits, "seed": cfg.split_seed})
        t_grid = time.perf_counter()
        if not report_only:
            _run_all(out, cfg, tc, gd, cancel, log)
    results = collect_results(out, cfg)
    results["grid_seconds_this_call"] = time.perf_counter() - t_grid
    atomic.write_json(out / "results.json", results)
    write_report(out, results, cfg, labelled_cases=gd.by_id, splits=gd.splits, schema=gd.schema)
    return results


def _run_all(
    out: Path, cfg: GridConfig, tc: LandmarkTrainConfig, gd: GridData, cancel: Any, log: Any
) -> None:
    # fractions outermost: the grid's first hours answer the low-label questions for every seed
    todo = [(f, s, v) for f in cfg.fractions for s in cfg.seeds for v in cfg.variants]
    bar = progress_bar(total=len(todo), desc="landmark grid")
    for fraction, seed, variant in todo:
        check_cancel(cancel)
        name = run_name(variant, fraction, seed)
        bar.set_description(name)
        if not (out / "runs" / f"{name}.json").is_file() and not _copy_shared_run(out, cfg, variant, name):
            keep = set(labelled_subset(gd.splits["train"], fraction, seed))
            lab_ids = [i for i in gd.splits["train"] if i in keep]
            hidden = [gd.by_id[i] for i in gd.splits["train"] if i not in keep]
            lab_arr = stack_cases([gd.by_id[i] for i in lab_ids], tc.sigma)
            unl_images = _images(hidden + list(gd.unlabelled))
            later = _later_stages(out, cfg, tc, gd, lab_ids, fraction, seed, cancel)
            teacher = None
            if needs_teacher(variant):
                teacher = _teacher(out, cfg, tc, gd, lab_arr, unl_images, later, fraction, seed, cancel)
            log(f"run {name}: {len(lab_ids)} labelled, {len(unl_images)} unlabelled images")
            res = run_variant(variant, lab_arr, unl_images, tc, seed, teacher=teacher, cancel=cancel)
            _save_run(
                out, name, variant, fraction, seed, res, len(lab_ids), len(unl_images), later, tc, gd, cfg
            )
        bar.update(1)
    bar.close()


def _copy_shared_run(out: Path, cfg: GridConfig, variant: str, name: str) -> bool:
    """Copy a finished run of a variant that sees no unlabelled image from ``reuse_from`` (an ablation of the
    unlabelled pool shares them with its reference grid); False when there is none to copy."""
    import shutil

    if not cfg.reuse_from or variant not in ("student_supervised", "teacher_supervised"):
        return False
    src = Path(cfg.reuse_from) / "runs"
    if not ((src / f"{name}.json").is_file() and (src / f"{name}.pt").is_file()):
        return False
    for suffix in (".pt", ".json"):  # the JSON last: it marks the run finished
        with atomic.atomic_path(out / "runs" / f"{name}{suffix}") as tmp:
            shutil.copyfile(src / f"{name}{suffix}", tmp)
    return True


def _reuse_dirs(out: Path, cfg: GridConfig) -> list[Path]:
    dirs = [out / "runs"]
    if cfg.reuse_from:
        dirs.append(Path(cfg.reuse_from) / "runs")
    return dirs


def _later_stages(out: Path, cfg: GridConfig, tc: LandmarkTrainConfig, gd: GridData, lab_ids: list[str],
                  fraction: float, seed: int, cancel: Any) -> dict[str, Any]:  # fmt: skip
    """The shape models and refiner of ``(fraction, seed)``: ``{"shape", "contour", "refine", "refine_seconds"}``;
    the refiner is loaded from a finished run of this grid (or ``reuse_from``), else trained and stored."""
    import torch

    shapes = _shape_stages(gd, tc, lab_ids)
    if tc.refine_steps <= 0 or gd.fine is None:
        return {**shapes, "refine": None, "refine_seconds": 0.0}
    name = run_name("refiner", fraction, seed)
    for d in _reuse_dirs(out, cfg):
        if (d / f"{name}.json").is_file() and (d / f"{name}.pt").is_file():
            net = _load_weights(build_network(tc.refine_network, 1, in_channels=1 + gd.conditioning.shape[1]),
                                d / f"{name}.pt", "refinement network", tc.device)  # fmt: skip
            seconds = float(json.loads((d / f"{name}.json").read_text(encoding="utf-8"))["train_seconds"])
            return {**shapes, "refine": net, "refine_seconds": seconds}
    t0 = time.perf_counter()
    net = train_refiner(
        fine_arrays([gd.fine[i] for i in lab_ids]), gd.conditioning, tc, seed, cancel, desc=name
    )
    seconds = time.perf_counter() - t0
    with atomic.atomic_path(out / "runs" / f"{name}.pt") as tmp:
        torch.save(net.state_dict(), str(tmp))
    atomic.write_json(out / "runs" / f"{name}.json", {"name": name, "fraction": fraction, "seed": seed,
                      "parameters": count_parameters(net), "train_seconds": round(seconds, 2)})  # fmt: skip
    return {**shapes, "refine": net, "refine_seconds": seconds}


def _shape_stages(gd: GridData, tc: LandmarkTrainConfig, lab_ids: Sequence[str]) -> dict[str, Any]:
    """``{"shape", "contour"}``: the shape models of the labelled training images and the grid's outlines
    without images (None where not asked for)."""
    cases = [gd.by_id[i] for i in lab_ids]
    return {"shape": fit_shape(cases, tc.shape_modes, gd.extra_shapes),
            "contour": fit_contour_stage(cases, tc.contour_modes, gd.extra_shapes)}  # fmt: skip


def _whole(
    net: Any, later: dict[str, Any], gd: GridData, tc: LandmarkTrainConfig, lab_ids: Sequence[str]
) -> Any:
    """The assembled model of the coarse network ``net`` and its ``later`` stages; with ``tc.point_offsets``, also
    the offset stage, fitted on the labelled training images ``lab_ids``."""
    whole = pipeline_network(net, later["shape"], later["refine"], later["contour"])
    # offsets are measured in the frames of the contour stage's contours
    if not tc.point_offsets or stage(whole, "contour") is None:
        return whole
    ids = list(lab_ids)
    predicted, _ = gd.predict(whole, ids, tc)
    truth = np.stack([gd.by_id[i].points for i in ids])
    offset = offset_model(mean_offsets(predicted, truth, gd.schema.contours))
    return pipeline_network(net, later["shape"], later["refine"], later["contour"], offset)


def _teacher(out: Path, cfg: GridConfig, tc: LandmarkTrainConfig, gd: GridData, lab_arr: Arrays, unl_images: Any,
             later: dict[str, Any], fraction: float, seed: int, cancel: Any) -> Any:  # fmt: skip
    """The supervised teacher of ``(fraction, seed)``: loaded from its run (here or in ``reuse_from``), or trained
    and stored as a run of this grid."""

    name = run_name("teacher_supervised", fraction, seed)
    for d in _reuse_dirs(out, cfg):
        if (d / f"{name}.json").is_file() and (d / f"{name}.pt").is_file():
            return _load_weights(build_network(tc.teacher, gd.schema.n_points), d / f"{name}.pt",
                                 f"{tc.teacher} network for {gd.schema.n_points} landmarks", tc.device)  # fmt: skip
    res = run_variant("teacher_supervised", lab_arr, unl_images, tc, seed, cancel=cancel)
    _save_run(
        out, name, "teacher_supervised", fraction, seed, res, len(lab_arr.images), 0, later, tc, gd, cfg
    )
    return res.network


def _save_run(out: Path, name: str, variant: str, fraction: float, seed: int, res: Any, n_lab: int, n_unl: int,
              later: dict[str, Any], tc: LandmarkTrainConfig, gd: GridData, cfg: GridConfig) -> None:  # fmt: skip
    import torch

    whole = _whole(res.network, later, gd, tc, labelled_subset(gd.splits["train"], fraction, seed))
    record: dict[str, Any] = {
        "name": name, "variant": variant, "fraction": fraction, "seed": seed, "network": res.size_name,
        "parameters": count_parameters(whole), "parameters_coarse": count_parameters(res.network),
        "n_labelled": n_lab, "n_unlabelled": 0 if variant in ("teacher_supervised", "student_supervised") else n_unl,
        "train_seconds": round(res.seconds, 2), "refine_seconds": round(float(later["refine_seconds"]), 2),
    }  # fmt: skip
    for part in ("val", "test"):
        m, pts, _ = evaluate_model(whole, gd, part, tc, cfg.radii, cfg.radii_px, with_dice=part == "test")
        coarse, _, _ = evaluate_model(
            res.network, gd, part, tc, cfg.radii, cfg.radii_px, with_dice=part == "test"
        )
        record[part], record[f"{part}_coarse"] = m, coarse
        if part == "test":
            record["test_predictions_px"] = [np.round(to_original(p, c.scale), 2).tolist()
                                             for p, c in zip(pts, gd.cases("test"))]  # fmt: skip
    with atomic.atomic_path(out / "runs" / f"{name}.pt") as tmp:
        torch.save(res.network.state_dict(), str(tmp))
    atomic.write_json(out / "runs" / f"{name}.json", record)  # written last: marks the run finished


def compare(
    data: PathLike,
    out: PathLike,
    cfg: Optional[GridConfig] = None,
    cancel: Optional[Any] = None,
    log: Any = print,
    report_only: bool = False,
    runs_from: Optional[PathLike] = None,
) -> dict[str, Any]:
    """``modelselector landmarks compare``: run (or continue) the grid on ``data`` and write the report (with
    ``report_only``: the report of the runs already finished, nothing trained; with ``runs_from``: an earlier
    grid's ``results.json`` whose whole blocks are taken as finished, see :func:`import_runs`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "data.txt", str(Path(data).resolve()) + "\n")
    return run_grid(data, out, cfg or GridConfig(), cancel=cancel, log=log, report_only=report_only,
                    runs_from=runs_from)  # fmt: skip


# --- a landmark model into the zoo ----------------------------------------------------------------------
def train_into_zoo(
    data: PathLike,
    zoo: PathLike,
    cfg: GridConfig,
    name: str = "dx-chest-landmarks",
    version: str = "1.0.0",
    variant: str = "student_supervised",
    fraction: float = 1.0,
    seed: int = 0,
    weights: Optional[PathLike] = None,
    refiner: Optional[PathLike] = None,
    cancel: Optional[Any] = None,
    splits: Optional[Mapping[str, Sequence[str]]] = None,
) -> dict[str, Any]:
    """Train ``variant`` on the grid's split of ``data`` (or load ``weights``, a grid run's ``.pt``, and
    ``refiner``, its ``refiner_*.pt``), add the shape and refinement stages, score the model on the validation
    and test images, and add it to ``zoo`` as a bundle with task type ``landmarks``.

    Args:
        splits: ``{"train", "val", "test"}`` image ids to use instead of the grid's split. A sweep passes its
            selection images as ``"test"``, so that no candidate sees the images its promotion is tested on.

    Returns:
        the zoo's catalog entry of the new model version.

    Raises:
        DatasetError: ``splits`` names an image that is not a labelled image of ``data``.
    """
    if variant not in VARIANTS:
        raise TrainingError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
    tc = cfg.train_config
    check_device(tc.device)
    with torch_threads(tc.threads):
        gd = load_grid_data(data, cfg, cancel=cancel)
        if splits is not None:
            gd.splits = _given_splits(gd, splits, data)
        reset_peak_memory(tc.device)
        t0 = time.perf_counter()
        net, later, keep = _zoo_network(gd, tc, variant, fraction, seed, weights, refiner, cancel)
        seconds = time.perf_counter() - t0
        # a sweep's candidate is scored on the sweep's selection images: its card must not call them test images
        held_out = "test" if splits is None else "held-out selection"
        return _zoo_bundle(data, zoo, cfg, tc, gd, net, later, name, version, variant, keep, seed,
                           None if weights is not None else seconds, held_out)  # fmt: skip


def _given_splits(gd: GridData, splits: Mapping[str, Sequence[str]], data: PathLike) -> dict[str, list[str]]:
    """``splits`` (``{"train", "val", "test"}`` image ids) checked against the labelled images of ``gd``."""
    given = {part: sorted(str(i) for i in splits.get(part, [])) for part in ("train", "val", "test")}
    unknown = sorted({i for ids in given.values() for i in ids} - set(gd.by_id))
    if unknown:
        raise DatasetError(f"{data}: the split names image(s) {', '.join(unknown[:3])} that are not among its "
                           "labelled images; make the split of this folder again.")  # fmt: skip
    empty = [part for part, ids in given.items() if not ids]
    if empty:
        raise DatasetError(
            f"{data}: the split has no {' and no '.join(empty)} image; it needs all three parts."
        )
    return given


def _load_weights(net: Any, path: PathLike, what: str, device: str = "cpu") -> Any:
    """``net`` with the weights of ``path`` (a run's ``.pt``), on ``device``, in eval mode: the device the
    grid trains and evaluates on, since the networks it trains stay there too."""
    from ..zoo.bundle import read_state_dict

    try:
        state = read_state_dict(path)
    except BundleError as e:
        # torch's own message is several lines on unpickling untrusted code: not the user's remedy
        cause = type(e.__cause__).__name__ if e.__cause__ is not None else "no state_dict in it"
        raise TrainingError(
            f"{path}: not a weights file (torch.load: {cause}); pass the .pt a landmark grid run saved for the "
            f"{what}."
        ) from e
    problem = _state_mismatch(net, state)
    if problem:
        raise TrainingError(f"{path}: not weights of the {what} ({problem}); pass a .pt of a run with the same "
                            "network settings (the --config it was trained with).")  # fmt: skip
    net.load_state_dict(state)
    return net.to(device).eval()


def _state_mismatch(net: Any, state: dict[str, Any], show: int = 3) -> Optional[str]:
    """In a few words, how ``state`` (a loaded ``.pt``) does not fit ``net``'s state dict: ``show`` keys that are
    missing, unexpected or of another shape, and how many more there are; None when it fits."""
    own = net.state_dict()
    kinds = (
        [f"{k} missing" for k in own if k not in state],
        [f"{k} unexpected" for k in state if k not in own],
        [f"{k} of shape {tuple(getattr(state[k], 'shape', ()))}, not {tuple(own[k].shape)}" for k in own
         if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)],
    )  # fmt: skip
    # one key of each kind first: what is missing and what is there instead tells which network the file holds
    bad = [k for group in itertools.zip_longest(*kinds) for k in group if k is not None]
    if not bad:
        return None
    return "keys " + ", ".join(bad[:show]) + (f" and {len(bad) - show} more" if len(bad) > show else "")


def _zoo_network(gd: GridData, tc: LandmarkTrainConfig, variant: str, fraction: float, seed: int,
                 weights: Optional[PathLike], refiner: Optional[PathLike], cancel: Any) -> tuple[Any, dict, set]:  # fmt: skip
    keep = set(labelled_subset(gd.splits["train"], fraction, seed))
    lab_ids = [i for i in gd.splits["train"] if i in keep]
    lab_arr = stack_cases([gd.by_id[i] for i in lab_ids], tc.sigma)
    unl = _images([gd.by_id[i] for i in gd.splits["train"] if i not in keep] + list(gd.unlabelled))
    size_name = tc.teacher if variant == "teacher_supervised" else tc.student
    if weights is not None:
        net = _load_weights(build_network(size_name, gd.schema.n_points), weights,
                            f"{size_name} network for {gd.schema.n_points} landmarks", tc.device)  # fmt: skip
    else:
        teacher = None
        if needs_teacher(variant):
            teacher = run_variant("teacher_supervised", lab_arr, unl, tc, seed, cancel=cancel).network
        net = run_variant(variant, lab_arr, unl, tc, seed, teacher=teacher, cancel=cancel).network
    refine = None
    if tc.refine_steps > 0 and gd.fine is not None:
        if refiner is not None:
            refine = _load_weights(build_network(tc.refine_network, 1, in_channels=1 + gd.conditioning.shape[1]),
                                   refiner, "refinement network", tc.device)  # fmt: skip
        else:
            refine = train_refiner(
                fine_arrays([gd.fine[i] for i in lab_ids]), gd.conditioning, tc, seed, cancel
            )
    return net, {**_shape_stages(gd, tc, lab_ids), "refine": refine}, keep


def _zoo_bundle(data: PathLike, zoo: PathLike, cfg: GridConfig, tc: LandmarkTrainConfig, gd: GridData, net: Any,
                later: dict[str, Any], name: str, version: str, variant: str, keep: set, seed: int,
                seconds: Optional[float], held_out: str = "test") -> dict[str, Any]:  # fmt: skip
    import tempfile

    whole = _whole(net, later, gd, tc, [i for i in gd.splits["train"] if i in keep])
    metrics: dict[str, Any] = {}
    for part in ("val", "test"):
        m, _, logits = evaluate_model(whole, gd, part, tc, cfg.radii, cfg.radii_px, with_dice=True)
        if part == "val":  # the reference of the selector's model-alone check (selector.verify_fit)
            metrics["val_heatmap_entropy"] = round(float(heatmap_entropy(logits).mean()), 4)
        metrics.update({f"{part}_{k}": round(float(v), 4) for k, v in m.items()
                        if k in CARD_METRICS and np.isfinite(v)})  # fmt: skip
        metrics[f"{part}_n_cases"] = len(gd.splits[part])  # the held-out figure's case count
    folders = [
        ", ".join(sorted({f"{q.parent.name}/" for q in paths})) or "-"
        for paths in find_landmark_folders(data)
    ]
    size_name = tc.teacher if variant == "teacher_supervised" else tc.student
    card = ModelCard(
        name=name, version=version, task_type="landmarks", modality="DX", body_region="CHEST",
        labels=landmark_labels(gd.schema), input_channels=1, spatial_dims=2, target_spacing=None,
        intensity={"mode": "percentile", "a_min": 0.5, "a_max": 99.5}, roi_size=[tc.size, tc.size],
        training_data=f"chest X-ray landmark images of {folders[0]}: {len(gd.splits['train'])} training images "
        f"({len(keep)} labelled, variant {variant})"
        + (f", {len(gd.unlabelled)} extra unlabelled images of {folders[1]}" if variant not in ("student_supervised", "teacher_supervised") else "")
        + f"; {len(gd.splits['val'])} validation and {len(gd.splits['test'])} {held_out} images (split by image, seed "
        f"{cfg.split_seed}); {', '.join(GROUP_NAMES[g] for g in gd.schema.groups)} ({gd.schema.n_points} points)"
        + (f"; the shape and contour stages also learnt {len(gd.extra_shapes)} JSRT outlines without images "
           f"({cfg.extra_outlines})" if gd.extra_shapes is not None and len(gd.extra_shapes) else ""),
        n_training_cases=len(keep), validation_metrics=metrics, seed=seed,
        code_version=f"ModelSelectorLib {__version__}", license=TRAINING_DATA_LICENCE,
        training_time_s=None if seconds is None else round(seconds, 1),
        training_device=None if seconds is None else training_device(tc.device),
    )  # fmt: skip
    fits_contours = stage(whole, "contour") is not None
    stages = (
        "coarse heatmaps"
        + (", shape model" if later["shape"] is not None else "")
        + (f", refinement on {tc.size * REFINE_SCALE} px patches" if later["refine"] is not None else "")
        + (f", contour fit ({tc.contour_modes} modes)" if fits_contours else "")
        + (", per-landmark offsets" if stage(whole, "offset") is not None else "")
    )
    description = (
        f"2D landmark detection on frontal chest radiographs ({VARIANT_TITLES[variant]}): a coarse-to-fine MONAI "
        f"model ({stages}; all stages in models/model.pt as a torch ModuleDict). The coarse UNet sees the input "
        f"resized to {tc.size} x {tc.size} pixels (layout x, y), intensities to percentiles 0.5-99.5; points are "
        "decoded by local centroid, projected onto the shape model's modes, refined on patches of the image at "
        f"{REFINE_SCALE} x that size"
        + (
            ", fitted to the contour stage's shape model (trusted across each contour more than along it), refined "
            "again, fitted again and moved onto the refined outline"
            if fits_contours
            else ""
        )
        + (
            ", moved by each landmark's mean error on the training images (along and across its contour)"
            if stage(whole, "offset") is not None
            else ""
        )
        + ", and mapped back to the input's geometry. `modelselector apply` writes the contours as Slicer closed "
        "curves (.mrk.json)."
    )
    with tempfile.TemporaryDirectory() as tmp:
        bundle = save_bundle(Path(tmp) / name, card, pipeline_def(size_name, gd.schema.n_points, whole, tc),
                             whole.state_dict(), description=description)  # fmt: skip
        # the images it learnt and chose on, which the promotion gate keeps out of a test split
        atomic.write_json(bundle / CURVE_FILE, {"training_ids": sorted(gd.splits["train"]),
                                                "validation_ids": sorted(gd.splits["val"])})  # fmt: skip
        return Zoo.create(zoo).add(bundle)
