"""The Slicer application's classes when it is present, and stand-ins when only MRML is (``slicer-core``), so
that the module's logic can be imported and tested without the application or Qt."""

import unittest
from typing import Any

try:  # the Slicer application (GUI or --no-main-window)
    import ctk
    import qt
    import vtk
    from slicer.parameterNodeWrapper import parameterNodeWrapper
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
    from slicer.util import VTKObservationMixin

    HAVE_SLICER_APP = True
except ImportError:  # only MRML (e.g. ``pip install slicer-core``): the logic still works
    HAVE_SLICER_APP = False
    ctk = qt = vtk = None  # type: ignore[assignment]
    parameterNodeWrapper = None  # type: ignore[assignment]

    class ScriptedLoadableModule:  # type: ignore[no-redef]
        def __init__(self, parent: Any = None) -> None:
            self.parent = parent

    class ScriptedLoadableModuleWidget:  # type: ignore[no-redef]
        def __init__(self, parent: Any = None) -> None:
            self.parent = parent

    class ScriptedLoadableModuleLogic:  # type: ignore[no-redef]
        def __init__(self, parent: Any = None) -> None:
            self.parent = parent

    class ScriptedLoadableModuleTest(unittest.TestCase):  # type: ignore[no-redef]
        def delayDisplay(self, message: str, msec: int = 0) -> None:
            print(message, flush=True)  # headless runs show what the test does, as Slicer does

    class VTKObservationMixin:  # type: ignore[no-redef]
        pass
