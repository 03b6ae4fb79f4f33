"""The task runtime: what every runnable zoo model offers, whatever its task.

A runtime wraps one loaded bundle (network + card) and owns the task-specific steps of the
select-and-apply path::

    image --input_image--> the model's dimensions (2D/3D), one component, checked
          --predict------> Prediction (a label map in the image's geometry, LPS points, ...)
          --write--------> .seg.nrrd / .mrk.json / ...
    image --fit_signals--> model-alone evidence that the image suits the model (used by the selector)
    network output --inversion_objective--> the confidence term of model inversion (data-free prototypes)

and, as class methods that need no network, what the bundle format and user interfaces need to know
about the task: its ``inference.json`` sections, its MONAI output format, how to describe its outputs and
its fit signals, and the file suffix and Slicer node class of its result.

Subclasses register with :func:`~.registry.register_runtime`; nothing outside the registry branches on
``task_type``.
"""

from __future__ import annotations

import abc
import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np

from ..errors import InputError
from ..io.image import Image, check_image_content


@dataclasses.dataclass
class Prediction:
    """What a runtime predicted for one image.

    Attributes:
        model, version: the model card's name and version.
        image: the image the prediction belongs to (its geometry is the output's geometry).
        value: the task's result: a label map :class:`~ModelSelectorLib.io.Image` (segmentation), an
            ``(P, 3)`` array of LPS points in mm (landmarks), ...
        names: names of the result's parts (segment or point names), in order.
        meta: extra facts (timings, decoding, ...).
    """

    model: str
    version: str
    image: Image
    value: Any
    names: list[str] = dataclasses.field(default_factory=list)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


def quality_text(held_out: Optional[dict[str, Any]], demonstration: bool) -> str:
    """A model's held-out figure in a few words for tables: ``"Dice 0.88 (208)"``, ``"-, demonstration"``."""
    text = (
        "-" if not held_out else f"{held_out['metric']} {float(held_out['value']):.2f} ({held_out['cases']})"
    )
    return f"{text}, demonstration" if demonstration else text


def to_image_layout(image: Image, array: np.ndarray) -> np.ndarray:
    """A result ``array`` on the grid :meth:`TaskRuntime.input_image` gave for ``image`` (a lone slice in its
    view layout: ``(y, x)`` or ``(1, y, x)``) in ``image``'s own array layout; for other images, reshaped to it."""
    if image.ndim == 3 and image.is_single_slice:
        laid, restore = image.in_view_layout()
        return np.ascontiguousarray(restore(array.reshape(laid.array.shape[:3])))
    return array.reshape(image.array.shape[: image.ndim])


def check_dimensions(card: Any, image: Image) -> None:
    """Refuse ``image`` where the model of ``card`` cannot take its dimensions: a volume of several slices for a 2D
    model; a lone 2D slice for a 3D model whose patches span several slices (padded to a patch, the slice would
    give a meaningless result, and slowly: a 1536 px radiograph takes thousands of patches).

    Raises:
        InputError: in one line, saying what to give instead.
    """
    if int(card.spatial_dims) == 2 and not image.is_single_slice:
        raise InputError(
            f"the model {card.name} takes 2D images and the input is a volume of {image.size[2]} slices; give a 2D "
            "image (PNG, or NRRD/NIfTI with one slice) or choose a 3D model."
        )
    if int(card.spatial_dims) == 3 and image.is_single_slice and not card.takes_single_slices:
        depth = f" (its patches span {int(card.roi_size[2])} slices)" if card.roi_size else ""
        raise InputError(
            f"the model {card.name} takes 3D volumes{depth} and the input is a single 2D slice; give it the whole "
            "volume (the DICOM series folder, or a NIfTI/NRRD volume) or choose a 2D model."
        )


class TaskRuntime(abc.ABC):
    """A zoo model that can be run: one subclass per task type.

    Args:
        bundle: a loaded bundle (``network`` in eval mode, ``card``, ``config``, ``path``).
        device: torch device of the network.
    """

    #: the card's ``task_type`` this runtime runs
    task_type: ClassVar[str] = ""
    #: words in a standard MONAI bundle's metadata that name this task
    keywords: ClassVar[tuple[str, ...]] = ()
    #: the lowest label value a card may use (1 when 0 is the background)
    first_label_value: ClassVar[int] = 0
    #: whether a card must list at least one label
    labels_required: ClassVar[bool] = False
    #: file suffix of the written output
    output_suffix: ClassVar[str] = ""
    #: the MRML node class the output loads into in 3D Slicer, and the storage node class that reads it
    slicer_node_class: ClassVar[str] = ""
    slicer_storage_class: ClassVar[str] = ""
    #: whether :meth:`score` scores a prediction against a reference file, and the metric that ranks models
    scores_references: ClassVar[bool] = False
    primary_metric: ClassVar[str] = ""
    #: whether ``retrain`` can train this task again from an MSD folder with its current version's settings
    retrains_from_msd: ClassVar[bool] = False

    def __init__(self, bundle: Any, device: str = "cpu") -> None:
        self.bundle = bundle
        self.card = bundle.card
        self.network = bundle.network
        self.device = device
        #: held while a verification's module hooks are on ``network``: one set of hooks at a time (the hooks
        #: themselves count only their own thread's passes, so a user's own predict meanwhile is not mixed in)
        self.hook_lock = threading.Lock()

    # --- what the card and the user interfaces need (no network) --------------------------------------
    @classmethod
    @abc.abstractmethod
    def inference_sections(cls, card: Any) -> dict[str, Any]:
        """``preprocessing``, ``inferer`` and ``postprocessing`` of the bundle's MONAI ``inference.json``."""

    @classmethod
    @abc.abstractmethod
    def output_format(cls, card: Any) -> dict[str, Any]:
        """MONAI ``network_data_format.outputs.pred`` of the card's network."""

    @classmethod
    def usage(cls, card: Any) -> list[str]:
        """The card's "Use" section (Markdown lines): how to load and apply the bundle."""
        return [
            f"Load with `ModelSelectorLib.zoo.load_bundle(PATH)`; apply with `modelselector apply --model "
            f"{card.name} --zoo ZOO IMAGE --out OUT{cls.output_suffix}` (or from the Slicer module)."
        ]

    @classmethod
    def describe_outputs(cls, card: Any) -> str:
        """One line naming what the model outputs (for tables and summaries)."""
        return ", ".join(card.label_names)

    #: a model trained on fewer cases than this is a demonstration, whatever its figures
    MIN_TRAINING_CASES: ClassVar[int] = 20

    @classmethod
    def held_out(cls, card: Any) -> Optional[dict[str, Any]]:
        """The card's headline held-out figure: ``{"metric": "Dice", "value": 0.88, "cases": 16,
        "protocol": "..."}``, or None when the model was never scored on cases it did not learn from."""
        return None

    @classmethod
    def test_metrics(cls, means: dict[str, float], n_cases: int, protocol: str) -> dict[str, Any]:
        """Card ``validation_metrics`` entries that record a test result (``means`` of the task's metrics over
        ``n_cases`` cases that no choice was made on, e.g. a promotion gate's) as test figures: ``test_<metric>``,
        ``test_n_cases`` and ``test_protocol``. They go beside the model's own validation figures (``dice``,
        ``validation_cases``, ...), which keep their names and case count."""
        return {
            **{f"test_{k}": v for k, v in means.items()},
            "test_n_cases": int(n_cases),
            "test_protocol": protocol,
        }

    @classmethod
    def is_demonstration(cls, card: Any) -> bool:
        """A model that shows what the tool does rather than one to rely on: fewer than
        :attr:`MIN_TRAINING_CASES` training cases, or no held-out figure."""
        return int(card.n_training_cases) < cls.MIN_TRAINING_CASES or cls.held_out(card) is None

    @classmethod
    def describe_quality(cls, card: Any) -> str:
        """One line with the model's held-out figure from its card (what a user should expect of it)."""
        h = cls.held_out(card)
        text = (
            "no held-out figure"
            if h is None
            else f"{h['metric']} {h['value']:.3f} on {h['cases']} cases ({h['protocol']})"
        )
        return text + (" (demonstration)" if cls.is_demonstration(card) else "")

    @classmethod
    def replacement_problem(cls, candidate: Any, current: Any) -> Optional[str]:
        """Why a model with card ``candidate`` cannot replace one with card ``current`` of this task (None when
        it can): by default it must have the same outputs (label values and names)."""
        a = [(lb["value"], lb["name"]) for lb in candidate.labels]
        b = [(lb["value"], lb["name"]) for lb in current.labels]
        return None if a == b else f"the candidate's labels {a} differ from the current model's {b}"

    @classmethod
    def describe_fit(cls, signals: dict[str, float]) -> str:
        """One line explaining :meth:`fit_signals` to a user."""
        return f"verify: fit {signals.get('fit', float('nan')):.2f}"

    # --- input -----------------------------------------------------------------------------------------
    @property
    def spatial_dims(self) -> int:
        return int(self.card.spatial_dims)

    def accepts(self, image: Image) -> bool:
        """Whether ``image`` has dimensions this model can take (a one-slice volume counts as 2D)."""
        return (2 if image.is_single_slice else 3) == self.spatial_dims

    def input_image(self, image: Image) -> Image:
        """``image`` as this model takes it: one component, the model's dimensions (a one-slice volume
        becomes a 2D image for a 2D model, a 2D image a one-slice volume for a 3D model that works slice by
        slice), content checked. A lone slice is given in its view layout (:meth:`Image.as_2d`), so that a
        slice of any plane or tilt is read in its own plane; :func:`to_image_layout` puts a result back.

        Raises:
            InputError: a volume of several slices for a 2D model; a lone 2D slice for a 3D model whose
            patches span several slices (padded to a patch, the slice would give a meaningless result, and
            slowly: a 1536 px radiograph takes thousands of patches); empty, constant or NaN image.
        """
        img = image.to_grayscale() if image.is_multicomponent else image
        check_dimensions(self.card, img)
        if self.spatial_dims == 2:
            img = img.as_2d()
        else:  # a lone slice for a model that works slice by slice: in its own plane, as a viewer sees it
            img = img.as_2d().as_3d() if img.is_single_slice else img
        check_image_content(img, str(img.meta.get("path", "image")))
        return img

    # --- the task ----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def predict(self, image: Image, cancel: Optional[Any] = None) -> Prediction:
        """Run the model on ``image``; the result is in ``image``'s geometry.

        Raises:
            InputError: the image does not suit the model (dimensions, content).
            Cancelled: ``cancel`` was set.
        """

    @abc.abstractmethod
    def write(self, prediction: Prediction, path: Path) -> Path:
        """Write ``prediction`` to ``path`` (atomically) in the task's file format; returns the path."""

    @abc.abstractmethod
    def fit_signals(self, image: Image) -> Optional[dict[str, float]]:
        """Model-alone signals of how well ``image`` suits the model, computed from the model itself
        (no training data): at least ``"fit"`` in [0, 1] and ``"confidence"``; None when the image's
        dimensions do not suit the model."""

    @abc.abstractmethod
    def inversion_objective(self, output: Any, min_foreground: float = 0.15) -> tuple[Any, Any]:
        """``(loss, reported)`` for model inversion: ``loss`` (a scalar tensor) is low when the network's
        ``output`` for a synthesised batch is confident the way this task's outputs are on real inputs
        (with at least ``min_foreground`` of it foreground, where the task has a background);
        ``reported`` is a scalar tensor shown in progress bars (foreground fraction, peak probability)."""

    def score(
        self, prediction: Prediction, reference: Path, names: Optional[Sequence[str]] = None
    ) -> dict[str, float]:
        """Per-case metrics of ``prediction`` against ``reference``, a file with the true result of its image
        (runtimes with ``scores_references``), over the outputs ``names`` (default: all); metric names follow
        :func:`~ModelSelectorLib.evaluation.metrics.higher_is_better`."""
        raise NotImplementedError(f"{type(self).__name__} does not score predictions against reference files")

    def overlay(self, prediction: Prediction) -> dict[str, Any]:
        """What a picture of ``prediction`` shows: ``{"labels": label map, "colors": {value: rgb}}`` or
        ``{"points_lps": (P, 3), "point_colors": [rgb, ...]}`` (empty when there is nothing to draw)."""
        return {}


__all__ = ["Prediction", "TaskRuntime", "quality_text"]
