"""Small hostile bundle files that claim a lot: each is refused in one line before memory is spent on it.

A 10 KB ``inference.json`` can name a network of many GB, a 1 MB ``models/model.pt`` can inflate to GBs, a small
``prototypes.npz`` can declare an array of any shape, and a JSON file can nest deeper than Python recurses. The
calls that would allocate GBs if a protection failed run in a child process whose address space is limited to
about 1 GiB beyond what its imports take, so that a regression fails the test instead of exhausting memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import bad_inputs as bad
import numpy as np
import pytest

from ModelSelectorLib.errors import BundleError

ROOT = Path(__file__).resolve().parents[2]
#: what the limited child may allocate beyond its imports, in bytes
HEADROOM = 1 << 30

_CHILD = """
import json, resource, sys
import torch, monai
from ModelSelectorLib.errors import BundleError
from ModelSelectorLib.zoo import load_bundle
from ModelSelectorLib.zoo.trust import buildable_config
from ModelSelectorLib.selection.prototypes import load_prototypes
buildable_config({{"n": {{"_target_": "UNet"}}}}, "n")  # imports every allow-listed class first
vm = int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + {headroom}, vm + {headroom}))
calls = {{"network": lambda: load_bundle(sys.argv[1]), "vectors": lambda: load_prototypes(sys.argv[2])}}
out = {{}}
for name, call in calls.items():
    try:
        call()
        out[name] = "accepted"
    except BundleError as e:
        out[name] = "refused: " + str(e)
    except BaseException as e:  # an allocation that failed under the limit: the protection did not hold
        out[name] = "failed: " + type(e).__name__ + ": " + str(e)[:300]
print(json.dumps(out))
"""


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header of a float32 array of ``shape`` (no data follows it)."""
    import io

    buf = io.BytesIO()
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.float32))
    np.lib.format.write_array_header_1_0(buf, {**header, "shape": shape})
    return buf.getvalue()


def _bundle_with_prototypes(folder: Path, vectors_shape: tuple[int, ...]) -> Path:
    """The tiny bundle with one prototype record whose ``prototypes.npz`` declares ``vectors_shape``."""
    from ModelSelectorLib.selection.prototypes import PrototypeSet, prototypes_dir, save_prototypes

    bundle = bad.tiny_bundle(folder)
    rows = [{"origin": "exemplar", "source": "a.nii.gz", "view": 0}]
    save_prototypes(bundle, PrototypeSet(np.ones((1, 64), np.float32) / 8, rows, "tiny-ct", "0.1.0"))
    with zipfile.ZipFile(prototypes_dir(bundle) / "prototypes.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("vectors.npy", _npy_header(vectors_shape))
    return bundle


@pytest.fixture(scope="module")
def limited(tmp_path_factory) -> dict[str, str]:
    """What the limited child answered for each hostile file: ``refused: MESSAGE`` is the protection holding."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the address-space limit is read from /proc")
    root = tmp_path_factory.mktemp("hostile")
    huge = bad.edit_inference(bad.tiny_bundle(root / "huge"), lambda c: c["network_def"].update(
        channels=[4096, 8192]))  # fmt: skip  # about 4 GB of parameters for 10 KB of weights
    prototypes = _bundle_with_prototypes(root / "npz", (3_000_000, 512))  # 6 GB declared in a few bytes
    code = _CHILD.format(headroom=HEADROOM)
    out = subprocess.run([sys.executable, "-c", code, str(huge), str(prototypes)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_an_untrusted_network_far_larger_than_its_weights_is_refused_before_it_is_allocated(limited):
    assert limited["network"].startswith("refused: "), limited["network"]
    assert "far more than the weights in" in limited["network"]
    assert "correct the network's arguments" in limited["network"]
    assert "\n" not in limited["network"]


def test_prototype_vectors_whose_header_declares_gigabytes_are_refused_before_they_are_read(limited):
    assert limited["vectors"].startswith("refused: "), limited["vectors"]
    assert (
        "declares shape (3000000, 512)" in limited["vectors"]
        and "make the prototypes again" in limited["vectors"]
    )


def test_weights_that_do_not_fit_are_refused_before_the_network_is_built_for_real(tmp_path):
    """The shapes are compared on torch's meta device: no parameter of the real network is ever made."""
    import torch
    from torch.nn.modules import module as torch_module

    from ModelSelectorLib.zoo import load_bundle

    bundle = bad.edit_inference(
        bad.tiny_bundle(tmp_path), lambda c: c["network_def"].update(channels=[8, 16])
    )
    devices: set[str] = set()
    handle = torch_module.register_module_parameter_registration_hook(
        lambda m, n, p: devices.add(p.device.type)
    )
    try:
        with pytest.raises(BundleError, match="the weights do not fit the network in inference.json"):
            load_bundle(bundle)
    finally:
        handle.remove()
    assert devices == {"meta"}
    assert next(load_bundle(bad.tiny_bundle(tmp_path / "ok")).network.parameters()).device == torch.device(
        "cpu"
    )


def test_a_network_the_meta_device_cannot_build_is_held_to_the_same_budget(tmp_path):
    """SwinUNETR reads values while it is built (``.item()``), so it is built for real, and stopped once its
    parameters pass what the bundle's weights can fill (its 60 M parameters are never all allocated)."""
    from ModelSelectorLib.zoo import load_bundle

    swin = {"_target_": "SwinUNETR", "in_channels": 1, "out_channels": 2, "feature_size": 48}
    bundle = bad.edit_inference(bad.tiny_bundle(tmp_path), lambda c: c.update(network_def=swin))
    with pytest.raises(BundleError, match="far more than the weights in .*model.pt can fill"):
        load_bundle(bundle)


def test_a_weights_file_whose_compressed_entries_inflate_far_beyond_it_is_refused_unread(tmp_path):
    """torch writes weights uncompressed but reads deflated entries: 256 MiB from about 256 KB is refused from
    the zip directory, before anything is inflated."""
    from ModelSelectorLib.zoo import Zoo

    bundle = bad.tiny_bundle(tmp_path / "src")
    weights = bundle / "models" / "model.pt"
    with zipfile.ZipFile(weights) as z:
        entries = [(info.filename, z.read(info.filename)) for info in z.infolist()]
    storage = next(name for name, _ in entries if "/data/" in name and "/.data/" not in name)
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(weights, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries:
            if name != storage:
                z.writestr(name, data)
                continue
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w") as f:  # the first tensor's storage: 256 MiB of zeros, deflated
                for _ in range(256):
                    f.write(zeros)
    assert weights.stat().st_size < 2 << 20
    with pytest.raises(
        BundleError, match=r"model.pt: its compressed entries would inflate to 256\.\d MiB"
    ) as e:
        Zoo.create(tmp_path / "zoo").add(bundle)
    assert "torch.save(network.state_dict(), 'models/model.pt')" in str(e.value)


@pytest.mark.parametrize("name", ["metadata.json", "inference.json"])
def test_json_nested_deeper_than_python_recurses_is_one_line(tmp_path, name):
    from ModelSelectorLib.zoo import validate_bundle

    bundle = bad.tiny_bundle(tmp_path)
    (bundle / "configs" / name).write_text("[" * 200_000 + "]" * 200_000, encoding="utf-8")
    with pytest.raises(BundleError, match=f"{name}: nests lists or objects deeper than Python can read"):
        validate_bundle(bundle)


def test_json_nested_past_any_config_is_refused_before_it_is_walked(tmp_path):
    """A section the network does not use still reaches the checks that walk the whole config."""
    from ModelSelectorLib.zoo import load_bundle

    deep: list = []
    for _ in range(150):
        deep = [deep]
    bundle = bad.edit_inference(bad.tiny_bundle(tmp_path), lambda c: c.update(unused=deep))
    with pytest.raises(BundleError, match="inference.json: nests lists or objects more than 100 levels deep"):
        load_bundle(bundle)


def test_prototype_records_nested_too_deep_are_one_line(tmp_path):
    from ModelSelectorLib.selection.prototypes import load_prototypes, prototypes_dir

    bundle = _bundle_with_prototypes(tmp_path, (1, 64))
    (prototypes_dir(bundle) / "prototypes.json").write_text("[" * 200_000 + "]" * 200_000, encoding="utf-8")
    with pytest.raises(BundleError, match="unreadable prototype records"):
        load_prototypes(bundle)


def test_stored_statistics_that_declare_gigabytes_are_refused_before_they_are_read(tmp_path):
    from ModelSelectorLib.selection.prototypes import prototypes_dir, stored_extras

    bundle = _bundle_with_prototypes(tmp_path, (1, 64))
    with zipfile.ZipFile(prototypes_dir(bundle) / "feature_stats.npz", "w") as z:
        z.writestr("mean.npy", _npy_header((1 << 20, 1 << 10)))  # 4 GiB declared
    with pytest.raises(BundleError, match=r"feature_stats.npz: .*arrays declare 4\.0 GiB"):
        stored_extras(bundle)


def test_feature_statistics_that_declare_gigabytes_are_refused_where_select_reads_them(tmp_path):
    from ModelSelectorLib.models.registry import runtime_for
    from ModelSelectorLib.selection.prototypes import prototypes_dir
    from ModelSelectorLib.zoo import load_bundle

    bundle = _bundle_with_prototypes(tmp_path, (1, 64))
    with zipfile.ZipFile(prototypes_dir(bundle) / "feature_stats.npz", "w") as z:
        z.writestr("mean.npy", _npy_header((1 << 20, 1 << 10)))  # 4 GiB declared
    runtime = runtime_for(load_bundle(bundle))
    with pytest.raises(BundleError, match=r"feature_stats.npz: .*arrays declare 4\.0 GiB"):
        runtime.feature_statistics()
