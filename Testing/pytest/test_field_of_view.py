"""Field of view of a volume against a 3D model's training inputs (``selection/field_of_view.py``)."""

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
