"""CSV manifests of image collections (columns ``path, modality, body_region, ...``), such as
``shared/data/manifest.csv`` with its ``modality_code`` / ``region_code`` columns."""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path
from typing import Optional

from ..errors import DatasetError
from .msd import normalize_modality, resolve_path


# --- manifests ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ManifestRow:
    """One row of a CSV manifest.

    Attributes:
        path: absolute file path (relative paths are resolved against the CSV's folder or ``root``).
        modality: e.g. ``"CT"``, ``"MR"``, ``"LABEL(CT)"``.
        body_region: free-text region.
        modality_code: normalised modality code (column ``modality_code`` or derived from ``modality``).
        region_code: ``";"``-joined region codes (column ``region_code``, or ``""``).
        columns: every column of the row as text.
    """

    path: Path
    modality: str
    body_region: str
    modality_code: str
    region_code: str
    columns: dict[str, str]

    def __getitem__(self, key: str) -> str:
        return self.columns[key]

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        return self.columns.get(key, default)


def load_manifest(
    csv_path: os.PathLike[str] | str, root: Optional[os.PathLike[str] | str] = None
) -> list[ManifestRow]:
    """Read a CSV manifest with at least the columns ``path, modality, body_region``.

    Args:
        csv_path: the CSV file.
        root: folder that relative paths are relative to (default: the CSV's folder).

    Raises:
        DatasetError: missing file or missing required columns.
    """
    p = Path(csv_path)
    if not p.is_file():
        raise DatasetError(f"{p}: no such manifest file.")
    base = Path(root) if root is not None else p.parent
    with open(p, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        missing = [c for c in ("path", "modality", "body_region") if c not in fields]
        if missing:
            raise DatasetError(f"{p}: the manifest lacks the column(s) {', '.join(missing)}.")
        rows = []
        for rec in reader:
            cols = {k: (v or "").strip() for k, v in rec.items() if k is not None}
            if not cols.get("path"):
                continue
            rows.append(
                ManifestRow(
                    path=resolve_path(base, cols["path"]),
                    modality=cols["modality"],
                    body_region=cols["body_region"],
                    modality_code=cols.get("modality_code") or normalize_modality(cols["modality"]),
                    region_code=cols.get("region_code", ""),
                    columns=cols,
                )
            )
    return rows
