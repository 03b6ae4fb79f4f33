"""Fitting a segmentation network: optimiser, schedule, resumable checkpoints, validation."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import random
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import atomic
from ..progress import check_cancel, progress_bar
from .augmentation import train_transforms
from .config import CHECKPOINT_FILE, TrainConfig


def _loss(name: str) -> Any:
    from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss

    kw = {"to_onehot_y": True, "softmax": True}
    losses = {"dice": DiceLoss, "dicece": DiceCELoss, "dicece_batch": functools.partial(DiceCELoss, batch=True),
              "dicefocal": DiceFocalLoss}  # fmt: skip
    return losses[name](**kw)


def validate(
    network: Any, items: list[dict[str, np.ndarray]], roi: Sequence[int], n_classes: int, device: str,
    loss_fn: Optional[Any] = None, mode: str = "constant", overlap: float = 0.25,
) -> dict[str, Any]:  # fmt: skip
    """Mean foreground Dice over whole cases, and per class index (one sliding-window pass, no mirroring).

    Each case is scored as the project's evaluation scores it (:func:`~ModelSelectorLib.evaluation.metrics.
    dice_per_label`: 1.0 when both prediction and truth lack a label); a label that no case's truth holds cannot
    be measured on these cases and is left out (not counted as 0).

    Args:
        items: preprocessed cases, ``{"image": (1, x, y[, z]) float32, "label": (1, x, y[, z]) class indices}``.
        n_classes: network outputs (background included); labels ``1..n_classes-1`` are scored.
        loss_fn: when given, also the mean loss over the whole cases (``"loss"``).
        mode, overlap: sliding-window blending and overlap.

    Returns:
        ``{"dice": mean over the measured labels (0.0 when none is), "per_label": {class index: mean Dice over
        cases}}`` (+ ``"loss"`` with ``loss_fn``).
    """
    import torch
    from monai.inferers import sliding_window_inference

    from ..evaluation.metrics import dice_per_label

    values = list(range(1, int(n_classes)))
    scores: dict[int, list[float]] = {v: [] for v in values}
    present: set[int] = set()
    losses = []
    network.eval()
    with torch.inference_mode():
        for item in items:
            x = torch.from_numpy(item["image"])[None].to(device)
            logits = sliding_window_inference(x, list(roi), 4, network, overlap=overlap, mode=mode)
            if loss_fn is not None:
                y = torch.from_numpy(item["label"].astype(np.int64))[None].to(device)
                losses.append(float(loss_fn(logits, y)))
            pred = logits.argmax(1)[0].cpu().numpy()
            truth = np.asarray(item["label"][0])
            present |= {int(v) for v in np.unique(truth)}
            for v, d in dice_per_label(pred, truth, values).items():
                scores[v].append(d)
    per_label = {v: float(np.mean(scores[v])) for v in values if v in present and scores[v]}
    out: dict[str, Any] = {"dice": float(np.mean(list(per_label.values()))) if per_label else 0.0,
                           "per_label": per_label}  # fmt: skip
    if losses:
        out["loss"] = float(np.mean(losses))
    return out


def peak_memory_mb() -> float:
    """Peak resident memory of this process since it started or since :func:`reset_peak_memory`, in MiB
    (``resource.getrusage`` ``ru_maxrss``)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(rss) / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)


def reset_peak_memory(device: str = "cpu") -> bool:
    """Start :func:`peak_memory_mb` again from the current resident memory, so that a run measures its own peak
    and not that of an earlier run in the same process (several folds, or a build that trains its final model
    after them); on a CUDA ``device`` also torch's peak of GPU memory (:func:`training_device`). Linux only
    (``/proc/self/clear_refs``); returns whether the reset of the resident memory took place."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(device)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def training_device(device: str) -> str:
    """Where a model was trained, for its card: ``"CPU, 2 torch threads"``, or on a GPU its name and torch's peak
    of allocated GPU memory since :func:`reset_peak_memory` (``"CUDA: NVIDIA H200, peak GPU memory 812 MiB"``),
    since a training time means little without the hardware it was measured on."""
    import torch

    kind = torch.device(device).type
    if kind == "cpu":
        n = torch.get_num_threads()
        return f"CPU, {n} torch thread{'s' if n != 1 else ''}"
    if kind != "cuda":
        return str(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    return f"CUDA: {torch.cuda.get_device_name(device)}, peak GPU memory {peak:.0f} MiB"


def run_peak_memory_mb(res: FitResult) -> float:
    """Peak memory of the run ``res`` including what happened after :func:`fit` returned (evaluation, export),
    in MiB: the process's peak counts only if this call trained, since a run resumed at its end did its work in
    another process, or earlier in this one."""
    trained_now = res.resumed_from < len(res.history)
    return round(max(res.peak_memory_mb, peak_memory_mb()) if trained_now else res.peak_memory_mb, 1)


def _optimizer(network: Any, config: TrainConfig) -> Any:
    import torch

    params = network.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=0.99, nesterov=True, weight_decay=config.weight_decay
        )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Learning-rate multiplier at optimiser step ``step`` of ``total``: ``constant`` 1, ``poly``
    ``(1 - step / total) ** 0.9`` (nnU-Net), ``cosine`` ``0.5 * (1 + cos(pi * step / total))``."""
    t = min(max(step / max(total, 1), 0.0), 1.0)
    if schedule == "poly":
        return (1.0 - t) ** 0.9
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0


def _rng_state() -> dict[str, Any]:
    """torch, numpy and Python random states in a form ``torch.load(weights_only=True)`` reads; with the
    GPUs' states too when the run has used CUDA (asking earlier would start CUDA on a CPU run)."""
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)),
             int(pos), int(has_gauss), float(cached)], "python": random.getstate()}  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    # a run resumed on another machine may see other GPUs (or none): their streams then start afresh
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def save_checkpoint(path: os.PathLike[str] | str, state: dict[str, Any]) -> None:
    """``torch.save`` ``state`` to ``path`` atomically (temporary file, then rename)."""
    import torch

    with atomic.atomic_path(path) as tmp:
        torch.save(state, str(tmp))


def load_checkpoint(path: os.PathLike[str] | str, fingerprint: str) -> Optional[dict[str, Any]]:
    """The checkpoint at ``path`` if it was written for ``fingerprint`` (else ``None``); tensors only
    (``torch.load(weights_only=True)``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # a foreign or damaged file: start again  # noqa: BLE001
        return None
    return state if isinstance(state, dict) and state.get("fingerprint") == fingerprint else None


def _resume(path: Optional[Path], fingerprint: str, model: Any, optimizer: Any, scheduler: Any
            ) -> Optional[dict[str, Any]]:  # fmt: skip
    """The checkpoint at ``path`` written for ``fingerprint``, with its weights, optimiser, schedule and random
    states restored; ``None`` (nothing restored) when there is none."""
    ckpt = load_checkpoint(path, fingerprint) if path is not None else None
    if ckpt is None and path is not None and path.is_file():  # said, since the run it holds is then replaced
        print(f"modelselector: {path} holds a run of other settings; training starts afresh and replaces it "
              "(pass another work folder to keep it).", file=sys.stderr)  # fmt: skip
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"])
    return ckpt


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        state: the kept weights (``config.keep``: best validation Dice or last epoch).
        best: validation result of the kept weights (``{"dice", "per_label"}``), ``{}`` if never validated.
        history: one ``{"epoch", "train_loss", "lr", "seconds"[, "val_loss", "val_dice"]}`` per epoch.
        seconds: training wall time, summed over resumed runs.
        resumed_from: epochs already done when this run started (0: a fresh start).
        peak_memory_mb: highest peak resident memory of the runs (MiB).
    """

    state: dict[str, Any]
    best: dict[str, Any]
    history: list[dict[str, Any]]
    seconds: float
    resumed_from: int = 0
    peak_memory_mb: float = 0.0


def _autocast(config: TrainConfig) -> Any:
    """The autocast context of ``config.precision`` on ``config.device`` (disabled for ``"fp32"``)."""
    import torch

    return torch.autocast(
        torch.device(config.device).type, dtype=torch.bfloat16, enabled=config.precision == "bf16"
    )


def training_memory_format(spatial_dims: int, device: Any) -> Any:
    """The layout a network trains in: channels-last for 3D networks on the CPU, where oneDNN's 3D
    convolutions run about 1.2x faster per step in it (``benchmarks/bench_train_step.py``); else contiguous.

    Like the thread count it changes the order of the arithmetic, not what is computed, so it is not part of a
    run's fingerprint; weights go back to the contiguous layout when training ends."""
    import torch

    if spatial_dims == 3 and torch.device(device).type == "cpu":
        return torch.channels_last_3d
    return torch.contiguous_format


def _contiguous_state(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with every tensor in the contiguous layout, keeping tensors that share storage shared: DynUNet
    registers its blocks twice (``skip_layers``), and saving each alias as its own copy doubles the weights file."""
    copies: dict[tuple, Any] = {}
    out = {}
    for key, value in state.items():
        alias = (
            value.untyped_storage().data_ptr(),
            value.storage_offset(),
            tuple(value.shape),
            value.stride(),
        )
        out[key] = copies.setdefault(alias, value.contiguous())
    return out


def _train_epoch(
    network: Any, loader: Any, steps: int, optimizer: Any, scheduler: Any, loss_fn: Any, config: TrainConfig,
    cancel: Optional[Any], memory_format: Any = None,
) -> list[float]:  # fmt: skip
    """``steps`` optimiser steps on batches of ``loader`` (cycled when it runs out); the losses.

    ``memory_format``: the layout of ``network``'s weights (:func:`training_memory_format`); the input
    batches are put in it too.
    """
    import torch

    memory_format = memory_format or torch.contiguous_format
    losses: list[float] = []
    batches = iter(loader)
    for _ in range(steps):
        check_cancel(cancel)
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        x, y = batch["image"].to(config.device), batch["label"].to(config.device)
        x = x.contiguous(memory_format=memory_format)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(config):
            logits = network(x)
        loss = loss_fn(logits.float(), y)  # softmax and Dice in float32 whatever the forward pass ran in
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(network.parameters(), float(config.grad_clip))
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    return losses


def _patch_loader(
    train_items: list[dict[str, np.ndarray]], config: TrainConfig, roi: Sequence[int],
    flips: Optional[Sequence[int]], spacing: Optional[Sequence[float]],
) -> tuple[Any, Any, Any]:  # fmt: skip
    """The patch transforms, a shuffling loader of the training cases and its generator (both seeded per epoch)."""
    import torch
    from monai.data import DataLoader, Dataset

    transforms = train_transforms(config, roi, len(roi), flips, spacing)
    generator = torch.Generator()
    loader = DataLoader(Dataset(train_items, transforms), batch_size=config.batch_size, shuffle=True,
                        num_workers=config.num_workers, generator=generator)  # fmt: skip
    return transforms, loader, generator


def _optimizer_and_schedule(model: Any, config: TrainConfig, total_steps: int) -> tuple[Any, Any]:
    """The optimiser of ``config`` and its learning-rate schedule over ``total_steps`` steps."""
    import torch

    optimizer = _optimizer(model, config)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(config.lr_schedule, step, total_steps)
    )
    return optimizer, schedule


def _handed_back(
    network: Any, twin: Any, state: dict[str, Any], best: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The kept weights as :func:`fit` returns them: contiguous, in ``network``'s shapes when a 2D ``twin``
    trained them, and their validation summary (empty when nothing was validated)."""
    state = _contiguous_state(state)
    if twin is not None:
        state = twin.export_to(network, state)
    return state, (best if best["dice"] >= 0 else {})


def fit(
    network: Any, train_items: list[dict[str, np.ndarray]], val_items: list[dict[str, np.ndarray]],
    config: TrainConfig, n_classes: int, roi: Sequence[int], cancel: Optional[Any] = None,
    flips: Optional[Sequence[int]] = None, spacing: Optional[Sequence[float]] = None,
    work_dir: Optional[os.PathLike[str] | str] = None, fingerprint: Optional[str] = None,
    net_def: Optional[dict[str, Any]] = None,
) -> FitResult:  # fmt: skip
    """Train ``network`` on patches of ``train_items`` for ``config.epochs`` epochs.

    An epoch is ``config.steps_per_epoch`` optimiser steps (default one pass over the cases), each on
    ``batch_size * num_samples`` patches of size ``roi``. The patch transforms and the case order are seeded
    per epoch, so a resumed run continues exactly. Validation (``val_items``, else the training cases) every
    ``val_interval`` epochs and after the last.

    Args:
        roi: patch size in voxels.
        flips: mirroring axes of augmentation (default every axis).
        spacing: network grid spacing (mm); used by the ``nnunet`` augmentation (in-plane rotation for
            anisotropic grids).
        work_dir: folder of the checkpoint (:data:`CHECKPOINT_FILE`), written atomically after every epoch;
            a checkpoint with the same ``fingerprint`` there is resumed. ``None``: no checkpoint.
        fingerprint: identifies the run (default ``config.fingerprint()``); include the case lists.
        net_def: ``network``'s MONAI config; when it is a slice-wise 3D ``DynUNet`` on ``roi``, training runs on
            its 2D twin (:mod:`.slice_twin`: the same function, an epoch about 1.5x faster on CPU) and the weights go
            back into ``network``'s shapes.

    Raises:
        Cancelled: ``cancel`` was set (the last epoch's checkpoint stays).
    """
    import torch

    from .slice_twin import slice_twin

    t_start = time.monotonic()
    roi = [int(r) for r in roi]
    transforms, loader, generator = _patch_loader(train_items, config, roi, flips, spacing)
    steps = int(config.steps_per_epoch or len(loader))
    twin = slice_twin(network, net_def, roi) if net_def is not None else None
    model = twin if twin is not None else network
    memory_format = training_memory_format(len(roi) if twin is None else 2, config.device)
    model.to(memory_format=memory_format)
    optimizer, scheduler = _optimizer_and_schedule(model, config, steps * config.epochs)
    loss_fn = _loss(config.loss)
    # a twin's checkpoint holds 2D weights
    fingerprint = (fingerprint or config.fingerprint()) + (":slice-twin" if twin is not None else "")
    ckpt_path = Path(work_dir) / CHECKPOINT_FILE if work_dir is not None else None
    history: list[dict[str, Any]] = []
    best_state, best = copy.deepcopy(model.state_dict()), {"dice": -1.0, "per_label": {}}
    start, elapsed, peak = 0, 0.0, 0.0
    ckpt = _resume(ckpt_path, fingerprint, model, optimizer, scheduler)
    if ckpt is not None:
        best_state, best = ckpt["best_state"], ckpt["best"]
        history, start = list(ckpt["history"]), int(ckpt["epoch"])
        elapsed, peak = float(ckpt["seconds"]), float(ckpt.get("peak_memory_mb", 0.0))
    resumed_from, trains = start, start < config.epochs
    if trains:  # the peak of this run, not of an earlier one in the process
        reset_peak_memory(config.device)
    bar = progress_bar(total=config.epochs, initial=start, desc="train")
    try:
        for epoch in range(start, config.epochs):
            t_epoch, epoch_seed = time.monotonic(), int(config.seed) * 100003 + epoch
            model.train()
            transforms.set_random_state(seed=epoch_seed % (2**32))
            generator.manual_seed(epoch_seed)
            losses = _train_epoch(
                model, loader, steps, optimizer, scheduler, loss_fn, config, cancel, memory_format
            )
            entry: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                                     "lr": float(optimizer.param_groups[0]["lr"])}  # fmt: skip
            post: dict[str, Any] = {"loss": entry["train_loss"]}
            last = epoch + 1 == config.epochs
            if (epoch + 1) % config.val_interval == 0 or last:
                res = validate(model, val_items or train_items, roi, n_classes, config.device, loss_fn,
                               config.sw_mode, config.sw_overlap)  # fmt: skip
                if res["dice"] > best["dice"] if config.keep == "best" else last:  # keep these weights
                    best, best_state = {k: res[k] for k in ("dice", "per_label")}, copy.deepcopy(model.state_dict())  # fmt: skip
                entry.update(val_loss=res.get("loss"), val_dice=res["dice"])
                post.update(dice=res["dice"], **({"best": best["dice"]} if config.keep == "best" else {}))
            entry["seconds"] = round(time.monotonic() - t_epoch, 2)
            history.append({k: v for k, v in entry.items() if v is not None})
            peak = max(peak, peak_memory_mb())
            if ckpt_path is not None:
                save_checkpoint(ckpt_path, {
                    "fingerprint": fingerprint, "epoch": epoch + 1, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "best_state": best_state, "best": best, "history": history,
                    "seconds": elapsed + time.monotonic() - t_start, "peak_memory_mb": peak, "rng": _rng_state(),
                })  # fmt: skip
            bar.update(1)
            bar.set_postfix(**post)
    finally:  # a cancelled or failed run, too, hands the network back in the contiguous layout
        bar.close()
        model.to(memory_format=torch.contiguous_format)
    best_state, best = _handed_back(network, twin, best_state, best)
    if trains:
        peak = max(peak, peak_memory_mb())
    return FitResult(best_state, best, history, round(elapsed + time.monotonic() - t_start, 2), resumed_from,
                     round(peak, 1))  # fmt: skip
