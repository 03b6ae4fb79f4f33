"""Tests of ModelSelectorLib.bundle, ModelSelectorLib.zoo and ``modelselector zoo`` with real MONAI bundles."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from ModelSelectorLib import atomic
from ModelSelectorLib.cli import main
from ModelSelectorLib.errors import BundleError, ZooError
from ModelSelectorLib.resources import default_zoo_path
from ModelSelectorLib.zoo import ModelCard, Zoo, load_bundle, save_bundle
from ModelSelectorLib.zoo.bundle import import_monai_bundle, validate_bundle

NETWORK_DEF = {
    "_target_": "monai.networks.nets.UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 0,
}


@pytest.fixture(autouse=True)
def _light_cpu():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_net(seed: int = 0) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    torch.manual_seed(seed)
    return ConfigParser({"net": dict(NETWORK_DEF)}).get_parsed_content("net")


def make_card(**changes) -> ModelCard:
    data = {
        "name": "liver_ct",
        "version": "0.1.0",
        "task_type": "segmentation",
        "modality": "CT",
        "body_region": "ABDOMEN",
        "labels": [
            {
                "value": 1,
                "name": "Liver",
                "color": [0.86, 0.31, 0.24],
                "terminology": {
                    "category": ["SCT", "123037004", "Anatomical Structure"],
                    "type": ["SCT", "10200004", "Liver"],
                },
            }
        ],
        "input_channels": 1,
        "spatial_dims": 3,
        "target_spacing": [1.5, 1.5, 2.0],
        "intensity": {"mode": "ct", "a_min": -200, "a_max": 250},
        "roi_size": [16, 16, 16],
        "training_data": "synthetic phantoms",
        "n_training_cases": 4,
        "validation_metrics": {"dice": 0.875},
        "seed": 7,
        "code_version": "0.1.0",
        "license": "Apache-2.0",
        "synthetic": True,
        "training_time_s": 1.5,
    }
    data.update(changes)
    return ModelCard.from_dict(data)


def make_bundle(root: Path, name: str = "liver_ct", version: str = "0.1.0", seed: int = 0) -> Path:
    net = make_net(seed)
    return save_bundle(
        root / f"{name}-{version}", make_card(name=name, version=version), NETWORK_DEF, net.state_dict()
    )


def edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    fn(data)
    path.write_text(json.dumps(data))


def run_cli(capsys, *argv: str):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# --- model card -----------------------------------------------------------------------------------------
def test_card_round_trip_and_valid():
    card = make_card()
    assert ModelCard.from_dict(card.to_dict()) == card
    assert card.validate() is card
    assert make_card(body_region="CHEST;ABDOMEN", modality="MR").validate()


@pytest.mark.parametrize(
    "field, value",
    [
        ("task_type", "detection"),
        ("modality", "XX"),
        ("body_region", "ABDOMEN;BELLY"),
        ("labels", [{"value": 1, "name": "Liver", "color": [2, 0, 0]}]),
        ("labels", [{"value": 0, "name": "Liver", "color": [1, 0, 0]}]),
        ("labels", []),
        ("name", "my model"),
        ("roi_size", [16, 16]),
        ("intensity", {"mode": "log"}),
        ("spatial_dims", 4),
    ],
)
def test_card_validate_names_bad_field(field, value):
    with pytest.raises(BundleError, match=f"'{field}"):
        make_card(**{field: value}).validate()


def test_card_from_dict_missing_required():
    with pytest.raises(BundleError, match="modality"):
        ModelCard.from_dict({"name": "a", "version": "1", "task_type": "segmentation", "body_region": "HEAD"})


# --- save / validate / load -----------------------------------------------------------------------------
def test_save_validate_load_round_trip(tmp_path):
    from monai.bundle import ConfigParser

    net = make_net(3).eval()
    path = save_bundle(tmp_path / "b", make_card(), NETWORK_DEF, net.state_dict())
    assert path == tmp_path / "b"
    for rel in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md"):
        assert (path / rel).is_file(), rel
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left

    meta = json.loads((path / "configs/metadata.json").read_text(encoding="utf-8"))
    for key in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "task",
                "description", "authors", "license", "network_data_format", "modelselector"):  # fmt: skip
        assert key in meta, key
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "Liver"}
    readme = (path / "docs/README.md").read_text(encoding="utf-8")
    assert "| 1 | Liver |" in readme and "Apache-2.0" in readme and "Seed: 7" in readme

    # inference.json is a real MONAI config
    parser = ConfigParser()
    parser.read_config(str(path / "configs/inference.json"))
    parser["device"] = "$torch.device('cpu')"
    assert isinstance(parser.get_parsed_content("network"), torch.nn.Module)
    assert list(parser.get_parsed_content("inferer").roi_size) == [16, 16, 16]
    assert len(parser.get_parsed_content("preprocessing").transforms) >= 5

    assert validate_bundle(path) == make_card()
    loaded = load_bundle(path)
    assert loaded.card == make_card() and loaded.path == path and not loaded.network.training
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), loaded.network(x))


def test_save_bundle_replaces_bundle_but_not_other_folder(tmp_path):
    make_bundle(tmp_path)
    make_bundle(tmp_path, seed=1)  # replacing an existing bundle is fine
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(BundleError, match="not a bundle"):
        save_bundle(other, make_card(), NETWORK_DEF, make_net().state_dict())
    assert (other / "keep.txt").read_text(encoding="utf-8") == "mine"


def test_validate_bundle_reports_reason(tmp_path):
    path = make_bundle(tmp_path)
    (path / "models/model.pt").unlink()
    with pytest.raises(BundleError, match="models/model.pt"):
        validate_bundle(path)
    path = make_bundle(tmp_path, version="0.2.0")
    edit_json(path / "configs/metadata.json", lambda d: d["modelselector"].update(modality="CAT"))
    with pytest.raises(BundleError, match="'modality'"):
        validate_bundle(path)
    edit_json(path / "configs/metadata.json", lambda d: d.pop("modelselector"))
    with pytest.raises(BundleError, match="--modality"):
        validate_bundle(path)
    (path / "configs/inference.json").write_text("{not json")
    with pytest.raises(BundleError):
        validate_bundle(path)


@pytest.mark.parametrize(
    "key, value",
    [
        ("network_def", {"_target_": "os.system", "command": "echo pwned"}),
        ("network_def", {"_target_": "mymodule.TinyNet"}),
        ("hook", "$__import__('os').system('echo pwned')"),
        ("hook", ["$import subprocess"]),
        ("hook", "$torch.hub.load('x/y', 'net')"),
    ],
)
def test_untrusted_code_refused(tmp_path, key, value):
    path = make_bundle(tmp_path)

    def put(d):  # a top-level item counts when the network refers to it
        d.update({key: value})
        if key != "network_def":
            d["network_def"]["spatial_dims"] = f"@{key}"

    edit_json(path / "configs/inference.json", put)
    with pytest.raises(BundleError, match="untrusted"):
        load_bundle(path)


def test_trusted_custom_network_loads(tmp_path):
    path = make_bundle(tmp_path)
    (path / "scripts").mkdir()
    (path / "scripts/__init__.py").write_text("")
    (path / "scripts/tinynet.py").write_text(
        "import torch\n"
        "class TinyNet(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv3d(1, 2, 1)\n"
        "    def forward(self, x):\n"
        "        return self.conv(x)\n"
    )
    torch.save(
        {"conv." + k: v for k, v in torch.nn.Conv3d(1, 2, 1).state_dict().items()}, path / "models/model.pt"
    )
    edit_json(
        path / "configs/inference.json",
        lambda d: d.update(network_def={"_target_": "scripts.tinynet.TinyNet"}),
    )
    with pytest.raises(BundleError, match="untrusted"):
        load_bundle(path)
    assert type(load_bundle(path, trust=True).network).__name__ == "TinyNet"


def test_two_trusted_bundles_with_their_own_scripts_each_build_their_own_network(tmp_path):
    """MONAI bundles keep their code in a package of the same name (``scripts``): the second bundle built in a
    process got the first one's classes (two versions of one bundle: the new version built from the old code,
    without a word; two bundles: a ModuleNotFoundError)."""
    paths = []
    for i, channels in enumerate((2, 3)):
        path = make_bundle(tmp_path / f"b{i}")
        (path / "scripts").mkdir()
        (path / "scripts/__init__.py").write_text("")
        (path / "scripts/tinynet.py").write_text(
            "import torch\n"
            f"VERSION = {i}\n"
            "class TinyNet(torch.nn.Module):\n"
            "    def __init__(self):\n"
            "        super().__init__()\n"
            f"        self.conv = torch.nn.Conv3d(1, {channels}, 1)\n"
            "    def forward(self, x):\n"
            "        from scripts.scale import FACTOR  # imported as it runs, as some bundles do\n"
            "        return self.conv(x) * FACTOR\n"
        )
        (path / "scripts/scale.py").write_text(f"FACTOR = {i + 1}\n")
        weights = torch.nn.Conv3d(1, channels, 1).state_dict()
        torch.save({"conv." + k: v for k, v in weights.items()}, path / "models/model.pt")
        edit_json(
            path / "configs/inference.json",
            lambda d: d.update(network_def={"_target_": "scripts.tinynet.TinyNet"}),
        )
        paths.append(path)
    first, second = (load_bundle(p, trust=True).network for p in paths)
    assert first.conv.out_channels == 2 and second.conv.out_channels == 3
    assert type(first).__module__ == "scripts.tinynet" and "scripts.tinynet" not in sys.modules  # none left
    x = torch.ones(1, 1, 2, 2, 2)
    with torch.no_grad():  # what each network imports while it runs is its own bundle's, after both are built
        assert torch.allclose(first(x), first.conv(x) * 1) and torch.allclose(second(x), second.conv(x) * 2)
    assert "scripts" not in sys.modules  # lent while running, taken away after


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_weights_only_refuses_pickled_objects(tmp_path):
    path = make_bundle(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"weight": _Evil(str(marker))}, path / "models/model.pt")
    with pytest.raises(BundleError, match="holds more than tensors") as e:
        load_bundle(path)
    assert not marker.exists()
    # the forbidden global is named; torch's advice to load it with weights_only=False is not passed on
    told = str(e.value).split("model.pt: ", 1)[1]
    assert "Unsupported global: GLOBAL io.open" in told and "weights_only" not in told
    assert len(str(e.value).splitlines()) == 1


def test_checkpoint_dict_and_mismatched_weights(tmp_path):
    path = make_bundle(tmp_path)
    net = make_net(5).eval()
    torch.save({"model": net.state_dict(), "epoch": 3}, path / "models/model.pt")
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(load_bundle(path).network(x), net(x))
    torch.save({"state_dict": {"foo": torch.zeros(1)}}, path / "models/model.pt")
    with pytest.raises(BundleError, match="do not fit"):
        load_bundle(path)


# --- zoo --------------------------------------------------------------------------------------------
def test_zoo_open_errors(tmp_path):
    with pytest.raises(ZooError, match="zoo init"):
        Zoo(tmp_path / "missing")
    with pytest.raises(ZooError, match="zoo init"):
        Zoo(tmp_path)
    (tmp_path / "zoo.json").write_text("{broken")
    with pytest.raises(ZooError, match="corrupt"):
        Zoo(tmp_path)
    with pytest.raises(ZooError, match="corrupt"):
        Zoo.create(tmp_path)  # never overwrites a corrupt catalog


def test_zoo_create_refuses_a_folder_of_other_files(tmp_path):
    data = tmp_path / "data"
    (data / "imagesTr").mkdir(parents=True)
    (data / "dataset.json").write_text("{}")
    with pytest.raises(ZooError, match=r"not a zoo and holds other files \(dataset.json, imagesTr\)"):
        Zoo.create(data)
    assert sorted(p.name for p in data.iterdir()) == ["dataset.json", "imagesTr"]  # nothing added
    interrupted = tmp_path / "zoo"
    (interrupted / "models").mkdir(parents=True)  # what a create killed before its catalog leaves
    assert Zoo.create(interrupted).names() == []


def test_zoo_api_versions_and_errors(tmp_path):
    zoo = Zoo.create(tmp_path / "zoo")
    assert zoo.list() == [] and Zoo.create(tmp_path / "zoo").path == zoo.path
    entry = zoo.add(make_bundle(tmp_path))
    assert entry["name"] == "liver_ct" and entry["version"] == "0.1.0"
    assert entry["path"] == "models/liver_ct/0.1.0" and entry["metrics"] == {"dice": 0.875}
    with pytest.raises(
        ZooError, match=r"already in the zoo; .*`modelselector zoo remove liver_ct --zoo .*zoo`"
    ):
        zoo.add(make_bundle(tmp_path))
    zoo.add(make_bundle(tmp_path, version="0.2.0", seed=1))
    zoo = Zoo(zoo.path)
    assert zoo.get("liver_ct") == zoo.path / "models/liver_ct/0.2.0"
    assert zoo.versions("liver_ct") == ["0.1.0", "0.2.0"]
    assert zoo.card("liver_ct").version == "0.2.0"
    [item] = zoo.list()
    assert item["version"] == "0.2.0" and item["modality"] == "CT" and item["labels"] == ["Liver"]
    with pytest.raises(ZooError, match="known models: liver_ct"):
        zoo.get("spleen")
    zoo.add(make_bundle(tmp_path), name="liver2")
    assert zoo.card("liver2").name == "liver2"
    zoo.remove("liver_ct", version="0.2.0")
    assert zoo.get("liver_ct").name == "0.1.0"
    # the removal is in the history, and its number is never given to a later version
    [event] = zoo.history("liver_ct")
    assert (event["action"], event["version"], event["current"]) == ("remove", "0.2.0", "0.1.0")
    assert zoo.next_version("liver_ct") == "0.2.1"
    zoo.remove("liver_ct")
    assert zoo.names() == ["liver2"] and not (zoo.path / "models/liver_ct").exists()
    assert json.loads((zoo.path / "zoo.json").read_text(encoding="utf-8"))["format"] == 1


def test_zoo_refuses_invalid_bundle(tmp_path):
    zoo = Zoo.create(tmp_path / "zoo")
    path = make_bundle(tmp_path)
    torch.save({"foo": torch.zeros(1)}, path / "models/model.pt")
    with pytest.raises(BundleError, match="do not fit"):
        zoo.add(path)
    assert zoo.list() == [] and list((zoo.path / "models").iterdir()) == []


def test_cli_zoo_commands(tmp_path, capsys):
    zoo = str(tmp_path / "zoo")
    rc, out, _ = run_cli(capsys, "zoo", "init", "--zoo", zoo)
    assert rc == 0 and "Created" in out
    rc, out, _ = run_cli(capsys, "zoo", "list", "--zoo", zoo)
    assert rc == 0 and "holds no models" in out
    rc, out, err = run_cli(capsys, "zoo", "add", str(make_bundle(tmp_path)), "--zoo", zoo)
    assert rc == 0 and "Added liver_ct version 0.1.0" in out, err
    rc, out, _ = run_cli(capsys, "zoo", "list", "--zoo", zoo)
    assert rc == 0
    header, _, row = out.splitlines()[:3]
    assert header.split()[:3] == ["NAME", "VERSION", "TASK"]
    assert row.split()[:6] == ["liver_ct", "0.1.0", "segmentation", "CT", "ABDOMEN", "Liver"]
    rc, out, _ = run_cli(capsys, "zoo", "show", "liver_ct", "--zoo", zoo)
    assert rc == 0 and "modality: CT" in out and "Liver" in out and "dice=0.875" in out
    rc, out, err = run_cli(capsys, "zoo", "show", "spleen", "--zoo", zoo)
    assert rc == ZooError.exit_code and "liver_ct" in err and len(err.strip().splitlines()) == 1
    rc, out, _ = run_cli(capsys, "zoo", "remove", "liver_ct", "--zoo", zoo)
    assert rc == 0 and "Removed liver_ct" in out
    assert Zoo(zoo).list() == []
    rc, _, err = run_cli(capsys, "zoo", "list", "--zoo", str(tmp_path / "nowhere"))
    assert rc == ZooError.exit_code and "zoo init" in err and "Traceback" not in err


def test_cli_refuses_untrusted_bundle(tmp_path, capsys):
    zoo = Zoo.create(tmp_path / "zoo")
    path = make_bundle(tmp_path)
    edit_json(path / "configs/inference.json", lambda d: d["network_def"].update(_target_="os.system"))
    rc, out, err = run_cli(capsys, "zoo", "add", str(path), "--zoo", str(zoo.path))
    assert rc == BundleError.exit_code and rc != 0
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "untrusted" in err and "--trust" in err
    assert Zoo(zoo.path).list() == []


def test_default_zoo_path(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELSELECTOR_ZOO", str(tmp_path))
    assert default_zoo_path() == tmp_path
    monkeypatch.delenv("MODELSELECTOR_ZOO")
    assert default_zoo_path() == Path(__file__).resolve().parents[2] / "Resources" / "zoo"


# --- crash safety ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fail_on", ["bundle", "catalog"])
def test_interrupted_add_keeps_previous_zoo(tmp_path, capsys, monkeypatch, fail_on):
    zoo = Zoo.create(tmp_path / "zoo")
    zoo.add(make_bundle(tmp_path, name="first"))
    before = (zoo.path / "zoo.json").read_bytes()
    real_replace = os.replace

    def failing_replace(src, dst, *args, **kwargs):
        is_catalog = Path(dst).name == "zoo.json"
        if (fail_on == "catalog") == is_catalog:
            raise KeyboardInterrupt  # the user pressed Ctrl-C (or the process was killed) right here
        return real_replace(src, dst, *args, **kwargs)

    second = make_bundle(tmp_path, name="second")
    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    rc, _, err = run_cli(capsys, "zoo", "add", str(second), "--zoo", str(zoo.path))
    monkeypatch.undo()
    assert rc == 130 and "cancelled" in err
    assert (zoo.path / "zoo.json").read_bytes() == before
    reopened = Zoo(zoo.path)
    assert reopened.names() == ["first"]
    assert load_bundle(reopened.get("first")).card.name == "first"
    assert sorted(p.name for p in (zoo.path / "models").iterdir()) == ["first"]  # no partial folder
    assert [p.name for p in zoo.path.iterdir() if p.name.startswith(".") and p.name != atomic.LOCK_NAME] == []
    # and the zoo still works afterwards
    reopened.add(second)
    assert Zoo(zoo.path).names() == ["first", "second"]


def test_a_bundle_put_in_the_zoo_by_hand_is_kept_and_only_the_zoos_own_leftovers_go(tmp_path, monkeypatch):
    """A writer removes what killed adds and removes of this zoo left (marked pending), never a bundle someone
    copied into models/ by hand: that was a colleague's only copy."""
    import shutil

    from ModelSelectorLib.zoo import catalog

    zoo = Zoo.create(tmp_path / "zoo")
    zoo.add(make_bundle(tmp_path, name="first"))
    by_hand = zoo.path / "models" / "colleague" / "1.0.0"
    shutil.copytree(make_bundle(tmp_path, name="colleague", version="1.0.0"), by_hand)
    killed_add = zoo.path / "models" / "first" / "0.2.0"  # renamed into place, then killed before the catalog
    shutil.copytree(zoo.get("first"), killed_add)
    (killed_add / catalog.PENDING_MARKER).touch()
    monkeypatch.setattr(catalog, "_delete", lambda folder: None)  # a remove killed after its catalog write
    zoo.add(make_bundle(tmp_path, name="second"))
    zoo.remove("second")
    monkeypatch.undo()
    assert (zoo.path / "models" / "second" / "0.1.0" / catalog.PENDING_MARKER).is_file()
    zoo.add(make_bundle(tmp_path, name="third"))  # the next writer cleans up
    assert by_hand.is_dir() and not killed_add.exists() and not (zoo.path / "models" / "second").exists()
    assert not list(zoo.path.rglob(catalog.PENDING_MARKER))  # listed bundles carry no mark
    with pytest.raises(
        ZooError, match="a folder that zoo.json does not list is already there .* move it out"
    ):
        zoo.add(by_hand)
    assert by_hand.is_dir() and sorted(Zoo(zoo.path).names()) == ["first", "third"]


# --- standard MONAI bundles -------------------------------------------------------------------------------
def make_monai_bundle(root: Path) -> tuple:
    """A bundle as MONAI's model zoo ships it, written with MONAI's own ``init_bundle``."""
    from monai.bundle.scripts import DEFAULT_INFERENCE, DEFAULT_METADATA, init_bundle

    meta = json.loads(json.dumps(DEFAULT_METADATA))
    meta.update(
        name="Spleen CT segmentation",
        version="0.5.2",
        task="Decathlon spleen segmentation",
        license="Apache-2.0",
        network_data_format={
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                                 "spatial_shape": [16, 16, 16], "dtype": "float32"}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                                 "spatial_shape": [16, 16, 16], "dtype": "float32",
                                 "channel_def": {"0": "background", "1": "spleen"}}},
        },
    )  # fmt: skip
    inference = json.loads(json.dumps(DEFAULT_INFERENCE))
    inference["imports"] = ["$import glob", "$import os"]
    inference["network_def"] = {**NETWORK_DEF, "_target_": "UNet"}  # bare MONAI name, as the zoo writes it
    net = make_net(11).eval()
    path = root / "spleen_ct_segmentation"
    init_bundle(path, network=net, metadata_str=meta, inference_str=inference)
    return path, net


def test_standard_monai_bundle_import(tmp_path, capsys):
    src, net = make_monai_bundle(tmp_path)
    with pytest.raises(BundleError, match="does not state its body region; pass --body-region") as e:
        import_monai_bundle(src)  # the modality is in network_data_format.inputs.image.modality
    assert "--modality" not in str(e.value)
    card = import_monai_bundle(src, body_region="abdomen")
    assert (card.name, card.version, card.modality, card.body_region) == (
        "Spleen_CT_segmentation",
        "0.5.2",
        "CT",
        "ABDOMEN",
    )
    assert card.label_names == ["spleen"] and card.roi_size == [16, 16, 16] and card.input_channels == 1
    # MONAI's template preprocessing: ScaleIntensityd (the image's minimum and maximum to [0, 1])
    assert (
        card.intensity == {"mode": "percentile", "a_min": 0.0, "a_max": 100.0}
        and card.license == "Apache-2.0"
    )
    # "MRI", as many model-zoo bundles write it, is DICOM's MR
    edit_json(
        src / "configs/metadata.json",
        lambda d: d["network_data_format"]["inputs"]["image"].update(modality="MRI"),
    )
    assert import_monai_bundle(src, body_region="HEAD").modality == "MR"
    edit_json(
        src / "configs/metadata.json", lambda d: d["network_data_format"]["inputs"]["image"].pop("modality")
    )
    with pytest.raises(BundleError, match="does not state its modality and body region"):
        import_monai_bundle(src)

    zoo = str(Zoo.create(tmp_path / "zoo").path)
    rc, _, err = run_cli(capsys, "zoo", "add", str(src), "--zoo", zoo)
    assert rc == BundleError.exit_code and "--modality" in err and "--body-region" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    rc, out, err = run_cli(capsys, "zoo", "add", str(src), "--zoo", zoo, "--name", "spleen",
                           "--modality", "CT", "--body-region", "ABDOMEN")  # fmt: skip
    assert rc == 0 and "Added spleen version 0.5.2" in out, err
    rc, out, _ = run_cli(capsys, "zoo", "show", "spleen", "--zoo", zoo)
    assert rc == 0 and "spleen" in out and "body_region: ABDOMEN" in out
    loaded = load_bundle(Zoo(zoo).get("spleen"))
    assert loaded.card.name == "spleen" and loaded.card.modality == "CT"
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.network(x), net(x))
    assert (
        json.loads((src / "configs/metadata.json").read_text(encoding="utf-8")).get("modelselector") is None
    )  # source untouched


def test_weights_replaced_in_the_zoo_are_refused_before_they_answer(tmp_path):
    """Another model's weights of the same shape load without complaint and give wrong answers: the zoo records
    each version's weights when it is added and `apply` checks them."""
    import shutil

    from ModelSelectorLib.apply import open_runtime
    from ModelSelectorLib.provenance import file_digest
    from ModelSelectorLib.zoo.bundle import WEIGHTS_FILE

    zoo = Zoo.create(tmp_path / "zoo")
    zoo.add(make_bundle(tmp_path, name="liver_ct", seed=0))
    other = make_bundle(tmp_path, name="other", seed=1)
    weights = zoo.get("liver_ct") / WEIGHTS_FILE
    assert zoo.version_info("liver_ct")["weights"] == file_digest(weights)
    open_runtime(zoo, "liver_ct")
    shutil.copy(other / WEIGHTS_FILE, weights)
    load_bundle(zoo.get("liver_ct"))  # loads: same architecture
    with pytest.raises(
        BundleError,
        match=r"not the weights the zoo recorded for liver_ct 0\.1\.0 .* zoo remove liver_ct --version 0\.1\.0",
    ):
        open_runtime(zoo, "liver_ct")


def test_a_card_whose_labels_do_not_match_the_network_outputs_is_refused(tmp_path):
    """A label's value is its output channel: a card edited to name three labels for a two-channel network wrote
    segments named wrongly ("Label 3") without a word."""
    bundle = make_bundle(tmp_path)
    meta_file = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    meta["modelselector"]["labels"].append({"value": 2, "name": "Spleen", "color": [0.0, 1.0, 0.0]})
    meta_file.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(BundleError, match=r"labels end at value 2 but the network has 2 output channels"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    "preprocessing, axcodes",
    [
        ({"_target_": "Compose", "transforms": [{"_target_": "OrientationDict", "keys": "image", "axcodes": "LPS"}]}, "LPS"),
        ([{"_target_": "monai.transforms.Orientationd", "keys": "image", "axcodes": "@codes"}], "LPS"),
        ("@pre", "LPS"),
        ([{"_target_": "Orientationd", "keys": "image", "axcodes": "LPS", "_disabled_": True}], "RAS"),
        ([{"_target_": "Orientationd", "keys": "image", "axcodes": "$'LPS'"}], "RAS"),
    ],
)  # fmt: skip
def test_the_runtime_orients_as_zoo_add_read_the_bundle(preprocessing, axcodes):
    """apply used to find Orientationd only as a literal item of a Compose's list: an OrientationDict, a list, a
    reference or a disabled item that zoo add accepted ran in RAS, flipped against what the bundle asks."""
    from types import SimpleNamespace

    from ModelSelectorLib.models.segmentation import axcodes_of

    pre = [{"_target_": "Orientationd", "keys": "image", "axcodes": "LPS"}]
    config = {"preprocessing": preprocessing, "codes": "LPS", "pre": pre}
    assert axcodes_of(SimpleNamespace(config=config)) == axcodes


def test_a_renamed_bundle_keeps_both_changelog_texts_of_its_version(tmp_path):
    from ModelSelectorLib.zoo.bundle import read_metadata, write_card

    bundle = make_bundle(tmp_path)
    card = validate_bundle(bundle)
    write_card(bundle, ModelCard.from_dict({**card.to_dict(), "name": "liver2"}))
    meta = read_metadata(bundle)
    assert meta["name"] == "liver2" and meta["version"] == card.version
    assert meta["changelog"][card.version].endswith(
        f"; liver2 {card.version}, made from liver_ct {card.version}"
    )


def test_a_model_folder_given_as_a_bundle_names_its_versions(tmp_path):
    """``promote --candidate ZOO/models/NAME`` (the model, not one of its versions) said only that the folder is
    not a complete bundle."""
    for version in ("0.1.0", "0.1.10", "0.1.9"):
        make_bundle(tmp_path / "models", name="liver", version=version)
        (tmp_path / "models" / f"liver-{version}").rename(tmp_path / "models" / version)
    with pytest.raises(BundleError, match=r"a model folder holding the bundles of versions 0\.1\.0, 0\.1\.9, "
                                          r"0\.1\.10, not a bundle; give one of them \(.*0\.1\.10\)"):  # fmt: skip
        validate_bundle(tmp_path / "models")


def test_a_reference_written_as_an_expression_is_read_as_the_reference():
    """``"$@pixdim"`` evaluates to the item ``pixdim`` (MONAI's templates write it so); it was refused as an
    expression. A refusal inside a list or an object names the item."""
    from ModelSelectorLib.models.preprocessing import Unreproducible, plain_value

    config = {"pixdim": [1.5, 1.5, 2.0]}
    assert plain_value("$@pixdim", config, "Spacingd.pixdim") == [1.5, 1.5, 2.0]
    assert plain_value("$ @pixdim ", config, "Spacingd.pixdim") == [1.5, 1.5, 2.0]
    with pytest.raises(Unreproducible, match=r"the reference '\$@missing', not a plain value"):  # as written
        plain_value("$@missing", config, "Spacingd.pixdim")
    with pytest.raises(Unreproducible, match=r"Spacingd.pixdim\[2\] is the expression"):
        plain_value([1.0, 1.0, "$@pixdim[0] * 2"], config, "Spacingd.pixdim")
    with pytest.raises(Unreproducible, match=r"ScaleIntensityRanged.b.max is the expression"):
        plain_value({"max": "$@x + 1"}, config, "ScaleIntensityRanged.b")


def test_a_network_that_does_not_build_names_the_monai_version_it_was_written_for(tmp_path):
    """A network's arguments change between MONAI versions (SwinUNETR lost ``img_size``): the refusal says
    which MONAI the bundle was written for when that is not this one."""
    import monai

    path = make_bundle(tmp_path)
    edit_json(path / "configs/inference.json", lambda d: d["network_def"].update(img_size=[96, 96, 96]))
    edit_json(path / "configs/metadata.json", lambda d: d.update(monai_version="1.4.0"))
    with pytest.raises(BundleError, match=r"could not be built \(TypeError: .*img_size.*\); the bundle was "
                                          rf"written for MONAI 1\.4\.0, this environment has {monai.__version__}"):  # fmt: skip
        load_bundle(path)
    edit_json(path / "configs/metadata.json", lambda d: d.update(monai_version=monai.__version__))
    with pytest.raises(BundleError, match=r"img_size.*\)\.$"):  # the same version: no note
        load_bundle(path)
