"""Where the error of the zoo's chest X-ray landmark model lies, and what does not remove it.

The zoo's ``dx-chest-landmarks`` is applied to the training and validation images of the landmark split
(``grid.yaml``: split seed 20261124); the test images are never read. Printed, as mean radial error and its
parts along and across the true contour (mm; images with a known pixel spacing):

* the shipped model, and its coarse stage with the shape model alone;
* floors: the contour stage's shape model fitted to the true points, and the refinement network started
  from the true points (and from them moved at random by 0.5-2 coarse pixels);
* post-hoc changes that need no training: points placed between anchor points at their mean arc-length
  fractions (the annotation spaces most points evenly between anatomical corners; anchors chosen greedily on
  the training shapes), averaging the model over shifted and scaled copies of the image, and subtracting each
  landmark's mean error on the training images;
* with ``--mid-refiner``: a second refinement network trained on patches of the image at 128 px (32 px = 90
  mm of context, about 1.5 min on 2 threads), run between the coarse and the fine stage.

Usage::

    python docs/landmarks/error_probe.py --data ../shared/data [--version 1.0.4] [--threads 2] [--mid-refiner]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

HERE = Path(__file__).resolve().parent
#: shifts (coarse pixels) and scales of the averaged copies
TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))
TTA_SCALES = (0.95, 1.0, 1.05)
#: the middle refinement works on this multiple of the coarse grid (64 -> 128 px)
MID_SCALE = 2


@dataclasses.dataclass
class Part:
    """The images of one part (``"train"`` or ``"val"``): true points ``(N, P, 2)`` on the coarse grid, mm per
    coarse pixel ``(N,)`` (NaN without a known spacing), and the network inputs on the coarse and fine grids."""

    name: str
    ids: list[str]
    truth: np.ndarray
    mm: np.ndarray
    coarse: Any
    fine: Any


def errors(points: np.ndarray, part: Part, contours: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean radial error and its mean absolute parts along and across the true contour (mm)."""
    from ModelSelectorLib.models.landmark_stages import contour_frames

    known = np.isfinite(part.mm)
    err = (np.asarray(points) - part.truth)[known] * part.mm[known, None, None]
    frames = [contour_frames(t, contours) for t in part.truth[known]]
    along = np.stack([np.abs((e * t).sum(1)) for e, (t, _) in zip(err, frames)])
    across = np.stack([np.abs((e * n).sum(1)) for e, (_, n) in zip(err, frames)])
    return {
        "mre": float(np.nanmean(np.linalg.norm(err, axis=-1))),
        "along": float(np.nanmean(along)),
        "across": float(np.nanmean(across)),
    }


def model_points(network: Any, part: Part, conditioning: np.ndarray, contours: Sequence[np.ndarray], decode: str,
              radius: int, later: bool = True) -> np.ndarray:  # fmt: skip
    """The model's points on ``part`` (coarse grid); ``later=False``: its coarse stage and shape model alone."""
    from ModelSelectorLib.models.landmark_stages import predict_landmarks

    fine = part.fine if later else None
    return predict_landmarks(network, part.coarse, fine, conditioning, decode, radius, contours=contours)[0]


# --- placing points between anchors ------------------------------------------------------------------------


def _arc(polygon: np.ndarray) -> tuple[np.ndarray, float]:
    """Arc length of a closed ``polygon`` ``(m, 2)`` at each corner, and its perimeter."""
    steps = np.linalg.norm(np.diff(np.vstack([polygon, polygon[:1]]), axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(steps)[:-1]]), float(steps.sum())


def _segments(anchors: Sequence[int], m: int) -> list[tuple[int, int, list[int]]]:
    """``(anchor, next anchor, the corners strictly between them)`` around a closed contour of ``m`` corners."""
    out = []
    for j, a in enumerate(anchors):
        b = anchors[(j + 1) % len(anchors)]
        n = (b - a) % m or m
        out.append((a, b, [(a + k) % m for k in range(1, n)]))
    return out


def anchor_fractions(shapes: np.ndarray, anchors: Sequence[int]) -> np.ndarray:
    """Mean arc-length fraction of each corner between its two anchors over ``shapes`` ``(N, m, 2)``."""
    m = shapes.shape[1]
    fractions = np.zeros((len(shapes), m))
    for s, shape in enumerate(shapes):
        cum, total = _arc(shape)
        for a, b, between in _segments(anchors, m):
            length = (cum[b] - cum[a]) % total or total
            for k in between:
                fractions[s, k] = ((cum[k] - cum[a]) % total) / length
    return fractions.mean(0)


def place_between_anchors(polygon: np.ndarray, anchors: Sequence[int], fractions: np.ndarray) -> np.ndarray:
    """``polygon``'s corners moved along it to ``fractions`` of the arc between their anchors."""
    m = len(polygon)
    cum, total = _arc(polygon)
    out = polygon.copy()
    for a, b, between in _segments(anchors, m):
        length = (cum[b] - cum[a]) % total or total
        for k in between:
            target = (cum[a] + fractions[k] * length) % total
            i = int(np.searchsorted(cum, target, side="right")) - 1
            step = polygon[(i + 1) % m] - polygon[i]
            out[k] = polygon[i] + step * (target - cum[i]) / max(float(np.linalg.norm(step)), 1e-9)
    return out


def choose_anchors(
    shapes: np.ndarray, predicted: np.ndarray, score: Callable[[np.ndarray], float]
) -> list[int]:
    """Anchors added one at a time (from the first corner) while the error ``score`` of the re-placed
    ``predicted`` points falls by at least 0.005 mm; fractions from the true ``shapes``."""
    m = shapes.shape[1]

    def placed(anchors: list[int]) -> np.ndarray:
        f = anchor_fractions(shapes, anchors)
        return np.stack([place_between_anchors(p, anchors, f) for p in predicted])

    anchors, current = [0], score(placed([0]))
    while len(anchors) < m:
        tries = [(score(placed(sorted(anchors + [k]))), k) for k in range(m) if k not in anchors]
        best, k = min(tries)
        if best > current - 0.005:
            break
        anchors, current = sorted(anchors + [k]), best
    return anchors


# --- averaging over shifted and scaled copies --------------------------------------------------------------


def warped(images: np.ndarray, scale: float, shift: Sequence[float]) -> np.ndarray:
    """``images`` ``(N, X, Y)`` zoomed by ``1 / scale`` about the centre and moved by ``-shift`` pixels."""
    from scipy import ndimage

    centre = (images.shape[-1] - 1) / 2
    offset = scale * (np.asarray(shift, float) - centre) + centre
    return np.stack([ndimage.affine_transform(im, np.eye(2) * scale, offset=offset, order=1, mode="nearest")
                     for im in images]).astype(np.float32)  # fmt: skip


def add_common_arguments(ap: argparse.ArgumentParser) -> None:
    """The arguments every landmark probe takes: data, zoo, model version, threads."""
    ap.add_argument("--data", required=True, help="the shared data folder (cxr_landmarks/ inside)")
    ap.add_argument("--zoo", default="Resources/zoo")
    ap.add_argument("--version", default=None, help="model version (default: the zoo's current one)")
    ap.add_argument("--threads", type=int, default=2)


@dataclasses.dataclass
class Probed:
    """The zoo's landmark model (``network``, its ``version``) and the grid's data (``gd``, training settings
    ``tc``) with its training and validation parts."""

    network: Any
    version: str
    gd: Any
    tc: Any
    train: Part
    val: Part


def load_probed(args: argparse.Namespace, cache: Path) -> Probed:
    """Load the model named by ``args`` and the grid's training and validation images (resized into ``cache``)."""
    import torch

    from ModelSelectorLib.training.landmark_grid import GridConfig, load_grid_data
    from ModelSelectorLib.training.landmarks import stack_cases
    from ModelSelectorLib.zoo import Zoo
    from ModelSelectorLib.zoo.bundle import load_bundle

    torch.set_num_threads(args.threads)
    cfg = GridConfig.from_dict(yaml.safe_load((HERE / "grid.yaml").read_text(encoding="utf-8")))
    tc = cfg.train_config
    zoo = Zoo(args.zoo)
    version = args.version or zoo.current("dx-chest-landmarks")
    network = load_bundle(zoo.get("dx-chest-landmarks", version)).network
    gd = load_grid_data(args.data, cfg, cache_dir=cache)

    def part(name: str) -> Part:
        cases = gd.cases(name)
        spacing = np.array([c.spacing_mm if c.spacing_mm is not None else (np.nan, np.nan) for c in cases])
        return Part(name, list(gd.splits[name]), np.stack([c.points for c in cases]),
                    (np.stack([c.scale for c in cases]) * spacing).mean(1),
                    stack_cases(cases, tc.sigma).images, gd.fine_images(gd.splits[name]))  # fmt: skip

    return Probed(network, version, gd, tc, part("train"), part("val"))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(ap)
    ap.add_argument("--mid-refiner", action="store_true", help="also train and try a 128 px refinement")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="landmark-probe-") as cache:
        return probe(args, Path(cache))


def probe(args: argparse.Namespace, cache: Path) -> int:
    """Print the table of the module docstring; ``cache`` holds the resized images."""
    import torch

    from ModelSelectorLib.datasets.landmarks import load_dataset
    from ModelSelectorLib.models.landmark_stages import (
        REFINE_SCALE,
        contour_frames,
        fit_contour,
        project_shape,
        refine_and_fit,
        refine_points,
        stage,
    )
    from ModelSelectorLib.training.landmark_refine import fine_arrays, train_refiner

    probed = load_probed(args, cache)
    network, version, gd, tc = probed.network, probed.version, probed.gd, probed.tc
    contours, cond = gd.schema.contours, gd.conditioning
    train, val = probed.train, probed.val
    rows: list[tuple[str, dict[str, float], dict[str, float]]] = []

    def row(label: str, make: Callable[[Part], np.ndarray]) -> None:
        rows.append((label, errors(make(train), train, contours), errors(make(val), val, contours)))
        print(f"{label}: train {rows[-1][1]['mre']:.2f}, validation {rows[-1][2]['mre']:.2f} mm", flush=True)

    coarse = {p.name: model_points(network, p, cond, contours, tc.decode, tc.decode_radius, later=False)
              for p in (train, val)}  # fmt: skip
    shipped = {
        p.name: model_points(network, p, cond, contours, tc.decode, tc.decode_radius) for p in (train, val)
    }
    row(f"dx-chest-landmarks {version}", lambda p: shipped[p.name])
    row("coarse stage and shape model alone", lambda p: coarse[p.name])
    row("floor: contour shape model fitted to the true points",
        lambda p: fit_contour(stage(network, "contour"), p.truth, contours, along_weight=1.0, prior=0.0))  # fmt: skip
    rng = np.random.default_rng(0)
    for jitter in (0.0, 0.5, 1.0, 2.0):
        row(f"refinement from the true points moved by N(0, {jitter}) coarse px",
            lambda p, j=jitter: (refine_points(stage(network, "refine"), p.fine,
                                               (p.truth + rng.normal(0, j, p.truth.shape) + 0.5) * REFINE_SCALE - 0.5,
                                               cond) + 0.5) / REFINE_SCALE - 0.5)  # fmt: skip

    # anchors and fractions come from the training images only
    complete = np.isfinite(train.truth).all((1, 2)) & np.isfinite(train.mm)
    plan = []
    for idx in contours:
        shapes, predicted = train.truth[complete][:, idx], shipped["train"][complete][:, idx]
        truth, mm = shapes, train.mm[complete]

        def score(q: np.ndarray, truth: np.ndarray = truth, mm: np.ndarray = mm) -> float:
            return float(np.nanmean(np.linalg.norm(q - truth, axis=-1) * mm[:, None]))

        anchors = choose_anchors(shapes, predicted, score)
        plan.append((idx, anchors, anchor_fractions(shapes, anchors)))

    def between_anchors(p: Part) -> np.ndarray:
        out = shipped[p.name].copy()
        for idx, anchors, fractions in plan:
            out[:, idx] = np.stack([place_between_anchors(q, anchors, fractions) for q in out[:, idx]])
        return out

    row(f"points placed between anchors ({', '.join(str(len(a)) for _, a, _ in plan)} anchors per contour)",
        between_anchors)  # fmt: skip

    def averaged(p: Part) -> np.ndarray:
        outs = []
        for scale in TTA_SCALES:
            for shift in TTA_SHIFTS:
                q = Part(p.name, p.ids, p.truth, p.mm, torch.from_numpy(warped(p.coarse.numpy()[:, 0], scale, shift)[:, None]),
                         torch.from_numpy(warped(p.fine.numpy(), scale, np.asarray(shift) * REFINE_SCALE)))  # fmt: skip
                pts = model_points(network, q, cond, contours, tc.decode, tc.decode_radius)
                centre = (p.coarse.shape[-1] - 1) / 2
                outs.append(scale * (pts - centre + np.asarray(shift)) + centre)
        return np.mean(outs, 0)

    row(f"mean over {len(TTA_SCALES) * len(TTA_SHIFTS)} shifted and scaled copies", averaged)

    def frames(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t, n = zip(*[contour_frames(q, contours) for q in points])
        return np.array(t), np.array(n)

    t, n = frames(shipped["train"])
    miss = train.truth - shipped["train"]
    bias_t, bias_n = np.nanmean((miss * t).sum(-1), 0), np.nanmean((miss * n).sum(-1), 0)

    def debiased(p: Part) -> np.ndarray:
        t, n = frames(shipped[p.name])
        return shipped[p.name] + bias_t[None, :, None] * t + bias_n[None, :, None] * n

    row("each landmark's mean training error subtracted (in its contour frame)", debiased)

    if args.mid_refiner:
        mid_cases, _ = load_dataset(args.data, tc.size * MID_SCALE, gd.schema, cache=cache / "mid.npz",
                                    unlabelled=False)  # fmt: skip
        mid = {c.case_id: c for c in mid_cases}
        mid_tc = dataclasses.replace(tc, refine_jitter=3.0, refine_steps=1500, threads=args.threads)
        mid_net = train_refiner(fine_arrays([mid[i] for i in train.ids]), cond, mid_tc, 0, desc="mid refine")

        def through_mid(p: Part) -> np.ndarray:
            images = torch.from_numpy(np.stack([mid[i].image for i in p.ids]).astype(np.float32))
            moved = refine_points(mid_net, images, (coarse[p.name] + 0.5) * MID_SCALE - 0.5, cond)
            start = project_shape(stage(network, "shape"), (moved + 0.5) / MID_SCALE - 0.5)
            return refine_and_fit(network, p.fine, start, cond, contours)

        row("a 128 px refinement between the coarse and the fine stage", through_mid)

    print(
        "\n| | train MRE | along | across | validation MRE | along | across |\n|---|---|---|---|---|---|---|"
    )
    for label, tr, va in rows:
        print(f"| {label} | {tr['mre']:.2f} | {tr['along']:.2f} | {tr['across']:.2f} | "
              f"{va['mre']:.2f} | {va['along']:.2f} | {va['across']:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
