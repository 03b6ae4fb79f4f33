"""What a Python caller may pass as an image: MONAI and nibabel data keep every voxel's world position, ``Image``
checks its geometry, in-memory SimpleITK images are checked as files are, and wrong output names or in-memory
images where a path is needed are refused in one line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from ModelSelectorLib.errors import InputError, OutputError
from ModelSelectorLib.io import Image, as_image, read_image, write_image, write_segmentation

#: voxel (i, j, k) of the bright marker in the synthetic volume
MARKER = (9, 4, 3)


def _oblique_direction() -> np.ndarray:
    """A rotation about z (25 degrees) then x (15 degrees): every world axis mixes two voxel axes."""
    a, b = math.radians(25.0), math.radians(15.0)
    rz = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(b), -math.sin(b)], [0.0, math.sin(b), math.cos(b)]])
    return rz @ rx


@pytest.fixture
def marked_nifti(tmp_path):
    """A NIfTI volume (12 x 10 x 6 voxels of 0.7 x 1.1 x 2.5 mm, oblique, origin away from 0) with one bright
    voxel at :data:`MARKER`, and that voxel's LPS position (mm)."""
    rng = np.random.default_rng(0)
    arr = rng.uniform(0.0, 50.0, (6, 10, 12)).astype(np.float32)  # (z, y, x)
    arr[MARKER[2], MARKER[1], MARKER[0]] = 1000.0
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 1.1, 2.5))
    img.SetOrigin((-31.5, 12.25, 40.0))
    img.SetDirection(_oblique_direction().ravel().tolist())
    path = tmp_path / "marked.nii.gz"
    sitk.WriteImage(img, str(path))
    return path, np.array(img.TransformIndexToPhysicalPoint(MARKER))


def _marker_lps(image: Image) -> np.ndarray:
    """LPS position (mm) of the brightest voxel of ``image``."""
    kji = np.unravel_index(int(np.argmax(image.array)), image.array.shape)
    return (image.ijk_to_lps() @ np.array([*kji[::-1], 1.0]))[:3]


def _assert_same(image: Image, reference: Image) -> None:
    assert image.array.shape == reference.array.shape
    np.testing.assert_allclose(image.array, reference.array)
    for got, want in zip((image.spacing, image.origin, image.direction), (reference.spacing, reference.origin,
                                                                          reference.direction)):  # fmt: skip
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert all(type(v) is float for v in got)


@pytest.mark.parametrize("channel_first", [False, True])
def test_monai_metatensor_keeps_every_voxel_in_its_lps_place(marked_nifti, channel_first):
    from monai.transforms import LoadImage

    path, truth = marked_nifti
    reference = read_image(path)
    tensor = LoadImage(image_only=True, ensure_channel_first=channel_first)(str(path))
    assert tuple(tensor.shape) == ((1,) if channel_first else ()) + (12, 10, 6)  # MONAI: (x, y, z)
    for image in (Image.from_monai(tensor), as_image(tensor)):
        _assert_same(image, reference)
        np.testing.assert_allclose(_marker_lps(image), truth, atol=1e-4)
        assert image.size == (12, 10, 6) and image.meta["path"] == str(path)


def test_nibabel_image_keeps_every_voxel_in_its_lps_place(marked_nifti):
    import nibabel as nib

    path, truth = marked_nifti
    for image in (Image.from_nibabel(nib.load(str(path))), as_image(nib.load(str(path)))):
        _assert_same(image, read_image(path))
        np.testing.assert_allclose(_marker_lps(image), truth, atol=1e-4)


def test_monai_metatensor_in_lps_space_is_not_flipped(marked_nifti):
    """A MetaTensor whose meta says LPS (as MONAI's ITK reader gives without its RAS conversion) is taken as LPS."""
    import torch
    from monai.data import MetaTensor
    from monai.utils import SpaceKeys

    path, truth = marked_nifti
    reference = read_image(path)
    lps = MetaTensor(torch.from_numpy(np.ascontiguousarray(reference.array.transpose(2, 1, 0))),
                     affine=torch.from_numpy(reference.ijk_to_lps()), meta={"space": SpaceKeys.LPS})  # fmt: skip
    _assert_same(Image.from_monai(lps), Image(reference.array, reference.spacing, reference.origin,
                                              reference.direction))  # fmt: skip
    ras = MetaTensor(lps.as_tensor(), affine=torch.from_numpy(np.diag([-1.0, -1.0, 1.0, 1.0]) @ reference.ijk_to_lps()),
                     meta={"space": "RAS"})  # fmt: skip
    np.testing.assert_allclose(_marker_lps(Image.from_monai(ras)), truth, atol=1e-4)


def test_monai_and_nibabel_2d_images_read_as_the_files_do(tmp_path):
    """A 2D NIfTI (RAS affine) and a picture (MONAI's PIL reader: pixel axes, no space, floats) give the image
    read_image gives."""
    import nibabel as nib
    from monai.transforms import LoadImage

    rng = np.random.default_rng(1)
    slice2d = sitk.GetImageFromArray(rng.uniform(0, 100, (20, 30)).astype(np.float32))
    slice2d.SetSpacing((0.5, 0.75))
    slice2d.SetOrigin((3.0, -4.0))
    sitk.WriteImage(slice2d, str(tmp_path / "slice.nii.gz"))
    picture = rng.integers(0, 4096, (20, 30)).astype(np.uint16)  # 12-bit: mapped to the 8-bit range
    sitk.WriteImage(sitk.GetImageFromArray(picture), str(tmp_path / "xray.png"))
    colour = rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(colour, isVector=True), str(tmp_path / "photo.png"))
    for name in ("slice.nii.gz", "xray.png", "photo.png"):
        reference = read_image(tmp_path / name)
        for channel_first in (False, True):
            tensor = LoadImage(image_only=True, ensure_channel_first=channel_first)(str(tmp_path / name))
            image = Image.from_monai(tensor)
            _assert_same(image, reference)
            assert image.pixel_size_known == reference.pixel_size_known
    _assert_same(
        Image.from_nibabel(nib.load(str(tmp_path / "slice.nii.gz"))), read_image(tmp_path / "slice.nii.gz")
    )


def test_monai_and_nibabel_channels_and_shear_are_refused_as_in_files(tmp_path, marked_nifti):
    import nibabel as nib
    import torch
    from monai.data import MetaTensor

    path, _ = marked_nifti
    voxels = torch.rand(2, 12, 10, 6)
    with pytest.raises(InputError, match=r"image: holds 2 values of .* per voxel .* keep one channel first"):
        Image.from_monai(MetaTensor(voxels, affine=torch.eye(4)))
    with pytest.raises(InputError, match="pass one image"):
        Image.from_monai(MetaTensor(torch.rand(1, 1, 12, 10, 6), meta={"spatial_shape": (12, 10, 6)}))
    sheared = np.eye(4)
    sheared[0, 1] = 0.4
    with pytest.raises(InputError, match="not perpendicular"):
        Image.from_monai(MetaTensor(voxels[:1], affine=torch.from_numpy(sheared)))
    with pytest.raises(InputError, match="gives the voxel axes no volume"):
        Image.from_monai(MetaTensor(voxels[:1], affine=torch.from_numpy(np.diag([1.0, 0.0, 1.0, 1.0]))))
    four_d = nib.Nifti1Image(np.zeros((12, 10, 6, 3), np.float32), np.eye(4))
    with pytest.raises(InputError, match=r"is 4D \(3 volumes"):
        Image.from_nibabel(four_d)
    one = nib.Nifti1Image(np.asarray(nib.load(str(path)).dataobj)[..., None], nib.load(str(path)).affine)
    _assert_same(Image.from_nibabel(one), read_image(path))


def test_bare_arrays_are_refused_naming_the_constructors():
    import torch
    from monai.data import MetaTensor

    for bare in (np.zeros((4, 5, 6), np.float32), torch.zeros(4, 5, 6)):
        with pytest.raises(InputError) as err:
            as_image(bare)
        text = str(err.value)
        assert "\n" not in text
        for part in ("Image(array, spacing, origin, direction)", "(z, y, x)", "LPS", "Image.from_monai(tensor)",
                     "Image.from_nibabel(img)"):  # fmt: skip
            assert part in text
    with pytest.raises(InputError, match=r"convert it with Image.from_monai\(\)"):
        Image(MetaTensor(torch.zeros(6, 5, 4)), (1.0,) * 3, (0.0,) * 3, np.eye(3))


def test_image_geometry_becomes_float_tuples_and_is_checked():
    vol = np.zeros((6, 8, 10), np.float32)
    listed = Image(vol, [1, 1, 2], np.zeros(3), np.eye(3))
    assert listed.spacing == (1.0, 1.0, 2.0) and listed.direction == tuple(np.eye(3).ravel().tolist())
    assert all(type(v) is float for v in (*listed.spacing, *listed.origin, *listed.direction))
    hash((listed.spacing, listed.origin, listed.direction))  # the selector's cache keys need this
    cases = [
        ((vol, (1.0, 1.0), (0.0, 0.0), np.eye(2)), r"array of shape \(6, 8, 10\) does not fit a 2D geometry"),
        ((vol[None], (1.0,) * 3, (0.0,) * 3, np.eye(3)), r"leading channel axis .* drop the channel axis .* \(z, y, x\)"),
        ((vol, (1.0,) * 3, (0.0,) * 3, np.eye(2)), "the direction has 4 values where a 3D image needs 9"),
        ((vol, (1.0,) * 3, (0.0, 0.0), np.eye(3)), "the origin has 2 values and the spacing 3"),
        ((vol, (-1.0, 1.0, 1.0), (0.0,) * 3, np.eye(3)), "must be positive and finite"),
        ((vol, (1.0, np.nan, 1.0), (0.0,) * 3, np.eye(3)), "must be positive and finite"),
        ((vol, (1.0,) * 3, (0.0,) * 3, [1, 0.3, 0, 0, 1, 0, 0, 0, 1]), "not perpendicular"),
        ((vol, (1.0,) * 3, (0.0,) * 3, np.diag([0.7, 0.7, 2.5])), "direction's columns have lengths 0.7 0.7 2.5"),
        ((vol, (1.0,) * 4, (0.0,) * 4, np.eye(4)), "the spacing has 4 values"),
        ((vol, ("a", 1, 1), (0.0,) * 3, np.eye(3)), "the spacing must be numbers"),
    ]  # fmt: skip
    for args, message in cases:
        with pytest.raises(InputError, match=message) as err:
            Image(*args)
        assert "\n" not in str(err.value)
    # colour components stay last, also on a lone slice of a volume
    assert Image(np.zeros((1, 8, 10, 3), np.uint8), (1.0,) * 3, (0.0,) * 3, np.eye(3)).is_multicomponent
    assert Image(np.zeros((8, 10, 4), np.uint8), (1.0, 1.0), (0.0, 0.0), (1, 0, 0, 1)).is_multicomponent


def test_in_memory_simpleitk_images_are_checked_as_files_are(oblique_image):
    volume = oblique_image.to_sitk()
    with pytest.raises(InputError, match="image: holds 2 values of type vector of 32-bit float per voxel"):
        as_image(sitk.Compose(volume, volume))
    sheared = sitk.Image(volume)
    sheared.SetDirection((1, 0.3, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(InputError, match="image: the image's axes are not perpendicular"):
        as_image(sheared)
    one_volume = as_image(sitk.JoinSeries([volume]))
    assert one_volume.same_geometry(oblique_image)
    np.testing.assert_array_equal(one_volume.array, oblique_image.array)
    with pytest.raises(InputError, match=r"is 4D \(2 volumes"):
        as_image(sitk.JoinSeries([volume, volume]))
    rgb = sitk.GetImageFromArray(np.zeros((8, 10, 3), np.uint8), isVector=True)
    assert as_image(rgb).is_multicomponent


def test_segmentation_under_another_format_name_is_refused(tmp_path, oblique_image):
    labels = oblique_image.with_array((oblique_image.array > 0).astype(np.uint8))
    with pytest.raises(
        OutputError, match=r"name it labels.seg.nrrd, or .* io.write_image\(prediction.value"
    ) as err:
        write_segmentation(labels, tmp_path / "labels.nii.gz", [])
    assert "\n" not in str(err.value) and not (tmp_path / "labels.nii.gz").exists()
    assert write_segmentation(labels, tmp_path / "labels.nrrd", []).is_file()
    assert read_image(write_image(labels, tmp_path / "labels.nii.gz")).same_geometry(labels)


def test_apply_to_file_refuses_an_image_in_memory(oblique_image):
    from ModelSelectorLib.apply import apply_to_file, read_model_input

    for image in (oblique_image, oblique_image.to_sitk()):
        with pytest.raises(
            InputError, match=r"apply_to_file takes an image file path, not a .*open_runtime\("
        ):
            apply_to_file("no-zoo", "model", image, "out.seg.nrrd")
        with pytest.raises(
            InputError, match=r"read_model_input takes an image file path.*\.predict\(image\)"
        ):
            read_model_input(image, None)


def test_apply_to_image_checks_an_image_in_memory_as_apply_to_file_checks_a_file(tmp_path, oblique_image):
    """The library's in-memory path makes the checks of `apply`: a label map is refused, a CT model on an
    image without Hounsfield units is warned of, and the result keeps the input's geometry."""
    import bad_inputs as bad

    from ModelSelectorLib.apply import apply_to_image
    from ModelSelectorLib.zoo import Zoo

    zoo = Zoo.create(tmp_path / "zoo")
    zoo.add(bad.tiny_bundle(tmp_path / "src"))
    labels = Image(np.zeros((12, 20, 24), np.uint8), oblique_image.spacing, oblique_image.origin,
                   oblique_image.direction)  # fmt: skip
    labels.array[4:8, 6:14, 8:18] = 2
    with pytest.raises(InputError, match="label map"):
        apply_to_image(zoo, "tiny-ct", labels.to_sitk())
    noise = np.random.default_rng(0).normal(0, 5, oblique_image.array.shape).astype(np.float32)
    image = Image(oblique_image.array + 300 + noise, oblique_image.spacing, oblique_image.origin,
                  oblique_image.direction)  # fmt: skip
    heard: list[str] = []
    prediction = apply_to_image(zoo, "tiny-ct", image.to_sitk(), warn=heard.append)
    assert any("Hounsfield" in text for text in heard), heard
    assert prediction.value.same_geometry(image)
    with pytest.warns(UserWarning, match="Hounsfield"):  # Python's warnings when no warn is given
        apply_to_image(zoo, "tiny-ct", image)
    # a lone slice for a 3D model: refused at once, with no warning about a model that is not applied
    heard.clear()
    one_slice = Image(image.array[6], image.spacing[:2], image.origin[:2], (1.0, 0.0, 0.0, 1.0))
    with pytest.raises(InputError, match="takes 3D volumes .* and the input is a single 2D slice"):
        apply_to_image(zoo, "tiny-ct", one_slice, warn=heard.append)
    assert heard == []
