"""Benchmark: a training step in float32 against one with a bfloat16 forward pass (``precision: bf16``), and
the bfloat16 step in the layout training uses (``fitting.training_memory_format``: channels-last for 3D
networks on the CPU) against the plain contiguous one.

All run the same optimiser steps of a starter-zoo recipe (default ``mr-hippocampus``: DynUNet 16-128,
4 patches of 40 x 56 x 40, Adam, Dice + cross entropy, gradient clipping) through
``fitting._train_epoch``, from the same initial weights and batches of random patches. Prints the median
seconds per step of each and the ratios. Whether the bf16 weights are as good is a question for held-out
cases, not for this script (``docs/starter-zoo.md``).

Usage::

    python benchmarks/bench_train_step.py [--recipe mr-hippocampus] [--roi 40 56 40] [--steps 8]
        [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="mr-hippocampus", help="a segmentation recipe of the starter zoo")
    parser.add_argument("--roi", type=int, nargs="+", default=(40, 56, 40), help="patch size (the card's)")
    parser.add_argument("--steps", type=int, default=8, help="optimiser steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from ModelSelectorLib.starter_zoo.build import train_config
    from ModelSelectorLib.starter_zoo.recipes import recipes
    from ModelSelectorLib.training.fitting import _loss, _optimizer, _train_epoch, training_memory_format
    from ModelSelectorLib.training.networks import build_network, network_def

    torch.set_num_threads(args.threads)
    recipe = recipes([args.recipe])[0]
    base = train_config(recipe, seed=0, val_fraction=0.0)
    n_classes = len(recipe.labels) + 1
    roi = [int(r) for r in args.roi]
    torch.manual_seed(0)
    start = build_network(network_def(base, len(roi), n_classes, roi)).state_dict()
    patches = base.batch_size * base.num_samples
    batches = [{"image": torch.randn(patches, 1, *roi),
                "label": torch.randint(0, n_classes, (patches, 1, *roi))} for _ in range(args.steps)]  # fmt: skip

    def run(precision: str, memory_format: Any) -> list[float]:
        config = dataclasses.replace(base, precision=precision)
        net, loss_fn = build_network(network_def(config, len(roi), n_classes, roi)), _loss(config.loss)
        net.to(memory_format=memory_format).train()

        def fresh() -> tuple[Any, Any]:  # the starting weights and a new optimiser and schedule
            net.load_state_dict(copy.deepcopy(start))
            optimizer = _optimizer(net, config)
            return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

        _train_epoch(net, batches[:1], 1, *fresh(), loss_fn, config, None, memory_format)  # warm-up
        optimizer, scheduler = fresh()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            _train_epoch(net, batches, args.steps, optimizer, scheduler, loss_fn, config, None, memory_format)
            times.append((time.perf_counter() - t0) / args.steps)
        return times

    plain, trained = torch.contiguous_format, training_memory_format(len(roi), "cpu")
    fp32_s = statistics.median(run("fp32", plain))
    bf16_s = statistics.median(run("bf16", plain))
    layout_s = statistics.median(run("bf16", trained))
    print(f"recipe {recipe.name}: {patches} patches of {' x '.join(map(str, roi))} per step, "
          f"{args.threads} thread(s), {args.repeats} x {args.steps} steps")  # fmt: skip
    print(f"float32 step                     {fp32_s:.3f} s (median)")
    print(f"bfloat16 forward step            {bf16_s:.3f} s (median)")
    print(f"bfloat16, training layout        {layout_s:.3f} s (median; {trained})")
    print(f"speed-up of bfloat16             {fp32_s / bf16_s:.2f}x")
    print(f"speed-up of the training layout  {bf16_s / layout_s:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
