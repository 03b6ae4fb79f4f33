"""``select(image)``: which models of the zoo apply to an image, ranked, or "no model in the zoo fits".

How a selection is made (details and the calibration procedure: ``docs/selector.md``):

1. **Embed**: the encoder turns the image into ``m`` view embeddings ``E`` (``(m, 128)``, unit rows) and
   class probabilities over modality x region (mean over views).
2. **Prototype similarity** per model: for each view the best cosine similarity to the model's prototypes
   (of the requested ``origins``), averaged over the best 75 % of views (``sim`` in [-1, 1]). Small
   indices are scored exactly; large ones (> 50,000 prototypes) first take candidate models from the
   hnswlib nearest neighbours.
3. **Raw score** ``raw = sim + 0.1 * agree - 0.2 * p_ood - 0.5 * [dimension mismatch]`` where ``agree`` is
   the encoder's probability of the model card's modality and region(s) and ``p_ood`` its probability of
   "not a radiology image".
4. **Verify** (optional, model-alone): the input's centre, resampled to the model's spacing and
   normalised like its training data, is run through each listed model; the divergence of the input's
   batch-norm statistics from the model's running statistics gives ``fit = 1 / (1 + KL)``, and
   ``raw += 0.3 * (fit - 1)``. The output confidence is reported. A landmark model (no batch norm) is
   checked on how diffuse its heatmaps are compared with its validation images.
5. **Calibrated score**: ``score = sigmoid((raw - t) / T)`` with ``t`` and ``T`` from :func:`calibrate`
   (stored in the index sidecar, per origin and verify flag). With both origins, each origin is scored and
   calibrated on its own and a model takes the better of the two (:func:`_fused_rank`). ``score >= 0.5``
   means the raw score is above the threshold chosen for the stated false-accept rate; a model *fits* when
   ``score >= threshold`` (default 0.5). When no model fits, the selection says "no model in the zoo fits this image".
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

from .errors import IndexMismatchError, InputError
from .io import Image, read_image
from .progress import check_cancel, progress_bar
from .prototypes import ORIGINS, encoder_id

PathLike = Union[str, "os.PathLike[str]"]

#: weights of the raw score (see the module docstring); stored with every calibration
WEIGHTS = {"class": 0.1, "ood": 0.2, "verify": 0.3, "dimension": 0.5}
#: used when the index holds no calibration for the requested origins/verify (with a warning)
UNCALIBRATED = {"raw_threshold": 0.6, "temperature": 0.1}
#: above this many prototypes, candidate models come from the hnswlib neighbours instead of exact scoring
EXACT_LIMIT = 50_000
OOD_CLASS = "OT:OOD"


# --- results --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ModelMatch:
    """One model's answer for an image.

    Attributes:
        name, version, task, modality, body_region: from the model card.
        score: calibrated score in [0, 1]; 0.5 is the calibrated out-of-distribution threshold.
        fits: ``score >= threshold`` of the selection.
        reasons: readable evidence: nearest prototypes (similarity, origin, source), encoder class, verify.
        raw: the uncalibrated raw score; similarity: prototype similarity; verify: verify signals or None.
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

    def to_json_dict(self, reasons: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "modality": self.modality,
            "body_region": self.body_region,
            "score": round(float(self.score), 4),
            "fits": bool(self.fits),
        }
        if reasons:
            d["reasons"] = list(self.reasons)
        return d


@dataclasses.dataclass
class Selection:
    """The answer for one image: ``models`` best first, all fitting models before non-fitting ones.

    Attributes:
        input: the image's path (or ``"<image>"``).
        fits: True when at least one model fits.
        models: :class:`ModelMatch` list.
        image_classes: the encoder's top modality x region classes ``[(class, probability)]``.
        threshold: the score a model needs to fit.
        calibrated: False when the index held no calibration for these settings.
        warnings: notes for the user (e.g. uncalibrated threshold).
        seconds: time per stage.
    """

    input: str
    fits: bool
    models: list[ModelMatch]
    image_classes: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    threshold: float = 0.5
    calibrated: bool = True
    warnings: list[str] = dataclasses.field(default_factory=list)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_json_dict(self, reasons: bool = False) -> dict[str, Any]:
        """``{"input", "fits", "models": [{"name", "version", "task", "modality", "body_region", "score",
        "fits"}]}`` (plus ``"reasons"`` per model when asked)."""
        return {
            "input": self.input,
            "fits": bool(self.fits),
            "models": [m.to_json_dict(reasons) for m in self.models],
        }

    @property
    def fitting(self) -> list[ModelMatch]:
        return [m for m in self.models if m.fits]


# --- shared resources -----------------------------------------------------------------------------------
_ENCODER: dict[str, Any] = {}
_BUNDLES: dict[tuple[str, float], Any] = {}


def default_encoder() -> Any:
    """The bundled encoder, loaded once per process."""
    from .encoder import Encoder

    if "default" not in _ENCODER:
        _ENCODER["default"] = Encoder.load()
    return _ENCODER["default"]


def _loaded_bundle(path: Path) -> Any:
    from .bundle import WEIGHTS_FILE, load_bundle

    key = (str(path), (path / WEIGHTS_FILE).stat().st_mtime)
    if key not in _BUNDLES:
        if len(_BUNDLES) > 32:
            _BUNDLES.clear()
        _BUNDLES[key] = load_bundle(path)
    return _BUNDLES[key]


def _open(zoo: Any, index: Any) -> tuple[Any, Any]:
    from .index import ZooIndex, load_index
    from .zoo import Zoo, open_zoo

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


def _as_image(image: Union[Image, PathLike]) -> tuple[Image, str]:
    if isinstance(image, Image):
        return image, str(image.meta.get("path", "<image>"))
    return read_image(image), str(image)


def _effective_ndim(image: Image) -> int:
    if image.ndim == 3 and image.array.shape[0] == 1:
        return 2
    return image.ndim


# --- model-alone verification ---------------------------------------------------------------------------
def verify_fit(bundle: Any, image: Image) -> Optional[dict[str, float]]:
    """Model-alone signals of how well ``image`` suits a model (cheap: one network pass on one patch).

    The image's central patch of the model's ``roi_size`` at its ``target_spacing`` (canonical orientation)
    is normalised like the model's training data and run through the network, with hooks measuring, per
    batch-norm layer, the Gaussian KL divergence of the patch's feature statistics from the layer's running
    statistics.

    Args:
        bundle: a loaded bundle (:class:`~ModelSelectorLib.bundle.LoadedBundle`).
        image: the input image.

    Returns:
        ``{"kl": mean divergence, "fit": 1 / (1 + kl), "confidence": mean max softmax, "foreground":
        mean 1 - p(background)}``, or None when the image's dimension does not suit the model. Without
        batch-norm running statistics ``kl`` is NaN and ``fit`` 1, except for landmark models, whose fit
        comes from the sharpness of their heatmaps (:func:`_verify_landmarks`).
    """
    import SimpleITK as sitk
    import torch

    from .infer import _axcodes_of, axcodes_direction, background_value, normalize_intensity, resample_to
    from .prototypes import BNStatHooks

    card = bundle.card
    nd = int(card.spatial_dims)
    img = image.to_grayscale() if image.is_multicomponent else image
    if _effective_ndim(img) != nd:
        return None
    if card.task_type == "landmarks":
        return _verify_landmarks(bundle, img)
    if img.ndim == 3 and nd == 2:
        img = Image(
            img.array[0], tuple(img.spacing[:2]), tuple(img.origin[:2]), (1.0, 0.0, 0.0, 1.0), img.meta
        )
    src = img.to_sitk()
    if src.GetPixelID() != sitk.sitkFloat32:
        src = sitk.Cast(src, sitk.sitkFloat32)
    roi = np.asarray(card.roi_size or [64] * nd, dtype=float)
    spacing = np.asarray(card.target_spacing or src.GetSpacing(), dtype=float)
    direction = axcodes_direction(_axcodes_of(bundle), nd)
    centre = np.asarray(src.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in src.GetSize()]))
    ref = sitk.Image([int(r) for r in roi], sitk.sitkUInt8)
    ref.SetSpacing([float(s) for s in spacing])
    ref.SetDirection([float(d) for d in direction.ravel()])
    ref.SetOrigin([float(o) for o in centre - direction @ ((roi - 1) / 2.0 * spacing)])
    res = resample_to(src, ref, sitk.sitkLinear, background_value(img.array, card.intensity))
    arr = normalize_intensity(sitk.GetArrayFromImage(res), card.intensity)
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(tuple(range(nd))[::-1])))[None, None]
    net = bundle.network
    hooks = BNStatHooks(net)
    with hooks, torch.inference_mode():
        out = net(x.to(next(net.parameters()).device))
        if isinstance(out, (list, tuple)):
            out = out[0]
        p = torch.softmax(out.float(), dim=1)
        kl = float(hooks.mean()) if hooks.layers else float("nan")
    fit = 1.0 / (1.0 + kl) if math.isfinite(kl) else 1.0
    return {
        "kl": kl,
        "fit": fit,
        "confidence": float(p.max(dim=1).values.mean()),
        "foreground": float((1.0 - p[:, 0]).mean()) if p.shape[1] > 1 else float(p.mean()),
    }


#: excess of normalised heatmap entropy over the model's validation images that divides a landmark model's
#: fit by e. Measured on the chest X-ray landmark model: adult chest radiographs within 0.02 of its
#: validation entropy, paediatric ones 0.07 above, CT/MR slices, mammograms, knee radiographs and photos
#: 0.13-0.22 above.
LANDMARK_ENTROPY_SCALE = 0.1


def _verify_landmarks(bundle: Any, image: Image) -> dict[str, float]:
    """:func:`verify_fit` of a landmark model (no batch-norm statistics to compare): how much more diffuse its
    heatmaps are on ``image`` than on its validation images (card metric ``val_heatmap_entropy``),
    ``fit = exp(-max(0, entropy - reference) / LANDMARK_ENTROPY_SCALE)``; 1 without a reference."""
    from .landmarks import heatmap_entropy, image_logits

    logits, _, _ = image_logits(bundle, image)
    entropy = float(heatmap_entropy(logits)[0])
    ref = bundle.card.validation_metrics.get("val_heatmap_entropy")
    ref = float(ref) if isinstance(ref, (int, float)) and math.isfinite(ref) else float("nan")
    fit = math.exp(-max(0.0, entropy - ref) / LANDMARK_ENTROPY_SCALE) if math.isfinite(ref) else 1.0
    peak = float(logits.flatten(2).softmax(2).amax(2).mean())
    return {"kl": float("nan"), "fit": fit, "confidence": peak, "foreground": float("nan"),
            "heatmap_entropy": entropy, "reference_entropy": ref}  # fmt: skip


# --- scoring --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Evidence:
    """Everything about one image that scoring needs: embeddings, class probabilities, verify cache."""

    emb: np.ndarray
    probs: np.ndarray
    classes: list[str]
    ndim: int
    image: Optional[Image]
    verify: dict[str, Optional[dict[str, float]]] = dataclasses.field(default_factory=dict)


def _class_probs(encoder: Any, emb: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        logits = encoder.net.logits(torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32)))
        return torch.softmax(logits, dim=1).mean(dim=0).numpy()


_EVIDENCE: dict[tuple[Any, ...], _Evidence] = {}


def _fingerprint(image: Image) -> tuple[Any, ...]:
    """A cheap identity of an image's voxels and geometry (shape, geometry, sha1 of a strided sample)."""
    import hashlib

    flat = np.asarray(image.array).reshape(-1)
    sample = np.ascontiguousarray(flat[:: max(1, flat.size // 65536)])
    digest = hashlib.sha1(sample.tobytes()).hexdigest()
    return (image.array.shape, str(image.array.dtype), image.spacing, image.origin, image.direction, digest)


def _evidence(encoder: Any, image: Image) -> _Evidence:
    """Embeddings and class probabilities of ``image`` (the last 8 images are cached with their verify
    results, so selecting the same image with other settings does not embed it again)."""
    key = (encoder_id(encoder), *_fingerprint(image))
    ev = _EVIDENCE.get(key)
    if ev is None:
        emb = encoder.embed(image)
        ev = _Evidence(emb, _class_probs(encoder, emb), list(encoder.classes), _effective_ndim(image), image)
        if len(_EVIDENCE) >= 8:
            _EVIDENCE.pop(next(iter(_EVIDENCE)))
        _EVIDENCE[key] = ev
    return ev


def _agreement(ev: _Evidence, card: Any) -> float:
    regions = set(str(card.body_region).split(";"))
    total = 0.0
    for c, p in zip(ev.classes, ev.probs):
        mod, _, reg = c.partition(":")
        if mod == card.modality and reg in regions:
            total += float(p)
    return total


def _p_ood(ev: _Evidence) -> float:
    return float(ev.probs[ev.classes.index(OOD_CLASS)]) if OOD_CLASS in ev.classes else 0.0


def _similarities(
    index: Any, ev: _Evidence, origins: Sequence[str], exclude_sources: Sequence[str] = ()
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


def _calibration_key(origins: Sequence[str], verify: bool) -> str:
    return "+".join(sorted(set(origins))) + (":verify" if verify else ":plain")


def _verify_of(zoo: Any, ev: _Evidence, name: str) -> Optional[dict[str, float]]:
    """:func:`verify_fit` of model ``name`` for the image of ``ev`` (cached in ``ev`` per bundle and weights)."""
    path = zoo.get(name)
    vkey = f"{path}@{(path / 'models' / 'model.pt').stat().st_mtime}"
    if vkey not in ev.verify:
        ev.verify[vkey] = verify_fit(_loaded_bundle(path), ev.image) if ev.image is not None else None
    return ev.verify[vkey]


def _z(raw: float, cal: dict[str, Any]) -> float:
    """Calibrated logit ``(raw - t) / T``."""
    t = float(cal.get("raw_threshold", UNCALIBRATED["raw_threshold"]))
    temp = max(float(cal.get("temperature", UNCALIBRATED["temperature"])), 1e-6)
    return (raw - t) / temp


def _fused_rank(
    zoo: Any,
    index: Any,
    ev: _Evidence,
    cals: dict[str, dict[str, Any]],
    verify: bool,
    top_k: Optional[int],
    exclude_sources: Sequence[str] = (),
    cards: Optional[dict[str, Any]] = None,
) -> list[dict[str, Any]]:
    """Rank with several prototype origins: per model, the best calibrated logit over the origins.

    Each origin is scored on its own (``_rank`` with that origin alone) and put on a common scale with its
    own calibration ``cals[origin]``; a model's logit ``z`` is the best of its origins' logits. The verify
    term, which does not depend on the origin, is added to each origin's raw score before calibration.
    Rows carry ``z`` and ``origin`` (the origin that gave the best logit).
    """
    cards = cards if cards is not None else {}
    per = {
        o: {r["name"]: r for r in _rank(zoo, index, ev, (o,), False, None, exclude_sources, cards)}
        for o in cals
    }
    names = sorted(set().union(*[set(d) for d in per.values()]))

    def best(name: str, delta: float) -> tuple[float, str]:
        return max((_z(per[o][name]["raw"] + delta, cals[o]), o) for o in per if name in per[o])

    prelim = sorted(names, key=lambda n: -best(n, 0.0)[0])
    window = prelim if (top_k is None or not verify) else prelim[: max(int(top_k) + 2, 3)]
    rows = []
    for name in prelim:
        v = _verify_of(zoo, ev, name) if verify and name in window else None
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


def _rank(
    zoo: Any,
    index: Any,
    ev: _Evidence,
    origins: Sequence[str],
    verify: bool,
    top_k: Optional[int],
    exclude_sources: Sequence[str] = (),
    cards: Optional[dict[str, Any]] = None,
) -> list[dict[str, Any]]:
    """Score models; returns dicts (name, card, sim, nearest, raw, verify) best first, cut to ``top_k``."""
    cards = cards if cards is not None else {}
    sims = _similarities(index, ev, origins, exclude_sources)
    rows = []
    for name, (sim, nearest) in sims.items():
        if name not in cards:
            cards[name] = zoo.card(name)
        card = cards[name]
        agree = _agreement(ev, card)
        dim_bad = ev.ndim != int(card.spatial_dims)
        raw = sim + WEIGHTS["class"] * agree - WEIGHTS["ood"] * _p_ood(ev) - WEIGHTS["dimension"] * dim_bad
        rows.append({"name": name, "card": card, "sim": sim, "nearest": nearest, "agree": agree,
                     "dim_bad": dim_bad, "raw": raw, "verify": None})  # fmt: skip
    rows.sort(key=lambda r: -r["raw"])
    if verify:
        window = rows if top_k is None else rows[: max(int(top_k) + 2, 3)]
        for r in window:
            v = _verify_of(zoo, ev, r["name"])
            r["verify"] = v
            if v is not None:
                r["raw"] += WEIGHTS["verify"] * (v["fit"] - 1.0)
        rows = sorted(window, key=lambda r: -r["raw"]) + rows[len(window) :]
    return rows if top_k is None else rows[: int(top_k)]


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + math.exp(-max(min(z, 60.0), -60.0))))


def select(
    image: Union[Image, PathLike],
    zoo: Any = None,
    index: Any = None,
    encoder: Any = None,
    top_k: Optional[int] = 5,
    threshold: Optional[float] = None,
    origins: Sequence[str] = ORIGINS,
    verify: bool = True,
    check: bool = True,
    exclude_sources: Sequence[str] = (),
) -> Selection:
    """Rank the zoo's models for an image and decide whether any fits.

    Args:
        image: an :class:`~ModelSelectorLib.io.Image` or an image path (any format :func:`read_image` reads).
        zoo: a :class:`~ModelSelectorLib.zoo.Zoo` or folder (default: :func:`~ModelSelectorLib.zoo.default_zoo_path`).
        index: a :class:`~ModelSelectorLib.index.ZooIndex` or index folder (default: ``ZOO/index``).
        encoder: the encoder (default: the bundled one, loaded once per process).
        top_k: number of models to list (None: every indexed model).
        threshold: minimum calibrated score for a model to fit (default 0.5, the calibrated operating point).
        origins: prototype origins to use: ``("exemplar",)``, ``("data-free",)`` or both.
        verify: re-rank the listed models with model-alone signals (:func:`verify_fit`).
        check: raise when the index disagrees with the zoo (:meth:`ZooIndex.check_against`).
        exclude_sources: prototype sources to ignore (leave-one-out calibration).

    Returns:
        a :class:`Selection`.

    Raises:
        InputError: unreadable image. ZooError: no zoo. IndexMismatchError: empty zoo, missing, corrupt or
        stale index (the message names the command that fixes it).
    """
    origins = tuple(o for o in ORIGINS if o in set(origins))
    if not origins:
        raise InputError(f"origins must name at least one of {', '.join(ORIGINS)}.")
    t0 = time.monotonic()
    zoo, index = _open(zoo, index)
    if check:
        index.check_against(zoo)
    enc = encoder if encoder is not None else default_encoder()
    if index.encoder and index.encoder != encoder_id(enc):
        raise IndexMismatchError(
            f"the index was built from prototypes of encoder {index.encoder}, not of the encoder in use "
            f"({encoder_id(enc)}); regenerate the prototypes (`modelselector prototypes`) and rebuild the index "
            f"(`modelselector index build --zoo {zoo.path}`)."
        )
    img, name = _as_image(image)
    t1 = time.monotonic()
    ev = _evidence(enc, img)
    t2 = time.monotonic()
    thresholds = (index.calibration or {}).get("thresholds", {})
    singles = {o: thresholds.get(_calibration_key((o,), verify)) for o in origins}
    warnings = []
    if len(origins) > 1 and all(c and "raw_threshold" in c for c in singles.values()):
        rows = _fused_rank(zoo, index, ev, singles, verify, top_k, exclude_sources)
    else:
        key = _calibration_key(origins, verify)
        cal = thresholds.get(key)
        if not cal or "raw_threshold" not in cal:
            cal = dict(UNCALIBRATED)
            warnings.append(
                f"the index holds no calibrated threshold for {key}; scores are uncalibrated. Run "
                f"`modelselector index calibrate --zoo {zoo.path}`."
            )
        rows = _rank(zoo, index, ev, origins, verify, top_k, exclude_sources)
        for r in rows:
            r["z"] = _z(r["raw"], cal)
    t3 = time.monotonic()
    thr = 0.5 if threshold is None else float(threshold)
    order = np.argsort(-ev.probs)[:3]
    classes = [(ev.classes[i], float(ev.probs[i])) for i in order]
    matches = []
    for r in rows:
        card = r["card"]
        score = _sigmoid(r["z"])
        reasons = [
            "nearest prototypes: "
            + ", ".join(
                f"{s:.3f} {index.items[lab]['origin']} ({Path(str(index.items[lab].get('source', ''))).name})"
                for s, lab in r["nearest"]
            ),
            f"prototype similarity {r['sim']:.3f} over {len(ev.emb)} view(s)",
            f"encoder reads the image as {classes[0][0]} (p={classes[0][1]:.2f}); p(model's {card.modality} "
            f"{card.body_region}) = {r['agree']:.2f}",
        ]
        if r.get("origin"):
            reasons.append(f"score from its {r['origin']} prototypes (the better of the two origins)")
        if r["dim_bad"]:
            reasons.append(f"the model takes {card.spatial_dims}D inputs; the image is {ev.ndim}D")
        v = r["verify"]
        if v is not None and "heatmap_entropy" in v:
            reasons.append(
                f"verify: heatmap sharpness fit {v['fit']:.2f} (entropy {v['heatmap_entropy']:.2f}; "
                f"{v['reference_entropy']:.2f} on its validation images), peak probability {v['confidence']:.3f}"
            )
        elif v is not None:
            reasons.append(
                f"verify: feature statistics fit {v['fit']:.2f} (batch-norm KL {v['kl']:.2f}), output confidence "
                f"{v['confidence']:.2f}, foreground {v['foreground']:.1%}"
            )
        matches.append(ModelMatch(card.name if card.name else r["name"], card.version, card.task_type,
                                  card.modality, card.body_region, score, score >= thr, reasons, r["raw"],
                                  r["sim"], v))  # fmt: skip
    matches.sort(key=lambda m: (not m.fits, -m.score))
    return Selection(
        input=name,
        fits=any(m.fits for m in matches),
        models=matches,
        image_classes=classes,
        threshold=thr,
        calibrated=not warnings,
        warnings=warnings,
        seconds={"load": round(t1 - t0, 3), "embed": round(t2 - t1, 3), "score": round(t3 - t2, 3)},
    )


# --- calibration ----------------------------------------------------------------------------------------
def ood_references(seed: int = 0, photos: bool = True) -> list[tuple[str, Image]]:
    """Out-of-distribution reference images for calibration: noise, textures and natural photos.

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


def _default_positives(index: Any, per_model: int = 3) -> list[tuple[str, str]]:
    """``(exemplar file, model)`` pairs for leave-one-source-out calibration (files that still exist)."""
    out = []
    for name in index.model_names():
        seen: list[str] = []
        for lab in index.models[name]["labels"]:
            rec = index.items.get(lab)
            if rec and rec["origin"] == "exemplar":
                src = str(rec.get("source", ""))
                if src and src not in seen and Path(src).exists():
                    seen.append(src)
        out += [(s, name) for s in seen[:per_model]]
    return out


def _threshold(pos: np.ndarray, neg: np.ndarray, far: float, margin: float) -> dict[str, Any]:
    if len(neg):
        q = float(np.quantile(neg, 1.0 - far, method="higher"))
    else:
        q = float(np.min(pos)) - 0.1 if len(pos) else UNCALIBRATED["raw_threshold"]
    med = float(np.median(pos)) if len(pos) else q + 0.2
    t = q + margin * (med - q) if med > q else q + 1e-3
    temp = max((med - t) / math.log(9.0), 0.01) if med > t else 0.05
    return {
        "raw_threshold": round(t, 5),
        "temperature": round(temp, 5),
        "n_positive": int(len(pos)),
        "n_negative": int(len(neg)),
        "negative_quantile": round(q, 5),
        "positive_median": round(med, 5),
        "tpr": float(np.mean(pos >= t)) if len(pos) else None,
        "far": float(np.mean(neg >= t)) if len(neg) else None,
    }


def calibrate(
    index: Any,
    zoo: Any,
    encoder: Any = None,
    positives: Optional[Sequence[tuple[Union[Image, PathLike], str]]] = None,
    negatives: Optional[Sequence[Union[Image, PathLike, tuple[str, Image]]]] = None,
    far: float = 0.05,
    margin: float = 0.1,
    cancel: Optional[Any] = None,
) -> dict[str, Any]:
    """Calibrate the "nothing fits" threshold and the score scale; store them in ``index.calibration``.

    Procedure (for each origin set -- exemplar, data-free, both -- and with and without verify):

    - positive scores: the raw score of the right model for in-distribution images. Default: each model's
      exemplar files (up to 3 per model), scored leave-one-source-out (that file's own prototypes are
      excluded); or ``positives`` as ``(image, model name)`` pairs;
    - negative scores: the best raw score of any model for out-of-distribution images (default
      :func:`ood_references`: noise, textures, natural photos);
    - threshold ``t`` = the ``1 - far`` quantile of the negatives, moved ``margin`` of the way towards the
      median positive; temperature ``T = (median positive - t) / ln 9``, so the median positive scores 0.9.

    The index is changed in memory; save it to keep the calibration.

    Returns:
        the calibration dict (also in ``index.calibration``).
    """
    zoo, index = _open(zoo, index)
    enc = encoder if encoder is not None else default_encoder()
    pos_items: list[tuple[Union[Image, PathLike], str, list[str]]] = []
    if positives is None:
        pos_items = [(src, name, [src]) for src, name in _default_positives(index)]
        pos_desc = "exemplar files of each model (up to 3), leave-one-source-out"
    else:
        pos_items = [(img, name, []) for img, name in positives]
        pos_desc = f"{len(pos_items)} given validation images"
    neg_items = ood_references() if negatives is None else [
        n if isinstance(n, tuple) else (str(getattr(n, "meta", {}).get("path", n)) if not isinstance(n, Image)
                                        else "image", n)
        for n in negatives
    ]  # fmt: skip
    singles = [("exemplar",), ("data-free",)]
    scores: dict[str, dict[str, list[float]]] = {}
    cards: dict[str, Any] = {}
    seen: list[tuple[_Evidence, bool, Optional[str], list[str]]] = []
    work = [(True, it) for it in pos_items] + [(False, it) for it in neg_items]
    for is_pos, item in progress_bar(work, desc="calibrating threshold"):
        check_cancel(cancel)
        if is_pos:
            src, model, exclude = item
        else:
            src, model, exclude = item[1], None, []
        img, _ = _as_image(src)
        ev = _evidence(enc, img)
        for origins in singles:
            for verify in (False, True):
                rows = _rank(zoo, index, ev, origins, verify, None, exclude, cards)
                d = scores.setdefault(_calibration_key(origins, verify), {"pos": [], "neg": []})
                if is_pos:
                    d["pos"] += [r["raw"] for r in rows if r["name"] == model][:1]
                elif rows:
                    d["neg"].append(rows[0]["raw"])
        # keep the embeddings and verify results, not the image
        seen.append((dataclasses.replace(ev, image=None), is_pos, model, list(exclude)))
    thresholds: dict[str, dict[str, Any]] = {
        key: _threshold(np.asarray(d["pos"]), np.asarray(d["neg"]), far, margin) for key, d in scores.items()
    }
    # both origins: the best calibrated logit over the origins (see _fused_rank); report its rates
    for verify in (False, True):
        cals = {o[0]: thresholds[_calibration_key(o, verify)] for o in singles}
        pos_z, neg_z = [], []
        for ev, is_pos, model, exclude in seen:
            rows = _fused_rank(zoo, index, ev, cals, verify, None, exclude, cards)
            if is_pos:
                pos_z += [r["z"] for r in rows if r["name"] == model][:1]
            elif rows:
                neg_z.append(rows[0]["z"])
        thresholds[_calibration_key(ORIGINS, verify)] = {
            "fused": list(ORIGINS),
            "n_positive": len(pos_z),
            "n_negative": len(neg_z),
            "tpr": float(np.mean(np.asarray(pos_z) >= 0)) if pos_z else None,
            "far": float(np.mean(np.asarray(neg_z) >= 0)) if neg_z else None,
        }
    cal = {
        "far": far,
        "margin": margin,
        "weights": dict(WEIGHTS),
        "positives": pos_desc,
        "negatives": [n for n, _ in neg_items],
        "encoder": encoder_id(enc),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "thresholds": thresholds,
    }
    index.calibration = cal
    return cal


__all__ = [
    "ModelMatch",
    "Selection",
    "calibrate",
    "default_encoder",
    "ood_references",
    "select",
    "verify_fit",
]
