"""Metrics against hand-worked values, overlay colours, summaries, ranking and the HTML pages."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monai")

from ModelSelectorLib.errors import InputError  # noqa: E402
from ModelSelectorLib.evaluation.landmarks import landmark_metrics  # noqa: E402
from ModelSelectorLib.evaluation.segmentation import segmentation_metrics  # noqa: E402
from ModelSelectorLib.io import Image  # noqa: E402


def cube(shape, lo, size):
    a = np.zeros(shape, np.uint8)
    a[tuple(slice(lo_i, lo_i + s) for lo_i, s in zip(lo, size))] = 1
    return a


def brute_force_msd(a, b, spacing):
    """Symmetric mean surface distance by exhaustive search: border voxels (mask minus its erosion), all
    pairwise distances in mm, nearest per point, mean over the points of both surfaces."""
    from scipy.ndimage import binary_erosion

    sp = np.asarray(spacing[::-1], float)  # array axes (z, y, x)
    pa = np.argwhere(a & ~binary_erosion(a)) * sp
    pb = np.argwhere(b & ~binary_erosion(b)) * sp
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return float(np.concatenate([d.min(1), d.min(0)]).mean())


# --- metrics --------------------------------------------------------------------------------------------
def test_dice_per_label_against_hand_counts_and_monai():
    """Two label maps with labels 1 and 2 overlapping by known voxel counts, a label absent from both (1.0)
    and one only in the prediction (0.0); the same figures as MONAI's ``compute_dice`` on one-hot maps."""
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    from ModelSelectorLib.evaluation.metrics import dice_per_label

    truth = np.zeros((6, 7, 8), np.uint8)
    pred = np.zeros_like(truth)
    truth[0:2, 0:5, 0:4] = 1  # 40 voxels
    pred[1:3, 0:5, 0:4] = 1  # 40 voxels, 20 shared
    truth[4:6, 0:3, 0:3] = 2  # 18 voxels
    pred[4:6, 0:3, 0:2] = 2  # 12 voxels, all shared
    pred[5, 6, 7] = 4
    dice = dice_per_label(pred, truth, [1, 2, 3, 4])
    assert dice == pytest.approx({1: 2 * 20 / 80, 2: 2 * 12 / 30, 3: 1.0, 4: 0.0})
    import torch

    as_onehot = [
        one_hot(torch.as_tensor(a[None, None].astype(np.int64)), num_classes=5) for a in (pred, truth)
    ]
    monai_dice = compute_dice(*as_onehot, include_background=True, ignore_empty=False)[0]
    assert list(dice.values()) == pytest.approx([float(monai_dice[v]) for v in (1, 2, 3, 4)])


def test_offset_cubes_anisotropic_spacing():
    """Two 10-voxel cubes, one shifted by 2 voxels along x (0.5 mm) or 2 slices along z (3 mm).

    Dice = 2 * 8/10 * 1000 / 2000 = 0.8. Every surface point of the shifted faces is 2 voxels from the other
    cube's surface, so HD95 = 2 * spacing of the shifted axis: 1 mm along x, 6 mm along z."""
    spacing = (0.5, 1.0, 3.0)  # (x, y, z) mm
    truth = cube((20, 20, 20), (5, 5, 5), (10, 10, 10))
    along_x = cube((20, 20, 20), (5, 5, 7), (10, 10, 10))
    along_z = cube((20, 20, 20), (7, 5, 5), (10, 10, 10))
    mx = segmentation_metrics(along_x, truth, spacing, {1: "cube"})["cube"]
    mz = segmentation_metrics(along_z, truth, spacing, {1: "cube"})["cube"]
    assert mx["dice"] == pytest.approx(0.8, abs=1e-6) and mz["dice"] == pytest.approx(0.8, abs=1e-6)
    assert mx["hd95"] == pytest.approx(1.0, abs=1e-6)
    assert mz["hd95"] == pytest.approx(6.0, abs=1e-6)
    # mean surface distance: below the maximum shift, above zero, and equal to a brute-force computation
    assert 0 < mx["msd"] < 1.0 and 0 < mz["msd"] < 6.0
    assert mx["msd"] == pytest.approx(brute_force_msd(along_x, truth, spacing), rel=1e-5)
    assert mz["msd"] == pytest.approx(brute_force_msd(along_z, truth, spacing), rel=1e-5)
    # symmetric: swapping prediction and truth changes nothing
    assert segmentation_metrics(truth, along_z, spacing, {1: "cube"})["cube"] == pytest.approx(mz)


def test_identical_empty_and_missing_structures():
    spacing = (1.0, 2.0)
    truth = cube((10, 12), (2, 2), (4, 4))
    same = segmentation_metrics(truth, truth, spacing, {1: "a"})["a"]
    assert same == {"dice": 1.0, "hd95": 0.0, "msd": 0.0}
    both_empty = segmentation_metrics(np.zeros_like(truth), np.zeros_like(truth), spacing, {1: "a"})["a"]
    assert both_empty == {"dice": 1.0, "hd95": 0.0, "msd": 0.0}
    missed = segmentation_metrics(np.zeros_like(truth), truth, spacing, {1: "a"})["a"]
    diagonal = math.hypot(10 * 2.0, 12 * 1.0)  # (y, x) extents in mm
    assert (
        missed["dice"] == 0.0
        and missed["hd95"] == pytest.approx(diagonal)
        and missed["msd"] == pytest.approx(diagonal)
    )


def test_metric_input_errors():
    with pytest.raises(InputError, match="shape"):
        segmentation_metrics(np.zeros((3, 3)), np.zeros((3, 4)), (1, 1), {1: "a"})
    with pytest.raises(InputError, match="spacing"):
        segmentation_metrics(np.zeros((3, 3)), np.zeros((3, 3)), (1, 1, 1), {1: "a"})
    with pytest.raises(InputError, match="foreground"):
        segmentation_metrics(np.zeros((3, 3)), np.zeros((3, 3)), (1, 1), {0: "bg"})


def test_landmark_radial_error():
    truth = np.array([[10.0, 10.0], [20.0, 5.0], [0.0, 0.0]])
    pred = np.array([[13.0, 14.0], [20.0, 5.0], [np.nan, np.nan]])
    m = landmark_metrics(pred, truth, ["a", "b", "c"], spacing=(1.0, 1.0), radii=(2.0, 6.0))
    assert m["per_landmark"]["a"] == pytest.approx(5.0) and m["per_landmark"]["b"] == 0.0
    assert math.isnan(m["per_landmark"]["c"]) and m["mre"] == pytest.approx(2.5)
    assert m["sdr2"] == pytest.approx(1 / 3) and m["sdr6"] == pytest.approx(2 / 3)
    # voxel coordinates with anisotropic spacing: (3 voxels * 0.5 mm, 1 voxel * 2 mm) -> 2.5 mm
    assert landmark_metrics([[3.0, 1.0]], [[0.0, 0.0]], spacing=(0.5, 2.0))["mre"] == pytest.approx(2.5)


# --- overlays -------------------------------------------------------------------------------------------
def _pixels(path):
    from PIL import Image as PILImage

    return np.asarray(PILImage.open(path).convert("RGB")).astype(int)


def _colour_mask(rgb, colour):
    return np.all(rgb == np.array(colour), axis=-1)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.5, 1.5)])
def test_overlay_green_truth_red_prediction(tmp_path, spacing):
    """Truth square at columns 8-19, prediction shifted 10 columns right: the red contour lies right of the
    green one by 10 columns (in pixels of the PNG, scaled by its physical width)."""
    from ModelSelectorLib.ranking.leaderboard import OVERLAY_PX, render_overlay

    arr = np.random.default_rng(0).normal(100, 10, (40, 40)).astype(np.float32)
    truth = cube((40, 40), (14, 8), (12, 12))
    pred = cube((40, 40), (14, 18), (12, 12))
    image = Image(arr, spacing, (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    path = render_overlay(image, truth, pred, tmp_path / "o.png")
    rgb = _pixels(path)
    assert rgb.shape[1] == OVERLAY_PX
    # height follows the physical aspect ratio
    assert rgb.shape[0] == pytest.approx(OVERLAY_PX * (40 * spacing[1]) / (40 * spacing[0]), abs=2)
    green, red = _colour_mask(rgb, (0, 255, 0)), _colour_mask(rgb, (255, 0, 0))
    assert green.sum() > 50 and red.sum() > 50, "both contours must be drawn in pure green and pure red"
    px_per_col = OVERLAY_PX / 40
    gx, rx = np.nonzero(green)[1], np.nonzero(red)[1]
    assert rx.mean() - gx.mean() == pytest.approx(10 * px_per_col, abs=1.5 * px_per_col)
    gy, ry = np.nonzero(green)[0], np.nonzero(red)[0]
    assert abs(gy.mean() - ry.mean()) < 2 * rgb.shape[0] / 40  # same rows
    # the left edge of the truth square sits at column 8
    assert gx.min() == pytest.approx(8 * px_per_col, abs=px_per_col)


def test_overlay_3d_uses_representative_slice(tmp_path):
    from ModelSelectorLib.ranking.leaderboard import render_overlay, representative_slice

    arr = np.ones((6, 30, 30), np.float32) * np.arange(30)
    truth = np.zeros((6, 30, 30), np.uint8)
    truth[1, 10:12, 10:12] = 1
    truth[4, 5:25, 5:25] = 1  # largest area on slice 4
    assert representative_slice(truth) == 4
    assert representative_slice(np.zeros_like(truth), truth) == 4
    assert representative_slice(np.zeros_like(truth)) == 3
    image = Image(arr, (1.0, 1.0, 2.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    rgb = _pixels(render_overlay(image, truth, np.zeros_like(truth), tmp_path / "o3.png"))
    green = _colour_mask(rgb, (0, 255, 0))
    assert not _colour_mask(rgb, (255, 0, 0)).any()
    ys, xs = np.nonzero(green)
    scale = rgb.shape[1] / 30
    assert (xs.max() - xs.min()) == pytest.approx(20 * scale, abs=2 * scale)  # the big square of slice 4
    with pytest.raises(InputError, match="differ"):
        render_overlay(image, truth[:3], truth, tmp_path / "bad.png")


# --- summaries, ranking, pages --------------------------------------------------------------------------
def _cases(dices, hds):
    return [{"id": f"c{i}", "dice": d, "hd95": h, "msd": h / 3} for i, (d, h) in enumerate(zip(dices, hds))]


def test_a_promoted_cards_rms_is_the_rms_over_the_cases_points(tmp_path):
    """The gate writes means of per-case metrics into a promoted card, except an RMS: the root of the cases'
    mean square, which over cases with equally many points is the RMS over all of them (as a build reports).
    The leaderboard's RMS column is the same pooled figure, so a card and a leaderboard agree."""
    from ModelSelectorLib.ranking.leaderboard import candidate_row, summarize, write_leaderboard
    from ModelSelectorLib.ranking.promotion import summary_over_cases

    rng = np.random.default_rng(0)
    errors = rng.gamma(2.0, 3.0, (5, 40))  # radial errors of 40 points on 5 images
    cases = [{"id": f"c{i}", "mre_px": float(e.mean()), "rmse_px": float(np.sqrt((e**2).mean())), "nothing": None}
             for i, e in enumerate(errors)]  # fmt: skip
    out = summary_over_cases(cases)
    assert out["mre_px"] == pytest.approx(errors.mean(), abs=1e-6)
    assert out["rmse_px"] == pytest.approx(np.sqrt((errors**2).mean()), abs=1e-6)
    assert out["rmse_px"] > np.mean([c["rmse_px"] for c in cases])  # not the mean of the per-image figures
    assert "nothing" not in out
    assert summarize(cases, "rmse_px")["mean"] == pytest.approx(out["rmse_px"], abs=1e-6)
    assert summarize(cases, "mre_px")["median"] == pytest.approx(np.median([c["mre_px"] for c in cases]))
    page = write_leaderboard(
        [candidate_row({"candidate": "a", "cases": cases})], tmp_path / "lb.html", "mre_px"
    )
    assert f'data-value="{summarize(cases, "rmse_px")["mean"]}"' in page.read_text(encoding="utf-8")


def test_summary_and_rank_directions():
    from ModelSelectorLib.ranking.leaderboard import candidate_row, rank, summarize

    s = summarize(_cases([0.9, 0.5, 0.7], [1, 9, 3]), "dice")
    assert (
        s["mean"] == pytest.approx(0.7)
        and s["median"] == 0.7
        and s["worst"] == 0.5
        and s["worst_case"] == "c1"
    )
    h = summarize(_cases([0.9, 0.5, 0.7], [1, 9, 3]), "hd95")
    assert h["worst"] == 9 and h["best"] == 1 and h["worst_case"] == "c1"
    a = candidate_row({"candidate": "a", "cases": _cases([0.9, 0.9], [5.0, 5.0])})
    b = candidate_row({"candidate": "b", "cases": _cases([0.8, 0.8], [1.0, 1.0])})
    assert [r["candidate"] for r in rank([b, a], "dice")] == ["a", "b"]
    assert [r["candidate"] for r in rank([a, b], "hd95")] == ["b", "a"]  # lower distance is better
    with pytest.raises(InputError, match="choose one of"):
        rank([a, b], "nosuch")


def test_leaderboard_and_dashboard_html(tmp_path):
    from ModelSelectorLib.ranking.leaderboard import candidate_row, write_dashboard, write_leaderboard

    rows = [
        candidate_row(
            {"candidate": n, "model": f"t-{n}", "version": "0.1.0", "cases": _cases(d, h)},
            {"settings": {"architecture": n, "loss": "dice"}},
        )  # fmt: skip
        for n, d, h in (("unet", [0.9, 0.8], [2.0, 4.0]), ("segresnet", [0.7, 0.95], [1.0, 1.5]))
    ]
    out = write_leaderboard(rows, tmp_path / "leaderboard.html", "hd95", "LB <task>",
                            {"unet": "dashboards/unet/index.html"})  # fmt: skip
    page = out.read_text(encoding="utf-8")
    assert "LB &lt;task&gt;" in page  # escaped
    assert page.index('data-candidate="segresnet"') < page.index('data-candidate="unet"')  # hd95: lower first
    assert 'href="dashboards/unet/index.html"' in page and "<script>" in page and 'class="best"' in page
    ev = {"candidate": "unet", "model": "t-unet", "version": "0.1.0", "bundle": str(tmp_path / "nobundle"),
          "evaluated": "now", "cases": [{**c, "overlay": f"overlays/{c['id']}.png"} for c in _cases([0.9, 0.6], [2, 4])]}  # fmt: skip
    page = write_dashboard(ev, tmp_path / "dash", "dice").read_text(encoding="utf-8")
    assert page.index('data-case="c1"') < page.index('data-case="c0"')  # worst Dice first
    assert "overlays/c1.png" in page and "green" in page and "red" in page
    with pytest.raises(InputError, match="not among"):
        write_dashboard(ev, tmp_path / "dash", "nosuch")
    json.dumps(rows)  # rows are JSON-ready


# --- landmark evaluations --------------------------------------------------------------------------------
def test_a_metric_the_first_case_lacks_still_ranks_and_reports(tmp_path):
    """An image without a pixel spacing has no mm figure (NaN, null after the JSON round trip); when it sorts first,
    the metric must still count, since the other cases have it."""
    from ModelSelectorLib.ranking.leaderboard import candidate_row, metric_names, rank, write_reports

    def cases(mm):
        return [{"id": "CHNCXR_0001_0", "mre_mm": None, "mre_px": 9.0, "dice_lungs": 0.9, "overlay": "o.png"},
                {"id": "JPCLN001", "mre_mm": mm, "mre_px": 5.0, "dice_lungs": float("nan")}]  # fmt: skip

    assert metric_names(cases(2.0)) == ["dice_lungs", "mre_mm", "mre_px"]
    assert metric_names([{"id": "a", "mre_mm": None}, {"id": "b", "mre_mm": float("nan")}]) == []
    rows = [candidate_row({"candidate": n, "cases": cases(mm)}) for n, mm in (("a", 3.0), ("b", 2.0))]
    assert rows[0]["summary"]["mre_mm"]["n"] == 1
    assert [r["candidate"] for r in rank(rows, "mre_mm")] == ["b", "a"]
    # the same through a sweep folder's saved evaluations (`modelselector leaderboard --metric mre_mm`)
    sweep = tmp_path / "sweeps" / "lmk"
    (sweep / "evaluation").mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({"task": "lmk", "task_type": "landmarks"}))
    for n, mm in (("a", 3.0), ("b", 2.0)):
        ev = {"candidate": n, "model": f"lmk-{n}", "version": "0.1.0", "bundle": str(tmp_path / "none"),
              "evaluated": "now", "cases": cases(mm)}  # fmt: skip
        (sweep / "evaluation" / f"{n}.json").write_text(json.dumps(ev))
    result = write_reports(sweep)
    assert result["metric"] == "mre_mm" and result["best"]["candidate"] == "b"
    assert (sweep / "report" / "dashboards" / "a" / "index.html").is_file()


def _landmark_reference(path, shift=(0.0, 0.0)):
    """A ``_landmarks.json`` with a right lung of 44 points (x = 2 i + 3, y = i + 5) and no left lung."""
    rl = [[2.0 * i + 3 + shift[0], i + 5.0 + shift[1]] for i in range(44)]
    path.write_text(json.dumps({"RL": rl, "_meta": {"pixel_spacing_mm": 0.5}}))
    return path


def test_landmark_overlay_draws_the_truth_green_and_the_prediction_red(tmp_path):
    from ModelSelectorLib.models.base import Prediction
    from ModelSelectorLib.ranking.leaderboard import (
        GT_COLOR,
        PRED_COLOR,
        render_points_overlay,
        truth_and_prediction_points,
    )

    spacing, origin = (0.5, 2.0), (10.0, -5.0)
    image = Image(np.random.default_rng(0).normal(100, 5, (60, 100)).astype(np.float32), spacing, origin,
                  (1.0, 0.0, 0.0, 1.0))  # fmt: skip
    names = ["RL_00", "RL_11", "RL_22", "LL_00"]  # the reference lacks the left lung: 3 true points
    pred_lps = np.array([[30.0, 20.0, 0.0], [40.0, 40.0, 0.0], [50.0, 60.0, 0.0], [20.0, 20.0, 0.0]])
    prediction = Prediction("m", "1", image, pred_lps, names)
    drawn = truth_and_prediction_points(prediction, _landmark_reference(tmp_path / "c_landmarks.json"))
    truth_px = np.array([[2.0 * i + 3, i + 5.0] for i in (0, 11, 22)])
    expected = np.asarray(origin) + truth_px * np.asarray(spacing)
    np.testing.assert_allclose(drawn["points_lps"][:3, :2], expected)
    np.testing.assert_allclose(drawn["points_lps"][3:], pred_lps)
    assert drawn["point_colors"] == [GT_COLOR] * 3 + [PRED_COLOR] * 4
    rgb = _pixels(render_points_overlay(image, drawn, tmp_path / "o.png"))
    green = (rgb[..., 1] > 200) & (rgb[..., 0] < 80) & (rgb[..., 2] < 80)
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)
    assert green.sum() > 3 and red.sum() > 3


def test_a_metric_a_model_cannot_have_is_told_before_evaluation():
    from ModelSelectorLib.ranking.leaderboard import metric_problem

    assert metric_problem("landmarks", "mre_mm") is None and metric_problem("landmarks", "sdr_px_5") is None
    assert metric_problem("landmarks", "dice_lungs") is None
    assert "mre_mm" in metric_problem("landmarks", "dice")
    assert metric_problem("segmentation", "dice", {"1": "disk"}) is None
    assert metric_problem("segmentation", "dice_disk", {"1": "disk"}) is not None  # one label: no per-label
    assert metric_problem("segmentation", "hd95_right", {"1": "left", "2": "right"}) is None
    assert "dice" in metric_problem("segmentation", "mre_mm", {"1": "disk"})


def test_a_split_of_the_other_kind_of_task_is_refused_before_any_case_is_evaluated():
    from types import SimpleNamespace

    from ModelSelectorLib.errors import DatasetError
    from ModelSelectorLib.ranking.scoring import evaluate_cases

    for task, label, held in (("landmarks", "c1_lungmask.png", "label maps"),
                              ("segmentation", "c1_landmarks.json", "reference files")):  # fmt: skip
        loaded = SimpleNamespace(card=SimpleNamespace(task_type=task, name="m"))
        with pytest.raises(DatasetError, match=f"labelled with {held}.*, not as a {task} model is scored"):
            evaluate_cases(loaded, [{"id": "c1", "image": "c1.png", "label": label}])


# --- overlays as a viewer shows them, their file names, and the folders of candidates ----------------------------
@pytest.mark.parametrize("stored", ["RAS", "PLS", "SPL"])
def test_an_overlay_shows_a_volume_as_a_viewer_does_whatever_axis_order_its_file_stored(tmp_path, stored):
    """The same volume stored with its axes running L-P-S (DICOM) and in another order (MSD NIfTI run R-A-S) gives
    the same overlay: the axial slice with the most ground truth, the patient's left on the screen's right, its
    aspect from the spacing of the slice as drawn."""
    import SimpleITK as sitk
    from PIL import Image as PILImage

    from ModelSelectorLib.ranking.leaderboard import render_overlay, viewed_slice

    arr = np.random.default_rng(0).normal(100, 5, (8, 30, 40)).astype(np.float32)
    truth = np.zeros(arr.shape, np.uint8)
    truth[5, 3:10, 28:38] = (
        1  # the patient's left (high x runs to L), anterior (low y), slice 6 of 8 from the feet
    )
    lps = Image(arr, (0.5, 1.5, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    image, labels = (
        Image.from_sitk(sitk.DICOMOrient(i.to_sitk(), stored)) for i in (lps, lps.with_array(truth))
    )
    assert image.array.shape != arr.shape or not np.array_equal(image.array, arr)  # stored otherwise
    expected = np.asarray(PILImage.open(render_overlay(lps, truth, truth, tmp_path / "lps.png")))
    drawn = np.asarray(PILImage.open(render_overlay(image, labels, labels.array, tmp_path / f"{stored}.png")))
    assert drawn.shape == expected.shape and np.array_equal(drawn, expected)
    red = np.nonzero(_colour_mask(drawn[..., :3].astype(int), (255, 0, 0)))  # the prediction, over the truth
    assert red[1].mean() > 0.6 * drawn.shape[1] and red[0].mean() < 0.4 * drawn.shape[0]
    view = viewed_slice(image, labels, labels)
    assert view.caption == "axial slice 6 of 8 (from the feet)" and view.spacing == (0.5, 1.5)


def _fake_evaluation(monkeypatch, ids):
    """Make :func:`evaluate_candidate` score a stand-in model on synthetic 2D cases: case ``i`` has a square at
    column ``4 i`` (so each case's overlay differs), predicted exactly."""
    from types import SimpleNamespace

    import ModelSelectorLib.ranking.leaderboard as lb
    import ModelSelectorLib.zoo.bundle as bundle

    card = SimpleNamespace(name="m", version="0.1.0", labels=[{"value": 1, "name": "disk"}])
    monkeypatch.setattr(bundle, "load_bundle", lambda *a, **k: SimpleNamespace(card=card))

    def evaluate_cases(loaded, cases, labels, device="cpu", cancel=None, on_case=None, desc=""):
        results = []
        for i, case in enumerate(cases):
            arr = np.full((32, 32), 50.0, np.float32)
            truth = np.zeros((32, 32), np.uint8)
            truth[8:20, 4 * i : 4 * i + 10] = 1
            image = Image(arr + 100 * truth, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
            res = {"id": case["id"], "dice": 1.0}
            res.update(on_case(case["id"], image, image.with_array(truth), image.with_array(truth)) or {})
            results.append(res)
        return results

    monkeypatch.setattr(lb, "evaluate_cases", evaluate_cases)
    return {"labels": {"1": "disk"}, "cases": [{"id": i, "image": f"{k}.png", "label": f"{k}_l.png"}
                                               for k, i in enumerate(ids)]}  # fmt: skip


def test_case_ids_that_differ_only_in_characters_a_file_name_cannot_hold_get_their_own_overlay(
    tmp_path, monkeypatch
):
    import urllib.parse

    from ModelSelectorLib.ranking.leaderboard import evaluate_candidate, write_dashboard

    ids = ["患者一", "患者二", "case 1", "case_1", "Case_1", "50% #2?"]
    split = _fake_evaluation(monkeypatch, ids)
    ev = evaluate_candidate(
        tmp_path / "bundle", split, tmp_path / "dash" / "evaluation.json", tmp_path / "dash"
    )
    files = [c["overlay"] for c in ev["cases"]]
    assert len(set(f.lower() for f in files)) == len(ids)  # distinct, also on a case-insensitive file system
    pictures = {(tmp_path / "dash" / f).read_bytes() for f in files}
    assert len(pictures) == len(ids)
    page = write_dashboard(ev, tmp_path / "dash", "dice").read_text(encoding="utf-8")
    for case in ev["cases"]:
        href = urllib.parse.quote(case["overlay"])
        # the thumbnail links to its own picture
        assert f'<a class="overlay-link" href="{href}"><img class="overlay" src="{href}"' in page
    srcs = re.findall(r'<img class="overlay" src="([^"]+)"', page)
    assert len(srcs) == len(ids) and all(
        (tmp_path / "dash" / urllib.parse.unquote(s)).is_file() for s in srcs
    )
    assert all(re.fullmatch(r"[A-Za-z0-9._/%+-]+", s) for s in srcs)  # quoted: no space, '#' or '?' left


def test_a_candidate_name_read_from_an_evaluation_never_leads_outside_the_report(tmp_path):
    """A copied or edited sweep folder may name its candidates anything: their dashboards still go to distinct
    folders right under report/dashboards, the links lead there, and the names show as they are."""
    import urllib.parse

    from ModelSelectorLib.ranking.leaderboard import write_reports

    sweep = tmp_path / "zoo" / "sweeps" / "t"
    (sweep / "evaluation").mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({"task": "t"}))
    names = ["good", "../../evil", "<script>alert(1)</script>", "a b", "a_b", "/abs", "é中文 model"]
    for k, name in enumerate(names):
        ev = {"candidate": name, "model": f"t-{k}", "version": "0.1.0", "bundle": str(tmp_path / "none"),
              "evaluated": "now", "cases": [{"id": "c0", "dice": 0.5 + k / 100}]}  # fmt: skip
        (sweep / "evaluation" / f"e{k}.json").write_text(json.dumps(ev))
    write_reports(sweep)
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    outside = {p for p in written if p.parts[:4] != ("zoo", "sweeps", "t", "report")}
    assert outside == {Path("zoo/sweeps/t/sweep.json")} | {Path(f"zoo/sweeps/t/evaluation/e{k}.json")
                                                             for k in range(len(names))}  # fmt: skip
    dashboards = sweep / "report" / "dashboards"
    assert sorted(p.name for p in dashboards.iterdir()) == sorted(
        p.parent.name for p in dashboards.glob("*/index.html")
    )
    assert len(list(dashboards.iterdir())) == len(names) and (dashboards / "good" / "index.html").is_file()
    page = (sweep / "report" / "leaderboard.html").read_text(encoding="utf-8")
    hrefs = re.findall(r'href="(dashboards/[^"]+)"', page)
    assert len(set(hrefs)) == len(names)
    assert all((sweep / "report" / urllib.parse.unquote(h)).is_file() for h in hrefs)
    assert all(re.fullmatch(r"[A-Za-z0-9._/%+-]+", h) for h in hrefs)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "é中文 model" in page and "../../evil" in page


def test_links_built_from_names_are_url_quoted(tmp_path):
    """A name may hold characters that end or bend a URL (``#``, ``?``, ``%``, a space, ``:``): every link built
    from one is quoted, so that it still leads to its file."""
    from ModelSelectorLib.ranking.leaderboard import candidate_row, write_dashboard, write_leaderboard

    ev = {"candidate": "x", "model": "m", "version": "0.1.0", "bundle": str(tmp_path / "none"), "evaluated": "now",
          "cases": [{"id": "c0", "dice": 0.5, "overlay": "overlays/c 0#1?%.png"}]}  # fmt: skip
    page = write_dashboard(ev, tmp_path / "dash", "dice").read_text(encoding="utf-8")
    assert 'href="overlays/c%200%231%3F%25.png"' in page and 'src="overlays/c%200%231%3F%25.png"' in page
    page = write_leaderboard(
        [candidate_row(ev)], tmp_path / "lb.html", dashboards={"x": "dashboards/x:y #/index.html"}
    )
    assert 'href="dashboards/x%3Ay%20%23/index.html"' in page.read_text(encoding="utf-8")
