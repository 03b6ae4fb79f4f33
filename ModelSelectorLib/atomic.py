"""Atomic file and folder writes: write to a temporary sibling, then rename over the target; and the write
lock that lets one process at a time change a zoo or an index.

An interrupted write (crash, Ctrl-C, full disk) therefore leaves the previous version intact and never a
half-written file. ``os.replace`` is atomic on POSIX and Windows when source and target share a folder.
What a killed writer leaves behind (``.tmp-*`` files, ``.NAME.*.tmp`` folders) is removed by the next
writer of that folder, under its lock (:func:`remove_leftovers`); in any folder, the next :func:`atomic_path`
write removes the temporary files of writers on this machine that are gone (:func:`remove_dead_temps`); a folder it had moved aside but not yet
replaced (killed between :func:`atomic_dir`'s two renames) is put back by the next writer of it.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

from .errors import LockedError, OutputError

PathLike = Union[str, "os.PathLike[str]"]

#: the lock file a writer holds in the folder it changes (a zoo, an index folder)
LOCK_NAME = ".lock"
#: environment variable: seconds a writer waits for another writer of the same folder (default 600)
LOCK_TIMEOUT_ENV = "MODELSELECTOR_LOCK_TIMEOUT"
_LOCKS: dict[str, Any] = {}  # one lock object per lock file, so that a process may re-enter its own lock
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def atomic_path(target: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it to ``target``, on error delete it.

    The temporary name ends with ``target``'s extension (``.seg.nrrd``), so writers that choose their format
    from it (ITK, pynrrd) still do, and is short, so a target whose name is near the file system's limit can be
    written. It names this machine and process (:func:`_temp_prefix`), so that the temporary files of killed
    writers (``kill -9``, the out-of-memory killer), which no ``except`` deletes, are removed by the next write
    into the same folder (:func:`remove_dead_temps`). ``suffix`` is accepted for clarity at call sites and not
    needed.
    """
    target = Path(os.path.abspath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(target.parent)
    extension = "".join(target.suffixes[-2:])
    extension = extension if len(extension) <= 24 else target.suffix[:24]
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(), suffix=extension, dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; a zoo or report is meant to be readable by others
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


#: the temporary file names of :func:`atomic_path`: ``.tmp-<machine>-<pid>-<mkstemp's 8 characters><extension>``
_TEMP_NAME = re.compile(
    r"\.tmp-(?P<machine>[0-9a-f]{8})-(?P<pid>[1-9][0-9]{0,9})-[a-z0-9_]{8}(\..*)?", re.DOTALL
)


@functools.lru_cache(maxsize=1)  # read from /proc once, not at every write
def _machine_tag() -> str:
    """8 hex digits that tell this machine, boot and process-id namespace (a container) from others that may write
    into a shared folder, where the same process id names another process."""
    parts = [socket.gethostname()]
    for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):  # Linux; elsewhere the host name
        with contextlib.suppress(OSError):
            parts.append(os.readlink(source) if source.endswith("/pid") else Path(source).read_text().strip())
    return hashlib.sha1(" ".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _temp_prefix() -> str:
    """The start of this process's temporary file names: ``.tmp-<machine>-<pid>-``."""
    return f".tmp-{_machine_tag()}-{os.getpid()}-"


def remove_dead_temps(folder: PathLike) -> list[Path]:
    """Delete the temporary files that :func:`atomic_path` writers on this machine left in ``folder`` (not below
    it) when they were killed: only names of its pattern, of this machine, whose process is gone. The files of
    live processes (this one's other threads included), of other machines and any other file stay.
    Returns the paths removed."""
    removed: list[Path] = []
    if os.name != "posix":  # on Windows os.kill(pid, 0) sends CTRL_C_EVENT rather than probing the process
        return removed
    machine = _machine_tag()
    with contextlib.suppress(OSError):
        with os.scandir(folder) as entries:
            for entry in entries:
                found = _TEMP_NAME.fullmatch(entry.name) if entry.name.startswith(".tmp-") else None
                if found is None or found["machine"] != machine or not entry.is_file(follow_symlinks=False):
                    continue
                pid = int(found["pid"])
                if pid == os.getpid() or pid >= 2**31 or _alive(pid):  # a larger number is no process id
                    continue
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def write_text(target: PathLike, text: str) -> None:
    """Write ``text`` to ``target`` atomically (UTF-8)."""
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(target: PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON to ``target`` atomically."""
    write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_figure(fig: Any, target: PathLike, dpi: Any = None) -> Path:
    """Save the matplotlib figure ``fig`` to ``target`` as PNG atomically, then close it. Returns the path."""
    import matplotlib.pyplot as plt

    path = Path(target)
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png", **({} if dpi is None else {"dpi": dpi}))
    plt.close(fig)
    return path


@contextlib.contextmanager
def atomic_dir(target: PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` as a whole.

    If ``target`` exists it is moved aside first and deleted only after the new folder is in place, so an
    interruption leaves either the old or the new folder, never a mix (a writer killed between the two renames
    leaves the old one moved aside; the next write of ``target`` or :func:`remove_leftovers` puts it back).
    """
    target = Path(os.path.abspath(target))  # "." has no name to put a sibling beside
    target.parent.mkdir(parents=True, exist_ok=True)
    restore_moved_aside(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes an owner-only folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def restore_moved_aside(target: PathLike, locked: bool = False) -> bool:
    """Put back the folder that a killed :func:`atomic_dir` had moved aside (``.NAME.old-PID``) when ``target``
    is missing and process PID is gone (``locked``: the caller holds the folder's :func:`writer_lock`, so no
    live writer can be between the renames, whatever process now has that number). Returns whether a folder
    was put back."""
    target = Path(target)
    if target.exists() or target.is_symlink():
        return False
    for old in sorted(target.parent.glob(f".{glob.escape(target.name)}.old-*")):
        pid = old.name.rsplit("-", 1)[-1]
        if old.is_dir() and not old.is_symlink() and pid.isdigit() and (locked or not _alive(int(pid))):
            os.replace(old, target)
            return True
    return False


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not inside an atomic_dir of the same target
    if os.name != "posix":  # Windows' os.kill(pid, 0) sends CTRL_C_EVENT rather than probing
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


def lock_timeout() -> float:
    """``$MODELSELECTOR_LOCK_TIMEOUT`` in seconds (default 600).

    Raises:
        OutputError: it is not a number of seconds of at least 0.
    """
    text = os.environ.get(LOCK_TIMEOUT_ENV, "600")
    try:
        timeout = float(text)
    except ValueError:
        timeout = float("nan")
    if not timeout >= 0 or timeout == float("inf"):
        raise OutputError(
            f"${LOCK_TIMEOUT_ENV}={text!r} is not a number of seconds; set it to e.g. 600, or unset it."
        )
    return timeout


@contextlib.contextmanager
def writer_lock(folder: PathLike) -> Iterator[None]:
    """Hold the write lock of ``folder`` (the file ``folder/.lock``) while the block runs.

    Writers of the same folder take turns: one that finds the lock held says so on stderr and waits, up to
    ``$MODELSELECTOR_LOCK_TIMEOUT`` seconds (default 600). The operating system releases the lock of a
    process that dies, so a killed writer never leaves the folder locked. The lock is re-entrant within a
    process.

    Raises:
        LockedError: the lock was not free in time. OutputError: ``folder`` cannot be written (read-only), or
            ``$MODELSELECTOR_LOCK_TIMEOUT`` is not a number of seconds.
    """
    import filelock

    folder = Path(folder)
    timeout = lock_timeout()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        key = str(folder.resolve() / LOCK_NAME)
        with _LOCKS_GUARD:
            lock = _LOCKS.setdefault(key, filelock.FileLock(key))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            print(f"modelselector: waiting for another process that is changing {folder} ...", file=sys.stderr,
                  flush=True)  # fmt: skip
            try:
                lock.acquire(timeout=timeout)
            except filelock.Timeout:
                raise LockedError(
                    f"{folder}: another process has been changing it for more than {timeout:g} s (it holds "
                    f"{folder / LOCK_NAME}); wait until it has finished, then try again."
                ) from None
    except OSError as e:  # read-only: waiting would not help, so not a LockedError
        raise OutputError(f"{folder}: cannot be changed ({e.strerror or e}); check its permissions.") from e
    try:
        yield
    finally:
        lock.release()


def remove_leftovers(folder: PathLike) -> list[Path]:
    """Delete what interrupted atomic writes left in ``folder`` (not below it): ``.tmp-*`` files of
    :func:`atomic_path` and the ``.NAME.*.tmp`` / ``.NAME.old-*`` folders of :func:`atomic_dir`.

    A moved-aside folder whose target is missing is put back instead (:func:`restore_moved_aside`).
    Call it only while holding :func:`writer_lock` of ``folder``: then no live writer owns such a file.
    Returns the paths removed.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in sorted(folder.glob(".*.old-*")):
        if p.is_dir() and not p.is_symlink():
            restore_moved_aside(folder / p.name[1:].rsplit(".old-", 1)[0], locked=True)
    for p in folder.iterdir():
        name = p.name
        if p.is_file() and not p.is_symlink() and name.startswith(".tmp-"):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
        elif (
            p.is_dir()
            and not p.is_symlink()
            and name.startswith(".")
            and (name.endswith(".tmp") or ".old-" in name)
        ):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
