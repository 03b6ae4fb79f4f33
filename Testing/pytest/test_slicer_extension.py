"""The Slicer extension as Slicer's build and extension index see it: consistent metadata that references
only files that exist, its terminology and sample data, the installed layout running a model, and the
self-test on a build machine without torch (real MRML from ``slicer-core``, real child processes)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "ModelSelector"

slicer = pytest.importorskip("slicer", reason="needs slicer-core (pip install slicer-core) for MRML classes")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the 'slicer' module found has no MRML classes", allow_module_level=True)

sys.path.insert(0, str(MODULE_DIR))
from ModelSelectorSupport import application  # noqa: E402

import ModelSelector as msm  # noqa: E402

#: keys of an ExtensionsIndex entry (Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json)
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}
CATALOG_KEYS = CATALOG_REQUIRED | {"scm_revision", "scm_type", "build_dependencies", "dicom_support_rule",
                                   "build_subdirectory", "enabled", "tier"}  # fmt: skip


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSELECTOR_")}
    env.pop("PYTHONPATH", None)
    return env


def _cmake_set(text: str, name: str) -> list[str]:
    """The values of ``set(NAME "a" "b")`` / ``set(NAME\\n a\\n b\\n)`` in a CMakeLists.txt."""
    body = re.search(rf"set\(\s*{name}\b(.*?)\)", text, re.S).group(1)
    quoted = re.findall(r'"([^"]*)"', body)
    return quoted if quoted else body.split()


def _s4ext() -> dict[str, str]:
    fields = {}
    for line in (ROOT / "ModelSelector.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    return fields


def _repo_file_of(url: str) -> Path:
    """The checkout file that a raw.githubusercontent.com URL of this repository's main branch names."""
    return ROOT / url.split("/main/", 1)[1]


def test_extension_metadata_is_consistent_and_names_existing_files():
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    s4ext = _s4ext()
    entry = json.loads((ROOT / "ModelSelector.json").read_text(encoding="utf-8"))
    assert CATALOG_REQUIRED <= set(entry) <= CATALOG_KEYS, sorted(entry)
    assert "catalog-entry-schema" in entry["$schema"]

    # the PyTorch extension provides torch (the CUDA build that fits the machine): declared everywhere
    assert _cmake_set(cmake, "EXTENSION_DEPENDS") == ["PyTorch"]
    assert s4ext["depends"].split() == ["PyTorch"] == entry["build_dependencies"]
    assert _cmake_set(cmake, "EXTENSION_CATEGORY") == [s4ext["category"]] == [entry["category"]]
    assert s4ext["scmurl"] == entry["scm_url"] and s4ext["scmrevision"] == entry["scm_revision"]
    assert _cmake_set(cmake, "EXTENSION_HOMEPAGE") == [s4ext["homepage"]]

    # one list of contributors: the project's authors (pyproject.toml), the extension and the module agree
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    authors = re.findall(
        r'name\s*=\s*"([^"]+)"', re.search(r"authors\s*=\s*\[(.*?)\]", pyproject, re.S).group(1)
    )
    assert _cmake_set(cmake, "EXTENSION_CONTRIBUTORS") == authors
    assert [c.strip() for c in s4ext["contributors"].split(",")] == authors
    parent = type("Parent", (), {})()
    msm.ModelSelector(parent)
    assert parent.contributors == authors

    # every URL into this repository names a file that is there; no screenshot is claimed that does not exist
    urls = _cmake_set(cmake, "EXTENSION_ICONURL") + _cmake_set(cmake, "EXTENSION_SCREENSHOTURLS")
    urls += [s4ext["iconurl"]] + s4ext.get("screenshoturls", "").split()
    for url in filter(None, urls):
        assert _repo_file_of(url).is_file(), url


def test_module_cmake_lists_every_module_file():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = {
        s.replace("${MODULE_NAME}", "ModelSelector") for s in _cmake_set(cmake, "MODULE_PYTHON_SCRIPTS")
    }
    resources = {
        s.replace("${MODULE_NAME}", "ModelSelector") for s in _cmake_set(cmake, "MODULE_PYTHON_RESOURCES")
    }
    on_disk = {
        str(p.relative_to(MODULE_DIR)) for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts
    }
    assert scripts == on_disk
    assert all((MODULE_DIR / r).is_file() for r in resources)
    needed = {application.TERMINOLOGY_FILE} | {Path(s["thumbnailFileName"]) for s in _sources()}
    assert {str(p.relative_to(MODULE_DIR)) for p in needed} <= resources


def _sources() -> list[dict]:
    msm.ModelSelectorLogic._ensureImportable()
    from ModelSelectorLib.resources import samples_dir

    return application.sampleDataSources(samples_dir())


def test_bundled_samples_are_offered_to_sample_data(tmp_path):
    sources = _sources()
    assert [s["fileNames"] for s in sources] == [f for _, f, _, _ in application.SAMPLES]
    for source in sources:
        assert Path(source["thumbnailFileName"]).is_file()
        # what SampleDataLogic.downloadFile does with the URI, then its checksum test
        copy = tmp_path / source["fileNames"]
        urllib.request.urlretrieve(source["uris"], copy)
        algorithm, digest = source["checksums"].split(":")
        assert hashlib.new(algorithm.lower(), copy.read_bytes()).hexdigest() == digest


def test_terminology_file_holds_every_label_of_the_bundled_zoo():
    from ModelSelectorLib.io.segmentation import TERMINOLOGY_CONTEXT
    from ModelSelectorLib.zoo import Zoo

    context = json.loads(application.TERMINOLOGY_FILE.read_text(encoding="utf-8"))
    assert context["SegmentationCategoryTypeContextName"] == TERMINOLOGY_CONTEXT
    # the schema that Slicer's Terminologies module accepts for a category/type context
    assert (
        context["@schema"]
        == "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/segment-context-schema.json#"
    )
    known = set()
    for category in context["SegmentationCodes"]["Category"]:
        for type_ in category["Type"]:
            key = (category["CodingSchemeDesignator"], category["CodeValue"], type_["CodingSchemeDesignator"],
                   type_["CodeValue"])  # fmt: skip
            known.add(key)
            known |= {key + (m["CodingSchemeDesignator"], m["CodeValue"]) for m in type_.get("Modifier", [])}
    zoo = Zoo(msm.ModelSelectorLogic().defaultZooPath())
    missing = []
    for model in zoo.list():
        for label in zoo.card(model["name"]).labels:
            term = label.get("terminology")
            if not term:
                continue
            key = (
                tuple(term["category"][:2])
                + tuple(term["type"][:2])
                + tuple(term.get("typeModifier", [])[:2])
            )
            if key not in known:
                missing.append(f"{model['name']}: {label['name']} {key}")
    assert missing == [], "add these codes to " + application.TERMINOLOGY_FILE.name


def test_segments_load_in_mrml_with_full_terminology(tmp_path):
    """A ``.seg.nrrd`` written by the library carries context names in each segment's terminology string."""
    import numpy as np

    from ModelSelectorLib.io import Image, write_segmentation
    from ModelSelectorLib.io.segmentation import ANATOMIC_CONTEXT, TERMINOLOGY_CONTEXT

    labels = np.zeros((4, 6, 8), np.uint8)
    labels[1:3, 2:4, 2:6] = 1
    labels[1:3, 4:6, 2:6] = 2
    tumour = {"category": ["SCT", "49755003", "Morphologically Altered Structure"],
              "type": ["SCT", "108369006", "Neoplasm"], "anatomicRegion": ["SCT", "12738006", "Brain"]}  # fmt: skip
    liver = {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "10200004", "Liver"]}
    path = write_segmentation(Image(labels, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel())),
                              tmp_path / "s.seg.nrrd",
                              [{"value": 1, "name": "Tumour", "terminology": tumour},
                               {"value": 2, "name": "Liver", "terminology": liver}])  # fmt: skip
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    strings = {segmentation.GetNthSegment(i).GetName(): segmentation.GetNthSegment(i).GetTerminology()
               for i in range(segmentation.GetNumberOfSegments())}  # fmt: skip
    assert strings["Tumour"] == (f"{TERMINOLOGY_CONTEXT}~SCT^49755003^Morphologically Altered Structure"
                                 f"~SCT^108369006^Neoplasm~^^~{ANATOMIC_CONTEXT}~SCT^12738006^Brain~^^")  # fmt: skip
    assert strings["Liver"].startswith(
        f"{TERMINOLOGY_CONTEXT}~SCT^123037004^Anatomical Structure~SCT^10200004^"
    )


def _install_layout(tmp_path: Path) -> Path:
    """The files that the extension's CMake rules install, where they install them."""
    modules = tmp_path / "SlicerModelSelector" / "lib" / "Slicer-5.8" / "qt-scripted-modules"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES"):
        for name in _cmake_set(cmake, key):
            relative = name.replace("${MODULE_NAME}", "ModelSelector")
            (modules / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(MODULE_DIR / relative, modules / relative)
    shutil.copytree(ROOT / "ModelSelectorLib", modules / "ModelSelectorLib", ignore=ignore)
    for part in ("encoder", "zoo", "samples"):  # ModelSelectorLib/CMakeLists.txt
        shutil.copytree(
            ROOT / "Resources" / part, modules / "ModelSelectorLib" / "resources" / part, ignore=ignore
        )
    return modules


def test_installed_extension_applies_a_bundled_model_by_name(tmp_path):
    """From a copy of the installed layout, with no checkout around: the module finds the library, the zoo, the
    samples and its terminology, and applies a bundled model by name to the bundled X-ray."""
    modules = _install_layout(tmp_path)
    code = textwrap.dedent("""
        import json, sys
        sys.path.insert(0, sys.argv[1])
        import ModelSelector, ModelSelectorLib, slicer
        import SimpleITK as sitk
        from ModelSelectorSupport import application, environment
        from ModelSelectorLib.resources import samples_dir
        logic = ModelSelector.ModelSelectorLogic()
        sources = application.sampleDataSources(samples_dir())
        sitk.WriteImage(sitk.ReadImage(str(samples_dir() / "cxr_chest.png")), "xray.nrrd")
        scene = slicer.vtkMRMLScene()
        volume = slicer.vtkMRMLScalarVolumeNode()
        scene.AddNode(volume)
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName("xray.nrrd")
        assert storage.ReadData(volume)
        (node,) = ModelSelector.ModelSelectorLogic(scene).applyModels(volume, "dx-chest-lungs")
        print(json.dumps({"library": ModelSelectorLib.__file__, "childPaths": environment.libraryPaths(),
                          "zoo": logic.defaultZooPath(), "terminology": str(application.TERMINOLOGY_FILE),
                          "samples": [s["uris"] for s in sources], "result": node.GetClassName(),
                          "segments": node.GetSegmentation().GetNumberOfSegments()}))
        """)  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, str(modules)], cwd=tmp_path, env=_clean_env(),
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(res["library"]).resolve().is_relative_to(modules.resolve())
    assert res["childPaths"] == [str(modules)]
    assert Path(res["zoo"]) == modules / "ModelSelectorLib" / "resources" / "zoo"
    assert Path(res["terminology"]).is_file() and Path(res["terminology"]).parent == modules / "Resources"
    assert len(res["samples"]) == len(application.SAMPLES)
    assert all(str(modules.resolve().as_uri()) in uri for uri in res["samples"])
    assert res["result"] == "vtkMRMLSegmentationNode" and res["segments"] == 1


def test_the_module_installs_every_package_the_library_declares():
    """``PythonSlicer`` runs the library, so the module installs every package pyproject.toml declares, by its
    import name: with only torch, MONAI and three others listed, ``select`` in Slicer failed on the first import
    of scikit-learn, tqdm, PyYAML or matplotlib, which Slicer's Python does not have."""
    import importlib.metadata

    tomllib = pytest.importorskip("tomllib")
    from ModelSelectorSupport.dependencies import DEPENDENCIES

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    assert sorted(requirement for _, requirement in DEPENDENCIES) == sorted(declared)
    assert DEPENDENCIES[0][0] == "torch"  # installed first, through the PyTorch extension
    distributions = importlib.metadata.packages_distributions()
    for name, requirement in DEPENDENCIES:
        project = re.split(r"[<>=!~ ]", requirement)[0].lower()
        assert project in [d.lower() for d in distributions.get(name, [])], (name, requirement)


BLOCK_TORCH = '''\
"""Make torch and MONAI unimportable, as on an extension build machine."""
import sys


class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "monai"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, BlockTorch())
'''


def _run_without_torch(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess:
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = _clean_env()
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), str(ROOT), str(MODULE_DIR)])
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_self_test_without_torch_skips_the_model_runs_with_a_message(tmp_path):
    check = _run_without_torch(tmp_path, ["-c", "import torch"])
    assert check.returncode != 0 and "No module named 'torch'" in check.stderr, (
        "the blocker does not block torch"
    )

    # as Testing/slicer/run_selftest.py and the module's "Reload and Test" run it
    run = _run_without_torch(tmp_path, [str(ROOT / "Testing" / "slicer" / "run_selftest.py")])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Listing the bundled zoo" in run.stdout
    assert "Skipping the model runs of the self-test: torch, monai not installed" in run.stdout
    assert "run_selftest: PASSED" in run.stdout

    # as ctest runs it (slicer_add_python_unittest: every test of the module, loaded by name)
    code = ("import sys, unittest; suite = unittest.TestLoader().loadTestsFromName('ModelSelector'); "
            "sys.exit(not unittest.TextTestRunner(verbosity=2).run(suite).wasSuccessful())")  # fmt: skip
    run = _run_without_torch(tmp_path, ["-c", code])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "test_ListBundledZoo" in run.stderr and "ok" in run.stderr
    assert re.search(r"test_ApplyTinyModel .*skipped .Skipping the model runs", run.stderr), run.stderr[
        -2000:
    ]
