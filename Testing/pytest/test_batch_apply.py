"""Applying a model to many images: each output is reported as soon as it is written, a cancelled batch says
how far it got and keeps what it finished, ``--skip-existing`` resumes it, and a writer killed outright leaves
no temporary file behind for good."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import bad_inputs as bad
import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")

from ModelSelectorLib.apply import apply_to_file, apply_to_files  # noqa: E402
from ModelSelectorLib.errors import BatchCancelled, Cancelled  # noqa: E402

TINY = "tiny-ct"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A zoo with one tiny segmentation model and six small CT-like images."""
    from ModelSelectorLib.zoo import Zoo

    root = tmp_path_factory.mktemp("batch")
    zoo = Zoo.create(root / "zoo")
    zoo.add(bad.tiny_bundle(root / "src"))
    (root / "images").mkdir()
    images = [bad.written(f"ct{i}.nii.gz", bad.volume(seed=i))(root / "images") for i in range(6)]
    return {"zoo": zoo.path, "images": images}


def _outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.seg.nrrd"))


def test_each_output_is_reported_once_it_is_on_disk(world, tmp_path):
    seen = []

    def done(image, out, why):
        assert out is not None and out.is_file() and why is None  # written whole before it is reported
        seen.append((image, out, why))

    results = apply_to_files(world["zoo"], TINY, world["images"][:3], tmp_path / "out", on_done=done)
    assert seen == results and [image for image, _, _ in seen] == world["images"][:3]


def test_a_cancelled_batch_keeps_its_finished_outputs_and_lists_them(world, tmp_path):
    stop = threading.Event()
    seen = []

    def done(*result):
        seen.append(result)
        if len(seen) == 2:
            stop.set()

    with pytest.raises(BatchCancelled) as caught:
        apply_to_files(world["zoo"], TINY, world["images"][:4], tmp_path / "out", cancel=stop, on_done=done)
    assert isinstance(caught.value, Cancelled) and caught.value.exit_code == 130
    assert "cancelled after 2 of 4 images" in str(caught.value)
    assert caught.value.done == seen and [out.name for _, out, _ in seen] == ["ct0.seg.nrrd", "ct1.seg.nrrd"]
    assert _outputs(tmp_path / "out") == ["ct0.seg.nrrd", "ct1.seg.nrrd"]


def test_skip_existing_leaves_finished_outputs_alone(world, tmp_path, monkeypatch):
    import ModelSelectorLib.apply as apply_module

    out = tmp_path / "out"
    apply_to_files(world["zoo"], TINY, world["images"][:2], out)
    for p in out.iterdir():
        os.utime(p, (1_000_000_000, 1_000_000_000))
    results = apply_to_files(world["zoo"], TINY, world["images"][:3], out, skip_existing=True)
    assert [why is not None for _, _, why in results] == [True, True, False]
    assert all(path is not None and path.is_file() for _, path, _ in results)
    assert [p.stat().st_mtime for p in sorted(out.iterdir())][:2] == [1_000_000_000] * 2
    assert results[0][2] == f"{out / 'ct0.seg.nrrd'} exists"

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded though every output exists")

    monkeypatch.setattr(apply_module, "open_runtime", no_model)
    again = apply_to_files(world["zoo"], TINY, world["images"][:3], out, skip_existing=True)
    assert [path for _, path, _ in again] == [path for _, path, _ in results]


def test_an_interrupted_command_lists_its_outputs_and_resumes_with_skip_existing(world, tmp_path):
    """Ctrl-C while a batch runs: the outputs written so far are on stdout already, the error line says how many
    of the images were done, and the same command with --skip-existing does only the rest."""
    images = [str(p) for p in world["images"]]
    more = tmp_path / "more"
    more.mkdir()
    for i in range(14):  # enough images that the batch is still running when it is interrupted
        images.append(str(bad.written(f"extra{i}.nii.gz", bad.volume(seed=10 + i))(more)))
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "ModelSelectorLib", "apply", "--zoo", str(world["zoo"]), "--model", TINY,
            *images, "--out", str(out)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout to a pipe, as in a script
    env["MODELSELECTOR_PROGRESS"] = "lines"  # as the Slicer module runs it; no terminal bar flushes stdout
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", env=env
    )
    first = proc.stdout.readline()  # printed as soon as the first output is written, not at the end
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    listed = [line for line in (first + rest).splitlines() if line]
    assert proc.returncode == Cancelled.exit_code, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"modelselector: error: cancelled after {len(listed)} of {len(images)} images; ")
    assert "--skip-existing" in last
    on_disk = _outputs(out)
    assert 1 <= len(listed) < len(images)
    assert {Path(p).name for p in listed} <= set(on_disk) and len(on_disk) - len(listed) <= 1
    before = {name: (out / name).stat().st_mtime_ns for name in on_disk}

    proc = subprocess.run(
        [*argv, "--skip-existing"], capture_output=True, text=True, encoding="utf-8", timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert len(_outputs(out)) == len(images)
    assert {name: (out / name).stat().st_mtime_ns for name in on_disk} == before  # not written again
    assert f"{len(on_disk)} of {len(images)} outputs existed already" in proc.stderr
    assert len(proc.stdout.splitlines()) == len(images) - len(on_disk)


def test_a_killed_writer_leaves_no_temporary_file_for_good(world, tmp_path):
    """A writer killed outright (the out-of-memory killer, ``kill -9``) cannot delete its temporary file; the next
    write into the folder does, and leaves those of live writers and other files alone."""
    from ModelSelectorLib.atomic import _temp_prefix, remove_dead_temps

    out = tmp_path / "out"
    out.mkdir()
    killed = ("import os, signal\nfrom ModelSelectorLib.atomic import atomic_path\n"
              f"with atomic_path({str(out / 'ct0.seg.nrrd')!r}) as tmp:\n"
              "    tmp.write_bytes(b'half')\n    os.kill(os.getpid(), signal.SIGKILL)\n")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", killed])
    assert proc.wait(timeout=60) == -signal.SIGKILL
    left = [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert len(left) == 1 and left[0].name.endswith(".seg.nrrd")
    live = out / f"{_temp_prefix()}abcdefgh.seg.nrrd"  # this process: it may be writing it in another thread
    live.write_bytes(b"")
    parent = out / f"{_temp_prefix().replace(str(os.getpid()), str(os.getppid()))}abcdefgh.seg.nrrd"
    parent.write_bytes(b"")
    elsewhere = out / f".tmp-00000000-{proc.pid}-abcdefgh.seg.nrrd"  # a gone process of another machine
    other = [elsewhere, out / ".tmp-k9x2.seg.nrrd", out / "tmp-notes.txt"]
    for p in other:
        p.write_bytes(b"")

    apply_to_files(world["zoo"], TINY, world["images"][:2], out)
    assert not left[0].exists()
    assert all(p.exists() for p in [live, parent, *other])
    assert remove_dead_temps(out) == []


@pytest.mark.parametrize("device", ["cpu:0", "cpu"])
def test_the_first_cpu_by_number_is_the_cpu(world, tmp_path, device):
    out = apply_to_file(world["zoo"], TINY, world["images"][0], tmp_path / "o.seg.nrrd", device=device)
    assert out.is_file()
