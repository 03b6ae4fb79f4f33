"""The zoo model's networks with the later stages fitted again: outlines without images, per-landmark offsets.

Two changes of the stages that need no network training, each a setting of the starter-zoo recipe:

* ``GridConfig.extra_outlines``: `cxr_landmarks_ngaggion/landmarks_all_1024.json` holds JSRT outlines whose
  images are not in the shared data (36 complete ones); they join the training shapes of the shape and contour
  stages;
* ``LandmarkTrainConfig.point_offsets``: the offset stage, each landmark's mean error on the labelled training
  images along and across its predicted contour, added to the final points.

This probe takes the coarse and refinement networks of a zoo version of `dx-chest-landmarks` (default: the
current one; no training), fits the shape, contour and offset stages of the starter-zoo recipe with each
combination of the two settings, and prints the whole model's figures on the validation images only. The test
images are not scored.

usage: python docs/landmarks/refit_probe.py --data ../shared/data [--zoo Resources/zoo] [--version 1.0.4]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

EXTRA = "cxr_landmarks_ngaggion/landmarks_all_1024.json"


def main() -> None:
    import torch

    from ModelSelectorLib.starter_zoo.recipes import recipes
    from ModelSelectorLib.training.landmark_grid import GridConfig, evaluate_model, load_grid_data
    from ModelSelectorLib.training.landmark_study import _whole, _zoo_network
    from ModelSelectorLib.zoo import Zoo

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--zoo", type=Path, default=Path("Resources/zoo"))
    ap.add_argument(
        "--version", default=None, help="the model version whose networks are used (default: current)"
    )
    args = ap.parse_args()
    (recipe,) = recipes(["dx-chest-landmarks"])
    bundle = Zoo(args.zoo).get(recipe.name, args.version)
    state = torch.load(str(bundle / "models" / "model.pt"), map_location="cpu", weights_only=True)
    torch.set_num_threads(2)
    print(f"networks of {bundle}")
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for part in ("coarse", "refine"):  # the zoo model's own networks, as a grid run's weights
            files[part] = Path(tmp) / f"{part}.pt"
            torch.save(
                {k[len(part) + 1 :]: v for k, v in state.items() if k.startswith(part + ".")}, files[part]
            )
        for extra in (None, EXTRA):
            for offsets in (False, True):
                train = {**recipe.grid["train"], "point_offsets": offsets}
                cfg = dataclasses.replace(GridConfig(**recipe.grid), extra_outlines=extra, train=train)
                tc = cfg.train_config
                gd = load_grid_data(args.data, cfg)
                net, later, keep = _zoo_network(gd, tc, recipe.variant, recipe.fraction, 0, files["coarse"],
                                                files["refine"], None)  # fmt: skip
                whole = _whole(net, later, gd, tc, [i for i in gd.splits["train"] if i in keep])
                m, _, _ = evaluate_model(whole, gd, "val", tc, cfg.radii, cfg.radii_px, with_dice=True)
                n_extra = 0 if gd.extra_shapes is None else len(gd.extra_shapes)
                print(f"outlines without images: {n_extra}, offsets: {'yes' if offsets else 'no'}: validation "
                      f"({len(gd.splits['val'])} images) MRE {m['mre_mm']:.3f} mm, SDR 5 px "
                      f"{100 * m['sdr_px_5']:.1f} %, SDR 4 mm {100 * m['sdr_4']:.1f} %, lung Dice "
                      f"{m.get('lung_dice', float('nan')):.4f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
