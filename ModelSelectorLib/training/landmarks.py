"""Training landmark heatmap networks, and the teacher–student variants of the distillation study.

Heatmaps: one channel per landmark (:class:`~ModelSelectorLib.models.landmarks.LandmarkSchema`). The
target of a landmark is a Gaussian of ``sigma`` pixels normalised to sum 1 over the image; the network
output is read as logits of a spatial softmax, and trained with cross-entropy to the target
distribution. Points are decoded to sub-pixel positions by the local centroid of the probability map
around its maximum (``decode="centroid"``) or a global soft-argmax (``decode="softargmax"``).

Variants (one function each, same splits and the same number of student optimisation steps)
    ``student_supervised`` (labelled fraction only; at 100 % the fully supervised reference),
    ``teacher_supervised``, ``offline_kd`` (teacher trained on the labelled fraction gives softened
    heatmaps with temperature ``T`` for unlabelled images; loss = CE(labels) + ``kd_weight`` * T^2 * KL),
    ``mean_teacher`` (EMA teacher of the student; consistency between the student on a strongly
    augmented view and the EMA teacher on a weakly augmented view, shift-equivariant), and
    ``uncertainty_kd`` (as ``offline_kd``, with each pixel of the distillation loss weighted by
    ``exp(-std/mean)`` of the teacher's Monte-Carlo-dropout samples).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any, Callable, Optional

import numpy as np

from ..datasets.landmarks import LandmarkCase
from ..errors import TrainingError
from ..models.heatmaps import decode_logits
from ..progress import check_cancel, progress_bar
from ..settings import check_settings


# --- heatmaps -----------------------------------------------------------------------------------------
def render_heatmaps(points: np.ndarray, mask: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """Gaussian target distributions, one channel per landmark.

    Args:
        points: ``(P, 2)`` ``(x, y)`` in pixels of the ``size x size`` grid (sub-pixel allowed).
        mask: ``(P,)`` bool; channels of missing landmarks are all zero.
        size: grid size.
        sigma: Gaussian standard deviation in pixels.

    Returns:
        ``(P, size, size)`` float32 in layout ``(x, y)``, each present channel summing to 1.
    """
    grid = np.arange(size, dtype=np.float64)
    out = np.zeros((len(points), size, size), dtype=np.float32)
    for c, ((x, y), ok) in enumerate(zip(np.asarray(points, float), np.asarray(mask, bool))):
        if not ok or not np.isfinite([x, y]).all():
            continue
        gx = np.exp(-0.5 * ((grid - x) / sigma) ** 2)
        gy = np.exp(-0.5 * ((grid - y) / sigma) ** 2)
        h = np.outer(gx, gy)
        total = h.sum()
        if total > 0:
            out[c] = h / total
    return out


# --- networks -----------------------------------------------------------------------------------------
#: MONAI UNet settings of the two model sizes (``channels`` doubled per level, stride 2). The teacher is one
#: level deeper (a 4 x 4 bottleneck at 64 px: the whole chest in its receptive field) and wider: at the same
#: number of steps it learns better than the student, which a teacher with residual units at four levels did not.
NETWORK_SIZES: dict[str, dict[str, Any]] = {
    "teacher": {"channels": [32, 64, 128, 256, 512], "num_res_units": 0, "dropout": 0.1},
    "student": {"channels": [16, 32, 64, 128], "num_res_units": 0, "dropout": 0.1},
    # the refinement stage: one heatmap on a 32 px patch (a 4 x 4 bottleneck) from the patch + 7 conditioning channels
    "refine": {"channels": [16, 32, 64, 128], "num_res_units": 0, "dropout": 0.1},
    # small sizes for tests and quick runs
    "teacher-tiny": {"channels": [16, 32, 64], "num_res_units": 1, "dropout": 0.1},
    "student-tiny": {"channels": [8, 16, 32], "num_res_units": 0, "dropout": 0.1},
    "refine-tiny": {"channels": [8, 16], "num_res_units": 0, "dropout": 0.1},
}


def network_def(size_name: str, n_points: int, in_channels: int = 1) -> dict[str, Any]:
    """MONAI config (``_target_`` + arguments) of a 2D UNet heatmap network ``size_name`` with ``n_points``
    output channels."""
    if size_name not in NETWORK_SIZES:
        raise TrainingError(f"unknown network size {size_name!r}; choose one of {', '.join(NETWORK_SIZES)}.")
    cfg = NETWORK_SIZES[size_name]
    return {"_target_": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": int(in_channels),
            "out_channels": int(n_points), "channels": list(cfg["channels"]),
            "strides": [2] * (len(cfg["channels"]) - 1), "num_res_units": int(cfg["num_res_units"]),
            "dropout": float(cfg["dropout"])}  # fmt: skip


def build_network(size_name: str, n_points: int, in_channels: int = 1) -> Any:
    """The 2D MONAI UNet of :func:`network_def`; output ``(B, P, X, Y)`` spatial-softmax logits."""
    from monai.networks.nets import UNet

    kwargs = {k: v for k, v in network_def(size_name, n_points, in_channels).items() if k != "_target_"}
    return UNet(**kwargs)


def count_parameters(network: Any) -> int:
    return int(sum(p.numel() for p in network.parameters()))


# --- training -------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LandmarkTrainConfig:
    """Settings shared by every variant (one configuration = one budget).

    Attributes:
        size: image size in pixels (square).
        sigma: target Gaussian standard deviation in pixels of the resized grid.
        steps: optimisation steps of every student (and of the teacher unless ``teacher_steps``).
        teacher_steps: optimisation steps of the teacher (default ``steps``).
        batch_size: labelled images per step (the semi-supervised variants add as many unlabelled ones).
        lr: Adam learning rate (cosine decay to 5 % over the steps).
        teacher / student: network sizes (keys of :data:`NETWORK_SIZES`).
        kd_weight: weight of the distillation / consistency loss.
        kd_temperature: softmax temperature of the teacher's heatmaps (T < 1 sharpens, T > 1 softens).
        ema_decay: mean-teacher EMA decay.
        mc_samples: Monte-Carlo dropout samples of the uncertainty-guided variant.
        augment_shift: largest random shift (pixels) of the augmentations.
        decode: ``"centroid"`` or ``"softargmax"``; decode_radius: centroid window half-width (px).
        shape_modes: modes of the point-distribution model that projects the coarse points (0: none).
        contour_modes: modes of the shape model the refined points are fitted to (the contour stage of
            :mod:`ModelSelectorLib.models.landmark_stages`; 0: none, the refined points are the answer).
        point_offsets: add the offset stage (with a contour stage): each landmark's mean error on the labelled
            training images, along and across its predicted contour, added to the final points.
        refine_steps: optimisation steps of the refinement stage (0: a single-stage model).
        refine_network: its size (a key of :data:`NETWORK_SIZES`); refine_points: landmarks per image and
            step (patches per step = ``batch_size * refine_points``).
        refine_jitter: standard deviation (fine-grid px) of the offset of a training patch's centre from the
            true landmark, the coarse stage's error it learns to correct (a fifth of the patches: twice as far).
        refine_sigma: target Gaussian (fine-grid px) of the refinement heatmaps; refine_lr: its learning rate.
        threads: torch CPU threads (0 = leave as is).
        device: torch device.
    """

    size: int = 64
    sigma: float = 1.5
    steps: int = 400
    teacher_steps: Optional[int] = None
    batch_size: int = 8
    lr: float = 1e-2
    teacher: str = "teacher"
    student: str = "student"
    kd_weight: float = 1.0
    kd_temperature: float = 1.0
    ema_decay: float = 0.99
    mc_samples: int = 4
    augment_shift: int = 4
    decode: str = "centroid"
    decode_radius: int = 5
    shape_modes: int = 0
    contour_modes: int = 0
    point_offsets: bool = False
    refine_steps: int = 0
    refine_network: str = "refine"
    refine_points: int = 16
    refine_jitter: float = 4.0
    refine_sigma: float = 1.5
    refine_lr: float = 3e-3
    threads: int = 0
    device: str = "cpu"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LandmarkTrainConfig:
        check_settings(cls, data, "landmark training")
        cfg = cls(**data)
        if cfg.size < 16 or cfg.steps < 1 or cfg.batch_size < 1 or cfg.sigma <= 0 or cfg.kd_temperature <= 0:
            raise TrainingError(
                "landmark settings need size >= 16, steps >= 1, batch_size >= 1, sigma > 0, kd_temperature > 0."
            )
        if (cfg.refine_steps < 0 or cfg.shape_modes < 0 or cfg.contour_modes < 0 or cfg.refine_points < 1
                or cfg.refine_sigma <= 0):  # fmt: skip
            raise TrainingError(
                "landmark settings need refine_steps >= 0, shape_modes >= 0, contour_modes >= 0, refine_points >= 1, "
                "refine_sigma > 0."
            )
        if cfg.point_offsets and (cfg.contour_modes <= 0 or cfg.refine_steps <= 0):
            raise TrainingError(
                "point_offsets are measured along and across the contours of the contour stage: set contour_modes "
                "> 0 and refine_steps > 0 with it, or leave it out."
            )
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Arrays:
    """Stacked training arrays: images ``(N, 1, X, Y)``, targets ``(N, P, X, Y)``, mask ``(N, P)`` (torch)."""

    images: Any
    targets: Any
    mask: Any


def stack_cases(cases: Sequence[LandmarkCase], sigma: float) -> Arrays:
    import torch

    if not cases:
        raise TrainingError("no cases to train on.")
    size = cases[0].image.shape[0]
    images = torch.from_numpy(np.stack([c.image for c in cases])[:, None].astype(np.float32))
    targets = torch.from_numpy(np.stack([render_heatmaps(c.points, c.mask, size, sigma) for c in cases]))
    mask = torch.from_numpy(np.stack([c.mask for c in cases]).astype(np.float32))
    return Arrays(images, targets, mask)


def seed_all(seed: int) -> Any:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Use ``n`` torch CPU threads inside the block (``n <= 0``: leave as is); the old number is restored."""
    import torch

    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def heatmap_ce(logits: Any, target: Any, mask: Any, weight: Any = None) -> Any:
    """Cross-entropy of spatial-softmax ``logits`` ``(B, P, X, Y)`` to target distributions, masked per
    channel (``mask`` ``(B, P)``), optionally weighted per pixel (``weight`` like ``target``); mean over
    annotated channels."""
    import torch

    logp = torch.log_softmax(logits.flatten(2), dim=2)
    t = target.flatten(2)
    if weight is not None:
        t = t * weight.flatten(2)
    ce = -(t * logp).sum(2)  # (B, P)
    return (ce * mask).sum() / mask.sum().clamp_min(1.0)


def augment(images: Any, gen: Any, shift: int, strong: bool = True) -> tuple[Any, Any]:
    """Random intensity augmentation (gamma, contrast, noise) and an integer shift of ``images``
    ``(B, 1, X, Y)``. Returns ``(augmented, (dx, dy))``; heatmaps follow with :func:`shift_maps`."""
    import torch

    b = images.shape[0]
    u = torch.rand((b, 4), generator=gen)
    gamma = torch.exp((u[:, 0] - 0.5) * (0.6 if strong else 0.2))[:, None, None, None]
    contrast = (1 + (u[:, 1] - 0.5) * (0.4 if strong else 0.1))[:, None, None, None]
    bright = ((u[:, 2] - 0.5) * (0.2 if strong else 0.05))[:, None, None, None]
    out = (images.clamp(0, 1) ** gamma) * contrast + bright
    if strong:
        out = out + 0.03 * torch.randn(out.shape, generator=gen)
    dx, dy = torch.randint(-shift, shift + 1, (2,), generator=gen).tolist() if shift > 0 else (0, 0)
    return shift_maps(out, dx, dy), (dx, dy)


def shift_maps(maps: Any, dx: int, dy: int, fill: float = 0.0) -> Any:
    """Shift ``(B, C, X, Y)`` by ``(dx, dy)`` pixels, filling uncovered pixels with ``fill``."""
    import torch

    if dx == 0 and dy == 0:
        return maps
    out = torch.full_like(maps, fill)
    nx, ny = maps.shape[-2:]
    sx = slice(max(dx, 0), nx + min(dx, 0))
    sy = slice(max(dy, 0), ny + min(dy, 0))
    tx = slice(max(-dx, 0), nx - max(dx, 0))
    ty = slice(max(-dy, 0), ny - max(dy, 0))
    out[..., sx, sy] = maps[..., tx, ty]
    return out


def _shift_targets(targets: Any, dx: int, dy: int) -> Any:
    """Shift target distributions and renormalise each non-empty channel to sum 1."""
    t = shift_maps(targets, dx, dy)
    s = t.flatten(2).sum(2, keepdim=True).unsqueeze(-1)
    return t / s.clamp_min(1e-12)


def make_optimizer(
    net: Any, cfg: LandmarkTrainConfig, steps: int, lr: Optional[float] = None
) -> tuple[Any, Any]:
    import torch

    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr if lr is None else lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s / max(steps, 1), 1.0)))
    )
    return opt, sched


def _batch(n: int, bs: int, gen: Any) -> Any:
    import torch

    return torch.randint(0, n, (bs,), generator=gen)


ProgressFn = Optional[Callable[[int, int, float], None]]


def train_supervised(
    labelled: Arrays,
    cfg: LandmarkTrainConfig,
    seed: int,
    size_name: str,
    steps: Optional[int] = None,
    cancel: Optional[Any] = None,
    desc: str = "train",
) -> Any:
    """Train a network of ``size_name`` on labelled heatmaps only (cross-entropy, shift + intensity
    augmentation). Returns the network in eval mode."""
    gen = seed_all(seed)
    net = build_network(size_name, labelled.targets.shape[1]).to(cfg.device)
    steps = int(steps or cfg.steps)
    opt, sched = make_optimizer(net, cfg, steps)
    net.train()
    bar = progress_bar(total=steps, desc=desc, leave=False)
    for _ in range(steps):
        check_cancel(cancel)
        idx = _batch(len(labelled.images), cfg.batch_size, gen)
        x, (dx, dy) = augment(labelled.images[idx], gen, cfg.augment_shift)
        t = _shift_targets(labelled.targets[idx], dx, dy)
        loss = heatmap_ce(net(x.to(cfg.device)), t.to(cfg.device), labelled.mask[idx].to(cfg.device))
        optimiser_step(opt, sched, loss)
        bar.update(1)
        bar.set_postfix(loss=loss.item())
    bar.close()
    return net.eval()


def optimiser_step(opt: Any, sched: Any, loss: Any) -> None:
    """One gradient step of ``opt`` on ``loss``, then one step of the learning-rate schedule."""
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def predict_logits(
    net: Any, images: Any, batch_size: int = 16, device: str = "cpu", dropout: bool = False
) -> Any:
    """Network output ``(N, P, X, Y)`` (float32, CPU) for ``images`` ``(N, 1, X, Y)``; with ``dropout``
    the dropout layers stay active (Monte-Carlo dropout)."""
    import torch

    net.eval()
    if dropout:
        for m in net.modules():
            if isinstance(m, torch.nn.Dropout) or m.__class__.__name__.startswith("Dropout"):
                m.train()
    outs = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            outs.append(net(images[i : i + batch_size].to(device)).float().cpu())
    net.eval()
    return torch.cat(outs) if outs else torch.zeros(0)


def predict_points(net: Any, images: Any, cfg: LandmarkTrainConfig) -> np.ndarray:
    """Decoded landmarks ``(N, P, 2)`` ``(x, y)`` of the resized grid."""
    return decode_logits(predict_logits(net, images, device=cfg.device), cfg.decode, cfg.decode_radius)


def teacher_targets(
    teacher: Any, images: Any, cfg: LandmarkTrainConfig, uncertainty: bool = False, seed: int = 0
) -> tuple[Any, Optional[Any]]:
    """Soft heatmaps of ``teacher`` for ``images``: ``softmax(logits / T)`` ``(N, P, X, Y)`` (float16), and
    with ``uncertainty`` per-pixel weights ``exp(-std / mean)`` over ``cfg.mc_samples`` MC-dropout
    samples of the (temperature-scaled) probabilities (float16, 1 where the samples agree)."""
    import torch

    t = float(cfg.kd_temperature)
    n = len(images)
    soft: Any = None
    weight: Any = None
    torch.manual_seed(seed)
    k = max(int(cfg.mc_samples), 2)
    for i in range(0, n, TEACHER_CHUNK):  # chunks keep the float32 intermediates small
        x = images[i : i + TEACHER_CHUNK]
        lg = predict_logits(teacher, x, device=cfg.device)
        s = torch.softmax(lg.flatten(2) / t, 2).reshape(lg.shape)
        if soft is None:
            soft = torch.zeros((n, *s.shape[1:]), dtype=torch.float16)
            weight = torch.zeros_like(soft) if uncertainty else None
        soft[i : i + len(x)] = s.half()
        if not uncertainty:
            continue
        mean, sq = torch.zeros_like(s), torch.zeros_like(s)
        for _ in range(k):
            lg = predict_logits(teacher, x, device=cfg.device, dropout=True)
            p = torch.softmax(lg.flatten(2) / t, 2).reshape(lg.shape)
            mean += p
            sq += p * p
        mean /= k
        std = (sq / k - mean * mean).clamp_min(0).sqrt()
        weight[i : i + len(x)] = torch.exp(-std / mean.clamp_min(1e-8)).half()
    return soft, weight


#: images per chunk when the teacher's soft targets are computed
TEACHER_CHUNK = 32


def train_distilled(
    labelled: Arrays,
    unlabelled_images: Any,
    soft: Any,
    cfg: LandmarkTrainConfig,
    seed: int,
    weights: Optional[Any] = None,
    cancel: Optional[Any] = None,
    desc: str = "distil",
) -> Any:
    """Student trained on labels plus the teacher's soft heatmaps of unlabelled images.

    Loss per step: ``CE(student(x_l), y_l) + kd_weight * T^2 * CE_w(student(x_u) / T, soft_u)``, where
    ``CE_w`` weights each pixel by ``weights`` (uncertainty-guided) or 1 (offline distillation). The
    same shift augments an unlabelled image and its soft target.
    """
    import torch

    gen = seed_all(seed)
    net = build_network(cfg.student, labelled.targets.shape[1]).to(cfg.device)
    opt, sched = make_optimizer(net, cfg, cfg.steps)
    t = float(cfg.kd_temperature)
    n_u = len(unlabelled_images)
    net.train()
    bar = progress_bar(total=cfg.steps, desc=desc, leave=False)
    for _ in range(cfg.steps):
        check_cancel(cancel)
        idx = _batch(len(labelled.images), cfg.batch_size, gen)
        x, (dx, dy) = augment(labelled.images[idx], gen, cfg.augment_shift)
        tl = _shift_targets(labelled.targets[idx], dx, dy)
        loss = heatmap_ce(net(x.to(cfg.device)), tl.to(cfg.device), labelled.mask[idx].to(cfg.device))
        if n_u:
            iu = _batch(n_u, cfg.batch_size, gen)
            xu, (ux, uy) = augment(unlabelled_images[iu], gen, cfg.augment_shift)
            su = _shift_targets(soft[iu].float(), ux, uy)
            wu = shift_maps(weights[iu].float(), ux, uy, 1.0) if weights is not None else None
            logits_u = net(xu.to(cfg.device)) / t
            ones = torch.ones(su.shape[:2], device=cfg.device)
            kd = heatmap_ce(logits_u, su.to(cfg.device), ones, None if wu is None else wu.to(cfg.device))
            loss = loss + cfg.kd_weight * t * t * kd
        optimiser_step(opt, sched, loss)
        bar.update(1)
        bar.set_postfix(loss=loss.item())
    bar.close()
    return net.eval()


def train_mean_teacher(
    labelled: Arrays,
    unlabelled_images: Any,
    cfg: LandmarkTrainConfig,
    seed: int,
    cancel: Optional[Any] = None,
    desc: str = "mean teacher",
) -> Any:
    """Mean teacher: the student learns from labels and from the consistency of its heatmaps on a strongly
    augmented view with those of its exponential-moving-average copy on a weakly augmented view (the
    teacher's maps shifted like the student's input). The consistency weight ramps up over the first
    30 % of steps. Returns the EMA teacher (the usual choice at test time), a student-sized network."""
    import copy

    import torch

    gen = seed_all(seed)
    net = build_network(cfg.student, labelled.targets.shape[1]).to(cfg.device)
    ema = copy.deepcopy(net)
    for p in ema.parameters():
        p.requires_grad_(False)
    opt, sched = make_optimizer(net, cfg, cfg.steps)
    n_u = len(unlabelled_images)
    pool = torch.cat([unlabelled_images, labelled.images]) if n_u else labelled.images
    net.train()
    ema.train()
    bar = progress_bar(total=cfg.steps, desc=desc, leave=False)
    for step in range(cfg.steps):
        check_cancel(cancel)
        idx = _batch(len(labelled.images), cfg.batch_size, gen)
        x, (dx, dy) = augment(labelled.images[idx], gen, cfg.augment_shift)
        tl = _shift_targets(labelled.targets[idx], dx, dy)
        loss = heatmap_ce(net(x.to(cfg.device)), tl.to(cfg.device), labelled.mask[idx].to(cfg.device))
        iu = _batch(len(pool), cfg.batch_size, gen)
        xw, (wx, wy) = augment(pool[iu], gen, 0, strong=False)
        xs, (sx, sy) = augment(pool[iu], gen, cfg.augment_shift, strong=True)
        with torch.no_grad():
            target = torch.softmax(ema(xw.to(cfg.device)).flatten(2), 2).reshape(-1, *tl.shape[1:])
        target = _shift_targets(target, sx - wx, sy - wy)
        ramp = math.exp(-5 * (1 - min(step / max(0.3 * cfg.steps, 1), 1.0)) ** 2)
        cons = heatmap_ce(net(xs.to(cfg.device)), target, torch.ones(target.shape[:2], device=cfg.device))
        loss = loss + cfg.kd_weight * ramp * cons
        optimiser_step(opt, sched, loss)
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            for pe, ps in zip(ema.parameters(), net.parameters()):
                pe.mul_(decay).add_(ps.detach(), alpha=1 - decay)
            for be, bs in zip(ema.buffers(), net.buffers()):
                be.copy_(bs)
        bar.update(1)
        bar.set_postfix(loss=loss.item())
    bar.close()
    return ema.eval()


#: the variants of the comparison, in report order
VARIANTS = ("student_supervised", "teacher_supervised", "offline_kd", "mean_teacher", "uncertainty_kd")
VARIANT_TITLES = {
    "student_supervised": "supervised student (baseline)",
    "teacher_supervised": "supervised teacher",
    "offline_kd": "offline distillation",
    "mean_teacher": "mean teacher",
    "uncertainty_kd": "uncertainty-guided distillation",
}


@dataclasses.dataclass
class VariantResult:
    """A trained network of one variant and the seconds its training took (teacher time not included
    for the distillation variants; it is reported with ``teacher_supervised``)."""

    network: Any
    seconds: float
    size_name: str


def run_variant(
    variant: str,
    labelled: Arrays,
    unlabelled_images: Any,
    cfg: LandmarkTrainConfig,
    seed: int,
    teacher: Optional[Any] = None,
    cancel: Optional[Any] = None,
) -> VariantResult:
    """Train ``variant`` (one of :data:`VARIANTS`). The distillation variants need ``teacher`` (trained
    with ``teacher_supervised`` on the same labelled images)."""
    with torch_threads(cfg.threads):
        return _run_variant(variant, labelled, unlabelled_images, cfg, seed, teacher, cancel)


def _run_variant(
    variant: str,
    labelled: Arrays,
    unlabelled_images: Any,
    cfg: LandmarkTrainConfig,
    seed: int,
    teacher: Optional[Any],
    cancel: Optional[Any],
) -> VariantResult:
    t0 = time.perf_counter()
    if variant == "student_supervised":
        net = train_supervised(labelled, cfg, seed, cfg.student, cancel=cancel, desc="student")
        return VariantResult(net, time.perf_counter() - t0, cfg.student)
    if variant == "teacher_supervised":
        net = train_supervised(labelled, cfg, seed, cfg.teacher, cfg.teacher_steps, cancel, desc="teacher")
        return VariantResult(net, time.perf_counter() - t0, cfg.teacher)
    if variant == "mean_teacher":
        net = train_mean_teacher(labelled, unlabelled_images, cfg, seed, cancel)
        return VariantResult(net, time.perf_counter() - t0, cfg.student)
    if variant in ("offline_kd", "uncertainty_kd"):
        if teacher is None:
            raise TrainingError(f"variant {variant} needs a trained teacher.")
        unc = variant == "uncertainty_kd"
        soft, weights = teacher_targets(teacher, unlabelled_images, cfg, uncertainty=unc, seed=seed)
        net = train_distilled(labelled, unlabelled_images, soft, cfg, seed, weights, cancel, desc=variant)
        return VariantResult(net, time.perf_counter() - t0, cfg.student)
    raise TrainingError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
