"""Image and segmentation I/O that never loses geometry.

One image type, :class:`Image`, holds the voxel array together with its spacing, origin and direction in
the LPS world frame that ITK, DICOM and 3D Slicer use. Readers accept NIfTI, NRRD, MHA/MHD, a DICOM
series folder and 2D PNG/JPEG/BMP/TIFF; segmentations are written as Slicer ``.seg.nrrd`` files through
``slicerio`` (segment names, colours, terminology, geometry).

Array layout follows SimpleITK: a 3D array is ``(z, y, x)`` = ``(k, j, i)``, a 2D array ``(y, x)``; a
colour image keeps its components last, ``(y, x, c)``. Spacing, origin and direction are in ITK order
``(x, y, z)``; direction is the row-major flattened ``ndim x ndim`` matrix whose columns are the world
directions of the ``i, j, k`` axes. MONAI tensors and nibabel images, whose arrays are ``(x, y, z)`` in RAS,
are converted by :meth:`Image.from_monai` and :meth:`Image.from_nibabel` (:mod:`.foreign`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_path
from ..errors import InputError
from . import foreign
from .dicom import describe_series, dicom_series
from .integrity import check_dicom_pixels, check_file, check_header_size, check_name

IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: ``Image.meta["format"]`` of files without a pixel size
PICTURE_FORMATS = frozenset(s.lstrip(".") for s in IMAGE_2D_SUFFIXES)
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")

#: a viewer's right and down (LPS) for a slice whose normal lies nearest the world axis x, y or z (radiological
#: convention): sagittal (posterior right, inferior down), coronal and axial (patient left on the right; inferior
#: or posterior down)
_VIEW_RIGHT_DOWN = {0: ((0, 1, 0), (0, 0, -1)), 1: ((1, 0, 0), (0, 0, -1)), 2: ((1, 0, 0), (0, 1, 0))}

# DICOM tags copied into Image.meta when present (used by header-based rules and model cards).
_DICOM_TAGS = {
    "0008|0060": "modality",
    "0018|0015": "body_part",
    "0008|103e": "series_description",
    "0008|1030": "study_description",
    "0020|000e": "series_uid",
    "0010|0020": "patient_id",
}


@dataclasses.dataclass
class Image:
    """A medical image: voxels plus physical geometry (LPS).

    Attributes:
        array: voxels, ``(z, y, x)`` for 3D, ``(y, x)`` for 2D, ``(..., c)`` for multi-component pixels.
        spacing: voxel size in mm along ``(x, y[, z])``.
        origin: world position (mm, LPS) of the centre of voxel ``(0, 0[, 0])``.
        direction: row-major ``ndim x ndim`` direction cosines (LPS), flattened.
        meta: header facts (``modality``, ``body_part``, ``format``, ``path``, ...); never geometry.

    Spacing, origin and direction may be given as lists or numpy arrays (direction also as an ``ndim x ndim``
    matrix); they are kept as tuples of floats. ``ndim`` is the number of spacing values.

    Raises:
        InputError: geometry of another length than the image's dimension, a spacing not positive and finite,
            a direction not orthonormal, an array whose axes do not fit the geometry (a leading channel axis, a
            3D array with 2D geometry). MONAI and nibabel data go through :meth:`from_monai`, :meth:`from_nibabel`.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # checked here, where every image is made: a wrong axis order or length would otherwise be read as
        # another image without a word; float tuples keep images hashable and comparable
        self.meta = {} if self.meta is None else self.meta
        name = str(self.meta.get("path", "image"))
        if not isinstance(self.array, np.ndarray):
            self.array = foreign.plain_array(self.array, name)
        self.spacing, self.origin, self.direction = foreign.checked_geometry(
            self.array.shape, self.spacing, self.origin, self.direction, name
        )

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return len(self.spacing)

    @property
    def is_multicomponent(self) -> bool:
        return self.array.ndim == self.ndim + 1

    @property
    def size(self) -> tuple[int, ...]:
        """Size in voxels in ITK order ``(x, y[, z])``."""
        shape = self.array.shape[: self.ndim]
        return tuple(int(s) for s in reversed(shape))

    def direction_matrix(self) -> np.ndarray:
        """Direction cosines as an ``ndim x ndim`` array (columns: world direction of i, j[, k])."""
        return np.asarray(self.direction, dtype=float).reshape(self.ndim, self.ndim)

    def ijk_to_lps(self) -> np.ndarray:
        """Homogeneous ``(ndim+1) x (ndim+1)`` matrix mapping voxel index ``(i, j[, k])`` to LPS mm."""
        n = self.ndim
        m = np.eye(n + 1)
        m[:n, :n] = self.direction_matrix() @ np.diag(self.spacing)
        m[:n, n] = self.origin
        return m

    def with_array(self, array: np.ndarray, **meta: Any) -> Image:
        """A new image with the same geometry and ``array`` (which must have the same spatial shape)."""
        if tuple(array.shape[: self.ndim]) != tuple(self.array.shape[: self.ndim]):
            raise ValueError(
                f"array shape {array.shape} does not match the image's spatial shape {self.array.shape[: self.ndim]}"
            )
        return Image(array, self.spacing, self.origin, self.direction, {**self.meta, **meta})

    def same_geometry(self, other: Image, tol: float = 1e-4) -> bool:
        """True when ``other`` has the same size, spacing, origin and direction (within ``tol``)."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    @property
    def pixel_size_known(self) -> bool:
        """False when the in-plane pixel size is not known: a picture file (PNG, JPEG, BMP, TIFF), or a lone
        slice whose in-plane spacing is exactly 1 x 1, which is what readers (and Slicer) give a picture or a
        DICOM radiograph without a pixel spacing; True for every other image."""
        if str(self.meta.get("format", "")).lower() in PICTURE_FORMATS:
            return False
        if not self.is_single_slice:
            return True
        in_plane = [float(s) for a, s in enumerate(self.spacing) if a != self.slice_axis]
        return not all(s == 1.0 for s in in_plane)

    def as_3d(self) -> Image:
        """This image as a volume: a 2D image becomes one slice of 1 mm thickness, geometry kept in-plane."""
        if self.ndim == 3:
            return self
        d2 = self.direction_matrix()
        d3 = np.eye(3)
        d3[:2, :2] = d2
        array = self.array[np.newaxis, ...]
        return Image(
            array,
            (*self.spacing, 1.0),
            (*self.origin, 0.0),
            tuple(d3.ravel().tolist()),
            dict(self.meta),
        )

    @property
    def slice_axis(self) -> Optional[int]:
        """The axis (ITK order: 0 = i, 1 = j, 2 = k) along which a volume has a single voxel: a lone axial,
        coronal or sagittal slice (k when several axes have one); None for 2D images and other volumes."""
        if self.ndim != 3:
            return None
        return next((a for a in (2, 1, 0) if self.size[a] == 1), None)

    @property
    def is_single_slice(self) -> bool:
        """True for a 2D image and for a volume of one slice along any axis (a radiograph stored as NIfTI/NRRD,
        a slice cropped from a volume)."""
        return self.ndim == 2 or self.slice_axis is not None

    def view_frame(self) -> np.ndarray:
        """``(ndim, 2)``: the world directions (LPS) of a viewer's right and down on this 2D image or lone slice,
        by the plane the slice lies nearest (radiological convention; a 2D image's are its world x and y)."""
        if self.ndim == 2:
            return np.eye(2)
        normal = self.direction_matrix()[:, self.slice_axis]
        return np.array(_VIEW_RIGHT_DOWN[int(np.argmax(np.abs(normal)))], dtype=float).T

    def in_view_layout(self) -> tuple[Image, Callable[[np.ndarray], np.ndarray]]:
        """This 2D image or lone slice with its pixels transposed and flipped so that ``i`` points to the
        viewer's right and ``j`` down (:meth:`view_frame`) and, for a volume, ``k`` is the single slice; every
        pixel keeps its world position (spacing, origin and direction follow the pixels). A model that reads
        the pixels as a picture then sees what a viewer sees, whatever the order the file stored them in.

        Returns:
            ``(image, restore)``: ``restore`` maps an array in the new layout (spatial axes first, in array
            order) back to this image's layout.

        Raises:
            InputError: a volume of several slices.
        """
        if not self.is_single_slice:
            raise InputError(
                f"the image is a volume of {self.size} voxels, not a 2D image or a single slice."
            )
        n, d, frame = self.ndim, self.direction_matrix(), self.view_frame()
        plane = [a for a in range(n) if a != self.slice_axis]
        along = np.abs(frame.T @ d[:, plane])  # how much each of the slice's two axes runs right and down
        order = plane if along[0, 0] + along[1, 1] >= along[0, 1] + along[1, 0] else plane[::-1]
        # the new i, j (and k) as old axes, and whether each runs against the viewer's right and down
        axes = order + [a for a in range(n) if a not in order]
        signs = [1.0 if frame[:, v] @ d[:, a] >= 0 else -1.0 for v, a in enumerate(order)] + [1.0] * (n - 2)
        # the array's axes are ITK's reversed; colour components stay last
        perm = [n - 1 - a for a in reversed(axes)] + list(range(n, self.array.ndim))
        flips = tuple(n - 1 - p for p, sg in enumerate(signs) if sg < 0)
        first = np.zeros(n)  # the old index of the new first pixel
        for a, sg in zip(axes, signs):
            first[a] = 0.0 if sg > 0 else self.size[a] - 1.0
        laid = Image(
            np.flip(self.array.transpose(perm), flips),
            tuple(self.spacing[a] for a in axes),
            tuple((self.ijk_to_lps() @ np.append(first, 1.0))[:n].tolist()),
            tuple(np.stack([d[:, a] * sg for a, sg in zip(axes, signs)], axis=1).ravel().tolist()),
            dict(self.meta),
        )

        def restore(array: np.ndarray) -> np.ndarray:
            back = np.flip(array, flips)
            return back.transpose([*np.argsort(perm[:n]).tolist(), *range(n, back.ndim)])

        return laid, restore

    def as_2d(self) -> Image:
        """This image as a 2D image: a lone slice in :meth:`in_view_layout` without its slice axis; a 2D image
        is returned as is.

        The 2D direction is the slice's in-plane rotation in its view frame (an axial slice keeps its 2x2
        block), made orthonormal, so that a model sees the slice as a viewer does, upright; the origin is the
        slice's first pixel in that frame. Where a slice lies in the world is left to the 3D image it came
        from.

        Raises:
            InputError: a volume with more than one slice.
        """
        if self.ndim == 2:
            return self
        if not self.is_single_slice:
            raise InputError(
                f"the image is a volume of {self.array.shape[0]} slices, not a 2D image; choose a model that "
                "takes volumes, or extract one slice."
            )
        frame = self.view_frame()
        laid, _ = self.in_view_layout()
        u, _, vt = np.linalg.svd(frame.T @ laid.direction_matrix()[:, :2])
        return Image(laid.array[0], tuple(laid.spacing[:2]), tuple((frame.T @ np.asarray(laid.origin)).tolist()),
                     tuple((u @ vt).ravel().tolist()), dict(self.meta))  # fmt: skip

    def to_grayscale(self) -> Image:
        """Single-component float image; colour pixels are mixed with ITU-R BT.601 luma weights."""
        if not self.is_multicomponent:
            return self
        arr = self.array.astype(np.float32)
        c = arr.shape[-1]
        if c >= 3:
            gray = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
        else:
            gray = arr[..., 0]
        return Image(gray, self.spacing, self.origin, self.direction, {**self.meta, "was_color": c >= 3})

    # --- SimpleITK, MONAI and nibabel conversion --------------------------------------------------------
    @classmethod
    def from_sitk(cls, img: sitk.Image, meta: Optional[dict[str, Any]] = None) -> Image:
        """An image of a SimpleITK image (its geometry kept), checked as :func:`read_image` checks a file: a 4D
        image of one volume becomes that volume; several volumes, several values per voxel other than a colour
        picture's, and sheared axes are refused.

        Args:
            img: a 2D or 3D SimpleITK image (a 4D one of a single volume).
            meta: header facts; its ``"path"`` names the image in errors.

        Raises:
            InputError: in one line, naming the problem and what to do.
        """
        meta = dict(meta or {})
        name = str(meta.get("path", "image"))
        img = _two_or_three_d(img, name)
        _check_channels(img, name)
        return cls(  # sheared axes are refused where every Image is made (foreign.checked_geometry)
            sitk.GetArrayFromImage(img), img.GetSpacing(), img.GetOrigin(), img.GetDirection(), meta
        )

    @classmethod
    def from_monai(cls, tensor: Any) -> Image:
        """An image of a MONAI ``MetaTensor`` (``LoadImage``'s output): ``(x, y, z)`` or channel-first
        ``(1, x, y, z)`` voxels (``(x, y)``, ``(1, x, y)`` in 2D) as a ``(z, y, x)`` array, and its affine (RAS
        unless ``meta["space"]`` says LPS) as LPS spacing (mm), origin (mm) and direction; every voxel keeps its
        world position (:func:`.foreign.monai_voxels`).

        Raises:
            InputError: several channels (other than a colour picture's), sheared or degenerate axes, a batch.
        """
        return _from_voxels(foreign.monai_voxels(tensor))

    @classmethod
    def from_nibabel(cls, img: Any) -> Image:
        """An image of a nibabel spatial image (``nibabel.load``): its scaled ``(x, y, z)`` data (``(x, y)`` in
        2D) as a ``(z, y, x)`` array, and its RAS affine as LPS spacing (mm), origin (mm) and direction, as
        :func:`read_image` reads the same file (:func:`.foreign.nibabel_voxels`).

        Raises:
            InputError: several volumes or channels, sheared or degenerate axes.
        """
        return _from_voxels(foreign.nibabel_voxels(img))

    def to_sitk(self) -> sitk.Image:
        img = sitk.GetImageFromArray(self.array, isVector=self.is_multicomponent)
        img.SetSpacing([float(s) for s in self.spacing])
        img.SetOrigin([float(o) for o in self.origin])
        img.SetDirection([float(d) for d in self.direction])
        return img


# --- checks of what an image is made of -----------------------------------------------------------------
def _two_or_three_d(img: sitk.Image, name: str) -> sitk.Image:
    """``img`` as a 2D or 3D image: a 4D image of one volume becomes that volume.

    Raises:
        InputError: a 4D image of several volumes, or another number of dimensions.
    """
    dim = img.GetDimension()
    if dim == 4:
        n = img.GetSize()[3]
        if n != 1:
            raise InputError(
                f"{name}: is 4D ({n} volumes, e.g. time points or channels) where a 3D volume is needed; "
                "extract one volume first (e.g. in Slicer, or with SimpleITK's Extract)."
            )
        size = list(img.GetSize())
        size[3] = 0
        return sitk.Extract(img, size, [0, 0, 0, 0])
    if dim not in (2, 3):
        raise InputError(f"{name}: has {dim} dimensions; only 2D images and 3D volumes are supported.")
    return img


def _from_voxels(data: foreign.Voxels) -> Image:
    """An :class:`Image` of MONAI or nibabel :class:`~.foreign.Voxels`, checked as a file is; ``meta`` holds the
    source file's ``path`` and, for an image file, its ``format`` (a picture's values mapped as in a file)."""
    suffix = _suffix(Path(data.source)) if data.source else ""
    meta: dict[str, Any] = {"path": data.source} if data.source else {}
    if suffix in IMAGE_2D_SUFFIXES or suffix in VOLUME_SUFFIXES:
        meta["format"] = suffix.lstrip(".")
    image = Image.from_sitk(foreign.sitk_of_voxels(data, picture=suffix in IMAGE_2D_SUFFIXES), meta)
    return _unitless_to_8bit(image) if suffix in IMAGE_2D_SUFFIXES else image


# --- reading ------------------------------------------------------------------------------------------
def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (".nii.gz", ".seg.nrrd"):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def _read_dicom_series(folder: Path, series_uid: Optional[str]) -> tuple[sitk.Image, dict[str, Any]]:
    reader = sitk.ImageSeriesReader()
    try:
        found = dicom_series(folder)
    except RuntimeError as e:  # pragma: no cover - GDCM reports unreadable folders this way
        raise InputError(f"{folder}: cannot scan the folder for DICOM files ({e}).") from e
    series = list(found)
    if not series:
        raise InputError(
            f"{folder}: is a folder but holds no DICOM series; pass a DICOM series folder or an image file."
        )
    if series_uid is None:
        if len(series) > 1:
            raise InputError(
                f"{folder}: the folder mixes {len(series)} DICOM series; choose one with --series UID (on the "
                f"command line; series_uid= in Python) or put each series in its own folder: "
                f"{'; '.join(describe_series(uid, files) for uid, files in found.items())}."
            )
        series_uid = series[0]
    elif series_uid not in series:
        raise InputError(f"{folder}: no DICOM series with UID {series_uid}; found "
                         f"{'; '.join(describe_series(uid, files) for uid, files in found.items())}.")  # fmt: skip
    files = found[series_uid]
    _check_series_size(folder, files)
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    try:
        img = reader.Execute()
    except RuntimeError as e:
        raise InputError(f"{folder}: the DICOM series could not be read ({_itk_reason(e)[:300]}).") from e
    _check_slice_positions(reader, img, folder)
    meta: dict[str, Any] = {"format": "dicom", "n_files": len(files)}
    for tag, key in _DICOM_TAGS.items():
        if reader.HasMetaDataKey(0, tag):
            meta[key] = reader.GetMetaData(0, tag).strip()
    return img, meta


def _check_series_size(folder: Path, files: list[str]) -> None:
    """Refuse a series that announces more pixels than it holds or than can be read (before GDCM allocates)."""
    head = sitk.ImageFileReader()
    head.SetFileName(files[0])
    try:
        head.ReadImageInformation()
    except RuntimeError:
        return  # the series reader will say what it cannot read
    check_dicom_pixels(folder, files, head)


def _check_slice_positions(reader: sitk.ImageSeriesReader, img: sitk.Image, folder: Path) -> None:
    """Refuse a series whose slices do not lie where the volume's regular grid puts them.

    ITK builds the grid from the first slice's orientation and the mean slice distance, so a gantry-tilted
    (sheared) series or one with missing or duplicated slices would be read without error on a grid that
    misplaces its slices, and every result written on that grid would be misplaced too. Slices without an
    Image Position (Patient) are not checked.

    Raises:
        InputError: a slice lies more than a tenth of the slice distance from its grid position.
    """
    n = img.GetDepth()
    if n < 2 or not all(reader.HasMetaDataKey(k, "0020|0032") for k in range(n)):
        return
    try:
        actual = np.array(
            [[float(v) for v in reader.GetMetaData(k, "0020|0032").split("\\")] for k in range(n)]
        )
    except ValueError:  # a malformed position: the grid cannot be checked against it
        return
    grid = np.array([img.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, float(k))) for k in range(n)])
    off = np.linalg.norm(actual - grid, axis=1)
    worst = int(np.argmax(off))
    if actual.shape[1] == 3 and off[worst] > 0.1 * img.GetSpacing()[2]:
        steps = np.diff(actual, axis=0) @ np.asarray(img.GetDirection()).reshape(3, 3)[:, 2]
        raise InputError(
            f"{folder}: the DICOM series' slices are not on one regular grid (slice {worst + 1} of {n} lies "
            f"{off[worst]:.1f} mm from its grid position; slice distances {steps.min():.2f}-{steps.max():.2f} mm): "
            "gantry tilt, or missing or repeated slices; load it in Slicer with the DICOM module's acquisition "
            "geometry regularization and save it as NRRD, or resample it, and give that file."
        )


def _itk_reason(e: BaseException) -> str:
    """The cause in an ITK exception's message, on one line (without the source file and object address)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if "ERROR:" in ln:
            reason = ln.split("ERROR:", 1)[1].strip()
            reason = (
                reason.split("): ", 1)[1]
                if reason.split("(", 1)[0].isidentifier() and "): " in reason
                else reason
            )
            return " ".join([reason, *lines[i + 1 :]])
    return lines[-1] if lines else type(e).__name__


#: pixel types of colour pictures (RGB, RGBA, grey and alpha): vectors of 8 or 16-bit unsigned values
_COLOUR_PIXELS = (sitk.sitkVectorUInt8, sitk.sitkVectorUInt16)


def _check_channels(img: sitk.Image, name: os.PathLike | str) -> None:
    """Refuse several values per voxel other than a colour picture's (RGB or RGBA; grey and alpha in a picture
    file): echoes, contrasts or a vector field would be mixed as if they were colours.

    Raises:
        InputError: naming the number of channels and how to keep one.
    """
    n = img.GetNumberOfComponentsPerPixel()
    if n == 1:
        return
    path = Path(name)
    if path.name.lower().endswith(".seg.nrrd"):
        raise InputError(
            f"{path}: a segmentation of {n} overlapping layers, where one label map is needed; export it as a "
            "label map (Slicer: Segmentations > Export to label map) or keep segments that do not overlap."
        )
    colour = img.GetPixelID() in _COLOUR_PIXELS and (
        n in (3, 4) or (n == 2 and _suffix(path) in IMAGE_2D_SUFFIXES)
    )
    if not colour:
        raise InputError(
            f"{path}: holds {n} values of type {img.GetPixelIDTypeAsString()} per voxel (channels such as echoes, "
            "contrasts or a vector field) where one is needed; keep one channel first (e.g. in Slicer, or with "
            "SimpleITK's VectorIndexSelectionCast)."
        )


def _picture_without_alpha(path: Path) -> Optional[sitk.Image]:
    """A grey picture with an alpha channel, which ITK cannot read ("Unknown PixelType"), read with Pillow
    without the alpha channel; None for any other file."""
    if _suffix(path) not in IMAGE_2D_SUFFIXES:
        return None
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            if im.mode not in ("LA", "La"):
                return None
            array = np.asarray(im.convert("L"))
    except (OSError, SyntaxError, ValueError, PILImage.DecompressionBombError):
        return None
    return sitk.GetImageFromArray(array)


def _read_error(path: Path, e: BaseException, header: bool = False) -> InputError:
    """A one-line error for an ITK failure to read ``path`` (its header when ``header``)."""
    reason = _itk_reason(e)
    if "Bad direction" in reason:
        return InputError(
            f"{path}: the image's direction matrix is degenerate (two axes point the same way, or one has no "
            "direction), so its geometry is undefined; fix the direction in the header (TransformMatrix, space "
            "directions, qform/sform)."
        )
    if "orthonormal" in reason:
        return foreign.sheared_error(path)
    if "[nrrd]" in reason:  # teem chains its callers' complaints; the last one is the cause
        reason = reason.rsplit("[nrrd]", 1)[1].split(": ", 1)[-1].strip()
        if "expected" in reason or "got only" in reason:
            return InputError(f"{path}: the file is truncated ({reason}); get an intact copy.")
    if header:
        check_name(path, _suffix(path))
        return InputError(
            f"{path}: not an image that can be read (supported: NIfTI, NRRD, MHA, DICOM, PNG, JPEG); {reason[:300]}"
        )
    return InputError(f"{path}: the image data could not be read ({reason[:300]}).")


def pixels_in_8bit_range(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer pixel values of a picture (no unit) with more than 8 significant bits mapped to the 8-bit range
    (float32, nothing rounded), and the bits they had; 8-bit and non-integer values are returned as they are."""
    if arr.dtype.kind not in "ui" or not arr.size:
        return arr, 8
    top = int(arr.max())
    bits = max(8, int(np.ceil(np.log2(top + 1)))) if top > 0 else 8
    if bits == 8:
        return arr, 8
    return arr.astype(np.float32) * np.float32(255.0 / (2**bits - 1)), bits


def _unitless_to_8bit(image: Image) -> Image:
    """Pixel values of a PNG/JPEG/BMP/TIFF have no unit: map integers of more than 8 significant bits to the
    8-bit range (:func:`pixels_in_8bit_range`), so that one radiograph stored with 8, 12 or 16 bits reads alike."""
    if image.array.dtype.kind not in "ui" or not image.array.size:
        return image
    arr, bits = pixels_in_8bit_range(image.array)
    return image.with_array(arr, bit_depth=bits)


def _file_meta(reader: sitk.ImageFileReader) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    keys = set(reader.GetMetaDataKeys())
    for tag, key in _DICOM_TAGS.items():
        if tag in keys:
            meta[key] = reader.GetMetaData(tag).strip()
    if "descrip" in keys:  # NIfTI header description
        meta["description"] = reader.GetMetaData("descrip").strip()
    return meta


def read_image(
    path: os.PathLike | str,
    *,
    require_3d: bool = False,
    series_uid: Optional[str] = None,
    check_content: bool = True,
) -> Image:
    """Read an image file or DICOM series folder into an :class:`Image` with its geometry.

    The file's integrity is checked first (:mod:`.integrity`): a truncated or damaged file, or a NIfTI
    with NaN/infinite voxels or scaling, is refused rather than read with zeros in place of the missing or
    non-finite voxels. Pixel values of PNG/JPEG/BMP/TIFF images, which have no unit, are mapped to the 8-bit
    range when they use more than 8 bits (``meta["bit_depth"]`` says how many they used), so that intensity
    handling never depends on the bit depth a radiograph was saved with.

    Args:
        path: NIfTI, NRRD, MHA/MHD, PNG/JPEG/BMP/TIFF file, or a folder holding one DICOM series.
        require_3d: refuse 2D images (raise :class:`InputError`) instead of returning them.
        series_uid: which series to read from a folder that holds several (refused for a file).
        check_content: refuse empty, constant, or NaN-containing images.

    Raises:
        InputError: missing path, unreadable, truncated or non-image file, sheared or degenerate axes, 4D
            image, mixed DICOM series, empty or NaN-filled image. The message names the problem and what to do.
    """
    p = Path(path)
    try:
        exists = p.exists()
    except OSError as e:  # e.g. a name longer than the file system allows
        raise InputError(f"{p}: cannot be looked up ({e.strerror}); check the path.") from e
    if not exists:
        raise InputError(f"{p}: no such file or folder; check the path.")
    if p.is_dir():
        img, meta = _read_dicom_series(p, series_uid)
    elif series_uid:
        raise InputError(
            f"{p}: a series UID ({series_uid}) picks one series of a DICOM folder, and this is a file; give the "
            "folder, or leave the series out (--series)."
        )
    else:
        if p.stat().st_size == 0:
            raise InputError(f"{p}: the file is empty (0 bytes); it is not an image.")
        check_file(p, _suffix(p))
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            img, meta = _picture_without_alpha(p), {}
            if img is None:
                raise _read_error(p, e, header=True) from e
        else:
            check_header_size(p, reader)  # before ITK allocates what the header announces
            meta = _file_meta(reader)
            try:
                img = reader.Execute()
            except RuntimeError as e:
                raise _read_error(p, e) from e
        meta["format"] = _suffix(p).lstrip(".")
    meta["path"] = str(p)

    if img.GetDimension() == 3 and img.GetSize()[2] == 1 and _suffix(p) in IMAGE_2D_SUFFIXES:
        img = img[:, :, 0]
    image = Image.from_sitk(img, meta)  # 4D, channels and shear are refused there, naming meta["path"]
    if _suffix(p) in IMAGE_2D_SUFFIXES:
        image = _unitless_to_8bit(image)
    if require_3d and image.ndim != 3:
        raise InputError(f"{p}: is a 2D image where a 3D volume is needed.")
    if check_content:
        check_image_content(image, str(p))
    return image


def as_image(image: Any) -> Image:
    """An :class:`Image` from what a caller may hold: an :class:`Image` (as is), a SimpleITK image
    (:meth:`Image.from_sitk`), a MONAI ``MetaTensor`` (:meth:`Image.from_monai`), a nibabel image
    (:meth:`Image.from_nibabel`) or a path (:func:`read_image`).

    Raises:
        InputError: anything else (a bare numpy array or torch tensor has no geometry), naming how to make an
            :class:`Image` of it.
    """
    if isinstance(image, Image):
        return image
    if isinstance(image, sitk.Image):
        return Image.from_sitk(image)
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    kind = foreign.foreign_kind(image)
    if kind == "MONAI":
        return Image.from_monai(image)
    if kind == "nibabel":
        return Image.from_nibabel(image)
    raise InputError(
        f"expected an image (ModelSelectorLib.io.Image, a SimpleITK image, a MONAI MetaTensor, a nibabel image or "
        f"a file path), not a {type(image).__module__}.{type(image).__name__}; wrap an array with its geometry as "
        "Image(array, spacing, origin, direction), the array in (z, y, x) order and the geometry in LPS (spacing "
        "and origin in x, y, z order), or convert MONAI or nibabel data with Image.from_monai(tensor) or "
        "Image.from_nibabel(img)."
    )


def check_image_content(image: Image, name: str = "image") -> None:
    """Raise :class:`InputError` when an image has no voxels, non-finite voxels, or one constant value."""
    arr = image.array
    if arr.size == 0:
        raise InputError(f"{name}: the image has no voxels (size {image.size}).")
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        n_bad = int(arr.size - np.count_nonzero(finite))
        if n_bad == arr.size:
            raise InputError(f"{name}: every voxel is NaN or infinite; the image holds no data.")
        if n_bad:
            raise InputError(
                f"{name}: {n_bad} of {arr.size} voxels are NaN or infinite; "
                "replace them (e.g. with the background value) before use."
            )
    lo, hi = arr.min(), arr.max()
    if lo == hi:
        raise InputError(f"{name}: the image is empty (every voxel equals {lo.item()}).")


#: at most this many distinct whole-number values can make a label map: in the shared data, label maps hold 2-24
#: values, and its atlases and multi-organ maps 42 (TotalSegmentator), 49 (Harvard-Oxford, JHU) and 117 (AAL);
#: whole-body atlases reach a few hundred. Pictures with so few values (every 8-bit one) are told from label
#: maps by their regions (:data:`LABEL_MAP_MIN_REGION_SHARE`)
LABEL_MAP_MAX_VALUES = 1024

#: a label map is made of regions: at least this share of neighbouring non-zero voxels hold the same value along
#: some axis. In the shared data every one of its 605 label maps of at most 32 values reaches 0.946, and the four
#: of 42-117 values 0.948-0.995; of 131 slices of its FLAIR, cardiac and hippocampus volumes with few values (dark
#: edge slices, 0-8 and the like) one does (0.950) and the others stay under 0.84: their few values vary from voxel
#: to voxel, as noise does. None of its 2,293 pictures and volumes of 33-4,096 whole-number values (8-bit
#: radiographs, CT and MR slices, FLAIR volumes) exceeds 0.67
LABEL_MAP_MIN_REGION_SHARE = 0.9


def region_share(array: np.ndarray, max_voxels: int = 4_000_000, max_side: int = 512) -> float:
    """The largest share, over the axes, of pairs of neighbouring non-zero voxels of ``array`` that hold the same
    value (1.0 when no two non-zero voxels are neighbours). It is measured on every k-th voxel of the in-plane
    axes longer than ``max_side``: a picture enlarged from fewer pixels has runs of equal neighbours that
    sampling breaks, while a label map's regions survive it (an 8-bit radiograph enlarged to 8,192 px reached
    0.93). A large volume is also measured on every k-th slice of its first axis, along the other axes."""
    a = np.asarray(array)
    plane = range(a.ndim - 2, a.ndim)
    a = a[tuple(slice(None, None, int(np.ceil(n / max_side))) if ax in plane else slice(None)
                for ax, n in enumerate(a.shape))]  # fmt: skip
    axes = range(a.ndim)
    if a.ndim == 3 and a.size > max_voxels:
        a = a[:: int(np.ceil(a.size / max_voxels))]
        axes = range(1, 3)
    shares = []
    for axis in axes:
        if a.shape[axis] < 2:
            continue
        x = np.moveaxis(a, axis, 0)
        both = (x[1:] != 0) & (x[:-1] != 0)
        n = int(np.count_nonzero(both))
        if n:
            shares.append(np.count_nonzero(both & (x[1:] == x[:-1])) / n)
    return float(max(shares)) if shares else 1.0


def label_map_problem(image: Image) -> Optional[str]:
    """Why ``image`` looks like a label map (a segmentation) rather than a picture of anatomy: whole-number
    voxels of at most :data:`LABEL_MAP_MAX_VALUES` distinct values that form regions (:func:`region_share` at
    least :data:`LABEL_MAP_MIN_REGION_SHARE`); None when it does not. A label map loaded as an image (Slicer
    lists both as volumes) gets answers that mean nothing, so selection and apply refuse it with this
    sentence."""
    arr = np.asarray(image.array)
    if image.is_multicomponent:
        return None  # colour pictures: never a label map
    sample = arr.reshape(-1)[:: max(1, arr.size // 4_000_000)]
    values = np.unique(sample)
    if values.size > LABEL_MAP_MAX_VALUES or not np.all(np.mod(values, 1) == 0):
        return None
    if region_share(arr) < LABEL_MAP_MIN_REGION_SHARE:
        return None  # a dark picture of few grey values, as an edge slice: its values vary like noise
    shown = ", ".join(str(int(v)) for v in values[:6]) + (", ..." if values.size > 6 else "")
    return (
        f"it holds only {values.size} distinct whole-number values ({shown}), so it looks like a label map "
        "(a segmentation), not an image; give the image it labels"
    )


def check_not_label_map(image: Image, name: str = "image") -> None:
    """Raise :class:`InputError` naming :func:`label_map_problem` when ``image`` looks like a label map."""
    problem = label_map_problem(image)
    if problem:
        raise InputError(f"{name}: {problem}.")


#: fewest pixels along each of the two largest axes of an image that can show anatomy (an icon or a line of
#: pixels cannot, and its handful of values reads as a label map)
MIN_IMAGE_SIDE = 8


def check_model_input(image: Image, name: str = "image") -> None:
    """Raise :class:`InputError` when ``image`` cannot be what a model is asked about: fewer than
    :data:`MIN_IMAGE_SIDE` pixels along one of its two largest axes, or a label map
    (:func:`check_not_label_map`)."""
    sides = sorted((int(n) for n in image.size), reverse=True)[:2]
    if min(sides) < MIN_IMAGE_SIDE:
        size = " x ".join(str(int(n)) for n in image.size)
        raise InputError(f"{name}: the image is {size} pixels, too small to show anatomy (at least "
                         f"{MIN_IMAGE_SIDE} a side are needed); give the full-size image.")  # fmt: skip
    check_not_label_map(image, name)


# --- writing ------------------------------------------------------------------------------------------
def write_image(image: Image, path: os.PathLike | str, compress: bool = True) -> Path:
    """Write ``image`` with its geometry to ``path`` (format from the extension), atomically."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix == ".seg.nrrd":
        raise ValueError("use write_segmentation() for .seg.nrrd files")
    with atomic_path(path, suffix=suffix) as tmp:
        sitk.WriteImage(image.to_sitk(), str(tmp), compress)
    return path
