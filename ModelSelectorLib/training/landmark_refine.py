"""Training the later stages of a coarse-to-fine landmark model: the shape models and the refinement network.

The refinement network (:mod:`ModelSelectorLib.models.landmark_stages`) learns from patches of the labelled
images on the fine grid (``REFINE_SCALE`` x the coarse size). A training patch is centred on a true landmark
moved by a random offset, the kind of error the coarse stage makes (Gaussian, ``refine_jitter`` fine-grid
pixels per axis; a fifth of the patches twice as far); its target is a Gaussian at the true position, and the
conditioning channels say which landmark it is. Each step draws ``batch_size`` images and ``refine_points``
annotated landmarks of each, with the intensity augmentation of the coarse stage.

The assembled model (:func:`pipeline_network`) is one ``torch.nn.ModuleDict`` of MONAI/torch modules, so a
bundle stores every stage in ``models/model.pt``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from ..datasets.landmarks import LandmarkCase
from ..errors import TrainingError
from ..models.landmark_stages import (
    CONDITIONING_CHANNELS,
    REFINE_PATCH,
    contour_model_def,
    crop_patches,
    fit_contour_model,
    fit_shape_model,
    offset_model_def,
    refine_input,
    shape_model_def,
)
from ..progress import check_cancel, progress_bar
from .landmarks import (
    LandmarkTrainConfig,
    augment,
    build_network,
    heatmap_ce,
    make_optimizer,
    network_def,
    optimiser_step,
    seed_all,
    torch_threads,
)

#: share of refinement training patches whose centre is moved twice as far (the coarse stage's larger errors)
FAR_PATCH_SHARE = 0.2


@dataclasses.dataclass
class FineArrays:
    """Labelled images on the fine grid: images ``(N, X, Y)``, points ``(N, P, 2)`` ``(x, y)`` (NaN where
    missing) and mask ``(N, P)`` (torch)."""

    images: Any
    points: Any
    mask: Any


def fine_arrays(cases: Sequence[LandmarkCase]) -> FineArrays:
    """Stack fine-grid cases (loaded at ``REFINE_SCALE`` x the coarse size) for :func:`train_refiner`."""
    import torch

    if not cases:
        raise TrainingError("no labelled cases for the refinement stage.")
    return FineArrays(
        torch.from_numpy(np.stack([c.image for c in cases]).astype(np.float32)),
        torch.from_numpy(np.stack([c.points for c in cases]).astype(np.float32)),
        torch.from_numpy(np.stack([c.mask for c in cases])),
    )


def gaussian_targets(centres: Any, size: int, sigma: float) -> Any:
    """Target distributions ``(B, 1, size, size)`` (layout x, y; each sums to 1) of Gaussians at ``centres``
    ``(B, 2)`` (pixels, sub-pixel allowed)."""
    import torch

    grid = torch.arange(size, dtype=torch.float32)
    gx = torch.exp(-0.5 * ((grid[None] - centres[:, :1]) / sigma) ** 2)
    gy = torch.exp(-0.5 * ((grid[None] - centres[:, 1:]) / sigma) ** 2)
    h = gx[:, :, None] * gy[:, None, :]
    return (h / h.flatten(1).sum(1).clamp_min(1e-12)[:, None, None])[:, None]


def _draw_landmarks(mask: Any, k: int, gen: Any) -> Any:
    """``k`` annotated landmark indices per image of ``mask`` ``(B, P)`` (with replacement when fewer)."""
    import torch

    weights = mask.float() + 1e-9 * (~mask.any(1, keepdim=True)).float()  # an image with none: any landmark
    few = int(mask.sum(1).min()) < k
    return torch.multinomial(weights, k, replacement=few, generator=gen)


def train_refiner(
    data: FineArrays,
    conditioning: np.ndarray,
    cfg: LandmarkTrainConfig,
    seed: int,
    cancel: Optional[Any] = None,
    desc: str = "refine",
) -> Any:
    """Train the refinement network on patches of ``data`` (see the module docstring).

    Args:
        data: labelled images on the fine grid.
        conditioning: ``(P, CONDITIONING_CHANNELS)`` of :func:`~ModelSelectorLib.models.landmark_stages.landmark_conditioning`.
        cfg: ``refine_*`` settings, ``batch_size`` images per step.

    Returns:
        the network (eval mode): input ``(B, 1 + C, S, S)``, output ``(B, 1, S, S)`` logits.
    """
    import torch

    with torch_threads(cfg.threads):
        gen = seed_all(seed)
        net = build_network(cfg.refine_network, 1, in_channels=1 + CONDITIONING_CHANNELS).to(cfg.device)
        opt, sched = make_optimizer(net, cfg, cfg.refine_steps, lr=cfg.refine_lr)
        cond = torch.from_numpy(np.asarray(conditioning, np.float32))
        usable = torch.nonzero(data.mask.any(1)).flatten()
        net.train()
        bar = progress_bar(total=cfg.refine_steps, desc=desc, leave=False)
        for _ in range(cfg.refine_steps):
            check_cancel(cancel)
            ii = usable[torch.randint(0, len(usable), (cfg.batch_size,), generator=gen)]
            lm = _draw_landmarks(data.mask[ii], cfg.refine_points, gen)  # (B, K)
            true = data.points[ii[:, None], lm]  # (B, K, 2)
            far = torch.rand(true.shape[:2] + (1,), generator=gen) < FAR_PATCH_SHARE
            centre = true + cfg.refine_jitter * (1.0 + far.float()) * torch.randn(true.shape, generator=gen)
            images = augment(data.images[ii][:, None], gen, 0)[0][:, 0]
            patches, origin = crop_patches(images, centre, REFINE_PATCH)
            rel = (true - origin.float()).reshape(-1, 2)
            inside = ((rel >= 0) & (rel <= REFINE_PATCH - 1)).all(1).float()[:, None]
            target = gaussian_targets(rel, REFINE_PATCH, cfg.refine_sigma)
            x = refine_input(patches, cond[lm.reshape(-1)]).to(cfg.device)
            loss = heatmap_ce(net(x), target.to(cfg.device), inside.to(cfg.device))
            optimiser_step(opt, sched, loss)
            bar.update(1)
            bar.set_postfix(loss=loss.item())
        bar.close()
    return net.eval()


def complete_shapes(cases: Sequence[LandmarkCase]) -> np.ndarray:
    """``(N, P, 2)`` coarse-grid points of the cases with every landmark annotated (the shape model's data)."""
    full = [c.points for c in cases if bool(np.all(c.mask))]
    return np.stack(full) if full else np.zeros((0, len(cases[0].mask) if cases else 0, 2))


def fit_shape(
    cases: Sequence[LandmarkCase], n_modes: int, extra: Optional[np.ndarray] = None
) -> Optional[Any]:
    """The shape model of the complete labelled ``cases`` and the ``extra`` shapes ``(M, P, 2)`` on the same grid
    (outlines without images; None when ``n_modes`` is 0 or there are fewer than 3 shapes in all: too few to
    learn modes from)."""
    return _fit_complete(cases, n_modes, fit_shape_model, extra)


def fit_contour_stage(cases: Sequence[LandmarkCase], n_modes: int, extra: Optional[np.ndarray] = None
                      ) -> Optional[Any]:  # fmt: skip
    """The contour stage's shape model of the complete labelled ``cases`` and the ``extra`` shapes
    (:func:`fit_contour_model`; None as for :func:`fit_shape`)."""
    return _fit_complete(cases, n_modes, fit_contour_model, extra)


def _fit_complete(cases: Sequence[LandmarkCase], n_modes: int, fit: Any, extra: Optional[np.ndarray]
                  ) -> Optional[Any]:  # fmt: skip
    shapes = complete_shapes(cases)
    if extra is not None and len(extra):
        shapes = np.concatenate([shapes, np.asarray(extra, dtype=shapes.dtype)])
    if n_modes <= 0 or len(shapes) < 3:
        return None
    return fit(shapes, n_modes)


def pipeline_network(
    coarse: Any,
    shape: Optional[Any] = None,
    refine: Optional[Any] = None,
    contour: Optional[Any] = None,
    offset: Optional[Any] = None,
) -> Any:
    """The stages as one ``torch.nn.ModuleDict`` (``coarse`` alone when there is no later stage; the contour
    stage only with a refinement stage, whose points it fits; the offset stage only with a contour stage, whose
    frames it uses)."""
    import torch

    if shape is None and refine is None:
        return coarse
    stages = {"coarse": coarse}
    if shape is not None:
        stages["shape"] = shape
    if refine is not None:
        stages["refine"] = refine
        if contour is not None:
            stages["contour"] = contour
            if offset is not None:
                stages["offset"] = offset
    return torch.nn.ModuleDict(stages)


def pipeline_def(size_name: str, n_points: int, network: Any, cfg: LandmarkTrainConfig) -> dict[str, Any]:
    """MONAI config of :func:`pipeline_network`'s result ``network`` (a plain UNet or the stages)."""
    import torch

    coarse = network_def(size_name, n_points)
    if not isinstance(network, torch.nn.ModuleDict):
        return coarse
    modules: dict[str, Any] = {"coarse": coarse}
    if "shape" in network:
        modules["shape"] = shape_model_def(n_points, int(network["shape"]["encode"].out_features))
    if "refine" in network:
        modules["refine"] = network_def(cfg.refine_network, 1, in_channels=1 + CONDITIONING_CHANNELS)
    if "contour" in network:
        modules["contour"] = contour_model_def(n_points, int(network["contour"].in_features))
    if "offset" in network:
        modules["offset"] = offset_model_def(n_points)
    return {"_target_": "torch.nn.ModuleDict", "modules": modules}


__all__ = [
    "FineArrays",
    "complete_shapes",
    "fine_arrays",
    "fit_contour_stage",
    "fit_shape",
    "gaussian_targets",
    "pipeline_def",
    "pipeline_network",
    "train_refiner",
]
