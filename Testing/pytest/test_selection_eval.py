"""Selection evaluation: metrics, baseline rankers, the runner and its report, on synthetic data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ModelSelectorLib.cli import main
from ModelSelectorLib.errors import Cancelled, InputError, ModelSelectorError
from ModelSelectorLib.evaluation.baselines import (
    HeaderRulesRanker,
    HistogramKNNRanker,
    ModelInfo,
    RandomRanker,
    Reference,
    header_facts,
    histogram_features,
    is_relevant,
    zoo_models,
)
from ModelSelectorLib.evaluation.selection import auroc, average_precision, precision_at_k, recall_at_k
from ModelSelectorLib.evaluation.selection_cases import EvalCase, cases_of, select_cases
from ModelSelectorLib.evaluation.selection_report import run_selection_evaluation
from ModelSelectorLib.evaluation.selection_split import ProtocolSplit, make_split
from ModelSelectorLib.io import Image, read_image, write_image
from ModelSelectorLib.zoo import ModelCard, Zoo, save_bundle

BASELINES = ["random", "header-rules", "histogram-knn-exemplars", "histogram-knn-train"]


@pytest.fixture(autouse=True)
def _light_cpu():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- synthetic images -------------------------------------------------------------------------------------
def ct_head(seed: int = 0) -> Image:
    """CT-like head: air -1000 HU around a soft-tissue ball with a bone rim; 200 mm field of view."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:20, :40, :40]
    cy, cx, rad = 20 + 4 * (seed % 3 - 1), 20 + 3 * ((seed // 3) % 3 - 1), 16 - 2 * (seed % 3)  # no two alike
    r = np.sqrt(((z - 10) * 2.5) ** 2 + ((y - cy) * 1.2) ** 2 + (x - cx) ** 2)
    a = np.where(r < rad, 40.0, -1000.0) + np.where((r > rad - 2) & (r < rad), 900.0, 0.0)
    a[:, cy - 3 : cy + 3, cx - 6 + seed : cx - 2 + seed] = 300.0
    a = a + rng.normal(0, 10, a.shape)
    return Image(a.astype(np.float32), (5.0, 5.0, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def mr_heart(seed: int = 0) -> Image:
    """MR-like chest slab: non-negative scanner units, 320 mm in-plane field of view."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:8, :40, :40]
    r = np.sqrt((y - 20) ** 2 + (x - 20) ** 2)
    heart = np.sqrt((y - 16 - 2 * (seed % 4)) ** 2 + (x - 14 - 3 * (seed % 3)) ** 2) < 5 + seed % 3
    a = np.where(r < 15, 300.0, 20.0) + np.where(heart, 400.0, 0.0) + rng.normal(0, 15, (8, 40, 40))
    return Image(
        np.clip(a, 0, None).astype(np.float32), (8.0, 8.0, 10.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)
    )


def dx_chest(seed: int = 0) -> np.ndarray:
    """A grey 8-bit radiograph-like picture (two dark lung fields in a bright body)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:64, :64]
    a = np.full((64, 64), 180.0)
    dy, dx = 3 * (seed % 3) - 3, 2 * (seed % 4) - 3  # no two alike
    a[(np.abs(x - 20 - dx) < 9 - seed % 3) & (np.abs(y - 32 - dy) < 22)] = 60
    a[(np.abs(x - 44 - dx) < 9) & (np.abs(y - 30 + dy) < 20 + seed % 3)] = 60
    return np.clip(a + rng.normal(0, 8, a.shape), 0, 255).astype(np.uint8)


def photo(seed: int = 0) -> np.ndarray:
    """A colourful non-medical picture (RGB, channels differ)."""
    rng = np.random.default_rng(seed)
    a = np.zeros((64, 64, 3), np.uint8)
    a[..., 0] = 200
    a[..., 1] = np.linspace(0, 255, 64)[None, :]
    a[..., 2] = rng.integers(0, 255, (64, 64))
    return a


def png(arr: np.ndarray, path: Path) -> Path:
    img = Image(arr, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    return write_image(img, path)


# --- tiny zoo ---------------------------------------------------------------------------------------------
NET = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
       "channels": [4, 8], "strides": [2], "num_res_units": 0}  # fmt: skip
MODELS = [("ct-head-bone", "CT", "HEAD"), ("mr-heart", "MR", "HEART"), ("dx-chest-lungs", "DX", "CHEST")]


def make_zoo(root: Path, examples: dict) -> Zoo:
    """A zoo of three tiny models; ``examples[name]`` = files copied into the bundle as example inputs."""
    from monai.bundle import ConfigParser

    zoo = Zoo.create(root / "zoo")
    for name, mod, region in MODELS:
        dims = 2 if mod == "DX" else 3
        net_def = dict(NET, spatial_dims=dims)
        torch.manual_seed(0)
        net = ConfigParser({"net": net_def}).get_parsed_content("net")
        files = examples.get(name, [])
        card = ModelCard.from_dict({
            "name": name, "version": "0.1.0", "task_type": "segmentation", "modality": mod, "body_region": region,
            "labels": [{"value": 1, "name": "thing", "color": [1.0, 0.0, 0.0]}], "spatial_dims": dims,
            "roi_size": [16] * dims, "example_inputs": [f"docs/{Path(f).name}" for f in files],
        })  # fmt: skip
        b = save_bundle(root / "bundles" / name, card, net_def, net.state_dict())
        for f in files:
            shutil.copy(f, b / "docs" / Path(f).name)
        zoo.add(b)
    return zoo.reload()


# --- metrics ----------------------------------------------------------------------------------------------
def test_ranking_metrics_hand_worked():
    ranked = ["a", "b", "c", "d", "e"]
    rel = {"b", "d"}
    assert precision_at_k(ranked, rel, 1) == 0.0
    assert precision_at_k(ranked, rel, 3) == pytest.approx(1 / 3)
    assert precision_at_k(ranked, rel, 5) == pytest.approx(2 / 5)
    assert recall_at_k(ranked, rel, 1) == 0.0
    assert recall_at_k(ranked, rel, 3) == pytest.approx(0.5)
    assert recall_at_k(ranked, rel, 5) == pytest.approx(1.0)
    assert average_precision(ranked, rel) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert average_precision(ranked, {"a"}) == 1.0
    assert average_precision(ranked, {"e", "zz"}) == pytest.approx((1 / 5) / 2)  # missing model counts 0
    assert np.isnan(average_precision(ranked, set()))
    assert np.isnan(recall_at_k(ranked, set(), 3))


def test_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    rng = np.random.default_rng(3)
    for _ in range(5):
        y = rng.integers(0, 2, 60).astype(bool)
        s = np.round(rng.normal(size=60) + y, 1)  # rounding makes ties
        assert auroc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert np.isnan(auroc([0.1, 0.2], [True, True]))


def test_relevance_rule():
    assert is_relevant("CT", ("ABDOMEN", "PELVIS"), "CT", ("PELVIS",))
    assert not is_relevant("CT", ("ABDOMEN",), "MR", ("ABDOMEN",))
    assert not is_relevant("CT", ("ABDOMEN",), "CT", ("HEAD",))
    assert not is_relevant("OT", ("HEAD",), "OT", ("HEAD",))  # non-medical images have no relevant model


# --- baselines --------------------------------------------------------------------------------------------
INFOS = [ModelInfo(n, "0.1.0", m, (r,), spatial_dims=2 if m == "DX" else 3) for n, m, r in MODELS] + [
    ModelInfo("ct-abdomen", "1", "CT", ("ABDOMEN",))
]


def test_random_baseline_is_seeded_and_reproducible():
    img = Image(
        np.zeros((4, 4), np.float32), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), {"path": "/x/a.png"}
    )
    a, b = RandomRanker(INFOS, seed=1).rank(img), RandomRanker(INFOS, seed=1).rank(img)
    assert a.names == b.names and a.confidence == b.confidence
    assert sorted(a.names) == sorted(m.name for m in INFOS)
    orders = set()
    for s in range(12):
        orders.add(tuple(RandomRanker(INFOS, seed=s).rank(img).names))
    assert len(orders) > 3  # the seed changes the order
    other = Image(img.array, img.spacing, img.origin, img.direction, {"path": "/x/b.png"})
    firsts = {RandomRanker(INFOS, seed=0).rank(Image(img.array, img.spacing, img.origin, img.direction,
                                                         {"path": f"/x/{i}.png"})).names[0] for i in range(30)}  # fmt: skip
    assert len(firsts) == len(INFOS)  # every model is sometimes first
    assert RandomRanker(INFOS, seed=0).rank(other).names is not None


def test_header_rules_on_nifti_nrrd_png(tmp_path):
    ct = ct_head()
    for suffix in ("nii.gz", "nrrd"):
        p = write_image(ct, tmp_path / f"ct.{suffix}")
        img = read_image(p)
        f = header_facts(img)
        assert f.modality == "CT" and f.regions == ("HEAD",), f.rules
        r = HeaderRulesRanker(INFOS).rank(img)
        assert r.names[0] == "ct-head-bone" and r.scores[0] == 3.0 and r.fits
        assert r.names[1] == "ct-abdomen"  # right modality, wrong region: second
    mr = read_image(write_image(mr_heart(), tmp_path / "mr.nii.gz"))
    f = header_facts(mr)
    assert f.modality == "MR" and f.regions == ()  # 320 mm field of view: region unknown
    r = HeaderRulesRanker(INFOS).rank(mr)
    assert r.names[0] == "mr-heart" and not r.fits  # modality only: no fit decision for a region
    dx = read_image(png(dx_chest(), tmp_path / "dx.png"))
    assert header_facts(dx).modality == "DX"
    assert HeaderRulesRanker(INFOS).rank(dx).names[0] == "dx-chest-lungs"
    ph = read_image(png(photo(), tmp_path / "photo.png"))
    f = header_facts(ph)
    assert f.modality == "OT"
    r = HeaderRulesRanker(INFOS).rank(ph)
    assert r.confidence == 0.0 and r.fits is False
    # DICOM header fields win over the value range
    dcm = Image(
        ct.array,
        ct.spacing,
        ct.origin,
        ct.direction,
        {"format": "dicom", "modality": "MR", "body_part": "HEART"},
    )
    f = header_facts(dcm)
    assert (f.modality, f.regions) == ("MR", ("HEART",))
    assert HeaderRulesRanker(INFOS).rank(dcm).names[0] == "mr-heart"


def test_histogram_knn_on_synthetic_profiles():
    def ref(img, m, r):
        return Reference(histogram_features(img), m, (r,))

    def dx(s):
        return Image(dx_chest(s).astype(np.float32), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))

    refs = []
    for s in range(3):
        refs += [ref(ct_head(s), "CT", "HEAD"), ref(mr_heart(s), "MR", "HEART"), ref(dx(s), "DX", "CHEST")]
    feats = histogram_features(ct_head(0))
    assert (
        feats.shape == (64,)
        and feats[:32].sum() == pytest.approx(1.0)
        and feats[32:].sum() == pytest.approx(1.0)
    )
    knn = HistogramKNNRanker(INFOS, refs, k=3)
    assert knn.rank(ct_head(10)).names[0] == "ct-head-bone"
    assert knn.rank(mr_heart(10)).names[0] == "mr-heart"
    assert knn.rank(dx(10)).names[0] == "dx-chest-lungs"
    # an image unlike every reference is less confident than one like them
    noise = Image(np.random.default_rng(0).uniform(5000, 9000, (30, 30)).astype(np.float32), (1.0, 1.0), (0.0, 0.0),
                  (1.0, 0.0, 0.0, 1.0))  # fmt: skip
    assert knn.rank(noise).confidence < knn.rank(ct_head(11)).confidence
    with pytest.raises(ModelSelectorError, match="no reference"):
        HistogramKNNRanker(INFOS, []).rank(ct_head())


# --- cases and split --------------------------------------------------------------------------------------
def make_data(root: Path) -> None:
    """A small data folder in the layout of the shared data: manifest.csv (3D, codes) + radiology_2d/labels.csv;
    two 2D sources (``img``: radiographs and photos, ``slices``: 2D CT head slices) and one of volumes."""
    for sub in ("radiology_2d/img", "radiology_2d/slices", "vol"):
        (root / sub).mkdir(parents=True)
    rows2d = []
    for i in range(6):
        png(dx_chest(i), root / "radiology_2d" / "img" / f"dx{i}.png")
        rows2d.append({"path": f"img/dx{i}.png", "modality": "DX", "body_region": "CHEST"})
        png(photo(i), root / "radiology_2d" / "img" / f"photo{i}.png")
        rows2d.append({"path": f"img/photo{i}.png", "modality": "OT", "body_region": "OOD:photo"})
    for i in range(3):  # lone 2D slices of CT heads: the CT head model needs the volume
        # with a scanner's noise (tens of HU), so that the 8-bit slice is a picture, not a few-valued label map
        noisy = ct_head(20 + i).array[10] + np.random.default_rng(i).normal(0, 40, (40, 40))
        sl = (np.clip(noisy, -1000, 1000) + 1000) / 8
        png(sl.astype(np.uint8), root / "radiology_2d" / "slices" / f"head{i}.png")
        rows2d.append({"path": f"slices/head{i}.png", "modality": "CT", "body_region": "HEAD"})
    with open(root / "radiology_2d" / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "modality", "body_region", "label_origin", "source", "license"])
        w.writeheader()
        w.writerows(rows2d)
    rows3d = []
    for i in range(6):
        write_image(ct_head(i), root / "vol" / f"subj{i}_ct.nii.gz")
        rows3d.append({"path": f"vol/subj{i}_ct.nii.gz", "modality_code": "CT", "region_code": "HEAD"})
        write_image(mr_heart(i), root / "vol" / f"subj{i}_frame01.nii.gz")
        rows3d.append({"path": f"vol/subj{i}_frame01.nii.gz", "modality_code": "MR", "region_code": "HEART"})
    abd = ct_head(7)
    abd.spacing = (10.0, 10.0, 10.0)  # a 400 mm trunk-sized field of view
    write_image(abd, root / "vol" / "abd_ct.nii.gz")  # a CT with no model in the zoo (CT:ABDOMEN)
    rows3d.append({"path": "vol/abd_ct.nii.gz", "modality_code": "CT", "region_code": "ABDOMEN"})
    rows3d.append({"path": "vol/subj0_seg.nii.gz", "modality_code": "SEG", "region_code": "HEAD"})
    rows3d.append({"path": "vol/unknown.nii.gz", "modality_code": "US", "region_code": ""})
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "modality", "body_region", "ndim", "modality_code", "region_code"])
        w.writeheader()
        for r in rows3d:
            w.writerow(
                {**r, "modality": r["modality_code"], "body_region": r["region_code"].lower(), "ndim": 3}
            )


HELD_OUT = {"slices": "test"}


def test_cases_categories_and_exclusions(tmp_path):
    make_data(tmp_path / "data")
    split = make_split(tmp_path / "data", held_out=HELD_OUT)
    cases = cases_of(split, "all")
    assert sorted({c.label for c in cases}) == ["CT:ABDOMEN", "CT:HEAD", "DX:CHEST", "MR:HEART", "OT:OOD"]
    assert len(cases) == 28  # label maps and rows without a region are left out
    cats = {c.path.name: c.category(INFOS) for c in cases}
    assert cats["subj0_ct.nii.gz"] == "in-zoo" and cats["dx0.png"] == "in-zoo"
    assert cats["head0.png"] == "needs-volume" and cats["photo0.png"] == "ood"
    head = next(c for c in cases if c.path.name == "head0.png")
    assert (
        head.held_out_source and head.needs_volume(INFOS) == ["ct-head-bone"] and head.applicable(INFOS) == []
    )
    assert {c.path.name for c in cases_of(split, "test")} >= {"head0.png", "head1.png", "head2.png"}
    few, _ = select_cases(cases, limit=5, seed=1)
    assert len(few) == 5 and len({c.label for c in few}) == 5  # class by class
    with pytest.raises(ModelSelectorError, match="no evaluation image"):
        select_cases(cases, exclude={str(c.path) for c in cases})
    with pytest.raises(ModelSelectorError, match="unknown part"):
        cases_of(split, "validation")


# --- runner -----------------------------------------------------------------------------------------------
def test_runner_end_to_end_with_baselines(tmp_path):
    data = tmp_path / "data"
    make_data(data)
    split = make_split(data, held_out=HELD_OUT)
    ex = {"ct-head-bone": [data / "vol" / "subj0_ct.nii.gz"], "mr-heart": [data / "vol" / "subj0_frame01.nii.gz"],
          "dx-chest-lungs": [data / "radiology_2d" / "img" / "dx0.png"]}  # fmt: skip
    zoo = make_zoo(tmp_path, ex)
    assert [m.name for m in zoo_models(zoo)] == sorted(n for n, _, _ in MODELS)
    out = tmp_path / "out"
    res = run_selection_evaluation(zoo, split, out, part="all", rankers=BASELINES, seed=0)
    evaluated = {str(c.path) for c in res.cases}
    assert not evaluated & {str(p.resolve()) for v in ex.values() for p in v}  # exemplars are never evaluated
    p = res.protocol
    assert p["categories"]["needs-volume"] == 3 and p["n_source_disjoint"] == 3
    assert p["categories"]["ood"] == sum(1 for c in res.cases if c.label in ("OT:OOD", "CT:ABDOMEN"))
    m = res.metrics["all"]
    assert m["header-rules"]["top1"] == 1.0  # the header tells the modality; one model per modality here
    fits = {Path(r.case.path).name: r.ranking.fits for r in res.results["header-rules"]}
    for name, fit in fits.items():  # header rules know the region only from the CT head's field of view
        assert fit == (name.startswith("subj") and name.endswith("_ct.nii.gz")), name
    for knn in ("histogram-knn-exemplars", "histogram-knn-train"):
        assert m[knn]["top1"] == 1.0, knn
        assert m[knn]["mAP"] >= m["random"]["mAP"]
    assert m["histogram-knn-train"]["class_accuracy"] > 0.5  # the references' vote names the class
    assert np.isnan(m["random"]["fit_balanced_accuracy"]) and np.isnan(m["random"]["first_fitting"])
    for name in BASELINES:
        assert 0.0 <= m[name]["ood_auroc"] <= 1.0
    assert res.metrics["source-disjoint"]["random"]["n_needs_volume"] == 3
    assert res.leakage["near_duplicate_pairs_across_splits"] == 0
    assert res.leakage["patients_in_several_splits"] == 0
    for f in ("report.md", "results.csv", "metrics.json"):
        assert (out / f).is_file(), f
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| header-rules |" in report and "OOD AUROC" in report and "### Leakage checks" in report
    assert "## Results: source-disjoint images" in report and "needs the volume: ct-head-bone" in report
    assert "### Per class" in report and "| OT:OOD |" in report and "rejects 1.000" in report  # header rules
    rows = list(csv.DictReader(open(out / "results.csv", encoding="utf-8")))
    assert len(rows) == len(res.cases) * len(BASELINES)
    assert {r["ranker"] for r in rows} == set(BASELINES)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["metrics"]["all"]["random"]["fit_balanced_accuracy"] is None
    assert not [q for q in out.iterdir() if q.name.startswith(".tmp")]


def test_runner_cancel_leaves_nothing(tmp_path):
    import threading

    data = tmp_path / "data"
    make_data(data)
    zoo = make_zoo(tmp_path, {})
    ev = threading.Event()
    ev.set()
    with pytest.raises(Cancelled):
        run_selection_evaluation(zoo, make_split(data), tmp_path / "out", part="all",
                                 rankers=["random", "header-rules"], cancel=ev)  # fmt: skip
    assert not (tmp_path / "out" / "report.md").exists()


def test_cli_evaluate_selection(tmp_path, capsys):
    data = tmp_path / "data"
    make_data(data)
    split_file = make_split(data, held_out=HELD_OUT).save(tmp_path / "split.json")
    assert ProtocolSplit.load(split_file).digest() == make_split(data, held_out=HELD_OUT).digest()
    zoo = make_zoo(tmp_path, {})
    rc = main(["evaluate-selection", "--zoo", str(zoo.path), "--split-file", str(split_file), "--data", str(data),
               "--out", str(tmp_path / "o"), "--part", "all", "--rankers", "random,header-rules,histogram-knn-train",
               "--limit", "8", "--seed", "3"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "header-rules" in out and "report:" in out and "source-disjoint" in out
    report = (tmp_path / "o" / "report.md").read_text(encoding="utf-8")
    assert "at most" in report  # k-NN fitted on the training split
    assert "Command: `modelselector evaluate-selection --zoo" in report and "--limit 8" in report
    rc = main(["evaluate-selection", "--zoo", str(zoo.path), "--split-file", str(split_file), "--data", str(data),
               "--out", str(tmp_path / "o3"), "--part", "all", "--rankers", "random",
               "--docs", str(tmp_path / "docs" / "selection-report.md")])  # fmt: skip
    assert rc == 0
    assert (tmp_path / "docs" / "selection-report.md").is_file()
    capsys.readouterr()
    rc = main(["evaluate-selection", "--zoo", str(zoo.path), "--split-file", str(split_file), "--data", str(data),
               "--out", str(tmp_path / "o2"), "--rankers", "nonsense", "--part", "all"])  # fmt: skip
    assert rc != 0 and "unknown ranker" in capsys.readouterr().err


def test_calibrating_on_a_folder_without_the_split_images_is_refused(tmp_path):
    """`index calibrate --data DIR` with a folder that lacks the split's images would fit the calibration on
    what happens to be there (nothing, or a part): the development images are refused until all are there."""
    from ModelSelectorLib.evaluation.selection_cases import development_images, load_protocol

    data = tmp_path / "data"
    make_data(data)
    split_file = make_split(data, held_out=HELD_OUT).save(tmp_path / "split.json")
    zoo = make_zoo(tmp_path, {})
    images, _ = development_images(load_protocol(split_file, data), zoo)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(
        InputError, match=rf"{len(images)} of the {len(images)} development images .* are not there"
    ):
        development_images(load_protocol(split_file, tmp_path / "elsewhere"), zoo)
    Path(images[0].image).unlink()
    with pytest.raises(InputError, match=rf"1 of the {len(images)} development images"):
        development_images(load_protocol(split_file, data), zoo)


def test_eval_case_label():
    c = EvalCase(Path("/a.png"), "OT", ())
    assert c.label == "OT:OOD" and c.relevant(INFOS) == []
    c = EvalCase(Path("/b.nii.gz"), "CT", ("HEAD", "NECK"))
    assert c.label == "CT:HEAD;NECK" and c.relevant(INFOS) == ["ct-head-bone"]
    assert c.category(INFOS) == "in-zoo"
    flat = EvalCase(Path("/c.png"), "CT", ("HEAD",), ndim=2)
    assert flat.category(INFOS) == "needs-volume" and flat.relevant(INFOS) == ["ct-head-bone"]


def test_a_volume_is_applicable_only_to_models_of_its_field_of_view():
    crop_model = ModelInfo("mr-hippocampus", "1", "MR", ("HEAD",), extent_mm=42.0)
    scan_model = ModelInfo("mr-brain-flair-lesion", "1", "MR", ("HEAD",), extent_mm=256.0)
    models = [crop_model, scan_model]
    head = EvalCase(Path("/head.nii.gz"), "MR", ("HEAD",), extent_mm=180.0)
    crop = EvalCase(Path("/crop.nii.gz"), "MR", ("HEAD",), extent_mm=45.0)
    unknown = EvalCase(Path("/u.nii.gz"), "MR", ("HEAD",))  # not read yet: nothing to compare
    assert head.relevant(models) == ["mr-hippocampus", "mr-brain-flair-lesion"]
    assert head.applicable(models) == ["mr-brain-flair-lesion"] and crop.applicable(models) == [
        "mr-hippocampus"
    ]
    assert unknown.applicable(models) == ["mr-hippocampus", "mr-brain-flair-lesion"]
    mid = EvalCase(Path("/m.nii.gz"), "MR", ("HEAD",), extent_mm=130.0)  # 3.1 times the crops, half the scans
    assert mid.applicable(models) == ["mr-brain-flair-lesion"] and mid.category(models) == "in-zoo"
    only_crop = EvalCase(Path("/w.nii.gz"), "MR", ("HEAD",), extent_mm=400.0)
    assert only_crop.applicable([crop_model]) == [] and only_crop.category([crop_model]) == "ood"


def test_runner_with_selector_variants(tmp_path):
    """The selector with exemplar, data-free and both kinds of prototypes, measured beside the baselines."""
    pytest.importorskip("ModelSelectorLib.selection.selector")
    from ModelSelectorLib.selection.calibration import build_index
    from ModelSelectorLib.selection.encoder import Encoder
    from ModelSelectorLib.selection.index import default_index_dir
    from ModelSelectorLib.selection.prototypes import generate_for_model

    data = tmp_path / "data"
    make_data(data)
    split = make_split(data, held_out=HELD_OUT)
    ex = {"ct-head-bone": [data / "vol" / f"subj{i}_ct.nii.gz" for i in (0, 1)],
          "mr-heart": [data / "vol" / f"subj{i}_frame01.nii.gz" for i in (0, 1)],
          "dx-chest-lungs": [data / "radiology_2d" / "img" / f"dx{i}.png" for i in (0, 1)]}  # fmt: skip
    zoo = make_zoo(tmp_path, {})
    enc = Encoder.load()
    for name, files in ex.items():
        generate_for_model(zoo, name, exemplars=files, data_free=1, steps=3, encoder=enc, pngs=0)
    build_index(zoo, encoder=enc).save(default_index_dir(zoo))
    out = tmp_path / "out"
    res = run_selection_evaluation(zoo, split, out, part="all", seed=0)
    names = [r["name"] for r in res.rankers]
    assert names == ["ours-exemplar", "ours-data-free", "ours-both", "prototypes-exemplar", "prototypes-data-free",
                     *BASELINES]  # fmt: skip
    evaluated = {str(c.path) for c in res.cases}
    assert not evaluated & {str(p.resolve()) for v in ex.values() for p in v}  # exemplars never evaluated
    assert "exemplar images" in next(
        r["description"] for r in res.rankers if r["name"] == "histogram-knn-exemplars"
    )
    m = res.metrics["all"]
    assert m["ours-both"]["mAP"] >= m["random"]["mAP"]
    for name in ("ours-exemplar", "ours-data-free", "ours-both"):
        assert m[name]["n_errors"] == 0 and not np.isnan(m[name]["fit_balanced_accuracy"])
        assert len(res.results[name]) == len(res.cases)
        assert all(sorted(r.ranking.names) == sorted(n for n, _, _ in MODELS) for r in res.results[name])
        # a lone 2D CT slice is never said to fit the 3D CT model
        assert not any(
            "ct-head-bone" in r.ranking.fitting for r in res.results[name] if r.category == "needs-volume"
        )
    report = (out / "report.md").read_text(encoding="utf-8")
    assert (
        "| ours-both |" in report and "Confusion matrix of `ours-both`" in report and "## Targets" in report
    )
    assert "### Per held-out source" in report and "| slices | 3 |" in report


def test_resolve_source_recorded_in_another_folder(tmp_path, monkeypatch):
    from ModelSelectorLib.evaluation.baselines import resolve_source

    f = tmp_path / "data" / "ct" / "a.nii.gz"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert resolve_source("data/ct/a.nii.gz") == str(f.resolve())  # relative to the working folder
    assert resolve_source("../shared/data/ct/a.nii.gz", [tmp_path / "data"]) == str(f.resolve())
    assert resolve_source(str(f)) == str(f.resolve())
    assert resolve_source("synthesised-0", [tmp_path / "data"]) is None


def test_cases_a_training_run_recorded_by_name_are_left_out(tmp_path):
    """A model made with `modelselector train` lists its training and validation cases by file name only (in
    docs/training_curve.json, no starter-zoo block): the images of those names under the data folder are its
    training images, and the evaluation leaves them out."""
    from ModelSelectorLib.evaluation.selection_cases import zoo_training_paths

    make_data(tmp_path / "data")
    zoo = make_zoo(tmp_path, {})
    assert not zoo_training_paths(zoo, [tmp_path / "data"])
    trained = next(p for p in (tmp_path / "data").rglob("*.nii.gz"))
    curve = Path(zoo.get(zoo.names()[0])) / "docs" / "training_curve.json"
    curve.write_text(json.dumps({"training_cases": [trained.name], "validation_cases": ["dx0.nii.gz"]}))
    found = zoo_training_paths(zoo, [tmp_path / "data"])
    dx0 = str(next((tmp_path / "data").rglob("dx0.png")).resolve())
    assert found == {str(trained.resolve()), dx0}  # a validation case of another format, matched by its name
    assert zoo_training_paths(zoo, [tmp_path / "data"], validation=False) == {str(trained.resolve())}


def test_an_unknown_ranker_is_a_bad_argument():
    from ModelSelectorLib.errors import InputError
    from ModelSelectorLib.evaluation.selection import ranker_names

    with pytest.raises(InputError, match=r"unknown ranker\(s\) \['foo'\]; available: .*prototypes-data-free"):
        ranker_names(["ours-both", "foo"], [], [])  # exit status 2, as for any bad argument
