"""Training the image encoder on modality x body-region classes, and its model card.

Data: every row of ``radiology_2d/labels.csv`` (class ``MODALITY:REGION``; all non-radiology photos form
one class ``OT:OOD``) and 3D volumes of ``manifest.csv`` (``modality_code``/``region_code``), split by
source (a 2D file or a 3D subject is entirely in training or in validation).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import platform
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import __version__
from ..atomic import save_figure, write_json, write_text
from ..errors import DatasetError, InputError, TrainingError
from ..io.image import read_image
from ..progress import check_cancel, progress_bar
from ..resources import checkout_root, encoder_dir
from ..selection.encoder import DEFAULT_CHANNELS, EMBED_DIM, OOD_CLASS, WEIGHTS_NAME, Encoder
from ..selection.views import DEFAULT_IMAGE_SIZE, image_views


def _class_of(modality: str, region: str) -> Optional[str]:
    modality, region = modality.strip().upper(), region.strip().upper()
    if not modality or not region or modality in ("SEG", "LABEL"):
        return None
    if modality == "OT" or region.startswith("OOD"):
        return OOD_CLASS
    return f"{modality}:{region.split(';')[0]}"  # several regions: the first listed one


def collect_samples(
    data_root: os.PathLike | str, max_volumes_per_class: int = 24, seed: int = 0
) -> list[dict[str, str]]:
    """Training items of a data folder: ``radiology_2d/labels.csv`` rows and 3D rows of ``manifest.csv``.

    Returns:
        dicts with ``path`` (absolute), ``cls``, ``group`` (the split unit: the file for 2D images, the
        subject for volumes, e.g. ACDC's two frames of one patient share a group) and ``kind`` (2d/3d).

    Raises:
        DatasetError: neither catalogue exists.
    """
    root = Path(data_root)
    items: list[dict[str, str]] = []
    labels = root / "radiology_2d" / "labels.csv"
    if labels.exists():
        with open(labels, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                c = _class_of(r.get("modality", ""), r.get("body_region", ""))
                if c:
                    p = root / "radiology_2d" / r["path"]
                    items.append({"path": str(p), "cls": c, "group": "2d:" + r["path"], "kind": "2d"})
    manifest = root / "manifest.csv"
    if manifest.exists():
        rng = np.random.RandomState(seed)
        per_cls: dict[str, list[dict[str, str]]] = {}
        with open(manifest, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                if str(r.get("ndim", "")).strip() != "3":
                    continue
                c = _class_of(r.get("modality_code", ""), r.get("region_code", ""))
                p = root / r["path"]
                if c and p.exists():
                    group = "3d:" + re.sub(r"_frame\d+", "", r["path"])
                    item = {"path": str(p), "cls": c, "group": group, "kind": "3d", "folder": r["path"]}
                    per_cls.setdefault(c, []).append(item)
        # small collections (< 10 volumes in one folder) often hold one subject several times (a template
        # and its skull-stripped copy, a crop and the full scan): the whole folder is one split group
        per_folder: dict[str, int] = {}
        for lst in per_cls.values():
            for it in lst:
                folder = str(Path(it["folder"]).parent)
                per_folder[folder] = per_folder.get(folder, 0) + 1
        for _c, lst in sorted(per_cls.items()):
            if len(lst) > max_volumes_per_class:
                idx = sorted(rng.choice(len(lst), max_volumes_per_class, replace=False))
                lst = [lst[i] for i in idx]
            for it in lst:
                folder = str(Path(it.pop("folder")).parent)
                if folder not in ("", ".") and per_folder[folder] < 10:
                    it["group"] = "3d:" + folder + "/"
                # classes with few volumes get more views per volume (up to 8 per plane)
                it["n_per_axis"] = str(min(8, max(1, math.ceil(60 / (3 * len(lst))))))
            items.extend(lst)
    if not labels.exists() and not manifest.exists():
        raise DatasetError(
            f"{root}: has neither radiology_2d/labels.csv nor manifest.csv; pass the data folder."
        )
    return items


def split_groups(items: list[dict[str, str]], val_fraction: float, seed: int) -> tuple[set, set]:
    """Split the items' groups per class into train/validation (at least one validation group per class)."""
    rng = np.random.RandomState(seed)
    by_cls: dict[str, list[str]] = {}
    for it in items:
        g = by_cls.setdefault(it["cls"], [])
        if it["group"] not in g:
            g.append(it["group"])
    train, val = set(), set()
    for c in sorted(by_cls):
        groups = sorted(by_cls[c])
        rng.shuffle(groups)
        n_val = max(1, int(round(len(groups) * val_fraction))) if len(groups) >= 2 else 0
        val.update(groups[:n_val])
        train.update(groups[n_val:])
    return train, val


def _augment(x: Any, gen: Any) -> Any:
    """Strong batch augmentation of 2-channel views ``(B, 2, S, S)`` (torch, CPU).

    Random resized crop (zoom 1-1.8, shift), rotation (+-20 deg), horizontal flip (p 0.5) and vertical
    flip (p 0.1) in one affine resampling; down/up-sampling blur (p 0.3, factor 1.5-4); gamma (0.6-1.6) and
    contrast (0.7-1.3) on channel 1; Gaussian noise (std 0-0.04) on both channels.
    """
    import torch
    import torch.nn.functional as F

    b, _, s, _ = x.shape

    def u(lo: float, hi: float, n: int = b) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    zoom = u(1.0, 1.8)
    ang = u(-20.0, 20.0) * math.pi / 180.0
    flip_h = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    flip_v = torch.where(torch.rand(b, generator=gen) < 0.1, -1.0, 1.0)
    sc = 1.0 / zoom
    tx, ty = u(-1, 1) * (1 - sc), u(-1, 1) * (1 - sc)
    cos, sin = torch.cos(ang) * sc, torch.sin(ang) * sc
    theta = torch.stack(
        [torch.stack([cos * flip_h, -sin * flip_v, tx], 1), torch.stack([sin * flip_h, cos * flip_v, ty], 1)],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # pad with the view's border value: shift so that 0 is the minimum, pad zeros, shift back
    mins = x.amin(dim=(2, 3), keepdim=True)
    x = F.grid_sample(x - mins, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + mins
    # blur by down/up-sampling
    blur = torch.rand(b, generator=gen) < 0.3
    if blur.any():
        f = float(u(1.5, 4.0, 1))
        small = F.interpolate(
            x[blur], size=max(8, int(s / f)), mode="bilinear", align_corners=False, antialias=True
        )
        x[blur] = F.interpolate(small, size=s, mode="bilinear", align_corners=False)
    c1 = x[:, 1].clamp(0, 1)
    gamma = u(0.6, 1.6).view(b, 1, 1)
    c1 = c1.pow(gamma)
    contrast = u(0.7, 1.3).view(b, 1, 1)
    mean = c1.mean(dim=(1, 2), keepdim=True)
    x = torch.stack([x[:, 0], (c1 - mean) * contrast + mean], 1)
    x = x + torch.randn(x.shape, generator=gen) * u(0.0, 0.04).view(b, 1, 1, 1)
    return x.clamp(0, 1)


def _load_views(item: dict[str, str], size: int, views_per_volume: int) -> np.ndarray:
    img = read_image(item["path"], check_content=False)
    if item["kind"] == "3d":
        n_per_axis = max(views_per_volume // 3, int(item.get("n_per_axis", 1)))
        return image_views(img, spacing_mm=2.0, n_per_axis=max(1, n_per_axis), size=size)
    return image_views(img, size=size)


def _plot_confusion(cm: np.ndarray, classes: Sequence[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    fig, ax = plt.subplots(figsize=(0.45 * n + 3, 0.45 * n + 2.5))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    str(int(cm[i, j])),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticklabels(classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


@dataclasses.dataclass
class EncoderData:
    """The loaded training data: raw 2-channel views of every item, split by source group.

    Attributes:
        classes: class names, sorted; ``x_train``/``y_train``, ``x_val``/``y_val``: views ``(n, 2, S, S)``
            (torch) and class indices; ``excluded``: classes left out, with their group count;
        groups: groups per class; ``train_groups``/``val_groups``: the split; ``skipped``: unreadable items.
    """

    classes: list[str]
    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    excluded: dict[str, int]
    groups: dict[str, set]
    train_groups: set
    val_groups: set
    skipped: list[str]


def load_training_data(
    data_root: os.PathLike | str, image_size: int, seed: int, val_fraction: float, min_groups: int,
    views_per_volume: int, max_volumes_per_class: int, cancel: Optional[Any] = None,
) -> EncoderData:  # fmt: skip
    """Collect the items (:func:`collect_samples`), drop classes with fewer than ``min_groups`` source
    images/subjects, split groups (:func:`split_groups`) and load every view once.

    Raises:
        TrainingError: fewer than 2 classes remain.
    """
    import torch

    items = collect_samples(data_root, max_volumes_per_class, seed)
    groups: dict[str, set] = {}
    for it in items:
        groups.setdefault(it["cls"], set()).add(it["group"])
    excluded = {c: len(g) for c, g in groups.items() if len(g) < min_groups}
    items = [it for it in items if it["cls"] not in excluded]
    classes = sorted({it["cls"] for it in items})
    if len(classes) < 2:
        raise TrainingError(
            f"{data_root}: found {len(classes)} class(es) with >= {min_groups} images; need 2+."
        )
    cidx = {c: i for i, c in enumerate(classes)}
    train_g, val_g = split_groups(items, val_fraction, seed)
    xs: list[np.ndarray] = []
    ys: list[int] = []
    is_val: list[bool] = []
    skipped: list[str] = []
    for it in progress_bar(items, desc="loading views"):
        check_cancel(cancel)
        try:
            v = _load_views(it, image_size, views_per_volume)
        except (InputError, RuntimeError) as e:
            skipped.append(f"{it['path']}: {e}")
            continue
        xs.append(v)
        ys += [cidx[it["cls"]]] * len(v)
        is_val += [it["group"] in val_g] * len(v)
    x_all = torch.from_numpy(np.concatenate(xs))
    y_all = torch.tensor(ys, dtype=torch.long)
    val = torch.tensor(is_val, dtype=torch.bool)
    return EncoderData(classes, x_all[~val], y_all[~val], x_all[val], y_all[val], excluded,
                       {c: groups[c] for c in classes}, train_g, val_g, skipped)  # fmt: skip


def _confusion(net: Any, x: Any, y: Any, n_cls: int) -> tuple[np.ndarray, float]:
    """Confusion matrix (rows true) of ``net`` on views ``x`` and their balanced accuracy."""
    import torch

    net.eval()
    preds = []
    with torch.inference_mode():
        for i in range(0, len(y), 128):
            preds.append(net.logits(net(x[i : i + 128])).argmax(1))
    net.train()
    p = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    cm = np.zeros((n_cls, n_cls), dtype=np.int64)
    for t, q in zip(y.tolist(), p.tolist()):
        cm[t, q] += 1
    rec = [cm[i, i] / cm[i].sum() for i in range(n_cls) if cm[i].sum()]
    return cm, float(np.mean(rec)) if rec else 0.0


@dataclasses.dataclass
class FitResult:
    """The outcome of :func:`fit_encoder`: per-epoch ``history``, the best epoch's ``state`` and
    validation confusion matrix ``cm``, ``best_epoch``, and whether the time limit stopped training."""

    history: list[dict[str, float]]
    state: dict[str, Any]
    cm: np.ndarray
    best_epoch: int
    stopped_early: bool


def fit_encoder(
    net: Any, data: EncoderData, epochs: int, batch_size: int, lr: float, seed: int, max_minutes: float,
    cancel: Optional[Any] = None,
) -> FitResult:  # fmt: skip
    """Class-balanced sampling (inverse square-root frequency), augmentation (:func:`_augment`), AdamW with
    a one-cycle schedule, cross-entropy on the cosine head with label smoothing 0.1; stops after ``epochs``
    or ``max_minutes``. Keeps the weights of the epoch with the best validation balanced accuracy."""
    import torch
    import torch.nn.functional as F

    t0 = time.time()
    x_tr, y_tr = data.x_train, data.y_train
    n_cls = len(data.classes)
    counts_tr = torch.bincount(y_tr, minlength=n_cls)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = max(1, len(y_tr) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15)  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    # balance sqrt-wise so that big classes still get seen often
    inv_sqrt = (1.0 / counts_tr.clamp(min=1).float().sqrt())[y_tr]
    w = ((1.0 / counts_tr.clamp(min=1).float())[y_tr]).sqrt() * inv_sqrt
    history: list[dict[str, float]] = []
    best: Optional[FitResult] = None
    best_bacc = -1.0
    stopped_early = False
    net.train()
    bar = progress_bar(total=epochs * steps_per_epoch, desc="training encoder")
    for epoch in range(epochs):
        idx = torch.multinomial(w, steps_per_epoch * batch_size, replacement=True, generator=gen)
        tot, n_ok, n_seen = 0.0, 0, 0
        for s in range(steps_per_epoch):
            check_cancel(cancel)
            b = idx[s * batch_size : (s + 1) * batch_size]
            xb, yb = _augment(x_tr[b].clone(), gen), y_tr[b]
            logits = net.logits(net(xb))
            loss = F.cross_entropy(logits, yb, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(b)
            n_ok += int((logits.argmax(1) == yb).sum())
            n_seen += len(b)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=tot / n_seen)
        cm, bacc = _confusion(net, data.x_val, data.y_val, n_cls)
        history.append({"epoch": epoch + 1, "loss": tot / n_seen, "train_acc": n_ok / n_seen,
                        "val_balanced_acc": bacc, "val_acc": float(np.trace(cm) / max(cm.sum(), 1)),
                        "elapsed_s": time.time() - t0})  # fmt: skip
        if bacc > best_bacc:
            best_bacc = bacc
            best = FitResult(history, {k: v.detach().clone() for k, v in net.state_dict().items()}, cm,
                             epoch + 1, False)  # fmt: skip
        if (time.time() - t0) / 60.0 > max_minutes and epoch + 1 < epochs:
            stopped_early = True
            break
    bar.close()
    check_cancel(cancel)
    assert best is not None
    return dataclasses.replace(best, history=history, stopped_early=stopped_early)


def encoder_card(
    data_root: os.PathLike | str, data: EncoderData, fit: FitResult, settings: dict[str, Any], n_params: int,
    train_time: float,
) -> dict[str, Any]:  # fmt: skip
    """The encoder's model card (``card.json``): data, split, augmentation, network, training, validation
    per class with the confusion matrix, time and versions. ``settings`` holds the arguments of
    :func:`train_encoder`."""
    import torch

    classes, cm, s = data.classes, fit.cm, settings
    per_class = {}
    for i, c in enumerate(classes):
        n = int(cm[i].sum())
        per_class[c] = {"n_val_views": n, "recall": float(cm[i, i] / n) if n else None,
                        "precision": float(cm[i, i] / cm[:, i].sum()) if cm[:, i].sum() else None}  # fmt: skip
    counts_tr = np.bincount(data.y_train.numpy(), minlength=len(classes))
    counts_va = np.bincount(data.y_val.numpy(), minlength=len(classes))
    return {
        "name": "modelselector-encoder",
        "version": "1." + time.strftime("%Y%m%d", time.gmtime()),
        "code_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data_root": portable_data_root(data_root),
        "data": "radiology_2d/labels.csv (all rows; OOD photos -> OT:OOD) + 3D volumes of manifest.csv with "
        f"modality_code/region_code (<= {s['max_volumes_per_class']} volumes per class, {s['views_per_volume']} "
        "views each; multi-region volumes use their first region; classes with few volumes get up to 24 views "
        "per volume)",
        "classes": classes,
        "excluded_classes_groups": data.excluded,
        "n_train_views": {c: int(counts_tr[i]) for i, c in enumerate(classes)},
        "n_val_views": {c: int(counts_va[i]) for i, c in enumerate(classes)},
        "n_groups": {c: len(data.groups[c]) for c in classes},
        "n_items_skipped": len(data.skipped),
        "skipped": data.skipped[:20],
        "split": f"by source image (2D) / subject (3D): {s['val_fraction']:.0%} of each class's groups held out, "
        f"at least one; seed {s['seed']}; {len(data.train_groups)} train groups, {len(data.val_groups)} "
        "validation groups",
        "augmentation": (_augment.__doc__ or "").strip().split("\n\n", 1)[-1].replace("\n    ", " ").strip(),
        "network": {"type": "plain CNN, cosine head", "channels": list(s["channels"]), "embed_dim": EMBED_DIM,
                    "image_size": s["image_size"], "n_params": int(n_params),
                    "input": "2 x S x S views (see selection/views.py)"},
        "training": {"epochs_requested": s["epochs"], "epochs_run": len(fit.history),
                     "best_epoch": fit.best_epoch, "stopped_by_time_limit": fit.stopped_early,
                     "max_minutes": s["max_minutes"], "batch_size": s["batch_size"],
                     "optimizer": "AdamW, one-cycle lr", "lr": s["lr"], "loss": "cross-entropy, label smoothing 0.1",
                     "sampling": "inverse sqrt class-frequency", "threads": s["threads"], "history": fit.history},
        "validation": {
            "balanced_accuracy": float(np.mean([v["recall"] for v in per_class.values() if v["recall"] is not None])),
            "accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
            "unit": "one view (a 2D image, or one slice of a held-out volume)",
            "per_class": per_class,
            "confusion_matrix": cm.tolist(),
        },
        "training_time_s": round(train_time, 1),
        "seed": s["seed"],
        "torch_version": torch.__version__,
        "python": platform.python_version(),
    }  # fmt: skip


def train_encoder(
    data_root: os.PathLike | str,
    out_dir: Optional[os.PathLike | str] = None,
    epochs: int = 12,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    max_minutes: float = 11.0,
    cancel: Optional[Any] = None,
    batch_size: int = 32,
    lr: float = 2e-3,
    val_fraction: float = 0.2,
    min_groups: int = 5,
    views_per_volume: int = 9,
    max_volumes_per_class: int = 24,
    channels: Sequence[int] = DEFAULT_CHANNELS,
    threads: Optional[int] = 1,
) -> dict[str, Any]:
    """Train the encoder on modality x body-region classes and write weights and model card.

    Data: every row of ``data_root/radiology_2d/labels.csv`` (class ``MODALITY:REGION``; all
    non-radiology photos form one class ``OT:OOD``) and up to ``max_volumes_per_class`` 3D volumes per
    class from ``data_root/manifest.csv`` (``modality_code``/``region_code``; several regions -> the first;
    ``views_per_volume`` views each, from the three planes). Classes with fewer than ``min_groups`` source
    images/subjects are left out (listed in the card). The split is by source: a 2D file or a 3D subject
    is entirely in training or in validation (``val_fraction`` of each class's groups, at least one).
    Training: :func:`fit_encoder`.

    Writes (atomically) into ``out_dir`` (default: the bundled encoder's folder): ``encoder.pt``,
    ``card.json``, ``README.md``, ``confusion.png``.

    Returns:
        the card (dict).

    Raises:
        DatasetError: no catalogue in ``data_root``; TrainingError: fewer than 2 classes;
        Cancelled: ``cancel`` was set (nothing written).
    """
    import torch

    settings = {k: v for k, v in locals().items() if k not in ("data_root", "out_dir", "cancel")}
    t0 = time.time()
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    np.random.seed(seed)
    out = Path(out_dir) if out_dir is not None else encoder_dir()
    data = load_training_data(data_root, image_size, seed, val_fraction, min_groups, views_per_volume,
                              max_volumes_per_class, cancel)  # fmt: skip
    enc = Encoder.create(data.classes, image_size, channels)
    n_params = sum(p.numel() for p in enc.net.parameters())
    fit = fit_encoder(enc.net, data, epochs, batch_size, lr, seed, max_minutes, cancel)
    enc.net.load_state_dict(fit.state)
    enc.net.eval()
    enc.config["trained_epochs"] = len(fit.history)
    card = encoder_card(data_root, data, fit, settings, n_params, time.time() - t0)
    out.mkdir(parents=True, exist_ok=True)
    enc.save(out / WEIGHTS_NAME)
    card["weights_bytes"] = (out / WEIGHTS_NAME).stat().st_size
    _plot_confusion(fit.cm, data.classes, out / "confusion.png",
                    f"validation (best epoch {fit.best_epoch}), balanced acc "
                    f"{card['validation']['balanced_accuracy']:.3f}")  # fmt: skip
    write_json(out / "card.json", card)
    write_text(out / "README.md", card_markdown(card))
    return card


def card_markdown(card: dict[str, Any]) -> str:
    """The model card as Markdown (``Resources/encoder/README.md``)."""
    v = card["validation"]
    lines = [
        "# ModelSelector image encoder — model card",
        "",
        f"Version {card['version']}, code {card['code_version']}, created {card['created']}, seed {card['seed']}.",
        "",
        "Maps a 2D image or 3D volume to L2-normalised 128-d embeddings, one per 2D view (see "
        "`ModelSelectorLib/selection/encoder.py`): channel 0 = HU-like `clip((v+1000)/2000)`, channel 1 = per-view "
        "1-99 % percentile scaling; 3D volumes are resampled to a canonical 2 mm grid and sliced in three planes "
        "(20-80 % of the body extent). A cosine head over modality x region classes is used for training and "
        "`Encoder.classify`.",
        "",
        f"- Network: {card['network']['type']}, channels {card['network']['channels']}, "
        f"{card['network']['n_params']:,} parameters, views {card['network']['image_size']} px, "
        f"weights {card.get('weights_bytes', 0) / 1e6:.1f} MB",
        f"- Data: {card['data']}",
        f"- Split: {card['split']}",
        f"- Augmentation: {card['augmentation']}",
        f"- Training: {card['training']['epochs_run']} epochs (best {card['training']['best_epoch']}), "
        f"{card['training']['optimizer']}, {card['training']['loss']}, {card['training']['sampling']} sampling, "
        f"{card['training_time_s'] / 60:.1f} min on {card['training']['threads']} CPU thread(s)",
        f"- Excluded classes (fewer source images/subjects than needed): {card['excluded_classes_groups'] or 'none'}",
        "",
        f"## Validation (held-out sources; unit: {v['unit']})",
        "",
        f"Accuracy {v['accuracy']:.3f}, balanced accuracy {v['balanced_accuracy']:.3f}.",
        "",
        "| class | train views | val views | recall | precision |",
        "|---|---|---|---|---|",
    ]
    for c in card["classes"]:
        pc = v["per_class"][c]

        def f(x: Optional[float]) -> str:
            return "-" if x is None else f"{x:.2f}"

        lines.append(
            f"| {c} | {card['n_train_views'][c]} | {pc['n_val_views']} | {f(pc['recall'])} | "
            f"{f(pc['precision'])} |"
        )
    lines += [
        "",
        "Confusion matrix (rows true, columns predicted): `confusion.png`, and `card.json` → "
        "`validation.confusion_matrix`.",
        "",
        "Limits: validation sets of small classes hold few sources (a handful of views), so their figures are "
        "noisy; 3D classes come from few subjects; several sources are single datasets, so the encoder can "
        "learn dataset style as well as anatomy. Data licences: see ../shared/data/MANIFEST.md (internal use).",
        "",
    ]
    return "\n".join(lines)


def portable_data_root(data_root: os.PathLike | str) -> str:
    """``data_root`` as recorded in the card: relative to the checkout (e.g. ``../shared/data``) so the card
    names no machine-specific folder; resolve it with :func:`card_data_root`. Outside a checkout: the
    absolute path."""
    root = checkout_root()
    path = Path(data_root).resolve()
    return os.path.relpath(path, root) if root is not None else str(path)


def card_data_root(card: dict[str, Any]) -> Path:
    """The data folder a card's encoder was trained on, resolved against the checkout (or the working folder
    of an installed copy)."""
    return ((checkout_root() or Path.cwd()) / str(card.get("data_root", ""))).resolve()
