"""Sweeps: train competing configurations of one task, rank them on a selection split, keep a test split.

A sweep file (YAML) names the task, the shared settings, and the candidates as a grid or a list::

    task: lungs                    # candidates become zoo models "lungs-<candidate>"
    seed: 0                        # split and training seed
    test_fraction: 0.2             # share of the cases held out as the test split (for `promote`; never ranked on)
    selection_fraction: 0.2        # share held out as the selection split (the leaderboard ranks on it)
    not_in_test: shipped.txt       # optional: case ids (a list, or a file of one id per line, relative to the
                                   # sweep file) that may not become test cases, e.g. the current model's
                                   # training cases
    base:                          # TrainConfig settings shared by every candidate
      roi_size: [128, 128]
      target_spacing: [2.8, 2.8]
      epochs: 20
    grid:                          # every combination (cartesian product) ...
      architecture: [unet, segresnet]
      loss: [dice, dicece]
    candidates:                    # ... and/or an explicit list (a "name" key is optional)
      - {name: attn, architecture: attentionunet, lr: 0.0005}

Output (``out`` is a zoo folder; candidate bundles go into it as models ``<task>-<candidate>``)::

    ZOO/zoo.json, ZOO/models/<task>-<candidate>/<version>/   bundles with card, training curve, train config
    ZOO/sweeps/<task>/sweep.json                              the sweep, its candidates and their status (every
                                                              run's; sweep_file_candidates: those of the last one)
    ZOO/sweeps/<task>/selection_split.json                    the cases the candidates are ranked on
    ZOO/sweeps/<task>/test_split.json                         the test cases: no candidate trains or is ranked
                                                              on them; `promote` compares on them
    ZOO/sweeps/<task>/train/dataset.json                      the training cases (MSD, absolute paths)
    ZOO/sweeps/<task>/evaluation/<candidate>.json             per-case metrics of each candidate
    ZOO/sweeps/<task>/report/leaderboard.html, dashboards/    see :mod:`ModelSelectorLib.ranking`

Executors: ``"local"`` runs candidates in parallel worker processes (``concurrent.futures``, spawn start
method; ``workers`` processes with ``threads`` torch threads each); ``"ray"`` sends them to a Ray cluster
(``address``; Ray is an optional extra, ``pip install "ModelSelectorLib[ray]"``). Ray workers must see the
dataset at the same path (shared file system); each returns its bundle as a tar archive.
A candidate whose bundle is already in the zoo with the same training settings is not trained again; one trained
again (``retrain``) or with other settings becomes the next version of its model.

Choosing the winner and testing it are separate: the leaderboard ranks on the selection split, and the
promotion gate (:mod:`.promotion`) compares the winner with the task's current model on the test split, which
no choice has seen.

``task_type: landmarks`` makes a sweep of landmark models (:mod:`.landmark_sweep`): the dataset is a landmark
folder and the settings are those of the landmark trainer (``variant``, ``fraction``, ``refine_steps``, ...);
candidates are scored through their task runtime (MRE, SDR, lung Dice). Its splits are kept apart as here: the
leaderboard ranks on the selection images, the test images (never ``not_in_test`` ones; case ids are image ids)
are left for the promotion gate.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import io
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

from .. import atomic
from ..datasets.labelmaps import is_identity
from ..datasets.msd import case_id, case_id_of, load_msd
from ..datasets.split_file import check_earlier_split, draw_test, read_split, write_split
from ..errors import DatasetError, InputError, ModelSelectorError, TrainingError
from ..models.landmarks import LandmarkRuntime
from ..models.registry import DEFAULT_TASK_TYPE
from ..progress import check_cancel, progress_bar
from ..zoo.card import safe_name
from ..zoo.catalog import SWEEPS
from . import landmark_sweep
from .scoring import primary_metric

PathLike = Union[str, "os.PathLike[str]"]

#: the task types a sweep can train, and the module that checks, splits and trains the candidates of each
#: (None: segmentation, this module's own MSD split and trainer)
SWEEP_TASKS: dict[str, Any] = {DEFAULT_TASK_TYPE: None, LandmarkRuntime.task_type: landmark_sweep}
EXECUTORS = ("local", "ray")
_SPEC_KEYS = {
    "task",
    "task_type",
    "seed",
    "test_fraction",
    "selection_fraction",
    "not_in_test",
    "base",
    "grid",
    "candidates",
    "modality",
    "body_region",
}


# --- the sweep file -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Candidate:
    """One configuration of a sweep: ``name`` (unique in the sweep) and its TrainConfig ``settings``."""

    name: str
    settings: dict[str, Any]

    def config_hash(self) -> str:
        """Short hash of the settings (identifies a trained candidate)."""
        text = json.dumps(self.settings, sort_keys=True, default=str)
        return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


@dataclasses.dataclass
class SweepSpec:
    """A parsed sweep file (see the module docstring)."""

    task: str
    candidates: list[Candidate]
    seed: int = 0
    test_fraction: float = 0.2
    modality: Optional[str] = None
    body_region: Optional[str] = None
    task_type: str = DEFAULT_TASK_TYPE
    selection_fraction: float = 0.2
    not_in_test: tuple[str, ...] = ()

    def model_name(self, candidate: Candidate) -> str:
        """Zoo model name of a candidate: ``<task>-<candidate>``."""
        return safe_name(f"{self.task}-{candidate.name}")


def _short(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return "x".join(_short(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _auto_name(varying: dict[str, Any]) -> str:
    parts = []
    for key, value in varying.items():
        if key in ("architecture", "loss"):
            parts.append(_short(value))
        elif key == "augment":
            parts.append("aug" if value else "noaug")
        else:
            parts.append(f"{key.replace('_', '')}{_short(value)}")
    return safe_name("-".join(parts) or "default")


def expand_sweep(data: dict[str, Any]) -> SweepSpec:
    """Build a :class:`SweepSpec` from a parsed sweep file; every candidate's settings are checked.

    Raises:
        TrainingError: unknown keys, an empty sweep, duplicate names, or settings TrainConfig refuses.
    """
    if not isinstance(data, dict):
        raise TrainingError(
            "a sweep file must hold a mapping with 'task', 'base' and 'grid' or 'candidates'."
        )
    unknown = sorted(set(data) - _SPEC_KEYS)
    if unknown:
        raise TrainingError(
            f"unknown sweep key(s) {', '.join(unknown)}; known: {', '.join(sorted(_SPEC_KEYS))}."
        )
    task = data.get("task")
    if not task or not isinstance(task, str):
        raise TrainingError(
            "the sweep file needs 'task: NAME' (candidates become zoo models NAME-<candidate>)."
        )
    base = dict(data.get("base") or {})
    grid = data.get("grid") or {}
    listed = data.get("candidates") or []
    if not isinstance(base, dict) or not isinstance(grid, dict) or not isinstance(listed, list):
        raise TrainingError("'base' and 'grid' must be mappings and 'candidates' a list of mappings.")
    seed = int(data.get("seed", base.get("seed", 0)))
    base.setdefault("seed", seed)
    raw: list[tuple[Optional[str], dict[str, Any]]] = []
    if grid:
        keys = list(grid)
        values = [v if isinstance(v, list) else [v] for v in grid.values()]
        for combo in itertools.product(*values):
            raw.append((None, dict(zip(keys, combo))))
    for i, item in enumerate(listed):
        if not isinstance(item, dict):
            raise TrainingError(f"candidates[{i}] must be a mapping of settings.")
        item = dict(item)
        raw.append((item.pop("name", None), item))
    if not raw:
        raise TrainingError("the sweep has no candidates; add a 'grid' or a 'candidates' list.")
    task_type = str(data.get("task_type") or DEFAULT_TASK_TYPE)
    if task_type not in SWEEP_TASKS:
        raise TrainingError(
            f"task_type {task_type!r}: a sweep trains one of {', '.join(sorted(SWEEP_TASKS))}."
        )
    candidates: list[Candidate] = []
    for name, varying in raw:
        settings = {**base, **varying}
        try:
            _check_candidate(task_type, settings)
        except TrainingError as e:
            raise TrainingError(f"sweep candidate {name or varying}: {e}") from e
        cand = Candidate(safe_name(name) if name else _auto_name(varying), settings)
        candidates.append(cand)
    names = [c.name for c in candidates]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TrainingError(f"sweep candidate names repeat: {', '.join(dupes)}; give each a distinct 'name'.")
    fraction = float(data.get("test_fraction", 0.2))
    selection = float(data.get("selection_fraction", 0.2))
    for key, value in (("test_fraction", fraction), ("selection_fraction", selection)):
        if not 0.0 < value < 1.0:
            raise TrainingError(f"{key} {value} must lie between 0 and 1.")
    if fraction + selection >= 1.0:
        raise TrainingError(
            f"test_fraction + selection_fraction = {fraction + selection:g} leaves no training cases."
        )
    not_in_test = data.get("not_in_test") or []
    if isinstance(not_in_test, str) or not all(isinstance(c, str) for c in not_in_test):
        raise TrainingError("not_in_test must be a list of case ids (or, in a sweep file, a file of them).")
    return SweepSpec(
        safe_name(task), candidates, seed, fraction, data.get("modality"), data.get("body_region"), task_type,
        selection, tuple(not_in_test),
    )  # fmt: skip


def _check_candidate(task_type: str, settings: dict[str, Any]) -> None:
    if SWEEP_TASKS.get(task_type) is not None:
        SWEEP_TASKS[task_type].check_settings(settings)
        return
    from ..training.segmentation import TrainConfig

    TrainConfig.from_dict(settings).check()


def load_sweep(path: PathLike) -> SweepSpec:
    """Read and expand a sweep YAML file.

    Raises:
        TrainingError: missing file, invalid YAML, or an invalid sweep (see :func:`expand_sweep`).
    """
    from ..settings import read_settings_file

    p = Path(path)
    data = read_settings_file(p, "sweep")
    if isinstance(data, dict) and isinstance(data.get("not_in_test"), str):  # a file of ids beside the sweep
        ids_file = p.parent / data["not_in_test"]
        if not ids_file.is_file():
            raise TrainingError(f"{p}: not_in_test names {ids_file}, which does not exist.")
        data = {**data, "not_in_test": ids_file.read_text(encoding="utf-8").split()}
    try:
        return expand_sweep(data)
    except TrainingError as e:
        raise TrainingError(f"{p}: {e}") from e


# --- the fixed splits -----------------------------------------------------------------------------------
#: split file names in ``ZOO/sweeps/<task>/``
SELECTION_SPLIT, TEST_SPLIT = "selection_split.json", "test_split.json"


def make_split(
    dataset_dir: PathLike,
    work_dir: PathLike,
    test_fraction: float = 0.2,
    seed: int = 0,
    selection_fraction: float = 0.2,
    not_in_test: Sequence[str] = (),
) -> tuple[Path, Path, Path]:
    """Hold out a fixed test split and a fixed selection split of an MSD dataset.

    Writes ``work_dir/train/dataset.json`` (the remaining cases, absolute paths), ``work_dir/selection_split.json``
    (the cases candidates are ranked on) and ``work_dir/test_split.json`` (the cases the promotion gate compares
    on; no candidate trains or is ranked on them), each ``{"dataset", "seed", "labels", "purpose", "cases":
    [{"id", "image", "label"}]}``. Case ids in ``not_in_test`` (e.g. the current model's training cases) are
    never drawn into the test split. An existing split of the same dataset is kept, so every candidate (and every
    later sweep or promotion) sees the same cases.

    Returns:
        ``(training dataset folder, selection split file, test split file)``.

    Raises:
        DatasetError: fewer than 4 cases, too few cases outside ``not_in_test``, a split of another dataset, or
            a folder from a sweep that ranked on its test split.
    """
    dataset = load_msd(dataset_dir)
    work = Path(work_dir)
    test_file, selection_file, train_dir = work / TEST_SPLIT, work / SELECTION_SPLIT, work / "train"
    # the split names the labels as the models output them (1..K); ``label_values`` maps the files' values to them
    mapping = dataset.class_indices
    labels = {str(mapping[v]): name for v, name in sorted(dataset.foreground_labels.items())}
    values = {} if is_identity(mapping) else {"label_values": {str(v): i for v, i in mapping.items() if v}}
    if test_file.is_file() and (train_dir / "dataset.json").is_file():
        kept = read_split(test_file)
        check_earlier_split(test_file, kept.get("dataset"), dataset.root, [selection_file], kept, not_in_test, seed,
                            test_fraction)  # fmt: skip
        _check_kept_labels(test_file, kept, labels, values.get("label_values", {}))
        return train_dir, selection_file, test_file
    n = len(dataset.training)
    if n < 4:
        raise DatasetError(f"{dataset.root}: {n} case(s); a sweep needs at least 4 (test, selection, training, "
                           "validation).")  # fmt: skip
    ids = [case_id_of(c) for c in dataset.training]
    n_test = min(n - 3, max(1, int(round(n * test_fraction))))
    order, test_idx = draw_test(ids, seed, n_test, not_in_test, dataset.root)
    n_sel = min(n - n_test - 2, max(1, int(round(n * selection_fraction))))
    sel_idx = [i for i in order if i not in set(test_idx)][:n_sel]
    held = set(test_idx) | set(sel_idx)
    raw = dict(dataset.raw)
    raw["training"] = [{"image": str(c["image"]), "label": str(c["label"])}
                       for i, c in enumerate(dataset.training) if i not in held]  # fmt: skip
    raw["numTraining"] = len(raw["training"])
    raw.pop("val_fraction", None)
    raw["description"] = (f"{dataset.description} (sweep training part; {n_test} test and {n_sel} selection "
                          "cases held out)").strip()  # fmt: skip
    atomic.write_json(train_dir / "dataset.json", raw)
    for path, idx, fraction, purpose in (
        (
            selection_file,
            sel_idx,
            selection_fraction,
            "selection: the leaderboard ranks the candidates on it",
        ),
        (
            test_file,
            test_idx,
            test_fraction,
            "test: the promotion gate compares on it; nothing is chosen on it",
        ),
    ):
        cases = [{"id": ids[i], "image": str(dataset.training[i]["image"]), "label": str(dataset.training[i]["label"])}
                 for i in sorted(idx)]  # fmt: skip
        write_split(
            path, dataset.root, cases, labels, seed, purpose=purpose, fraction=float(fraction), **values
        )
    return train_dir, selection_file, test_file


def _check_kept_labels(
    test_file: Path, kept: dict[str, Any], labels: dict[str, str], values: dict[str, int]
) -> None:
    """Refuse, before any training, a kept split that names the labels otherwise than the models will output
    them (e.g. one written before label values were mapped to 1..K): its cases would be scored against the wrong
    values."""
    said = {str(k): str(v) for k, v in (kept.get("labels") or {}).items()}
    said_values = {str(k): int(v) for k, v in (kept.get("label_values") or {}).items()}
    if said != labels or said_values != {str(k): int(v) for k, v in values.items()}:
        raise DatasetError(
            f"{test_file}: names the labels {said} (label values {said_values or 'as in the files'}), and this "
            f"sweep's models output {labels} (label values {values or 'as in the files'}); start a new sweep "
            "(another --out zoo or task name) so that the split is drawn again."
        )


# --- workers --------------------------------------------------------------------------------------------
def _train_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one candidate into a private zoo (a process of its own); returns where the bundle is."""
    import torch

    from ..training.segmentation import TrainConfig, train_segmentation

    threads = int(job.get("threads") or 1)
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    t0 = time.monotonic()
    backend = SWEEP_TASKS.get(job.get("task_type", DEFAULT_TASK_TYPE))
    if backend is not None:
        bundle = backend.train(job)
    else:
        settings = dict(job["settings"])
        settings.setdefault("num_threads", threads)
        config = TrainConfig.from_dict(settings)
        bundle = train_segmentation(job["dataset"], job["model"], job["zoo"], config,
                                    modality=job.get("modality"), body_region=job.get("body_region"))  # fmt: skip
    out = {"candidate": job["candidate"], "bundle": str(bundle), "seconds": round(time.monotonic() - t0, 1)}
    if job.get("return_archive"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(str(bundle), arcname=job["model"])
        out["archive"] = buf.getvalue()
        shutil.rmtree(job["zoo"], ignore_errors=True)
    return out


def _as_next_version(zoo: Any, model: str, bundle: Path) -> None:
    """Give ``bundle`` (a candidate's freshly trained copy, trained into a zoo of its own) the zoo's next version of
    ``model``: a candidate retrained (``--retrain``) or trained with other settings is a new version of its model,
    numbered above every version the zoo holds or removed, whatever its private zoo called it."""
    from ..zoo.bundle import validate_bundle, write_card
    from ..zoo.card import ModelCard

    card, version = validate_bundle(bundle), zoo.next_version(model)
    if card.version != version:
        write_card(bundle, ModelCard.from_dict({**card.to_dict(), "version": version}))


def _unpack(archive: bytes, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar.getmembers():
            if (
                member.name.startswith(("/", ".."))
                or ".." in Path(member.name).parts
                or member.issym()
                or member.islnk()
            ):
                raise ModelSelectorError(
                    f"refusing unsafe path {member.name!r} in a worker's bundle archive."
                )
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python < 3.12 without extraction filters: members were checked above
            tar.extractall(dest)
    return dest


def run_local(
    jobs: Sequence[dict[str, Any]],
    workers: int,
    cancel: Optional[Any] = None,
    on_done: Optional[Callable] = None,
) -> list[dict[str, Any]]:
    """Run training jobs in ``workers`` spawned processes; returns results in completion order."""
    results: list[dict[str, Any]] = []
    if not jobs:
        return results
    ctx = multiprocessing.get_context("spawn")
    pool = cf.ProcessPoolExecutor(max_workers=max(1, min(int(workers), len(jobs))), mp_context=ctx,
                                  initializer=_leave_interrupts_to_the_parent)  # fmt: skip
    try:
        futures = {pool.submit(_train_one, job): job for job in jobs}
        pending = set(futures)
        while pending:
            check_cancel(cancel)
            done, pending = cf.wait(pending, timeout=0.5, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                res = _result(fut, futures[fut])
                results.append(res)
                if on_done:
                    on_done(res)
    except BaseException:
        procs = list((getattr(pool, "_processes", None) or {}).values())  # the workers this pool started
        for proc in procs:
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.join(timeout=10)
        raise
    pool.shutdown(wait=True)
    return results


def _leave_interrupts_to_the_parent() -> None:
    """A worker ignores Ctrl-C (the terminal sends it to the whole process group): the parent cancels the sweep
    and stops its workers, so the user sees one line, not a traceback from every worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _result(fut: Any, job: dict[str, Any]) -> dict[str, Any]:
    try:
        return fut.result()
    except ModelSelectorError as e:
        raise type(e)(f"sweep candidate {job['candidate']}: {e}") from e
    except Exception as e:  # a crash in a worker: report which candidate
        raise TrainingError(f"sweep candidate {job['candidate']} failed: {type(e).__name__}: {e}") from e


def run_ray(
    jobs: Sequence[dict[str, Any]], address: Optional[str], threads: int, cancel: Optional[Any] = None,
    on_done: Optional[Callable] = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Run training jobs as Ray tasks (``threads`` CPUs each) on the cluster at ``address``.

    ``address=None`` or ``"local"`` starts a local Ray instance. Raises :class:`TrainingError` when Ray is not
    installed."""
    try:
        import ray
    except ImportError as e:
        raise TrainingError(
            "the ray executor needs Ray: pip install 'ModelSelectorLib[ray]' (or 'ray[default]'), "
            "or use --executor local."
        ) from e
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False, "include_dashboard": False}
        if address and address != "local":
            kw["address"] = address
        else:
            kw["num_cpus"] = max(1, os.cpu_count() or 1)
        ray.init(**kw)
        started = True
    try:
        remote = ray.remote(num_cpus=max(1, int(threads)))(_train_one)
        refs = {remote.remote({**job, "return_archive": True}): job for job in jobs}
        pending = list(refs)
        results = []
        while pending:
            check_cancel(cancel)
            done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in done:
                try:
                    res = ray.get(ref)
                except Exception as e:
                    raise TrainingError(f"sweep candidate {refs[ref]['candidate']} failed on Ray: {e}") from e
                results.append(res)
                if on_done:
                    on_done(res)
        return results
    except BaseException:
        for ref in locals().get("pending", []):
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


# --- the sweep ------------------------------------------------------------------------------------------
def sweep_dir(zoo_dir: PathLike, task: str) -> Path:
    """Folder of the sweep of ``task`` inside a zoo."""
    return Path(zoo_dir) / SWEEPS / safe_name(task)


def _read_state(state_file: Path) -> dict[str, Any]:
    """The saved state of a sweep (``{}`` when there is none or it is unreadable)."""
    try:
        return json.loads(state_file.read_text(encoding="utf-8")) if state_file.is_file() else {}
    except ValueError:
        return {}


def _task_split(spec: SweepSpec, dataset_dir: PathLike, work: Path) -> tuple[Path, Path, Path]:
    """The fixed splits of the sweep's task: ``(training data folder, selection split file, test split file)``."""
    # every task type keeps the test split apart from the selection split the candidates are ranked on
    backend = SWEEP_TASKS[spec.task_type]
    split = backend.make_split if backend is not None else make_split
    return split(dataset_dir, work, spec.test_fraction, spec.seed, spec.selection_fraction, spec.not_in_test)


def _job_fields(spec: SweepSpec, work: Path) -> dict[str, Any]:
    """What the sweep's task adds to every training job (landmarks: the image ids of the split's parts)."""
    backend = SWEEP_TASKS[spec.task_type]
    # it travels in the job itself, since a Ray worker may not see the sweep folder
    return dict(backend.job_fields(work)) if backend is not None else {}


def _ranking_metric(spec: SweepSpec, split_file: Path, metric: Optional[str]) -> str:
    """The sweep's ranking metric (default: its task's), refused before any candidate trains when its candidates
    will not have it (a label the split does not name, a metric no evaluation computes)."""
    from .leaderboard import metric_problem, split_in_pixels

    metric, split = metric or primary_metric(spec.task_type), read_split(split_file)
    problem = metric_problem(spec.task_type, metric, split.get("labels"), split_in_pixels(split["cases"]))
    if problem:
        raise InputError(problem)
    return metric


def _same_settings(bundle: Path, settings: dict[str, Any], task_type: str = DEFAULT_TASK_TYPE) -> bool:
    from ..training.segmentation import TRAIN_CONFIG_FILE, TrainConfig

    if SWEEP_TASKS.get(task_type) is not None:
        return bool(SWEEP_TASKS[task_type].same_settings(bundle, settings))
    f = bundle / TRAIN_CONFIG_FILE
    if not f.is_file():
        return False
    try:
        saved = json.loads(f.read_text(encoding="utf-8"))
    except ValueError:
        return False
    want = json.loads(json.dumps(dataclasses.asdict(TrainConfig.from_dict(settings)), default=list))
    try:  # settings added to TrainConfig since the bundle was trained take their defaults
        saved = json.loads(json.dumps(dataclasses.asdict(TrainConfig.from_dict(saved)), default=list))
    except ModelSelectorError:
        return False
    skip = {"num_threads", "device", "num_workers", "version"}
    return {k: v for k, v in saved.items() if k not in skip} == {
        k: v for k, v in want.items() if k not in skip
    }


def _keep(entry: dict[str, Any], name: str, zoo: Any, model: str) -> None:
    """Keep candidate ``name``'s bundle in ``zoo`` (trained with the same settings) as its sweep entry, and say so."""
    entry["bundle"] = str(zoo.get(model))
    print(f"modelselector: kept: {name} {zoo.current(model)} (model {model}), same settings; not trained again "
          "(--retrain trains it again).", file=sys.stderr)  # fmt: skip


def run_sweep(
    dataset_dir: PathLike,
    spec: SweepSpec,
    zoo_dir: PathLike,
    executor: str = "local",
    workers: int = 2,
    threads: int = 1,
    address: Optional[str] = None,
    metric: Optional[str] = None,
    device: str = "cpu",
    cancel: Optional[Any] = None,
    retrain: bool = False,
) -> dict[str, Any]:
    """Train every candidate, add it to the zoo, rank all on the selection split, write the reports (the test
    split is left for :func:`~.promotion.promote`).

    Args:
        dataset_dir: labelled MSD dataset folder.
        spec: the sweep (see :func:`load_sweep`).
        zoo_dir: zoo folder (created if missing) that receives the candidates as models ``<task>-<candidate>``.
        executor: ``"local"`` (worker processes) or ``"ray"``.
        workers, threads: parallel worker processes (local executor); torch threads per worker (CPUs per Ray task).
        address: Ray cluster address (``None``/``"local"``: a local Ray instance).
        metric: leaderboard ranking metric (``dice``, ``hd95``, ``msd``, ``dice_<label>``, ``mre_mm``, ``sdr_4``,
            ...; default: the task's ranking metric, ``dice`` or ``mre_mm``).
        device: torch device of the evaluation.
        cancel: Event-like; stops between candidates and cases with :class:`~ModelSelectorLib.errors.Cancelled`.
        retrain: train candidates again even when the zoo already holds them with the same settings.

    Returns:
        ``{"sweep": folder, "leaderboard": html path, "ranking": [rows best first], "best": row}``.
    """
    from ..zoo.catalog import Zoo
    from .leaderboard import evaluate_candidate, write_reports

    if executor not in EXECUTORS:
        raise TrainingError(f"executor {executor!r} is unknown; use one of {', '.join(EXECUTORS)}.")
    zoo = Zoo.create(zoo_dir)
    work = sweep_dir(zoo_dir, spec.task)
    train_dir, split_file, test_file = _task_split(spec, dataset_dir, work)
    metric = _ranking_metric(spec, split_file, metric)
    state_file = work / "sweep.json"
    state: dict[str, Any] = {"task": spec.task, "task_type": spec.task_type, "dataset": str(Path(dataset_dir).resolve()),
                             "split": split_file.name, "test_split": test_file.name, "seed": spec.seed,
                             "sweep_file_candidates": [c.name for c in spec.candidates], "candidates": {}}  # fmt: skip
    state["candidates"].update(_read_state(state_file).get("candidates", {}))
    extra = _job_fields(spec, work)
    jobs = []
    for cand in spec.candidates:
        model = spec.model_name(cand)
        entry = {"model": model, "settings": cand.settings, "config_hash": cand.config_hash()}
        state["candidates"][cand.name] = {**state["candidates"].get(cand.name, {}), **entry}
        if not retrain and model in zoo and _same_settings(zoo.get(model), cand.settings, spec.task_type):
            _keep(state["candidates"][cand.name], cand.name, zoo, model)
            continue
        jobs.append({"candidate": cand.name, "model": model, "settings": cand.settings, "dataset": str(train_dir),
                     "zoo": str(work / "work" / cand.name), "threads": threads, "modality": spec.modality,
                     "body_region": spec.body_region, "task_type": spec.task_type,
                     "test_fraction": spec.test_fraction, **extra})  # fmt: skip
    atomic.write_json(state_file, state)
    shutil.rmtree(work / "work", ignore_errors=True)  # private zoos a killed run left: each job starts afresh

    bar = progress_bar(total=len(jobs), desc=f"sweep {spec.task}: train")

    def done(res: dict[str, Any]) -> None:
        name = res["candidate"]
        model = state["candidates"][name]["model"]
        with tempfile.TemporaryDirectory(prefix="modelselector-sweep-") as tmp:
            src = Path(res["bundle"])
            if "archive" in res:
                src = _unpack(res["archive"], Path(tmp)) / model
            zoo.reload()
            _as_next_version(zoo, model, src)
            info = zoo.add(src)
        shutil.rmtree(work / "work" / name, ignore_errors=True)
        state["candidates"][name].update(
            bundle=str(zoo.get(model, info["version"])), train_seconds=res["seconds"]
        )
        atomic.write_json(state_file, state)
        bar.update(1)
        bar.set_postfix(done=name)

    try:
        if executor == "ray":
            run_ray(jobs, address, threads, cancel, done)
        else:
            run_local(jobs, workers, cancel, done)
    finally:
        bar.close()
        shutil.rmtree(work / "work", ignore_errors=True)

    split = read_split(split_file)
    for name, entry in progress_bar(list(state["candidates"].items()), desc=f"sweep {spec.task}: evaluate"):
        if name not in {c.name for c in spec.candidates}:
            continue
        check_cancel(cancel)
        evaluate_candidate(Path(entry["bundle"]), split, work / "evaluation" / f"{name}.json",
                           work / "report" / "dashboards" / name, candidate=name, device=device,
                           cancel=cancel)  # fmt: skip
    return write_reports(work, metric=metric)


__all__ = [
    "Candidate",
    "SweepSpec",
    "expand_sweep",
    "load_sweep",
    "case_id",
    "make_split",
    "write_split",
    "SELECTION_SPLIT",
    "TEST_SPLIT",
    "read_split",
    "run_local",
    "run_ray",
    "run_sweep",
    "sweep_dir",
]
