"""The choices a user of the module keeps between Slicer sessions (Slicer's settings, ``qt.QSettings``): the
zoo folder and the device. A scene's parameter node, when it holds a choice, takes precedence."""

import os

from .headless import qt

#: the settings' keys
ZOO_SETTING = "ModelSelector/zooPath"
DEVICE_SETTING = "ModelSelector/device"


def savedZooPath() -> str:
    """The zoo folder chosen last, or "" when none was or it is no longer a folder."""
    path = str(qt.QSettings().value(ZOO_SETTING) or "")
    return path if os.path.isdir(path) else ""


def saveZooPath(path: str) -> None:
    """Keep ``path`` as the zoo folder to start with (a path that is not a folder is not kept)."""
    if path and os.path.isdir(path):
        qt.QSettings().setValue(ZOO_SETTING, path)


def savedDevice() -> str:
    """The device chosen last ("cpu" when none was)."""
    return str(qt.QSettings().value(DEVICE_SETTING) or "cpu")


def saveDevice(device: str) -> None:
    qt.QSettings().setValue(DEVICE_SETTING, device)
