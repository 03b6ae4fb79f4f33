"""An imported MONAI bundle sees the grid that MONAI's own run of its ``inference.json`` gives it: voxel axes in the
file's order unless ``Orientationd`` reorders them, ``Spacingd``'s shape and first voxel, interpolation and padding,
and the output back on the input's grid as its ``Invertd`` puts it. MONAI's pipeline runs here in-process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ModelSelectorLib.errors import BundleError
from ModelSelectorLib.io.image import read_image
from ModelSelectorLib.models.segmentation import apply_model
from ModelSelectorLib.zoo import Zoo, load_bundle
from ModelSelectorLib.zoo.bundle import import_monai_bundle

NETWORK_DEF = {
    "_target_": "torch.nn.Conv3d",
    "in_channels": 1,
    "out_channels": 2,
    "kernel_size": 3,
    "padding": 1,
}
METADATA = {
    "version": "0.1.0", "monai_version": "1.4.0", "name": "Edge CT", "task": "edge segmentation",
    "license": "Apache-2.0",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                             "spatial_shape": [8, 8, 8], "dtype": "float32"}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                             "spatial_shape": [8, 8, 8], "dtype": "float32",
                             "channel_def": {"0": "background", "1": "edge"}}},
    },
}  # fmt: skip


def rotation(axis: int, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = [a for a in range(3) if a != axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


# an oblique rotation, and a layout whose second voxel axis runs towards the feet
OBLIQUE = rotation(2, 20.0) @ rotation(0, 12.0)
PERMUTED = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def edge_network() -> torch.nn.Module:
    """Label 1 where the intensity rises along a direction oblique to every voxel axis: flipping or swapping any
    axis changes the labels."""
    net = torch.nn.Conv3d(1, 2, 3, padding=1)
    kernel = np.zeros((3, 3, 3), np.float32)
    for axis, weight in enumerate((1.0, 0.6, 0.35)):
        shape = [1, 1, 1]
        shape[axis] = 3
        kernel += weight * np.array([-1.0, 0.0, 1.0], np.float32).reshape(shape)
    kernel[0, 1, 2] += 0.4  # no symmetry left
    with torch.no_grad():
        net.weight.zero_()
        net.weight[1, 0] = torch.from_numpy(kernel)
        net.bias.copy_(torch.tensor([0.0, -0.02]))
    return net.eval()


def write_volume(path: Path, size: tuple, spacing: tuple, direction: np.ndarray, seed: int = 0) -> Path:
    """A smooth CT-like volume (``size`` ``(x, y, z)``) in air."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    arr = ndimage.gaussian_filter(rng.standard_normal(size[::-1]), 1.5)
    arr = np.where(ndimage.gaussian_filter(rng.random(size[::-1]), 3) > 0.45, arr / arr.std() * 300, -1000.0)
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing(spacing)
    img.SetDirection([float(v) for v in direction.ravel()])
    img.SetOrigin((-12.5, 30.25, 7.0))
    sitk.WriteImage(img, str(path))
    return path


def inference_config(spatial: list[dict[str, Any]], invert_labels: bool = False) -> dict[str, Any]:
    """MONAI's template workflow with the given ``Orientationd`` / ``Spacingd`` items, a CT window, a sliding window,
    softmax, ``Invertd`` (of the probabilities, or of the label map after the argmax) and ``SaveImaged``."""
    keys = {"keys": "image"}
    pre = [{"_target_": "LoadImaged", **keys}, {"_target_": "EnsureChannelFirstd", **keys},
           *[{**keys, **t} for t in spatial],
           {"_target_": "ScaleIntensityRanged", **keys, "a_min": -1000, "a_max": 1000, "b_min": 0.0, "b_max": 1.0,
            "clip": True}, {"_target_": "EnsureTyped", **keys}]  # fmt: skip
    invert = {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
              "nearest_interp": invert_labels, "to_tensor": True}  # fmt: skip
    argmax = {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}
    post = [{"_target_": "Activationsd", "keys": "pred", "softmax": True},
            *([argmax, invert] if invert_labels else [invert, argmax]),
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "resample": False}]  # fmt: skip
    return {
        "imports": ["$import glob", "$import os"], "bundle_root": ".", "output_dir": "$@bundle_root + '/eval'",
        "network_def": NETWORK_DEF, "network": "$@network_def",
        "preprocessing": {"_target_": "Compose", "transforms": pre},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [8, 8, 8], "sw_batch_size": 4, "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": post},
    }  # fmt: skip


def write_bundle(root: Path, config: dict[str, Any], network: Optional[torch.nn.Module] = None) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "metadata.json").write_text(json.dumps(METADATA), encoding="utf-8")
    (root / "configs" / "inference.json").write_text(json.dumps(config), encoding="utf-8")
    torch.save((network or edge_network()).state_dict(), root / "models" / "model.pt")
    return root


def monai_labels(
    config: dict[str, Any], image: Path, network: Optional[torch.nn.Module] = None
) -> np.ndarray:
    """What MONAI's own workflow writes for ``image``, computed in-process from the bundle's config (without the
    writing), as a SimpleITK-layout ``(z, y, x)`` array."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    parser = ConfigParser(config)
    data = parser.get_parsed_content("preprocessing")({"image": str(image)})
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network or edge_network())[0]
    post = parser.get_parsed_content("postprocessing")
    out = Compose(post.transforms[:-1])(data)["pred"]  # all but SaveImaged
    return np.asarray(out[0]).transpose(2, 1, 0)


def apply_imported(
    tmp_path: Path, config: dict[str, Any], image: Path, network: Optional[torch.nn.Module] = None
) -> np.ndarray:
    """``zoo add`` of the bundle, then ``apply`` on ``image``: the label map in SimpleITK layout."""
    zoo = Zoo.create(tmp_path / "zoo")
    zoo.add(write_bundle(tmp_path / "bundle", config, network), body_region="ABDOMEN", name="edges")
    return np.asarray(apply_model(load_bundle(zoo.get("edges")), read_image(image)).array)


ORIENT = {"_target_": "Orientationd", "axcodes": "RAS"}
SPACING = {"_target_": "Spacingd", "pixdim": [2.0, 2.5, 3.0], "mode": "bilinear"}
CASES = {
    # MONAI's own bundle template: no Orientationd, no Spacingd; a file stored L, P, S
    "lps-as-stored": (np.eye(3), (1.5, 1.5, 2.0), [], False),
    "lps-spacing": (np.eye(3), (1.5, 1.5, 2.0), [SPACING], False),
    "ras-orientation-spacing": (np.diag([-1.0, -1.0, 1.0]), (1.5, 1.5, 2.0), [ORIENT, SPACING], False),
    "oblique-orientation-spacing": (OBLIQUE, (1.5, 1.5, 2.0), [ORIENT, SPACING], False),
    "anisotropic-spacing": (np.diag([-1.0, 1.0, -1.0]), (0.7, 0.8, 4.0), [SPACING], False),
    # the label map back by nearest neighbour; no input voxel lies half-way between two of the network's, where
    # MONAI's choice is decided by the rounding of its own float arithmetic
    "permuted-spacing-labels-inverted": (PERMUTED, (1.5, 2.0, 1.5), [{**SPACING, "pixdim": [2.5, 2.5, 2.5]}], True),
    "oblique-spline-reflection": (OBLIQUE, (1.5, 1.5, 2.0), [{**SPACING, "mode": 3, "padding_mode": "reflection"}],
                                  False),
    # MONAI reads a string _disabled_ as true only when it says "true", in any case
    "orientation-enabled-by-the-string-false": (np.eye(3), (1.5, 1.5, 2.0), [{**ORIENT, "_disabled_": "false"}],
                                                False),
    "spacing-disabled-by-the-string-true": (OBLIQUE, (1.5, 1.5, 2.0), [{**SPACING, "_disabled_": " TRUE"}], False),
    "zeros-padding-axis-aligned-grid": (OBLIQUE, (1.5, 1.5, 2.0), [{**SPACING, "padding_mode": "zeros",
                                                                    "diagonal": True}], False),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_apply_gives_the_labels_of_monais_own_run(tmp_path, case):
    """A bundle without Orientationd used to see its input flipped to RAS, and every imported bundle a grid centred
    on the image, with other edges, interpolation and inversion than MONAI's run (on an LPS-stored CT without
    Orientationd, 76 % of the voxels agreed)."""
    direction, spacing, spatial, invert_labels = CASES[case]
    image = write_volume(tmp_path / "ct.nii.gz", (22, 19, 13), spacing, direction)
    config = inference_config(spatial, invert_labels)
    theirs, ours = monai_labels(config, image), apply_imported(tmp_path, config, image)
    assert theirs.shape == ours.shape and 0.1 < theirs.mean() < 0.9
    # exact but for near-ties of the interpolation, or of the B-spline's edges (order 3, within 0.5 % of the range)
    assert float((theirs == ours).mean()) >= (0.995 if "spline" in case else 0.999), case


def test_a_swin_unetr_bundle_runs_as_monai_runs_it(tmp_path):
    """MONAI's SwinUNETR, the network of several model-zoo bundles, needs ``einops``: the lock installs it, so such
    a bundle is imported and applied, with MONAI's own run's labels."""
    from monai.networks.nets import SwinUNETR

    swin = {"_target_": "SwinUNETR", "in_channels": 1, "out_channels": 2, "feature_size": 12, "window_size": 4,
            "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "spatial_dims": 3}  # fmt: skip
    torch.manual_seed(0)
    network = SwinUNETR(**{k: v for k, v in swin.items() if k != "_target_"}).eval()
    config = {**inference_config([ORIENT, SPACING]), "network_def": swin}
    config["inferer"] = {**config["inferer"], "roi_size": [64, 64, 64], "sw_batch_size": 1}
    image = write_volume(tmp_path / "ct.nii.gz", (22, 19, 13), (1.5, 1.5, 2.0), np.eye(3))
    theirs, ours = monai_labels(config, image, network), apply_imported(tmp_path, config, image, network)
    assert theirs.shape == ours.shape and 0.0 < theirs.mean() < 1.0
    assert float((theirs == ours).mean()) >= 0.999


@pytest.mark.parametrize(
    "spatial",
    [[SPACING], [ORIENT, SPACING], [{**SPACING, "pixdim": [1.1, 0.9, 1.7], "scale_extent": True}],
     [{"_target_": "Orientationd", "axcodes": "PLI"}, {**SPACING, "diagonal": True}], [ORIENT]],
)  # fmt: skip
def test_the_network_grid_is_monais(tmp_path, spatial):
    """Shape, spacing, direction and first voxel of the grid equal those of MONAI's transforms, on an oblique file."""
    from monai.bundle import ConfigParser

    from ModelSelectorLib.io.geometry import monai_grid
    from ModelSelectorLib.models.preprocessing import read_preprocessing

    image = write_volume(tmp_path / "ct.nii.gz", (22, 19, 13), (1.5, 1.25, 2.0), OBLIQUE)
    config = inference_config(spatial)
    theirs = ConfigParser(config).get_parsed_content("preprocessing")({"image": str(image)})["image"]
    grid = monai_grid(read_image(image).to_sitk(), read_preprocessing(config, 3)["resampling"])
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS -> LPS
    affine = flip @ np.asarray(theirs.affine, dtype=float)
    assert tuple(grid.GetSize()) == tuple(theirs.shape[1:])
    np.testing.assert_allclose(grid.GetSpacing(), np.linalg.norm(affine[:3, :3], axis=0), atol=1e-6)
    np.testing.assert_allclose(
        np.reshape(grid.GetDirection(), (3, 3)) * grid.GetSpacing(), affine[:3, :3], atol=1e-6
    )
    np.testing.assert_allclose(grid.GetOrigin(), affine[:3, 3], atol=1e-4)


@pytest.mark.parametrize(
    "spacing, message",
    [({"mode": "bicubic"}, r"Spacingd\.mode is 'bicubic'; only 'bilinear', 'nearest' and spline orders 0 to 5"),
     ({"mode": 3, "padding_mode": "zeros"}, r"padding_mode is 'zeros' with mode 3, not 'border' or 'reflection'"),
     ({"mode": ["bilinear", "area"], "keys": ["label", "image"]}, r"Spacingd\.mode is 'area'"),
     ({"padding_mode": "wrap"}, r"padding_mode is 'wrap'")],
)  # fmt: skip
def test_zoo_add_refuses_an_interpolation_it_does_not_reproduce(tmp_path, spacing, message):
    config = inference_config([{**SPACING, **spacing}])
    with pytest.raises(BundleError, match=message) as e:
        import_monai_bundle(write_bundle(tmp_path / "bundle", config), body_region="ABDOMEN")
    assert "cannot be reproduced" in str(e.value) and len(str(e.value).splitlines()) == 1


def test_a_disabled_transform_is_not_read_as_the_bundles_postprocessing(tmp_path):
    """A disabled sigmoid (a multi-label output) that MONAI never instantiates does not refuse the bundle, and a
    disabled ``KeepLargestConnectedComponentd`` is not kept."""
    from ModelSelectorLib.models.preprocessing import kept_components

    config = inference_config([SPACING])
    post = config["postprocessing"]["transforms"]
    post.insert(0, {"_target_": "Activationsd", "keys": "pred", "sigmoid": True, "_disabled_": True})
    post.append({"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "_disabled_": "True"})
    assert kept_components(config) is None
    card = import_monai_bundle(write_bundle(tmp_path / "bundle", config), body_region="ABDOMEN")
    assert card.task_type == "segmentation"
    post[0]["_disabled_"] = "false"
    with pytest.raises(BundleError, match="thresholds independent sigmoid channels"):
        import_monai_bundle(write_bundle(tmp_path / "again", config), body_region="ABDOMEN")


def test_the_projects_own_bundles_keep_the_canonical_grid():
    """Only an imported card takes MONAI's grid; a bundle this project trained keeps the grid it was trained on."""
    from types import SimpleNamespace

    from ModelSelectorLib.models.segmentation import output_resampling, resampling_of
    from ModelSelectorLib.zoo.card import ModelCard

    config = inference_config([ORIENT, SPACING])
    card = {"name": "own", "version": "1.0.0", "task_type": "segmentation", "modality": "CT",
            "body_region": "ABDOMEN", "code_version": "0.9.0"}  # fmt: skip
    own = SimpleNamespace(card=ModelCard.from_dict(card), config=config)
    assert resampling_of(own) is None and output_resampling(own, None) == ("nearest", None, 1)
    imported = SimpleNamespace(
        card=ModelCard.from_dict({**card, "code_version": "monai 1.4.0"}), config=config
    )
    steps: Optional[list] = resampling_of(imported)
    assert steps is not None and steps[0] == {"axcodes": "RAS"} and steps[1]["pixdim"] == [2.0, 2.5, 3.0]
    assert output_resampling(imported, steps) == ("linear", "border", 1)
