"""Medical Segmentation Decathlon (MSD) folders: ``dataset.json`` + ``imagesTr``/``labelsTr``.

:func:`load_msd` reads an MSD-style folder and checks that every listed file exists.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ..errors import DatasetError

_MR_ALIASES = ("MR", "MRI", "T1", "T2", "FLAIR", "ADC", "DWI", "T1W", "T2W", "CINE", "PD")


def normalize_modality(name: str) -> str:
    """Map an MSD/DICOM modality name to the project's codes: ``"CT"``, ``"MR"`` or the name upper-cased.

    Examples: ``"CT"`` -> ``"CT"``; ``"MRI"``, ``"T2"``, ``"FLAIR"``, ``"ADC"`` -> ``"MR"``.
    """
    n = str(name).strip().upper()
    if n.startswith("CT"):
        return "CT"
    if n in _MR_ALIASES or n.startswith("MR"):
        return "MR"
    return n


# --- MSD folders ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class MSDDataset:
    """An MSD dataset folder.

    Attributes:
        root: the folder holding ``dataset.json``.
        name: dataset name from ``dataset.json``.
        modality: ``{"0": "CT", ...}`` as in ``dataset.json`` (one entry per input channel).
        labels: ``{label value: name}``, including 0 (background).
        training: one ``{"image": Path, "label": Path}`` per case, paths absolute.
        description: free text from ``dataset.json``.
        raw: the parsed ``dataset.json``.
    """

    root: Path
    name: str
    modality: dict[str, str]
    labels: dict[int, str]
    training: list[dict[str, Path]]
    description: str = ""
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def n_channels(self) -> int:
        return max(1, len(self.modality))

    @property
    def modality_code(self) -> str:
        """The project's modality code of channel 0 (``"CT"``, ``"MR"``, ...)."""
        return normalize_modality(self.modality.get("0", next(iter(self.modality.values()), "")))

    @property
    def foreground_labels(self) -> dict[int, str]:
        return {v: n for v, n in self.labels.items() if v != 0}


def resolve_path(root: Path, rel: str) -> Path:
    """``rel`` resolved against ``root`` unless it is absolute."""
    p = Path(rel)
    return p if p.is_absolute() else (root / p).resolve()


def load_msd(folder: os.PathLike[str] | str) -> MSDDataset:
    """Read an MSD dataset folder and check that every listed image and label file exists.

    Args:
        folder: folder holding ``dataset.json`` (keys ``name``, ``modality``, ``labels``, ``training``).

    Raises:
        DatasetError: missing folder or ``dataset.json``, malformed JSON or keys, or missing files (all named).
    """
    root = Path(folder)
    meta_path = root / "dataset.json"
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder; pass an MSD folder holding dataset.json.")
    if not meta_path.is_file():
        raise DatasetError(f"{root}: holds no dataset.json; it is not an MSD dataset folder.")
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{meta_path}: not valid JSON ({e}).") from e
    missing_keys = [k for k in ("modality", "labels", "training") if k not in raw]
    if missing_keys:
        raise DatasetError(f"{meta_path}: lacks the key(s) {', '.join(missing_keys)} that MSD datasets have.")
    try:
        labels = {int(k): str(v) for k, v in raw["labels"].items()}
        modality = {str(k): str(v) for k, v in raw["modality"].items()}
    except (AttributeError, ValueError) as e:
        raise DatasetError(f"{meta_path}: 'labels' and 'modality' must map numbers to names ({e}).") from e
    training: list[dict[str, Path]] = []
    missing: list[str] = []
    for i, case in enumerate(raw["training"]):
        if not isinstance(case, dict) or "image" not in case or "label" not in case:
            raise DatasetError(f"{meta_path}: training entry {i} needs 'image' and 'label'.")
        entry = {"image": resolve_path(root, case["image"]), "label": resolve_path(root, case["label"])}
        missing += [str(p) for p in entry.values() if not p.is_file()]
        training.append(entry)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetError(f"{root}: dataset.json lists {len(missing)} missing file(s): {shown}.")
    if not training:
        raise DatasetError(f"{meta_path}: the training list is empty.")
    return MSDDataset(
        root=root.resolve(),
        name=str(raw.get("name", root.name)),
        modality=modality,
        labels=labels,
        training=training,
        description=str(raw.get("description", "")),
        raw=raw,
    )
