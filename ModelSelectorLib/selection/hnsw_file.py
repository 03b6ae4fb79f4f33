"""Checks of an hnswlib graph file before hnswlib reads it, because hnswlib trusts the file: a damaged
header or neighbour list makes it allocate absurd amounts of memory or read out of bounds (a segfault).

Two checks, both without hnswlib:

- :func:`~ModelSelectorLib.provenance.file_digest`: size and SHA-256 of the file, recorded in the index
  sidecar when the graph is saved and compared when it is loaded;
- :func:`check_graph_file`: the file's structure (``HierarchicalNSW::saveIndex`` of hnswlib 0.7-0.8): a
  96-byte header, ``count`` level-0 records of fixed size (neighbour list, vector, label), then each
  element's upper-level neighbour lists; every count, size and neighbour id must be consistent with the
  index's dimension, ``M`` and element count. This covers sidecars written before digests were recorded.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Union

import numpy as np

from ..provenance import file_digest

PathLike = Union[str, "os.PathLike[str]"]

#: header of a saved HierarchicalNSW: offsetLevel0, max_elements, cur_element_count, size_data_per_element,
#: label_offset, offsetData (size_t), maxlevel (int), enterpoint_node (uint32), maxM, maxM0, M (size_t),
#: mult (double), ef_construction (size_t); little-endian 64-bit platforms
_HEADER = struct.Struct("<6QiI3QdQ")


def _check_upper_levels(data: bytes, pos: int, count: int, max_m: int, max_level: int) -> int:
    """Walk the upper-level neighbour lists that follow the level-0 records; returns the end position."""
    per_level = 4 + 4 * max_m
    for i in range(count):
        if pos + 4 > len(data):
            raise ValueError(f"the file ends inside the upper-level lists (element {i} of {count})")
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if size % per_level or size // per_level > max(max_level, 0) or pos + size > len(data):
            raise ValueError(f"element {i} has an impossible upper-level list of {size} bytes")
        if size:
            levels = np.frombuffer(data, np.uint32, size // 4, pos).reshape(-1, 1 + max_m)
            if (levels[:, 0] > max_m).any() or (levels[:, 1:] >= max(count, 1)).any():
                raise ValueError(f"element {i} has upper-level neighbours that do not exist")
        pos += size
    return pos


def check_graph_file(path: PathLike, dim: int, count: int, M: int) -> None:
    """Check that ``path`` is a complete hnswlib graph of ``count`` ``dim``-d float vectors built with ``M``.

    Raises:
        ValueError: the first inconsistency found (what and where).
    """
    data = Path(path).read_bytes()
    if len(data) < _HEADER.size:
        raise ValueError(f"{len(data)} bytes is shorter than the {_HEADER.size}-byte header")
    (offset0, max_elements, cur, per_element, label_offset, offset_data, max_level, entry,
     max_m, max_m0, m, _mult, _efc) = _HEADER.unpack_from(data)  # fmt: skip
    links0 = 4 + 4 * max_m0
    expected = {
        "offsetLevel0": (offset0, 0),
        "cur_element_count": (cur, count),
        "M": (m, M),
        "maxM": (max_m, M),
        "maxM0": (max_m0, 2 * M),
        "size_data_per_element": (per_element, links0 + 4 * dim + 8),
        "label_offset": (label_offset, links0 + 4 * dim),
        "offsetData": (offset_data, links0),
    }
    for name, (got, want) in expected.items():
        if got != want:
            raise ValueError(f"header field {name} is {got}, expected {want}")
    if cur > max_elements or not -1 <= max_level < 64 or (cur and entry >= cur):
        raise ValueError(
            f"header has {cur} of {max_elements} elements, top level {max_level}, entry point {entry}"
        )
    end0 = _HEADER.size + cur * per_element
    if end0 > len(data):
        raise ValueError(f"the file ends inside the level-0 records ({len(data)} of at least {end0} bytes)")
    if cur:
        rec = np.frombuffer(data, np.uint8, cur * per_element, _HEADER.size).reshape(cur, per_element)
        links = rec[:, :links0].copy().view(np.uint32)  # (cur, 1 + maxM0): count (+ deleted flag), neighbours
        n_links = links[:, 0] & 0xFFFF
        used = np.arange(max_m0)[None, :] < n_links[:, None]
        if (n_links > max_m0).any() or (links[:, 1:][used] >= cur).any():
            raise ValueError("a level-0 neighbour list is damaged")
    end = _check_upper_levels(data, end0, cur, max_m, max_level)
    if end != len(data):
        raise ValueError(f"{len(data) - end} unexpected bytes after the last neighbour list")


__all__ = ["check_graph_file", "file_digest"]
