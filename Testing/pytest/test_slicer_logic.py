"""Tests of the Slicer module's logic with real MRML classes (``slicer-core``), no Slicer application.

A tiny zoo is trained (two epochs on a synthetic MSD dataset), a synthetic oblique volume is put in a
``vtkMRMLScalarVolumeNode``, and ``ModelSelectorLogic.applyModels`` runs ``python -m ModelSelectorLib apply``
as a subprocess and loads the result into a ``vtkMRMLSegmentationNode``.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "ModelSelector"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "ModelSelector.ui"

slicer = pytest.importorskip("slicer", reason="needs slicer-core (pip install slicer-core) for MRML classes")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the 'slicer' module found has no MRML classes", allow_module_level=True)

sys.path.insert(0, str(MODULE_DIR))
import ModelSelector as msm  # noqa: E402

MODEL = "TinySeg"


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """A zoo with one segmentation model trained for two epochs on a synthetic MSD dataset."""
    from ModelSelectorLib.datasets import make_synthetic_msd
    from ModelSelectorLib.selection.calibration import build_index
    from ModelSelectorLib.selection.index import default_index_dir
    from ModelSelectorLib.selection.prototypes import generate_for_model
    from ModelSelectorLib.training.segmentation import TrainConfig, train_segmentation

    root = tmp_path_factory.mktemp("zoo")
    dataset = make_synthetic_msd(root / "msd", n_cases=3, shape=(16, 24, 24))
    config = TrainConfig(channels=(4, 8), epochs=2, batch_size=1, num_samples=1, roi_size=(16, 16, 16),
                         val_fraction=0.34, augment=False, num_threads=2, seed=0)  # fmt: skip
    train_segmentation(dataset, MODEL, root / "zoo", config)
    # what `modelselector prototypes` and `modelselector index build` do, so findModels can rank
    generate_for_model(root / "zoo", MODEL, exemplars=root / "msd" / "imagesTr", data_free=0)
    build_index(root / "zoo").save(default_index_dir(root / "zoo"))
    return root / "zoo"


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def volume(scene):
    return msm.make_test_volume(scene, np.random.default_rng(1))


def _matrix(m):
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _ijk_to_ras(node):
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return _matrix(m)


def test_list_models(tiny_zoo):
    models = msm.ModelSelectorLogic().listModels(str(tiny_zoo))
    assert [m["name"] for m in models] == [MODEL]
    assert models[0]["task_type"] == "segmentation"


def test_apply_models_names_colours_geometry(tiny_zoo, scene, volume, tmp_path, monkeypatch):
    logic = msm.ModelSelectorLogic(scene)
    card = logic.modelCard(MODEL, str(tiny_zoo))
    progress = []
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # only this test's temporary folders land here
    nodes = logic.applyModels(volume, [{"name": MODEL, "score": 0.9}], str(tiny_zoo),
                              progressCallback=lambda f, t: progress.append((f, t)))  # fmt: skip
    assert not [d for d in os.listdir(tmp_path) if d.startswith("ModelSelector-")], (
        "temporary files left behind"
    )

    assert len(nodes) == 1
    node = nodes[0]
    assert node.GetScene() is scene
    assert node.GetName() == MODEL
    assert progress and progress[-1][0] == pytest.approx(1.0)
    assert all(0.0 <= f <= 1.0 for f, _ in progress)

    segmentation = node.GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    assert [s.GetName() for s in segments] == [lb["name"] for lb in card.labels]
    for seg, label in zip(segments, card.labels):
        assert np.allclose(seg.GetColor(), label["color"], atol=1e-3)
        if label.get("terminology"):
            terminology = seg.GetTerminology() if hasattr(seg, "GetTerminology") else ""
            assert label["terminology"]["type"][1] in terminology, terminology
            assert label["terminology"]["category"][1] in terminology, terminology

    # the labelmap has exactly the input volume's geometry (spacing, origin, directions)
    reference = _ijk_to_ras(volume)
    labelmap = slicer.vtkOrientedImageData()
    assert node.GetBinaryLabelmapRepresentation(segmentation.GetNthSegmentID(0), labelmap)
    got = _matrix_of_oriented(labelmap)
    assert np.allclose(got, reference, atol=1e-4), f"{got}\n!=\n{reference}"
    assert node.GetNodeReference("referenceImageGeometryRef") is volume
    geometry = segmentation.GetConversionParameter("Reference image geometry")
    assert geometry, "no reference image geometry"
    values = [float(v) for v in geometry.split(";")[:16]]
    assert np.allclose(np.array(values).reshape(4, 4), reference, atol=1e-4)


def _matrix_of_oriented(image):
    import vtk

    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    return _matrix(m)


def test_apply_places_beside_input_in_subject_hierarchy(tiny_zoo, scene, volume):
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None:
        pytest.skip("no subject hierarchy node in this MRML build")
    study = sh.CreateFolderItem(sh.GetSceneItemID(), "Study")
    item = sh.GetItemByDataNode(volume)
    if item:  # the application's subject hierarchy plugins add items automatically
        sh.SetItemParent(item, study)
    else:  # MRML only: add the volume's item by hand
        sh.CreateItem(study, volume)
    (node,) = msm.ModelSelectorLogic(scene).applyModels(volume, MODEL, str(tiny_zoo))
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study


def test_apply_keeps_the_processes_warnings(tiny_zoo, scene, volume, caplog):
    # ten times the spacing: a field of view about six times the training cases' (37 mm)
    volume.SetSpacing(*[10.0 * v for v in volume.GetSpacing()])
    job = msm.ModelSelectorLogic(scene).startApplyModels(volume, [MODEL], str(tiny_zoo))
    with caplog.at_level(logging.WARNING):
        (node,) = job.wait()
    assert node.GetScene() is scene  # applied all the same: an expert may know better
    # the CT model's second objection: the test volume's values (about 0-200) hold no air at -1000 HU; and the
    # selector's: the random volume fits no model
    assert len(job.warnings) == 3, job.log
    units, view, fit = job.warnings
    assert fit.startswith(f"{MODEL}: the selector does not find that it fits this image")
    assert units.startswith(
        f"{MODEL}: the model takes CT in Hounsfield units, and none of the image's voxels"
    )
    assert view.startswith(f"{MODEL}: the image spans about 210 mm across") and "crop the image" in view
    assert units in caplog.text and view in caplog.text


def test_apply_error_carries_process_message(tiny_zoo, scene, volume):
    with pytest.raises(msm.ModelSelectorProcessError) as info:
        msm.ModelSelectorLogic(scene).applyModels(volume, ["NoSuchModel"], str(tiny_zoo))
    message = str(info.value)
    assert "NoSuchModel" in message
    assert "\n" not in message and "Traceback" not in message


def test_cancel_terminates_process(tiny_zoo, scene, volume):
    cancel = threading.Event()
    cancel.set()
    n_nodes = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    with pytest.raises(msm.ModelSelectorCancelled):
        msm.ModelSelectorLogic(scene).applyModels(volume, [MODEL], str(tiny_zoo), cancelEvent=cancel)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == n_nodes


def test_find_models_ranks_the_zoo(tiny_zoo, scene, volume):
    logic = msm.ModelSelectorLogic(scene)
    progress = []
    models = logic.findModels(volume, str(tiny_zoo), progressCallback=lambda f, t: progress.append(f))
    assert [m["name"] for m in models] == [MODEL]
    assert {"name", "version", "task", "modality", "body_region", "score", "fits"} <= set(models[0])
    assert 0.0 <= models[0]["score"] <= 1.0
    assert logic.lastFindResult["fits"] == any(m["fits"] for m in models)
    assert not logic.findModels(volume, str(tiny_zoo), threshold=1.0)[0]["fits"]  # the panel's fit threshold


def test_find_models_without_index_names_the_fix(tmp_path, scene, volume):
    from ModelSelectorLib.zoo import Zoo

    Zoo.create(tmp_path / "empty-zoo")
    with pytest.raises(msm.ModelSelectorProcessError) as info:
        msm.ModelSelectorLogic(scene).findModels(volume, str(tmp_path / "empty-zoo"))
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)
    assert "modelselector" in str(info.value), str(info.value)


def test_mark_fits_and_model_names():
    models = [{"name": "a", "score": 0.9, "fits": True}, {"name": "b", "score": 0.3, "fits": True}]
    marked = msm.ModelSelectorLogic.markFits(models, 0.5)
    assert [m["fits"] for m in marked] == [True, False]
    # a stricter threshold than the selection's also takes back its answer
    answered = [dict(models[0], answer="yes"), dict(models[1], fits=False, answer="needs a crop")]
    assert [m["answer"] for m in msm.ModelSelectorLogic.markFits(answered, 0.95)] == ["no", "no"]
    assert [m["answer"] for m in msm.ModelSelectorLogic.markFits(answered, 0.2)] == ["yes", "needs a crop"]
    assert msm.ModelSelectorLogic.modelNames(["a", {"name": "b"}]) == ["a", "b"]
    assert msm.ModelSelectorLogic.modelNames("a") == ["a"]
    for nothing in (None, [], 3):  # a console call that names no model is told so, not a TypeError
        with pytest.raises(ValueError, match="choose one or more models to apply"):
            msm.ModelSelectorLogic.modelNames(nothing)


def test_ui_file_parses_and_has_every_widget_the_module_uses():
    tree = ET.parse(UI_FILE)
    names = {w.get("name") for w in tree.iter("widget")}
    source = (MODULE_DIR / "ModelSelector.py").read_text(encoding="utf-8")
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    assert used, "the module uses no widget of the .ui file?"
    missing = sorted(used - names)
    assert not missing, f"widgets used by ModelSelector.py but missing in ModelSelector.ui: {missing}"
    # parameter node bindings name existing parameters
    params = {p.text for p in tree.iter("string") if p.text}
    assert {"inputVolume", "fitThreshold"} <= params


def test_module_files_present():
    assert (MODULE_DIR / "Resources" / "Icons" / "ModelSelector.png").is_file()
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule" in cmake and "WITH_GENERIC_TESTS" in cmake
    s4ext = (ROOT / "ModelSelector.s4ext").read_text(encoding="utf-8")
    for key in ("scm", "scmurl", "depends", "category", "iconurl", "screenshoturls", "contributors", "homepage",
                "description", "enabled"):  # fmt: skip
        assert re.search(rf"^{key}\s", s4ext, re.M), key


def test_module_selftest_without_slicer_app():
    """The module's own self-test (untrained bundle with terminology codes), run with MRML only."""
    result = unittest.TextTestRunner(verbosity=0).run(msm.ModelSelectorTest("runTest"))
    assert result.wasSuccessful(), [str(e) for _, e in result.errors + result.failures]


def test_slicer_selftest():
    exe = os.environ.get("SLICER_EXECUTABLE")
    if not exe:
        pytest.skip("set SLICER_EXECUTABLE to a Slicer executable to run the in-Slicer self-test")
    script = ROOT / "Testing" / "slicer" / "run_selftest.py"
    run = subprocess.run([exe, "--no-splash", "--no-main-window", "--python-script", str(script)],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def test_gpu_is_offered_only_when_torch_can_use_cuda(scene, volume):
    import torch

    logic = msm.ModelSelectorLogic(scene)
    if torch.cuda.is_available():
        assert ("GPU (CUDA)", "cuda") in logic.deviceChoices()
        return
    assert logic.deviceChoices() == [("CPU", "cpu")]  # a CPU-only torch: no GPU choice
    with pytest.raises(ValueError, match="cannot use a GPU; choose the CPU"):
        logic.startApplyModels(volume, MODEL, device="cuda")


class _SettingsStore:
    """Slicer's settings as ``qt.QSettings`` keeps them (Qt is not installed beside slicer-core here)."""

    values: dict = {}

    def value(self, key):
        return self.values.get(key)

    def setValue(self, key, value):
        self.values[key] = value


def test_the_zoo_and_device_choices_are_kept_between_sessions(tmp_path, monkeypatch):
    """The widget starts with the zoo folder and device chosen last; a folder since removed is not offered,
    and a path that is not a folder is never kept."""
    from ModelSelectorSupport import preferences

    monkeypatch.setattr(preferences, "qt", type("qt", (), {"QSettings": _SettingsStore}))
    monkeypatch.setattr(_SettingsStore, "values", {})
    assert preferences.savedZooPath() == "" and preferences.savedDevice() == "cpu"  # nothing chosen yet
    zoo = tmp_path / "my zoo"
    zoo.mkdir()
    preferences.saveZooPath(str(zoo))
    preferences.saveDevice("cuda")
    preferences.saveZooPath(str(tmp_path / "typed half-way"))
    assert preferences.savedZooPath() == str(zoo) and preferences.savedDevice() == "cuda"
    zoo.rmdir()
    assert preferences.savedZooPath() == ""
