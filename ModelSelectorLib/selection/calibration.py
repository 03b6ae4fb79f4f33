"""Calibration of the "nothing fits" decision, and the calibrated index of a zoo.

For each origin set (exemplar, data-free, both) and with and without verification, the selector's raw
scores of in-distribution images for their own model (positives) and the best raw scores of
out-of-distribution images (negatives) set a threshold at a stated false-accept rate and a temperature
that maps the median positive to a score of 0.9. The result is stored in the index sidecar.
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
from .prototypes import ORIGINS, encoder_id
from .scoring import UNCALIBRATED, WEIGHTS, Evidence, calibration_key, evidence, fused_rank, rank_models
from .selector import as_image, open_zoo_and_index

PathLike = Union[str, "os.PathLike[str]"]


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
    zoo, index = open_zoo_and_index(zoo, index)
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
    seen: list[tuple[Evidence, bool, Optional[str], list[str]]] = []
    work = [(True, it) for it in pos_items] + [(False, it) for it in neg_items]
    for is_pos, item in progress_bar(work, desc="calibrating threshold"):
        check_cancel(cancel)
        if is_pos:
            src, model, exclude = item
        else:
            src, model, exclude = item[1], None, []
        img, _ = as_image(src)
        ev = evidence(enc, img)
        for origins in singles:
            for verify in (False, True):
                rows = rank_models(zoo, index, ev, origins, verify, None, exclude, cards)
                d = scores.setdefault(calibration_key(origins, verify), {"pos": [], "neg": []})
                if is_pos:
                    d["pos"] += [r["raw"] for r in rows if r["name"] == model][:1]
                elif rows:
                    d["neg"].append(rows[0]["raw"])
        # keep the embeddings and verify results, not the image
        seen.append((dataclasses.replace(ev, image=None), is_pos, model, list(exclude)))
    thresholds: dict[str, dict[str, Any]] = {
        key: _threshold(np.asarray(d["pos"]), np.asarray(d["neg"]), far, margin) for key, d in scores.items()
    }
    # both origins: the best calibrated logit over the origins (see fused_rank); report its rates
    for verify in (False, True):
        cals = {o[0]: thresholds[calibration_key(o, verify)] for o in singles}
        pos_z, neg_z = [], []
        for ev, is_pos, model, exclude in seen:
            rows = fused_rank(zoo, index, ev, cals, verify, None, exclude, cards)
            if is_pos:
                pos_z += [r["z"] for r in rows if r["name"] == model][:1]
            elif rows:
                neg_z.append(rows[0]["z"])
        thresholds[calibration_key(ORIGINS, verify)] = {
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


_calibrate = calibrate  # build_index's flag of the same name hides the function


def build_index(
    zoo: Any,
    models: Optional[Sequence[str]] = None,
    calibrate: bool = True,
    encoder: Any = None,
    far: float = 0.05,
    M: int = 16,
    ef_construction: int = 200,
    cancel: Optional[Any] = None,
) -> ZooIndex:
    """A new index over the stored prototypes of every model of ``zoo`` (or of ``models``)
    (:func:`~.index.index_zoo`), calibrated at false-accept rate ``far`` (:func:`calibrate`; needs the
    encoder, default: the bundled one) unless ``calibrate`` is False. The index is not saved:
    call :meth:`~.index.ZooIndex.save` (e.g. to :func:`~.index.default_index_dir`).

    Raises:
        IndexMismatchError: the zoo is empty, or a model has no prototypes (the message names it and the
        command that makes them).
    """
    idx = index_zoo(zoo, models, M=M, ef_construction=ef_construction, cancel=cancel)
    if calibrate:
        _calibrate(idx, zoo, encoder=encoder, far=far, cancel=cancel)
    return idx


__all__ = ["build_index", "calibrate", "ood_references"]
