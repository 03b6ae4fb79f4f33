"""The Python packages the library needs inside Slicer, installing the missing ones, and the GPU question.

torch comes from the PyTorch extension (``PyTorchUtils``, a dependency of this extension), which picks the
build that matches the machine's GPU and driver; a plain ``pip install torch`` would give a CPU-only build on
Windows. The other packages come through ``slicer.util.pip_install``, after torch, so that none of them pulls
in a torch of its own.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Optional

import slicer

#: Python packages the library needs at run time, as pyproject.toml declares them: (import name, pip
#: requirement); torch first. Slicer's own Python has numpy, pillow and SimpleITK; ``PythonSlicer`` needs the rest
#: before the library can select or apply anything.
DEPENDENCIES = [
    ("torch", "torch>=2.0"),
    ("monai", "monai>=1.3"),
    ("einops", "einops>=0.6"),
    ("SimpleITK", "SimpleITK>=2.2"),
    ("numpy", "numpy>=1.22"),
    ("scipy", "scipy>=1.8"),
    ("sklearn", "scikit-learn>=1.1"),
    ("hnswlib", "hnswlib>=0.7"),
    ("slicerio", "slicerio>=1.0"),
    ("tqdm", "tqdm>=4.60"),
    ("yaml", "PyYAML>=5.4"),
    ("jinja2", "Jinja2>=3.0"),
    ("matplotlib", "matplotlib>=3.5"),
    ("PIL", "pillow>=9.0"),
    ("nibabel", "nibabel>=4.0"),
    ("filelock", "filelock>=3.0"),
]
#: the packages that model runs need: all of them, since the library runs in ``PythonSlicer`` (the rest of the
#: module works without them)
MODEL_RUN_PACKAGES = tuple(name for name, _ in DEPENDENCIES)


def isImportable(name: str) -> bool:
    """True when package ``name`` can be imported (a package that refuses to load counts as missing)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def missingDependencies(names: Optional[tuple] = None) -> list[tuple]:
    """The (import name, pip requirement) pairs of :data:`DEPENDENCIES` (or of those in ``names``) that
    cannot be imported."""
    return [(n, r) for n, r in DEPENDENCIES if (names is None or n in names) and not isImportable(n)]


def installTorch() -> None:
    """Install torch through the PyTorch extension (the build for this machine's GPU, or the CPU one)."""
    try:
        import PyTorchUtils
    except ImportError as e:
        raise RuntimeError(
            "Model Selector needs the PyTorch extension to install torch; install 'PyTorch' from the "
            "Extensions Manager, restart Slicer and try again"
        ) from e
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if not torchLogic.torchInstalled() and torchLogic.installTorch(askConfirmation=False) is None:
        raise RuntimeError(
            "torch could not be installed; install it in the 'PyTorch Utils' module and try again"
        )


def installDependencies(missing: Optional[list[tuple]] = None) -> None:
    """Install missing packages: torch through the PyTorch extension, the others with ``pip_install``."""
    missing = missingDependencies() if missing is None else missing
    for name, requirement in missing:
        if name == "torch":
            installTorch()
        else:
            slicer.util.pip_install(requirement)
    importlib.invalidate_caches()


def cudaAvailable() -> bool:
    """True when the installed torch can run on a CUDA GPU (asked of torch itself; False without torch)."""
    if not isImportable("torch"):
        return False
    try:
        torch = importlib.import_module("torch")
        return bool(torch.cuda.is_available())
    except Exception:  # a broken torch install offers no GPU
        return False
