"""Limits on what a bundle's files may make ModelSelector allocate, checked before anything is allocated.

A bundle from someone else is data, and small files can claim a lot: a 10 KB ``inference.json`` can name a
network of many GB, a 1 MB ``models/model.pt`` can hold compressed entries that inflate to GBs, a small ``.npz``
can declare an array of any shape, and a JSON file can nest deeper than Python recurses. The checks here read
only sizes, shapes and headers, so that such a file is refused in one line before it costs memory:

- :func:`check_json_depth`: JSON nested deeper than :data:`MAX_JSON_DEPTH` levels;
- :func:`weights_bytes`: a weights file whose entries inflate far beyond its own size (torch writes them
  uncompressed); its declared size bounds what an untrusted network may hold (:func:`network_budget`);
- :func:`limited_build`: building a network stops once its parameters and buffers pass a budget, or its
  modules pass :data:`MAX_NETWORK_MODULES`, counted as each is registered;
- the shapes and sizes the arrays of an ``.npz`` file declare: :func:`ModelSelectorLib.io.integrity.check_npz`.
"""

from __future__ import annotations

import contextlib
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

from ..errors import BundleError
from ..io.integrity import readable_bytes

PathLike = Union[str, Path]

#: deepest nesting of a bundle's JSON files (MONAI configs nest about ten levels)
MAX_JSON_DEPTH = 100
#: most modules an untrusted network may register (the largest MONAI networks have a few thousand)
MAX_NETWORK_MODULES = 100_000
#: what a network may hold beyond its weights (non-persistent buffers), and what entries of a weights file may
#: declare beyond the file's size (its headers), in bytes
SLACK_BYTES = 64 << 20


def check_json_depth(data: Any, where: str) -> None:
    """Refuse JSON ``data`` (parsed) nested deeper than :data:`MAX_JSON_DEPTH`; walked without recursion.

    Raises:
        BundleError: naming ``where`` (the file) and what to do.
    """
    todo = [(data, 1)]
    while todo:
        value, depth = todo.pop()
        if depth > MAX_JSON_DEPTH:
            raise BundleError(f"{where}: nests lists or objects more than {MAX_JSON_DEPTH} levels deep; a bundle's "
                              "configs do not, so the file is refused: write it again as plain MONAI config.")  # fmt: skip
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        todo.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def json_too_deep(path: PathLike) -> BundleError:
    """The refusal of a JSON file whose nesting exhausted Python's recursion while it was parsed."""
    return BundleError(f"{path}: nests lists or objects deeper than Python can read; a bundle's configs do not, "
                       "so the file is refused: write it again as plain MONAI config.")  # fmt: skip


def weights_bytes(path: PathLike) -> int:
    """The bytes a weights file holds once read: the uncompressed sizes its zip entries declare (torch's format),
    else its size (the legacy format stores tensors as they are).

    Raises:
        BundleError: it cannot be read, or its entries declare more than twice its size (plus
            :data:`SLACK_BYTES`): compressed entries that would inflate before anything could be compared.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise BundleError(
            f"{path}: cannot be read ({e.strerror or e}); give the bundle's weights file."
        ) from e
    try:
        with zipfile.ZipFile(path) as z:
            declared = sum(max(0, int(info.file_size)) for info in z.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return size  # not a zip archive: torch reads it as stored (or refuses it)
    if declared > 2 * size + SLACK_BYTES:
        raise BundleError(
            f"{path}: its compressed entries would inflate to {readable_bytes(declared)} from a file of {readable_bytes(size)}; torch "
            "writes weights uncompressed, so the file is refused: save them again with "
            "torch.save(network.state_dict(), 'models/model.pt')."
        )
    return declared


def network_budget(weights_path: PathLike) -> int:
    """The most bytes of parameters and buffers an untrusted network may hold: twice what its weights file holds
    (half-precision weights load into a float network) plus :data:`SLACK_BYTES`."""
    return 2 * weights_bytes(weights_path) + SLACK_BYTES


class NetworkTooLarge(BundleError):
    """A network being built passed its budget of bytes or modules (raised while it is built)."""


@contextlib.contextmanager
def limited_build(max_bytes: int, where: str) -> Iterator[dict[str, int]]:
    """Stop a network built in this thread once its parameters and buffers pass ``max_bytes`` or its modules
    :data:`MAX_NETWORK_MODULES`: each is counted as a module registers it, so that on torch's ``meta`` device
    nothing is allocated, and on a real device no more than the one tensor being registered.

    Yields:
        the counts so far, ``{"bytes": ..., "modules": ...}``.

    Raises:
        NetworkTooLarge: naming ``where`` (the weights file the budget comes from) and what to do.
    """
    from torch.nn.modules import module as torch_module

    owner = threading.get_ident()
    seen = {"bytes": 0, "modules": 0}

    def count_tensor(_module: Any, _name: str, tensor: Any) -> None:
        if tensor is None or threading.get_ident() != owner:
            return
        seen["bytes"] += int(tensor.numel()) * int(tensor.element_size())
        if seen["bytes"] > max_bytes:
            raise NetworkTooLarge(
                f"the network in inference.json would hold more than {readable_bytes(seen['bytes'])} of parameters, far more "
                f"than the weights in {where} can fill; correct the network's arguments (its channels or features) "
                "or give the weights it was trained with."
            )

    def count_module(_module: Any, _name: str, _sub: Any) -> None:
        if threading.get_ident() != owner:
            return
        seen["modules"] += 1
        if seen["modules"] > MAX_NETWORK_MODULES:
            raise NetworkTooLarge(f"the network in inference.json has more than {MAX_NETWORK_MODULES} layers; "
                                  "correct the network's arguments (its depth or blocks).")  # fmt: skip

    handles = [
        torch_module.register_module_parameter_registration_hook(count_tensor),
        torch_module.register_module_buffer_registration_hook(count_tensor),
        torch_module.register_module_module_registration_hook(count_module),
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_NETWORK_MODULES",
    "NetworkTooLarge",
    "SLACK_BYTES",
    "check_json_depth",
    "json_too_deep",
    "limited_build",
    "network_budget",
    "weights_bytes",
]
