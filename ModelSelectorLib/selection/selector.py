"""``select(image)``: which models of the zoo apply to an image, ranked, or "no model in the zoo fits".

How a selection is made (details and the calibration procedure: ``docs/selector.md``):

1. **Embed**: the encoder turns the image into ``m`` view embeddings ``E`` (``(m, 128)``, unit rows) and
   class probabilities over modality x region (mean over views).
2. **Score** every model (:mod:`.scoring`): a domain logit from prototype similarity, agreement of the
   encoder's class with the card's modality and region, and "not a radiology image", with the model-alone
   fit signals of the best candidates (:meth:`~ModelSelectorLib.models.base.TaskRuntime.fit_signals`); the
   weights are fitted on labelled development images (:func:`~.calibration.calibrate`).
3. **Calibrated score**: ``score = sigmoid(z - t)`` with the model's own operating point ``t`` (stored in the
   index sidecar with its false-accept and false-reject rates on the development images); a model *fits*
   when ``score >= threshold`` (default 0.5, its operating point) **and** it can take the image. A model
   whose domain matches but which takes 3D volumes while the image is a lone 2D slice is named with
   ``needs_volume``: load the whole series or volume and select again. A 3D model whose training inputs
   showed a field of view several times smaller or larger than the volume's (a crop around one structure
   against a whole scan, :mod:`.field_of_view`) does not fit either; the answer says to crop the image or to
   give it a wider scan. Nor does a CT model given values that are not Hounsfield units (an MR, a CT without
   its DICOM rescale), or an MR model given a CT (:mod:`.intensity_units`). When no model fits, the
   selection says "no model in the zoo fits this image".
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..errors import IndexMismatchError, InputError
from ..io.image import Image, check_model_input, read_image
from ..io.image import as_image as to_image
from ..models.base import quality_text
from ..models.registry import runtime_class, runtime_for
from ..progress import progress_bar, start_step
from ..tables import format_table
from ..zoo.catalog import Zoo, open_zoo
from .encoder import default_encoder
from .field_of_view import FieldOfView, view_fits
from .index import ZooIndex, load_index
from .intensity_units import Units, units_fit
from .prototypes import ORIGINS, encoder_id
from .scoring import UNCALIBRATED, Evidence, calibration_key, encoder_knows, evidence, rank_models, sigmoid

PathLike = Union[str, "os.PathLike[str]"]


# --- results --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ModelMatch:
    """One model's answer for an image.

    Attributes:
        name, version, task, modality, body_region: from the model card.
        score: calibrated score in [0, 1]; 0.5 is the model's calibrated operating point.
        fits: ``score >= threshold`` of the selection and the model can take the image.
        reasons: readable evidence: nearest prototypes (similarity, origin, source), encoder class, verify.
        raw: the domain logit ``z``; similarity: prototype similarity; verify: verify signals or None.
        needs_volume: the image matches the model's domain but is a lone 2D slice and the model takes 3D
            volumes (give it the whole volume).
        slice_wise: a 3D model that works slice by slice: ``apply`` takes a lone slice, though its held-out
            figures and the fit decision were measured on whole volumes, so the selection still asks for one.
        field_of_view: the volume's field of view against the model's training inputs (None when either is
            unknown: 2D images, cards without a plan); a mismatch keeps the model from fitting.
        units: the image's values against the units the model expects (Hounsfield units for a CT model,
            anything else for an MR model; None for other models); a mismatch keeps the model from fitting.
        domain_matches: the score reaches the selection's threshold: the image is of the model's kind, whether
            or not the model can take it as it is.
        held_out: the card's headline held-out figure (``{"metric", "value", "cases", "protocol"}``) or None.
        demonstration: the model shows what the tool does rather than one to rely on (fewer than 20 training
            cases, or no held-out figure).
    """

    name: str
    version: str
    task: str
    modality: str
    body_region: str
    score: float
    fits: bool
    reasons: list[str] = dataclasses.field(default_factory=list)
    raw: float = 0.0
    similarity: float = 0.0
    verify: Optional[dict[str, float]] = None
    needs_volume: bool = False
    held_out: Optional[dict[str, Any]] = None
    demonstration: bool = False
    field_of_view: Optional[FieldOfView] = None
    domain_matches: bool = False
    units: Optional[Units] = None
    slice_wise: bool = False

    @property
    def obstacle(self) -> Optional[Union[Units, FieldOfView]]:
        """What keeps the model from taking the image as it is, besides its dimensions: the units of the
        values, else the field of view (None when both suit it or cannot be compared)."""
        return next((w for w in (self.units, self.field_of_view) if w is not None and not w.fits), None)

    @property
    def answer(self) -> str:
        """The table's FITS cell: ``yes``, ``needs the volume``, ``needs Hounsfield units``, ``needs a crop``,
        ``needs a wider view`` or ``no``."""
        if self.fits:
            return "yes"
        if self.needs_volume:
            return "needs the volume"
        if self.domain_matches and self.obstacle is not None:
            return self.obstacle.verdict
        return "no"

    @property
    def quality(self) -> str:
        """The held-out figure in a few words, e.g. ``"Dice 0.88 (208)"``, ``"demonstration"``."""
        return quality_text(self.held_out, self.demonstration)

    def to_json_dict(self, reasons: bool = False, details: bool = False) -> dict[str, Any]:
        """The match as JSON values (see :meth:`Selection.to_json_dict`); ``reasons`` adds ``"reasons"``,
        ``details`` adds ``"similarity"``, ``"raw"`` and ``"verify"`` (numbers that are not finite as null)."""
        d: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "modality": self.modality,
            "body_region": self.body_region,
            "score": round(float(self.score), 4),
            "fits": bool(self.fits),
            "needs_volume": bool(self.needs_volume),
            "slice_wise": bool(self.slice_wise),
            "answer": self.answer,
            "field_of_view": self.field_of_view.to_json_dict() if self.field_of_view is not None else None,
            "units": self.units.to_json_dict() if self.units is not None else None,
            "held_out": self.held_out,
            "demonstration": bool(self.demonstration),
        }
        if reasons:
            d["reasons"] = list(self.reasons)
        if details:
            d["similarity"] = _json_number(self.similarity)
            d["raw"] = _json_number(self.raw)
            d["verify"] = (
                None if self.verify is None else {k: _json_number(v) for k, v in self.verify.items()}
            )
        return d


def _json_number(value: float) -> Optional[float]:
    """``value`` rounded to 4 decimals, or None when it is not finite (JSON has no NaN or infinity)."""
    return round(float(value), 4) if np.isfinite(value) else None


@dataclasses.dataclass
class Selection:
    """The answer for one image: ``models`` best first: fitting models, then those whose domain matches but
    which need another input (the whole volume, a crop, a wider view), then the others.

    Attributes:
        input: the image's path (or ``"<image>"``).
        fits: True when at least one model fits.
        models: :class:`ModelMatch` list.
        needs_volume: names of the models whose domain the image matches but which take 3D volumes while
            the image is a lone 2D slice.
        image_classes: the encoder's top modality x region classes ``[(class, probability)]``.
        threshold: the score a model needs to fit.
        calibrated: False when the index held no calibration for these settings.
        warnings: notes for the user (e.g. uncalibrated threshold).
        seconds: time per stage.
        fits_once_inverted: when no model fits a grey picture, the models that fit it with its grey levels
            inverted (bright air and dark bones: a MONOCHROME1 radiograph exported without its photometric
            interpretation).
    """

    input: str
    fits: bool
    models: list[ModelMatch]
    needs_volume: list[str] = dataclasses.field(default_factory=list)
    image_classes: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    threshold: float = 0.5
    calibrated: bool = True
    warnings: list[str] = dataclasses.field(default_factory=list)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    fits_once_inverted: list[str] = dataclasses.field(default_factory=list)

    def to_json_dict(self, reasons: bool = False, details: bool = False) -> dict[str, Any]:
        """``{"input", "fits", "needs_volume", "fits_once_inverted", "models": [{"name", "version", "task",
        "modality", "body_region", "score", "fits", "needs_volume", "slice_wise", "answer", "field_of_view",
        "units", "held_out", "demonstration"}]}`` (what ``modelselector select --json`` prints), plus
        ``"reasons"`` per model when asked. With ``details`` (for a log of the selection), also ``"threshold"``,
        ``"calibrated"``, ``"warnings"``, ``"image_classes"`` (``[[class, probability]]``), ``"seconds"`` and
        per model ``"similarity"``, ``"raw"`` and ``"verify"``."""
        d: dict[str, Any] = {
            "input": self.input,
            "fits": bool(self.fits),
            "needs_volume": list(self.needs_volume),
            "fits_once_inverted": list(self.fits_once_inverted),
            "models": [m.to_json_dict(reasons, details) for m in self.models],
        }
        if details:
            d.update(threshold=float(self.threshold), calibrated=bool(self.calibrated), warnings=list(self.warnings),
                     image_classes=[[c, round(float(p), 4)] for c, p in self.image_classes],
                     seconds={k: float(v) for k, v in self.seconds.items()})  # fmt: skip
        return d

    @property
    def fitting(self) -> list[ModelMatch]:
        return [m for m in self.models if m.fits]

    def notes(self, warnings: bool = False) -> list[str]:
        """The advice of the selection, one sentence each: the models that fit the image once its grey levels
        are inverted, those that need the whole volume (and which of them work slice by slice), and those whose
        domain matches but that cannot take the image as it is (its units, its field of view); with
        ``warnings``, then :attr:`warnings` (which the command line prints on stderr)."""
        notes: list[str] = []
        if self.fits_once_inverted:
            notes.append(f"It looks inverted: {' and '.join(self.fits_once_inverted)} "
                         f"{'fits' if len(self.fits_once_inverted) == 1 else 'fit'} it with its grey levels inverted "
                         "(bright air and dark bones, as a MONOCHROME1 radiograph exported without its photometric "
                         "interpretation); invert it and select again.")  # fmt: skip
        if self.needs_volume:
            one = len(self.needs_volume) == 1
            notes.append(f"{' and '.join(self.needs_volume)} {'matches' if one else 'match'} this kind of image but "
                         f"{'takes' if one else 'take'} 3D volumes, and this is a single 2D slice: load the whole "
                         "series or volume and select again.")  # fmt: skip
            by_slice = [m.name for m in self.models if m.needs_volume and m.slice_wise]
            if by_slice:
                one = len(by_slice) == 1
                notes.append(f"{' and '.join(by_slice)} {'works' if one else 'work'} slice by slice, so applying "
                             f"{'it' if one else 'them'} to this slice alone is possible, but {'its' if one else 'their'} "
                             "held-out figures and this fit decision hold for whole volumes.")  # fmt: skip
        for m in self.models:
            what = m.obstacle
            if m.domain_matches and not m.fits and not m.needs_volume and what is not None:
                then = ", then select again" if what is m.field_of_view else ""
                notes.append(
                    f"{m.name} matches this kind of image, but {what.describe()}: {what.advice()}{then}."
                )
        if warnings:
            notes += list(self.warnings)
        return notes

    def to_text(self, reasons: str = "all") -> str:
        """The selection for a terminal: the encoder's reading, "no model fits" when none does, the
        :meth:`notes` (without the warnings), a ranked table, and each model's reasons (``reasons``: ``"all"``
        models, ``"fitting"`` models' first reason, or ``"none"``)."""
        cls = ", ".join(f"{c} {p:.2f}" for c, p in self.image_classes)
        name = str(self.input) if str(self.input).isprintable() else repr(str(self.input))  # no line breaks
        lines = [f"{name}: the encoder reads it as {cls}" if cls else name]
        if not self.fits:
            lines.append("No model in the zoo fits this image.")
        lines += self.notes()
        if self.models:
            rows = [[str(i + 1), m.name, m.version, m.task, m.modality, m.body_region, f"{m.score:.3f}",
                     m.answer, m.quality]
                    for i, m in enumerate(self.models)]  # fmt: skip
            headers = ["#", "MODEL", "VERSION", "TASK", "MODALITY", "BODY REGION", "SCORE", "FITS",
                       "HELD-OUT (CASES)"]  # fmt: skip
            lines += ["", format_table(rows, headers), ""]
        for m in self.models:
            if reasons == "all":
                lines += [f"{m.name}:"] + [f"  - {r}" for r in m.reasons]
            elif reasons == "fitting" and m.fits and m.reasons:
                lines.append(f"{m.name}: {m.reasons[0]}")
        lines.append(f"A model fits when its score is at least {self.threshold:.2f} (0.5 = the model's operating "
                     "point: its own where calibrated, else the pooled one) and it can take the image: its dimensions, the units of its values (Hounsfield "
                     "units for a CT model) and, for a 3D model, about the field of view it was trained on.")  # fmt: skip
        return "\n".join(lines)


# --- opening the zoo and the image ---------------------------------------------------------------------
def open_zoo_and_index(zoo: Any, index: Any) -> tuple[Zoo, ZooIndex]:
    """The zoo (a :class:`~ModelSelectorLib.zoo.Zoo` or folder; default: the bundled one) and its index.

    Raises:
        IndexMismatchError: the zoo holds no models.
    """
    z = zoo if isinstance(zoo, Zoo) else open_zoo(zoo)
    if not len(z):
        raise IndexMismatchError(
            f"the zoo {z.path} holds no models, so nothing can be selected; add models with "
            f"`modelselector zoo add BUNDLE --zoo {z.path}` and build the index."
        )
    idx = (
        index
        if isinstance(index, ZooIndex)
        else (ZooIndex.load(index) if index is not None else load_index(z))
    )
    return z, idx


def as_image(image: Any) -> tuple[Image, str]:
    """``(image, name)`` of what :func:`~ModelSelectorLib.io.image.as_image` takes: an
    :class:`~ModelSelectorLib.io.Image`, a SimpleITK image, a MONAI ``MetaTensor``, a nibabel image or a path."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image), str(image)
    image = to_image(image)
    return image, str(image.meta.get("path", "<image>"))


def verify_fit(bundle: Any, image: Image) -> Optional[dict[str, float]]:
    """Model-alone signals of how well ``image`` suits a loaded bundle (its runtime's
    :meth:`~ModelSelectorLib.models.base.TaskRuntime.fit_signals`); None when the dimensions do not suit."""
    return runtime_for(bundle).fit_signals(image)


# --- selecting ------------------------------------------------------------------------------------------
def _scored_rows(
    zoo: Zoo, index: ZooIndex, ev: Evidence, origins: Sequence[str], verify: bool, top_k: Optional[int],
    exclude_sources: Sequence[str], cancel: Optional[Any] = None, bar: Optional[Any] = None,
) -> tuple[list[dict[str, Any]], list[str]]:  # fmt: skip
    """Rows of :func:`~.scoring.rank_models` under the index's calibration for these settings, and warnings;
    ``bar`` (or None) counts the verifications."""
    key = calibration_key(origins, verify)
    setting = ((index.calibration or {}).get("settings") or {}).get(key)
    warnings = []
    if not setting:
        setting = dict(UNCALIBRATED)
        warnings.append(
            f"the index holds no calibration for {key}; scores are uncalibrated. Run "
            f"`modelselector index calibrate --zoo {zoo.path} --data DATA`."
        )
    return rank_models(
        zoo, index, ev, origins, verify, top_k, setting, exclude_sources, cancel=cancel, bar=bar
    ), warnings


def _embedded(enc: Any, img: Image, bar: Any, desc: str = "embedding the image") -> Evidence:
    """:func:`~.scoring.evidence` of ``img``, as one step of ``bar``."""
    start_step(bar, desc)
    ev = evidence(enc, img)
    bar.update(1)
    return ev


def _reasons(
    row: dict[str, Any], ev: Evidence, index: ZooIndex, classes: list[tuple[str, float]]
) -> list[str]:
    """Readable evidence for one scored model: nearest prototypes, similarity, encoder class, verify."""
    card = row["card"]
    nearest = ", ".join(
        f"{s:.3f} {index.items[lab]['origin']} ({Path(str(index.items[lab].get('source', ''))).name})"
        for s, lab in row["nearest"]
    )
    reasons = [
        f"nearest prototypes: {nearest}",
        f"prototype similarity {row['sim']:.3f} over {len(ev.emb)} view(s)",
        f"encoder reads the image as {classes[0][0]} (p={classes[0][1]:.2f}); p(model's {card.modality} "
        f"{card.body_region}) = {row['agree']:.2f}",
    ]
    if not encoder_knows(ev.classes, card):
        reasons.append(
            f"the encoder has no {card.modality}:{card.body_region} class (it had too few such images to learn "
            "from), so its reading counts against this model for every image and only the prototypes speak for "
            "it; apply the model by name if you know it suits the image"
        )
    reasons.append(f"domain logit {row['z']:.2f}, {row['operating_point']} {row['threshold']:.2f}")
    if not row["dims_ok"]:
        what = "the whole 3D volume" if int(card.spatial_dims) == 3 else "a 2D image"
        reasons.append(
            f"the model takes {card.spatial_dims}D inputs and the image is {ev.ndim}D: give it {what}"
        )
        if card.takes_single_slices and ev.ndim == 2:
            reasons.append(
                "the model works slice by slice, so applying it to this slice alone is possible (`modelselector "
                "apply`, or Apply in Slicer), but its held-out figures and this fit decision were measured on "
                "whole volumes"
            )
    for check in ("units", "fov"):
        if row[check] is not None:
            reasons.append(row[check].reason())
    if row["verify"] is not None:
        reasons.append(runtime_class(card.task_type).describe_fit(row["verify"]))
    if row.get("broken"):
        reasons.append(f"the model cannot be used, so it fits nothing: {row['broken']}")
    return reasons


def select(
    image: Any,
    zoo: Any = None,
    index: Any = None,
    encoder: Any = None,
    top_k: Optional[int] = 5,
    threshold: Optional[float] = None,
    origins: Sequence[str] = ORIGINS,
    verify: bool = True,
    check: bool = True,
    exclude_sources: Sequence[str] = (),
    cancel: Optional[Any] = None,
    progress: bool = False,
) -> Selection:
    """Rank the zoo's models for an image and decide whether any fits.

    Args:
        image: an :class:`~ModelSelectorLib.io.Image`, an image path (any format :func:`read_image` reads), a
            SimpleITK image, a MONAI ``MetaTensor`` or a nibabel image (:func:`~ModelSelectorLib.io.image.as_image`).
        zoo: a :class:`~ModelSelectorLib.zoo.Zoo` or folder (default: :func:`~ModelSelectorLib.resources.default_zoo_path`).
        index: a :class:`~.index.ZooIndex` or index folder (default: ``ZOO/index``).
        encoder: the encoder (default: the bundled one, loaded once per process).
        top_k: number of models to list (None: every indexed model).
        threshold: minimum calibrated score for a model to fit (default 0.5, the calibrated operating point).
        origins: prototype origins to use: ``("exemplar",)``, ``("data-free",)`` or both.
        verify: re-rank the listed models with model-alone signals (:func:`verify_fit`).
        check: raise when the index disagrees with the zoo (:meth:`~.index.ZooIndex.check_against`).
        exclude_sources: prototype sources to ignore (leave-one-out calibration).
        cancel: a ``threading.Event`` or a function returning True to stop, asked before each model's
            verification (:func:`~ModelSelectorLib.progress.check_cancel`).
        progress: show a progress bar over the steps (reading a file, embedding the image, then each model's
            verification): :func:`~ModelSelectorLib.progress.progress_bar` on stderr after a second, or
            PROGRESS lines.

    Returns:
        a :class:`Selection`.

    Raises:
        InputError: unreadable image, or a label map (:func:`~ModelSelectorLib.io.image.label_map_problem`).
        ZooError: no zoo. IndexMismatchError: empty zoo, missing, corrupt or stale index (the message names
        the command that fixes it).
        Cancelled: ``cancel`` was set.
    """
    origins = tuple(o for o in ORIGINS if o in set(origins))
    if not origins:
        raise InputError(f"origins must name at least one of {', '.join(ORIGINS)}.")
    t0 = time.monotonic()
    zoo, index = open_zoo_and_index(zoo, index)
    # a model trained or added since the index was built is not offered until it is indexed; the others are
    unindexed = index.check_against(zoo, allow_unindexed=True) if check else []
    enc = encoder if encoder is not None else default_encoder()
    if index.encoder and index.encoder != encoder_id(enc):
        raise IndexMismatchError(
            f"the index was built from prototypes of encoder {index.encoder}, not of the encoder in use "
            f"({encoder_id(enc)}); regenerate the prototypes (`modelselector prototypes --zoo {zoo.path} --all`) "
            f"and rebuild the index (`modelselector index build --zoo {zoo.path}`)."
        )
    reads = isinstance(image, (str, os.PathLike))
    # a step to read a file, one to embed, one per model verified (at most every indexed one, until ranked)
    bar = progress_bar(total=int(reads) + 1 + (len(index.model_names()) if verify else 0), unit="step",
                       leave=False, delay=1.0, mininterval=0.0, disable=not progress)  # fmt: skip
    with bar:
        if reads:
            start_step(bar, "reading the image")
        img, name = as_image(image)
        check_model_input(img, name)
        bar.update(int(reads))
        t1 = time.monotonic()
        ev = _embedded(enc, img, bar)
        t2 = time.monotonic()
        rows, warnings = _scored_rows(zoo, index, ev, origins, verify, top_k, exclude_sources, cancel, bar)
        t3 = time.monotonic()
        thr = 0.5 if threshold is None else float(threshold)
        matches, classes = _matches(rows, ev, index, thr)
        fits = any(m.fits for m in matches)
        inverted = [] if fits else _fitting_once_inverted(img, zoo, index, enc, origins, verify, exclude_sources,
                                                           thr, cancel, bar)  # fmt: skip
    calibrated = not warnings
    warnings += [
        f"the model {name} cannot be used, so it fits nothing: {why}" for name, why in ev.broken.items()
    ]
    warnings += [f"{note}; until then it is not offered" for note in unindexed]
    return Selection(
        input=name,
        fits=fits,
        models=matches,
        needs_volume=[m.name for m in matches if m.needs_volume],
        image_classes=classes,
        threshold=thr,
        calibrated=calibrated,
        warnings=warnings,
        seconds={"load": round(t1 - t0, 3), "embed": round(t2 - t1, 3), "score": round(t3 - t2, 3)},
        fits_once_inverted=inverted,
    )


def _matches(
    rows: list[dict[str, Any]], ev: Any, index: ZooIndex, thr: float
) -> tuple[list[ModelMatch], list[tuple[str, float]]]:
    """The scored ``rows`` as :class:`ModelMatch` es, fitting ones first, and the encoder's top three classes."""
    order = np.argsort(-ev.probs)[:3]
    classes = [(ev.classes[i], float(ev.probs[i])) for i in order]
    matches = []
    for r in rows:
        card = r["card"]
        score = sigmoid(r["margin"])
        task = runtime_class(card.task_type)
        matches.append(ModelMatch(card.name or r["name"], card.version, card.task_type, card.modality,
                                  card.body_region, score,
                                  score >= thr and r["dims_ok"] and units_fit(r["units"]) and view_fits(r["fov"]),
                                  _reasons(r, ev, index, classes), r["z"], r["sim"], r["verify"],
                                  score >= thr and not r["dims_ok"] and ev.ndim < int(card.spatial_dims),
                                  task.held_out(card), task.is_demonstration(card), r["fov"],
                                  score >= thr, r["units"], card.takes_single_slices))  # fmt: skip
    matches.sort(key=ranking_key)
    return matches, classes


#: scores at least this high are saturated: their differences (in the third or fourth decimal) say nothing
SATURATED_SCORE = 0.99


def ranking_key(match: ModelMatch) -> tuple[bool, bool, float, bool, float]:
    """The order of a selection's models: fitting ones first, then those whose domain matches (needing another
    input), then the others; by score, except that among saturated scores (:data:`SATURATED_SCORE`) a model to
    rely on comes before a demonstration model, then by score."""
    return (not match.fits, match.answer == "no", -min(match.score, SATURATED_SCORE), match.demonstration,
            -match.score)  # fmt: skip


def _fitting_once_inverted(img: Image, zoo: Zoo, index: ZooIndex, enc: Any, origins: Sequence[str], verify: bool,
                           exclude_sources: Sequence[str], thr: float, cancel: Optional[Any], bar: Any,
                           ) -> list[str]:  # fmt: skip
    """The models that fit ``img`` with its grey levels inverted, for a grey 2D picture (none for a volume or a
    colour picture): a radiograph stored MONOCHROME1, or exported without its photometric interpretation, shows
    bright air and dark bones, and no radiograph model fits it as it is. ``bar`` gets their steps too."""
    if img.ndim != 2 or img.is_multicomponent:
        return []
    values = np.asarray(img.array, dtype=np.float32)
    flipped = img.with_array(values.max() + values.min() - values)
    bar.total += 1
    ev = _embedded(enc, flipped, bar, "embedding the image inverted")
    rows, _ = _scored_rows(zoo, index, ev, origins, verify, None, exclude_sources, cancel, bar)
    return [m.name for m in _matches(rows, ev, index, thr)[0] if m.fits]


__all__ = ["ModelMatch", "Selection", "as_image", "open_zoo_and_index", "ranking_key", "select", "verify_fit"]
