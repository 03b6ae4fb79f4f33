"""Train a segmentation network on an MSD dataset and add it to a zoo as a bundle with a full model card.

Preprocessing is shared with :mod:`ModelSelectorLib.models.preprocessing` so training and inference see
identical inputs: each case is resampled with SimpleITK onto an axis-aligned grid in the canonical orientation
(``CANONICAL_AXCODES`` = ``"RAS"``, as the bundle's ``Orientationd``) at the planned spacing, then normalised
(CT: clip to [a_min, a_max] and scale to [0, 1]; MR: z-score over non-zero voxels). The settings
(:class:`~.config.TrainConfig`) choose the planning (:mod:`.planning`), network (:mod:`.networks`),
augmentation (:mod:`.augmentation`), optimisation with resumable checkpoints (:mod:`.fitting`) and the
evaluation as applied with post-processing chosen on the validation cases (:mod:`.validation`); the kept
weights are saved with :func:`~ModelSelectorLib.zoo.bundle.save_bundle`. K-fold cross-validation:
:mod:`.crossval`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import atomic
from ..datasets.labelmaps import align_label, as_label_map, is_identity, to_class_indices
from ..datasets.msd import MSDDataset, case_id_of, load_msd
from ..errors import TrainingError
from ..io.geometry import CANONICAL_AXCODES
from ..io.image import read_image
from ..models.preprocessing import check_device, preprocess, resample_label
from ..models.segmentation import at_field
from ..progress import check_cancel
from ..provenance import code_version, file_digest
from ..zoo.bundle import WEIGHTS_FILE, save_bundle, validate_bundle
from ..zoo.card import ModelCard, default_color
from ..zoo.catalog import Zoo
from .augmentation import flip_axes, mirror_axes
from .config import CURVE_FILE, TRAIN_CONFIG_FILE, TrainConfig, intensity_settings
from .fitting import fit, run_peak_memory_mb, training_device
from .networks import build_network, network_def
from .planning import Plan, check_dimensions, plan_training
from .validation import choose_postprocessing, evaluate_cases, summarize_cases


def split_cases(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Case indices ``(train, val)`` shuffled with ``seed``; at least one validation case when ``n >= 2`` and
    ``val_fraction > 0`` (0: every case trains, e.g. the final model after cross-validation)."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = 0 if n < 2 or val_fraction <= 0 else min(n - 1, max(1, int(round(n * val_fraction))))
    return sorted(order[n_val:]), sorted(order[:n_val])


def load_cases(
    dataset: MSDDataset, indices: Sequence[int], spacing: Sequence[float], intensity: dict[str, Any],
    plan: Optional[Plan] = None,
) -> list[dict[str, np.ndarray]]:  # fmt: skip
    """Preprocess cases: ``{"image": (1, x, y, z) float32, "label": (1, x, y, z) uint8}`` on the canonical grid.

    The label's values become class indices ``0..K`` (:func:`~ModelSelectorLib.datasets.labelmaps.class_indices`
    of ``dataset.json``'s labels), and a label whose geometry differs from its image's is first put on the image's
    grid (:func:`~ModelSelectorLib.datasets.labelmaps.align_label`). With the ``plan``, a picture without a pixel
    size spans the median training field, as ``apply`` shows it (:func:`~ModelSelectorLib.models.segmentation.at_field`),
    whatever its size in pixels.

    Raises:
        DatasetError: a label file holds an undeclared value, or its header does not place it on its image.
    """
    mapping = dataset.class_indices
    items = []
    for i in indices:
        case = dataset.training[i]
        image = read_image(case["image"])
        label = as_label_map(read_image(case["label"], check_content=False), case["label"])
        classes = label.with_array(to_class_indices(label.array, mapping, case["label"]))
        classes = align_label(classes, image, case["label"], case["image"])
        # a picture shows the median training field, as apply will show it (at_training_field)
        if plan is not None:
            image = at_field(image, plan.to_card(), plan.spacing, len(plan.spacing))
            classes = dataclasses.replace(classes, spacing=image.spacing)
        arr, grid = preprocess(image, spacing, intensity, CANONICAL_AXCODES)
        lab = resample_label(classes, grid)
        items.append(
            {"image": arr[None], "label": lab[None], "case": str(case["image"]), "id": case_id_of(case)}
        )
    return items


def dataset_labels(dataset: MSDDataset) -> list[dict[str, Any]]:
    """The card's labels: one per declared foreground label, valued by its class index ``1..K`` (what the network
    outputs and the runtime writes), with the dataset's name, colour and terminology (looked up by the dataset's
    own value)."""
    colors = dataset.raw.get("colors") or {}
    terms = dataset.raw.get("terminology") or {}
    mapping = dataset.class_indices
    out = []
    for value, name in sorted(dataset.foreground_labels.items()):
        index = mapping[value]
        lb: dict[str, Any] = {
            "value": index,
            "name": name,
            "color": [float(c) for c in colors.get(str(value), default_color(index))],
        }
        if str(value) in terms:
            lb["terminology"] = terms[str(value)]
        out.append(lb)
    return out


def training_data_text(dataset: MSDDataset, n_train: int, n_val: int) -> str:
    """The card's ``training_data``: the dataset, its case counts, how its label values became the model's (when
    they differ) and its description."""
    counts = f"{dataset.name} ({dataset.root.name}): {n_train} training / {n_val} validation cases"
    return "; ".join(t for t in (counts, label_values_text(dataset), dataset.description.strip()) if t)


def label_values_text(dataset: MSDDataset) -> str:
    """How the card's label values relate to the dataset's, for its ``training_data`` text: ``""`` when they are
    the same, else e.g. ``"label values in the data 255 (lungs) are the model's 1"``."""
    mapping = dataset.class_indices
    if is_identity(mapping):
        return ""
    fg = sorted(dataset.foreground_labels.items())
    return (f"label values in the data {', '.join(f'{v} ({n})' for v, n in fg)} are the model's "
            f"{', '.join(str(mapping[v]) for v, _ in fg)}")  # fmt: skip


@dataclasses.dataclass
class PreparedRun:
    """Everything :func:`train_fold` and :func:`train_segmentation` derive before training."""

    dataset: MSDDataset
    modality: str
    plan: Plan
    intensity: dict[str, Any]
    labels: list[dict[str, Any]]
    flips: tuple[int, ...]
    net_def: dict[str, Any]
    n_classes: int
    train_items: list[dict[str, Any]]
    val_items: list[dict[str, Any]]

    @property
    def label_names(self) -> dict[int, str]:
        return {int(lb["value"]): str(lb["name"]) for lb in self.labels}


def prepare_run(
    dataset: MSDDataset, train_idx: Sequence[int], val_idx: Sequence[int], config: TrainConfig,
    modality: Optional[str] = None,
) -> PreparedRun:  # fmt: skip
    """Plan (on the training cases), preprocess the cases and define the network."""
    modality = (modality or dataset.modality_code).upper()
    check_dimensions(dataset, [*train_idx, *val_idx])
    plan = plan_training(dataset, train_idx, config)
    intensity = intensity_settings(config, modality)
    labels = dataset_labels(dataset)
    spatial_dims = len(plan.roi_size)
    flips = flip_axes(config, [lb["name"] for lb in labels], spatial_dims)
    n_classes = len(dataset.class_indices)
    net_def = network_def(config, spatial_dims, n_classes, plan.roi_size, plan.spacing)
    train_items = load_cases(dataset, train_idx, plan.spacing, intensity, plan)
    val_items = load_cases(dataset, val_idx, plan.spacing, intensity, plan)
    return PreparedRun(dataset, modality, plan, intensity, labels, flips, net_def, n_classes, train_items,
                       val_items)  # fmt: skip


def run_fingerprint(config: TrainConfig, dataset: MSDDataset, train_idx: Sequence[int]) -> str:
    cases = [Path(dataset.training[i]["image"]).name for i in train_idx]
    text = json.dumps([config.fingerprint(), cases])
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def measured_labels(items: list[dict[str, Any]], names: dict[int, str]) -> dict[int, str]:
    """The labels of ``names`` that at least one of ``items``' labels holds (the others cannot be scored there)."""
    present: set[int] = set()
    for it in items:
        present |= {int(v) for v in np.unique(it["label"])}
    return {v: n for v, n in names.items() if v in present}


def applied_metrics(
    network: Any, run: PreparedRun, res: Any, config: TrainConfig, cancel: Optional[Any] = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The card's ``inference`` block and validation figures of ``network`` (the kept weights of ``res``).

    With test-time mirroring or post-processing the figures are those of the model as it is applied
    (:func:`~.validation.evaluate_cases`), and the largest-component post-processing is chosen per label on
    these validation cases (``config.postprocess``; both figures are recorded); otherwise the validation
    Dice that :func:`~.fitting.fit` measured. Labels that no validation case holds are not measured (left out of
    the figures and the mean). Without validation cases the figure is the training cases' Dice, recorded as
    ``training_dice`` (no held-out ``dice``)."""
    roi, spacing, names = run.plan.roi_size, run.plan.spacing, run.label_names
    inference = {"sw_mode": config.sw_mode, "overlap": float(config.sw_overlap),
                 "mirror_axes": mirror_axes(config, run.flips, roi), "keep_largest_component": []}  # fmt: skip
    best = res.best or {"dice": 0.0, "per_label": {}}
    metrics: dict[str, Any] = {"dice": round(best["dice"], 4)} if best["per_label"] else {}
    metrics.update({f"dice_{names.get(v, v)}": round(d, 4) for v, d in best["per_label"].items()})
    measured = measured_labels(run.val_items, names)
    if measured and (inference["mirror_axes"] or config.postprocess != "none"):
        per_case = evaluate_cases(network, run.val_items, roi, run.n_classes, inference, spacing, measured,
                                  config.device, cancel, surface=False)  # fmt: skip
        lcc, figures = choose_postprocessing(per_case, config.postprocess)
        inference["keep_largest_component"] = [v for v, n in measured.items() if n in lcc]
        metrics = {"dice": summarize_cases(per_case, lcc)["dice"]}
        metrics.update(
            {f"dice_{n}": round(f["dice_lcc"] if n in lcc else f["dice"], 4) for n, f in figures.items()}
        )
        metrics["postprocessing"] = {n: {"without_lcc": round(f["dice"], 4), "with_lcc": round(f["dice_lcc"], 4)}
                                     for n, f in figures.items()}  # fmt: skip
    if config.postprocess == "lcc":  # asked for every label, whether or not validation cases measured it
        inference["keep_largest_component"] = sorted(names)
    if run.val_items and len(measured) < len(names):
        metrics["not_measured"] = ", ".join(n for v, n in names.items() if v not in measured)
    metrics["validation_cases"] = len(run.val_items)
    if not run.val_items:  # fit scored the training cases: not a held-out figure
        metrics = {("training_" + k if k.startswith("dice") else k): v for k, v in metrics.items()}
    kept = "best validation epoch" if run.val_items else "best training-Dice epoch"
    metrics["weights"] = "last epoch" if config.keep == "last" else kept
    return inference, metrics


def _add_to_zoo(
    zoo: Zoo, card: ModelCard, run: PreparedRun, res: Any, config: TrainConfig, dataset_name: str
) -> Path:
    """Write the bundle (with its training curve and settings) in a temporary folder and add it to ``zoo``; the
    bundle's folder in the zoo. A version of the model with the same weights and the same inference settings (the
    same finished run, trained again from its work folder) is returned instead of adding a copy of it."""
    import torch

    description = (f"{config.architecture} trained with ModelSelectorLib on {dataset_name}; input resampled to "
                   f"{CANONICAL_AXCODES} at {list(run.plan.spacing)} mm.")  # fmt: skip
    if config.precision != "fp32":  # the card says how the weights were trained; inference stays float32
        description += f" Forward pass trained in {config.precision} (float32 weights and inference)."
    with tempfile.TemporaryDirectory(prefix="modelselector-train-") as tmp:
        bundle_dir = save_bundle(Path(tmp) / card.name, card, run.net_def, res.state, description=description)
        curve = {"epochs": res.history, "best_val_dice": round((res.best or {"dice": 0.0})["dice"], 6),
                 "training_cases": [Path(it["case"]).name for it in run.train_items],
                 "validation_cases": [Path(it["case"]).name for it in run.val_items],
                 "training_ids": [it["id"] for it in run.train_items],
                 "validation_ids": [it["id"] for it in run.val_items],
                 "flip_axes": list(run.flips) if config.augment else [],
                 "label_values": {str(i): v for v, i in run.dataset.class_indices.items() if v},
                 "training_time_s": res.seconds, "resumed_from_epoch": res.resumed_from,
                 "threads": torch.get_num_threads()}  # fmt: skip
        atomic.write_json(bundle_dir / CURVE_FILE, curve)
        atomic.write_json(bundle_dir / TRAIN_CONFIG_FILE, json.loads(json.dumps(dataclasses.asdict(config))))
        same = zoo.version_with_weights(card.name, file_digest(bundle_dir / WEIGHTS_FILE)["sha256"])
        if same is not None and validate_bundle(zoo.get(card.name, same)).inference == card.inference:
            print(f"modelselector: {card.name} {same} has the weights and inference settings of this run (a "
                  "finished run in the same work folder); nothing was added.", file=sys.stderr)  # fmt: skip
            return zoo.get(card.name, same)
        zoo.add(bundle_dir)
    return zoo.reload().get(card.name, card.version)


def train_segmentation(
    dataset_dir: os.PathLike[str] | str,
    name: str,
    zoo_dir: os.PathLike[str] | str,
    config: Optional[TrainConfig] = None,
    modality: Optional[str] = None,
    body_region: Optional[str] = None,
    cancel: Optional[Any] = None,
    work_dir: Optional[os.PathLike[str] | str] = None,
) -> Path:
    """Train a segmentation model on an MSD folder and add it to the zoo ``zoo_dir`` (created if missing).

    Args:
        dataset_dir: MSD folder (``dataset.json``, ``imagesTr``, ``labelsTr``).
        name: model name in the zoo (letters, digits, ``._+-``).
        zoo_dir: zoo folder.
        config: training settings (default :class:`TrainConfig()`).
        modality: card modality code (default: from ``dataset.json``, e.g. ``MRI`` -> ``MR``).
        body_region: card body region, e.g. ``ABDOMEN`` (default: ``dataset.json``'s ``body_region``).
        cancel: Event-like; training stops with :class:`~ModelSelectorLib.errors.Cancelled` when set.
        work_dir: folder for the training checkpoint (:func:`fit`); a run with the same settings and cases
            resumes from it. ``None``: no checkpoint.

    Returns:
        path of the new bundle inside the zoo.

    Raises:
        DatasetError: bad dataset folder. TrainingError: bad settings, no body region. BundleError: bad card.
        InputError: a device torch cannot use here.
    """
    import torch
    from monai.utils import set_determinism

    config = (config or TrainConfig()).check()
    check_device(config.device)
    dataset = load_msd(dataset_dir)
    if dataset.n_channels != 1:
        raise TrainingError(
            f"{dataset.root}: has {dataset.n_channels} input channels; only single-channel data is supported."
        )
    modality = (modality or dataset.modality_code).upper()
    body_region = body_region or dataset.raw.get("body_region")
    if not body_region:
        raise TrainingError(
            f"{dataset.root}: dataset.json names no body_region; pass one (e.g. --body-region ABDOMEN)."
        )
    ModelCard.check_identity(name, modality, body_region)  # refused now, not after the training
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    set_determinism(seed=config.seed)

    indices = list(range(len(dataset.training)))
    if config.max_cases is not None:
        indices = indices[: int(config.max_cases)]
    train_idx, val_idx = split_cases(len(indices), config.val_fraction, config.seed)
    train_idx, val_idx = [indices[i] for i in train_idx], [indices[i] for i in val_idx]
    run = prepare_run(dataset, train_idx, val_idx, config, modality)
    check_cancel(cancel)
    spacing, roi = run.plan.spacing, run.plan.roi_size
    network = build_network(run.net_def).to(config.device)
    res = fit(network, run.train_items, run.val_items, config, run.n_classes, roi, cancel, run.flips, spacing,
              work_dir, run_fingerprint(config, dataset, train_idx), run.net_def)  # fmt: skip
    set_determinism(seed=None)

    network.load_state_dict(res.state)
    inference, metrics = applied_metrics(network, run, res, config, cancel)
    zoo = Zoo.create(zoo_dir) if not (Path(zoo_dir) / "zoo.json").is_file() else Zoo(zoo_dir)
    card = ModelCard(
        name=name,
        version=config.version or zoo.next_version(name),
        task_type="segmentation",
        modality=modality,
        body_region=str(body_region).upper(),
        labels=run.labels,
        input_channels=1,
        spatial_dims=len(roi),
        target_spacing=[float(v) for v in spacing],
        intensity=run.intensity,
        roi_size=[int(r) for r in roi],
        training_data=training_data_text(dataset, len(train_idx), len(val_idx)),
        n_training_cases=len(train_idx),
        validation_metrics=metrics,
        seed=int(config.seed),
        code_version=code_version(),
        license=config.license,
        synthetic=bool(dataset.raw.get("synthetic", False)),
        training_time_s=round(res.seconds, 2),  # the epochs', over every session of a resumed run
        inference=inference,
        plan=run.plan.to_card(),
        peak_memory_mb=run_peak_memory_mb(res),
        training_device=training_device(config.device),
    )
    check_cancel(cancel)
    return _add_to_zoo(zoo, card, run, res, config, dataset.name)


__all__ = [
    "CURVE_FILE",
    "TRAIN_CONFIG_FILE",
    "Plan",
    "PreparedRun",
    "TrainConfig",
    "applied_metrics",
    "build_network",
    "dataset_labels",
    "flip_axes",
    "intensity_settings",
    "label_values_text",
    "load_cases",
    "network_def",
    "prepare_run",
    "run_fingerprint",
    "split_cases",
    "train_segmentation",
    "training_data_text",
]
