"""ModelSelectorLib: find the models in a MONAI model zoo that apply to a medical image, apply them,
and build and maintain the zoo.

The library imports and runs with no 3D Slicer and no Qt; the Slicer module ``ModelSelector`` is a thin
layer over it. Heavy dependencies (torch, MONAI) are imported by the modules that need them, so that
``import ModelSelectorLib`` stays fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import ModelSelectorError  # noqa: E402

__all__ = ["ModelSelectorError", "__version__"]
