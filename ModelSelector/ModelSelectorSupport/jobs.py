"""Running ``python -m ModelSelectorLib`` commands for the Model Selector module, off the main thread.

A :class:`Job` runs one or more commands one after the other in a child process (:mod:`.processes`), reads
its ``PROGRESS`` lines (``MODELSELECTOR_PROGRESS=lines``) and its one-line errors, and is advanced by
:meth:`Job.poll` (from the widget's QTimer, or the loop of :meth:`Job.wait`).

A job is bound to the input volume node it started from and to that node's scene: closing the scene or
removing the volume cancels it (the process tree is ended, the temporary files removed) and it adds nothing
anywhere. Results are attached only to that volume node object, in its scene. Nothing here needs Qt or the
Slicer application.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from typing import Any, Callable, Optional

import vtk

from .markups import resultParts
from .processes import ChildProcess, Launcher

ERROR_PREFIX = "modelselector: error: "
WARNING_PREFIX = "modelselector: warning: "
PROGRESS_PREFIX = "PROGRESS "
USER_CANCELLED = "cancelled by the user"
SCENE_CLOSED = "cancelled: the scene was closed while the job ran; nothing was added"
VOLUME_REMOVED = "cancelled: the input volume was removed from the scene while the job ran; nothing was added"
APPLICATION_CLOSED = "cancelled: the application closed while the job ran"
#: what a signal that ended the model process usually means, and what to do
SIGNAL_CAUSES = {
    "SIGKILL": ("often the system running out of memory", "close other programs, or crop the volume to the "
                "region of interest (fewer voxels), then try again"),
    "SIGSEGV": ("a crash in native code", "try again on the CPU, or update torch and MONAI; "
                "report it if it repeats"),
}  # fmt: skip


class ModelSelectorProcessError(RuntimeError):
    """The ``ModelSelectorLib`` process failed; the message is its one-line error."""

    def __init__(self, message: str, returncode: Optional[int] = None) -> None:
        super().__init__(message)
        self.returncode = returncode


class ModelSelectorCancelled(ModelSelectorProcessError):
    """The run was cancelled (by the user, or because its scene or input volume went away)."""


def signalMessage(returncode: int) -> str:
    """The user's message for a process ended by signal ``-returncode`` (POSIX ``Popen.returncode`` < 0)."""
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = "an unknown signal"
    cause, remedy = SIGNAL_CAUSES.get(name, ("stopped from outside", "run it again"))
    return f"the model process was killed by signal {-returncode} ({name}; {cause}): {remedy}"


def removeResult(node: Any) -> None:
    """Remove result ``node`` from its scene with every node read with it (:func:`.markups.resultParts`) and
    their display and storage nodes, which MRML leaves behind when only the data node goes."""
    for n in [*resultParts(node), node]:
        scene = n.GetScene()
        if scene is None:
            continue
        companions = []
        if hasattr(n, "GetNumberOfDisplayNodes"):
            companions += [n.GetNthDisplayNode(i) for i in range(n.GetNumberOfDisplayNodes())]
        if hasattr(n, "GetNumberOfStorageNodes"):
            companions += [n.GetNthStorageNode(i) for i in range(n.GetNumberOfStorageNodes())]
        scene.RemoveNode(n)
        for companion in companions:
            if companion is not None and companion.GetScene() is scene:
                scene.RemoveNode(companion)


class Job:
    """One or more ``python -m ModelSelectorLib`` processes, run one after the other for one volume node.

    Call :meth:`poll` repeatedly (from a QTimer, or a loop): it forwards progress, returns True when all the
    work is done (``result`` then holds the answer) and raises :class:`ModelSelectorProcessError` on failure,
    :class:`ModelSelectorCancelled` after :meth:`cancel` or when the volume or its scene went away; a job that
    failed or was cancelled raises the same error at every later poll, never True. Temporary files are removed
    when the job ends in any way, and a job still running when Python exits is ended then
    (:func:`endLiveJobs`).
    """

    def __init__(
        self,
        logic: Any,
        volumeNode: Any,
        progressCallback: Optional[Callable[[float, str], None]] = None,
        launcher: Optional[Launcher] = None,
    ) -> None:
        if volumeNode is None or volumeNode.GetScene() is None:
            raise ValueError("select an input volume that is in the scene")
        if not volumeNode.IsA("vtkMRMLVolumeNode"):
            raise ValueError(
                f"'{volumeNode.GetName()}' is a {volumeNode.GetClassName()}, not a volume; select a scalar or RGB "
                "volume node (for a sequence, its proxy volume: the frame on show)"
            )
        self.logic = logic
        self.volumeNode = volumeNode
        self.scene = volumeNode.GetScene()
        self.progressCallback = progressCallback
        self.launcher = launcher
        self.tempDir = tempfile.mkdtemp(prefix="ModelSelector-")
        self.child: Optional[ChildProcess] = None
        self.output: list[str] = []
        self.log = ""
        #: the processes' warnings (e.g. a volume far wider than a model's training inputs), in order
        self.warnings: list[str] = []
        self.result: Any = None
        self.added: list[Any] = []
        self.cancelReason: Optional[str] = None
        #: why the job failed or was cancelled, raised again by every later poll
        self.error: Optional[Exception] = None
        self._observations: list[int] = []
        self._finished = False
        self._step = 0
        self._steps = 1
        self._observeScene()
        _LIVE_JOBS.add(self)

    # --- to be provided by subclasses -------------------------------------------------------------------------
    def _nextCommand(self) -> Optional[list[str]]:
        raise NotImplementedError

    def _stepDone(self) -> None:
        raise NotImplementedError

    # --- binding to the scene and the volume ----------------------------------------------------------------
    def _observeScene(self) -> None:
        @vtk.calldata_type(vtk.VTK_OBJECT)
        def onNodeRemoved(caller: Any, event: Any, node: Any) -> None:
            if node is self.volumeNode:
                self.cancel(VOLUME_REMOVED)

        def onStartClose(caller: Any, event: Any) -> None:
            self.cancel(SCENE_CLOSED)

        self._observations = [
            self.scene.AddObserver(self.scene.StartCloseEvent, onStartClose),
            self.scene.AddObserver(self.scene.NodeRemovedEvent, onNodeRemoved),
        ]

    def _forgetScene(self) -> None:
        for tag in self._observations:
            self.scene.RemoveObserver(tag)
        self._observations = []

    def isBound(self) -> bool:
        """True while the input volume node is still in the scene the job started from."""
        return self.volumeNode.GetScene() is self.scene and self.scene.IsNodePresent(self.volumeNode) != 0

    # --- the child process ---------------------------------------------------------------------------------
    def _start(self, args: list[str]) -> None:
        command = [self.logic.pythonExecutable(), "-m", "ModelSelectorLib", *args]
        logging.info("ModelSelector: running %s", " ".join(command))
        self.log += "$ " + " ".join(command) + "\n"
        self.output = []
        self.child = ChildProcess(command, self.logic.processEnvironment(), self.launcher)

    def _drain(self) -> None:
        for line in self.child.newLines() if self.child is not None else []:
            if line.startswith(PROGRESS_PREFIX):
                parts = line.split(" ", 2)
                try:
                    fraction = float(parts[1])
                except (IndexError, ValueError):
                    continue
                if not math.isfinite(fraction):  # "nan" and "inf" parse, and say nothing of the progress
                    continue
                fraction = min(max(fraction, 0.0), 1.0)
                if self.progressCallback is not None:
                    text = parts[2] if len(parts) > 2 else ""
                    self.progressCallback((self._step + fraction) / self._steps, text)
            elif line.strip():
                self.output.append(line)
                self.log += line + "\n"
                if line.startswith(WARNING_PREFIX):
                    self.warnings.append(self.userText(line[len(WARNING_PREFIX) :].strip()))
                    logging.warning("ModelSelector: %s", self.warnings[-1])

    def userText(self, text: str) -> str:
        """``text`` with the temporary input file (deleted when the job ends) named as the volume it holds."""
        path = getattr(self, "imagePath", None)
        if not path:
            return text
        label = f"volume '{self.volumeNode.GetName()}'"
        for form in sorted({path, os.path.realpath(path)}, key=len, reverse=True):
            text = text.replace(form, label)
        return text

    def errorMessage(self, returncode: Optional[int] = None) -> str:
        """The process's one-line error (``modelselector: error: ...`` without the prefix); for a process
        killed by a signal (``returncode`` < 0: the out-of-memory killer, a crash), which signal and what to do.
        A launcher (a shell, PythonSlicer) reports its child's signal N as exit status 128 + N; without an
        error line that is read as the signal too."""
        if returncode is not None and returncode < 0:
            return signalMessage(returncode)
        for line in reversed(self.output):
            if line.startswith(ERROR_PREFIX):
                return self.userText(line[len(ERROR_PREFIX) :].strip())
        if returncode is not None and 128 < returncode < 128 + 65:  # the library's codes are all below 128
            return signalMessage(128 - returncode)
        for line in reversed(self.output):  # e.g. a Python traceback: its last line names the exception
            if line.strip():
                return self.userText(line.strip())
        return "the ModelSelectorLib process failed without a message"

    def poll(self) -> bool:
        """Advance the job; True once all its work is done and its results are attached."""
        if self._finished:
            if self.error is None and self.cancelReason is not None:  # ended without a poll (endLiveJobs)
                self.error = ModelSelectorCancelled(self.cancelReason)
            if self.error is not None:
                raise self.error
            return True
        try:
            if self.cancelReason is None and not self.isBound():
                self.cancelReason = SCENE_CLOSED if self.volumeNode.GetScene() is None else VOLUME_REMOVED
            if self.cancelReason is not None:
                raise ModelSelectorCancelled(self.cancelReason)
            if self.child is None:
                command = self._nextCommand()
                if command is None:
                    self._end()
                    return True
                self._start(command)
                return False
            self._drain()
            returncode = self.child.poll()
            if returncode is None:
                return False
            self._drain()
            self.child = None
            if returncode != 0:
                raise ModelSelectorProcessError(self.errorMessage(returncode), returncode)
            self._stepDone()
            self._step += 1
            if self.progressCallback is not None:
                self.progressCallback(self._step / self._steps, "")
            return False
        except BaseException as e:
            if self.cancelReason in (SCENE_CLOSED, VOLUME_REMOVED):
                self._removeAdded()
            self.error = (
                e if isinstance(e, Exception) else ModelSelectorCancelled(self.cancelReason or USER_CANCELLED)
            )
            self._end()
            raise

    def wait(self, cancelEvent: Any = None, interval: float = 0.05) -> Any:
        """Run to the end in this thread (cancel when ``cancelEvent.is_set()``); return the result."""
        try:
            while not self.poll():
                if cancelEvent is not None and cancelEvent.is_set():
                    self.cancel()
                time.sleep(interval)
        finally:
            self._end()
        return self.result

    def cancel(self, reason: str = USER_CANCELLED) -> None:
        """Stop the job: end its process tree now; the next :meth:`poll` raises :class:`ModelSelectorCancelled`."""
        if self._finished:
            return
        if self.cancelReason is None:
            self.cancelReason = reason
        self._kill()

    def _kill(self) -> None:
        child, self.child = self.child, None
        if child is not None:
            child.kill()

    def _removeAdded(self) -> None:
        """Take back the nodes this job added (their input volume went away), with their display and storage
        nodes and, for a set of curves, every node read from the result file."""
        for node in self.added:
            removeResult(node)
        if self.added and isinstance(self.result, list):
            self.result = [n for n in self.result if all(n is not a for a in self.added)]
        self.added = []

    def _end(self) -> None:
        self._finished = True
        self._kill()
        self._forgetScene()
        self.cleanup()
        _LIVE_JOBS.discard(self)

    def cleanup(self) -> None:
        shutil.rmtree(self.tempDir, ignore_errors=True)


#: the jobs that have not ended, ended by :func:`endLiveJobs` when Python exits (held strongly: a job whose
#: caller dropped it still has a process and a temporary copy of the volume to end)
_LIVE_JOBS: set[Job] = set()


def endLiveJobs() -> None:
    """Cancel every job that has not ended: end its process tree and remove its temporary files (the input
    volume's voxels). Runs when Python exits, and when Slicer is about to quit."""
    for job in list(_LIVE_JOBS):
        job.cancel(APPLICATION_CLOSED)
        job._end()


atexit.register(endLiveJobs)


class FindJob(Job):
    """``modelselector select --json`` on the input volume; ``result`` is the answer's dict. ``threshold``: the
    minimum calibrated score for a model to fit (``--threshold``; None: the library's default)."""

    def __init__(
        self, logic: Any, volumeNode: Any, zooPath: str, threshold: Optional[float] = None, **kw: Any
    ) -> None:
        super().__init__(logic, volumeNode, **kw)
        self.zooPath = zooPath
        self.threshold = threshold
        self._issued = False
        try:
            self.imagePath = logic.writeVolume(volumeNode, os.path.join(self.tempDir, "input.nrrd"))
        except BaseException:
            self._end()
            raise

    def _nextCommand(self) -> Optional[list[str]]:
        if self._issued:
            return None
        self._issued = True
        # every model (an expert may apply one that does not fit), with the reasons for the table's tooltips
        command = ["select", self.imagePath, "--zoo", self.zooPath, "--json", "--reasons", "--top", "1000"]
        return command + ([] if self.threshold is None else ["--threshold", repr(float(self.threshold))])

    def _stepDone(self) -> None:
        # stdout and stderr arrive merged: the answer is the last line that is a JSON object
        for line in reversed(self.output):
            if line.startswith("{"):
                try:
                    self.result = json.loads(line)
                except ValueError:
                    continue
                if isinstance(self.result, dict) and "input" in self.result:  # not the deleted temporary file
                    self.result["input"] = self.userText(str(self.result["input"]))
                return
        raise ModelSelectorProcessError(
            "the answer of 'modelselector select --json' was missing or unreadable"
        )


class ApplyJob(Job):
    """``modelselector apply`` of each model in turn; ``result`` lists the nodes added beside the volume."""

    def __init__(
        self, logic: Any, volumeNode: Any, modelNames: list[str], zooPath: str, device: str = "cpu", **kw: Any
    ) -> None:
        super().__init__(logic, volumeNode, **kw)
        self.modelNames = list(modelNames)
        self.zooPath = zooPath
        self.device = device
        self._steps = max(len(self.modelNames), 1)
        self.result = []
        try:
            self.taskTypes = logic.taskTypes(zooPath)
            unknown = [n for n in self.modelNames if n not in self.taskTypes]
            if unknown:
                known = ", ".join(sorted(self.taskTypes)) or "none"
                raise ModelSelectorProcessError(
                    f"no model named {', '.join(repr(n) for n in unknown)} in the zoo {zooPath}; "
                    f"known models: {known}"
                )
            self.imagePath = logic.writeVolume(volumeNode, os.path.join(self.tempDir, "input.nrrd"))
        except BaseException:
            self._end()
            raise

    def _taskType(self, index: int) -> str:
        return self.taskTypes.get(self.modelNames[index], "")

    def _outPath(self, index: int) -> str:
        suffix = self.logic.outputSpec(self._taskType(index))["suffix"]
        return os.path.join(self.tempDir, f"output_{index}{suffix}")

    def _nextCommand(self) -> Optional[list[str]]:
        if self._step >= len(self.modelNames):
            return None
        name = self.modelNames[self._step]
        return ["apply", "--zoo", self.zooPath, "--model", name, "--device", self.device,
                self.imagePath, "--out", self._outPath(self._step)]  # fmt: skip

    def _stepDone(self) -> None:
        name = self.modelNames[self._step]
        node = self.logic.loadResult(
            self._outPath(self._step), name, self._taskType(self._step), self.volumeNode
        )
        self.added.append(node)
        self.result.append(node)
