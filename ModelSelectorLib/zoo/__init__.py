"""The zoo: MONAI bundles with model cards, loaded safely, in a versioned catalog.

- :mod:`.card`: :class:`ModelCard`, the facts about one model (modality, region, task, labels, metrics).
- :mod:`.trust`: what a bundle config may construct without ``--trust``.
- :mod:`.bundle`: write, validate and load bundles; import standard MONAI model-zoo bundles.
- :mod:`.catalog`: :class:`Zoo`, a folder of versioned bundles with ``zoo.json``.
"""

from __future__ import annotations

from ..resources import default_zoo_path
from .bundle import LoadedBundle, load_bundle, read_metadata, save_bundle, validate_bundle, write_card
from .card import BODY_REGIONS, MODALITIES, ModelCard, default_color, safe_name
from .catalog import Zoo, open_zoo

__all__ = [
    "BODY_REGIONS",
    "MODALITIES",
    "LoadedBundle",
    "ModelCard",
    "Zoo",
    "default_color",
    "default_zoo_path",
    "load_bundle",
    "open_zoo",
    "read_metadata",
    "safe_name",
    "save_bundle",
    "validate_bundle",
    "write_card",
]
