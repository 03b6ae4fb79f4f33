"""The bundled resources are found one way from a checkout, an installed wheel and an installed Slicer
extension, with no checkout around the installed copies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ModelSelectorLib import resources
from ModelSelectorLib.errors import ModelSelectorError

ROOT = Path(__file__).resolve().parents[2]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSELECTOR_")}
    env.pop("PYTHONPATH", None)
    return env


def test_checkout_resources_and_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv(resources.RESOURCES_ENV, raising=False)
    monkeypatch.delenv(resources.ZOO_ENV, raising=False)
    assert resources.resources_dir() == ROOT / "Resources"
    assert resources.default_zoo_path() == ROOT / "Resources" / "zoo"
    assert (resources.encoder_dir() / "encoder.pt").is_file()
    assert resources.checkout_root() == ROOT

    monkeypatch.setenv(resources.ZOO_ENV, str(tmp_path / "my-zoo"))
    assert resources.default_zoo_path() == tmp_path / "my-zoo"
    (tmp_path / "res" / "encoder").mkdir(parents=True)
    monkeypatch.setenv(resources.RESOURCES_ENV, str(tmp_path / "res"))
    assert resources.encoder_dir() == tmp_path / "res" / "encoder"
    monkeypatch.setenv(resources.RESOURCES_ENV, str(tmp_path / "nothing-here"))
    with pytest.raises(ModelSelectorError, match="neither encoder/ nor zoo/"):
        resources.resources_dir()


def _build_wheel(tmp_path: Path) -> Path:
    """``pip wheel --no-deps`` of a copy of the checkout's package files (the checkout stays clean)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE.txt"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
    shutil.copytree(ROOT / "ModelSelectorLib", src / "ModelSelectorLib", ignore=ignore)
    shutil.copytree(ROOT / "Resources", src / "Resources", ignore=ignore)
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(out), str(src)], check=True, capture_output=True, env=_clean_env())  # fmt: skip
    (wheel,) = out.glob("*.whl")
    return wheel


def test_wheel_ships_encoder_and_zoo_and_selects_without_a_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "ModelSelectorLib/resources/encoder/encoder.pt" in names
    assert "ModelSelectorLib/resources/zoo/zoo.json" in names
    assert "ModelSelectorLib/resources/zoo/index/index.json" in names
    assert "ModelSelectorLib/resources/samples/cxr_chest.png" in names
    assert "ModelSelectorLib/ranking/templates/leaderboard.html.j2" in names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import json, ModelSelectorLib\n"
        "from ModelSelectorLib.resources import resources_dir, samples_dir\n"
        "from ModelSelectorLib.selection import select\n"
        "sel = select(samples_dir() / 'cxr_chest.png', top_k=3)\n"
        "print(json.dumps({'package': ModelSelectorLib.__file__, 'resources': str(resources_dir()), "
        "'answer': sel.to_json_dict()}))\n"
    )
    env = _clean_env()
    env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(res["package"]).resolve().is_relative_to(site.resolve())
    assert Path(res["resources"]).resolve() == (site / "ModelSelectorLib" / "resources").resolve()
    assert res["answer"]["fits"] and res["answer"]["models"][0]["modality"] == "DX"


def test_installed_slicer_extension_layout_finds_its_zoo(tmp_path):
    """The CMake install rules put the library beside the scripted modules and the resources inside it
    (``qt-scripted-modules/ModelSelectorLib/resources``); the module's logic lists the zoo from there."""
    modules = tmp_path / "SlicerModelSelector" / "lib" / "Slicer-5.8" / "qt-scripted-modules"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "ModelSelectorLib", modules / "ModelSelectorLib", ignore=ignore)
    for part in ("encoder", "zoo", "samples"):
        shutil.copytree(
            ROOT / "Resources" / part, modules / "ModelSelectorLib" / "resources" / part, ignore=ignore
        )
    shutil.copy(ROOT / "ModelSelector" / "ModelSelector.py", modules / "ModelSelector.py")
    shutil.copytree(
        ROOT / "ModelSelector" / "ModelSelectorSupport", modules / "ModelSelectorSupport", ignore=ignore
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import ModelSelector, ModelSelectorLib\n"
        "logic = ModelSelector.ModelSelectorLogic()\n"
        "print(ModelSelectorLib.__file__); print(logic.defaultZooPath()); print(len(logic.listModels()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(modules)], cwd=tmp_path, env=_clean_env(),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    package, zoo, n_models = out.stdout.strip().splitlines()[-3:]
    assert Path(package).resolve().is_relative_to(modules.resolve())
    assert Path(zoo) == modules / "ModelSelectorLib" / "resources" / "zoo"
    assert int(n_models) >= 1
