"""The zoo model's networks with shape and contour stages fitted with and without outlines that have no image.

`cxr_landmarks_ngaggion/landmarks_all_1024.json` holds JSRT outlines whose images are not in the shared data
(36 complete ones). This probe takes the coarse and refinement networks of the zoo's `dx-chest-landmarks`
(no training), fits the shape and contour stages of the starter-zoo recipe on the labelled training shapes
alone and with those outlines (`GridConfig.extra_outlines`), and prints the whole model's figures on the
validation images only. The test images are not scored.

usage: python docs/landmarks/extra_outlines_probe.py --data ../shared/data [--zoo Resources/zoo]
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
    from ModelSelectorLib.training.landmark_refine import pipeline_network
    from ModelSelectorLib.training.landmark_study import _zoo_network
    from ModelSelectorLib.zoo import Zoo

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--zoo", type=Path, default=Path("Resources/zoo"))
    args = ap.parse_args()
    (recipe,) = recipes(["dx-chest-landmarks"])
    bundle = Zoo(args.zoo).get(recipe.name)
    state = torch.load(str(bundle / "models" / "model.pt"), map_location="cpu", weights_only=True)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for part in ("coarse", "refine"):  # the zoo model's own networks, as a grid run's weights
            files[part] = Path(tmp) / f"{part}.pt"
            torch.save(
                {k[len(part) + 1 :]: v for k, v in state.items() if k.startswith(part + ".")}, files[part]
            )
        for extra in (None, EXTRA):
            cfg = dataclasses.replace(GridConfig(**recipe.grid), extra_outlines=extra)
            tc = cfg.train_config
            gd = load_grid_data(args.data, cfg)
            net, later, keep = _zoo_network(gd, tc, recipe.variant, recipe.fraction, 0, files["coarse"],
                                            files["refine"], None)  # fmt: skip
            whole = pipeline_network(net, later["shape"], later["refine"], later["contour"])
            m, _, _ = evaluate_model(whole, gd, "val", tc, cfg.radii, cfg.radii_px, with_dice=True)
            n_extra = 0 if gd.extra_shapes is None else len(gd.extra_shapes)
            print(f"shapes: {len(keep)} training images + {n_extra} outlines without images ({extra or 'none'}): "
                  f"validation ({len(gd.splits['val'])} images) MRE {m['mre_mm']:.3f} mm, SDR 5 px "
                  f"{100 * m['sdr_px_5']:.1f} %, lung Dice {m.get('lung_dice', float('nan')):.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
