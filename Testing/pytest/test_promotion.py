"""The promotion gate: numbers, refusal of a worse candidate, acceptance of a better one, history and
restore, an interrupted promotion, retraining through the same gate, and the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("monai")

from ranking_helpers import TINY, make_disk_msd  # noqa: E402

from ModelSelectorLib.cli import main  # noqa: E402
from ModelSelectorLib.errors import BundleError, DatasetError, ModelSelectorError, ZooError  # noqa: E402
from ModelSelectorLib.ranking.promotion import gate, promote, restore, retrain  # noqa: E402


# --- the gate on numbers --------------------------------------------------------------------------------
def test_gate_accepts_consistent_improvement():
    cur = [0.70, 0.75, 0.80, 0.72, 0.78, 0.74]
    cand = [c + d for c, d in zip(cur, [0.05, 0.04, 0.06, 0.03, 0.05, 0.07])]
    g = gate(cand, cur, "dice")
    assert g.accepted and g.n == 6 and g.mean_improvement == pytest.approx(0.05)
    assert g.p_value == pytest.approx(1 / 64)  # exact one-sided Wilcoxon: all 6 differences positive
    b = gate(cand, cur, "dice", method="bootstrap", level=0.9)
    assert b.accepted and b.ci[0] > 0 and b.p_value is None
    assert "ACCEPTED" in g.text() and "p = 0.01562" in g.text()


def test_gate_refuses_worse_equal_noisy_and_too_small():
    cur = [0.80, 0.82, 0.78, 0.81, 0.79, 0.83]
    worse = gate([c - 0.05 for c in cur], cur, "dice")
    assert not worse.accepted and worse.mean_improvement == pytest.approx(-0.05)
    assert "REFUSED" in worse.text() and "-0.0500" in worse.text()
    assert not gate(cur, cur, "dice").accepted  # equal: p = 1
    noisy = gate([c + d for c, d in zip(cur, [0.1, -0.09, 0.08, -0.07, 0.06, -0.05])], cur, "dice")
    assert not noisy.accepted and "not significant" in noisy.reason
    small = gate([c + 0.01 for c in cur], cur, "dice", min_improvement=0.02)
    assert not small.accepted and "not above 0.02" in small.reason
    few = gate([0.9, 0.9, 0.9], [0.5, 0.5, 0.5], "dice")  # n = 3: Wilcoxon cannot reach p < 0.05
    assert not few.accepted and few.p_value == pytest.approx(0.125)
    assert gate([0.9, 0.9, 0.9], [0.5, 0.5, 0.5], "dice", level=0.8).accepted


def test_gate_direction_of_distances_and_missing_values():
    cur = [5.0, 6.0, 7.0, 5.5, 6.5, 8.0]
    better = [c - 1.0 for c in cur]  # lower HD95 is better
    assert gate(better, cur, "hd95").accepted and gate(better, cur, "hd95").mean_improvement == pytest.approx(
        1.0
    )
    assert not gate(cur, better, "hd95").accepted
    g = gate([None, *better[1:]], cur, "hd95", method="bootstrap")
    assert g.n == 5
    with pytest.raises(ModelSelectorError, match="cases must match"):
        gate([1.0], [1.0, 2.0])
    with pytest.raises(ModelSelectorError, match="method"):
        gate([1.0], [1.0], method="ttest")
    with pytest.raises(ModelSelectorError, match="level"):
        gate([1.0], [1.0], level=95)


def test_the_bootstrap_gate_refuses_too_few_cases_to_show_a_difference():
    """One case (or four at 95 %) resamples into an interval of no width, which would accept anything better on
    them; the bootstrap then asks for as many cases as any paired test needs (Wilcoxon's p cannot get there)."""
    from ModelSelectorLib.ranking.promotion import min_paired_cases

    assert [min_paired_cases(v) for v in (0.5, 0.9, 0.95, 0.99)] == [2, 4, 5, 7]
    for n in (1, 4):
        g = gate([0.81] * n, [0.80] * n, "dice", method="bootstrap")
        assert not g.accepted and g.ci is None and "at least 5 are needed" in g.reason
        assert "nan" not in g.text() and "fewer than the 5 any paired test needs" in g.text()
        worse = gate([0.79] * n, [0.80] * n, "dice", method="bootstrap")  # refused for its mean, says so too
        assert "nan" not in worse.text() and "fewer than the 5" in worse.text()
        assert not gate([0.81] * n, [0.80] * n, "dice").accepted
    assert gate([0.81] * 5, [0.80] * 5, "dice", method="bootstrap").accepted
    # Wilcoxon's p cannot get there either, and the refusal says so rather than read as the candidate's fault
    wilcoxon = gate([0.81] * 4, [0.80] * 4, "dice")
    assert (
        "4 paired case(s) cannot give p below 0.0625" in wilcoxon.reason
        and "at least 5 cases" in wilcoxon.reason
    )
    assert "cannot give p" not in gate([0.81] * 5, [0.80] * 5, "dice").reason


def test_gating_on_a_label_that_no_test_case_holds_says_so():
    from ModelSelectorLib.errors import InputError
    from ModelSelectorLib.ranking.promotion import _scores

    with pytest.raises(InputError, match="not measured on this split: no case holds box"):
        _scores([{"id": "a", "dice": 0.9, "not_measured": ["box"]}], "dice_box")


# --- promotion with real bundles ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A fixed split of 10 disk cases (5 test) and two bundles trained on the rest: a well-trained one and a
    starved one (1 epoch at a tiny learning rate)."""
    import torch

    from ModelSelectorLib.ranking.sweep import make_split
    from ModelSelectorLib.training.segmentation import TrainConfig, train_segmentation

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("promo")
    msd = make_disk_msd(root / "msd", n_cases=10)
    train_dir, _, split = make_split(msd, root / "split", test_fraction=0.5, seed=1, selection_fraction=0.1)
    good = train_segmentation(
        train_dir, "good", root / "cands", TrainConfig.from_dict({**TINY, "epochs": 8, "lr": 0.01})
    )
    bad = train_segmentation(
        train_dir, "bad", root / "cands", TrainConfig.from_dict({**TINY, "epochs": 1, "lr": 1e-5})
    )
    worse = train_segmentation(
        train_dir,
        "worse",
        root / "cands",
        TrainConfig.from_dict({**TINY, "epochs": 1, "lr": 1e-5, "seed": 7}),
    )
    return {"root": root, "msd": msd, "split": split, "good": good, "bad": bad, "worse": worse}


def test_promote_refuse_accept_restore(models, tmp_path):
    from ModelSelectorLib.zoo import Zoo
    from ModelSelectorLib.zoo.bundle import validate_bundle

    zoo = tmp_path / "zoo"
    first = promote(zoo, "disks", models["bad"], models["split"])
    assert first["accepted"] and first["version"] == "0.1.0" and first["gate"] is None
    better = promote(zoo, "disks", models["good"], models["split"])
    assert better["accepted"], better["report"]
    assert better["version"] == "0.1.1" and better["previous"] == "0.1.0"
    assert better["gate"]["n"] == 5 and better["gate"]["p_value"] < 0.05
    assert better["candidate"]["dice"] > better["current"]["dice"] + 0.3
    catalog_before = (zoo / "zoo.json").read_text(encoding="utf-8")
    worse = promote(zoo, "disks", models["worse"], models["split"])  # a starved model tries to replace it
    assert not worse["accepted"] and worse["gate"]["mean_improvement"] < 0
    with pytest.raises(BundleError, match=r"has the weights of disks 0\.1\.0, which the zoo already holds; .*"
                                          r"restore --zoo .* --task disks --version 0\.1\.0"):  # fmt: skip
        promote(zoo, "disks", models["bad"], models["split"])  # a version the zoo has: restored, not copied
    z = Zoo(zoo)
    assert z.current("disks") == "0.1.1" and z.versions("disks") == ["0.1.0", "0.1.1"]
    assert (
        json.loads(catalog_before)["models"]["disks"]["versions"]
        == json.loads((zoo / "zoo.json").read_text(encoding="utf-8"))["models"]["disks"]["versions"]
    )
    history = z.history("disks")
    assert [h["action"] for h in history] == ["promote", "promote", "refuse"]
    info = z.version_info("disks", "0.1.1")
    assert info["promoted"] and info["evaluation"]["test_metrics"]["dice"] == pytest.approx(
        better["candidate"]["dice"]
    )
    assert z.card("disks").name == "disks" and z.card("disks").version == "0.1.1"
    # MONAI's tools see the task's version too, and the changelog names the candidate it was made from
    meta = json.loads((z.get("disks") / "configs" / "metadata.json").read_text(encoding="utf-8"))
    candidate = validate_bundle(models["good"])
    assert (meta["name"], meta["version"]) == ("disks", "0.1.1")
    assert meta["changelog"]["0.1.1"] == f"disks 0.1.1, made from {candidate.name} {candidate.version}"
    assert (z.get("disks") / "docs" / "training_curve.json").is_file()
    # the record names what was promoted even after the candidate's folder is gone: the installed weights
    # are the ones whose digest the history holds
    from ModelSelectorLib.provenance import file_digest
    from ModelSelectorLib.zoo.bundle import WEIGHTS_FILE

    good = validate_bundle(models["good"])
    assert history[1]["candidate_card"] == {"name": good.name, "version": good.version,
                                            "weights": file_digest(z.get("disks") / WEIGHTS_FILE)}  # fmt: skip
    assert info["source_card"] == history[1]["candidate_card"]
    assert history[2]["candidate_card"]["weights"] == file_digest(models["worse"] / WEIGHTS_FILE)
    # restore the previous version; nothing deleted; the split recorded in the catalog is the default
    assert restore(zoo, "disks") == {"task": "disks", "version": "0.1.0", "from": "0.1.1"}
    assert Zoo(zoo).current("disks") == "0.1.0" and (zoo / "models" / "disks" / "0.1.1").is_dir()
    again = promote(zoo, "disks", models["worse"], dry_run=True)  # the recorded split
    assert again["gate"]["n"] == 5 and Zoo(zoo).current("disks") == "0.1.0"  # dry run changes nothing
    with pytest.raises(
        BundleError, match=r"weights of disks 0\.1\.1, which the zoo already holds; .* --version 0\.1\.1"
    ):
        promote(zoo, "disks", models["good"], dry_run=True)  # back to 0.1.1 is a restore, not a third version
    with pytest.raises(ZooError, match="already current"):
        restore(zoo, "disks", "0.1.0")


def test_interrupted_promotion_keeps_a_consistent_catalog(models, tmp_path, monkeypatch):
    from ModelSelectorLib import atomic
    from ModelSelectorLib.zoo import Zoo

    zoo = tmp_path / "zoo"
    promote(zoo, "disks", models["bad"], models["split"])
    before = (zoo / "zoo.json").read_bytes()
    real = atomic.write_json

    def crash(target, data):
        if str(target).endswith("zoo.json"):
            raise KeyboardInterrupt  # the process is interrupted while the catalog is written
        return real(target, data)

    monkeypatch.setattr(atomic, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        promote(zoo, "disks", models["good"], models["split"])
    monkeypatch.setattr(atomic, "write_json", real)
    assert (zoo / "zoo.json").read_bytes() == before
    z = Zoo(zoo)
    assert z.current("disks") == "0.1.0" and z.versions("disks") == ["0.1.0"]
    assert sorted(p.name for p in (zoo / "models" / "disks").iterdir()) == ["0.1.0"]  # no half-copied version
    assert not list(zoo.glob(".tmp-*"))
    assert promote(zoo, "disks", models["good"], models["split"])["version"] == "0.1.1"  # retry works


def test_retrain_runs_the_same_gate(models, tmp_path):
    from ModelSelectorLib.zoo import Zoo

    zoo = tmp_path / "zoo"
    promote(zoo, "disks", models["bad"], models["split"])
    with pytest.raises(ZooError, match="has no model 'diskz' to retrain"):  # a mistyped task trains nothing
        retrain(zoo, "diskz", models["msd"], models["split"], {"epochs": 8})
    with pytest.raises(ZooError, match="no zoo folder there"):
        retrain(tmp_path / "no-zoo", "disks", models["msd"], models["split"])
    assert not (tmp_path / "no-zoo").exists() and Zoo(zoo).names() == ["disks"]
    res = retrain(zoo, "disks", models["msd"], models["split"], {"epochs": 8, "lr": 0.01})
    test_ids = {c["id"] for c in json.loads(models["split"].read_text(encoding="utf-8"))["cases"]}
    assert res["accepted"] and Zoo(zoo).current("disks") == "0.1.1"
    # the retrained bundle's folder is gone; the history names its recipe instead
    source = Zoo(zoo).version_info("disks")["source"]
    cases = f"{10 - len(test_ids)} cases of {models['msd'].resolve()} ({len(test_ids)} test case(s) left out)"
    assert source == f"retrained on {cases} with epochs=8, lr=0.01"
    assert Zoo(zoo).history("disks")[-1]["candidate"] == source
    # the candidate is recorded as retrained, not as a version that disks has
    assert Zoo(zoo).history("disks")[-1]["candidate_card"]["version"] == "retrained"
    curve = json.loads((Zoo(zoo).get("disks") / "docs" / "training_curve.json").read_text(encoding="utf-8"))
    seen = {c.split(".")[0] for c in curve["training_cases"] + curve["validation_cases"]}
    assert len(seen) == 10 - len(test_ids) and not seen & test_ids  # every case but the test cases
    assert Zoo(zoo).card("disks").validation_metrics["test_n_cases"] == len(test_ids)


def test_retrain_on_a_new_copy_of_the_data_leaves_the_test_cases_out_by_case_id(models, tmp_path):
    """A fresh export of the data (another folder, same case files plus new ones) never trains on the test cases:
    they are recognised by case id, not by path, and the gate is not refused for them."""
    from ModelSelectorLib.zoo import Zoo

    zoo = tmp_path / "zoo"
    promote(zoo, "disks", models["bad"], models["split"])
    fresh = tmp_path / "export"
    shutil.copytree(models["msd"], fresh)
    test_ids = {c["id"] for c in json.loads(models["split"].read_text(encoding="utf-8"))["cases"]}
    res = retrain(zoo, "disks", fresh, models["split"], {"epochs": 1})
    assert (
        f"retrained on {10 - len(test_ids)} cases of {fresh.resolve()} ({len(test_ids)} test case(s) left out)"
        in (res["candidate_bundle"])
    )
    if res["accepted"]:
        curve = json.loads(
            (Zoo(zoo).get("disks") / "docs" / "training_curve.json").read_text(encoding="utf-8")
        )
        assert not {c.split(".")[0] for c in curve["training_cases"] + curve["validation_cases"]} & test_ids


def test_retrain_on_an_nnunet_copy_of_the_data_leaves_the_test_cases_out_by_case_id(models, tmp_path):
    """nnU-Net v2 names a case's image CASE_0000 beside its label CASE: the case id is the label's, so the test
    cases of a split made from MSD files are recognised there too, and the new version records its cases' ids."""
    from ModelSelectorLib.ranking.promotion import seen_case_ids
    from ModelSelectorLib.zoo import Zoo

    zoo, nn = tmp_path / "zoo", tmp_path / "nnunet"
    promote(zoo, "disks", models["bad"], models["split"])
    (nn / "imagesTr").mkdir(parents=True)
    shutil.copytree(models["msd"] / "labelsTr", nn / "labelsTr")
    for label in (nn / "labelsTr").glob("*.nii.gz"):
        shutil.copy(
            models["msd"] / "imagesTr" / label.name,
            nn / "imagesTr" / label.name.replace(".nii.gz", "_0000.nii.gz"),
        )
    (nn / "dataset.json").write_text(json.dumps({"channel_names": {"0": "DX"}, "labels": {"background": 0, "disk": 1},
                                                 "numTraining": 10, "file_ending": ".nii.gz", "body_region": "CHEST"}))  # fmt: skip
    test_ids = {c["id"] for c in json.loads(models["split"].read_text(encoding="utf-8"))["cases"]}
    res = retrain(zoo, "disks", nn, models["split"], {"epochs": 1}, level=0.5)
    assert f"({len(test_ids)} test case(s) left out)" in res["candidate_bundle"]
    if res["accepted"]:
        assert not seen_case_ids(Zoo(zoo).get("disks")) & test_ids
    # a model trained on the nnU-Net folder records its cases by the same ids as a split names them
    from ModelSelectorLib.training.segmentation import TrainConfig, train_segmentation

    bundle = train_segmentation(nn, "nn", tmp_path / "nnzoo", TrainConfig.from_dict({**TINY, "epochs": 1}))
    assert seen_case_ids(bundle) == {f"disk_{i:02d}" for i in range(10)}


def test_a_gate_metric_the_models_do_not_have_is_refused_before_evaluating(models, tmp_path, monkeypatch):
    from ModelSelectorLib.errors import InputError
    from ModelSelectorLib.ranking import promotion

    monkeypatch.setattr(promotion, "evaluate_cases", lambda *a, **k: pytest.fail("evaluated"))
    with pytest.raises(InputError, match="'nsd' is not among the metrics of a segmentation model"):
        promote(tmp_path / "zoo", "disks", models["good"], models["split"], metric="nsd", dry_run=True)


def test_a_mistyped_zoo_is_named_and_not_made(models, tmp_path):
    with pytest.raises(ZooError, match="no zoo there; check --zoo"):
        promote(tmp_path / "zooo", "disks", models["good"])
    assert not (tmp_path / "zooo").exists()
    # with a split, a new zoo is kept only when something was promoted into it
    promote(tmp_path / "zooo", "disks", models["good"], models["split"], dry_run=True)
    with pytest.raises(DatasetError, match="selection split"):
        promote(tmp_path / "zooo", "disks", models["good"], models["split"].with_name("selection_split.json"))
    assert not (tmp_path / "zooo").exists()
    assert promote(tmp_path / "zooo", "disks", models["good"], models["split"])["version"]
    assert (tmp_path / "zooo" / "zoo.json").is_file()


def test_the_gate_refuses_the_selection_split_the_winner_was_chosen_on(models, tmp_path):
    selection = models["split"].with_name("selection_split.json")
    with pytest.raises(DatasetError, match="selection split, where the sweep chose its winner"):
        promote(tmp_path / "zoo", "disks", models["good"], selection, dry_run=True)
    promote(tmp_path / "zoo", "disks", models["bad"], models["split"])
    with pytest.raises(DatasetError, match="selection split"):  # before any training
        retrain(tmp_path / "zoo", "disks", models["msd"], selection, {"epochs": 1})


def test_cli_promote_refusal_prints_numbers(models, tmp_path, capsys):
    from ModelSelectorLib.provenance import file_digest
    from ModelSelectorLib.zoo.bundle import WEIGHTS_FILE, validate_bundle

    zoo = str(tmp_path / "zoo")
    split = str(models["split"])
    assert (
        main(
            ["promote", "--zoo", zoo, "--task", "disks", "--candidate", str(models["good"]), "--split", split]
        )
        == 0
    )
    capsys.readouterr()
    rc = main(["promote", "--zoo", zoo, "--task", "disks", "--candidate", str(models["bad"]), "--split", split,
               "--method", "bootstrap"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 1 and "REFUSED" in out and "candidate mean" in out and "current mean" in out
    assert "bootstrap 95% CI" in out and "stays at version 0.1.0" in out
    assert main(["restore", "--zoo", zoo, "--task", "disks"]) != 0  # only one version
    assert "nothing earlier" in capsys.readouterr().err
    assert main(["restore", "--zoo", zoo, "--task", "disks", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "* 0.1.0" in listing and "refuse" in listing
    bad = validate_bundle(models["bad"])
    sha = file_digest(models["bad"] / WEIGHTS_FILE)["sha256"][:12]
    assert (
        f"refused {bad.name} {bad.version} (weights sha256 {sha}; folder " in listing
    )  # what, not only where
    with pytest.raises(SystemExit) as refused:  # refused while parsing, before any model runs
        main(
            ["promote", "--zoo", zoo, "--task", "disks", "--candidate", str(models["good"]), "--level", "95"]
        )
    assert refused.value.code == 2 and "above 0 and below 1" in capsys.readouterr().err


def test_a_test_split_with_a_models_training_cases_is_refused(models, tmp_path):
    """Comparing on cases a model trained on would favour it: the gate refuses such a split, whether the
    candidate or the current version saw them."""
    from ModelSelectorLib.ranking.sweep import read_split
    from ModelSelectorLib.starter_zoo.recipes import METADATA_KEY
    from ModelSelectorLib.zoo import Zoo
    from ModelSelectorLib.zoo.bundle import read_metadata

    def trained_on_a_test_case(bundle):
        meta = read_metadata(bundle)
        meta[METADATA_KEY] = {"training_cases": [{"id": test_ids[0]}], "validation_cases": []}
        (bundle / "configs" / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")

    test_ids = [c["id"] for c in read_split(models["split"])["cases"]]
    candidate = tmp_path / "candidate"
    shutil.copytree(models["good"], candidate)
    trained_on_a_test_case(candidate)
    zoo = tmp_path / "zoo"
    with pytest.raises(DatasetError, match="training or validation cases"):
        promote(zoo, "disks", candidate, split=models["split"])
    result = promote(zoo, "disks", models["good"], split=models["split"])
    tested = (
        Zoo(zoo).card("disks").validation_metrics
    )  # the gate's test result is on the card as test figures
    assert tested["test_n_cases"] == len(test_ids) and "promotion gate" in tested["test_protocol"]
    assert tested["test_dice"] == pytest.approx(result["candidate"]["dice"])
    trained_on_a_test_case(Zoo(zoo).get("disks"))
    with pytest.raises(DatasetError, match="training or validation cases"):
        promote(zoo, "disks", models["bad"], split=models["split"])


def test_a_test_split_listing_a_case_twice_is_refused(models, tmp_path):
    """A case listed twice would count twice in the paired test (a refused candidate passed on a split with
    every case doubled)."""
    split = json.loads(Path(models["split"]).read_text(encoding="utf-8"))
    dataset = Path(models["split"]).parent / split["dataset"]
    doubled = tmp_path / "doubled.json"
    doubled.write_text(json.dumps({**split, "dataset": str(dataset.resolve()), "cases": split["cases"] * 2}))
    with pytest.raises(DatasetError, match="listed more than once; list each test case once"):
        promote(tmp_path / "zoo", "disks", models["good"], split=doubled)
    renamed = [{**c, "id": f"{c['id']}-again"} for c in split["cases"]]
    doubled.write_text(
        json.dumps({**split, "dataset": str(dataset.resolve()), "cases": split["cases"] + renamed})
    )
    with pytest.raises(DatasetError, match="an image listed more than once"):
        promote(tmp_path / "zoo", "disks", models["good"], split=doubled)


def test_a_promoted_build_keeps_its_own_provenance(models, tmp_path):
    """A candidate built by build-starter-zoo keeps its recipe, case lists and build time through the gate (they
    guard later promotions against its training cases); a sweep's candidate takes the data provenance of the
    version it replaces, without that version's case lists."""
    from ModelSelectorLib.starter_zoo.recipes import METADATA_KEY
    from ModelSelectorLib.zoo import Zoo
    from ModelSelectorLib.zoo.bundle import read_metadata

    def built(bundle, folder, recipe_hash):
        copy = tmp_path / folder
        shutil.copytree(bundle, copy)
        meta = read_metadata(copy)
        meta[METADATA_KEY] = {"recipe": "disks", "recipe_hash": recipe_hash, "licence": "CC-BY-4.0",
                              "training_cases": [{"id": f"trained-{recipe_hash}"}], "validation_cases": [],
                              "build_time_s": 12.5}  # fmt: skip
        (copy / "configs" / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")
        return copy

    zoo = tmp_path / "zoo"
    promote(zoo, "disks", built(models["bad"], "old", "aaa"), split=models["split"])
    assert promote(zoo, "disks", built(models["good"], "new", "bbb"), split=models["split"])["accepted"]
    block = read_metadata(Zoo(zoo).get("disks"))[METADATA_KEY]
    assert block["recipe_hash"] == "bbb" and block["training_cases"] == [{"id": "trained-bbb"}]
    assert block["build_time_s"] == 12.5 and block["promoted"]["over"] == "0.1.0"

    sweep_zoo = tmp_path / "sweep_zoo"
    promote(sweep_zoo, "disks", built(models["bad"], "old2", "aaa"), split=models["split"])
    assert promote(sweep_zoo, "disks", models["good"], split=models["split"])["accepted"]
    block = read_metadata(Zoo(sweep_zoo).get("disks"))[METADATA_KEY]
    assert block["recipe_hash"] == "aaa" and block["licence"] == "CC-BY-4.0" and "promoted" in block
    assert "training_cases" not in block and "build_time_s" not in block


def test_a_promotion_is_refused_when_the_task_changed_while_it_was_evaluated(models, tmp_path, monkeypatch):
    """Two promotions of one task at once: the second was gated against a version that is no longer current by
    the time it would be installed, so it is refused instead of replacing the first unseen."""
    from ModelSelectorLib.ranking import promotion
    from ModelSelectorLib.zoo import Zoo

    zoo = tmp_path / "zoo"
    promote(zoo, "disks", models["bad"], models["split"])
    promote(
        zoo, "disks", models["worse"], models["split"], min_improvement=-1.0, method="bootstrap", level=0.01
    )
    real_gate = promotion.gate

    def gate_while_another_restores(*args, **kwargs):
        restore(zoo, "disks", "0.1.0")  # another process moves the task meanwhile
        return real_gate(*args, **kwargs)

    monkeypatch.setattr(promotion, "gate", gate_while_another_restores)
    with pytest.raises(ZooError, match=r"disks changed while the candidate was evaluated \(its current version is "
                                       r"now 0\.1\.0, the gate compared with 0\.1\.1\); run promote again"):  # fmt: skip
        promote(zoo, "disks", models["good"], models["split"])
    assert Zoo(zoo).versions("disks") == ["0.1.0", "0.1.1"] and Zoo(zoo).current("disks") == "0.1.0"


def test_a_refusal_is_not_recorded_against_a_version_that_stopped_being_current(
    models, tmp_path, monkeypatch
):
    """A restore while the candidate was evaluated: the refusal said the task "stays at" a version that was no longer
    current, and went into the history, though the candidate was never compared with the current version."""
    from ModelSelectorLib.ranking import promotion
    from ModelSelectorLib.zoo import Zoo

    zoo = tmp_path / "zoo"
    promote(zoo, "disks", models["bad"], models["split"])
    promote(
        zoo, "disks", models["worse"], models["split"], min_improvement=-1.0, method="bootstrap", level=0.01
    )
    assert Zoo(zoo).current("disks") == "0.1.1"
    history = list(Zoo(zoo).history("disks"))
    real_gate = promotion.gate

    def gate_while_another_restores(*args, **kwargs):
        restore(zoo, "disks", "0.1.0")
        return real_gate(*args, **kwargs)

    monkeypatch.setattr(promotion, "gate", gate_while_another_restores)
    with pytest.raises(ZooError, match=r"the gate compared with 0\.1\.1\); run promote again"):
        promote(zoo, "disks", models["good"], models["split"], min_improvement=0.99)
    after = [e for e in Zoo(zoo).history("disks") if e not in history]
    assert [e["action"] for e in after] == ["restore"]  # no refusal against 0.1.1 recorded
    monkeypatch.setattr(promotion, "gate", real_gate)
    refused = promote(zoo, "disks", models["good"], models["split"], min_improvement=0.99)
    assert not refused["accepted"] and Zoo(zoo).history("disks")[-1]["compared_with"] == "0.1.0"


def test_a_promoted_card_never_shows_a_test_mean_beside_a_validation_figure_of_its_name():
    """The card of a one-label model showed the gate's test dice next to the candidate's validation dice_lungs:
    the test figures carry their own names and case count, and the candidate's figures stay as they were (a
    figure of an earlier test, read with the gate's case count, is left out)."""
    from ModelSelectorLib.models import runtime_class
    from ModelSelectorLib.ranking.promotion import _own_validation

    validation = {"dice": 0.49, "dice_lungs": 0.49, "hd95": 7.0, "validation_cases": 4, "weights": "best",
                  "test_dice": 0.3, "test_n_cases": 9}  # fmt: skip
    tested = runtime_class("segmentation").test_metrics({"dice": 0.41, "dice_lungs": 0.41}, 6, "test split")
    assert {**_own_validation(validation), **tested} == {
        "dice": 0.49, "dice_lungs": 0.49, "hd95": 7.0, "validation_cases": 4, "weights": "best",
        "test_dice": 0.41, "test_dice_lungs": 0.41, "test_n_cases": 6, "test_protocol": "test split",
    }  # fmt: skip


def test_retrain_refuses_data_whose_labels_come_out_in_another_order_before_training(models, tmp_path):
    """New data numbering the same structures otherwise trained fully and was refused only then."""
    from ModelSelectorLib.errors import DatasetError
    from ModelSelectorLib.zoo import Zoo

    zoo = tmp_path / "zoo"
    promote(zoo, "disks", models["bad"], models["split"])
    renamed = tmp_path / "renamed"
    shutil.copytree(models["msd"], renamed)
    meta = json.loads((renamed / "dataset.json").read_text(encoding="utf-8"))
    (value, name), *_ = [(k, v) for k, v in meta["labels"].items() if str(k) != "0"]
    meta["labels"][value] = f"{name} renamed"
    (renamed / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(DatasetError, match="number the labels in dataset.json in the same order"):
        retrain(zoo, "disks", renamed, models["split"], {"epochs": 1})
    assert Zoo(zoo).versions("disks") == ["0.1.0"]


def _as_release(bundle: Path, version: str) -> None:
    """A MONAI bundle's metadata.json given another ``version`` (a new release of it)."""
    meta = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    (bundle / "configs" / "metadata.json").write_text(json.dumps({**meta, "version": version}))


def _spleen_split(tmp_path: Path) -> Path:
    """A test split of 3 small synthetic CTs labelled 1 'spleen'."""
    from ModelSelectorLib.datasets import make_synthetic_msd
    from ModelSelectorLib.datasets.split_file import write_split

    msd = make_synthetic_msd(tmp_path / "msd", n_cases=3, profile="ct", seed=0, shape=(12, 16, 16),
                             label_values={1: 1}, labels={"0": "background", "1": "spleen"})  # fmt: skip
    cases = [{"id": f"case_{i:03d}", "image": f"imagesTr/case_{i:03d}.nii.gz", "label": f"labelsTr/case_{i:03d}.nii.gz"}
             for i in range(3)]  # fmt: skip
    return write_split(tmp_path / "test_split.json", msd, cases, {"1": "spleen"}, seed=0)


def test_a_new_release_of_an_imported_monai_bundle_goes_through_the_gate(tmp_path, capsys):
    """A MONAI bundle without a card (a new release of an imported model) is imported as `zoo add` would import
    it, with the task's name, modality and region, and gated like any candidate; the source stays untouched."""
    import torch
    from test_bundle_zoo import make_monai_bundle, make_net

    from ModelSelectorLib.zoo import Zoo

    (tmp_path / "r1").mkdir()
    (tmp_path / "r2").mkdir()
    first, _ = make_monai_bundle(tmp_path / "r1")
    release, _ = make_monai_bundle(tmp_path / "r2")
    torch.save(make_net(12).state_dict(), release / "models" / "model.pt")
    _as_release(release, "0.5.3")
    split = _spleen_split(tmp_path)
    zoo = tmp_path / "zoo"
    with pytest.raises(
        ZooError, match="cannot be the first version of spleen; add it with `modelselector zoo add"
    ):
        promote(zoo, "spleen", release, split=split)
    assert not zoo.exists()  # the refused promotion left no zoo behind
    assert main(["zoo", "init", "--zoo", str(zoo)]) == 0
    add = ["zoo", "add", str(first), "--zoo", str(zoo), "--name", "spleen", "--body-region", "ABDOMEN"]
    assert main(add) == 0
    capsys.readouterr()
    result = promote(zoo, "spleen", release, split=split, level=0.5)
    assert result["current"] is not None and result["gate"]["n"] == 3
    assert result["candidate_card"]["name"] == "spleen" and result["candidate_card"]["version"] == "0.5.3"
    event = Zoo(zoo).history("spleen")[-1]
    assert event["action"] == ("promote" if result["accepted"] else "refuse")
    assert event["candidate"] == "../r2/spleen_ct_segmentation"
    if result["accepted"]:
        promoted = Zoo(zoo).card("spleen")
        assert promoted.imported and promoted.body_region == "ABDOMEN"
    assert "modelselector" not in json.loads(
        (release / "configs" / "metadata.json").read_text(encoding="utf-8")
    )


def test_zoo_show_gives_an_imported_bundles_published_figures_as_the_publishers(tmp_path, capsys):
    from test_bundle_zoo import make_monai_bundle

    (tmp_path / "r1").mkdir()
    src, _ = make_monai_bundle(tmp_path / "r1")
    meta = json.loads((src / "configs" / "metadata.json").read_text(encoding="utf-8"))
    (src / "configs" / "metadata.json").write_text(json.dumps({**meta, "eval_metrics": {"mean_dice": 0.961}}))
    zoo = str(tmp_path / "zoo")
    assert main(["zoo", "init", "--zoo", zoo]) == 0
    assert main(["zoo", "add", str(src), "--zoo", zoo, "--name", "spleen", "--body-region", "ABDOMEN"]) == 0
    capsys.readouterr()
    assert main(["zoo", "show", "spleen", "--zoo", zoo]) == 0
    out = capsys.readouterr().out
    assert "published by the bundle (eval_metrics, not measured here): mean_dice=0.961" in out
    assert "n_training_cases: not stated (an imported MONAI bundle)" in out  # not 0
    readme = (Path(zoo) / "models" / "spleen" / "0.5.2" / "docs" / "README.md").read_text(encoding="utf-8")
    assert "- Training cases: not stated (an imported MONAI bundle)" in readme


def test_distances_on_pictures_without_a_pixel_size_are_named_in_pixels(models, tmp_path, monkeypatch):
    """A PNG has no mm: its HD95 and MSD are hd95_px and msd_px (a leaderboard or gate metric of their own), while
    a NIfTI of the same pixels with its spacing keeps hd95 in mm."""
    import numpy as np
    from ranking_helpers import SPACING, disk_case

    from ModelSelectorLib.io import Image, write_image
    from ModelSelectorLib.ranking.leaderboard import metric_problem
    from ModelSelectorLib.ranking.scoring import evaluate_cases
    from ModelSelectorLib.zoo import load_bundle

    img, lab = disk_case(123)
    picture = np.clip(img, 0, 255).astype(np.uint8)
    geo = {"origin": (0.0, 0.0), "direction": (1.0, 0.0, 0.0, 1.0)}
    write_image(Image(picture, (1.0, 1.0), **geo), tmp_path / "case.png")
    write_image(Image((lab * 255).astype(np.uint8), (1.0, 1.0), **geo), tmp_path / "case_mask.png")
    write_image(Image(img, SPACING, **geo), tmp_path / "case.nii.gz")
    write_image(Image(lab, SPACING, **geo), tmp_path / "case_mask.nii.gz")
    loaded = load_bundle(models["good"])
    png, nii = (
        evaluate_cases(loaded, [{"id": "c", "image": str(tmp_path / f"case{ext}"),
                                 "label": str(tmp_path / f"case_mask{ext}"), "label_values": values}],
                       {1: "disk"})[0]
        for ext, values in ((".png", {0: 0, 255: 1}), (".nii.gz", None))
    )  # fmt: skip
    assert png["distance_unit"] == "px" and {"hd95_px", "msd_px"} <= set(png) and "hd95" not in png
    assert "distance_unit" not in nii and {"hd95", "msd"} <= set(nii) and "hd95_px" not in nii
    assert metric_problem("segmentation", "hd95_px", {1: "disk"}) is None
    # a split of pictures has no hd95 in mm: refused before any model is evaluated, naming the pixel one
    from ModelSelectorLib.datasets.split_file import write_split
    from ModelSelectorLib.errors import InputError
    from ModelSelectorLib.ranking import promotion

    split = write_split(tmp_path / "png_split.json", tmp_path, [{"id": "case", "image": "case.png",
                        "label": "case_mask.png"}], {"1": "disk"}, seed=0)  # fmt: skip
    monkeypatch.setattr(promotion, "evaluate_cases", lambda *a, **k: pytest.fail("evaluated"))
    with pytest.raises(
        InputError, match="hd95_px, msd_px; the split's images are pictures without a pixel size"
    ):
        promote(tmp_path / "zoo", "disks", models["good"], split, metric="hd95", dry_run=True)


def test_a_release_that_needs_trust_is_gated_with_promote_trust_and_trusted_only_when_promoted(tmp_path):
    """A new release whose config computes its network (MONAI's own code) was a dead end: promote had no --trust,
    and `zoo add --trust` made it current without a comparison."""
    import bad_inputs as bad
    import torch

    from ModelSelectorLib.zoo import Zoo
    from ModelSelectorLib.zoo.trust import recorded_trust

    def computed(c: dict) -> None:  # (a config of its own: no other test's trust applies to it)
        c["label_names"] = ["background", "spleen"]
        c["network_def"]["out_channels"] = "$len(@label_names)"
        c["release_notes"] = "a new release that needs trust"

    (tmp_path / "r1").mkdir()
    zoo = Zoo.create(tmp_path / "zoo")
    zoo.add(bad.threshold_bundle(tmp_path / "r1"), name="spleen", body_region="ABDOMEN")
    release = bad.edit_inference(bad.threshold_bundle(tmp_path / "r2"), computed)
    torch.save({"weight": torch.tensor([0.0, 1.0]).view(2, 1, 1, 1, 1), "bias": torch.tensor([0.0, -0.4])},
               release / "models" / "model.pt")  # fmt: skip
    _as_release(release, "0.6.0")
    split = _spleen_split(tmp_path)
    with pytest.raises(BundleError, match="promote --trust"):
        promote(zoo.path, "spleen", release, split)
    refused = promote(zoo.path, "spleen", release, split, trust=True, dry_run=True)
    assert refused["gate"]["n"] == 3 and not recorded_trust(release)  # evaluated, and no trust recorded


def test_a_read_only_zoo_is_refused_before_the_candidate_is_evaluated(models, tmp_path, monkeypatch):
    """promote evaluated both models on the whole split (minutes on a real one) before it found that it could not
    write the zoo."""
    import stat

    from ModelSelectorLib.errors import OutputError
    from ModelSelectorLib.ranking import promotion

    zoo = tmp_path / "zoo"
    promote(zoo, "disks", models["bad"], models["split"])

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated before the zoo was checked")

    monkeypatch.setattr(promotion, "evaluate_cases", no_evaluation)
    zoo.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(OutputError, match=r"write-protected \(read-only\)"):
            promote(zoo, "disks", models["good"], models["split"])
    finally:
        zoo.chmod(stat.S_IRWXU)
