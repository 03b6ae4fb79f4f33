"""Landmark heatmap regression: encoding/decoding, metrics, the teacher–student grid, and the landmark path
of ``modelselector apply`` (a Slicer .mrk.json in the input's physical geometry)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import threading

import numpy as np
import pytest
import torch

from ModelSelectorLib.datasets.landmarks import (  # noqa: E402
    labelled_subset,
    load_case,
    load_dataset,
    make_synthetic_cxr,
    split_cases,
)
from ModelSelectorLib.evaluation.landmarks import (  # noqa: E402
    case_radial_errors,
    evaluate_predictions,
    polygon_self_intersects,
    success_detection_rate,
)
from ModelSelectorLib.io.markups import read_markups  # noqa: E402
from ModelSelectorLib.models.heatmaps import decode_heatmaps, heatmap_entropy  # noqa: E402
from ModelSelectorLib.models.landmarks import (  # noqa: E402
    LandmarkRuntime,
    LandmarkSchema,
    landmark_labels,
    normalize_image,
    to_original,
)
from ModelSelectorLib.training.landmark_report import best_student  # noqa: E402
from ModelSelectorLib.training.landmark_study import (  # noqa: E402
    GridConfig,
    compare,
    run_name,
    train_into_zoo,
)
from ModelSelectorLib.training.landmarks import (  # noqa: E402
    VARIANT_TITLES,
    VARIANTS,
    LandmarkTrainConfig,
    build_network,
    count_parameters,
    predict_points,
    render_heatmaps,
    run_variant,
    stack_cases,
    torch_threads,
    train_supervised,
)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    """10 labelled synthetic radiographs (the last one lungs only, no spacing) + 3 unlabelled, 72 x 60 px."""
    return make_synthetic_cxr(tmp_path_factory.mktemp("cxr"), n_labelled=10, n_unlabelled=3, width=72,
                                height=60, spacing_mm=0.5, seed=3)  # fmt: skip


# --- heatmaps --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["centroid", "softargmax"])
def test_heatmap_round_trip_is_sub_pixel(method):
    rng = np.random.default_rng(0)
    pts = rng.uniform(6, 26, (12, 2))
    heat = render_heatmaps(pts, np.ones(12, bool), 32, sigma=1.5)
    assert heat.shape == (12, 32, 32)
    np.testing.assert_allclose(heat.sum((1, 2)), 1.0, rtol=1e-5)
    # layout (x, y): the maximum of a point at x=10, y=20 is at heat[c, 10, 20]
    one = render_heatmaps(np.array([[10.0, 20.0]]), np.ones(1, bool), 32, 1.5)[0]
    assert np.unravel_index(one.argmax(), one.shape) == (10, 20)
    decoded = decode_heatmaps(heat, method)
    assert np.abs(decoded - pts).max() < 0.01
    # logits of a spatial softmax decode to the same points
    decoded_logits = decode_heatmaps(np.log(heat + 1e-12), method, logits=True)
    assert np.abs(decoded_logits - pts).max() < 0.01


def test_missing_landmarks_give_empty_channels():
    heat = render_heatmaps(np.array([[5.0, 5.0], [np.nan, np.nan]]), np.array([True, False]), 16, 1.0)
    assert heat[0].sum() == pytest.approx(1.0) and heat[1].sum() == 0


def test_resize_keeps_coordinates(synth_data):
    schema = LandmarkSchema.default()
    case = load_case(synth_data / "c000.png", 32, schema, synth_data / "c000_landmarks.json")
    raw = json.loads((synth_data / "c000_landmarks.json").read_text(encoding="utf-8"))
    assert case.image.shape == (32, 32) and case.scale == pytest.approx((72 / 32, 60 / 32))
    assert case.spacing_mm == (0.5, 0.5)
    np.testing.assert_allclose(to_original(case.points[:1], case.scale)[0], raw["RL"][0], atol=1e-9)
    # the blob drawn at each landmark is the brightest region near the resized point
    x, y = np.round(case.points[0]).astype(int)
    assert case.image[x, y] > np.median(case.image) + 0.2
    partial = load_case(synth_data / "c009.png", 32, schema, synth_data / "c009_landmarks.json")
    assert partial.spacing_mm is None
    assert partial.mask[schema.channels("RL")].all() and not partial.mask[schema.channels("H")].any()


# --- metrics ---------------------------------------------------------------------------------------------
def test_radial_error_in_mm_with_anisotropic_spacing():
    true = np.array([[10.0, 10.0], [5.0, 5.0]])
    pred = np.array([[13.0, 14.0], [5.0, 5.0]])
    err, unit = case_radial_errors(
        pred, true, np.array([True, False]), scale=(2.0, 1.0), spacing_mm=(0.5, 2.0)
    )
    assert unit == "mm"
    assert err[0] == pytest.approx(math.hypot(3 * 2 * 0.5, 4 * 1 * 2.0))
    assert np.isnan(err[1])
    err_px, unit = case_radial_errors(pred, true, np.array([True, True]), scale=(2.0, 1.0))
    assert unit == "px" and err_px[0] == pytest.approx(math.hypot(6, 4)) and err_px[1] == 0


def test_success_detection_rate():
    sdr = success_detection_rate(np.array([1.0, 3.0, 5.0, np.nan]), [2, 4, 10])
    assert sdr == pytest.approx({"sdr_2": 1 / 3, "sdr_4": 2 / 3, "sdr_10": 1.0})


def test_self_intersection_of_known_polygons():
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    bowtie = np.array([[0, 0], [1, 1], [1, 0], [0, 1]], float)
    t = np.linspace(0, 2 * np.pi, 44, endpoint=False)
    ellipse = np.stack([10 + 3 * np.cos(t), 10 + 8 * np.sin(t)], 1)
    twisted = ellipse.copy()
    twisted[[5, 25]] = twisted[[25, 5]]
    assert not polygon_self_intersects(square)
    assert polygon_self_intersects(bowtie)
    assert not polygon_self_intersects(ellipse)
    assert polygon_self_intersects(twisted)


def test_evaluate_predictions_per_group_and_plausibility(synth_data):
    schema = LandmarkSchema.default()
    cases = [
        load_case(synth_data / f"c00{i}.png", 32, schema, synth_data / f"c00{i}_landmarks.json")
        for i in (0, 9)
    ]
    preds = np.stack([np.nan_to_num(c.points, nan=0.0) for c in cases])
    preds[0, schema.channels("H"), 0] += 1.0  # heart 1 px right in the resized grid of the case with spacing
    rl = schema.channels("RL")
    preds[1, rl[[1, 6]]] = preds[1, rl[[6, 1]]]  # a crossed right lung contour
    m = evaluate_predictions(preds, cases, schema, radii=(1.0, 2.0))
    assert m["mre_mm_H"] == pytest.approx(72 / 32 * 0.5)
    assert m["mre_mm_RL"] == pytest.approx(0.0) and m["n_cases_mm"] == 1 and m["n_cases"] == 2
    assert m["mre_px_RL"] > 0  # the lungs-only case counts in pixels
    assert m["self_intersection"] == pytest.approx(0.5)


# --- networks and variants ------------------------------------------------------------------------------
@pytest.mark.parametrize("pair", [("teacher", "student"), ("teacher-tiny", "student-tiny")])
def test_student_has_at_most_a_quarter_of_the_teacher_parameters(pair):
    teacher = count_parameters(build_network(pair[0], 42))
    student = count_parameters(build_network(pair[1], 42))
    assert student <= teacher / 4


def test_split_and_nested_label_fractions():
    ids = [f"c{i:03d}" for i in range(50)]
    s = split_cases(ids, seed=1)
    assert sorted(s["train"] + s["val"] + s["test"]) == ids and len(s["test"]) == 10 and len(s["val"]) == 5
    assert split_cases(ids, seed=1) == s
    small, large = labelled_subset(s["train"], 0.1, 0), labelled_subset(s["train"], 0.5, 0)
    assert len(small) == 4 and set(small) <= set(large) and len(labelled_subset(s["train"], 1.0, 0)) == 35


def test_training_reduces_the_error(synth_data):
    schema = LandmarkSchema.default({"RL": 11, "LL": 10})
    cases, _ = load_dataset(synth_data, 32, schema)
    cfg = LandmarkTrainConfig(size=32, steps=30, batch_size=4, sigma=1.0, lr=1e-2, student="student-tiny")
    arr = stack_cases(cases, cfg.sigma)
    untrained = build_network("student-tiny", schema.n_points).eval()
    before = evaluate_predictions(predict_points(untrained, arr.images, cfg), cases, schema)["mre_px"]
    with torch_threads(1):
        net = train_supervised(arr, cfg, 0, "student-tiny")
    after = evaluate_predictions(predict_points(net, arr.images, cfg), cases, schema)["mre_px"]
    assert after < 0.5 * before


# --- the grid -------------------------------------------------------------------------------------------
def test_quick_grid_writes_report_and_resumes(synth_data, tmp_path, monkeypatch):
    import torch

    out = tmp_path / "grid"
    cfg = GridConfig.quick()
    threads = torch.get_num_threads()
    results = compare(synth_data, out, cfg, log=lambda *a: None)
    assert torch.get_num_threads() == threads  # the grid's thread setting does not leak
    names = {r["name"] for r in results["runs"]}
    assert names == {run_name(v, f, 0) for v in VARIANTS for f in (0.5, 1.0)}
    report = (out / "report.md").read_text(encoding="utf-8")
    for v in VARIANTS:
        assert VARIANT_TITLES[v] in report
    assert "± " in report and "Student for the zoo" in report and "## Method" in report
    # the parameters are those of the most labels (the shape model keeps fewer modes with fewer shapes)
    student = results["summary"]["student_supervised"]["1.0"]["parameters"]
    assert "Parameters (all stages, with 100 % of the labels)" in report and f"{student:,} (ratio" in report
    assert (out / "mre_vs_fraction.png").stat().st_size > 1000
    assert len(list((out / "overlays").glob("*.png"))) == 5
    splits = json.loads((out / "splits.json").read_text(encoding="utf-8"))
    assert len(splits["test"]) == 2 and len(splits["val"]) == 1 and splits["seed"] == cfg.split_seed
    run = json.loads((out / "runs" / "offline_kd_f050_s0.json").read_text(encoding="utf-8"))
    assert run["n_labelled"] == 4 and run["n_unlabelled"] == 3 + 3 and math.isfinite(run["test"]["mre_mm"])
    assert "sdr_10" in run["test"] and "self_intersection" in run["test"]

    calls = []
    real = run_variant

    def counting(variant, *a, **k):
        calls.append(variant)
        return real(variant, *a, **k)

    monkeypatch.setattr("ModelSelectorLib.training.landmark_study.run_variant", counting)
    compare(synth_data, out, cfg, log=lambda *a: None)
    assert calls == []  # nothing repeated
    (out / "runs" / "mean_teacher_f100_s0.json").unlink()
    (out / "runs" / "uncertainty_kd_f050_s0.json").unlink()
    compare(synth_data, out, cfg, log=lambda *a: None)
    assert sorted(calls) == ["mean_teacher", "uncertainty_kd"]  # the teacher is reused from its stored run


def test_grid_continues_from_the_recorded_results_of_another_machine(synth_data, tmp_path, monkeypatch):
    from ModelSelectorLib.errors import TrainingError

    cfg = GridConfig.quick()
    first = compare(synth_data, tmp_path / "first", cfg, log=lambda *a: None)
    recorded = tmp_path / "results.json"  # what a checkout keeps: the results, not the networks
    shutil.copyfile(tmp_path / "first" / "results.json", recorded)
    calls = []
    real = run_variant
    monkeypatch.setattr("ModelSelectorLib.training.landmark_study.run_variant",
                        lambda v, *a, **k: calls.append(v) or real(v, *a, **k))  # fmt: skip
    again = compare(synth_data, tmp_path / "second", cfg, log=lambda *a: None, runs_from=recorded)
    assert calls == []  # every block was recorded whole: nothing trained
    assert again["summary"] == first["summary"] and again["paired"] == first["paired"]
    assert len(list((tmp_path / "second" / "overlays").glob("*.png"))) == 5  # redrawn from the records

    # a block with a missing run is trained again whole (teacher included), the other block is kept
    data = json.loads(recorded.read_text(encoding="utf-8"))
    data["runs"] = [r for r in data["runs"] if r["name"] != "offline_kd_f050_s0"]
    recorded.write_text(json.dumps(data), encoding="utf-8")
    compare(synth_data, tmp_path / "third", cfg, log=lambda *a: None, runs_from=recorded)
    assert sorted(calls) == sorted(VARIANTS)
    kept = json.loads((tmp_path / "third" / "runs" / "offline_kd_f100_s0.json").read_text(encoding="utf-8"))
    assert kept == next(r for r in data["runs"] if r["name"] == "offline_kd_f100_s0")

    other = GridConfig.quick()
    other.train = {**other.train, "steps": 5}
    with pytest.raises(TrainingError, match="other settings"):
        compare(synth_data, tmp_path / "fourth", other, log=lambda *a: None, runs_from=recorded)
    with pytest.raises(TrainingError, match="not the results.json"):
        compare(synth_data, tmp_path / "fifth", cfg, log=lambda *a: None, runs_from=tmp_path / "missing.json")


def test_a_recorded_grid_is_compared_with_the_defaults_of_the_settings_it_does_not_name(tmp_path):
    """A grid recorded before a training setting existed (or that left it out) ran with its default."""
    from ModelSelectorLib.errors import TrainingError
    from ModelSelectorLib.training.landmark_study import _check_config

    cfg = GridConfig.quick()
    assert "contour_modes" not in cfg.train
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()), encoding="utf-8")
    _check_config(
        tmp_path, GridConfig.from_dict({**cfg.to_dict(), "train": {**cfg.train, "contour_modes": 0}})
    )
    with pytest.raises(TrainingError, match="other settings"):
        _check_config(
            tmp_path, GridConfig.from_dict({**cfg.to_dict(), "train": {**cfg.train, "contour_modes": 4}})
        )
    # outlines without images change every run's shape stages: a grid recorded without them (before the
    # setting existed) cannot take runs made with them
    recorded = {k: v for k, v in cfg.to_dict().items() if k != "extra_outlines"}
    (tmp_path / "config.json").write_text(json.dumps(recorded), encoding="utf-8")
    _check_config(tmp_path, cfg)
    with pytest.raises(TrainingError, match="other settings"):
        _check_config(tmp_path, GridConfig.from_dict({**cfg.to_dict(), "extra_outlines": "outlines.json"}))


def test_in_domain_ablation_reuses_the_reference_grid_and_is_compared_with_it(
    synth_data, tmp_path, monkeypatch
):
    from ModelSelectorLib.errors import TrainingError

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    # the shared data's manifest marks paediatric radiographs in the modality column; two of the three here
    (data / "manifest.csv").write_text(
        "path,modality\nunlabelled/u010.png,X-ray (CXR paediatric)\nunlabelled/u011.png,X-ray (CXR paediatric)\n"
        "unlabelled/u012.png,X-ray (CXR adult PA)\n",
        encoding="utf-8",
    )
    ref = tmp_path / "ref"
    compare(data, ref, GridConfig.quick(), log=lambda *a: None)
    cfg = GridConfig.quick()
    cfg.variants, cfg.fractions = ["student_supervised", "offline_kd", "uncertainty_kd"], [0.5]
    cfg.unlabelled_pool, cfg.reuse_from = "in_domain", str(ref)
    calls = []
    real = run_variant
    monkeypatch.setattr("ModelSelectorLib.training.landmark_study.run_variant",
                        lambda v, *a, **k: calls.append(v) or real(v, *a, **k))  # fmt: skip
    results = compare(data, tmp_path / "ablation", cfg, log=lambda *a: None)
    # the teacher, the refiner and the supervised student come from the reference grid: only the two
    # variants that see unlabelled images train, on the pool without the paediatric images
    assert sorted(calls) == ["offline_kd", "uncertainty_kd"]
    runs = tmp_path / "ablation" / "runs"
    assert (
        not (runs / "refiner_f050_s0.json").exists()
        and not (runs / "teacher_supervised_f050_s0.json").exists()
    )
    copied = json.loads((runs / "student_supervised_f050_s0.json").read_text(encoding="utf-8"))
    assert copied == json.loads(
        (ref / "runs" / "student_supervised_f050_s0.json").read_text(encoding="utf-8")
    )
    for v in ("offline_kd", "uncertainty_kd"):
        here = json.loads((runs / f"{v}_f050_s0.json").read_text(encoding="utf-8"))
        there = json.loads((ref / "runs" / f"{v}_f050_s0.json").read_text(encoding="utf-8"))
        assert here["n_unlabelled"] == there["n_unlabelled"] - 2
    against = {(r["variant"], r["against"]) for r in results["paired"]}
    assert against == {
        (v, a) for v in ("offline_kd", "uncertainty_kd") for a in ("student_supervised", "reference grid")
    }
    report = (tmp_path / "ablation" / "report.md").read_text(encoding="utf-8")
    assert "adult PA only (in-domain)" in report and "the same variant in the reference grid" in report

    # a reference grid made with other settings, or no grid at all, is refused before anything trains
    other = GridConfig.quick()
    other.train = {**other.train, "steps": 5}
    other.reuse_from = str(ref)
    with pytest.raises(TrainingError, match=r"other settings \(train\)"):
        compare(data, tmp_path / "other", other, log=lambda *a: None)
    other.reuse_from = str(tmp_path / "nowhere")
    with pytest.raises(TrainingError, match="no config.json"):
        compare(data, tmp_path / "other", other, log=lambda *a: None)


def test_grid_cancel_keeps_finished_runs(synth_data, tmp_path):
    from ModelSelectorLib.errors import Cancelled

    out = tmp_path / "grid"
    cfg = GridConfig.quick()
    cfg.variants, cfg.fractions = ["student_supervised"], [1.0]
    ev = threading.Event()
    ev.set()
    with pytest.raises(Cancelled):
        compare(synth_data, out, cfg, cancel=ev, log=lambda *a: None)
    assert not list((out / "runs").glob("*.json"))
    compare(synth_data, out, cfg, log=lambda *a: None)
    cfg2 = GridConfig.quick()
    cfg2.train = {**cfg2.train, "steps": 5}
    with pytest.raises(Exception, match="other settings"):
        compare(synth_data, out, cfg2, log=lambda *a: None)


# --- into the zoo and out through apply --------------------------------------------------------------------
def _rotation2(deg: float) -> tuple:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return (c, -s, s, c)


def test_predicted_points_land_at_the_right_physical_positions(synth_data):
    """A network that outputs the true heatmaps: apply must return the true landmarks in LPS mm for an
    image with anisotropic spacing, an origin and an oblique direction."""
    import torch
    from PIL import Image as PILImage

    from ModelSelectorLib.io import Image
    from ModelSelectorLib.zoo import ModelCard
    from ModelSelectorLib.zoo.bundle import LoadedBundle

    schema = LandmarkSchema.default()
    size = 48
    case = load_case(synth_data / "c001.png", size, schema, synth_data / "c001_landmarks.json")
    target = torch.from_numpy(render_heatmaps(case.points, case.mask, size, 1.5))

    class Oracle(torch.nn.Module):
        def forward(self, x):
            assert tuple(x.shape) == (1, 1, size, size)
            return torch.log(target[None] + 1e-12)

    card = ModelCard("oracle", "1", "landmarks", "DX", "CHEST", landmark_labels(schema), spatial_dims=2,
                     roi_size=[size, size])  # fmt: skip
    arr = np.asarray(PILImage.open(synth_data / "c001.png"), np.float32)
    spacing, origin, direction = (0.7, 1.3), (-100.0, 50.0), _rotation2(30.0)
    image = Image(arr, spacing, origin, direction)
    pts = LandmarkRuntime(LoadedBundle(Oracle(), card, synth_data, {})).predict(image).value
    true_idx = to_original(case.points, case.scale)
    expected = np.asarray(origin) + true_idx @ (np.asarray(direction).reshape(2, 2) @ np.diag(spacing)).T
    assert pts.shape == (schema.n_points, 3)
    np.testing.assert_allclose(pts[:, :2], expected, atol=0.02 * max(spacing) * max(case.scale))
    assert np.all(pts[:, 2] == 0)


def test_landmark_bundle_in_zoo_and_cli_apply_writes_mrk_json(synth_data, tmp_path, capsys):
    import SimpleITK as sitk
    from PIL import Image as PILImage

    from ModelSelectorLib.cli import main
    from ModelSelectorLib.io import Image, write_image
    from ModelSelectorLib.zoo import Zoo
    from ModelSelectorLib.zoo.bundle import validate_bundle

    zoo = tmp_path / "zoo"
    rc = main(["landmarks", "train", "--data", str(synth_data), "--zoo", str(zoo), "--quick", "--name",
               "cxr_lm", "--variant", "offline_kd", "--fraction", "0.5", "--device", "cpu"])  # fmt: skip
    assert rc == 0
    z = Zoo(zoo)
    card = validate_bundle(z.get("cxr_lm"))
    assert card.task_type == "landmarks" and card.spatial_dims == 2 and card.roi_size == [32, 32]
    assert card.label_names[0] == "RL_00" and len(card.labels) == 12
    assert "val_mre_mm" in card.validation_metrics
    assert card.training_device == "CPU, 1 torch thread"  # the quick configuration trains on one thread

    arr = np.asarray(PILImage.open(synth_data / "c002.png"), np.float32)
    png_out, nrrd_out = tmp_path / "a.mrk.json", tmp_path / "b.mrk.json"
    assert main(["apply", "--zoo", str(zoo), "--model", "cxr_lm", str(synth_data / "c002.png"), "--out",
                 str(png_out)]) == 0  # fmt: skip
    spacing, origin, direction = (0.7, 1.3), (-100.0, 50.0), _rotation2(30.0)
    src = tmp_path / "c002.nrrd"
    write_image(Image(arr, spacing, origin, direction), src)
    assert sitk.ReadImage(str(src)).GetSpacing() == pytest.approx(spacing)
    assert main(["apply", "--zoo", str(zoo), "--model", "cxr_lm", str(src), "--out", str(nrrd_out)]) == 0
    data = json.loads(nrrd_out.read_text(encoding="utf-8"))
    assert [mk["type"] for mk in data["markups"]] == ["ClosedCurve"] * 3  # right lung, left lung, heart
    assert all(mk["coordinateSystem"] == "LPS" for mk in data["markups"])
    assert [cp["label"] for mk in data["markups"] for cp in mk["controlPoints"]] == card.label_names
    idx, _ = read_markups(png_out)  # identity geometry: positions are pixel indices
    pts, names = read_markups(nrrd_out)
    expected = np.asarray(origin) + idx[:, :2] @ (np.asarray(direction).reshape(2, 2) @ np.diag(spacing)).T
    np.testing.assert_allclose(pts[:, :2], expected, atol=1e-3)
    assert (idx[:, 0] >= -0.5).all() and (idx[:, 0] <= 71.5).all() and (idx[:, 1] <= 59.5).all()
    # a segmentation output name for a landmark model is a clear error
    rc = main(
        ["apply", "--zoo", str(zoo), "--model", "cxr_lm", str(src), "--out", str(tmp_path / "x.seg.nrrd")]
    )
    assert rc != 0 and ".mrk.json" in capsys.readouterr().err
    # the point-list option writes the same points as one Slicer point list
    pts_out = tmp_path / "c.mrk.json"
    assert main(["landmarks", "apply", "--zoo", str(zoo), "--model", "cxr_lm", str(src), "--out", str(pts_out),
                 "--points"]) == 0  # fmt: skip
    points = json.loads(pts_out.read_text(encoding="utf-8"))["markups"]
    assert [mk["type"] for mk in points] == ["Fiducial"]
    np.testing.assert_allclose(read_markups(pts_out)[0], pts, atol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_landmark_training_on_a_missing_gpu_is_refused_before_it_starts(synth_data, tmp_path, capsys):
    from ModelSelectorLib.cli import main

    for cmd in (["train", "--zoo", str(tmp_path / "zoo")], ["compare", "--out", str(tmp_path / "grid")]):
        rc = main(["landmarks", *cmd, "--data", str(synth_data), "--quick", "--device", "cuda"])
        err = capsys.readouterr().err.strip()
        assert rc != 0 and "no CUDA GPU" in err and "--device cpu" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "zoo").exists() and not (tmp_path / "grid").exists()


def test_zoo_student_is_chosen_on_mean_validation_error_over_seeds():
    def run(variant, fraction, seed, val, test):
        return {"name": run_name(variant, fraction, seed), "variant": variant, "fraction": fraction,
                "seed": seed, "val": {"mre_mm": val}, "test": {"mre_mm": test}}  # fmt: skip

    runs = [
        run("teacher_supervised", 1.0, 0, 5.0, 5.0),  # teachers never go into the zoo
        run("offline_kd", 1.0, 0, 6.0, 6.1),  # one lucky seed ...
        run("offline_kd", 1.0, 1, 7.4, 7.5),  # ... but a worse mean
        run("uncertainty_kd", 1.0, 1, 6.5, 6.9),
        run("uncertainty_kd", 1.0, 0, 6.7, 6.8),
        run("student_supervised", 0.5, 0, float("nan"), 6.0),  # no validation figure: not a candidate
    ]
    best = best_student({"runs": runs})
    assert (best["variant"], best["fraction"], best["n_seeds"]) == ("uncertainty_kd", 1.0, 2)
    assert best["val_mean"] == pytest.approx(6.6) and best["test_mean"] == pytest.approx(6.85)
    assert best["name"] == "uncertainty_kd_f100_s0" and best["seed"] == 0
    assert best_student({"runs": runs[:1]}) is None
    # a configuration with fewer finished seeds does not compete, however low its validation error
    assert (
        best_student({"runs": [*runs, run("offline_kd", 0.25, 0, 5.5, 6.0)]})["variant"] == "uncertainty_kd"
    )


def test_data_free_inputs_of_a_landmark_model_sharpen_its_heatmaps(synth_data, tmp_path):
    """Model inversion of a landmark model optimises the spatial entropy of each landmark's heatmap."""
    import torch

    from ModelSelectorLib.selection.inversion import synthesize_inputs
    from ModelSelectorLib.zoo import Zoo, load_bundle

    cfg = GridConfig.quick()
    cfg.train["steps"] = 30
    train_into_zoo(synth_data, tmp_path / "zoo", cfg, name="lm", variant="student_supervised")
    loaded = load_bundle(Zoo(tmp_path / "zoo").get("lm"))
    coarse = LandmarkRuntime(loaded).network  # the stage whose heatmaps the inversion sharpens

    def spatial_entropy(images):
        arrays = np.stack([normalize_image(im.array).T for im in images]).astype(np.float32)
        with torch.no_grad():
            return float(heatmap_entropy(coarse(torch.from_numpy(arrays)[:, None])).mean())

    info: dict = {}
    start = synthesize_inputs(loaded, n=3, steps=0, seed=1, progress=False)
    found = synthesize_inputs(loaded, n=3, steps=60, seed=1, progress=False, info=info)
    assert info["method"].startswith("confidence + image prior")  # MONAI UNet: instance norm, no BN stats
    assert spatial_entropy(found) < spatial_entropy(start) - 0.01


# --- outlines without images -----------------------------------------------------------------------------
def _outline_file(path, groups_of):
    """An outline-only annotation file in the 1024 px layout of ``cxr_landmarks_ngaggion``."""
    path.write_text(json.dumps({"coordinate_space": "1024 px", "images": groups_of}), encoding="utf-8")
    return path


def test_jsrt_outlines_map_1024_px_outlines_onto_the_coarse_grid_and_leave_out_the_datas_own(tmp_path):
    """Only complete JSRT outlines of images the data does not hold are taken, in schema order, at the
    coordinates of the labelled JSRT images (the 1024 px space halved, then resized)."""
    from PIL import Image

    from ModelSelectorLib.datasets.landmarks import jsrt_outlines, labelled_image_ids
    from ModelSelectorLib.errors import DatasetError
    from ModelSelectorLib.models.landmarks import GROUPS, LandmarkSchema, to_resized

    rng = np.random.default_rng(0)
    contour = {g: rng.uniform(100, 900, (n, 2)).round(2).tolist() for g, n in GROUPS.items()}
    path = _outline_file(tmp_path / "outlines.json", {
        "JPCLN900": contour,                                   # taken
        "JPCNN901": contour,                                   # an image the data holds: left out
        "JPCLN902": {g: v for g, v in contour.items() if g != "H"},  # no heart: left out
        "CHNCXR_0001_0": contour,                              # another source's frame: left out
    })  # fmt: skip
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / "img_1.png")
    (data / "img_1_landmarks.json").write_text(json.dumps({**contour, "_meta": {"jsrt_id": "JPCNN901"}}))
    exclude = labelled_image_ids(data)
    assert exclude == {"img_1", "JPCNN901"}
    schema = LandmarkSchema.default({"RL": 4, "H": 5})
    shapes = jsrt_outlines(path, schema, 64, exclude)
    assert shapes.shape == (1, schema.n_points, 2)
    expected = np.concatenate([np.asarray(contour[g])[idx] for g, idx in schema.indices.items()])
    np.testing.assert_allclose(shapes[0], to_resized(expected * 0.5, (512 / 64, 512 / 64)))
    with pytest.raises(DatasetError, match="not an outline file"):
        jsrt_outlines(_outline_file(tmp_path / "bad.json", []), schema, 64, set())


def test_outlines_without_images_join_the_shape_models_only():
    """The shape and contour stages fitted with extra outlines have the mean of all shapes; without them, the
    mean of the cases' complete shapes."""
    from ModelSelectorLib.datasets.landmarks import LandmarkCase
    from ModelSelectorLib.training.landmark_refine import fit_contour_stage, fit_shape

    rng = np.random.default_rng(1)
    cases = [LandmarkCase(f"c{i}", np.zeros((8, 8), np.float32), rng.uniform(0, 8, (6, 2)), np.ones(6, bool),
                          (1.0, 1.0)) for i in range(4)]  # fmt: skip
    extra = rng.uniform(0, 8, (3, 6, 2))
    alone, both = fit_shape(cases, 2), fit_shape(cases, 2, extra)
    mean_alone = np.stack([c.points for c in cases]).reshape(4, -1).mean(0)
    mean_both = np.concatenate([np.stack([c.points for c in cases]), extra]).reshape(7, -1).mean(0)
    np.testing.assert_allclose(alone["decode"].bias.numpy(), mean_alone, rtol=1e-5)
    np.testing.assert_allclose(both["decode"].bias.numpy(), mean_both, rtol=1e-5)
    assert fit_contour_stage(cases, 2, extra) is not None and fit_shape(cases[:1], 2, extra[:1]) is None


def test_grid_data_carries_the_configured_outlines(synth_data, tmp_path):
    from ModelSelectorLib.models.landmarks import GROUPS
    from ModelSelectorLib.training.landmark_grid import GridConfig, load_grid_data

    rng = np.random.default_rng(2)
    contour = {g: rng.uniform(100, 900, (n, 2)).tolist() for g, n in GROUPS.items()}
    path = _outline_file(tmp_path / "outlines.json", {"JPCLN900": contour, "JPCLN901": contour})
    cfg = dataclasses.replace(GridConfig.quick(), extra_outlines=str(path))
    gd = load_grid_data(synth_data, cfg)
    assert gd.extra_shapes.shape == (2, gd.schema.n_points, 2)
    assert load_grid_data(synth_data, GridConfig.quick()).extra_shapes is None


# --- command-line errors ---------------------------------------------------------------------------------
def test_weights_that_do_not_fit_are_one_short_line(synth_data, tmp_path, capsys):
    from ModelSelectorLib.cli import main

    not_pt = tmp_path / "notes.pt"
    not_pt.write_bytes(b"these are not weights\n" * 10)
    other = tmp_path / "other.pt"
    torch.save(torch.nn.Sequential(*[torch.nn.Linear(3, 3) for _ in range(4)]).state_dict(), str(other))
    for weights, words in ((not_pt, "not a weights file"), (other, "unexpected")):
        capsys.readouterr()
        rc = main(["landmarks", "train", "--data", str(synth_data), "--zoo", str(tmp_path / "zoo"), "--quick",
                   "--variant", "student_supervised", "--weights", str(weights)])  # fmt: skip
        text = capsys.readouterr().err
        errors = [line for line in text.splitlines() if line.startswith("modelselector: error")]
        assert rc != 0 and "Traceback" not in text and len(errors) == 1 and len(errors[0]) < 500, text
        err = errors[0]
        assert str(weights) in err and words in err and "pass" in err
    assert "and " in err and " more" in err  # at most 3 keys are named


def test_landmarks_apply_reads_the_series_it_is_given(tmp_path, monkeypatch, capsys):
    import ModelSelectorLib.apply as apply_module
    from ModelSelectorLib.cli import main
    from ModelSelectorLib.errors import InputError
    from ModelSelectorLib.resources import default_zoo_path

    seen = {}

    def read_model_input(path, card, series_uid=None, warn=None, zoo=None):
        seen["series_uid"] = series_uid
        raise InputError("stop here")

    monkeypatch.setattr(apply_module, "read_model_input", read_model_input)
    rc = main(["landmarks", "apply", "--zoo", str(default_zoo_path()), str(tmp_path), "--series", "1.2.3",
               "--out", str(tmp_path / "o.mrk.json")])  # fmt: skip
    assert rc != 0 and seen == {"series_uid": "1.2.3"} and "stop here" in capsys.readouterr().err


def test_a_landmark_file_or_split_that_does_not_fit_says_what_to_do(tmp_path):
    from ModelSelectorLib.datasets.split_file import read_split, write_split
    from ModelSelectorLib.errors import DatasetError
    from ModelSelectorLib.models.landmark_schema import LandmarkSchema
    from ModelSelectorLib.models.landmark_scoring import read_landmark_json

    short = tmp_path / "X_landmarks.json"
    short.write_text(
        json.dumps({"RL": [[1.0, 2.0]] * 30}), encoding="utf-8"
    )  # 30 of the 44 right-lung points
    with pytest.raises(
        DatasetError, match=r"group 'RL' has shape \(30, 2\); expected \(44, 2\) .* complete the group"
    ):
        read_landmark_json(short, LandmarkSchema.from_names([f"RL_{i:02d}" for i in range(44)]))
    (tmp_path / "X.png").write_bytes(b"")
    split = write_split(tmp_path / "split.json", tmp_path, [{"id": "X", "image": "X.png", "label": "X_landmarks.json"}],
                        {}, 0, True)  # fmt: skip
    (tmp_path / "X.png").unlink()
    with pytest.raises(
        DatasetError, match=r"1 test file\(s\) missing, e.g. .*X.png; restore them, or make the split"
    ):
        read_split(split)


@pytest.mark.parametrize("bits, factor", [(12, 16), (16, 257)])
def test_training_reads_a_radiograph_of_12_or_16_bits_as_apply_does(tmp_path, bits, factor):
    """Converting a 16-bit PNG to 8 bits clips it: 99 % of a JSRT image's pixels became white in training, while
    ``apply`` scaled them, so the model learnt from pictures it never saw again."""
    from pathlib import Path

    import SimpleITK as sitk

    from ModelSelectorLib.datasets.landmarks import _read_png
    from ModelSelectorLib.io.image import read_image

    sample = Path(__file__).resolve().parents[2] / "Resources" / "samples" / "cxr_chest.png"
    eight = sitk.GetArrayFromImage(sitk.ReadImage(str(sample)))
    path = tmp_path / f"cxr{bits}.png"
    sitk.WriteImage(sitk.GetImageFromArray(eight.astype(np.uint16) * factor), str(path))
    trained_on = _read_png(path)
    assert np.array_equal(trained_on, read_image(path).array)
    assert np.abs(trained_on - eight).max() < 1.0 and (trained_on >= 254.5).mean() < 0.05


def test_a_landmark_file_with_missing_or_misplaced_points_says_what_to_do(tmp_path):
    """A null or NaN point ended training with a traceback, and points in another copy's pixels (a 1024 px
    annotation of a 512 px image) were learnt from without a word."""
    import SimpleITK as sitk

    from ModelSelectorLib.datasets.landmarks import load_case
    from ModelSelectorLib.errors import DatasetError
    from ModelSelectorLib.models.landmark_schema import GROUPS, LandmarkSchema

    schema = LandmarkSchema.default({g: 1 for g in GROUPS})
    image = tmp_path / "X.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((100, 120), 128, np.uint8)), str(image))
    rng = np.random.default_rng(0)
    good = {g: (rng.random((n, 2)) * [119, 99]).tolist() for g, n in GROUPS.items()}
    labels = tmp_path / "X_landmarks.json"

    def load(groups):
        labels.write_text(json.dumps(groups), encoding="utf-8")
        return load_case(image, 32, schema, labels)

    assert load(good).mask.all()
    for broken in (None, float("nan")):
        points = [list(p) for p in good["H"]]
        points[3][1] = broken
        with pytest.raises(DatasetError, match=r"group 'H' has 1 point\(s\) that are not numbers"):
            load({**good, "H": points})
    with pytest.raises(DatasetError, match=r"lie outside the 120 x 100 px image .* scale them"):
        load({**good, "RL": (np.asarray(good["RL"]) * 2.0).tolist()})
    with pytest.raises(DatasetError, match=r"group 'LL' is not a list of \[x, y\] numbers"):
        load({**good, "LL": [[1.0, "a"]] * GROUPS["LL"]})


def test_an_image_without_its_landmark_file_is_named_not_silently_left_out(tmp_path, capsys):
    import SimpleITK as sitk

    from ModelSelectorLib.datasets.landmarks import load_dataset
    from ModelSelectorLib.models.landmark_schema import GROUPS, LandmarkSchema

    rng = np.random.default_rng(0)
    for name in ("A", "B", "C"):
        sitk.WriteImage(
            sitk.GetImageFromArray(np.full((40, 40), 100, np.uint8)), str(tmp_path / f"{name}.png")
        )
    for name in ("A", "B"):  # C's landmark file is missing (misnamed, say)
        groups = {g: (rng.random((n, 2)) * 39).tolist() for g, n in GROUPS.items()}
        (tmp_path / f"{name}_landmarks.json").write_text(json.dumps(groups), encoding="utf-8")
    labelled, unlabelled = load_dataset(tmp_path, 16, LandmarkSchema.default())
    assert [c.case_id for c in labelled] == ["A", "B"] and unlabelled == []
    err = capsys.readouterr().err
    assert "1 image(s) of" in err and "(C.png)" in err and "unlabelled/ folder" in err
