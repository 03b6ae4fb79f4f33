"""Benchmark: overhead of ``models.segmentation.apply_model`` over a plain MONAI ``sliding_window_inference``.

Both use the same network (a randomly initialised MONAI UNet saved and loaded as a bundle) and the same
input: a CT-like oblique, anisotropic volume (default 128 x 128 x 64 voxels). The plain call runs on the
tensor that ``apply_model``'s preprocessing produced, with as many windows per pass as ``apply_model`` takes
(``default_sw_batch_size``), so the difference is what our apply path adds:
resampling to the canonical grid, intensity normalisation, softmax, resampling the probabilities back onto
the input grid and argmax. Prints the median of several repeats and the ratio (goal: <= 1.10).

Usage::

    python benchmarks/bench_apply.py [--repeats 5] [--size 128 128 64] [--threads 2] [--device cpu] [--sw-batch N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, nargs=3, default=(128, 128, 64), metavar=("X", "Y", "Z"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--sw-batch", type=int, default=None, help="windows per pass (default: apply's default)"
    )
    args = parser.parse_args()

    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    from ModelSelectorLib.datasets import make_synthetic_case
    from ModelSelectorLib.models.preprocessing import preprocess
    from ModelSelectorLib.models.segmentation import apply_model, default_sw_batch_size
    from ModelSelectorLib.training.segmentation import TrainConfig, build_network, network_def
    from ModelSelectorLib.zoo import ModelCard, load_bundle, save_bundle

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y, z = args.size
    image, _ = make_synthetic_case(0, profile="ct", shape=(z, y, x), spacing=(0.8, 0.8, 2.5), oblique=True)
    net_def = network_def(TrainConfig(channels=(8, 16, 32, 64)), spatial_dims=3, n_classes=3)
    card = ModelCard(
        name="bench_unet", version="0.1.0", task_type="segmentation", modality="CT", body_region="ABDOMEN",
        labels=[{"value": 1, "name": "sphere", "color": [1.0, 0.0, 0.0]},
                {"value": 2, "name": "box", "color": [0.0, 0.0, 1.0]}],
        target_spacing=[1.0, 1.0, 2.5], intensity={"mode": "ct", "a_min": -1000.0, "a_max": 1000.0},
        roi_size=[64, 64, 32], synthetic=True,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        bundle = load_bundle(save_bundle(Path(tmp) / "b", card, net_def, build_network(net_def).state_dict()),
                             device=args.device)  # fmt: skip
    net = bundle.network
    array, _ = preprocess(image, card.target_spacing, card.intensity)
    tensor = torch.from_numpy(array)[None, None].to(args.device)

    sw_batch = args.sw_batch or default_sw_batch_size(args.device, card.roi_size)  # the same for both paths

    def plain() -> None:
        with torch.inference_mode():
            sliding_window_inference(tensor, card.roi_size, sw_batch, net, overlap=0.25)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def ours() -> None:
        out = apply_model(bundle, image, device=args.device, sw_batch_size=sw_batch)
        assert out.same_geometry(image)

    plain(), ours()  # warm-up
    t_plain, t_ours = [], []
    for _ in range(args.repeats):  # interleave so load changes hit both alike
        t0 = time.perf_counter()
        plain()
        t_plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ours()
        t_ours.append(time.perf_counter() - t0)
    mp, mo = statistics.median(t_plain), statistics.median(t_ours)
    print(f"input: {image.size} voxels (x, y, z), spacing {image.spacing} mm, oblique; "
          f"network input {tuple(array.shape)}; roi {card.roi_size}; UNet channels (8, 16, 32, 64)")  # fmt: skip
    print(
        f"device: {args.device}, torch threads: {torch.get_num_threads()}, windows per pass: {sw_batch}, "
        f"repeats: {args.repeats}"
    )
    print(f"plain sliding_window_inference (preprocessed tensor): median {mp * 1000:8.1f} ms  "
          f"(all: {', '.join(f'{t * 1000:.0f}' for t in t_plain)})")  # fmt: skip
    print(f"ModelSelectorLib apply_model (image in, labels out):  median {mo * 1000:8.1f} ms  "
          f"(all: {', '.join(f'{t * 1000:.0f}' for t in t_ours)})")  # fmt: skip
    ratio = mo / mp
    print(f"ratio apply_model / plain = {ratio:.3f}  (goal <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'})")
    return 0 if np.isfinite(ratio) else 1


if __name__ == "__main__":
    sys.exit(main())
