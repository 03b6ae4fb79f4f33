"""Model Selector: find the models of a MONAI model zoo that apply to the loaded image, and apply them.

Follows the conventions of SlicerMONAIAuto3DSeg: a thin widget, a logic usable from the Python console,
and all heavy work (selection, inference) in a separate Python process running
``python -m ModelSelectorLib ...`` so that Slicer stays responsive and a run can be cancelled.

The logic only needs MRML (``slicer-core`` is enough), so it can be imported and tested without the Slicer
application or Qt; the GUI pieces are imported only when available.
"""

import os
import shutil
import sys
import tempfile
from typing import Any, Callable, Optional

import slicer

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
if MODULE_DIR not in sys.path:  # the support package beside this file
    sys.path.insert(0, MODULE_DIR)

from ModelSelectorSupport.dependencies import installDependencies, missingDependencies  # noqa: E402
from ModelSelectorSupport.headless import (  # noqa: E402
    HAVE_SLICER_APP,
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
    VTKObservationMixin,
    parameterNodeWrapper,
    qt,
    vtk,
)
from ModelSelectorSupport.jobs import (  # noqa: E402
    ApplyJob,
    FindJob,
    Job,
    ModelSelectorCancelled,
    ModelSelectorProcessError,
)
from ModelSelectorSupport.markups import readOtherMarkups  # noqa: E402
from ModelSelectorSupport.selftest import make_test_volume, make_tiny_zoo, vtk_matrix_to_list  # noqa: E402

NO_FIT_MESSAGE = "No model in the zoo fits this image"
#
# ModelSelector
#


class ModelSelector(ScriptedLoadableModule):
    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        if parent is None:
            return
        self.parent.title = "Model Selector"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["ModelSelector contributors"]
        self.parent.helpText = """
Find the models of a MONAI model zoo that apply to the selected volume and apply them.
<ol>
<li>Select the input volume and click <b>Find models</b>: the zoo's models are ranked by how well they fit the
image, with their task, modality, body region and score. When none fits, the module says so; you can
still tick a model and apply it on purpose.</li>
<li>Tick models and click <b>Apply selected</b>: each model runs in a separate process (CPU or GPU), with a
progress bar and a Cancel button, and its result appears as a segmentation node with named, coloured
segments and standard terminology.</li>
</ol>
From the Python console: <code>logic = slicer.modules.modelselector.widgetRepresentation().self().logic</code>
or <code>ModelSelector.ModelSelectorLogic()</code>, then <code>logic.findModels(volumeNode)</code> and
<code>logic.applyModels(volumeNode, ["ModelName"])</code>.
"""
        self.parent.acknowledgementText = """
Built on <a href="https://monai.io">MONAI</a> and follows the conventions of the SlicerMONAIAuto3DSeg
extension (work in a separate process, dependencies installed on first use).
"""


#
# Parameter node
#

if HAVE_SLICER_APP:

    @parameterNodeWrapper
    class ModelSelectorParameterNode:
        """inputVolume: the image to find models for; device: "cpu" or "cuda"; fitThreshold: minimum score."""

        inputVolume: slicer.vtkMRMLScalarVolumeNode
        zooPath: str = ""
        device: str = "cpu"
        fitThreshold: float = 0.5


#
# ModelSelectorWidget
#


class ModelSelectorWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: collects the inputs, starts jobs of the logic and polls them with a QTimer."""

    RESULT_COLUMNS = ["Model", "Task", "Modality", "Region", "Score", "Fits"]

    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[ModelSelectorLogic] = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job: Optional[Job] = None
        self._models: list[dict[str, Any]] = []
        self._dependenciesChecked = False
        self._onDone: Callable[[Any], None] = lambda result: None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ModelSelector.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = ModelSelectorLogic()

        self.ui.deviceComboBox.clear()
        self.ui.deviceComboBox.addItem("CPU", "cpu")
        self.ui.deviceComboBox.addItem("GPU", "cuda")
        self.ui.resultsTableWidget.setColumnCount(len(self.RESULT_COLUMNS))
        self.ui.resultsTableWidget.setHorizontalHeaderLabels(self.RESULT_COLUMNS)
        self.ui.resultsTableWidget.horizontalHeader().setStretchLastSection(True)
        self.ui.progressBar.setVisible(False)
        self.ui.cancelButton.setEnabled(False)
        self.ui.zooPathLineEdit.currentPath = self.logic.defaultZooPath()

        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self._pollJob)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.findModelsButton.connect("clicked(bool)", self.onFindModels)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.listZooButton.connect("clicked(bool)", self.onListZoo)
        self.ui.zooPathLineEdit.connect("currentPathChanged(QString)", self.onZooPathChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.resultsTableWidget.connect(
            "itemChanged(QTableWidgetItem*)", lambda item: self._updateButtons()
        )

        self.initializeParameterNode()
        self._updateButtons()

    def cleanup(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self._job.cleanup()
            self._job = None
        if getattr(self, "_timer", None) is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller: Any, event: Any) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller: Any, event: Any) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # --- parameter node ---------------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.setParameterNode(ModelSelectorParameterNode(self.logic.getParameterNode()))
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first
        if self._parameterNode.zooPath:
            self.ui.zooPathLineEdit.currentPath = self._parameterNode.zooPath
        index = self.ui.deviceComboBox.findData(self._parameterNode.device)
        self.ui.deviceComboBox.setCurrentIndex(max(index, 0))

    def setParameterNode(self, inputParameterNode: Any) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._updateButtons()

    def onZooPathChanged(self, path: str) -> None:
        if self._parameterNode:
            self._parameterNode.zooPath = path

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "cpu"

    # --- state --------------------------------------------------------------------------------------------
    def _updateButtons(self, caller: Any = None, event: Any = None) -> None:
        busy = self._job is not None
        hasInput = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.findModelsButton.setEnabled(hasInput and not busy)
        self.ui.applyButton.setEnabled(hasInput and not busy and bool(self.checkedModels()))
        self.ui.cancelButton.setEnabled(busy)

    def _setStatus(self, text: str) -> None:
        self.ui.statusLabel.setText(text)
        slicer.util.showStatusMessage(text, 3000)

    def _zooPath(self) -> str:
        return self.ui.zooPathLineEdit.currentPath or self.logic.defaultZooPath()

    def ensureDependencies(self) -> bool:
        """On first use, check the Python packages the library needs and offer to install the missing ones."""
        if self._dependenciesChecked:
            return True
        missing = self.logic.missingDependencies()
        if missing:
            names = ", ".join(name for name, _ in missing)
            if not slicer.util.confirmOkCancelDisplay(
                f"Model Selector needs these Python packages: {names}.\nInstall them now? This can take minutes.",
                "Missing Python packages",
            ):
                self._setStatus(f"Missing Python packages: {names}")
                return False
            with slicer.util.WaitCursor():
                self.logic.installDependencies(missing)
        self._dependenciesChecked = True
        return True

    # --- find ---------------------------------------------------------------------------------------------
    def onFindModels(self) -> None:
        if not self.ensureDependencies():
            return
        volumeNode = self._parameterNode.inputVolume
        try:
            job = self.logic.startFindModels(volumeNode, self._zooPath())
        except Exception as e:
            slicer.util.errorDisplay(f"Could not find models: {e}")
            return
        self._startJob(job, "Finding models...", self._onFindDone)

    def _onFindDone(self, result: Any) -> None:
        models = self.logic.markFits(result.get("models", []), self._parameterNode.fitThreshold)
        self._models = models
        self.showModels(models)
        if not any(m.get("fits") for m in models):
            self._setStatus(NO_FIT_MESSAGE + " (you can still tick a model and apply it).")
        else:
            self._setStatus(
                f"{sum(1 for m in models if m.get('fits'))} of {len(models)} models fit this image."
            )

    def onListZoo(self) -> None:
        if not self.ensureDependencies():
            return
        try:
            models = self.logic.listModels(self._zooPath())
        except Exception as e:
            slicer.util.errorDisplay(f"Could not read the zoo: {e}")
            return
        self._models = [dict(m, task=m.get("task_type", ""), score=None, fits=None) for m in models]
        self.showModels(self._models)
        self._setStatus(f"{len(models)} models in the zoo (not ranked: click Find models to rank them).")

    def showModels(self, models: list[dict[str, Any]]) -> None:
        table = self.ui.resultsTableWidget
        table.blockSignals(True)
        table.setRowCount(len(models))
        for row, m in enumerate(models):
            score = m.get("score")
            fits = m.get("fits")
            values = [
                m.get("name", ""),
                m.get("task", m.get("task_type", "")),
                m.get("modality", ""),
                m.get("body_region", ""),
                "" if score is None else f"{float(score):.3f}",
                "" if fits is None else ("yes" if fits else "no"),
            ]
            for col, value in enumerate(values):
                item = qt.QTableWidgetItem(str(value))
                if col == 0:
                    item.setFlags(qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsEnabled | qt.Qt.ItemIsSelectable)
                    item.setCheckState(qt.Qt.Checked if fits and row == 0 else qt.Qt.Unchecked)
                if m.get("reasons"):
                    item.setToolTip("\n".join(str(r) for r in m["reasons"]))
                else:
                    item.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsSelectable)
                table.setItem(row, col, item)
        table.resizeColumnsToContents()
        table.blockSignals(False)
        self._updateButtons()

    def checkedModels(self) -> list[str]:
        table = self.ui.resultsTableWidget
        names = []
        for row in range(table.rowCount):
            item = table.item(row, 0)
            if item is not None and item.checkState() == qt.Qt.Checked:
                names.append(item.text())
        return names

    # --- apply --------------------------------------------------------------------------------------------
    def onApply(self) -> None:
        if not self.ensureDependencies():
            return
        models = self.checkedModels()
        if not models:
            return
        try:
            job = self.logic.startApplyModels(
                self._parameterNode.inputVolume,
                models,
                self._zooPath(),
                device=self._parameterNode.device,
                progressCallback=self._onProgress,
            )
        except Exception as e:
            slicer.util.errorDisplay(f"Could not apply models: {e}")
            return
        self._startJob(job, f"Applying {', '.join(models)}...", self._onApplyDone)

    def _onApplyDone(self, segmentationNodes: Any) -> None:
        names = ", ".join(node.GetName() for node in segmentationNodes)
        self._setStatus(f"Done: {names}")
        for node in segmentationNodes:
            if hasattr(node, "CreateClosedSurfaceRepresentation"):  # segmentations get a 3D surface
                node.CreateClosedSurfaceRepresentation()
        if segmentationNodes:
            slicer.util.setSliceViewerLayers(background=self._parameterNode.inputVolume)

    # --- job polling --------------------------------------------------------------------------------------
    def _startJob(self, job: "Job", text: str, onDone: Callable[[Any], None]) -> None:
        self._job = job
        self._onDone = onDone
        self.ui.progressBar.setVisible(True)
        self.ui.progressBar.setValue(0)
        self._setStatus(text)
        self._updateButtons()
        self._timer.start()

    def _onProgress(self, fraction: float, text: str) -> None:
        self.ui.progressBar.setValue(int(round(100 * fraction)))
        if text:
            self.ui.statusLabel.setText(text)

    def _pollJob(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        try:
            done = job.poll()
        except ModelSelectorCancelled:
            self._finishJob()
            self._setStatus("Cancelled.")
            return
        except Exception as e:
            self._finishJob()
            self._setStatus(f"Failed: {e}")
            slicer.util.errorDisplay(str(e), detailedText=getattr(job, "log", ""))
            return
        if done:
            self._finishJob()
            self._onDone(job.result)

    def _finishJob(self) -> None:
        self._timer.stop()
        self._job = None
        self.ui.progressBar.setVisible(False)
        self._updateButtons()

    def onCancel(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self._setStatus("Cancelling...")


#
# ModelSelectorLogic
#


class ModelSelectorLogic(ScriptedLoadableModuleLogic):
    """Everything the module does, usable from the Python console and from tests (MRML only).

    The heavy work runs in ``python -m ModelSelectorLib`` subprocesses; this class writes the input
    volume to a temporary NRRD file, runs the command, and loads its result back into the scene.
    """

    def __init__(self, scene: Any = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._scene = scene
        self.lastFindResult: Optional[dict[str, Any]] = None

    # --- environment ------------------------------------------------------------------------------------
    def scene(self, node: Any = None) -> Any:
        if node is not None and node.GetScene() is not None:
            return node.GetScene()
        if self._scene is not None:
            return self._scene
        return getattr(slicer, "mrmlScene", None)

    @staticmethod
    def libraryPaths() -> list[str]:
        """Folders that hold ``ModelSelectorLib``: beside this file (installed extension) or one up (source)."""
        paths = []
        for folder in (MODULE_DIR, os.path.dirname(MODULE_DIR)):
            if os.path.isdir(os.path.join(folder, "ModelSelectorLib")):
                paths.append(folder)
        return paths

    @classmethod
    def _ensureImportable(cls) -> None:
        for folder in cls.libraryPaths():
            if folder not in sys.path:
                sys.path.insert(0, folder)

    @staticmethod
    def pythonExecutable() -> str:
        """``PythonSlicer`` inside Slicer (Slicer's Python with its environment), else this interpreter."""
        if hasattr(slicer, "app"):
            for folder in (os.path.dirname(sys.executable), None):
                found = shutil.which("PythonSlicer", path=folder)
                if found:
                    return found
        return sys.executable

    def processEnvironment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["MODELSELECTOR_PROGRESS"] = "lines"
        env["PYTHONUNBUFFERED"] = "1"
        paths = self.libraryPaths() + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    def defaultZooPath(self) -> str:
        """The library's default zoo (``ModelSelectorLib.resources``: the bundled starter zoo, wherever this
        installation keeps it, or ``$MODELSELECTOR_ZOO``)."""
        self._ensureImportable()
        from ModelSelectorLib.resources import default_zoo_path

        return str(default_zoo_path())

    # --- dependencies -----------------------------------------------------------------------------------
    missingDependencies = staticmethod(missingDependencies)
    installDependencies = staticmethod(installDependencies)

    # --- zoo ----------------------------------------------------------------------------------------------
    def listModels(self, zooPath: Optional[str] = None) -> list[dict[str, Any]]:
        """The zoo's catalog: one dict per model (name, version, task_type, modality, body_region, labels)."""
        self._ensureImportable()
        from ModelSelectorLib.zoo import Zoo

        return Zoo(zooPath or self.defaultZooPath()).list()

    def taskTypes(self, zooPath: Optional[str] = None) -> dict[str, str]:
        """Model name -> task type of every model in the zoo."""
        return {m["name"]: m.get("task_type", "") for m in self.listModels(zooPath)}

    def modelCard(self, name: str, zooPath: Optional[str] = None) -> Any:
        self._ensureImportable()
        from ModelSelectorLib.zoo import Zoo

        return Zoo(zooPath or self.defaultZooPath()).card(name)

    # --- files --------------------------------------------------------------------------------------------
    def writeVolume(self, volumeNode: Any, path: str) -> str:
        """Write ``volumeNode`` (with its geometry) to ``path`` through a volume archetype storage node."""
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise ValueError("select an input volume that holds an image")
        storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storageNode.SetFileName(path)
        storageNode.SetUseCompression(False)
        if not storageNode.WriteData(volumeNode):
            raise OSError(f"could not write volume '{volumeNode.GetName()}' to {path}")
        return path

    def _readNewNode(
        self, node: Any, storageNode: Any, path: str, name: str, what: str, referenceVolumeNode: Any
    ) -> Any:
        """Add ``node`` (named ``name``) to the input's scene and read ``path`` into it with ``storageNode``."""
        scene = self.scene(referenceVolumeNode)
        node.SetName(scene.GenerateUniqueName(name) if scene is not None else name)
        if scene is not None:
            scene.AddNode(node)
        storageNode.SetFileName(path)
        if not storageNode.ReadData(node):
            if scene is not None:
                scene.RemoveNode(node)
            raise ModelSelectorProcessError(f"could not read the {what} of model '{name}' ({path})")
        node.CreateDefaultDisplayNodes()
        return node

    def outputSpec(self, taskType: str) -> dict[str, str]:
        """File suffix and MRML node / storage node classes of a ``taskType`` model's result (the task's
        runtime in ``ModelSelectorLib.models`` says)."""
        self._ensureImportable()
        from ModelSelectorLib.models import output_spec

        return output_spec(taskType)

    def loadResult(self, path: str, name: str, taskType: str, referenceVolumeNode: Any = None) -> Any:
        """Load a model's result file into a new node named ``name`` beside ``referenceVolumeNode``: a
        segmentation node for a ``.seg.nrrd``, a markups node for a ``.mrk.json``, as the task's runtime says."""
        spec = self.outputSpec(taskType)
        node = self._readNewNode(getattr(slicer, spec["node_class"])(), getattr(slicer, spec["storage_class"])(),
                                 path, name, "result", referenceVolumeNode)  # fmt: skip
        others = readOtherMarkups(path, node)  # a set of curves: one markups node per curve of the file
        if referenceVolumeNode is not None:
            if hasattr(node, "SetReferenceImageGeometryParameterFromVolumeNode"):  # keep the input's grid
                node.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
                node.SetNodeReferenceID("referenceImageGeometryRef", referenceVolumeNode.GetID())
            for n in [node, *others]:
                self._placeBeside(n, referenceVolumeNode)
        return node

    @staticmethod
    def _placeBeside(node: Any, referenceNode: Any) -> None:
        scene = node.GetScene()
        if scene is None:
            return
        try:
            shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        except Exception:
            return
        if shNode is None:
            return
        refItem = shNode.GetItemByDataNode(referenceNode)
        if not refItem:
            return
        parent = shNode.GetItemParent(refItem)
        item = shNode.GetItemByDataNode(node)
        if not item:  # no subject hierarchy plugins (MRML without the application): add the item ourselves
            shNode.CreateItem(parent, node)
        elif parent:
            shNode.SetItemParent(item, parent)

    # --- find -----------------------------------------------------------------------------------------------
    @staticmethod
    def markFits(models: list[dict[str, Any]], threshold: Optional[float] = None) -> list[dict[str, Any]]:
        """Copies of ``models`` whose ``fits`` also requires ``score >= threshold`` when one is given."""
        out = []
        for m in models:
            m = dict(m)
            fits = bool(m.get("fits"))
            if threshold is not None and m.get("score") is not None:
                fits = fits and float(m["score"]) >= float(threshold)
            m["fits"] = fits
            out.append(m)
        return out

    def startFindModels(
        self, volumeNode: Any, zooPath: Optional[str] = None, progressCallback: Any = None
    ) -> "Job":
        return FindJob(
            self, volumeNode, str(zooPath or self.defaultZooPath()), progressCallback=progressCallback
        )

    def findModels(
        self,
        volumeNode: Any,
        zooPath: Optional[str] = None,
        threshold: Optional[float] = None,
        progressCallback: Optional[Callable[[float, str], None]] = None,
        cancelEvent: Any = None,
    ) -> list[dict[str, Any]]:
        """Rank the zoo's models for ``volumeNode`` (``modelselector select --json``).

        Returns the ranked list of dicts (``name``, ``version``, ``task``, ``modality``, ``body_region``,
        ``score``, ``fits``); the whole answer (with the overall ``fits``) is kept in ``lastFindResult``.
        An empty list or no ``fits`` means that no model in the zoo fits the image.
        """
        job = self.startFindModels(volumeNode, zooPath, progressCallback)
        result = job.wait(cancelEvent)
        self.lastFindResult = result
        return self.markFits(result.get("models", []), threshold)

    # --- apply ----------------------------------------------------------------------------------------------
    @staticmethod
    def modelNames(models: Any) -> list[str]:
        if isinstance(models, (str, dict)):
            models = [models]
        names = []
        for m in models:
            name = m.get("name") if isinstance(m, dict) else m
            if not name:
                raise ValueError(f"not a model name: {m!r}")
            names.append(str(name))
        return names

    def startApplyModels(
        self,
        volumeNode: Any,
        models: Any,
        zooPath: Optional[str] = None,
        device: str = "cpu",
        progressCallback: Optional[Callable[[float, str], None]] = None,
    ) -> "Job":
        names = self.modelNames(models)
        return ApplyJob(self, volumeNode, names, str(zooPath or self.defaultZooPath()), device,
                         progressCallback=progressCallback)  # fmt: skip

    def applyModels(
        self,
        volumeNode: Any,
        models: Any,
        zooPath: Optional[str] = None,
        device: str = "cpu",
        progressCallback: Optional[Callable[[float, str], None]] = None,
        cancelEvent: Any = None,
    ) -> list[Any]:
        """Apply zoo models (names, or dicts with ``"name"``) to ``volumeNode``; return the new nodes: a
        segmentation node per segmentation model, a markups point list per landmark model.

        Each model runs in ``python -m ModelSelectorLib apply``; ``progressCallback(fraction, text)`` gets the
        overall progress; setting ``cancelEvent`` terminates the process and raises
        :class:`ModelSelectorCancelled`. Failures raise :class:`ModelSelectorProcessError` with the process's
        one-line message. Nodes already loaded stay in the scene when a later model fails.
        """
        job = self.startApplyModels(volumeNode, models, zooPath, device, progressCallback)
        return job.wait(cancelEvent)


#
# ModelSelectorTest
#


class ModelSelectorTest(ScriptedLoadableModuleTest):
    """Self-test: a tiny zoo with an untrained network, applied to a synthetic oblique volume."""

    def setUp(self) -> None:
        if HAVE_SLICER_APP:
            slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_ApplyTinyModel()

    def test_ApplyTinyModel(self) -> None:
        import numpy as np

        self.delayDisplay("Building a tiny zoo")
        ModelSelectorLogic._ensureImportable()
        tempDir = tempfile.mkdtemp(prefix="ModelSelectorTest-")
        try:
            zooPath = make_tiny_zoo(tempDir)
            scene = slicer.mrmlScene if HAVE_SLICER_APP else slicer.vtkMRMLScene()
            volumeNode = make_test_volume(scene, np.random.default_rng(0))
            logic = ModelSelectorLogic(scene)
            models = logic.listModels(zooPath)
            self.assertEqual([m["name"] for m in models], ["TinyTest"])
            self.delayDisplay("Applying the model")
            progress = []
            nodes = logic.applyModels(
                volumeNode, models, zooPath, progressCallback=lambda f, t: progress.append(f)
            )
            self.assertEqual(len(nodes), 1)
            segmentation = nodes[0].GetSegmentation()
            card = logic.modelCard("TinyTest", zooPath)
            names = [
                segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())
            ]
            self.assertEqual(names, [lb["name"] for lb in card.labels])
            for i, label in enumerate(card.labels):
                segment = segmentation.GetNthSegment(i)
                for a, b in zip(segment.GetColor(), label["color"]):
                    self.assertAlmostEqual(a, b, places=3)
                self.assertIn(label["terminology"]["type"][1], segment.GetTerminology())
            geometry = segmentation.GetConversionParameter("Reference image geometry")
            ijkToRas = vtk_matrix_to_list(volumeNode)
            values = [float(v) for v in geometry.split(";")[:16]]
            for a, b in zip(values, ijkToRas):
                self.assertAlmostEqual(a, b, places=4)
            self.assertTrue(progress and progress[-1] == 1.0)
            self.delayDisplay("Test passed")
        finally:
            shutil.rmtree(tempDir, ignore_errors=True)
