"""Where the Model Selector module finds the library and which Python runs it: ``ModelSelectorLib`` beside
the module (installed extension: both in ``qt-scripted-modules``) or one folder up (source checkout), run by
``PythonSlicer`` inside Slicer."""

from __future__ import annotations

import os
import shutil
import sys

from .headless import HAVE_SLICER_APP

#: the folder of ``ModelSelector.py`` (and of this package)
MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def libraryPaths() -> list[str]:
    """Folders that hold ``ModelSelectorLib``: beside the module (installed extension) or one up (source)."""
    return [
        f
        for f in (MODULE_DIR, os.path.dirname(MODULE_DIR))
        if os.path.isdir(os.path.join(f, "ModelSelectorLib"))
    ]


def ensureImportable() -> None:
    """Make ``import ModelSelectorLib`` work in this process."""
    for folder in libraryPaths():
        if folder not in sys.path:
            sys.path.insert(0, folder)


def pythonExecutable() -> str:
    """``PythonSlicer`` inside Slicer (Slicer's Python with its environment), else this interpreter."""
    if HAVE_SLICER_APP:
        for folder in (os.path.dirname(sys.executable), None):
            found = shutil.which("PythonSlicer", path=folder)
            if found:
                return found
    return sys.executable


def processEnvironment() -> dict[str, str]:
    """What a child process's environment adds: PROGRESS lines, unbuffered output, the library's folder."""
    paths = libraryPaths() + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"MODELSELECTOR_PROGRESS": "lines", "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(paths)}
