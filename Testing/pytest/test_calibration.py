"""Calibration of the selector: thresholds, logistic fits with an offset, the choice of model-alone signals,
per-model operating points with their false-accept and false-reject rates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ModelSelectorLib.selection.calibration import (
    choose_signals,
    fit_setting,
    offset_logistic,
    youden_threshold,
)
from ModelSelectorLib.selection.scoring import calibration_key, model_threshold, plain_logit, verify_term

KEY = calibration_key(("exemplar",), False)
ENCODER_WEIGHTS = Path(__file__).resolve().parents[2] / "Resources" / "encoder" / "encoder.pt"


def test_youden_threshold_separates_in_the_middle_of_the_gap():
    z = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])
    y = np.array([False, False, False, True, True, True])
    t = youden_threshold(z, y)
    assert abs(t) < 1e-9  # every cut between -1 and 1 is perfect; the middle of the gap is kept
    assert youden_threshold(z, np.ones(6, bool)) == 0.0  # one class only: no information, the default
    z2 = np.array([0.0, 0.5, 0.6, 0.7, 2.0, 2.1])
    y2 = np.array([False, True, False, False, True, True])
    t2 = youden_threshold(z2, y2)
    assert (z2[y2] >= t2).mean() - (z2[~y2] >= t2).mean() == pytest.approx(2 / 3)
    # J peaks (0.75) at two separate ranges, around 0.6 and 2.55; between them it is 0.5: one range is kept
    z3 = np.array([1.0, 3.0, 3.2, 3.4, -2.0, -1.5, -1.0, -0.5, 0.0, 0.2, 2.0, 2.1])
    y3 = np.array([True] * 4 + [False] * 8)
    t3 = youden_threshold(z3, y3)
    assert (z3[y3] >= t3).mean() - (z3[~y3] >= t3).mean() == pytest.approx(0.75)


def test_offset_logistic_learns_the_weight_of_a_signal():
    rng = np.random.default_rng(0)
    s = rng.normal(size=400)
    offset = rng.normal(size=400)
    y = rng.random(400) < 1.0 / (1.0 + np.exp(-(offset + 2.0 * s)))
    w = offset_logistic(offset, s[:, None], y, l2=1e-3)
    assert 1.3 < w[0] < 2.7


def test_choose_signals_keeps_an_informative_signal_and_drops_noise():
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.4
    offset = np.where(y, 0.3, -0.3) + rng.normal(0, 1, 300)
    useful = np.where(y, 0.9, 0.2) + rng.normal(0, 0.1, 300)
    kept, cv = choose_signals(offset, {"fit": useful, "feature_fit": rng.random(300)}, y)
    assert set(kept) <= {"fit", "feature_fit"} and "fit" in kept and kept["fit"]["weight"] > 0
    assert cv["fit"] < cv["none"] and set(cv) == {"none", "fit", "feature_fit", "feature_fit+fit"}
    kept_noise, _ = choose_signals(offset, {"fit": rng.random(300)}, y)
    assert kept_noise == {}
    inverted, _ = choose_signals(offset, {"fit": -useful}, y)  # a better fit must not lower the score
    assert inverted == {}


def _records(rng, model, task, n_pos, n_neg, shift):
    out = []
    for i in range(n_pos + n_neg):
        pos = i < n_pos
        out.append({"case": i, "model": model, "task_type": task, "dims_ok": True, "relevant": pos,
                    "agree": float(np.clip(rng.normal(0.8 if pos else 0.1, 0.1), 0, 1)), "p_ood": 0.0,
                    "sim": {KEY: float(rng.normal(0.7 + shift if pos else 0.3, 0.05))},
                    "signals": {"fit": float(rng.normal(0.8 if pos else 0.4, 0.05))}})  # fmt: skip
    return out


def test_fit_setting_gives_each_model_its_operating_point_and_rates():
    rng = np.random.default_rng(2)
    recs = _records(rng, "a", "segmentation", 30, 60, 0.0) + _records(rng, "b", "segmentation", 2, 60, 0.1)
    setting = fit_setting(recs, ("exemplar",), verify=True, min_positives=5)
    assert setting["weights"]["sim"] > 0 and setting["weights"]["agree"] > 0
    a, b = setting["models"]["a"], setting["models"]["b"]
    assert not a["pooled"] and b["pooled"]  # two positives are too few for an own threshold
    assert b["threshold"] == setting["threshold"]
    assert a["n_positive"] == 30 and a["n_negative"] == 60 and a["far"] <= 0.1 and a["frr"] <= 0.1
    assert "segmentation" in setting["signal_selection"]
    # the stored setting scores a new image the way it was fitted
    feats = np.array([1.0, 0.75, np.log(0.8 / 0.2), 0.0, 0.0])
    z = plain_logit(setting, feats) + verify_term(setting, "segmentation", {"fit": 0.8})
    assert z - model_threshold(setting, "a") > 0
    assert verify_term(setting, "landmarks", {"fit": 0.1}) == 0.0  # no signal kept for another task type
    assert verify_term(setting, "segmentation", None) == 0.0


# --- the index's calibration on the command line; index check -----------------------------------------------
ENC = "enc-a"
DEV_CAL = {"format": 2, "images": "300 images of the development part of the protocol split", "n_images": 300,
           "made_on": "labelled images",
           "settings": {"data-free+exemplar:verify": {
               "weights": {"bias": 0.0, "sim": 4.0, "agree": 1.0, "ood": -2.0, "colour": -2.0}, "verify": {},
               "threshold": 0.5, "models": {"a": {"threshold": 1.0, "pooled": False, "far": 0.1, "frr": 0.1,
                                                  "n_positive": 20, "n_negative": 280}}}}}  # fmt: skip


def _tiny_bundle(root, name):
    """A MONAI bundle of a 2-channel UNet of a few parameters (the card is all the index needs)."""
    torch = pytest.importorskip("torch")
    from monai.bundle import ConfigParser

    from ModelSelectorLib.zoo import ModelCard, save_bundle

    net_def = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
               "channels": [2, 4], "strides": [2], "num_res_units": 0}  # fmt: skip
    torch.manual_seed(0)
    net = ConfigParser({"net": dict(net_def)}).get_parsed_content("net")
    card = ModelCard.from_dict({
        "name": name, "version": "0.1.0", "task_type": "segmentation", "modality": "DX", "body_region": "CHEST",
        "labels": [{"value": 1, "name": "Lung", "color": [0.5, 0.5, 0.5]}], "input_channels": 1, "spatial_dims": 2,
        "target_spacing": [1.0, 1.0], "intensity": {"mode": "percentile"}, "roi_size": [16, 16],
        "training_data": "none", "n_training_cases": 1, "validation_metrics": {"dice": 0.5}, "seed": 0,
        "code_version": "0", "license": "Apache-2.0", "synthetic": True,
    })  # fmt: skip
    return save_bundle(root / f"{name}-bundle", card, net_def, net.state_dict())


def _save_prototypes(zoo, name, encoder=ENC, seed=0):
    from ModelSelectorLib.selection.encoder import EMBED_DIM
    from ModelSelectorLib.selection.prototypes import PrototypeSet, save_prototypes

    v = np.random.default_rng(seed).normal(size=(3, EMBED_DIM)).astype(np.float32)
    rows = [{"origin": "exemplar", "source": f"{name}-{i}.png", "view": 0} for i in range(3)]
    save_prototypes(zoo.get(name), PrototypeSet(v, rows, name, "0.1.0", {"encoder": encoder}))


@pytest.fixture()
def tiny_zoo(tmp_path):
    """A zoo of models ``a`` and ``b`` (random prototypes of encoder ``enc-a``) in a folder whose name has a
    space, with an index holding a calibration made on development images that knows ``a`` only."""
    pytest.importorskip("hnswlib")
    from ModelSelectorLib.selection.index import default_index_dir, index_zoo
    from ModelSelectorLib.zoo import Zoo

    zoo = Zoo.create(tmp_path / "my zoo")
    for i, name in enumerate(("a", "b")):
        zoo.add(_tiny_bundle(tmp_path, name))
        _save_prototypes(zoo, name, seed=i)
    idx = index_zoo(zoo)
    idx.calibration = json.loads(json.dumps(DEV_CAL))
    idx.save(default_index_dir(zoo))
    return zoo


def _cli(capsys, *argv):
    from ModelSelectorLib.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_the_starter_zoo_build_never_replaces_a_calibration_made_on_development_images(tiny_zoo, tmp_path):
    """`build-starter-zoo --stages index` calibrates as `index build --data` does; given a data folder without
    the protocol split's development images, it refuses to replace a calibration made on them (it replaced it
    with one made on no labelled image, every model at the pooled point, without a word)."""
    from ModelSelectorLib.errors import InputError
    from ModelSelectorLib.starter_zoo.build import build_index

    before = (tiny_zoo.path / "index" / "index.json").read_text()
    with pytest.raises(InputError, match=r"pass the data folder the protocol split was made from \(--data\)"):
        build_index(tiny_zoo.path, tmp_path / "another data folder")
    assert (tiny_zoo.path / "index" / "index.json").read_text() == before


def test_calibrating_without_data_never_replaces_a_calibration_made_on_development_images(tiny_zoo, capsys):
    """`index add --calibrate` and `index calibrate` without --data silently replaced the development calibration
    (hundreds of images, per-model points) with one made on exemplar files only."""
    z = tiny_zoo.path
    before = (z / "index" / "index.json").read_text()
    rc, _, err = _cli(capsys, "index", "add", "--zoo", z, "--model", "b", "--calibrate")
    assert (
        rc == 2 and "pass --data DIR" in err and "leave --calibrate out" in err and len(err.splitlines()) == 1
    )
    rc, _, err = _cli(capsys, "index", "calibrate", "--zoo", z)
    assert rc == 2 and "pass --data DIR" in err
    rc, _, err = _cli(capsys, "index", "build", "--zoo", z)  # a new index over it, calibrated without data
    assert rc == 2 and "build it with --no-calibrate and run `modelselector index calibrate" in err
    assert (z / "index" / "index.json").read_text() == before  # refused before any change
    rc, _, err = _cli(capsys, "index", "add", "--zoo", z, "--model", "b", "--data", z)
    assert rc == 2 and "add --calibrate" in err
    from ModelSelectorLib.selection.calibration import made_on_labelled_images
    from ModelSelectorLib.selection.index import load_index

    legacy = {k: v for k, v in DEV_CAL.items() if k != "made_on"}  # saved before "made_on" was recorded
    assert made_on_labelled_images(legacy) and made_on_labelled_images(DEV_CAL)
    assert not made_on_labelled_images({**legacy, "images": "exemplar files of each model (...)"})
    assert not made_on_labelled_images({})
    assert load_index(tiny_zoo).calibration["made_on"] == "labelled images"


def test_the_index_build_command_printed_after_prototypes_all_runs_as_printed(tiny_zoo, tmp_path):
    """`prototypes --all` ends with the `index build` command to run next: it names --data when the index it
    would replace was calibrated on labelled images (a build without them is refused then)."""
    from ModelSelectorLib.cli.prototypes_cmd import _build_command
    from ModelSelectorLib.zoo import Zoo

    z = tiny_zoo.path
    assert _build_command(tiny_zoo, None) == (
        f"modelselector index build --zoo {z} --data DIR (the labelled images its calibration was made on)"
    )
    assert _build_command(tiny_zoo, "data") == f"modelselector index build --zoo {z} --data data"
    bare = Zoo.create(tmp_path / "no index")
    assert _build_command(bare, None) == f"modelselector index build --zoo {bare.path}"


def test_index_add_and_calibrate_take_development_images_or_warn_without_them(tiny_zoo, capsys, monkeypatch):
    import ModelSelectorLib.cli.index_cmd as index_cmd
    import ModelSelectorLib.selection.calibration as calibration

    seen = []

    def fake_calibrate(index, zoo, cases=None, description="", **kw):  # records what it was given
        seen.append((cases, description))
        made_on = "exemplar files" if cases is None else "labelled images"
        index.calibration = {**DEV_CAL, "made_on": made_on, "images": description or "exemplar files"}
        return index.calibration

    monkeypatch.setattr(calibration, "calibrate", fake_calibrate)
    monkeypatch.setattr(
        index_cmd, "_cases", lambda args, zoo: (["dev"], "dev images") if args.data else (None, "")
    )
    z = tiny_zoo.path
    rc, out, err = _cli(capsys, "index", "add", "--zoo", z, "--model", "b", "--calibrate", "--data", z)
    assert rc == 0 and seen[-1] == (["dev"], "dev images") and "warning" not in err
    rc, out, err = _cli(capsys, "index", "calibrate", "--zoo", z, "--data", z)
    assert rc == 0 and seen[-1] == (["dev"], "dev images")
    from ModelSelectorLib.selection.index import updating_index

    with updating_index(z / "index") as idx:  # an index calibrated on exemplar files only
        idx.calibration = {**DEV_CAL, "made_on": "exemplar files"}
        idx.save()
    rc, out, err = _cli(capsys, "index", "calibrate", "--zoo", z)
    assert rc == 0 and seen[-1][0] is None and "calibrated without labelled images" in err


def test_calibration_limit_must_be_positive(tiny_zoo, capsys):
    for cmd in ("calibrate", "build"):
        for bad in ("0", "-5"):
            with pytest.raises(SystemExit) as e:
                _cli(capsys, "index", cmd, "--zoo", tiny_zoo.path, "--data", tiny_zoo.path, "--limit", bad)
            assert e.value.code == 2 and "must be 1 or more" in capsys.readouterr().err


def test_operating_point_of_a_model_without_calibration_is_called_pooled():
    from ModelSelectorLib.selection.scoring import (
        has_own_threshold,
        operating_point_text,
        uncalibrated_models,
    )

    setting = DEV_CAL["settings"]["data-free+exemplar:verify"]
    pooled = {**setting, "models": {**setting["models"], "c": {"threshold": 0.5, "pooled": True}}}
    assert has_own_threshold(pooled, "a") and not has_own_threshold(pooled, "b")
    assert not has_own_threshold(pooled, "c")
    assert operating_point_text(pooled, "a") == "the model's operating point"
    assert operating_point_text(pooled, "b") == "the pooled operating point (no calibration of this model)"
    assert operating_point_text(pooled, "c").startswith("the pooled operating point (too few")
    assert uncalibrated_models(pooled, ["a", "b", "c"]) == ["b"]
    assert model_threshold(pooled, "b") == 0.5


def test_index_check_names_models_without_an_operating_point_of_their_own(tiny_zoo, capsys):
    if not ENCODER_WEIGHTS.is_file():
        pytest.skip("the bundled encoder is not built")
    rc, out, err = _cli(capsys, "index", "check", "--zoo", tiny_zoo.path)
    assert rc == 0, err
    (line,) = [s for s in out.splitlines() if s.strip().startswith("b ")]
    assert "uses the pooled point 0.500" in line
    assert f"index calibrate --zoo '{tiny_zoo.path}' --data DIR" in line
    assert not any(s.strip().startswith("a ") and "pooled point" in s for s in out.splitlines())


def test_index_check_names_prototypes_of_another_encoder_with_the_command_that_fixes_them(tiny_zoo):
    from ModelSelectorLib.errors import IndexMismatchError
    from ModelSelectorLib.selection.index import load_index

    _save_prototypes(tiny_zoo, "b", encoder="enc-b", seed=5)
    idx = load_index(tiny_zoo)
    with pytest.raises(IndexMismatchError) as e:
        idx.check_against(tiny_zoo)
    msg = str(e.value)
    assert "made with encoder enc-b, the index with enc-a" in msg and "stale" not in msg
    assert f"modelselector prototypes --zoo '{tiny_zoo.path}' --model b" in msg
    with pytest.raises(IndexMismatchError, match="rebuild the index with `modelselector index build --zoo '"):
        idx.check_against(
            tiny_zoo, encoder="enc-b"
        )  # the prototypes are the encoder in use's: the index is old


def test_missing_index_hint_names_the_zoo_given_and_the_index_folder(tiny_zoo, tmp_path, capsys):
    from ModelSelectorLib.errors import IndexMismatchError
    from ModelSelectorLib.selection.index import ZooIndex

    elsewhere = tmp_path / "some" / "noidx"
    rc, _, err = _cli(capsys, "index", "check", "--zoo", tiny_zoo.path, "--index", elsewhere)
    assert rc == 4
    assert (
        f"index build --zoo '{tiny_zoo.path}' --index {elsewhere}`" in err
        and "--zoo " + str(elsewhere.parent) not in err
    )
    with pytest.raises(IndexMismatchError, match=r"index build --zoo ZOO --index "):
        ZooIndex.load(elsewhere)


def test_a_graph_replaced_while_loading_is_read_again_not_called_corrupt(tiny_zoo, monkeypatch):
    """hnswlib raises RuntimeError ("Cannot open file") when a writer deletes the old graph between the reader's
    check and its load: the reader must load the new index, not report a corrupt one."""
    import ModelSelectorLib.selection.index as index_mod
    from ModelSelectorLib.errors import IndexMismatchError

    d = tiny_zoo.path / "index"
    writer = index_mod.ZooIndex.load(d)  # another process, about to save a change
    writer.remove_model("b")
    real_check = index_mod.check_graph_file
    calls = []

    def racing_check(graph, *args):
        calls.append(graph)
        if len(calls) == 1:  # the writer saves (deleting the old graph); hnswlib then cannot open it
            writer.save()
            raise RuntimeError("Cannot open file")
        return real_check(graph, *args)

    monkeypatch.setattr(index_mod, "check_graph_file", racing_check)
    idx = index_mod.ZooIndex.load(d)
    assert idx.model_names() == ["a"] and idx._graph_file != calls[0].name
    graph = next(d.glob("graph-*.bin"))
    graph.write_bytes(graph.read_bytes()[:100])  # a damaged graph that no writer replaced is still reported
    with pytest.raises(IndexMismatchError, match="corrupt index graph"):
        index_mod.ZooIndex.load(d)


def test_scored_rows_say_which_operating_point_they_use(tiny_zoo):
    """A model added after the calibration is scored against the pooled point; its row must say so (the reasons
    said "the model's operating point")."""
    from ModelSelectorLib.selection.encoder import EMBED_DIM
    from ModelSelectorLib.selection.index import load_index
    from ModelSelectorLib.selection.scoring import Evidence, rank_models

    idx = load_index(tiny_zoo)
    setting = idx.calibration["settings"]["data-free+exemplar:verify"]
    ev = Evidence(
        np.ones((1, EMBED_DIM), np.float32) / np.sqrt(EMBED_DIM), np.array([1.0]), ["DX:CHEST"], 2, None
    )
    rows = {r["name"]: r for r in rank_models(tiny_zoo, idx, ev, ("exemplar",), False, None, setting)}
    assert rows["a"]["operating_point"] == "the model's operating point" and rows["a"]["threshold"] == 1.0
    assert rows["b"]["operating_point"] == "the pooled operating point (no calibration of this model)"
    assert rows["b"]["threshold"] == 0.5


def test_a_calibration_without_data_says_whose_exemplar_files_it_found(tiny_zoo, tmp_path, monkeypatch):
    """Run from another folder than the data's, `index calibrate` found no model's exemplar files (their sources
    are recorded relative to the data folder), calibrated on synthetic pictures alone, and said it had used
    "exemplar files of each model"."""
    import SimpleITK as sitk

    from ModelSelectorLib.selection.calibration import calibrate, exemplar_files
    from ModelSelectorLib.selection.index import default_index_dir, load_index

    idx = load_index(default_index_dir(tiny_zoo))
    monkeypatch.chdir(tmp_path)
    assert exemplar_files(idx, tiny_zoo) == {"a": [], "b": []}
    picture = np.random.default_rng(0).integers(0, 255, (32, 32)).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(picture), str(tiny_zoo.get("a") / "a-0.png"))  # beside a's bundle
    assert exemplar_files(idx, tiny_zoo) == {
        "a": [("a-0.png", (tiny_zoo.get("a") / "a-0.png").resolve())],
        "b": [],
    }
    cal = calibrate(idx, tiny_zoo, negatives=[])
    assert (
        cal["images"].startswith("exemplar files of 1 of the 2 models") and "none found of b" in cal["images"]
    )
    assert "--data DIR" in cal["images"]


def test_a_build_without_calibration_says_it_replaced_a_calibrated_index(tiny_zoo, capsys):
    """`index build --no-calibrate` over an index calibrated on labelled images dropped that calibration without
    a word; every model then took fixed weights and the pooled threshold."""
    from ModelSelectorLib.selection.index import default_index_dir, load_index

    rc, out, err = _cli(capsys, "index", "build", "--zoo", tiny_zoo.path, "--no-calibrate")
    assert rc == 0 and "note: the index replaced was calibrated (" in err and "index calibrate --zoo" in err
    assert not load_index(default_index_dir(tiny_zoo)).calibration.get("settings")
    rc, out, err = _cli(capsys, "index", "build", "--zoo", tiny_zoo.path, "--no-calibrate")
    assert rc == 0 and "note" not in err  # nothing calibrated was replaced this time
