"""Child processes of the Model Selector module: start one with its console hidden, read its output lines on
a thread, and end it together with every process it started.

Processes start through ``slicer.util.launchConsoleProcess`` (the console window stays hidden on Windows;
standard output and standard error arrive merged, line by line). Inside Slicer the command is ``PythonSlicer``,
a launcher that runs the real Python as its own child: ending the launcher alone would leave the work running,
so :func:`killProcessTree` ends the whole tree, deepest processes first. Nothing here needs Qt or the Slicer
application.
"""

from __future__ import annotations

import locale
import os
import queue
import signal
import subprocess
import threading
import time
from typing import Callable, Optional

import slicer

from .headless import HAVE_SLICER_APP

#: starts ``args`` with ``environment`` added to the current one; stdout and stderr merged into one text pipe
Launcher = Callable[[list, dict], subprocess.Popen]


def launchProcess(args: list[str], environment: dict[str, str]) -> subprocess.Popen:
    """Start ``args`` through ``slicer.util.launchConsoleProcess`` (hidden console on Windows, output merged
    into ``stdout``). Inside the application the child starts from Slicer's startup environment, as the
    launcher expects; ``environment`` is added either way."""
    environment = dict(environment)
    # the child writes in the encoding this process decodes the pipe with (text mode uses the locale's)
    environment.setdefault("PYTHONIOENCODING", f"{locale.getpreferredencoding(False)}:replace")
    return slicer.util.launchConsoleProcess(
        list(args), useStartupEnvironment=HAVE_SLICER_APP, updateEnvironment=environment
    )


def _parentTable() -> dict[int, int]:
    """Process id -> parent process id of every process of this machine (POSIX)."""
    table: dict[int, int] = {}
    if os.path.isdir("/proc"):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                    stat = f.read()
            except OSError:  # ended meanwhile
                continue
            # "pid (command) state ppid ...": the command may hold spaces and parentheses
            table[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        return table
    listing = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True,
                             timeout=30, check=False).stdout  # fmt: skip
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            table[int(fields[0])] = int(fields[1])
    return table


def descendantPids(pid: int) -> list[int]:
    """Ids of the processes that ``pid`` started, and that those started, deepest first (POSIX)."""
    children: dict[int, list[int]] = {}
    for child, parent in _parentTable().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    frontier = [pid]
    while frontier:
        level = [c for p in frontier for c in children.get(p, []) if c not in found and c != pid]
        found.extend(level)
        frontier = level
    return found[::-1]


def isAlive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie, ended but not yet collected by its parent, counts as ended)."""
    if os.name == "nt":
        listing = subprocess.run(["tasklist", "/FI", f"PID eq {pid}", "/NH"], capture_output=True, text=True,
                                 creationflags=subprocess.CREATE_NO_WINDOW, check=False).stdout  # fmt: skip
        return str(pid) in listing
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (macOS): the signal test above is all there is


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def killProcessTree(process: subprocess.Popen, timeout: float = 10.0) -> list[int]:
    """End ``process`` and every process it started; return the ids of the processes that were ended.

    POSIX: SIGTERM to the whole tree (the ``modelselector`` command then stops cleanly and leaves nothing
    half-written), SIGKILL to whatever still runs after ``timeout`` seconds. Windows: ``taskkill /T /F``.
    """
    if os.name == "nt":
        subprocess.run(["taskkill", "/PID", str(process.pid), "/T", "/F"], capture_output=True,
                       creationflags=subprocess.CREATE_NO_WINDOW, check=False)  # fmt: skip
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return [process.pid]
    # list the tree before anything ends: an orphan's parent becomes another process and it drops out of it
    tree = descendantPids(process.pid) + [process.pid]
    _signal(tree, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (process.poll() is None or any(isAlive(p) for p in tree[:-1])):
        time.sleep(0.05)
    _signal([p for p in tree if isAlive(p)], signal.SIGKILL)
    process.wait()
    return tree


class ChildProcess:
    """One command running in a child process; its output lines are collected on a thread.

    Call :meth:`newLines` and :meth:`poll` from the main thread (a timer, or a loop); :meth:`kill` ends the
    process with all it started.
    """

    #: seconds that :meth:`poll` waits for the output pipe to close after the process ended
    OUTPUT_GRACE = 5.0

    def __init__(self, args: list[str], environment: dict[str, str], launcher: Optional[Launcher] = None):
        self.args = list(args)
        self.process = (launcher or launchProcess)(self.args, dict(environment))
        self._lines: queue.Queue = queue.Queue()
        self._endedAt: Optional[float] = None
        self._reader = threading.Thread(target=self._read, name="ModelSelector process output", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        stream = self.process.stdout
        while True:
            try:
                line = stream.readline()
            except UnicodeDecodeError:  # a line in another encoding: skip it, as slicer.util does
                continue
            except (OSError, ValueError):  # the pipe was closed by kill()
                return
            if not line:
                return
            self._lines.put(line.rstrip("\r\n"))

    def newLines(self) -> list[str]:
        """The output lines that arrived since the last call."""
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    def poll(self) -> Optional[int]:
        """The exit status once the process has ended and its last output has been read, else None; without
        blocking. A process it started that outlives it and keeps the output pipe open is waited for at most
        :attr:`OUTPUT_GRACE` seconds of polls."""
        code = self.process.poll()
        if code is None:
            return None
        self._reader.join(timeout=0.01)
        if self._reader.is_alive():
            if self._endedAt is None:
                self._endedAt = time.monotonic()
            if time.monotonic() - self._endedAt < self.OUTPUT_GRACE:
                return None
        return code

    def kill(self, timeout: float = 10.0) -> list[int]:
        """End the process and every process it started (see :func:`killProcessTree`)."""
        ended = killProcessTree(self.process, timeout) if self.process.poll() is None else []
        self._reader.join(timeout=2.0)  # the pipe ends with the tree
        if self.process.stdout is not None and not self._reader.is_alive():  # never under a blocked read
            self.process.stdout.close()
        return ended
