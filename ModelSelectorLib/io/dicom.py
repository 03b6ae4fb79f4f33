"""The DICOM series of a folder, found by GDCM from the files' headers (whatever the files' names)."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import SimpleITK as sitk


def describe_series(uid: str, files: list[str]) -> str:
    """A series of a DICOM folder as a user can choose it: ``UID (CT, 'ABDOMEN 3mm', 120 files)``, from the
    header of its first file."""
    facts = []
    head = sitk.ImageFileReader()
    head.SetFileName(files[0])
    try:
        head.ReadImageInformation()
        facts = [
            head.GetMetaData(tag).strip() for tag in ("0008|0060", "0008|103e") if head.HasMetaDataKey(tag)
        ]
    except RuntimeError:  # an unreadable header: the UID and file count still tell the series apart
        pass
    facts = [f"'{f}'" if " " in f else f for f in facts if f]
    return f"{uid} ({', '.join([*facts, f'{len(files)} file' + ('s' if len(files) != 1 else '')])})"


def _loops(folder: Path) -> bool:
    """Whether ``folder`` holds a symbolic link that leads back to itself (``a -> b``, ``b -> a``), which makes
    GDCM's scan give up on the whole folder."""
    for entry in os.scandir(folder):
        try:
            os.stat(entry.path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                return True
    return False


def _gdcm_series(folder: str) -> dict[str, list[str]]:
    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    return {u: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, u)) for u in uids}


def dicom_series(folder: os.PathLike | str) -> dict[str, list[str]]:
    """The files of each DICOM series directly in ``folder``, by series UID, whatever the files' names (GDCM reads
    the headers), without GDCM's warnings on stderr for the files that are not DICOM. Links that loop are
    passed over: GDCM scans a folder of links to the other files instead.

    Raises:
        RuntimeError: GDCM cannot scan the folder.
    """
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        if not _loops(Path(folder)):
            return _gdcm_series(str(folder))
        with tempfile.TemporaryDirectory(prefix="modelselector-dicom-") as links:
            back = {}
            for entry in os.scandir(folder):
                if os.path.isfile(entry.path):  # False for a looping link
                    back[os.path.join(links, entry.name)] = entry.path
                    os.symlink(os.path.abspath(entry.path), os.path.join(links, entry.name))
            return {u: [back[f] for f in files] for u, files in _gdcm_series(links).items()}
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
