"""Chest X-ray landmark detection by heatmap regression, and its teacher–student training variants.

Data
    A landmark case is a 2D image with a ``<id>_landmarks.json`` beside it: groups of ``[x, y]`` pixel
    coordinates (x right, y down; keys ``RL``/``LL`` lung contours, ``H`` heart, ``RCLA``/``LCLA``
    clavicles) and a ``_meta`` block with ``pixel_spacing_mm``. Groups an image lacks (Shenzhen cases
    have lungs only) are masked out of losses and metrics. Every image is resized to ``size x size``
    pixels; point coordinates follow (pixel-centre convention, ``x' = (x + 0.5) * size / W - 0.5``) and
    the per-axis scale back to the original pixels is kept so that errors are measured in original
    pixels, and in millimetres when the spacing is known.

Layout
    Arrays given to the networks are in MONAI's spatial layout ``(x, y)`` (the transpose of a NumPy
    image ``(y, x)``), as ``LoadImage`` gives them, so a bundle's ``inference.json`` reads the same
    layout. Points are ``(x, y)`` = indices along axes 0 and 1 of those arrays.

Heatmaps
    One channel per landmark (``LandmarkSchema``: a subset of each group's contour points, every
    ``step``-th). The target of a landmark is a Gaussian of ``sigma`` pixels normalised to sum 1 over the
    image; the network output is read as logits of a spatial softmax, and trained with cross-entropy to
    the target distribution. Points are decoded to sub-pixel positions by the local centroid of the
    probability map around its maximum (``decode="centroid"``) or a global soft-argmax
    (``decode="softargmax"``).

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
import json
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from .errors import DatasetError, InputError, TrainingError
from .progress import check_cancel, progress_bar
from .settings import check_settings

PathLike = Union[str, Path]

#: landmark groups of the chest X-ray landmark set and their number of contour points
GROUPS: dict[str, int] = {"RL": 44, "LL": 50, "H": 26, "RCLA": 23, "LCLA": 23}
GROUP_NAMES: dict[str, str] = {
    "RL": "right lung", "LL": "left lung", "H": "heart", "RCLA": "right clavicle", "LCLA": "left clavicle",
}  # fmt: skip
GROUP_COLORS: dict[str, tuple[float, float, float]] = {
    "RL": (0.27, 0.56, 0.84), "LL": (0.35, 0.71, 0.35), "H": (0.86, 0.31, 0.24), "RCLA": (0.93, 0.75, 0.26),
    "LCLA": (0.62, 0.42, 0.78),
}  # fmt: skip
#: default sub-sampling of each contour: every ``step``-th point (42 landmarks in all)
DEFAULT_STEPS: dict[str, int] = {"RL": 4, "LL": 5, "H": 3, "RCLA": 4, "LCLA": 4}
#: JSRT raw pixel size (mm at 2048 px), used when a JSRT case's JSON does not state its spacing
JSRT_RAW_SPACING_MM = 0.175
JSRT_RAW_SIZE = 2048
LUNG_GROUPS = ("RL", "LL")


# --- the landmark schema --------------------------------------------------------------------------------
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


# --- cases ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LandmarkCase:
    """One image resized to ``size x size`` with its landmarks.

    Attributes:
        case_id: file stem of the image.
        image: ``(size, size)`` float32 in [0, 1] (percentile-normalised), network layout ``(x, y)``.
        points: ``(P, 2)`` float ``(x, y)`` in the resized grid; NaN where the landmark is missing.
        mask: ``(P,)`` bool, True where the landmark is annotated.
        scale: ``(sx, sy)`` original pixels per resized pixel along x and y.
        spacing_mm: ``(sx, sy)`` original pixel spacing in mm, or None when unknown.
        source: dataset the image comes from.
    """

    case_id: str
    image: np.ndarray
    points: np.ndarray
    mask: np.ndarray
    scale: tuple[float, float]
    spacing_mm: Optional[tuple[float, float]] = None
    source: str = ""

    @property
    def labelled(self) -> bool:
        return bool(self.mask.any())


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


def read_landmark_json(
    path: PathLike, schema: LandmarkSchema, image_width: Optional[int] = None
) -> tuple[np.ndarray, np.ndarray, Optional[float], dict[str, Any]]:
    """Read a ``<id>_landmarks.json``.

    Returns:
        ``(points (P, 2) original px with NaN for missing, mask (P,), spacing_mm or None, meta)``.
        The spacing is ``_meta.pixel_spacing_mm``; for a JSRT case (``_meta.jsrt_id``) that does not
        state it, ``0.175 mm * 2048 / image_width``.

    Raises:
        DatasetError: unreadable JSON, or a group with the wrong number of points.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable landmark JSON ({e}).") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: must hold an object with groups such as 'RL': [[x, y], ...].")
    pts = np.full((schema.n_points, 2), np.nan)
    mask = np.zeros(schema.n_points, dtype=bool)
    k = 0
    for group, idx in schema.indices.items():
        values = data.get(group)
        if values is not None:
            arr = np.asarray(values, dtype=float)
            if arr.ndim != 2 or arr.shape != (GROUPS[group], 2):
                raise DatasetError(
                    f"{path}: group '{group}' has shape {arr.shape}; expected ({GROUPS[group]}, 2) [x, y] points."
                )
            pts[k : k + len(idx)] = arr[idx]
            mask[k : k + len(idx)] = True
        k += len(idx)
    meta = data.get("_meta") if isinstance(data.get("_meta"), dict) else {}
    spacing = meta.get("pixel_spacing_mm")
    if spacing is None and meta.get("jsrt_id") and image_width:
        spacing = JSRT_RAW_SPACING_MM * JSRT_RAW_SIZE / float(image_width)
    return pts, mask, (float(spacing) if spacing else None), meta


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            return np.asarray(im.convert("L"), dtype=np.float32)
    except OSError as e:
        raise DatasetError(f"{path}: not a readable image ({e}).") from e


def load_case(
    image_path: PathLike, size: int, schema: LandmarkSchema, landmark_path: Optional[PathLike] = None
) -> LandmarkCase:
    """Load one image (and its landmarks when ``landmark_path`` is given) resized to ``size``."""
    image_path = Path(image_path)
    arr = _read_png(image_path)
    img, scale = resize_image(arr, size)
    if landmark_path is None:
        pts = np.full((schema.n_points, 2), np.nan)
        return LandmarkCase(
            image_path.stem, img, pts, np.zeros(schema.n_points, bool), scale, None, "unlabelled"
        )
    pts, mask, spacing, meta = read_landmark_json(landmark_path, schema, image_width=arr.shape[1])
    source = str(meta.get("source_dataset") or ("JSRT" if meta.get("jsrt_id") else ""))
    sp = (spacing, spacing) if spacing else None
    return LandmarkCase(image_path.stem, img, to_resized(pts, scale), mask, scale, sp, source)


def find_landmark_folders(data: PathLike) -> tuple[list[Path], list[Path]]:
    """Labelled and unlabelled image files under ``data``.

    ``data`` is either the shared data root (with ``cxr_landmarks/``, ``cxr_lungseg_imlab/`` and
    ``cxr_unlabelled/``) or one folder of images with ``<stem>_landmarks.json`` files (an
    ``unlabelled/`` sub-folder, if present, is the unlabelled pool). Masks (``*_lungmask.png``) are skipped.
    """
    root = Path(data)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such data folder.")
    labelled_dirs = [root / d for d in ("cxr_landmarks", "cxr_lungseg_imlab") if (root / d).is_dir()] or [
        root
    ]
    unlabelled_dirs = [root / d for d in ("cxr_unlabelled", "unlabelled") if (root / d).is_dir()]

    def images(folder: Path) -> list[Path]:
        return sorted(p for p in folder.glob("*.png") if not p.stem.endswith(("_lungmask", "_mask")))

    labelled = [
        p for d in labelled_dirs for p in images(d) if p.with_name(p.stem + "_landmarks.json").is_file()
    ]
    unlabelled = [p for d in unlabelled_dirs for p in images(d)]
    if not labelled:
        raise DatasetError(
            f"{root}: no images with landmarks found (expected <id>.png + <id>_landmarks.json, or the "
            "shared data root with cxr_landmarks/)."
        )
    return labelled, unlabelled


def load_dataset(
    data: PathLike,
    size: int,
    schema: LandmarkSchema,
    cache: Optional[PathLike] = None,
    cancel: Optional[Any] = None,
) -> tuple[list[LandmarkCase], list[LandmarkCase]]:
    """All labelled and unlabelled cases under ``data`` at ``size x size`` (see :func:`find_landmark_folders`).

    With ``cache`` (an ``.npz`` path), the resized arrays are stored there and reused when the file
    list, size and schema are unchanged.
    """
    labelled_paths, unlabelled_paths = find_landmark_folders(data)
    key = json.dumps({"size": size, "schema": schema.to_dict(),
                      "files": [str(p) for p in labelled_paths + unlabelled_paths]})  # fmt: skip
    if cache is not None and Path(cache).is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return _cases_from_npz(z)
    cases_l, cases_u = [], []
    bar = progress_bar(total=len(labelled_paths) + len(unlabelled_paths), desc="load images")
    for p in labelled_paths:
        check_cancel(cancel)
        cases_l.append(load_case(p, size, schema, p.with_name(p.stem + "_landmarks.json")))
        bar.update(1)
    for p in unlabelled_paths:
        check_cancel(cancel)
        cases_u.append(load_case(p, size, schema))
        bar.update(1)
    bar.close()
    if cache is not None:
        _cases_to_npz(cache, key, cases_l, cases_u)
    return cases_l, cases_u


def _cases_to_npz(path: PathLike, key: str, labelled: list, unlabelled: list) -> None:
    from .atomic import atomic_path

    allc = labelled + unlabelled
    sp = np.array([c.spacing_mm if c.spacing_mm else (np.nan, np.nan) for c in allc], dtype=float)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(key), ids=np.array([c.case_id for c in allc]),
                     images=np.stack([c.image for c in allc]), points=np.stack([c.points for c in allc]),
                     masks=np.stack([c.mask for c in allc]), scales=np.array([c.scale for c in allc]),
                     spacings=sp, sources=np.array([c.source for c in allc]),
                     n_labelled=np.array(len(labelled)))  # fmt: skip


def _cases_from_npz(z: Any) -> tuple[list[LandmarkCase], list[LandmarkCase]]:
    cases = []
    for i in range(len(z["ids"])):
        sp = z["spacings"][i]
        cases.append(LandmarkCase(str(z["ids"][i]), z["images"][i], z["points"][i], z["masks"][i],
                                  tuple(float(v) for v in z["scales"][i]),
                                  None if np.isnan(sp).any() else (float(sp[0]), float(sp[1])),
                                  str(z["sources"][i])))  # fmt: skip
    n = int(z["n_labelled"])
    return cases[:n], cases[n:]


# --- splits -------------------------------------------------------------------------------------------
def split_cases(
    case_ids: Sequence[str], seed: int = 20261124, val_fraction: float = 0.1, test_fraction: float = 0.2
) -> dict[str, list[str]]:
    """Split case ids by image into ``{"train", "val", "test"}`` (a seeded permutation; sorted lists)."""
    ids = sorted(set(case_ids))
    if len(ids) < 3:
        raise DatasetError(f"need at least 3 labelled images to split into train/val/test, got {len(ids)}.")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_test = max(1, int(round(test_fraction * len(ids))))
    n_val = max(1, int(round(val_fraction * len(ids))))
    test = sorted(ids[i] for i in order[:n_test])
    val = sorted(ids[i] for i in order[n_test : n_test + n_val])
    train = sorted(ids[i] for i in order[n_test + n_val :])
    return {"train": train, "val": val, "test": test}


def labelled_subset(train_ids: Sequence[str], fraction: float, seed: int) -> list[str]:
    """The training images whose labels are kept: the first ``ceil(fraction * n)`` (at least 1) of a
    permutation seeded by ``seed``, so that the subsets of one seed are nested across fractions."""
    if not 0 < fraction <= 1:
        raise TrainingError(f"label fraction {fraction} must be in (0, 1].")
    ids = sorted(train_ids)
    order = np.random.default_rng(10_000 + seed).permutation(len(ids))
    n = max(1, int(math.ceil(fraction * len(ids) - 1e-9)))
    return sorted(ids[i] for i in order[:n])


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


# --- networks -----------------------------------------------------------------------------------------
#: MONAI UNet settings of the two model sizes (``channels`` doubled per level, stride 2). The teacher is one
#: level deeper (a 4 x 4 bottleneck at 64 px: the whole chest in its receptive field) and wider: at the same
#: number of steps it learns better than the student, which a teacher with residual units at four levels did not.
NETWORK_SIZES: dict[str, dict[str, Any]] = {
    "teacher": {"channels": [32, 64, 128, 256, 512], "num_res_units": 0, "dropout": 0.1},
    "student": {"channels": [16, 32, 64, 128], "num_res_units": 0, "dropout": 0.1},
    # small sizes for tests and quick runs
    "teacher-tiny": {"channels": [16, 32, 64], "num_res_units": 1, "dropout": 0.1},
    "student-tiny": {"channels": [8, 16, 32], "num_res_units": 0, "dropout": 0.1},
}


def network_def(size_name: str, n_points: int) -> dict[str, Any]:
    """MONAI config (``_target_`` + arguments) of a 2D UNet heatmap network ``size_name``."""
    if size_name not in NETWORK_SIZES:
        raise TrainingError(f"unknown network size {size_name!r}; choose one of {', '.join(NETWORK_SIZES)}.")
    cfg = NETWORK_SIZES[size_name]
    return {"_target_": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": 1,
            "out_channels": int(n_points), "channels": list(cfg["channels"]),
            "strides": [2] * (len(cfg["channels"]) - 1), "num_res_units": int(cfg["num_res_units"]),
            "dropout": float(cfg["dropout"])}  # fmt: skip


def build_network(size_name: str, n_points: int) -> Any:
    """The 2D MONAI UNet of :func:`network_def`; output ``(B, P, X, Y)`` spatial-softmax logits."""
    from monai.networks.nets import UNet

    kwargs = {k: v for k, v in network_def(size_name, n_points).items() if k != "_target_"}
    return UNet(**kwargs)


def count_parameters(network: Any) -> int:
    return int(sum(p.numel() for p in network.parameters()))


# --- metrics ------------------------------------------------------------------------------------------
def radial_errors(
    pred: np.ndarray,
    true: np.ndarray,
    mask: np.ndarray,
    scale: Sequence[float],
    spacing_mm: Optional[Sequence[float]] = None,
) -> tuple[np.ndarray, str]:
    """Euclidean distance of each landmark in original pixels scaled to mm (anisotropic spacing allowed).

    Args:
        pred, true: ``(P, 2)`` ``(x, y)`` in the resized grid.
        mask: ``(P,)`` landmarks to score.
        scale: ``(sx, sy)`` original pixels per resized pixel.
        spacing_mm: ``(sx, sy)`` mm per original pixel, or None.

    Returns:
        ``(errors (P,) with NaN where masked, unit)``; unit ``"mm"`` or ``"px"`` (original pixels).
    """
    d = (np.asarray(pred, float) - np.asarray(true, float)) * np.asarray(scale, float)
    unit = "px"
    if spacing_mm is not None:
        d = d * np.asarray(spacing_mm, float)
        unit = "mm"
    err = np.sqrt((d**2).sum(-1))
    return np.where(np.asarray(mask, bool), err, np.nan), unit


def success_detection_rate(errors: np.ndarray, radii: Sequence[float]) -> dict[str, float]:
    """Fraction of (non-NaN) errors within each radius: ``{"sdr_2": 0.4, ...}``."""
    e = np.asarray(errors, float)
    e = e[np.isfinite(e)]
    return {f"sdr_{r:g}": float((e <= r).mean()) if e.size else float("nan") for r in radii}


def _segments_intersect(p1: np.ndarray, p2: np.ndarray, q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Proper intersection of segments p1-p2 and q1-q2 (broadcast arrays ``(..., 2)``)."""

    def cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a[..., 0] - o[..., 0]) * (b[..., 1] - o[..., 1]) - (a[..., 1] - o[..., 1]) * (
            b[..., 0] - o[..., 0]
        )

    d1, d2 = cross(q1, q2, p1), cross(q1, q2, p2)
    d3, d4 = cross(p1, p2, q1), cross(p1, p2, q2)
    return (d1 * d2 < 0) & (d3 * d4 < 0)


def polygon_self_intersects(polygon: np.ndarray, closed: bool = True) -> bool:
    """True when two non-adjacent edges of ``polygon`` (``(N, 2)``) cross."""
    pts = np.asarray(polygon, float)
    if len(pts) < 4 or not np.isfinite(pts).all():
        return False
    a = pts
    b = np.roll(pts, -1, axis=0) if closed else pts[1:]
    if not closed:
        a = pts[:-1]
    n = len(a)
    i, j = np.triu_indices(n, k=2)
    keep = ~((i == 0) & (j == n - 1)) if closed else np.ones(len(i), bool)
    i, j = i[keep], j[keep]
    return bool(_segments_intersect(a[i], b[i], a[j], b[j]).any())


def evaluate_predictions(
    preds: np.ndarray,
    cases: Sequence[LandmarkCase],
    schema: LandmarkSchema,
    radii: Sequence[float] = (2.0, 4.0, 10.0),
) -> dict[str, Any]:
    """Metrics of predictions ``(N, P, 2)`` (resized grid) against ``cases``.

    Returns:
        ``{"mre_mm", "mre_px", "mre_mm_<group>", "mre_px_<group>", "sdr_<r>" (mm, cases with spacing),
        "self_intersection" (fraction of cases with a self-intersecting predicted lung contour),
        "n_cases", "n_cases_mm"}``. ``mre_px`` is in original pixels over all cases, ``mre_mm`` over cases
        whose spacing is known.
    """
    groups = schema.group_of
    mm, px, n_mm = [], [], 0
    bad = 0
    for pred, case in zip(preds, cases):
        e_px, _ = radial_errors(pred, case.points, case.mask, case.scale, None)
        px.append(e_px)
        if case.spacing_mm is not None:
            e_mm, _ = radial_errors(pred, case.points, case.mask, case.scale, case.spacing_mm)
            mm.append(e_mm)
            n_mm += 1
        for g in LUNG_GROUPS:
            ch = schema.channels(g)
            if len(ch) >= 4 and polygon_self_intersects(pred[ch]):
                bad += 1
                break
    px_a = np.array(px) if px else np.zeros((0, schema.n_points))
    mm_a = np.array(mm) if mm else np.zeros((0, schema.n_points))
    out: dict[str, Any] = {"n_cases": len(px), "n_cases_mm": n_mm}
    out["mre_mm"] = _nanmean(mm_a)
    out["mre_px"] = _nanmean(px_a)
    for g in schema.groups:
        sel = groups == g
        out[f"mre_mm_{g}"] = _nanmean(mm_a[:, sel])
        out[f"mre_px_{g}"] = _nanmean(px_a[:, sel])
    out.update(success_detection_rate(mm_a, radii))
    out["self_intersection"] = bad / max(len(px), 1)
    return out


def _nanmean(a: np.ndarray) -> float:
    a = np.asarray(a, float)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


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


def _seed_all(seed: int) -> Any:
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


def _optimizer(net: Any, cfg: LandmarkTrainConfig, steps: int) -> tuple[Any, Any]:
    import torch

    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
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
    gen = _seed_all(seed)
    net = build_network(size_name, labelled.targets.shape[1]).to(cfg.device)
    steps = int(steps or cfg.steps)
    opt, sched = _optimizer(net, cfg, steps)
    net.train()
    bar = progress_bar(total=steps, desc=desc, leave=False)
    for _ in range(steps):
        check_cancel(cancel)
        idx = _batch(len(labelled.images), cfg.batch_size, gen)
        x, (dx, dy) = augment(labelled.images[idx], gen, cfg.augment_shift)
        t = _shift_targets(labelled.targets[idx], dx, dy)
        loss = heatmap_ce(net(x.to(cfg.device)), t.to(cfg.device), labelled.mask[idx].to(cfg.device))
        _optimiser_step(opt, sched, loss)
        bar.update(1)
        bar.set_postfix(loss=loss.item())
    bar.close()
    return net.eval()


def _optimiser_step(opt: Any, sched: Any, loss: Any) -> None:
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


def decode_logits(logits: Any, method: str = "centroid", radius: int = 5) -> np.ndarray:
    """Landmarks ``(N, P, 2)`` ``(x, y)`` of heatmap logits ``(N, P, X, Y)``: spatial softmax, then
    :func:`decode_heatmaps`."""
    import torch

    prob = torch.softmax(logits.flatten(2), 2).reshape(logits.shape)
    return decode_heatmaps(prob, method, radius)


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
    logits = predict_logits(teacher, images, device=cfg.device)
    soft = torch.softmax(logits.flatten(2) / t, 2).reshape(logits.shape)
    if not uncertainty:
        return soft.half(), None
    torch.manual_seed(seed)
    mean = torch.zeros_like(soft)
    sq = torch.zeros_like(soft)
    k = max(int(cfg.mc_samples), 2)
    for _ in range(k):
        lg = predict_logits(teacher, images, device=cfg.device, dropout=True)
        p = torch.softmax(lg.flatten(2) / t, 2).reshape(lg.shape)
        mean += p
        sq += p * p
    mean /= k
    std = (sq / k - mean * mean).clamp_min(0).sqrt()
    weight = torch.exp(-std / mean.clamp_min(1e-8))
    return soft.half(), weight.half()


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

    gen = _seed_all(seed)
    net = build_network(cfg.student, labelled.targets.shape[1]).to(cfg.device)
    opt, sched = _optimizer(net, cfg, cfg.steps)
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
        _optimiser_step(opt, sched, loss)
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

    gen = _seed_all(seed)
    net = build_network(cfg.student, labelled.targets.shape[1]).to(cfg.device)
    ema = copy.deepcopy(net)
    for p in ema.parameters():
        p.requires_grad_(False)
    opt, sched = _optimizer(net, cfg, cfg.steps)
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
        _optimiser_step(opt, sched, loss)
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


# --- applying a landmark model to an image ------------------------------------------------------------
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


def image_logits(loaded: Any, image: Any, device: str = "cpu") -> tuple[Any, tuple[float, float], Any]:
    """Network output ``(1, P, X, Y)`` of a landmark bundle for an :class:`~ModelSelectorLib.io.Image` (2D,
    or 3D with one slice) resized to the card's ``roi_size`` and normalised like training (percentiles
    0.5/99.5). Returns ``(logits, scale, image)``: ``scale`` maps resized to original pixels, ``image`` is
    the 2D greyscale input actually used."""
    import torch

    from .io import check_image_content

    card = loaded.card
    if card.task_type != "landmarks":
        raise InputError(f"model {card.name} is a {card.task_type} model, not a landmark model.")
    img = image.to_grayscale() if image.is_multicomponent else image
    if img.ndim == 3:
        if img.size[2] != 1:
            raise InputError(
                f"the landmark model {card.name} expects a 2D image and the input is 3D with {img.size[2]} "
                "slices; give a 2D radiograph (PNG, NRRD/NIfTI with one slice)."
            )
        arr = img.array[0]
    else:
        arr = img.array
    check_image_content(img, str(img.meta.get("path", "image")))
    size = int((card.roi_size or [64, 64])[0])
    net_in, scale = resize_image(np.asarray(arr, np.float32), size)
    with torch.no_grad():
        logits = loaded.network(torch.from_numpy(net_in)[None, None].to(device)).float().cpu()
    return logits, scale, img


def predict_image_points(
    loaded: Any, image: Any, device: str = "cpu", cancel: Optional[Any] = None
) -> np.ndarray:
    """Landmarks of a landmark bundle on an :class:`~ModelSelectorLib.io.Image`, in LPS millimetres.

    The image (2D, or 3D with one slice) goes through :func:`image_logits`; the maps are decoded by local
    centroid and mapped back through the image's index-to-LPS transform (spacing, origin, direction).

    Returns:
        ``(P, 3)`` LPS positions (z = the slice's position; 0 for a 2D image).
    """
    check_cancel(cancel)
    logits, scale, img = image_logits(loaded, image, device)
    pts = to_original(decode_logits(logits)[0], scale)  # (P, 2) continuous index (i, j)
    idx = np.zeros((len(pts), img.ndim))
    idx[:, :2] = pts
    m = img.ijk_to_lps()
    lps = idx @ m[: img.ndim, : img.ndim].T + m[: img.ndim, img.ndim]
    out = np.zeros((len(pts), 3))
    out[:, : img.ndim] = lps
    return out


def markups_json(points_lps: np.ndarray, names: Sequence[str], label: str = "Landmarks") -> dict[str, Any]:
    """A Slicer markups point list (``.mrk.json``, schema v1.0.3) with LPS positions in mm."""
    cps = [{"id": str(i + 1), "label": str(name), "description": "", "associatedNodeID": "",
            "position": [float(v) for v in p], "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
            "selected": True, "locked": False, "visibility": True, "positionStatus": "defined"}
           for i, (name, p) in enumerate(zip(names, points_lps))]  # fmt: skip
    return {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
        "Schema/markups-schema-v1.0.3.json#",
        "markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm", "locked": False,
                     "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d", "lastUsedControlPointNumber":
                     len(cps), "name": label, "controlPoints": cps, "measurements": [],
                     "display": {"visibility": True, "opacity": 1.0, "color": [0.4, 1.0, 1.0],
                                 "selectedColor": [1.0, 0.5, 0.5], "propertiesLabelVisibility": False,
                                 "pointLabelsVisibility": True, "textScale": 2.0, "glyphType": "Sphere3D",
                                 "glyphScale": 1.5, "glyphSize": 5.0, "useGlyphScale": True}}],
    }  # fmt: skip


def write_markups(
    path: PathLike, points_lps: np.ndarray, names: Sequence[str], label: str = "Landmarks"
) -> Path:
    """Write a Slicer ``.mrk.json`` point list atomically; returns the path."""
    from .atomic import write_json

    path = Path(path)
    if not path.name.endswith(".json"):
        raise InputError(f"{path}: a landmark output must be a Slicer markups file ending in .mrk.json.")
    write_json(path, markups_json(points_lps, names, label))
    return path


def read_markups(path: PathLike) -> tuple[np.ndarray, list[str]]:
    """Positions ``(N, 3)`` (LPS mm) and labels of the first point list of a ``.mrk.json``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    m = data["markups"][0]
    pts = np.array([cp["position"] for cp in m["controlPoints"]], float)
    if m.get("coordinateSystem", "LPS") == "RAS":
        pts[:, :2] *= -1
    return pts, [cp["label"] for cp in m["controlPoints"]]


# --- synthetic data -----------------------------------------------------------------------------------
def synthetic_shapes(rng: np.random.Generator, width: int, height: int) -> dict[str, np.ndarray]:
    """Chest-like landmark contours ``{group: (n, 2) (x, y)}`` in a ``width x height`` image: two lung
    ellipses, a heart ellipse and two clavicle lines, randomly shifted and scaled."""
    cx = width * (0.5 + rng.uniform(-0.05, 0.05))
    cy = height * (0.5 + rng.uniform(-0.05, 0.05))
    s = rng.uniform(0.9, 1.1)
    w, h = width * s, height * s

    def ellipse(n: int, x0: float, y0: float, rx: float, ry: float, start: float) -> np.ndarray:
        t = start + np.linspace(0, 2 * np.pi, n, endpoint=False)
        return np.stack([x0 + rx * np.cos(t), y0 + ry * np.sin(t)], 1)

    def line(n: int, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        t = np.linspace(0, 1, n)[:, None]
        return np.array([x0, y0]) * (1 - t) + np.array([x1, y1]) * t

    return {
        "RL": ellipse(44, cx - 0.2 * w, cy, 0.13 * w, 0.28 * h, -np.pi / 2),
        "LL": ellipse(50, cx + 0.2 * w, cy, 0.13 * w, 0.28 * h, -np.pi / 2),
        "H": ellipse(26, cx + 0.04 * w, cy + 0.15 * h, 0.12 * w, 0.09 * h, 0.0),
        "RCLA": line(23, cx - 0.35 * w, cy - 0.33 * h, cx - 0.05 * w, cy - 0.38 * h),
        "LCLA": line(23, cx + 0.35 * w, cy - 0.33 * h, cx + 0.05 * w, cy - 0.38 * h),
    }


def render_synthetic(
    shapes: dict[str, np.ndarray], width: int, height: int, rng: np.random.Generator
) -> np.ndarray:
    """A synthetic radiograph ``(height, width)`` uint8: bright body, dark lungs, a bright blob at every
    landmark of ``shapes`` (so that each landmark is visible), noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.full((height, width), 150.0, np.float32)
    for g in ("RL", "LL"):
        c = shapes[g].mean(0)
        r = np.ptp(shapes[g], axis=0) / 2
        img[((xx - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 <= 1] = 60.0
    rad = max(width, height) / 80.0
    for pts in shapes.values():
        for x, y in pts:
            img += 90.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * rad**2))
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_synthetic_cxr(
    folder: PathLike,
    n_labelled: int = 12,
    n_unlabelled: int = 4,
    width: int = 96,
    height: int = 80,
    spacing_mm: Optional[float] = 0.5,
    seed: int = 0,
    lungs_only: int = 1,
) -> Path:
    """Write a synthetic landmark dataset: ``<id>.png`` + ``<id>_landmarks.json`` (the shared data's
    layout), the last ``lungs_only`` labelled cases without heart and clavicles and without spacing, and
    ``unlabelled/`` images. Returns ``folder``."""
    from PIL import Image as PILImage

    root = Path(folder)
    (root / "unlabelled").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_labelled + n_unlabelled):
        shapes = synthetic_shapes(rng, width, height)
        img = render_synthetic(shapes, width, height, rng)
        if i >= n_labelled:
            PILImage.fromarray(img).save(root / "unlabelled" / f"u{i:03d}.png")
            continue
        partial = i >= n_labelled - lungs_only
        data: dict[str, Any] = {g: np.round(p, 3).tolist() for g, p in shapes.items()
                                if not partial or g in LUNG_GROUPS}  # fmt: skip
        data["_meta"] = {"pixel_spacing_mm": None if partial else spacing_mm, "source_dataset": "synthetic"}
        PILImage.fromarray(img).save(root / f"c{i:03d}.png")
        (root / f"c{i:03d}_landmarks.json").write_text(json.dumps(data), encoding="utf-8")
    return root
