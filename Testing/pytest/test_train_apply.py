"""Train a tiny model on synthetic data, add it to a zoo, apply it (library and CLI), check geometry."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from ModelSelectorLib.datasets import make_synthetic_case, make_synthetic_msd  # noqa: E402
from ModelSelectorLib.errors import Cancelled, InputError  # noqa: E402
from ModelSelectorLib.io import Image, read_segmentation, write_image  # noqa: E402

TARGET_SPACING = (2.0, 2.0, 3.0)


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    return 2.0 * np.count_nonzero(x & y) / max(np.count_nonzero(x) + np.count_nonzero(y), 1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny UNet trained once on 5 synthetic CT cases; returns (zoo path, bundle path)."""
    from ModelSelectorLib.training.segmentation import TrainConfig, train_segmentation

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("train")
    msd = make_synthetic_msd(root / "msd", n_cases=5, profile="ct", seed=0)
    config = TrainConfig(channels=(8, 16, 32), epochs=150, lr=3e-3, batch_size=2, num_samples=4,
                         roi_size=(16, 16, 16), target_spacing=TARGET_SPACING, augment=False,
                         val_interval=10, seed=0, num_threads=2)  # fmt: skip
    bundle = train_segmentation(msd, "synth_ct", root / "zoo", config)
    return root / "zoo", bundle, msd


@pytest.fixture(scope="module")
def loaded(trained):
    from ModelSelectorLib.zoo import load_bundle

    return load_bundle(trained[1])


def test_training_writes_a_complete_card(trained, loaded):
    from ModelSelectorLib.zoo import Zoo

    zoo_path, bundle, _ = trained
    assert Zoo(zoo_path).get("synth_ct") == bundle
    card = loaded.card
    assert card.modality == "CT" and card.body_region == "ABDOMEN" and card.synthetic is True
    assert [(lb["value"], lb["name"]) for lb in card.labels] == [(1, "sphere"), (2, "box")]
    assert all(len(lb["color"]) == 3 for lb in card.labels)
    assert card.target_spacing == list(TARGET_SPACING) and card.roi_size == [16, 16, 16]
    assert card.intensity == {"mode": "ct", "a_min": -1000.0, "a_max": 1000.0}
    assert card.n_training_cases == 4 and card.seed == 0 and card.training_time_s > 0
    # the epochs' time, as a resumed run records it too (not the loading and the final evaluation)
    curve = json.loads((bundle / "docs" / "training_curve.json").read_text(encoding="utf-8"))
    assert card.training_time_s == pytest.approx(curve["training_time_s"], abs=0.01)
    assert card.training_device == "CPU, 2 torch threads"
    assert card.validation_metrics["dice"] > 0.7
    assert {"dice_sphere", "dice_box"} <= set(card.validation_metrics)
    assert card.code_version.startswith("0.")


@pytest.mark.parametrize("resample", ["nearest", "linear"])
def test_apply_segments_a_held_back_case(loaded, resample):
    from ModelSelectorLib.models.segmentation import apply_model

    image, truth = make_synthetic_case(1000, profile="ct")
    out = apply_model(loaded, image, resample=resample)
    assert out.same_geometry(image) and out.array.dtype == np.uint8
    for value in (1, 2):
        assert dice(out.array, truth.array, value) >= 0.8, f"label {value}"


class IntensityOracle(torch.nn.Module):
    """A "perfect" network for the synthetic CT task: classifies each voxel by its normalised intensity.

    After CT normalisation (clip [-1000, 1000] -> [0, 1]) air is 0, tissue 0.52, the ellipsoid (200 HU) 0.6
    and the box (-100 HU) 0.45; logits are negative squared distances to those levels. Used to test geometry
    handling independently of how well a trained model learned.
    """

    def forward(self, x):
        levels = torch.tensor([0.0, 0.52, 0.6, 0.45], dtype=x.dtype, device=x.device).view(1, 4, 1, 1, 1)
        d = -(((x - levels) / 0.02) ** 2)
        return torch.stack([torch.maximum(d[:, 0], d[:, 1]), d[:, 2], d[:, 3]], dim=1)


def oracle_bundle(spacing=(1.0, 1.0, 1.5)):
    from types import SimpleNamespace

    from ModelSelectorLib.zoo import ModelCard

    card = ModelCard(name="oracle", version="0.1.0", task_type="segmentation", modality="CT", body_region="ABDOMEN",
                     labels=[{"value": 1, "name": "sphere", "color": [1.0, 0.0, 0.0]},
                             {"value": 2, "name": "box", "color": [0.0, 0.0, 1.0]}],
                     target_spacing=list(spacing), intensity={"mode": "ct", "a_min": -1000.0, "a_max": 1000.0},
                     roi_size=[32, 32, 16])  # fmt: skip
    return SimpleNamespace(network=IntensityOracle().eval(), card=card, config={}, path=None)


GEOMETRIES = [
    ((0.9, 1.0, 2.5), (22, 40, 38), 35.0, False),
    ((1.5, 1.4, 2.0), (30, 26, 28), 0.0, True),
    ((1.2, 1.2, 3.0), (24, 32, 32), 20.0, False),
]


def _case(spacing, shape, angle, flip, seed=2000):
    image, truth = make_synthetic_case(seed, profile="ct", shape=shape, spacing=spacing, oblique=angle != 0,
                                       angle_deg=angle)  # fmt: skip
    if flip:  # axis-aligned but LPS-flipped (as RAS-stored data reads): i -> R, j -> A
        direction = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
        image = Image(image.array, image.spacing, (30.0, -12.5, 4.0), direction)
        truth = Image(truth.array, truth.spacing, (30.0, -12.5, 4.0), direction)
    return image, truth


def _assert_same_grid(out, image):
    assert out.size == image.size and out.array.shape == image.array.shape
    assert np.allclose(out.spacing, image.spacing) and np.allclose(out.origin, image.origin)
    assert np.allclose(out.direction, image.direction)


@pytest.mark.parametrize("spacing, shape, angle, flip", GEOMETRIES)
def test_apply_preserves_geometry_and_label_positions(spacing, shape, angle, flip):
    """With a perfect network the output must reproduce the truth: any resampling or axis-order error
    (transposed axes, flipped directions, shifted origin) would move the labels."""
    from ModelSelectorLib.models.segmentation import apply_model

    image, truth = _case(spacing, shape, angle, flip)
    out = apply_model(oracle_bundle(), image)
    _assert_same_grid(out, image)
    assert dice(out.array, truth.array, 1) >= 0.95
    # box: partial volume at the air/tissue border also looks like -100 HU, so check recall only
    box = truth.array == 2
    assert np.count_nonzero(out.array[box] == 2) >= 0.95 * np.count_nonzero(box)


@pytest.mark.parametrize("spacing, shape, angle, flip", GEOMETRIES[:2])
def test_trained_model_on_other_geometries(loaded, spacing, shape, angle, flip):
    from ModelSelectorLib.models.segmentation import apply_model

    image, truth = _case(spacing, shape, angle, flip)
    out = apply_model(loaded, image)
    _assert_same_grid(out, image)
    assert dice(out.array, truth.array, 1) >= 0.6 and dice(out.array, truth.array, 2) >= 0.3


def test_apply_can_be_cancelled(loaded):
    from ModelSelectorLib.models.segmentation import apply_model

    image, _ = make_synthetic_case(5, profile="ct")
    ev = threading.Event()
    ev.set()
    with pytest.raises(Cancelled):
        apply_model(loaded, image, cancel=ev)


@pytest.mark.parametrize("shape, roi, overlap", [((40, 33, 7), (16, 16, 16), 0.5), ((64, 64), (32, 32), 0.25),
                                                 ((10, 70, 21), (12, 24, 8), 0.0), ((5, 5, 5), None, 0.5)])  # fmt: skip
def test_window_count_is_the_number_of_windows_the_network_sees(shape, roi, overlap):
    from ModelSelectorLib.models.segmentation import predict_probabilities, window_count

    conv = (torch.nn.Conv3d if len(shape) == 3 else torch.nn.Conv2d)(1, 2, 3, padding=1).eval()
    seen = []
    array = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    probs = predict_probabilities(conv, array, roi, sw_batch_size=3, overlap=overlap, mirror_axes=(0, 1),
                                  step=seen.append)  # fmt: skip
    assert probs.shape == (2, *shape)
    assert sum(seen) == 4 * window_count(shape, roi, overlap)  # four mirrored passes
    assert max(seen) <= 3  # one step per batch of windows


def test_a_long_prediction_stops_between_batches_of_windows(loaded):
    """Cancel is checked after every batch of sliding windows, not only between stages."""
    from ModelSelectorLib.models.registry import runtime_for

    image, _ = make_synthetic_case(5, profile="ct")
    big = Image(np.tile(image.array, (3, 3, 3)), image.spacing, image.origin, image.direction)  # many windows
    calls = []

    class AfterTwoBatches:
        def is_set(self):
            calls.append(1)
            return len(calls) > 4  # two checks before the windows, then two batches

    with pytest.raises(Cancelled):
        runtime_for(loaded).predict(big, cancel=AfterTwoBatches())
    assert len(calls) == 5


def test_windows_per_pass_follow_the_threads_and_leave_the_labels_alone(loaded):
    """Without ``sw_batch_size`` a prediction takes one sliding window per torch thread (at most 8; 4 on a GPU; no
    more than fit in SW_BATCH_VOXELS) per forward pass, and its labels are those of one window per pass."""
    from ModelSelectorLib.models.registry import runtime_for
    from ModelSelectorLib.models.segmentation import default_sw_batch_size

    image, _ = make_synthetic_case(5, profile="ct")
    big = Image(np.tile(image.array, (2, 2, 2)), image.spacing, image.origin, image.direction)  # many windows
    runtime = runtime_for(loaded)
    batches: list[int] = []

    class Recording(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            batches.append(int(x.shape[0]))
            return self.net(x)

    runtime.network = Recording(runtime.network).eval()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert default_sw_batch_size("cpu") == 3 and default_sw_batch_size("cuda:0") == 4
        labels = runtime.predict(big).value.array
        assert max(batches) == 3
        batches.clear()
        one = runtime.predict(big, sw_batch_size=1).value.array
        assert max(batches) == 1
        torch.set_num_threads(32)
        assert default_sw_batch_size("cpu") == 8 and default_sw_batch_size("cpu", (64, 64, 32)) == 8
        # no more windows than fit in SW_BATCH_VOXELS, and at least one however large
        assert (
            default_sw_batch_size("cpu", (96, 96, 64)) == 1 and default_sw_batch_size("cuda", (160,) * 3) == 1
        )
        assert default_sw_batch_size("cpu", (64, 64, 64)) == 4
    finally:
        torch.set_num_threads(threads)
    assert np.mean(labels != one) < 1e-4  # the same up to float rounding at exact ties


def test_cli_apply_writes_seg_nrrd(trained, tmp_path, capsys):
    from ModelSelectorLib.cli import main

    zoo_path = trained[0]
    image, truth = make_synthetic_case(3000, profile="ct")
    src = write_image(image, tmp_path / "ct.nrrd")
    out = tmp_path / "out.seg.nrrd"
    rc = main(["apply", "--zoo", str(zoo_path), "--model", "synth_ct", str(src), "--out", str(out)])
    assert rc == 0 and out.is_file()
    labelmap, segments = read_segmentation(out)
    assert labelmap.same_geometry(image, tol=1e-3)
    names = {s.value: s.name for s in segments}
    assert names == {1: "sphere", 2: "box"}
    assert all(len(s.color) == 3 and all(0 <= c <= 1 for c in s.color) for s in segments)
    assert dice(labelmap.array, truth.array, 1) >= 0.8


def _bad_inputs(tmp_path):
    import SimpleITK as sitk

    vol = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32))
    four_d = tmp_path / "four_d.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([vol, vol]), str(four_d))
    arr = np.random.default_rng(1).normal(size=(8, 9, 10)).astype(np.float32)
    arr[2, 3, 4] = np.nan
    nan = write_image(Image(arr, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
                      tmp_path / "nan.nrrd")  # fmt: skip
    return {"4D": four_d, "NaN": nan, "missing": tmp_path / "missing.nii.gz"}


@pytest.mark.parametrize("kind", ["4D", "NaN", "missing"])
def test_cli_apply_bad_input_one_line_error(trained, tmp_path, capsys, kind):
    from ModelSelectorLib.cli import main

    path = _bad_inputs(tmp_path)[kind]
    out = tmp_path / "out.seg.nrrd"
    rc = main(["apply", "--zoo", str(trained[0]), "--model", "synth_ct", str(path), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == InputError.exit_code != 0
    assert err.startswith("modelselector: error:") and len(err.splitlines()) == 1
    assert not out.exists()


def test_cli_apply_unknown_model(trained, tmp_path, capsys):
    from ModelSelectorLib.cli import main

    image, _ = make_synthetic_case(1, profile="ct")
    src = write_image(image, tmp_path / "ct.nii.gz")
    rc = main(
        [
            "apply",
            "--zoo",
            str(trained[0]),
            "--model",
            "nope",
            str(src),
            "--out",
            str(tmp_path / "o.seg.nrrd"),
        ]
    )
    assert rc != 0 and "nope" in capsys.readouterr().err


def test_cli_train_adds_new_version(trained, tmp_path, capsys):
    from ModelSelectorLib.cli import main
    from ModelSelectorLib.zoo import Zoo

    zoo_path, _, msd = trained
    cfg = tmp_path / "train.yaml"
    cfg.write_text("channels: [4, 8]\nroi_size: [16, 16, 16]\ntarget_spacing: [3.0, 3.0, 3.0]\n"
                   "batch_size: 1\nnum_samples: 1\naugment: true\nmax_cases: 3\nnum_threads: 2\n")  # fmt: skip
    argv = ["train", "--dataset", str(msd), "--name", "synth_ct", "--out", str(zoo_path), "--config", str(cfg),
            "--epochs", "1", "--arch", "unet", "--seed", "1", "--work", str(tmp_path / "work")]  # fmt: skip
    assert main(argv) == 0
    zoo = Zoo(zoo_path)
    assert set(zoo.versions("synth_ct")) == {"0.1.0", "0.1.1"}
    assert zoo.card("synth_ct").seed == 1
    assert [p.name for p in (tmp_path / "work").iterdir()]  # the checkpoint a stopped run resumes from
    capsys.readouterr()
    # the same run again continues from the checkpoint (finished: nothing to train) and adds no copy of 0.1.1
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert set(Zoo(zoo_path).versions("synth_ct")) == {"0.1.0", "0.1.1"}
    assert "synth_ct 0.1.1 has the weights and inference settings of this run" in err
    assert out.strip() == str(Zoo(zoo_path).get("synth_ct", "0.1.1"))


def test_training_on_a_device_that_is_not_there_is_refused_before_any_work(trained, tmp_path):
    from ModelSelectorLib.errors import InputError
    from ModelSelectorLib.training.segmentation import TrainConfig, train_segmentation

    for device, phrase in (("cuda:99", "device 'cuda:99'"), ("gpu", "not a torch device")):
        with pytest.raises(InputError, match=phrase):
            train_segmentation(trained[2], "x", tmp_path / "zoo", TrainConfig(epochs=1, device=device))
    assert not (tmp_path / "zoo").exists()


def test_cli_train_bad_config_is_one_line_error(trained, tmp_path, capsys):
    from ModelSelectorLib.cli import main

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("epochz: 3\n")
    rc = main(
        [
            "train",
            "--dataset",
            str(trained[2]),
            "--name",
            "x",
            "--out",
            str(tmp_path / "zoo"),
            "--config",
            str(cfg),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "epochz" in err and len(err.splitlines()) == 1


def test_apply_2d_model_keeps_2d_geometry(tmp_path):
    from ModelSelectorLib.models.segmentation import apply_model
    from ModelSelectorLib.training.segmentation import TrainConfig, build_network, network_def
    from ModelSelectorLib.zoo import ModelCard, load_bundle, save_bundle

    torch.manual_seed(0)
    net_def = network_def(TrainConfig(channels=(4, 8)), spatial_dims=2, n_classes=2)
    net = build_network(net_def)
    card = ModelCard(name="rand2d", version="0.1.0", task_type="segmentation", modality="DX", body_region="CHEST",
                     labels=[{"value": 1, "name": "thing", "color": [1.0, 0.0, 0.0]}], spatial_dims=2,
                     target_spacing=[0.5, 0.5], intensity={"mode": "percentile", "a_min": 1.0, "a_max": 99.0},
                     roi_size=[32, 32])  # fmt: skip
    bundle = load_bundle(save_bundle(tmp_path / "rand2d", card, net_def, net.state_dict()))
    c, s = math.cos(math.radians(10)), math.sin(math.radians(10))
    arr = np.random.default_rng(0).normal(size=(45, 37)).astype(np.float32)
    image = Image(arr, (0.7, 0.4), (3.0, -2.0), (c, -s, s, c))
    out = apply_model(bundle, image)
    assert out.same_geometry(image) and out.array.shape == (45, 37)
    with pytest.raises(InputError, match="2D"):
        apply_model(bundle, Image(np.ones((3, 4, 5), np.float32) * np.arange(5), (1, 1, 1), (0, 0, 0),
                                  (1, 0, 0, 0, 1, 0, 0, 0, 1)))  # fmt: skip


def test_slab_model_loads_and_keeps_the_geometry(tmp_path):
    """A 2.5D bundle (3-slice windows, kernels across slices in the input block, mirrored along every axis) loads
    like any DynUNet bundle and segments a volume in its own geometry."""
    from ModelSelectorLib.models.segmentation import apply_model
    from ModelSelectorLib.training.segmentation import TrainConfig, build_network, network_def
    from ModelSelectorLib.zoo import ModelCard, load_bundle, save_bundle

    torch.manual_seed(0)
    cfg = TrainConfig(
        architecture="dynunet", channels=(4, 8, 16), roi_size=(32, 32, 3), slab_levels=1
    ).check()
    net_def = network_def(cfg, 3, 2, (32, 32, 3), (2.0, 2.0, 1.0))
    card = ModelCard(name="slab", version="0.1.0", task_type="segmentation", modality="MR", body_region="HEAD",
                     labels=[{"value": 1, "name": "thing", "color": [1.0, 0.0, 0.0]}], spatial_dims=3,
                     target_spacing=[2.0, 2.0, 1.0], intensity={"mode": "mr"}, roi_size=[32, 32, 3],
                     inference={"sw_mode": "gaussian", "overlap": 0.5, "mirror_axes": [0, 1, 2],
                                "keep_largest_component": []})  # fmt: skip
    bundle = load_bundle(save_bundle(tmp_path / "slab", card, net_def, build_network(net_def).state_dict()))
    assert bundle.network(torch.zeros(1, 1, 32, 32, 3)).shape == (1, 2, 32, 32, 3)
    image, _ = _case((1.8, 2.1, 1.2), (30, 26, 9), 20.0, False)
    out = apply_model(bundle, image)
    _assert_same_grid(out, image)


def test_intensity_mode_follows_modality():
    from ModelSelectorLib.models.preprocessing import normalize_intensity
    from ModelSelectorLib.training.segmentation import TrainConfig, intensity_settings

    assert intensity_settings(TrainConfig(), "MR") == {"mode": "mr"}
    assert intensity_settings(TrainConfig(a_min=-200, a_max=300), "CT") == {
        "mode": "ct",
        "a_min": -200.0,
        "a_max": 300.0,
    }
    arr = np.array([0.0, 0.0, 10.0, 20.0, 30.0], np.float32)
    out = normalize_intensity(arr, {"mode": "mr"})
    assert out[0] == 0 and abs(out[2:].mean()) < 1e-6 and abs(out[2:].std() - 1) < 1e-5
    ct = normalize_intensity(
        np.array([-2000.0, 0.0, 2000.0], np.float32), {"mode": "ct", "a_min": -1000, "a_max": 1000}
    )
    assert np.allclose(ct, [0.0, 0.5, 1.0]) and ct.dtype == np.float32


@pytest.mark.parametrize("roi", [(24, 16, 8), (16, 16, 8)])
def test_augmented_patches_keep_the_roi_shape(roi):
    """Every augmented training patch has the configured shape, also for a non-square in-plane roi
    (a quarter turn would otherwise make patches of two shapes that cannot be batched)."""
    from monai.utils import set_determinism

    from ModelSelectorLib.training.augmentation import train_transforms
    from ModelSelectorLib.training.segmentation import TrainConfig

    set_determinism(seed=0)
    transform = train_transforms(TrainConfig(roi_size=roi, augment=True, num_samples=4), roi, 3)
    label = np.zeros((1, 40, 40, 20), np.uint8)
    label[0, 10:30, 12:28, 5:15] = 1
    item = {"image": np.random.default_rng(0).random((1, 40, 40, 20)).astype(np.float32), "label": label}
    shapes = {tuple(p["image"].shape[1:]) for _ in range(10) for p in transform(item)}
    assert shapes == {roi}
    set_determinism(seed=None)


def test_flips_spare_the_left_right_axis_for_lateral_labels():
    from ModelSelectorLib.errors import TrainingError
    from ModelSelectorLib.training.segmentation import TrainConfig, flip_axes

    cfg = TrainConfig()
    assert flip_axes(cfg, ["Liver", "Right kidney", "Left kidney"], 3) == (1, 2)
    assert flip_axes(cfg, ["Left ventricle myocardium"], 3) == (1, 2)
    assert flip_axes(cfg, ["Liver", "Spleen"], 3) == (0, 1, 2)
    assert flip_axes(cfg, ["Lungs"], 2) == (0, 1)
    assert flip_axes(cfg, ["Brightness"], 2) == (0, 1)  # "right" only as a whole word
    assert flip_axes(TrainConfig(flip_axes=(0,)), ["Right kidney"], 3) == (0,)
    with pytest.raises(TrainingError, match="flip_axes"):
        flip_axes(TrainConfig(flip_axes=(3,)), ["Liver"], 3)


def test_lateral_labels_stay_on_their_side_through_augmentation():
    from monai.utils import set_determinism

    from ModelSelectorLib.training.augmentation import flip_axes, train_transforms
    from ModelSelectorLib.training.segmentation import TrainConfig

    roi = (16, 16, 8)
    cfg = TrainConfig(roi_size=roi, augment=True, num_samples=4)
    flips = flip_axes(cfg, ["Right kidney", "Left kidney"], 3)
    set_determinism(seed=0)
    transform = train_transforms(cfg, roi, 3, flips)
    label = np.zeros((1, 16, 16, 8), np.uint8)
    label[0, :8] = 1  # low x (the patient's right in RAS) holds label 1
    label[0, 8:] = 2
    item = {"image": np.random.default_rng(0).random((1, 16, 16, 8)).astype(np.float32), "label": label}
    for _ in range(10):
        for patch in transform(item):
            lab = np.asarray(patch["label"])[0]
            assert (lab[:8] == 1).all() and (lab[8:] == 2).all()
    set_determinism(seed=None)


# --- label values, validation figures -------------------------------------------------------------------
class _Oracle(torch.nn.Module):
    """Logits that put each voxel in the class its input value names (the input holds the answer)."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.n_classes = n_classes

    def forward(self, x):
        return torch.nn.functional.one_hot(x[:, 0].round().long(), self.n_classes).movedim(-1, 1).float()


def test_validation_dice_leaves_out_a_label_no_case_holds():
    """A label absent from every validation case cannot be measured: it is not a 0 that halves the mean."""
    from ModelSelectorLib.training.fitting import validate

    lab = np.zeros((1, 8, 8, 8), np.uint8)
    lab[0, 2:5, 2:5, 2:5] = 1
    items = [{"image": lab.astype(np.float32), "label": lab}]
    res = validate(_Oracle(3), items, (8, 8, 8), 3, "cpu")
    assert res["per_label"] == {1: pytest.approx(1.0)} and res["dice"] == pytest.approx(1.0)


def _msd_with_values(root, values, declared):
    """Synthetic MSD folder (3 small cases) whose label files hold ``values[v]`` where the synthetic label is ``v``."""
    return make_synthetic_msd(root, n_cases=3, profile="ct", seed=0, shape=(12, 16, 16), label_values=values,
                              labels=declared)  # fmt: skip


TINY_RUN = dict(channels=(4, 8), epochs=1, batch_size=1, num_samples=1, roi_size=(8, 8, 8),
                target_spacing=(3.0, 3.0, 3.0), augment=False, seed=0, num_threads=2)  # fmt: skip


def test_a_model_of_label_values_1_and_300_has_one_output_per_label(tmp_path):
    import json

    from ModelSelectorLib.training.segmentation import TrainConfig, train_segmentation
    from ModelSelectorLib.zoo import load_bundle

    msd = _msd_with_values(tmp_path / "msd", {1: 1, 2: 300}, {"0": "background", "1": "sphere", "300": "box"})
    bundle = train_segmentation(msd, "big", tmp_path / "zoo", TrainConfig(**TINY_RUN))
    card = load_bundle(bundle).card
    assert [(lb["value"], lb["name"]) for lb in card.labels] == [(1, "sphere"), (2, "box")]
    weights = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert [t.shape[0] for t in weights.values() if t.ndim > 1][-1] == 3  # background, sphere, box
    assert {k for k in card.validation_metrics if k.startswith("dice_")} <= {"dice_sphere", "dice_box"}
    assert "300 (box)" in card.training_data
    curve = json.loads((bundle / "docs" / "training_curve.json").read_text(encoding="utf-8"))
    assert curve["label_values"] == {"1": 1, "2": 300}


def test_without_validation_cases_the_card_shows_no_validation_dice(tmp_path):
    from ModelSelectorLib.models import runtime_class
    from ModelSelectorLib.training.segmentation import TrainConfig, train_segmentation
    from ModelSelectorLib.zoo import load_bundle

    msd = make_synthetic_msd(tmp_path / "msd", n_cases=2, profile="ct", seed=0, shape=(12, 16, 16))
    bundle = train_segmentation(msd, "allcases", tmp_path / "zoo", TrainConfig(**TINY_RUN, val_fraction=0.0))
    card = load_bundle(bundle).card
    metrics = card.validation_metrics
    assert "dice" not in metrics and "training_dice" in metrics and metrics["validation_cases"] == 0
    assert runtime_class("segmentation").held_out(card) is None
    # largest-component post-processing asked for every label needs no validation case to choose it
    lcc = TrainConfig(**{**TINY_RUN, "val_fraction": 0.0, "postprocess": "lcc"})
    card = load_bundle(train_segmentation(msd, "allcases-lcc", tmp_path / "zoo", lcc)).card
    assert card.inference["keep_largest_component"] == [1, 2]


def test_training_a_finished_run_again_adds_no_copy_of_its_version(tmp_path, capsys):
    """The same command run again with its work folder resumes the finished run: the version it made is returned
    and nothing is added (it used to add 0.1.1 with the weights of 0.1.0, and make it current). Other inference
    settings on the same weights are a new version."""
    from ModelSelectorLib.training.segmentation import TrainConfig, train_segmentation
    from ModelSelectorLib.zoo import Zoo, load_bundle

    msd = make_synthetic_msd(tmp_path / "msd", n_cases=3, profile="ct", seed=0, shape=(12, 16, 16))
    zoo_dir, work = tmp_path / "zoo", tmp_path / "work"
    first = train_segmentation(msd, "organs", zoo_dir, TrainConfig(**TINY_RUN), work_dir=work)
    capsys.readouterr()
    again = train_segmentation(msd, "organs", zoo_dir, TrainConfig(**TINY_RUN), work_dir=work)
    assert again == first and Zoo(zoo_dir).versions("organs") == ["0.1.0"]
    assert "organs 0.1.0 has the weights and inference settings of this run" in capsys.readouterr().err
    lcc = train_segmentation(
        msd, "organs", zoo_dir, TrainConfig(**TINY_RUN, postprocess="lcc"), work_dir=work
    )
    assert Zoo(zoo_dir).versions("organs") == ["0.1.0", "0.1.1"] and Zoo(zoo_dir).current("organs") == "0.1.1"
    assert load_bundle(lcc).card.inference != load_bundle(first).card.inference


def test_evaluation_maps_the_label_files_values_to_the_models(tmp_path):
    """A split of data labelled 1 and 5 scores a model whose outputs are 1 and 2 on the same structures."""
    from ModelSelectorLib.evaluation.segmentation import evaluate_bundle

    image, truth = make_synthetic_case(2001, profile="ct", shape=(24, 32, 32), spacing=(1.2, 1.2, 3.0))
    write_image(image, tmp_path / "img.nii.gz")
    write_image(
        truth.with_array(np.where(truth.array == 2, 5, truth.array).astype(np.uint8)), tmp_path / "lab.nii.gz"
    )
    case = {"id": "c", "image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}
    mapped = evaluate_bundle(
        oracle_bundle(), [{**case, "label_values": {1: 1, 5: 2}}], {1: "sphere", 2: "box"}
    )
    assert mapped[0]["dice_sphere"] > 0.9 and mapped[0]["dice_box"] > 0.6  # 0 unmapped: the files say 5


def test_evaluation_leaves_out_a_label_that_no_case_holds(tmp_path):
    """The box predicted where no truth holds it: Dice 0 there, which would halve every case's mean; it is not
    measured on this set instead, and a label that some case holds still counts on every case."""
    from ModelSelectorLib.evaluation.segmentation import evaluate_bundle

    cases = []
    for i, seed in enumerate((2001, 2002)):
        image, truth = make_synthetic_case(seed, profile="ct", shape=(24, 32, 32), spacing=(1.2, 1.2, 3.0))
        write_image(image, tmp_path / f"img{i}.nii.gz")
        write_image(truth.with_array(np.where(truth.array == 2, 0, truth.array).astype(np.uint8)),
                    tmp_path / f"lab{i}.nii.gz")  # fmt: skip
        cases.append(
            {
                "id": f"c{i}",
                "image": str(tmp_path / f"img{i}.nii.gz"),
                "label": str(tmp_path / f"lab{i}.nii.gz"),
            }
        )
    res = evaluate_bundle(oracle_bundle(), cases, {1: "sphere", 2: "box"})
    for r in res:
        assert r["not_measured"] == ["box"] and r["per_label"]["box"]["dice"] == 0.0
        assert r["dice"] == r["per_label"]["sphere"]["dice"] > 0.9 and "dice_box" not in r
        assert r["dice_sphere"] == r["dice"] and r["hd95_sphere"] == r["hd95"]  # still named per label
    # one case that holds the box: it is measured on every case again
    write_image(make_synthetic_case(2002, profile="ct", shape=(24, 32, 32), spacing=(1.2, 1.2, 3.0))[1],
                tmp_path / "lab1.nii.gz")  # fmt: skip
    res = evaluate_bundle(oracle_bundle(), cases, {1: "sphere", 2: "box"})
    assert "not_measured" not in res[0] and res[0]["dice_box"] == 0.0 and res[0]["dice"] < 0.55


def test_training_shows_pictures_of_any_size_as_apply_shows_them(tmp_path):
    """PNG files carry no pixel size: apply shows every picture spanning the median training field, and so must
    training, or a 256 px picture among 128 px ones looks twice as large to the network there as here."""
    from ModelSelectorLib.atomic import write_json
    from ModelSelectorLib.datasets import load_msd
    from ModelSelectorLib.training.segmentation import TrainConfig, prepare_run

    root = tmp_path / "pictures"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i, size in enumerate((128, 128, 256)):
        yy, xx = np.mgrid[:size, :size] / size
        disk = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.09).astype(
            np.uint8
        )  # the same disk, in pixels of any size
        geo = {"spacing": (1.0, 1.0), "origin": (0.0, 0.0), "direction": (1.0, 0.0, 0.0, 1.0)}
        write_image(Image((60 + 150 * disk).astype(np.uint8), **geo), root / "imagesTr" / f"p{i}.png")
        write_image(Image(disk * 255, **geo), root / "labelsTr" / f"p{i}.png")
        training.append({"image": f"./imagesTr/p{i}.png", "label": f"./labelsTr/p{i}.png"})
    write_json(root / "dataset.json", {"name": "pictures", "modality": {"0": "DX"}, "training": training,
                                      "labels": {"0": "background", "255": "disk"}, "numTraining": 3})  # fmt: skip
    run = prepare_run(
        load_msd(root), [0, 1, 2], [], TrainConfig(target_spacing=(2.0, 2.0), roi_size=(32, 32))
    )
    shapes = {tuple(it["image"].shape) for it in run.train_items}
    areas = [int((it["label"] > 0).sum()) for it in run.train_items]
    assert shapes == {(1, 64, 64)} and max(areas) - min(areas) <= 0.05 * max(areas)
