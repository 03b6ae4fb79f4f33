"""Field of view of a volume against a 3D model's training inputs (``selection/field_of_view.py``), and a 2D
picture without a pixel size scaled to a 2D model's training images (``models.segmentation.at_training_field``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ModelSelectorLib.io import Image
from ModelSelectorLib.selection.field_of_view import (
    FACTOR,
    compare_field_of_view,
    extent_mm,
    field_of_view,
    image_extent_mm,
    training_extent_mm,
    training_size_mm,
    view_fits,
)
from ModelSelectorLib.zoo import ModelCard

EYE3 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def card(dims: int = 3, plan=None, spacing=None) -> ModelCard:
    return ModelCard(name="m", version="1.0.0", task_type="segmentation", modality="MR", body_region="HEAD",
                     spatial_dims=dims, labels={"0": "background", "1": "x"}, plan=plan,
                     target_spacing=spacing)  # fmt: skip


def test_extent_is_the_geometric_mean_of_the_two_largest_physical_sizes():
    # a hippocampus crop: 35 x 50 x 36 voxels of 1 mm; the thin axis of a thick-slice stack is left out
    assert extent_mm((35, 50, 36), (1.0, 1.0, 1.0)) == pytest.approx(math.sqrt(50 * 36))
    assert extent_mm((128, 128, 35), (2.0, 2.0, 1.0)) == pytest.approx(256.0)
    assert extent_mm((100, 10, 10), (0.5, 4.0, 4.0)) == pytest.approx(math.sqrt(50 * 40))  # 50 x 40 x 40 mm
    # sizes and spacings pair up axis by axis (x, y, z), whatever their order
    assert extent_mm((10, 100, 10), (4.0, 0.5, 4.0)) == extent_mm((100, 10, 10), (0.5, 4.0, 4.0))


def test_image_and_card_extents_and_when_they_are_unknown():
    vol = Image(np.zeros((36, 50, 35), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), EYE3)  # (z, y, x)
    assert image_extent_mm(vol) == pytest.approx(math.sqrt(50 * 36))
    anisotropic = Image(np.zeros((4, 20, 10), np.float32), (3.0, 1.5, 10.0), (0.0, 0.0, 0.0), EYE3)
    assert image_extent_mm(anisotropic) == pytest.approx(math.sqrt(40 * 30))  # x 30, y 30, z 40 mm
    assert (
        image_extent_mm(Image(np.zeros((8, 8), np.float32), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)))
        is None
    )
    lone = Image(np.zeros((1, 64, 64), np.float32), (1.0, 1.0, 5.0), (0.0, 0.0, 0.0), EYE3)
    assert image_extent_mm(lone) is None  # a lone slice is a 2D image
    hippo = card(plan={"median_shape": [35.0, 50.0, 36.0]}, spacing=[1.0, 1.0, 1.0])
    assert training_extent_mm(hippo) == pytest.approx(math.sqrt(50 * 36))
    assert training_size_mm(card(plan={"median_shape": [128.0, 128.0, 35.0]}, spacing=[2.0, 2.0, 1.0])) == (
        256.0, 256.0, 35.0)  # fmt: skip
    head = Image(np.zeros((140, 256, 256), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), EYE3)
    fov = field_of_view(head, hippo)
    assert fov.verdict == "needs a crop" and fov.model_size_mm == (35.0, 50.0, 36.0)
    assert fov.advice() == "crop the image around the structure to about 35 x 50 x 36 mm, with a margin"
    assert training_extent_mm(card(plan=None, spacing=[1.0, 1.0, 1.0])) is None
    assert training_extent_mm(card(plan={"median_shape": [35.0, 50.0, 36.0]}, spacing=None)) is None
    assert (
        training_extent_mm(card(2, {"median_shape": [128.0, 128.0]}, [4.0, 4.0])) is None
    )  # 2D: not compared
    assert field_of_view(vol, card()) is None and view_fits(None)


def test_verdicts_at_and_beyond_the_factor():
    assert FACTOR == 3.0
    at = compare_field_of_view(3.0 * 42.0, 42.0)
    assert at.fits and at.verdict == "fits" and at.advice() == "" and view_fits(at)
    wide = compare_field_of_view(256.0, 42.0)  # a whole head for a hippocampus model
    assert not wide.fits and wide.verdict == "needs a crop" and "crop the image" in wide.advice()
    assert wide.reason().startswith("field of view: the image spans about 256 mm across, the model's training "
                                    "inputs 42 mm: crop")  # fmt: skip
    narrow = compare_field_of_view(42.0, 256.0)  # a hippocampus crop for a whole-brain model
    assert not narrow.fits and narrow.verdict == "needs a wider view" and "whole region" in narrow.advice()
    assert narrow.to_json_dict() == {"image_mm": 42.0, "model_mm": 256.0, "fits": False,
                                     "verdict": "needs a wider view"}  # fmt: skip
    assert compare_field_of_view(256.0 / 3.0 - 0.01, 256.0).verdict == "needs a wider view"
    assert compare_field_of_view(None, 42.0) is None and compare_field_of_view(42.0, None) is None


# --- 2D pictures without a pixel size: scaled to the training field -------------------------------------------
def test_a_picture_has_no_known_pixel_size_and_a_volume_or_a_calibrated_radiograph_has(tmp_path):
    from ModelSelectorLib.io import read_image, write_image

    picture = np.zeros((30, 40), np.uint8)
    picture[5:25, 5:35] = 200
    png = tmp_path / "x.png"
    from PIL import Image as PILImage

    PILImage.fromarray(picture).save(png)
    assert not read_image(png).pixel_size_known
    as_slicer_writes = Image(picture[None].astype(np.float32), (1.0, 1.0, 1.0), (0.0,) * 3, EYE3)
    assert not as_slicer_writes.pixel_size_known  # a picture loaded in Slicer, written as a one-slice NRRD
    calibrated = Image(picture.astype(np.float32), (0.175, 0.175), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    write_image(calibrated, tmp_path / "x.nrrd")
    assert read_image(tmp_path / "x.nrrd").pixel_size_known
    volume = Image(np.zeros((4, 30, 40), np.float32), (1.0, 1.0, 1.0), (0.0,) * 3, EYE3)
    assert volume.pixel_size_known  # a 1 mm volume is a 1 mm volume


def test_a_picture_is_scaled_so_its_longer_side_spans_the_training_images():
    from ModelSelectorLib.models.segmentation import at_training_field

    model = card(dims=2, plan={"median_shape": [128.0, 100.0]}, spacing=[4.0, 4.0])  # 512 x 400 units
    picture = Image(np.zeros((256, 200), np.float32), (1.0, 1.0), (3.0, -2.0), (1.0, 0.0, 0.0, 1.0),
                    {"format": "png"})  # fmt: skip
    scaled = at_training_field(picture, model)
    assert scaled.spacing == pytest.approx((2.0, 2.0))  # 256 px span the 512 units of the training images
    assert scaled.origin == picture.origin and scaled.direction == picture.direction
    assert scaled.array is picture.array
    known = Image(picture.array, (0.35, 0.35), (3.0, -2.0), (1.0, 0.0, 0.0, 1.0))
    assert at_training_field(known, model) is known
    # a model that learnt from pictures counts in picture pixels: a calibrated radiograph is scaled to its field too
    of_pictures = card(
        dims=2, plan={"median_shape": [128.0, 100.0], "pixel_size_known": False}, spacing=[4.0, 4.0]
    )
    assert at_training_field(known, of_pictures).spacing == pytest.approx((2.0, 2.0))
    assert at_training_field(picture, card(dims=2, spacing=[4.0, 4.0])) is picture  # no plan: as it is
    assert (
        at_training_field(picture, card(dims=3, plan={"median_shape": [128, 128, 1]}, spacing=[4, 4, 1]))
        is picture
    )


def test_a_plan_says_whether_the_training_images_had_a_pixel_size(tmp_path):
    from ranking_helpers import make_disk_msd

    from ModelSelectorLib.datasets.msd import load_msd
    from ModelSelectorLib.io import read_image, write_image
    from ModelSelectorLib.training.planning import plan_training
    from ModelSelectorLib.training.segmentation import TrainConfig

    config = TrainConfig(target_spacing=(4.0, 4.0), roi_size=(32, 32))
    for spacing, known in [
        ((1.0, 1.0), False),
        ((0.7, 0.7), True),
    ]:  # PNGs kept in pixel units, or calibrated
        msd = make_disk_msd(tmp_path / f"msd{spacing[0]}", n_cases=3)
        dataset = load_msd(msd)
        for case in dataset.training:
            image = read_image(case["image"], check_content=False)
            write_image(Image(image.array, spacing, image.origin, image.direction), case["image"])
        plan = plan_training(load_msd(msd), [0, 1, 2], config)
        assert plan.pixel_size_known is known and ("pixel_size_known" in plan.to_card()) is not known


@pytest.mark.parametrize("side", [256, 1024, 2048])
def test_the_lung_model_segments_a_radiograph_picture_of_any_size(tmp_path, side):
    """The shipped dx-chest-lungs learnt from 512 px pictures (4 px per network pixel). The same radiograph as a
    PNG of 256 to 2048 px is segmented as well as at 512 px, on the picture's own grid; with one pixel taken as
    one unit, a 2048 px copy gave lungs of a quarter of their size (Dice 0.26)."""
    from PIL import Image as PILImage

    from ModelSelectorLib.io import read_image
    from ModelSelectorLib.models.segmentation import apply_model
    from ModelSelectorLib.resources import default_zoo_path, samples_dir
    from ModelSelectorLib.zoo import Zoo, load_bundle

    bundle = load_bundle(Zoo(default_zoo_path()).get("dx-chest-lungs"))
    picture = PILImage.open(samples_dir() / "cxr_chest.png").resize((side, side), PILImage.LANCZOS)
    picture.save(tmp_path / "cxr.png")
    truth = (
        PILImage.open(samples_dir() / "cxr_chest_lungmask.png")
        .convert("L")
        .resize((side, side), PILImage.NEAREST)
    )
    image = read_image(tmp_path / "cxr.png")
    labels = apply_model(bundle, image)
    assert labels.same_geometry(image)
    lungs, true = labels.array > 0, np.asarray(truth) > 127
    assert 2 * np.count_nonzero(lungs & true) / (np.count_nonzero(lungs) + np.count_nonzero(true)) > 0.93


def test_the_lung_model_gives_a_calibrated_radiograph_the_labels_of_its_picture():
    """The shipped dx-chest-lungs learnt in picture pixels (its plan says so). The sample radiograph saved with its
    true 0.7 mm pixel size (as a DICOM or NRRD would carry it) looked 0.7 times as large to it as the picture did
    (Dice on its 41 test images 0.944 against 0.970); now it gets the picture's labels."""
    from ModelSelectorLib.io import read_image
    from ModelSelectorLib.models.segmentation import apply_model
    from ModelSelectorLib.resources import default_zoo_path, samples_dir
    from ModelSelectorLib.zoo import Zoo, load_bundle

    bundle = load_bundle(Zoo(default_zoo_path()).get("dx-chest-lungs"))
    assert bundle.card.plan["pixel_size_known"] is False
    picture = read_image(samples_dir() / "cxr_chest.png")
    calibrated = Image(
        np.asarray(picture.array, np.float32), (0.7, 0.7), (-180.0, -150.0), (1.0, 0.0, 0.0, 1.0)
    )
    labels = apply_model(bundle, calibrated)
    assert labels.same_geometry(calibrated)
    assert np.array_equal(labels.array, apply_model(bundle, picture).array)
