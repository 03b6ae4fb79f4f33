"""Baseline model rankers for the selection evaluation, and the ranker interface they share.

A *ranker* orders every model of a zoo for one input image, best first, and gives each a score (higher =
more likely to apply). :mod:`ModelSelectorLib.selection_eval` runs the project's selector and these
baselines on the same images:

* :class:`RandomRanker`: a seeded random order (the chance level of every metric);
* :class:`HeaderRulesRanker`: rules on image-header fields and the value range only (no pixels are
  learned); :func:`header_facts` states exactly which field each rule reads;
* :class:`HistogramKNNRanker`: a k-nearest-neighbour classifier on intensity histograms
  (:func:`histogram_features`), fitted on labelled reference images (the zoo models' example inputs, or a
  training split of a manifest) that never include the evaluation images.

Vocabulary: ``modality`` is a DICOM Modality code (``CT``, ``MR``, ``DX``, ...; ``OT`` for non-medical
images) and ``regions`` a tuple of DICOM Body Part Examined terms (``HEAD``, ``ABDOMEN``, ...), as in
DESIGN.md. A model is relevant to an image when the modalities are equal and the regions intersect
(:func:`is_relevant`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..errors import InputError, ModelSelectorError, ZooError
from ..io.image import IMAGE_2D_SUFFIXES, Image
from ..selection.field_of_view import training_extent_mm
from ..selection.prototypes import resolve_recorded_source
from ..selection.scoring import is_relevant

PathLike = Union[str, "os.PathLike[str]"]

#: body-region codes of the shared vocabulary (DESIGN.md §4)
REGION_CODES = (
    "HEAD", "NECK", "CHEST", "HEART", "ABDOMEN", "PELVIS", "SPINE", "BREAST", "SHOULDER", "ARM", "HAND",
    "HIP", "LEG", "KNEE", "FOOT", "EYE", "WHOLEBODY",
)  # fmt: skip


# --- shared types -----------------------------------------------------------------------------------------
def split_regions(text: str) -> tuple[str, ...]:
    """``"CHEST;ABDOMEN"`` -> ``("CHEST", "ABDOMEN")`` (upper-cased, empty parts dropped)."""
    return tuple(p.strip().upper() for p in str(text or "").split(";") if p.strip())


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a ranker and the evaluation need to know about one zoo model (its current version).

    Attributes:
        name: model name in the zoo.
        version: current version.
        modality: DICOM modality code of the model's intended input.
        regions: body-region codes of the model's intended input.
        task_type: ``segmentation``, ``landmarks`` or ``classification``.
        example_inputs: absolute paths of the model's example inputs: the card's ``example_inputs`` and
            the files its exemplar prototypes were made from (may be empty).
        spatial_dims: 2 or 3, the dimensions of the model's input.
        extent_mm: field of view of the model's median training case (mm; None when the card does not say,
            :func:`~ModelSelectorLib.selection.field_of_view.training_extent_mm`).
    """

    name: str
    version: str
    modality: str
    regions: tuple[str, ...]
    task_type: str = ""
    example_inputs: tuple[str, ...] = ()
    spatial_dims: int = 3
    extent_mm: Optional[float] = None

    @property
    def label(self) -> str:
        """``"MODALITY:REGION;REGION"``, e.g. ``"CT:ABDOMEN"``."""
        return f"{self.modality}:{';'.join(self.regions)}"


def zoo_models(zoo: Any, roots: Sequence[PathLike] = ()) -> list[ModelInfo]:
    """The current version of every model of a :class:`~ModelSelectorLib.zoo.Zoo` as :class:`ModelInfo`.

    ``roots``: data folders against which the sources of exemplar prototypes are resolved.

    Raises:
        ModelSelectorError: the zoo holds no models.
    """
    out = []
    for name in zoo.names():
        card = zoo.card(name)
        bundle = Path(zoo.get(name))
        examples = [str((bundle / p).resolve()) for p in (card.example_inputs or [])]
        examples += [s for s in exemplar_sources(bundle, roots) if s not in examples]
        out.append(
            ModelInfo(
                name=card.name if card.name else name,
                version=card.version,
                modality=card.modality.strip().upper(),
                regions=split_regions(card.body_region),
                task_type=card.task_type,
                example_inputs=tuple(examples),
                spatial_dims=int(card.spatial_dims),
                extent_mm=training_extent_mm(card),
            )
        )
    if not out:
        raise ZooError(
            f"{getattr(zoo, 'path', zoo)}: the zoo has no models; add some with `modelselector zoo add`."
        )
    return out


def resolve_source(src: str, bases: Sequence[PathLike] = ()) -> Optional[str]:
    """The absolute path of an existing file named by ``src``, or None.

    ``src`` may be absolute, relative to the working folder, or relative to one of ``bases``; a path
    recorded relative to another working folder (``../shared/data/ct/a.nii.gz``) is also found under a base
    that holds its tail (``DATA/ct/a.nii.gz``): :func:`~ModelSelectorLib.selection.prototypes.resolve_recorded_source`.
    """
    found = resolve_recorded_source(src, bases)
    return None if found is None else str(found)


def exemplar_sources(bundle: Path, roots: Sequence[PathLike] = ()) -> list[str]:
    """Existing image files that a bundle's exemplar prototypes were made from.

    Reads the ``source`` of every row of origin ``exemplar`` in ``BUNDLE/prototypes/prototypes.json``;
    sources are resolved with :func:`resolve_source` against the bundle and ``roots`` (data folders);
    synthesised or missing sources are skipped.
    """
    import json

    f = Path(bundle) / "prototypes" / "prototypes.json"
    if not f.is_file():
        return []
    try:
        rows = json.loads(f.read_text(encoding="utf-8")).get("rows") or []
    except (OSError, ValueError, AttributeError):
        return []
    out: list[str] = []
    for r in rows:
        if not isinstance(r, dict) or r.get("origin") != "exemplar" or not isinstance(r.get("source"), str):
            continue
        p = resolve_source(r["source"], [bundle, *roots])
        if p is not None and p not in out:
            out.append(p)
    return out


@dataclasses.dataclass
class Ranking:
    """One ranker's answer for one image.

    Attributes:
        names: every model name, best first.
        scores: the score of each model in ``names`` (same order, non-increasing).
        confidence: in-distribution confidence of the image (higher = more likely that some model fits);
            used for the out-of-distribution AUROC.
        fits: the ranker's "some model fits" decision, or None when the ranker has no such decision.
        predicted: what the ranker believes the image is (e.g. ``"CT:HEAD"``): the encoder's class for the
            selector, the references' vote for the k-NN, the header's reading for the rules.
        fitting: the models the ranker says fit (selector only).
        needs_volume: the models the ranker says match but need the whole volume (selector only).
    """

    names: list[str]
    scores: list[float]
    confidence: float
    fits: Optional[bool] = None
    predicted: str = ""
    fitting: list[str] = dataclasses.field(default_factory=list)
    needs_volume: list[str] = dataclasses.field(default_factory=list)


def _tiebreak(seed: int, key: str, n: int) -> np.ndarray:
    """A reproducible random permutation key of ``n`` items for image ``key`` (independent of run order)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(key.encode("utf-8"))])
    return rng.random(n)


def rank_by_scores(
    models: Sequence[ModelInfo], scores: Sequence[float], seed: int, key: str
) -> tuple[list[str], list[float]]:
    """Models sorted by score (descending); ties are broken by a seeded random order per image ``key``."""
    s = np.asarray(scores, dtype=float)
    tb = _tiebreak(seed, key, len(models))
    order = sorted(range(len(models)), key=lambda i: (-s[i], tb[i]))
    return [models[i].name for i in order], [float(s[i]) for i in order]


def image_key(image: Image) -> str:
    """A stable per-image key: the file path when known, else a hash of the voxels."""
    p = image.meta.get("path")
    if p:
        return str(p)
    return f"sha:{zlib.crc32(np.ascontiguousarray(image.array).tobytes()[:1_000_000]):08x}"


# --- random ---------------------------------------------------------------------------------------------
class RandomRanker:
    """Ranks the models in a random order, seeded per image (same seed and image -> same order).

    The confidence is a uniform random number too, so its OOD AUROC is 0.5 in expectation.
    """

    name = "random"
    description = "uniform random order and confidence, seeded per image (seed, CRC-32 of the path)"

    def __init__(self, models: Sequence[ModelInfo], seed: int = 0) -> None:
        self.models = list(models)
        self.seed = int(seed)

    def rank(self, image: Image) -> Ranking:
        key = image_key(image)
        r = _tiebreak(self.seed, key, len(self.models) + 1)
        names, scores = rank_by_scores(self.models, r[:-1], self.seed, key)
        return Ranking(names, scores, confidence=float(r[-1]), fits=None, predicted="")


# --- header rules ---------------------------------------------------------------------------------------
_DICOM_MODALITY = {"CR": "DX", "DX": "DX", "RG": "DX", "DR": "DX", "RF": "XA", "MRI": "MR"}
_REGION_WORDS = [
    (r"\b(brain|head|skull|cran|cerebr|neuro|mni|talairach)", "HEAD"),
    (r"\b(neck|cervical soft)", "NECK"),
    (r"\b(heart|cardiac|cardio|coronar)", "HEART"),
    (r"\b(chest|thorax|thoracic|lung|pulmo)", "CHEST"),
    (r"\b(abdomen|abdominal|abd|liver|kidney|renal|pancrea|spleen)", "ABDOMEN"),
    (r"\b(pelvis|pelvic|prostate|bladder)", "PELVIS"),
    (r"\b(spine|spinal|lumbar|lspine|cspine|tspine|vertebra)", "SPINE"),
    (r"\b(breast|mammo)", "BREAST"),
    (r"\b(shoulder)", "SHOULDER"),
    (r"\b(knee)", "KNEE"),
    (r"\b(hand|wrist|finger)", "HAND"),
    (r"\b(foot|ankle)", "FOOT"),
    (r"\b(hip)", "HIP"),
    (r"\b(leg|femur|tibia|fibula)", "LEG"),
    (r"\b(arm|elbow|humerus|forearm|radius|ulna)", "ARM"),
    (r"\b(whole ?body|wholebody|wb)\b", "WHOLEBODY"),
]
_MODALITY_WORDS = [
    (r"\b(ct|hounsfield|hu)\b", "CT"),
    (r"\b(mr|mri|t1w?|t2w?|flair|dwi|adc|bold|fmri|epi|mprage|bssfp|cine)\b", "MR"),
    (r"\b(pet|suv|fdg)\b", "PT"),
    (r"\b(ultrasound|us)\b", "US"),
    (r"\b(x-?ray|radiograph|cxr|cr|dx)\b", "DX"),
    (r"\b(mammo\w*|mg)\b", "MG"),
]
#: largest physical extent (mm) of a 3D volume that the field-of-view rule calls HEAD
HEAD_FOV_MM = 260.0
#: 1st-percentile value below which the value-range rule calls a volume CT (air in Hounsfield units)
CT_P1_THRESHOLD = -200.0


def _words(text: str, table: list[tuple[str, str]]) -> list[str]:
    t = str(text or "").lower()
    return [code for pat, code in table if re.search(pat, t)]


def _region_term(text: str) -> list[str]:
    """DICOM Body Part Examined (or free text) -> region codes."""
    t = str(text or "").strip().upper()
    if t in REGION_CODES:
        return [t]
    if t in ("BRAIN", "SKULL"):
        return ["HEAD"]
    if t in ("THORAX", "LUNG"):
        return ["CHEST"]
    return _words(t, _REGION_WORDS)


def _nifti_header(path: str) -> dict[str, str]:
    """NIfTI header fields as SimpleITK exposes them (``descrip``, ``intent_name``, ``qform_code``, ...)."""
    import SimpleITK as sitk

    r = sitk.ImageFileReader()
    r.SetFileName(path)
    try:
        r.ReadImageInformation()
    except RuntimeError:
        return {}
    return {k: r.GetMetaData(k).strip() for k in r.GetMetaDataKeys()}


@dataclasses.dataclass
class HeaderFacts:
    """What the header rules conclude about an image, and which rules fired (in words)."""

    modality: str = ""
    regions: tuple[str, ...] = ()
    rules: list[str] = dataclasses.field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.modality or '?'}:{';'.join(self.regions) or '?'}"


def header_facts(image: Image) -> HeaderFacts:
    """Modality and body region of an image from its header and value range only.

    Rules, first match wins for each of modality and region:

    Modality:
      1. DICOM Modality (0008,0060), when the image came from DICOM or a file carrying DICOM tags
         (``Image.meta["modality"]``); CR/DX/RG/DR -> DX, RF -> XA, others as written.
      2. NIfTI ``descrip``, ``intent_name`` and ``aux_file`` text: keywords (CT/HU -> CT; MR, T1, T2,
         FLAIR, DWI, ADC, BOLD, EPI, cine -> MR; PET/FDG/SUV -> PT; ...).
      3. NIfTI ``sform_code``/``qform_code`` 3 (Talairach) or 4 (MNI-152): a brain template space -> MR.
      4. 2D PNG/JPEG/BMP/TIFF file: colour pixels whose channels differ (mean |R-G| + |G-B| > 2 grey
         levels) -> OT (a photograph, not a radiology image); otherwise DX (projection radiograph).
      5. Value range of other images: 1st percentile below -200 (air in Hounsfield units) -> CT,
         otherwise MR (non-negative scanner units).

    Region:
      1. DICOM Body Part Examined (0018,0015), then DICOM Series/Study Description keywords.
      2. NIfTI ``descrip``/``intent_name``/``aux_file`` keywords (brain, chest, abdomen, heart, ...).
      3. NIfTI ``sform_code``/``qform_code`` 3 or 4 (Talairach/MNI template space) -> HEAD.
      4. 3D volumes: largest physical extent (voxels x spacing) at most 260 mm -> HEAD (a head fits in
         that field of view, a trunk does not); otherwise unknown.
      5. 2D images: unknown.
    """
    facts = HeaderFacts()
    meta = image.meta or {}
    path = str(meta.get("path", ""))
    fmt = str(meta.get("format", "")).lower()
    lower = path.lower()
    is_nifti = fmt in ("nii", "nii.gz") or lower.endswith((".nii", ".nii.gz"))
    is_2d_file = lower.endswith(IMAGE_2D_SUFFIXES) or fmt in tuple(s.lstrip(".") for s in IMAGE_2D_SUFFIXES)
    hdr = _nifti_header(path) if is_nifti and path and Path(path).is_file() else {}
    text = " ".join(
        hdr.get(k, "") for k in ("descrip", "intent_name", "aux_file") if hdr.get(k, "").lower() != "none"
    )
    xform = {hdr.get("sform_code", ""), hdr.get("qform_code", "")}
    template = bool(xform & {"3", "4"})

    # modality
    dicom_mod = str(meta.get("modality", "")).strip().upper()
    if dicom_mod:
        facts.modality = _DICOM_MODALITY.get(dicom_mod, dicom_mod)
        facts.rules.append(f"DICOM Modality={dicom_mod}")
    elif text and _words(text, _MODALITY_WORDS):
        facts.modality = _words(text, _MODALITY_WORDS)[0]
        facts.rules.append(f"NIfTI text {text.strip()!r}")
    elif template:
        facts.modality = "MR"
        facts.rules.append("NIfTI xform code Talairach/MNI -> MR")
    elif is_2d_file:
        if _has_colour(image):
            facts.modality = "OT"
            facts.rules.append("colour 2D picture -> OT")
        else:
            facts.modality = "DX"
            facts.rules.append("grey 2D picture file -> DX")
    else:
        arr = np.asarray(image.to_grayscale().array if image.is_multicomponent else image.array)
        sub = arr.ravel()[:: max(1, arr.size // 200_000)]
        p1 = float(np.percentile(sub, 1.0)) if sub.size else 0.0
        facts.modality = "CT" if p1 < CT_P1_THRESHOLD else "MR"
        facts.rules.append(f"value range p1={p1:.0f} -> {facts.modality}")

    # region
    regions: list[str] = []
    if meta.get("body_part"):
        regions = _region_term(str(meta["body_part"]))
        if regions:
            facts.rules.append(f"DICOM BodyPartExamined={meta['body_part']}")
    if not regions:
        desc = " ".join(str(meta.get(k, "")) for k in ("series_description", "study_description"))
        regions = _words(desc, _REGION_WORDS) if desc.strip() else []
        if regions:
            facts.rules.append("DICOM description keywords")
    if not regions and text:
        regions = _words(text, _REGION_WORDS)
        if regions:
            facts.rules.append("NIfTI text keywords")
    if not regions and template:
        regions = ["HEAD"]
        facts.rules.append("NIfTI xform code Talairach/MNI -> HEAD")
    if not regions and image.ndim == 3 and image.array.shape[0] > 1 and facts.modality != "OT":
        extent = max(float(n) * float(s) for n, s in zip(image.size, image.spacing))
        if extent <= HEAD_FOV_MM:
            regions = ["HEAD"]
            facts.rules.append(f"field of view {extent:.0f} mm <= {HEAD_FOV_MM:.0f} -> HEAD")
    facts.regions = tuple(dict.fromkeys(regions))
    return facts


def _has_colour(image: Image) -> bool:
    if not image.is_multicomponent or image.array.shape[-1] < 3:
        return False
    a = image.array[..., :3].astype(np.float32)
    sub = a.reshape(-1, 3)[:: max(1, a.size // 3 // 100_000)]
    return float(np.mean(np.abs(sub[:, 0] - sub[:, 1]) + np.abs(sub[:, 1] - sub[:, 2]))) > 2.0


class HeaderRulesRanker:
    """Ranks models by agreement with :func:`header_facts`: score 2 for the modality, +1 for the region.

    Ties (e.g. every model of the right modality when the region is unknown) are broken in a seeded random
    order per image. Confidence = the best score (0-3); the "fits" decision is True when some model matches
    both the header's modality and one of its regions.
    """

    name = "header-rules"
    description = (
        "DICOM Modality/BodyPartExamined/descriptions; NIfTI descrip/intent_name/aux_file and sform/qform "
        "codes; PNG/JPEG -> DX (colour -> OT); 1st-percentile < -200 -> CT else MR; 3D field of view "
        "<= 260 mm -> HEAD (see baselines.header_facts)"
    )

    def __init__(self, models: Sequence[ModelInfo], seed: int = 0) -> None:
        self.models = list(models)
        self.seed = int(seed)

    def rank(self, image: Image) -> Ranking:
        f = header_facts(image)
        scores = []
        fits = False
        for m in self.models:
            s = 0.0
            if f.modality and m.modality == f.modality and f.modality != "OT":
                s += 2.0
                if set(m.regions) & set(f.regions):
                    s += 1.0
                    fits = True
            scores.append(s)
        names, sc = rank_by_scores(self.models, scores, self.seed, image_key(image))
        return Ranking(names, sc, confidence=sc[0] if sc else 0.0, fits=fits, predicted=f.label)


# --- intensity-histogram k-NN -----------------------------------------------------------------------------
#: bins of each of the two histograms in :func:`histogram_features`
HIST_BINS = 32
#: range (Hounsfield-like units) of the absolute-value histogram
ABS_RANGE = (-1024.0, 3072.0)


def histogram_features(image: Image, bins: int = HIST_BINS, max_voxels: int = 1_000_000) -> np.ndarray:
    """Intensity-histogram features of an image: two normalised histograms, concatenated.

    1. ``bins`` bins of the raw values clipped to ``[-1024, 3072]`` (absolute scale: separates CT in
       Hounsfield units from 8-bit pictures and MR scanner units);
    2. ``bins`` bins of the values mapped by the image's own 1st-99th percentiles to ``[0, 1]`` (clipped):
       the shape of the intensity distribution whatever its scale.

    Colour images are mixed to grey first; at most ``max_voxels`` voxels (a regular subsample) are used.

    Returns:
        float32 vector ``(2 * bins,)``; each half sums to 1.

    Raises:
        InputError: the image has no finite voxels.
    """
    img = image.to_grayscale() if image.is_multicomponent else image
    a = np.asarray(img.array).ravel()
    a = a[:: max(1, a.size // max_voxels)].astype(np.float32)
    a = a[np.isfinite(a)]
    if a.size == 0:
        raise InputError("image has no finite voxels; cannot compute its intensity histogram.")
    h1, _ = np.histogram(np.clip(a, *ABS_RANGE), bins=bins, range=ABS_RANGE)
    lo, hi = np.percentile(a, (1.0, 99.0))
    if hi - lo < 1e-6:
        lo, hi = float(a.min()), float(a.max()) + 1e-6
    h2, _ = np.histogram(np.clip((a - lo) / (hi - lo), 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    return np.concatenate([h1 / max(h1.sum(), 1), h2 / max(h2.sum(), 1)]).astype(np.float32)


@dataclasses.dataclass
class Reference:
    """A labelled reference image of the k-NN baseline: features, modality, regions and where it came from."""

    features: np.ndarray
    modality: str
    regions: tuple[str, ...]
    source: str = ""

    @property
    def cls(self) -> str:
        """``"MODALITY:FIRST_REGION"`` (``"OT:OOD"`` for photographs), as the encoder's classes."""
        return f"{self.modality}:{self.regions[0]}" if self.modality != "OT" and self.regions else "OT:OOD"


class HistogramKNNRanker:
    """k-nearest-neighbour classifier on :func:`histogram_features` (L1 distance).

    For an image, the ``k`` nearest references vote; a model's score is the fraction of the votes that
    fall on references it is relevant to (:func:`is_relevant`), plus ``0.01 * exp(-d)`` with ``d`` the
    distance to its nearest relevant reference, which orders the models the vote leaves tied. The
    confidence for the OOD AUROC is ``-d_nn``, the distance to the nearest reference of any model-relevant
    kind (references labelled ``OT`` or with no relevant model only vote). There is no fit/no-fit decision.

    Args:
        models: the zoo's models.
        references: labelled reference images (:meth:`fit` adds more).
        k: number of neighbours.
        seed: seed of the tie-breaking order.
        fit_description: how the references were chosen (goes into the report).
        name: the ranker's name in reports.
    """

    def __init__(
        self,
        models: Sequence[ModelInfo],
        references: Sequence[Reference] = (),
        k: int = 5,
        seed: int = 0,
        fit_description: str = "",
        name: str = "histogram-knn",
    ) -> None:
        self.name = name
        self.models = list(models)
        self.k = int(k)
        self.seed = int(seed)
        self.references: list[Reference] = []
        self.fit_description = fit_description
        self._x: Optional[np.ndarray] = None
        self._rel: Optional[np.ndarray] = None
        self.fit(references)

    @property
    def description(self) -> str:
        d = f"k={self.k} nearest intensity histograms (L1), {len(self.references)} references"
        return d + (f"; {self.fit_description}" if self.fit_description else "")

    def fit(self, references: Iterable[Reference]) -> HistogramKNNRanker:
        """Add labelled references; returns ``self``."""
        self.references.extend(references)
        if self.references:
            self._x = np.stack([r.features for r in self.references]).astype(np.float32)
            # relevance matrix (n_refs, n_models)
            self._rel = np.array(
                [
                    [is_relevant(m.modality, m.regions, r.modality, r.regions) for m in self.models]
                    for r in self.references
                ],
                dtype=bool,
            ).reshape(len(self.references), len(self.models))
        return self

    def rank(self, image: Image) -> Ranking:
        if self._x is None or self._rel is None:
            raise ModelSelectorError(
                "the histogram k-NN baseline has no reference images; give the zoo's models example inputs "
                "or fit it on a training split of a manifest."
            )
        f = histogram_features(image)
        d = np.abs(self._x - f[None]).sum(axis=1)  # L1, (n_refs,)
        nn = np.argsort(d, kind="stable")[: self.k]
        votes = self._rel[nn].sum(axis=0) / max(len(nn), 1)  # (n_models,)
        big = float(d.max()) + 1.0
        d_model = np.where(self._rel, d[:, None], big).min(axis=0)  # nearest relevant reference per model
        scores = votes + 0.01 * np.exp(-d_model)
        names, sc = rank_by_scores(self.models, scores, self.seed, image_key(image))
        any_rel = self._rel.any(axis=1)
        conf = -float(d[any_rel].min()) if any_rel.any() else -big
        labels = [self.references[int(i)].cls for i in nn]
        votes_by_label = Counter(labels)
        top = max(votes_by_label.values())
        predicted = next(lab for lab in labels if votes_by_label[lab] == top)  # ties: the nearest
        return Ranking(names, sc, confidence=conf, fits=None, predicted=predicted)


def references_from_examples(models: Sequence[ModelInfo], reader: Any = None) -> list[Reference]:
    """References from the example inputs that the zoo's bundles ship, labelled with their model's card.

    Args:
        models: the zoo's models (:func:`zoo_models`).
        reader: image reader (default :func:`ModelSelectorLib.io.read_image`).

    Unreadable example files are skipped.
    """
    from ..io.image import read_image

    read = reader or (lambda p: read_image(p, check_content=False))
    refs = []
    for m in models:
        for p in m.example_inputs:
            try:
                img = read(p)
            except (InputError, OSError):
                continue
            refs.append(Reference(histogram_features(img), m.modality, m.regions, source=str(p)))
    return refs


__all__ = [
    "HeaderFacts",
    "HeaderRulesRanker",
    "HistogramKNNRanker",
    "ModelInfo",
    "RandomRanker",
    "Ranking",
    "Reference",
    "exemplar_sources",
    "resolve_source",
    "header_facts",
    "histogram_features",
    "is_relevant",
    "rank_by_scores",
    "references_from_examples",
    "split_regions",
    "zoo_models",
]
