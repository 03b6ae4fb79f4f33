"""The bundled image encoder: medical image -> a set of L2-normalised embeddings, one per 2D view.

A 2D image gives one view; a 3D volume gives slices from the three orthogonal planes, taken from the
central part of the imaged body after resampling to a canonical (LPS, identity-direction) grid of fixed
isotropic spacing, so that a partial scan (only the chest of a whole-body CT) still yields views that
look like those of a full scan. Each view has two channels, which keeps the intensity handling
modality-agnostic:

- channel 0: Hounsfield-like values, ``clip((v + 1000) / 2000, 0, 1)``: meaningful for CT, saturated or
  nearly constant for other modalities (which is itself informative);
- channel 1: the view's own 1-99 % percentiles mapped to ``[0, 1]`` (clipped).

The network (:class:`EncoderNet`) is a small plain-torch CNN (about 1.7 M parameters) that maps a view
``(2, S, S)`` to a 128-d embedding on the unit sphere; a cosine classification head over modality x body
region classes (``"CT:CHEST"``, ``"MR:HEAD"``, ..., ``"OT:OOD"`` for non-radiology photos) is used for
training and for :meth:`Encoder.classify`.

Typical use::

    from ModelSelectorLib.encoder import Encoder
    from ModelSelectorLib.io import read_image

    enc = Encoder.load()                      # bundled Resources/encoder/encoder.pt
    emb = enc.embed(read_image("ct.nii.gz"))  # (n_views, 128), rows of unit norm
    enc.classify(read_image("ct.nii.gz"))     # [("CT:ABDOMEN", 0.83), ...]
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import SimpleITK as sitk

from . import __version__
from .atomic import atomic_path, save_figure, write_json, write_text
from .errors import DatasetError, InputError, ModelSelectorError, TrainingError
from .io import Image, read_image
from .progress import check_cancel, progress_bar

#: folder of the bundled encoder (weights ``encoder.pt``, ``card.json``, ``README.md``, ``confusion.png``)
RESOURCE_DIR = Path(__file__).resolve().parents[1] / "Resources" / "encoder"
DEFAULT_WEIGHTS = RESOURCE_DIR / "encoder.pt"

EMBED_DIM = 128
DEFAULT_IMAGE_SIZE = 64
DEFAULT_CHANNELS = (24, 48, 96, 192, 256)
OOD_CLASS = "OT:OOD"
WEIGHTS_FORMAT = 1

# --- views ------------------------------------------------------------------------------------------------


def _resize_pad(
    arr: np.ndarray, size: int, aspect: float = 1.0, pad_value: Optional[float] = None
) -> np.ndarray:
    """Resize a 2D array ``(h, w)`` to fit ``size x size`` keeping its physical aspect, and pad (centred).

    Args:
        arr: 2D array ``(h, w)``.
        size: output side in pixels.
        aspect: physical size of a row step divided by a column step (``spacing_y / spacing_x``).
        pad_value: value of the padding (default: the array's minimum).

    Returns:
        float32 array ``(size, size)``.
    """
    import torch
    import torch.nn.functional as F

    h, w = arr.shape
    ph, pw = h * aspect, float(w)  # physical extents in column-step units
    scale = size / max(ph, pw)
    nh, nw = max(1, min(size, int(round(ph * scale)))), max(1, min(size, int(round(pw * scale))))
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    antialias = nh < h or nw < w
    t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=antialias)
    fill = float(arr.min()) if pad_value is None else float(pad_value)
    out = np.full((size, size), fill, np.float32)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = t[0, 0].numpy()
    return out


def view_channels(view: np.ndarray) -> np.ndarray:
    """The two encoder channels of a raw-intensity view.

    Args:
        view: float array ``(H, W)`` in the image's own units (HU for CT).

    Returns:
        float32 array ``(2, H, W)``: channel 0 = ``clip((v + 1000) / 2000, 0, 1)``, channel 1 = the view's
        1st-99th percentiles mapped to ``[0, 1]`` (clipped; zeros for a constant view).
    """
    v = view.astype(np.float32)
    c0 = np.clip((v + 1000.0) / 2000.0, 0.0, 1.0)
    lo, hi = np.percentile(v, (1.0, 99.0))
    if hi - lo < 1e-6:
        lo, hi = float(v.min()), float(v.max())
    c1 = np.clip((v - lo) / (hi - lo), 0.0, 1.0) if hi - lo > 1e-6 else np.zeros_like(v)
    return np.stack([c0, c1]).astype(np.float32)


def _canonical_grid(img: sitk.Image, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Origin and size ``(x, y, z)`` of an identity-direction grid of ``spacing`` mm covering ``img``."""
    size = np.asarray(img.GetSize(), dtype=float)
    corners = []
    for i in (0, size[0] - 1):
        for j in (0, size[1] - 1):
            for k in (0, size[2] - 1):
                corners.append(img.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k))))
    c = np.asarray(corners)
    lo, hi = c.min(axis=0), c.max(axis=0)
    n = np.maximum(1, np.floor((hi - lo) / spacing + 1e-6).astype(int) + 1)
    return lo, n


def _resample(
    img: sitk.Image, origin: Sequence[float], size: Sequence[int], spacing: float, fill: float
) -> np.ndarray:
    """Resample ``img`` (linear) onto an identity-direction grid; returns the array ``(z, y, x)``."""
    f = sitk.ResampleImageFilter()
    f.SetOutputOrigin([float(o) for o in origin])
    f.SetOutputSpacing([float(spacing)] * 3)
    f.SetOutputDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    f.SetSize([int(s) for s in size])
    f.SetInterpolator(sitk.sitkLinear)
    f.SetDefaultPixelValue(float(fill))
    f.SetOutputPixelType(sitk.sitkFloat32)
    return sitk.GetArrayFromImage(f.Execute(img))


def _central_positions(profile: np.ndarray, n: int, lo_frac: float = 0.2, hi_frac: float = 0.8) -> np.ndarray:
    """``n`` fractional positions (0-1 of the axis) spread over the central part of the foreground profile."""
    idx = np.nonzero(profile > 0)[0]
    m = len(profile)
    if len(idx) == 0 or m <= 1:
        a, b = 0.0, 1.0
    else:
        a, b = idx[0] / (m - 1), idx[-1] / (m - 1)
    a, b = a + (b - a) * lo_frac, a + (b - a) * hi_frac
    if n == 1:
        return np.asarray([(a + b) / 2])
    return np.linspace(a, b, n)


def image_views(
    image: Image,
    spacing_mm: float = 2.0,
    n_per_axis: int = 8,
    size: int = DEFAULT_IMAGE_SIZE,
    min_foreground: float = 0.05,
    raw: bool = False,
) -> np.ndarray:
    """The encoder's input views of an image.

    A 2D image (grey or colour; colour is mixed to luma) gives one view, resized keeping its physical
    aspect and padded with its minimum. A 3D volume is resampled (linear, SimpleITK) onto a canonical grid:
    identity direction (LPS axes), isotropic ``spacing_mm``, covering the whole volume, so oblique and
    anisotropic volumes look alike. From it, ``n_per_axis`` axial, coronal and sagittal slices are taken at
    evenly spread positions between 20 % and 80 % of the imaged body's extent along each axis (body =
    voxels above 10 % of the 1-99 % intensity range), so a partial scan gives views of the part it covers.
    Views are shown in radiological convention (axial: anterior up, patient left on the right; coronal and
    sagittal: superior up). Near-empty slices (less than ``min_foreground`` of the view is body) are
    skipped, and so are planes that are thin strips (a few slices only) unless nothing else remains.

    Args:
        image: a 2D or 3D :class:`~ModelSelectorLib.io.Image`.
        spacing_mm: isotropic resampling spacing of 3D volumes, in mm.
        n_per_axis: slices per orthogonal plane (3D only).
        size: side of the square views, in pixels.
        min_foreground: minimum fraction of body pixels for a 3D slice to be kept.
        raw: return the raw-intensity views ``(n, H, W)`` instead of the 2-channel encoder input.

    Returns:
        float32 array ``(n_views, 2, size, size)`` (``(n_views, size, size)`` when ``raw``).

    Raises:
        InputError: the image has no voxels, non-finite voxels, or more than 3 dimensions.
    """
    img = image.to_grayscale() if image.is_multicomponent else image
    arr = np.asarray(img.array)
    if arr.size == 0:
        raise InputError("image has no voxels; nothing to embed.")
    if img.ndim == 3 and arr.shape[0] == 1:  # a one-slice volume is a 2D image
        img = Image(arr[0], tuple(img.spacing[:2]), tuple(img.origin[:2]), (1.0, 0.0, 0.0, 1.0), img.meta)
        arr = img.array
    if not np.all(np.isfinite(arr)):
        raise InputError("image has NaN or infinite voxels; replace them before embedding.")
    if img.ndim == 2:
        sx, sy = float(img.spacing[0]), float(img.spacing[1])
        raw_views = [_resize_pad(arr.astype(np.float32), size, aspect=sy / sx)]
    elif img.ndim == 3:
        raw_views = _volume_views(img, spacing_mm, n_per_axis, size, min_foreground)
    else:
        raise InputError(f"image has {img.ndim} dimensions; the encoder takes 2D images and 3D volumes.")
    stack = np.stack(raw_views).astype(np.float32)
    if raw:
        return stack
    return np.stack([view_channels(v) for v in stack])


def _volume_views(img: Image, spacing: float, n_per_axis: int, size: int, min_fg: float) -> list[np.ndarray]:
    s_img = img.to_sitk()
    if s_img.GetPixelID() != sitk.sitkFloat32:
        s_img = sitk.Cast(s_img, sitk.sitkFloat32)
    arr = img.array
    sub = arr[:: max(1, arr.shape[0] // 32), :: max(1, arr.shape[1] // 64), :: max(1, arr.shape[2] // 64)]
    p1, p99 = (float(x) for x in np.percentile(sub, (1.0, 99.0)))
    fill = float(sub.min())
    thr = p1 + 0.1 * (p99 - p1)
    origin, n = _canonical_grid(s_img, spacing)
    # coarse copy (about 48^3 voxels at most) to find the body's extent and skip empty slices cheaply
    extent = (n - 1) * spacing
    coarse_sp = max(spacing, float(extent.max()) / 48.0)
    cn = np.maximum(1, np.floor(extent / coarse_sp + 1e-6).astype(int) + 1)
    coarse = _resample(s_img, origin, cn, coarse_sp, fill) > thr  # (z, y, x)
    views: list[np.ndarray] = []
    thin: list[np.ndarray] = []
    # axis: 0 = axial (z), 1 = coronal (y), 2 = sagittal (x), in the (z, y, x) array
    for axis in (0, 1, 2):
        other = [a for a in (0, 1, 2) if a != axis]
        profile = coarse.sum(axis=tuple(other))
        in_plane = [n[2 - a] for a in other]  # voxels of the plane's two axes (array order)
        is_thin = min(in_plane) < 0.15 * max(in_plane) or min(in_plane) < 4
        n_take = n_per_axis if not is_thin else min(n_per_axis, 2)
        for frac in _central_positions(profile, n_take):
            ci = int(round(frac * (coarse.shape[axis] - 1)))
            fg = np.take(coarse, ci, axis=axis).mean()
            if fg < min_fg:
                continue
            pos = int(round(frac * (n[2 - axis] - 1)))
            o = np.array(origin, dtype=float)
            sz = np.array(n, dtype=int)
            o[2 - axis] = origin[2 - axis] + pos * spacing
            sz[2 - axis] = 1
            sl = np.take(_resample(s_img, o, sz, spacing, fill), 0, axis=axis)  # 2D (rows, cols)
            if axis != 0:
                sl = sl[::-1]  # rows were z (inferior first): superior up
            view = _resize_pad(sl, size, pad_value=fill)
            (thin if is_thin else views).append(view)
    if not views:
        views = thin
    if not views:  # everything looked empty: take the central axial slice anyway
        o = np.array(origin, dtype=float)
        sz = np.array(n, dtype=int)
        o[2] = origin[2] + (n[2] // 2) * spacing
        sz[2] = 1
        views = [_resize_pad(_resample(s_img, o, sz, spacing, fill)[0], size, pad_value=fill)]
    return views


# --- network ----------------------------------------------------------------------------------------------


def _build_net(n_classes: int, channels: Sequence[int] = DEFAULT_CHANNELS, embed_dim: int = EMBED_DIM) -> Any:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class EncoderNet(nn.Module):
        """Plain CNN: ``(B, 2, S, S)`` -> L2-normalised ``(B, embed_dim)``; ``logits()`` for training.

        Stages of two 3x3 conv + BatchNorm + ReLU, stride 2 between stages, global average pooling, a
        linear projection to ``embed_dim`` and L2 normalisation. The head is a cosine classifier
        (normalised weights, fixed scale 16) so classes live as directions on the embedding sphere.
        """

        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            c_in = 2
            for i, c in enumerate(channels):
                stride = 1 if i == 0 else 2
                layers += [
                    nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=False),
                    nn.BatchNorm2d(c),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(c, c, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c),
                    nn.ReLU(inplace=True),
                ]
                c_in = c
            self.features = nn.Sequential(*layers)
            self.proj = nn.Linear(c_in, embed_dim)
            self.head = nn.Parameter(torch.randn(max(1, n_classes), embed_dim) * 0.01)
            self.scale = 16.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.features(x).mean(dim=(2, 3))
            return F.normalize(self.proj(f), dim=1)

        def logits(self, emb: torch.Tensor) -> torch.Tensor:
            return self.scale * emb @ F.normalize(self.head, dim=1).t()

    return EncoderNet()


class Encoder:
    """A trained encoder: network, class list, view size and the training config.

    Attributes:
        net: the torch module (eval mode, CPU unless moved).
        classes: class names of the training head, ``"MODALITY:REGION"`` (``"OT:OOD"`` for photos).
        image_size: side of the square views in pixels.
        config: dict with ``image_size``, ``channels``, ``embed_dim``, ``spacing_mm``, ``n_per_axis``.
    """

    def __init__(self, net: Any, classes: Sequence[str], config: dict[str, Any]) -> None:
        self.net = net.eval()
        self.classes = list(classes)
        self.config = dict(config)
        self.image_size = int(config.get("image_size", DEFAULT_IMAGE_SIZE))

    @classmethod
    def create(
        cls,
        classes: Sequence[str],
        image_size: int = DEFAULT_IMAGE_SIZE,
        channels: Sequence[int] = DEFAULT_CHANNELS,
    ) -> Encoder:
        """A new, untrained encoder for ``classes``."""
        config = {
            "image_size": int(image_size),
            "channels": [int(c) for c in channels],
            "embed_dim": EMBED_DIM,
            "spacing_mm": 2.0,
            "n_per_axis": 8,
        }
        return cls(_build_net(len(classes), channels, EMBED_DIM), classes, config)

    # --- persistence ------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What :meth:`save` writes: plain tensors, lists, numbers and strings (``weights_only``-safe)."""
        return {
            "format": WEIGHTS_FORMAT,
            "config": self.config,
            "classes": self.classes,
            "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
        }

    def save(self, path: os.PathLike | str) -> Path:
        """Save weights, classes and config to ``path`` atomically (``torch.save``)."""
        import torch

        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save(self.state(), str(tmp))
        return path

    @classmethod
    def load(cls, path: Optional[os.PathLike | str] = None, device: str = "cpu") -> Encoder:
        """Load an encoder saved by :meth:`save` (default: the bundled ``Resources/encoder/encoder.pt``).

        Weights are read with ``torch.load(weights_only=True)``: no code in the file is executed.

        Raises:
            InputError: the file does not exist.
            ModelSelectorError: the file is not an encoder weights file of a known format.
        """
        import torch

        p = Path(path) if path is not None else DEFAULT_WEIGHTS
        if not p.exists():
            hint = (
                "train one with `modelselector encoder train --data ../shared/data --out Resources/encoder`"
                if path is None
                else "check the path"
            )
            raise InputError(f"{p}: no encoder weights file; {hint}.")
        try:
            d = torch.load(str(p), map_location=device, weights_only=True)
        except Exception as e:  # pickle/zip errors of several kinds
            raise ModelSelectorError(
                f"{p}: not a readable encoder weights file ({type(e).__name__}: {e})."
            ) from e
        if not isinstance(d, dict) or d.get("format") != WEIGHTS_FORMAT or "state_dict" not in d:
            raise ModelSelectorError(
                f"{p}: not an encoder weights file of format {WEIGHTS_FORMAT}; retrain it."
            )
        config = dict(d["config"])
        classes = list(d["classes"])
        net = _build_net(
            len(classes), config.get("channels", DEFAULT_CHANNELS), int(config.get("embed_dim", 128))
        )
        try:
            net.load_state_dict(d["state_dict"])
        except RuntimeError as e:
            raise ModelSelectorError(f"{p}: weights do not match the encoder network ({e}).") from e
        return cls(net.to(device), classes, config)

    # --- inference --------------------------------------------------------------------------------------
    @property
    def device(self) -> Any:
        return next(self.net.parameters()).device

    def views(self, image: Image, n_per_axis: Optional[int] = None) -> np.ndarray:
        """:func:`image_views` with this encoder's view size, spacing and views per axis."""
        return image_views(
            image,
            spacing_mm=float(self.config.get("spacing_mm", 2.0)),
            n_per_axis=int(n_per_axis or self.config.get("n_per_axis", 8)),
            size=self.image_size,
        )

    def _forward(self, views: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        import torch

        v = np.asarray(views, dtype=np.float32)
        if v.ndim == 3:
            v = v[None]
        if v.ndim != 4 or v.shape[1] != 2:
            raise InputError(f"views must have shape (n, 2, H, W); got {v.shape}.")
        embs, probs = [], []
        with torch.inference_mode():
            for i in range(0, len(v), batch_size):
                x = torch.from_numpy(v[i : i + batch_size]).to(self.device)
                e = self.net(x)
                embs.append(e.cpu().numpy())
                probs.append(torch.softmax(self.net.logits(e), dim=1).cpu().numpy())
        return np.concatenate(embs), np.concatenate(probs)

    def embed_views(self, views: np.ndarray) -> np.ndarray:
        """Embeddings of views ``(n, 2, H, W)`` -> float32 ``(n, 128)``, each row of unit L2 norm."""
        return self._forward(views)[0].astype(np.float32)

    def embed(self, image: Image, n_per_axis: Optional[int] = None) -> np.ndarray:
        """Embeddings of an image's views (see :func:`image_views`): float32 ``(n_views, 128)``, unit rows."""
        return self.embed_views(self.views(image, n_per_axis))

    def predict_proba(self, image: Image) -> np.ndarray:
        """Class probabilities averaged over the image's views: ``(len(classes),)``."""
        return self._forward(self.views(image))[1].mean(axis=0)

    def classify(self, image: Image, top_k: int = 3) -> list[tuple[str, float]]:
        """The ``top_k`` modality x region classes of ``image`` with probabilities (mean over views)."""
        p = self.predict_proba(image)
        order = np.argsort(-p)[:top_k]
        return [(self.classes[i], float(p[i])) for i in order]


# --- training data ----------------------------------------------------------------------------------------


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


def train_encoder(
    data_root: os.PathLike | str,
    out_dir: os.PathLike | str = RESOURCE_DIR,
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

    Training: class-balanced sampling, augmentation (:func:`_augment`), AdamW + cosine schedule,
    cross-entropy on the cosine head with label smoothing 0.1; stops after ``epochs`` or ``max_minutes``.
    The weights of the epoch with the best validation balanced accuracy are kept.

    Writes (atomically) into ``out_dir``: ``encoder.pt``, ``card.json``, ``README.md``, ``confusion.png``.

    Returns:
        the card (dict).

    Raises:
        DatasetError: no catalogue in ``data_root``; TrainingError: fewer than 2 classes;
        Cancelled: ``cancel`` was set (nothing written).
    """
    import torch
    import torch.nn.functional as F

    t0 = time.time()
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    np.random.seed(seed)
    out = Path(out_dir)
    items = collect_samples(data_root, max_volumes_per_class, seed)
    groups_per_cls: dict[str, set] = {}
    for it in items:
        groups_per_cls.setdefault(it["cls"], set()).add(it["group"])
    excluded = {c: len(g) for c, g in groups_per_cls.items() if len(g) < min_groups}
    items = [it for it in items if it["cls"] not in excluded]
    classes = sorted({it["cls"] for it in items})
    if len(classes) < 2:
        raise TrainingError(
            f"{data_root}: found {len(classes)} class(es) with >= {min_groups} images; need 2+."
        )
    cidx = {c: i for i, c in enumerate(classes)}
    train_g, val_g = split_groups(items, val_fraction, seed)

    # load every view once (raw 2-channel views at image_size)
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
    val_mask = torch.tensor(is_val, dtype=torch.bool)
    x_tr, y_tr = x_all[~val_mask], y_all[~val_mask]
    x_va, y_va = x_all[val_mask], y_all[val_mask]
    n_cls = len(classes)
    counts_tr = torch.bincount(y_tr, minlength=n_cls)
    counts_va = torch.bincount(y_va, minlength=n_cls)

    enc = Encoder.create(classes, image_size, channels)
    net = enc.net
    n_params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = max(1, len(y_tr) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    gen = torch.Generator().manual_seed(seed)
    w = (1.0 / counts_tr.clamp(min=1).float())[y_tr]  # class-balanced sampling
    # balance sqrt-wise so that big classes still get seen often
    w = w.sqrt() * (1.0 / counts_tr.clamp(min=1).float().sqrt())[y_tr]

    def evaluate() -> tuple[np.ndarray, float]:
        net.eval()
        preds = []
        with torch.inference_mode():
            for i in range(0, len(y_va), 128):
                preds.append(net.logits(net(x_va[i : i + 128])).argmax(1))
        net.train()
        p = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
        cm = np.zeros((n_cls, n_cls), dtype=np.int64)
        for t, q in zip(y_va.tolist(), p.tolist()):
            cm[t, q] += 1
        rec = [cm[i, i] / cm[i].sum() for i in range(n_cls) if cm[i].sum()]
        return cm, float(np.mean(rec)) if rec else 0.0

    history: list[dict[str, float]] = []
    best: tuple[float, Optional[dict[str, Any]], Optional[np.ndarray], int] = (-1.0, None, None, 0)
    stopped_early = False
    net.train()
    bar = progress_bar(total=epochs * steps_per_epoch, desc="training encoder")
    for epoch in range(epochs):
        idx = torch.multinomial(w, steps_per_epoch * batch_size, replacement=True, generator=gen)
        tot, n_ok, n_seen = 0.0, 0, 0
        for s in range(steps_per_epoch):
            check_cancel(cancel)
            b = idx[s * batch_size : (s + 1) * batch_size]
            xb = _augment(x_tr[b].clone(), gen)
            yb = y_tr[b]
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
        cm, bacc = evaluate()
        history.append(
            {
                "epoch": epoch + 1,
                "loss": tot / n_seen,
                "train_acc": n_ok / n_seen,
                "val_balanced_acc": bacc,
                "val_acc": float(np.trace(cm) / max(cm.sum(), 1)),
                "elapsed_s": time.time() - t0,
            }
        )
        if bacc > best[0]:
            best = (bacc, {k: v.detach().clone() for k, v in net.state_dict().items()}, cm, epoch + 1)
        if (time.time() - t0) / 60.0 > max_minutes and epoch + 1 < epochs:
            stopped_early = True
            break
    bar.close()
    check_cancel(cancel)
    _, best_state, cm, best_epoch = best
    assert best_state is not None and cm is not None
    net.load_state_dict(best_state)
    net.eval()
    enc.config["trained_epochs"] = len(history)
    train_time = time.time() - t0

    per_class = {}
    for i, c in enumerate(classes):
        n = int(cm[i].sum())
        per_class[c] = {
            "n_val_views": n,
            "recall": float(cm[i, i] / n) if n else None,
            "precision": float(cm[i, i] / cm[:, i].sum()) if cm[:, i].sum() else None,
        }
    card = {
        "name": "modelselector-encoder",
        "version": "1." + time.strftime("%Y%m%d", time.gmtime()),
        "code_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data_root": portable_data_root(data_root),
        "data": "radiology_2d/labels.csv (all rows; OOD photos -> OT:OOD) + 3D volumes of manifest.csv with "
        f"modality_code/region_code (<= {max_volumes_per_class} volumes per class, {views_per_volume} views each; "
        "multi-region volumes use their first region; classes with few volumes get up to 24 views per volume)",
        "classes": classes,
        "excluded_classes_groups": excluded,
        "n_train_views": {c: int(counts_tr[i]) for i, c in enumerate(classes)},
        "n_val_views": {c: int(counts_va[i]) for i, c in enumerate(classes)},
        "n_groups": {c: len(groups_per_cls[c]) for c in classes},
        "n_items_skipped": len(skipped),
        "skipped": skipped[:20],
        "split": f"by source image (2D) / subject (3D): {val_fraction:.0%} of each class's groups held out, "
        f"at least one; seed {seed}; {len(train_g)} train groups, {len(val_g)} validation groups",
        "augmentation": (_augment.__doc__ or "").strip().split("\n\n", 1)[-1].replace("\n    ", " ").strip(),
        "network": {
            "type": "plain CNN, cosine head",
            "channels": list(channels),
            "embed_dim": EMBED_DIM,
            "image_size": image_size,
            "n_params": int(n_params),
            "input": "2 x S x S views (see encoder.py)",
        },
        "training": {
            "epochs_requested": epochs,
            "epochs_run": len(history),
            "best_epoch": best_epoch,
            "stopped_by_time_limit": stopped_early,
            "max_minutes": max_minutes,
            "batch_size": batch_size,
            "optimizer": "AdamW, one-cycle lr",
            "lr": lr,
            "loss": "cross-entropy, label smoothing 0.1",
            "sampling": "inverse sqrt class-frequency",
            "threads": threads,
            "history": history,
        },
        "validation": {
            "balanced_accuracy": float(
                np.mean([v["recall"] for v in per_class.values() if v["recall"] is not None])
            ),
            "accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
            "unit": "one view (a 2D image, or one slice of a held-out volume)",
            "per_class": per_class,
            "confusion_matrix": cm.tolist(),
        },
        "training_time_s": round(train_time, 1),
        "seed": seed,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
    }
    out.mkdir(parents=True, exist_ok=True)
    enc.save(out / "encoder.pt")
    os.chmod(out / "encoder.pt", 0o644)
    card["weights_bytes"] = (out / "encoder.pt").stat().st_size
    _plot_confusion(
        cm,
        classes,
        out / "confusion.png",
        f"validation (best epoch {best_epoch}), balanced acc {card['validation']['balanced_accuracy']:.3f}",
    )
    write_json(out / "card.json", card)
    write_text(out / "README.md", card_markdown(card))
    for name in ("confusion.png", "card.json", "README.md"):
        os.chmod(out / name, 0o644)  # temporary files are created 0600; these are shared artefacts
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
        "`ModelSelectorLib/encoder.py`): channel 0 = HU-like `clip((v+1000)/2000)`, channel 1 = per-view "
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
    names no machine-specific folder; resolve it with :func:`card_data_root`."""
    return os.path.relpath(Path(data_root).resolve(), RESOURCE_DIR.parent.parent)


def card_data_root(card: dict[str, Any]) -> Path:
    """The data folder a card's encoder was trained on, resolved against the checkout."""
    return (RESOURCE_DIR.parent.parent / str(card.get("data_root", ""))).resolve()


def load_card(path: Optional[os.PathLike | str] = None) -> dict[str, Any]:
    """The bundled encoder's card (``Resources/encoder/card.json``), or the one at ``path``."""
    p = Path(path) if path is not None else RESOURCE_DIR / "card.json"
    if not p.exists():
        raise InputError(f"{p}: no encoder card; train the encoder first.")
    return json.loads(p.read_text(encoding="utf-8"))
