"""Selection evaluation: how well do the selector and baseline rankers find the models that apply?

For every evaluation image with a known modality and body region (rows of one or more CSV manifests),
each ranker orders the zoo's models. A model is *relevant* to an image when its card's modality equals
the image's modality code and their body regions intersect (:func:`~ModelSelectorLib.evaluation.baselines.is_relevant`).
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

* fit accuracy, over all images, for rankers that decide "fits / nothing fits".

The images and their split: :mod:`.selection_cases`; the report: :mod:`.selection_report`.

Typical use::

    from ModelSelectorLib.evaluation.selection_report import run_selection_evaluation
    run_selection_evaluation(default_zoo_path(), ["../shared/data/manifest.csv"], "eval_out")
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..errors import IndexMismatchError, InputError, ModelSelectorError
from ..io.image import Image, read_image
from ..progress import check_cancel, progress_bar
from ..selection.encoder import default_encoder
from ..selection.index import load_index
from ..training.encoder import portable_data_root
from ..zoo.catalog import Zoo
from .baselines import (
    HeaderRulesRanker,
    HistogramKNNRanker,
    ModelInfo,
    RandomRanker,
    Ranking,
    Reference,
    histogram_features,
    references_from_examples,
    zoo_models,
)
from .selection_cases import (
    EvalCase,
    encoder_split,
    load_cases,
    select_cases,
    zoo_training_paths,
)

PathLike = Union[str, "os.PathLike[str]"]

#: the cut-offs k of precision@k and recall@k
KS = (1, 3, 5)
#: origins filters of the three selector variants, by ranker name
SELECTOR_VARIANTS = {
    "ours-exemplar": ("exemplar",),
    "ours-data-free": ("data-free",),
    "ours-both": ("exemplar", "data-free"),
}


RANKERS = (*SELECTOR_VARIANTS, "random", "header-rules", "histogram-knn-exemplars", "histogram-knn-train")


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
        from ..selection.selector import select

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
    """True when :mod:`ModelSelectorLib.selection.selector` can be imported."""
    try:
        from ..selection import selector  # noqa: F401
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


def ranker_names(
    rankers: Optional[Sequence[str]], models: list[ModelInfo], train_cases: list[EvalCase]
) -> list[str]:
    """The rankers to run: ``rankers`` (checked), or every available one that has what it needs (the
    exemplar k-NN only when some model has exemplar images, the training-split k-NN only with training
    images)."""
    available = list(RANKERS) if selector_available() else [r for r in RANKERS if r not in SELECTOR_VARIANTS]
    if rankers:
        names = list(rankers)
        unknown = [n for n in names if n not in available]
        if unknown:
            hint = "" if selector_available() else " (the selector module is not available)"
            raise ModelSelectorError(f"unknown ranker(s) {unknown}{hint}; available: {', '.join(available)}.")
        return names
    return [
        n
        for n in available
        if not (n == "histogram-knn-exemplars" and not any(m.example_inputs for m in models))
        and not (n == "histogram-knn-train" and not train_cases)
    ]


def build_rankers(
    names: Sequence[str],
    zoo: Any,
    models: list[ModelInfo],
    train_cases: list[EvalCase],
    seed: int,
    verify: bool,
) -> list[Any]:
    """The ranker objects of ``names`` (selector variants share one encoder and index)."""
    objs: list[Any] = []
    shared: dict[str, Any] = {}
    for n in names:
        if n in SELECTOR_VARIANTS:
            if "encoder" not in shared:
                shared.update(_selector_resources(zoo))
            objs.append(SelectorRanker(n, zoo, models, SELECTOR_VARIANTS[n], shared["encoder"], shared["index"],
                                       verify))  # fmt: skip
        elif n == "random":
            objs.append(RandomRanker(models, seed))
        elif n == "header-rules":
            objs.append(HeaderRulesRanker(models, seed))
        elif n == "histogram-knn-exemplars":
            refs, desc = knn_references(models, "exemplars", seed=seed)
            objs.append(HistogramKNNRanker(models, refs, k=1, seed=seed, fit_description=desc, name=n))
        elif n == "histogram-knn-train":
            refs, desc = knn_references(models, "train-split", train_cases, seed=seed)
            objs.append(HistogramKNNRanker(models, refs, k=5, seed=seed, fit_description=desc, name=n))
    return objs


def evaluate_selection(
    zoo: Any,
    manifests: Sequence[PathLike],
    *,
    split: str = "heldout",
    limit: Optional[int] = None,
    seed: int = 0,
    rankers: Optional[Sequence[str]] = None,
    verify: bool = True,
    encoder_card: Optional[dict[str, Any]] = None,
    command: str = "",
    cancel: Optional[Any] = None,
) -> EvaluationResult:
    """Evaluate the selector and the baselines on the manifests' images (nothing is written; see
    :func:`~.selection_report.run_selection_evaluation`).

    Args:
        zoo: a :class:`~ModelSelectorLib.zoo.Zoo` or its folder.
        manifests: CSV manifests (``manifest.csv`` layout and/or ``radiology_2d/labels.csv`` layout).
        split: which images to evaluate on (:func:`~.selection_cases.select_cases`).
        limit: evaluate at most this many images (class-stratified, seeded).
        seed: seed of the random baseline, of tie-breaking, of ``limit`` and of the k-NN references.
        rankers: names of the rankers to run (:data:`RANKERS`; default: :func:`ranker_names`).
        verify: let the selector re-rank with model-alone signals.
        encoder_card: the encoder card defining the held-out split (default: the bundled one).
        command: the command line that made the run (recorded in the protocol).
        cancel: Event-like; when set, the run stops with :class:`~ModelSelectorLib.errors.Cancelled`.

    Raises:
        ZooError: the zoo is missing; ModelSelectorError: empty zoo, no evaluation image, unknown ranker.
    """
    t_start = time.time()
    zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo)
    roots = sorted({str(Path(m).resolve().parent) for m in manifests})
    # the data folder holding radiology_2d/labels.csv is the parent of its folder
    roots += [str(Path(r).parent) for r in roots if Path(r).name == "radiology_2d"]
    models = zoo_models(zoo, roots)
    all_cases, skipped_rows = load_cases(manifests)
    enc_split = encoder_split(encoder_card)
    cases, dropped = select_cases(all_cases, split, enc_split, zoo_training_paths(zoo, roots), limit, seed)
    eval_paths = {str(c.path) for c in cases}
    train_cases = [c for c in all_cases if str(c.path) in enc_split.train and str(c.path) not in eval_paths]
    names = ranker_names(rankers, models, train_cases)
    ranker_objs = build_rankers(names, zoo, models, train_cases, seed, verify)
    results, unreadable = evaluate_rankers(cases, models, ranker_objs, cancel)
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
    check_cancel(cancel)
    return EvaluationResult(
        models=models,
        cases=readable,
        rankers=[{"name": r.name, "description": r.description} for r in ranker_objs],
        results=results,
        metrics={n: summarize(results[n]) for n in names},
        protocol=protocol,
        unreadable=unreadable,
    )


def _selector_resources(zoo: Any) -> dict[str, Any]:
    """Load the encoder and the zoo's index once for all selector variants, and check that they agree
    with the zoo.

    Raises:
        IndexMismatchError: the zoo has no index, or it is stale (the message says how to rebuild it, or to
            run only the baselines).
    """
    try:
        index = load_index(zoo)
        index.check_against(zoo)
    except IndexMismatchError as e:
        raise IndexMismatchError(
            f"{e} To evaluate only the baselines, pass --rankers "
            "random,header-rules,histogram-knn-exemplars,histogram-knn-train."
        ) from e
    return {"encoder": default_encoder(), "index": index}
