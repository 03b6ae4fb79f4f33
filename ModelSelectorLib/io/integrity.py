"""Integrity checks of image files, for what ITK reads without complaint.

ITK fills the missing part of a truncated NIfTI file with zeros, turns NaN voxels of a float NIfTI into 0,
ignores a NIfTI header's non-finite intensity scaling, and decodes a truncated JPEG with a grey tail. The
checks here read the file themselves, before ITK does:

- gzip streams (``.nii.gz`` and any ``.gz``) are read to the end, so that their CRC and length are checked;
- NIfTI (``.nii``, ``.nii.gz``): the data holds every voxel the header announces, no float voxel is NaN or
  infinite, and the scaling (``scl_slope``, ``scl_inter``) is finite;
- MetaImage (``.mha``, ``.mhd``) and NRRD (``.nrrd``, ``.nhdr``): the (possibly compressed) data holds every
  voxel the header announces, inflated in bounded pieces and no further than that, and a detached header names a
  regular file in its own folder or below;
- every image: its header announces no more voxel data than a quarter of the computer's memory (:func:`check_header_size`),
  and an uncompressed DICOM file holds the pixel data its Rows and Columns announce;
- JPEG and PNG: the compressed stream is complete (decoded with Pillow; ITK reports a truncated PNG only as
  "Error while reading file").

TIFF readers of ITK report truncation themselves, and NaN survives in NRRD and TIFF (checked on the array by
:func:`~ModelSelectorLib.io.image.check_image_content`).
"""

from __future__ import annotations

import gzip
import math
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

_CHUNK = 1 << 23  # bytes read at a time
#: MetaImage element types and their sizes in bytes (MetaIO's MET_ValueTypeSize)
_MET_SIZES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}  # fmt: skip


def _gzip_error(path: Path, e: Exception) -> InputError:
    if isinstance(e, EOFError):
        why = "the compressed data ends early: the file is truncated (an interrupted download or copy?)"
    elif isinstance(e, gzip.BadGzipFile) and "Not a gzipped file" in str(e):
        return InputError(
            f"{path}: the name ends in .gz but the file is not gzip-compressed, so it is not a compressed image "
            "(a text or other file renamed?); give the image file itself."
        )
    else:
        why = f"the compressed data is damaged ({e})"
    return InputError(f"{path}: {why}; get an intact copy of the file.")


def _chunks(f: BinaryIO, first: bytes = b"") -> Iterator[bytes]:
    if first:
        yield first
    yield from iter(lambda: f.read(_CHUNK), b"")


def _nifti_header(block: bytes, path: Path) -> Any:
    import nibabel as nib

    if len(block) < 4:
        raise InputError(f"{path}: the file ends inside the NIfTI header; it is truncated.")
    sizes = {struct.unpack("<i", block[:4])[0], struct.unpack(">i", block[:4])[0]}
    if not sizes & {348, 540}:  # every NIfTI header starts with its own size
        raise InputError(f"{path}: not a NIfTI file (its first bytes are not a NIfTI-1 or NIfTI-2 header).")
    klass, size = (nib.Nifti2Header, 540) if 540 in sizes else (nib.Nifti1Header, 348)
    if len(block) < size:
        raise InputError(f"{path}: the file ends inside the NIfTI header; it is truncated.")
    try:
        header = klass(binaryblock=block[:size], check=False)
        # as stored: nibabel's check_fix makes a zero 1 (and says so on stderr)
        _check_voxel_size(header, path)
        header.check_fix()  # what check=True runs
    except InputError:
        raise
    except Exception as e:  # nibabel's HeaderDataError and friends
        raise InputError(f"{path}: not a valid NIfTI header ({e}).") from e
    return header


def _check_voxel_size(header: Any, path: Path) -> None:
    """Refuse a voxel size of 0 (or not finite) in ``pixdim`` with no sform to give the grid: niftilib would
    silently make it 1 mm."""
    n = min(max(int(header["dim"][0]), 1), 3)
    sizes = [float(v) for v in header["pixdim"][1 : n + 1]]
    if int(header["sform_code"]) == 0 and any(v == 0 or not np.isfinite(v) for v in sizes):
        raise InputError(
            f"{path}: the header gives voxel sizes {' x '.join(f'{v:g}' for v in sizes)} mm (pixdim) and no sform, "
            "so the image's size in mm is unknown; set the voxel size in the header (e.g. nibabel's "
            "header.set_zooms) and save it again."
        )


def _check_scaling(header: Any, path: Path) -> None:
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if slope != 0 and not (np.isfinite(slope) and np.isfinite(inter)):
        raise InputError(
            f"{path}: the header's intensity scaling is not a finite number (scl_slope {slope}, scl_inter "
            f"{inter}), so the intensities are undefined; fix the header (scl_slope 1, scl_inter 0)."
        )


def check_nifti(path: Path) -> None:
    """Check a ``.nii`` / ``.nii.gz`` file: complete gzip stream, every voxel present, finite values.

    Raises:
        InputError: truncated or damaged file, invalid header, non-finite scaling or voxels.
    """
    compressed = path.name.lower().endswith(".gz")
    try:
        with (gzip.open if compressed else open)(path, "rb") as f:
            block = f.read(540)  # the longest header (NIfTI-2)
            header = _nifti_header(block, path)
            _check_scaling(header, path)
            offset, dtype = int(header.get_data_offset()), header.get_data_dtype()
            shape = header.get_data_shape()
            n_voxels = int(np.prod(shape, dtype=np.int64))
            gap = f.read(max(0, offset - len(block)))  # extensions between header and data
            first = block[offset:] if offset <= len(block) else b""
            got, bad = _scan_voxels(_chunks(f, first), dtype, n_voxels)
            if len(block) + len(gap) < offset:
                got = 0
    except (EOFError, OSError, zlib.error) as e:
        if compressed:
            raise _gzip_error(path, e) from e
        raise InputError(f"{path}: cannot be read ({e}).") from e
    need = n_voxels * dtype.itemsize
    if got < need:
        raise InputError(
            f"{path}: the file is truncated: it holds {got} of the {need} bytes of voxel data its header "
            f"announces ({' x '.join(str(s) for s in shape)} voxels of {dtype}); get an intact copy."
        )
    if n_voxels and bad == n_voxels:
        raise InputError(f"{path}: every voxel is NaN or infinite; the image holds no data.")
    if bad:
        raise InputError(
            f"{path}: {bad} of {n_voxels} voxels are NaN or infinite; replace them (e.g. with the background "
            "value) before use."
        )


def _scan_voxels(chunks: Iterator[bytes], dtype: np.dtype, n_voxels: int) -> tuple[int, int]:
    """Read the stream to its end; return the number of bytes read and of NaN/infinite voxels among the
    first ``n_voxels`` (float and complex types only)."""
    need = n_voxels * dtype.itemsize
    got, bad, pending = 0, 0, b""
    for chunk in chunks:
        take = chunk[: max(0, need - got)]
        got += len(chunk)
        if dtype.kind in "fc" and take:
            buf = pending + take
            usable = len(buf) - len(buf) % dtype.itemsize
            bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(buf, dtype, usable // dtype.itemsize))))
            pending = buf[usable:]
    return got, bad


def _metaimage_header(path: Path) -> tuple[dict[str, str], int]:
    """The ``Key = Value`` fields of a MetaImage header and the byte offset where its data starts."""
    fields: dict[str, str] = {}
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            offset += len(raw)
            key, sep, value = raw.decode("latin-1").partition("=")
            if not sep:
                break
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
            if offset > 1 << 16:
                break
    return fields, offset


def check_metaimage(path: Path) -> None:
    """Check that a ``.mha`` / ``.mhd`` file's data holds every voxel its header announces (and, compressed, no
    more), in a regular file next to the header or below it.

    Raises:
        InputError: truncated, damaged or oversized voxel data, or a data file elsewhere or not a file.
    """
    fields, offset = _metaimage_header(path)
    try:
        dims = [int(v) for v in fields.get("DimSize", "").split()]
        size = _MET_SIZES[fields.get("ElementType", "")] * int(fields.get("ElementNumberOfChannels", "1"))
        header_size = int(fields.get("HeaderSize", "0"))
    except (KeyError, ValueError):
        return  # ITK will say what it cannot read
    source = fields.get("ElementDataFile", "")
    if not dims or header_size < 0 or source in ("LIST", "") or "%" in source:
        return
    data_path = path if source == "LOCAL" else data_file(path, source, "ElementDataFile")
    start = offset if source == "LOCAL" else 0
    need = check_declared_size(path, dims, size)
    if fields.get("CompressedData", "False").lower() == "true":
        with open(data_path, "rb") as f:
            f.seek(start + header_size)
            got, complete = _inflated_size(f, need, path)
    else:
        got, complete = data_path.stat().st_size - start - header_size, True
    _check_amount(path, got, need, complete, f"{' x '.join(str(d) for d in dims)} voxels of {size} bytes")


# --- sizes announced by headers, data files named by them -------------------------------------------------
def max_image_bytes() -> int:
    """Most bytes of voxel data an image may announce: a quarter of the computer's memory, since reading takes
    ITK's buffer and the array copied from it, and the work after it a float32 copy at least (a whole-body CT of
    512 x 512 x 4,000 16-bit voxels has 2 GB)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):  # no sysconf: 8 GB, a 32 GB workstation's quarter
        return 1 << 33


def check_declared_size(path: os.PathLike | str, dims: Any, voxel_bytes: int) -> int:
    """The bytes of voxel data a header announces (``dims`` voxels of ``voxel_bytes`` each), refused before any
    reader allocates them when they pass :func:`max_image_bytes`.

    Raises:
        InputError: naming the size announced and the computer's limit.
    """
    dims = [int(d) for d in dims]
    need = math.prod(dims) * int(voxel_bytes)  # Python integers: no overflow
    limit = max_image_bytes()
    if need > limit or min(dims, default=0) < 0:
        raise InputError(
            f"{path}: the header announces {' x '.join(str(d) for d in dims)} voxels of {voxel_bytes} byte(s) each "
            f"({need / 1e9:.3g} GB), more than this computer can read (a quarter of its memory, {limit / 1e9:.3g} GB); "
            "check the image size in the header, or read the image on a computer with more memory."
        )
    return need


def _voxel_bytes(reader: sitk.ImageFileReader) -> int:
    """Bytes per voxel of the image ``reader`` has read the header of (1 when ITK cannot make that pixel type)."""
    try:
        probe = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), reader.GetNumberOfComponents())
        return probe.GetSizeOfPixelComponent() * probe.GetNumberOfComponentsPerPixel()
    except RuntimeError:
        return 1


def check_header_size(path: Path, reader: sitk.ImageFileReader) -> None:
    """Refuse, before reading the voxels, an image whose header (read by ``reader``) announces more than
    :func:`max_image_bytes`, and a DICOM file without the pixel data its header announces.

    Raises:
        InputError: naming the size announced.
    """
    if reader.GetImageIO() == "GDCMImageIO":
        check_dicom_pixels(path, [str(path)], reader)
    else:
        check_declared_size(path, reader.GetSize(), _voxel_bytes(reader))


#: DICOM transfer syntaxes that store the pixel data as they are (implicit VR, explicit little and big endian)
_DICOM_PLAIN = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})


def _transfer_syntax(head: bytes) -> str:
    """The Transfer Syntax UID (0002,0010) in a DICOM file's first bytes (always explicit VR little endian);
    implicit VR little endian for a file without a file meta header."""
    i = head.find(b"\x02\x00\x10\x00UI")
    if i < 0:
        return "1.2.840.10008.1.2"
    n = int.from_bytes(head[i + 6 : i + 8], "little")
    return head[i + 8 : i + 8 + n].rstrip(b"\x00 ").decode("ascii", "replace")


def check_dicom_pixels(name: os.PathLike | str, files: list[str], reader: sitk.ImageFileReader) -> None:
    """Refuse a DICOM series (``files``; ``reader`` has read the first one's header, whose size the series
    reader gives every file) that announces more than :func:`max_image_bytes`, or an uncompressed file shorter
    than the pixel data its Rows and Columns announce: GDCM would allocate them before noticing.

    Raises:
        InputError: naming the file and the size it announces.
    """
    x, y, *frames = (int(v) for v in reader.GetSize())
    voxel = _voxel_bytes(reader)
    per_file = x * y * math.prod(frames) * voxel
    for f in files:
        with open(f, "rb") as fh:
            head, size = fh.read(4096), os.fstat(fh.fileno()).st_size
        if size < per_file and _transfer_syntax(head) in _DICOM_PLAIN:
            raise InputError(
                f"{f}: the DICOM header announces {x} x {y} pixels of {voxel} bytes ({per_file} bytes), but the "
                f"file holds {size} bytes: it is truncated or its Rows and Columns are wrong; get an intact copy."
            )
    check_declared_size(name, [x, y, math.prod(frames) * len(files)], voxel)


def data_file(path: Path, name: str, field: str) -> Path:
    """The voxel data file that the detached header ``path`` names in its ``field`` (MetaImage's
    ``ElementDataFile``, NRRD's ``data file``): a regular file in the header's folder or below it, so that an image
    cannot make the reader take a device (``/dev/zero``) or any file of the computer as voxels.

    Raises:
        InputError: a file elsewhere, missing, or not a regular file.
    """
    folder = os.path.abspath(path.parent)
    data = os.path.normpath(os.path.join(folder, name))
    if os.path.commonpath([folder, data]) != folder:
        raise InputError(
            f"{path}: its {field} names {name}, outside the header's folder; keep the voxel data file next to the "
            "header (or in a folder below it) and name it relative to the header."
        )
    try:
        mode = os.stat(data).st_mode
    except OSError as e:
        raise InputError(f"{path}: its voxel data file {data} is missing ({e.strerror}); put it next to the "
                         f"header or fix the header's {field}.") from e  # fmt: skip
    if not stat.S_ISREG(mode):
        raise InputError(
            f"{path}: its {field} {name} is not a regular file (a device, folder or pipe); name the file that "
            "holds the voxel data."
        )
    return Path(data)


def _inflated_size(f: BinaryIO, need: int, path: Path, wbits: int = zlib.MAX_WBITS) -> tuple[int, bool]:
    """Bytes the zlib stream (gzip too with ``wbits`` 47) read from ``f`` inflates to, and whether it ended.
    It is inflated :data:`_CHUNK` bytes at a time, counted and dropped, and no further once it passes ``need``
    (more than the header announces is wrong too), so a small bomb costs no memory.

    Raises:
        InputError: damaged compressed data.
    """
    inflate, got = zlib.decompressobj(wbits), 0
    try:
        for chunk in _chunks(f):
            while not inflate.eof:
                out = len(inflate.decompress(chunk, _CHUNK))
                got += out
                if got > need:
                    return got, inflate.eof
                chunk = inflate.unconsumed_tail
                if not chunk and out < _CHUNK:
                    break
            if inflate.eof:
                break
    except zlib.error as e:
        raise InputError(f"{path}: the compressed voxel data is damaged ({e}); get an intact copy.") from e
    return got, inflate.eof


def _check_amount(path: Path, got: int, need: int, complete: bool, what: str) -> None:
    """Refuse voxel data of ``got`` bytes where the header announces ``need`` (``what``: voxels and type)."""
    if got > need and not complete:
        raise InputError(
            f"{path}: the compressed voxel data holds more than the {need} bytes its header announces ({what}), "
            "so the header's size or type is wrong; fix the header."
        )
    if got < need or not complete:
        raise InputError(
            f"{path}: the file is truncated: it holds {max(got, 0)} of the {need} bytes of voxel data its header "
            f"announces ({what}); get an intact copy."
        )


#: NRRD types (teem's names) and their sizes in bytes
_NRRD_SIZES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(
        (
            "short",
            "short int",
            "signed short",
            "signed short int",
            "int16",
            "int16_t",
            "ushort",
            "unsigned short",
            "unsigned short int",
            "uint16",
            "uint16_t",
        ),
        2,
    ),  # fmt: skip
    **dict.fromkeys(
        ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"), 4
    ),  # fmt: skip
    **dict.fromkeys(
        (
            "longlong",
            "long long",
            "long long int",
            "signed long long",
            "signed long long int",
            "int64",
            "int64_t",
            "ulonglong",
            "unsigned long long",
            "unsigned long long int",
            "uint64",
            "uint64_t",
            "double",
        ),
        8,
    ),  # fmt: skip
}


#: most files a detached NRRD header may name (one per slice of a volume of a few thousand slices)
MAX_DATA_FILES = 1 << 16


def _nrrd_header(path: Path) -> tuple[dict[str, str], int, list[str]]:
    """The ``field: value`` lines of an NRRD header (keys in lower case), the byte offset after the blank line
    that ends it, and the lines after it (a detached header's ``LIST`` of data files)."""
    fields: dict[str, str] = {}
    offset, rest = 0, []
    with open(path, "rb") as f:
        if not f.readline(64).startswith(b"NRRD"):
            return {}, 0, []
        offset = f.tell()
        while offset < 1 << 16:
            line = f.readline(1 << 12).decode("latin-1").rstrip("\r\n")
            offset = f.tell()
            if not line:
                break
            key, sep, value = line.partition(": ")
            if sep and not line.startswith("#"):
                fields[key.strip().lower()] = value.strip()
        if fields.get("data file", fields.get("datafile", "")).startswith("LIST"):
            rest = [ln.strip() for ln in f.read(1 << 16).decode("latin-1").splitlines() if ln.strip()]
    return fields, offset, rest


def _nrrd_files(path: Path, fields: dict[str, str], offset: int, rest: list[str]) -> list[tuple[Path, int]]:
    """The files that hold an NRRD image's data, each with the offset where its data starts."""
    source = fields.get("data file", fields.get("datafile", ""))
    if not source:
        return [(path, offset)]
    if source.startswith("LIST"):
        names = rest
    elif "%" in source:  # "name%03d.raw min max step [subdim]"
        pattern, *numbers = source.split()
        lo, hi, step = (int(v) for v in numbers[:3])
        indices = range(lo, hi + (1 if step > 0 else -1), step) if step else range(0)
        if len(indices) > MAX_DATA_FILES:  # counted before any name is made: the numbers may be any size
            raise InputError(f"{path}: its data file pattern names {len(indices)} files, more than the "
                             f"{MAX_DATA_FILES} an image is read from; fix the header's numbers.")  # fmt: skip
        names = [pattern % i for i in indices]
    else:
        names = [source]
    return [(data_file(path, name, "data file"), 0) for name in names]


def check_nrrd(path: Path) -> None:
    """Check an NRRD file (``.nrrd``, ``.nhdr``) before ITK allocates what its header announces: at most
    :func:`max_image_bytes`, every voxel present (raw, gzip, hex and text encodings; gzip inflated in bounded
    pieces), and a detached header's data files regular files in its folder or below.

    Raises:
        InputError: a size too large to read, truncated or oversized data, a data file elsewhere or not a file.
    """
    fields, offset, rest = _nrrd_header(path)
    try:
        dims = [int(v) for v in fields["sizes"].split()]
        size = _NRRD_SIZES[fields["type"].lower()]
        skip = int(fields.get("byte skip", fields.get("byteskip", "0")))
    except (KeyError, ValueError, TypeError):
        return  # ITK will say what it cannot read
    need = check_declared_size(path, dims, size)
    try:
        files = _nrrd_files(path, fields, offset, rest)
    except (ValueError, TypeError):
        return  # a pattern ITK cannot read either: it says so
    encoding = fields.get("encoding", "raw").lower()
    what = f"{' x '.join(str(d) for d in dims)} voxels of {fields['type']}"
    if encoding in ("gzip", "gz"):
        got, complete = 0, True
        for file, start in files:
            with open(file, "rb") as f:
                f.seek(start)
                n, done = _inflated_size(f, need + max(skip, 0) - got, path, wbits=47)
            got, complete = got + n, complete and done
        _check_amount(path, got - max(skip, 0), need, complete, what)
        return
    per_value = {"raw": 1.0, "hex": 2.0, "txt": 1.0 / size, "text": 1.0 / size, "ascii": 1.0 / size}
    if encoding in per_value:  # a text value takes at least one character, a hex byte two
        got = sum(file.stat().st_size - start for file, start in files) - max(skip, 0) * len(files)
        _check_amount(path, int(got / per_value[encoding] + 1e-9), need, True, what)


def check_picture(path: Path, kind: str = "JPEG") -> None:
    """Check that a JPEG or PNG file (``kind``) decodes completely (libjpeg alone fills a truncated image with
    grey; ITK says only "Error while reading file" of a truncated PNG).

    Raises:
        InputError: truncated or damaged data.
    """
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            im.load()
    except PILImage.DecompressionBombError as e:
        raise InputError(
            f"{path}: the picture is too large to read safely ({e}); reduce it to fewer pixels first."
        ) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(
            f"{path}: the {kind} data is incomplete or damaged ({e}); get an intact copy."
        ) from e


def check_gzip(path: Path) -> None:
    """Read a gzip file to the end so that a truncated or damaged stream is noticed (CRC and length).

    Raises:
        InputError: truncated or damaged compressed data.
    """
    try:
        with gzip.open(path, "rb") as f:
            for _ in _chunks(f):
                pass
    except (EOFError, OSError, zlib.error) as e:
        raise _gzip_error(path, e) from e


#: leading bytes of the formats read here: (offset, bytes, what the file is, the name ending it needs)
_SIGNATURES = (
    (0, b"\x89PNG\r\n\x1a\n", "a PNG picture", ".png"),
    (0, b"\xff\xd8\xff", "a JPEG picture", ".jpg"),
    (0, b"NRRD000", "an NRRD image", ".nrrd"),
    (0, b"ObjectType", "a MetaImage", ".mha"),
    (344, b"n+1\x00", "a NIfTI image", ".nii"),
    (128, b"DICM", "a DICOM file", ".dcm"),
)
#: the name endings each format is read under (a DICOM file needs none)
_READ_AS = {".png": {".png"}, ".jpg": {".jpg", ".jpeg"}, ".nrrd": {".nrrd", ".seg.nrrd", ".nhdr"},
            ".mha": {".mha", ".mhd"}, ".nii": {".nii"}, ".nii.gz": {".nii.gz"}, ".dcm": {".dcm", ".ima", ""}}  # fmt: skip


def actual_format(path: Path) -> Optional[tuple[str, str]]:
    """What ``path``'s leading bytes say it is, ``(description, name ending)``, for the formats read here (a
    gzip-compressed NIfTI included); None for anything else, or a file that cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(352)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                inner = f.read(352)
            return ("a gzip-compressed NIfTI image", ".nii.gz") if inner[344:348] == b"n+1\x00" else None
    except (OSError, EOFError, zlib.error):
        return None
    for offset, magic, what, ending in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return what, ending
    return None


def check_name(path: Path, suffix: str) -> None:
    """Refuse a file whose name ending (``suffix``, ``""`` for none) is not that of the format its bytes hold,
    naming the format and the ending to give it; name endings and formats not read here pass. Called once
    reading has failed: a reader that looks at the bytes (a PNG named ``.jpg``) is left to read it.

    Raises:
        InputError: e.g. a NIfTI file renamed ``.png``, or saved without its ``.nii.gz``.
    """
    if suffix not in set().union(*_READ_AS.values()):
        return
    found = actual_format(path)
    if found is not None and suffix not in _READ_AS[found[1]]:
        named = f"its name ends in {suffix}" if suffix else "its name has no extension"
        raise InputError(
            f"{path}: the file is {found[0]}, but {named}; rename it to end in {found[1]} and give it again."
        )


def check_file(path: Path, suffix: str) -> None:
    """Run the integrity checks that apply to a file with ``suffix`` (``.nii.gz``, ``.mha``, ...). A file that
    fails them because its name does not fit its format is told so (:func:`check_name`), not that it is damaged.

    Raises:
        InputError: the file is truncated or damaged, or holds NaN/infinite voxels ITK would hide.
    """
    try:
        if suffix in (".nii", ".nii.gz"):
            check_nifti(path)
        elif suffix in (".mha", ".mhd"):
            check_metaimage(path)
        elif suffix in (".nrrd", ".nhdr", ".seg.nrrd"):
            check_nrrd(path)
        elif suffix in (".jpg", ".jpeg"):
            check_picture(path, "JPEG")
        elif suffix == ".png":
            check_picture(path, "PNG")
        elif suffix == ".gz":
            check_gzip(path)
    except InputError:
        check_name(path, suffix)
        raise


# --- .npz files (prototypes, feature statistics): what their arrays declare, before any is loaded ------
#: what reading a damaged ``.npz`` file raises (its zip directory, its compressed entries, its ``.npy`` headers)
NPZ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


def readable_bytes(n: int) -> str:
    """``n`` bytes for a message: ``"12.0 MiB"``, ``"4.0 GiB"``."""
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.1f} GiB"


def npz_arrays(path: os.PathLike | str) -> dict[str, tuple[tuple[int, ...], Any]]:
    """``{name: (shape, dtype)}`` that the arrays of ``.npz`` file ``path`` declare in their ``.npy`` headers;
    no array data is read.

    Raises:
        ValueError, OSError, zipfile.BadZipFile: not an ``.npz`` file, or a header that cannot be read.
    """
    out = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"{info.filename} has .npy format {version}, not 1.0 or 2.0")
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            out[name] = (tuple(int(s) for s in shape), dtype)
    return out


def check_npz(
    path: os.PathLike | str, max_bytes: int, shapes: Optional[dict[str, tuple[Optional[int], ...]]] = None
) -> None:
    """Refuse ``.npz`` file ``path`` from its headers alone (:func:`npz_arrays`): when its arrays declare more
    than ``max_bytes`` in all, or an array named in ``shapes`` is missing or has another shape (``None``: any
    length along that axis).

    Raises:
        ValueError, KeyError: naming the array and what it declares; as :func:`npz_arrays`.
    """
    arrays = npz_arrays(path)
    for name, want in (shapes or {}).items():
        if name not in arrays:
            raise KeyError(f"{name} is not a file in the archive")
        got, dtype = arrays[name]
        if (
            len(got) != len(want)
            or any(w is not None and g != w for g, w in zip(got, want))
            or dtype.hasobject
        ):
            shown = "(" + ", ".join("any" if w is None else str(w) for w in want) + ")"
            raise ValueError(f"its {name} declares shape {got} ({dtype}), not {shown}")
    total = sum(declared_bytes(shape, dtype) for shape, dtype in arrays.values())
    if total > max_bytes:
        raise ValueError(
            f"its arrays declare {readable_bytes(total)}, more than the {readable_bytes(max_bytes)} it may hold"
        )


def read_npz(
    path: os.PathLike | str, max_bytes: int, shapes: Optional[dict[str, tuple[Optional[int], ...]]] = None
) -> dict[str, np.ndarray]:
    """The arrays of ``.npz`` file ``path``, loaded (never unpickled) only once their headers pass
    :func:`check_npz` with ``max_bytes`` and ``shapes``.

    Raises:
        One of :data:`NPZ_ERRORS`: a damaged file, or arrays it may not hold.
    """
    check_npz(path, max_bytes, shapes)
    with np.load(path, allow_pickle=False) as z:
        return {k: np.asarray(z[k]) for k in z.files}


def declared_bytes(shape: tuple[int, ...], dtype: Any) -> int:
    """Bytes an array of ``shape`` and ``dtype`` takes (as :func:`npz_arrays` reports them)."""
    return math.prod(max(int(s), 0) for s in shape) * int(dtype.itemsize)


__all__ = [
    "NPZ_ERRORS",
    "actual_format",
    "check_declared_size",
    "check_dicom_pixels",
    "check_file",
    "check_gzip",
    "check_header_size",
    "check_metaimage",
    "check_name",
    "check_nifti",
    "check_npz",
    "check_nrrd",
    "check_picture",
    "data_file",
    "declared_bytes",
    "max_image_bytes",
    "npz_arrays",
    "read_npz",
    "readable_bytes",
]
