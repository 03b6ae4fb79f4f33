"""Model Selector: find the models of a MONAI model zoo that apply to the loaded image, and apply them.

Follows the conventions of SlicerMONAIAuto3DSeg: a thin widget, a logic usable from the Python console,
and all heavy work (selection, inference) in a separate Python process running
``python -m ModelSelectorLib ...`` so that Slicer stays responsive and a run can be cancelled.

The logic only needs MRML (``slicer-core`` is enough), so it can be imported and tested without the Slicer
application or Qt; the GUI pieces are imported only when available.
"""

import importlib.util
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from typing import Any, Callable, Optional

import slicer

try:  # the Slicer application (GUI or --no-main-window)
    import ctk
    import qt
    import vtk
    from slicer.parameterNodeWrapper import parameterNodeWrapper
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
    from slicer.util import VTKObservationMixin

    HAVE_SLICER_APP = True
except ImportError:  # only MRML (e.g. ``pip install slicer-core``): the logic still works
    HAVE_SLICER_APP = False
    ctk = qt = vtk = None  # type: ignore[assignment]
    parameterNodeWrapper = None  # type: ignore[assignment]

    class ScriptedLoadableModule:  # type: ignore[no-redef]
        def __init__(self, parent: Any = None) -> None:
            self.parent = parent

    class ScriptedLoadableModuleWidget:  # type: ignore[no-redef]
        def __init__(self, parent: Any = None) -> None:
            self.parent = parent

    class ScriptedLoadableModuleLogic:  # type: ignore[no-redef]
        def __init__(self, parent: Any = None) -> None:
            self.parent = parent

    class ScriptedLoadableModuleTest(unittest.TestCase):  # type: ignore[no-redef]
        def delayDisplay(self, message: str, msec: int = 0) -> None:
            logging.info(message)

    class VTKObservationMixin:  # type: ignore[no-redef]
        pass


MODULE_DIR = os.path.dirname(os.path.abspath(__file__))

#: Python packages the library needs at run time: (import name, pip requirement)
DEPENDENCIES = [
    ("torch", "torch"),
    ("monai", "monai>=1.3"),
    ("SimpleITK", "SimpleITK"),
    ("slicerio", "slicerio"),
    ("hnswlib", "hnswlib"),
]

NO_FIT_MESSAGE = "No model in the zoo fits this image"
ERROR_PREFIX = "modelselector: error: "


class ModelSelectorProcessError(RuntimeError):
    """The ``ModelSelectorLib`` process failed; the message is its one-line error."""

    def __init__(self, message: str, returncode: Optional[int] = None) -> None:
        super().__init__(message)
        self.returncode = returncode


class ModelSelectorCancelled(ModelSelectorProcessError):
    """The user cancelled the run; nothing was added to the scene."""


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
        self._job: Optional[_Job] = None
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
            node.CreateClosedSurfaceRepresentation()
        if segmentationNodes:
            slicer.util.setSliceViewerLayers(background=self._parameterNode.inputVolume)

    # --- job polling --------------------------------------------------------------------------------------
    def _startJob(self, job: "_Job", text: str, onDone: Callable[[Any], None]) -> None:
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
# Subprocess jobs (shared by the blocking logic calls and the widget's QTimer polling)
#


def _pump_lines(stream: Any, lines: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line.rstrip("\r\n"))
    stream.close()


class _Job:
    """One or more ``python -m ModelSelectorLib`` processes run one after the other.

    Call :meth:`poll` repeatedly (from a QTimer, or a loop): it forwards progress, returns True when all the
    work is done (``result`` then holds the answer) and raises :class:`ModelSelectorProcessError` on failure.
    Temporary files are removed when the job ends in any way.
    """

    def __init__(
        self, logic: "ModelSelectorLogic", progressCallback: Optional[Callable[[float, str], None]] = None
    ):
        self.logic = logic
        self.progressCallback = progressCallback
        self.tempDir = tempfile.mkdtemp(prefix="ModelSelector-")
        self.process: Optional[subprocess.Popen] = None
        self.stdout = ""
        self.log = ""
        self.result: Any = None
        self._errors: list[str] = []
        self._lines: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._stdoutParts: list[str] = []
        self._cancelled = False
        self._finished = False
        self._step = 0
        self._steps = 1

    # to be provided by subclasses
    def _nextCommand(self) -> Optional[list[str]]:
        raise NotImplementedError

    def _stepDone(self) -> None:
        raise NotImplementedError

    def _start(self, args: list[str]) -> None:
        command = [self.logic.pythonExecutable(), "-m", "ModelSelectorLib", *args]
        logging.info("ModelSelector: running %s", " ".join(command))
        self.log += "$ " + " ".join(command) + "\n"
        self._errors = []
        self._stdoutParts = []
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=self.logic.processEnvironment(),
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        err = threading.Thread(target=_pump_lines, args=(self.process.stderr, self._lines), daemon=True)
        out = threading.Thread(target=self._readStdout, args=(self.process.stdout,), daemon=True)
        self._threads = [err, out]
        for t in self._threads:
            t.start()

    def _readStdout(self, stream: Any) -> None:
        self._stdoutParts.append(stream.read())
        stream.close()

    def _drain(self) -> None:
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            if line.startswith("PROGRESS "):
                parts = line.split(" ", 2)
                try:
                    fraction = float(parts[1])
                except (IndexError, ValueError):
                    continue
                text = parts[2] if len(parts) > 2 else ""
                if self.progressCallback is not None:
                    self.progressCallback((self._step + min(max(fraction, 0.0), 1.0)) / self._steps, text)
            elif line.strip():
                self.log += line + "\n"
                self._errors.append(line)

    def errorMessage(self) -> str:
        """The process's one-line error (``modelselector: error: ...`` without the prefix)."""
        for line in reversed(self._errors):
            if line.startswith(ERROR_PREFIX):
                return line[len(ERROR_PREFIX) :].strip()
        for line in reversed(self._errors):  # e.g. a Python traceback: its last line names the exception
            if line.strip():
                return line.strip()
        return "the ModelSelectorLib process failed without a message"

    def poll(self) -> bool:
        if self._finished:
            return True
        try:
            if self._cancelled:
                raise ModelSelectorCancelled("cancelled by the user")
            if self.process is None:
                command = self._nextCommand()
                if command is None:
                    self._finished = True
                    self.cleanup()
                    return True
                self._start(command)
                return False
            returncode = self.process.poll()
            if returncode is None:
                self._drain()
                return False
            for t in self._threads:
                t.join(timeout=5)
            self._drain()
            self.stdout = "".join(self._stdoutParts)
            self.process = None
            if self._cancelled:
                raise ModelSelectorCancelled("cancelled by the user")
            if returncode != 0:
                raise ModelSelectorProcessError(self.errorMessage(), returncode)
            self._stepDone()
            self._step += 1
            if self.progressCallback is not None:
                self.progressCallback(self._step / self._steps, "")
            return False
        except BaseException:
            self._finished = True
            self._kill()
            self.cleanup()
            raise

    def wait(self, cancelEvent: Any = None, interval: float = 0.05) -> Any:
        """Run to the end in this thread (cancel when ``cancelEvent.is_set()``); return the result."""
        try:
            while not self.poll():
                if cancelEvent is not None and cancelEvent.is_set():
                    self.cancel()
                time.sleep(interval)
        finally:
            self.cleanup()
        return self.result

    def cancel(self) -> None:
        self._cancelled = True
        self._kill()

    def _kill(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()  # SIGTERM: the command cancels cleanly and leaves nothing half-written
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def cleanup(self) -> None:
        shutil.rmtree(self.tempDir, ignore_errors=True)


class _FindJob(_Job):
    def __init__(self, logic: "ModelSelectorLogic", volumeNode: Any, zooPath: str, **kw: Any) -> None:
        super().__init__(logic, **kw)
        try:
            self.imagePath = logic.writeVolume(volumeNode, os.path.join(self.tempDir, "input.nrrd"))
        except BaseException:
            self.cleanup()
            raise
        self.zooPath = zooPath
        self._issued = False

    def _nextCommand(self) -> Optional[list[str]]:
        if self._issued:
            return None
        self._issued = True
        # every model (an expert may apply one that does not fit), with the reasons for the table's tooltips
        return ["select", self.imagePath, "--zoo", self.zooPath, "--json", "--reasons", "--top", "1000"]

    def errorMessage(self) -> str:
        message = super().errorMessage()
        if "invalid choice: 'select'" in message or "invalid choice: 'select'" in self.log:
            return (
                "this version of ModelSelectorLib has no 'select' command yet, so models cannot be ranked; "
                "list the zoo and apply a model by name instead"
            )
        return message

    def _stepDone(self) -> None:
        try:
            self.result = json.loads(self.stdout)
        except ValueError as e:
            raise ModelSelectorProcessError(f"could not read the answer of 'select --json': {e}") from e


class _ApplyJob(_Job):
    def __init__(
        self,
        logic: "ModelSelectorLogic",
        volumeNode: Any,
        modelNames: list[str],
        zooPath: str,
        device: str = "cpu",
        **kw: Any,
    ) -> None:
        super().__init__(logic, **kw)
        self.volumeNode = volumeNode
        self.modelNames = list(modelNames)
        self.zooPath = zooPath
        self.device = device
        self._steps = max(len(self.modelNames), 1)
        self.result = []
        self.taskTypes = logic.taskTypes(zooPath)
        try:
            self.imagePath = logic.writeVolume(volumeNode, os.path.join(self.tempDir, "input.nrrd"))
        except BaseException:
            self.cleanup()
            raise

    def _isLandmarks(self, index: int) -> bool:
        return self.taskTypes.get(self.modelNames[index]) == "landmarks"

    def _outPath(self, index: int) -> str:
        suffix = ".mrk.json" if self._isLandmarks(index) else ".seg.nrrd"
        return os.path.join(self.tempDir, f"output_{index}{suffix}")

    def _nextCommand(self) -> Optional[list[str]]:
        if self._step >= len(self.modelNames):
            return None
        name = self.modelNames[self._step]
        return ["apply", "--zoo", self.zooPath, "--model", name, "--device", self.device,
                self.imagePath, "--out", self._outPath(self._step)]  # fmt: skip

    def _stepDone(self) -> None:
        name = self.modelNames[self._step]
        if self._isLandmarks(self._step):
            node = self.logic.loadMarkups(self._outPath(self._step), name, self.volumeNode)
        else:
            node = self.logic.loadSegmentation(self._outPath(self._step), name, self.volumeNode)
        self.result.append(node)


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
        self._ensureImportable()
        try:
            from ModelSelectorLib import zoo
        except ImportError:  # dependencies not installed yet: same rule as zoo.default_zoo_path()
            if os.environ.get("MODELSELECTOR_ZOO"):
                return os.path.expanduser(os.environ["MODELSELECTOR_ZOO"])
            folders = self.libraryPaths() or [MODULE_DIR]
            return os.path.join(
                os.path.dirname(os.path.join(folders[0], "ModelSelectorLib")), "Resources", "zoo"
            )
        return str(zoo.default_zoo_path())

    # --- dependencies -----------------------------------------------------------------------------------
    @staticmethod
    def missingDependencies() -> list[tuple]:
        """The (import name, pip requirement) pairs of :data:`DEPENDENCIES` that cannot be imported."""
        return [(name, req) for name, req in DEPENDENCIES if importlib.util.find_spec(name) is None]

    def installDependencies(self, missing: Optional[list[tuple]] = None) -> None:
        """Install missing packages with ``slicer.util.pip_install`` (torch through PyTorchUtils when present)."""
        missing = self.missingDependencies() if missing is None else missing
        for name, requirement in missing:
            if name == "torch":
                try:
                    import PyTorchUtils  # the PyTorch extension picks the right CUDA build

                    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
                    if not torchLogic.torchInstalled():
                        torchLogic.installTorch(askConfirmation=False)
                    continue
                except ImportError:
                    pass
            slicer.util.pip_install(requirement)

    # --- zoo ----------------------------------------------------------------------------------------------
    def listModels(self, zooPath: Optional[str] = None) -> list[dict[str, Any]]:
        """The zoo's catalog: one dict per model (name, version, task_type, modality, body_region, labels)."""
        self._ensureImportable()
        from ModelSelectorLib.zoo import Zoo

        return Zoo(zooPath or self.defaultZooPath()).list()

    def taskTypes(self, zooPath: Optional[str] = None) -> dict[str, str]:
        """Model name -> task type (``segmentation``, ``landmarks``, ...) of every model in the zoo."""
        return {m["name"]: m.get("task_type", "segmentation") for m in self.listModels(zooPath)}

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

    def loadSegmentation(self, path: str, name: str, referenceVolumeNode: Any = None) -> Any:
        """Load a ``.seg.nrrd`` into a new segmentation node named ``name`` beside ``referenceVolumeNode``."""
        segmentationNode = self._readNewNode(slicer.vtkMRMLSegmentationNode(), slicer.vtkMRMLSegmentationStorageNode(),
                                             path, name, "result", referenceVolumeNode)  # fmt: skip
        if referenceVolumeNode is not None:
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
            segmentationNode.SetNodeReferenceID("referenceImageGeometryRef", referenceVolumeNode.GetID())
            self._placeBeside(segmentationNode, referenceVolumeNode)
        return segmentationNode

    def loadMarkups(self, path: str, name: str, referenceVolumeNode: Any = None) -> Any:
        """Load a ``.mrk.json`` point list into a new markups node named ``name`` beside the input volume."""
        markupsNode = self._readNewNode(slicer.vtkMRMLMarkupsFiducialNode(), slicer.vtkMRMLMarkupsJsonStorageNode(),
                                        path, name, "landmarks", referenceVolumeNode)  # fmt: skip
        if referenceVolumeNode is not None:
            self._placeBeside(markupsNode, referenceVolumeNode)
        return markupsNode

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
    ) -> "_Job":
        return _FindJob(
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
    ) -> "_Job":
        names = self.modelNames(models)
        return _ApplyJob(self, volumeNode, names, str(zooPath or self.defaultZooPath()), device,
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


def vtk_matrix_to_list(volumeNode: Any) -> list[float]:
    """The IJK-to-RAS matrix of ``volumeNode``, row by row."""
    import vtk as _vtk

    matrix = _vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return [matrix.GetElement(r, c) for r in range(4) for c in range(4)]


def make_test_volume(scene: Any, rng: Any, name: str = "TestVolume") -> Any:
    """A small scalar volume with anisotropic spacing, a non-zero origin and an oblique direction."""
    import math

    import numpy as np
    import vtk as _vtk

    array = rng.normal(0.0, 20.0, (10, 16, 20)).astype(np.float32)  # (k, j, i)
    array[3:7, 4:12, 5:15] += 200.0
    image = _vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.AllocateScalars(_vtk.VTK_FLOAT, 1)
    from vtk.util import numpy_support

    image.GetPointData().GetScalars().DeepCopy(numpy_support.numpy_to_vtk(array.ravel(), deep=True))
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    node.SetSpacing(0.8, 1.1, 2.5)
    node.SetOrigin(-30.5, 12.25, 40.0)
    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    directions = _vtk.vtkMatrix4x4()
    for r, row in enumerate(((c, -s, 0.0), (s, c, 0.0), (0.0, 0.0, 1.0))):
        for col, value in enumerate(row):
            directions.SetElement(r, col, value)
    node.SetIJKToRASDirectionMatrix(directions)
    node.SetAndObserveImageData(image)
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    return node


def make_tiny_zoo(folder: str, name: str = "TinyTest") -> str:
    """A zoo with one untrained, tiny 3D UNet segmentation bundle (2 labels); returns the zoo path."""
    import torch

    from ModelSelectorLib.bundle import ModelCard, save_bundle
    from ModelSelectorLib.zoo import Zoo

    torch.manual_seed(0)
    network_def = {
        "_target_": "monai.networks.nets.UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "channels": [4, 8],
        "strides": [2],
        "num_res_units": 0,
    }
    from monai.networks.nets import UNet

    network = UNet(**{k: v for k, v in network_def.items() if k != "_target_"})
    card = ModelCard(
        name=name,
        version="0.1.0",
        task_type="segmentation",
        modality="CT",
        body_region="ABDOMEN",
        labels=[
            {"value": 1, "name": "Liver", "color": [0.86, 0.31, 0.24],
             "terminology": {"category": ["SCT", "123037004", "Anatomical Structure"],
                             "type": ["SCT", "10200004", "Liver"]}},
            {"value": 2, "name": "Spleen", "color": [0.27, 0.56, 0.84],
             "terminology": {"category": ["SCT", "123037004", "Anatomical Structure"],
                             "type": ["SCT", "78961009", "Spleen"]}},
        ],
        target_spacing=[2.0, 2.0, 2.5],
        intensity={"mode": "ct", "a_min": -200.0, "a_max": 300.0},
        roi_size=[16, 16, 16],
        training_data="none (untrained test network)",
        synthetic=True,
        seed=0,
    )  # fmt: skip
    bundleDir = os.path.join(folder, "bundle_" + name)
    save_bundle(bundleDir, card, network_def, network.state_dict())
    zooPath = os.path.join(folder, "zoo")
    zoo = Zoo.create(zooPath)
    zoo.add(bundleDir)
    return zooPath
