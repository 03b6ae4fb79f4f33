"""The selection protocol's split: sources and patients from file names, near-duplicates (also flipped or
turned), whole held-out sources, groups never split, the split file round trip."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from ModelSelectorLib.errors import DatasetError, InputError
from ModelSelectorLib.evaluation.selection_split import (
    Item,
    ProtocolSplit,
    assign_splits,
    catalogue,
    fingerprint,
    make_split,
    near_duplicates,
    patient_of,
    source_of,
)
from ModelSelectorLib.io import Image, write_image


def test_sources_and_patients_from_the_shared_data_layout():
    assert source_of("radiology_2d/pediatric_cxr/test_NORMAL_IM-0359-0001.png") == "kermany"
    assert (
        source_of("cxr_unlabelled/kermany_normal_IM-0129-0001.png") == "kermany"
    )  # same dataset, two folders
    assert source_of("cxr_unlabelled/shenzhen_CHNCXR_0001_0.png") == "shenzhen"
    assert source_of("cxr_landmarks/CHNCXR_0002_0.png") == "shenzhen"
    assert source_of("cxr_landmarks/JPCLN001.png") == "jsrt"
    assert source_of("radiology_2d/covid_ct/x.png") == "covid_ct"
    assert source_of("acdc_cardiac_mr/patient001_frame01.nii.gz") == "acdc_cardiac_mr"
    assert source_of("top.png") == "data"
    assert patient_of("acdc_cardiac_mr", "acdc_cardiac_mr/patient001_frame12.nii.gz") == "patient001"
    assert patient_of("kermany", "x/test_NORMAL_IM-0359-0001.png") == "im-0359"
    assert patient_of("covid_ct", "x/CT_COVID_2020.02.10.20021584-p6-52_15.png") == "2020.02.10.20021584"
    assert patient_of("knee_kl_xray", "x/ClaheDataset224_test_0_9137709L.png") == "9137709"
    assert patient_of("mini_mias", "x/data_pgm_mdb001.png") == patient_of(
        "mini_mias", "x/data_pgm_mdb002.png"
    )
    assert patient_of("mini_mias", "x/data_pgm_mdb002.png") != patient_of(
        "mini_mias", "x/data_pgm_mdb003.png"
    )
    assert patient_of("busi_us", "x/benign_12.png") == "benign_12"  # no subject id: the file


def test_near_duplicates_found_also_when_flipped_or_turned():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(80, 70)).cumsum(axis=0).cumsum(axis=1)  # a smooth random picture
    b = rng.normal(size=(80, 70)).cumsum(axis=0).cumsum(axis=1)
    fps = np.stack(
        [fingerprint(x) for x in (a, np.fliplr(a) * 3 + 10, np.rot90(a), b, a + rng.normal(0, 1e-3, a.shape))]
    )
    pairs = {(i, j) for i, j, _ in near_duplicates(fps)}
    assert pairs == {(0, 1), (0, 2), (1, 2), (0, 4), (1, 4), (2, 4)}
    assert {(i, j) for i, j, _ in near_duplicates(fps, dihedral=False)} == {(0, 4)}
    vol = np.stack([a] * 5)
    np.testing.assert_allclose(
        fingerprint(vol) @ fingerprint(a), 1.0, atol=1e-5
    )  # a volume: its middle slice
    rgb = np.stack([a, a, a], axis=-1)
    np.testing.assert_allclose(fingerprint(rgb) @ fingerprint(a), 1.0, atol=1e-5)


def _items(n_per_source: dict) -> list[Item]:
    out = []
    for src, n in n_per_source.items():
        out += [Item(f"{src}/p{i}.png", "DX", ("CHEST",), src, f"p{i // 2}", 2) for i in range(n)]
    return out


def test_assignment_keeps_groups_and_holds_out_sources():
    items = _items({"a": 40, "b": 20, "c": 6, "d": 4})
    dups = [(0, 45, 0.99)]  # a/p0 and b/p5 are near-duplicates
    splits, groups = assign_splits(items, dups, held_out={"c": "test", "d": "dev"}, seed=1)
    assert all(s == "test" for it, s in zip(items, splits) if it.source == "c")
    assert all(s == "dev" for it, s in zip(items, splits) if it.source == "d")
    assert splits[0] == splits[45] and groups[0] == groups[45]
    for g in set(groups):  # a patient (two files each here) is never split
        assert len({s for s, h in zip(splits, groups) if h == g}) == 1
    a = [s for it, s in zip(items, splits) if it.source == "a"]
    assert a.count("train") > a.count("dev") > 0 and a.count("test") > 0
    assert assign_splits(items, dups, held_out={"c": "test", "d": "dev"}, seed=1)[0] == splits  # seeded
    few = _items({"e": 6})  # 3 patients: too few to split, all in training
    assert set(assign_splits(few, held_out={})[0]) == {"train"}


def test_held_out_group_pulls_in_its_near_duplicates():
    items = _items({"a": 20, "kept": 4})
    splits, _ = assign_splits(items, [(3, 21, 0.995)], held_out={"kept": "test"})
    assert splits[3] == "test" and splits[2] == "test"  # the near-duplicate and its patient's other file


def _data(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "radiology_2d" / "xr").mkdir(parents=True)
    rows = []
    pics = [rng.normal(size=(40, 40)).cumsum(0).cumsum(1) for _ in range(12)]
    pics.append(np.flipud(pics[0]))  # a flipped copy under another name
    for i, a in enumerate(pics):
        a8 = np.round(255 * (a - a.min()) / (a.max() - a.min())).astype(np.uint8)
        write_image(
            Image(a8, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)),
            root / "radiology_2d" / "xr" / f"k{i}.png",
        )
        rows.append({"path": f"xr/k{i}.png", "modality": "DX", "body_region": "KNEE"})
    rows.append({"path": "xr/missing.png", "modality": "DX", "body_region": "KNEE"})
    with open(root / "radiology_2d" / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "modality", "body_region"])
        w.writeheader()
        w.writerows(rows)
    return root


def test_make_split_file_round_trip_and_leakage(tmp_path, monkeypatch):
    root = _data(tmp_path / "data")
    assert len(catalogue(root)) == 13  # the missing file is left out
    split = make_split(root, seed=0)
    assert [(split.items[i].path, split.items[j].path) for i, j, _ in split.duplicates] == [("radiology_2d/xr/k0.png",
                                                                                            "radiology_2d/xr/k12.png")]  # fmt: skip
    assert split.leakage() == {"near_duplicate_pairs_across_splits": 0, "patients_in_several_splits": 0,
                               "held_out_source_images_elsewhere": 0}  # fmt: skip
    f = split.save(tmp_path / "split.json", "data")
    again = ProtocolSplit.load(f, root)
    assert (
        again.digest() == split.digest()
        and again.splits == split.splits
        and again.duplicates == split.duplicates
    )
    k0 = str((root / "radiology_2d/xr/k0.png").resolve())
    assert split.linked([k0]) == {k0, str((root / "radiology_2d/xr/k12.png").resolve())}
    monkeypatch.chdir(
        tmp_path
    )  # a data folder given relative to the working folder still links absolute paths
    assert ProtocolSplit.load(f, "data").linked([k0]) == split.linked([k0])
    with pytest.raises(InputError, match="split file"):
        ProtocolSplit.load(tmp_path / "nope.json")
    with pytest.raises(DatasetError):
        catalogue(tmp_path / "empty")


def test_bundled_split_has_no_leak():
    """The bundled encoder's split (when present): no near-duplicate or patient across parts."""
    from ModelSelectorLib.resources import encoder_dir

    path = encoder_dir() / "split.json"
    if not path.is_file():
        pytest.skip("no bundled split")
    split = ProtocolSplit.load(path, Path("/nonexistent"))
    assert split.leakage() == {"near_duplicate_pairs_across_splits": 0, "patients_in_several_splits": 0,
                               "held_out_source_images_elsewhere": 0}  # fmt: skip
    assert {"train", "dev", "test"} <= set(split.splits)
