"""Scoring the zoo's models for one image: prototype similarity, encoder agreement, model-alone verification.

For each model (details and the calibration procedure: ``docs/selector.md``):

1. **Prototype similarity**: for each view of the image, the best cosine similarity to the model's
   prototypes (of the requested ``origins``), averaged over the best 75 % of views (``sim`` in [-1, 1]).
   Small indices are scored exactly; large ones (> 50,000 prototypes) first take candidate models from the
   hnswlib nearest neighbours.
2. **Raw score** ``raw = sim + 0.1 * agree - 0.2 * p_ood - 0.5 * [dimension mismatch]`` where ``agree`` is
   the encoder's probability of the model card's modality and region(s) and ``p_ood`` its probability of
   "not a radiology image".
3. **Verify** (optional, model-alone): the model's runtime computes its fit signals on the image
   (:meth:`~ModelSelectorLib.models.base.TaskRuntime.fit_signals`), and ``raw += 0.3 * (fit - 1)``.
4. **Calibrated logit** ``z = (raw - t) / T`` with ``t`` and ``T`` from calibration (stored in the index
   sidecar, per origin and verify flag). With both origins, each origin is scored and calibrated on its own
   and a model takes the better of the two (:func:`fused_rank`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..io.image import Image
from ..models.registry import runtime_for
from ..zoo.bundle import WEIGHTS_FILE, load_bundle
from .encoder import OOD_CLASS
from .prototypes import encoder_id

#: weights of the raw score (see the module docstring); stored with every calibration
WEIGHTS = {"class": 0.1, "ood": 0.2, "verify": 0.3, "dimension": 0.5}
#: used when the index holds no calibration for the requested origins/verify (with a warning)
UNCALIBRATED = {"raw_threshold": 0.6, "temperature": 0.1}
#: above this many prototypes, candidate models come from the hnswlib neighbours instead of exact scoring
EXACT_LIMIT = 50_000

_RUNTIME_CACHE: dict[tuple[str, float], Any] = {}


def runtime_of(path: Path) -> Any:
    """The runtime of the bundle at ``path``, loaded once per process (reloaded when its weights change)."""
    key = (str(path), (path / WEIGHTS_FILE).stat().st_mtime)
    if key not in _RUNTIME_CACHE:
        if len(_RUNTIME_CACHE) > 32:
            _RUNTIME_CACHE.clear()
        _RUNTIME_CACHE[key] = runtime_for(load_bundle(path))
    return _RUNTIME_CACHE[key]


# --- scoring --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Evidence:
    """Everything about one image that scoring needs: embeddings, class probabilities, verify cache."""

    emb: np.ndarray
    probs: np.ndarray
    classes: list[str]
    ndim: int
    image: Optional[Image]
    verify: dict[str, Optional[dict[str, float]]] = dataclasses.field(default_factory=dict)


def class_probs(encoder: Any, emb: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        logits = encoder.net.logits(torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32)))
        return torch.softmax(logits, dim=1).mean(dim=0).numpy()


_EVIDENCE: dict[tuple[Any, ...], Evidence] = {}


def clear_cache() -> None:
    """Forget the cached embeddings and verify results of recent images (see :func:`evidence`)."""
    _EVIDENCE.clear()


def fingerprint(image: Image) -> tuple[Any, ...]:
    """A cheap identity of an image's voxels and geometry (shape, geometry, sha1 of a strided sample)."""
    flat = np.asarray(image.array).reshape(-1)
    sample = np.ascontiguousarray(flat[:: max(1, flat.size // 65536)])
    digest = hashlib.sha1(sample.tobytes()).hexdigest()
    return (image.array.shape, str(image.array.dtype), image.spacing, image.origin, image.direction, digest)


def evidence(encoder: Any, image: Image) -> Evidence:
    """Embeddings and class probabilities of ``image`` (the last 8 images are cached with their verify
    results, so selecting the same image with other settings does not embed it again)."""
    key = (encoder_id(encoder), *fingerprint(image))
    ev = _EVIDENCE.get(key)
    if ev is None:
        emb = encoder.embed(image)
        ev = Evidence(
            emb, class_probs(encoder, emb), list(encoder.classes), (2 if image.is_single_slice else 3), image
        )
        if len(_EVIDENCE) >= 8:
            _EVIDENCE.pop(next(iter(_EVIDENCE)))
        _EVIDENCE[key] = ev
    return ev


def agreement(ev: Evidence, card: Any) -> float:
    regions = set(str(card.body_region).split(";"))
    total = 0.0
    for c, p in zip(ev.classes, ev.probs):
        mod, _, reg = c.partition(":")
        if mod == card.modality and reg in regions:
            total += float(p)
    return total


def p_ood(ev: Evidence) -> float:
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
        v = vecs[mask]
        lab_arr = np.asarray(labs)[mask]
        sims = ev.emb @ v.T  # (m, n_model)
        best = sims.max(axis=1)
        n_keep = max(1, int(math.ceil(0.75 * len(best))))
        agg = float(np.sort(best)[::-1][:n_keep].mean())
        flat = sims.max(axis=0)
        top = np.argsort(-flat)[:3]
        out[name] = (agg, [(float(flat[i]), int(lab_arr[i])) for i in top])
    return out


def calibration_key(origins: Sequence[str], verify: bool) -> str:
    return "+".join(sorted(set(origins))) + (":verify" if verify else ":plain")


def verify_of(zoo: Any, ev: Evidence, name: str) -> Optional[dict[str, float]]:
    """The fit signals of model ``name`` for the image of ``ev`` (cached in ``ev`` per bundle and weights)."""
    path = zoo.get(name)
    vkey = f"{path}@{(path / WEIGHTS_FILE).stat().st_mtime}"
    if vkey not in ev.verify:
        ev.verify[vkey] = runtime_of(path).fit_signals(ev.image) if ev.image is not None else None
    return ev.verify[vkey]


def calibrated_logit(raw: float, cal: dict[str, Any]) -> float:
    """Calibrated logit ``(raw - t) / T``."""
    t = float(cal.get("raw_threshold", UNCALIBRATED["raw_threshold"]))
    temp = max(float(cal.get("temperature", UNCALIBRATED["temperature"])), 1e-6)
    return (raw - t) / temp


def fused_rank(
    zoo: Any,
    index: Any,
    ev: Evidence,
    cals: dict[str, dict[str, Any]],
    verify: bool,
    top_k: Optional[int],
    exclude_sources: Sequence[str] = (),
    cards: Optional[dict[str, Any]] = None,
) -> list[dict[str, Any]]:
    """Rank with several prototype origins: per model, the best calibrated logit over the origins.

    Each origin is scored on its own (``rank_models`` with that origin alone) and put on a common scale with its
    own calibration ``cals[origin]``; a model's logit ``z`` is the best of its origins' logits. The verify
    term, which does not depend on the origin, is added to each origin's raw score before calibration.
    Rows carry ``z`` and ``origin`` (the origin that gave the best logit).
    """
    cards = cards if cards is not None else {}
    per = {
        o: {r["name"]: r for r in rank_models(zoo, index, ev, (o,), False, None, exclude_sources, cards)}
        for o in cals
    }
    names = sorted(set().union(*[set(d) for d in per.values()]))

    def best(name: str, delta: float) -> tuple[float, str]:
        return max((calibrated_logit(per[o][name]["raw"] + delta, cals[o]), o) for o in per if name in per[o])

    prelim = sorted(names, key=lambda n: -best(n, 0.0)[0])
    window = prelim if (top_k is None or not verify) else prelim[: max(int(top_k) + 2, 3)]
    rows = []
    for name in prelim:
        v = verify_of(zoo, ev, name) if verify and name in window else None
        delta = WEIGHTS["verify"] * (v["fit"] - 1.0) if v is not None else 0.0
        z, origin = best(name, delta)
        row = dict(per[origin][name])
        nearest = [x for o in per if name in per[o] for x in per[o][name]["nearest"]]
        row.update(raw=row["raw"] + delta, z=z, origin=origin, verify=v,
                   nearest=sorted(nearest, key=lambda x: -x[0])[:3])  # fmt: skip
        rows.append(row)
    n_w = len(window)
    rows = sorted(rows[:n_w], key=lambda r: -r["z"]) + rows[n_w:]
    return rows if top_k is None else rows[: int(top_k)]


def rank_models(
    zoo: Any,
    index: Any,
    ev: Evidence,
    origins: Sequence[str],
    verify: bool,
    top_k: Optional[int],
    exclude_sources: Sequence[str] = (),
    cards: Optional[dict[str, Any]] = None,
) -> list[dict[str, Any]]:
    """Score models; returns dicts (name, card, sim, nearest, raw, verify) best first, cut to ``top_k``."""
    cards = cards if cards is not None else {}
    sims = similarities(index, ev, origins, exclude_sources)
    rows = []
    for name, (sim, nearest) in sims.items():
        if name not in cards:
            cards[name] = zoo.card(name)
        card = cards[name]
        agree = agreement(ev, card)
        dim_bad = ev.ndim != int(card.spatial_dims)
        raw = sim + WEIGHTS["class"] * agree - WEIGHTS["ood"] * p_ood(ev) - WEIGHTS["dimension"] * dim_bad
        rows.append({"name": name, "card": card, "sim": sim, "nearest": nearest, "agree": agree,
                     "dim_bad": dim_bad, "raw": raw, "verify": None})  # fmt: skip
    rows.sort(key=lambda r: -r["raw"])
    if verify:
        window = rows if top_k is None else rows[: max(int(top_k) + 2, 3)]
        for r in window:
            v = verify_of(zoo, ev, r["name"])
            r["verify"] = v
            if v is not None:
                r["raw"] += WEIGHTS["verify"] * (v["fit"] - 1.0)
        rows = sorted(window, key=lambda r: -r["raw"]) + rows[len(window) :]
    return rows if top_k is None else rows[: int(top_k)]


def sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + math.exp(-max(min(z, 60.0), -60.0))))
