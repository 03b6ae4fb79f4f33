"""Apply a segmentation bundle to an image and get the label map back in exactly the image's geometry.

Pipeline of :func:`apply_model` (the same preprocessing as :mod:`ModelSelectorLib.train` uses)::

    Image (any orientation, spacing)  --SimpleITK linear resample-->  canonical grid
        (axis-aligned, orientation codes "RAS" as in the bundle's Orientationd, card.target_spacing)
    --> intensity normalisation (card.intensity: ct clip/scale, mr nonzero z-score, percentile)
    --> tensor (1, C, x, y[, z])  (MONAI layout: spatial axes i, j, k as Orientationd RAS gives them)
    --> monai sliding_window_inference(roi_size=card.roi_size) --> argmax on the network grid
    --> SimpleITK nearest-neighbour resample of the labels onto the input grid --> Image (uint8)

``resample="linear"`` instead resamples the softmax probabilities linearly and takes the argmax on the
input grid: smoother borders when the model's spacing is much coarser than the input's, ~0.1 s more per
million voxels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .io import Image, Segment, check_image_content, read_image, write_segmentation
from .progress import check_cancel

#: canonical orientation of the network's input grid (MONAI Orientationd axcodes)
CANONICAL_AXCODES = "RAS"

# LPS world direction of each orientation code
_AXIS_LPS = {
    "L": (1.0, 0.0, 0.0),
    "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0),
    "A": (0.0, -1.0, 0.0),
    "S": (0.0, 0.0, 1.0),
    "I": (0.0, 0.0, -1.0),
}


# --- geometry -------------------------------------------------------------------------------------------
def axcodes_direction(axcodes: str, ndim: int = 3) -> np.ndarray:
    """ITK direction matrix (LPS, columns = world direction of i, j[, k]) for orientation codes.

    For 2D (``ndim=2``) the identity is used: 2D images keep their in-plane orientation.
    """
    if ndim == 2:
        return np.eye(2)
    return np.array([_AXIS_LPS[c] for c in axcodes.upper()[:3]], dtype=float).T


def canonical_grid(
    image: sitk.Image, target_spacing: Optional[Sequence[float]], axcodes: str = CANONICAL_AXCODES
) -> sitk.Image:
    """An empty reference image: axis-aligned (``axcodes``), ``target_spacing`` (mm, ``(x, y[, z])``),
    covering the physical extent of ``image`` (every voxel centre of ``image`` lies inside it)."""
    ndim = image.GetDimension()
    direction = axcodes_direction(axcodes, ndim)
    spacing = np.asarray(target_spacing if target_spacing else image.GetSpacing(), dtype=float)
    size_in = np.asarray(image.GetSize())
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in size_in], indexing="ij")).reshape(ndim, -1).T
    pts = np.array([image.TransformContinuousIndexToPhysicalPoint([float(c) for c in cn]) for cn in corners])
    coords = pts @ direction  # coordinates along the canonical axes
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    size = np.maximum(np.floor((hi - lo) / spacing + 1e-4).astype(int) + 1, 1)
    # centre the grid on the input's extent
    lo = lo + ((hi - lo) - (size - 1) * spacing) / 2.0
    ref = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    ref.SetSpacing([float(s) for s in spacing])
    ref.SetOrigin([float(v) for v in direction @ lo])
    ref.SetDirection([float(d) for d in direction.ravel()])
    return ref


def resample_to(
    image: sitk.Image, reference: sitk.Image, interpolator: int, default: float = 0.0
) -> sitk.Image:
    """``image`` resampled onto ``reference``'s grid (identity transform, world coordinates)."""
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, float(default), image.GetPixelID())


# --- intensities ----------------------------------------------------------------------------------------
def normalize_intensity(array: np.ndarray, intensity: Optional[dict[str, Any]]) -> np.ndarray:
    """Normalise intensities in place-free fashion as training did; returns float32.

    Args:
        array: voxels (any layout).
        intensity: ``{"mode": "ct", "a_min", "a_max"}`` -> clip to [a_min, a_max] and scale to [0, 1]
            (MONAI ``ScaleIntensityRange(clip=True)``); ``{"mode": "mr"}`` -> z-score over non-zero voxels,
            zeros stay 0 (MONAI ``NormalizeIntensity(nonzero=True)``); ``{"mode": "percentile",
            "a_min": lower %, "a_max": upper %}`` -> percentiles to [0, 1], clipped.
    """
    mode = (intensity or {}).get("mode", "mr")
    arr = np.asarray(array, dtype=np.float32)
    if mode == "ct":
        a_min = float(intensity.get("a_min", -1000.0))
        a_max = float(intensity.get("a_max", 1000.0))
        out = (arr - a_min) * (1.0 / (a_max - a_min))
        return np.clip(out, 0.0, 1.0, out=out)
    if mode == "percentile":
        lo, hi = np.percentile(arr, [float(intensity.get("a_min", 0.5)), float(intensity.get("a_max", 99.5))])
        lo, hi = float(lo), float(hi)
        out = (arr - lo) * (1.0 / max(hi - lo, 1e-8))
        return np.clip(out, 0.0, 1.0, out=out)
    mask = arr != 0
    out = arr.copy() if arr is array else arr
    if mask.any():
        vals = arr[mask]
        mean, std = float(vals.mean()), float(vals.std())
        out[mask] = (vals - mean) / (std if std > 0 else 1.0)
    return out


def background_value(array: np.ndarray, intensity: Optional[dict[str, Any]]) -> float:
    """Value for voxels outside the input when resampling: 0 for MR (stays 0 after nonzero z-score),
    the image minimum otherwise (air in CT)."""
    if (intensity or {}).get("mode", "mr") == "mr":
        return 0.0
    return float(np.min(array))


# --- preprocessing shared with training --------------------------------------------------------------
def to_network_layout(array_zyx: np.ndarray) -> np.ndarray:
    """SimpleITK array ``(z, y, x)`` -> MONAI spatial layout ``(x, y, z)`` (a view)."""
    return array_zyx.transpose(tuple(range(array_zyx.ndim))[::-1])


def preprocess(
    image: Image,
    target_spacing: Optional[Sequence[float]],
    intensity: Optional[dict[str, Any]],
    axcodes: str = CANONICAL_AXCODES,
) -> tuple[np.ndarray, sitk.Image]:
    """Resample ``image`` to the canonical grid and normalise its intensities.

    Returns:
        ``(array, grid)``: float32 C-contiguous array ``(x, y[, z])`` on the canonical grid, and the grid
        (a SimpleITK reference image).
    """
    src = image.to_sitk()
    if src.GetPixelID() != sitk.sitkFloat32:
        src = sitk.Cast(src, sitk.sitkFloat32)
    grid = canonical_grid(src, target_spacing, axcodes)
    res = resample_to(src, grid, sitk.sitkLinear, background_value(image.array, intensity))
    arr = normalize_intensity(sitk.GetArrayViewFromImage(res), intensity)
    return np.ascontiguousarray(to_network_layout(arr), dtype=np.float32), grid


def resample_label(label: Image, grid: sitk.Image) -> np.ndarray:
    """A label map resampled (nearest neighbour) onto ``grid``, as a ``(x, y[, z])`` array."""
    res = resample_to(label.to_sitk(), grid, sitk.sitkNearestNeighbor, 0)
    return np.ascontiguousarray(to_network_layout(sitk.GetArrayFromImage(res)))


# --- applying a model -----------------------------------------------------------------------------------
def check_device(device: str) -> None:
    """Raise :class:`InputError` when ``device`` names a GPU that torch cannot use here."""
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was asked for but no CUDA GPU is available; use --device cpu.")


def _as_bundle(bundle: Any, device: str) -> Any:
    check_device(device)
    if isinstance(bundle, (str, os.PathLike)):
        from .bundle import load_bundle

        return load_bundle(bundle, device=device)
    return bundle


def _axcodes_of(bundle: Any) -> str:
    """Orientation codes from the bundle's preprocessing (``Orientationd``), default ``RAS``."""
    config = getattr(bundle, "config", None) or {}
    for t in (config.get("preprocessing") or {}).get("transforms", []) if isinstance(config, dict) else []:
        if isinstance(t, dict) and str(t.get("_target_", "")).endswith("Orientationd") and t.get("axcodes"):
            return str(t["axcodes"])
    return CANONICAL_AXCODES


def _prepare_input(image: Image, spatial_dims: int) -> Image:
    """Check ``image`` and bring it to ``spatial_dims`` dimensions, one component."""
    if image.is_multicomponent:
        image = image.to_grayscale()
    if image.ndim != spatial_dims:
        if spatial_dims == 2 and image.ndim == 3 and image.size[2] == 1:
            arr = image.array[0]
            d = image.direction_matrix()[:2, :2]
            image = Image(arr, image.spacing[:2], image.origin[:2], tuple(d.ravel().tolist()), image.meta)
        elif spatial_dims == 3 and image.ndim == 2:
            image = image.as_3d()
        else:
            raise InputError(
                f"the model expects {spatial_dims}D images and the input is {image.ndim}D "
                f"(size {image.size}); choose a {image.ndim}D model."
            )
    check_image_content(image, str(image.meta.get("path", "image")))
    return image


def predict_logits(
    network: Any,
    array: np.ndarray,
    roi_size: Optional[Sequence[int]],
    device: str = "cpu",
    sw_batch_size: int = 1,
    overlap: float = 0.25,
) -> np.ndarray:
    """Raw network output ``(n_classes, x, y[, z])`` (a torch tensor on ``device``) on a preprocessed array.

    Args:
        network: torch module in eval mode, input ``(B, 1, *spatial)``.
        array: preprocessed ``(x, y[, z])`` float32 array.
        roi_size: sliding-window size in voxels ``(x, y[, z])``; ``None`` runs the whole array at once.
    """
    import torch
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        x = torch.from_numpy(array)[None, None].to(device)
        if roi_size:
            logits = sliding_window_inference(x, list(roi_size), sw_batch_size, network, overlap=overlap)
        else:
            logits = network(x)
        return logits[0]


def predict_probabilities(
    network: Any,
    array: np.ndarray,
    roi_size: Sequence[int] | None,
    device: str = "cpu",
    sw_batch_size: int = 1,
    overlap: float = 0.25,
) -> np.ndarray:
    """Softmax probabilities ``(n_classes, x, y[, z])`` (float32 numpy) on a preprocessed array."""
    import torch

    logits = predict_logits(network, array, roi_size, device, sw_batch_size, overlap)
    with torch.inference_mode():
        return torch.softmax(logits.float(), dim=0).cpu().numpy()


def apply_model(
    bundle: Any,
    image: Image,
    device: str = "cpu",
    cancel: Optional[Any] = None,
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    resample: str = "nearest",
) -> Image:
    """Segment ``image`` with a bundle; the label map has exactly ``image``'s size, spacing, origin, direction.

    Args:
        bundle: a :class:`~ModelSelectorLib.bundle.LoadedBundle` or a bundle folder path.
        image: 2D or 3D image (any orientation and spacing, LPS geometry).
        device: torch device, e.g. ``"cpu"`` or ``"cuda"``.
        cancel: Event-like; checked between stages.
        sw_batch_size, overlap: sliding-window settings.
        resample: how the result returns to the input grid: ``"nearest"`` (argmax on the network grid, then
            nearest-neighbour resampling of the label map; fastest) or ``"linear"`` (softmax probabilities
            resampled linearly, then argmax; smoother borders when the model's spacing is coarse).

    Returns:
        uint8 label map :class:`Image` (values = the card's label values, 0 = background).

    Raises:
        InputError: wrong dimension (e.g. a 2D image for a 3D model), empty or NaN image.
        Cancelled: ``cancel`` was set.
    """
    loaded = _as_bundle(bundle, device)
    card = loaded.card
    network = loaded.network
    image_in = _prepare_input(image, int(card.spatial_dims))
    check_cancel(cancel)
    array, grid = preprocess(image_in, card.target_spacing, card.intensity, _axcodes_of(loaded))
    check_cancel(cancel)
    if resample == "linear":
        probs = predict_probabilities(network, array, card.roi_size, device, sw_batch_size, overlap)
        check_cancel(cancel)
        labels = probabilities_to_input_grid(probs, grid, image_in)
    else:
        logits = predict_logits(network, array, card.roi_size, device, sw_batch_size, overlap)
        net_labels = argmax_channels(logits).cpu().numpy()
        check_cancel(cancel)
        labels = labels_to_input_grid(net_labels, grid, image_in)
    out = image.with_array(labels.reshape(image.array.shape[: image.ndim]))
    out.meta = {"model": card.name, "model_version": card.version}
    return out


def argmax_channels(logits: Any) -> Any:
    """``logits.argmax(0)`` as uint8 for a ``(C, *spatial)`` tensor, computed as C-1 elementwise passes.

    On CPU this is several times faster than ``torch.argmax`` over the (strided) channel axis; ties go to
    the lower channel as with ``argmax``.
    """
    import torch

    with torch.inference_mode():
        best = logits[0].clone()
        out = torch.zeros(best.shape, dtype=torch.uint8, device=logits.device)
        for c in range(1, logits.shape[0]):
            better = logits[c] > best
            out.masked_fill_(better, c)
            torch.maximum(best, logits[c], out=best)
        return out


def _reference(image: Image) -> sitk.Image:
    ref = sitk.Image([int(v) for v in image.size], sitk.sitkUInt8)
    ref.SetSpacing([float(v) for v in image.spacing])
    ref.SetOrigin([float(o) for o in image.origin])
    ref.SetDirection([float(d) for d in image.direction])
    return ref


def labels_to_input_grid(labels: np.ndarray, grid: sitk.Image, image: Image) -> np.ndarray:
    """Resample a ``(x, y[, z])`` label array on ``grid`` (nearest neighbour) onto ``image``'s grid.

    Returns:
        uint8 label array in SimpleITK layout ``(z, y, x)`` / ``(y, x)`` of ``image``.
    """
    lab = sitk.GetImageFromArray(np.ascontiguousarray(to_network_layout(labels)))
    lab.CopyInformation(grid)
    res = sitk.Resample(lab, _reference(image), sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(res)


def probabilities_to_input_grid(probs: np.ndarray, grid: sitk.Image, image: Image) -> np.ndarray:
    """Resample ``(n_classes, x, y[, z])`` probabilities on ``grid`` linearly onto ``image``'s grid and argmax.

    Returns:
        uint8 label array in SimpleITK layout ``(z, y, x)`` / ``(y, x)`` of ``image``.
    """
    ndim = probs.ndim - 1
    # (C, x, y, z) -> (z, y, x, C): a vector image whose components are the classes
    vec = sitk.GetImageFromArray(probs.transpose((*range(ndim, 0, -1), 0)), isVector=True)
    vec.CopyInformation(grid)
    res = sitk.Resample(vec, _reference(image), sitk.Transform(), sitk.sitkLinear, 0.0, vec.GetPixelID())
    back = sitk.GetArrayViewFromImage(res)  # (z, y, x, C)
    return np.argmax(back, axis=-1).astype(np.uint8)


def segments_of(card: Any) -> list[Segment]:
    """The card's labels as :class:`~ModelSelectorLib.io.Segment` objects (names, colours, terminology)."""
    return [Segment.from_dict(lb) for lb in card.labels]


def apply_to_file(
    zoo_path: Union[str, os.PathLike[str]],
    model_name: str,
    image_path: Union[str, os.PathLike[str]],
    out_path: Union[str, os.PathLike[str]],
    device: str = "cpu",
    cancel: Optional[Any] = None,
) -> Path:
    """Read ``image_path``, apply zoo model ``model_name``, write ``out_path``: a ``.seg.nrrd`` for a
    segmentation model, a Slicer markups point list ``.mrk.json`` (LPS, point names from the card) for a
    landmark model.

    Raises:
        InputError: unreadable, 4D, empty or NaN image; ZooError: no such zoo or model; BundleError.
    """
    from .bundle import load_bundle
    from .zoo import Zoo

    check_device(device)
    bundle_dir = Zoo(zoo_path).get(model_name)
    loaded = load_bundle(bundle_dir, device=device)
    image = read_image(image_path)
    if loaded.card.task_type == "landmarks":
        from .landmarks import predict_image_points, write_markups

        points = predict_image_points(loaded, image, device=device, cancel=cancel)
        return write_markups(out_path, points, loaded.card.label_names, label=loaded.card.name)
    labels = apply_model(loaded, image, device=device, cancel=cancel)
    return write_segmentation(labels, out_path, segments_of(loaded.card))
