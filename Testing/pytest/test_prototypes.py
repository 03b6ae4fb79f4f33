"""Making and refreshing a model's prototypes: after an encoder change, what a run reports, exemplar folders
(DICOM series), damaged prototype files and exemplars of another domain.

A one-model zoo (a tiny random UNet with an MR HEAD card) and a stand-in encoder keep these tests to seconds:
the stand-in reads an image with air below -500 (a CT) as CT:ABDOMEN and anything else as MR:HEAD, and each
instance has its own id, as a retrained encoder would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bad_inputs as bad  # noqa: E402

from ModelSelectorLib.datasets import make_synthetic_case  # noqa: E402
from ModelSelectorLib.errors import BundleError, InputError  # noqa: E402
from ModelSelectorLib.io import write_image  # noqa: E402

MODEL = "mr-head"


class StubEncoder:
    """An encoder's interface without its network: two views per image, classes by the image's air."""

    classes = ["MR:HEAD", "CT:ABDOMEN", "DX:CHEST", "OT:OOD"]

    def __init__(self, ident: str) -> None:
        self._modelselector_id = ident
        self.embedded = 0

    def embed(self, image):
        from ModelSelectorLib.selection.encoder import EMBED_DIM

        self.embedded += 1
        emb = np.zeros((2, EMBED_DIM), np.float32)
        emb[:, 0 if float(np.min(image.array)) < -500 else 1] = 1.0
        return emb

    def image_probabilities(self, emb, image):
        return np.array([0.05, 0.95, 0.0, 0.0] if emb[0, 0] > 0.5 else [0.95, 0.05, 0.0, 0.0])


@pytest.fixture
def zoo(tmp_path):
    """A zoo holding one MR HEAD model without prototypes."""
    from monai.bundle import ConfigParser

    from ModelSelectorLib.zoo import ModelCard, Zoo, save_bundle

    torch.manual_seed(0)
    net = ConfigParser({"net": dict(bad.NETWORK_DEF)}).get_parsed_content("net")
    card = {**bad.card_dict(MODEL), "modality": "MR", "body_region": "HEAD", "intensity": {"mode": "mr"}}
    src = save_bundle(tmp_path / "src", ModelCard.from_dict(card), bad.NETWORK_DEF, net.state_dict())
    z = Zoo.create(tmp_path / "zoo")
    z.add(src)
    return z


@pytest.fixture
def data(tmp_path):
    """A data folder with two MR volumes and one CT volume."""
    root = tmp_path / "data"
    (root / "mr").mkdir(parents=True)
    for i in range(2):
        write_image(make_synthetic_case(i, "mr")[0], root / "mr" / f"case{i}.nii.gz")
    write_image(make_synthetic_case(5, "ct")[0], root / "ct.nii.gz")
    return root


def _dicom_series(folder: Path, uid: str, seed: int = 0) -> Path:
    """A DICOM series of an MR-like volume whose files have no extension (as many scanners export them)."""
    bad.dicom_series(folder, (uid,), slices=12)
    for k, f in enumerate(sorted(folder.glob("*.dcm"))):
        f.rename(folder / f"IM{seed}{k:04d}")
    return folder


def _stored(zoo):
    from ModelSelectorLib.selection.prototypes import load_prototypes

    return load_prototypes(zoo.get(MODEL))


# --- 1. an encoder change ----------------------------------------------------------------------------------
def test_an_encoder_change_embeds_stored_exemplars_again_from_their_sources(zoo, data):
    """The shipped cards list no example inputs: after an encoder change, stored exemplars are embedded again
    from their recorded sources (found under --data), never silently dropped."""
    from ModelSelectorLib.selection.prototypes import generate_for_model

    files = sorted((data / "mr").glob("*.nii.gz"))
    generate_for_model(zoo, MODEL, exemplars=files, data_free=0, encoder=StubEncoder("old"), source_root=data)
    before = _stored(zoo)
    assert {r["source"] for r in before.rows} == {"mr/case0.nii.gz", "mr/case1.nii.gz"}

    new = StubEncoder("new")
    with pytest.raises(InputError, match=r"mr-head: 2 of the 2 exemplar.*--data DIR.*--drop-missing"):
        generate_for_model(zoo, MODEL, data_free=0, encoder=new)
    assert _stored(zoo).meta["encoder"] == "old"  # refused: nothing changed

    info: dict = {}
    pset = generate_for_model(zoo, MODEL, data_free=0, encoder=new, data_roots=[data], info=info)
    assert info["exemplar"] == "re-embedded" and new.embedded == 2
    assert pset.meta["encoder"] == "new" and _stored(zoo).meta["encoder"] == "new"
    assert [r["source"] for r in pset.rows] == [r["source"] for r in before.rows]  # sources kept as recorded

    (data / "mr" / "case1.nii.gz").unlink()
    warnings: list = []
    pset = generate_for_model(zoo, MODEL, data_free=0, encoder=StubEncoder("newer"), data_roots=[data],
                              drop_missing=True, warn=warnings.append)  # fmt: skip
    assert {r["source"] for r in pset.rows} == {"mr/case0.nii.gz"}
    assert (
        len(warnings) == 1 and "mr-head: 1 of the 2 exemplar(s)" in warnings[0] and "dropped" in warnings[0]
    )


def test_prototypes_all_refuses_before_touching_any_model_then_takes_data(zoo, data, monkeypatch, capsys):
    from ModelSelectorLib.cli import main
    from ModelSelectorLib.selection import encoder as encoder_module
    from ModelSelectorLib.selection import prototypes as prototypes_module
    from ModelSelectorLib.selection.prototypes import generate_for_model

    generate_for_model(
        zoo, MODEL, exemplars=[data / "mr"], data_free=0, encoder=StubEncoder("old"), source_root=data
    )
    new = StubEncoder("new")
    monkeypatch.setattr(encoder_module, "default_encoder", lambda: new)
    monkeypatch.setattr(prototypes_module, "default_encoder", lambda: new)
    z = str(zoo.path)
    assert main(["prototypes", "--zoo", z, "--all", "--data-free", "0"]) == InputError.exit_code
    err = capsys.readouterr().err
    assert (
        "mr-head: 2 of the 2 exemplar(s)" in err
        and "--data DIR" in err
        and len(err.strip().splitlines()) == 1
    )
    assert _stored(zoo).meta["encoder"] == "old"
    assert main(["prototypes", "--zoo", z, "--all", "--data-free", "0", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "4 exemplar and 0 data-free" in out and "embedded again" in out
    assert _stored(zoo).meta["encoder"] == "new"


# --- 2. report what this run did ---------------------------------------------------------------------------
def test_data_free_zero_does_not_report_a_synthesis_it_did_not_run(zoo, data, monkeypatch, capsys):
    from ModelSelectorLib.cli import main
    from ModelSelectorLib.selection import encoder as encoder_module
    from ModelSelectorLib.selection import prototypes as prototypes_module
    from ModelSelectorLib.selection.prototypes import PrototypeSet, generate_for_model, save_prototypes

    enc = StubEncoder("same")
    pset = generate_for_model(zoo, MODEL, exemplars=[data / "mr"], data_free=0, encoder=enc, source_root=data)
    stale = {
        "n_inputs": 2,
        "method": "bn-matching",
        "bn_layers": 3,
        "steps": 20,
        "seconds": 6.69,
        "created": "then",
    }
    df = PrototypeSet(np.eye(2, pset.dim, dtype=np.float32), [{"origin": "data-free", "source": f"synthesised-{i}",
                      "view": 0} for i in range(2)], MODEL, "0.1.0", {"data-free": stale})  # fmt: skip
    merged = pset.merged(df)
    save_prototypes(zoo.get(MODEL), PrototypeSet(merged.vectors, merged.rows, MODEL, "0.1.0", merged.meta))
    monkeypatch.setattr(encoder_module, "default_encoder", lambda: enc)
    monkeypatch.setattr(prototypes_module, "default_encoder", lambda: enc)
    for which in (["--model", MODEL], ["--all"]):
        assert main(["prototypes", "--zoo", str(zoo.path), *which, "--data-free", "0"]) == 0
        out = capsys.readouterr().out
        assert "synthesised with" not in out and "6.69" not in out
        assert (
            "data-free prototypes: the stored ones, unchanged" in out and "4 exemplar and 2 data-free" in out
        )


# --- 3. exemplar folders -----------------------------------------------------------------------------------
def test_exemplar_folders_take_dicom_series_without_extension_and_in_subfolders(zoo, data, tmp_path):
    from ModelSelectorLib.selection.prototypes import generate_for_model

    study = tmp_path / "study"
    _dicom_series(study / "series1", "1.2.826.0.1.3680043.2.1125.7", 1)
    _dicom_series(study / "series2", "1.2.826.0.1.3680043.2.1125.8", 2)
    shutil.copytree(data / "mr", study / "nifti")
    warnings: list = []
    enc = StubEncoder("x")
    pset = generate_for_model(
        zoo, MODEL, exemplars=study / "series1", data_free=0, encoder=enc, warn=warnings.append
    )
    assert {r["source"] for r in pset.rows} == {str(study / "series1")}  # the folder is one exemplar
    pset = generate_for_model(zoo, MODEL, exemplars=study, data_free=0, encoder=enc, warn=warnings.append)
    assert {r["source"] for r in pset.rows} == {str(study / "series1"), str(study / "series2")}
    assert any("skipped" in w and "nifti" in w for w in warnings)

    mixed = tmp_path / "mixed"
    for uid, seed in (("1.2.826.0.1.3680043.2.1125.7", 1), ("1.2.826.0.1.3680043.2.1125.8", 2)):
        _dicom_series(tmp_path / f"m{seed}", uid, seed)
        shutil.copytree(tmp_path / f"m{seed}", mixed, dirs_exist_ok=True)
    with pytest.raises(InputError, match="mixes 2 DICOM series.*its own folder") as e:
        generate_for_model(zoo, MODEL, exemplars=mixed, data_free=0, encoder=enc)
    assert "--series" not in str(e.value)  # `prototypes` has no such option

    radiographs = bad.dicom_series(tmp_path / "dx", slices=1)  # two single-file series: each file is one
    pset = generate_for_model(zoo, MODEL, exemplars=radiographs, data_free=0, encoder=enc)
    assert {r["source"] for r in pset.rows} == {str(f) for f in radiographs.glob("*.dcm")} and len(pset) == 4


# --- 4. damaged prototype files ----------------------------------------------------------------------------
def test_a_truncated_prototypes_file_is_one_line_naming_it_and_the_remedy(zoo, data, capsys):
    pytest.importorskip("hnswlib")
    from ModelSelectorLib.cli import main
    from ModelSelectorLib.selection.prototypes import generate_for_model, load_prototypes

    enc = StubEncoder("x")
    generate_for_model(zoo, MODEL, exemplars=[data / "mr"], data_free=0, encoder=enc, source_root=data)
    assert main(["index", "build", "--zoo", str(zoo.path), "--no-calibrate"]) == 0
    npz = zoo.get(MODEL) / "prototypes" / "prototypes.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    remedy = f"modelselector prototypes --zoo {zoo.path.resolve()} --model {MODEL}"
    with pytest.raises(BundleError, match="prototypes.npz: truncated or damaged") as e:
        load_prototypes(zoo.get(MODEL))
    assert remedy in str(e.value)
    capsys.readouterr()
    for cmd in (["index", "add", "--model", MODEL], ["index", "build", "--no-calibrate"]):
        assert main([*cmd, "--zoo", str(zoo.path)]) != 0
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "prototypes.npz" in err and remedy in err
    # the remedy works: the records still name the exemplars, which are embedded again
    pset = generate_for_model(zoo, MODEL, data_free=0, encoder=enc, data_roots=[data])
    assert len(pset) == 4 and len(load_prototypes(zoo.get(MODEL))) == 4


# --- 5. exemplars of another domain ------------------------------------------------------------------------
def test_an_exemplar_of_another_modality_is_named_in_a_warning(zoo, data):
    from ModelSelectorLib.selection.prototypes import domain_mismatch, generate_for_model

    warnings: list = []
    files = [data / "mr" / "case0.nii.gz", data / "ct.nii.gz"]
    generate_for_model(
        zoo, MODEL, exemplars=files, data_free=0, encoder=StubEncoder("x"), warn=warnings.append
    )
    assert len(warnings) == 1
    assert (
        "ct.nii.gz" in warnings[0]
        and "most likely CT:ABDOMEN, 0.95" in warnings[0]
        and "MR:HEAD" in warnings[0]
    )
    # a card whose domain the encoder has no class for: only the modality can be compared
    card = zoo.card(MODEL)
    card.body_region = "PELVIS"  # no class of the stand-in encoder
    image = make_synthetic_case(0, "mr")[0]
    enc = StubEncoder("y")
    assert domain_mismatch(enc, enc.embed(image), image, card) is None
    card.modality = "CT"
    assert "MR:HEAD" in domain_mismatch(enc, enc.embed(image), image, card)


def test_stored_records_keep_sources_relative_to_the_data_folder(zoo, data):
    """A shipped bundle names no machine path, also after its exemplars were embedded again."""
    from ModelSelectorLib.selection.prototypes import generate_for_model

    generate_for_model(
        zoo, MODEL, exemplars=[data / "mr"], data_free=0, encoder=StubEncoder("a"), source_root=data
    )
    generate_for_model(zoo, MODEL, data_free=0, encoder=StubEncoder("b"), data_roots=[data])
    records = json.loads((zoo.get(MODEL) / "prototypes" / "prototypes.json").read_text(encoding="utf-8"))
    assert {r["source"] for r in records["rows"]} == {"mr/case0.nii.gz", "mr/case1.nii.gz"}


def test_data_free_inputs_come_back_in_the_units_the_card_normalises():
    """A CT card without an intensity block is normalised with the CT window (not a z-score), and an imported
    card may scale to [b_min, b_max]: the synthesised inputs are mapped back to Hounsfield units either way."""
    from ModelSelectorLib.models.preprocessing import normalize_intensity
    from ModelSelectorLib.selection.inversion import _intensity_range, denormalize

    hu = np.array([-1000.0, -200.0, 0.0, 40.0, 400.0, 1000.0], np.float32)
    for intensity, modality in ((None, "CT"), ({"mode": "ct", "a_min": -1000.0, "a_max": 1000.0, "b_min": -1.0,
                                                "b_max": 1.0}, "CT")):  # fmt: skip
        net_input = normalize_intensity(hu, intensity, modality)
        lo, hi, _ = _intensity_range(intensity, modality)
        assert lo <= net_input.min() and net_input.max() <= hi
        np.testing.assert_allclose(denormalize(net_input, intensity, modality), hu, atol=0.05)


def test_a_read_only_bundle_is_refused_before_any_prototype_is_made(zoo, data, monkeypatch):
    """prototypes ran the whole synthesis, then failed naming an internal temporary folder."""
    import stat

    from ModelSelectorLib.errors import OutputError
    from ModelSelectorLib.selection import prototypes

    def no_synthesis(*args, **kwargs):
        raise AssertionError("synthesised before the bundle was checked")

    monkeypatch.setattr(prototypes, "data_free_prototypes", no_synthesis)
    bundle = zoo.get(MODEL)
    bundle.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(OutputError, match=rf"{bundle}: the folder is write-protected"):
            prototypes.generate_for_model(zoo, MODEL, data_free=2, encoder=StubEncoder("x"))
    finally:
        bundle.chmod(stat.S_IRWXU)
