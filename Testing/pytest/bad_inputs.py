"""Makers of the bad-input corpus of ``test_bad_input.py``: damaged images, hostile bundles, broken indexes.

Every maker writes its fixture into a folder it is given and returns the path; nothing is read from outside
the checkout. Helpers at the end run the command line as a real process and fingerprint a zoo's files.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_CXR = ROOT / "Resources" / "samples" / "cxr_chest.png"
Maker = Callable[[Path], Path]


# --- images -----------------------------------------------------------------------------------------------
def volume(seed: int = 0) -> sitk.Image:
    """A small CT-like float volume ``(x, y, z) = (24, 20, 12)`` in Hounsfield units (air in front of the
    body, a bright box inside), oblique geometry."""
    rng = np.random.default_rng(seed)
    arr = rng.normal(0.0, 20.0, (12, 20, 24)).astype(np.float32) - 100.0
    arr[:, :3, :] -= 900.0
    arr[4:8, 6:14, 8:18] += 400.0
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.9, 2.5))
    img.SetOrigin((12.5, -40.0, 7.25))
    c, s = np.cos(0.4), np.sin(0.4)
    img.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    return img


def written(name: str, image: Optional[sitk.Image] = None, compress: bool = True) -> Maker:
    """A maker writing ``image`` (default :func:`volume`) as ``name``."""

    def make(folder: Path) -> Path:
        path = folder / name
        sitk.WriteImage(image if image is not None else volume(), str(path), compress)
        return path

    return make


def cut(maker: Maker, keep: float) -> Maker:
    """The file of ``maker`` cut to ``keep`` bytes (an int) or to that fraction of its size (below 1)."""

    def make(folder: Path) -> Path:
        path = maker(folder)
        data = path.read_bytes()
        path.write_bytes(data[: int(keep if keep >= 1 else len(data) * keep)])
        return path

    return make


def bad_gzip_crc(folder: Path) -> Path:
    """A ``.nii.gz`` whose gzip trailer (CRC-32) does not match its data."""
    path = written("crc.nii.gz")(folder)
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def nifti_array(name: str, values: Callable[[np.ndarray], None]) -> Maker:
    """A float NIfTI of :func:`volume` after ``values`` changed its array in place (NaN, Inf, ...)."""

    def make(folder: Path) -> Path:
        arr = sitk.GetArrayFromImage(volume())
        values(arr)
        return written(name, sitk.GetImageFromArray(arr))(folder)

    return make


def nifti_int16_scaled(slope: float, inter: float) -> Maker:
    """An int16 NIfTI whose header's scl_slope / scl_inter are set to the given (possibly non-finite) values."""

    def make(folder: Path) -> Path:
        arr = np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8)
        path = written("scaled.nii", sitk.GetImageFromArray(arr), compress=False)(folder)
        data = bytearray(path.read_bytes())
        struct.pack_into("<ff", data, 112, slope, inter)  # scl_slope, scl_inter of the NIfTI-1 header
        path.write_bytes(bytes(data))
        return path

    return make


def metaimage_matrix(matrix: str) -> Maker:
    """A ``.mhd`` (+ ``.raw``) of :func:`volume` whose header's TransformMatrix is replaced by ``matrix``."""

    def make(folder: Path) -> Path:
        path = written("axes.mhd", compress=False)(folder)
        lines = [
            f"TransformMatrix = {matrix}" if ln.startswith("TransformMatrix") else ln
            for ln in path.read_text().splitlines()
        ]
        path.write_text("\n".join(lines) + "\n")
        return path

    return make


def sheared_nifti(folder: Path) -> Path:
    """A NIfTI whose sform shears its grid (no qform): its axes are not perpendicular."""
    import nibabel as nib

    affine = np.array([[1.0, 0.5, 0, 0], [0, 1.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])
    image = nib.Nifti1Image(np.random.default_rng(0).random((5, 6, 7)).astype(np.float32), affine)
    image.set_qform(None, code=0)
    image.set_sform(affine, code=1)
    nib.save(image, folder / "sheared.nii.gz")
    return folder / "sheared.nii.gz"


def radiograph(bits: int, suffix: str = ".png") -> Maker:
    """The bundled chest radiograph saved with ``bits`` bits per pixel (8; 12 = values x16; 16 = x257)."""

    def make(folder: Path) -> Path:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_CXR)))
        if bits != 8:
            arr = arr.astype(np.uint16) * {12: 16, 16: 257}[bits]
        path = folder / f"cxr{bits}{suffix}"
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
        return path

    return make


def image_4d(folder: Path) -> Path:
    arr = np.random.default_rng(0).random((3, 5, 6, 7)).astype(np.float32)
    return written("time.nii.gz", sitk.GetImageFromArray(arr, isVector=False))(folder)


def constant(folder: Path) -> Path:
    return written("constant.nrrd", sitk.GetImageFromArray(np.full((6, 7, 8), 5, np.int16)))(folder)


def label_map(folder: Path) -> Path:
    """A label map (0 background, 1 and 2 two structures) of :func:`volume`'s geometry, as a user might load it."""
    arr = np.zeros((12, 20, 24), np.uint8)
    arr[4:8, 6:14, 8:12], arr[4:8, 6:14, 12:18] = 1, 2
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(volume())
    return written("labels.nii.gz", img)(folder)


def empty_file(folder: Path) -> Path:
    path = folder / "empty.nii.gz"
    path.write_bytes(b"")
    return path


def text_as_nifti(folder: Path) -> Path:
    path = folder / "notes.nii"
    path.write_text("this is not an image\n" * 40)
    return path


def renamed(maker: Maker, name: str) -> Maker:
    """A maker whose file is renamed ``name`` (another extension, or none)."""

    def make(folder: Path) -> Path:
        return maker(folder).rename(folder / name)

    return make


def nifti_zero_voxel_size(folder: Path) -> Path:
    """A NIfTI whose header gives a slice thickness of 0 and no sform (niftilib reads it as 1 mm)."""
    import nibabel as nib

    image = nib.Nifti1Image(np.random.default_rng(0).random((16, 12, 10)).astype(np.float32), None)
    image.header["pixdim"][1:4] = [0.8, 0.8, 0.0]
    image.header["qform_code"] = image.header["sform_code"] = 0
    path = folder / "thin.nii.gz"
    nib.save(image, str(path))
    return path


def dicom_series(folder: Path, uids: tuple[str, ...] = ("1.2.826.0.1.3680043.2.1125.1", "1.2.826.0.1.3680043.2.1125.2"),
                 slices: int = 4) -> Path:  # fmt: skip
    """A folder holding one small CT series per UID (each ``slices`` slices of 16 x 16)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for s, uid in enumerate(uids):
        for k in range(slices):
            img = sitk.GetImageFromArray((rng.random((16, 16)) * 1000).astype(np.int16))
            img.SetSpacing((0.7, 0.7))
            for tag, value in (("0008|0060", "CT"), ("0020|000e", uid), ("0020|000d", "1.2.3"), ("0020|0013", str(k)),
                               ("0020|0032", f"0\\0\\{2.5 * k}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                               ("0008|0018", f"{uid}.{k + 1}")):  # fmt: skip
                img.SetMetaData(tag, value)
            writer.SetFileName(str(folder / f"s{s}_{k}.dcm"))
            writer.Execute(img)
    return folder


# --- bundles ----------------------------------------------------------------------------------------------
NETWORK_DEF = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
               "channels": [4, 8], "strides": [2], "num_res_units": 0}  # fmt: skip


def card_dict(name: str = "tiny-ct", version: str = "0.1.0") -> dict[str, Any]:
    return {"name": name, "version": version, "task_type": "segmentation", "modality": "CT",
            "body_region": "ABDOMEN", "labels": [{"value": 1, "name": "box", "color": [0.9, 0.3, 0.2]}],
            "input_channels": 1, "spatial_dims": 3, "target_spacing": [2.0, 2.0, 2.0],
            "intensity": {"mode": "ct", "a_min": -200, "a_max": 400}, "roi_size": [16, 16, 16],
            "training_data": "none (random weights)", "license": "Apache-2.0", "synthetic": True}  # fmt: skip


def tiny_bundle(folder: Path, name: str = "tiny-ct", version: str = "0.1.0", seed: int = 0) -> Path:
    """A complete bundle with a tiny 3D UNet (random weights) and a segmentation card."""
    import torch
    from monai.bundle import ConfigParser

    from ModelSelectorLib.zoo import ModelCard, save_bundle

    torch.manual_seed(seed)
    net = ConfigParser({"net": dict(NETWORK_DEF)}).get_parsed_content("net")
    return save_bundle(folder / f"{name}-{version}", ModelCard.from_dict(card_dict(name, version)), NETWORK_DEF,
                       net.state_dict())  # fmt: skip


def _edit_config(bundle: Path, name: str, change: Callable[[dict[str, Any]], None]) -> Path:
    path = bundle / "configs" / name
    config = json.loads(path.read_text(encoding="utf-8"))
    change(config)
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return bundle


def edit_inference(bundle: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    return _edit_config(bundle, "inference.json", change)


def _in_network(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda config: config["network_def"].update({key: value})


def bypasses(marker: Path) -> dict[str, Callable[[dict[str, Any]], None]]:
    """The four ways the old trust check let a config run a command: each would create ``marker``."""
    pickle = f"cos\\nsystem\\n(S'touch {marker}'\\ntR."
    nested = {"x": {"_target_": "monai.utils.run_cmd", "cmd_list": ["touch", str(marker)]}}
    return {
        "monai.utils.run_cmd": lambda c: c.update(
            network_def={"_target_": "monai.utils.run_cmd", "cmd_list": ["touch", str(marker)]}
        ),
        "torch.utils.collect_env.run": lambda c: c.update(
            network_def={"_target_": "torch.utils.collect_env.run", "command": f"touch {marker}"}
        ),
        "pickle.loads-expression": _in_network(
            "spatial_dims", f'$torch.serialization.pickle.loads(b"{pickle}") or 3'
        ),
        "nested-ConfigParser": _in_network(
            "spatial_dims", f"$monai.bundle.ConfigParser({nested!r}).get_parsed_content('x') or 3"
        ),
    }


def spleen_inference() -> dict[str, Any]:
    """An ``inference.json`` with the structure and values of MONAI model zoo's ``spleen_ct_segmentation``
    bundle (its network, transforms, inferer, evaluator, handlers and ``$`` expressions)."""
    key = "@image_key"
    return {
        "imports": ["$import glob", "$import numpy", "$import os"],
        "bundle_root": ".", "image_key": "image", "output_dir": "$@bundle_root + '/eval'", "output_ext": ".nii.gz",
        "output_dtype": "$numpy.float32", "output_postfix": "trans", "separate_folder": True, "load_pretrain": True,
        "dataset_dir": "/workspace/data/Task09_Spleen",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                        "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2,
                        "norm": "batch"},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": key}, {"_target_": "EnsureChannelFirstd", "keys": key},
            {"_target_": "Orientationd", "keys": key, "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": key, "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": key, "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1,
             "clip": True},
            {"_target_": "EnsureTyped", "keys": key}]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 4},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96], "sw_batch_size": 4, "overlap": 0.5},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": key,
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_ext": "@output_ext",
             "output_dtype": "@output_dtype", "output_postfix": "@output_postfix",
             "separate_folder": "@separate_folder"}]},
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": True},
        "checkpointloader": {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                             "load_dict": {"model": "@network"}},
        "initialize": ["$monai.utils.set_determinism(seed=123)",
                       "$@checkpointloader(@evaluator) if @load_pretrain else None"],
        "run": ["$@evaluator.run()"],
    }  # fmt: skip


def spleen_bundle(
    folder: Path, network_def: Optional[dict[str, Any]] = None, state_dict: Optional[dict[str, Any]] = None
) -> Path:
    """A standard MONAI bundle (no model card) with :func:`spleen_inference` and weights that fit it
    (``network_def`` and its ``state_dict`` instead of the spleen UNet when given)."""
    import torch
    from monai.bundle import ConfigParser

    path = folder / "spleen_ct_segmentation"
    (path / "configs").mkdir(parents=True)
    (path / "models").mkdir()
    config = spleen_inference()
    if network_def is not None:
        config["network_def"] = network_def
    (path / "configs" / "inference.json").write_text(json.dumps(config, indent=4))
    meta = {"version": "0.5.9", "name": "Spleen CT segmentation", "task": "Decathlon spleen segmentation",
            "network_data_format": {
                "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                                     "spatial_shape": [96, 96, 96], "dtype": "float32"}},
                "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                                     "spatial_shape": [96, 96, 96], "dtype": "float32",
                                     "channel_def": {"0": "background", "1": "spleen"}}}}}  # fmt: skip
    (path / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4))
    if state_dict is None:
        state_dict = ConfigParser({"n": config["network_def"]}).get_parsed_content("n").state_dict()
    torch.save(state_dict, path / "models" / "model.pt")
    return path


#: a 1x1x1 convolution whose channel 1 wins where its input is above 0.5 (:func:`threshold_bundle`)
THRESHOLD_NET = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1}


def threshold_bundle(folder: Path) -> Path:
    """:func:`spleen_bundle` whose network labels "input > 0.5": under the bundle's own ScaleIntensityRanged
    (-57..164 HU to 0..1) that is HU > 53.5, so what it labels shows which preprocessing ran."""
    import torch

    weights = {"weight": torch.tensor([0.0, 1.0]).view(2, 1, 1, 1, 1), "bias": torch.tensor([0.0, -0.5])}
    path = spleen_bundle(folder, dict(THRESHOLD_NET), weights)
    return edit_inference(path, lambda c: c["inferer"].update(roi_size=[32, 32, 32]))


def edit_metadata(bundle: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    return _edit_config(bundle, "metadata.json", change)


# --- indexes ----------------------------------------------------------------------------------------------
def add_prototypes(bundle: Path, name: str, seed: int, n: int = 3) -> None:
    """Give a bundle ``n`` random unit prototype vectors (the encoder's size), as ``modelselector prototypes`` would."""
    from ModelSelectorLib.selection.index import EMBED_DIM
    from ModelSelectorLib.selection.prototypes import PrototypeSet, save_prototypes

    v = np.random.default_rng(seed).normal(size=(n, EMBED_DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rows = [{"origin": "exemplar", "source": f"case{i}", "view": 0} for i in range(n)]
    save_prototypes(bundle, PrototypeSet(v, rows, name, "0.1.0", {"encoder": "test"}))


def zoo_with_index(root: Path, names: tuple[str, ...], indexed: tuple[str, ...]) -> Path:
    """A zoo holding tiny models ``names`` with prototypes, and an index of the models ``indexed``."""
    from ModelSelectorLib.selection.index import ZooIndex, default_index_dir
    from ModelSelectorLib.zoo import Zoo

    zoo = Zoo.create(root / "zoo")
    for i, name in enumerate(names):
        zoo.add(tiny_bundle(root / "src", name, seed=i))
        add_prototypes(zoo.get(name), name, seed=i)
    idx = ZooIndex()
    for name in indexed:
        idx.add_model(zoo, name)
    idx.save(default_index_dir(zoo))
    return zoo.path


# --- running and comparing ----------------------------------------------------------------------------------
def run_cli(
    *argv: Any, timeout: float = 300, env: Optional[dict[str, str]] = None
) -> subprocess.CompletedProcess:
    """Run ``python -m ModelSelectorLib ARGV`` in a separate process, as a user (or the Slicer module) does."""
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "ModelSelectorLib", *map(str, argv)], cwd=ROOT, env=environ,
                          capture_output=True, encoding="utf-8", errors="replace", timeout=timeout)  # fmt: skip


def start_cli(*argv: Any) -> subprocess.Popen:
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ModelSelectorLib", *map(str, argv)], cwd=ROOT, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", errors="replace")  # fmt: skip


def fingerprint(folder: Path) -> dict[str, str]:
    """SHA-1 of every file under ``folder`` (relative path -> digest), the writers' lock file aside."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def copy_tree(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


def gunzip_size(path: Path) -> int:
    with gzip.open(path, "rb") as f:
        return len(f.read())
