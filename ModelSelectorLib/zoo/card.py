"""The model card: what selection, inference and users need to know about one model.

The card is the ``"modelselector"`` block of a bundle's ``configs/metadata.json``. Its vocabulary is shared
with data manifests and selection answers: ``modality`` is a DICOM Modality code, ``body_region`` one or
more DICOM Body Part Examined terms joined by ``;``, ``task_type`` a task with a runtime in
:mod:`ModelSelectorLib.models` (the registry decides which task types exist and how their labels look).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any, Optional

from ..errors import BundleError
from ..models.preprocessing import WINDOW_PADDINGS
from ..models.registry import runtime_class, task_types

MODALITIES = ("CT", "MR", "DX", "US", "PT", "NM", "XA", "MG", "OT")
BODY_REGIONS = (
    "HEAD", "NECK", "CHEST", "HEART", "ABDOMEN", "PELVIS", "SPINE", "BREAST", "SHOULDER", "ARM", "HAND",
    "HIP", "LEG", "KNEE", "FOOT", "EYE", "WHOLEBODY",
)  # fmt: skip
INTENSITY_MODES = ("ct", "mr", "percentile")


#: names of models and versions become folder names in the zoo
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")

_DEFAULT_COLORS = (
    (0.86, 0.31, 0.24), (0.27, 0.56, 0.84), (0.35, 0.71, 0.35), (0.93, 0.75, 0.26), (0.62, 0.42, 0.78),
    (0.24, 0.74, 0.74), (0.94, 0.52, 0.24), (0.78, 0.38, 0.58), (0.55, 0.55, 0.30), (0.45, 0.45, 0.85),
)  # fmt: skip


def default_color(value: int) -> list[float]:
    """A distinct default RGB colour (0-1) for label ``value``."""
    return list(_DEFAULT_COLORS[(int(value) - 1) % len(_DEFAULT_COLORS)])


def safe_name(text: str) -> str:
    """``text`` turned into a name usable as a folder name (letters, digits, ``._+-``)."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text).strip()).strip("._-")
    return name[:128] or "model"


def distinct_safe_name(text: str, taken: Optional[set[str]] = None) -> str:
    """``text`` as a file or folder name that no other text maps to (unlike :func:`safe_name`, which gives
    ``case 1`` and ``case_1`` one name, and every all-Chinese name ``model``): ``text`` itself when it is a safe
    name already, else its safe part followed by a short hash of ``text`` (``case_1-3f2a9c01``).

    Args:
        text: the name to turn into a file name (a case id, a candidate name).
        taken: the lower-cased names already given out in the same folder; a name given out already, also one
            that differs only in case (the same file on a case-insensitive file system), gets ``-2``, ``-3``, ...
            appended. The name returned is added.
    """
    text = str(text)
    name = text
    if safe_name(text) != text:
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
        name = f"{safe_name(text)[:100]}-{digest}" if re.search(r"[A-Za-z0-9]", text) else digest
    if taken is None:
        return name
    unique, k = name, 2
    while unique.lower() in taken:
        unique, k = f"{name}-{k}", k + 1
    taken.add(unique.lower())
    return unique


# --- model card -----------------------------------------------------------------------------------------
def _check_safe_name(key: str, value: Any) -> None:
    if not isinstance(value, str) or not _SAFE_NAME.match(value):
        raise BundleError(
            f"model card field '{key}' is {value!r}; use letters, digits and . _ + - only (no spaces)."
        )


def _check_modality(value: Any) -> None:
    if value not in MODALITIES:
        raise BundleError(
            f"model card field 'modality' is {value!r}; expected a DICOM modality code: {', '.join(MODALITIES)}."
        )


def _check_body_region(value: Any) -> None:
    parts = value.split(";") if isinstance(value, str) else [None]
    if any(p not in BODY_REGIONS for p in parts):
        raise BundleError(
            f"model card field 'body_region' is {value!r}; each ';'-separated part must be one of "
            f"{', '.join(BODY_REGIONS)}."
        )


#: the start of an imported standard MONAI bundle's ``code_version`` (then the MONAI version its metadata gives)
IMPORTED_CODE_VERSION = "monai "


@dataclasses.dataclass
class ModelCard:
    """The facts about one model that selection, inference and users need (``"modelselector"`` block).

    Attributes:
        name: model name, also its folder name in the zoo.
        version: version string (e.g. ``"0.1.0"``); a zoo keeps several versions of one name.
        task_type: a task type with a runtime (:func:`ModelSelectorLib.models.task_types`), e.g.
            ``"segmentation"`` or ``"landmarks"``.
        modality: DICOM modality code of the intended input (``CT``, ``MR``, ...).
        body_region: DICOM-like body region (``ABDOMEN``), ``";"``-joined if several.
        labels: ``[{"value", "name", "color", "terminology"?}]``; colours RGB in 0-1.
        input_channels: number of input channels of the network.
        spatial_dims: 2 or 3.
        target_spacing: voxel spacing (mm, ``x, y, z``) the network was trained at.
        intensity: intensity normalisation, ``{"mode": "ct"|"mr"|"percentile", "a_min", "a_max", ...}``.
        roi_size: patch size (``x, y, z``) of sliding-window inference.
        training_data: description of the training data.
        n_training_cases: number of training cases.
        validation_metrics: e.g. ``{"dice": 0.91}``.
        seed: random seed of training.
        code_version: version of the code that trained the model.
        license: licence of the weights.
        synthetic: True when trained on synthetic data (demo models).
        training_time_s: wall time of the training epochs in seconds (over every session of a resumed run; loading
            the data and the final evaluation are not counted).
        example_inputs: optional bundle-relative paths of example inputs.
        inference: how the model is applied (segmentation): ``{"sw_mode": "constant"|"gaussian", "overlap",
            "mirror_axes": [network-grid axes of test-time mirroring], "keep_largest_component": [label
            values], "padding_mode"?: windows beyond the image padded "replicate", "reflect" or "circular" (an
            imported bundle's inferer; default zeros)}``; ``None``: constant weighting, overlap 0.25, no mirroring, no
            post-processing.
        plan: how input size and spacing were chosen, e.g. ``{"median_shape": [x, y, z], "max_patch_voxels"}``.
        peak_memory_mb: peak resident memory of the training process in MiB (``ru_maxrss``).
        training_device: where it was trained, e.g. ``"CPU, 2 torch threads"`` or ``"CUDA: NVIDIA H200, peak GPU
            memory 812 MiB"`` (``None``: not recorded, as for models trained before this field).
    """

    name: str
    version: str
    task_type: str
    modality: str
    body_region: str
    labels: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    input_channels: int = 1
    spatial_dims: int = 3
    target_spacing: Optional[list[float]] = None
    intensity: Optional[dict[str, Any]] = None
    roi_size: Optional[list[int]] = None
    training_data: str = ""
    n_training_cases: int = 0
    validation_metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: Optional[int] = None
    code_version: str = ""
    license: str = ""
    synthetic: bool = False
    training_time_s: Optional[float] = None
    example_inputs: list[str] = dataclasses.field(default_factory=list)
    inference: Optional[dict[str, Any]] = None
    plan: Optional[dict[str, Any]] = None
    peak_memory_mb: Optional[float] = None
    training_device: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        """The card as a JSON-ready dict (the ``"modelselector"`` block of ``metadata.json``)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Build a card from a ``"modelselector"`` block; unknown keys are ignored, missing required ones
        raise :class:`BundleError`."""
        if not isinstance(data, dict):
            raise BundleError(f"the model card must be a JSON object, not {type(data).__name__}.")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        required = [n for n, f in fields.items() if f.default is dataclasses.MISSING and
                    f.default_factory is dataclasses.MISSING]  # fmt: skip
        missing = [n for n in required if n not in data]
        if missing:
            raise BundleError(f"the model card lacks required field(s): {', '.join(missing)}.")
        return cls(**{k: v for k, v in data.items() if k in fields})

    @property
    def label_names(self) -> list[str]:
        return [str(lb.get("name", "")) for lb in self.labels]

    @property
    def imported(self) -> bool:
        """A standard MONAI bundle imported by ``zoo add`` (its own configs, not written by this project)."""
        return str(self.code_version or "").startswith(IMPORTED_CODE_VERSION)

    @property
    def takes_single_slices(self) -> bool:
        """Whether this 3D model works slice by slice (its patch is one slice deep: ``roi_size`` ``(x, y, 1)``),
        so that a lone 2D slice is a whole input for it."""
        roi = self.roi_size
        return int(self.spatial_dims) == 3 and bool(roi) and len(roi) == 3 and int(roi[2]) == 1

    def validate(self) -> ModelCard:
        """Check every field; raise :class:`BundleError` naming the first bad field. Returns ``self``."""
        for key in ("name", "version"):
            _check_safe_name(key, getattr(self, key))
        if self.task_type not in task_types():
            raise BundleError(
                f"model card field 'task_type' is {self.task_type!r}; expected one of {', '.join(task_types())} "
                "(the task types this version can run)."
            )
        _check_modality(self.modality)
        _check_body_region(self.body_region)
        self._validate_labels()
        _check_int(self.input_channels, "input_channels", 1)
        if self.spatial_dims not in (2, 3) or isinstance(self.spatial_dims, bool):
            raise BundleError(f"model card field 'spatial_dims' is {self.spatial_dims!r}; expected 2 or 3.")
        self._validate_geometry()
        if self.intensity is not None:
            if not isinstance(self.intensity, dict) or self.intensity.get("mode") not in INTENSITY_MODES:
                raise BundleError(
                    f"model card field 'intensity' is {self.intensity!r}; expected {{'mode': one of "
                    f"{', '.join(INTENSITY_MODES)}, ...}}."
                )
        _check_int(self.n_training_cases, "n_training_cases", 0)
        if self.seed is not None:
            _check_int(self.seed, "seed", None)
        if not isinstance(self.validation_metrics, dict):
            raise BundleError(
                "model card field 'validation_metrics' must be an object such as {\"dice\": 0.9}."
            )
        if not isinstance(self.synthetic, bool):
            raise BundleError(f"model card field 'synthetic' is {self.synthetic!r}; expected true or false.")
        if self.training_time_s is not None and not isinstance(self.training_time_s, (int, float)):
            raise BundleError(
                f"model card field 'training_time_s' is {self.training_time_s!r}; expected seconds."
            )
        for key in ("training_data", "code_version", "license"):
            if not isinstance(getattr(self, key), str):
                raise BundleError(f"model card field '{key}' must be text.")
        if not isinstance(self.example_inputs, list) or not all(
            isinstance(p, str) for p in self.example_inputs
        ):
            raise BundleError("model card field 'example_inputs' must be a list of relative paths.")
        self._validate_inference()
        if self.plan is not None and not isinstance(self.plan, dict):
            raise BundleError("model card field 'plan' must be an object.")
        if self.peak_memory_mb is not None and not isinstance(self.peak_memory_mb, (int, float)):
            raise BundleError(f"model card field 'peak_memory_mb' is {self.peak_memory_mb!r}; expected MiB.")
        if self.training_device is not None and not isinstance(self.training_device, str):
            raise BundleError("model card field 'training_device' must be text.")
        return self

    def _validate_inference(self) -> None:
        inf = self.inference
        if inf is None:
            return
        if (not isinstance(inf, dict) or inf.get("sw_mode", "constant") not in ("constant", "gaussian")
                or inf.get("padding_mode", "constant") not in ("constant", *WINDOW_PADDINGS)):  # fmt: skip
            raise BundleError(
                f"model card field 'inference' is {inf!r}; expected {{'sw_mode': 'constant' or 'gaussian', ...}}."
            )
        axes, keep = inf.get("mirror_axes", []), inf.get("keep_largest_component", [])
        if not isinstance(axes, list) or any(
            not isinstance(a, int) or not 0 <= a < self.spatial_dims for a in axes
        ):
            raise BundleError(
                f"model card field 'inference.mirror_axes' is {axes!r}; expected axes 0..{self.spatial_dims - 1}."
            )
        values = {lb.get("value") for lb in self.labels if isinstance(lb, dict)}
        if not isinstance(keep, list) or any(v not in values for v in keep):
            raise BundleError(
                f"model card field 'inference.keep_largest_component' is {keep!r}; expected label values."
            )

    @staticmethod
    def check_identity(name: str, modality: str, body_region: str) -> None:
        """Check a future card's name, modality and body region as :meth:`validate` would, so that a training run
        is refused before it starts rather than after (raises :class:`BundleError`)."""
        _check_safe_name("name", name)
        _check_modality(modality)
        _check_body_region(body_region)

    def _validate_labels(self) -> None:
        if not isinstance(self.labels, list):
            raise BundleError("model card field 'labels' must be a list of {value, name, color}.")
        rules = runtime_class(self.task_type)
        if rules.labels_required and not self.labels:
            raise BundleError(
                f"model card field 'labels' is empty; a {self.task_type} model needs at least one label."
            )
        seen = set()
        for i, lb in enumerate(self.labels):
            where = f"model card field 'labels[{i}]'"
            if not isinstance(lb, dict):
                raise BundleError(f"{where} must be an object with value, name and color.")
            value = lb.get("value")
            lowest = rules.first_label_value
            if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
                raise BundleError(f"{where}: 'value' is {value!r}; expected an integer >= {lowest}.")
            if value in seen:
                raise BundleError(f"{where}: label value {value} appears twice.")
            seen.add(value)
            if not isinstance(lb.get("name"), str) or not lb["name"].strip():
                raise BundleError(f"{where}: 'name' must be non-empty text.")
            color = lb.get("color")
            if (
                not isinstance(color, (list, tuple))
                or len(color) != 3
                or not all(isinstance(c, (int, float)) and 0 <= c <= 1 for c in color)
            ):
                raise BundleError(f"{where}: 'color' is {color!r}; expected [r, g, b] with values in 0-1.")
            term = lb.get("terminology")
            if term is not None and not isinstance(term, dict):
                raise BundleError(f"{where}: 'terminology' must be an object with 'category' and 'type'.")

    def _validate_geometry(self) -> None:
        for key, kind in (("target_spacing", float), ("roi_size", int)):
            value = getattr(self, key)
            if value is None:
                continue
            ok = isinstance(value, (list, tuple)) and len(value) == self.spatial_dims
            ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)
            if ok and kind is int:
                ok = all(float(v).is_integer() for v in value)
            if not ok:
                raise BundleError(
                    f"model card field '{key}' is {value!r}; expected {self.spatial_dims} positive numbers."
                )


def _check_int(value: Any, key: str, minimum: Optional[int]) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise BundleError(f"model card field '{key}' is {value!r}; expected an integer{bound}.")
