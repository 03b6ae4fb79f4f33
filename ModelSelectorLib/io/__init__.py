"""Image, segmentation and markups I/O that never loses geometry.

- :mod:`.image`: :class:`Image` (voxels + spacing, origin, direction in LPS) and :func:`read_image` for
  NIfTI, NRRD, MHA/MHD, DICOM series folders and PNG/JPEG/BMP/TIFF; :func:`write_image`.
- :mod:`.segmentation`: Slicer ``.seg.nrrd`` with segment names, colours and terminology.
- :mod:`.markups`: Slicer ``.mrk.json`` point lists.
- :mod:`.geometry`: the canonical network grid and resampling onto grids.
- :mod:`.viewing`: images laid out as a viewer shows them (radiological layout), for the pictures drawn.
- :mod:`.foreign`: checks of the geometry a caller gives :class:`Image`; MONAI ``MetaTensor`` and nibabel
  images (``(x, y, z)``, RAS) converted by :meth:`Image.from_monai` and :meth:`Image.from_nibabel`.
"""

from __future__ import annotations

from .image import (
    IMAGE_2D_SUFFIXES,
    VOLUME_SUFFIXES,
    Image,
    as_image,
    check_image_content,
    check_model_input,
    check_not_label_map,
    label_map_problem,
    read_image,
    write_image,
)
from .markups import markups_json, read_markups, write_markups
from .segmentation import Segment, read_segmentation, write_segmentation

__all__ = [
    "IMAGE_2D_SUFFIXES",
    "VOLUME_SUFFIXES",
    "Image",
    "Segment",
    "as_image",
    "check_image_content",
    "check_model_input",
    "check_not_label_map",
    "label_map_problem",
    "markups_json",
    "read_image",
    "read_markups",
    "read_segmentation",
    "write_image",
    "write_markups",
    "write_segmentation",
]
