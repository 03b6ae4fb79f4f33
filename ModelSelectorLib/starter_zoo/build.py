"""Building the starter zoo from its recipes: train, prototypes, index (see :mod:`.recipes`)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from .. import atomic
from ..datasets.landmarks import find_landmark_folders
from ..datasets.split_file import write_split
from ..errors import DatasetError, InputError, ModelSelectorError
from ..evaluation.metrics import dice_per_label
from ..io.image import read_image, write_image
from ..models.registry import runtime_class
from ..models.segmentation import apply_model
from ..progress import check_cancel, progress_bar
from ..provenance import utc_timestamp
from ..selection.calibration import build_index as build_calibrated_index
from ..selection.prototypes import generate_for_model
from ..training.landmark_study import train_into_zoo
from ..training.segmentation import TrainConfig, split_cases, train_segmentation
from ..zoo.bundle import load_bundle, read_metadata, validate_bundle, write_card
from ..zoo.card import ModelCard
from ..zoo.catalog import Zoo
from .heldout import card_metrics, cross_validate, describe_cases, score_bundle
from .recipes import (
    INDEX_DIR,
    METADATA_KEY,
    STAGES,
    AnyRecipe,
    Case,
    CaseSplit,
    LabelSpec,
    LandmarkRecipe,
    Recipe,
    landmark_recipe_hash,
    recipe_hash,
    recipes,
)
from .report import HELD_OUT_FILE

PathLike = Union[str, "os.PathLike[str]"]
#: the name ``folds`` gives the final model of a ``cv`` recipe (trained on every case) beside fold numbers
FINAL_RUN = "final"
#: folder of a development cross-validation (:func:`cross_validate_development`) in a recipe's runs
DEV_CV_DIR = "dev-cv"


# --- data preparation -----------------------------------------------------------------------------------
def remap_labels(array: np.ndarray, labels: Sequence[LabelSpec]) -> np.ndarray:
    """Source label map -> uint8 map with values ``0..K``.

    A label with ``source_values`` takes the voxels holding any of them; one without takes every non-zero
    voxel (binary masks in 0/1 or 0/255). Voxels of no listed value become background.
    """
    out = np.zeros(array.shape, np.uint8)
    for lb in labels:
        mask = np.isin(array, lb.source_values) if lb.source_values else array > 0
        out[mask] = lb.value
    return out


def _check_paths(data_root: Path, split: CaseSplit, recipe: Recipe) -> None:
    missing = [str(data_root / p) for part in (split.train, split.val, split.check) for c in part
               for p in (c.image, c.label) if not (data_root / p).is_file()]  # fmt: skip
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DatasetError(
            f"recipe {recipe.name}: {len(missing)} source file(s) missing under {data_root}: {shown}; pass the "
            "shared data folder with --data (e.g. ../shared/data)."
        )
    if not split.train:
        raise DatasetError(f"recipe {recipe.name}: no training cases found under {data_root}.")


def _convert_case(
    data_root: Path, case: Case, recipe: Recipe, out_dir: Path, part: str = "Tr"
) -> dict[str, str]:
    """Write ``images{part}/ID.nii.gz`` and ``labels{part}/ID.nii.gz``; the label takes the image's geometry."""

    image = read_image(data_root / case.image)
    if image.is_multicomponent:
        image = image.to_grayscale()
    label = read_image(data_root / case.label, check_content=False)
    if label.is_multicomponent:
        label = label.to_grayscale()
    if label.size != image.size:
        raise DatasetError(
            f"{data_root / case.label}: size {label.size} differs from its image's {image.size}."
        )
    lab = image.with_array(remap_labels(np.asarray(label.array), recipe.labels))
    if not np.any(lab.array):
        raise DatasetError(f"{data_root / case.label}: none of the recipe's labels occurs in it.")
    img_rel, lab_rel = f"images{part}/{case.id}.nii.gz", f"labels{part}/{case.id}.nii.gz"
    for sub in (f"images{part}", f"labels{part}"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    write_image(image, out_dir / img_rel)
    write_image(lab, out_dir / lab_rel)
    return {"image": img_rel, "label": lab_rel}


def _arrange(train: list[Any], val: list[Any], seed: int) -> tuple[list[Any], float]:
    """Order ``train + val`` so that :func:`ModelSelectorLib.train.split_cases` with the returned fraction
    and ``seed`` holds out exactly ``val``."""

    n = len(train) + len(val)
    fraction = len(val) / n if val else 0.0
    if not val:
        return list(train), 0.0
    _, val_idx = split_cases(n, fraction, seed)
    if len(val_idx) != len(val):
        raise ModelSelectorError(f"cannot hold out {len(val)} of {n} cases with the training split.")
    slots: list[Any] = [None] * n
    for i, item in zip(val_idx, val):
        slots[i] = item
    rest = iter(train)
    return [s if s is not None else next(rest) for s in slots], fraction


def prepare_dataset(recipe: Recipe, data_root: PathLike, out_dir: PathLike, seed: int = 0) -> dict[str, Any]:
    """Turn a recipe's source files into an MSD folder ``out_dir`` (``dataset.json``, ``imagesTr``, ``labelsTr``).

    The training list holds training and validation cases, ordered so that
    :func:`~ModelSelectorLib.train.train_segmentation` with ``val_fraction`` from the returned dict and
    ``seed`` holds out exactly the recipe's validation cases. Check cases go to ``imagesTs``/``labelsTs``.

    Returns:
        ``{"root": Path, "split": CaseSplit, "val_fraction": float, "hash": str, "check": [{image, label}]}``.

    Raises:
        DatasetError: missing source files, label and image sizes differ, or a label map lacks every label.
    """
    root, out = Path(data_root), Path(out_dir)
    split = recipe.cases(root, seed)
    _check_paths(root, split, recipe)
    digest = recipe_hash(recipe, split, root, seed)
    stamp = out / ".recipe_hash"
    if out.is_dir() and stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == digest:
        data = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
        return {"root": out, "split": split, "val_fraction": data["val_fraction"], "hash": digest,
                "check": data.get("check", [])}  # fmt: skip
    if out.exists():
        shutil.rmtree(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=str(out.parent) if out.parent.is_dir() else None))
    try:
        train = [_convert_case(root, c, recipe, tmp) for c in split.train]
        val = [_convert_case(root, c, recipe, tmp) for c in split.val]
        check = [_convert_case(root, c, recipe, tmp, "Ts") for c in split.check]
        ordered, fraction = _arrange(train, val, seed)
        meta = {
            "name": recipe.name, "description": recipe.source, "reference": recipe.provenance,
            "licence": recipe.licence, "tensorImageSize": f"{recipe.spatial_dims}D",
            "modality": {"0": recipe.modality}, "body_region": recipe.body_region,
            "labels": {"0": "background", **{str(lb.value): lb.name for lb in recipe.labels}},
            "colors": {str(lb.value): list(lb.color) for lb in recipe.labels},
            "terminology": {str(lb.value): lb.terminology for lb in recipe.labels},
            "numTraining": len(ordered), "training": ordered, "val_fraction": fraction,
            "validation_cases": [c.id for c in split.val], "check": check, "recipe_hash": digest,
        }  # fmt: skip
        atomic.write_json(tmp / "dataset.json", meta)
        (tmp / ".recipe_hash").write_text(digest + "\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"root": out, "split": split, "val_fraction": fraction, "hash": digest, "check": check}


def write_test_split(recipe: Recipe, data_root: PathLike, path: PathLike, seed: int = 0,
                     relative: bool = False) -> Path:  # fmt: skip
    """Write the test patients of a ``held_out="test"`` recipe as a test split file for the promotion gate
    (:func:`ModelSelectorLib.ranking.promotion.promote`): ``{"dataset", "seed", "labels", "purpose", "cases":
    [{"id", "image", "label"}]}``, naming the source files under ``data_root``. A candidate built from a new
    recipe with the same split is then compared with the zoo's version on patients neither trained or chose
    on. With ``relative``, ``dataset`` is relative to the file's folder (a split to commit beside the code).

    Raises:
        DatasetError: the recipe holds out no test split, a source file is missing, or a source label map
            holds values other than the model's (the gate scores the source files as they are).
    """
    if recipe.held_out != "test":
        raise DatasetError(f"{recipe.name} holds out no test split (held_out={recipe.held_out!r}); the gate "
                           "needs a recipe with held_out='test'.")  # fmt: skip
    root = Path(data_root).resolve()
    split = recipe.cases(root, seed)
    _check_paths(root, split, recipe)
    values = {0, *(lb.value for lb in recipe.labels)}
    for case in progress_bar(list(split.check), desc="checking the test labels"):
        found = set(np.unique(read_image(root / case.label, check_content=False).array).astype(int).tolist())
        if not found <= values:
            raise DatasetError(
                f"{case.label}: label values {sorted(found - values)} are not the model's {sorted(values)}; "
                "the gate scores the source files as they are, so compare on the prepared MSD folder "
                "(build-starter-zoo --work) with a split of your own."
            )
    return write_split(
        path, root, [{"id": c.id, "image": c.image, "label": c.label} for c in split.check],
        {str(lb.value): lb.name for lb in recipe.labels}, seed, relative,
        purpose=f"test: the {len(split.check)} test patients of the {recipe.name} recipe; the promotion gate "
                "compares on them, nothing is chosen on them",
    )  # fmt: skip


# --- training -------------------------------------------------------------------------------------------
def train_config(recipe: Recipe, seed: int, val_fraction: float, num_threads: Optional[int] = None,
                 epochs_scale: float = 1.0) -> Any:  # fmt: skip
    """The recipe's :class:`~ModelSelectorLib.train.TrainConfig`; validation runs once, after the last epoch,
    so the held-out figure is that of the saved weights (no choice of epoch on the held-out cases)."""

    settings = dict(recipe.train)
    epochs = max(1, int(round(settings.pop("epochs", 20) * epochs_scale)))
    return TrainConfig(**settings, epochs=epochs, val_interval=epochs, val_fraction=val_fraction, seed=int(seed),
                       version=recipe.version, num_threads=num_threads, license=recipe.licence)  # fmt: skip


def external_check(bundle_dir: Path, msd_root: Path, check: Sequence[dict[str, str]]) -> dict[str, float]:
    """Mean Dice per label of the bundle on the check cases, each applied in its own geometry
    (:func:`~ModelSelectorLib.infer.apply_model`)."""

    loaded = load_bundle(bundle_dir)
    values = [int(lb["value"]) for lb in loaded.card.labels]
    scores: dict[int, list[float]] = {v: [] for v in values}
    for entry in check:
        image = read_image(msd_root / entry["image"])
        truth = read_image(msd_root / entry["label"], check_content=False).array
        pred = apply_model(loaded, image).array
        for v, d in dice_per_label(pred, truth, values).items():
            scores[v].append(d)
    return {str(v): float(np.mean(s)) for v, s in scores.items()}


def _complete_card(
    card: ModelCard, recipe: Recipe, split: CaseSplit, ext: Optional[dict[str, float]],
    record: Optional[dict[str, Any]] = None, cv: Optional[dict[str, Any]] = None,
) -> ModelCard:  # fmt: skip
    """The card with provenance, held-out cases and an honest metric block (the challenge-style held-out
    figures of ``record`` for ``test`` and ``cv`` recipes)."""
    metrics = dict(card.validation_metrics)
    names = {str(lb.value): lb.name for lb in recipe.labels}
    changes: dict[str, Any] = {}
    if record is not None:
        metrics = card_metrics(record["summary"], record["protocol"])
        if cv is not None:  # the final model keeps the components the folds chose
            values = {lb.name: lb.value for lb in recipe.labels}
            inference = dict(card.inference or {})
            inference["keep_largest_component"] = sorted(values[n] for n in cv["lcc"])
            changes["inference"] = inference
    elif split.val:
        metrics["validation_cases"] = ", ".join(c.id for c in split.val)
    else:  # training validated on the training case: report it as such
        metrics = {"validation": "none: single case",  # training names its training-case Dice training_dice
                   **{k if k.startswith("training_") else f"training_{k}": v for k, v in metrics.items()
                      if k.startswith(("dice", "training_dice"))}}  # fmt: skip
    if ext:
        metrics["external_dice"] = round(float(np.mean(list(ext.values()))), 4)
        for v, d in ext.items():
            if len(ext) > 1:
                metrics[f"external_dice_{names.get(v, v)}"] = round(d, 4)
        metrics["external_cases"] = recipe.check_name or ", ".join(c.id for c in split.check)
    held = record["protocol"] if record is not None else ", ".join(c.id for c in split.val)
    val_text = held or "none (single case; the Dice reported is on the training case)"
    trained = [*split.train, *(split.val if recipe.final_trains_on_validation else ())]
    n_cases = len(trained)
    training_data = (f"{recipe.source}. Labels: {recipe.provenance}. Training cases ({n_cases}): "
                     f"{', '.join(c.id for c in trained)}. Held out: {val_text}.")  # fmt: skip
    return ModelCard.from_dict({**card.to_dict(), "validation_metrics": metrics, "training_data": training_data,
                                "license": recipe.licence, "n_training_cases": n_cases, **changes})  # fmt: skip


def _recipe_block(recipe: Recipe, prep: dict[str, Any], seed: int, seconds: float) -> dict[str, Any]:
    split: CaseSplit = prep["split"]
    return {
        "recipe": recipe.name, "recipe_hash": prep["hash"], "seed": int(seed),
        "label_provenance": recipe.provenance, "licence": recipe.licence, "source": recipe.source,
        "intended_input": recipe.intended_input,
        "training_cases": [dataclasses.asdict(c) for c in split.train],
        "validation_cases": [dataclasses.asdict(c) for c in split.val],
        "check_cases": [dataclasses.asdict(c) for c in split.check],
        "build_time_s": round(seconds, 1),
    }  # fmt: skip


def built_hash(zoo: Any, name: str) -> Optional[str]:
    """The recipe hash recorded in the current bundle of ``name`` in ``zoo`` (``None`` if absent)."""
    if name not in zoo:
        return None
    try:
        block = read_metadata(zoo.get(name)).get(METADATA_KEY) or {}
    except ModelSelectorError:
        return None
    return block.get("recipe_hash")


def _install(zoo: Any, name: str, bundle: Path, block: dict[str, Any], cancel: Optional[Any]) -> None:
    """Record ``block`` under ``"starter_zoo"`` in the bundle's ``metadata.json``, then make the bundle model
    ``name``'s current version in ``zoo``.

    A rebuild of a version the zoo holds replaces it and is current only if that version was (a version
    promoted over it stays current); a new recipe version goes in beside the earlier ones, which stay for
    ``modelselector restore``, with a ``build`` event in the model's history."""
    meta = read_metadata(bundle)
    meta[METADATA_KEY] = block
    atomic.write_json(bundle / "configs" / "metadata.json", meta)
    check_cancel(cancel)
    version, event, current, info = str(meta["version"]), None, True, None
    if name in zoo and version in zoo.versions(name):
        current = zoo.current(name) == version
        # the rebuilt version keeps its place in the order of versions (``Zoo.versions`` sorts by "added")
        info = {"added": zoo.version_info(name, version).get("added", ""), "rebuilt": utc_timestamp()}
        zoo.remove(name, version, record=False)  # replaced in place below: not a removal for the history
    elif name in zoo:
        event = {
            "action": "build",
            "version": version,
            "from": zoo.current(name),
            "recipe_hash": block["recipe_hash"],
        }
    zoo.add(bundle, current=current, info=info, event=event)
    zoo.reload()


def _held_out(
    recipe: Recipe, prep: dict[str, Any], scratch: Path, cv: Optional[dict[str, Any]], cancel: Optional[Any]
) -> Optional[dict[str, Any]]:
    """The challenge-style held-out record of a ``test`` or ``cv`` recipe (``None`` for ``validation``):
    ``{"protocol", "summary", "per_case", "reference"[, "cross_validation"]}``."""
    split: CaseSplit = prep["split"]
    if cv is not None:
        n = len(split.train) + len(split.val)
        protocol = f"{recipe.folds}-fold cross-validation over {n} cases (post-processing chosen on the pooled folds)"
        record = {"summary": cv["summary"], "per_case": cv["per_case"], "cross_validation": {
            k: cv[k] for k in ("folds", "lcc", "postprocessing", "training_time_s", "peak_memory_mb")}}  # fmt: skip
    elif recipe.held_out == "test":
        per_case = score_bundle(scratch, prep["root"], prep["check"], recipe.nsd_tolerance_mm, cancel)
        chosen = f"post-processing chosen on {len(split.val)} validation cases"
        if recipe.refit_lcc is not None:
            chosen = f"settings and {chosen}, which the final model then trained on too"
        protocol = f"test split of {len(split.check)} cases that no choice was made on ({chosen})"
        record = {"summary": describe_cases(per_case), "per_case": per_case}
    else:
        return None
    return {"protocol": protocol, **record, "reference": recipe.reference or {},
            "nsd_tolerance_mm": recipe.nsd_tolerance_mm, "distance_unit": recipe.distance_unit}  # fmt: skip


def _final_config(recipe: Recipe, config: Any) -> Any:
    """The settings of the model that goes into the zoo: for a ``cv`` recipe, and a ``test`` recipe with
    ``refit_lcc``, every case but the test cases trains it and nothing is left to choose on (post-processing comes
    from the folds, or from the recipe)."""
    if not recipe.final_trains_on_validation:
        return config
    return dataclasses.replace(config, val_fraction=0.0, postprocess="none", keep="last")


def _train_final(recipe: Recipe, prep: dict[str, Any], config: Any, runs: Path, zoo_dir: Path,
                 cancel: Optional[Any]) -> Path:  # fmt: skip
    """Train (or resume) the network that goes into the zoo, checkpointed in ``runs/final``; its bundle in
    ``zoo_dir``, whose card already names the components a ``refit_lcc`` recipe keeps."""
    bundle = train_segmentation(prep["root"], recipe.name, zoo_dir, _final_config(recipe, config),
                                modality=recipe.modality, body_region=recipe.body_region, cancel=cancel,
                                work_dir=runs / "final")  # fmt: skip
    if recipe.refit_lcc is not None:  # no validation case is left to choose on: the recipe's choice
        card = validate_bundle(bundle)
        inference = {**(card.inference or {}), "keep_largest_component": sorted(recipe.refit_lcc)}
        write_card(bundle, ModelCard.from_dict({**card.to_dict(), "inference": inference}))
    return bundle


def build_model(
    recipe: Recipe,
    data_root: PathLike,
    zoo_dir: PathLike,
    work_dir: PathLike,
    seed: int = 0,
    num_threads: Optional[int] = None,
    epochs_scale: float = 1.0,
    force: bool = False,
    cancel: Optional[Any] = None,
    folds: Optional[Sequence[Union[int, str]]] = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Prepare, train and add one recipe's model to the zoo ``zoo_dir`` (created if missing).

    A ``cv`` recipe first runs its cross-validation folds (all, or those in ``folds``; resumable in
    ``WORK/NAME-runs/cv``); the final model goes into the zoo once every fold is done. Its network depends on no
    fold, so ``folds`` may name :data:`FINAL_RUN` to train it in a process of its own alongside them. Training
    checkpoints live in ``WORK/NAME-runs`` so that an interrupted build resumes.

    Returns:
        ``{"name", "status": "built"|"skipped"|"cross-validating", "path", "metrics", "seconds"}``.
    """

    t0 = time.monotonic()
    zoo = Zoo.create(zoo_dir)
    prep = prepare_dataset(recipe.check(), data_root, Path(work_dir) / recipe.name, seed)
    if not force and built_hash(zoo, recipe.name) == prep["hash"]:
        return {"name": recipe.name, "status": "skipped", "path": zoo.get(recipe.name),
                "metrics": zoo.card(recipe.name).validation_metrics, "seconds": 0.0}  # fmt: skip
    runs = Path(work_dir) / f"{recipe.name}-runs" / prep["hash"]
    config = train_config(recipe, seed, prep["val_fraction"], num_threads, epochs_scale)
    cv = None
    if recipe.held_out == "cv":
        if folds is not None and FINAL_RUN in folds:  # the final network needs nothing from the folds
            log("final model (all cases), alongside the folds")
            with tempfile.TemporaryDirectory(prefix="modelselector-starter-") as tmp:
                _train_final(recipe, prep, config, runs, Path(tmp) / "zoo", cancel)
        fold_ids = None if folds is None else [f for f in folds if f != FINAL_RUN]
        cv = cross_validate(prep["root"], recipe.folds, config, runs / "cv", fold_ids, recipe.modality,
                            recipe.nsd_tolerance_mm, cancel, log)  # fmt: skip
        if cv is None:
            return {"name": recipe.name, "status": "cross-validating", "path": None, "metrics": {},
                    "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="modelselector-starter-") as tmp:
        # a run finished alongside the folds resumes at its end
        scratch = _train_final(recipe, prep, config, runs, Path(tmp) / "zoo", cancel)
        check_cancel(cancel)
        record = _held_out(recipe, prep, scratch, cv, cancel)
        ext = (
            external_check(scratch, prep["root"], prep["check"]) if prep["check"] and record is None else None
        )
        card = _complete_card(validate_bundle(scratch), recipe, prep["split"], ext, record, cv)
        bundle = Path(tmp) / "bundle"
        shutil.copytree(scratch, bundle)
        write_card(bundle, card)
        if record is not None:
            atomic.write_json(bundle / HELD_OUT_FILE, record)
        _install(zoo, recipe.name, bundle, _recipe_block(recipe, prep, seed, time.monotonic() - t0), cancel)
    return {"name": recipe.name, "status": "built", "path": zoo.get(recipe.name), "metrics": card.validation_metrics,
            "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip


def cross_validate_development(
    recipe: Recipe,
    data_root: PathLike,
    work_dir: PathLike,
    k: int = 5,
    folds: Optional[Sequence[int]] = None,
    seed: int = 0,
    num_threads: Optional[int] = None,
    epochs_scale: float = 1.0,
    cancel: Optional[Any] = None,
    log: Callable[[str], None] = print,
) -> Optional[dict[str, Any]]:
    """``k``-fold cross-validation of a ``validation`` or ``test`` recipe over its development cases (training
    and validation; never its test or check cases), so that a choice about the recipe rests on every
    development case instead of the few validation ones. Nothing goes into a zoo.

    The folds train with the recipe's settings in ``WORK/NAME-runs/HASH/dev-cv/fold<i>`` (resumable; several
    processes can share them, each with its own ``folds``); the last one to finish pools them into
    ``dev-cv/summary.json`` (:func:`~ModelSelectorLib.starter_zoo.heldout.cross_validate`: per-case figures as
    applied, with and without the largest component, mean and 95 % interval).

    Returns:
        the pooled record, or ``None`` while folds are missing.

    Raises:
        ModelSelectorError: a ``cv`` recipe (its cross-validation is its held-out figure: build it) or fewer
            development cases than folds.
    """
    if recipe.held_out == "cv":
        raise InputError(
            f"{recipe.name} is cross-validated over all its cases when it is built; run build-starter-zoo "
            "with --folds instead of --dev-cv."
        )
    prep = prepare_dataset(recipe.check(), data_root, Path(work_dir) / recipe.name, seed)
    n_dev = len(prep["split"].train) + len(prep["split"].val)
    if not 2 <= k <= n_dev:
        raise InputError(f"{recipe.name} has {n_dev} development cases: choose 2 to {n_dev} folds.")
    runs = Path(work_dir) / f"{recipe.name}-runs" / prep["hash"] / DEV_CV_DIR
    config = train_config(recipe, seed, 0.0, num_threads, epochs_scale)  # the folds are the only split
    record = cross_validate(prep["root"], k, config, runs, folds, recipe.modality, recipe.nsd_tolerance_mm,
                            cancel, log)  # fmt: skip
    if record is not None:
        record = {"recipe": recipe.name, "version": recipe.version, "recipe_hash": prep["hash"], "k": k,
                  "development_cases": n_dev, **record}  # fmt: skip
        atomic.write_json(runs / "summary.json", record)
    return record


def build_landmark_model(
    recipe: LandmarkRecipe,
    data_root: PathLike,
    zoo_dir: PathLike,
    seed: int = 0,
    force: bool = False,
    cancel: Optional[Any] = None,
) -> dict[str, Any]:
    """Train the landmark recipe's variant (:func:`ModelSelectorLib.training.landmark_study.train_into_zoo`), score
    it on the comparison's validation and test images, and add it to the zoo ``zoo_dir``.

    Returns:
        ``{"name", "status": "built"|"skipped", "path", "metrics", "seconds"}``.
    """

    t0 = time.monotonic()
    root = Path(data_root)
    zoo = Zoo.create(zoo_dir)
    digest = landmark_recipe_hash(recipe, root, seed)
    if not force and built_hash(zoo, recipe.name) == digest:
        return {"name": recipe.name, "status": "skipped", "path": zoo.get(recipe.name),
                "metrics": zoo.card(recipe.name).validation_metrics, "seconds": 0.0}  # fmt: skip
    split = recipe.split(root, seed)
    with tempfile.TemporaryDirectory(prefix="modelselector-starter-") as tmp:
        train_into_zoo(root, Path(tmp) / "zoo", recipe.grid_config(), name=recipe.name, version=recipe.version,
                       variant=recipe.variant, fraction=recipe.fraction, seed=seed, cancel=cancel)  # fmt: skip
        bundle = Path(tmp) / "bundle"
        shutil.copytree(Zoo(Path(tmp) / "zoo").get(recipe.name), bundle)
        block = {
            "recipe": recipe.name, "recipe_hash": digest, "seed": int(seed), "variant": recipe.variant,
            "label_fraction": recipe.fraction, "label_provenance": recipe.provenance, "licence": recipe.licence,
            "source": recipe.source, "intended_input": recipe.intended_input,
            "training_cases": recipe.cases(root, split["labelled"]),
            "unlabelled_cases": len(split["train"]) - len(split["labelled"]) + len(split["unlabelled"]),
            "validation_cases": recipe.cases(root, split["val"]), "check_cases": recipe.cases(root, split["test"]),
            "build_time_s": round(time.monotonic() - t0, 1),
        }  # fmt: skip
        _install(zoo, recipe.name, bundle, block, cancel)
    return {"name": recipe.name, "status": "built", "path": zoo.get(recipe.name),
            "metrics": zoo.card(recipe.name).validation_metrics, "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip


# --- prototypes and index -------------------------------------------------------------------------------
def exemplar_images(recipe: AnyRecipe, data_root: PathLike, seed: int = 0) -> list[Path]:
    """Paths of the recipe's exemplar inputs: ``n_exemplars`` (labelled) training images."""
    if isinstance(recipe, LandmarkRecipe):
        keep = recipe.split(data_root, seed)["labelled"]
        chosen = set(keep[:: max(1, len(keep) // recipe.n_exemplars)][: recipe.n_exemplars])  # across sources
        return [p for p in find_landmark_folders(data_root)[0] if p.stem in chosen]
    split = recipe.cases(Path(data_root), seed)
    return [Path(data_root) / c.image for c in split.train[: recipe.n_exemplars]]


def build_prototypes(
    recipe: AnyRecipe, data_root: PathLike, zoo_dir: PathLike, seed: int = 0, data_free: int = 4
) -> Any:
    """Exemplar (training inputs) and data-free prototypes of one model, via :mod:`ModelSelectorLib.prototypes`."""
    zoo = Zoo(zoo_dir)
    exemplars = exemplar_images(recipe, data_root, seed)
    return generate_for_model(
        zoo, recipe.name, exemplars=exemplars, data_free=data_free, seed=seed, source_root=data_root
    )


def build_index(zoo_dir: PathLike, data_root: Optional[PathLike] = None) -> Path:
    """One index over every model of the zoo, saved to ``ZOO/index``.

    It is calibrated as ``modelselector index build --data DATA_ROOT`` calibrates: on the development images of
    the protocol split (the bundled encoder's ``split.json``) under ``data_root``, without the zoo models'
    training images. Without ``data_root``, or when the split's images are not all there (another data
    folder), on the models' exemplar files; that is refused where it would replace a calibration made on
    development images.
    """
    from ..evaluation.selection_cases import development_images, load_protocol
    from ..selection.calibration import refuse_replacing_labelled_calibration

    zoo = Zoo(zoo_dir)
    out = Path(zoo_dir) / INDEX_DIR
    with atomic.writer_lock(out):  # as `index build`: an `index add` meanwhile waits, and is kept
        zoo.reload()
        cases, text = None, ""
        if data_root is not None:
            with contextlib.suppress(InputError):  # not the split's data folder: the exemplar files below
                cases, text = development_images(load_protocol(None, data_root), zoo)
        if cases is None:
            refuse_replacing_labelled_calibration(
                out, zoo, f"pass the data folder the protocol split was made from (--data), or run `modelselector "
                f"index calibrate --zoo {zoo.path} --data DIR` after the build")  # fmt: skip
        build_calibrated_index(zoo, cases=cases, description=text).save(out)
    return out


def build_starter_zoo(
    data_root: PathLike,
    zoo_dir: PathLike,
    only: Optional[Sequence[str]] = None,
    seed: int = 0,
    stages: Sequence[str] = STAGES,
    work_dir: Optional[PathLike] = None,
    num_threads: Optional[int] = None,
    epochs_scale: float = 1.0,
    data_free: int = 4,
    force: bool = False,
    cancel: Optional[Any] = None,
    log: Callable[[str], None] = print,
    folds: Optional[Sequence[Union[int, str]]] = None,
) -> list[dict[str, Any]]:
    """Build (or resume building) the starter zoo from the data folder.

    Args:
        data_root: the shared data folder (``../shared/data``).
        zoo_dir: output zoo (``Resources/zoo``).
        only: model names to build (default all).
        seed: seed of splits, weights and patches.
        stages: any of ``train``, ``prototypes``, ``index``, run in that order.
        work_dir: where the MSD folders are written (default: a temporary folder, removed afterwards).
        num_threads: torch CPU threads during training.
        epochs_scale: multiply every recipe's epochs (quick trial builds).
        data_free: data-free prototypes per model.
        force: retrain models whose recipe hash is unchanged.
        folds: cross-validation folds to run for ``cv`` recipes (default all; several processes can share
            them with the same ``work_dir``), and :data:`FINAL_RUN` to train the final model alongside them.
        cancel: Event-like; stops between and inside models.
        log: receives one line per finished step.

    Returns:
        one result dict per model trained or skipped.
    """
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise InputError(f"unknown stage(s) {', '.join(bad)}; use {', '.join(STAGES)}.")
    root = Path(data_root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such data folder; pass the shared data folder with --data.")
    chosen = recipes(only)
    results: list[dict[str, Any]] = []
    own_work = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="modelselector-starter-work-")) if own_work else Path(work_dir)
    try:
        if "train" in stages:
            bar = progress_bar(chosen, total=len(chosen), desc="starter zoo: train")
            for recipe in bar:
                check_cancel(cancel)
                bar.set_description(f"starter zoo: {recipe.name}")
                if isinstance(recipe, LandmarkRecipe):
                    res = build_landmark_model(recipe, root, zoo_dir, seed, force, cancel)
                else:
                    res = build_model(
                        recipe,
                        root,
                        zoo_dir,
                        work,
                        seed,
                        num_threads,
                        epochs_scale,
                        force,
                        cancel,
                        folds,
                        log,
                    )
                results.append(res)
                log(
                    f"{res['status']:>7} {recipe.name} ({res['seconds']:.0f} s) {_metric_text(res['metrics'])}"
                )
            bar.close()
        # a model whose folds are not all done is not in the zoo yet: its prototypes and the index wait for it
        pending = [r["name"] for r in results if r["status"] == "cross-validating"]
        if "prototypes" in stages:
            ready = [r for r in chosen if r.name not in pending]
            bar = progress_bar(ready, total=len(ready), desc="starter zoo: prototypes")
            for recipe in bar:
                check_cancel(cancel)
                t0 = time.monotonic()
                build_prototypes(recipe, root, zoo_dir, seed, data_free)
                log(f"prototypes {recipe.name} ({time.monotonic() - t0:.0f} s)")
            bar.close()
        if pending and ("prototypes" in stages or "index" in stages):
            log(f"{', '.join(pending)}: not in the zoo until every fold is done, so no prototypes or index yet; "
                "the run that finishes the last fold installs it and builds them")  # fmt: skip
        elif "index" in stages:
            check_cancel(cancel)
            log(f"index {build_index(zoo_dir, root)}")
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    return results


def summary_table(zoo_dir: PathLike) -> str:
    """A Markdown table of the zoo's starter models: modality, region, labels, cases, metrics, provenance,
    licence and build time, read from the bundles' cards (what ``docs/starter-zoo.md`` shows)."""

    zoo = Zoo(zoo_dir)
    lines = [
        "| model | modality | region | dims | labels | training cases | held-out figure | external check "
        "(Dice) | label provenance | licence | build time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in zoo.names():
        path = zoo.get(name)
        card = validate_bundle(path)
        block = read_metadata(path).get(METADATA_KEY) or {}
        m = card.validation_metrics
        runtime = runtime_class(card.task_type)
        labels, val = runtime.describe_outputs(card), runtime.describe_quality(card)
        ext = f"{m['external_dice']:.3f} on {m.get('external_cases', '?')}" if "external_dice" in m else "-"
        lines.append(
            f"| {name} | {card.modality} | {card.body_region} | {card.spatial_dims}D | {labels} "
            f"| {card.n_training_cases} | {val} | {ext} | {block.get('label_provenance', '-')} | {card.license} "
            f"| {block.get('build_time_s', '-')} |"
        )
    return "\n".join(lines) + "\n"


def _metric_text(metrics: dict[str, Any]) -> str:
    keys = ("dice", "training_dice", "external_dice", "val_mre_mm", "test_mre_mm")
    return " ".join(f"{k}={metrics[k]:.3f}" for k in keys if isinstance(metrics.get(k), (int, float)))


__all__ = [
    "build_index", "build_landmark_model", "build_model", "build_prototypes", "build_starter_zoo",
    "cross_validate_development", "prepare_dataset", "remap_labels", "summary_table", "write_test_split",
]  # fmt: skip
