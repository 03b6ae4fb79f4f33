"""What the Model Selector module adds to the Slicer application at startup: its segment terminology
(so that the segments of its results show their standard codes) and the bundled sample images in the
*Sample Data* module."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import slicer

from .environment import ensureImportable
from .jobs import endLiveJobs

#: the module's resources folder (installed beside the module: ``qt-scripted-modules/Resources``)
RESOURCES_DIR = Path(__file__).resolve().parent.parent / "Resources"
#: segmentation category and type context of the zoo's labels; its name is the library's TERMINOLOGY_CONTEXT
TERMINOLOGY_FILE = RESOURCES_DIR / "SegmentationCategoryTypeModifier-ModelSelector.term.json"
#: Sample Data category of the bundled samples
SAMPLE_CATEGORY = "Model Selector"
#: bundled samples: (name shown in Sample Data, file in the resources' samples folder, node name, thumbnail)
SAMPLES = (
    ("Chest X-ray", "cxr_chest.png", "ChestXray", "SampleChestXray.png"),
    ("Abdomen CT", "ct_abdomen.nii.gz", "AbdomenCT", "SampleAbdomenCT.png"),
)


def sampleDataSources(samplesDir: os.PathLike) -> list[dict[str, Any]]:
    """Keyword arguments of ``SampleDataLogic.registerCustomSampleDataSource`` for each bundled sample that is
    present in ``samplesDir`` (``file:`` URIs: Sample Data copies them into its cache and loads the copy)."""
    sources = []
    for sampleName, fileName, nodeName, thumbnail in SAMPLES:
        path = Path(samplesDir) / fileName
        if not path.is_file():
            continue
        sources.append({
            "sampleName": sampleName,
            "uris": path.resolve().as_uri(),
            "fileNames": fileName,
            "nodeNames": nodeName,
            "checksums": "SHA256:" + hashlib.sha256(path.read_bytes()).hexdigest(),
            "thumbnailFileName": str(RESOURCES_DIR / "Icons" / thumbnail),
        })  # fmt: skip
    return sources


def registerSampleData(samplesDir: os.PathLike) -> None:
    """Show the bundled samples in the *Sample Data* module (category "Model Selector")."""
    import SampleData

    logic = SampleData.SampleDataLogic
    if hasattr(logic, "registerCustomSampleDataCategory"):  # Slicer >= 5.9
        logic.registerCustomSampleDataCategory(SAMPLE_CATEGORY, title=SAMPLE_CATEGORY)
    for source in sampleDataSources(samplesDir):
        logic.registerCustomSampleDataSource(category=SAMPLE_CATEGORY, **source)


def loadTerminology() -> str:
    """Load the zoo's segmentation terminology context into the Terminologies module; returns its name."""
    return slicer.modules.terminologies.logic().LoadTerminologyFromFile(str(TERMINOLOGY_FILE))


def onStartupCompleted() -> None:
    """Load the terminology and register the samples (each failure is logged; Slicer starts anyway), and end
    the runs still going when Slicer quits (a run started from the console, with its copy of the volume)."""
    slicer.app.connect("aboutToQuit()", endLiveJobs)
    try:
        loadTerminology()
    except Exception as e:
        logging.error("Model Selector: could not load its segment terminology: %s", e)
    try:
        ensureImportable()
        from ModelSelectorLib.resources import samples_dir

        registerSampleData(samples_dir())
    except Exception as e:
        logging.error("Model Selector: could not register its sample data: %s", e)
