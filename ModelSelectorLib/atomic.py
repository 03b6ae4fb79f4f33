"""Atomic file and folder writes: write to a temporary sibling, then rename over the target.

An interrupted write (crash, Ctrl-C, full disk) therefore leaves the previous version intact and never a
half-written file. ``os.replace`` is atomic on POSIX and Windows when source and target share a folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_path(target: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it to ``target``, on error delete it.

    The temporary name ends with ``target``'s own name, so writers that choose their format from the
    extension (ITK, pynrrd) still do. ``suffix`` is accepted for clarity at call sites and not needed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + target.name, dir=target.parent)
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
    interruption leaves either the old or the new folder, never a mix.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
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
