"""Chest X-ray landmark data: images with ``<id>_landmarks.json`` contours, loaded at a network's size.

A landmark case is a 2D image with a ``<id>_landmarks.json`` beside it: groups of ``[x, y]`` pixel
coordinates (x right, y down; keys ``RL``/``LL`` lung contours, ``H`` heart, ``RCLA``/``LCLA``
clavicles) and a ``_meta`` block with ``pixel_spacing_mm``. Groups an image lacks (Shenzhen cases have
lungs only) are masked out of losses and metrics. Every image is resized to ``size x size`` pixels; point
coordinates follow (pixel-centre convention, ``x' = (x + 0.5) * size / W - 0.5``) and the per-axis scale
back to the original pixels is kept so that errors are measured in original pixels, and in millimetres
when the spacing is known.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..atomic import atomic_path
from ..errors import DatasetError, TrainingError
from ..io.image import pixels_in_8bit_range
from ..models.landmark_scoring import contour_mask, read_landmark_json
from ..models.landmarks import GROUPS, LUNG_GROUPS, LandmarkSchema, resize_image, to_resized
from ..progress import check_cancel, progress_bar

PathLike = Union[str, Path]


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


def _read_png(path: Path) -> np.ndarray:
    """The picture's grey levels ``(H, W)`` float32 in 0-255: of 12 or 16 bits scaled as ``apply`` reads them
    (:func:`~ModelSelectorLib.io.image.pixels_in_8bit_range`; converting them to 8 bits clips them white)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            if im.mode.startswith("I"):  # one channel of more than 8 bits
                return np.asarray(pixels_in_8bit_range(np.asarray(im))[0], dtype=np.float32)
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
    pts, mask, spacing, meta = read_landmark_json(landmark_path, schema, arr.shape[1], arr.shape[:2])
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
    labelled_dirs, unlabelled_dirs = _landmark_dirs(root)
    labelled = [p for d in labelled_dirs for p in _images(d) if _landmarks_of(p).is_file()]
    unlabelled = [p for d in unlabelled_dirs for p in _images(d)]
    if not labelled:
        raise DatasetError(
            f"{root}: no images with landmarks found (expected <id>.png + <id>_landmarks.json, or the "
            "shared data root with cxr_landmarks/)."
        )
    return labelled, unlabelled


def _landmark_dirs(root: Path) -> tuple[list[Path], list[Path]]:
    """The folders of labelled and of unlabelled images under ``root`` (:func:`find_landmark_folders`)."""
    if not root.is_dir():
        raise DatasetError(f"{root}: no such data folder.")
    labelled = [root / d for d in ("cxr_landmarks", "cxr_lungseg_imlab") if (root / d).is_dir()] or [root]
    return labelled, [root / d for d in ("cxr_unlabelled", "unlabelled") if (root / d).is_dir()]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.png") if not p.stem.endswith(("_lungmask", "_mask")))


def _landmarks_of(image: Path) -> Path:
    return image.with_name(image.stem + "_landmarks.json")


def images_without_landmarks(data: PathLike) -> list[Path]:
    """The images of ``data``'s labelled folders that have no ``<id>_landmarks.json`` beside them: neither
    labelled nor in the unlabelled pool, they are left out of training."""
    return [p for d in _landmark_dirs(Path(data))[0] for p in _images(d) if not _landmarks_of(p).is_file()]


def paediatric_ids(data: PathLike) -> set[str]:
    """File stems of the images that ``data``'s ``manifest.csv`` (the shared data's file list) describes as
    paediatric radiographs: another domain than the adult PA images the landmarks were drawn on. Empty
    without a manifest."""
    import csv

    path = Path(data) / "manifest.csv"
    if not path.is_file():
        return set()
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return {Path(r.get("path", "")).stem for r in rows if "paediatric" in str(r.get("modality", "")).lower()}


#: JSRT ids in an outline-only annotation file; their 1024 px space is the labelled JSRT images' 512 px space doubled
JSRT_ID_PREFIX = "JPC"


def labelled_image_ids(data: PathLike) -> set[str]:
    """The ids of ``data``'s labelled images: their file stems and the JSRT ids their landmark files name
    (``_meta.jsrt_id``, e.g. ``img_1`` of ``cxr_lungseg_imlab/`` is ``JPCNN090``)."""
    ids = set()
    for path in find_landmark_folders(data)[0]:
        ids.add(path.stem)
        meta = json.loads(path.with_name(path.stem + "_landmarks.json").read_text(encoding="utf-8")).get(
            "_meta"
        )
        if isinstance(meta, dict) and meta.get("jsrt_id"):
            ids.add(str(meta["jsrt_id"]))
    return ids


def jsrt_outlines(path: PathLike, schema: LandmarkSchema, size: int, exclude: set[str],
                  image_size: int = 512) -> np.ndarray:  # fmt: skip
    """Complete JSRT outlines of an outline-only annotation file, on the resized grid of ``size`` px.

    The file (``cxr_landmarks_ngaggion/landmarks_all_1024.json``) holds ``{"images": {id: {"RL": [[x, y], ...],
    ...}}}`` in a 1024 px space. Only JSRT outlines are taken: the labelled JSRT images are that space halved
    (``image_size`` 512), so their points map exactly; the other sources were cropped and padded to a square
    first, another frame. Outlines whose id is in ``exclude`` (the data's own images) or that lack a group of
    ``schema`` are left out.

    Returns:
        ``(M, P, 2)`` float ``(x, y)`` points in the schema's order.

    Raises:
        DatasetError: an unreadable file, or one without an ``images`` object.
    """
    path = Path(path)
    try:
        images = json.loads(path.read_text(encoding="utf-8"))["images"]
        if not isinstance(images, dict):
            raise TypeError("'images' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(
            f"{path}: not an outline file with an 'images' object of id -> groups ({e})."
        ) from e
    scale = (image_size / size, image_size / size)
    shapes = []
    for image_id in sorted(images):
        groups = images[image_id]
        if not image_id.startswith(JSRT_ID_PREFIX) or image_id in exclude or not isinstance(groups, dict):
            continue
        arrays = [np.asarray(groups.get(g, []), dtype=float) for g in schema.indices]
        if any(a.shape != (GROUPS[g], 2) for a, g in zip(arrays, schema.indices)):
            continue
        points = np.concatenate([a[idx] for a, idx in zip(arrays, schema.indices.values())])
        shapes.append(to_resized(points * (image_size / 1024.0), scale))
    return np.stack(shapes) if shapes else np.zeros((0, schema.n_points, 2))


def lung_mask_path(image_path: PathLike) -> Optional[Path]:
    """The lung-field mask ``<id>_lungmask.png`` beside a landmark image, if there is one."""
    p = Path(image_path)
    mask = p.with_name(p.stem + "_lungmask.png")
    return mask if mask.is_file() else None


def load_dataset(
    data: PathLike,
    size: int,
    schema: LandmarkSchema,
    cache: Optional[PathLike] = None,
    cancel: Optional[Any] = None,
    unlabelled: bool = True,
) -> tuple[list[LandmarkCase], list[LandmarkCase]]:
    """All labelled and (with ``unlabelled``) unlabelled cases under ``data`` at ``size x size`` (see
    :func:`find_landmark_folders`).

    With ``cache`` (an ``.npz`` path), the resized arrays are stored there and reused when the file
    list, size and schema are unchanged.
    """
    labelled_paths, unlabelled_paths = find_landmark_folders(data)
    if not unlabelled:
        unlabelled_paths = []
    left_out = images_without_landmarks(data)
    if left_out:  # said, since a missing or misnamed landmark file would otherwise go unnoticed
        names = ", ".join(p.name for p in left_out[:3]) + (", ..." if len(left_out) > 3 else "")
        print(f"modelselector: warning: {len(left_out)} image(s) of {data} have no <id>_landmarks.json beside them "
              f"and are left out ({names}); add their landmark files, or move them into an unlabelled/ folder to "
              "learn from them unlabelled.", file=sys.stderr)  # fmt: skip
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
    # each z[key] reads (and decompresses) the whole array: read every array once
    a = {k: z[k] for k in ("ids", "images", "points", "masks", "scales", "spacings", "sources")}
    cases = []
    for i in range(len(a["ids"])):
        sp = a["spacings"][i]
        cases.append(LandmarkCase(str(a["ids"][i]), a["images"][i], a["points"][i], a["masks"][i],
                                  tuple(float(v) for v in a["scales"][i]),
                                  None if np.isnan(sp).any() else (float(sp[0]), float(sp[1])),
                                  str(a["sources"][i])))  # fmt: skip
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
    """Write a synthetic landmark dataset: ``<id>.png`` + ``<id>_landmarks.json`` + ``<id>_lungmask.png`` (the
    shared data's layout; the mask is the filled lung contours), the last ``lungs_only`` labelled cases without
    heart and clavicles and without spacing, and ``unlabelled/`` images. Returns ``folder``."""
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
        lungs = contour_mask(shapes["RL"], (height, width)) | contour_mask(shapes["LL"], (height, width))
        PILImage.fromarray((lungs * 255).astype(np.uint8)).save(root / f"c{i:03d}_lungmask.png")
        (root / f"c{i:03d}_landmarks.json").write_text(json.dumps(data), encoding="utf-8")
    return root
