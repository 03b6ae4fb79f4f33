"""The selection protocol's split of a data folder: train / dev / test by source and patient, near-duplicates
kept together.

Every labelled image of a data folder (``radiology_2d/labels.csv`` and the images of ``manifest.csv``) is an
:class:`Item` with its class (modality and body regions), its **source** (the dataset it comes from, e.g.
the Kermany paediatric chest X-rays whether they sit in ``radiology_2d/pediatric_cxr`` or in
``cxr_unlabelled``) and its **patient** (the subject id where file names carry one). The split:

1. **Whole sources held out** (:data:`HELD_OUT_SOURCES`): for classes with several sources, one source goes
   entirely to the test split (leave-one-source-out; e.g. the paediatric chest X-rays while training sees
   the adult ones) and, where a third exists, one to the development split. The table was fixed from the
   sources' sizes and contents before any result was measured.
2. **Patients of the other sources**: split per source into train / dev / test (default 60/20/20 % of the
   groups, seeded; sources of fewer than 5 groups stay in training).
3. **Groups**: a patient's images are one group; so are **near-duplicates**, found by the Pearson correlation
   of the images resized to 64 x 64 px (> 0.98 by default, also under flips and quarter turns, since some
   collections hold rotated copies). A group that touches a held-out source goes wholly to that split, so
   no near-duplicate straddles two splits.

The development split is for every choice (encoder epochs, score weights, thresholds); the test split is
measured once. The split is written to a JSON file (:meth:`ProtocolSplit.save`; the bundled one is
``Resources/encoder/split.json``) that the encoder's training and the selection evaluation both read.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..atomic import write_json
from ..errors import DatasetError, InputError
from ..progress import check_cancel, progress_bar

PathLike = Union[str, "os.PathLike[str]"]

#: the three parts of the protocol
SPLIT_NAMES = ("train", "dev", "test")
#: sources held out whole, and the split they go to (leave-one-source-out for classes with several sources)
HELD_OUT_SOURCES = {
    "kermany": "test",  # paediatric AP chest X-rays (Guangzhou); training sees adult PA ones (JSRT)
    "shenzhen": "dev",  # adult chest X-rays of a third hospital
    "brain_tumor_mr": "test",  # 2D brain MR slices of many sequences; training sees LGG and MSD volumes
    "mricron": "test",  # Colin27 brain template (three copies of one subject)
    "nilearn_mni152": "test",  # MNI152 template
    "pydicom_data": "test",  # single DICOM-derived slices of several kinds
    "nyu_mammo_sample": "test",  # mammograms of another site than MIAS
    "ood_fundus": "test",  # non-radiology photographs: retina
    "ood_kvasir": "test",  # endoscopy
    "ood_lc25000_histology": "dev",  # histology; dermoscopy stays in training
}
#: fractions of each remaining source's patient groups in train / dev / test
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)
#: near-duplicate threshold: Pearson correlation of the 64 x 64 px images
DUPLICATE_CORRELATION = 0.98
DUPLICATE_SIZE = 64
#: label of non-radiology photographs
OOD_LABEL = "OT:OOD"


@dataclasses.dataclass(frozen=True)
class Item:
    """One labelled image of the data folder.

    Attributes:
        path: path relative to the data folder (POSIX separators).
        modality: DICOM modality code (``OT`` for non-radiology photographs).
        regions: body-region codes (empty for ``OT``).
        source: the dataset the image comes from.
        patient: the subject within the source (the file stem when the names carry no subject id).
        ndim: 2 or 3 (as the catalogue states).
    """

    path: str
    modality: str
    regions: tuple[str, ...]
    source: str
    patient: str
    ndim: int

    @property
    def label(self) -> str:
        """``"MODALITY:REGION;REGION"`` (``"OT:OOD"`` for photographs)."""
        return OOD_LABEL if self.modality == "OT" else f"{self.modality}:{';'.join(self.regions)}"

    @property
    def encoder_class(self) -> str:
        """The encoder's class: modality and the first listed region (``"OT:OOD"`` for photographs)."""
        return OOD_LABEL if self.modality == "OT" else f"{self.modality}:{self.regions[0]}"


# --- the catalogue ----------------------------------------------------------------------------------------
def source_of(path: str) -> str:
    """The dataset an image comes from, from its path relative to the data folder."""
    parts = path.split("/")
    name = parts[-1].lower()
    if len(parts) == 1:
        return "data"  # a file at the top of the data folder
    if parts[0] == "radiology_2d" and len(parts) > 2:
        return "kermany" if parts[1] == "pediatric_cxr" else parts[1]
    if parts[0] in ("cxr_landmarks", "cxr_lungseg_imlab", "cxr_unlabelled"):
        if name.startswith(("kermany", "person", "im-")):
            return "kermany"
        if "chncxr" in name or name.startswith("shenzhen"):
            return "shenzhen"
        return "jsrt"  # JPC* files and the four JSRT cases of cxr_lungseg_imlab
    return parts[0]


#: subject ids in file names, per source (first group of the first matching pattern)
_PATIENT_PATTERNS = {
    "acdc_cardiac_mr": r"(patient\d+)",
    "lgg_brain_mr": r"(tcga_\w\w_\w{4})",
    "kermany": r"(im-\d+|person\d+)",
    "shenzhen": r"(chncxr_\d+)",
    "jsrt": r"(jpc\w\w\d+)",
    "covid_ct": r"(\d{4}\.\d\d\.\d\d\.\d+)",
    "knee_kl_xray": r"_(\d{6,8})[lr]",
    "nyu_mammo_sample": r"images_(\d+)_",
    "fdg_pet_brain_cdi": r"smw([a-z]+\d+)",
    "xray_angio_vukicevic": r"(sample_\d+)",
    "ood_fundus": r"image_(\d+)",
    "mricron": r"(ch2)",
    "totalsegmentator": r"(ct_thorax_abdomen|ct_abdomen_dicom2|mr_abdomen)",
}


def patient_of(source: str, path: str) -> str:
    """The subject id of an image within its source (MIAS pairs ``mdb001``/``mdb002`` are one woman);
    the file stem when the name carries none."""
    name = path.split("/")[-1].lower()
    if source == "mini_mias":
        m = re.search(r"mdb(\d+)", name)
        if m:
            return f"mias{(int(m.group(1)) + 1) // 2:03d}"
    pat = _PATIENT_PATTERNS.get(source)
    m = re.search(pat, name) if pat else None
    return m.group(1) if m else re.sub(r"\.(nii\.gz|\w+)$", "", name)


def _regions(text: str) -> tuple[str, ...]:
    return tuple(p.strip().upper() for p in str(text or "").split(";") if p.strip())


def catalogue(data_root: PathLike) -> list[Item]:
    """Every labelled image of ``data_root``: rows of ``radiology_2d/labels.csv`` and the image rows of
    ``manifest.csv`` (label maps, rows without a modality or body region, and missing files are left out).

    Raises:
        DatasetError: neither catalogue exists.
    """
    root = Path(data_root)
    labels, manifest = root / "radiology_2d" / "labels.csv", root / "manifest.csv"
    if not labels.is_file() and not manifest.is_file():
        raise DatasetError(
            f"{root}: has neither radiology_2d/labels.csv nor manifest.csv; pass the shared data folder."
        )
    rows: list[tuple[str, str, str, int]] = []
    if labels.is_file():
        with open(labels, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                rows.append(("radiology_2d/" + r["path"], r.get("modality", ""), r.get("body_region", ""), 2))
    if manifest.is_file():
        with open(manifest, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                nd = int(r["ndim"]) if str(r.get("ndim", "")).strip().isdigit() else 3
                rows.append((r["path"], r.get("modality_code", ""), r.get("region_code", ""), nd))
    items, seen = [], set()
    for path, mod, reg, nd in rows:
        mod = mod.strip().upper()
        if not mod or mod.startswith(("SEG", "LABEL")) or path in seen or not (root / path).is_file():
            continue
        regions = () if mod == "OT" else _regions(reg)
        if mod != "OT" and not regions:
            continue
        seen.add(path)
        src = source_of(path)
        items.append(Item(path, mod, regions, src, patient_of(src, path), nd))
    return items


# --- near-duplicates --------------------------------------------------------------------------------------
def fingerprint(array: np.ndarray, size: int = DUPLICATE_SIZE) -> np.ndarray:
    """An image as a zero-mean, unit-norm vector of ``size * size`` grey values (squashed to a square;
    a volume by its middle slice along the first array axis), so that a dot product is the Pearson
    correlation."""
    import torch
    import torch.nn.functional as F

    a = np.asarray(array, dtype=np.float32)
    if a.ndim == 3 and a.shape[-1] in (3, 4) and a.shape[0] > 4:  # colour picture (y, x, c)
        a = a[..., :3].mean(axis=-1)
    while a.ndim > 2:
        a = a[a.shape[0] // 2]
    t = torch.from_numpy(np.ascontiguousarray(a))[None, None]
    small = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    v = small.reshape(-1).numpy().astype(np.float64)
    v -= v.mean()
    n = np.linalg.norm(v)
    return (v / n if n > 1e-12 else v).astype(np.float32)


def _dihedral(fp: np.ndarray, size: int) -> list[np.ndarray]:
    """The 8 flips and quarter turns of fingerprints ``(n, size*size)``."""
    sq = fp.reshape(-1, size, size)
    out = []
    for k in range(4):
        r = np.rot90(sq, k, axes=(1, 2))
        out += [r.reshape(len(fp), -1), r[:, :, ::-1].reshape(len(fp), -1)]
    return out


def near_duplicates(
    fps: np.ndarray,
    threshold: float = DUPLICATE_CORRELATION,
    dihedral: bool = True,
    size: int = DUPLICATE_SIZE,
) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, correlation)`` (``i < j``) of fingerprints correlated above ``threshold``, also under
    flips and quarter turns when ``dihedral``."""
    fps = np.ascontiguousarray(fps, dtype=np.float32)
    best = np.full((len(fps), len(fps)), -1.0, np.float32)
    for t in _dihedral(fps, size) if dihedral else [fps]:
        np.maximum(best, fps @ np.ascontiguousarray(t).T, out=best)
    best = np.maximum(best, best.T)
    i, j = np.nonzero(np.triu(best > threshold, k=1))
    return [(int(a), int(b), round(float(best[a, b]), 4)) for a, b in zip(i, j)]


# --- the split --------------------------------------------------------------------------------------------
def _components(n: int, edges: Sequence[tuple[int, int]]) -> list[int]:
    """Connected component id of each of ``n`` nodes (union-find)."""
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(a) for a in range(n)]


def assign_splits(
    items: Sequence[Item],
    duplicates: Sequence[tuple[int, int, float]] = (),
    held_out: Optional[dict[str, str]] = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    min_groups: int = 5,
) -> tuple[list[str], list[int]]:
    """Each item's split and group (see the module docstring).

    Returns:
        ``(splits, groups)``: per item ``"train"``/``"dev"``/``"test"`` and its group id (items of one
        patient or linked by near-duplicates share a group; a group is never split).
    """
    held = HELD_OUT_SOURCES if held_out is None else held_out
    by_patient: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        by_patient[(it.source, it.patient)].append(i)
    edges = [(lst[0], k) for lst in by_patient.values() for k in lst[1:]]
    edges += [(a, b) for a, b, _ in duplicates]
    comp = _components(len(items), edges)
    members: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(comp):
        members[c].append(i)
    rank = {name: k for k, name in enumerate(SPLIT_NAMES)}
    group_split: dict[int, str] = {}
    for c, idx in members.items():  # a group touching a held-out source follows it (test before dev)
        parts = [held[items[i].source] for i in idx if items[i].source in held]
        if parts:
            group_split[c] = max(parts, key=lambda s: rank[s])
    rng = np.random.default_rng(seed)
    per_source: dict[str, list[int]] = defaultdict(list)
    for c in sorted(members):
        if c not in group_split:
            per_source[items[members[c][0]].source].append(c)
    for src in sorted(per_source):
        groups = per_source[src]
        order = [groups[k] for k in rng.permutation(len(groups))]
        n = len(order)
        n_dev = int(round(fractions[1] * n)) if n >= min_groups else 0
        n_test = int(round(fractions[2] * n)) if n >= min_groups else 0
        for k, c in enumerate(order):
            group_split[c] = "dev" if k < n_dev else "test" if k < n_dev + n_test else "train"
    return [group_split[c] for c in comp], comp


@dataclasses.dataclass
class ProtocolSplit:
    """A data folder's items, their split and group, and the near-duplicate pairs found.

    Attributes:
        root: the data folder (absolute).
        items: the catalogue; ``splits`` and ``groups``: per item.
        duplicates: near-duplicate pairs ``(i, j, correlation)`` (indices into ``items``).
        meta: how the split was made (seed, fractions, held-out sources, threshold, time).
    """

    root: Path
    items: list[Item]
    splits: list[str]
    groups: list[int]
    duplicates: list[tuple[int, int, float]]
    meta: dict[str, Any]

    def subset(self, split: str) -> list[Item]:
        """The items of one split."""
        return [it for it, s in zip(self.items, self.splits) if s == split]

    def path(self, item: Item) -> Path:
        """The item's file (absolute when the split's data folder is)."""
        return self.root / item.path

    def split_of(self) -> dict[str, str]:
        """Absolute path -> split."""
        return {str(self.path(it)): s for it, s in zip(self.items, self.splits)}

    def linked(self, paths: Sequence[str]) -> set:
        """Absolute paths of every image in the same group as one of ``paths`` (the same patient or a
        near-duplicate), ``paths`` included."""
        index = {str(self.path(it)): i for i, it in enumerate(self.items)}
        wanted = {self.groups[index[p]] for p in paths if p in index}
        return {str(self.path(it)) for it, g in zip(self.items, self.groups) if g in wanted} | set(paths)

    def digest(self) -> str:
        """A short hash of the assignment (path and split of every item)."""
        text = "\n".join(f"{it.path}\t{s}" for it, s in zip(self.items, self.splits))
        return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]

    def leakage(self) -> dict[str, int]:
        """Checks that must all be 0: near-duplicate pairs and patients across splits, held-out sources
        outside their split."""
        cross = sum(1 for a, b, _ in self.duplicates if self.splits[a] != self.splits[b])
        per_patient: dict[tuple[str, str], set] = defaultdict(set)
        for it, s in zip(self.items, self.splits):
            per_patient[(it.source, it.patient)].add(s)
        held = self.meta.get("held_out_sources", {})
        return {
            "near_duplicate_pairs_across_splits": cross,
            "patients_in_several_splits": sum(1 for v in per_patient.values() if len(v) > 1),
            "held_out_source_images_elsewhere": sum(
                1 for it, s in zip(self.items, self.splits) if it.source in held and held[it.source] != s
            ),
        }

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class and split."""
        out: dict[str, Counter] = defaultdict(Counter)
        for it, s in zip(self.items, self.splits):
            out[it.label][s] += 1
        return {k: dict(v) for k, v in sorted(out.items())}

    # --- file ------------------------------------------------------------------------------------------
    def to_json(self, data_root_text: str = "") -> dict[str, Any]:
        return {
            "format": 1,
            "data_root": data_root_text or str(self.root),
            "digest": self.digest(),
            "meta": self.meta,
            "leakage": self.leakage(),
            "items": [
                {"path": it.path, "modality": it.modality, "regions": ";".join(it.regions), "source": it.source,
                 "patient": it.patient, "ndim": it.ndim, "group": g, "split": s}
                for it, g, s in zip(self.items, self.groups, self.splits)
            ],
            "near_duplicates": [list(d) for d in self.duplicates],
        }  # fmt: skip

    def save(self, path: PathLike, data_root_text: str = "") -> Path:
        """Write the split as JSON (atomically); ``data_root_text`` is how the data folder is recorded."""
        write_json(path, self.to_json(data_root_text))
        return Path(path)

    @classmethod
    def load(cls, path: PathLike, root: Optional[PathLike] = None) -> ProtocolSplit:
        """Read a split file; ``root`` overrides the data folder it names (relative names are resolved
        against the file's checkout by the caller).

        Raises:
            InputError: missing or unreadable file.
        """
        p = Path(path)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            rows = d["items"]
            items = [Item(r["path"], r["modality"], _regions(r["regions"]), r["source"], r["patient"],
                          int(r["ndim"])) for r in rows]  # fmt: skip
            splits = [str(r["split"]) for r in rows]
            groups = [int(r["group"]) for r in rows]
            dups = [(int(a), int(b), float(c)) for a, b, c in d.get("near_duplicates", [])]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(
                f"{p}: not a readable split file ({e}); make one with `modelselector encoder split`."
            ) from e
        base = Path(root).resolve() if root is not None else Path(str(d.get("data_root", "")))
        return cls(base, items, splits, groups, dups, dict(d.get("meta") or {}))


def make_split(
    data_root: PathLike,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    held_out: Optional[dict[str, str]] = None,
    threshold: float = DUPLICATE_CORRELATION,
    cancel: Optional[Any] = None,
) -> ProtocolSplit:
    """The protocol split of a data folder: catalogue, near-duplicates, assignment (module docstring).

    Every image is read once (progress bar; ``cancel`` checked per image); unreadable images are left out
    of the catalogue and counted in ``meta["unreadable"]``.

    Raises:
        DatasetError: no catalogue in ``data_root``.
    """
    from ..io.image import read_image

    root = Path(data_root).resolve()
    items, fps, bad = [], [], []
    t0 = time.time()
    for it in progress_bar(catalogue(root), desc="reading images for the split"):
        check_cancel(cancel)
        try:
            img = read_image(root / it.path, check_content=False)
        except InputError as e:
            bad.append(f"{it.path}: {e}")
            continue
        items.append(it)
        fps.append(fingerprint(img.array))
    dups = near_duplicates(np.stack(fps), threshold) if fps else []
    held = dict(HELD_OUT_SOURCES if held_out is None else held_out)
    splits, groups = assign_splits(items, dups, held, fractions, seed)
    meta = {
        "seed": seed,
        "fractions": dict(zip(SPLIT_NAMES, [float(f) for f in fractions])),
        "held_out_sources": held,
        "duplicate_rule": f"Pearson correlation > {threshold} of the images resized to {DUPLICATE_SIZE} px "
        "(a volume: its middle slice), also under flips and quarter turns",
        "unreadable": bad,
        "seconds": round(time.time() - t0, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return ProtocolSplit(root, items, splits, groups, dups, meta)


__all__ = [
    "DEFAULT_FRACTIONS",
    "HELD_OUT_SOURCES",
    "Item",
    "ProtocolSplit",
    "SPLIT_NAMES",
    "assign_splits",
    "catalogue",
    "fingerprint",
    "make_split",
    "near_duplicates",
    "patient_of",
    "source_of",
]
