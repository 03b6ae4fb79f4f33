"""Train a segmentation network on an MSD dataset and add it to a zoo as a bundle with a full model card.

Preprocessing is shared with :mod:`ModelSelectorLib.models.preprocessing` so training and inference see
identical inputs: each case is resampled with SimpleITK onto an axis-aligned grid in the canonical orientation
(``CANONICAL_AXCODES`` = ``"RAS"``, as the bundle's ``Orientationd``) at ``target_spacing``, then
normalised (CT: clip to [a_min, a_max] and scale to [0, 1]; MR: z-score over non-zero voxels). Patches are
drawn with MONAI ``RandCropByPosNegLabeld`` (optional flips / 90-degree rotations / intensity jitter);
validation runs ``sliding_window_inference`` on whole held-out cases with ``DiceMetric``; the best weights
(by mean foreground Dice) are kept and saved with :func:`~ModelSelectorLib.zoo.bundle.save_bundle`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import atomic
from ..datasets.msd import MSDDataset, load_msd
from ..errors import TrainingError
from ..io.geometry import CANONICAL_AXCODES
from ..io.image import read_image
from ..models.preprocessing import preprocess, resample_label
from ..progress import check_cancel, progress_bar
from ..provenance import code_version
from ..settings import check_settings
from ..zoo.bundle import save_bundle
from ..zoo.card import ModelCard, default_color
from ..zoo.catalog import Zoo

ARCHITECTURES = ("unet", "segresnet", "attentionunet", "dynunet")
#: bundle file with the per-epoch training curve written by :func:`train_segmentation`
CURVE_FILE = Path("docs") / "training_curve.json"
#: bundle file with the :class:`TrainConfig` the model was trained with
TRAIN_CONFIG_FILE = Path("configs") / "train_config.json"
LOSSES = ("dice", "dicece", "dicefocal")


@dataclasses.dataclass
class TrainConfig:
    """Settings of :func:`train_segmentation`.

    Attributes:
        architecture: ``"unet"`` (MONAI ``UNet``), ``"segresnet"`` (MONAI ``SegResNet``), ``"attentionunet"``
            (MONAI ``AttentionUnet``) or ``"dynunet"`` (MONAI ``DynUNet``, nnU-Net style).
        channels: feature channels per level (UNet, AttentionUnet, DynUNet) or ``(init_filters,)`` (SegResNet).
        epochs: passes over the training cases.
        lr: Adam learning rate.
        batch_size: cases per batch (each gives ``num_samples`` patches).
        num_samples: patches drawn per case per epoch.
        roi_size: patch size in voxels ``(x, y, z)``; also the sliding-window size at inference.
        target_spacing: voxel size in mm ``(x, y, z)``; ``None`` uses the median spacing of the dataset.
        intensity: ``"ct"``, ``"mr"`` or ``"percentile"``; ``None`` derives it from the MSD modality.
        a_min, a_max: CT window (HU) or percentiles for ``"percentile"``.
        norm: normalisation layers, ``"batch"`` or ``"instance"``. Batch norm keeps running statistics, which
            data-free prototypes (model inversion) and the selector's verification step match against.
        val_fraction: fraction of cases held out for validation (at least one when there are >= 2 cases).
        val_interval: validate every this many epochs (and after the last).
        seed: random seed (split, weights, patches).
        num_workers: DataLoader workers.
        loss: ``"dice"``, ``"dicece"`` or ``"dicefocal"``.
        augment: random flips, 90-degree in-plane rotations (square in-plane ``roi_size``, and only when the
            left-right axis may be flipped) and intensity jitter.
        flip_axes: axes of the random flips (``None``: every axis but the left-right one, axis 0 of the
            canonical RAS grid, when a label is lateral -- its name says left or right -- since a mirrored
            image would teach the model the wrong side; every axis otherwise).
        max_cases: use at most this many cases (``None``: all).
        device: torch device.
        version: model version in the zoo (``None``: ``0.1.0``, or the next patch version of an existing model).
        num_threads: torch CPU threads (``None``: leave torch's default).
        license: licence of the trained weights.
    """

    architecture: str = "unet"
    channels: tuple[int, ...] = (16, 32, 64, 128)
    epochs: int = 50
    lr: float = 1e-3
    batch_size: int = 2
    num_samples: int = 4
    roi_size: tuple[int, ...] = (64, 64, 32)
    target_spacing: Optional[tuple[float, ...]] = None
    intensity: Optional[str] = None
    a_min: Optional[float] = None
    a_max: Optional[float] = None
    norm: str = "batch"
    val_fraction: float = 0.2
    val_interval: int = 1
    seed: int = 0
    num_workers: int = 0
    loss: str = "dicece"
    augment: bool = True
    flip_axes: Optional[tuple[int, ...]] = None
    max_cases: Optional[int] = None
    device: str = "cpu"
    version: Optional[str] = None
    num_threads: Optional[int] = None
    license: str = "CC-BY-4.0"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A config from a dict (e.g. parsed YAML); unknown keys raise :class:`TrainingError`."""
        check_settings(cls, data, "training")
        kw = dict(data)
        for key in ("channels", "roi_size", "target_spacing", "flip_axes"):
            if kw.get(key) is not None:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    def check(self) -> TrainConfig:
        """Raise :class:`TrainingError` for settings that cannot work; returns ``self``."""
        if self.architecture not in ARCHITECTURES:
            raise TrainingError(
                f"architecture {self.architecture!r} is unknown; use one of {', '.join(ARCHITECTURES)}."
            )
        if self.loss not in LOSSES:
            raise TrainingError(f"loss {self.loss!r} is unknown; use one of {', '.join(LOSSES)}.")
        if self.norm not in ("batch", "instance"):
            raise TrainingError(f"norm {self.norm!r} is unknown; use batch or instance.")
        if self.intensity not in (None, "ct", "mr", "percentile"):
            raise TrainingError(f"intensity {self.intensity!r} is unknown; use ct, mr or percentile.")
        if self.epochs < 1 or self.batch_size < 1 or self.num_samples < 1:
            raise TrainingError("epochs, batch_size and num_samples must be at least 1.")
        if len(self.roi_size) not in (2, 3) or any(int(r) < 4 for r in self.roi_size):
            raise TrainingError(f"roi_size {self.roi_size} must be 2 or 3 sizes of at least 4 voxels.")
        if self.architecture == "dynunet" and len(self.channels) < 3:
            raise TrainingError(f"dynunet needs at least 3 levels of channels; got {list(self.channels)}.")
        if self.architecture in ("unet", "attentionunet", "dynunet"):
            need = 2 ** (len(self.channels) - 1)
            if any(int(r) % need for r in self.roi_size):
                raise TrainingError(
                    f"roi_size {self.roi_size} must be divisible by {need} for a {len(self.channels)}-level UNet."
                )
        return self


# --- helpers --------------------------------------------------------------------------------------------
def intensity_settings(config: TrainConfig, modality: str) -> dict[str, Any]:
    """The card's ``intensity`` block: from ``config.intensity`` or else from the modality code."""
    mode = config.intensity or ("ct" if modality == "CT" else "mr")
    if mode == "ct":
        return {"mode": "ct", "a_min": float(config.a_min if config.a_min is not None else -1000.0),
                "a_max": float(config.a_max if config.a_max is not None else 1000.0)}  # fmt: skip
    if mode == "percentile":
        return {"mode": "percentile", "a_min": float(config.a_min if config.a_min is not None else 0.5),
                "a_max": float(config.a_max if config.a_max is not None else 99.5)}  # fmt: skip
    return {"mode": "mr"}


def network_def(config: TrainConfig, spatial_dims: int, n_classes: int) -> dict[str, Any]:
    """MONAI config (``_target_`` + arguments) of the network to train."""
    n_levels = len(config.channels)
    if config.architecture == "attentionunet":
        return {"_target_": "monai.networks.nets.AttentionUnet", "spatial_dims": spatial_dims, "in_channels": 1,
                "out_channels": n_classes, "channels": [int(c) for c in config.channels],
                "strides": [2] * (n_levels - 1)}  # fmt: skip
    if config.architecture == "dynunet":
        return {"_target_": "monai.networks.nets.DynUNet", "spatial_dims": spatial_dims, "in_channels": 1,
                "out_channels": n_classes, "kernel_size": [3] * n_levels, "strides": [1] + [2] * (n_levels - 1),
                "upsample_kernel_size": [2] * (n_levels - 1), "filters": [int(c) for c in config.channels],
                "norm_name": config.norm, "res_block": True}  # fmt: skip
    if config.architecture == "segresnet":
        return {"_target_": "monai.networks.nets.SegResNet", "spatial_dims": spatial_dims,
                "in_channels": 1, "out_channels": n_classes, "init_filters": int(config.channels[0]),
                "norm": config.norm.upper()}  # fmt: skip
    return {
        "_target_": "monai.networks.nets.UNet",
        "spatial_dims": spatial_dims,
        "in_channels": 1,
        "out_channels": n_classes,
        "channels": [int(c) for c in config.channels],
        "strides": [2] * (len(config.channels) - 1),
        "num_res_units": 1,
        "norm": config.norm.upper(),
    }


def build_network(net_def: dict[str, Any]) -> Any:
    """Instantiate a network config the way bundles are loaded (``monai.bundle.ConfigParser``)."""
    from monai.bundle import ConfigParser

    return ConfigParser({"network_def": net_def}).get_parsed_content("network_def", instantiate=True)


def split_cases(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Case indices ``(train, val)`` shuffled with ``seed``; at least one validation case when ``n >= 2``."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = 0 if n < 2 else min(n - 1, max(1, int(round(n * val_fraction))))
    return sorted(order[n_val:]), sorted(order[:n_val])


def median_spacing(dataset: MSDDataset, indices: Sequence[int]) -> tuple[float, ...]:
    """Median voxel size (mm, ``x, y, z``) of the listed cases."""
    sp = [read_image(dataset.training[i]["image"], check_content=False).spacing for i in indices]
    return tuple(float(v) for v in np.median(np.asarray(sp), axis=0))


def load_cases(
    dataset: MSDDataset, indices: Sequence[int], spacing: Sequence[float], intensity: dict[str, Any]
) -> list[dict[str, np.ndarray]]:
    """Preprocess cases: ``{"image": (1, x, y, z) float32, "label": (1, x, y, z) uint8}`` on the canonical grid."""
    items = []
    for i in indices:
        case = dataset.training[i]
        image = read_image(case["image"])
        label = read_image(case["label"], check_content=False)
        if label.size != image.size:
            raise TrainingError(f"{case['label']}: size {label.size} differs from its image's {image.size}.")
        arr, grid = preprocess(image, spacing, intensity, CANONICAL_AXCODES)
        lab = resample_label(label.with_array(label.array.astype(np.uint8)), grid)
        items.append({"image": arr[None], "label": lab[None], "case": str(case["image"])})
    return items


def flip_axes(config: TrainConfig, label_names: Sequence[str], spatial_dims: int) -> tuple[int, ...]:
    """The axes :func:`_train_transforms` flips: ``config.flip_axes``, or every axis except the left-right
    one (0 in the canonical RAS grid and in a 2D image's x) when a label name is lateral."""
    if config.flip_axes is not None:
        bad = [a for a in config.flip_axes if not 0 <= int(a) < spatial_dims]
        if bad:
            raise TrainingError(f"flip_axes {list(config.flip_axes)}: axes must be in 0..{spatial_dims - 1}.")
        return tuple(int(a) for a in config.flip_axes)
    lateral = any(re.search(r"\b(left|right)\b", n, re.IGNORECASE) for n in label_names)
    return tuple(range(1 if lateral else 0, spatial_dims))


def _train_transforms(
    config: TrainConfig, roi: Sequence[int], spatial_dims: int, flips: Optional[Sequence[int]] = None
) -> Any:
    """MONAI training transforms: pad, label-balanced crops and (``config.augment``) flips along ``flips``
    (default: every axis), in-plane quarter turns (when axis 0 is among the flips and the in-plane roi is
    square) and intensity jitter."""
    from monai import transforms as T

    keys = ["image", "label"]
    ts = [
        T.SpatialPadd(keys, spatial_size=list(roi)),
        T.RandCropByPosNegLabeld(
            keys, label_key="label", spatial_size=list(roi), pos=2, neg=1, num_samples=config.num_samples
        ),  # fmt: skip
    ]
    if config.augment:
        axes = tuple(range(spatial_dims)) if flips is None else tuple(flips)
        ts += [T.RandFlipd(keys, prob=0.5, spatial_axis=a) for a in axes]
        # quarter turns also move the left-right axis (so only where it may be mirrored anyway), and would
        # give a non-square patch two shapes within a batch
        if 0 in axes and roi[0] == roi[1]:
            ts.append(T.RandRotate90d(keys, prob=0.3, spatial_axes=(0, 1)))
        ts += [
            T.RandScaleIntensityd("image", factors=0.1, prob=0.3),
            T.RandShiftIntensityd("image", offsets=0.05, prob=0.3),
        ]
    ts.append(T.EnsureTyped(keys, dtype=None, track_meta=False))
    return T.Compose(ts)


def _loss(name: str) -> Any:
    from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss

    kw = {"to_onehot_y": True, "softmax": True}
    return {"dice": DiceLoss, "dicece": DiceCELoss, "dicefocal": DiceFocalLoss}[name](**kw)


def validate(
    network: Any, items: list[dict[str, np.ndarray]], roi: Sequence[int], n_classes: int, device: str,
    loss_fn: Optional[Any] = None,
) -> dict[str, Any]:  # fmt: skip
    """Mean foreground Dice over whole cases, and per label value.

    Args:
        loss_fn: when given, also the mean loss over the whole cases (``"loss"``).

    Returns:
        ``{"dice": mean over labels, "per_label": {value: dice}}`` (+ ``"loss"`` with ``loss_fn``).
    """
    import torch
    from monai.inferers import sliding_window_inference
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    losses = []
    network.eval()
    with torch.inference_mode():
        for item in items:
            x = torch.from_numpy(item["image"])[None].to(device)
            logits = sliding_window_inference(x, list(roi), 2, network, overlap=0.25)
            pred = logits.argmax(1, keepdim=True)
            y = torch.from_numpy(item["label"].astype(np.int64))[None].to(device)
            if loss_fn is not None:
                losses.append(float(loss_fn(logits, y)))
            metric(one_hot(pred, n_classes), one_hot(y, n_classes))
    per = metric.aggregate().cpu().numpy()
    metric.reset()
    per_label = {v + 1: (float(d) if np.isfinite(d) else 0.0) for v, d in enumerate(per)}
    out: dict[str, Any] = {"dice": float(np.mean(list(per_label.values()))), "per_label": per_label}
    if losses:
        out["loss"] = float(np.mean(losses))
    return out


def _labels(dataset: MSDDataset) -> list[dict[str, Any]]:
    colors = dataset.raw.get("colors") or {}
    terms = dataset.raw.get("terminology") or {}
    out = []
    for value, name in sorted(dataset.foreground_labels.items()):
        lb: dict[str, Any] = {
            "value": value,
            "name": name,
            "color": [float(c) for c in colors.get(str(value), default_color(value))],
        }
        if str(value) in terms:
            lb["terminology"] = terms[str(value)]
        out.append(lb)
    return out


# --- training -------------------------------------------------------------------------------------------
def _fit(
    network: Any, train_items: list[dict[str, np.ndarray]], val_items: list[dict[str, np.ndarray]],
    config: TrainConfig, n_classes: int, spatial_dims: int, cancel: Optional[Any],
    history: Optional[list[dict[str, Any]]] = None, flips: Optional[Sequence[int]] = None,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Train ``network``; returns ``(best state_dict, best validation result)``.

    ``history``, when given, receives one ``{"epoch", "train_loss"[, "val_loss", "val_dice"]}`` per epoch."""
    import torch
    from monai.data import DataLoader, Dataset

    roi = [int(r) for r in config.roi_size]
    loader = DataLoader(Dataset(train_items, _train_transforms(config, roi, spatial_dims, flips)),
                        batch_size=config.batch_size, shuffle=True, num_workers=config.num_workers)  # fmt: skip
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    loss_fn = _loss(config.loss)
    best_state, best = copy.deepcopy(network.state_dict()), {"dice": -1.0, "per_label": {}}
    bar = progress_bar(range(config.epochs), total=config.epochs, desc="train")
    for epoch in bar:
        network.train()
        losses = []
        for batch in loader:
            check_cancel(cancel)
            x, y = batch["image"].to(config.device), batch["label"].to(config.device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(network(x), y)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        post = {"loss": float(np.mean(losses))}
        if (epoch + 1) % config.val_interval == 0 or epoch + 1 == config.epochs:
            items = val_items or train_items
            res = validate(
                network, items, roi, n_classes, config.device, loss_fn if history is not None else None
            )
            if res["dice"] > best["dice"]:
                best, best_state = res, copy.deepcopy(network.state_dict())
            post.update(dice=res["dice"], best=best["dice"])
            if "loss" in res:
                post["val_loss"] = res["loss"]
        if history is not None:
            history.append({"epoch": epoch + 1, "train_loss": post["loss"],
                            **({"val_loss": post["val_loss"]} if "val_loss" in post else {}),
                            **({"val_dice": post["dice"]} if "dice" in post else {})})  # fmt: skip
        bar.set_postfix(**post)
    bar.close()
    return best_state, best


def _model_card(
    name: str, version: str, dataset: MSDDataset, config: TrainConfig, modality: str, body_region: str,
    labels: list[dict[str, Any]], spacing: Sequence[float], intensity: dict[str, Any], best: dict[str, Any],
    n_train: int, n_val: int, seconds: float,
) -> ModelCard:  # fmt: skip
    """The card of a model trained by :func:`train_segmentation`; ``best`` is its validation result."""
    names = {lb["value"]: lb["name"] for lb in labels}
    metrics: dict[str, Any] = {"dice": round(best["dice"], 4)}
    metrics.update({f"dice_{names.get(v, v)}": round(d, 4) for v, d in best["per_label"].items()})
    metrics["validation_cases"] = n_val
    return ModelCard(
        name=name,
        version=version,
        task_type="segmentation",
        modality=modality,
        body_region=str(body_region).upper(),
        labels=labels,
        input_channels=1,
        spatial_dims=len(config.roi_size),
        target_spacing=[float(s) for s in spacing],
        intensity=intensity,
        roi_size=[int(r) for r in config.roi_size],
        training_data=f"{dataset.name} ({dataset.root.name}): {n_train} training / {n_val} validation "
        f"cases; {dataset.description}".strip(),
        n_training_cases=n_train,
        validation_metrics=metrics,
        seed=int(config.seed),
        code_version=code_version(),
        license=config.license,
        synthetic=bool(dataset.raw.get("synthetic", False)),
        training_time_s=round(seconds, 2),
    )


def train_segmentation(
    dataset_dir: os.PathLike[str] | str,
    name: str,
    zoo_dir: os.PathLike[str] | str,
    config: Optional[TrainConfig] = None,
    modality: Optional[str] = None,
    body_region: Optional[str] = None,
    cancel: Optional[Any] = None,
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

    Returns:
        path of the new bundle inside the zoo.

    Raises:
        DatasetError: bad dataset folder. TrainingError: bad settings, no body region. BundleError: bad card.
    """
    import torch
    from monai.utils import set_determinism

    config = (config or TrainConfig()).check()
    t0 = time.monotonic()
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
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    set_determinism(seed=config.seed)

    indices = list(range(len(dataset.training)))
    if config.max_cases is not None:
        indices = indices[: int(config.max_cases)]
    train_idx, val_idx = split_cases(len(indices), config.val_fraction, config.seed)
    train_idx, val_idx = [indices[i] for i in train_idx], [indices[i] for i in val_idx]
    spatial_dims = len(config.roi_size)
    spacing = tuple(config.target_spacing) if config.target_spacing else median_spacing(dataset, train_idx)
    if len(spacing) != spatial_dims:
        raise TrainingError(f"target_spacing {spacing} and roi_size {config.roi_size} differ in dimension.")
    intensity = intensity_settings(config, modality)
    train_items = load_cases(dataset, train_idx, spacing, intensity)
    val_items = load_cases(dataset, val_idx, spacing, intensity)
    check_cancel(cancel)

    n_classes = max(dataset.labels) + 1
    net_def = network_def(config, spatial_dims, n_classes)
    network = build_network(net_def).to(config.device)
    history: list[dict[str, Any]] = []
    labels = _labels(dataset)
    flips = flip_axes(config, [lb["name"] for lb in labels], spatial_dims)
    best_state, best = _fit(network, train_items, val_items, config, n_classes, spatial_dims, cancel, history,
                            flips)  # fmt: skip
    set_determinism(seed=None)

    zoo = Zoo.create(zoo_dir) if not (Path(zoo_dir) / "zoo.json").is_file() else Zoo(zoo_dir)
    card = _model_card(name, config.version or zoo.next_version(name), dataset, config, modality, body_region,
                       labels, spacing, intensity, best, len(train_idx), len(val_idx), time.monotonic() - t0)  # fmt: skip
    description = (f"{config.architecture} trained with ModelSelectorLib on {dataset.name}; input resampled to "
                   f"{CANONICAL_AXCODES} at {list(spacing)} mm.")  # fmt: skip
    check_cancel(cancel)
    with tempfile.TemporaryDirectory(prefix="modelselector-train-") as tmp:
        bundle_dir = save_bundle(Path(tmp) / name, card, net_def, best_state, description=description)
        curve = {"epochs": history, "best_val_dice": round(best["dice"], 6),
                 "validation_cases": [Path(it["case"]).name for it in val_items],
                 "flip_axes": list(flips) if config.augment else []}  # fmt: skip
        atomic.write_json(bundle_dir / CURVE_FILE, curve)
        atomic.write_json(bundle_dir / TRAIN_CONFIG_FILE, json.loads(json.dumps(dataclasses.asdict(config))))
        zoo.add(bundle_dir)
    return zoo.reload().get(name)
