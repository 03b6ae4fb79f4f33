"""Coarse-to-fine landmark models, whole contours as Slicer curves, landmark scoring and landmark models in the
ranking tools. Synthetic radiographs only (a bright blob at every landmark), a few seconds each."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ModelSelectorLib.datasets.landmarks import make_synthetic_cxr  # noqa: E402
from ModelSelectorLib.evaluation.landmarks import holm, paired_comparison  # noqa: E402
from ModelSelectorLib.io import Image, read_image  # noqa: E402
from ModelSelectorLib.io.markups import read_markups, read_markups_set  # noqa: E402
from ModelSelectorLib.models.base import Prediction  # noqa: E402
from ModelSelectorLib.models.landmark_scoring import contour_mask, lung_dice  # noqa: E402
from ModelSelectorLib.models.landmark_stages import (  # noqa: E402
    REFINE_PATCH,
    apply_offsets,
    contour_frames,
    crop_patches,
    fit_contour,
    fit_contour_model,
    fit_shape_model,
    landmark_conditioning,
    mean_offsets,
    nearest_on_polygon,
    offset_model,
    project_shape,
    refine_points,
    snap_to_contours,
)
from ModelSelectorLib.models.landmarks import GROUPS, LandmarkRuntime, LandmarkSchema, contour_curves  # noqa: E402
from ModelSelectorLib.training.landmark_refine import train_refiner  # noqa: E402
from ModelSelectorLib.training.landmark_study import GridConfig, train_into_zoo  # noqa: E402
from ModelSelectorLib.training.landmarks import LandmarkTrainConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WHOLE = {g: 1 for g in GROUPS}  # every contour point: 166 landmarks


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """24 labelled synthetic radiographs (the last one lungs only) + 2 unlabelled, 64 x 56 px, 0.5 mm/px."""
    return make_synthetic_cxr(
        tmp_path_factory.mktemp("cxr"), n_labelled=24, n_unlabelled=2, width=64, height=56
    )


def _quick(**train) -> GridConfig:
    cfg = GridConfig.quick()
    cfg.train.update(train)
    return cfg


# --- the stages ------------------------------------------------------------------------------------------------
def test_patches_copy_the_image_around_each_centre_and_pad_with_zeros():
    img = torch.arange(20 * 16, dtype=torch.float32).reshape(1, 20, 16) + 1
    centres = torch.tensor([[[10.2, 7.6], [0.0, 0.0], [19.4, 15.9]]])
    patches, origin = crop_patches(img, centres, 8)
    assert patches.shape == (3, 1, 8, 8) and origin.tolist() == [[[6, 4], [-4, -4], [15, 12]]]
    np.testing.assert_array_equal(patches[0, 0].numpy(), img[0, 6:14, 4:12].numpy())
    assert (patches[1, 0, :4].numpy() == 0).all() and (
        patches[1, 0, 4:, 4:].numpy() == img[0, :4, :4].numpy()
    ).all()
    assert (patches[2, 0, 5:].numpy() == 0).all() and (patches[2, 0, :, 4:].numpy() == 0).all()


def test_conditioning_names_the_group_and_the_position_along_the_contour():
    cond = landmark_conditioning(["RL_00", "RL_11", "H_13", "LCLA_22"], GROUPS)
    assert cond.shape == (4, 7) and cond.dtype == np.float32
    np.testing.assert_array_equal(cond[:, :5].argmax(1), [0, 0, 2, 4])
    np.testing.assert_allclose(cond[1, 5:], [math.cos(math.pi / 2), math.sin(math.pi / 2)], atol=1e-6)
    np.testing.assert_allclose(cond[2, 5:], [-1.0, 0.0], atol=1e-6)  # point 13 of 26: half way round


def test_shape_model_is_a_projection_onto_the_main_modes():
    rng = np.random.default_rng(0)
    mean = rng.uniform(10, 50, (30, 2))
    modes = rng.normal(size=(3, 30, 2))
    shapes = mean + np.einsum("nk,kpd->npd", rng.normal(size=(40, 3)) * [4.0, 2.0, 1.0], modes)
    model = fit_shape_model(shapes, 3)
    np.testing.assert_allclose(project_shape(model, shapes), shapes, atol=1e-3)  # the shapes lie in the span
    noisy = shapes[:5] + rng.normal(0, 0.5, (5, 30, 2))
    once = project_shape(model, noisy)
    np.testing.assert_allclose(project_shape(model, once), once, atol=1e-3)  # idempotent
    assert np.abs(once - shapes[:5]).mean() < np.abs(noisy - shapes[:5]).mean()  # off-model noise removed
    assert all(not p.requires_grad for p in model.parameters())


def _ellipses(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` shapes of two closed contours (12 and 10 points at regular angles) whose centres, radii and
    rotation vary: ``(n, 22, 2)``."""
    out = []
    for _ in range(n):
        shape = []
        for m, centre in ((12, (20.0, 30.0)), (10, (44.0, 30.0))):
            a = np.linspace(0, 2 * np.pi, m, endpoint=False) + rng.normal(0, 0.05)
            rx, ry = rng.normal(9, 1.5), rng.normal(14, 2.0)
            c = np.asarray(centre) + rng.normal(0, 2.0, 2)
            shape.append(c + np.stack([rx * np.cos(a), ry * np.sin(a)], 1))
        out.append(np.concatenate(shape))
    return np.stack(out)


def test_contour_model_generates_shapes_from_standardised_mode_weights():
    rng = np.random.default_rng(1)
    shapes = _ellipses(rng, 60)
    model = fit_contour_model(shapes, 6)
    assert tuple(model.weight.shape) == (44, 6) and all(not p.requires_grad for p in model.parameters())
    np.testing.assert_allclose(model.bias.detach().numpy(), shapes.reshape(60, -1).mean(0), atol=1e-4)
    # columns: orthogonal modes whose lengths are the standard deviations of the shapes along them
    modes = model.weight.detach().double().numpy()
    gram = modes.T @ modes
    np.testing.assert_allclose(gram, np.diag(np.diag(gram)), atol=1e-3)
    centred = shapes.reshape(60, -1) - shapes.reshape(60, -1).mean(0)
    weights = centred @ modes / np.diag(gram)  # the shapes' standardised mode weights
    np.testing.assert_allclose(weights.std(0, ddof=1), 1.0, atol=1e-3)


def test_contour_fit_trusts_points_across_their_contour_and_not_along_it():
    """Points slid along their contours are put back by the fit that hardly trusts the along direction, and
    much less by a plain projection; points moved across their contours are pulled back by both."""
    rng = np.random.default_rng(2)
    shapes = _ellipses(rng, 80)
    model = fit_contour_model(shapes[:60], 8)
    truth = fit_contour(model, shapes[60:], [], prior=0.0)  # the test shapes as the model best draws them
    schema = LandmarkSchema.from_names(
        [f"RL_{i:02d}" for i in range(12)] + [f"LL_{i:02d}" for i in range(10)]
    )
    contours = schema.contours
    assert [c.tolist() for c in contours] == [list(range(12)), list(range(12, 22))]
    tangent = np.stack([contour_frames(t, contours)[0] for t in truth])
    slid = truth + tangent * rng.choice([-1.5, 1.5], truth.shape[:2])[..., None]

    def error(points: np.ndarray) -> float:
        return float(np.linalg.norm(points - truth, axis=-1).mean())

    trusting = fit_contour(model, slid, contours, along_weight=0.01, prior=0.0)
    plain = fit_contour(model, slid, contours, along_weight=1.0, prior=0.0)
    e_trusting, e_plain = error(trusting), error(plain)
    assert e_trusting < 0.3 * e_plain and e_plain < error(slid), (e_trusting, e_plain)
    normal = np.stack([contour_frames(t, contours)[1] for t in truth])
    pushed = truth + normal * rng.choice([-1.5, 1.5], truth.shape[:2])[..., None]
    for along in (0.01, 1.0):
        refit = fit_contour(model, pushed, contours, along_weight=along, prior=0.0)
        assert error(refit) < 0.8 * error(pushed)
    # with no contours every point counts fully in both directions, whatever the along weight
    np.testing.assert_allclose(fit_contour(model, slid, [], along_weight=0.01, prior=0.0),
                               fit_contour(model, slid, [], along_weight=1.0, prior=0.0), atol=1e-9)  # fmt: skip
    # a strong prior pulls the fit towards the mean shape
    mean = model.bias.detach().double().numpy().reshape(22, 2)
    assert np.abs(fit_contour(model, truth, contours, prior=1e6) - mean).max() < 1e-2


def test_offsets_are_each_landmarks_mean_error_along_and_across_its_predicted_contour():
    """Predictions that miss each landmark by a fixed amount along and across their own contour (plus noise that
    averages out) give back those amounts, and the offset stage holding them moves the predictions onto the
    truth; a true point that is missing is left out of its landmark's mean."""
    rng = np.random.default_rng(4)
    contours = [np.arange(12), np.arange(12, 22)]
    predicted = _ellipses(rng, 8)
    along, across = rng.normal(0, 0.8, 22), rng.normal(0, 0.5, 22)
    noise = rng.normal(0, 0.3, (8, 22, 2))
    noise -= noise.mean(0)  # zero mean per landmark and direction
    frames = [contour_frames(q, contours) for q in predicted]
    truth = np.stack([q + (along[:, None] + e[:, :1]) * t + (across[:, None] + e[:, 1:]) * n
                      for q, (t, n), e in zip(predicted, frames, noise)])  # fmt: skip
    offsets = mean_offsets(predicted, truth, contours)
    np.testing.assert_allclose(offsets, np.stack([along, across], 1), atol=1e-9)
    stage = offset_model(offsets)
    assert tuple(stage.bias.shape) == (44,) and not stage.weight.detach().any()
    moved = apply_offsets(stage, predicted, contours)
    np.testing.assert_allclose(
        moved - truth, -np.stack([e[:, :1] * t + e[:, 1:] * n for (t, n), e in zip(frames, noise)]), atol=1e-5
    )  # float32 weights
    np.testing.assert_array_equal(apply_offsets(None, predicted, contours), predicted)
    # a missing true point leaves its landmark's mean to the other images
    gap = truth.copy()
    gap[0, 5] = np.nan
    expected = np.stack([along, across], 1)[5] + noise[1:, 5].mean(0)
    np.testing.assert_allclose(mean_offsets(predicted, gap, contours)[5], expected, atol=1e-9)


def test_offsets_without_a_contour_stage_are_refused():
    from ModelSelectorLib.errors import TrainingError

    for settings in ({"point_offsets": True}, {"point_offsets": True, "contour_modes": 4}):
        with pytest.raises(TrainingError, match="set contour_modes > 0 and refine_steps > 0"):
            LandmarkTrainConfig.from_dict(settings)
    assert LandmarkTrainConfig.from_dict(
        {"point_offsets": True, "contour_modes": 4, "refine_steps": 3}
    ).point_offsets


def test_points_snap_onto_the_outline_of_their_contour():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    outline = np.concatenate([square, square + 20, [[5.0, 5.0]]])[None]
    contours = [np.arange(4), np.arange(4, 8)]  # point 8 lies on no contour
    points = np.array(
        [[[3, -2], [12, 4], [6, 9], [-1, 11], [23, 21], [30, 20], [31, 31], [19, 25], [1, 1]]], float
    )
    snapped = snap_to_contours(points, outline, contours)
    expected = [[3, 0], [10, 4], [6, 10], [0, 10], [23, 20], [30, 20], [30, 30], [20, 25], [1, 1]]
    np.testing.assert_allclose(snapped[0], expected, atol=1e-9)  # the lone point stays
    # any closed polygon, whatever its number of corners (a dense outline)
    near = nearest_on_polygon(np.array([[5.0, 13.0], [-3.0, 4.0], [9.0, 9.5]]), square)
    np.testing.assert_allclose(near, [[5, 10], [0, 4], [9, 10]], atol=1e-9)


def test_refinement_moves_displaced_points_onto_the_landmarks():
    """The refiner learns, from patches around displaced true landmarks, to move a point back to its landmark
    (six landmarks, each a blob, far apart)."""
    from ModelSelectorLib.training.landmark_refine import FineArrays

    rng = np.random.default_rng(0)
    size, n_img = 64, 40
    names = ["RL_00", "RL_10", "RL_20", "LL_00", "LL_25", "H_05"]
    base = np.array([[12, 12], [12, 50], [30, 30], [50, 12], [50, 50], [32, 52]], float)
    points = base + rng.uniform(-4, 4, (n_img, len(names), 2))
    grid = np.arange(size, dtype=float)
    images = np.zeros((n_img, size, size), np.float32)
    for k in range(n_img):
        for x, y in points[k]:
            images[k] += np.exp(-((grid[:, None] - x) ** 2 + (grid[None, :] - y) ** 2) / (2 * 1.5**2)).astype(
                np.float32
            )
    images += rng.normal(0, 0.05, images.shape).astype(np.float32)
    cond = landmark_conditioning(names, GROUPS)
    cfg = LandmarkTrainConfig(size=16, batch_size=8, refine_steps=150, refine_network="refine-tiny", refine_points=4,
                              refine_jitter=3.0, refine_lr=0.01, threads=1)  # fmt: skip
    train = FineArrays(torch.from_numpy(images[:30]), torch.from_numpy(points[:30]).float(),
                       torch.ones((30, len(names)), dtype=torch.bool))  # fmt: skip
    net = train_refiner(train, cond, cfg, seed=0)
    truth = points[30:]
    start = truth + rng.normal(0, 3.0, truth.shape)
    refined = refine_points(net, images[30:], start, cond, patch=REFINE_PATCH, radius=3)
    before = np.linalg.norm(start - truth, axis=-1).mean()
    after = np.linalg.norm(refined - truth, axis=-1).mean()
    assert after < 0.5 * before, (before, after)


def test_coarse_to_fine_model_is_one_monai_bundle_with_every_stage_in_model_pt(synth, tmp_path):
    from ModelSelectorLib.models.landmarks import to_original, to_resized
    from ModelSelectorLib.zoo import Zoo, load_bundle
    from ModelSelectorLib.zoo.bundle import LoadedBundle

    cfg = _quick(contour_modes=4, point_offsets=True)
    cfg.steps_per_group = WHOLE
    train_into_zoo(synth, tmp_path / "zoo", cfg, name="lm", variant="student_supervised")
    path = Zoo(tmp_path / "zoo").get("lm")
    inference = json.loads((path / "configs" / "inference.json").read_text(encoding="utf-8"))
    assert inference["network_def"]["_target_"] == "torch.nn.ModuleDict"
    stages = {"coarse", "shape", "refine", "contour", "offset"}
    assert set(inference["network_def"]["modules"]) == stages
    weights = torch.load(str(path / "models" / "model.pt"), weights_only=True)
    assert {k.split(".")[0] for k in weights} == stages
    loaded = load_bundle(path)  # every stage from allow-listed classes: no --trust needed
    runtime = LandmarkRuntime(loaded)
    assert runtime.network is loaded.network["coarse"]  # what fit signals and model inversion use
    image = read_image(synth / "c003.png")
    prediction = runtime.predict(image)
    assert prediction.meta["stages"] == ["coarse", "shape", "refine", "contour", "offset"]
    readme = (path / "docs" / "README.md").read_text(encoding="utf-8")
    assert "contour fit (4 modes)" in readme and "per-landmark offsets" in readme
    # the offset stage moves the final points by its landmarks' offsets, on the coarse grid, and nothing else
    offset = loaded.network["offset"]
    assert offset.bias.detach().abs().max() > 0
    without = torch.nn.ModuleDict({k: v for k, v in loaded.network.items() if k != "offset"})
    plain = LandmarkRuntime(LoadedBundle(without, loaded.card, path, {})).predict(image).meta["points_px"]
    scale = np.asarray(image.array.shape[:2][::-1], float) / 32  # the quick grid: 32 px
    coarse = to_resized(plain, scale)
    contours = LandmarkSchema.from_names(loaded.card.label_names).contours
    expected = to_original(apply_offsets(offset, coarse[None], contours)[0], scale)
    np.testing.assert_allclose(prediction.meta["points_px"], expected, atol=1e-4)
    card = loaded.card
    assert len(card.label_names) == 166 and card.validation_metrics["test_sdr_px_5"] >= 0
    assert {"val_mre_mm", "test_mre_mm", "test_rmse_px", "test_sdr_px_10"} <= set(card.validation_metrics)


def test_the_refined_points_keep_the_image_geometry(synth):
    """Through all stages (refinement, contour fit and offsets included), a 2D image with spacing, origin and an oblique
    direction gives the same points in pixel coordinates as the same pixels without geometry, mapped by that
    geometry."""
    from PIL import Image as PILImage

    from ModelSelectorLib.zoo import ModelCard
    from ModelSelectorLib.zoo.bundle import LoadedBundle

    schema = LandmarkSchema.default({"RL": 4, "LL": 5})
    cfg = LandmarkTrainConfig(size=16, refine_network="refine-tiny")
    from ModelSelectorLib.training.landmark_refine import pipeline_network
    from ModelSelectorLib.training.landmarks import build_network

    torch.manual_seed(0)
    shapes = np.random.default_rng(0).uniform(2, 14, (12, schema.n_points, 2))
    net = pipeline_network(build_network("student-tiny", schema.n_points), None,
                           build_network(cfg.refine_network, 1, in_channels=8), fit_contour_model(shapes, 4),
                           offset_model(np.random.default_rng(1).normal(0, 0.5, (schema.n_points, 2)))).eval()  # fmt: skip
    card = ModelCard("lm", "1", "landmarks", "DX", "CHEST", [{"value": i, "name": n} for i, n in enumerate(schema.names)],
                     spatial_dims=2, roi_size=[16, 16])  # fmt: skip
    runtime = LandmarkRuntime(LoadedBundle(net, card, synth, {}))
    arr = np.asarray(PILImage.open(synth / "c003.png"), np.float32)
    c, s = math.cos(math.radians(25)), math.sin(math.radians(25))
    spacing, origin, direction = (0.6, 1.1), (-40.0, 12.0), (c, -s, s, c)
    plain_prediction = runtime.predict(Image(arr, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)))
    assert plain_prediction.meta["stages"] == ["coarse", "refine", "contour", "offset"]
    plain = plain_prediction.value
    oblique = runtime.predict(Image(arr, spacing, origin, direction)).value
    expected = np.asarray(origin) + plain[:, :2] @ (np.asarray(direction).reshape(2, 2) @ np.diag(spacing)).T
    np.testing.assert_allclose(oblique[:, :2], expected, atol=1e-4)


# --- contours for Slicer -----------------------------------------------------------------------------------------
def _oracle_prediction(tmp_path: Path) -> Prediction:
    """Every contour point of a synthetic chest on an oblique 2D grid, as a landmark runtime predicts them."""
    from ModelSelectorLib.datasets.landmarks import synthetic_shapes

    shapes = synthetic_shapes(np.random.default_rng(3), 120, 100)
    names = LandmarkSchema.default(WHOLE).names
    px = np.concatenate([shapes[g] for g in GROUPS])
    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    image = Image(np.zeros((100, 120), np.float32), (0.7, 0.9), (-30.0, 15.0), (c, -s, s, c))
    m = image.ijk_to_lps()
    lps = np.zeros((len(px), 3))
    lps[:, :2] = px @ m[:2, :2].T + m[:2, 2]
    return Prediction("dx-lm", "1", image, lps, names, {"points_px": px})


def test_whole_contours_are_written_as_one_closed_curve_per_structure(tmp_path):
    pred = _oracle_prediction(tmp_path)
    curves = contour_curves(pred.value, pred.names, pred.model)
    assert [len(c.labels) for c in curves] == [44, 50, 26, 23, 23] and all(c.closed for c in curves)
    out = LandmarkRuntime.write(None, pred, tmp_path / "chest.mrk.json")  # write needs no network
    marks = read_markups_set(out)
    assert [m["type"] for m in marks] == ["ClosedCurve"] * 5
    assert [m["name"] for m in marks] == ["dx-lm right lung", "dx-lm left lung", "dx-lm heart",
                                          "dx-lm right clavicle", "dx-lm left clavicle"]  # fmt: skip
    pts, labels = read_markups(out)
    np.testing.assert_allclose(pts, pred.value, atol=1e-9)
    assert labels == pred.names
    assert LandmarkRuntime.slicer_node_class == "vtkMRMLMarkupsClosedCurveNode"


def test_slicer_loads_the_curves_with_their_point_counts_and_lps_positions(tmp_path):
    """Real MRML (slicer-core): the Slicer module's loader turns the file into five closed-curve nodes."""
    slicer = pytest.importorskip("slicer", reason="needs slicer-core for MRML classes")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the 'slicer' module found has no MRML classes")
    sys.path.insert(0, str(ROOT / "ModelSelector"))
    import ModelSelector as msm

    pred = _oracle_prediction(tmp_path)
    path = LandmarkRuntime.write(None, pred, tmp_path / "chest.mrk.json")
    scene = slicer.vtkMRMLScene()
    volume = msm.make_test_volume(scene, np.random.default_rng(0))
    first = msm.ModelSelectorLogic().loadResult(str(path), "dx-lm", "landmarks", volume)
    nodes = [scene.GetNthNodeByClass(i, "vtkMRMLMarkupsClosedCurveNode")
             for i in range(scene.GetNumberOfNodesByClass("vtkMRMLMarkupsClosedCurveNode"))]  # fmt: skip
    assert first is nodes[0] and first.GetClassName() == LandmarkRuntime.slicer_node_class
    assert [n.GetNumberOfControlPoints() for n in nodes] == [44, 50, 26, 23, 23]
    assert [n.GetName() for n in nodes][2] == "dx-lm heart"
    from ModelSelectorSupport.markups import resultParts  # what a job removes with its result

    assert [n.GetID() for n in resultParts(first)] == [n.GetID() for n in nodes[1:]]
    ras = np.array(
        [[n.GetNthControlPointPosition(i) for i in range(n.GetNumberOfControlPoints())] for n in nodes[:1]][0]
    )
    np.testing.assert_allclose(
        ras * [-1, -1, 1], pred.value[:44], atol=1e-4
    )  # RAS in the scene, LPS in the file
    heart = np.array([nodes[2].GetNthControlPointPosition(i) for i in range(26)])
    np.testing.assert_allclose(heart * [-1, -1, 1], pred.value[94:120], atol=1e-4)


# --- scoring ---------------------------------------------------------------------------------------------------------
def test_runtime_scores_a_prediction_against_its_reference_file(tmp_path):
    pred = _oracle_prediction(tmp_path)
    schema = LandmarkSchema.default(WHOLE)
    px = pred.meta["points_px"]
    ref = {g: px[schema.channels(g)].tolist() for g in GROUPS}
    ref["_meta"] = {"pixel_spacing_mm": 0.7}
    (tmp_path / "c_landmarks.json").write_text(json.dumps(ref), encoding="utf-8")
    mask = contour_mask(px[schema.channels("RL")], (100, 120)) | contour_mask(
        px[schema.channels("LL")], (100, 120)
    )
    from PIL import Image as PILImage

    PILImage.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "c_lungmask.png")
    runtime = LandmarkRuntime.__new__(LandmarkRuntime)
    perfect = runtime.score(pred, tmp_path / "c_landmarks.json")
    assert perfect["mre_mm"] == 0 and perfect["sdr_px_5"] == 1 and perfect["dice_lungs"] == pytest.approx(1.0)
    moved = Prediction(
        pred.model, pred.version, pred.image, pred.value, pred.names, {"points_px": px + [2.4, 3.2]}
    )
    off = runtime.score(moved, tmp_path / "c_landmarks.json")
    assert off["mre_px"] == pytest.approx(4.0) and off["mre_mm"] == pytest.approx(2.8)
    assert off["sdr_px_5"] == 1 and off["sdr_2"] == 0 and 0.8 < off["dice_lungs"] < 1.0
    assert lung_dice(px, schema, mask) == pytest.approx(1.0)


def test_paired_comparison_over_images_and_seeds():
    rng = np.random.default_rng(0)
    base = rng.uniform(4, 8, (5, 40))
    better = base - 0.5 + rng.normal(0, 0.2, base.shape)
    res = paired_comparison(better, base)
    assert (
        res["mean_diff"] == pytest.approx(-0.5, abs=0.05) and res["ci_high"] < 0 and res["p_wilcoxon"] < 1e-6
    )
    same = paired_comparison(base + rng.normal(0, 0.2, base.shape), base)
    assert same["ci_low"] < 0 < same["ci_high"] and same["p_wilcoxon"] > 0.01
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


# --- ranking ---------------------------------------------------------------------------------------------------------
def test_landmark_sweep_ranks_candidates_and_the_gate_promotes_only_a_better_model(synth, tmp_path):
    from ModelSelectorLib.errors import BundleError
    from ModelSelectorLib.ranking.promotion import promote
    from ModelSelectorLib.ranking.sweep import expand_sweep, run_sweep
    from ModelSelectorLib.zoo import Zoo

    base = dict(GridConfig.quick().train, steps_per_group={"RL": 11, "LL": 10})
    spec = expand_sweep({"task": "lm", "task_type": "landmarks", "seed": 0, "test_fraction": 0.25, "base": base,
                         "candidates": [{"name": "short", "steps": 1, "refine_steps": 1},
                                        {"name": "long", "steps": 60, "refine_steps": 40}]})  # fmt: skip
    zoo = tmp_path / "zoo"
    result = run_sweep(synth, spec, zoo, workers=1, threads=1)
    assert result["metric"] == "mre_mm" and [r["candidate"] for r in result["ranking"]] == ["long", "short"]
    assert (result["sweep"] / "report" / "leaderboard.html").is_file()
    assert (result["sweep"] / "report" / "dashboards" / "long" / "overlays").is_dir()
    assert {"mre_mm", "sdr_px_5", "dice_lungs"} <= set(result["best"]["summary"])
    split = result["sweep"] / "test_split.json"
    assert len(json.loads(split.read_text(encoding="utf-8"))["cases"]) == 6
    z = Zoo(zoo)
    first = promote(zoo, "chest-lm", z.get("lm-short"), split)
    assert first["accepted"] and first["version"] == "0.1.0"
    better = promote(zoo, "chest-lm", z.get("lm-long"), split)
    assert better["accepted"] and better["metric"] == "mre_mm" and better["gate"]["mean_improvement"] > 0
    with pytest.raises(BundleError, match=r"has the weights of chest-lm 0\.1\.0"):  # restored, not copied
        promote(zoo, "chest-lm", z.get("lm-short"), split)
    history = [e["action"] for e in Zoo(zoo).history("chest-lm")]
    assert history == ["promote", "promote"]
    assert not Path(Zoo(zoo).version_info("chest-lm")["evaluation"]["split"]).is_absolute()  # no machine path


def test_whole_contours_replace_a_subsample_and_are_gated_on_its_points(synth, tmp_path):
    from ModelSelectorLib.errors import BundleError, ZooError
    from ModelSelectorLib.ranking.promotion import promote, retrain
    from ModelSelectorLib.training.landmark_grid import write_landmark_split
    from ModelSelectorLib.zoo import Zoo

    few, whole = _quick(), _quick(steps=20, refine_steps=10)
    few.steps_per_group = {"RL": 11, "LL": 10}
    whole.steps_per_group = {"RL": 1, "LL": 1}
    train_into_zoo(synth, tmp_path / "cand", few, name="few")
    train_into_zoo(synth, tmp_path / "cand", whole, name="whole")
    split = write_landmark_split(synth, tmp_path / "docs" / "split.json", relative=True)
    assert not Path(json.loads(split.read_text(encoding="utf-8"))["dataset"]).is_absolute()
    cand = Zoo(tmp_path / "cand")
    described = cand.card("few").training_data  # what it learnt from, as the card tells a user
    assert (
        "; right lung, left lung (" in described and "unlabelled" not in described
    )  # supervised: no extra images
    zoo = tmp_path / "zoo"
    assert promote(zoo, "lm", cand.get("few"), split)["accepted"]
    res = promote(zoo, "lm", cand.get("whole"), split, method="bootstrap", dry_run=True)
    cases = json.loads(split.read_text(encoding="utf-8"))["cases"]
    with_mm = [
        c
        for c in cases
        if json.loads((synth / c["label"]).read_text(encoding="utf-8"))["_meta"]["pixel_spacing_mm"]
    ]
    assert res["metric"] == "mre_mm" and res["gate"]["n"] == len(with_mm)  # mm errors need a spacing
    assert res["candidate"]["mre_px"] > 0 and res["current"]["mre_px"] > 0  # both scored, on the same points
    promote(zoo, "lm", cand.get("whole"), split, min_improvement=-1e9, method="bootstrap", level=0.01)
    with pytest.raises(
        BundleError, match=r"lacks .* \(train it on whole contours: steps_per_group 1 for every"
    ):
        promote(zoo, "lm", cand.get("few"), split)
    with pytest.raises(ZooError, match="is a landmarks model and retrain trains segmentation models"):
        retrain(zoo, "lm", synth, split)  # before anything is trained
