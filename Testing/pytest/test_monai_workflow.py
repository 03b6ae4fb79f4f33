"""A segmentation bundle runs with MONAI's own tools: ``python -m monai.bundle run`` on its ``inference.json``
writes the labels that ``apply`` computes, in the input's geometry (the command its card gives)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ignite")
pytest.importorskip("fire")


def _monai_run(bundle: Path, images: Path, out: Path) -> None:
    """The card's command, in the bundle folder."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
           "--bundle_root", ".", "--dataset_dir", str(images), "--output_dir", str(out)]  # fmt: skip
    res = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small 3D model trained on synthetic CT cases (oblique, anisotropic; 4 for training, 1 for validation), with
    test-time mirroring and largest-component post-processing on its card; and the last of those cases."""
    import torch

    from ModelSelectorLib.datasets import make_synthetic_msd
    from ModelSelectorLib.training.segmentation import TrainConfig, train_segmentation

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("workflow")
    msd = make_synthetic_msd(root / "msd", n_cases=5, profile="ct", seed=3)
    # augmented, so that the model is mirrored at test time (along the axes it was flipped along in training)
    config = TrainConfig(channels=(8, 16, 32), epochs=60, lr=3e-3, batch_size=2, num_samples=4,
                         roi_size=(16, 16, 16), target_spacing=(2.0, 2.0, 3.0), augment=True, val_interval=20,
                         seed=0, num_threads=2, val_fraction=0.2, postprocess="lcc", tta_mirror=True)  # fmt: skip
    bundle = train_segmentation(msd, "synth-ct", root / "zoo", config)
    held_out = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    inference = held_out["modelselector"]["inference"]
    assert inference["keep_largest_component"] == [1, 2] and len(inference["mirror_axes"]) >= 2
    return bundle, sorted((msd / "imagesTr").glob("*.nii.gz"))[-1]


def test_monai_bundle_run_writes_what_apply_computes_in_the_inputs_geometry(trained, tmp_path):
    """On an axis-aligned volume at the model's spacing the two agree voxel for voxel. On an oblique one they
    differ a little: MONAI's ``Spacingd`` keeps the oblique direction and starts its grid at the first voxel,
    ModelSelector resamples onto the axis-aligned grid centred on the image that training used."""
    from ModelSelectorLib.datasets import make_synthetic_case
    from ModelSelectorLib.io.image import read_image, write_image
    from ModelSelectorLib.models.segmentation import apply_model
    from ModelSelectorLib.zoo import load_bundle

    bundle, oblique = trained
    images = tmp_path / "images"
    images.mkdir()
    (images / "oblique.nii.gz").write_bytes(oblique.read_bytes())
    aligned, _ = make_synthetic_case(11, "ct", shape=(16, 24, 24), spacing=(2.0, 2.0, 3.0), oblique=False)
    write_image(aligned, images / "aligned.nii.gz")
    _monai_run(bundle, images, tmp_path / "out")

    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "aligned_seg.nii.gz",
        "oblique_seg.nii.gz",
    ]
    loaded = load_bundle(bundle)
    for name, least in (("aligned", 0.999), ("oblique", 0.95)):
        image = read_image(images / f"{name}.nii.gz")
        theirs = read_image(tmp_path / "out" / f"{name}_seg.nii.gz", check_content=False)
        assert theirs.same_geometry(image), name  # spacing, origin and direction of the input
        labels = np.asarray(theirs.array)
        assert set(np.unique(labels)) == {0, 1, 2}, name
        # mirrored at test time by both, as the card says
        assert float((labels == apply_model(loaded, image).array).mean()) >= least, name


def test_a_2d_bundle_writes_png_in_the_pictures_own_pixel_order(tmp_path):
    import torch
    from PIL import Image as PILImage

    from ModelSelectorLib.io.image import read_image
    from ModelSelectorLib.models.segmentation import apply_model
    from ModelSelectorLib.training.segmentation import TrainConfig, build_network, network_def
    from ModelSelectorLib.zoo import ModelCard, load_bundle, save_bundle

    torch.manual_seed(0)
    net_def = network_def(TrainConfig(channels=(4, 8)), spatial_dims=2, n_classes=2)
    card = ModelCard(name="png2d", version="0.1.0", task_type="segmentation", modality="DX", body_region="CHEST",
                     labels=[{"value": 1, "name": "thing", "color": [1.0, 0.0, 0.0]}], spatial_dims=2,
                     target_spacing=[1.0, 1.0], intensity={"mode": "percentile", "a_min": 1.0, "a_max": 99.0},
                     roi_size=[32, 32])  # fmt: skip
    bundle = save_bundle(tmp_path / "png2d", card, net_def, build_network(net_def).state_dict())
    images = tmp_path / "images"
    images.mkdir()
    yy, xx = np.mgrid[0:40, 0:56]
    picture = (120 + 100 * np.sin(xx / 5.0) * (yy > 12)).astype(np.uint8)  # wider than high: order shows
    PILImage.fromarray(picture).save(images / "xray.png")
    _monai_run(bundle, images, tmp_path / "out")

    theirs = np.asarray(PILImage.open(tmp_path / "out" / "xray_seg.png"))
    ours = apply_model(load_bundle(bundle), read_image(images / "xray.png")).array
    assert theirs.shape == ours.shape == (40, 56)
    assert set(np.unique(theirs)) <= {0, 1} and float((theirs == ours).mean()) >= 0.99


def test_every_segmentation_bundle_of_the_zoo_has_the_workflow_and_says_how_to_run_it():
    from monai.bundle import ConfigParser

    from ModelSelectorLib.models.segmentation import GPU_SW_BATCH, default_sw_batch_size
    from ModelSelectorLib.resources import default_zoo_path
    from ModelSelectorLib.zoo import Zoo

    zoo = Zoo(default_zoo_path())
    for name in zoo.names():
        path = zoo.get(name)
        readme = (path / "docs" / "README.md").read_text(encoding="utf-8")
        if zoo.card(name).task_type != "segmentation":
            assert "monai.bundle run" not in readme, name
            continue
        parser = ConfigParser()
        parser.read_config(str(path / "configs" / "inference.json"))
        for key in ("datalist", "dataset", "dataloader", "handlers", "evaluator", "run"):
            assert key in parser.get(), (name, key)
        # MONAI's runner passes several windows per forward pass, as our runtime does by default
        windows = [
            v
            for v in parser.get().values()
            if isinstance(v, dict) and v.get("_target_") == "SlidingWindowInferer"
        ]
        assert [w["sw_batch_size"] for w in windows] == [
            default_sw_batch_size("cuda", zoo.card(name).roi_size)
        ], name
        assert 1 < windows[0]["sw_batch_size"] <= GPU_SW_BATCH, name
        assert "python -m monai.bundle run --config_file configs/inference.json" in readme, name


def test_monai_verifies_the_networks_of_the_zoo_against_their_metadata(monkeypatch):
    """MONAI's own bundle check (``verify_net_in_out``): each network takes and returns what its
    ``network_data_format`` says. A landmark bundle's network is its stages; the coarse one is checked."""
    from monai.bundle import verify_net_in_out

    from ModelSelectorLib.resources import default_zoo_path
    from ModelSelectorLib.zoo import Zoo

    zoo = Zoo(default_zoo_path())
    for name in zoo.names():
        path = zoo.get(name)
        monkeypatch.chdir(path)  # the configs refer to their bundle as "."
        net_id = (
            "network_def" if zoo.card(name).task_type == "segmentation" else "network_def::modules::coarse"
        )
        verify_net_in_out(
            net_id=net_id, meta_file="configs/metadata.json", config_file="configs/inference.json"
        )
