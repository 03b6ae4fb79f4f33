"""Evaluation images for selection and their split: which images may be scored at all.

Evaluation images must be unseen by the encoder: :func:`encoder_split` recomputes the bundled encoder's
train/validation split (by source image or subject) from its card, and :func:`select_cases` keeps the
held-out part. Images that a zoo model was trained on or uses as exemplars are left out as well
(:func:`zoo_training_paths`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..datasets.msd import normalize_modality
from ..errors import DatasetError, ModelSelectorError
from ..selection.encoder import OOD_CLASS
from .baselines import (
    REGION_CODES,
    ModelInfo,
    is_relevant,
    resolve_source,
    split_regions,
)

PathLike = Union[str, "os.PathLike[str]"]

SPLITS = ("heldout", "unseen", "all")
SPLIT_TEXT = {
    "heldout": "only images of the encoder's held-out validation groups (whole 2D source images and whole 3D "
    "subjects that the encoder never saw in training), recomputed from its card.",
    "unseen": "every image the encoder did not train on: its held-out validation groups plus images it never "
    "used (classes it left out, volumes beyond its per-class cap, catalogues it did not read).",
    "all": "every image, including the encoder's training images (optimistic; for debugging only).",
}
#: every ranker :func:`run_selection_evaluation` knows, in report order


@dataclasses.dataclass(frozen=True)
class EvalCase:
    """One evaluation image.

    Attributes:
        path: absolute path of the image file.
        modality: DICOM modality code (``OT`` for non-medical images).
        regions: body-region codes (empty for ``OT``).
        source: the manifest it came from.
    """

    path: Path
    modality: str
    regions: tuple[str, ...]
    source: str = ""

    @property
    def label(self) -> str:
        """``"MODALITY:REGION;..."`` (``"OT:OOD"`` for non-medical images)."""
        if self.modality == "OT":
            return OOD_CLASS
        return f"{self.modality}:{';'.join(self.regions)}"

    def relevant(self, models: Sequence[ModelInfo]) -> list[str]:
        """Names of the models relevant to this image."""
        return [m.name for m in models if is_relevant(m.modality, m.regions, self.modality, self.regions)]


def load_cases(
    csv_paths: Sequence[PathLike], root: Optional[PathLike] = None
) -> tuple[list[EvalCase], Counter]:
    """Evaluation cases of CSV manifests, and a count of the rows left out by reason.

    Two layouts are read: manifests with ``modality_code``/``region_code`` columns (``manifest.csv``), and
    catalogues whose ``modality``/``body_region`` columns already hold codes (``radiology_2d/labels.csv``).
    Rows are left out when they are label maps (``SEG``/``LABEL...``), when the modality or the region is
    unknown (non-``OT`` rows need at least one region code of the vocabulary), or when the file is missing.
    Paths are relative to the CSV's folder unless ``root`` is given.

    Raises:
        DatasetError: a CSV is missing or lacks the ``path`` column.
    """
    cases: list[EvalCase] = []
    skipped: Counter = Counter()
    seen: set = set()
    for csv_path in csv_paths:
        p = Path(csv_path)
        if not p.is_file():
            raise DatasetError(
                f"{p}: no such manifest file; pass a CSV with path, modality and region columns."
            )
        base = Path(root) if root is not None else p.parent
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            if "path" not in fields:
                raise DatasetError(f"{p}: the manifest lacks the column 'path'.")
            has_codes = "modality_code" in fields
            if not has_codes and not {"modality", "body_region"} <= set(fields):
                raise DatasetError(
                    f"{p}: needs modality_code/region_code columns, or modality/body_region columns holding codes."
                )
            for rec in reader:
                rel = (rec.get("path") or "").strip()
                if not rel:
                    continue
                if has_codes:
                    mod = (rec.get("modality_code") or "").strip().upper()
                    reg = rec.get("region_code") or ""
                else:
                    mod = normalize_modality(rec.get("modality") or "")
                    reg = rec.get("body_region") or ""
                if not mod or mod in ("SEG", "LABEL") or mod.startswith("LABEL"):
                    skipped["label map"] += 1
                    continue
                regions = tuple(r for r in split_regions(reg) if r in REGION_CODES)
                if mod == "OT":
                    regions = ()
                elif not regions:
                    skipped["unknown body region"] += 1
                    continue
                path = (base / rel).resolve()
                if not path.exists():
                    skipped["missing file"] += 1
                    continue
                if path in seen:
                    skipped["duplicate"] += 1
                    continue
                seen.add(path)
                cases.append(EvalCase(path, mod, regions, source=p.name))
    return cases, skipped


@dataclasses.dataclass
class EncoderSplit:
    """The bundled encoder's split of its training data.

    Attributes:
        train: absolute paths of the images the encoder trained on.
        val: absolute paths of its held-out validation images (whole source images / subjects).
        description: how the split was recomputed (for the report).
    """

    train: set
    val: set
    description: str


def encoder_split(
    card: Optional[dict[str, Any]] = None, data_root: Optional[PathLike] = None
) -> EncoderSplit:
    """Recompute the encoder's train/validation split from its card (``Resources/encoder/card.json``).

    The encoder trains on :func:`~ModelSelectorLib.encoder.collect_samples` of its data folder, with
    classes of too few source groups left out, and splits the groups (a 2D file, or a 3D subject) per
    class with :func:`~ModelSelectorLib.encoder.split_groups`; the card records the seed, the held-out
    fraction, the volume cap and the excluded classes, so the split is recomputed exactly. The number of
    validation groups is checked against the card.

    Args:
        card: the encoder card (default: the bundled one).
        data_root: the encoder's data folder (default: the card's ``data_root``).

    Returns:
        the split; empty sets when the data folder is not present (nothing can have been trained on).
    """
    from ..selection.encoder import load_card
    from ..training.encoder import card_data_root, collect_samples, split_groups

    card = card if card is not None else load_card()
    root = Path(data_root) if data_root is not None else card_data_root(card)
    seed = int(card.get("seed", 0))
    m = re.search(r"(\d+)%", str(card.get("split", "")))
    val_fraction = int(m.group(1)) / 100.0 if m else 0.2
    m = re.search(r"<=\s*(\d+)\s*volumes per class", str(card.get("data", "")))
    max_vol = int(m.group(1)) if m else 24
    if not root.is_dir():
        return EncoderSplit(set(), set(), f"encoder data folder {root} not present: no image is excluded")
    items = collect_samples(root, max_volumes_per_class=max_vol, seed=seed)
    excluded = set((card.get("excluded_classes_groups") or {}).keys())
    items = [it for it in items if it["cls"] not in excluded]
    train_g, val_g = split_groups(items, val_fraction, seed)
    train = {str(Path(it["path"]).resolve()) for it in items if it["group"] in train_g}
    val = {str(Path(it["path"]).resolve()) for it in items if it["group"] in val_g}
    m = re.search(r"(\d+) train groups, (\d+) validation groups", str(card.get("split", "")))
    check = ""
    if m and (int(m.group(1)), int(m.group(2))) != (len(train_g), len(val_g)):
        check = (
            f" WARNING: recomputed {len(train_g)}/{len(val_g)} train/validation groups, the card says "
            f"{m.group(1)}/{m.group(2)}; the data folder changed since the encoder was trained."
        )
    elif m:
        check = f" (matches the card: {m.group(1)} train / {m.group(2)} validation groups)"
    desc = (
        f"encoder {card.get('name', '')} {card.get('version', '')}: split by source image (2D) / subject (3D), "
        f"{val_fraction:.0%} of each class's groups held out, seed {seed}, <= {max_vol} volumes per class, "
        f"excluded classes {sorted(excluded) or 'none'}; {len(train)} training images, {len(val)} held-out "
        f"images{check}"
    )
    return EncoderSplit(train, val, desc)


def zoo_training_paths(zoo: Any, roots: Iterable[PathLike]) -> set:
    """Absolute paths of images that the zoo's models were trained on or ship as exemplars.

    Reads each current bundle's card ``example_inputs`` and, when present, the ``training_cases``,
    ``validation_cases`` and ``check_cases`` of the ``starter_zoo`` block of ``configs/metadata.json``
    (relative paths are tried against each of ``roots``), and the ``source`` fields of prototype records
    that name files.
    """
    from ..zoo.bundle import read_metadata

    roots = [Path(r) for r in roots]
    out: set = set()

    def add(rel: str, bundle: Path) -> None:
        p = resolve_source(rel, [bundle, *roots])
        if p is not None:
            out.add(p)

    for name in zoo.names():
        bundle = Path(zoo.get(name))
        try:
            meta = read_metadata(bundle)
        except ModelSelectorError:
            continue
        card = meta.get("modelselector") or {}
        for rel in card.get("example_inputs") or []:
            add(str(rel), bundle)
        block = meta.get("starter_zoo") or {}
        for key in ("training_cases", "validation_cases", "check_cases"):
            for c in block.get(key) or []:
                if isinstance(c, dict) and c.get("image"):
                    add(str(c["image"]), bundle)
        for rec in _prototype_records(bundle):
            src = rec.get("source") or rec.get("path")
            if isinstance(src, str) and src:
                add(src, bundle)
    return out


def _prototype_records(bundle: Path) -> list[dict[str, Any]]:
    """Prototype metadata records stored in a bundle (any ``*.json`` under ``prototypes/``), if any."""
    recs: list[dict[str, Any]] = []
    folder = bundle / "prototypes"
    if not folder.is_dir():
        return recs
    for p in sorted(folder.glob("*.json")):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        items = data.get("rows", data.get("prototypes", [])) if isinstance(data, dict) else data
        if isinstance(items, list):
            recs.extend(r for r in items if isinstance(r, dict))
    return recs


def select_cases(
    cases: Sequence[EvalCase],
    split: str = "heldout",
    encoder: Optional[EncoderSplit] = None,
    exclude: Iterable[str] = (),
    limit: Optional[int] = None,
    seed: int = 0,
) -> tuple[list[EvalCase], Counter]:
    """The evaluation images among ``cases``, and the count of those left out by reason.

    Args:
        split: ``heldout`` keeps only the encoder's held-out validation images (default); ``unseen`` keeps
            every image the encoder did not train on (held-out ones plus images it never saw); ``all``
            keeps everything (optimistic: for debugging only).
        encoder: the encoder's split (:func:`encoder_split`); required unless ``split == "all"``.
        exclude: absolute paths to leave out (the zoo's training images and exemplars).
        limit: keep at most this many images, taken class by class in a seeded random order so that a
            small run still covers every class.
        seed: seed of that order.

    Raises:
        ModelSelectorError: unknown ``split``, or no image is left.
    """
    if split not in SPLITS:
        raise ModelSelectorError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    if split != "all" and encoder is None:
        raise ModelSelectorError(f"split {split!r} needs the encoder's split (encoder_split()).")
    exclude = set(exclude)
    kept: list[EvalCase] = []
    dropped: Counter = Counter()
    for c in cases:
        p = str(c.path)
        if p in exclude:
            dropped["a zoo model's training image or exemplar"] += 1
        elif split == "heldout" and p not in encoder.val:  # type: ignore[union-attr]
            dropped["not in the encoder's held-out groups"] += 1
        elif split == "unseen" and p in encoder.train:  # type: ignore[union-attr]
            dropped["in the encoder's training groups"] += 1
        else:
            kept.append(c)
    if limit is not None and len(kept) > limit:
        rng = np.random.default_rng(seed)
        by_cls: dict[str, list[EvalCase]] = {}
        for i in rng.permutation(len(kept)):
            by_cls.setdefault(kept[i].label, []).append(kept[i])
        picked: list[EvalCase] = []
        queues = [by_cls[k] for k in sorted(by_cls)]
        while len(picked) < limit:
            for q in queues:
                if q and len(picked) < limit:
                    picked.append(q.pop(0))
        dropped["over --limit"] += len(kept) - len(picked)
        kept = sorted(picked, key=lambda c: str(c.path))
    if not kept:
        raise ModelSelectorError(
            "no evaluation image is left after the split and exclusions; check the manifests, or use "
            "--split unseen / all."
        )
    return kept, dropped
