"""The bad-input corpus: what a careless user or an attacker may hand the program, and the outcome it must have.

Each table row is one case: a fixture made by :mod:`bad_inputs` and the expected answer, either a one-line
error (exit status and a phrase of the message) or the right result. No case may end in a traceback, a hang,
a crash, a silent wrong output or a changed zoo; command-line cases run ``modelselector`` as a separate
process, and the zoo's files are compared before and after every failing command.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bad_inputs as bad
import numpy as np
import pytest
import SimpleITK as sitk

from ModelSelectorLib.errors import BundleError, InputError
from ModelSelectorLib.io import read_image

TINY = "tiny-ct"


def _set(index: Any, value: float):
    def change(arr: np.ndarray) -> None:
        arr[index] = value

    return change


# --- image files (read_image) ----------------------------------------------------------------------------
IMAGES = [
    # case                                  fixture                                                    error (None: reads)
    ("nii.gz cut at 500 bytes",             bad.cut(bad.written("c.nii.gz"), 500),                     "truncated"),
    ("nii.gz cut at 70 %",                  bad.cut(bad.written("c.nii.gz"), 0.7),                     "truncated"),
    ("nii.gz with a wrong CRC",             bad.bad_gzip_crc,                                          "damaged"),
    ("nii cut at 70 %",                     bad.cut(bad.written("c.nii", compress=False), 0.7),       "truncated"),
    ("nrrd (gzip) cut at 70 %",             bad.cut(bad.written("c.nrrd"), 0.7),                       "truncated"),
    ("nrrd (raw) cut at 70 %",              bad.cut(bad.written("c.nrrd", compress=False), 0.7),      "truncated"),
    ("mha (zlib) cut at 70 %",              bad.cut(bad.written("c.mha"), 0.7),                        "truncated"),
    ("mha (raw) cut at 70 %",               bad.cut(bad.written("c.mha", compress=False), 0.7),       "truncated"),
    ("jpeg cut in half",                    bad.cut(bad.radiograph(8, ".jpg"), 0.5),                   "JPEG data is incomplete"),
    ("png cut in half",                     bad.cut(bad.radiograph(8), 0.5),                           "PNG data is incomplete"),
    ("NIfTI with one NaN voxel",            bad.nifti_array("n.nii.gz", _set((1, 2, 3), np.nan)),      "1 of 5760 voxels are NaN"),
    ("NIfTI with NaN only",                 bad.nifti_array("n.nii", _set(..., np.nan)),               "every voxel is NaN"),
    ("NIfTI with +Inf",                     bad.nifti_array("i.nii.gz", _set((0, 0, 0), np.inf)),      "NaN or infinite"),
    ("NRRD with NaN",                       bad.nifti_array("n.nrrd", _set((5, 5, 5), np.nan)),        "NaN or infinite"),
    ("MHA with -Inf",                       bad.nifti_array("i.mha", _set((5, 5, 5), -np.inf)),        "NaN or infinite"),
    ("int16 NIfTI, scl_slope inf",          bad.nifti_int16_scaled(math.inf, 0.0),                     "scaling is not a finite number"),
    ("int16 NIfTI, scl_slope nan",          bad.nifti_int16_scaled(math.nan, 0.0),                     "scaling is not a finite number"),
    ("int16 NIfTI, scl_inter nan",          bad.nifti_int16_scaled(1.0, math.nan),                     "scaling is not a finite number"),
    ("int16 NIfTI, slope 1e38 overflows",   bad.nifti_int16_scaled(1e38, 0.0),                         "NaN or infinite"),
    ("int16 NIfTI, slope 2 inter 1",        bad.nifti_int16_scaled(2.0, 1.0),                          None),
    ("sheared .mhd",                        bad.metaimage_matrix("1 0 0 0.5 1 0 0 0 1"),               "not perpendicular"),
    ("sheared NIfTI (sform only)",          bad.sheared_nifti,                                         "not perpendicular"),
    ("degenerate .mhd (two equal axes)",    bad.metaimage_matrix("1 0 0 1 0 0 0 0 1"),                 "degenerate"),
    ("4D NIfTI",                            bad.image_4d,                                              "is 4D"),
    ("empty file",                          bad.empty_file,                                            "empty (0 bytes)"),
    ("constant volume",                     bad.constant,                                              "every voxel equals 5"),
    ("text file named .nii",                bad.text_as_nifti,                                         "not a NIfTI file"),
    ("NIfTI with a voxel size of 0",        bad.nifti_zero_voxel_size,                                 "voxel sizes 0.8 x 0.8 x 0 mm"),
    ("nii.gz named .png",                   bad.renamed(bad.written("c.nii.gz"), "c.png"),             "is a gzip-compressed NIfTI image, but its name ends in .png; rename it to end in .nii.gz"),
    ("nii.gz without extension",            bad.renamed(bad.written("c.nii.gz"), "c"),                 "its name has no extension; rename it to end in .nii.gz"),
    ("nii.gz named .nii",                   bad.renamed(bad.written("c.nii.gz"), "c.nii"),             "rename it to end in .nii.gz"),
    ("png named .nii.gz",                   bad.renamed(bad.radiograph(8), "x.nii.gz"),                "is a PNG picture, but its name ends in .nii.gz"),
    ("png named .jpg",                      bad.renamed(bad.radiograph(8), "x.jpg"),                   None),
    ("oblique float NIfTI",                 bad.written("ok.nii.gz"),                                  None),
    ("oblique MHA",                         bad.written("ok.mha"),                                     None),
]  # fmt: skip


@pytest.mark.parametrize("case, make, error", IMAGES, ids=[row[0] for row in IMAGES])
def test_image_file(tmp_path, case, make, error):
    path = make(tmp_path)
    if error is None:
        image = read_image(path)
        reference = sitk.ReadImage(str(path))
        assert np.isfinite(image.array).all()
        assert np.allclose(image.spacing, reference.GetSpacing()) and np.allclose(
            image.origin, reference.GetOrigin()
        )
        assert np.allclose(image.direction, reference.GetDirection())
        return
    with pytest.raises(InputError) as raised:
        read_image(path)
    message = str(raised.value)
    assert error in message and str(path) in message and "\n" not in message


def test_int16_scaling_is_applied(tmp_path):
    image = read_image(bad.nifti_int16_scaled(2.0, 1.0)(tmp_path))
    assert image.array.ravel()[:3].tolist() == [1.0, 3.0, 5.0]


def test_mixed_dicom_series_name_the_option_that_chooses_one(tmp_path):
    folder = bad.dicom_series(tmp_path / "dicom")
    with pytest.raises(InputError) as raised:
        read_image(folder)
    uids = ("1.2.826.0.1.3680043.2.1125.1", "1.2.826.0.1.3680043.2.1125.2")
    assert "--series UID" in str(raised.value) and all(uid in str(raised.value) for uid in uids)
    image = read_image(folder, series_uid=uids[1])
    assert image.array.shape == (4, 16, 16) and np.allclose(image.spacing, (0.7, 0.7, 2.5))


# --- bit depth (item 9): one radiograph saved with 8, 12 and 16 bits ------------------------------------------
@pytest.fixture(scope="module")
def radiographs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bits")
    return {bits: read_image(bad.radiograph(bits)(folder)) for bits in (8, 12, 16)}


def test_bit_depth_does_not_change_intensities(radiographs):
    ref = radiographs[8].array.astype(np.float32)
    for bits in (12, 16):
        image = radiographs[bits]
        assert image.meta["bit_depth"] == bits and image.array.dtype == np.float32
        assert (
            np.abs(image.array - ref).max() <= 255 * 0.005
        )  # 12 bits: x16 of 8 bits is 4080/4095 of full scale
        assert image.same_geometry(radiographs[8])


def test_bit_depth_does_not_change_selection(radiographs):
    import torch

    from ModelSelectorLib.selection.selector import select

    torch.set_num_threads(1)
    answers = {bits: select(image) for bits, image in radiographs.items()}
    fitting = {bits: [m.name for m in sel.fitting] for bits, sel in answers.items()}
    assert fitting[8] and fitting[12] == fitting[8] and fitting[16] == fitting[8]
    for bits in (12, 16):
        for a, b in zip(answers[bits].models, answers[8].models):
            assert a.name == b.name and abs(a.score - b.score) < 0.02


# --- the command line: arguments, output paths, bundles ------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A zoo with one tiny segmentation model, an image, and the files the command-line cases need."""
    from ModelSelectorLib.zoo import Zoo

    root = tmp_path_factory.mktemp("world")
    zoo = Zoo.create(root / "zoo")
    zoo.add(bad.tiny_bundle(root / "src"))
    w = {"root": root, "zoo": zoo.path, "image": bad.written("ct.nii.gz")(root)}
    w["truncated"] = bad.cut(bad.written("cut.nii.gz"), 0.7)(root)
    w["labelmap"] = bad.label_map(root)
    noise = np.random.default_rng(0).integers(0, 255, (300, 300)).astype(np.uint8)
    w["icon"] = bad.written("icon.png", sitk.GetImageFromArray(noise[:4, :4]))(root)
    w["line"] = bad.written("line.png", sitk.GetImageFromArray(noise[:1]))(root)
    w["dicom"] = bad.dicom_series(root / "dicom")
    (root / "afile").write_text("a file, not a folder\n")
    w["afile"] = root / "afile"
    w["readonly_dir"] = root / "readonly"
    w["readonly_dir"].mkdir()
    w["readonly_file"] = root / "protected.seg.nrrd"
    w["readonly_file"].write_bytes(b"keep me")
    os.chmod(w["readonly_file"], 0o444)
    os.chmod(w["readonly_dir"], 0o555)
    yield w
    os.chmod(w["readonly_dir"], 0o755)


def _bundle(world: dict, name: str, change=None, version: str = "0.2.0") -> Path:
    """A variant of the tiny bundle (a new version, so that only ``change`` can make it fail)."""
    src = bad.tiny_bundle(world["root"] / name, TINY, version)
    if change is not None:
        change(src)
    return src


def _link_out(src: Path) -> None:
    secret = src.parent / "secret.txt"
    secret.write_text("outside the bundle\n")
    os.symlink(secret, src / "docs" / "notes.txt")


def _link_loop(src: Path) -> None:
    os.symlink("b", src / "docs" / "a")
    os.symlink("a", src / "docs" / "b")


def _dir_loop(src: Path) -> None:
    os.symlink("..", src / "docs" / "up")


def _weights_mismatch(src: Path) -> None:
    import torch

    torch.save({"model.0.conv.weight": torch.zeros(1)}, src / "models" / "model.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/modelselector-pickle-ran",))


def _pickled_object(src: Path) -> None:
    import torch

    torch.save({"weight": _Evil()}, src / "models" / "model.pt")


def _truncated_weights(src: Path) -> None:
    data = (src / "models" / "model.pt").read_bytes()
    (src / "models" / "model.pt").write_bytes(data[: len(data) // 2])


def _pretrained(src: Path) -> None:
    bad.edit_inference(src, lambda c: c.update(network_def={"_target_": "DenseNet121", "spatial_dims": 3,
                                                            "in_channels": 1, "out_channels": 2, "pretrained": True}))  # fmt: skip


def _macro_of_another_file(src: Path) -> None:
    (src.parent / "other.json").write_text(json.dumps({"channels": [4, 8]}))
    bad.edit_inference(
        src, lambda c: c["network_def"].update(channels=f"%{src.parent / 'other.json'}::channels")
    )


CLI = [
    # case                                   argv ({key}: a path of the world fixture)                                exit  message
    ("select --top 0",                       ["select", "{image}", "--top", "0"],                                    2, "must be 1 or more"),
    ("select --top -3",                      ["select", "{image}", "--top", "-3"],                                   2, "must be 1 or more"),
    ("select --threshold nan",               ["select", "{image}", "--threshold", "nan"],                            2, "not a finite number"),
    ("select --threshold 1.5",               ["select", "{image}", "--threshold", "1.5"],                            2, "between 0 and 1"),
    ("select --origins exemplars",           ["select", "{image}", "--origins", "exemplars"],                        2, "choose from exemplar"),
    ("promote --metric foo",                 ["promote", "--zoo", "{zoo}", "--task", TINY, "--candidate", "{root}", "--metric", "foo"], 2, "'foo' is not a metric"),
    ("promote --min-improvement nan",        ["promote", "--zoo", "{zoo}", "--task", TINY, "--candidate", "{root}", "--min-improvement", "nan"], 2, "not a finite number"),
    ("sweep --metric foo",                   ["sweep", "--dataset", "{root}", "--config", "{afile}", "--out", "{root}/sz", "--metric", "foo"], 2, "'foo' is not a metric"),
    ("promote --level 1",                    ["promote", "--zoo", "{zoo}", "--task", TINY, "--candidate", "{root}", "--level", "1"], 2, "above 0 and below 1"),
    ("demo --max-models -1",                 ["demo", "{image}", "--zoo", "{zoo}", "--max-models", "-1"],            2, "0 or more"),
    ("build-starter-zoo --folds 0,last",     ["build-starter-zoo", "--data", "{root}", "--folds", "0,last"],        2, "nor final"),
    ("build-starter-zoo --dev-cv, no --only", ["build-starter-zoo", "--data", "{root}", "--dev-cv", "5"],         2, "one segmentation recipe"),
    ("build-starter-zoo --dev-cv, no --work", ["build-starter-zoo", "--data", "{root}", "--dev-cv", "5", "--only", "mr-cardiac"], 2, "needs --work"),
    ("build-starter-zoo --dev-cv, final",    ["build-starter-zoo", "--data", "{root}", "--dev-cv", "5", "--only", "mr-cardiac", "--work", "{root}", "--folds", "final"], 2, "no final model"),
    ("select a truncated .nii.gz",           ["select", "{truncated}"],                                               2, "truncated"),
    ("select a folder of two DICOM series",  ["select", "{dicom}"],                                                  2, "--series UID"),
    ("apply several images --out a file name", ["apply", "--zoo", "{zoo}", "--model", TINY, "{image}", "{truncated}", "--out", "{root}/x.seg.nrrd"], 6, "is the folder of their outputs"),
    ("apply --out under a file",             ["apply", "--zoo", "{zoo}", "--model", TINY, "{image}", "--out", "{afile}/x.seg.nrrd"], 6, "is a file"),
    ("apply --out in a read-only folder",    ["apply", "--zoo", "{zoo}", "--model", TINY, "{image}", "--out", "{readonly_dir}/x.seg.nrrd"], 6, "write-protected"),
    ("apply --out a read-only file",         ["apply", "--zoo", "{zoo}", "--model", TINY, "{image}", "--out", "{readonly_file}"], 6, "write-protected"),
    ("apply --out x.nii.gz (NRRD inside)",   ["apply", "--zoo", "{zoo}", "--model", TINY, "{image}", "--out", "{root}/x.nii.gz"], 6, "name it x.seg.nrrd"),
    ("apply a truncated .nii.gz",            ["apply", "--zoo", "{zoo}", "--model", TINY, "{truncated}", "--out", "{root}/t.seg.nrrd"], 2, "truncated"),
    ("apply a label map",                    ["apply", "--zoo", "{zoo}", "--model", TINY, "{labelmap}", "--out", "{root}/l.seg.nrrd"], 2, "looks like a label map"),
    ("select a label map",                   ["select", "{labelmap}"],                                               2, "3 distinct whole-number values (0, 1, 2)"),
    ("landmarks apply a label map",          ["landmarks", "apply", "{labelmap}", "--out", "{root}/l.mrk.json"],       2, "looks like a label map"),
    ("select a 4 x 4 icon",                  ["select", "{icon}"],                                                   2, "the image is 4 x 4 pixels, too small to show anatomy"),
    ("apply several images, --out a file",  ["apply", "--zoo", "{zoo}", "--model", TINY, "{image}", "{truncated}", "--out", "{afile}"], 6, "is a file"),
    ("apply two images of one name",         ["apply", "--zoo", "{zoo}", "--model", TINY, "{image}", "{root}/elsewhere/ct.nii.gz", "--out", "{root}/b"], 6, "would both be written to"),
    ("apply several images, --series",      ["apply", "--zoo", "{zoo}", "--model", TINY, "{image}", "{dicom}", "--series", "1.2", "--out", "{root}/b"], 2, "apply to one folder at a time"),
    ("apply a line of pixels",               ["apply", "--zoo", "{zoo}", "--model", TINY, "{line}", "--out", "{root}/n.seg.nrrd"], 2, "the image is 300 x 1 pixels"),
    ("demo --out an existing file",          ["demo", "{image}", "--zoo", "{zoo}", "--out", "{afile}"],              6, "is a file"),
    ("zoo list: a truncated zoo.json",       ["zoo", "list", "--zoo", "{cut_zoo}"],                                  3, "make a new zoo (`modelselector zoo init --zoo NEW`)"),
    ("leaderboard --zoo not a zoo",          ["leaderboard", "--zoo", "{root}/nozoo", "--task", "x"],                3, "no zoo folder there"),
    ("zoo add a file",                       ["zoo", "add", "{afile}", "--zoo", "{zoo}"],                             3, "a file, not a bundle folder"),
    # a device that is not there is refused before any work (the message names it with or without a GPU)
    ("apply --device gpu",                   ["apply", "--zoo", "{zoo}", "--model", TINY, "{image}", "--out", "{root}/d.seg.nrrd", "--device", "gpu"], 2, "not a torch device"),
    ("train --device cuda:99",               ["train", "--dataset", "{root}", "--name", "x", "--out", "{root}/dz", "--device", "cuda:99"], 2, "device 'cuda:99'"),
    ("sweep --device cuda:99",               ["sweep", "--dataset", "{root}", "--config", "{afile}", "--out", "{root}/sz", "--device", "cuda:99"], 2, "device 'cuda:99'"),
    ("promote --device cuda:99",             ["promote", "--zoo", "{zoo}", "--task", TINY, "--candidate", "{root}", "--device", "cuda:99"], 2, "device 'cuda:99'"),
    ("landmarks compare --device cuda:99",   ["landmarks", "compare", "--data", "{root}", "--out", "{root}/lg", "--device", "cuda:99"], 2, "device 'cuda:99'"),
    # refused before any training: the card's name, modality and region, and the settings' types
    ("train --name with a space",            ["train", "--dataset", "{msd}", "--name", "bad name", "--out", "{root}/tz", "--epochs", "1"], 3, "use letters, digits"),
    ("train --body-region NOWHERE",          ["train", "--dataset", "{msd}", "--name", "ok", "--body-region", "NOWHERE", "--out", "{root}/tz"], 3, "'body_region' is 'NOWHERE'"),
    ("train --config with epochs: one",      ["train", "--dataset", "{msd}", "--name", "ok", "--config", "{bad_types}", "--out", "{root}/tz"], 5, "epochs: 'one' is not a whole number"),
    ("prototypes --encoder-weight -1",       ["prototypes", "--zoo", "{zoo}", "--model", TINY, "--encoder-weight", "-1"], 2, "must be 0 or more"),
    ("prototypes --exemplars a label map",   ["prototypes", "--zoo", "{zoo}", "--model", TINY, "--exemplars", "{labelmap}", "--data-free", "0"], 2, "looks like a label map"),
    # arguments refused by the commands themselves exit 2 like argparse's own refusals; a missing sweep 3
    ("build-starter-zoo --stages foo",       ["build-starter-zoo", "--data", "{root}", "--out", "{root}/bz", "--stages", "foo"], 2, "unknown stage(s) foo"),
    ("build-starter-zoo --only nosuch",      ["build-starter-zoo", "--data", "{root}", "--out", "{root}/bz", "--only", "nosuch"], 2, "unknown starter-zoo model(s) nosuch"),
    ("build-starter-zoo without --data",     ["build-starter-zoo", "--out", "{root}/bz"],                               2, "pass the shared data folder with --data"),
    ("leaderboard of a task never swept",    ["leaderboard", "--zoo", "{zoo}", "--task", TINY],                        3, "no evaluations found; run `modelselector sweep` first"),
]  # fmt: skip

# `modelselector zoo add BUNDLE --zoo ZOO` of bundles that must be refused (exit status 3), run through the
# command's `main()` in this process: what they test is the bundle loader, and a process each would cost seconds
ZOO_ADD = [
    # case                                   bundle (a key of BUNDLES)  extra arguments             message
    ("a link out of the bundle",             "link_out",                [],                         "outside the bundle"),
    ("a loop of file links",                 "link_loop",               [],                         "loop of symbolic links"),
    ("a folder link to its parent",          "dir_loop",                [],                         "loop of symbolic links"),
    ("weights of another network",           "weights_mismatch",        [],                         "do not fit the network in inference.json (Missing key(s)"),
    ("a pickled object as weights",          "pickled",                 [],                         "pickled objects are never loaded"),
    ("truncated weights",                    "truncated_weights",       [],                         "not loadable"),
    ("pretrained weights asked for",         "pretrained",              [],                         "weights from elsewhere"),
    ("a macro reading another file",         "macro",                   [],                         "reads another file"),
    ("os.system as the network",             "os_system",               [],                         "not an allow-listed class"),
    ("subprocess.Popen as the network",      "popen",                   [],                         "not an allow-listed class"),
    ("builtins.eval as the network",         "eval",                    [],                         "not an allow-listed class"),
    ("$__import__ in the network",           "import_expr",             [],                         "the Python expression"),
    ("a version already in the zoo",         "same_version",            [],                         "already in the zoo"),
    ("a name leaving the zoo",               "name_source",             ["--name", "../../evil"],   "field 'name' is '../../evil'"),
]  # fmt: skip

BUNDLES = {
    "link_out": _link_out, "link_loop": _link_loop, "dir_loop": _dir_loop, "weights_mismatch": _weights_mismatch,
    "pickled": _pickled_object, "truncated_weights": _truncated_weights, "pretrained": _pretrained,
    "macro": _macro_of_another_file,
    "os_system": lambda s: bad.edit_inference(s, lambda c: c["network_def"].update(_target_="os.system")),
    "popen": lambda s: bad.edit_inference(s, lambda c: c.update(network_def={"_target_": "subprocess.Popen",
                                                                             "args": ["touch", "/tmp/x"]})),
    "eval": lambda s: bad.edit_inference(s, lambda c: c.update(network_def={"_target_": "builtins.eval",
                                                                            "source": "print(1)"})),
    "import_expr": lambda s: bad.edit_inference(s, lambda c: c["network_def"].update(
        in_channels="$__import__('os').system('touch /tmp/x') or 1")),
}  # fmt: skip


def _path_of(world: dict, key: str) -> Path:
    if key not in world:
        if key in BUNDLES:
            world[key] = _bundle(world, key, BUNDLES[key])
        elif key == "same_version":
            world[key] = _bundle(world, key, version="0.1.0")
        elif key == "name_source":
            world[key] = _bundle(world, key, version="0.3.0")
        elif key == "msd":
            from ModelSelectorLib.datasets import make_synthetic_msd

            world[key] = make_synthetic_msd(world["root"] / "msd", n_cases=3, profile="ct", seed=0)
        elif key == "bad_types":
            world[key] = world["root"] / "bad_types.yaml"
            world[key].write_text("epochs: one\n")
        elif key == "cut_zoo":
            zoo = bad.copy_tree(world["zoo"], world["root"] / "cut_zoo")
            data = (zoo / "zoo.json").read_bytes()
            (zoo / "zoo.json").write_bytes(data[: len(data) // 2])
            world[key] = zoo
    return world[key]


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, phrase: str) -> str:
    """The process failed with ``code`` and one line on stderr holding ``phrase``; returns the line."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0].startswith("modelselector") and phrase in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("case, argv, code, phrase", CLI, ids=[row[0] for row in CLI])
def test_command_line(world, case, argv, code, phrase):
    argv = [a.format(**{k: _path_of(world, k) for k in _keys(a)}) for a in argv]
    before = bad.fingerprint(world["zoo"])
    protected = world["readonly_file"].stat()
    line = assert_one_line_error(bad.run_cli(*argv), code, phrase)
    assert bad.fingerprint(world["zoo"]) == before  # a failed command leaves the zoo as it was
    assert ".tmp" not in line  # no temporary path that is gone by now
    assert (
        world["readonly_file"].stat().st_mode == protected.st_mode
        and world["readonly_file"].read_bytes() == b"keep me"
    )
    assert not Path("/tmp/modelselector-pickle-ran").exists()


@pytest.mark.parametrize("case, key, extra, phrase", ZOO_ADD, ids=[row[0] for row in ZOO_ADD])
def test_zoo_add_refuses(world, capsys, case, key, extra, phrase):
    from ModelSelectorLib.cli import main

    bundle = _path_of(world, key)
    before = bad.fingerprint(world["zoo"])
    capsys.readouterr()
    code = main(["zoo", "add", str(bundle), "--zoo", str(world["zoo"]), *extra])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == BundleError.exit_code and len(lines) == 1 and phrase in lines[0], err
    assert ".tmp" not in lines[0] and bad.fingerprint(world["zoo"]) == before
    assert not Path("/tmp/modelselector-pickle-ran").exists()


def _keys(text: str) -> list[str]:
    import string

    return [name for _, name, _, _ in string.Formatter().parse(text) if name]


def test_apply_writes_the_format_and_geometry_asked_for(world, tmp_path):
    from ModelSelectorLib.io import read_segmentation

    out = tmp_path / "new" / "ct.seg.nrrd"
    proc = bad.run_cli("apply", "--zoo", world["zoo"], "--model", TINY, world["image"], "--out", out)
    assert proc.returncode == 0, proc.stderr
    seg, segments = read_segmentation(out)
    assert seg.same_geometry(read_image(world["image"])) and [s.name for s in segments] == ["box"]


def test_apply_to_several_images_writes_each_and_skips_what_is_no_image(world, tmp_path):
    from ModelSelectorLib.io import read_segmentation

    out = tmp_path / "batch"
    picture = tmp_path / "picture.png"  # a 2D image, which the 3D model refuses only once it is read
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(1).integers(0, 255, (64, 64)).astype(np.uint8)),
                    str(picture))  # fmt: skip
    proc = bad.run_cli(
        "apply", "--zoo", world["zoo"], "--model", TINY, picture, world["image"], world["labelmap"],
        world["truncated"], "--out", out,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout.strip() == str(out / "ct.seg.nrrd"), proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ct.seg.nrrd"]  # nothing half-written for the others
    assert read_segmentation(out / "ct.seg.nrrd")[0].same_geometry(read_image(world["image"]))
    skipped = [ln for ln in proc.stderr.splitlines() if ln.startswith("modelselector: skipped: ")]
    assert len(skipped) == 3 and str(picture) in skipped[0]
    assert "looks like a label map" in skipped[1] and "truncated" in skipped[2]
    assert "3 of 4 images were skipped" in proc.stderr


def test_apply_of_one_image_into_a_folder_names_the_output_after_it(world, tmp_path):
    from ModelSelectorLib.io import read_segmentation

    for out in (f"{tmp_path / 'new'}/", str(tmp_path)):  # a folder to be made (DIR/), or one that exists
        proc = bad.run_cli("apply", "--zoo", world["zoo"], "--model", TINY, world["image"], "--out", out)
        assert proc.returncode == 0 and proc.stdout.strip() == str(Path(out) / "ct.seg.nrrd"), proc.stderr
        assert read_segmentation(Path(out) / "ct.seg.nrrd")[0].same_geometry(read_image(world["image"]))


def test_apply_reads_the_series_it_is_told_to(world, tmp_path):
    from ModelSelectorLib.io import read_segmentation

    uid = "1.2.826.0.1.3680043.2.1125.2"
    out = tmp_path / "dicom.seg.nrrd"
    proc = bad.run_cli(
        "apply", "--zoo", world["zoo"], "--model", TINY, world["dicom"], "--series", uid, "--out", out
    )
    assert proc.returncode == 0, proc.stderr
    assert read_segmentation(out)[0].same_geometry(read_image(world["dicom"], series_uid=uid))


# --- hostile configs: the four bypasses never run, on `zoo add` and on `apply` --------------------------------
@pytest.mark.parametrize("bypass", ["monai.utils.run_cmd", "torch.utils.collect_env.run", "pickle.loads-expression",
                                    "nested-ConfigParser"])  # fmt: skip
def test_bypass_never_runs(tmp_path, capsys, bypass):
    from ModelSelectorLib.cli import main
    from ModelSelectorLib.zoo import Zoo

    marker = tmp_path / "MARKER"
    change = bad.bypasses(marker)[bypass]
    zoo = Zoo.create(tmp_path / "zoo")
    zoo.add(bad.tiny_bundle(tmp_path / "src"))
    hostile = bad.edit_inference(bad.tiny_bundle(tmp_path / "hostile", TINY, "0.2.0"), change)
    before = bad.fingerprint(zoo.path)
    assert_one_line_error(bad.run_cli("zoo", "add", hostile, "--zoo", zoo.path), 3, "untrusted config")
    assert not marker.exists() and bad.fingerprint(zoo.path) == before

    bad.edit_inference(zoo.get(TINY), change)  # planted straight into the zoo: `apply` must refuse it too
    image = bad.written("ct.nii.gz")(tmp_path)
    before = bad.fingerprint(zoo.path)
    capsys.readouterr()
    code = main(
        ["apply", "--zoo", str(zoo.path), "--model", TINY, str(image), "--out", str(tmp_path / "o.seg.nrrd")]
    )
    err = capsys.readouterr().err
    assert code == 3 and len(err.strip().splitlines()) == 1 and "untrusted config" in err, err
    assert (
        not marker.exists() and not (tmp_path / "o.seg.nrrd").exists() and bad.fingerprint(zoo.path) == before
    )


def test_expressions_the_network_does_not_use_are_never_run(tmp_path):
    from ModelSelectorLib.zoo import Zoo

    marker = tmp_path / "MARKER"
    hook = f"$__import__('os').system('touch {marker}')"
    bundle = bad.edit_inference(bad.tiny_bundle(tmp_path / "src"), lambda c: c.update(hook=hook, run=[hook]))
    Zoo.create(tmp_path / "zoo").add(bundle)
    assert not marker.exists()


def test_a_real_model_zoo_config_still_loads(tmp_path):
    """``spleen_ct_segmentation`` of MONAI's model zoo: only its network is built, from plain values."""
    from ModelSelectorLib.zoo import Zoo, load_bundle
    from ModelSelectorLib.zoo.trust import buildable_config

    assert list(buildable_config(bad.spleen_inference(), "network_def")) == ["network_def"]
    zoo = Zoo.create(tmp_path / "zoo")
    entry = zoo.add(bad.spleen_bundle(tmp_path), name="spleen", modality="CT", body_region="ABDOMEN")
    loaded = load_bundle(zoo.get("spleen"))
    assert entry["version"] == "0.5.9" and loaded.card.label_names == ["spleen"]
    assert type(loaded.network).__name__ == "UNet"


def test_trust_still_builds_custom_code(tmp_path):
    from ModelSelectorLib.zoo import load_bundle

    bundle = bad.edit_inference(bad.tiny_bundle(tmp_path / "src"), lambda c: c["network_def"].update(
        spatial_dims="$1 + 2"))  # fmt: skip
    with pytest.raises(BundleError, match="untrusted config at 'network_def::spatial_dims'"):
        load_bundle(bundle)
    assert load_bundle(bundle, trust=True).network is not None
    assert not list(bundle.rglob("__pycache__"))  # building it trusted leaves no compiled code behind


def test_a_trusted_build_refuses_compiled_code_the_trust_never_saw(tmp_path):
    """Python imports a bundle's __pycache__/*.pyc (or a .so) in place of the source the user trusted; the
    trust digest covers every file the build may read, and compiled files are refused."""
    from ModelSelectorLib.zoo import load_bundle
    from ModelSelectorLib.zoo.trust import remember_trust, trust_digest

    bundle = bad.edit_inference(bad.tiny_bundle(tmp_path / "src"), lambda c: c["network_def"].update(
        spatial_dims="$1 + 2"))  # fmt: skip
    digest = remember_trust(bundle, "tiny")
    assert load_bundle(bundle).network is not None  # trusted as it is
    (bundle / "scripts" / "__pycache__").mkdir(parents=True)
    (bundle / "scripts" / "__pycache__" / "net.cpython-311.pyc").write_bytes(b"not what was trusted")
    assert trust_digest(bundle) != digest
    with pytest.raises(BundleError, match="compiled code that cannot be checked; delete it"):
        load_bundle(bundle, trust=True)


# --- standard MONAI bundles: run as their authors meant, or refused in one line ----------------------------
def _ct_volume(values: np.ndarray) -> sitk.Image:
    """A CT volume at the spleen bundle's spacing (1.5, 1.5, 2.0 mm), so that resampling changes no value."""
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing((1.5, 1.5, 2.0))
    return image


def test_an_imported_bundle_runs_with_its_own_preprocessing(tmp_path):
    """spleen_ct_segmentation's Spacingd and ScaleIntensityRanged(-57..164) become the card's target spacing and
    CT window: the threshold network then labels HU > 53.5, as MONAI's run of the bundle does (a z-score or the
    default CT window would label other voxels)."""
    from ModelSelectorLib.apply import open_runtime
    from ModelSelectorLib.io.image import Image
    from ModelSelectorLib.zoo import Zoo

    zoo = Zoo.create(tmp_path / "zoo")
    zoo.add(
        bad.threshold_bundle(tmp_path), name="spleen", body_region="ABDOMEN"
    )  # modality CT: from metadata
    card = zoo.card("spleen")
    assert card.modality == "CT" and card.target_spacing == [1.5, 1.5, 2.0] and card.roi_size == [32, 32, 32]
    assert (
        card.intensity == {"mode": "ct", "a_min": -57.0, "a_max": 164.0} and card.inference["overlap"] == 0.5
    )
    # its card gives no command of ours to run it with MONAI: its own config reads what its authors chose
    card_part = (zoo.get("spleen") / "docs" / "README.md").read_text(encoding="utf-8").split("\n---\n")[0]
    assert "## Use" in card_part and "monai.bundle run" not in card_part
    hu = np.random.default_rng(0).choice([-500.0, 20.0, 40.0, 70.0, 200.0], size=(20, 24, 28))
    labels = open_runtime(zoo, "spleen").predict(Image.from_sitk(_ct_volume(hu))).value.array
    assert np.array_equal(np.asarray(labels).reshape(hu.shape) == 1, hu > 53.5)


def test_an_imported_bundles_largest_component_postprocessing_is_kept(tmp_path):
    """KeepLargestConnectedComponentd in the postprocessing was ignored: apply then kept every blob MONAI drops."""
    from ModelSelectorLib.apply import open_runtime
    from ModelSelectorLib.io.image import Image
    from ModelSelectorLib.zoo import Zoo

    src = bad.edit_inference(bad.threshold_bundle(tmp_path), lambda c: c["postprocessing"]["transforms"].append(
        {"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": [1]}))  # fmt: skip
    zoo = Zoo.create(tmp_path / "zoo")
    zoo.add(src, name="spleen", body_region="ABDOMEN")
    assert zoo.card("spleen").inference["keep_largest_component"] == [1]
    hu = np.full((20, 24, 28), -500.0)
    hu[2:8, 2:8, 2:8], hu[12:18, 12:22, 12:26] = 200.0, 200.0  # two blobs above the network's threshold
    labels = np.asarray(open_runtime(zoo, "spleen").predict(Image.from_sitk(_ct_volume(hu))).value.array)
    assert labels.reshape(hu.shape)[14, 16, 18] == 1 and labels.reshape(hu.shape)[4, 4, 4] == 0


def test_a_network_that_needs_a_missing_package_says_so_in_one_line(tmp_path, monkeypatch):
    from ModelSelectorLib.apply import open_runtime
    from ModelSelectorLib.io.image import Image
    from ModelSelectorLib.models import segmentation
    from ModelSelectorLib.zoo import Zoo

    zoo = Zoo.create(tmp_path / "zoo")
    zoo.add(bad.threshold_bundle(tmp_path), name="spleen", body_region="ABDOMEN")

    def needs_einops(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'einops'")

    monkeypatch.setattr(segmentation, "predict_logits", needs_einops)
    with pytest.raises(
        BundleError, match="its network needs a Python package that is not installed .*einops"
    ):
        open_runtime(zoo, "spleen").predict(
            Image.from_sitk(_ct_volume(np.linspace(-500, 200, 20 * 24 * 28).reshape(20, 24, 28)))
        )


def test_a_ct_card_without_intensity_is_not_z_scored():
    from ModelSelectorLib.models.preprocessing import normalize_intensity
    from ModelSelectorLib.models.segmentation import SegmentationRuntime
    from ModelSelectorLib.zoo import ModelCard

    hu = np.array([-1000.0, 0.0, 1000.0, 3000.0], dtype=np.float32)
    assert np.allclose(normalize_intensity(hu, None, "CT"), [0.0, 0.5, 1.0, 1.0])
    card = ModelCard.from_dict({**bad.card_dict(), "intensity": None})
    steps = SegmentationRuntime.inference_sections(card)["preprocessing"]["transforms"]
    assert "NormalizeIntensityd" not in [t["_target_"] for t in steps]


def _insert(transform: dict) -> Any:
    return lambda c: c["preprocessing"]["transforms"].insert(4, transform)


def _drop_intensity(config: dict) -> None:
    config["preprocessing"]["transforms"] = [
        t for t in config["preprocessing"]["transforms"] if t["_target_"] != "ScaleIntensityRanged"
    ]


@pytest.mark.parametrize(
    "change, phrase",
    [
        (
            _insert({"_target_": "CropForegroundd", "keys": "image", "source_key": "image"}),
            "'CropForegroundd'",
        ),
        (_insert({"_target_": "Resized", "keys": "image", "spatial_size": [96, 96, 96]}), "'Resized'"),
        (_insert({"_target_": "scripts.transforms.Window", "keys": "image"}), "'scripts.transforms.Window'"),
        (lambda c: c["preprocessing"]["transforms"][4].update(a_min="$-57"), "expression '$-57'"),
        (_drop_intensity, "normalises no intensities"),
        (lambda c: c["preprocessing"]["transforms"][2].update(axcodes="XYZ"), "axcodes is 'XYZ'"),
    ],
    ids=["CropForegroundd", "Resized", "custom transform", "expression", "no normalisation", "axcodes"],
)
def test_a_preprocessing_that_cannot_be_reproduced_is_refused(tmp_path, capsys, change, phrase):
    from ModelSelectorLib.cli import main
    from ModelSelectorLib.zoo import Zoo

    zoo = Zoo.create(tmp_path / "zoo")
    src = bad.edit_inference(bad.threshold_bundle(tmp_path), change)
    assert main(["zoo", "add", str(src), "--zoo", str(zoo.path), "--body-region", "ABDOMEN"]) == 3
    err = capsys.readouterr().err
    assert "preprocessing cannot be reproduced" in err and phrase in err, err
    assert len(err.strip().splitlines()) == 1 and Zoo(zoo.path).names() == []


def test_a_min_max_rescale_before_a_z_score_over_every_voxel_is_read_as_the_z_score():
    """MONAI's prostate bundle rescales to [0, 1] and then z-scores every voxel: the z-score alone, which ignores an
    increasing linear map; other pairs are still two normalisations."""
    from ModelSelectorLib.models.preprocessing import Unreproducible, read_preprocessing

    def steps(*intensity):
        return {"preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"}, *intensity]}}  # fmt: skip

    rescale = {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0}
    zscore = {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": False}
    assert read_preprocessing(steps(rescale, zscore), 3)["intensity"] == {"mode": "mr", "nonzero": False}
    for pair in ((rescale, {**zscore, "nonzero": True}), ({**rescale, "minv": 1.0, "maxv": 0.0}, zscore),
                 (zscore, rescale)):  # fmt: skip
        with pytest.raises(Unreproducible, match="normalises intensities twice"):
            read_preprocessing(steps(*pair), 3)


def test_a_plain_reference_in_the_preprocessing_is_followed(tmp_path):
    from ModelSelectorLib.zoo.bundle import import_monai_bundle

    src = bad.edit_inference(bad.threshold_bundle(tmp_path), lambda c: (
        c.update(pixdim=[2.0, 2.0, 3.0]), c["preprocessing"]["transforms"][3].update(pixdim="@pixdim")))  # fmt: skip
    assert import_monai_bundle(src, body_region="ABDOMEN").target_spacing == [2.0, 2.0, 3.0]


def _pred(**changes: Any) -> Any:
    return lambda m: m["network_data_format"]["outputs"]["pred"].update(changes)


def _sigmoid(config: dict) -> None:
    config["postprocessing"]["transforms"][0] = {"_target_": "Activationsd", "keys": "pred", "sigmoid": True}


@pytest.mark.parametrize(
    "meta_change, config_change, phrase",
    [
        (_pred(type="probabilities", format="classes", spatial_shape=[4]), None, "format is 'classes'"),
        (_pred(spatial_shape=[4]), None, "spatial_shape is [4], not a 2D or 3D image"),
        (
            lambda m: m["network_data_format"]["inputs"]["image"].update(num_channels=4),
            None,
            "4 input channels",
        ),
        (None, _sigmoid, "independent sigmoid channels"),
        (_pred(channel_def={"0": "Tumor core", "1": "Whole tumor"}), None, "names channel 0 'Tumor core'"),
        (
            None,
            lambda c: c.update(inferer={"_target_": "SliceInferer", "roi_size": [32, 32], "spatial_dim": 2}),
            "SliceInferer, runs a 2D network slice by slice",
        ),
        # what cannot run is refused before the user is asked for the modality the metadata lacks
        (
            lambda m: m["network_data_format"]["inputs"]["image"].update(num_channels=3, modality="RGB"),
            None,
            "3 input channels",
        ),
        (
            None,
            lambda c: c["postprocessing"]["transforms"].append(
                {"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "independent": False}
            ),
            "independent is false",
        ),
    ],  # fmt: skip
    ids=[
        "classifier",
        "non-spatial output",
        "four input channels",
        "sigmoid",
        "channel 0 a label",
        "slice inferer",
        "channels before modality",
        "components kept as one",
    ],  # fmt: skip
)
def test_a_bundle_no_runtime_runs_is_refused_at_add(tmp_path, meta_change, config_change, phrase):
    from ModelSelectorLib.zoo import Zoo

    src = bad.threshold_bundle(tmp_path)
    if meta_change:
        bad.edit_metadata(src, meta_change)
    if config_change:
        bad.edit_inference(src, config_change)
    zoo = Zoo.create(tmp_path / "zoo")
    with pytest.raises(BundleError, match=re.escape(phrase)) as e:
        zoo.add(src, body_region="ABDOMEN")
    assert len(str(e.value).splitlines()) == 1 and Zoo(zoo.path).names() == []


def test_a_network_of_several_input_channels_is_refused_in_one_line(tmp_path):
    from monai.bundle import ConfigParser

    from ModelSelectorLib.apply import open_runtime
    from ModelSelectorLib.io.image import Image
    from ModelSelectorLib.zoo import ModelCard, Zoo, save_bundle

    net_def = {**bad.NETWORK_DEF, "in_channels": 2}
    net = ConfigParser({"n": net_def}).get_parsed_content("n")
    card = ModelCard.from_dict({**bad.card_dict(), "input_channels": 2})
    zoo = Zoo.create(tmp_path / "zoo")
    zoo.add(save_bundle(tmp_path / "two", card, net_def, net.state_dict()))
    runtime = open_runtime(zoo, TINY)
    image = Image.from_sitk(_ct_volume(np.zeros((16, 16, 16))))
    assert not runtime.accepts(image)
    with pytest.raises(InputError, match="takes 2 input channels and this runtime feeds one image channel"):
        runtime.predict(image)


def test_a_symbolic_patch_shape_takes_the_inferers_roi_size_or_is_refused(tmp_path):
    from ModelSelectorLib.zoo.bundle import import_monai_bundle

    def symbolic(meta: dict) -> None:
        for part in ("inputs", "outputs"):
            next(iter(meta["network_data_format"][part].values()))["spatial_shape"] = ["8*n", "8*n", "8*n"]

    src = bad.edit_metadata(bad.threshold_bundle(tmp_path), symbolic)
    assert import_monai_bundle(src, body_region="ABDOMEN").roi_size == [32, 32, 32]  # the inferer's
    bad.edit_inference(src, lambda c: c.update(inferer={"_target_": "SimpleInferer"}))
    with pytest.raises(BundleError, match=r"patch shape \['8\*n', '8\*n', '8\*n'\] is symbolic"):
        import_monai_bundle(src, body_region="ABDOMEN")


def test_trust_given_at_zoo_add_is_recorded_and_honoured_by_apply(tmp_path, monkeypatch):
    """`zoo add --trust` of a network computed by an expression: apply and the other commands, which have no
    --trust, load the zoo's copy as it was trusted by this user; the same zoo for a user who never trusted it
    and a config edited afterwards are not trusted."""
    import shutil

    from ModelSelectorLib.apply import open_runtime
    from ModelSelectorLib.zoo import Zoo, load_bundle

    def computed(c: dict) -> None:
        c["label_names"] = ["background", "spleen"]
        c["network_def"]["out_channels"] = "$len(@label_names)"

    src = bad.edit_inference(bad.threshold_bundle(tmp_path), computed)
    zoo = Zoo.create(tmp_path / "zoo")
    with pytest.raises(BundleError, match=r"zoo add BUNDLE --trust") as e:
        zoo.add(src, name="spleen", body_region="ABDOMEN")
    assert "pass --trust" not in str(e.value)
    zoo.add(src, name="spleen", body_region="ABDOMEN", trust=True)
    assert zoo.version_info("spleen")["trusted"]["sha256"]
    assert (
        open_runtime(zoo, "spleen").network is not None and load_bundle(zoo.get("spleen")).network is not None
    )
    # files the user trusted go into another zoo without --trust (as promote adds its copy of a candidate)
    assert Zoo.create(tmp_path / "next").add(zoo.get("spleen"))["name"] == "spleen"
    # the trust is the user's, not the zoo's: a copy of the zoo on a machine whose user never trusted it
    copied = Zoo(shutil.copytree(zoo.path, tmp_path / "copied"))
    monkeypatch.setenv("MODELSELECTOR_TRUST_STORE", str(tmp_path / "another user" / "trusted.json"))
    with pytest.raises(
        BundleError, match=r"untrusted config.*a model already in a zoo: `modelselector zoo trust NAME"
    ):
        load_bundle(copied.get("spleen"))
    # ... who trusts it where it is (`zoo add --trust` was refused: that version is in the zoo already)
    proc = bad.run_cli("zoo", "trust", "spleen", "--zoo", copied.path,
                       env={"MODELSELECTOR_TRUST_STORE": str(tmp_path / "another user" / "trusted.json")})  # fmt: skip
    assert proc.returncode == 0 and "Trusted spleen version" in proc.stdout, proc.stderr
    assert load_bundle(copied.get("spleen")).network is not None
    monkeypatch.undo()
    bad.edit_inference(zoo.get("spleen"), lambda c: c.update(extra=1))
    with pytest.raises(BundleError, match="untrusted config"):
        load_bundle(zoo.get("spleen"))


def test_bundles_in_other_forms_are_refused_saying_why_or_accepted(tmp_path):
    from ModelSelectorLib.zoo import Zoo
    from ModelSelectorLib.zoo.bundle import import_monai_bundle

    src = bad.threshold_bundle(tmp_path)
    (src / "configs" / "inference.json").rename(src / "configs" / "inference.yaml")
    with pytest.raises(BundleError, match="YAML configs are not supported: convert it to JSON") as e:
        import_monai_bundle(src, body_region="ABDOMEN")
    # the command it gives runs from any folder: it names the files by their whole paths
    assert str(src / "configs" / "inference.yaml") in str(e.value) and str(
        src / "configs" / "inference.json"
    ) in str(e.value)
    (src / "configs" / "inference.yaml").rename(src / "configs" / "inference.json")
    (src / "models" / "model.pt").rename(src / "models" / "model.ts")
    with pytest.raises(
        BundleError, match=r"TorchScript-only bundles are not supported: .* state_dict in models/model\.pt"
    ):
        import_monai_bundle(src, body_region="ABDOMEN")
    (src / "models" / "model.ts").rename(src / "models" / "model.pt")
    bad.edit_inference(src, lambda c: c.update(network=c.pop("network_def")))  # MONAI builds "network" too
    zoo = Zoo.create(tmp_path / "zoo")
    zoo.add(src, name="spleen", body_region="ABDOMEN")
    assert zoo.card("spleen").label_names == ["spleen"]


def test_metadata_problems_are_named(tmp_path):
    from ModelSelectorLib.zoo.bundle import import_monai_bundle

    src = bad.edit_metadata(
        bad.threshold_bundle(tmp_path), lambda m: m.update(copyright="Copyright (c) MONAI")
    )
    assert import_monai_bundle(src, body_region="ABDOMEN").license == ""  # a copyright is not a licence
    bad.edit_metadata(src, _pred(channel_def=None, num_channels=None))
    with pytest.raises(
        BundleError, match=r"configs/metadata\.json: network_data_format\.outputs\.pred has no channel_def"
    ):
        import_monai_bundle(src, body_region="ABDOMEN")


# --- the index: damaged files are refused before hnswlib reads them -----------------------------------------
def _graph(index_dir: Path) -> Path:
    return index_dir / json.loads((index_dir / "index.json").read_text())["graph"]


def _drop_digest(index_dir: Path) -> None:
    side = json.loads((index_dir / "index.json").read_text())
    side.pop("graph_digest")
    (index_dir / "index.json").write_text(json.dumps(side))


def _header_1e12(index_dir: Path) -> None:
    graph = _graph(index_dir)
    graph.write_bytes(struct.pack("<Q", 10**12) + graph.read_bytes()[8:])


def _neighbour_out_of_range(index_dir: Path) -> None:
    graph = _graph(index_dir)
    data = bytearray(graph.read_bytes())
    struct.pack_into("<I", data, 96 + 4, 4_000_000)  # first neighbour of element 0
    graph.write_bytes(bytes(data))


def _both(*changes):
    def change(index_dir: Path) -> None:
        for c in changes:
            c(index_dir)

    return change


def _cut(name: str):
    def change(index_dir: Path) -> None:
        path = _graph(index_dir) if name == "graph" else index_dir / name
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])

    return change


def _missing_graph(index_dir: Path) -> None:
    _graph(index_dir).unlink()


INDEXES = [
    # case                                                     damage                                          message
    ("graph header: first 8 bytes = 10^12",                    _header_1e12,                                   "corrupt index graph"),
    ("graph header 10^12, index.json without digest (older)",  _both(_header_1e12, _drop_digest),              "header field offsetLevel0"),
    ("graph cut in half, no digest",                           _both(_cut("graph"), _drop_digest),             "corrupt index graph"),
    ("graph neighbour id out of range, no digest",             _both(_neighbour_out_of_range, _drop_digest),   "neighbour list is damaged"),
    ("index.json cut in half",                                 _cut("index.json"),                             "corrupt index sidecar"),
    ("index.json naming a missing graph",                      _missing_graph,                                 "graph is missing"),
]  # fmt: skip


@pytest.fixture(scope="module")
def indexed_zoo(tmp_path_factory):
    return bad.zoo_with_index(tmp_path_factory.mktemp("indexed"), ("m0", "m1", "m2", "m3"), ("m0", "m1"))


@pytest.mark.parametrize("case, damage, phrase", INDEXES, ids=[row[0] for row in INDEXES])
def test_damaged_index(indexed_zoo, tmp_path, case, damage, phrase):
    zoo = bad.copy_tree(indexed_zoo, tmp_path / "zoo")
    damage(zoo / "index")
    proc = bad.run_cli("index", "check", "--zoo", zoo)
    assert proc.returncode != -signal.SIGSEGV
    assert_one_line_error(proc, 4, phrase)


# --- concurrent writers and killed ones --------------------------------------------------------------------
def _finish(procs: list) -> list:
    return [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]


def test_four_concurrent_index_adds_keep_every_model(indexed_zoo, tmp_path):
    from ModelSelectorLib.selection.index import load_index

    zoo = bad.copy_tree(indexed_zoo, tmp_path / "zoo")
    names = ("m0", "m1", "m2", "m3")
    results = _finish([bad.start_cli("index", "add", "--zoo", zoo, "--model", n) for n in names])
    assert all(code == 0 for code, _, _ in results), results
    idx = load_index(zoo)
    assert idx.model_names() == list(names) and all(len(idx.labels_of(n)) == 3 for n in names)
    assert sorted(p.name for p in (zoo / "index").glob("graph-*.bin")) == [_graph(zoo / "index").name]
    assert bad.run_cli("index", "check", "--zoo", zoo).returncode == 0


def test_index_build_waits_for_a_concurrent_index_writer(indexed_zoo, tmp_path):
    """`index build` holds the index folder's lock from before it reads the zoo: a model added and indexed
    while another writer held the lock is in the index the build saves (it used to build from the zoo as it
    was at its start and overwrite the other writer's index without that model)."""
    from ModelSelectorLib.selection.index import load_index
    from ModelSelectorLib.zoo import Zoo

    zoo = bad.copy_tree(indexed_zoo, tmp_path / "zoo")
    holder = subprocess.Popen([sys.executable, "-c", "import sys\nfrom ModelSelectorLib.atomic import writer_lock\n"
                               f"with writer_lock({str(zoo / 'index')!r}):\n    print('locked', flush=True); sys.stdin.readline()"],
                              cwd=bad.ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        build = bad.start_cli("index", "build", "--zoo", zoo, "--no-calibrate")
        assert "waiting for another process" in build.stderr.readline()
        Zoo(zoo).add(bad.tiny_bundle(tmp_path / "src", "m4", seed=4))  # the other writer's new model
        bad.add_prototypes(Zoo(zoo).get("m4"), "m4", seed=4)
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=60)
        assert build.wait(timeout=300) == 0, build.stderr.read()
    finally:
        holder.kill()
    assert load_index(zoo).model_names() == ["m0", "m1", "m2", "m3", "m4"]
    assert bad.run_cli("index", "check", "--zoo", zoo).returncode == 0


def test_three_concurrent_adds_of_one_bundle_give_one_success(tmp_path):
    from ModelSelectorLib.zoo import Zoo, load_bundle

    zoo = Zoo.create(tmp_path / "zoo")
    bundle = bad.tiny_bundle(tmp_path / "src")
    results = _finish([bad.start_cli("zoo", "add", bundle, "--zoo", zoo.path) for _ in range(3)])
    assert sorted(code for code, _, _ in results) == [0, 3, 3], results
    for code, _, err in results:
        lines = [ln for ln in err.strip().splitlines() if "waiting for another process" not in ln]
        assert code == 0 or (
            len(lines) == 1 and "already in the zoo" in lines[0] and "Traceback" not in err
        ), err
    assert Zoo(zoo.path).names() == [TINY] and load_bundle(Zoo(zoo.path).get(TINY)).card.name == TINY
    assert sorted(p.name for p in (zoo.path / "models" / TINY).iterdir()) == ["0.1.0"]


def test_the_next_writer_removes_what_killed_writers_left(indexed_zoo, tmp_path):
    from ModelSelectorLib.selection.prototypes import has_prototypes
    from ModelSelectorLib.zoo import Zoo
    from ModelSelectorLib.zoo.catalog import PENDING_MARKER

    zoo_dir = bad.copy_tree(indexed_zoo, tmp_path / "zoo")
    models = zoo_dir / "models"
    litter = [
        models / "m0" / ".0.2.0.k9x2.tmp",  # a bundle copy of a killed `zoo add`
        zoo_dir / ".tmp-k9x2-zoo.json",  # a catalog write of a killed writer
        models / "m1" / "0.0.9",  # a copy renamed into place just before its `zoo add` was killed
        models / "m3",  # the files of a killed `zoo remove` (the catalog no longer lists m3)
        zoo_dir / "index" / ".tmp-k9x2-index.json",
        zoo_dir / "index" / "graph-20000101000000-dead.bin",
        models / "m2" / "0.1.0" / ".prototypes.k9x2.tmp",  # the new prototypes of a killed `prototypes`
    ]
    bad.copy_tree(models / "m0" / "0.1.0", litter[0])
    bad.copy_tree(models / "m0" / "0.1.0", litter[2])
    for f in (litter[1], litter[4], litter[5]):
        f.write_text("left behind\n")
    bad.copy_tree(models / "m2" / "0.1.0" / "prototypes", litter[6])
    moved_aside = models / "m0" / "0.1.0" / ".prototypes.old-4194305"  # killed between its two renames
    (models / "m0" / "0.1.0" / "prototypes").rename(moved_aside)
    for pending in (litter[2], *litter[3].iterdir()):  # what a killed add or remove marks before it is killed
        (pending / PENDING_MARKER).touch()
    catalog = json.loads((zoo_dir / "zoo.json").read_text())
    del catalog["models"]["m3"]
    (zoo_dir / "zoo.json").write_text(json.dumps(catalog))

    assert (
        bad.run_cli("zoo", "add", bad.tiny_bundle(tmp_path / "src", "m4"), "--zoo", zoo_dir).returncode == 0
    )
    assert bad.run_cli("index", "remove", "--zoo", zoo_dir, "--model", "m1").returncode == 0
    assert [p for p in litter if p.exists()] == []
    assert Zoo(zoo_dir).names() == ["m0", "m1", "m2", "m4"] and (models / "m1" / "0.1.0").is_dir()
    assert not moved_aside.exists() and has_prototypes(models / "m0" / "0.1.0")  # put back, not deleted


@pytest.mark.parametrize("delay_s", [1.0, 2.5])
def test_killing_index_build_leaves_a_loadable_index(indexed_zoo, tmp_path, delay_s):
    zoo = bad.copy_tree(indexed_zoo, tmp_path / "zoo")
    proc = bad.start_cli("index", "build", "--zoo", zoo, "--no-calibrate")
    time.sleep(delay_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    check = bad.run_cli("index", "check", "--zoo", zoo)  # the old index or the new one, whole either way
    assert check.returncode in (0, 4) and "Traceback" not in check.stderr and "corrupt" not in check.stderr
    assert bad.run_cli("index", "build", "--zoo", zoo, "--no-calibrate").returncode == 0
    assert bad.run_cli("index", "check", "--zoo", zoo).returncode == 0
    assert [p.name for p in (zoo / "index").iterdir() if p.name.startswith(".tmp-")] == []


def test_a_killed_writer_does_not_leave_the_zoo_locked(tmp_path):
    from ModelSelectorLib.zoo import Zoo

    zoo = Zoo.create(tmp_path / "zoo")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom ModelSelectorLib.atomic import writer_lock\n"
                               f"with writer_lock({str(zoo.path)!r}):\n    print('locked', flush=True); time.sleep(600)"],
                              cwd=bad.ROOT, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        bundle = bad.tiny_bundle(tmp_path / "src")
        proc = bad.run_cli("zoo", "add", bundle, "--zoo", zoo.path, env={"MODELSELECTOR_LOCK_TIMEOUT": "1"})
        assert (
            proc.returncode == 75
            and "another process has been changing it" in proc.stderr.strip().splitlines()[-1]
        )
        assert Zoo(zoo.path).names() == []
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        start = time.monotonic()
        assert bad.run_cli("zoo", "add", bundle, "--zoo", zoo.path).returncode == 0
        assert time.monotonic() - start < 120 and Zoo(zoo.path).names() == [TINY]
    finally:
        holder.kill()


@pytest.mark.parametrize(
    "settings, phrase",
    [
        ({"epochs": "one"}, "epochs: 'one' is not a whole number"),
        ({"lr": "fast"}, "lr: 'fast' is not a number"),
        ({"roi_size": 16}, "roi_size: 16 is not a list of whole numbers or null"),
        ({"channels": "abc"}, "channels: 'abc' is not a list of whole numbers"),
        ({"batch_size": 1.5}, "batch_size: 1.5 is not a whole number"),
        ({"augment": "no"}, "augment: 'no' is not true or false"),
        ({"target_spacing": [0, 1, 1]}, "voxel sizes above 0 mm"),
        ({"val_fraction": 1.5}, "val_fraction 1.5 must be in [0, 1)"),
        ({"lr": -1}, "lr must be above 0"),
        ({"channels": [4]}, "needs at least 2 levels of channels"),
    ],
)
def test_training_settings_of_the_wrong_type_or_range_are_refused_before_training(settings, phrase):
    """A YAML value of the wrong type or range is named in one sentence when the settings are read, not met as a
    TypeError (or a silent misreading: ``augment: "no"`` trained with augmentation) somewhere in training."""
    from ModelSelectorLib.errors import TrainingError
    from ModelSelectorLib.training.config import TrainConfig

    with pytest.raises(TrainingError) as refused:
        TrainConfig.from_dict(settings).check()
    assert phrase in str(refused.value)
    TrainConfig.from_dict(
        {"epochs": 3, "lr": 1, "roi_size": None, "target_spacing": [1, 1.5, 2], "a_min": None}
    ).check()


def test_a_zoo_change_that_leaves_the_index_behind_says_how_to_update_it(indexed_zoo, tmp_path):
    """`select` refuses a zoo its index disagrees with; the change that made them disagree says so at once, with
    the command that updates the index, instead of leaving the next user's `select` to find out."""
    zoo_dir = bad.copy_tree(indexed_zoo, tmp_path / "zoo")
    added = bad.run_cli("zoo", "add", bad.tiny_bundle(tmp_path / "src", "m4"), "--zoo", zoo_dir)
    assert added.returncode == 0
    assert "note: the zoo's index needs updating: model 'm4'" in added.stderr
    assert f"`modelselector index add --zoo {zoo_dir} --model m4`" in added.stderr
    removed = bad.run_cli("zoo", "remove", "m4", "--zoo", zoo_dir)  # the index agrees again: no note
    assert removed.returncode == 0 and "note" not in removed.stderr


def test_removing_an_indexed_model_says_nothing_false_and_a_stopped_removal_finishes(indexed_zoo, tmp_path):
    """`zoo remove` of an indexed model told the user to run `index remove`, then did it itself; and run again after
    it stopped between the catalog and the index, it said the model was unknown and left the index listing it."""
    from ModelSelectorLib.selection.index import SIDECAR, load_index
    from ModelSelectorLib.zoo import Zoo

    def indexed(zoo: Path) -> set:
        return set(json.loads((zoo / "index" / SIDECAR).read_text(encoding="utf-8"))["models"])

    zoo_dir = bad.copy_tree(indexed_zoo, tmp_path / "zoo")
    name = sorted(load_index(zoo_dir).models)[0]
    removed = bad.run_cli("zoo", "remove", name, "--zoo", zoo_dir)
    assert removed.returncode == 0 and "prototype(s) from the zoo's index" in removed.stdout
    assert "note" not in removed.stderr, removed.stderr
    # a removal stopped after the catalog: the model is gone from zoo.json, its prototypes are still indexed
    again = bad.copy_tree(indexed_zoo, tmp_path / "again")
    Zoo(again).remove(name)
    assert name in indexed(again)
    finished = bad.run_cli("zoo", "remove", name, "--zoo", again)
    assert finished.returncode == 0, finished.stderr
    assert (
        "is no longer in the zoo" in finished.stdout
        and "prototype(s) from the zoo's index" in finished.stdout
    )
    assert name not in indexed(again) and name not in indexed(zoo_dir)
    unknown = bad.run_cli("zoo", "remove", "no-such-model", "--zoo", again)
    assert unknown.returncode != 0 and "no model named 'no-such-model'" in unknown.stderr


def test_prototypes_made_for_another_model_are_not_indexed_as_this_ones(indexed_zoo, tmp_path):
    """A bundle copied out of a zoo keeps its prototypes; added under another name (or as a new version with other
    weights), `index add` indexed them as the new model's, and `index check` then said the index matched."""
    from ModelSelectorLib.zoo import Zoo

    zoo_dir = bad.copy_tree(indexed_zoo, tmp_path / "zoo")
    copy = bad.copy_tree(Zoo(zoo_dir).get("m0"), tmp_path / "m0-copy")
    assert bad.run_cli("zoo", "add", copy, "--zoo", zoo_dir, "--name", "m9").returncode == 0
    indexed = bad.run_cli("index", "add", "--zoo", zoo_dir, "--model", "m9")
    assert indexed.returncode != 0 and "its prototypes were made for m0 0.1.0, not m9 0.1.0" in indexed.stderr
    assert "`modelselector prototypes --zoo" in indexed.stderr and "Traceback" not in indexed.stderr
    assert bad.run_cli("index", "add", "--zoo", zoo_dir, "--model", "m2").returncode == 0  # its own: indexed


def test_training_into_an_indexed_zoo_names_what_select_needs_next(indexed_zoo, tmp_path):
    """`train` into a zoo with an index printed only the bundle path, and every `select` then refused the zoo; a
    second version trained without prototypes was said to need `index add`, which refused it for want of them."""
    from ModelSelectorLib.datasets import make_synthetic_msd
    from ModelSelectorLib.selection.index import load_index, updating_index
    from ModelSelectorLib.zoo import Zoo

    zoo_dir = bad.copy_tree(indexed_zoo, tmp_path / "zoo")
    msd = make_synthetic_msd(tmp_path / "msd", n_cases=3, profile="ct", seed=0, shape=(12, 16, 16))
    config = tmp_path / "tiny.yaml"
    config.write_text("channels: [4, 8]\nepochs: 1\nbatch_size: 1\nnum_samples: 1\nroi_size: [8, 8, 8]\n"
                      "target_spacing: [3.0, 3.0, 3.0]\naugment: false\nnum_threads: 1\n")  # fmt: skip
    train = ["train", "--dataset", msd, "--name", "organs", "--out", zoo_dir, "--config", config]
    first = bad.run_cli(*train)
    assert first.returncode == 0, first.stderr
    assert (
        "note: the zoo's index needs updating: model 'organs' is in the zoo but has no prototypes"
        in (first.stderr)
        and "`modelselector prototypes --zoo" in first.stderr
    )
    bad.add_prototypes(Zoo(zoo_dir).get("organs"), "organs", seed=5)
    with updating_index(Path(zoo_dir) / "index", Zoo(zoo_dir)) as idx:
        idx.add_model(Zoo(zoo_dir), "organs")
        idx.save(Path(zoo_dir) / "index")
    second = bad.run_cli(*train, "--seed", "1")  # another version, without prototypes
    assert second.returncode == 0, second.stderr
    assert "current version is 0.1.1 (stale), which has no prototypes yet; run `modelselector prototypes" in (
        second.stderr
    )
    assert any("no prototypes yet" in p for p in load_index(zoo_dir).problems(Zoo(zoo_dir)))


def test_select_goes_on_with_the_indexed_models_when_one_is_not_indexed_yet(indexed_zoo, tmp_path):
    """A model trained or added since the index was built made every `select` on the zoo fail (exit 4), whatever
    the image; now the indexed models are scored and the others named in a warning."""
    from ModelSelectorLib.errors import IndexMismatchError
    from ModelSelectorLib.selection.encoder import EMBED_DIM, default_encoder
    from ModelSelectorLib.selection.index import ZooIndex, default_index_dir
    from ModelSelectorLib.selection.prototypes import (
        PrototypeSet,
        encoder_id,
        load_prototypes,
        save_prototypes,
    )
    from ModelSelectorLib.selection.selector import select
    from ModelSelectorLib.zoo import Zoo

    zoo_dir = bad.copy_tree(indexed_zoo, tmp_path / "zoo")  # m0 and m1 indexed, m2 and m3 not
    zoo = Zoo(zoo_dir)
    for name in zoo.names():  # the same prototypes, as the bundled encoder's
        old = load_prototypes(zoo.get(name))
        save_prototypes(zoo.get(name), PrototypeSet(old.vectors.reshape(-1, EMBED_DIM), old.rows, name, "0.1.0",
                                                    {"encoder": encoder_id(default_encoder())}))  # fmt: skip
    index = ZooIndex()
    for name in ("m0", "m1"):
        index.add_model(zoo, name)
    index.save(default_index_dir(zoo))
    image = bad.written("ct.nii.gz")(tmp_path)
    selection = select(image, zoo=zoo_dir, top_k=None, verify=False)
    assert {m.name for m in selection.models} == {"m0", "m1"}
    unindexed = [w for w in selection.warnings if "until then it is not offered" in w]
    assert (
        len(unindexed) == 2
        and "model 'm2' (version 0.1.0) is in the zoo but not in the index" in unindexed[0]
    )
    Zoo(zoo_dir).remove("m0")  # a model the index holds and the zoo no longer does is still refused
    with pytest.raises(IndexMismatchError, match="'m0' is in the index but not in the zoo"):
        select(image, zoo=zoo_dir, verify=False)


def test_an_imported_bundles_window_padding_is_kept(tmp_path):
    """wholeBody_ct_segmentation's SlidingWindowInferer pads windows beyond the image by replicating its edge; the
    runtime padded with zeros, which changes what a network with spatial extent sees near the edges."""
    import torch

    from ModelSelectorLib.models.segmentation import predict_logits
    from ModelSelectorLib.zoo import Zoo

    src = bad.edit_inference(
        bad.threshold_bundle(tmp_path), lambda c: c["inferer"].update(padding_mode="replicate")
    )
    zoo = Zoo.create(tmp_path / "zoo")
    zoo.add(src, name="spleen", body_region="ABDOMEN")
    assert zoo.card("spleen").inference["padding_mode"] == "replicate"
    blur = torch.nn.Conv3d(1, 1, 5, padding=2, bias=False)  # sees beyond the image near its edges
    torch.nn.init.constant_(blur.weight, 1.0 / 125)
    array = np.full((6, 7, 8), 10.0, np.float32)  # smaller than the window: every window reaches beyond it
    padded = {
        m: predict_logits(blur, array, (16, 16, 16), padding_mode=m).numpy()
        for m in ("constant", "replicate")
    }
    assert padded["replicate"][0, 0, 0, 0] > padded["constant"][0, 0, 0, 0]
