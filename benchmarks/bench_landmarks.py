"""Benchmark: inference time of the coarse-to-fine chest X-ray landmark model against a plain single-stage model.

Times, per image and in the same run, (1) the whole landmark model of the zoo (coarse heatmaps, shape model,
refinement of every landmark on a patch of the image at 4 x the coarse grid, and with a contour stage the fits
to its shape model and a second refinement) as ``LandmarkRuntime.points_px``
runs it, from the image array to pixel positions, and (2) the plain single-stage model: the same bundle's coarse
network alone, decoded by local centroid (what a single-stage heatmap model at the coarse grid does). When the
zoo still holds an earlier single-stage version of the model, it is timed as well. Prints the median over
repeats, the ratio, and whether the whole model stays within the 1 s per image target.

Usage::

    python benchmarks/bench_landmarks.py [--zoo Resources/zoo] [--model dx-chest-landmarks] [--threads 2]
        [--repeats 20] [IMAGE ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
#: the goal of the whole model on 2 CPU cores, seconds per image
TARGET_S = 1.0


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, lazy imports)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", type=Path, help="radiographs (default: the bundled sample)")
    parser.add_argument("--zoo", type=Path, default=ROOT / "Resources" / "zoo")
    parser.add_argument("--model", default="dx-chest-landmarks")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    import numpy as np
    import torch

    from ModelSelectorLib.io import read_image
    from ModelSelectorLib.models.heatmaps import decode_logits
    from ModelSelectorLib.models.landmark_stages import LANDMARK_STAGES, stage
    from ModelSelectorLib.models.landmarks import LandmarkRuntime, resize_image
    from ModelSelectorLib.zoo import Zoo, load_bundle

    torch.set_num_threads(args.threads)
    zoo = Zoo(args.zoo)
    images = [read_image(p) for p in (args.images or [ROOT / "Resources" / "samples" / "cxr_chest.png"])]
    runtime = LandmarkRuntime(load_bundle(zoo.get(args.model)))
    size = int(runtime.card.roi_size[0])
    stages = [s for s in LANDMARK_STAGES if stage(runtime.stages, s) is not None]

    def whole() -> None:
        for image in images:
            runtime.points_px(image)

    def single_stage(net) -> None:
        for image in images:
            arr = np.asarray(runtime.input_image(image).array, np.float32)
            x, _ = resize_image(arr, size)
            with torch.no_grad():
                decode_logits(net(torch.from_numpy(x)[None, None]))

    n = len(images)
    t_whole = _median_seconds(whole, args.repeats) / n
    t_plain = _median_seconds(lambda: single_stage(runtime.network), args.repeats) / n
    print(f"{args.model} {zoo.current(args.model)} ({', '.join(stages)}; {len(runtime.card.label_names)} landmarks), "
          f"{args.threads} threads, {n} image(s), median of {args.repeats}:")  # fmt: skip
    print(f"  whole model              {1000 * t_whole:8.1f} ms/image")
    print(
        f"  coarse stage alone       {1000 * t_plain:8.1f} ms/image   (whole / single stage = {t_whole / t_plain:.2f})"
    )
    earlier = [v for v in zoo.versions(args.model) if v != zoo.current(args.model)]
    for version in earlier:
        old = LandmarkRuntime(load_bundle(zoo.get(args.model, version)))
        if stage(old.stages, "refine") is None:
            t_old = _median_seconds(lambda net=old.network: single_stage(net), args.repeats) / n
            print(f"  version {version} (single stage, {len(old.card.label_names)} landmarks) {1000 * t_old:8.1f} ms/image   "
                  f"(whole / it = {t_whole / t_old:.2f})")  # fmt: skip
    verdict = "within" if t_whole <= TARGET_S else "ABOVE"
    print(f"  target <= {TARGET_S:g} s/image on {args.threads} CPU cores: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
