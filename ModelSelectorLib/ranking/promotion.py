"""The promotion gate: a task's model is replaced only by a version that is really better.

:func:`promote` scores a candidate bundle and the task's current version on the same test cases (a test split
file, :func:`ModelSelectorLib.ranking.sweep.make_split`: cases no candidate was trained or ranked on; a split
holding cases that either model's metadata lists as its training or validation cases is refused), and
:func:`gate` decides:

* the mean per-case improvement (candidate minus current for Dice; current minus candidate for distances,
  so positive always means "better") must exceed ``min_improvement``, and
* a paired test must find it significant at ``level``: a one-sided Wilcoxon signed-rank test
  (``scipy.stats.wilcoxon``, p < 1 - level) or a paired bootstrap confidence interval of the mean
  improvement (two-sided, ``level``) whose lower bound is above zero.

An accepted candidate is copied into the zoo as a new version of the task (next version number, the card
renamed to the task) and made current in one atomic catalog write, with its test metrics, the gate's
numbers and the promotion date; the previous versions stay, so :func:`restore` can go back. A refusal is
recorded in the task's history and changes nothing else. An interrupted promotion leaves the catalog as it
was before (the bundle is copied under a temporary name and the catalog is replaced atomically).
:func:`retrain` trains a new candidate on new data with the current version's settings and runs the same gate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .. import atomic
from ..errors import BundleError, DatasetError, InputError, ModelSelectorError, TrainingError, ZooError
from ..evaluation.metrics import higher_is_better
from ..io.outputs import check_output_folder
from ..models.registry import runtime_class
from ..provenance import file_digest, utc_timestamp
from .scoring import evaluate_cases, primary_metric

PathLike = Union[str, "os.PathLike[str]"]
METHODS = ("wilcoxon", "bootstrap")


@dataclasses.dataclass
class GateResult:
    """The gate's decision and the numbers behind it.

    Attributes:
        accepted: whether the candidate may replace the current version.
        metric: the compared metric; ``higher_is_better`` its direction.
        n: number of paired test cases used.
        candidate_mean, current_mean: means of the metric over those cases.
        mean_improvement: mean per-case improvement (positive = candidate better), in the metric's units.
        method: ``"wilcoxon"`` or ``"bootstrap"``; ``level``: confidence level (e.g. 0.95).
        p_value: one-sided Wilcoxon p-value (``None`` for the bootstrap).
        ci: bootstrap confidence interval of the mean improvement (``None`` for Wilcoxon).
        min_improvement: the smallest mean improvement accepted.
        reason: one sentence explaining the decision.
    """

    accepted: bool
    metric: str
    higher_is_better: bool
    n: int
    candidate_mean: float
    current_mean: float
    mean_improvement: float
    method: str
    level: float
    p_value: Optional[float]
    ci: Optional[tuple[float, float]]
    min_improvement: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def text(self) -> str:
        """The numbers, one per line, for the command line."""
        arrow = "higher" if self.higher_is_better else "lower"
        lines = [
            f"metric {self.metric} ({arrow} is better) on {self.n} paired test cases",
            f"  candidate mean {self.candidate_mean:.4f}   current mean {self.current_mean:.4f}",
            f"  mean improvement {self.mean_improvement:+.4f} (required > {self.min_improvement:g})",
        ]
        if self.method == "wilcoxon":
            p = "n/a" if self.p_value is None else f"{self.p_value:.4g}"
            lines.append(f"  Wilcoxon signed-rank one-sided p = {p} (required < {1 - self.level:.3g})")
        elif self.ci is None:  # too few cases to resample (min_paired_cases)
            lines.append(f"  paired bootstrap: {self.n} case(s), fewer than the {min_paired_cases(self.level)} any "
                         f"paired test needs at the {self.level:.0%} level")  # fmt: skip
        else:
            lo, hi = self.ci
            lines.append(f"  paired bootstrap {self.level:.0%} CI of the improvement [{lo:+.4f}, {hi:+.4f}] "
                         "(required: lower bound > 0)")  # fmt: skip
        lines.append(f"  {'ACCEPTED' if self.accepted else 'REFUSED'}: {self.reason}")
        return "\n".join(lines)


def min_paired_cases(level: float) -> int:
    """The fewest paired cases with which any paired test can be significant at ``level``: n such that even n
    improvements out of n (a one-sided sign or signed-rank test's smallest p-value, 2^-n) stay below 1 - level
    (5 at 0.95). The bootstrap gate refuses fewer; with Wilcoxon the p-value itself cannot get there."""
    return int(np.floor(np.log2(1.0 / (1.0 - float(level))))) + 1


def gate(
    candidate: Sequence[float],
    current: Sequence[float],
    metric: str = "dice",
    method: str = "wilcoxon",
    level: float = 0.95,
    min_improvement: float = 0.0,
    n_boot: int = 10000,
    seed: int = 0,
) -> GateResult:
    """Decide whether per-case scores ``candidate`` beat ``current`` (same cases, same order).

    Cases where either score is missing (NaN/None) are left out of the comparison.

    Raises:
        ModelSelectorError: unequal lengths, unknown method, a level outside (0, 1), or no paired case.
    """
    if method not in METHODS:
        raise InputError(f"gate method {method!r} is unknown; use one of {', '.join(METHODS)}.")
    if not 0.0 < level < 1.0:
        raise InputError(f"level {level} must lie between 0 and 1 (e.g. 0.95).")
    a = np.array([np.nan if v is None else float(v) for v in candidate], dtype=float)
    b = np.array([np.nan if v is None else float(v) for v in current], dtype=float)
    if a.shape != b.shape:
        raise ModelSelectorError(
            f"{a.size} candidate scores and {b.size} current scores: the cases must match."
        )
    ok = np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        raise ModelSelectorError(f"no test case has a {metric} score for both models; nothing to compare.")
    a, b = a[ok], b[ok]
    hib = higher_is_better(metric)
    d = (a - b) if hib else (b - a)
    mean = float(d.mean())
    p_value: Optional[float] = None
    ci: Optional[tuple[float, float]] = None
    if method == "wilcoxon":
        from scipy.stats import wilcoxon

        if np.allclose(d, 0.0):
            p_value = 1.0
        else:
            p_value = float(wilcoxon(d, alternative="greater", zero_method="wilcox").pvalue)
        significant = p_value < 1.0 - level
        test = f"Wilcoxon p = {p_value:.4g} {'<' if significant else '>='} {1 - level:.3g}"
        if d.size < min_paired_cases(level):  # said, or a refusal reads as the candidate's fault
            test += (f" ({d.size} paired case(s) cannot give p below {2.0 ** -d.size:.4g}: no candidate can pass at "
                     f"the {level:.0%} level; a test split of at least {min_paired_cases(level)} cases can)")  # fmt: skip
    elif d.size < min_paired_cases(level):  # a few cases resample into a narrow interval that means nothing
        significant = False
        test = (f"{d.size} paired case(s) cannot show a difference at the {level:.0%} level (at least "
                f"{min_paired_cases(level)} are needed, as for any paired test)")  # fmt: skip
    else:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, d.size, size=(int(n_boot), d.size))
        means = d[idx].mean(axis=1)
        lo, hi = np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
        ci = (float(lo), float(hi))
        significant = ci[0] > 0.0
        test = f"{level:.0%} bootstrap CI lower bound {ci[0]:+.4f} {'>' if significant else '<='} 0"
    big_enough = mean > min_improvement
    accepted = bool(big_enough and significant)
    if accepted:
        reason = f"mean improvement {mean:+.4f} > {min_improvement:g} and {test}."
    elif not big_enough:
        reason = f"mean improvement {mean:+.4f} is not above {min_improvement:g}."
    else:
        reason = f"the improvement {mean:+.4f} is not significant: {test}."
    return GateResult(accepted, metric, hib, int(d.size), float(a.mean()), float(b.mean()), mean, method,
                      float(level), p_value, ci, float(min_improvement), reason)  # fmt: skip


# --- promotion ------------------------------------------------------------------------------------------
def default_split(zoo: Any, task: str) -> Optional[Path]:
    """The test split of a task: the one its current version was promoted on, else the task's sweep split."""
    from .sweep import TEST_SPLIT, sweep_dir

    if task in zoo:
        split = (zoo.version_info(task).get("evaluation") or {}).get("split")
        if split and (Path(zoo.path) / split).is_file():  # recorded relative to the zoo (or absolute)
            return Path(zoo.path) / split
    p = sweep_dir(zoo.path, task) / TEST_SPLIT
    return p if p.is_file() else None


def _scores(cases: Sequence[dict[str, Any]], metric: str) -> list[Optional[float]]:
    out = []
    for c in cases:
        if metric not in c:
            unheld = [n for n in c.get("not_measured") or [] if metric.endswith(f"_{n}")]
            if unheld:
                raise InputError(f"metric {metric!r} is not measured on this split: no case holds {unheld[0]}; "
                                 "gate on another metric or use a split whose cases hold it.")  # fmt: skip
            known = sorted(k for k, v in c.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
            raise InputError(f"metric {metric!r} is not computed; choose one of: {', '.join(known)}.")
        v = c[metric]
        out.append(None if v is None or not np.isfinite(v) else float(v))
    return out


def summary_over_cases(cases: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Each metric of the per-case results over all cases, as a card records it: the mean, except a root mean
    square (``rmse_*``), which is the root of the mean of the cases' squares (over cases with equally many
    points, the RMS over all points, as the training reports give it)."""
    from .leaderboard import metric_names, summarize

    means = {m: summarize(cases, m)["mean"] for m in metric_names(cases)}
    return {m: round(float(v), 6) for m, v in means.items() if v is not None}


@contextlib.contextmanager
def _zoo_to_promote_in(zoo_dir: PathLike, split: Optional[PathLike]) -> Iterator[Any]:
    """The zoo of a promotion. A missing one is made only with a split to test on (a mistyped ``--zoo`` is named
    rather than made into an empty zoo), and is removed again when nothing was promoted into it (a dry run, a
    refusal, an error), so that a mistyped ``--zoo`` with a ``--split`` leaves nothing behind either."""
    from ..zoo.catalog import CATALOG, Zoo

    if split is None and not (Path(zoo_dir) / CATALOG).is_file():
        raise ZooError(f"{zoo_dir}: no zoo there; check --zoo (a new zoo is made only with a --split).")
    made = not Path(zoo_dir).exists()
    zoo = Zoo.create(zoo_dir)
    try:
        yield zoo
    finally:
        if made and not zoo.reload().names():
            shutil.rmtree(zoo_dir, ignore_errors=True)


def _test_split(split_data: dict[str, Any], split_path: Path) -> dict[str, Any]:
    """``split_data``, refused when its ``purpose`` says it is a sweep's selection split: the sweep chose its winner
    on those cases, so a comparison there would favour it."""
    if str(split_data.get("purpose", "")).startswith("selection"):
        raise DatasetError(f"{split_path}: is a sweep's selection split, where the sweep chose its winner; the gate "
                           f"compares on the test split ({split_path.with_name('test_split.json')}).")  # fmt: skip
    return split_data


def _imported_candidate(zoo: Any, task: str, candidate: Path, folder: Path, trust: bool = False) -> Path:
    """A standard MONAI bundle (no card) copied into ``folder`` with the card ``zoo add`` would give it as the
    task's: its name, modality and body region (MONAI metadata names no region); returns the copy.

    Raises:
        ZooError: the task is not in the zoo (its first version is added with ``zoo add``).
        BundleError: the bundle cannot be imported (as ``zoo add`` would refuse it).
    """
    from ..zoo.bundle import copy_bundle, import_monai_bundle, write_card
    from ..zoo.trust import recorded_trust

    if task not in zoo:
        raise ZooError(
            f"{candidate}: a MONAI bundle without a card cannot be the first version of {task}; add it with "
            f"`modelselector zoo add {candidate} --name {task} --body-region REGION --zoo {zoo.path}`."
        )
    current = zoo.card(task)
    card = import_monai_bundle(candidate, modality=current.modality, body_region=current.body_region,
                               trust=trust or recorded_trust(candidate), name=task)  # fmt: skip
    copy = copy_bundle(candidate, folder / task)
    write_card(copy, card)
    return copy


def _check_compatible(candidate_card: Any, current_card: Any, task: str) -> None:
    if candidate_card.task_type != current_card.task_type:
        raise BundleError(
            f"the candidate is a {candidate_card.task_type} model and {task} a {current_card.task_type} model."
        )
    problem = runtime_class(current_card.task_type).replacement_problem(candidate_card, current_card)
    if problem:
        raise BundleError(f"{problem}; it cannot replace {task}.")


def _gate_labels(labels: dict[int, str], current_card: Any) -> dict[int, str]:
    """What both models are scored on for the gate: the split's labels, or (a split that names none, e.g.
    landmarks) the current model's outputs, so that a candidate with more outputs is compared on the same ones."""
    return labels or {int(lb["value"]): str(lb["name"]) for lb in current_card.labels}


def promote(
    zoo_dir: PathLike,
    task: str,
    candidate: PathLike,
    split: Optional[PathLike] = None,
    metric: Optional[str] = None,
    method: str = "wilcoxon",
    level: float = 0.95,
    min_improvement: float = 0.0,
    device: str = "cpu",
    cancel: Optional[Any] = None,
    dry_run: bool = False,
    candidate_label: Optional[str] = None,
    trust: bool = False,
) -> dict[str, Any]:
    """Gate a candidate bundle against the task's current version and promote it if it is better.

    Args:
        zoo_dir: the zoo (created if missing; a task not yet in it gets the candidate as its first version).
        task: model name of the task in the zoo.
        candidate: the candidate's bundle folder (e.g. a sweep's best model).
        split: test split file (default: :func:`default_split`).
        metric, method, level, min_improvement: the gate (see :func:`gate`); ``metric`` defaults to the task's
            ranking metric (``dice`` for segmentation, ``mre_mm`` for landmarks).
        dry_run: decide and report, change nothing.
        candidate_label: what the history and version record call the candidate (default: its path relative to
            the zoo; a candidate in a temporary folder needs words that stay true).
        trust: build the candidate's whole config as MONAI would (custom code, ``$`` expressions), as ``zoo add
            --trust`` does; the trust is recorded (:func:`~ModelSelectorLib.zoo.trust.remember_trust`) only when the
            candidate is promoted.

    Returns:
        ``{"accepted", "version" (new current, if accepted), "previous", "gate" (dict or None), "candidate":
        {metric means}, "current": {metric means} or None, "reason", "candidate_bundle" (path relative to the
        zoo), "candidate_card" ({"name", "version", "weights": {"bytes", "sha256"}})}``; the catalog's history
        and version record keep both.

    Raises:
        DatasetError: no or bad split. BundleError: incompatible or invalid candidate. ZooError.
    """
    with _zoo_to_promote_in(zoo_dir, split) as zoo:
        return _promote(zoo, task, candidate, split, metric, method, level, min_improvement, device, cancel, dry_run,
                        candidate_label, trust)  # fmt: skip


def _promote(
    zoo: Any, task: str, candidate: PathLike, split: Optional[PathLike], metric: Optional[str], method: str,
    level: float, min_improvement: float, device: str, cancel: Optional[Any], dry_run: bool,
    candidate_label: Optional[str], trust: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """:func:`promote` in ``zoo``."""
    from ..zoo.bundle import WEIGHTS_FILE, is_standard_monai_bundle, load_bundle
    from .leaderboard import metric_problem, split_in_pixels
    from .sweep import read_split

    # a MONAI bundle without a card (e.g. a new release of an imported one) is imported as zoo add would
    if is_standard_monai_bundle(candidate):
        with tempfile.TemporaryDirectory(prefix="modelselector-import-") as tmp:
            imported = _imported_candidate(zoo, task, Path(candidate), Path(tmp), trust)
            return _promote(zoo, task, imported, split, metric, method, level, min_improvement, device, cancel,
                            dry_run, candidate_label or _zoo_relative(Path(candidate), zoo.path), trust)  # fmt: skip
    if not dry_run:  # a read-only zoo is said before the evaluation, not after it
        check_output_folder(zoo.path, "--zoo")
    split_path = Path(split) if split else default_split(zoo, task)
    if split_path is None:
        raise ZooError(
            f"no test split for task {task!r}; pass --split FILE (a test_split.json written by "
            "`modelselector sweep`)."
        )
    split_data = _test_split(read_split(split_path), split_path)
    labels = split_data["labels"]
    bundles = [Path(candidate), *([zoo.get(task)] if task in zoo else [])]
    names = [candidate_label or str(candidate), *([f"{task} {zoo.current(task)}"] if task in zoo else [])]
    _check_unseen(split_data, split_path, bundles, names)
    cand = load_bundle(candidate, device=device, trust=trust or None)
    weights = file_digest(Path(candidate) / WEIGHTS_FILE)
    if task in zoo:  # before any evaluation: a candidate that cannot or need not replace the current model
        _check_compatible(cand.card, zoo.card(task), task)
        _check_not_a_version(zoo, task, str(weights["sha256"]))
    metric = metric or primary_metric(cand.card.task_type)
    problem = metric_problem(cand.card.task_type, metric, labels, split_in_pixels(split_data["cases"]))
    if problem:  # before any case is evaluated
        raise InputError(problem)
    cand_cases = evaluate_cases(cand, split_data["cases"], labels, device, cancel, desc="evaluate candidate")
    cand_scores = _scores(cand_cases, metric)
    result: dict[str, Any] = {"task": task, "metric": metric, "split": _zoo_relative(split_path, zoo.path),
                              "candidate": summary_over_cases(cand_cases),
                              "candidate_bundle": candidate_label or _zoo_relative(Path(candidate), zoo.path),
                              "candidate_card": _identity(cand.card, weights)}  # fmt: skip
    if task in zoo:
        current_version = zoo.current(task)
        cur = load_bundle(zoo.get(task), device=device)
        shared = _gate_labels(labels, cur.card)
        if shared != labels:  # the candidate again, on the current model's outputs
            cand_scores = _scores(evaluate_cases(cand, split_data["cases"], shared, device, cancel,
                                                 desc="evaluate candidate on the current outputs"), metric)  # fmt: skip
        cur_cases = evaluate_cases(cur, split_data["cases"], shared, device, cancel, desc="evaluate current")
        g = gate(cand_scores, _scores(cur_cases, metric), metric, method, level, min_improvement)
        result.update(current=summary_over_cases(cur_cases), previous=current_version, gate=g.to_dict(),
                      accepted=g.accepted, reason=g.reason, report=g.text())  # fmt: skip
    else:
        g = None
        result.update(current=None, previous=None, gate=None, accepted=True,
                      reason=f"{task} is not in the zoo yet; the candidate becomes its first version.",
                      report=f"{task} is not in the zoo yet; the candidate becomes its first version.")  # fmt: skip
    if dry_run:
        return result
    if not result["accepted"]:
        with zoo.writing() as data:  # the check and the record under one hold of the lock
            _check_current(data, task, result)
            zoo.record(task, {"action": "refuse", "candidate": result["candidate_bundle"],
                              "candidate_card": result["candidate_card"], "compared_with": result["previous"],
                              "metric": metric, "gate": result["gate"], "split": result["split"]})  # fmt: skip
        return result
    result["version"] = _install(zoo, task, Path(candidate), result, len(split_data["cases"]), trust)
    return result


def _install(
    zoo: Any, task: str, candidate: Path, result: dict[str, Any], n: int, trust: bool = False
) -> str:
    """Add an accepted candidate as the task's next version, current, with the gate's record (``result`` of
    :func:`promote`; ``n`` test cases); returns the version.

    Raises:
        ZooError: the task's current version changed while the candidate was evaluated (another promotion or a
            restore): the gate compared it with a version that is no longer current.
    """
    with zoo.writing() as data:  # the check, the version number and the add under one hold of the lock
        _check_current(data, task, result)
        return _add_version(zoo.reload(), task, candidate, result, n, trust)


def _check_current(data: dict[str, Any], task: str, result: dict[str, Any]) -> None:
    """Raise :class:`ZooError` when the current version of ``task`` in the catalog ``data`` is not the one the gate
    compared the candidate with (``result["previous"]``): another promotion or a restore changed it meanwhile, and
    the gate's verdict, either way, is about a version that is no longer current."""
    now = (data["models"].get(task) or {}).get("current")
    if now != result["previous"]:
        raise ZooError(f"{task} changed while the candidate was evaluated (its current version is now {now}, "
                       f"the gate compared with {result['previous']}); run promote again.")  # fmt: skip


def _add_version(
    zoo: Any, task: str, candidate: Path, result: dict[str, Any], n: int, trust: bool = False
) -> str:
    version = zoo.next_version(task)
    metric = result["metric"]
    info = {"promoted": utc_timestamp(), "source": result["candidate_bundle"], "source_card": result["candidate_card"],
            "evaluation": {"split": result["split"], "metric": metric, "test_metrics": result["candidate"],
                           "gate": result["gate"]}}  # fmt: skip
    event = {"action": "promote", "version": version, "from": result["previous"], "metric": metric,
             "candidate": result["candidate_bundle"], "candidate_card": result["candidate_card"],
             "gate": result["gate"]}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="modelselector-promote-") as tmp:
        tested = {"means": result["candidate"], "n_cases": n, "protocol": f"test split of {n} cases that no choice "
                  f"was made on ({Path(result['split']).name}; promotion gate)"}  # fmt: skip
        staged = _stage(candidate, Path(tmp) / task, task, version, tested)
        if result["previous"] is not None:
            _carry_provenance(zoo.get(task), staged, {"over": result["previous"], **info})
        zoo.add(staged, current=True, info=info, event=event, trust=trust)
    return version


def seen_case_ids(bundle: PathLike) -> set[str]:
    """The case ids a bundle trained or chose on, as far as it records them: the training and validation cases of
    a starter-zoo build (``metadata.json``) and of :func:`~ModelSelectorLib.training.segmentation.train_segmentation`
    and the landmark trainer (``docs/training_curve.json``: ``training_ids`` and ``validation_ids``, and the image
    file names an older build recorded); empty when it records none."""
    from ..datasets.msd import case_id
    from ..starter_zoo.recipes import METADATA_KEY
    from ..training.segmentation import CURVE_FILE
    from ..zoo.bundle import read_metadata

    seen: set[str] = set()
    try:
        block = read_metadata(Path(bundle)).get(METADATA_KEY) or {}
    except ModelSelectorError:
        block = {}
    for part in ("training_cases", "validation_cases"):
        seen |= {str(c.get("id")) for c in block.get(part) or []}
    try:
        curve = json.loads((Path(bundle) / CURVE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        curve = {}
    if "training_ids" in curve:
        return seen | {str(c) for part in ("training_ids", "validation_ids") for c in curve.get(part) or []}
    for part in ("training_cases", "validation_cases"):  # image file names, before ids were recorded
        seen |= {case_id(c) for c in curve.get(part) or [] if isinstance(c, str)}
    return seen


def seen_cases(bundle: PathLike, cases: Sequence[dict[str, Any]]) -> list[str]:
    """The ids of ``cases`` (a split's ``{"id", "image", ...}``) that ``bundle`` trained or chose on
    (:func:`seen_case_ids`), matched by the case's id or its image file's, each also without a label file's suffix:
    a split or a bundle of an earlier release took a case's id from its label file's name, after following
    symbolic links (``NAME_label``)."""
    from ..datasets.msd import case_id, without_label_suffix

    recorded = seen_case_ids(bundle)
    recorded |= {without_label_suffix(c) for c in recorded}
    out = []
    for case in cases:
        ids = {str(case.get("id"))} | ({case_id(case["image"])} if case.get("image") else set())
        if (ids | {without_label_suffix(c) for c in ids}) & recorded:
            out.append(str(case.get("id")))
    return sorted(out)


def _carry_provenance(current: Path, staged: Path, record: dict[str, Any]) -> None:
    """Record in a promoted bundle how it got there (``record``). A candidate built by ``build-starter-zoo``
    keeps its own provenance (recipe, case lists, build time); any other candidate (a sweep's) gets the data
    provenance of the version it replaces (same task, same data terms), without that version's case lists (see
    its training curve for the new model's cases)."""
    from ..starter_zoo.recipes import METADATA_KEY
    from ..zoo.bundle import read_metadata

    meta = read_metadata(staged)
    own = meta.get(METADATA_KEY)
    if own:
        meta[METADATA_KEY] = {**own, "promoted": record}
    else:
        block = read_metadata(current).get(METADATA_KEY)
        if not block:
            return
        drop = ("training_cases", "validation_cases", "check_cases", "build_time_s")
        meta[METADATA_KEY] = {**{k: v for k, v in block.items() if k not in drop}, "promoted": record}
    atomic.write_json(staged / "configs" / "metadata.json", meta)


def _check_unseen(
    split: dict[str, Any], split_path: Path, bundles: Sequence[Path], names: Optional[Sequence[str]] = None,
    remedy: str = "use a test split without them (a sweep's not_in_test keeps them out)",
) -> None:  # fmt: skip
    """Refuse a test split holding cases that a compared model trained or chose on: the comparison would favour it.

    Args:
        names: what the messages call each of ``bundles`` (default: their paths; a bundle in a temporary folder
            needs words that stay true).
        remedy: what the message tells the user to do.
    """
    for i, bundle in enumerate(bundles):
        seen = seen_cases(bundle, split["cases"])
        if seen:
            name = names[i] if names is not None else str(bundle)
            raise DatasetError(
                f"{split_path}: {len(seen)} test case(s) were training or validation cases of {name} "
                f"(e.g. {', '.join(seen[:3])}); {remedy}."
            )


def _check_not_a_version(zoo: Any, task: str, digest: str) -> None:
    """Refuse a candidate whose weights (SHA-256 ``digest``) are those of a version the task already has:
    promoted, it would be a second version of the same model, and the history would no longer say which one is
    which. A version's digest is the one the catalog recorded, else its file's."""
    version = zoo.version_with_weights(task, digest)
    if version is not None:
        now = " (the current one)" if version == zoo.current(task) else ""
        raise BundleError(
            f"the candidate has the weights of {task} {version}{now}, which the zoo already holds; to make "
            f"it current again use `modelselector restore --zoo {zoo.path} --task {task} --version {version}`."
        )


def _identity(card: Any, weights: dict[str, Any]) -> dict[str, Any]:
    """What the candidate was, recorded beside its path (which may name a folder that is later deleted): its
    card's name and version and the size and SHA-256 of its weights (``weights``), which the promoted version
    keeps."""
    return {"name": card.name, "version": card.version, "weights": weights}


def _zoo_relative(path: Path, zoo_dir: PathLike) -> str:
    """``path`` as the catalog records it: relative to the zoo folder, so that a zoo names no machine path."""
    return Path(os.path.relpath(Path(path).resolve(), Path(zoo_dir).resolve())).as_posix()


def _stage(src: Path, dest: Path, task: str, version: str, tested: Optional[dict[str, Any]] = None) -> Path:
    """Copy a bundle to ``dest`` with its card renamed to ``task`` ``version``; ``tested`` (``{"means",
    "n_cases", "protocol"}``) records the gate's test result on the card as test figures (``test_*``, with their
    own case count) beside the candidate's own validation figures, which stay as they were."""
    from ..zoo.bundle import copy_bundle, validate_bundle, write_card
    from ..zoo.card import ModelCard

    card = validate_bundle(src)
    copy_bundle(src, dest)  # never follows symbolic links out of the candidate
    fields = {**card.to_dict(), "name": task, "version": version}
    if tested:
        metrics = runtime_class(card.task_type).test_metrics(
            tested["means"], tested["n_cases"], tested["protocol"]
        )
        fields["validation_metrics"] = {**_own_validation(card.validation_metrics), **metrics}
    write_card(dest, ModelCard.from_dict(fields))
    return dest


def _check_same_labels(dataset: Any, card: Any, current: str) -> None:
    """Refuse, before training, new data whose labels would come out of the network in another order or with
    other names than ``card``'s (class indices follow the order of the data's label values).

    Raises:
        DatasetError: naming both lists and what to change.
    """
    from ..training.segmentation import dataset_labels

    new = [(int(lb["value"]), str(lb["name"])) for lb in dataset_labels(dataset)]
    old = [(int(lb["value"]), str(lb["name"])) for lb in card.labels]
    if new != old:
        raise DatasetError(
            f"{dataset.root}: its labels come out of a network as {', '.join(f'{v} {n}' for v, n in new)}, and "
            f"{current}'s as {', '.join(f'{v} {n}' for v, n in old)} (a model's outputs follow the order of the "
            "data's label values); number the labels in dataset.json in the same order and with the same names."
        )


def _own_validation(validation: dict[str, Any]) -> dict[str, Any]:
    """The candidate's own figures (``validation``), names, values and case count as they were, to go beside the
    gate's test figures (:meth:`~ModelSelectorLib.models.base.TaskRuntime.test_metrics`, named ``test_*``). Only
    the figures of an earlier test (``test_*``, e.g. of the candidate's own test images or of an earlier gate) are
    left out: measured on other cases, they would be read with the gate's case count and protocol."""
    return {k: v for k, v in validation.items() if not k.startswith("test_")}


def restore(zoo_dir: PathLike, task: str, version: Optional[str] = None) -> dict[str, Any]:
    """Make an earlier version of ``task`` current again (default: the one current before the present one).

    Returns:
        ``{"task", "version" (now current), "from"}``.

    Raises:
        ZooError: unknown task or version, or no earlier version.
    """
    from ..zoo.catalog import Zoo

    zoo = Zoo(zoo_dir)
    current = zoo.current(task)
    target = version or zoo.previous(task)
    if target is None:
        raise ZooError(f"{task} has only version {current}; there is nothing earlier to restore.")
    if target == current:
        raise ZooError(f"{task} version {target} is already current.")
    zoo.set_current(task, target, event={"action": "restore"})
    return {"task": task, "version": target, "from": current}


def _is_test_case(case: dict[str, Any], test_cases: Sequence[dict[str, Any]]) -> bool:
    """Whether a dataset case is one of a split's test cases: the same case id
    (:func:`~ModelSelectorLib.datasets.msd.case_id_of`, as the split records it; an older split's image name) or
    the same image file. By id, so that a new copy of the data (another folder holding the same cases, in
    MSD or nnU-Net form) never trains on the test cases."""
    from ..datasets.msd import case_id, case_id_of

    ids = {str(c.get("id")) for c in test_cases} | {case_id(c["image"]) for c in test_cases}
    paths = {str(Path(c["image"]).resolve()) for c in test_cases}
    own = {case_id_of(case), case_id(case["image"])}
    return bool(own & ids) or str(Path(case["image"]).resolve()) in paths


def retrain(
    zoo_dir: PathLike,
    task: str,
    dataset_dir: PathLike,
    split: Optional[PathLike] = None,
    settings: Optional[dict[str, Any]] = None,
    metric: str = "dice",
    method: str = "wilcoxon",
    level: float = 0.95,
    min_improvement: float = 0.0,
    device: str = "cpu",
    cancel: Optional[Any] = None,
) -> dict[str, Any]:
    """Train ``task`` again on a (new) MSD dataset and promote the result only if the gate accepts it.

    The training settings are those the current version was trained with (its ``configs/train_config.json``),
    updated with ``settings``. Test cases of the split are removed from the training data by case id (the image
    file name without its extension) as well as by path, so a new copy of the data never trains on them.

    Returns:
        :func:`promote`'s result.
    """
    from ..datasets.msd import load_msd
    from ..training.segmentation import TRAIN_CONFIG_FILE, TrainConfig, train_segmentation
    from ..zoo.catalog import Zoo
    from .sweep import read_split

    zoo = Zoo(zoo_dir)  # retraining needs the task's current version: no zoo is made here
    if task not in zoo:
        known = ", ".join(zoo.names()) or "none"
        raise ZooError(f"{zoo.path} has no model {task!r} to retrain (its models: {known}); train a first version "
                       "with `modelselector train` and `zoo add` it, or check the name.")  # fmt: skip
    if not runtime_class(zoo.card(task).task_type).retrains_from_msd:
        raise ZooError(f"{task} is a {zoo.card(task).task_type} model and retrain trains segmentation models from an "
                       "MSD folder; train a candidate (for landmarks: `modelselector landmarks train` or a landmark "
                       "sweep) and `modelselector promote` it.")  # fmt: skip
    split_path = Path(split) if split else default_split(zoo, task)
    if split_path is None:
        raise ZooError(f"no test split for task {task!r}; pass --split FILE.")
    split_data = _test_split(read_split(split_path), split_path)
    _check_unseen(split_data, split_path, [zoo.get(task)], [f"{task} {zoo.current(task)}"],
                  f"pass --split with a test split whose cases {task} {zoo.current(task)} did not learn from")  # fmt: skip
    base: dict[str, Any] = {}
    if (zoo.get(task) / TRAIN_CONFIG_FILE).is_file():
        base = json.loads((zoo.get(task) / TRAIN_CONFIG_FILE).read_text(encoding="utf-8"))
        base.pop("version", None)
    # "retrained": the history's record of the candidate names no version the task has (it gets the next one)
    config = TrainConfig.from_dict({**base, **(settings or {}), "version": "retrained"})
    dataset = load_msd(dataset_dir)
    _check_same_labels(dataset, zoo.card(task), f"{task} {zoo.current(task)}")
    keep = [c for c in dataset.training if not _is_test_case(c, split_data["cases"])]
    left_out = len(dataset.training) - len(keep)
    if len(keep) < 2:
        raise TrainingError(f"{dataset.root}: fewer than 2 cases are left once the {left_out} test case(s) of "
                            f"{split_path} are removed; add training cases.")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="modelselector-retrain-") as tmp:
        raw = {
            **dataset.raw,
            "training": [{"image": str(c["image"]), "label": str(c["label"])} for c in keep],
        }
        raw["numTraining"] = len(keep)
        (Path(tmp) / "data").mkdir()
        (Path(tmp) / "data" / "dataset.json").write_text(json.dumps(raw), encoding="utf-8")
        card = zoo.card(task)
        bundle = train_segmentation(Path(tmp) / "data", task, Path(tmp) / "zoo", config, modality=card.modality,
                                    body_region=card.body_region, cancel=cancel)  # fmt: skip
        changed = ", ".join(f"{k}={v}" for k, v in sorted((settings or {}).items())) or "the current settings"
        label = (f"retrained on {len(keep)} cases of {dataset.root.resolve()} ({left_out} test case(s) left out) "
                 f"with {changed}")  # fmt: skip
        return promote(zoo_dir, task, bundle, split_path, metric, method, level, min_improvement, device, cancel,
                       candidate_label=label)  # fmt: skip


__all__ = [
    "METHODS",
    "GateResult",
    "default_split",
    "gate",
    "promote",
    "restore",
    "retrain",
    "seen_case_ids",
    "seen_cases",
    "summary_over_cases",
]
