"""The encoder guide of model inversion: its differentiable views and channels against the exact pipeline,
and inversion with it producing inputs that the bundled encoder reads as the card's domain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ModelSelectorLib.io import Image  # noqa: E402
from ModelSelectorLib.io.geometry import CANONICAL_AXCODES, axcodes_direction  # noqa: E402
from ModelSelectorLib.selection.encoder_guide import grid_views, soft_encoder_channels  # noqa: E402
from ModelSelectorLib.selection.views import encoder_channels, image_views  # noqa: E402

ENCODER_WEIGHTS = Path(__file__).resolve().parents[2] / "Resources" / "encoder" / "encoder.pt"


def smooth_picture(shape, seed=0):
    """Smooth random values (a few blurred blobs) on a graded background, all well above zero."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0.0, 1.0, n) for n in shape], indexing="ij")
    out = 100.0 + 50.0 * grids[0]
    for _ in range(6):
        centre = rng.uniform(0.15, 0.85, len(shape))
        r2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
        out = out + rng.uniform(50, 300) * np.exp(-r2 / rng.uniform(0.005, 0.03))
    return out.astype(np.float32)


def test_soft_channels_match_the_exact_channels_and_pass_gradients():
    views = np.stack([smooth_picture((64, 64), s) for s in range(3)])
    views[0, :10] = views[0].min()  # a run of tied values, as the padding of a view
    x = torch.from_numpy(views).requires_grad_(True)
    soft = soft_encoder_channels(x)
    exact = encoder_channels(views)
    assert soft.shape == (3, 2, 64, 64)
    np.testing.assert_allclose(soft[:, 0].detach().numpy(), exact[:, 0], atol=2e-3)
    assert np.abs(soft[:, 1].detach().numpy() - exact[:, 1]).mean() < 0.01
    soft[:, 1].sum().backward()
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


def _as_synthesised_image(volume_xyz, spacing):
    """A network-layout array ``(x, y, z)`` as inversion writes it: ``(z, y, x)``, canonical RAS direction."""
    nd = volume_xyz.ndim
    direction = tuple(float(d) for d in axcodes_direction(CANONICAL_AXCODES, nd).ravel())
    return Image(np.ascontiguousarray(volume_xyz.transpose(tuple(range(nd))[::-1])), spacing, (0.0,) * nd,
                 direction, {})  # fmt: skip


@pytest.mark.parametrize("shape", [(41, 49, 31), (49, 31, 41)])  # odd: no tie for the middle slice
def test_guide_views_of_a_volume_are_the_pipelines_middle_slices(shape):
    """On a 2 mm grid (the pipeline's own spacing, so its resampling only reorders voxels) the guide's middle
    slice of each plane is the pipeline's view of that plane: same orientation (LPS, superior up), aspect and
    padding."""
    # blobs on a bright background inside a dark one-voxel frame: the imaged body is the whole interior, so
    # the pipeline's one view per plane lies in the middle of each axis
    volume = smooth_picture(shape, seed=4) - smooth_picture(shape, seed=4).min() + 1000.0
    volume[[0, -1]], volume[:, [0, -1]], volume[:, :, [0, -1]] = 0.0, 0.0, 0.0
    exact = image_views(_as_synthesised_image(volume, (2.0, 2.0, 2.0)), n_per_axis=1, raw=True)
    guide = grid_views(torch.from_numpy(volume)[None, None], (2.0, 2.0, 2.0), 64).numpy()
    assert exact.shape == (3, 64, 64) and guide.shape == (9, 64, 64)
    for plane in range(3):
        np.testing.assert_allclose(guide[3 * plane + 1], exact[plane], rtol=1e-4, atol=0.5)


def test_guide_view_of_a_2d_grid_and_of_a_one_slice_volume():
    picture = smooth_picture((40, 64), seed=2)  # network layout (x, y), 0.5 x 1.0 mm pixels
    exact = image_views(_as_synthesised_image(picture, (0.5, 1.0)), raw=True)
    guide = grid_views(torch.from_numpy(picture)[None, None], (0.5, 1.0), 64).numpy()
    np.testing.assert_allclose(guide, exact, rtol=1e-4, atol=0.5)
    one_slice = grid_views(torch.from_numpy(picture)[None, None, :, :, None], (0.5, 1.0, 8.0), 64).numpy()
    np.testing.assert_allclose(one_slice, guide)


@pytest.mark.skipif(not ENCODER_WEIGHTS.is_file(), reason="the bundled encoder is not built")
def test_inversion_with_the_guide_gives_inputs_read_as_the_cards_domain(tmp_path):
    """A 2D chest model: without the guide the synthesised inputs are textures the encoder does not read as
    DX:CHEST; with it, the exact pipeline reads them so. A card whose domain the encoder has no class for
    leaves the guide out and says so."""
    from ModelSelectorLib.selection.encoder import Encoder
    from ModelSelectorLib.selection.encoder_guide import domain_classes
    from ModelSelectorLib.selection.inversion import InversionSettings, synthesize_inputs
    from ModelSelectorLib.training.segmentation import TrainConfig, build_network, network_def
    from ModelSelectorLib.zoo import ModelCard, save_bundle

    torch.manual_seed(0)
    encoder = Encoder.load(ENCODER_WEIGHTS)
    net_def = network_def(TrainConfig(channels=(4, 8, 16)), spatial_dims=2, n_classes=2)

    def bundle(name, modality, region):
        card = ModelCard(name=name, version="0.1.0", task_type="segmentation", modality=modality,
                         body_region=region, labels=[{"value": 1, "name": "x", "color": [1.0, 0.0, 0.0]}],
                         spatial_dims=2, target_spacing=[2.0, 2.0], intensity={"mode": "percentile"},
                         roi_size=[64, 64])  # fmt: skip
        return save_bundle(tmp_path / name, card, net_def, build_network(net_def).state_dict()), card

    chest, card = bundle("chest", "DX", "CHEST")
    domain = domain_classes(encoder.classes, card)
    read = {}
    for weight in (0.0, 1.0):
        info: dict = {}
        images = synthesize_inputs(chest, n=2, steps=40, seed=0, info=info, progress=False, encoder=encoder,
                                   settings=InversionSettings(encoder=weight))  # fmt: skip
        read[weight] = float(np.mean([encoder.predict_proba(im)[domain].sum() for im in images]))
        if weight:
            assert info["encoder_classes"] == ["DX:CHEST"] and "DX:CHEST" in info["method"]
            assert info["encoder_domain"] > 0.5
        else:
            assert info["encoder_classes"] == [] and info["encoder_domain"] is None
    assert read[1.0] > 0.5 and read[1.0] > read[0.0] + 0.3, read

    unknown, _ = bundle("abdomen", "MR", "ABDOMEN")  # the bundled encoder has no MR:ABDOMEN class
    info = {}
    synthesize_inputs(unknown, n=1, steps=2, info=info, progress=False, encoder=encoder,
                      settings=InversionSettings(encoder=1.0))  # fmt: skip
    assert info["encoder_classes"] == [] and "encoder" not in info["method"]
