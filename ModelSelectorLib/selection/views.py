"""The encoder's input views of an image: one for a 2D image, slices from three planes for a volume.

A 2D image gives one view; a 3D volume gives slices from the three orthogonal planes, taken from the
central part of the imaged body after resampling to a canonical (LPS, identity-direction) grid of fixed
isotropic spacing, so that a partial scan (only the chest of a whole-body CT) still yields views that
look like those of a full scan. Each view has two channels that depend only on the *order* and relative
spacing of its grey values, never on their units, so the same picture stored with 8, 12 or 16 bits, a
DICOM with any rescale slope and intercept, or an MR in arbitrary scanner units gives the same input
(:func:`encoder_channels`):

- channel 0: the view's own 1-99 % percentiles mapped to ``[0, 1]`` (clipped): invariant to any linear
  change of units (bit depth, rescale slope/intercept, MR scaling);
- channel 1: each pixel's rank among the view's pixels, in ``[0, 1]`` (ties share their mean rank): invariant
  to any increasing intensity map as well (windowing, gamma and contrast curves).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.geometry import checked_grid_size
from ..io.image import Image

#: side of the square views, in pixels
DEFAULT_IMAGE_SIZE = 64
#: a plane fewer voxels across than this (on the view grid) is a thin strip (:func:`is_thin_plane`)
THIN_PLANE_VOXELS = 4


def resize_pad(
    arr: np.ndarray, size: int, aspect: float = 1.0, pad_value: Optional[float] = None
) -> np.ndarray:
    """Resize a 2D array ``(h, w)`` to fit ``size x size`` keeping its physical aspect, and pad (centred).

    Args:
        arr: 2D array ``(h, w)``.
        size: output side in pixels.
        aspect: physical size of a row step divided by a column step (``spacing_y / spacing_x``).
        pad_value: value of the padding (default: the array's minimum).

    Returns:
        float32 array ``(size, size)``.
    """
    import torch

    # a copy: a flipped view one pixel thick counts as contiguous in numpy and keeps a negative stride
    t = torch.from_numpy(np.array(arr, dtype=np.float32, order="C"))[None]
    pad = None if pad_value is None else torch.tensor([float(pad_value)])
    return fit_views(t, aspect, size, pad)[0].numpy()


def fit_views(views: Any, aspect: float, size: int, pad: Optional[Any] = None) -> Any:
    """Torch views ``(B, H, W)`` resized (bilinear, antialiased when shrinking) to fit ``size x size`` keeping
    their physical aspect (row step over column step) and padded, centred, with ``pad`` ``(B,)`` (default: each
    view's minimum). Gradients pass through (:mod:`.encoder_guide`); :func:`resize_pad` is the one-array form."""
    import torch.nn.functional as F

    b, h, w = views.shape
    ph, pw = h * aspect, float(w)  # physical extents in column-step units
    scale = size / max(ph, pw)
    nh, nw = max(1, min(size, int(round(ph * scale)))), max(1, min(size, int(round(pw * scale))))
    resized = F.interpolate(views[:, None], size=(nh, nw), mode="bilinear", align_corners=False,
                            antialias=nh < h or nw < w)[:, 0]  # fmt: skip
    fill = views.amin(dim=(1, 2)) if pad is None else pad
    out = fill[:, None, None].expand(b, size, size).clone()
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out[:, y0 : y0 + nh, x0 : x0 + nw] = resized
    return out


def is_thin_plane(extents: Sequence[float], smallest: float) -> bool:
    """Whether a plane of in-plane ``extents`` is a thin strip: its short side under 15 % of its long one, or
    under ``smallest`` (same units); such planes give views only when nothing else does."""
    return min(extents) < 0.15 * max(extents) or min(extents) < smallest


def encoder_channels(views: np.ndarray) -> np.ndarray:
    """The two encoder channels of raw-intensity views (batched; see the module docstring).

    Args:
        views: float array ``(B, H, W)`` in any units.

    Returns:
        float32 array ``(B, 2, H, W)``: channel 0 = the 1st-99th percentiles of each view mapped to ``[0, 1]``
        (clipped; the full range when those percentiles coincide; zeros for a constant view), channel 1 =
        each pixel's mid-rank among the view's pixels, ``(first + last position of its value + 1) / (2 n)``,
        in ``[0, 1]`` (0.5 everywhere for a constant view).
    """
    v = np.asarray(views, dtype=np.float32)
    b, h, w = v.shape
    n = h * w
    flat = v.reshape(b, n)
    order = np.argsort(flat, axis=1, kind="stable")
    srt = np.take_along_axis(flat, order, axis=1)
    lo = srt[:, int(round(0.01 * (n - 1)))][:, None]
    hi = srt[:, int(round(0.99 * (n - 1)))][:, None]
    narrow = (hi - lo) < 1e-6  # nearly constant between the percentiles: use the full range
    lo = np.where(narrow, srt[:, :1], lo)
    hi = np.where(narrow, srt[:, -1:], hi)
    span = hi - lo
    c0 = np.clip((flat - lo) / np.maximum(span, 1e-6), 0.0, 1.0) * (span > 1e-6)
    # mid-ranks from the sorted order: every run of equal values shares (first + last + 1) / 2
    pos = np.broadcast_to(np.arange(n), (b, n))
    starts = np.ones((b, n), bool)
    starts[:, 1:] = srt[:, 1:] != srt[:, :-1]
    ends = np.ones((b, n), bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, pos, n)[:, ::-1], axis=1)[:, ::-1]
    c1 = np.empty((b, n), np.float32)
    np.put_along_axis(c1, order, (first + last + 1) / (2.0 * n), axis=1)
    return np.stack([c0, c1], axis=1).astype(np.float32).reshape(b, 2, h, w)


def view_channels(view: np.ndarray) -> np.ndarray:
    """:func:`encoder_channels` of one raw view ``(H, W)``: float32 ``(2, H, W)``."""
    return encoder_channels(np.asarray(view)[None])[0]


def _canonical_grid(img: sitk.Image, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Origin and size ``(x, y, z)`` of an identity-direction grid of ``spacing`` mm on ``img``'s centre (a size
    no image of a body needs is refused: :func:`~..io.geometry.checked_grid_size`).

    Along world axis ``w`` the grid spans ``sqrt(sum_a (d_wa L_a)^2)``, with ``L_a`` the image's length along its
    voxel axis ``a`` and ``d`` its direction: exactly the image for an axis-aligned volume (in any axis order), and
    for a tilted one about the field it images rather than the box around its corners, whose fill-valued wedges
    would shrink the body in every view (a CT tilted 20 and 15 degrees lost its abdomen match that way).
    """
    size = np.asarray(img.GetSize(), dtype=float)
    direction = np.reshape(img.GetDirection(), (3, 3))
    lengths = (size - 1) * np.asarray(img.GetSpacing(), dtype=float)
    extent = np.sqrt(((direction * lengths) ** 2).sum(axis=1))
    centre = np.asarray(img.TransformContinuousIndexToPhysicalPoint([float(v) for v in (size - 1) / 2]))
    return centre - extent / 2, checked_grid_size(extent, spacing, eps=1e-6)


def _resample(
    img: sitk.Image, origin: Sequence[float], size: Sequence[int], spacing: float, fill: float
) -> np.ndarray:
    """Resample ``img`` (linear) onto an identity-direction grid; returns the array ``(z, y, x)``."""
    f = sitk.ResampleImageFilter()
    f.SetOutputOrigin([float(o) for o in origin])
    f.SetOutputSpacing([float(spacing)] * 3)
    f.SetOutputDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    f.SetSize([int(s) for s in size])
    f.SetInterpolator(sitk.sitkLinear)
    f.SetDefaultPixelValue(float(fill))
    f.SetOutputPixelType(sitk.sitkFloat32)
    return sitk.GetArrayFromImage(f.Execute(img))


def _central_positions(profile: np.ndarray, n: int, lo_frac: float = 0.2, hi_frac: float = 0.8) -> np.ndarray:
    """``n`` fractional positions (0-1 of the axis) spread over the central part of the foreground profile."""
    idx = np.nonzero(profile > 0)[0]
    m = len(profile)
    if len(idx) == 0 or m <= 1:
        a, b = 0.0, 1.0
    else:
        a, b = idx[0] / (m - 1), idx[-1] / (m - 1)
    a, b = a + (b - a) * lo_frac, a + (b - a) * hi_frac
    if n == 1:
        return np.asarray([(a + b) / 2])
    return np.linspace(a, b, n)


def image_views(
    image: Image,
    spacing_mm: float = 2.0,
    n_per_axis: int = 8,
    size: int = DEFAULT_IMAGE_SIZE,
    min_foreground: float = 0.05,
    raw: bool = False,
) -> np.ndarray:
    """The encoder's input views of an image.

    A 2D image (grey or colour; colour is mixed to luma) gives one view, resized keeping its physical
    aspect and padded with its minimum. A 3D volume is resampled (linear, SimpleITK) onto a canonical grid:
    identity direction (LPS axes), isotropic ``spacing_mm``, covering the whole volume, so oblique and
    anisotropic volumes look alike. From it, ``n_per_axis`` axial, coronal and sagittal slices are taken at
    evenly spread positions between 20 % and 80 % of the imaged body's extent along each axis (body =
    voxels above 10 % of the 1-99 % intensity range), so a partial scan gives views of the part it covers.
    Views are shown in radiological convention (axial: anterior up, patient left on the right; coronal and
    sagittal: superior up). Near-empty slices (less than ``min_foreground`` of the view is body) are
    skipped, and so are planes that are thin strips (a few slices only) unless nothing else remains.

    Args:
        image: a 2D or 3D :class:`~ModelSelectorLib.io.Image`.
        spacing_mm: isotropic resampling spacing of 3D volumes, in mm.
        n_per_axis: slices per orthogonal plane (3D only).
        size: side of the square views, in pixels.
        min_foreground: minimum fraction of body pixels for a 3D slice to be kept.
        raw: return the raw-intensity views ``(n, H, W)`` instead of the 2-channel encoder input.

    Returns:
        float32 array ``(n_views, 2, size, size)`` (``(n_views, size, size)`` when ``raw``).

    Raises:
        InputError: the image has no voxels, non-finite voxels, or more than 3 dimensions.
    """
    img = image.to_grayscale() if image.is_multicomponent else image
    arr = np.asarray(img.array)
    if arr.size == 0:
        raise InputError("image has no voxels; nothing to embed.")
    if img.is_single_slice:  # a one-slice volume is a 2D image, read as a viewer sees it
        img = img.in_view_layout()[0].as_2d()
    elif img.ndim == 3:
        img = decimated(img, spacing_mm)
    arr = img.array
    if not np.all(np.isfinite(arr)):
        raise InputError("image has NaN or infinite voxels; replace them before embedding.")
    if img.ndim == 2:
        sx, sy = float(img.spacing[0]), float(img.spacing[1])
        raw_views = [resize_pad(arr.astype(np.float32), size, aspect=sy / sx)]
    elif img.ndim == 3:
        raw_views = _volume_views(img, spacing_mm, n_per_axis, size, min_foreground)
    else:
        raise InputError(f"image has {img.ndim} dimensions; the encoder takes 2D images and 3D volumes.")
    stack = np.stack(raw_views).astype(np.float32)
    if raw:
        return stack
    return encoder_channels(stack)


def decimated(image: Image, spacing_mm: float) -> Image:
    """A volume with every ``s``-th voxel along each axis, ``s = floor(spacing_mm / spacing)`` (at least 1), so
    its voxels are still no coarser than ``spacing_mm``; same origin and direction, spacing times ``s``.

    The views are resampled to ``spacing_mm`` and shrunk further to the view size, so the voxels skipped here
    would not show; skipping them first saves copying and resampling the whole volume.
    """
    steps = [max(1, int(np.floor(spacing_mm / float(sp) + 1e-6))) for sp in image.spacing]  # (x, y, z)
    if all(st == 1 for st in steps):
        return image
    arr = np.ascontiguousarray(image.array[:: steps[2], :: steps[1], :: steps[0]])
    spacing = tuple(float(sp) * st for sp, st in zip(image.spacing, steps))
    return Image(arr, spacing, image.origin, image.direction, dict(image.meta))


def _volume_views(img: Image, spacing: float, n_per_axis: int, size: int, min_fg: float) -> list[np.ndarray]:
    s_img = img.to_sitk()  # resampled to float32 slices by _resample; no cast of the whole volume
    arr = img.array
    sub = arr[:: max(1, arr.shape[0] // 32), :: max(1, arr.shape[1] // 64), :: max(1, arr.shape[2] // 64)]
    p1, p99 = (float(x) for x in np.percentile(sub, (1.0, 99.0)))
    fill = float(sub.min())
    thr = p1 + 0.1 * (p99 - p1)
    origin, n = _canonical_grid(s_img, spacing)
    # coarse copy (about 48^3 voxels at most) to find the body's extent and skip empty slices cheaply
    extent = (n - 1) * spacing
    coarse_sp = max(spacing, float(extent.max()) / 48.0)
    cn = np.maximum(1, np.floor(extent / coarse_sp + 1e-6).astype(int) + 1)
    coarse = _resample(s_img, origin, cn, coarse_sp, fill) > thr  # (z, y, x)
    views: list[np.ndarray] = []
    thin: list[np.ndarray] = []
    # axis: 0 = axial (z), 1 = coronal (y), 2 = sagittal (x), in the (z, y, x) array
    for axis in (0, 1, 2):
        other = [a for a in (0, 1, 2) if a != axis]
        profile = coarse.sum(axis=tuple(other))
        in_plane = [n[2 - a] for a in other]  # voxels of the plane's two axes (array order)
        is_thin = is_thin_plane(in_plane, THIN_PLANE_VOXELS)
        n_take = n_per_axis if not is_thin else min(n_per_axis, 2)
        for frac in _central_positions(profile, n_take):
            ci = int(round(frac * (coarse.shape[axis] - 1)))
            fg = np.take(coarse, ci, axis=axis).mean()
            if fg < min_fg:
                continue
            pos = int(round(frac * (n[2 - axis] - 1)))
            o = np.array(origin, dtype=float)
            sz = np.array(n, dtype=int)
            o[2 - axis] = origin[2 - axis] + pos * spacing
            sz[2 - axis] = 1
            sl = np.take(_resample(s_img, o, sz, spacing, fill), 0, axis=axis)  # 2D (rows, cols)
            if axis != 0:
                sl = sl[::-1]  # rows were z (inferior first): superior up
            view = resize_pad(sl, size, pad_value=fill)
            (thin if is_thin else views).append(view)
    if not views:
        views = thin
    if not views:  # everything looked empty: take the central axial slice anyway
        o = np.array(origin, dtype=float)
        sz = np.array(n, dtype=int)
        o[2] = origin[2] + (n[2] // 2) * spacing
        sz[2] = 1
        views = [resize_pad(_resample(s_img, o, sz, spacing, fill)[0], size, pad_value=fill)]
    return views
