"""Would better outlines give the landmark goal? The zoo's model moved onto true and segmented outlines.

The zoo's ``dx-chest-landmarks`` is applied to the training and validation images of the landmark split
(``grid.yaml``: split seed 20261124); the test images are never read. Its points are then moved onto an
outline of each structure (lungs, heart, clavicles) and fitted by the model's own contour stage, three times
(nearest point of the outline, then the contour fit that trusts a point across its contour more than along
it, then the nearest point again). Printed, as mean radial error and its parts along and across the true
contour (mm):

* the shipped model;
* on the true outlines (the polygon through the true points), and on them moved across the contour by a
  smooth random offset of 0.1 and 0.2 coarse pixels (0.56 and 1.1 mm standard deviation);
* with ``--segment``: on the 0.5 iso-lines of a network that segments the five structures, trained here on
  the training images at 256 px (1.4 mm per pixel on JSRT; polygons of the true points filled as soft masks,
  Dice + cross-entropy, small rotations, scalings, shifts and gamma; 2,500 steps, about 10 min on 2 threads);
  per structure it prints how far the true points lie from these outlines and from the model's points
  across the contour.

Usage::

    python docs/landmarks/outline_probe.py --data ../shared/data [--segment] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from error_probe import Part, add_common_arguments, errors, load_probed, model_points  # noqa: E402

#: fit-and-snap rounds on an outline
ROUNDS = 3
#: the segmentation network's training
SEGMENT_STEPS, SEGMENT_BATCH, SEGMENT_LR = 2500, 8, 2e-3
#: polygons are filled on a grid this many times finer, then averaged (soft masks)
SUPERSAMPLE = 4

Outlines = list[list[Optional[np.ndarray]]]


def structure_masks(
    points: np.ndarray, contours: Sequence[np.ndarray], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Soft masks ``(K, size, size)`` (network layout ``(x, y)``) of the polygons through ``points`` ``(P, 2)``
    of each contour, and ``(K,)`` 1 where the contour is annotated (0: its mask is not learnt from)."""
    from PIL import Image, ImageDraw

    masks = np.zeros((len(contours), size, size), np.float32)
    present = np.zeros(len(contours), np.float32)
    for k, idx in enumerate(contours):
        polygon = points[idx]
        if not np.isfinite(polygon).all():
            continue
        canvas = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
        corners = [tuple((q + 0.5) * SUPERSAMPLE - 0.5) for q in polygon]
        ImageDraw.Draw(canvas).polygon(corners, fill=255)
        fine = np.asarray(canvas, np.float32) / 255.0  # rows are y
        masks[k] = fine.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean((1, 3)).T
        present[k] = 1.0
    return masks, present


def train_outline_net(images: Any, masks: np.ndarray, present: np.ndarray, steps: int, seed: int = 0) -> Any:
    """A MONAI UNet trained to segment the structures: ``images`` ``(N, 1, S, S)`` tensor, ``masks``
    ``(N, K, S, S)``, ``present`` ``(N, K)``. Soft Dice over the annotated structures + cross-entropy, with
    random rotations (±10°), scalings (±10 %), shifts (±8 %), gamma and contrast."""
    import torch
    import torch.nn.functional as F
    from monai.networks.nets import UNet

    from ModelSelectorLib.progress import progress_bar

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    y_all, have_all = torch.from_numpy(masks), torch.from_numpy(present)
    n, size = len(images), images.shape[-1]
    net = UNet(2, 1, masks.shape[1], channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=1)
    opt = torch.optim.AdamW(net.parameters(), SEGMENT_LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, SEGMENT_LR, total_steps=steps, pct_start=0.05)

    def uniform(*shape: int) -> Any:
        return torch.rand(*shape, generator=gen) * 2 - 1

    bar = progress_bar(total=steps, desc="outline segmentation")
    for _ in range(steps):
        pick = torch.randint(0, n, (SEGMENT_BATCH,), generator=gen)
        angle, scale = uniform(SEGMENT_BATCH) * math.radians(10), 1 + 0.1 * uniform(SEGMENT_BATCH)
        theta = torch.zeros(SEGMENT_BATCH, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle) * scale, -torch.sin(angle) * scale
        theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle) * scale, torch.cos(angle) * scale
        theta[:, :, 2] = 0.08 * uniform(SEGMENT_BATCH, 2)
        grid = F.affine_grid(theta, (SEGMENT_BATCH, 1, size, size), align_corners=False)
        x = F.grid_sample(images[pick], grid, padding_mode="border", align_corners=False)
        y = F.grid_sample(y_all[pick], grid, padding_mode="zeros", align_corners=False)
        x = x.clamp(0, 1) ** torch.exp(0.3 * uniform(SEGMENT_BATCH, 1, 1, 1))
        x = x * (1 + 0.1 * uniform(SEGMENT_BATCH, 1, 1, 1)) + 0.05 * uniform(SEGMENT_BATCH, 1, 1, 1)
        have = have_all[pick]
        logits = net(x)
        prob, w = torch.sigmoid(logits), have[:, :, None, None]
        ce = (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * w).sum() / (
            w.sum() * size * size
        )
        dice = (2 * (prob * y).sum((2, 3)) + 1) / ((prob + y).sum((2, 3)) + 1)
        loss = ce + 1 - dice[have > 0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.update(1)
    bar.close()
    return net.eval()


def outline_polylines(net: Any, images: Any, batch: int = 16) -> Outlines:
    """Per image and structure the longest 0.5 iso-line of the network's probability, ``(K_i, 2)`` ``(x, y)``
    on the images' grid (None where there is none)."""
    import contourpy
    import torch

    with torch.no_grad():
        prob = torch.cat(
            [torch.sigmoid(net(images[i : i + batch])) for i in range(0, len(images), batch)]
        ).numpy()
    out: Outlines = []
    for maps in prob:
        row: list[Optional[np.ndarray]] = []
        for plane in maps:  # indexed [x, y]: contourpy's (column, row) is (y, x)
            lines = contourpy.contour_generator(z=plane.astype(np.float64)).lines(0.5)
            row.append(max(lines, key=len)[:, ::-1].copy() if lines else None)
        out.append(row)
    return out


def snap_to_outlines(points: np.ndarray, outlines: Outlines, contours: Sequence[np.ndarray]) -> np.ndarray:
    """Each contour's points ``(N, P, 2)`` moved to the nearest point of that image's outline."""
    from ModelSelectorLib.models.landmark_stages import nearest_on_polygon

    out = np.array(points, np.float64)
    for i, row in enumerate(outlines):
        for idx, polygon in zip(contours, row):
            if polygon is not None and len(polygon) >= 3:
                out[i, idx] = nearest_on_polygon(out[i, idx], polygon)
    return out


def fitted_to_outlines(
    contour: Any, start: np.ndarray, outlines: Outlines, contours: Sequence[np.ndarray]
) -> np.ndarray:
    """``start`` snapped onto ``outlines``, then ``ROUNDS`` times fitted by the ``contour`` stage and snapped."""
    from ModelSelectorLib.models.landmark_stages import fit_contour

    points = snap_to_outlines(start, outlines, contours)
    for _ in range(ROUNDS):
        points = snap_to_outlines(fit_contour(contour, points, contours), outlines, contours)
    return points


def true_outlines(truth: np.ndarray, contours: Sequence[np.ndarray], noise: float, seed: int = 0) -> Outlines:
    """The polygons through the true points, each point moved along the contour's normal by a smooth random
    offset (three cosine harmonics around the contour plus independent noise; ``noise`` coarse pixels)."""
    from ModelSelectorLib.models.landmark_stages import contour_frames

    rng = np.random.default_rng(seed)
    out: Outlines = []
    for shape in truth:
        _, normal = contour_frames(shape, contours)
        row: list[Optional[np.ndarray]] = []
        for idx in contours:
            u = np.arange(len(idx)) / len(idx)
            offset = sum(rng.normal(0, noise / math.sqrt(3)) * np.cos(2 * math.pi * k * u + rng.uniform(0, 2 * math.pi))
                         for k in (1, 2, 3)) + rng.normal(0, noise / 2, len(idx))  # fmt: skip
            if not np.isfinite(shape[idx]).all():
                row.append(None)  # not annotated on this image: its points stay where the model put them
            else:
                row.append(shape[idx] + offset[:, None] * normal[idx])
        out.append(row)
    return out


def across_by_structure(points: np.ndarray, part: Part, contours: Sequence[np.ndarray]) -> list[float]:
    """Mean distance (mm) of ``points`` from the true points across the true contour, per structure."""
    from ModelSelectorLib.models.landmark_stages import contour_frames

    known = np.isfinite(part.mm) & np.isfinite(part.truth).all((1, 2))
    normals = [contour_frames(t, contours)[1] for t in part.truth[known]]
    err = (np.asarray(points) - part.truth)[known] * part.mm[known, None, None]
    across = np.stack([np.abs((e * n).sum(1)) for e, n in zip(err, normals)])
    return [float(across[:, idx].mean()) for idx in contours]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(ap)
    ap.add_argument("--segment", action="store_true", help="also train and try a segmentation's outlines")
    ap.add_argument("--steps", type=int, default=SEGMENT_STEPS, help="training steps of the segmentation")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="outline-probe-") as cache:
        return probe(args, Path(cache))


def probe(args: argparse.Namespace, cache: Path) -> int:
    """Print the table of the module docstring; ``cache`` holds the resized images."""
    from ModelSelectorLib.models.landmark_stages import fine_to_coarse, stage

    probed = load_probed(args, cache)
    network, version, gd, tc = probed.network, probed.version, probed.gd, probed.tc
    contours, cond, contour = gd.schema.contours, gd.conditioning, stage(network, "contour")
    parts = [probed.train, probed.val]
    shipped = [model_points(network, p, cond, contours, tc.decode, tc.decode_radius) for p in parts]
    rows = [(f"dx-chest-landmarks {version}", shipped)]
    for noise in (0.0, 0.1, 0.2):
        label = "on the true outlines" + (f", moved across by {noise} coarse px" if noise else "")
        rows.append((label, [fitted_to_outlines(contour, s, true_outlines(p.truth, contours, noise), contours)
                             for s, p in zip(shipped, parts)]))  # fmt: skip
    names = gd.schema.groups  # in the order of contours
    if args.segment:
        masks, present = zip(*[structure_masks(gd.fine[i].points, contours, parts[0].fine.shape[-1])
                               for i in parts[0].ids])  # fmt: skip
        net = train_outline_net(parts[0].fine[:, None], np.stack(masks), np.stack(present), args.steps)
        print(f"segmentation: {sum(p.numel() for p in net.parameters()):,} parameters", flush=True)
        segmented = []
        for s, p in zip(shipped, parts):
            lines = [
                [None if o is None else fine_to_coarse(o) for o in row]
                for row in outline_polylines(net, p.fine[:, None])
            ]
            truth_on = snap_to_outlines(np.nan_to_num(p.truth), lines, contours)
            print(f"{p.name}: true points from the segmented outline / the model's points across, per structure (mm): "
                  + ", ".join(f"{n} {a:.2f} / {b:.2f}" for n, a, b in zip(names, across_by_structure(truth_on, p, contours),
                                                                          across_by_structure(s, p, contours))))  # fmt: skip
            segmented.append(fitted_to_outlines(contour, s, lines, contours))
        rows.append(("on the segmentation's outlines", segmented))

    print(
        "\n| | train MRE | along | across | validation MRE | along | across |\n|---|---|---|---|---|---|---|"
    )
    for label, points in rows:
        tr, va = (errors(q, p, contours) for q, p in zip(points, parts))
        print(f"| {label} | {tr['mre']:.2f} | {tr['along']:.2f} | {tr['across']:.2f} | "
              f"{va['mre']:.2f} | {va['along']:.2f} | {va['across']:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
