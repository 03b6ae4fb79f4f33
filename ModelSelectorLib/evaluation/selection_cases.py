"""Evaluation images for selection: which images may be scored, what the right answer is for each.

Images come from the protocol split (:mod:`.selection_split`; by default the one the bundled encoder was
trained with, ``Resources/encoder/split.json``): the ``test`` part for the report, the ``dev`` part for
calibration. Images that a zoo model was trained or validated on, ships as an exemplar or used as
unlabelled data are left out, together with every image of the same group (the same patient, or a near-
duplicate): :func:`zoo_training_paths`, :meth:`~.selection_split.ProtocolSplit.linked`.

Each image has one of three kinds of answer for a zoo (:meth:`EvalCase.category`):

- ``in-zoo``: some model is relevant (same modality, intersecting body regions) and can take the image (a
  2D model a 2D image, a 3D model a volume whose field of view is within a factor of 3 of its training
  inputs', :mod:`~ModelSelectorLib.selection.field_of_view`);
- ``needs-volume``: the relevant models take 3D volumes and the image is a lone 2D slice; the right answer
  names such a model and says it needs the volume;
- ``ood``: no model is relevant (other modalities or regions, and non-radiology photographs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..errors import InputError, ModelSelectorError
from ..io.image import IMAGE_2D_SUFFIXES, VOLUME_SUFFIXES
from ..selection.calibration import LabelledImage
from ..selection.encoder import OOD_CLASS
from ..selection.field_of_view import compare_field_of_view, view_fits
from ..selection.scoring import is_relevant
from .baselines import ModelInfo, resolve_source
from .selection_split import ProtocolSplit

PathLike = Union[str, "os.PathLike[str]"]

#: parts of the protocol split an evaluation can run on
PARTS = ("test", "dev", "train", "all")
#: the kinds of right answer (see the module docstring)
CATEGORIES = ("in-zoo", "needs-volume", "ood")


@dataclasses.dataclass(frozen=True)
class EvalCase:
    """One evaluation image.

    Attributes:
        path: absolute path of the image file.
        modality: DICOM modality code (``OT`` for non-medical images).
        regions: body-region codes (empty for ``OT``).
        source: the dataset it comes from; ``patient``: the subject within it.
        ndim: 2 for a 2D image (or one slice), 3 for a volume.
        held_out_source: its whole source was held out of training and development (source-disjoint).
        extent_mm: a volume's field of view (mm, :func:`~ModelSelectorLib.selection.field_of_view.extent_mm`;
            None until the image is read, and for 2D images).
    """

    path: Path
    modality: str
    regions: tuple[str, ...]
    source: str = ""
    patient: str = ""
    ndim: int = 3
    held_out_source: bool = False
    extent_mm: Optional[float] = None

    @property
    def label(self) -> str:
        """``"MODALITY:REGION;..."`` (``"OT:OOD"`` for non-medical images)."""
        if self.modality == "OT":
            return OOD_CLASS
        return f"{self.modality}:{';'.join(self.regions)}"

    def relevant(self, models: Sequence[ModelInfo]) -> list[str]:
        """Names of the models whose modality and regions match this image (whatever its dimensions)."""
        return [m.name for m in models if is_relevant(m.modality, m.regions, self.modality, self.regions)]

    def applicable(self, models: Sequence[ModelInfo]) -> list[str]:
        """Names of the relevant models that can take this image (2D image - 2D model, volume - 3D model whose
        training inputs' field of view is not several times larger or smaller than the volume's)."""
        rel = set(self.relevant(models))
        return [m.name for m in models if m.name in rel and int(m.spatial_dims) == int(self.ndim)
                and view_fits(compare_field_of_view(self.extent_mm, m.extent_mm))]  # fmt: skip

    def needs_volume(self, models: Sequence[ModelInfo]) -> list[str]:
        """Names of the relevant 3D models when this image is a lone 2D slice."""
        rel = set(self.relevant(models))
        return [m.name for m in models if m.name in rel and int(self.ndim) == 2 and int(m.spatial_dims) == 3]

    def category(self, models: Sequence[ModelInfo]) -> str:
        """``in-zoo``, ``needs-volume`` or ``ood`` (module docstring)."""
        if self.applicable(models):
            return "in-zoo"
        return "needs-volume" if self.needs_volume(models) else "ood"


def cases_of(split: ProtocolSplit, part: str = "test") -> list[EvalCase]:
    """The split's images of one part (``all``: every part) as evaluation cases.

    Raises:
        ModelSelectorError: unknown part.
    """
    if part not in PARTS:
        raise InputError(f"unknown part {part!r}; choose one of {', '.join(PARTS)}.")
    held = split.meta.get("held_out_sources", {})
    return [
        EvalCase(
            split.path(it).resolve(),
            it.modality,
            it.regions,
            it.source,
            it.patient,
            it.ndim,
            it.source in held,
        )  # fmt: skip
        for it, s in zip(split.items, split.splits)
        if part in ("all", s)
    ]


def load_protocol(
    split_file: Optional[PathLike] = None, data_root: Optional[PathLike] = None
) -> ProtocolSplit:
    """The protocol split: ``split_file`` (default: the bundled encoder's ``split.json``) with its data folder
    (default: the one the file names, relative to the checkout).

    Raises:
        InputError: no readable split file.
    """
    from ..resources import checkout_root, encoder_dir

    path = Path(split_file) if split_file is not None else encoder_dir() / "split.json"
    split = ProtocolSplit.load(path, data_root)
    if data_root is None and not split.root.is_absolute():
        split.root = ((checkout_root() or Path.cwd()) / split.root).resolve()
    return split


# --- what the zoo was built from --------------------------------------------------------------------------
def zoo_training_paths(zoo: Any, roots: Iterable[PathLike], validation: bool = True) -> set:
    """Absolute paths of images that the zoo's models were trained on or ship as exemplars (and, with
    ``validation``, validated or checked on).

    Reads each current bundle's card ``example_inputs``; the ``training_cases`` (and ``validation_cases``,
    ``check_cases``) of the ``starter_zoo`` block of ``configs/metadata.json`` (relative paths are tried
    against each of ``roots``); unlabelled training images that the block counts but does not list, when a
    folder its ``source`` names holds exactly that many images; the ``source`` of prototype records that name
    files; and the cases a training run recorded by file name in ``docs/training_curve.json`` (a model of
    ``modelselector train`` has no block), matched by name to the image files under ``roots``.
    """
    from ..zoo.bundle import read_metadata

    roots = [Path(r) for r in roots]
    out: set = set()
    keys = ("training_cases", "validation_cases", "check_cases") if validation else ("training_cases",)
    by_stem: Optional[dict[str, list[str]]] = None

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
        for rel in (meta.get("modelselector") or {}).get("example_inputs") or []:
            add(str(rel), bundle)
        block = meta.get("starter_zoo") or {}
        for key in keys:
            for c in block.get(key) or []:
                if isinstance(c, dict) and c.get("image"):
                    add(str(c["image"]), bundle)
        out |= unlabelled_images(block, roots)
        for rec in _prototype_records(bundle):
            src = rec.get("source") or rec.get("path")
            if isinstance(src, str) and src:
                add(src, bundle)
        named = _curve_cases(bundle, validation)
        if named:
            by_stem = _image_files_by_stem(roots) if by_stem is None else by_stem
            out |= {p for stem in named for p in by_stem.get(stem, [])}
    return out


def _curve_cases(bundle: Path, validation: bool) -> set[str]:
    """The file-name stems of the cases a training run recorded (``training_cases``, and with ``validation``
    ``validation_cases``, of ``docs/training_curve.json``; ``hippocampus_001.nii.gz`` -> ``hippocampus_001``)."""
    from ..training.config import CURVE_FILE

    try:
        curve = json.loads((bundle / CURVE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    keys = ("training_cases", "validation_cases") if validation else ("training_cases",)
    return {Path(str(c)).name.split(".")[0] for k in keys for c in (curve.get(k) or []) if c}


def _image_files_by_stem(roots: Sequence[Path]) -> dict[str, list[str]]:
    """Every image file under ``roots`` by the stem of its name (several where names repeat across folders)."""
    suffixes = (*IMAGE_2D_SUFFIXES, *VOLUME_SUFFIXES)
    out: dict[str, list[str]] = {}
    for root in roots:
        for folder, _, files in os.walk(root):
            for f in files:
                if f.lower().endswith(suffixes):
                    out.setdefault(f.split(".")[0], []).append(str((Path(folder) / f).resolve()))
    return out


def unlabelled_images(block: dict[str, Any], roots: Sequence[Path]) -> set:
    """Images of the folder that a starter-zoo block's ``source`` text names (``"cxr_unlabelled/"``) when
    the block counts ``unlabelled_cases`` without listing them and the folder holds exactly that many."""
    n = block.get("unlabelled_cases")
    if isinstance(n, list):
        return {str(p) for c in n for p in [resolve_source(str(c.get("image", c)) if isinstance(c, dict) else
                                                           str(c), list(roots))] if p}  # fmt: skip
    if not isinstance(n, int) or n <= 0:
        return set()
    for folder in re.findall(r"([\w.-]+)/", str(block.get("source", ""))):
        for root in roots:
            files = [p for p in (root / folder).glob("*") if p.name.lower().endswith(IMAGE_2D_SUFFIXES)
                     and "_lungmask" not in p.name] if (root / folder).is_dir() else []  # fmt: skip
            if len(files) == n:
                return {str(p.resolve()) for p in files}
    return set()


def copies_in_split(paths: Iterable[str], split: ProtocolSplit) -> set:
    """Absolute paths of the split's images that are byte-identical copies of ``paths`` (a bundle ships
    copies of its example inputs)."""
    import hashlib

    def digest(p: Path) -> str:
        return hashlib.sha1(p.read_bytes()).hexdigest()

    wanted: dict[int, set] = {}
    for p in map(Path, paths):
        if p.is_file():
            wanted.setdefault(p.stat().st_size, set()).add(digest(p))
    out = set()
    for it in split.items:
        f = split.path(it)
        if f.is_file() and f.stat().st_size in wanted and digest(f) in wanted[f.stat().st_size]:
            out.add(str(f.resolve()))
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
    exclude: Iterable[str] = (),
    limit: Optional[int] = None,
    seed: int = 0,
) -> tuple[list[EvalCase], Counter]:
    """The evaluation images among ``cases`` without ``exclude`` (absolute paths), and the count left out by
    reason.

    Args:
        limit: keep at most this many images, taken class by class in a seeded random order so that a small
            run still covers every class.

    Raises:
        ModelSelectorError: no image is left.
    """
    exclude = set(exclude)
    kept = [c for c in cases if str(c.path) not in exclude]
    dropped: Counter = Counter()
    if len(kept) < len(cases):
        dropped["a zoo model's training, validation or exemplar image, or of the same patient or a near-duplicate"] = (
            len(cases) - len(kept)
        )  # fmt: skip
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
            "no evaluation image is left after the exclusions; check the split and the zoo."
        )
    return kept, dropped


def development_images(split: ProtocolSplit, zoo: Any, limit: Optional[int] = None, seed: int = 0
                       ) -> tuple[list[LabelledImage], str]:  # fmt: skip
    """The labelled images that calibrate the selector: the split's ``dev`` part without the zoo models'
    training images (and their patients and near-duplicates; their validation images may stay), and a
    sentence saying so."""
    roots = [split.root]
    trained = zoo_training_paths(zoo, roots, validation=False)
    excluded = split.linked(sorted(trained | copies_in_split(trained, split)))
    cases, _ = select_cases(cases_of(split, "dev"), excluded, limit, seed)
    # a calibration on the images that happen to be there would replace the one made on all of them
    missing = [c.path for c in cases if not c.path.exists()]
    if missing:
        raise InputError(
            f"{split.root}: {len(missing)} of the {len(cases)} development images of the protocol split are not "
            f"there (e.g. {missing[0]}); pass the data folder the split was made from (--data)."
        )
    images = [LabelledImage(c.path, c.modality, c.regions, (), c.path.name) for c in cases]
    text = (f"{len(images)} images of the development part of the protocol split (digest {split.digest()}), "
            "without the zoo models' training images, their patients and near-duplicates")  # fmt: skip
    return images, text


__all__ = ["CATEGORIES", "EvalCase", "PARTS", "cases_of", "copies_in_split", "development_images", "load_protocol",
           "select_cases", "unlabelled_images", "zoo_training_paths"]  # fmt: skip
