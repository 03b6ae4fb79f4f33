"""Post-processing alternatives scored on the pooled held-out development patients of the FLAIR recipe.

Each fold model of ``build-starter-zoo --only mr-brain-flair-lesion --dev-cv 5 --work WORK`` is applied again
to its own 14 held-out patients as the zoo applies it (Gaussian windows, mirroring); the foreground
probability is then cut at several thresholds and cleaned in several ways, and every variant's mean
per-patient Dice over the 70 patients is printed beside the recipe's choice (argmax, largest component).
With ``--dihedral`` the softmax is also averaged with that of the in-plane transposed image (mirroring and
the x <-> y swap: the eight in-plane flips and quarter turns instead of the recipe's four mirrorings), and
that one alternative is compared with the recipe's choice, patient by patient.
The test patients are never read.

Usage::

    python docs/examples/flair-lesion-dev-cv/postprocessing_probe.py --work WORK [--threads 2] [--dihedral]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

#: components kept: all ("none"), the largest ("lcc"), those at least this fraction of the largest
VARIANTS = [("none", 0.0), ("lcc", 0.0)] + [("fraction", f) for f in (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)]
THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65)


def held_out_probabilities(
    work: Path, transposed: bool = False
) -> list[tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]:
    """(foreground probability, label, the same probability averaged with that of the image with its x and y
    axes swapped, or None without ``transposed``) on the network grid for every held-out patient of every
    fold."""
    import torch

    from ModelSelectorLib.datasets.msd import load_msd
    from ModelSelectorLib.models.segmentation import predict_probabilities
    from ModelSelectorLib.starter_zoo.build import DEV_CV_DIR
    from ModelSelectorLib.training.config import CHECKPOINT_FILE, TrainConfig
    from ModelSelectorLib.training.crossval import kfold_split
    from ModelSelectorLib.training.networks import build_network
    from ModelSelectorLib.training.segmentation import prepare_run
    from ModelSelectorLib.training.slice_twin import slice_twin

    name = "mr-brain-flair-lesion"
    (runs,) = (work / f"{name}-runs").glob(f"*/{DEV_CV_DIR}")
    dataset = load_msd(work / name)
    out = []
    for result_file in sorted(runs.glob("fold*/result.json")):
        res = json.loads(result_file.read_text(encoding="utf-8"))
        config = TrainConfig.from_dict(res["config"]).check()
        train_idx, val_idx = kfold_split(len(dataset.training), res["k"], res["fold"], config.seed, None)
        run = prepare_run(dataset, train_idx, val_idx, config, "MR")
        network = build_network(res["network"])
        state = torch.load(result_file.parent / CHECKPOINT_FILE, map_location="cpu", weights_only=True)[
            "best_state"
        ]
        # the checkpoint holds the 2D twin's weights
        twin = slice_twin(network, res["network"], run.plan.roi_size)
        network.load_state_dict(twin.export_to(network, state) if twin is not None else state)
        network.eval()
        inf = res["inference"]
        for item in run.val_items:
            settings = (
                run.plan.roi_size,
                "cpu",
                4,
                float(inf["overlap"]),
                inf["sw_mode"],
                inf["mirror_axes"],
            )
            probs, both = predict_probabilities(network, item["image"][0], *settings)[1], None
            if transposed:
                swapped = np.ascontiguousarray(np.swapaxes(item["image"][0], 0, 1))
                both = (probs + np.swapaxes(predict_probabilities(network, swapped, *settings)[1], 0, 1)) / 2
            out.append((probs, item["label"][0] > 0, both))
        print(f"fold {res['fold']}: {len(run.val_items)} patients", flush=True)
    return out


def clean(mask: np.ndarray, variant: str, fraction: float) -> np.ndarray:
    """``mask`` with its connected components (full connectivity) kept as ``variant`` says; ``"lcc"`` is the
    zoo's own post-processing."""
    from scipy import ndimage

    from ModelSelectorLib.models.segmentation import keep_largest_component

    if variant == "none":
        return mask
    if variant == "lcc":
        return keep_largest_component(mask.astype(np.uint8), [1]) > 0
    comp, n = ndimage.label(mask, np.ones((3,) * mask.ndim, dtype=bool))
    if n <= 1:
        return mask
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    return np.isin(comp, np.flatnonzero(sizes >= fraction * sizes.max())) & mask


def compare_dihedral(work: Path) -> int:
    """Print the recipe's choice against the same with the transposed image averaged in (largest component),
    the paired mean difference with a 95 % bootstrap interval, and how many patients each way."""
    from ModelSelectorLib.evaluation.metrics import dice_per_label
    from ModelSelectorLib.evaluation.statistics import bootstrap_interval

    cases = held_out_probabilities(work, transposed=True)
    scores = [np.asarray([dice_per_label(clean(p > 0.5, "lcc", 0.0), y, [1])[1] for p, y in pairs])
              for pairs in ([(p, y) for p, y, _ in cases], [(b, y) for _, y, b in cases])]  # fmt: skip
    diff = scores[1] - scores[0]
    low, high = bootstrap_interval(diff)
    print(f"{len(diff)} patients; recipe {scores[0].mean():.4f}, with the transposed image {scores[1].mean():.4f}: "
          f"{diff.mean():+.4f} [{low:+.4f}, {high:+.4f}], better for {(diff > 1e-9).sum()}, worse for "
          f"{(diff < -1e-9).sum()}")  # fmt: skip
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="the --work folder of the --dev-cv run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dihedral", action="store_true", help="compare the eight-fold in-plane averaging")
    args = parser.parse_args()

    import torch

    from ModelSelectorLib.evaluation.metrics import dice_per_label

    torch.set_num_threads(args.threads)
    if args.dihedral:
        return compare_dihedral(args.work)
    cases = held_out_probabilities(args.work)
    scores = {(t, v, f): [dice_per_label(clean(p > t, v, f), y, [1])[1] for p, y, _ in cases]
              for t in THRESHOLDS for v, f in VARIANTS}  # fmt: skip
    chosen = np.asarray(scores[(0.5, "lcc", 0.0)])
    print(f"{len(cases)} patients; the recipe's choice (argmax, largest component): {chosen.mean():.4f}")
    print("threshold | components | mean Dice | better / worse than the choice | below 0.5")
    for (t, v, f), vals in sorted(scores.items(), key=lambda kv: -np.mean(kv[1])):
        a = np.asarray(vals)
        kept = v if v != "fraction" else f">= {f:g} x largest"
        print(f"{t:.2f} | {kept} | {a.mean():.4f} | {(a > chosen + 1e-9).sum()} / {(a < chosen - 1e-9).sum()} | "
              f"{(a < 0.5).sum()}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
