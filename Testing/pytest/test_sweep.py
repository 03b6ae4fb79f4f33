"""Sweeps: grid/list expansion, the fixed test split, and a tiny end-to-end sweep through the command line
(parallel worker processes -> bundles with curves -> evaluation on one split -> leaderboard + dashboards)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monai")

from ranking_helpers import TINY, make_disk_msd  # noqa: E402

from ModelSelectorLib.cli import main  # noqa: E402
from ModelSelectorLib.errors import DatasetError, TrainingError  # noqa: E402
from ModelSelectorLib.ranking.sweep import expand_sweep, make_split, read_split  # noqa: E402


def test_grid_and_list_expand_with_names():
    spec = expand_sweep({
        "task": "t", "base": {"epochs": 3, "roi_size": [32, 32]},
        "grid": {"architecture": ["unet", "segresnet"], "loss": ["dice", "dicefocal"], "augment": [True]},
        "candidates": [{"name": "slow", "architecture": "attentionunet", "lr": 0.0001},
                       {"architecture": "dynunet", "lr": 0.01}],
    })  # fmt: skip
    names = [c.name for c in spec.candidates]
    assert names == ["unet-dice-aug", "unet-dicefocal-aug", "segresnet-dice-aug", "segresnet-dicefocal-aug",
                     "slow", "dynunet-lr0.01"]  # fmt: skip
    assert spec.candidates[4].settings == {"epochs": 3, "roi_size": [32, 32], "seed": 0,
                                           "architecture": "attentionunet", "lr": 0.0001}  # fmt: skip
    assert spec.model_name(spec.candidates[0]) == "t-unet-dice-aug"
    assert spec.candidates[0].config_hash() != spec.candidates[1].config_hash()


@pytest.mark.parametrize("data, match", [
    ({"task": "t", "grid": {"architecture": ["vnet"]}}, "architecture 'vnet'"),
    ({"task": "t", "grid": {"epochz": [1]}}, "epochz"),
    ({"task": "t"}, "no candidates"),
    ({"grid": {"lr": [0.1]}}, "task"),
    ({"task": "t", "grid": {"lr": [0.1]}, "colour": 1}, "unknown sweep key"),
    ({"task": "t", "candidates": [{"name": "a"}, {"name": "a"}]}, "repeat"),
    ({"task": "t", "grid": {"lr": [0.1]}, "test_fraction": 1.5}, "test_fraction"),
])  # fmt: skip
def test_bad_sweeps_are_refused(data, match):
    with pytest.raises(TrainingError, match=match):
        expand_sweep(data)


def test_splits_are_fixed_and_disjoint(tmp_path, capsys):
    msd = make_disk_msd(tmp_path / "msd", n_cases=8)
    barred = [f"disk_{i:02d}" for i in range(4)]  # e.g. the current model's training cases
    train_dir, sel_file, test_file = make_split(msd, tmp_path / "w", test_fraction=0.25, seed=3,
                                                selection_fraction=0.25, not_in_test=barred)  # fmt: skip
    test, sel = ({c["id"] for c in read_split(f)["cases"]} for f in (test_file, sel_file))
    train = {
        Path(c["image"]).name.split(".")[0]
        for c in json.loads((train_dir / "dataset.json").read_text(encoding="utf-8"))["training"]
    }
    assert len(test) == 2 and len(sel) == 2 and len(train) == 4
    assert not (test & sel or test & train or sel & train) and not test & set(barred)
    assert (
        read_split(test_file)["labels"] == {1: "disk"}
        and "promotion gate" in read_split(test_file)["purpose"]
    )
    capsys.readouterr()
    again = make_split(
        msd, tmp_path / "w", test_fraction=0.5, seed=99
    )  # an existing split is kept, and said so
    assert {c["id"] for c in read_split(again[2])["cases"]} == test
    assert (
        "kept as drawn with seed 3, test_fraction 0.25 (the sweep now says seed 99, test_fraction 0.5)"
        in (capsys.readouterr().err)
    )
    with pytest.raises(DatasetError, match="another dataset"):
        make_split(make_disk_msd(tmp_path / "other", n_cases=4), tmp_path / "w")
    with pytest.raises(DatasetError, match="at least 4"):
        make_split(make_disk_msd(tmp_path / "tiny", n_cases=3), tmp_path / "w2")
    # ids of another form than this dataset's
    with pytest.raises(DatasetError, match="not_in_test names no case of this dataset"):
        make_split(msd, tmp_path / "w4", not_in_test=["ghost_case", "disk-01.nii.gz"])
    with pytest.raises(DatasetError, match="outside not_in_test"):
        make_split(msd, tmp_path / "w3", test_fraction=0.5, not_in_test=[f"disk_{i:02d}" for i in range(6)])
    # cases barred since (a model added to the zoo trained on them) must leave the kept test split: refused
    with pytest.raises(
        DatasetError, match=f"holds {sorted(test)[0]}, which not_in_test now bars; start a new sweep"
    ):
        make_split(msd, tmp_path / "w", test_fraction=0.25, seed=3, not_in_test=[*barred, sorted(test)[0]])
    (tmp_path / "w" / "selection_split.json").unlink()  # a folder of a sweep that ranked on its test split
    with pytest.raises(DatasetError, match="ranked its candidates on the test split"):
        make_split(msd, tmp_path / "w")


def test_a_split_of_0_255_masks_names_the_models_label_values_and_how_the_files_hold_them(tmp_path):
    """Models output labels 1..K; the split says so, and how the label files' values map to them."""
    msd = make_disk_msd(tmp_path / "msd", n_cases=6)
    meta = json.loads((msd / "dataset.json").read_text(encoding="utf-8"))
    meta["labels"] = {"0": "background", "255": "disk"}
    (msd / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    _, _, test_file = make_split(msd, tmp_path / "w", test_fraction=0.34, seed=0)
    split = read_split(test_file)
    assert split["labels"] == {1: "disk"} and split["label_values"] == {"255": 1}
    assert all(c["label_values"] == {255: 1} for c in split["cases"])
    assert make_split(msd, tmp_path / "w", test_fraction=0.34, seed=0)[2] == test_file  # kept as it is
    # a split written before label values were mapped (the files' 255 as the label) is refused before training
    old = json.loads(test_file.read_text(encoding="utf-8"))
    old.pop("label_values")
    test_file.write_text(json.dumps({**old, "labels": {"255": "disk"}}), encoding="utf-8")
    with pytest.raises(DatasetError, match=r"names the labels \{'255': 'disk'\}.* start a new sweep"):
        make_split(msd, tmp_path / "w", test_fraction=0.34, seed=0)


def _write_sweep(path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({
        "task": "disks", "seed": 0, "test_fraction": 0.3,
        "base": {**TINY, "epochs": 6, "lr": 0.01},
        "grid": {"architecture": ["unet", "segresnet"]},
        "candidates": [{"name": "starved", "architecture": "unet", "epochs": 1, "lr": 1e-5}],
    }))  # fmt: skip
    return path


def test_tiny_sweep_end_to_end(tmp_path, capsys):
    msd = make_disk_msd(tmp_path / "msd", n_cases=10)
    zoo = tmp_path / "zoo"
    rc = main(["sweep", "--dataset", str(msd), "--config", str(_write_sweep(tmp_path / "sweep.yaml")),
               "--out", str(zoo), "--workers", "2", "--threads", "1"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    from ModelSelectorLib.zoo import Zoo

    z = Zoo(zoo)
    assert z.names() == ["disks-segresnet", "disks-starved", "disks-unet"]
    for name in z.names():
        bundle = z.get(name)
        curve = json.loads((bundle / "docs" / "training_curve.json").read_text(encoding="utf-8"))
        assert (
            len(curve["epochs"])
            == json.loads((bundle / "configs" / "train_config.json").read_text(encoding="utf-8"))["epochs"]
        )
        assert {"train_loss", "val_loss", "val_dice"} <= set(curve["epochs"][-1])
    work = zoo / "sweeps" / "disks"
    evals = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in (work / "evaluation").glob("*.json")}
    assert set(evals) == {"unet", "segresnet", "starved"}
    ids = [[c["id"] for c in e["cases"]] for e in evals.values()]
    selection = [c["id"] for c in read_split(work / "selection_split.json")["cases"]]
    test = {c["id"] for c in read_split(work / "test_split.json")["cases"]}
    assert ids[0] == ids[1] == ids[2] == selection and len(selection) == 2  # ranked on the selection split
    assert len(test) == 3 and not test & set(selection)  # the test split is left for the promotion gate
    assert evals["unet"]["cases"][0]["hd95"] >= 0
    # the starved candidate is last, the leaderboard links every dashboard, every overlay exists
    lines = [ln.split() for ln in out.splitlines() if ln.strip()[:1].isdigit()]
    assert lines[-1][1] == "starved" and float(lines[0][2]) > 0.8
    board = (work / "report" / "leaderboard.html").read_text(encoding="utf-8")
    assert "hd95 = 95th-percentile Hausdorff distance" in board and "Landmark errors" not in board
    for name, ev in evals.items():
        assert f'href="dashboards/{name}/index.html"' in board
        dash = work / "report" / "dashboards" / name
        assert (dash / "index.html").is_file() and (dash / "curve.png").is_file()
        assert all((dash / c["overlay"]).is_file() for c in ev["cases"])
    # rank by another metric from the saved evaluations
    assert main(["leaderboard", "--zoo", str(zoo), "--task", "disks", "--metric", "hd95", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["ranking"]
    hd = [r["summary"]["hd95"]["mean"] for r in rows]
    # (which poor candidate has the larger HD95 depends on the CPU's arithmetic; the order must follow it)
    assert hd == sorted(hd) and sorted(r["candidate"] for r in rows) == ["segresnet", "starved", "unet"]
    with pytest.raises(SystemExit) as refused:  # not a metric at all: refused while parsing
        main(["leaderboard", "--zoo", str(zoo), "--task", "disks", "--metric", "nosuch"])
    assert refused.value.code == 2 and "'nosuch' is not a metric" in capsys.readouterr().err
    assert main(["leaderboard", "--zoo", str(zoo), "--task", "disks", "--metric", "dice_nosuch"]) != 0
    assert "choose one of" in capsys.readouterr().err  # a label the cases do not have: the metrics they have
    # a second run trains nothing again (same settings already in the zoo) and keeps the versions
    rc = main(["sweep", "--dataset", str(msd), "--config", str(tmp_path / "sweep.yaml"), "--out", str(zoo),
               "--workers", "1"])  # fmt: skip
    assert rc == 0 and Zoo(zoo).versions("disks-unet") == ["0.1.0"]
    # other settings for a candidate already in the zoo: it is trained again as the model's next version
    import yaml

    changed = yaml.safe_load((tmp_path / "sweep.yaml").read_text(encoding="utf-8"))
    changed["candidates"][0]["epochs"] = 2
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    rc = main(["sweep", "--dataset", str(msd), "--config", str(tmp_path / "changed.yaml"), "--out", str(zoo),
               "--workers", "1"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    z = Zoo(zoo)
    assert z.versions("disks-starved") == ["0.1.0", "0.1.1"] and z.current("disks-starved") == "0.1.1"
    assert z.card("disks-starved").version == "0.1.1" and z.versions("disks-unet") == ["0.1.0"]
    # the ranked version of a candidate removed from the zoo is left out of the leaderboard, and said to be
    assert main(["zoo", "remove", "disks-starved", "--version", "0.1.1", "--zoo", str(zoo)]) == 0
    capsys.readouterr()
    assert main(["leaderboard", "--zoo", str(zoo), "--task", "disks", "--json"]) == 0
    out, err = capsys.readouterr()
    assert (
        sorted(r["candidate"] for r in json.loads(out)["ranking"]) == ["segresnet", "unet"]
        and "starved" in err
    )
    board = json.loads((work / "report" / "leaderboard.json").read_text(encoding="utf-8"))
    assert [r["candidate"] for r in board["ranking"]] == [r["candidate"] for r in json.loads(out)["ranking"]]
    assert board["removed"] == ["starved"]  # named as left out, not ranked
    # trained again, it is numbered above every version the zoo holds or removed, whatever its private zoo (here a
    # stale one, as a killed run leaves) called it
    (work / "work" / "starved" / "models" / "disks-starved" / "0.1.0").mkdir(parents=True)
    rc = main(["sweep", "--dataset", str(msd), "--config", str(tmp_path / "changed.yaml"), "--out", str(zoo),
               "--workers", "1"])  # fmt: skip
    assert rc == 0 and Zoo(zoo).versions("disks-starved") == ["0.1.0", "0.1.2"]
    assert Zoo(zoo).current("disks-starved") == "0.1.2" and not (work / "work").exists()
    assert main(["zoo", "remove", "disks-starved", "--version", "0.1.0", "--zoo", str(zoo)]) == 0
    rc = main(["sweep", "--dataset", str(msd), "--config", str(tmp_path / "sweep.yaml"), "--out", str(zoo),
               "--workers", "1"])  # fmt: skip
    assert rc == 0 and Zoo(zoo).versions("disks-starved") == ["0.1.2", "0.1.3"]  # not 0.1.0 again


def test_a_ranking_metric_the_candidates_will_not_have_is_refused_before_any_training(tmp_path, capsys):
    msd = make_disk_msd(tmp_path / "msd", n_cases=6)
    for metric, phrase in (
        ("nsd", "'nsd' is not among the metrics"),
        ("hd95_disk", "'hd95_disk' is not among"),
    ):
        rc = main(["sweep", "--dataset", str(msd), "--config", str(_write_sweep(tmp_path / "sweep.yaml")),
                   "--out", str(tmp_path / "zoo"), "--metric", metric])  # fmt: skip
        assert rc == 2 and phrase in capsys.readouterr().err
    from ModelSelectorLib.zoo import Zoo

    assert Zoo(tmp_path / "zoo").names() == []  # nothing trained


def test_dashboard_command_for_one_bundle(tmp_path, capsys):
    from ModelSelectorLib.training.segmentation import TrainConfig, train_segmentation

    msd = make_disk_msd(tmp_path / "msd", n_cases=6)
    train_dir, _, split = make_split(msd, tmp_path / "w", 0.34, selection_fraction=0.17)
    bundle = train_segmentation(
        train_dir, "d", tmp_path / "zoo", TrainConfig.from_dict({**TINY, "epochs": 4, "lr": 0.01})
    )
    assert (
        main(["dashboard", "--bundle", str(bundle), "--split", str(split), "--out", str(tmp_path / "dash")])
        == 0
    )
    page = (tmp_path / "dash" / "index.html").read_text(encoding="utf-8")
    assert page.count('class="overlay"') == 2 and (tmp_path / "dash" / "curve.png").is_file()
    # a split of another task (a label the model never outputs) is refused, not scored as Dice 0
    other = json.loads(split.read_text(encoding="utf-8"))
    other["labels"] = {**other["labels"], "7": "liver"}
    (tmp_path / "other.json").write_text(
        json.dumps({**other, "dataset": str((split.parent / other["dataset"]).resolve())})
    )
    capsys.readouterr()
    assert main(["dashboard", "--bundle", str(bundle), "--split", str(tmp_path / "other.json"),
                 "--out", str(tmp_path / "dash2")]) != 0  # fmt: skip
    assert "are not among d's outputs" in capsys.readouterr().err


def test_ray_executor(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'ModelSelectorLib[ray]')")
    from ModelSelectorLib.ranking.sweep import expand_sweep, run_sweep

    msd = make_disk_msd(tmp_path / "msd", n_cases=6)
    spec = expand_sweep({"task": "r", "test_fraction": 0.34, "base": {**TINY, "epochs": 2},
                         "grid": {"architecture": ["unet", "segresnet"]}})  # fmt: skip
    res = run_sweep(msd, spec, tmp_path / "zoo", executor="ray", address="local", threads=1)
    assert {r["candidate"] for r in res["ranking"]} == {"unet", "segresnet"}
    assert not ray.is_initialized()


def test_ray_missing_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    from ModelSelectorLib.ranking.sweep import run_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(TrainingError, match="pip install"):
        run_ray([{"candidate": "x"}], None, 1)


# --- landmark sweeps ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cxr(tmp_path_factory):
    """14 labelled synthetic radiographs (c000-c013; the last without spacing) + 2 unlabelled."""
    from ModelSelectorLib.datasets.landmarks import make_synthetic_cxr

    return make_synthetic_cxr(
        tmp_path_factory.mktemp("cxr"), n_labelled=14, n_unlabelled=2, width=64, height=56
    )


def _ids(split_file: Path) -> set:
    return {c["id"] for c in json.loads(split_file.read_text(encoding="utf-8"))["cases"]}


def test_landmark_sweeps_keep_a_selection_split_apart_from_the_test_split(cxr, tmp_path):
    from ModelSelectorLib.ranking import landmark_sweep
    from ModelSelectorLib.training.landmark_grid import write_landmark_split

    root, sel, test = landmark_sweep.make_split(cxr, tmp_path / "w", 0.2, seed=0, selection_fraction=0.2)
    parts = landmark_sweep.read_parts(tmp_path / "w")
    assert sel != test and _ids(sel) == set(parts["selection"]) and _ids(test) == set(parts["test"])
    assert len(parts["test"]) == 3 and len(parts["selection"]) == 3 and len(parts["val"]) == 1
    every = [i for p in ("train", "val", "selection", "test") for i in parts[p]]
    assert len(every) == len(set(every)) == 14  # disjoint, and every image has a part
    # with nothing barred, the test images are those of `landmarks split` with the same seed and fractions
    grid = write_landmark_split(cxr, tmp_path / "grid.json", seed=0, val_fraction=0.1, test_fraction=0.2)
    assert _ids(test) == _ids(grid)
    # not_in_test images never become test images
    barred = sorted(parts["test"])[:2]
    _, _, test2 = landmark_sweep.make_split(cxr, tmp_path / "w2", 0.2, 0, 0.2, not_in_test=barred)
    assert not _ids(test2) & set(barred) and len(_ids(test2)) == 3
    with pytest.raises(DatasetError, match="names no image"):
        landmark_sweep.make_split(cxr, tmp_path / "w3", 0.2, 0, 0.2, not_in_test=["JPCLN999"])
    # a folder of an earlier sweep that ranked on its test split is refused with the remedy
    old = tmp_path / "old"
    old.mkdir()
    (old / "test_split.json").write_text(json.dumps({"dataset": str(root), "cases": []}))
    with pytest.raises(
        DatasetError, match="ranked its candidates on the test split itself; start a new sweep"
    ):
        landmark_sweep.make_split(cxr, old, 0.2, 0, 0.2)


@pytest.fixture(scope="module")
def landmark_sweep_result(cxr, tmp_path_factory):
    """A one-candidate landmark sweep of a few steps, with one test image barred from the test split."""
    from ModelSelectorLib.ranking.sweep import run_sweep
    from ModelSelectorLib.training.landmark_grid import GridConfig

    base = dict(GridConfig.quick().train, steps_per_group={"RL": 11, "LL": 10})
    spec = expand_sweep({"task": "lm", "task_type": "landmarks", "seed": 0, "test_fraction": 0.2,
                         "selection_fraction": 0.2, "not_in_test": ["c004"], "base": base,
                         "candidates": [{"name": "a", "steps": 2, "refine_steps": 2}]})  # fmt: skip
    zoo = tmp_path_factory.mktemp("lmzoo")
    return zoo, run_sweep(cxr, spec, zoo, workers=1, threads=1)


def test_a_landmark_sweep_ranks_on_the_selection_split_and_leaves_the_test_split_unseen(
    landmark_sweep_result,
):
    from ModelSelectorLib.ranking.landmark_sweep import read_parts
    from ModelSelectorLib.zoo import Zoo

    zoo, result = landmark_sweep_result
    work = result["sweep"]
    state = json.loads((work / "sweep.json").read_text(encoding="utf-8"))
    assert state["split"] == "selection_split.json" and state["test_split"] == "test_split.json"
    parts = read_parts(work)
    assert "c004" not in parts["test"]
    evaluated = {
        c["id"] for c in json.loads((work / "evaluation" / "a.json").read_text(encoding="utf-8"))["cases"]
    }
    assert evaluated == set(parts["selection"]) and not evaluated & set(parts["test"])
    # the candidate's held-out figures are on the selection images, not the test ones, and its card says so
    card = Zoo(zoo).card("lm-a")
    assert card.validation_metrics["test_n_cases"] == len(parts["selection"])
    assert f"{len(parts['selection'])} held-out selection images" in card.training_data
    # the candidate records the images it learnt and chose on, which the promotion gate keeps out of a test split
    from ModelSelectorLib.ranking.promotion import seen_case_ids

    assert seen_case_ids(Zoo(zoo).get("lm-a")) == set(parts["train"]) | set(parts["val"])
    board = (work / "report" / "leaderboard.html").read_text(encoding="utf-8")
    assert "Landmark errors (mre = mean radial error" in board and "Hausdorff" not in board
    assert " test images" not in card.training_data
    assert card.n_training_cases == len(parts["train"])


def test_a_landmark_overlay_shows_the_truth_too(landmark_sweep_result):
    from PIL import Image as PILImage

    _, result = landmark_sweep_result
    overlays = sorted((result["sweep"] / "report" / "dashboards" / "a" / "overlays").glob("*.png"))
    assert overlays
    rgb = np.asarray(PILImage.open(overlays[0]).convert("RGB")).astype(int)
    green = (rgb[..., 1] > 200) & (rgb[..., 0] < 80) & (rgb[..., 2] < 80)
    assert green.sum() > 3, "the true points are drawn in green"


def test_the_dashboard_of_a_landmark_model_ranks_by_its_own_metric(landmark_sweep_result, tmp_path, capsys):
    zoo, result = landmark_sweep_result
    bundle, split = str(result["best"]["bundle"]), str(result["sweep"] / "selection_split.json")
    capsys.readouterr()
    assert main(["dashboard", "--bundle", bundle, "--split", split, "--out", str(tmp_path / "d")]) == 0
    assert "mre_mm" in (tmp_path / "d" / "index.html").read_text(encoding="utf-8")
    # a metric the model has not is refused before anything is evaluated
    assert main(["dashboard", "--bundle", bundle, "--split", split, "--out", str(tmp_path / "e"),
                 "--metric", "dice"]) != 0  # fmt: skip
    assert "mre_mm" in capsys.readouterr().err and not (tmp_path / "e" / "evaluation.json").exists()
