"""The Python packages the library needs inside Slicer, and installing the missing ones.

torch is installed through the PyTorch extension (``PyTorchUtils``) when it is present, which picks the
build that matches the machine's GPU; everything else through ``slicer.util.pip_install``.
"""

import importlib.util
from typing import Optional

import slicer

#: Python packages the library needs at run time: (import name, pip requirement)
DEPENDENCIES = [
    ("torch", "torch"),
    ("monai", "monai>=1.3"),
    ("SimpleITK", "SimpleITK"),
    ("slicerio", "slicerio"),
    ("hnswlib", "hnswlib"),
]


def missingDependencies() -> list[tuple]:
    """The (import name, pip requirement) pairs of :data:`DEPENDENCIES` that cannot be imported."""
    return [(name, req) for name, req in DEPENDENCIES if importlib.util.find_spec(name) is None]


def installDependencies(missing: Optional[list[tuple]] = None) -> None:
    """Install missing packages with ``slicer.util.pip_install`` (torch through PyTorchUtils when present)."""
    missing = missingDependencies() if missing is None else missing
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
