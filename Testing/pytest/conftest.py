"""Shared pytest fixtures: small synthetic images with oblique, anisotropic geometry."""

from __future__ import annotations

import atexit
import locale
import math
import os
import shutil
import tempfile

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
# `zoo add --trust` records the user's trust outside every zoo; the tests keep theirs out of the user's own store
_TRUST_DIR = tempfile.mkdtemp(prefix="modelselector-trust-")
atexit.register(shutil.rmtree, _TRUST_DIR, ignore_errors=True)
os.environ["MODELSELECTOR_TRUST_STORE"] = os.path.join(_TRUST_DIR, "trusted.json")


#: the process locale as Python set it up (the user's character encoding)
_LOCALE = locale.setlocale(locale.LC_ALL)


@pytest.fixture(autouse=True)
def _process_locale_kept():
    """Put the process locale back before and after each test: GDCM's DICOM writer (the tests write DICOM series
    with SimpleITK, also in module fixtures; the library only reads them) sets it to "C" and leaves it, and
    subprocess output decoded as text afterwards would then be read as ASCII."""
    locale.setlocale(locale.LC_ALL, _LOCALE)
    yield
    locale.setlocale(locale.LC_ALL, _LOCALE)


def rotation_z(deg: float) -> tuple:
    """Row-major 3x3 rotation about z (exactly orthonormal), as ITK direction cosines."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture
def oblique_image():
    """A 3D float image with a bright box, oblique direction, anisotropic spacing and a non-zero origin."""
    from ModelSelectorLib.io import Image

    arr = np.zeros((12, 20, 24), np.float32)
    arr[4:8, 6:14, 8:18] = 100.0
    return Image(arr, (0.7, 0.9, 2.5), (12.5, -40.0, 7.25), rotation_z(25.0))
