"""Image I/O keeps geometry, writes Slicer segmentations, and rejects bad input with clear errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

from ModelSelectorLib.errors import InputError
from ModelSelectorLib.io import (
    Image,
    Segment,
    label_map_problem,
    read_image,
    read_segmentation,
    write_image,
    write_segmentation,
)

LIVER = Segment(
    1,
    "Liver",
    (0.86, 0.45, 0.39),
    {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "10200004", "Liver"]},
)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_volume_round_trip_keeps_geometry(tmp_path, oblique_image, ext):
    path = write_image(oblique_image, tmp_path / f"img{ext}")
    back = read_image(path)
    assert back.ndim == 3
    np.testing.assert_allclose(back.spacing, oblique_image.spacing, atol=1e-5)
    np.testing.assert_allclose(back.origin, oblique_image.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, oblique_image.direction, atol=1e-5)
    np.testing.assert_array_equal(back.array, oblique_image.array)


def test_ijk_to_lps_maps_voxel_to_world(oblique_image):
    itk = oblique_image.to_sitk()
    idx = (3, 5, 7)
    world = oblique_image.ijk_to_lps() @ np.array([*idx, 1.0])
    np.testing.assert_allclose(world[:3], itk.TransformIndexToPhysicalPoint(idx), atol=1e-6)


def test_png_reads_as_2d_and_colour_converts(tmp_path):
    rgb = np.zeros((16, 20, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[4:8, 4:8] = 255
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "photo.png"))
    img = read_image(tmp_path / "photo.png")
    assert img.ndim == 2 and img.is_multicomponent and img.array.shape == (16, 20, 3)
    gray = img.to_grayscale()
    assert gray.array.shape == (16, 20) and gray.meta["was_color"]
    with pytest.raises(InputError, match="2D image where a 3D volume is needed"):
        read_image(tmp_path / "photo.png", require_3d=True)


def test_a_grey_png_with_transparency_reads_as_its_grey_pixels(tmp_path):
    """ITK cannot read a grey + alpha PNG ("Unknown PixelType"); it is read without its alpha channel, as the
    same picture without transparency is."""
    from PIL import Image as PILImage

    grey = np.random.default_rng(0).integers(0, 256, (24, 32), dtype=np.uint8)
    PILImage.fromarray(grey).convert("LA").save(tmp_path / "la.png")
    PILImage.fromarray(grey).save(tmp_path / "l.png")
    with_alpha, plain = read_image(tmp_path / "la.png"), read_image(tmp_path / "l.png")
    assert not with_alpha.is_multicomponent and np.array_equal(with_alpha.array, plain.array)
    assert with_alpha.same_geometry(plain) and with_alpha.meta["format"] == "png"


def test_a_truncated_png_and_a_renamed_text_file_are_named_as_such(tmp_path):
    from PIL import Image as PILImage

    PILImage.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(
        tmp_path / "a.png"
    )
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="the PNG data is incomplete or damaged .*; get an intact copy"):
        read_image(tmp_path / "cut.png")
    (tmp_path / "notes.nii.gz").write_text("# my notes\n")
    with pytest.raises(InputError, match="the name ends in .gz but the file is not gzip-compressed"):
        read_image(tmp_path / "notes.nii.gz")


def _write_dicom_series(
    folder, array, series_uid, spacing=(0.8, 0.8, 2.0), description="", shift_per_slice=0.0
):
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(array.shape[0]):
        sl = sitk.GetImageFromArray(array[k].astype(np.int16))
        sl.SetSpacing(spacing[:2])
        tags = {
            "0008|0060": "CT",
            "0018|0015": "ABDOMEN",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0020|0032": f"0\\{k * shift_per_slice}\\{k * spacing[2]}",  # a shift: gantry tilt
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0013": str(k + 1),
            "0008|0018": f"{series_uid}.{k + 1}",
            "0018|0050": str(spacing[2]),
            **({"0008|103e": description} if description else {}),
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{series_uid[-3:]}_{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_folder(tmp_path):
    arr = np.random.default_rng(0).integers(-100, 300, (5, 16, 16))
    _write_dicom_series(tmp_path / "ct", arr, "1.2.826.0.1.3680043.2.1125.101")
    img = read_image(tmp_path / "ct")
    assert img.ndim == 3 and img.array.shape == (5, 16, 16)
    np.testing.assert_allclose(img.spacing, (0.8, 0.8, 2.0), atol=1e-4)
    assert img.meta["modality"] == "CT" and img.meta["body_part"] == "ABDOMEN"


def test_dicom_series_off_a_regular_grid_is_refused(tmp_path):
    arr = np.random.default_rng(0).integers(-100, 300, (6, 8, 8))
    _write_dicom_series(tmp_path / "tilt", arr, "1.2.826.0.1.3680043.2.1125.101", shift_per_slice=1.0)
    with pytest.raises(InputError, match=r"not on one regular grid \(slice 6 of 6 lies 5\.\d mm from its grid "
                                         r"position.*gantry tilt, or missing or repeated slices; load it in Slicer"):  # fmt: skip
        read_image(tmp_path / "tilt")
    _write_dicom_series(tmp_path / "gap", arr, "1.2.826.0.1.3680043.2.1125.101")
    sorted((tmp_path / "gap").iterdir())[2].unlink()  # a missing slice
    with pytest.raises(InputError, match=r"slice distances 2\.00-4\.00 mm"):
        read_image(tmp_path / "gap")


def test_dicom_folder_with_mixed_series_is_refused(tmp_path):
    arr = np.random.default_rng(0).integers(-100, 300, (3, 8, 8))
    _write_dicom_series(tmp_path / "mixed", arr, "1.2.826.0.1.3680043.2.1125.101")
    _write_dicom_series(tmp_path / "mixed", arr, "1.2.826.0.1.3680043.2.1125.202", description="ABD 3mm")
    with pytest.raises(InputError, match=r"mixes 2 DICOM series; .*: 1\.2\.826\.0\.1\.3680043\.2\.1125\.101 \(CT, 3 "
                                         r"files\); 1\.2\.826\.0\.1\.3680043\.2\.1125\.202 \(CT, 'ABD 3mm', 3 files\)\.$"):  # fmt: skip
        read_image(tmp_path / "mixed")
    with pytest.raises(InputError, match=r"no DICOM series with UID 9\.9; found .*\.101 \(CT, 3 files\)"):
        read_image(tmp_path / "mixed", series_uid="9.9")
    img = read_image(tmp_path / "mixed", series_uid="1.2.826.0.1.3680043.2.1125.202")
    assert img.array.shape == (3, 8, 8)
    one_file = sorted((tmp_path / "mixed").iterdir())[0]
    with pytest.raises(InputError, match=r"picks one series of a DICOM folder, and this is a file"):
        read_image(one_file, series_uid="1.2.826.0.1.3680043.2.1125.202")


def test_bad_inputs_get_specific_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "missing.nii.gz")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="not an image"):
        read_image(tmp_path / "notes.txt")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_image(tmp_path / "empty.nii.gz")
    with pytest.raises(InputError, match="holds no DICOM series"):
        read_image(tmp_path)

    four_d = sitk.GetImageFromArray(np.random.rand(3, 4, 5, 6).astype(np.float32), isVector=False)
    sitk.WriteImage(sitk.JoinSeries([four_d[:, :, :, i] for i in range(3)]), str(tmp_path / "t.nii.gz"))
    with pytest.raises(InputError, match="4D"):
        read_image(tmp_path / "t.nii.gz")

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32)), str(tmp_path / "zero.nii.gz"))
    with pytest.raises(InputError, match="image is empty"):
        read_image(tmp_path / "zero.nii.gz")

    nan = np.full((4, 5, 6), np.nan, np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "nan.mha"))
    with pytest.raises(InputError, match="every voxel is NaN"):
        read_image(tmp_path / "nan.mha")
    nan[0, 0, :3] = 1.0
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "some_nan.nrrd"))
    with pytest.raises(InputError, match="117 of 120 voxels are NaN"):
        read_image(tmp_path / "some_nan.nrrd")


def test_segmentation_round_trip_through_slicerio(tmp_path, oblique_image):
    import slicerio

    labels = (oblique_image.array > 0).astype(np.uint8)
    labels[4:6, 6:9, 8:11] = 2
    lm = oblique_image.with_array(labels)
    path = write_segmentation(lm, tmp_path / "out.seg.nrrd", [LIVER, Segment(2, "Spleen", (0.6, 0.4, 0.7))])

    raw = slicerio.read_segmentation(str(path))
    names = {s["name"]: s for s in raw["segments"]}
    assert set(names) == {"Liver", "Spleen"}
    assert names["Liver"]["terminology"]["type"] == ["SCT", "10200004", "Liver"]
    np.testing.assert_allclose(names["Spleen"]["color"], (0.6, 0.4, 0.7), atol=1e-5)
    np.testing.assert_allclose(np.asarray(raw["ijkToLPS"]), lm.ijk_to_lps(), atol=1e-5)

    back, segments = read_segmentation(path)
    assert back.same_geometry(lm)
    np.testing.assert_array_equal(back.array, labels)
    assert [s.name for s in segments] == ["Liver", "Spleen"]


def test_interrupted_write_keeps_previous_file(tmp_path, oblique_image, monkeypatch):
    target = write_image(oblique_image, tmp_path / "img.nrrd")
    before = target.read_bytes()

    def broken_write(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken_write)
    with pytest.raises(OSError):
        write_image(oblique_image.with_array(oblique_image.array * 2), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.nrrd"]


_KILLED_BETWEEN_RENAMES = """
import os, sys
from ModelSelectorLib import atomic
real, calls = os.replace, []
def replace(a, b):
    calls.append(1)
    if len(calls) == 2:  # the old folder is moved aside, the new one not yet in place
        os._exit(9)
    real(a, b)
os.replace = replace
with atomic.atomic_dir(sys.argv[1]) as tmp:
    (tmp / "v").write_text("new")
"""


@pytest.mark.parametrize("next_writer", ["atomic_dir", "remove_leftovers"])
def test_a_folder_moved_aside_by_a_killed_writer_is_put_back(tmp_path, next_writer):
    import subprocess
    import sys

    from ModelSelectorLib import atomic

    target = tmp_path / "prototypes"
    target.mkdir()
    (target / "v").write_text("old")
    run = subprocess.run([sys.executable, "-c", _KILLED_BETWEEN_RENAMES, str(target)], capture_output=True)
    assert run.returncode == 9 and not target.exists()  # killed between the renames
    if next_writer == "atomic_dir":
        with pytest.raises(RuntimeError), atomic.atomic_dir(target):
            raise RuntimeError("this write fails too")
    else:
        atomic.remove_leftovers(tmp_path)
    assert (target / "v").read_text() == "old"
    assert not list(tmp_path.glob(".prototypes.old-*"))


def test_label_maps_are_told_from_pictures(oblique_image):
    shape = oblique_image.array.shape
    labels = np.zeros(shape, np.uint8)
    labels[2:5, 3:8, 4:9], labels[5:8, 3:8, 4:9] = 1, 7
    problem = label_map_problem(oblique_image.with_array(labels.astype(np.float32)))  # float label maps too
    assert (
        problem.startswith("it holds only 3 distinct whole-number values (0, 1, 7)")
        and "label map" in problem
    )
    runs = np.arange(np.prod(shape)).reshape(shape) // 40  # regions: runs of 40 voxels in memory order
    assert "32 distinct" in label_map_problem(oblique_image.with_array((runs % 32).astype(np.int16)))
    # an atlas of 60 regions (the shared data's atlases hold 42-117): the nearest of 60 random seeds
    eye = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    grid = np.stack(np.mgrid[:64, :64, :64], -1).reshape(-1, 1, 3)
    seeds = np.random.default_rng(2).uniform(0, 64, (60, 3))
    atlas = (((grid - seeds) ** 2).sum(-1).argmin(-1) + 1).reshape(64, 64, 64).astype(np.int16)
    assert "60 distinct" in label_map_problem(Image(atlas, (1.0,) * 3, (0.0,) * 3, eye))
    noisy = np.clip(np.round(atlas * 3.0 + np.random.default_rng(3).normal(0, 8, atlas.shape)), 0, 255)
    assert (
        label_map_problem(Image(noisy, (1.0,) * 3, (0.0,) * 3, eye)) is None
    )  # the same regions as a picture
    # a dark edge slice of an 8-bit MR: a few grey values (0-8), but varying like noise, not forming regions
    rng = np.random.default_rng(1)
    dark = np.zeros((64, 64), np.uint8)
    dark[20:44, 16:48] = np.clip(rng.normal(3, 2, (24, 32)), 0, 8).astype(np.uint8)
    assert label_map_problem(Image(dark, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))) is None
    blocky = np.repeat(np.repeat(dark[::8, ::8], 8, axis=0), 8, axis=1)  # the same values as 8 px regions
    assert "label map" in label_map_problem(Image(blocky, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)))
    # an 8-bit picture enlarged 16 times (2,048 px): runs of 16 equal pixels, yet a picture, not a label map
    smooth = np.clip(np.random.default_rng(4).normal(128, 40, (128, 128)), 0, 255).astype(np.uint8)
    enlarged = np.repeat(np.repeat(smooth, 16, axis=0), 16, axis=1)
    assert label_map_problem(Image(enlarged, (0.2, 0.2), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))) is None
    lungs = np.zeros((2048, 2048), np.uint8)  # a lung mask at full radiograph size stays a label map
    lungs[400:1600, 300:900], lungs[400:1600, 1150:1750] = 1, 2
    assert "label map" in label_map_problem(Image(lungs, (0.2, 0.2), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)))
    halves = (labels / 2.0).astype(np.float32)  # few values, not whole numbers: a picture
    assert label_map_problem(oblique_image.with_array(halves)) is None
    rng = np.random.default_rng(0)
    picture = np.clip(rng.normal(120, 30, (64, 64)), 0, 255).astype(
        np.uint8
    )  # an 8-bit radiograph-like image
    assert label_map_problem(Image(picture, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))) is None
    colour = np.zeros((8, 8, 3), np.uint8)
    assert label_map_problem(Image(colour + 1, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))) is None


def test_with_array_checks_shape(oblique_image):
    with pytest.raises(ValueError):
        oblique_image.with_array(np.zeros((2, 2, 2)))
    assert isinstance(oblique_image.as_3d(), Image)


@pytest.mark.parametrize("components, pixel, suffix", [(3, sitk.sitkFloat32, ".nrrd"), (2, sitk.sitkUInt8, ".nrrd"),
                                                       (5, sitk.sitkUInt8, ".mha")])  # fmt: skip
def test_channels_that_are_not_colours_are_refused(tmp_path, oblique_image, components, pixel, suffix):
    """Echoes or contrasts stored as vector voxels (an NRRD 'list' axis, a NIfTI vector) were mixed with colour
    weights; a colour volume (RGB, 8-bit) is still read."""
    channels = [sitk.Cast(oblique_image.to_sitk(), pixel) for _ in range(components)]
    path = tmp_path / f"channels{suffix}"
    sitk.WriteImage(sitk.Compose(channels), str(path))
    with pytest.raises(
        InputError, match=f"holds {components} values of type .* per voxel .* keep one channel"
    ):
        read_image(path)
    rgb = [sitk.Cast(oblique_image.to_sitk(), sitk.sitkUInt8) for _ in range(3)]
    sitk.WriteImage(sitk.Compose(rgb), str(tmp_path / "rgb.nrrd"))
    assert read_image(tmp_path / "rgb.nrrd").same_geometry(oblique_image)


def test_names_near_the_file_systems_limit(tmp_path, oblique_image):
    """A legal name of 249 bytes is written (the temporary name no longer adds 13 to it); longer names and
    input paths are refused in one line before any work."""
    from ModelSelectorLib.errors import OutputError
    from ModelSelectorLib.io.outputs import check_output_file

    legal = tmp_path / ("a" * 240 + ".seg.nrrd")
    check_output_file(legal, ".seg.nrrd")
    write_segmentation(oblique_image.with_array((oblique_image.array > 0).astype(np.uint8)), legal, [LIVER])
    assert legal.is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    with pytest.raises(OutputError, match="the file name is 309 bytes long, more than the 255"):
        check_output_file(tmp_path / ("a" * 300 + ".seg.nrrd"), ".seg.nrrd")
    with pytest.raises(InputError, match="cannot be looked up"):
        read_image(tmp_path / ("a" * 300 + ".nii.gz"))


def test_upper_case_extensions_and_huge_pictures(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    from ModelSelectorLib.io.markups import write_markups

    out = write_markups(tmp_path / "X.MRK.JSON", np.zeros((1, 3)), ["a"])  # accepted up front, so written too
    assert out.is_file()
    PILImage.fromarray(np.full((64, 64), 7, np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(
        PILImage, "MAX_IMAGE_PIXELS", 1000
    )  # Pillow refuses twice this (a decompression bomb)
    with pytest.raises(InputError, match="too large to read safely .* reduce it"):
        read_image(tmp_path / "big.png")


def test_a_folder_written_as_dot_replaces_the_current_folder(tmp_path, monkeypatch):
    """`demo --out .` failed with "PosixPath('.') has an empty name" and left a hidden folder behind."""
    from ModelSelectorLib import atomic

    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with atomic.atomic_dir(".") as tmp:
        (tmp / "summary.html").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["here"]
    assert (tmp_path / "here" / "summary.html").read_text() == "new"


def test_a_segmentation_of_overlapping_layers_is_refused_as_a_label(tmp_path, oblique_image):
    """A Slicer .seg.nrrd of 3 or 4 layers passed as an RGB(A) picture and was turned to grey."""
    layers = [sitk.Cast(oblique_image.to_sitk() > 50, sitk.sitkUInt8) for _ in range(3)]
    sitk.WriteImage(sitk.Compose(layers), str(tmp_path / "layers.seg.nrrd"))
    with pytest.raises(InputError, match="a segmentation of 3 overlapping layers.* export it as a label map"):
        read_image(tmp_path / "layers.seg.nrrd", check_content=False)


def test_cleanup_under_the_lock_puts_back_a_folder_whatever_process_has_its_number(tmp_path):
    """Process numbers are reused after a restart: under the lock a moved-aside folder whose target is missing
    is put back even when a live process has the number in its name (here this test's parent)."""
    from ModelSelectorLib import atomic

    aside = tmp_path / f".prototypes.old-{os.getppid()}"
    aside.mkdir()
    (aside / "v").write_text("old")
    assert atomic.remove_leftovers(tmp_path) == []
    assert (tmp_path / "prototypes" / "v").read_text() == "old" and not aside.exists()
