"""Scoring the zoo's models for one image: prototype similarity, encoder agreement, model-alone verification,
and the per-model operating point.

For each model (details and the calibration procedure: ``docs/selector.md``):

1. **Prototype similarity** ``sim``: for each view of the image, the best cosine similarity to the model's
   prototypes (of the requested ``origins``), averaged over the best 75 % of views. Small indices are
   scored exactly; large ones (> 50,000 prototypes) first take candidate models from the hnswlib neighbours.
2. **Domain logit** ``z = b + w_sim * sim + w_agree * logit(agree) + w_ood * p_ood + w_colour * colour``,
   where ``agree`` is the encoder's probability of the card's modality and region(s), ``p_ood`` its
   probability of "not a radiology image" and ``colour`` whether the picture has colour (the encoder sees
   grey values only; radiology images are grey). The weights are fitted on labelled development images
   (:mod:`.calibration`).
3. **Verify** (optional, model-alone): the model's runtime computes its fit signals on the image
   (:meth:`~ModelSelectorLib.models.base.TaskRuntime.fit_signals`); per task type, each signal kept on the
   development split adds ``w * (signal - centre)`` to ``z``.
4. **Operating point**: the model's own threshold ``t`` (chosen on the development split, with its false-
   accept and false-reject rates stored in the index sidecar); the calibrated score is ``sigmoid(z - t)``,
   so 0.5 is the model's operating point. The domain match ignores the image's dimensions; whether the
   model can take the image (a 3D model and a lone 2D slice cannot) is decided separately (``dims_ok``), and
   so is whether a volume shows as much as the model's training inputs (``fov``, :mod:`.field_of_view`) and
   whether its values are in the units the model expects (``units``, :mod:`.intensity_units`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import BundleError, ZooError
from ..io.image import Image
from ..models.registry import runtime_for
from ..progress import check_cancel, start_step
from ..zoo.bundle import WEIGHTS_FILE, load_bundle
from .encoder import OOD_CLASS
from .encoder_guide import domain_classes
from .field_of_view import card_field_of_view, image_extent_mm
from .intensity_units import air_share, compare_units
from .prototypes import encoder_id

#: the domain logit's features, in the order of :func:`plain_features`
FEATURES = ("bias", "sim", "agree", "ood", "colour")
#: used when the index holds no calibration for the requested origins/verify (with a warning)
UNCALIBRATED = {"weights": {"bias": -2.5, "sim": 4.0, "agree": 1.0, "ood": -2.0, "colour": -2.0}, "verify": {},
                "threshold": 0.0, "models": {}}  # fmt: skip
#: above this many prototypes, candidate models come from the hnswlib neighbours instead of exact scoring
EXACT_LIMIT = 50_000
#: probabilities are clipped to [EPS, 1 - EPS] before the logit
EPS = 1e-4

_RUNTIME_CACHE: dict[tuple[str, float], Any] = {}
#: guards the module's caches: ``select`` may run in several threads at once
_CACHE_LOCK = threading.Lock()


def runtime_of(path: Path) -> Any:
    """The runtime of the bundle at ``path``, loaded once per process (reloaded when its weights change)."""
    key = (str(path), (path / WEIGHTS_FILE).stat().st_mtime)
    runtime = _RUNTIME_CACHE.get(key)
    if runtime is None:
        runtime = runtime_for(load_bundle(path))
        with _CACHE_LOCK:
            if len(_RUNTIME_CACHE) > 32:
                _RUNTIME_CACHE.clear()
            # a thread that loaded it meanwhile keeps its own; later calls share the first one stored
            runtime = _RUNTIME_CACHE.setdefault(key, runtime)
    return runtime


# --- evidence about the image ---------------------------------------------------------------------------
@dataclasses.dataclass
class Evidence:
    """Everything about one image that scoring needs: embeddings, class probabilities, verify cache."""

    emb: np.ndarray
    probs: np.ndarray
    classes: list[str]
    ndim: int
    image: Optional[Image]  # for this call's verification only: the cache never keeps the voxels
    verify: dict[str, Optional[dict[str, float]]] = dataclasses.field(default_factory=dict)
    #: models whose bundle could not be used for this image, and why (they fit nothing)
    broken: dict[str, str] = dataclasses.field(default_factory=dict)
    colour: float = 0.0
    extent_mm: Optional[float] = None  # a volume's field of view (kept when the voxels are let go)
    air_share: Optional[float] = None  # share of voxels below -500, as air in a CT in HU (kept likewise)


def colourfulness(image: Image, threshold: float = 0.02) -> float:
    """1.0 when ``image`` is a colour picture (its channels differ by more than ``threshold`` of the value
    range on average), else 0.0; grey images stored as RGB count as grey."""
    if not image.is_multicomponent or image.array.shape[-1] < 3:
        return 0.0
    a = np.asarray(image.array[..., :3], dtype=np.float32)
    sub = a.reshape(-1, 3)[:: max(1, a.size // 3 // 200_000)]
    span = max(float(sub.max() - sub.min()), 1e-6)
    diff = np.mean(np.abs(sub[:, 0] - sub[:, 1]) + np.abs(sub[:, 1] - sub[:, 2])) / 2.0
    return float(diff / span > threshold)


_EVIDENCE: dict[tuple[Any, ...], Evidence] = {}


def clear_cache() -> None:
    """Forget the cached embeddings and verify results of recent images (see :func:`evidence`)."""
    with _CACHE_LOCK:
        _EVIDENCE.clear()


def fingerprint(image: Image) -> tuple[Any, ...]:
    """A cheap identity of an image's voxels and geometry (shape, geometry, sha1 of a strided sample)."""
    flat = np.asarray(image.array).reshape(-1)
    sample = np.ascontiguousarray(flat[:: max(1, flat.size // 65536)])
    digest = hashlib.sha1(sample.tobytes()).hexdigest()
    return (image.array.shape, str(image.array.dtype), image.spacing, image.origin, image.direction, digest)


def evidence(encoder: Any, image: Image) -> Evidence:
    """Embeddings and class probabilities of ``image`` (the last 8 images are cached with their verify
    results, so selecting the same image with other settings does not embed it again).

    The returned evidence holds ``image`` for the verification of the call that asked; the cached one
    shares its embeddings, scalars and verify results but not the voxels, which go with the caller's copy."""
    key = (encoder_id(encoder), *fingerprint(image))
    ev = _EVIDENCE.get(key)
    if ev is None:
        emb = encoder.embed(image)
        ev = Evidence(emb, encoder.image_probabilities(emb, image), list(encoder.classes),
                      (2 if image.is_single_slice else 3), None, colour=colourfulness(image),
                      extent_mm=image_extent_mm(image), air_share=air_share(image))  # fmt: skip
        with _CACHE_LOCK:
            ev = _EVIDENCE.setdefault(key, ev)  # another thread's, when it embedded the image meanwhile
            while len(_EVIDENCE) > 8:
                _EVIDENCE.pop(next(iter(_EVIDENCE)), None)
    return dataclasses.replace(ev, image=image)


def is_relevant(
    model_modality: str, model_regions: Sequence[str], modality: str, regions: Sequence[str]
) -> bool:
    """True when a model (modality, regions) applies to an image (modality, regions): the modalities are
    equal and the region sets intersect; ``OT`` (non-radiology) images have no relevant model. The
    dimensions are not compared (see ``dims_ok`` in :func:`rank_models`)."""
    m = str(modality).strip().upper()
    if not m or m == "OT":
        return False
    return str(model_modality).strip().upper() == m and bool(set(model_regions) & set(regions))


def agreement(ev: Evidence, card: Any) -> float:
    """The encoder's probability that the image is of the card's modality and one of its regions."""
    return float(sum(float(ev.probs[i]) for i in domain_classes(ev.classes, card)))


def encoder_knows(classes: Sequence[str], card: Any) -> bool:
    """True when the encoder has a class of the card's modality and regions. Without one (the encoder was
    trained on too few such images), :func:`agreement` is 0 for every image, which counts against the model
    whatever the image."""
    return bool(domain_classes(classes, card))


def p_ood(ev: Evidence) -> float:
    """The encoder's probability that the image is not a radiology image."""
    return float(ev.probs[ev.classes.index(OOD_CLASS)]) if OOD_CLASS in ev.classes else 0.0


def similarities(
    index: Any, ev: Evidence, origins: Sequence[str], exclude_sources: Sequence[str] = ()
) -> dict[str, tuple[float, list[tuple[float, int]]]]:
    """Per model: aggregated similarity and its nearest prototypes ``[(cos, label)]`` (best 3)."""
    names = index.model_names()
    if len(index) > EXACT_LIMIT:
        labels, _ = index.query(ev.emb, k=64, origins=origins)
        names = sorted({index.items[int(lab)]["model"] for lab in labels.ravel() if int(lab) in index.items})
    out: dict[str, tuple[float, list[tuple[float, int]]]] = {}
    ex = set(exclude_sources)
    keep_origins = set(origins)
    for name in names:
        vecs, labs = index.model_vectors(name)
        mask = np.array(
            [
                index.items[lab]["origin"] in keep_origins and index.items[lab].get("source") not in ex
                for lab in labs
            ],
            dtype=bool,
        )
        if not mask.any():
            continue
        sims = ev.emb @ vecs[mask].T  # (m, n_model)
        best = sims.max(axis=1)
        n_keep = max(1, int(math.ceil(0.75 * len(best))))
        agg = float(np.sort(best)[::-1][:n_keep].mean())
        flat = sims.max(axis=0)
        lab_arr = np.asarray(labs)[mask]
        top = np.argsort(-flat)[:3]
        out[name] = (agg, [(float(flat[i]), int(lab_arr[i])) for i in top])
    return out


# --- the score ------------------------------------------------------------------------------------------
def calibration_key(origins: Sequence[str], verify: bool) -> str:
    """The calibration setting of a prototype-origin set and verify flag, e.g. ``"exemplar:verify"``."""
    return "+".join(sorted(set(origins))) + (":verify" if verify else ":plain")


def plain_features(sim: float, agree: float, pood: float, colour: float = 0.0) -> np.ndarray:
    """The domain logit's features ``[1, sim, logit(agree), p_ood, colour]`` (see :data:`FEATURES`)."""
    a = min(max(float(agree), EPS), 1.0 - EPS)
    return np.array([1.0, float(sim), math.log(a / (1.0 - a)), float(pood), float(colour)])


def plain_logit(setting: dict[str, Any], feats: np.ndarray) -> float:
    """``w . features`` with the setting's weights."""
    w = setting.get("weights") or UNCALIBRATED["weights"]
    return float(sum(float(w.get(k, 0.0)) * f for k, f in zip(FEATURES, feats)))


def verify_term(setting: dict[str, Any], task_type: str, signals: Optional[dict[str, float]]) -> float:
    """The verify adjustment of the domain logit: ``sum w * (signal - centre)`` over the signals kept for the
    task type (0 when the image gives no signals or none was kept)."""
    if not signals:
        return 0.0
    total = 0.0
    for name, rule in ((setting.get("verify") or {}).get(task_type) or {}).items():
        v = signals.get(name)
        if v is not None and math.isfinite(float(v)):
            total += float(rule["weight"]) * (float(v) - float(rule["centre"]))
    return total


def model_threshold(setting: dict[str, Any], name: str) -> float:
    """The model's operating point on the domain logit (its own, or the pooled one)."""
    per = (setting.get("models") or {}).get(name) or {}
    return float(per.get("threshold", setting.get("threshold", 0.0)))


def has_own_threshold(setting: dict[str, Any], name: str) -> bool:
    """True when the calibration gave model ``name`` an operating point of its own; False when it uses the
    pooled one (too few development images of its kind, or no calibration of the model: added after it)."""
    per = (setting.get("models") or {}).get(name)
    return bool(per) and "threshold" in per and not per.get("pooled", False)


def operating_point_text(setting: dict[str, Any], name: str) -> str:
    """What the operating point of model ``name`` is, for the selection's reasons: "the model's operating
    point", or the pooled one and why."""
    if has_own_threshold(setting, name):
        return "the model's operating point"
    if name in (setting.get("models") or {}):
        return "the pooled operating point (too few development images of this model for its own)"
    return "the pooled operating point (no calibration of this model)"


def uncalibrated_models(setting: dict[str, Any], names: Sequence[str]) -> list[str]:
    """The models among ``names`` that the calibration ``setting`` does not know (added after it): they use
    the pooled operating point until the index is calibrated again."""
    known = setting.get("models") or {}
    return [n for n in names if n not in known]


def verify_of(zoo: Any, ev: Evidence, name: str) -> Optional[dict[str, float]]:
    """The fit signals of model ``name`` for the image of ``ev`` (cached in ``ev`` per bundle and weights)."""
    path = zoo.get(name)
    vkey = f"{path}@{(path / WEIGHTS_FILE).stat().st_mtime}"
    if vkey not in ev.verify:
        ev.verify[vkey] = runtime_of(path).fit_signals(ev.image) if ev.image is not None else None
    return ev.verify[vkey]


def rank_models(
    zoo: Any,
    index: Any,
    ev: Evidence,
    origins: Sequence[str],
    verify: bool,
    top_k: Optional[int],
    setting: dict[str, Any],
    exclude_sources: Sequence[str] = (),
    cards: Optional[dict[str, Any]] = None,
    cancel: Optional[Any] = None,
    bar: Optional[Any] = None,
) -> list[dict[str, Any]]:
    """Score every indexed model; rows best first (by ``margin = z - threshold``), cut to ``top_k``.

    Each row: ``name, card, sim, nearest, agree, dims_ok, fov, units, z, threshold, margin, verify,
    operating_point`` (``operating_point``: :func:`operating_point_text` of the threshold; ``fov``:
    the :class:`~.field_of_view.FieldOfView` comparison or None; ``units``: the
    :class:`~.intensity_units.Units` comparison or None; ``verify``: the fit signals, or None). With
    ``verify``, the models that can take the image among the first ``top_k + 2`` are verified and re-ranked;
    ``cancel`` (:func:`~ModelSelectorLib.progress.check_cancel`) is asked before each verification, and ``bar``
    (a :func:`~ModelSelectorLib.progress.progress_bar`, or None) gets one step per verification: its total is
    set to the steps it has done plus the models to verify.
    """
    cards = cards if cards is not None else {}
    pood = p_ood(ev)
    rows = []
    for name, (sim, nearest) in similarities(index, ev, origins, exclude_sources).items():
        if name not in cards:
            cards[name] = zoo.card(name)
        card = cards[name]
        agree = agreement(ev, card)
        z = plain_logit(setting, plain_features(sim, agree, pood, ev.colour))
        t = model_threshold(setting, name)
        rows.append({"name": name, "card": card, "sim": sim, "nearest": nearest, "agree": agree,
                     "dims_ok": ev.ndim == int(card.spatial_dims),
                     "fov": card_field_of_view(ev.extent_mm, card), "units": compare_units(ev.air_share, card),
                     "z": z, "threshold": t, "margin": z - t, "verify": None,
                     "operating_point": operating_point_text(setting, name)})  # fmt: skip
    rows.sort(key=lambda r: -r["margin"])
    if verify:
        ok = [r for r in rows if r["dims_ok"]]
        window = ok if top_k is None else ok[: max(int(top_k) + 2, 3)]
        if bar is not None:
            bar.total = bar.n + len(window)
        for r in window:
            check_cancel(cancel)
            if bar is not None:
                start_step(bar, f"verifying {r['name']}")
            # one broken bundle must not stop every selection: it fits nothing, and the selection says why
            try:
                r["verify"] = verify_of(zoo, ev, r["name"])
            except (BundleError, ZooError) as e:
                r["broken"] = ev.broken[r["name"]] = str(e)
                r["z"] = -math.inf
            r["z"] += verify_term(setting, r["card"].task_type, r["verify"])
            r["margin"] = r["z"] - r["threshold"]
            if bar is not None:
                bar.update(1)
        rows.sort(key=lambda r: -r["margin"])
    return rows if top_k is None else rows[: int(top_k)]


def sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + math.exp(-max(min(z, 60.0), -60.0))))


__all__ = ["EXACT_LIMIT", "Evidence", "FEATURES", "UNCALIBRATED", "agreement", "calibration_key", "clear_cache",
           "colourfulness", "encoder_knows", "evidence", "has_own_threshold", "is_relevant", "model_threshold",
           "operating_point_text", "p_ood", "plain_features", "plain_logit", "rank_models", "runtime_of", "sigmoid",
           "similarities", "uncalibrated_models", "verify_of", "verify_term"]  # fmt: skip
