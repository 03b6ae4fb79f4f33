"""Selection evaluation: how well do the selector and baseline rankers find the models that apply?

Every image of one part of the protocol split (:mod:`.selection_split`; the ``test`` part for the report)
is ranked by each ranker. A model is *relevant* to an image when its card's modality equals the image's and
their body regions intersect; it is *applicable* when it can also take the image (a 3D model cannot take a
lone 2D slice). Images fall in three categories (:meth:`~.selection_cases.EvalCase.category`): ``in-zoo``
(some model is applicable), ``needs-volume`` (only 3D models are relevant and the image is 2D) and ``ood``.

Metrics (:func:`summarize`):

* over in-zoo images: top-1 (the first model is applicable), **first relevant and fitting** (the first model
  is applicable and the ranker says it fits), P@k and R@k (k = 1, 3, 5), mAP;
* OOD AUROC: the ranker's confidence, in-zoo images against out-of-distribution ones;
* the fit decision: acceptance of in-zoo images, rejection of out-of-distribution and needs-volume images,
  and the balanced accuracy of accepting in-zoo against rejecting the others;
* needs-volume images: the first model is relevant, and (selector) it is named as needing the volume;
* class accuracy over every image: the predicted modality:region class (encoder head for the selector,
  the references' vote for the k-NN) is right.

The images and their split: :mod:`.selection_cases`; the report: :mod:`.selection_report`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Optional

import numpy as np

from ..errors import IndexMismatchError, InputError, ModelSelectorError
from ..io.image import Image, read_image
from ..progress import check_cancel, progress_bar
from ..selection.encoder import default_encoder
from ..selection.field_of_view import image_extent_mm
from ..selection.index import load_index
from ..zoo.catalog import open_zoo
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
from .selection_cases import EvalCase, cases_of, copies_in_split, select_cases, zoo_training_paths
from .selection_split import ProtocolSplit

#: the cut-offs k of precision@k and recall@k
KS = (1, 3, 5)
#: origins filters of the three selector variants, by ranker name
SELECTOR_VARIANTS = {
    "ours-exemplar": ("exemplar",),
    "ours-data-free": ("data-free",),
    "ours-both": ("exemplar", "data-free"),
}
#: rankers by prototype similarity alone (no encoder class, no fit decision), by name
PROTOTYPE_VARIANTS = {"prototypes-exemplar": ("exemplar",), "prototypes-data-free": ("data-free",)}
RANKERS = (*SELECTOR_VARIANTS, *PROTOTYPE_VARIANTS, "random", "header-rules", "histogram-knn-exemplars",
           "histogram-knn-train")  # fmt: skip
#: subsets of the evaluated images that the report breaks the figures down by
SUBSETS = {
    "all": lambda c: True,
    "source-disjoint": lambda c: c.held_out_source,
    "patient-disjoint": lambda c: not c.held_out_source,
}


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


def class_correct(predicted: str, case: EvalCase) -> bool:
    """The predicted ``MODALITY:REGION`` names the image's modality and one of its regions."""
    mod, _, reg = predicted.partition(":")
    if case.modality == "OT":
        return mod == "OT"
    return mod == case.modality and reg in case.regions


@dataclasses.dataclass
class ImageResult:
    """One ranker's result on one image."""

    case: EvalCase
    ranker: str
    relevant: list[str]
    ranking: Optional[Ranking]
    seconds: float = 0.0
    error: str = ""
    applicable: list[str] = dataclasses.field(default_factory=list)
    category: str = "ood"

    @property
    def top1(self) -> str:
        return self.ranking.names[0] if self.ranking and self.ranking.names else ""


def _mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return float(np.mean(xs)) if xs else float("nan")


def summarize(results: Sequence[ImageResult]) -> dict[str, Any]:
    """Metrics of one ranker over its image results (see the module docstring).

    Returns:
        dict with counts per category, ``top1``, ``first_fitting``, ``P@k``/``R@k``, ``mAP``, ``ood_auroc``,
        ``accept_in_zoo``, ``reject_ood``, ``reject_needs_volume``, ``fit_balanced_accuracy`` (NaN when the
        ranker makes no fit decision), ``needs_volume_top1``, ``needs_volume_named``, ``class_accuracy``,
        ``class_balanced_accuracy`` and ``seconds_per_image``.
    """
    ok = [r for r in results if r.ranking is not None]
    ind = [r for r in ok if r.category == "in-zoo"]
    ood = [r for r in ok if r.category == "ood"]
    nv = [r for r in ok if r.category == "needs-volume"]
    out: dict[str, Any] = {"n_images": len(results), "n_in_zoo": len(ind), "n_ood": len(ood), "n_needs_volume": len(nv),
                           "n_errors": len(results) - len(ok)}  # fmt: skip
    rk = {id(r): r.ranking for r in ok}  # typed access below
    out["top1"] = _mean([float(r.top1 in r.applicable) for r in ind])
    decides = bool(ok) and all(r.ranking.fits is not None for r in ok)  # type: ignore[union-attr]
    out["first_fitting"] = _mean([float(r.top1 in r.applicable and r.top1 in rk[id(r)].fitting) for r in ind]) \
        if decides else float("nan")  # fmt: skip
    for k in KS:
        out[f"P@{k}"] = _mean([precision_at_k(rk[id(r)].names, r.applicable, k) for r in ind])
        out[f"R@{k}"] = _mean([recall_at_k(rk[id(r)].names, r.applicable, k) for r in ind])
    out["mAP"] = _mean([average_precision(rk[id(r)].names, r.applicable) for r in ind])
    out["ood_auroc"] = auroc(
        [rk[id(r)].confidence for r in ind + ood], [True] * len(ind) + [False] * len(ood)
    )
    if decides:
        acc = _mean([float(bool(rk[id(r)].fits)) for r in ind])
        rej_ood = _mean([float(not rk[id(r)].fits) for r in ood])
        rej_nv = _mean([float(not rk[id(r)].fits) for r in nv])
        rej_all = _mean([float(not rk[id(r)].fits) for r in ood + nv])
        out.update(accept_in_zoo=acc, reject_ood=rej_ood, reject_needs_volume=rej_nv,
                   fit_balanced_accuracy=_mean([acc, rej_all]))  # fmt: skip
    else:
        out.update(accept_in_zoo=float("nan"), reject_ood=float("nan"), reject_needs_volume=float("nan"),
                   fit_balanced_accuracy=float("nan"))  # fmt: skip
    out["needs_volume_top1"] = _mean([float(r.top1 in r.relevant) for r in nv])
    out["needs_volume_named"] = _mean([float(r.top1 in rk[id(r)].needs_volume and r.top1 in r.relevant) for r in nv]) \
        if decides else float("nan")  # fmt: skip
    with_class = [r for r in ok if rk[id(r)].predicted]
    correct = [(r.case.label, class_correct(rk[id(r)].predicted, r.case)) for r in with_class]
    out["class_accuracy"] = _mean([float(c) for _, c in correct])
    per: dict[str, list[float]] = {}
    for label, c in correct:
        per.setdefault(label, []).append(float(c))
    out["class_balanced_accuracy"] = _mean([_mean(v) for v in per.values()])
    out["seconds_per_image"] = _mean([r.seconds for r in ok])
    return out


# --- rankers --------------------------------------------------------------------------------------------
class SelectorRanker:
    """The project's selector (:func:`~ModelSelectorLib.selection.selector.select`) restricted to prototype
    origins.

    The ranking is the selector's full model list (fitting models first, then those that need the volume);
    the confidence is the best calibrated score among the models that can take the image, ``fits`` the
    selector's "some model fits" decision, ``predicted`` the encoder's class.
    """

    def __init__(self, name: str, zoo: Any, models: Sequence[ModelInfo], origins: Sequence[str], encoder: Any = None,
                 index: Any = None, verify: bool = True) -> None:  # fmt: skip
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

        sel = select(image, zoo=self.zoo, index=self.index, encoder=self.encoder, top_k=None, origins=self.origins,
                     verify=self.verify, check=False)  # fmt: skip
        dims = {m.name: m.spatial_dims for m in self.models}
        nd = 2 if image.is_single_slice else 3
        names = [m.name for m in sel.models]
        scores = [float(m.score) for m in sel.models]
        names += [m.name for m in self.models if m.name not in names]
        scores += [-1.0] * (len(names) - len(scores))
        takes = [float(m.score) for m in sel.models if int(dims.get(m.name, nd)) == nd]
        return Ranking(names, scores, confidence=max(takes) if takes else -1.0, fits=bool(sel.fits),
                       predicted=sel.image_classes[0][0] if sel.image_classes else "",
                       fitting=[m.name for m in sel.models if m.fits], needs_volume=list(sel.needs_volume))  # fmt: skip


class PrototypeRanker:
    """Models ranked by prototype similarity alone (:func:`~ModelSelectorLib.selection.scoring.similarities`
    of the given origins): what the prototypes tell without the encoder's class or any fit decision. The
    confidence is the best similarity among the models that can take the image."""

    def __init__(self, name: str, models: Sequence[ModelInfo], origins: Sequence[str], encoder: Any,
                 index: Any) -> None:  # fmt: skip
        self.name, self.models, self.origins = name, list(models), tuple(origins)
        self.encoder, self.index = encoder, index
        self.description = f"prototype similarity alone, origin {' + '.join(self.origins)}"

    def rank(self, image: Image) -> Ranking:
        from ..selection.scoring import evidence, similarities

        ev = evidence(self.encoder, image)
        sims = similarities(self.index, ev, self.origins)
        scores = [sims[m.name][0] if m.name in sims else -2.0 for m in self.models]
        order = np.argsort(-np.asarray(scores), kind="stable")
        takes = [s for m, s in zip(self.models, scores) if int(m.spatial_dims) == ev.ndim]
        return Ranking([self.models[i].name for i in order], [float(scores[i]) for i in order],
                       confidence=max(takes) if takes else -2.0)  # fmt: skip


def knn_references(
    models: Sequence[ModelInfo], mode: str, train_cases: Sequence[EvalCase] = (), max_per_class: int = 40,
    seed: int = 0,
) -> tuple[list[Reference], str]:  # fmt: skip
    """Reference images of the histogram k-NN baseline, and a sentence saying where they come from.

    Args:
        mode: ``exemplars`` (the zoo models' exemplar images) or ``train-split`` (up to ``max_per_class``
            images per class of ``train_cases``, seeded: the images the encoder was trained on).

    Raises:
        ModelSelectorError: unknown mode, or no reference image could be read.
    """
    if mode not in ("exemplars", "train-split"):
        raise InputError(f"unknown k-NN reference mode {mode!r}; use exemplars or train-split.")
    if mode == "exemplars":
        refs = references_from_examples(models)
        desc = f"fitted on the {len(refs)} exemplar images of the zoo's models"
    else:
        rng = np.random.default_rng(seed)
        by_cls: dict[str, list[EvalCase]] = {}
        for i in rng.permutation(len(train_cases)):
            by_cls.setdefault(train_cases[int(i)].label, []).append(train_cases[int(i)])
        refs = []
        for label in sorted(by_cls):
            for c in by_cls[label][:max_per_class]:
                try:
                    img = read_image(c.path, check_content=False)
                except (InputError, OSError):
                    continue
                refs.append(Reference(histogram_features(img), c.modality, c.regions, source=str(c.path)))
        desc = (f"fitted on {len(refs)} images of the train part of the split (the encoder's training images; at "
                f"most {max_per_class} per modality:region class, seed {seed}; never an evaluation image)")  # fmt: skip
    if not refs:
        raise ModelSelectorError(
            f"the histogram k-NN baseline ({mode}) found no reference image; make exemplar prototypes for the "
            "zoo's models, or give a split whose train part holds images."
        )
    return refs, desc


def evaluate_rankers(
    cases: Sequence[EvalCase], models: Sequence[ModelInfo], rankers: Sequence[Any], cancel: Optional[Any] = None,
    reader: Any = None,
) -> tuple[dict[str, list[ImageResult]], list[str]]:  # fmt: skip
    """Run every ranker on every case (progress bar over images; ``cancel`` checked per image).

    Returns:
        results per ranker name (one :class:`ImageResult` per readable image, in case order), and the
        unreadable images with their reason.
    """
    read = reader or (lambda p: read_image(p))
    results: dict[str, list[ImageResult]] = {r.name: [] for r in rankers}
    unreadable: list[str] = []
    for case in progress_bar(list(cases), desc="evaluating selection"):
        check_cancel(cancel)
        try:
            image = read(case.path)
        except InputError as e:
            unreadable.append(f"{case.path}: {e}")
            continue
        case = dataclasses.replace(case, extent_mm=image_extent_mm(image))
        relevant, applicable, category = case.relevant(models), case.applicable(models), case.category(models)
        for r in rankers:
            t0 = time.perf_counter()
            try:
                ranking: Optional[Ranking] = r.rank(image)
                err = ""
            except InputError as e:  # an image a ranker cannot handle counts as its error
                ranking, err = None, str(e)
            results[r.name].append(ImageResult(case, r.name, relevant, ranking, time.perf_counter() - t0, err,
                                               applicable, category))  # fmt: skip
    return results, unreadable


def ranker_names(
    rankers: Optional[Sequence[str]], models: list[ModelInfo], train_cases: list[EvalCase]
) -> list[str]:
    """The rankers to run: ``rankers`` (checked), or every one that has what it needs (the exemplar k-NN only
    when some model has exemplar images, the training-split k-NN only with training images)."""
    if rankers:
        unknown = [n for n in rankers if n not in RANKERS]
        if unknown:
            raise InputError(f"unknown ranker(s) {unknown}; available: {', '.join(RANKERS)}.")
        return list(rankers)
    return [n for n in RANKERS if not (n == "histogram-knn-exemplars" and not any(m.example_inputs for m in models))
            and not (n == "histogram-knn-train" and not train_cases)]  # fmt: skip


def build_rankers(names: Sequence[str], zoo: Any, models: list[ModelInfo], train_cases: list[EvalCase], seed: int,
                  verify: bool) -> list[Any]:  # fmt: skip
    """The ranker objects of ``names`` (selector variants share one encoder and index)."""
    objs: list[Any] = []
    shared: dict[str, Any] = {}
    for n in names:
        if n in SELECTOR_VARIANTS:
            if "encoder" not in shared:
                shared.update(_selector_resources(zoo))
            objs.append(SelectorRanker(n, zoo, models, SELECTOR_VARIANTS[n], shared["encoder"], shared["index"],
                                       verify))  # fmt: skip
        elif n in PROTOTYPE_VARIANTS:
            if "encoder" not in shared:
                shared.update(_selector_resources(zoo))
            objs.append(PrototypeRanker(n, models, PROTOTYPE_VARIANTS[n], shared["encoder"], shared["index"]))
        elif n == "random":
            objs.append(RandomRanker(models, seed))
        elif n == "header-rules":
            objs.append(HeaderRulesRanker(models, seed))
        else:
            mode = "exemplars" if n == "histogram-knn-exemplars" else "train-split"
            refs, desc = knn_references(models, mode, train_cases, seed=seed)
            objs.append(HistogramKNNRanker(models, refs, k=1 if mode == "exemplars" else 5, seed=seed,
                                           fit_description=desc, name=n))  # fmt: skip
    return objs


@dataclasses.dataclass
class EvaluationResult:
    """Everything :func:`evaluate_selection` measured: the zoo's models, the evaluated images, the rankers,
    per-ranker image results, metrics per subset (:data:`SUBSETS`) and ranker, the protocol, the leakage
    checks, the index calibration and the unreadable images."""

    models: list[ModelInfo]
    cases: list[EvalCase]
    rankers: list[dict[str, str]]
    results: dict[str, list[ImageResult]]
    metrics: dict[str, dict[str, dict[str, Any]]]
    protocol: dict[str, Any]
    leakage: dict[str, Any]
    calibration: dict[str, Any]
    unreadable: list[str]


def leakage_checks(
    split: ProtocolSplit, cases: Sequence[EvalCase], excluded: set, zoo_paths: set
) -> dict[str, Any]:
    """Counts that show the evaluation images are unseen: the split's own checks (near-duplicate pairs and
    patients across parts, held-out sources elsewhere), near-duplicate pairs between evaluated images and
    the encoder's training images or the zoo's training images, and how many candidate images were left out
    for being linked to the zoo's training images (chest X-rays linked to ``cxr_unlabelled/`` among them)."""
    idx = {str(split.path(it).resolve()): i for i, it in enumerate(split.items)}
    evaluated = {idx[str(c.path)] for c in cases if str(c.path) in idx}
    train = {i for i, s in enumerate(split.splits) if s == "train"}
    zoo_idx = {idx[p] for p in zoo_paths if p in idx}

    def pairs(other: set) -> int:
        return sum(
            1
            for a, b, _ in split.duplicates
            if (a in evaluated and b in other) or (b in evaluated and a in other)
        )

    pairs_train, pairs_zoo = pairs(train), pairs(zoo_idx)
    unl = {i for i, it in enumerate(split.items) if it.path.startswith("cxr_unlabelled/")}
    linked_unl = {a if b in unl else b for a, b, _ in split.duplicates if (a in unl) != (b in unl)}
    return {
        **split.leakage(),
        "near_duplicate_pairs_evaluated_vs_encoder_training": pairs_train,
        "near_duplicate_pairs_evaluated_vs_zoo_training": pairs_zoo,
        "images_of_zoo_training_validation_exemplars_or_linked_all_parts": len(excluded),
        "chest_xrays_near_duplicate_of_cxr_unlabelled": len(linked_unl),
        "of_which_evaluated": len(linked_unl & evaluated),
    }  # fmt: skip


def evaluate_selection(
    zoo: Any, split: ProtocolSplit, *, part: str = "test", limit: Optional[int] = None, seed: int = 0,
    rankers: Optional[Sequence[str]] = None, verify: bool = True, command: str = "", cancel: Optional[Any] = None,
) -> EvaluationResult:  # fmt: skip
    """Evaluate the selector and the baselines on one part of the protocol split (nothing is written; see
    :func:`~.selection_report.run_selection_evaluation`).

    Images a zoo model was trained, validated or checked on, ships as an exemplar or used unlabelled are left
    out with their patients and near-duplicates. The k-NN baseline is fitted on the split's train part.

    Raises:
        ZooError: the zoo is missing; ModelSelectorError: empty zoo, no evaluation image, unknown ranker or part.
    """
    t_start = time.time()
    zoo = open_zoo(zoo)
    roots = [str(split.root)]
    models = zoo_models(zoo, roots)
    zoo_paths = zoo_training_paths(zoo, roots)
    zoo_paths |= copies_in_split(zoo_paths, split)
    excluded = split.linked(sorted(zoo_paths))
    candidates = cases_of(split, part)
    cases, dropped = select_cases(candidates, excluded, limit, seed)
    train_cases = cases_of(split, "train") if part != "train" else []
    names = ranker_names(rankers, models, train_cases)
    ranker_objs = build_rankers(names, zoo, models, train_cases, seed, verify)
    results, unreadable = evaluate_rankers(cases, models, ranker_objs, cancel)
    # the cases as scored: with the field of view their images showed
    readable = [r.case for r in results[names[0]]] if names else []
    metrics = {sub: {n: summarize([r for r in results[n] if keep(r.case)]) for n in names}
               for sub, keep in SUBSETS.items()}  # fmt: skip
    cats = Counter(c.category(models) for c in readable)
    protocol = {
        "split_digest": split.digest(), "split_meta": {k: v for k, v in split.meta.items() if k != "unreadable"},
        "part": part, "n_candidates": len(candidates), "images_dropped": dict(dropped), "n_evaluated": len(readable),
        "categories": dict(cats), "per_class": dict(sorted(Counter(c.label for c in readable).items())),
        "n_source_disjoint": sum(1 for c in readable if c.held_out_source), "limit": limit, "seed": seed,
        "verify": verify, "zoo": str(zoo.path), "seconds": round(time.time() - t_start, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": command,
    }  # fmt: skip
    check_cancel(cancel)
    calibration = {}
    if any(n in SELECTOR_VARIANTS or n in PROTOTYPE_VARIANTS for n in names):
        calibration = dict(load_index(zoo).calibration or {})
    return EvaluationResult(models, readable, [{"name": r.name, "description": r.description} for r in ranker_objs],
                            results, metrics, protocol, leakage_checks(split, readable, excluded, zoo_paths),
                            calibration, unreadable)  # fmt: skip


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


def selector_encoder_id() -> str:
    """The id of the bundled encoder (for the report)."""
    from ..selection.prototypes import encoder_id

    return encoder_id(default_encoder())


__all__ = ["EvaluationResult", "ImageResult", "KS", "PROTOTYPE_VARIANTS", "PrototypeRanker", "RANKERS",
           "SELECTOR_VARIANTS", "SUBSETS", "SelectorRanker",
           "auroc", "average_precision", "class_correct", "evaluate_selection", "knn_references", "leakage_checks",
           "precision_at_k", "recall_at_k", "summarize"]  # fmt: skip
