"""The landmark runtime: heatmap regression of chest X-ray contour points, written as Slicer markups.

A landmark model sees the whole 2D radiograph resized to its ``roi_size`` (antialiased bilinear) and
normalised by percentiles (0.5 / 99.5 -> 0 / 1). It outputs one logit map per landmark, read as a spatial
softmax; each point is decoded to a sub-pixel position by the local centroid of its map around the
maximum, mapped back to the original pixels and through the image's geometry to LPS millimetres.

Layout: arrays given to the networks are in MONAI's spatial layout ``(x, y)`` (the transpose of a NumPy
image ``(y, x)``), as ``LoadImage`` gives them; points are ``(x, y)`` = indices along axes 0 and 1.

The landmark *schema* (:class:`LandmarkSchema`) says which contour points of which structures a model
predicts; point names are ``GROUP_NN`` (``RL_04`` = point 4 of the right lung contour).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import InputError
from ..io.image import Image
from ..io.markups import write_markups
from ..progress import check_cancel
from .base import Prediction, TaskRuntime
from .registry import register_runtime

#: landmark groups of the chest X-ray landmark set and their number of contour points
GROUPS: dict[str, int] = {"RL": 44, "LL": 50, "H": 26, "RCLA": 23, "LCLA": 23}
GROUP_NAMES: dict[str, str] = {
    "RL": "right lung", "LL": "left lung", "H": "heart", "RCLA": "right clavicle", "LCLA": "left clavicle",
}  # fmt: skip
GROUP_COLORS: dict[str, tuple[float, float, float]] = {
    "RL": (0.27, 0.56, 0.84), "LL": (0.35, 0.71, 0.35), "H": (0.86, 0.31, 0.24), "RCLA": (0.93, 0.75, 0.26),
    "LCLA": (0.62, 0.42, 0.78),
}  # fmt: skip
#: the lung contours
LUNG_GROUPS = ("RL", "LL")
#: default sub-sampling of each contour: every ``step``-th point (42 landmarks in all)
DEFAULT_STEPS: dict[str, int] = {"RL": 4, "LL": 5, "H": 3, "RCLA": 4, "LCLA": 4}


@dataclasses.dataclass
class LandmarkSchema:
    """Which landmarks a model predicts: for each group, indices into that group's contour.

    Attributes:
        indices: ``{group: [index into the group's points, ...]}`` in channel order.
    """

    indices: dict[str, list[int]]

    @classmethod
    def default(cls, steps: Optional[dict[str, int]] = None) -> LandmarkSchema:
        """Every ``steps[group]``-th point of each group of :data:`GROUPS` (default :data:`DEFAULT_STEPS`)."""
        steps = dict(DEFAULT_STEPS if steps is None else steps)
        bad = [g for g in steps if g not in GROUPS]
        if bad:
            raise InputError(f"unknown landmark group(s) {bad}; expected some of {', '.join(GROUPS)}.")
        return cls({g: list(range(0, GROUPS[g], max(int(s), 1))) for g, s in steps.items()})

    @property
    def groups(self) -> list[str]:
        return list(self.indices)

    @property
    def n_points(self) -> int:
        return sum(len(v) for v in self.indices.values())

    @property
    def names(self) -> list[str]:
        """Point names ``GROUP_NN`` (NN = index in the full contour), in channel order."""
        return [f"{g}_{i:02d}" for g, idx in self.indices.items() for i in idx]

    @property
    def group_of(self) -> np.ndarray:
        """``(P,)`` group name of each channel."""
        return np.array([g for g, idx in self.indices.items() for _ in idx])

    def channels(self, group: str) -> np.ndarray:
        """Channel numbers of ``group``."""
        return np.flatnonzero(self.group_of == group)

    def to_dict(self) -> dict[str, list[int]]:
        return {g: list(v) for g, v in self.indices.items()}


def normalize_image(array: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """Percentiles ``lower``/``upper`` of ``array`` mapped to 0/1, clipped; float32."""
    arr = np.asarray(array, dtype=np.float32)
    lo, hi = np.percentile(arr, [lower, upper])
    out = (arr - float(lo)) / max(float(hi - lo), 1e-6)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def resize_image(array_yx: np.ndarray, size: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize a ``(H, W)`` image to ``(size, size)`` (antialiased bilinear) in network layout ``(x, y)``.

    Returns:
        ``(image, (sx, sy))``: the resized, percentile-normalised image ``(x, y)`` and the original
        pixels per resized pixel along x and y.
    """
    import torch
    import torch.nn.functional as F

    arr = np.asarray(array_yx, dtype=np.float32)
    if arr.ndim != 2 or min(arr.shape) < 2:
        raise InputError(f"expected a 2D greyscale image, got an array of shape {arr.shape}.")
    h, w = arr.shape
    t = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
    res = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    out = normalize_image(res[0, 0].numpy()).T.copy()  # (y, x) -> (x, y)
    return out, (w / float(size), h / float(size))


def to_resized(points: np.ndarray, scale: Sequence[float]) -> np.ndarray:
    """Original-pixel ``(x, y)`` points -> resized-grid points (pixel-centre convention)."""
    s = np.asarray(scale, dtype=float)
    return (np.asarray(points, dtype=float) + 0.5) / s - 0.5


def to_original(points: np.ndarray, scale: Sequence[float]) -> np.ndarray:
    """Resized-grid ``(x, y)`` points -> original-pixel points (inverse of :func:`to_resized`)."""
    s = np.asarray(scale, dtype=float)
    return (np.asarray(points, dtype=float) + 0.5) * s - 0.5


def decode_heatmaps(
    heatmaps: Any, method: str = "centroid", radius: int = 5, logits: bool = False
) -> np.ndarray:
    """Sub-pixel landmark positions from heatmaps.

    Args:
        heatmaps: ``(..., P, X, Y)`` probability maps (or logits of a spatial softmax with
            ``logits=True``), numpy or torch.
        method: ``"centroid"``: probability-weighted centroid in a ``(2 radius + 1)^2`` window around the
            maximum (robust to secondary modes); ``"softargmax"``: expectation over the whole map.
        radius: window half-width in pixels for ``"centroid"``.

    Returns:
        ``(..., P, 2)`` float64 ``(x, y)`` in pixels of the heatmap grid.
    """
    import torch

    h = heatmaps if isinstance(heatmaps, torch.Tensor) else torch.as_tensor(np.asarray(heatmaps))
    h = h.detach().float().cpu()
    lead = h.shape[:-2]
    nx, ny = h.shape[-2:]
    flat = h.reshape(-1, nx * ny)
    prob = torch.softmax(flat, dim=1) if logits else flat.clamp_min(0)
    if method == "softargmax":
        prob = prob / prob.sum(1, keepdim=True).clamp_min(1e-12)
        p = prob.reshape(-1, nx, ny)
        xs = (p.sum(2) * torch.arange(nx, dtype=torch.float32)).sum(1)
        ys = (p.sum(1) * torch.arange(ny, dtype=torch.float32)).sum(1)
        return torch.stack([xs, ys], 1).double().numpy().reshape(*lead, 2)
    if method != "centroid":
        raise InputError(f"unknown decoding {method!r}; use 'centroid' or 'softargmax'.")
    idx = prob.argmax(1)
    cx, cy = idx // ny, idx % ny
    offs = torch.arange(-radius, radius + 1)
    wx = (cx[:, None] + offs[None]).clamp(0, nx - 1)  # (N, W)
    wy = (cy[:, None] + offs[None]).clamp(0, ny - 1)
    p = prob.reshape(-1, nx, ny)
    n = p.shape[0]
    win = p[torch.arange(n)[:, None, None], wx[:, :, None], wy[:, None, :]]  # (N, W, W)
    # clamped window indices repeat border pixels: count each pixel once
    valid_x = (cx[:, None] + offs[None] >= 0) & (cx[:, None] + offs[None] < nx)
    valid_y = (cy[:, None] + offs[None] >= 0) & (cy[:, None] + offs[None] < ny)
    win = win * (valid_x[:, :, None] & valid_y[:, None, :])
    total = win.sum((1, 2)).clamp_min(1e-12)
    xs = (win.sum(2) * wx.float()).sum(1) / total
    ys = (win.sum(1) * wy.float()).sum(1) / total
    return torch.stack([xs, ys], 1).double().numpy().reshape(*lead, 2)


def decode_logits(logits: Any, method: str = "centroid", radius: int = 5) -> np.ndarray:
    """Landmarks ``(N, P, 2)`` ``(x, y)`` of heatmap logits ``(N, P, X, Y)``: spatial softmax, then
    :func:`decode_heatmaps`."""
    import torch

    prob = torch.softmax(logits.flatten(2), 2).reshape(logits.shape)
    return decode_heatmaps(prob, method, radius)


def landmark_labels(schema: LandmarkSchema) -> list[dict[str, Any]]:
    """Model-card labels of a landmark model: one per channel, value = channel, group colour."""
    return [{"value": i, "name": name, "color": list(GROUP_COLORS.get(name.split("_")[0], (1.0, 0.0, 0.0)))}
            for i, name in enumerate(schema.names)]  # fmt: skip


def heatmap_entropy(logits: Any) -> Any:
    """Normalised spatial entropy of heatmap logits ``(N, P, X, Y)``, mean over the landmarks: a ``(N,)``
    torch tensor in [0, 1] (0: every landmark a one-pixel peak; 1: uniform maps), differentiable. A
    model-alone sign of how familiar an input is: a landmark network's maps are sharp on the images it
    learnt from and diffuse elsewhere (used by model inversion and the selector's verification)."""
    import torch

    q = torch.softmax(torch.as_tensor(logits).float().flatten(2), dim=2)
    h = -(q * torch.log(q.clamp_min(1e-12))).sum(2) / math.log(q.shape[2])
    return h.mean(1)


#: excess of normalised heatmap entropy over the model's validation images that divides a landmark model's
#: fit by e. Measured on the chest X-ray landmark model: adult chest radiographs within 0.02 of its
#: validation entropy, paediatric ones 0.07 above, CT/MR slices, mammograms, knee radiographs and photos
#: 0.13-0.22 above.
LANDMARK_ENTROPY_SCALE = 0.1


@register_runtime
class LandmarkRuntime(TaskRuntime):
    """Runs a 2D landmark (heatmap) bundle: points in LPS millimetres, written as a Slicer point list."""

    task_type = "landmarks"
    keywords = ("landmark",)
    first_label_value = 0  # label value = output channel
    labels_required = True
    output_suffix = ".mrk.json"
    slicer_node_class = "vtkMRMLMarkupsFiducialNode"
    slicer_storage_class = "vtkMRMLMarkupsJsonStorageNode"

    # --- card-level --------------------------------------------------------------------------------------
    @classmethod
    def inference_sections(cls, card: Any) -> dict[str, Any]:
        # the whole radiograph resized to roi_size (points map back by the scale)
        size = list(card.roi_size or [64, 64])
        return {
            "preprocessing": {"_target_": "Compose", "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Resized", "keys": "image", "spatial_size": size, "mode": "bilinear",
                 "anti_aliasing": True},
                {"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": 0.5, "upper": 99.5,
                 "b_min": 0.0, "b_max": 1.0, "clip": True},
                {"_target_": "EnsureTyped", "keys": "image"},
            ]},
            "inferer": {"_target_": "SimpleInferer"},
        }  # fmt: skip

    @classmethod
    def output_format(cls, card: Any) -> dict[str, Any]:
        return {"type": "image", "format": "landmarks", "num_channels": len(card.labels), "dtype": "float32",
                "channel_def": {str(lb["value"]): lb["name"] for lb in card.labels}}  # fmt: skip

    @classmethod
    def describe_outputs(cls, card: Any) -> str:
        groups = dict.fromkeys(n.split("_")[0] for n in card.label_names)  # point names are GROUP_NN
        return f"{len(card.label_names)} points ({', '.join(groups)})"

    @classmethod
    def held_out(cls, card: Any) -> Optional[dict[str, Any]]:
        """Mean radial error (mm) on the test images (``test_mre_mm``; ``test_n_cases`` of them)."""
        m = card.validation_metrics
        if not isinstance(m.get("test_mre_mm"), (int, float)):
            return None
        return {"metric": "MRE (mm)", "value": float(m["test_mre_mm"]), "cases": m.get("test_n_cases", "?"),
                "protocol": "test images"}  # fmt: skip

    @classmethod
    def describe_fit(cls, signals: dict[str, float]) -> str:
        return (
            f"verify: heatmap sharpness fit {signals['fit']:.2f} (entropy {signals['heatmap_entropy']:.2f}; "
            f"{signals['reference_entropy']:.2f} on its validation images), peak probability "
            f"{signals['confidence']:.3f}"
        )

    # --- the task ----------------------------------------------------------------------------------------
    def logits(self, image: Image) -> tuple[Any, tuple[float, float], Image]:
        """Network output ``(1, P, X, Y)`` for ``image`` (2D, or a one-slice volume) resized to the card's
        ``roi_size`` and normalised like training. Returns ``(logits, scale, image)``: ``scale`` maps resized
        to original pixels, ``image`` is the 2D greyscale input actually used."""
        import torch

        img = self.input_image(image)
        size = int((self.card.roi_size or [64, 64])[0])
        net_in, scale = resize_image(np.asarray(img.array, np.float32), size)
        with torch.no_grad():
            out = self.network(torch.from_numpy(net_in)[None, None].to(self.device)).float().cpu()
        return out, scale, img

    def predict(self, image: Image, cancel: Optional[Any] = None) -> Prediction:
        """Landmarks of ``image`` in LPS millimetres: ``value`` is ``(P, 3)`` (z = the slice's position;
        0 for a 2D image), ``names`` the card's point names."""
        check_cancel(cancel)
        logits, scale, img = self.logits(image)
        pts = to_original(decode_logits(logits)[0], scale)  # (P, 2) continuous index (i, j)
        ref = image if image.ndim == 3 else img  # a one-slice volume: the points lie in its slice
        n = ref.ndim
        idx = np.zeros((len(pts), n))
        idx[:, :2] = pts
        m = ref.ijk_to_lps()
        out = np.zeros((len(pts), 3))
        out[:, :n] = idx @ m[:n, :n].T + m[:n, n]
        return Prediction(self.card.name, self.card.version, image, out, list(self.card.label_names))

    def write(self, prediction: Prediction, path: Path) -> Path:
        return write_markups(path, prediction.value, prediction.names, label=prediction.model)

    def overlay(self, prediction: Prediction) -> dict[str, Any]:
        return {"points_lps": prediction.value,
                "point_colors": [tuple(lb.get("color", (1.0, 0.0, 0.0))) for lb in self.card.labels]}  # fmt: skip

    def fit_signals(self, image: Image) -> Optional[dict[str, float]]:
        """How much more diffuse the model's heatmaps are on ``image`` than on its validation images (card
        metric ``val_heatmap_entropy``): ``fit = exp(-max(0, entropy - reference) / LANDMARK_ENTROPY_SCALE)``
        (1 without a reference). A landmark model has no batch-norm statistics to compare."""
        if not self.accepts(image):
            return None
        logits, _, _ = self.logits(image)
        entropy = float(heatmap_entropy(logits)[0])
        ref = self.card.validation_metrics.get("val_heatmap_entropy")
        ref = float(ref) if isinstance(ref, (int, float)) and math.isfinite(ref) else float("nan")
        fit = math.exp(-max(0.0, entropy - ref) / LANDMARK_ENTROPY_SCALE) if math.isfinite(ref) else 1.0
        peak = float(logits.flatten(2).softmax(2).amax(2).mean())
        return {"kl": float("nan"), "fit": fit, "confidence": peak, "foreground": float("nan"),
                "heatmap_entropy": entropy, "reference_entropy": ref}  # fmt: skip

    def inversion_objective(self, output: Any, min_foreground: float = 0.15) -> tuple[Any, Any]:
        """Each channel is a spatial softmax: confident = one sharp peak per landmark (low normalised
        entropy); reports the mean peak probability."""
        import torch

        return heatmap_entropy(output).mean(), torch.softmax(output.flatten(2), dim=2).amax(2).mean()
