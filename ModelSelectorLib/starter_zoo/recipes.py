"""The starter zoo's recipes: what turns the real labelled images of a data folder into small task models.

Each :class:`Recipe` names its source files (relative to the data folder, e.g. ``../shared/data``), how
their labels map to the model's labels, the split into training / held-out validation / external check
cases, and a small :class:`~ModelSelectorLib.train.TrainConfig`. :func:`build_starter_zoo` runs three
stages over the recipes:

``train``
    :func:`prepare_dataset` writes an MSD folder (``dataset.json`` + ``imagesTr``/``labelsTr``; label maps
    remapped to ``0..K``, PNG masks ``0/255`` to ``0/1``, every label on its image's grid), then
    :func:`~ModelSelectorLib.train.train_segmentation` trains a bundle into a scratch zoo. The card is then
    completed (label provenance, held-out cases, external check Dice, licence of the data) and the bundle
    is added to the output zoo. A model whose bundle already records the same recipe hash is skipped, so
    an interrupted build resumes where it stopped.
``prototypes``
    exemplar prototypes from a few training inputs and data-free prototypes for every model, with
    :func:`ModelSelectorLib.prototypes.generate_for_model`.
``index``
    one hnswlib index over the whole zoo (:func:`ModelSelectorLib.index.build_index`), saved to
    ``ZOO/index``.

Builds are deterministic for a given seed: case lists are sorted, splits are fixed in the recipes (or
drawn with the seed), and training runs under :func:`monai.utils.set_determinism`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from ..datasets.landmarks import find_landmark_folders, labelled_subset
from ..datasets.landmarks import split_cases as split_landmark_cases
from ..errors import DatasetError, InputError, ModelSelectorError
from ..training.landmark_study import TRAINING_DATA_LICENCE, GridConfig
from ..zoo.card import BODY_REGIONS, MODALITIES

PathLike = Union[str, "os.PathLike[str]"]

#: bumped when the meaning of a recipe changes in a way its fields do not show
RECIPE_FORMAT = 1
#: key of the recipe block in a bundle's ``configs/metadata.json``
METADATA_KEY = "starter_zoo"
STAGES = ("train", "prototypes", "index")
INDEX_DIR = "index"

# --- terminology (SNOMED CT codes as 3D Slicer's terminology uses them) ---------------------------------
ANATOMY = ("SCT", "123037004", "Anatomical Structure")
TISSUE = ("SCT", "85756007", "Tissue")
ALTERED = ("SCT", "49755003", "Morphologically Altered Structure")
ANTERIOR = ("SCT", "255549009", "Anterior")
POSTERIOR = ("SCT", "255551008", "Posterior")
RIGHT = ("SCT", "24028007", "Right")
LEFT = ("SCT", "7771000", "Left")


def terminology(
    category: Sequence[str],
    type_: Sequence[str],
    modifier: Optional[Sequence[str]] = None,
    region: Optional[Sequence[str]] = None,
) -> dict[str, Any]:
    """A Slicer terminology entry: ``{"category": [scheme, code, meaning], "type": [...], ...}``."""
    term: dict[str, Any] = {"category": list(category), "type": list(type_)}
    if modifier:
        term["typeModifier"] = list(modifier)
    if region:
        term["anatomicRegion"] = list(region)
    return term


@dataclasses.dataclass(frozen=True)
class LabelSpec:
    """One output label of a recipe.

    Attributes:
        value: label value in the model's output (1..K).
        name: segment name shown to users.
        color: RGB in 0-1.
        terminology: Slicer terminology entry (see :func:`terminology`).
        source_values: values of the source label map that become ``value``; empty means "every non-zero
            voxel" (binary masks stored as 0/1 or 0/255).
    """

    value: int
    name: str
    color: tuple[float, float, float]
    terminology: dict[str, Any]
    source_values: tuple[int, ...] = ()

    def to_card(self) -> dict[str, Any]:
        return {"value": self.value, "name": self.name, "color": [float(c) for c in self.color],
                "terminology": self.terminology}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Case:
    """One labelled image: paths relative to the data folder and a short id (unique within a recipe)."""

    id: str
    image: str
    label: str


@dataclasses.dataclass(frozen=True)
class CaseSplit:
    """Cases of a recipe: ``train`` (fitted), ``val`` (held out; validation metric), ``check`` (external)."""

    train: tuple[Case, ...]
    val: tuple[Case, ...] = ()
    check: tuple[Case, ...] = ()


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one starter-zoo model is made from the data folder.

    Attributes:
        name: model name in the zoo.
        version: model version written to the card.
        modality, body_region: DICOM modality code and body region(s) of the intended input.
        labels: the model's output labels.
        cases: ``cases(data_root, seed) -> CaseSplit``; must be deterministic.
        train: :class:`~ModelSelectorLib.train.TrainConfig` settings (seed excluded: the build's seed).
        provenance: where the labels come from (model output, threshold, manual), stated on the card.
        source: what the images are and where they come from.
        licence: licence of the data, carried to the weights.
        intended_input: a sentence on the images the model is for.
        n_exemplars: training inputs used as exemplar prototypes.
        check_name: what the ``check`` cases are (for the card).
        held_out: where the card's held-out figures come from: ``"validation"`` (the ``val`` cases; ``check``
            cases are an external check), ``"test"`` (the ``check`` cases are a test split that no choice
            was made on; ``val`` cases choose the post-processing) or ``"cv"`` (``folds``-fold
            cross-validation over every case, then a final model on all of them).
        folds: number of cross-validation folds (``held_out="cv"``).
        refit_lcc: for ``held_out="test"``: the final model trains on the training and validation cases, and
            keeps the largest component of these label values. That choice and every setting were made
            beforehand on the validation cases by this recipe trained without them. ``None``: the model trains
            on the training cases and chooses its post-processing on the validation cases itself.
        nsd_tolerance_mm: tolerance of the normalised surface Dice in the held-out tables (``None``: no NSD).
        distance_unit: unit of the held-out distances: ``"mm"``, ``"nominal mm"`` or ``"source px"`` (nominal spacing).
        reference: the published figures of the task, ``{"source": text, "dice": {label name: value}, ...}``.
        bundled: whether ``Resources/zoo`` ships the model; ``False`` for a recipe whose build (e.g. a
            cross-validation still running) has not finished. ``build-starter-zoo`` builds it either way.
    """

    name: str
    version: str
    modality: str
    body_region: str
    labels: tuple[LabelSpec, ...]
    cases: Callable[[Path, int], CaseSplit]
    train: dict[str, Any]
    provenance: str
    source: str
    licence: str
    intended_input: str
    n_exemplars: int = 3
    check_name: str = ""
    held_out: str = "validation"
    folds: int = 0
    nsd_tolerance_mm: Optional[float] = None
    distance_unit: str = "mm"
    refit_lcc: Optional[tuple[int, ...]] = None
    reference: Optional[dict[str, Any]] = None
    bundled: bool = True

    @property
    def spatial_dims(self) -> int:
        return len(self.train.get("roi_size") or self.train.get("target_spacing") or (0, 0, 0))

    @property
    def final_trains_on_validation(self) -> bool:
        """Whether the final model also trains on the validation cases (cross-validation, or ``refit_lcc``),
        so that nothing is left to choose on when it is built."""
        return self.held_out == "cv" or self.refit_lcc is not None

    def check(self) -> Recipe:
        """Raise :class:`ModelSelectorError` when a field is outside the project's vocabulary."""
        if self.modality not in MODALITIES:
            raise ModelSelectorError(f"recipe {self.name}: modality {self.modality!r} is not a DICOM code.")
        bad = [r for r in self.body_region.split(";") if r not in BODY_REGIONS]
        if bad:
            raise ModelSelectorError(f"recipe {self.name}: body region(s) {bad} are not in the vocabulary.")
        values = [lb.value for lb in self.labels]
        if sorted(values) != list(range(1, len(values) + 1)):
            raise ModelSelectorError(f"recipe {self.name}: label values {values} must be 1..K.")
        if self.held_out not in ("validation", "test", "cv") or (self.held_out == "cv") != (self.folds >= 2):
            raise ModelSelectorError(
                f"recipe {self.name}: held_out {self.held_out!r} with {self.folds} folds; use validation, test, "
                "or cv with at least 2 folds."
            )
        if self.refit_lcc is not None and (self.held_out != "test" or not set(self.refit_lcc) <= set(values)):
            raise ModelSelectorError(
                f"recipe {self.name}: refit_lcc {list(self.refit_lcc)} needs held_out test and label values of "
                f"the recipe ({values})."
            )
        return self


# --- case lists -----------------------------------------------------------------------------------------
def fixed_split(train: Sequence[Case], val: Sequence[Case] = (), check: Sequence[Case] = ()) -> Callable:
    """A recipe's ``cases`` function that always gives these training, validation and check cases."""

    def cases(root: Path, seed: int) -> CaseSplit:
        return CaseSplit(tuple(train), tuple(val), tuple(check))

    return cases


def _cxr_cases(n_train: int, n_val: int) -> Callable[[Path, int], CaseSplit]:
    """JSRT chest radiographs of ``cxr_landmarks`` (one image per subject), shuffled with the seed and
    split by image; the four JSRT images of ``cxr_lungseg_imlab`` (absent from ``cxr_landmarks``) are the
    external check."""

    def cases(root: Path, seed: int) -> CaseSplit:
        folder = root / "cxr_landmarks"
        if not folder.is_dir():
            raise DatasetError(f"{folder}: missing; the chest X-ray recipe needs it.")
        ids = sorted(p.name[: -len("_lungmask.png")] for p in folder.glob("JPC*_lungmask.png"))
        ids = [i for i in ids if (folder / f"{i}.png").is_file()]
        order = np.random.default_rng(seed).permutation(len(ids))
        chosen = [ids[i] for i in order[: n_train + n_val]]
        mk = [Case(i, f"cxr_landmarks/{i}.png", f"cxr_landmarks/{i}_lungmask.png") for i in chosen]
        check = [Case(f"imlab_img_{k}", f"cxr_lungseg_imlab/img_{k}.png", f"cxr_lungseg_imlab/img_{k}_lungmask.png")
                 for k in range(1, 5)]  # fmt: skip
        return CaseSplit(tuple(sorted(mk[:n_train], key=lambda c: c.id)),
                         tuple(sorted(mk[n_train:], key=lambda c: c.id)), tuple(check))  # fmt: skip

    return cases


def _table(root: Path, folder: str) -> list[dict[str, str]]:
    """The rows of ``folder/cases.csv`` (one per case or patient)."""
    table = root / folder / "cases.csv"
    if not table.is_file():
        raise DatasetError(f"{table}: missing; the recipe needs the case table of {folder}/.")
    with open(table, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _hippocampus_cases() -> Callable[[Path, int], CaseSplit]:
    """Every case of ``msd_hippocampus`` (MSD Task04) for cross-validation, sorted by id."""

    def cases(root: Path, seed: int) -> CaseSplit:
        rows = sorted(_table(root, "msd_hippocampus"), key=lambda r: r["case"])
        return CaseSplit(tuple(Case(r["case"], f"msd_hippocampus/{r['image']}", f"msd_hippocampus/{r['label']}")
                               for r in rows))  # fmt: skip

    return cases


def _acdc_test_split() -> Callable[[Path, int], CaseSplit]:
    """All ACDC patients of ``acdc_cardiac_mr`` by the source repository's split (``cases.csv``): its
    training patients train, its validation patients choose (post-processing), its test patients are the
    test split; one frame (ED) per patient, so every split is by patient."""

    def cases(root: Path, seed: int) -> CaseSplit:
        parts: dict[str, list[Case]] = {"train": [], "val": [], "test": []}
        for r in sorted(_table(root, "acdc_cardiac_mr"), key=lambda r: r["case"]):
            case = Case(r["case"], f"acdc_cardiac_mr/{r['image']}", f"acdc_cardiac_mr/{r['label']}")
            parts.setdefault(r.get("source_repo_split", ""), []).append(case)
        return CaseSplit(tuple(parts["train"]), tuple(parts["val"]), tuple(parts["test"]))

    return cases


def _lgg_test_split(n_val: int, n_test: int) -> Callable[[Path, int], CaseSplit]:
    """The patients of ``lgg_brain_mr`` (one FLAIR volume each) shuffled with the seed: ``n_test`` test
    patients, ``n_val`` validation patients, the rest train."""

    def cases(root: Path, seed: int) -> CaseSplit:
        rows = sorted(_table(root, "lgg_brain_mr"), key=lambda r: r["patient"])
        order = np.random.default_rng(seed).permutation(len(rows))
        mk = [Case(rows[i]["patient"], f"lgg_brain_mr/{rows[i]['image']}", f"lgg_brain_mr/{rows[i]['label']}")
              for i in order]  # fmt: skip
        test, val, train = mk[:n_test], mk[n_test : n_test + n_val], mk[n_test + n_val :]
        return CaseSplit(*(tuple(sorted(part, key=lambda c: c.id)) for part in (train, val, test)))

    return cases


# --- the recipes ----------------------------------------------------------------------------------------
_TS = "totalsegmentator"
_TS_LICENCE = ("CC-BY-4.0 (TotalSegmentator dataset images and label maps; cite Wasserthal et al., Radiology: AI "
               "2023); files from the TotalSegmentator repository, Apache-2.0")  # fmt: skip
_TS_PROVENANCE = ("TotalSegmentator v2 model output (the repository's reference test results), not manual "
                  "ground truth")  # fmt: skip
_PYRAD_LICENCE = ("BSD-3-Clause (pyradiomics repository, Harvard Medical School); images are public sample "
                  "cases whose upstream data terms are not verified")  # fmt: skip
_UNET_S = (8, 16, 32, 64)
#: nnU-Net-style settings shared by the real models (SGD + poly schedule, nnU-Net augmentation, Gaussian
#: windows, test-time mirroring, largest-component post-processing chosen on held-out cases)
_NNUNET = {"architecture": "dynunet", "augment_preset": "nnunet", "optimizer": "sgd", "lr": 0.01,
           "weight_decay": 3e-5, "lr_schedule": "poly", "grad_clip": 12.0, "keep": "last", "sw_mode": "gaussian",
           "sw_overlap": 0.5, "tta_mirror": True, "postprocess": "auto"}  # fmt: skip
#: chosen on fold 0's validation cases: Adam, 4 cases x 1 patch per step: 0.879 / 0.858 (anterior / posterior)
#: against SGD, 2 cases x 2 patches: 0.850 / 0.835. Version 1.0.1: the same with a bfloat16 forward pass
#: (1.0.0 trained in float32 for 40 min, above the 30-min budget of the 2 cores). Version 1.0.2: 50 epochs
#: instead of 30, chosen on fold 0 (0.886 / 0.867 against 0.879 / 0.859; 45 epochs 0.884 / 0.864). Version 1.0.3:
#: 1.0.2's settings trained in the channels-last layout (fitting.training_memory_format), within the 30-min budget
_HIPPOCAMPUS = {**_NNUNET, "channels": (16, 32, 64, 128), "roi_size": None, "max_patch_voxels": 100_000,
                "batch_size": 4, "num_samples": 1, "epochs": 50, "steps_per_epoch": 60, "optimizer": "adam",
                "lr": 2e-3, "weight_decay": 1e-5, "precision": "bf16"}  # fmt: skip
#: slice-wise: a 3D DynUNet with 1-voxel kernels and no pooling along z trains on (128, 128, 1) patches
_SLICEWISE = {**_NNUNET, "channels": (16, 32, 64, 128, 256), "roi_size": (128, 128, 1), "batch_size": 2,
              "num_samples": 6, "epochs": 20, "steps_per_epoch": 60}  # fmt: skip
#: chosen on the 10 validation patients: Adam 0.621 against SGD 0.612 one-pass validation Dice after 20 x 60 steps;
#: then (version 1.0.1) 30 epochs: mean per-patient Dice as applied 0.759 against 0.731 for 20 epochs and 0.714
#: for 30 epochs with batch Dice; 40 epochs (through the 2D twin) 0.703, not adopted; a 2.5D network on 3-slice slabs
#: (roi_size (128, 128, 3), slab_levels 1, num_samples 2) 0.719, not adopted
_SLICEWISE_LGG = {**_SLICEWISE, "optimizer": "adam", "lr": 2e-3, "weight_decay": 1e-5, "epochs": 30}


def _organ(value: int, name: str, code: str, meaning: str, color: Sequence[float], src: Sequence[int],
           modifier: Optional[Sequence[str]] = None) -> LabelSpec:  # fmt: skip
    """An anatomical-structure label (SNOMED CT type ``code``/``meaning``) taken from source values ``src``."""
    return LabelSpec(
        value, name, tuple(color), terminology(ANATOMY, ("SCT", code, meaning), modifier), tuple(src)
    )


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        name="ct-abdomen-organs",
        version="1.0.0",
        modality="CT",
        body_region="ABDOMEN",
        labels=(
            _organ(1, "Liver", "10200004", "Liver", (0.87, 0.51, 0.40), (5,)),
            _organ(2, "Spleen", "78961009", "Spleen", (0.62, 0.42, 0.64), (1,)),
            _organ(3, "Stomach", "69695003", "Stomach", (0.85, 0.63, 0.25), (6,)),
            _organ(4, "Aorta", "15825003", "Aorta", (0.88, 0.38, 0.30), (52,)),
        ),
        cases=fixed_split(
            [
                Case(
                    "ct_abdomen_dicom2",
                    f"{_TS}/ct_abdomen_dicom2.nii.gz",
                    f"{_TS}/ct_abdomen_dicom2_seg.nii.gz",
                )
            ],
            [
                Case(
                    "ct_thorax_abdomen_crop",
                    f"{_TS}/ct_thorax_abdomen_crop.nii.gz",
                    f"{_TS}/ct_thorax_abdomen_crop_seg.nii.gz",
                )
            ],
        ),  # fmt: skip
        train={
            "channels": _UNET_S,
            "roi_size": (64, 64, 16),
            "target_spacing": (3.0, 3.0, 3.0),
            "intensity": "ct",
            "a_min": -250.0,
            "a_max": 350.0,
            "epochs": 200,
            "lr": 2e-3,
            "batch_size": 1,
            "num_samples": 6,
        },  # fmt: skip
        provenance=_TS_PROVENANCE + "; kidneys are left out because the training case does not show them",
        source="TotalSegmentator example CT scans (upper abdomen): trained on the 20-slice DICOM example "
        "(0.98 x 0.98 x 2 mm), validated on the other subject's 3 mm crop",
        licence=_TS_LICENCE,
        intended_input="contrast or non-contrast CT of the upper abdomen, any orientation; resampled to 3 mm",
    ),
    Recipe(
        name="mr-abdomen-organs",
        version="1.0.0",
        modality="MR",
        body_region="ABDOMEN",
        labels=(
            _organ(1, "Liver", "10200004", "Liver", (0.87, 0.51, 0.40), (5,)),
            _organ(2, "Spleen", "78961009", "Spleen", (0.62, 0.42, 0.64), (1,)),
            _organ(3, "Right kidney", "64033007", "Kidney", (0.73, 0.40, 0.33), (2,), RIGHT),
            _organ(4, "Left kidney", "64033007", "Kidney", (0.80, 0.47, 0.38), (3,), LEFT),
            _organ(5, "Stomach", "69695003", "Stomach", (0.85, 0.63, 0.25), (6,)),
        ),
        cases=fixed_split(
            [Case("mr_abdomen_crop", f"{_TS}/mr_abdomen_crop.nii.gz", f"{_TS}/mr_abdomen_crop_seg.nii.gz")]
        ),
        train={
            "channels": _UNET_S,
            "roi_size": (64, 64, 16),
            "target_spacing": (3.0, 3.0, 3.0),
            "intensity": "mr",
            "epochs": 400,
            "lr": 2e-3,
            "batch_size": 1,
            "num_samples": 6,
        },  # fmt: skip
        provenance=_TS_PROVENANCE.replace("v2", "v2 'total_mr'"),
        source="TotalSegmentator example abdominal MR (3 mm crop, 20 slices); one case only",
        licence=_TS_LICENCE,
        intended_input="T1-weighted-like abdominal MR; resampled to 3 mm, z-scored over non-zero voxels",
    ),
    Recipe(
        name="ct-head-bone",
        version="1.0.0",
        modality="CT",
        body_region="HEAD",
        labels=(
            LabelSpec(
                1,
                "Bone",
                (0.95, 0.84, 0.57),
                terminology(TISSUE, ("SCT", "272673000", "Bone"), region=("SCT", "69536005", "Head")),
            ),
        ),  # fmt: skip
        cases=fixed_split(
            [Case("invesalius_ct_head", "invesalius/ct_head.nii.gz", "invesalius/ct_head_bone_mask.nii.gz")]
        ),
        train={
            "channels": _UNET_S,
            "roi_size": (64, 64, 32),
            "target_spacing": (2.0, 2.0, 3.0),
            "intensity": "ct",
            "a_min": -1000.0,
            "a_max": 2000.0,
            "epochs": 120,
            "lr": 2e-3,
            "batch_size": 1,
            "num_samples": 4,
        },  # fmt: skip
        provenance="InVesalius threshold mask (226..3071 HU), not manual",
        source="InVesalius example head CT 'Cranium' (ProMED CT 0051), Debian package invesalius-examples; one case",
        licence="GPL-2 (Debian package invesalius-examples copyright file)",
        intended_input="head CT in Hounsfield units; resampled to 2 x 2 x 3 mm",
    ),
    Recipe(
        name="mr-breast-lesion",
        version="1.0.0",
        modality="MR",
        body_region="BREAST",
        labels=(
            LabelSpec(
                1,
                "Breast lesion",
                (0.90, 0.35, 0.55),
                terminology(ALTERED, ("SCT", "52988006", "Lesion"), region=("SCT", "76752008", "Breast")),
            ),
        ),  # fmt: skip
        cases=fixed_split(
            [
                Case(
                    "pyradiomics_breast1",
                    "pyradiomics/breast1_image.nii.gz",
                    "pyradiomics/breast1_label.nii.gz",
                )
            ]
        ),
        train={
            "channels": _UNET_S,
            "roi_size": (48, 48, 16),
            "target_spacing": (0.664, 0.664, 2.1),
            "intensity": "mr",
            "epochs": 150,
            "lr": 2e-3,
            "batch_size": 1,
            "num_samples": 4,
        },  # fmt: skip
        provenance="manual lesion ROI of the pyradiomics test data",
        source="pyradiomics sample breast1 (breast MR crop, 45 x 120 x 21 voxels); one case",
        licence=_PYRAD_LICENCE,
        intended_input="breast MR around a lesion; resampled to 0.66 x 0.66 x 2.1 mm",
    ),
    Recipe(
        name="dx-chest-lungs",
        version="1.0.0",
        modality="DX",
        body_region="CHEST",
        labels=(
            LabelSpec(1, "Lungs", (0.77, 0.65, 0.57), terminology(ANATOMY, ("SCT", "39607008", "Lung"))),
        ),
        cases=_cxr_cases(48, 16),
        train={
            "channels": _UNET_S,
            "roi_size": (128, 128),
            "target_spacing": (2.0, 2.0),
            "intensity": "percentile",
            "a_min": 0.5,
            "a_max": 99.5,
            "epochs": 30,
            "lr": 2e-3,
            "batch_size": 4,
            "num_samples": 2,
        },  # fmt: skip
        provenance="SCR lung-field contours (manual, van Ginneken et al. 2006) as stored in "
        "vfmatzkin/jsrt-segmentation-unet",
        source="JSRT posterior-anterior chest radiographs (512 x 512 PNG, cxr_landmarks), split by image",
        licence="JSRT database terms (research use; cite Shiraishi et al., AJR 2000; redistribution terms not "
        "verified); lung masks from vfmatzkin/jsrt-segmentation-unet, MIT",
        intended_input="adult PA chest radiograph, about 512 px across (pixel spacing taken as 1 unit per pixel as "
        "PNG files carry none); resampled by 2",
        check_name="cxr_lungseg_imlab JPCNN090-093 (JSRT images absent from cxr_landmarks)",
    ),
    Recipe(
        name="mr-cardiac",
        version="2.0.0",
        modality="MR",
        body_region="HEART",
        labels=(
            LabelSpec(
                1,
                "Right ventricle cavity",
                (0.35, 0.55, 0.86),
                terminology(ANATOMY, ("SCT", "53085002", "Right ventricle")),
                (1,),
            ),
            LabelSpec(
                2,
                "Left ventricle myocardium",
                (0.86, 0.36, 0.30),
                terminology(
                    ANATOMY, ("SCT", "74281007", "Myocardium"), region=("SCT", "87878005", "Left ventricle")
                ),
                (2,),
            ),
            LabelSpec(
                3,
                "Left ventricle cavity",
                (0.94, 0.78, 0.30),
                terminology(ANATOMY, ("SCT", "87878005", "Left ventricle")),
                (3,),
            ),
        ),  # fmt: skip
        cases=_acdc_test_split(),
        train=_SLICEWISE,
        provenance="manual ACDC ground truth (RV cavity, LV myocardium, LV cavity), end-diastolic frame",
        source="ACDC challenge cine short-axis MR, all 86 patients of the shared copy (h5 export of "
        "antares0811/3DCardiac), split by patient as in that repository: 58 train, 9 validation, 19 test; voxel "
        "spacing 1.5 x 1.5 x 10 mm is nominal (the export has no geometry)",
        licence="ACDC challenge training data (Bernard et al., IEEE TMI 2018): research use under the challenge's "
        "terms, not verified here; export repository antares0811/3DCardiac, Apache-2.0 (code)",
        intended_input="cine bSSFP short-axis cardiac MR stack; resampled to 1.5 x 1.5 mm in-plane, segmented "
        "slice by slice",
        held_out="test",
        nsd_tolerance_mm=2.0,
        distance_unit="nominal mm",
        reference={
            "source": "nnU-Net (Isensee et al., Nat Methods 2021), ACDC 5-fold cross-validation",
            "dice": {
                "Right ventricle cavity": 0.90,
                "Left ventricle myocardium": 0.90,
                "Left ventricle cavity": 0.95,
            },
            "mean": 0.92,
        },  # fmt: skip
    ),
    Recipe(
        name="mr-hippocampus",
        version="1.0.3",
        modality="MR",
        body_region="HEAD",
        labels=(
            LabelSpec(
                1,
                "Anterior hippocampus",
                (0.40, 0.76, 0.65),
                terminology(ANATOMY, ("SCT", "5366008", "Hippocampus"), ANTERIOR),
                (1,),
            ),
            LabelSpec(
                2,
                "Posterior hippocampus",
                (0.99, 0.55, 0.38),
                terminology(ANATOMY, ("SCT", "5366008", "Hippocampus"), POSTERIOR),
                (2,),
            ),
        ),  # fmt: skip
        cases=_hippocampus_cases(),
        train=_HIPPOCAMPUS,
        provenance="manual labels of the Medical Segmentation Decathlon (Task04, Vanderbilt), anterior and "
        "posterior hippocampus",
        source="MSD Task04 hippocampus: 208 T1-weighted MR crops around one hippocampus (1 mm), msd_hippocampus/",
        licence="Medical Segmentation Decathlon data, CC-BY-SA 4.0 (cite Simpson et al. 2019, arXiv:1902.09063, "
        "and Antonelli et al., Nat Commun 2022)",
        intended_input="T1-weighted brain MR cropped around one hippocampus, about 35 x 50 x 35 mm at 1 mm",
        held_out="cv",
        folds=5,
        nsd_tolerance_mm=1.0,
        reference={
            "source": "nnU-Net (Isensee et al., Nat Methods 2021), MSD Task04 5-fold cross-validation",
            "dice": {"Anterior hippocampus": 0.90, "Posterior hippocampus": 0.89},
        },  # fmt: skip
    ),
    Recipe(
        name="mr-brain-flair-lesion",
        version="1.0.1",
        modality="MR",
        body_region="HEAD",
        labels=(
            LabelSpec(
                1,
                "FLAIR abnormality",
                (0.56, 0.93, 0.56),
                terminology(ALTERED, ("SCT", "108369006", "Neoplasm"), region=("SCT", "12738006", "Brain")),
            ),
        ),  # fmt: skip
        cases=_lgg_test_split(n_val=10, n_test=18),
        train=_SLICEWISE_LGG,
        provenance="manual FLAIR-abnormality masks of Buda et al. 2019 (TCGA lower-grade glioma)",
        source="TCGA-LGG FLAIR volumes with lesion masks (lgg_brain_mr/: 88 patients, axial slices binned 2 x 2 to "
        "128 px, nominal spacing in source-pixel units), split by patient with the seed: 60 train, 10 validation, "
        "18 test",
        licence="TCGA-LGG via Buda et al. 2019 (Kaggle lgg-mri-segmentation): research / non-commercial use "
        "(believed CC BY-NC-SA 4.0; not verified here)",
        intended_input="axial brain FLAIR MR of a lower-grade glioma patient; segmented slice by slice at 128 px",
        held_out="test",
        nsd_tolerance_mm=2.0,
        distance_unit="source px",
        reference={
            "source": "Buda et al., Comput Biol Med 2019 (same TCGA-LGG FLAIR data at 256 px, 22-fold "
            "cross-validation): mean per-patient Dice; human readers 0.84 +- 0.02",
            "dice": {"FLAIR abnormality": 0.836},
        },  # fmt: skip
    ),
)


@dataclasses.dataclass(frozen=True)
class LandmarkRecipe:
    """How the starter zoo's chest X-ray landmark model is made: the student variant and label fraction that
    won the comparison of ``docs/landmarks`` (:mod:`ModelSelectorLib.training.landmark_study`), trained with
    that comparison's settings on its split of the landmark images, with the build's seed.

    Attributes:
        name, version: model name and version in the zoo.
        variant: one of :data:`~ModelSelectorLib.training.landmarks.VARIANTS`.
        fraction: labelled share of the training images (the rest and ``cxr_unlabelled/`` are unlabelled).
        grid: :class:`~ModelSelectorLib.training.landmark_grid.GridConfig` settings: split seed, landmark schema
            and the ``train`` block (the same as ``docs/landmarks/grid.yaml``).
        n_exemplars: training images used as exemplar prototypes.
        bundled: whether ``Resources/zoo`` ships the model (see :class:`Recipe`).
    """

    name: str
    version: str
    variant: str
    fraction: float
    grid: dict[str, Any]
    n_exemplars: int = 3
    modality: str = "DX"
    body_region: str = "CHEST"
    provenance: str = ("JSRT: manual SCR contours (lungs, heart, clavicles) as landmark points "
                       "(ngaggion/Chest-xray-landmark-dataset); Shenzhen: lung points derived from expert masks")  # fmt: skip
    source: str = ("chest X-ray landmark images of cxr_landmarks/ and cxr_lungseg_imlab/ (adult PA, 512 px), split "
                   "by image into train / validation / test; cxr_unlabelled/ as unlabelled images")  # fmt: skip
    intended_input: str = "adult PA chest radiograph (2D); resized to the model's grid, points mapped back"
    bundled: bool = True

    @property
    def licence(self) -> str:
        return TRAINING_DATA_LICENCE

    def grid_config(self) -> Any:
        return GridConfig.from_dict(self.grid)

    def split(self, data_root: PathLike, seed: int = 0) -> dict[str, list[str]]:
        """``{"train", "val", "test", "labelled", "unlabelled"}`` image ids: the comparison's split, the training
        images that keep their labels with ``seed``, and the extra unlabelled pool."""
        cfg = self.grid_config()
        labelled, unlabelled = find_landmark_folders(data_root)
        split = split_landmark_cases(
            [p.stem for p in labelled], cfg.split_seed, cfg.val_fraction, cfg.test_fraction
        )
        return {**split, "labelled": labelled_subset(split["train"], self.fraction, seed),
                "unlabelled": [p.stem for p in unlabelled]}  # fmt: skip

    def cases(self, data_root: PathLike, ids: Sequence[str]) -> list[dict[str, str]]:
        """``{"id", "image", "label"}`` of labelled images ``ids``, paths relative to ``data_root``."""
        root = Path(data_root)
        by_id = {p.stem: p for p in find_landmark_folders(root)[0]}
        return [{"id": i, "image": str(by_id[i].relative_to(root)),
                 "label": str(by_id[i].with_name(i + "_landmarks.json").relative_to(root))} for i in ids]  # fmt: skip

    def files(self, data_root: PathLike) -> list[Path]:
        """Every image, landmark and outline file the model learns from or is scored on."""
        labelled, unlabelled = find_landmark_folders(data_root)
        outlines = self.grid.get("extra_outlines")
        return ([f for p in labelled for f in (p, p.with_name(p.stem + "_landmarks.json"))] + list(unlabelled)
                + ([Path(data_root) / outlines] if outlines else []))  # fmt: skip


#: the chest X-ray landmark model: a coarse-to-fine model of every contour point, the supervised student with all
#: labels (settings of ``docs/landmarks/grid.yaml`` but trained longer). Chosen on the 22 validation images, seed
#: 0, mean radial error: 400 coarse / 600 refinement steps (the grid's) 5.64 mm, 1,200 / 600 5.43 mm, 3,000 /
#: 1,500 5.20 mm; a 128 px coarse stage (400 / 600 steps, refinement on the 512 px grid) 6.11 mm. Then, on the same
#: images and networks, the contour stage (``contour_modes``): none 5.20 mm, 20 / 40 / 60 / 80 modes 4.89 / 4.72
#: / 4.71 / 4.71 mm (with the along-contour weight, prior and rounds of ``models.landmark_stages``). Then, with 60
#: modes: refinement 1,500 / 3,000 / 6,000 steps 4.71 / 4.64 / 4.63 mm; coarse 6,000 steps 4.74 mm; a wider
#: (20-40-80-160) or deeper (16-24-48-96-128) coarse UNet 4.76 / 4.82 mm. Then, around 1.0.4's networks
#: (``docs/landmarks/refit_probe.py``): the 36 JSRT outlines without images in the shape and contour stages
#: (``"extra_outlines": "cxr_landmarks_ngaggion/landmarks_all_1024.json"``) 4.577 mm, the per-landmark offsets
#: (``"point_offsets": True``) 4.573 mm, both 4.506 mm (4.644 mm without either). A 1.0.5 with both was refused by
#: the gate (test 4.57 against 4.55 mm), so the recipe stays 1.0.4's
LANDMARK_RECIPES: tuple[LandmarkRecipe, ...] = (
    LandmarkRecipe(
        name="dx-chest-landmarks",
        version="1.0.4",
        variant="student_supervised",
        fraction=1.0,
        grid={
            "split_seed": 20261124,
            "steps_per_group": {"RL": 1, "LL": 1, "H": 1, "RCLA": 1, "LCLA": 1},
            "train": {
                "size": 64,
                "sigma": 1.0,
                "steps": 3000,
                "batch_size": 8,
                "lr": 0.01,
                "augment_shift": 4,
                "teacher": "teacher",
                "student": "student",
                "kd_weight": 1.0,
                "kd_temperature": 1.0,
                "ema_decay": 0.99,
                "mc_samples": 4,
                "decode": "centroid",
                "decode_radius": 5,
                "shape_modes": 20,
                "contour_modes": 60,
                "refine_steps": 3000,
                "refine_network": "refine",
                "refine_points": 16,
                "refine_jitter": 4.0,
                "refine_sigma": 1.5,
                "refine_lr": 0.003,
                "threads": 1,
            },
        },  # fmt: skip
    ),
)

AnyRecipe = Union[Recipe, LandmarkRecipe]


def recipes(only: Optional[Sequence[str]] = None) -> list[AnyRecipe]:
    """The recipes (segmentation, then landmarks), all or those named in ``only`` (in table order); an unknown
    name raises :class:`~ModelSelectorLib.errors.InputError` listing the known ones."""
    every: list[AnyRecipe] = [*RECIPES, *LANDMARK_RECIPES]
    if not only:
        return every
    known = [r.name for r in every]
    bad = [n for n in only if n not in known]
    if bad:
        raise InputError(f"unknown starter-zoo model(s) {', '.join(bad)}; known: {', '.join(known)}.")
    return [r for r in every if r.name in set(only)]


# --- hashing --------------------------------------------------------------------------------------------
def _file_fingerprint(path: Path) -> list[Any]:
    return [path.name, int(path.stat().st_size)]


def recipe_hash(recipe: Recipe, split: CaseSplit, data_root: Path, seed: int) -> str:
    """SHA-256 (16 hex digits) of everything that determines the model: recipe fields, the resolved cases
    (with file sizes), the training settings and the seed. Code changes alone do not change it."""
    files = []
    for part in (split.train, split.val, split.check):
        files.append([[c.id, _file_fingerprint(data_root / c.image), _file_fingerprint(data_root / c.label)]
                      for c in part])  # fmt: skip
    blob = {
        "format": RECIPE_FORMAT, "name": recipe.name, "version": recipe.version, "modality": recipe.modality,
        "body_region": recipe.body_region, "labels": [dataclasses.asdict(lb) for lb in recipe.labels],
        "train": recipe.train, "provenance": recipe.provenance, "licence": recipe.licence, "cases": files,
        "seed": int(seed),
    }  # fmt: skip
    if recipe.held_out != "validation":  # (older recipes keep their hashes)
        blob.update(held_out=recipe.held_out, folds=recipe.folds, nsd=recipe.nsd_tolerance_mm)
    if recipe.refit_lcc is not None:
        blob["refit_lcc"] = sorted(recipe.refit_lcc)
    text = json.dumps(blob, sort_keys=True, default=list)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def landmark_recipe_hash(recipe: LandmarkRecipe, data_root: Path, seed: int) -> str:
    """SHA-256 (16 hex digits) of a landmark recipe, its source files (names and sizes) and the seed."""
    blob = {
        "format": RECIPE_FORMAT, "licence": recipe.licence,
        "recipe": {k: v for k, v in dataclasses.asdict(recipe).items() if k != "bundled"},  # not the model
        "files": [_file_fingerprint(f) for f in recipe.files(data_root)], "seed": int(seed),
    }  # fmt: skip
    text = json.dumps(blob, sort_keys=True, default=list)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


__all__ = [
    "LANDMARK_RECIPES", "RECIPES", "STAGES", "AnyRecipe", "Case", "CaseSplit", "LabelSpec", "LandmarkRecipe", "Recipe",
    "landmark_recipe_hash", "recipe_hash", "recipes", "terminology",
]  # fmt: skip
