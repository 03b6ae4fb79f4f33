"""The stages of a coarse-to-fine landmark model, shared by training and inference.

A landmark bundle's network is either one MONAI ``UNet`` (a single-stage model: heatmaps on the whole image
resized to ``roi_size``) or a ``torch.nn.ModuleDict`` of stages, all built from MONAI/torch classes so that the
bundle stays a plain MONAI bundle with every weight in ``models/model.pt``::

    "coarse"  UNet, 1 -> P channels: heatmaps of every landmark on the whole image at roi_size (e.g. 64 px)
    "shape"   ModuleDict {"encode": Linear(2P, k), "decode": Linear(k, 2P)}: a point-distribution model
              (PCA of the training shapes) that projects the coarse points onto the k main modes of shape
    "refine"  UNet, 1 + C -> 1 channel: one heatmap on a REFINE_PATCH x REFINE_PATCH patch of the image
              resized to REFINE_SCALE x roi_size (e.g. 256 px, 1.4 mm per pixel on a 512 px JSRT radiograph),
              centred on the coarse estimate of one landmark; the C conditioning channels say which landmark
              (:func:`landmark_conditioning`)
    "contour" (optional) Linear(k, 2P): a generative shape model with more modes, ``mean + modes * sd @ b`` for
              standardised mode weights ``b``, that the refined points are fitted to (:func:`fit_contour`)
    "offset"  (optional, with a contour stage) Linear(1, 2P) whose bias holds each landmark's constant offset
              ``(along, across)`` its predicted contour, in coarse-grid pixels: the whole model's mean error on
              its training images, added to the final points (:func:`apply_offsets`)

The refinement sees local detail the coarse grid cannot resolve (a 64 px grid is 5.6 mm per pixel on JSRT);
the shape model keeps the coarse points a plausible set of outlines before they are refined. A patch shows
where the edge is, not where along the edge a point belongs (the whole outline sets that: the annotation
places points at anatomical corners and spaces the others between them), so the refined points are close
across their contour and scattered along it. The contour stage fits the shape model to them trusting each point across its contour and
hardly along it, refines again from there, fits again, and moves each fitted point onto the refined outline.

Layout: images are ``(x, y)`` (network layout), points ``(x, y)`` in pixels of the grid they belong to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from .heatmaps import decode_logits

#: the refinement works on the image resized to this multiple of the coarse grid (64 px -> 256 px)
REFINE_SCALE = 4
#: side of the refinement patches in pixels of the fine grid (32 px = 45 mm on a 512 px JSRT radiograph)
REFINE_PATCH = 32
#: half-width in pixels of the window in which a refined heatmap is decoded (local centroid)
REFINE_DECODE_RADIUS = 4
#: conditioning channels of the refinement input: one-hot landmark group (5) + cos, sin of the point's phase
CONDITIONING_CHANNELS = 7
#: the stage names of a coarse-to-fine network
LANDMARK_STAGES = ("coarse", "shape", "refine", "contour", "offset")
#: weight of a refined point's offset along its contour against across it, when the contour stage fits the shape
#: model. Chosen on the 22 validation images of the chest X-ray model (60 modes, the other settings as here; mean
#: radial error): 1.0 (a plain projection) 4.87 mm, 0.3 4.78, 0.1 4.71, 0.03 4.72; no contour stage 5.20 mm
CONTOUR_ALONG_WEIGHT = 0.1
#: ridge weight on the standardised mode weights (a Gaussian prior, in units of squared coarse-grid pixels);
#: chosen on the same images with one round and no final move onto the outline: 0 4.89 mm, 0.3 4.84, 1.0 4.99
CONTOUR_PRIOR = 0.3
#: fits of the contour stage, each but the last followed by another refinement (same images: 1 round 4.80 mm,
#: 2 4.71, 3 4.72)
CONTOUR_ROUNDS = 2


def landmark_conditioning(names: Sequence[str], groups: dict[str, int]) -> np.ndarray:
    """Which landmark a refinement patch is about, as ``(P, CONDITIONING_CHANNELS)`` float32 values.

    Args:
        names: point names ``GROUP_NN`` (``NN`` = index in the group's whole contour).
        groups: ``{group: number of contour points}`` in a fixed order (the one-hot's order).

    Returns:
        per point: a one-hot of its group (``len(groups)`` columns, padded to 5) and ``cos``, ``sin`` of
        ``2 pi NN / n_group`` (its position around the contour).
    """
    order = list(groups)
    n_hot = CONDITIONING_CHANNELS - 2
    out = np.zeros((len(names), CONDITIONING_CHANNELS), np.float32)
    for i, name in enumerate(names):
        group, _, idx = str(name).rpartition("_")
        k = order.index(group) if group in order else -1
        if 0 <= k < n_hot:
            out[i, k] = 1.0
        phase = 2.0 * math.pi * float(idx or 0) / float(groups.get(group, 1))
        out[i, n_hot], out[i, n_hot + 1] = math.cos(phase), math.sin(phase)
    return out


def crop_patches(images: Any, centres: Any, size: int) -> tuple[Any, Any]:
    """Square patches of ``images`` around ``centres`` (zero outside the image).

    Args:
        images: ``(N, X, Y)`` float tensor.
        centres: ``(N, K, 2)`` float ``(x, y)`` in pixels of ``images``.
        size: patch side in pixels.

    Returns:
        ``(patches (N * K, 1, size, size), origins (N, K, 2) long)``: a patch's pixel ``(u, v)`` is the image's
        pixel ``origin + (u, v)``; the origin is the rounded centre minus ``size // 2``.
    """
    import torch
    import torch.nn.functional as F

    half = size // 2
    n, k = centres.shape[:2]
    nx, ny = images.shape[-2:]
    origin = torch.round(centres.float()).long() - half
    origin[..., 0] = origin[..., 0].clamp(-half, nx - half)  # keep at least half a patch inside the image
    origin[..., 1] = origin[..., 1].clamp(-half, ny - half)
    padded = F.pad(images[:, None].float(), (size, size, size, size))[:, 0]
    ar = torch.arange(size)
    xi = (origin[..., 0, None] + size + ar)[..., :, None].expand(n, k, size, size)
    yi = (origin[..., 1, None] + size + ar)[..., None, :].expand(n, k, size, size)
    bi = torch.arange(n)[:, None, None, None].expand(n, k, size, size)
    return padded[bi, xi, yi].reshape(n * k, 1, size, size), origin


def refine_input(patches: Any, conditioning: Any) -> Any:
    """The refinement network's input: ``patches`` ``(B, 1, S, S)`` and per-patch ``conditioning`` ``(B, C)``
    broadcast to constant channels: ``(B, 1 + C, S, S)``."""
    import torch

    b, _, sx, sy = patches.shape
    cond = torch.as_tensor(conditioning, dtype=patches.dtype).reshape(b, -1, 1, 1).expand(b, -1, sx, sy)
    return torch.cat([patches, cond], 1)


def refine_points(
    network: Any,
    images: Any,
    points: Any,
    conditioning: Any,
    patch: int = REFINE_PATCH,
    radius: int = REFINE_DECODE_RADIUS,
    batch_size: int = 512,
) -> np.ndarray:
    """Refined landmarks: one patch per landmark around its current estimate, decoded to sub-pixel positions.

    Args:
        network: the refinement network (``1 + C`` -> 1 channel).
        images: ``(N, X, Y)`` images on the fine grid (tensor or array).
        points: ``(N, P, 2)`` current estimates ``(x, y)`` on the fine grid.
        conditioning: ``(P, C)`` from :func:`landmark_conditioning`.

    Returns:
        ``(N, P, 2)`` float64 refined ``(x, y)`` on the fine grid.
    """
    import torch

    imgs = torch.as_tensor(np.asarray(images, np.float32)) if not isinstance(images, torch.Tensor) else images
    pts = torch.as_tensor(np.asarray(points, np.float64)).float()
    n, p = pts.shape[:2]
    patches, origin = crop_patches(imgs, pts, patch)
    cond = torch.as_tensor(np.asarray(conditioning, np.float32)).repeat(n, 1)
    first = next(network.parameters(), None)
    device = first.device if first is not None else "cpu"
    outs = []
    with torch.no_grad():
        for i in range(0, len(patches), batch_size):
            x = refine_input(patches[i : i + batch_size], cond[i : i + batch_size]).to(device)
            outs.append(network(x).float().cpu())
    local = decode_logits(torch.cat(outs), "centroid", radius)[:, 0].reshape(n, p, 2)
    return local + origin.double().numpy()


# --- the shape model ----------------------------------------------------------------------------------------
def shape_model_def(n_points: int, n_modes: int) -> dict[str, Any]:
    """MONAI/torch config of the point-distribution model: ``encode`` then ``decode`` (two ``Linear`` layers)."""
    return {"_target_": "torch.nn.ModuleDict", "modules": {
        "encode": {"_target_": "torch.nn.Linear", "in_features": 2 * n_points, "out_features": n_modes},
        "decode": {"_target_": "torch.nn.Linear", "in_features": n_modes, "out_features": 2 * n_points},
    }}  # fmt: skip


def fit_shape_model(shapes: np.ndarray, n_modes: int) -> Any:
    """The point-distribution model of training ``shapes`` ``(N, P, 2)`` (complete shapes, coarse grid): the
    mean shape and the ``n_modes`` principal modes as a ``Linear`` encoder / decoder pair, so that
    ``decode(encode(x))`` is the orthogonal projection of ``x`` onto the mean plus the modes."""
    import torch

    x = np.asarray(shapes, np.float64).reshape(len(shapes), -1)
    k = int(max(1, min(n_modes, len(x) - 1, x.shape[1])))
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    modes = vt[:k]
    module = torch.nn.ModuleDict(
        {"encode": torch.nn.Linear(x.shape[1], k), "decode": torch.nn.Linear(k, x.shape[1])}
    )
    with torch.no_grad():
        module["encode"].weight.copy_(torch.from_numpy(modes))
        module["encode"].bias.copy_(torch.from_numpy(-(modes @ mean)))
        module["decode"].weight.copy_(torch.from_numpy(modes.T.copy()))
        module["decode"].bias.copy_(torch.from_numpy(mean))
    for prm in module.parameters():
        prm.requires_grad_(False)
    return module


def project_shape(module: Any, points: np.ndarray) -> np.ndarray:
    """``points`` ``(N, P, 2)`` projected by a shape model (:func:`fit_shape_model`); float64."""
    import torch

    pts = np.asarray(points, np.float64)
    weight = module["encode"].weight  # the module may sit on a GPU with the networks of its bundle
    with torch.no_grad():
        flat = torch.from_numpy(pts.reshape(len(pts), -1)).to(device=weight.device, dtype=weight.dtype)
        out = module["decode"](module["encode"](flat))
    return out.double().cpu().numpy().reshape(pts.shape)


def contour_model_def(n_points: int, n_modes: int) -> dict[str, Any]:
    """MONAI/torch config of the contour stage: one ``Linear(n_modes, 2 n_points)`` (:func:`fit_contour_model`)."""
    return {"_target_": "torch.nn.Linear", "in_features": n_modes, "out_features": 2 * n_points}


def fit_contour_model(shapes: np.ndarray, n_modes: int) -> Any:
    """The generative shape model of training ``shapes`` ``(N, P, 2)`` (complete shapes, coarse grid) as one
    ``Linear(k, 2P)``: bias = the mean shape, weight = the ``k`` principal modes scaled by their standard
    deviations, so that standardised mode weights ``b ~ N(0, I)`` give ``weight @ b + bias``."""
    import torch

    x = np.asarray(shapes, np.float64).reshape(len(shapes), -1)
    k = int(max(1, min(n_modes, len(x) - 1, x.shape[1])))
    mean = x.mean(0)
    _, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
    sd = sv[:k] / math.sqrt(max(len(x) - 1, 1))
    module = torch.nn.Linear(k, x.shape[1])
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy((vt[:k] * sd[:, None]).T.copy()))
        module.bias.copy_(torch.from_numpy(mean))
    for prm in module.parameters():
        prm.requires_grad_(False)
    return module


def contour_frames(points: np.ndarray, contours: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Unit tangents and normals ``(P, 2)`` of ``points`` ``(P, 2)`` on their closed ``contours`` (central
    differences; a point on no contour of at least 3 points gets zero vectors)."""
    tangent = np.zeros_like(np.asarray(points, np.float64))
    for idx in contours:
        if len(idx) >= 3:
            c = np.asarray(points, np.float64)[idx]
            t = np.roll(c, -1, 0) - np.roll(c, 1, 0)
            tangent[idx] = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-9)
    return tangent, np.stack([-tangent[:, 1], tangent[:, 0]], 1)


def offset_model_def(n_points: int) -> dict[str, Any]:
    """MONAI/torch config of the offset stage: one ``Linear(1, 2 n_points)`` whose bias holds the offsets."""
    return {"_target_": "torch.nn.Linear", "in_features": 1, "out_features": 2 * n_points}


def offset_model(offsets: np.ndarray) -> Any:
    """The offset stage holding ``offsets`` ``(P, 2)`` (along, across each landmark's contour; coarse-grid px)."""
    import torch

    flat = np.asarray(offsets, np.float64).reshape(-1)
    module = torch.nn.Linear(1, len(flat))
    with torch.no_grad():
        module.weight.zero_()
        module.bias.copy_(torch.from_numpy(flat))
    for prm in module.parameters():
        prm.requires_grad_(False)
    return module


def mean_offsets(predicted: np.ndarray, truth: np.ndarray, contours: Sequence[np.ndarray]) -> np.ndarray:
    """Each landmark's mean error ``truth - predicted`` (both ``(N, P, 2)``) along and across its predicted contour
    (the frames of :func:`contour_frames` on ``predicted``): ``(P, 2)``, the values of the offset stage. Points
    with a missing (NaN) true position are left out of their landmark's mean."""
    pred = np.asarray(predicted, np.float64)
    miss = np.asarray(truth, np.float64) - pred
    parts = np.zeros(pred.shape, np.float64)
    for i in range(len(pred)):
        tangent, normal = contour_frames(pred[i], contours)
        parts[i] = np.stack([(miss[i] * tangent).sum(1), (miss[i] * normal).sum(1)], 1)
    known = np.isfinite(parts).all(-1)
    total = np.where(known[..., None], parts, 0.0).sum(0)
    return total / np.maximum(known.sum(0), 1)[:, None]


def apply_offsets(module: Optional[Any], points: np.ndarray, contours: Sequence[np.ndarray]) -> np.ndarray:
    """``points`` ``(N, P, 2)`` each moved by the offset stage's ``(along, across)`` offset of its landmark, in the
    frame of its own predicted contour; unchanged without the stage (or for points on no contour)."""
    if module is None:
        return np.asarray(points, np.float64)
    import torch

    with torch.no_grad():
        offsets = module.bias.double().cpu().numpy().reshape(-1, 2)
    out = np.array(points, np.float64)
    for i in range(len(out)):
        tangent, normal = contour_frames(out[i], contours)
        out[i] += offsets[:, :1] * tangent + offsets[:, 1:] * normal
    return out


def fit_contour(
    module: Any,
    points: np.ndarray,
    contours: Sequence[np.ndarray],
    along_weight: float = CONTOUR_ALONG_WEIGHT,
    prior: float = CONTOUR_PRIOR,
) -> np.ndarray:
    """The shape of the contour model (:func:`fit_contour_model`) closest to ``points`` ``(N, P, 2)`` when an
    offset along a point's contour costs ``along_weight`` times one across it, with a ridge ``prior`` on the
    standardised mode weights (weighted least squares, closed form). A point on no contour counts fully in both
    directions. Returns ``(N, P, 2)`` float64."""
    import torch

    with torch.no_grad():
        modes = module.weight.double().cpu().numpy()  # (2P, k)
        mean = module.bias.double().cpu().numpy()
    pts = np.asarray(points, np.float64)
    n, p = pts.shape[:2]
    basis = modes.reshape(p, 2, -1)
    out = np.empty_like(pts)
    for i in range(n):
        tangent, normal = contour_frames(pts[i], contours)
        on = np.linalg.norm(tangent, axis=1) > 0
        weight = (
            normal[:, :, None] * normal[:, None, :] + along_weight * tangent[:, :, None] * tangent[:, None, :]
        )
        weight[~on] = np.eye(2)
        resid = pts[i] - mean.reshape(p, 2)
        lhs = np.einsum("pik,pij,pjl->kl", basis, weight, basis) + prior * np.eye(basis.shape[2])
        b = np.linalg.solve(lhs, np.einsum("pik,pij,pj->k", basis, weight, resid))
        out[i] = mean.reshape(p, 2) + basis @ b
    return out


def nearest_on_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """The nearest point of the closed ``polygon`` ``(K, 2)`` (its corners joined in order) to each of
    ``points`` ``(m, 2)``. Returns ``(m, 2)`` float64."""
    a = np.asarray(polygon, np.float64)
    seg = np.roll(a, -1, 0) - a
    q = np.asarray(points, np.float64)
    rel = q[:, None, :] - a[None]  # (m points, K segments, 2)
    t = np.clip((rel * seg[None]).sum(-1) / np.maximum((seg**2).sum(-1), 1e-12)[None], 0.0, 1.0)
    near = a[None] + t[..., None] * seg[None]
    best = np.argmin(((near - q[:, None]) ** 2).sum(-1), axis=1)
    return near[np.arange(len(q)), best]


def snap_to_contours(points: np.ndarray, outline: np.ndarray, contours: Sequence[np.ndarray]) -> np.ndarray:
    """Each point of ``points`` ``(N, P, 2)`` moved to the nearest point of its closed contour in ``outline``
    ``(N, P, 2)`` (the polygon through the contour's points in order); points on no contour stay."""
    out, corners = np.array(points, np.float64), np.asarray(outline, np.float64)
    for idx in contours:
        if len(idx) < 3:
            continue
        for i in range(len(out)):
            out[i, idx] = nearest_on_polygon(out[i, idx], corners[i, idx])
    return out


def coarse_to_fine(points: np.ndarray) -> np.ndarray:
    """Coarse-grid ``(x, y)`` points -> the fine grid (``REFINE_SCALE`` x as many pixels; pixel centres)."""
    return (np.asarray(points, np.float64) + 0.5) * REFINE_SCALE - 0.5


def fine_to_coarse(points: np.ndarray) -> np.ndarray:
    """Fine-grid ``(x, y)`` points -> the coarse grid (inverse of :func:`coarse_to_fine`)."""
    return (np.asarray(points, np.float64) + 0.5) / REFINE_SCALE - 0.5


def predict_landmarks(
    network: Any,
    images: Any,
    fine_images: Optional[Any] = None,
    conditioning: Optional[np.ndarray] = None,
    decode: str = "centroid",
    radius: int = 5,
    batch_size: int = 16,
    contours: Optional[Sequence[np.ndarray]] = None,
) -> tuple[np.ndarray, Any]:
    """Landmarks of a batch through every stage of ``network``.

    Args:
        network: a plain coarse network or the stages (:func:`stage`).
        images: ``(N, 1, S, S)`` images on the coarse grid (tensor).
        fine_images: ``(N, REFINE_SCALE S, REFINE_SCALE S)`` the same images on the fine grid (needed by a
            refinement stage; without them the refinement is skipped).
        conditioning: ``(P, C)`` of :func:`landmark_conditioning` (needed by a refinement stage).
        decode, radius: decoding of the coarse heatmaps.
        contours: point indices of each closed contour (``LandmarkSchema.contours``; needed by a contour stage).

    Returns:
        ``(points (N, P, 2) float64 (x, y) on the coarse grid, coarse logits (N, P, S, S))``.
    """
    import torch

    coarse = stage(network, "coarse")
    first = next(coarse.parameters(), None)
    device = first.device if first is not None else "cpu"
    outs = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            outs.append(coarse(images[i : i + batch_size].to(device)).float().cpu())
    logits = torch.cat(outs) if outs else torch.zeros(0)
    points = decode_logits(logits, decode, radius)
    shape = stage(network, "shape")
    if shape is not None:
        points = project_shape(shape, points)
    if stage(network, "refine") is None or fine_images is None or conditioning is None:
        return points, logits
    return refine_and_fit(network, fine_images, points, conditioning, contours), logits


def refine_and_fit(
    network: Any,
    fine_images: Any,
    points: np.ndarray,
    conditioning: np.ndarray,
    contours: Optional[Sequence[np.ndarray]] = None,
) -> np.ndarray:
    """The refinement and (with ``contours`` and a contour stage) contour stages of ``network`` from the
    coarse-grid ``points`` ``(N, P, 2)``: refine, then ``CONTOUR_ROUNDS`` fits of the contour model, each but the
    last followed by another refinement, the fitted points moved onto the refined outline and, with an offset
    stage, by their landmarks' offsets.

    Args:
        fine_images: ``(N, REFINE_SCALE S, REFINE_SCALE S)`` the images on the fine grid.
        conditioning: ``(P, C)`` of :func:`landmark_conditioning`.

    Returns:
        ``(N, P, 2)`` float64 ``(x, y)`` on the coarse grid.
    """
    refine = stage(network, "refine")

    def refined(start: np.ndarray) -> np.ndarray:
        return fine_to_coarse(refine_points(refine, fine_images, coarse_to_fine(start), conditioning))

    points = refined(points)
    contour = stage(network, "contour")
    if contour is None or not contours:
        return points
    for round_ in range(CONTOUR_ROUNDS):
        fitted = fit_contour(contour, points, contours)
        if round_ + 1 < CONTOUR_ROUNDS:
            points = refined(fitted)
    return apply_offsets(stage(network, "offset"), snap_to_contours(fitted, points, contours), contours)


def stage(network: Any, name: str) -> Optional[Any]:
    """Stage ``name`` of a landmark network (None when absent); a plain network is its own ``"coarse"``."""
    import torch

    if isinstance(network, torch.nn.ModuleDict):
        return network[name] if name in network else None
    return network if name == "coarse" else None


__all__ = [
    "CONDITIONING_CHANNELS",
    "CONTOUR_ALONG_WEIGHT",
    "CONTOUR_PRIOR",
    "CONTOUR_ROUNDS",
    "REFINE_DECODE_RADIUS",
    "REFINE_PATCH",
    "REFINE_SCALE",
    "LANDMARK_STAGES",
    "apply_offsets",
    "coarse_to_fine",
    "contour_frames",
    "contour_model_def",
    "crop_patches",
    "fine_to_coarse",
    "fit_contour",
    "fit_contour_model",
    "fit_shape_model",
    "landmark_conditioning",
    "mean_offsets",
    "nearest_on_polygon",
    "offset_model",
    "offset_model_def",
    "predict_landmarks",
    "project_shape",
    "refine_and_fit",
    "refine_input",
    "refine_points",
    "shape_model_def",
    "snap_to_contours",
    "stage",
]
