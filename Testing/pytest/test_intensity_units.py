"""Units of an image's values against what a model's intensity normalisation expects
(``selection/intensity_units.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from ModelSelectorLib.io import Image
from ModelSelectorLib.selection.intensity_units import (
    AIR_HU,
    HOUNSFIELD,
    MIN_AIR_SHARE,
    MR_VALUES,
    RADIOGRAPH_VALUES,
    air_share,
    compare_units,
    expected_units,
    units_fit,
)
from ModelSelectorLib.zoo import ModelCard

EYE3 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def card(modality: str = "CT", intensity=None, dims: int = 3) -> ModelCard:
    return ModelCard(name="m", version="1.0.0", task_type="segmentation", modality=modality, body_region="HEAD",
                     spatial_dims=dims, labels={"0": "background", "1": "x"}, intensity=intensity)  # fmt: skip


def volume(array: np.ndarray) -> Image:
    return Image(array.astype(np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), EYE3)


def head_ct() -> np.ndarray:
    """A head in air: -1000 HU around a 40 HU sphere with a 1000 HU shell, like a head CT."""
    z, y, x = np.mgrid[:32, :48, :48]
    r = np.sqrt((z - 16) ** 2 + (y - 24) ** 2 + (x - 24) ** 2)
    return np.where(r < 14, 40.0, np.where(r < 17, 1000.0, -1000.0))


def test_air_share_counts_voxels_below_air_level_on_a_sample():
    assert AIR_HU == -500.0 and MIN_AIR_SHARE == 0.01
    ct = head_ct()
    assert air_share(volume(ct)) == pytest.approx(np.mean(ct < -500))
    assert 0.5 < air_share(volume(ct)) < 0.9
    assert air_share(volume(np.abs(np.random.default_rng(0).normal(300, 80, (16, 32, 32))))) == 0.0  # MR
    assert air_share(volume(np.zeros((0, 4, 4)))) == 0.0
    big = np.zeros((96, 100, 520), np.float32)  # 5 million voxels: every second one along each axis is read
    big[:24] = -1000.0  # air in the top quarter of the slices
    assert air_share(Image(big, (1.0,) * 3, (0.0,) * 3, EYE3)) == pytest.approx(0.25)


def test_expected_units_come_from_the_normalisation_else_the_modality():
    assert expected_units(card("CT", {"mode": "ct", "a_min": -250.0, "a_max": 350.0})) == HOUNSFIELD
    assert expected_units(card("MR", {"mode": "mr"})) == MR_VALUES
    assert (
        expected_units(card("DX", {"mode": "percentile", "a_min": 0.5, "a_max": 99.5}, 2))
        == RADIOGRAPH_VALUES
    )
    assert (
        expected_units(card("MG", None, 2)) == RADIOGRAPH_VALUES
    )  # projection modalities, any normalisation
    assert expected_units(card("CT", {"mode": "percentile", "a_min": 0.5, "a_max": 99.5})) is None  # windowed
    assert expected_units(card("CT")) == HOUNSFIELD and expected_units(card("MR")) == MR_VALUES  # no field
    assert expected_units(card("US")) is None


def test_verdicts_reasons_and_json():
    ct_model, mr_model = card("CT", {"mode": "ct"}), card("MR", {"mode": "mr"})
    ct_share, mr_share = air_share(volume(head_ct())), 0.0
    assert compare_units(ct_share, ct_model).fits and compare_units(mr_share, mr_model).fits
    assert (
        compare_units(ct_share, ct_model).verdict == "fits"
        and compare_units(ct_share, ct_model).advice() == ""
    )
    assert compare_units(ct_share, ct_model).reason() == (
        "intensity units: Hounsfield units (72% of the voxels below -500), as the model takes")  # fmt: skip
    assert compare_units(mr_share, mr_model).reason() == (
        "intensity units: not Hounsfield units (none of the voxels below -500), as the model takes")  # fmt: skip
    mr_for_ct = compare_units(mr_share, ct_model)
    assert not mr_for_ct.fits and mr_for_ct.verdict == "needs Hounsfield units" and not units_fit(mr_for_ct)
    assert mr_for_ct.reason().startswith(
        "intensity units: the model takes CT in Hounsfield units, and none of the image's voxels lie below -500"
    )
    assert "DICOM rescale slope and intercept" in mr_for_ct.advice()
    ct_for_mr = compare_units(ct_share, mr_model)
    assert not ct_for_mr.fits and ct_for_mr.verdict == "no" and "choose a CT model" in ct_for_mr.advice()
    assert ct_for_mr.describe().startswith("the model takes MR, and 7")  # per cent of the voxels
    assert ct_for_mr.to_json_dict() == {"expected": "mr", "air_share": round(ct_share, 4), "fits": False}
    # just under and at the threshold
    assert not compare_units(MIN_AIR_SHARE * 0.99, ct_model).fits
    assert compare_units(MIN_AIR_SHARE, ct_model).fits
    assert compare_units(0.004, ct_model).describe().split(", and ")[1].startswith("<1% of")
    # nothing to compare: no share, or a model without units
    assert compare_units(None, ct_model) is None and units_fit(None)
    assert compare_units(0.5, card("US", {"mode": "percentile"}, 2)) is None


def test_a_radiograph_model_does_not_take_a_ct_slice_in_hounsfield_units(tmp_path):
    """A chest radiograph model given a CT slice (values down to -1000 HU) does not fit, and `apply` and
    `landmarks apply` warn; a radiograph picture (no unit, no negative value) fits."""
    import json
    import subprocess
    import sys

    from ModelSelectorLib.io import write_image
    from ModelSelectorLib.resources import default_zoo_path
    from ModelSelectorLib.zoo import Zoo

    xray = card("DX", {"mode": "percentile", "a_min": 0.5, "a_max": 99.5}, 2)
    noisy = head_ct()[16] + np.random.default_rng(0).normal(0.0, 20.0, (48, 48))  # a scan's noise
    ct_slice = Image(noisy.astype(np.float32), (0.5, 0.5), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    units = compare_units(air_share(ct_slice), xray)
    assert not units.fits and units.verdict == "no" and "choose a CT model" in units.advice()
    assert units.describe().startswith("the model takes radiographs, and ")
    assert compare_units(0.0, xray).fits
    write_image(ct_slice, tmp_path / "ct_slice.nrrd")
    zoo = Zoo(default_zoo_path())
    for command, model, out in (("apply", "dx-chest-lungs", "lungs.seg.nrrd"),
                                ("landmarks apply", "dx-chest-landmarks", "marks.mrk.json")):  # fmt: skip
        run = subprocess.run([sys.executable, "-m", "ModelSelectorLib", *command.split(), "--model", model,
                              str(tmp_path / "ct_slice.nrrd"), "--out", str(tmp_path / out)],
                             capture_output=True, text=True, encoding="utf-8")  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert f"warning: {model}: the model takes radiographs" in run.stderr, (command, run.stderr)
        assert "choose a CT model" in run.stderr
        assert zoo.card(model).modality == "DX"
    assert json.loads((tmp_path / "marks.mrk.json").read_text())["markups"]
