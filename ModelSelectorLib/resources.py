"""Where the bundled resources are: the encoder, the starter zoo with its index, and the sample images.

One function answers for every caller, whichever way the library was installed:

==========================  ===================================================================
installation                folder
==========================  ===================================================================
``$MODELSELECTOR_RESOURCES`` that folder (set it to use resources kept elsewhere)
wheel (``pip install``)     ``ModelSelectorLib/resources`` inside the installed package
3D Slicer extension         ``qt-scripted-modules/ModelSelectorLib/resources`` (CMake install rule)
source checkout             ``Resources/`` at the top of the checkout
==========================  ===================================================================

The folder holds ``encoder/`` (``encoder.pt``, ``card.json``), ``zoo/`` (``zoo.json``, ``models/``,
``index/``) and ``samples/``. ``$MODELSELECTOR_ZOO`` chooses another default zoo without moving the rest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .errors import ModelSelectorError

#: environment variable naming a resources folder
RESOURCES_ENV = "MODELSELECTOR_RESOURCES"
#: environment variable naming the default zoo
ZOO_ENV = "MODELSELECTOR_ZOO"
_PACKAGE = Path(__file__).resolve().parent
#: the places searched, in order, after ``$MODELSELECTOR_RESOURCES``
CANDIDATES = (_PACKAGE / "resources", _PACKAGE.parent / "Resources")


def _holds_resources(folder: Path) -> bool:
    return (folder / "encoder").is_dir() or (folder / "zoo").is_dir()


def resources_dir() -> Path:
    """The resources folder of this installation (see the module docstring for the search order).

    Raises:
        ModelSelectorError: no folder holds the resources; the message lists the places searched.
    """
    env = os.environ.get(RESOURCES_ENV)
    if env:
        folder = Path(env).expanduser()
        if not _holds_resources(folder):
            raise ModelSelectorError(
                f"${RESOURCES_ENV} is {folder}, which holds neither encoder/ nor zoo/; unset it or point it "
                "at a resources folder."
            )
        return folder
    for folder in CANDIDATES:
        if _holds_resources(folder):
            return folder
    raise ModelSelectorError(
        "the bundled resources (encoder, starter zoo) were not found in "
        f"{', '.join(str(c) for c in CANDIDATES)}; reinstall ModelSelectorLib or set ${RESOURCES_ENV}."
    )


def resource_path(*parts: str) -> Path:
    """A path inside :func:`resources_dir`, e.g. ``resource_path("encoder", "encoder.pt")`` (may not exist)."""
    return resources_dir().joinpath(*parts)


def encoder_dir() -> Path:
    """The bundled encoder's folder (``encoder.pt``, ``card.json``, ``README.md``)."""
    return resource_path("encoder")


def samples_dir() -> Path:
    """The bundled sample images."""
    return resource_path("samples")


def default_zoo_path() -> Path:
    """The zoo used when none is given: ``$MODELSELECTOR_ZOO``, else the bundled starter zoo."""
    env = os.environ.get(ZOO_ENV)
    if env:
        return Path(env).expanduser()
    return resource_path("zoo")


def checkout_root() -> Optional[Path]:
    """The source checkout this library runs from (the folder holding ``Resources/`` and
    ``ModelSelectorLib/``), or None for an installed copy."""
    root = _PACKAGE.parent
    return root if (root / "Resources").is_dir() and (root / "pyproject.toml").is_file() else None


__all__ = [
    "CANDIDATES",
    "RESOURCES_ENV",
    "ZOO_ENV",
    "checkout_root",
    "default_zoo_path",
    "encoder_dir",
    "resource_path",
    "resources_dir",
    "samples_dir",
]
