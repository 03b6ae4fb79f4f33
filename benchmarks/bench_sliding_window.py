"""Benchmark: sliding windows per forward pass when the zoo's segmentation models are applied.

MONAI's ``sliding_window_inference`` runs one window per forward pass unless told otherwise
(``sw_batch_size=1``), and so did our apply path. The zoo's windows are small (40 x 56 x 40 voxels for
``mr-hippocampus``, one 128 x 128 slice for the slice-wise models), too small for one of them to keep every
CPU thread busy. This script applies zoo models exactly as ``modelselector apply`` does
(``SegmentationRuntime.predict``: the card's Gaussian windows, test-time mirroring and post-processing) to
a volume with one window per pass (the plain baseline) and with ``default_sw_batch_size`` windows per pass,
interleaved, and prints the medians, their ratio, and whether the label maps are identical.

The input is a synthetic MR-like volume (smooth blobs and noise) of the size a user would load, resampled by
the runtime onto each model's grid: the speed of a network does not depend on what the voxels show.

Usage::

    python benchmarks/bench_sliding_window.py [--zoo Resources/zoo] [--models mr-hippocampus mr-cardiac]
        [--size 96 96 96] [--threads 2] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic_mr(size: tuple[int, int, int], spacing: float = 1.0, seed: int = 0):  # noqa: ANN201
    """An MR-like volume ``(z, y, x)`` of ``size`` voxels: smoothed noise plus bright blobs, 1 mm voxels."""
    import numpy as np
    from scipy import ndimage

    from ModelSelectorLib.io import Image

    rng = np.random.default_rng(seed)
    arr = ndimage.gaussian_filter(rng.normal(0, 1, size), 4) * 400 + 300
    grid = np.indices(size, dtype=np.float32)
    for _ in range(6):
        centre = [rng.uniform(0.2, 0.8) * n for n in size]
        dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
        arr += 500 * (dist < rng.uniform(5, 15))
    arr = np.clip(arr + rng.normal(0, 20, size), 0, None).astype(np.float32)
    return Image(arr, (spacing,) * 3, (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default=str(ROOT / "Resources" / "zoo"))
    parser.add_argument("--models", nargs="+", default=["mr-hippocampus", "mr-cardiac"])
    parser.add_argument("--size", type=int, nargs=3, default=(96, 96, 96), metavar=("Z", "Y", "X"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import numpy as np
    import torch

    from ModelSelectorLib.models.segmentation import SegmentationRuntime, default_sw_batch_size
    from ModelSelectorLib.zoo import Zoo, load_bundle

    torch.set_num_threads(args.threads)
    image = synthetic_mr(tuple(args.size))
    print(f"{args.size[2]} x {args.size[1]} x {args.size[0]} voxels of 1 mm, {args.threads} torch threads, device "
          f"{args.device}")  # fmt: skip
    for name in args.models:
        runtime = SegmentationRuntime(
            load_bundle(Zoo(args.zoo).get(name), device=args.device), device=args.device
        )
        batch = default_sw_batch_size(args.device, runtime.card.roi_size)
        runtime.predict(image, sw_batch_size=batch)  # warm-up
        times: dict[int, list[float]] = {1: [], batch: []}
        labels: dict[int, np.ndarray] = {}
        for _ in range(args.repeats):  # interleaved, so load changes hit both alike
            for n in times:
                t0 = time.perf_counter()
                labels[n] = runtime.predict(image, sw_batch_size=n).value.array
                times[n].append(time.perf_counter() - t0)
        one, ours = statistics.median(times[1]), statistics.median(times[batch])
        same = bool(np.array_equal(labels[1], labels[batch]))
        print(f"{name}: 1 window per pass {one:.2f} s, {batch} per pass {ours:.2f} s (median of {args.repeats}); "
              f"ratio {ours / one:.2f}; identical label maps: {same}")  # fmt: skip
        if not same:
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
