"""Selector core: prototypes (exemplar and data-free), the hnswlib index, ``select`` and its CLI.

One synthetic zoo is built per module: three tiny batch-norm UNets trained for a few seconds on
distinguishable synthetic data -- a 3D CT-like abdomen, a 3D MR-like abdomen (bias field, positive units)
and a 2D radiograph-like chest picture -- each with exemplar and data-free prototypes, indexed and
calibrated against out-of-distribution references that leave out the photo used in the tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("hnswlib")

from ModelSelectorLib.atomic import write_json  # noqa: E402
from ModelSelectorLib.datasets import make_synthetic_case, make_synthetic_msd  # noqa: E402
from ModelSelectorLib.errors import BundleError, IndexMismatchError, InputError  # noqa: E402
from ModelSelectorLib.io import Image, read_image, write_image  # noqa: E402

ENCODER_WEIGHTS = Path(__file__).resolve().parents[2] / "Resources" / "encoder" / "encoder.pt"
pytestmark = pytest.mark.skipif(not ENCODER_WEIGHTS.is_file(), reason="the bundled encoder is not built")

EYE2 = (1.0, 0.0, 0.0, 1.0)
EYE3 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
MODELS = ("ct_abdomen", "mr_abdomen", "dx_chest")


def radiograph(seed: int) -> tuple[Image, Image]:
    """A 2D radiograph-like picture (bright disc on a graded background, 0.5 mm pixels) and its label."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    img = 800.0 + 6.0 * yy + rng.normal(0.0, 40.0, (64, 64))
    cy, cx = rng.uniform(20, 44, 2)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(7, 11) ** 2
    img[disc] = 3000.0
    image = Image(img.astype(np.float32), (0.5, 0.5), (0.0, 0.0), EYE2, {})
    return image, image.with_array(disc.astype(np.uint8))


def make_2d_msd(root: Path, n: int, seed: int) -> Path:
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(n):
        image, label = radiograph(seed + i)
        write_image(image, root / "imagesTr" / f"c{i}.nii.gz")
        write_image(label, root / "labelsTr" / f"c{i}.nii.gz")
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    write_json(root / "dataset.json", {"name": "SynthDX", "modality": {"0": "DX"}, "body_region": "CHEST",
                                       "labels": {"0": "background", "1": "disc"}, "synthetic": True,
                                       "training": training})  # fmt: skip
    return root


def noise_volume(seed: int) -> Image:
    return Image(np.random.default_rng(seed).normal(0, 300, (30, 40, 40)).astype(np.float32), (1.0, 1.0, 1.0),
                 (0.0, 0.0, 0.0), EYE3)  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The synthetic zoo with prototypes and a calibrated, saved index; the encoder; query images."""
    from ModelSelectorLib.selection.calibration import build_index, calibrate, ood_references
    from ModelSelectorLib.selection.encoder import Encoder
    from ModelSelectorLib.selection.index import default_index_dir
    from ModelSelectorLib.selection.prototypes import generate_for_model
    from ModelSelectorLib.training.segmentation import TrainConfig, train_segmentation
    from ModelSelectorLib.zoo import Zoo

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("selector")
    base = dict(channels=(8, 16), epochs=12, batch_size=1, num_samples=2, roi_size=(16, 16, 16),
                target_spacing=(2.0, 2.0, 2.0), augment=False, num_threads=2, seed=0, val_fraction=0.25, val_interval=12)  # fmt: skip
    data = {
        "ct_abdomen": make_synthetic_msd(root / "ct", 4, "ct", seed=0),
        "mr_abdomen": make_synthetic_msd(root / "mr", 4, "mr", seed=10),
        "dx_chest": make_2d_msd(root / "dx", 4, 20),
    }
    cfgs = {
        "ct_abdomen": TrainConfig(**base),
        "mr_abdomen": TrainConfig(**base),
        "dx_chest": TrainConfig(
            **{**base, "roi_size": (32, 32), "target_spacing": (0.5, 0.5), "intensity": "percentile"}
        ),  # fmt: skip
    }
    for name in MODELS:
        train_segmentation(
            data[name], name, root / "zoo", cfgs[name], body_region=None if name == "dx_chest" else "ABDOMEN"
        )
    zoo = Zoo(root / "zoo")
    enc = Encoder.load()
    for name in MODELS:
        exemplars = sorted((data[name] / "imagesTr").glob("*.nii.gz"))[:2]
        generate_for_model(zoo, name, exemplars=exemplars, data_free=2, encoder=enc, steps=30, seed=0)
    idx = build_index(zoo, calibrate=False)
    negatives = [(n, im) for n, im in ood_references(seed=7) if n != "grace_hopper.jpg"]
    calibrate(idx, zoo, encoder=enc, negatives=negatives)
    idx.save(default_index_dir(zoo))
    ct, _ = make_synthetic_case(100, "ct")
    mr, _ = make_synthetic_case(101, "mr")
    dx, _ = radiograph(102)
    queries = {"ct_abdomen": ct, "mr_abdomen": mr, "dx_chest": dx}
    return {"root": root, "zoo": zoo, "encoder": enc, "index": idx, "queries": queries}


# --- prototypes -----------------------------------------------------------------------------------------
def test_prototypes_stored_in_bundle_with_origins(env):
    from ModelSelectorLib.selection.prototypes import ORIGINS, load_prototypes

    for name in MODELS:
        bundle = env["zoo"].get(name)
        pset = load_prototypes(bundle)
        assert pset.model == name and pset.version == "0.1.0"
        assert set(pset.origins()) == set(ORIGINS)
        assert np.allclose(np.linalg.norm(pset.vectors, axis=1), 1.0, atol=1e-4)
        meta = json.loads((bundle / "prototypes" / "prototypes.json").read_text(encoding="utf-8"))
        assert {r["origin"] for r in meta["rows"]} == set(ORIGINS)
        assert "batch-norm statistics" in meta["meta"]["data-free"]["method"]
        assert meta["meta"]["data-free"]["bn_layers"] > 0
        assert len(list((bundle / "docs" / "prototypes").glob("data-free-*.png"))) == 2


def test_synthesis_geometry_2d_and_3d_and_bn_matching(env):
    from ModelSelectorLib.models.bnstats import BNStatHooks
    from ModelSelectorLib.selection.inversion import synthesize_inputs
    from ModelSelectorLib.zoo import load_bundle

    lb = load_bundle(env["zoo"].get("ct_abdomen"))
    info = {}
    imgs = synthesize_inputs(lb, n=2, steps=12, seed=3, info=info, progress=False)
    assert info["bn_layers"] > 0 and info["bn_divergence"] is not None
    assert imgs[0].ndim == 3 and imgs[0].spacing == (2.0, 2.0, 2.0) and imgs[0].array.shape == (16, 16, 16)
    assert imgs[0].array.min() >= -1000.0 and imgs[0].array.max() <= 1000.0  # HU of the model's CT window
    # the batch-norm divergence of the synthesised batch is below that of the initial noise
    with BNStatHooks(lb.network) as hooks, torch.inference_mode():
        x = torch.from_numpy((np.stack([im.array.transpose(2, 1, 0) for im in imgs])[:, None] + 1000) / 2000)
        lb.network(x.float())
        after = float(hooks.mean())
    with BNStatHooks(lb.network) as hooks, torch.inference_mode():
        lb.network(torch.rand(2, 1, 16, 16, 16))
        noise = float(hooks.mean())
    assert after < noise
    d2 = synthesize_inputs(env["zoo"].get("dx_chest"), n=1, steps=3, seed=0, progress=False)
    assert d2[0].ndim == 2 and d2[0].spacing == (0.5, 0.5) and d2[0].array.shape == (32, 32)


def test_synthesis_without_running_stats_falls_back(tmp_path, env):
    from ModelSelectorLib.selection.prototypes import data_free_prototypes
    from ModelSelectorLib.training.segmentation import TrainConfig, build_network, network_def
    from ModelSelectorLib.zoo import ModelCard, save_bundle

    net_def = network_def(TrainConfig(channels=(4, 8), norm="instance"), spatial_dims=3, n_classes=2)
    card = ModelCard(name="inorm", version="0.1.0", task_type="segmentation", modality="CT", body_region="ABDOMEN",
                     labels=[{"value": 1, "name": "x", "color": [1.0, 0.0, 0.0]}], spatial_dims=3,
                     target_spacing=[2.0, 2.0, 2.0], intensity={"mode": "ct", "a_min": -1000.0, "a_max": 1000.0},
                     roi_size=[16, 16, 16])  # fmt: skip
    bundle = save_bundle(tmp_path / "inorm", card, net_def, build_network(net_def).state_dict())
    pset = data_free_prototypes(env["encoder"], bundle, n=1, steps=3)
    assert set(pset.origins()) == {"data-free"}
    assert "no batch-norm running statistics" in pset.meta["data-free"]["method"]
    assert pset.meta["data-free"]["bn_layers"] == 0


def test_synthesis_for_a_slice_wise_model_stays_finite(tmp_path):
    """A slice-wise 3D model (one-voxel patches along z) has no neighbours along z: the smoothness term must
    not turn the synthesised input into NaN."""
    from ModelSelectorLib.selection.inversion import synthesize_inputs
    from ModelSelectorLib.training.segmentation import TrainConfig, build_network, network_def
    from ModelSelectorLib.zoo import ModelCard, save_bundle

    config = TrainConfig(architecture="dynunet", channels=(4, 8, 16), roi_size=(16, 16, 1))
    net_def = network_def(config, spatial_dims=3, n_classes=2, spacing=(1.5, 1.5, 10.0))
    card = ModelCard(name="slices", version="0.1.0", task_type="segmentation", modality="MR", body_region="HEART",
                     labels=[{"value": 1, "name": "x", "color": [1.0, 0.0, 0.0]}], spatial_dims=3,
                     target_spacing=[1.5, 1.5, 10.0], intensity={"mode": "mr"}, roi_size=[16, 16, 1])  # fmt: skip
    bundle = save_bundle(tmp_path / "slices", card, net_def, build_network(net_def).state_dict())
    info: dict = {}
    imgs = synthesize_inputs(bundle, n=1, steps=3, seed=0, info=info, progress=False)
    assert imgs[0].array.shape[0] == 1 and np.isfinite(imgs[0].array).all()
    assert np.isfinite(info["final_loss"])


def test_exemplar_sources_are_recorded_relative_to_the_data_folder(env):
    """A shipped bundle names no machine path: sources inside ``source_root`` are stored relative to it."""
    from ModelSelectorLib.selection.prototypes import exemplar_prototypes

    image = sorted((env["root"] / "dx" / "imagesTr").glob("*.nii.gz"))[0]
    inside = exemplar_prototypes(env["encoder"], [image], source_root=env["root"])
    assert {r["source"] for r in inside.rows} == {f"dx/imagesTr/{image.name}"}
    outside = exemplar_prototypes(env["encoder"], [image], source_root=env["root"] / "ct")
    assert {r["source"] for r in outside.rows} == {str(image)}


def test_missing_prototypes_and_bad_exemplars(tmp_path, env):
    from ModelSelectorLib.selection.prototypes import exemplar_prototypes, load_prototypes

    with pytest.raises(BundleError, match="modelselector prototypes"):
        load_prototypes(tmp_path)
    with pytest.raises(InputError):
        exemplar_prototypes(env["encoder"], [])


def test_bottleneck_statistics_stored_and_mahalanobis_signal(env):
    """Exemplar prototypes of a segmentation model store its bottleneck-feature statistics; an image of the
    model's own kind lies nearer to them than noise does."""
    from ModelSelectorLib.selection.scoring import runtime_of

    bundle = env["zoo"].get("ct_abdomen")
    assert (bundle / "prototypes" / "feature_stats.npz").is_file()
    runtime = runtime_of(bundle)
    own = runtime.fit_signals(env["queries"]["ct_abdomen"])
    other = runtime.fit_signals(noise_volume(5))
    assert {"feature_distance", "feature_fit", "fit", "kl"} <= set(own)
    assert (
        own["feature_distance"] < other["feature_distance"]
        and 0.0 <= other["feature_fit"] <= own["feature_fit"] <= 1.0
    )


# --- selection ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("origins", [("exemplar", "data-free"), ("exemplar",), ("data-free",)])
def test_right_model_ranks_first_with_exemplars(env, origins):
    from ModelSelectorLib.selection.selector import select

    for name, image in env["queries"].items():
        sel = select(image, env["zoo"], env["index"], env["encoder"], top_k=3, origins=origins)
        ranked = [m.name for m in sel.models]
        assert all(0.0 <= m.score <= 1.0 for m in sel.models)
        if "exemplar" in origins:
            assert ranked[0] == name, (origins, name, [(m.name, m.raw) for m in sel.models])
            assert sel.fits and sel.models[0].fits, (origins, name, [(m.name, m.score) for m in sel.models])
        else:  # data-free prototypes alone do not rank these models (nor the real ones, docs/selection-report.md)
            assert sorted(ranked) == sorted(MODELS) and sel.calibrated


def test_a_label_map_is_refused_with_what_to_give_instead(env):
    from ModelSelectorLib.selection.selector import select

    ct = env["queries"]["ct_abdomen"]
    labels = ct.with_array(
        (ct.array > np.median(ct.array)).astype(np.uint8)
    )  # a mask of the query, as a volume
    with pytest.raises(
        InputError, match="2 distinct whole-number values .* label map .* give the image it labels"
    ):
        select(labels, env["zoo"], env["index"], env["encoder"])


def test_noise_and_photo_are_rejected(env):
    import matplotlib.cbook as cbook

    from ModelSelectorLib.selection.selector import select

    photo = read_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    for image in (noise_volume(123), photo):
        sel = select(image, env["zoo"], env["index"], env["encoder"])
        assert not sel.fits, [(m.name, m.score) for m in sel.models]
        assert not any(m.fits for m in sel.models)


def test_selection_order_and_reasons(env):
    from ModelSelectorLib.selection.selector import select

    sel = select(env["queries"]["mr_abdomen"], env["zoo"], env["index"], env["encoder"], top_k=None)
    assert [m.name for m in sel.models][0] == "mr_abdomen" and len(sel.models) == 3
    fits = [m.fits for m in sel.models]
    assert fits == sorted(fits, reverse=True)  # every fitting model before any non-fitting one
    top = sel.models[0]
    assert any("nearest prototypes" in r for r in top.reasons)
    assert any("verify" in r for r in top.reasons) and top.verify is not None
    # the encoder has no MR:ABDOMEN class (too few such images), and the reasons say what that means
    assert any(r.startswith("the encoder has no MR:ABDOMEN class") and "apply the model by name" in r
               for r in top.reasons)  # fmt: skip
    assert not any("the encoder has no" in r for m in sel.models if m.name != "mr_abdomen" for r in m.reasons)
    assert sel.models[-1].name == "dx_chest" and any("2D inputs" in r for r in sel.models[-1].reasons)
    # an overridden threshold above every score: nothing fits
    strict = select(env["queries"]["mr_abdomen"], env["zoo"], env["index"], env["encoder"], threshold=1.01)
    assert not strict.fits


def test_a_lone_2d_slice_names_the_3d_models_that_need_the_volume(env):
    from ModelSelectorLib.selection.selector import select

    ct = env["queries"]["ct_abdomen"]
    mid = ct.array.shape[0] // 2
    slice_2d = Image(ct.array[mid], tuple(ct.spacing[:2]), tuple(ct.origin[:2]), EYE2, {})
    sel = select(slice_2d, env["zoo"], env["index"], env["encoder"], top_k=None, threshold=0.0)
    # every score passes a threshold of 0: the 3D models need the volume; the 2D model would fit, but it takes
    # radiographs and this slice is in Hounsfield units
    assert sorted(sel.needs_volume) == ["ct_abdomen", "mr_abdomen"] and not sel.fits
    dx = next(m for m in sel.models if m.name == "dx_chest")
    assert dx.domain_matches and not dx.units.fits and dx.answer == "no"
    as_picture = select(slice_2d.with_array(slice_2d.array + np.float32(1024.0)), env["zoo"], env["index"],
                        env["encoder"], top_k=None, threshold=0.0)  # fmt: skip
    assert [m.name for m in as_picture.models if m.fits] == ["dx_chest"]  # stored values: no unit to refuse
    assert sorted(as_picture.needs_volume) == ["ct_abdomen", "mr_abdomen"]
    assert all(not m.fits for m in sel.models if m.needs_volume)
    assert "load the whole series or volume" in sel.to_text()
    assert sel.to_json_dict()["needs_volume"] == sel.needs_volume
    volume = select(ct, env["zoo"], env["index"], env["encoder"], top_k=None, threshold=0.0)
    assert volume.needs_volume == []  # a volume never needs the volume


def test_a_volume_far_smaller_than_the_training_inputs_needs_a_wider_view(env):
    from ModelSelectorLib.selection.selector import select

    ct = env["queries"]["ct_abdomen"]  # (24, 32, 32) voxels of 1.2 x 1.2 x 3 mm, like the training cases
    whole = select(ct, env["zoo"], env["index"], env["encoder"], top_k=None)
    by_name = {m.name: m for m in whole.models}
    assert by_name["ct_abdomen"].fits and by_name["ct_abdomen"].field_of_view.fits
    assert by_name["dx_chest"].field_of_view is None  # a 2D model: not compared
    # a corner of it, 18 x 9.6 x 9.6 mm: a quarter of the training cases' field of view
    crop = Image(ct.array[:6, :8, :8].copy(), ct.spacing, ct.origin, ct.direction, {})
    sel = select(crop, env["zoo"], env["index"], env["encoder"], top_k=None, threshold=0.0)
    for m in sel.models:
        if m.name == "dx_chest":
            assert m.answer == "no" and not m.fits  # the dimensions differ
            continue
        if m.name == "mr_abdomen":  # a CT in Hounsfield units: an MR model does not fit it, whatever its size
            assert m.answer == "no" and not m.units.fits and m.units.verdict == "no", m
            continue
        assert not m.fits and m.answer == "needs a wider view" and m.field_of_view.ratio < 1 / 3, m
        assert any(r.startswith("field of view: ") and "whole region" in r for r in m.reasons)
        assert m.to_json_dict()["field_of_view"]["verdict"] == "needs a wider view"
        assert m.to_json_dict()["answer"] == "needs a wider view"
    assert (
        not sel.fits and "ct_abdomen matches this kind of image, but the image spans about" in sel.to_text()
    )
    assert sel.models[-1].answer == "no"  # those that need another input come before the others
    # the same below the operating point is a plain "no"
    strict = select(crop, env["zoo"], env["index"], env["encoder"], top_k=None, threshold=1.01)
    assert {m.answer for m in strict.models} == {"no"}


def test_a_ct_model_needs_hounsfield_units_and_an_mr_model_refuses_them(env):
    from ModelSelectorLib.selection.selector import select

    ct, mr = env["queries"]["ct_abdomen"], env["queries"]["mr_abdomen"]
    sel = select(ct, env["zoo"], env["index"], env["encoder"], top_k=None)
    by_name = {m.name: m for m in sel.models}
    assert by_name["ct_abdomen"].fits and by_name["ct_abdomen"].units.fits
    assert by_name["ct_abdomen"].units.air_share > 0.2  # the air around the body, at -1000 HU
    assert not by_name["mr_abdomen"].units.fits and not by_name["dx_chest"].units.fits  # radiographs: not HU
    # the same CT stored without its rescale intercept (-1024): air reads about 24, nothing is below -500
    raw = ct.with_array(ct.array + np.float32(1024.0))
    low = select(raw, env["zoo"], env["index"], env["encoder"], top_k=None, threshold=0.0)
    m = {m.name: m for m in low.models}["ct_abdomen"]
    assert not m.fits and m.answer == "needs Hounsfield units" and m.units.air_share == 0.0, m
    assert any(r.startswith("intensity units: the model takes CT in Hounsfield units, and none of the image's")
               and "rescale slope and intercept" in r for r in m.reasons)  # fmt: skip
    assert m.to_json_dict()["units"] == {"expected": "hounsfield", "air_share": 0.0, "fits": False}
    assert m.to_json_dict()["answer"] == "needs Hounsfield units"
    assert (
        "ct_abdomen matches this kind of image, but the model takes CT in Hounsfield units" in low.to_text()
    )
    # an MR volume: the MR model takes it, the CT model does not, and the MR model refuses the CT
    on_mr = {m.name: m for m in select(mr, env["zoo"], env["index"], env["encoder"], top_k=None).models}
    assert on_mr["mr_abdomen"].units.fits and not on_mr["ct_abdomen"].units.fits
    assert on_mr["mr_abdomen"].fits and not on_mr["ct_abdomen"].fits


# --- index ----------------------------------------------------------------------------------------------
def _copy_zoo(env, tmp_path):
    from ModelSelectorLib.zoo import Zoo

    shutil.copytree(env["zoo"].path, tmp_path / "zoo")
    return Zoo(tmp_path / "zoo")


def test_index_round_trip_add_remove(env, tmp_path):
    from ModelSelectorLib.selection.index import ZooIndex, load_index

    zoo = _copy_zoo(env, tmp_path)
    idx = load_index(zoo)
    idx.check_against(zoo)
    assert idx.model_names() == sorted(MODELS) and idx.calibration["settings"]
    emb = env["encoder"].embed(env["queries"]["ct_abdomen"])
    labels, dist = idx.query(emb, k=5)
    lab0, dist0 = env["index"].query(emb, k=5)
    assert np.array_equal(labels, lab0) and np.allclose(dist, dist0, atol=1e-5)
    assert idx.items[int(labels[0, 0])]["model"] == "ct_abdomen"
    n_ct = len(idx.labels_of("ct_abdomen"))
    settings = idx.calibration["settings"].values()
    assert any("ct_abdomen" in (s.get("models") or {}) for s in settings)
    assert idx.remove_model("ct_abdomen") == n_ct
    assert not any("ct_abdomen" in (s.get("models") or {}) for s in settings)  # no stale operating point
    labels, _ = idx.query(emb, k=10)
    assert all(idx.items[int(lab)]["model"] != "ct_abdomen" for lab in labels.ravel())
    idx.save()
    with pytest.raises(IndexMismatchError, match="index add --zoo .* --model ct_abdomen"):
        ZooIndex.load(idx.path).check_against(zoo)
    assert idx.add_model(zoo, "ct_abdomen") == n_ct
    idx.save()
    again = ZooIndex.load(idx.path)
    again.check_against(zoo)
    labels, _ = again.query(emb, k=1)
    assert again.items[int(labels[0, 0])]["model"] == "ct_abdomen"
    only_df, _ = again.query(emb, k=5, origins=("data-free",))
    assert {again.items[int(lab)]["origin"] for lab in only_df.ravel()} == {"data-free"}
    assert len(list(idx.path.glob("graph-*.bin"))) == 1  # the old graphs are gone


def test_index_stale_and_extra_models_are_reported(env, tmp_path):
    from ModelSelectorLib.selection.index import load_index
    from ModelSelectorLib.selection.prototypes import load_prototypes, save_prototypes

    zoo = _copy_zoo(env, tmp_path)
    idx = load_index(zoo)
    bundle = zoo.get("mr_abdomen")
    pset = load_prototypes(bundle)
    save_prototypes(bundle, pset.select(["exemplar"]))
    with pytest.raises(IndexMismatchError, match="prototypes of 'mr_abdomen' changed"):
        idx.check_against(zoo)
    zoo.remove("dx_chest")
    with pytest.raises(IndexMismatchError, match="index remove --zoo .* --model dx_chest"):
        idx.check_against(zoo)


def test_interrupted_save_leaves_old_index_loadable(env, tmp_path, monkeypatch):
    import ModelSelectorLib.selection.index as index_mod

    zoo = _copy_zoo(env, tmp_path)
    idx = index_mod.load_index(zoo)
    before = sorted(idx.model_names())
    idx.remove_model("mr_abdomen")

    def failing_write_json(target, data):  # the sidecar write dies half-way
        Path(str(target) + ".partial").write_text(json.dumps(data)[:50])
        raise OSError("disk full")

    monkeypatch.setattr(index_mod, "write_json", failing_write_json)
    with pytest.raises(OSError, match="disk full"):
        idx.save()
    monkeypatch.undo()
    old = index_mod.load_index(zoo)
    assert old.model_names() == before
    old.check_against(zoo)
    assert len(list(old.path.glob("graph-*.bin"))) == 1  # the new graph of the failed save was removed


def test_errors_empty_zoo_missing_and_corrupt_index(env, tmp_path):
    from ModelSelectorLib.selection.calibration import build_index
    from ModelSelectorLib.selection.selector import select
    from ModelSelectorLib.zoo import Zoo

    image = env["queries"]["ct_abdomen"]
    empty = Zoo.create(tmp_path / "empty")
    with pytest.raises(IndexMismatchError, match="holds no models"):
        select(image, empty, encoder=env["encoder"])
    with pytest.raises(IndexMismatchError, match="holds no models"):
        build_index(empty)
    zoo = _copy_zoo(env, tmp_path)
    shutil.rmtree(zoo.path / "index")
    with pytest.raises(IndexMismatchError, match="no prototype index .*index build --zoo"):
        select(image, zoo, encoder=env["encoder"])
    zoo2 = _copy_zoo(env, tmp_path / "b")
    (zoo2.path / "index" / "index.json").write_text("{ not json")
    with pytest.raises(IndexMismatchError, match="corrupt index sidecar"):
        select(image, zoo2, encoder=env["encoder"])
    zoo3 = _copy_zoo(env, tmp_path / "c")
    graph = next((zoo3.path / "index").glob("graph-*.bin"))
    graph.write_bytes(graph.read_bytes()[:100])
    with pytest.raises(IndexMismatchError, match="corrupt index graph|holds"):
        select(image, zoo3, encoder=env["encoder"])


# --- command line ---------------------------------------------------------------------------------------
def test_select_json_cli(env, tmp_path, capsys):
    from ModelSelectorLib.cli import main

    path = tmp_path / "mr.nii.gz"
    write_image(env["queries"]["mr_abdomen"], path)
    assert main(["select", str(path), "--zoo", str(env["zoo"].path), "--json", "--top", "3"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert set(data) == {"input", "fits", "needs_volume", "fits_once_inverted", "models"} and data[
        "input"
    ] == str(path)
    assert data["fits"] is True and data["models"][0]["name"] == "mr_abdomen"
    for m in data["models"]:
        assert set(m) == {
            "name",
            "version",
            "task",
            "modality",
            "body_region",
            "score",
            "fits",
            "needs_volume",
            "slice_wise",
            "answer",
            "field_of_view",
            "units",
            "held_out",
            "demonstration",
        }
    top = data["models"][0]
    assert top["answer"] == "yes" and top["field_of_view"]["verdict"] == "fits"
    assert top["units"] == {"expected": "mr", "air_share": 0.0, "fits": True}
    noise = tmp_path / "noise.nii.gz"
    write_image(noise_volume(9), noise)
    assert main(["select", str(noise), "--zoo", str(env["zoo"].path)]) == 0
    assert "No model in the zoo fits this image" in capsys.readouterr().out


def test_select_shows_its_steps_as_progress_lines_and_keeps_stdout_for_the_answer(env, tmp_path, capsys,
                                                                                  monkeypatch):  # fmt: skip
    """``select`` says each step (reading, embedding, then each model verified) in the PROGRESS lines the Slicer
    module reads, from 0 to 1; stdout of ``--json`` holds only the answer, and the library is quiet unless asked."""
    from ModelSelectorLib.cli import main
    from ModelSelectorLib.selection.selector import select

    monkeypatch.setenv("MODELSELECTOR_PROGRESS", "lines")
    path = tmp_path / "ct.nii.gz"
    write_image(env["queries"]["ct_abdomen"], path)
    assert main(["select", str(path), "--zoo", str(env["zoo"].path), "--json", "--top", "1"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["models"][0]["name"] == "ct_abdomen"
    lines = [line.split(" ", 2) for line in err.splitlines() if line.startswith("PROGRESS ")]
    fractions, steps = [float(f) for _, f, _ in lines], [step for _, _, step in lines]
    assert list(dict.fromkeys(steps))[:2] == ["reading the image", "embedding the image"], lines
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert fractions == sorted(fractions), lines
    # the two volume models are verified (the 2D one cannot take a volume), each said as it starts
    assert {s for s in steps if s.startswith("verifying ")} == {
        "verifying ct_abdomen",
        "verifying mr_abdomen",
    }
    select(path, zoo=env["zoo"], top_k=1)
    assert "PROGRESS" not in capsys.readouterr().err


def test_index_and_prototypes_cli(env, tmp_path, capsys):
    from ModelSelectorLib.cli import main

    zoo = _copy_zoo(env, tmp_path)
    z = str(zoo.path)
    assert main(["index", "remove", "--zoo", z, "--model", "dx_chest"]) == 0
    assert main(["index", "check", "--zoo", z]) == 4  # IndexMismatchError's exit status
    assert "index add --zoo" in capsys.readouterr().err
    assert main(["prototypes", "--zoo", z, "--model", "dx_chest", "--data-free", "1", "--steps", "2"]) == 0
    assert main(["index", "add", "--zoo", z, "--model", "dx_chest"]) == 0
    assert main(["index", "check", "--zoo", z]) == 0
    out = capsys.readouterr().out
    assert "1 data-free prototype(s)" in out or "data-free prototype(s)" in out
    assert "matches the zoo" in out
    (unknown,) = [line for line in out.splitlines() if "the encoder has no class for" in line]
    assert (
        "mr_abdomen (MR:ABDOMEN)" in unknown and "ct_abdomen" not in unknown
    )  # the encoder has no MR:ABDOMEN


def test_prototypes_of_every_model_at_once_then_the_index_rebuilt(env, tmp_path, capsys):
    """`prototypes --all` refreshes every model (as after an encoder change): the index then names each one as
    stale until it is rebuilt."""
    from ModelSelectorLib.cli import main
    from ModelSelectorLib.selection.prototypes import load_prototypes

    zoo = _copy_zoo(env, tmp_path)
    z = str(zoo.path)
    before = {m: load_prototypes(zoo.get(m)).meta["data-free"]["created"] for m in MODELS}
    assert main(["prototypes", "--zoo", z, "--all", "--data-free", "1", "--steps", "2", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert all(f"{m} " in out for m in MODELS) and f"index build --zoo {z}" in out
    for m in MODELS:
        meta = load_prototypes(zoo.get(m)).meta["data-free"]
        assert meta["n_inputs"] == 1 and meta["seed"] == 5 and meta["created"] >= before[m]
    assert main(["index", "check", "--zoo", z]) == 4
    assert main(["index", "build", "--zoo", z]) == 0
    assert main(["index", "check", "--zoo", z]) == 0
    capsys.readouterr()
    assert main(["prototypes", "--zoo", z, "--all", "--exemplars", str(tmp_path)]) == 2
    assert "leave out --exemplars" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prototypes", "--zoo", z, "--all", "--model", "dx_chest"])


def test_removing_a_model_from_the_zoo_removes_it_from_the_index(env, tmp_path, capsys):
    """`zoo remove` of an indexed model takes it out of the index too: an index listing a model the zoo no
    longer holds stopped every selection until `index remove` was run."""
    from ModelSelectorLib.cli import main
    from ModelSelectorLib.selection.index import load_index
    from ModelSelectorLib.selection.selector import select

    zoo = _copy_zoo(env, tmp_path)
    assert main(["zoo", "remove", "mr_abdomen", "--zoo", str(zoo.path)]) == 0
    assert "from the zoo's index" in capsys.readouterr().out
    idx = load_index(zoo.path)
    assert "mr_abdomen" not in idx.models
    idx.check_against(zoo.reload())
    sel = select(env["queries"]["ct_abdomen"], zoo.path, encoder=env["encoder"])
    assert "mr_abdomen" not in [m.name for m in sel.models]


def test_data_free_pictures_are_written_with_the_prototypes_they_show(env):
    """The pictures of the synthesised inputs go beside the bundle after its prototypes are saved (a cancel
    before that leaves neither), one per data-free prototype input, up to four."""
    from ModelSelectorLib.selection.prototypes import PNG_DIR, load_prototypes

    for name in MODELS:
        bundle = env["zoo"].get(name)
        pictures = sorted(p.name for p in (bundle / PNG_DIR).glob("data-free-*.png"))
        assert pictures == ["data-free-0.png", "data-free-1.png"], (name, pictures)
        saved = load_prototypes(bundle)
        assert all((bundle / PNG_DIR / p).stat().st_mtime >= (bundle / "prototypes").stat().st_mtime - 1
                   for p in pictures) and len(saved.select(["data-free"]))  # fmt: skip


def test_a_broken_bundle_fits_nothing_and_the_others_are_still_ranked(env, tmp_path):
    """Damaged weights of one model used to stop every selection in the zoo; now that model fits nothing, the
    selection says why, and the right model is still first."""
    from ModelSelectorLib.selection.index import load_index
    from ModelSelectorLib.selection.selector import select
    from ModelSelectorLib.zoo.bundle import WEIGHTS_FILE

    zoo = _copy_zoo(env, tmp_path)
    weights = zoo.get("mr_abdomen") / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    sel = select(env["queries"]["ct_abdomen"], zoo, load_index(zoo), env["encoder"], top_k=None)
    assert sel.models[0].name == "ct_abdomen" and sel.models[0].fits and sel.calibrated
    broken = next(m for m in sel.models if m.name == "mr_abdomen")
    assert not broken.fits and broken.score < 1e-6
    assert any(r.startswith("the model cannot be used, so it fits nothing: ") for r in broken.reasons)
    assert [w for w in sel.warnings if w.startswith("the model mr_abdomen cannot be used")]


def test_a_demonstration_model_does_not_outrank_one_to_rely_on_at_the_same_shown_score():
    """Two cardiac models fitting a volume at 0.9996 and 0.9994: the 2-epoch demonstration one came first (and
    `demo` applied it first) on the fourth decimal of a saturated score (shown as 1.000 and 0.999)."""
    from ModelSelectorLib.selection.selector import ModelMatch, ranking_key

    def match(name, score, fits=True, demonstration=False):
        return ModelMatch(name, "1", "segmentation", "MR", "HEART", score, fits, demonstration=demonstration)

    tiny, cardiac = match("tiny", 0.99964, demonstration=True), match("cardiac", 0.99941)
    assert [m.name for m in sorted([tiny, cardiac], key=ranking_key)] == ["cardiac", "tiny"]
    clearly = match("tiny", 0.95, demonstration=True), match("cardiac", 0.80)
    assert [m.name for m in sorted(clearly, key=ranking_key)] == [
        "tiny",
        "cardiac",
    ]  # a real difference stands
    unfit = match("other", 0.999, fits=False)
    assert sorted([unfit, match("low", 0.6)], key=ranking_key)[0].name == "low"


def test_the_notes_hold_every_advice_of_the_selection_and_the_text_shows_them():
    """One list of notes for the terminal and the demo's page: inverted grey levels, the whole volume (and
    slice-wise models), what keeps a matching model from taking the image; the warnings only when asked
    (the command line prints those on stderr)."""
    from ModelSelectorLib.selection.field_of_view import FieldOfView
    from ModelSelectorLib.selection.intensity_units import HOUNSFIELD, Units
    from ModelSelectorLib.selection.selector import ModelMatch, Selection

    def match(name, **kw):
        return ModelMatch(name, "1", "segmentation", "CT", "ABDOMEN", 0.9, False, domain_matches=True, **kw)

    models = [match("ct-organs", units=Units(HOUNSFIELD, 0.0)),
              match("ct-crop", field_of_view=FieldOfView(40.0, 400.0)),
              match("mr-heart", needs_volume=True, slice_wise=True), match("unrelated")]  # fmt: skip
    sel = Selection("a.png", False, models, needs_volume=["mr-heart"], fits_once_inverted=["dx-chest-lungs"],
                    warnings=["the index holds no calibration"])  # fmt: skip
    notes = sel.notes()
    assert [n.split(" ")[0] for n in notes] == ["It", "mr-heart", "mr-heart", "ct-organs", "ct-crop"]
    assert notes[0].startswith("It looks inverted: dx-chest-lungs fits it") and "invert it" in notes[0]
    assert "load the whole series or volume" in notes[1] and "slice by slice" in notes[2]
    assert "Hounsfield units" in notes[3] and notes[4].endswith(", then select again.")
    assert sel.notes(warnings=True) == notes + ["the index holds no calibration"]
    text = sel.to_text()
    assert all(n in text for n in notes) and "the index holds no calibration" not in text
    assert text.index("No model in the zoo fits this image.") < text.index(notes[0]) < text.index("MODEL")
    fitting = Selection("b.png", True, [match("unrelated")])
    assert fitting.notes(warnings=True) == []
