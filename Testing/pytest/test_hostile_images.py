"""Small files that announce huge images are refused quickly, before anything that size is allocated.

Reads that would allocate gigabytes if a check failed run in a child process whose address space is limited
(``RLIMIT_AS``), so that a regression fails the test instead of exhausting the machine's memory.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ModelSelectorLib.cli import main
from ModelSelectorLib.errors import InputError
from ModelSelectorLib.io import Image, geometry, read_image
from ModelSelectorLib.io.integrity import check_declared_size, max_image_bytes
from ModelSelectorLib.selection import views
from ModelSelectorLib.selection.selector import Selection

#: address space of a child process that reads a hostile file: the library's imports take about 0.45 GB
LIMIT = 1 << 30


def _read_limited(path: Path, limit: int = LIMIT) -> str:
    """``read_image(path)`` in a child process of at most ``limit`` bytes of address space: ``"REFUSED: <message>"``
    or ``"READ <size>"`` (anything else, such as a MemoryError, fails the calling test)."""
    code = textwrap.dedent(f"""
        from ModelSelectorLib.errors import InputError
        from ModelSelectorLib.io import read_image
        try:
            print("READ", read_image({str(path)!r}, check_content=False).size)
        except InputError as e:
            print("REFUSED:", e)
    """)

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          preexec_fn=limit_memory)  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith(("READ", "REFUSED")), done.stdout + done.stderr
    return done.stdout.strip()


def _zeros_stream(f, n_bytes: int, wbits: int = zlib.MAX_WBITS) -> None:
    """Write a zlib (gzip with ``wbits`` 31) stream of ``n_bytes`` zeros, 64 MiB at a time."""
    deflate, block = zlib.compressobj(1, zlib.DEFLATED, wbits), bytes(1 << 26)
    for _ in range(n_bytes // len(block)):
        f.write(deflate.compress(block))
    f.write(deflate.compress(bytes(n_bytes % len(block))) + deflate.flush())


# --- voxel sizes that make the working grids absurd -----------------------------------------------------
@pytest.mark.parametrize("voxel_mm", [1000.0, 1e30])
def test_views_refuse_absurd_voxel_size(monkeypatch, voxel_mm):
    image = Image(np.random.default_rng(0).random((20, 40, 40)).astype(np.float32), (voxel_mm,) * 3, (0.0,) * 3,
                  tuple(np.eye(3).ravel()))  # fmt: skip
    resample = views._resample

    def small_only(img, origin, size, spacing, fill):
        assert np.prod(np.asarray(size, dtype=float)) < 1e7, f"a view grid of {size} voxels was resampled"
        return resample(img, origin, size, spacing, fill)

    monkeypatch.setattr(views, "_resample", small_only)
    with pytest.raises(InputError, match=r"the image spans .* mm.*check the voxel size"):
        views.image_views(image)


@pytest.mark.parametrize("voxel_mm", [1000.0, 1e30])
def test_canonical_grid_refuses_absurd_voxel_size(monkeypatch, voxel_mm):
    src = sitk.Image([40, 40, 20], sitk.sitkUInt8)
    src.SetSpacing([voxel_mm] * 3)
    make = geometry.empty_grid

    def small_only(size, *args):
        assert np.prod(np.asarray(size, dtype=float)) < 1e9, f"a grid of {size} voxels was made"
        return make(size, *args)

    monkeypatch.setattr(geometry, "empty_grid", small_only)
    with pytest.raises(InputError, match=r"the image spans .* mm"):
        geometry.canonical_grid(src, (1.0, 1.0, 1.0))


def test_whole_body_ct_at_half_a_millimetre_passes_the_grid_check():
    assert geometry.checked_grid_size([500.0, 400.0, 2000.0], 0.5).tolist() == [1001, 801, 4001]


# --- MetaImage and NRRD data ---------------------------------------------------------------------------
def _mha(path: Path, dims: tuple[int, ...], data_bytes: int) -> Path:
    with open(path, "wb") as f:
        f.write(f"ObjectType = Image\nNDims = {len(dims)}\nDimSize = {' '.join(map(str, dims))}\n"
                "ElementType = MET_UCHAR\nCompressedData = True\nElementDataFile = LOCAL\n".encode())  # fmt: skip
        _zeros_stream(f, data_bytes)
    return path


def test_metaimage_compressed_data_is_inflated_in_bounded_pieces(tmp_path):
    # 5 MB of zlib that inflate to the 1 GiB announced: counted piece by piece, never held whole; the read is stopped
    # before ITK allocates the voxels (the check passes, so the refusal names a later step or none)
    path = _mha(tmp_path / "big.mha", (1024, 1024, 1024), 1 << 30)
    code = textwrap.dedent(f"""
        from pathlib import Path
        from ModelSelectorLib.io.integrity import check_metaimage
        check_metaimage(Path({str(path)!r}))
        print("CHECKED")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT)))  # fmt: skip
    assert done.stdout.strip() == "CHECKED", done.stderr[-2000:]


def test_metaimage_with_more_data_than_announced_is_refused(tmp_path):
    path = _mha(tmp_path / "bomb.mha", (64, 64, 64), 1 << 30)
    assert "holds more than the 262144 bytes its header announces" in _read_limited(path)


def _nrrd(path: Path, sizes: tuple[int, ...], extra: str = "", data: bytes = b"") -> Path:
    header = f"NRRD0004\ntype: uchar\ndimension: {len(sizes)}\nsizes: {' '.join(map(str, sizes))}\n"
    path.write_bytes((header + "spacings: 1 1 1\n" + extra + "\n").encode() + data)
    return path


def test_nrrd_announcing_more_than_it_holds_is_refused_before_reading(tmp_path):
    out = _read_limited(_nrrd(tmp_path / "short.nrrd", (1800, 1800, 1800), "encoding: raw\n", b"0123456789"))
    assert out.startswith("REFUSED") and "truncated: it holds 10 of the 5832000000 bytes" in out


def test_gzip_nrrd_with_more_data_than_announced_is_refused(tmp_path):
    path = _nrrd(tmp_path / "bomb.nrrd", (64, 64, 64), "encoding: gzip\n")
    with open(path, "ab") as f:
        _zeros_stream(f, 1 << 30, wbits=31)
    assert "holds more than the 262144 bytes" in _read_limited(path)


@pytest.mark.parametrize("name", ["/dev/zero", "../elsewhere/voxels.raw", "ABSOLUTE", "link.raw"])
def test_detached_nrrd_must_name_a_regular_file_beside_it(tmp_path, name):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "voxels.raw").write_bytes(bytes(64**3))
    (tmp_path / "h").mkdir()
    os.symlink("/dev/zero", tmp_path / "h" / "link.raw")
    name = str(tmp_path / "elsewhere" / "voxels.raw") if name == "ABSOLUTE" else name
    header = _nrrd(tmp_path / "h" / "image.nhdr", (64, 64, 64), f"encoding: raw\ndata file: {name}\n")
    out = _read_limited(header)
    assert out.startswith("REFUSED") and ("outside the header's folder" in out or "not a regular file" in out)


def test_detached_nrrd_pattern_of_a_billion_files_is_refused_before_any_is_named(tmp_path):
    (tmp_path / "x000.raw").write_bytes(bytes(4))
    header = _nrrd(
        tmp_path / "pattern.nhdr", (2, 2, 100), "encoding: raw\ndata file: x%03d.raw 0 999999999 1 2\n"
    )
    out = _read_limited(header)
    assert out.startswith("REFUSED") and "names 1000000000 files" in out


def test_detached_nrrd_beside_its_header_is_read(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "voxels.raw").write_bytes(np.arange(16**3, dtype=np.uint8).tobytes())
    image = read_image(
        _nrrd(tmp_path / "image.nhdr", (16, 16, 16), "encoding: raw\ndata file: data/voxels.raw\n")
    )
    assert image.size == (16, 16, 16)


def test_metaimage_data_file_outside_its_folder_is_refused(tmp_path):
    (tmp_path / "voxels.raw").write_bytes(bytes(8**3))
    (tmp_path / "h").mkdir()
    header = tmp_path / "h" / "image.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 8 8 8\nElementType = MET_UCHAR\n"
                      "ElementDataFile = ../voxels.raw\n")  # fmt: skip
    with pytest.raises(InputError, match="outside the header's folder"):
        read_image(header)


def test_sizes_past_a_quarter_of_memory_are_refused():
    with pytest.raises(InputError, match=r"65535 x 65535 x 65535 voxels .* more than this computer can read"):
        check_declared_size("image.nrrd", (65535, 65535, 65535), 2)
    assert check_declared_size("image.nrrd", (512, 512, 400), 2) == 512 * 512 * 400 * 2 < max_image_bytes()


# --- DICOM ---------------------------------------------------------------------------------------------
def _dicom_series(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    writer, uid = sitk.ImageFileWriter(), "1.2.826.0.1.3680043.2.1125.77"
    writer.KeepOriginalImageUIDOn()
    for k in range(n):
        sl = sitk.GetImageFromArray(np.random.default_rng(k).integers(-500, 500, (16, 16)).astype(np.int16))
        for tag, value in (("0008|0060", "CT"), ("0020|000e", uid), ("0020|000d", "1.2.3"), ("0020|0013", str(k + 1)),
                           ("0020|0032", f"0\\0\\{k}"), ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0008|0018", f"{uid}.{k}")):  # fmt: skip
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"s{k:03d}.dcm"))
        writer.Execute(sl)
    return folder


def test_dicom_with_absurd_rows_and_columns_is_refused_before_reading(tmp_path):
    folder = _dicom_series(tmp_path / "absurd", 2)
    for path in folder.iterdir():
        data = bytearray(path.read_bytes())
        # Rows, Columns (implicit VR: tag, length 2, value)
        for tag in (b"\x28\x00\x10\x00", b"\x28\x00\x11\x00"):
            i = data.find(tag + b"\x02\x00\x00\x00")
            assert i > 0
            data[i + 8 : i + 10] = (40000).to_bytes(2, "little")
        path.write_bytes(bytes(data))
    out = _read_limited(folder)
    assert out.startswith("REFUSED") and "announces 40000 x 40000 pixels" in out and "Rows and Columns" in out


def test_dicom_folder_with_a_symlink_loop_is_read(tmp_path):
    folder = _dicom_series(tmp_path / "loop")
    os.symlink("a", folder / "b.dcm")
    os.symlink("b.dcm", folder / "a")
    os.symlink(".", folder / "self")
    assert read_image(folder).size == (16, 16, 3)


# --- the command line and the text output -------------------------------------------------------------
@pytest.mark.parametrize("error, words", [(MemoryError("Unable to allocate 6 GiB"), "ran out of memory"),
                                          (RecursionError("maximum recursion depth"), "nested too deeply")])  # fmt: skip
def test_cli_turns_memory_and_recursion_errors_into_one_line(monkeypatch, capsys, error, words):
    from ModelSelectorLib.cli import select_cmd

    def fail(args):
        raise error

    monkeypatch.setattr(select_cmd, "cmd_select", fail)
    assert main(["select", "image.nii.gz"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("modelselector: error:") and words in err and err.count("\n") == 1
    with pytest.raises(type(error)):
        main(["--debug", "select", "image.nii.gz"])


def test_text_output_shows_a_name_with_a_line_break_on_one_line():
    first = Selection(input="new\nline.nii.gz", fits=False, models=[]).to_text().splitlines()[0]
    assert first == repr("new\nline.nii.gz")
