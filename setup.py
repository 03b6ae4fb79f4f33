"""Build step that puts the bundled resources into the wheel (metadata lives in pyproject.toml).

The encoder, the starter zoo with its index and the sample images live in ``Resources/`` at the top of the
checkout (the layout of a Slicer extension). A wheel carries them as package data in
``ModelSelectorLib/resources/``, where :func:`ModelSelectorLib.resources.resources_dir` finds them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

#: the parts of Resources/ that a wheel ships
SHIPPED = ("encoder", "zoo", "samples")


class BuildPyWithResources(build_py):
    """``build_py`` that also copies ``Resources/{encoder,zoo,samples}`` into the built package."""

    def run(self) -> None:
        super().run()
        source = Path(__file__).resolve().parent / "Resources"
        target = Path(self.build_lib) / "ModelSelectorLib" / "resources"
        for part in SHIPPED:
            if (source / part).is_dir():
                shutil.rmtree(target / part, ignore_errors=True)
                shutil.copytree(
                    source / part, target / part, ignore=shutil.ignore_patterns(".*", "__pycache__")
                )


setup(cmdclass={"build_py": BuildPyWithResources})
