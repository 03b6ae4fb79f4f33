"""MONAI's own bundle runner against `modelselector apply`, on real images of `../shared/data`.

For each segmentation model of the bundled zoo (current version), copies N images into a folder, runs the
command its card gives (`python -m monai.bundle run --config_file configs/inference.json --bundle_root .
--dataset_dir IN --output_dir OUT`, in the bundle folder), applies the model to the same images with ModelSelector's
runtime, and prints the share of voxels with the same label, the Dice of each label between the two label maps,
and whether MONAI's output keeps the input's geometry. Needs `monai[fire,ignite,skimage]` (the test requirements).

Usage (repository root)::

    .venv/bin/python docs/examples/monai-bundle-run/compare.py [--data ../shared/data] [--n 10] [--work DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))


def image_sets(data: Path, n: int) -> dict[str, list[Path]]:
    """N images per model, the first in name order (labels and masks left out)."""
    return {
        "mr-hippocampus": sorted(p for p in (data / "msd_hippocampus").glob("hippocampus_*.nii.gz")
                                 if "label" not in p.name)[:n],
        "mr-cardiac": sorted((data / "acdc_cardiac_mr").glob("patient*_frame01.nii.gz"))[:n],
        "mr-brain-flair-lesion": sorted((data / "lgg_brain_mr").glob("*_flair.nii.gz"))[:n],
        "dx-chest-lungs": sorted(p for p in (data / "cxr_landmarks").glob("*.png") if "mask" not in p.name)[:n],
        "ct-abdomen-organs": [ROOT / "Resources" / "samples" / "ct_abdomen.nii.gz"],
    }  # fmt: skip


def compare(model: str, files: list[Path], work: Path) -> str:
    from ModelSelectorLib.apply import open_runtime
    from ModelSelectorLib.evaluation.metrics import dice_per_label
    from ModelSelectorLib.io.image import read_image
    from ModelSelectorLib.resources import default_zoo_path
    from ModelSelectorLib.zoo import Zoo

    zoo = Zoo(default_zoo_path())
    images, out = work / model / "in", work / model / "out"
    images.mkdir(parents=True)
    for f in files:
        shutil.copy(f, images / f.name)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--bundle_root",
           ".", "--dataset_dir", str(images), "--output_dir", str(out)]  # fmt: skip
    res = subprocess.run(cmd, cwd=zoo.get(model), capture_output=True, text=True)
    if res.returncode != 0:
        return f"{model}: MONAI's run failed:\n{res.stderr[-2000:]}"
    runtime = open_runtime(zoo, model)
    agree, dice, kept, differ = [], [], 0, 0
    for f in files:
        image = read_image(f)
        ours = runtime.predict(image).value
        stem = f.name[: -len(".nii.gz")] if f.name.endswith(".nii.gz") else f.stem
        theirs = read_image(next(out.glob(f"{stem}_seg.*")), check_content=False)
        a, b = ours.array, np.asarray(theirs.array).reshape(ours.array.shape)
        kept += f.suffix == ".png" or theirs.same_geometry(image)  # a PNG has no geometry to keep
        agree.append(float((a == b).mean()))
        differ += int((a != b).sum())
        dice += list(dice_per_label(a, b, [v for v in np.unique(a) if v]).values())
    return (f"{model}: {len(files)} images; {differ} voxels labelled differently; with the same label: mean "
            f"{np.mean(agree):.4f}, lowest {min(agree):.4f}; Dice per label: mean {np.mean(dice):.3f}, lowest "
            f"{min(dice):.3f}; geometry kept {kept}/{len(files)}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--n", type=int, default=10, help="images per model")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for model, files in image_sets(args.data, args.n).items():
            print(compare(model, files, work), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
