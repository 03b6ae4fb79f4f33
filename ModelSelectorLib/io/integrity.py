"""Integrity checks of image files, for what ITK reads without complaint.

ITK fills the missing part of a truncated NIfTI file with zeros, turns NaN voxels of a float NIfTI into 0,
ignores a NIfTI header's non-finite intensity scaling, and decodes a truncated JPEG with a grey tail. The
checks here read the file themselves, before ITK does:

- gzip streams (``.nii.gz`` and any ``.gz``) are read to the end, so that their CRC and length are checked;
- NIfTI (``.nii``, ``.nii.gz``): the data holds every voxel the header announces, no float voxel is NaN or
  infinite, and the scaling (``scl_slope``, ``scl_inter``) is finite;
- MetaImage (``.mha``, ``.mhd``): the (possibly zlib-compressed) data holds every voxel the header
  announces;
- JPEG and PNG: the compressed stream is complete (decoded with Pillow; ITK reports a truncated PNG only as
  "Error while reading file").

NRRD and TIFF readers of ITK report truncation themselves, and NaN survives in them (checked on the
array by :func:`~ModelSelectorLib.io.image.check_image_content`).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Optional

import numpy as np

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
        _check_voxel_size(
            header, path
        )  # as stored: nibabel's check_fix makes a zero 1 (and says so on stderr)
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
    """Check that a ``.mha`` / ``.mhd`` file's data holds every voxel its header announces.

    Raises:
        InputError: truncated (or damaged compressed) voxel data.
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
    data_path = path if source == "LOCAL" else path.parent / source
    if not data_path.is_file():
        raise InputError(f"{path}: its voxel data file {data_path} is missing.")
    start = offset if source == "LOCAL" else 0
    need = int(np.prod(dims, dtype=np.int64)) * size
    if fields.get("CompressedData", "False").lower() == "true":
        with open(data_path, "rb") as f:
            f.seek(start + header_size)
            inflate = zlib.decompressobj()
            try:
                got = sum(len(inflate.decompress(c)) for c in _chunks(f)) + len(inflate.flush())
            except zlib.error as e:
                raise InputError(
                    f"{path}: the compressed voxel data is damaged ({e}); get an intact copy."
                ) from e
        complete = inflate.eof
    else:
        got, complete = data_path.stat().st_size - start - header_size, True
    if got < need or not complete:
        raise InputError(
            f"{path}: the file is truncated: it holds {max(got, 0)} of the {need} bytes of voxel data its header "
            "announces; get an intact copy."
        )


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
        elif suffix in (".jpg", ".jpeg"):
            check_picture(path, "JPEG")
        elif suffix == ".png":
            check_picture(path, "PNG")
        elif suffix == ".gz":
            check_gzip(path)
    except InputError:
        check_name(path, suffix)
        raise


__all__ = [
    "actual_format",
    "check_file",
    "check_gzip",
    "check_metaimage",
    "check_name",
    "check_nifti",
    "check_picture",
]
