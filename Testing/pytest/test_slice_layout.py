"""Lone slices and 2D images read as a viewer sees them (``Image.in_view_layout``, ``Image.as_2d``): the order
in which a file stores its pixels, and the plane or tilt of a slice, change neither where a result lies nor
what a model computes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ModelSelectorLib.io import Image, read_image


def _rotation(axis: int, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    r = np.eye(3)
    i, j = [a for a in range(3) if a != axis]
    r[i, i], r[i, j], r[j, i], r[j, j] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    return r


def test_view_layout_keeps_every_pixel_in_place_and_turns_the_slice_upright():
    rng = np.random.default_rng(0)
    for _ in range(60):
        signed_permutation = np.eye(3)[:, rng.permutation(3)] * rng.choice([-1, 1], 3)
        direction = _rotation(int(rng.integers(3)), rng.uniform(-30, 30)) @ signed_permutation
        size = [4, 5, 6]
        size[int(rng.integers(3))] = 1  # a lone axial, coronal or sagittal slice
        array = np.arange(np.prod(size), dtype=float).reshape(size[::-1])
        spacing, origin = tuple(rng.uniform(0.5, 2, 3)), tuple(rng.uniform(-50, 50, 3))
        image = Image(array, spacing, origin, tuple(direction.ravel()))
        laid, restore = image.in_view_layout()
        assert laid.size[2] == 1 and np.array_equal(restore(laid.array), array)
        for index in itertools.product(*[range(s) for s in laid.size]):  # same value, same world position
            (stored,) = np.argwhere(array == laid.array[index[::-1]])
            assert np.allclose(laid.ijk_to_lps() @ (*index, 1), image.ijk_to_lps() @ (*stored[::-1], 1))
        right, down = image.view_frame().T
        assert laid.direction_matrix()[:, 0] @ right > 0.8 and laid.direction_matrix()[:, 1] @ down > 0.8
        flat = image.as_2d()
        assert flat.array.shape == laid.array.shape[1:]
        assert np.allclose(flat.direction_matrix(), np.eye(2), atol=0.5)  # upright, at most the in-plane tilt


def test_a_slice_along_any_axis_is_a_lone_slice():
    sagittal = Image(np.zeros((30, 40, 1)), (1.0, 0.8, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    assert sagittal.is_single_slice and sagittal.slice_axis == 0
    flat = sagittal.as_2d()  # posterior to the right, inferior down
    assert flat.array.shape == (30, 40) and flat.spacing == (0.8, 2.0)
    assert not Image(np.zeros((2, 3, 4)), (1.0,) * 3, (0.0,) * 3, tuple(np.eye(3).ravel())).is_single_slice


def _stored_otherwise(image: Image, flip_x: bool, transpose: bool) -> Image:
    """The same physical radiograph (a one-slice volume) with its pixels stored in another order."""
    array, spacing, direction = image.array, list(image.spacing), image.direction_matrix().copy()
    origin = np.asarray(image.origin, float)
    if flip_x:
        origin = image.ijk_to_lps()[:3] @ (image.size[0] - 1, 0, 0, 1)
        array, direction[:, 0] = array[:, :, ::-1], -direction[:, 0]
    if transpose:
        array = array.transpose(0, 2, 1)
        spacing[:2], direction[:, :2] = spacing[1::-1], direction[:, 1::-1].copy()
    return Image(np.ascontiguousarray(array), tuple(spacing), tuple(origin), tuple(direction.ravel()), {})


@pytest.mark.parametrize(("flip_x", "transpose"), [(True, False), (False, True), (True, True)])
def test_landmarks_of_a_radiograph_stored_mirrored_or_transposed_stay_on_their_side(flip_x, transpose):
    """The shipped dx-chest-landmarks read pixels as stored: a radiograph whose file runs right to left put the
    right lung's contour on the left lung (143 mm off). The points are now the same in the world."""
    from ModelSelectorLib.models import runtime_for
    from ModelSelectorLib.resources import default_zoo_path, samples_dir
    from ModelSelectorLib.zoo import Zoo, load_bundle

    runtime = runtime_for(load_bundle(Zoo(default_zoo_path()).get("dx-chest-landmarks")))
    picture = read_image(samples_dir() / "cxr_chest.png")
    image = Image(picture.array[None].astype(np.float32), (0.7, 0.7, 1.0), (-90.0, 20.0, 5.0),
                  (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0))  # fmt: skip  # coronal, as DICOM stores it
    stored = _stored_otherwise(image, flip_x, transpose)
    assert not np.array_equal(stored.array, image.array)
    np.testing.assert_allclose(runtime.predict(stored).value, runtime.predict(image).value, atol=1e-3)


def test_a_tilted_lone_slice_is_segmented_in_its_own_plane():
    """A slice-wise model given one slice tilted by 3 degrees: resampled onto an axis-aligned grid the slab of
    one voxel fell between grid planes and the input became background (Dice 0.96 -> 0). Now the network sees the
    same input as for the untilted slice, and the labels lie on the tilted slice's own grid."""
    from ModelSelectorLib.models import runtime_for
    from ModelSelectorLib.models.preprocessing import preprocess
    from ModelSelectorLib.models.segmentation import axcodes_of
    from ModelSelectorLib.resources import default_zoo_path
    from ModelSelectorLib.zoo import Zoo, load_bundle

    bundle = load_bundle(Zoo(default_zoo_path()).get("mr-cardiac"))
    runtime = runtime_for(bundle)
    yy, xx = np.mgrid[:96, :96]
    ring = np.exp(-(((np.hypot(yy - 48, xx - 44) - 18) / 4.0) ** 2))  # a bright ring on a grey field
    array = (200 + 600 * ring + np.random.default_rng(0).normal(0, 20, (96, 96)))[None].astype(np.float32)
    axial = Image(array, (1.5, 1.5, 8.0), (-70.0, -60.0, 30.0), tuple(np.eye(3).ravel()))
    tilted = Image(array, axial.spacing, axial.origin, tuple((_rotation(1, 3.0)).ravel()))

    def network_input(image: Image) -> np.ndarray:
        return preprocess(runtime.input_image(image), runtime.card.target_spacing, runtime.card.intensity,
                          axcodes_of(bundle))[0]  # fmt: skip

    assert np.allclose(network_input(tilted), network_input(axial)) and network_input(tilted).std() > 0.5
    labels = runtime.predict(tilted).value
    assert labels.same_geometry(tilted)
    assert np.array_equal(labels.array, runtime.predict(axial).value.array)


def test_a_simpleitk_image_is_taken_where_an_image_is():
    """The library's entry points take a SimpleITK image as they take an Image or a path; anything else is told
    how to make an Image (a raw array carries no geometry)."""
    import SimpleITK as sitk

    from ModelSelectorLib.errors import InputError
    from ModelSelectorLib.io import as_image
    from ModelSelectorLib.models import runtime_for
    from ModelSelectorLib.resources import default_zoo_path, samples_dir
    from ModelSelectorLib.zoo import Zoo, load_bundle

    picture = sitk.ReadImage(str(samples_dir() / "cxr_chest.png"))
    picture.SetSpacing((0.7, 0.7))
    picture.SetOrigin((-12.0, 30.0))
    image = as_image(picture)
    assert image.spacing == (0.7, 0.7) and image.origin == (-12.0, 30.0)
    runtime = runtime_for(load_bundle(Zoo(default_zoo_path()).get("dx-chest-landmarks")))
    np.testing.assert_allclose(runtime.predict(picture).value, runtime.predict(image).value)
    assert runtime.fit_signals(picture)["fit"] == runtime.fit_signals(image)["fit"]
    with pytest.raises(InputError, match=r"not a numpy.ndarray; wrap an array with its geometry as Image\("):
        runtime.predict(np.zeros((64, 64), np.float32))
