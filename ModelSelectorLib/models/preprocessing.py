"""Preparing an image for a segmentation network, shared by inference and training so both see the same input.

Each image is resampled with SimpleITK onto an axis-aligned grid in the canonical orientation
(:data:`~ModelSelectorLib.io.geometry.CANONICAL_AXCODES`, as the bundle's ``Orientationd``) at the model's
``target_spacing``, then normalised (CT: clip to [a_min, a_max] and scale to [0, 1]; MR: z-score over
non-zero voxels; percentile: percentiles to [0, 1]). A card without ``intensity`` is normalised by its modality
(:func:`effective_intensity`: a CT window for CT, never an MR z-score).

:func:`read_preprocessing` reads the ``preprocessing`` of a standard MONAI bundle's ``inference.json`` statically
(no ``$`` expression is evaluated) into the card's ``target_spacing`` and ``intensity``, so that an imported bundle
runs with its own preprocessing; what it cannot map raises :class:`Unreproducible`. An imported bundle's input is
resampled onto the grid MONAI's own run gives it instead (its ``"resampling"`` steps,
:func:`~ModelSelectorLib.io.geometry.monai_grid`): the file's own voxel axes unless its ``Orientationd`` reorders
them, ``Spacingd``'s shape and first voxel, interpolation and ``padding_mode``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.geometry import (
    CANONICAL_AXCODES,
    canonical_grid,
    monai_grid,
    resample_padded,
    resample_to,
    spline_interpolator,
    to_network_layout,
)
from ..io.image import Image

# --- intensities ----------------------------------------------------------------------------------------
#: the CT window a CT card without ``intensity`` is normalised with (never the MR z-score)
DEFAULT_CT_INTENSITY: dict[str, Any] = {"mode": "ct", "a_min": -1000.0, "a_max": 1000.0}


def effective_intensity(
    intensity: Optional[dict[str, Any]], modality: Optional[str] = None
) -> dict[str, Any]:
    """The normalisation a card's ``intensity`` stands for: itself when given, else by the card's modality
    (CT: :data:`DEFAULT_CT_INTENSITY`, since a z-score of Hounsfield units is not what a CT model learnt;
    any other modality: the MR z-score ``{"mode": "mr"}``)."""
    if intensity:
        return dict(intensity)
    return dict(DEFAULT_CT_INTENSITY) if str(modality or "").upper() == "CT" else {"mode": "mr"}


def _scale(arr: np.ndarray, lo: float, hi: float, intensity: dict[str, Any]) -> np.ndarray:
    """``[lo, hi]`` mapped linearly to ``[b_min, b_max]`` (default ``[0, 1]``), clipped unless ``clip`` is false
    (MONAI ``ScaleIntensityRange``)."""
    b_min, b_max = float(intensity.get("b_min", 0.0)), float(intensity.get("b_max", 1.0))
    out = (arr - lo) * ((b_max - b_min) / (hi - lo if hi != lo else 1e-8)) + b_min
    if intensity.get("clip", True):
        np.clip(out, min(b_min, b_max), max(b_min, b_max), out=out)
    return out


def normalize_intensity(
    array: np.ndarray, intensity: Optional[dict[str, Any]], modality: Optional[str] = None
) -> np.ndarray:
    """Normalise intensities in place-free fashion as training did; returns float32.

    Args:
        array: voxels (any layout).
        intensity: ``{"mode": "ct", "a_min", "a_max"}`` -> clip to [a_min, a_max] and scale to [0, 1]
            (MONAI ``ScaleIntensityRange(clip=True)``; optional ``b_min``, ``b_max`` and ``clip`` as in MONAI);
            ``{"mode": "mr"}`` -> z-score over non-zero voxels, zeros stay 0 (MONAI
            ``NormalizeIntensity(nonzero=True)``; ``"nonzero": false`` z-scores every voxel);
            ``{"mode": "percentile", "a_min": lower %, "a_max": upper %}`` -> percentiles to [0, 1], clipped
            (optional ``b_min``, ``b_max``, ``clip``). ``None``: see :func:`effective_intensity`.
        modality: the card's modality, which decides the normalisation when ``intensity`` is ``None``.
    """
    intensity = effective_intensity(intensity, modality)
    mode = intensity.get("mode", "mr")
    arr = np.asarray(array, dtype=np.float32)
    if mode == "ct":
        return _scale(
            arr, float(intensity.get("a_min", -1000.0)), float(intensity.get("a_max", 1000.0)), intensity
        )
    if mode == "percentile":
        lo, hi = np.percentile(arr, [float(intensity.get("a_min", 0.5)), float(intensity.get("a_max", 99.5))])
        return _scale(arr, float(lo), float(hi) if hi > lo else float(lo) + 1e-8, intensity)
    mask = arr != 0 if intensity.get("nonzero", True) else np.ones(arr.shape, dtype=bool)
    out = arr.copy() if arr is array else arr
    if mask.any():
        vals = arr[mask]
        mean, std = float(vals.mean()), float(vals.std())
        out[mask] = (vals - mean) / (std if std > 0 else 1.0)
    return out


def background_value(
    array: np.ndarray, intensity: Optional[dict[str, Any]], modality: Optional[str] = None
) -> float:
    """Value for voxels outside the input when resampling: 0 for MR (stays 0 after nonzero z-score),
    the image minimum otherwise (air in CT)."""
    if effective_intensity(intensity, modality).get("mode", "mr") == "mr":
        return 0.0
    return float(np.min(array))


def preprocess(
    image: Image,
    target_spacing: Optional[Sequence[float]],
    intensity: Optional[dict[str, Any]],
    axcodes: str = CANONICAL_AXCODES,
    modality: Optional[str] = None,
    resampling: Optional[Sequence[dict[str, Any]]] = None,
) -> tuple[np.ndarray, sitk.Image]:
    """Resample ``image`` to the network's grid and normalise its intensities (``modality``: the card's, which
    decides the normalisation when ``intensity`` is ``None``, see :func:`effective_intensity`).

    Args:
        resampling: an imported bundle's ``Orientationd`` and ``Spacingd`` (``read_preprocessing(...)["resampling"]``):
            the grid and the interpolation are then MONAI's own (:func:`~..io.geometry.monai_grid`, axes in the
            file's order unless ``Orientationd`` reorders them, edges padded as ``padding_mode`` says), and
            ``target_spacing`` and ``axcodes`` are not used. ``None``: the canonical grid centred on the image,
            linear interpolation (this project's bundles were trained so).

    Returns:
        ``(array, grid)``: float32 C-contiguous array ``(x, y[, z])`` (the grid's voxel axes), and the grid (a
        SimpleITK reference image).
    """
    src = image.to_sitk()
    if src.GetPixelID() != sitk.sitkFloat32:
        src = sitk.Cast(src, sitk.sitkFloat32)
    if resampling is None:
        grid = canonical_grid(src, target_spacing, axcodes)
        res = resample_to(src, grid, sitk.sitkLinear, background_value(image.array, intensity, modality))
    else:
        grid = monai_grid(src, resampling)
        spacing = spacing_step(resampling) or {}
        res = resample_padded(src, grid, spline_interpolator(int(spacing.get("order", 1))),
                              str(spacing.get("padding", "border")))  # fmt: skip
    arr = normalize_intensity(sitk.GetArrayViewFromImage(res), intensity, modality)
    return np.ascontiguousarray(to_network_layout(arr), dtype=np.float32), grid


def resample_label(label: Image, grid: sitk.Image) -> np.ndarray:
    """A label map resampled (nearest neighbour) onto ``grid``, as a ``(x, y[, z])`` array."""
    res = resample_to(label.to_sitk(), grid, sitk.sitkNearestNeighbor, 0)
    return np.ascontiguousarray(to_network_layout(sitk.GetArrayFromImage(res)))


# --- a standard MONAI bundle's preprocessing, read statically --------------------------------------------
#: preprocessing transforms that change nothing the runtime does otherwise (loading, channel layout, types)
HARMLESS_TRANSFORMS = frozenset({"LoadImage", "EnsureChannelFirst", "AddChannel", "AsChannelFirst", "EnsureType",
                                 "CastToType", "ToTensor", "ToNumpy", "ToDevice", "ToMetaTensor", "Identity",
                                 "DataStats"})  # fmt: skip
#: the preprocessing transforms the runtime reproduces (resampling and one intensity normalisation)
SPATIAL_TRANSFORMS = ("Orientation", "Spacing")
INTENSITY_TRANSFORMS = (
    "ScaleIntensityRange",
    "ScaleIntensity",
    "NormalizeIntensity",
    "ScaleIntensityRangePercentiles",
)
_SPATIAL_AXES = ({"L", "R"}, {"A", "P"}, {"S", "I"})
#: what :func:`read_preprocessing` reproduces, for messages
REPRODUCED = (
    "Orientationd, Spacingd (bilinear, nearest or spline orders 0-5) and one of ScaleIntensityRanged, ScaleIntensityRangePercentilesd, "
    "ScaleIntensityd, NormalizeIntensityd with plain values"
)


class Unreproducible(ValueError):
    """A bundle's ``inference.json`` asks for something the runtime does not reproduce (the message says what)."""


def plain_value(value: Any, config: dict[str, Any], what: str, seen: tuple[str, ...] = ()) -> Any:
    """``value`` of an ``inference.json`` when it is plain (no ``$`` expression, no ``%`` macro); a plain
    ``@name`` reference to a top-level item is followed. Nothing is evaluated."""
    written = value
    if isinstance(value, str) and re.fullmatch(r"\$\s*@\w+\s*", value):  # "$@name" evaluates to that item
        value = value[1:].strip()
    if isinstance(value, str) and value.startswith("@"):
        ref = value[1:]
        if ref in config and ref not in seen and not any(c in ref for c in ":#"):
            return plain_value(config[ref], config, what, (*seen, ref))
        raise Unreproducible(f"{what} is the reference {written!r}, not a plain value")
    if isinstance(value, str) and value[:1] in ("$", "%"):
        shown = value if len(value) <= 120 else value[:117] + "..."
        raise Unreproducible(
            f"{what} is the expression {shown!r}, which is never evaluated (a plain value there is read)"
        )
    if isinstance(value, list):
        return [plain_value(v, config, f"{what}[{i}]", seen) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: plain_value(v, config, f"{what}.{k}", seen) for k, v in value.items()}
    return value


def transform_name(target: Any) -> Optional[str]:
    """The MONAI transform a ``_target_`` names, without the dictionary suffix (``Spacingd`` -> ``Spacing``);
    None when it is not a class of ``monai.transforms``."""
    import monai.transforms as mt

    if not isinstance(target, str) or target[:1] in ("$", "@", "%"):
        return None
    module, _, name = target.rpartition(".")
    if (module and not module.startswith("monai.transforms")) or not isinstance(
        getattr(mt, name, None), type
    ):
        return None
    for suffix in ("Dict", "D", "d"):
        if name.endswith(suffix) and isinstance(getattr(mt, name[: -len(suffix)], None), type):
            return name[: -len(suffix)]
    return name


def section_transforms(config: dict[str, Any], section: str) -> list[Any]:
    """The transforms of section ``section`` (a ``Compose`` or a list) of an ``inference.json``."""
    item = config.get(section)
    item = plain_value(item, config, f"'{section}'") if isinstance(item, str) else item
    if isinstance(item, dict) and transform_name(item.get("_target_")) == "Compose":
        item = item.get("transforms")
        item = plain_value(item, config, f"'{section}::transforms'") if isinstance(item, str) else item
    if section not in config:
        raise Unreproducible(f"inference.json has no '{section}' section to say what the network expects")
    if not isinstance(item, list):
        raise Unreproducible(f"'{section}' is not a Compose or list of transforms")
    return [plain_value(t, config, f"'{section}'") if isinstance(t, str) else t for t in item]


def enabled_transforms(config: dict[str, Any], section: str) -> list[tuple[Optional[str], Any]]:
    """``(transform_name, item)`` for each transform of ``section`` that MONAI instantiates: every item but a
    dictionary whose ``_disabled_`` is true, as MONAI's ``ConfigComponent.is_disabled`` reads it (the string
    ``"true"`` in any case counts, ``"false"`` does not). The name is None for an item that names no class of
    ``monai.transforms``.

    Raises:
        Unreproducible: the section cannot be read statically, or a ``_disabled_`` is not a plain value.
    """
    out = []
    for item in section_transforms(config, section):
        if not isinstance(item, dict):
            out.append((None, item))
            continue
        target = item.get("_target_")
        disabled = plain_value(item.get("_disabled_", False), config, f"{target}._disabled_")
        if disabled.strip().lower() == "true" if isinstance(disabled, str) else bool(disabled):
            continue
        out.append((transform_name(target), item))
    return out


def _number(value: Any, what: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (positive and value <= 0):
        raise Unreproducible(f"{what} is {value!r}, not a {'positive ' if positive else ''}number")
    return float(value)


def _output_range(arg: Any, name: str) -> dict[str, Any]:
    """The card's ``b_min``, ``b_max``, ``clip`` of a MONAI intensity scaling (only what differs from 0, 1, True)."""
    b_min, b_max, clip = arg("b_min", None), arg("b_max", None), bool(arg("clip", False))
    if b_min is None and b_max is None and not clip:
        b_min, b_max = 0.0, 1.0  # MONAI then leaves [a_min, a_max] -> [0, 1] unscaled and unclipped
    elif b_min is None or b_max is None:
        raise Unreproducible(f"{name} has b_min {b_min!r} and b_max {b_max!r}")
    out = {"b_min": _number(b_min, f"{name}.b_min"), "b_max": _number(b_max, f"{name}.b_max"), "clip": clip}
    return {k: v for k, v in out.items() if v != {"b_min": 0.0, "b_max": 1.0, "clip": True}[k]}


def _intensity_of(name: str, target: str, arg: Any) -> dict[str, Any]:
    """The card's ``intensity`` for one MONAI intensity transform (``arg(key, default)`` reads its plain values)."""
    if name == "ScaleIntensityRange":
        return {"mode": "ct", "a_min": _number(arg("a_min", None), f"{target}.a_min"),
                "a_max": _number(arg("a_max", None), f"{target}.a_max"), **_output_range(arg, target)}  # fmt: skip
    if name == "ScaleIntensityRangePercentiles":
        if arg("relative", False):
            raise Unreproducible(f"{target} has relative=True")
        return {"mode": "percentile", "a_min": _number(arg("lower", None), f"{target}.lower"),
                "a_max": _number(arg("upper", None), f"{target}.upper"), **_output_range(arg, target)}  # fmt: skip
    if name == "NormalizeIntensity":
        if arg("subtrahend", None) is not None or arg("divisor", None) is not None:
            raise Unreproducible(f"{target} has a fixed subtrahend or divisor")
        return {"mode": "mr", **({} if arg("nonzero", False) else {"nonzero": False})}
    minv, maxv = (
        arg("minv", 0.0),
        arg("maxv", 1.0),
    )  # ScaleIntensity: the image's minimum and maximum to [minv, maxv]
    if arg("factor", None) is not None or minv is None or maxv is None:
        raise Unreproducible(f"{target} scales by a factor")
    scale = {"b_min": _number(minv, f"{target}.minv"), "b_max": _number(maxv, f"{target}.maxv")}
    return {"mode": "percentile", "a_min": 0.0, "a_max": 100.0,
            **{k: v for k, v in scale.items() if v != {"b_min": 0.0, "b_max": 1.0}[k]}}  # fmt: skip


def _undone_by(first: dict[str, Any], then: dict[str, Any]) -> bool:
    """Whether normalisation ``then`` undoes ``first`` wholly: a z-score over every voxel after a min-max rescale
    (an increasing linear map, which a z-score ignores), as MONAI's prostate bundle has them."""
    rescale = first.get("mode") == "percentile" and (first.get("a_min"), first.get("a_max")) == (0.0, 100.0)
    increasing = float(first.get("b_max", 1.0)) > float(first.get("b_min", 0.0))
    return rescale and increasing and then == {"mode": "mr", "nonzero": False}


#: MONAI's interpolation ``mode`` of ``Spacing`` -> the spline order the runtime resamples with (0: nearest
#: neighbour, 1: linear, 2-5: B-spline; an integer mode is scipy's spline order, which SimpleITK's B-splines of the
#: same order give to within 0.5 % of the intensity range). ``bicubic`` is not reproduced (nor run by MONAI in 3D).
INTERPOLATIONS: dict[Any, int] = {
    "nearest": 0,
    "bilinear": 1,
    "linear": 1,
    "trilinear": 1,
    **{i: i for i in range(6)},
}
#: MONAI's ``padding_mode`` of ``Spacing`` (torch's names, and scipy's that MONAI maps to them) -> what lies outside
#: the input: its edge repeated, its mirror image, or zeros (torch's interpolation only: scipy's differs)
PADDINGS = {"border": "border", "nearest": "border", "reflection": "reflection", "reflect": "reflection",
            "zeros": "zeros", "constant": "zeros", "grid-constant": "zeros"}  # fmt: skip


def _for_image(value: Any, keys: Any) -> Any:
    """The entry of a per-key argument (a list as long as ``keys``) for the network's input key ``image``."""
    if not isinstance(value, (list, tuple)):
        return value
    keys = [keys] if isinstance(keys, str) else list(keys or [])
    return value[keys.index("image") if "image" in keys else 0] if value else None


def _resampling_of(target: str, arg: Any) -> dict[str, Any]:
    """``Spacing``'s interpolation and padding of the image: ``{"order": spline order (:data:`INTERPOLATIONS`),
    "padding": "border"|"zeros"|"reflection"}``; what SimpleITK does not reproduce raises :class:`Unreproducible`."""
    keys = arg("keys", "image")
    mode, padding = _for_image(arg("mode", "bilinear"), keys), _for_image(arg("padding_mode", "border"), keys)
    if isinstance(mode, bool) or not isinstance(mode, (str, int)) or mode not in INTERPOLATIONS:
        raise Unreproducible(
            f"{target}.mode is {mode!r}; only 'bilinear', 'nearest' and spline orders 0 to 5 are reproduced"
        )
    scipy = isinstance(mode, int)  # MONAI resamples with scipy's map_coordinates, not torch's grid_sample
    if padding not in PADDINGS or (scipy and PADDINGS[padding] == "zeros"):
        allowed = "'border' or 'reflection'" if scipy else "'border', 'zeros' or 'reflection'"
        raise Unreproducible(f"{target}.padding_mode is {padding!r} with mode {mode!r}, not {allowed}")
    for key in ("scale_extent", "diagonal", "align_corners"):
        if not isinstance(arg(key, False), bool):
            raise Unreproducible(f"{target}.{key} is {arg(key, False)!r}, not true or false")
    if arg("recompute_affine", False):
        raise Unreproducible(f"{target}.recompute_affine is true")
    return {"order": INTERPOLATIONS[mode], "padding": PADDINGS[padding]}


def _spatial_of(name: str, target: str, arg: Any, spatial_dims: int) -> dict[str, Any]:
    """One resampling step of the preprocessing: ``Orientation``'s codes (``{"axcodes"}``) or ``Spacing``'s
    ``{"pixdim", "diagonal", "scale_extent", "order", "padding"}`` (see :func:`~..io.geometry.monai_grid`)."""
    if name == "Orientation":
        codes = "RAS" if arg("as_closest_canonical", False) else arg("axcodes", None)
        if spatial_dims == 3 and (not isinstance(codes, str) or len(codes) != 3 or any(
                sum(c in axis for c in codes.upper()) != 1 for axis in _SPATIAL_AXES)):  # fmt: skip
            raise Unreproducible(f"{target}.axcodes is {codes!r}, not three orientation codes such as 'RAS'")
        return {"axcodes": str(codes or "RAS").upper()}
    pixdim = arg("pixdim", None)
    if not isinstance(pixdim, list) or len(pixdim) < spatial_dims or arg("min_pixdim", None) is not None or arg(
            "max_pixdim", None) is not None:  # fmt: skip
        raise Unreproducible(f"{target}.pixdim is {pixdim!r}, not {spatial_dims} spacings in mm")
    return {"pixdim": [_number(v, f"{target}.pixdim", positive=True) for v in pixdim[:spatial_dims]],
            "diagonal": arg("diagonal", False), "scale_extent": arg("scale_extent", False),
            **_resampling_of(target, arg)}  # fmt: skip


def read_preprocessing(config: dict[str, Any], spatial_dims: int) -> dict[str, Any]:
    """What a standard bundle's ``preprocessing`` asks of its input, read statically (no ``$`` expression is
    evaluated; a plain ``@name`` is looked up): ``{"target_spacing": Spacingd.pixdim or None, "intensity": the
    card's intensity, "resampling": the steps of Orientationd and Spacingd in order}`` (the runtime puts an
    imported bundle's input on the grid those steps give, :func:`~..io.geometry.monai_grid`). ``Orientationd``
    must give three orientation codes; ``Spacingd`` must interpolate the image ``bilinear``, ``nearest`` or with a
    spline order (:data:`INTERPOLATIONS`); loading, channel and type transforms are harmless; exactly one of
    ``ScaleIntensityRanged`` ("ct"), ``ScaleIntensityRangePercentilesd`` / ``ScaleIntensityd`` ("percentile") and
    ``NormalizeIntensityd`` ("mr") must normalise the intensities.

    Raises:
        Unreproducible: any other transform (``CropForegroundd``, ``Resized``, custom code), an expression where a
            value is needed, another interpolation (``bicubic``, ``area``) or padding (``wrap``; zeros around a
            spline order), two ``Spacingd``, no or two intensity normalisations (the message says which).
    """
    out: dict[str, Any] = {"target_spacing": None, "intensity": None, "resampling": []}
    for i, (name, item) in enumerate(enabled_transforms(config, "preprocessing")):
        if not isinstance(item, dict):
            raise Unreproducible(f"preprocessing item {i} is {str(item)[:60]!r}, not a transform")
        target = item.get("_target_")
        if name in HARMLESS_TRANSFORMS:
            continue
        if name not in SPATIAL_TRANSFORMS + INTENSITY_TRANSFORMS:
            raise Unreproducible(f"it has the transform {target!r} (preprocessing item {i})")

        def arg(key: str, default: Any, item: dict[str, Any] = item, target: Any = target) -> Any:
            return plain_value(item.get(key, default), config, f"{target}.{key}")

        if name in INTENSITY_TRANSFORMS:
            intensity = _intensity_of(name, str(target), arg)
            if out["intensity"] is not None and not _undone_by(out["intensity"], intensity):
                raise Unreproducible(f"it normalises intensities twice (again with {target!r})")
            out["intensity"] = intensity
        else:
            step = _spatial_of(name, str(target), arg, spatial_dims)
            if "pixdim" in step and out["target_spacing"] is not None:
                raise Unreproducible(f"it resamples twice (again with {target!r})")
            out["target_spacing"] = step.get("pixdim", out["target_spacing"])
            out["resampling"].append(step)
    if out["intensity"] is None:
        raise Unreproducible("it normalises no intensities (the runtime always does)")
    return out


def inverts_probabilities(config: dict[str, Any]) -> bool:
    """Whether a standard bundle's ``postprocessing`` puts the class probabilities back on the input's grid with the
    preprocessing's own interpolation (an ``Invertd`` with ``nearest_interp`` false before the argmax,
    ``AsDiscreted(argmax=True)``), read statically; False when it inverts the label map or interpolates the nearest
    voxel (``nearest_interp``, MONAI's default)."""
    try:
        items = enabled_transforms(config, "postprocessing")
    except Unreproducible:
        return False
    for name, item in items:
        try:
            if name == "AsDiscrete" and plain_value(item.get("argmax", False), config, "argmax") is True:
                return False
            if name == "Invert":
                return plain_value(item.get("nearest_interp", True), config, "nearest_interp") is False
        except Unreproducible:
            continue
    return False


def kept_components(config: dict[str, Any]) -> Optional[list[int]]:
    """The labels whose largest connected component a standard bundle's ``postprocessing`` keeps
    (``KeepLargestConnectedComponentd``, read statically): its ``applied_labels``, ``[]`` for every foreground
    label when it names none, ``None`` without the transform.

    Raises:
        Unreproducible: labels that are not plain whole numbers, or ``independent`` false (the labels kept as one
            object), which the runtime does not reproduce.
    """
    try:
        items = enabled_transforms(config, "postprocessing")
    except Unreproducible:
        return None
    for name, item in items:
        if name != "KeepLargestConnectedComponent":
            continue
        target = str(item.get("_target_"))
        if plain_value(item.get("independent", True), config, f"{target}.independent") is not True:
            raise Unreproducible(f"{target}.independent is false (the labels kept as one object)")
        labels = plain_value(item.get("applied_labels"), config, f"{target}.applied_labels")
        labels = [labels] if isinstance(labels, int) and not isinstance(labels, bool) else labels
        if labels is not None and (not isinstance(labels, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in labels)):  # fmt: skip
            raise Unreproducible(f"{target}.applied_labels is {labels!r}, not label values")
        return sorted(labels or [])
    return None


#: how a sliding-window inferer may pad windows beyond the image besides zeros (torch's ``pad`` modes), which the
#: runtime reproduces; a card's ``inference.padding_mode`` is one of these or ``"constant"``
WINDOW_PADDINGS = ("replicate", "reflect", "circular")


def spacing_step(steps: Optional[Sequence[dict[str, Any]]]) -> Optional[dict[str, Any]]:
    """The ``Spacingd`` step of an imported bundle's resampling steps (``read_preprocessing(...)["resampling"]``),
    with its ``order`` and ``padding``; None when it has none."""
    return next((s for s in steps or () if "pixdim" in s), None)


def read_inferer(config: dict[str, Any], spatial_dims: int) -> dict[str, Any]:
    """``roi_size``, ``overlap``, ``sw_mode`` and ``padding_mode`` (when not zeros) of the bundle's
    ``SlidingWindowInferer`` when they are plain values (``{}`` for another inferer or values that are
    expressions)."""
    inferer = config.get("inferer")
    target = inferer.get("_target_") if isinstance(inferer, dict) else None
    if not isinstance(target, str) or target.rpartition(".")[2] != "SlidingWindowInferer":
        return {}
    out: dict[str, Any] = {}
    for key, name in (
        ("roi_size", "roi_size"),
        ("overlap", "overlap"),
        ("mode", "sw_mode"),
        ("padding_mode", "padding_mode"),
    ):
        try:
            value = plain_value(inferer.get(key), config, f"inferer.{key}")
        except Unreproducible:
            continue
        if key == "roi_size" and isinstance(value, list) and len(value) == spatial_dims and all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):  # fmt: skip
            out[name] = value
        elif (
            key == "overlap"
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and 0 <= value < 1
        ):
            out[name] = float(value)
        elif key == "mode" and value in ("constant", "gaussian"):
            out[name] = value
        elif key == "padding_mode" and value in WINDOW_PADDINGS:
            out[name] = value
    return out


# --- applying a model -----------------------------------------------------------------------------------
def check_device(device: str) -> str:
    """The torch device ``device`` names, as models load onto it (``cpu:0`` -> ``cpu``), or :class:`InputError`
    when it is no torch device or one that cannot run a model here: a GPU torch cannot use (none, a CPU build of
    torch, ``cuda:N`` beyond the GPUs there are), ``mps`` without an Apple GPU, and devices such as ``meta`` or
    ``xla`` that the weights cannot be loaded onto."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise InputError(f"device {device!r} is not a torch device; use {_device_choices()}.") from e
    if dev.type == "cpu" and not dev.index:  # torch.load(map_location="cpu:0") fails: weights know only "cpu"
        return "cpu"
    if dev.type == "mps" and not dev.index:
        if not torch.backends.mps.is_available():
            raise InputError(
                f"device {device!r} was asked for but no Apple GPU (MPS) is available; use --device cpu."
            )
        return "mps"
    if dev.type != "cuda":
        raise InputError(f"device {device!r} cannot run models here; use {_device_choices()}.")
    if not torch.cuda.is_available():
        raise InputError(f"device {device!r} was asked for but no CUDA GPU is available; use --device cpu.")
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        raise InputError(f"device {device!r}: this machine has {n} CUDA GPU(s), cuda:0 to cuda:{n - 1}.")
    return str(dev)


def _device_choices() -> str:
    """The devices :func:`check_device` accepts on this machine, for a message."""
    import torch

    choices = ["cpu"] + (["cuda", "cuda:N (GPU N)"] if torch.cuda.is_available() else [])
    choices += ["mps"] if torch.backends.mps.is_available() else []
    return ", ".join(choices[:-1]) + " or " + choices[-1] if len(choices) > 1 else choices[0]
