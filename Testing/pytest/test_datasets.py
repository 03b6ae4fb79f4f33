"""Tests of ModelSelectorLib.datasets: MSD folders, CSV manifests, synthetic cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ModelSelectorLib.datasets import load_manifest, load_msd, make_synthetic_case, make_synthetic_msd
from ModelSelectorLib.errors import DatasetError


def test_load_msd_reads_synthetic_dataset(tmp_path):
    root = make_synthetic_msd(tmp_path / "msd", n_cases=2, profile="mr", seed=3)
    ds = load_msd(root)
    assert ds.name == "SyntheticMR"
    assert ds.modality == {"0": "MRI"} and ds.modality_code == "MR"
    assert ds.labels == {0: "background", 1: "sphere", 2: "box"}
    assert len(ds.training) == 2
    assert all(c["image"].is_file() and c["label"].is_file() for c in ds.training)


def test_load_msd_names_missing_files(tmp_path):
    root = make_synthetic_msd(tmp_path / "msd", n_cases=2, profile="ct", seed=0)
    (root / "labelsTr" / "case_001.nii.gz").unlink()
    with pytest.raises(DatasetError, match="case_001.nii.gz"):
        load_msd(root)


def test_load_msd_rejects_folder_without_dataset_json(tmp_path):
    with pytest.raises(DatasetError, match="dataset.json"):
        load_msd(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {}}))
    with pytest.raises(DatasetError, match="modality"):
        load_msd(tmp_path)


def test_a_folder_of_image_label_pairs_gets_told_what_dataset_json_to_write(tmp_path):
    root = make_synthetic_msd(tmp_path / "msd", n_cases=2, profile="mr", seed=3)
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    for i, name in enumerate(("case_000.nii.gz", "case_001.nii.gz")):
        (pairs / f"patient{i}.nii.gz").write_bytes((root / "imagesTr" / name).read_bytes())
        (pairs / f"patient{i}_label.nii.gz").write_bytes((root / "labelsTr" / name).read_bytes())
    with pytest.raises(DatasetError, match=r"holds no dataset.json, but 2 image/label pair\(s\) such as "
                                           r"patient0.nii.gz with patient0_label.nii.gz; list them in a "
                                           r'dataset.json in MSD form, \{"name"'):  # fmt: skip
        load_msd(pairs)
    (root / "dataset.json").unlink()  # an MSD folder that lost its dataset.json
    with pytest.raises(DatasetError, match=r"but 2 image/label pair\(s\) such as imagesTr/case_000.nii.gz with "
                                           r"labelsTr/case_000.nii.gz; list them"):  # fmt: skip
        load_msd(root)
    for p in (root / "imagesTr").iterdir():  # nnU-Net's names of the input channel
        p.rename(p.with_name(p.name.replace(".nii.gz", "_0000.nii.gz")))
    with pytest.raises(
        DatasetError, match=r"such as imagesTr/case_000_0000.nii.gz with labelsTr/case_000.nii.gz"
    ):
        load_msd(root)


def _nnunet_folder(tmp_path, meta: dict) -> Path:
    """A synthetic MSD folder rewritten in nnU-Net v2's form: ``imagesTr/CASE_0000.nii.gz``,
    ``labelsTr/CASE.nii.gz`` and its ``dataset.json``."""
    msd = make_synthetic_msd(tmp_path / "msd", n_cases=3, profile="ct", seed=5, shape=(16, 24, 24))
    root = tmp_path / "Dataset042_Synth"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for p in sorted((msd / "imagesTr").glob("*.nii.gz")):
        case = p.name[: -len(".nii.gz")]
        (root / "imagesTr" / f"{case}_0000.nii.gz").write_bytes(p.read_bytes())
        (root / "labelsTr" / p.name).write_bytes((msd / "labelsTr" / p.name).read_bytes())
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    return root


NNUNET_META = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "sphere": 1, "box": 2},
               "numTraining": 3, "file_ending": ".nii.gz", "body_region": "ABDOMEN"}  # fmt: skip


def test_load_msd_reads_nnunet_v2_folders_in_msd_form(tmp_path):
    ds = load_msd(_nnunet_folder(tmp_path, NNUNET_META))
    assert ds.labels == {0: "background", 1: "sphere", 2: "box"} and ds.modality_code == "CT"
    assert [c["image"].name for c in ds.training] == [f"case_00{i}_0000.nii.gz" for i in range(3)]
    assert [c["label"].name for c in ds.training] == [f"case_00{i}.nii.gz" for i in range(3)]
    assert ds.name == "Dataset042_Synth" and ds.raw["body_region"] == "ABDOMEN"  # other keys are kept
    # what a command that writes the dataset back writes is MSD form, and reads back the same
    assert "channel_names" not in ds.raw and ds.raw["labels"] == {
        "0": "background",
        "1": "sphere",
        "2": "box",
    }
    (ds.root / "dataset.json").write_text(json.dumps(ds.raw), encoding="utf-8")
    again = load_msd(ds.root)
    assert again.labels == ds.labels and again.training == ds.training


def test_nnunet_forms_this_training_cannot_take_are_named(tmp_path):
    two = _nnunet_folder(tmp_path / "a", dict(NNUNET_META, channel_names={"0": "T2", "1": "ADC"}))
    with pytest.raises(DatasetError, match=r"lists 2 input channels \(T2, ADC\); training here takes one"):
        load_msd(two)
    regions = _nnunet_folder(tmp_path / "b", dict(NNUNET_META, labels={"background": 0, "whole": [1, 2]}))
    with pytest.raises(DatasetError, match=r"label 'whole' is a region of several values \[1, 2\]"):
        load_msd(regions)
    for i, bad in enumerate(({"background": 0, "sphere": "one"}, ["background", "sphere"])):
        broken = _nnunet_folder(tmp_path / f"d{i}", dict(NNUNET_META, labels=bad))
        with pytest.raises(DatasetError, match="not a readable nnU-Net v2 dataset.json"):
            load_msd(broken)
    listed = _nnunet_folder(tmp_path / "e", dict(NNUNET_META, dataset={"case_000": {"label": "x.nii.gz"}}))
    with pytest.raises(DatasetError, match=r"not a readable nnU-Net v2 dataset.json \(KeyError: 'images'\)"):
        load_msd(listed)
    gone = _nnunet_folder(tmp_path / "c", NNUNET_META)
    (gone / "imagesTr" / "case_001_0000.nii.gz").unlink()
    with pytest.raises(DatasetError, match="case_001_0000.nii.gz"):
        load_msd(gone)


def test_a_model_trains_from_an_nnunet_v2_folder(tmp_path):
    from ModelSelectorLib.training.segmentation import TrainConfig, train_segmentation
    from ModelSelectorLib.zoo import load_bundle

    root = _nnunet_folder(tmp_path, NNUNET_META)
    config = TrainConfig(channels=(4, 8), epochs=1, batch_size=1, num_samples=1, roi_size=(16, 16, 16),
                         val_fraction=0.34, augment=False, num_threads=2, seed=0)  # fmt: skip
    card = load_bundle(train_segmentation(root, "synth-nnunet", tmp_path / "zoo", config)).card
    assert card.modality == "CT" and card.body_region == "ABDOMEN"
    assert [lb["name"] for lb in card.labels] == ["sphere", "box"]


def test_load_manifest_keeps_columns_and_resolves_paths(tmp_path):
    csv_path = tmp_path / "sub" / "manifest.csv"
    csv_path.parent.mkdir()
    csv_path.write_text(
        "path,modality,body_region,ndim,labels,modality_code,region_code\n"
        'ct/a.nii.gz,CT,"abdomen, upper",3,none,CT,ABDOMEN;PELVIS\n'
        "mr/b.nii.gz,MR,brain,3,x,,\n"
        "/abs/c.png,DX,chest,2,y,DX,CHEST\n"
    )
    rows = load_manifest(csv_path)
    assert len(rows) == 3
    assert rows[0].path == (csv_path.parent / "ct" / "a.nii.gz").resolve()
    assert rows[0].body_region == "abdomen, upper" and rows[0].region_code == "ABDOMEN;PELVIS"
    assert rows[0]["ndim"] == "3" and rows[0].columns["labels"] == "none"
    assert rows[1].modality_code == "MR" and rows[1].region_code == ""
    assert str(rows[2].path) == "/abs/c.png"
    other = load_manifest(csv_path, root=tmp_path)
    assert other[0].path == (tmp_path / "ct" / "a.nii.gz").resolve()


def test_load_manifest_requires_columns(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("file,modality\nx,CT\n")
    with pytest.raises(DatasetError, match="path"):
        load_manifest(p)


def test_shared_manifest_parses_if_present():
    from pathlib import Path

    p = (
        Path(__file__).resolve().parents[3] / "shared" / "data" / "manifest.csv"
    )  # ../shared beside the checkout
    if not p.is_file():
        pytest.skip("shared data not available")
    rows = load_manifest(p)
    assert rows and all(r.path.is_absolute() for r in rows)
    assert {"CT", "MR"} <= {r.modality_code for r in rows}


@pytest.mark.parametrize("profile", ["ct", "mr"])
def test_synthetic_case_geometry_and_labels(profile):
    img, lab = make_synthetic_case(7, profile=profile, shape=(20, 28, 30), spacing=(1.1, 1.3, 3.0))
    assert img.array.shape == lab.array.shape == (20, 28, 30)
    assert img.spacing == lab.spacing == (1.1, 1.3, 3.0)
    d = np.asarray(img.direction).reshape(3, 3)
    assert not np.allclose(d, np.eye(3)) and np.allclose(d @ d.T, np.eye(3))
    assert np.any(np.asarray(img.origin) != 0)
    assert img.same_geometry(lab)
    counts = np.bincount(lab.array.ravel(), minlength=3)
    assert counts[1] > 50 and counts[2] > 50
    a = img.array
    m1, m2 = a[lab.array == 1].mean(), a[lab.array == 2].mean()
    body = a[(lab.array == 0) & (a > (-500 if profile == "ct" else 100))].mean()
    # each class has its own intensity, distinct from the surrounding tissue
    assert m1 > body + 100 and m2 < body - 80
    if profile == "ct":
        assert a.min() < -900  # air outside the body
    else:
        assert a.min() >= 0
    # same seed -> same case
    img2, lab2 = make_synthetic_case(7, profile=profile, shape=(20, 28, 30), spacing=(1.1, 1.3, 3.0))
    assert np.array_equal(img.array, img2.array) and np.array_equal(lab.array, lab2.array)


def test_synthetic_msd_round_trips_geometry(tmp_path):
    from ModelSelectorLib.io import read_image

    root = make_synthetic_msd(tmp_path / "msd", n_cases=1, profile="ct", seed=11)
    img, lab = make_synthetic_case(11, profile="ct")
    back = read_image(root / "imagesTr" / "case_000.nii.gz")
    assert back.same_geometry(img)
    assert np.allclose(back.array, img.array)


# --- label values and label geometry (datasets.labelmaps) ------------------------------------------------
def _relabelled_msd(
    tmp_path: Path, values: dict[int, int], declared: dict[str, str], n_cases: int = 2
) -> Path:
    """A small synthetic MSD folder whose label files hold ``values[v]`` where the synthetic label is ``v``."""
    return make_synthetic_msd(tmp_path / "msd", n_cases=n_cases, profile="ct", seed=3, shape=(10, 14, 14),
                              label_values=values, labels=declared)  # fmt: skip


@pytest.mark.parametrize(
    "values, declared",
    [
        ({1: 255, 2: 255}, {"0": "background", "255": "body"}),  # a 0/255 mask
        ({1: 1, 2: 5}, {"0": "background", "1": "sphere", "5": "box"}),
        ({1: 1, 2: 300}, {"0": "background", "1": "sphere", "300": "box"}),  # above uint8
    ],
)
def test_training_targets_are_consecutive_class_indices(tmp_path, values, declared):
    from ModelSelectorLib.training.segmentation import dataset_labels, load_cases

    dataset = load_msd(_relabelled_msd(tmp_path, values, declared))
    item = load_cases(dataset, [0], (2.0, 2.0, 3.0), {"mode": "ct"})[0]
    n_fg = len(declared) - 1
    assert sorted(np.unique(item["label"]).tolist()) == list(range(n_fg + 1))
    labels = dataset_labels(dataset)
    assert [lb["value"] for lb in labels] == list(range(1, n_fg + 1))
    assert [lb["name"] for lb in labels] == [declared[k] for k in sorted(declared, key=int) if k != "0"]


def test_a_label_value_dataset_json_does_not_declare_is_named(tmp_path):
    from ModelSelectorLib.training.segmentation import load_cases

    root = _relabelled_msd(tmp_path, {1: 1, 2: 2}, {"0": "background", "1": "sphere"})
    with pytest.raises(
        DatasetError, match=r"case_000\.nii\.gz: holds label value\(s\) 2 that dataset.json"
    ) as e:
        load_cases(load_msd(root), [0], (2.0, 2.0, 3.0), {"mode": "ct"})
    assert "\n" not in str(e.value)


def test_more_than_255_labels_are_refused():
    from ModelSelectorLib.datasets.labelmaps import class_indices

    assert class_indices({0: "bg", 255: "lungs"}) == {0: 0, 255: 1}
    assert len(class_indices({v: f"l{v}" for v in range(256)})) == 256
    with pytest.raises(DatasetError, match="declares 256 foreground labels; a model here has at most 255"):
        class_indices({v: f"l{v}" for v in range(257)})


def _flipped(label):
    from ModelSelectorLib.io import Image

    d = label.direction_matrix() @ np.diag([-1.0, -1.0, 1.0])
    return Image(label.array, label.spacing, label.origin, tuple(d.ravel()), dict(label.meta))


def _cropped(label):
    """``label`` stored on the smallest box around its foreground (as Slicer saves a .seg.nrrd): same physical labels."""
    from ModelSelectorLib.io import Image

    z, y, x = (np.flatnonzero(np.any(label.array, axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    lo = np.array([x[0], y[0], z[0]], float)
    sub = label.array[z[0] : z[-1] + 1, y[0] : y[-1] + 1, x[0] : x[-1] + 1]
    origin = label.ijk_to_lps() @ np.append(lo, 1.0)
    return Image(sub, label.spacing, tuple(origin[:3]), label.direction, dict(label.meta))


def test_a_label_on_another_grid_is_aligned_when_it_lands_on_the_image_and_refused_otherwise():
    from ModelSelectorLib.datasets.labelmaps import align_label

    image, label = make_synthetic_case(5, shape=(12, 20, 20))
    cropped = _cropped(label)
    assert cropped.size != image.size
    back = align_label(cropped, image, "crop.seg.nrrd")
    assert back.same_geometry(image) and np.array_equal(back.array, label.array)
    assert align_label(label, image, "same.nii.gz") is label
    with pytest.raises(DatasetError, match="flip.nii.gz: .* do not place it on the image") as e:
        align_label(_flipped(label), image, "flip.nii.gz")
    assert "\n" not in str(e.value)


def test_training_takes_a_cropped_label_and_refuses_a_flipped_one(tmp_path):
    from ModelSelectorLib.io import read_image, write_image
    from ModelSelectorLib.training.segmentation import load_cases

    root = make_synthetic_msd(tmp_path / "msd", n_cases=2, profile="ct", seed=3, shape=(10, 14, 14))
    dataset = load_msd(root)
    before = load_cases(dataset, [0, 1], (2.0, 2.0, 3.0), {"mode": "ct"})
    label0, label1 = (read_image(dataset.training[i]["label"], check_content=False) for i in (0, 1))
    write_image(_cropped(label0), dataset.training[0]["label"])
    after = load_cases(dataset, [0], (2.0, 2.0, 3.0), {"mode": "ct"})
    assert np.array_equal(after[0]["label"], before[0]["label"])
    write_image(_flipped(label1), dataset.training[1]["label"])
    with pytest.raises(DatasetError, match=r"case_001\.nii\.gz: .*origin/direction/spacing do not place it"):
        load_cases(dataset, [1], (2.0, 2.0, 3.0), {"mode": "ct"})


def test_evaluation_aligns_the_truth_as_training_does():
    from ModelSelectorLib.evaluation.segmentation import evaluate_segmentation

    _, label = make_synthetic_case(5, shape=(12, 20, 20))
    prediction = label.with_array(label.array.astype(np.uint8))
    res = evaluate_segmentation(prediction, _cropped(label), {1: "sphere", 2: "box"}, "crop.seg.nrrd")
    assert res["dice"] == pytest.approx(1.0)
    with pytest.raises(DatasetError, match="flip.nii.gz: .*do not place it on the image"):
        evaluate_segmentation(prediction, _flipped(label), {1: "sphere", 2: "box"}, "flip.nii.gz")


def test_a_dataset_mixing_2d_and_3d_cases_is_refused_before_planning(tmp_path):
    import SimpleITK as sitk

    from ModelSelectorLib.training.config import TrainConfig
    from ModelSelectorLib.training.planning import plan_training

    root = make_synthetic_msd(tmp_path / "msd", n_cases=3, profile="ct", seed=3, shape=(10, 14, 14))
    dataset = load_msd(root)
    for key in ("image", "label"):  # case 1 becomes its middle slice, a 2D image
        sitk.WriteImage(sitk.ReadImage(str(dataset.training[1][key]))[:, :, 5], str(dataset.training[1][key]))
    assert len(plan_training(dataset, [0, 2], TrainConfig()).spacing) == 3
    with pytest.raises(
        DatasetError, match=r"mixes 2D and 3D cases \(e.g. case_001.nii.gz is 2D, case_000.nii.gz 3D\)"
    ):
        plan_training(dataset, [0, 1, 2], TrainConfig())


def test_a_mask_saved_as_a_grey_rgb_picture_is_a_label_map_and_a_colour_one_is_refused():
    """A 0/255 mask saved as RGB(A) became a label of 3 channels for an image of one."""
    from ModelSelectorLib.datasets.labelmaps import as_label_map
    from ModelSelectorLib.io import Image

    mask = np.zeros((6, 8), np.uint8)
    mask[2:4, 3:6] = 255
    rgba = np.stack([mask, mask, mask, np.full_like(mask, 255)], axis=-1)
    label = as_label_map(Image(rgba, (0.5, 0.5), (1.0, 2.0), (1.0, 0.0, 0.0, 1.0)), "mask.png")
    np.testing.assert_array_equal(label.array, mask)
    assert label.spacing == (0.5, 0.5) and label.origin == (1.0, 2.0)
    rgba[..., 1] = 0
    with pytest.raises(DatasetError, match="mask.png: a colour picture, where a label map"):
        as_label_map(Image(rgba, (0.5, 0.5), (1.0, 2.0), (1.0, 0.0, 0.0, 1.0)), "mask.png")


def test_evaluation_never_scores_an_undeclared_truth_value_as_background():
    """A 0/1 mask among 0/255 ones was scored Dice 0 (its 1 taken for background) instead of being named."""
    from ModelSelectorLib.datasets.labelmaps import remap_values

    np.testing.assert_array_equal(remap_values(np.array([0, 255, 255]), {"255": 1}, "a.png"), [0, 1, 1])
    with pytest.raises(
        DatasetError, match=r"b\.png: holds label value\(s\) 1 that dataset.json does not declare"
    ):
        remap_values(np.array([0, 1, 1]), {"255": 1}, "b.png")


def test_a_2d_dataset_trained_with_the_default_patch_gets_a_2d_patch_planned(tmp_path):
    """The default roi_size is a volume's (64, 64, 32): 2D images without a config failed with "target_spacing
    and roi_size differ in dimension"; a roi_size the user gave of the wrong length names the remedy."""
    from ModelSelectorLib.errors import TrainingError
    from ModelSelectorLib.io import Image, write_image
    from ModelSelectorLib.training.config import TrainConfig
    from ModelSelectorLib.training.planning import plan_training

    for sub in ("imagesTr", "labelsTr"):
        (tmp_path / sub).mkdir()
    cases = []
    for i in range(3):
        picture = np.random.default_rng(i).normal(size=(80, 96)).astype(np.float32)
        write_image(
            Image(picture, (0.5, 0.5), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)), tmp_path / "imagesTr" / f"c{i}.nrrd"
        )
        mask = Image((picture > 1).astype(np.uint8), (0.5, 0.5), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
        write_image(mask, tmp_path / "labelsTr" / f"c{i}.nrrd")
        cases.append({"image": f"./imagesTr/c{i}.nrrd", "label": f"./labelsTr/c{i}.nrrd"})
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "pics", "modality": {"0": "DX"}, "labels": {
        "0": "background", "1": "spot"}, "training": cases, "numTraining": 3}))  # fmt: skip
    dataset = load_msd(tmp_path)
    plan = plan_training(dataset, [0, 1, 2], TrainConfig())
    assert len(plan.roi_size) == 2 and len(plan.spacing) == 2
    with pytest.raises(
        TrainingError, match=r"roi_size \(32, 32, 8\) has 3 values for 2D images; give 2 values"
    ):
        plan_training(dataset, [0, 1, 2], TrainConfig(roi_size=(32, 32, 8)))
