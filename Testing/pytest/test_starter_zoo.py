"""The starter zoo: the bundled zoo, its index and samples, and the recipe machinery that builds them.

The bundled-zoo tests read only what ships in ``Resources/`` (no ``../shared/data``); the recipe tests build
a tiny data folder of their own and train a real (very small) MONAI network through the same code path as
``modelselector build-starter-zoo``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ModelSelectorLib.errors import DatasetError, ModelSelectorError
from ModelSelectorLib.io import Image, read_image, write_image
from ModelSelectorLib.starter_zoo import build as build_module  # noqa: E402
from ModelSelectorLib.starter_zoo.build import (  # noqa: E402
    build_index,
    build_landmark_model,
    build_model,
    build_prototypes,
    build_starter_zoo,
    cross_validate_development,
    exemplar_images,
    prepare_dataset,
    remap_labels,
    write_test_split,
)
from ModelSelectorLib.starter_zoo.heldout import score_bundle  # noqa: E402
from ModelSelectorLib.starter_zoo.recipes import (  # noqa: E402
    ANATOMY,
    LANDMARK_RECIPES,
    METADATA_KEY,
    RECIPES,
    Case,
    LabelSpec,
    Recipe,
    fixed_split,
    recipe_hash,
    recipes,
    terminology,
)
from ModelSelectorLib.zoo import Zoo
from ModelSelectorLib.zoo.bundle import load_bundle, read_metadata, validate_bundle
from ModelSelectorLib.zoo.card import BODY_REGIONS, MODALITIES

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "Resources" / "zoo"
SAMPLES = ROOT / "Resources" / "samples"
#: bundled sample -> the model family expected to rank first
SAMPLE_FAMILY = {"ct_abdomen.nii.gz": ("CT", "ABDOMEN"), "cxr_chest.png": ("DX", "CHEST")}


def _triplet_ok(value: object) -> bool:
    return (
        isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, str) and v for v in value)
    )


@pytest.fixture(scope="module")
def zoo() -> Zoo:
    assert (ZOO / "zoo.json").is_file(), "Resources/zoo is missing; run `modelselector build-starter-zoo`"
    return Zoo(ZOO)


# --- the recipe table -----------------------------------------------------------------------------------
def test_recipe_table_is_consistent():
    names = [r.name for r in RECIPES]
    assert len(names) == len(set(names)) >= 6
    pairs = set()
    for r in RECIPES:
        r.check()
        assert r.modality in MODALITIES
        assert all(part in BODY_REGIONS for part in r.body_region.split(";"))
        pairs.add((r.modality, r.body_region))
        assert r.provenance and r.licence and r.source and r.intended_input
        assert [lb.value for lb in r.labels] == list(range(1, len(r.labels) + 1))
        for lb in r.labels:
            assert _triplet_ok(lb.terminology["category"]) and _triplet_ok(lb.terminology["type"])
            assert lb.terminology["type"][0] == "SCT" and lb.terminology["type"][1].isdigit()
            assert len(lb.color) == 3 and all(0 <= c <= 1 for c in lb.color)
        given = [r.train.get(k) for k in ("roi_size", "target_spacing") if r.train.get(k)]  # else planned
        assert all(len(v) == r.spatial_dims for v in given)
    assert len(pairs) >= 5  # several modality x region pairs


def test_recipes_selects_by_name_and_refuses_unknown():
    assert [r.name for r in recipes(["dx-chest-lungs"])] == ["dx-chest-lungs"]
    with pytest.raises(ModelSelectorError, match="unknown starter-zoo model"):
        recipes(["no-such-model"])


def test_remap_labels_maps_sources_and_binarises_masks():
    src = np.array([[0, 5, 1, 52], [6, 6, 2, 99]], np.uint8)
    labels = (
        LabelSpec(1, "Liver", (1, 0, 0), {}, (5,)),
        LabelSpec(2, "Stomach", (0, 1, 0), {}, (6, 2)),
    )
    assert remap_labels(src, labels).tolist() == [[0, 1, 0, 0], [2, 2, 2, 0]]
    mask = np.array([[0, 255], [255, 0]], np.uint8)
    assert remap_labels(mask, (LabelSpec(1, "Lungs", (0, 0, 1), {}),)).tolist() == [[0, 1], [1, 0]]


# --- the recipe machinery on a tiny data folder ---------------------------------------------------------
def _volume(seed: int, shape: tuple[int, int, int] = (12, 24, 24)) -> tuple[Image, Image]:
    rng = np.random.default_rng(seed)
    img = rng.normal(40.0, 10.0, shape).astype(np.float32) - 1000.0 * (rng.random(shape) < 0.0)
    img[:, :, :3] = -1000.0
    lab = np.zeros(shape, np.uint8)
    lab[3:9, 5:14, 6:15] = 5  # "liver" in the source ids
    lab[4:8, 15:21, 14:20] = 6  # "stomach"
    lab[0, 0, 0] = 77  # a structure the recipe ignores
    img[lab == 5] += 150.0
    img[lab == 6] -= 120.0
    geo = dict(
        spacing=(1.5, 1.2, 3.0),
        origin=(-20.0, 11.0, 4.5),
        direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0, 0, 1.0),
    )
    return Image(img, **geo), Image(lab, **geo)


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for i in range(3):
        image, label = _volume(i)
        write_image(image, root / "vol" / f"case{i}.nii.gz")
        write_image(label, root / "vol" / f"case{i}_seg.nii.gz")
    png = np.zeros((32, 32), np.uint8)
    png[8:24, 6:14] = 255
    (root / "png").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray((png // 2 + 40).astype(np.uint8)), str(root / "png" / "x.png"))
    sitk.WriteImage(sitk.GetImageFromArray(png), str(root / "png" / "x_mask.png"))
    return root


def _tiny_recipe(**changes: object) -> Recipe:
    cases = [Case(f"case{i}", f"vol/case{i}.nii.gz", f"vol/case{i}_seg.nii.gz") for i in range(3)]
    recipe = Recipe(
        name="tiny-organs", version="1.0.0", modality="CT", body_region="ABDOMEN",
        labels=(LabelSpec(1, "Liver", (0.9, 0.5, 0.4), terminology(ANATOMY, ("SCT", "10200004", "Liver")), (5,)),
                LabelSpec(2, "Stomach", (0.8, 0.6, 0.2), terminology(ANATOMY, ("SCT", "69695003", "Stomach")),
                             (6,))),
        cases=fixed_split(cases[:2], cases[2:]),
        train={"channels": (4, 8), "roi_size": (16, 16, 8), "target_spacing": (1.5, 1.5, 3.0), "intensity": "ct",
               "a_min": -200.0, "a_max": 300.0, "epochs": 2, "batch_size": 1, "num_samples": 2, "augment": False},
        provenance="threshold of a synthetic phantom", source="synthetic test volumes", licence="CC0-1.0",
        intended_input="test volumes",
    )  # fmt: skip
    return dataclasses.replace(recipe, **changes)


def test_prepare_dataset_writes_msd_with_held_out_split(tiny_data: Path, tmp_path: Path):
    from ModelSelectorLib.datasets import load_msd
    from ModelSelectorLib.training.segmentation import split_cases

    recipe = _tiny_recipe()
    for seed in (0, 3):
        prep = prepare_dataset(recipe, tiny_data, tmp_path / f"msd{seed}", seed=seed)
        ds = load_msd(prep["root"])
        assert ds.labels == {0: "background", 1: "Liver", 2: "Stomach"}
        assert ds.raw["terminology"]["1"]["type"] == ["SCT", "10200004", "Liver"]
        _, val_idx = split_cases(len(ds.training), prep["val_fraction"], seed)
        assert [ds.training[i]["image"].name for i in val_idx] == [
            "case2.nii.gz"
        ]  # exactly the recipe's val case
    label = read_image(prep["root"] / "labelsTr" / "case0.nii.gz", check_content=False)
    src = read_image(tiny_data / "vol" / "case0.nii.gz")
    assert sorted(np.unique(label.array).tolist()) == [0, 1, 2]  # 5 -> 1, 6 -> 2, 77 dropped
    assert label.spacing == pytest.approx(src.spacing) and label.origin == pytest.approx(src.origin)
    assert label.direction == pytest.approx(src.direction)
    assert prep["hash"] != prepare_dataset(recipe, tiny_data, tmp_path / "other", seed=1)["hash"]


def test_prepare_dataset_binarises_png_masks(tiny_data: Path, tmp_path: Path):
    recipe = _tiny_recipe(
        name="tiny-lungs", modality="DX", body_region="CHEST",
        labels=(LabelSpec(1, "Lungs", (0.7, 0.6, 0.5), terminology(ANATOMY, ("SCT", "39607008", "Lung"))),),
        cases=fixed_split([Case("x", "png/x.png", "png/x_mask.png")]),
        train={"channels": (4, 8), "roi_size": (16, 16), "target_spacing": (1.0, 1.0), "epochs": 1},
    )  # fmt: skip
    prep = prepare_dataset(recipe, tiny_data, tmp_path / "msd2d")
    label = read_image(prep["root"] / "labelsTr" / "x.nii.gz", check_content=False)
    assert label.ndim == 2 and sorted(np.unique(label.array).tolist()) == [0, 1]
    assert int(label.array.sum()) == 16 * 8


def test_missing_source_files_are_named(tmp_path: Path):
    with pytest.raises(DatasetError, match=r"missing under .*--data"):
        prepare_dataset(_tiny_recipe(), tmp_path / "empty", tmp_path / "msd")


def test_build_model_completes_card_and_resumes(tiny_data: Path, tmp_path: Path):
    recipe = _tiny_recipe()
    zoo_dir, work = tmp_path / "zoo", tmp_path / "work"
    first = build_model(recipe, tiny_data, zoo_dir, work, seed=0, num_threads=1)
    assert first["status"] == "built"
    zoo = Zoo(zoo_dir)
    card = validate_bundle(zoo.get("tiny-organs"))
    assert card.license == "CC0-1.0" and card.n_training_cases == 2 and card.seed == 0
    assert card.validation_metrics["validation_cases"] == "case2"
    assert isinstance(card.validation_metrics["dice"], float)
    assert "threshold of a synthetic phantom" in card.training_data
    assert [lb["terminology"]["type"][1] for lb in card.labels] == ["10200004", "69695003"]
    block = read_metadata(zoo.get("tiny-organs"))[METADATA_KEY]
    assert block["label_provenance"] == recipe.provenance and block["validation_cases"][0]["id"] == "case2"
    # same recipe and seed: skipped; another seed: rebuilt in place (one version only)
    assert build_model(recipe, tiny_data, zoo_dir, work, seed=0)["status"] == "skipped"
    assert build_model(recipe, tiny_data, zoo_dir, work, seed=1, num_threads=1)["status"] == "built"
    zoo.reload()
    assert zoo.versions("tiny-organs") == ["1.0.0"] and validate_bundle(zoo.get("tiny-organs")).seed == 1
    # a new recipe version goes in beside the earlier one, which stays for restore
    newer = dataclasses.replace(recipe, version="1.0.1", train={**recipe.train, "precision": "bf16"})
    assert build_model(newer, tiny_data, zoo_dir, work, seed=1, num_threads=1)["status"] == "built"
    zoo.reload()
    assert zoo.versions("tiny-organs") == ["1.0.0", "1.0.1"] and zoo.current("tiny-organs") == "1.0.1"
    # the card says how the weights were trained
    readme, earlier = ((zoo.get("tiny-organs", v) / "docs" / "README.md").read_text(encoding="utf-8")
                       for v in ("1.0.1", "1.0.0"))  # fmt: skip
    assert "Forward pass trained in bf16" in readme and "Forward pass" not in earlier
    event = zoo.history("tiny-organs")[-1]
    assert event["action"] == "build" and event["from"] == "1.0.0" and event["version"] == "1.0.1"
    assert event["recipe_hash"] == read_metadata(zoo.get("tiny-organs"))[METADATA_KEY]["recipe_hash"]
    assert zoo.previous("tiny-organs") == "1.0.0"
    # retraining the earlier version refreshes it in place, keeps its place in the order of versions (its
    # "added" date) and leaves the newer one current
    added = zoo.version_info("tiny-organs", "1.0.0")["added"]
    assert (
        build_model(recipe, tiny_data, zoo_dir, work, seed=1, force=True, num_threads=1)["status"] == "built"
    )
    zoo.reload()
    assert zoo.versions("tiny-organs") == ["1.0.0", "1.0.1"] and zoo.current("tiny-organs") == "1.0.1"
    refreshed = zoo.version_info("tiny-organs", "1.0.0")
    assert refreshed["added"] == added and refreshed["rebuilt"] >= added
    assert len(zoo.history("tiny-organs")) == 1


def test_single_case_model_reports_no_validation(tiny_data: Path, tmp_path: Path):
    recipe = _tiny_recipe(cases=fixed_split([Case("case0", "vol/case0.nii.gz", "vol/case0_seg.nii.gz")]))
    build_model(recipe, tiny_data, tmp_path / "zoo", tmp_path / "work", num_threads=1)
    metrics = Zoo(tmp_path / "zoo").card("tiny-organs").validation_metrics
    assert metrics["validation"] == "none: single case" and "dice" not in metrics
    assert "training_dice" in metrics


# --- the bundled zoo ------------------------------------------------------------------------------------
def test_bundled_zoo_cards_are_complete(zoo: Zoo):
    assert sorted(zoo.names()) == sorted(r.name for r in recipes() if r.bundled)
    for name in zoo.names():
        path = zoo.get(name)
        card = validate_bundle(path)
        assert not card.synthetic and card.license and card.n_training_cases >= 1
        assert (path / "docs" / "README.md").is_file()
        block = read_metadata(path)[METADATA_KEY]
        assert block["label_provenance"] and block["licence"] == card.license and block["recipe_hash"]
        if "promoted" in block:  # upgraded through the gate
            assert block["promoted"]["over"] in zoo.versions(name) and block["promoted"]["evaluation"]["gate"]
            assert zoo.version_info(name)["promoted"] == block["promoted"]["promoted"]
        if "training_cases" in block:  # built by build-starter-zoo (also when promoted afterwards)
            assert len(block["training_cases"]) == card.n_training_cases
        else:  # a sweep's model, promoted: its cases are in its training curve
            assert "promoted" in block
            curve = json.loads((path / "docs" / "training_curve.json").read_text(encoding="utf-8"))
            assert len(curve["training_cases"]) == card.n_training_cases
        if card.task_type == "landmarks":
            # scored on the comparison's validation and test images, none of them trained on
            assert {"val_mre_mm", "test_mre_mm", "test_sdr_4"} <= set(card.validation_metrics)
            ids = {
                part: {c["id"] for c in block[part]}
                for part in ("training_cases", "validation_cases", "check_cases")
            }
            assert not ids["training_cases"] & (ids["validation_cases"] | ids["check_cases"])
            assert all(
                c["image"].endswith(".png") and c["label"].endswith("_landmarks.json")
                for c in block["check_cases"]
            )
            assert len(card.labels) == len({lb["name"] for lb in card.labels}) >= 10
            continue
        assert (
            card.validation_metrics.get("validation") == "none: single case"
            or "dice" in card.validation_metrics
        )
        for lb in card.labels:
            assert lb["name"] and len(lb["color"]) == 3
            assert _triplet_ok(lb["terminology"]["category"]) and _triplet_ok(lb["terminology"]["type"])


def test_bundled_data_free_prototypes_are_what_the_build_makes(zoo: Zoo):
    """Every current model's data-free prototypes were synthesised with the library's inversion settings (so
    ``build-starter-zoo`` reproduces them), and with the encoder term exactly where the encoder has a class of
    the card's domain."""
    import dataclasses

    from ModelSelectorLib.selection.encoder import default_encoder
    from ModelSelectorLib.selection.encoder_guide import domain_classes
    from ModelSelectorLib.selection.inversion import InversionSettings
    from ModelSelectorLib.selection.prototypes import load_prototypes

    classes = default_encoder().classes
    for name in zoo.names():
        card = zoo.card(name)
        meta = load_prototypes(zoo.get(name)).meta["data-free"]
        assert meta["settings"] == dataclasses.asdict(InversionSettings()), name
        expected = [classes[i] for i in domain_classes(classes, card)]
        assert meta["encoder_classes"] == expected, name
        assert (meta["encoder_domain"] or 0.0) > 0.5 if expected else meta["encoder_domain"] is None, name


def test_bundled_resources_stay_small():
    total = sum(p.stat().st_size for p in (ROOT / "Resources").rglob("*") if p.is_file())
    assert total < 80 * 1024 * 1024


def _index_module():
    return pytest.importorskip("ModelSelectorLib.selection.index", reason="the index module is not available")


def test_bundled_index_agrees_with_catalog(zoo: Zoo):
    from ModelSelectorLib.selection.index import load_index
    from ModelSelectorLib.selection.prototypes import has_prototypes, load_prototypes

    idx = load_index(ZOO)
    assert idx.problems(zoo) == []  # every model indexed at its current version, prototypes not stale
    assert set(idx.model_names()) == set(zoo.names())
    indexed = {(str(e["model"]), str(e["origin"])) for e in idx.items.values()}
    assert {m for m, _ in indexed} <= set(zoo.names())  # every prototype belongs to a catalogued bundle
    for name in zoo.names():
        assert has_prototypes(zoo.get(name))
        assert set(load_prototypes(zoo.get(name)).origins()) == {"exemplar", "data-free"}
        assert (name, "exemplar") in indexed and (name, "data-free") in indexed
    assert idx.calibration.get("settings")


@pytest.mark.parametrize("sample", sorted(SAMPLE_FAMILY))
def test_select_ranks_expected_family_first(zoo: Zoo, sample: str):
    from ModelSelectorLib.selection.selector import select

    selection = select(SAMPLES / sample, zoo=ZOO)
    top = selection.models[0]
    assert (top.modality, top.body_region) == SAMPLE_FAMILY[sample], selection.to_json_dict()
    assert selection.fits and top.fits


def test_a_tilted_acquisition_of_the_sample_ct_is_selected_as_the_straight_one(zoo: Zoo):
    """The sample CT resampled onto a grid tilted 20 degrees about x and 15 about z (the anatomy where it was, air
    outside the old field): its views used to span the box around the tilted corners, the body shrank in every
    one, and the abdomen model fell from 0.985 to 0.39 ("no model fits")."""
    import SimpleITK as sitk

    from ModelSelectorLib.io.image import Image
    from ModelSelectorLib.selection.selector import select

    ct = sitk.ReadImage(str(SAMPLES / "ct_abdomen.nii.gz"))
    tilt = np.reshape(sitk.Euler3DTransform((0, 0, 0), np.deg2rad(20), 0, np.deg2rad(15)).GetMatrix(), (3, 3))
    direction = tilt @ np.reshape(ct.GetDirection(), (3, 3))
    size, spacing = np.asarray(ct.GetSize()), np.asarray(ct.GetSpacing())
    centre = np.asarray(ct.TransformContinuousIndexToPhysicalPoint([float(v) for v in (size - 1) / 2]))
    grid = sitk.Image([int(v) for v in size], ct.GetPixelID())
    grid.SetSpacing(ct.GetSpacing())
    grid.SetDirection([float(v) for v in direction.ravel()])
    grid.SetOrigin([float(v) for v in centre - direction @ ((size - 1) / 2 * spacing)])
    tilted = sitk.Resample(ct, grid, sitk.Transform(), sitk.sitkLinear, -1024)
    straight, oblique = (select(Image.from_sitk(im), zoo=ZOO).models[0] for im in (ct, tilted))
    assert straight.name == oblique.name == "ct-abdomen-organs" and oblique.fits
    assert oblique.score > straight.score - 0.05, (oblique.score, straight.score)


def test_indexing_a_model_again_keeps_its_operating_point_while_its_prototypes_are_the_same(tmp_path: Path):
    """`index add` of an indexed model (the step `prototypes` names after a refresh) dropped its calibrated operating
    point for the pooled one even when nothing had changed: ct-head-bone's went from 5.84 to 1.19, and a breast MR
    then listed it first at 0.89, "needs Hounsfield units"."""
    import shutil

    from ModelSelectorLib.cli import main
    from ModelSelectorLib.selection.index import load_index
    from ModelSelectorLib.selection.prototypes import load_prototypes

    copy = tmp_path / "zoo"
    shutil.copytree(ZOO, copy)
    before = load_index(copy).operating_points("ct-head-bone")
    assert before and not any(p["pooled"] for p in before.values())
    assert main(["index", "add", "--zoo", str(copy), "--model", "ct-head-bone"]) == 0
    idx = load_index(copy)
    assert idx.operating_points("ct-head-bone") == before
    # other prototypes of the model (another digest): calibrated without them, it takes the pooled point
    pset = load_prototypes(Zoo(copy).get("ct-head-bone"))
    pset.model, pset.version = "ct-head-bone", Zoo(copy).card("ct-head-bone").version
    idx.add_prototypes(pset, digest="other prototypes")
    assert idx.operating_points("ct-head-bone") == {}


def test_apply_bundled_model_to_sample_keeps_geometry(zoo: Zoo):
    from ModelSelectorLib.models.segmentation import apply_model

    image = read_image(SAMPLES / "cxr_chest.png")
    labels = apply_model(load_bundle(zoo.get("dx-chest-lungs")), image)
    assert labels.array.shape == image.array.shape and labels.array.dtype == np.uint8
    assert labels.spacing == pytest.approx(image.spacing) and labels.origin == pytest.approx(image.origin)
    assert labels.direction == pytest.approx(image.direction)
    truth = read_image(SAMPLES / "cxr_chest_lungmask.png", check_content=False).array > 0
    pred = labels.array == 1
    dice = 2.0 * float((pred & truth).sum()) / float(pred.sum() + truth.sum())
    assert dice > 0.8  # a held-out radiograph: the lungs are found


def test_bundled_landmark_model_finds_the_lung_borders_on_the_sample(zoo: Zoo, tmp_path: Path):
    from scipy import ndimage

    from ModelSelectorLib.apply import apply_to_file
    from ModelSelectorLib.io.markups import read_markups

    out = apply_to_file(ZOO, "dx-chest-landmarks", SAMPLES / "cxr_chest.png", tmp_path / "cxr.mrk.json")
    points_lps, names = read_markups(out)
    assert names == zoo.card("dx-chest-landmarks").label_names
    image = read_image(SAMPLES / "cxr_chest.png")
    # LPS millimetres back to pixels (x, y) of the PNG, whose geometry the markups keep
    m = image.ijk_to_lps()
    xy = np.linalg.solve(m[:2, :2], (points_lps[:, :2] - m[:2, 2]).T).T
    mask = read_image(SAMPLES / "cxr_chest_lungmask.png", check_content=False).array > 0
    border = mask ^ ndimage.binary_erosion(mask)
    dist = ndimage.distance_transform_edt(~border)
    lung = np.array([n.startswith(("RL_", "LL_")) for n in names])
    ix = np.clip(np.round(xy[lung]).astype(int), 0, np.array(mask.shape[::-1]) - 1)
    on_border = dist[ix[:, 1], ix[:, 0]]
    assert np.median(on_border) < 12, on_border  # pixels (0.7 mm) from the lung mask's border
    # the patient's right lung is on the image's left in a PA radiograph
    right = np.array([n.startswith("RL_") for n in names])
    left = np.array([n.startswith("LL_") for n in names])
    assert xy[right, 0].mean() < mask.shape[1] / 2 < xy[left, 0].mean()


def test_apply_warns_of_an_image_the_model_does_not_fit_and_of_an_inverted_radiograph(tmp_path: Path):
    """The landmark model wrote tidy lungs and a heart on an inverted radiograph (a mean error of 92 px instead of
    6) and on a CT slice saved as a picture, without a word; `select` already knew neither fits."""
    import SimpleITK as sitk

    from ModelSelectorLib.apply import apply_to_file

    xray = sitk.ReadImage(str(SAMPLES / "cxr_chest.png"))
    inverted = tmp_path / "inverted.png"
    sitk.WriteImage(sitk.InvertIntensity(xray, 255), str(inverted))
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLES / "ct_abdomen.nii.gz")))
    middle = ct[ct.shape[0] // 2].astype(float)
    slice_png = tmp_path / "ct_slice.png"
    sitk.WriteImage(
        sitk.GetImageFromArray(np.clip((middle + 200) / 450 * 255, 0, 255).astype(np.uint8)), str(slice_png)
    )
    said: dict[str, list[str]] = {}
    for path in (SAMPLES / "cxr_chest.png", inverted, slice_png):
        warnings = said.setdefault(path.name, [])
        apply_to_file(
            ZOO, "dx-chest-landmarks", path, tmp_path / f"{path.stem}.mrk.json", warn=warnings.append
        )
    assert said["cxr_chest.png"] == []
    (on_inverted,) = said["inverted.png"]
    assert (
        "the selector does not find that it fits this image" in on_inverted
        and "looks inverted" in on_inverted
    )
    (on_ct,) = said["ct_slice.png"]
    assert "does not find that it fits" in on_ct and "inverted" not in on_ct
    # select says so too, of the picture none fits as it is
    from ModelSelectorLib.selection.selector import select

    upright, flipped = select(SAMPLES / "cxr_chest.png", zoo=ZOO), select(inverted, zoo=ZOO)
    assert upright.fits and upright.fits_once_inverted == []
    assert not flipped.fits and {"dx-chest-lungs", "dx-chest-landmarks"} <= set(flipped.fits_once_inverted)
    assert "It looks inverted: " in flipped.to_text() and flipped.to_json_dict()["fits_once_inverted"]


def test_apply_warns_when_a_volume_shows_far_less_than_the_model_was_trained_on(tmp_path: Path):
    from ModelSelectorLib.apply import apply_to_file
    from ModelSelectorLib.io import write_image

    rng = np.random.default_rng(0)
    eye = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    for shape, expected in (
        ((36, 50, 35), 0),
        ((12, 12, 12), 1),
    ):  # (z, y, x) at 1 mm: a crop; a sliver of one
        path = tmp_path / f"mr_{shape[0]}.nii.gz"
        write_image(
            Image(rng.normal(100, 20, shape).astype(np.float32), (1.0, 1.0, 1.0), (0, 0, 0), eye), path
        )
        said: list[str] = []
        out = apply_to_file(ZOO, "mr-hippocampus", path, tmp_path / f"{path.stem}.seg.nrrd", warn=said.append)
        said = [w for w in said if "the selector" not in w]  # noise fits no model (the test above)
        assert out.is_file() and len(said) == expected, said  # applied all the same
    assert said[0].startswith("mr-hippocampus: the image spans about 12 mm across, the model's training inputs "
                              "42 mm; its output may be meaningless: give it a scan")  # fmt: skip
    # a crop of the right size, but a CT: air at -1000 HU around 40 HU tissue
    ct = (np.where(rng.random((36, 50, 35)) < 0.3, -1000.0, 40.0) + rng.normal(0, 10, (36, 50, 35))).astype(
        np.float32
    )
    write_image(Image(ct, (1.0, 1.0, 1.0), (0, 0, 0), eye), tmp_path / "ct.nii.gz")
    said = []
    apply_to_file(ZOO, "mr-hippocampus", tmp_path / "ct.nii.gz", tmp_path / "ct.seg.nrrd", warn=said.append)
    said = [w for w in said if "the selector" not in w]
    assert len(said) == 1 and said[0].startswith("mr-hippocampus: the model takes MR, and 30% of the image's "
                                                 "voxels lie below -500"), said  # fmt: skip
    assert said[0].endswith("its output may be meaningless: the image looks like a CT in Hounsfield units; "
                            "choose a CT model.")  # fmt: skip


def test_apply_takes_the_dimensions_each_model_was_made_for(tmp_path: Path):
    from ModelSelectorLib.apply import apply_to_file
    from ModelSelectorLib.errors import InputError

    rng = np.random.default_rng(1)
    slice_path, volume_path = tmp_path / "slice.nii.gz", tmp_path / "volume.nii.gz"
    lone = Image(
        rng.normal(100, 20, (64, 80)).astype(np.float32), (1.5, 1.5), (-20.0, 35.0), (1.0, 0.0, 0.0, 1.0)
    )
    write_image(lone, slice_path)
    write_image(Image(rng.normal(100, 20, (6, 64, 80)).astype(np.float32), (1.5, 1.5, 8.0), (0.0,) * 3,
                      (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)), volume_path)  # fmt: skip
    # a 3D network on 40-slice patches: a lone slice would be padded into a patch; refused before any output
    out = tmp_path / "hippocampus.seg.nrrd"
    with pytest.raises(InputError, match=r"mr-hippocampus takes 3D volumes \(its patches span 40 slices\) and "
                                         r"the input is a single 2D slice; give it the whole volume"):  # fmt: skip
        apply_to_file(ZOO, "mr-hippocampus", slice_path, out)
    assert not out.exists()
    # the cardiac model works slice by slice: one short-axis slice is a whole input, in the slice's geometry
    seg = read_image(
        apply_to_file(ZOO, "mr-cardiac", slice_path, tmp_path / "cardiac.seg.nrrd"), check_content=False
    )
    assert seg.size[:2] == (80, 64) and np.allclose(seg.spacing[:2], (1.5, 1.5))
    assert np.allclose(seg.origin[:2], (-20.0, 35.0))
    # a 2D model and a volume of several slices
    with pytest.raises(
        InputError, match="dx-chest-lungs takes 2D images and the input is a volume of 6 slices"
    ):
        apply_to_file(ZOO, "dx-chest-lungs", volume_path, tmp_path / "lungs.seg.nrrd")


def test_select_says_which_models_that_need_the_volume_apply_can_still_take_a_lone_slice(zoo: Zoo):
    """A slice-wise 3D model needs the volume for its figures and fit decision, yet ``apply`` takes a lone
    slice; ``select`` says both, and says it only of the models whose runtime really takes the slice."""
    from ModelSelectorLib.errors import InputError
    from ModelSelectorLib.models.registry import runtime_for
    from ModelSelectorLib.selection.selector import select
    from ModelSelectorLib.zoo import load_bundle

    rng = np.random.default_rng(2)
    lone = Image(
        rng.normal(100, 20, (64, 80)).astype(np.float32), (1.5, 1.5), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)
    )
    sel = select(lone, zoo=ZOO, top_k=None, threshold=0.0)  # every score passes: only the input decides
    by_name = {m.name: m for m in sel.models}
    assert {"mr-cardiac", "mr-brain-flair-lesion", "mr-hippocampus"} <= set(sel.needs_volume)
    for name in sel.needs_volume:
        m = by_name[name]
        assert m.answer == "needs the volume" and not m.fits
        runtime = runtime_for(load_bundle(zoo.get(name)))
        try:
            runtime.input_image(lone)
            takes = True
        except InputError:
            takes = False
        assert m.slice_wise == takes, name
        assert any("works slice by slice" in r for r in m.reasons) == takes, m.reasons
        assert m.to_json_dict()["slice_wise"] == takes
    assert by_name["mr-cardiac"].slice_wise and not by_name["mr-hippocampus"].slice_wise
    assert "mr-cardiac and mr-brain-flair-lesion work slice by slice" in sel.to_text() or (
        "mr-brain-flair-lesion and mr-cardiac work slice by slice" in sel.to_text()
    )


def test_landmark_model_verification_tells_a_chest_radiograph_from_other_images(zoo: Zoo):
    import matplotlib.cbook

    from ModelSelectorLib.selection.selector import verify_fit
    from ModelSelectorLib.zoo import load_bundle

    model = load_bundle(zoo.get("dx-chest-landmarks"))
    chest = verify_fit(model, read_image(SAMPLES / "cxr_chest.png"))
    ct = read_image(SAMPLES / "ct_abdomen.nii.gz")
    ct_slice = Image(ct.array[56], tuple(ct.spacing[:2]), tuple(ct.origin[:2]), (1.0, 0.0, 0.0, 1.0), {})
    photo = read_image(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    others = [verify_fit(model, ct_slice), verify_fit(model, photo)]
    # sharp heatmaps on a chest radiograph, diffuse ones elsewhere (the selector's model-alone check)
    assert chest["fit"] > 0.7 and chest["heatmap_entropy"] < min(v["heatmap_entropy"] for v in others)
    assert all(v["fit"] < 0.4 for v in others), others
    assert verify_fit(model, ct) is None  # a volume does not suit a 2D model


def test_landmark_recipe_uses_the_committed_comparison_settings():
    import yaml

    from ModelSelectorLib.training.landmarks import VARIANTS

    grid = yaml.safe_load((ROOT / "docs" / "landmarks" / "grid.yaml").read_text(encoding="utf-8"))
    for recipe in LANDMARK_RECIPES:
        assert recipe.variant in VARIANTS and 0 < recipe.fraction <= 1
        # the zoo model may train longer than the grid's many runs and add the contour and offset stages after them
        # (chosen on the validation images with the same networks); every other setting is the grid's
        length, after = ("steps", "refine_steps"), ("contour_modes", "point_offsets")
        assert {k: v for k, v in recipe.grid["train"].items() if k not in length + after} == {
            k: v for k, v in grid["train"].items() if k not in length
        }
        assert all(recipe.grid["train"][k] >= grid["train"][k] for k in length)
        assert recipe.grid["split_seed"] == grid["split_seed"]
        assert recipe.modality in MODALITIES and recipe.body_region in BODY_REGIONS


def test_landmark_recipe_builds_resumes_and_indexes(tmp_path: Path):
    from ModelSelectorLib.datasets.landmarks import make_synthetic_cxr
    from ModelSelectorLib.selection.index import load_index
    from ModelSelectorLib.selection.prototypes import load_prototypes
    from ModelSelectorLib.training.landmark_study import GridConfig

    data = make_synthetic_cxr(tmp_path / "cxr", n_labelled=10, n_unlabelled=3, width=72, height=60, seed=3)
    recipe = dataclasses.replace(
        LANDMARK_RECIPES[0], name="tiny-landmarks", variant="uncertainty_kd", fraction=0.5,
        grid=GridConfig.quick().to_dict(), n_exemplars=2,
    )  # fmt: skip
    zoo_dir = tmp_path / "zoo"
    first = build_landmark_model(recipe, data, zoo_dir)
    assert first["status"] == "built" and "test_mre_px" in first["metrics"]
    assert build_landmark_model(recipe, data, zoo_dir)["status"] == "skipped"  # resumable
    card = validate_bundle(first["path"])
    block = read_metadata(first["path"])[METADATA_KEY]
    assert card.task_type == "landmarks" and card.license == recipe.licence
    assert block["variant"] == "uncertainty_kd" and len(block["training_cases"]) == card.n_training_cases == 4
    exemplars = exemplar_images(recipe, data)
    assert len(exemplars) == 2 and {p.stem for p in exemplars} <= {c["id"] for c in block["training_cases"]}
    assert all((data / c["image"]).is_file() for c in block["training_cases"])
    build_prototypes(recipe, data, zoo_dir, data_free=2)
    assert set(load_prototypes(first["path"]).origins()) == {"exemplar", "data-free"}
    idx = load_index(build_index(zoo_dir))
    assert idx.model_names() == ["tiny-landmarks"]


def test_samples_are_documented():
    readme = (SAMPLES / "README.md").read_text(encoding="utf-8")
    for sample in SAMPLE_FAMILY:
        assert (SAMPLES / sample).is_file() and sample in readme
    assert json.loads((ZOO / "zoo.json").read_text(encoding="utf-8"))["format"] == 1


def test_build_is_deterministic_for_a_seed(tiny_data: Path, tmp_path: Path):
    import torch

    recipe = _tiny_recipe()
    weights = []
    for run in ("a", "b"):
        res = build_model(recipe, tiny_data, tmp_path / run, tmp_path / f"work-{run}", seed=5, num_threads=1)
        weights.append(torch.load(res["path"] / "models" / "model.pt", weights_only=True))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def _nnunet_tiny(**changes: object) -> dict:
    return {"architecture": "dynunet", "channels": (4, 8, 16), "roi_size": (16, 16, 8), "target_spacing": (1.5, 1.5, 3.0),
            "intensity": "ct", "a_min": -200.0, "a_max": 300.0, "epochs": 2, "steps_per_epoch": 2, "batch_size": 1,
            "num_samples": 1, "augment_preset": "nnunet", "keep": "last", "sw_mode": "gaussian", "tta_mirror": True,
            "postprocess": "auto", **changes}  # fmt: skip


def test_cross_validated_model_has_challenge_figures_and_resumes(
    tiny_data: Path, tmp_path: Path, monkeypatch
):
    cases = [Case(f"case{i}", f"vol/case{i}.nii.gz", f"vol/case{i}_seg.nii.gz") for i in range(3)]
    recipe = _tiny_recipe(cases=fixed_split(cases), held_out="cv", folds=3, nsd_tolerance_mm=2.0,
                          train=_nnunet_tiny(),
                          reference={"source": "a published method", "dice": {"Liver": 0.9, "Stomach": 0.8}})  # fmt: skip
    zoo_dir, work = tmp_path / "zoo", tmp_path / "work"
    # two folds now (as a second process would take the third and the final model): nothing goes into the zoo
    # yet, and the whole build's later stages wait for the model instead of failing on its absence
    monkeypatch.setattr(build_module, "recipes", lambda only=None: [recipe])
    lines: list[str] = []
    (part,) = build_starter_zoo(
        tiny_data, zoo_dir, work_dir=work, num_threads=1, folds=[0, 1], log=lines.append
    )
    assert part["status"] == "cross-validating" and "tiny-organs" not in Zoo(zoo_dir)
    assert "no prototypes or index yet" in lines[-1] and not (zoo_dir / "index").exists()
    part = build_model(recipe, tiny_data, zoo_dir, work, num_threads=1, folds=["final"], log=lambda s: None)
    assert part["status"] == "cross-validating" and "tiny-organs" not in Zoo(zoo_dir)
    done = build_model(recipe, tiny_data, zoo_dir, work, num_threads=1, folds=[2], log=lambda s: None)
    assert done["status"] == "built"
    path = Zoo(zoo_dir).get("tiny-organs")
    curve = json.loads((path / "docs" / "training_curve.json").read_text(encoding="utf-8"))
    # the final network trained alongside the folds was not trained again
    assert curve["resumed_from_epoch"] == 2
    card = validate_bundle(path)
    m = card.validation_metrics
    assert m["validation_cases"] == 3 and m["held_out"].startswith("3-fold cross-validation over 3 cases")
    assert {"dice_Liver", "hd95_Liver", "nsd_Liver", "dice_Stomach"} <= set(m)
    assert card.n_training_cases == 3  # the final model learnt from every case
    record = json.loads((path / "docs" / "held_out.json").read_text(encoding="utf-8"))
    assert len(record["per_case"]) == 3 and len(record["cross_validation"]["folds"]) == 3
    lo, hi = record["summary"]["dice"]["Liver"]["ci95"]
    assert lo <= record["summary"]["dice"]["Liver"]["mean"] <= hi
    assert record["reference"]["dice"]["Liver"] == 0.9
    assert card.inference["keep_largest_component"] == sorted(
        {"Liver": 1, "Stomach": 2}[n] for n in record["cross_validation"]["lcc"]
    )


def test_test_split_model_is_scored_on_its_test_cases_only(tiny_data: Path, tmp_path: Path):
    cases = [Case(f"case{i}", f"vol/case{i}.nii.gz", f"vol/case{i}_seg.nii.gz") for i in range(3)]
    recipe = _tiny_recipe(cases=fixed_split(cases[:1], cases[1:2], cases[2:]), held_out="test",
                          nsd_tolerance_mm=2.0, train=_nnunet_tiny())  # fmt: skip
    build_model(recipe, tiny_data, tmp_path / "zoo", tmp_path / "work", num_threads=1)
    path = Zoo(tmp_path / "zoo").get("tiny-organs")
    card = validate_bundle(path)
    record = json.loads((path / "docs" / "held_out.json").read_text(encoding="utf-8"))
    assert [r["case"] for r in record["per_case"]] == ["case2"]  # the test case, in its own geometry
    assert card.validation_metrics["validation_cases"] == 1 and "external_dice" not in card.validation_metrics
    assert card.validation_metrics["held_out"].startswith("test split of 1 cases")


def test_a_refit_model_trains_on_its_validation_cases_too_and_keeps_the_recipes_components(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from ModelSelectorLib.ranking.promotion import seen_case_ids
    from ModelSelectorLib.starter_zoo import build

    scored = []

    def score_and_note(bundle, *args, **kw):  # the real scoring, noting how the scored model is applied
        scored.append(load_bundle(bundle).card.inference["keep_largest_component"])
        return score_bundle(bundle, *args, **kw)

    monkeypatch.setattr(build, "score_bundle", score_and_note)
    cases = [Case(f"case{i}", f"vol/case{i}.nii.gz", f"vol/case{i}_seg.nii.gz") for i in range(3)]
    split = fixed_split(cases[:1], cases[1:2], cases[2:])
    recipe = _tiny_recipe(cases=split, held_out="test", train=_nnunet_tiny(), refit_lcc=(2,))
    build_model(recipe, tiny_data, tmp_path / "zoo", tmp_path / "work", num_threads=1)
    assert scored == [[2]]  # the test cases were scored as the model is applied
    path = Zoo(tmp_path / "zoo").get("tiny-organs")
    card = validate_bundle(path)
    assert seen_case_ids(path) == {"case0", "case1"} and card.n_training_cases == 2
    assert card.inference["keep_largest_component"] == [2]  # the recipe's choice: no validation case is left
    record = json.loads((path / "docs" / "held_out.json").read_text(encoding="utf-8"))
    assert [r["case"] for r in record["per_case"]] == ["case2"] and "trained on too" in record["protocol"]
    curve = json.loads((path / "docs" / "training_curve.json").read_text(encoding="utf-8"))
    assert (
        sorted(curve["training_cases"]) == ["case0.nii.gz", "case1.nii.gz"]
        and curve["validation_cases"] == []
    )
    assert recipe_hash(recipe, split(tiny_data, 0), tiny_data, 0) != recipe_hash(
        dataclasses.replace(recipe, refit_lcc=None), split(tiny_data, 0), tiny_data, 0
    )
    for bad in ({"refit_lcc": (3,)}, {"refit_lcc": (1,), "held_out": "validation"}):
        with pytest.raises(ModelSelectorError, match="refit_lcc"):
            dataclasses.replace(recipe, **bad).check()


def test_development_cross_validation_pools_the_development_cases_and_never_the_test_ones(
    tiny_data: Path, tmp_path: Path
):
    cases = [Case(f"case{i}", f"vol/case{i}.nii.gz", f"vol/case{i}_seg.nii.gz") for i in range(3)]
    recipe = _tiny_recipe(cases=fixed_split(cases[:1], cases[1:2], cases[2:]), held_out="test",
                          nsd_tolerance_mm=2.0, train=_nnunet_tiny())  # fmt: skip
    work = tmp_path / "work"
    quiet = {"num_threads": 1, "log": lambda s: None}
    # one fold now (as a second process would take the other): nothing to pool yet
    assert cross_validate_development(recipe, tiny_data, work, k=2, folds=[0], **quiet) is None
    record = cross_validate_development(recipe, tiny_data, work, k=2, folds=[1], **quiet)
    assert record is not None and record["k"] == 2 and record["development_cases"] == 2
    assert sorted(r["case"] for r in record["per_case"]) == ["case0", "case1"]  # each held out once
    folds = sorted(work.glob("tiny-organs-runs/*/dev-cv/fold*/result.json"))
    assert len(folds) == 2
    for path in folds:
        fold = json.loads(path.read_text(encoding="utf-8"))
        assert not any("case2" in c for c in fold["train_cases"] + fold["val_cases"])  # the test case
    summary = folds[0].parent.parent / "summary.json"
    assert json.loads(summary.read_text(encoding="utf-8"))["per_case"] == record["per_case"]
    stamp = folds[0].stat().st_mtime_ns
    again = cross_validate_development(recipe, tiny_data, work, k=2, **quiet)  # resumes: trains nothing
    assert again["per_case"] == record["per_case"] and folds[0].stat().st_mtime_ns == stamp
    assert {"Liver", "Stomach"} == set(record["postprocessing"])
    lo, hi = record["summary"]["dice"]["Liver"]["ci95"]
    assert lo <= record["summary"]["dice"]["Liver"]["mean"] <= hi
    with pytest.raises(ModelSelectorError, match="2 development cases"):
        cross_validate_development(recipe, tiny_data, work, k=3, **quiet)
    with pytest.raises(ModelSelectorError, match="--folds"):
        cross_validate_development(
            dataclasses.replace(recipe, held_out="cv", folds=2), tiny_data, work, **quiet
        )


def test_test_split_file_lets_the_gate_compare_on_the_recipes_test_patients(tiny_data: Path, tmp_path: Path):
    from ModelSelectorLib.ranking.promotion import seen_case_ids
    from ModelSelectorLib.ranking.sweep import read_split

    cases = [Case(f"case{i}", f"vol/case{i}.nii.gz", f"vol/case{i}_seg.nii.gz") for i in range(3)]
    split = fixed_split(cases[:1], cases[1:2], cases[2:])
    with pytest.raises(DatasetError, match=r"label values \[5, 6, 77\] are not the model's \[0, 1, 2\]"):
        write_test_split(_tiny_recipe(cases=split, held_out="test"), tiny_data, tmp_path / "s.json")
    with pytest.raises(DatasetError, match="holds out no test split"):
        write_test_split(_tiny_recipe(), tiny_data, tmp_path / "s.json")
    # source label maps that already hold the model's values are scored as they are
    for i in range(3):
        lab = read_image(tiny_data / "vol" / f"case{i}_seg.nii.gz", check_content=False)
        write_image(Image(remap_labels(lab.array, _tiny_recipe().labels), lab.spacing, lab.origin, lab.direction),
                    tiny_data / "vol" / f"case{i}_seg.nii.gz")  # fmt: skip
    labels = tuple(dataclasses.replace(lb, source_values=(lb.value,)) for lb in _tiny_recipe().labels)
    recipe = _tiny_recipe(cases=split, held_out="test", train=_nnunet_tiny(), labels=labels)
    path = write_test_split(recipe, tiny_data, tmp_path / "gate" / "test_split.json", relative=True)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert not Path(data["dataset"]).is_absolute() and data["labels"] == {"1": "Liver", "2": "Stomach"}
    read = read_split(path)  # the gate's reader finds the files
    assert [c["id"] for c in read["cases"]] == ["case2"] and Path(read["cases"][0]["label"]).is_file()
    build_model(recipe, tiny_data, tmp_path / "zoo", tmp_path / "work", num_threads=1)
    assert seen_case_ids(Zoo(tmp_path / "zoo").get("tiny-organs")) == {"case0", "case1"}  # none in the split


def test_the_held_out_tables_of_the_docs_are_the_bundled_records_in_their_units():
    """docs/starter-zoo.md shows each bundled model's held-out record as `held_out_table` renders it: figures, a
    sample standard deviation, and distances in the record's unit (nominal mm where the data's spacing is)."""
    from ModelSelectorLib.resources import default_zoo_path
    from ModelSelectorLib.starter_zoo.report import HELD_OUT_FILE, held_out_table
    from ModelSelectorLib.zoo import Zoo

    doc = (Path(__file__).resolve().parents[2] / "docs" / "starter-zoo.md").read_text(encoding="utf-8")
    zoo, units = Zoo(default_zoo_path()), {}
    for name in zoo.names():
        path = zoo.get(name) / HELD_OUT_FILE
        if path.is_file():
            record = json.loads(path.read_text(encoding="utf-8"))
            units[name] = record.get("distance_unit")
            assert all(line in doc for line in held_out_table(record)), name
            per_case = [r["dice"] for r in record["per_case"]]
            label = next(iter(per_case[0]))
            assert record["summary"]["dice"][label]["std"] == pytest.approx(
                np.std([d[label] for d in per_case], ddof=1)
            )
    # the nominal spacings of ACDC's export and of the binned TCGA-LGG copy are no millimetres
    assert {r.name: r.distance_unit for r in RECIPES if r.distance_unit != "mm"} == {
        "mr-cardiac": "nominal mm", "mr-brain-flair-lesion": "source px"}  # fmt: skip
    assert units["mr-cardiac"] == "nominal mm" and units["mr-brain-flair-lesion"] == "source px"
    assert units["dx-chest-lungs"] == units["mr-hippocampus"] == "mm"
    assert "| label | Dice | HD95 (source px) | NSD (2 source px) | reference Dice |" in doc
