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
from typing import Any, Callable, Optional, Union

import slicer

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
if MODULE_DIR not in sys.path:  # the support package beside this file
    sys.path.insert(0, MODULE_DIR)

from ModelSelectorSupport import application, environment, nodes, preferences, presentation  # noqa: E402
from ModelSelectorSupport.dependencies import (  # noqa: E402
    MODEL_RUN_PACKAGES,
    cudaAvailable,
    installDependencies,
    missingDependencies,
)
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
from ModelSelectorSupport.selftest import make_test_volume, make_tiny_zoo, vtk_matrix_to_list  # noqa: E402

#: node classes offered as input: scalar volumes and RGB images (PNG and JPEG files load as vector volumes)
INPUT_VOLUME_CLASSES = ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode")
#: what the self-test says when it cannot run models (e.g. on an extension build machine without torch)
NO_MODEL_RUNS_MESSAGE = (
    "Skipping the model runs of the self-test: {names} not installed (see the module's help)"
)
# --- ModelSelector ---------------------------------------------------------------------------------------


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
<li>Tick models and click <b>Apply selected</b>: each model runs in a separate process (on the CPU, or on the GPU
chosen under <i>Zoo and settings</i> when torch can use one), with a progress bar and a Cancel button. A segmentation model's result appears as a segmentation
node with named, coloured segments and standard terminology; a landmark model's as markups closed curves, one
per structure (lungs, heart, clavicles).</li>
</ol>
Results stay with the volume they were computed from: closing the scene or deleting the volume cancels a run.
Models run with torch and MONAI; torch comes from the PyTorch extension, the other packages are offered for
installation on first use. <b>List zoo models</b> shows the zoo without ranking; its rows can be ticked too.
From the Python console: <code>logic = ModelSelector.ModelSelectorLogic()</code>, then
<code>logic.findModels(volumeNode)</code> and <code>logic.applyModels(volumeNode, ["ModelName"])</code>.
"""
        self.parent.acknowledgementText = """
Built on <a href="https://monai.io">MONAI</a> and follows the conventions of the SlicerMONAIAuto3DSeg
extension (work in a separate process, dependencies installed on first use).
"""
        if HAVE_SLICER_APP:  # terminology and sample data, once the modules they go to are there
            slicer.app.connect("startupCompleted()", application.onStartupCompleted)


# --- Parameter node --------------------------------------------------------------------------------------

if HAVE_SLICER_APP:

    @parameterNodeWrapper
    class ModelSelectorParameterNode:
        """inputVolume: the image to find models for (scalar or RGB); device: "cpu" or "cuda"; fitThreshold:
        minimum score; surfaces: 3D surfaces of segmentation results ("auto": small results only)."""

        inputVolume: Union[tuple(getattr(slicer, c) for c in INPUT_VOLUME_CLASSES) + (None,)]
        zooPath: str = ""
        device: str = "cpu"
        fitThreshold: float = 0.5
        surfaces: str = presentation.SURFACES_AUTO


# --- ModelSelectorWidget ---------------------------------------------------------------------------------


class ModelSelectorWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: collects the inputs, starts jobs of the logic and polls them with a QTimer."""

    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[ModelSelectorLogic] = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job: Optional[Job] = None
        self._models: list[dict[str, Any]] = []
        self._dependenciesChecked = False
        self._onDone: Callable[[Job], None] = lambda job: None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ModelSelector.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = ModelSelectorLogic()

        self.ui.surfacesComboBox.clear()
        for text, value in presentation.SURFACE_CHOICES:
            self.ui.surfacesComboBox.addItem(text, value)
        self.ui.resultsTableWidget.setColumnCount(len(presentation.MODEL_COLUMNS))
        self.ui.resultsTableWidget.setHorizontalHeaderLabels(list(presentation.MODEL_COLUMNS))
        self.ui.resultsTableWidget.horizontalHeader().setStretchLastSection(True)
        self.ui.progressBar.setVisible(False)
        self.ui.cancelButton.setEnabled(False)
        self.ui.zooPathLineEdit.currentPath = preferences.savedZooPath() or self.logic.defaultZooPath()
        self._refreshDevices()

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
        self.ui.surfacesComboBox.connect("currentIndexChanged(int)", self.onSurfacesChanged)
        self.ui.resultsTableWidget.connect(
            "itemChanged(QTableWidgetItem*)", lambda item: self._updateButtons()
        )

        self.initializeParameterNode()
        self._updateButtons()

    def cleanup(self) -> None:
        if self._job is not None:
            self._job.cancel()
            try:
                self._job.poll()  # ends the job: observers and temporary files go
            except ModelSelectorProcessError:
                pass
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
        # a running job cancels itself (it observes its scene); the listed models belong to the old image
        self.setParameterNode(None)
        self.showModels([])

    def onSceneEndClose(self, caller: Any, event: Any) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # --- parameter node ---------------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.setParameterNode(ModelSelectorParameterNode(self.logic.getParameterNode()))
        if not self._parameterNode.inputVolume:
            # every scalar volume class and its subclasses; keep the offered
            volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            offered = [v for v in volumes if v.GetClassName() in INPUT_VOLUME_CLASSES]
            if offered:
                self._parameterNode.inputVolume = offered[0]
        if self._parameterNode.zooPath:
            self.ui.zooPathLineEdit.currentPath = self._parameterNode.zooPath
        if self._parameterNode.device == "cpu":  # the default: a scene without a choice takes the user's
            self._parameterNode.device = preferences.savedDevice()
        self._showChoice(self.ui.deviceComboBox, "device")
        self._showChoice(self.ui.surfacesComboBox, "surfaces")

    def setParameterNode(self, inputParameterNode: Any) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._updateButtons()

    def _parameter(self, name: str, default: Any) -> Any:
        """A parameter's value, or ``default`` while there is no parameter node (e.g. the scene is closing)."""
        return getattr(self._parameterNode, name) if self._parameterNode else default

    def onZooPathChanged(self, path: str) -> None:
        if self._parameterNode:
            self._parameterNode.zooPath = path
        preferences.saveZooPath(path)

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "cpu"
        if index >= 0:  # not while the choices are refilled
            preferences.saveDevice(self.ui.deviceComboBox.itemData(index) or "cpu")

    def onSurfacesChanged(self, index: int) -> None:
        if self._parameterNode:
            self._parameterNode.surfaces = (
                self.ui.surfacesComboBox.itemData(index) or presentation.SURFACES_AUTO
            )

    def _showChoice(self, combo: Any, name: str) -> None:
        """Show parameter ``name`` in ``combo``; a value that ``combo`` does not offer becomes its first item."""
        index = max(combo.findData(self._parameter(name, None)), 0)
        combo.setCurrentIndex(index)
        if self._parameterNode:
            setattr(self._parameterNode, name, combo.itemData(index))

    def _refreshDevices(self) -> None:
        """Offer the GPU only when the installed torch can use one."""
        self.ui.deviceComboBox.clear()
        for text, value in self.logic.deviceChoices():
            self.ui.deviceComboBox.addItem(text, value)
        self._showChoice(self.ui.deviceComboBox, "device")

    # --- state --------------------------------------------------------------------------------------------
    def _updateButtons(self, caller: Any = None, event: Any = None) -> None:
        busy = self._job is not None
        hasInput = bool(self._parameter("inputVolume", None))
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
                f"Model Selector needs these Python packages: {names}.\nInstall them now (torch through the "
                "PyTorch extension)? This can take minutes.",
                "Missing Python packages",
            ):
                self._setStatus(f"Missing Python packages: {names}")
                return False
            try:
                with slicer.util.WaitCursor():
                    self.logic.installDependencies(missing)
            except Exception as e:
                slicer.util.errorDisplay(f"Could not install the Python packages: {e}")
                return False
            self._refreshDevices()
        self._dependenciesChecked = True
        return True

    # --- find ---------------------------------------------------------------------------------------------
    def onFindModels(self) -> None:
        volumeNode = self._parameter("inputVolume", None)
        if volumeNode is None or not self.ensureDependencies():
            return
        try:
            threshold = self._parameter("fitThreshold", None)
            job = self.logic.startFindModels(volumeNode, self._zooPath(), self._onProgress, threshold)
        except Exception as e:
            slicer.util.errorDisplay(f"Could not find models: {e}")
            return
        self._startJob(job, "Finding models...", self._onFindDone)

    def _onFindDone(self, job: "Job") -> None:
        models = self.logic.markFits(job.result.get("models", []), job.threshold)  # the run's threshold
        self._models = models
        self.showModels(models)
        self._setStatus(presentation.findStatus(models))

    def onListZoo(self) -> None:
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
        rows = presentation.modelRows(models)
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for col, text in enumerate(row.cells):
                item = qt.QTableWidgetItem(text)
                if col == 0:  # every row can be ticked, ranked or not
                    item.setFlags(qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsEnabled | qt.Qt.ItemIsSelectable)
                    item.setCheckState(qt.Qt.Checked if row.checked else qt.Qt.Unchecked)
                else:
                    item.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsSelectable)
                if row.tooltip:
                    item.setToolTip(row.tooltip)
                table.setItem(r, col, item)
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
        volumeNode = self._parameter("inputVolume", None)
        models = self.checkedModels()
        if volumeNode is None or not models or not self.ensureDependencies():
            return
        try:
            job = self.logic.startApplyModels(volumeNode, models, self._zooPath(),
                                              device=self._parameter("device", "cpu"),
                                              progressCallback=self._onProgress)  # fmt: skip
        except Exception as e:
            slicer.util.errorDisplay(f"Could not apply models: {e}")
            return
        self._startJob(job, f"Applying {', '.join(models)}...", self._onApplyDone)

    def _onApplyDone(self, job: "Job") -> None:
        nodes = job.result or []
        try:
            self.logic.showResults(
                nodes, job.volumeNode, self._parameter("surfaces", presentation.SURFACES_AUTO)
            )
        finally:
            self._setStatus(f"Done: {', '.join(node.GetName() for node in nodes)}")
        if job.warnings:  # e.g. a whole scan given to a model trained on crops: say so before it is read
            slicer.util.warningDisplay("\n\n".join(job.warnings), windowTitle="Model Selector")
        if nodes and job.volumeNode.GetScene() is slicer.mrmlScene:
            slicer.util.setSliceViewerLayers(background=job.volumeNode, fit=True)

    # --- job polling --------------------------------------------------------------------------------------
    def _startJob(self, job: "Job", text: str, onDone: Callable[["Job"], None]) -> None:
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
        except ModelSelectorCancelled as e:
            self._finishJob()
            self._setStatus(str(e)[:1].upper() + str(e)[1:] + ".")
            return
        except Exception as e:
            self._finishJob()
            self._setStatus(f"Failed: {e}")
            slicer.util.errorDisplay(str(e), detailedText=job.log)
            return
        if done:
            self._finishJob()
            self._onDone(job)

    def _finishJob(self) -> None:
        self._timer.stop()
        self._job = None
        self.ui.progressBar.setVisible(False)
        self._updateButtons()

    def onCancel(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self._setStatus("Cancelling...")


# --- ModelSelectorLogic ----------------------------------------------------------------------------------


class ModelSelectorLogic(ScriptedLoadableModuleLogic):
    """Everything the module does, usable from the Python console and from tests (MRML only).

    The heavy work runs in ``python -m ModelSelectorLib`` subprocesses; this class writes the input
    volume to a temporary NRRD file, runs the command, and loads its result back beside that volume.
    """

    def __init__(self, scene: Any = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._scene = scene
        self.lastFindResult: Optional[dict[str, Any]] = None

    # --- environment ------------------------------------------------------------------------------------
    def scene(self) -> Any:
        """The scene given to the constructor, else the application's."""
        return self._scene if self._scene is not None else getattr(slicer, "mrmlScene", None)

    libraryPaths = staticmethod(environment.libraryPaths)
    _ensureImportable = staticmethod(environment.ensureImportable)
    pythonExecutable = staticmethod(environment.pythonExecutable)

    def processEnvironment(self) -> dict[str, str]:
        """What the child process's environment adds: PROGRESS lines, unbuffered output, the library's path."""
        return environment.processEnvironment()

    def defaultZooPath(self) -> str:
        """The library's default zoo (``ModelSelectorLib.resources``: the bundled starter zoo, wherever this
        installation keeps it, or ``$MODELSELECTOR_ZOO``)."""
        self._ensureImportable()
        from ModelSelectorLib.resources import default_zoo_path

        return str(default_zoo_path())

    # --- dependencies and devices -------------------------------------------------------------------------
    missingDependencies = staticmethod(missingDependencies)
    installDependencies = staticmethod(installDependencies)
    cudaAvailable = staticmethod(cudaAvailable)

    def deviceChoices(self) -> list[tuple[str, str]]:
        """(label, torch device) pairs to offer: the CPU, and the GPU only when torch can use one."""
        return [("CPU", "cpu")] + ([("GPU (CUDA)", "cuda")] if self.cudaAvailable() else [])

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
    writeVolume = staticmethod(nodes.writeVolume)

    def outputSpec(self, taskType: str) -> dict[str, str]:
        """File suffix and MRML node / storage node classes of a ``taskType`` model's result (the task's
        runtime in ``ModelSelectorLib.models`` says)."""
        self._ensureImportable()
        from ModelSelectorLib.models import output_spec

        return output_spec(taskType)

    def loadResult(self, path: str, name: str, taskType: str, referenceVolumeNode: Any) -> Any:
        """Load a model's result file into a new node named ``name`` beside ``referenceVolumeNode``, in that
        volume's scene: a segmentation node for a ``.seg.nrrd``, a markups node for a ``.mrk.json``, as the
        task's runtime says."""
        return nodes.readResult(path, name, self.outputSpec(taskType), referenceVolumeNode)

    @staticmethod
    def showResults(
        resultNodes: list[Any], volumeNode: Any, surfaces: str = presentation.SURFACES_AUTO
    ) -> list[Any]:
        """Prepare results for display: 3D surfaces of segmentations (``surfaces``: "auto" for small results
        only, "always", "never"); returns the nodes that got one."""
        return presentation.showResults(resultNodes, volumeNode, surfaces)

    # --- find -----------------------------------------------------------------------------------------------
    @staticmethod
    def markFits(models: list[dict[str, Any]], threshold: Optional[float] = None) -> list[dict[str, Any]]:
        """Copies of ``models`` whose ``fits`` also requires ``score >= threshold`` when one is given; below
        it the selection's ``answer`` (e.g. ``needs a crop``, which holds only for the image's kind) is ``no``."""
        out = []
        for m in models:
            m, score = dict(m), m.get("score")
            below = threshold is not None and score is not None and float(score) < float(threshold)
            m["fits"] = bool(m.get("fits")) and not below
            if below and "answer" in m:
                m["answer"] = "no"
            out.append(m)
        return out

    def startFindModels(self, volumeNode: Any, zooPath: Any = None, progressCallback: Any = None,
                        threshold: Optional[float] = None) -> "Job":  # fmt: skip
        """A :class:`FindJob` for ``volumeNode`` (advance it with ``poll()``); ``threshold``: the minimum
        calibrated score for a model to fit (lower or higher than the library's default, 0.5)."""
        zoo = str(zooPath or self.defaultZooPath())
        return FindJob(self, volumeNode, zoo, threshold, progressCallback=progressCallback)

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
        job = self.startFindModels(volumeNode, zooPath, progressCallback, threshold)
        result = job.wait(cancelEvent)
        self.lastFindResult = result
        return self.markFits(result.get("models", []), threshold)

    # --- apply ----------------------------------------------------------------------------------------------
    @staticmethod
    def modelNames(models: Any) -> list[str]:
        """The names in ``models`` (a name, a row of :meth:`findModels`, or a list of either); ValueError if none."""
        if isinstance(models, (str, dict)):
            models = [models]
        if not isinstance(models, (list, tuple)) or not models:
            raise ValueError(f"choose one or more models to apply (a name, a row of findModels or a list of them), "
                             f"not {models!r}")  # fmt: skip
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
        """An :class:`ApplyJob` of ``models`` on ``volumeNode`` (advance it with ``poll()``)."""
        names = self.modelNames(models)
        device = str(device).strip().lower()  # torch's device names are lower case: "CPU" means the CPU
        if device != "cpu" and not self.cudaAvailable():
            raise ValueError(
                f"device '{device}' is not available: this torch cannot use a GPU; choose the CPU"
            )
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
        segmentation node per segmentation model, a markups curve per landmark model (the first of its curves,
        one per structure; the others are added beside it).

        Each model runs in ``python -m ModelSelectorLib apply``; ``progressCallback(fraction, text)`` gets the
        overall progress; setting ``cancelEvent`` ends the process tree and raises
        :class:`ModelSelectorCancelled`. Failures raise :class:`ModelSelectorProcessError` with the process's
        one-line message. Nodes already loaded stay beside the volume when a later model fails or the user
        cancels; none stays when the volume or its scene goes away. Warnings of the processes (e.g. a volume
        several times wider than a model's training inputs) are logged; :meth:`startApplyModels`'s job keeps
        them in ``warnings``, which the widget shows when the job ends.
        """
        job = self.startApplyModels(volumeNode, models, zooPath, device, progressCallback)
        return job.wait(cancelEvent)


# --- ModelSelectorTest -----------------------------------------------------------------------------------


class ModelSelectorTest(ScriptedLoadableModuleTest):
    """Self-test: the bundled zoo is listed (no torch needed); a tiny zoo with an untrained network is applied
    to a synthetic oblique volume when torch and MONAI are installed, and skipped with a message otherwise."""

    def setUp(self) -> None:
        if HAVE_SLICER_APP:
            slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_ListBundledZoo()
        missing = missingDependencies(MODEL_RUN_PACKAGES)
        if missing:  # e.g. an extension build machine: model runs are left to machines with torch
            self.delayDisplay(NO_MODEL_RUNS_MESSAGE.format(names=", ".join(n for n, _ in missing)))
            return
        self.test_ApplyTinyModel()

    def test_ListBundledZoo(self) -> None:
        self.delayDisplay("Listing the bundled zoo")
        logic = ModelSelectorLogic()
        models = logic.listModels()
        self.assertTrue(models, "the bundled zoo lists no model")
        for m in models:
            spec = logic.outputSpec(m["task_type"])
            self.assertTrue(spec["suffix"] and hasattr(slicer, spec["node_class"]), spec)
        rows = presentation.modelRows([dict(m, score=None, fits=None) for m in models])
        self.assertEqual([r.name for r in rows], [m["name"] for m in models])

    def test_ApplyTinyModel(self) -> None:
        missing = missingDependencies(MODEL_RUN_PACKAGES)
        if missing:
            self.skipTest(NO_MODEL_RUNS_MESSAGE.format(names=", ".join(n for n, _ in missing)))
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
            resultNodes = logic.applyModels(
                volumeNode, models, zooPath, progressCallback=lambda f, t: progress.append(f)
            )
            self.assertEqual(len(resultNodes), 1)
            self.assertIs(resultNodes[0].GetScene(), scene)
            segmentation = resultNodes[0].GetSegmentation()
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
