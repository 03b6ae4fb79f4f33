"""The landmark runtime: chest X-ray contours by coarse-to-fine heatmap regression, written as Slicer curves.

A landmark model sees the whole 2D radiograph resized to its ``roi_size`` (antialiased bilinear) and
normalised by percentiles (0.5 / 99.5 -> 0 / 1). Its coarse stage outputs one logit map per landmark, read as
a spatial softmax; each point is decoded to a sub-pixel position by the local centroid of its map around the
maximum. A coarse-to-fine bundle then projects the points onto its shape model and refines each one on a patch
of the image at a finer grid (:mod:`.landmark_stages`); the points are mapped back to the original pixels and
through the image's geometry to LPS millimetres.

Layout: arrays given to the networks are in MONAI's spatial layout ``(x, y)`` (the transpose of a NumPy
image ``(y, x)``), as ``LoadImage`` gives them; points are ``(x, y)`` = indices along axes 0 and 1.

The landmark *schema* (:class:`LandmarkSchema`, :mod:`.landmark_schema`) says which contour points of which
structures a model predicts; point names are ``GROUP_NN`` (``RL_04`` = point 4 of the right lung contour).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import InputError
from ..io.image import Image, as_image
from ..io.markups import Curve, write_curves, write_markups
from ..progress import check_cancel
from .base import Prediction, TaskRuntime
from .heatmaps import heatmap_entropy
from .landmark_schema import (  # noqa: F401  (the schema's names, re-exported)
    DEFAULT_STEPS,
    GROUP_COLORS,
    GROUP_NAMES,
    GROUPS,
    LUNG_GROUPS,
    LandmarkSchema,
    landmark_labels,
)
from .landmark_scoring import lung_dice, read_landmark_json, score_points
from .landmark_stages import LANDMARK_STAGES, REFINE_SCALE, landmark_conditioning, predict_landmarks, stage
from .registry import register_runtime


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


#: excess of normalised heatmap entropy over the model's validation images that divides a landmark model's
#: fit by e. Measured on the chest X-ray landmark model: adult chest radiographs within 0.02 of its
#: validation entropy, paediatric ones 0.07 above, CT/MR slices, mammograms, knee radiographs and photos
#: 0.13-0.22 above.
LANDMARK_ENTROPY_SCALE = 0.1


def _as_viewed(image: Image) -> Image:
    """A 2D image or lone slice in its view layout (:meth:`Image.in_view_layout`); other images unchanged (the
    runtime refuses them with its own message). A SimpleITK image or a path is read first (:func:`as_image`)."""
    image = as_image(image)
    return image.in_view_layout()[0] if image.is_single_slice else image


def contour_curves(points_lps: np.ndarray, names: Sequence[str], model: str) -> list[Curve]:
    """One closed curve per landmark group of ``names`` (``GROUP_NN``): the lungs, the heart and the
    clavicles are outlines (the clavicles' contours run around each bone); a group of two points is an open
    curve. Points keep the channel order, which runs along each contour."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(str(name).rpartition("_")[0] or str(name), []).append(i)
    return [Curve(name=f"{model} {GROUP_NAMES.get(g, g)}", points_lps=np.asarray(points_lps)[idx],
                  labels=[str(names[i]) for i in idx], closed=len(idx) >= 3,
                  color=GROUP_COLORS.get(g, (1.0, 0.0, 0.0))) for g, idx in groups.items()]  # fmt: skip


@register_runtime
class LandmarkRuntime(TaskRuntime):
    """Runs a 2D landmark bundle (a heatmap network, or the stages of a coarse-to-fine model): points in LPS
    millimetres, written as Slicer closed curves (one per structure) or a point list."""

    task_type = "landmarks"
    keywords = ("landmark",)
    first_label_value = 0  # label value = output channel
    labels_required = True
    output_suffix = ".mrk.json"
    # the written file holds one closed curve per structure; Slicer reads its first into this node class and
    # the others (same class) with vtkMRMLMarkupsJsonStorageNode.AddNewMarkupsNodeFromFile
    slicer_node_class = "vtkMRMLMarkupsClosedCurveNode"
    slicer_storage_class = "vtkMRMLMarkupsJsonStorageNode"
    primary_metric = "mre_mm"
    scores_references = True

    def __init__(self, bundle: Any, device: str = "cpu") -> None:
        super().__init__(bundle, device)
        self.stages = bundle.network
        self.network = stage(bundle.network, "coarse")  # what the fit signals and model inversion look at
        # a contour stage is trained on whole-contour point names (GROUP_NN), so its card always has a schema
        has_contour = stage(bundle.network, "contour") is not None
        self.contours = LandmarkSchema.from_names(self.card.label_names).contours if has_contour else None

    # --- card-level --------------------------------------------------------------------------------------
    @classmethod
    def usage(cls, card: Any) -> list[str]:
        return [*super().usage(card), "", "MONAI's own workflow cannot run it: after the coarse network come the "
                "shape, refinement and contour stages, which no MONAI transform does (`landmark_stages` in "
                "`configs/inference.json` describes them)."]  # fmt: skip

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
            # what ModelSelectorLib's landmark runtime does after the coarse network (no MONAI transform does it)
            "landmark_stages": {"coarse": "network_def.coarse (or network_def itself): heatmaps at roi_size",
                                "shape": "network_def.shape: projection onto the shape model's modes",
                                "refine": f"network_def.refine: one heatmap per landmark on a patch of the image "
                                          f"at {REFINE_SCALE} x roi_size around its coarse estimate",
                                "contour": "network_def.contour (when present): the refined points fitted to a "
                                           "shape model, trusted across their contour more than along it, refined "
                                           "again, fitted again and moved onto the refined outline",
                                "offset": "network_def.offset (when present): its bias holds each landmark's "
                                          "(along, across) offset from its predicted contour in coarse pixels, "
                                          "added last"},
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
    def test_metrics(cls, means: dict[str, float], n_cases: int, protocol: str) -> dict[str, Any]:
        return {**{f"test_{k}": v for k, v in means.items()}, "test_n_cases": int(n_cases)}

    @classmethod
    def describe_fit(cls, signals: dict[str, float]) -> str:
        return (
            f"verify: heatmap sharpness fit {signals['fit']:.2f} (entropy {signals['heatmap_entropy']:.2f}; "
            f"{signals['reference_entropy']:.2f} on its validation images), peak probability "
            f"{signals['confidence']:.3f}"
        )

    # --- the task ----------------------------------------------------------------------------------------
    def logits(self, image: Image) -> tuple[Any, tuple[float, float], Image]:
        """Coarse-stage output ``(1, P, X, Y)`` for ``image`` (2D, or a one-slice volume) resized to the card's
        ``roi_size`` and normalised like training. Returns ``(logits, scale, image)``: ``scale`` maps resized
        to original pixels, ``image`` is the 2D greyscale input actually used."""
        import torch

        img = self.input_image(_as_viewed(image))
        size = int((self.card.roi_size or [64, 64])[0])
        net_in, scale = resize_image(np.asarray(img.array, np.float32), size)
        with torch.no_grad():
            out = self.network(torch.from_numpy(net_in)[None, None].to(self.device)).float().cpu()
        return out, scale, img

    def points_px(self, image: Image, cancel: Optional[Any] = None) -> tuple[np.ndarray, Image]:
        """Landmarks ``(P, 2)`` ``(x, y)`` in pixels of ``image`` in its view layout (:meth:`Image.in_view_layout`,
        the layout as stored for a picture) through every stage of the model, and the 2D greyscale input used."""
        import torch

        check_cancel(cancel)
        img = self.input_image(_as_viewed(image))
        size = int((self.card.roi_size or [64, 64])[0])
        arr = np.asarray(img.array, np.float32)
        net_in, scale = resize_image(arr, size)
        fine = cond = None
        if stage(self.stages, "refine") is not None:
            fine = torch.from_numpy(resize_image(arr, size * REFINE_SCALE)[0])[None]
            cond = landmark_conditioning(self.card.label_names, GROUPS)
        check_cancel(cancel)
        coarse_in = torch.from_numpy(net_in)[None, None].to(self.device)
        pts, _ = predict_landmarks(self.stages, coarse_in, fine, cond, contours=self.contours)
        return to_original(pts[0], scale), img

    def predict(self, image: Image, cancel: Optional[Any] = None) -> Prediction:
        """Landmarks of ``image`` in LPS millimetres: ``value`` is ``(P, 3)`` (z = the slice's position;
        0 for a 2D image), ``names`` the card's point names, ``meta["points_px"]`` the ``(P, 2)`` pixel
        positions ``(x, y)`` in the 2D input; ``image`` is the input in its view layout (a radiograph stored
        mirrored or transposed is read as a viewer sees it, so left and right stay where they are)."""
        image = _as_viewed(image)
        pts, img = self.points_px(image, cancel)
        ref = image if image.ndim == 3 else img  # a one-slice volume: the points lie in its slice
        n = ref.ndim
        idx = np.zeros((len(pts), n))
        idx[:, :2] = pts
        m = ref.ijk_to_lps()
        out = np.zeros((len(pts), 3))
        out[:, :n] = idx @ m[:n, :n].T + m[:n, n]
        stages = [s for s in LANDMARK_STAGES if stage(self.stages, s) is not None]
        return Prediction(self.card.name, self.card.version, image, out, list(self.card.label_names),
                          meta={"points_px": pts, "stages": stages})  # fmt: skip

    def write(self, prediction: Prediction, path: Path) -> Path:
        """The contours as a scene-ready set of Slicer curves (one closed curve per structure) in one
        ``.mrk.json``; :meth:`write_points` writes a point list instead."""
        return write_curves(path, contour_curves(prediction.value, prediction.names, prediction.model))

    def write_points(self, prediction: Prediction, path: Path) -> Path:
        """The landmarks as one Slicer point list (``vtkMRMLMarkupsFiducialNode``) in a ``.mrk.json``."""
        return write_markups(path, prediction.value, prediction.names, label=prediction.model)

    def overlay(self, prediction: Prediction) -> dict[str, Any]:
        return {"points_lps": prediction.value,
                "point_colors": [tuple(lb.get("color", (1.0, 0.0, 0.0))) for lb in self.card.labels]}  # fmt: skip

    def score(
        self, prediction: Prediction, reference: Path, names: Optional[Sequence[str]] = None
    ) -> dict[str, float]:
        """Scores of ``prediction`` against a ``<id>_landmarks.json`` of its image (pixel coordinates) over the
        points ``names`` (default: all the prediction's): radial errors in original pixels and, with the file's
        pixel spacing, in mm (:func:`score_points`), and the Dice of the filled lung contours against
        ``<id>_lungmask.png`` beside the file (``dice_lungs``; NaN without one).

        Raises:
            DatasetError: an unreadable reference, or one whose groups do not fit the model's points.
            InputError: ``names`` the prediction does not have.
        """
        chosen = list(prediction.names if names is None else names)
        where = {n: i for i, n in enumerate(prediction.names)}
        missing = [n for n in chosen if n not in where]
        if missing:
            raise InputError(f"the prediction has no landmark(s) {missing[:5]}; it cannot be scored on them.")
        schema = LandmarkSchema.from_names(chosen)
        pts = np.asarray(prediction.meta["points_px"], float)[[where[n] for n in schema.names]]
        width = int(prediction.image.as_2d().array.shape[-1]) if prediction.image.is_single_slice else None
        truth, mask, spacing, _ = read_landmark_json(reference, schema, image_width=width)
        out = score_points(pts, truth, mask, spacing)
        ref = Path(reference)
        mask_path = ref.with_name(ref.name.replace("_landmarks.json", "_lungmask.png"))
        out["dice_lungs"] = float("nan")
        if mask_path.is_file() and mask_path != ref:
            from PIL import Image as PILImage

            with PILImage.open(mask_path) as im:
                out["dice_lungs"] = lung_dice(pts, schema, np.asarray(im.convert("L")) > 127)
        return out

    @classmethod
    def replacement_problem(cls, candidate: Any, current: Any) -> Optional[str]:
        """A landmark model may replace another when it predicts at least the same points (whole contours may
        replace a subsample of them); the two are compared on the current model's points."""
        missing = sorted(set(current.label_names) - set(candidate.label_names))
        if not missing:
            return None
        return (f"the candidate lacks the current model's landmarks {missing[:5]} (train it on whole contours: "
                "steps_per_group 1 for every group in its --config, as docs/landmarks/grid.yaml has)")  # fmt: skip

    def fit_signals(self, image: Image) -> Optional[dict[str, float]]:
        """How much more diffuse the model's coarse heatmaps are on ``image`` than on its validation images (card
        metric ``val_heatmap_entropy``): ``fit = exp(-max(0, entropy - reference) / LANDMARK_ENTROPY_SCALE)``
        (1 without a reference). A landmark model has no batch-norm statistics to compare."""
        image = as_image(image)
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
