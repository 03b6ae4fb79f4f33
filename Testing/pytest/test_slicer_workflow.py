"""The Slicer module's default workflow on the bundled chest X-ray with the bundled zoo, with real MRML
(``slicer-core``) and the real ``modelselector`` commands in child processes.

The X-ray is loaded the way Slicer loads a PNG (ITK reads it; a grey image becomes a scalar volume, an RGB one
a vector volume), *Find models* ranks the zoo, the fitting models (a landmark model first, then a lung
segmentation) are applied, and the results are prepared for display. Also: the rows of *List zoo models*
applied by name, on an RGB copy of the X-ray, and which results get a 3D surface.
"""

from __future__ import annotations

import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "ModelSelector"
XRAY = ROOT / "Resources" / "samples" / "cxr_chest.png"

slicer = pytest.importorskip("slicer", reason="needs slicer-core (pip install slicer-core) for MRML classes")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the 'slicer' module found has no MRML classes", allow_module_level=True)

sys.path.insert(0, str(MODULE_DIR))
from ModelSelectorSupport import presentation  # noqa: E402

import ModelSelector as msm  # noqa: E402


def _ijk_to_ras(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _load_xray(scene, tmp_path: Path, rgb: bool = False):
    """The bundled X-ray as Slicer loads it: ITK reads the PNG (grey: scalar volume, RGB: vector volume)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(XRAY))
    if rgb:
        grey = sitk.GetArrayFromImage(image)
        image = sitk.GetImageFromArray(np.stack([grey, grey, grey], axis=-1), isVector=True)
    path = tmp_path / ("xray_rgb.nrrd" if rgb else "xray.nrrd")
    sitk.WriteImage(image, str(path))
    node = slicer.vtkMRMLVectorVolumeNode() if rgb else slicer.vtkMRMLScalarVolumeNode()
    node.SetName("ChestXray")
    scene.AddNode(node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node), "the X-ray could not be read into a volume node"
    assert node.GetImageData().GetNumberOfScalarComponents() == (3 if rgb else 1)
    return node


def _ras_bounds(volume) -> tuple[np.ndarray, np.ndarray]:
    dims = volume.GetImageData().GetDimensions()
    corners = np.array(
        [[i, j, k, 1.0] for i in (0, dims[0] - 1) for j in (0, dims[1] - 1) for k in (0, dims[2] - 1)]
    )
    ras = corners @ _ijk_to_ras(volume).T
    return ras[:, :3].min(axis=0), ras[:, :3].max(axis=0)


def _assert_same_grid(segmentation_node, volume) -> None:
    labelmap = slicer.vtkOrientedImageData()
    segmentation = segmentation_node.GetSegmentation()
    assert segmentation_node.GetBinaryLabelmapRepresentation(segmentation.GetNthSegmentID(0), labelmap)
    import vtk

    m = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(m)
    got = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    assert np.allclose(got, _ijk_to_ras(volume), atol=1e-4), got
    assert segmentation_node.GetNodeReference("referenceImageGeometryRef") is volume


def test_default_workflow_on_the_bundled_chest_xray(tmp_path):
    """Find models -> the best fitting one starts ticked -> apply the two fitting models -> curves + segmentation,
    prepared for display without error (landmarks get no surface call; a one-slice result gets none)."""
    # the conversion rule that the application's Segmentations module registers at startup
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    scene = slicer.vtkMRMLScene()
    volume = _load_xray(scene, tmp_path)
    logic = msm.ModelSelectorLogic(scene)
    models = logic.findModels(volume)  # the bundled zoo
    fitting = [m for m in models if m["fits"]]
    assert len(fitting) >= 2, models
    rows = presentation.modelRows(models)
    assert rows[0].checked and not any(r.checked for r in rows[1:])  # the best fitting model starts ticked
    assert {m["task"] for m in fitting[:2]} == {"landmarks", "segmentation"}, fitting[:2]

    nodes = logic.applyModels(volume, fitting[:2])
    assert [n.GetScene() for n in nodes] == [scene, scene]
    for model, node in zip(fitting, nodes):
        assert node.IsA(logic.outputSpec(model["task"])["node_class"]), (model["name"], node.GetClassName())
    by_kind = dict(zip((m["task"] for m in fitting[:2]), zip(fitting[:2], nodes)))
    landmark_model, markups = by_kind["landmarks"]
    segmentation = by_kind["segmentation"][1]
    card = logic.modelCard(landmark_model["name"])
    # one markups node per contour (curves), the returned node first, together every point of the card
    curves = [scene.GetNthNodeByClass(i, "vtkMRMLMarkupsNode")
              for i in range(scene.GetNumberOfNodesByClass("vtkMRMLMarkupsNode"))]  # fmt: skip
    assert curves[0] is markups and sum(c.GetNumberOfControlPoints() for c in curves) == len(card.labels) > 0
    assert [c.GetNthControlPointLabel(i) for c in curves for i in range(c.GetNumberOfControlPoints())] == [
        lb["name"] for lb in card.labels
    ]
    low, high = _ras_bounds(volume)
    points = np.array(
        [c.GetNthControlPointPosition(i) for c in curves for i in range(c.GetNumberOfControlPoints())]
    )
    assert np.all(points >= low - 1e-3) and np.all(points <= high + 1e-3), "landmarks outside the image"
    _assert_same_grid(segmentation, volume)
    assert segmentation.GetSegmentation().GetNumberOfSegments() >= 1

    assert logic.lastFindResult["input"] == "volume 'ChestXray'"  # not the deleted temporary file

    assert logic.showResults(nodes, volume) == []  # "auto": a one-slice result gets no 3D surface
    assert logic.showResults(nodes, volume, presentation.SURFACES_ALWAYS) == [segmentation]
    assert segmentation.GetSegmentation().ContainsRepresentation("Closed surface")


def test_list_then_apply_by_name_on_an_rgb_radiograph(tmp_path):
    """The rows of *List zoo models* (no ranking) name models that apply by name, here on an RGB X-ray
    (a vector volume, which the input selector offers)."""
    ui = ET.parse(MODULE_DIR / "Resources" / "UI" / "ModelSelector.ui")
    selector = next(w for w in ui.iter("widget") if w.get("name") == "inputVolumeSelector")
    node_types = {
        s.text for p in selector.iter("property") if p.get("name") == "nodeTypes" for s in p.iter("string")
    }
    assert node_types == set(msm.INPUT_VOLUME_CLASSES) and "vtkMRMLVectorVolumeNode" in node_types

    scene = slicer.vtkMRMLScene()
    volume = _load_xray(scene, tmp_path, rgb=True)
    logic = msm.ModelSelectorLogic(scene)
    listed = [dict(m, task=m.get("task_type", ""), score=None, fits=None) for m in logic.listModels()]
    rows = presentation.modelRows(listed)
    assert [r.name for r in rows] == [m["name"] for m in listed] and not any(r.checked for r in rows)
    lungs = next(r for r in rows if r.name == "dx-chest-lungs")
    (node,) = logic.applyModels(volume, [lungs.name], device="CPU")  # as a console user may spell it
    assert node.IsA("vtkMRMLSegmentationNode")
    _assert_same_grid(node, volume)
    assert [node.GetSegmentation().GetNthSegment(0).GetName()] == [
        lb["name"] for lb in logic.modelCard(lungs.name).labels
    ]


def _segmentation_and_volume(dims: tuple[int, int, int]):
    import vtk

    scene = slicer.vtkMRMLScene()
    image = vtk.vtkImageData()
    image.SetDimensions(*dims)
    volume = slicer.vtkMRMLScalarVolumeNode()
    volume.SetAndObserveImageData(image)
    scene.AddNode(volume)
    segmentation = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(segmentation)
    return scene, segmentation, volume


def test_3d_surfaces_default_to_small_results_only():
    _, small, small_volume = _segmentation_and_volume((64, 64, 32))
    _, large, large_volume = _segmentation_and_volume((512, 512, 200))
    _, flat, flat_volume = _segmentation_and_volume((512, 512, 1))
    assert presentation.wantsSurface(small, small_volume)
    assert not presentation.wantsSurface(large, large_volume)
    assert not presentation.wantsSurface(flat, flat_volume)
    assert presentation.wantsSurface(large, large_volume, presentation.SURFACES_ALWAYS)
    assert not presentation.wantsSurface(small, small_volume, presentation.SURFACES_NEVER)
    markups = slicer.vtkMRMLMarkupsFiducialNode()
    assert not presentation.wantsSurface(markups, small_volume, presentation.SURFACES_ALWAYS)


def test_model_rows_tick_only_the_best_fitting_model_and_carry_reasons():
    models = [
        {"name": "a", "task": "t", "modality": "CT", "body_region": "CHEST", "score": 0.91, "fits": True,
         "reasons": ["modality CT matches", "region CHEST matches"],
         "held_out": {"metric": "Dice", "value": 0.884, "cases": 19, "protocol": "test split"}},
        {"name": "b", "task": "t", "modality": "MR", "body_region": "HEAD", "score": 0.2, "fits": False,
         "demonstration": True},
    ]  # fmt: skip
    a, b = presentation.modelRows(models)
    assert a.cells == ("a", "t", "CT", "CHEST", "0.910", "yes", "Dice 0.88 (19)") and a.checked
    assert a.tooltip == "modality CT matches\nregion CHEST matches"
    assert b.cells[-3:] == ("0.200", "no", "-, demonstration") and not b.checked and b.tooltip == ""
    (unfit,) = presentation.modelRows([dict(models[0], fits=False)])
    assert not unfit.checked
    # the selection's answer, when it gives one, is the Fits cell
    (crop,) = presentation.modelRows([dict(models[0], fits=False, answer="needs a crop")])
    assert crop.cells[5] == "needs a crop" and not crop.checked


def test_find_status_counts_the_fitting_models_or_names_what_the_others_need():
    fit = {"name": "a", "fits": True, "answer": "yes"}
    no = {"name": "b", "fits": False, "answer": "no"}
    units = {"name": "ct-head-bone", "fits": False, "answer": "needs Hounsfield units"}
    assert presentation.findStatus([fit, no, units]) == "1 of 3 models fit this image."
    assert presentation.findStatus([no]) == (
        "No model in the zoo fits this image (you can still tick a model and apply it).")  # fmt: skip
    assert presentation.findStatus([units, no, dict(no, name="c", answer="needs the volume")]) == (
        "No model in the zoo fits this image as it is: ct-head-bone needs Hounsfield units; c needs the volume "
        "(the row's tooltip says what to do; you can still tick a model and apply it).")  # fmt: skip
    slices = dict(no, name="mr-cardiac", answer="needs the volume", slice_wise=True)
    assert presentation.findStatus([slices, no]) == (
        "No model in the zoo fits this image as it is: mr-cardiac needs the volume for its figures but can be "
        "applied to this slice (the row's tooltip says what to do; you can still tick a model and apply it).")  # fmt: skip
    assert presentation.findStatus([]).startswith("No model in the zoo fits this image")


def test_a_lone_mr_slice_in_slicer_takes_the_slice_wise_model_only(tmp_path):
    """One short-axis slice loaded as a one-slice volume: the slice-wise cardiac model segments it on the slice's
    own grid; the hippocampus model, whose patches span 40 slices, is refused with what to give instead."""
    import SimpleITK as sitk

    rng = np.random.default_rng(3)
    image = sitk.GetImageFromArray(rng.normal(300, 60, (1, 72, 88)).astype(np.float32))
    image.SetSpacing((1.4, 1.4, 8.0))
    image.SetOrigin((-60.0, 25.0, 12.0))
    path = tmp_path / "sax_slice.nrrd"
    sitk.WriteImage(image, str(path))
    scene = slicer.vtkMRMLScene()
    volume = slicer.vtkMRMLScalarVolumeNode()
    volume.SetName("ShortAxisSlice")
    scene.AddNode(volume)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(volume)
    logic = msm.ModelSelectorLogic(scene)
    (node,) = logic.applyModels(volume, ["mr-cardiac"])
    assert node.IsA("vtkMRMLSegmentationNode")
    _assert_same_grid(node, volume)
    with pytest.raises(msm.ModelSelectorProcessError, match="mr-hippocampus takes 3D volumes"):
        logic.applyModels(volume, ["mr-hippocampus"])


def _markups(scene) -> list:
    return [scene.GetNthNodeByClass(i, "vtkMRMLMarkupsNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLMarkupsNode"))]  # fmt: skip


def test_results_observe_the_volume_parent_transform(tmp_path):
    """A volume under a linear transform: the segmentation and every curve lie under the same transform, so
    that they stay on the volume in world space."""
    import vtk

    scene = slicer.vtkMRMLScene()
    volume = _load_xray(scene, tmp_path)
    transform = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(transform)
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 40.0)
    transform.SetMatrixTransformToParent(shift)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    logic = msm.ModelSelectorLogic(scene)
    segmentation, curve = logic.applyModels(volume, ["dx-chest-lungs", "dx-chest-landmarks"])
    curves = _markups(scene)
    assert curve in curves and len(curves) > 1  # one curve per structure
    for node in [segmentation, *curves]:
        assert node.GetTransformNodeID() == transform.GetID(), node.GetName()
    # without a parent transform, none is set
    other = _load_xray(scene, tmp_path)
    (plain,) = logic.applyModels(other, ["dx-chest-lungs"])
    assert plain.GetTransformNodeID() is None


def test_repeated_landmark_runs_give_unique_curve_names(tmp_path):
    scene = slicer.vtkMRMLScene()
    volume = _load_xray(scene, tmp_path)
    logic = msm.ModelSelectorLogic(scene)
    logic.applyModels(volume, ["dx-chest-landmarks"])
    first = [c.GetName() for c in _markups(scene)]
    assert len(first) > 1 and all(name.startswith("dx-chest-landmarks ") for name in first), first
    logic.applyModels(volume, ["dx-chest-landmarks"])
    names = [c.GetName() for c in _markups(scene)]
    assert names[: len(first)] == first  # the first run's curves keep their names
    assert len(names) == 2 * len(first) and len(set(names)) == len(names), names


def test_removing_the_volume_mid_run_takes_back_curves_with_their_display_nodes(tmp_path):
    """The volume goes while the second landmark model runs: the first model's curves go, and with them their
    display nodes (MRML leaves those behind when only the data node is removed)."""
    scene = slicer.vtkMRMLScene()
    volume = _load_xray(scene, tmp_path)
    job = msm.ModelSelectorLogic(scene).startApplyModels(volume, ["dx-chest-landmarks"] * 2)
    deadline = time.monotonic() + 120
    while not job.result:  # the first model's curves are attached, the second model starts next
        assert not job.poll() and time.monotonic() < deadline
        time.sleep(0.05)
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsDisplayNode") > 1
    scene.RemoveNode(volume)
    with pytest.raises(msm.ModelSelectorCancelled, match="input volume was removed"):
        while not job.poll():
            time.sleep(0.05)
    for cls in ("vtkMRMLMarkupsNode", "vtkMRMLMarkupsDisplayNode", "vtkMRMLMarkupsStorageNode"):
        assert scene.GetNumberOfNodesByClass(cls) == 0, cls


def test_every_model_row_has_one_cell_per_column():
    """The widget makes ``len(MODEL_COLUMNS)`` columns: a row with more cells would spill into the next one,
    and the held-out figure (or "demonstration") would never show."""
    ui = ET.parse(MODULE_DIR / "Resources" / "UI" / "ModelSelector.ui")
    table = next(w for w in ui.iter("widget") if w.get("name") == "resultsTableWidget")
    headers = [c.find("property/string").text for c in table.iter("column")]
    assert headers == list(presentation.MODEL_COLUMNS)
    listed = [dict(m, task=m.get("task_type", ""), score=None, fits=None)
              for m in msm.ModelSelectorLogic().listModels()]  # fmt: skip
    ranked = [{"name": "a", "score": 0.9, "fits": True, "held_out": {"metric": "Dice", "value": 0.88, "cases": 19}},
              {"name": "b", "score": 0.1, "fits": False, "demonstration": True}]  # fmt: skip
    rows = presentation.modelRows(listed + ranked)
    assert rows and all(len(r.cells) == len(presentation.MODEL_COLUMNS) for r in rows)
    quality = presentation.MODEL_COLUMNS.index("Held-out (cases)")
    assert [r.cells[quality] for r in rows[-2:]] == ["Dice 0.88 (19)", "-, demonstration"]
