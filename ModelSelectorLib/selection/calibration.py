"""Calibration of the selector on labelled images: score weights, model-alone signals, one operating point per
model; and the calibrated index of a zoo.

Every labelled image (:class:`LabelledImage`: an image with its modality and body regions) is scored against
every model of the index. A pair is **positive** when the model is relevant to the image (same modality,
intersecting regions; the image's dimensions do not matter here, see :mod:`.scoring`) and negative
otherwise, so a model's positives are images of its own domain and its negatives every other class and
the out-of-distribution pictures. For each setting (prototype origins x verify) :func:`calibrate` fits:

1. the domain logit's weights (:data:`~.scoring.FEATURES`): logistic regression on all pairs (standardised
   features, L2 penalty, classes balanced);
2. with verify, per task type, which model-alone signals to add (none, each, or all; the set with the lowest
   5-fold cross-validated log-loss on the pairs) and their weights, with the domain logit as a fixed offset;
3. each model's threshold on the resulting logit: the one maximising its balanced accuracy (Youden's J) on
   its own pairs, when it has at least ``min_positives`` positive and negative images; otherwise the pooled
   threshold of all models. Its false-accept rate (negatives above it) and false-reject rate (positives
   below it) are stored with it.

Development images come from the protocol split (``modelselector index calibrate --data DATA``); without
them the model's exemplar files (each scored without its own prototypes) and synthetic
out-of-distribution references stand in. The result is stored in the index sidecar.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..errors import InputError
from ..io.image import Image, read_image
from ..progress import check_cancel, progress_bar
from .encoder import default_encoder
from .index import ZooIndex, index_zoo
from .prototypes import ORIGINS, encoder_id, resolve_recorded_source
from .scoring import (
    FEATURES,
    UNCALIBRATED,
    agreement,
    calibration_key,
    evidence,
    is_relevant,
    p_ood,
    plain_features,
    plain_logit,
    similarities,
    verify_of,
    verify_term,
)
from .selector import open_zoo_and_index

PathLike = Union[str, "os.PathLike[str]"]

#: prototype-origin sets that are calibrated (each with and without verify)
ORIGIN_SETS = (("exemplar",), ("data-free",), ORIGINS)
#: model-alone signals the calibration may keep when a runtime reports them, with the sign their weight
#: must have (a better fit must not lower the score): the runtimes' fit scores, the Mahalanobis feature fit,
#: and the raw heatmap entropy of landmark models (so its scale is chosen on development images)
SIGNALS = {"fit": 1.0, "feature_fit": 1.0, "heatmap_entropy": -1.0}
#: what a calibration was made on (its ``"made_on"``): labelled images (the development part of the protocol
#: split) or, without them, the models' exemplar files and synthetic references
MADE_ON_LABELLED = "labelled images"
MADE_ON_EXEMPLARS = "exemplar files"


@dataclasses.dataclass
class LabelledImage:
    """An image with its modality code and body-region codes (``"OT"`` and no region for a photograph).

    ``exclude_sources``: prototype sources ignored when scoring it (an exemplar file scored without its own
    prototypes); ``name``: for reports.
    """

    image: Union[Image, PathLike]
    modality: str
    regions: tuple[str, ...] = ()
    exclude_sources: tuple[str, ...] = ()
    name: str = ""


def ood_references(seed: int = 0, photos: bool = True) -> list[tuple[str, Image]]:
    """Out-of-distribution reference images for calibration without development images: noise, textures
    and natural photos.

    Returns:
        ``(name, image)`` pairs: 3D Gaussian noise in HU-like and in positive units, 2D uniform noise, a
        smooth 3D random texture, a 2D checkerboard and a sinusoidal grating, a 2D gradient, and (with
        ``photos``) the photographs shipped with matplotlib (``grace_hopper.jpg`` and
        ``Minduka_Present_Blue_Pack.png``), when present.
    """
    rng = np.random.default_rng(seed)
    eye3 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    eye2 = (1.0, 0.0, 0.0, 1.0)
    out: list[tuple[str, Image]] = []

    def vol(a: np.ndarray, sp: float = 1.5) -> Image:
        return Image(a.astype(np.float32), (sp, sp, sp), (0.0, 0.0, 0.0), eye3, {"synthetic": True})

    def pic(a: np.ndarray, sp: float = 0.5) -> Image:
        return Image(a.astype(np.float32), (sp, sp), (0.0, 0.0), eye2, {"synthetic": True})

    out.append(("noise-3d-hu", vol(rng.normal(0.0, 500.0, (40, 48, 48)))))
    out.append(("noise-3d-positive", vol(np.abs(rng.normal(300.0, 150.0, (32, 40, 40))), 2.0)))
    out.append(("noise-2d-uniform", pic(rng.uniform(0, 255, (96, 96)))))
    smooth = rng.normal(size=(32, 40, 40))
    kernel = np.array([1, 4, 6, 4, 1], float) / 16
    for ax in range(3):
        smooth = np.apply_along_axis(lambda v, k=kernel: np.convolve(v, k, mode="same"), ax, smooth)
    out.append(("texture-3d-smooth", vol(smooth * 2000.0, 2.0)))
    yy, xx = np.mgrid[0:96, 0:96]
    out.append(("checkerboard-2d", pic(((yy // 12 + xx // 12) % 2) * 200.0)))
    out.append(("grating-2d", pic(np.sin(xx / 3.0 + yy / 7.0) * 100.0 + 100.0)))
    out.append(("gradient-2d", pic(xx * 2.0 + yy)))
    if photos:
        try:
            import matplotlib.cbook as cbook

            for fname in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
                with contextlib.suppress(OSError, ValueError, InputError, RuntimeError):
                    path = cbook.get_sample_data(fname, asfileobj=False)
                    out.append((fname, read_image(path)))
        except ImportError:
            pass
    return out


def default_cases(
    index: Any,
    zoo: Any,
    positives: Optional[Sequence[tuple[Union[Image, PathLike], str]]] = None,
    negatives: Optional[Sequence[Any]] = None,
    per_model: int = 3,
    files: Optional[dict[str, list[tuple[str, Path]]]] = None,
) -> list[LabelledImage]:
    """Labelled images when no development images are given: ``positives`` as ``(image, model)`` pairs
    (default: up to ``per_model`` exemplar files of each model, each scored without its own prototypes; ``files``:
    those already found, :func:`exemplar_files`), labelled with their model's modality and regions, and
    ``negatives`` (default :func:`ood_references`) as photographs (``OT``)."""
    cases = []
    if positives is None:
        for name, found in (exemplar_files(index, zoo, per_model) if files is None else files).items():
            # scored without its own prototypes, which record the source as it was given
            cases += [_labelled(zoo, name, path, (src,)) for src, path in found]
    else:
        cases += [_labelled(zoo, name, img, ()) for img, name in positives]
    for n in ood_references() if negatives is None else negatives:
        name, img = n if isinstance(n, tuple) else (str(getattr(n, "meta", {}).get("path", n)), n)
        cases.append(LabelledImage(img, "OT", (), (), str(name)))
    return cases


def exemplar_files(index: Any, zoo: Any, per_model: int = 3) -> dict[str, list[tuple[str, Path]]]:
    """Up to ``per_model`` exemplar files of each indexed model that can be found: ``{model: [(recorded source,
    file)]}``, a source looked for as given (absolute, or relative to the working folder) and relative to the
    model's bundle (:func:`~.prototypes.resolve_recorded_source`); sources recorded relative to a data folder are
    found only from there."""
    out: dict[str, list[tuple[str, Path]]] = {}
    for name in index.model_names():
        found: dict[str, Path] = {}
        for lab in index.models[name]["labels"]:
            rec = index.items.get(lab) or {}
            src = str(rec.get("source", ""))
            if rec.get("origin") == "exemplar" and src and src not in found and len(found) < per_model:
                path = resolve_recorded_source(src, [zoo.get(name)])
                if path is not None:
                    found[src] = path
        out[name] = list(found.items())
    return out


def _labelled(zoo: Any, model: str, image: Any, exclude: tuple[str, ...]) -> LabelledImage:
    card = zoo.card(model)
    regions = tuple(r for r in str(card.body_region).split(";") if r)
    return LabelledImage(
        image, card.modality, regions, exclude, model if isinstance(image, Image) else str(image)
    )


# --- measuring ------------------------------------------------------------------------------------------
def collect_pairs(
    index: Any, zoo: Any, encoder: Any, cases: Sequence[LabelledImage], verify: bool = True,
    cancel: Optional[Any] = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """One record per (image, model): relevance, dimensions, features per origin set, fit signals.

    Fit signals are computed for every model that can take the image (``verify``); unreadable images are
    skipped.
    """
    records: list[dict[str, Any]] = []
    cards = {name: zoo.card(name) for name in index.model_names()}
    for i, case in enumerate(progress_bar(list(cases), desc="scoring labelled images")):
        check_cancel(cancel)
        try:
            img = case.image if isinstance(case.image, Image) else read_image(case.image)
        except InputError:
            continue
        ev = evidence(encoder, img)
        sims = {
            calibration_key(o, False): similarities(index, ev, o, case.exclude_sources) for o in ORIGIN_SETS
        }
        pood = p_ood(ev)
        for name, card in cards.items():
            dims_ok = ev.ndim == int(card.spatial_dims)
            records.append({
                "case": i, "model": name, "task_type": card.task_type, "dims_ok": dims_ok,
                "relevant": is_relevant(card.modality, str(card.body_region).split(";"), case.modality, case.regions),
                "agree": agreement(ev, card), "p_ood": pood, "colour": ev.colour,
                "sim": {k: v[name][0] for k, v in sims.items() if name in v},
                "signals": verify_of(zoo, ev, name) if verify and dims_ok else None,
            })  # fmt: skip
        ev.image = None  # keep the embeddings, not the voxels
    return records


# --- fitting ----------------------------------------------------------------------------------------------
def offset_logistic(offset: np.ndarray, x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> np.ndarray:
    """Weights ``w`` of ``P(y) = sigmoid(offset + x @ w)`` (Newton steps, L2 penalty ``l2``, classes
    balanced): a logistic regression whose intercept is the fixed ``offset``."""
    w = np.zeros(x.shape[1])
    pos = max(int(y.sum()), 1)
    neg = max(int((~y).sum()), 1)
    sw = np.where(y, len(y) / (2.0 * pos), len(y) / (2.0 * neg))
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(offset + x @ w, -30, 30)))
        grad = x.T @ (sw * (p - y)) + l2 * w
        hess = (x * (sw * p * (1 - p))[:, None]).T @ x + l2 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return w


def _log_loss(z: np.ndarray, y: np.ndarray) -> float:
    """Class-balanced mean log-loss of logits ``z``."""
    p = np.clip(1.0 / (1.0 + np.exp(-np.clip(z, -30, 30))), 1e-9, 1 - 1e-9)
    ll = -np.where(y, np.log(p), np.log(1 - p))
    return float(np.mean([ll[y].mean() if y.any() else 0.0, ll[~y].mean() if (~y).any() else 0.0]))


def choose_signals(offset: np.ndarray, signals: dict[str, np.ndarray], y: np.ndarray, folds: int = 5,
                   seed: int = 0, min_gain: float = 0.02) -> tuple[dict[str, dict[str, float]], dict[str, float]]:  # fmt: skip
    """Which fit signals to add to the domain logit ``offset``, by 5-fold cross-validated log-loss.

    A set of signals is kept only when every weight has the sign :data:`SIGNALS` gives it (a better fit must
    not lower the score) and its cross-validated log-loss is at least ``min_gain`` (relative) below that of
    no signal.

    Returns:
        ``(kept, cv)``: per kept signal ``{"weight", "centre"}`` (centre = the signal's median over the
        positives), and the cross-validated log-loss of every candidate set (``"none"``, each, all).
    """
    names = sorted(signals)
    candidates = [()] + [(n,) for n in names] + ([tuple(names)] if len(names) > 1 else [])
    centres = {n: float(np.median(signals[n][y])) if y.any() else 0.0 for n in names}
    fold = np.random.default_rng(seed).permutation(len(y)) % folds
    cv: dict[str, float] = {}
    for cand in candidates:
        if not cand:
            cv["none"] = _log_loss(offset, y)
            continue
        x = np.stack([signals[n] - centres[n] for n in cand], axis=1)
        z = np.empty(len(y))
        for f in range(folds):
            tr, te = fold != f, fold == f
            z[te] = offset[te] + x[te] @ offset_logistic(offset[tr], x[tr], y[tr])
        cv["+".join(cand)] = _log_loss(z, y)
    for cand in sorted(candidates[1:], key=lambda c: cv["+".join(c)]):
        if cv["+".join(cand)] > (1.0 - min_gain) * cv["none"]:
            break
        x = np.stack([signals[n] - centres[n] for n in cand], axis=1)
        w = offset_logistic(offset, x, y)
        if all(wi * SIGNALS.get(n, 1.0) > 0 for n, wi in zip(cand, w)):
            return {
                n: {"weight": round(float(wi), 5), "centre": round(centres[n], 5)} for n, wi in zip(cand, w)
            }, cv
    return {}, cv


def youden_threshold(z: np.ndarray, y: np.ndarray) -> float:
    """The threshold on ``z`` maximising true-positive minus false-positive rate (Youden's J); when a range of
    thresholds does so (classes separated by a gap), the middle of that range, the widest margin on both sides.
    Where J peaks in several separate ranges, the widest of them: the middle of two ranges can fall where J is
    lower."""
    if not y.any() or y.all():
        return 0.0
    cuts = np.unique(z)
    cands = np.concatenate([[cuts[0] - 1e-6], (cuts[1:] + cuts[:-1]) / 2.0, [cuts[-1] + 1e-6]])
    tpr = (z[y][None, :] >= cands[:, None]).mean(axis=1)
    fpr = (z[~y][None, :] >= cands[:, None]).mean(axis=1)
    j = tpr - fpr
    best = np.flatnonzero(j >= j.max() - 1e-12)
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)  # contiguous ranges of the best thresholds
    run = max(runs, key=lambda r: cands[r[-1]] - cands[r[0]])
    return float((cands[run[0]] + cands[run[-1]]) / 2.0)


def _rates(z: np.ndarray, y: np.ndarray, t: float) -> dict[str, Any]:
    return {"far": float(np.mean(z[~y] >= t)) if (~y).any() else None,
            "frr": float(np.mean(z[y] < t)) if y.any() else None,
            "n_positive": int(y.sum()), "n_negative": int((~y).sum())}  # fmt: skip


def fit_setting(
    records: Sequence[dict[str, Any]], origins: Sequence[str], verify: bool, min_positives: int = 5
) -> dict[str, Any]:
    """The calibration of one setting (module docstring): weights, verify signals, per-model thresholds."""
    key = calibration_key(origins, False)
    recs = [r for r in records if key in r["sim"]]
    y = np.array([r["relevant"] for r in recs], dtype=bool)
    x = (np.stack([plain_features(r["sim"][key], r["agree"], r["p_ood"], r.get("colour", 0.0)) for r in recs])
         if recs else np.zeros((0, len(FEATURES))))  # fmt: skip
    if not y.any() or y.all():
        weights = dict(UNCALIBRATED["weights"])
    else:
        from sklearn.linear_model import LogisticRegression

        # standardised features, so the penalty treats a similarity (spread ~0.1) like a logit (spread ~5)
        mean, std = x[:, 1:].mean(axis=0), np.maximum(x[:, 1:].std(axis=0), 1e-6)
        lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000).fit((x[:, 1:] - mean) / std, y)
        coef = lr.coef_[0] / std
        weights = {
            "bias": float(lr.intercept_[0] - coef @ mean),
            **{k: float(c) for k, c in zip(FEATURES[1:], coef)},
        }
    setting: dict[str, Any] = {"weights": {k: round(v, 5) for k, v in weights.items()}, "verify": {},
                               "signal_selection": {}}  # fmt: skip
    z = np.array([plain_logit(setting, f) for f in x])
    if verify:
        for task in sorted({r["task_type"] for r in recs}):
            idx = [i for i, r in enumerate(recs) if r["task_type"] == task and r["signals"]]
            names = [n for n in SIGNALS if idx and all(_finite(recs[i]["signals"], n) for i in idx)]
            if not names or not y[idx].any() or y[idx].all():
                continue
            sig = {n: np.array([float(recs[i]["signals"][n]) for i in idx]) for n in names}
            kept, cv = choose_signals(z[idx], sig, y[idx])
            setting["signal_selection"][task] = {k: round(v, 5) for k, v in cv.items()}
            if kept:
                setting["verify"][task] = kept
        z = z + np.array([verify_term(setting, r["task_type"], r["signals"]) for r in recs])
    pooled = youden_threshold(z, y)
    setting.update(threshold=round(pooled, 5), **_rates(z, y, pooled), models={})
    for name in sorted({r["model"] for r in recs}):
        m = np.array([r["model"] == name for r in recs])
        ym, zm = y[m], z[m]
        own = int(ym.sum()) >= min_positives and int((~ym).sum()) >= min_positives
        t = youden_threshold(zm, ym) if own else pooled
        setting["models"][name] = {"threshold": round(t, 5), "pooled": not own, **_rates(zm, ym, t)}
    return setting


def _finite(signals: dict[str, float], name: str) -> bool:
    v = signals.get(name)
    return v is not None and math.isfinite(float(v))


def calibrate(
    index: Any,
    zoo: Any,
    encoder: Any = None,
    cases: Optional[Sequence[LabelledImage]] = None,
    positives: Optional[Sequence[tuple[Union[Image, PathLike], str]]] = None,
    negatives: Optional[Sequence[Any]] = None,
    description: str = "",
    min_positives: int = 5,
    cancel: Optional[Any] = None,
) -> dict[str, Any]:
    """Calibrate every setting on labelled images (module docstring); store it in ``index.calibration``.

    Args:
        cases: labelled development images; default :func:`default_cases` (``positives``/``negatives``).
        description: where the images come from (recorded).
        min_positives: fewest positive (and negative) images for a model to get its own threshold.

    Returns:
        the calibration dict (also in ``index.calibration``; save the index to keep it).
    """
    zoo, index = open_zoo_and_index(zoo, index)
    enc = encoder if encoder is not None else default_encoder()
    made_on = MADE_ON_EXEMPLARS if cases is None and positives is None else MADE_ON_LABELLED
    if cases is None:
        files = exemplar_files(index, zoo) if positives is None else {}
        cases = default_cases(index, zoo, positives, negatives, files=files)
        if positives is None:
            missing = [n for n, f in files.items() if not f]
            what = f"exemplar files of {len(files) - len(missing)} of the {len(files)} models (without their own " \
                "prototypes)" + (f"; none found of {', '.join(missing)} (their sources are recorded relative to " \
                "the data folder: --data DIR)" if missing else "")  # fmt: skip
        else:
            what = f"{len(positives)} given images of the models"
        description = description or f"{what} and synthetic out-of-distribution references"
    records = collect_pairs(index, zoo, enc, cases, True, cancel)
    settings = {}
    for origins in ORIGIN_SETS:
        for verify in (False, True):
            settings[calibration_key(origins, verify)] = fit_setting(records, origins, verify, min_positives)
    cal = {
        "format": 2,
        "images": description or f"{len(cases)} labelled images",
        "made_on": made_on,
        "n_images": len({r["case"] for r in records}),
        "encoder": encoder_id(enc),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": settings,
    }
    index.calibration = cal
    return cal


def made_on_labelled_images(cal: Optional[dict[str, Any]]) -> bool:
    """True when calibration ``cal`` was made on labelled images (``--data``), not on exemplar files alone."""
    cal = cal or {}
    if not cal.get("settings"):
        return False
    if cal.get("made_on"):
        return cal["made_on"] == MADE_ON_LABELLED
    # calibrations saved before "made_on" say what they were made on in their description only
    return not str(cal.get("images", "")).startswith(MADE_ON_EXEMPLARS)


def refuse_weaker_calibration(index: Any, remedy: str) -> None:
    """Raise :class:`~ModelSelectorLib.errors.InputError` when ``index`` holds a calibration made on labelled
    images, which a calibration without them (exemplar files only: few images, one pooled operating point for
    most models) would silently replace; ``remedy`` says what to do instead.
    """
    cal = index.calibration
    if made_on_labelled_images(cal):
        raise InputError(
            f"the index's calibration was made on {cal.get('n_images', 'many')} labelled development images, and "
            f"calibrating without --data would replace it with a weaker one made on the models' exemplar files: "
            f"{remedy}."
        )


def refuse_replacing_labelled_calibration(index_dir: Union[str, Path], zoo: Any, remedy: str) -> None:
    """:func:`refuse_weaker_calibration` for the index saved in ``index_dir``, before a new one calibrated
    without labelled images replaces it (nothing to refuse without an index there, or with one that does not
    load: it holds nothing worth keeping)."""
    from ..errors import ModelSelectorError
    from .index import SIDECAR

    if not (Path(index_dir) / SIDECAR).is_file():
        return
    try:
        old = ZooIndex.load(index_dir, zoo)
    except ModelSelectorError:
        return
    refuse_weaker_calibration(old, remedy)


_calibrate = calibrate  # build_index's flag of the same name hides the function


def build_index(
    zoo: Any,
    models: Optional[Sequence[str]] = None,
    calibrate: bool = True,
    encoder: Any = None,
    cases: Optional[Sequence[LabelledImage]] = None,
    description: str = "",
    M: int = 16,
    ef_construction: int = 200,
    cancel: Optional[Any] = None,
) -> ZooIndex:
    """A new index over the stored prototypes of every model of ``zoo`` (or of ``models``)
    (:func:`~.index.index_zoo`), calibrated on ``cases`` (:func:`calibrate`; needs the encoder, default:
    the bundled one) unless ``calibrate`` is False. The index is not saved: call
    :meth:`~.index.ZooIndex.save` (e.g. to :func:`~.index.default_index_dir`).

    Raises:
        IndexMismatchError: the zoo is empty, or a model has no prototypes (the message names it and the
        command that makes them).
    """
    idx = index_zoo(zoo, models, M=M, ef_construction=ef_construction, cancel=cancel)
    if calibrate:
        _calibrate(idx, zoo, encoder=encoder, cases=cases, description=description, cancel=cancel)
    return idx


__all__ = ["MADE_ON_EXEMPLARS", "MADE_ON_LABELLED", "LabelledImage", "build_index", "calibrate", "collect_pairs",
           "default_cases", "fit_setting", "made_on_labelled_images", "ood_references", "refuse_weaker_calibration",
           "youden_threshold"]  # fmt: skip
