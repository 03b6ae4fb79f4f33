"""Selection evaluation: how well do the selector and baseline rankers find the models that apply?

For every evaluation image with a known modality and body region (rows of one or more CSV manifests),
each ranker orders the zoo's models. A model is *relevant* to an image when its card's modality equals
the image's modality code and their body regions intersect (:func:`~ModelSelectorLib.baselines.is_relevant`).
Images with no relevant model (including non-medical photos, modality ``OT``) form the
out-of-distribution (OOD) set.

Metrics (:func:`summarize`), over the in-distribution images unless stated:

* top-1 accuracy: the top-ranked model is relevant;
* precision@k = relevant models among the first k / k, recall@k = relevant among the first k / all
  relevant (k = 1, 3, 5);
* mAP: mean over images of the average precision of the full ranking;
* OOD AUROC, over all images: the ranker's confidence (best model's score) as the score of "some model
  fits", the label being "the image has a relevant model";
* fit accuracy, over all images, for rankers that decide "fits / nothing fits".

Evaluation images must be unseen by the encoder: :func:`encoder_split` recomputes the bundled encoder's
train/validation split (by source image or subject) from its card, and :func:`select_cases` keeps the
held-out part. Images that a zoo model was trained on or uses as exemplars are left out as well
(:func:`zoo_training_paths`).

Typical use::

    from ModelSelectorLib.selection_eval import run_selection_evaluation
    run_selection_evaluation("Resources/zoo", ["../shared/data/manifest.csv"], "eval_out")
"""

from __future__ import annotations

import csv
import dataclasses
import io as _io
import json
import math
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .atomic import atomic_path, save_figure, write_json, write_text
from .baselines import (
    REGION_CODES,
    HeaderRulesRanker,
    HistogramKNNRanker,
    ModelInfo,
    RandomRanker,
    Ranking,
    Reference,
    histogram_features,
    is_relevant,
    references_from_examples,
    resolve_source,
    split_regions,
    zoo_models,
)
from .datasets import normalize_modality
from .encoder import portable_data_root
from .errors import DatasetError, IndexMismatchError, InputError, ModelSelectorError
from .io import Image, read_image
from .progress import check_cancel, progress_bar

PathLike = Union[str, "os.PathLike[str]"]

#: the cut-offs k of precision@k and recall@k
KS = (1, 3, 5)
#: origins filters of the three selector variants, by ranker name
SELECTOR_VARIANTS = {
    "ours-exemplar": ("exemplar",),
    "ours-data-free": ("data-free",),
    "ours-both": ("exemplar", "data-free"),
}
SPLITS = ("heldout", "unseen", "all")
SPLIT_TEXT = {
    "heldout": "only images of the encoder's held-out validation groups (whole 2D source images and whole 3D "
    "subjects that the encoder never saw in training), recomputed from its card.",
    "unseen": "every image the encoder did not train on: its held-out validation groups plus images it never "
    "used (classes it left out, volumes beyond its per-class cap, catalogues it did not read).",
    "all": "every image, including the encoder's training images (optimistic; for debugging only).",
}
#: every ranker :func:`run_selection_evaluation` knows, in report order
RANKERS = (*SELECTOR_VARIANTS, "random", "header-rules", "histogram-knn-exemplars", "histogram-knn-train")
OOD_LABEL = "OT:OOD"


# --- evaluation cases -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EvalCase:
    """One evaluation image.

    Attributes:
        path: absolute path of the image file.
        modality: DICOM modality code (``OT`` for non-medical images).
        regions: body-region codes (empty for ``OT``).
        source: the manifest it came from.
    """

    path: Path
    modality: str
    regions: tuple[str, ...]
    source: str = ""

    @property
    def label(self) -> str:
        """``"MODALITY:REGION;..."`` (``"OT:OOD"`` for non-medical images)."""
        if self.modality == "OT":
            return OOD_LABEL
        return f"{self.modality}:{';'.join(self.regions)}"

    def relevant(self, models: Sequence[ModelInfo]) -> list[str]:
        """Names of the models relevant to this image."""
        return [m.name for m in models if is_relevant(m.modality, m.regions, self.modality, self.regions)]


def load_cases(
    csv_paths: Sequence[PathLike], root: Optional[PathLike] = None
) -> tuple[list[EvalCase], Counter]:
    """Evaluation cases of CSV manifests, and a count of the rows left out by reason.

    Two layouts are read: manifests with ``modality_code``/``region_code`` columns (``manifest.csv``), and
    catalogues whose ``modality``/``body_region`` columns already hold codes (``radiology_2d/labels.csv``).
    Rows are left out when they are label maps (``SEG``/``LABEL...``), when the modality or the region is
    unknown (non-``OT`` rows need at least one region code of the vocabulary), or when the file is missing.
    Paths are relative to the CSV's folder unless ``root`` is given.

    Raises:
        DatasetError: a CSV is missing or lacks the ``path`` column.
    """
    cases: list[EvalCase] = []
    skipped: Counter = Counter()
    seen: set = set()
    for csv_path in csv_paths:
        p = Path(csv_path)
        if not p.is_file():
            raise DatasetError(
                f"{p}: no such manifest file; pass a CSV with path, modality and region columns."
            )
        base = Path(root) if root is not None else p.parent
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            if "path" not in fields:
                raise DatasetError(f"{p}: the manifest lacks the column 'path'.")
            has_codes = "modality_code" in fields
            if not has_codes and not {"modality", "body_region"} <= set(fields):
                raise DatasetError(
                    f"{p}: needs modality_code/region_code columns, or modality/body_region columns holding codes."
                )
            for rec in reader:
                rel = (rec.get("path") or "").strip()
                if not rel:
                    continue
                if has_codes:
                    mod = (rec.get("modality_code") or "").strip().upper()
                    reg = rec.get("region_code") or ""
                else:
                    mod = normalize_modality(rec.get("modality") or "")
                    reg = rec.get("body_region") or ""
                if not mod or mod in ("SEG", "LABEL") or mod.startswith("LABEL"):
                    skipped["label map"] += 1
                    continue
                regions = tuple(r for r in split_regions(reg) if r in REGION_CODES)
                if mod == "OT":
                    regions = ()
                elif not regions:
                    skipped["unknown body region"] += 1
                    continue
                path = (base / rel).resolve()
                if not path.exists():
                    skipped["missing file"] += 1
                    continue
                if path in seen:
                    skipped["duplicate"] += 1
                    continue
                seen.add(path)
                cases.append(EvalCase(path, mod, regions, source=p.name))
    return cases, skipped


@dataclasses.dataclass
class EncoderSplit:
    """The bundled encoder's split of its training data.

    Attributes:
        train: absolute paths of the images the encoder trained on.
        val: absolute paths of its held-out validation images (whole source images / subjects).
        description: how the split was recomputed (for the report).
    """

    train: set
    val: set
    description: str


def encoder_split(
    card: Optional[dict[str, Any]] = None, data_root: Optional[PathLike] = None
) -> EncoderSplit:
    """Recompute the encoder's train/validation split from its card (``Resources/encoder/card.json``).

    The encoder trains on :func:`~ModelSelectorLib.encoder.collect_samples` of its data folder, with
    classes of too few source groups left out, and splits the groups (a 2D file, or a 3D subject) per
    class with :func:`~ModelSelectorLib.encoder.split_groups`; the card records the seed, the held-out
    fraction, the volume cap and the excluded classes, so the split is recomputed exactly. The number of
    validation groups is checked against the card.

    Args:
        card: the encoder card (default: the bundled one).
        data_root: the encoder's data folder (default: the card's ``data_root``).

    Returns:
        the split; empty sets when the data folder is not present (nothing can have been trained on).
    """
    from .encoder import card_data_root, collect_samples, load_card, split_groups

    card = card if card is not None else load_card()
    root = Path(data_root) if data_root is not None else card_data_root(card)
    seed = int(card.get("seed", 0))
    m = re.search(r"(\d+)%", str(card.get("split", "")))
    val_fraction = int(m.group(1)) / 100.0 if m else 0.2
    m = re.search(r"<=\s*(\d+)\s*volumes per class", str(card.get("data", "")))
    max_vol = int(m.group(1)) if m else 24
    if not root.is_dir():
        return EncoderSplit(set(), set(), f"encoder data folder {root} not present: no image is excluded")
    items = collect_samples(root, max_volumes_per_class=max_vol, seed=seed)
    excluded = set((card.get("excluded_classes_groups") or {}).keys())
    items = [it for it in items if it["cls"] not in excluded]
    train_g, val_g = split_groups(items, val_fraction, seed)
    train = {str(Path(it["path"]).resolve()) for it in items if it["group"] in train_g}
    val = {str(Path(it["path"]).resolve()) for it in items if it["group"] in val_g}
    m = re.search(r"(\d+) train groups, (\d+) validation groups", str(card.get("split", "")))
    check = ""
    if m and (int(m.group(1)), int(m.group(2))) != (len(train_g), len(val_g)):
        check = (
            f" WARNING: recomputed {len(train_g)}/{len(val_g)} train/validation groups, the card says "
            f"{m.group(1)}/{m.group(2)}; the data folder changed since the encoder was trained."
        )
    elif m:
        check = f" (matches the card: {m.group(1)} train / {m.group(2)} validation groups)"
    desc = (
        f"encoder {card.get('name', '')} {card.get('version', '')}: split by source image (2D) / subject (3D), "
        f"{val_fraction:.0%} of each class's groups held out, seed {seed}, <= {max_vol} volumes per class, "
        f"excluded classes {sorted(excluded) or 'none'}; {len(train)} training images, {len(val)} held-out "
        f"images{check}"
    )
    return EncoderSplit(train, val, desc)


def zoo_training_paths(zoo: Any, roots: Iterable[PathLike]) -> set:
    """Absolute paths of images that the zoo's models were trained on or ship as exemplars.

    Reads each current bundle's card ``example_inputs`` and, when present, the ``training_cases``,
    ``validation_cases`` and ``check_cases`` of the ``starter_zoo`` block of ``configs/metadata.json``
    (relative paths are tried against each of ``roots``), and the ``source`` fields of prototype records
    that name files.
    """
    from .bundle import read_metadata

    roots = [Path(r) for r in roots]
    out: set = set()

    def add(rel: str, bundle: Path) -> None:
        p = resolve_source(rel, [bundle, *roots])
        if p is not None:
            out.add(p)

    for name in zoo.names():
        bundle = Path(zoo.get(name))
        try:
            meta = read_metadata(bundle)
        except ModelSelectorError:
            continue
        card = meta.get("modelselector") or {}
        for rel in card.get("example_inputs") or []:
            add(str(rel), bundle)
        block = meta.get("starter_zoo") or {}
        for key in ("training_cases", "validation_cases", "check_cases"):
            for c in block.get(key) or []:
                if isinstance(c, dict) and c.get("image"):
                    add(str(c["image"]), bundle)
        for rec in _prototype_records(bundle):
            src = rec.get("source") or rec.get("path")
            if isinstance(src, str) and src:
                add(src, bundle)
    return out


def _prototype_records(bundle: Path) -> list[dict[str, Any]]:
    """Prototype metadata records stored in a bundle (any ``*.json`` under ``prototypes/``), if any."""
    recs: list[dict[str, Any]] = []
    folder = bundle / "prototypes"
    if not folder.is_dir():
        return recs
    for p in sorted(folder.glob("*.json")):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        items = data.get("rows", data.get("prototypes", [])) if isinstance(data, dict) else data
        if isinstance(items, list):
            recs.extend(r for r in items if isinstance(r, dict))
    return recs


def select_cases(
    cases: Sequence[EvalCase],
    split: str = "heldout",
    encoder: Optional[EncoderSplit] = None,
    exclude: Iterable[str] = (),
    limit: Optional[int] = None,
    seed: int = 0,
) -> tuple[list[EvalCase], Counter]:
    """The evaluation images among ``cases``, and the count of those left out by reason.

    Args:
        split: ``heldout`` keeps only the encoder's held-out validation images (default); ``unseen`` keeps
            every image the encoder did not train on (held-out ones plus images it never saw); ``all``
            keeps everything (optimistic: for debugging only).
        encoder: the encoder's split (:func:`encoder_split`); required unless ``split == "all"``.
        exclude: absolute paths to leave out (the zoo's training images and exemplars).
        limit: keep at most this many images, taken class by class in a seeded random order so that a
            small run still covers every class.
        seed: seed of that order.

    Raises:
        ModelSelectorError: unknown ``split``, or no image is left.
    """
    if split not in SPLITS:
        raise ModelSelectorError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    if split != "all" and encoder is None:
        raise ModelSelectorError(f"split {split!r} needs the encoder's split (encoder_split()).")
    exclude = set(exclude)
    kept: list[EvalCase] = []
    dropped: Counter = Counter()
    for c in cases:
        p = str(c.path)
        if p in exclude:
            dropped["a zoo model's training image or exemplar"] += 1
        elif split == "heldout" and p not in encoder.val:  # type: ignore[union-attr]
            dropped["not in the encoder's held-out groups"] += 1
        elif split == "unseen" and p in encoder.train:  # type: ignore[union-attr]
            dropped["in the encoder's training groups"] += 1
        else:
            kept.append(c)
    if limit is not None and len(kept) > limit:
        rng = np.random.default_rng(seed)
        by_cls: dict[str, list[EvalCase]] = {}
        for i in rng.permutation(len(kept)):
            by_cls.setdefault(kept[i].label, []).append(kept[i])
        picked: list[EvalCase] = []
        queues = [by_cls[k] for k in sorted(by_cls)]
        while len(picked) < limit:
            for q in queues:
                if q and len(picked) < limit:
                    picked.append(q.pop(0))
        dropped["over --limit"] += len(kept) - len(picked)
        kept = sorted(picked, key=lambda c: str(c.path))
    if not kept:
        raise ModelSelectorError(
            "no evaluation image is left after the split and exclusions; check the manifests, or use "
            "--split unseen / all."
        )
    return kept, dropped


# --- metrics --------------------------------------------------------------------------------------------
def precision_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """Relevant models among the first ``k`` of ``ranked``, divided by ``k``."""
    rel = set(relevant)
    return sum(1 for n in ranked[:k] if n in rel) / float(k)


def recall_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """Relevant models among the first ``k`` of ``ranked``, divided by the number of relevant models
    (NaN when there is none)."""
    rel = set(relevant)
    if not rel:
        return float("nan")
    return sum(1 for n in ranked[:k] if n in rel) / float(len(rel))


def average_precision(ranked: Sequence[str], relevant: Iterable[str]) -> float:
    """Average precision of a ranking: the mean, over the relevant models, of the precision at the rank of
    each (a relevant model missing from ``ranked`` contributes 0). NaN when nothing is relevant."""
    rel = set(relevant)
    if not rel:
        return float("nan")
    hits, total = 0, 0.0
    for i, n in enumerate(ranked, start=1):
        if n in rel:
            hits += 1
            total += hits / float(i)
    return total / float(len(rel))


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (ties count one half).

    Computed as the Mann-Whitney statistic with average ranks; NaN when one class is empty.
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=float)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks of ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclasses.dataclass
class ImageResult:
    """One ranker's result on one image."""

    case: EvalCase
    ranker: str
    relevant: list[str]
    ranking: Optional[Ranking]
    seconds: float = 0.0
    error: str = ""

    @property
    def top1(self) -> str:
        return self.ranking.names[0] if self.ranking and self.ranking.names else ""


def summarize(results: Sequence[ImageResult]) -> dict[str, Any]:
    """Metrics of one ranker over its image results (see the module docstring).

    Returns:
        dict with ``n_images``, ``n_in_distribution``, ``n_ood``, ``n_errors``, ``top1``, ``P@k``/``R@k``
        for k in :data:`KS`, ``mAP``, ``ood_auroc``, ``fit_accuracy`` and ``fit_balanced_accuracy`` (NaN
        when the ranker makes no fit decision) and ``seconds_per_image``.
    """
    ok = [r for r in results if r.ranking is not None]
    ind = [r for r in ok if r.relevant]
    out: dict[str, Any] = {
        "n_images": len(results),
        "n_in_distribution": len(ind),
        "n_ood": len([r for r in ok if not r.relevant]),
        "n_errors": len(results) - len(ok),
    }

    def mean(xs: list[float]) -> float:
        return float(np.mean(xs)) if xs else float("nan")

    out["top1"] = mean([1.0 if r.top1 in r.relevant else 0.0 for r in ind])
    for k in KS:
        out[f"P@{k}"] = mean([precision_at_k(r.ranking.names, r.relevant, k) for r in ind])  # type: ignore[union-attr]
        out[f"R@{k}"] = mean([recall_at_k(r.ranking.names, r.relevant, k) for r in ind])  # type: ignore[union-attr]
    out["mAP"] = mean([average_precision(r.ranking.names, r.relevant) for r in ind])  # type: ignore[union-attr]
    out["ood_auroc"] = auroc([r.ranking.confidence for r in ok], [bool(r.relevant) for r in ok])  # type: ignore[union-attr]
    decided = [r for r in ok if r.ranking.fits is not None]  # type: ignore[union-attr]
    if decided and len(decided) == len(ok):
        correct = [bool(r.ranking.fits) == bool(r.relevant) for r in decided]  # type: ignore[union-attr]
        pos = [c for c, r in zip(correct, decided) if r.relevant]
        neg = [c for c, r in zip(correct, decided) if not r.relevant]
        out["fit_accuracy"] = mean([float(c) for c in correct])
        out["fit_balanced_accuracy"] = mean(
            [x for x in (mean([float(c) for c in pos]), mean([float(c) for c in neg])) if not math.isnan(x)]
        )
    else:
        out["fit_accuracy"] = float("nan")
        out["fit_balanced_accuracy"] = float("nan")
    out["seconds_per_image"] = mean([r.seconds for r in ok])
    return out


# --- rankers --------------------------------------------------------------------------------------------
class SelectorRanker:
    """The project's selector (:func:`ModelSelectorLib.selector.select`) restricted to prototype origins.

    The ranking is the selector's full model list (``top_k`` = every model; a model the selector leaves
    out is appended after the listed ones, in zoo order), the confidence is the best model's calibrated
    score and ``fits`` the selector's "some model fits" decision.
    """

    def __init__(
        self,
        name: str,
        zoo: Any,
        models: Sequence[ModelInfo],
        origins: Sequence[str],
        encoder: Any = None,
        index: Any = None,
        verify: bool = True,
    ) -> None:
        self.name = name
        self.zoo = zoo
        self.models = list(models)
        self.origins = tuple(origins)
        self.encoder = encoder
        self.index = index
        self.verify = verify
        self.description = (
            f"selector, prototypes of origin {' + '.join(self.origins)}, "
            f"{'with' if verify else 'without'} model-alone verification"
        )

    def rank(self, image: Image) -> Ranking:
        from .selector import select

        sel = select(
            image,
            zoo=self.zoo,
            index=self.index,
            encoder=self.encoder,
            top_k=None,
            origins=self.origins,
            verify=self.verify,
            check=False,  # checked once when the index was loaded
        )
        names: list[str] = []
        scores: list[float] = []
        for m in sel.models:
            if m.name not in names:
                names.append(m.name)
                scores.append(float(m.score))
        low = (min(scores) if scores else 0.0) - 1.0
        for m in self.models:
            if m.name not in names:
                names.append(m.name)
                scores.append(low)
        conf = scores[0] if sel.models else low
        top = next((x for x in self.models if x.name == names[0]), None)
        return Ranking(
            names, scores, confidence=conf, fits=bool(sel.fits), predicted=top.label if top else ""
        )


def selector_available() -> bool:
    """True when :mod:`ModelSelectorLib.selector` can be imported."""
    try:
        from . import selector  # noqa: F401
    except ImportError:
        return False
    return True


def knn_references(
    models: Sequence[ModelInfo],
    mode: str,
    train_cases: Sequence[EvalCase] = (),
    max_per_class: int = 40,
    seed: int = 0,
) -> tuple[list[Reference], str]:
    """Reference images of the histogram k-NN baseline, and a sentence saying where they come from.

    Args:
        mode: ``exemplars`` (the zoo models' exemplar images: card example inputs and the source images
            of their exemplar prototypes) or ``train-split`` (up to ``max_per_class`` images per class of
            ``train_cases``, seeded).
        train_cases: labelled images that are not evaluation images (the encoder's training split).

    Raises:
        ModelSelectorError: unknown mode, or no reference image could be read.
    """
    if mode not in ("exemplars", "train-split"):
        raise ModelSelectorError(f"unknown k-NN reference mode {mode!r}; use exemplars or train-split.")
    if mode == "exemplars":
        refs = references_from_examples(models)
        desc = (
            f"fitted on the {len(refs)} exemplar images of the zoo's models (card example inputs and the "
            "source images of their exemplar prototypes)"
        )
    else:
        rng = np.random.default_rng(seed)
        by_cls: dict[str, list[EvalCase]] = {}
        for i in rng.permutation(len(train_cases)):
            c = train_cases[int(i)]
            by_cls.setdefault(c.label, []).append(c)
        refs = []
        for label in sorted(by_cls):
            for c in by_cls[label][:max_per_class]:
                try:
                    img = read_image(c.path, check_content=False)
                    refs.append(Reference(histogram_features(img), c.modality, c.regions, source=str(c.path)))
                except (InputError, OSError):
                    continue
        desc = (
            f"fitted on {len(refs)} images of the encoder's training split of the manifests (at most "
            f"{max_per_class} per modality:region class, seed {seed}; never an evaluation image)"
        )
    if not refs:
        raise ModelSelectorError(
            f"the histogram k-NN baseline ({mode}) found no reference image; make exemplar prototypes for the "
            "zoo's models, or evaluate on manifests that also hold the encoder's training images."
        )
    return refs, desc


# --- runner ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class EvaluationResult:
    """Everything :func:`run_selection_evaluation` measured."""

    models: list[ModelInfo]
    cases: list[EvalCase]
    rankers: list[dict[str, str]]
    results: dict[str, list[ImageResult]]
    metrics: dict[str, dict[str, Any]]
    protocol: dict[str, Any]
    unreadable: list[str]


def evaluate_rankers(
    cases: Sequence[EvalCase],
    models: Sequence[ModelInfo],
    rankers: Sequence[Any],
    cancel: Optional[Any] = None,
    reader: Any = None,
) -> tuple[dict[str, list[ImageResult]], list[str]]:
    """Run every ranker on every case (progress bar over images; ``cancel`` checked per image).

    Returns:
        results per ranker name (one :class:`ImageResult` per readable image, in case order), and the
        unreadable images with their reason.
    """
    read = reader or (lambda p: read_image(p))
    results: dict[str, list[ImageResult]] = {r.name: [] for r in rankers}
    unreadable: list[str] = []
    bar = progress_bar(total=len(cases), desc="evaluating selection")
    try:
        for case in cases:
            check_cancel(cancel)
            try:
                image = read(case.path)
            except InputError as e:
                unreadable.append(f"{case.path}: {e}")
                bar.update(1)
                continue
            relevant = case.relevant(models)
            for r in rankers:
                t0 = time.perf_counter()
                try:
                    ranking: Optional[Ranking] = r.rank(image)
                    err = ""
                except InputError as e:  # an image a ranker cannot handle counts as its error
                    ranking, err = None, str(e)
                results[r.name].append(
                    ImageResult(case, r.name, relevant, ranking, time.perf_counter() - t0, err)
                )
            bar.update(1)
    finally:
        bar.close()
    return results, unreadable


def run_selection_evaluation(
    zoo: Any,
    manifests: Sequence[PathLike],
    out_dir: PathLike,
    *,
    split: str = "heldout",
    limit: Optional[int] = None,
    seed: int = 0,
    rankers: Optional[Sequence[str]] = None,
    verify: bool = True,
    encoder_card: Optional[dict[str, Any]] = None,
    docs_report: Optional[PathLike] = None,
    command: str = "",
    cancel: Optional[Any] = None,
) -> EvaluationResult:
    """Evaluate the selector and the baselines on the manifests' images; write the report into ``out_dir``.

    Args:
        zoo: a :class:`~ModelSelectorLib.zoo.Zoo` or its folder.
        manifests: CSV manifests (``manifest.csv`` layout and/or ``radiology_2d/labels.csv`` layout).
        out_dir: output folder: ``report.md``, ``confusion.png``, ``results.csv``, ``metrics.json``; written
            only when the whole run has finished, each file atomically.
        split: which images to evaluate on (:func:`select_cases`).
        limit: evaluate at most this many images (class-stratified, seeded).
        seed: seed of the random baseline, of tie-breaking, of ``limit`` and of the k-NN references.
        rankers: names of the rankers to run (:data:`RANKERS`; default: all of them; the exemplar k-NN only
            when some model has exemplar images, the training-split k-NN only when the manifests hold
            images of the encoder's training split).
        verify: let the selector re-rank with model-alone signals.
        encoder_card: the encoder card defining the held-out split (default: the bundled one).
        docs_report: also write the report to this Markdown file (see :func:`write_outputs`).
        command: the command line that made the run (written into the report).
        cancel: Event-like; when set, the run stops with :class:`~ModelSelectorLib.errors.Cancelled` and
            writes nothing.

    Raises:
        ZooError: the zoo is missing; ModelSelectorError: empty zoo, no evaluation image, unknown ranker.
    """
    from .zoo import Zoo

    t_start = time.time()
    zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo)
    roots = sorted({str(Path(m).resolve().parent) for m in manifests})
    # the data folder holding radiology_2d/labels.csv is the parent of its folder
    roots += [str(Path(r).parent) for r in roots if Path(r).name == "radiology_2d"]
    models = zoo_models(zoo, roots)
    all_cases, skipped_rows = load_cases(manifests)
    enc_split = encoder_split(encoder_card)
    exclude = zoo_training_paths(zoo, roots)
    cases, dropped = select_cases(all_cases, split, enc_split, exclude, limit, seed)

    eval_paths = {str(c.path) for c in cases}
    train_cases = [c for c in all_cases if str(c.path) in enc_split.train and str(c.path) not in eval_paths]
    available = list(RANKERS) if selector_available() else [r for r in RANKERS if r not in SELECTOR_VARIANTS]
    if rankers:
        names = list(rankers)
        unknown = [n for n in names if n not in available]
        if unknown:
            hint = "" if selector_available() else " (the selector module is not available)"
            raise ModelSelectorError(f"unknown ranker(s) {unknown}{hint}; available: {', '.join(available)}.")
    else:
        names = [
            n
            for n in available
            if not (n == "histogram-knn-exemplars" and not any(m.example_inputs for m in models))
            and not (n == "histogram-knn-train" and not train_cases)
        ]

    ranker_objs: list[Any] = []
    shared: dict[str, Any] = {}
    for n in names:
        if n in SELECTOR_VARIANTS:
            if "encoder" not in shared:
                shared.update(_selector_resources(zoo))
            ranker_objs.append(
                SelectorRanker(
                    n, zoo, models, SELECTOR_VARIANTS[n], shared.get("encoder"), shared.get("index"), verify
                )
            )
        elif n == "random":
            ranker_objs.append(RandomRanker(models, seed))
        elif n == "header-rules":
            ranker_objs.append(HeaderRulesRanker(models, seed))
        elif n == "histogram-knn-exemplars":
            refs, desc = knn_references(models, "exemplars", seed=seed)
            ranker_objs.append(HistogramKNNRanker(models, refs, k=1, seed=seed, fit_description=desc, name=n))
        elif n == "histogram-knn-train":
            refs, desc = knn_references(models, "train-split", train_cases, seed=seed)
            ranker_objs.append(HistogramKNNRanker(models, refs, k=5, seed=seed, fit_description=desc, name=n))

    results, unreadable = evaluate_rankers(cases, models, ranker_objs, cancel)
    metrics = {n: summarize(results[n]) for n in names}
    bad = {u.split(": ", 1)[0] for u in unreadable}
    readable = [c for c in cases if str(c.path) not in bad]
    n_ind = sum(1 for c in readable if c.relevant(models))
    protocol = {
        "manifests": [portable_data_root(m) for m in manifests],  # relative to the checkout
        "split": split,
        "encoder_split": enc_split.description,
        "rows_skipped": dict(skipped_rows),
        "images_dropped": dict(dropped),
        "n_candidates": len(all_cases),
        "n_evaluated": len(readable),
        "n_in_distribution": n_ind,
        "n_ood": len(readable) - n_ind,
        "per_class": dict(sorted(Counter(c.label for c in readable).items())),
        "limit": limit,
        "seed": seed,
        "verify": verify,
        "zoo": str(zoo.path),
        "seconds": round(time.time() - t_start, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
    }
    res = EvaluationResult(
        models=models,
        cases=readable,
        rankers=[{"name": r.name, "description": r.description} for r in ranker_objs],
        results=results,
        metrics=metrics,
        protocol=protocol,
        unreadable=unreadable,
    )
    check_cancel(cancel)
    write_outputs(res, out_dir, docs_report)
    return res


def _selector_resources(zoo: Any) -> dict[str, Any]:
    """Load the encoder and the zoo's index once for all selector variants, and check that they agree
    with the zoo.

    Raises:
        IndexMismatchError: the zoo has no index, or it is stale (the message says how to rebuild it, or to
            run only the baselines).
    """
    from .encoder import Encoder
    from .index import load_index

    try:
        index = load_index(zoo)
        index.check_against(zoo)
    except IndexMismatchError as e:
        raise IndexMismatchError(
            f"{e} To evaluate only the baselines, pass --rankers "
            "random,header-rules,histogram-knn-exemplars,histogram-knn-train."
        ) from e
    return {"encoder": Encoder.load(), "index": index}


# --- outputs --------------------------------------------------------------------------------------------
def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        return "–" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def results_csv(res: EvaluationResult) -> str:
    """The per-image results as CSV text: one row per image and ranker."""
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["path", "source", "truth", "relevant_models", "ranker", "top1", "top1_label", "top1_relevant",
         "average_precision", "confidence", "fits", "predicted", "top5", "seconds", "error"]
    )  # fmt: skip
    by_name = {m.name: m for m in res.models}
    for name, rows in res.results.items():
        for r in rows:
            rk = r.ranking
            top1 = r.top1
            ap = average_precision(rk.names, r.relevant) if rk else float("nan")
            w.writerow([
                str(r.case.path), r.case.source, r.case.label, ";".join(r.relevant), name, top1,
                by_name[top1].label if top1 in by_name else "", int(top1 in r.relevant) if rk else "",
                "" if math.isnan(ap) else f"{ap:.4f}", f"{rk.confidence:.6g}" if rk else "",
                "" if rk is None or rk.fits is None else int(rk.fits), rk.predicted if rk else "",
                ";".join(rk.names[:5]) if rk else "", f"{r.seconds:.3f}", r.error,
            ])  # fmt: skip
    return buf.getvalue()


def confusion(res: EvaluationResult, ranker: str) -> tuple[np.ndarray, list[str], list[str]]:
    """Counts of true image class (rows) vs the top-1 model's ``MODALITY:REGION`` (columns) for ``ranker``."""
    by_name = {m.name: m for m in res.models}
    rows = [r for r in res.results.get(ranker, []) if r.ranking is not None]
    truths = sorted({r.case.label for r in rows})
    preds = sorted({by_name[r.top1].label for r in rows if r.top1 in by_name})
    cm = np.zeros((len(truths), len(preds)), dtype=np.int64)
    for r in rows:
        if r.top1 in by_name:
            cm[truths.index(r.case.label), preds.index(by_name[r.top1].label)] += 1
    return cm, truths, preds


def plot_confusion(
    cm: np.ndarray, truths: Sequence[str], preds: Sequence[str], path: PathLike, title: str
) -> None:
    """Write the confusion matrix as a PNG (row-normalised colours, counts written in cells), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nr, nc = max(1, len(truths)), max(1, len(preds))
    fig, ax = plt.subplots(figsize=(0.55 * nc + 3.2, 0.4 * nr + 2.6))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if cm.size else np.zeros((nr, nc))
    ax.imshow(norm if cm.size else np.zeros((nr, nc)), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(len(preds)))
    ax.set_yticks(range(len(truths)))
    ax.set_xticklabels(preds, rotation=60, ha="right", fontsize=8)
    ax.set_yticklabels(truths, fontsize=8)
    ax.set_xlabel("top-1 model's modality:region")
    ax.set_ylabel("image's modality:region (true)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


METRIC_COLUMNS = ["top1", "P@1", "P@3", "P@5", "R@1", "R@3", "R@5", "mAP", "ood_auroc", "fit_accuracy",
                  "fit_balanced_accuracy", "seconds_per_image"]  # fmt: skip
METRIC_HEADERS = ["top-1", "P@1", "P@3", "P@5", "R@1", "R@3", "R@5", "mAP", "OOD AUROC", "fit acc.",
                  "fit bal. acc.", "s/image"]  # fmt: skip


def report_markdown(
    res: EvaluationResult, confusion_name: str = "confusion.png", confusion_ranker: str = ""
) -> str:
    """The evaluation report as Markdown: protocol, counts, rankers, metrics table, confusion matrix."""
    p = res.protocol
    lines = [
        "# Selection evaluation",
        "",
        f"Created {p['created']} in {p['seconds']:.0f} s; zoo `{p['zoo']}` ({len(res.models)} models); seed {p['seed']}.",
        *([f"Command: `{p['command']}`"] if p.get("command") else []),
        "",
        "## Results",
        "",
        f"{p['n_evaluated']} images: {p['n_in_distribution']} with at least one relevant model "
        f"(in-distribution), {p['n_ood']} with none (out-of-distribution).",
        "",
        "| ranker | " + " | ".join(METRIC_HEADERS) + " |",
        "|---|" + "---|" * len(METRIC_HEADERS),
    ]
    for r in res.rankers:
        m = res.metrics[r["name"]]
        cells = [_fmt(m[c], 3 if c != "seconds_per_image" else 2) for c in METRIC_COLUMNS]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    errs = {
        r["name"]: res.metrics[r["name"]]["n_errors"]
        for r in res.rankers
        if res.metrics[r["name"]]["n_errors"]
    }
    max_rel = max((len(c.relevant(res.models)) for c in res.cases), default=0)
    lines += [
        "",
        "top-1, P@k, R@k and mAP are over the in-distribution images; OOD AUROC and the fit/no-fit accuracy "
        "over all images ('–': the ranker makes no fit decision). P@k divides by k, so with at most "
        f"{max_rel} relevant model(s) per image P@3 and P@5 cannot reach 1.",
    ]
    if any(r["name"] in SELECTOR_VARIANTS for r in res.rankers):
        lines += [
            "",
            "Time per image (s/image) is measured per ranker in run order; the selector keeps the embedding and "
            "the model-alone verification of the last images in a cache, so the first selector variant carries "
            "that cost for all three.",
        ]
    dims = Counter(
        (c.label, "3D" if _is_volume(c.path) else "2D") for c in res.cases if c.relevant(res.models)
    )
    if dims:
        lines += [
            "",
            "In-distribution images by kind: "
            + ", ".join(f"{lab} {kind} {n}" for (lab, kind), n in sorted(dims.items()))
            + ". Relevance follows the card's modality and region only, so 2D slices of CT or MR count as "
            "relevant to a 3D model of that modality and region.",
        ]
    if errs:
        lines += ["", f"Images a ranker could not handle (counted as missing, not as wrong): {errs}."]
    lines += ["", "### Per class", "", *per_class_table(res)]
    if confusion_ranker:
        lines += [
            "",
            f"![confusion matrix]({confusion_name})",
            "",
            f"Confusion matrix of `{confusion_ranker}`: rows are the images' true modality:region, columns the "
            "modality:region of the top-ranked model (every image gets a top-ranked model, also those the "
            "selector rejects as out-of-distribution).",
        ]
    lines += [
        "",
        "## Zoo",
        "",
        "| model | version | task | modality | region | example inputs |",
        "|---|---|---|---|---|---|",
    ]
    for m in res.models:
        lines.append(
            f"| {m.name} | {m.version} | {m.task_type} | {m.modality} | {';'.join(m.regions)} | {len(m.example_inputs)} |"
        )
    lines += [
        "",
        "## Protocol",
        "",
        f"- Manifests: {', '.join('`' + x + '`' for x in p['manifests'])}; {p['n_candidates']} images with a known "
        f"modality and body region (rows left out: {p['rows_skipped'] or 'none'}).",
        f"- Images evaluated (split `{p['split']}`): {SPLIT_TEXT[p['split']]} Encoder split: {p['encoder_split']}.",
        f"- Images left out: {p['images_dropped'] or 'none'}; unreadable: {len(res.unreadable)}.",
        "- Relevance: a model is relevant to an image when its card's modality equals the image's modality "
        "code and their body regions (`;`-separated lists) intersect. Images with no relevant model, "
        "including the non-medical photographs (modality OT), are the out-of-distribution set.",
        "- Confidence for the OOD AUROC: the ranker's best model score (selector: its calibrated score; "
        "header rules: 0-3 rule score; k-NN: minus the histogram distance to the nearest reference; random: "
        "a random number). Label: the image has a relevant model.",
        "- Ties in a ranker's scores are broken in a seeded random order per image.",
        f"- Classes of the evaluated images: {p['per_class']}.",
        "",
        "Rankers, all measured in this run on the same images:",
        "",
    ]
    for r in res.rankers:
        lines.append(f"- `{r['name']}`: {r['description']}.")
    lines += [
        "",
        "Files: `results.csv` (one row per image and ranker: truth, relevant models, top-1, average precision, "
        "confidence, fit decision, top 5), `metrics.json` (the table above and the protocol).",
        "",
    ]
    if res.unreadable:
        lines += ["Unreadable images:", ""] + [f"- {u}" for u in res.unreadable[:20]] + [""]
    return "\n".join(lines)


def _is_volume(path: Path) -> bool:
    """True for volume file formats (NIfTI, NRRD, MHA, DICOM); 2D picture formats give False."""
    from .io import IMAGE_2D_SUFFIXES

    return not str(path).lower().endswith(IMAGE_2D_SUFFIXES)


def per_class_table(res: EvaluationResult) -> list[str]:
    """Markdown lines of a per-class table: for classes with a relevant model, each ranker's top-1
    accuracy; for out-of-distribution classes, the fraction of images the ranker rejects ("nothing fits";
    '–' for rankers without that decision)."""
    names = [r["name"] for r in res.rankers]
    lines = [
        "| image class | n | relevant models | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    labels = sorted({c.label for c in res.cases})
    for label in labels:
        cells = []
        n, rel = 0, []
        for name in names:
            rows = [r for r in res.results[name] if r.case.label == label and r.ranking is not None]
            n, rel = len(rows), (rows[0].relevant if rows else [])
            if not rows:
                cells.append("–")
            elif rel:
                cell = _fmt(float(np.mean([r.top1 in r.relevant for r in rows])))
                if all(r.ranking.fits is not None for r in rows):  # type: ignore[union-attr]
                    cell += " (accepts " + _fmt(float(np.mean([bool(r.ranking.fits) for r in rows]))) + ")"  # type: ignore[union-attr]
                cells.append(cell)
            elif all(r.ranking.fits is not None for r in rows):  # type: ignore[union-attr]
                cells.append("rejects " + _fmt(float(np.mean([not r.ranking.fits for r in rows]))))  # type: ignore[union-attr]
            else:
                cells.append("–")
        lines.append(f"| {label} | {n} | {', '.join(rel) or 'none (OOD)'} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cells: for classes with a relevant model, the top-1 accuracy and (in brackets) the fraction of images "
        "the ranker accepts as 'a model fits'; for out-of-distribution classes, the fraction it rejects as "
        "'nothing fits' ('–': the ranker makes no such decision).",
    ]
    return lines


def write_outputs(res: EvaluationResult, out_dir: PathLike, docs_report: Optional[PathLike] = None) -> Path:
    """Write ``results.csv``, ``metrics.json``, ``confusion.png`` and ``report.md`` (last) into ``out_dir``,
    each atomically.

    Args:
        docs_report: also write the report to this Markdown file, with the confusion matrix beside it as
            ``<name>-confusion.png`` (``docs/selection-report.md`` -> ``docs/selection-confusion.png``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.csv", results_csv(res))
    write_json(out / "metrics.json", {"metrics": _jsonable(res.metrics), "protocol": res.protocol,
                                      "rankers": res.rankers, "models": [dataclasses.asdict(m) for m in res.models]})  # fmt: skip
    names = [r["name"] for r in res.rankers]
    cm_ranker = "ours-both" if "ours-both" in names else (names[0] if names else "")
    if cm_ranker:
        cm, truths, preds = confusion(res, cm_ranker)
        plot_confusion(cm, truths, preds, out / "confusion.png", f"{cm_ranker}: true class vs top-1 model")
    if docs_report is not None and cm_ranker:
        doc = Path(docs_report)
        png = doc.with_name(re.sub(r"-?report$", "", doc.stem) + "-confusion.png")
        shutil_copy_atomic(out / "confusion.png", png)
        write_text(doc, report_markdown(res, png.name, cm_ranker))
    write_text(out / "report.md", report_markdown(res, "confusion.png", cm_ranker))
    return out


def shutil_copy_atomic(src: PathLike, dst: PathLike) -> None:
    """Copy a file to ``dst`` through a temporary sibling (atomic replace)."""
    import shutil

    with atomic_path(Path(dst)) as tmp:
        shutil.copyfile(src, tmp)
    os.chmod(dst, 0o644)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


__all__ = [
    "EncoderSplit",
    "EvalCase",
    "EvaluationResult",
    "ImageResult",
    "SelectorRanker",
    "auroc",
    "average_precision",
    "encoder_split",
    "evaluate_rankers",
    "knn_references",
    "load_cases",
    "precision_at_k",
    "recall_at_k",
    "run_selection_evaluation",
    "select_cases",
    "summarize",
    "write_outputs",
    "zoo_training_paths",
]
