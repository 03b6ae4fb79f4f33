"""The nnU-Net-style training recipe: planning, augmentation, test-time mirroring, post-processing, resumable
training and cross-validation, on small synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")


# --- planning -------------------------------------------------------------------------------------------
def test_patch_is_planned_from_the_median_shape():
    from ModelSelectorLib.training.planning import dynunet_kernels_strides, plan_patch

    # MSD Task04-like crops at 1 mm: nnU-Net's own patch for this median shape is 40 x 56 x 40
    roi = plan_patch((36.0, 49.5, 36.0), (1.0, 1.0, 1.0), 100_000, 4)
    assert roi == (40, 56, 40)
    kernels, strides = dynunet_kernels_strides(roi, (1.0, 1.0, 1.0), 4)
    assert strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]] and kernels == [[3, 3, 3]] * 4
    # the cap shrinks the physically longest axis first and keeps sizes divisible by the pooling
    capped = plan_patch((36.0, 49.5, 36.0), (1.0, 1.0, 1.0), 50_000, 4)
    assert np.prod(capped) <= 50_000 and all(r % 8 == 0 for r in capped) and capped[1] <= 56


def test_thick_slices_are_not_pooled_or_convolved_across():
    from ModelSelectorLib.training.planning import dynunet_kernels_strides, plan_patch

    spacing = (1.5, 1.5, 10.0)
    kernels, strides = dynunet_kernels_strides((224, 256, 8), spacing, 6)
    assert kernels[0] == [3, 3, 1] and strides[1] == [2, 2, 1]
    # once the in-plane spacing has grown to within a factor 2 of the slice spacing, z is pooled too
    assert any(s[2] == 2 for s in strides) and kernels[-1] == [3, 3, 3]
    # slice-wise patches (one slice thick): no z kernel, no z pooling, in-plane planned
    roi = plan_patch((220.0, 250.0, 9.0), spacing, 70_000, 6, fixed=(0, 0, 1))
    assert roi[2] == 1 and roi[0] * roi[1] <= 70_000 and roi[0] % 32 == 0
    kernels, strides = dynunet_kernels_strides(roi, spacing, 6)
    assert all(k[2] == 1 for k in kernels) and all(s[2] == 1 for s in strides)
    # a 1-voxel axis does not limit the others, even when its (nominal) spacing is the finest
    kernels, strides = dynunet_kernels_strides((128, 128, 1), (2.0, 2.0, 1.0), 6)
    assert len(strides) == 6 and strides[-1] == [2, 2, 1] and kernels[-1] == [3, 3, 1]


def test_plan_training_uses_median_spacing_and_records_it(tmp_path):
    from ModelSelectorLib.datasets import load_msd, make_synthetic_msd
    from ModelSelectorLib.training.networks import network_def
    from ModelSelectorLib.training.planning import plan_training
    from ModelSelectorLib.training.segmentation import TrainConfig

    msd = load_msd(make_synthetic_msd(tmp_path / "msd", n_cases=3, profile="mr", seed=0))
    cfg = TrainConfig(architecture="dynunet", channels=(8, 16, 32), roi_size=(0, 0, 8), max_patch_voxels=4096)
    plan = plan_training(msd, [0, 1, 2], cfg.check())
    assert plan.roi_size[2] == 8 and np.prod(plan.roi_size) <= 4096 and plan.planned == (0, 1)
    assert plan.to_card()["max_patch_voxels"] == 4096 and len(plan.to_card()["median_shape"]) == 3
    net = network_def(cfg, 3, 3, plan.roi_size, plan.spacing)
    assert len(net["strides"]) == len(net["filters"]) <= 3


# --- cross-validation -----------------------------------------------------------------------------------
def test_kfold_split_keeps_patients_together():
    from ModelSelectorLib.errors import TrainingError
    from ModelSelectorLib.training.crossval import kfold_split

    groups = [f"p{i // 2}" for i in range(20)]  # two cases per patient
    seen = []
    for fold in range(5):
        train, val = kfold_split(20, 5, fold, seed=3, groups=groups)
        assert sorted(train + val) == list(range(20))
        assert not {groups[i] for i in train} & {groups[i] for i in val}
        seen += val
    assert sorted(seen) == list(range(20))  # every case is held out exactly once
    assert kfold_split(20, 5, 0, seed=3, groups=groups) == kfold_split(20, 5, 0, seed=3, groups=groups)
    with pytest.raises(TrainingError):
        kfold_split(4, 5, 0)


# --- inference ------------------------------------------------------------------------------------------
def test_mirroring_maps_each_prediction_back():
    """With a network that commutes with flips (1x1 convolution), mirrored passes average to the plain one;
    a wrongly un-flipped pass would not."""
    from ModelSelectorLib.models.segmentation import mirror_combinations, predict_probabilities

    assert mirror_combinations([1, 2]) == [(), (1,), (2,), (1, 2)]
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 1).eval()
    arr = np.random.default_rng(0).normal(size=(12, 10, 6)).astype(np.float32)
    plain = predict_probabilities(net, arr, (8, 8, 4), mode="gaussian", overlap=0.5)
    mirrored = predict_probabilities(net, arr, (8, 8, 4), mode="gaussian", overlap=0.5, mirror_axes=(0, 1, 2))
    assert plain.shape == (3, 12, 10, 6) and np.allclose(plain, mirrored, atol=1e-5)
    one_slice = arr[:, :, :1]  # mirrored along an axis of length 1: a flip numpy cannot make contiguous
    mirrored = predict_probabilities(net, one_slice, (8, 8, 1), mirror_axes=(0, 2))
    assert np.allclose(predict_probabilities(net, one_slice, (8, 8, 1)), mirrored, atol=1e-5)


def test_keep_largest_component_per_label():
    from ModelSelectorLib.models.segmentation import keep_largest_component

    lab = np.zeros((10, 10, 4), np.uint8)
    lab[0:4, 0:4] = 1
    lab[8:10, 8:10] = 1  # a small stray island of label 1
    lab[6, 0] = 2
    lab[0, 8] = 2  # two single-voxel pieces of label 2
    out = keep_largest_component(lab, [1])
    assert (out[8:10, 8:10] == 0).all() and (out[0:4, 0:4] == 1).all() and (out == 2).sum() == 8
    assert keep_largest_component(lab, []) is lab


def test_postprocessing_is_kept_only_where_it_helps():
    from ModelSelectorLib.training.validation import choose_postprocessing, summarize_cases

    rows = [{"dice": {"a": 0.8, "b": 0.9}, "dice_lcc": {"a": 0.85, "b": 0.88}},
            {"dice": {"a": 0.7, "b": 0.9}, "dice_lcc": {"a": 0.70, "b": 0.90}}]  # fmt: skip
    labels, figures = choose_postprocessing(rows, "auto")
    assert labels == ["a"] and figures["a"]["dice_lcc"] > figures["a"]["dice"]
    assert choose_postprocessing(rows, "none")[0] == [] and choose_postprocessing(rows, "lcc")[0] == [
        "a",
        "b",
    ]
    summary = summarize_cases(rows, labels)
    assert summary["dice_a"] == pytest.approx(0.775) and summary["dice_b"] == pytest.approx(0.9)
    # a sample standard deviation over the cases: |0.85 - 0.70| / sqrt(2)
    assert summary["cases"] == 2 and summary["dice_a_std"] == pytest.approx(0.15 / 2**0.5, abs=1e-4)


def test_batch_dice_pools_the_patches_of_a_batch():
    from ModelSelectorLib.training.config import TrainConfig
    from ModelSelectorLib.training.fitting import _loss

    # two slice patches: one with a lesion found exactly, one empty slice with a faint false positive
    label = torch.zeros(2, 1, 8, 8)
    label[0, 0, 2:6, 2:6] = 1
    foreground = (label[:, 0] * 2 - 1) * 10
    logits = torch.stack([-foreground, foreground], dim=1)  # channels: background, lesion
    logits[1, 1, 0, 0], logits[1, 0, 0, 0] = 10.0, -10.0
    per_patch, pooled = _loss("dicece")(logits, label), _loss("dicece_batch")(logits, label)
    # per patch, the empty slice's single wrong pixel costs its whole foreground Dice term; pooled, it is
    # one pixel among the batch's 17 predicted foreground pixels
    assert float(pooled) < float(per_patch) - 0.2
    assert TrainConfig(loss="dicece_batch").loss == "dicece_batch"


def test_card_inference_block_is_checked_and_exported(tmp_path):
    from ModelSelectorLib.errors import BundleError
    from ModelSelectorLib.zoo.bundle import build_inference_config
    from ModelSelectorLib.zoo.card import ModelCard

    card = ModelCard(name="m", version="0.1.0", task_type="segmentation", modality="MR", body_region="HEAD",
                     labels=[{"value": 1, "name": "a", "color": [1.0, 0.0, 0.0]}], roi_size=[8, 8, 8],
                     inference={"sw_mode": "gaussian", "overlap": 0.5, "mirror_axes": [1, 2],
                                "keep_largest_component": [1]}, peak_memory_mb=512.0)  # fmt: skip
    config = build_inference_config(card.validate(), {"_target_": "x"})
    assert config["window"]["mode"] == "gaussian" and config["window"]["overlap"] == 0.5
    assert config["inferer"].startswith("$lambda x, net:")  # test-time mirroring has no MONAI class
    post = [t["_target_"] for t in config["postprocessing"]["transforms"]]
    # mirrored: the inferer averages the softmax over the flips, so no softmax of its own follows
    assert post == ["Invertd", "AsDiscreted", "KeepLargestConnectedComponentd", "SaveImaged"]
    assert config["mirror_dims"] == [[], [3], [4], [3, 4]] and config["window"]["roi_size"] == [8, 8, 8]
    with pytest.raises(BundleError, match="mirror_axes"):
        ModelCard.from_dict({**card.to_dict(), "inference": {"mirror_axes": [3]}}).validate()
    with pytest.raises(BundleError, match="keep_largest_component"):
        ModelCard.from_dict({**card.to_dict(), "inference": {"keep_largest_component": [2]}}).validate()


def test_the_card_says_where_a_model_was_trained():
    from ModelSelectorLib.errors import BundleError
    from ModelSelectorLib.training.fitting import training_device
    from ModelSelectorLib.zoo.bundle import render_readme
    from ModelSelectorLib.zoo.card import ModelCard

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert training_device("cpu") == "CPU, 2 torch threads"
    finally:
        torch.set_num_threads(threads)
    card = ModelCard(name="m", version="0.1.0", task_type="segmentation", modality="MR", body_region="HEAD",
                     labels=[{"value": 1, "name": "a", "color": [1.0, 0.0, 0.0]}], training_time_s=60.0,
                     training_device="CUDA: NVIDIA H200, peak GPU memory 812 MiB")  # fmt: skip
    assert "- Trained on: CUDA: NVIDIA H200, peak GPU memory 812 MiB" in render_readme(card.validate())
    assert "Trained on" not in render_readme(ModelCard.from_dict({**card.to_dict(), "training_device": None}))
    with pytest.raises(BundleError, match="training_device"):
        ModelCard.from_dict({**card.to_dict(), "training_device": 2}).validate()


# --- augmentation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("names", [["kidney_right", "kidney_left"], ["RightLung", "LeftLung"], ["Lung R", "Lung L"],
                                   ["Rt kidney", "Lt kidney"], ["L_kidney", "liver"]])  # fmt: skip
def test_a_label_with_a_side_is_never_mirrored_left_right_however_its_name_is_written(names):
    """TotalSegmentator and nnU-Net datasets write sides as kidney_left; a flip along x would swap the sides."""
    from ModelSelectorLib.training.augmentation import flip_axes
    from ModelSelectorLib.training.segmentation import TrainConfig

    cfg = TrainConfig(augment=True)
    assert flip_axes(cfg, names, 3) == (1, 2) and flip_axes(cfg, names, 2) == (1,)
    assert flip_axes(cfg, ["vertebrae_L1", "liver", "Lungs"], 3) == (0, 1, 2)  # a level, not a side


def test_test_time_mirroring_follows_the_training_flips():
    from ModelSelectorLib.training.augmentation import mirror_axes
    from ModelSelectorLib.training.segmentation import TrainConfig

    assert mirror_axes(TrainConfig(augment=True, tta_mirror=True), (1, 2), (16, 16, 8)) == [1, 2]
    assert (
        mirror_axes(TrainConfig(augment=False, tta_mirror=True), (0, 1, 2), (16, 16, 8)) == []
    )  # never flipped


@pytest.mark.parametrize("roi", [(16, 16, 8), (16, 16, 1)])
def test_nnunet_augmentation_keeps_shape_and_sides(roi):
    from monai.utils import set_determinism

    from ModelSelectorLib.training.augmentation import flip_axes, train_transforms
    from ModelSelectorLib.training.segmentation import TrainConfig

    cfg = TrainConfig(roi_size=roi, augment=True, augment_preset="nnunet", num_samples=4)
    flips = flip_axes(cfg, ["Right kidney", "Left kidney"], 3)
    set_determinism(seed=0)
    transform = train_transforms(cfg, roi, 3, flips, (1.0, 1.0, 1.0))
    label = np.zeros((1, 24, 24, 10), np.uint8)
    label[0, 2:10, 4:20, 2:8] = 1  # low x (the patient's right in RAS) holds label 1
    label[0, 14:22, 4:20, 2:8] = 2
    item = {"image": np.random.default_rng(0).random((1, 24, 24, 10)).astype(np.float32), "label": label}
    for _ in range(8):
        for patch in transform(item):
            assert tuple(patch["image"].shape[1:]) == roi
            lab = np.asarray(patch["label"])[0]
            x1, x2 = np.nonzero(lab == 1)[0], np.nonzero(lab == 2)[0]
            if len(x1) and len(x2):
                assert x1.mean() < x2.mean()
    set_determinism(seed=None)


def test_thin_slab_patches_keep_their_slices_whole():
    from monai.utils import set_determinism

    from ModelSelectorLib.training.augmentation import train_transforms
    from ModelSelectorLib.training.segmentation import TrainConfig

    roi = (16, 16, 3)
    cfg = TrainConfig(roi_size=roi, augment=True, augment_preset="nnunet", num_samples=4)
    set_determinism(seed=0)
    transform = train_transforms(cfg, roi, 3, (0, 1, 2), (2.0, 2.0, 1.0))
    label = np.broadcast_to(np.arange(1, 11, dtype=np.uint8), (1, 24, 24, 10)).copy()  # slice k holds k + 1
    item = {"image": np.random.default_rng(0).random((1, 24, 24, 10)).astype(np.float32), "label": label}
    rotated = 0
    for _ in range(10):
        for patch in transform(item):
            lab = np.asarray(patch["label"])[0]
            # rotated and scaled in-plane only: each slice stays one source slice, and the slices stay neighbours
            values = [set(np.unique(lab[..., k]).tolist()) - {0} for k in range(3)]
            assert all(len(v) == 1 for v in values), values
            steps = np.diff([v.pop() for v in values])
            assert set(steps.tolist()) in ({1}, {-1})
            rotated += int((lab == 0).any())  # zero padding shows where a patch was rotated
    assert rotated > 0
    set_determinism(seed=None)


def test_slab_network_sees_neighbouring_slices_in_its_finest_level_only():
    from ModelSelectorLib.errors import TrainingError
    from ModelSelectorLib.training.networks import build_network, network_def

    torch.manual_seed(0)
    slab = _tiny(channels=(4, 8, 16), roi_size=(32, 32, 3), slab_levels=1)
    net_def = network_def(slab, 3, 2, (32, 32, 3), (2.0, 2.0, 1.0))
    assert net_def["kernel_size"] == [[3, 3, 3], [3, 3, 1], [3, 3, 1]]
    assert all(s[2] == 1 for s in net_def["strides"])  # planned as its slices: pooled in-plane only
    flat = network_def(_tiny(channels=(4, 8, 16), roi_size=(32, 32, 1)), 3, 2, (32, 32, 1), (2.0, 2.0, 1.0))
    assert flat["strides"] == net_def["strides"] and all(k[2] == 1 for k in flat["kernel_size"])

    def reach(nd):  # does changing slice 0 change the output on slice 1?
        net = build_network(nd).eval()
        x = torch.randn(1, 1, 32, 32, 3)
        y = x.clone()
        y[..., 0] += 1.0
        with torch.inference_mode():
            return not torch.allclose(net(x)[..., 1], net(y)[..., 1])

    assert reach(net_def) and not reach(flat)
    assert slab.fingerprint() != _tiny(channels=(4, 8, 16), roi_size=(32, 32, 3)).fingerprint()
    for bad in ({"roi_size": (32, 32, 1)}, {"roi_size": (32, 32, 8)}, {"slab_levels": 4},
                {"architecture": "unet", "roi_size": (32, 32, 4)}):  # fmt: skip
        with pytest.raises(TrainingError, match="slab_levels"):
            _tiny(**{"channels": (4, 8, 16), "roi_size": (32, 32, 3), "slab_levels": 1, **bad})


# --- resumable training and a fold ----------------------------------------------------------------------
class _CancelAfter:
    """Event-like: set after ``n`` checks."""

    def __init__(self, n: int) -> None:
        self.n = n

    def is_set(self) -> bool:
        self.n -= 1
        return self.n < 0


def _tiny(**kw):
    from ModelSelectorLib.training.segmentation import TrainConfig

    base = dict(architecture="dynunet", channels=(4, 8, 16), roi_size=(16, 16, 16), target_spacing=(2.0, 2.0, 3.0),
                epochs=2, steps_per_epoch=2, batch_size=1, num_samples=2, augment_preset="nnunet",
                optimizer="sgd", lr=0.01, lr_schedule="poly", keep="last", sw_mode="gaussian", sw_overlap=0.5,
                tta_mirror=True, postprocess="auto", seed=0)  # fmt: skip
    return TrainConfig(**{**base, **kw}).check()


def _fit_once(msd, work, cancel=None, net=None, **kw):
    from monai.utils import set_determinism

    from ModelSelectorLib.datasets import load_msd
    from ModelSelectorLib.training.fitting import fit
    from ModelSelectorLib.training.segmentation import build_network, prepare_run

    cfg = _tiny(**kw)
    run = prepare_run(load_msd(msd), [0, 1], [2], cfg)
    set_determinism(seed=0)
    net = build_network(run.net_def) if net is None else net
    return fit(net, run.train_items, run.val_items, cfg, run.n_classes, run.plan.roi_size, cancel, run.flips,
               run.plan.spacing, work, net_def=run.net_def)  # fmt: skip


def test_interrupted_training_resumes_exactly(tmp_path):
    from ModelSelectorLib.datasets import make_synthetic_msd
    from ModelSelectorLib.errors import Cancelled
    from ModelSelectorLib.training.config import CHECKPOINT_FILE

    torch.set_num_threads(1)
    msd = make_synthetic_msd(tmp_path / "msd", n_cases=3, profile="mr", seed=0)
    whole = _fit_once(msd, tmp_path / "a")
    with pytest.raises(Cancelled):
        _fit_once(msd, tmp_path / "b", _CancelAfter(3))  # stops in the second epoch
    assert (tmp_path / "b" / CHECKPOINT_FILE).is_file()
    resumed = _fit_once(msd, tmp_path / "b")
    assert resumed.resumed_from == 1 and len(resumed.history) == 2
    for key, value in whole.state.items():
        assert torch.equal(value, resumed.state[key]), key
    again = _fit_once(msd, tmp_path / "b")  # finished: nothing left to train
    assert again.resumed_from == 2 and again.seconds >= resumed.seconds


def test_a_run_measures_its_own_peak_memory_not_an_earlier_runs(tmp_path):
    """Folds and the final model train in one process: each run's peak must exclude what ran before it, and a
    run resumed at its end keeps the peak it measured when it trained."""
    from ModelSelectorLib.datasets import make_synthetic_msd
    from ModelSelectorLib.training.fitting import peak_memory_mb, reset_peak_memory, run_peak_memory_mb

    if not reset_peak_memory():
        pytest.skip("this platform cannot reset a process's peak memory")
    torch.set_num_threads(1)
    msd = make_synthetic_msd(tmp_path / "msd", n_cases=3, profile="mr", seed=0)
    first = _fit_once(msd, tmp_path / "run")
    ballast = np.ones(600 * 2**20 // 8)  # an earlier run's 600 MiB, freed before the next run
    del ballast
    assert peak_memory_mb() > first.peak_memory_mb + 500
    second = _fit_once(msd, tmp_path / "other")
    assert 0 < second.peak_memory_mb < first.peak_memory_mb + 300
    ballast = np.ones(600 * 2**20 // 8)
    del ballast
    again = _fit_once(msd, tmp_path / "run")  # finished: nothing trains, nothing is measured
    assert again.resumed_from == len(again.history)
    assert again.peak_memory_mb == first.peak_memory_mb == run_peak_memory_mb(again)
    assert run_peak_memory_mb(second) >= second.peak_memory_mb


def test_3d_networks_train_channels_last_and_hand_back_contiguous_weights(tmp_path):
    from ModelSelectorLib.datasets import load_msd, make_synthetic_msd
    from ModelSelectorLib.errors import Cancelled
    from ModelSelectorLib.training.fitting import training_memory_format
    from ModelSelectorLib.training.segmentation import build_network, prepare_run

    assert training_memory_format(3, "cpu") == torch.channels_last_3d
    assert training_memory_format(2, "cpu") == training_memory_format(3, "cuda") == torch.contiguous_format
    torch.set_num_threads(1)
    msd = make_synthetic_msd(tmp_path / "msd", n_cases=3, profile="mr", seed=0)
    net = build_network(prepare_run(load_msd(msd), [0, 1], [2], _tiny()).net_def)
    layouts = []  # whether the training batches reach the convolutions channels-last (one channel: either)

    def record(module, args):
        if module.training and args[0].shape[1] > 1:
            layouts.append(args[0].is_contiguous(memory_format=torch.channels_last_3d))

    for m in net.modules():
        if isinstance(m, torch.nn.Conv3d):
            m.register_forward_pre_hook(record)
    res = _fit_once(msd, tmp_path / "a", net=net)
    assert layouts and all(layouts)
    assert all(v.is_contiguous() for v in res.state.values())
    assert all(p.is_contiguous() for p in net.parameters())  # the network is handed back as it came

    def storages(state):  # DynUNet lists its blocks twice: the saved weights must keep one copy of each
        return {v.untyped_storage().data_ptr() for v in state.values()}

    assert len(storages(res.state)) == len(storages(net.state_dict())) < len(res.state)

    layouts.clear()
    with pytest.raises(Cancelled):  # a cancelled run, too, hands the network back as it came
        _fit_once(msd, tmp_path / "b", _CancelAfter(1), net=net)
    assert layouts and all(layouts)  # it was channels-last when the cancel came
    assert all(p.is_contiguous() for p in net.parameters())


def test_slice_twin_computes_what_the_slice_wise_network_computes():
    from ModelSelectorLib.training.networks import build_network, network_def
    from ModelSelectorLib.training.slice_twin import slice_twin, slice_twin_def

    torch.manual_seed(0)
    cfg = _tiny(channels=(4, 8, 16, 32), roi_size=(32, 32, 1))
    net_def = network_def(cfg, 3, 3, (32, 32, 1), (1.0, 1.0, 5.0))
    net = build_network(net_def).eval()
    twin = slice_twin(net, net_def, (32, 32, 1)).eval()
    assert twin.net.input_block.conv1.conv.weight.ndim == 4  # a 2D network
    x = torch.randn(3, 1, 32, 32, 1)
    with torch.inference_mode():
        assert torch.allclose(net(x), twin(x), atol=1e-5)
    # no twin where the 3D network looks across slices or the patch is thicker than one slice
    assert slice_twin_def(net_def, (32, 32, 4)) is None
    thick = network_def(cfg, 3, 3, (32, 32, 8), (1.0, 1.0, 1.0))
    assert (
        slice_twin_def(thick, (32, 32, 1)) is None
        and slice_twin_def({**net_def, "_target_": "x.UNet"}, (32, 32, 1)) is None
    )


def test_slice_wise_training_runs_on_the_twin_and_resumes_exactly(tmp_path):
    from ModelSelectorLib.datasets import make_synthetic_msd
    from ModelSelectorLib.errors import Cancelled
    from ModelSelectorLib.training.config import CHECKPOINT_FILE
    from ModelSelectorLib.training.fitting import load_checkpoint

    torch.set_num_threads(1)
    msd = make_synthetic_msd(tmp_path / "msd", n_cases=3, profile="mr", seed=0)
    kw = dict(channels=(4, 8, 16), roi_size=(32, 32, 1), num_samples=3)
    whole = _fit_once(msd, tmp_path / "a", **kw)
    # the checkpoint holds the twin's 2D weights under a fingerprint of its own
    ckpt = torch.load(tmp_path / "a" / CHECKPOINT_FILE, weights_only=True)
    assert (
        ckpt["fingerprint"].endswith(":slice-twin")
        and ckpt["model"]["net.input_block.conv1.conv.weight"].ndim == 4
    )
    assert load_checkpoint(tmp_path / "a" / CHECKPOINT_FILE, ckpt["fingerprint"].split(":")[0]) is None
    # the weights come back in the 3D network's shapes, and that network now holds them
    from ModelSelectorLib.datasets import load_msd
    from ModelSelectorLib.training.segmentation import build_network, prepare_run

    run = prepare_run(load_msd(msd), [0, 1], [2], _tiny(**kw))
    net = build_network(run.net_def)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    again = _fit_once(msd, tmp_path / "c", net=net, **kw)
    assert {k: v.shape for k, v in again.state.items()} == {k: v.shape for k, v in start.items()}
    assert all(torch.equal(again.state[k], v) for k, v in net.state_dict().items())
    assert any(not torch.equal(start[k], v) for k, v in net.state_dict().items())  # it trained
    with pytest.raises(Cancelled):
        _fit_once(msd, tmp_path / "b", _CancelAfter(3), **kw)
    resumed = _fit_once(msd, tmp_path / "b", **kw)
    assert resumed.resumed_from == 1
    for key, value in whole.state.items():
        assert torch.equal(value, resumed.state[key]), key


def test_bfloat16_forward_pass_trains_float32_weights(tmp_path):
    from monai.utils import set_determinism

    from ModelSelectorLib.datasets import load_msd, make_synthetic_msd
    from ModelSelectorLib.errors import TrainingError
    from ModelSelectorLib.training.segmentation import build_network, prepare_run

    torch.set_num_threads(1)
    msd = make_synthetic_msd(tmp_path / "msd", n_cases=3, profile="mr", seed=0)
    run = prepare_run(load_msd(msd), [0, 1], [2], _tiny(precision="bf16"))
    set_determinism(seed=0)
    net = build_network(run.net_def)
    seen = []
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))
    conv.register_forward_hook(lambda module, args, out: seen.append((module.training, out.dtype)))
    bf16 = _fit_once(msd, tmp_path / "bf16", net=net, precision="bf16")
    # training steps convolve in bfloat16, validation in float32; the weights stay float32
    assert {dtype for training, dtype in seen if training} == {torch.bfloat16}
    assert {dtype for training, dtype in seen if not training} == {torch.float32}
    assert {v.dtype for v in bf16.state.values() if v.is_floating_point()} == {torch.float32}
    fp32 = _fit_once(msd, tmp_path / "fp32")
    assert bf16.state.keys() == fp32.state.keys()
    assert any(not torch.equal(fp32.state[k], v) for k, v in bf16.state.items())
    # a bf16 run resumes only bf16 checkpoints; float32 runs keep the fingerprint they had before the setting
    assert _tiny(precision="bf16").fingerprint() != _tiny().fingerprint() == "3b8aec995efa1c36"
    with pytest.raises(TrainingError, match="precision 'fp16' is unknown"):
        _tiny(precision="fp16")


def test_a_finished_run_is_evaluated_again_not_trained_again_for_other_evaluation_settings(tmp_path):
    """Test-time mirroring and largest-component post-processing act only after training: a finished run given
    other values resumes at its end (its weights unchanged) instead of training from scratch, and runs of the
    defaults keep the fingerprints they had."""
    from ModelSelectorLib.datasets import make_synthetic_msd

    plain = _tiny(tta_mirror=False, postprocess="none")
    assert _tiny().fingerprint() == plain.fingerprint() == "3b8aec995efa1c36"
    assert _tiny(sw_overlap=0.25).fingerprint() != plain.fingerprint()  # it decides which epoch is kept
    torch.set_num_threads(1)
    msd = make_synthetic_msd(tmp_path / "msd", n_cases=3, profile="mr", seed=0)
    first = _fit_once(msd, tmp_path / "run", tta_mirror=False, postprocess="none")
    again = _fit_once(msd, tmp_path / "run", tta_mirror=True, postprocess="lcc")
    assert again.resumed_from == len(again.history) == 2
    assert all(torch.equal(value, again.state[key]) for key, value in first.state.items())


def test_train_fold_reports_per_case_figures(tmp_path):
    import SimpleITK as sitk

    from ModelSelectorLib.datasets import make_synthetic_msd
    from ModelSelectorLib.training.crossval import kfold_split, train_fold

    torch.set_num_threads(1)
    msd = make_synthetic_msd(tmp_path / "msd", n_cases=4, profile="mr", seed=0)
    groups, config = ["p0", "p0", "p1", "p1"], _tiny(roi_size=None, max_patch_voxels=16**3)
    # the box only in the training cases: the fold cannot measure it (it would count 1 or 0 by false positives)
    for i in kfold_split(4, 2, 1, config.seed, groups)[1]:
        path = str(msd / "labelsTr" / f"case_{i:03d}.nii.gz")
        label = sitk.ReadImage(path)
        sitk.WriteImage(sitk.Mask(label, label != 2), path)
    result = train_fold(msd, 2, 1, config, tmp_path / "fold1", groups=groups)
    assert result["not_measured"] == ["box"] and not any("box" in k for k in result["summary"])
    assert result["summary"]["dice"] == result["summary"]["dice_sphere"]
    assert len(result["val_cases"]) == 2 and len(result["per_case"]) == 2
    assert set(result["train_cases"]).isdisjoint(result["val_cases"])
    assert result["inference"]["sw_mode"] == "gaussian" and result["inference"]["mirror_axes"] == [0, 1, 2]
    assert {"dice", "dice_sphere", "dice_sphere_std", "hd95", "cases"} <= set(result["summary"])
    assert result["peak_memory_mb"] > 0 and result["training_time_s"] > 0
    saved = json.loads((tmp_path / "fold1" / "result.json").read_text())
    assert saved["summary"] == result["summary"]


def test_a_work_folder_of_other_settings_is_said_to_start_afresh(tmp_path, capsys):
    """A checkpoint of other settings cannot be resumed; the run that replaces it says so rather than silently.
    Loader workers draw their own augmentations, so they are part of the settings a run resumes with."""
    from ModelSelectorLib.training.fitting import _resume

    path = tmp_path / "checkpoint.pt"
    torch.save({"fingerprint": _tiny().fingerprint()}, path)
    assert _resume(path, _tiny(lr=0.02).fingerprint(), None, None, None) is None
    assert f"{path} holds a run of other settings; training starts afresh" in capsys.readouterr().err
    assert _tiny(num_workers=2).fingerprint() != _tiny().fingerprint() == _tiny(num_workers=0).fingerprint()
