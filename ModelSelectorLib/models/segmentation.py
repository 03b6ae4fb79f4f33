"""The segmentation runtime: a label map in exactly the input's geometry, written as a Slicer ``.seg.nrrd``.

Pipeline of :meth:`SegmentationRuntime.predict` (the preprocessing of :mod:`.preprocessing`, which training
uses too)::

    Image (any orientation, spacing)  --SimpleITK linear resample-->  canonical grid
        (axis-aligned, orientation codes "RAS" as in the bundle's Orientationd, card.target_spacing)
    --> intensity normalisation (card.intensity: ct clip/scale, mr nonzero z-score, percentile)
    --> tensor (1, C, x, y[, z])  (MONAI layout: spatial axes i, j, k as Orientationd RAS gives them)
    --> monai sliding_window_inference(roi_size=card.roi_size) --> argmax on the network grid
    --> SimpleITK nearest-neighbour resample of the labels onto the input grid --> Image (uint8)

``resample="linear"`` instead resamples the softmax probabilities linearly and takes the argmax on the
input grid: smoother borders when the model's spacing is much coarser than the input's, ~0.1 s more per
million voxels.

A bundle imported by ``zoo add`` (``card.imported``) was trained on what MONAI's own run of its ``inference.json``
gives it, so the runtime puts its input on that grid (:func:`resampling_of`: voxel axes in the file's order unless
its ``Orientationd`` reorders them, ``Spacingd``'s shape, first voxel, interpolation and padding) and returns the
output as its ``Invertd`` does (:func:`output_resampling`). The project's own bundles keep the canonical grid above.

A card with an ``inference`` block (written by :mod:`ModelSelectorLib.training.segmentation`) says how its
model is applied: ``{"sw_mode": "gaussian", "overlap": 0.5, "mirror_axes": [1, 2], "keep_largest_component":
[1]}``: Gaussian weighting of the sliding windows, softmax averaged over mirrored copies of the input along
``mirror_axes`` (network-grid axes; never the left-right axis of a model with lateral labels), and only the
largest connected component kept of the listed label values. Cards without it use constant weighting,
overlap 0.25, no mirroring and no post-processing.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import BundleError, InputError
from ..io.geometry import (
    CANONICAL_AXCODES,
    axcodes_direction,
    empty_grid,
    monai_grid,
    reference_grid,
    resample_padded,
    resample_to,
    spline_interpolator,
    to_network_layout,
)
from ..io.image import Image, as_image
from ..io.integrity import NPZ_ERRORS, read_npz
from ..io.segmentation import Segment, write_segmentation
from ..progress import check_cancel, progress_bar
from .base import Prediction, TaskRuntime, to_image_layout
from .bnstats import BNStatHooks
from .monai_workflow import MONAI_RUN_USAGE, workflow_sections
from .preprocessing import (
    Unreproducible,
    background_value,
    effective_intensity,
    enabled_transforms,
    inverts_probabilities,
    normalize_intensity,
    plain_value,
    preprocess,
    read_preprocessing,
    spacing_step,
)
from .registry import register_runtime

#: the bottleneck-feature statistics of a bundle's example inputs, stored beside its prototypes
FEATURE_STATS_FILE = "feature_stats.npz"
#: most bytes the arrays of a feature-statistics file may declare (a model's statistics take a few KB)
MAX_FEATURE_STATS_BYTES = 64 << 20


def axcodes_of(bundle: Any) -> str:
    """Orientation codes of the bundle's first enabled ``Orientation(d)`` in its preprocessing, read as ``zoo add``
    read it (:func:`~.preprocessing.read_preprocessing`: any spelling of the transform, a ``Compose`` or a list,
    plain ``@name`` references); default ``RAS``."""
    config = getattr(bundle, "config", None) or {}
    try:
        items = enabled_transforms(config, "preprocessing") if isinstance(config, dict) else []
    except Unreproducible:
        return CANONICAL_AXCODES
    for name, t in items:
        if name != "Orientation":
            continue
        try:
            canonical = plain_value(t.get("as_closest_canonical", False), config, "as_closest_canonical")
            codes = "RAS" if canonical is True else plain_value(t.get("axcodes"), config, "axcodes")
        except Unreproducible:
            continue
        if isinstance(codes, str) and len(codes) == 3:
            return codes.upper()
    return CANONICAL_AXCODES


def resampling_of(bundle: Any) -> Optional[list[dict[str, Any]]]:
    """The ``Orientationd`` and ``Spacingd`` steps of an imported bundle's preprocessing (``read_preprocessing``), on
    whose grid MONAI's own run puts the input and so must the runtime; ``None`` for this project's own bundles,
    which were trained on the canonical grid (:func:`~.preprocessing.preprocess`).

    Raises:
        BundleError: the imported bundle's preprocessing is not reproduced (it entered the zoo before it was checked).
    """
    card = getattr(bundle, "card", None)
    if card is None or not card.imported:
        return None
    try:
        return read_preprocessing(getattr(bundle, "config", None) or {}, int(card.spatial_dims))["resampling"]
    except Unreproducible as e:
        raise BundleError(
            f"{card.name} {card.version}: the bundle's preprocessing cannot be reproduced: {e}; remove it from the zoo "
            "(`modelselector zoo remove`) and apply it with MONAI (`python -m monai.bundle run`)."
        ) from None


def output_resampling(
    bundle: Any, steps: Optional[Sequence[dict[str, Any]]]
) -> tuple[str, Optional[str], int]:
    """How the output returns to the input's grid: ``(resample, padding, spline order)`` for
    :meth:`SegmentationRuntime.predict`. An imported bundle (``steps``: :func:`resampling_of`) does it as MONAI's
    own run of its postprocessing does: the probabilities (``"linear"``) with ``Spacingd``'s interpolation when its
    ``Invertd`` resamples them before the argmax (:func:`~.preprocessing.inverts_probabilities`), else the label
    map (``"nearest"``); outside the network's grid it finds what ``Spacingd``'s ``padding_mode`` gives. The
    project's own bundles: ``("nearest", None, 1)``."""
    spacing = spacing_step(steps)
    if spacing is None:  # no resampling (or only reordered axes): the grids' voxels coincide
        return "nearest", None, 1
    order = int(spacing["order"])
    probabilities = order > 0 and inverts_probabilities(getattr(bundle, "config", None) or {})
    return ("linear" if probabilities else "nearest"), str(spacing["padding"]), order


#: how a card without an ``inference`` block is applied
DEFAULT_INFERENCE: dict[str, Any] = {"sw_mode": "constant", "overlap": 0.25, "mirror_axes": [],
                                     "keep_largest_component": []}  # fmt: skip


def inference_settings(card: Any) -> dict[str, Any]:
    """The card's ``inference`` block completed with :data:`DEFAULT_INFERENCE`."""
    block = getattr(card, "inference", None) or {}
    return {**DEFAULT_INFERENCE, **block}


def window_count(shape: Sequence[int], roi_size: Optional[Sequence[int]], overlap: float) -> int:
    """How many windows :func:`predict_logits` runs the network on for an array of ``shape`` ``(x, y[, z])``:
    the patches MONAI's ``sliding_window_inference`` takes (the array padded to at least ``roi_size``, a step
    of ``roi * (1 - overlap)`` voxels, at least 1); 1 without ``roi_size``."""
    from monai.data.utils import dense_patch_slices

    if not roi_size:
        return 1
    size = [max(int(n), int(r)) for n, r in zip(shape, roi_size)]
    step = [int(r) if int(r) == n else max(1, int(int(r) * (1.0 - overlap))) for n, r in zip(size, roi_size)]
    return len(dense_patch_slices(size, [int(r) for r in roi_size], step))


def _counted(network: Any, step: Optional[Callable[[int], None]]) -> Any:
    """``network``, calling ``step(number of windows)`` after each batch (progress, cancellation)."""
    if step is None:
        return network

    def run(x: Any) -> Any:
        out = network(x)
        step(int(x.shape[0]))
        return out

    return run


#: most sliding windows per forward pass on the CPU (:func:`default_sw_batch_size`), and the number on a GPU
MAX_CPU_SW_BATCH, GPU_SW_BATCH = 8, 4
#: most voxels in one forward pass of several windows (memory grows with it): 8 windows of 64 x 64 x 32
SW_BATCH_VOXELS = 2**20


def default_sw_batch_size(device: str = "cpu", roi_size: Optional[Sequence[int]] = None) -> int:
    """Sliding windows per forward pass when the caller gives none: one per torch CPU thread on the CPU (at most
    :data:`MAX_CPU_SW_BATCH`), :data:`GPU_SW_BATCH` on a GPU, and no more than fit in :data:`SW_BATCH_VOXELS`
    voxels of windows of ``roi_size`` (at least one). One window at a time leaves threads idle on the small
    windows of the zoo's models; ``benchmarks/bench_sliding_window.py`` measures the gain against one."""
    import torch

    n = (
        GPU_SW_BATCH
        if str(device).startswith("cuda")
        else min(MAX_CPU_SW_BATCH, int(torch.get_num_threads()))
    )
    if roi_size:
        n = min(n, SW_BATCH_VOXELS // max(1, math.prod(int(r) for r in roi_size)))
    return max(1, n)


def predict_logits(
    network: Any,
    array: np.ndarray,
    roi_size: Optional[Sequence[int]],
    device: str = "cpu",
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    mode: str = "constant",
    step: Optional[Callable[[int], None]] = None,
    padding_mode: str = "constant",
) -> np.ndarray:
    """Raw network output ``(n_classes, x, y[, z])`` (a torch tensor on ``device``) on a preprocessed array.

    Args:
        network: torch module in eval mode, input ``(B, 1, *spatial)``.
        array: preprocessed ``(x, y[, z])`` float32 array.
        roi_size: sliding-window size in voxels ``(x, y[, z])``; ``None`` runs the whole array at once.
        mode: blending of overlapping windows, ``"constant"`` or ``"gaussian"`` (centre voxels weigh more).
        step: called with the number of windows after each batch of them (:func:`window_count` in all); it
            may raise to stop, e.g. :class:`~ModelSelectorLib.errors.Cancelled`.
        padding_mode: how windows that reach beyond a smaller array are padded (torch's ``pad`` modes:
            ``"constant"`` zeros, ``"replicate"``, ``"reflect"``, ``"circular"``), as a bundle's inferer says.
    """
    import torch
    from monai.inferers import sliding_window_inference

    net = _counted(network, step)
    with torch.inference_mode():
        x = torch.from_numpy(array)[None, None].to(device)
        if roi_size:
            logits = sliding_window_inference(x, list(roi_size), sw_batch_size, net, overlap=overlap,
                                              mode=mode, padding_mode=padding_mode)  # fmt: skip
        else:
            logits = net(x)
        return logits[0]


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (the identity ``()`` first): the flips of test-time mirroring (2^len(axes))."""
    combos: list[tuple[int, ...]] = [()]
    for a in axes:
        combos += [c + (int(a),) for c in combos]
    return combos


def predict_probabilities(
    network: Any,
    array: np.ndarray,
    roi_size: Optional[Sequence[int]],
    device: str = "cpu",
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    mode: str = "constant",
    mirror_axes: Sequence[int] = (),
    step: Optional[Callable[[int], None]] = None,
    padding_mode: str = "constant",
) -> np.ndarray:
    """Softmax probabilities ``(n_classes, x, y[, z])`` (float32 numpy) on a preprocessed array.

    Args:
        mode: sliding-window blending, ``"constant"`` or ``"gaussian"``.
        mirror_axes: spatial axes (0 = x of ``array``) of test-time mirroring: the softmax is averaged over
            the input flipped along every subset of these axes (each result flipped back); ``()``: one pass.
        step, padding_mode: as in :func:`predict_logits` (``step`` over every pass).
    """
    import torch

    total = None
    combos = mirror_combinations(mirror_axes)
    for combo in combos:
        flipped = (
            np.flip(array, combo).copy() if combo else array
        )  # a copy: a flipped axis of length 1 keeps a
        # negative stride through ascontiguousarray, which torch refuses
        logits = predict_logits(
            network, flipped, roi_size, device, sw_batch_size, overlap, mode, step, padding_mode
        )
        with torch.inference_mode():
            probs = torch.softmax(logits.float(), dim=0)
            if combo:
                probs = torch.flip(probs, [a + 1 for a in combo])
            total = probs if total is None else total + probs
    with torch.inference_mode():
        return (total / len(combos)).cpu().numpy()


def keep_largest_component(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Label map ``(x, y[, z])`` where each label value in ``values`` keeps only its largest connected
    component (full connectivity, as MONAI ``KeepLargestConnectedComponent(independent=True)``, computed with
    ``scipy.ndimage`` so that scikit-image is not needed); removed voxels become 0."""
    if not len(values):
        return labels
    from scipy import ndimage

    out = labels.copy()
    structure = np.ones((3,) * labels.ndim, dtype=bool)
    for v in values:
        mask = labels == int(v)
        comp, n = ndimage.label(mask, structure)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            out[mask & (comp != int(sizes.argmax()))] = 0
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


def _to_input_grid(values: sitk.Image, image: Image, interpolator: int, padding: Optional[str]) -> sitk.Image:
    """``values`` (on the network's grid) resampled onto ``image``'s grid; outside the grid 0, or, with ``padding``,
    what MONAI's inverse of ``Spacingd`` finds there (:func:`~..io.geometry.resample_padded`)."""
    if padding is None:
        return resample_to(values, reference_grid(image), interpolator, 0.0)
    return resample_padded(values, reference_grid(image), interpolator, padding)


def labels_to_input_grid(
    labels: np.ndarray, grid: sitk.Image, image: Image, padding: Optional[str] = None
) -> np.ndarray:
    """Resample a ``(x, y[, z])`` label array on ``grid`` (nearest neighbour) onto ``image``'s grid (``padding``:
    see :func:`_to_input_grid`).

    Returns:
        uint8 label array in SimpleITK layout ``(z, y, x)`` / ``(y, x)`` of ``image``.
    """
    lab = sitk.GetImageFromArray(np.ascontiguousarray(to_network_layout(labels)).astype(np.uint8, copy=False))
    lab.CopyInformation(grid)
    return sitk.GetArrayFromImage(_to_input_grid(lab, image, sitk.sitkNearestNeighbor, padding))


def probabilities_to_input_grid(
    probs: np.ndarray, grid: sitk.Image, image: Image, padding: Optional[str] = None, order: int = 1
) -> np.ndarray:
    """Resample ``(n_classes, x, y[, z])`` probabilities on ``grid`` linearly (``order`` 1; 2 to 5: B-spline of that
    order) onto ``image``'s grid and argmax (``padding``: see :func:`_to_input_grid`).

    Returns:
        uint8 label array in SimpleITK layout ``(z, y, x)`` / ``(y, x)`` of ``image``.
    """
    ndim = probs.ndim - 1
    # (C, x, y, z) -> (z, y, x, C): a vector image whose components are the classes
    vec = sitk.GetImageFromArray(probs.transpose((*range(ndim, 0, -1), 0)), isVector=True)
    vec.CopyInformation(grid)
    res = _to_input_grid(vec, image, spline_interpolator(order), padding)
    back = sitk.GetArrayViewFromImage(res)  # (z, y, x, C)
    return np.argmax(back, axis=-1).astype(np.uint8)


def at_training_field(image: Image, card: Any) -> Image:
    """``image`` as a 2D model should see it: a picture whose pixel size is unknown (:attr:`Image.pixel_size_known`)
    gets the pixel size that makes its longer side span the longer side of the model's median training image
    (``plan.median_shape`` x ``target_spacing``), so that a radiograph of 2048 or 256 px shows the chest as large
    as the training pictures did, instead of one taken as 1 mm per pixel. So does every 2D image for a model that
    learnt from such pictures (``plan.pixel_size_known`` false): its millimetres are picture pixels, and a
    calibrated radiograph at its true pixel size would look smaller to it than its training pictures did. Any
    other image, and a model whose card has no plan, is returned as is. Only the spacing changes (the pixels,
    origin and direction stay), so a label map computed on the result lies on ``image``'s grid."""
    return at_field(image, card.plan or {}, card.target_spacing, int(card.spatial_dims))


def at_field(
    image: Image, plan: dict[str, Any], spacing: Optional[Sequence[float]], spatial_dims: int
) -> Image:
    """:func:`at_training_field` of a model planned as ``plan`` (a card's ``plan`` block) at ``spacing`` (mm),
    for ``spatial_dims``: what training, too, makes of its pictures, so that it sees them as ``apply`` will."""
    shape = plan.get("median_shape")
    known = image.pixel_size_known and plan.get("pixel_size_known", True)
    if spatial_dims != 2 or image.ndim != 2 or known or not shape or not spacing:
        return image
    field = max(float(n) * float(s) for n, s in zip(shape, spacing))
    size = max(image.size)
    return dataclasses.replace(image, spacing=(field / size,) * 2) if size > 0 and field > 0 else image


def segments_of(card: Any) -> list[Segment]:
    """The card's labels as :class:`~ModelSelectorLib.io.Segment` objects (names, colours, terminology)."""
    return [Segment.from_dict(lb) for lb in card.labels]


@register_runtime
class SegmentationRuntime(TaskRuntime):
    """Runs a segmentation bundle: sliding-window inference on the canonical grid, labels back on the input."""

    task_type = "segmentation"
    keywords = ("segment",)
    #: ``network_data_format.outputs.pred.format`` of a label map in standard MONAI bundles
    output_formats = ("segmentation", "labels", "label", "labelmap", "label_map", "mask")
    first_label_value = 1  # 0 is the background
    labels_required = True
    output_suffix = ".seg.nrrd"
    slicer_node_class = "vtkMRMLSegmentationNode"
    slicer_storage_class = "vtkMRMLSegmentationStorageNode"
    retrains_from_msd = True

    # --- card-level --------------------------------------------------------------------------------------
    @classmethod
    def inference_sections(cls, card: Any) -> dict[str, Any]:
        transforms: list[dict[str, Any]] = [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": CANONICAL_AXCODES},
        ]
        if card.target_spacing:
            transforms.append({"_target_": "Spacingd", "keys": "image", "pixdim": list(card.target_spacing),
                               "mode": "bilinear"})  # fmt: skip
        intensity = effective_intensity(card.intensity, card.modality)
        scale = {"b_min": intensity.get("b_min", 0.0), "b_max": intensity.get("b_max", 1.0),
                 "clip": bool(intensity.get("clip", True))}  # fmt: skip
        if intensity.get("mode") == "ct":
            transforms.append({"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": intensity.get("a_min", -1000),
                               "a_max": intensity.get("a_max", 1000), **scale})  # fmt: skip
        elif intensity.get("mode") == "percentile":
            transforms.append({"_target_": "ScaleIntensityRangePercentilesd", "keys": "image",
                               "lower": intensity.get("a_min", 0.5), "upper": intensity.get("a_max", 99.5), **scale})  # fmt: skip
        else:
            transforms.append({"_target_": "NormalizeIntensityd", "keys": "image",
                               "nonzero": bool(intensity.get("nonzero", True))})  # fmt: skip
        transforms.append({"_target_": "EnsureTyped", "keys": "image"})
        sections: dict[str, Any] = {"preprocessing": {"_target_": "Compose", "transforms": transforms}}
        inference = inference_settings(card)
        # MONAI's runner takes a fixed number of windows per pass: the GPU default, which also suits a CPU
        inferer = {"_target_": "SlidingWindowInferer", "roi_size": list(card.roi_size),
                   "sw_batch_size": default_sw_batch_size("cuda", card.roi_size),
                   "overlap": inference["overlap"], "mode": inference["sw_mode"]} if card.roi_size else {
            "_target_": "SimpleInferer"}  # fmt: skip
        keep = list(inference["keep_largest_component"])
        lcc = {"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": keep,
               "independent": True}  # fmt: skip
        sections.update(workflow_sections(int(card.spatial_dims), inferer, [lcc] if keep else [],
                                          mirror_combinations(inference["mirror_axes"])))  # fmt: skip
        return sections

    @classmethod
    def usage(cls, card: Any) -> list[str]:
        """How to apply the model; the MONAI command only for a bundle this project wrote, whose ``inference.json``
        reads the command's ``--dataset_dir`` (an imported bundle's own config reads what its authors chose)."""
        if card.imported:
            return super().usage(card)
        return [*super().usage(card), "", *MONAI_RUN_USAGE]

    @classmethod
    def output_format(cls, card: Any) -> dict[str, Any]:
        spatial = list(card.roi_size) if card.roi_size else [-1] * card.spatial_dims
        channel_def = {"0": "background", **{str(lb["value"]): lb["name"] for lb in card.labels}}
        n_out = max([0] + [int(lb["value"]) for lb in card.labels]) + 1
        return {"type": "image", "format": "segmentation", "num_channels": n_out, "spatial_shape": spatial,
                "dtype": "float32", "value_range": [0, 1], "is_patch_data": bool(card.roi_size),
                "channel_def": channel_def}  # fmt: skip

    @classmethod
    def held_out(cls, card: Any) -> Optional[dict[str, Any]]:
        """Mean Dice over the labels and held-out cases: a test result recorded by :meth:`test_metrics` (a
        promotion gate's ``test_dice`` over ``test_n_cases`` cases, ``test_protocol``) when the card has one, else
        ``validation_metrics["dice"]`` with the number of cases (``validation_cases``: a count, or the case ids)
        and the protocol (``held_out``)."""
        m = card.validation_metrics
        if isinstance(m.get("test_dice"), (int, float)):
            return {"metric": "Dice", "value": float(m["test_dice"]), "cases": int(m.get("test_n_cases") or 0),
                    "protocol": str(m.get("test_protocol", "test split"))}  # fmt: skip
        if not isinstance(m.get("dice"), (int, float)):
            return None
        cases = m.get("validation_cases")
        n = cases if isinstance(cases, int) else len([c for c in str(cases or "").split(",") if c.strip()])
        return {"metric": "Dice", "value": float(m["dice"]), "cases": n,
                "protocol": str(m.get("held_out", "held-out validation"))}  # fmt: skip

    @classmethod
    def describe_fit(cls, signals: dict[str, float]) -> str:
        text = (
            f"verify: feature statistics fit {signals['fit']:.2f} "
            + (
                f"(batch-norm KL {signals['kl']:.2f})"
                if math.isfinite(signals["kl"])
                else "(no batch-norm layer)"
            )
            + f", output confidence {signals['confidence']:.2f}, foreground {signals['foreground']:.1%}"
        )
        if "feature_distance" in signals:
            text += (
                f", bottleneck features {signals['feature_distance']:.2f} from the exemplars' (Mahalanobis; "
                f"fit {signals['feature_fit']:.2f})"
            )
        return text

    # --- the task ----------------------------------------------------------------------------------------
    def predict(
        self,
        image: Image,
        cancel: Optional[Any] = None,
        sw_batch_size: Optional[int] = None,
        overlap: Optional[float] = None,
        resample: Optional[str] = None,
    ) -> Prediction:
        """Segment ``image``; the label map has exactly ``image``'s size, spacing, origin and direction.

        Args:
            image: 2D or 3D image (any orientation and spacing, LPS geometry).
            cancel: Event-like; checked between stages and after every batch of sliding windows, whose
                progress a bar shows (tqdm; ``PROGRESS`` lines for the Slicer module).
            sw_batch_size, overlap: sliding-window settings (``sw_batch_size=None``: :func:`default_sw_batch_size`;
                ``overlap=None``: the card's, see :func:`inference_settings`); the windows per pass change the
                speed, not the result. Blending, test-time mirroring and largest-component post-processing
                follow the card's ``inference`` block.
            resample: how the result returns to the input grid: ``"nearest"`` (argmax on the network grid,
                then nearest-neighbour resampling of the label map; fastest) or ``"linear"`` (softmax
                probabilities resampled linearly, then argmax; smoother borders when the model's spacing is
                coarse); ``None``: ``"nearest"``, or for an imported bundle what its own postprocessing does
                (:func:`output_resampling`).

        Returns:
            a :class:`~.base.Prediction` whose ``value`` is a uint8 label map :class:`Image` (values = the
            card's label values, 0 = background).
        """
        card = self.card
        image = as_image(image)
        self.check_input_channels()
        sw_batch_size = sw_batch_size or default_sw_batch_size(self.device, card.roi_size)
        image_in = at_training_field(self.input_image(image), card)
        check_cancel(cancel)
        steps = resampling_of(self.bundle)
        array, grid = preprocess(image_in, card.target_spacing, card.intensity, axcodes_of(self.bundle),
                                 card.modality, steps)  # fmt: skip
        own_resample, padding, order = output_resampling(self.bundle, steps)
        resample = resample or own_resample
        check_cancel(cancel)
        inf = inference_settings(card)
        overlap = float(inf["overlap"]) if overlap is None else overlap
        keep = [int(v) for v in inf["keep_largest_component"]]
        mirrored = resample == "linear" or bool(inf["mirror_axes"])
        passes = len(mirror_combinations(inf["mirror_axes"])) if mirrored else 1
        bar = progress_bar(total=passes * window_count(array.shape, card.roi_size, overlap), desc=card.name,
                           unit="window", leave=False)  # fmt: skip

        def step(n: int) -> None:
            check_cancel(cancel)
            bar.update(n)

        with bar:
            net_out = self._network_output(array, sw_batch_size, overlap, inf, mirrored, step)
        check_cancel(cancel)
        if resample == "linear":  # connectivity does not depend on the grid's layout
            labels = keep_largest_component(
                probabilities_to_input_grid(net_out, grid, image_in, padding, order), keep
            )
        else:
            net_labels = np.argmax(net_out, axis=0) if mirrored else argmax_channels(net_out).cpu().numpy()
            labels = labels_to_input_grid(
                keep_largest_component(net_labels.astype(np.uint8), keep), grid, image_in, padding
            )
        out = image.with_array(to_image_layout(image, labels))
        out.meta = {"model": card.name, "model_version": card.version}
        return Prediction(card.name, card.version, image, out, list(card.label_names))

    def accepts(self, image: Image) -> bool:
        """Whether ``image`` has dimensions this model can take and the network takes one channel."""
        return super().accepts(image) and int(self.card.input_channels) == 1

    def check_input_channels(self) -> None:
        """Raise :class:`~ModelSelectorLib.errors.InputError` when the network takes other than one input
        channel: the runtime feeds it one image (a grey-level volume or slice), never several."""
        if int(self.card.input_channels) != 1:
            raise InputError(
                f"the model {self.card.name} takes {self.card.input_channels} input channels and this runtime feeds "
                "one image channel; remove the model from the zoo, or apply it with MONAI (`python -m monai.bundle run`)."
            )

    def _network_output(self, array: np.ndarray, sw_batch_size: int, overlap: float, inf: dict[str, Any],
                        mirrored: bool, step: Callable[[int], None]) -> Any:  # fmt: skip
        """Softmax probabilities over the mirrored passes (``mirrored``) or the raw logits of one pass.

        Raises:
            BundleError: the network needs a Python package that is not installed (an imported bundle's
                network that needs an optional package of MONAI's), found only when it runs.
        """
        try:
            if mirrored:
                return predict_probabilities(self.network, array, self.card.roi_size, self.device, sw_batch_size,
                                             overlap, inf["sw_mode"], inf["mirror_axes"], step,
                                             inf.get("padding_mode", "constant"))  # fmt: skip
            return predict_logits(self.network, array, self.card.roi_size, self.device, sw_batch_size, overlap,
                                  inf["sw_mode"], step, inf.get("padding_mode", "constant"))  # fmt: skip
        except ImportError as e:
            raise BundleError(f"{self.card.name} {self.card.version}: its network needs a Python package that is "
                              f"not installed ({e}); install it, or remove the model from the zoo.") from None  # fmt: skip

    def write(self, prediction: Prediction, path: Path) -> Path:
        return write_segmentation(prediction.value, path, segments_of(self.card))

    def overlay(self, prediction: Prediction) -> dict[str, Any]:
        return {
            "labels": prediction.value,
            "colors": {s.value: tuple(s.color) for s in segments_of(self.card)},
        }

    def fit_signals(self, image: Image) -> Optional[dict[str, float]]:
        """The image's central patch of the model's ``roi_size`` at its ``target_spacing`` (canonical
        orientation), normalised like the model's training data, is run through the network once with hooks
        measuring, per batch-norm layer, the Gaussian KL divergence of the patch's feature statistics from
        the layer's running statistics, and taking the network's bottleneck features (the deepest feature
        map, averaged over space). When the bundle stores the statistics of those features on its example
        inputs (:meth:`fit_feature_statistics`), their Mahalanobis distance in PCA space is measured too
        (after Woodland et al. 2023).

        Returns:
            ``{"kl": mean divergence, "fit": 1 / (1 + kl), "confidence": mean max softmax, "foreground":
            mean 1 - p(background)}`` (without batch-norm running statistics ``kl`` is NaN and ``fit`` 1), plus
            ``"feature_distance"`` (Mahalanobis distance over the square root of the PCA dimensions) and
            ``"feature_fit"`` (``1 / (1 + (d / d_ref)^2)``, ``d_ref`` the example patches' 95th percentile)
            when statistics are stored; None when the image's dimensions do not suit the model.
        """
        import torch

        image = as_image(image)
        if not self.accepts(image):
            return None
        out, kl, feat = self._hooked_forward(self._central_patch(self._patch_source(image)))
        p = torch.softmax(out.float(), dim=1)
        signals = {
            "kl": kl,
            "fit": 1.0 / (1.0 + kl) if math.isfinite(kl) else 1.0,
            "confidence": float(p.max(dim=1).values.mean()),
            "foreground": float((1.0 - p[:, 0]).mean()) if p.shape[1] > 1 else float(p.mean()),
        }
        stats = self.feature_statistics()
        if stats is not None and feat.shape[-1] == stats["mean"].shape[-1]:
            d = float(mahalanobis(feat[None], stats)[0])
            signals["feature_distance"] = d
            signals["feature_fit"] = 1.0 / (1.0 + (d / max(float(stats["d_ref"]), 1e-6)) ** 2)
        return signals

    def _hooked_forward(self, patch: np.ndarray) -> tuple[Any, float, np.ndarray]:
        """One forward pass of a preprocessed patch: the output, the mean batch-norm divergence (NaN without
        running statistics) and the bottleneck features ``(C,)``."""
        import torch

        x = torch.from_numpy(patch)[None, None]
        maps: list[Any] = []
        convs = [m for m in self.network.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
        hooks = BNStatHooks(self.network)
        me = threading.get_ident()

        def keep(_m: Any, _i: Any, o: Any) -> None:
            # a pass of another thread (a user's own predict) is not this one's
            if threading.get_ident() == me:
                maps.append(o)

        with self.hook_lock:  # one verification's hooks on the network at a time
            handles = [m.register_forward_hook(keep) for m in convs]
            try:
                with hooks, torch.inference_mode():
                    out = self.network(x.to(next(self.network.parameters()).device))
                    if isinstance(out, (list, tuple)):
                        out = out[0]
                    kl = float(hooks.mean()) if hooks.layers else float("nan")
            finally:
                for h in handles:
                    h.remove()
        feat = np.zeros(0, np.float32)
        if maps:  # the deepest map: fewest voxels, the last such in execution order (before upsampling)
            smallest = min(int(np.prod(m.shape[2:])) for m in maps)
            deep = [m for m in maps if int(np.prod(m.shape[2:])) == smallest][-1]
            feat = deep.float().mean(dim=tuple(range(2, deep.dim())))[0].cpu().numpy()
        return out, kl, feat

    def feature_statistics(self) -> Optional[dict[str, np.ndarray]]:
        """The bottleneck-feature statistics stored in the bundle (``prototypes/feature_stats.npz``), or None."""
        if not hasattr(self, "_feature_stats"):
            path = Path(getattr(self.bundle, "path", "")) / "prototypes" / FEATURE_STATS_FILE
            self._feature_stats = None
            if path.is_file():
                try:  # the arrays' headers first: a small file may declare any size (the statistics take KBs)
                    self._feature_stats = read_npz(path, MAX_FEATURE_STATS_BYTES)
                except NPZ_ERRORS as e:
                    raise BundleError(f"{path}: truncated or damaged feature statistics ({str(e)[:120]}); make the "
                                      "model's prototypes again with `modelselector prototypes`.") from e  # fmt: skip
        return self._feature_stats

    def fit_feature_statistics(
        self, images: Sequence[Image], patches_per_image: int = 12, components: int = 8, seed: int = 0
    ) -> Optional[dict[str, np.ndarray]]:
        """Statistics of the bottleneck features of patches of the model's example inputs, for the
        Mahalanobis signal of :meth:`fit_signals`: the central patch and ``patches_per_image - 1`` patches
        around it (centres shifted by up to a quarter of the image's extent per axis, seeded).

        Returns:
            ``{"mean": (C,), "components": (k, C), "variances": (k,), "d_ref": 95th percentile of the patches'
            distances, "n_patches"}`` with ``k = min(components, patches - 1)``; None for fewer than 3
            usable patches. Stored with the prototypes (``prototypes/feature_stats.npz``).
        """
        rng = np.random.default_rng(seed)
        feats = []
        for image in images:
            if not self.accepts(image):
                continue
            img = self._patch_source(image)
            for i in range(patches_per_image):
                shift = np.zeros(img.ndim) if i == 0 else rng.uniform(-0.25, 0.25, img.ndim)
                feats.append(self._hooked_forward(self._central_patch(img, shift))[2])
        feats = [f for f in feats if f.size]
        if len(feats) < 3:
            return None
        x = np.stack(feats).astype(np.float64)
        mean = x.mean(axis=0)
        _, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
        k = max(1, min(components, len(x) - 1, vt.shape[0]))
        variances = np.maximum(sv[:k] ** 2 / (len(x) - 1), 1e-8 * max(float(sv[0] ** 2), 1e-12))
        stats = {"mean": mean, "components": vt[:k], "variances": variances, "n_patches": np.asarray(len(x))}
        stats["d_ref"] = np.asarray(np.percentile(mahalanobis(x, stats), 95))
        return {name: np.asarray(v, dtype=np.float32) for name, v in stats.items()}

    def _patch_source(self, image: Image) -> Image:
        """``image`` (of dimensions the model accepts) as the model-alone signals look at it: one component,
        the model's dimensions, a picture at the training field (:func:`at_training_field`), as :meth:`predict`
        sees it."""
        img = image.to_grayscale() if image.is_multicomponent else image
        return at_training_field(img.as_2d(), self.card) if self.spatial_dims == 2 else img

    def _central_patch(self, img: Image, shift: Optional[np.ndarray] = None) -> np.ndarray:
        """The ``roi_size`` patch at ``target_spacing`` around ``img``'s centre (moved by ``shift``, fractions of
        the image's extent per axis), normalised, network layout."""
        card = self.card
        nd = self.spatial_dims
        src = img.to_sitk()
        if src.GetPixelID() != sitk.sitkFloat32:
            src = sitk.Cast(src, sitk.sitkFloat32)
        roi = np.asarray(card.roi_size or [64] * nd, dtype=float)
        spacing = np.asarray(card.target_spacing or src.GetSpacing(), dtype=float)
        direction = axcodes_direction(axcodes_of(self.bundle), nd)
        # an imported bundle's axes and spacing, as MONAI's own run gives them
        if (steps := resampling_of(self.bundle)) is not None:
            grid = monai_grid(src, steps)
            spacing = np.asarray(grid.GetSpacing())
            direction = np.asarray(grid.GetDirection()).reshape(nd, nd)
        size = np.asarray(src.GetSize(), dtype=float)
        index = (size - 1) / 2.0 + (0.0 if shift is None else np.asarray(shift) * size)
        centre = np.asarray(src.TransformContinuousIndexToPhysicalPoint([float(i) for i in index]))
        ref = empty_grid(roi, spacing, centre - direction @ ((roi - 1) / 2.0 * spacing), direction)
        res = resample_to(
            src, ref, sitk.sitkLinear, background_value(img.array, card.intensity, card.modality)
        )
        arr = normalize_intensity(sitk.GetArrayFromImage(res), card.intensity, card.modality)
        return np.ascontiguousarray(to_network_layout(arr))

    def inversion_objective(self, output: Any, min_foreground: float = 0.15) -> tuple[Any, Any]:
        """Mean voxel entropy of the softmax, plus a penalty when less than ``min_foreground`` of the voxels
        are foreground; reports the foreground fraction."""
        import torch

        p = torch.softmax(output, dim=1)
        entropy = -(p * torch.log(p.clamp_min(1e-8))).sum(1).mean()
        fg = (1.0 - p[:, 0]).mean() if p.shape[1] > 1 else p.mean()
        return entropy + 10.0 * torch.relu(min_foreground - fg), fg


def mahalanobis(features: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    """Mahalanobis distances of feature rows ``(n, C)`` in the PCA space of ``stats`` (see
    :meth:`SegmentationRuntime.fit_feature_statistics`), divided by the square root of its dimension."""
    proj = (np.asarray(features, np.float64) - stats["mean"]) @ np.asarray(stats["components"], np.float64).T
    return np.sqrt((proj**2 / np.asarray(stats["variances"], np.float64)).sum(axis=1) / proj.shape[1])


def apply_model(
    bundle: Any,
    image: Image,
    device: str = "cpu",
    cancel: Optional[Any] = None,
    sw_batch_size: Optional[int] = None,
    overlap: Optional[float] = None,
    resample: Optional[str] = None,
) -> Image:
    """Segment ``image`` with a loaded segmentation bundle (:func:`ModelSelectorLib.zoo.load_bundle`); returns
    the uint8 label map in exactly ``image``'s geometry. See :meth:`SegmentationRuntime.predict`.

    Raises:
        InputError: wrong dimension (e.g. a volume for a 2D model), empty or NaN image.
        Cancelled: ``cancel`` was set.
    """
    runtime = SegmentationRuntime(bundle, device=device)
    return runtime.predict(image, cancel, sw_batch_size, overlap, resample).value
