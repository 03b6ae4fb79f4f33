"""Case ids: the names a dataset lists, whatever its files link to (a git-annex or DVC store names its files by
their content) and whatever suffix its label files carry; the promotion gate's training-case guard, which compares
a test split's ids with those a model records; and a promoted card's validation and test figures."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ModelSelectorLib.datasets.msd import case_id_of, load_msd


def _write_volume(path: Path, value: int) -> None:
    """A small 3D NIfTI volume (a box of ``value`` on 0), written with SimpleITK."""
    import SimpleITK as sitk

    arr = np.zeros((6, 8, 8), np.uint8)
    arr[2:4, 2:6, 2:6] = value
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 2.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def _dataset_json(folder: Path, training: list[dict[str, str]]) -> Path:
    (folder / "dataset.json").write_text(json.dumps({
        "name": "Boxes", "modality": {"0": "MR"}, "labels": {"0": "background", "1": "box"}, "body_region": "HEAD",
        "numTraining": len(training), "training": training,
    }), encoding="utf-8")  # fmt: skip
    return folder


def _stored(store: Path, source: Path) -> Path:
    """``source`` moved into ``store`` under a name made of its content, as git-annex names its files."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    blob = store / f"SHA256E-s{source.stat().st_size}--{digest}.nii.gz"
    store.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), blob)
    return blob


def _link_into_store(folder: Path, store: Path, target_name=None) -> None:
    """Replace every file of ``folder``'s ``imagesTr``/``labelsTr`` by a relative symbolic link into ``store``:
    to a file named by its content, or to ``target_name(part, name)``."""
    for part in ("imagesTr", "labelsTr"):
        for path in sorted((folder / part).glob("*.nii.gz")):
            if target_name is None:
                blob = _stored(store, path)
            else:
                blob = store / target_name(part, path.name)
                store.mkdir(parents=True, exist_ok=True)
                shutil.move(str(path), blob)
            path.symlink_to(os.path.relpath(blob, path.parent))


def _msd_folder(folder: Path, names: list[str]) -> Path:
    for i, name in enumerate(names):
        _write_volume(folder / "imagesTr" / f"{name}.nii.gz", 50 + i)
        _write_volume(folder / "labelsTr" / f"{name}.nii.gz", 1)
    return _dataset_json(folder, [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"}
                                  for n in names])  # fmt: skip


# --- ids from the names a dataset lists -------------------------------------------------------------------
def test_an_msd_folder_keeps_its_case_ids(tmp_path):
    """The ids the starter zoo's cards record (``hippocampus_001``) are an MSD folder's file names."""
    names = ["hippocampus_001", "hippocampus_004"]
    ds = load_msd(_msd_folder(tmp_path / "msd", names))
    assert [case_id_of(c) for c in ds.training] == names


@pytest.mark.parametrize("store_names", ["content", "pairs"])
def test_a_folder_linked_into_a_data_store_gives_the_ids_it_lists(tmp_path, store_names):
    """imagesTr/ and labelsTr/ hold symbolic links to files of other names (git-annex, DVC: ``SHA256E-...``; or a
    store of ``NAME.nii.gz`` + ``NAME_label.nii.gz`` files): the ids and paths are the dataset's own names."""
    names = ["hippocampus_001", "hippocampus_004", "hippocampus_006"]
    folder = _msd_folder(tmp_path / "linked", names)
    renamed = None if store_names == "content" else (
        lambda part, name: name if part == "imagesTr" else name.replace(".nii.gz", "_label.nii.gz")
    )  # fmt: skip
    _link_into_store(folder, tmp_path / "store", renamed)
    ds = load_msd(folder)
    assert [case_id_of(c) for c in ds.training] == names
    for case in ds.training:  # the dataset's own paths, which still read as files
        assert case["image"].parent == folder.absolute() / "imagesTr" and case["image"].is_symlink()
        assert case["label"].parent == folder.absolute() / "labelsTr" and case["label"].is_file()


@pytest.mark.parametrize("suffix", ["_label", "_seg"])
def test_a_folder_of_image_and_label_pairs_gives_the_image_names(tmp_path, suffix):
    """``NAME.nii.gz`` beside ``NAME_label.nii.gz``, listed in the dataset.json that the error for a folder
    without one suggests: the id is ``NAME``."""
    names = ["case_a", "case_b"]
    folder = tmp_path / "pairs"
    for i, name in enumerate(names):
        _write_volume(folder / f"{name}.nii.gz", 60 + i)
        _write_volume(folder / f"{name}{suffix}.nii.gz", 1)
    _dataset_json(folder, [{"image": f"./{n}.nii.gz", "label": f"./{n}{suffix}.nii.gz"} for n in names])
    assert [case_id_of(c) for c in load_msd(folder).training] == names


def test_an_nnunet_folder_gives_the_label_names(tmp_path):
    """nnU-Net v2 names a case's image ``CASE_0000`` beside its label ``CASE``: the id stays ``CASE``; a label
    that is not the image's name plus a label suffix keeps its own name."""
    folder = tmp_path / "nnunet"
    for name in ("spleen_1", "spleen_12"):
        _write_volume(folder / "imagesTr" / f"{name}_0000.nii.gz", 70)
        _write_volume(folder / "labelsTr" / f"{name}.nii.gz", 1)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "spleen": 1}, "numTraining": 2,
        "file_ending": ".nii.gz",
    }), encoding="utf-8")  # fmt: skip
    assert [case_id_of(c) for c in load_msd(folder).training] == ["spleen_1", "spleen_12"]
    assert case_id_of({"image": "imagesTr/img_007.nii.gz", "label": "labelsTr/seg_007.nii.gz"}) == "seg_007"
    assert case_id_of({"image": "images/JPCLN001.png"}) == "JPCLN001"


# --- the promotion gate's training-case guard -------------------------------------------------------------
@pytest.fixture(scope="module")
def promoted(tmp_path_factory):
    """A fixed split of 10 disk cases (5 test) and two bundles trained on the rest (a starved one, then a
    well-trained one), promoted in turn into a zoo: ``{"root", "msd", "split", "train", "bad", "good", "zoo",
    "result"}``."""
    pytest.importorskip("monai")
    import torch
    from ranking_helpers import TINY, make_disk_msd

    from ModelSelectorLib.ranking.promotion import promote
    from ModelSelectorLib.ranking.sweep import make_split
    from ModelSelectorLib.training.segmentation import TrainConfig, train_segmentation

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("ids")
    msd = make_disk_msd(root / "msd", n_cases=10)
    train_dir, _, split = make_split(msd, root / "split", test_fraction=0.5, seed=1, selection_fraction=0.1)
    bad = train_segmentation(
        train_dir, "bad", root / "cands", TrainConfig.from_dict({**TINY, "epochs": 1, "lr": 1e-5})
    )
    good = train_segmentation(train_dir, "good", root / "cands",
                              TrainConfig.from_dict({**TINY, "epochs": 8, "lr": 0.01}))  # fmt: skip
    zoo = root / "zoo"
    promote(zoo, "disks", bad, split)
    result = promote(zoo, "disks", good, split)
    return {"root": root, "msd": msd, "split": split, "train": train_dir, "bad": bad, "good": good, "zoo": zoo,
            "result": result}  # fmt: skip


def test_a_test_split_drawn_from_a_linked_folder_of_training_cases_is_refused(promoted, tmp_path):
    """A candidate's training cases, in a folder whose files link into a store named by content: a test split
    drawn there names the cases by the ids the candidate records, and the gate refuses it (it accepted such a
    model on its own training cases when the ids were the store's names)."""
    from ModelSelectorLib.errors import DatasetError
    from ModelSelectorLib.ranking.promotion import promote, seen_case_ids
    from ModelSelectorLib.ranking.sweep import make_split, read_split

    trained = json.loads((promoted["train"] / "dataset.json").read_text(encoding="utf-8"))
    linked = tmp_path / "linked"
    for part in ("imagesTr", "labelsTr"):
        (linked / part).mkdir(parents=True)
    for case in trained["training"]:
        for key, part in (("image", "imagesTr"), ("label", "labelsTr")):
            shutil.copy(case[key], linked / part / Path(case[key]).name)
    _link_into_store(linked, tmp_path / "store")
    (linked / "dataset.json").write_text(json.dumps({**trained, "training": [
        {"image": f"./imagesTr/{Path(c['image']).name}", "label": f"./labelsTr/{Path(c['label']).name}"}
        for c in trained["training"]]}), encoding="utf-8")  # fmt: skip
    _, _, split = make_split(linked, tmp_path / "sweep", test_fraction=0.5, seed=3, selection_fraction=0.2)
    ids = {c["id"] for c in read_split(split)["cases"]}
    assert ids and ids <= seen_case_ids(promoted["good"])
    zoo = tmp_path / "zoo"
    with pytest.raises(DatasetError, match=r"test case\(s\) were training or validation cases of"):
        promote(zoo, "disks", promoted["good"], split, dry_run=True)
    assert not zoo.exists()


def test_a_split_that_names_cases_by_their_label_files_is_refused_too(promoted, tmp_path):
    """A split written before ids stopped depending on label file names (``NAME_label``, or a store's name with
    the image's own name beside it) still counts as the cases a model records as ``NAME``."""
    from ModelSelectorLib.errors import DatasetError
    from ModelSelectorLib.ranking.promotion import promote, seen_case_ids

    seen = sorted(seen_case_ids(promoted["good"]))
    data = json.loads(promoted["split"].read_text(encoding="utf-8"))
    images = {Path(c["image"]).name.replace(".nii.gz", ""): c["image"] for c in json.loads(
        (promoted["msd"] / "dataset.json").read_text(encoding="utf-8"))["training"]}  # fmt: skip
    (tmp_path / "store").mkdir()
    for i, case in enumerate(data["cases"][:2]):  # the image a file of a store, named by content
        blob = tmp_path / "store" / f"SHA256E-s2--{i}.nii.gz"
        shutil.copy(promoted["msd"] / images[seen[i]], blob)
        case.update(id=f"{seen[i]}_label", image=str(blob))
    data["cases"][2]["id"] = f"SHA256E-s1--{seen[2]}"  # a store's name; the image is named as the case
    data["cases"][2]["image"] = str(promoted["msd"] / images[seen[2]])
    for cases, n in ((data["cases"][:2], 2), (data["cases"][2:3], 1)):
        split = tmp_path / f"split{n}.json"
        split.write_text(json.dumps({**data, "cases": cases}), encoding="utf-8")
        with pytest.raises(DatasetError, match=rf"{n} test case\(s\) were training or validation cases"):
            promote(tmp_path / "zoo", "disks", promoted["good"], split, dry_run=True)


# --- a promoted card's figures ----------------------------------------------------------------------------
def test_a_promoted_card_keeps_its_validation_figures_beside_the_gates_test_figures(promoted, capsys):
    """The promoted card records the gate's figures as test figures with their own case count, and keeps the
    candidate's validation figures and case count as they were; zoo show, zoo list and docs/README.md say
    both."""
    from ModelSelectorLib.cli import main
    from ModelSelectorLib.models import runtime_class
    from ModelSelectorLib.ranking.sweep import read_split
    from ModelSelectorLib.zoo import Zoo
    from ModelSelectorLib.zoo.bundle import validate_bundle

    result, zoo = promoted["result"], Zoo(promoted["zoo"])
    assert result["accepted"] and result["version"] == "0.1.1", result["report"]
    n_test = len(read_split(promoted["split"])["cases"])
    own = validate_bundle(promoted["good"]).validation_metrics
    card = zoo.card("disks")
    m = card.validation_metrics
    assert {k: m[k] for k in own} == own and own[
        "validation_cases"
    ] != n_test  # the candidate's, as they were
    assert m["test_n_cases"] == n_test and "promotion gate" in m["test_protocol"]
    assert m["test_dice"] == pytest.approx(result["candidate"]["dice"]) != m["dice"]
    assert {f"test_{k}" for k in result["candidate"]} <= set(m) and "held_out" not in m
    # the headline figure is the gate's, with its own case count and protocol
    h = runtime_class("segmentation").held_out(card)
    assert (h["value"], h["cases"], h["protocol"]) == (m["test_dice"], n_test, m["test_protocol"])
    assert "## Validation and test metrics" in (zoo.get("disks") / "docs" / "README.md").read_text(
        encoding="utf-8"
    )
    readme = (zoo.get("disks") / "docs" / "README.md").read_text(encoding="utf-8")
    assert (
        f"- validation_cases: {own['validation_cases']}" in readme and f"- test_n_cases: {n_test}" in readme
    )
    assert f"- dice: {own['dice']:.4f}" in readme and f"- test_dice: {m['test_dice']:.4f}" in readme
    for command in (["zoo", "show", "disks"], ["zoo", "list"]):
        assert main([*command, "--zoo", str(promoted["zoo"])]) == 0
        out = capsys.readouterr().out
        assert f"validation_cases={own['validation_cases']}" in out and f"test_n_cases={n_test}" in out
        assert f"test_dice={m['test_dice']:.3f}" in out and f"dice={own['dice']:.3f}" in out
