"""Training the image encoder on modality x body-region classes, and its model card.

Data: the protocol split of a data folder (:mod:`ModelSelectorLib.evaluation.selection_split`): the
encoder learns from the ``train`` items, its epoch is chosen on the ``dev`` items, and the ``test`` items
(whole held-out sources and held-out patients) are never read here. Views are augmented in their raw grey
values to imitate other scanners and sites (:mod:`.view_augment`) before the encoder's unit-free channels
are computed.
"""

from __future__ import annotations

import dataclasses
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
from ..errors import InputError, TrainingError
from ..evaluation.selection_split import ProtocolSplit, make_split
from ..io.image import read_image
from ..progress import check_cancel, progress_bar
from ..resources import checkout_root, encoder_dir
from ..selection.encoder import DEFAULT_CHANNELS, EMBED_DIM, WEIGHTS_NAME, Encoder
from ..selection.views import DEFAULT_IMAGE_SIZE, encoder_channels, image_views
from .view_augment import augment_views

#: the protocol split written beside the encoder's weights
SPLIT_NAME = "split.json"


def raw_views(path: Path, size: int, n_per_axis: int) -> np.ndarray:
    """Raw views ``(n, size, size)`` of one image file, each scaled to ``[0, 1]`` by its own range."""
    img = read_image(path, check_content=False)
    v = image_views(img, n_per_axis=n_per_axis, size=size, raw=True)
    lo = v.min(axis=(1, 2), keepdims=True)
    hi = v.max(axis=(1, 2), keepdims=True)
    return ((v - lo) / np.maximum(hi - lo, 1e-6)).astype(np.float32)


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
    """The loaded training data.

    Attributes:
        classes: class names (sorted); ``excluded``: classes left out, with their number of training groups.
        x_train: raw training views ``(n, S, S)`` (torch, each in ``[0, 1]``); ``y_train``: class indices.
        x_dev: the dev views' encoder channels ``(m, 2, S, S)`` (torch); ``y_dev``: class index per view;
            ``dev_image``: the dev image each view belongs to (image-level figures average its views).
        n_groups: training groups per class; ``n_dev_images``: dev images per class; ``skipped``: unreadable.
    """

    classes: list[str]
    excluded: dict[str, int]
    x_train: Any
    y_train: Any
    x_dev: Any
    y_dev: Any
    dev_image: Any
    n_groups: dict[str, int]
    n_dev_images: dict[str, int]
    skipped: list[str]


def load_training_data(
    split: ProtocolSplit,
    image_size: int,
    views_per_volume: int,
    min_groups: int,
    cancel: Optional[Any] = None,
) -> EncoderData:
    """Views of the split's ``train`` and ``dev`` items of every class with at least ``min_groups`` training
    groups (a 2D image gives one view, a volume ``views_per_volume`` from its three planes).

    Raises:
        TrainingError: fewer than 2 classes remain.
    """
    import torch

    groups: dict[str, set] = {}
    for it, s, g in zip(split.items, split.splits, split.groups):
        if s == "train":
            groups.setdefault(it.encoder_class, set()).add(g)
    classes = sorted(c for c, g in groups.items() if len(g) >= min_groups)
    excluded = {c: len(g) for c, g in groups.items() if len(g) < min_groups}
    if len(classes) < 2:
        raise TrainingError(
            f"the split has {len(classes)} class(es) with >= {min_groups} training groups; need 2+."
        )
    cidx = {c: i for i, c in enumerate(classes)}
    parts: dict[str, list[Any]] = {"train": [], "dev": []}
    labels: dict[str, list[int]] = {"train": [], "dev": []}
    dev_image: list[int] = []
    skipped: list[str] = []
    chosen = [(it, s) for it, s in zip(split.items, split.splits) if s in parts and it.encoder_class in cidx]
    n_dev = 0
    for it, s in progress_bar(chosen, desc="loading views"):
        check_cancel(cancel)
        try:
            v = raw_views(split.path(it), image_size, max(1, views_per_volume // 3))
        except (InputError, RuntimeError) as e:
            skipped.append(f"{it.path}: {e}")
            continue
        parts[s].append(v if s == "train" else encoder_channels(v))
        labels[s] += [cidx[it.encoder_class]] * len(v)
        if s == "dev":
            dev_image += [n_dev] * len(v)
            n_dev += 1
    dev_counts = {c: sum(1 for it, s in chosen if s == "dev" and it.encoder_class == c) for c in classes}
    return EncoderData(
        classes, excluded, torch.from_numpy(np.concatenate(parts["train"])), torch.tensor(labels["train"]),
        torch.from_numpy(np.concatenate(parts["dev"])) if parts["dev"] else torch.zeros(0, 2, image_size, image_size),
        torch.tensor(labels["dev"], dtype=torch.long), torch.tensor(dev_image, dtype=torch.long),
        {c: len(groups[c]) for c in classes}, dev_counts, skipped,
    )  # fmt: skip


def augmentation_text() -> str:
    """The augmentation as the card states it: :mod:`.view_augment`'s list, as plain text."""
    from . import view_augment

    bullets = (view_augment.__doc__ or "").split("\n\n")[2]  # the list of augmentations
    return re.sub(r"``", "", " ".join(bullets.split()).lstrip("- ").replace("; - ", "; "))


def dev_confusion(net: Any, data: EncoderData) -> tuple[np.ndarray, float]:
    """Image-level confusion matrix (rows true) on the dev split (class probabilities averaged over each
    image's views) and its balanced accuracy (mean recall over classes with dev images)."""
    import torch

    n_cls = len(data.classes)
    cm = np.zeros((n_cls, n_cls), dtype=np.int64)
    if not len(data.y_dev):
        return cm, 0.0
    net.eval()
    with torch.inference_mode():
        probs = torch.cat([torch.softmax(net.logits(net(data.x_dev[i : i + 256])), 1)
                           for i in range(0, len(data.y_dev), 256)])  # fmt: skip
    net.train()
    n_img = int(data.dev_image.max()) + 1
    mean = torch.zeros(n_img, n_cls).index_add_(0, data.dev_image, probs)
    truth = torch.zeros(n_img, dtype=torch.long).index_copy_(0, data.dev_image, data.y_dev)
    for t, q in zip(truth.tolist(), mean.argmax(1).tolist()):
        cm[t, q] += 1
    rec = [cm[i, i] / cm[i].sum() for i in range(n_cls) if cm[i].sum()]
    return cm, float(np.mean(rec)) if rec else 0.0


@dataclasses.dataclass
class FitResult:
    """The outcome of :func:`fit_encoder`: per-epoch ``history``, the best epoch's ``state`` and dev
    confusion matrix ``cm``, ``best_epoch``, and whether the time limit stopped training."""

    history: list[dict[str, float]]
    state: dict[str, Any]
    cm: np.ndarray
    best_epoch: int
    stopped_early: bool


def fit_encoder(
    net: Any, data: EncoderData, epochs: int, batch_size: int, lr: float, seed: int, max_minutes: float,
    cancel: Optional[Any] = None,
) -> FitResult:  # fmt: skip
    """Class-balanced sampling (inverse square-root frequency), scanner augmentation of the raw views
    (:func:`~.view_augment.augment_views`), then the encoder channels; AdamW with a one-cycle schedule,
    cross-entropy on the cosine head with label smoothing 0.1; stops after ``epochs`` or ``max_minutes``.
    Keeps the weights of the epoch with the best image-level balanced accuracy on the dev split."""
    import torch
    import torch.nn.functional as F

    t0 = time.time()
    x_tr, y_tr = data.x_train, data.y_train
    counts = torch.bincount(y_tr, minlength=len(data.classes)).clamp(min=1).float()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = max(1, len(y_tr) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    weights = (1.0 / counts[y_tr]).sqrt() / counts[y_tr].sqrt()  # class mass proportional to sqrt(count)
    history: list[dict[str, float]] = []
    best: Optional[FitResult] = None
    stopped_early = False
    net.train()
    bar = progress_bar(total=epochs * steps, desc="training encoder")
    for epoch in range(epochs):
        idx = torch.multinomial(weights, steps * batch_size, replacement=True, generator=gen)
        tot, n_ok, n_seen = 0.0, 0, 0
        for s in range(steps):
            check_cancel(cancel)
            b = idx[s * batch_size : (s + 1) * batch_size]
            xb = torch.from_numpy(encoder_channels(augment_views(x_tr[b], gen).numpy()))
            logits = net.logits(net(xb))
            loss = F.cross_entropy(logits, y_tr[b], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(b)
            n_ok += int((logits.argmax(1) == y_tr[b]).sum())
            n_seen += len(b)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=tot / n_seen)
        cm, bacc = dev_confusion(net, data)
        history.append({"epoch": epoch + 1, "loss": tot / n_seen, "train_acc": n_ok / n_seen,
                        "dev_balanced_acc": bacc, "dev_acc": float(np.trace(cm) / max(cm.sum(), 1)),
                        "elapsed_s": time.time() - t0})  # fmt: skip
        if best is None or bacc > max(h["dev_balanced_acc"] for h in history[:-1]):
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
    split: ProtocolSplit, data: EncoderData, fit: FitResult, settings: dict[str, Any], n_params: int,
    train_time: float,
) -> dict[str, Any]:  # fmt: skip
    """The encoder's model card (``card.json``): data, split, augmentation, network, training, the dev figures
    per class with the confusion matrix, time and versions. ``settings`` holds the arguments of
    :func:`train_encoder`."""
    import torch

    classes, cm, s = data.classes, fit.cm, settings
    per_class = {}
    for i, c in enumerate(classes):
        n = int(cm[i].sum())
        per_class[c] = {"n_dev_images": n, "recall": float(cm[i, i] / n) if n else None,
                        "precision": float(cm[i, i] / cm[:, i].sum()) if cm[:, i].sum() else None}  # fmt: skip
    counts_tr = np.bincount(data.y_train.numpy(), minlength=len(classes))
    recalls = [v["recall"] for v in per_class.values() if v["recall"] is not None]
    return {
        "name": "modelselector-encoder",
        "version": "2." + time.strftime("%Y%m%d", time.gmtime()),
        "code_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data_root": portable_data_root(split.root),
        "data": "the train part of the protocol split (split.json) of radiology_2d/labels.csv and the images of "
        f"manifest.csv; a 2D image gives one view, a volume {s['views_per_volume']} (three planes); multi-region "
        "images use their first region; non-radiology photographs form one class OT:OOD",
        "split_file": SPLIT_NAME,
        "split_digest": split.digest(),
        "split": "train / dev / test by source and patient, near-duplicates kept together, held-out sources "
        f"{split.meta.get('held_out_sources', {})}; epoch chosen on dev; test never read in training",
        "classes": classes,
        "excluded_classes_groups": data.excluded,
        "n_train_views": {c: int(counts_tr[i]) for i, c in enumerate(classes)},
        "n_groups": data.n_groups,
        "n_dev_images": data.n_dev_images,
        "n_items_skipped": len(data.skipped),
        "skipped": data.skipped[:20],
        "augmentation": augmentation_text(),
        "network": {"type": "plain CNN, stride-2 stem, cosine head", "channels": list(s["channels"]),
                    "embed_dim": EMBED_DIM, "image_size": s["image_size"], "n_params": int(n_params),
                    "input": "2 x S x S views: percentile-scaled and rank channels (see selection/views.py)"},
        "training": {"epochs_requested": s["epochs"], "epochs_run": len(fit.history),
                     "best_epoch": fit.best_epoch, "stopped_by_time_limit": fit.stopped_early,
                     "max_minutes": s["max_minutes"], "batch_size": s["batch_size"],
                     "optimizer": "AdamW, one-cycle lr", "lr": s["lr"], "loss": "cross-entropy, label smoothing 0.1",
                     "sampling": "inverse sqrt class-frequency", "threads": s["threads"], "history": fit.history},
        "validation": {
            "split": "dev",
            "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
            "accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
            "unit": "one image (class probabilities averaged over its views)",
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
    epochs: int = 40,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    max_minutes: float = 60.0,
    cancel: Optional[Any] = None,
    batch_size: int = 64,
    lr: float = 3e-3,
    min_groups: int = 2,
    views_per_volume: int = 18,
    channels: Sequence[int] = DEFAULT_CHANNELS,
    threads: Optional[int] = 1,
    split_file: Optional[os.PathLike | str] = None,
) -> dict[str, Any]:
    """Train the encoder on modality x body-region classes and write weights, card and the split.

    Data: the protocol split of ``data_root`` (:func:`~ModelSelectorLib.evaluation.selection_split.make_split`,
    or the one in ``split_file``): views of its ``train`` items, for every class with at least
    ``min_groups`` training groups (patients or near-duplicate groups; the others are listed in the card);
    the epoch is chosen on the ``dev`` items (:func:`fit_encoder`); ``test`` items are never read.

    Writes (atomically) into ``out_dir`` (default: the bundled encoder's folder): ``encoder.pt``,
    ``card.json``, ``README.md``, ``confusion.png`` and ``split.json``.

    Returns:
        the card (dict).

    Raises:
        DatasetError: no catalogue in ``data_root``; TrainingError: fewer than 2 classes;
        Cancelled: ``cancel`` was set (nothing written).
    """
    import torch

    settings = {
        k: v for k, v in locals().items() if k not in ("data_root", "out_dir", "cancel", "split_file")
    }
    t0 = time.time()
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    np.random.seed(seed)
    out = Path(out_dir) if out_dir is not None else encoder_dir()
    split = (ProtocolSplit.load(split_file, data_root) if split_file is not None
             else make_split(data_root, seed=seed, cancel=cancel))  # fmt: skip
    data = load_training_data(split, image_size, views_per_volume, min_groups, cancel)
    enc = Encoder.create(data.classes, image_size, channels)
    n_params = sum(p.numel() for p in enc.net.parameters())
    fit = fit_encoder(enc.net, data, epochs, batch_size, lr, seed, max_minutes, cancel)
    enc.net.load_state_dict(fit.state)
    enc.net.eval()
    enc.config["trained_epochs"] = len(fit.history)
    card = encoder_card(split, data, fit, settings, n_params, time.time() - t0)
    out.mkdir(parents=True, exist_ok=True)
    split.save(out / SPLIT_NAME, portable_data_root(split.root))
    enc.save(out / WEIGHTS_NAME)
    card["weights_bytes"] = (out / WEIGHTS_NAME).stat().st_size
    bacc = card["validation"]["balanced_accuracy"] or 0.0
    _plot_confusion(fit.cm, data.classes, out / "confusion.png",
                    f"dev split (best epoch {fit.best_epoch}), balanced acc {bacc:.3f}")  # fmt: skip
    write_json(out / "card.json", card)
    write_text(out / "README.md", card_markdown(card))
    return card


def card_markdown(card: dict[str, Any]) -> str:
    """The model card as Markdown (``Resources/encoder/README.md``)."""
    v = card["validation"]
    net, tr = card["network"], card["training"]
    lines = [
        "# ModelSelector image encoder — model card",
        "",
        f"Version {card['version']}, code {card['code_version']}, created {card['created']}, seed {card['seed']}.",
        "",
        f"Maps a 2D image or 3D volume to L2-normalised {net['embed_dim']}-d embeddings, one per 2D view (see "
        "`ModelSelectorLib/selection/views.py` and `selection/encoder.py`): channel 0 = the view's 1-99 % "
        "percentiles scaled to [0, 1], channel 1 = each pixel's rank among the view's pixels, so bit depth, units "
        "and windowing do not change the input; 3D volumes are resampled to a canonical 2 mm grid and sliced in "
        "three planes (20-80 % of the body extent). A cosine head over modality x region classes is used for "
        "training and `Encoder.classify`.",
        "",
        f"- Network: {net['type']}, channels {net['channels']}, {net['n_params']:,} parameters, views "
        f"{net['image_size']} px, weights {card.get('weights_bytes', 0) / 1e6:.1f} MB",
        f"- Data: {card['data']}",
        f"- Split (`{card['split_file']}`, digest {card['split_digest']}): {card['split']}",
        f"- Augmentation: {card['augmentation']}",
        f"- Training: {tr['epochs_run']} epochs (best on dev: {tr['best_epoch']}), {tr['optimizer']}, "
        f"{tr['loss']}, {tr['sampling']} sampling, {card['training_time_s'] / 60:.1f} min on {tr['threads']} CPU "
        "thread(s)",
        f"- Classes left out (fewer training patients than needed): {card['excluded_classes_groups'] or 'none'}",
        "",
        f"## Development split (unit: {v['unit']})",
        "",
        "These figures chose the epoch, so they are optimistic; the test-split figures are in "
        "`docs/selection-report.md`.",
        "",
        f"Accuracy {v['accuracy']:.3f}, balanced accuracy {(v['balanced_accuracy'] or 0.0):.3f}.",
        "",
        "| class | train views | train patients | dev images | recall | precision |",
        "|---|---|---|---|---|---|",
    ]
    for c in card["classes"]:
        pc = v["per_class"][c]

        def f(x: Optional[float]) -> str:
            return "-" if x is None else f"{x:.2f}"

        lines.append(f"| {c} | {card['n_train_views'][c]} | {card['n_groups'][c]} | {pc['n_dev_images']} | "
                     f"{f(pc['recall'])} | {f(pc['precision'])} |")  # fmt: skip
    lines += [
        "",
        "Confusion matrix (rows true, columns predicted): `confusion.png`, and `card.json` → "
        "`validation.confusion_matrix`.",
        "",
        "Limits: small classes hold few patients, so their figures are noisy; several classes come from one "
        "source, so the encoder can learn a dataset's style as well as anatomy (the test split's held-out "
        "sources measure how much). Data licences: the weights carry the most restrictive terms of their "
        "training images, listed per source in the data folder's MANIFEST.md and radiology_2d/labels.csv.",
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
