"""Medical Segmentation Decathlon (MSD) folders: ``dataset.json`` + ``imagesTr``/``labelsTr``.

:func:`load_msd` reads an MSD-style folder and checks that every listed file exists. It also reads the
nnU-Net v2 form of such a folder (``dataset.json`` with ``channel_names``, ``labels`` as name -> value and
``file_ending``; ``imagesTr/CASE_0000.nii.gz`` beside ``labelsTr/CASE.nii.gz``), which it turns into the MSD
form, so that every command that writes a dataset back writes an MSD ``dataset.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from . import labelmaps

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

    @property
    def class_indices(self) -> dict[int, int]:
        """``{declared label value: class index}`` (:func:`~.labelmaps.class_indices`): 0 -> 0, the foreground
        values in increasing order -> ``1..K``, what a model trained on the dataset outputs.

        Raises:
            DatasetError: a negative value, or too many labels (naming ``dataset.json``).
        """
        return labelmaps.class_indices(self.labels, self.root / "dataset.json")


def case_id(path: os.PathLike[str] | str) -> str:
    """A file's case id: its name without the image extension (``imagesTr/JPCLN001.nii.gz`` -> ``JPCLN001``)."""
    name = Path(path).name
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".png"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


#: how a label file beside its image is commonly named: ``NAME_label.nii.gz`` next to ``NAME.nii.gz``
_LABEL_SUFFIXES = ("_label", "_labels", "_seg", "_mask", "_gt")


def without_label_suffix(name: str) -> str:
    """``name`` without a label file's suffix (:data:`_LABEL_SUFFIXES`: ``NAME_label`` -> ``NAME``), else
    ``name``."""
    return next((name[: -len(s)] for s in _LABEL_SUFFIXES if name.endswith(s) and len(name) > len(s)), name)


def case_id_of(case: dict[str, Any]) -> str:
    """A dataset case's id (``{"image", "label"}``), from the names the dataset lists (a symbolic link's own
    name, not its target's): its label file's :func:`case_id`, which MSD and nnU-Net v2 folders name alike (an
    nnU-Net image carries a channel suffix, ``CASE_0000``), except beside an image of the same name plus a label
    suffix (``NAME_label`` beside ``NAME``: ``NAME``); the image's without a label."""
    image = case_id(case["image"])
    if not case.get("label"):
        return image
    label = case_id(case["label"])
    return image if label != image and without_label_suffix(label) == image else label


def resolve_path(root: Path, rel: str) -> Path:
    """``rel`` made absolute against ``root`` unless it is absolute, with ``..`` taken away by name and symbolic
    links not followed: the file keeps the name the dataset gives it, which its case id comes from (a data
    store, git-annex or DVC, links it to a file named by its content)."""
    p = Path(rel)
    return p if p.is_absolute() else Path(os.path.abspath(root / p))


_MSD_EXAMPLE = ('{"name": "...", "modality": {"0": "MR"}, "labels": {"0": "background", "1": "..."}, "training": '
                '[{"image": "./NAME.nii.gz", "label": "./NAME_label.nii.gz"}, ...]}')  # fmt: skip


_IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")


def _image_label_pairs(root: Path) -> list[tuple[str, str]]:
    """``(image, label)`` paths relative to ``root`` of a folder that keeps each label file beside its image, or
    MSD's ``imagesTr/NAME`` with ``labelsTr/NAME`` (nnU-Net's ``imagesTr/NAME_0000`` with ``labelsTr/NAME``)."""
    names = {p.name for p in root.iterdir() if p.is_file()}
    pairs = []
    for name in sorted(names):
        for ending in _IMAGE_ENDINGS:
            if name.endswith(ending):
                stem = name[: -len(ending)]
                label = next(
                    (f"{stem}{s}{ending}" for s in _LABEL_SUFFIXES if f"{stem}{s}{ending}" in names), None
                )
                if label is not None:
                    pairs.append((name, label))
                break
    images, labels = root / "imagesTr", root / "labelsTr"
    if images.is_dir() and labels.is_dir():
        label_names = {p.name for p in labels.iterdir() if p.is_file()}
        for name in sorted(p.name for p in images.iterdir() if p.is_file()):
            ending = next((e for e in _IMAGE_ENDINGS if name.endswith(e)), None)
            stem = name[: -len(ending)] if ending else ""
            label = next(
                (c for c in (name, f"{stem.removesuffix('_0000')}{ending}") if c in label_names), None
            )
            if ending and label is not None:
                pairs.append((f"imagesTr/{name}", f"labelsTr/{label}"))
    return pairs


def _no_dataset_json(root: Path) -> DatasetError:
    """The error for a folder without ``dataset.json``, saying what to write when it holds image/label pairs."""
    pairs = _image_label_pairs(root)
    if not pairs:
        return DatasetError(
            f"{root}: holds no dataset.json; it is not an MSD dataset folder (dataset.json with imagesTr/ and "
            "labelsTr/, or nnU-Net v2's form of it)."
        )
    image, label = pairs[0]
    return DatasetError(
        f"{root}: holds no dataset.json, but {len(pairs)} image/label pair(s) such as {image} with {label}; list "
        f"them in a dataset.json in MSD form, {_MSD_EXAMPLE}, in this folder (or in a new one, with absolute paths) "
        "and pass that folder."
    )


def _from_nnunet(root: Path, raw: dict[str, Any], meta_path: Path) -> dict[str, Any]:
    """nnU-Net v2's ``dataset.json`` (``channel_names``, ``labels`` name -> value, ``file_ending``) in MSD form,
    its cases found in ``labelsTr`` (or listed under ``dataset``)."""
    channels = {str(k): str(v) for k, v in (raw.get("channel_names") or {}).items()}
    if len(channels) != 1:
        raise DatasetError(f"{meta_path}: lists {len(channels)} input channels ({', '.join(channels.values())}); "
                           "training here takes one image per case: keep one channel.")  # fmt: skip
    labels: dict[str, str] = {}
    for name, value in (raw.get("labels") or {}).items():
        if isinstance(value, (list, tuple)):
            raise DatasetError(f"{meta_path}: label '{name}' is a region of several values {list(value)} "
                               "(nnU-Net region-based training); give each label one value.")  # fmt: skip
        labels[str(int(value))] = str(name)
    ending = str(raw.get("file_ending", ".nii.gz"))
    if isinstance(raw.get("dataset"), dict):
        cases = [{"image": str(c["images"][0]), "label": str(c["label"])} for c in raw["dataset"].values()]
    else:
        found = sorted((root / "labelsTr").glob(f"*{ending}"))
        cases = [{"image": f"imagesTr/{p.name[: -len(ending)]}_0000{ending}", "label": f"labelsTr/{p.name}"}
                 for p in found]  # fmt: skip
    extra = {k: v for k, v in raw.items() if k not in ("channel_names", "labels", "file_ending", "dataset")}
    return {**extra, "name": raw.get("name", root.name), "modality": channels, "labels": labels, "training": cases,
            "numTraining": len(cases)}  # fmt: skip


def load_msd(folder: os.PathLike[str] | str) -> MSDDataset:
    """Read an MSD dataset folder (or nnU-Net v2's form of it) and check that every image and label file
    exists.

    Args:
        folder: folder holding ``dataset.json`` (keys ``name``, ``modality``, ``labels``, ``training``; or
            nnU-Net v2's ``channel_names``, ``labels``, ``file_ending`` with ``imagesTr``/``labelsTr``).

    Raises:
        DatasetError: missing folder or ``dataset.json`` (saying what to write when the folder holds image and
            label pairs), malformed JSON or keys, several channels or region labels in nnU-Net form, or missing
            files (all named).
    """
    root = Path(folder)
    meta_path = root / "dataset.json"
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder; pass an MSD folder holding dataset.json.")
    if not meta_path.is_file():
        raise _no_dataset_json(root)
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{meta_path}: not valid JSON ({e}).") from e
    if isinstance(raw, dict) and "channel_names" in raw and "training" not in raw:
        try:
            raw = _from_nnunet(root, raw, meta_path)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{meta_path}: not a readable nnU-Net v2 dataset.json ({type(e).__name__}: {e}); "
                               "'channel_names' maps '0' to a modality, 'labels' names to whole numbers, and "
                               "'dataset' (when present) case ids to {'images': [...], 'label': ...}.") from e  # fmt: skip
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
