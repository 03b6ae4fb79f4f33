"""Running ``python -m ModelSelectorLib`` commands for the Model Selector module, off the main thread.

A :class:`Job` runs one or more commands one after the other in a child process, reads its ``PROGRESS``
lines (``MODELSELECTOR_PROGRESS=lines``) and its one-line errors, and is advanced by :meth:`Job.poll`
(from the widget's QTimer, or a loop in :meth:`Job.wait`). Nothing here needs Qt or the Slicer application;
the jobs ask the module's logic to write the input volume and to load each result into the scene.
"""

import json
import logging
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any, Callable, Optional

ERROR_PREFIX = "modelselector: error: "


class ModelSelectorProcessError(RuntimeError):
    """The ``ModelSelectorLib`` process failed; the message is its one-line error."""

    def __init__(self, message: str, returncode: Optional[int] = None) -> None:
        super().__init__(message)
        self.returncode = returncode


class ModelSelectorCancelled(ModelSelectorProcessError):
    """The user cancelled the run; nothing was added to the scene."""


def pump_lines(stream: Any, lines: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line.rstrip("\r\n"))
    stream.close()


class Job:
    """One or more ``python -m ModelSelectorLib`` processes run one after the other.

    Call :meth:`poll` repeatedly (from a QTimer, or a loop): it forwards progress, returns True when all the
    work is done (``result`` then holds the answer) and raises :class:`ModelSelectorProcessError` on failure.
    Temporary files are removed when the job ends in any way.
    """

    def __init__(self, logic: Any, progressCallback: Optional[Callable[[float, str], None]] = None):
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
        err = threading.Thread(target=pump_lines, args=(self.process.stderr, self._lines), daemon=True)
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


class FindJob(Job):
    def __init__(self, logic: Any, volumeNode: Any, zooPath: str, **kw: Any) -> None:
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


class ApplyJob(Job):
    def __init__(
        self,
        logic: Any,
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
        unknown = [n for n in self.modelNames if n not in self.taskTypes]
        if unknown:
            self.cleanup()
            known = ", ".join(sorted(self.taskTypes)) or "none"
            raise ModelSelectorProcessError(
                f"no model named {', '.join(repr(n) for n in unknown)} in the zoo {zooPath}; known models: {known}"
            )
        try:
            self.imagePath = logic.writeVolume(volumeNode, os.path.join(self.tempDir, "input.nrrd"))
        except BaseException:
            self.cleanup()
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
        self.result.append(node)
