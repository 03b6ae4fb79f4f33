"""Datasets: MSD folders, CSV manifests, chest X-ray landmark sets, and synthetic data with known answers."""

from __future__ import annotations

from .manifest import ManifestRow, load_manifest
from .msd import MSDDataset, load_msd, normalize_modality
from .synthetic import SYNTHETIC_COLORS, SYNTHETIC_LABELS, make_synthetic_case, make_synthetic_msd

__all__ = [
    "SYNTHETIC_COLORS",
    "SYNTHETIC_LABELS",
    "MSDDataset",
    "ManifestRow",
    "load_manifest",
    "load_msd",
    "make_synthetic_case",
    "make_synthetic_msd",
    "normalize_modality",
]
