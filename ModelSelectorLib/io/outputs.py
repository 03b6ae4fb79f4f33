"""Checks of output paths before any work starts, each answered in one line.

Every command that writes a file or a folder checks where it will write first, so that a long run never
ends in a traceback or, worse, in a silently wrong output:

- :func:`check_output_file`: a file path (not a folder, not under a file), named with the extension of the
  format that will be written (``.seg.nrrd``, ``.mrk.json``, ...), in a folder that can be written, and not
  an existing write-protected file (which would otherwise be replaced, losing its protection);
- :func:`check_output_folder`: a folder (not a file) that exists and can be written, or can be created;
- :func:`check_replaced_folder`: the same, for a folder that a command replaces as a whole: it must be empty or
  hold an earlier output of the same command.

Write protection is judged by the permission bits, so that a protected file or folder is respected even by
a user (root) whom the system would let write anyway.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable, Union

from ..errors import OutputError

PathLike = Union[str, "os.PathLike[str]"]


def _write_protected(path: Path) -> bool:
    mode = path.stat().st_mode
    return not (mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) or not os.access(path, os.W_OK)


def _check_folder_writable(folder: Path, what: str) -> None:
    """The nearest existing ancestor of ``folder`` (itself included) must be a folder that can be written."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputError(
            f"{existing}: is a file, so {folder} cannot be created there; choose another {what}."
        )
    if _write_protected(existing) or not os.access(existing, os.X_OK):
        raise OutputError(f"{existing}: the folder is write-protected (read-only); choose another {what}.")


def _nearest_existing(folder: Path) -> Path:
    """``folder`` or its nearest ancestor that exists (where a folder to be created would go)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def _name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system of ``folder`` (or its nearest existing ancestor) allows."""
    try:
        return int(os.pathconf(_nearest_existing(Path(os.path.abspath(folder))), "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # not POSIX, or not told
        return 255


def _with_suffix(name: str, suffix: str) -> str:
    """``name`` with its (possibly double) extension replaced by ``suffix``."""
    stem = name
    for ext in (".seg.nrrd", ".mrk.json", ".nii.gz", ".tar.gz"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    else:
        stem = Path(name).stem if "." in name.lstrip(".") else name
    return stem + suffix


def check_output_file(path: PathLike, suffix: str = "", what: str = "--out") -> Path:
    """Check that a file of format ``suffix`` can be written at ``path``; returns it as a :class:`Path`.

    Args:
        path: the output file.
        suffix: the extension the written format has (e.g. ``".seg.nrrd"``; ask
            :func:`ModelSelectorLib.models.output_spec`); empty to accept any.
        what: how the user named the path (an option such as ``--out``), for the message.

    Raises:
        OutputError: ``path`` is a folder (or ends with a separator), has another extension, lies under a
            file or in a write-protected folder, or is an existing write-protected file.
    """
    text = os.fspath(path)
    p = Path(text)
    limit = _name_max(p.parent)
    if len(os.fsencode(p.name)) > limit:
        raise OutputError(
            f"{p.name[:40]}...: the file name is {len(os.fsencode(p.name))} bytes long, more than the {limit} "
            f"this file system allows; choose a shorter {what}."
        )
    if text.endswith(("/", os.sep)) or p.is_dir():
        example = p / _with_suffix("OUTPUT", suffix or ".ext")
        raise OutputError(f"{p}: is a folder; {what} needs a file name, e.g. {example}.")
    if suffix and not p.name.lower().endswith(suffix.lower()):
        raise OutputError(
            f"{p}: the output is written as {suffix}, so a file named {p.name} would hold the wrong format; "
            f"name it {_with_suffix(p.name, suffix)}."
        )
    _check_folder_writable(p.parent, what)
    if p.exists() and _write_protected(p):
        raise OutputError(
            f"{p}: exists and is write-protected; remove the protection or choose another {what}."
        )
    return p


def output_name(input_path: PathLike, suffix: str) -> str:
    """The file name an output of ``input_path`` (an image file, or a DICOM series folder) gets in a folder of
    outputs: its name with its (possibly double) extension replaced by ``suffix``, e.g. ``ct.nii.gz`` ->
    ``ct.seg.nrrd``."""
    return _with_suffix(Path(os.path.abspath(input_path)).name, suffix)


def check_output_folder(path: PathLike, what: str = "--out") -> Path:
    """Check that ``path`` is a folder that can be written, or can be created; returns it as a :class:`Path`.

    Raises:
        OutputError: ``path`` is a file, lies under a file, or is (or would be created in) a write-protected
            folder.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{p}: is a file; {what} needs a folder (an existing one, or a new name).")
    _check_folder_writable(p, what)
    return p


def check_replaced_folder(
    path: PathLike, is_earlier: Callable[[Path], bool], earlier: str, command: str, what: str = "--out"
) -> Path:
    """:func:`check_output_folder` for a command that replaces its folder as a whole
    (:func:`ModelSelectorLib.atomic.atomic_dir`): besides, an existing folder must be empty or hold an earlier
    output of the same command, so that no file of the user's is lost with it.

    Args:
        is_earlier: whether a folder holds an earlier output of the command.
        earlier: what that output is, for the message (e.g. ``"demo (summary.html)"``).
        command: the command, for the message (e.g. ``"the demo"``).

    Raises:
        OutputError: as :func:`check_output_folder`, or the folder holds other files and no earlier output.
    """
    p = check_output_folder(path, what)
    if p.is_dir() and any(p.iterdir()) and not is_earlier(p):
        raise OutputError(f"{p}: holds other files and no earlier {earlier}; {command} replaces its folder as a "
                          f"whole, so choose a new or empty folder ({what}).")  # fmt: skip
    return p


__all__ = ["check_output_file", "check_output_folder", "check_replaced_folder", "output_name"]
